//! `builder eval` end to end: fixture tasks in the devset's format, built entirely here — a
//! tiny Rust crate with no dependencies in a local mirror laid out as the fetch tool lays
//! them out (`DIR/owner+name/repo`), a starting_point_patch, a fix_patch that makes the
//! task's test pass, and a test.sh in the devset's style — run through the real binary: its
//! own server, the real BAML sidecar and sandbox, and the eval's scripted model.

mod common;

use common::BIN;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .args(["-ec", script])
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

const CARGO_TOML: &str =
    "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n";
const LIB: &str = "pub fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n\npub fn double(x: i32) -> i32 {\n    x + x\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn adds() {\n        assert_eq!(super::add(2, 2), 4);\n    }\n}\n";

/// The devset's test.sh shape: cd /app/src, copy the test in from /tests, run cargo test,
/// write the reward to /logs/verifier.
const TEST_SH: &str = r#"#!/bin/bash

cd /app/src

export RUST_BACKTRACE=1

# Copy HEAD test files from /tests (overwrites BASE state)
mkdir -p "tests"
cp "/tests/tests/fixed.rs" "tests/fixed.rs"

# Run the test of the fix
cargo test --test fixed -- --nocapture
test_status=$?

if [ $test_status -eq 0 ]; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
exit "$test_status"
"#;

/// Mirrors and a tasks file with two tasks on one upstream commit. Both start from a
/// `double` the starting patch broke; each fix repairs it differently, adds `src/util.rs`
/// naming its task (so a fix routed to the wrong task fails that task's check), and the
/// first also deletes NOTES.md.
fn fixture(root: &Path) -> (PathBuf, PathBuf) {
    std::fs::write(root.join("Cargo.toml.in"), CARGO_TOML).unwrap();
    std::fs::write(root.join("lib.rs.in"), LIB).unwrap();
    sh(
        root,
        "git init -q -b main up && cd up && cp ../Cargo.toml.in Cargo.toml && mkdir src \
         && cp ../lib.rs.in src/lib.rs && echo notes > NOTES.md && printf '/target\\n' > .gitignore \
         && git add -A && git commit -qm upstream && git tag upstream \
         && sed -i 's/    x + x$/    x + x + 1/' src/lib.rs && git commit -qam start && git tag start \
         && mkdir -p ../mirrors/acme+tiny && git clone -q --bare . ../mirrors/acme+tiny/repo",
    );
    let up = root.join("up");
    let commit = sh(&up, "git rev-parse upstream").trim().to_string();
    let starting = sh(&up, "git diff upstream start");
    let fix = |n: &str, body: &str, name: &str, delete_notes: bool| -> String {
        let script = format!(
            "git checkout -q -B fix-{n} start && sed -i 's/    x + x + 1$/    {body}/' src/lib.rs \
             && printf 'pub mod util;\\n' >> src/lib.rs \
             && printf 'pub fn name() -> &'\"'\"'static str {{\\n    \"{name}\"\\n}}\\n' > src/util.rs \
             {} && git add -A && git commit -qm fix && git diff start fix-{n}",
            if delete_notes {
                "&& git rm -q NOTES.md"
            } else {
                ""
            }
        );
        sh(&up, &script)
    };
    let fix1 = fix("1", "x * 2", "one", true);
    let fix2 = fix("2", "2 * x", "two", false);
    assert!(
        fix1.contains("deleted file mode") && fix1.contains("new file mode"),
        "{fix1}"
    );
    let task = |id: &str, name: &str, fix_patch: &str| -> String {
        let test = format!(
            "#[test]\nfn doubles_and_names_the_task() {{\n    assert_eq!(tiny::double(3), 6);\n    assert_eq!(tiny::util::name(), \"{name}\");\n}}\n"
        );
        json!({
            "task": id, "category": "bugfix", "repo": "acme/tiny", "commit": commit,
            "instruction": "double(x) returns one too many: double(3) is 7, it must be 6. Also expose util::name() naming this task.",
            "starting_point_patch": starting,
            "changed_files": ["src/lib.rs"], "changed_files_any": ["src/lib.rs", "src/util.rs"],
            "added_files": ["src/util.rs"],
            "fix_patch": fix_patch,
            "verification_files": {"test.sh": TEST_SH, "tests/fixed.rs": test},
        })
        .to_string()
    };
    let tasks = root.join("tasks.jsonl");
    std::fs::write(
        &tasks,
        format!(
            "{}\n{}\n",
            task("acme__tiny-1", "one", &fix1),
            task("acme__tiny-2", "two", &fix2)
        ),
    )
    .unwrap();
    (tasks, root.join("mirrors"))
}

/// `builder eval …` with the test's settings; returns the output and the JSON report.
fn eval(root: &Path, tasks: &Path, mirrors: &Path, args: &[&str]) -> (Output, Value) {
    let json_path = root.join(format!("report-{}.json", common::free_port()));
    let out = Command::new(BIN)
        .arg("eval")
        .arg("--tasks")
        .arg(tasks)
        .arg("--mirrors")
        .arg(mirrors)
        .arg("--json")
        .arg(&json_path)
        .args([
            "--feature-timeout-minutes",
            "10",
            "--check-timeout-secs",
            "600",
        ])
        .args(args)
        .env("SANDBOX_TIMEOUT_SECONDS", "300")
        .env("BUILDER_MAX_REPAIR_ITERATIONS", "2")
        .env_remove("BUILDER_SERVER")
        .output()
        .unwrap();
    let report = std::fs::read_to_string(&json_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null);
    (out, report)
}

fn explain(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn task_report<'a>(report: &'a Value, id: &str) -> &'a Value {
    report["tasks"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["task"] == id))
        .unwrap_or(&Value::Null)
}

#[test]
fn native_only_confirms_the_check_fails_without_the_fix_and_passes_with_it() {
    let root = tempfile::tempdir().unwrap();
    let (tasks, mirrors) = fixture(root.path());
    let (out, report) = eval(
        root.path(),
        &tasks,
        &mirrors,
        &["--native-only", "--answers", "none", "--jobs", "2"],
    );
    assert!(out.status.success(), "{}", explain(&out));
    for id in ["acme__tiny-1", "acme__tiny-2"] {
        let t = task_report(&report, id);
        assert_eq!(t["outcome"], "NATIVE", "{}", explain(&out));
        assert_eq!(t["check"]["passed"], false, "{t}");
        assert_eq!(t["check"]["reward"], "0", "{t}");
    }
    assert_eq!(report["summary"]["check_passed"], 0);

    let (out, report) = eval(
        root.path(),
        &tasks,
        &mirrors,
        &[
            "--native-only",
            "--answers",
            "gold",
            "--only",
            "acme__tiny-2",
        ],
    );
    assert!(out.status.success(), "{}", explain(&out));
    let t = task_report(&report, "acme__tiny-2");
    assert_eq!(t["check"]["passed"], true, "{t}\n{}", explain(&out));
    assert_eq!(report["summary"]["tasks"], 1);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("check passed: 1/1 (100%)"), "{table}");
}

#[test]
fn gold_answers_are_delivered_and_pass_the_check_with_two_tasks_at_once() {
    let root = tempfile::tempdir().unwrap();
    let (tasks, mirrors) = fixture(root.path());
    let (out, report) = eval(
        root.path(),
        &tasks,
        &mirrors,
        &["--answers", "gold", "--jobs", "2"],
    );
    assert!(out.status.success(), "{}", explain(&out));
    for id in ["acme__tiny-1", "acme__tiny-2"] {
        let t = task_report(&report, id);
        assert_eq!(t["outcome"], "DELIVERED", "{t}\n{}", explain(&out));
        assert_eq!(t["check"]["passed"], true, "{t}\n{}", explain(&out));
        assert!(t["verification"]["builds_ok"].as_u64() >= Some(1), "{t}");
        assert_eq!(t["verification"]["tests_failed"], 0, "{t}");
        for phase in [
            "analysis_ms",
            "planning_ms",
            "execution_ms",
            "verification_ms",
            "delivery_ms",
            "check_ms",
        ] {
            assert!(t["phases"][phase].is_u64(), "{phase} missing: {t}");
        }
    }
    assert_eq!(report["summary"]["delivered"], 2);
    assert_eq!(report["summary"]["check_passed_share"], 1.0);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("delivered: 2/2 (100%)"), "{table}");
}

/// A broken answer (the gold change plus a line that cannot compile, in every repair too)
/// must never be delivered. This test is strict on purpose: it fails when builder reports
/// broken code as verified.
#[test]
fn broken_answers_are_never_delivered() {
    let root = tempfile::tempdir().unwrap();
    let (tasks, mirrors) = fixture(root.path());
    let (out, report) = eval(
        root.path(),
        &tasks,
        &mirrors,
        &["--answers", "broken", "--only", "acme__tiny-1"],
    );
    assert!(out.status.success(), "{}", explain(&out));
    let t = task_report(&report, "acme__tiny-1");
    let outcome = t["outcome"].as_str().unwrap_or("");
    assert!(
        outcome.starts_with("FAILED("),
        "a broken answer ended {outcome}\n{t}\n{}",
        explain(&out)
    );
    assert!(
        t["verification"]["builds_failed"].as_u64() >= Some(1),
        "{t}"
    );
    assert_eq!(t["verification"]["builds_ok"], 0, "{t}");
    assert_eq!(report["summary"]["wrongly_delivered"], 0, "{report}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("wrongly delivered (broken answers): 0/1 (0%)"),
        "{table}"
    );
}

#[test]
fn input_errors_are_reported_clearly_and_fail_the_run() {
    let root = tempfile::tempdir().unwrap();
    let (tasks, mirrors) = fixture(root.path());
    let (out, _) = eval(
        root.path(),
        &tasks,
        &root.path().join("nowhere"),
        &["--native-only"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no mirror of acme/tiny"), "{err}");

    let bad = root.path().join("bad.jsonl");
    let first = std::fs::read_to_string(&tasks).unwrap();
    let line1 = first.lines().next().unwrap_or("");
    std::fs::write(&bad, format!("{line1}\n{{\"task\": 1}}\n")).unwrap();
    let (out, _) = eval(root.path(), &bad, &mirrors, &["--native-only"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.jsonl:2: not a task"), "{err}");

    // A starting patch that does not apply: the run completes, says why, and exits non-zero.
    let mut task: Value = serde_json::from_str(line1).unwrap();
    task["starting_point_patch"] =
        "diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1,1 +1,1 @@\n-nothing like this\n+x\n".into();
    let patchy = root.path().join("patchy.jsonl");
    std::fs::write(&patchy, format!("{task}\n")).unwrap();
    let (out, report) = eval(root.path(), &patchy, &mirrors, &["--native-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", explain(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starting_point_patch does not apply"), "{err}");
    assert_eq!(report["summary"]["infrastructure_errors"], 1);
}
