//! Branch names: the deterministic feature branch, and git's ref-name rules.

use crate::GitError;

const SLUG_MAX: usize = 40;
const ID_CHARS: usize = 8;

/// The branch a feature's work is pushed to: `builder/<slug of title, ≤40 chars>-<8 id chars>`.
///
/// Deterministic, so a resumed feature finds its own branch. The 8 id characters are the
/// *last* 8 alphanumerics of the id: feature ids are UUIDv7, whose leading characters are a
/// millisecond timestamp shared by every id made in the same ~65 s, while the tail is random.
pub fn feature_branch_name(feature_id: &str, title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    slug.truncate(SLUG_MAX);
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "feature" } else { slug };

    let id: Vec<char> = feature_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let id: String = id[id.len().saturating_sub(ID_CHARS)..].iter().collect();
    let id = if id.is_empty() { "0" } else { id.as_str() };
    format!("builder/{slug}-{id}")
}

/// Checks `name` against `git check-ref-format --branch` rules, plus no leading '-' so it can
/// never be read as an option.
pub fn validate_branch_name(name: &str) -> Result<(), GitError> {
    let bad = |why: &str| {
        let shown: String = name.chars().take(100).collect();
        Err(GitError::InvalidInput(format!(
            "branch name {shown:?}: {why}"
        )))
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name.starts_with('-') {
        return bad("starts with '-'");
    }
    if name == "HEAD" || name == "@" {
        return bad("reserved name");
    }
    if let Some(c) = name
        .chars()
        .find(|c| c.is_ascii_control() || " ~^:?*[\\".contains(*c))
    {
        return bad(&format!("contains {c:?}"));
    }
    for seq in ["..", "@{", "//"] {
        if name.contains(seq) {
            return bad(&format!("contains {seq:?}"));
        }
    }
    if name.starts_with('/') || name.ends_with('/') {
        return bad("starts or ends with '/'");
    }
    if name.ends_with('.') {
        return bad("ends with '.'");
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return bad("a component starts with '.'");
        }
        if component.ends_with(".lock") {
            return bad("a component ends with '.lock'");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn feature_branch_is_deterministic_and_valid() {
        let id = "0190f3a2-7c1d-7e4b-9a55-3c2b1d0e9f8a";
        let a = feature_branch_name(id, "Add OAuth login (GitHub & GitLab)!");
        assert_eq!(a, "builder/add-oauth-login-github-gitlab-1d0e9f8a");
        assert_eq!(
            a,
            feature_branch_name(id, "Add OAuth login (GitHub & GitLab)!")
        );
        validate_branch_name(&a).unwrap();
    }

    #[test]
    fn ids_made_in_the_same_minute_get_different_branches() {
        let a = feature_branch_name("0190f3a2-7c1d-7e4b-9a55-3c2b1d0e9f8a", "Same");
        let b = feature_branch_name("0190f3a2-7c1e-7123-8a55-aaaaaaaaaaaa", "Same");
        assert_ne!(a, b);
    }

    #[test]
    fn slug_is_bounded_and_never_empty() {
        let long = feature_branch_name("abcdef0123456789", &"Ünïcode wörds ".repeat(20));
        let slug = long
            .strip_prefix("builder/")
            .and_then(|s| s.strip_suffix("-23456789"))
            .unwrap();
        assert!(slug.len() <= SLUG_MAX, "{long}");
        assert!(!slug.ends_with('-') && !slug.starts_with('-'), "{long}");
        validate_branch_name(&long).unwrap();
        assert_eq!(feature_branch_name("", "!!!"), "builder/feature-0");
        assert_eq!(feature_branch_name("x", "..lock/.."), "builder/lock-x");
    }

    /// Our rules agree with git's own `check-ref-format --branch` on every case.
    #[test]
    fn agrees_with_git_check_ref_format() {
        let cases = [
            "main",
            "feature/x",
            "builder/add-thing-1234abcd",
            "a.b",
            "v1.0",
            "with-dash",
            "ünïcode",
            "",
            "-leading",
            "HEAD",
            "@",
            "a..b",
            "a@{b",
            "a//b",
            "/a",
            "a/",
            "a.",
            ".a",
            "a/.b",
            "a.lock",
            "a/b.lock/c",
            "a b",
            "a~b",
            "a^b",
            "a:b",
            "a?b",
            "a*b",
            "a[b",
            "a\\b",
            "a\tb",
            "a\u{7f}b",
        ];
        for case in cases {
            let ours = validate_branch_name(case).is_ok();
            let git = Command::new("git")
                .args(["check-ref-format", "--branch", case])
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .output()
                .unwrap()
                .status
                .success();
            // git accepts "-leading" as a branch name and expands "@" to the current branch;
            // we refuse both on purpose.
            let expected = git && !case.starts_with('-') && case != "@";
            assert_eq!(ours, expected, "case {case:?}: ours={ours} git={git}");
        }
    }
}
