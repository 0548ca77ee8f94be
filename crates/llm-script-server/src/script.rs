//! The script: an ordered list of canned provider answers, each optionally gated on a
//! substring of the request.

use serde::Deserialize;
use serde_json::Value;
use std::path::Path;

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("reading script {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing script: {0}")]
    Parse(#[from] serde_json::Error),
}

/// What an entry answers with.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A successful completion whose assistant content is `text`.
    Text {
        text: String,
        /// Overrides the provider's normal finish/stop reason (`stop` / `end_turn`), e.g.
        /// `content_filter` or `refusal` to exercise refusal handling.
        finish_reason: Option<String>,
    },
    /// An HTTP error; without `body` the provider's own error shape is generated.
    Error { status: u16, body: Option<Value> },
}

/// One scripted answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawEntry")]
pub struct Entry {
    /// Answers only a request whose raw body or decoded text contains this substring.
    pub when_contains: Option<String>,
    /// Waits this long before answering (timeouts, concurrency).
    pub delay_ms: Option<u64>,
    /// Streamed answers only: waits this long before each event after the first, so a
    /// streaming client sees the answer arrive piece by piece (partial output).
    pub chunk_delay_ms: Option<u64>,
    /// `[input, output]` tokens reported in the answer's usage; estimated from the text
    /// (≈4 characters a token) when not set.
    pub usage: Option<[u64; 2]>,
    pub reply: Reply,
}

// The file format is flat (`{"text": ..}` / `{"status": ..}`) because scripts are written by
// hand; the enum above is what the server works with.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    when_contains: Option<String>,
    delay_ms: Option<u64>,
    chunk_delay_ms: Option<u64>,
    usage: Option<[u64; 2]>,
    text: Option<String>,
    finish_reason: Option<String>,
    status: Option<u16>,
    body: Option<Value>,
}

impl TryFrom<RawEntry> for Entry {
    type Error = String;

    fn try_from(raw: RawEntry) -> Result<Self, Self::Error> {
        let reply = match (raw.text, raw.status) {
            (Some(text), None) => {
                if raw.body.is_some() {
                    return Err("`body` belongs to error entries (with `status`)".into());
                }
                Reply::Text {
                    text,
                    finish_reason: raw.finish_reason,
                }
            }
            (None, Some(status)) => {
                if !(400..=599).contains(&status) {
                    return Err(format!("`status` must be 400..=599, got {status}"));
                }
                if raw.finish_reason.is_some() {
                    return Err("`finish_reason` belongs to text entries".into());
                }
                Reply::Error {
                    status,
                    body: raw.body,
                }
            }
            (Some(_), Some(_)) => return Err("an entry has either `text` or `status`".into()),
            (None, None) => return Err("an entry needs `text` or `status`".into()),
        };
        Ok(Entry {
            when_contains: raw.when_contains,
            delay_ms: raw.delay_ms,
            chunk_delay_ms: raw.chunk_delay_ms,
            usage: raw.usage,
            reply,
        })
    }
}

impl Entry {
    pub fn text(text: impl Into<String>) -> Entry {
        Entry {
            when_contains: None,
            delay_ms: None,
            chunk_delay_ms: None,
            usage: None,
            reply: Reply::Text {
                text: text.into(),
                finish_reason: None,
            },
        }
    }

    /// An error in the provider's own error shape.
    pub fn error(status: u16) -> Entry {
        Entry {
            when_contains: None,
            delay_ms: None,
            chunk_delay_ms: None,
            usage: None,
            reply: Reply::Error { status, body: None },
        }
    }

    pub fn error_with_body(status: u16, body: Value) -> Entry {
        Entry {
            when_contains: None,
            delay_ms: None,
            chunk_delay_ms: None,
            usage: None,
            reply: Reply::Error {
                status,
                body: Some(body),
            },
        }
    }

    pub fn when_contains(mut self, needle: impl Into<String>) -> Entry {
        self.when_contains = Some(needle.into());
        self
    }

    pub fn delay_ms(mut self, ms: u64) -> Entry {
        self.delay_ms = Some(ms);
        self
    }

    /// Spaces the events of a streamed answer `ms` apart.
    pub fn chunk_delay_ms(mut self, ms: u64) -> Entry {
        self.chunk_delay_ms = Some(ms);
        self
    }

    /// Reports exactly these token counts in the answer's usage.
    pub fn usage(mut self, input: u64, output: u64) -> Entry {
        self.usage = Some([input, output]);
        self
    }

    /// Only meaningful on text entries; ignored on errors.
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Entry {
        if let Reply::Text { finish_reason, .. } = &mut self.reply {
            *finish_reason = Some(reason.into());
        }
        self
    }

    /// `raw` is the request body as sent; `decoded` its JSON strings unescaped, so a needle
    /// with quotes or newlines matches prompt text as the model would read it.
    pub(crate) fn fits(&self, raw: &str, decoded: &str) -> bool {
        match &self.when_contains {
            None => true,
            Some(needle) => raw.contains(needle.as_str()) || decoded.contains(needle.as_str()),
        }
    }
}

/// The ordered answers; each entry answers at most once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub entries: Vec<Entry>,
}

impl Script {
    pub fn new(entries: Vec<Entry>) -> Script {
        Script { entries }
    }

    /// Accepts either a JSON array of entries or `{"responses": [...]}`.
    pub fn from_json(text: &str) -> Result<Script, ScriptError> {
        let value: Value = serde_json::from_str(text)?;
        let list = match value {
            Value::Object(mut map) if map.contains_key("responses") => {
                map.remove("responses").unwrap_or(Value::Null)
            }
            other => other,
        };
        Ok(Script {
            entries: serde_json::from_value(list)?,
        })
    }

    pub fn from_file(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Script::from_json(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_file_shapes_and_all_kinds() {
        let list = r#"[
            {"when_contains": "GenerateEdits", "text": "hi", "delay_ms": 5, "chunk_delay_ms": 2},
            {"status": 429, "body": {"error": {"message": "slow down"}}},
            {"status": 529},
            {"text": "no", "finish_reason": "content_filter"}
        ]"#;
        let script = Script::from_json(list).unwrap();
        assert_eq!(script.entries.len(), 4);
        assert_eq!(
            script.entries[0],
            Entry::text("hi")
                .when_contains("GenerateEdits")
                .delay_ms(5)
                .chunk_delay_ms(2)
        );
        assert_eq!(
            script.entries[1],
            Entry::error_with_body(429, serde_json::json!({"error": {"message": "slow down"}}))
        );
        assert_eq!(script.entries[2], Entry::error(529));
        assert_eq!(
            script.entries[3],
            Entry::text("no").finish_reason("content_filter")
        );
        let object = format!(r#"{{"responses": {list}}}"#);
        assert_eq!(Script::from_json(&object).unwrap(), script);
    }

    #[test]
    fn rejects_malformed_entries_with_a_reason() {
        for (bad, why) in [
            (r#"[{}]"#, "needs `text` or `status`"),
            (
                r#"[{"text": "a", "status": 500}]"#,
                "either `text` or `status`",
            ),
            (r#"[{"status": 200}]"#, "400..=599"),
            (r#"[{"text": "a", "colour": 1}]"#, "unknown field"),
            (r#"[{"text": "a", "body": {}}]"#, "`body` belongs"),
        ] {
            let err = Script::from_json(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn matcher_sees_raw_and_decoded_text() {
        let e = Entry::text("x").when_contains("say \"hi\"\nnow");
        assert!(e.fits(r#"{"c":"say \"hi\"\nnow"}"#, "say \"hi\"\nnow"));
        assert!(!e.fits(r#"{"c":"say hi"}"#, "say hi"));
        assert!(Entry::text("x").fits("", ""));
    }
}
