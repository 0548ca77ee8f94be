//! The builder server the eval runs its features on: this same binary's `serve`, on a
//! fresh data directory and a free loopback port, with the scripted model as its LLM and
//! the sandbox settings the user's environment gives.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("builder serve exited before it was healthy ({status}); its log ({}) ends:\n{tail}", log.display())]
    Exited {
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("builder serve was not healthy within {secs} s; its log ({}) ends:\n{tail}", log.display())]
    NotHealthy {
        secs: u64,
        log: PathBuf,
        tail: String,
    },
}

/// Not a secret: the scripted model accepts any key, and a user's real key must never be
/// sent to it.
const SCRIPTED_KEY: &str = "builder-eval-scripted-model";

/// Settings that would point the eval's server at the user's own store, port, model or
/// replay instead of the eval's; everything else (sandbox runtime, limits, egress,
/// concurrency, baseline mode, repair iterations) is the user's to choose.
const NOT_INHERITED: &[&str] = &[
    "BUILDER_DATA_DIR",
    "DATABASE_URL",
    "DO_DATABASE_MIGRATE",
    "SERVICE_PORT",
    "SERVICE_HOST",
    "GIT_WORKSPACE_BASE_PATH",
    "EVENT_BUS_BROKERS",
    "BUILDER_LLM_CONFIG",
    "BUILDER_LLM_REPLAY",
    "BUILDER_SERVER",
];

pub struct Builder {
    child: tokio::process::Child,
    pub url: String,
    pub log: PathBuf,
}

fn free_port() -> Result<u16, ServerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|source| ServerError::Io {
            what: "finding a free loopback port".into(),
            source,
        })
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Builder {
    /// Starts `exe serve` with its data under `work` and waits until `/health` answers.
    pub async fn start(
        exe: &Path,
        work: &Path,
        llm_base_url: &str,
    ) -> Result<Builder, ServerError> {
        let data = work.join("builder-data");
        std::fs::create_dir_all(&data).map_err(|source| ServerError::Io {
            what: format!("creating {}", data.display()),
            source,
        })?;
        let log = work.join("builder-serve.log");
        let file = std::fs::File::create(&log).map_err(|source| ServerError::Io {
            what: format!("creating {}", log.display()),
            source,
        })?;
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve");
        for var in NOT_INHERITED {
            cmd.env_remove(var);
        }
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("BAML_CLIENT_") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("BUILDER_DATA_DIR", &data)
            .env("SERVICE_HOST", "127.0.0.1")
            .env("SERVICE_PORT", port.to_string())
            .env("BAML_CLIENT_PROVIDER", "openai")
            .env("BAML_CLIENT_MODEL", "scripted-model")
            .env("BAML_CLIENT_API_KEY", SCRIPTED_KEY)
            .env("BAML_CLIENT_BASE_URL", llm_base_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| ServerError::Io {
            what: format!("starting {} serve", exe.display()),
            source,
        })?;
        let mut builder = Builder {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        };
        builder.wait_healthy(Duration::from_secs(180)).await?;
        Ok(builder)
    }

    async fn wait_healthy(&mut self, within: Duration) -> Result<(), ServerError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| ServerError::Io {
                what: "building an HTTP client".into(),
                source: std::io::Error::other(e),
            })?;
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::Exited {
                    status: status.to_string(),
                    log: self.log.clone(),
                    tail: tail(&self.log, 30),
                });
            }
            if let Ok(r) = http.get(format!("{}/health", self.url)).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ServerError::NotHealthy {
                    secs: within.as_secs(),
                    log: self.log.clone(),
                    tail: tail(&self.log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM (the server shuts down gracefully and its BAML sidecar with it), then
    /// SIGKILL after a grace period.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            // SAFETY: a signal to the child this struct spawned and still owns.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}
