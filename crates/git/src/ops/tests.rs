//! Tests against real git: local bare repositories, a real smart-HTTP server with basic
//! auth, closed ports and a server that never answers.

use super::*;
use crate::feature_branch_name;
use builder_testkit::{
    GitHttpServer, SilentServer, closed_port, git_command, make_bare_repo, read_branch_file,
};
use std::time::Instant;
use tempfile::TempDir;

const USER: &str = "alice";
const PASS: &str = "pw-Sup3r-SECRET-9f1c";

struct Env {
    git: Git,
    root: TempDir,
    work: TempDir,
    _scratch: TempDir,
}

fn env_with(config: GitConfig) -> Env {
    let scratch = tempfile::tempdir().unwrap();
    Env {
        git: Git::new(config, scratch.path()).unwrap(),
        root: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        _scratch: scratch,
    }
}

fn env() -> Env {
    env_with(GitConfig {
        author_name: "Builder Bot".into(),
        author_email: "bot@builder.invalid".into(),
        ..GitConfig::default()
    })
}

fn basic() -> GitCredential {
    GitCredential::Basic {
        username: USER.into(),
        password: PASS.into(),
    }
}

fn git_out(args: &[&str]) -> String {
    let out = git_command().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn bare_head(bare: &Path, branch: &str) -> String {
    git_out(&[
        "--git-dir",
        &bare.to_string_lossy(),
        "rev-parse",
        &format!("refs/heads/{branch}"),
    ])
}

/// Every process whose command line mentions `needle` (e.g. a test server's port).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) {
                found.push(text);
            }
        }
    }
    found
}

async fn assert_no_process_mentions(needle: &str) {
    // Killed processes can take a moment to disappear from /proc.
    for _ in 0..50 {
        if processes_mentioning(needle).is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("left over: {:?}", processes_mentioning(needle));
}

fn assert_no_secret(text: &str) {
    assert!(!text.contains(PASS), "secret leaked: {text}");
    assert!(!text.contains("SECRET"), "secret leaked: {text}");
}

#[tokio::test]
async fn clones_over_file_url_and_plain_path() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "demo", &[("README.md", "hi\n")]).unwrap();
    let expected = bare_head(&bare, "main");

    let url = format!("file://{}", bare.display());
    let dest = e.work.path().join("via-url");
    let sha = e
        .git
        .clone_repo(&url, &dest, None, &GitCredential::None)
        .await
        .unwrap();
    assert_eq!(sha, expected);
    assert_eq!(
        std::fs::read_to_string(dest.join("README.md")).unwrap(),
        "hi\n"
    );

    let dest = e.work.path().join("via-path");
    let sha = e
        .git
        .clone_repo(
            &bare.to_string_lossy(),
            &dest,
            Some("main"),
            &GitCredential::None,
        )
        .await
        .unwrap();
    assert_eq!(sha, expected);
    assert_eq!(e.git.head_sha(&dest).await.unwrap(), expected);
    assert_eq!(
        e.git
            .ls_remote_default_branch(&url, &GitCredential::None)
            .await
            .unwrap(),
        "main"
    );
}

#[tokio::test]
async fn clones_over_smart_http_with_basic_and_token_credentials() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "demo", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, PASS).unwrap();
    let url = server.url("demo.git");
    let expected = bare_head(&bare, "main");

    let dest = e.work.path().join("basic");
    let sha = e.git.clone_repo(&url, &dest, None, &basic()).await.unwrap();
    assert_eq!(sha, expected);

    let token = GitCredential::Token {
        token: PASS.into(),
        username: Some(USER.into()),
    };
    let dest = e.work.path().join("token");
    assert_eq!(
        e.git.clone_repo(&url, &dest, None, &token).await.unwrap(),
        expected
    );
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path == "/demo.git/git-upload-pack" && r.status == 200),
        "{:?}",
        server.requests()
    );
}

#[tokio::test]
async fn token_without_username_uses_x_access_token() {
    let e = env();
    make_bare_repo(e.root.path(), "demo", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), "x-access-token", PASS).unwrap();
    let token = GitCredential::Token {
        token: PASS.into(),
        username: None,
    };
    let branch = e
        .git
        .ls_remote_default_branch(&server.url("demo.git"), &token)
        .await
        .unwrap();
    assert_eq!(branch, "main");
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_auth_errors_without_secrets() {
    let e = env();
    make_bare_repo(e.root.path(), "demo", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, "the-right-one").unwrap();
    let url = server.url("demo.git");

    let wrong = basic();
    let dest = e.work.path().join("wrong");
    let err = e
        .git
        .clone_repo(&url, &dest, None, &wrong)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert!(!err.is_transient());
    assert_no_secret(&err.to_string());
    assert_no_secret(&format!("{err:?}"));
    assert_no_secret(&format!("{wrong:?}"));
    assert!(!dest.exists(), "a failed clone leaves no directory behind");
    assert!(server.requests().iter().any(|r| r.status == 401));

    let err = e
        .git
        .ls_remote_default_branch(&url, &GitCredential::None)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");

    let token = GitCredential::Token {
        token: PASS.into(),
        username: None,
    };
    let err = e
        .git
        .remote_branch_sha(&url, "main", &token)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert_no_secret(&format!("{err} {err:?} {token:?}"));
}

#[tokio::test]
async fn closed_port_is_unreachable() {
    let e = env();
    let url = format!("http://127.0.0.1:{}/demo.git", closed_port().unwrap());
    let err = e
        .git
        .clone_repo(&url, &e.work.path().join("x"), None, &basic())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Unreachable { .. }), "{err:?}");
    assert!(err.is_transient());
    assert_no_secret(&format!("{err} {err:?}"));
}

#[tokio::test]
async fn missing_repositories_and_branches_are_not_found() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "demo", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, PASS).unwrap();

    let err = e
        .git
        .clone_repo(
            &server.url("nope.git"),
            &e.work.path().join("a"),
            None,
            &basic(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");

    let missing = e.root.path().join("missing.git");
    let err = e
        .git
        .clone_repo(
            &missing.to_string_lossy(),
            &e.work.path().join("b"),
            None,
            &GitCredential::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");

    let err = e
        .git
        .clone_repo(
            &bare.to_string_lossy(),
            &e.work.path().join("c"),
            Some("no-such-branch"),
            &GitCredential::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");

    assert_eq!(
        e.git
            .remote_branch_sha(&server.url("demo.git"), "no-such-branch", &basic())
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn full_cycle_over_http_leaves_no_secret_behind() {
    let e = env();
    let bare = make_bare_repo(
        e.root.path(),
        "app",
        &[("src/lib.rs", "pub fn a() {}\n"), ("old.txt", "gone\n")],
    )
    .unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, PASS).unwrap();
    let url = server.url("app.git");
    let cred = basic();
    let wd = e.work.path().join("wc");

    assert_eq!(
        e.git.ls_remote_default_branch(&url, &cred).await.unwrap(),
        "main"
    );
    let base = e.git.clone_repo(&url, &wd, None, &cred).await.unwrap();
    let branch = feature_branch_name("0190f3a2-7c1d-7e4b-9a55-3c2b1d0e9f8a", "Add b()");
    e.git.checkout_new_branch(&wd, &branch).await.unwrap();
    // Idempotent: a second call just stays on the branch.
    e.git.checkout_new_branch(&wd, &branch).await.unwrap();
    assert_eq!(
        git_out(&["-C", &wd.to_string_lossy(), "branch", "--show-current"]),
        branch
    );

    assert!(!e.git.has_changes(&wd).await.unwrap());
    std::fs::write(wd.join("src/lib.rs"), "pub fn a() {}\npub fn b() {}\n").unwrap();
    std::fs::write(wd.join("new.txt"), "x\ny\n").unwrap();
    std::fs::remove_file(wd.join("old.txt")).unwrap();
    assert!(e.git.has_changes(&wd).await.unwrap());

    let head = e
        .git
        .commit_all(&wd, "Add b()\n\n#42: keep this line")
        .await
        .unwrap();
    assert_ne!(head, base);
    assert!(!e.git.has_changes(&wd).await.unwrap());
    assert_eq!(e.git.head_sha(&wd).await.unwrap(), head);
    let wd_s = wd.to_string_lossy().into_owned();
    assert_eq!(
        git_out(&["-C", &wd_s, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B"]),
        "Builder Bot <bot@builder.invalid>|Builder Bot <bot@builder.invalid>|Add b()\n\n#42: keep this line"
    );
    let again = e.git.commit_all(&wd, "nothing").await.unwrap_err();
    assert!(
        matches!(again, GitError::NothingToCommit { .. }),
        "{again:?}"
    );

    let stats = e.git.diff_stats(&wd, &base, &head).await.unwrap();
    assert_eq!(stats.files_changed, 3, "{stats:?}");
    assert_eq!(stats.lines_added, 3, "{stats:?}");
    assert_eq!(stats.lines_removed, 1, "{stats:?}");
    let mut files = stats.files.clone();
    files.sort();
    assert_eq!(files, ["new.txt", "old.txt", "src/lib.rs"]);
    let patch = e.git.diff_patch(&wd, &base, &head).await.unwrap();
    assert!(patch.contains("+pub fn b() {}"), "{patch}");
    assert!(patch.contains("deleted file mode"), "{patch}");

    assert_eq!(
        e.git.remote_branch_sha(&url, &branch, &cred).await.unwrap(),
        None
    );
    e.git.push_branch(&wd, &url, &branch, &cred).await.unwrap();
    assert_eq!(
        e.git.remote_branch_sha(&url, &branch, &cred).await.unwrap(),
        Some(head.clone())
    );
    assert_eq!(
        read_branch_file(&bare, &branch, "src/lib.rs").as_deref(),
        Some("pub fn a() {}\npub fn b() {}\n")
    );
    assert_eq!(read_branch_file(&bare, &branch, "old.txt"), None);
    assert_eq!(bare_head(&bare, "main"), base, "main is untouched");
    // Pushing the same head again is a harmless no-op (crash-resume).
    e.git.push_branch(&wd, &url, &branch, &cred).await.unwrap();

    let config = std::fs::read_to_string(wd.join(".git/config")).unwrap();
    assert_no_secret(&config);
    assert!(!config.contains('@'), "userinfo in config: {config}");
    assert!(config.contains(&url), "{config}");
    // Nothing anywhere in the working copy's git dir holds the secret.
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", PASS, &format!("{wd_s}/.git")])
        .output()
        .unwrap();
    assert_eq!(grep.status.code(), Some(1), "{grep:?}");
}

#[tokio::test]
async fn resumed_feature_continues_from_the_pushed_branch() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = format!("file://{}", bare.display());
    let none = GitCredential::None;
    let first = e.work.path().join("first");
    e.git.clone_repo(&url, &first, None, &none).await.unwrap();
    e.git
        .checkout_new_branch(&first, "builder/x-1")
        .await
        .unwrap();
    std::fs::write(first.join("a.txt"), "b\n").unwrap();
    let pushed = e.git.commit_all(&first, "change").await.unwrap();
    e.git
        .push_branch(&first, &url, "builder/x-1", &none)
        .await
        .unwrap();

    // A fresh working copy (the first one was lost in a crash) picks the work back up.
    let second = e.work.path().join("second");
    e.git.clone_repo(&url, &second, None, &none).await.unwrap();
    e.git
        .checkout_new_branch(&second, "builder/x-1")
        .await
        .unwrap();
    assert_eq!(e.git.head_sha(&second).await.unwrap(), pushed);
    let config = std::fs::read_to_string(second.join(".git/config")).unwrap();
    assert!(!config.contains("[branch \"builder/x-1\"]"), "{config}");
}

#[tokio::test]
async fn diverged_push_is_rejected() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let none = GitCredential::None;
    // Both working copies start before either pushes, so their histories diverge.
    let mut wds = Vec::new();
    for name in ["one", "two"] {
        let wd = e.work.path().join(name);
        e.git.clone_repo(&url, &wd, None, &none).await.unwrap();
        e.git.checkout_new_branch(&wd, "feat").await.unwrap();
        wds.push(wd);
    }
    let mut heads = Vec::new();
    for (wd, name) in wds.iter().zip(["one", "two"]) {
        std::fs::write(wd.join("a.txt"), name).unwrap();
        heads.push(e.git.commit_all(wd, name).await.unwrap());
        let res = e.git.push_branch(wd, &url, "feat", &none).await;
        if name == "one" {
            res.unwrap();
        } else {
            let err = res.unwrap_err();
            assert!(matches!(err, GitError::PushRejected { .. }), "{err:?}");
        }
    }
    assert_eq!(bare_head(&bare, "feat"), heads[0]);
}

#[tokio::test]
async fn hooks_in_the_working_copy_never_run() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let wd = e.work.path().join("wc");
    e.git
        .clone_repo(&bare.to_string_lossy(), &wd, None, &GitCredential::None)
        .await
        .unwrap();
    let marker = e.work.path().join("hook-ran");
    let hook = wd.join(".git/hooks/pre-commit");
    std::fs::write(
        &hook,
        format!("#!/bin/sh\ntouch '{}'\nexit 0\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();

    std::fs::write(wd.join("a.txt"), "b\n").unwrap();
    e.git.commit_all(&wd, "change").await.unwrap();
    assert!(!marker.exists(), "pre-commit hook ran under commit_all");

    // Control: plain git does run the hook, so the assertion above can fail.
    let out = std::process::Command::new("git")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .args([
            "-C",
            &wd.to_string_lossy(),
            "commit",
            "--allow-empty",
            "-m",
            "x",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        marker.exists(),
        "control: the hook should run under plain git"
    );
}

#[tokio::test]
async fn tampered_working_copy_config_is_refused() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, PASS).unwrap();
    let url = server.url("app.git");
    let wd = e.work.path().join("wc");
    e.git.clone_repo(&url, &wd, None, &basic()).await.unwrap();
    e.git.checkout_new_branch(&wd, "feat").await.unwrap();
    std::fs::write(wd.join("a.txt"), "b\n").unwrap();
    e.git.commit_all(&wd, "change").await.unwrap();

    // What a test run inside the working copy could do: send our credential elsewhere.
    let attacker = "http://127.0.0.1:9/steal/";
    git_out(&[
        "-C",
        &wd.to_string_lossy(),
        "config",
        &format!("url.{attacker}.insteadOf"),
        &url,
    ]);
    let err = e
        .git
        .push_branch(&wd, &url, "feat", &basic())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    assert!(err.to_string().contains("insteadof"), "{err}");
    assert_eq!(read_branch_file(&bare, "feat", "a.txt"), None);
    for op in [
        e.git.has_changes(&wd).await.err(),
        e.git.commit_all(&wd, "m").await.err(),
        e.git.diff_patch(&wd, "HEAD", "HEAD").await.err(),
    ] {
        assert!(matches!(op, Some(GitError::InvalidInput(_))), "{op:?}");
    }
}

#[tokio::test]
async fn op_timeout_kills_git_and_its_helpers() {
    let e = env_with(GitConfig {
        op_timeout: Duration::from_secs(2),
        clone_timeout: Duration::from_secs(2),
        ..GitConfig::default()
    });
    let silent = SilentServer::start().unwrap();
    let url = silent.url("hang.git");
    let needle = format!("127.0.0.1:{}", silent.addr().port());

    let started = Instant::now();
    let err = e
        .git
        .ls_remote_default_branch(&url, &basic())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(silent.accepted() >= 1, "git never reached the server");

    let dest = e.work.path().join("clone");
    let err = e
        .git
        .clone_repo(&url, &dest, None, &basic())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert!(!dest.exists());
    assert_no_process_mentions(&needle).await;
}

#[tokio::test]
async fn dropping_the_future_kills_git() {
    let e = env();
    let silent = SilentServer::start().unwrap();
    let url = silent.url("hang.git");
    let needle = format!("127.0.0.1:{}", silent.addr().port());
    let dest = e.work.path().join("clone");
    let cred = basic();
    let fut = e.git.clone_repo(&url, &dest, None, &cred);
    // Cancel only once git is provably connected and waiting.
    let connected = async {
        while silent.accepted() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        processes_mentioning(&needle)
    };
    let running = tokio::select! {
        res = fut => panic!("clone against a silent server finished: {res:?}"),
        running = connected => running,
    };
    // `select!` has dropped the clone future by now.
    assert!(!running.is_empty(), "git was not running");
    assert_no_process_mentions(&needle).await;
}

#[tokio::test]
async fn ssh_key_goes_through_a_private_file_that_is_removed() {
    let e = env_with(GitConfig {
        op_timeout: Duration::from_secs(3),
        ..GitConfig::default()
    });
    let key = GitCredential::SshKey {
        private_key: "-----BEGIN OPENSSH PRIVATE KEY-----\nNOT-A-REAL-KEY-SECRET-abcdefgh\n-----END OPENSSH PRIVATE KEY-----".into(),
    };
    let dir_entries = |g: &Git| {
        let mut names: Vec<String> = std::fs::read_dir(g.private_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = dir_entries(&e.git);

    let port = closed_port().unwrap();
    let url = format!("ssh://git@127.0.0.1:{port}/r.git");
    let err = e
        .git
        .remote_branch_sha(&url, "main", &key)
        .await
        .unwrap_err();
    // The message comes from ssh itself: GIT_SSH_COMMAND was used.
    assert!(matches!(err, GitError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("ssh: connect to host"), "{err}");
    assert_no_secret(&format!("{err} {err:?} {key:?}"));
    assert_eq!(dir_entries(&e.git), before, "key file left behind");

    // ssh that hangs on a silent server is killed, and the key file still goes away.
    let silent = SilentServer::start().unwrap();
    let url = format!("ssh://git@{}/r.git", silent.addr());
    let err = e
        .git
        .ls_remote_default_branch(&url, &key)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    assert_eq!(dir_entries(&e.git), before, "key file left behind");
    assert_no_process_mentions(&format!("-p {}", silent.addr().port())).await;
}

#[tokio::test]
async fn urls_with_embedded_credentials_and_mismatched_credentials_are_refused() {
    let e = env();
    let dest = e.work.path().join("x");
    for url in [
        format!("https://{USER}:{PASS}@example.invalid/r.git"),
        format!("http://{PASS}@127.0.0.1:1/r.git"),
    ] {
        let err = e
            .git
            .clone_repo(&url, &dest, None, &GitCredential::None)
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
        assert_no_secret(&format!("{err} {err:?}"));
    }
    let err = e
        .git
        .clone_repo("git@host:o/r.git", &dest, None, &basic())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    let err = e
        .git
        .clone_repo(
            "ext::sh -c touch% /tmp/pwned",
            &dest,
            None,
            &GitCredential::None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    let err = e
        .git
        .push_branch(&dest, "/tmp/x", "--force", &GitCredential::None)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
}

#[test]
fn private_dir_is_0700_and_askpass_holds_no_secret() {
    let scratch = tempfile::tempdir().unwrap();
    let git = Git::new(GitConfig::default(), scratch.path()).unwrap();
    let mode = std::fs::metadata(git.private_dir())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    let script = std::fs::read_to_string(&git.inner.askpass).unwrap();
    assert_eq!(script, ASKPASS_SCRIPT);
    let dir = git.private_dir().to_owned();
    drop(git);
    assert!(!dir.exists(), "private dir removed on drop");

    let bad = Git::new(
        GitConfig {
            author_email: "a\n<b>".into(),
            ..GitConfig::default()
        },
        scratch.path(),
    );
    assert!(matches!(bad, Err(GitError::InvalidInput(_))));
}

#[test]
fn numstat_parsing_handles_renames_and_binaries() {
    let raw = b"3\t1\tsrc/a.rs\0-\t-\timg.png\x000\t0\t\0old/name.rs\0new/name.rs\0";
    let stats = parse_numstat_z(raw);
    assert_eq!(
        stats,
        DiffStats {
            files_changed: 3,
            lines_added: 3,
            lines_removed: 1,
            files: vec!["src/a.rs".into(), "img.png".into(), "new/name.rs".into()],
        }
    );
    assert_eq!(parse_numstat_z(b""), DiffStats::default());
}

#[tokio::test]
async fn diff_stats_reports_renames_by_new_path() {
    let e = env();
    let content = "line\n".repeat(20);
    let bare = make_bare_repo(e.root.path(), "app", &[("old.rs", content.as_str())]).unwrap();
    let wd = e.work.path().join("wc");
    let base = e
        .git
        .clone_repo(&bare.to_string_lossy(), &wd, None, &GitCredential::None)
        .await
        .unwrap();
    std::fs::rename(wd.join("old.rs"), wd.join("new.rs")).unwrap();
    let head = e.git.commit_all(&wd, "rename").await.unwrap();
    let stats = e.git.diff_stats(&wd, &base, &head).await.unwrap();
    assert_eq!(stats.files, ["new.rs"]);
    assert_eq!((stats.lines_added, stats.lines_removed), (0, 0));
    let err = e.git.diff_stats(&wd, &base, "nope").await.unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");
}

#[tokio::test]
async fn dot_git_must_be_a_real_directory() {
    let e = env();
    let plain = e.work.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let err = e.git.head_sha(&plain).await.unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");

    // A `.git` file can point git at any repository on the host.
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let redirected = e.work.path().join("redirected");
    std::fs::create_dir(&redirected).unwrap();
    std::fs::write(
        redirected.join(".git"),
        format!("gitdir: {}\n", bare.display()),
    )
    .unwrap();
    for err in [
        e.git.head_sha(&redirected).await.unwrap_err(),
        e.git.has_changes(&redirected).await.unwrap_err(),
        e.git
            .push_branch(&redirected, "/tmp/x", "b", &GitCredential::None)
            .await
            .unwrap_err(),
    ] {
        assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    }
}

/// Checked where the askpass environment is built, so no operation can hand a password to
/// git for a plain-http remote off this machine (nothing is spawned: no traffic either).
#[test]
fn no_askpass_credential_for_plain_http_off_this_machine() {
    let e = env();
    for url in ["http://git.example/app.git", "http://10.1.2.3:8080/app.git"] {
        let err = e.git.prepare(url, &basic()).err().expect("refused");
        assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
        assert!(!err.to_string().contains(PASS), "{err}");
    }
    let local = e.git.prepare("http://127.0.0.1:9/app.git", &basic());
    assert!(local.is_ok_and(|p| p.env.iter().any(|(k, _)| *k == ASKPASS_PASS_VAR)));
    assert!(
        e.git
            .prepare("https://git.example/app.git", &basic())
            .is_ok()
    );
}
