//! One function per step of the feature state machine. Each appends its events as it goes,
//! so a watcher sees progress live and a crash loses at most the step in flight.

use crate::checks::{
    Baseline, BaselineMode, EVENT_OUTPUT_BYTES, build_checked, not_caused_by_the_change,
    output_for_model, tests_checked,
};
use crate::{Llm, PRODUCER, StepError, Worker};
use builder_core::event::{
    DeliveryResult, ErrorCode, Event, ExecutionError, ExecutionPlan, LlmUsage, PlanStep,
};
use builder_core::spec::{
    LLM_MAX_COST_PROPERTY, LLM_MODEL_PROPERTY, LLM_PROFILE_PROPERTY, parse_cost,
};
use builder_core::{
    Credential, EventEnvelope, Feature, FeatureState, NextStep, Repository, RepositoryState,
};
use builder_git::GitCredential;
use builder_llm::{Budget, Called, LlmClient, LlmError, UsageLedger};
use builder_sandbox::ExecOutcome;
use builder_testreport::TestFramework;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

mod analyze;
mod deliver;
mod execute;
mod plan;
mod verify;

/// `llm.output.partial` events recorded per LLM call at most.
const MAX_PARTIAL_EVENTS: usize = 40;
/// Partial answers larger than this are recorded by their length only.
const PARTIAL_EVENT_CHARS: usize = 16 * 1024;

/// The next message of an optional channel; never, without one.
async fn next<T>(rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Attempts of a git network operation before a transient failure fails the feature.
const MAX_ATTEMPTS: u32 = 4;

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Resource {
    Sandbox,
    Llm,
}

pub(crate) async fn run(
    w: &Worker,
    feature: Feature,
    events: Vec<EventEnvelope>,
    step: NextStep,
) -> Result<(), StepError> {
    let (retry_tx, retry_rx) = tokio::sync::mpsc::unbounded_channel();
    let (partial_tx, partial_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut run = Run {
        w,
        feature,
        events,
        retry_tx,
        retry_rx: Some(retry_rx),
        partial_tx,
        partial_rx: Some(partial_rx),
        ledger: UsageLedger::new(),
        llm_label: (String::new(), String::new()),
    };
    match step {
        NextStep::Analyze => run.analyze().await,
        NextStep::Plan => run.plan().await,
        NextStep::Execute { iteration } => run.execute(iteration).await,
        NextStep::Verify { iteration } => run.verify(iteration).await,
        NextStep::Repair { iteration } => run.repair(iteration).await,
        NextStep::GiveUp => run.give_up().await,
        NextStep::Deliver => run.deliver().await,
        NextStep::Done => Ok(()),
    }
}

struct Run<'a> {
    w: &'a Worker,
    feature: Feature,
    events: Vec<EventEnvelope>,
    /// The LLM client reports each retried attempt here; `call` records them as events.
    retry_tx: tokio::sync::mpsc::UnboundedSender<builder_llm::RetryNotice>,
    retry_rx: Option<tokio::sync::mpsc::UnboundedReceiver<builder_llm::RetryNotice>>,
    partial_tx: tokio::sync::mpsc::UnboundedSender<builder_llm::Partial>,
    partial_rx: Option<tokio::sync::mpsc::UnboundedReceiver<builder_llm::Partial>>,
    /// The usage of the current client's calls (set by [`Run::llm`]).
    ledger: UsageLedger,
    /// Provider and model asked first by the current client.
    llm_label: (String, String),
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

impl Run<'_> {
    async fn emit(&mut self, events: Vec<Event>) -> Result<(), StepError> {
        loop {
            match builder_store::append_events(
                &*self.w.store,
                &self.feature,
                events.clone(),
                None,
                PRODUCER,
            )
            .await
            {
                Ok(t) => {
                    self.feature = t.feature;
                    self.events.extend(t.envelopes);
                    return Ok(());
                }
                // The baseline records itself beside the step; only that may have moved the
                // stream for the step to go on with its view.
                Err(builder_store::AppendError::Conflict) => {
                    if !self.catch_up().await? {
                        return Err(StepError::Conflict);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes in the events appended since this step loaded the stream when every one of
    /// them is a baseline record (which changes no state). `false` when something else
    /// moved the feature (a cancel, another worker) or nothing did.
    async fn catch_up(&mut self) -> Result<bool, StepError> {
        let newer = self
            .w
            .store
            .read_stream(self.feature.id, self.feature.version)
            .await
            .map_err(|e| StepError::Infrastructure(e.to_string()))?;
        if newer.is_empty()
            || !newer
                .iter()
                .all(|e| e.event().is_ok_and(|e| e.is_baseline()))
        {
            return Ok(false);
        }
        for env in newer {
            self.feature
                .apply(&env)
                .map_err(|e| StepError::Infrastructure(format!("the stream does not fold: {e}")))?;
            self.events.push(env);
        }
        Ok(true)
    }

    /// The last event of the stream for which `f` returns something.
    fn last<T>(&self, f: impl Fn(Event) -> Option<T>) -> Option<T> {
        self.events
            .iter()
            .rev()
            .filter_map(|e| e.event().ok())
            .find_map(f)
    }

    async fn fail(
        &mut self,
        phase_event: Option<Event>,
        code: ErrorCode,
        message: impl Into<String>,
        details: impl Into<String>,
        retryable: bool,
    ) -> Result<(), StepError> {
        let mut events: Vec<Event> = phase_event.into_iter().collect();
        events.push(Event::FeatureFailed {
            error: ExecutionError {
                code,
                message: message.into(),
                details: output_for_model(&details.into(), false, EVENT_OUTPUT_BYTES),
                retryable,
                failed_step: self.feature.state.phase().to_string(),
            },
        });
        self.emit(events).await
    }

    /// Waits for a shared slot; when none is free the wait itself is an event, so users
    /// see why nothing moves.
    async fn slot(&mut self, resource: Resource) -> Result<Vec<OwnedSemaphorePermit>, StepError> {
        let repo = self.feature.spec.repository_id;
        let (what, global, global_total, per_repo_total) = match resource {
            Resource::Sandbox => (
                "sandbox",
                self.w.sandbox_slots.clone(),
                self.w.config.max_concurrent_sandboxes,
                self.w.config.max_sandboxes_per_repository,
            ),
            Resource::Llm => (
                "LLM",
                self.w.llm_slots.clone(),
                self.w.config.max_concurrent_llm_calls,
                self.w.config.max_llm_calls_per_repository,
            ),
        };
        let per_repo = self.w.repository_slots(resource, repo, per_repo_total);
        // The repository's own cap first, so one busy repository queues behind itself and
        // does not hold global slots while it waits.
        let mut permits = Vec::with_capacity(2);
        for (semaphore, total, scope) in [
            (per_repo, per_repo_total, "for this repository"),
            (global, global_total, "in total"),
        ] {
            if let Ok(permit) = semaphore.clone().try_acquire_owned() {
                permits.push(permit);
                continue;
            }
            self.emit(vec![Event::StepWaiting {
                resource: what.to_lowercase(),
                detail: format!("waiting for a {what} slot (all {total} {scope} in use)"),
            }])
            .await?;
            permits.push(
                semaphore.acquire_owned().await.map_err(|_| {
                    StepError::Infrastructure(format!("the {what} slots were closed"))
                })?,
            );
        }
        Ok(permits)
    }

    /// Records a transient failure and sleeps an exponential, jittered delay.
    async fn backoff(&mut self, step: &str, attempt: u32, error: &str) -> Result<(), StepError> {
        let base = 500u64 << (attempt - 1).min(5);
        // Jitter from the random tail of a UUIDv7: spreads retries of many features.
        let jitter = (uuid::Uuid::now_v7().as_u128() as u64) % (base / 2 + 1);
        let delay_ms = base + jitter;
        self.emit(vec![Event::StepRetrying {
            step: step.to_string(),
            attempt,
            error: error.to_string(),
            delay_ms,
        }])
        .await?;
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        Ok(())
    }

    /// Whether this execution retries an earlier one from `phase` or later.
    fn retry_from_at_least(&self, phase: &str) -> bool {
        const ORDER: [&str; 3] = ["analysis", "planning", "execution"];
        let Some(Event::FeatureRequested {
            retry_of: Some(_),
            retry_from,
            ..
        }) = self.events.first().and_then(|e| e.event().ok())
        else {
            return false;
        };
        let rank = |p: &str| ORDER.iter().position(|x| *x == p);
        matches!((rank(&retry_from), rank(phase)), (Some(a), Some(b)) if a >= b)
    }

    /// The events of the retried execution that `pick` selects, to be recorded again here.
    /// `None` when they are gone: the feature has then failed, saying why.
    async fn take_over(
        &mut self,
        pick: impl Fn(&Event) -> bool,
    ) -> Result<Option<Vec<Event>>, StepError> {
        let Some(Event::FeatureRequested {
            retry_of: Some(old),
            ..
        }) = self.events.first().and_then(|e| e.event().ok())
        else {
            return Ok(Some(Vec::new()));
        };
        let old_events = self
            .w
            .store
            .read_stream(old, 0)
            .await
            .map_err(|e| StepError::Infrastructure(e.to_string()))?;
        let taken: Vec<Event> = old_events
            .iter()
            .filter_map(|e| e.event().ok())
            .filter(|e| pick(e))
            .collect();
        if taken.is_empty() {
            let reason = format!("the retried execution {old} has no results to take over");
            self.fail(None, ErrorCode::Internal, reason, "", false)
                .await?;
            return Ok(None);
        }
        Ok(Some(taken))
    }

    async fn fail_analysis(
        &mut self,
        code: ErrorCode,
        reason: String,
        retryable: bool,
    ) -> Result<(), StepError> {
        self.fail(
            Some(Event::AnalysisFailed {
                reason: reason.clone(),
            }),
            code,
            reason,
            "",
            retryable,
        )
        .await
    }

    async fn fail_planning(
        &mut self,
        code: ErrorCode,
        reason: String,
        retryable: bool,
    ) -> Result<(), StepError> {
        self.fail(
            Some(Event::PlanningFailed {
                reason: reason.clone(),
            }),
            code,
            reason,
            "",
            retryable,
        )
        .await
    }

    fn workdir(&self) -> PathBuf {
        self.w.workdir(self.feature.id)
    }

    fn request(&self) -> builder_llm::FeatureRequest {
        let s = &self.feature.spec;
        builder_llm::FeatureRequest {
            title: s.title.clone(),
            description: s.description.clone(),
            acceptance_criteria: s.acceptance_criteria.clone(),
            path_hints: s.path_hints.clone(),
        }
    }

    /// A property of the feature, else of its repository.
    fn property<'p>(&'p self, repo: Option<&'p Repository>, key: &str) -> Option<&'p str> {
        self.feature
            .spec
            .properties
            .get(key)
            .or_else(|| repo.and_then(|r| r.properties.get(key)))
            .map(String::as_str)
    }

    /// A client for the feature's provider chain (its or its repository's `llm.profile` and
    /// `llm.model`, then the configured fallbacks), priced and held to its budgets. Its
    /// usage is read by [`Run::call`].
    async fn llm(&mut self) -> Result<LlmClient, String> {
        let (sidecar, config) = match &self.w.llm {
            Llm::Ready { sidecar, config } => (sidecar.clone(), config.clone()),
            Llm::Replay(replay) => {
                self.llm_label = ("replay".into(), "transcript".into());
                return Ok(LlmClient::replay(replay.clone()));
            }
            Llm::Unavailable(why) => return Err(why.clone()),
        };
        let repo = self
            .w
            .store
            .get_repository(self.feature.spec.repository_id)
            .await
            .map_err(|e| format!("reading the repository: {e}"))?;
        let chain = config
            .chain(
                self.property(repo.as_ref(), LLM_PROFILE_PROPERTY),
                self.property(repo.as_ref(), LLM_MODEL_PROPERTY),
            )
            .map_err(|e| e.to_string())?;
        let budget = self.budget(&config, repo.as_ref()).await?;
        self.llm_label = (chain[0].provider.clone(), chain[0].model.clone());
        self.ledger = UsageLedger::new();
        let client = sidecar
            .client_chain(chain)
            .with_prices(config.prices.clone())
            .with_budget(budget)
            .with_ledger(self.ledger.clone())
            .with_retry_observer(self.retry_tx.clone());
        Ok(if self.w.config.llm_stream {
            client.with_partial_observer(self.partial_tx.clone())
        } else {
            client
        })
    }

    /// What the feature may still spend: `constraints.max_llm_tokens`, its cost cap and its
    /// repository's, less what was spent (the repository's across all its features).
    async fn budget(
        &self,
        config: &builder_llm::LlmConfig,
        repo: Option<&Repository>,
    ) -> Result<Budget, String> {
        let used = &self.feature.llm_usage;
        let mut budget = Budget::unlimited();
        let max_tokens = self.feature.spec.constraints.max_llm_tokens;
        if max_tokens > 0 {
            budget = budget.limit_tokens(
                max_tokens.saturating_sub(used.total_tokens()),
                format!("the feature's token budget (constraints.max_llm_tokens = {max_tokens})"),
            );
        }
        let feature_cap = match self.feature.spec.properties.get(LLM_MAX_COST_PROPERTY) {
            Some(v) => Some((parse_cost(v)?, "feature property")),
            None => config
                .budgets
                .feature_max_cost_usd
                .map(|c| (c, "configured feature default")),
        };
        if let Some((cap, from)) = feature_cap {
            let spent = used.cost_usd.ok_or_else(|| {
                "the feature has a cost budget but its spending so far is unknown (a model without a price in the price table)".to_string()
            })?;
            budget = budget.limit_cost(
                cap - spent,
                format!("the feature's cost budget ({LLM_MAX_COST_PROPERTY} = {cap} USD, {from})"),
            );
        }
        let repo_cap = match repo.and_then(|r| r.properties.get(LLM_MAX_COST_PROPERTY)) {
            Some(v) => Some((parse_cost(v)?, "repository property")),
            None => config
                .budgets
                .repository_max_cost_usd
                .map(|c| (c, "configured repository default")),
        };
        if let Some((cap, from)) = repo_cap {
            let spent = self.repository_spend().await?;
            budget = budget.limit_cost(
                cap - spent,
                format!(
                    "the repository's cost budget ({LLM_MAX_COST_PROPERTY} = {cap} USD, {from}; {spent:.4} USD spent)"
                ),
            );
        }
        Ok(budget)
    }

    /// US dollars all features of this repository have spent on LLM calls.
    async fn repository_spend(&self) -> Result<f64, String> {
        let mut spent = 0.0;
        let mut query = builder_store::FeatureQuery {
            repository_id: Some(self.feature.spec.repository_id),
            limit: builder_store::FeatureQuery::MAX_LIMIT,
            ..Default::default()
        };
        loop {
            let page = self
                .w
                .store
                .search(&query)
                .await
                .map_err(|e| format!("reading the repository's LLM spending: {e}"))?;
            for f in &page {
                // This run's figures are fresher than the stored projection's.
                let usage = if f.id == self.feature.id {
                    &self.feature.llm_usage
                } else {
                    &f.llm_usage
                };
                spent += usage.cost_usd.unwrap_or(0.0);
            }
            if page.len() < query.limit as usize {
                return Ok(spent);
            }
            query.offset += query.limit;
        }
    }

    /// Wraps one LLM call in its invocation/response events.
    async fn call<T>(
        &mut self,
        function: &str,
        fut: impl std::future::Future<Output = Result<Called<T>, LlmError>>,
    ) -> Result<Result<T, LlmError>, StepError> {
        let (provider, model) = self.llm_label.clone();
        // The client's ledger then holds this call's requests only.
        self.ledger.take();
        let _slot = self.slot(Resource::Llm).await?;
        self.emit(vec![Event::LlmInvocationStarted {
            function: function.into(),
            provider: provider.clone(),
            model: model.clone(),
        }])
        .await?;
        let started = Instant::now();
        // Each retried attempt (429, overload, unparseable output) becomes a `step.retrying`
        // event while the call goes on.
        let mut notices = self.retry_rx.take();
        // Partial answers become `llm.output.partial` events as the model writes.
        let mut partials = self.partial_rx.take();
        let mut partial_events = 0usize;
        let mut fut = std::pin::pin!(fut);
        let result = loop {
            let event = tokio::select! {
                r = &mut fut => break r,
                Some(n) = next(&mut notices) => Event::StepRetrying {
                    step: format!("LLM {}", n.function),
                    attempt: n.attempt,
                    error: n.error,
                    delay_ms: n.delay_ms,
                },
                Some(p) = next(&mut partials) => {
                    // The client sends at most one every interval; this bounds a long answer.
                    partial_events += 1;
                    if partial_events > MAX_PARTIAL_EVENTS {
                        continue;
                    }
                    Event::LlmOutputPartial {
                        function: p.function.to_string(),
                        attempt: p.attempt,
                        chars: p.chars as u64,
                        partial: (p.chars <= PARTIAL_EVENT_CHARS).then_some(p.value),
                    }
                },
            };
            if let Err(e) = self.emit(vec![event]).await {
                self.retry_rx = notices;
                self.partial_rx = partials;
                return Err(e);
            }
        };
        // A partial that raced the answer is superseded by it.
        if let Some(rx) = partials.as_mut() {
            while rx.try_recv().is_ok() {}
        }
        self.partial_rx = partials;
        // Notices sent just before the call returned still belong to it.
        let mut late = Vec::new();
        if let Some(rx) = notices.as_mut() {
            while let Ok(n) = rx.try_recv() {
                late.push(Event::StepRetrying {
                    step: format!("LLM {}", n.function),
                    attempt: n.attempt,
                    error: n.error,
                    delay_ms: n.delay_ms,
                });
            }
        }
        self.retry_rx = notices;
        if !late.is_empty() {
            self.emit(late).await?;
        }
        if let Ok(called) = &result {
            // The transcript makes the feature replayable without a model.
            let line = builder_llm::transcript_line(function, &called.raw);
            self.append_artifact(builder_llm::TRANSCRIPT_FILE, &line)
                .await;
        }
        let (attempts, ok, error, provider, model) = match &result {
            // A fallback may have answered.
            Ok(c) => (c.attempts, true, None, c.provider.clone(), c.model.clone()),
            // A failed call's retries are inside the LLM client; 0 marks "not counted".
            Err(e) => (0, false, Some(e.to_string()), provider, model),
        };
        let spent = self.ledger.take();
        let usage = LlmUsage {
            input_tokens: spent.usage.input_tokens,
            output_tokens: spent.usage.output_tokens,
            cache_read_tokens: spent.usage.cache_read_tokens,
            cache_write_tokens: spent.usage.cache_write_tokens,
            cost_usd: spent.cost_usd,
            estimated: spent.usage.estimated,
        };
        self.emit(vec![Event::LlmResponseReceived {
            function: function.into(),
            provider,
            model,
            latency_ms: ms(started),
            attempts,
            ok,
            error,
            usage,
        }])
        .await?;
        Ok(result.map(|c| c.value))
    }

    async fn credential(&self) -> Result<GitCredential, String> {
        let stored = self
            .w
            .store
            .get_credential(self.feature.spec.repository_id)
            .await
            .map_err(|e| format!("reading the repository credential: {e}"))?;
        let Some((_, secret)) = stored else {
            return Ok(GitCredential::None);
        };
        let credential: Credential = serde_json::from_slice(secret.expose())
            .map_err(|_| "the stored credential is unreadable".to_string())?;
        Ok(match credential {
            Credential::Token { token, username } => GitCredential::Token { token, username },
            Credential::Basic { username, password } => GitCredential::Basic { username, password },
            Credential::SshKey { private_key } => GitCredential::SshKey { private_key },
            Credential::Oauth { token, .. } => GitCredential::Token {
                token,
                username: Some("oauth2".into()),
            },
        })
    }

    async fn append_artifact(&self, name: &str, line: &str) {
        use tokio::io::AsyncWriteExt;
        let dir = self.w.artifacts_dir(self.feature.id);
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .await?;
            file.write_all(format!("{line}\n").as_bytes()).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(feature = %self.feature.id, artifact = name, error = %e, "could not append to artifact");
        }
    }

    async fn write_artifact(&self, name: &str, bytes: &[u8]) {
        self.w
            .write_feature_artifact(self.feature.id, name, bytes)
            .await
    }
}

pub(crate) fn framework_of(command: &str) -> TestFramework {
    let c = command.to_ascii_lowercase();
    if c.contains("cargo") {
        TestFramework::Cargo
    } else if c.contains("pytest") {
        TestFramework::Pytest
    } else if c.contains("go test") {
        TestFramework::Go
    } else if c.contains("npm")
        || c.contains("node")
        || c.contains("jest")
        || c.contains("vitest")
        || c.contains("mocha")
    {
        TestFramework::Npm
    } else {
        TestFramework::Unknown
    }
}

/// `root/rel` when `rel` stays inside `root` lexically; symlinks are refused by the caller.
fn safe_join(root: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    if p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return None;
    }
    if p.components()
        .next()
        .is_some_and(|c| c.as_os_str() == ".git")
    {
        return None;
    }
    Some(root.join(p))
}
