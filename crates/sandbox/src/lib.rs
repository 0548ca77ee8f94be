//! builder-sandbox: runs one shell command of an untrusted repository (build, tests, an
//! LLM-proposed command) in isolation, with a time limit and a capped, tail-keeping output
//! capture.
//!
//! Runtimes, all behind the object-safe [`SandboxRuntime`] trait (a [`CommandSpec`] in, an
//! [`ExecOutcome`] out; dropping the future kills the command), picked by name with
//! [`runtime_from_name`] / [`runtime_with_options`]:
//!
//! - `bwrap` ([`BwrapRuntime`], the default): bubblewrap namespaces (no network, no host
//!   processes), read-only system, only the working copy writable, empty host environment,
//!   a seccomp deny-list, and, with a helper program configured, Landlock as a second wall
//!   ([`BwrapRuntime::with_landlock`]: writes only to the working copy, `writable_extra`,
//!   `/tmp`; TCP only to the egress bridge). Without a helper, runs report
//!   `landlock=not configured` in `unenforced_limits`.
//! - `oci` / `crun` ([`OciRuntime`]): a per-run OCI bundle run by `crun` (same mounts,
//!   namespaces, no capabilities, `no_new_privileges`, the deny-list as an OCI seccomp
//!   profile). No egress allow-list and no Landlock (reported).
//! - `process` ([`ProcessRuntime`]): no isolation (full network, no allow-list); an
//!   explicit opt-in only.
//!
//! Memory, pids and CPU limits go through a per-run cgroup (v1 or v2, see
//! [`describe_limits`]) for every runtime; the disk cap through a sized private /tmp and a
//! growth check of the writable directories. What a runtime or host cannot enforce is
//! listed in [`ExecOutcome::unenforced_limits`], never dropped silently.
//!
//! Future runtimes fit the trait unchanged. A microVM runtime (Firecracker) would boot a
//! kernel and a read-only root image per run (or restore a snapshot for speed), get the
//! working copy in and out (a virtio-blk image copied back, or virtiofs/9p sharing the
//! directory, which `CommandSpec::workdir` already names), run the command through an
//! in-guest agent over vsock (output, exit code; the in-sandbox helper program is the place
//! for that agent), map `SandboxLimits` onto the VM's vCPU/memory size and its jailer's
//! cgroup, and kill the VM on drop. gVisor (`runsc`) is an OCI runtime: it can take
//! [`OciRuntime`]'s bundle as is (runsc drops the host seccomp profile in favour of its own
//! syscall emulation, and its gofer serves the bind mounts); its cost is syscall overhead
//! for build-heavy commands. Both would report what they enforce through the same
//! `enforced_limits`/`unenforced_limits`.
//!
//! The helper program ([`helper_main`], the `sandbox-helper` binary or the `builder`
//! binary's hidden subcommand, described by [`HelperProgram`]) runs inside the sandbox:
//! `net-bridge` for the egress path, `exec` for Landlock.
//!
//! Network egress allow-list (`SANDBOX_NETWORK_EGRESS_WHITELIST`, parsed by
//! [`parse_allow_list`], enabled by [`BwrapRuntime::with_egress`]): the sandbox keeps its
//! own empty network namespace; per run, builder serves an HTTP/1.1 forward proxy
//! (`CONNECT` and plain `http://`) on a Unix socket in a private directory bound into the
//! sandbox, and [`run_net_bridge`] (started inside the sandbox before the command) exposes
//! it on `127.0.0.1:3128` there, with `HTTP(S)_PROXY`/`ALL_PROXY` pointing at it. The proxy
//! lets through only listed hosts, refuses names that resolve to internal addresses
//! (DNS-rebinding guard, see `egress.rs`), and every refusal lands in
//! [`ExecOutcome::egress_refused`]. Without an allow-list there is no proxy and no network.
//!
//! This crate must not depend on any other builder crate, on a database, on the event store
//! or on credentials: nothing secret may ever be handed to it.

mod bwrap;
mod cgroup;
mod disk;
mod egress;
mod exec;
mod helper;
mod landlock;
mod netbridge;
mod oci;
mod process;
mod proxy;
mod seccomp;
mod toolchain;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

pub use bwrap::{BwrapRuntime, EGRESS_PROXY_ADDR, EGRESS_SANDBOX_DIR};
pub use cgroup::{CGROUP_PARENT_ENV, CgroupVersion, cgroup_version, describe_limits};
pub use egress::{
    AllowListError, DEFAULT_EGRESS_PORTS, EgressConfig, EgressRefusal, HostPattern,
    MAX_REFUSALS_KEPT, parse_allow_list,
};
pub use helper::{
    HELPER_EXEC, HELPER_NET_BRIDGE, HELPER_USAGE, HelperError, HelperProgram, helper_main,
};
pub use landlock::{DEV_WRITABLE, LandlockConfig, LandlockTcp, landlock_abi};
pub use netbridge::{NET_BRIDGE_USAGE, NetBridgeError, run_net_bridge};
pub use oci::OciRuntime;
pub use process::ProcessRuntime;

/// Resource limits of one command.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLimits {
    /// Wall-clock limit; on expiry the whole sandbox is killed and `timed_out` is set.
    pub timeout: Duration,
    /// Combined stdout+stderr kept, counted from the end of the output.
    pub max_output_bytes: usize,
    /// Memory cap of the whole sandbox (all its processes, tmpfs included), through the
    /// run's cgroup; over it the OOM killer ends the command (`killed_by = "memory limit"`).
    /// Where cgroups are not usable it is reported in `ExecOutcome::unenforced_limits`.
    pub memory_mb: Option<u64>,
    /// CPU cap in cores, as a CFS quota of the run's cgroup. Same reporting as `memory_mb`.
    pub cpu: Option<f32>,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(600),
            max_output_bytes: 1024 * 1024,
            memory_mb: None,
            cpu: None,
        }
    }
}

/// One command to run.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandSpec {
    /// Absolute path of the working copy; bound read-write at the same path and used as cwd.
    pub workdir: PathBuf,
    /// Run as `/bin/sh -c <command>` inside the sandbox.
    pub command: String,
    /// Added on top of the sandbox's minimal environment (and may override it).
    pub env: Vec<(String, String)>,
    pub limits: SandboxLimits,
    /// Further directories bound read-write at the same path (e.g. a per-feature cache).
    pub writable_extra: Vec<PathBuf>,
    /// Further directories bound read-only at the same path (e.g. a dependency cache that
    /// an earlier phase filled and this one may only read).
    pub readonly_extra: Vec<PathBuf>,
    /// Most processes (threads included) alive at once in the sandbox, through the run's
    /// cgroup: contains fork bombs. Defaults to [`DEFAULT_MAX_PIDS`]. (Here rather than in
    /// `SandboxLimits` because callers build that struct with a literal.)
    pub max_pids: Option<u32>,
    /// Cap in MB on what the command may add to the working copy and `writable_extra`
    /// (measured during and after the run; over it the command is killed and fails with
    /// `killed_by = "disk limit"`), and the size of the private `/tmp` tmpfs under bwrap.
    pub max_disk_mb: Option<u64>,
    /// This run's network, overriding the runtime's egress allow-list: `None` keeps the
    /// runtime's, `Some(empty)` turns the network off, `Some(hosts)` reaches only those hosts
    /// through the egress proxy (a dependency phase that may reach only package registries).
    /// A runtime that cannot honour an allow-list refuses the run rather than widen it
    /// (`process`, which isolates nothing, has the host's network whatever this says).
    pub network: Option<Vec<HostPattern>>,
}

/// Default [`CommandSpec::max_pids`]: room for a parallel build (threads count too:
/// cargo -j16 with rustc's codegen threads runs a few hundred) but not for a fork bomb.
pub const DEFAULT_MAX_PIDS: u32 = 1024;

impl CommandSpec {
    /// A spec with default limits, no extra env and no extra writable directories.
    pub fn new(workdir: impl Into<PathBuf>, command: impl Into<String>) -> Self {
        Self {
            workdir: workdir.into(),
            command: command.into(),
            env: Vec::new(),
            limits: SandboxLimits::default(),
            writable_extra: Vec::new(),
            readonly_extra: Vec::new(),
            max_pids: Some(DEFAULT_MAX_PIDS),
            max_disk_mb: None,
            network: None,
        }
    }
}

/// What happened when a command ran.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    /// The command's exit code; `None` when it was killed by a signal or timed out.
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// Combined stdout+stderr in arrival order; when longer than the cap, only the tail is
    /// kept, preceded by a one-line marker saying how much was dropped.
    pub output: String,
    /// Total bytes the command wrote, including any dropped from `output`.
    pub output_bytes_total: u64,
    pub duration: Duration,
    /// `name()` of the runtime that ran it.
    pub runtime: &'static str,
    /// Limits and isolation properties that were actually in force, e.g. `timeout=30s`,
    /// `network=none` or `network=allow-list(3 hosts) via proxy`.
    pub enforced_limits: Vec<String>,
    /// Requested limits this runtime could not apply, e.g. `memory=512MB`.
    pub unenforced_limits: Vec<String>,
    /// The limit that ended or failed the run: `timeout`, `memory limit` (OOM kill in the
    /// run's cgroup) or `disk limit`.
    pub killed_by: Option<String>,
    /// Every limit the command ran into, with figures, e.g. `pids: 1488 fork(s) refused`
    /// (a refused fork does not end a run by itself; the command sees EAGAIN).
    pub limits_hit: Vec<String>,
    /// Connections the egress proxy refused during the run, in order (at most
    /// [`MAX_REFUSALS_KEPT`]; `limits_hit` then says how many more there were). Empty
    /// without an allow-list: with no network there is nothing to refuse or record.
    pub egress_refused: Vec<EgressRefusal>,
}

impl ExecOutcome {
    /// Exited by itself with code 0 and no limit ended or failed it.
    pub fn success(&self) -> bool {
        !self.timed_out && self.killed_by.is_none() && self.exit_code == Some(0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandbox runtime `{runtime}` is not usable: {reason}")]
    Unavailable {
        runtime: &'static str,
        reason: String,
    },
    #[error("unknown sandbox runtime `{0}` (expected `bwrap`, `oci` or `process`)")]
    UnknownRuntime(String),
    #[error("invalid command spec: {0}")]
    InvalidSpec(String),
    #[error("could not start the sandboxed command: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("i/o error while supervising the sandboxed command: {0}")]
    Io(#[from] std::io::Error),
}

/// The future returned by [`SandboxRuntime::run`]. Dropping it kills the command.
pub type RunFuture<'a> =
    Pin<Box<dyn Future<Output = Result<ExecOutcome, SandboxError>> + Send + 'a>>;

/// A way to run commands. Object-safe so the worker can pick one at start-up.
pub trait SandboxRuntime: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs the command to completion or timeout. Dropping the returned future kills the
    /// command and everything it started; that is how cancellation works.
    fn run<'a>(&'a self, spec: &'a CommandSpec) -> RunFuture<'a>;
}

/// Picks a runtime by its configuration name (`SANDBOX_RUNTIME`): `bwrap` (also the empty
/// string, the default), `oci` or `crun` (containers of crun; `Unavailable` when crun is
/// not installed or does not work here) or `process` (no isolation, logged loudly).
pub fn runtime_from_name(name: &str) -> Result<Box<dyn SandboxRuntime>, SandboxError> {
    runtime_with_options(name, &RuntimeOptions::default())
}

/// What [`runtime_with_options`] configures beyond the runtime's name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RuntimeOptions {
    /// The in-sandbox helper program (production: the `builder` binary with its hidden
    /// subcommand as `args_prefix`). Under `bwrap` it turns Landlock on and runs the
    /// egress bridge; `None`: no Landlock (reported as `landlock=not configured`).
    pub helper: Option<HelperProgram>,
    /// The egress allow-list (`SANDBOX_NETWORK_EGRESS_WHITELIST`); empty: no network.
    /// Under `bwrap` it needs `helper`.
    pub egress_allow: Vec<HostPattern>,
    /// Landlock's TCP policy under `bwrap`.
    pub landlock_tcp: LandlockTcp,
}

/// Picks a runtime by name (see [`runtime_from_name`]) and applies `options`: under
/// `bwrap`, Landlock through the helper and the egress allow-list with the bridge run by
/// the same helper. The other runtimes cannot apply them; that is logged.
pub fn runtime_with_options(
    name: &str,
    options: &RuntimeOptions,
) -> Result<Box<dyn SandboxRuntime>, SandboxError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "" | "bwrap" | "bubblewrap" => {
            let mut rt = BwrapRuntime::detect()?;
            if let Some(helper) = &options.helper {
                rt = rt.with_landlock(LandlockConfig {
                    helper: helper.clone(),
                    tcp: options.landlock_tcp,
                })?;
            }
            match &options.helper {
                Some(helper) => {
                    rt = rt.with_per_run_egress(EgressConfig::with_helper(
                        options.egress_allow.clone(),
                        helper,
                    ))?;
                }
                None if !options.egress_allow.is_empty() => {
                    return Err(SandboxError::Unavailable {
                        runtime: BwrapRuntime::NAME,
                        reason: "network egress allow-list: no helper program configured to \
                                 run the in-sandbox bridge"
                            .into(),
                    });
                }
                None => {}
            }
            Ok(Box::new(rt))
        }
        "oci" | "crun" => {
            if !options.egress_allow.is_empty() {
                tracing::warn!(
                    "SANDBOX_NETWORK_EGRESS_WHITELIST is not applied by sandbox runtime \
                     `oci`: its commands have no network at all"
                );
            }
            if options.helper.is_some() {
                tracing::info!(
                    "the sandbox helper program (Landlock, egress bridge) is used by the bwrap \
                     runtime only"
                );
            }
            Ok(Box::new(OciRuntime::detect()?))
        }
        "process" => {
            tracing::warn!(
                "sandbox runtime `process` selected: commands of untrusted repositories run \
                 WITHOUT isolation (host filesystem and network are reachable)"
            );
            if !options.egress_allow.is_empty() {
                tracing::warn!(
                    "SANDBOX_NETWORK_EGRESS_WHITELIST is not applied by sandbox runtime \
                     `process`: it has full network access"
                );
            }
            Ok(Box::new(ProcessRuntime::new()))
        }
        other => Err(SandboxError::UnknownRuntime(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_names() {
        assert_eq!(runtime_from_name("bwrap").unwrap().name(), "bwrap");
        assert_eq!(runtime_from_name("").unwrap().name(), "bwrap");
        assert_eq!(
            runtime_from_name(" Process ").unwrap().name(),
            "process (NO ISOLATION)"
        );
        assert!(matches!(
            runtime_from_name("docker"),
            Err(SandboxError::UnknownRuntime(n)) if n == "docker"
        ));
    }

    #[test]
    fn runtime_names_with_egress() {
        let with = |allow: &str, helper: Option<&str>| RuntimeOptions {
            egress_allow: parse_allow_list(allow).unwrap(),
            helper: helper.map(HelperProgram::new),
            ..RuntimeOptions::default()
        };
        // `process` has full network: the list is logged as not applied, not an error.
        let rt = runtime_with_options("process", &with("crates.io", None)).unwrap();
        assert_eq!(rt.name(), ProcessRuntime::NAME);
        // An empty list is no egress: the bridge is never looked at.
        assert_eq!(
            runtime_with_options("bwrap", &with("", None))
                .unwrap()
                .name(),
            "bwrap"
        );
        assert!(matches!(
            runtime_with_options("bwrap", &with("crates.io", Some("/nonexistent/bridge"))),
            Err(SandboxError::Unavailable { reason, .. }) if reason.contains("/nonexistent/bridge")
        ));
        assert!(matches!(
            runtime_with_options("docker", &with("crates.io", None)),
            Err(SandboxError::UnknownRuntime(_))
        ));
    }

    #[test]
    fn runtime_options() {
        let allow = parse_allow_list("crates.io").unwrap();
        // An allow-list under bwrap needs the helper that runs the bridge.
        let no_helper = RuntimeOptions {
            egress_allow: allow.clone(),
            ..RuntimeOptions::default()
        };
        assert!(matches!(
            runtime_with_options("bwrap", &no_helper),
            Err(SandboxError::Unavailable { reason, .. }) if reason.contains("helper")
        ));
        let bad_helper = RuntimeOptions {
            helper: Some(HelperProgram::new("/nonexistent/helper")),
            ..RuntimeOptions::default()
        };
        assert!(matches!(
            runtime_with_options("bwrap", &bad_helper),
            Err(SandboxError::Unavailable { reason, .. }) if reason.contains("/nonexistent/helper")
        ));
        // `process` cannot apply either: logged, not an error.
        let rt = runtime_with_options(
            "process",
            &RuntimeOptions {
                egress_allow: allow,
                ..bad_helper
            },
        )
        .unwrap();
        assert_eq!(rt.name(), ProcessRuntime::NAME);
        assert_eq!(
            runtime_with_options("", &RuntimeOptions::default())
                .unwrap()
                .name(),
            "bwrap"
        );
        assert!(matches!(
            runtime_with_options("docker", &RuntimeOptions::default()),
            Err(SandboxError::UnknownRuntime(_))
        ));
    }
}
