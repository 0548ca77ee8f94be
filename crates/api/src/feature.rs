//! FeatureService: create, read, search, cancel, retry and stream a feature's events.

use crate::Backend;
use crate::convert::{self, invalid, parse_uuid};
use crate::proto::builder::feature::v1::*;
use builder_core::event::Event;
use builder_core::{
    Feature, FeatureId, FeatureSpec, FeatureState, RepositoryState, feature_branch_name,
};
use builder_store::{AppendError, FeatureQuery, StoreError};
use connectrpc::{
    ConnectError, RequestContext, Response, ServiceRequest, ServiceResult, ServiceStream,
};
use futures::StreamExt;
use std::sync::Arc;

const PRODUCER: &str = concat!("builder-api/", env!("CARGO_PKG_VERSION"));

pub struct FeatureApi {
    backend: Arc<dyn Backend>,
}

impl FeatureApi {
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    async fn load(&self, field: &str, id: &str) -> Result<Feature, ConnectError> {
        let id = FeatureId(parse_uuid(field, id)?);
        self.backend
            .store()
            .get_feature(id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| ConnectError::not_found(format!("feature execution {id} not found")))
    }

    /// Creates a new execution. `retry_of` links a retry to the execution it repeats.
    async fn start(
        &self,
        spec: FeatureSpec,
        correlation_id: String,
        idempotency_key: String,
        retry_of: Option<(FeatureId, String)>,
    ) -> Result<Feature, ConnectError> {
        let store = self.backend.store();
        if !idempotency_key.is_empty()
            && let Some(existing) = store
                .find_by_idempotency_key(&idempotency_key)
                .await
                .map_err(store_error)?
        {
            return same_request(existing, &spec);
        }
        let repo = store
            .get_repository(spec.repository_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ConnectError::not_found(format!(
                    "spec.repository_id: repository {} not found",
                    spec.repository_id
                ))
            })?;
        if repo.state != RepositoryState::Active {
            return Err(ConnectError::failed_precondition(format!(
                "spec.repository_id: repository {} is {:?}",
                repo.id, repo.state
            )));
        }
        let id = FeatureId(uuid::Uuid::now_v7());
        let target_branch = if spec.target_branch.is_empty() {
            repo.default_branch.clone()
        } else {
            spec.target_branch.clone()
        };
        let feature_branch = if spec.feature_branch.is_empty() {
            feature_branch_name(id, &spec.title)
        } else {
            spec.feature_branch.clone()
        };
        if feature_branch == target_branch {
            return Err(invalid(
                "spec.feature_branch",
                "must differ from the target branch",
            ));
        }
        let correlation_id = if correlation_id.is_empty() {
            id.to_string()
        } else {
            correlation_id
        };
        let requested = Event::FeatureRequested {
            spec: spec.clone(),
            target_branch,
            feature_branch,
            max_iterations: self.backend.max_repair_iterations(),
            idempotency_key: idempotency_key.clone(),
            retry_of: retry_of.as_ref().map(|(id, _)| *id),
            retry_from: retry_of.map(|(_, from)| from).unwrap_or_default(),
        };
        let mut next_id = uuid::Uuid::now_v7;
        let mut ctx = builder_core::NewEvent {
            now: chrono::Utc::now(),
            causation_id: None,
            producer: PRODUCER,
            next_id: &mut next_id,
        };
        let transition = Feature::request(id, &correlation_id, requested, &mut ctx)
            .map_err(|e| ConnectError::internal(format!("feature.requested refused: {e}")))?;
        match store
            .append(id, 0, &transition.envelopes, &transition.feature)
            .await
        {
            Ok(_) => {}
            // One writer per branch, enforced by the store for every process at once: a
            // second active feature pushing the same branch would race the first.
            Err(StoreError::AlreadyExists { what }) if what.contains("branch") => {
                return Err(ConnectError::failed_precondition(format!(
                    "spec.feature_branch: {} is being written by another active feature of this repository",
                    transition.feature.feature_branch
                )));
            }
            // Lost a race with the same idempotency key: answer with the winner.
            Err(StoreError::AlreadyExists { .. }) if !idempotency_key.is_empty() => {
                if let Some(existing) = store
                    .find_by_idempotency_key(&idempotency_key)
                    .await
                    .map_err(store_error)?
                {
                    return same_request(existing, &spec);
                }
                return Err(ConnectError::aborted(
                    "idempotency key conflict; retry the request",
                ));
            }
            Err(e) => return Err(store_error(e)),
        }
        if let Err(e) = self.backend.submit(id) {
            // The feature is stored; start-up re-enqueues every non-terminal feature.
            tracing::error!(feature = %id, error = %e, "could not hand the feature to the work bus");
        }
        Ok(transition.feature)
    }
}

fn same_request(existing: Feature, spec: &FeatureSpec) -> Result<Feature, ConnectError> {
    if &existing.spec == spec {
        Ok(existing)
    } else {
        Err(ConnectError::already_exists(format!(
            "idempotency_key: already used by feature execution {} with a different spec",
            existing.id
        )))
    }
}

/// The Connect code for a store error: what the request got wrong is the client's to fix,
/// an unreachable database is worth retrying, anything else is ours (and logged as such).
pub(crate) fn store_error(e: StoreError) -> ConnectError {
    match e {
        StoreError::AlreadyExists { what } => ConnectError::already_exists(what),
        StoreError::Conflict { .. } => ConnectError::aborted(format!("{e}; retry the request")),
        StoreError::NotFound { what } => ConnectError::not_found(format!("{what} not found")),
        StoreError::Invalid(reason) => ConnectError::invalid_argument(reason),
        StoreError::Unavailable(_) => {
            // An outage is logged where it is detected (the store's circuit), not once per
            // request it turns away.
            tracing::debug!(error = %e, "store unavailable");
            ConnectError::unavailable(format!("{e}; retry later"))
        }
        other => {
            tracing::error!(error = %other, "store error");
            ConnectError::internal(format!("the store failed: {other}"))
        }
    }
}

fn validate_key(field: &str, value: &str) -> Result<(), ConnectError> {
    if value.len() > 255 || value.chars().any(char::is_control) {
        return Err(invalid(field, "must be at most 255 printable characters"));
    }
    Ok(())
}

// Handlers return concrete types where the generated trait allows any `impl Encodable`.
#[allow(refining_impl_trait)]
impl FeatureService for FeatureApi {
    async fn create(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CreateRequest>,
    ) -> ServiceResult<CreateResponse> {
        let req = request.to_owned_message();
        validate_key("correlation_id", &req.correlation_id)?;
        validate_key("idempotency_key", &req.idempotency_key)?;
        let spec = req
            .spec
            .into_option()
            .ok_or_else(|| invalid("spec", "is required"))?;
        let spec = convert::spec_from_proto(spec)?;
        spec.validate().map_err(|e| invalid(&e.field, &e.reason))?;
        let feature = self
            .start(spec, req.correlation_id, req.idempotency_key, None)
            .await?;
        Response::ok(CreateResponse {
            execution: convert::execution(&feature).into(),
            ..Default::default()
        })
    }

    async fn get(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetRequest>,
    ) -> ServiceResult<GetResponse> {
        let feature = self.load("id", request.id).await?;
        Response::ok(GetResponse {
            execution: convert::execution(&feature).into(),
            ..Default::default()
        })
    }

    async fn get_by_correlation(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetByCorrelationRequest>,
    ) -> ServiceResult<GetByCorrelationResponse> {
        if request.correlation_id.is_empty() {
            return Err(invalid("correlation_id", "is required"));
        }
        let feature = self
            .backend
            .store()
            .find_by_correlation(request.correlation_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ConnectError::not_found("no feature execution with this correlation_id")
            })?;
        Response::ok(GetByCorrelationResponse {
            execution: convert::execution(&feature).into(),
            ..Default::default()
        })
    }

    async fn search(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, SearchRequest>,
    ) -> ServiceResult<ServiceStream<SearchResponse>> {
        let req = request.to_owned_message();
        let repository_id = if req.repository_id.is_empty() {
            None
        } else {
            Some(builder_core::RepositoryId(parse_uuid(
                "repository_id",
                &req.repository_id,
            )?))
        };
        let states = req
            .states
            .iter()
            .map(convert::state_from_proto)
            .collect::<Result<Vec<_>, _>>()?;
        let page = req.pagination.into_option().unwrap_or_default();
        if page.limit > 500 {
            return Err(invalid("pagination.limit", "must be at most 500"));
        }
        let query = FeatureQuery {
            repository_id,
            states,
            created_after: req
                .created_after
                .as_option()
                .and_then(convert::from_timestamp),
            created_before: req
                .created_before
                .as_option()
                .and_then(convert::from_timestamp),
            query: if req.query.is_empty() {
                None
            } else {
                Some(req.query)
            },
            limit: if page.limit == 0 { 50 } else { page.limit },
            offset: page.offset,
        };
        let found = self
            .backend
            .store()
            .search(&query)
            .await
            .map_err(store_error)?;
        let items = found
            .iter()
            .map(|f| {
                Ok(SearchResponse {
                    execution: convert::execution(f).into(),
                    ..Default::default()
                })
            })
            .collect::<Vec<_>>();
        Response::ok(Box::pin(futures::stream::iter(items)) as ServiceStream<SearchResponse>)
    }

    async fn cancel(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, CancelRequest>,
    ) -> ServiceResult<CancelResponse> {
        let id = FeatureId(parse_uuid("id", request.id)?);
        let reason = if request.reason.is_empty() {
            "cancelled by request".to_string()
        } else {
            request.reason.to_string()
        };
        if reason.len() > 1000 {
            return Err(invalid("reason", "must be at most 1000 characters"));
        }
        let store = self.backend.store();
        // Optimistic concurrency: a worker may append between our read and our write.
        for _ in 0..20 {
            let feature = self.load("id", request.id).await?;
            match feature.state {
                FeatureState::Cancelled => {
                    return Response::ok(CancelResponse {
                        execution: convert::execution(&feature).into(),
                        ..Default::default()
                    });
                }
                s if s.is_terminal() => {
                    return Err(ConnectError::failed_precondition(format!(
                        "feature execution {id} already ended in {}",
                        s.as_str()
                    )));
                }
                _ => {}
            }
            let event = Event::FeatureCancelled {
                reason: reason.clone(),
                phase: feature.state.phase().to_string(),
                remote_state: feature.remote_state(),
            };
            match builder_store::append_events(&*store, &feature, vec![event], None, PRODUCER).await
            {
                Ok(t) => {
                    self.backend.interrupt(id);
                    return Response::ok(CancelResponse {
                        execution: convert::execution(&t.feature).into(),
                        ..Default::default()
                    });
                }
                Err(AppendError::Conflict) => continue,
                Err(AppendError::Store(e)) => return Err(store_error(e)),
                Err(e) => return Err(ConnectError::internal(format!("cancel failed: {e}"))),
            }
        }
        Err(ConnectError::aborted(
            "the feature kept changing; retry the cancel",
        ))
    }

    async fn retry(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, RetryRequest>,
    ) -> ServiceResult<RetryResponse> {
        let old = self.load("id", request.id).await?;
        if !matches!(old.state, FeatureState::Failed | FeatureState::Cancelled) {
            return Err(ConnectError::failed_precondition(format!(
                "only FAILED or CANCELLED executions can be retried; {} is {}",
                old.id,
                old.state.as_str()
            )));
        }
        // The furthest phase whose inputs the old execution already produced.
        let reusable = if old.plan.is_some() {
            "execution"
        } else if old.analysis_done {
            "planning"
        } else {
            "analysis"
        };
        let rank = |phase: &str| {
            ["analysis", "planning", "execution"]
                .iter()
                .position(|p| *p == phase)
        };
        let from = match request.from_step {
            // Default: from the step that failed, as far as its inputs exist.
            "" => {
                let failed = old
                    .error
                    .as_ref()
                    .map(|e| e.failed_step.as_str())
                    .unwrap_or("");
                match failed {
                    "analysis" | "pending" => "analysis",
                    "planning" if reusable != "analysis" => "planning",
                    _ => reusable,
                }
            }
            wanted @ ("analysis" | "planning" | "execution") => {
                if rank(wanted) > rank(reusable) {
                    return Err(ConnectError::failed_precondition(format!(
                        "from_step: {wanted} needs results {} never produced; the furthest possible is {reusable}",
                        old.id
                    )));
                }
                wanted
            }
            "verification" | "delivery" => {
                return Err(ConnectError::unimplemented(
                    "from_step: retrying from verification or delivery is not built yet (the edits live only in the \
                     removed working copy); use execution",
                ));
            }
            other => {
                return Err(invalid(
                    "from_step",
                    format!("{other:?} is not a step; use analysis, planning or execution"),
                ));
            }
        };
        // The same retry asked twice gives the same new execution.
        let key = format!("retry-of:{}", old.id);
        let feature = self
            .start(
                old.spec.clone(),
                old.correlation_id.clone(),
                key,
                Some((old.id, from.to_string())),
            )
            .await?;
        Response::ok(RetryResponse {
            execution: convert::execution(&feature).into(),
            ..Default::default()
        })
    }

    async fn list_events(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, ListEventsRequest>,
    ) -> ServiceResult<ServiceStream<ListEventsResponse>> {
        let req = request.to_owned_message();
        // Sequences are stored as BIGINT: anything larger names no event there can ever be,
        // and must be told apart from the store failing.
        if i64::try_from(req.after_sequence).is_err() {
            return Err(invalid(
                "after_sequence",
                format!("must be at most {}", i64::MAX),
            ));
        }
        let feature = self
            .load("feature_execution_id", &req.feature_execution_id)
            .await?;
        let store = self.backend.store();
        let types = req.event_types;
        let follow = req.follow;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<ListEventsResponse, ConnectError>>(64);
        let mut notifications = store.notifications();
        tokio::spawn(async move {
            let mut after = req.after_sequence;
            loop {
                let events = match store.read_stream(feature.id, after).await {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(store_error(e))).await;
                        return;
                    }
                };
                let mut ended = false;
                for e in &events {
                    after = e.sequence;
                    ended |= matches!(
                        e.event_type.as_str(),
                        "feature.delivered" | "feature.failed" | "feature.cancelled"
                    );
                    if !types.is_empty() && !types.iter().any(|t| t == &e.event_type) {
                        continue;
                    }
                    let msg = ListEventsResponse {
                        event: convert::event(e).into(),
                        ..Default::default()
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        return; // client went away
                    }
                }
                if !follow || ended {
                    return;
                }
                if events.is_empty() {
                    let is_terminal = match store.get_feature(feature.id).await {
                        Ok(Some(f)) => f.state.is_terminal() && f.version <= after,
                        _ => false,
                    };
                    if is_terminal {
                        return;
                    }
                    tokio::select! {
                        changed = notifications.changed() => if changed.is_err() { return },
                        _ = tx.closed() => return,
                        // Belt and braces: a missed notification costs at most this delay.
                        _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
                    }
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::ok(stream.boxed() as ServiceStream<ListEventsResponse>)
    }

    async fn get_artifacts(
        &self,
        _ctx: RequestContext,
        request: ServiceRequest<'_, GetArtifactsRequest>,
    ) -> ServiceResult<GetArtifactsResponse> {
        let feature = self
            .load("feature_execution_id", request.feature_execution_id)
            .await?;
        let dir = self.backend.artifacts_dir(feature.id);
        let mut artifacts = Vec::new();
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ConnectError::internal(format!("reading artifacts: {e}"))),
        };
        while let Some(entries) = entries.as_mut() {
            let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| ConnectError::internal(format!("reading artifacts: {e}")))?
            else {
                break;
            };
            let name = entry.file_name().to_string_lossy().to_string();
            let meta = entry
                .metadata()
                .await
                .map_err(|e| ConnectError::internal(format!("reading artifacts: {e}")))?;
            let (kind, content_type) = artifact_kind(&name);
            let created: chrono::DateTime<chrono::Utc> = meta
                .modified()
                .map(Into::into)
                .unwrap_or_else(|_| chrono::Utc::now());
            artifacts.push(Artifact {
                name: name.clone(),
                r#type: buffa::EnumValue::from(kind),
                url: entry.path().display().to_string(),
                size: meta.len(),
                content_type: content_type.to_string(),
                created_at: convert::timestamp(created),
                ..Default::default()
            });
        }
        artifacts.sort_by(|a, b| a.name.cmp(&b.name));
        Response::ok(GetArtifactsResponse {
            artifacts,
            ..Default::default()
        })
    }
}

fn artifact_kind(name: &str) -> (ArtifactType, &'static str) {
    if name.ends_with(".patch") || name.ends_with(".diff") {
        (ArtifactType::PATCH, "text/x-diff")
    } else if name.starts_with("build") {
        (ArtifactType::BUILD_LOG, "text/plain")
    } else if name.starts_with("tests") {
        (ArtifactType::TEST_REPORT, "text/plain")
    } else if name.starts_with("plan") {
        (ArtifactType::PLAN, "application/json")
    } else {
        (ArtifactType::ANALYSIS_REPORT, "text/plain")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use connectrpc::ErrorCode;

    #[test]
    fn store_errors_caused_by_the_request_are_not_outages() {
        let code = |e: StoreError| store_error(e).code;
        assert_eq!(
            code(StoreError::Invalid(
                "sequence 18446744073709551615 is out of range".into()
            )),
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            code(StoreError::NotFound {
                what: "repository x".into()
            }),
            ErrorCode::NotFound
        );
        assert_eq!(
            code(StoreError::Conflict {
                expected: 1,
                actual: 2
            }),
            ErrorCode::Aborted
        );
        assert_eq!(
            code(StoreError::Unavailable("pool timed out".into())),
            ErrorCode::Unavailable
        );
        // Broken data or keys are ours to fix: retrying forever will not help.
        assert_eq!(
            code(StoreError::Corrupt("feature projection".into())),
            ErrorCode::Internal
        );
        assert_eq!(
            code(StoreError::Crypto("unknown key id".into())),
            ErrorCode::Internal
        );
    }
}
