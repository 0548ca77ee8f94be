//! One function per step of the feature state machine. Each appends its events as it goes,
//! so a watcher sees progress live and a crash loses at most the step in flight.

use crate::checks::{
    Baseline, BaselineMode, EVENT_OUTPUT_BYTES, build_checked, read_reports, tail, tests_checked,
};
use crate::sandboxing::BaselineRun;
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
        let t = builder_store::append_events(&*self.w.store, &self.feature, events, None, PRODUCER)
            .await?;
        self.feature = t.feature;
        self.events.extend(t.envelopes);
        Ok(())
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
                details: tail(&details.into(), EVENT_OUTPUT_BYTES),
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

    // ---------------------------------------------------------------- analysis

    async fn analyze(&mut self) -> Result<(), StepError> {
        let started = Instant::now();
        if self.feature.state == FeatureState::Pending {
            self.emit(vec![Event::AnalysisStarted {}]).await?;
        }
        let repo = match self
            .w
            .store
            .get_repository(self.feature.spec.repository_id)
            .await
        {
            Ok(Some(r)) if r.state == RepositoryState::Active => r,
            Ok(_) => {
                let reason = format!(
                    "repository {} is not registered or was deleted",
                    self.feature.spec.repository_id
                );
                return self
                    .fail_analysis(ErrorCode::InvalidInput, reason, false)
                    .await;
            }
            Err(e) => return Err(StepError::Infrastructure(e.to_string())),
        };
        let credential = match self.credential().await {
            Ok(c) => c,
            Err(reason) => {
                return self
                    .fail_analysis(ErrorCode::RepositoryAccess, reason, false)
                    .await;
            }
        };
        let workdir = self.workdir();
        if tokio::fs::try_exists(&workdir).await.unwrap_or(false) {
            // An interrupted clone or analysis: start from a clean copy.
            tokio::fs::remove_dir_all(&workdir).await.map_err(|e| {
                StepError::Infrastructure(format!("clearing {}: {e}", workdir.display()))
            })?;
        }
        let target = self.feature.target_branch.clone();
        self.emit(vec![Event::RepositoryCloneStarted {
            url: builder_git::redact_url(&repo.url),
            branch: target.clone(),
        }])
        .await?;
        let clone_started = Instant::now();
        let mut attempt = 0;
        let head = loop {
            attempt += 1;
            // Fetch into the repository's mirror (incremental, locked), then make the
            // working copy from it locally.
            let result = self
                .w
                .git
                .prepare_working_copy(
                    &repo.url,
                    &credential,
                    &self.w.config.mirror_root,
                    &workdir,
                    Some(&target),
                )
                .await;
            match result {
                Ok(head) => break Ok(head),
                Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                    self.backoff("clone", attempt, &e.to_string()).await?;
                    if tokio::fs::try_exists(&workdir).await.unwrap_or(false) {
                        let _ = tokio::fs::remove_dir_all(&workdir).await;
                    }
                }
                Err(e) => break Err(e),
            }
        };
        let head = match head {
            Ok(head) => head,
            Err(e) => {
                let reason = format!("cloning the repository failed: {e}");
                let retryable = e.is_transient();
                return self
                    .fail_analysis(ErrorCode::RepositoryAccess, reason, retryable)
                    .await;
            }
        };
        self.emit(vec![Event::RepositoryCloneCompleted {
            head_sha: head,
            duration_ms: ms(clone_started),
        }])
        .await?;

        // A retry from a later phase takes the retried execution's analysis over as it was.
        if self.retry_from_at_least("planning") {
            let Some(taken) = self
                .take_over(|e| {
                    matches!(
                        e,
                        Event::CodebaseAnalyzed { .. } | Event::ScopeIdentified { .. }
                    )
                })
                .await?
            else {
                return Ok(());
            };
            let mut events = taken;
            events.push(Event::AnalysisCompleted {
                duration_ms: ms(started),
            });
            return self.emit(events).await;
        }

        let overrides = builder_analysis::Commands {
            build: repo
                .properties
                .get("build_command")
                .cloned()
                .filter(|s| !s.trim().is_empty()),
            test: repo
                .properties
                .get("test_command")
                .cloned()
                .filter(|s| !s.trim().is_empty()),
        };
        let profile = match builder_analysis::detect(&workdir, &overrides) {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("analysing the code base failed: {e}");
                return self
                    .fail_analysis(ErrorCode::AnalysisFailed, reason, false)
                    .await;
            }
        };
        self.emit(vec![Event::CodebaseAnalyzed {
            languages: profile.languages.clone(),
            build_command: profile.build_command.clone(),
            test_command: profile.test_command.clone(),
            command_source: format!("{:?}", profile.source).to_lowercase(),
            file_count: profile.file_count as u64,
        }])
        .await?;
        if let Some(test) = profile.test_command.clone() {
            self.start_baseline(profile.build_command.clone(), test);
        }

        let client = match self.llm().await {
            Ok(c) => c,
            Err(why) => {
                return self
                    .fail_analysis(ErrorCode::AnalysisFailed, why, true)
                    .await;
            }
        };
        let context = self.context().await?;
        let request = self.request();
        let analysis = match self
            .call("AnalyzeFeature", client.analyze(&request, &context))
            .await?
        {
            Ok(a) => a,
            Err(e) => {
                let reason = format!("the LLM could not analyse the request: {e}");
                let retryable = e.is_transient();
                return self
                    .fail_analysis(ErrorCode::AnalysisFailed, reason, retryable)
                    .await;
            }
        };
        self.emit(vec![
            Event::ScopeIdentified {
                summary: analysis.summary,
                files: analysis.affected_files,
                risks: analysis.risks,
                acceptance: analysis.acceptance_interpretation,
            },
            Event::AnalysisCompleted {
                duration_ms: ms(started),
            },
        ])
        .await
    }

    /// The repository as the prompts see it, with the commands analysis found.
    async fn context(&self) -> Result<builder_llm::RepoContext, StepError> {
        let (languages, build, test) = self
            .last(|e| match e {
                Event::CodebaseAnalyzed {
                    languages,
                    build_command,
                    test_command,
                    ..
                } => Some((languages, build_command, test_command)),
                _ => None,
            })
            .unwrap_or_default();
        let mut hints = self.feature.spec.path_hints.clone();
        if let Some(files) = self.last(|e| match e {
            Event::ScopeIdentified { files, .. } => Some(files),
            _ => None,
        }) {
            hints.extend(files);
        }
        if let Some(plan) = &self.feature.plan {
            hints.extend(plan.affected_files.iter().cloned());
        }
        let ctx = builder_analysis::repo_context(
            &self.workdir(),
            &hints,
            self.w.config.context_max_tokens,
        )
        .map_err(|e| StepError::Infrastructure(format!("reading the working copy: {e}")))?;
        Ok(builder_llm::RepoContext {
            languages,
            build_command: build,
            test_command: test,
            file_tree: ctx.file_tree,
            files: ctx
                .files
                .into_iter()
                .map(|(path, content)| builder_llm::SourceFile { path, content })
                .collect(),
        })
    }

    fn analysis(&self) -> builder_llm::Analysis {
        self.last(|e| match e {
            Event::ScopeIdentified {
                summary,
                files,
                risks,
                acceptance,
            } => Some(builder_llm::Analysis {
                summary,
                affected_files: files,
                risks,
                acceptance_interpretation: acceptance,
            }),
            _ => None,
        })
        .unwrap_or_else(|| builder_llm::Analysis {
            summary: String::new(),
            affected_files: vec![],
            risks: vec![],
            acceptance_interpretation: vec![],
        })
    }

    // ---------------------------------------------------------------- planning

    async fn plan(&mut self) -> Result<(), StepError> {
        if self.feature.state == FeatureState::Analyzing {
            self.emit(vec![Event::PlanningStarted {}]).await?;
        }
        self.record_baseline(false).await?;
        if self.retry_from_at_least("execution") {
            let Some(taken) = self
                .take_over(|e| {
                    matches!(
                        e,
                        Event::PlanStepDefined { .. } | Event::PlanGenerated { .. }
                    )
                })
                .await?
            else {
                return Ok(());
            };
            return self.emit(taken).await;
        }
        let client = match self.llm().await {
            Ok(c) => c,
            Err(why) => {
                return self
                    .fail_planning(ErrorCode::PlanningFailed, why, true)
                    .await;
            }
        };
        let context = self.context().await?;
        let request = self.request();
        let analysis = self.analysis();
        let plan = match self
            .call("PlanFeature", client.plan(&request, &analysis, &context))
            .await?
        {
            Ok(p) => p,
            Err(e) => {
                let reason = format!("the LLM could not plan the change: {e}");
                let retryable = e.is_transient();
                return self
                    .fail_planning(ErrorCode::PlanningFailed, reason, retryable)
                    .await;
            }
        };
        let max_steps = self.feature.spec.max_steps() as usize;
        if plan.steps.is_empty() || plan.steps.len() > max_steps {
            let reason = format!(
                "the plan has {} step(s); it needs 1 to {max_steps} (constraints.max_steps)",
                plan.steps.len()
            );
            return self
                .fail_planning(ErrorCode::PlanningFailed, reason, true)
                .await;
        }
        let steps: Vec<PlanStep> = plan
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| PlanStep {
                index: i as u32,
                description: s.description.clone(),
                step_type: s.step_type.as_str().to_string(),
                target_files: s.target_files.clone(),
                dependencies: s.dependencies.clone(),
            })
            .collect();
        let mut events: Vec<Event> = steps
            .iter()
            .map(|s| Event::PlanStepDefined { step: s.clone() })
            .collect();
        events.push(Event::PlanGenerated {
            plan: ExecutionPlan {
                steps,
                affected_files: plan.affected_files.clone(),
                summary: plan.summary.clone(),
            },
        });
        self.emit(events).await?;
        self.write_artifact(
            "plan.json",
            &serde_json::to_vec_pretty(&self.feature.plan).unwrap_or_default(),
        )
        .await;
        Ok(())
    }

    fn llm_plan(&self) -> builder_llm::Plan {
        let plan = self.feature.plan.clone().unwrap_or_default();
        builder_llm::Plan {
            summary: plan.summary,
            affected_files: plan.affected_files,
            steps: plan
                .steps
                .into_iter()
                .map(|s| builder_llm::PlanStep {
                    index: s.index,
                    description: s.description,
                    step_type: builder_llm::StepType::parse(&s.step_type)
                        .unwrap_or(builder_llm::StepType::ModifyFile),
                    target_files: s.target_files,
                    dependencies: s.dependencies,
                })
                .collect(),
        }
    }

    // ---------------------------------------------------------------- execution

    async fn execute(&mut self, iteration: u32) -> Result<(), StepError> {
        self.record_baseline(false).await?;
        let workdir = self.workdir();
        if !tokio::fs::try_exists(workdir.join(".git"))
            .await
            .unwrap_or(false)
        {
            // Edits live only in the working copy; without it the iteration cannot resume.
            return self
                .fail(
                    Some(Event::ExecutionFailed { iteration, reason: "the working copy is gone".into() }),
                    ErrorCode::Internal,
                    "the working copy was lost (process restarted on another machine or the workspace was cleaned); retry the feature",
                    "",
                    true,
                )
                .await;
        }
        if !(self.feature.state == FeatureState::Executing && self.feature.iteration == iteration) {
            self.emit(vec![Event::ExecutionStarted { iteration }])
                .await?;
        }
        let client = match self.llm().await {
            Ok(c) => c,
            Err(why) => {
                return self
                    .fail(
                        Some(Event::ExecutionFailed {
                            iteration,
                            reason: why.clone(),
                        }),
                        ErrorCode::GenerationFailed,
                        why,
                        "",
                        true,
                    )
                    .await;
            }
        };
        let plan = self.llm_plan();
        let total = plan.steps.len() as u32;
        if iteration == 1 {
            for step in plan.steps.clone() {
                let index = step.index;
                if self.step_done(iteration, index) {
                    continue;
                }
                let files = step.target_files.clone();
                if !self
                    .generate_step(
                        &client,
                        &plan,
                        iteration,
                        index,
                        &step.description,
                        &files,
                        None,
                    )
                    .await?
                {
                    return Ok(());
                }
            }
        } else {
            let feedback = self.feature.last_failure.clone().unwrap_or_default();
            let mut files = self.changed_files().await;
            for step in &plan.steps {
                files.extend(step.target_files.iter().cloned());
            }
            files.sort();
            files.dedup();
            let description =
                format!("repair iteration {iteration}: make the build and tests pass");
            if self.step_done(iteration, total) {
                let files_changed = self.changed_files().await.len() as u32;
                return self
                    .emit(vec![Event::ExecutionCompleted {
                        iteration,
                        files_changed,
                    }])
                    .await;
            }
            if !self
                .generate_step(
                    &client,
                    &plan,
                    iteration,
                    total,
                    &description,
                    &files,
                    Some(&feedback),
                )
                .await?
            {
                return Ok(());
            }
        }
        let files_changed = self.changed_files().await.len() as u32;
        self.emit(vec![Event::ExecutionCompleted {
            iteration,
            files_changed,
        }])
        .await
    }

    fn step_done(&self, iteration: u32, index: u32) -> bool {
        self.events.iter().filter_map(|e| e.event().ok()).any(|e| {
            matches!(e, Event::StepCompleted { iteration: i, index: x } if i == iteration && x == index)
        }) && self.feature.iteration == iteration
    }

    /// Files that differ from the commit the feature started from.
    async fn changed_files(&self) -> Vec<String> {
        let base = self.last(|e| match e {
            Event::RepositoryCloneCompleted { head_sha, .. } => Some(head_sha),
            _ => None,
        });
        let Some(base) = base else { return vec![] };
        match self.w.git.changed_files(&self.workdir(), &base).await {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(feature = %self.feature.id, error = %e, "could not list changed files");
                vec![]
            }
        }
    }

    /// Asks for edits and applies them; an edit that does not apply goes back to the model
    /// once with the precise error. Returns false when the feature failed.
    #[allow(clippy::too_many_arguments)]
    async fn generate_step(
        &mut self,
        client: &LlmClient,
        plan: &builder_llm::Plan,
        iteration: u32,
        index: u32,
        description: &str,
        files: &[String],
        feedback: Option<&str>,
    ) -> Result<bool, StepError> {
        // Resuming a step that was interrupted after it started: undo whatever part of its
        // edits reached the working copy, so they are not applied twice.
        let interrupted = self.last(|e| match e {
            Event::StepStarted {
                iteration: i,
                index: x,
                checkpoint: Some(tree),
                ..
            } if i == iteration && x == index => Some(tree),
            _ => None,
        });
        let workdir = self.workdir();
        if let Some(tree) = interrupted {
            self.w
                .git
                .restore_checkpoint(&workdir, &tree)
                .await
                .map_err(|e| {
                    StepError::Infrastructure(format!("restoring the working copy: {e}"))
                })?;
        }
        let checkpoint = self.w.git.checkpoint(&workdir).await.map_err(|e| {
            StepError::Infrastructure(format!("checkpointing the working copy: {e}"))
        })?;
        self.emit(vec![Event::StepStarted {
            iteration,
            index,
            description: description.to_string(),
            checkpoint: Some(checkpoint),
        }])
        .await?;
        let request = self.request();
        let mut feedback = feedback.map(str::to_string);
        let mut last_error = String::new();
        for _attempt in 0..2 {
            let sources = self.read_sources(files).await;
            let edits = match self
                .call(
                    "GenerateEdits",
                    client.generate(&request, plan, index, &sources, feedback.as_deref()),
                )
                .await?
            {
                Ok(e) => e,
                Err(e) => {
                    let reason = format!("the LLM could not generate edits: {e}");
                    let retryable = e.is_transient();
                    self.emit(vec![Event::StepFailed {
                        iteration,
                        index,
                        reason: reason.clone(),
                    }])
                    .await?;
                    self.fail(
                        Some(Event::ExecutionFailed {
                            iteration,
                            reason: reason.clone(),
                        }),
                        ErrorCode::GenerationFailed,
                        reason,
                        "",
                        retryable,
                    )
                    .await?;
                    return Ok(false);
                }
            };
            let forbidden: Vec<String> = edits
                .edits
                .iter()
                .map(|e| e.path.clone())
                .filter(|p| !self.feature.spec.path_allowed(p))
                .collect();
            let touched: Vec<String> = edits.edits.iter().map(|e| e.path.clone()).collect();
            self.emit(vec![Event::CodeChangeGenerated {
                iteration,
                index,
                summary: edits.summary.clone(),
                files: touched,
                edit_count: edits.edits.len() as u32,
            }])
            .await?;
            if !forbidden.is_empty() {
                last_error = format!(
                    "edits to paths outside the allowed paths are refused: {}",
                    forbidden.join(", ")
                );
                feedback = Some(last_error.clone());
                continue;
            }
            match builder_llm::apply_edits(&self.workdir(), &edits.edits) {
                Ok(applied) => {
                    let mut events: Vec<Event> = applied
                        .into_iter()
                        .map(|a| Event::FileModified {
                            path: a.path,
                            action: a.action.as_str().to_string(),
                            before_sha256: a.before_sha256,
                            after_sha256: a.after_sha256,
                        })
                        .collect();
                    events.push(Event::StepCompleted { iteration, index });
                    self.emit(events).await?;
                    return Ok(true);
                }
                Err(e) => {
                    last_error = format!("the edits did not apply: {e}");
                    feedback = Some(format!(
                        "{}\n\nYour previous edits did not apply: {e}",
                        feedback.unwrap_or_default()
                    ));
                }
            }
        }
        self.emit(vec![Event::StepFailed {
            iteration,
            index,
            reason: last_error.clone(),
        }])
        .await?;
        self.fail(
            Some(Event::ExecutionFailed {
                iteration,
                reason: last_error.clone(),
            }),
            ErrorCode::GenerationFailed,
            last_error,
            "",
            true,
        )
        .await?;
        Ok(false)
    }

    /// Current content of the files the model will edit (missing files are simply absent).
    async fn read_sources(&self, files: &[String]) -> Vec<builder_llm::SourceFile> {
        let root = self.workdir();
        let mut out = Vec::new();
        for rel in files {
            let Some(path) = safe_join(&root, rel) else {
                continue;
            };
            // A symlinked file or parent directory could point anywhere on the host.
            let (Ok(real), Ok(real_root)) = (
                tokio::fs::canonicalize(&path).await,
                tokio::fs::canonicalize(&root).await,
            ) else {
                continue;
            };
            if !real.starts_with(&real_root) || real != real_root.join(rel) {
                continue;
            }
            match tokio::fs::symlink_metadata(&path).await {
                Ok(meta) if meta.is_file() && meta.len() <= 256 * 1024 => {}
                _ => continue,
            }
            // The repository's own secrets never reach a prompt.
            if builder_analysis::is_secret_path(rel) {
                out.push(builder_llm::SourceFile {
                    path: rel.clone(),
                    content: "[content withheld: a file that holds secrets by convention]".into(),
                });
                continue;
            }
            if let Ok(content) = tokio::fs::read_to_string(&path).await {
                out.push(builder_llm::SourceFile {
                    path: rel.clone(),
                    content: builder_analysis::redact_secrets(&content).0,
                });
            }
        }
        out
    }

    // ---------------------------------------------------------------- verification

    async fn verify(&mut self, iteration: u32) -> Result<(), StepError> {
        if self.feature.state == FeatureState::Executing {
            self.emit(vec![Event::VerificationStarted { iteration }])
                .await?;
        }
        let (build, test) = self
            .last(|e| match e {
                Event::CodebaseAnalyzed {
                    build_command,
                    test_command,
                    ..
                } => Some((build_command, test_command)),
                _ => None,
            })
            .unwrap_or_default();
        let Some(test) = test else {
            let reason = "no test command was detected or declared, so the change cannot be verified; declare one in .builder.toml ([commands] test = \"…\") or the repository's test_command property".to_string();
            return self
                .fail(
                    Some(Event::VerificationFailed {
                        iteration,
                        reason: reason.clone(),
                        output: String::new(),
                    }),
                    ErrorCode::TestFailed,
                    reason,
                    "",
                    false,
                )
                .await;
        };
        // What the untouched code did decides which failures are new.
        let baseline = self
            .record_baseline(self.w.config.baseline_mode == BaselineMode::Tolerate)
            .await?;
        let _slot = self.slot(Resource::Sandbox).await?;
        self.emit(vec![Event::SandboxCreated {
            runtime: self.w.sandbox.name().to_string(),
            enforced_limits: self.enforced_limits(),
        }])
        .await?;

        let workdir = self.workdir();
        let mut failure: Option<(String, String)> = None;
        if let Some(build) = build {
            self.emit(vec![Event::BuildStarted {
                command: build.clone(),
            }])
            .await?;
            let (out, _) = self.sandboxed(&workdir, &build, "build").await?;
            self.write_artifact(&format!("build-{iteration}.log"), out.output.as_bytes())
                .await;
            let checked = build_checked(&build, &out, false);
            self.emit(vec![checked.event]).await?;
            failure = checked.failure;
        }
        let mut test_summary = String::new();
        if failure.is_none() {
            self.emit(vec![Event::TestsStarted {
                command: test.clone(),
            }])
            .await?;
            let (out, reports) = self.sandboxed(&workdir, &test, "tests").await?;
            self.write_artifact(&format!("tests-{iteration}.log"), out.output.as_bytes())
                .await;
            let checked = tests_checked(
                &test,
                framework_of(&test),
                &out,
                &reports,
                false,
                baseline.as_ref(),
                self.w.config.baseline_mode,
            );
            if let Some(json) = &checked.report_json {
                self.write_artifact(&format!("tests-{iteration}.json"), json)
                    .await;
            }
            self.emit(vec![checked.event]).await?;
            test_summary = checked.summary;
            failure = checked.failure;
        }
        self.emit(vec![Event::SandboxDestroyed {}]).await?;
        if let Some((reason, output)) = failure {
            return self
                .emit(vec![Event::VerificationFailed {
                    iteration,
                    reason,
                    output,
                }])
                .await;
        }

        // A review of the diff against the request before anything leaves the machine.
        let client = match self.llm().await {
            Ok(c) => c,
            Err(why) => return self.fail(None, ErrorCode::Internal, why, "", true).await,
        };
        let diff = self.diff().await;
        let request = self.request();
        match self
            .call(
                "ValidateChange",
                client.validate(&request, &diff, &test_summary),
            )
            .await?
        {
            Ok(review) if review.approved => {
                self.emit(vec![Event::VerificationPassed {
                    iteration,
                    summary: test_summary,
                }])
                .await
            }
            Ok(review) => {
                let reason = format!(
                    "the review asked for changes: {}",
                    review.reasons.join("; ")
                );
                self.emit(vec![Event::VerificationFailed {
                    iteration,
                    reason,
                    output: review.reasons.join("\n"),
                }])
                .await
            }
            Err(e) => {
                let reason = format!("the LLM could not review the change: {e}");
                let retryable = e.is_transient();
                self.fail(None, ErrorCode::GenerationFailed, reason, "", retryable)
                    .await
            }
        }
    }

    fn enforced_limits(&self) -> Vec<String> {
        let mut limits = vec![format!(
            "timeout {}s",
            self.w.config.sandbox_timeout.as_secs()
        )];
        if let Some(mb) = self.w.config.sandbox_memory_mb {
            limits.push(format!("memory {mb} MB requested"));
        }
        if let Some(cpu) = self.w.config.sandbox_cpu {
            limits.push(format!("cpu {cpu} requested"));
        }
        // What the host can actually enforce; each run's outcome says what held.
        limits.push(builder_sandbox::describe_limits());
        limits
    }

    /// Runs `command` on `workdir` in the sandbox with the feature's caches, and reads the
    /// report files it left in `$BUILDER_REPORT_DIR`.
    async fn sandboxed(
        &self,
        workdir: &Path,
        command: &str,
        label: &str,
    ) -> Result<(ExecOutcome, Vec<(String, String)>), StepError> {
        let (spec, reports) = self
            .w
            .command_spec(&self.feature, workdir, command, label)
            .await?;
        let out = self
            .w
            .sandbox
            .run(&spec)
            .await
            .map_err(|e| StepError::Infrastructure(format!("sandbox: {e}")))?;
        Ok((out, read_reports(&reports).await))
    }

    /// Starts the baseline run on a clone of the untouched working copy, beside analysis and
    /// planning; its results are recorded at the next step boundary.
    fn start_baseline(&self, build: Option<String>, test: String) {
        if self.w.config.baseline_mode == BaselineMode::Off {
            return;
        }
        let Some(w) = self.w.me.upgrade() else {
            return;
        };
        let feature = self.feature.clone();
        let handle = tokio::spawn(async move { w.baseline(&feature, build, test).await });
        let previous = self
            .w
            .baselines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.feature.id, handle);
        if let Some(p) = previous {
            p.abort();
        }
    }

    /// Records the baseline's results once they exist (or, with `wait`, waits for them,
    /// running the baseline now if none is running, e.g. after a restart). `None` when
    /// there is none (yet).
    async fn record_baseline(&mut self, wait: bool) -> Result<Option<Baseline>, StepError> {
        if let Some(b) = self.recorded_baseline() {
            return Ok(Some(b));
        }
        if self.w.config.baseline_mode == BaselineMode::Off {
            return Ok(None);
        }
        let handle = {
            let mut map = self.w.baselines.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&self.feature.id) {
                Some(h) if wait || h.is_finished() => map.remove(&self.feature.id),
                _ => None,
            }
        };
        let run = match handle {
            Some(h) => match h.await {
                Ok(run) => run,
                Err(e) => BaselineRun::skipped(format!("the baseline task ended: {e}")),
            },
            None if wait => {
                let Some((build, Some(test))) = self.last(|e| match e {
                    Event::CodebaseAnalyzed {
                        build_command,
                        test_command,
                        ..
                    } => Some((build_command, test_command)),
                    _ => None,
                }) else {
                    return Ok(None);
                };
                self.w.baseline(&self.feature, build, test).await
            }
            None => return Ok(None),
        };
        for (name, bytes) in &run.artifacts {
            self.write_artifact(name, bytes).await;
        }
        if let Some(why) = &run.skipped {
            tracing::warn!(feature = %self.feature.id, reason = %why, "no baseline run");
            return Ok(None);
        }
        self.emit(run.events).await?;
        Ok(run.baseline)
    }

    /// The baseline as the stream recorded it.
    fn recorded_baseline(&self) -> Option<Baseline> {
        let mut found = None;
        for e in self.events.iter().filter_map(|e| e.event().ok()) {
            match e {
                Event::BuildCompleted {
                    baseline: true,
                    success: false,
                    ..
                } => {
                    found = Some(Baseline {
                        broken: true,
                        summary: "the build failed".into(),
                        ..Baseline::default()
                    })
                }
                Event::TestsCompleted {
                    baseline: true,
                    passed,
                    failed,
                    ignored,
                    failures,
                    report_format,
                    ..
                } => {
                    found = Some(Baseline {
                        failing: failures.iter().map(|f| f.name.clone()).collect(),
                        // Only the first failures are in the event; past them, names are lost.
                        per_test: report_format.is_some() && failures.len() as u32 >= failed,
                        broken: passed + failed == 0,
                        summary: format!("{passed} passed, {failed} failed, {ignored} ignored"),
                    })
                }
                _ => {}
            }
        }
        found
    }

    async fn diff(&self) -> String {
        let base = self.last(|e| match e {
            Event::RepositoryCloneCompleted { head_sha, .. } => Some(head_sha),
            _ => None,
        });
        let Some(base) = base else {
            return String::new();
        };
        self.w
            .git
            .worktree_diff(&self.workdir(), &base)
            .await
            .unwrap_or_else(|e| format!("(diff unavailable: {e})"))
    }

    async fn repair(&mut self, iteration: u32) -> Result<(), StepError> {
        let reason = self.feature.last_failure.clone().unwrap_or_default();
        let first_line = reason
            .lines()
            .next()
            .unwrap_or("verification failed")
            .to_string();
        self.emit(vec![
            Event::IterationCompleted {
                iteration: iteration - 1,
                outcome: "failed".into(),
            },
            Event::IterationStarted {
                iteration,
                reason: first_line,
            },
        ])
        .await
    }

    async fn give_up(&mut self) -> Result<(), StepError> {
        let failure = self.feature.last_failure.clone().unwrap_or_default();
        let code = if self
            .last(|e| match e {
                Event::BuildCompleted {
                    success,
                    baseline: false,
                    ..
                } => Some(success),
                _ => None,
            })
            .is_some_and(|s| !s)
        {
            ErrorCode::BuildFailed
        } else {
            ErrorCode::TestFailed
        };
        let attempts = self.feature.iteration;
        self.fail(
            None,
            code,
            format!(
                "verification still failed after {attempts} attempt(s): {}",
                failure.lines().next().unwrap_or("")
            ),
            failure,
            true,
        )
        .await
    }

    // ---------------------------------------------------------------- delivery

    async fn deliver(&mut self) -> Result<(), StepError> {
        let workdir = self.workdir();
        let repo = match self
            .w
            .store
            .get_repository(self.feature.spec.repository_id)
            .await
        {
            Ok(Some(r)) => r,
            Ok(None) => {
                return self
                    .fail(
                        None,
                        ErrorCode::InvalidInput,
                        "the repository was deleted",
                        "",
                        false,
                    )
                    .await;
            }
            Err(e) => return Err(StepError::Infrastructure(e.to_string())),
        };
        let branch = self.feature.feature_branch.clone();
        let base = self
            .last(|e| match e {
                Event::RepositoryCloneCompleted { head_sha, .. } => Some(head_sha),
                _ => None,
            })
            .unwrap_or_default();
        let branch_recorded = self
            .last(|e| matches!(e, Event::BranchCreated { .. }).then_some(()))
            .is_some();
        if !branch_recorded {
            if let Err(e) = self.w.git.checkout_new_branch(&workdir, &branch).await {
                let reason = format!("creating branch {branch} failed: {e}");
                return self
                    .fail(None, ErrorCode::PushFailed, reason, "", false)
                    .await;
            }
            self.emit(vec![Event::BranchCreated {
                branch: branch.clone(),
                base_sha: base.clone(),
            }])
            .await?;
        }
        let sha =
            match self.feature.commit_sha.clone() {
                Some(sha) => sha,
                None => {
                    // A crash between `git commit` and recording it leaves HEAD past the base:
                    // only this feature commits in its working copy, so that commit is ours.
                    let head =
                        self.w.git.head_sha(&workdir).await.map_err(|e| {
                            StepError::Infrastructure(format!("git rev-parse: {e}"))
                        })?;
                    let dirty = self
                        .w
                        .git
                        .has_changes(&workdir)
                        .await
                        .map_err(|e| StepError::Infrastructure(format!("git status: {e}")))?;
                    if head != base && !dirty {
                        let stats = self
                            .w
                            .git
                            .diff_stats(&workdir, &base, &head)
                            .await
                            .unwrap_or_default();
                        self.emit(vec![Event::CommitCreated {
                            sha: head.clone(),
                            message: self.feature.spec.title.clone(),
                            files_changed: stats.files_changed as u32,
                            lines_added: stats.lines_added as u32,
                            lines_removed: stats.lines_removed as u32,
                        }])
                        .await?;
                        head
                    } else {
                        match self.w.git.has_changes(&workdir).await {
                            Ok(true) => {}
                            Ok(false) => {
                                return self
                                    .fail(
                                        None,
                                        ErrorCode::GenerationFailed,
                                        "the change is empty: nothing to commit",
                                        "",
                                        true,
                                    )
                                    .await;
                            }
                            Err(e) => {
                                return Err(StepError::Infrastructure(format!("git status: {e}")));
                            }
                        }
                        let message = self.commit_message();
                        let sha = match self.w.git.commit_all(&workdir, &message).await {
                            Ok(sha) => sha,
                            Err(e) => {
                                return self
                                    .fail(
                                        None,
                                        ErrorCode::Internal,
                                        format!("commit failed: {e}"),
                                        "",
                                        true,
                                    )
                                    .await;
                            }
                        };
                        let stats = self
                            .w
                            .git
                            .diff_stats(&workdir, &base, &sha)
                            .await
                            .unwrap_or_default();
                        self.emit(vec![Event::CommitCreated {
                            sha: sha.clone(),
                            message: message.lines().next().unwrap_or("").to_string(),
                            files_changed: stats.files_changed as u32,
                            lines_added: stats.lines_added as u32,
                            lines_removed: stats.lines_removed as u32,
                        }])
                        .await?;
                        sha
                    }
                }
            };
        if let Ok(patch) = self.w.git.diff_patch(&workdir, &base, &sha).await {
            self.write_artifact("change.patch", patch.as_bytes()).await;
        }
        if !self.feature.pushed {
            let credential = match self.credential().await {
                Ok(c) => c,
                Err(reason) => {
                    return self
                        .fail(None, ErrorCode::RepositoryAccess, reason, "", false)
                        .await;
                }
            };
            self.emit(vec![Event::PushStarted {
                branch: branch.clone(),
                sha: sha.clone(),
            }])
            .await?;
            // Look before acting: a push that landed before a crash is not repeated.
            let already = matches!(self.w.git.remote_branch_sha(&repo.url, &branch, &credential).await, Ok(Some(ref remote)) if remote == &sha);
            let mut attempt = 0;
            let pushed = loop {
                if already {
                    break Ok(());
                }
                attempt += 1;
                match self
                    .w
                    .git
                    .push_branch(&workdir, &repo.url, &branch, &credential)
                    .await
                {
                    Ok(()) => break Ok(()),
                    Err(e) if e.is_transient() && attempt < MAX_ATTEMPTS => {
                        self.backoff("push", attempt, &e.to_string()).await?;
                    }
                    Err(e) => break Err(e),
                }
            };
            if let Err(e) = pushed {
                let reason = format!("pushing {branch} failed: {e}");
                let retryable = e.is_transient();
                return self
                    .fail(
                        Some(Event::PushFailed {
                            branch,
                            reason: reason.clone(),
                            retryable,
                        }),
                        ErrorCode::PushFailed,
                        reason,
                        "",
                        retryable,
                    )
                    .await;
            }
            self.emit(vec![Event::PushCompleted {
                branch: branch.clone(),
                sha: sha.clone(),
                already_present: already,
            }])
            .await?;
        }
        let stats = self
            .w
            .git
            .diff_stats(&workdir, &base, &sha)
            .await
            .unwrap_or_default();
        if !self.feature.pull_request_attempted {
            self.pull_request(&repo, &branch, &stats).await?;
        }
        let summary = self
            .feature
            .plan
            .as_ref()
            .map(|p| p.summary.clone())
            .unwrap_or_default();
        let patch = self.w.artifacts_dir(self.feature.id).join("change.patch");
        let result = DeliveryResult {
            branch_name: branch,
            commit_sha: sha,
            commit_count: 1,
            files_changed: stats.files_changed as u32,
            lines_added: stats.lines_added as u32,
            lines_removed: stats.lines_removed as u32,
            patch_url: if patch.exists() {
                patch.display().to_string()
            } else {
                String::new()
            },
            pull_request_url: self.feature.pull_request_url.clone().unwrap_or_default(),
            summary,
        };
        self.emit(vec![Event::FeatureDelivered { result }]).await
    }

    /// Opens (or updates) the pull/merge request where the host has an API and a token
    /// credential. A refusal does not undo the delivery: the branch is on the remote and
    /// `pull_request.failed` says why there is no request.
    async fn pull_request(
        &mut self,
        repo: &builder_core::Repository,
        branch: &str,
        stats: &builder_git::DiffStats,
    ) -> Result<(), StepError> {
        use builder_core::Provider;
        use builder_forge::ForgeKind;
        let kind = match repo.provider {
            Provider::Github => ForgeKind::Github,
            Provider::Gitlab => ForgeKind::Gitlab,
            Provider::Bitbucket => ForgeKind::Bitbucket,
            Provider::Gitea => ForgeKind::Gitea,
            Provider::AzureDevops => ForgeKind::AzureDevops,
            // Plain git remotes: the pushed branch is the result.
            Provider::Generic => return Ok(()),
        };
        let token = match self.w.store.get_credential(repo.id).await {
            Ok(Some((_, secret))) => match serde_json::from_slice::<Credential>(secret.expose()) {
                Ok(Credential::Token { token, .. }) | Ok(Credential::Oauth { token, .. }) => {
                    Some(token)
                }
                _ => None,
            },
            Ok(None) => None,
            Err(e) => return Err(StepError::Infrastructure(e.to_string())),
        };
        let Some(token) = token else {
            let reason =
                "opening a pull request needs a TOKEN or OAUTH credential on the repository"
                    .to_string();
            return self
                .emit(vec![Event::PullRequestFailed {
                    reason,
                    retryable: false,
                }])
                .await;
        };
        let api_base = repo.properties.get("forge_api_base").map(String::as_str);
        let spec = builder_forge::PullRequestSpec {
            head_branch: branch.to_string(),
            base_branch: self.feature.target_branch.clone(),
            title: self.feature.spec.title.clone(),
            body: self.pull_request_body(stats),
        };
        let opened = match builder_forge::forge_for(kind, &repo.url, api_base, &token) {
            Ok(forge) => forge.open_or_update(&spec).await,
            Err(e) => Err(e),
        };
        match opened {
            Ok(pr) => {
                self.emit(vec![Event::PullRequestOpened {
                    url: pr.url,
                    number: pr.number,
                    created: pr.created,
                }])
                .await
            }
            Err(e) => {
                let retryable = e.is_transient();
                self.emit(vec![Event::PullRequestFailed {
                    reason: e.to_string(),
                    retryable,
                }])
                .await
            }
        }
    }

    fn pull_request_body(&self, stats: &builder_git::DiffStats) -> String {
        let spec = &self.feature.spec;
        let mut body = format!("{}\n\n", spec.description.trim());
        if !spec.acceptance_criteria.is_empty() {
            body.push_str("**Acceptance criteria**\n");
            for c in &spec.acceptance_criteria {
                body.push_str(&format!("- {c}\n"));
            }
            body.push('\n');
        }
        if let Some(plan) = &self.feature.plan {
            body.push_str(&format!("**Plan** — {}\n", plan.summary));
            for s in &plan.steps {
                body.push_str(&format!("{}. {}\n", s.index + 1, s.description));
            }
            body.push('\n');
        }
        body.push_str(&format!(
            "**Change**: {} file(s), +{} −{}: {}\n\n",
            stats.files_changed,
            stats.lines_added,
            stats.lines_removed,
            stats.files.join(", ")
        ));
        if let Some((passed, failed)) = self.last(|e| match e {
            Event::TestsCompleted {
                passed,
                failed,
                baseline: false,
                ..
            } => Some((passed, failed)),
            _ => None,
        }) {
            body.push_str(&format!(
                "**Tests**: {passed} passed, {failed} failed (run in builder's sandbox)\n\n"
            ));
        }
        body.push_str(&format!(
            "Built by builder — feature execution `{}` after {} iteration(s).\n",
            self.feature.id, self.feature.iteration
        ));
        body
    }

    fn commit_message(&self) -> String {
        let spec = &self.feature.spec;
        let mut msg = format!("{}\n\n{}\n", spec.title, spec.description.trim());
        if let Some(plan) = &self.feature.plan {
            msg.push_str("\nPlan:\n");
            for s in &plan.steps {
                msg.push_str(&format!("- {}\n", s.description));
            }
        }
        msg.push_str(&format!("\nFeature-Execution: {}\n", self.feature.id));
        msg
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
        let dir = self.w.artifacts_dir(self.feature.id);
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(dir.join(name), bytes).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(feature = %self.feature.id, artifact = name, error = %e, "could not write artifact");
        }
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
