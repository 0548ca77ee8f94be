//! The bubblewrap runtime. The sandbox sees: the system read-only, an allow-list of `/etc`,
//! the toolchain homes read-only, a private `/tmp`, the working copy (and `writable_extra`)
//! read-write at the same absolute paths, no network, no host processes, no capabilities
//! and an environment built from scratch.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use crate::exec::{CheckedSpec, RunLimits, check_spec, common_enforced, supervise};
use crate::toolchain::Toolchains;
use crate::{CommandSpec, RunFuture, SandboxError, SandboxRuntime};

/// Top-level system paths exposed read-only (or recreated as the symlinks they are).
const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// What toolchains need from `/etc`: the dynamic linker cache, `cc` alternatives, CA
/// certificates, user and name-service basics. Not the rest: `/etc` can hold credentials
/// (`pip.conf`, `npmrc`, `gitconfig` with helpers, service configs).
const ETC_ALLOW: &[&str] = &[
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "passwd",
    "group",
    "nsswitch.conf",
    "hosts",
    "host.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "alpine-release",
    "magic",
    "magic.mime",
];

/// Where the sandboxed command's HOME and TMPDIR point: the private tmpfs.
const SANDBOX_HOME: &str = "/tmp";

#[derive(Debug, Clone)]
pub struct BwrapRuntime {
    bwrap: PathBuf,
    toolchains: Toolchains,
    extra_ro: Vec<PathBuf>,
    /// `--unshare-user --disable-userns`: blocks nested user namespaces (a large kernel attack
    /// surface). Dropped only when the host refuses it; `detect` logs that.
    harden_userns: bool,
    /// The seccomp deny-list (`crate::seccomp`) as a second wall. Dropped only when the
    /// host's bwrap cannot load it; `detect` logs that.
    seccomp: bool,
}

impl BwrapRuntime {
    pub const NAME: &'static str = "bwrap";

    /// Finds `bwrap`, then proves it works by running `true` with the exact isolation
    /// options real commands get.
    pub fn detect() -> Result<Self, SandboxError> {
        let bwrap = find_bwrap().ok_or_else(|| SandboxError::Unavailable {
            runtime: Self::NAME,
            reason: "`bwrap` not found on PATH or in /usr/bin; install bubblewrap \
                     (Debian/Ubuntu: `apt-get install bubblewrap`) or set SANDBOX_RUNTIME=process \
                     to run WITHOUT isolation"
                .into(),
        })?;
        let mut rt = Self {
            bwrap,
            toolchains: Toolchains::detect(),
            extra_ro: Vec::new(),
            harden_userns: true,
            seccomp: crate::seccomp::program().is_some(),
        };
        tracing::info!("{}", crate::describe_limits());
        if rt.seccomp
            && let Err(e) = rt.self_test()
        {
            rt.seccomp = false;
            if rt.self_test().is_ok() {
                tracing::warn!(
                    "bwrap cannot load builder's seccomp filter here ({e}); running without it"
                );
            } else {
                // Fails for another reason: let the fallbacks below decide with seccomp on.
                rt.seccomp = true;
            }
        }
        match rt.self_test() {
            Ok(()) => Ok(rt),
            Err(hardened_err) => {
                rt.harden_userns = false;
                if let Err(plain_err) = rt.self_test() {
                    return Err(SandboxError::Unavailable {
                        runtime: Self::NAME,
                        reason: format!(
                            "{hardened_err}; without user-namespace hardening: {plain_err}"
                        ),
                    });
                }
                tracing::warn!(
                    "bwrap works only without --unshare-user --disable-userns here: sandboxed \
                     commands can create nested user namespaces ({hardened_err})"
                );
                Ok(rt)
            }
        }
    }

    /// Exposes another host path read-only at the same path (e.g. a toolchain in `/opt`).
    pub fn with_ro_bind(mut self, path: impl Into<PathBuf>) -> Self {
        self.extra_ro.push(path.into());
        self
    }

    /// Adds a directory in front of the sandbox's PATH (usually with `with_ro_bind`).
    pub fn with_path_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.toolchains.path_dirs.insert(0, dir.into());
        self
    }

    fn self_test(&self) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let spec = CommandSpec::new(dir.path(), "true");
        let checked = check_spec(&spec).map_err(|e| e.to_string())?;
        let filter = self.seccomp_file().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(&self.bwrap);
        if let Some(f) = &filter {
            let fd = f.as_raw_fd();
            // SAFETY: fcntl is async-signal-safe; nothing is allocated after fork.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || inherit_fd(fd));
            }
        }
        let out = cmd
            .args(self.args(&checked, &spec, filter.as_ref().map(|f| f.as_raw_fd())))
            .env_clear()
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bwrap.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "`{} ... true` failed ({}): {}",
                self.bwrap.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    fn seccomp_file(&self) -> std::io::Result<Option<std::fs::File>> {
        if self.seccomp {
            crate::seccomp::program_file()
        } else {
            Ok(None)
        }
    }

    fn args(
        &self,
        checked: &CheckedSpec,
        spec: &CommandSpec,
        seccomp_fd: Option<RawFd>,
    ) -> Vec<OsString> {
        let mut a = Args::default();
        a.flag("--unshare-all");
        if self.harden_userns {
            a.flag("--unshare-user").flag("--disable-userns");
        }
        a.flag("--die-with-parent")
            .flag("--new-session")
            .flag("--cap-drop")
            .flag("ALL")
            .flag("--hostname")
            .flag("builder-sandbox");
        for p in SYSTEM_PATHS {
            a.mirror_ro(Path::new(p), false);
        }
        let etc = Path::new("/etc");
        if etc.is_dir() {
            a.flag("--dir").flag("/etc");
            for name in ETC_ALLOW {
                a.mirror_ro(&etc.join(name), false);
            }
        }
        a.flag("--proc").flag("/proc");
        a.flag("--dev").flag("/dev");
        // After /tmp so that toolchains or work dirs under /tmp are not hidden by it.
        if let Some(mb) = spec.max_disk_mb {
            // The private /tmp is RAM; without a size it could take half the host's memory
            // (the memory cgroup also charges it, when there is one).
            a.flag("--size")
                .flag(mb.saturating_mul(1024 * 1024).to_string());
        }
        a.flag("--tmpfs").flag("/tmp");
        for p in self.toolchains.ro_binds.iter().chain(&self.extra_ro) {
            a.mirror_ro(p, true);
        }
        a.bind("--bind", &checked.workdir);
        for p in &checked.writable_extra {
            a.bind("--bind", p);
        }
        a.flag("--chdir").path(&checked.workdir);
        a.flag("--clearenv");
        let env = self.toolchains.base_env(Path::new(SANDBOX_HOME));
        for (k, v) in env.iter().chain(&spec.env) {
            a.flag("--setenv").flag(k).flag(v);
        }
        if let Some(fd) = seccomp_fd {
            a.flag("--seccomp").flag(fd.to_string());
        }
        a.flag("--").flag("/bin/sh").flag("-c").flag(&spec.command);
        a.0
    }
}

impl SandboxRuntime for BwrapRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run<'a>(&'a self, spec: &'a CommandSpec) -> RunFuture<'a> {
        Box::pin(async move {
            let checked = check_spec(spec)?;
            // Lives until the run ends; bwrap has read it by then.
            let filter = self.seccomp_file()?;
            let mut cmd = tokio::process::Command::new(&self.bwrap);
            if let Some(f) = &filter {
                let fd = f.as_raw_fd();
                // SAFETY: fcntl is async-signal-safe; nothing is allocated after fork.
                unsafe {
                    cmd.pre_exec(move || inherit_fd(fd));
                }
            }
            cmd.args(self.args(&checked, spec, filter.as_ref().map(|f| f.as_raw_fd())))
                .env_clear();
            let mut enforced = common_enforced(spec);
            enforced.extend(
                [
                    "network=none",
                    "pid-namespace",
                    "filesystem=workdir-only",
                    "capabilities=none",
                ]
                .map(String::from),
            );
            if filter.is_some() {
                enforced.push("seccomp=deny-list".to_string());
            }
            if let Some(mb) = spec.max_disk_mb {
                enforced.push(format!("tmp={mb}MB"));
            }
            let limits = RunLimits::prepare(spec, &checked).await;
            supervise(cmd, spec, Self::NAME, enforced, limits).await
        })
    }
}

/// Lets the child keep `fd` across exec (files are opened close-on-exec), for `--seccomp`.
fn inherit_fd(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an fd number; no memory is passed.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn find_bwrap() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("bwrap"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/bwrap")])
        .find(|p| p.is_file())
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, s: impl AsRef<str>) -> &mut Self {
        self.0.push(OsString::from(s.as_ref()));
        self
    }

    fn path(&mut self, p: &Path) -> &mut Self {
        self.0.push(p.as_os_str().to_owned());
        self
    }

    fn bind(&mut self, how: &str, p: &Path) -> &mut Self {
        self.flag(how).path(p).path(p)
    }

    /// Read-only bind at the same path; a symlink is recreated as a symlink (on merged-/usr
    /// systems `/bin` is `usr/bin`), a missing path is skipped. With `bind_target`, the
    /// symlink's resolved target is bound too (a toolchain home that points elsewhere).
    fn mirror_ro(&mut self, p: &Path, bind_target: bool) -> &mut Self {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                let Ok(target) = std::fs::read_link(p) else {
                    return self;
                };
                if bind_target && let Ok(real) = p.canonicalize() {
                    self.bind("--ro-bind", &real);
                }
                self.flag("--symlink").path(&target).path(p)
            }
            Ok(_) => self.bind("--ro-bind", p),
            Err(_) => self,
        }
    }
}
