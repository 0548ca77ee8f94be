//! `go test -json`: the test2json event stream, one JSON object a line.

use std::collections::HashMap;

use serde_json::Value;

use crate::text::{json_f64, json_str, line_location, message, seconds_to_ms};
use crate::{Outcome, ReportFormat, TestCase, TestReport};

/// How much output is kept per test or package while reading (the message is capped again).
const OUTPUT_KEEP: usize = 16 * 1024;

/// Reads a `go test -json` event stream (`{"Action":"pass","Package":"p","Test":"TestA",
/// "Elapsed":0.01}` …). Lines that are not JSON events (build errors on stderr, a line cut
/// at the front) are ignored. A failed or skipped test's `output` events become its message
/// and its first `file.go:line:` its location; subtests (`TestA/case`) are cases of their
/// own. A package that failed without a failing test (build failure, panic in `init`,
/// timeout) becomes one [`Outcome::Errored`] case named after the package; a test that was
/// running when its package failed is errored too.
pub fn parse_go_json(output: &str) -> TestReport {
    let mut state = State::default();
    for line in output.lines() {
        let line = line.trim();
        if !line.starts_with('{') {
            continue;
        }
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        state.event(&event);
    }
    state.finish()
}

#[derive(Default)]
struct State {
    cases: Vec<TestCase>,
    finished: HashMap<(String, String), usize>,
    running: Vec<(String, String)>,
    test_output: HashMap<(String, String), String>,
    package_output: HashMap<String, String>,
    build_output: HashMap<String, String>,
    failed_packages: Vec<(String, Option<String>, Option<u64>)>,
}

fn push_capped(buf: &mut String, s: &str) {
    if buf.len() >= OUTPUT_KEEP {
        return;
    }
    let room = OUTPUT_KEEP - buf.len();
    if s.len() <= room {
        buf.push_str(s);
    } else {
        let mut end = room;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        buf.push_str(&s[..end]);
    }
}

impl State {
    fn event(&mut self, event: &Value) {
        let action = json_str(event.get("Action")).unwrap_or_default();
        let package = json_str(event.get("Package"))
            .unwrap_or_default()
            .to_string();
        let test = json_str(event.get("Test")).map(str::to_string);
        match (action, test) {
            ("build-output", _) => {
                if let (Some(path), Some(out)) = (
                    json_str(event.get("ImportPath")),
                    json_str(event.get("Output")),
                ) {
                    push_capped(self.build_output.entry(path.to_string()).or_default(), out);
                }
            }
            ("output", Some(test)) => {
                if let Some(out) = json_str(event.get("Output")) {
                    push_capped(self.test_output.entry((package, test)).or_default(), out);
                }
            }
            ("output", None) => {
                if let Some(out) = json_str(event.get("Output")) {
                    push_capped(self.package_output.entry(package).or_default(), out);
                }
            }
            ("run", Some(test)) => self.running.push((package, test)),
            ("pass" | "fail" | "skip", Some(test)) => {
                let outcome = match action {
                    "pass" => Outcome::Passed,
                    "fail" => Outcome::Failed,
                    _ => Outcome::Skipped,
                };
                let key = (package, test);
                self.running.retain(|k| k != &key);
                let mut case = TestCase::new(key.1.clone(), outcome);
                case.suite = (!key.0.is_empty()).then(|| key.0.clone());
                case.duration_ms = json_f64(event.get("Elapsed")).and_then(seconds_to_ms);
                if outcome != Outcome::Passed
                    && let Some(out) = self.test_output.get(&key)
                {
                    let text = clean_output(out);
                    case.message = message(&text);
                    if outcome == Outcome::Failed
                        && let Some((file, line)) = line_location(&text)
                    {
                        case.file = Some(file);
                        case.line = Some(line);
                    }
                }
                match self.finished.get(&key) {
                    Some(&i) if i < self.cases.len() => self.cases[i] = case,
                    _ => {
                        self.finished.insert(key, self.cases.len());
                        self.cases.push(case);
                    }
                }
            }
            ("fail", None) if !package.is_empty() => {
                let build = json_str(event.get("FailedBuild")).map(str::to_string);
                let elapsed = json_f64(event.get("Elapsed")).and_then(seconds_to_ms);
                self.failed_packages.push((package, build, elapsed));
            }
            _ => {}
        }
    }

    fn finish(mut self) -> TestReport {
        for (package, build, elapsed) in std::mem::take(&mut self.failed_packages) {
            // Tests still running when the package failed (a panic, a timeout).
            let stuck: Vec<(String, String)> = self
                .running
                .iter()
                .filter(|(p, _)| *p == package)
                .cloned()
                .collect();
            for key in &stuck {
                let mut case = TestCase::new(key.1.clone(), Outcome::Errored);
                case.suite = Some(package.clone());
                let text = [
                    self.test_output.get(key).map(String::as_str),
                    self.package_output.get(&package).map(String::as_str),
                ]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("");
                case.message = message(&clean_output(&text));
                self.cases.push(case);
            }
            let any_failed = self
                .cases
                .iter()
                .any(|c| c.is_failure() && c.suite.as_deref() == Some(package.as_str()));
            if any_failed {
                continue;
            }
            let mut case = TestCase::new(package.clone(), Outcome::Errored);
            case.suite = Some(package.clone());
            case.duration_ms = elapsed;
            let mut text = String::new();
            if let Some(out) = build.as_ref().and_then(|b| self.build_output.get(b)) {
                text.push_str(out);
            }
            if let Some(out) = self.package_output.get(&package) {
                text.push_str(out);
            }
            case.message = message(&text);
            self.cases.push(case);
        }
        TestReport {
            format: ReportFormat::GoTestJson,
            cases: self.cases,
        }
    }
}

/// Drops go test's framing lines (`=== RUN`, `--- FAIL: …`) from a test's output.
fn clean_output(out: &str) -> String {
    out.lines()
        .filter(|l| {
            let t = l.trim_start();
            !(t.starts_with("=== RUN")
                || t.starts_with("=== PAUSE")
                || t.starts_with("=== CONT")
                || t.starts_with("=== NAME")
                || t.starts_with("--- FAIL: ")
                || t.starts_with("--- PASS: ")
                || t.starts_with("--- SKIP: ") && !t.contains(".go:"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_failures_subtests_and_skips() {
        let stream = r#"{"Action":"start","Package":"example.com/m"}
{"Action":"run","Package":"example.com/m","Test":"TestAdd"}
{"Action":"output","Package":"example.com/m","Test":"TestAdd","Output":"=== RUN   TestAdd\n"}
{"Action":"output","Package":"example.com/m","Test":"TestAdd","Output":"    add_test.go:12: got 2, want 3\n"}
{"Action":"output","Package":"example.com/m","Test":"TestAdd","Output":"--- FAIL: TestAdd (0.00s)\n"}
{"Action":"fail","Package":"example.com/m","Test":"TestAdd","Elapsed":0.001}
{"Action":"run","Package":"example.com/m","Test":"TestTable/case_[1]"}
{"Action":"pass","Package":"example.com/m","Test":"TestTable/case_[1]","Elapsed":0.25}
{"Action":"output","Package":"example.com/m","Test":"TestSkip","Output":"    skip_test.go:5: needs docker\n"}
{"Action":"skip","Package":"example.com/m","Test":"TestSkip","Elapsed":0}
{"Action":"fail","Package":"example.com/m","Elapsed":0.01}
"#;
        let r = parse_go_json(stream);
        assert_eq!(r.cases.len(), 3);
        let add = &r.cases[0];
        assert_eq!(add.outcome, Outcome::Failed);
        assert_eq!(add.suite.as_deref(), Some("example.com/m"));
        assert_eq!(
            add.message.as_deref(),
            Some("add_test.go:12: got 2, want 3")
        );
        assert_eq!(
            (add.file.as_deref(), add.line),
            (Some("add_test.go"), Some(12))
        );
        assert_eq!(r.cases[1].name, "TestTable/case_[1]");
        assert_eq!(r.cases[1].duration_ms, Some(250));
        assert_eq!(r.cases[2].outcome, Outcome::Skipped);
        assert_eq!(
            r.cases[2].message.as_deref(),
            Some("skip_test.go:5: needs docker")
        );
    }

    #[test]
    fn build_failure_and_panic_are_errors() {
        let stream = r##"{"ImportPath":"example.com/b [example.com/b.test]","Action":"build-output","Output":"# example.com/b\n"}
{"ImportPath":"example.com/b [example.com/b.test]","Action":"build-output","Output":"./b.go:3:9: undefined: nope\n"}
{"ImportPath":"example.com/b [example.com/b.test]","Action":"build-fail"}
{"Action":"start","Package":"example.com/b"}
{"Action":"output","Package":"example.com/b","Output":"FAIL\texample.com/b [build failed]\n"}
{"Action":"fail","Package":"example.com/b","Elapsed":0,"FailedBuild":"example.com/b [example.com/b.test]"}
{"Action":"run","Package":"example.com/p","Test":"TestPanics"}
{"Action":"output","Package":"example.com/p","Test":"TestPanics","Output":"panic: runtime error: index out of range [3] with length 1\n"}
{"Action":"output","Package":"example.com/p","Output":"FAIL\texample.com/p\t0.005s\n"}
{"Action":"fail","Package":"example.com/p","Elapsed":0.005}
"##;
        let r = parse_go_json(stream);
        assert_eq!(r.cases.len(), 2, "{:#?}", r.cases);
        assert_eq!(r.cases[0].name, "example.com/b");
        assert_eq!(r.cases[0].outcome, Outcome::Errored);
        let m = r.cases[0].message.as_deref().unwrap_or_default();
        assert!(m.contains("./b.go:3:9: undefined: nope"), "{m}");
        assert_eq!(r.cases[1].name, "TestPanics");
        assert_eq!(r.cases[1].outcome, Outcome::Errored);
        assert_eq!(r.counts().failed, 2);
    }

    #[test]
    fn truncated_and_mixed_lines() {
        let stream = "ge\":\"example.com/m\",\"Test\":\"TestA\"}\n# noise\n\
                      {\"Action\":\"pass\",\"Package\":\"example.com/m\",\"Test\":\"TestÜ\"}\n{\"Action\":";
        let r = parse_go_json(stream);
        assert_eq!(r.cases.len(), 1);
        assert_eq!(r.cases[0].name, "TestÜ");
    }
}
