//! The runtime without isolation: a plain child process in its own process group. It still
//! clears the environment (so secrets of the host process do not leak), gives the command a
//! private temporary HOME and enforces time and output limits, but the command can read and
//! write whatever the host user can, and reach the network: it has full network access and
//! does not apply the egress allow-list (`SANDBOX_NETWORK_EGRESS_WHITELIST`), which only
//! the bwrap runtime enforces (`BwrapRuntime::with_egress`). Its outcomes never list
//! `egress_refused` entries.

use crate::exec::{RunLimits, check_spec, common_enforced, supervise};
use crate::toolchain::Toolchains;
use crate::{CommandSpec, RunFuture, SandboxError, SandboxRuntime};

#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    toolchains: Toolchains,
}

impl ProcessRuntime {
    pub const NAME: &'static str = "process (NO ISOLATION)";

    pub fn new() -> Self {
        Self {
            toolchains: Toolchains::detect(),
        }
    }
}

impl Default for ProcessRuntime {
    fn default() -> Self {
        Self::new()
    }
}

impl SandboxRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn run<'a>(&'a self, spec: &'a CommandSpec) -> RunFuture<'a> {
        Box::pin(async move {
            let checked = check_spec(spec)?;
            let home = tempfile::Builder::new()
                .prefix("builder-sandbox-home-")
                .tempdir()
                .map_err(SandboxError::Io)?;
            let mut cmd = tokio::process::Command::new("/bin/sh");
            cmd.arg("-c")
                .arg(&spec.command)
                .current_dir(&checked.workdir)
                .env_clear()
                .envs(self.toolchains.base_env(home.path()))
                .envs(spec.env.iter().map(|(k, v)| (k, v)));
            let enforced = common_enforced(spec);
            let limits = RunLimits::prepare(spec, &checked).await;
            let outcome = supervise(cmd, spec, Self::NAME, enforced, limits).await;
            drop(home);
            outcome
        })
    }
}
