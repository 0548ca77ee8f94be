//! What the end-to-end test files share: the real `builder serve` binary on a temporary
//! data directory, Connect calls through curl, the feature's events through the CLI, and
//! the scripted answers of the greeting feature both files deliver.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use builder_testkit::{GitHttpServer, make_bare_repo};
use llm_script_server::{Entry, Running};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_builder");
pub const LLM_KEY: &str = "sk-e2e-key-7Hn2LmQp";
pub const CALC: &str = "def add(a, b):\n    return a + b\n";
pub const TEST_CALC: &str =
    "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n";
pub const ANALYSIS: &str = r#"{"summary": "add greet to calc.py", "affected_files": ["calc.py"], "risks": [], "acceptance_interpretation": ["greet('Bob') == 'Hello, Bob!'"]}"#;
pub const PLAN: &str = r#"{"summary": "add greet and its test", "steps": [{"index": 0, "description": "add greet(name) to calc.py with a test", "step_type": "MODIFY_FILE", "target_files": ["calc.py", "tests/test_greet.py"], "dependencies": []}], "affected_files": ["calc.py", "tests/test_greet.py"]}"#;
/// The whole change in one go: greet() and its test.
pub const RIGHT_EDIT: &str = r#"{"summary": "add greet", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "def add(a, b):", "replace": "def greet(name):\n    return f'Hello, {name}!'\n\n\ndef add(a, b):"}, {"path": "tests/test_greet.py", "action": "CREATE", "content": "from calc import greet\n\n\ndef test_greet():\n    assert greet('Bob') == 'Hello, Bob!'\n"}]}"#;
pub const APPROVE: &str = r#"{"approved": true, "reasons": ["greet matches the criteria"]}"#;

pub struct Server {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    env: Vec<(String, String)>,
    /// The log file and the data directory (`data/`) live here.
    pub _data: tempfile::TempDir,
}

impl Server {
    /// SIGKILL, then a new process on the same data directory (and a new port).
    pub fn kill_and_restart(mut self) -> Server {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let data = std::mem::replace(&mut self._data, tempfile::tempdir().unwrap());
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        start_server_in(data, &env)
    }

    /// `BUILDER_DATA_DIR`.
    pub fn data_dir(&self) -> PathBuf {
        self._data.path().join("data")
    }
}

/// What the server logged so far.
pub fn server_log(server: &Server) -> String {
    std::fs::read_to_string(&server.log).unwrap_or_default()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn start_server(env: &[(&str, String)]) -> Server {
    start_server_in(tempfile::tempdir().unwrap(), env)
}

pub fn start_server_in(data: tempfile::TempDir, env: &[(&str, String)]) -> Server {
    let port = free_port();
    let log = data.path().join(format!("serve-{port}.log"));
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("BUILDER_DATA_DIR", data.path().join("data"))
        .env("SERVICE_PORT", port.to_string())
        .env("SANDBOX_TIMEOUT_SECONDS", "120")
        .env("LOG_LEVEL", "info,builder_llm=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for var in ["PYENV_ROOT", "PYENV_VERSION", "CARGO_HOME", "RUSTUP_HOME"] {
        if let Ok(v) = std::env::var(var) {
            cmd.env(var, v);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawning builder serve");
    let server = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(out) = Command::new("curl")
            .args(["-sf", &format!("{}/health", server.url)])
            .output()
            && out.status.success()
        {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "builder did not become healthy:\n{}",
            std::fs::read_to_string(&server.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn llm_env(llm: &Running) -> Vec<(&'static str, String)> {
    vec![
        ("BAML_CLIENT_PROVIDER", "openai".into()),
        ("BAML_CLIENT_MODEL", "scripted-model".into()),
        ("BAML_CLIENT_API_KEY", LLM_KEY.into()),
        ("BAML_CLIENT_BASE_URL", llm.openai_base_url()),
    ]
}

/// A Connect unary call with JSON, exactly as curl would make it.
pub fn call(server: &Server, method: &str, body: Value) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("{}/{method}", server.url))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

pub fn cli(server: &Server, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env("BUILDER_SERVER", &server.url)
        .output()
        .unwrap()
}

pub fn events(server: &Server, id: &str) -> Vec<Value> {
    let out = cli(server, &["feature", "events", id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

pub fn wait_terminal(server: &Server, id: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = call(
            server,
            "builder.feature.v1.FeatureService/Get",
            json!({"id": id}),
        );
        assert_eq!(code, 200, "{body}");
        let state = body["execution"]["state"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if matches!(state.as_str(), "COMPLETED" | "FAILED" | "CANCELLED") {
            return body["execution"].clone();
        }
        assert!(
            Instant::now() < deadline,
            "feature {id} still {state} after {within:?}\n{}",
            server_log(server)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The four answers of a feature that is right the first time.
pub fn happy_path() -> Vec<Entry> {
    vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]
}

pub const GIT_USER: &str = "alice";
pub const GIT_PASSWORD: &str = "pw-e2e-Zq81xKcV";

pub const WRONG_EDIT: &str = r#"{"summary": "add greet", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "def add(a, b):", "replace": "def greet(name):\n    return 'Hi ' + name\n\n\ndef add(a, b):"}, {"path": "tests/test_greet.py", "action": "CREATE", "content": "from calc import greet\n\n\ndef test_greet():\n    assert greet('Bob') == 'Hello, Bob!'\n"}]}"#;
pub const FIX_EDIT: &str = r#"{"summary": "fix the greeting", "edits": [{"path": "calc.py", "action": "SEARCH_REPLACE", "search": "    return 'Hi ' + name", "replace": "    return f'Hello, {name}!'"}]}"#;

pub fn register(server: &Server, git: &GitHttpServer, password: &str) -> String {
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

pub fn assert_gapless(events: &[Value]) {
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
pub fn assert_no_secrets(server: &Server, events: &[Value]) {
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

pub fn repo_fixture() -> (tempfile::TempDir, PathBuf, GitHttpServer) {
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

pub fn create(server: &Server, repo_id: &str) -> String {
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
