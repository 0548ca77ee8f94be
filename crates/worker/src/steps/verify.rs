use super::*;

impl Run<'_> {
    // ---------------------------------------------------------------- verification

    pub(super) async fn verify(&mut self, iteration: u32) -> Result<(), StepError> {
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

    /// Runs `command` on `workdir` in the sandbox with the feature's caches, and reads the
    /// report files it left in `$BUILDER_REPORT_DIR`.
    pub(super) async fn sandboxed(
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
    pub(super) fn start_baseline(&self, build: Option<String>, test: String) {
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
    pub(super) async fn record_baseline(
        &mut self,
        wait: bool,
    ) -> Result<Option<Baseline>, StepError> {
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
    pub(super) fn recorded_baseline(&self) -> Option<Baseline> {
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
