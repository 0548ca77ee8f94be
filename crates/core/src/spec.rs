//! What a user asks for, and the rules that make a request acceptable. Validation errors
//! name the offending field so the API can answer `invalid_argument` precisely.

use crate::ids::RepositoryId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FeatureConstraints {
    /// 1–50; 0 means "not set" and takes the default.
    #[serde(default)]
    pub max_steps: u32,
    /// 5–120; 0 means "not set".
    #[serde(default)]
    pub timeout_minutes: u32,
    #[serde(default)]
    pub allowed_paths: Vec<String>,
    #[serde(default)]
    pub forbidden_paths: Vec<String>,
    #[serde(default)]
    pub require_tests: bool,
    #[serde(default)]
    pub require_build: bool,
    /// 0 means no budget.
    #[serde(default)]
    pub max_llm_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureSpec {
    pub title: String,
    pub description: String,
    pub repository_id: RepositoryId,
    /// Empty: the repository's default branch.
    #[serde(default)]
    pub target_branch: String,
    /// Empty: generated deterministically from the feature id and title.
    #[serde(default)]
    pub feature_branch: String,
    #[serde(default)]
    pub acceptance_criteria: Vec<String>,
    #[serde(default)]
    pub path_hints: Vec<String>,
    #[serde(default)]
    pub constraints: FeatureConstraints,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    /// The proto field path, e.g. `spec.title`.
    pub field: String,
    pub reason: String,
}

fn err(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

fn check_rel_path(field: &str, p: &str) -> Result<(), SpecError> {
    if p.is_empty() || p.len() > 1024 {
        return Err(err(field, "paths must be 1–1024 characters"));
    }
    if p.starts_with('/') || p.split('/').any(|c| c == "..") || p.contains('\0') {
        return Err(err(
            field,
            format!("{p:?} must be a relative path inside the repository"),
        ));
    }
    Ok(())
}

/// A feature (or repository) property that picks the model (the provider and key stay the
/// profile's).
pub const LLM_MODEL_PROPERTY: &str = "llm.model";
/// A feature (or repository) property that picks a configured LLM profile (provider, model
/// and key) by name; the feature's wins over the repository's.
pub const LLM_PROFILE_PROPERTY: &str = "llm.profile";
/// A feature property capping what the feature may spend on LLM calls, or a repository
/// property capping what all its features may spend together, in US dollars.
pub const LLM_MAX_COST_PROPERTY: &str = "llm.max_cost_usd";

/// Reads an [`LLM_MAX_COST_PROPERTY`] value.
pub fn parse_cost(value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{LLM_MAX_COST_PROPERTY} must be a non-negative number of US dollars, got {value:?}"
        )),
    }
}

impl FeatureSpec {
    pub const DEFAULT_MAX_STEPS: u32 = 10;
    pub const DEFAULT_TIMEOUT_MINUTES: u32 = 60;

    pub fn validate(&self) -> Result<(), SpecError> {
        let title_len = self.title.trim().chars().count();
        if !(1..=255).contains(&title_len) {
            return Err(err("spec.title", "must be 1–255 characters"));
        }
        let desc_len = self.description.trim().chars().count();
        if !(10..=10_000).contains(&desc_len) {
            return Err(err("spec.description", "must be 10–10,000 characters"));
        }
        if self.repository_id.0.is_nil() {
            return Err(err("spec.repository_id", "is required"));
        }
        for (field, name) in [
            ("spec.target_branch", &self.target_branch),
            ("spec.feature_branch", &self.feature_branch),
        ] {
            if !name.is_empty() && !is_valid_branch_name(name) {
                return Err(err(field, format!("{name:?} is not a valid branch name")));
            }
        }
        if self.acceptance_criteria.len() > 50 {
            return Err(err("spec.acceptance_criteria", "at most 50 criteria"));
        }
        if self
            .acceptance_criteria
            .iter()
            .any(|c| c.chars().count() > 2000)
        {
            return Err(err(
                "spec.acceptance_criteria",
                "each criterion at most 2000 characters",
            ));
        }
        if self.path_hints.len() > 100 {
            return Err(err("spec.path_hints", "at most 100 hints"));
        }
        for p in &self.path_hints {
            check_rel_path("spec.path_hints", p)?;
        }
        let c = &self.constraints;
        if c.max_steps != 0 && !(1..=50).contains(&c.max_steps) {
            return Err(err("spec.constraints.max_steps", "must be 1–50"));
        }
        if c.timeout_minutes != 0 && !(5..=120).contains(&c.timeout_minutes) {
            return Err(err("spec.constraints.timeout_minutes", "must be 5–120"));
        }
        for p in &c.allowed_paths {
            check_rel_path("spec.constraints.allowed_paths", p)?;
        }
        for p in &c.forbidden_paths {
            check_rel_path("spec.constraints.forbidden_paths", p)?;
        }
        if self.properties.len() > 64 {
            return Err(err("spec.properties", "at most 64 properties"));
        }
        if let Some(cost) = self.properties.get(LLM_MAX_COST_PROPERTY) {
            parse_cost(cost).map_err(|m| err("spec.properties", m))?;
        }
        if let Some(profile) = self.properties.get(LLM_PROFILE_PROPERTY) {
            let ok = !profile.is_empty()
                && profile.len() <= 64
                && profile
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(err(
                    "spec.properties",
                    format!(
                        "{LLM_PROFILE_PROPERTY} must be a profile name (letters, digits, - _ .)"
                    ),
                ));
            }
        }
        if let Some(model) = self.properties.get(LLM_MODEL_PROPERTY) {
            let n = model.trim().chars().count();
            if !(1..=200).contains(&n) || model.chars().any(char::is_control) {
                return Err(err(
                    "spec.properties",
                    format!("{LLM_MODEL_PROPERTY} must be 1–200 printable characters"),
                ));
            }
        }
        Ok(())
    }

    pub fn max_steps(&self) -> u32 {
        if self.constraints.max_steps == 0 {
            Self::DEFAULT_MAX_STEPS
        } else {
            self.constraints.max_steps
        }
    }

    /// Whether the model may touch `path` under the allowed/forbidden constraints.
    pub fn path_allowed(&self, path: &str) -> bool {
        let under = |prefix: &String| {
            let prefix = prefix.trim_end_matches('/');
            path == prefix || path.starts_with(&format!("{prefix}/"))
        };
        if self.constraints.forbidden_paths.iter().any(under) {
            return false;
        }
        self.constraints.allowed_paths.is_empty()
            || self.constraints.allowed_paths.iter().any(under)
    }
}

/// Whether `name` may be a feature, target or default branch: what `git check-ref-format
/// --branch` accepts, minus names that git takes but that break later — they resolve to
/// something else (`@` is HEAD to git's revision parser) or get prefixed again on push
/// (`refs/heads/main` would become `refs/heads/refs/heads/main`).
pub fn is_valid_branch_name(name: &str) -> bool {
    git_accepts_branch_name(name) && branch_name_refusal(name).is_none()
}

/// Why builder refuses a name that git itself accepts as a branch, if it does.
fn branch_name_refusal(name: &str) -> Option<&'static str> {
    const AMBIGUOUS_PREFIXES: [&str; 3] = ["refs/", "heads/", "remotes/"];
    if name.len() > 200 {
        Some("longer than 200 bytes")
    } else if name == "@" {
        Some("`@` means HEAD to git")
    } else if AMBIGUOUS_PREFIXES.iter().any(|p| name.starts_with(p)) {
        Some("starts with refs/, heads/ or remotes/: give the short branch name")
    } else if name.chars().any(char::is_control) {
        // git takes non-ASCII control characters; logs, events and forge UIs do not show them.
        Some("contains a control character")
    } else {
        None
    }
}

/// `git check-ref-format --branch` exactly, outside a repository (where `@{-N}` cannot be
/// expanded): `refs/heads/<name>` must be a valid ref name, and the name is neither `HEAD`
/// nor starting with `-`.
fn git_accepts_branch_name(name: &str) -> bool {
    if name.is_empty() || name.starts_with('-') || name == "HEAD" {
        return false;
    }
    if name.ends_with('.') || name.contains("@{") || name.contains("..") {
        return false;
    }
    let forbidden = |c: char| {
        c.is_ascii_control() || matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
    };
    if name.chars().any(forbidden) {
        return false;
    }
    // Splitting also yields the empty components of a leading, trailing or doubled '/'.
    name.split('/')
        .all(|c| !c.is_empty() && !c.starts_with('.') && !c.ends_with(".lock"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    pub(crate) fn spec() -> FeatureSpec {
        FeatureSpec {
            title: "Add a greeting".into(),
            description: "Add a function that greets the user by name.".into(),
            repository_id: RepositoryId(Uuid::from_u128(7)),
            target_branch: String::new(),
            feature_branch: String::new(),
            acceptance_criteria: vec!["greet(\"x\") returns \"Hello, x!\"".into()],
            path_hints: vec!["src/lib.rs".into()],
            constraints: FeatureConstraints::default(),
            properties: BTreeMap::new(),
        }
    }

    #[test]
    fn a_reasonable_spec_is_valid() {
        assert_eq!(spec().validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut FeatureSpec)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.title = "  ".into()), "spec.title"),
            (Box::new(|s| s.title = "x".repeat(256)), "spec.title"),
            (
                Box::new(|s| s.description = "short".into()),
                "spec.description",
            ),
            (
                Box::new(|s| s.description = "y".repeat(10_001)),
                "spec.description",
            ),
            (
                Box::new(|s| s.repository_id = RepositoryId(Uuid::nil())),
                "spec.repository_id",
            ),
            (
                Box::new(|s| s.target_branch = "bad..name".into()),
                "spec.target_branch",
            ),
            (
                Box::new(|s| s.feature_branch = "-x".into()),
                "spec.feature_branch",
            ),
            (
                Box::new(|s| s.path_hints = vec!["../etc/passwd".into()]),
                "spec.path_hints",
            ),
            (
                Box::new(|s| s.path_hints = vec!["/etc/passwd".into()]),
                "spec.path_hints",
            ),
            (
                Box::new(|s| s.constraints.max_steps = 51),
                "spec.constraints.max_steps",
            ),
            (
                Box::new(|s| s.constraints.timeout_minutes = 4),
                "spec.constraints.timeout_minutes",
            ),
            (
                Box::new(|s| s.constraints.timeout_minutes = 121),
                "spec.constraints.timeout_minutes",
            ),
            (
                Box::new(|s| {
                    s.properties.insert(LLM_MODEL_PROPERTY.into(), "".into());
                }),
                "spec.properties",
            ),
            (
                Box::new(|s| s.constraints.forbidden_paths = vec!["a/../..".into()]),
                "spec.constraints.forbidden_paths",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spec();
            mutate(&mut s);
            assert_eq!(s.validate().map_err(|e| e.field), Err(field.to_string()));
        }
    }

    #[test]
    fn boundaries_are_inclusive() {
        let mut s = spec();
        s.title = "x".repeat(255);
        s.description = "y".repeat(10);
        s.constraints.max_steps = 50;
        s.constraints.timeout_minutes = 5;
        assert_eq!(s.validate(), Ok(()));
        s.constraints.max_steps = 1;
        s.constraints.timeout_minutes = 120;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn path_constraints() {
        let mut s = spec();
        assert!(s.path_allowed("anything.rs"));
        s.constraints.allowed_paths = vec!["src".into()];
        s.constraints.forbidden_paths = vec!["src/secret".into()];
        assert!(s.path_allowed("src/lib.rs"));
        assert!(!s.path_allowed("srcx/lib.rs"));
        assert!(!s.path_allowed("src/secret/key.rs"));
        assert!(!s.path_allowed("README.md"));
    }

    #[test]
    fn branch_names() {
        for ok in [
            "main",
            "builder/add-x-1234",
            "release/1.0",
            "a@b",
            "x/HEAD",
            "é",
        ] {
            assert!(is_valid_branch_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-x",
            "a..b",
            "a b",
            "a~b",
            "x.lock",
            "a/.hidden",
            "a//b",
            "@",
            "a@{b",
            "/a",
            "a/",
            "HEAD",
            "refs/heads/main",
            "heads/main",
            "remotes/origin/main",
            "a.lock/b",
            "a/b.",
            "a\\b",
            "a\0b",
            "x\u{85}y",
            &"x".repeat(201),
        ] {
            assert!(!is_valid_branch_name(bad), "{bad:?}");
        }
    }

    /// `git check-ref-format --branch NAME` outside any repository.
    fn git_accepts(name: &str) -> bool {
        std::process::Command::new("git")
            .args(["check-ref-format", "--branch", name])
            .env("GIT_DIR", "/nonexistent/builder-branch-name-test")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .output()
            .expect("running git check-ref-format")
            .status
            .success()
    }

    /// Every refusal builder adds on top of git's rules is one it documents.
    fn agrees_with_git(name: &str) -> Result<(), String> {
        let git = git_accepts(name);
        let ours = git_accepts_branch_name(name);
        if ours != git {
            return Err(format!(
                "{name:?}: git says {git}, the git rules here say {ours}"
            ));
        }
        if is_valid_branch_name(name) != (git && branch_name_refusal(name).is_none()) {
            return Err(format!("{name:?}: accepted against git's rules"));
        }
        Ok(())
    }

    #[test]
    fn branch_names_agree_with_git_check_ref_format() {
        for name in [
            "main",
            "HEAD",
            "head",
            "-x",
            "refs/heads/main",
            "heads/x",
            "remotes/x",
            "a.lock",
            "a/b.lock/c",
            "a.lock.b",
            ".lock",
            "a/.lock",
            "a/.b",
            "a.",
            "@",
            "@x",
            "x@",
            "a/@/b",
            "a@b",
            "@{-1}",
            "a@{x",
            "x/",
            "/x",
            "a//b",
            "é",
            "a\u{7f}b",
            "a\tb",
            "x\u{85}y",
            "a..b",
            "a/./b",
            ".",
            "..x",
            "HEAD/x",
            "x/HEAD",
            "FETCH_HEAD",
            "a\\b",
            "a b",
            "a~b",
            "a^b",
            "a:b",
            "a?b",
            "a*b",
            "a[b",
            "a]b",
            "a{b",
            "a}b",
            "a'b",
            "a\"b",
            "a<b>",
            "a|b",
            "a!b",
            "a#b",
            "a$b",
            "a%b",
            "a&b",
            "a=b",
            "a,b",
            "a;b",
            "--",
            "-",
            "refs",
            "heads",
        ] {
            agrees_with_git(name).unwrap();
        }
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::{Config, RngSeed};

        /// Names built from the pieces git's rules are about, so most cases sit near a rule.
        fn tricky_name() -> impl Strategy<Value = String> {
            let piece = prop::sample::select(vec![
                "a", "main", "x1", "/", ".", "..", "-", "@", "{", "}", "@{", "lock", ".lock",
                "HEAD", "refs/", "heads/", "~", "^", ":", "?", "*", "[", "\\", " ", "\t", "\u{7f}",
                "é", "_", "\u{85}",
            ]);
            prop::collection::vec(piece, 0..7).prop_map(|p| p.concat())
        }

        fn config() -> Config {
            Config {
                cases: 256,
                rng_seed: RngSeed::Fixed(0x0062_7569_6c64_6572),
                failure_persistence: None,
                ..Config::default()
            }
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn never_panics(name in any::<String>()) {
                let _ = is_valid_branch_name(&name);
            }

            #[test]
            fn agrees_with_git_on_tricky_names(name in tricky_name()) {
                prop_assert!(agrees_with_git(&name).is_ok(), "{:?}", agrees_with_git(&name));
            }

            #[test]
            fn agrees_with_git_on_printable_names(name in "[a-zA-Z0-9./@{}~^:?*\\[\\\\ _-]{0,12}") {
                prop_assert!(agrees_with_git(&name).is_ok(), "{:?}", agrees_with_git(&name));
            }
        }
    }
}

/// The branch builder pushes to when the user names none: readable, and unique per feature
/// because it ends in the random tail of the (UUIDv7) feature id — its head is a timestamp
/// shared by features created in the same minute.
pub fn feature_branch_name(id: crate::ids::FeatureId, title: &str) -> String {
    let mut slug = String::new();
    for c in title.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
        if slug.len() >= 40 {
            break;
        }
    }
    let slug = slug.trim_end_matches('-');
    let simple = id.as_uuid().simple().to_string();
    let tail = &simple[simple.len() - 8..];
    if slug.is_empty() {
        format!("builder/feature-{tail}")
    } else {
        format!("builder/{slug}-{tail}")
    }
}

#[cfg(test)]
mod branch_tests {
    use super::*;
    use crate::ids::FeatureId;
    use uuid::Uuid;

    #[test]
    fn branch_names_are_deterministic_valid_and_distinct() {
        let a = FeatureId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001));
        let b = FeatureId(Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002));
        let name = feature_branch_name(a, "Add a Greeting!! (v2)");
        assert_eq!(name, "builder/add-a-greeting-v2-00000001");
        assert_eq!(name, feature_branch_name(a, "Add a Greeting!! (v2)"));
        assert_ne!(name, feature_branch_name(b, "Add a Greeting!! (v2)"));
        assert!(is_valid_branch_name(&name));
        assert!(is_valid_branch_name(&feature_branch_name(a, "..////~~~")));
        assert!(is_valid_branch_name(&feature_branch_name(
            a,
            &"é".repeat(300)
        )));
        assert!(feature_branch_name(a, &"long title ".repeat(20)).len() <= 60);
    }
}
