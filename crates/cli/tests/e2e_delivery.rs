//! End-to-end delivery over every transport and to every forge adapter (issue 4): the real
//! `builder serve` binary, the real BAML sidecar and bubblewrap sandbox (pytest), the scripted
//! LLM, and real remotes — smart HTTP over TLS (a CA made per test, trusted through
//! `BUILDER_EXTRA_CA_FILE`) with a TOKEN, OpenSSH's `sshd` with an SSH_KEY, a `file://`
//! repository, and testkit's fake GitHub / GitLab / Bitbucket / Gitea / Azure DevOps next to
//! a smart-HTTP git server. Each test delivers a feature to a pushed branch, checks the
//! branch in the remote, and ends with the same credential scan: no test credential (nor its
//! base64 forms) in the server's log, any event, any file of the data directory (artifacts,
//! mirrors, kept working copies, caches, the git private dir), nor anything the remotes,
//! the forge and the LLM were sent besides the auth itself. The https test first tries to
//! register its token inside the URL in every credential-bearing form, so the scan proves
//! those refused registrations left it nowhere either.

mod common;

use base64::Engine;
use builder_testkit::{
    FakeForge, FakeForgeKind, FakePr, GitHttpServer, SshServer, TestCa, generate_ssh_key,
    git_command, make_bare_repo, read_branch_file,
};
use common::*;
use llm_script_server::{Running, Script};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const GIT_USER: &str = "dana";
const FEATURE_TIMEOUT: Duration = Duration::from_secs(180);

const PLAN_SUMMARY: &str = "add greet and its test";

// ---------------------------------------------------------------- the builder server

/// `builder serve` on a fresh data directory with the scripted LLM, keeping working copies
/// so the credential scan sees them too, and logging git, forge, worker and LLM activity at
/// debug.
fn start_builder(llm: &Running, extra_env: &[(&str, String)]) -> Server {
    let mut env: Vec<(&str, String)> = llm_env(llm);
    env.push(("BUILDER_KEEP_WORKSPACES", "true".into()));
    env.push((
        "LOG_LEVEL",
        "info,builder_git=debug,builder_forge=debug,builder_worker=debug,builder_llm=debug".into(),
    ));
    env.extend(extra_env.iter().cloned());
    start_server(&env)
}

/// The scripted answers for `features` features delivered in one go.
async fn scripted_llm(features: usize) -> Running {
    let entries = (0..features).flat_map(|_| happy_path()).collect();
    llm_script_server::start(Script::new(entries))
        .await
        .expect("scripted LLM")
}

/// Registers a repository; returns the API's view of it.
fn register(builder: &Server, request: Value) -> Value {
    let (code, body) = call(
        builder,
        "builder.repository.v1.RepositoryService/Register",
        request,
    );
    assert_eq!(code, 200, "register: {body}\n{}", server_log(builder));
    assert_eq!(body["repository"]["defaultBranch"], "main", "{body}");
    body["repository"].clone()
}

/// Submits the greeting feature, on `branch` when given.
fn create_feature(builder: &Server, repo_id: &str, branch: Option<&str>) -> String {
    let mut spec = json!({
        "title": "Add a greeting",
        "description": "Add greet(name) to calc.py returning 'Hello, <name>!' with a test.",
        "repositoryId": repo_id,
        "acceptanceCriteria": ["greet('Bob') returns 'Hello, Bob!'"],
        "pathHints": ["calc.py"],
    });
    if let Some(branch) = branch {
        spec["featureBranch"] = json!(branch);
    }
    let (code, body) = call(
        builder,
        "builder.feature.v1.FeatureService/Create",
        json!({ "spec": spec }),
    );
    assert_eq!(code, 200, "create: {body}");
    body["execution"]["id"]
        .as_str()
        .expect("execution id")
        .to_owned()
}

/// Runs the feature to its end and asserts it delivered; returns the execution.
fn deliver(builder: &Server, id: &str) -> Value {
    let execution = wait_terminal(builder, id, FEATURE_TIMEOUT);
    assert_eq!(
        execution["state"],
        "COMPLETED",
        "{execution}\nevents: {:?}\n{}",
        types(&events(builder, id)),
        server_log(builder)
    );
    execution
}

// ---------------------------------------------------------------- remotes

/// `<root>/<name>.git` holding calc.py and its test on `main`.
fn calc_repo(root: &Path, name: &str) -> PathBuf {
    make_bare_repo(
        root,
        name,
        &[("calc.py", CALC), ("tests/test_calc.py", TEST_CALC)],
    )
    .expect("bare repository")
}

/// The delivered branch is in the remote at the reported commit, with the change, and
/// `main` is untouched.
fn assert_branch_in_remote(bare: &Path, execution: &Value) {
    let branch = execution["result"]["branchName"]
        .as_str()
        .expect("branch name");
    let sha = execution["result"]["commitSha"].as_str().expect("sha");
    let calc = read_branch_file(bare, branch, "calc.py")
        .unwrap_or_else(|| panic!("{branch} is not in the remote {}", bare.display()));
    assert!(calc.contains("return f'Hello, {name}!'"), "{calc}");
    assert!(read_branch_file(bare, branch, "tests/test_greet.py").is_some());
    let out = git_command()
        .arg("--git-dir")
        .arg(bare)
        .args(["rev-parse", &format!("refs/heads/{branch}")])
        .output()
        .expect("git rev-parse");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), sha);
    assert!(read_branch_file(bare, "main", "tests/test_greet.py").is_none());
}

// ---------------------------------------------------------------- the credential scan

/// The test's credentials and the forms they could leak in: as given, and base64 as in a
/// basic-auth header (`user:secret`, `x-access-token:secret`, Azure's `:secret`).
fn secret_forms(secrets: &[&str]) -> Vec<String> {
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let mut forms = vec![LLM_KEY.to_owned()];
    for s in secrets {
        forms.push((*s).to_owned());
        forms.push(b64(format!("{GIT_USER}:{s}")));
        forms.push(b64(format!("x-access-token:{s}")));
        forms.push(b64(format!(":{s}")));
    }
    forms
}

/// The private parts of an OpenSSH private key: its base64 body, whole and line by line,
/// without the first lines (the format's fixed header and the public key).
fn private_key_forms(private_key: &str) -> Vec<String> {
    let lines: Vec<&str> = private_key
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
        .collect();
    assert!(lines.len() > 3, "an OpenSSH key body: {private_key}");
    let mut forms = vec![lines.concat()];
    forms.extend(
        lines[2..lines.len() - 1]
            .iter()
            .map(|l| (*l).to_owned())
            .filter(|l| l.len() >= 40),
    );
    forms
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            files_under(&entry.path(), out);
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// None of `secrets` in the server's log, in any event of `features` (ListEvents) or their
/// Get, in any file under the data directory, nor in `seen_by_others` (what the remotes, the
/// forge and the LLM recorded, minus the auth they were given).
fn assert_no_credentials(
    builder: &Server,
    features: &[&str],
    secrets: &[String],
    seen_by_others: &[(&str, String)],
) {
    let found = credential_findings(builder, features, secrets, seen_by_others);
    assert!(found.is_empty(), "test credentials leaked: {found:#?}");
}

/// Where [`assert_no_credentials`] finds a secret: one line per (place, secret prefix).
fn credential_findings(
    builder: &Server,
    features: &[&str],
    secrets: &[String],
    seen_by_others: &[(&str, String)],
) -> Vec<String> {
    let log = std::fs::read(&builder.log).expect("log");
    // Git runs were logged at debug, so the log scan covers git's logging too.
    assert!(find(&log, b"running git"), "{}", server_log(builder));
    let mut texts: Vec<(String, Vec<u8>)> = vec![("the server log".into(), log)];
    for id in features {
        let events = events(builder, id);
        assert!(!events.is_empty(), "no events for {id}");
        for e in &events {
            texts.push((format!("event {} of {id}", e["type"]), e.to_string().into()));
        }
        let (_, got) = call(
            builder,
            "builder.feature.v1.FeatureService/Get",
            json!({ "id": id }),
        );
        texts.push((format!("Get {id}"), got.to_string().into()));
    }
    let mut files = Vec::new();
    files_under(&builder.data_dir(), &mut files);
    let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    for (what, name) in [
        ("an artifact", "/artifacts/"),
        ("a mirror", "/mirrors/"),
        ("a working copy", "/workspaces/"),
    ] {
        assert!(
            names.iter().any(|n| n.contains(name)),
            "the scan found no file of {what} ({name}) under {}",
            builder.data_dir().display()
        );
    }
    assert!(names.iter().any(|n| n.ends_with("change.patch")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        texts.push((file.display().to_string(), bytes));
    }
    for (what, text) in seen_by_others {
        texts.push(((*what).to_owned(), text.clone().into_bytes()));
    }
    let mut found = Vec::new();
    for (what, bytes) in &texts {
        for secret in secrets {
            if find(bytes, secret.as_bytes()) {
                // Only a prefix: the failure message must not leak it either.
                found.push(format!("{}… in {what}", &secret[..6.min(secret.len())]));
            }
        }
    }
    found
}

/// What the scripted LLM was sent (its recorded headers hold fingerprints only).
fn llm_seen(llm: &Running) -> (&'static str, String) {
    (
        "the LLM's requests",
        serde_json::to_string(&llm.requests()).unwrap_or_default(),
    )
}

/// What the git server was asked (paths and queries; it never records credentials).
fn git_seen(git: &GitHttpServer) -> (&'static str, String) {
    ("the git server's requests", format!("{:?}", git.requests()))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

/// Every way of putting `secret` into the repository URL itself instead of the credential
/// field (`url` is the real `https://host:port/path`): refused as invalid_argument on `url`,
/// pointing at the `credential` field and never echoing it. The default branch is given, so
/// an accepted one would not be probed. The caller's credential scan then proves `secret`
/// went nowhere.
fn refuse_urls_carrying(builder: &Server, url: &str, secret: &str) {
    let rest = url.strip_prefix("https://").expect("an https URL");
    let (authority, path) = rest.split_once('/').expect("host/path");
    let host = authority.split(':').next().expect("host");
    for bad in [
        format!("https://x-access-token:{secret}@{rest}"),
        format!("https://{secret}@{rest}"),
        format!("x-access-token:{secret}@{host}:{path}"),
        format!("https:/x-access-token:{secret}@{rest}"),
        format!("https:x-access-token:{secret}@{rest}"),
        format!("{url}?private_token={secret}"),
        format!("{url}#{secret}"),
        format!("https://x-access-token%3A{secret}@{rest}"),
        format!("ssh://git:{secret}@{host}/{path}"),
        format!("ssh://git%3A{secret}@{host}/{path}"),
    ] {
        let (code, body) = call(
            builder,
            "builder.repository.v1.RepositoryService/Register",
            json!({"name": unique("in-url"), "url": bad, "defaultBranch": "main"}),
        );
        assert_eq!(
            (code, body["code"].as_str()),
            (400, Some("invalid_argument")),
            "a URL form carrying the secret was not refused: {body}"
        );
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("url"), "{message}");
        assert!(!body.to_string().contains(secret), "the answer echoes it");
    }
}

// ---------------------------------------------------------------- transports

/// Smart HTTP over TLS with a TOKEN credential: the git server's certificate comes from a CA
/// made for this test, trusted only through `BUILDER_EXTRA_CA_FILE`; the token goes as basic
/// auth with the default username `x-access-token`.
#[tokio::test(flavor = "multi_thread")]
async fn delivers_over_https_with_a_token_and_a_private_ca() {
    let token = unique("tok-https");
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(dir.path(), "app");
    let ca = TestCa::new().expect("test CA");
    let ca_file = ca.write_ca_file(dir.path(), "ca.pem").expect("CA file");
    let git = GitHttpServer::start_tls(dir.path(), "x-access-token", &token, &ca)
        .expect("https git server");
    assert!(git.url("app.git").starts_with("https://127.0.0.1:"));
    let llm = scripted_llm(1).await;
    let builder = start_builder(
        &llm,
        &[("BUILDER_EXTRA_CA_FILE", ca_file.display().to_string())],
    );
    // The token pasted into the URL instead: refused; the scan below covers it too.
    refuse_urls_carrying(&builder, &git.url("app.git"), &token);
    let repo = register(
        &builder,
        json!({"name": "https-app", "url": git.url("app.git"),
               "credential": {"type": "TOKEN", "token": token}}),
    );
    assert_eq!(repo["credentialType"], "TOKEN", "{repo}");
    let id = create_feature(&builder, repo["id"].as_str().expect("repo id"), None);
    let execution = deliver(&builder, &id);
    assert_branch_in_remote(&bare, &execution);
    let requests = git.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/git-receive-pack") && r.status == 200),
        "the push went over https: {requests:?}"
    );
    assert_no_credentials(
        &builder,
        &[&id],
        &secret_forms(&[&token]),
        &[llm_seen(&llm), git_seen(&git)],
    );
}

/// ssh with an SSH_KEY credential against OpenSSH's sshd: the unknown host key is trusted on
/// first use into builder's own known_hosts (never ~/.ssh), and the key file lives only for
/// the operation.
#[tokio::test(flavor = "multi_thread")]
async fn delivers_over_ssh_with_a_key_trusting_the_host_on_first_use() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(dir.path(), "app");
    let (private_key, public_key) = generate_ssh_key().expect("ssh key");
    let sshd = SshServer::start(dir.path(), &public_key).expect("sshd");
    let host_key_body = sshd
        .host_public_key()
        .split_whitespace()
        .nth(1)
        .expect("host key body")
        .to_owned();
    let llm = scripted_llm(1).await;
    let builder = start_builder(&llm, &[]);
    let repo = register(
        &builder,
        json!({"name": "ssh-app", "url": sshd.url("app"),
               "credential": {"type": "SSH_KEY", "sshPrivateKey": private_key}}),
    );
    assert_eq!(repo["credentialType"], "SSH_KEY", "{repo}");
    let id = create_feature(&builder, repo["id"].as_str().expect("repo id"), None);
    let execution = deliver(&builder, &id);
    assert_branch_in_remote(&bare, &execution);

    // Trust on first use, recorded under builder's data directory.
    let mut files = Vec::new();
    files_under(&builder.data_dir(), &mut files);
    let known_hosts: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.file_name().is_some_and(|n| n == "known_hosts"))
        .collect();
    assert_eq!(known_hosts.len(), 1, "{files:?}");
    let known = std::fs::read_to_string(known_hosts[0]).expect("known_hosts");
    assert!(
        known.contains(&host_key_body)
            && known.contains(&format!("[127.0.0.1]:{}", sshd.addr().port())),
        "{known}"
    );
    let home_known = Path::new(&std::env::var("HOME").unwrap_or_default()).join(".ssh/known_hosts");
    assert!(
        !std::fs::read_to_string(home_known)
            .unwrap_or_default()
            .contains(&host_key_body),
        "the host key went to ~/.ssh"
    );
    let log = sshd.log();
    assert!(log.contains("Accepted publickey"), "{log}");

    let mut secrets = secret_forms(&[]);
    secrets.extend(private_key_forms(&private_key));
    assert_no_credentials(
        &builder,
        &[&id],
        &secrets,
        &[llm_seen(&llm), ("sshd's log", log)],
    );
}

/// A `file://` remote needs no credential.
#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_a_file_url_without_a_credential() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(dir.path(), "app");
    let llm = scripted_llm(1).await;
    let builder = start_builder(&llm, &[]);
    let repo = register(
        &builder,
        json!({"name": "local-app", "url": format!("file://{}", bare.display())}),
    );
    assert_ne!(repo["hasCredentials"], true, "{repo}");
    let id = create_feature(&builder, repo["id"].as_str().expect("repo id"), None);
    let execution = deliver(&builder, &id);
    assert_branch_in_remote(&bare, &execution);
    let events = events(&builder, &id);
    assert!(
        !types(&events).iter().any(|t| t == "pull_request.opened"),
        "a plain remote has no pull request"
    );
    assert_no_credentials(&builder, &[&id], &secret_forms(&[]), &[llm_seen(&llm)]);

    // The scan is live: a key planted deep in a working copy is found.
    let planted = builder.data_dir().join("workspaces/planted/.git/leak");
    std::fs::create_dir_all(planted.parent().expect("parent")).expect("mkdir");
    std::fs::write(&planted, format!("key={LLM_KEY}\n")).expect("plant");
    let found = credential_findings(&builder, &[&id], &secret_forms(&[]), &[]);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("planted/.git/leak"), "{found:?}");
}

// ---------------------------------------------------------------- forges

const FRESH_BRANCH: &str = "builder/add-greeting";
const REDELIVERED_BRANCH: &str = "builder/add-greeting-again";

/// Two features on one server against a fake `kind` forge next to a smart-HTTP git server:
/// one delivers to a fresh branch and opens exactly one pull request whose body has the
/// plan, the change and the test summary; the other delivers to a branch that already has an
/// open pull request (from an earlier delivery) and updates it instead of opening another.
async fn delivers_and_opens_then_updates_a_pull_request(kind: FakeForgeKind, provider: &str) {
    let token = unique("tok-forge");
    let dir = tempfile::tempdir().expect("tempdir");
    let bare = calc_repo(dir.path(), kind.git_repo_name());
    let git = GitHttpServer::start(dir.path(), GIT_USER, &token).expect("git server");
    let forge = FakeForge::start(kind, &bare, &token).expect("fake forge");
    forge.with(|f| {
        f.prs.push(FakePr {
            number: 1,
            head: REDELIVERED_BRANCH.into(),
            base: "main".into(),
            title: "Add a greeting (earlier delivery)".into(),
            body: "an earlier delivery".into(),
            source: "acme/widget".into(),
        })
    });
    let llm = scripted_llm(2).await;
    let builder = start_builder(&llm, &[]);
    let repo = register(
        &builder,
        json!({"name": format!("forge-{provider}"),
               "url": git.url(&format!("{}.git", kind.git_repo_name())),
               "provider": provider,
               "properties": {"forge_api_base": forge.api_base()},
               "credential": {"type": "TOKEN", "token": token, "username": GIT_USER}}),
    );
    assert_eq!(repo["provider"], provider, "{repo}");
    let repo_id = repo["id"].as_str().expect("repo id");
    let fresh = create_feature(&builder, repo_id, Some(FRESH_BRANCH));
    let again = create_feature(&builder, repo_id, Some(REDELIVERED_BRANCH));
    let fresh_execution = deliver(&builder, &fresh);
    let again_execution = deliver(&builder, &again);
    assert_branch_in_remote(&bare, &fresh_execution);
    assert_branch_in_remote(&bare, &again_execution);

    let prs = forge.pull_requests();
    let (creates, updates) = forge.with(|f| (f.creates, f.updates));
    assert_eq!(
        (creates, updates, prs.len()),
        (1, 1, 2),
        "one opened, one updated: {prs:?}\n{:?}",
        forge.requests()
    );
    let opened = prs
        .iter()
        .find(|p| p.head == FRESH_BRANCH)
        .expect("the pull request of the fresh branch");
    assert_eq!(opened.base, "main");
    assert_eq!(opened.title, "Add a greeting");
    let updated = prs
        .iter()
        .find(|p| p.head == REDELIVERED_BRANCH)
        .expect("the earlier pull request");
    assert_eq!(updated.number, 1);
    assert_eq!(updated.title, "Add a greeting");
    for (pr, id) in [(opened, &fresh), (updated, &again)] {
        for part in [
            &format!("**Plan** — {PLAN_SUMMARY}"),
            "add greet(name) to calc.py with a test",
            "**Change**: 2 file(s)",
            "calc.py",
            "tests/test_greet.py",
            "**Tests**: 2 passed, 0 failed",
            id.as_str(),
        ] {
            assert!(
                pr.body.contains(part),
                "{provider} PR body lacks {part:?}:\n{}",
                pr.body
            );
        }
    }
    for (execution, id, number, created) in [
        (&fresh_execution, &fresh, opened.number, true),
        (&again_execution, &again, 1, false),
    ] {
        let url = execution["result"]["pullRequestUrl"]
            .as_str()
            .unwrap_or_default();
        assert!(url.ends_with(&kind.web_path(number)), "{url}");
        let events = events(&builder, id);
        let pr_events: Vec<&Value> = events
            .iter()
            .filter(|e| {
                e["type"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("pull_request."))
            })
            .collect();
        assert_eq!(pr_events.len(), 1, "{pr_events:?}");
        assert_eq!(pr_events[0]["type"], "pull_request.opened", "{pr_events:?}");
        assert_eq!(pr_events[0]["payload"]["created"], created, "{pr_events:?}");
        // Payload numbers travel as JSON numbers of a protobuf Struct (doubles).
        assert_eq!(
            pr_events[0]["payload"]["number"].as_f64(),
            Some(number as f64)
        );
    }
    assert!(
        server_log(&builder).contains("forge request"),
        "forge calls are logged (at debug), so the log scan covers them"
    );
    let forge_seen = forge
        .requests()
        .iter()
        .map(|r| format!("{} {}?{} {}\n", r.method, r.path, r.query, r.body))
        .collect::<String>();
    assert_no_credentials(
        &builder,
        &[&fresh, &again],
        &secret_forms(&[&token]),
        &[
            llm_seen(&llm),
            git_seen(&git),
            ("the forge's requests", forge_seen),
        ],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_github_and_opens_then_updates_a_pull_request() {
    delivers_and_opens_then_updates_a_pull_request(FakeForgeKind::Github, "GITHUB").await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_gitlab_and_opens_then_updates_a_merge_request() {
    delivers_and_opens_then_updates_a_pull_request(FakeForgeKind::Gitlab, "GITLAB").await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_bitbucket_and_opens_then_updates_a_pull_request() {
    delivers_and_opens_then_updates_a_pull_request(FakeForgeKind::Bitbucket, "BITBUCKET").await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_gitea_and_opens_then_updates_a_pull_request() {
    delivers_and_opens_then_updates_a_pull_request(FakeForgeKind::Gitea, "GITEA").await
}

#[tokio::test(flavor = "multi_thread")]
async fn delivers_to_azure_devops_and_opens_then_updates_a_pull_request() {
    delivers_and_opens_then_updates_a_pull_request(FakeForgeKind::AzureDevops, "AZURE_DEVOPS").await
}
