use super::*;

impl Run<'_> {
    // ---------------------------------------------------------------- planning

    pub(super) async fn plan(&mut self) -> Result<(), StepError> {
        if self.feature.state == FeatureState::Analyzing {
            self.emit(vec![Event::PlanningStarted {}]).await?;
        }
        if self.baseline_broke().await? {
            return Ok(());
        }
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

    pub(super) fn llm_plan(&self) -> builder_llm::Plan {
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
}
