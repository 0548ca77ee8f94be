//! Configuration from the environment. Every variable has a working default for the
//! embedded mode or is optional; a bad value stops start-up with a message naming it.

use anyhow::{Context, Result, bail};
use builder_core::repository::{URL_ALLOW_VARIABLE, UrlAllowList};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub service_port: u16,
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    /// DATABASE_ACQUIRE_TIMEOUT_SECONDS: how long a request waits for a PostgreSQL
    /// connection before it is answered "unavailable".
    pub database_acquire_timeout: Duration,
    pub migrate: bool,
    pub partition_count: usize,
    pub workspace_base: PathBuf,
    pub clone_timeout: Duration,
    pub op_timeout: Duration,
    pub sandbox_runtime: String,
    /// SANDBOX_NETWORK_EGRESS_WHITELIST: hosts sandboxed commands may reach through
    /// builder's proxy (empty: no network at all).
    pub egress_allow: Vec<builder_sandbox::HostPattern>,
    /// BUILDER_DEPS_EGRESS_WHITELIST: hosts every dependency phase may reach, beyond the
    /// registries found in this host's package-manager configuration.
    pub deps_egress_allow: Vec<builder_sandbox::HostPattern>,
    pub sandbox_timeout: Duration,
    pub sandbox_memory_mb: Option<u64>,
    pub sandbox_cpu: Option<f32>,
    pub max_repair_iterations: u32,
    pub baml_src: Option<PathBuf>,
    pub baml_cli: PathBuf,
    pub keep_workspaces: bool,
    /// BUILDER_CONTEXT_MAX_TOKENS: estimated tokens of repository content per prompt.
    pub context_max_tokens: u64,
    /// BUILDER_LLM_STREAM: record the model's partial answers as it writes (default on).
    pub llm_stream: bool,
    /// BUILDER_VERIFY_BASELINE: tolerate (default), strict or off.
    pub baseline_mode: builder_worker::BaselineMode,
    pub max_concurrent_sandboxes: usize,
    pub max_concurrent_llm_calls: usize,
    pub max_sandboxes_per_repository: usize,
    pub max_llm_calls_per_repository: usize,
    pub step_timeout: Duration,
    pub log_level: String,
    pub log_json: bool,
    /// PEM CA certificates trusted on top of the platform's roots, for git's https and the
    /// forge APIs (a self-hosted forge behind a private CA).
    pub extra_ca_file: Option<PathBuf>,
    /// BUILDER_REPOSITORY_URL_ALLOW: where repositories may be registered from and probed
    /// (`None`: anywhere but builder's own state).
    pub repository_url_allow: Option<UrlAllowList>,
}

/// A set [`URL_ALLOW_VARIABLE`] must say something: an operator who sets it means to
/// restrict, and a list that parses to nothing would silently allow everything.
fn repository_url_allow() -> Result<Option<UrlAllowList>> {
    let Some(value) = var(URL_ALLOW_VARIABLE) else {
        return Ok(None);
    };
    match UrlAllowList::parse(&value) {
        Ok(Some(list)) => Ok(Some(list)),
        Ok(None) => bail!(
            "{URL_ALLOW_VARIABLE}={value:?} has no entries; unset it to allow every repository URL"
        ),
        Err(e) => bail!("{URL_ALLOW_VARIABLE}: {e}"),
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn parsed<T: std::str::FromStr>(name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match var(name) {
        None => Ok(default),
        Some(v) => v
            .parse::<T>()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is not valid: {e}")),
    }
}

fn boolean(name: &str, default: bool) -> Result<bool> {
    match var(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => bail!("{name}={other:?} is not a boolean (true/false)"),
    }
}

fn positive(name: &str, default: usize) -> Result<usize> {
    let v: usize = parsed(name, default)?;
    if v == 0 {
        bail!("{name} must be at least 1");
    }
    Ok(v)
}

/// `$XDG_DATA_HOME/builder`, else `~/.local/share/builder`.
fn default_data_dir() -> Result<PathBuf> {
    if let Some(xdg) = var("XDG_DATA_HOME") {
        return Ok(PathBuf::from(xdg).join("builder"));
    }
    let home =
        var("HOME").context("neither BUILDER_DATA_DIR nor HOME is set; set BUILDER_DATA_DIR")?;
    Ok(PathBuf::from(home).join(".local/share/builder"))
}

impl Config {
    pub fn from_env() -> Result<Config> {
        let data_dir = match var("BUILDER_DATA_DIR") {
            Some(d) => PathBuf::from(d),
            None => default_data_dir()?,
        };
        if !data_dir.is_absolute() {
            bail!(
                "BUILDER_DATA_DIR must be an absolute path, got {}",
                data_dir.display()
            );
        }
        let database_url = var("DATABASE_URL");
        let embedded = database_url
            .as_deref()
            .is_none_or(|u| u.starts_with("sqlite:"));
        let workspace_base = var("GIT_WORKSPACE_BASE_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| data_dir.join("workspaces"));
        if !workspace_base.is_absolute() {
            bail!("GIT_WORKSPACE_BASE_PATH must be an absolute path");
        }
        let secs = |name: &str, default: u64| -> Result<Duration> {
            let v: u64 = parsed(name, default)?;
            if v == 0 {
                bail!("{name} must be at least 1 second");
            }
            Ok(Duration::from_secs(v))
        };
        let partition_count: usize = parsed("EVENT_BUS_PARTITION_COUNT", 16)?;
        if !(1..=4096).contains(&partition_count) {
            bail!("EVENT_BUS_PARTITION_COUNT must be 1–4096");
        }
        if let Some(brokers) = var("EVENT_BUS_BROKERS") {
            bail!(
                "EVENT_BUS_BROKERS={brokers:?}: the Kafka and NATS JetStream buses are not built yet; unset it to use the embedded bus"
            );
        }
        let sandbox_memory_mb = match var("SANDBOX_MEMORY_LIMIT_MB") {
            None => None,
            Some(v) => Some(
                v.parse::<u64>()
                    .map_err(|e| anyhow::anyhow!("SANDBOX_MEMORY_LIMIT_MB={v:?}: {e}"))?,
            ),
        };
        let sandbox_cpu = match var("SANDBOX_CPU_LIMIT") {
            None => None,
            Some(v) => Some(
                v.parse::<f32>()
                    .map_err(|e| anyhow::anyhow!("SANDBOX_CPU_LIMIT={v:?}: {e}"))?,
            ),
        };
        let extra_ca_file = var("BUILDER_EXTRA_CA_FILE").map(PathBuf::from);
        if let Some(path) = &extra_ca_file
            && !path.is_file()
        {
            bail!(
                "BUILDER_EXTRA_CA_FILE={} is not a readable file (PEM CA certificates)",
                path.display()
            );
        }
        let log_format = var("LOG_FORMAT").unwrap_or_else(|| "text".into());
        let log_json = match log_format.as_str() {
            "json" => true,
            "text" | "pretty" => false,
            other => bail!("LOG_FORMAT={other:?} must be json or text"),
        };
        Ok(Config {
            service_port: parsed("SERVICE_PORT", 8080)?,
            data_dir,
            database_url,
            database_acquire_timeout: secs(
                "DATABASE_ACQUIRE_TIMEOUT_SECONDS",
                builder_store::StoreSettings::DEFAULT_ACQUIRE_TIMEOUT.as_secs(),
            )?,
            migrate: boolean("DO_DATABASE_MIGRATE", embedded)?,
            partition_count,
            workspace_base,
            clone_timeout: secs("GIT_CLONE_TIMEOUT_SECONDS", 600)?,
            op_timeout: secs("GIT_OPERATION_TIMEOUT_SECONDS", 120)?,
            sandbox_runtime: var("SANDBOX_RUNTIME").unwrap_or_else(|| "bwrap".into()),
            egress_allow: builder_sandbox::parse_allow_list(
                &var("SANDBOX_NETWORK_EGRESS_WHITELIST").unwrap_or_default(),
            )
            .context("SANDBOX_NETWORK_EGRESS_WHITELIST")?,
            deps_egress_allow: builder_sandbox::parse_allow_list(
                &var("BUILDER_DEPS_EGRESS_WHITELIST").unwrap_or_default(),
            )
            .context("BUILDER_DEPS_EGRESS_WHITELIST")?,
            sandbox_timeout: secs("SANDBOX_TIMEOUT_SECONDS", 600)?,
            sandbox_memory_mb,
            sandbox_cpu,
            max_repair_iterations: parsed("BUILDER_MAX_REPAIR_ITERATIONS", 3)?,
            baml_src: var("BUILDER_BAML_SRC").map(PathBuf::from),
            baml_cli: var("BUILDER_BAML_CLI")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("baml-cli")),
            keep_workspaces: boolean("BUILDER_KEEP_WORKSPACES", false)?,
            llm_stream: boolean("BUILDER_LLM_STREAM", true)?,
            context_max_tokens: positive("BUILDER_CONTEXT_MAX_TOKENS", 24_000)? as u64,
            baseline_mode: var("BUILDER_VERIFY_BASELINE")
                .unwrap_or_default()
                .parse()
                .map_err(anyhow::Error::msg)?,
            max_concurrent_sandboxes: positive("BUILDER_MAX_CONCURRENT_SANDBOXES", 2)?,
            max_concurrent_llm_calls: positive("BUILDER_MAX_CONCURRENT_LLM_CALLS", 16)?,
            step_timeout: secs("BUILDER_STEP_TIMEOUT_SECONDS", 1800)?,
            max_sandboxes_per_repository: positive(
                "BUILDER_MAX_SANDBOXES_PER_REPOSITORY",
                usize::MAX,
            )?,
            max_llm_calls_per_repository: positive(
                "BUILDER_MAX_LLM_CALLS_PER_REPOSITORY",
                usize::MAX,
            )?,
            log_level: var("LOG_LEVEL").unwrap_or_else(|| "info".into()),
            log_json,
            extra_ca_file,
            repository_url_allow: repository_url_allow()?,
        })
    }
}
