//! builder-eval: `builder eval` runs SWE-style tasks (the devset's `tasks.jsonl` format)
//! through the real pipeline — this binary's own `serve`, the real BAML sidecar and sandbox
//! — with a scripted model that answers with the task's real change (or a broken one), then
//! runs the task's own check natively on the branch builder pushed, and reports what
//! happened: delivered or not, builder's verification record, the check, time per phase.
//! `--native-only` skips builder to confirm a task's check fails without the fix and passes
//! with it.
//!
//! It talks to builder only through the public API and the binary's environment, like any
//! client: it must not depend on builder's internal crates (core, store, worker, api, llm,
//! git, sandbox). It depends on llm-script-server on purpose — answering the model with a
//! script is what a gold replay is.

pub mod answers;
pub mod api;
pub mod check;
pub mod report;
mod run;
pub mod server;
pub mod task;
pub mod tree;

pub use answers::AnswerMode;
pub use report::Report;
pub use run::{EvalError, run};

use std::path::PathBuf;

/// `builder eval` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// The tasks, one JSON object a line (the devset's tasks.jsonl format).
    #[arg(long)]
    pub tasks: PathBuf,
    /// Local git mirrors: the repository owner/name is DIR/owner+name (a bare git directory,
    /// or one at most two levels below it).
    #[arg(long)]
    pub mirrors: PathBuf,
    /// What the scripted model answers with: the task's real change, that change plus a line
    /// that cannot compile (in every repair too), or (with --native-only) nothing.
    #[arg(long, value_enum, default_value_t = AnswerMode::Gold)]
    pub answers: AnswerMode,
    /// Skip builder: apply the answer to the starting tree and run the task's check natively.
    #[arg(long)]
    pub native_only: bool,
    /// Only these task ids (comma-separated, repeatable).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Only tasks of this repository (owner/name, repeatable).
    #[arg(long = "repo")]
    pub repos: Vec<String>,
    /// At most this many tasks (after the other filters, in file order).
    #[arg(long)]
    pub limit: Option<usize>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Time limit of one task's check.
    #[arg(long, default_value_t = 1800)]
    pub check_timeout_secs: u64,
    /// Each feature's constraints.timeout_minutes (5–120; builder's default when unset).
    #[arg(long)]
    pub feature_timeout_minutes: Option<u32>,
    /// Where repositories, builder's data and checks go (created; must be empty). A
    /// temporary directory, removed at the end, when unset.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Keep the work directory (trees, checks, builder's data and log) after the run.
    #[arg(long)]
    pub keep_work_dir: bool,
}
