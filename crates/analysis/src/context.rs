//! What of a repository an LLM gets to see: the file tree, and file contents chosen by
//! relevance (path hints first, then project manifests, then small shallow source files)
//! until a token budget is spent.
//!
//! Tokens are estimated without a tokenizer (the provider's is not known here): a run of
//! ASCII counts one token per four characters, every other character one token each. That
//! is close for English and code under the common BPE vocabularies and errs high for other
//! scripts; the hard limits on what a call may spend are the meter's, in builder-llm.

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::AnalysisError;
use crate::detect::language_of_extension;
use crate::walk::{self, Entry};

/// Larger files are never included: they are generated, data, or too big to be worth it.
pub const MAX_CONTEXT_FILE_BYTES: u64 = 64 * 1024;
/// The tree is cut to this many paths (shallowest first) so huge repositories stay bounded.
pub const MAX_TREE_ENTRIES: usize = 5_000;

/// Manifests and docs that say what the project is, in this order, when at the root.
const KEY_FILES: &[&str] = &[
    "README.md",
    "README",
    "README.rst",
    "README.txt",
    ".builder.toml",
    "Cargo.toml",
    "package.json",
    "pyproject.toml",
    "setup.py",
    "go.mod",
];

/// Large, machine-written and low-value; included only when hinted.
const LOCKFILES: &[&str] = &[
    "Cargo.lock",
    "package-lock.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "poetry.lock",
    "uv.lock",
    "Pipfile.lock",
    "go.sum",
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoContext {
    /// Relative, `/`-separated paths of regular files, sorted.
    pub file_tree: Vec<String>,
    /// `(relative path, content)` in order of relevance.
    pub files: Vec<(String, String)>,
    /// The repository had more than `MAX_TREE_ENTRIES` files; deeper ones were left out.
    pub tree_truncated: bool,
}

/// Estimated tokens of `text` (see the module's header).
pub fn estimate_tokens(text: &str) -> u64 {
    let mut tokens = 0u64;
    let mut ascii_run = 0u64;
    for c in text.chars() {
        if c.is_ascii() {
            ascii_run += 1;
        } else {
            tokens += ascii_run.div_ceil(4) + 1;
            ascii_run = 0;
        }
    }
    tokens + ascii_run.div_ceil(4)
}

/// What one included file costs: its path, its content and the fence around it.
fn file_tokens(rel: &str, text: &str) -> u64 {
    const FENCE: u64 = 8;
    estimate_tokens(rel) + estimate_tokens(text) + FENCE
}

/// Collects the context of `workdir`. `hints` are paths or names from the request (a file,
/// a directory, a file name or a fragment of a path); `max_tokens` bounds the estimated
/// tokens of the included files (paths, contents and fences).
pub fn repo_context(
    workdir: &Path,
    hints: &[String],
    max_tokens: u64,
) -> Result<RepoContext, AnalysisError> {
    if !workdir.is_dir() {
        return Err(AnalysisError::NotADirectory(workdir.to_path_buf()));
    }
    let entries = walk::files(workdir)?;
    let hints: Vec<String> = hints.iter().filter_map(|h| normalise_hint(h)).collect();

    let mut order: Vec<&Entry> = Vec::new();
    let mut hinted: Vec<((usize, u8), &Entry)> = entries
        .iter()
        .filter_map(|e| hint_rank(&hints, &e.rel).map(|r| (r, e)))
        .collect();
    hinted.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.rel.cmp(&b.1.rel)));
    order.extend(hinted.into_iter().map(|(_, e)| e));
    for key in KEY_FILES {
        order.extend(entries.iter().filter(|e| e.rel == *key));
    }
    let mut sources: Vec<&Entry> = entries
        .iter()
        .filter(|e| is_source(&e.rel) && !LOCKFILES.contains(&file_name(&e.rel)))
        .collect();
    sources.sort_by_key(|e| (depth(&e.rel), e.size, e.rel.as_str()));
    order.extend(sources);

    let mut files = Vec::new();
    let mut seen = HashSet::new();
    let mut remaining = max_tokens;
    for e in order {
        if !seen.insert(e.rel.as_str()) {
            continue;
        }
        // A repository's secrets never travel to a provider, hinted or not.
        if crate::secrets::is_secret_path(&e.rel) {
            continue;
        }
        // Four bytes a token is the cheapest a file can be: skip unread what cannot fit.
        if e.size > MAX_CONTEXT_FILE_BYTES || e.size / 4 > remaining {
            continue;
        }
        // The size may have changed since the walk; re-check against what was read.
        let Some(text) = walk::read_text(workdir, &e.rel, MAX_CONTEXT_FILE_BYTES)? else {
            continue;
        };
        let (text, _) = crate::secrets::redact_secrets(&text);
        let cost = file_tokens(&e.rel, &text);
        if cost > remaining {
            continue;
        }
        remaining -= cost;
        files.push((e.rel.clone(), text));
    }

    let tree_truncated = entries.len() > MAX_TREE_ENTRIES;
    let mut file_tree: Vec<String> = if tree_truncated {
        let mut by_depth: Vec<&Entry> = entries.iter().collect();
        by_depth.sort_by_key(|e| (depth(&e.rel), e.rel.as_str()));
        by_depth.truncate(MAX_TREE_ENTRIES);
        by_depth.into_iter().map(|e| e.rel.clone()).collect()
    } else {
        entries.iter().map(|e| e.rel.clone()).collect()
    };
    file_tree.sort();

    Ok(RepoContext {
        file_tree,
        files,
        tree_truncated,
    })
}

/// Hints compare as relative `/`-paths; a hint with `..` or only separators matches nothing
/// useful and is dropped (hints are matched against walked paths, never opened directly).
fn normalise_hint(h: &str) -> Option<String> {
    let mut h = h.trim().replace('\\', "/");
    while let Some(rest) = h.strip_prefix("./") {
        h = rest.to_string();
    }
    let h = h.trim_matches('/').to_string();
    if h.is_empty() || h.split('/').any(|c| c == "..") {
        return None;
    }
    Some(h)
}

/// `(index of the first hint that matches, strength)`: exact path 0, directory 1, file name
/// 2, path fragment 3.
fn hint_rank(hints: &[String], rel: &str) -> Option<(usize, u8)> {
    hints.iter().enumerate().find_map(|(i, h)| {
        let strength = if rel == h {
            0
        } else if rel.starts_with(h.as_str()) && rel.as_bytes().get(h.len()) == Some(&b'/') {
            1
        } else if file_name(rel) == h {
            2
        } else if rel.contains(h.as_str()) {
            3
        } else {
            return None;
        };
        Some((i, strength))
    })
}

fn file_name(rel: &str) -> &str {
    rel.rsplit('/').next().unwrap_or(rel)
}

fn depth(rel: &str) -> usize {
    rel.matches('/').count()
}

fn is_source(rel: &str) -> bool {
    file_name(rel)
        .rsplit_once('.')
        .is_some_and(|(stem, ext)| !stem.is_empty() && language_of_extension(ext).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (path, content) in files {
            let p = d.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        d
    }

    fn paths(ctx: &RepoContext) -> Vec<&str> {
        ctx.files.iter().map(|(p, _)| p.as_str()).collect()
    }

    #[test]
    fn hinted_files_come_first_then_manifests_then_shallow_sources() {
        let d = repo(&[
            ("Cargo.toml", "[package]"),
            ("Cargo.lock", "lock"),
            ("src/lib.rs", "pub mod api;"),
            ("src/api/mod.rs", "// api"),
            ("src/api/handlers.rs", "fn h() {}"),
            ("src/deep/er/x.rs", "x"),
            ("docs/guide.md", "guide"),
            ("target/debug/gen.rs", "generated"),
        ]);
        let hints = vec!["./src/api/".to_string(), "guide.md".to_string()];
        let ctx = repo_context(d.path(), &hints, 10_000).unwrap();
        assert_eq!(
            paths(&ctx),
            vec![
                "src/api/handlers.rs",
                "src/api/mod.rs",
                "docs/guide.md",
                "Cargo.toml",
                "src/lib.rs",
                "src/deep/er/x.rs",
            ]
        );
        assert_eq!(ctx.files[0].1, "fn h() {}");
        assert!(
            ctx.file_tree.contains(&"Cargo.lock".to_string()),
            "listed, not included"
        );
        assert!(!ctx.file_tree.iter().any(|p| p.starts_with("target/")));
        assert!(!ctx.tree_truncated);
    }

    #[test]
    fn secrets_of_the_repository_never_reach_the_context() {
        let d = repo(&[
            (".env", "DATABASE_PASSWORD=hunter2-very-secret"),
            (".env.example", "DATABASE_PASSWORD=changeme"),
            (
                "deploy/id_ed25519",
                "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAAkey\n-----END OPENSSH PRIVATE KEY-----\n",
            ),
            (
                "src/config.py",
                "TOKEN = 'ghp_0123456789abcdefghijklmnopqrstuv'\nDEBUG = True\n",
            ),
        ]);
        // Even when the request names them.
        let hints = vec![".env".to_string(), "deploy/".to_string()];
        let ctx = repo_context(d.path(), &hints, 10_000).unwrap();
        let all = format!("{:?}", ctx.files);
        for secret in [
            "hunter2-very-secret",
            "AAAAkey",
            "ghp_0123456789abcdefghijklmnopqrstuv",
        ] {
            assert!(!all.contains(secret), "{secret} reached the context: {all}");
        }
        assert!(paths(&ctx).contains(&".env.example"));
        assert!(
            all.contains("DEBUG = True") && all.contains(crate::REDACTED),
            "{all}"
        );
        // The names stay in the tree: the model may know a file exists, not what it holds.
        assert!(ctx.file_tree.contains(&".env".to_string()));
    }

    #[test]
    fn budget_is_respected_and_smaller_files_still_fit() {
        let big = "b".repeat(500);
        let d = repo(&[
            ("a/big.py", big.as_str()),
            ("a/small.py", "s = 1\n"),
            ("z.py", "z"),
        ]);
        // big.py alone is ≈ 125 tokens.
        let ctx = repo_context(d.path(), &["big.py".to_string()], 40).unwrap();
        assert_eq!(paths(&ctx), vec!["z.py", "a/small.py"]);
        let used: u64 = ctx.files.iter().map(|(p, c)| file_tokens(p, c)).sum();
        assert!(used <= 40);
        assert_eq!(repo_context(d.path(), &[], 0).unwrap().files, vec![]);
    }

    #[test]
    fn tokens_are_estimated_per_script() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("fn main() {}\n"), 4);
        // Each non-ASCII character is a token of its own.
        assert_eq!(estimate_tokens("日本語"), 3);
        assert_eq!(estimate_tokens("ab日cd"), 3);
    }

    #[test]
    fn large_binary_and_symlinked_files_are_never_included() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret.rs"), "SECRET").unwrap();
        let huge = "x".repeat(MAX_CONTEXT_FILE_BYTES as usize + 1);
        let d = repo(&[("huge.rs", huge.as_str()), ("ok.rs", "fine")]);
        std::fs::write(d.path().join("blob.rs"), [b'a', 0, b'b']).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret.rs"), d.path().join("link.rs"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("linkdir")).unwrap();
        let hints = ["huge.rs", "blob.rs", "link.rs", "linkdir", "../secret.rs"].map(String::from);
        let ctx = repo_context(d.path(), &hints, 1 << 20).unwrap();
        assert_eq!(paths(&ctx), vec!["ok.rs"]);
        assert!(!ctx.file_tree.iter().any(|p| p.contains("link")));
        assert!(ctx.files.iter().all(|(_, c)| !c.contains("SECRET")));
    }

    #[test]
    fn huge_trees_are_cut_shallowest_first() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("deep/er")).unwrap();
        for i in 0..MAX_TREE_ENTRIES + 10 {
            std::fs::write(d.path().join(format!("deep/er/f{i}.txt")), "").unwrap();
        }
        std::fs::write(d.path().join("top.txt"), "").unwrap();
        let ctx = repo_context(d.path(), &[], 0).unwrap();
        assert!(ctx.tree_truncated);
        assert_eq!(ctx.file_tree.len(), MAX_TREE_ENTRIES);
        assert!(ctx.file_tree.contains(&"top.txt".to_string()));
    }

    #[test]
    fn hint_normalisation() {
        assert_eq!(normalise_hint(" ./src/a.rs "), Some("src/a.rs".into()));
        assert_eq!(normalise_hint("/src/"), Some("src".into()));
        assert_eq!(normalise_hint("src\\win.rs"), Some("src/win.rs".into()));
        assert_eq!(normalise_hint("../etc/passwd"), None);
        assert_eq!(normalise_hint("//"), None);
    }
}
