//! End-to-end: the real `builder serve` binary on a temporary data directory, a real git
//! repository over smart HTTP with basic auth (`git http-backend`), the real BAML sidecar,
//! the real bubblewrap sandbox running pytest, and the scripted LLM as the only stand-in.

mod common;

use builder_testkit::{GitHttpServer, make_bare_repo, read_branch_file};
use common::*;
use llm_script_server::{Entry, Script};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

async fn delivers_with_a_repair(database_url: Option<String>) {
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        // Written slowly enough that the stream shows it half-done.
        Entry::text(PLAN)
            .when_contains("Task: PlanFeature")
            .chunk_delay_ms(5),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(FIX_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let mut env = llm_env(&llm);
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
        env.push(("DO_DATABASE_MIGRATE", "true".into()));
    }
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);

    // The CLI submits and watches; it exits 0 only on delivery.
    let out = cli(
        &server,
        &[
            "feature",
            "create",
            "--repo",
            &repo_id,
            "--title",
            "Add a greeting",
            "--description",
            "Add greet(name) to calc.py returning 'Hello, <name>!' with a test.",
            "--criterion",
            "greet('Bob') returns 'Hello, Bob!'",
            "--path-hint",
            "calc.py",
            "--watch",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        out.status.success(),
        "watch failed\n{stdout}\n{stderr}\nserver log:\n{}",
        std::fs::read_to_string(&server.log).unwrap_or_default()
    );
    assert!(
        stdout.contains("iteration.started") && stdout.contains("feature.delivered"),
        "{stdout}"
    );
    let id = stderr.split_whitespace().nth(1).unwrap().to_string();

    let events = events(&server, &id);
    assert_gapless(&events);
    let t = types(&events);
    assert_eq!(t.first().map(String::as_str), Some("feature.requested"));
    assert_eq!(t.last().map(String::as_str), Some("feature.delivered"));
    for expected in [
        "repository.clone.completed",
        "codebase.analyzed",
        "plan.generated",
        "file.modified",
        "sandbox.created",
        "tests.completed",
        "verification.failed",
        "iteration.started",
        "verification.passed",
        "commit.created",
        "push.completed",
    ] {
        assert!(
            t.iter().any(|x| x == expected),
            "missing {expected} in {t:?}"
        );
    }
    // The model's answers were streamed: partial output is in the stream as it was written.
    let partials: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "llm.output.partial")
        .collect();
    assert!(
        partials
            .iter()
            .any(|p| p["payload"]["function"] == "PlanFeature"
                && p["payload"]["chars"].as_f64().unwrap_or(0.0) > 0.0),
        "{partials:?}"
    );
    // The untouched code's own run, started beside analysis and planning.
    let baseline: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tests.completed" && e["payload"]["baseline"] == true)
        .collect();
    assert_eq!(baseline.len(), 1, "one baseline run");
    assert_eq!(baseline[0]["payload"]["success"], true);
    assert_eq!(baseline[0]["payload"]["passed"].as_f64(), Some(1.0));
    let tests: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tests.completed" && e["payload"]["baseline"] != true)
        .collect();
    assert_eq!(tests.len(), 2, "one failing run, one passing run");
    assert_eq!(tests[0]["payload"]["success"], false);
    // Per-test results from pytest's JUnit report.
    assert_eq!(tests[0]["payload"]["report_format"], "junit_xml");
    let failures = tests[0]["payload"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(
        failures[0]["name"].as_str().unwrap().contains("test_greet"),
        "{failures:?}"
    );
    assert!(tests[0]["payload"]["failed"].as_f64().unwrap() >= 1.0);
    assert!(
        tests[0]["payload"]["outputTail"]
            .as_str()
            .unwrap_or_default()
            .contains("Hello, Bob!")
            || tests[0]["payload"]["output_tail"]
                .as_str()
                .unwrap_or_default()
                .contains("Hello, Bob!")
    );
    assert_eq!(tests[1]["payload"]["success"], true);
    assert_eq!(tests[1]["payload"]["passed"].as_f64(), Some(2.0));

    // The repair prompt carried the real pytest output.
    let repair_prompt = llm
        .requests()
        .iter()
        .filter(|r| r.body.to_string().contains("Task: GenerateEdits"))
        .nth(1)
        .map(|r| r.body.to_string())
        .expect("a second GenerateEdits call");
    assert!(
        repair_prompt.contains("Hello, Bob!") && repair_prompt.contains("Hi Bob"),
        "repair prompt lacks the test output"
    );
    assert!(
        repair_prompt.contains("Failed tests:")
            && repair_prompt.contains("Before the change: 1 passed"),
        "repair prompt lacks the failed tests and the baseline"
    );
    // The key reached the provider per request.
    assert!(llm.requests().iter().all(|r| r.headers.iter().any(
        |(k, v)| k == "authorization" && v.contains(&llm_script_server::fingerprint(LLM_KEY))
    )));

    let execution = wait_terminal(&server, &id, Duration::from_secs(5));
    assert_eq!(execution["state"], "COMPLETED");
    let branch = execution["result"]["branchName"].as_str().unwrap();
    let sha = execution["result"]["commitSha"].as_str().unwrap();
    let calc = read_branch_file(&bare, branch, "calc.py").expect("the branch was pushed");
    assert!(calc.contains("return f'Hello, {name}!'"), "{calc}");
    assert!(read_branch_file(&bare, branch, "tests/test_greet.py").is_some());
    let remote_sha = Command::new("git")
        .arg("--git-dir")
        .arg(&bare)
        .args(["rev-parse", branch])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&remote_sha.stdout).trim(), sha);
    assert!(
        read_branch_file(&bare, "main", "tests/test_greet.py").is_none(),
        "main is untouched"
    );
    assert_no_secrets(&server, &events);

    // Artifacts: the patch and the logs of both test runs.
    let (code, arts) = call(
        &server,
        "builder.feature.v1.FeatureService/GetArtifacts",
        json!({"featureExecutionId": id}),
    );
    assert_eq!(code, 200);
    let names: Vec<&str> = arts["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"change.patch")
            && names.contains(&"tests-1.log")
            && names.contains(&"tests-2.log"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_with_a_repair_on_sqlite() {
    delivers_with_a_repair(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_with_a_repair_on_postgres() {
    let base = std::env::var("BUILDER_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into());
    let db = format!("builder_e2e_{}", uuid::Uuid::now_v7().simple());
    let admin = |sql: &str| {
        let out = Command::new("psql")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql: {} (is PostgreSQL running on 127.0.0.1:5432?)",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    admin(&format!("CREATE DATABASE {db}"));
    let url = base.replace("/postgres?", &format!("/{db}?"));
    delivers_with_a_repair(Some(url)).await;
    admin(&format!("DROP DATABASE {db} WITH (FORCE)"));
}

#[tokio::test(flavor = "multi_thread")]
async fn verification_that_keeps_failing_ends_in_feature_failed_with_the_output() {
    let (_root, _bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        // The "repair" changes nothing that matters.
        Entry::text(r#"{"summary": "noop", "edits": [{"path": "notes.txt", "action": "CREATE", "content": "tried\n"}]}"#).when_contains("Task: GenerateEdits"),
    ]))
    .await
    .unwrap();
    let mut env = llm_env(&llm);
    env.push(("BUILDER_MAX_REPAIR_ITERATIONS", "1".into()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(execution["error"]["code"], "TEST_FAILED");
    assert!(
        execution["error"]["details"]
            .as_str()
            .unwrap()
            .contains("Hello, Bob!"),
        "the test output is attached: {execution}"
    );
    let events = events(&server, &id);
    assert_gapless(&events);
    let t = types(&events);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "tests.completed" && e["payload"]["baseline"] != true)
            .count(),
        2
    );
    assert_eq!(t.iter().filter(|x| *x == "iteration.started").count(), 1);
    assert!(
        !t.iter().any(|x| x.starts_with("push")),
        "nothing is pushed"
    );
    assert_no_secrets(&server, &events);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_repository_ends_the_feature_with_a_clear_reason() {
    let port = builder_testkit::closed_port().unwrap();
    let server = start_server(&[]);
    let (code, answer) = call(
        &server,
        "builder.repository.v1.RepositoryService/Register",
        json!({"name": "gone", "url": format!("http://127.0.0.1:{port}/app.git"), "defaultBranch": "main",
               "credential": {"type": "TOKEN", "token": "tok-unreachable-Q9"}}),
    );
    assert_eq!(code, 200, "{answer}");
    let id = create(&server, answer["repository"]["id"].as_str().unwrap());
    let execution = wait_terminal(&server, &id, Duration::from_secs(60));
    assert_eq!(
        execution["error"]["code"], "REPOSITORY_ACCESS",
        "{execution}"
    );
    assert_eq!(
        execution["error"]["retryable"], true,
        "a network failure is worth retrying: {execution}"
    );
    let events = events(&server, &id);
    let retries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "step.retrying")
        .collect();
    assert_eq!(
        retries.len(),
        3,
        "each transient failure is retried with backoff, visibly"
    );
    let delays: Vec<f64> = retries
        .iter()
        .map(|e| e["payload"]["delay_ms"].as_f64().unwrap())
        .collect();
    assert!(
        delays[0] < delays[1] && delays[1] < delays[2],
        "exponential: {delays:?}"
    );
    assert!(
        !serde_json::to_string(&events)
            .unwrap()
            .contains("tok-unreachable-Q9")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_step_that_runs_too_long_ends_the_feature_with_timeout() {
    let (_root, _bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![Entry::text(ANALYSIS).delay_ms(60_000)]))
        .await
        .unwrap();
    let mut env = llm_env(&llm);
    env.push(("BUILDER_STEP_TIMEOUT_SECONDS", "2".into()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    // The feature picks its own model; provider and key stay the server's.
    let (code, body) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {
            "title": "Slow model",
            "description": "A feature whose model never answers in time.",
            "repositoryId": repo_id,
            "properties": {"llm.model": "feature-chosen-model"},
        }}),
    );
    assert_eq!(code, 200, "{body}");
    let id = body["execution"]["id"].as_str().unwrap().to_string();
    let execution = wait_terminal(&server, &id, Duration::from_secs(20));
    assert_eq!(execution["error"]["code"], "TIMEOUT", "{execution}");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BUILDER_STEP_TIMEOUT_SECONDS"),
        "{execution}"
    );
    let events = events(&server, &id);
    assert_gapless(&events);
    let invocation = events
        .iter()
        .find(|e| e["type"] == "llm.invocation.started")
        .unwrap();
    assert_eq!(invocation["payload"]["model"], "feature-chosen-model");
    assert!(
        llm.requests()[0]
            .body
            .to_string()
            .contains("feature-chosen-model")
    );
}

/// A GitHub stand-in with the documented pulls endpoints; it refuses a pull request for a
/// branch the real git server does not have.
async fn fake_github(
    bare: PathBuf,
    token: &'static str,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<Value>>>) {
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::get;
    type Pulls = std::sync::Arc<std::sync::Mutex<Vec<Value>>>;
    let pulls: Pulls = Default::default();
    let authorized = move |h: &HeaderMap| {
        h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {token}"))
    };
    let list = {
        move |State(p): State<Pulls>, h: HeaderMap| async move {
            if !authorized(&h) {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"message": "Bad credentials"})),
                );
            }
            (
                StatusCode::OK,
                axum::Json(Value::Array(p.lock().unwrap().clone())),
            )
        }
    };
    let create = move |State(p): State<Pulls>,
                       h: HeaderMap,
                       axum::Json(body): axum::Json<Value>| {
        let bare = bare.clone();
        async move {
            if !authorized(&h) {
                return (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"message": "Bad credentials"})),
                );
            }
            let head = body["head"].as_str().unwrap_or_default().to_string();
            let exists = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args([
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("refs/heads/{head}"),
                ])
                .status()
                .unwrap()
                .success();
            if !exists {
                return (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(
                        json!({"message": "Validation Failed", "errors": [{"field": "head", "code": "invalid"}]}),
                    ),
                );
            }
            let mut p = p.lock().unwrap();
            let number = p.len() as u64 + 1;
            let pr = json!({"number": number, "html_url": format!("https://github.example/acme/app/pull/{number}"),
                            "state": "open", "head": {"ref": head}, "title": body["title"], "body": body["body"]});
            p.push(pr.clone());
            (StatusCode::CREATED, axum::Json(pr))
        }
    };
    let app = axum::Router::new()
        .route("/repos/acme/app/pulls", get(list).post(create))
        .route(
            "/repos/acme/app/pulls/{n}",
            axum::routing::patch(|UrlPath(n): UrlPath<u64>| async move {
                axum::Json(json!({"number": n, "html_url": "x"}))
            }),
        )
        .with_state(pulls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, pulls)
}

#[tokio::test(flavor = "multi_thread")]
async fn delivery_opens_a_pull_request_on_the_forge() {
    let root = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        root.path(),
        "acme/app",
        &[("calc.py", CALC), ("tests/test_calc.py", TEST_CALC)],
    )
    .unwrap();
    let git = GitHttpServer::start(root.path(), GIT_USER, GIT_PASSWORD).unwrap();
    let (forge_url, pulls) = fake_github(bare.clone(), GIT_PASSWORD).await;
    let llm = llm_script_server::start(Script::new(happy_path()))
        .await
        .unwrap();
    let server = start_server(&llm_env(&llm));
    let (code, body) = call(
        &server,
        "builder.repository.v1.RepositoryService/Register",
        json!({"name": "gh", "url": git.url("acme/app.git"), "provider": "GITHUB",
               "properties": {"forge_api_base": forge_url},
               "credential": {"type": "TOKEN", "token": GIT_PASSWORD, "username": GIT_USER}}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["repository"]["provider"], "GITHUB");
    let id = create(&server, body["repository"]["id"].as_str().unwrap());
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "COMPLETED", "{execution}");
    assert_eq!(
        execution["result"]["pullRequestUrl"], "https://github.example/acme/app/pull/1",
        "{execution}"
    );
    let pulls = pulls.lock().unwrap().clone();
    assert_eq!(pulls.len(), 1, "one pull request");
    assert_eq!(pulls[0]["head"]["ref"], execution["result"]["branchName"]);
    let pr_body = pulls[0]["body"].as_str().unwrap();
    assert!(
        pr_body.contains("Plan") && pr_body.contains("passed") && pr_body.contains(&id),
        "{pr_body}"
    );
    let events = events(&server, &id);
    assert!(types(&events).iter().any(|t| t == "pull_request.opened"));
    assert_no_secrets(&server, &events);
}

/// A test that already failed before the feature does not block it: the baseline run on
/// the untouched code names it, and only new failures count (BUILDER_VERIFY_BASELINE's
/// default, `tolerate`).
#[tokio::test(flavor = "multi_thread")]
async fn a_failure_that_predates_the_feature_does_not_block_delivery() {
    let root = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        root.path(),
        "app",
        &[
            ("calc.py", CALC),
            ("tests/test_calc.py", TEST_CALC),
            (
                "tests/test_legacy.py",
                "def test_legacy_rounding():\n    assert round(2.675, 2) == 2.68\n",
            ),
        ],
    )
    .unwrap();
    let git = GitHttpServer::start(root.path(), GIT_USER, GIT_PASSWORD).unwrap();
    let llm = llm_script_server::start(Script::new(happy_path()))
        .await
        .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "COMPLETED", "{execution}");
    let events = events(&server, &id);
    assert_gapless(&events);
    let tests: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "tests.completed")
        .collect();
    assert_eq!(tests.len(), 2, "the baseline and the feature's run");
    let (baseline, run) = (&tests[0]["payload"], &tests[1]["payload"]);
    assert_eq!(baseline["baseline"], true);
    assert_eq!(baseline["success"], false);
    assert_eq!(baseline["failed"].as_f64(), Some(1.0));
    assert_eq!(run["success"], true, "{run}");
    assert_eq!(run["failed"].as_f64(), Some(1.0));
    let preexisting = run["preexisting_failures"].as_array().unwrap();
    assert_eq!(preexisting.len(), 1, "{run}");
    assert!(
        preexisting[0]
            .as_str()
            .unwrap()
            .contains("test_legacy_rounding")
    );
    assert!(
        read_branch_file(
            &bare,
            execution["featureBranch"].as_str().unwrap(),
            "calc.py"
        )
        .unwrap()
        .contains("def greet")
    );
}

/// A package registry on loopback, serving one module over plain HTTP.
fn fake_registry() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    // 127.0.0.2, not .1: the sandbox sends 127.0.0.1 past the proxy (NO_PROXY) so that a
    // repository's own test servers work, and this registry must go through it.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let body = "WORD = 'Hello'\n";
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/x-python\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, hits)
}

/// Issue 6: a repository whose tests need a registry delivers only when that registry is on
/// SANDBOX_NETWORK_EGRESS_WHITELIST; otherwise the refused connection is in the events.
#[tokio::test(flavor = "multi_thread")]
async fn a_repository_that_needs_a_registry_passes_only_when_it_is_allowed() {
    let (port, hits) = fake_registry();
    // The tests fetch a module from the registry into the sandbox's private /tmp.
    let fetch = format!(
        "python3 -c \\\"import urllib.request; open('/tmp/registry_word.py', 'wb').write(urllib.request.urlopen('http://127.0.0.2:{port}/registry_word.py', timeout=10).read())\\\" && PYTHONPATH=/tmp python3 -m pytest -q -p no:cacheprovider"
    );
    let builder_toml = format!("[commands]\ntest = \"{fetch}\"\n");
    let test_word =
        "from registry_word import WORD\n\n\ndef test_word():\n    assert WORD == 'Hello'\n";
    let root = tempfile::tempdir().unwrap();
    make_bare_repo(
        root.path(),
        "app",
        &[
            ("calc.py", CALC),
            ("tests/test_calc.py", TEST_CALC),
            ("tests/test_word.py", test_word),
            (".builder.toml", &builder_toml),
        ],
    )
    .unwrap();
    let git = GitHttpServer::start(root.path(), GIT_USER, GIT_PASSWORD).unwrap();
    let answers = happy_path;

    // Allowed: the registry is reached through builder's proxy and the feature delivers.
    let llm = llm_script_server::start(Script::new(answers()))
        .await
        .unwrap();
    let mut env = llm_env(&llm);
    env.push((
        "SANDBOX_NETWORK_EGRESS_WHITELIST",
        format!("127.0.0.2:{port}"),
    ));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(
        execution["state"],
        "COMPLETED",
        "{:?}",
        events(&server, &id)
            .iter()
            .filter(|e| e["type"] == "tests.completed")
            .map(|e| e["payload"].to_string())
            .collect::<Vec<_>>()
    );
    assert!(hits.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    let delivered = events(&server, &id);
    let run = delivered
        .iter()
        .rfind(|e| e["type"] == "tests.completed")
        .unwrap();
    assert_eq!(run["payload"]["passed"].as_f64(), Some(3.0), "{run}");
    drop(server);

    // Not on the list (another host is): refused by the proxy, recorded, not delivered.
    let before = hits.load(std::sync::atomic::Ordering::SeqCst);
    let llm = llm_script_server::start(Script::new((0..4).flat_map(|_| answers()).collect()))
        .await
        .unwrap();
    let mut env = llm_env(&llm);
    env.push((
        "SANDBOX_NETWORK_EGRESS_WHITELIST",
        "registry.example.org".to_string(),
    ));
    env.push(("BUILDER_MAX_REPAIR_ITERATIONS", "1".to_string()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        before,
        "the registry was never reached"
    );
    let refused: Vec<String> = events(&server, &id)
        .iter()
        .filter(|e| e["type"] == "tests.completed")
        .flat_map(|e| {
            e["payload"]["egress_refused"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    assert!(
        refused
            .iter()
            .any(|r| r.contains(&format!("127.0.0.2:{port}"))),
        "{refused:?}"
    );
}
