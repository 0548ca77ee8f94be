//! The bubblewrap runtime. The sandbox sees: the system read-only, an allow-list of `/etc`,
//! the toolchain homes read-only, a private `/tmp`, the working copy (and `writable_extra`)
//! read-write at the same absolute paths, no network, no host processes, no capabilities
//! and an environment built from scratch.
//!
//! With an egress allow-list (`with_egress`) the sandbox still has its own, empty network
//! namespace (only `lo`). Each run gets its own egress proxy (`crate::proxy`, served by the
//! run's future, gone when it ends) on a Unix socket in a private directory, bound
//! read-only at [`EGRESS_SANDBOX_DIR`]. The command is wrapped by a shell that first starts
//! the bridge program ([`crate::run_net_bridge`]) in the background, waits for its `ready`
//! line, then `exec`s the command; the bridge forwards `127.0.0.1:3128` to the socket and
//! dies with the sandbox's PID namespace.
//!
//! With Landlock (`with_landlock`) bwrap starts the helper program's `exec` subcommand in
//! place of the command: it restricts itself (`crate::landlock`: writes only to the working
//! copy, `writable_extra`, `/tmp` and a few `/dev` nodes; TCP only to the egress bridge)
//! and then execs `/bin/sh -c` (with egress, the egress wrapper, so the bridge runs inside
//! the Landlock domain too). bwrap's seccomp filter is loaded before the helper runs; it
//! leaves the Landlock system calls alone.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::egress::{EgressConfig, HostPattern, Policy};
use crate::exec::{CheckedSpec, RunLimits, check_spec, common_enforced, supervise};
use crate::helper::HELPER_EXEC;
use crate::landlock::{LandlockConfig, LandlockTcp};
use crate::proxy::ProxyRun;
use crate::toolchain::Toolchains;
use crate::{CommandSpec, RunFuture, SandboxError, SandboxRuntime};

/// Top-level system paths exposed read-only (or recreated as the symlinks they are).
pub(crate) const SYSTEM_PATHS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// What toolchains need from `/etc`: the dynamic linker cache, `cc` alternatives, CA
/// certificates, user and name-service basics. Not the rest: `/etc` can hold credentials
/// (`pip.conf`, `npmrc`, `gitconfig` with helpers, service configs).
pub(crate) const ETC_ALLOW: &[&str] = &[
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
pub(crate) const SANDBOX_HOME: &str = "/tmp";

/// Where the run's egress proxy directory (holding `proxy.sock`) appears in the sandbox.
pub const EGRESS_SANDBOX_DIR: &str = "/run/builder-egress";
/// The loopback address the bridge listens on inside the sandbox (its own namespace, so
/// no port is ever taken; 3128 is outside the ephemeral range test servers get).
pub const EGRESS_PROXY_ADDR: &str = "127.0.0.1:3128";
/// The port of [`EGRESS_PROXY_ADDR`], the one TCP port Landlock leaves open with egress.
const EGRESS_PROXY_PORT: u16 = 3128;

/// Switches a build tool from offline to online; dropped from the base environment when an
/// allow-list is set (a `CommandSpec::env` entry can set them again).
const OFFLINE_SWITCHES: &[&str] = &["CARGO_NET_OFFLINE", "PIP_NO_INDEX", "GOPROXY"];

/// Runs in the sandbox as `/bin/sh -c WRAPPER builder-sandbox COMMAND BRIDGE ARGS...`:
/// starts the bridge in the background, waits for its `ready` line (command substitution
/// returns when the bridge closes its stdout; anything a host binary printed before
/// `ready` is tolerated), then becomes the command's shell, so the exit status and `$$`
/// are the command's own.
const EGRESS_WRAPPER: &str = "c=$1; shift; r=$(\"$@\" </dev/null &); \
case $r in *ready) ;; *) echo 'builder-sandbox: the network egress bridge did not start' >&2; exit 125;; esac; \
exec /bin/sh -c \"$c\"";

#[derive(Debug)]
struct Egress {
    policy: Policy,
    allow: Vec<HostPattern>,
    program: PathBuf,
    args_prefix: Vec<String>,
}

/// Whether the command starts through the Landlock launcher.
#[derive(Debug, Clone)]
enum Landlock {
    /// No helper program configured: reported as `landlock=not configured`.
    NotConfigured,
    /// Configured, but the kernel has no Landlock: reported, the command runs without it.
    KernelLacks,
    On {
        program: PathBuf,
        args_prefix: Vec<String>,
        tcp: LandlockTcp,
        /// The kernel's Landlock ABI, which decides what is reported as enforced.
        abi: u32,
    },
}

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
    /// The egress allow-list and its bridge; `None`: no network at all.
    egress: Option<Arc<Egress>>,
    /// The program that runs the in-sandbox bridge, so that a run can be given its own
    /// allow-list (`CommandSpec::network`) even when the runtime's is empty.
    bridge: Option<(PathBuf, Vec<String>)>,
    landlock: Landlock,
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
            egress: None,
            bridge: None,
            landlock: Landlock::NotConfigured,
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

    /// Gives sandboxed commands network access to the hosts in `config.allow`, through a
    /// per-run egress proxy (see the module doc). An empty list turns it off again. Fails
    /// when the bridge program is not an existing file or does not start in the sandbox
    /// (checked here, once, by running `true` with the egress wrapper).
    pub fn with_egress(mut self, config: EgressConfig) -> Result<Self, SandboxError> {
        if config.allow.is_empty() {
            self.egress = None;
            return Ok(self);
        }
        let unusable = |reason: String| SandboxError::Unavailable {
            runtime: Self::NAME,
            reason: format!("network egress allow-list: {reason}"),
        };
        let program = config
            .bridge_program
            .canonicalize()
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                unusable(format!(
                    "bridge program `{}` is not an existing file",
                    config.bridge_program.display()
                ))
            })?;
        self.bridge = Some((program.clone(), config.bridge_args_prefix.clone()));
        self.egress = Some(Arc::new(Egress {
            policy: Policy::new(config.allow.clone()),
            allow: config.allow,
            program,
            args_prefix: config.bridge_args_prefix,
        }));
        self.self_test().map_err(unusable)?;
        Ok(self)
    }

    /// Lets single runs reach the hosts their `CommandSpec::network` names, through the
    /// bridge that `config` describes, while the runtime's own allow-list (`config.allow`,
    /// usually empty) stays as it is.
    pub fn with_per_run_egress(mut self, config: EgressConfig) -> Result<Self, SandboxError> {
        let program = config
            .bridge_program
            .canonicalize()
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| SandboxError::Unavailable {
                runtime: Self::NAME,
                reason: format!(
                    "network egress bridge program `{}` is not an existing file",
                    config.bridge_program.display()
                ),
            })?;
        self.bridge = Some((program, config.bridge_args_prefix.clone()));
        if !config.allow.is_empty() {
            return self.with_egress(config);
        }
        Ok(self)
    }

    /// The egress of one run: the spec's own allow-list when it names one, else the
    /// runtime's.
    fn egress_for(&self, spec: &CommandSpec) -> Result<Option<Arc<Egress>>, SandboxError> {
        let Some(allow) = &spec.network else {
            return Ok(self.egress.clone());
        };
        if allow.is_empty() {
            return Ok(None);
        }
        let Some((program, args_prefix)) = &self.bridge else {
            return Err(SandboxError::Unavailable {
                runtime: Self::NAME,
                reason: "this run needs network access to named hosts, which takes the egress bridge of the sandbox helper; none is configured".into(),
            });
        };
        Ok(Some(Arc::new(Egress {
            policy: Policy::new(allow.clone()),
            allow: allow.clone(),
            program: program.clone(),
            args_prefix: args_prefix.clone(),
        })))
    }

    /// Starts every command through the helper program's `exec` subcommand, which applies
    /// Landlock to itself before exec'ing the command (see `crate::landlock`). On a kernel
    /// without Landlock this logs a warning and runs without it, reporting
    /// `landlock=unsupported by the kernel` in `unenforced_limits`. Fails when the program
    /// is not an existing file or the launcher does not work in the sandbox (checked here,
    /// once, by running `true` through it).
    pub fn with_landlock(mut self, config: LandlockConfig) -> Result<Self, SandboxError> {
        let unusable = |reason: String| SandboxError::Unavailable {
            runtime: Self::NAME,
            reason: format!("landlock: {reason}"),
        };
        let program = config
            .helper
            .program
            .canonicalize()
            .ok()
            .filter(|p| p.is_file())
            .ok_or_else(|| {
                unusable(format!(
                    "helper program `{}` is not an existing file",
                    config.helper.program.display()
                ))
            })?;
        let Some(abi) = crate::landlock::landlock_abi() else {
            tracing::warn!(
                "this kernel has no Landlock (not built in or not enabled at boot): sandboxed \
                 commands run without that second wall; runs report it as unenforced"
            );
            self.landlock = Landlock::KernelLacks;
            return Ok(self);
        };
        self.landlock = Landlock::On {
            program,
            args_prefix: config.helper.args_prefix,
            tcp: config.tcp,
            abi,
        };
        self.self_test().map_err(unusable)?;
        crate::landlock::mark_in_force();
        Ok(self)
    }

    /// The kernel's Landlock ABI when commands run under Landlock; `None` otherwise.
    pub fn landlock_abi(&self) -> Option<u32> {
        match &self.landlock {
            Landlock::On { abi, .. } => Some(*abi),
            _ => None,
        }
    }

    /// The egress allow-list in force (empty: no network).
    pub fn egress_allow_list(&self) -> &[HostPattern] {
        self.egress.as_ref().map_or(&[], |e| &e.allow)
    }

    fn self_test(&self) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| format!("cannot create a temp dir: {e}"))?;
        let spec = CommandSpec::new(dir.path(), "true");
        let checked = check_spec(&spec).map_err(|e| e.to_string())?;
        // With egress, the wrapper and bridge run too (nothing listens on the socket: the
        // bridge only connects per connection).
        let egress_dir = match &self.egress {
            Some(_) => Some(
                tempfile::Builder::new()
                    .prefix("builder-egress-test-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temp dir: {e}"))?,
            ),
            None => None,
        };
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
            .args(
                self.args(
                    &checked,
                    &spec,
                    filter.as_ref().map(|f| f.as_raw_fd()),
                    self.egress
                        .as_deref()
                        .zip(egress_dir.as_ref().map(|d| d.path())),
                ),
            )
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
        egress: Option<(&Egress, &Path)>,
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
        if let Some((e, dir)) = egress {
            a.bind("--ro-bind", &e.program);
            a.flag("--ro-bind").path(dir).flag(EGRESS_SANDBOX_DIR);
        }
        if let Landlock::On { program, .. } = &self.landlock
            && egress.is_none_or(|(e, _)| e.program != *program)
        {
            a.bind("--ro-bind", program);
        }
        a.bind("--bind", &checked.workdir);
        for p in &checked.writable_extra {
            a.bind("--bind", p);
        }
        for p in &checked.readonly_extra {
            a.bind("--ro-bind", p);
        }
        a.flag("--chdir").path(&checked.workdir);
        a.flag("--clearenv");
        let mut env = self.toolchains.base_env(Path::new(SANDBOX_HOME));
        if let Some((e, _)) = egress {
            env.retain(|(k, _)| !OFFLINE_SWITCHES.contains(&k.as_str()));
            env.extend(
                proxy_env(&e.allow)
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v)),
            );
        }
        for (k, v) in env.iter().chain(&spec.env) {
            a.flag("--setenv").flag(k).flag(v);
        }
        if let Some(fd) = seccomp_fd {
            a.flag("--seccomp").flag(fd.to_string());
        }
        a.flag("--");
        if let Landlock::On {
            program,
            args_prefix,
            tcp,
            ..
        } = &self.landlock
        {
            a.path(program);
            for p in args_prefix {
                a.flag(p);
            }
            a.flag(HELPER_EXEC);
            a.flag("--rw").path(&checked.workdir);
            for p in &checked.writable_extra {
                a.flag("--rw").path(p);
            }
            a.flag("--rw").flag("/tmp");
            match (tcp, egress.is_some()) {
                (LandlockTcp::Namespace, _) => {
                    a.flag("--tcp-unrestricted");
                }
                // The bridge binds the port and the command's clients connect to it.
                (LandlockTcp::BridgeOnly, true) => {
                    let port = EGRESS_PROXY_PORT.to_string();
                    a.flag("--tcp-bind")
                        .flag(&port)
                        .flag("--tcp-connect")
                        .flag(&port);
                }
                (LandlockTcp::BridgeOnly, false) => {}
            }
            a.flag("--");
        }
        a.flag("/bin/sh").flag("-c");
        match egress {
            None => {
                a.flag(&spec.command);
            }
            Some((e, _)) => {
                a.flag(EGRESS_WRAPPER)
                    .flag("builder-sandbox")
                    .flag(&spec.command)
                    .path(&e.program);
                for p in &e.args_prefix {
                    a.flag(p);
                }
                a.flag("--listen")
                    .flag(EGRESS_PROXY_ADDR)
                    .flag("--connect")
                    .flag(format!(
                        "{EGRESS_SANDBOX_DIR}/{}",
                        crate::proxy::SOCKET_NAME
                    ));
            }
        }
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
            let egress = self.egress_for(spec)?;
            // The run's own proxy: its socket directory is bound into the sandbox below.
            let proxy = match &egress {
                Some(e) => Some(ProxyRun::start(e.policy.clone()).map_err(|err| {
                    SandboxError::Unavailable {
                        runtime: Self::NAME,
                        reason: format!("cannot start the egress proxy: {err}"),
                    }
                })?),
                None => None,
            };
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
            cmd.args(self.args(
                &checked,
                spec,
                filter.as_ref().map(|f| f.as_raw_fd()),
                egress.as_deref().zip(proxy.as_ref().map(|p| p.dir())),
            ))
            .env_clear();
            let mut enforced = common_enforced(spec);
            enforced.push(match &egress {
                Some(e) if proxy.is_some() => {
                    format!("network=allow-list({} hosts) via proxy", e.allow.len())
                }
                _ => "network=none".to_string(),
            });
            enforced.extend(
                [
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
            let mut limits = RunLimits::prepare(spec, &checked).await;
            match &self.landlock {
                Landlock::NotConfigured => limits
                    .unenforced
                    .push("landlock=not configured".to_string()),
                Landlock::KernelLacks => limits
                    .unenforced
                    .push("landlock=unsupported by the kernel".to_string()),
                Landlock::On { tcp, abi, .. } => crate::landlock::report(
                    *abi,
                    *tcp,
                    proxy.is_some(),
                    &mut enforced,
                    &mut limits.unenforced,
                ),
            }
            let run = supervise(cmd, spec, Self::NAME, enforced, limits);
            let Some(proxy) = proxy else {
                return run.await;
            };
            let log = proxy.log();
            // The proxy is served by this future: when the command is over (or the future
            // is dropped) the proxy, its socket directory and open tunnels go with it.
            let mut outcome = tokio::select! {
                r = run => r?,
                never = proxy.serve() => match never {},
            };
            let (refused, more) = log.take();
            if !refused.is_empty() {
                let mut line = format!(
                    "network: {} egress connection(s) refused: ",
                    refused.len() as u64 + more
                );
                let shown: Vec<String> = refused.iter().take(5).map(ToString::to_string).collect();
                line.push_str(&shown.join("; "));
                if refused.len() as u64 + more > 5 {
                    line.push_str("; ...");
                }
                outcome.limits_hit.push(line);
            }
            outcome.egress_refused = refused;
            Ok(outcome)
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

/// The proxy variables set inside the sandbox when egress is on. `NO_PROXY` keeps the
/// sandbox's own loopback (test servers a repository's tests start) off the proxy, unless
/// the allow-list names a loopback entry: then loopback is meant to reach the host's
/// service through the proxy, and `NO_PROXY` is left unset.
fn proxy_env(allow: &[HostPattern]) -> Vec<(&'static str, String)> {
    let url = format!("http://{EGRESS_PROXY_ADDR}");
    let mut env: Vec<(&'static str, String)> = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ]
    .into_iter()
    .map(|k| (k, url.clone()))
    .collect();
    if !allow.iter().any(HostPattern::is_loopback) {
        for k in ["NO_PROXY", "no_proxy"] {
            env.push((k, "localhost,127.0.0.1,::1".to_string()));
        }
    }
    env
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bridge_port_is_the_proxy_address_port() {
        let addr: std::net::SocketAddr = EGRESS_PROXY_ADDR.parse().unwrap();
        assert_eq!(addr.port(), EGRESS_PROXY_PORT);
    }
}
