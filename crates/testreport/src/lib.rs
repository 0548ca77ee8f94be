//! Turns what a test run printed or wrote into typed results: the counts from the runners'
//! summary lines ([`parse_test_counts`], which survive an output cut at the front), one
//! [`TestCase`] per test
//! (cargo/libtest, cargo-nextest, `go test -json`, JUnit XML, Jest/Vitest JSON, Mocha JSON)
//! and the compiler errors of a failed build as [`Diagnostic`]s (rustc, gcc/clang, go, tsc,
//! javac, Python). The worker puts the results into `tests.completed` and an artifact, and
//! the diagnostics into the repair prompt.
//!
//! This crate is pure: no I/O outside its tests, and it must not depend on any other builder
//! crate. Input comes from sandboxed commands, so it may be truncated at the front, contain
//! ANSI colours, or be garbage: no parser panics, and every message is capped.

mod cargo;
mod counts;
mod detect;
mod diagnostics;
mod go;
mod jest;
mod junit;
mod mocha;
mod text;

#[cfg(test)]
mod fuzz_tests;

use serde::{Deserialize, Serialize};

pub use cargo::parse_cargo;
pub use counts::{TestCounts, TestFramework, UnknownTestFramework, parse_test_counts};
pub use detect::{detect_and_parse, detect_format, parse};
pub use diagnostics::{
    Diagnostic, DiagnosticOptions, MAX_DIAGNOSTICS, Severity, extract_diagnostics,
    extract_diagnostics_with,
};
pub use go::parse_go_json;
pub use jest::parse_jest_json;
pub use junit::parse_junit_xml;
pub use mocha::parse_mocha_json;

/// The most bytes of a failure message kept per test case (the cut is marked).
pub const MESSAGE_LIMIT: usize = 2048;

/// How one test ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Passed,
    Failed,
    Skipped,
    /// The test could not run or its setup broke (JUnit `<error>`, a Jest suite that failed
    /// to load, a Mocha hook, a Go package without a failing test). Counted as failed.
    Errored,
}

/// One test as the runner reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCase {
    pub name: String,
    /// Class, module, package, test binary or test file, whatever the runner groups by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The failure message (or the reason a test was skipped), at most [`MESSAGE_LIMIT`] bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Where the failure happened, or the test's own file, as the runner printed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

impl TestCase {
    /// A case with only a name and an outcome.
    pub fn new(name: impl Into<String>, outcome: Outcome) -> Self {
        TestCase {
            name: name.into(),
            suite: None,
            outcome,
            duration_ms: None,
            message: None,
            file: None,
            line: None,
        }
    }

    /// Failed or errored.
    pub fn is_failure(&self) -> bool {
        matches!(self.outcome, Outcome::Failed | Outcome::Errored)
    }
}

/// Which runner output a report was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportFormat {
    /// `cargo test` (libtest's human output).
    CargoLibtest,
    /// `cargo nextest run` (human output).
    Nextest,
    /// `go test -json` (test2json events).
    GoTestJson,
    /// JUnit XML (pytest, Maven Surefire, jest-junit, `node --test`, ...).
    #[serde(rename = "junit_xml")]
    JUnitXml,
    /// `jest --json`, and `vitest --reporter=json`, which writes the same shape.
    JestJson,
    /// `mocha --reporter json`.
    MochaJson,
}

/// Per-test results of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestReport {
    pub format: ReportFormat,
    pub cases: Vec<TestCase>,
}

/// Totals of a report; an errored test counts as failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.passed + self.failed + self.skipped
    }
}

impl TestReport {
    pub fn new(format: ReportFormat) -> Self {
        TestReport {
            format,
            cases: Vec::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        let mut counts = Counts::default();
        for case in &self.cases {
            match case.outcome {
                Outcome::Passed => counts.passed += 1,
                Outcome::Failed | Outcome::Errored => counts.failed += 1,
                Outcome::Skipped => counts.skipped += 1,
            }
        }
        counts
    }

    /// The failed and errored cases, in report order.
    pub fn failed(&self) -> impl Iterator<Item = &TestCase> {
        self.cases.iter().filter(|c| c.is_failure())
    }
}

/// Why a JSON or XML report could not be read. The line-oriented parsers (cargo, nextest,
/// go) cannot fail: they return what they recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("malformed XML at byte {position}: {message}")]
    Xml { position: u64, message: String },
    #[error("no JSON object of a {format:?} report found{}", detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Json {
        format: ReportFormat,
        detail: Option<String>,
    },
    #[error("no {format:?} report found in the input")]
    NotFound { format: ReportFormat },
}
