//! The structured values event payloads carry: plans, errors, delivery results, diagnostics, usage.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanStep {
    pub index: u32,
    pub description: String,
    /// CREATE_FILE, MODIFY_FILE, DELETE_FILE, RENAME_FILE, ADD_DEPENDENCY, REFACTOR, TEST, DOCUMENTATION
    pub step_type: String,
    #[serde(default)]
    pub target_files: Vec<String>,
    #[serde(default)]
    pub dependencies: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ExecutionPlan {
    pub steps: Vec<PlanStep>,
    #[serde(default)]
    pub affected_files: Vec<String>,
    #[serde(default)]
    pub summary: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    InvalidInput,
    RepositoryAccess,
    AnalysisFailed,
    PlanningFailed,
    GenerationFailed,
    BuildFailed,
    TestFailed,
    PushFailed,
    Timeout,
    Cancelled,
    Internal,
}

impl ErrorCode {
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorCode::InvalidInput => "INVALID_INPUT",
            ErrorCode::RepositoryAccess => "REPOSITORY_ACCESS",
            ErrorCode::AnalysisFailed => "ANALYSIS_FAILED",
            ErrorCode::PlanningFailed => "PLANNING_FAILED",
            ErrorCode::GenerationFailed => "GENERATION_FAILED",
            ErrorCode::BuildFailed => "BUILD_FAILED",
            ErrorCode::TestFailed => "TEST_FAILED",
            ErrorCode::PushFailed => "PUSH_FAILED",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Internal => "INTERNAL",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    pub code: ErrorCode,
    pub message: String,
    /// The last build/test output, a git error, … — whatever lets a human see why.
    #[serde(default)]
    pub details: String,
    pub retryable: bool,
    /// The phase or step that failed (`analysis`, `planning`, `execution`, `verification`, `delivery`).
    #[serde(default)]
    pub failed_step: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DeliveryResult {
    pub branch_name: String,
    pub commit_sha: String,
    pub commit_count: u32,
    pub files_changed: u32,
    pub lines_added: u32,
    pub lines_removed: u32,
    #[serde(default)]
    pub patch_url: String,
    #[serde(default)]
    pub pull_request_url: String,
    #[serde(default)]
    pub summary: String,
}

/// A compiler error located in a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    #[serde(default)]
    pub line: Option<u32>,
    #[serde(default)]
    pub column: Option<u32>,
    /// The tool's code, e.g. `E0308`, `TS2322`.
    #[serde(default)]
    pub code: Option<String>,
    pub message: String,
}

/// One failed test.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestFailure {
    pub name: String,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub file: Option<String>,
    #[serde(default)]
    pub line: Option<u32>,
}

/// What LLM calls consumed, as the providers reported it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct LlmUsage {
    /// Every input token, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (part of `input_tokens`).
    pub cache_read_tokens: u64,
    /// Input tokens written to the provider's prompt cache (part of `input_tokens`).
    pub cache_write_tokens: u64,
    /// US dollars by the configured price table; `None` when a model had no price.
    pub cost_usd: Option<f64>,
    /// Some answer carried no usage, so its figures are upper bounds from byte counts.
    pub estimated: bool,
}

impl LlmUsage {
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }

    /// Sums two usages; the cost stays known only while both are.
    pub fn add(&mut self, other: &LlmUsage) {
        self.input_tokens = self.input_tokens.saturating_add(other.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(other.output_tokens);
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(other.cache_read_tokens);
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(other.cache_write_tokens);
        self.cost_usd = match (self.cost_usd, other.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            // Zero tokens at an unknown price still cost nothing.
            (Some(a), None) if other.total_tokens() == 0 => Some(a),
            (None, Some(b)) if self.total_tokens() == 0 => Some(b),
            _ => None,
        };
        self.estimated |= other.estimated;
    }
}
