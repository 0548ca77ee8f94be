//! builder-llm: builder's typed calls to the LLM — the four BAML functions in `baml_src/`
//! (AnalyzeFeature, PlanFeature, GenerateEdits, ValidateChange) served by a supervised
//! `baml-cli serve` sidecar, provider settings from `BAML_CLIENT_*`, retries, and the safe
//! application of the model's edits to a working copy.
//!
//! It must not depend on other builder crates (the worker maps these types onto the domain)
//! nor hold provider secrets anywhere but in the per-request settings: the sidecar's
//! environment has no key, and no error or log line carries one.

mod client;
mod edits;
mod error;
pub mod replay;
mod settings;
mod sidecar;
mod types;

#[cfg(test)]
mod edits_tests;
#[cfg(test)]
mod sidecar_tests;

pub use client::{Called, LlmClient, RetryNotice, RetryPolicy};
pub use edits::{AppliedEdit, EditError, apply_edits};
pub use error::LlmError;
pub use replay::{Replay, TRANSCRIPT_FILE, transcript_line};
pub use settings::{
    ENV_API_KEY, ENV_BASE_URL, ENV_MAX_TOKENS, ENV_MODEL, ENV_PROVIDER, ENV_TEMPERATURE,
    LlmSettings,
};
pub use sidecar::{Sidecar, SidecarConfig};
pub use types::{
    Analysis, Edit, EditAction, EditSet, FeatureRequest, Plan, PlanStep, RepoContext, Review,
    SourceFile, StepType,
};
