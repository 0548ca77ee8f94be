//! `jest --json` and `vitest run --reporter=json` (which writes the same shape).

use serde_json::Value;

use crate::text::{find_json_object, js_stack_location, json_f64, json_str, message, millis};
use crate::{Outcome, ParseError, ReportFormat, TestCase, TestReport};

/// Reads Jest's `--json` result (also Vitest's `--reporter=json`): `testResults[]` (one per
/// test file, the suite) with `assertionResults[]` (one per test). The name is the
/// `ancestorTitles` and `title` joined with ` › `, as Jest prints it. `pending`, `skipped`,
/// `todo` and `disabled` are skipped. A file that failed without results (a syntax error,
/// an import that throws) becomes one [`Outcome::Errored`] case named after the file. The
/// location is `location.line` when the runner recorded it, else the first stack frame
/// outside `node_modules`. Console output before the JSON on stdout is skipped.
pub fn parse_jest_json(json: &str) -> Result<TestReport, ParseError> {
    let root = find_json_object(json, |v| v.get("testResults").is_some_and(Value::is_array))
        .ok_or(ParseError::Json {
            format: ReportFormat::JestJson,
            detail: serde_json::from_str::<Value>(json.trim())
                .err()
                .map(|e| e.to_string()),
        })?;
    let mut cases = Vec::new();
    let files = root
        .get("testResults")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for file in files {
        let path = json_str(file.get("name")).or_else(|| json_str(file.get("testFilePath")));
        let results = file
            .get("assertionResults")
            .or_else(|| file.get("testResults"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for result in results {
            cases.push(assertion(result, path));
        }
        let file_failed = json_str(file.get("status")) == Some("failed")
            || file.get("testExecError").is_some_and(|e| !e.is_null());
        let any_failed = results
            .iter()
            .any(|r| json_str(r.get("status")) == Some("failed"));
        if file_failed && !any_failed {
            let text = [
                json_str(file.get("message")),
                json_str(file.get("failureMessage")),
                file.get("testExecError")
                    .and_then(|e| json_str(e.get("message"))),
            ]
            .into_iter()
            .flatten()
            .find(|t| !t.trim().is_empty())
            .unwrap_or_default();
            let mut case = TestCase::new(path.unwrap_or("(test file)"), Outcome::Errored);
            case.suite = path.map(str::to_string);
            case.message = message(text);
            case.file = path.map(str::to_string);
            cases.push(case);
        }
    }
    Ok(TestReport {
        format: ReportFormat::JestJson,
        cases,
    })
}

fn assertion(result: &Value, path: Option<&str>) -> TestCase {
    let title = json_str(result.get("title")).unwrap_or_default();
    let mut parts: Vec<&str> = result
        .get("ancestorTitles")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    parts.push(title);
    let mut name = parts.join(" › ");
    if title.is_empty()
        && let Some(full) = json_str(result.get("fullName"))
    {
        name = full.to_string();
    }
    let outcome = match json_str(result.get("status")).unwrap_or_default() {
        "passed" => Outcome::Passed,
        "failed" => Outcome::Failed,
        "pending" | "skipped" | "todo" | "disabled" => Outcome::Skipped,
        _ => Outcome::Skipped,
    };
    let mut case = TestCase::new(name, outcome);
    case.suite = path.map(str::to_string);
    case.duration_ms = json_f64(result.get("duration")).and_then(millis);
    if outcome == Outcome::Failed {
        let text = result
            .get("failureMessages")
            .and_then(Value::as_array)
            .map(|m| {
                m.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n\n")
            })
            .unwrap_or_default();
        case.message = message(&text);
        let recorded = result
            .get("location")
            .and_then(|l| json_f64(l.get("line")))
            .filter(|l| *l >= 1.0 && *l <= f64::from(u32::MAX))
            .map(|l| l as u32);
        if let Some(line) = recorded {
            case.file = path.map(str::to_string);
            case.line = Some(line);
        } else if let Some((file, line)) =
            own_frame(&text, path).or_else(|| js_stack_location(&text))
        {
            case.file = Some(file);
            case.line = Some(line);
        }
    }
    case
}

/// The first stack frame in the test file itself.
fn own_frame(text: &str, path: Option<&str>) -> Option<(String, u32)> {
    let path = path?;
    text.lines()
        .filter(|l| l.contains(path))
        .find_map(js_stack_location)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jest_shape() {
        let json = r#"{"numTotalTests":3,"testResults":[{"name":"/r/sum.test.js","status":"failed","message":"","assertionResults":[
          {"ancestorTitles":["math","deep [1]"],"title":"adds ünï","status":"passed","duration":3,"failureMessages":[]},
          {"ancestorTitles":["math"],"title":"fails","status":"failed","duration":null,"failureMessages":["Error: expect(received).toBe(expected)\n    at Object.toBe (/r/node_modules/x.js:1:1)\n    at Object.toBe (/r/sum.test.js:3:39)"]},
          {"ancestorTitles":[],"title":"later","status":"todo","failureMessages":[]}]},
          {"name":"/r/broken.test.js","status":"failed","message":"SyntaxError: Unexpected token (1:7)","assertionResults":[]}]}"#;
        let r = parse_jest_json(json).expect("parses");
        assert_eq!(r.cases.len(), 4);
        assert_eq!(r.cases[0].name, "math › deep [1] › adds ünï");
        assert_eq!(r.cases[0].duration_ms, Some(3));
        let f = &r.cases[1];
        assert_eq!(f.outcome, Outcome::Failed);
        assert_eq!(
            (f.file.as_deref(), f.line),
            (Some("/r/sum.test.js"), Some(3))
        );
        assert_eq!(r.cases[2].outcome, Outcome::Skipped);
        let b = &r.cases[3];
        assert_eq!(b.outcome, Outcome::Errored);
        assert_eq!(b.name, "/r/broken.test.js");
        assert_eq!(
            b.message.as_deref(),
            Some("SyntaxError: Unexpected token (1:7)")
        );
        assert_eq!(r.counts().failed, 2);
    }

    #[test]
    fn vitest_shape_with_location_and_float_durations() {
        let json = r#"{"testResults":[{"name":"/r/a.test.ts","status":"failed","assertionResults":[
          {"ancestorTitles":["s"],"fullName":"s t","title":"t","status":"failed","duration":4.6,"location":{"line":7,"column":3},"failureMessages":["AssertionError: expected 2 to be 3"],"meta":{}},
          {"ancestorTitles":["s"],"fullName":"s u","title":"u","status":"skipped","failureMessages":[],"meta":{}}]}]}"#;
        let r = parse_jest_json(json).expect("parses");
        assert_eq!(r.cases[0].duration_ms, Some(5));
        assert_eq!(r.cases[0].line, Some(7));
        assert_eq!(r.cases[0].file.as_deref(), Some("/r/a.test.ts"));
        assert_eq!(r.cases[1].outcome, Outcome::Skipped);
    }

    #[test]
    fn console_noise_before_json_and_garbage() {
        let out = "console.log hello\n{\"testResults\":[]}\n";
        assert!(parse_jest_json(out).expect("parses").cases.is_empty());
        assert!(parse_jest_json("").is_err());
        assert!(parse_jest_json("{\"testResults\": 5}").is_err());
        assert!(
            parse_jest_json("{\"testResults\":[{\"assertionResults\":[1, null, {\"status\":7}]}]}")
                .is_ok()
        );
    }
}
