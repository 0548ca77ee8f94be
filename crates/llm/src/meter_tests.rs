//! Unit tests of the metering proxy: usage shapes, stream scanning and assembly, budgets.

use super::*;
use serde_json::json;

#[test]
fn reads_both_usage_shapes() {
    let openai = json!({"prompt_tokens": 100, "completion_tokens": 20,
        "prompt_tokens_details": {"cached_tokens": 60}});
    assert_eq!(
        usage_of(&openai),
        Some(TokenUsage {
            input_tokens: 100,
            output_tokens: 20,
            cache_read_tokens: 60,
            cache_write_tokens: 0,
            estimated: false
        })
    );
    let anthropic = json!({"input_tokens": 10, "output_tokens": 5,
        "cache_read_input_tokens": 30, "cache_creation_input_tokens": 7});
    let u = usage_of(&anthropic).unwrap();
    assert_eq!(
        (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens),
        (47, 30, 7)
    );
    assert_eq!(usage_of(&json!(null)), None);
    assert_eq!(usage_of(&json!({"other": 1})), None);
}

#[test]
fn finds_usage_in_streams_split_anywhere() {
    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
    let openai = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
    for (text, want) in [(anthropic, (12, 9)), (openai, (8, 3))] {
        for split in [1, 3, 7, 64] {
            let mut s = SseUsage::default();
            for chunk in text.as_bytes().chunks(split) {
                s.feed(chunk);
            }
            let u = s.usage().unwrap();
            assert_eq!((u.input_tokens, u.output_tokens), want, "split {split}");
        }
    }
    let mut s = SseUsage::default();
    s.feed(b"data: {not json\n\ndata: \xff\xfe\n");
    assert_eq!(s.usage(), None);
}

fn assembled(text: &str) -> (Option<TokenUsage>, Captured) {
    let mut s = SseUsage {
        answer: Some(StreamedAnswer::default()),
        ..SseUsage::default()
    };
    for chunk in text.as_bytes().chunks(5) {
        s.feed(chunk);
    }
    let (usage, answer) = s.finish();
    let captured = answer.unwrap().into_captured(&usage.unwrap_or_default());
    (usage, captured)
}

fn body(c: &Captured) -> Value {
    serde_json::from_slice(&c.body).unwrap()
}

#[test]
fn streams_are_assembled_into_the_unstreamed_answer() {
    let openai = "data: {\"id\":\"c1\",\"model\":\"gpt\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}],\"usage\":null}\n\n\
        data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"{\\\"a\\\": \"},\"finish_reason\":null}]}\n\n\
        data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"1}\"},\"finish_reason\":null}]}\n\n\
        data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\n\
        data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
    let (usage, c) = assembled(openai);
    assert_eq!(usage.map(|u| u.total()), Some(11));
    assert_eq!(c.status, 200);
    let b = body(&c);
    assert_eq!(b["object"], "chat.completion");
    assert_eq!(
        (b["id"].as_str(), b["model"].as_str()),
        (Some("c1"), Some("gpt"))
    );
    assert_eq!(b["choices"][0]["message"]["content"], "{\"a\": 1}");
    assert_eq!(b["choices"][0]["finish_reason"], "content_filter");
    assert_eq!(b["usage"]["completion_tokens"], 3);

    let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
        event: ping\ndata: {\"type\":\"ping\"}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hé\"}}\n\n\
        event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\n\n\
        event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"refusal\"},\"usage\":{\"output_tokens\":9}}\n\n\
        event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    let (_, c) = assembled(anthropic);
    let b = body(&c);
    assert_eq!((c.status, b["type"].as_str()), (200, Some("message")));
    assert_eq!(
        b["content"],
        serde_json::json!([{"type": "text", "text": "héllo"}])
    );
    assert_eq!(b["stop_reason"], "refusal");
    assert_eq!(
        (
            b["usage"]["input_tokens"].as_u64(),
            b["usage"]["output_tokens"].as_u64()
        ),
        (Some(12), Some(9))
    );

    // An error in the middle of the answer replays as the error it stands for.
    let overloaded = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":1}}}\n\n\
        event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n";
    let (_, c) = assembled(overloaded);
    assert_eq!(c.status, 529);
    assert_eq!(body(&c)["error"]["message"], "Overloaded");

    // Nothing recognisable: a gateway error, as for an answer that broke off.
    let (_, c) = assembled("data: [DONE]\n\n");
    assert_eq!(c.status, 502);
    assert!(
        body(&c)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no answer")
    );
}

#[test]
fn an_answer_too_long_to_keep_is_a_gateway_error() {
    let mut a = StreamedAnswer::default();
    a.feed(
        &serde_json::json!({"choices": [{"delta": {"content": "x".repeat(MAX_CAPTURED_TEXT)}}]}),
    );
    a.feed(&serde_json::json!({"choices": [{"delta": {"content": "y"}}]}));
    let c = a.into_captured(&TokenUsage::default());
    assert_eq!(c.status, 502);
    assert!(
        body(&c)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("exceeded")
    );
}

#[test]
fn openai_streams_are_asked_for_their_usage() {
    let ask = |tail: &str, v: Value| {
        let Value::Object(mut m) = v else { panic!() };
        let changed = ask_for_stream_usage(tail, &mut m);
        (changed, Value::Object(m))
    };
    let (changed, v) = ask("chat/completions", json!({"stream": true, "model": "m"}));
    assert!(changed);
    assert_eq!(v["stream_options"], json!({"include_usage": true}));
    // Other options are kept; an explicit `false` is overridden.
    let (changed, v) = ask(
        "v1/chat/completions",
        json!({"stream": true, "stream_options": {"include_usage": false, "x": 1}}),
    );
    assert!(changed);
    assert_eq!(v["stream_options"], json!({"include_usage": true, "x": 1}));
    for (tail, body) in [
        (
            "chat/completions",
            json!({"stream": true, "stream_options": {"include_usage": true}}),
        ),
        ("chat/completions", json!({"stream": false})),
        ("chat/completions", json!({"model": "m"})),
        ("v1/messages", json!({"stream": true})),
        (
            "chat/completions",
            json!({"stream": true, "stream_options": "odd"}),
        ),
    ] {
        let (changed, after) = ask(tail, body.clone());
        assert!(!changed, "{tail} {body}");
        assert_eq!(after, body);
    }
}

#[test]
fn budget_bounds_each_request_by_its_worst_case() {
    let b = Budget::unlimited().limit_tokens(1000, "constraints.max_llm_tokens");
    // 400 request bytes leave room for 600 output tokens.
    assert_eq!(b.allowance(400, 4096, None), Ok(600));
    assert_eq!(b.allowance(400, 100, None), Ok(100));
    let e = b.allowance(990, 4096, None).unwrap_err();
    assert!(e.contains("constraints.max_llm_tokens"), "{e}");
    assert_eq!(b.take_refusal().as_deref(), Some(e.as_str()));
    b.charge(
        &TokenUsage {
            input_tokens: 500,
            output_tokens: 100,
            ..Default::default()
        },
        None,
    );
    assert_eq!(b.allowance(100, 4096, None), Ok(300));
    // The tighter of two limits wins.
    let b = b.limit_tokens(5000, "looser");
    assert_eq!(b.allowance(100, 4096, None), Ok(300));
}

#[test]
fn cost_budget_needs_a_price_and_lowers_max_tokens() {
    let price = Price {
        input: 1.0,
        output: 10.0,
        cache_read: None,
        cache_write: None,
    };
    let b = Budget::unlimited().limit_cost(0.01, "llm.max_cost_usd");
    // $0.01 - 1000 bytes · $1/M = $0.009 → 900 output tokens at $10/M.
    assert_eq!(b.allowance(1000, 4096, Some(price)), Ok(900));
    assert!(b.allowance(1000, 4096, None).unwrap_err().contains("price"));
    assert!(b.precheck(None).is_err());
    assert!(b.precheck(Some(price)).is_ok());
    b.charge(&TokenUsage::default(), Some(0.0099));
    assert!(b.precheck(Some(price)).is_err());
}

#[test]
fn estimates_are_upper_bounds() {
    let e = estimate(1000, 5000, Some(256));
    assert_eq!(
        (e.input_tokens, e.output_tokens, e.estimated),
        (1000, 256, true)
    );
    assert_eq!(estimate(10, 20, None).output_tokens, 20);
}
