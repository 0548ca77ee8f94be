//! Reading test counts out of test-runner output. The exit code says pass/fail; these
//! counts exist so that "zero tests ran" is never mistaken for a pass.
//!
//! Parsers read summary lines only, so a truncated output (the sandbox keeps the tail) still
//! parses; per-binary lines that fell off the front (cargo, go) are simply not counted.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TestFramework {
    /// `cargo test` (and `cargo nextest run`).
    Cargo,
    Pytest,
    /// JavaScript runners started through npm & co.: node --test, jest, vitest, mocha.
    Npm,
    Go,
    /// Tries every parser.
    Unknown,
}

impl TestFramework {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cargo => "cargo",
            Self::Pytest => "pytest",
            Self::Npm => "npm",
            Self::Go => "go",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for TestFramework {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown test framework `{0}` (expected cargo, pytest, npm, go or unknown)")]
pub struct UnknownTestFramework(pub String);

impl FromStr for TestFramework {
    type Err = UnknownTestFramework;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "cargo" | "rust" | "nextest" => Self::Cargo,
            "pytest" | "python" => Self::Pytest,
            "npm" | "node" | "jest" | "vitest" | "mocha" | "javascript" | "typescript" => Self::Npm,
            "go" | "golang" => Self::Go,
            "unknown" => Self::Unknown,
            _ => return Err(UnknownTestFramework(s.to_string())),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TestCounts {
    pub passed: u32,
    pub failed: u32,
    /// Skipped, ignored, pending, todo: known but not run.
    pub ignored: u32,
}

impl TestCounts {
    /// Tests that actually ran. Zero means nothing was verified, whatever the exit code.
    pub fn executed(&self) -> u32 {
        self.passed.saturating_add(self.failed)
    }

    fn add(&mut self, other: TestCounts) {
        self.passed = self.passed.saturating_add(other.passed);
        self.failed = self.failed.saturating_add(other.failed);
        self.ignored = self.ignored.saturating_add(other.ignored);
    }
}

/// Counts from the summary lines of `fw`'s output; `None` when no summary is recognisable.
pub fn parse_test_counts(fw: TestFramework, output: &str) -> Option<TestCounts> {
    let text = strip_ansi(output);
    match fw {
        TestFramework::Cargo => parse_cargo(&text),
        TestFramework::Pytest => parse_pytest(&text),
        TestFramework::Npm => parse_node(&text),
        TestFramework::Go => parse_go(&text),
        TestFramework::Unknown => parse_cargo(&text)
            .or_else(|| parse_pytest(&text))
            .or_else(|| parse_go(&text))
            .or_else(|| parse_node(&text)),
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters then one final byte in @..~
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The first `<number> <word>` pair in `s`, e.g. `ok. 3 passed` → (3, "passed").
fn number_word(s: &str) -> Option<(u32, &str)> {
    let mut tokens = s.split_whitespace().peekable();
    while let Some(t) = tokens.next() {
        if let Ok(n) = t.parse::<u32>() {
            let word = tokens.peek()?;
            return Some((n, word.trim_end_matches([',', '.', ';', ':'])));
        }
    }
    None
}

/// `N word, N word, ...` where every part must be a pair whose word `classify` knows.
fn counted_list(s: &str, sep: char, classify: fn(&str) -> Option<Slot>) -> Option<TestCounts> {
    let mut c = TestCounts::default();
    let mut any = false;
    for part in s.split(sep) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let mut tokens = part.split_whitespace();
        let n: u32 = tokens.next()?.parse().ok()?;
        let word = tokens.next()?;
        match classify(word)? {
            Slot::Passed => c.passed = c.passed.saturating_add(n),
            Slot::Failed => c.failed = c.failed.saturating_add(n),
            Slot::Ignored => c.ignored = c.ignored.saturating_add(n),
            Slot::None => {}
        }
        any = true;
    }
    any.then_some(c)
}

#[derive(Clone, Copy)]
enum Slot {
    Passed,
    Failed,
    Ignored,
    /// A known word that is not a test outcome (`total`, `warnings`, `measured`).
    None,
}

fn parse_cargo(text: &str) -> Option<TestCounts> {
    let mut total = TestCounts::default();
    let mut found = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("test result:") {
            // ` ok. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s`
            let mut c = TestCounts::default();
            for seg in rest.split(';') {
                match number_word(seg) {
                    Some((n, "passed")) => c.passed = n,
                    Some((n, "failed")) => c.failed = n,
                    Some((n, "ignored")) => c.ignored = n,
                    _ => {}
                }
            }
            total.add(c);
            found = true;
        } else if line.starts_with("Summary [")
            && let Some((_, rest)) = line.split_once(" run: ")
        {
            // nextest: `Summary [   0.01s] 3 tests run: 2 passed, 1 failed, 1 skipped`
            let rest = rest.split(" (").next().unwrap_or(rest);
            if let Some(c) = counted_list(rest, ',', |w| match w {
                "passed" => Some(Slot::Passed),
                "failed" | "timed" => Some(Slot::Failed),
                "skipped" => Some(Slot::Ignored),
                _ => Some(Slot::None),
            }) {
                total.add(c);
                found = true;
            }
        }
    }
    found.then_some(total)
}

fn pytest_word(w: &str) -> Option<Slot> {
    Some(match w {
        "passed" | "xpassed" => Slot::Passed,
        "failed" | "error" | "errors" => Slot::Failed,
        "skipped" | "xfailed" => Slot::Ignored,
        "deselected" | "warning" | "warnings" | "rerun" | "reruns" => Slot::None,
        _ => return None,
    })
}

/// pytest's final summary (`3 passed, 1 failed in 0.12s`, framed by `=` without `-q`), or
/// the generic closing line `N passed, N failed[, N skipped]` any runner may print.
fn parse_pytest(text: &str) -> Option<TestCounts> {
    for line in text.lines().rev() {
        let line = line.trim().trim_matches('=').trim();
        if line.starts_with("no tests ran") {
            return Some(TestCounts::default());
        }
        let body = match line.rfind(" in ") {
            Some(i) if looks_like_duration(&line[i + 4..]) => &line[..i],
            _ => line,
        };
        // The generic line may be led by one `word:`.
        let body = match body.split_once(": ") {
            Some((label, rest)) if !label.contains(' ') => rest,
            _ => body,
        };
        if let Some(c) = counted_list(body, ',', pytest_word)
            && (c.executed() > 0 || c.ignored > 0 || body.contains("deselected"))
        {
            return Some(c);
        }
    }
    None
}

fn looks_like_duration(s: &str) -> bool {
    let s = s.split_whitespace().next().unwrap_or("");
    s.ends_with('s') && s.chars().next().is_some_and(|c| c.is_ascii_digit())
}

fn parse_go(text: &str) -> Option<TestCounts> {
    let mut verbose = TestCounts::default();
    let mut verbose_found = false;
    let mut pkgs = TestCounts::default();
    let mut broken_pkgs = 0u32;
    let mut pkgs_found = false;
    for raw in text.lines() {
        let line = raw.trim_start();
        if line.starts_with("--- PASS:") {
            verbose.passed += 1;
            verbose_found = true;
        } else if line.starts_with("--- FAIL:") {
            verbose.failed += 1;
            verbose_found = true;
        } else if line.starts_with("--- SKIP:") {
            verbose.ignored += 1;
            verbose_found = true;
        } else if let Some(rest) = raw.strip_prefix("ok ").or_else(|| raw.strip_prefix("ok\t")) {
            pkgs_found = true;
            if !rest.contains("[no tests to run]") {
                pkgs.passed += 1;
            }
        } else if let Some(rest) = raw
            .strip_prefix("FAIL\t")
            .or_else(|| raw.strip_prefix("FAIL "))
        {
            pkgs_found = true;
            pkgs.failed += 1;
            if rest.contains("[build failed]") || rest.contains("[setup failed]") {
                broken_pkgs += 1;
            }
        } else if raw.starts_with("?") && raw.contains("[no test files]") {
            pkgs_found = true;
        }
    }
    if verbose_found {
        // A package that did not compile has no `--- ` lines but still failed.
        verbose.failed += broken_pkgs;
        Some(verbose)
    } else {
        pkgs_found.then_some(pkgs)
    }
}

fn jest_word(w: &str) -> Option<Slot> {
    Some(match w {
        "passed" => Slot::Passed,
        "failed" => Slot::Failed,
        "skipped" | "todo" | "pending" => Slot::Ignored,
        "total" => Slot::None,
        _ => return None,
    })
}

fn parse_node(text: &str) -> Option<TestCounts> {
    let mut total = TestCounts::default();
    let mut found = false;
    let mut add = |c: TestCounts| {
        total.add(c);
        found = true;
    };
    for line in text.lines() {
        let t = line.trim();
        // node --test: TAP `# pass 3` or the spec reporter's `ℹ pass 3`.
        let tap = t.strip_prefix("# ").or_else(|| t.strip_prefix("ℹ "));
        if let Some(rest) = tap
            && let Some((word, n)) = rest.split_once(' ')
            && let Ok(n) = n.trim().parse::<u32>()
        {
            match word {
                "pass" => add(TestCounts {
                    passed: n,
                    ..Default::default()
                }),
                "fail" | "cancelled" => add(TestCounts {
                    failed: n,
                    ..Default::default()
                }),
                "skipped" | "todo" => add(TestCounts {
                    ignored: n,
                    ..Default::default()
                }),
                _ => {}
            }
        } else if let Some(rest) = t.strip_prefix("Tests:") {
            // jest: `Tests:       1 failed, 3 passed, 4 total`
            if let Some(c) = counted_list(rest, ',', jest_word) {
                add(c);
            }
        } else if let Some(rest) = t.strip_prefix("Tests ") {
            // vitest: `Tests  1 failed | 3 passed (4)`
            let rest = rest.split(" (").next().unwrap_or(rest);
            if let Some(c) = counted_list(rest, '|', jest_word) {
                add(c);
            }
        } else if let Some((n, word)) = number_word(t)
            && t.starts_with(|c: char| c.is_ascii_digit())
        {
            // mocha: `3 passing (12ms)`, `1 failing`, `2 pending`
            let rest_ok = t.split_whitespace().count() <= 3;
            match word {
                "passing" if rest_ok => add(TestCounts {
                    passed: n,
                    ..Default::default()
                }),
                "failing" if rest_ok => add(TestCounts {
                    failed: n,
                    ..Default::default()
                }),
                "pending" if rest_ok => add(TestCounts {
                    ignored: n,
                    ..Default::default()
                }),
                _ => {}
            }
        }
    }
    found.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(passed: u32, failed: u32, ignored: u32) -> Option<TestCounts> {
        Some(TestCounts {
            passed,
            failed,
            ignored,
        })
    }

    #[test]
    fn cargo_sums_every_test_binary_and_doctests() {
        let out = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s

     Running tests/it.rs
test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

   Doc-tests x
test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        assert_eq!(
            parse_test_counts(TestFramework::Cargo, out),
            counts(5, 1, 1)
        );
    }

    #[test]
    fn cargo_nextest_summary() {
        let out = "     Summary [   0.012s] 4 tests run: 3 passed, 1 failed, 2 skipped\n";
        assert_eq!(
            parse_test_counts(TestFramework::Cargo, out),
            counts(3, 1, 2)
        );
    }

    #[test]
    fn cargo_zero_tests_is_recognised_but_not_executed() {
        let out = "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s";
        let c = parse_test_counts(TestFramework::Cargo, out).unwrap();
        assert_eq!(c.executed(), 0);
    }

    #[test]
    fn cargo_compile_error_has_no_counts() {
        let out = "error[E0425]: cannot find value `x` in this scope\nerror: could not compile `t`";
        assert_eq!(parse_test_counts(TestFramework::Cargo, out), None);
    }

    #[test]
    fn pytest_summaries() {
        let fw = TestFramework::Pytest;
        assert_eq!(
            parse_test_counts(fw, "...F\n3 passed, 1 failed in 0.10s\n"),
            counts(3, 1, 0)
        );
        assert_eq!(
            parse_test_counts(
                fw,
                "===== 1 failed, 2 passed, 1 skipped, 1 xfailed, 2 warnings, 1 error in 1.23s =====",
            ),
            counts(2, 2, 2)
        );
        assert_eq!(
            parse_test_counts(fw, "\n5 passed in 0.01s (0:00:00)\n"),
            counts(5, 0, 0)
        );
        assert_eq!(
            parse_test_counts(fw, "============ no tests ran in 0.01s ============"),
            counts(0, 0, 0)
        );
        assert_eq!(
            parse_test_counts(fw, "ImportError: no module named x\n"),
            None
        );
    }

    #[test]
    fn generic_closing_line() {
        assert_eq!(
            parse_test_counts(
                TestFramework::Unknown,
                "Result: 4 passed, 1 failed, 2 skipped\n"
            ),
            counts(4, 1, 2)
        );
    }

    #[test]
    fn go_packages_without_verbose() {
        let out = "ok  \texample.com/a\t0.003s\n\
                   ?   \texample.com/b\t[no test files]\n\
                   FAIL\texample.com/c\t0.010s\n\
                   ok  \texample.com/d\t0.001s [no tests to run]\n\
                   FAIL\n";
        assert_eq!(parse_test_counts(TestFramework::Go, out), counts(1, 1, 0));
    }

    #[test]
    fn go_verbose_counts_tests_and_unbuildable_packages() {
        let out = "=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n\
                   --- FAIL: TestB (0.00s)\n    --- PASS: TestB/sub (0.00s)\n\
                   --- SKIP: TestC (0.00s)\nFAIL\nFAIL\texample.com/a\t0.01s\n\
                   FAIL\texample.com/b [build failed]\n";
        assert_eq!(parse_test_counts(TestFramework::Go, out), counts(2, 2, 1));
    }

    #[test]
    fn go_no_test_files_only_is_zero() {
        let out = "?   \texample.com/b\t[no test files]\n";
        assert_eq!(parse_test_counts(TestFramework::Go, out), counts(0, 0, 0));
    }

    #[test]
    fn node_test_tap_and_spec_reporters() {
        let tap =
            "# tests 4\n# suites 0\n# pass 2\n# fail 1\n# cancelled 0\n# skipped 1\n# todo 0\n";
        assert_eq!(parse_test_counts(TestFramework::Npm, tap), counts(2, 1, 1));
        let spec = "ℹ tests 3\nℹ pass 3\nℹ fail 0\nℹ cancelled 0\nℹ skipped 0\nℹ todo 0\n";
        assert_eq!(parse_test_counts(TestFramework::Npm, spec), counts(3, 0, 0));
    }

    #[test]
    fn jest_vitest_mocha() {
        let fw = TestFramework::Npm;
        let jest = "Test Suites: 1 failed, 1 passed, 2 total\n\
                    Tests:       1 failed, 1 skipped, 3 passed, 5 total\nSnapshots:   0 total\n";
        assert_eq!(parse_test_counts(fw, jest), counts(3, 1, 1));
        let vitest = " Test Files  1 failed | 1 passed (2)\n      Tests  1 failed | 3 passed (4)\n";
        assert_eq!(parse_test_counts(fw, vitest), counts(3, 1, 0));
        let mocha = "  ✓ works\n\n  4 passing (12ms)\n  1 pending\n  2 failing\n\n  1) fails:\n";
        assert_eq!(parse_test_counts(fw, mocha), counts(4, 2, 1));
        assert_eq!(
            parse_test_counts(fw, "npm ERR! missing script: test\n"),
            None
        );
    }

    #[test]
    fn ansi_colours_are_ignored() {
        let out = "\u{1b}[32m3 passed\u{1b}[0m, \u{1b}[31m1 failed\u{1b}[0m in 0.1s";
        assert_eq!(
            parse_test_counts(TestFramework::Pytest, out),
            counts(3, 1, 0)
        );
    }

    #[test]
    fn unknown_tries_every_parser_and_gives_up_on_noise() {
        let cargo = "test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out";
        assert_eq!(
            parse_test_counts(TestFramework::Unknown, cargo),
            counts(2, 0, 0)
        );
        assert_eq!(
            parse_test_counts(TestFramework::Unknown, "# pass 7\n"),
            counts(7, 0, 0)
        );
        assert_eq!(
            parse_test_counts(TestFramework::Unknown, "hello\nworld 3 things\n"),
            None
        );
    }

    #[test]
    fn framework_names_round_trip() {
        for fw in [
            TestFramework::Cargo,
            TestFramework::Pytest,
            TestFramework::Npm,
            TestFramework::Go,
            TestFramework::Unknown,
        ] {
            assert_eq!(fw.as_str().parse::<TestFramework>(), Ok(fw));
        }
        assert!("maven".parse::<TestFramework>().is_err());
    }
}
