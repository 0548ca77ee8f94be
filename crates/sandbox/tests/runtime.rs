//! Real processes under the real runtimes: isolation properties of bwrap, limits, and real
//! toolchains (cargo, pytest, node) running inside the sandbox.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use builder_sandbox::{
    BwrapRuntime, CommandSpec, ExecOutcome, ProcessRuntime, SandboxLimits, SandboxRuntime,
    TestCounts, TestFramework, parse_test_counts,
};

fn bwrap() -> BwrapRuntime {
    BwrapRuntime::detect()
        .expect("bubblewrap must work on this machine (apt-get install bubblewrap)")
}

/// A temp dir outside `/tmp` (which the sandbox replaces by its own tmpfs), so that
/// "cannot see the host" is tested against a path that does exist on the host.
fn host_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbx-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

fn spec(workdir: &Path, command: &str) -> CommandSpec {
    CommandSpec {
        limits: SandboxLimits {
            timeout: Duration::from_secs(60),
            ..SandboxLimits::default()
        },
        ..CommandSpec::new(workdir, command)
    }
}

async fn run(rt: &dyn SandboxRuntime, spec: &CommandSpec) -> ExecOutcome {
    rt.run(spec).await.unwrap()
}

#[tokio::test]
async fn bwrap_workdir_is_writable_and_nothing_else_of_the_host_is() {
    let base = host_dir();
    let work = base.path().join("work");
    let sibling = base.path().join("sibling");
    let extra = base.path().join("cache");
    for d in [&work, &sibling, &extra] {
        std::fs::create_dir(d).unwrap();
    }
    std::fs::write(sibling.join("secret.txt"), "host secret").unwrap();
    let cmd = format!(
        "echo hi > out.txt && cat out.txt && pwd; \
         touch {extra}/cached && echo EXTRA_OK; \
         touch /usr/builder-x 2>/dev/null && echo USR_WRITABLE; \
         touch {sib}/new 2>/dev/null && echo SIBLING_WRITABLE; \
         cat {sib}/secret.txt 2>/dev/null; \
         ls /root/.cargo/credentials.toml 2>/dev/null && echo CREDS_VISIBLE; \
         cat /etc/pip.conf 2>/dev/null && echo ETC_PIP_VISIBLE; \
         exit 0",
        extra = extra.display(),
        sib = sibling.display()
    );
    let s = CommandSpec {
        writable_extra: vec![extra.clone()],
        ..spec(&work, &cmd)
    };
    let out = run(&bwrap(), &s).await;
    assert!(out.success(), "{out:?}");
    assert!(
        out.output
            .contains(&format!("hi\n{}\n", work.canonicalize().unwrap().display())),
        "{}",
        out.output
    );
    assert!(out.output.contains("EXTRA_OK"), "{}", out.output);
    for leak in [
        "USR_WRITABLE",
        "SIBLING_WRITABLE",
        "host secret",
        "CREDS_VISIBLE",
        "ETC_PIP_VISIBLE",
    ] {
        assert!(!out.output.contains(leak), "{leak}: {}", out.output);
    }
    assert_eq!(
        std::fs::read_to_string(work.join("out.txt")).unwrap(),
        "hi\n"
    );
    assert!(extra.join("cached").exists());
    assert!(!sibling.join("new").exists());
    assert!(!Path::new("/usr/builder-x").exists());
    assert!(out.enforced_limits.iter().any(|l| l == "network=none"));
}

#[tokio::test]
async fn bwrap_has_no_network_while_the_process_runtime_does() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = host_dir();
    let cmd = format!(
        "bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}' 2>/dev/null && echo CONNECTED || echo REFUSED"
    );
    let s = spec(dir.path(), &cmd);
    let control = run(&ProcessRuntime::new(), &s).await;
    assert!(
        control.output.contains("CONNECTED"),
        "control: {}",
        control.output
    );
    let out = run(&bwrap(), &s).await;
    assert!(out.output.contains("REFUSED"), "{}", out.output);
    assert!(!out.output.contains("CONNECTED"), "{}", out.output);
}

#[tokio::test]
async fn timeout_kills_the_command() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 2] = [Box::new(bwrap()), Box::new(ProcessRuntime::new())];
    for rt in rts {
        let mut s = spec(dir.path(), "echo started; sleep 100");
        s.limits.timeout = Duration::from_millis(800);
        let out = run(rt.as_ref(), &s).await;
        assert!(out.timed_out, "{}: {out:?}", rt.name());
        assert_eq!(out.exit_code, None);
        assert!(!out.success());
        assert!(out.output.contains("started"), "{}", out.output);
        assert!(
            out.duration < Duration::from_secs(5),
            "{}: {:?}",
            rt.name(),
            out.duration
        );
    }
}

#[tokio::test]
async fn background_processes_do_not_keep_a_finished_command_alive() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 2] = [Box::new(bwrap()), Box::new(ProcessRuntime::new())];
    for rt in rts {
        let out = run(rt.as_ref(), &spec(dir.path(), "sleep 100 & echo done")).await;
        assert_eq!(out.exit_code, Some(0), "{}: {out:?}", rt.name());
        assert!(out.output.contains("done"));
        assert!(
            out.duration < Duration::from_secs(5),
            "{}: {:?}",
            rt.name(),
            out.duration
        );
    }
}

#[tokio::test]
async fn output_is_combined_and_capped_keeping_the_tail() {
    let dir = host_dir();
    let mut s = spec(dir.path(), "echo to-stderr >&2; seq 1 200000");
    s.limits.max_output_bytes = 1000;
    let out = run(&bwrap(), &s).await;
    assert_eq!(out.exit_code, Some(0));
    assert!(out.output.len() <= 1000, "{}", out.output.len());
    assert!(
        out.output.starts_with("[builder-sandbox: output truncated"),
        "{}",
        out.output
    );
    assert!(out.output.ends_with("199999\n200000\n"));
    assert!(!out.output.contains("to-stderr"), "the head was dropped");
    let expected: u64 = "to-stderr\n".len() as u64
        + (1..=200000)
            .map(|i| format!("{i}\n").len() as u64)
            .sum::<u64>();
    assert_eq!(out.output_bytes_total, expected);

    let small = run(&bwrap(), &spec(dir.path(), "echo out; echo err >&2")).await;
    assert_eq!(small.output, "out\nerr\n");
}

#[tokio::test]
async fn exit_codes_propagate() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 2] = [Box::new(bwrap()), Box::new(ProcessRuntime::new())];
    for rt in rts {
        for code in [0, 3, 101] {
            let out = run(rt.as_ref(), &spec(dir.path(), &format!("exit {code}"))).await;
            assert_eq!(out.exit_code, Some(code), "{}", rt.name());
            assert!(!out.timed_out);
            assert_eq!(out.runtime, rt.name());
        }
        let killed = run(rt.as_ref(), &spec(dir.path(), "kill -9 $$")).await;
        assert!(!killed.success(), "{}: {killed:?}", rt.name());
    }
}

#[tokio::test]
async fn requested_memory_and_cpu_limits_are_reported_as_not_enforced() {
    let dir = host_dir();
    let mut s = spec(dir.path(), "true");
    s.limits.memory_mb = Some(512);
    s.limits.cpu = Some(1.5);
    let out = run(&bwrap(), &s).await;
    assert_eq!(
        out.unenforced_limits,
        vec!["memory=512MB".to_string(), "cpu=1.5".to_string()]
    );
    assert!(!out.enforced_limits.iter().any(|l| l.starts_with("memory")));
    let plain = run(&bwrap(), &spec(dir.path(), "true")).await;
    assert!(plain.unenforced_limits.is_empty());
}

fn processes_mentioning(token: &str) -> Vec<String> {
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

#[tokio::test]
async fn dropping_the_future_kills_the_sandbox() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 2] = [Box::new(bwrap()), Box::new(ProcessRuntime::new())];
    for rt in rts {
        let marker: PathBuf = dir.path().join(format!("marker-{}", rt.name().len()));
        let token = format!("drop-token-{}-{}", std::process::id(), rt.name().len());
        let cmd = format!("sleep 1.5 && touch {} # {token}", marker.display());
        let s = spec(dir.path(), &cmd);
        let mut fut = rt.run(&s);
        assert!(
            tokio::time::timeout(Duration::from_millis(400), &mut fut)
                .await
                .is_err()
        );
        assert!(
            !processes_mentioning(&token).is_empty(),
            "{}: not started",
            rt.name()
        );
        drop(fut);
        // The future is gone; give the command more than its sleep to prove it is gone too.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "{}: command survived the drop", rt.name());
        assert_eq!(
            processes_mentioning(&token),
            Vec::<String>::new(),
            "{}",
            rt.name()
        );
    }
}

#[tokio::test]
async fn cargo_test_runs_inside_bwrap_and_its_counts_parse() {
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
        "pub fn add(a: i32, b: i32) -> i32 { a + b }\n\
         #[cfg(test)] mod t {\n\
           #[test] fn one() { assert_eq!(super::add(1, 1), 2); }\n\
           #[test] fn two() { assert_eq!(super::add(2, 2), 4); }\n\
           #[test] #[ignore] fn slow() {}\n\
         }\n",
    )
    .unwrap();
    let mut s = spec(w, "cargo test --offline");
    s.env = vec![(
        "CARGO_TARGET_DIR".into(),
        w.join("target").display().to_string(),
    )];
    s.limits.timeout = Duration::from_secs(300);
    let started = Instant::now();
    let out = run(&bwrap(), &s).await;
    assert!(out.success(), "{}", out.output);
    assert_eq!(
        parse_test_counts(TestFramework::Cargo, &out.output),
        Some(TestCounts {
            passed: 2,
            failed: 0,
            ignored: 1
        }),
        "{}",
        out.output
    );
    assert!(
        w.join("target").is_dir(),
        "target dir inside the working copy"
    );
    eprintln!("cargo test in bwrap took {:?}", started.elapsed());
}

#[tokio::test]
async fn pytest_runs_inside_bwrap_and_keeps_bytecode_out_of_the_working_copy() {
    let dir = host_dir();
    let w = dir.path();
    let probe = run(&bwrap(), &spec(w, "python3 -c 'import pytest'")).await;
    if !probe.success() {
        eprintln!(
            "SKIPPED: pytest is not importable by python3 in the sandbox: {}",
            probe.output
        );
        return;
    }
    std::fs::write(
        w.join("test_math.py"),
        "import pytest\n\
         def test_a(): assert 1 + 1 == 2\n\
         def test_b(): assert 2 * 2 == 4\n\
         def test_c(): assert 1 == 2\n\
         @pytest.mark.skip\ndef test_d(): pass\n",
    )
    .unwrap();
    let out = run(
        &bwrap(),
        &spec(w, "python3 -m pytest -q -p no:cacheprovider"),
    )
    .await;
    assert_eq!(out.exit_code, Some(1), "{}", out.output);
    assert_eq!(
        parse_test_counts(TestFramework::Pytest, &out.output),
        Some(TestCounts {
            passed: 2,
            failed: 1,
            ignored: 1
        }),
        "{}",
        out.output
    );
    assert!(
        !w.join("__pycache__").exists(),
        "bytecode was written into the working copy"
    );
}

#[tokio::test]
async fn npm_test_with_node_test_runs_inside_bwrap_and_its_counts_parse() {
    let dir = host_dir();
    let w = dir.path();
    std::fs::write(
        w.join("math.test.js"),
        "const test = require('node:test');\nconst assert = require('node:assert');\n\
         test('adds', () => assert.strictEqual(1 + 1, 2));\n\
         test('multiplies', () => assert.strictEqual(2 * 2, 4));\n\
         test('broken', () => assert.strictEqual(1, 2));\n\
         test.skip('later', () => {});\n",
    )
    .unwrap();
    std::fs::write(
        w.join("package.json"),
        r#"{"name": "t", "version": "1.0.0", "scripts": {"test": "node --test"}}"#,
    )
    .unwrap();
    // Through npm, as builder-analysis detects it: npm needs its cache in the private HOME.
    let out = run(&bwrap(), &spec(w, "npm test")).await;
    assert_eq!(out.exit_code, Some(1), "{}", out.output);
    assert_eq!(
        parse_test_counts(TestFramework::Npm, &out.output),
        Some(TestCounts {
            passed: 2,
            failed: 1,
            ignored: 1
        }),
        "{}",
        out.output
    );
}
