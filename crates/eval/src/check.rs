//! The task's own check, run natively on a tree outside builder: `test.sh` with its
//! absolute paths (`/app/src`, `/tests`, `/logs/verifier`) moved into a scratch directory,
//! its commands kept, and the reward it writes read back.

use crate::task::{Task, safe_relative_path};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(
        "{} has characters test.sh cannot take unquoted; use a --work-dir of letters, digits and / . _ + -",
        path.display()
    )]
    UnsafePath { path: PathBuf },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CheckError + use<> {
    let path = path.to_path_buf();
    move |source| CheckError::Io { what, path, source }
}

/// The scratch layout of one check: `root/app/src` is the repository, `root/tests` the
/// verification files, `root/logs/verifier` where the reward goes.
#[derive(Debug, Clone)]
pub struct CheckDirs {
    pub root: PathBuf,
}

impl CheckDirs {
    pub fn new(root: PathBuf) -> CheckDirs {
        CheckDirs { root }
    }
    pub fn src(&self) -> PathBuf {
        self.root.join("app/src")
    }
    fn tests(&self) -> PathBuf {
        self.root.join("tests")
    }
    fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }
    pub fn log_file(&self) -> PathBuf {
        self.root.join("check.log")
    }
}

/// Where the task's check ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckOutcome {
    pub passed: bool,
    /// What `reward.txt` held, trimmed; `None` when the script wrote none.
    pub reward: Option<String>,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub duration_ms: u64,
    /// The script's combined output.
    pub log: PathBuf,
}

fn boundary_before(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c.is_whitespace() || "\"'=(:;|&<>`{,".contains(c),
    }
}

fn boundary_after(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => !(c.is_ascii_alphanumeric() || "_.-".contains(c)),
    }
}

/// Rewrites the absolute roots `/app`, `/tests` and `/logs` where they start a path (after
/// whitespace, a quote, `=` and the like, and followed by `/` or the path's end) — so
/// `cp "/tests/a.rs" tests/a.rs` moves and `crates/x/tests/a.rs` does not.
pub fn rewrite_paths(script: &str, app: &str, tests: &str, logs: &str) -> String {
    let roots = [("/app", app), ("/tests", tests), ("/logs", logs)];
    let mut out = String::with_capacity(script.len());
    let mut prev: Option<char> = None;
    let mut i = 0;
    while i < script.len() {
        let rest = &script[i..];
        if boundary_before(prev)
            && let Some((from, to)) = roots.iter().find(|(from, _)| {
                rest.starts_with(from) && boundary_after(rest[from.len()..].chars().next())
            })
        {
            out.push_str(to);
            i += from.len();
            prev = from.chars().last();
            continue;
        }
        let Some(c) = rest.chars().next() else { break };
        out.push(c);
        prev = Some(c);
        i += c.len_utf8();
    }
    out
}

fn shell_safe(path: &Path) -> Result<String, CheckError> {
    let text = path.to_str().filter(|s| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._+-".contains(c))
    });
    text.map(str::to_string)
        .ok_or_else(|| CheckError::UnsafePath {
            path: path.to_path_buf(),
        })
}

/// Runs the check on `dirs.src()`, which must already hold the tree to check. At most
/// `timeout`; the script's whole process group is killed when it runs over.
pub async fn run(
    task: &Task,
    dirs: &CheckDirs,
    timeout: Duration,
) -> Result<CheckOutcome, CheckError> {
    let app = shell_safe(&dirs.root.join("app"))?;
    let tests_dir = dirs.tests();
    let logs_dir = dirs.logs();
    for d in [&tests_dir, &logs_dir.join("verifier")] {
        std::fs::create_dir_all(d).map_err(io("creating", d))?;
    }
    for (rel, content) in &task.verification_files {
        // Checked when the task was read; checked again because a path is about to be made.
        if !safe_relative_path(rel) {
            continue;
        }
        let path = tests_dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::write(&path, content).map_err(io("writing", &path))?;
    }
    let original = task
        .verification_files
        .get("test.sh")
        .map(String::as_str)
        .unwrap_or("");
    let script = rewrite_paths(
        original,
        &app,
        &shell_safe(&tests_dir)?,
        &shell_safe(&logs_dir)?,
    );
    let script_path = dirs.root.join("test.sh");
    std::fs::write(&script_path, script).map_err(io("writing", &script_path))?;
    let log = dirs.log_file();
    let out = std::fs::File::create(&log).map_err(io("creating", &log))?;
    let err = out.try_clone().map_err(io("opening", &log))?;
    let src = dirs.src();
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(&script_path)
        .current_dir(&src)
        // The check builds inside its own tree: a shared target directory could hand it
        // artifacts of another tree.
        .env_remove("CARGO_TARGET_DIR")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(io("running bash for", &script_path))?;
    let pid = child.id();
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(status) => (
            Some(status.map_err(io("waiting for", &script_path))?),
            false,
        ),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: killpg only sends a signal to the group this check started (its
                // leader is the child spawned with process_group(0)).
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            let _ = child.kill().await;
            (None, true)
        }
    };
    let reward_file = logs_dir.join("verifier/reward.txt");
    let reward = std::fs::read_to_string(&reward_file)
        .ok()
        .map(|s| s.trim().to_string());
    // The devset's scripts write 1 or 0; anything but a full reward is a failure.
    let passed = !timed_out
        && reward
            .as_deref()
            .and_then(|r| r.parse::<f64>().ok())
            .is_some_and(|r| r >= 1.0);
    Ok(CheckOutcome {
        passed,
        reward,
        exit_code: status.and_then(|s| s.code()),
        timed_out,
        duration_ms: started.elapsed().as_millis() as u64,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn rewrites_only_absolute_roots() {
        let script = "#!/bin/bash\ncd /app/src\nmkdir -p \"crates/toml/tests\"\n\
                      cp \"/tests/builder/app_settings.rs\" \"tests/builder/app_settings.rs\"\n\
                      cp /tests/x.rs x.rs\nls /appendix /tests2\n\
                      echo 1 > /logs/verifier/reward.txt\nX=/tests/y; cd /app\n";
        let got = rewrite_paths(script, "/w/app", "/w/tests", "/w/logs");
        assert_eq!(
            got,
            "#!/bin/bash\ncd /w/app/src\nmkdir -p \"crates/toml/tests\"\n\
             cp \"/w/tests/builder/app_settings.rs\" \"tests/builder/app_settings.rs\"\n\
             cp /w/tests/x.rs x.rs\nls /appendix /tests2\n\
             echo 1 > /w/logs/verifier/reward.txt\nX=/w/tests/y; cd /w/app\n"
        );
    }

    fn task(script: &str) -> Task {
        let mut files = BTreeMap::new();
        files.insert("test.sh".to_string(), script.to_string());
        files.insert("sub/data.txt".to_string(), "payload\n".to_string());
        Task {
            task: "t-1".into(),
            category: String::new(),
            repo: "a/b".into(),
            commit: "abcd".into(),
            instruction: "x".into(),
            starting_point_patch: String::new(),
            changed_files: vec![],
            changed_files_any: vec![],
            added_files: vec![],
            fix_patch: String::new(),
            verification_files: files,
        }
    }

    const SCRIPT: &str = "#!/bin/bash\ncd /app/src\nmkdir -p sub\ncp \"/tests/sub/data.txt\" sub/data.txt\n\
                          grep -q payload sub/data.txt && grep -q fixed code.txt\ntest_status=$?\n\
                          if [ $test_status -eq 0 ]; then\n  echo 1 > /logs/verifier/reward.txt\nelse\n  \
                          echo 0 > /logs/verifier/reward.txt\nfi\nexit \"$test_status\"\n";

    #[tokio::test]
    async fn runs_the_script_in_scratch_and_reads_the_reward() {
        let root = tempfile::tempdir().unwrap();
        for (content, passed) in [("fixed\n", true), ("broken\n", false)] {
            let dirs = CheckDirs::new(root.path().join(content.trim()));
            std::fs::create_dir_all(dirs.src()).unwrap();
            std::fs::write(dirs.src().join("code.txt"), content).unwrap();
            let got = run(&task(SCRIPT), &dirs, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(got.passed, passed, "{got:?}");
            assert_eq!(got.reward.as_deref(), Some(if passed { "1" } else { "0" }));
            assert_eq!(got.exit_code, Some(if passed { 0 } else { 1 }));
            assert!(!got.timed_out);
        }
    }

    #[tokio::test]
    async fn a_check_past_its_time_is_killed_with_its_children() {
        let root = tempfile::tempdir().unwrap();
        let dirs = CheckDirs::new(root.path().join("slow"));
        std::fs::create_dir_all(dirs.src()).unwrap();
        let marker = dirs.src().join("survivor");
        let script = format!(
            "cd /app/src\n(sleep 2; touch {}) &\nsleep 30\necho 1 > /logs/verifier/reward.txt\n",
            marker.display()
        );
        let started = Instant::now();
        let got = run(&task(&script), &dirs, Duration::from_millis(500))
            .await
            .unwrap();
        assert!(
            got.timed_out && !got.passed && got.reward.is_none(),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "a background child outlived the timeout");
    }

    #[tokio::test]
    async fn refuses_a_scratch_path_the_script_cannot_take() {
        let root = tempfile::tempdir().unwrap();
        let dirs = CheckDirs::new(root.path().join("has space"));
        let err = run(&task(SCRIPT), &dirs, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, CheckError::UnsafePath { .. }), "{err}");
    }
}
