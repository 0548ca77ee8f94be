//! Property tests: every parser takes whatever a sandboxed command printed — cut anywhere,
//! with bytes flipped, or plain garbage — without panicking, and what it returns keeps the
//! crate's promises (messages capped, counts add up). A fixed seed keeps CI reproducible;
//! `PROPTEST_CASES` runs more by hand.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

/// Real shapes of each format, so that mutations reach deep into the parsers rather than
/// failing at the first byte.
const SAMPLES: &[&str] = &[
    "running 2 tests\ntest a::b ... ok\ntest c ... FAILED\n\nfailures:\n\n---- c stdout ----\n\
     thread 'c' panicked at src/lib.rs:3:5:\nboom\n\nfailures:\n    c\n\n\
     test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n",
    "    Starting 2 tests across 1 binary\n        PASS [   0.003s] app tests::a\n\
     \x20       FAIL [   0.004s] app tests::b\n     Summary [   0.010s] 2 tests run: 1 passed, 1 failed, 0 skipped\n",
    "{\"Action\":\"run\",\"Package\":\"p\",\"Test\":\"TestA\"}\n{\"Action\":\"output\",\"Package\":\"p\",\
     \"Test\":\"TestA\",\"Output\":\"x_test.go:9: bad\\n\"}\n{\"Action\":\"fail\",\"Package\":\"p\",\
     \"Test\":\"TestA\",\"Elapsed\":0.01}\n{\"Action\":\"fail\",\"Package\":\"p\",\"Elapsed\":0.02}\n",
    "<?xml version=\"1.0\"?><testsuites><testsuite name=\"s\" tests=\"2\"><testcase classname=\"m\" \
     name=\"t1\" time=\"0.1\"/><testcase name=\"t2\" file=\"t.py\" line=\"4\"><failure message=\"m\">\
     trace &amp; more</failure></testcase><testcase name=\"t3\"><skipped/></testcase></testsuite></testsuites>",
    "{\"numTotalTests\":2,\"testResults\":[{\"name\":\"/w/a.test.js\",\"status\":\"failed\",\
     \"message\":\"\",\"assertionResults\":[{\"fullName\":\"a works\",\"status\":\"passed\"},\
     {\"fullName\":\"a fails\",\"status\":\"failed\",\"failureMessages\":[\"Error: x\\n at a.test.js:3:9\"]}]}]}",
    "{\"stats\":{\"tests\":2,\"passes\":1,\"failures\":1},\"tests\":[],\"passes\":[{\"title\":\"ok\",\
     \"fullTitle\":\"s ok\",\"file\":\"/w/t.js\",\"err\":{}}],\"failures\":[{\"title\":\"bad\",\
     \"fullTitle\":\"s bad\",\"err\":{\"message\":\"expected 1\",\"stack\":\"at t.js:4:2\"}}]}",
    "error[E0425]: cannot find value `x` in this scope\n --> src/main.rs:2:5\n  |\n2 |     x\n  |     ^ \
     not found\n\nsrc/a.c:3:1: error: expected ';'\nmain.go:4:2: undefined: y\n\
     src/x.ts(3,7): error TS2322: Type 'string' is not assignable\nA.java:5: error: ';' expected\n\
     \x20 File \"t.py\", line 2\n    def (:\n        ^\nSyntaxError: invalid syntax\n",
    "===== 3 passed, 1 failed, 2 skipped in 0.12s =====\nok  \tpkg\t0.01s\n# tests 4\n# pass 3\n# fail 1\n",
];

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2000);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]),
    )
}

/// A sample cut at both ends, with some bytes replaced, read as the worker reads output.
fn mutated() -> impl Strategy<Value = String> {
    (
        0..SAMPLES.len(),
        any::<prop::sample::Index>(),
        any::<prop::sample::Index>(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(i, from, to, flips)| {
            let mut bytes = SAMPLES[i].as_bytes().to_vec();
            for (at, b) in flips {
                let at = at.index(bytes.len());
                bytes[at] = b;
            }
            let (a, b) = (from.index(bytes.len()), to.index(bytes.len() + 1));
            let (a, b) = (a.min(b), a.max(b));
            String::from_utf8_lossy(&bytes[a..b]).into_owned()
        })
}

/// Anything: mutated samples, arbitrary text, and samples glued together.
fn input() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => mutated(),
        2 => any::<String>(),
        1 => prop::collection::vec(mutated(), 1..4).prop_map(|v| v.concat()),
        1 => prop::collection::vec(any::<u8>(), 0..512)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn check_report(report: &TestReport) {
    let c = report.counts();
    assert_eq!(c.total(), report.cases.len() as u64);
    for case in &report.cases {
        if let Some(m) = &case.message {
            // The cap plus the marker that says it was cut.
            assert!(m.len() <= MESSAGE_LIMIT + 64, "{} bytes", m.len());
        }
    }
}

#[test]
fn no_report_parser_panics_and_what_they_return_is_sound() {
    runner()
        .run(&input(), |text| {
            check_report(&parse_cargo(&text));
            check_report(&parse_go_json(&text));
            for r in [
                parse_jest_json(&text),
                parse_mocha_json(&text),
                parse_junit_xml(&text),
            ]
            .into_iter()
            .flatten()
            {
                check_report(&r);
            }
            for format in [
                ReportFormat::CargoLibtest,
                ReportFormat::Nextest,
                ReportFormat::GoTestJson,
                ReportFormat::JUnitXml,
                ReportFormat::JestJson,
                ReportFormat::MochaJson,
            ] {
                if let Ok(r) = parse(format, &text) {
                    check_report(&r);
                }
            }
            if let Some(r) = detect_and_parse(&text, &[("report.xml", &text)], None) {
                check_report(&r);
            }
            let _ = detect_format(&text);
            Ok(())
        })
        .unwrap();
}

#[test]
fn no_count_or_diagnostic_parser_panics_and_diagnostics_are_bounded() {
    runner()
        .run(&input(), |text| {
            for fw in [
                TestFramework::Cargo,
                TestFramework::Pytest,
                TestFramework::Npm,
                TestFramework::Go,
                TestFramework::Unknown,
            ] {
                let _ = parse_test_counts(fw, &text);
            }
            let diagnostics = extract_diagnostics(&text);
            assert!(diagnostics.len() <= MAX_DIAGNOSTICS);
            Ok(())
        })
        .unwrap();
}
