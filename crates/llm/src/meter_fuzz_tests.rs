//! Property tests of what the metering proxy reads from a provider: streamed answers cut
//! into arbitrary chunks, garbage lines, extreme numbers in `usage`. Nothing panics (a
//! hostile or broken provider must not take the proxy down), usage figures saturate rather
//! than wrap, and how the bytes were chunked never changes what is read.

use super::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;

fn runner() -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &[14; 32]),
    )
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(u64::MAX)),
        Just(json!(u64::MAX - 1)),
        Just(json!(-1)),
        Just(json!(1.5e300)),
        Just(json!("12")),
        Just(Value::Null),
        (0u64..100_000).prop_map(|n| json!(n)),
    ]
}

/// One event line of either provider's stream, with numbers anywhere on the edge.
fn event() -> impl Strategy<Value = String> {
    (
        0..8usize,
        number(),
        number(),
        number(),
        number(),
        any::<String>(),
    )
        .prop_map(|(kind, a, b, c, d, text)| {
            let v = match kind {
                0 => json!({"type": "message_start", "message": {"id": "m", "model": "x",
                    "usage": {"input_tokens": a, "output_tokens": b,
                              "cache_read_input_tokens": c, "cache_creation_input_tokens": d}}}),
                1 => json!({"type": "content_block_delta", "delta": {"text": text}}),
                2 => json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                    "usage": {"output_tokens": a}}),
                3 => json!({"type": "error", "error": {"type": text}}),
                4 => json!({"id": "c", "model": "m", "choices": [{"delta": {"content": text},
                    "finish_reason": null}]}),
                5 => json!({"choices": [], "usage": {"prompt_tokens": a, "completion_tokens": b,
                    "prompt_tokens_details": {"cached_tokens": c}}}),
                6 => json!({"error": {"message": text}}),
                _ => return format!("{text}\n"),
            };
            format!("data: {v}\n\n")
        })
}

fn scan(chunks: &[&[u8]]) -> (Option<TokenUsage>, Option<Captured>) {
    let mut s = SseUsage {
        answer: Some(StreamedAnswer::default()),
        ..SseUsage::default()
    };
    for c in chunks {
        s.feed(c);
    }
    let (usage, answer) = s.finish();
    let captured = answer.map(|a| a.into_captured(&usage.unwrap_or_default()));
    (usage, captured)
}

#[test]
fn streams_are_read_the_same_however_they_are_cut_and_never_panic() {
    runner()
        .run(
            &(
                prop::collection::vec(event(), 0..12),
                prop::collection::vec(1usize..64, 1..8),
            ),
            |(events, cuts)| {
                let bytes = events.concat().into_bytes();
                let whole = scan(&[&bytes]);
                let mut chunks = Vec::new();
                let mut rest = &bytes[..];
                for n in cuts.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let (a, b) = rest.split_at((*n).min(rest.len()));
                    chunks.push(a);
                    rest = b;
                }
                let pieces = scan(&chunks);
                prop_assert_eq!(whole.0, pieces.0);
                prop_assert_eq!(
                    whole.1.map(|c| (c.status, c.body)),
                    pieces.1.map(|c| (c.status, c.body))
                );
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn usage_objects_never_panic_and_saturate() {
    runner()
        .run(
            &(number(), number(), number(), number(), any::<bool>()),
            |(a, b, c, d, openai)| {
                let u = if openai {
                    json!({"prompt_tokens": a, "completion_tokens": b,
                           "prompt_tokens_details": {"cached_tokens": c}})
                } else {
                    json!({"input_tokens": a, "output_tokens": b,
                           "cache_read_input_tokens": c, "cache_creation_input_tokens": d})
                };
                let usage = usage_of(&u).expect("either shape is recognised");
                prop_assert!(usage.input_tokens >= usage.cache_read_tokens || openai);
                let _ = usage.total();
                Ok(())
            },
        )
        .unwrap();
}
