//! The server-sent event scanner: finds the usage in a streamed answer and reassembles it.

use super::{Captured, MAX_CAPTURED_TEXT, TokenUsage, plain_captured, usage_of};
use axum::body::Bytes;
use axum::http::StatusCode;
use serde_json::Value;

/// Finds the usage in a server-sent event stream as it passes, and assembles the answer
/// when asked to.
#[derive(Default)]
pub(super) struct SseUsage {
    pub(super) line: Vec<u8>,
    pub(super) usage: Option<TokenUsage>,
    pub(super) answer: Option<StreamedAnswer>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    OpenAi,
    Anthropic,
}

/// A streamed answer put back together: what the same request without `stream` would have
/// returned, as far as BAML reads it (text, finish reason, usage).
#[derive(Debug, Default)]
pub(super) struct StreamedAnswer {
    shape: Option<Shape>,
    id: Option<String>,
    model: Option<String>,
    text: String,
    finish_reason: Option<String>,
    /// An error event inside the stream (status it stands for, its data).
    error: Option<(u16, Value)>,
    too_long: bool,
}

impl StreamedAnswer {
    fn push_text(&mut self, piece: &str) {
        if self.text.len() + piece.len() > MAX_CAPTURED_TEXT {
            self.too_long = true;
        } else {
            self.text.push_str(piece);
        }
    }

    fn keep(slot: &mut Option<String>, value: &Value) {
        if let Some(v) = value.as_str()
            && slot.is_none()
        {
            *slot = Some(v.to_owned());
        }
    }

    pub(super) fn feed(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("message_start") => {
                self.shape = Some(Shape::Anthropic);
                Self::keep(&mut self.id, &v["message"]["id"]);
                Self::keep(&mut self.model, &v["message"]["model"]);
            }
            Some("content_block_delta") => {
                if let Some(text) = v["delta"]["text"].as_str() {
                    self.push_text(text);
                }
            }
            Some("message_delta") => {
                if let Some(reason) = v["delta"]["stop_reason"].as_str() {
                    self.finish_reason = Some(reason.to_owned());
                }
            }
            // Anthropic reports failures that happen mid-answer (overload) as an event.
            Some("error") => {
                let status = match v["error"]["type"].as_str() {
                    Some("overloaded_error") => 529,
                    Some("rate_limit_error") => 429,
                    _ => 500,
                };
                self.error = Some((status, v.clone()));
            }
            _ if v.get("choices").is_some() => {
                self.shape = Some(Shape::OpenAi);
                Self::keep(&mut self.id, &v["id"]);
                Self::keep(&mut self.model, &v["model"]);
                let choice = &v["choices"][0];
                if let Some(text) = choice["delta"]["content"].as_str() {
                    self.push_text(text);
                }
                if let Some(reason) = choice["finish_reason"].as_str() {
                    self.finish_reason = Some(reason.to_owned());
                }
            }
            // OpenAI-compatible servers send `{"error": {...}}` when a stream fails.
            _ if v.get("error").is_some() => self.error = Some((500, v.clone())),
            _ => {}
        }
    }

    /// The non-streamed answer in the provider's own shape.
    pub(super) fn into_captured(self, usage: &TokenUsage) -> Captured {
        if self.too_long {
            return plain_captured(
                StatusCode::BAD_GATEWAY,
                &format!("the provider's answer exceeded {MAX_CAPTURED_TEXT} bytes"),
            );
        }
        if let Some((status, body)) = self.error {
            return Captured {
                status,
                body: Bytes::from(body.to_string()),
            };
        }
        let id = self.id.unwrap_or_else(|| "builder-replay".into());
        let model = self.model.unwrap_or_default();
        let body = match self.shape {
            Some(Shape::OpenAi) => serde_json::json!({
                "id": id,
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": self.text},
                    "finish_reason": self.finish_reason,
                }],
                "usage": {
                    "prompt_tokens": usage.input_tokens,
                    "completion_tokens": usage.output_tokens,
                    "total_tokens": usage.total(),
                },
            }),
            Some(Shape::Anthropic) => serde_json::json!({
                "id": id,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [{"type": "text", "text": self.text}],
                "stop_reason": self.finish_reason,
                "stop_sequence": null,
                "usage": {
                    "input_tokens": usage
                        .input_tokens
                        .saturating_sub(usage.cache_read_tokens.saturating_add(usage.cache_write_tokens)),
                    "output_tokens": usage.output_tokens,
                },
            }),
            None => {
                return plain_captured(
                    StatusCode::BAD_GATEWAY,
                    "the provider's stream held no answer",
                );
            }
        };
        Captured {
            status: 200,
            body: Bytes::from(body.to_string()),
        }
    }
}

impl SseUsage {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            } else if self.line.len() < 1024 * 1024 {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        if let Some(answer) = &mut self.answer {
            answer.feed(&v);
        }
        match v["type"].as_str() {
            // Anthropic: input (and cache) figures first, cumulative output at the end.
            Some("message_start") => {
                if let Some(u) = usage_of(&v["message"]["usage"]) {
                    self.usage = Some(u);
                }
            }
            Some("message_delta") => {
                if let Some(out) = v["usage"]["output_tokens"].as_u64() {
                    let mut u = self.usage.unwrap_or_default();
                    u.output_tokens = out;
                    self.usage = Some(u);
                }
            }
            // OpenAI: a final chunk carries the usage when `stream_options.include_usage`.
            _ => {
                if let Some(u) = usage_of(&v["usage"]) {
                    self.usage = Some(u);
                }
            }
        }
    }

    /// The usage found, and the assembled answer when one was asked for.
    pub(super) fn finish(mut self) -> (Option<TokenUsage>, Option<StreamedAnswer>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        (self.usage, self.answer)
    }

    #[cfg(test)]
    pub(super) fn usage(self) -> Option<TokenUsage> {
        self.finish().0
    }
}
