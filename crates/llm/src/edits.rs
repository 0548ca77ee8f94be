//! Applying the model's [`Edit`]s to a working copy: confined to the root, validated as a
//! whole before anything is written, with errors the model can act on.

use crate::types::{Edit, EditAction};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// What one edit did; hashes are SHA-256 (hex) of the file before and after it, `None`
/// where the file did not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEdit {
    pub path: String,
    pub action: EditAction,
    pub before_sha256: Option<String>,
    pub after_sha256: Option<String>,
}

/// Why an edit set was not applied. Nothing was written when this is returned (for `Io`
/// during writing, what had been written was restored).
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("edit {index} ({action}) {path:?}: {reason}")]
    InvalidPath {
        index: usize,
        path: String,
        action: EditAction,
        reason: String,
    },
    #[error("edit {index} ({action}) {path}: `{field}` is required")]
    MissingField {
        index: usize,
        path: String,
        action: EditAction,
        field: &'static str,
    },
    #[error(
        "edit {index} (CREATE) {path}: the file already exists; use REPLACE_FILE or SEARCH_REPLACE"
    )]
    AlreadyExists { index: usize, path: String },
    #[error("edit {index} ({action}) {path}: the file does not exist")]
    NotFound {
        index: usize,
        path: String,
        action: EditAction,
    },
    #[error("edit {index} (SEARCH_REPLACE) {path}: the file is not UTF-8 text")]
    NotText { index: usize, path: String },
    #[error(
        "edit {index} (SEARCH_REPLACE) {path}: search block starting `{search_start}` not found; {closest}"
    )]
    SearchNotFound {
        index: usize,
        path: String,
        /// The first non-blank line of the search block.
        search_start: String,
        /// Where the file comes closest to the block, for the model to correct itself.
        closest: String,
    },
    #[error(
        "edit {index} (SEARCH_REPLACE) {path}: search block starting `{search_start}` matches {} times (lines {}); include more surrounding lines to make it unique",
        lines.len(),
        join_lines(lines)
    )]
    Ambiguous {
        index: usize,
        path: String,
        search_start: String,
        /// 1-based line numbers where a match starts.
        lines: Vec<usize>,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn join_lines(lines: &[usize]) -> String {
    lines
        .iter()
        .map(|l| l.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> EditError + '_ {
    move |source| EditError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One file as the edit set sees it: what is on disk and what it will be.
struct Staged {
    original: Option<Vec<u8>>,
    current: Option<Vec<u8>>,
    permissions: Option<std::fs::Permissions>,
}

/// Applies `edits` in order inside `root`. All edits are checked and computed in memory
/// first; files are written only when every edit succeeded.
pub fn apply_edits(root: &Path, edits: &[Edit]) -> Result<Vec<AppliedEdit>, EditError> {
    let root = root.canonicalize().map_err(io_err(root))?;
    let mut staged: HashMap<PathBuf, Staged> = HashMap::new();
    let mut order: Vec<PathBuf> = Vec::new();
    let mut applied = Vec::with_capacity(edits.len());

    for (index, edit) in edits.iter().enumerate() {
        let invalid = |reason: String| EditError::InvalidPath {
            index,
            path: edit.path.clone(),
            action: edit.action,
            reason,
        };
        let rel = normalize(&edit.path).map_err(invalid)?;
        check_no_symlinks(&root, &rel).map_err(|reason| match reason {
            PathProblem::Unsafe(reason) => invalid(reason),
            PathProblem::Io(source) => EditError::Io {
                path: rel.display().to_string(),
                source,
            },
        })?;
        let display = rel.to_string_lossy().into_owned();
        if !staged.contains_key(&rel) {
            let full = root.join(&rel);
            let (original, permissions) = match std::fs::read(&full) {
                Ok(bytes) => {
                    let perms = std::fs::metadata(&full)
                        .map_err(io_err(&full))?
                        .permissions();
                    (Some(bytes), Some(perms))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                Err(e) => return Err(io_err(&full)(e)),
            };
            staged.insert(
                rel.clone(),
                Staged {
                    current: original.clone(),
                    original,
                    permissions,
                },
            );
            order.push(rel.clone());
        }
        let Some(file) = staged.get_mut(&rel) else {
            continue;
        };
        let before = file.current.clone();
        let missing = |field| EditError::MissingField {
            index,
            path: display.clone(),
            action: edit.action,
            field,
        };
        let not_found = || EditError::NotFound {
            index,
            path: display.clone(),
            action: edit.action,
        };
        let after: Option<Vec<u8>> = match edit.action {
            EditAction::Create => {
                let content = edit.content.as_ref().ok_or_else(|| missing("content"))?;
                if before.is_some() {
                    return Err(EditError::AlreadyExists {
                        index,
                        path: display,
                    });
                }
                Some(content.clone().into_bytes())
            }
            EditAction::ReplaceFile => {
                let content = edit.content.as_ref().ok_or_else(|| missing("content"))?;
                if before.is_none() {
                    return Err(not_found());
                }
                Some(content.clone().into_bytes())
            }
            EditAction::Delete => {
                if before.is_none() {
                    return Err(not_found());
                }
                None
            }
            EditAction::SearchReplace => {
                let search = edit
                    .search
                    .as_ref()
                    .filter(|s| !s.trim().is_empty())
                    .ok_or_else(|| missing("search"))?;
                let replace = edit.replace.as_ref().ok_or_else(|| missing("replace"))?;
                let bytes = before.as_ref().ok_or_else(not_found)?;
                let text = std::str::from_utf8(bytes).map_err(|_| EditError::NotText {
                    index,
                    path: display.clone(),
                })?;
                let search_start = search
                    .lines()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
                    .to_owned();
                match search_replace(text, search, replace) {
                    Ok(new) => Some(new.into_bytes()),
                    Err(SearchFailure::NotFound(closest)) => {
                        return Err(EditError::SearchNotFound {
                            index,
                            path: display,
                            search_start,
                            closest,
                        });
                    }
                    Err(SearchFailure::Ambiguous(lines)) => {
                        return Err(EditError::Ambiguous {
                            index,
                            path: display,
                            search_start,
                            lines,
                        });
                    }
                }
            }
        };
        applied.push(AppliedEdit {
            path: display,
            action: edit.action,
            before_sha256: before.as_deref().map(sha256),
            after_sha256: after.as_deref().map(sha256),
        });
        file.current = after;
    }

    write_all(&root, &order, &staged)?;
    Ok(applied)
}

/// Writes every changed file; on failure restores the ones already written.
fn write_all(
    root: &Path,
    order: &[PathBuf],
    staged: &HashMap<PathBuf, Staged>,
) -> Result<(), EditError> {
    let mut done: Vec<&PathBuf> = Vec::new();
    for rel in order {
        let Some(file) = staged.get(rel) else {
            continue;
        };
        if file.current == file.original {
            continue;
        }
        if let Err(e) = write_one(
            root,
            rel,
            file.current.as_deref(),
            file.permissions.as_ref(),
        ) {
            for rel in done.iter().rev() {
                if let Some(file) = staged.get(*rel) {
                    let restored = write_one(
                        root,
                        rel,
                        file.original.as_deref(),
                        file.permissions.as_ref(),
                    );
                    if let Err(re) = restored {
                        tracing::error!(path = %rel.display(), error = %re, "restoring a file after a failed edit");
                    }
                }
            }
            return Err(e);
        }
        done.push(rel);
    }
    Ok(())
}

fn write_one(
    root: &Path,
    rel: &Path,
    content: Option<&[u8]>,
    permissions: Option<&std::fs::Permissions>,
) -> Result<(), EditError> {
    let full = root.join(rel);
    match content {
        None => match std::fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&full)(e)),
        },
        Some(bytes) => {
            let parent = full.parent().unwrap_or(root);
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            // Write-then-rename: a crash leaves the old or the new file, never half of one,
            // and rename replaces the directory entry instead of following it.
            let mut tmp = tempfile::NamedTempFile::new_in(parent).map_err(io_err(parent))?;
            tmp.write_all(bytes).map_err(io_err(&full))?;
            if let Some(perms) = permissions {
                tmp.as_file()
                    .set_permissions(perms.clone())
                    .map_err(io_err(&full))?;
            }
            tmp.persist(&full).map_err(|e| io_err(&full)(e.error))?;
            Ok(())
        }
    }
}

/// The path as a clean relative path, or why it is not allowed.
fn normalize(path: &str) -> Result<PathBuf, String> {
    if path.trim().is_empty() {
        return Err("the path is empty".into());
    }
    if path.contains('\0') {
        return Err("the path contains a NUL byte".into());
    }
    // A model used to Windows writes `src\lib.rs`; on this side that is one file named
    // with a backslash in the repository root, and reporting it as `src/lib.rs` would lie.
    if path.contains('\\') {
        return Err("use `/` to separate directories; `\\` is not allowed in paths".into());
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(name) => {
                if name.to_string_lossy().eq_ignore_ascii_case(".git") {
                    return Err("paths inside .git are not allowed".into());
                }
                out.push(name);
            }
            Component::CurDir => {}
            Component::ParentDir => return Err("`..` is not allowed in paths".into()),
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "absolute paths are not allowed; use a path relative to the repository root"
                        .into(),
                );
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("the path names the repository root, not a file".into());
    }
    Ok(out)
}

enum PathProblem {
    Unsafe(String),
    Io(std::io::Error),
}

/// Refuses a path any of whose existing components is a symlink (it could lead outside the
/// root), whose parents are not directories, or which is a directory itself.
fn check_no_symlinks(root: &Path, rel: &Path) -> Result<(), PathProblem> {
    let components: Vec<_> = rel.components().collect();
    let mut current = root.to_path_buf();
    let mut shown = PathBuf::new();
    for (i, component) in components.iter().enumerate() {
        current.push(component);
        shown.push(component);
        let last = i + 1 == components.len();
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(PathProblem::Unsafe(if last {
                    "the path is a symlink; edits never follow symlinks".into()
                } else {
                    format!("the path goes through the symlink {}", shown.display())
                }));
            }
            Ok(meta) if !last && !meta.is_dir() => {
                return Err(PathProblem::Unsafe(format!(
                    "{} is not a directory",
                    shown.display()
                )));
            }
            Ok(meta) if last && meta.is_dir() => {
                return Err(PathProblem::Unsafe("the path is a directory".into()));
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(PathProblem::Io(e)),
        }
    }
    Ok(())
}

enum SearchFailure {
    /// With a description of where the file comes closest.
    NotFound(String),
    /// 1-based starting lines of the matches.
    Ambiguous(Vec<usize>),
}

/// Replaces the single occurrence of `search`: an exact match first, then one that
/// compares line by line ignoring differences in whitespace (models often get
/// indentation wrong), re-indenting `replace` to the file's indentation.
fn search_replace(content: &str, search: &str, replace: &str) -> Result<String, SearchFailure> {
    let exact = match_positions(content, search);
    match exact.as_slice() {
        [at] => {
            let mut out = String::with_capacity(content.len() + replace.len());
            out.push_str(&content[..*at]);
            out.push_str(replace);
            out.push_str(&content[at + search.len()..]);
            return Ok(out);
        }
        [_, _, ..] => {
            let lines = exact
                .iter()
                .map(|at| content[..*at].matches('\n').count() + 1)
                .collect();
            return Err(SearchFailure::Ambiguous(lines));
        }
        [] => {}
    }

    let file_lines: Vec<&str> = content.split_inclusive('\n').collect();
    let search_lines = trim_blank_edges(search.lines().collect());
    if search_lines.is_empty() {
        return Err(SearchFailure::NotFound("the search block is blank".into()));
    }
    let n = search_lines.len();
    let starts: Vec<usize> = (0..file_lines.len().saturating_sub(n - 1))
        .filter(|&i| (0..n).all(|j| loose(file_lines[i + j]) == loose(search_lines[j])))
        .collect();
    match starts.as_slice() {
        [start] => {
            let start = *start;
            let matched = &file_lines[start..start + n];
            let eol = if matched.iter().any(|l| l.ends_with("\r\n")) {
                "\r\n"
            } else {
                "\n"
            };
            let ends_with_newline = matched.last().is_some_and(|l| l.ends_with('\n'));
            let file_indent = indent_of(matched[0]);
            let search_indent = indent_of(search_lines[0]);
            let mut out = String::with_capacity(content.len() + replace.len());
            file_lines[..start].iter().for_each(|l| out.push_str(l));
            let replace_lines: Vec<&str> = replace.lines().collect();
            for (k, line) in replace_lines.iter().enumerate() {
                out.push_str(&reindent(line, search_indent, file_indent));
                if k + 1 < replace_lines.len() || ends_with_newline {
                    out.push_str(eol);
                }
            }
            file_lines[start + n..].iter().for_each(|l| out.push_str(l));
            Ok(out)
        }
        [_, _, ..] => Err(SearchFailure::Ambiguous(
            starts.iter().map(|s| s + 1).collect(),
        )),
        [] => Err(SearchFailure::NotFound(closest(&file_lines, &search_lines))),
    }
}

/// Every start of `needle` in `haystack`, overlapping ones included, so that "aa" in "aaa"
/// counts as ambiguous.
fn match_positions(haystack: &str, needle: &str) -> Vec<usize> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = haystack[from..].find(needle) {
        let at = from + found;
        out.push(at);
        // Step one character, not one byte, to stay on a char boundary.
        from = at + haystack[at..].chars().next().map_or(1, char::len_utf8);
        if from > haystack.len() {
            break;
        }
    }
    out
}

fn trim_blank_edges(lines: Vec<&str>) -> Vec<&str> {
    let start = lines.iter().position(|l| !l.trim().is_empty());
    let end = lines.iter().rposition(|l| !l.trim().is_empty());
    match (start, end) {
        (Some(s), Some(e)) => lines[s..=e].to_vec(),
        _ => Vec::new(),
    }
}

/// A line with whitespace runs collapsed and trimmed.
fn loose(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn indent_of(line: &str) -> &str {
    let trimmed = line.trim_start_matches([' ', '\t']);
    &line[..line.len() - trimmed.len()]
}

/// Moves `line` from the search block's indentation to the file's.
fn reindent(line: &str, from: &str, to: &str) -> String {
    let line = line.trim_end_matches('\r');
    if from == to || line.trim().is_empty() {
        return line.to_owned();
    }
    if let Some(rest) = line.strip_prefix(from) {
        return format!("{to}{rest}");
    }
    // Less indented than the block's first line: shift by the same difference if possible.
    if let Some(extra) = to.strip_prefix(from) {
        return format!("{extra}{line}");
    }
    line.to_owned()
}

/// Describes where the file comes closest to the search block: the longest run of matching
/// leading lines and the first line that differs, or else the line most similar to the
/// block's first line.
fn closest(file_lines: &[&str], search_lines: &[&str]) -> String {
    let mut best: Option<(usize, usize)> = None;
    for i in 0..file_lines.len() {
        let run = search_lines
            .iter()
            .zip(&file_lines[i..])
            .take_while(|(s, f)| loose(s) == loose(f))
            .count();
        if run > 0 && best.is_none_or(|(_, b)| run > b) {
            best = Some((i, run));
        }
    }
    if let Some((start, run)) = best {
        let expected = search_lines[run].trim();
        return match file_lines.get(start + run) {
            Some(actual) => format!(
                "lines {}-{} match its first {run} line(s), then line {} is `{}` where the search has `{expected}`",
                start + 1,
                start + run,
                start + run + 1,
                actual.trim()
            ),
            None => format!(
                "lines {}-{} match its first {run} line(s), then the file ends where the search has `{expected}`",
                start + 1,
                start + run
            ),
        };
    }
    let first = loose(search_lines[0]);
    let best = file_lines
        .iter()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i, similarity(&first, &loose(l))))
        .fold(None, |acc: Option<(usize, f64)>, (i, s)| match acc {
            Some((_, best)) if best >= s => acc,
            _ => Some((i, s)),
        });
    match best {
        Some((i, _)) => format!("the closest line is {}: `{}`", i + 1, file_lines[i].trim()),
        None => "the file is empty".into(),
    }
}

/// 1 − normalised edit distance, on at most 200 characters of each line to bound the cost.
fn similarity(a: &str, b: &str) -> f64 {
    let a: Vec<char> = a.chars().take(200).collect();
    let b: Vec<char> = b.chars().take(200).collect();
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 1.0;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    1.0 - prev[b.len()] as f64 / longest as f64
}
