//! Memory, pids and CPU limits through cgroups, v1 (these machines) and v2 (most production
//! hosts). Each run gets its own cgroup under a builder-owned parent (`builder-sandbox`
//! below the cgroup this process already lives in, so that whatever limits the host put on
//! builder still apply to the sandboxes). The child joins the run's cgroup in `pre_exec`,
//! before `exec` of bwrap, so no process of the command ever runs outside it (writing the
//! pid after spawn would leave a window in which a fork escapes the limits).
//!
//! Detection happens once per process. When nothing can be written (not root, read-only
//! cgroupfs, v2 without delegation), the limits are reported as unenforced, never dropped
//! silently.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The parent cgroup's directory name under builder's own cgroup.
const PARENT_NAME: &str = "builder-sandbox";
/// Overrides the v2 parent: a delegated, writable cgroup directory (systemd `Delegate=yes`),
/// needed when builder's own cgroup holds processes and so cannot enable controllers.
pub const CGROUP_PARENT_ENV: &str = "SANDBOX_CGROUP_PARENT";
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    V1,
    V2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Controller {
    Memory,
    Pids,
    Cpu,
}

impl Controller {
    const ALL: [Controller; 3] = [Controller::Memory, Controller::Pids, Controller::Cpu];
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Pids => "pids",
            Controller::Cpu => "cpu",
        }
    }
}

/// What detection found: per controller, the parent directory runs are created under, or
/// why that controller cannot be used.
#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    pub version: Option<CgroupVersion>,
    parents: Vec<(Controller, PathBuf)>,
    pub problems: Vec<String>,
}

impl Cgroups {
    /// Detected once per process; later runs reuse it.
    pub fn get() -> &'static Cgroups {
        static CG: OnceLock<Cgroups> = OnceLock::new();
        CG.get_or_init(Cgroups::detect)
    }

    fn parent(&self, c: Controller) -> Option<&Path> {
        self.parents
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, p)| p.as_path())
    }

    pub fn has(&self, c: Controller) -> bool {
        self.parent(c).is_some()
    }

    fn detect() -> Cgroups {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mut cg = Cgroups {
            version: None,
            parents: Vec::new(),
            problems: Vec::new(),
        };
        let v1: Vec<_> = Controller::ALL
            .iter()
            .filter_map(|c| v1_dir(&mountinfo, &own, c.name()).map(|d| (*c, d)))
            .collect();
        if !v1.is_empty() {
            // Hybrid hosts mount v2 too, but the controllers live in the v1 hierarchies.
            cg.version = Some(CgroupVersion::V1);
            for (c, own_dir) in v1 {
                let parent = own_dir.join(PARENT_NAME);
                match ensure_dir(&parent) {
                    Ok(()) => {
                        // Proves the hierarchy is writable; the parent itself is created
                        // again per run and removed when empty.
                        sweep_stale(&parent);
                        let _ = std::fs::remove_dir(&parent);
                        cg.parents.push((c, parent));
                    }
                    Err(e) => cg
                        .problems
                        .push(format!("cannot create {}: {e}", parent.display())),
                }
            }
        } else if let Some(own_dir) = v2_dir(&mountinfo, &own) {
            cg.version = Some(CgroupVersion::V2);
            let parent = match std::env::var_os(CGROUP_PARENT_ENV) {
                Some(p) if !p.is_empty() => PathBuf::from(p),
                _ => own_dir.join(PARENT_NAME),
            };
            match setup_v2_parent(&parent) {
                Ok(enabled) => {
                    sweep_stale(&parent);
                    for c in Controller::ALL {
                        if enabled.iter().any(|e| e == c.name()) {
                            cg.parents.push((c, parent.clone()));
                        } else {
                            cg.problems.push(format!(
                                "controller `{}` is not delegated to {}",
                                c.name(),
                                parent.display()
                            ));
                        }
                    }
                }
                Err(e) => cg.problems.push(format!(
                    "cannot use {} ({e}); give builder a delegated cgroup and set {CGROUP_PARENT_ENV}",
                    parent.display()
                )),
            }
        } else {
            cg.problems.push("no cgroup filesystem mounted".into());
        }
        for c in Controller::ALL {
            if !cg.has(c) && cg.version == Some(CgroupVersion::V1) {
                cg.problems
                    .push(format!("no writable v1 `{}` hierarchy", c.name()));
            }
        }
        cg.problems.dedup();
        cg
    }

    /// Creates a run's cgroup and writes the limits it can. Returns the cgroup (possibly with
    /// no directory at all) plus the limits that held and those that did not.
    pub fn create_run(&self, req: &Requested) -> RunCgroup {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "run-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let mut run = RunCgroup {
            version: self.version,
            dirs: Vec::new(),
            memory_dir: None,
            pids_dir: None,
            enforced: Vec::new(),
            unenforced: Vec::new(),
        };
        let wanted: Vec<(Controller, String)> = [
            req.memory_mb
                .map(|mb| (Controller::Memory, format!("memory={mb}MB"))),
            req.max_pids
                .map(|n| (Controller::Pids, format!("pids={n}"))),
            req.cpu.map(|c| (Controller::Cpu, format!("cpu={c}"))),
        ]
        .into_iter()
        .flatten()
        .collect();
        for (c, label) in wanted {
            let Some(parent) = self.parent(c) else {
                run.unenforced.push(label);
                continue;
            };
            let dir = parent.join(&name);
            let made = run.dirs.contains(&dir)
                || {
                    match create_run_dir(parent, &dir) {
                        Ok(()) => {
                            run.dirs.push(dir.clone());
                            true
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "cannot create the run's cgroup");
                            false
                        }
                    }
                };
            let applied = made && apply(self.version, c, &dir, req).is_ok();
            if applied {
                match c {
                    Controller::Memory => run.memory_dir = Some(dir),
                    Controller::Pids => run.pids_dir = Some(dir),
                    Controller::Cpu => {}
                }
                run.enforced.push(label);
            } else {
                run.unenforced.push(label);
            }
        }
        run
    }
}

/// The limits a run asks cgroups for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Requested {
    pub memory_mb: Option<u64>,
    pub max_pids: Option<u32>,
    pub cpu: Option<f32>,
}

fn apply(
    version: Option<CgroupVersion>,
    c: Controller,
    dir: &Path,
    req: &Requested,
) -> std::io::Result<()> {
    let w = |file: &str, v: String| std::fs::write(dir.join(file), v);
    let v2 = version == Some(CgroupVersion::V2);
    match c {
        Controller::Memory => {
            let bytes = req.memory_mb.unwrap_or(0).saturating_mul(1024 * 1024);
            if v2 {
                w("memory.max", bytes.to_string())?;
                // Without this, a hog on a host with swap would page out instead of dying.
                let _ = w("memory.swap.max", "0".into());
            } else {
                w("memory.limit_in_bytes", bytes.to_string())?;
                // Only exists with swap accounting; must not be below memory.limit_in_bytes.
                let _ = w("memory.memsw.limit_in_bytes", bytes.to_string());
            }
        }
        Controller::Pids => w("pids.max", req.max_pids.unwrap_or(0).to_string())?,
        Controller::Cpu => {
            let quota = cpu_quota_us(req.cpu.unwrap_or(1.0));
            if v2 {
                w("cpu.max", format!("{quota} {CPU_PERIOD_US}"))?;
            } else {
                w("cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                w("cpu.cfs_quota_us", quota.to_string())?;
            }
        }
    }
    Ok(())
}

/// CPU cores as a CFS quota per 100 ms period; the kernel refuses quotas under 1 ms.
pub(crate) fn cpu_quota_us(cores: f32) -> u64 {
    let q = (f64::from(cores) * CPU_PERIOD_US as f64).round();
    if q.is_finite() && q > 1000.0 {
        q as u64
    } else {
        1000
    }
}

/// One run's cgroup (one directory per v1 hierarchy, one in v2). Dropping it kills what is
/// left in it and removes it.
#[derive(Debug)]
pub(crate) struct RunCgroup {
    version: Option<CgroupVersion>,
    dirs: Vec<PathBuf>,
    memory_dir: Option<PathBuf>,
    pids_dir: Option<PathBuf>,
    pub enforced: Vec<String>,
    pub unenforced: Vec<String>,
}

impl RunCgroup {
    /// The `cgroup.procs` files the child writes itself into before exec.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()).ok())
            .collect()
    }

    /// Times the OOM killer fired in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        let Some(dir) = &self.memory_dir else {
            return 0;
        };
        let file = match self.version {
            Some(CgroupVersion::V2) => "memory.events",
            _ => "memory.oom_control",
        };
        keyed_value(
            &std::fs::read_to_string(dir.join(file)).unwrap_or_default(),
            "oom_kill",
        )
    }

    /// Forks refused because the pids limit was reached.
    pub fn pids_refused(&self) -> u64 {
        let Some(dir) = &self.pids_dir else {
            return 0;
        };
        keyed_value(
            &std::fs::read_to_string(dir.join("pids.events")).unwrap_or_default(),
            "max",
        )
    }

    /// SIGKILLs every process in the cgroup. A fork racing the scan lands in the same
    /// cgroup, so a few passes empty it (the pids limit bounds how many there can be).
    pub fn kill_all(&self) {
        for dir in &self.dirs {
            if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                continue;
            }
            for _ in 0..20 {
                let pids = read_pids(dir);
                if pids.is_empty() {
                    break;
                }
                for pid in pids {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe {
                        libc::kill(pid, libc::SIGKILL);
                    }
                }
            }
        }
    }

    /// Removes the directories, waiting up to `wait` for killed processes to be reaped.
    fn remove(&mut self, wait: Duration) -> bool {
        let until = Instant::now() + wait;
        loop {
            let version = self.version;
            self.dirs.retain(|d| {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    // A v1 parent is created on demand: left behind, an empty parent
                    // would keep the cgroup builder runs in (often its supervisor's)
                    // from being removed. EBUSY while other runs use it is expected.
                    if version == Some(CgroupVersion::V1)
                        && let Some(parent) = d.parent()
                    {
                        let _ = std::fs::remove_dir(parent);
                    }
                    false
                } else {
                    true
                }
            });
            if self.dirs.is_empty() || Instant::now() >= until {
                return self.dirs.is_empty();
            }
            self.kill_all();
            // Killed processes leave the cgroup within a millisecond or two; polling
            // coarser than that showed up as whole milliseconds of per-run overhead.
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if self.dirs.is_empty() {
            return;
        }
        self.kill_all();
        if !self.remove(Duration::from_millis(200)) {
            // Processes killed by a dropped future may take a moment to die; do not block
            // the async caller for that. A later start-up sweep catches anything left.
            let mut rest = RunCgroup {
                version: self.version,
                dirs: std::mem::take(&mut self.dirs),
                memory_dir: None,
                pids_dir: None,
                enforced: Vec::new(),
                unenforced: Vec::new(),
            };
            std::thread::spawn(move || {
                if !rest.remove(Duration::from_secs(10)) {
                    tracing::warn!(dirs = ?rest.dirs, "could not remove sandbox cgroups");
                }
                rest.dirs.clear();
            });
        }
    }
}

/// Installs the cgroup join as the child's last step before exec.
pub(crate) fn join_in_pre_exec(cmd: &mut tokio::process::Command, files: Vec<CString>) {
    if files.is_empty() {
        return;
    }
    // SAFETY: the closure runs between fork and exec and only calls open/write/close,
    // which are async-signal-safe; it allocates nothing (the paths are prepared here).
    unsafe {
        cmd.pre_exec(move || {
            for f in &files {
                let fd = libc::open(f.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0" means the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
}

fn read_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|p| *p > 1)
        .collect()
}

/// `key N` lines as in `memory.events`, `memory.oom_control`, `pids.events`.
pub(crate) fn keyed_value(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

/// v1 parents are removed when their last run ends (see `RunCgroup::remove`), so a
/// concurrent run may have to recreate the parent; a few attempts cover that race.
fn create_run_dir(parent: &Path, dir: &Path) -> std::io::Result<()> {
    let mut last = None;
    for _ in 0..3 {
        match std::fs::create_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                ensure_dir(parent)?;
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("cgroup parent vanished")))
}

fn ensure_dir(p: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes empty run cgroups a crashed earlier process left behind.
fn sweep_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let me = format!("run-{}-", std::process::id());
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("run-") && !name.starts_with(&me) && read_pids(&e.path()).is_empty() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// v2: the controllers must be enabled in the parent's parent (for the parent to have them)
/// and in the parent (for the run cgroups). Returns those enabled in the parent's subtree.
fn setup_v2_parent(parent: &Path) -> std::io::Result<Vec<String>> {
    if let Some(up) = parent.parent() {
        let available = std::fs::read_to_string(up.join("cgroup.controllers"))?;
        let want: Vec<String> = Controller::ALL
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == c.name()))
            .map(|c| format!("+{}", c.name()))
            .collect();
        if !want.is_empty() {
            // EBUSY when builder's own cgroup holds processes: then only a pre-delegated
            // parent works (SANDBOX_CGROUP_PARENT), and the error says so.
            let current = std::fs::read_to_string(up.join("cgroup.subtree_control"))?;
            let missing: Vec<&String> = want
                .iter()
                .filter(|w| !current.split_whitespace().any(|c| c == &w[1..]))
                .collect();
            if !missing.is_empty() && !parent.exists() {
                std::fs::write(
                    up.join("cgroup.subtree_control"),
                    missing
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(" "),
                )?;
            }
        }
    }
    ensure_dir(parent)?;
    let available = std::fs::read_to_string(parent.join("cgroup.controllers"))?;
    let want: Vec<String> = Controller::ALL
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == c.name()))
        .map(|c| format!("+{}", c.name()))
        .collect();
    if !want.is_empty() {
        std::fs::write(parent.join("cgroup.subtree_control"), want.join(" "))?;
    }
    Ok(
        std::fs::read_to_string(parent.join("cgroup.subtree_control"))?
            .split_whitespace()
            .map(String::from)
            .collect(),
    )
}

/// Builder's own directory in the v1 hierarchy carrying `controller`.
fn v1_dir(mountinfo: &str, own: &str, controller: &str) -> Option<PathBuf> {
    let (root, mount) = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut post = post.split_whitespace();
        if post.next()? != "cgroup" {
            return None;
        }
        let opts = post.nth(1)?;
        if !opts.split(',').any(|o| o == controller) {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
    })?;
    let path = own.lines().find_map(|l| {
        let mut p = l.splitn(3, ':');
        let _id = p.next()?;
        let ctrls = p.next()?;
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| p.next().map(String::from))?
    })?;
    Some(join_under_mount(&mount, &root, &path))
}

fn v2_dir(mountinfo: &str, own: &str) -> Option<PathBuf> {
    let (root, mount) = mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        Some((f.get(3)?.to_string(), f.get(4)?.to_string()))
    })?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(join_under_mount(&mount, &root, path))
}

/// `/proc/self/cgroup` paths are relative to the hierarchy's root, which the mount may not
/// show entirely (a container sees only its own subtree).
fn join_under_mount(mount: &str, root: &str, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(root)
        .filter(|_| root != "/")
        .unwrap_or(path);
    let mut out = PathBuf::from(mount);
    for part in rel.split('/').filter(|s| !s.is_empty() && *s != "..") {
        out.push(part);
    }
    out
}

/// One line for start-up logs: which cgroup version is used and which limits hold.
pub fn describe_limits() -> String {
    let cg = Cgroups::get();
    let mut on = Vec::new();
    let mut off = Vec::new();
    for c in Controller::ALL {
        if cg.has(c) {
            on.push(c.name());
        } else {
            off.push(c.name());
        }
    }
    let version = match cg.version {
        Some(CgroupVersion::V1) => "cgroup v1",
        Some(CgroupVersion::V2) => "cgroup v2",
        None => "no cgroups",
    };
    let parents: Vec<String> = cg
        .parents
        .iter()
        .map(|(_, p)| p.display().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut s = format!(
        "sandbox limits: {version}; enforced: timeout, output cap, disk cap (private /tmp size + \
         working-copy growth check){}",
        if on.is_empty() {
            String::new()
        } else {
            format!(", {} (cgroups under {})", on.join(", "), parents.join(", "))
        }
    );
    // Before the cgroup part that is not enforced: callers split on that marker.
    s.push_str("; ");
    s.push_str(&crate::landlock::describe());
    if !off.is_empty() {
        s.push_str(&format!(
            "; NOT enforced: {} ({})",
            off.join(", "),
            cg.problems.join("; ")
        ));
    }
    s
}

/// Which cgroup version limits go through, if any.
pub fn cgroup_version() -> Option<CgroupVersion> {
    Cgroups::get().version
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
        32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
        34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset\n\
        35 31 0:32 /outer /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
        40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
    const OWN: &str = "4:memory:/outer/process_api/abc\n3:cpuset:/\n1:cpu:/\n0::/svc\n";

    #[test]
    fn v1_paths_follow_mount_roots_and_exact_controller_names() {
        assert_eq!(
            v1_dir(MOUNTINFO, OWN, "memory"),
            Some(PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"))
        );
        // `cpu` must not match the `cpuset` hierarchy.
        assert_eq!(
            v1_dir(MOUNTINFO, OWN, "cpu"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu"))
        );
        assert_eq!(v1_dir(MOUNTINFO, OWN, "pids"), None);
        assert_eq!(
            v2_dir(MOUNTINFO, OWN),
            Some(PathBuf::from("/sys/fs/cgroup/unified/svc"))
        );
    }

    #[test]
    fn event_counters_and_cpu_quota() {
        let oom = "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n";
        assert_eq!(keyed_value(oom, "oom_kill"), 3);
        assert_eq!(keyed_value("low 0\nmax 12\noom 1\n", "max"), 12);
        assert_eq!(keyed_value("", "max"), 0);
        assert_eq!(cpu_quota_us(1.5), 150_000);
        assert_eq!(cpu_quota_us(0.0001), 1000);
        assert_eq!(cpu_quota_us(f32::NAN), 1000);
    }

    #[test]
    fn limits_that_cannot_be_written_are_reported_unenforced() {
        let req = Requested {
            memory_mb: Some(100),
            max_pids: Some(64),
            cpu: Some(0.5),
        };
        let all = vec![
            "memory=100MB".to_string(),
            "pids=64".to_string(),
            "cpu=0.5".to_string(),
        ];
        let none = Cgroups {
            version: None,
            parents: Vec::new(),
            problems: vec!["no cgroup filesystem mounted".into()],
        };
        let run = none.create_run(&req);
        assert_eq!(run.unenforced, all);
        assert!(run.enforced.is_empty() && run.procs_files().is_empty());
        // A parent that vanished or cannot be written: the run directory cannot be made.
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let broken = Cgroups {
            version: Some(CgroupVersion::V1),
            parents: Controller::ALL.iter().map(|c| (*c, file.clone())).collect(),
            problems: Vec::new(),
        };
        let run = broken.create_run(&req);
        assert_eq!(run.unenforced, all);
        assert!(run.enforced.is_empty());
    }

    #[test]
    fn v2_limits_are_written_in_v2_syntax() {
        let d = tempfile::tempdir().unwrap();
        let req = Requested {
            memory_mb: Some(100),
            max_pids: Some(64),
            cpu: Some(0.5),
        };
        for c in Controller::ALL {
            apply(Some(CgroupVersion::V2), c, d.path(), &req).unwrap();
        }
        let r = |f: &str| std::fs::read_to_string(d.path().join(f)).unwrap();
        assert_eq!(r("memory.max"), "104857600");
        assert_eq!(r("memory.swap.max"), "0");
        assert_eq!(r("pids.max"), "64");
        assert_eq!(r("cpu.max"), "50000 100000");
    }
}
