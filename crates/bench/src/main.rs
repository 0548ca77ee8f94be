//! builder-bench: the rerunnable benchmark of issue 3's "Measure" section. It only measures
//! and prints (no assertions on timings):
//!
//! - `store`: events appended per second through `builder_store::append_events` (one event
//!   per append, real `Feature` transitions) and p50/p99 append latency, on SQLite and
//!   PostgreSQL;
//! - `dispatch`: `EmbeddedBus::publish` → handler start latency, p50/p99;
//! - `e2e`: Create → first LLM request latency against the real `builder serve` (release
//!   build), embedded SQLite, `file://` repository, scripted LLM;
//! - `concurrency`: N features at once against one server with an instant LLM and a trivial
//!   test command: drain time, completion throughput, server RSS and RSS per feature;
//! - `repair`: one repair iteration (a one-function edit, then `cargo test`) of a generated
//!   Rust crate in the bwrap sandbox with the feature's build cache, against the same
//!   natively (issue 6).
//!
//! Run: `cargo build --release -p builder && cargo run --release -p builder-bench -- --help`.

mod dispatch;
mod repair;
mod server;
mod stats;
mod store;

use anyhow::{Result, bail};
use clap::Parser;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "builder-bench",
    about = "Measures builder's store, bus and server; prints a table"
)]
struct Args {
    /// Sections to run, comma-separated: store, dispatch, e2e, concurrency, repair.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "store,dispatch,e2e,concurrency,repair"
    )]
    only: Vec<String>,
    /// store: features per run (each gets a full delivered stream, one event per append).
    #[arg(long, default_value_t = 100)]
    store_features: usize,
    /// store: concurrent appending tasks, one run per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    store_tasks: Vec<usize>,
    /// store: backends, comma-separated: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    store_backends: Vec<String>,
    /// PostgreSQL maintenance URL; a fresh database is created and dropped per run.
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
    )]
    pg_url: String,
    /// dispatch: distinct features published.
    #[arg(long, default_value_t = 5000)]
    dispatch_features: usize,
    /// dispatch: bus partitions (builder serve's default is 16).
    #[arg(long, default_value_t = 16)]
    dispatch_partitions: usize,
    /// dispatch: publishes per second in the paced run.
    #[arg(long, default_value_t = 2000)]
    dispatch_rate: u64,
    /// dispatch: milliseconds each handler run holds (simulated step work).
    #[arg(long, default_value_t = 1)]
    dispatch_hold_ms: u64,
    /// e2e / concurrency: the builder binary (default: <workspace>/target/release/builder).
    #[arg(long)]
    builder_bin: Option<PathBuf>,
    /// e2e: measured features (after one warm-up feature).
    #[arg(long, default_value_t = 20)]
    e2e_samples: usize,
    /// concurrency: features submitted at once, one fresh server per value.
    #[arg(long, value_delimiter = ',', default_value = "50,200")]
    levels: Vec<usize>,
    /// concurrency: store backends of the server: sqlite (embedded default), postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite")]
    concurrency_backends: Vec<String>,
    /// concurrency: Create calls in flight while submitting.
    #[arg(long, default_value_t = 8)]
    submit_parallelism: usize,
    /// repair: measured incremental iterations per mode.
    #[arg(long, default_value_t = 5)]
    repair_iterations: usize,
    /// repair: modules of the generated crate.
    #[arg(long, default_value_t = 40)]
    repair_modules: usize,
    /// Time limit per run (store run, dispatch run, concurrency level), seconds.
    #[arg(long, default_value_t = 300)]
    time_limit_s: u64,
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    for s in &args.only {
        if !["store", "dispatch", "e2e", "concurrency", "repair"].contains(&s.as_str()) {
            bail!("--only: unknown section {s:?} (store, dispatch, e2e, concurrency, repair)");
        }
    }
    let limit = Duration::from_secs(args.time_limit_s.max(1));
    let on = |s: &str| args.only.iter().any(|o| o == s);
    let mut table = stats::Table::default();
    let mut failures = Vec::new();
    if on("store") {
        let a = store::StoreArgs {
            features: args.store_features,
            tasks: args.store_tasks.clone(),
            pg_admin_url: args.pg_url.clone(),
            backends: args.store_backends.clone(),
            time_limit: limit,
        };
        if let Err(e) = store::run(&a, &mut table).await {
            failures.push(format!("store: {e:#}"));
        }
    }
    if on("dispatch") {
        let a = dispatch::DispatchArgs {
            features: args.dispatch_features,
            partitions: args.dispatch_partitions,
            rate: args.dispatch_rate,
            hold: Duration::from_millis(args.dispatch_hold_ms),
            time_limit: limit,
        };
        if let Err(e) = dispatch::run(&a, &mut table).await {
            failures.push(format!("dispatch: {e:#}"));
        }
    }
    let sa = server::ServerArgs {
        builder_bin: args.builder_bin.clone(),
        e2e_samples: args.e2e_samples,
        levels: args.levels.clone(),
        backends: args.concurrency_backends.clone(),
        pg_admin_url: args.pg_url.clone(),
        submit_parallelism: args.submit_parallelism,
        level_time_limit: limit,
    };
    if on("e2e")
        && let Err(e) = server::e2e(&sa, &mut table).await
    {
        failures.push(format!("e2e: {e:#}"));
    }
    if on("concurrency")
        && let Err(e) = server::concurrency(&sa, &mut table).await
    {
        failures.push(format!("concurrency: {e:#}"));
    }
    if on("repair") {
        let a = repair::RepairArgs {
            iterations: args.repair_iterations.max(1),
            modules: args.repair_modules.max(1),
        };
        if let Err(e) = repair::run(&a, &mut table).await {
            failures.push(format!("repair: {e:#}"));
        }
    }
    println!();
    table.print();
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED {f}");
        }
        bail!("{} section(s) failed", failures.len());
    }
    Ok(())
}
