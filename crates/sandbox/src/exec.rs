//! Spawning and supervising one command: combined output through one pipe, read
//! incrementally into a tail buffer, a wall-clock deadline, and a process-group kill on
//! timeout, on completion (stragglers) and when the future is dropped.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Once;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

use crate::cgroup::{Cgroups, Requested, RunCgroup, join_in_pre_exec};
use crate::disk::{DiskWatch, poll_interval};
use crate::{CommandSpec, ExecOutcome, SandboxError};

/// After the command exits, how long to wait for the output pipe to close. Only a process
/// that escaped the process group (possible without isolation) can hold it open longer.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Paths of a validated spec, canonicalised so that binds and cwd agree.
pub(crate) struct CheckedSpec {
    pub workdir: PathBuf,
    pub writable_extra: Vec<PathBuf>,
    pub readonly_extra: Vec<PathBuf>,
}

pub(crate) fn check_spec(spec: &CommandSpec) -> Result<CheckedSpec, SandboxError> {
    let dir = |p: &Path, what: &str| -> Result<PathBuf, SandboxError> {
        if !p.is_absolute() {
            return Err(SandboxError::InvalidSpec(format!(
                "{what} `{}` is not an absolute path",
                p.display()
            )));
        }
        let c = p
            .canonicalize()
            .map_err(|e| SandboxError::InvalidSpec(format!("{what} `{}`: {e}", p.display())))?;
        if !c.is_dir() {
            return Err(SandboxError::InvalidSpec(format!(
                "{what} `{}` is not a directory",
                p.display()
            )));
        }
        // Binding `/` read-write would undo every other mount.
        if c.parent().is_none() {
            return Err(SandboxError::InvalidSpec(format!(
                "{what} must not be the root directory"
            )));
        }
        Ok(c)
    };
    let workdir = dir(&spec.workdir, "workdir")?;
    let writable_extra = spec
        .writable_extra
        .iter()
        .map(|p| dir(p, "writable_extra"))
        .collect::<Result<Vec<_>, _>>()?;
    let readonly_extra = spec
        .readonly_extra
        .iter()
        .map(|p| dir(p, "readonly_extra"))
        .collect::<Result<Vec<_>, _>>()?;
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(SandboxError::InvalidSpec(format!(
                "environment variable name `{k}` or its value is not valid"
            )));
        }
    }
    if spec.command.contains('\0') {
        return Err(SandboxError::InvalidSpec(
            "command contains a NUL byte".into(),
        ));
    }
    Ok(CheckedSpec {
        workdir,
        writable_extra,
        readonly_extra,
    })
}

/// The limits of one run beyond time and output: its cgroup (memory, pids, cpu) and the
/// disk watch. Built before spawning; `join` makes the child enter the cgroup.
pub(crate) struct RunLimits {
    pub cgroup: Option<RunCgroup>,
    pub disk: Option<DiskWatch>,
    pub enforced: Vec<String>,
    pub unenforced: Vec<String>,
}

impl RunLimits {
    pub async fn prepare(spec: &CommandSpec, checked: &CheckedSpec) -> Self {
        let req = Requested {
            memory_mb: spec.limits.memory_mb,
            max_pids: spec.max_pids,
            cpu: spec.limits.cpu,
        };
        let mut enforced = Vec::new();
        let mut unenforced = Vec::new();
        let cgroup = if req.memory_mb.is_some() || req.max_pids.is_some() || req.cpu.is_some() {
            let run = Cgroups::get().create_run(&req);
            enforced.extend(run.enforced.iter().cloned());
            unenforced.extend(run.unenforced.iter().cloned());
            Some(run)
        } else {
            None
        };
        let disk = match spec.max_disk_mb {
            Some(mb) => {
                let mut roots = vec![checked.workdir.clone()];
                roots.extend(checked.writable_extra.iter().cloned());
                enforced.push(format!("disk={mb}MB"));
                Some(DiskWatch::start(roots, mb).await)
            }
            None => None,
        };
        if !unenforced.is_empty() {
            static WARNED: Once = Once::new();
            WARNED.call_once(|| {
                tracing::warn!(
                    limits = %unenforced.join(","),
                    "sandbox limits requested but not enforced (cgroups not usable): {}",
                    crate::describe_limits()
                );
            });
        }
        Self {
            cgroup,
            disk,
            enforced,
            unenforced,
        }
    }

    /// Makes the spawned child join the run's cgroup before it execs.
    pub fn join(&self, cmd: &mut tokio::process::Command) {
        if let Some(cg) = &self.cgroup {
            join_in_pre_exec(cmd, cg.procs_files());
        }
    }
}

pub(crate) fn common_enforced(spec: &CommandSpec) -> Vec<String> {
    vec![
        format!("timeout={}s", spec.limits.timeout.as_secs_f64()),
        format!("output<={}B", spec.limits.max_output_bytes),
        "env=cleared".to_string(),
    ]
}

/// Kills a process group when dropped, unless disarmed. The future owning it being dropped
/// is the cancellation path, so this is what makes cancellation reach grandchildren.
struct GroupKill {
    pgid: Option<i32>,
}

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid
            && pgid > 1
        {
            // SAFETY: killpg has no memory-safety preconditions; a stale group only yields ESRCH.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keeps the last `cap` bytes of a stream without ever holding more than `2 * cap`.
pub(crate) struct TailBuffer {
    cap: usize,
    buf: Vec<u8>,
    total: u64,
}

impl TailBuffer {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            buf: Vec::with_capacity(cap.min(64 * 1024)),
            total: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        if data.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&data[data.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.cap.saturating_mul(2).max(8192) {
            let excess = self.buf.len() - self.cap;
            self.buf.drain(..excess);
        }
    }

    /// The kept text: at most `cap` bytes of output (marker included when the cap allows),
    /// starting on a character boundary.
    pub fn finish(self) -> (String, u64) {
        let total = self.total;
        let start = self.buf.len().saturating_sub(self.cap);
        let tail = &self.buf[start..];
        if total <= tail.len() as u64 {
            return (String::from_utf8_lossy(tail).into_owned(), total);
        }
        let marker = format!(
            "[builder-sandbox: output truncated, earlier bytes dropped; {total} bytes in total]\n"
        );
        let room = self.cap.saturating_sub(marker.len());
        let mut tail = &tail[tail.len().saturating_sub(room)..];
        // Do not open on half a UTF-8 character.
        let skip = tail
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        tail = &tail[skip..];
        let mut out = marker;
        out.push_str(&String::from_utf8_lossy(tail));
        (out, total)
    }
}

/// Runs a prepared command (program and args set, env cleared and set, cwd set) under
/// supervision. Sets stdio, the process group, kill-on-drop and the cgroup join itself.
pub(crate) async fn supervise(
    mut cmd: tokio::process::Command,
    spec: &CommandSpec,
    runtime: &'static str,
    mut enforced_limits: Vec<String>,
    limits: RunLimits,
) -> Result<ExecOutcome, SandboxError> {
    let started = Instant::now();
    let (reader, writer) = std::io::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer)
        .process_group(0)
        .kill_on_drop(true);
    limits.join(&mut cmd);
    // `cgroup` is bound before the child so that on drop (cancellation) it is dropped
    // after it: the cgroup sweep then runs after the process-group kill and removes the
    // directories once the processes are gone.
    let RunLimits {
        cgroup,
        disk,
        enforced,
        unenforced,
    } = limits;
    enforced_limits.extend(enforced);
    let mut child = cmd.spawn().map_err(SandboxError::Spawn)?;
    // The parent's copies of the write end live in `cmd`; EOF comes only once they are gone.
    drop(cmd);
    let mut group = GroupKill {
        pgid: child.id().and_then(|p| i32::try_from(p).ok()),
    };
    let kill_all = |group: &mut GroupKill| {
        group.kill();
        if let Some(cg) = &cgroup {
            cg.kill_all();
        }
    };

    let mut rx = pipe::Receiver::from_owned_fd(OwnedFd::from(reader))?;
    let mut tail = TailBuffer::new(spec.limits.max_output_bytes);
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::from_std(started + spec.limits.timeout);
    let mut timed_out = false;
    let mut disk_exceeded = false;
    let mut status: Option<std::process::ExitStatus> = None;
    let mut drain_until = deadline;
    let mut eof = false;
    let mut next_disk_check = tokio::time::Instant::now() + poll_interval(Duration::ZERO);

    while !(eof && status.is_some()) {
        tokio::select! {
            r = rx.read(&mut chunk), if !eof => match r {
                Ok(0) => eof = true,
                Ok(n) => tail.push(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            },
            s = child.wait(), if status.is_none() => {
                status = Some(s?);
                // Background jobs left behind would hold the pipe open and outlive the step.
                kill_all(&mut group);
                drain_until = tokio::time::Instant::now() + DRAIN_GRACE;
            },
            _ = tokio::time::sleep_until(deadline), if status.is_none() && !timed_out => {
                timed_out = true;
                kill_all(&mut group);
                child.start_kill()?;
            },
            _ = tokio::time::sleep_until(next_disk_check), if status.is_none() && disk.is_some() && !disk_exceeded && !timed_out => {
                if let Some(d) = &disk {
                    let (grown, took) = d.grown().await;
                    if d.over(grown) {
                        disk_exceeded = true;
                        kill_all(&mut group);
                        child.start_kill()?;
                    }
                    next_disk_check = tokio::time::Instant::now() + poll_interval(took);
                }
            },
            _ = tokio::time::sleep_until(drain_until), if status.is_some() && !eof => {
                tracing::warn!(runtime, "output pipe still open after the command exited; \
                    a process escaped the sandbox's process group");
                break;
            },
        }
    }
    group.pgid = None;

    // What the command left behind counts too: a write just before exiting is not missed.
    let mut disk_grown = None;
    if let Some(d) = &disk {
        let (grown, _) = d.grown().await;
        disk_exceeded |= d.over(grown);
        disk_grown = Some(grown);
    }
    let oom_kills = cgroup.as_ref().map_or(0, |c| c.oom_kills());
    let pids_refused = cgroup.as_ref().map_or(0, |c| c.pids_refused());
    let mut limits_hit = Vec::new();
    if disk_exceeded && let (Some(d), Some(g)) = (&disk, disk_grown) {
        limits_hit.push(format!(
            "disk: the working copy grew by {g} bytes, over the cap of {} bytes",
            d.limit_bytes
        ));
    }
    if oom_kills > 0 {
        limits_hit.push(format!(
            "memory: {oom_kills} process(es) killed by the OOM killer"
        ));
    }
    if pids_refused > 0 {
        limits_hit.push(format!("pids: {pids_refused} fork(s) refused"));
    }
    let killed_by = if timed_out {
        Some("timeout".to_string())
    } else if disk_exceeded {
        Some("disk limit".to_string())
    } else if oom_kills > 0 {
        Some("memory limit".to_string())
    } else {
        None
    };
    drop(cgroup);

    let (output, output_bytes_total) = tail.finish();
    Ok(ExecOutcome {
        exit_code: if timed_out || disk_exceeded {
            None
        } else {
            status.and_then(|s| s.code())
        },
        timed_out,
        output,
        output_bytes_total,
        duration: started.elapsed(),
        runtime,
        enforced_limits,
        unenforced_limits: unenforced,
        killed_by,
        limits_hit,
        egress_refused: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_buffer_keeps_everything_under_the_cap() {
        let mut t = TailBuffer::new(100);
        t.push(b"hello ");
        t.push(b"world");
        assert_eq!(t.finish(), ("hello world".to_string(), 11));
    }

    #[test]
    fn tail_buffer_keeps_the_tail_with_a_marker_within_the_cap() {
        let mut t = TailBuffer::new(200);
        for i in 0..10_000 {
            t.push(format!("line {i}\n").as_bytes());
        }
        assert!(t.buf.len() <= 8192, "buffer stays bounded");
        let (out, total) = t.finish();
        assert!(out.len() <= 200, "{}", out.len());
        assert!(out.starts_with("[builder-sandbox: output truncated"));
        assert!(out.ends_with("line 9999\n"));
        assert!(!out.contains("line 1\n"));
        assert_eq!(
            total,
            (0..10_000)
                .map(|i| format!("line {i}\n").len() as u64)
                .sum::<u64>()
        );
    }

    #[test]
    fn tail_buffer_does_not_open_mid_character() {
        let mut t = TailBuffer::new(120);
        t.push("é".repeat(200).as_bytes());
        let (out, _) = t.finish();
        assert!(!out.contains('\u{FFFD}'), "{out}");
        assert!(out.ends_with('é'));
    }

    #[test]
    fn check_spec_rejects_bad_input() {
        let d = tempfile::tempdir().unwrap();
        let ok = CommandSpec::new(d.path(), "true");
        assert!(check_spec(&ok).is_ok());
        for bad in [
            CommandSpec::new("relative", "true"),
            CommandSpec::new("/", "true"),
            CommandSpec::new(d.path().join("missing"), "true"),
            CommandSpec {
                env: vec![("A=B".into(), "x".into())],
                ..ok.clone()
            },
            CommandSpec::new(d.path(), "a\0b"),
        ] {
            assert!(
                matches!(check_spec(&bad), Err(SandboxError::InvalidSpec(_))),
                "{bad:?}"
            );
        }
    }
}
