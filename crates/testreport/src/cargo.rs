//! `cargo test` (libtest's human output) and `cargo nextest run` (nextest's human output).

use std::collections::HashMap;

use crate::text::{message, parse_location, seconds_to_ms, strip_ansi};
use crate::{Outcome, ReportFormat, TestCase, TestReport};

/// Reads the human output of `cargo test` and/or `cargo nextest run` (stdout and stderr,
/// separately or interleaved; colours are fine).
///
/// libtest: `test path::name ... ok|FAILED|ignored[, reason]` lines, and the
/// `---- name stdout ----` sections become the failure message, with the panic location
/// (`src/lib.rs:10:5`) as file and line. cargo's `Running tests/it.rs (…)` lines name the
/// suite. Nextest: `PASS [   0.003s] (1/3) crate::bin path::name` lines (also `FAIL`, `SKIP`,
/// `TRY n …`, `LEAK`, `TIMEOUT`, `SIG…`) with the indented output after a failure; the binary
/// id is the suite. Nextest only lists skipped tests with `--status-level skip` (or `all`).
///
/// The format is [`ReportFormat::Nextest`] if any nextest line was seen.
pub fn parse_cargo(output: &str) -> TestReport {
    let text = strip_ansi(output);
    let lines: Vec<&str> = text.lines().map(|l| l.trim_end_matches('\r')).collect();
    let nextest = parse_nextest(&lines);
    let libtest = parse_libtest(&lines);
    if nextest.is_empty() {
        TestReport {
            format: ReportFormat::CargoLibtest,
            cases: libtest,
        }
    } else {
        let mut cases = nextest;
        cases.extend(libtest);
        TestReport {
            format: ReportFormat::Nextest,
            cases,
        }
    }
}

fn parse_libtest(lines: &[&str]) -> Vec<TestCase> {
    let mut cases: Vec<TestCase> = Vec::new();
    let mut suite: Option<String> = None;
    let mut suite_start = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if let Some(s) = cargo_running_suite(line) {
            suite = Some(s);
            suite_start = cases.len();
            continue;
        }
        if let Some(case) = libtest_result_line(line) {
            cases.push(TestCase {
                suite: suite.clone(),
                ..case
            });
            continue;
        }
        if let Some(name) = section_header(line) {
            let start = i;
            while i < lines.len() && !section_end(lines[i]) {
                i += 1;
            }
            let details = failure_details(&lines[start..i]);
            let existing = cases[suite_start..]
                .iter()
                .rposition(|c| c.name == name)
                .map(|p| p + suite_start);
            let index = match existing {
                Some(index) => index,
                None => {
                    // The result line was cut off the front of the output; the section alone
                    // says the test failed.
                    let mut case = TestCase::new(name, Outcome::Failed);
                    case.suite = suite.clone();
                    cases.push(case);
                    cases.len() - 1
                }
            };
            if let Some(case) = cases.get_mut(index) {
                details.apply(case);
            }
        }
    }
    cases
}

/// `     Running unittests src/lib.rs (target/debug/deps/x-0123)` → `unittests src/lib.rs`;
/// `   Doc-tests name` → `Doc-tests name`.
fn cargo_running_suite(line: &str) -> Option<String> {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix("Running ") {
        // cargo always names the test binary in parentheses
        let open = rest.rfind(" (")?;
        if !rest.ends_with(')') {
            return None;
        }
        let name = rest[..open].trim();
        return (!name.is_empty()).then(|| name.to_string());
    }
    if line.starts_with(' ') && t.starts_with("Doc-tests ") && t.len() > "Doc-tests ".len() {
        return Some(t.to_string());
    }
    None
}

fn libtest_result_line(line: &str) -> Option<TestCase> {
    let rest = line.strip_prefix("test ")?;
    let (name, result) = rest.split_once(" ... ")?;
    let mut name = name.trim();
    for mode in [" - should panic", " - compile fail", " - compile"] {
        if let Some(n) = name.strip_suffix(mode) {
            name = n.trim_end();
            break;
        }
    }
    if name.is_empty() {
        return None;
    }
    let mut result = result.trim();
    let mut duration_ms = None;
    // `--report-time`: `ok <0.001s>`
    if let Some(open) = result.rfind(" <")
        && let Some(secs) = result[open + 2..].strip_suffix("s>")
    {
        duration_ms = secs.parse::<f64>().ok().and_then(seconds_to_ms);
        result = result[..open].trim_end();
    }
    let (outcome, reason) = if result == "ok" {
        (Outcome::Passed, None)
    } else if result == "FAILED" || result.starts_with("FAILED ") {
        (Outcome::Failed, None)
    } else if let Some(r) = result.strip_prefix("ignored") {
        (Outcome::Skipped, r.strip_prefix(',').and_then(message))
    } else {
        return None;
    };
    let mut case = TestCase::new(name, outcome);
    case.duration_ms = duration_ms;
    case.message = reason;
    Some(case)
}

fn section_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix("---- ")?;
    let name = inner
        .strip_suffix(" stdout ----")
        .or_else(|| inner.strip_suffix(" stderr ----"))?;
    let name = name.trim();
    (!name.is_empty()).then_some(name)
}

fn section_end(line: &str) -> bool {
    section_header(line).is_some()
        || line == "failures:"
        || line == "successes:"
        || line.starts_with("test result: ")
}

/// What a failure's captured output says.
#[derive(Debug, Default)]
struct Details {
    message: Option<String>,
    location: Option<(String, u32)>,
}

impl Details {
    fn apply(self, case: &mut TestCase) {
        if self.message.is_some() {
            case.message = self.message;
        }
        if let Some((file, line)) = self.location {
            case.file = Some(file);
            case.line = Some(line);
        }
    }
}

/// The panic (message and location) first, then whatever else the test printed; backtraces
/// and libtest's own lines (as nextest shows them) are left out.
fn failure_details(lines: &[&str]) -> Details {
    let lines = dedent(&clean_captured(lines));
    let mut panic: Option<usize> = None;
    let mut location = None;
    for (i, line) in lines.iter().enumerate() {
        if let Some(loc) = panic_location(line) {
            panic = Some(i);
            location = loc;
            break;
        }
    }
    let text = match panic {
        Some(p) => {
            let mut out = String::new();
            if let Some(line) = lines.get(p) {
                // `thread 'name' panicked at …` → `panicked at …`
                let l = line.find("panicked at ").map_or(*line, |at| &line[at..]);
                out.push_str(l);
            }
            for l in lines.iter().skip(p + 1) {
                out.push('\n');
                out.push_str(l);
            }
            let before: Vec<&str> = lines.iter().take(p).copied().collect();
            let before = before.join("\n");
            if !before.trim().is_empty() {
                out.push_str("\n\noutput:\n");
                out.push_str(before.trim_matches('\n'));
            }
            out
        }
        None => lines.join("\n"),
    };
    Details {
        message: message(&text),
        location,
    }
}

/// `Some(location)` for a panic line (`None` inside when it has no readable location).
fn panic_location(line: &str) -> Option<Option<(String, u32)>> {
    if let Some(at) = line.find("panicked at ") {
        let rest = line[at + "panicked at ".len()..].trim();
        let loc = if rest.starts_with('\'') {
            // before Rust 1.73: panicked at 'message', src/lib.rs:3:5
            rest.rsplit_once("', ").map(|(_, l)| l)
        } else {
            Some(rest)
        };
        return Some(loc.and_then(parse_location).map(|(f, l, _)| (f, l)));
    }
    if let Some(rest) = line
        .trim_start()
        .strip_prefix("note: test did not panic as expected at ")
    {
        return Some(parse_location(rest).map(|(f, l, _)| (f, l)));
    }
    None
}

/// Drops backtraces and the libtest/nextest framing around captured output.
fn clean_captured<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    // indentation of the `stack backtrace:` / `failures:` line whose block is being skipped
    let mut skipping_below: Option<usize> = None;
    for &line in lines {
        let t = line.trim();
        if let Some(base) = skipping_below {
            if t.is_empty() || (indent(line) > base && !t.starts_with("note:")) {
                continue;
            }
            skipping_below = None;
        }
        if t.starts_with("stack backtrace:") || t == "failures:" {
            skipping_below = Some(indent(line));
            continue;
        }
        if t.starts_with("note: run with `RUST_BACKTRACE")
            || t.starts_with("note: Some details are omitted")
            || t.starts_with("test result: ")
            || (t.starts_with("running ") && (t.ends_with(" test") || t.ends_with(" tests")))
            || (t.starts_with("test ") && t.contains(" ... "))
            || is_nextest_output_header(t)
        {
            continue;
        }
        out.push(line);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    while out.first().is_some_and(|l| l.trim().is_empty()) {
        out.remove(0);
    }
    out
}

/// `stdout ───`, `stderr ───` (nextest ≥ 0.9.9x) and `--- STDOUT: name ---` (older).
fn is_nextest_output_header(t: &str) -> bool {
    ((t.starts_with("stdout ") || t.starts_with("stderr ")) && t.ends_with('─'))
        || t.starts_with("--- STDOUT:")
        || t.starts_with("--- STDERR:")
        || t.starts_with("──── STDOUT")
        || t.starts_with("──── STDERR")
}

fn dedent<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    let indent = lines
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start_matches(' ').len())
        .min()
        .unwrap_or(0);
    lines
        .iter()
        .map(|l| l.get(indent..).unwrap_or_else(|| l.trim_start()))
        .collect()
}

struct NextestLine<'a> {
    outcome: Option<Outcome>,
    duration_ms: Option<u64>,
    binary: &'a str,
    name: &'a str,
}

const NEXTEST_WORDS: &[&str] = &[
    "PASS",
    "FAIL",
    "SKIP",
    "LEAK",
    "LEAK-FAIL",
    "FLAKY",
    "ABORT",
    "TIMEOUT",
    "SLOW",
    "START",
    "RETRY",
    "SETUP",
    "TERMINATING",
    "EXCEPTION",
];

fn nextest_line(line: &str) -> Option<NextestLine<'_>> {
    let t = line.trim_start();
    let open = t.find('[')?;
    let tokens: Vec<&str> = t[..open].split_whitespace().collect();
    let word = match tokens.as_slice() {
        ["TRY", _, word] => *word,
        [word] | [word, _] => *word,
        _ => return None,
    };
    if !(NEXTEST_WORDS.contains(&word) || word.starts_with("SIG") && word.len() > 3) {
        return None;
    }
    let close = open + t[open..].find(']')?;
    let duration = t[open + 1..close]
        .trim()
        .trim_start_matches(|c: char| !c.is_ascii_digit());
    let duration_ms = duration
        .strip_suffix('s')
        .and_then(|d| d.parse::<f64>().ok())
        .and_then(seconds_to_ms);
    let mut rest = t[close + 1..].trim_start();
    if rest.starts_with('(') {
        let end = rest.find(')')?;
        rest = rest[end + 1..].trim_start();
    }
    let (binary, name) = rest.split_once(' ')?;
    let name = name.trim();
    if binary.is_empty() || name.is_empty() {
        return None;
    }
    let outcome = match word {
        "PASS" | "LEAK" | "FLAKY" => Some(Outcome::Passed),
        "FAIL" | "LEAK-FAIL" | "ABORT" | "TIMEOUT" | "EXCEPTION" => Some(Outcome::Failed),
        w if w.starts_with("SIG") => Some(Outcome::Failed),
        "SKIP" => Some(Outcome::Skipped),
        _ => None,
    };
    Some(NextestLine {
        outcome,
        duration_ms,
        binary,
        name,
    })
}

fn nextest_block_end(line: &str) -> bool {
    let t = line.trim_start();
    nextest_line(line).is_some()
        || t.starts_with("────")
        || t.starts_with("Summary [")
        || t.starts_with("Cancelling")
        || t.starts_with("Starting ")
        || line.starts_with("error: ")
}

fn parse_nextest(lines: &[&str]) -> Vec<TestCase> {
    let mut cases: Vec<TestCase> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut after_summary = false;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.trim_start().starts_with("Summary [") {
            after_summary = true;
            continue;
        }
        let Some(status) = nextest_line(line) else {
            continue;
        };
        let start = i;
        while i < lines.len() && !nextest_block_end(lines[i]) {
            i += 1;
        }
        let Some(outcome) = status.outcome else {
            continue;
        };
        let details = if outcome == Outcome::Failed {
            failure_details(&lines[start..i])
        } else {
            Details::default()
        };
        let key = (status.binary.to_string(), status.name.to_string());
        match index.get(&key).and_then(|&p| cases.get_mut(p)) {
            Some(case) => {
                if !after_summary {
                    // a retry: the last attempt decides
                    case.outcome = outcome;
                    case.duration_ms = status.duration_ms.or(case.duration_ms);
                    if outcome == Outcome::Passed {
                        case.message = None;
                        case.file = None;
                        case.line = None;
                    }
                }
                if case.message.is_none() && case.is_failure() {
                    details.apply(case);
                }
            }
            None => {
                let mut case = TestCase::new(status.name, outcome);
                case.suite = Some(status.binary.to_string());
                case.duration_ms = status.duration_ms;
                details.apply(&mut case);
                index.insert(key, cases.len());
                cases.push(case);
            }
        }
    }
    cases
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIBTEST: &str = "\
     Running unittests src/lib.rs (target/debug/deps/sample-e6daf73c296d6df0)

running 4 tests
test tests::ignored ... ignored, slow
test tests::passes ... ok
test tests::prints_and_fails ... FAILED
test tests::fails ... FAILED

failures:

---- tests::prints_and_fails stdout ----
some output ünï

thread 'tests::prints_and_fails' (8340) panicked at src/lib.rs:13:58:
boom
second line
stack backtrace:
   0: __rustc::rust_begin_unwind
             at /rustc/59807616e/library/std/src/panicking.rs:689:5
note: Some details are omitted, run with `RUST_BACKTRACE=full` for a verbose backtrace.

---- tests::fails stdout ----

thread 'tests::fails' panicked at src/lib.rs:8:18:
assertion `left == right` failed: math is broken
  left: 2
 right: 3
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    tests::fails
    tests::prints_and_fails

test result: FAILED. 1 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.11s
";

    #[test]
    fn libtest_cases_and_failure_sections() {
        let r = parse_cargo(LIBTEST);
        assert_eq!(r.format, ReportFormat::CargoLibtest);
        assert_eq!(r.cases.len(), 4);
        let ignored = &r.cases[0];
        assert_eq!(ignored.outcome, Outcome::Skipped);
        assert_eq!(ignored.message.as_deref(), Some("slow"));
        assert_eq!(ignored.suite.as_deref(), Some("unittests src/lib.rs"));
        let p = &r.cases[2];
        assert_eq!(p.name, "tests::prints_and_fails");
        assert_eq!(
            p.message.as_deref(),
            Some("panicked at src/lib.rs:13:58:\nboom\nsecond line\n\noutput:\nsome output ünï")
        );
        assert_eq!((p.file.as_deref(), p.line), (Some("src/lib.rs"), Some(13)));
        let f = &r.cases[3];
        assert_eq!(
            f.message.as_deref(),
            Some(
                "panicked at src/lib.rs:8:18:\nassertion `left == right` failed: math is broken\n  left: 2\n right: 3"
            )
        );
        assert_eq!(f.line, Some(8));
        assert_eq!(r.counts().failed, 2);
    }

    #[test]
    fn truncated_front_keeps_the_sections() {
        let cut = &LIBTEST[LIBTEST.find("ut ünï").unwrap_or(0)..];
        let r = parse_cargo(cut);
        assert_eq!(r.cases.len(), 1);
        assert_eq!(r.cases[0].name, "tests::fails");
        assert_eq!(r.cases[0].outcome, Outcome::Failed);
        assert_eq!(r.cases[0].line, Some(8));
    }

    #[test]
    fn quiet_mode_still_reports_failures() {
        // `cargo test -q` prints dots instead of one line per test
        let out = "\nrunning 3 tests\ni.F\nfailures:\n\n---- tests::fails stdout ----\n\n\
                   thread 'tests::fails' panicked at src/lib.rs:8:18:\nno\n\n\nfailures:\n    tests::fails\n\n\
                   test result: FAILED. 1 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out\n";
        let r = parse_cargo(out);
        assert_eq!(r.cases.len(), 1);
        assert_eq!(r.cases[0].outcome, Outcome::Failed);
        assert_eq!(
            r.cases[0].message.as_deref(),
            Some("panicked at src/lib.rs:8:18:\nno")
        );
    }

    #[test]
    fn libtest_variants() {
        let out = "test a::b - should panic ... ok\n\
                   test src/lib.rs - add (line 3) ... ok\n\
                   test src/lib.rs - bad (line 9) - compile fail ... FAILED\n\
                   test t::timed ... ok <0.250s>\n\
                   test t::[weird] name ... ignored\n\
                   test t::bench ... bench:   1,234 ns/iter (+/- 5)\n\
                   test t::slow has been running for over 60 seconds\n\
                   ---- t::old stdout ----\n\
                   thread 'main' panicked at 'old style, with comma', tests/it.rs:4:9\n";
        let r = parse_cargo(out);
        let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "a::b",
                "src/lib.rs - add (line 3)",
                "src/lib.rs - bad (line 9)",
                "t::timed",
                "t::[weird] name",
                "t::old"
            ]
        );
        assert_eq!(r.cases[3].duration_ms, Some(250));
        assert_eq!(r.cases[5].file.as_deref(), Some("tests/it.rs"));
        assert_eq!(r.cases[5].line, Some(4));
    }

    #[test]
    fn same_name_in_two_binaries() {
        let out = "     Running unittests src/lib.rs (target/debug/deps/a-1)\n\
                   test tests::it ... ok\n\
                   \x20    Running tests/api.rs (target/debug/deps/api-2)\n\
                   test tests::it ... FAILED\n\
                   failures:\n\
                   ---- tests::it stdout ----\n\
                   thread 'tests::it' panicked at tests/api.rs:2:3:\nno\n";
        let r = parse_cargo(out);
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[0].outcome, Outcome::Passed);
        assert_eq!(r.cases[0].message, None);
        assert_eq!(r.cases[1].suite.as_deref(), Some("tests/api.rs"));
        assert_eq!(r.cases[1].file.as_deref(), Some("tests/api.rs"));
    }

    #[test]
    fn nextest_with_retries_colours_and_summary() {
        let out = "\u{1b}[32m        PASS\u{1b}[0m [   0.004s] (1/3) sample tests::passes\n\
                   \x20       TRY 1 FAIL [   0.010s] (2/3) sample::it tests::flaky\n\
                   \x20 stderr ───\n\
                   \x20   thread 'tests::flaky' panicked at tests/it.rs:3:5:\n\
                   \x20   flake\n\
                   \x20       TRY 2 PASS [   0.011s] (2/3) sample::it tests::flaky\n\
                   \x20       FAIL [   1.500s] (3/3) sample tests::fails\n\
                   \x20 stdout ───\n\
                   \n\
                   \x20   running 1 test\n\
                   \x20   test tests::fails ... FAILED\n\
                   \n\
                   \x20   failures:\n\
                   \n\
                   \x20   failures:\n\
                   \x20       tests::fails\n\
                   \n\
                   \x20   test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 0.18s\n\
                   \n\
                   \x20 stderr ───\n\
                   \n\
                   \x20   thread 'tests::fails' (8394) panicked at src/lib.rs:8:18:\n\
                   \x20   assertion `left == right` failed\n\
                   \x20     left: 2\n\
                   \x20    right: 3\n\
                   \n\
                   \x20       SKIP [         ] (───) sample tests::ignored\n\
                   ────────────\n\
                   \x20    Summary [   0.197s] 3 tests run: 2 passed, 1 failed, 1 skipped\n\
                   \x20       FAIL [   1.500s] (3/3) sample tests::fails\n\
                   \x20       FAIL [   0.100s] (9/9) sample tests::only_in_summary\n\
                   error: test run failed\n";
        let r = parse_cargo(out);
        assert_eq!(r.format, ReportFormat::Nextest);
        let got: Vec<(&str, Outcome)> = r
            .cases
            .iter()
            .map(|c| (c.name.as_str(), c.outcome))
            .collect();
        assert_eq!(
            got,
            [
                ("tests::passes", Outcome::Passed),
                ("tests::flaky", Outcome::Passed),
                ("tests::fails", Outcome::Failed),
                ("tests::ignored", Outcome::Skipped),
                ("tests::only_in_summary", Outcome::Failed),
            ]
        );
        assert_eq!(r.cases[1].message, None);
        assert_eq!(r.cases[1].suite.as_deref(), Some("sample::it"));
        let f = &r.cases[2];
        assert_eq!(f.duration_ms, Some(1500));
        assert_eq!(
            f.message.as_deref(),
            Some(
                "panicked at src/lib.rs:8:18:\nassertion `left == right` failed\n  left: 2\n right: 3"
            )
        );
        assert_eq!(f.line, Some(8));
    }

    #[test]
    fn old_nextest_format() {
        let out = "        PASS [   0.001s] mycrate::bin/tool cli::parses\n\
                   \x20       FAIL [   0.002s] mycrate cli::breaks\n\
                   \n\
                   --- STDOUT:              mycrate cli::breaks ---\n\
                   \n\
                   running 1 test\n\
                   --- STDERR:              mycrate cli::breaks ---\n\
                   thread 'cli::breaks' panicked at src/cli.rs:40:9:\n\
                   bad flag\n";
        let r = parse_cargo(out);
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[0].suite.as_deref(), Some("mycrate::bin/tool"));
        assert_eq!(
            r.cases[1].message.as_deref(),
            Some("panicked at src/cli.rs:40:9:\nbad flag")
        );
        assert_eq!(r.cases[1].file.as_deref(), Some("src/cli.rs"));
    }

    #[test]
    fn huge_panic_message_is_capped() {
        let out = format!(
            "test t::big ... FAILED\n---- t::big stdout ----\nthread 't::big' panicked at src/a.rs:1:1:\n{}\n",
            "x".repeat(100_000)
        );
        let r = parse_cargo(&out);
        let m = r.cases[0].message.as_deref().unwrap_or_default();
        assert!(m.len() <= crate::MESSAGE_LIMIT, "{}", m.len());
    }
}
