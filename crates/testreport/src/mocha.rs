//! `mocha --reporter json`.

use std::collections::HashSet;

use serde_json::Value;

use crate::text::{find_json_object, js_stack_location, json_f64, json_str, message, millis};
use crate::{Outcome, ParseError, ReportFormat, TestCase, TestReport};

/// Reads Mocha's JSON reporter output: `stats` plus `tests`, `passes`, `pending` and
/// `failures` (each entry `title`, `fullTitle`, `file`, `duration`, `err`). The name is the
/// `fullTitle`, the suite the file. A failure that is not one of the `tests` (a failing
/// `before all` hook) becomes an [`Outcome::Errored`] case. Console output before the JSON on
/// stdout is skipped.
pub fn parse_mocha_json(json: &str) -> Result<TestReport, ParseError> {
    let root = find_json_object(json, |v| {
        v.get("stats").is_some_and(Value::is_object)
            && (v.get("tests").is_some_and(Value::is_array)
                || v.get("failures").is_some_and(Value::is_array))
    })
    .ok_or(ParseError::Json {
        format: ReportFormat::MochaJson,
        detail: serde_json::from_str::<Value>(json.trim())
            .err()
            .map(|e| e.to_string()),
    })?;
    let list = |key: &str| -> Vec<&Value> {
        root.get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default()
    };
    let key = |t: &Value| -> (String, String) {
        (
            json_str(t.get("file")).unwrap_or_default().to_string(),
            json_str(t.get("fullTitle"))
                .or_else(|| json_str(t.get("title")))
                .unwrap_or_default()
                .to_string(),
        )
    };
    let failures = list("failures");
    let failed: HashSet<(String, String)> = failures.iter().map(|t| key(t)).collect();
    let pending: HashSet<(String, String)> = list("pending").iter().map(|t| key(t)).collect();
    let mut tests = list("tests");
    if tests.is_empty() {
        // an older or trimmed report: rebuild from the outcome lists
        tests = list("passes");
        tests.extend(list("pending"));
        tests.extend(failures.iter().copied());
    }
    let mut seen = HashSet::new();
    let mut cases = Vec::new();
    for t in tests {
        let k = key(t);
        let has_err = t
            .get("err")
            .and_then(Value::as_object)
            .is_some_and(|e| !e.is_empty());
        let outcome = if failed.contains(&k) || has_err {
            Outcome::Failed
        } else if pending.contains(&k) || t.get("pending").and_then(Value::as_bool) == Some(true) {
            Outcome::Skipped
        } else {
            Outcome::Passed
        };
        cases.push(case(t, &k, outcome));
        seen.insert(k);
    }
    for t in failures {
        let k = key(t);
        if !seen.contains(&k) {
            cases.push(case(t, &k, Outcome::Errored));
            seen.insert(k);
        }
    }
    Ok(TestReport {
        format: ReportFormat::MochaJson,
        cases,
    })
}

fn case(t: &Value, (file, name): &(String, String), outcome: Outcome) -> TestCase {
    let mut case = TestCase::new(name.clone(), outcome);
    case.suite = (!file.is_empty()).then(|| file.clone());
    case.duration_ms = json_f64(t.get("duration")).and_then(millis);
    if matches!(outcome, Outcome::Failed | Outcome::Errored) {
        let err = t.get("err");
        let stack = err
            .and_then(|e| json_str(e.get("stack")))
            .unwrap_or_default();
        let msg = err
            .and_then(|e| json_str(e.get("message")))
            .unwrap_or_default();
        let text = if stack.contains(msg.trim()) && !stack.is_empty() {
            stack.to_string()
        } else if stack.is_empty() {
            msg.to_string()
        } else {
            format!("{msg}\n{stack}")
        };
        case.message = message(&text);
        if let Some((path, line)) = js_stack_location(stack) {
            // Mocha prints frames relative to the working directory; the test's own file is
            // the better name when they agree.
            let path = if !file.is_empty() && file.ends_with(path.trim_start_matches("./")) {
                file.clone()
            } else {
                path
            };
            case.file = Some(path);
            case.line = Some(line);
        }
    }
    case
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mocha_shape_with_hook_failure() {
        let json = r#"{"stats":{"tests":3},"tests":[
          {"title":"adds","fullTitle":"math adds","file":"/r/sum.spec.js","duration":1,"err":{}},
          {"title":"fails [1]","fullTitle":"math fails [1]","file":"/r/sum.spec.js","duration":0,"err":{"stack":"AssertionError: no\n    at Context.<anonymous> (sum.spec.js:4:36)","message":"no"}},
          {"title":"later","fullTitle":"math later","file":"/r/sum.spec.js","err":{}}],
          "pending":[{"title":"later","fullTitle":"math later","file":"/r/sum.spec.js","err":{}}],
          "failures":[{"title":"fails [1]","fullTitle":"math fails [1]","file":"/r/sum.spec.js","err":{"message":"no"}},
                      {"title":"\"before all\" hook","fullTitle":"h \"before all\" hook","file":"/r/sum.spec.js","err":{"message":"hook boom"}}],
          "passes":[]}"#;
        let r = parse_mocha_json(json).expect("parses");
        let got: Vec<(&str, Outcome)> = r
            .cases
            .iter()
            .map(|c| (c.name.as_str(), c.outcome))
            .collect();
        assert_eq!(
            got,
            [
                ("math adds", Outcome::Passed),
                ("math fails [1]", Outcome::Failed),
                ("math later", Outcome::Skipped),
                ("h \"before all\" hook", Outcome::Errored),
            ]
        );
        let f = &r.cases[1];
        assert_eq!(
            (f.file.as_deref(), f.line),
            (Some("/r/sum.spec.js"), Some(4))
        );
        assert_eq!(
            f.message.as_deref(),
            Some("AssertionError: no\n    at Context.<anonymous> (sum.spec.js:4:36)")
        );
        assert_eq!(r.cases[3].message.as_deref(), Some("hook boom"));
    }

    #[test]
    fn garbage() {
        assert!(parse_mocha_json("").is_err());
        assert!(parse_mocha_json("{\"stats\":1}").is_err());
        let r = parse_mocha_json("{\"stats\":{},\"tests\":[1,\"x\",{\"err\":5}]}").expect("ok");
        assert_eq!(r.cases.len(), 3);
    }
}
