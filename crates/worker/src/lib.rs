//! The worker: turns the next step of a feature (as the core state machine names it) into
//! side effects — clone, analyse, ask the LLM, edit, build and test in the sandbox, commit,
//! push — and records each as events.
//!
//! Workers are stateless: everything a step needs is in the feature's events, the store and
//! the working copy, so any worker can resume any feature. Appends use optimistic
//! concurrency; a conflict means someone else (a cancel, another worker) moved the feature,
//! and the worker reloads instead of acting on a stale view. This crate must not depend on
//! the API crate or on a particular bus.

mod checks;
mod registries;
mod sandboxing;
mod steps;

pub use checks::BaselineMode;
pub use registries::RegistryHosts;

use builder_core::{EventEnvelope, Feature, FeatureId, NextStep, RepositoryId};
use builder_git::Git;
use builder_llm::{LlmConfig, Sidecar};
use builder_sandbox::SandboxRuntime;
use builder_store::{AppendError, Store};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

pub const PRODUCER: &str = concat!("builder-worker/", env!("CARGO_PKG_VERSION"));

/// Why a feature's stream could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// The store is out of reach for now.
    #[error("{0}")]
    Unavailable(String),
    /// The stream is there but unreadable or does not fold.
    #[error("{0}")]
    Broken(String),
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// GIT_WORKSPACE_BASE_PATH: one working copy per feature below it.
    pub workspace_base: PathBuf,
    /// Patches and logs per feature.
    pub artifacts_base: PathBuf,
    /// One bare mirror per repository; working copies are made from it.
    pub mirror_root: PathBuf,
    pub sandbox_timeout: Duration,
    pub sandbox_memory_mb: Option<u64>,
    pub sandbox_cpu: Option<f32>,
    pub max_output_bytes: usize,
    /// Estimated tokens of repository content a prompt may carry
    /// (`BUILDER_CONTEXT_MAX_TOKENS`).
    pub context_max_tokens: u64,
    /// Keep working copies after a feature ends (for debugging).
    pub keep_workspaces: bool,
    /// The longest one step (clone, one LLM exchange, a verification…) may run.
    pub step_timeout: Duration,
    /// Builds/tests running at once across all features (back-pressure).
    pub max_concurrent_sandboxes: usize,
    /// LLM calls in flight at once across all features.
    pub max_concurrent_llm_calls: usize,
    /// The same caps within one repository.
    pub max_sandboxes_per_repository: usize,
    pub max_llm_calls_per_repository: usize,
    /// Build caches: per feature (kept across its repair iterations) and per repository
    /// (package downloads, shared by its features).
    pub cache_base: PathBuf,
    /// Stream LLM answers and record partial output as events (`BUILDER_LLM_STREAM`).
    pub llm_stream: bool,
    /// What the baseline run on the untouched copy is for (`BUILDER_VERIFY_BASELINE`).
    pub baseline_mode: BaselineMode,
    /// The package registries a dependency phase may reach.
    pub registries: RegistryHosts,
}

/// The LLM as the worker sees it: either ready, or a clear statement of what is missing.
pub enum Llm {
    Ready {
        sidecar: Arc<Sidecar>,
        /// Profiles, fallbacks, prices and default budgets.
        config: Arc<LlmConfig>,
    },
    /// Answers from a recorded transcript (`BUILDER_LLM_REPLAY`): no model is asked.
    Replay(Arc<builder_llm::Replay>),
    Unavailable(String),
}

pub struct Worker {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) git: Arc<Git>,
    pub(crate) llm: Llm,
    pub(crate) sandbox: Arc<dyn SandboxRuntime>,
    pub(crate) config: WorkerConfig,
    pub(crate) sandbox_slots: Arc<tokio::sync::Semaphore>,
    pub(crate) llm_slots: Arc<tokio::sync::Semaphore>,
    repo_slots: Mutex<HashMap<(steps::Resource, RepositoryId), Arc<tokio::sync::Semaphore>>>,
    running: Mutex<HashMap<FeatureId, watch::Sender<bool>>>,
    /// Itself, for the background tasks it spawns (baseline runs).
    pub(crate) me: std::sync::Weak<Worker>,
    /// Baseline runs in flight or finished but not yet recorded, by feature.
    pub(crate) baselines:
        Mutex<HashMap<FeatureId, tokio::task::JoinHandle<Option<checks::Baseline>>>>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// The stream moved under us (a cancel, another worker): reload and decide again.
    #[error("the feature changed concurrently")]
    Conflict,
    #[error("the step was interrupted")]
    Interrupted,
    /// Infrastructure trouble (store down…): the feature is left as it is and retried later.
    #[error("{0}")]
    Infrastructure(String),
}

impl From<AppendError> for StepError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Conflict => StepError::Conflict,
            other => StepError::Infrastructure(other.to_string()),
        }
    }
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        git: Arc<Git>,
        llm: Llm,
        sandbox: Arc<dyn SandboxRuntime>,
        config: WorkerConfig,
    ) -> Arc<Worker> {
        let sandbox_slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_sandboxes.max(1),
        ));
        let llm_slots = Arc::new(tokio::sync::Semaphore::new(
            config.max_concurrent_llm_calls.max(1),
        ));
        Arc::new_cyclic(|me| Worker {
            me: me.clone(),
            store,
            git,
            llm,
            sandbox,
            config,
            sandbox_slots,
            llm_slots,
            repo_slots: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            baselines: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn repository_slots(
        &self,
        resource: steps::Resource,
        repo: RepositoryId,
        total: usize,
    ) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self
            .repo_slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .entry((resource, repo))
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(total.max(1))))
            .clone()
    }

    pub fn workdir(&self, id: FeatureId) -> PathBuf {
        self.config.workspace_base.join(id.to_string())
    }

    pub fn artifacts_dir(&self, id: FeatureId) -> PathBuf {
        self.config.artifacts_base.join(id.to_string())
    }

    /// Stops whatever step this process runs for the feature (dropping the step's future
    /// kills its git, sandbox or LLM call); the caller has already recorded why.
    pub fn interrupt(&self, id: FeatureId) {
        if let Ok(running) = self.running.lock()
            && let Some(tx) = running.get(&id)
        {
            let _ = tx.send(true);
        }
    }

    /// Runs a feature step by step until it ends or cannot progress now.
    pub async fn drive(self: Arc<Self>, id: FeatureId) {
        let (tx, mut rx) = watch::channel(false);
        if let Ok(mut running) = self.running.lock() {
            running.insert(id, tx);
        }
        let mut infrastructure_failures = 0u32;
        loop {
            let (feature, events) = match self.load(id).await {
                Ok(Some(loaded)) => loaded,
                Ok(None) => {
                    tracing::warn!(feature = %id, "work for a feature that does not exist");
                    break;
                }
                // An outage is not this feature's fault: serve re-publishes every unfinished
                // feature once the store answers again.
                Err(LoadError::Unavailable(e)) => {
                    tracing::warn!(feature = %id, error = %e, "the store is unreachable; the feature resumes when it answers");
                    break;
                }
                Err(LoadError::Broken(e)) => {
                    tracing::error!(feature = %id, error = %e, "cannot load feature");
                    break;
                }
            };
            let step = feature.next_step();
            if step == NextStep::Done {
                self.cleanup(&feature).await;
                break;
            }
            tracing::info!(feature = %id, ?step, state = feature.state.as_str(), "running step");
            let minutes = match feature.spec.constraints.timeout_minutes {
                0 => builder_core::FeatureSpec::DEFAULT_TIMEOUT_MINUTES,
                m => m,
            };
            let deadline = feature.created_at + chrono::Duration::minutes(i64::from(minutes));
            let remaining = (deadline - chrono::Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            let outcome = tokio::select! {
                r = steps::run(&self, feature, events, step.clone()) => r,
                // The guard `wait_for` returns must not live across the timeout branch's await.
                _ = async { let _ = rx.wait_for(|v| *v).await; } => Err(StepError::Interrupted),
                _ = tokio::time::sleep(remaining) => {
                    let why = format!(
                        "the feature ran longer than its limit of {minutes} minute(s) (constraints.timeout_minutes)"
                    );
                    self.time_out(id, why).await
                }
                _ = tokio::time::sleep(self.config.step_timeout) => {
                    let why = format!(
                        "the {step:?} step ran longer than {} s (BUILDER_STEP_TIMEOUT_SECONDS)",
                        self.config.step_timeout.as_secs()
                    );
                    self.time_out(id, why).await
                }
            };
            match outcome {
                Ok(()) => infrastructure_failures = 0,
                Err(StepError::Conflict) => continue,
                Err(StepError::Interrupted) => {
                    // Reload: the interrupting cancel is in the stream; the next turn cleans up.
                    rx.borrow_and_update();
                    if let Ok(running) = self.running.lock()
                        && let Some(tx) = running.get(&id)
                    {
                        tx.send_replace(false);
                    }
                    continue;
                }
                Err(StepError::Infrastructure(e)) => {
                    infrastructure_failures += 1;
                    tracing::error!(feature = %id, ?step, error = %e, attempt = infrastructure_failures, "step hit an infrastructure error");
                    if infrastructure_failures >= 5 {
                        // Left non-terminal on purpose: the next start-up re-enqueues it.
                        break;
                    }
                    let delay_ms = 200 * 2u64.pow(infrastructure_failures)
                        + (uuid::Uuid::now_v7().as_u128() as u64) % 100;
                    // Visible like any other retry; if the store itself is down this append
                    // fails too, and the log above is what remains.
                    if let Ok(Some((feature, _))) = self.load(id).await
                        && !feature.state.is_terminal()
                    {
                        let retrying = builder_core::event::Event::StepRetrying {
                            step: format!("{step:?}"),
                            attempt: infrastructure_failures,
                            error: e.clone(),
                            delay_ms,
                        };
                        let _ = builder_store::append_events(
                            &*self.store,
                            &feature,
                            vec![retrying],
                            None,
                            PRODUCER,
                        )
                        .await;
                    }
                    tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                }
            }
        }
        if let Ok(mut running) = self.running.lock() {
            running.remove(&id);
        }
    }

    /// The feature ran past `constraints.timeout_minutes`, or one step past the step
    /// timeout: the running step was dropped (killing its child processes) and the feature
    /// ends with TIMEOUT.
    async fn time_out(&self, id: FeatureId, message: String) -> Result<(), StepError> {
        // The step appended events before it was dropped: decide on the stream as it is now.
        for _ in 0..10 {
            let feature = match self.load(id).await {
                Ok(Some((feature, _))) => feature,
                Ok(None) => return Ok(()),
                Err(e) => return Err(StepError::Infrastructure(e.to_string())),
            };
            if feature.state.is_terminal() {
                return Ok(());
            }
            let error = builder_core::event::ExecutionError {
                code: builder_core::event::ErrorCode::Timeout,
                message: message.clone(),
                details: String::new(),
                retryable: true,
                failed_step: feature.state.phase().to_string(),
            };
            let failed = vec![builder_core::event::Event::FeatureFailed { error }];
            match builder_store::append_events(&*self.store, &feature, failed, None, PRODUCER).await
            {
                Ok(_) => return Ok(()),
                Err(builder_store::AppendError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StepError::Conflict)
    }

    async fn load(
        &self,
        id: FeatureId,
    ) -> Result<Option<(Feature, Vec<EventEnvelope>)>, LoadError> {
        let events = self.store.read_stream(id, 0).await.map_err(|e| {
            if e.is_unavailable() {
                LoadError::Unavailable(e.to_string())
            } else {
                LoadError::Broken(e.to_string())
            }
        })?;
        if events.is_empty() {
            return Ok(None);
        }
        let feature = Feature::from_events(&events)
            .map_err(|e| LoadError::Broken(format!("the stream does not fold: {e}")))?;
        Ok(Some((feature, events)))
    }

    /// Where the baseline run clones the untouched code.
    pub(crate) fn baseline_dir(&self, id: FeatureId) -> PathBuf {
        self.config.workspace_base.join(format!("{id}.baseline"))
    }

    /// The feature's own build cache (compiled artifacts: its code, so its alone).
    pub(crate) fn feature_cache(&self, id: FeatureId) -> PathBuf {
        self.config.cache_base.join("features").join(id.to_string())
    }

    /// Package downloads shared by a repository's features: content the registries serve
    /// and the package managers verify by checksum, not code the features wrote.
    pub(crate) fn repository_cache(&self, repo: RepositoryId) -> PathBuf {
        self.config
            .cache_base
            .join("repositories")
            .join(repo.to_string())
    }

    async fn cleanup(&self, feature: &Feature) {
        let handle = self
            .baselines
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&feature.id);
        if let Some(handle) = handle {
            if feature.state == builder_core::FeatureState::Failed {
                // What the untouched code does is still worth knowing (was the failure the
                // repository's own?): let the baseline finish and record itself, then clean.
                let Some(me) = self.me.upgrade() else {
                    return;
                };
                let feature = feature.clone();
                tokio::spawn(async move {
                    let _ = handle.await;
                    me.remove_dirs(&feature).await;
                });
                return;
            }
            handle.abort();
        }
        self.remove_dirs(feature).await;
    }

    async fn remove_dirs(&self, feature: &Feature) {
        if self.config.keep_workspaces {
            return;
        }
        for dir in [
            self.workdir(feature.id),
            self.baseline_dir(feature.id),
            self.feature_cache(feature.id),
        ] {
            if tokio::fs::try_exists(&dir).await.unwrap_or(false)
                && let Err(e) = tokio::fs::remove_dir_all(&dir).await
            {
                tracing::warn!(feature = %feature.id, dir = %dir.display(), error = %e, "could not remove a working directory");
            }
        }
    }
}
