//! The whole LLM configuration: the default provider (`BAML_CLIENT_*`), named profiles a
//! repository or a feature can pick, the fallback order, the price table and default
//! budgets — the last four from the TOML file named by `BUILDER_LLM_CONFIG`.
//!
//! Keys never sit in that file: a profile names the environment variable holding its key
//! (`api_key_env`), so the file can be checked in or mounted from a config map.

use crate::error::LlmError;
use crate::prices::PriceTable;
use crate::settings::LlmSettings;
use serde::Deserialize;
use std::collections::BTreeMap;

pub const ENV_LLM_CONFIG: &str = "BUILDER_LLM_CONFIG";
/// The profile name of the `BAML_CLIENT_*` settings.
pub const DEFAULT_PROFILE: &str = "default";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileProfile {
    provider: String,
    model: String,
    #[serde(default)]
    api_key_env: Option<String>,
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
}

/// Budgets that apply when a feature or repository sets none of its own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DefaultBudgets {
    /// US dollars one feature may spend on LLM calls (feature property `llm.max_cost_usd`
    /// overrides).
    #[serde(default)]
    pub feature_max_cost_usd: Option<f64>,
    /// US dollars all features of one repository may spend together (repository property
    /// `llm.max_cost_usd` overrides).
    #[serde(default)]
    pub repository_max_cost_usd: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    fallback: Vec<String>,
    #[serde(default)]
    profiles: BTreeMap<String, FileProfile>,
    #[serde(default)]
    prices: PriceTable,
    #[serde(default)]
    budgets: DefaultBudgets,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmConfig {
    /// Named settings; `default` is the `BAML_CLIENT_*` one when that is set.
    pub profiles: BTreeMap<String, LlmSettings>,
    /// Profiles tried in order once the chosen one's transient retries are spent.
    pub fallback: Vec<String>,
    pub prices: PriceTable,
    pub budgets: DefaultBudgets,
}

impl LlmConfig {
    /// Reads `BAML_CLIENT_*` and the file named by `BUILDER_LLM_CONFIG`, if any.
    pub fn from_env() -> Result<LlmConfig, LlmError> {
        let default = LlmSettings::from_env()?;
        let file = match std::env::var(ENV_LLM_CONFIG) {
            Ok(path) if !path.trim().is_empty() => {
                let text = std::fs::read_to_string(path.trim()).map_err(|e| {
                    LlmError::Config(format!("{ENV_LLM_CONFIG}={}: {e}", path.trim()))
                })?;
                Some((path, text))
            }
            _ => None,
        };
        let file_ref = file.as_ref().map(|(p, t)| (p.as_str(), t.as_str()));
        LlmConfig::from_parts(default, file_ref, |name| std::env::var(name).ok())
    }

    /// `file` is `(name for errors, TOML text)`; `env` resolves `api_key_env`.
    pub fn from_parts(
        default: Option<LlmSettings>,
        file: Option<(&str, &str)>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<LlmConfig, LlmError> {
        let (origin, parsed) = match file {
            Some((name, text)) => (
                name.to_owned(),
                toml::from_str::<FileConfig>(text)
                    .map_err(|e| LlmError::Config(format!("{ENV_LLM_CONFIG}={name}: {e}")))?,
            ),
            None => (String::new(), FileConfig::default()),
        };
        let bad = |what: String| LlmError::Config(format!("{ENV_LLM_CONFIG}={origin}: {what}"));
        let mut profiles = BTreeMap::new();
        if let Some(d) = &default {
            profiles.insert(DEFAULT_PROFILE.to_owned(), d.clone());
        }
        for (name, p) in parsed.profiles {
            if name == DEFAULT_PROFILE {
                return Err(bad(format!(
                    "profile `{DEFAULT_PROFILE}` is reserved for the BAML_CLIENT_* settings"
                )));
            }
            let api_key = match &p.api_key_env {
                Some(var) => Some(env(var).filter(|v| !v.trim().is_empty()).ok_or_else(|| {
                    bad(format!(
                        "profile `{name}`: environment variable {var} is not set"
                    ))
                })?),
                None => None,
            };
            let settings = LlmSettings {
                provider: p.provider,
                model: p.model,
                api_key,
                base_url: p.base_url.map(|u| u.trim_end_matches('/').to_owned()),
                max_tokens: p
                    .max_tokens
                    .or(default.as_ref().map(|d| d.max_tokens))
                    .unwrap_or(crate::settings::DEFAULT_MAX_TOKENS),
                temperature: p
                    .temperature
                    .or(default.as_ref().map(|d| d.temperature))
                    .unwrap_or(crate::settings::DEFAULT_TEMPERATURE),
            };
            settings
                .validate()
                .map_err(|e| bad(format!("profile `{name}`: {e}")))?;
            profiles.insert(name, settings);
        }
        for name in &parsed.fallback {
            if !profiles.contains_key(name) {
                return Err(bad(format!("fallback names an unknown profile `{name}`")));
            }
        }
        parsed.prices.validate().map_err(bad)?;
        for (what, v) in [
            ("feature_max_cost_usd", parsed.budgets.feature_max_cost_usd),
            (
                "repository_max_cost_usd",
                parsed.budgets.repository_max_cost_usd,
            ),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return Err(bad(format!("budgets.{what} must be a non-negative number")));
            }
        }
        Ok(LlmConfig {
            profiles,
            fallback: parsed.fallback,
            prices: parsed.prices,
            budgets: parsed.budgets,
        })
    }

    /// The providers to ask, in order: the chosen profile (`default` when none is named)
    /// with `model` replacing its model, then the fallbacks other than it.
    pub fn chain(
        &self,
        profile: Option<&str>,
        model: Option<&str>,
    ) -> Result<Vec<LlmSettings>, LlmError> {
        let name = profile.unwrap_or(DEFAULT_PROFILE);
        let mut primary = self.profiles.get(name).cloned().ok_or_else(|| {
            if self.profiles.is_empty() {
                LlmError::NotConfigured
            } else {
                LlmError::Config(format!(
                    "no LLM profile `{name}` (configured: {})",
                    self.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            }
        })?;
        if let Some(model) = model.map(str::trim).filter(|m| !m.is_empty()) {
            primary.model = model.to_owned();
        }
        let mut chain = vec![primary];
        for f in &self.fallback {
            if f != name
                && let Some(s) = self.profiles.get(f)
            {
                chain.push(s.clone());
            }
        }
        Ok(chain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default() -> LlmSettings {
        LlmSettings {
            provider: "openai".into(),
            model: "gpt-x".into(),
            api_key: Some("sk-default".into()),
            base_url: None,
            max_tokens: 1000,
            temperature: 0.1,
        }
    }

    const FILE: &str = r#"
fallback = ["backup"]

[budgets]
feature_max_cost_usd = 2.5

[profiles.backup]
provider = "anthropic"
model = "claude-x"
api_key_env = "TEST_ANTHROPIC_KEY"

[profiles.local]
provider = "openai-generic"
model = "llama"
base_url = "http://127.0.0.1:11434/v1/"
max_tokens = 512

[prices]
"gpt-*" = { input = 2.5, output = 10.0 }
"#;

    fn env(name: &str) -> Option<String> {
        (name == "TEST_ANTHROPIC_KEY").then(|| "sk-ant".to_string())
    }

    #[test]
    fn profiles_fallbacks_prices_and_budgets() {
        let c = LlmConfig::from_parts(Some(default()), Some(("llm.toml", FILE)), env).unwrap();
        assert_eq!(c.profiles.len(), 3);
        let backup = &c.profiles["backup"];
        assert_eq!(backup.api_key.as_deref(), Some("sk-ant"));
        // Unset numbers come from the default profile.
        assert_eq!((backup.max_tokens, backup.temperature), (1000, 0.1));
        assert_eq!(c.profiles["local"].max_tokens, 512);
        assert_eq!(
            c.profiles["local"].base_url.as_deref(),
            Some("http://127.0.0.1:11434/v1")
        );
        assert_eq!(c.budgets.feature_max_cost_usd, Some(2.5));
        assert_eq!(c.prices.price("gpt-x").map(|p| p.output), Some(10.0));

        let chain = c.chain(None, Some("gpt-y")).unwrap();
        let names: Vec<_> = chain.iter().map(|s| s.model.as_str()).collect();
        assert_eq!(names, ["gpt-y", "claude-x"]);
        let chain = c.chain(Some("backup"), None).unwrap();
        assert_eq!(chain.len(), 1, "a profile is not its own fallback");
        let e = c.chain(Some("nope"), None).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("backup"), "{e}");
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let cases = [
            (FILE.replace("TEST_ANTHROPIC_KEY", "UNSET_VAR"), "UNSET_VAR"),
            (FILE.replace("\"backup\"]", "\"ghost\"]"), "ghost"),
            (FILE.replace("2.5, output", "-1.0, output"), "non-negative"),
            (
                FILE.replace("feature_max_cost_usd = 2.5", "feature_max_cost_usd = -3.0"),
                "feature_max_cost_usd",
            ),
            (
                FILE.replace("[profiles.local]", "[profiles.default]"),
                "reserved",
            ),
            (format!("{FILE}\nunknown_key = 1\n"), "unknown"),
            (
                FILE.replace("provider = \"anthropic\"", "provider = \"gemini\""),
                "backup",
            ),
        ];
        for (text, needle) in cases {
            let e = LlmConfig::from_parts(Some(default()), Some(("llm.toml", &text)), env)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("llm.toml") && e.contains(needle),
                "{needle}: {e}"
            );
            assert!(!e.contains("sk-ant"), "{e}");
        }
    }

    #[test]
    fn nothing_configured() {
        let c = LlmConfig::from_parts(None, None, |_| None).unwrap();
        assert!(c.profiles.is_empty());
        assert!(matches!(c.chain(None, None), Err(LlmError::NotConfigured)));
    }
}
