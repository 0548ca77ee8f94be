//! Unit tests of the client: usage ledgers and how provider failures are classified.

use super::*;

#[test]
fn a_ledger_taken_starts_afresh() {
    let ledger = UsageLedger::new();
    ledger.add(&Attempt {
        status: Some(200),
        usage: TokenUsage {
            input_tokens: 10,
            output_tokens: 5,
            estimated: true,
            ..TokenUsage::default()
        },
        cost_usd: None,
    });
    let first = ledger.take();
    assert_eq!((first.usage.total(), first.requests), (15, 1));
    assert!(first.usage.estimated && first.cost_usd.is_none());
    // An estimate or an unknown price in one call does not mark the next one.
    ledger.add(&Attempt {
        status: Some(200),
        usage: TokenUsage {
            input_tokens: 3,
            ..TokenUsage::default()
        },
        cost_usd: Some(0.5),
    });
    let second = ledger.take();
    assert_eq!(second.usage.total(), 3);
    assert!(!second.usage.estimated);
    assert_eq!(second.cost_usd, Some(0.5));
    assert_eq!(ledger.spent().requests, 0);
}

// Bodies captured from baml-cli 0.226.3 (see `classify`).
#[test]
fn classifies_what_baml_cli_answers() {
    let rate = r#"{"error":"client_error","message":"\"Request failed with status code: 429 Too Many Requests. {\\\"error\\\":{\\\"message\\\":\\\"boom\\\"}}\""}"#;
    match classify("F", 502, rate) {
        LlmError::Transient { status, message } => {
            assert_eq!(status, Some(429));
            assert!(message.starts_with("Request failed"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    let overloaded = r#"{"error":"client_error","message":"\"Request failed with status code: 529 <unknown status code>. {}\""}"#;
    assert!(matches!(
        classify("F", 502, overloaded),
        LlmError::Transient {
            status: Some(529),
            ..
        }
    ));
    let auth = r#"{"error":"client_error","message":"\"Request failed with status code: 401 Unauthorized. {}\""}"#;
    assert!(matches!(
        classify("F", 502, auth),
        LlmError::Rejected { status: 401, .. }
    ));
    let refused = r#"{"error":"client_error","message":"\"reqwest::Error { kind: Request, source: ConnectError(\\\"tcp connect error\\\") }\""}"#;
    assert!(matches!(
        classify("F", 502, refused),
        LlmError::Transient { status: None, .. }
    ));
    let parse = r#"{"error":"validation_failure","prompt":"p","raw_output":"I cannot","message":"Failed to parse LLM response: x"}"#;
    match classify("AnalyzeFeature", 500, parse) {
        LlmError::Parse {
            function,
            raw_output,
            ..
        } => {
            assert_eq!(function, "AnalyzeFeature");
            assert_eq!(raw_output.as_deref(), Some("I cannot"));
        }
        e => panic!("{e:?}"),
    }
    let finish = r#"{"error":"internal_error","message":"Error parsing: Finish reason error: Finish reason not allowed\nPrompt: secret repo\nRaw Response: no\nFinish Reason: content_filter\n\nStack backtrace:\n 0: x"}"#;
    match classify("F", 500, finish) {
        LlmError::Refused { message } => {
            assert!(message.contains("content_filter"), "{message}");
            assert!(!message.contains("secret repo"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        classify("F", 403, "Incorrect authorization metadata"),
        LlmError::Sidecar { .. }
    ));
    match classify(
        "F",
        400,
        r#"{"error":"invalid_argument","message":"Missing required parameter: request"}"#,
    ) {
        LlmError::Sidecar { message } => {
            assert!(message.contains("invalid_argument"), "{message}")
        }
        e => panic!("{e:?}"),
    }
}
