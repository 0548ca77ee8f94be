//! git's https for real: the testkit smart-HTTP server behind TLS with a CA generated per
//! test, trusted through `Git::with_extra_ca_file` (never by weakening verification), and
//! the write-access dry run over http(s) and file remotes.

use super::*;
use builder_testkit::{GitHttpServer, TestCa, git_command, make_bare_repo, read_branch_file};
use tempfile::TempDir;

const USER: &str = "tls-user";
const PASS: &str = "tls-pw-SECRET-77e1";
const READER: &str = "reader";
const READER_PASS: &str = "reader-pw-SECRET-0b3";

struct Tls {
    git: Git,
    ca: TestCa,
    root: TempDir,
    work: TempDir,
    scratch: TempDir,
}

fn git_for(scratch: &Path, ca_file: Option<&Path>) -> Git {
    let git = Git::new(
        GitConfig {
            clone_timeout: Duration::from_secs(30),
            op_timeout: Duration::from_secs(30),
            ..GitConfig::default()
        },
        scratch,
    )
    .unwrap();
    match ca_file {
        Some(path) => git.with_extra_ca_file(path).unwrap(),
        None => git,
    }
}

fn setup() -> Tls {
    let ca = TestCa::new().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca_file(scratch.path(), "ca.pem").unwrap();
    Tls {
        git: git_for(scratch.path(), Some(&ca_file)),
        ca,
        root: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        scratch,
    }
}

fn token() -> GitCredential {
    GitCredential::Token {
        token: PASS.into(),
        username: Some(USER.into()),
    }
}

fn basic() -> GitCredential {
    GitCredential::Basic {
        username: USER.into(),
        password: PASS.into(),
    }
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains("SECRET"), "secret leaked: {text}");
}

/// No file under `dir` contains a secret.
fn assert_no_secret_under(dir: &Path) {
    for secret in [PASS, READER_PASS] {
        let grep = std::process::Command::new("grep")
            .args(["-r", "-l", secret])
            .arg(dir)
            .output()
            .unwrap();
        assert_eq!(grep.status.code(), Some(1), "{secret} found: {grep:?}");
    }
}

/// Refs and object count of a bare repository, to prove a dry run changed nothing.
fn remote_state(bare: &Path) -> (String, String) {
    let run = |args: &[&str]| {
        let out = git_command()
            .arg("--git-dir")
            .arg(bare)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let refs = run(&["for-each-ref", "--format=%(refname) %(objectname)"]);
    let objects = run(&["count-objects", "-v"]);
    (refs, objects)
}

#[tokio::test]
async fn clone_fetch_push_over_https_with_token_and_basic() {
    let t = setup();
    let bare = make_bare_repo(t.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start_tls(t.root.path(), USER, PASS, &t.ca).unwrap();
    let url = server.url("app.git");
    assert!(url.starts_with("https://"), "{url}");

    for (name, cred) in [("token", token()), ("basic", basic())] {
        assert_eq!(
            t.git.ls_remote_default_branch(&url, &cred).await.unwrap(),
            "main"
        );
        // clone
        let cloned = t.work.path().join(format!("clone-{name}"));
        t.git.clone_repo(&url, &cloned, None, &cred).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(cloned.join("a.txt")).unwrap(),
            "a\n"
        );
        // fetch (the mirror) and a working copy from it
        let mirrors = t.work.path().join(format!("mirrors-{name}"));
        let wd = t.work.path().join(format!("wc-{name}"));
        t.git
            .prepare_working_copy(&url, &cred, &mirrors, &wd, None)
            .await
            .unwrap();
        // push
        let branch = format!("builder/tls-{name}");
        t.git.checkout_new_branch(&wd, &branch).await.unwrap();
        std::fs::write(wd.join("a.txt"), format!("over tls with {name}\n")).unwrap();
        let head = t.git.commit_all(&wd, "over tls").await.unwrap();
        t.git.push_branch(&wd, &url, &branch, &cred).await.unwrap();
        assert_eq!(
            read_branch_file(&bare, &branch, "a.txt"),
            Some(format!("over tls with {name}\n"))
        );
        assert_eq!(
            t.git.remote_branch_sha(&url, &branch, &cred).await.unwrap(),
            Some(head)
        );
        // Credentials never reach a URL, a config file or anything else on disk.
        for config in [cloned.join(".git/config"), wd.join(".git/config")] {
            let text = std::fs::read_to_string(&config).unwrap();
            assert!(!text.contains('@'), "userinfo in {config:?}: {text}");
            assert!(text.contains(&url) || !text.contains("https://"), "{text}");
        }
        assert_no_secret_under(&cloned);
        assert_no_secret_under(&wd);
        assert_no_secret_under(&mirrors);
    }
    // The trust bundle holds certificates only, and both the platform's and the test CA's.
    assert_no_secret_under(t.scratch.path());
    let bundle = std::fs::read_to_string(t.git.private_dir().join("ca-bundle.pem")).unwrap();
    assert!(bundle.contains(t.ca.ca_pem().trim()));
    assert!(
        bundle.matches("BEGIN CERTIFICATE").count() > 1,
        "platform roots kept"
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path == "/app.git/git-receive-pack" && r.status == 200)
    );
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_clear_error_without_the_credential() {
    let t = setup();
    make_bare_repo(t.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    // Served with a CA the Git under test has never heard of.
    let stranger = TestCa::new().unwrap();
    let server = GitHttpServer::start_tls(t.root.path(), USER, PASS, &stranger).unwrap();
    let url = server.url("app.git");
    // And a Git with no extra CA at all: only the platform's roots.
    let plain_scratch = tempfile::tempdir().unwrap();
    let plain = git_for(plain_scratch.path(), None);
    for git in [&t.git, &plain] {
        for cred in [token(), basic()] {
            let dest = t.work.path().join("never");
            let err = git.clone_repo(&url, &dest, None, &cred).await.unwrap_err();
            assert!(matches!(err, GitError::Tls { .. }), "{err:?}");
            assert!(!err.is_transient(), "retrying cannot fix a certificate");
            let shown = format!("{err} {err:?}");
            assert!(shown.contains("certificate"), "{shown}");
            assert!(shown.contains("BUILDER_EXTRA_CA_FILE"), "{shown}");
            assert_no_secret(&shown);
            assert!(!dest.exists(), "a failed clone leaves nothing");
            let err = git.check_push_access(&url, &cred).await.unwrap_err();
            assert!(matches!(err, GitError::Tls { .. }), "{err:?}");
            assert_no_secret(&format!("{err} {err:?}"));
        }
    }
    // The refused handshakes never got as far as HTTP, let alone basic auth.
    assert!(server.requests().is_empty(), "{:?}", server.requests());
}

#[tokio::test]
async fn a_repository_config_cannot_switch_verification_off() {
    let t = setup();
    make_bare_repo(t.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let stranger = TestCa::new().unwrap();
    let server = GitHttpServer::start_tls(t.root.path(), USER, PASS, &stranger).unwrap();
    // A mirror whose config (written by someone else) says sslVerify=false.
    let mirrors = t.work.path().join("mirrors");
    let mirror = mirror_path(&mirrors, &server.url("app.git"));
    std::fs::create_dir_all(&mirror).unwrap();
    let out = git_command()
        .args(["init", "--quiet", "--bare"])
        .arg(&mirror)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = git_command()
        .arg("--git-dir")
        .arg(&mirror)
        .args(["config", "http.sslVerify", "false"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = t
        .git
        .fetch_mirror(&server.url("app.git"), &basic(), &mirrors)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Tls { .. }), "{err:?}");
}

#[tokio::test]
async fn with_extra_ca_file_refuses_what_is_not_a_certificate() {
    let scratch = tempfile::tempdir().unwrap();
    let bad = scratch.path().join("key.pem");
    std::fs::write(
        &bad,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let git = Git::new(GitConfig::default(), scratch.path()).unwrap();
    let err = git.with_extra_ca_file(&bad).unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    assert!(
        Git::new(GitConfig::default(), scratch.path())
            .unwrap()
            .with_extra_ca_file(&scratch.path().join("missing.pem"))
            .is_err()
    );
    // Like with_limits: only before the handle is shared.
    let ca = TestCa::new().unwrap();
    let good = ca.write_ca_file(scratch.path(), "ca.pem").unwrap();
    let git = Git::new(GitConfig::default(), scratch.path()).unwrap();
    let _shared = git.clone();
    assert!(matches!(
        git.with_extra_ca_file(&good),
        Err(GitError::InvalidInput(_))
    ));
}

#[tokio::test]
async fn push_access_dry_run_over_https_changes_nothing() {
    let t = setup();
    let bare = make_bare_repo(t.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::builder(t.root.path(), USER, PASS)
        .read_only_user(READER, READER_PASS)
        .tls(&t.ca)
        .start()
        .unwrap();
    let url = server.url("app.git");
    let before = remote_state(&bare);

    t.git.check_push_access(&url, &token()).await.unwrap();
    t.git.check_push_access(&url, &basic()).await.unwrap();
    assert_eq!(remote_state(&bare), before, "the dry run created something");
    let reqs = server.requests();
    // receive-pack's advertisement was fetched (and authenticated); no pack was sent.
    assert!(
        reqs.iter()
            .any(|r| r.query == "service=git-receive-pack" && r.status == 200),
        "{reqs:?}"
    );
    assert!(
        !reqs
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with("git-receive-pack")),
        "{reqs:?}"
    );

    // A credential that may read but not push.
    let reader = GitCredential::Basic {
        username: READER.into(),
        password: READER_PASS.into(),
    };
    assert_eq!(
        t.git.ls_remote_default_branch(&url, &reader).await.unwrap(),
        "main"
    );
    let err = t.git.check_push_access(&url, &reader).await.unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert_no_secret(&format!("{err} {err:?}"));
    // A wrong password is refused too.
    let wrong = GitCredential::Basic {
        username: USER.into(),
        password: "nope-SECRET".into(),
    };
    let err = t.git.check_push_access(&url, &wrong).await.unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert_no_secret(&format!("{err} {err:?}"));
    assert_eq!(remote_state(&bare), before);
    // The scratch repository is gone again.
    let mut left: Vec<String> = std::fs::read_dir(t.git.private_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["askpass.sh", "ca-bundle.pem"]);
}

#[tokio::test]
async fn push_access_dry_run_over_file_changes_nothing() {
    let t = setup();
    let bare = make_bare_repo(t.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let before = remote_state(&bare);
    for url in [
        format!("file://{}", bare.display()),
        bare.display().to_string(),
    ] {
        t.git
            .check_push_access(&url, &GitCredential::None)
            .await
            .unwrap();
    }
    assert_eq!(remote_state(&bare), before);
    let err = t
        .git
        .check_push_access(
            &t.root.path().join("missing.git").display().to_string(),
            &GitCredential::None,
        )
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
}
