//! Provider settings from the environment, and their translation into BAML's per-request
//! `client_registry`.

use crate::error::LlmError;
use serde_json::{Map, Value, json};

pub const ENV_PROVIDER: &str = "BAML_CLIENT_PROVIDER";
pub const ENV_MODEL: &str = "BAML_CLIENT_MODEL";
pub const ENV_API_KEY: &str = "BAML_CLIENT_API_KEY";
pub const ENV_BASE_URL: &str = "BAML_CLIENT_BASE_URL";
pub const ENV_MAX_TOKENS: &str = "BAML_MAX_TOKENS";
pub const ENV_TEMPERATURE: &str = "BAML_TEMPERATURE";

const PROVIDERS: [&str; 3] = ["openai", "anthropic", "openai-generic"];
pub(crate) const DEFAULT_MAX_TOKENS: u32 = 4096;
pub(crate) const DEFAULT_TEMPERATURE: f32 = 0.2;

/// Which model answers and how. Passed to the sidecar with every call, never stored in it.
#[derive(Clone, PartialEq)]
pub struct LlmSettings {
    /// `openai`, `anthropic` or `openai-generic`.
    pub provider: String,
    pub model: String,
    pub api_key: Option<String>,
    /// Overrides the provider's endpoint (OpenAI-style URLs end in `/v1`).
    pub base_url: Option<String>,
    pub max_tokens: u32,
    pub temperature: f32,
}

impl std::fmt::Debug for LlmSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmSettings")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("base_url", &self.base_url)
            .field("max_tokens", &self.max_tokens)
            .field("temperature", &self.temperature)
            .finish()
    }
}

impl LlmSettings {
    /// Reads `BAML_CLIENT_*`, `BAML_MAX_TOKENS` and `BAML_TEMPERATURE`. `Ok(None)` when
    /// neither a provider, a model nor a base URL is set; a partial or invalid setting is an
    /// error naming the variable.
    pub fn from_env() -> Result<Option<LlmSettings>, LlmError> {
        let mut values = Vec::new();
        for name in [
            ENV_PROVIDER,
            ENV_MODEL,
            ENV_API_KEY,
            ENV_BASE_URL,
            ENV_MAX_TOKENS,
            ENV_TEMPERATURE,
        ] {
            match std::env::var(name) {
                Ok(v) => values.push((name, v)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(LlmError::Config(format!("{name} is not valid UTF-8")));
                }
            }
        }
        LlmSettings::from_lookup(|name| {
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.clone())
        })
    }

    /// Like [`LlmSettings::from_env`], but reading variables through `get`, so tests and
    /// config files need not touch the process environment.
    pub fn from_lookup(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<LlmSettings>, LlmError> {
        // An empty variable is how shells and compose files say "unset".
        let get = |name: &str| {
            get(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let base_url = match get(ENV_BASE_URL) {
            None => None,
            Some(url) => Some(validate_base_url(&url)?),
        };
        let provider =
            get(ENV_PROVIDER).or_else(|| base_url.as_ref().map(|_| "openai-generic".to_owned()));
        let model = get(ENV_MODEL);
        let (provider, model) = match (provider, model) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(LlmError::Config(format!(
                    "{ENV_MODEL} must be set when {ENV_PROVIDER} or {ENV_BASE_URL} is"
                )));
            }
            (None, Some(_)) => {
                return Err(LlmError::Config(format!(
                    "{ENV_PROVIDER} must be set when {ENV_MODEL} is (one of {})",
                    PROVIDERS.join(", ")
                )));
            }
            (Some(p), Some(m)) => (p, m),
        };
        let api_key = get(ENV_API_KEY);
        let max_tokens = match get(ENV_MAX_TOKENS) {
            None => DEFAULT_MAX_TOKENS,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(LlmError::Config(format!(
                        "{ENV_MAX_TOKENS} must be a positive integer, got {v:?}"
                    )));
                }
            },
        };
        let temperature = match get(ENV_TEMPERATURE) {
            None => DEFAULT_TEMPERATURE,
            Some(v) => match v.parse::<f32>() {
                Ok(t) if (0.0..=2.0).contains(&t) => t,
                _ => {
                    return Err(LlmError::Config(format!(
                        "{ENV_TEMPERATURE} must be a number from 0 to 2, got {v:?}"
                    )));
                }
            },
        };
        let settings = LlmSettings {
            provider,
            model,
            api_key,
            base_url,
            max_tokens,
            temperature,
        };
        settings.validate()?;
        Ok(Some(settings))
    }

    /// Checks settings however they were built; errors name the environment variable that
    /// sets the field.
    pub fn validate(&self) -> Result<(), LlmError> {
        if !PROVIDERS.contains(&self.provider.as_str()) {
            return Err(LlmError::Config(format!(
                "{ENV_PROVIDER} must be one of {}, got {:?}",
                PROVIDERS.join(", "),
                self.provider
            )));
        }
        if self.model.trim().is_empty() {
            return Err(LlmError::Config(format!("{ENV_MODEL} must not be empty")));
        }
        let has_key = self.api_key.as_deref().is_some_and(|k| !k.is_empty());
        // The sidecar has no key of its own to fall back on, so the hosted APIs need one here.
        if matches!(self.provider.as_str(), "openai" | "anthropic") && !has_key {
            return Err(LlmError::Config(format!(
                "{ENV_API_KEY} must be set for provider {}",
                self.provider
            )));
        }
        if self.provider == "openai-generic" && self.base_url.is_none() {
            return Err(LlmError::Config(format!(
                "{ENV_BASE_URL} must be set for provider openai-generic"
            )));
        }
        if let Some(url) = &self.base_url {
            validate_base_url(url)?;
        }
        if self.max_tokens == 0 {
            return Err(LlmError::Config(format!(
                "{ENV_MAX_TOKENS} must be positive"
            )));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(LlmError::Config(format!(
                "{ENV_TEMPERATURE} must be from 0 to 2"
            )));
        }
        Ok(())
    }

    /// Where the provider's API lives: the configured base URL or the provider's own.
    pub fn upstream(&self) -> Option<&str> {
        match (&self.base_url, self.provider.as_str()) {
            (Some(url), _) => Some(url),
            (None, "openai") => Some("https://api.openai.com/v1"),
            (None, "anthropic") => Some("https://api.anthropic.com"),
            (None, _) => None,
        }
    }

    /// The `__baml_options__.client_registry` value that makes the sidecar use these
    /// settings for one call.
    pub(crate) fn client_registry(&self) -> Value {
        let mut options = Map::new();
        options.insert("model".into(), json!(self.model));
        if let Some(key) = self.api_key.as_deref().filter(|k| !k.is_empty()) {
            options.insert("api_key".into(), json!(key));
        }
        if let Some(url) = &self.base_url {
            options.insert("base_url".into(), json!(url));
        }
        // OpenAI's reasoning models reject `max_tokens`; `max_completion_tokens` works for
        // all its chat models. Compatible servers (vLLM, Ollama…) and Anthropic know
        // `max_tokens`.
        let max_tokens_field = match self.provider.as_str() {
            "openai" => "max_completion_tokens",
            _ => "max_tokens",
        };
        options.insert(max_tokens_field.into(), json!(self.max_tokens));
        options.insert("temperature".into(), json!(self.temperature));
        // BAML ignores finish reasons unless told which ones to reject; these two mean the
        // provider declined, which the client reports as `Refused` instead of a parse error.
        let deny = match self.provider.as_str() {
            "anthropic" => json!(["refusal"]),
            _ => json!(["content_filter"]),
        };
        options.insert("finish_reason_deny_list".into(), deny);
        json!({
            "clients": [{
                "name": "builder",
                "provider": self.provider,
                "options": Value::Object(options),
            }],
            "primary": "builder",
        })
    }
}

fn validate_base_url(url: &str) -> Result<String, LlmError> {
    let url = url.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.starts_with('/') => Ok(url.to_owned()),
        _ => Err(LlmError::Config(format!(
            "{ENV_BASE_URL} must be an http:// or https:// URL, got {url:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> Result<Option<LlmSettings>, LlmError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        LlmSettings::from_lookup(|k| map.get(k).cloned())
    }

    fn config_error(vars: &[(&str, &str)]) -> String {
        match lookup(vars) {
            Err(LlmError::Config(m)) => m,
            other => panic!("expected a Config error for {vars:?}, got {other:?}"),
        }
    }

    #[test]
    fn nothing_set_is_none() {
        assert_eq!(lookup(&[]).unwrap(), None);
        assert_eq!(
            lookup(&[(ENV_PROVIDER, " "), (ENV_MODEL, "")]).unwrap(),
            None
        );
        assert_eq!(lookup(&[(ENV_API_KEY, "sk-x")]).unwrap(), None);
    }

    #[test]
    fn full_settings_with_defaults() {
        let s = lookup(&[
            (ENV_PROVIDER, "anthropic"),
            (ENV_MODEL, "claude-sonnet-4-5"),
            (ENV_API_KEY, "sk-ant-1"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.provider, "anthropic");
        assert_eq!(s.model, "claude-sonnet-4-5");
        assert_eq!(s.api_key.as_deref(), Some("sk-ant-1"));
        assert_eq!(s.base_url, None);
        assert_eq!(s.max_tokens, 4096);
        assert_eq!(s.temperature, 0.2);
    }

    #[test]
    fn base_url_alone_means_openai_generic_and_needs_no_key() {
        let s = lookup(&[
            (ENV_BASE_URL, "http://127.0.0.1:11434/v1/"),
            (ENV_MODEL, "llama"),
            (ENV_MAX_TOKENS, "1000"),
            (ENV_TEMPERATURE, "0"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.provider, "openai-generic");
        assert_eq!(s.base_url.as_deref(), Some("http://127.0.0.1:11434/v1"));
        assert_eq!((s.max_tokens, s.temperature), (1000, 0.0));
        assert_eq!(s.api_key, None);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let base = [
            (ENV_PROVIDER, "openai"),
            (ENV_MODEL, "gpt"),
            (ENV_API_KEY, "k"),
        ];
        let with = |extra: (&'static str, &'static str)| {
            let mut v = base.to_vec();
            v.retain(|(k, _)| *k != extra.0);
            v.push(extra);
            v
        };
        for (vars, var) in [
            (with((ENV_PROVIDER, "gemini")), ENV_PROVIDER),
            (with((ENV_MAX_TOKENS, "lots")), ENV_MAX_TOKENS),
            (with((ENV_MAX_TOKENS, "0")), ENV_MAX_TOKENS),
            (with((ENV_MAX_TOKENS, "-5")), ENV_MAX_TOKENS),
            (with((ENV_TEMPERATURE, "hot")), ENV_TEMPERATURE),
            (with((ENV_TEMPERATURE, "3.5")), ENV_TEMPERATURE),
            (with((ENV_TEMPERATURE, "NaN")), ENV_TEMPERATURE),
            (with((ENV_BASE_URL, "ftp://x")), ENV_BASE_URL),
            (with((ENV_BASE_URL, "localhost:8080")), ENV_BASE_URL),
            (
                vec![(ENV_PROVIDER, "openai"), (ENV_MODEL, "gpt")],
                ENV_API_KEY,
            ),
            (vec![(ENV_PROVIDER, "openai")], ENV_MODEL),
            (vec![(ENV_MODEL, "gpt")], ENV_PROVIDER),
            (
                vec![(ENV_PROVIDER, "openai-generic"), (ENV_MODEL, "m")],
                ENV_BASE_URL,
            ),
        ] {
            let m = config_error(&vars);
            assert!(m.contains(var), "{vars:?}: {m}");
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let s = lookup(&[
            (ENV_PROVIDER, "openai"),
            (ENV_MODEL, "gpt"),
            (ENV_API_KEY, "sk-very-secret-9"),
        ])
        .unwrap()
        .unwrap();
        let d = format!("{s:?}");
        assert!(
            !d.contains("sk-very-secret-9") && d.contains("<redacted>"),
            "{d}"
        );
    }

    #[test]
    fn client_registry_uses_each_providers_option_names() {
        let mut s = LlmSettings {
            provider: "openai".into(),
            model: "gpt-x".into(),
            api_key: Some("k".into()),
            base_url: Some("http://h/v1".into()),
            max_tokens: 100,
            temperature: 0.5,
        };
        let r = s.client_registry();
        assert_eq!(r["primary"], "builder");
        let o = &r["clients"][0]["options"];
        assert_eq!(r["clients"][0]["provider"], "openai");
        assert_eq!(o["max_completion_tokens"], 100);
        assert!(o.get("max_tokens").is_none());
        assert_eq!(
            (o["api_key"].as_str(), o["base_url"].as_str()),
            (Some("k"), Some("http://h/v1"))
        );
        s.provider = "anthropic".into();
        let r = s.client_registry();
        assert_eq!(r["clients"][0]["options"]["max_tokens"], 100);
        assert_eq!(
            r["clients"][0]["options"]["finish_reason_deny_list"][0],
            "refusal"
        );
        s.provider = "openai-generic".into();
        s.api_key = None;
        let r = s.client_registry();
        assert!(r["clients"][0]["options"].get("api_key").is_none());
    }

    /// `from_env` proper, run in a child process of this test binary so that setting
    /// variables cannot race other tests.
    #[test]
    fn from_env_reads_the_process_environment() {
        const CASE: &str = "BUILDER_LLM_FROM_ENV_CASE";
        match std::env::var(CASE).as_deref() {
            Ok("full") => {
                let s = LlmSettings::from_env().unwrap().unwrap();
                assert_eq!(s.provider, "openai");
                assert_eq!(s.model, "gpt-test");
                assert_eq!(s.api_key.as_deref(), Some("sk-env"));
                assert_eq!(s.max_tokens, 123);
                assert_eq!(s.temperature, 0.7);
                return;
            }
            Ok("none") => {
                assert_eq!(LlmSettings::from_env().unwrap(), None);
                return;
            }
            Ok("bad") => {
                let e = LlmSettings::from_env().unwrap_err().to_string();
                assert!(e.contains(ENV_TEMPERATURE), "{e}");
                return;
            }
            _ => {}
        }
        let exe = std::env::current_exe().unwrap();
        for (case, vars) in [
            (
                "full",
                vec![
                    (ENV_PROVIDER, "openai"),
                    (ENV_MODEL, "gpt-test"),
                    (ENV_API_KEY, "sk-env"),
                    (ENV_MAX_TOKENS, "123"),
                    (ENV_TEMPERATURE, "0.7"),
                ],
            ),
            ("none", vec![]),
            (
                "bad",
                vec![
                    (ENV_PROVIDER, "openai"),
                    (ENV_MODEL, "gpt-test"),
                    (ENV_API_KEY, "sk-env"),
                    (ENV_TEMPERATURE, "warm"),
                ],
            ),
        ] {
            let mut cmd = std::process::Command::new(&exe);
            cmd.args([
                "--exact",
                "settings::tests::from_env_reads_the_process_environment",
                "--test-threads=1",
            ]);
            for name in [
                ENV_PROVIDER,
                ENV_MODEL,
                ENV_API_KEY,
                ENV_BASE_URL,
                ENV_MAX_TOKENS,
                ENV_TEMPERATURE,
            ] {
                cmd.env_remove(name);
            }
            cmd.envs(vars).env(CASE, case);
            let out = cmd.output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "case {case}: {stdout}");
            assert!(
                stdout.contains("1 passed"),
                "case {case} ran nothing: {stdout}"
            );
        }
    }
}
