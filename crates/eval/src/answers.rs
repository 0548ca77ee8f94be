//! The scripted model's answers for one task, and how they are routed to that task's
//! feature when several run at once.
//!
//! llm-script-server answers a request with the first unused script entry whose needle the
//! request contains, each entry once. A needle is one substring, so routing uses text the
//! eval itself puts into the prompts:
//!
//! - the feature's title carries `[eval TASK]`, so every prompt of the task holds it;
//! - the analysis answer's summary carries `eval-analysis[TASK]`, which only the task's
//!   PlanFeature prompt contains (the analysis is an input of planning alone);
//! - the plan answer's summary carries `eval-plan[TASK]`, which only the task's
//!   GenerateEdits prompts contain;
//! - every ValidateChange answer is the same approval, so a shared pool matched on
//!   `Task: ValidateChange` serves all tasks.
//!
//! Order in the script does the rest: the approval pool first, then each task's plan and
//! edit entries, and the title-matched analysis entries last — a prompt of the task that is
//! not an analysis finds its own entry before it reaches those.
//!
//! Edits are whole files: the fixed content read back after applying `fix_patch` to the
//! starting tree (CREATE, REPLACE_FILE, DELETE). Repair iterations get the same final content
//! again as REPLACE_FILE only (by then created files exist and deleted ones are gone), so a
//! repair never changes the answer — a broken answer stays broken.

use crate::tree::FileChange;
use llm_script_server::Entry;
use serde_json::{Value, json};

/// What the scripted model answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMode {
    /// The task's real change: `fix_patch`, with the test files the task's check copies in
    /// (the upstream commit changed them with the fix; without them a repository's own
    /// tests that use the old API do not compile, and a truthful builder refuses the change).
    Gold,
    /// The real change plus a line that cannot compile appended to its Rust files and the
    /// top crate root, in every attempt.
    Broken,
    /// No change at all (`--native-only`: the check on the starting tree).
    None,
}

/// `changes` with the task's test files (what its check copies in, `test.sh` aside) as the
/// final content of the paths the check copies them to: `cp "/tests/json.rs" "tests/json.rs"`
/// puts the file stored as `json.rs` at `tests/json.rs`. A check that copies nothing by name
/// (a loop, `cp -r`) is taken to use the stored paths as they are; a file it never copies and
/// the repository does not track is left out, as the check leaves it out.
pub fn with_task_tests(
    mut changes: Vec<FileChange>,
    verification_files: &std::collections::BTreeMap<String, String>,
    tracked: &[String],
) -> Vec<FileChange> {
    let script = verification_files
        .get("test.sh")
        .map(String::as_str)
        .unwrap_or("");
    let copies = copy_destinations(script);
    for (key, content) in verification_files {
        if key == "test.sh" {
            continue;
        }
        let destinations = match copies.get(key) {
            Some(d) => d.clone(),
            None if copies.is_empty() || tracked.contains(key) => vec![key.clone()],
            None => continue,
        };
        for path in destinations {
            match changes.iter_mut().find(|c| c.path == path) {
                Some(c) => c.after = Some(content.clone()),
                None => changes.push(FileChange {
                    existed: tracked.contains(&path),
                    path,
                    after: Some(content.clone()),
                }),
            }
        }
    }
    changes
}

/// `cp [-f] /tests/KEY DEST` lines of a check script: KEY → the repository paths it lands
/// at (relative to `/app/src`, where the checks run).
fn copy_destinations(script: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in script.lines() {
        let words: Vec<&str> = line
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .filter(|w| !w.starts_with('-'))
            .collect();
        let [cmd, from, to] = words.as_slice() else {
            continue;
        };
        let Some(key) = from.strip_prefix("/tests/") else {
            continue;
        };
        if *cmd != "cp" || key.is_empty() || key.contains('*') {
            continue;
        }
        let to = to.strip_prefix("/app/src/").unwrap_or(to);
        if to.starts_with('/') || to.split('/').any(|c| c == "..") {
            continue;
        }
        let base = key.rsplit('/').next().unwrap_or(key);
        let dest = if to == "." || to.is_empty() {
            base.to_string()
        } else if let Some(dir) = to.strip_suffix('/') {
            format!("{dir}/{base}")
        } else {
            to.trim_start_matches("./").to_string()
        };
        out.entry(key.to_string()).or_default().push(dest);
    }
    out
}

/// The line `broken` appends: a syntax error in any Rust file that is compiled.
pub const BROKEN_LINE: &str = "fn builder_eval_broken( {\n";

/// The answer every ValidateChange call gets.
pub const APPROVE: &str =
    r#"{"approved": true, "reasons": ["builder-eval: the scripted model approves"]}"#;

pub fn title_marker(task: &str) -> String {
    format!("[eval {task}]")
}

fn analysis_marker(task: &str) -> String {
    format!("eval-analysis[{task}]")
}

fn plan_marker(task: &str) -> String {
    format!("eval-plan[{task}]")
}

/// `[eval TASK] <first line of the instruction>`, within the API's 1–255 characters.
pub fn feature_title(task: &str, instruction: &str) -> String {
    let first = instruction
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let title = format!("{} {first}", title_marker(task));
    cut(title.trim(), 255)
}

/// The instruction within the API's 10–10,000 characters.
pub fn feature_description(task: &str, instruction: &str) -> String {
    let text = instruction.trim();
    if text.chars().count() < 10 {
        return format!("{text} (builder-eval task {task})");
    }
    cut(text, 10_000)
}

fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_string(),
        Some(_) => {
            let end = text
                .char_indices()
                .nth(max - 1)
                .map_or(text.len(), |(i, _)| i);
            format!("{}…", &text[..end])
        }
    }
}

/// A file the broken answer breaks, and its content before the broken line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenTarget {
    pub path: String,
    pub content: String,
}

/// The files the broken answer appends [`BROKEN_LINE`] to: every Rust file the fix changes
/// and keeps, and the starting tree's top-most crate root (`src/lib.rs` or `src/main.rs`,
/// shortest path first). One changed file alone is not enough: it may belong to a crate the
/// build never compiles (a bench or fuzz crate outside the workspace), and a "broken" answer
/// that builds would be reported as a wrong delivery when builder was right. Empty when
/// there is no Rust file at all.
pub fn broken_targets(
    changes: &[FileChange],
    tracked: &[String],
    read: impl Fn(&str) -> Option<String>,
) -> Vec<BrokenTarget> {
    let mut targets: Vec<BrokenTarget> = changes
        .iter()
        .filter(|c| c.path.ends_with(".rs"))
        .filter_map(|c| {
            c.after.as_ref().map(|a| BrokenTarget {
                path: c.path.clone(),
                content: a.clone(),
            })
        })
        .collect();
    let changed = |p: &str| changes.iter().any(|c| c.path == p);
    let mut roots: Vec<&String> = tracked
        .iter()
        .filter(|p| {
            *p == "src/lib.rs"
                || *p == "src/main.rs"
                || p.ends_with("/src/lib.rs")
                || p.ends_with("/src/main.rs")
        })
        .filter(|p| !changed(p))
        .collect();
    roots.sort_by_key(|p| (p.len(), p.as_str()));
    if let Some(root) = roots.into_iter().find_map(|p| {
        read(p).map(|content| BrokenTarget {
            path: p.clone(),
            content,
        })
    }) {
        targets.push(root);
    }
    targets
}

/// `content` with [`BROKEN_LINE`] appended on a line of its own.
pub fn with_broken_line(content: &str) -> String {
    let mut out = content.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(BROKEN_LINE);
    out
}

/// The files the answers name: every changed path, plus the broken files.
fn touched(changes: &[FileChange], broken: &[BrokenTarget]) -> Vec<String> {
    let mut files: Vec<String> = changes.iter().map(|c| c.path.clone()).collect();
    for b in broken {
        if !files.contains(&b.path) {
            files.push(b.path.clone());
        }
    }
    files
}

pub fn analysis_answer(task: &str, changes: &[FileChange], broken: &[BrokenTarget]) -> String {
    json!({
        "summary": format!("{}: the change touches the files the task's real fix touches.", analysis_marker(task)),
        "affected_files": touched(changes, broken),
        "risks": [],
        "acceptance_interpretation": ["the task's check passes"],
    })
    .to_string()
}

/// One step for every file: the edits of one answer then apply as a whole.
pub fn plan_answer(task: &str, changes: &[FileChange], broken: &[BrokenTarget]) -> String {
    let files = touched(changes, broken);
    json!({
        "summary": format!("{}: apply the task's change in one step.", plan_marker(task)),
        "steps": [{
            "index": 0,
            "description": "Apply the change to every affected file.",
            "step_type": "MODIFY_FILE",
            "target_files": files,
            "dependencies": [],
        }],
        "affected_files": files,
    })
    .to_string()
}

/// The GenerateEdits answer. `first`: the plan's step on the starting tree (CREATE /
/// REPLACE_FILE / DELETE); otherwise a repair on the tree the first answer left
/// (REPLACE_FILE of every file that exists after the change).
pub fn edits_answer(changes: &[FileChange], broken: &[BrokenTarget], first: bool) -> String {
    let mut edits: Vec<Value> = Vec::new();
    for c in changes {
        let content = match broken.iter().find(|b| b.path == c.path) {
            Some(b) => Some(with_broken_line(&b.content)),
            None => c.after.clone(),
        };
        match (content, c.existed, first) {
            (Some(content), false, true) => {
                edits.push(json!({"path": c.path, "action": "CREATE", "content": content}))
            }
            (Some(content), _, _) => {
                edits.push(json!({"path": c.path, "action": "REPLACE_FILE", "content": content}))
            }
            (None, _, true) => edits.push(json!({"path": c.path, "action": "DELETE"})),
            (None, _, false) => {}
        }
    }
    for b in broken
        .iter()
        .filter(|b| !changes.iter().any(|c| c.path == b.path))
    {
        edits.push(json!({"path": b.path, "action": "REPLACE_FILE", "content": with_broken_line(&b.content)}));
    }
    let summary = if first {
        "builder-eval: the task's change"
    } else {
        "builder-eval: the same change again"
    };
    json!({"summary": summary, "edits": edits}).to_string()
}

/// How many answers of each kind a task may need: the first try plus every repair
/// iteration, and one more for the retry a step makes when edits do not apply.
pub fn generate_entries(max_repair_iterations: u32) -> usize {
    max_repair_iterations as usize + 2
}

/// One task's entries, in two groups: those that go before every title-matched entry of
/// the script, and the title-matched analysis entries that go after all of them.
pub struct TaskEntries {
    pub early: Vec<Entry>,
    pub late: Vec<Entry>,
    /// Approvals this task adds to the shared pool.
    pub approvals: usize,
}

pub fn task_entries(
    task: &str,
    changes: &[FileChange],
    broken: &[BrokenTarget],
    max_repair_iterations: u32,
) -> TaskEntries {
    let analysis = analysis_answer(task, changes, broken);
    let plan = plan_answer(task, changes, broken);
    let mut early = Vec::new();
    // A second plan answer covers a planning call that is retried after its answer arrived.
    for _ in 0..2 {
        early.push(Entry::text(plan.clone()).when_contains(analysis_marker(task)));
    }
    early.push(Entry::text(edits_answer(changes, broken, true)).when_contains(plan_marker(task)));
    let repair = edits_answer(changes, broken, false);
    for _ in 1..generate_entries(max_repair_iterations) {
        early.push(Entry::text(repair.clone()).when_contains(plan_marker(task)));
    }
    TaskEntries {
        early,
        late: vec![Entry::text(analysis).when_contains(title_marker(task))],
        approvals: max_repair_iterations as usize + 1,
    }
}

/// The whole script: the shared approvals, every task's early entries, then every task's
/// late ones.
pub fn script(tasks: Vec<TaskEntries>) -> llm_script_server::Script {
    let approvals: usize = tasks.iter().map(|t| t.approvals).sum();
    let mut entries: Vec<Entry> = (0..approvals)
        .map(|_| Entry::text(APPROVE).when_contains("Task: ValidateChange"))
        .collect();
    let mut late = Vec::new();
    for t in tasks {
        entries.extend(t.early);
        late.extend(t.late);
    }
    entries.extend(late);
    llm_script_server::Script::new(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(path: &str, existed: bool, after: Option<&str>) -> FileChange {
        FileChange {
            path: path.into(),
            existed,
            after: after.map(str::to_string),
        }
    }

    fn edits(answer: &str) -> Vec<(String, String, Option<String>)> {
        let v: Value = serde_json::from_str(answer).unwrap();
        v["edits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["path"].as_str().unwrap().to_string(),
                    e["action"].as_str().unwrap().to_string(),
                    e["content"].as_str().map(str::to_string),
                )
            })
            .collect()
    }

    fn fix() -> Vec<FileChange> {
        vec![
            change("src/lib.rs", true, Some("pub fn f() {}")),
            change("src/new.rs", false, Some("pub fn g() {}\n")),
            change("OLD.md", true, None),
        ]
    }

    #[test]
    fn first_answer_creates_replaces_and_deletes_repairs_only_replace() {
        let first = edits(&edits_answer(&fix(), &[], true));
        assert_eq!(
            first,
            [
                (
                    "src/lib.rs".into(),
                    "REPLACE_FILE".into(),
                    Some("pub fn f() {}".into())
                ),
                (
                    "src/new.rs".into(),
                    "CREATE".into(),
                    Some("pub fn g() {}\n".into())
                ),
                ("OLD.md".into(), "DELETE".into(), None),
            ]
        );
        let repair = edits(&edits_answer(&fix(), &[], false));
        assert_eq!(
            repair,
            [
                (
                    "src/lib.rs".into(),
                    "REPLACE_FILE".into(),
                    Some("pub fn f() {}".into())
                ),
                (
                    "src/new.rs".into(),
                    "REPLACE_FILE".into(),
                    Some("pub fn g() {}\n".into())
                ),
            ]
        );
    }

    #[test]
    fn broken_answers_append_the_line_in_every_attempt() {
        // Every kept Rust file of the fix, and the top crate root the fix leaves alone.
        let tracked = vec![
            "crates/a/src/lib.rs".to_string(),
            "src/main.rs".to_string(),
            "README.md".to_string(),
        ];
        let read = |p: &str| Some(format!("// {p}\n"));
        let targets = broken_targets(&fix(), &tracked, read);
        let paths: Vec<&str> = targets.iter().map(|t| t.path.as_str()).collect();
        assert_eq!(paths, ["src/lib.rs", "src/new.rs", "src/main.rs"]);
        for first in [true, false] {
            let got = edits(&edits_answer(&fix(), &targets, first));
            let broken_line = |i: usize| {
                got[i]
                    .2
                    .as_deref()
                    .is_some_and(|c| c.ends_with(BROKEN_LINE))
            };
            assert_eq!(
                got[0].2.as_deref(),
                Some("pub fn f() {}\nfn builder_eval_broken( {\n")
            );
            assert!(broken_line(1), "{got:?}");
            let last = got.last().unwrap();
            assert_eq!(
                (last.0.as_str(), last.1.as_str(), last.2.as_deref()),
                (
                    "src/main.rs",
                    "REPLACE_FILE",
                    Some("// src/main.rs\nfn builder_eval_broken( {\n")
                )
            );
            assert_eq!(got.len(), if first { 4 } else { 3 });
        }
        let plan: Value = serde_json::from_str(&plan_answer("t-1", &fix(), &targets)).unwrap();
        assert_eq!(
            plan["steps"][0]["target_files"],
            json!(["src/lib.rs", "src/new.rs", "OLD.md", "src/main.rs"])
        );
        // No Rust file in the fix: the crate root alone; no Rust file anywhere: nothing.
        let docs = vec![change("README.md", true, Some("x\n"))];
        let targets = broken_targets(&docs, &tracked, read);
        assert_eq!(targets.len(), 1);
        assert_eq!(targets[0].path, "src/main.rs");
        assert!(broken_targets(&docs, &["README.md".into()], read).is_empty());
    }

    #[test]
    fn gold_carries_the_tasks_test_files() {
        let mut files = std::collections::BTreeMap::new();
        files.insert("test.sh".to_string(), "cargo test\n".to_string());
        files.insert("tests/t.rs".to_string(), "// new test\n".to_string());
        files.insert("src/lib.rs".to_string(), "// final\n".to_string());
        let changes = with_task_tests(fix(), &files, &["tests/t.rs".to_string()]);
        let find = |p: &str| changes.iter().find(|c| c.path == p);
        assert!(find("test.sh").is_none());
        let t = find("tests/t.rs").expect("the test file");
        assert!(t.existed);
        assert_eq!(t.after.as_deref(), Some("// new test\n"));
        assert_eq!(
            find("src/lib.rs").and_then(|c| c.after.as_deref()),
            Some("// final\n")
        );
    }

    #[test]
    fn gold_puts_test_files_where_the_check_copies_them() {
        let mut files = std::collections::BTreeMap::new();
        files.insert(
            "test.sh".to_string(),
            "cd /app/src\nmkdir -p tests\ncp \"/tests/json.rs\" \"tests/json.rs\"\n\
             cp -f /tests/src/multi/tests.rs src/multi/\ncp /tests/a.rs /app/src/b/a.rs\n\
             cargo test\n"
                .to_string(),
        );
        files.insert("json.rs".to_string(), "// json\n".to_string());
        files.insert("src/multi/tests.rs".to_string(), "// multi\n".to_string());
        files.insert("a.rs".to_string(), "// a\n".to_string());
        files.insert("unused.rs".to_string(), "// never copied\n".to_string());
        let tracked = ["tests/json.rs".to_string()];
        let changes = with_task_tests(fix(), &files, &tracked);
        let find = |p: &str| changes.iter().find(|c| c.path == p);
        let json = find("tests/json.rs").expect("json.rs lands in tests/");
        assert!(json.existed);
        assert_eq!(json.after.as_deref(), Some("// json\n"));
        assert!(find("json.rs").is_none());
        assert!(find("src/multi/tests.rs").is_some());
        assert!(find("b/a.rs").is_some());
        assert!(find("unused.rs").is_none(), "the check never copies it");
    }

    #[test]
    fn titles_and_descriptions_fit_the_api() {
        let long = format!("{}\nmore", "word ".repeat(100));
        let t = feature_title("org__repo-12", &long);
        assert!(t.starts_with("[eval org__repo-12] word word"), "{t}");
        assert_eq!(t.chars().count(), 255);
        let d = feature_description("x", &"é".repeat(20_000));
        assert_eq!(d.chars().count(), 10_000);
        assert_eq!(
            feature_description("x-1", "Fix"),
            "Fix (builder-eval task x-1)"
        );
    }

    #[test]
    fn markers_route_each_prompt_to_its_task_and_function() {
        let a = task_entries("a-1", &fix(), &[], 3);
        let b = task_entries("a-10", &fix(), &[], 3);
        assert_eq!(a.early.len(), 2 + generate_entries(3));
        let script = script(vec![a, b]);
        let fits = |prompt: &str| -> Vec<usize> {
            script
                .entries
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    e.when_contains
                        .as_deref()
                        .is_some_and(|n| prompt.contains(n))
                })
                .map(|(i, _)| i)
                .collect()
        };
        // An analysis prompt of a-1 (title only) reaches only a-1's late entry — not a-10's,
        // whose marker differs by more than a prefix.
        let analyze = "Task: AnalyzeFeature.\nTitle: [eval a-1] fix it";
        let hits = fits(analyze);
        assert_eq!(hits.len(), 1);
        let first_hit = &script.entries[hits[0]];
        assert!(
            matches!(&first_hit.reply, llm_script_server::Reply::Text { text, .. } if text.contains("eval-analysis[a-1]"))
        );
        // Planning a-10: its plan entry comes before its own analysis entry.
        let plan = "Task: PlanFeature.\nTitle: [eval a-10] x\n<analysis>\neval-analysis[a-10]: …";
        let hits = fits(plan);
        assert!(
            matches!(&script.entries[hits[0]].reply, llm_script_server::Reply::Text { text, .. } if text.contains("eval-plan[a-10]"))
        );
        // Validation of either: the shared approvals come first.
        let validate = "Task: ValidateChange.\nTitle: [eval a-1] x\n<diff>";
        assert!(
            matches!(&script.entries[fits(validate)[0]].reply, llm_script_server::Reply::Text { text, .. } if text == APPROVE)
        );
        // Edits of a-1: the first answer (with CREATE) before the repairs.
        let generate = "Task: GenerateEdits.\nTitle: [eval a-1] x\n<plan>\neval-plan[a-1]: apply";
        let hits = fits(generate);
        assert!(
            matches!(&script.entries[hits[0]].reply, llm_script_server::Reply::Text { text, .. } if text.contains("CREATE"))
        );
        assert!(
            matches!(&script.entries[hits[1]].reply, llm_script_server::Reply::Text { text, .. } if !text.contains("CREATE"))
        );
    }
}
