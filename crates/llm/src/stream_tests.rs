//! Streaming end to end: a real `baml-cli serve` sidecar, its `/stream` endpoint, the
//! metering proxy and the scripted provider, in both wire formats.

use crate::sidecar_tests::{
    ANALYSIS, PLAN, REVIEW, analysis, anthropic, context, fast_retries, fresh_key, openai, prices,
    request, sidecar,
};
use crate::{LlmError, LlmSettings, Partial, RetryPolicy, UsageLedger};
use llm_script_server::{Entry, Running, Script, start};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Long enough for a dozen provider chunks of 16 characters.
const LONG_REVIEW: &str = r#"{"approved": true, "reasons": ["the tests pass", "the route answers ok", "nothing unrelated changed"]}"#;

/// Far below the keep-alive tick (15 s) that ends a failed `/stream` on its own: failures
/// must be seen through the metering proxy, not by waiting for the stream to give up.
const FAST: Duration = Duration::from_secs(8);

type Settings = fn(&Running, &str) -> LlmSettings;
const FORMATS: [(&str, Settings); 2] = [("openai", openai), ("anthropic", anthropic)];

fn drain(rx: &mut UnboundedReceiver<Partial>) -> Vec<Partial> {
    let mut out = Vec::new();
    while let Ok(p) = rx.try_recv() {
        out.push(p);
    }
    out
}

/// Nothing arrives once the call has returned.
async fn assert_quiet_after_return(rx: &mut UnboundedReceiver<Partial>) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        drain(rx).is_empty(),
        "a partial arrived after the final value"
    );
}

#[tokio::test]
async fn a_clean_stream_yields_partials_then_the_final_value_and_its_usage() {
    let server = start(Script::new(vec![
        Entry::text(LONG_REVIEW).chunk_delay_ms(40).usage(321, 45),
        Entry::text(LONG_REVIEW).chunk_delay_ms(40).usage(654, 78),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();
    for ((name, settings), want) in FORMATS.into_iter().zip([(321, 45), (654, 78)]) {
        let (tx, mut rx) = unbounded_channel();
        let ledger = UsageLedger::new();
        let called = sidecar
            .client(settings(&server, &key))
            .with_prices(prices())
            .with_ledger(ledger.clone())
            .with_partial_observer(tx)
            .with_partial_interval(Duration::ZERO)
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        assert!(called.value.approved, "{name}");
        assert_eq!(called.value.reasons.len(), 3, "{name}");
        assert_eq!(called.attempts, 1, "{name}");
        assert_eq!(called.raw["reasons"][2], "nothing unrelated changed");

        let partials = drain(&mut rx);
        assert!(partials.len() >= 2, "{name}: {partials:?}");
        for p in &partials {
            assert_eq!((p.function, p.attempt), ("ValidateChange", 1), "{name}");
            assert_eq!(p.chars, p.value.to_string().chars().count());
        }
        // They differ from each other and grow as the model writes.
        assert!(
            partials.windows(2).all(|w| w[0].value != w[1].value),
            "{name}: {partials:?}"
        );
        let sizes: Vec<usize> = partials.iter().map(|p| p.chars).collect();
        assert!(sizes.first() < sizes.last(), "{name}: {sizes:?}");
        assert_quiet_after_return(&mut rx).await;

        // One provider request (the replay asks none), metered from the stream.
        let spent = ledger.spent();
        assert_eq!(spent.requests, 1, "{name}");
        assert_eq!(
            (spent.usage.input_tokens, spent.usage.output_tokens),
            want,
            "{name}"
        );
        assert!(!spent.usage.estimated, "{name}");
        assert!(spent.cost_usd.is_some_and(|c| c > 0.0), "{name}");
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.body["stream"] == true));
    assert_eq!(requests[0].body["stream_options"]["include_usage"], true);
    assert!(requests[1].body.get("stream_options").is_none());
    assert!(!format!("{requests:?}").contains(&key));
}

#[tokio::test]
async fn the_meter_asks_openai_compatible_streams_for_their_usage() {
    // BAML asks for stream usage for `openai` only; the proxy asks for `openai-generic`.
    let server = start(Script::new(vec![
        Entry::text(REVIEW).chunk_delay_ms(10).usage(77, 11),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let settings = LlmSettings {
        provider: "openai-generic".into(),
        model: "local".into(),
        api_key: None,
        base_url: Some(server.openai_base_url()),
        max_tokens: 500,
        temperature: 0.0,
    };
    let (tx, _rx) = unbounded_channel();
    let ledger = UsageLedger::new();
    let called = sidecar
        .client(settings)
        .with_ledger(ledger.clone())
        .with_partial_observer(tx)
        .validate(&request(), "d", "t")
        .await
        .unwrap();
    assert!(called.value.approved);
    let spent = ledger.spent();
    assert_eq!(
        (spent.usage.input_tokens, spent.usage.output_tokens),
        (77, 11)
    );
    assert!(!spent.usage.estimated);
    let requests = server.requests();
    assert_eq!(requests[0].body["stream"], true);
    assert_eq!(requests[0].body["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn rate_limits_and_overload_are_retried_while_streaming() {
    let server = start(Script::new(vec![
        Entry::error(429).when_contains("gpt-scripted"),
        Entry::text(LONG_REVIEW)
            .chunk_delay_ms(20)
            .when_contains("gpt-scripted"),
        Entry::error(429).when_contains("claude-scripted"),
        Entry::error(529).when_contains("claude-scripted"),
        Entry::text(LONG_REVIEW)
            .chunk_delay_ms(20)
            .when_contains("claude-scripted"),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();
    for ((name, settings), statuses) in FORMATS.into_iter().zip([&[429][..], &[429, 529]]) {
        let (tx, mut rx) = unbounded_channel();
        let (ntx, mut nrx) = unbounded_channel();
        let started = Instant::now();
        let called = sidecar
            .client(settings(&server, &key))
            .with_retry_policy(fast_retries())
            .with_retry_observer(ntx)
            .with_partial_observer(tx)
            .with_partial_interval(Duration::ZERO)
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        assert!(started.elapsed() < FAST, "{name}: {:?}", started.elapsed());
        let tries = statuses.len() as u32 + 1;
        assert_eq!(called.attempts, tries, "{name}");
        assert_eq!(called.value.reasons.len(), 3, "{name}");
        for (i, status) in statuses.iter().enumerate() {
            let notice = nrx.try_recv().unwrap();
            assert_eq!(notice.attempt, i as u32 + 1);
            // The same error text as `/call` gives: a transient failure with the status.
            let want = format!(
                "transient provider failure (HTTP {status}): Request failed with status code: {status}"
            );
            assert!(notice.error.starts_with(&want), "{name}: {notice:?}");
            assert!(notice.delay_ms > 0);
        }
        assert!(nrx.try_recv().is_err());
        let partials = drain(&mut rx);
        assert!(!partials.is_empty(), "{name}");
        assert!(partials.iter().all(|p| p.attempt == tries), "{name}");
    }
    assert_eq!(server.requests().len(), 5);
    assert_eq!(server.unused_entries(), 0);
}

fn model_of(format: &str) -> &'static str {
    if format == "openai" {
        "gpt-scripted"
    } else {
        "claude-scripted"
    }
}

#[tokio::test]
async fn server_errors_fall_back_to_the_next_provider_while_streaming() {
    let sidecar = sidecar().await;
    let key = fresh_key();
    // Each wire format fails over to the other.
    for (first, second) in [(0, 1), (1, 0)] {
        let (first_name, first_settings) = FORMATS[first];
        let (second_name, second_settings) = FORMATS[second];
        let server = start(Script::new(vec![
            Entry::error(503).when_contains(model_of(first_name)),
            Entry::error(500).when_contains(model_of(first_name)),
            Entry::text(LONG_REVIEW)
                .chunk_delay_ms(20)
                .usage(10, 20)
                .when_contains(model_of(second_name)),
        ]))
        .await
        .unwrap();
        let (tx, mut rx) = unbounded_channel();
        let (ntx, mut nrx) = unbounded_channel();
        let ledger = UsageLedger::new();
        let started = Instant::now();
        let called = sidecar
            .client_chain(vec![
                first_settings(&server, &key),
                second_settings(&server, &key),
            ])
            .with_retry_policy(RetryPolicy {
                transient_retries: 1,
                ..fast_retries()
            })
            .with_retry_observer(ntx)
            .with_ledger(ledger.clone())
            .with_partial_observer(tx)
            .with_partial_interval(Duration::ZERO)
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        assert!(started.elapsed() < FAST, "{:?}", started.elapsed());
        assert_eq!(
            (called.provider.as_str(), called.attempts),
            (second_name, 3)
        );
        let mut notices = Vec::new();
        while let Ok(n) = nrx.try_recv() {
            notices.push(n.error);
        }
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(notices[0].contains("HTTP 503"), "{notices:?}");
        let falling = format!(
            "falling back from {first_name}/{} to {second_name}/{}",
            model_of(first_name),
            model_of(second_name)
        );
        assert!(
            notices[1].contains("HTTP 500") && notices[1].contains(&falling),
            "{notices:?}"
        );
        let partials = drain(&mut rx);
        assert!(partials.len() >= 2, "{partials:?}");
        assert!(partials.iter().all(|p| p.attempt == 3));
        // Failed requests are counted, at no cost; the answer's usage is exact.
        let spent = ledger.spent();
        assert_eq!(spent.requests, 3);
        assert_eq!(
            (spent.usage.input_tokens, spent.usage.output_tokens),
            (10, 20)
        );
        assert_eq!(server.requests().len(), 3);
    }
}

#[tokio::test]
async fn malformed_and_truncated_streams_are_parse_errors_and_asked_again() {
    // Cut off before the required `approved`.
    let truncated = "{\"reasons\": [\"the tests pass\", \"the rou";
    for (name, settings) in FORMATS {
        let server = start(Script::new(vec![
            Entry::text("Sure! It looks fine to me.").chunk_delay_ms(5),
            Entry::text(truncated).chunk_delay_ms(5),
            Entry::text(LONG_REVIEW).chunk_delay_ms(5),
            // The same truncated answer without streaming: `/call` judges it the same way.
            Entry::text(truncated),
        ]))
        .await
        .unwrap();
        let sidecar = sidecar().await;
        let key = fresh_key();
        let (tx, _rx) = unbounded_channel();
        let (ntx, mut nrx) = unbounded_channel();
        let started = Instant::now();
        let called = sidecar
            .client(settings(&server, &key))
            .with_retry_observer(ntx)
            .with_partial_observer(tx)
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        assert!(started.elapsed() < FAST, "{name}: {:?}", started.elapsed());
        assert_eq!(called.attempts, 3, "{name}");
        assert_eq!(called.value.reasons.len(), 3, "{name}");
        let mut streamed = Vec::new();
        for _ in 0..2 {
            let n = nrx.try_recv().unwrap();
            assert!(n.error.contains("did not parse"), "{name}: {n:?}");
            streamed.push(n.error);
        }
        let err = sidecar
            .client(settings(&server, &key))
            .with_retry_policy(RetryPolicy {
                parse_retries: 0,
                ..fast_retries()
            })
            .validate(&request(), "d", "t")
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), streamed[1], "{name}");
    }

    // Never parsing: the last parse error, with the model's output, as `/call` gives it.
    let server = start(Script::new(vec![
        Entry::text("no json here"),
        Entry::text("{\"steps\": \"several\"}"),
        // Parses for BAML but not for the Rust type: a negative step index.
        Entry::text(r#"{"summary": "s", "steps": [{"index": -1, "description": "d", "step_type": "TEST", "target_files": [], "dependencies": []}], "affected_files": []}"#),
        Entry::text(PLAN),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let (tx, _rx) = unbounded_channel();
    let err = sidecar
        .client(anthropic(&server, &fresh_key()))
        .with_partial_observer(tx)
        .plan(&request(), &analysis(), &context())
        .await
        .unwrap_err();
    match &err {
        LlmError::Parse {
            function,
            raw_output,
            ..
        } => {
            assert_eq!(*function, "PlanFeature");
            assert!(
                raw_output.as_deref().is_some_and(|r| r.contains("-1")),
                "{err:?}"
            );
        }
        other => panic!("expected Parse, got {other:?}"),
    }
    assert_eq!(server.requests().len(), 3);
    assert_eq!(server.unused_entries(), 1);

    // BAML's own validation failure keeps the raw output too.
    let server = start(Script::new(vec![Entry::text("I would rather not.")]))
        .await
        .unwrap();
    let (tx, _rx) = unbounded_channel();
    let err = sidecar
        .client(openai(&server, &fresh_key()))
        .with_retry_policy(RetryPolicy {
            parse_retries: 0,
            ..fast_retries()
        })
        .with_partial_observer(tx)
        .analyze(&request(), &context())
        .await
        .unwrap_err();
    match &err {
        LlmError::Parse { raw_output, .. } => {
            assert_eq!(
                raw_output.as_deref(),
                Some("I would rather not."),
                "{err:?}"
            )
        }
        other => panic!("expected Parse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_refusal_while_streaming_is_refused_not_retried() {
    let server = start(Script::new(vec![
        Entry::text(REVIEW)
            .chunk_delay_ms(5)
            .finish_reason("content_filter"),
        Entry::text(REVIEW)
            .chunk_delay_ms(5)
            .finish_reason("refusal"),
        Entry::text(REVIEW),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();
    for (name, settings) in FORMATS {
        let (tx, _rx) = unbounded_channel();
        let started = Instant::now();
        let err = sidecar
            .client(settings(&server, &key))
            .with_partial_observer(tx)
            .validate(&request(), "d", "t")
            .await
            .unwrap_err();
        assert!(started.elapsed() < FAST, "{name}: {:?}", started.elapsed());
        match &err {
            LlmError::Refused { message } => {
                let reason = if name == "openai" {
                    "content_filter"
                } else {
                    "refusal"
                };
                assert!(message.contains(reason), "{name}: {message}")
            }
            other => panic!("{name}: expected Refused, got {other:?}"),
        }
    }
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn the_partial_rate_limit_holds() {
    let entries = (0..4).map(|_| Entry::text(LONG_REVIEW).chunk_delay_ms(30));
    let server = start(Script::new(entries.collect())).await.unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();
    for (name, settings) in FORMATS {
        // Every change.
        let (tx, mut rx) = unbounded_channel();
        sidecar
            .client(settings(&server, &key))
            .with_partial_observer(tx)
            .with_partial_interval(Duration::ZERO)
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        let every = drain(&mut rx);
        assert!(every.len() >= 4, "{name}: {}", every.len());
        for pair in every.windows(2) {
            assert_ne!(pair[0].value, pair[1].value, "{name}: sent unchanged");
        }

        // At most one per 10 s: the first, then nothing until the call is over.
        let (tx, mut rx) = unbounded_channel();
        let started = Instant::now();
        sidecar
            .client(settings(&server, &key))
            .with_partial_observer(tx)
            .with_partial_interval(Duration::from_secs(10))
            .validate(&request(), "d", "t")
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(drain(&mut rx).len(), 1, "{name}");
        assert_quiet_after_return(&mut rx).await;
    }
}

#[tokio::test]
async fn budgets_hold_for_streams_too() {
    let server = start(Script::new(vec![Entry::text(ANALYSIS)]))
        .await
        .unwrap();
    let sidecar = sidecar().await;
    let (tx, mut rx) = unbounded_channel();
    let err = sidecar
        .client(openai(&server, &fresh_key()))
        .with_budget(crate::Budget::unlimited().limit_tokens(500, "constraints.max_llm_tokens"))
        .with_partial_observer(tx)
        .analyze(&request(), &context())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, LlmError::Budget { message } if message.contains("constraints.max_llm_tokens")),
        "{err:?}"
    );
    assert!(server.requests().is_empty());
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn a_stream_slower_than_the_call_timeout_times_out() {
    let server = start(Script::new(vec![
        Entry::text(LONG_REVIEW).chunk_delay_ms(300),
    ]))
    .await
    .unwrap();
    let mut config = crate::sidecar_tests::config();
    // The first text arrives after ~0.9 s, the whole answer after ~3 s.
    config.call_timeout = Duration::from_millis(1500);
    let sidecar = crate::Sidecar::start(config).await.unwrap();
    let (tx, mut rx) = unbounded_channel();
    let err = sidecar
        .client(anthropic(&server, &fresh_key()))
        .with_partial_observer(tx)
        .with_partial_interval(Duration::ZERO)
        .validate(&request(), "d", "t")
        .await
        .unwrap_err();
    assert!(matches!(err, LlmError::Timeout { .. }), "{err:?}");
    // It had started to answer.
    assert!(!drain(&mut rx).is_empty());
}

#[tokio::test]
async fn analysis_streams_too() {
    // Any function streams, not only the ones with lists: a plain class answer.
    let server = start(Script::new(vec![Entry::text(ANALYSIS).chunk_delay_ms(10)]))
        .await
        .unwrap();
    let sidecar = sidecar().await;
    let (tx, mut rx) = unbounded_channel();
    let called = sidecar
        .client(openai(&server, &fresh_key()))
        .with_partial_observer(tx)
        .with_partial_interval(Duration::ZERO)
        .analyze(&request(), &context())
        .await
        .unwrap();
    assert_eq!(called.value, analysis());
    let partials = drain(&mut rx);
    assert!(partials.len() >= 2, "{partials:?}");
    assert!(partials.iter().all(|p| p.function == "AnalyzeFeature"));
}

#[tokio::test]
async fn arguments_the_sidecar_rejects_fail_as_they_do_without_streaming() {
    let server = start(Script::default()).await.unwrap();
    let sidecar = sidecar().await;
    let client = sidecar.client(openai(&server, &fresh_key()));
    let args = || serde_json::json!({"diff": "d", "test_summary": "t"});
    let plain = client
        .call::<crate::Review>("ValidateChange", args())
        .await
        .unwrap_err();
    let (tx, mut rx) = unbounded_channel();
    let streamed = client
        .with_partial_observer(tx)
        .call::<crate::Review>("ValidateChange", args())
        .await
        .unwrap_err();
    assert!(matches!(streamed, LlmError::Sidecar { .. }), "{streamed:?}");
    assert!(
        streamed.to_string().contains("invalid_argument"),
        "{streamed}"
    );
    assert_eq!(streamed.to_string(), plain.to_string());
    assert!(server.requests().is_empty());
    assert!(drain(&mut rx).is_empty());
}
