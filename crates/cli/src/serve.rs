//! `builder serve`: everything in one process — API, embedded bus, workers — on the store
//! the environment names (SQLite under the data directory by default).

use crate::config::Config;
use anyhow::{Context, Result};
use builder_api::{Backend, ReadinessCheck};
use builder_bus::{EmbeddedBus, Handler, WorkBus};
use builder_core::repository::UrlPolicy;
use builder_core::{Credential, FeatureId};
use builder_git::{Git, GitConfig, GitCredential};
use builder_store::Store;
use builder_worker::{Llm, Worker, WorkerConfig};
use futures::FutureExt;
use futures::future::BoxFuture;
use std::path::PathBuf;
use std::sync::Arc;

struct ServeBackend {
    store: Arc<dyn Store>,
    bus: Arc<EmbeddedBus>,
    worker: Arc<Worker>,
    git: Arc<Git>,
    url_policy: UrlPolicy,
    max_repair_iterations: u32,
}

fn git_credential(c: Option<Credential>) -> GitCredential {
    match c {
        None => GitCredential::None,
        Some(Credential::Token { token, username }) => GitCredential::Token { token, username },
        Some(Credential::Basic { username, password }) => {
            GitCredential::Basic { username, password }
        }
        Some(Credential::SshKey { private_key }) => GitCredential::SshKey { private_key },
        Some(Credential::Oauth { token, .. }) => GitCredential::Token {
            token,
            username: Some("oauth2".into()),
        },
    }
}

impl Backend for ServeBackend {
    fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    fn submit(&self, id: FeatureId) -> Result<(), String> {
        self.bus.publish(id).map_err(|e| e.to_string())
    }

    fn interrupt(&self, id: FeatureId) {
        self.worker.interrupt(id);
    }

    fn probe_default_branch(
        &self,
        url: String,
        credential: Option<Credential>,
    ) -> BoxFuture<'static, Result<String, String>> {
        let git = self.git.clone();
        async move {
            git.ls_remote_default_branch(&url, &git_credential(credential))
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn probe_write_access(
        &self,
        url: String,
        credential: Option<Credential>,
    ) -> BoxFuture<'static, Result<(), String>> {
        let git = self.git.clone();
        async move {
            git.check_push_access(&url, &git_credential(credential))
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }

    fn url_policy(&self) -> &UrlPolicy {
        &self.url_policy
    }

    fn max_repair_iterations(&self) -> u32 {
        self.max_repair_iterations
    }

    fn artifacts_dir(&self, id: FeatureId) -> PathBuf {
        self.worker.artifacts_dir(id)
    }
}

const NO_LLM: &str = "no LLM is configured: set BAML_CLIENT_PROVIDER (openai, anthropic or openai-generic), \
BAML_CLIENT_MODEL and BAML_CLIENT_API_KEY (or BAML_CLIENT_BASE_URL for an OpenAI-compatible server such as Ollama or vLLM), \
then restart builder";

pub async fn serve(config: Config) -> Result<()> {
    // Private from the first start whatever the umask, and tightened if an older version
    // left it open: it holds the database, the credential key and every feature's artifacts.
    for dir in [config.data_dir.clone(), config.data_dir.join("artifacts")] {
        builder_store::private_fs::ensure_private_dir(&dir)
            .with_context(|| format!("preparing BUILDER_DATA_DIR {}", config.data_dir.display()))?;
    }
    std::fs::create_dir_all(&config.workspace_base).with_context(|| {
        format!(
            "creating GIT_WORKSPACE_BASE_PATH {}",
            config.workspace_base.display()
        )
    })?;

    let store = builder_store::open_with_settings(
        config.database_url.as_deref(),
        &config.data_dir,
        config.migrate,
        builder_store::StoreSettings {
            acquire_timeout: config.database_acquire_timeout,
            ..Default::default()
        },
    )
    .await
    .context("opening the store (DATABASE_URL / BUILDER_DATA_DIR)")?;
    let backend_name = if config
        .database_url
        .as_deref()
        .is_some_and(|u| u.starts_with("postgres"))
    {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    tracing::info!(store = backend_name, data_dir = %config.data_dir.display(), "store ready");

    // builder itself is the program that applies Landlock and bridges the egress proxy
    // inside each sandbox (its hidden `__sandbox-helper` subcommand).
    let helper =
        std::env::current_exe().context("locating the builder executable (the sandbox helper)")?;
    let options = builder_sandbox::RuntimeOptions {
        helper: Some(
            builder_sandbox::HelperProgram::new(helper).with_args_prefix([crate::SANDBOX_HELPER]),
        ),
        egress_allow: config.egress_allow.clone(),
        // Landlock filters TCP by port only, so it cannot allow "loopback only": the empty
        // network namespace already confines TCP, and tests that start a local server
        // (httptest, supertest, 127.0.0.1:0) keep working.
        landlock_tcp: builder_sandbox::LandlockTcp::Namespace,
    };
    let sandbox: Arc<dyn builder_sandbox::SandboxRuntime> = Arc::from(
        builder_sandbox::runtime_with_options(&config.sandbox_runtime, &options).with_context(
            || {
                format!(
                    "SANDBOX_RUNTIME={:?} cannot be used (SANDBOX_NETWORK_EGRESS_WHITELIST: {} host(s))",
                    config.sandbox_runtime,
                    config.egress_allow.len()
                )
            },
        )?,
    );
    if !config.egress_allow.is_empty() {
        tracing::info!(
            allow = ?config.egress_allow.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            "sandbox egress: only these hosts, through builder's proxy; every refusal is recorded"
        );
    }
    if config.sandbox_runtime == "process" {
        tracing::warn!(
            "SANDBOX_RUNTIME=process: builds and tests run WITHOUT ISOLATION on this host"
        );
    }
    let memory = config
        .sandbox_memory_mb
        .map(|m| format!("{m} MB"))
        .unwrap_or_else(|| "none".into());
    let cpu = config
        .sandbox_cpu
        .map(|c| format!("{c} cores"))
        .unwrap_or_else(|| "none".into());
    tracing::info!(
        runtime = sandbox.name(),
        timeout_s = config.sandbox_timeout.as_secs(),
        memory = %memory,
        cpu = %cpu,
        in_force = %builder_sandbox::describe_limits(),
        "sandbox ready"
    );

    let replay = std::env::var("BUILDER_LLM_REPLAY")
        .ok()
        .filter(|v| !v.trim().is_empty());
    // `/ready` asks the sidecar too, when there is one.
    let mut ready_checks: Vec<Arc<dyn ReadinessCheck>> = Vec::new();
    let llm = if let Some(path) = replay {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("BUILDER_LLM_REPLAY={path}: cannot read it"))?;
        let replay = builder_llm::Replay::from_jsonl(&text)
            .with_context(|| format!("BUILDER_LLM_REPLAY={path}"))?;
        tracing::warn!(transcript = %path, "LLM REPLAY: answers come from the transcript; no model is asked");
        Llm::Replay(Arc::new(replay))
    } else {
        let llm_config = builder_llm::LlmConfig::from_env()
            .context("reading the LLM settings (BAML_CLIENT_*, BUILDER_LLM_CONFIG)")?;
        match llm_config
            .profiles
            .get(builder_llm::DEFAULT_PROFILE)
            .cloned()
        {
            Some(settings) => {
                let baml_src = config.baml_src.clone().unwrap_or_else(default_baml_src);
                let sidecar = builder_llm::Sidecar::start(builder_llm::SidecarConfig {
                    baml_cli: config.baml_cli.clone(),
                    baml_src: baml_src.clone(),
                    startup_timeout: std::time::Duration::from_secs(60),
                    call_timeout: std::time::Duration::from_secs(300),
                })
                .await
                .with_context(|| {
                    format!(
                        "starting the BAML sidecar ({} serve --from {})",
                        config.baml_cli.display(),
                        baml_src.display()
                    )
                })?;
                tracing::info!(
                    provider = %settings.provider,
                    model = %settings.model,
                    profiles = ?llm_config.profiles.keys().collect::<Vec<_>>(),
                    fallback = ?llm_config.fallback,
                    priced_models = !llm_config.prices.is_empty(),
                    "LLM ready (BAML sidecar, metered)"
                );
                let sidecar = Arc::new(sidecar);
                ready_checks.push(Arc::new(SidecarReady(sidecar.clone())));
                Llm::Ready {
                    sidecar,
                    config: Arc::new(llm_config),
                }
            }
            None => {
                tracing::warn!("{NO_LLM}; features will fail at analysis until then");
                Llm::Unavailable(NO_LLM.to_string())
            }
        }
    };

    let mut git = Git::new(
        GitConfig {
            clone_timeout: config.clone_timeout,
            op_timeout: config.op_timeout,
            author_name: "builder".into(),
            author_email: "builder@localhost".into(),
        },
        &config.data_dir.join("git"),
    )
    .context("preparing git")?;
    // One private CA file serves both of builder's TLS clients: git's https and the forge
    // APIs. Each adds it to the platform's roots; neither ever turns verification off.
    if let Some(ca) = &config.extra_ca_file {
        git = git
            .with_extra_ca_file(ca)
            .with_context(|| format!("BUILDER_EXTRA_CA_FILE={}", ca.display()))?;
        let roots = builder_forge::ExtraRoots::from_pem_file(ca)
            .with_context(|| format!("BUILDER_EXTRA_CA_FILE={}", ca.display()))?;
        builder_forge::install_extra_roots(roots).context("BUILDER_EXTRA_CA_FILE")?;
        tracing::info!(file = %ca.display(), "trusting the extra CA file for git and forge APIs");
    }
    let git = Arc::new(git);
    let registries = builder_worker::RegistryHosts::discover(config.deps_egress_allow.clone());
    for (ecosystem, hosts) in &registries.by_ecosystem {
        let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
        tracing::info!(ecosystem, hosts = %hosts.join(","), "dependency phase registries");
    }
    for note in &registries.notes {
        tracing::info!("dependency phase: {note}");
    }
    let worker = Worker::new(
        store.clone(),
        git.clone(),
        llm,
        sandbox,
        WorkerConfig {
            workspace_base: config.workspace_base.clone(),
            artifacts_base: config.data_dir.join("artifacts"),
            mirror_root: config.data_dir.join("mirrors"),
            sandbox_timeout: config.sandbox_timeout,
            sandbox_memory_mb: config.sandbox_memory_mb,
            sandbox_cpu: config.sandbox_cpu,
            max_output_bytes: 4 * 1024 * 1024,
            context_max_tokens: config.context_max_tokens,
            keep_workspaces: config.keep_workspaces,
            cache_base: config.data_dir.join("cache"),
            baseline_mode: config.baseline_mode,
            registries,
            llm_stream: config.llm_stream,
            max_concurrent_sandboxes: config.max_concurrent_sandboxes,
            max_concurrent_llm_calls: config.max_concurrent_llm_calls,
            step_timeout: config.step_timeout,
            // Unset: a repository may use every global slot.
            max_sandboxes_per_repository: config
                .max_sandboxes_per_repository
                .min(config.max_concurrent_sandboxes),
            max_llm_calls_per_repository: config
                .max_llm_calls_per_repository
                .min(config.max_concurrent_llm_calls),
        },
    );
    let handler: Handler = {
        let worker = worker.clone();
        Arc::new(move |id| worker.clone().drive(id).boxed())
    };
    let bus =
        EmbeddedBus::start(config.partition_count, handler).context("EVENT_BUS_PARTITION_COUNT")?;
    ready_checks.push(Arc::new(BusReady(bus.clone())));

    // Nothing is lost when a process dies: every unfinished feature is picked up again.
    let pending = store
        .non_terminal_features()
        .await
        .context("listing unfinished features")?;
    for id in &pending {
        bus.publish(*id)
            .context("re-enqueueing unfinished features")?;
    }
    if !pending.is_empty() {
        tracing::info!(count = pending.len(), "resumed unfinished features");
    }
    tokio::spawn(resume_after_outages(store.clone(), bus.clone()));

    // A repository URL into builder's own state would let features push into its mirrors,
    // read its keys or write other features' working copies.
    let protected_roots = vec![
        config.data_dir.clone(),
        config.workspace_base.clone(),
        config.data_dir.join("mirrors"),
        config.data_dir.join("cache"),
        config.data_dir.join("keys"),
    ];
    if let Some(allow) = &config.repository_url_allow {
        tracing::info!(
            ?allow,
            "repository URLs restricted by BUILDER_REPOSITORY_URL_ALLOW"
        );
    }
    let backend: Arc<dyn Backend> = Arc::new(ServeBackend {
        store,
        bus,
        worker,
        git,
        url_policy: UrlPolicy::new(protected_roots, config.repository_url_allow.clone()),
        max_repair_iterations: config.max_repair_iterations,
    });
    let app = builder_api::router_with_checks(backend, ready_checks);
    let host = std::env::var("SERVICE_HOST").unwrap_or_else(|_| "127.0.0.1".into());
    let listener = tokio::net::TcpListener::bind((host.as_str(), config.service_port))
        .await
        .with_context(|| {
            format!(
                "binding {host}:{} (SERVICE_HOST/SERVICE_PORT)",
                config.service_port
            )
        })?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        "builder is serving Connect, gRPC and gRPC-Web; GET /health for liveness, GET /ready for readiness"
    );
    println!("builder listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving")?;
    tracing::info!("shut down");
    Ok(())
}

/// How often the store is pinged to notice the end of an outage.
const OUTAGE_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// A run that cannot read or write the store during an outage ends with its feature
/// unfinished, and nothing would pick it up again before the next start. Once the store
/// answers after failing, every unfinished feature goes to the bus again, as at start-up
/// (the bus carries work, not truth: a feature that was fine just runs `next_step`). The
/// pings also probe the store's open circuit when no request or `/ready` probe does.
async fn resume_after_outages(store: Arc<dyn Store>, bus: Arc<EmbeddedBus>) {
    let mut tick = tokio::time::interval(OUTAGE_PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut outage = false;
    loop {
        tick.tick().await;
        match store.ping().await {
            Err(_) => outage = true,
            Ok(()) if outage => {
                let Ok(pending) = store.non_terminal_features().await else {
                    continue;
                };
                for id in &pending {
                    if bus.publish(*id).is_err() {
                        return;
                    }
                }
                tracing::info!(
                    count = pending.len(),
                    "the store answers again: resumed unfinished features"
                );
                outage = false;
            }
            Ok(()) => {}
        }
    }
}

/// `/ready`: the embedded bus still has its consumers.
struct BusReady(Arc<EmbeddedBus>);

impl ReadinessCheck for BusReady {
    fn name(&self) -> &'static str {
        "bus"
    }

    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        let running = self.0.is_running();
        async move {
            if running {
                Ok(())
            } else {
                Err("the embedded work bus has stopped consuming; restart builder".to_string())
            }
        }
        .boxed()
    }
}

/// `/ready`: the BAML sidecar is up and accepts connections. While it restarts, features
/// wait for it rather than fail, but new work would only queue.
struct SidecarReady(Arc<builder_llm::Sidecar>);

impl ReadinessCheck for SidecarReady {
    fn name(&self) -> &'static str {
        "baml sidecar"
    }

    fn check(&self) -> BoxFuture<'static, Result<(), String>> {
        let url = self.0.url();
        async move {
            let url = url.ok_or_else(|| "not running (starting or restarting)".to_string())?;
            let authority = url
                .split_once("://")
                .map_or(url.as_str(), |(_, rest)| rest)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_string();
            tokio::net::TcpStream::connect(&authority)
                .await
                .map(drop)
                .map_err(|e| format!("{authority} does not accept connections: {e}"))
        }
        .boxed()
    }
}

/// Running from a checkout (`cargo run`): the repository's own `baml_src/`.
fn default_baml_src() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../baml_src"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
