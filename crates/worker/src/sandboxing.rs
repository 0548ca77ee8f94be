//! How the worker runs a repository's commands: the sandbox spec with the feature's build
//! caches and report directory, and the baseline run on the untouched code.

use crate::checks::{Baseline, build_checked, read_reports, tests_checked};
use crate::steps::{Resource, framework_of};
use crate::{StepError, Worker};
use builder_core::Feature;
use builder_core::event::Event;
use builder_git::GitCredential;
use builder_sandbox::{CommandSpec, SandboxLimits};
use std::path::{Path, PathBuf};

/// What a baseline run produced, to be recorded by the feature's next step.
pub(crate) struct BaselineRun {
    pub events: Vec<Event>,
    pub baseline: Option<Baseline>,
    pub artifacts: Vec<(String, Vec<u8>)>,
    /// Why there is no baseline (the copy could not be made, the sandbox failed…).
    pub skipped: Option<String>,
}

impl BaselineRun {
    pub(crate) fn skipped(why: String) -> BaselineRun {
        BaselineRun {
            events: Vec::new(),
            baseline: None,
            artifacts: Vec::new(),
            skipped: Some(why),
        }
    }
}

/// Cache directories below the feature's and the repository's cache, and the variables
/// that point the usual tools at them.
const FEATURE_CACHES: [(&str, &str); 3] = [
    ("CARGO_TARGET_DIR", "cargo-target"),
    ("GOCACHE", "go-build"),
    ("XDG_CACHE_HOME", "xdg"),
];
const REPOSITORY_CACHES: [(&str, &str); 3] = [
    ("npm_config_cache", "npm"),
    ("PIP_CACHE_DIR", "pip"),
    ("GOMODCACHE", "go-mod"),
];

impl Worker {
    /// The sandbox spec of one command, and the directory it may write reports into
    /// (`$BUILDER_REPORT_DIR`, emptied first).
    pub(crate) async fn command_spec(
        &self,
        feature: &Feature,
        workdir: &Path,
        command: &str,
        label: &str,
    ) -> Result<(CommandSpec, PathBuf), StepError> {
        let feature_cache = self.feature_cache(feature.id);
        let repo_cache = self.repository_cache(feature.spec.repository_id);
        let reports = feature_cache.join("reports").join(label);
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
        for (var, dir) in FEATURE_CACHES {
            let path = feature_cache.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| io("build cache", e))?;
            spec.env.push((var.into(), path.display().to_string()));
        }
        for (var, dir) in REPOSITORY_CACHES {
            let path = repo_cache.join(dir);
            tokio::fs::create_dir_all(&path)
                .await
                .map_err(|e| io("download cache", e))?;
            spec.env.push((var.into(), path.display().to_string()));
        }
        spec.env
            .push(("BUILDER_REPORT_DIR".into(), reports.display().to_string()));
        spec.writable_extra = vec![feature_cache, repo_cache];
        spec.limits = SandboxLimits {
            timeout: self.config.sandbox_timeout,
            max_output_bytes: self.config.max_output_bytes,
            memory_mb: self.config.sandbox_memory_mb,
            cpu: self.config.sandbox_cpu,
        };
        Ok((spec, reports))
    }

    /// Builds and tests a fresh clone of the feature's working copy as it was checked out
    /// (its uncommitted changes are not in a clone), so the result is the untouched code's.
    pub(crate) async fn baseline(
        &self,
        feature: &Feature,
        build: Option<String>,
        test: String,
    ) -> BaselineRun {
        let workdir = self.workdir(feature.id);
        let dir = self.baseline_dir(feature.id);
        if tokio::fs::try_exists(&dir).await.unwrap_or(false)
            && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        {
            return BaselineRun::skipped(format!("clearing {}: {e}", dir.display()));
        }
        let source = format!("file://{}", workdir.display());
        if let Err(e) = self
            .git
            .clone_repo(&source, &dir, None, &GitCredential::None)
            .await
        {
            return BaselineRun::skipped(format!("copying the untouched code: {e}"));
        }
        let run = self.baseline_in(feature, &dir, build, test).await;
        if !self.config.keep_workspaces {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        run
    }

    async fn baseline_in(
        &self,
        feature: &Feature,
        dir: &Path,
        build: Option<String>,
        test: String,
    ) -> BaselineRun {
        let repo = feature.spec.repository_id;
        // The same slots as any verification: the baseline is not free capacity.
        let mut permits = Vec::new();
        for (semaphore, _) in [
            (
                self.repository_slots(
                    Resource::Sandbox,
                    repo,
                    self.config.max_sandboxes_per_repository,
                ),
                "repository",
            ),
            (self.sandbox_slots.clone(), "global"),
        ] {
            match semaphore.acquire_owned().await {
                Ok(p) => permits.push(p),
                Err(_) => return BaselineRun::skipped("the sandbox slots were closed".into()),
            }
        }
        let mut run = BaselineRun {
            events: Vec::new(),
            baseline: None,
            artifacts: Vec::new(),
            skipped: None,
        };
        if let Some(build) = build {
            let out = match self.run_in(feature, dir, &build, "baseline-build").await {
                Ok((out, _)) => out,
                Err(e) => return BaselineRun::skipped(format!("the baseline build: {e}")),
            };
            run.artifacts
                .push(("baseline-build.log".into(), out.output.clone().into_bytes()));
            let checked = build_checked(&build, &out, true);
            run.events.push(checked.event);
            if checked.failure.is_some() {
                run.baseline = Some(Baseline {
                    broken: true,
                    summary: "the build failed".into(),
                    ..Baseline::default()
                });
                return run;
            }
        }
        let (out, reports) = match self.run_in(feature, dir, &test, "baseline-tests").await {
            Ok(r) => r,
            Err(e) => return BaselineRun::skipped(format!("the baseline tests: {e}")),
        };
        run.artifacts
            .push(("baseline-tests.log".into(), out.output.clone().into_bytes()));
        let checked = tests_checked(
            &test,
            framework_of(&test),
            &out,
            &reports,
            true,
            None,
            self.config.baseline_mode,
        );
        if let Some(json) = checked.report_json {
            run.artifacts.push(("baseline-tests.json".into(), json));
        }
        run.events.push(checked.event);
        run.baseline = Some(checked.as_baseline);
        run
    }

    async fn run_in(
        &self,
        feature: &Feature,
        dir: &Path,
        command: &str,
        label: &str,
    ) -> Result<(builder_sandbox::ExecOutcome, Vec<(String, String)>), String> {
        let (spec, reports) = self
            .command_spec(feature, dir, command, label)
            .await
            .map_err(|e| e.to_string())?;
        let out = self.sandbox.run(&spec).await.map_err(|e| e.to_string())?;
        Ok((out, read_reports(&reports).await))
    }
}
