//! A deterministic walk of a working copy that never follows symlinks and skips directories
//! that are generated, vendored or VCS metadata.

use std::path::Path;

use crate::AnalysisError;

/// Directory names never descended into, at any depth.
pub(crate) const SKIP_DIRS: &[&str] = &[
    ".git",
    ".hg",
    ".svn",
    "target",
    "node_modules",
    "vendor",
    "third_party",
    ".venv",
    "venv",
    "__pycache__",
    ".tox",
    ".nox",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".next",
    ".cache",
    "dist",
];

#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// Path relative to the root, `/`-separated.
    pub rel: String,
    pub size: u64,
}

/// Regular files under `root`, sorted by path. Symlinks (to files or directories) and files
/// with non-UTF-8 names are left out.
pub(crate) fn files(root: &Path) -> Result<Vec<Entry>, AnalysisError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AnalysisError::Io { path, source }
    };
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            // The root must be readable; an unreadable subdirectory is only skipped.
            Err(e) if rel_dir.is_empty() => return Err(io(&dir)(e)),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "skipping unreadable directory");
                continue;
            }
        };
        for entry in rd {
            let entry = entry.map_err(io(&dir))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let rel = if rel_dir.is_empty() {
                name.clone()
            } else {
                format!("{rel_dir}/{name}")
            };
            // DirEntry::file_type does not follow symlinks.
            let ft = entry.file_type().map_err(io(&entry.path()))?;
            if ft.is_dir() {
                if !SKIP_DIRS.contains(&name.as_str()) {
                    stack.push((entry.path(), rel));
                }
            } else if ft.is_file() {
                let size = entry.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                out.push(Entry { rel, size });
            }
        }
    }
    out.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(out)
}

/// Reads `root/rel` only if it is a regular file (not a symlink) of at most `max` bytes and
/// valid UTF-8 text without NUL bytes. `Ok(None)` otherwise.
pub(crate) fn read_text(root: &Path, rel: &str, max: u64) -> Result<Option<String>, AnalysisError> {
    let path = root.join(rel);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(AnalysisError::Io { path, source }),
    };
    if !meta.file_type().is_file() || meta.len() > max {
        return Ok(None);
    }
    let bytes = std::fs::read(&path).map_err(|source| AnalysisError::Io {
        path: path.clone(),
        source,
    })?;
    if bytes.contains(&0) {
        return Ok(None);
    }
    Ok(String::from_utf8(bytes).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_skips_generated_dirs_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("src/inner")).unwrap();
        std::fs::create_dir_all(r.join("target/debug")).unwrap();
        std::fs::create_dir_all(r.join("web/node_modules/x")).unwrap();
        std::fs::create_dir_all(r.join(".git")).unwrap();
        std::fs::write(r.join("src/inner/a.rs"), "a").unwrap();
        std::fs::write(r.join("src/b.rs"), "bb").unwrap();
        std::fs::write(r.join("target/debug/out"), "x").unwrap();
        std::fs::write(r.join("web/node_modules/x/i.js"), "x").unwrap();
        std::fs::write(r.join(".git/HEAD"), "x").unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("linked-dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("linked-file")).unwrap();

        let rels: Vec<_> = files(r)
            .unwrap()
            .into_iter()
            .map(|e| (e.rel, e.size))
            .collect();
        assert_eq!(
            rels,
            vec![
                ("src/b.rs".to_string(), 2),
                ("src/inner/a.rs".to_string(), 1)
            ]
        );
        assert_eq!(read_text(r, "linked-file", 1000).unwrap(), None);
        assert_eq!(
            read_text(r, "src/b.rs", 1).unwrap(),
            None,
            "over the size limit"
        );
        assert_eq!(read_text(r, "src/b.rs", 2).unwrap().as_deref(), Some("bb"));
    }

    #[test]
    fn binary_files_are_not_text() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("img.bin"), [0x89, b'P', 0, 1]).unwrap();
        std::fs::write(d.path().join("latin1.txt"), [b'a', 0xE9]).unwrap();
        assert_eq!(read_text(d.path(), "img.bin", 100).unwrap(), None);
        assert_eq!(read_text(d.path(), "latin1.txt", 100).unwrap(), None);
    }

    #[test]
    fn missing_root_is_an_error() {
        assert!(files(Path::new("/nonexistent-builder-root")).is_err());
    }
}
