//! Verification tells the truth on Rust repositories, end to end through the real binary,
//! the real BAML sidecar, bwrap and cargo: the fixtures reproduce what real repositories
//! showed (stale output shared with the baseline, test binaries that record their tree,
//! a first failing test binary that hid the rest, dependencies from a registry).

mod common;

use builder_testkit::make_bare_repo;
use common::*;
use llm_script_server::{Entry, Script, start};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ANALYSIS_RS: &str = r#"{"summary": "change the library", "affected_files": ["src/lib.rs"], "risks": [], "acceptance_interpretation": []}"#;

fn plan(files: &[&str]) -> String {
    json!({
        "summary": "one change",
        "steps": [{"index": 0, "description": "make the change", "step_type": "MODIFY_FILE",
                   "target_files": files, "dependencies": []}],
        "affected_files": files,
    })
    .to_string()
}

fn replace(path: &str, content: &str) -> Value {
    json!({"path": path, "action": "REPLACE_FILE", "content": content})
}

fn edits(list: Vec<Value>) -> String {
    json!({"summary": "the change", "edits": list}).to_string()
}

/// A script whose every GenerateEdits answer (first try and repairs) is `edit`.
fn script(files: &[&str], edit: &str) -> Vec<Entry> {
    let mut v = vec![
        Entry::text(ANALYSIS_RS).when_contains("Task: AnalyzeFeature"),
        Entry::text(plan(files)).when_contains("Task: PlanFeature"),
    ];
    for _ in 0..4 {
        v.push(Entry::text(edit).when_contains("Task: GenerateEdits"));
    }
    v.push(Entry::text(APPROVE).when_contains("Task: ValidateChange"));
    v
}

/// Registers `bare` (file://) and submits one feature; returns its final execution and
/// events.
fn run_feature(server: &Server, bare: &Path) -> (Value, Vec<Value>) {
    let (code, body) = call(
        server,
        "builder.repository.v1.RepositoryService/Register",
        json!({"name": "fixture", "url": format!("file://{}", bare.display())}),
    );
    assert_eq!(code, 200, "{body}");
    let repo = body["repository"]["id"].as_str().unwrap().to_string();
    let (code, body) = call(
        server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {"title": "Change the library", "repositoryId": repo,
               "description": "Change the library as the plan says."}}),
    );
    assert_eq!(code, 200, "{body}");
    let id = body["execution"]["id"].as_str().unwrap().to_string();
    let execution = wait_terminal(server, &id, Duration::from_secs(600));
    (execution, events(server, &id))
}

fn env_for(
    llm: &llm_script_server::Running,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env = llm_env(llm);
    env.push(("BUILDER_MAX_REPAIR_ITERATIONS", "1".into()));
    env.push(("SANDBOX_TIMEOUT_SECONDS", "300".into()));
    env.extend(extra.iter().cloned());
    env
}

fn of_type<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["type"] == ty).collect()
}

fn own(events: &[Value], ty: &str) -> Vec<Value> {
    of_type(events, ty)
        .into_iter()
        .filter(|e| e["payload"]["baseline"] != true)
        .cloned()
        .collect()
}

/// A library whose compilation takes seconds (constant evaluation), with no build script:
/// a build script's run is tied to its tree's path, which would hide the hazard.
const SLOW_LIB: &str = "#![allow(long_running_const_eval)]\npub const SLOW: u64 = {\n    let mut i = 0u64;\n    let mut s = 0u64;\n    while i < 3_000_000 {\n        s = s.wrapping_add(i ^ (s >> 3));\n        i += 1;\n    }\n    s\n};\n\npub fn value() -> u32 {\n    1\n}\n";
const LIB: &str = "pub fn value() -> u32 {\n    1\n}\n";
const LIB_TEST: &str = "#[test]\nfn value_is_positive() {\n    assert!(fixture::value() > 0);\n}\n";

/// Item 1: the edit is written while the baseline copy is still compiling (its library takes
/// seconds to compile). With one shared target directory cargo took the baseline's fresher
/// artifacts for the edited sources and reported a change that cannot compile as built and
/// tested.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_written_while_the_baseline_compiles_is_built_for_real() {
    let repos = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        repos.path(),
        "slow",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("src/lib.rs", SLOW_LIB),
            ("tests/value.rs", LIB_TEST),
            (".gitignore", "/target\nCargo.lock\n"),
        ],
    )
    .unwrap();
    let broken = edits(vec![replace(
        "src/lib.rs",
        &format!("{SLOW_LIB}\nfn broken( {{\n"),
    )]);
    let llm = start(Script::new(script(&["src/lib.rs"], &broken)))
        .await
        .unwrap();
    let server = start_server(&env_for(&llm, &[]));
    let (execution, events) = run_feature(&server, &bare);
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "BUILD_FAILED", "{execution}");
    assert!(of_type(&events, "feature.delivered").is_empty());
    let builds = own(&events, "build.completed");
    assert!(!builds.is_empty(), "{:?}", types(&events));
    assert!(
        builds.iter().all(|b| b["payload"]["success"] == false),
        "a change that cannot compile was reported as built: {builds:#?}"
    );
    // The baseline ran on its own tree and said so as it went.
    for ty in [
        "build.started",
        "build.completed",
        "tests.started",
        "tests.completed",
    ] {
        assert!(
            of_type(&events, ty)
                .iter()
                .any(|e| e["payload"]["baseline"] == true),
            "no baseline {ty}: {:?}",
            types(&events)
        );
    }
}

/// Item 1, second half: a test binary that reads files through `CARGO_MANIFEST_DIR` runs
/// from the tree it was built for, so a correct change is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_test_binary_that_records_its_tree_runs_on_the_working_copy() {
    let repos = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        repos.path(),
        "manifest",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("src/lib.rs", LIB),
            ("data/expected.txt", "1\n"),
            (
                "tests/data.rs",
                "#[test]\nfn value_matches_the_data_file() {\n    let path = concat!(env!(\"CARGO_MANIFEST_DIR\"), \"/data/expected.txt\");\n    let want: u32 = std::fs::read_to_string(path).unwrap().trim().parse().unwrap();\n    assert_eq!(fixture::value(), want);\n}\n",
            ),
            (".gitignore", "/target\nCargo.lock\n"),
        ],
    )
    .unwrap();
    let right = edits(vec![
        replace("src/lib.rs", "pub fn value() -> u32 {\n    2\n}\n"),
        replace("data/expected.txt", "2\n"),
    ]);
    let llm = start(Script::new(script(
        &["src/lib.rs", "data/expected.txt"],
        &right,
    )))
    .await
    .unwrap();
    let server = start_server(&env_for(&llm, &[]));
    let (execution, events) = run_feature(&server, &bare);
    assert_eq!(
        execution["state"],
        "COMPLETED",
        "{execution}\n{}",
        server_log(&server)
    );
    let tests = own(&events, "tests.completed");
    let last = tests.last().expect("the feature's own tests ran");
    assert_eq!(last["payload"]["failed"].as_f64(), Some(0.0), "{last}");
    assert!(
        last["payload"]["passed"].as_f64().unwrap_or(0.0) >= 1.0,
        "{last}"
    );
}

/// Item 2: in a workspace whose first test binary already fails, the later binaries still
/// run, so a change that breaks one of them is not delivered behind the tolerated failure.
#[tokio::test(flavor = "multi_thread")]
async fn every_test_binary_runs_after_a_failing_one() {
    let repos = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        repos.path(),
        "workspace",
        &[
            ("Cargo.toml", "[workspace]\nmembers = [\"a\", \"b\"]\nresolver = \"2\"\n"),
            (
                "a/Cargo.toml",
                "[package]\nname = \"a\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            (
                "a/src/lib.rs",
                "#[cfg(test)]\nmod tests {\n    #[test]\n    fn already_broken() {\n        assert_eq!(1, 2);\n    }\n    #[test]\n    fn fine() {}\n}\n",
            ),
            (
                "b/Cargo.toml",
                "[package]\nname = \"b\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
            ),
            ("b/src/lib.rs", "pub fn double(x: u32) -> u32 {\n    x * 2\n}\n"),
            (
                "b/tests/double.rs",
                "#[test]\nfn doubles() {\n    assert_eq!(b::double(2), 4);\n}\n",
            ),
            (".gitignore", "/target\nCargo.lock\n"),
        ],
    )
    .unwrap();
    let breaks_b = edits(vec![replace(
        "b/src/lib.rs",
        "pub fn double(x: u32) -> u32 {\n    x * 3\n}\n",
    )]);
    let llm = start(Script::new(script(&["b/src/lib.rs"], &breaks_b)))
        .await
        .unwrap();
    let server = start_server(&env_for(&llm, &[]));
    let (execution, events) = run_feature(&server, &bare);
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "TEST_FAILED", "{execution}");
    let tests = own(&events, "tests.completed");
    let last = tests.last().expect("the feature's own tests ran");
    let failures = last["payload"]["failures"].to_string();
    assert!(
        failures.contains("doubles"),
        "b's test ran and failed: {last}"
    );
    assert!(failures.contains("already_broken"), "{last}");
    // The baseline saw a's failure too, and only that one.
    let baseline = of_type(&events, "tests.completed")
        .into_iter()
        .find(|e| e["payload"]["baseline"] == true)
        .expect("a baseline test run");
    assert_eq!(
        baseline["payload"]["failed"].as_f64(),
        Some(1.0),
        "{baseline}"
    );
}

/// A sparse cargo registry on loopback serving one crate, recording every request path.
struct Registry {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

fn sparse_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let pkg = dir.path().join("fixdep-0.1.0");
    std::fs::create_dir_all(pkg.join("src")).unwrap();
    std::fs::write(
        pkg.join("Cargo.toml"),
        "[package]\nname = \"fixdep\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    )
    .unwrap();
    std::fs::write(
        pkg.join("src/lib.rs"),
        "pub fn answer() -> u32 {\n    42\n}\n",
    )
    .unwrap();
    let status = std::process::Command::new("tar")
        .current_dir(dir.path())
        .args(["-czf", "fixdep-0.1.0.crate", "fixdep-0.1.0"])
        .status()
        .unwrap();
    assert!(status.success());
    let krate = std::fs::read(dir.path().join("fixdep-0.1.0.crate")).unwrap();
    let sum = std::process::Command::new("sha256sum")
        .arg(dir.path().join("fixdep-0.1.0.crate"))
        .output()
        .unwrap();
    let cksum = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    files.insert(
        "/index/config.json".into(),
        format!(r#"{{"dl": "http://127.0.0.1:{port}/dl/{{crate}}/{{version}}/download"}}"#)
            .into_bytes(),
    );
    files.insert(
        "/index/fi/xd/fixdep".into(),
        format!(
            "{}\n",
            json!({"name": "fixdep", "vers": "0.1.0", "deps": [], "cksum": cksum,
                   "features": {}, "yanked": false})
        )
        .into_bytes(),
    );
    files.insert("/dl/fixdep/0.1.0/download".into(), krate);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(clone);
            let mut request = String::new();
            if reader.read_line(&mut request).is_err() {
                continue;
            }
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            // Through a proxy the request line may carry the absolute URL.
            let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
            let path = match target.split_once("://") {
                Some((_, rest)) => rest
                    .find('/')
                    .map_or("/".to_string(), |i| rest[i..].to_string()),
                None => target,
            };
            seen2.lock().unwrap().push(path.clone());
            let response = match files.get(&path) {
                Some(body) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = stream.write_all(&response);
        }
    });
    std::mem::forget(dir);
    Registry { port, seen }
}

fn registry_repo(root: &Path, port: u16) -> std::path::PathBuf {
    make_bare_repo(
        root,
        "withdep",
        &[
            (
                "Cargo.toml",
                "[package]\nname = \"fixture\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nfixdep = \"0.1\"\n",
            ),
            (
                ".cargo/config.toml",
                &format!(
                    "[source.crates-io]\nreplace-with = \"fixture\"\n\n[source.fixture]\nregistry = \"sparse+http://127.0.0.1:{port}/index/\"\n"
                ),
            ),
            ("src/lib.rs", "pub fn value() -> u32 {\n    fixdep::answer()\n}\n"),
            (
                "tests/value.rs",
                "#[test]\nfn value_is_the_answer() {\n    assert!(fixture::value() >= 42);\n}\n",
            ),
            (".gitignore", "/target\nCargo.lock\n"),
        ],
    )
    .unwrap()
}

/// Item 3: dependencies come from a registry (here a sparse registry on loopback) in a
/// dependency phase that may reach only the registries; build and tests then run with no
/// network, and the change is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn dependencies_are_fetched_in_their_own_phase_then_built_offline() {
    let registry = sparse_registry();
    let repos = tempfile::tempdir().unwrap();
    let bare = registry_repo(repos.path(), registry.port);
    let right = edits(vec![replace(
        "src/lib.rs",
        "pub fn value() -> u32 {\n    fixdep::answer() + 1\n}\n",
    )]);
    let llm = start(Script::new(script(&["src/lib.rs"], &right)))
        .await
        .unwrap();
    let allow = format!("127.0.0.1:{}", registry.port);
    let server = start_server(&env_for(
        &llm,
        &[("BUILDER_DEPS_EGRESS_WHITELIST", allow.clone())],
    ));
    let (execution, events) = run_feature(&server, &bare);
    assert_eq!(
        execution["state"],
        "COMPLETED",
        "{execution}\n{}",
        server_log(&server)
    );
    let deps = own(&events, "dependencies.completed");
    assert!(
        deps.iter().all(|d| d["payload"]["success"] == true) && !deps.is_empty(),
        "{deps:#?}"
    );
    let started = own(&events, "dependencies.started");
    assert!(
        started[0]["payload"]["hosts"].to_string().contains(&allow),
        "{started:#?}"
    );
    let seen = registry.seen.lock().unwrap().clone();
    assert!(
        seen.iter().any(|p| p == "/dl/fixdep/0.1.0/download"),
        "the crate was downloaded from the registry: {seen:?}"
    );
}

/// Item 3 and 4: without the registry on the allow-list the untouched code cannot fetch its
/// dependencies; the feature ends as an environment problem and no repair is attempted.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_registry_fails_promptly_as_an_environment_problem() {
    let registry = sparse_registry();
    let repos = tempfile::tempdir().unwrap();
    let bare = registry_repo(repos.path(), registry.port);
    let right = edits(vec![replace(
        "src/lib.rs",
        "pub fn value() -> u32 {\n    1\n}\n",
    )]);
    let llm = start(Script::new(script(&["src/lib.rs"], &right)))
        .await
        .unwrap();
    let server = start_server(&env_for(&llm, &[]));
    let (execution, events) = run_feature(&server, &bare);
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "BUILD_FAILED", "{execution}");
    let message = execution["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("environment problem"), "{message}");
    assert!(
        of_type(&events, "iteration.started").is_empty(),
        "no repair: {:?}",
        types(&events)
    );
    let generated = llm
        .requests()
        .iter()
        .filter(|r| r.body.to_string().contains("Task: GenerateEdits"))
        .count();
    assert!(
        generated <= 1,
        "no repair iteration asked the model again ({generated})"
    );
    assert!(
        registry.seen.lock().unwrap().is_empty(),
        "the registry was never reached"
    );
}

/// Item 6: the baseline says when it starts, and its result is recorded even when the
/// feature fails before verification (here its first LLM call is refused).
#[tokio::test(flavor = "multi_thread")]
async fn the_baseline_is_recorded_even_when_the_feature_fails_first() {
    let repos = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        repos.path(),
        "py",
        &[
            ("calc.py", CALC),
            (
                "tests/test_calc.py",
                "import time\n\nfrom calc import add\n\n\ndef test_add():\n    time.sleep(3)\n    assert add(1, 2) == 3\n",
            ),
        ],
    )
    .unwrap();
    let llm = start(Script::new(vec![
        Entry::error(401).when_contains("Task: AnalyzeFeature"),
    ]))
    .await
    .unwrap();
    let server = start_server(&env_for(&llm, &[]));
    let (execution, _) = run_feature(&server, &bare);
    assert_eq!(execution["state"], "FAILED", "{execution}");
    let id = execution["id"].as_str().unwrap().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = events(&server, &id);
        if of_type(&events, "tests.completed")
            .iter()
            .any(|e| e["payload"]["baseline"] == true)
        {
            break events;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no baseline result: {:?}\n{}",
            types(&events),
            server_log(&server)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let kinds = types(&events);
    let failed_at = kinds.iter().position(|t| t == "feature.failed").unwrap();
    let started_at = events
        .iter()
        .position(|e| e["type"] == "tests.started" && e["payload"]["baseline"] == true)
        .expect("tests.started with baseline: true");
    let completed_at = events
        .iter()
        .position(|e| e["type"] == "tests.completed" && e["payload"]["baseline"] == true)
        .unwrap();
    assert!(started_at < completed_at, "{kinds:?}");
    assert!(
        failed_at < completed_at,
        "recorded after the failure: {kinds:?}"
    );
    let baseline = &events[completed_at]["payload"];
    assert_eq!(baseline["passed"].as_f64(), Some(1.0), "{baseline}");
}
