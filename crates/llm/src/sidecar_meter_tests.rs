//! End to end through the sidecar: usage and cost metering, provider fallbacks and budgets.

use crate::sidecar_tests::{
    ANALYSIS, REVIEW, anthropic, context, fast_retries, fresh_key, openai, prices, request, sidecar,
};
use crate::{LlmError, RetryPolicy};
use llm_script_server::{Entry, Script, fingerprint, start};

#[tokio::test]
async fn usage_and_cost_are_metered_in_both_wire_formats() {
    let server = start(Script::new(vec![
        // A malformed answer costs tokens too: both requests are counted.
        Entry::text("no json here").usage(700, 30),
        Entry::text(ANALYSIS).usage(1000, 200),
        Entry::text(ANALYSIS).usage(400, 100),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();

    let ledger = crate::UsageLedger::new();
    let called = sidecar
        .client(openai(&server, &key))
        .with_retry_policy(fast_retries())
        .with_prices(prices())
        .with_ledger(ledger.clone())
        .analyze(&request(), &context())
        .await
        .unwrap();
    assert_eq!(called.attempts, 2);
    let spent = ledger.spent();
    assert_eq!(spent.requests, 2);
    assert_eq!(
        (spent.usage.input_tokens, spent.usage.output_tokens),
        (1700, 230)
    );
    assert!(!spent.usage.estimated);
    let want = (1700.0 * 2.0 + 230.0 * 10.0) / 1e6;
    assert!((spent.cost_usd.unwrap() - want).abs() < 1e-12, "{spent:?}");

    let ledger = crate::UsageLedger::new();
    sidecar
        .client(anthropic(&server, &key))
        .with_prices(prices())
        .with_ledger(ledger.clone())
        .analyze(&request(), &context())
        .await
        .unwrap();
    let spent = ledger.spent();
    assert_eq!(
        (spent.usage.input_tokens, spent.usage.output_tokens),
        (400, 100)
    );
    let want = (400.0 * 3.0 + 100.0 * 15.0) / 1e6;
    assert!((spent.cost_usd.unwrap() - want).abs() < 1e-12, "{spent:?}");
    // The key went to the provider through the meter, unchanged.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.headers.values().any(|v| v.contains(&fingerprint(&key))))
    );

    // A model without a price: tokens counted, cost unknown.
    let server = start(Script::new(vec![Entry::text(ANALYSIS).usage(10, 5)]))
        .await
        .unwrap();
    let ledger = crate::UsageLedger::new();
    let mut s = openai(&server, &key);
    s.model = "unpriced".into();
    sidecar
        .client(s)
        .with_prices(prices())
        .with_ledger(ledger.clone())
        .analyze(&request(), &context())
        .await
        .unwrap();
    assert_eq!(ledger.spent().usage.total(), 15);
    assert_eq!(ledger.spent().cost_usd, None);
}

#[tokio::test]
async fn a_failing_provider_falls_back_to_the_next() {
    let server = start(Script::new(vec![
        Entry::error(503).when_contains("gpt-scripted"),
        Entry::error(500).when_contains("gpt-scripted"),
        Entry::text(REVIEW).when_contains("claude-scripted"),
    ]))
    .await
    .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let called = sidecar
        .client_chain(vec![openai(&server, &key), anthropic(&server, &key)])
        .with_retry_policy(RetryPolicy {
            transient_retries: 1,
            ..fast_retries()
        })
        .with_retry_observer(tx)
        .validate(&request(), "d", "t")
        .await
        .unwrap();
    assert!(called.value.approved);
    assert_eq!(
        (called.provider.as_str(), called.model.as_str()),
        ("anthropic", "claude-scripted")
    );
    assert_eq!(called.attempts, 3);
    let paths: Vec<_> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages"
        ]
    );
    let mut notices = Vec::new();
    while let Ok(n) = rx.try_recv() {
        notices.push(n.error);
    }
    assert_eq!(notices.len(), 2, "{notices:?}");
    assert!(
        notices[1].contains("falling back from openai/gpt-scripted to anthropic/claude-scripted"),
        "{notices:?}"
    );

    // Without a fallback the same failures end the call.
    let server = start(Script::new(vec![Entry::error(503), Entry::error(503)]))
        .await
        .unwrap();
    let err = sidecar
        .client(openai(&server, &key))
        .with_retry_policy(RetryPolicy {
            transient_retries: 1,
            ..fast_retries()
        })
        .validate(&request(), "d", "t")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Transient {
                status: Some(503),
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn budgets_hold_before_any_request_leaves() {
    let server = start(Script::new(vec![Entry::text(REVIEW).usage(50, 100)]))
        .await
        .unwrap();
    let sidecar = sidecar().await;
    let key = fresh_key();

    // A token budget smaller than the request itself: refused, nothing sent.
    let err = sidecar
        .client(openai(&server, &key))
        .with_budget(crate::Budget::unlimited().limit_tokens(500, "constraints.max_llm_tokens"))
        .validate(&request(), "d", "t")
        .await
        .unwrap_err();
    match &err {
        LlmError::Budget { message } => {
            assert!(message.contains("constraints.max_llm_tokens"), "{message}")
        }
        e => panic!("{e:?}"),
    }
    assert!(server.requests().is_empty());

    // A cost budget lowers the answer's max_tokens to what it can pay for: $0.001 at
    // $10 per million output tokens (input free here) is 100 tokens.
    let free_input = crate::PriceTable::new([(
        "gpt-scripted".to_string(),
        crate::Price {
            input: 0.0,
            output: 10.0,
            cache_read: None,
            cache_write: None,
        },
    )])
    .unwrap();
    let budget = crate::Budget::unlimited().limit_cost(0.001, "llm.max_cost_usd");
    let client = sidecar
        .client(openai(&server, &key))
        .with_prices(free_input)
        .with_budget(budget.clone());
    client.validate(&request(), "d", "t").await.unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].body["max_completion_tokens"], 100);
    // The answer used all of it: the next call is refused before it is made.
    let err = client.validate(&request(), "d", "t").await.unwrap_err();
    assert!(
        matches!(&err, LlmError::Budget { message } if message.contains("llm.max_cost_usd")),
        "{err:?}"
    );
    assert_eq!(server.requests().len(), 1);
}
