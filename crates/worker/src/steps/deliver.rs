use super::*;

impl Run<'_> {
    // ---------------------------------------------------------------- delivery

    pub(super) async fn deliver(&mut self) -> Result<(), StepError> {
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
    pub(super) async fn pull_request(
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

    pub(super) fn pull_request_body(&self, stats: &builder_git::DiffStats) -> String {
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

    pub(super) fn commit_message(&self) -> String {
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
}
