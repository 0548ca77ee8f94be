use super::*;

impl Run<'_> {
    // ---------------------------------------------------------------- analysis

    pub(super) async fn analyze(&mut self) -> Result<(), StepError> {
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
            deps: repo
                .properties
                .get("deps_command")
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
            reasons: profile.reasons.clone(),
            deps_command: profile.deps_command.clone(),
        }])
        .await?;
        self.start_baseline();

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
    pub(super) async fn context(&self) -> Result<builder_llm::RepoContext, StepError> {
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

    pub(super) fn analysis(&self) -> builder_llm::Analysis {
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
}
