//! Runs one `git` process in a locked-down environment, with a time limit and cleanup of
//! everything it spawned.

use crate::GitError;
use crate::credential::redact_owned;
use crate::error::{FailureContext, classify};
use std::ffi::OsString;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

/// Config passed on the command line of every invocation. Command-line config beats the
/// repository's own `.git/config`, so a tampered working copy cannot switch these back on.
const HARDENING: &[&str] = &[
    "core.hooksPath=/dev/null",
    "credential.helper=",
    "protocol.allow=never",
    "protocol.file.allow=always",
    "protocol.http.allow=always",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    "protocol.ext.allow=never",
    // Certificate checks stay on whatever a repository's config or the operator's
    // environment (GIT_SSL_NO_VERIFY is never passed through) might say.
    "http.sslVerify=true",
    "core.fsmonitor=false",
    "transfer.fsckObjects=true",
    "submodule.recurse=false",
    "commit.gpgSign=false",
    "tag.gpgSign=false",
    // Background `gc --auto` would detach from us and outlive every timeout.
    "gc.auto=0",
    "maintenance.auto=false",
    "advice.detachedHead=false",
];

/// Environment variables passed through from our own process: proxies and TLS trust are
/// the operator's to set; nothing else (GIT_DIR, GIT_TRACE*, SSH_AUTH_SOCK …) leaks in.
const PASS_THROUGH: &[&str] = &[
    "PATH",
    "TMPDIR",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "GIT_SSL_CAINFO",
    "GIT_SSL_CAPATH",
];

pub(crate) struct Invocation<'a> {
    pub op: &'a str,
    pub args: Vec<OsString>,
    /// The process's working directory; git never searches above it for a repository.
    pub cwd: &'a Path,
    /// HOME for git and its helpers: the private directory, so no `~/.netrc` or other
    /// dotfile (ours or a working copy's) is ever read.
    pub home: &'a Path,
    pub timeout: Duration,
    pub env: Vec<(&'static str, OsString)>,
    /// Strings to redact from anything git prints (credential secrets in all their forms).
    pub secrets: &'a [String],
    pub failure: FailureContext<'a>,
}

pub(crate) struct Output {
    pub stdout: Vec<u8>,
}

pub(crate) struct RawOutput {
    pub status: Option<i32>,
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr_redacted: String,
}

/// Runs the invocation; a non-zero exit becomes a classified error.
pub(crate) async fn run(inv: Invocation<'_>) -> Result<Output, GitError> {
    let op = inv.op.to_owned();
    let secrets = inv.secrets;
    let failure = inv.failure;
    let raw = run_raw(inv).await?;
    if raw.success {
        return Ok(Output { stdout: raw.stdout });
    }
    // Push rejections are reported on stdout with --porcelain; classify both streams.
    let stdout = redact_owned(&String::from_utf8_lossy(&raw.stdout), secrets);
    let text = if stdout.trim().is_empty() {
        raw.stderr_redacted
    } else {
        format!("{}\n{}", raw.stderr_redacted, stdout.trim())
    };
    tracing::debug!(op = %op, status = ?raw.status, "git failed");
    Err(classify(&failure, raw.status, &text))
}

/// Runs the invocation and returns its exit status and output whatever the status.
pub(crate) async fn run_raw(inv: Invocation<'_>) -> Result<RawOutput, GitError> {
    let mut cmd = Command::new("git");
    cmd.env_clear();
    for name in PASS_THROUGH {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
    }
    cmd.env("HOME", inv.home)
        .env("LC_ALL", "C")
        .env("LANG", "C")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env(
            "GIT_CEILING_DIRECTORIES",
            inv.cwd.parent().unwrap_or(inv.cwd),
        )
        .envs(inv.env.iter().map(|(k, v)| (k, v)))
        .arg("--no-pager");
    for setting in HARDENING {
        cmd.arg("-c").arg(setting);
    }
    cmd.args(&inv.args)
        .current_dir(inv.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Own process group, so a timeout can kill git's helpers (remote-https, ssh,
        // index-pack) too, not just the git process itself.
        .process_group(0);

    tracing::debug!(op = inv.op, "running git");
    let mut child = cmd
        .spawn()
        .map_err(GitError::io(format!("spawning git for {}", inv.op)))?;
    let (Some(mut stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(GitError::Io {
            op: format!("git {}", inv.op),
            source: std::io::Error::other("child started without pipes"),
        });
    };
    // Declared after `child`, so on cancellation it drops (and kills the group) while the
    // child is still unreaped and its pid cannot have been recycled.
    let mut group = GroupKiller(child.id());
    let mut out = Vec::new();
    let mut err = Vec::new();
    let finished = tokio::time::timeout(inv.timeout, async {
        let (o, e, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        o.and(e).and(status)
    })
    .await;
    let status = match finished {
        Err(_elapsed) => {
            drop(group);
            return Err(GitError::Timeout {
                op: inv.op.to_owned(),
                after: inv.timeout,
            });
        }
        Ok(result) => result.map_err(GitError::io(format!("waiting for git {}", inv.op)))?,
    };
    group.disarm();
    Ok(RawOutput {
        status: status.code(),
        success: status.success(),
        stdout: out,
        stderr_redacted: redact_owned(&String::from_utf8_lossy(&err), inv.secrets),
    })
}

/// Kills a child's whole process group unless disarmed — on timeout, and also when the
/// caller drops the future mid-operation (cancellation).
struct GroupKiller(Option<u32>);

impl GroupKiller {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        if let Some(pid) = self.0.take()
            && let Ok(pgid) = libc::pid_t::try_from(pid)
        {
            // SAFETY: killpg only sends a signal. The group id is the pid of our own child,
            // which leads the group (process_group(0)) and is not reaped before this runs,
            // so the id cannot have been recycled for an unrelated group.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}
