//! The OCI runtime: each command runs as a container of `crun` (an OCI runtime in C; runc
//! or youki take the same bundle). Per run, builder writes a bundle into a private temp
//! dir: `config.json` plus an empty `rootfs/` that becomes a read-only root holding only
//! bind mounts of the host's system directories (the same list bwrap exposes), the `/etc`
//! allow-list, the toolchain homes, a private sized `/tmp`, and the working copy (and
//! `writable_extra`) read-write at the same paths. New pid, ipc, uts, mount and network
//! namespaces (so no network: only `lo`), no capabilities, `no_new_privileges`, the crate's
//! seccomp deny-list as an OCI profile (plus nested user namespaces refused, which bwrap
//! does with `--disable-userns`), `/proc/sys` & co. read-only, rlimits, an environment
//! built from scratch.
//!
//! Limits: memory, pids and CPU are written into the bundle's `linux.resources`, but crun
//! runs with `--cgroup-manager=disabled` inside the run's own cgroup (`crate::cgroup`,
//! joined before crun execs, exactly as for bwrap): crun would otherwise remove its cgroup
//! when the container exits, taking the OOM and refused-fork counters the outcome reports
//! with it, and the per-run cgroup is also what kills every process of the container on
//! timeout and cancellation. Time, output and disk caps are the shared supervisor's.
//!
//! Host quirk handled here: crun refuses to run on a hybrid cgroup host whose v2 hierarchy
//! has a controller (`/sys/fs/cgroup/unified` with e.g. `hugetlb`). builder does not use
//! that hierarchy, so crun is started in a private mount namespace in which it is
//! unmounted; the host is not changed.
//!
//! Every crun call gets a private `--root` (state directory) inside the run's temp dir;
//! the container is deleted with `crun delete --force` after the run and when the run's
//! future is dropped.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};

use crate::bwrap::{ETC_ALLOW, SANDBOX_HOME, SYSTEM_PATHS};
use crate::exec::{CheckedSpec, RunLimits, check_spec, common_enforced, supervise};
use crate::toolchain::Toolchains;
use crate::{CommandSpec, RunFuture, SandboxError, SandboxRuntime};

const CGROUP_UNIFIED: &str = "/sys/fs/cgroup/unified";
/// Size of the container's `/dev` and `/dev/shm` tmpfs (as in OCI runtimes' defaults).
const DEV_TMPFS_SIZE: &str = "size=65536k";
const CLONE_NEWUSER: u64 = 0x1000_0000;
/// The container's PID 1 is a shell that runs the command's shell as its child and exits
/// with its status. The command must not be PID 1 itself: the kernel drops signals PID 1
/// has no handler for (a `kill $$` or a test runner's self-signal would do nothing) and
/// PID 1 inherits every orphan to reap. `exit` keeps the shell from exec'ing the child in
/// its place. (bwrap has its own PID 1 for the same reasons.)
const PID1_WRAPPER: &str = "/bin/sh -c \"$1\"; exit $?";

#[derive(Debug, Clone)]
pub struct OciRuntime {
    crun: PathBuf,
    toolchains: Toolchains,
    extra_ro: Vec<PathBuf>,
    /// Start crun in a mount namespace without the v2 hierarchy (see the module doc).
    hide_unified: bool,
}

impl OciRuntime {
    pub const NAME: &'static str = "oci";

    /// Finds `crun`, then proves it works here by running `true` with the exact bundle
    /// real commands get.
    pub fn detect() -> Result<Self, SandboxError> {
        let crun = find_program("crun").ok_or_else(|| SandboxError::Unavailable {
            runtime: Self::NAME,
            reason: "`crun` not found on PATH or in /usr/bin; install it (Debian/Ubuntu: \
                     `apt-get install crun`) or use SANDBOX_RUNTIME=bwrap"
                .into(),
        })?;
        let rt = Self {
            crun,
            toolchains: Toolchains::detect(),
            extra_ro: Vec::new(),
            hide_unified: hybrid_with_v2_controllers(),
        };
        rt.self_test().map_err(|reason| SandboxError::Unavailable {
            runtime: Self::NAME,
            reason,
        })?;
        Ok(rt)
    }

    /// Exposes another host path read-only at the same path (e.g. a toolchain in `/opt`).
    pub fn with_ro_bind(mut self, path: impl Into<PathBuf>) -> Self {
        self.extra_ro.push(path.into());
        self
    }

    fn self_test(&self) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let spec = CommandSpec::new(dir.path(), "true");
        let checked = check_spec(&spec).map_err(|e| e.to_string())?;
        let run = Bundle::write(self, &checked, &spec).map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&self.crun);
        cmd.args(run.crun_run_args())
            .env_clear()
            .stdin(std::process::Stdio::null());
        if self.hide_unified {
            let hide = HideUnified::new().map_err(|e| e.to_string())?;
            // SAFETY: only async-signal-safe system calls, on memory prepared before fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || hide.apply());
            }
        }
        let out = cmd
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.crun.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{} run` of `true` failed ({}): {}{}",
                self.crun.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// The OCI `config.json` of one run.
    fn config(&self, checked: &CheckedSpec, spec: &CommandSpec, mounts: Vec<Value>) -> Value {
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in self
            .toolchains
            .base_env(Path::new(SANDBOX_HOME))
            .into_iter()
            .chain(spec.env.iter().cloned())
        {
            // Later entries override earlier ones, as `CommandSpec::env` promises.
            env.retain(|(n, _)| *n != k);
            env.push((k, v));
        }
        let env: Vec<String> = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut resources = serde_json::Map::new();
        if let Some(mb) = spec.limits.memory_mb {
            let bytes = mb.saturating_mul(1024 * 1024);
            resources.insert("memory".into(), json!({ "limit": bytes, "swap": bytes }));
        }
        if let Some(n) = spec.max_pids {
            resources.insert("pids".into(), json!({ "limit": n }));
        }
        if let Some(c) = spec.limits.cpu {
            resources.insert(
                "cpu".into(),
                json!({ "quota": crate::cgroup::cpu_quota_us(c), "period": 100_000 }),
            );
        }
        let nofile = nofile_limit();
        json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": { "uid": 0, "gid": 0 },
                "args": ["/bin/sh", "-c", PID1_WRAPPER, "builder-sandbox", spec.command],
                "env": env,
                "cwd": checked.workdir,
                "capabilities": {
                    "bounding": [], "effective": [], "inheritable": [], "permitted": [],
                    "ambient": []
                },
                "rlimits": [
                    { "type": "RLIMIT_CORE", "hard": 0u64, "soft": 0u64 },
                    { "type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile }
                ],
                "noNewPrivileges": true
            },
            "root": { "path": "rootfs", "readonly": true },
            "hostname": "builder-sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [
                    { "type": "pid" }, { "type": "ipc" }, { "type": "uts" },
                    { "type": "mount" }, { "type": "network" }
                ],
                "resources": resources,
                "rootfsPropagation": "private",
                "seccomp": seccomp_profile(),
                "maskedPaths": [
                    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/proc/scsi"
                ],
                "readonlyPaths": [
                    "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
                ]
            }
        })
    }
}

impl SandboxRuntime for OciRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run<'a>(&'a self, spec: &'a CommandSpec) -> RunFuture<'a> {
        Box::pin(async move {
            if spec.network.as_ref().is_some_and(|hosts| !hosts.is_empty()) {
                return Err(SandboxError::Unavailable {
                    runtime: Self::NAME,
                    reason: "this run needs network access to named hosts (an egress \
                             allow-list), which the oci runtime cannot give; use bwrap"
                        .into(),
                });
            }
            let checked = check_spec(spec)?;
            let bundle = Bundle::write(self, &checked, spec)?;
            let mut cmd = tokio::process::Command::new(&self.crun);
            cmd.args(bundle.crun_run_args()).env_clear();
            if self.hide_unified {
                let hide = HideUnified::new()?;
                // SAFETY: only async-signal-safe system calls, on memory prepared before fork.
                unsafe {
                    cmd.pre_exec(move || hide.apply());
                }
            }
            let mut enforced = common_enforced(spec);
            enforced.extend(
                [
                    "network=none",
                    "pid-namespace",
                    "filesystem=workdir-only",
                    "capabilities=none",
                    "no-new-privileges",
                    "seccomp=deny-list",
                ]
                .map(String::from),
            );
            if let Some(mb) = spec.max_disk_mb {
                enforced.push(format!("tmp={mb}MB"));
            }
            let mut limits = RunLimits::prepare(spec, &checked).await;
            // Landlock is the bwrap runtime's second wall; here seccomp and the OCI masks are.
            limits
                .unenforced
                .push("landlock=not configured".to_string());
            // Dropped after the run or with this future: deletes the container if crun did
            // not (timeout, cancellation), then the bundle.
            let container = Container {
                crun: self.crun.clone(),
                bundle,
                hide_unified: self.hide_unified,
            };
            let outcome = supervise(cmd, spec, Self::NAME, enforced, limits).await;
            drop(container);
            outcome
        })
    }
}

/// One run's bundle directory: `config.json`, `rootfs/` and crun's state root `state/`.
struct Bundle {
    dir: tempfile::TempDir,
    id: String,
}

impl Bundle {
    fn write(rt: &OciRuntime, checked: &CheckedSpec, spec: &CommandSpec) -> std::io::Result<Self> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = tempfile::Builder::new().prefix("builder-oci-").tempdir()?;
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs)?;
        std::fs::create_dir(dir.path().join("state"))?;
        let mut mounts = vec![
            json!({ "destination": "/proc", "type": "proc", "source": "proc",
                    "options": ["nosuid", "noexec", "nodev"] }),
            json!({ "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                    "options": ["nosuid", "strictatime", "mode=755", DEV_TMPFS_SIZE] }),
            json!({ "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                    "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"] }),
            json!({ "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                    "options": ["nosuid", "noexec", "nodev", "mode=1777", DEV_TMPFS_SIZE] }),
            json!({ "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                    "options": ["nosuid", "noexec", "nodev"] }),
        ];
        for p in SYSTEM_PATHS {
            mirror_ro(&rootfs, Path::new(p), false, &mut mounts)?;
        }
        let etc = Path::new("/etc");
        if etc.is_dir() {
            std::fs::create_dir(rootfs.join("etc"))?;
            for name in ETC_ALLOW {
                mirror_ro(&rootfs, &etc.join(name), false, &mut mounts)?;
            }
        }
        // Before the binds, so that a toolchain or working copy under /tmp stays visible.
        let mut tmp_opts = vec![
            "nosuid".to_string(),
            "nodev".to_string(),
            "mode=1777".to_string(),
        ];
        if let Some(mb) = spec.max_disk_mb {
            tmp_opts.push(format!("size={}", mb.saturating_mul(1024 * 1024)));
        }
        mounts.push(
            json!({ "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
                            "options": tmp_opts }),
        );
        for p in rt.toolchains.ro_binds.iter().chain(&rt.extra_ro) {
            mirror_ro(&rootfs, p, true, &mut mounts)?;
        }
        for p in std::iter::once(&checked.workdir).chain(&checked.writable_extra) {
            mounts.push(bind(p, false));
        }
        for p in &checked.readonly_extra {
            mounts.push(bind(p, true));
        }
        let config = rt.config(checked, spec, mounts);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec(&config).map_err(std::io::Error::other)?,
        )?;
        let id = format!(
            "builder-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        Ok(Self { dir, id })
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn crun_run_args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.state().into_os_string(),
            "--cgroup-manager=disabled".into(),
            "run".into(),
            "--bundle".into(),
            self.dir.path().as_os_str().to_owned(),
            self.id.clone().into(),
        ]
    }
}

/// Deletes the container (killing what is left of it) when dropped, then the bundle.
struct Container {
    crun: PathBuf,
    bundle: Bundle,
    hide_unified: bool,
}

impl Drop for Container {
    fn drop(&mut self) {
        // `crun run` deletes the container itself when its process exits; only a killed
        // crun (timeout, cancellation) leaves its state behind.
        if !self.bundle.state().join(&self.bundle.id).exists() {
            return;
        }
        let mut cmd = std::process::Command::new(&self.crun);
        cmd.arg("--root")
            .arg(self.bundle.state())
            .arg("--cgroup-manager=disabled")
            .args(["delete", "--force"])
            .arg(&self.bundle.id)
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if self.hide_unified
            && let Ok(hide) = HideUnified::new()
        {
            // SAFETY: only async-signal-safe system calls, on memory prepared before fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || hide.apply());
            }
        }
        // A few milliseconds, blocking: this runs on the drop path of a future, and the
        // container must be gone before the bundle directory is removed.
        if let Err(e) = cmd.status() {
            tracing::warn!(id = %self.bundle.id, error = %e, "cannot delete the crun container");
        }
    }
}

/// A read-only bind at the same path; a symlink is recreated as a symlink in the rootfs
/// (merged-/usr systems: `/bin -> usr/bin`), with `bind_target` its target is bound too; a
/// missing path is skipped.
fn mirror_ro(
    rootfs: &Path,
    p: &Path,
    bind_target: bool,
    mounts: &mut Vec<Value>,
) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(p)?;
            if bind_target && let Ok(real) = p.canonicalize() {
                mounts.push(bind(&real, true));
            }
            let Ok(rel) = p.strip_prefix("/") else {
                return Ok(());
            };
            let link = rootfs.join(rel);
            if let Some(parent) = link.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::os::unix::fs::symlink(&target, &link) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        Ok(_) => mounts.push(bind(p, true)),
        Err(_) => {}
    }
    Ok(())
}

fn bind(p: &Path, read_only: bool) -> Value {
    json!({
        "destination": p,
        "type": "bind",
        "source": p,
        "options": ["rbind", if read_only { "ro" } else { "rw" }, "nosuid", "nodev"]
    })
}

/// Open files for the container: enough for a parallel build, never above this process's
/// own hard limit (crun runs without the capability to raise it).
fn nofile_limit() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct passed; nothing else.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_max
    } else {
        1024
    };
    hard.min(65536)
}

/// The crate's seccomp deny-list as an OCI profile (EPERM), plus: new user namespaces
/// refused (`unshare`/`clone` with CLONE_NEWUSER; the container has no user namespace of
/// its own to nest in, and a fresh one would hand the command capabilities there), and
/// `clone3` answered ENOSYS so that libc falls back to `clone`, whose flags can be checked.
/// Only the native architecture is listed: libseccomp kills foreign-ABI calls.
fn seccomp_profile() -> Value {
    let arch = if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_X86_64"
    };
    let newuser = json!([{ "index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                           "op": "SCMP_CMP_MASKED_EQ" }]);
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": [arch],
        "syscalls": [
            { "names": crate::seccomp::denied_names(), "action": "SCMP_ACT_ERRNO",
              "errnoRet": libc::EPERM },
            { "names": ["unshare", "clone"], "action": "SCMP_ACT_ERRNO",
              "errnoRet": libc::EPERM, "args": newuser },
            { "names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS }
        ]
    })
}

/// True on a hybrid cgroup host whose v2 hierarchy carries a controller: crun refuses
/// those (see the module doc).
fn hybrid_with_v2_controllers() -> bool {
    std::fs::read_to_string(Path::new(CGROUP_UNIFIED).join("cgroup.controllers"))
        .is_ok_and(|c| !c.trim().is_empty())
}

/// What the child does before exec'ing crun on such a host: a private mount namespace
/// without the v2 hierarchy.
struct HideUnified {
    root: CString,
    unified: CString,
}

impl HideUnified {
    fn new() -> std::io::Result<Self> {
        Ok(Self {
            root: CString::new("/")?,
            unified: CString::new(Path::new(CGROUP_UNIFIED).as_os_str().as_bytes())?,
        })
    }

    /// Runs between fork and exec.
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: unshare, mount and umount2 are plain system calls on NUL-terminated
        // strings owned by `self`; nothing is allocated.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Private first, so the unmount does not propagate back to the host.
            if libc::mount(
                std::ptr::null(),
                self.root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::umount2(self.unified.as_ptr(), libc::MNT_DETACH) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_profile_carries_the_deny_list_and_the_userns_rule() {
        let p = seccomp_profile();
        let names = p["syscalls"][0]["names"].as_array().unwrap();
        assert!(names.iter().any(|n| n == "ptrace"));
        assert!(names.iter().any(|n| n == "io_uring_setup"));
        assert_eq!(p["syscalls"][1]["args"][0]["value"], CLONE_NEWUSER);
        assert_eq!(p["syscalls"][2]["errnoRet"], libc::ENOSYS);
    }
}
