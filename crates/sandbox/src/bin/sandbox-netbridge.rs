//! The sandbox's network bridge as a program of its own: `sandbox-netbridge --listen
//! 127.0.0.1:PORT --connect /path/to/proxy.sock` (see `builder_sandbox::run_net_bridge`).
//! The `builder` binary runs the same function from a hidden subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Err(e) = builder_sandbox::run_net_bridge(std::env::args_os().skip(1));
    eprintln!("{e}");
    ExitCode::from(2)
}
