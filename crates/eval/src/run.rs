//! One eval run: select tasks, make their starting trees, then either run each task's check
//! natively (`--native-only`) or submit each as a feature to a builder server answered by the
//! scripted model and check the branch it pushed.

use crate::EvalArgs;
use crate::answers::{self, AnswerMode, BrokenTarget};
use crate::api::{Api, ApiError};
use crate::check::{self, CheckDirs};
use crate::report::{Report, TaskReport};
use crate::server::{self, Builder};
use crate::task::{self, Selection, Task};
use crate::tree::{self, FileChange, TreeError};
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Args(String),
    #[error(transparent)]
    Tasks(#[from] task::TaskError),
    #[error("{0}")]
    Mirrors(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the scripted model: {0}")]
    Model(#[from] llm_script_server::ServerError),
    #[error("starting builder: {0}")]
    Builder(#[from] server::ServerError),
    #[error("the API client: {0}")]
    Api(#[from] ApiError),
}

/// The work directory: given (and kept), or temporary (removed unless kept).
enum WorkDir {
    Given(PathBuf),
    Temp(tempfile::TempDir),
}

impl WorkDir {
    fn path(&self) -> &Path {
        match self {
            WorkDir::Given(p) => p,
            WorkDir::Temp(t) => t.path(),
        }
    }
}

fn work_dir(args: &EvalArgs) -> Result<WorkDir, EvalError> {
    match &args.work_dir {
        Some(dir) => {
            let io = |source| EvalError::Io {
                what: "creating the work directory",
                path: dir.clone(),
                source,
            };
            std::fs::create_dir_all(dir).map_err(io)?;
            let dir = dir.canonicalize().map_err(io)?;
            let empty = std::fs::read_dir(&dir).map_err(io)?.next().is_none();
            if !empty {
                return Err(EvalError::Args(format!(
                    "--work-dir {} is not empty; give a new or empty directory",
                    dir.display()
                )));
            }
            Ok(WorkDir::Given(dir))
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("builder-eval-")
                .tempdir()
                .map_err(|source| EvalError::Io {
                    what: "creating a work directory in",
                    path: std::env::temp_dir(),
                    source,
                })?;
            if args.keep_work_dir {
                Ok(WorkDir::Given(temp.keep()))
            } else {
                Ok(WorkDir::Temp(temp))
            }
        }
    }
}

/// Runs the eval, prints progress (stderr), the table and summary (stdout), writes `--json`,
/// and returns the report. An `Err` means the run could not happen at all; tasks the eval
/// could not evaluate are in the report's `infrastructure_errors`.
pub async fn run(args: &EvalArgs) -> Result<Report, EvalError> {
    if args.answers == AnswerMode::None && !args.native_only {
        return Err(EvalError::Args(
            "--answers none needs --native-only (a feature needs an answer)".into(),
        ));
    }
    if args.jobs == 0 {
        return Err(EvalError::Args("--jobs must be at least 1".into()));
    }
    if let Some(m) = args.feature_timeout_minutes
        && !(5..=120).contains(&m)
    {
        return Err(EvalError::Args(
            "--feature-timeout-minutes must be 5–120".into(),
        ));
    }
    let tasks = task::load(
        &args.tasks,
        &Selection {
            only: args.only.clone(),
            repos: args.repos.clone(),
            limit: args.limit,
        },
    )?;
    preflight_mirrors(&args.mirrors, &tasks)?;
    let work = work_dir(args)?;
    eprintln!(
        "builder eval: {} task(s), answers {:?}{}, work dir {}",
        tasks.len(),
        args.answers,
        if args.native_only {
            ", native only"
        } else {
            ""
        },
        work.path().display()
    );
    let ctx = Ctx {
        args,
        work: work.path().to_path_buf(),
        total: tasks.len(),
    };
    let reports = if args.native_only {
        run_native(&ctx, tasks).await
    } else {
        run_builder(&ctx, tasks).await?
    };
    let report = Report::new(args.answers, args.native_only, reports);
    print!("{}", report.render());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).unwrap_or_default();
        std::fs::write(path, text).map_err(|source| EvalError::Io {
            what: "writing",
            path: path.clone(),
            source,
        })?;
    }
    if let WorkDir::Given(dir) = &work
        && args.work_dir.is_none()
    {
        eprintln!("builder eval: work directory kept at {}", dir.display());
    }
    Ok(report)
}

/// Every repository's mirror, before anything is built: a missing one is a mistake in the
/// command line, better said at once than after an hour of other tasks.
fn preflight_mirrors(mirrors: &Path, tasks: &[Task]) -> Result<(), EvalError> {
    let mut repos: Vec<&str> = tasks.iter().map(|t| t.repo.as_str()).collect();
    repos.sort();
    repos.dedup();
    let problems: Vec<String> = repos
        .iter()
        .filter_map(|r| tree::find_git_dir(mirrors, r).err())
        .map(|e| e.to_string())
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(EvalError::Mirrors(problems.join("\n")))
    }
}

struct Ctx<'a> {
    args: &'a EvalArgs,
    work: PathBuf,
    total: usize,
}

impl Ctx<'_> {
    fn keep(&self) -> bool {
        self.args.keep_work_dir || self.args.work_dir.is_some()
    }

    fn remove(&self, dir: &Path) {
        if !self.keep() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    fn check_timeout(&self) -> Duration {
        Duration::from_secs(self.args.check_timeout_secs)
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn progress(ctx: &Ctx<'_>, done: usize, r: &TaskReport) {
    let check = match &r.check {
        None => "-".to_string(),
        Some(c) if c.passed => "PASS".into(),
        Some(c) if c.timed_out => "FAIL (timeout)".into(),
        Some(_) => "FAIL".into(),
    };
    eprintln!(
        "[{done}/{}] {}: {}, check {check}",
        ctx.total, r.task, r.outcome
    );
    if let Some(e) = &r.infrastructure_error {
        eprintln!("    error: {e}");
    }
}

/// The task's starting tree in `dest`, and what the answer changes in it.
struct Tree {
    changes: Vec<FileChange>,
    broken: Vec<BrokenTarget>,
    notes: Vec<String>,
}

/// Makes the starting tree in `dest` and reads the fix's changes; with `apply` the fix (and
/// the broken line, for broken answers) stays applied in `dest`.
async fn make_tree(
    ctx: &Ctx<'_>,
    task: &Task,
    dest: &Path,
    apply: bool,
) -> Result<Tree, TreeError> {
    let scratch = ctx.work.join("scratch").join(&task.task);
    let git_dir = tree::find_git_dir(&ctx.args.mirrors, &task.repo)?;
    let starting = tree::make_starting_tree(
        &git_dir,
        &task.commit,
        &task.starting_point_patch,
        dest,
        &scratch,
    )
    .await?;
    let mut notes = Vec::new();
    if !starting.skipped.is_empty() {
        let shown: Vec<&str> = starting
            .skipped
            .iter()
            .take(5)
            .map(String::as_str)
            .collect();
        notes.push(format!(
            "left out {} file(s) whose blob the snapshot lacks: {}{}",
            starting.skipped.len(),
            shown.join(", "),
            if starting.skipped.len() > 5 {
                ", …"
            } else {
                ""
            }
        ));
    }
    let mode = ctx.args.answers;
    if mode == AnswerMode::None {
        ctx.remove(&scratch);
        return Ok(Tree {
            changes: Vec::new(),
            broken: Vec::new(),
            notes,
        });
    }
    let tracked = tree::tracked_files(dest).await?;
    let changes = tree::changes_of_fix(dest, &task.fix_patch, &scratch).await?;
    let changes = answers::with_task_tests(changes, &task.verification_files, &tracked);
    if changes.is_empty() {
        return Err(TreeError::NotRepresentable {
            path: "fix_patch".into(),
            what: "it changes no file",
        });
    }
    let broken = if mode == AnswerMode::Broken {
        let read = |p: &str| file_inside(dest, p).and_then(|f| std::fs::read_to_string(f).ok());
        let targets = answers::broken_targets(&changes, &tracked, read);
        if targets.is_empty() {
            return Err(TreeError::NotRepresentable {
                path: "fix_patch".into(),
                what: "neither the fix nor the tree has a Rust file to break",
            });
        }
        if apply {
            for target in &targets {
                let Some(path) = file_inside(dest, &target.path) else {
                    continue;
                };
                let content = answers::with_broken_line(&target.content);
                std::fs::write(&path, content).map_err(|source| TreeError::Io {
                    what: "writing",
                    path,
                    source,
                })?;
            }
        }
        let paths: Vec<&str> = targets.iter().map(|t| t.path.as_str()).collect();
        notes.push(format!(
            "broken answer: a line that cannot compile appended to {}",
            paths.join(", ")
        ));
        targets
    } else {
        Vec::new()
    };
    ctx.remove(&scratch);
    Ok(Tree {
        changes,
        broken,
        notes,
    })
}

/// `root/rel` when it is a regular file really inside `root`: a repository is untrusted, and
/// a symlinked file or directory could make the eval read or write anywhere.
fn file_inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let full = root.join(rel);
    let real = full.canonicalize().ok()?;
    let real_root = root.canonicalize().ok()?;
    let is_file = std::fs::symlink_metadata(&full).is_ok_and(|m| m.is_file());
    (is_file && real == real_root.join(rel)).then_some(full)
}

// ---------------------------------------------------------------- native only

async fn run_native(ctx: &Ctx<'_>, tasks: Vec<Task>) -> Vec<TaskReport> {
    let mut done = 0;
    let mut reports: Vec<(usize, TaskReport)> =
        futures::stream::iter(tasks.into_iter().enumerate())
            .map(|(i, task)| async move { (i, native_task(ctx, &task).await) })
            .buffer_unordered(ctx.args.jobs)
            .inspect(|(_, r)| {
                done += 1;
                progress(ctx, done, r);
            })
            .collect()
            .await;
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}

async fn native_task(ctx: &Ctx<'_>, task: &Task) -> TaskReport {
    let mut report = TaskReport::new(&task.task, &task.repo);
    let dirs = CheckDirs::new(ctx.work.join("checks").join(&task.task));
    let started = Instant::now();
    let made = make_tree(ctx, task, &dirs.src(), true).await;
    report.phases.prepare_ms = Some(elapsed_ms(started));
    match made {
        Ok(tree) => report.notes.extend(tree.notes),
        Err(e) => {
            report.outcome = "ERROR(prepare)".into();
            report.infrastructure_error = Some(e.to_string());
            ctx.remove(&dirs.root);
            return report;
        }
    }
    report.outcome = "NATIVE".into();
    run_check(ctx, task, &dirs, &mut report).await;
    report
}

async fn run_check(ctx: &Ctx<'_>, task: &Task, dirs: &CheckDirs, report: &mut TaskReport) {
    match check::run(task, dirs, ctx.check_timeout()).await {
        Ok(outcome) => {
            report.phases.check_ms = Some(outcome.duration_ms);
            if !outcome.passed {
                report.notes.push(format!(
                    "check failed (reward {}, exit {}); its output ends:\n{}",
                    outcome.reward.as_deref().unwrap_or("none"),
                    outcome.exit_code.map_or("-".into(), |c| c.to_string()),
                    indent(&server::tail(&outcome.log, 15))
                ));
            }
            report.check = Some(outcome);
        }
        Err(e) => {
            report.infrastructure_error = Some(format!("running the check: {e}"));
        }
    }
    ctx.remove(&dirs.root);
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("      {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------------------------------------------------------------- through builder

struct Prepared {
    task: Task,
    bare: PathBuf,
    tree: Tree,
    prepare_ms: u64,
}

/// BUILDER_MAX_REPAIR_ITERATIONS as the server will read it (its default is 3; a value it
/// cannot read stops it at start-up, so the default here is never used for a real run).
fn max_repair_iterations() -> u32 {
    std::env::var("BUILDER_MAX_REPAIR_ITERATIONS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(3)
}

async fn prepare(ctx: &Ctx<'_>, task: Task) -> Result<Prepared, TaskReport> {
    let started = Instant::now();
    let dest = ctx.work.join("prep").join(&task.task);
    let bare = ctx.work.join("repos").join(format!("{}.git", task.task));
    let result = async {
        let tree = make_tree(ctx, &task, &dest, false).await?;
        tree::push_to_bare(&dest, &bare).await?;
        Ok::<Tree, TreeError>(tree)
    }
    .await;
    // The bare repository is what builder clones; the work tree is no longer needed.
    let _ = std::fs::remove_dir_all(&dest);
    match result {
        Ok(tree) => Ok(Prepared {
            task,
            bare,
            tree,
            prepare_ms: elapsed_ms(started),
        }),
        Err(e) => {
            let mut report = TaskReport::new(&task.task, &task.repo);
            report.outcome = "ERROR(prepare)".into();
            report.phases.prepare_ms = Some(elapsed_ms(started));
            report.infrastructure_error = Some(e.to_string());
            Err(report)
        }
    }
}

async fn run_builder(ctx: &Ctx<'_>, tasks: Vec<Task>) -> Result<Vec<TaskReport>, EvalError> {
    let order: Vec<String> = tasks.iter().map(|t| t.task.clone()).collect();
    let mut reports: Vec<TaskReport> = Vec::new();
    let mut prepared: Vec<Prepared> = Vec::new();
    // Every answer must be in the script before the model starts, so every tree is made
    // first (their work trees are removed as soon as the bare repositories hold them).
    let results: Vec<Result<Prepared, TaskReport>> = futures::stream::iter(tasks)
        .map(|t| prepare(ctx, t))
        .buffer_unordered(ctx.args.jobs)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(p) => prepared.push(p),
            Err(report) => {
                eprintln!(
                    "{}: could not prepare: {}",
                    report.task,
                    report.infrastructure_error.as_deref().unwrap_or("")
                );
                reports.push(report);
            }
        }
    }
    if !prepared.is_empty() {
        let iterations = max_repair_iterations();
        let script = answers::script(
            prepared
                .iter()
                .map(|p| {
                    answers::task_entries(&p.task.task, &p.tree.changes, &p.tree.broken, iterations)
                })
                .collect(),
        );
        let model = llm_script_server::start(script).await?;
        let exe = std::env::current_exe().map_err(|source| EvalError::Io {
            what: "finding this binary",
            path: PathBuf::from("/proc/self/exe"),
            source,
        })?;
        let builder = Builder::start(&exe, &ctx.work, &model.openai_base_url()).await?;
        eprintln!(
            "builder eval: builder serve at {} (log {})",
            builder.url,
            builder.log.display()
        );
        let api = Api::new(&builder.url)?;
        let mut done = reports.len();
        let ran: Vec<TaskReport> = futures::stream::iter(prepared)
            .map(|p| {
                let api = api.clone();
                async move { feature_task(ctx, &api, p).await }
            })
            .buffer_unordered(ctx.args.jobs)
            .inspect(|r| {
                done += 1;
                progress(ctx, done, r);
            })
            .collect()
            .await;
        reports.extend(ran);
        builder.stop().await;
        note_unanswered(&model, &mut reports);
    }
    reports.sort_by_key(|r| order.iter().position(|id| *id == r.task));
    Ok(reports)
}

/// A model request the script had no answer for fails its feature for a reason that is the
/// eval's, not builder's: say so on the task it belongs to.
fn note_unanswered(model: &llm_script_server::Running, reports: &mut [TaskReport]) {
    let unanswered: Vec<String> = model
        .requests()
        .into_iter()
        .filter(|r| r.entry.is_none() && r.method == "POST")
        .map(|r| r.body.to_string())
        .collect();
    if unanswered.is_empty() {
        return;
    }
    eprintln!(
        "builder eval: warning: the scripted model had no answer for {} request(s)",
        unanswered.len()
    );
    for report in reports.iter_mut() {
        let marker = answers::title_marker(&report.task);
        let n = unanswered.iter().filter(|b| b.contains(&marker)).count();
        if n > 0 {
            report.notes.push(format!(
                "the scripted model had no answer for {n} of this feature's request(s): an eval limit, not builder's doing"
            ));
        }
    }
}

const TERMINAL_STATES: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// Register, submit, wait, read the events, check the pushed branch.
async fn feature_task(ctx: &Ctx<'_>, api: &Api, p: Prepared) -> TaskReport {
    let task = &p.task;
    let mut report = TaskReport::new(&task.task, &task.repo);
    report.phases.prepare_ms = Some(p.prepare_ms);
    report.notes.extend(p.tree.notes.iter().cloned());
    let infra = |mut report: TaskReport, phase: &str, e: String| {
        report.outcome = format!("ERROR({phase})");
        report.infrastructure_error = Some(e);
        report
    };
    let url = format!("file://{}", p.bare.display());
    let repo_id = match api.register(&format!("eval-{}", task.task), &url).await {
        Ok(id) => id,
        Err(e) => return infra(report, "register", e.to_string()),
    };
    let mut spec = json!({
        "title": answers::feature_title(&task.task, &task.instruction),
        "description": answers::feature_description(&task.task, &task.instruction),
        "repositoryId": repo_id,
    });
    if let Some(m) = ctx.args.feature_timeout_minutes {
        spec["constraints"] = json!({"timeoutMinutes": m});
    }
    let id = match api.create(spec).await {
        Ok(id) => id,
        Err(e) => return infra(report, "create", e.to_string()),
    };
    report.feature_id = Some(id.clone());
    let execution = match wait_terminal(ctx, api, &id).await {
        Ok(Some(execution)) => execution,
        Ok(None) => {
            let _ = api
                .cancel(&id, "builder eval: no end within its wait")
                .await;
            report.outcome = "STUCK".into();
            report.notes.push(
                "the feature did not end within its timeout plus 10 minutes; cancelled".into(),
            );
            api.get(&id).await.unwrap_or(Value::Null)
        }
        Err(e) => return infra(report, "wait", e.to_string()),
    };
    if report.outcome.is_empty() {
        report.outcome = outcome_of(&execution);
    }
    let message = execution["error"]["message"].as_str().unwrap_or("");
    if !message.is_empty() {
        report.notes.push(format!("builder: {message}"));
    }
    match api.events(&id).await {
        Ok(events) => {
            let (verification, phases) = crate::report::read_events(&events);
            report.verification = verification;
            let prepare = report.phases.prepare_ms;
            report.phases = phases;
            report.phases.prepare_ms = prepare;
        }
        Err(e) => return infra(report, "events", e.to_string()),
    }
    let branch = execution["featureBranch"]
        .as_str()
        .filter(|b| !b.is_empty())
        .map(str::to_string);
    report.branch = branch.clone();
    let Some(branch) = branch else {
        return report;
    };
    match tree::has_branch(&p.bare, &branch).await {
        Ok(true) => {}
        Ok(false) => return report,
        Err(e) => return infra(report, "check", e.to_string()),
    }
    let dirs = CheckDirs::new(ctx.work.join("checks").join(&task.task));
    if let Err(e) = tree::clone_branch(&p.bare, &branch, &dirs.src()).await {
        return infra(report, "check", format!("cloning the pushed branch: {e}"));
    }
    run_check(ctx, task, &dirs, &mut report).await;
    if report.infrastructure_error.is_some() {
        report.outcome = format!("{} ERROR(check)", report.outcome);
    }
    report
}

fn outcome_of(execution: &Value) -> String {
    match execution["state"].as_str().unwrap_or("") {
        "COMPLETED" => "DELIVERED".into(),
        "FAILED" => format!(
            "FAILED({})",
            execution["error"]["code"].as_str().unwrap_or("UNKNOWN")
        ),
        "CANCELLED" => "CANCELLED".into(),
        other => format!("UNFINISHED({other})"),
    }
}

/// Polls Get until the feature ends; `None` when it has not within its own timeout plus ten
/// minutes (builder ends a feature at its timeout, so that is a stuck feature).
async fn wait_terminal(ctx: &Ctx<'_>, api: &Api, id: &str) -> Result<Option<Value>, ApiError> {
    let minutes = u64::from(ctx.args.feature_timeout_minutes.unwrap_or(60)) + 10;
    let deadline = Instant::now() + Duration::from_secs(minutes * 60);
    let mut failures = 0;
    loop {
        match api.get(id).await {
            Ok(execution) => {
                failures = 0;
                let state = execution["state"].as_str().unwrap_or("");
                if TERMINAL_STATES.contains(&state) {
                    return Ok(Some(execution));
                }
            }
            // A server that stops answering is the eval's problem, not the feature's; a
            // passing hiccup is not.
            Err(e) => {
                failures += 1;
                if failures >= 5 {
                    return Err(e);
                }
            }
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
