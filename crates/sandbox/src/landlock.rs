//! Landlock as a second wall inside bwrap. bwrap's mounts are the first wall (read-only
//! system, only the working copy and `writable_extra` bound read-write); Landlock repeats
//! that policy inside the kernel's LSM layer, so a mount mistake, a writable tmpfs bwrap
//! creates (the sandbox's `/` and `/dev` are writable tmpfs for the sandbox's root) or a
//! mount-namespace escape still meets a wall.
//!
//! The policy is applied by the helper program's `exec` subcommand ([`crate::helper_main`]),
//! which bwrap starts in place of the command: it restricts itself and then `exec`s the
//! command, so everything the command starts inherits the restriction and cannot lift it.
//!
//! - read and execute: the whole visible filesystem (what bwrap exposes);
//! - write (create, remove, rename, truncate, device ioctls): only the `--rw` paths (the
//!   working copy, `writable_extra`, `/tmp`) and [`DEV_WRITABLE`];
//! - TCP (ABI >= 4): no bind and no connect except the `--tcp-bind`/`--tcp-connect` ports
//!   (the egress bridge's), unless `--tcp-unrestricted`;
//! - scopes (ABI >= 6): no signals to, and no abstract Unix sockets of, processes outside
//!   the Landlock domain.
//!
//! Best effort with an honest report: the host checks the kernel's Landlock ABI
//! ([`landlock_abi`]) and reports what holds in `ExecOutcome::enforced_limits` and what
//! does not in `unenforced_limits`; the launcher refuses to run the command (exit 125) when
//! the host expected Landlock but the kernel enforced nothing, so a report never claims a
//! wall that is not there.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use landlock::{
    ABI, Access, AccessFs, AccessNet, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope,
};

use crate::helper::{HelperError, HelperProgram};

/// The Landlock ABI this policy was written and tested against (Linux 6.15). Newer kernels
/// get exactly this policy (the kernel's compatibility contract); older ones the subset
/// they know, which the host reports. Raising it to V9 would make Landlock handle
/// `ResolveUnix`: the egress bridge's connect to the proxy socket would then need a rule.
const TARGET_ABI: ABI = ABI::V7;

/// Device nodes (and device directories) the command may write: output sinks, terminals
/// for pty-using tests, and POSIX shared memory (Python's multiprocessing needs it).
/// Missing ones are skipped.
pub const DEV_WRITABLE: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
    "/dev/shm",
];

/// What Landlock does to TCP inside the sandbox (kernel ABI >= 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LandlockTcp {
    /// No TCP bind or connect at all, except the egress bridge's own port when an
    /// allow-list is on (the bridge binds it, the command connects to it). Note that this
    /// also refuses test servers a repository's tests start on the sandbox's loopback.
    #[default]
    BridgeOnly,
    /// TCP is left to the network namespace (only `lo` plus the egress bridge): loopback
    /// test servers work. Landlock still walls the filesystem.
    Namespace,
}

/// Landlock for [`crate::BwrapRuntime::with_landlock`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockConfig {
    /// The program whose `exec` subcommand applies the policy inside the sandbox.
    pub helper: HelperProgram,
    pub tcp: LandlockTcp,
}

impl LandlockConfig {
    /// Filesystem and TCP walls ([`LandlockTcp::BridgeOnly`]).
    pub fn new(helper: HelperProgram) -> Self {
        Self {
            helper,
            tcp: LandlockTcp::default(),
        }
    }
}

/// Set once a runtime in this process has Landlock in force; read by `describe_limits`.
static IN_FORCE: AtomicBool = AtomicBool::new(false);

pub(crate) fn mark_in_force() {
    IN_FORCE.store(true, Ordering::Relaxed);
}

/// The running kernel's Landlock ABI version; `None` when Landlock is not built in or not
/// enabled at boot (then nothing of it can be enforced).
pub fn landlock_abi() -> Option<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_ulong = 1;
    // SAFETY: with a null attribute pointer, size 0 and the VERSION flag the kernel only
    // returns a number; no memory is read or written.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).ok().filter(|v| *v > 0)
}

/// The part of `describe_limits` about Landlock. Never says `NOT enforced` (that marks the
/// cgroup controllers there) and never names a cgroup controller.
pub(crate) fn describe() -> String {
    match landlock_abi() {
        None => "landlock: unsupported by this kernel (not in force)".to_string(),
        Some(abi) if IN_FORCE.load(Ordering::Relaxed) => {
            format!("landlock: in force (kernel ABI {abi})")
        }
        Some(abi) => format!(
            "landlock: available (kernel ABI {abi}) but not in force: no helper program configured"
        ),
    }
}

/// What a run reports about Landlock, given the kernel's ABI and the TCP policy.
pub(crate) fn report(
    abi: u32,
    tcp: LandlockTcp,
    egress: bool,
    enforced: &mut Vec<String>,
    unenforced: &mut Vec<String>,
) {
    enforced.push(format!("landlock=filesystem(abi {abi})"));
    if tcp == LandlockTcp::BridgeOnly {
        if abi >= 4 {
            enforced.push(if egress {
                "landlock-tcp=bridge-port-only".to_string()
            } else {
                "landlock-tcp=none".to_string()
            });
        } else {
            unenforced.push(format!("landlock-tcp (needs ABI 4, kernel has {abi})"));
        }
    }
    if abi >= 6 {
        enforced.push("landlock-scope=signals,abstract-unix-sockets".to_string());
    }
}

/// The `exec` subcommand's policy, parsed from its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ExecPolicy {
    pub rw: Vec<PathBuf>,
    pub tcp_bind: Vec<u16>,
    pub tcp_connect: Vec<u16>,
    pub tcp_unrestricted: bool,
}

/// Restricts the calling thread (and what it execs) to `policy`. Fails when a `--rw` path
/// cannot be opened or when the kernel enforced nothing at all.
pub(crate) fn restrict_self(policy: &ExecPolicy) -> Result<(), HelperError> {
    let abi = TARGET_ABI;
    let mut ruleset = Ruleset::default().handle_access(AccessFs::from_all(abi))?;
    if !policy.tcp_unrestricted {
        ruleset = ruleset.handle_access(AccessNet::from_all(abi))?;
    }
    let mut created = ruleset.scope(Scope::from_all(abi))?.create()?;
    let open = |p: &std::path::Path| {
        PathFd::new(p).map_err(|source| HelperError::LandlockPath {
            path: p.to_path_buf(),
            source,
        })
    };
    created = created.add_rule(PathBeneath::new(
        open(std::path::Path::new("/"))?,
        AccessFs::from_read(abi),
    ))?;
    let dev = DEV_WRITABLE
        .iter()
        .map(PathBuf::from)
        .filter(|p| p.exists());
    for (path, required) in policy
        .rw
        .iter()
        .cloned()
        .map(|p| (p, true))
        .chain(dev.map(|p| (p, false)))
    {
        let fd = match open(&path) {
            Ok(fd) => fd,
            Err(e) if required => return Err(e),
            Err(_) => continue,
        };
        // A rule on a file may only carry file rights (the kernel refuses directory ones).
        let access = if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            AccessFs::from_all(abi)
        } else {
            AccessFs::from_file(abi)
        };
        created = created.add_rule(PathBeneath::new(fd, access))?;
    }
    if !policy.tcp_unrestricted {
        for port in &policy.tcp_bind {
            created = created.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
        }
        for port in &policy.tcp_connect {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
    }
    let status = created.restrict_self()?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(HelperError::LandlockNotEnforced);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_follow_the_abi() {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        report(3, LandlockTcp::BridgeOnly, false, &mut on, &mut off);
        assert_eq!(on, ["landlock=filesystem(abi 3)"]);
        assert_eq!(off, ["landlock-tcp (needs ABI 4, kernel has 3)"]);
        let (mut on, mut off) = (Vec::new(), Vec::new());
        report(7, LandlockTcp::BridgeOnly, true, &mut on, &mut off);
        assert!(on.contains(&"landlock-tcp=bridge-port-only".to_string()));
        assert!(on.iter().any(|l| l.starts_with("landlock-scope=")));
        assert!(off.is_empty());
        let (mut on, mut off) = (Vec::new(), Vec::new());
        report(7, LandlockTcp::Namespace, false, &mut on, &mut off);
        assert!(!on.iter().any(|l| l.starts_with("landlock-tcp")));
        assert!(off.is_empty());
    }

    #[test]
    fn describe_never_uses_the_cgroup_marker_words() {
        let d = describe();
        for word in ["NOT enforced", "memory", "pids", "cpu"] {
            assert!(!d.contains(word), "{d}");
        }
    }
}
