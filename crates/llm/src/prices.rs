//! What tokens cost: a table from configuration, in US dollars per million tokens.

use crate::meter::TokenUsage;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Prices of one model, US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Input read from the prompt cache; the input price when not given.
    #[serde(default)]
    pub cache_read: Option<f64>,
    /// Input written to the prompt cache; the input price when not given.
    #[serde(default)]
    pub cache_write: Option<f64>,
}

impl Price {
    pub fn cost(&self, u: &TokenUsage) -> f64 {
        let cached = u.cache_read_tokens.saturating_add(u.cache_write_tokens);
        let plain = u.input_tokens.saturating_sub(cached);
        (plain as f64 * self.input
            + u.cache_read_tokens as f64 * self.cache_read.unwrap_or(self.input)
            + u.cache_write_tokens as f64 * self.cache_write.unwrap_or(self.input)
            + u.output_tokens as f64 * self.output)
            / 1_000_000.0
    }

    pub(crate) fn input_cost(&self, tokens: u64) -> f64 {
        // Cache writes may cost more than plain input; bound by the dearest.
        let dearest = self.input.max(self.cache_write.unwrap_or(self.input));
        tokens as f64 * dearest / 1_000_000.0
    }

    pub(crate) fn output_cost(&self, tokens: u64) -> f64 {
        tokens as f64 * self.output / 1_000_000.0
    }

    fn validate(&self, model: &str) -> Result<(), String> {
        let all = [
            Some(self.input),
            Some(self.output),
            self.cache_read,
            self.cache_write,
        ];
        if all.into_iter().flatten().any(|p| !p.is_finite() || p < 0.0) {
            return Err(format!("prices of `{model}` must be non-negative numbers"));
        }
        Ok(())
    }
}

/// Model name → price. A key ending in `*` matches every model starting with the rest
/// (`"gpt-4o*"` prices `gpt-4o-2024-08-06`); an exact key wins over a pattern, a longer
/// pattern over a shorter one.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(transparent)]
pub struct PriceTable(BTreeMap<String, Price>);

impl PriceTable {
    pub fn new(entries: impl IntoIterator<Item = (String, Price)>) -> Result<PriceTable, String> {
        let table = PriceTable(entries.into_iter().collect());
        table.validate()?;
        Ok(table)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        for (model, price) in &self.0 {
            price.validate(model)?;
        }
        Ok(())
    }

    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(p) = self.0.get(model) {
            return Some(*p);
        }
        self.0
            .iter()
            .filter_map(|(k, p)| {
                let prefix = k.strip_suffix('*')?;
                model.starts_with(prefix).then_some((prefix.len(), *p))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, p)| p)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cache_read: None,
            cache_write: None,
        }
    }

    #[test]
    fn exact_beats_longest_pattern_beats_shorter() {
        let t = PriceTable::new([
            ("gpt-*".to_string(), p(1.0, 1.0)),
            ("gpt-4o*".to_string(), p(2.0, 2.0)),
            ("gpt-4o-mini".to_string(), p(3.0, 3.0)),
        ])
        .unwrap();
        assert_eq!(t.price("gpt-4o-mini").unwrap().input, 3.0);
        assert_eq!(t.price("gpt-4o-2024").unwrap().input, 2.0);
        assert_eq!(t.price("gpt-5").unwrap().input, 1.0);
        assert_eq!(t.price("claude"), None);
    }

    #[test]
    fn cost_counts_cache_at_its_own_price() {
        let price = Price {
            input: 3.0,
            output: 15.0,
            cache_read: Some(0.3),
            cache_write: Some(3.75),
        };
        let u = TokenUsage {
            input_tokens: 1_000_000 + 2_000_000 + 1_000_000,
            output_tokens: 100_000,
            cache_read_tokens: 2_000_000,
            cache_write_tokens: 1_000_000,
            estimated: false,
        };
        let c = price.cost(&u);
        assert!((c - (3.0 + 0.6 + 3.75 + 1.5)).abs() < 1e-9, "{c}");
    }

    #[test]
    fn negative_prices_are_refused() {
        let e = PriceTable::new([("m".to_string(), p(-1.0, 1.0))]).unwrap_err();
        assert!(e.contains("`m`"), "{e}");
    }
}
