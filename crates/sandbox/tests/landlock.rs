//! Landlock as the second wall: real kernel (this machine has Landlock ABI 7), the real
//! helper program (`sandbox-helper exec`), inside real bwrap. Each refusal is shown to be
//! Landlock's by running the same command without it (bwrap alone lets it through) and by
//! its errno (EACCES, where a read-only mount would give EROFS).

use std::process::Command;

mod common;

use common::{HELPER, bwrap, bwrap_without_landlock, helper, host_dir, run, spec};

use builder_sandbox::{
    BwrapRuntime, HelperProgram, LandlockConfig, LandlockTcp, SandboxError, describe_limits,
    landlock_abi,
};

fn abi() -> u32 {
    landlock_abi().expect("this machine's kernel has Landlock")
}

#[tokio::test]
async fn writes_bwrap_allows_outside_the_working_copy_are_refused_by_landlock() {
    let dir = host_dir();
    // bwrap's root and /dev are tmpfs the sandbox's (namespaced) root owns: writable under
    // bwrap alone. Harmless there, but exactly the kind of gap a second wall is for.
    let cmd = "for f in /planted /dev/planted; do \
                 if (echo x > $f) 2>/tmp/err; then echo \"WROTE $f\"; \
                 else echo \"REFUSED $f: $(cat /tmp/err)\"; fi; done; \
               mkdir /planted-dir 2>/dev/null && echo WROTE_DIR; true";
    let control = run(&bwrap_without_landlock(), &spec(dir.path(), cmd)).await;
    assert!(control.output.contains("WROTE /planted\n"), "{control:?}");
    assert!(
        control.output.contains("WROTE /dev/planted\n"),
        "{control:?}"
    );
    assert!(control.output.contains("WROTE_DIR"), "{control:?}");
    assert!(
        control
            .unenforced_limits
            .iter()
            .any(|l| l == "landlock=not configured"),
        "{control:?}"
    );

    let out = run(&bwrap(), &spec(dir.path(), cmd)).await;
    assert!(out.success(), "{out:?}");
    for f in ["/planted", "/dev/planted"] {
        assert!(
            out.output
                .lines()
                .any(|l| l.starts_with(&format!("REFUSED {f}:")) && l.contains("Permission denied")),
            "{f}: {}",
            out.output
        );
    }
    assert!(!out.output.contains("WROTE"), "{}", out.output);
    assert!(
        out.enforced_limits
            .iter()
            .any(|l| *l == format!("landlock=filesystem(abi {})", abi())),
        "{out:?}"
    );
    assert!(
        !out.unenforced_limits
            .iter()
            .any(|l| l.starts_with("landlock")),
        "{out:?}"
    );
}

#[tokio::test]
async fn ordinary_work_still_runs_under_landlock() {
    let base = host_dir();
    let work = base.path().join("work");
    let cache = base.path().join("cache");
    for d in [&work, &cache] {
        std::fs::create_dir(d).unwrap();
    }
    let cmd = format!(
        "set -e; echo a > f; mkdir -p d/e; mv f d/e/g; ln -s d/e/g link; rm -r d link; \
         echo c > {cache}/c; echo t > /tmp/t; : > /dev/null; echo z > /dev/shm/z; \
         head -c 4 /dev/urandom | wc -c >/dev/null; ls /usr/bin >/dev/null; \
         python3 -c 'import multiprocessing as m; print(m.Pool(2).map(abs, [-1, -2]))'; \
         echo done",
        cache = cache.display()
    );
    let mut s = spec(&work, &cmd);
    s.writable_extra = vec![cache.clone()];
    let out = run(&bwrap(), &s).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.ends_with("[1, 2]\ndone\n"), "{}", out.output);
    assert_eq!(std::fs::read_to_string(cache.join("c")).unwrap(), "c\n");
}

/// The launcher on its own, on the host: a directory the host lets this process write
/// (no mount is read-only, nothing but Landlock is in the way) and that was not given to
/// Landlock is refused, while the one given with `--rw` is written.
#[test]
fn a_writable_directory_not_given_to_landlock_is_refused() {
    let base = host_dir();
    let given = base.path().join("given");
    let other = base.path().join("other");
    for d in [&given, &other] {
        std::fs::create_dir(d).unwrap();
    }
    let script = format!(
        "echo ok > {g}/f && echo GIVEN_OK; \
         if (echo x > {o}/f) 2>/dev/null; then echo OTHER_WRITTEN; else echo OTHER_REFUSED; fi; \
         python3 -c 'import errno, os\n\
try: os.mkdir(\"{o}/d\")\n\
except OSError as e: print(\"errno\", errno.errorcode[e.errno])'; \
         cat {o}/../given/f",
        g = given.display(),
        o = other.display()
    );
    // Control: the same script without Landlock writes both.
    let plain = Command::new("/bin/sh")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&plain.stdout).contains("OTHER_WRITTEN"),
        "{plain:?}"
    );
    std::fs::remove_file(other.join("f")).unwrap();
    std::fs::remove_dir(other.join("d")).unwrap();

    let out = Command::new(HELPER)
        .arg("exec")
        .arg("--rw")
        .arg(&given)
        .args(["--", "/bin/sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.contains("GIVEN_OK"), "{stdout}");
    assert!(stdout.contains("OTHER_REFUSED"), "{stdout}");
    assert!(stdout.contains("errno EACCES"), "{stdout}");
    assert!(stdout.ends_with("ok\n"), "reads stay allowed: {stdout}");
    assert!(!other.join("f").exists() && !other.join("d").exists());
}

#[test]
fn the_launcher_reports_usage_and_exec_errors_with_shell_exit_codes() {
    let code = |args: &[&str]| {
        let o = Command::new(HELPER).args(args).output().unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (c, err) = code(&["exec", "--rw", "relative", "--", "/bin/true"]);
    assert_eq!(c, Some(2), "{err}");
    assert!(err.contains("usage"), "{err}");
    let (c, err) = code(&["exec", "--rw", "/nonexistent-dir", "--", "/bin/true"]);
    assert_eq!(c, Some(125), "{err}");
    let (c, err) = code(&["exec", "--", "/nonexistent-program"]);
    assert_eq!(c, Some(127), "{err}");
    let (c, _) = code(&["exec", "--", "/bin/sh", "-c", "exit 7"]);
    assert_eq!(c, Some(7));
}

const TCP_PROBE: &str = "python3 -c '\n\
import errno, socket\n\
try:\n\
\x20   s = socket.socket(); s.bind((\"127.0.0.1\", 0)); s.listen(1)\n\
\x20   c = socket.create_connection(s.getsockname(), timeout=5); print(\"LOOPBACK_OK\")\n\
except OSError as e:\n\
\x20   print(\"LOOPBACK\", errno.errorcode.get(e.errno, e.errno))\n'";

#[tokio::test]
async fn tcp_is_refused_unless_left_to_the_namespace() {
    let dir = host_dir();
    let strict = run(&bwrap(), &spec(dir.path(), TCP_PROBE)).await;
    assert!(strict.output.contains("LOOPBACK EACCES"), "{strict:?}");
    assert!(
        strict
            .enforced_limits
            .iter()
            .any(|l| l == "landlock-tcp=none"),
        "{strict:?}"
    );
    // Control: bwrap alone, and Landlock with TCP left to the namespace, allow a loopback
    // test server.
    let ns = BwrapRuntime::detect()
        .unwrap()
        .with_landlock(LandlockConfig {
            helper: helper(),
            tcp: LandlockTcp::Namespace,
        })
        .unwrap();
    for rt in [bwrap_without_landlock(), ns] {
        let out = run(&rt, &spec(dir.path(), TCP_PROBE)).await;
        assert!(out.output.contains("LOOPBACK_OK"), "{out:?}");
        assert!(
            !out.enforced_limits
                .iter()
                .any(|l| l.starts_with("landlock-tcp")),
            "{out:?}"
        );
    }
}

#[tokio::test]
async fn signals_to_processes_outside_the_domain_are_refused() {
    let dir = host_dir();
    if abi() < 6 {
        eprintln!("SKIPPED: Landlock scopes need ABI 6");
        return;
    }
    // PID 1 in the sandbox is bwrap's reaper, outside the Landlock domain; the command's own
    // children are inside it.
    let cmd = "kill -0 1 2>/dev/null && echo SIGNALLED_PID1 || echo PID1_REFUSED; \
               sleep 5 & kill $! && echo CHILD_KILLED";
    let out = run(&bwrap(), &spec(dir.path(), cmd)).await;
    assert!(out.output.contains("PID1_REFUSED"), "{out:?}");
    assert!(out.output.contains("CHILD_KILLED"), "{out:?}");
    let control = run(&bwrap_without_landlock(), &spec(dir.path(), cmd)).await;
    assert!(control.output.contains("SIGNALLED_PID1"), "{control:?}");
}

#[tokio::test]
async fn a_helper_that_cannot_launch_is_refused_at_configuration() {
    for program in ["/nonexistent/helper", "/bin/false"] {
        let r = BwrapRuntime::detect()
            .unwrap()
            .with_landlock(LandlockConfig::new(HelperProgram::new(program)));
        assert!(
            matches!(&r, Err(SandboxError::Unavailable { reason, .. }) if reason.starts_with("landlock")),
            "{program}: {r:?}"
        );
    }
    // A prefix the helper does not understand is a usage error in the self-test.
    let r = BwrapRuntime::detect()
        .unwrap()
        .with_landlock(LandlockConfig::new(helper().with_args_prefix(["--bogus"])));
    assert!(matches!(r, Err(SandboxError::Unavailable { .. })), "{r:?}");
}

#[tokio::test]
async fn describe_limits_says_landlock_is_in_force() {
    let _rt = bwrap();
    let d = describe_limits();
    assert!(
        d.contains(&format!("landlock: in force (kernel ABI {})", abi())),
        "{d}"
    );
}
