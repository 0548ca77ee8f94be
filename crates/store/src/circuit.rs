//! A circuit breaker in front of either backend, so that an unreachable database costs a
//! request nothing instead of a connection timeout each.
//!
//! Closed (normal): every call goes to the database; consecutive connection failures are
//! counted, and any answer from the database — even an error about the request — resets the
//! count. After `failure_threshold` of them in a row the circuit opens: calls are refused at
//! once with [`StoreError::Unavailable`] naming the last failure. Once `probe_interval` has
//! passed, the next call first pings the database (one caller at a time; the others are
//! still refused): if the ping answers, the circuit closes and that call proceeds; if not,
//! it stays open for another interval. Readiness probes call `ping` too, so a polled
//! `/ready` brings a recovered database back into use even when no request comes in.

use crate::secret::SecretBytes;
use crate::{EventStore, FeatureQuery, RepositoryQuery, RepositoryStore, StoreError};
use async_trait::async_trait;
use builder_core::{EventEnvelope, Feature, FeatureId, Repository, RepositoryId};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// When the circuit opens and how often an open circuit tries the database again.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitSettings {
    /// Consecutive connection failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses calls before one of them probes the database.
    pub probe_interval: Duration,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        CircuitSettings {
            failure_threshold: 3,
            probe_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    consecutive_failures: u32,
    last_failure: String,
    open: Option<Open>,
}

#[derive(Debug)]
struct Open {
    next_probe: Instant,
    probing: bool,
}

/// What a caller may do now.
#[derive(Debug, PartialEq)]
enum Admission {
    Call,
    /// Ping first; the caller holds the only probe.
    Probe,
    Refuse(String),
}

#[derive(Debug)]
pub(crate) struct Circuit {
    settings: CircuitSettings,
    state: Mutex<State>,
}

impl Circuit {
    pub fn new(settings: CircuitSettings) -> Self {
        Circuit {
            settings: CircuitSettings {
                failure_threshold: settings.failure_threshold.max(1),
                ..settings
            },
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is a few counters, consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self, now: Instant) -> Admission {
        let mut state = self.state();
        let (failures, last) = (state.consecutive_failures, state.last_failure.clone());
        let Some(open) = state.open.as_mut() else {
            return Admission::Call;
        };
        if open.probing || now < open.next_probe {
            return Admission::Refuse(format!(
                "the database is unreachable ({failures} connection failures in a row, the \
                 last: {last}); answering at once until it answers a probe again"
            ));
        }
        open.probing = true;
        Admission::Probe
    }

    /// Counts the outcome of a call or a probe that went to the database.
    fn record<T>(&self, result: &Result<T, StoreError>, now: Instant) {
        let mut state = self.state();
        match result {
            Err(e) if e.is_unavailable() => {
                state.consecutive_failures = state.consecutive_failures.saturating_add(1);
                state.last_failure = e.to_string();
                if let Some(open) = state.open.as_mut() {
                    open.probing = false;
                    open.next_probe = now + self.settings.probe_interval;
                } else if state.consecutive_failures >= self.settings.failure_threshold {
                    tracing::warn!(
                        failures = state.consecutive_failures,
                        last = %state.last_failure,
                        probe_every = ?self.settings.probe_interval,
                        "the database is unreachable: answering \"unavailable\" at once until \
                         it answers a probe again"
                    );
                    state.open = Some(Open {
                        next_probe: now + self.settings.probe_interval,
                        probing: false,
                    });
                }
            }
            // Any answer, even "no such row" or "conflict", means the database is there.
            _ => {
                if state.open.take().is_some() {
                    tracing::info!("the database answers again: circuit closed");
                }
                state.consecutive_failures = 0;
                state.last_failure.clear();
            }
        }
    }

    /// Gives up a probe that was dropped before it finished (its caller went away), so
    /// the next caller may probe instead of the circuit staying open forever.
    fn abandon_probe(&self) {
        if let Some(open) = self.state().open.as_mut() {
            open.probing = false;
        }
    }
}

/// Resets the probe flag if the probing future is dropped mid-way.
struct ProbeGuard<'a> {
    circuit: &'a Circuit,
    done: bool,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.circuit.abandon_probe();
        }
    }
}

/// A store behind a [`Circuit`].
pub(crate) struct Guarded<S> {
    inner: S,
    circuit: Circuit,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Guarded<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("inner", &self.inner)
            .field("circuit", &self.circuit)
            .finish()
    }
}

impl<S: EventStore> Guarded<S> {
    pub fn new(inner: S, settings: CircuitSettings) -> Self {
        Guarded {
            inner,
            circuit: Circuit::new(settings),
        }
    }

    /// Runs `call` if the circuit lets it (after a successful probe, if one is due).
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.circuit.admit(Instant::now()) {
            Admission::Call => {}
            Admission::Refuse(why) => return Err(StoreError::Unavailable(why)),
            Admission::Probe => self.probe().await?,
        }
        let result = call.await;
        self.circuit.record(&result, Instant::now());
        result
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let mut guard = ProbeGuard {
            circuit: &self.circuit,
            done: false,
        };
        let result = self.inner.ping().await;
        self.circuit.record(&result, Instant::now());
        guard.done = true;
        result
    }
}

#[async_trait]
impl<S: EventStore> EventStore for Guarded<S> {
    async fn append(
        &self,
        feature_id: FeatureId,
        expected_version: u64,
        events: &[EventEnvelope],
        projection: &Feature,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.call(
            self.inner
                .append(feature_id, expected_version, events, projection),
        )
        .await
    }

    async fn read_stream(
        &self,
        feature_id: FeatureId,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.call(self.inner.read_stream(feature_id, after_sequence))
            .await
    }

    async fn read_all(
        &self,
        after_position: i64,
        limit: u32,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.call(self.inner.read_all(after_position, limit)).await
    }

    fn notifications(&self) -> tokio::sync::watch::Receiver<i64> {
        self.inner.notifications()
    }

    async fn get_feature(&self, id: FeatureId) -> Result<Option<Feature>, StoreError> {
        self.call(self.inner.get_feature(id)).await
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Option<Feature>, StoreError> {
        self.call(self.inner.find_by_correlation(correlation_id))
            .await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Feature>, StoreError> {
        self.call(self.inner.find_by_idempotency_key(key)).await
    }

    async fn search(&self, q: &FeatureQuery) -> Result<Vec<Feature>, StoreError> {
        self.call(self.inner.search(q)).await
    }

    async fn non_terminal_features(&self) -> Result<Vec<FeatureId>, StoreError> {
        self.call(self.inner.non_terminal_features()).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.circuit.admit(Instant::now()) {
            Admission::Call => {
                let result = self.inner.ping().await;
                self.circuit.record(&result, Instant::now());
                result
            }
            // The ping is the probe.
            Admission::Probe => self.probe().await,
            Admission::Refuse(why) => Err(StoreError::Unavailable(why)),
        }
    }
}

#[async_trait]
impl<S: EventStore + RepositoryStore> RepositoryStore for Guarded<S> {
    async fn create_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        self.call(self.inner.create_repository(repo)).await
    }

    async fn get_repository(&self, id: RepositoryId) -> Result<Option<Repository>, StoreError> {
        self.call(self.inner.get_repository(id)).await
    }

    async fn get_repository_by_name(&self, name: &str) -> Result<Option<Repository>, StoreError> {
        self.call(self.inner.get_repository_by_name(name)).await
    }

    async fn list_repositories(&self, q: &RepositoryQuery) -> Result<Vec<Repository>, StoreError> {
        self.call(self.inner.list_repositories(q)).await
    }

    async fn update_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        self.call(self.inner.update_repository(repo)).await
    }

    async fn delete_repository(&self, id: RepositoryId) -> Result<bool, StoreError> {
        self.call(self.inner.delete_repository(id)).await
    }

    async fn set_credential(
        &self,
        id: RepositoryId,
        credential_type: &str,
        secret: &SecretBytes,
    ) -> Result<(), StoreError> {
        self.call(self.inner.set_credential(id, credential_type, secret))
            .await
    }

    async fn get_credential(
        &self,
        id: RepositoryId,
    ) -> Result<Option<(String, SecretBytes)>, StoreError> {
        self.call(self.inner.get_credential(id)).await
    }

    async fn clear_credential(&self, id: RepositoryId) -> Result<bool, StoreError> {
        self.call(self.inner.clear_credential(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn down() -> Result<(), StoreError> {
        Err(StoreError::Unavailable("connection refused".into()))
    }

    fn circuit() -> Circuit {
        Circuit::new(CircuitSettings {
            failure_threshold: 3,
            probe_interval: Duration::from_secs(1),
        })
    }

    #[test]
    fn opens_after_consecutive_connection_failures_only() {
        let c = circuit();
        let t = Instant::now();
        c.record(&down(), t);
        c.record(&down(), t);
        // An answer in between, even an error about the request, resets the count.
        c.record::<()>(&Err(StoreError::Invalid("bad".into())), t);
        c.record(&down(), t);
        c.record(&down(), t);
        assert_eq!(c.admit(t), Admission::Call, "two in a row do not open it");
        c.record(&down(), t);
        match c.admit(t) {
            Admission::Refuse(why) => {
                assert!(why.contains("3 connection failures"), "{why}");
                assert!(why.contains("connection refused"), "{why}");
            }
            other => panic!("the circuit should be open: {other:?}"),
        }
    }

    #[test]
    fn one_probe_at_a_time_after_the_interval_and_a_good_probe_closes() {
        let c = circuit();
        let t = Instant::now();
        for _ in 0..3 {
            c.record(&down(), t);
        }
        assert!(matches!(c.admit(t), Admission::Refuse(_)));
        let later = t + Duration::from_secs(1);
        assert_eq!(c.admit(later), Admission::Probe);
        assert!(
            matches!(c.admit(later), Admission::Refuse(_)),
            "only one prober"
        );
        // A failed probe waits another interval.
        c.record(&down(), later);
        assert!(matches!(c.admit(later), Admission::Refuse(_)));
        let again = later + Duration::from_secs(1);
        assert_eq!(c.admit(again), Admission::Probe);
        c.record(&Ok(()), again);
        assert_eq!(c.admit(again), Admission::Call);
        // Closed again means counting from zero.
        c.record(&down(), again);
        c.record(&down(), again);
        assert_eq!(c.admit(again), Admission::Call);
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_caller_probe() {
        let c = circuit();
        let t = Instant::now();
        for _ in 0..3 {
            c.record(&down(), t);
        }
        let later = t + Duration::from_secs(2);
        assert_eq!(c.admit(later), Admission::Probe);
        drop(ProbeGuard {
            circuit: &c,
            done: false,
        });
        assert_eq!(c.admit(later), Admission::Probe);
    }
}
