use super::*;
use crate::checks::deps_checked;
use crate::sandboxing::{Commands, Phase, Tree};

impl Run<'_> {
    // ---------------------------------------------------------------- verification

    pub(super) async fn verify(&mut self, iteration: u32) -> Result<(), StepError> {
        if self.feature.state == FeatureState::Executing {
            self.emit(vec![Event::VerificationStarted { iteration }])
                .await?;
        }
        let commands = self.commands();
        let Some(test) = commands.test.clone() else {
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
        // What the untouched code did decides which failures are new, and whether a
        // failure is the repository's own rather than the change's.
        let baseline = self
            .baseline_result(self.w.config.baseline_mode == BaselineMode::Tolerate)
            .await?;
        if let Some(b) = &baseline
            && (b.deps_failed || b.build_failed)
        {
            return self.fail_environment(b).await;
        }
        let _slot = self.slot(Resource::Sandbox).await?;
        self.emit(vec![Event::SandboxCreated {
            runtime: self.w.sandbox.name().to_string(),
            enforced_limits: self.enforced_limits(),
        }])
        .await?;

        let workdir = self.workdir();
        let mut failure: Option<(String, String)> = None;
        if let Some(deps) = &commands.deps {
            let hosts = self.w.dependency_hosts(&commands);
            self.emit(vec![Event::DependenciesStarted {
                command: deps.clone(),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                baseline: false,
            }])
            .await?;
            let (out, _) = self
                .w
                .run_phase(
                    &self.feature,
                    &workdir,
                    deps,
                    "deps",
                    Tree::Work,
                    Phase::Dependencies(&hosts),
                )
                .await?;
            self.write_artifact(&format!("deps-{iteration}.log"), out.output.as_bytes())
                .await;
            let checked = deps_checked(deps, &out, false, &hosts);
            self.emit(vec![checked.event]).await?;
            failure = checked.failure;
        }
        // The tree the build and tests run on: the change, with what dependency resolution
        // wrote (a lockfile). What they write into the working copy is their output, not
        // part of the change, and is taken out again below, so the commit is this tree.
        let verified_tree = match self.w.git.checkpoint(&workdir).await {
            Ok(tree) => tree,
            Err(e) => {
                return Err(StepError::Infrastructure(format!(
                    "recording the tree under verification: {e}"
                )));
            }
        };
        if failure.is_none()
            && let Some(build) = &commands.build
        {
            self.emit(vec![Event::BuildStarted {
                command: build.clone(),
                baseline: false,
            }])
            .await?;
            let (out, _) = self.checked_run(&workdir, build, "build").await?;
            self.write_artifact(&format!("build-{iteration}.log"), out.output.as_bytes())
                .await;
            let checked = build_checked(build, &out, false);
            self.emit(vec![checked.event]).await?;
            failure = checked.failure;
        }
        let mut test_summary = String::new();
        if failure.is_none() {
            self.emit(vec![Event::TestsStarted {
                command: test.clone(),
                baseline: false,
            }])
            .await?;
            let (out, reports) = self.checked_run(&workdir, &test, "tests").await?;
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
            if let Some(f) = checked.failure {
                if let Some(why) = not_caused_by_the_change(
                    &checked.as_baseline,
                    baseline.as_ref(),
                    self.w.config.baseline_mode,
                ) {
                    self.emit(vec![Event::SandboxDestroyed {}]).await?;
                    self.back_to(&workdir, &verified_tree).await?;
                    return self
                        .fail(None, ErrorCode::TestFailed, why, f.1, false)
                        .await;
                }
                failure = Some(f);
            }
        }
        self.emit(vec![Event::SandboxDestroyed {}]).await?;
        self.back_to(&workdir, &verified_tree).await?;
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
        // The diff's context lines and the test output may quote a secret of the repository.
        let diff = builder_analysis::redact_secrets(&self.diff().await).0;
        let shown_summary = builder_analysis::redact_secrets(&test_summary).0;
        let request = self.request();
        match self
            .call(
                "ValidateChange",
                client.validate(&request, &diff, &shown_summary),
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

    /// Puts the working copy back to the tree that was verified, when the build or tests
    /// wrote into it (test output, generated files), so that exactly that tree is delivered.
    async fn back_to(&self, workdir: &Path, tree: &str) -> Result<(), StepError> {
        let now = self
            .w
            .git
            .checkpoint(workdir)
            .await
            .map_err(|e| StepError::Infrastructure(format!("reading the working copy: {e}")))?;
        if now == tree {
            return Ok(());
        }
        tracing::info!(feature = %self.feature.id, "the build or tests wrote into the working copy; restoring the verified tree");
        self.w
            .git
            .restore_checkpoint(workdir, tree)
            .await
            .map_err(|e| StepError::Infrastructure(format!("restoring the verified tree: {e}")))
    }

    /// A build or test command on the working copy (no network, its own build cache).
    async fn checked_run(
        &self,
        workdir: &Path,
        command: &str,
        label: &str,
    ) -> Result<(ExecOutcome, Vec<(String, String)>), StepError> {
        self.w
            .run_phase(
                &self.feature,
                workdir,
                command,
                label,
                Tree::Work,
                Phase::Check,
            )
            .await
    }

    /// The commands analysis recorded.
    pub(super) fn commands(&self) -> Commands {
        self.last(|e| match e {
            Event::CodebaseAnalyzed {
                languages,
                build_command,
                test_command,
                deps_command,
                ..
            } => Some(Commands {
                deps: deps_command,
                build: build_command,
                test: test_command,
                languages,
            }),
            _ => None,
        })
        .unwrap_or_default()
    }

    /// Starts the baseline run on a clone of the untouched working copy, beside analysis and
    /// planning; it records itself as it goes.
    pub(super) fn start_baseline(&self) {
        let commands = self.commands();
        if self.w.config.baseline_mode == BaselineMode::Off || commands.test.is_none() {
            return;
        }
        let Some(w) = self.w.me.upgrade() else {
            return;
        };
        let feature = self.feature.clone();
        let handle = tokio::spawn(async move { w.baseline(&feature, &commands).await });
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

    /// At a step boundary: when the baseline has shown that the untouched code cannot fetch
    /// its dependencies or does not build, the feature ends now, as an environment problem,
    /// instead of spending LLM calls and repair iterations on it. `true` when it ended.
    pub(super) async fn baseline_broke(&mut self) -> Result<bool, StepError> {
        self.catch_up().await?;
        match self.recorded_baseline() {
            Some(b) if b.deps_failed || b.build_failed => {
                self.fail_environment(&b).await?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn fail_environment(&mut self, b: &Baseline) -> Result<(), StepError> {
        let what = if b.deps_failed {
            "the dependencies of the untouched code could not be fetched"
        } else {
            "the untouched code does not build"
        };
        let message = format!(
            "{what}, before any change was made: an environment problem, not the change's (see the baseline's events and logs)"
        );
        // Fetching may work later (a registry back, an allow-list fixed); a build that fails
        // on the repository as it is will not fix itself.
        self.fail(
            None,
            ErrorCode::BuildFailed,
            message,
            b.summary.clone(),
            b.deps_failed,
        )
        .await
    }

    /// The baseline's result: as recorded, or (with `wait`) once the run in flight ends, or
    /// a run started now (after a restart). `None` when there is none (yet).
    async fn baseline_result(&mut self, wait: bool) -> Result<Option<Baseline>, StepError> {
        self.catch_up().await?;
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
        let waiting = Event::StepWaiting {
            resource: "baseline".into(),
            detail: "waiting for the baseline run on the untouched code to finish".into(),
        };
        let result = match handle {
            Some(h) => {
                if !h.is_finished() {
                    self.emit(vec![waiting]).await?;
                }
                h.await.unwrap_or(None)
            }
            None if wait => {
                let commands = self.commands();
                if commands.test.is_none() {
                    return Ok(None);
                }
                self.emit(vec![waiting]).await?;
                self.w.baseline(&self.feature, &commands).await
            }
            None => return Ok(None),
        };
        self.catch_up().await?;
        Ok(result)
    }

    /// The baseline as the stream recorded it.
    fn recorded_baseline(&self) -> Option<Baseline> {
        let mut found = None;
        for e in self.events.iter().filter_map(|e| e.event().ok()) {
            match e {
                Event::DependenciesCompleted {
                    baseline: true,
                    success: false,
                    output_tail,
                    ..
                } => found = Some(Baseline::deps_failed(&output_tail)),
                Event::BuildCompleted {
                    baseline: true,
                    success: false,
                    output_tail,
                    ..
                } => found = Some(Baseline::build_failed(&output_tail)),
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
                        ..Baseline::default()
                    })
                }
                _ => {}
            }
        }
        found
    }

    pub(super) fn enforced_limits(&self) -> Vec<String> {
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

    pub(super) async fn diff(&self) -> String {
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

    pub(super) async fn repair(&mut self, iteration: u32) -> Result<(), StepError> {
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

    pub(super) async fn give_up(&mut self) -> Result<(), StepError> {
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
}
