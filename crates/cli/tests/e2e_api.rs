//! End-to-end at the edges: bad input and the API protocols, and the LLM side (unparseable output, full slots, fallbacks and budgets, edits sent back).

mod common;

use builder_testkit::read_branch_file;
use common::*;
use llm_script_server::{Entry, Script};
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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
