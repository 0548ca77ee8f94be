//! builder-llm: builder's typed calls to the LLM — the four BAML functions in `baml_src/`
//! (AnalyzeFeature, PlanFeature, GenerateEdits, ValidateChange) served by a supervised
//! `baml-cli serve` sidecar, provider settings from `BAML_CLIENT_*`, retries, and the safe
//! application of the model's edits to a working copy. Every provider request passes
//! through a metering proxy of ours (`meter`), which is how calls get their token usage
//! and cost, and how budgets are enforced before a request leaves. A client given a
//! partial observer streams its calls and reports the model's unfinished answers as they
//! are written (`stream`), with results and errors identical to unstreamed calls.
//!
//! It must not depend on other builder crates (the worker maps these types onto the domain)
//! nor hold provider secrets anywhere but in the per-request settings: the sidecar's
//! environment has no key, and no error or log line carries one.

mod client;
mod config;
mod edits;
mod error;
mod meter;
mod prices;
pub mod replay;
mod settings;
mod sidecar;
mod stream;
mod types;

#[cfg(test)]
mod edits_fuzz_tests;
#[cfg(test)]
mod edits_tests;
#[cfg(test)]
mod sidecar_meter_tests;
#[cfg(test)]
mod sidecar_tests;
#[cfg(test)]
mod stream_tests;

pub use client::{Called, LlmClient, RetryNotice, RetryPolicy, Spent, UsageLedger};
pub use config::{DEFAULT_PROFILE, DefaultBudgets, ENV_LLM_CONFIG, LlmConfig};
pub use edits::{AppliedEdit, EditError, apply_edits};
pub use error::LlmError;
pub use meter::{Budget, MIN_OUTPUT_TOKENS, TokenUsage};
pub use prices::{Price, PriceTable};
pub use replay::{Replay, TRANSCRIPT_FILE, transcript_line};
pub use settings::{
    ENV_API_KEY, ENV_BASE_URL, ENV_MAX_TOKENS, ENV_MODEL, ENV_PROVIDER, ENV_TEMPERATURE,
    LlmSettings,
};
pub use sidecar::{Sidecar, SidecarConfig};
pub use stream::{DEFAULT_PARTIAL_INTERVAL, Partial};
pub use types::{
    Analysis, Edit, EditAction, EditSet, FeatureRequest, Plan, PlanStep, RepoContext, Review,
    SourceFile, StepType,
};
