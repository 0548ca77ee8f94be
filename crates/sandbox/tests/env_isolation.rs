//! Host environment variables never reach a sandboxed command. Its own test binary: it
//! mutates the process environment, which must not race with other tests reading it.

use std::time::Duration;

use builder_sandbox::{BwrapRuntime, CommandSpec, ProcessRuntime, SandboxRuntime};

#[tokio::test]
async fn host_environment_does_not_leak_into_any_runtime() {
    // SAFETY: the only test in this binary, run before any other thread reads the environment.
    unsafe {
        std::env::set_var("SECRET_TOKEN", "xyz-host-secret");
    }
    let bwrap = BwrapRuntime::detect().expect("bubblewrap must work on this machine");
    let dir = tempfile::tempdir().unwrap();
    let mut spec = CommandSpec::new(dir.path(), "env");
    spec.env = vec![("FEATURE_VAR".into(), "given".into())];
    spec.limits.timeout = Duration::from_secs(30);

    let rts: [&dyn SandboxRuntime; 2] = [&bwrap, &ProcessRuntime::new()];
    for rt in rts {
        let out = rt.run(&spec).await.unwrap();
        assert_eq!(out.exit_code, Some(0), "{}: {}", rt.name(), out.output);
        assert!(
            !out.output.contains("SECRET_TOKEN"),
            "{}: {}",
            rt.name(),
            out.output
        );
        assert!(
            !out.output.contains("xyz-host-secret"),
            "{}: {}",
            rt.name(),
            out.output
        );
        assert!(
            out.output.contains("FEATURE_VAR=given"),
            "{}: {}",
            rt.name(),
            out.output
        );
        assert!(
            out.output.contains("CARGO_NET_OFFLINE=true"),
            "{}",
            out.output
        );
        assert!(out.output.contains("LANG=C.UTF-8"), "{}", out.output);
    }
    let inside = bwrap.run(&spec).await.unwrap();
    assert!(inside.output.contains("HOME=/tmp\n"), "{}", inside.output);
}
