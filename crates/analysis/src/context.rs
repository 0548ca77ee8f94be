//! What of a repository an LLM gets to see: the file tree, and file contents chosen by
//! relevance (path hints first, then project manifests, then small shallow source files),
//! all of it within one token budget. The tree gets at most a share of it and, when cut,
//! keeps the paths nearest the hints and the shallowest.
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
/// The tree never lists more paths than this, whatever the budget, so huge repositories
/// stay bounded in memory and in the prompt.
pub const MAX_TREE_ENTRIES: usize = 5_000;
/// The file tree may spend at most `1 / TREE_SHARE_DIVISOR` of the token budget. The tree
/// is the model's map of the repository — it names the files it may ask for or edit — but
/// contents are what it reasons about: a quarter keeps several hundred paths in a 24k
/// budget and leaves three quarters for files. What the tree does not use goes to files.
pub const TREE_SHARE_DIVISOR: u64 = 4;

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
    /// Relative, `/`-separated paths of regular files, sorted. When `tree_truncated`, the
    /// last line is not a path but says how many paths were left out.
    pub file_tree: Vec<String>,
    /// `(relative path, content)` in order of relevance.
    pub files: Vec<(String, String)>,
    /// Paths were left out of the tree: beyond its share of the token budget or beyond
    /// `MAX_TREE_ENTRIES`. Those kept are the hinted ones, their neighbours and the
    /// shallowest.
    pub tree_truncated: bool,
    /// Estimated tokens of the tree (a line each) and the files (path, content and fence
    /// each) together; never more than the budget `repo_context` was given.
    #[serde(default)]
    pub estimated_tokens: u64,
}

impl RepoContext {
    /// Recounts what this context costs (`estimated_tokens` as `repo_context` left it,
    /// unless the fields were changed since).
    pub fn estimate(&self) -> u64 {
        tree_tokens(&self.file_tree)
            + self
                .files
                .iter()
                .map(|(p, c)| file_tokens(p, c))
                .sum::<u64>()
    }
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

/// What one included file costs in a prompt: its path, its content and the fence around it.
fn file_tokens(rel: &str, text: &str) -> u64 {
    const FENCE: u64 = 8;
    estimate_tokens(rel) + estimate_tokens(text) + FENCE
}

/// What one line of the file tree costs: the path, plus one for its indentation and line
/// break (a path of `n` ASCII characters estimates at `ceil(n / 4)`, the rendered line at
/// most one more).
fn tree_line_tokens(line: &str) -> u64 {
    estimate_tokens(line) + 1
}

/// What a file tree costs in a prompt, one line per entry.
fn tree_tokens(tree: &[String]) -> u64 {
    tree.iter().map(|l| tree_line_tokens(l)).sum()
}

/// The tree's last line when paths were left out.
fn omitted_line(n: usize) -> String {
    format!("[… {n} more paths not listed]")
}

/// Collects the context of `workdir`. `hints` are paths or names from the request (a file,
/// a directory, a file name or a fragment of a path); `max_tokens` bounds the estimated
/// tokens of everything returned: the file tree (at most its share, see
/// `TREE_SHARE_DIVISOR`) and the included files (paths, contents and fences).
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
    let ranks: Vec<Option<(usize, u8)>> =
        entries.iter().map(|e| hint_rank(&hints, &e.rel)).collect();

    // The tree is settled first, within its share, so that a huge listing can never crowd
    // out the hinted files; what it leaves of its share goes to files.
    let (file_tree, tree_truncated, tree_used) =
        file_tree(&entries, &ranks, max_tokens / TREE_SHARE_DIVISOR);

    let mut order: Vec<&Entry> = Vec::new();
    let mut hinted: Vec<((usize, u8), &Entry)> = entries
        .iter()
        .zip(&ranks)
        .filter_map(|(e, r)| r.map(|r| (r, e)))
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
    let files_budget = max_tokens - tree_used;
    let mut remaining = files_budget;
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

    Ok(RepoContext {
        file_tree,
        files,
        tree_truncated,
        estimated_tokens: tree_used + (files_budget - remaining),
    })
}

/// At most this many hinted directories are measured against, so a hint matching half the
/// repository costs a bounded amount of work.
const MAX_NEAR_DIRS: usize = 64;

/// The sorted tree within `budget` tokens: every path if they fit, otherwise a prefix of a
/// ranking and a last line counting what was left out (unless even that line does not fit).
/// Hinted paths rank first; the others by how close they are to the root or to a hinted
/// file's directory, whichever is closer — so the top level, which says what the project
/// is, and a hinted file's neighbours come before deep paths elsewhere — then shallowest.
/// Returns the tree, whether paths were left out, and its cost.
fn file_tree(
    entries: &[Entry],
    ranks: &[Option<(usize, u8)>],
    budget: u64,
) -> (Vec<String>, bool, u64) {
    let full: u64 = entries.iter().map(|e| tree_line_tokens(&e.rel)).sum();
    if entries.len() <= MAX_TREE_ENTRIES && full <= budget {
        // Entries come from the walk sorted by path.
        return (entries.iter().map(|e| e.rel.clone()).collect(), false, full);
    }
    let mut hinted: Vec<((usize, u8), &str)> = entries
        .iter()
        .zip(ranks)
        .filter_map(|(e, r)| r.map(|r| (r, parent(&e.rel))))
        .collect();
    hinted.sort_unstable();
    let mut near_dirs: Vec<&str> = Vec::new();
    for (_, dir) in hinted {
        if near_dirs.len() == MAX_NEAR_DIRS {
            break;
        }
        if !near_dirs.contains(&dir) {
            near_dirs.push(dir);
        }
    }
    let mut ranked: Vec<(bool, usize, usize, &str)> = entries
        .iter()
        .zip(ranks)
        .map(|(e, r)| {
            let dir = parent(&e.rel);
            let closeness = near_dirs
                .iter()
                .map(|h| dir_distance(dir, h))
                .fold(depth(&e.rel), usize::min);
            (r.is_none(), closeness, depth(&e.rel), e.rel.as_str())
        })
        .collect();
    ranked.sort_unstable();

    // Room for the closing line, priced with the largest count it could show.
    let reserve = tree_line_tokens(&omitted_line(entries.len()));
    if reserve > budget {
        return (Vec::new(), true, 0);
    }
    let mut used = reserve;
    let mut kept = Vec::new();
    for (_, _, _, rel) in ranked {
        let cost = tree_line_tokens(rel);
        // A prefix of the ranking, not a best fit: a long path left out does not let
        // less relevant short ones in.
        if kept.len() == MAX_TREE_ENTRIES || used + cost > budget {
            break;
        }
        used += cost;
        kept.push(rel.to_string());
    }
    kept.sort();
    kept.push(omitted_line(entries.len() - kept.len()));
    let cost = tree_tokens(&kept);
    (kept, true, cost)
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

/// The directory part of `rel` (`""` at the root).
fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// Steps up from `a` to the directory it shares with `b`, then down to `b` (`""` is the
/// root).
fn dir_distance(a: &str, b: &str) -> usize {
    let components = |d: &str| if d.is_empty() { 0 } else { depth(d) + 1 };
    let common = if a.is_empty() || b.is_empty() {
        0
    } else {
        a.split('/')
            .zip(b.split('/'))
            .take_while(|(x, y)| x == y)
            .count()
    };
    components(a) + components(b) - 2 * common
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
        assert_eq!(ctx.estimated_tokens, used + tree_tokens(&ctx.file_tree));
        assert!(ctx.estimated_tokens <= 40);
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
        // A budget the whole tree would fit in: the entry cap still applies.
        let ctx = repo_context(d.path(), &[], 1 << 30).unwrap();
        assert!(ctx.tree_truncated);
        assert_eq!(ctx.file_tree.len(), MAX_TREE_ENTRIES + 1);
        assert!(ctx.file_tree.contains(&"top.txt".to_string()));
        assert_eq!(ctx.file_tree.last().unwrap(), &omitted_line(11));
    }

    /// How the prompt lays the tree out (`RepoContextBlock` in baml_src/types.baml).
    fn rendered_tree(ctx: &RepoContext) -> String {
        ctx.file_tree.iter().map(|p| format!("  {p}\n")).collect()
    }

    #[test]
    fn twenty_thousand_files_stay_within_a_small_budget() {
        let d = tempfile::tempdir().unwrap();
        for i in 0..20_000 {
            let dir = d.path().join(format!("pkg{}/module{}", i / 1000, i / 100));
            if i % 100 == 0 {
                std::fs::create_dir_all(&dir).unwrap();
            }
            std::fs::write(dir.join(format!("file_{i}.rs")), "pub fn f() {}\n").unwrap();
        }
        std::fs::write(d.path().join("README.md"), "# big\n").unwrap();
        let hint = "pkg7/module73/file_7342.rs".to_string();
        for budget in [0, 1, 10, 100, 2_000, 24_000] {
            let ctx = repo_context(d.path(), std::slice::from_ref(&hint), budget).unwrap();
            assert!(
                ctx.estimated_tokens <= budget,
                "{budget}: {}",
                ctx.estimated_tokens
            );
            assert_eq!(ctx.estimate(), ctx.estimated_tokens, "{budget}");
            // Recounted from the text as a prompt shows it, not from the same helpers.
            let shown = estimate_tokens(&rendered_tree(&ctx))
                + ctx
                    .files
                    .iter()
                    .map(|(p, c)| estimate_tokens(p) + estimate_tokens(c) + 8)
                    .sum::<u64>();
            assert!(shown <= budget, "{budget}: {shown}");
            assert!(ctx.tree_truncated, "{budget}");
            assert!(
                tree_tokens(&ctx.file_tree) <= budget / TREE_SHARE_DIVISOR,
                "{budget}"
            );
        }

        let ctx = repo_context(d.path(), std::slice::from_ref(&hint), 2_000).unwrap();
        let listed = ctx.file_tree.len() - 1;
        assert!(listed > 20, "{listed}");
        assert_eq!(
            ctx.file_tree.last().unwrap(),
            &omitted_line(20_001 - listed),
            "the last line counts what was left out"
        );
        for kept in [hint.as_str(), "pkg7/module73/file_7300.rs", "README.md"] {
            assert!(ctx.file_tree.iter().any(|p| p == kept), "{kept} not listed");
        }
        assert!(
            !ctx.file_tree.iter().any(|p| p.starts_with("pkg19/")),
            "unrelated deep paths go first"
        );
        assert_eq!(
            paths(&ctx)[0],
            hint,
            "the hinted file's content is included"
        );
    }

    #[test]
    fn what_the_tree_does_not_use_goes_to_files() {
        // The file costs more than three quarters of the budget; the tree costs little.
        let content = "x".repeat(300);
        let d = repo(&[("a.py", content.as_str())]);
        let ctx = repo_context(d.path(), &[], 100).unwrap();
        assert_eq!(paths(&ctx), vec!["a.py"]);
        assert_eq!(ctx.file_tree, vec!["a.py"]);
        assert!(!ctx.tree_truncated);
        assert_eq!(ctx.estimated_tokens, tree_tokens(&ctx.file_tree) + 84);
        assert!(ctx.estimated_tokens <= 100);
    }

    #[test]
    fn a_cut_tree_keeps_the_hinted_neighbourhood_and_shallow_paths() {
        // Walk (alphabetical) order would list the deep directory first and cut the rest.
        let mut files: Vec<(String, String)> = (0..200)
            .map(|i| (format!("a/deep/er/still/{i:03}.txt"), String::new()))
            .collect();
        for f in ["src/api/handlers.rs", "src/api/routes.rs", "zz.txt"] {
            files.push((f.into(), String::new()));
        }
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, c)| (p.as_str(), c.as_str()))
            .collect();
        let d = repo(&refs);
        let ctx = repo_context(d.path(), &["handlers.rs".to_string()], 200).unwrap();
        assert!(ctx.tree_truncated);
        for kept in ["src/api/handlers.rs", "src/api/routes.rs", "zz.txt"] {
            assert!(ctx.file_tree.iter().any(|p| p == kept), "{kept}: {ctx:?}");
        }
        let listed = ctx.file_tree.len() - 1;
        assert!((3..203).contains(&listed), "{listed}");
        assert_eq!(ctx.file_tree.last().unwrap(), &omitted_line(203 - listed));
    }

    #[test]
    fn directory_distance() {
        assert_eq!(dir_distance("", ""), 0);
        assert_eq!(dir_distance("src/api", "src/api"), 0);
        assert_eq!(dir_distance("", "src/api"), 2);
        assert_eq!(dir_distance("src/api", "src/db/pool"), 3);
        assert_eq!(dir_distance("srcx", "src"), 2, "components, not prefixes");
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
