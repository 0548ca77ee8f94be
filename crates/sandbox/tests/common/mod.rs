//! Helpers shared by the integration test binaries.
// Each test binary uses a different subset.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use builder_sandbox::{
    BwrapRuntime, CommandSpec, ExecOutcome, HelperProgram, LandlockConfig, SandboxLimits,
    SandboxRuntime,
};

/// The crate's helper program (`net-bridge` and the Landlock `exec` launcher).
pub const HELPER: &str = env!("CARGO_BIN_EXE_sandbox-helper");

pub fn helper() -> HelperProgram {
    HelperProgram::new(HELPER)
}

/// bwrap as production runs it: with Landlock as the second wall (this kernel has it).
pub fn bwrap() -> BwrapRuntime {
    bwrap_without_landlock()
        .with_landlock(LandlockConfig::new(helper()))
        .expect("the landlock launcher works inside bwrap")
}

/// bwrap alone: the control that shows what Landlock adds.
pub fn bwrap_without_landlock() -> BwrapRuntime {
    BwrapRuntime::detect()
        .expect("bubblewrap must work on this machine (apt-get install bubblewrap)")
}

/// A temp dir outside `/tmp` (which the sandbox replaces by its own tmpfs), so that
/// "cannot see the host" is tested against a path that does exist on the host.
pub fn host_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbx-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

pub fn spec(workdir: &Path, command: &str) -> CommandSpec {
    CommandSpec {
        limits: SandboxLimits {
            timeout: Duration::from_secs(60),
            ..SandboxLimits::default()
        },
        ..CommandSpec::new(workdir, command)
    }
}

pub async fn run(rt: &dyn SandboxRuntime, spec: &CommandSpec) -> ExecOutcome {
    rt.run(spec).await.unwrap()
}

/// Host processes whose command line contains `token`.
pub fn processes_mentioning(token: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(token) {
                found.push(format!(
                    "{}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}
