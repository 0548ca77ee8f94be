//! JUnit XML, as pytest, Maven Surefire, jest-junit, `node --test --test-reporter=junit`,
//! gotestsum and most CI tools write it.

use quick_xml::Reader;
use quick_xml::XmlVersion;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};

use crate::text::{js_stack_location, line_location, message, parse_location, seconds_to_ms};
use crate::{Outcome, ParseError, ReportFormat, TestCase, TestReport};

/// How much of a failure body is kept while reading (the message is capped again).
const BODY_KEEP: usize = 16 * 1024;

/// Reads JUnit XML: `<testsuites>` / `<testsuite>` (nested or not, or none) holding
/// `<testcase name classname time [file line]>` elements with `<failure>`, `<error>` or
/// `<skipped>` children. The suite is the `classname`, else the innermost `<testsuite>` name
/// (node's reporter writes `classname="test"` everywhere, so that one is ignored). Without
/// `file`/`line` attributes the location is read from the failure text (pytest's
/// `test_x.py:7: AssertionError`, JavaScript and Java stack frames).
///
/// Text before the first `<?xml` / `<testsuite` is skipped. A document cut off at the end
/// gives the cases read so far; an error is returned only when nothing could be read.
pub fn parse_junit_xml(xml: &str) -> Result<TestReport, ParseError> {
    let start = ["<?xml", "<testsuites", "<testsuite", "<testcase"]
        .iter()
        .filter_map(|m| xml.find(m))
        .min()
        .unwrap_or(0);
    let xml = &xml[start..];
    let mut reader = Reader::from_str(xml);
    {
        let config = reader.config_mut();
        config.check_end_names = false;
        config.allow_unmatched_ends = true;
        config.check_comments = false;
    }
    let mut cases = Vec::new();
    let mut suites: Vec<Option<String>> = Vec::new();
    let mut current: Option<CaseBuilder> = None;
    let mut capture: Option<String> = None; // the child element whose text is collected
    let mut seen_junit = false;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(e) => {
                if let Some(case) = current.take() {
                    cases.push(case.finish(&suites));
                }
                if cases.is_empty() {
                    return Err(ParseError::Xml {
                        position: reader.error_position(),
                        message: e.to_string(),
                    });
                }
                break;
            }
        };
        match event {
            Event::Eof => {
                if let Some(case) = current.take() {
                    cases.push(case.finish(&suites));
                }
                break;
            }
            Event::Start(e) => match e.local_name().as_ref() {
                "testsuite" => {
                    seen_junit = true;
                    suites.push(attr(&e, "name"));
                }
                "testsuites" => seen_junit = true,
                "testcase" => {
                    seen_junit = true;
                    if let Some(case) = current.take() {
                        cases.push(case.finish(&suites));
                    }
                    current = Some(CaseBuilder::new(&e));
                }
                name => {
                    if let Some(case) = current.as_mut()
                        && case.child(name, &e)
                    {
                        capture = Some(name.to_string());
                    }
                }
            },
            Event::Empty(e) => match e.local_name().as_ref() {
                "testcase" => {
                    seen_junit = true;
                    if let Some(case) = current.take() {
                        cases.push(case.finish(&suites));
                    }
                    cases.push(CaseBuilder::new(&e).finish(&suites));
                }
                "testsuite" | "testsuites" => seen_junit = true,
                name => {
                    if let Some(case) = current.as_mut() {
                        case.child(name, &e);
                    }
                }
            },
            Event::End(e) => match e.local_name().as_ref() {
                "testsuite" => {
                    suites.pop();
                }
                "testcase" => {
                    if let Some(case) = current.take() {
                        cases.push(case.finish(&suites));
                    }
                    capture = None;
                }
                name => {
                    if capture.as_deref() == Some(name) {
                        capture = None;
                    }
                }
            },
            Event::Text(t) => {
                if capture.is_some()
                    && let Some(case) = current.as_mut()
                {
                    case.push_body(&t.xml10_content());
                }
            }
            Event::CData(t) => {
                if capture.is_some()
                    && let Some(case) = current.as_mut()
                {
                    case.push_body(&t.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                if capture.is_some()
                    && let Some(case) = current.as_mut()
                {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => case.push_body(c.encode_utf8(&mut [0; 4])),
                        _ => {
                            let name: &str = &r;
                            let text = resolve_predefined_entity(name)
                                .map(str::to_string)
                                .unwrap_or_else(|| format!("&{name};"));
                            case.push_body(&text);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !seen_junit && cases.is_empty() {
        return Err(ParseError::NotFound {
            format: ReportFormat::JUnitXml,
        });
    }
    Ok(TestReport {
        format: ReportFormat::JUnitXml,
        cases,
    })
}

fn attr(e: &BytesStart<'_>, key: &str) -> Option<String> {
    e.attributes()
        .flatten()
        .find(|a| a.key.local_name().as_ref() == key)
        .and_then(|a| a.normalized_value(XmlVersion::Implicit1_0).ok())
        .map(|v| v.into_owned())
}

struct CaseBuilder {
    name: String,
    classname: Option<String>,
    time: Option<String>,
    file: Option<String>,
    line: Option<u32>,
    outcome: Outcome,
    attr_message: Option<String>,
    body: String,
}

impl CaseBuilder {
    fn new(e: &BytesStart<'_>) -> Self {
        CaseBuilder {
            name: attr(e, "name").unwrap_or_default(),
            classname: attr(e, "classname"),
            time: attr(e, "time"),
            file: attr(e, "file").or_else(|| attr(e, "filepath")),
            line: attr(e, "line").and_then(|l| l.trim().parse().ok()),
            outcome: Outcome::Passed,
            attr_message: None,
            body: String::new(),
        }
    }

    /// A child element of the test case; true if its text belongs to the message.
    fn child(&mut self, name: &str, e: &BytesStart<'_>) -> bool {
        let outcome = match name {
            "failure" => Outcome::Failed,
            "error" => Outcome::Errored,
            "skipped" => Outcome::Skipped,
            _ => return false,
        };
        // A failure or error outranks a skip; the first failure's kind is kept.
        let first = matches!(
            (self.outcome, outcome),
            (Outcome::Passed, _) | (Outcome::Skipped, Outcome::Failed | Outcome::Errored)
        );
        if first {
            self.outcome = outcome;
            self.attr_message = attr(e, "message").filter(|m| !m.trim().is_empty());
            if outcome != Outcome::Skipped {
                self.body.clear();
            }
        }
        first
    }

    fn push_body(&mut self, s: &str) {
        if self.body.len() >= BODY_KEEP {
            return;
        }
        let room = BODY_KEEP - self.body.len();
        let mut end = s.len().min(room);
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        self.body.push_str(&s[..end]);
    }

    fn finish(self, suites: &[Option<String>]) -> TestCase {
        let suite = self
            .classname
            .filter(|c| !c.trim().is_empty() && c != "test")
            .or_else(|| suites.iter().rev().flatten().next().cloned());
        let body = self.body.trim();
        let text = match self.attr_message {
            // a skip's reason is its message; pytest puts `path:line: reason` in the body
            Some(m) if self.outcome == Outcome::Skipped => m,
            Some(m) if body.is_empty() || body.contains(m.trim()) => {
                if body.is_empty() {
                    m
                } else {
                    body.to_string()
                }
            }
            Some(m) => format!("{}\n{}", m.trim_end(), body),
            None => body.to_string(),
        };
        let mut file = self.file;
        let mut line = self.line;
        if matches!(self.outcome, Outcome::Failed | Outcome::Errored) && file.is_none() {
            let found = line_location(&text)
                .or_else(|| js_stack_location(&text))
                .or_else(|| java_stack_location(&text, suite.as_deref()));
            if let Some((f, l)) = found {
                file = Some(f);
                line = Some(l);
            }
        }
        let mut case = TestCase::new(self.name, self.outcome);
        case.suite = suite;
        case.duration_ms = self
            .time
            .and_then(|t| t.replace(',', "").trim().parse::<f64>().ok())
            .and_then(seconds_to_ms);
        case.message = if self.outcome == Outcome::Passed {
            None
        } else {
            message(&text)
        };
        case.file = file;
        case.line = line;
        case
    }
}

/// `at com.example.AppTest.testFail(AppTest.java:12)`: the first frame in the test's class.
fn java_stack_location(text: &str, class: Option<&str>) -> Option<(String, u32)> {
    for l in text.lines() {
        let Some(frame) = l.trim().strip_prefix("at ") else {
            continue;
        };
        let (method, loc) = match frame.split_once('(') {
            Some((m, rest)) => (m, rest.trim_end_matches(')')),
            None => continue,
        };
        if let Some(class) = class
            && !method.starts_with(class)
        {
            continue;
        }
        if let Some((file, line, None)) = parse_location(loc) {
            return Some((file, line));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_suites_cdata_and_outcomes() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="all">
  <testsuite name="outer">
    <testsuite name="inner ünï">
      <testcase name="ok" time="0.5"/>
      <testcase name="fails" classname="pkg.Class" time="1,234.5">
        <failure message="expected 1" type="AssertionError"><![CDATA[expected 1
  at pkg.Class.fails(Class.java:42)]]></failure>
        <system-out>noise</system-out>
      </testcase>
      <testcase name="errs"><error message="boom &amp; bust">trace &lt;here&gt; &#x263A;</error></testcase>
    </testsuite>
    <testcase name="skipped"><skipped message="not today"/></testcase>
  </testsuite>
</testsuites>"#;
        let r = parse_junit_xml(xml).expect("parses");
        assert_eq!(r.cases.len(), 4);
        assert_eq!(r.cases[0].suite.as_deref(), Some("inner ünï"));
        assert_eq!(r.cases[0].duration_ms, Some(500));
        let f = &r.cases[1];
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!(f.suite.as_deref(), Some("pkg.Class"));
        assert_eq!(f.duration_ms, Some(1_234_500));
        assert_eq!(
            f.message.as_deref(),
            Some("expected 1\n  at pkg.Class.fails(Class.java:42)")
        );
        assert_eq!((f.file.as_deref(), f.line), (Some("Class.java"), Some(42)));
        let e = &r.cases[2];
        assert_eq!(e.outcome, Outcome::Errored);
        assert_eq!(e.message.as_deref(), Some("boom & bust\ntrace <here> ☺"));
        assert_eq!(r.cases[3].outcome, Outcome::Skipped);
        assert_eq!(r.cases[3].suite.as_deref(), Some("outer"));
        assert_eq!(r.cases[3].message.as_deref(), Some("not today"));
        assert_eq!(r.counts().failed, 2);
    }

    #[test]
    fn pytest_parametrized_and_file_attributes() {
        let xml = r#"<testsuites><testsuite name="pytest"><testcase classname="tests.test_a" name="test_p[a-[1, 2]]" file="tests/test_a.py" line="9" time="0.001"><failure message="assert 1 == 2">tests/test_a.py:11: AssertionError</failure></testcase></testsuite></testsuites>"#;
        let r = parse_junit_xml(xml).expect("parses");
        let c = &r.cases[0];
        assert_eq!(c.name, "test_p[a-[1, 2]]");
        assert_eq!(
            (c.file.as_deref(), c.line),
            (Some("tests/test_a.py"), Some(9))
        );
        assert_eq!(
            c.message.as_deref(),
            Some("assert 1 == 2\ntests/test_a.py:11: AssertionError")
        );
    }

    #[test]
    fn jest_junit_shape() {
        // jest-junit's defaults: classname and name both "{classname} {title}"
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="jest tests" tests="2" failures="1" errors="0" time="0.512">
  <testsuite name="math" errors="0" failures="1" skipped="0" timestamp="2026-11-24T18:00:00" time="0.3" tests="2">
    <testcase classname="math adds" name="math adds" time="0.001">
    </testcase>
    <testcase classname="math fails" name="math fails" time="0.002">
      <failure>Error: expect(received).toBe(expected) // Object.is equality

Expected: 3
Received: 2
    at Object.toBe (/r/sum.test.js:7:19)
    at Promise.then.completed (/r/node_modules/jest-circus/build/utils.js:298:28)</failure>
    </testcase>
  </testsuite>
</testsuites>"#;
        let r = parse_junit_xml(xml).expect("parses");
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[0].outcome, Outcome::Passed);
        let f = &r.cases[1];
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!(f.suite.as_deref(), Some("math fails"));
        assert_eq!(
            (f.file.as_deref(), f.line),
            (Some("/r/sum.test.js"), Some(7))
        );
        assert!(
            f.message
                .as_deref()
                .unwrap_or_default()
                .starts_with("Error: expect")
        );
    }

    #[test]
    fn truncated_front_and_back() {
        let xml = r#"me="x" time="1"/><testcase name="a" classname="c"/></testsuite><testcase name="b" classname="c"><failure message="m">body"#;
        let r = parse_junit_xml(xml).expect("partial");
        let names: Vec<&str> = r.cases.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(r.cases[1].outcome, Outcome::Failed);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse_junit_xml("").is_err());
        assert!(parse_junit_xml("not xml at all & < >").is_err());
        assert!(parse_junit_xml("<html><body/></html>").is_err());
        let ok = parse_junit_xml("<testsuite name=\"empty\" tests=\"0\"/>").expect("empty suite");
        assert!(ok.cases.is_empty());
    }

    #[test]
    fn huge_failure_is_capped() {
        let xml = format!(
            "<testsuite><testcase name=\"big\"><failure>{}</failure></testcase></testsuite>",
            "é".repeat(50_000)
        );
        let r = parse_junit_xml(&xml).expect("parses");
        let m = r.cases[0].message.as_deref().unwrap_or_default();
        assert!(m.len() <= crate::MESSAGE_LIMIT);
    }
}
