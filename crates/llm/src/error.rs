//! What can go wrong when asking the model, sorted by what the caller should do about it.

use std::time::Duration;

/// The variables a user sets to configure the provider; named in every configuration error.
pub const CONFIG_HINT: &str = "set BAML_CLIENT_PROVIDER (openai, anthropic or openai-generic), \
BAML_CLIENT_MODEL and BAML_CLIENT_API_KEY; for an OpenAI-compatible endpoint set \
BAML_CLIENT_BASE_URL (the provider then defaults to openai-generic)";

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// No provider configured at all.
    #[error("no LLM provider is configured: {CONFIG_HINT}")]
    NotConfigured,

    /// Worth retrying later: rate limits, overload, provider 5xx, connection failures.
    #[error("transient provider failure{}: {message}", status_suffix(*status))]
    Transient {
        /// The provider's HTTP status, when it answered at all.
        status: Option<u16>,
        message: String,
    },

    /// The model answered, but its output did not parse into the function's return type.
    #[error("{function}: the model's output did not parse into the expected type: {message}")]
    Parse {
        function: &'static str,
        message: String,
        /// The model's raw answer (truncated), for diagnosis; never contains the API key.
        raw_output: Option<String>,
    },

    /// The provider declined to answer (content filter, refusal stop reason).
    #[error("the provider refused to answer: {message}")]
    Refused { message: String },

    /// The provider rejected the request and retrying will not help (bad key, unknown
    /// model, request too large).
    #[error("the provider rejected the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },

    /// The `baml-cli serve` sidecar is not running, not reachable, or answered in a way
    /// that means builder and `baml_src/` disagree.
    #[error("BAML sidecar: {message}")]
    Sidecar { message: String },

    #[error("the LLM call did not finish within {after:?}")]
    Timeout { after: Duration },

    /// A token or cost budget would be exceeded by the next request, so it was not made.
    #[error("the LLM budget is reached: {message}")]
    Budget { message: String },

    /// A setting is invalid; the message names the variable or field.
    #[error("LLM configuration: {0}")]
    Config(String),
}

fn status_suffix(status: Option<u16>) -> String {
    status.map(|s| format!(" (HTTP {s})")).unwrap_or_default()
}

impl LlmError {
    pub fn is_transient(&self) -> bool {
        matches!(self, LlmError::Transient { .. })
    }

    /// Replaces every occurrence of `secret` in the error's text.
    pub(crate) fn redacted(self, secret: Option<&str>) -> LlmError {
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return self;
        };
        let r = |s: String| redact(&s, secret);
        match self {
            LlmError::Transient { status, message } => LlmError::Transient {
                status,
                message: r(message),
            },
            LlmError::Parse {
                function,
                message,
                raw_output,
            } => LlmError::Parse {
                function,
                message: r(message),
                raw_output: raw_output.map(r),
            },
            LlmError::Refused { message } => LlmError::Refused {
                message: r(message),
            },
            LlmError::Rejected { status, message } => LlmError::Rejected {
                status,
                message: r(message),
            },
            LlmError::Sidecar { message } => LlmError::Sidecar {
                message: r(message),
            },
            LlmError::Config(message) => LlmError::Config(r(message)),
            LlmError::Budget { message } => LlmError::Budget {
                message: r(message),
            },
            other @ (LlmError::NotConfigured | LlmError::Timeout { .. }) => other,
        }
    }
}

pub(crate) fn redact(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    text.replace(secret, "<redacted>")
}

/// Keeps error text readable and bounded: BAML appends Rust stack backtraces and may echo
/// whole prompts.
pub(crate) fn tidy(message: &str, max_chars: usize) -> String {
    let cut = message
        .find("\n\nStack backtrace:")
        .or_else(|| message.find("\nStack backtrace:"))
        .unwrap_or(message.len());
    let message = message[..cut].trim();
    if message.chars().count() <= max_chars {
        return message.to_owned();
    }
    let mut out: String = message.chars().take(max_chars).collect();
    out.push_str(" …(truncated)");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_covers_every_text_field() {
        let key = "sk-live-abcdef123456";
        let errors = [
            LlmError::Transient {
                status: Some(429),
                message: format!("key {key} limited"),
            },
            LlmError::Parse {
                function: "AnalyzeFeature",
                message: format!("bad {key}"),
                raw_output: Some(format!("echo {key}")),
            },
            LlmError::Refused {
                message: key.into(),
            },
            LlmError::Rejected {
                status: 401,
                message: format!("invalid key {key}"),
            },
            LlmError::Sidecar {
                message: key.into(),
            },
            LlmError::Config(key.into()),
        ];
        for e in errors {
            let e = e.redacted(Some(key));
            assert!(!format!("{e} {e:?}").contains(key), "{e:?}");
            assert!(format!("{e:?}").contains("<redacted>"), "{e:?}");
        }
    }

    #[test]
    fn tidy_drops_backtraces_and_bounds_length() {
        let m = "boom\n\nStack backtrace:\n   0: anyhow";
        assert_eq!(tidy(m, 100), "boom");
        let long = "é".repeat(50);
        let t = tidy(&long, 10);
        assert!(
            t.starts_with(&"é".repeat(10)) && t.ends_with("(truncated)"),
            "{t}"
        );
    }

    #[test]
    fn not_configured_names_the_variables() {
        let m = LlmError::NotConfigured.to_string();
        for var in [
            "BAML_CLIENT_PROVIDER",
            "BAML_CLIENT_MODEL",
            "BAML_CLIENT_API_KEY",
            "BAML_CLIENT_BASE_URL",
        ] {
            assert!(m.contains(var), "{m}");
        }
    }
}
