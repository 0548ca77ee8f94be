//! The helper program: one small program that runs *inside* the sandbox for the runtime.
//! The crate ships it as the `sandbox-helper` binary; the production `builder` binary runs
//! the same code from a hidden subcommand, so a deployment needs one executable. Either way
//! everything after the program's own prefix goes to [`helper_main`]:
//!
//! ```text
//! <program> <args_prefix...> net-bridge --listen 127.0.0.1:PORT --connect /path/proxy.sock
//! <program> <args_prefix...> exec [--rw PATH]... [--tcp-bind PORT]... [--tcp-connect PORT]...
//!                                 [--tcp-unrestricted] -- PROGRAM [ARG]...
//! ```
//!
//! `net-bridge` is [`crate::run_net_bridge`] (the in-sandbox half of the egress proxy).
//! `exec` applies the Landlock policy (`landlock.rs`) to itself, then `exec`s PROGRAM with
//! the environment and working directory it was given.

use std::convert::Infallible;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::landlock::ExecPolicy;
use crate::netbridge::{NetBridgeError, run_net_bridge};

/// The subcommand running the egress bridge.
pub const HELPER_NET_BRIDGE: &str = "net-bridge";
/// The subcommand applying Landlock and exec'ing the command.
pub const HELPER_EXEC: &str = "exec";

/// The argument contract of [`helper_main`], for usage messages.
pub const HELPER_USAGE: &str = "net-bridge --listen 127.0.0.1:PORT --connect SOCKET | \
     exec [--rw PATH]... [--tcp-bind PORT]... [--tcp-connect PORT]... [--tcp-unrestricted] \
     -- PROGRAM [ARG]...";

/// How to start the helper program: `program`, then `args_prefix` (e.g. the `builder`
/// binary's hidden subcommand), then a subcommand of [`helper_main`]. The program is bound
/// read-only into the sandbox at its canonical path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelperProgram {
    pub program: PathBuf,
    pub args_prefix: Vec<String>,
}

impl HelperProgram {
    /// A helper started without a prefix (the `sandbox-helper` binary).
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args_prefix: Vec::new(),
        }
    }

    /// A helper behind a subcommand of a bigger binary (`builder <hidden-subcommand>`).
    pub fn with_args_prefix(mut self, prefix: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args_prefix = prefix.into_iter().map(Into::into).collect();
        self
    }

    /// The prefix the bridge is started with ([`crate::EgressConfig::bridge_args_prefix`]).
    pub fn net_bridge_prefix(&self) -> Vec<String> {
        let mut v = self.args_prefix.clone();
        v.push(HELPER_NET_BRIDGE.to_string());
        v
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HelperError {
    #[error("sandbox-helper: {0} (usage: {HELPER_USAGE})")]
    Usage(String),
    #[error(transparent)]
    NetBridge(#[from] NetBridgeError),
    #[error("sandbox-helper: cannot apply landlock: {0}")]
    Landlock(#[from] landlock::RulesetError),
    #[error("sandbox-helper: landlock: {source}")]
    LandlockPath {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error(
        "sandbox-helper: the kernel enforced no landlock rule although landlock was expected; \
         refusing to run the command without it"
    )]
    LandlockNotEnforced,
    #[error("sandbox-helper: cannot execute `{}`: {source}", program.display())]
    Exec {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl HelperError {
    /// The exit status the program should end with, in the shell's conventions: 2 for
    /// usage errors, 125 when the sandbox could not be set up, 126/127 when the command
    /// could not be executed / was not found.
    pub fn exit_code(&self) -> u8 {
        match self {
            HelperError::Usage(_) | HelperError::NetBridge(NetBridgeError::Usage(_)) => 2,
            HelperError::NetBridge(_)
            | HelperError::Landlock(_)
            | HelperError::LandlockPath { .. }
            | HelperError::LandlockNotEnforced => 125,
            HelperError::Exec { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                127
            }
            HelperError::Exec { .. } => 126,
        }
    }
}

/// Runs one helper subcommand; `args` are what follows the program and its prefix. Returns
/// only on error: `net-bridge` serves until killed and `exec` becomes the command. The
/// caller prints the error and exits with [`HelperError::exit_code`].
pub fn helper_main<I, S>(args: I) -> Result<Infallible, HelperError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let sub = args
        .next()
        .ok_or_else(|| HelperError::Usage("a subcommand is required".into()))?;
    match sub.to_str() {
        Some(HELPER_NET_BRIDGE) => Ok(run_net_bridge(args)?),
        Some(HELPER_EXEC) => {
            let (policy, program, rest) = parse_exec(args)?;
            crate::landlock::restrict_self(&policy)?;
            let source = std::process::Command::new(&program).args(rest).exec();
            Err(HelperError::Exec {
                program: PathBuf::from(program),
                source,
            })
        }
        _ => Err(HelperError::Usage(format!(
            "unknown subcommand `{}`",
            sub.display()
        ))),
    }
}

/// `exec`'s options up to `--`, then the program and its arguments.
fn parse_exec(
    args: impl Iterator<Item = OsString>,
) -> Result<(ExecPolicy, OsString, Vec<OsString>), HelperError> {
    let mut policy = ExecPolicy::default();
    let mut args = args.peekable();
    let port = |flag: &str, v: Option<OsString>| -> Result<u16, HelperError> {
        v.as_deref()
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u16>().ok())
            .ok_or_else(|| HelperError::Usage(format!("{flag} needs a port number")))
    };
    loop {
        let Some(flag) = args.next() else {
            return Err(HelperError::Usage(
                "exec needs `-- PROGRAM [ARG]...`".into(),
            ));
        };
        match flag.to_str() {
            Some("--") => break,
            Some("--rw") => {
                let p = PathBuf::from(
                    args.next()
                        .ok_or_else(|| HelperError::Usage("--rw needs a path".into()))?,
                );
                if !p.is_absolute() {
                    return Err(HelperError::Usage(format!(
                        "--rw `{}` is not an absolute path",
                        p.display()
                    )));
                }
                policy.rw.push(p);
            }
            Some("--tcp-bind") => policy.tcp_bind.push(port("--tcp-bind", args.next())?),
            Some("--tcp-connect") => policy.tcp_connect.push(port("--tcp-connect", args.next())?),
            Some("--tcp-unrestricted") => policy.tcp_unrestricted = true,
            _ => {
                return Err(HelperError::Usage(format!(
                    "unknown exec option `{}`",
                    flag.display()
                )));
            }
        }
    }
    let program = args
        .next()
        .ok_or_else(|| HelperError::Usage("exec needs a program after `--`".into()))?;
    Ok((policy, program, args.collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<(ExecPolicy, OsString, Vec<OsString>), HelperError> {
        parse_exec(a.iter().map(OsString::from))
    }

    #[test]
    fn exec_arguments() {
        let (p, prog, rest) = parse(&[
            "--rw",
            "/w",
            "--tcp-bind",
            "3128",
            "--rw",
            "/tmp",
            "--tcp-connect",
            "3128",
            "--",
            "/bin/sh",
            "-c",
            "echo --rw",
        ])
        .unwrap();
        assert_eq!(p.rw, [PathBuf::from("/w"), PathBuf::from("/tmp")]);
        assert_eq!((p.tcp_bind, p.tcp_connect), (vec![3128], vec![3128]));
        assert!(!p.tcp_unrestricted);
        assert_eq!(prog, "/bin/sh");
        assert_eq!(rest, ["-c", "echo --rw"]);
        for bad in [
            &["--rw", "relative", "--", "x"][..],
            &["--rw"],
            &["--tcp-bind", "http", "--", "x"],
            &["--bogus", "--", "x"],
            &["--rw", "/w"],
            &["--"],
        ] {
            assert!(matches!(parse(bad), Err(HelperError::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn subcommands_and_exit_codes() {
        let e = helper_main(["bogus"]).unwrap_err();
        assert!(matches!(e, HelperError::Usage(_)) && e.exit_code() == 2);
        let e = helper_main(Vec::<String>::new()).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let e = helper_main(["net-bridge", "--listen"]).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{e}");
        assert_eq!(
            HelperProgram::new("/b")
                .with_args_prefix(["__sandbox"])
                .net_bridge_prefix(),
            ["__sandbox", "net-bridge"]
        );
    }
}
