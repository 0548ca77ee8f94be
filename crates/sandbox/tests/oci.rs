//! The OCI runtime against the real `crun` (scripts/setup installs it): the runtime suite
//! (exit codes, timeout, output cap, cancellation) and the containment checks (network,
//! host files, writes, environment, seccomp, cgroup limits where cgroups work here).

use std::path::PathBuf;
use std::time::Duration;

mod common;

use common::{host_dir, processes_mentioning, run, spec};

use builder_sandbox::{
    CommandSpec, ExecOutcome, OciRuntime, SandboxError, SandboxRuntime, describe_limits,
    runtime_from_name,
};

fn oci() -> OciRuntime {
    OciRuntime::detect().expect("crun must work on this machine (scripts/setup installs it)")
}

/// Bundles builder left in the temp dir (each run has its own, removed afterwards).
fn bundles() -> Vec<PathBuf> {
    std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("builder-oci-"))
        .map(|e| e.path())
        .collect()
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn enforced_or_reported(out: &ExecOutcome, label: &str) -> bool {
    if out.enforced_limits.iter().any(|l| l == label) {
        return true;
    }
    assert!(
        out.unenforced_limits.iter().any(|l| l == label),
        "{label} neither enforced nor reported: {out:?}"
    );
    eprintln!(
        "SKIPPED effect check, {label} not enforced here: {}",
        describe_limits()
    );
    false
}

#[tokio::test]
async fn runs_commands_with_exit_codes_and_output() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let rt = oci();
    for code in [0, 3, 101] {
        let out = run(&rt, &spec(dir.path(), &format!("echo hi; exit {code}"))).await;
        assert_eq!(out.exit_code, Some(code), "{out:?}");
        assert_eq!(out.output, "hi\n");
        assert_eq!(out.runtime, "oci");
    }
    let out = run(
        &rt,
        &spec(
            dir.path(),
            "pwd; echo made > made.txt; echo err >&2; id -u; hostname",
        ),
    )
    .await;
    assert!(out.success(), "{out:?}");
    assert_eq!(
        out.output,
        format!(
            "{}\nerr\n0\nbuilder-sandbox\n",
            dir.path().canonicalize().unwrap().display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("made.txt")).unwrap(),
        "made\n"
    );
    for l in [
        "network=none",
        "pid-namespace",
        "filesystem=workdir-only",
        "capabilities=none",
        "no-new-privileges",
        "seccomp=deny-list",
        "env=cleared",
    ] {
        assert!(out.enforced_limits.iter().any(|e| e == l), "{l}: {out:?}");
    }
    assert!(
        out.unenforced_limits
            .iter()
            .any(|l| l == "landlock=not configured"),
        "{out:?}"
    );
    let killed = run(&rt, &spec(dir.path(), "kill -9 $$")).await;
    assert!(!killed.success(), "{killed:?}");
    assert!(bundles().is_empty(), "{:?}", bundles());
}

#[tokio::test]
async fn picked_by_name() {
    let _s = SERIAL.lock().await;
    assert_eq!(runtime_from_name("oci").unwrap().name(), "oci");
    assert_eq!(runtime_from_name(" CRUN ").unwrap().name(), "oci");
}

#[tokio::test]
async fn a_timeout_kills_the_container() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let token = format!("oci-timeout-{}", std::process::id());
    let mut s = spec(dir.path(), &format!("echo started; sleep 100 # {token}"));
    s.limits.timeout = Duration::from_millis(800);
    let out = run(&oci(), &s).await;
    assert!(out.timed_out, "{out:?}");
    assert_eq!(out.killed_by.as_deref(), Some("timeout"));
    assert_eq!(out.exit_code, None);
    assert!(out.output.contains("started"), "{}", out.output);
    assert!(out.duration < Duration::from_secs(5), "{:?}", out.duration);
    assert_eq!(processes_mentioning(&token), Vec::<String>::new());
    assert!(bundles().is_empty(), "{:?}", bundles());
}

#[tokio::test]
async fn dropping_the_future_kills_and_deletes_the_container() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let marker = dir.path().join("marker");
    let token = format!("oci-drop-{}", std::process::id());
    // setsid: a process that leaves the process group is still the container's.
    let cmd = format!(
        "setsid sh -c 'sleep 1.5; touch {}' & sleep 100 # {token}",
        marker.display()
    );
    let rt = oci();
    let s = spec(dir.path(), &cmd);
    let mut fut = rt.run(&s);
    assert!(
        tokio::time::timeout(Duration::from_millis(600), &mut fut)
            .await
            .is_err()
    );
    assert!(!processes_mentioning(&token).is_empty(), "not started");
    drop(fut);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!marker.exists(), "the container survived the drop");
    assert_eq!(processes_mentioning(&token), Vec::<String>::new());
    assert!(bundles().is_empty(), "{:?}", bundles());
}

#[tokio::test]
async fn output_is_capped_to_its_tail() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let mut s = spec(dir.path(), "seq 1 200000");
    s.limits.max_output_bytes = 1000;
    let out = run(&oci(), &s).await;
    assert!(out.success(), "{out:?}");
    assert!(out.output.len() <= 1000);
    assert!(out.output.starts_with("[builder-sandbox: output truncated"));
    assert!(out.output.ends_with("200000\n"));
    assert!(out.output_bytes_total > 1_000_000);
}

#[tokio::test]
async fn no_network_and_no_host_files() {
    let _s = SERIAL.lock().await;
    let base = host_dir();
    let work = base.path().join("work");
    let other = base.path().join("other-feature");
    for d in [&work, &other] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(other.join("secret.txt"), "other feature's code").unwrap();
    let host = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = host.local_addr().unwrap().port();
    let cmd = format!(
        "cat {other}/secret.txt 2>/dev/null; ls {other} 2>/dev/null && echo OTHER_VISIBLE; \
         ls /root 2>/dev/null | grep -q . && echo ROOT_VISIBLE; \
         cat /etc/shadow 2>/dev/null && echo ETC_VISIBLE; \
         ls /home 2>/dev/null | grep -q . && echo HOME_VISIBLE; \
         cat /proc/[0-9]*/cmdline 2>/dev/null | grep -q 'oci-[0-9a-f]' && echo HOST_PIDS_VISIBLE; \
         (bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo HOST_LOOPBACK); \
         (bash -c 'exec 3<>/dev/tcp/1.1.1.1/443' 2>/dev/null && echo INTERNET); \
         ls /sys/class/net 2>/dev/null | grep -v '^lo$' | grep -q . && echo HAS_INTERFACES; \
         echo x > /usr/planted 2>/dev/null && echo USR_WRITTEN; \
         echo x > /planted 2>/dev/null && echo ROOT_WRITTEN; \
         echo 1 > /proc/sys/kernel/core_pattern 2>/dev/null && echo SYSCTL_WRITTEN; \
         env | grep -v -E '^(PATH|HOME|TMPDIR|LANG|CI|NO_COLOR|CARGO_[A-Z_]+|RUSTUP_[A-Z_]+|\
PYTHONPYCACHEPREFIX|PIP_[A-Z_]+|NPM_CONFIG_[A-Z_]+|GO[A-Z]+|PYENV_ROOT|PWD|SHLVL|_)=' \
           | sed 's/^/LEAKED_ENV /'; \
         python3 -c 'import sys; print(\"python\", sys.version_info[0])'; \
         echo done",
        other = other.display()
    );
    // SAFETY: a variable only this test reads; the runtime must not pass it on.
    unsafe { std::env::set_var("BUILDER_OCI_TEST_SECRET", "leak-me") };
    let out = run(&oci(), &spec(&work, &cmd)).await;
    drop(host);
    assert!(out.success(), "{out:?}");
    assert!(out.output.ends_with("python 3\ndone\n"), "{}", out.output);
    for leak in [
        "other feature's code",
        "OTHER_VISIBLE",
        "ROOT_VISIBLE",
        "ETC_VISIBLE",
        "HOME_VISIBLE",
        "HOST_PIDS_VISIBLE",
        "HOST_LOOPBACK",
        "INTERNET",
        "HAS_INTERFACES",
        "USR_WRITTEN",
        "ROOT_WRITTEN",
        "SYSCTL_WRITTEN",
        "LEAKED_ENV",
        "leak-me",
    ] {
        assert!(!out.output.contains(leak), "{leak}: {}", out.output);
    }
}

#[tokio::test]
async fn seccomp_refuses_kernel_attack_surface_and_nested_user_namespaces() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    if !cfg!(target_arch = "x86_64") {
        eprintln!("SKIPPED: syscall numbers in this test are x86_64's");
        return;
    }
    let py = "import ctypes\n\
              libc = ctypes.CDLL(None, use_errno=True)\n\
              for name, nr, args in [('ptrace', 101, (0, 0, 0, 0)), ('bpf', 321, (0, 0, 0)),\n\
                                     ('io_uring_setup', 425, (1, 0)),\n\
                                     ('unshare_user', 272, (0x10000000,))]:\n\
              \x20   ctypes.set_errno(0)\n\
              \x20   libc.syscall(nr, *args)\n\
              \x20   print(name, ctypes.get_errno())\n";
    let s = spec(
        dir.path(),
        &format!(
            "python3 -c \"{py}\"; python3 -c 'import subprocess; subprocess.run([\"true\"], check=True)' && echo spawn-ok"
        ),
    );
    let out = run(&oci(), &s).await;
    assert!(out.success(), "{out:?}");
    for name in ["ptrace", "bpf", "io_uring_setup", "unshare_user"] {
        assert!(
            out.output.contains(&format!("{name} 1\n")),
            "{name}: {}",
            out.output
        );
    }
    assert!(out.output.contains("spawn-ok"), "{}", out.output);
}

#[tokio::test]
async fn memory_and_pids_limits_hold() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let mut hog = spec(
        dir.path(),
        "python3 -c 'b = bytearray(400 * 1024 * 1024); print(\"ALLOCATED\")'",
    );
    hog.limits.memory_mb = Some(100);
    let out = run(&oci(), &hog).await;
    if enforced_or_reported(&out, "memory=100MB") {
        assert!(!out.output.contains("ALLOCATED"), "{out:?}");
        assert_eq!(out.killed_by.as_deref(), Some("memory limit"), "{out:?}");
    }
    let sleeper = format!("sleep 5.{}", std::process::id());
    let mut bomb = spec(
        dir.path(),
        &format!(
            "i=0; while [ $i -lt 500 ]; do {sleeper} & i=$((i+1)); done 2>/dev/null; echo loop-done"
        ),
    );
    bomb.max_pids = Some(32);
    bomb.limits.timeout = Duration::from_secs(30);
    let out = run(&oci(), &bomb).await;
    if enforced_or_reported(&out, "pids=32") {
        assert!(
            out.limits_hit.iter().any(|l| l.starts_with("pids: ")),
            "{out:?}"
        );
    }
    assert_eq!(processes_mentioning(&sleeper), Vec::<String>::new());
    // The private /tmp has the disk cap's size.
    let mut tmp = spec(
        dir.path(),
        "head -c 30000000 /dev/zero > /tmp/x && echo TMP_FILLED; true",
    );
    tmp.max_disk_mb = Some(20);
    let out = run(&oci(), &tmp).await;
    assert!(!out.output.contains("TMP_FILLED"), "{}", out.output);
    assert!(
        out.enforced_limits.iter().any(|l| l == "tmp=20MB"),
        "{out:?}"
    );
}

#[tokio::test]
async fn bad_specs_are_refused_before_crun_runs() {
    let _s = SERIAL.lock().await;
    let rt = oci();
    let r = rt.run(&CommandSpec::new("relative", "true")).await;
    assert!(matches!(r, Err(SandboxError::InvalidSpec(_))), "{r:?}");
}

#[tokio::test]
async fn cargo_test_runs_inside_the_container() {
    let _s = SERIAL.lock().await;
    let dir = host_dir();
    let w = dir.path();
    std::fs::create_dir(w.join("src")).unwrap();
    std::fs::write(
        w.join("Cargo.toml"),
        "[package]\nname = \"tiny\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        w.join("src/lib.rs"),
        "#[cfg(test)] mod t { #[test] fn one() { assert_eq!(1 + 1, 2); } }\n",
    )
    .unwrap();
    let mut s = spec(w, "cargo test --offline");
    s.env = vec![(
        "CARGO_TARGET_DIR".into(),
        w.join("target").display().to_string(),
    )];
    s.limits.timeout = Duration::from_secs(300);
    let out = run(&oci(), &s).await;
    assert!(out.success(), "{}", out.output);
    assert!(
        out.output.contains("test result: ok. 1 passed"),
        "{}",
        out.output
    );
}
