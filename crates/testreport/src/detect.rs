//! Choosing the parser: by a hint, by file name, by content.

use serde_json::Value;

use crate::text::find_json_object;
use crate::{
    ParseError, ReportFormat, TestReport, parse_cargo, parse_go_json, parse_jest_json,
    parse_junit_xml, parse_mocha_json,
};

/// Parses `input` as `format`. [`ReportFormat::CargoLibtest`] and [`ReportFormat::Nextest`]
/// both read either output (the result says which it was).
pub fn parse(format: ReportFormat, input: &str) -> Result<TestReport, ParseError> {
    match format {
        ReportFormat::CargoLibtest | ReportFormat::Nextest => Ok(parse_cargo(input)),
        ReportFormat::GoTestJson => Ok(parse_go_json(input)),
        ReportFormat::JUnitXml => parse_junit_xml(input),
        ReportFormat::JestJson => parse_jest_json(input),
        ReportFormat::MochaJson => parse_mocha_json(input),
    }
}

/// Which runner wrote `input`, judged by its content.
pub fn detect_format(input: &str) -> Option<ReportFormat> {
    if is_go_json(input) {
        return Some(ReportFormat::GoTestJson);
    }
    if input.contains("\"testResults\"")
        && find_json_object(input, |v| v.get("testResults").is_some_and(Value::is_array)).is_some()
    {
        return Some(ReportFormat::JestJson);
    }
    if input.contains("\"stats\"") && parse_mocha_json(input).is_ok() {
        return Some(ReportFormat::MochaJson);
    }
    let xml = input.contains("<testsuite") || input.contains("<testcase");
    if xml && input.trim_start().starts_with('<') {
        return Some(ReportFormat::JUnitXml);
    }
    if let Some(format) = cargo_format(input) {
        return Some(format);
    }
    xml.then_some(ReportFormat::JUnitXml)
}

fn is_go_json(input: &str) -> bool {
    input
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('{') && l.contains("\"Action\""))
        .take(16)
        .any(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .is_some_and(|v| v.get("Action").is_some_and(Value::is_string))
        })
}

fn cargo_format(input: &str) -> Option<ReportFormat> {
    let report = parse_cargo(input);
    if !report.cases.is_empty() {
        return Some(report.format);
    }
    input
        .lines()
        .any(|l| {
            l.starts_with("test result: ")
                || l.trim_start().starts_with("Summary [")
                || (l.starts_with("running ") && l.ends_with(" tests"))
        })
        .then_some(report.format)
}

fn family(format: ReportFormat) -> ReportFormat {
    match format {
        ReportFormat::Nextest => ReportFormat::CargoLibtest,
        other => other,
    }
}

/// The test results of one command: from the report files it wrote (`(name, contents)`,
/// e.g. `("junit.xml", …)`; several files of one format, like Surefire's `TEST-*.xml`, are
/// merged), else from its output (stdout, or stdout and stderr together). `hint` is the
/// format the command was configured for; without it, or when it does not fit, the format
/// is recognised by content. Files are preferred when they hold at least one test. `None`
/// when nothing was recognised.
pub fn detect_and_parse(
    output: &str,
    files: &[(&str, &str)],
    hint: Option<ReportFormat>,
) -> Option<TestReport> {
    let mut from_files: Option<TestReport> = None;
    for (name, contents) in files {
        let Some(report) = parse_file(name, contents, hint) else {
            continue;
        };
        match from_files.as_mut() {
            None => from_files = Some(report),
            Some(merged) if family(merged.format) == family(report.format) => {
                merged.cases.extend(report.cases)
            }
            Some(_) => {}
        }
    }
    if let Some(report) = &from_files
        && !report.cases.is_empty()
    {
        return from_files;
    }
    parse_output(output, hint).or(from_files)
}

fn parse_file(name: &str, contents: &str, hint: Option<ReportFormat>) -> Option<TestReport> {
    if let Some(h) = hint
        && let Ok(report) = parse(h, contents)
        && (!report.cases.is_empty() || detect_format(contents).map(family) == Some(family(h)))
    {
        return Some(report);
    }
    if name.to_ascii_lowercase().ends_with(".xml")
        && let Ok(report) = parse_junit_xml(contents)
    {
        return Some(report);
    }
    parse(detect_format(contents)?, contents).ok()
}

fn parse_output(output: &str, hint: Option<ReportFormat>) -> Option<TestReport> {
    let detected = detect_format(output);
    if let Some(h) = hint
        && let Ok(report) = parse(h, output)
        && (!report.cases.is_empty() || detected.map(family) == Some(family(h)))
    {
        return Some(report);
    }
    parse(detected?, output).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Outcome;

    const JUNIT: &str = r#"<testsuite name="c"><testcase name="a"/></testsuite>"#;

    #[test]
    fn detects_each_format() {
        assert_eq!(
            detect_format("{\"Action\":\"pass\",\"Package\":\"p\"}\n"),
            Some(ReportFormat::GoTestJson)
        );
        assert_eq!(
            detect_format("{\"testResults\":[]}"),
            Some(ReportFormat::JestJson)
        );
        assert_eq!(
            detect_format("{\"stats\":{},\"tests\":[]}"),
            Some(ReportFormat::MochaJson)
        );
        assert_eq!(detect_format(JUNIT), Some(ReportFormat::JUnitXml));
        assert_eq!(
            detect_format("test a ... ok\n"),
            Some(ReportFormat::CargoLibtest)
        );
        assert_eq!(
            detect_format("running 0 tests\n\ntest result: ok. 0 passed; 0 failed\n"),
            Some(ReportFormat::CargoLibtest)
        );
        assert_eq!(
            detect_format("        PASS [   0.001s] c t\n"),
            Some(ReportFormat::Nextest)
        );
        assert_eq!(detect_format("hello\nworld"), None);
        assert_eq!(detect_format(""), None);
    }

    #[test]
    fn files_win_and_merge() {
        let second = r#"<testsuite name="d"><testcase name="b"><failure/></testcase></testsuite>"#;
        let r = detect_and_parse(
            "test x ... ok\n",
            &[
                ("TEST-c.xml", JUNIT),
                ("notes.txt", "nothing"),
                ("TEST-d.xml", second),
            ],
            None,
        )
        .expect("report");
        assert_eq!(r.format, ReportFormat::JUnitXml);
        assert_eq!(r.cases.len(), 2);
        assert_eq!(r.cases[1].outcome, Outcome::Failed);
    }

    #[test]
    fn output_when_files_are_empty_or_missing() {
        let r = detect_and_parse("test x ... ok\n", &[("junit.xml", "")], None).expect("report");
        assert_eq!(r.format, ReportFormat::CargoLibtest);
        let r = detect_and_parse(
            "test x ... ok\n",
            &[("junit.xml", "<testsuites/>")],
            Some(ReportFormat::JUnitXml),
        )
        .expect("report");
        assert_eq!(r.format, ReportFormat::CargoLibtest);
        let r = detect_and_parse("nothing here", &[("junit.xml", "<testsuites/>")], None)
            .expect("empty junit");
        assert!(r.cases.is_empty());
        assert!(detect_and_parse("nothing here", &[], None).is_none());
        assert!(detect_and_parse("nothing", &[], Some(ReportFormat::GoTestJson)).is_none());
    }

    #[test]
    fn junit_on_stdout_after_other_output() {
        let out = format!("npm notice\n{JUNIT}\n");
        let r = detect_and_parse(&out, &[], None).expect("report");
        assert_eq!(r.format, ReportFormat::JUnitXml);
        assert_eq!(r.cases.len(), 1);
    }
}
