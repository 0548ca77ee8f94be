//! Sections `e2e` and `concurrency`: the real `builder serve` binary (release build) on a
//! temporary data directory, a bare git repository served by `file://`, and the scripted LLM
//! (`llm-script-server`) answering instantly. Only loopback traffic.

use crate::stats::{Table, summary};
use crate::store::PgDatabase;
use anyhow::{Context, Result, anyhow, bail};
use builder_core::FeatureId;
use builder_store::{CredentialCipher, Store};
use futures::StreamExt;
use llm_script_server::{Entry, Options, Running, Script};
use serde_json::{Value, json};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `.builder.toml`: a trivial test command whose output `parse_test_counts` reads as one
/// executed test (generic `N passed, N failed` line, framework `unknown`), no build step.
const BUILDER_TOML: &str = "[commands]\ntest = \"echo '1 passed, 0 failed'\"\nbuild = \"\"\n";

/// One reply that parses as each of the four BAML functions' classes (Analysis, Plan,
/// EditSet, Review): the schema-aligned parser takes the fields it needs and ignores the
/// rest, so entries need no `when_contains` and matching stays O(1) per request.
const UNIVERSAL_REPLY: &str = r#"{"summary": "add a note file", "affected_files": ["bench_note.txt"], "risks": [], "acceptance_interpretation": ["bench_note.txt exists"], "steps": [{"index": 0, "description": "create bench_note.txt", "step_type": "CREATE_FILE", "target_files": ["bench_note.txt"], "dependencies": []}], "edits": [{"path": "bench_note.txt", "action": "CREATE", "content": "benchmark note\n"}], "approved": true, "reasons": ["the note exists"]}"#;

pub struct ServerArgs {
    pub builder_bin: Option<PathBuf>,
    pub e2e_samples: usize,
    pub levels: Vec<usize>,
    pub backends: Vec<String>,
    pub pg_admin_url: String,
    pub submit_parallelism: usize,
    pub level_time_limit: Duration,
}

pub fn locate_builder(flag: Option<&Path>) -> Result<PathBuf> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target"))
                });
            target.join("release/builder")
        }
    };
    if !path.is_file() {
        bail!(
            "the builder binary is missing at {}: build it first with `cargo build --release -p builder` (or pass --builder-bin)",
            path.display()
        );
    }
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .context("finding a free port")?
        .local_addr()?
        .port())
}

/// A repository, a scripted LLM and a running `builder serve`.
struct Rig {
    root: tempfile::TempDir,
    _llm: Running,
    record: PathBuf,
    child: Child,
    pid: u32,
    url: String,
    http: reqwest::Client,
    repo_id: String,
    data_dir: PathBuf,
    log: PathBuf,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Rig {
    async fn start(bin: &Path, replies: usize, database_url: Option<&str>) -> Result<Rig> {
        let root = tempfile::tempdir().context("creating the rig's temporary directory")?;
        let bare = builder_testkit::make_bare_repo(
            root.path(),
            "app",
            &[
                ("README.md", "benchmark repository\n"),
                (".builder.toml", BUILDER_TOML),
                ("app.py", "def f():\n    return 1\n"),
            ],
        )
        .map_err(|e| anyhow!("creating the bare repository: {e}"))?;
        let record = root.path().join("llm-requests.jsonl");
        let llm = llm_script_server::start_with(
            Script::new((0..replies).map(|_| Entry::text(UNIVERSAL_REPLY)).collect()),
            Options {
                port: 0,
                record: Some(record.clone()),
            },
        )
        .await
        .context("starting the scripted LLM")?;
        let port = free_port()?;
        let data_dir = root.path().join("data");
        let log = root.path().join("serve.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("BUILDER_DATA_DIR", &data_dir)
            .env("SERVICE_PORT", port.to_string())
            .env("SANDBOX_TIMEOUT_SECONDS", "60")
            .env("LOG_LEVEL", "warn")
            .env("BAML_CLIENT_PROVIDER", "openai")
            .env("BAML_CLIENT_MODEL", "scripted-model")
            .env("BAML_CLIENT_API_KEY", "sk-bench-dummy")
            .env("BAML_CLIENT_BASE_URL", llm.openai_base_url())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).context("creating the server log")?);
        for var in ["PYENV_ROOT", "PYENV_VERSION", "CARGO_HOME", "RUSTUP_HOME"] {
            if let Ok(v) = std::env::var(var) {
                cmd.env(var, v);
            }
        }
        if let Some(url) = database_url {
            cmd.env("DATABASE_URL", url)
                .env("DO_DATABASE_MIGRATE", "true");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {} serve", bin.display()))?;
        let pid = child.id();
        let mut rig = Rig {
            root,
            _llm: llm,
            record,
            child,
            pid,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            repo_id: String::new(),
            data_dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(r) = rig.http.get(format!("{}/health", rig.url)).send().await
                && r.status().is_success()
            {
                break;
            }
            if let Ok(Some(status)) = rig.child.try_wait() {
                bail!("builder serve exited with {status}:\n{}", rig.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "builder serve did not become healthy in 90 s:\n{}",
                    rig.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let url = format!("file://{}", bare.display());
        let body = rig
            .call(
                "builder.repository.v1.RepositoryService/Register",
                json!({"name": "app", "url": url}),
            )
            .await
            .context("registering the repository")?;
        rig.repo_id = body["repository"]["id"]
            .as_str()
            .ok_or_else(|| anyhow!("Register answered without an id: {body}"))?
            .to_string();
        Ok(rig)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    async fn call(&self, method: &str, body: Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}/{method}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .with_context(|| format!("calling {method}"))?;
        let status = r.status();
        let text = r
            .text()
            .await
            .with_context(|| format!("reading the {method} answer"))?;
        if !status.is_success() {
            bail!("{method} answered {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{method} answered non-JSON: {text}"))
    }

    async fn create(&self, title: &str) -> Result<String> {
        let body = self
            .call(
                "builder.feature.v1.FeatureService/Create",
                json!({"spec": {
                    "title": title,
                    "description": "Add bench_note.txt holding a short note.",
                    "repositoryId": self.repo_id,
                    "acceptanceCriteria": ["bench_note.txt exists"],
                }}),
            )
            .await?;
        Ok(body["execution"]["id"]
            .as_str()
            .ok_or_else(|| anyhow!("Create answered without an id: {body}"))?
            .to_string())
    }

    async fn state(&self, id: &str) -> Result<String> {
        let body = self
            .call("builder.feature.v1.FeatureService/Get", json!({"id": id}))
            .await?;
        Ok(body["execution"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    /// The server's store, opened read-side by the bench to count unfinished features.
    async fn open_store(&self, database_url: Option<&str>) -> Result<Arc<dyn Store>> {
        let cipher = CredentialCipher::new("bench", &[7u8; 32])?;
        builder_store::open_with_cipher(database_url, &self.data_dir, false, cipher)
            .await
            .context("opening the server's store from the bench")
    }
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Summed `VmRSS` of a process's direct children (the BAML sidecar, git, bwrap), in KiB.
fn children_rss_kib(pid: u32) -> u64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .filter_map(|c| rss_kib(c).map(|(r, _)| r))
        .sum()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Waits for a line containing `needle` to be appended to `file` after `offset`.
async fn wait_recorded(file: &Path, offset: &mut u64, needle: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    let mut pending = String::new();
    loop {
        let len = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
        if len > *offset {
            let mut f = std::fs::File::open(file).context("opening the LLM record file")?;
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = Vec::new();
            f.read_to_end(&mut buf)?;
            *offset += buf.len() as u64;
            pending.push_str(&String::from_utf8_lossy(&buf));
            if pending.contains(needle) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("no LLM request mentioning {needle:?} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn wait_terminal(rig: &Rig, id: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    loop {
        let state = rig.state(id).await?;
        if matches!(state.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
            return Ok(state);
        }
        if Instant::now() > deadline {
            bail!(
                "feature {id} still {state} after {limit:?}:\n{}",
                rig.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Section `e2e`: submit → first LLM request, one feature at a time, after a warm-up one.
pub async fn e2e(args: &ServerArgs, table: &mut Table) -> Result<()> {
    let bin = locate_builder(args.builder_bin.as_deref())?;
    let rig = Rig::start(&bin, 6 * (args.e2e_samples + 1) + 20, None).await?;
    let mut offset = 0u64;
    let mut first_llm = Vec::new();
    let mut delivered = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..=args.e2e_samples {
        let title = format!("bench e2e {i} {}", uuid::Uuid::now_v7().simple());
        let id = rig.create(&title).await?;
        let t0 = Instant::now();
        wait_recorded(&rig.record, &mut offset, &title, Duration::from_secs(60))
            .await
            .with_context(|| format!("sample {i}:\n{}", rig.log_tail()))?;
        let t1 = t0.elapsed();
        let state = wait_terminal(&rig, &id, Duration::from_secs(120)).await?;
        let t2 = t0.elapsed();
        if i == 0 {
            eprintln!("e2e: warm-up feature {state}: first LLM request {t1:?}, terminal {t2:?}");
            if state != "COMPLETED" {
                bail!(
                    "the warm-up feature ended {state}; server log:\n{}",
                    rig.log_tail()
                );
            }
            continue;
        }
        first_llm.push(t1);
        delivered.push(t2);
        *outcomes.entry(state).or_default() += 1;
    }
    let case = format!(
        "embedded SQLite, file:// repo, warm, {} sequential features",
        args.e2e_samples
    );
    table.add(
        "e2e",
        case.clone(),
        "Create → first LLM request",
        summary(&mut first_llm),
    );
    table.add(
        "e2e",
        case.clone(),
        "Create → terminal (whole pipeline)",
        summary(&mut delivered),
    );
    table.add("e2e", case, "outcomes", format!("{outcomes:?}"));
    Ok(())
}

/// Section `concurrency`: N features at once against one fresh server per level.
pub async fn concurrency(args: &ServerArgs, table: &mut Table) -> Result<()> {
    let bin = locate_builder(args.builder_bin.as_deref())?;
    for backend in &args.backends {
        for &n in &args.levels {
            let pg = match backend.as_str() {
                "sqlite" => None,
                "postgres" => Some(PgDatabase::create(&args.pg_admin_url).await?),
                other => bail!("unknown concurrency backend {other:?} (sqlite, postgres)"),
            };
            let url = pg.as_ref().map(|d| d.url.clone());
            let result = one_level(&bin, n, backend, url.as_deref(), args, table).await;
            if let Some(db) = pg {
                db.drop_now().await?;
            }
            result.with_context(|| format!("concurrency level {n} on {backend}"))?;
        }
    }
    Ok(())
}

async fn one_level(
    bin: &Path,
    n: usize,
    backend: &str,
    database_url: Option<&str>,
    args: &ServerArgs,
    table: &mut Table,
) -> Result<()> {
    eprintln!("concurrency: {n} features on {backend}");
    let rig = Rig::start(bin, 6 * n + 20, database_url).await?;
    let store = rig.open_store(database_url).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (base_rss, _) =
        rss_kib(rig.pid).ok_or_else(|| anyhow!("cannot read /proc/{}/status", rig.pid))?;
    let started = Instant::now();
    let rig_ref = &rig;
    let ids: Vec<Result<String>> = futures::stream::iter(0..n)
        .map(|i| async move { rig_ref.create(&format!("bench conc {i}")).await })
        .buffer_unordered(args.submit_parallelism.max(1))
        .collect()
        .await;
    let ids: Vec<String> = ids
        .into_iter()
        .collect::<Result<_>>()
        .context("submitting")?;
    let submitted = started.elapsed();
    let (after_submit_rss, _) = rss_kib(rig.pid).unwrap_or((0, 0));
    let deadline = started + args.level_time_limit;
    let mut max_in_flight = 0usize;
    let mut max_children = 0u64;
    // VmHWM is synced lazily by the kernel and can trail a sampled VmRSS: keep both.
    let mut max_rss = after_submit_rss;
    let mut remaining;
    loop {
        remaining = store
            .non_terminal_features()
            .await
            .context("counting unfinished features")?
            .len();
        max_in_flight = max_in_flight.max(remaining);
        max_children = max_children.max(children_rss_kib(rig.pid));
        if let Some((rss, _)) = rss_kib(rig.pid) {
            max_rss = max_rss.max(rss);
        }
        if remaining == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let drained = started.elapsed();
    let (end_rss, hwm) = rss_kib(rig.pid).unwrap_or((0, 0));
    let hwm = hwm.max(max_rss);
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let fid: FeatureId = id.parse().map_err(|e| anyhow!("feature id {id}: {e:?}"))?;
        let state = store
            .get_feature(fid)
            .await?
            .map(|f| f.state.as_str().to_string())
            .unwrap_or_else(|| "MISSING".into());
        *outcomes.entry(state).or_default() += 1;
    }
    let completed = outcomes.get("COMPLETED").copied().unwrap_or(0);
    let case = format!("{backend}, {n} features");
    table.add(
        "concurrency",
        case.clone(),
        "submit (all Creates)",
        format!(
            "{:.2} s ({:.0} Creates/s, {} in parallel)",
            submitted.as_secs_f64(),
            n as f64 / submitted.as_secs_f64(),
            args.submit_parallelism
        ),
    );
    if remaining > 0 {
        table.add(
            "concurrency",
            case.clone(),
            "NOT drained",
            format!(
                "{remaining} unfinished after {:.0} s (time limit)",
                drained.as_secs_f64()
            ),
        );
    }
    table.add(
        "concurrency",
        case.clone(),
        "time to drain",
        format!("{:.1} s", drained.as_secs_f64()),
    );
    table.add(
        "concurrency",
        case.clone(),
        "completion throughput",
        format!(
            "{:.2} features/s ({completed} completed)",
            completed as f64 / drained.as_secs_f64()
        ),
    );
    table.add(
        "concurrency",
        case.clone(),
        "outcomes",
        format!("{outcomes:?}; max unfinished at once {max_in_flight}"),
    );
    table.add(
        "concurrency",
        case.clone(),
        "server RSS",
        format!(
            "idle {} · after submit {} · peak (max of VmHWM, sampled VmRSS) {} · after drain {}",
            mib(base_rss),
            mib(after_submit_rss),
            mib(hwm),
            mib(end_rss)
        ),
    );
    let per = |kib: u64| format!("{:.1} KiB", kib.saturating_sub(base_rss) as f64 / n as f64);
    table.add(
        "concurrency",
        case.clone(),
        "RSS per feature",
        format!(
            "queued/idle {} · peak in-flight {} · retained after drain {}",
            per(after_submit_rss),
            per(hwm),
            per(end_rss)
        ),
    );
    table.add(
        "concurrency",
        case,
        "children RSS peak (sidecar, git, bwrap)",
        mib(max_children),
    );
    drop(store);
    let _ = &rig.root;
    Ok(())
}
