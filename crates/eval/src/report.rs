//! What a run found, per task and in sum: outcomes, the verification builder recorded, the
//! task's own check, and where the time went — read from the feature's events, never from
//! what the eval expected to happen.

use crate::answers::AnswerMode;
use crate::check::CheckOutcome;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

/// Milliseconds spent in each phase, from the events' timestamps; `None` where the phase
/// did not happen.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Phases {
    pub prepare_ms: Option<u64>,
    pub analysis_ms: Option<u64>,
    pub planning_ms: Option<u64>,
    /// Summed over iterations.
    pub execution_ms: Option<u64>,
    /// Summed over iterations.
    pub verification_ms: Option<u64>,
    /// The untouched code's run, beside analysis and planning.
    pub baseline_ms: Option<u64>,
    /// The baseline's dependency phase (the repository's first feature fills the cache).
    pub baseline_dependencies_ms: Option<u64>,
    /// The working copy's first dependency phase (the cache the baseline filled, or filled
    /// meanwhile).
    pub dependencies_ms: Option<u64>,
    pub delivery_ms: Option<u64>,
    pub check_ms: Option<u64>,
}

/// Builder's own verification record.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Verification {
    pub builds_ok: u32,
    pub builds_failed: u32,
    /// Of the last `tests.completed` that is not the baseline's.
    pub tests_passed: Option<u32>,
    pub tests_failed: Option<u32>,
    /// Compiler errors of that run (tests that did not compile count neither way).
    pub tests_compile_errors: Option<u32>,
    pub iterations: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskReport {
    pub task: String,
    pub repo: String,
    /// `DELIVERED`, `FAILED(CODE)`, `CANCELLED`, `STUCK` (no end within the eval's wait),
    /// `NATIVE` (no builder run), or `ERROR(phase)` when the eval itself could not run it.
    pub outcome: String,
    pub feature_id: Option<String>,
    pub branch: Option<String>,
    pub verification: Verification,
    pub check: Option<CheckOutcome>,
    pub phases: Phases,
    /// Why it failed or errored, and what the eval left out (e.g. skipped large blobs).
    pub notes: Vec<String>,
    /// Set when the eval, not builder, failed on this task.
    pub infrastructure_error: Option<String>,
}

impl TaskReport {
    pub fn new(task: &str, repo: &str) -> TaskReport {
        TaskReport {
            task: task.to_string(),
            repo: repo.to_string(),
            outcome: String::new(),
            feature_id: None,
            branch: None,
            verification: Verification::default(),
            check: None,
            phases: Phases::default(),
            notes: Vec::new(),
            infrastructure_error: None,
        }
    }

    pub fn delivered(&self) -> bool {
        self.outcome == "DELIVERED"
    }

    pub fn check_passed(&self) -> bool {
        self.check.as_ref().is_some_and(|c| c.passed)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub tasks: usize,
    pub delivered: usize,
    pub delivered_share: f64,
    pub check_passed: usize,
    pub check_passed_share: f64,
    /// `broken` answers only: features builder delivered although their code cannot compile.
    pub wrongly_delivered: Option<usize>,
    pub wrongly_delivered_share: Option<f64>,
    pub infrastructure_errors: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub answers: AnswerMode,
    pub native_only: bool,
    pub tasks: Vec<TaskReport>,
    pub summary: Summary,
}

fn share(n: usize, of: usize) -> f64 {
    if of == 0 { 0.0 } else { n as f64 / of as f64 }
}

impl Report {
    pub fn new(answers: AnswerMode, native_only: bool, tasks: Vec<TaskReport>) -> Report {
        let n = tasks.len();
        let delivered = tasks.iter().filter(|t| t.delivered()).count();
        let check_passed = tasks.iter().filter(|t| t.check_passed()).count();
        let broken = answers == AnswerMode::Broken && !native_only;
        Report {
            answers,
            native_only,
            summary: Summary {
                tasks: n,
                delivered,
                delivered_share: share(delivered, n),
                check_passed,
                check_passed_share: share(check_passed, n),
                wrongly_delivered: broken.then_some(delivered),
                wrongly_delivered_share: broken.then_some(share(delivered, n)),
                infrastructure_errors: tasks
                    .iter()
                    .filter(|t| t.infrastructure_error.is_some())
                    .count(),
            },
            tasks,
        }
    }

    pub fn infrastructure_errors(&self) -> usize {
        self.summary.infrastructure_errors
    }

    /// The table and the summary, for a terminal.
    pub fn render(&self) -> String {
        let header = [
            "task",
            "outcome",
            "build ok/fail",
            "tests pass/fail",
            "check",
            "analysis",
            "planning",
            "execution",
            "verification",
            "baseline",
            "deps base/work",
            "delivery",
            "check time",
        ];
        let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
        for t in &self.tasks {
            let v = &t.verification;
            let tests = match (v.tests_passed, v.tests_failed, v.tests_compile_errors) {
                (Some(p), Some(f), Some(d)) if d > 0 => format!("{p}/{f} +{d} compile err"),
                (Some(p), Some(f), _) => format!("{p}/{f}"),
                _ => "-".into(),
            };
            let check = match &t.check {
                None => "-".to_string(),
                Some(c) if c.passed => "PASS".into(),
                Some(c) if c.timed_out => "FAIL(timeout)".into(),
                Some(_) => "FAIL".into(),
            };
            let p = &t.phases;
            rows.push(vec![
                t.task.clone(),
                t.outcome.clone(),
                if self.native_only {
                    "-".into()
                } else {
                    format!("{}/{}", v.builds_ok, v.builds_failed)
                },
                tests,
                check,
                ms(p.analysis_ms),
                ms(p.planning_ms),
                ms(p.execution_ms),
                ms(p.verification_ms),
                ms(p.baseline_ms),
                format!(
                    "{}/{}",
                    ms(p.baseline_dependencies_ms),
                    ms(p.dependencies_ms)
                ),
                ms(p.delivery_ms),
                ms(p.check_ms),
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for row in &rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
        }
        for t in &self.tasks {
            if let Some(e) = &t.infrastructure_error {
                out.push_str(&format!("  {}: eval error: {e}\n", t.task));
            }
            for note in &t.notes {
                out.push_str(&format!("  {}: {note}\n", t.task));
            }
        }
        let s = &self.summary;
        out.push('\n');
        if !self.native_only {
            out.push_str(&format!(
                "delivered: {}/{} ({:.0}%)\n",
                s.delivered,
                s.tasks,
                100.0 * s.delivered_share
            ));
        }
        out.push_str(&format!(
            "check passed: {}/{} ({:.0}%)\n",
            s.check_passed,
            s.tasks,
            100.0 * s.check_passed_share
        ));
        if let (Some(w), Some(share)) = (s.wrongly_delivered, s.wrongly_delivered_share) {
            out.push_str(&format!(
                "wrongly delivered (broken answers): {w}/{} ({:.0}%)\n",
                s.tasks,
                100.0 * share
            ));
        }
        if s.infrastructure_errors > 0 {
            out.push_str(&format!(
                "not evaluated (eval errors): {}\n",
                s.infrastructure_errors
            ));
        }
        out
    }
}

fn ms(v: Option<u64>) -> String {
    match v {
        None => "-".into(),
        Some(ms) if ms < 60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

fn ty(e: &Value) -> &str {
    e["type"].as_str().unwrap_or("")
}

fn at(e: &Value) -> Option<DateTime<Utc>> {
    e["timestamp"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
}

fn baseline(e: &Value) -> bool {
    e["payload"]["baseline"].as_bool() == Some(true)
}

fn num(v: &Value) -> Option<u32> {
    // google.protobuf.Struct numbers arrive as JSON floats.
    v.as_f64().map(|f| f as u32)
}

fn span(a: DateTime<Utc>, b: DateTime<Utc>) -> u64 {
    (b - a).num_milliseconds().max(0) as u64
}

const TERMINAL: [&str; 3] = ["feature.delivered", "feature.failed", "feature.cancelled"];

/// Sum of the spans from each `start` event to the first of `ends` after it (or, when none
/// came, the terminal event or the last event).
fn phase(events: &[Value], start: &str, ends: &[&str]) -> Option<u64> {
    let mut total = None;
    for (i, e) in events.iter().enumerate() {
        if ty(e) != start {
            continue;
        }
        let Some(from) = at(e) else { continue };
        let end = events[i + 1..]
            .iter()
            .find(|x| ends.contains(&ty(x)) || TERMINAL.contains(&ty(x)))
            .or_else(|| events.last());
        if let Some(to) = end.and_then(at) {
            *total.get_or_insert(0) += span(from, to);
        }
    }
    total
}

/// Verification counts and phase times of one feature's events.
pub fn read_events(events: &[Value]) -> (Verification, Phases) {
    let mut v = Verification::default();
    for e in events.iter().filter(|e| !baseline(e)) {
        match ty(e) {
            "build.completed" => {
                if e["payload"]["success"].as_bool() == Some(true) {
                    v.builds_ok += 1;
                } else {
                    v.builds_failed += 1;
                }
            }
            "tests.completed" => {
                v.tests_passed = num(&e["payload"]["passed"]).or(Some(0));
                v.tests_failed = num(&e["payload"]["failed"]).or(Some(0));
                v.tests_compile_errors = e["payload"]["diagnostics"]
                    .as_array()
                    .map(|d| d.len() as u32)
                    .or(Some(0));
            }
            "execution.started" => v.iterations += 1,
            _ => {}
        }
    }
    let mut p = Phases {
        analysis_ms: phase(
            events,
            "analysis.started",
            &["analysis.completed", "analysis.failed"],
        ),
        planning_ms: phase(
            events,
            "planning.started",
            &["plan.generated", "planning.failed"],
        ),
        execution_ms: phase(
            events,
            "execution.started",
            &["execution.completed", "execution.failed"],
        ),
        verification_ms: phase(
            events,
            "verification.started",
            &["verification.passed", "verification.failed"],
        ),
        ..Phases::default()
    };
    let base: Vec<DateTime<Utc>> = events
        .iter()
        .filter(|e| baseline(e))
        .filter_map(at)
        .collect();
    let deps = |want_baseline: bool| {
        events
            .iter()
            .find(|e| ty(e) == "dependencies.completed" && baseline(e) == want_baseline)
            .and_then(|e| e["payload"]["duration_ms"].as_f64())
            .map(|v| v as u64)
    };
    p.baseline_dependencies_ms = deps(true);
    p.dependencies_ms = deps(false);
    if let (Some(first), Some(last)) = (base.iter().min(), base.iter().max()) {
        p.baseline_ms = Some(span(*first, *last));
    }
    let passed = events.iter().rposition(|e| ty(e) == "verification.passed");
    if let Some(i) = passed
        && let (Some(from), Some(to)) = (
            at(&events[i]),
            events[i..]
                .iter()
                .find(|e| TERMINAL.contains(&ty(e)))
                .and_then(at),
        )
    {
        p.delivery_ms = Some(span(from, to));
    }
    (v, p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ev(t: &str, secs: u32, payload: Value) -> Value {
        json!({"type": t, "timestamp": format!("2025-01-01T00:00:{secs:02}.000Z"), "payload": payload})
    }

    #[test]
    fn counts_and_phases_come_from_the_events() {
        let events = vec![
            ev("feature.requested", 0, json!({})),
            ev("analysis.started", 1, json!({})),
            ev(
                "dependencies.completed",
                2,
                json!({"baseline": true, "duration_ms": 1500.0}),
            ),
            ev("build.started", 2, json!({"baseline": true})),
            ev("analysis.completed", 3, json!({})),
            ev("planning.started", 3, json!({})),
            ev("plan.generated", 5, json!({})),
            ev(
                "tests.completed",
                8,
                json!({"baseline": true, "passed": 9.0, "failed": 0.0}),
            ),
            ev("execution.started", 5, json!({"iteration": 1.0})),
            ev("execution.completed", 6, json!({})),
            ev("verification.started", 6, json!({})),
            ev("dependencies.completed", 7, json!({"duration_ms": 250.0})),
            ev("build.completed", 9, json!({"success": false})),
            ev("verification.failed", 10, json!({})),
            ev("execution.started", 10, json!({"iteration": 2.0})),
            ev("execution.completed", 12, json!({})),
            ev("verification.started", 12, json!({})),
            ev("build.completed", 14, json!({"success": true})),
            ev("tests.completed", 16, json!({"passed": 3.0, "failed": 1.0})),
            ev("verification.passed", 17, json!({})),
            ev("push.completed", 19, json!({})),
            ev("feature.delivered", 20, json!({})),
        ];
        let (v, p) = read_events(&events);
        assert_eq!(
            v,
            Verification {
                builds_ok: 1,
                builds_failed: 1,
                tests_passed: Some(3),
                tests_failed: Some(1),
                tests_compile_errors: Some(0),
                iterations: 2
            }
        );
        assert_eq!(p.analysis_ms, Some(2000));
        assert_eq!(p.planning_ms, Some(2000));
        assert_eq!(p.execution_ms, Some(3000));
        assert_eq!(p.verification_ms, Some(9000));
        assert_eq!(p.baseline_ms, Some(6000));
        assert_eq!(p.baseline_dependencies_ms, Some(1500));
        assert_eq!(p.dependencies_ms, Some(250));
        assert_eq!(p.delivery_ms, Some(3000));
    }

    #[test]
    fn an_unfinished_phase_ends_with_the_feature() {
        let events = vec![
            ev("verification.started", 1, json!({})),
            ev("build.completed", 2, json!({"success": false})),
            ev("feature.failed", 4, json!({})),
        ];
        let (v, p) = read_events(&events);
        assert_eq!(p.verification_ms, Some(3000));
        assert_eq!(p.delivery_ms, None);
        assert_eq!((v.tests_passed, v.builds_failed), (None, 1));
    }

    #[test]
    fn summary_counts_wrong_deliveries_only_for_broken_answers() {
        let mut a = TaskReport::new("a", "o/r");
        a.outcome = "DELIVERED".into();
        let mut b = TaskReport::new("b", "o/r");
        b.outcome = "FAILED(BUILD_FAILED)".into();
        b.infrastructure_error = None;
        let r = Report::new(AnswerMode::Broken, false, vec![a.clone(), b.clone()]);
        assert_eq!(r.summary.wrongly_delivered, Some(1));
        assert_eq!(r.summary.delivered_share, 0.5);
        let text = r.render();
        assert!(
            text.contains("wrongly delivered (broken answers): 1/2 (50%)"),
            "{text}"
        );
        let r = Report::new(AnswerMode::Gold, false, vec![a, b]);
        assert_eq!(r.summary.wrongly_delivered, None);
        assert!(!r.render().contains("wrongly"));
    }
}
