//! Real processes under the real runtimes (bwrap with Landlock, process, oci with crun):
//! exit codes, background jobs, cancellation, and real toolchains (cargo, pytest, node)
//! running inside the sandbox. Hostile workloads and limits are in `escape_tests.rs` (and
//! `oci.rs`, `landlock.rs`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::{bwrap, host_dir, processes_mentioning, run, spec};

use builder_sandbox::{OciRuntime, ProcessRuntime, SandboxRuntime};
use builder_testreport::{TestCounts, TestFramework, parse_test_counts};

fn oci() -> OciRuntime {
    OciRuntime::detect().expect("crun must work on this machine (scripts/setup installs it)")
}

#[tokio::test]
async fn background_processes_do_not_keep_a_finished_command_alive() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 3] = [
        Box::new(bwrap()),
        Box::new(ProcessRuntime::new()),
        Box::new(oci()),
    ];
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
async fn exit_codes_propagate() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 3] = [
        Box::new(bwrap()),
        Box::new(ProcessRuntime::new()),
        Box::new(oci()),
    ];
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
async fn dropping_the_future_kills_the_sandbox() {
    let dir = host_dir();
    let rts: [Box<dyn SandboxRuntime>; 3] = [
        Box::new(bwrap()),
        Box::new(ProcessRuntime::new()),
        Box::new(oci()),
    ];
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
    // `./scripts/setup` installs the pinned pytest.
    assert!(
        probe.success(),
        "pytest is not importable by python3 in the sandbox (run ./scripts/setup): {}",
        probe.output
    );
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

/// A read-only extra directory (a dependency cache filled by an earlier phase) can be read
/// and not written, under bwrap and crun alike.
#[tokio::test]
async fn readonly_extra_directories_are_readable_but_not_writable() {
    let work = host_dir();
    let cache = host_dir();
    std::fs::write(cache.path().join("dep.txt"), "fetched").unwrap();
    let cmd = format!(
        "cat {c}/dep.txt; echo; if echo x > {c}/poison 2>/dev/null; then echo WROTE; else echo REFUSED; fi",
        c = cache.path().display()
    );
    let mut s = spec(work.path(), &cmd);
    s.readonly_extra = vec![cache.path().to_path_buf()];
    let runtimes: Vec<Box<dyn SandboxRuntime>> = vec![
        Box::new(bwrap()),
        Box::new(OciRuntime::detect().expect("crun (scripts/setup installs it)")),
    ];
    for rt in runtimes {
        let out = run(rt.as_ref(), &s).await;
        assert!(out.success(), "{}: {out:?}", rt.name());
        assert!(
            out.output.contains("fetched"),
            "{}: {}",
            rt.name(),
            out.output
        );
        assert!(
            out.output.contains("REFUSED"),
            "{}: {}",
            rt.name(),
            out.output
        );
        assert!(!cache.path().join("poison").exists(), "{}", rt.name());
    }
}
