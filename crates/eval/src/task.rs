//! The devset's task format (one JSON object a line) and the selection a run evaluates.
//!
//! Tasks are untrusted input: their ids become directory names and prompt markers, and their
//! verification file names become paths, so both are checked here before anything uses them.

use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// One task of `tasks.jsonl` (see the devset's README for the fields).
#[derive(Debug, Clone, Deserialize)]
pub struct Task {
    pub task: String,
    #[serde(default)]
    pub category: String,
    pub repo: String,
    pub commit: String,
    pub instruction: String,
    #[serde(default)]
    pub starting_point_patch: String,
    #[serde(default)]
    pub changed_files: Vec<String>,
    #[serde(default)]
    pub changed_files_any: Vec<String>,
    #[serde(default)]
    pub added_files: Vec<String>,
    pub fix_patch: String,
    /// `test.sh` and the files it copies in from `/tests`, path → content.
    pub verification_files: BTreeMap<String, String>,
}

/// Why the task file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a task: {reason}")]
    BadLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path}: task {id} appears on lines {first} and {second}")]
    Duplicate {
        path: PathBuf,
        id: String,
        first: usize,
        second: usize,
    },
    #[error("--only names task(s) not in the file: {0}")]
    UnknownIds(String),
    #[error("no task matches the filters (--only, --repo, --limit)")]
    NoneSelected,
}

/// Which tasks to run: the file's order, then `only`, `repos`, `limit`.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub only: Vec<String>,
    pub repos: Vec<String>,
    pub limit: Option<usize>,
}

/// Reads every line (a bad line anywhere is an error: the file is the eval's input and a
/// silently skipped task would make shares meaningless) and returns the selected tasks.
pub fn load(path: &Path, selection: &Selection) -> Result<Vec<Task>, TaskError> {
    let text = std::fs::read_to_string(path).map_err(|source| TaskError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let tasks = parse(path, &text)?;
    select(tasks, selection)
}

pub fn parse(path: &Path, text: &str) -> Result<Vec<Task>, TaskError> {
    let mut tasks = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| TaskError::BadLine {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let task: Task = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        task.check().map_err(bad)?;
        if let Some(first) = seen.insert(task.task.clone(), line) {
            return Err(TaskError::Duplicate {
                path: path.to_path_buf(),
                id: task.task,
                first,
                second: line,
            });
        }
        tasks.push(task);
    }
    Ok(tasks)
}

pub fn select(tasks: Vec<Task>, selection: &Selection) -> Result<Vec<Task>, TaskError> {
    if !selection.only.is_empty() {
        let known: HashSet<&str> = tasks.iter().map(|t| t.task.as_str()).collect();
        let unknown: Vec<&str> = selection
            .only
            .iter()
            .map(String::as_str)
            .filter(|id| !known.contains(id))
            .collect();
        if !unknown.is_empty() {
            return Err(TaskError::UnknownIds(unknown.join(", ")));
        }
    }
    let mut chosen: Vec<Task> = tasks
        .into_iter()
        .filter(|t| selection.only.is_empty() || selection.only.contains(&t.task))
        .filter(|t| selection.repos.is_empty() || selection.repos.contains(&t.repo))
        .collect();
    if let Some(limit) = selection.limit {
        chosen.truncate(limit);
    }
    if chosen.is_empty() {
        return Err(TaskError::NoneSelected);
    }
    Ok(chosen)
}

fn safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A relative path that stays inside the directory it is joined to.
pub fn safe_relative_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && !p.contains('\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

impl Task {
    fn check(&self) -> Result<(), String> {
        if !safe_name(&self.task) {
            return Err(format!(
                "task id {:?} must be letters, digits, '-', '_' or '.'",
                self.task
            ));
        }
        match self.repo.split_once('/') {
            Some((owner, name)) if safe_name(owner) && safe_name(name) => {}
            _ => return Err(format!("repo {:?} is not owner/name", self.repo)),
        }
        if !(4..=64).contains(&self.commit.len())
            || !self.commit.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(format!("commit {:?} is not a hex object id", self.commit));
        }
        if self.instruction.trim().is_empty() {
            return Err("instruction is empty".into());
        }
        if !self.verification_files.contains_key("test.sh") {
            return Err("verification_files has no test.sh".into());
        }
        if let Some(bad) = self
            .verification_files
            .keys()
            .find(|p| !safe_relative_path(p))
        {
            return Err(format!(
                "verification file {bad:?} is not a relative path inside /tests"
            ));
        }
        Ok(())
    }

    /// `owner+name`: the mirror directory's name.
    pub fn mirror_name(&self) -> String {
        self.repo.replace('/', "+")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, repo: &str) -> String {
        serde_json::json!({
            "task": id, "repo": repo, "commit": "0123abcd", "instruction": "Fix the bug please.",
            "fix_patch": "", "verification_files": {"test.sh": "exit 0\n"},
        })
        .to_string()
    }

    #[test]
    fn parses_selects_and_limits_in_file_order() {
        let text = [
            line("a__x-1", "a/x"),
            String::new(),
            line("b__y-2", "b/y"),
            line("a__x-3", "a/x"),
        ]
        .join("\n");
        let tasks = parse(Path::new("t.jsonl"), &text).unwrap();
        assert_eq!(tasks.len(), 3);
        let sel = Selection {
            repos: vec!["a/x".into()],
            ..Default::default()
        };
        let ids: Vec<String> = select(tasks.clone(), &sel)
            .unwrap()
            .into_iter()
            .map(|t| t.task)
            .collect();
        assert_eq!(ids, ["a__x-1", "a__x-3"]);
        let sel = Selection {
            only: vec!["a__x-3".into(), "b__y-2".into()],
            limit: Some(1),
            ..Default::default()
        };
        let ids: Vec<String> = select(tasks.clone(), &sel)
            .unwrap()
            .into_iter()
            .map(|t| t.task)
            .collect();
        assert_eq!(ids, ["b__y-2"]);
        let sel = Selection {
            only: vec!["nope".into()],
            ..Default::default()
        };
        assert!(matches!(select(tasks, &sel), Err(TaskError::UnknownIds(s)) if s == "nope"));
    }

    #[test]
    fn a_bad_line_names_its_number_and_reason() {
        let mut bad_path = serde_json::from_str::<serde_json::Value>(&line("a-1", "a/x")).unwrap();
        bad_path["verification_files"]["../escape"] = "x".into();
        for (text, why) in [
            ("{not json".to_string(), "key must be a string"),
            (line("../evil", "a/x"), "task id"),
            (line("a-1", "nouser"), "owner/name"),
            (bad_path.to_string(), "inside /tests"),
        ] {
            let text = format!("{}\n{text}\n", line("ok-1", "a/x"));
            let err = parse(Path::new("t.jsonl"), &text).unwrap_err().to_string();
            assert!(err.starts_with("t.jsonl:2: not a task"), "{err}");
            assert!(err.contains(why), "{err}");
        }
        let dup = format!("{}\n{}\n", line("a-1", "a/x"), line("a-1", "a/x"));
        let err = parse(Path::new("t.jsonl"), &dup).unwrap_err().to_string();
        assert!(err.contains("lines 1 and 2"), "{err}");
    }
}
