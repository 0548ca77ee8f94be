//! The work bus: "feature X has work" messages, partitioned by feature id so that one
//! feature's steps never run at the same time, while different features run in parallel.
//!
//! The bus carries work, not truth: a message only names a feature; the handler loads the
//! feature's events and decides what to do, so duplicates and redeliveries are harmless.
//! This crate must not depend on the store, git, LLM or sandbox crates. The embedded
//! implementation lives here; Kafka and NATS JetStream implementations will sit beside it
//! behind the same [`WorkBus`] trait.

use builder_core::FeatureId;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("the work bus is shut down")]
    Closed,
    #[error("invalid bus configuration: {0}")]
    Config(String),
}

/// Publishes work. Implementations must deliver at least once.
pub trait WorkBus: Send + Sync {
    fn publish(&self, feature: FeatureId) -> Result<(), BusError>;
}

/// Runs a feature until it has nothing left to do (terminal, or waiting on something).
pub type Handler = Arc<dyn Fn(FeatureId) -> BoxFuture<'static, ()> + Send + Sync>;

/// In-process partitions, one consumer each. A consumer runs at most one handler per feature
/// at a time: a message for a feature that is already running is folded into one rerun once
/// the current run returns, so a publish is never lost and never runs concurrently.
pub struct EmbeddedBus {
    partitions: Vec<mpsc::UnboundedSender<Msg>>,
}

enum Msg {
    Work(FeatureId),
    Finished(FeatureId),
}

impl EmbeddedBus {
    pub fn start(partition_count: usize, handler: Handler) -> Result<Arc<EmbeddedBus>, BusError> {
        if partition_count == 0 || partition_count > 4096 {
            return Err(BusError::Config(format!(
                "EVENT_BUS_PARTITION_COUNT must be 1–4096, got {partition_count}"
            )));
        }
        let mut partitions = Vec::with_capacity(partition_count);
        for index in 0..partition_count {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(consume(index, rx, tx.clone(), handler.clone()));
            partitions.push(tx);
        }
        Ok(Arc::new(EmbeddedBus { partitions }))
    }

    pub fn partition_of(&self, feature: FeatureId) -> usize {
        partition_of(feature, self.partitions.len())
    }

    /// Whether every partition still has its consumer (a consumer that died would leave
    /// its features' messages unhandled).
    pub fn is_running(&self) -> bool {
        self.partitions.iter().all(|p| !p.is_closed())
    }
}

/// Stable across processes and releases (unlike `DefaultHasher`'s seed), so a distributed
/// bus keyed the same way agrees with this one.
pub fn partition_of(feature: FeatureId, partitions: usize) -> usize {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    feature.as_uuid().as_bytes().hash(&mut h);
    (h.0 % partitions.max(1) as u64) as usize
}

struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl WorkBus for EmbeddedBus {
    fn publish(&self, feature: FeatureId) -> Result<(), BusError> {
        self.partitions[self.partition_of(feature)]
            .send(Msg::Work(feature))
            .map_err(|_| BusError::Closed)
    }
}

async fn consume(
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    tx: mpsc::UnboundedSender<Msg>,
    handler: Handler,
) {
    // feature → whether another run was requested while it ran.
    let mut running: HashMap<FeatureId, bool> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            Msg::Work(feature) => {
                if let Some(again) = running.get_mut(&feature) {
                    *again = true;
                    continue;
                }
                running.insert(feature, false);
                spawn_run(feature, handler.clone(), tx.clone());
            }
            Msg::Finished(feature) => match running.remove(&feature) {
                Some(true) => {
                    running.insert(feature, false);
                    spawn_run(feature, handler.clone(), tx.clone());
                }
                Some(false) => {}
                None => {
                    tracing::error!(partition = index, %feature, "finished a run that was not recorded")
                }
            },
        }
    }
}

fn spawn_run(feature: FeatureId, handler: Handler, tx: mpsc::UnboundedSender<Msg>) {
    tokio::spawn(async move {
        // A panicking handler must not wedge the feature: report and free the slot.
        match tokio::spawn(handler(feature)).await {
            Ok(()) => {}
            // The runtime shutting down cancels runs; the feature resumes at the next start.
            Err(e) if e.is_cancelled() => {
                tracing::info!(%feature, "feature run cancelled (shutting down); it resumes at the next start")
            }
            Err(e) => tracing::error!(%feature, error = %e, "feature handler panicked"),
        }
        let _ = tx.send(Msg::Finished(feature));
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use uuid::Uuid;

    #[tokio::test]
    async fn one_run_per_feature_at_a_time_and_no_lost_publish() {
        let concurrent: Arc<Mutex<HashMap<FeatureId, usize>>> = Arc::default();
        let max_seen = Arc::new(AtomicUsize::new(0));
        let runs = Arc::new(AtomicUsize::new(0));
        let (c, m, r) = (concurrent.clone(), max_seen.clone(), runs.clone());
        let handler: Handler = Arc::new(move |f| {
            let (c, m, r) = (c.clone(), m.clone(), r.clone());
            Box::pin(async move {
                let now = {
                    let mut g = c.lock().unwrap();
                    let n = g.entry(f).or_default();
                    *n += 1;
                    *n
                };
                m.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                *c.lock().unwrap().get_mut(&f).unwrap() -= 1;
                r.fetch_add(1, Ordering::SeqCst);
            })
        });
        let bus = EmbeddedBus::start(4, handler).unwrap();
        let features: Vec<FeatureId> = (0..8).map(|i| FeatureId(Uuid::from_u128(i))).collect();
        for _ in 0..5 {
            for f in &features {
                bus.publish(*f).unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            max_seen.load(Ordering::SeqCst),
            1,
            "a feature ran twice at once"
        );
        // Each feature ran at least once for the first publish and once more for the coalesced rest.
        let total = runs.load(Ordering::SeqCst);
        assert!((16..=40).contains(&total), "{total} runs");
    }

    #[tokio::test]
    async fn different_features_run_in_parallel() {
        let active = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (a, p) = (active.clone(), peak.clone());
        let handler: Handler = Arc::new(move |_| {
            let (a, p) = (a.clone(), p.clone());
            Box::pin(async move {
                let n = a.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                a.fetch_sub(1, Ordering::SeqCst);
            })
        });
        // One partition: parallelism must come from per-feature runs, not from partitions.
        let bus = EmbeddedBus::start(1, handler).unwrap();
        for i in 0..10 {
            bus.publish(FeatureId(Uuid::from_u128(i))).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(peak.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_panicking_handler_frees_the_feature() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let handler: Handler = Arc::new(move |_| {
            let c = c.clone();
            Box::pin(async move {
                if c.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("boom");
                }
            })
        });
        let bus = EmbeddedBus::start(2, handler).unwrap();
        let f = FeatureId(Uuid::from_u128(1));
        bus.publish(f).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        bus.publish(f).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn partitioning_is_stable_and_in_range() {
        let f = FeatureId(Uuid::from_u128(0x1234_5678));
        assert_eq!(partition_of(f, 16), partition_of(f, 16));
        for i in 0..1000u128 {
            assert!(partition_of(FeatureId(Uuid::from_u128(i)), 7) < 7);
        }
    }

    #[tokio::test]
    async fn rejects_bad_partition_counts() {
        let handler: Handler = Arc::new(|_| Box::pin(async {}));
        assert!(EmbeddedBus::start(0, handler).is_err());
    }
}
