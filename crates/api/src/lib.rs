//! builder's public API: FeatureService and RepositoryService, generated from `proto/` and
//! served as Connect (JSON and binary), gRPC and gRPC-Web on one port, plus `GET /health`
//! (alive) and `GET /ready` (able to serve: see [`ready`]).
//!
//! The handlers validate input, translate between the wire types and the domain, and talk
//! to the store; everything with side effects beyond the store (running features, probing
//! remotes) goes through the [`Backend`] trait, so this crate must not depend on the
//! worker, git, LLM or sandbox crates.

pub mod convert;
mod feature;
pub mod ready;
mod repository;

pub mod proto {
    connectrpc::include_generated!();
}

use builder_core::repository::UrlPolicy;
use builder_core::{Credential, FeatureId};
use builder_store::Store;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

pub use feature::FeatureApi;
pub use ready::ReadinessCheck;
pub use repository::RepositoryApi;

/// What the API needs from the running process besides the store.
pub trait Backend: Send + Sync + 'static {
    fn store(&self) -> Arc<dyn Store>;
    /// Hands a feature to the work bus.
    fn submit(&self, id: FeatureId) -> Result<(), String>;
    /// Interrupts the step a feature is running in this process, if any.
    fn interrupt(&self, id: FeatureId);
    /// Asks the remote for its default branch, which needs read access: ValidateAccess's
    /// read check too. Errors carry no secret.
    fn probe_default_branch(
        &self,
        url: String,
        credential: Option<Credential>,
    ) -> BoxFuture<'static, Result<String, String>>;
    /// Checks that the credential may push, without changing anything on the remote (a dry
    /// run). Errors carry no secret. The default says the check is not available, so a
    /// backend without one never reports WRITE.
    fn probe_write_access(
        &self,
        url: String,
        credential: Option<Credential>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let _ = (url, credential);
        Box::pin(async { Err("this server cannot check write access".to_string()) })
    }
    /// Where repository URLs may point (never into builder's own state; the operator's
    /// allow-list): checked at Register and before ValidateAccess probes a remote.
    fn url_policy(&self) -> &UrlPolicy;
    /// Repair iterations a new feature gets.
    fn max_repair_iterations(&self) -> u32;
    /// Where a feature's artifacts (patch, logs) are kept.
    fn artifacts_dir(&self, id: FeatureId) -> PathBuf;
}

/// The axum app: both services behind the Connect router, `/health` and `/ready`.
pub fn router(backend: Arc<dyn Backend>) -> axum::Router {
    router_with_checks(backend, Vec::new())
}

/// [`router`] whose `/ready` also runs `checks` (the store is always checked).
pub fn router_with_checks(
    backend: Arc<dyn Backend>,
    checks: Vec<Arc<dyn ReadinessCheck>>,
) -> axum::Router {
    let connect = connectrpc::Router::new()
        .add_service(Arc::new(FeatureApi::new(backend.clone())))
        .add_service(Arc::new(RepositoryApi::new(backend.clone())));
    let checks: Arc<[Arc<dyn ReadinessCheck>]> = checks.into();
    axum::Router::new()
        .route("/health", axum::routing::get(|| async { "OK\n" }))
        .route(
            "/ready",
            axum::routing::get(move || {
                let (store, checks) = (backend.store(), checks.clone());
                async move { ready::ready_response(store, &checks).await }
            }),
        )
        .fallback_service(connect.into_axum_service())
}
