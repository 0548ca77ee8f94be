//! Section `dispatch`: time from `EmbeddedBus::publish(id)` to the handler starting, for a
//! few thousand distinct features, published in one burst and then paced.

use crate::stats::{Table, summary};
use anyhow::{Context, Result, bail};
use builder_bus::{EmbeddedBus, Handler, WorkBus};
use builder_core::FeatureId;
use futures::FutureExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct DispatchArgs {
    pub features: usize,
    pub partitions: usize,
    /// Publishes per second in the paced run.
    pub rate: u64,
    /// How long each handler holds its run (simulated step work).
    pub hold: Duration,
    pub time_limit: Duration,
}

type Published = Arc<Mutex<HashMap<FeatureId, Instant>>>;

async fn measure(args: &DispatchArgs, paced: bool) -> Result<Vec<Duration>> {
    let published: Published = Arc::default();
    let samples: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let handler: Handler = {
        let published = published.clone();
        let samples = samples.clone();
        let hold = args.hold;
        Arc::new(move |id| {
            let started = Instant::now();
            let at = published.lock().ok().and_then(|m| m.get(&id).copied());
            if let (Some(at), Ok(mut s)) = (at, samples.lock()) {
                s.push(started.saturating_duration_since(at));
            }
            async move {
                if !hold.is_zero() {
                    tokio::time::sleep(hold).await;
                }
            }
            .boxed()
        })
    };
    let bus = EmbeddedBus::start(args.partitions, handler).context("starting the embedded bus")?;
    let ids: Vec<FeatureId> = (0..args.features)
        .map(|_| FeatureId(uuid::Uuid::now_v7()))
        .collect();
    let gap = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    let start = Instant::now();
    for (i, id) in ids.iter().enumerate() {
        if paced {
            let due = start + gap * i as u32;
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        published
            .lock()
            .map_err(|_| anyhow::anyhow!("publish map poisoned"))?
            .insert(*id, Instant::now());
        bus.publish(*id).context("publishing")?;
    }
    let deadline = Instant::now() + args.time_limit;
    loop {
        let n = samples.lock().map(|s| s.len()).unwrap_or(0);
        if n >= ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {n} of {} handlers started within {:?}",
                ids.len(),
                args.time_limit
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = samples.lock().map(|s| s.clone()).unwrap_or_default();
    Ok(out)
}

pub async fn run(args: &DispatchArgs, table: &mut Table) -> Result<()> {
    for paced in [false, true] {
        let case = if paced {
            format!(
                "{} features paced at {}/s, {} partitions, handler holds {:?}",
                args.features, args.rate, args.partitions, args.hold
            )
        } else {
            format!(
                "{} features in one burst, {} partitions, handler holds {:?}",
                args.features, args.partitions, args.hold
            )
        };
        eprintln!("dispatch: {case}");
        let mut s = measure(args, paced)
            .await
            .with_context(|| format!("dispatch bench {case}"))?;
        table.add("dispatch", case, "publish→handler start", summary(&mut s));
    }
    Ok(())
}
