//! End-to-end: the real `builder serve` binary on a temporary data directory, a real git
//! repository over smart HTTP with basic auth (`git http-backend`), the real BAML sidecar,
//! the real bubblewrap sandbox running pytest, and the scripted LLM as the only stand-in.

mod common;

use builder_testkit::{GitHttpServer, make_bare_repo, read_branch_file};
use common::*;
use llm_script_server::{Entry, Script};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const GIT_USER: &str = "alice";
const GIT_PASSWORD: &str = "pw-e2e-Zq81xKcV";

const WRONG_EDIT: &str = r#"{"summary": "add greet", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "def add(a, b):", "replace": "def greet(name):\n    return 'Hi ' + name\n\n\ndef add(a, b):"}, {"path": "tests/test_greet.py", "action": "CREATE", "content": "from calc import greet\n\n\ndef test_greet():\n    assert greet('Bob') == 'Hello, Bob!'\n"}]}"#;
const FIX_EDIT: &str = r#"{"summary": "fix the greeting", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "    return 'Hi ' + name", "replace": "    return f'Hello, {name}!'"}]}"#;

fn register(server: &Server, git: &GitHttpServer, password: &str) -> String {
    let (code, body) = call(
        server,
        "builder.repository.v1.RepositoryService/Register",
        json!({
            "name": format!("app-{}", free_port()),
            "url": git.url("app.git"),
            "credential": {"type": "BASIC", "username": GIT_USER, "password": password},
        }),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["repository"]["defaultBranch"], "main",
        "default branch detected over smart HTTP"
    );
    assert_eq!(body["repository"]["hasCredentials"], true);
    assert!(!body.to_string().contains(password));
    body["repository"]["id"].as_str().unwrap().to_string()
}

fn assert_gapless(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["sequenceNumber"]
                .as_str()
                .and_then(|s| s.parse::<u64>().ok()),
            Some(i as u64 + 1),
            "gap or reordering at {i}: {e}"
        );
    }
}

/// No secret of the test anywhere it could leak: events, the server's log, its data dir.
fn assert_no_secrets(server: &Server, events: &[Value]) {
    let all = serde_json::to_string(events).unwrap();
    let log = std::fs::read_to_string(&server.log).unwrap();
    for secret in [GIT_PASSWORD, LLM_KEY] {
        assert!(!all.contains(secret), "secret in events");
        assert!(!log.contains(secret), "secret in the server log");
    }
    let out = Command::new("grep")
        .args(["-r", "-l", "-a", "-e", GIT_PASSWORD, "-e", LLM_KEY])
        .arg(server._data.path())
        .output()
        .unwrap();
    assert!(
        out.stdout.is_empty(),
        "secret in files: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn repo_fixture() -> (tempfile::TempDir, PathBuf, GitHttpServer) {
    let root = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(
        root.path(),
        "app",
        &[("calc.py", CALC), ("tests/test_calc.py", TEST_CALC)],
    )
    .unwrap();
    let git = GitHttpServer::start(root.path(), GIT_USER, GIT_PASSWORD).unwrap();
    (root, bare, git)
}

fn create(server: &Server, repo_id: &str) -> String {
    let (code, body) = call(
        server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {
            "title": "Add a greeting",
            "description": "Add greet(name) to calc.py returning 'Hello, <name>!' with a test.",
            "repositoryId": repo_id,
            "acceptanceCriteria": ["greet('Bob') returns 'Hello, Bob!'"],
            "pathHints": ["calc.py"],
        }}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["execution"]["state"], "PENDING");
    body["execution"]["id"].as_str().unwrap().to_string()
}

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
async fn cancel_stops_a_running_feature() {
    let (_root, _bare, git) = repo_fixture();
    // The model takes its time: the feature sits in the LLM call when we cancel.
    let llm = llm_script_server::start(Script::new(vec![Entry::text(ANALYSIS).delay_ms(60_000)]))
        .await
        .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !types(&events(&server, &id))
        .iter()
        .any(|t| t == "llm.invocation.started")
    {
        assert!(Instant::now() < deadline, "never reached the LLM call");
        std::thread::sleep(Duration::from_millis(100));
    }
    // One writer per branch: while it runs, nobody else may claim its branch.
    let (_, current) = call(
        &server,
        "builder.feature.v1.FeatureService/Get",
        json!({"id": id}),
    );
    let branch = current["execution"]["featureBranch"]
        .as_str()
        .unwrap()
        .to_string();
    let second = json!({"spec": {"title": "Same branch", "description": "Wants to push the same branch at once.",
                                 "repositoryId": repo_id, "featureBranch": branch}});
    let (code, clash) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        second.clone(),
    );
    assert_eq!(
        (code, clash["code"].as_str()),
        (400, Some("failed_precondition")),
        "{clash}"
    );
    assert!(
        clash["message"].as_str().unwrap().contains("being written"),
        "{clash}"
    );

    let started = Instant::now();
    let (code, body) = call(
        &server,
        "builder.feature.v1.FeatureService/Cancel",
        json!({"id": id, "reason": "changed my mind"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["execution"]["state"], "CANCELLED");
    // Idempotent.
    let (code, _) = call(
        &server,
        "builder.feature.v1.FeatureService/Cancel",
        json!({"id": id}),
    );
    assert_eq!(code, 200);
    let execution = wait_terminal(&server, &id, Duration::from_secs(5));
    assert_eq!(execution["state"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The worker stopped: no event after the cancellation, even after a moment.
    std::thread::sleep(Duration::from_millis(500));
    let events = events(&server, &id);
    assert_gapless(&events);
    assert_eq!(
        types(&events).last().map(String::as_str),
        Some("feature.cancelled")
    );
    let cancelled = events.last().unwrap();
    assert_eq!(
        cancelled["payload"]["remote_state"], "untouched: nothing was pushed",
        "{cancelled}"
    );
    assert_eq!(cancelled["payload"]["phase"], "analysis");
    // Once it ended, the branch is free again.
    let (code, answer) = call(&server, "builder.feature.v1.FeatureService/Create", second);
    assert_eq!(code, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_clear_errors() {
    let (_root, _bare, git) = repo_fixture();
    // No LLM configured at all: the server still starts.
    let server = start_server(&[]);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        log.contains("BAML_CLIENT_PROVIDER"),
        "start-up says what to set: {log}"
    );

    let cases = [
        (
            "builder.repository.v1.RepositoryService/Register",
            json!({"name": "", "url": "file:///x"}),
            "name",
        ),
        (
            "builder.repository.v1.RepositoryService/Register",
            json!({"name": "x", "url": "https://u:p@host/x.git"}),
            "url",
        ),
        (
            "builder.repository.v1.RepositoryService/Register",
            json!({"name": "x", "url": "ext::sh -c id"}),
            "url",
        ),
        (
            "builder.repository.v1.RepositoryService/Register",
            json!({"name": "x", "url": "file:///x", "credential": {"type": "BASIC", "password": "p"}}),
            "credential.username",
        ),
        (
            "builder.feature.v1.FeatureService/Create",
            json!({}),
            "spec",
        ),
        (
            "builder.feature.v1.FeatureService/Create",
            json!({"spec": {"title": "", "description": "long enough text", "repositoryId": uuid::Uuid::now_v7().to_string()}}),
            "spec.title",
        ),
        (
            "builder.feature.v1.FeatureService/Create",
            json!({"spec": {"title": "t", "description": "short", "repositoryId": uuid::Uuid::now_v7().to_string()}}),
            "spec.description",
        ),
        (
            "builder.feature.v1.FeatureService/Create",
            json!({"spec": {"title": "t", "description": "long enough text", "repositoryId": "nope"}}),
            "spec.repository_id",
        ),
        (
            "builder.feature.v1.FeatureService/Create",
            json!({"spec": {"title": "t", "description": "long enough text", "repositoryId": uuid::Uuid::now_v7().to_string(), "constraints": {"maxSteps": 99}}}),
            "spec.constraints.max_steps",
        ),
        (
            "builder.feature.v1.FeatureService/Get",
            json!({"id": "garbage"}),
            "id",
        ),
    ];
    for (method, body, field) in cases {
        let (code, answer) = call(&server, method, body.clone());
        assert_eq!(code, 400, "{method} {body} → {answer}");
        assert_eq!(answer["code"], "invalid_argument", "{answer}");
        assert!(
            answer["message"].as_str().unwrap().starts_with(field),
            "{method}: {answer} should name {field}"
        );
    }
    let (code, answer) = call(
        &server,
        "builder.feature.v1.FeatureService/Get",
        json!({"id": uuid::Uuid::now_v7().to_string()}),
    );
    assert_eq!((code, answer["code"].as_str()), (404, Some("not_found")));
    // A body that is not JSON at all.
    let out = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "-d",
            "{not json",
        ])
        .arg(format!(
            "{}/builder.feature.v1.FeatureService/Create",
            server.url
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.ends_with("400"), "{text}");

    // A wrong credential: registration cannot detect the branch, and says so without the secret.
    let wrong = "wrong-pw-Kk3";
    let (code, answer) = call(
        &server,
        "builder.repository.v1.RepositoryService/Register",
        json!({"name": "w", "url": git.url("app.git"), "credential": {"type": "BASIC", "username": GIT_USER, "password": wrong}}),
    );
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["code"], "failed_precondition");
    assert!(!answer.to_string().contains(wrong));

    // With the branch given, the feature itself fails clearly at the clone.
    let (code, answer) = call(
        &server,
        "builder.repository.v1.RepositoryService/Register",
        json!({"name": "w", "url": git.url("app.git"), "defaultBranch": "main", "credential": {"type": "BASIC", "username": GIT_USER, "password": wrong}}),
    );
    assert_eq!(code, 200, "{answer}");
    let id = create(&server, answer["repository"]["id"].as_str().unwrap());
    let execution = wait_terminal(&server, &id, Duration::from_secs(30));
    assert_eq!(
        execution["error"]["code"], "REPOSITORY_ACCESS",
        "{execution}"
    );
    let events = events(&server, &id);
    assert!(!serde_json::to_string(&events).unwrap().contains(wrong));
    assert!(
        !std::fs::read_to_string(&server.log)
            .unwrap()
            .contains(wrong)
    );

    // With a good credential but no LLM, the feature fails saying what to set.
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(30));
    assert_eq!(execution["state"], "FAILED");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("BAML_CLIENT_PROVIDER"),
        "{execution}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn llm_output_that_never_parses_fails_the_step_clearly() {
    let (_root, _bare, git) = repo_fixture();
    let garbage: Vec<Entry> = (0..3)
        .map(|_| Entry::text("I'd rather write a poem.").when_contains("Task: AnalyzeFeature"))
        .collect();
    let llm = llm_script_server::start(Script::new(garbage))
        .await
        .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(60));
    assert_eq!(execution["error"]["code"], "ANALYSIS_FAILED", "{execution}");
    assert!(
        execution["error"]["message"]
            .as_str()
            .unwrap()
            .contains("did not parse"),
        "{execution}"
    );
    assert_eq!(llm.requests().len(), 3, "retried, then gave up");
    let retries: Vec<Value> = events(&server, &id)
        .into_iter()
        .filter(|e| e["type"] == "step.retrying")
        .collect();
    assert_eq!(
        retries.len(),
        2,
        "each retried attempt is an event: {retries:?}"
    );
    assert_eq!(retries[0]["payload"]["step"], "LLM AnalyzeFeature");
    let _ = Path::new(".");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_services_answer_grpc_grpc_web_and_connect_binary() {
    use builder_api::proto::builder::feature::v1 as fp;
    use builder_api::proto::builder::repository::v1 as rp;
    use connectrpc::client::{ClientConfig, HttpClient};
    let (_root, _bare, git) = repo_fixture();
    let server = start_server(&[]);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let uri: http::Uri = server.url.parse().unwrap();

    let grpc = rp::RepositoryServiceClient::new(
        HttpClient::plaintext_http2_only(),
        ClientConfig::new(uri.clone()).with_protocol(connectrpc::Protocol::Grpc),
    );
    let got = grpc
        .get(rp::GetRequest {
            id: repo_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert_eq!(got.repository.as_option().unwrap().default_branch, "main");
    let err = grpc
        .get(rp::GetRequest {
            id: "nope".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("invalid_argument")
            || err.to_string().to_lowercase().contains("invalid"),
        "{err}"
    );

    let grpc_web = rp::RepositoryServiceClient::new(
        HttpClient::plaintext(),
        ClientConfig::new(uri.clone()).with_protocol(connectrpc::Protocol::GrpcWeb),
    );
    let name = got.repository.as_option().unwrap().name.clone();
    let by_name = grpc_web
        .get_by_name(rp::GetByNameRequest {
            name,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_owned();
    assert_eq!(by_name.repository.as_option().unwrap().id, repo_id);

    let connect_binary =
        fp::FeatureServiceClient::new(HttpClient::plaintext(), ClientConfig::new(uri).proto());
    let err = connect_binary
        .get(fp::GetRequest {
            id: uuid::Uuid::now_v7().to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
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
async fn create_is_idempotent_and_retry_links_a_new_execution() {
    let (_root, _bare, git) = repo_fixture();
    // No LLM: features fail fast at analysis, which is what Retry needs.
    let server = start_server(&[]);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let spec = json!({
        "title": "Idempotent",
        "description": "A request that a client sends twice.",
        "repositoryId": repo_id,
    });
    let body = json!({"spec": spec, "idempotencyKey": "client-key-1", "correlationId": "corr-42"});
    let (code, first) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        body.clone(),
    );
    assert_eq!(code, 200, "{first}");
    let (code, second) = call(&server, "builder.feature.v1.FeatureService/Create", body);
    assert_eq!(code, 200, "{second}");
    let id = first["execution"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        second["execution"]["id"],
        id.as_str(),
        "the same key gives the same execution"
    );
    let (code, other) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {"title": "Something else", "description": "A different request, same key.", "repositoryId": repo_id},
               "idempotencyKey": "client-key-1"}),
    );
    assert_eq!(
        (code, other["code"].as_str()),
        (409, Some("already_exists")),
        "{other}"
    );

    let (code, found) = call(
        &server,
        "builder.feature.v1.FeatureService/GetByCorrelation",
        json!({"correlationId": "corr-42"}),
    );
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["execution"]["id"], id.as_str());

    let failed = wait_terminal(&server, &id, Duration::from_secs(30));
    assert_eq!(failed["state"], "FAILED");
    let (code, retried) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(code, 200, "{retried}");
    let new_id = retried["execution"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    let (_, again) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(
        again["execution"]["id"],
        new_id.as_str(),
        "Retry is idempotent"
    );
    let first_event = &events(&server, &new_id)[0];
    assert_eq!(first_event["payload"]["retry_of"], id.as_str());
    let (code, refused) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id, "fromStep": "verification"}),
    );
    assert_eq!(
        (code, refused["code"].as_str()),
        (501, Some("unimplemented")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_resumes_the_feature_and_pushes_once() {
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
        // The review is slow the first time: the process dies while waiting for it.
        Entry::text(APPROVE)
            .when_contains("Task: ValidateChange")
            .delay_ms(30_000),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !llm
        .requests()
        .iter()
        .any(|r| r.body.to_string().contains("Task: ValidateChange"))
    {
        assert!(
            Instant::now() < deadline,
            "never reached the review: {:?}",
            types(&events(&server, &id))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = server.kill_and_restart();
    let execution = wait_terminal(&server, &id, Duration::from_secs(90));
    assert_eq!(execution["state"], "COMPLETED", "{execution}");
    let events = events(&server, &id);
    assert_gapless(&events);
    let t = types(&events);
    assert_eq!(
        t.iter().filter(|x| *x == "push.completed").count(),
        1,
        "{t:?}"
    );
    assert_eq!(
        t.iter().filter(|x| *x == "commit.created").count(),
        1,
        "{t:?}"
    );
    let pushes = git
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("git-receive-pack"))
        .count();
    assert_eq!(pushes, 1, "pushed exactly once");
    let branch = execution["result"]["branchName"].as_str().unwrap();
    assert!(
        read_branch_file(&bare, branch, "calc.py")
            .unwrap()
            .contains("Hello")
    );
    assert_no_secrets(&server, &events);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_llm_slot_makes_features_wait_visibly() {
    let (_root, _bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS)
            .when_contains("Task: AnalyzeFeature")
            .delay_ms(4_000),
        Entry::text(ANALYSIS)
            .when_contains("Task: AnalyzeFeature")
            .delay_ms(4_000),
    ]))
    .await
    .unwrap();
    let mut env = llm_env(&llm);
    // One LLM call at a time for this repository (the global cap stays at its default).
    env.push(("BUILDER_MAX_LLM_CALLS_PER_REPOSITORY", "1".into()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let a = create(&server, &repo_id);
    let b = create(&server, &repo_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (waiting, other) = loop {
        let ta = types(&events(&server, &a));
        let tb = types(&events(&server, &b));
        if ta.iter().any(|t| t == "step.waiting") {
            break (a.clone(), b.clone());
        }
        if tb.iter().any(|t| t == "step.waiting") {
            break (b.clone(), a.clone());
        }
        assert!(Instant::now() < deadline, "nobody waited: {ta:?} {tb:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let waited = events(&server, &waiting);
    let wait = waited.iter().find(|e| e["type"] == "step.waiting").unwrap();
    assert!(
        wait["payload"]["detail"]
            .as_str()
            .unwrap()
            .contains("for this repository"),
        "{wait}"
    );
    let (_, got) = call(
        &server,
        "builder.feature.v1.FeatureService/Get",
        json!({"id": waiting}),
    );
    let shown = got["execution"]["progress"]["currentStepDescription"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    // Either still waiting (shown in Get) or already past the wait.
    let t = types(&events(&server, &waiting));
    assert!(
        shown.contains("waiting for a LLM slot")
            || t.iter().filter(|x| *x == "llm.invocation.started").count() == 1,
        "{got}"
    );
    assert!(
        types(&events(&server, &other))
            .iter()
            .any(|t| t == "llm.invocation.started")
    );
    for id in [&a, &b] {
        call(
            &server,
            "builder.feature.v1.FeatureService/Cancel",
            json!({"id": id}),
        );
    }
}

/// Fault injection: several features at once, the server SIGKILLed at seeded random
/// moments and restarted each time. Whatever the timing, every feature ends, every stream
/// is gapless, and a delivered feature committed and pushed exactly once.
/// Reproduce a run with BUILDER_FAULT_SEED=<seed printed below>.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("BUILDER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b11d);
    println!("fault-injection seed: {seed}");
    let mut state = seed;
    let mut next = move |bound: u64| {
        // SplitMix64: a fixed, seedable sequence.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    };
    const FEATURES: usize = 5;
    const KILLS: usize = 4;
    let (_root, bare, git) = repo_fixture();
    // An LLM that always has an answer, however often a step is redone. Entries are shared
    // by all features, so answers are chosen by what the prompt holds: a repair prompt
    // carries pytest's "'Hi Bob' == 'Hello, Bob!'" and gets the fix (listed first so it
    // wins); a first attempt gets the wrong edit.
    let rounds = FEATURES * (KILLS + 2);
    let mut entries = Vec::new();
    entries
        .extend((0..rounds).map(|_| Entry::text(FIX_EDIT).when_contains("Hi Bob").delay_ms(100)));
    for _ in 0..rounds {
        entries.push(
            Entry::text(ANALYSIS)
                .when_contains("Task: AnalyzeFeature")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(PLAN)
                .when_contains("Task: PlanFeature")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(WRONG_EDIT)
                .when_contains("Task: GenerateEdits")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(APPROVE)
                .when_contains("Task: ValidateChange")
                .delay_ms(100),
        );
    }
    let llm = llm_script_server::start(Script::new(entries))
        .await
        .unwrap();
    let mut server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let ids: Vec<String> = (0..FEATURES).map(|_| create(&server, &repo_id)).collect();
    for kill in 0..KILLS {
        let wait = 300 + next(2_500);
        std::thread::sleep(Duration::from_millis(wait));
        println!("kill {kill} after {wait} ms");
        server = server.kill_and_restart();
    }
    for id in &ids {
        let execution = wait_terminal(&server, id, Duration::from_secs(180));
        let events = events(&server, id);
        assert_gapless(&events);
        let t = types(&events);
        assert_eq!(t[0], "feature.requested");
        assert_eq!(
            t.iter()
                .filter(|x| matches!(
                    x.as_str(),
                    "feature.delivered" | "feature.failed" | "feature.cancelled"
                ))
                .count(),
            1
        );
        if execution["state"] == "COMPLETED" {
            assert_eq!(
                t.iter().filter(|x| *x == "commit.created").count(),
                1,
                "{id}: {t:?}"
            );
            assert_eq!(
                t.iter().filter(|x| *x == "push.completed").count(),
                1,
                "{id}: {t:?}"
            );
            let branch = execution["result"]["branchName"].as_str().unwrap();
            let remote = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["rev-parse", branch])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&remote.stdout).trim(),
                execution["result"]["commitSha"].as_str().unwrap()
            );
        } else {
            println!(
                "{id} ended {}: {}",
                execution["state"], execution["error"]["message"]
            );
        }
    }
    let delivered = ids
        .iter()
        .filter(|id| wait_terminal(&server, id, Duration::from_secs(1))["state"] == "COMPLETED")
        .count();
    println!("{delivered}/{FEATURES} delivered across {KILLS} kills");
    assert_eq!(
        delivered, FEATURES,
        "an interrupted step resumes from its checkpoint, so every feature delivers"
    );
    let pushes = git
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("git-receive-pack"))
        .count();
    assert!(
        pushes >= delivered,
        "{pushes} pushes for {delivered} deliveries"
    );
}

/// Drops what legitimately differs between two runs of the same feature: ids, times,
/// shas of commits (they embed a time), branch names (they embed the feature id), the
/// provider's name and tool output with timings in it.
fn comparable(events: &[Value]) -> Vec<Value> {
    fn strip(v: &mut Value) {
        const VOLATILE: &[&str] = &[
            "duration_ms",
            "latency_ms",
            "head_sha",
            "base_sha",
            "sha",
            "commit_sha",
            "provider",
            "model",
            // A replay asks no model, so it spends nothing.
            "usage",
            "branch",
            "branch_name",
            "feature_branch",
            "target_branch",
            "output_tail",
            "output",
            "checkpoint",
            "repository_id",
            "url",
            "patch_url",
            "details",
            "message",
        ];
        match v {
            Value::Object(map) => {
                map.retain(|k, _| !VOLATILE.contains(&k.as_str()));
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    events
        .iter()
        // How many partial answers a streamed call shows depends on timing; a replay has none.
        .filter(|e| e["type"] != "llm.output.partial")
        // The baseline records itself as it runs, beside the steps: where its records fall,
        // and whether verification had to wait for it, depends on timing. Its records are
        // compared on their own (`baseline_records`).
        .filter(|e| e["payload"]["baseline"] != true && e["payload"]["resource"] != "baseline")
        .map(|e| {
            let mut payload = e["payload"].clone();
            strip(&mut payload);
            json!({"type": e["type"], "payload": payload})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_feature_replays_without_an_llm_to_the_same_events() {
    let run = |env: Vec<(&'static str, String)>| async move {
        let (_root, _bare, git) = repo_fixture();
        let server = start_server(&env);
        let repo_id = register(&server, &git, GIT_PASSWORD);
        let id = create(&server, &repo_id);
        let execution = wait_terminal(&server, &id, Duration::from_secs(120));
        assert_eq!(execution["state"], "COMPLETED", "{execution}");
        let transcript = server
            ._data
            .path()
            .join("data/artifacts")
            .join(&id)
            .join("llm-transcript.jsonl");
        let transcript = std::fs::read_to_string(transcript).expect("the transcript artifact");
        (events(&server, &id), transcript)
    };
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(FIX_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let (recorded, transcript) = run(llm_env(&llm)).await;
    assert_eq!(
        transcript.lines().count(),
        5,
        "one line per LLM call:\n{transcript}"
    );
    assert!(!transcript.contains(LLM_KEY));

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &transcript).unwrap();
    // No BAML_CLIENT_* at all: every answer comes from the transcript.
    let (replayed, _) = run(vec![(
        "BUILDER_LLM_REPLAY",
        file.path().display().to_string(),
    )])
    .await;
    assert_eq!(comparable(&replayed), comparable(&recorded));
    let baseline_records = |events: &[Value]| {
        let only: Vec<Value> = events
            .iter()
            .filter(|e| e["payload"]["baseline"] == true)
            .cloned()
            .collect();
        assert!(!only.is_empty(), "the baseline ran");
        comparable(
            &only
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e["payload"]["baseline"] = json!("yes");
                    e
                })
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(baseline_records(&replayed), baseline_records(&recorded));
    let providers: Vec<&Value> = replayed
        .iter()
        .filter(|e| e["type"] == "llm.invocation.started")
        .map(|e| &e["payload"]["provider"])
        .collect();
    assert!(providers.iter().all(|p| *p == "replay"), "{providers:?}");
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

#[tokio::test(flavor = "multi_thread")]
async fn retry_starts_from_the_failed_step_and_reuses_analysis_and_plan() {
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let mut env = llm_env(&llm);
    env.push(("BUILDER_MAX_REPAIR_ITERATIONS", "0".into()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let failed = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(failed["error"]["code"], "TEST_FAILED", "{failed}");

    let (code, refused) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id, "fromStep": "nonsense"}),
    );
    assert_eq!(
        (code, refused["code"].as_str()),
        (400, Some("invalid_argument")),
        "{refused}"
    );
    let (code, retried) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(code, 200, "{retried}");
    let new_id = retried["execution"]["id"].as_str().unwrap().to_string();
    let done = wait_terminal(&server, &new_id, Duration::from_secs(120));
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let events = events(&server, &new_id);
    assert_gapless(&events);
    assert_eq!(events[0]["payload"]["retry_from"], "execution");
    let asked: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "llm.invocation.started")
        .map(|e| e["payload"]["function"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        asked,
        ["GenerateEdits", "ValidateChange"],
        "analysis and plan were taken over, not asked again"
    );
    let branch = done["result"]["branchName"].as_str().unwrap();
    assert!(
        read_branch_file(&bare, branch, "calc.py")
            .unwrap()
            .contains("Hello")
    );
}

/// Issue 5's "5xx then fallback to a second provider" and "a budget reached mid-feature",
/// with every call's tokens and cost in its `llm.response.received` event.
#[tokio::test(flavor = "multi_thread")]
async fn fallback_answers_and_a_token_budget_stops_the_feature_before_it_is_exceeded() {
    const BACKUP_KEY: &str = "sk-backup-e2e-Vb71kLq";
    let (_root, _bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS)
            .when_contains("Task: AnalyzeFeature")
            .usage(9000, 100),
        // The primary provider fails every try of the plan; the backup answers.
        Entry::error(503).when_contains("Task: PlanFeature"),
        Entry::error(502).when_contains("Task: PlanFeature"),
        Entry::error(500).when_contains("Task: PlanFeature"),
        Entry::error(503).when_contains("Task: PlanFeature"),
        Entry::text(PLAN)
            .when_contains("Task: PlanFeature")
            .usage(9000, 100),
        // Never asked: the budget has no room left for the edits' request.
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
    ]))
    .await
    .unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("llm.toml");
    std::fs::write(
        &config,
        format!(
            r#"fallback = ["backup"]

[profiles.backup]
provider = "anthropic"
model = "claude-backup"
api_key_env = "E2E_BACKUP_KEY"
base_url = "{}"

[prices]
"scripted-model" = {{ input = 1.0, output = 2.0 }}
"claude-*" = {{ input = 3.0, output = 4.0 }}
"#,
            llm.anthropic_base_url()
        ),
    )
    .unwrap();
    let mut env = llm_env(&llm);
    env.push(("BUILDER_LLM_CONFIG", config.display().to_string()));
    env.push(("E2E_BACKUP_KEY", BACKUP_KEY.to_string()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let (code, body) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {
            "title": "Add a greeting",
            "description": "Add greet(name) to calc.py returning 'Hello, <name>!' with a test.",
            "repositoryId": repo_id,
            "constraints": {"maxLlmTokens": 20000},
        }}),
    );
    assert_eq!(code, 200, "{body}");
    let id = body["execution"]["id"].as_str().unwrap().to_string();
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "FAILED", "{execution}");
    assert_eq!(
        execution["error"]["code"], "GENERATION_FAILED",
        "{execution}"
    );
    let message = execution["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("budget") && message.contains("max_llm_tokens = 20000"),
        "{message}"
    );
    // proto3 JSON leaves `false` out.
    assert_ne!(execution["error"]["retryable"], true, "{execution}");

    let requests = llm.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/messages"
        ],
        "no request for the edits left builder"
    );
    let all = events(&server, &id);
    assert_gapless(&all);
    let responses: Vec<&Value> = all
        .iter()
        .filter(|e| e["type"] == "llm.response.received")
        .collect();
    assert_eq!(responses.len(), 3, "{responses:?}");
    let analyze = &responses[0]["payload"];
    assert_eq!(analyze["function"], "AnalyzeFeature");
    assert_eq!(analyze["usage"]["input_tokens"].as_f64(), Some(9000.0));
    assert_eq!(analyze["usage"]["output_tokens"].as_f64(), Some(100.0));
    let cost = analyze["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - (9000.0 + 200.0) / 1e6).abs() < 1e-9, "{analyze}");
    let plan = &responses[1]["payload"];
    assert_eq!(
        (
            plan["function"].as_str(),
            plan["provider"].as_str(),
            plan["model"].as_str()
        ),
        (
            Some("PlanFeature"),
            Some("anthropic"),
            Some("claude-backup")
        ),
        "{plan}"
    );
    let cost = plan["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - (27000.0 + 400.0) / 1e6).abs() < 1e-9, "{plan}");
    let generate = &responses[2]["payload"];
    assert_eq!(generate["function"], "GenerateEdits");
    assert_eq!(generate["ok"], false);
    assert_eq!(
        generate["usage"]["input_tokens"].as_f64(),
        Some(0.0),
        "nothing was spent"
    );
    assert!(
        all.iter().any(|e| e["type"] == "step.retrying"
            && e["payload"]["error"]
                .as_str()
                .unwrap_or("")
                .contains("falling back from openai/scripted-model to anthropic/claude-backup")),
        "the fallback is visible"
    );
    assert_no_secrets(&server, &all);
    let log = std::fs::read_to_string(&server.log).unwrap();
    assert!(
        !log.contains(BACKUP_KEY) && !serde_json::to_string(&all).unwrap().contains(BACKUP_KEY)
    );
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

/// Issue 5: an edit whose search text is not in the file goes back to the model with the
/// reason (which file, which block, the closest match), and the corrected answer applies.
#[tokio::test(flavor = "multi_thread")]
async fn an_edit_that_does_not_apply_goes_back_to_the_model_and_the_correction_lands() {
    const STALE_EDIT: &str = r#"{"summary": "add greet", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "def add(x, y):", "replace": "def greet(name):\n    return f'Hello, {name}!'\n\n\ndef add(x, y):"}]}"#;
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(STALE_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(RIGHT_EDIT).when_contains("did not apply"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let execution = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(execution["state"], "COMPLETED", "{execution}");
    assert_eq!(llm.unused_entries(), 0);
    let second = llm
        .requests()
        .iter()
        .filter(|r| r.body.to_string().contains("Task: GenerateEdits"))
        .nth(1)
        .map(|r| r.body.to_string())
        .expect("the edits were asked for again");
    assert!(
        second.contains("did not apply")
            && second.contains("calc.py")
            && second.contains("def add(a, b):"),
        "the model was told which file and shown the closest match: {second}"
    );
    let events = events(&server, &id);
    assert_gapless(&events);
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "code.change.generated")
            .count(),
        2,
        "both answers are in the stream"
    );
    assert!(
        read_branch_file(
            &bare,
            execution["featureBranch"].as_str().unwrap(),
            "calc.py"
        )
        .unwrap()
        .contains("def greet(name):")
    );
}
