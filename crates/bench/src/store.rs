//! Section `store`: events appended per second through `builder_store::append_events`, one
//! event per append as the worker does, on SQLite (temporary data directory) and PostgreSQL
//! (a fresh database per run, dropped afterwards).

use crate::stats::{Table, summary};
use anyhow::{Context, Result, bail};
use builder_core::event::{DeliveryResult, ExecutionPlan, PlanStep};
use builder_core::{Event, Feature, FeatureId, FeatureSpec, NewEvent, RepositoryId};
use builder_store::{CredentialCipher, Store};
use sqlx::Connection;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PRODUCER: &str = "builder-bench";

pub struct StoreArgs {
    pub features: usize,
    pub tasks: Vec<usize>,
    pub pg_admin_url: String,
    pub backends: Vec<String>,
    pub time_limit: Duration,
}

fn cipher() -> Result<CredentialCipher> {
    CredentialCipher::new("bench", &[7u8; 32]).context("building the bench credential cipher")
}

/// A throwaway PostgreSQL database, dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create(admin_url: &str) -> Result<PgDatabase> {
        let name = format!("builder_bench_{}", uuid::Uuid::now_v7().simple());
        let mut conn = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to PostgreSQL at {admin_url}"))?;
        // The name is generated here from a UUID: nothing user-supplied reaches the SQL.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        let base = admin_url.split('?').next().unwrap_or(admin_url);
        let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
        let query = admin_url
            .split_once('?')
            .map(|(_, q)| format!("?{q}"))
            .unwrap_or_default();
        Ok(PgDatabase {
            admin_url: admin_url.to_string(),
            url: format!("{base}/{name}{query}"),
            name,
        })
    }

    pub async fn drop_now(self) -> Result<()> {
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .context("reconnecting to PostgreSQL to drop the bench database")?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await
        .with_context(|| format!("DROP DATABASE {}", self.name))?;
        Ok(())
    }
}

/// The events a delivered one-step feature records after `feature.requested`, in order.
fn happy_path(feature_branch: &str) -> Result<Vec<Event>> {
    let llm = |f: &str| {
        [
            Event::LlmInvocationStarted {
                function: f.into(),
                provider: "openai".into(),
                model: "bench".into(),
            },
            Event::LlmResponseReceived {
                function: f.into(),
                provider: "openai".into(),
                model: "bench".into(),
                latency_ms: 12,
                attempts: 1,
                ok: true,
                error: None,
                usage: Default::default(),
            },
        ]
    };
    let step = PlanStep {
        index: 0,
        description: "create the note".into(),
        step_type: "CREATE_FILE".into(),
        target_files: vec!["bench_note.txt".into()],
        dependencies: vec![],
    };
    let mut v = vec![
        Event::AnalysisStarted {},
        Event::RepositoryCloneStarted {
            url: "file:///srv/app.git".into(),
            branch: "main".into(),
        },
        Event::RepositoryCloneCompleted {
            head_sha: "a".repeat(40),
            duration_ms: 25,
        },
        Event::CodebaseAnalyzed {
            languages: vec!["python".into()],
            build_command: None,
            test_command: Some("echo '1 passed, 0 failed'".into()),
            command_source: "repository_file".into(),
            file_count: 3,
            reasons: vec![],
            deps_command: None,
        },
    ];
    v.extend(llm("AnalyzeFeature"));
    v.extend([
        Event::ScopeIdentified {
            summary: "add a note".into(),
            files: vec!["bench_note.txt".into()],
            risks: vec![],
            acceptance: vec!["the note exists".into()],
        },
        Event::AnalysisCompleted { duration_ms: 40 },
        Event::PlanningStarted {},
    ]);
    v.extend(llm("PlanFeature"));
    v.extend([
        Event::PlanStepDefined { step: step.clone() },
        Event::PlanGenerated {
            plan: ExecutionPlan {
                steps: vec![step],
                affected_files: vec!["bench_note.txt".into()],
                summary: "one step".into(),
            },
        },
        Event::ExecutionStarted { iteration: 1 },
        // Built from its wire form so the bench keeps compiling whether or not the event
        // carries the optional `checkpoint` field.
        Event::from_parts(
            "step.started",
            &serde_json::json!({"iteration": 1, "index": 0, "description": "create the note"}),
        )
        .context("building step.started from its wire form")?,
    ]);
    v.extend(llm("GenerateEdits"));
    v.extend([
        Event::CodeChangeGenerated {
            iteration: 1,
            index: 0,
            summary: "note".into(),
            files: vec!["bench_note.txt".into()],
            edit_count: 1,
        },
        Event::FileModified {
            path: "bench_note.txt".into(),
            action: "CREATE".into(),
            before_sha256: None,
            after_sha256: Some("c".repeat(64)),
        },
        Event::StepCompleted {
            iteration: 1,
            index: 0,
        },
        Event::ExecutionCompleted {
            iteration: 1,
            files_changed: 1,
        },
        Event::VerificationStarted { iteration: 1 },
        Event::SandboxCreated {
            runtime: "bwrap".into(),
            enforced_limits: vec!["timeout".into()],
        },
        Event::TestsStarted {
            baseline: false,
            command: "echo '1 passed, 0 failed'".into(),
        },
        Event::TestsCompleted {
            command: "echo '1 passed, 0 failed'".into(),
            success: true,
            exit_code: Some(0),
            timed_out: false,
            passed: 1,
            failed: 0,
            ignored: 0,
            duration_ms: 30,
            output_tail: "1 passed, 0 failed".into(),
            killed_by: None,
            limits_hit: vec![],
            baseline: false,
            report_format: None,
            failures: vec![],
            preexisting_failures: vec![],
            diagnostics: vec![],
            egress_refused: vec![],
        },
        Event::SandboxDestroyed {},
    ]);
    v.extend(llm("ValidateChange"));
    v.extend([
        Event::VerificationPassed {
            iteration: 1,
            summary: "approved".into(),
        },
        Event::BranchCreated {
            branch: feature_branch.into(),
            base_sha: "a".repeat(40),
        },
        Event::CommitCreated {
            sha: "d".repeat(40),
            message: "add a note".into(),
            files_changed: 1,
            lines_added: 1,
            lines_removed: 0,
        },
        Event::PushStarted {
            branch: feature_branch.into(),
            sha: "d".repeat(40),
        },
        Event::PushCompleted {
            branch: feature_branch.into(),
            sha: "d".repeat(40),
            already_present: false,
        },
        Event::FeatureDelivered {
            result: DeliveryResult {
                branch_name: feature_branch.into(),
                commit_sha: "d".repeat(40),
                commit_count: 1,
                files_changed: 1,
                lines_added: 1,
                ..Default::default()
            },
        },
    ]);
    Ok(v)
}

/// Appends a whole delivered stream for one new feature, timing every append.
async fn one_feature(store: &dyn Store, n: usize, lat: &mut Vec<Duration>) -> Result<usize> {
    let id = FeatureId(uuid::Uuid::now_v7());
    let branch = builder_core::feature_branch_name(id, "bench feature");
    let requested = Event::FeatureRequested {
        spec: FeatureSpec {
            title: format!("bench feature {n}"),
            description: "Add a note file for the benchmark.".into(),
            repository_id: RepositoryId(uuid::Uuid::from_u128(7)),
            target_branch: String::new(),
            feature_branch: String::new(),
            acceptance_criteria: vec!["the note exists".into()],
            path_hints: vec![],
            constraints: Default::default(),
            properties: Default::default(),
        },
        target_branch: "main".into(),
        feature_branch: branch.clone(),
        max_iterations: 3,
        idempotency_key: String::new(),
        retry_of: None,
        retry_from: String::new(),
    };
    let mut next_id = uuid::Uuid::now_v7;
    let mut ctx = NewEvent {
        now: chrono::Utc::now(),
        causation_id: None,
        producer: PRODUCER,
        next_id: &mut next_id,
    };
    let t = Feature::request(id, &id.to_string(), requested, &mut ctx)
        .context("stamping feature.requested")?;
    let started = Instant::now();
    store
        .append(id, 0, &t.envelopes, &t.feature)
        .await
        .context("appending feature.requested")?;
    lat.push(started.elapsed());
    let mut feature: Feature = t.feature;
    let mut count = 1;
    for event in happy_path(&branch)? {
        let ty = event.event_type();
        let started = Instant::now();
        let t = builder_store::append_events(store, &feature, vec![event], None, PRODUCER)
            .await
            .with_context(|| format!("appending {ty} at version {}", feature.version))?;
        lat.push(started.elapsed());
        feature = t.feature;
        count += 1;
    }
    if !feature.state.is_terminal() {
        bail!("the bench stream did not end terminal: {:?}", feature.state);
    }
    Ok(count)
}

async fn run_one(
    store: Arc<dyn Store>,
    features: usize,
    tasks: usize,
    limit: Duration,
) -> Result<(usize, Duration, Vec<Duration>)> {
    let started = Instant::now();
    let deadline = started + limit;
    let mut handles = Vec::new();
    for t in 0..tasks {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut events = 0;
            let mut n = t;
            while n < features && Instant::now() < deadline {
                events += one_feature(store.as_ref(), n, &mut lat).await?;
                n += tasks;
            }
            anyhow::Ok((events, lat))
        }));
    }
    let mut total = 0;
    let mut all = Vec::new();
    for h in handles {
        let (events, lat) = h.await.context("append task panicked")??;
        total += events;
        all.extend(lat);
    }
    Ok((total, started.elapsed(), all))
}

pub async fn run(args: &StoreArgs, table: &mut Table) -> Result<()> {
    let per_feature = happy_path("b")?.len() + 1;
    for backend in &args.backends {
        for &tasks in &args.tasks {
            let case = format!(
                "{backend}, {} features × {per_feature} events, {tasks} task(s)",
                args.features
            );
            eprintln!("store: {case}");
            let (store, dir, pg): (Arc<dyn Store>, _, _) = match backend.as_str() {
                "sqlite" => {
                    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
                    let store = builder_store::open_with_cipher(None, dir.path(), true, cipher()?)
                        .await
                        .context("opening SQLite")?;
                    (store, Some(dir), None)
                }
                "postgres" => {
                    let db = PgDatabase::create(&args.pg_admin_url).await?;
                    let dir = tempfile::tempdir().context("creating a temporary data directory")?;
                    let store =
                        builder_store::open_with_cipher(Some(&db.url), dir.path(), true, cipher()?)
                            .await
                            .context("opening PostgreSQL")?;
                    (store, Some(dir), Some(db))
                }
                other => bail!("unknown store backend {other:?} (sqlite, postgres)"),
            };
            let result = run_one(store.clone(), args.features, tasks, args.time_limit).await;
            drop(store);
            drop(dir);
            if let Some(db) = pg {
                db.drop_now().await?;
            }
            let (events, took, mut lat) = result.with_context(|| format!("store bench {case}"))?;
            table.add(
                "store",
                case.clone(),
                "append throughput",
                format!(
                    "{:.0} events/s ({events} events in {:.2} s)",
                    events as f64 / took.as_secs_f64(),
                    took.as_secs_f64()
                ),
            );
            table.add("store", case, "append latency", summary(&mut lat));
        }
    }
    Ok(())
}
