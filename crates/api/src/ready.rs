//! `GET /health` and `GET /ready`: alive versus able to serve.
//!
//! `/health` answers 200 whenever the process is serving HTTP at all — restart me if this
//! fails. `/ready` checks what requests need — the store, and whatever the process adds
//! (bus, LLM sidecar) — and answers 503 with one line per failing component while any is
//! missing, so a load balancer stops sending work without the process being killed.

use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// Longer than this and a component counts as not ready: a probe must answer while the
/// orchestrator still waits for it.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Something `/ready` checks besides the store.
pub trait ReadinessCheck: Send + Sync + 'static {
    /// Names the component in `/ready`'s answer.
    fn name(&self) -> &'static str;
    /// `Err` says why the component cannot serve now.
    fn check(&self) -> BoxFuture<'static, Result<(), String>>;
}

/// Runs every check at once; `Err` lists `component: reason` for each failing one.
pub(crate) async fn readiness(
    store: Arc<dyn builder_store::Store>,
    checks: &[Arc<dyn ReadinessCheck>],
) -> Result<(), Vec<String>> {
    let store_check = async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        ("store", outcome)
    };
    let others = checks.iter().map(|c| {
        let (name, check) = (c.name(), c.check());
        async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (name, outcome)
        }
    });
    let (store, others) = futures::join!(store_check, futures::future::join_all(others));
    let failures: Vec<String> = std::iter::once(store)
        .chain(others)
        .filter_map(|(name, outcome)| outcome.err().map(|why| format!("{name}: {why}")))
        .collect();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures)
    }
}

pub(crate) async fn ready_response(
    store: Arc<dyn builder_store::Store>,
    checks: &[Arc<dyn ReadinessCheck>],
) -> (axum::http::StatusCode, String) {
    match readiness(store, checks).await {
        Ok(()) => (axum::http::StatusCode::OK, "ready\n".to_string()),
        Err(failures) => {
            tracing::debug!(?failures, "not ready");
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready\n{}\n", failures.join("\n")),
            )
        }
    }
}
