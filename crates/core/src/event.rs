//! The events of a feature execution (the catalogue of CONTRACT.md) and their envelope.
//!
//! Payloads carry what a user or operator needs to follow a step — ids, commands, counts,
//! durations, shas — and never a secret: nothing that holds a credential is ever an input
//! to an event constructor.

use crate::ids::FeatureId;
use crate::spec::FeatureSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Bumped when a payload changes incompatibly; readers upcast older versions.
pub const SCHEMA_VERSION: u32 = 1;

mod payload;
pub use payload::{
    DeliveryResult, Diagnostic, ErrorCode, ExecutionError, ExecutionPlan, LlmUsage, PlanStep,
    TestFailure,
};

/// Every event of the catalogue. Serialised adjacently tagged so the dotted name and the
/// payload map one-to-one onto the envelope's `event_type` and `payload`.
// Events are built, stamped and dropped; boxing the large request variant would only add
// indirection to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload")]
pub enum Event {
    #[serde(rename = "feature.requested")]
    FeatureRequested {
        spec: FeatureSpec,
        /// The resolved target branch (the repository's default when the spec left it empty).
        target_branch: String,
        /// The resolved, deterministic feature branch.
        feature_branch: String,
        /// Repair iterations allowed after the first attempt's verification fails.
        max_iterations: u32,
        #[serde(default)]
        idempotency_key: String,
        /// Set when this execution retries an earlier one.
        #[serde(default)]
        retry_of: Option<FeatureId>,
        /// With `retry_of`: the phase to start from (`analysis`, `planning` or `execution`);
        /// the earlier phases' results are taken over from the retried execution.
        #[serde(default)]
        retry_from: String,
    },
    #[serde(rename = "analysis.started")]
    AnalysisStarted {},
    #[serde(rename = "repository.clone.started")]
    RepositoryCloneStarted { url: String, branch: String },
    #[serde(rename = "repository.clone.completed")]
    RepositoryCloneCompleted { head_sha: String, duration_ms: u64 },
    #[serde(rename = "codebase.analyzed")]
    CodebaseAnalyzed {
        languages: Vec<String>,
        build_command: Option<String>,
        test_command: Option<String>,
        command_source: String,
        file_count: u64,
        /// Why each command was (or was not) chosen, one line per decision.
        #[serde(default)]
        reasons: Vec<String>,
        /// What fetches the dependencies before build and tests (`cargo fetch`, …).
        #[serde(default)]
        deps_command: Option<String>,
    },
    #[serde(rename = "scope.identified")]
    ScopeIdentified {
        summary: String,
        files: Vec<String>,
        risks: Vec<String>,
        /// What the acceptance criteria mean concretely for this code base.
        #[serde(default)]
        acceptance: Vec<String>,
    },
    #[serde(rename = "analysis.completed")]
    AnalysisCompleted { duration_ms: u64 },
    #[serde(rename = "analysis.failed")]
    AnalysisFailed { reason: String },

    #[serde(rename = "planning.started")]
    PlanningStarted {},
    #[serde(rename = "llm.invocation.started")]
    LlmInvocationStarted {
        function: String,
        provider: String,
        model: String,
    },
    #[serde(rename = "llm.response.received")]
    LlmResponseReceived {
        function: String,
        provider: String,
        model: String,
        latency_ms: u64,
        attempts: u32,
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        error: Option<String>,
        /// Tokens and cost of every provider request the call made, failed attempts and
        /// fallbacks included.
        #[serde(default)]
        usage: LlmUsage,
    },
    /// What the model has written so far of a call's answer (rate-limited by the worker).
    #[serde(rename = "llm.output.partial")]
    LlmOutputPartial {
        function: String,
        /// The provider request this belongs to; a new value means the answer restarted.
        attempt: u32,
        /// Length of the partial answer as JSON.
        chars: u64,
        /// The partial answer (fields not yet written are null); left out when large.
        #[serde(default)]
        partial: Option<serde_json::Value>,
    },
    #[serde(rename = "plan.step.defined")]
    PlanStepDefined { step: PlanStep },
    #[serde(rename = "plan.generated")]
    PlanGenerated { plan: ExecutionPlan },
    #[serde(rename = "planning.failed")]
    PlanningFailed { reason: String },

    #[serde(rename = "execution.started")]
    ExecutionStarted { iteration: u32 },
    #[serde(rename = "step.started")]
    StepStarted {
        iteration: u32,
        index: u32,
        description: String,
        /// The working tree before the step (a git tree id): a step interrupted half-way
        /// restarts from exactly this state instead of applying its edits twice.
        #[serde(default)]
        checkpoint: Option<String>,
    },
    #[serde(rename = "code.change.generated")]
    CodeChangeGenerated {
        iteration: u32,
        index: u32,
        summary: String,
        files: Vec<String>,
        edit_count: u32,
    },
    #[serde(rename = "file.modified")]
    FileModified {
        path: String,
        action: String,
        before_sha256: Option<String>,
        after_sha256: Option<String>,
    },
    #[serde(rename = "step.completed")]
    StepCompleted { iteration: u32, index: u32 },
    #[serde(rename = "step.failed")]
    StepFailed {
        iteration: u32,
        index: u32,
        reason: String,
    },
    #[serde(rename = "execution.completed")]
    ExecutionCompleted { iteration: u32, files_changed: u32 },
    #[serde(rename = "execution.failed")]
    ExecutionFailed { iteration: u32, reason: String },

    #[serde(rename = "verification.started")]
    VerificationStarted { iteration: u32 },
    #[serde(rename = "sandbox.created")]
    SandboxCreated {
        runtime: String,
        enforced_limits: Vec<String>,
    },
    /// Dependencies fetched into the repository's cache, in the sandbox, with only the
    /// package registries reachable; build and tests then run with no network.
    #[serde(rename = "dependencies.started")]
    DependenciesStarted {
        command: String,
        /// The hosts the run may reach (`host[:port]`).
        hosts: Vec<String>,
        #[serde(default)]
        baseline: bool,
    },
    #[serde(rename = "dependencies.completed")]
    DependenciesCompleted {
        command: String,
        success: bool,
        exit_code: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
        output_tail: String,
        #[serde(default)]
        killed_by: Option<String>,
        #[serde(default)]
        egress_refused: Vec<String>,
        #[serde(default)]
        baseline: bool,
    },
    #[serde(rename = "build.started")]
    BuildStarted {
        command: String,
        /// The run on the untouched code (see `tests.completed`).
        #[serde(default)]
        baseline: bool,
    },
    #[serde(rename = "build.completed")]
    BuildCompleted {
        command: String,
        success: bool,
        exit_code: Option<i32>,
        timed_out: bool,
        duration_ms: u64,
        output_tail: String,
        /// Why the sandbox stopped the command, if it did ("timeout", "memory limit", …).
        #[serde(default)]
        killed_by: Option<String>,
        /// Limits that bit without killing (e.g. forks refused by the pids limit).
        #[serde(default)]
        limits_hit: Vec<String>,
        /// The run on the untouched working copy, before any change (see `tests.completed`).
        #[serde(default)]
        baseline: bool,
        /// Compiler errors found in the output (file, line, message), for the repair prompt.
        #[serde(default)]
        diagnostics: Vec<Diagnostic>,
        /// Connections the egress proxy refused (`host:port: reason`).
        #[serde(default)]
        egress_refused: Vec<String>,
    },
    #[serde(rename = "tests.started")]
    TestsStarted {
        command: String,
        #[serde(default)]
        baseline: bool,
    },
    #[serde(rename = "tests.completed")]
    TestsCompleted {
        command: String,
        success: bool,
        exit_code: Option<i32>,
        timed_out: bool,
        passed: u32,
        failed: u32,
        ignored: u32,
        duration_ms: u64,
        output_tail: String,
        /// Why the sandbox stopped the command, if it did ("timeout", "memory limit", …).
        #[serde(default)]
        killed_by: Option<String>,
        /// Limits that bit without killing (e.g. forks refused by the pids limit).
        #[serde(default)]
        limits_hit: Vec<String>,
        /// The run on the untouched working copy, started as soon as it existed: what
        /// already failed before the feature changed anything.
        #[serde(default)]
        baseline: bool,
        /// The per-test report's format (`cargo_libtest`, `junit_xml`, …) when one was read.
        #[serde(default)]
        report_format: Option<String>,
        /// Failed tests from the report (at most a few dozen; the whole report is an
        /// artifact).
        #[serde(default)]
        failures: Vec<TestFailure>,
        /// Failed tests that also failed in the baseline run.
        #[serde(default)]
        preexisting_failures: Vec<String>,
        /// Compiler errors found in the output (tests that did not compile).
        #[serde(default)]
        diagnostics: Vec<Diagnostic>,
        /// Connections the egress proxy refused (`host:port: reason`).
        #[serde(default)]
        egress_refused: Vec<String>,
    },
    #[serde(rename = "verification.passed")]
    VerificationPassed { iteration: u32, summary: String },
    #[serde(rename = "verification.failed")]
    VerificationFailed {
        iteration: u32,
        reason: String,
        output: String,
    },
    #[serde(rename = "sandbox.destroyed")]
    SandboxDestroyed {},

    #[serde(rename = "iteration.started")]
    IterationStarted { iteration: u32, reason: String },
    #[serde(rename = "iteration.completed")]
    IterationCompleted { iteration: u32, outcome: String },

    #[serde(rename = "branch.created")]
    BranchCreated { branch: String, base_sha: String },
    #[serde(rename = "commit.created")]
    CommitCreated {
        sha: String,
        message: String,
        files_changed: u32,
        lines_added: u32,
        lines_removed: u32,
    },
    #[serde(rename = "push.started")]
    PushStarted { branch: String, sha: String },
    #[serde(rename = "push.completed")]
    PushCompleted {
        branch: String,
        sha: String,
        already_present: bool,
    },
    #[serde(rename = "push.failed")]
    PushFailed {
        branch: String,
        reason: String,
        retryable: bool,
    },
    #[serde(rename = "pull_request.opened")]
    PullRequestOpened {
        url: String,
        number: u64,
        /// False when an open request for the branch existed and was updated instead.
        #[serde(default = "default_true")]
        created: bool,
    },
    /// The branch is pushed but the forge did not take the pull request; the delivery
    /// stands, and this says why.
    #[serde(rename = "pull_request.failed")]
    PullRequestFailed { reason: String, retryable: bool },

    /// The step waits for a shared resource (a sandbox slot, an LLM slot); users see why.
    #[serde(rename = "step.waiting")]
    StepWaiting { resource: String, detail: String },
    /// A transient failure (network, rate limit) will be retried after `delay_ms`.
    #[serde(rename = "step.retrying")]
    StepRetrying {
        step: String,
        attempt: u32,
        error: String,
        delay_ms: u64,
    },

    #[serde(rename = "feature.delivered")]
    FeatureDelivered { result: DeliveryResult },
    #[serde(rename = "feature.failed")]
    FeatureFailed { error: ExecutionError },
    #[serde(rename = "feature.cancelled")]
    FeatureCancelled {
        reason: String,
        phase: String,
        /// What the remote holds at the moment of cancellation (nothing, a pushed commit, or
        /// possibly a push that was in flight), so nobody has to guess.
        #[serde(default)]
        remote_state: String,
    },
}

fn prefix(baseline: bool) -> &'static str {
    if baseline { "baseline " } else { "" }
}

impl Event {
    /// Whether this is a record of the baseline run (the untouched code's dependencies,
    /// build and tests), which runs beside the feature's own steps and changes no state.
    pub fn is_baseline(&self) -> bool {
        matches!(
            self,
            Event::DependenciesStarted { baseline: true, .. }
                | Event::DependenciesCompleted { baseline: true, .. }
                | Event::BuildStarted { baseline: true, .. }
                | Event::BuildCompleted { baseline: true, .. }
                | Event::TestsStarted { baseline: true, .. }
                | Event::TestsCompleted { baseline: true, .. }
        )
    }

    /// The dotted catalogue name.
    pub fn event_type(&self) -> String {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(map)) => match map.get("type") {
                Some(serde_json::Value::String(t)) => t.clone(),
                _ => String::new(),
            },
            _ => String::new(),
        }
    }

    /// Splits into the envelope's `event_type` and `payload`.
    pub fn to_parts(&self) -> Result<(String, serde_json::Value), serde_json::Error> {
        let value = serde_json::to_value(self)?;
        let mut map = match value {
            serde_json::Value::Object(map) => map,
            _ => {
                return Err(serde::ser::Error::custom(
                    "event did not serialise to an object",
                ));
            }
        };
        let ty = match map.remove("type") {
            Some(serde_json::Value::String(t)) => t,
            _ => return Err(serde::ser::Error::custom("event has no type")),
        };
        let payload = map
            .remove("payload")
            .unwrap_or(serde_json::Value::Object(Default::default()));
        Ok((ty, payload))
    }

    pub fn from_parts(
        event_type: &str,
        payload: &serde_json::Value,
    ) -> Result<Event, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "type": event_type, "payload": payload }))
    }

    /// One human line for event lists and `--watch`.
    pub fn summary(&self) -> String {
        use Event::*;
        match self {
            FeatureRequested {
                spec,
                feature_branch,
                ..
            } => {
                format!(
                    "feature requested: {:?} → branch {feature_branch}",
                    spec.title
                )
            }
            AnalysisStarted {} => "analysis started".into(),
            RepositoryCloneStarted { url, branch } => format!("cloning {url} ({branch})"),
            RepositoryCloneCompleted {
                head_sha,
                duration_ms,
            } => {
                format!("cloned at {} in {duration_ms} ms", short(head_sha))
            }
            CodebaseAnalyzed {
                languages,
                build_command,
                test_command,
                ..
            } => format!(
                "codebase: {} | build: {} | test: {}",
                languages.join(", "),
                build_command.as_deref().unwrap_or("none"),
                test_command.as_deref().unwrap_or("none")
            ),
            ScopeIdentified { files, .. } => {
                format!("scope: {} file(s): {}", files.len(), files.join(", "))
            }
            AnalysisCompleted { duration_ms } => format!("analysis completed in {duration_ms} ms"),
            AnalysisFailed { reason } => format!("analysis failed: {reason}"),
            PlanningStarted {} => "planning started".into(),
            LlmInvocationStarted {
                function,
                provider,
                model,
            } => format!("LLM {function} → {provider}/{model}"),
            LlmResponseReceived {
                function,
                latency_ms,
                attempts,
                ok,
                error,
                usage,
                ..
            } => {
                let cost = usage
                    .cost_usd
                    .map(|c| format!(", ${c:.4}"))
                    .unwrap_or_default();
                let tokens = format!(
                    "{} in / {} out tokens{cost}{}",
                    usage.input_tokens,
                    usage.output_tokens,
                    if usage.estimated { " (estimated)" } else { "" }
                );
                if *ok {
                    format!(
                        "LLM {function} answered in {latency_ms} ms ({attempts} attempt(s), {tokens})"
                    )
                } else {
                    format!(
                        "LLM {function} failed after {attempts} attempt(s) ({tokens}): {}",
                        error.as_deref().unwrap_or("?")
                    )
                }
            }
            LlmOutputPartial {
                function, chars, ..
            } => format!("LLM {function} writing… ({chars} characters so far)"),
            PlanStepDefined { step } => format!(
                "plan step {}: [{}] {}",
                step.index, step.step_type, step.description
            ),
            PlanGenerated { plan } => {
                format!("plan with {} step(s): {}", plan.steps.len(), plan.summary)
            }
            PlanningFailed { reason } => format!("planning failed: {reason}"),
            ExecutionStarted { iteration } => format!("execution started (iteration {iteration})"),
            StepStarted {
                index, description, ..
            } => format!("step {index} started: {description}"),
            CodeChangeGenerated {
                index,
                files,
                edit_count,
                ..
            } => {
                format!("step {index}: {edit_count} edit(s) to {}", files.join(", "))
            }
            FileModified { path, action, .. } => format!("{action} {path}"),
            StepCompleted { index, .. } => format!("step {index} completed"),
            StepFailed { index, reason, .. } => format!("step {index} failed: {reason}"),
            ExecutionCompleted {
                iteration,
                files_changed,
            } => {
                format!(
                    "execution completed (iteration {iteration}, {files_changed} file(s) changed)"
                )
            }
            ExecutionFailed { reason, .. } => format!("execution failed: {reason}"),
            VerificationStarted { iteration } => {
                format!("verification started (iteration {iteration})")
            }
            SandboxCreated { runtime, .. } => format!("sandbox created ({runtime})"),
            DependenciesStarted {
                command, baseline, ..
            } => format!("{}dependencies: {command}", prefix(*baseline)),
            DependenciesCompleted {
                success,
                duration_ms,
                baseline,
                ..
            } => format!(
                "{}dependencies {} in {duration_ms} ms",
                prefix(*baseline),
                if *success { "fetched" } else { "failed" }
            ),
            BuildStarted { command, baseline } => {
                format!("{}build: {command}", prefix(*baseline))
            }
            BuildCompleted {
                success,
                duration_ms,
                baseline,
                ..
            } => {
                format!(
                    "{}build {} in {duration_ms} ms",
                    prefix(*baseline),
                    if *success { "succeeded" } else { "failed" }
                )
            }
            TestsStarted { command, baseline } => {
                format!("{}tests: {command}", prefix(*baseline))
            }
            TestsCompleted {
                passed,
                failed,
                success,
                duration_ms,
                baseline,
                ..
            } => format!(
                "{}tests {}: {passed} passed, {failed} failed in {duration_ms} ms",
                prefix(*baseline),
                if *success { "passed" } else { "failed" }
            ),
            VerificationPassed { summary, .. } => format!("verification passed: {summary}"),
            VerificationFailed { reason, .. } => format!("verification failed: {reason}"),
            SandboxDestroyed {} => "sandbox destroyed".into(),
            IterationStarted { iteration, reason } => {
                format!("repair iteration {iteration}: {reason}")
            }
            IterationCompleted { iteration, outcome } => format!("iteration {iteration} {outcome}"),
            BranchCreated { branch, .. } => format!("branch {branch} created"),
            CommitCreated {
                sha,
                files_changed,
                lines_added,
                lines_removed,
                ..
            } => {
                format!(
                    "commit {} ({files_changed} file(s), +{lines_added} -{lines_removed})",
                    short(sha)
                )
            }
            PushStarted { branch, .. } => format!("pushing {branch}"),
            PushCompleted {
                branch,
                sha,
                already_present,
            } => format!(
                "pushed {branch} at {}{}",
                short(sha),
                if *already_present {
                    " (already on the remote)"
                } else {
                    ""
                }
            ),
            PushFailed { branch, reason, .. } => format!("push of {branch} failed: {reason}"),
            PullRequestOpened { url, created, .. } => {
                if *created {
                    format!("pull request opened: {url}")
                } else {
                    format!("pull request updated: {url}")
                }
            }
            PullRequestFailed { reason, .. } => format!("pull request not opened: {reason}"),
            StepWaiting { detail, .. } => detail.clone(),
            StepRetrying {
                step,
                attempt,
                error,
                delay_ms,
            } => {
                format!("{step}: attempt {attempt} failed ({error}); retrying in {delay_ms} ms")
            }
            FeatureDelivered { result } => format!(
                "delivered on {} at {}",
                result.branch_name,
                short(&result.commit_sha)
            ),
            FeatureFailed { error } => {
                format!("failed [{}]: {}", error.code.as_str(), error.message)
            }
            FeatureCancelled {
                reason,
                remote_state,
                ..
            } => {
                if remote_state.is_empty() {
                    format!("cancelled: {reason}")
                } else {
                    format!("cancelled: {reason} (remote: {remote_state})")
                }
            }
        }
    }
}

fn default_true() -> bool {
    true
}

fn short(sha: &str) -> &str {
    sha.get(..10).unwrap_or(sha)
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Which process wrote the event, e.g. `builder-worker/0.1.0`.
    pub producer: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub trace_context: Option<String>,
}

/// A stored (or about to be stored) event. `global_position` is assigned by the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope {
    pub event_id: Uuid,
    pub feature_id: FeatureId,
    /// Per feature, from 1, gapless.
    pub sequence: u64,
    pub event_type: String,
    pub schema_version: u32,
    pub timestamp: DateTime<Utc>,
    pub causation_id: Option<Uuid>,
    pub correlation_id: String,
    pub payload: serde_json::Value,
    pub metadata: EventMetadata,
    #[serde(default)]
    pub global_position: i64,
}

impl EventEnvelope {
    pub fn event(&self) -> Result<Event, serde_json::Error> {
        Event::from_parts(&self.event_type, &self.payload)
    }
}

/// What the caller supplies to stamp events: core has no clock and no randomness.
pub struct NewEvent<'a> {
    pub now: DateTime<Utc>,
    pub causation_id: Option<Uuid>,
    pub producer: &'a str,
    pub next_id: &'a mut (dyn FnMut() -> Uuid + Send),
}

#[cfg(test)]
mod tests;
