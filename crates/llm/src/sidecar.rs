//! The supervised `baml-cli serve` process: started on a free loopback port with a fresh
//! password, restarted when it exits, holding no provider secret.

use crate::error::LlmError;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How to run the sidecar.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The `baml-cli` executable (PyPI `baml-py==0.226.3`); a bare name is looked up on PATH.
    pub baml_cli: PathBuf,
    /// The `baml_src/` directory with the function definitions.
    pub baml_src: PathBuf,
    /// How long one start may take before it counts as failed; also how long a call waits
    /// for a restarting sidecar.
    pub startup_timeout: Duration,
    /// Upper bound for one HTTP call to the sidecar (one model answer).
    pub call_timeout: Duration,
}

impl SidecarConfig {
    pub fn new(baml_src: impl Into<PathBuf>) -> SidecarConfig {
        SidecarConfig {
            baml_cli: PathBuf::from("baml-cli"),
            baml_src: baml_src.into(),
            startup_timeout: Duration::from_secs(30),
            call_timeout: Duration::from_secs(300),
        }
    }
}

/// Variables the sidecar may inherit. Everything else — provider keys, database URLs,
/// Vault tokens — stays out of its environment: it is given per request what it needs.
const INHERITED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYENV_ROOT",
    "PYENV_VERSION",
    "VIRTUAL_ENV",
    "PYTHONHOME",
    "PYTHONPATH",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// BAML's own log level for the sidecar, whatever builder's environment says. At `info`
/// and below BAML prints every call's prompt and raw answer — repository content — to its
/// stdout; at `warn` it prints only failed calls (still with their prompt, which
/// `forward_output` withholds).
const BAML_LOG_LEVEL: &str = "warn";

/// Where a running sidecar answers; changes on every (re)start.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub base_url: String,
    /// Sent as `x-baml-api-key`; `baml-cli serve` rejects requests without it (403).
    pub password: String,
    pub generation: u64,
    pub pid: Option<u32>,
}

#[derive(Clone)]
pub(crate) enum Phase {
    Starting,
    Ready(Endpoint),
    Stopped(String),
}

pub(crate) struct Shared {
    pub phase: watch::Sender<Phase>,
    pub http: reqwest::Client,
    pub config: SidecarConfig,
    /// Every provider request of the sidecar goes through it (usage, budgets).
    pub meter: crate::meter::Meter,
}

impl Shared {
    /// The current endpoint once it differs from `not`, the generation a caller just saw
    /// fail; waits up to the startup timeout for a restart.
    pub async fn endpoint(&self, not: Option<u64>) -> Result<Endpoint, LlmError> {
        let mut rx = self.phase.subscribe();
        let wait = async {
            loop {
                match &*rx.borrow_and_update() {
                    Phase::Ready(ep) if Some(ep.generation) != not => return Ok(ep.clone()),
                    Phase::Stopped(why) => {
                        return Err(LlmError::Sidecar {
                            message: format!("not running: {why}"),
                        });
                    }
                    Phase::Ready(_) | Phase::Starting => {}
                }
                if rx.changed().await.is_err() {
                    return Err(LlmError::Sidecar {
                        message: "its supervisor is gone".into(),
                    });
                }
            }
        };
        match tokio::time::timeout(self.config.startup_timeout, wait).await {
            Ok(result) => result,
            Err(_) => Err(LlmError::Sidecar {
                message: format!(
                    "not ready within {:?} (restarting or failing to start)",
                    self.config.startup_timeout
                ),
            }),
        }
    }
}

/// A supervised `baml-cli serve`. Dropping it kills the process; [`Sidecar::shutdown`]
/// does so and waits.
pub struct Sidecar {
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Sidecar {
    /// Starts the sidecar and waits until it answers. Fails if the first start fails, so a
    /// missing `baml-cli` or a broken `baml_src/` shows at once; later exits are restarts.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar, LlmError> {
        let baml_src = config.baml_src.canonicalize().map_err(|e| {
            LlmError::Config(format!(
                "baml_src directory {}: {e}",
                config.baml_src.display()
            ))
        })?;
        if !baml_src.is_dir() {
            return Err(LlmError::Config(format!(
                "baml_src {} is not a directory",
                baml_src.display()
            )));
        }
        let config = SidecarConfig { baml_src, ..config };
        // baml-cli reads a `.env` from its working directory even without --dotenv; an
        // empty directory of our own keeps stray files from configuring it.
        let workdir = tempfile::Builder::new()
            .prefix("baml-sidecar-")
            .tempdir()
            .map_err(|e| LlmError::Sidecar {
                message: format!("creating its working directory: {e}"),
            })?;
        let http =
            reqwest::Client::builder()
                .no_proxy()
                .build()
                .map_err(|e| LlmError::Sidecar {
                    message: format!("building the HTTP client: {e}"),
                })?;
        let meter = crate::meter::Meter::start(config.call_timeout)
            .await
            .map_err(|e| LlmError::Sidecar {
                message: format!("starting the metering proxy: {e}"),
            })?;
        let (phase, _) = watch::channel(Phase::Starting);
        let shared = Arc::new(Shared {
            phase,
            http,
            config,
            meter,
        });
        // A start can lose the race for its port (see `free_port`); try a few ports before
        // calling the sidecar broken. Configuration errors do not improve with retries.
        let mut tries = 0;
        let (child, endpoint) = loop {
            tries += 1;
            match launch(&shared, workdir.path(), 1).await {
                Ok(started) => break started,
                Err(e @ LlmError::Sidecar { .. }) if tries < 3 => {
                    tracing::warn!(error = %e, "baml-cli sidecar start failed; trying again");
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(
            url = %endpoint.base_url,
            pid = ?endpoint.pid,
            "baml-cli sidecar ready"
        );
        shared.phase.send_replace(Phase::Ready(endpoint));
        let (stop_tx, stop_rx) = oneshot::channel();
        let supervisor = tokio::spawn(supervise(shared.clone(), workdir, child, stop_rx));
        Ok(Sidecar {
            shared,
            supervisor: Some(supervisor),
            stop: Some(stop_tx),
        })
    }

    /// A client that calls the four functions with `settings`.
    pub fn client(&self, settings: crate::LlmSettings) -> crate::LlmClient {
        crate::LlmClient::new(self.shared.clone(), vec![settings])
    }

    /// A client that asks `chain[0]` and, once its transient retries are spent, each next
    /// one in turn (see [`crate::LlmConfig::chain`]). An empty chain is a configuration
    /// error at the first call.
    pub fn client_chain(&self, chain: Vec<crate::LlmSettings>) -> crate::LlmClient {
        crate::LlmClient::new(self.shared.clone(), chain)
    }

    /// The sidecar's loopback URL right now, if it is up.
    pub fn url(&self) -> Option<String> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(ep) => Some(ep.base_url.clone()),
            _ => None,
        }
    }

    /// The process id of the running `baml-cli`, if it is up.
    pub fn pid(&self) -> Option<u32> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(ep) => ep.pid,
            _ => None,
        }
    }

    /// How many times it has been started (1 until the first restart).
    pub fn generation(&self) -> Option<u64> {
        match &*self.shared.phase.borrow() {
            Phase::Ready(ep) => Some(ep.generation),
            _ => None,
        }
    }

    /// Waits until the sidecar is up again after a restart; for callers that want to wait
    /// before issuing calls (calls themselves already wait).
    pub async fn wait_ready(&self) -> Result<(), LlmError> {
        self.shared.endpoint(None).await.map(|_| ())
    }

    /// Stops the process and waits for it to exit.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(supervisor) = self.supervisor.take() {
            let _ = supervisor.await;
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(supervisor) = self.supervisor.take() {
            // Aborting drops the supervisor's `Child`, whose kill_on_drop ends the process.
            supervisor.abort();
            self.shared
                .phase
                .send_replace(Phase::Stopped("the sidecar was dropped".into()));
        }
    }
}

async fn supervise(
    shared: Arc<Shared>,
    workdir: tempfile::TempDir,
    mut child: Child,
    mut stop: oneshot::Receiver<()>,
) {
    let mut generation = 1;
    let mut started = Instant::now();
    let mut backoff = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = &mut stop => {
                stop_child(&mut child).await;
                shared.phase.send_replace(Phase::Stopped("shut down".into()));
                return;
            }
            status = child.wait() => {
                tracing::warn!(status = %describe(status), "baml-cli sidecar exited; restarting it");
                shared.phase.send_replace(Phase::Starting);
            }
        }
        // A sidecar that dies right after starting would otherwise restart in a hot loop.
        if started.elapsed() > Duration::from_secs(30) {
            backoff = Duration::from_millis(200);
        }
        loop {
            tokio::select! {
                _ = &mut stop => {
                    shared.phase.send_replace(Phase::Stopped("shut down".into()));
                    return;
                }
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
            generation += 1;
            let attempt = tokio::select! {
                _ = &mut stop => {
                    shared.phase.send_replace(Phase::Stopped("shut down".into()));
                    return;
                }
                attempt = launch(&shared, workdir.path(), generation) => attempt,
            };
            match attempt {
                Ok((new_child, endpoint)) => {
                    tracing::info!(
                        url = %endpoint.base_url,
                        pid = ?endpoint.pid,
                        generation,
                        "baml-cli sidecar restarted"
                    );
                    child = new_child;
                    started = Instant::now();
                    shared.phase.send_replace(Phase::Ready(endpoint));
                    break;
                }
                Err(e) => tracing::error!(error = %e, "restarting the baml-cli sidecar failed"),
            }
        }
    }
}

async fn stop_child(child: &mut Child) {
    if let Err(e) = child.kill().await {
        tracing::warn!(error = %e, "stopping the baml-cli sidecar");
    }
}

fn describe(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Loopback port the OS considers free right now. baml-cli has no "port 0" of its own, so
/// another process could take the port before it binds; the start then fails (the process
/// exits) and is retried with a new port.
fn free_port() -> Result<u16, LlmError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| LlmError::Sidecar {
        message: format!("finding a free port: {e}"),
    })?;
    let port = listener
        .local_addr()
        .map_err(|e| LlmError::Sidecar {
            message: format!("finding a free port: {e}"),
        })?
        .port();
    Ok(port)
}

type Tail = Arc<Mutex<VecDeque<String>>>;

/// How one line of the sidecar's output may reach builder's log.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Forward<'a> {
    /// Before the sidecar answers, nothing of a prompt can have reached it: its output is
    /// about its own start (and a failed start needs it), so it is logged as it is.
    Verbatim(&'a str),
    /// The head of one of BAML's function-call log entries, whose following lines are the
    /// prompt and the model's answer: only the function's name and BAML's level are kept.
    Call { function: &'a str, level: &'a str },
    /// Any other head of a BAML log entry once calls may run: its text could quote a prompt.
    Entry { level: &'a str, bytes: usize },
    /// A continuation or an unstructured line once calls may run.
    Withheld,
}

/// BAML's log heads look like `2026-01-02T03:04:05.678 [BAML WARN] message`.
fn baml_head(line: &str) -> Option<(&str, &str)> {
    let (_, rest) = line.split_once(" [BAML ")?;
    let (level, message) = rest.split_once("] ")?;
    let level_ok = !level.is_empty() && level.chars().all(|c| c.is_ascii_uppercase());
    let stamp_ok = line.starts_with(|c: char| c.is_ascii_digit());
    (level_ok && stamp_ok).then_some((level, message))
}

/// Decides what of `line` builder's log may show; `serving` is whether the sidecar has
/// been handed to callers (after which any line may hold repository content).
pub(crate) fn classify(line: &str, serving: bool) -> Forward<'_> {
    if !serving {
        return Forward::Verbatim(line);
    }
    let Some((level, message)) = baml_head(line) else {
        return Forward::Withheld;
    };
    let function = message
        .strip_prefix("Function ")
        .and_then(|m| m.strip_suffix(':'))
        .filter(|f| !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    match function {
        Some(function) => Forward::Call { function, level },
        None => Forward::Entry {
            level,
            bytes: message.len(),
        },
    }
}

/// Reads one output stream of the sidecar into builder's log, filtered by [`classify`]; the
/// last lines of its start are kept in `tail` for the error a failed start returns.
fn forward_output(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tail: Tail,
    serving: Arc<AtomicBool>,
    pid: Option<u32>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match classify(&line, serving.load(Ordering::Acquire)) {
                Forward::Verbatim(text) => {
                    tracing::debug!(target: "builder_llm::sidecar", pid, "{text}");
                    let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                    if tail.len() == 20 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
                // BAML runs at `warn`, so an entry about a call is a failed call; the
                // error itself reaches the caller through the HTTP answer.
                Forward::Call { function, level } => tracing::info!(
                    target: "builder_llm::sidecar",
                    pid,
                    function,
                    baml_level = level,
                    "the sidecar logged a call (its prompt and answer are not shown)"
                ),
                Forward::Entry { level, bytes } => tracing::debug!(
                    target: "builder_llm::sidecar",
                    pid,
                    baml_level = level,
                    bytes,
                    "the sidecar logged a message (not shown: it may quote a prompt)"
                ),
                Forward::Withheld => {}
            }
        }
    });
}

fn tail_text(tail: &Tail) -> String {
    let tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
    tail.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// Spawns one `baml-cli serve` and waits until it answers its ping.
async fn launch(
    shared: &Shared,
    workdir: &Path,
    generation: u64,
) -> Result<(Child, Endpoint), LlmError> {
    let config = &shared.config;
    let port = free_port()?;
    // The `sk-baml-` prefix is what baml-cli recommends so secret scanners recognise it.
    let password = format!("sk-baml-{}", hex::encode(rand::random::<[u8; 32]>()));
    let mut cmd = Command::new(&config.baml_cli);
    cmd.arg("serve")
        .arg("--from")
        .arg(&config.baml_src)
        .arg("--port")
        .arg(port.to_string())
        .current_dir(workdir)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for name in INHERITED_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    cmd.env("BAML_PASSWORD", &password);
    cmd.env("BAML_LOG", BAML_LOG_LEVEL);
    // Plain lines, whatever the operator's terminal: `classify` reads BAML's log heads (its
    // documentation names the colour setting both ways).
    cmd.env("BAML_LOG_JSON", "0");
    cmd.env("BAML_LOG_COLOR_MODE", "never");
    cmd.env("BAML_LOG_STYLE", "never");
    // kill_on_drop does not run when builder itself is SIGKILLed; the kernel's parent-death
    // signal does, so no orphaned sidecar keeps a port (and its password) open.
    // SAFETY: prctl is async-signal-safe and touches only the forked child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (install it with `pip install baml-py==0.226.3`)"
        } else {
            ""
        };
        LlmError::Config(format!("starting {}: {e}{hint}", config.baml_cli.display()))
    })?;
    let pid = child.id();
    let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
    let serving = Arc::new(AtomicBool::new(false));
    if let Some(out) = child.stdout.take() {
        forward_output(out, tail.clone(), serving.clone(), pid);
    }
    if let Some(err) = child.stderr.take() {
        forward_output(err, tail.clone(), serving.clone(), pid);
    }
    let base_url = format!("http://127.0.0.1:{port}");
    let ping = format!("{base_url}/_debug/ping");
    let deadline = Instant::now() + config.startup_timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(LlmError::Sidecar {
                message: format!(
                    "baml-cli exited during startup ({status}); its last output:\n{}",
                    tail_text(&tail)
                ),
            });
        }
        let answered = shared
            .http
            .get(&ping)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        if let Ok(resp) = answered
            && resp.status().is_success()
            && resp.text().await.is_ok_and(|t| t.starts_with("pong"))
            // Only our own process counts: something else may hold the port.
            && matches!(child.try_wait(), Ok(None))
        {
            if let Err(e) = check_password(&shared.http, &base_url, &password).await {
                stop_child(&mut child).await;
                return Err(e);
            }
            // Set before the endpoint is published, so no line printed after a caller's
            // first request can be taken for a startup line.
            serving.store(true, Ordering::Release);
            return Ok((
                child,
                Endpoint {
                    base_url,
                    password,
                    generation,
                    pid,
                },
            ));
        }
        if Instant::now() >= deadline {
            stop_child(&mut child).await;
            return Err(LlmError::Sidecar {
                message: format!(
                    "baml-cli did not answer on port {port} within {:?}; its last output:\n{}",
                    config.startup_timeout,
                    tail_text(&tail)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Confirms the sidecar accepts our password. baml-cli loads `.env` files from its working
/// directory and every parent, and their values override the environment it was given —
/// including `BAML_PASSWORD`; a sidecar with someone else's password must not be used.
pub(crate) async fn check_password(
    http: &reqwest::Client,
    base_url: &str,
    password: &str,
) -> Result<(), LlmError> {
    // A function that does not exist: past authentication the answer is an error about the
    // name, before it a 403.
    let resp = http
        .post(format!("{base_url}/call/BuilderPasswordCheck"))
        .header("x-baml-api-key", password)
        .json(&serde_json::json!({}))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| LlmError::Sidecar {
            message: format!("checking the sidecar password: {e}"),
        })?;
    if resp.status() == reqwest::StatusCode::FORBIDDEN {
        return Err(LlmError::Sidecar {
            message: "baml-cli rejected the password it was started with; a `.env` file in \
                      its working directory or a parent probably sets BAML_PASSWORD"
                .into(),
        });
    }
    Ok(())
}

#[cfg(test)]
#[path = "sidecar_log_tests.rs"]
mod log_tests;
