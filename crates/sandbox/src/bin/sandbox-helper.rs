//! The sandbox's in-sandbox helper as a program of its own: `sandbox-helper net-bridge …`
//! or `sandbox-helper exec [--rw DIR]… -- PROGRAM [ARG]…` (see
//! `builder_sandbox::helper_main`). The `builder` binary runs the same function from a
//! hidden subcommand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Err(e) = builder_sandbox::helper_main(std::env::args_os().skip(1));
    eprintln!("{e}");
    ExitCode::from(e.exit_code())
}
