//! How the worker runs a repository's commands: the sandbox spec of each phase (dependencies,
//! build, tests) on each tree (the feature's working copy, or the baseline's copy of the
//! untouched code), and the baseline run itself.
//!
//! The invariant this module keeps: the build and tests that decide delivery run on exactly
//! the working copy, with no compiled output from another tree. Each tree has its own build
//! cache (cargo's target directory, Go's build cache, XDG caches): cargo decides freshness by
//! timestamps and its test binaries embed their tree's path, so output shared between the
//! baseline copy and the working copy would be taken as fresh for edited sources, or would
//! point into a tree that is not mounted. Only package downloads, which the package managers
//! verify by checksum and which hold no compiled output, are shared by a repository's trees;
//! cargo's download cache is written only by the dependency phase and read-only otherwise.

use crate::checks::{Baseline, build_checked, deps_checked, read_reports, tests_checked};
use crate::steps::{Resource, framework_of};
use crate::{PRODUCER, StepError, Worker};
use builder_core::event::Event;
use builder_core::{Feature, FeatureId};
use builder_git::GitCredential;
use builder_sandbox::{CommandSpec, ExecOutcome, HostPattern, SandboxLimits};
use std::path::{Path, PathBuf};

/// Which tree a command runs on; each has its own compiled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tree {
    Work,
    Baseline,
}

impl Tree {
    fn cache_dir(self) -> &'static str {
        match self {
            Tree::Work => "work",
            Tree::Baseline => "baseline",
        }
    }
}

/// What a command is for, which decides its network and what it may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase<'h> {
    /// Fetches dependencies: only these package registry hosts are reachable, and the
    /// repository's download caches are writable.
    Dependencies(&'h [HostPattern]),
    /// Build and tests: no network (unless the operator's egress allow-list says
    /// otherwise), downloads read from the caches the dependency phase filled.
    Check,
}

/// What the commands of a tree are: from `codebase.analyzed`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Commands {
    pub deps: Option<String>,
    pub build: Option<String>,
    pub test: Option<String>,
    pub languages: Vec<String>,
}

/// Compiled output, per feature and tree, and the variables that point the usual tools at it.
const TREE_CACHES: [(&str, &str); 3] = [
    ("CARGO_TARGET_DIR", "cargo-target"),
    ("GOCACHE", "go-build"),
    ("XDG_CACHE_HOME", "xdg"),
];
/// Package downloads shared by a repository's features and trees.
const REPOSITORY_CACHES: [(&str, &str); 3] = [
    ("npm_config_cache", "npm"),
    ("PIP_CACHE_DIR", "pip"),
    ("GOMODCACHE", "go-mod"),
];
/// Cargo's home for the repository: registry index, downloaded crates and their sources.
/// Written only by the dependency phase: extracted sources are code every later build
/// compiles, so a build must not be able to change them for the next one.
const CARGO_HOME_DIR: &str = "cargo-home";

impl Worker {
    /// The sandbox spec of one command, and the directory it may write reports into
    /// (`$BUILDER_REPORT_DIR`, emptied first).
    pub(crate) async fn command_spec(
        &self,
        feature: &Feature,
        workdir: &Path,
        command: &str,
        label: &str,
        tree: Tree,
        phase: Phase<'_>,
    ) -> Result<(CommandSpec, PathBuf), StepError> {
        let tree_cache = self.feature_cache(feature.id).join(tree.cache_dir());
        let repo_cache = self.repository_cache(feature.spec.repository_id);
        let reports = self
            .feature_cache(feature.id)
            .join("reports")
            .join(tree.cache_dir())
            .join(label);
        let io = |what: &str, e: std::io::Error| {
            StepError::Infrastructure(format!("preparing the {what}: {e}"))
        };
        if tokio::fs::try_exists(&reports).await.unwrap_or(false) {
            tokio::fs::remove_dir_all(&reports)
                .await
                .map_err(|e| io("report directory", e))?;
        }
        tokio::fs::create_dir_all(&reports)
            .await
            .map_err(|e| io("report directory", e))?;
        let mut spec = CommandSpec::new(workdir, command);
        for (var, dir) in TREE_CACHES {
            let path = tree_cache.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| io("build cache", e))?;
            spec.env.push((var.into(), path.display().to_string()));
        }
        let shared = repo_cache.join("shared");
        for (var, dir) in REPOSITORY_CACHES {
            let path = shared.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| io("download cache", e))?;
            spec.env.push((var.into(), path.display().to_string()));
        }
        let cargo_home = repo_cache.join(CARGO_HOME_DIR);
        tokio::fs::create_dir_all(&cargo_home)
            .await
            .map_err(|e| io("cargo home", e))?;
        spec.env
            .push(("CARGO_HOME".into(), cargo_home.display().to_string()));
        spec.env
            .push(("BUILDER_REPORT_DIR".into(), reports.display().to_string()));
        spec.writable_extra = vec![tree_cache, reports.clone(), shared];
        match phase {
            Phase::Dependencies(hosts) => {
                spec.writable_extra.push(cargo_home);
                spec.network = Some(hosts.to_vec());
                spec.env.push(("CARGO_NET_OFFLINE".into(), "false".into()));
            }
            Phase::Check => {
                spec.readonly_extra.push(cargo_home);
                // Dependencies came from the dependency phase; cargo must not try the
                // network, whatever the egress allow-list lets through.
                spec.env.push(("CARGO_NET_OFFLINE".into(), "true".into()));
            }
        }
        spec.limits = SandboxLimits {
            timeout: self.config.sandbox_timeout,
            max_output_bytes: self.config.max_output_bytes,
            memory_mb: self.config.sandbox_memory_mb,
            cpu: self.config.sandbox_cpu,
        };
        Ok((spec, reports))
    }

    /// Runs one command in the sandbox and reads the reports it left.
    pub(crate) async fn run_phase(
        &self,
        feature: &Feature,
        dir: &Path,
        command: &str,
        label: &str,
        tree: Tree,
        phase: Phase<'_>,
    ) -> Result<(ExecOutcome, Vec<(String, String)>), StepError> {
        let (spec, reports) = self
            .command_spec(feature, dir, command, label, tree, phase)
            .await?;
        let out = self
            .sandbox
            .run(&spec)
            .await
            .map_err(|e| StepError::Infrastructure(format!("sandbox: {e}")))?;
        Ok((out, read_reports(&reports).await))
    }

    /// The registry hosts a dependency phase for these commands may reach.
    pub(crate) fn dependency_hosts(&self, commands: &Commands) -> Vec<HostPattern> {
        self.config.registries.for_languages(&commands.languages)
    }

    /// Appends records that change no state (the baseline's) whatever the feature's steps
    /// appended meanwhile, so they are in the stream as they happen.
    pub(crate) async fn record_side(&self, id: FeatureId, events: Vec<Event>) {
        for _ in 0..50 {
            let feature = match self.load(id).await {
                Ok(Some((feature, _))) => feature,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(feature = %id, error = %e, "cannot record the baseline");
                    return;
                }
            };
            match builder_store::append_events(
                &*self.store,
                &feature,
                events.clone(),
                None,
                PRODUCER,
            )
            .await
            {
                Ok(_) => return,
                Err(builder_store::AppendError::Conflict) => continue,
                Err(e) => {
                    tracing::warn!(feature = %id, error = %e, "cannot record the baseline");
                    return;
                }
            }
        }
        tracing::warn!(feature = %id, "the baseline could not be recorded: the feature kept changing");
    }

    pub(crate) async fn write_feature_artifact(&self, id: FeatureId, name: &str, bytes: &[u8]) {
        let dir = self.artifacts_dir(id);
        let result = async {
            tokio::fs::create_dir_all(&dir).await?;
            tokio::fs::write(dir.join(name), bytes).await
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(feature = %id, artifact = name, error = %e, "could not write artifact");
        }
    }

    /// Fetches dependencies, builds and tests a fresh clone of the feature's working copy as
    /// it was checked out (uncommitted changes are not in a clone), recording each step as
    /// it happens. `None` when there is no baseline (and the log says why).
    pub(crate) async fn baseline(
        &self,
        feature: &Feature,
        commands: &Commands,
    ) -> Option<Baseline> {
        let workdir = self.workdir(feature.id);
        let dir = self.baseline_dir(feature.id);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false)
            && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        {
            tracing::warn!(feature = %feature.id, error = %e, "no baseline: clearing its copy");
            return None;
        }
        let source = format!("file://{}", workdir.display());
        if let Err(e) = self
            .git
            .clone_repo(&source, &dir, None, &GitCredential::None)
            .await
        {
            tracing::warn!(feature = %feature.id, error = %e, "no baseline: copying the untouched code");
            return None;
        }
        let result = self.baseline_in(feature, &dir, commands).await;
        if !self.config.keep_workspaces {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        match result {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(feature = %feature.id, error = %e, "no baseline");
                None
            }
        }
    }

    async fn baseline_in(
        &self,
        feature: &Feature,
        dir: &Path,
        commands: &Commands,
    ) -> Result<Option<Baseline>, StepError> {
        let Some(test) = commands.test.clone() else {
            return Ok(None);
        };
        let repo = feature.spec.repository_id;
        // The same slots as any verification: the baseline is not free capacity.
        let mut permits = Vec::new();
        for semaphore in [
            self.repository_slots(
                Resource::Sandbox,
                repo,
                self.config.max_sandboxes_per_repository,
            ),
            self.sandbox_slots.clone(),
        ] {
            permits.push(
                semaphore.acquire_owned().await.map_err(|_| {
                    StepError::Infrastructure("the sandbox slots were closed".into())
                })?,
            );
        }
        let id = feature.id;
        if let Some(deps) = &commands.deps {
            let hosts = self.dependency_hosts(commands);
            let started = Event::DependenciesStarted {
                command: deps.clone(),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                baseline: true,
            };
            let (out, _) = self
                .baseline_step(
                    feature,
                    dir,
                    started,
                    deps,
                    "deps",
                    Phase::Dependencies(&hosts),
                )
                .await?;
            let checked = deps_checked(deps, &out, true, &hosts);
            self.record_side(id, vec![checked.event]).await;
            if checked.failure.is_some() {
                return Ok(Some(Baseline::deps_failed(&out.output)));
            }
        }
        if let Some(build) = &commands.build {
            let started = Event::BuildStarted {
                command: build.clone(),
                baseline: true,
            };
            let (out, _) = self
                .baseline_step(feature, dir, started, build, "build", Phase::Check)
                .await?;
            let checked = build_checked(build, &out, true);
            self.record_side(id, vec![checked.event]).await;
            if checked.failure.is_some() {
                return Ok(Some(Baseline::build_failed(&out.output)));
            }
        }
        let started = Event::TestsStarted {
            command: test.clone(),
            baseline: true,
        };
        let (out, reports) = self
            .baseline_step(feature, dir, started, &test, "tests", Phase::Check)
            .await?;
        let checked = tests_checked(
            &test,
            framework_of(&test),
            &out,
            &reports,
            true,
            None,
            self.config.baseline_mode,
        );
        if let Some(json) = &checked.report_json {
            self.write_feature_artifact(id, "baseline-tests.json", json)
                .await;
        }
        self.record_side(id, vec![checked.event]).await;
        drop(permits);
        Ok(Some(checked.as_baseline))
    }

    /// One command of the baseline: recorded as it starts, run on the baseline's tree, its
    /// log kept as the `baseline-<label>.log` artifact.
    async fn baseline_step(
        &self,
        feature: &Feature,
        dir: &Path,
        started: Event,
        command: &str,
        label: &str,
        phase: Phase<'_>,
    ) -> Result<(ExecOutcome, Vec<(String, String)>), StepError> {
        self.record_side(feature.id, vec![started]).await;
        let label = format!("baseline-{label}");
        let (out, reports) = self
            .run_phase(feature, dir, command, &label, Tree::Baseline, phase)
            .await?;
        self.write_feature_artifact(feature.id, &format!("{label}.log"), out.output.as_bytes())
            .await;
        Ok((out, reports))
    }
}
