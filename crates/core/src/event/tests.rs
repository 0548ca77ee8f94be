//! Unit tests of the event catalogue and its envelope.

use super::*;

#[test]
fn parts_round_trip() {
    let e = Event::TestsCompleted {
        command: "cargo test".into(),
        success: false,
        exit_code: Some(101),
        timed_out: false,
        passed: 3,
        failed: 1,
        ignored: 0,
        duration_ms: 1200,
        output_tail: "boom".into(),
        killed_by: None,
        limits_hit: vec![],
        baseline: false,
        report_format: Some("cargo_libtest".into()),
        failures: vec![TestFailure {
            name: "a::b".into(),
            message: Some("assertion failed".into()),
            file: Some("src/lib.rs".into()),
            line: Some(3),
        }],
        preexisting_failures: vec![],
        diagnostics: vec![],
        egress_refused: vec!["evil.example:443: not on the allow-list".into()],
    };
    let (ty, payload) = e.to_parts().unwrap();
    assert_eq!(ty, "tests.completed");
    assert_eq!(e.event_type(), "tests.completed");
    assert_eq!(payload["failed"], 1);
    assert_eq!(Event::from_parts(&ty, &payload).unwrap(), e);
}

#[test]
fn empty_payload_events_round_trip() {
    let (ty, payload) = Event::AnalysisStarted {}.to_parts().unwrap();
    assert_eq!(ty, "analysis.started");
    assert_eq!(
        Event::from_parts(&ty, &payload).unwrap(),
        Event::AnalysisStarted {}
    );
}

#[test]
fn usage_adds_up_and_an_unknown_price_stays_unknown() {
    let priced = LlmUsage {
        input_tokens: 100,
        output_tokens: 10,
        cost_usd: Some(0.5),
        ..LlmUsage::default()
    };
    let mut total = LlmUsage {
        cost_usd: Some(0.0),
        ..LlmUsage::default()
    };
    total.add(&priced);
    total.add(&priced);
    assert_eq!((total.total_tokens(), total.cost_usd), (220, Some(1.0)));
    // Nothing spent at an unknown price costs nothing.
    total.add(&LlmUsage::default());
    assert_eq!(total.cost_usd, Some(1.0));
    total.add(&LlmUsage {
        output_tokens: 1,
        estimated: true,
        ..LlmUsage::default()
    });
    assert_eq!(total.cost_usd, None);
    assert!(total.estimated);
    // Events written before usage existed still read.
    let old: Event = serde_json::from_value(serde_json::json!({
        "type": "llm.response.received",
        "payload": {"function": "F", "provider": "p", "model": "m", "latency_ms": 1, "attempts": 1}
    }))
    .unwrap();
    assert!(
        matches!(old, Event::LlmResponseReceived { usage, .. } if usage == LlmUsage::default())
    );
}

#[test]
fn unknown_types_are_errors() {
    assert!(Event::from_parts("no.such.event", &serde_json::json!({})).is_err());
}
