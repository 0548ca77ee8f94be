//! End-to-end resilience against the real `builder serve` binary: a PostgreSQL outage is
//! answered "unavailable" within seconds while `/health` stays up and `/ready` says why,
//! and everything works again once the database is back; errors caused by the request are
//! `invalid_argument`, not outages; RepositoryService.List filters states in the query; the
//! data directory is private whatever the umask; a shutdown reports the runs it cancels as
//! cancelled, not as panics.

mod common;

use builder_testkit::{CutProxy, SilentServer};
use common::{BIN, free_port};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GET: &str = "builder.feature.v1.FeatureService/Get";
const CREATE: &str = "builder.feature.v1.FeatureService/Create";
const LIST_EVENTS: &str = "builder.feature.v1.FeatureService/ListEvents";
const REGISTER: &str = "builder.repository.v1.RepositoryService/Register";
const DELETE: &str = "builder.repository.v1.RepositoryService/Delete";
const LIST: &str = "builder.repository.v1.RepositoryService/List";

// ---------------------------------------------------------------------------------------------
// The server, run by this file so it can set the umask and send SIGTERM.

struct Builder {
    child: Child,
    url: String,
    log: PathBuf,
    env: Vec<(String, String)>,
    /// The log file and the data directory (`data/`) live here.
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Builder {
    /// `builder serve` on a new data directory; `umask` is applied to the process first.
    async fn start(env: &[(&str, String)], umask: Option<&str>) -> Builder {
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        Builder::start_in(tempfile::tempdir().expect("temp dir"), env, umask).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        env: Vec<(String, String)>,
        umask: Option<&str>,
    ) -> Builder {
        let port = free_port();
        let log = dir.path().join(format!("serve-{port}.log"));
        let mut cmd = match umask {
            Some(mask) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", &format!("umask {mask} && exec \"$0\" serve"), BIN]);
                sh
            }
            None => {
                let mut cmd = Command::new(BIN);
                cmd.arg("serve");
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", std::env::var("HOME").unwrap_or_default())
            .env("BUILDER_DATA_DIR", dir.path().join("data"))
            .env("SERVICE_PORT", port.to_string())
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"));
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawning builder serve");
        let builder = Builder {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            env,
            dir,
            http: reqwest::Client::builder()
                .no_proxy()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while builder.probe("/health").await.0 != 200 {
            assert!(
                Instant::now() < deadline,
                "builder did not come up:\n{}",
                builder.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        builder
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and the exit status once it has shut down (at once if it already has).
    fn terminate(&mut self) -> std::process::ExitStatus {
        if let Some(status) = self.child.try_wait().expect("wait") {
            return status;
        }
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit 30 s after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops this process and starts another on the same data directory.
    async fn restart(mut self) -> Builder {
        self.terminate();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
        let env = std::mem::take(&mut self.env);
        Builder::start_in(dir, env, None).await
    }

    /// GET `path`: status and body.
    async fn probe(&self, path: &str) -> (u16, String) {
        match self.http.get(format!("{}{path}", self.url)).send().await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }

    /// A Connect unary call with JSON: status, body and how long it took.
    async fn call(&self, method: &str, body: Value) -> (u16, Value, Duration) {
        let started = Instant::now();
        let response = self
            .http
            .post(format!("{}/{method}", self.url))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the server answers");
        let code = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            code,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            started.elapsed(),
        )
    }

    /// A Connect server-streaming call with JSON: the messages, and the error that ended
    /// the stream, if any.
    async fn stream(&self, method: &str, body: Value) -> (Vec<Value>, Option<Value>) {
        let payload = body.to_string().into_bytes();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
        framed.extend_from_slice(&payload);
        let response = self
            .http
            .post(format!("{}/{method}", self.url))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(framed)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("body");
        if status != 200 {
            let error = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return (vec![], Some(error));
        }
        let (mut messages, mut error, mut rest) = (Vec::new(), None, &bytes[..]);
        while rest.len() >= 5 {
            let flags = rest[0];
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            let frame: Value = serde_json::from_slice(&rest[5..5 + len]).expect("JSON frame");
            rest = &rest[5 + len..];
            if flags & 0x02 != 0 {
                error = frame.get("error").cloned();
            } else {
                messages.push(frame);
            }
        }
        (messages, error)
    }

    async fn register(&self, name: &str) -> String {
        let (code, body, _) = self
            .call(
                REGISTER,
                json!({
                    "name": name,
                    "url": format!("https://git.example.com/acme/{name}.git"),
                    // Given, so that nothing is probed over the network.
                    "defaultBranch": "main",
                }),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        body["repository"]["id"]
            .as_str()
            .expect("repository id")
            .to_string()
    }

    async fn create(&self, repo_id: &str) -> (u16, Value, Duration) {
        self.call(
            CREATE,
            json!({"spec": {
                "title": "Add a greeting",
                "description": "Add greet(name) to calc.py returning 'Hello, <name>!'.",
                "repositoryId": repo_id,
                "acceptanceCriteria": ["greet('Bob') returns 'Hello, Bob!'"],
            }}),
        )
        .await
    }
}

impl Drop for Builder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL, behind a proxy that can be cut.

/// A throwaway database on the local server, dropped at the end.
struct Database {
    name: String,
}

impl Database {
    fn create() -> Database {
        let name = format!("builder_e2e_{}", uuid::Uuid::now_v7().simple());
        psql(&format!("CREATE DATABASE {name}"));
        Database { name }
    }

    /// The database's URL with the server at `addr`.
    fn url_at(&self, addr: SocketAddr) -> String {
        format!("postgres://postgres@{addr}/{}?sslmode=disable", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql: {} (is PostgreSQL running on 127.0.0.1:5432?)",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Item 6: with PostgreSQL gone, Get and Create answer `unavailable` within seconds (not
/// after sqlx's 30 s), then at once once the circuit is open; `/health` stays 200 while
/// `/ready` answers 503 naming the store; when the database is back, `/ready` turns 200 by
/// itself, Create works and nothing written before is lost.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_answered_fast_and_ready_tells_the_truth() {
    let db = Database::create();
    let mut proxy = CutProxy::start(SocketAddr::from(([127, 0, 0, 1], 5432))).expect("proxy");
    let server = Builder::start(
        &[
            ("DATABASE_URL", db.url_at(proxy.addr())),
            ("DO_DATABASE_MIGRATE", "true".into()),
        ],
        None,
    )
    .await;
    assert_eq!(server.probe("/ready").await, (200, "ready\n".to_string()));
    let repo_id = server.register(&unique("outage")).await;
    let (code, body, _) = server.create(&repo_id).await;
    assert_eq!(code, 200, "{body}");
    let first = body["execution"]["id"].as_str().expect("id").to_string();

    proxy.cut();
    for (what, (code, body, took)) in [
        ("Get", server.call(GET, json!({ "id": first })).await),
        ("Create", server.create(&repo_id).await),
    ] {
        assert_eq!(code, 503, "{what}: {body}");
        assert_eq!(body["code"], "unavailable", "{what}: {body}");
        assert!(
            took < Duration::from_secs(20),
            "{what} took {took:?} to say the store is unavailable"
        );
    }
    let (code, body) = server.probe("/ready").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("store:"),
        "the reason names the store: {body}"
    );
    assert_eq!(server.probe("/health").await.0, 200, "alive all the same");
    // Within a few more calls the circuit is open and answers without waiting.
    let mut fast = None;
    for _ in 0..5 {
        let (code, body, took) = server.call(GET, json!({ "id": first })).await;
        assert_eq!(body["code"], "unavailable", "{code} {body}");
        if took < Duration::from_secs(2) {
            fast = Some(body);
            break;
        }
    }
    let fast = fast.expect("the circuit never opened: every call waited for a connection");
    assert!(
        fast["message"]
            .as_str()
            .is_some_and(|m| m.contains("unreachable")),
        "{fast}"
    );

    proxy.restore().expect("proxy listens again");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = server.probe("/ready").await;
        if code == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not ready 30 s after the database came back: {body}\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, body, _) = server.create(&repo_id).await;
    assert_eq!(code, 200, "{body}");
    let (code, body, _) = server.call(GET, json!({ "id": first })).await;
    assert_eq!(code, 200, "the feature made before the outage: {body}");
    assert_eq!(body["execution"]["id"], first.as_str());
    assert_eq!(body["execution"]["repositoryId"], repo_id.as_str());
    // Its run, ended by the outage, is picked up again without a restart: a step of it runs
    // after the store came back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = server.log();
        let resumed = log
            .split_once("resumed unfinished features")
            .is_some_and(|(_, after)| {
                after
                    .lines()
                    .any(|l| l.contains("running step") && l.contains(&first))
            });
        if resumed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the feature made before the outage was not resumed:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server);
    drop(proxy);
}

/// Item 5: an `after_sequence` no stream can reach is the client's mistake —
/// `invalid_argument` naming the field, with no ERROR logged — not "the store failed".
#[tokio::test(flavor = "multi_thread")]
async fn an_impossible_after_sequence_is_invalid_argument() {
    let server = Builder::start(&[], None).await;
    let repo_id = server.register(&unique("events")).await;
    let (code, body, _) = server.create(&repo_id).await;
    assert_eq!(code, 200, "{body}");
    let id = body["execution"]["id"].as_str().expect("id").to_string();

    let (events, error) = server
        .stream(
            LIST_EVENTS,
            json!({"featureExecutionId": id, "afterSequence": u64::MAX.to_string()}),
        )
        .await;
    assert!(events.is_empty(), "{events:?}");
    let error = error.expect("an error");
    assert_eq!(error["code"], "invalid_argument", "{error}");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("after_sequence")),
        "{error}"
    );
    // Past the end of the stream but representable: simply nothing (yet).
    let (events, error) = server
        .stream(
            LIST_EVENTS,
            json!({"featureExecutionId": id, "afterSequence": "1000"}),
        )
        .await;
    assert!(error.is_none() && events.is_empty(), "{error:?} {events:?}");
    let log = server.log();
    assert!(
        !log.contains("store error"),
        "a bad request logged as a store failure:\n{log}"
    );
}

/// Item 8: RepositoryService.List with `states: [DELETED]` lists deleted repositories (the
/// store used to drop them before the API's filter), a filtered page is full, and the
/// default still leaves DELETED out.
#[tokio::test(flavor = "multi_thread")]
async fn repository_list_filters_states_in_the_store() {
    let server = Builder::start(&[], None).await;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ids.push(server.register(&format!("{name}-{tag}")).await);
    }
    for id in [&ids[0], &ids[2]] {
        let (code, body, _) = server.call(DELETE, json!({ "id": id })).await;
        assert_eq!((code, &body["deleted"]), (200, &json!(true)), "{body}");
    }
    let names = |items: Vec<Value>| -> Vec<String> {
        items
            .iter()
            .map(|i| {
                let name = i["repository"]["name"].as_str().expect("name");
                name.split('-').next().unwrap_or_default().to_string()
            })
            .collect()
    };
    let list = |states: Value, limit: u32| {
        let body = json!({"query": tag, "states": states, "pagination": {"limit": limit}});
        let server = &server;
        async move {
            let (items, error) = server.stream(LIST, body).await;
            assert!(error.is_none(), "{error:?}");
            items
        }
    };
    assert_eq!(names(list(json!([]), 0).await), ["b", "d"]);
    assert_eq!(names(list(json!(["DELETED"]), 0).await), ["a", "c"]);
    assert_eq!(
        names(list(json!(["ACTIVE"]), 1).await),
        ["b"],
        "a page of one ACTIVE is full although a DELETED one sorts first"
    );
    assert_eq!(
        names(list(json!(["ACTIVE", "DELETED"]), 3).await),
        ["a", "b", "c"]
    );
    let (_, error) = server
        .stream(LIST, json!({"states": ["REPOSITORY_STATE_UNSPECIFIED"]}))
        .await;
    assert_eq!(error.expect("refused")["code"], "invalid_argument");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Item 9: started with a umask of 000 on a fresh data directory, everything holding state
/// or secrets is owner-only; modes an older version left open are tightened at the next
/// start, with an INFO line.
#[tokio::test(flavor = "multi_thread")]
async fn the_data_directory_is_private_whatever_the_umask() {
    let server = Builder::start(&[], Some("000")).await;
    let data = server.data_dir();
    let private = [
        ("", 0o700),
        ("builder.db", 0o600),
        ("builder.db-wal", 0o600),
        ("builder.db-shm", 0o600),
        ("keys", 0o700),
        ("keys/local-1.key", 0o600),
        ("artifacts", 0o700),
    ];
    for (name, want) in private {
        assert_eq!(
            mode(&data.join(name)),
            want,
            "{name:?} is {:o}",
            mode(&data.join(name))
        );
    }

    let mut server = server;
    server.terminate();
    for (name, want) in private {
        let path = data.join(name);
        if path.exists() {
            chmod(&path, want | 0o044);
        }
    }
    let server = server.restart().await;
    for (name, want) in private {
        let path = data.join(name);
        if path.exists() {
            assert_eq!(mode(&path), want, "{name:?} was not tightened");
        }
    }
    let log = server.log();
    assert!(
        log.contains("tightened permissions") && log.contains("builder.db"),
        "{log}"
    );
}

/// Item 5: SIGTERM while a feature's run is in flight (its clone hangs on a server that
/// never answers) ends the process cleanly and reports the run as cancelled — a feature
/// that resumes at the next start — never as a panic.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_reports_cancelled_runs_as_cancelled() {
    let silent = SilentServer::start().expect("silent server");
    let mut server = Builder::start(&[], None).await;
    let (code, body, _) = server
        .call(
            REGISTER,
            json!({
                "name": unique("hangs"),
                "url": silent.url("app.git"),
                "defaultBranch": "main",
            }),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let repo_id = body["repository"]["id"].as_str().expect("id").to_string();
    let (code, body, _) = server.create(&repo_id).await;
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while silent.accepted() == 0 {
        assert!(
            Instant::now() < deadline,
            "the clone never started:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log());
    let log = server.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("ERROR"), "{log}");
}
