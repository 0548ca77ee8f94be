//! End-to-end hardening of repository registration against the real `builder serve`
//! binary: a credential stays bound to the origin it was given for, secrets never travel
//! over plain http off this machine, repository URLs cannot point into builder's own state
//! or (with `BUILDER_REPOSITORY_URL_ALLOW`) anywhere the operator did not allow — not even
//! for a ValidateAccess probe —, and branch names or URLs that would only fail after the
//! LLM and sandbox work are refused up front.

mod common;

use builder_testkit::{GitHttpServer, SilentServer, make_bare_repo};
use common::*;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GIT_USER: &str = "erin";
const REGISTER: &str = "builder.repository.v1.RepositoryService/Register";
const GET: &str = "builder.repository.v1.RepositoryService/Get";
const UPDATE: &str = "builder.repository.v1.RepositoryService/Update";
const UPDATE_CREDENTIALS: &str = "builder.repository.v1.RepositoryService/UpdateCredentials";
const VALIDATE_ACCESS: &str = "builder.repository.v1.RepositoryService/ValidateAccess";
const CREATE: &str = "builder.feature.v1.FeatureService/Create";

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// An answer that is `invalid_argument` about `field`, and does not echo `secret`.
fn assert_invalid(answer: &(u16, Value), field: &str, secret: &str) {
    let (code, body) = answer;
    assert_eq!(*code, 400, "{body}");
    assert_eq!(body["code"], "invalid_argument", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.starts_with(field), "should name {field}: {body}");
    assert!(
        secret.is_empty() || !body.to_string().contains(secret),
        "{body}"
    );
}

fn get(server: &Server, id: &str) -> Value {
    let (code, body) = call(server, GET, json!({ "id": id }));
    assert_eq!(code, 200, "{body}");
    body["repository"].clone()
}

fn has_credential(repo: &Value) -> bool {
    repo["hasCredentials"] == true
}

fn calc_repo(root: &Path) -> std::path::PathBuf {
    make_bare_repo(
        root,
        "app",
        &[("calc.py", CALC), ("tests/test_calc.py", TEST_CALC)],
    )
    .expect("bare repository")
}

/// Changing where the forge API is (adding, changing or removing `forge_api_base`) drops
/// the stored token, with a WARN naming the repository and never the secret; it can be
/// given again, and other property changes keep it.
#[tokio::test(flavor = "multi_thread")]
async fn moving_the_forge_api_drops_the_credential_until_it_is_given_again() {
    let token = unique("tok-bound");
    let dir = tempfile::tempdir().expect("tempdir");
    calc_repo(dir.path());
    let git = GitHttpServer::start(dir.path(), GIT_USER, &token).expect("git server");
    let server = start_server(&[]);
    let credential = json!({"type": "TOKEN", "token": token, "username": GIT_USER});
    let (code, body) = call(
        &server,
        REGISTER,
        json!({"name": "bound", "url": git.url("app.git"),
               "properties": {"forge_api_base": "http://127.0.0.1:9/api/v4", "team": "a"},
               "credential": credential}),
    );
    assert_eq!(code, 200, "{body}");
    let id = body["repository"]["id"].as_str().expect("id").to_owned();
    assert_eq!(get(&server, &id)["credentialType"], "TOKEN");

    // Another property changes, the API stays: the credential stays.
    let (code, body) = call(
        &server,
        UPDATE,
        json!({"id": id, "properties": {"forge_api_base": "http://127.0.0.1:9/api/v4/", "team": "b"}}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(has_credential(&get(&server, &id)), "kept: same API root");

    // The API moves: the token must not follow it.
    let (code, body) = call(
        &server,
        UPDATE,
        json!({"id": id, "properties": {"forge_api_base": "http://127.0.0.1:10/api/v4"}}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(!has_credential(&body["repository"]), "{body}");
    let repo = get(&server, &id);
    assert!(!has_credential(&repo), "{repo}");
    assert_ne!(repo["credentialType"], "TOKEN", "{repo}");
    let log = server_log(&server);
    let warned = log
        .lines()
        .any(|l| l.contains("WARN") && l.contains(&id) && l.contains("credential"));
    assert!(warned, "a WARN names the repository:\n{log}");
    assert!(!log.contains(&token), "the log holds the token");

    // Given again, it works again.
    let (code, body) = call(
        &server,
        UPDATE_CREDENTIALS,
        json!({"id": id, "credential": credential}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(get(&server, &id)["credentialType"], "TOKEN");
    let (code, body) = call(&server, VALIDATE_ACCESS, json!({ "id": id }));
    assert_eq!((code, &body["valid"]), (200, &json!(true)), "{body}");

    // Removing the property sends the token to the default API: dropped as well.
    let (code, body) = call(
        &server,
        UPDATE,
        json!({"id": id, "properties": {"team": "c"}}),
    );
    assert_eq!(code, 200, "{body}");
    assert!(!has_credential(&get(&server, &id)));

    // An API root that would receive the token over plain http off this machine is refused.
    for base in [
        "http://forge.example/api/v4",
        "https://u:p@forge.example/api",
    ] {
        let answer = call(
            &server,
            UPDATE,
            json!({"id": id, "properties": {"forge_api_base": base}}),
        );
        assert_invalid(&answer, "properties: forge_api_base", "");
        let answer = call(
            &server,
            REGISTER,
            json!({"name": unique("leaky"), "url": git.url("app.git"), "defaultBranch": "main",
                   "properties": {"forge_api_base": base}}),
        );
        assert_invalid(&answer, "properties: forge_api_base", "");
    }
}

/// A password or token is never accepted for a plain `http://` remote off this machine
/// (it would cross the network unencrypted on every fetch and push). Nothing is probed:
/// the default branch is given.
#[tokio::test(flavor = "multi_thread")]
async fn secrets_for_plain_http_remotes_off_this_machine_are_refused() {
    let secret = unique("tok-clear");
    let server = start_server(&[]);
    let url = "http://git.example/acme/app.git";
    for credential in [
        json!({"type": "TOKEN", "token": secret}),
        json!({"type": "BASIC", "username": GIT_USER, "password": secret}),
        json!({"type": "OAUTH", "oauthToken": secret}),
    ] {
        let answer = call(
            &server,
            REGISTER,
            json!({"name": unique("clear"), "url": url, "defaultBranch": "main", "credential": credential}),
        );
        assert_invalid(&answer, "credential", &secret);
    }
    let (code, body) = call(
        &server,
        REGISTER,
        json!({"name": "clear", "url": url, "defaultBranch": "main"}),
    );
    assert_eq!(
        code, 200,
        "without a credential it is a public remote: {body}"
    );
    let id = body["repository"]["id"].as_str().expect("id");
    let answer = call(
        &server,
        UPDATE_CREDENTIALS,
        json!({"id": id, "credential": {"type": "TOKEN", "token": secret}}),
    );
    assert_invalid(&answer, "credential", &secret);
    assert!(!has_credential(&get(&server, id)));
    assert!(!server_log(&server).contains(&secret));
}

/// No local URL may resolve into the data directory, the working copies or the caches:
/// not directly, not through `..`, a symlink, a path that does not exist yet, nor git's
/// `<path>.git` fallback.
#[tokio::test(flavor = "multi_thread")]
async fn local_urls_into_builders_own_state_are_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(outside.path());
    let workspaces = tempfile::tempdir().expect("tempdir");
    let server = start_server(&[(
        "GIT_WORKSPACE_BASE_PATH",
        workspaces.path().display().to_string(),
    )]);
    let data = server.data_dir();
    std::os::unix::fs::symlink(&data, outside.path().join("innocent")).expect("symlink");
    std::os::unix::fs::symlink(data.join("mirrors/x.git"), outside.path().join("lure.git"))
        .expect("symlink");
    let under = |p: &Path, rest: &str| format!("{}/{rest}", p.display());
    // Both temporary directories share a parent, so `..` can walk from one to the other.
    let data_dir_name = server
        ._data
        .path()
        .file_name()
        .expect("a named temporary directory")
        .to_string_lossy()
        .into_owned();
    let urls = [
        format!("file://{}", under(&data, "mirrors/0190-feed.git")),
        under(&data, "mirrors"),
        under(&data, "keys"),
        under(&data, "cache/pip"),
        under(&data, "not/made/yet.git"),
        format!("file://{}", under(outside.path(), "innocent/mirrors/x.git")),
        under(outside.path(), "innocent"),
        under(outside.path(), "lure"),
        under(
            outside.path(),
            &format!("app.git/../../{data_dir_name}/data"),
        ),
        under(workspaces.path(), "feature/.git"),
        format!("file://{}", workspaces.path().display()),
    ];
    for url in &urls {
        let answer = call(
            &server,
            REGISTER,
            json!({"name": unique("own"), "url": url, "defaultBranch": "main"}),
        );
        assert_invalid(&answer, "url", "");
        assert!(
            answer.1["message"]
                .as_str()
                .unwrap_or_default()
                .contains("builder's own state"),
            "{url}: {}",
            answer.1
        );
    }
    // A repository of its own, next to them, is fine.
    let (code, body) = call(
        &server,
        REGISTER,
        json!({"name": "own-repo", "url": format!("file://{}", bare.display())}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["repository"]["defaultBranch"], "main");
}

/// With `BUILDER_REPOSITORY_URL_ALLOW`, Register takes only allowed URLs, and ValidateAccess
/// refuses to probe a stored repository the list no longer allows: the remote is never
/// contacted (a listener counts connections).
#[tokio::test(flavor = "multi_thread")]
async fn the_allow_list_limits_registration_and_probes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = unique("tok-allow");
    calc_repo(dir.path());
    let git = GitHttpServer::start(dir.path(), GIT_USER, &token).expect("git server");
    let silent = SilentServer::start().expect("listener");
    let git_port = git
        .url("app.git")
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("a port")
        .to_owned();
    let timeout = ("GIT_OPERATION_TIMEOUT_SECONDS", "5".to_string());

    // Registered while nothing restricts URLs (no probe: the branch is given).
    let mut server = start_server(std::slice::from_ref(&timeout));
    let (code, body) = call(
        &server,
        REGISTER,
        json!({"name": "silent", "url": silent.url("app.git"), "defaultBranch": "main"}),
    );
    assert_eq!(code, 200, "{body}");
    let silent_id = body["repository"]["id"].as_str().expect("id").to_owned();

    // The operator narrows the list to the git server and restarts.
    let data = std::mem::replace(&mut server._data, tempfile::tempdir().expect("tempdir"));
    drop(server);
    let allow = format!("http://127.0.0.1:{git_port}, https://*.corp.example, file:///srv/git");
    let server = start_server_in(data, &[timeout, ("BUILDER_REPOSITORY_URL_ALLOW", allow)]);
    let (code, body) = call(&server, VALIDATE_ACCESS, json!({ "id": silent_id }));
    assert_eq!(code, 200, "{body}");
    assert_ne!(body["valid"], true, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("BUILDER_REPOSITORY_URL_ALLOW"),
        "{body}"
    );
    assert_eq!(silent.accepted(), 0, "the probe reached the remote");

    for url in [
        silent.url("other.git"),
        "https://github.com/acme/app.git".to_owned(),
        "git@corp.example:acme/app.git".to_owned(),
        format!("file://{}", dir.path().join("app.git").display()),
    ] {
        let answer = call(
            &server,
            REGISTER,
            json!({"name": unique("denied"), "url": url, "defaultBranch": "main"}),
        );
        assert_invalid(&answer, "url", "");
        assert!(
            answer
                .1
                .to_string()
                .contains("BUILDER_REPOSITORY_URL_ALLOW"),
            "{url}: {}",
            answer.1
        );
    }
    assert_eq!(silent.accepted(), 0);

    // What the list names still works end to end.
    let (code, body) = call(
        &server,
        REGISTER,
        json!({"name": "allowed", "url": git.url("app.git"),
               "credential": {"type": "TOKEN", "token": token, "username": GIT_USER}}),
    );
    assert_eq!(code, 200, "{body}");
    let id = body["repository"]["id"].as_str().expect("id");
    let (code, body) = call(&server, VALIDATE_ACCESS, json!({ "id": id }));
    assert_eq!((code, &body["valid"]), (200, &json!(true)), "{body}");
}

/// `builder serve` with `BUILDER_REPOSITORY_URL_ALLOW` set to `value`: its exit status and
/// what it printed, or `None` if it was still running after 30 s (then it is killed).
fn serve_with_allow_list(value: &str) -> Option<(bool, String)> {
    let data = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(BIN)
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_default())
        .env("BUILDER_DATA_DIR", data.path().join("data"))
        .env("SERVICE_PORT", free_port().to_string())
        .env("BUILDER_REPOSITORY_URL_ALLOW", value)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning builder serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                use std::io::Read;
                let _ = pipe.read_to_string(&mut stderr);
            }
            return Some((status.success(), stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

#[test]
fn a_bad_allow_list_stops_start_up_naming_the_variable() {
    for value in [
        "ftp://mirror.example",
        "https://host/path",
        "file://relative",
        ",",
    ] {
        let (ok, stderr) = serve_with_allow_list(value)
            .unwrap_or_else(|| panic!("{value:?}: builder kept running"));
        assert!(!ok, "{value:?}: {stderr}");
        assert!(
            stderr.contains("BUILDER_REPOSITORY_URL_ALLOW"),
            "{value:?}: {stderr}"
        );
    }
}

/// `HEAD`, `refs/heads/…`, `heads/…`, `@` and git's own refusals fail at the API, not after
/// the LLM and sandbox work; so does `git://`, which builder's git refuses.
#[tokio::test(flavor = "multi_thread")]
async fn branches_and_urls_that_would_fail_later_are_refused_up_front() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(dir.path());
    let server = start_server(&[]);
    let url = format!("file://{}", bare.display());
    let bad_branches = [
        "HEAD",
        "refs/heads/main",
        "heads/main",
        "remotes/origin/main",
        "@",
        "a/b.lock/c",
        "x.",
        "a/.b",
    ];
    for branch in bad_branches {
        let answer = call(
            &server,
            REGISTER,
            json!({"name": unique("branchy"), "url": url, "defaultBranch": branch}),
        );
        assert_invalid(&answer, "default_branch", "");
    }
    let answer = call(
        &server,
        REGISTER,
        json!({"name": "gitproto", "url": "git://127.0.0.1/app.git", "defaultBranch": "main"}),
    );
    assert_invalid(&answer, "url", "");
    assert!(answer.1.to_string().contains("git://"), "{}", answer.1);

    let (code, body) = call(&server, REGISTER, json!({"name": "ok", "url": url}));
    assert_eq!(code, 200, "{body}");
    let id = body["repository"]["id"].as_str().expect("id");
    for branch in bad_branches {
        let answer = call(&server, UPDATE, json!({"id": id, "defaultBranch": branch}));
        assert_invalid(&answer, "default_branch", "");
        for field in ["featureBranch", "targetBranch"] {
            let mut spec = json!({
                "title": "Add a greeting",
                "description": "Add greet(name) to calc.py returning 'Hello, <name>!'.",
                "repositoryId": id,
            });
            spec[field] = json!(branch);
            let answer = call(&server, CREATE, json!({ "spec": spec }));
            let wire = if field == "featureBranch" {
                "spec.feature_branch"
            } else {
                "spec.target_branch"
            };
            assert_invalid(&answer, wire, "");
        }
    }
    assert_eq!(get(&server, id)["defaultBranch"], "main");
}
