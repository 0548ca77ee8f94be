//! The ssh transport for real: OpenSSH's `sshd` on a loopback port with its own host key,
//! a generated ed25519 key as the credential, host keys trusted on first use and pinned
//! afterwards. Skipped (with a message) where openssh-server is not installed.

use super::*;
use builder_testkit::{SshServer, generate_ssh_key, make_bare_repo, read_branch_file};

struct Setup {
    git: Git,
    server: SshServer,
    cred: GitCredential,
    public: String,
    _root: tempfile::TempDir,
    work: tempfile::TempDir,
    _scratch: tempfile::TempDir,
}

/// Needs sshd (`./scripts/setup` installs openssh-server); without it the start fails and
/// says so.
fn setup() -> Setup {
    let root = tempfile::tempdir().unwrap();
    make_bare_repo(root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let (private, public) = generate_ssh_key().unwrap();
    let server = SshServer::start(root.path(), &public).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    Setup {
        git: Git::new(
            GitConfig {
                op_timeout: Duration::from_secs(20),
                clone_timeout: Duration::from_secs(20),
                ..GitConfig::default()
            },
            scratch.path(),
        )
        .unwrap(),
        server,
        cred: GitCredential::SshKey {
            private_key: private,
        },
        public,
        _root: root,
        work: tempfile::tempdir().unwrap(),
        _scratch: scratch,
    }
}

/// The base64 body of a public key line.
fn key_body(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or_default()
}

fn private_dir_files(git: &Git) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(git.private_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn clone_mirror_and_push_over_ssh_with_a_key() {
    let s = setup();
    let url = s.server.url("app");
    let bare = s._root.path().join("app.git");
    assert_eq!(
        s.git.ls_remote_default_branch(&url, &s.cred).await.unwrap(),
        "main"
    );
    // Trust on first use, recorded in builder's own known_hosts (never ~/.ssh).
    let known = std::fs::read_to_string(&s.git.inner.known_hosts).unwrap();
    assert!(
        known.contains(key_body(s.server.host_public_key())),
        "host key not recorded: {known}"
    );
    assert!(known.contains(&format!("[127.0.0.1]:{}", s.server.addr().port())));

    let cloned = s.work.path().join("clone");
    s.git
        .clone_repo(&url, &cloned, None, &s.cred)
        .await
        .unwrap();
    let mirrors = s.work.path().join("mirrors");
    let wd = s.work.path().join("wc");
    s.git
        .prepare_working_copy(&url, &s.cred, &mirrors, &wd, None)
        .await
        .unwrap();
    s.git.checkout_new_branch(&wd, "builder/ssh").await.unwrap();
    std::fs::write(wd.join("a.txt"), "over ssh\n").unwrap();
    s.git.commit_all(&wd, "over ssh").await.unwrap();
    s.git
        .push_branch(&wd, &url, "builder/ssh", &s.cred)
        .await
        .unwrap();
    assert_eq!(
        read_branch_file(&bare, "builder/ssh", "a.txt").as_deref(),
        Some("over ssh\n")
    );
    assert_eq!(
        s.git
            .remote_branch_sha(&url, "builder/ssh", &s.cred)
            .await
            .unwrap(),
        Some(s.git.head_sha(&wd).await.unwrap())
    );
    // The key file lived only for each operation.
    assert_eq!(private_dir_files(&s.git), ["askpass.sh", "known_hosts"]);
    // The server saw our key, not some fallback identity from the host.
    assert!(
        s.server.log().contains("Accepted publickey"),
        "{}",
        s.server.log()
    );
    assert!(!s.public.is_empty());
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_an_auth_error() {
    let s = setup();
    let (other, _) = generate_ssh_key().unwrap();
    let cred = GitCredential::SshKey {
        private_key: other.clone(),
    };
    let err = s
        .git
        .ls_remote_default_branch(&s.server.url("app"), &cred)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    let shown = format!("{err} {err:?}");
    for line in other
        .lines()
        .filter(|l| l.len() >= 16 && !l.starts_with("-----"))
    {
        assert!(!shown.contains(line), "private key in error: {shown}");
    }
    // No credential at all never falls back to the host's own keys or agent.
    let err = s
        .git
        .ls_remote_default_branch(&s.server.url("app"), &GitCredential::None)
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn push_access_dry_run_over_ssh_changes_nothing() {
    let s = setup();
    let url = s.server.url("app");
    let bare = s._root.path().join("app.git");
    let state = || {
        let out = builder_testkit::git_command()
            .arg("--git-dir")
            .arg(&bare)
            .args(["for-each-ref", "--format=%(refname) %(objectname)"])
            .output()
            .unwrap();
        let objects = builder_testkit::git_command()
            .arg("--git-dir")
            .arg(&bare)
            .args(["count-objects", "-v"])
            .output()
            .unwrap();
        (out.stdout, objects.stdout)
    };
    let before = state();
    s.git.check_push_access(&url, &s.cred).await.unwrap();
    assert_eq!(state(), before, "the dry run created something");
    // The server ran receive-pack for our key.
    assert!(
        s.server.log().contains("Accepted publickey"),
        "{}",
        s.server.log()
    );
    let (other, _) = generate_ssh_key().unwrap();
    let err = s
        .git
        .check_push_access(&url, &GitCredential::SshKey { private_key: other })
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
    assert_eq!(state(), before);
    assert_eq!(private_dir_files(&s.git), ["askpass.sh", "known_hosts"]);
}

#[tokio::test]
async fn a_changed_host_key_is_refused_and_not_retried() {
    let s = setup();
    let url = s.server.url("app");
    s.git.ls_remote_default_branch(&url, &s.cred).await.unwrap();
    // Another server now answers on that address (simulated by pinning a different key).
    let (_, impostor) = generate_ssh_key().unwrap();
    let known = std::fs::read_to_string(&s.git.inner.known_hosts).unwrap();
    let swapped = known.replace(key_body(s.server.host_public_key()), key_body(&impostor));
    assert_ne!(known, swapped);
    std::fs::write(&s.git.inner.known_hosts, swapped).unwrap();
    let err = s
        .git
        .ls_remote_default_branch(&url, &s.cred)
        .await
        .unwrap_err();
    assert!(!err.is_transient(), "{err:?}");
    assert!(
        err.to_string().to_ascii_lowercase().contains("host key"),
        "{err}"
    );
}
