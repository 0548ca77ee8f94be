//! Formats whose tools cannot run here, read from checked-in samples that follow the tools'
//! documented formats (`go test -json` / test2json events; Maven Surefire's `TEST-*.xml`),
//! and every parser fed with garbage and truncated input.

use builder_testreport::{
    DiagnosticOptions, Outcome, ReportFormat, TestReport, detect_and_parse, detect_format,
    extract_diagnostics, extract_diagnostics_with, parse, parse_cargo, parse_go_json,
    parse_jest_json, parse_junit_xml, parse_mocha_json,
};

const GO: &str = include_str!("samples/go-test.jsonl");
const SUREFIRE_CALC: &str = include_str!("samples/TEST-com.example.calc.CalculatorTest.xml");
const SUREFIRE_FLAKY: &str = include_str!("samples/TEST-com.example.calc.FlakyTest.xml");

fn summary(report: &TestReport) -> Vec<(&str, Option<&str>, Outcome)> {
    report
        .cases
        .iter()
        .map(|c| (c.name.as_str(), c.suite.as_deref(), c.outcome))
        .collect()
}

#[test]
fn go_test2json_sample() {
    let report = parse_go_json(GO);
    assert_eq!(report.format, ReportFormat::GoTestJson);
    let calc = Some("example.com/calc");
    assert_eq!(
        summary(&report),
        [
            ("TestAdd", calc, Outcome::Passed),
            ("TestDivide/by_zero", calc, Outcome::Failed),
            ("TestDivide/halves_½", calc, Outcome::Passed),
            ("TestDivide", calc, Outcome::Failed),
            ("TestNeedsNetwork", calc, Outcome::Skipped),
            ("TestParallelA", calc, Outcome::Passed),
            (
                "example.com/calc/parse",
                Some("example.com/calc/parse"),
                Outcome::Errored
            ),
        ]
    );
    let by_zero = &report.cases[1];
    assert_eq!(
        by_zero.message.as_deref(),
        Some("calc_test.go:27: Divide(1, 0) error = <nil>, want ErrDivideByZero")
    );
    assert_eq!(
        (by_zero.file.as_deref(), by_zero.line),
        (Some("calc_test.go"), Some(27))
    );
    assert_eq!(report.cases[5].duration_ms, Some(120));
    assert_eq!(
        report.cases[4].message.as_deref(),
        Some("calc_test.go:41: no network in the sandbox")
    );
    let build = report.cases[6].message.as_deref().unwrap_or_default();
    assert!(
        build.contains("parse/parse.go:14:2: undefined: tokenize"),
        "{build}"
    );
    let counts = report.counts();
    assert_eq!((counts.passed, counts.failed, counts.skipped), (3, 3, 1));
    // the build output inside the message is a compile diagnostic too
    let diags = extract_diagnostics(build);
    assert_eq!(diags.len(), 1);
    assert_eq!(diags[0].file, "parse/parse.go");
    assert_eq!(detect_format(GO), Some(ReportFormat::GoTestJson));
    assert_eq!(detect_and_parse(GO, &[], None), Some(report));
}

#[test]
fn surefire_samples_merge() {
    let report = detect_and_parse(
        "[INFO] Tests run: 8, Failures: 3, Errors: 1, Skipped: 1\n",
        &[
            ("TEST-com.example.calc.CalculatorTest.xml", SUREFIRE_CALC),
            ("TEST-com.example.calc.FlakyTest.xml", SUREFIRE_FLAKY),
        ],
        Some(ReportFormat::JUnitXml),
    )
    .expect("report");
    assert_eq!(report.format, ReportFormat::JUnitXml);
    let calc = Some("com.example.calc.CalculatorTest");
    let flaky = Some("com.example.calc.FlakyTest");
    assert_eq!(
        summary(&report),
        [
            ("addsTwoNumbers", calc, Outcome::Passed),
            ("dividesByZero", calc, Outcome::Failed),
            ("multiplies(int, int, int)[2]", calc, Outcome::Failed),
            ("multiplies(int, int, int)[1]", calc, Outcome::Passed),
            ("readsConfig", calc, Outcome::Errored),
            ("slowPath", calc, Outcome::Skipped),
            ("eventuallyPasses", flaky, Outcome::Passed),
            ("alwaysFails", flaky, Outcome::Failed),
        ]
    );
    let div = &report.cases[1];
    assert_eq!(div.duration_ms, Some(4));
    assert_eq!(
        (div.file.as_deref(), div.line),
        (Some("CalculatorTest.java"), Some(31))
    );
    let m = div.message.as_deref().unwrap_or_default();
    assert!(
        m.starts_with(
            "org.opentest4j.AssertionFailedError: Expected java.lang.ArithmeticException"
        ),
        "{m}"
    );
    assert!(
        !m.contains("dividing 1 by 0"),
        "system-out is not the message: {m}"
    );
    assert_eq!(
        report.cases[2].message.as_deref().map(|m| m.lines().next()),
        Some(Some(
            "org.opentest4j.AssertionFailedError: expected: <6> but was: <5>"
        ))
    );
    assert_eq!(report.cases[4].line, Some(52));
    assert_eq!(
        report.cases[5].message.as_deref(),
        Some("disabled until #42 is fixed")
    );
    assert_eq!(report.cases[6].message, None);
    assert_eq!(report.cases[7].duration_ms, Some(1_204_100));
    let counts = report.counts();
    assert_eq!((counts.passed, counts.failed, counts.skipped), (3, 4, 1));
    assert_eq!(report.failed().count(), 4);
}

#[test]
fn serde_shape() {
    let report = parse_junit_xml(SUREFIRE_CALC).expect("parses");
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["format"], "junit_xml");
    assert_eq!(json["cases"][0]["outcome"], "passed");
    assert_eq!(json["cases"][4]["outcome"], "errored");
    assert!(json["cases"][0].get("message").is_none());
    let back: TestReport = serde_json::from_value(json).expect("deserialises");
    assert_eq!(back, report);
    for (format, name) in [
        (ReportFormat::CargoLibtest, "cargo_libtest"),
        (ReportFormat::Nextest, "nextest"),
        (ReportFormat::GoTestJson, "go_test_json"),
        (ReportFormat::JestJson, "jest_json"),
        (ReportFormat::MochaJson, "mocha_json"),
    ] {
        assert_eq!(serde_json::to_value(format).ok(), Some(name.into()));
    }
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\n",
    " ",
    "\t",
    "\r\n",
    "é",
    "½",
    "\u{1b}[31m",
    "\u{1b}",
    "\u{1b}]8;;",
    "\"Action\":",
    "\"pass\"",
    "\"fail\"",
    "\"Test\":",
    "\"Package\":",
    "\"Output\":",
    "\"testResults\":",
    "\"assertionResults\":",
    "\"stats\":",
    "\"tests\":",
    "\"failures\":",
    "\"err\":",
    "\"status\":",
    "\"failed\"",
    "null",
    "1e400",
    "-1",
    "0.5",
    "<testsuite",
    "<testsuites>",
    "<testcase name=\"",
    "\"/>",
    ">",
    "</testcase>",
    "</testsuite>",
    "<failure message=\"",
    "<![CDATA[",
    "]]>",
    "&amp;",
    "&#xFFFFFFFF;",
    "&",
    "<",
    "test ",
    " ... ",
    "ok",
    "FAILED",
    "ignored",
    "---- ",
    " stdout ----",
    "panicked at ",
    "src/lib.rs:",
    "4294967296",
    "12:",
    "PASS [",
    "FAIL [",
    "TRY 2 ",
    "(1/3) ",
    "Summary [",
    "error[E0308]: ",
    " --> ",
    "error: ",
    "warning: ",
    "a.go:",
    "x.ts(",
    "): error TS1: ",
    "File \"",
    "\", line ",
    "SyntaxError: ",
    "[ERROR] ",
    "A.java:[",
    "at ",
    "(",
    ")",
    "file://",
    "     Running ",
    "failures:",
    "stack backtrace:",
];

fn parse_everything(input: &str) {
    let _ = parse_cargo(input);
    let _ = parse_go_json(input);
    let _ = parse_junit_xml(input);
    let _ = parse_jest_json(input);
    let _ = parse_mocha_json(input);
    let _ = detect_format(input);
    let _ = detect_and_parse(input, &[("junit.xml", input), ("r.json", input)], None);
    for format in [
        ReportFormat::CargoLibtest,
        ReportFormat::GoTestJson,
        ReportFormat::JUnitXml,
        ReportFormat::JestJson,
        ReportFormat::MochaJson,
    ] {
        let _ = parse(format, input);
    }
    let _ = extract_diagnostics(input);
    let _ = extract_diagnostics_with(
        input,
        DiagnosticOptions {
            include_warnings: true,
            max: 0,
        },
    );
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for _ in 0..3000 {
        let len = rng.below(120);
        let mut s = String::new();
        for _ in 0..len {
            s.push_str(TOKENS[rng.below(TOKENS.len())]);
        }
        parse_everything(&s);
    }
    // raw bytes made into text the way the sandbox does it
    for _ in 0..300 {
        let bytes: Vec<u8> = (0..rng.below(400)).map(|_| rng.next() as u8).collect();
        parse_everything(&String::from_utf8_lossy(&bytes));
    }
}

#[test]
fn truncated_samples_never_panic() {
    let cargo_like = "     Running unittests src/lib.rs (target/debug/deps/x-1)\n\nrunning 2 tests\n\
        test a::b ... ok\ntest a::c ... FAILED\n\nfailures:\n\n---- a::c stdout ----\n\n\
        thread 'a::c' panicked at src/lib.rs:8:18:\nassertion `left == right` failed\n  left: 2\n right: 3\n\n\
        failures:\n    a::c\n\ntest result: FAILED. 1 passed; 1 failed\n\
        \x20       FAIL [   0.191s] (2/3) sample tests::x\n  stderr ───\n    thread 'x' panicked at src/lib.rs:1:1:\n    no\n\
        error[E0308]: mismatched types\n --> src/lib.rs:2:18\n";
    let jest = r#"{"testResults":[{"name":"/r/a.test.js","status":"failed","message":"","assertionResults":[{"ancestorTitles":["é"],"title":"t","status":"failed","duration":1,"location":{"line":3},"failureMessages":["Error: x\n    at Object.<anonymous> (/r/a.test.js:3:9)"]}]}]}"#;
    let mocha = r#"{"stats":{"tests":1},"tests":[{"title":"t","fullTitle":"s t","file":"/r/a.js","err":{"message":"m","stack":"Error: m\n    at Context.<anonymous> (a.js:4:36)"}}],"failures":[],"pending":[],"passes":[]}"#;
    for sample in [GO, SUREFIRE_CALC, SUREFIRE_FLAKY, cargo_like, jest, mocha] {
        let cuts: Vec<usize> = (0..=sample.len())
            .step_by(5)
            .filter(|&i| sample.is_char_boundary(i))
            .collect();
        for &i in &cuts {
            // cut at the front (what a capped sandbox output keeps) and at the back
            parse_everything(&sample[i..]);
            parse_everything(&sample[..i]);
        }
    }
}
