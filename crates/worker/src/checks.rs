//! Turning a sandboxed build or test run into its event and, when it failed, into what the
//! model is told: compiler diagnostics, the failed tests with their messages, and which of
//! them already failed before the feature changed anything (the baseline).

use builder_core::event::{Diagnostic, Event, TestFailure};
use builder_sandbox::ExecOutcome;
use builder_testreport::{ReportFormat, TestCounts, TestFramework, TestReport};
use std::collections::BTreeSet;
use std::path::Path;

/// Output kept in events; the whole log goes to an artifact.
pub(crate) const EVENT_OUTPUT_BYTES: usize = 8 * 1024;
/// Failed tests listed in an event.
const EVENT_FAILURES: usize = 30;
/// Diagnostics listed in an event and in the repair prompt.
const EVENT_DIAGNOSTICS: usize = 20;
/// Report files read after a test run, and the size of each.
const MAX_REPORT_FILES: usize = 32;
const MAX_REPORT_BYTES: u64 = 16 * 1024 * 1024;

/// What the baseline run (untouched working copy) found.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Baseline {
    /// Names of the tests that failed; meaningful only when `per_test`.
    pub failing: BTreeSet<String>,
    /// A per-test report was read, so failures can be told apart by name.
    pub per_test: bool,
    /// The build (or the test command) failed outright before any test ran.
    pub broken: bool,
    /// The dependencies could not be fetched (an environment problem).
    pub deps_failed: bool,
    /// The build command failed on the untouched code.
    pub build_failed: bool,
    pub summary: String,
}

impl Baseline {
    /// `output` is the failed command's output: its errors become the summary, so the
    /// feature's failure says what the repository's own problem is.
    pub(crate) fn deps_failed(output: &str) -> Baseline {
        Baseline {
            broken: true,
            deps_failed: true,
            summary: why_it_failed("the dependencies could not be fetched", output),
            ..Baseline::default()
        }
    }

    pub(crate) fn build_failed(output: &str) -> Baseline {
        Baseline {
            broken: true,
            build_failed: true,
            summary: why_it_failed("the build failed", output),
            ..Baseline::default()
        }
    }
}

/// `what`, then the error lines of `output` (at most a few), for a failure message.
fn why_it_failed(what: &str, output: &str) -> String {
    const SHOWN: usize = 8;
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("error") || t.starts_with("ERROR") || t.starts_with("npm ERR!")
        })
        .take(SHOWN)
        .collect();
    if errors.is_empty() {
        let tail = output_for_model(output, false, 1024);
        return format!("{what}:\n{}", tail.trim_end());
    }
    format!("{what}:\n{}", errors.join("\n"))
}

/// How pre-existing failures are treated (`BUILDER_VERIFY_BASELINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BaselineMode {
    /// Run the baseline; only failures that are new block delivery.
    #[default]
    Tolerate,
    /// Run the baseline for information; every failure blocks.
    Strict,
    /// No baseline run.
    Off,
}

impl std::str::FromStr for BaselineMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "tolerate" => Ok(BaselineMode::Tolerate),
            "strict" => Ok(BaselineMode::Strict),
            "off" => Ok(BaselineMode::Off),
            other => Err(format!(
                "BUILDER_VERIFY_BASELINE must be tolerate, strict or off, got {other:?}"
            )),
        }
    }
}

pub(crate) fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    s[start..].to_string()
}

/// The end of a command's output as the model should read it: whole lines only, and when
/// the output has errors, without the compiler's warning blocks (which can bury them).
pub(crate) fn output_for_model(output: &str, has_errors: bool, max: usize) -> String {
    let kept: String = if has_errors {
        drop_warning_blocks(output)
    } else {
        output.to_string()
    };
    if kept.len() <= max {
        return kept;
    }
    let cut = tail(&kept, max);
    match cut.find('\n') {
        Some(i) if i + 1 < cut.len() => format!("[… earlier output cut]\n{}", &cut[i + 1..]),
        _ => cut,
    }
}

/// Removes rustc/cargo-style `warning:` blocks (a `warning` line up to the next blank line)
/// and their `N warnings emitted` summaries.
fn drop_warning_blocks(output: &str) -> String {
    let mut out = String::with_capacity(output.len());
    let mut in_warning = false;
    for line in output.lines() {
        let t = line.trim_start();
        if t.starts_with("warning:") || t.starts_with("warning[") {
            // A summary ("generated 3 warnings", "2 warnings emitted") is one line.
            in_warning = !t.contains(" warning") && !t.contains("warnings emitted");
            continue;
        }
        if in_warning {
            if line.trim().is_empty() {
                in_warning = false;
                continue;
            }
            if !t.starts_with("error") {
                continue;
            }
            in_warning = false;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn diagnostics(output: &str) -> Vec<Diagnostic> {
    builder_testreport::extract_diagnostics(output)
        .into_iter()
        .take(EVENT_DIAGNOSTICS)
        .map(|d| Diagnostic {
            file: d.file,
            line: d.line,
            column: d.column,
            code: d.code,
            message: d.message,
        })
        .collect()
}

fn egress(out: &ExecOutcome) -> Vec<String> {
    out.egress_refused.iter().map(|r| r.to_string()).collect()
}

/// The compiler errors as the model should read them, first in the feedback.
fn diagnostics_block(diags: &[Diagnostic]) -> String {
    if diags.is_empty() {
        return String::new();
    }
    let mut s = String::from("Compiler errors:\n");
    for d in diags {
        let at = match (d.line, d.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", d.file),
            (Some(l), None) => format!("{}:{l}", d.file),
            _ => d.file.clone(),
        };
        let code = d
            .code
            .as_deref()
            .map(|c| format!("[{c}] "))
            .unwrap_or_default();
        s.push_str(&format!("- {at}: {code}{}\n", d.message));
    }
    s.push('\n');
    s
}

/// A finished build.
pub(crate) struct BuildChecked {
    pub event: Event,
    /// `(reason, feedback for the model)` when it failed.
    pub failure: Option<(String, String)>,
}

pub(crate) fn build_checked(command: &str, out: &ExecOutcome, baseline: bool) -> BuildChecked {
    let success = out.success();
    let diags = if success {
        Vec::new()
    } else {
        diagnostics(&out.output)
    };
    let failure = (!success).then(|| {
        // The model gets told when a sandbox limit, not its code, stopped the build.
        let why = match &out.killed_by {
            Some(limit) => format!("the build was stopped by the sandbox's {limit}"),
            None => "the build failed".to_string(),
        };
        let feedback = format!(
            "{}{}",
            diagnostics_block(&diags),
            output_for_model(&out.output, !diags.is_empty(), EVENT_OUTPUT_BYTES)
        );
        (why, feedback)
    });
    BuildChecked {
        event: Event::BuildCompleted {
            command: command.to_string(),
            success,
            exit_code: out.exit_code,
            timed_out: out.timed_out,
            duration_ms: out.duration.as_millis() as u64,
            output_tail: tail(&out.output, EVENT_OUTPUT_BYTES),
            killed_by: out.killed_by.clone(),
            limits_hit: out.limits_hit.clone(),
            baseline,
            diagnostics: diags,
            egress_refused: egress(out),
        },
        failure,
    }
}

/// A finished dependency phase.
pub(crate) fn deps_checked(
    command: &str,
    out: &ExecOutcome,
    baseline: bool,
    hosts: &[builder_sandbox::HostPattern],
) -> BuildChecked {
    let success = out.success();
    let allowed = if hosts.is_empty() {
        "none".to_string()
    } else {
        hosts
            .iter()
            .map(|h| h.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let failure = (!success).then(|| {
        let why = match &out.killed_by {
            Some(limit) => format!("fetching the dependencies was stopped by the sandbox's {limit}"),
            None if !out.egress_refused.is_empty() => format!(
                "fetching the dependencies failed: the sandbox refused {} (allowed: {allowed}; add registries to BUILDER_DEPS_EGRESS_WHITELIST)",
                egress(out).join(", "),
            ),
            None => format!(
                "fetching the dependencies failed (`{command}`, registries reachable: {allowed})"
            ),
        };
        (why, output_for_model(&out.output, false, EVENT_OUTPUT_BYTES))
    });
    BuildChecked {
        event: Event::DependenciesCompleted {
            command: command.to_string(),
            success,
            exit_code: out.exit_code,
            timed_out: out.timed_out,
            duration_ms: out.duration.as_millis() as u64,
            output_tail: tail(&out.output, EVENT_OUTPUT_BYTES),
            killed_by: out.killed_by.clone(),
            egress_refused: egress(out),
            baseline,
        },
        failure,
    }
}

/// A finished test run.
pub(crate) struct TestsChecked {
    pub event: Event,
    pub failure: Option<(String, String)>,
    /// "N passed, M failed, K ignored" (+ what the baseline explains).
    pub summary: String,
    /// The per-test report as JSON, for the artifact.
    pub report_json: Option<Vec<u8>>,
    /// What this run says as a baseline.
    pub as_baseline: Baseline,
}

fn format_of(report: &TestReport) -> &'static str {
    match report.format {
        ReportFormat::CargoLibtest => "cargo_libtest",
        ReportFormat::Nextest => "nextest",
        ReportFormat::GoTestJson => "go_test_json",
        ReportFormat::JUnitXml => "junit_xml",
        ReportFormat::JestJson => "jest_json",
        ReportFormat::MochaJson => "mocha_json",
    }
}

fn hint(framework: TestFramework) -> Option<ReportFormat> {
    match framework {
        TestFramework::Cargo => Some(ReportFormat::CargoLibtest),
        TestFramework::Go => Some(ReportFormat::GoTestJson),
        TestFramework::Pytest => Some(ReportFormat::JUnitXml),
        TestFramework::Npm | TestFramework::Unknown => None,
    }
}

/// Reads the report files a test command wrote into `dir` (`$BUILDER_REPORT_DIR`).
pub(crate) async fn read_reports(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return files;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        if files.len() >= MAX_REPORT_FILES {
            break;
        }
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let wanted = name.ends_with(".xml") || name.ends_with(".json") || name.ends_with(".jsonl");
        // The sandboxed command wrote this directory: no symlinks, nothing huge.
        let Ok(meta) = tokio::fs::symlink_metadata(&path).await else {
            continue;
        };
        if !wanted || !meta.is_file() || meta.len() > MAX_REPORT_BYTES {
            continue;
        }
        if let Ok(bytes) = tokio::fs::read(&path).await {
            files.push((name, String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    files.sort();
    files
}

pub(crate) fn tests_checked(
    command: &str,
    framework: TestFramework,
    out: &ExecOutcome,
    report_files: &[(String, String)],
    baseline_run: bool,
    baseline: Option<&Baseline>,
    mode: BaselineMode,
) -> TestsChecked {
    let files: Vec<(&str, &str)> = report_files
        .iter()
        .map(|(n, c)| (n.as_str(), c.as_str()))
        .collect();
    let report = builder_testreport::detect_and_parse(&out.output, &files, hint(framework))
        .filter(|r| !r.cases.is_empty());
    let summary_counts = builder_testreport::parse_test_counts(framework, &out.output);
    // Summary lines survive a truncated output; a report is exact when it was a file.
    let counts = match (&report, summary_counts) {
        (Some(r), None) => {
            let c = r.counts();
            TestCounts {
                passed: u32::try_from(c.passed).unwrap_or(u32::MAX),
                failed: u32::try_from(c.failed).unwrap_or(u32::MAX),
                ignored: u32::try_from(c.skipped).unwrap_or(u32::MAX),
            }
        }
        (_, Some(c)) => c,
        (None, None) => TestCounts::default(),
    };
    let failing: BTreeSet<String> = report
        .as_ref()
        .map(|r| r.failed().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    let failures: Vec<TestFailure> = report
        .as_ref()
        .map(|r| {
            r.failed()
                .take(EVENT_FAILURES)
                .map(|c| TestFailure {
                    name: c.name.clone(),
                    message: c.message.clone(),
                    file: c.file.clone(),
                    line: c.line,
                })
                .collect()
        })
        .unwrap_or_default();
    let diags = if out.success() {
        Vec::new()
    } else {
        diagnostics(&out.output)
    };
    let ran_clean = out.success() && counts.failed == 0 && counts.executed() > 0;
    let mut summary = format!(
        "{} passed, {} failed, {} ignored",
        counts.passed, counts.failed, counts.ignored
    );

    // Failures the baseline already had do not block, when told so and when every failure
    // can be named and was there before.
    let per_test = report.is_some();
    let preexisting: Vec<String> = match baseline {
        Some(b) if b.per_test && per_test => failing.intersection(&b.failing).cloned().collect(),
        _ => Vec::new(),
    };
    let only_preexisting = !baseline_run
        && mode == BaselineMode::Tolerate
        && !ran_clean
        && out.killed_by.is_none()
        && !out.timed_out
        && counts.failed > 0
        && counts.passed > 0
        && per_test
        && failing.len() as u32 >= counts.failed
        && preexisting.len() == failing.len();
    let success = ran_clean || only_preexisting;
    if only_preexisting {
        summary.push_str(&format!(
            "; all {} failure(s) also fail on the untouched code and are tolerated: {}",
            preexisting.len(),
            preexisting.join(", ")
        ));
    }

    let failure = (!success).then(|| {
        let why = if let Some(limit) = &out.killed_by {
            format!("the tests were stopped by the sandbox's {limit}")
        } else if counts.executed() == 0 && out.success() {
            "no test was executed".to_string()
        } else if counts.executed() == 0 && !diags.is_empty() {
            // "0 passed, 0 failed" would hide why: the tests never ran.
            let d = &diags[0];
            let at = d.line.map_or(d.file.clone(), |l| format!("{}:{l}", d.file));
            format!(
                "the tests did not compile ({} error(s); first at {at}: {})",
                diags.len(),
                d.message
            )
        } else {
            format!("the tests failed ({summary})")
        };
        let mut feedback = diagnostics_block(&diags);
        if !failures.is_empty() {
            feedback.push_str("Failed tests:\n");
            for f in &failures {
                let new = if preexisting.contains(&f.name) {
                    " (already failing before the change)"
                } else {
                    ""
                };
                let message = f
                    .message
                    .as_deref()
                    .map(|m| format!(": {}", tail(m, 600)))
                    .unwrap_or_default();
                feedback.push_str(&format!("- {}{new}{message}\n", f.name));
            }
            feedback.push('\n');
        }
        if let Some(b) = baseline.filter(|_| !baseline_run) {
            feedback.push_str(&format!("Before the change: {}\n\n", b.summary));
        }
        feedback.push_str(&output_for_model(
            &out.output,
            !diags.is_empty(),
            EVENT_OUTPUT_BYTES,
        ));
        (why, feedback)
    });

    let report_json = report
        .as_ref()
        .and_then(|r| serde_json::to_vec_pretty(r).ok());
    TestsChecked {
        event: Event::TestsCompleted {
            command: command.to_string(),
            success,
            exit_code: out.exit_code,
            timed_out: out.timed_out,
            passed: counts.passed,
            failed: counts.failed,
            ignored: counts.ignored,
            duration_ms: out.duration.as_millis() as u64,
            output_tail: tail(&out.output, EVENT_OUTPUT_BYTES),
            killed_by: out.killed_by.clone(),
            limits_hit: out.limits_hit.clone(),
            baseline: baseline_run,
            report_format: report.as_ref().map(|r| format_of(r).to_string()),
            failures,
            preexisting_failures: preexisting,
            diagnostics: diags,
            egress_refused: egress(out),
        },
        failure,
        as_baseline: Baseline {
            failing,
            per_test,
            broken: counts.executed() == 0,
            summary: summary.clone(),
            ..Baseline::default()
        },
        summary,
        report_json,
    }
}

/// Why a failed test run is not the change's doing, so that no repair iteration is spent
/// on it: the tests did not run at all on the untouched code either, or (when pre-existing
/// failures are not tolerated) every failure already failed there.
pub(crate) fn not_caused_by_the_change(
    now: &Baseline,
    before: Option<&Baseline>,
    mode: BaselineMode,
) -> Option<String> {
    let before = before?;
    if now.broken && before.broken {
        return Some(format!(
            "the tests do not run on the untouched code either ({}): an environment problem, not the change's",
            before.summary
        ));
    }
    if mode == BaselineMode::Strict
        && now.per_test
        && before.per_test
        && !now.failing.is_empty()
        && now.failing.is_subset(&before.failing)
    {
        return Some(format!(
            "every failing test also fails on the untouched code ({}), and BUILDER_VERIFY_BASELINE=strict does not tolerate pre-existing failures",
            now.failing.iter().cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outcome(code: i32, output: &str) -> ExecOutcome {
        ExecOutcome {
            exit_code: Some(code),
            timed_out: false,
            output: output.to_string(),
            output_bytes_total: output.len() as u64,
            duration: Duration::from_millis(5),
            runtime: "test",
            enforced_limits: vec![],
            unenforced_limits: vec![],
            killed_by: None,
            limits_hit: vec![],
            egress_refused: vec![],
        }
    }

    #[test]
    fn the_model_reads_whole_lines_and_errors_without_warning_blocks() {
        let out = "   Compiling x v0.1.0\nwarning: unused variable: `a`\n --> src/lib.rs:1:5\n  |\n1 | let a = 1;\n\nerror[E0425]: cannot find value `b`\n --> src/lib.rs:2:5\n\nwarning: `x` (lib) generated 1 warning\nerror: could not compile `x`\n";
        let kept = output_for_model(out, true, 10_000);
        assert!(!kept.contains("unused variable"), "{kept}");
        assert!(!kept.contains("generated 1 warning"), "{kept}");
        assert!(
            kept.contains("error[E0425]: cannot find value `b`"),
            "{kept}"
        );
        assert!(kept.contains("could not compile"), "{kept}");
        // Without errors the warnings are what there is to read.
        assert!(output_for_model(out, false, 10_000).contains("unused variable"));
        // Cut at a line boundary, and says so.
        let long = (0..200)
            .map(|i| format!("line number {i}\n"))
            .collect::<String>();
        let cut = output_for_model(&long, false, 100);
        assert!(
            cut.starts_with("[… earlier output cut]\nline number "),
            "{cut}"
        );
        assert!(cut.ends_with("line number 199\n"), "{cut}");
    }

    #[test]
    fn tests_that_do_not_compile_say_so() {
        let out = outcome(
            101,
            "   Compiling x v0.1.0\nerror[E0425]: cannot find value `b` in this scope\n --> tests/t.rs:3:5\n  |\n\nerror: could not compile `x` (test \"t\") due to 1 previous error\n",
        );
        let checked = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &out,
            &[],
            false,
            None,
            BaselineMode::Tolerate,
        );
        let (why, _) = checked.failure.expect("a failure");
        assert!(
            why.starts_with("the tests did not compile (1 error(s); first at tests/t.rs:3"),
            "{why}"
        );
    }

    #[test]
    fn a_broken_baseline_says_what_broke() {
        let b = Baseline::deps_failed(
            "    Updating crates.io index\nerror: failed to select a version for the requirement `xml-rs = \"^0.3.0\"`\n  version 0.3.0 is yanked\n",
        );
        assert!(b.deps_failed && b.broken);
        assert_eq!(
            b.summary,
            "the dependencies could not be fetched:\nerror: failed to select a version for the requirement `xml-rs = \"^0.3.0\"`"
        );
        let b = Baseline::build_failed("compiling\nsomething odd\n");
        assert_eq!(b.summary, "the build failed:\ncompiling\nsomething odd");
    }

    #[test]
    fn failures_the_untouched_code_had_are_not_the_changes() {
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let broken = Baseline {
            broken: true,
            summary: "0 passed, 0 failed, 0 ignored".into(),
            ..Baseline::default()
        };
        let why = not_caused_by_the_change(&broken, Some(&broken), BaselineMode::Tolerate);
        assert!(why.is_some_and(|w| w.contains("environment")));
        let before = Baseline {
            failing: names(&["a::old"]),
            per_test: true,
            ..Baseline::default()
        };
        let same = Baseline {
            failing: names(&["a::old"]),
            per_test: true,
            ..Baseline::default()
        };
        let new = Baseline {
            failing: names(&["a::old", "a::new"]),
            per_test: true,
            ..Baseline::default()
        };
        assert!(not_caused_by_the_change(&same, Some(&before), BaselineMode::Strict).is_some());
        assert!(not_caused_by_the_change(&new, Some(&before), BaselineMode::Strict).is_none());
        assert!(not_caused_by_the_change(&broken, Some(&before), BaselineMode::Tolerate).is_none());
        assert!(not_caused_by_the_change(&broken, None, BaselineMode::Tolerate).is_none());
    }

    const CARGO_FAIL: &str = "running 3 tests\ntest a::ok ... ok\ntest a::old ... FAILED\ntest a::new ... FAILED\n\nfailures:\n\n---- a::old stdout ----\nthread 'a::old' panicked at src/lib.rs:10:5:\nold bug\n\n---- a::new stdout ----\nthread 'a::new' panicked at src/lib.rs:20:5:\nnew bug\n\nfailures:\n    a::new\n    a::old\n\ntest result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";
    const CARGO_OLD_ONLY: &str = "running 3 tests\ntest a::ok ... ok\ntest a::old ... FAILED\ntest a::new ... ok\n\nfailures:\n\n---- a::old stdout ----\nthread 'a::old' panicked at src/lib.rs:10:5:\nold bug\n\nfailures:\n    a::old\n\ntest result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s\n";

    #[test]
    fn only_new_failures_block_when_tolerating() {
        let base = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &outcome(101, CARGO_OLD_ONLY),
            &[],
            true,
            None,
            BaselineMode::Tolerate,
        );
        assert!(base.failure.is_some(), "a baseline reports its failures");
        let b = base.as_baseline;
        assert!(b.per_test);
        assert_eq!(b.failing.iter().collect::<Vec<_>>(), ["a::old"]);

        // The same single failure after the change: tolerated.
        let same = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &outcome(101, CARGO_OLD_ONLY),
            &[],
            false,
            Some(&b),
            BaselineMode::Tolerate,
        );
        assert!(same.failure.is_none(), "{}", same.summary);
        assert!(same.summary.contains("tolerated"), "{}", same.summary);
        match &same.event {
            Event::TestsCompleted {
                success,
                preexisting_failures,
                ..
            } => {
                assert!(*success);
                assert_eq!(preexisting_failures, &["a::old".to_string()]);
            }
            e => panic!("{e:?}"),
        }

        // A new failure blocks, and the feedback names it and marks the old one.
        let worse = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &outcome(101, CARGO_FAIL),
            &[],
            false,
            Some(&b),
            BaselineMode::Tolerate,
        );
        let (_, feedback) = worse.failure.expect("a new failure blocks");
        assert!(feedback.contains("- a::new: "), "{feedback}");
        assert!(
            feedback.contains("a::old (already failing before the change)"),
            "{feedback}"
        );
        assert!(
            feedback.contains("Before the change: 2 passed, 1 failed"),
            "{feedback}"
        );

        // Strict: the old failure blocks too.
        let strict = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &outcome(101, CARGO_OLD_ONLY),
            &[],
            false,
            Some(&b),
            BaselineMode::Strict,
        );
        assert!(strict.failure.is_some());
    }

    #[test]
    fn zero_tests_never_pass_and_compile_errors_are_located() {
        let none = tests_checked(
            "cargo test",
            TestFramework::Cargo,
            &outcome(
                0,
                "running 0 tests\n\ntest result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n",
            ),
            &[],
            false,
            None,
            BaselineMode::Tolerate,
        );
        assert_eq!(none.failure.unwrap().0, "no test was executed");

        let compile = "error[E0308]: mismatched types\n --> src/lib.rs:3:5\n  |\n3 |     \"x\"\n  |     ^^^ expected `u32`\n\nerror: could not compile `app`\n";
        let b = build_checked("cargo build", &outcome(101, compile), false);
        let (_, feedback) = b.failure.unwrap();
        assert!(
            feedback.starts_with("Compiler errors:\n- src/lib.rs:3:5: [E0308] mismatched types"),
            "{feedback}"
        );
        match b.event {
            Event::BuildCompleted { diagnostics, .. } => {
                assert_eq!(diagnostics.len(), 1);
                assert_eq!(diagnostics[0].line, Some(3));
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn junit_files_give_per_test_results() {
        let xml = r#"<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="2"><testcase classname="tests.test_a" name="test_ok" time="0.01"/><testcase classname="tests.test_a" name="test_bad" time="0.02"><failure message="assert 1 == 2">boom</failure></testcase></testsuite></testsuites>"#;
        let t = tests_checked(
            "python3 -m pytest",
            TestFramework::Pytest,
            &outcome(1, "F.\n1 failed, 1 passed in 0.03s\n"),
            &[("pytest.xml".to_string(), xml.to_string())],
            false,
            None,
            BaselineMode::Tolerate,
        );
        match &t.event {
            Event::TestsCompleted {
                report_format,
                failures,
                passed,
                failed,
                ..
            } => {
                assert_eq!(report_format.as_deref(), Some("junit_xml"));
                assert_eq!((*passed, *failed), (1, 1));
                assert_eq!(failures.len(), 1);
                assert!(failures[0].name.contains("test_bad"), "{failures:?}");
            }
            e => panic!("{e:?}"),
        }
        assert!(t.report_json.is_some());
    }
}
