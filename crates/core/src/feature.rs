//! The feature state machine: `evolve` folds events into a [`Feature`], `Feature::prepare`
//! refuses any event that is illegal in the current state before it can be stored, and
//! `next_step` names the work a worker must do. Workers never decide by themselves what is
//! legal: they ask this module, so every backend and every worker agrees.

use crate::event::{
    DeliveryResult, Event, EventEnvelope, ExecutionError, ExecutionPlan, NewEvent, SCHEMA_VERSION,
};
use crate::ids::FeatureId;
use crate::spec::FeatureSpec;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FeatureState {
    Pending,
    Analyzing,
    Planning,
    Executing,
    Verifying,
    Completed,
    Failed,
    Cancelled,
}

impl FeatureState {
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            FeatureState::Completed | FeatureState::Failed | FeatureState::Cancelled
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            FeatureState::Pending => "PENDING",
            FeatureState::Analyzing => "ANALYZING",
            FeatureState::Planning => "PLANNING",
            FeatureState::Executing => "EXECUTING",
            FeatureState::Verifying => "VERIFYING",
            FeatureState::Completed => "COMPLETED",
            FeatureState::Failed => "FAILED",
            FeatureState::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(s: &str) -> Option<FeatureState> {
        Some(match s {
            "PENDING" => FeatureState::Pending,
            "ANALYZING" => FeatureState::Analyzing,
            "PLANNING" => FeatureState::Planning,
            "EXECUTING" => FeatureState::Executing,
            "VERIFYING" => FeatureState::Verifying,
            "COMPLETED" => FeatureState::Completed,
            "FAILED" => FeatureState::Failed,
            "CANCELLED" => FeatureState::Cancelled,
            _ => return None,
        })
    }

    /// The phase name used in error and cancellation payloads.
    pub fn phase(&self) -> &'static str {
        match self {
            FeatureState::Pending => "pending",
            FeatureState::Analyzing => "analysis",
            FeatureState::Planning => "planning",
            FeatureState::Executing => "execution",
            FeatureState::Verifying => "verification",
            FeatureState::Completed | FeatureState::Failed | FeatureState::Cancelled => "terminal",
        }
    }
}

/// What the worker must do next for a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextStep {
    /// Clone, detect, scope (from PENDING or an interrupted analysis).
    Analyze,
    Plan,
    /// Generate and apply edits for this iteration (1 = first attempt).
    Execute {
        iteration: u32,
    },
    Verify {
        iteration: u32,
    },
    /// Verification failed with iterations left: record `iteration.started` for this one.
    Repair {
        iteration: u32,
    },
    /// Verification failed and no iteration is left.
    GiveUp,
    /// Verification passed: branch, commit, push, PR.
    Deliver,
    /// Terminal: nothing to do.
    Done,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{event_type} is not allowed in state {state}: {reason}")]
pub struct TransitionError {
    pub event_type: String,
    pub state: &'static str,
    pub reason: String,
}

/// A feature execution as the fold of its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Feature {
    pub id: FeatureId,
    pub correlation_id: String,
    pub spec: FeatureSpec,
    pub target_branch: String,
    pub feature_branch: String,
    pub max_iterations: u32,
    pub idempotency_key: String,
    pub state: FeatureState,
    /// Sequence of the last applied event (0 before the first).
    pub version: u64,
    pub analysis_done: bool,
    pub plan: Option<ExecutionPlan>,
    /// Current attempt, 1-based; 0 before execution starts.
    pub iteration: u32,
    pub execution_done: bool,
    /// Outcome of the current iteration's verification, once known.
    pub verification: Option<bool>,
    pub repair_pending: bool,
    pub last_failure: Option<String>,
    pub completed_steps: u32,
    pub current_step: Option<u32>,
    pub current_step_description: String,
    pub commit_sha: Option<String>,
    pub pushed: bool,
    #[serde(default)]
    pub push_started: bool,
    /// A pull request was opened, updated, or refused: not to be tried again on resume.
    #[serde(default)]
    pub pull_request_attempted: bool,
    pub pull_request_url: Option<String>,
    /// Set while the current step waits for a shared resource.
    #[serde(default)]
    pub waiting_for: Option<String>,
    /// What the feature's LLM calls consumed so far: what its budgets are checked against.
    #[serde(default)]
    pub llm_usage: crate::event::LlmUsage,
    pub error: Option<ExecutionError>,
    pub result: Option<DeliveryResult>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// The result of checking events against the state machine before storing them.
pub struct Transition {
    pub envelopes: Vec<EventEnvelope>,
    pub feature: Feature,
}

impl Feature {
    /// Folds a whole stream. The first event must be `feature.requested`.
    pub fn from_events(events: &[EventEnvelope]) -> Result<Feature, TransitionError> {
        let mut iter = events.iter();
        let first = iter.next().ok_or_else(|| TransitionError {
            event_type: String::new(),
            state: "NONE",
            reason: "a stream must start with feature.requested".into(),
        })?;
        let mut feature = Feature::start(first)?;
        for env in iter {
            feature.apply(env)?;
        }
        Ok(feature)
    }

    fn start(env: &EventEnvelope) -> Result<Feature, TransitionError> {
        let parsed = parse(env)?;
        match parsed {
            Event::FeatureRequested {
                spec,
                target_branch,
                feature_branch,
                max_iterations,
                idempotency_key,
                ..
            } => {
                if env.sequence != 1 {
                    return Err(TransitionError {
                        event_type: env.event_type.clone(),
                        state: "NONE",
                        reason: format!(
                            "the first event must have sequence 1, not {}",
                            env.sequence
                        ),
                    });
                }
                Ok(Feature {
                    id: env.feature_id,
                    correlation_id: env.correlation_id.clone(),
                    spec,
                    target_branch,
                    feature_branch,
                    max_iterations,
                    idempotency_key,
                    state: FeatureState::Pending,
                    version: 1,
                    analysis_done: false,
                    plan: None,
                    iteration: 0,
                    execution_done: false,
                    verification: None,
                    repair_pending: false,
                    last_failure: None,
                    completed_steps: 0,
                    current_step: None,
                    current_step_description: String::new(),
                    commit_sha: None,
                    pushed: false,
                    push_started: false,
                    pull_request_attempted: false,
                    pull_request_url: None,
                    waiting_for: None,
                    llm_usage: Default::default(),
                    error: None,
                    result: None,
                    created_at: env.timestamp,
                    updated_at: env.timestamp,
                    completed_at: None,
                })
            }
            _ => Err(TransitionError {
                event_type: env.event_type.clone(),
                state: "NONE",
                reason: "a stream must start with feature.requested".into(),
            }),
        }
    }

    /// Stamps the first event of a new stream (which must be `feature.requested`).
    pub fn request(
        id: FeatureId,
        correlation_id: &str,
        requested: Event,
        ctx: &mut NewEvent<'_>,
    ) -> Result<Transition, TransitionError> {
        let (event_type, payload) = requested.to_parts().map_err(|e| TransitionError {
            event_type: "feature.requested".into(),
            state: "NONE",
            reason: format!("event does not serialise: {e}"),
        })?;
        let envelope = EventEnvelope {
            event_id: (ctx.next_id)(),
            feature_id: id,
            sequence: 1,
            event_type,
            schema_version: SCHEMA_VERSION,
            timestamp: ctx.now,
            causation_id: ctx.causation_id,
            correlation_id: correlation_id.to_string(),
            payload,
            metadata: crate::event::EventMetadata {
                producer: ctx.producer.to_string(),
                tags: Vec::new(),
                trace_context: None,
            },
            global_position: 0,
        };
        let feature = Feature::start(&envelope)?;
        Ok(Transition {
            envelopes: vec![envelope],
            feature,
        })
    }

    /// Applies one stored event; its sequence must follow the current version.
    pub fn apply(&mut self, env: &EventEnvelope) -> Result<(), TransitionError> {
        if env.sequence != self.version + 1 {
            return Err(self.illegal(
                &env.event_type,
                format!("sequence {} does not follow {}", env.sequence, self.version),
            ));
        }
        let event = parse(env)?;
        self.evolve(&event, env.timestamp)?;
        self.version = env.sequence;
        Ok(())
    }

    /// Stamps `events` as the next envelopes of this stream, checking each against the state
    /// machine. Nothing is returned unless every event is legal in order.
    pub fn prepare(
        &self,
        events: Vec<Event>,
        ctx: &mut NewEvent<'_>,
    ) -> Result<Transition, TransitionError> {
        let mut next = self.clone();
        let mut envelopes = Vec::with_capacity(events.len());
        for event in events {
            let (event_type, payload) = event
                .to_parts()
                .map_err(|e| self.illegal("?", format!("event does not serialise: {e}")))?;
            next.evolve(&event, ctx.now)?;
            next.version += 1;
            envelopes.push(EventEnvelope {
                event_id: (ctx.next_id)(),
                feature_id: self.id,
                sequence: next.version,
                event_type,
                schema_version: SCHEMA_VERSION,
                timestamp: ctx.now,
                causation_id: ctx.causation_id,
                correlation_id: self.correlation_id.clone(),
                payload,
                metadata: crate::event::EventMetadata {
                    producer: ctx.producer.to_string(),
                    tags: Vec::new(),
                    trace_context: None,
                },
                global_position: 0,
            });
        }
        Ok(Transition {
            envelopes,
            feature: next,
        })
    }

    fn illegal(&self, event_type: &str, reason: impl Into<String>) -> TransitionError {
        TransitionError {
            event_type: event_type.to_string(),
            state: self.state.as_str(),
            reason: reason.into(),
        }
    }

    fn require(&self, ok: bool, event: &Event, reason: &str) -> Result<(), TransitionError> {
        if ok {
            Ok(())
        } else {
            Err(self.illegal(&event.event_type(), reason))
        }
    }

    fn in_states(&self, event: &Event, states: &[FeatureState]) -> Result<(), TransitionError> {
        if states.contains(&self.state) {
            Ok(())
        } else {
            let names: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
            Err(self.illegal(
                &event.event_type(),
                format!("only allowed in {}", names.join(", ")),
            ))
        }
    }

    /// The transition function. Public for tests and tools; `apply`/`prepare` are the doors.
    pub fn evolve(&mut self, event: &Event, at: DateTime<Utc>) -> Result<(), TransitionError> {
        use Event::*;
        use FeatureState as S;
        // The baseline runs beside the feature's steps and is recorded as it happens, even
        // after the feature ended (its result still tells what the untouched code did); it
        // changes nothing that decides the next step.
        if event.is_baseline() {
            return if self.state == S::Pending {
                Err(self.illegal(&event.event_type(), "analysis has not started"))
            } else {
                Ok(())
            };
        }
        if self.state.is_terminal() {
            return Err(self.illegal(&event.event_type(), "the feature has ended"));
        }
        // Any progress ends a wait; `step.waiting` sets it again below.
        self.waiting_for = None;
        match event {
            FeatureRequested { .. } => {
                return Err(self.illegal("feature.requested", "the feature already exists"));
            }
            AnalysisStarted {} => {
                self.in_states(event, &[S::Pending, S::Analyzing])?;
                self.state = S::Analyzing;
            }
            RepositoryCloneStarted { .. }
            | RepositoryCloneCompleted { .. }
            | CodebaseAnalyzed { .. }
            | ScopeIdentified { .. }
            | AnalysisFailed { .. } => {
                self.in_states(event, &[S::Analyzing])?;
                self.require(!self.analysis_done, event, "analysis has already completed")?;
            }
            AnalysisCompleted { .. } => {
                self.in_states(event, &[S::Analyzing])?;
                self.analysis_done = true;
            }
            PlanningStarted {} => {
                self.in_states(event, &[S::Analyzing, S::Planning])?;
                self.require(self.analysis_done, event, "analysis has not completed")?;
                self.state = S::Planning;
            }
            LlmInvocationStarted { .. } | LlmOutputPartial { .. } => {
                self.in_states(
                    event,
                    &[S::Analyzing, S::Planning, S::Executing, S::Verifying],
                )?;
            }
            LlmResponseReceived { usage, .. } => {
                self.in_states(
                    event,
                    &[S::Analyzing, S::Planning, S::Executing, S::Verifying],
                )?;
                self.llm_usage.add(usage);
            }
            PlanStepDefined { .. } | PlanningFailed { .. } => {
                self.in_states(event, &[S::Planning])?;
                self.require(self.plan.is_none(), event, "the plan is already generated")?;
            }
            PlanGenerated { plan } => {
                self.in_states(event, &[S::Planning])?;
                self.require(self.plan.is_none(), event, "the plan is already generated")?;
                self.require(
                    !plan.steps.is_empty(),
                    event,
                    "a plan needs at least one step",
                )?;
                self.plan = Some(plan.clone());
            }
            ExecutionStarted { iteration } => {
                match self.state {
                    S::Planning => {
                        self.require(self.plan.is_some(), event, "no plan yet")?;
                        self.require(*iteration == 1, event, "the first execution is iteration 1")?;
                    }
                    S::Verifying => {
                        self.require(
                            self.repair_pending,
                            event,
                            "no repair iteration was started",
                        )?;
                        self.require(
                            *iteration == self.iteration,
                            event,
                            "iteration does not match iteration.started",
                        )?;
                    }
                    S::Executing => {
                        // A resumed execution restarts the same iteration.
                        self.require(
                            *iteration == self.iteration,
                            event,
                            "iteration does not match the current one",
                        )?;
                        self.require(
                            !self.execution_done,
                            event,
                            "execution has already completed",
                        )?;
                    }
                    _ => {
                        return Err(self.illegal(
                            "execution.started",
                            "only after planning or a repair iteration",
                        ));
                    }
                }
                self.state = S::Executing;
                self.iteration = *iteration;
                self.repair_pending = false;
                self.execution_done = false;
                self.verification = None;
                self.completed_steps = 0;
                self.current_step = None;
            }
            StepStarted {
                iteration,
                index,
                description,
                ..
            } => {
                self.in_states(event, &[S::Executing])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                self.require(
                    !self.execution_done,
                    event,
                    "execution has already completed",
                )?;
                self.current_step = Some(*index);
                self.current_step_description = description.clone();
            }
            CodeChangeGenerated { iteration, .. }
            | StepFailed { iteration, .. }
            | ExecutionFailed { iteration, .. } => {
                self.in_states(event, &[S::Executing])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
            }
            FileModified { .. } => {
                self.in_states(event, &[S::Executing])?;
                self.require(
                    !self.execution_done,
                    event,
                    "execution has already completed",
                )?;
            }
            StepCompleted { iteration, .. } => {
                self.in_states(event, &[S::Executing])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                self.completed_steps += 1;
            }
            ExecutionCompleted { iteration, .. } => {
                self.in_states(event, &[S::Executing])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                self.execution_done = true;
            }
            VerificationStarted { iteration } => {
                self.in_states(event, &[S::Executing, S::Verifying])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                if self.state == S::Executing {
                    self.require(self.execution_done, event, "execution has not completed")?;
                } else {
                    self.require(
                        self.verification.is_none() && !self.repair_pending,
                        event,
                        "verification already decided",
                    )?;
                }
                self.state = S::Verifying;
            }
            SandboxCreated { .. }
            | DependenciesStarted { .. }
            | DependenciesCompleted { .. }
            | BuildStarted { .. }
            | BuildCompleted { .. }
            | TestsStarted { .. }
            | TestsCompleted { .. }
            | SandboxDestroyed {} => {
                self.in_states(event, &[S::Verifying])?;
            }
            VerificationPassed { iteration, .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                self.require(
                    self.verification.is_none(),
                    event,
                    "verification already decided",
                )?;
                self.verification = Some(true);
                self.last_failure = None;
            }
            VerificationFailed {
                iteration,
                reason,
                output,
            } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(*iteration == self.iteration, event, "wrong iteration")?;
                self.require(
                    self.verification.is_none(),
                    event,
                    "verification already decided",
                )?;
                self.verification = Some(false);
                self.last_failure = Some(format!("{reason}\n{output}"));
            }
            IterationStarted { iteration, .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(
                    self.verification == Some(false),
                    event,
                    "only after a failed verification",
                )?;
                self.require(
                    *iteration == self.iteration + 1,
                    event,
                    "iterations are consecutive",
                )?;
                self.require(
                    self.iteration <= self.max_iterations,
                    event,
                    "no repair iteration left",
                )?;
                self.iteration = *iteration;
                self.repair_pending = true;
            }
            IterationCompleted { .. } => {
                self.in_states(event, &[S::Verifying])?;
            }
            BranchCreated { .. }
            | CommitCreated { .. }
            | PushStarted { .. }
            | PushFailed { .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(
                    self.verification == Some(true),
                    event,
                    "verification has not passed",
                )?;
                match event {
                    CommitCreated { sha, .. } => self.commit_sha = Some(sha.clone()),
                    PushStarted { .. } => self.push_started = true,
                    _ => {}
                }
            }
            PushCompleted { sha, .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(
                    self.verification == Some(true),
                    event,
                    "verification has not passed",
                )?;
                self.require(
                    self.commit_sha.as_deref() == Some(sha.as_str()),
                    event,
                    "pushed a commit that was not recorded",
                )?;
                self.pushed = true;
            }
            PullRequestOpened { url, .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(self.pushed, event, "the branch is not pushed")?;
                self.pull_request_url = Some(url.clone());
                self.pull_request_attempted = true;
            }
            PullRequestFailed { .. } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(self.pushed, event, "the branch is not pushed")?;
                self.pull_request_attempted = true;
            }
            FeatureDelivered { result } => {
                self.in_states(event, &[S::Verifying])?;
                self.require(self.pushed, event, "the branch is not pushed")?;
                self.state = S::Completed;
                self.result = Some(result.clone());
                self.completed_at = Some(at);
            }
            StepWaiting { detail, .. } => {
                self.require(
                    self.state != S::Pending,
                    event,
                    "nothing runs before analysis starts",
                )?;
                self.waiting_for = Some(detail.clone());
            }
            StepRetrying { .. } => {
                self.require(
                    self.state != S::Pending,
                    event,
                    "nothing runs before analysis starts",
                )?;
            }
            FeatureFailed { error } => {
                self.state = S::Failed;
                self.error = Some(error.clone());
                self.completed_at = Some(at);
            }
            FeatureCancelled { .. } => {
                self.state = S::Cancelled;
                self.completed_at = Some(at);
            }
        }
        self.updated_at = at;
        Ok(())
    }

    pub fn next_step(&self) -> NextStep {
        use FeatureState as S;
        match self.state {
            S::Completed | S::Failed | S::Cancelled => NextStep::Done,
            S::Pending => NextStep::Analyze,
            S::Analyzing if !self.analysis_done => NextStep::Analyze,
            S::Analyzing => NextStep::Plan,
            S::Planning if self.plan.is_none() => NextStep::Plan,
            S::Planning => NextStep::Execute { iteration: 1 },
            S::Executing if !self.execution_done => NextStep::Execute {
                iteration: self.iteration,
            },
            S::Executing => NextStep::Verify {
                iteration: self.iteration,
            },
            S::Verifying => {
                if self.repair_pending {
                    return NextStep::Execute {
                        iteration: self.iteration,
                    };
                }
                match self.verification {
                    None => NextStep::Verify {
                        iteration: self.iteration,
                    },
                    Some(true) => NextStep::Deliver,
                    // max_iterations counts repairs after the first attempt.
                    Some(false) if self.iteration <= self.max_iterations => NextStep::Repair {
                        iteration: self.iteration + 1,
                    },
                    Some(false) => NextStep::GiveUp,
                }
            }
        }
    }

    /// What this feature has done to the remote so far, in words.
    pub fn remote_state(&self) -> String {
        match (&self.commit_sha, self.pushed, self.push_started) {
            (Some(sha), true, _) => format!("branch {} pushed at {sha}", self.feature_branch),
            (Some(sha), false, true) => format!(
                "a push of {sha} to {} was in flight; the remote may or may not hold it",
                self.feature_branch
            ),
            _ => "untouched: nothing was pushed".to_string(),
        }
    }

    /// Percent of plan steps done in the current iteration (verification counts as the rest).
    pub fn percent_complete(&self) -> u32 {
        match self.state {
            FeatureState::Completed => 100,
            FeatureState::Pending => 0,
            FeatureState::Analyzing => 5,
            FeatureState::Planning => 15,
            FeatureState::Executing => {
                let total = self
                    .plan
                    .as_ref()
                    .map(|p| p.steps.len() as u32)
                    .unwrap_or(1)
                    .max(1);
                20 + 50 * self.completed_steps.min(total) / total
            }
            FeatureState::Verifying => 80,
            FeatureState::Failed | FeatureState::Cancelled => self.progress_before_end(),
        }
    }

    fn progress_before_end(&self) -> u32 {
        if self.verification.is_some() {
            80
        } else if self.plan.is_some() {
            20
        } else {
            0
        }
    }
}

fn parse(env: &EventEnvelope) -> Result<Event, TransitionError> {
    env.event().map_err(|e| TransitionError {
        event_type: env.event_type.clone(),
        state: "?",
        reason: format!("payload does not match the event type: {e}"),
    })
}

#[cfg(test)]
mod tests;
