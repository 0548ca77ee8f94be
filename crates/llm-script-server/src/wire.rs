//! The two providers' wire formats, as their public APIs document them: response bodies,
//! SSE event sequences and error bodies.

use serde_json::{Value, json};

/// Which API a request came in on; decides every shape of the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenAi,
    Anthropic,
}

pub struct Completion<'a> {
    pub id: &'a str,
    pub created: u64,
    pub model: &'a str,
    pub text: &'a str,
    pub finish_reason: Option<&'a str>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A rough token estimate (≈4 characters per token) so usage numbers are plausible and
/// grow with the text; nothing depends on their exact value.
pub fn estimate_tokens(text: &str) -> u64 {
    let chars = text.chars().count() as u64;
    chars.div_ceil(4).max(1)
}

/// Splits on char boundaries into small pieces so streaming clients see several deltas.
pub fn chunk_text(text: &str, piece_chars: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(piece_chars.max(1))
        .map(|c| c.iter().collect())
        .collect()
}

pub fn openai_completion(c: &Completion) -> Value {
    json!({
        "id": c.id,
        "object": "chat.completion",
        "created": c.created,
        "model": c.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": c.text, "refusal": null},
            "logprobs": null,
            "finish_reason": c.finish_reason.unwrap_or("stop"),
        }],
        "usage": {
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens,
            "total_tokens": c.prompt_tokens + c.completion_tokens,
        },
        "system_fingerprint": "fp_scripted",
    })
}

fn openai_chunk(c: &Completion, delta: Value, finish: Option<&str>, usage: Option<Value>) -> Value {
    let mut chunk = json!({
        "id": c.id,
        "object": "chat.completion.chunk",
        "created": c.created,
        "model": c.model,
        "system_fingerprint": "fp_scripted",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if let Some(usage) = usage {
        chunk["usage"] = usage;
    }
    chunk
}

/// `data: {chunk}` frames: a role chunk, content deltas, a final chunk carrying
/// `finish_reason`, then (only when the client asked with `stream_options.include_usage`,
/// as with OpenAI itself) a usage-only chunk with empty `choices`, and `data: [DONE]`.
/// With `include_usage` every other chunk says `"usage": null`; without it no chunk has
/// usage at all, which is what makes metering a stream depend on asking for it.
pub fn openai_stream(c: &Completion, include_usage: bool) -> Vec<String> {
    let usage = json!({
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "total_tokens": c.prompt_tokens + c.completion_tokens,
    });
    let null_usage = include_usage.then_some(Value::Null);
    let mut chunks = vec![openai_chunk(
        c,
        json!({"role": "assistant", "content": ""}),
        None,
        null_usage.clone(),
    )];
    for piece in chunk_text(c.text, 16) {
        chunks.push(openai_chunk(
            c,
            json!({"content": piece}),
            None,
            null_usage.clone(),
        ));
    }
    chunks.push(openai_chunk(
        c,
        json!({}),
        Some(c.finish_reason.unwrap_or("stop")),
        null_usage,
    ));
    if include_usage {
        let mut last = openai_chunk(c, json!({}), None, Some(usage));
        last["choices"] = json!([]);
        chunks.push(last);
    }
    let mut frames: Vec<String> = chunks
        .iter()
        .map(|chunk| format!("data: {chunk}\n\n"))
        .collect();
    frames.push("data: [DONE]\n\n".to_owned());
    frames
}

pub fn anthropic_message(c: &Completion) -> Value {
    json!({
        "id": c.id,
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": c.text}],
        "model": c.model,
        "stop_reason": c.finish_reason.unwrap_or("end_turn"),
        "stop_sequence": null,
        "usage": {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens},
    })
}

fn sse_event(name: &str, data: &Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

/// message_start, content_block_start, ping, content_block_delta (text_delta)…,
/// content_block_stop, message_delta (stop_reason, usage), message_stop.
pub fn anthropic_stream(c: &Completion) -> Vec<String> {
    let mut frames = vec![
        sse_event(
            "message_start",
            &json!({
                "type": "message_start",
                "message": {
                    "id": c.id,
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": c.model,
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": {"input_tokens": c.prompt_tokens, "output_tokens": 1},
                },
            }),
        ),
        sse_event(
            "content_block_start",
            &json!({
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            }),
        ),
        sse_event("ping", &json!({"type": "ping"})),
    ];
    for piece in chunk_text(c.text, 16) {
        frames.push(sse_event(
            "content_block_delta",
            &json!({
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }),
        ));
    }
    frames.push(sse_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    frames.push(sse_event(
        "message_delta",
        &json!({
            "type": "message_delta",
            "delta": {"stop_reason": c.finish_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": {"output_tokens": c.completion_tokens},
        }),
    ));
    frames.push(sse_event("message_stop", &json!({"type": "message_stop"})));
    frames
}

/// The provider's documented error body for `status`.
pub fn error_body(provider: Provider, status: u16, message: &str) -> Value {
    match provider {
        Provider::OpenAi => {
            let (kind, code) = match status {
                401 => ("invalid_request_error", Some("invalid_api_key")),
                403 => (
                    "invalid_request_error",
                    Some("unsupported_country_region_territory"),
                ),
                404 => ("invalid_request_error", Some("model_not_found")),
                429 => ("requests", Some("rate_limit_exceeded")),
                400..=499 => ("invalid_request_error", None),
                _ => ("server_error", None),
            };
            json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        }
        Provider::Anthropic => {
            let kind = match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            };
            json!({"type": "error", "error": {"type": kind, "message": message}})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>() -> Completion<'a> {
        Completion {
            id: "id1",
            created: 7,
            model: "m",
            text: "héllo wörld, this is longer than sixteen",
            finish_reason: None,
            prompt_tokens: 3,
            completion_tokens: 4,
        }
    }

    fn data_of(frame: &str) -> Value {
        let line = frame
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap();
        serde_json::from_str(line).unwrap()
    }

    #[test]
    fn openai_stream_reassembles_and_ends_with_done() {
        let frames = openai_stream(&sample(), true);
        assert_eq!(frames.last().unwrap(), "data: [DONE]\n\n");
        let chunks: Vec<Value> = frames[..frames.len() - 1]
            .iter()
            .map(|f| data_of(f))
            .collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, sample().text);
        let finish = &chunks[chunks.len() - 2];
        assert_eq!(finish["choices"][0]["finish_reason"], "stop");
        assert_eq!(finish["usage"], Value::Null);
        assert_eq!(chunks.last().unwrap()["choices"], json!([]));
        assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 7);

        // Not asked for: no chunk carries usage.
        let frames = openai_stream(&sample(), false);
        assert!(frames.iter().all(|f| !f.contains("usage")), "{frames:?}");
        assert!(frames[frames.len() - 2].contains("\"finish_reason\":\"stop\""));
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
        );
    }

    #[test]
    fn anthropic_stream_has_the_documented_event_order() {
        let frames = anthropic_stream(&sample());
        let names: Vec<&str> = frames
            .iter()
            .map(|f| f.lines().next().unwrap().trim_start_matches("event: "))
            .collect();
        assert_eq!(names[..3], ["message_start", "content_block_start", "ping"]);
        assert_eq!(
            names[names.len() - 3..],
            ["content_block_stop", "message_delta", "message_stop"]
        );
        let text: String = frames
            .iter()
            .map(|f| data_of(f))
            .filter(|d| d["type"] == "content_block_delta")
            .map(|d| {
                assert_eq!(d["delta"]["type"], "text_delta");
                d["delta"]["text"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(text, sample().text);
    }

    #[test]
    fn error_shapes_follow_each_provider() {
        assert_eq!(
            error_body(Provider::Anthropic, 529, "busy"),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})
        );
        assert_eq!(
            error_body(Provider::OpenAi, 429, "slow")["error"]["code"],
            "rate_limit_exceeded"
        );
        assert_eq!(
            error_body(Provider::OpenAi, 500, "x")["error"]["type"],
            "server_error"
        );
    }

    #[test]
    fn token_estimate_is_never_zero() {
        assert_eq!(estimate_tokens(""), 1);
        assert_eq!(estimate_tokens("abcdefgh"), 2);
    }
}
