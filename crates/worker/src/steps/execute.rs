use super::*;

impl Run<'_> {
    // ---------------------------------------------------------------- execution

    pub(super) async fn execute(&mut self, iteration: u32) -> Result<(), StepError> {
        if self.baseline_broke().await? {
            return Ok(());
        }
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

    pub(super) fn step_done(&self, iteration: u32, index: u32) -> bool {
        self.events.iter().filter_map(|e| e.event().ok()).any(|e| {
            matches!(e, Event::StepCompleted { iteration: i, index: x } if i == iteration && x == index)
        }) && self.feature.iteration == iteration
    }

    /// Files that differ from the commit the feature started from.
    pub(super) async fn changed_files(&self) -> Vec<String> {
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
    pub(super) async fn generate_step(
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
            // Feedback quotes build output and, when edits did not apply, the real lines of
            // the file next to the model's search block: a secret there must not travel.
            let shown = feedback
                .as_deref()
                .map(|f| builder_analysis::redact_secrets(f).0);
            let edits = match self
                .call(
                    "GenerateEdits",
                    client.generate(&request, plan, index, &sources, shown.as_deref()),
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
            let writes_redacted = writes_redaction_marker(&self.workdir(), &edits.edits);
            if !writes_redacted.is_empty() {
                last_error = format!(
                    "edits would write `{}` into {}: those values were withheld from you and \
                     the file keeps its real ones; leave those lines out of your edits \
                     (SEARCH_REPLACE on the lines around them)",
                    builder_analysis::REDACTED,
                    writes_redacted.join(", ")
                );
                feedback = Some(last_error.clone());
                continue;
            }
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
    pub(super) async fn read_sources(&self, files: &[String]) -> Vec<builder_llm::SourceFile> {
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
}

/// The paths whose edit would write more of builder's redaction marker than the text it
/// replaces holds: a model that copies a redacted line back would overwrite a real secret
/// (a password the application needs) with the marker.
fn writes_redaction_marker(root: &std::path::Path, edits: &[builder_llm::Edit]) -> Vec<String> {
    let count = |s: &str| s.matches(builder_analysis::REDACTED).count();
    edits
        .iter()
        .filter(|e| {
            let written = e
                .content
                .as_deref()
                .or(e.replace.as_deref())
                .map_or(0, count);
            if written == 0 {
                return false;
            }
            let replaced = match (&e.search, &e.content) {
                (Some(search), None) => count(search),
                // A whole file: what it holds now (the real file, never the prompt's copy);
                // a path that leaves the working copy is refused when the edits apply.
                _ if std::path::Path::new(&e.path).components().all(|c| {
                    matches!(
                        c,
                        std::path::Component::Normal(_) | std::path::Component::CurDir
                    )
                }) =>
                {
                    std::fs::read_to_string(root.join(&e.path)).map_or(0, |t| count(&t))
                }
                _ => 0,
            };
            written > replaced
        })
        .map(|e| e.path.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::writes_redaction_marker;
    use builder_analysis::REDACTED;
    use builder_llm::{Edit, EditAction};

    fn edit(path: &str, action: EditAction) -> Edit {
        Edit {
            path: path.into(),
            action,
            content: None,
            search: None,
            replace: None,
        }
    }

    #[test]
    fn copying_a_redacted_value_back_is_refused_but_keeping_a_real_marker_is_not() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("settings.py"),
            "DB_PASSWORD = \"hunter2\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("marker.rs"),
            format!("const M: &str = \"{REDACTED}\";\n"),
        )
        .unwrap();
        let whole = Edit {
            content: Some(format!("DB_PASSWORD = \"{REDACTED}\"\nDEBUG = True\n")),
            ..edit("settings.py", EditAction::ReplaceFile)
        };
        let line = Edit {
            search: Some("DEBUG = False".into()),
            replace: Some(format!("DB_PASSWORD = \"{REDACTED}\"\nDEBUG = True")),
            ..edit("settings.py", EditAction::SearchReplace)
        };
        // The file already holds the marker text as code of its own (builder's own sources).
        let own = Edit {
            content: Some(format!(
                "const M: &str = \"{REDACTED}\";\nconst N: u8 = 1;\n"
            )),
            ..edit("marker.rs", EditAction::ReplaceFile)
        };
        let untouched = Edit {
            search: Some(format!("DB_PASSWORD = \"{REDACTED}\"")),
            replace: Some(format!("DB_PASSWORD = \"{REDACTED}\"  # from the vault")),
            ..edit("settings.py", EditAction::SearchReplace)
        };
        let outside = Edit {
            content: Some(REDACTED.into()),
            ..edit("../x", EditAction::Create)
        };
        assert_eq!(
            writes_redaction_marker(dir.path(), &[whole, line, own, untouched]),
            vec!["settings.py".to_string(), "settings.py".to_string()]
        );
        assert_eq!(
            writes_redaction_marker(dir.path(), &[outside]),
            vec!["../x".to_string()]
        );
    }
}
