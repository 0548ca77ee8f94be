//! Mirror cache and working copies against real git: bare repositories on disk, the
//! smart-HTTP server with basic auth, and real flock contention (in-process and from
//! another process).

use super::*;
use builder_testkit::{GitHttpServer, add_commit, git_command, make_bare_repo};
use tempfile::TempDir;

const USER: &str = "alice";
const PASS: &str = "pw-Mirr0r-SECRET-51ab";

struct Env {
    git: Git,
    root: TempDir,
    mirrors: TempDir,
    work: TempDir,
    _scratch: TempDir,
}

fn env_with(config: GitConfig) -> Env {
    let scratch = tempfile::tempdir().unwrap();
    Env {
        git: Git::new(config, scratch.path()).unwrap(),
        root: tempfile::tempdir().unwrap(),
        mirrors: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        _scratch: scratch,
    }
}

fn env() -> Env {
    env_with(GitConfig::default())
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

fn ref_of(git_dir: &Path, name: &str) -> String {
    git_out(&["--git-dir", &git_dir.to_string_lossy(), "rev-parse", name])
}

/// Every directory entry under `root`, for "exactly one mirror, no leftovers" checks.
fn entries(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn two_working_copies_from_one_mirror_are_independent() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = format!("file://{}", bare.display());
    let base = ref_of(&bare, "refs/heads/main");
    let (wa, wb) = (e.work.path().join("a"), e.work.path().join("b"));
    let none = GitCredential::None;

    let ha = e
        .git
        .prepare_working_copy(&url, &none, e.mirrors.path(), &wa, None)
        .await
        .unwrap();
    let hb = e
        .git
        .prepare_working_copy(&url, &none, e.mirrors.path(), &wb, Some("main"))
        .await
        .unwrap();
    assert_eq!((ha.as_str(), hb.as_str()), (base.as_str(), base.as_str()));
    let mirror = mirror_path(e.mirrors.path(), &url);
    let key = mirror.file_stem().unwrap().to_string_lossy().into_owned();
    assert_eq!(
        entries(e.mirrors.path()),
        [format!("{key}.git"), format!("{key}.lock")]
    );

    // A feature's branch and commit stay in its own working copy.
    e.git.checkout_new_branch(&wa, "builder/one").await.unwrap();
    std::fs::write(wa.join("a.txt"), "changed in a\n").unwrap();
    let new = e.git.commit_all(&wa, "edit in a").await.unwrap();
    assert_eq!(
        std::fs::read_to_string(wb.join("a.txt")).unwrap(),
        "a\n",
        "b's files changed"
    );
    assert_eq!(e.git.head_sha(&wb).await.unwrap(), base);
    assert!(!e.git.has_changes(&wb).await.unwrap());
    let missing = git_command()
        .args(["--git-dir", &wb.join(".git").to_string_lossy()])
        .args(["cat-file", "-e", &new])
        .output()
        .unwrap();
    assert!(!missing.status.success(), "a's commit is visible in b");
    assert_eq!(ref_of(&mirror, "refs/heads/main"), base);
    assert!(
        git_command()
            .args(["--git-dir", &mirror.to_string_lossy()])
            .args(["cat-file", "-e", &new])
            .output()
            .unwrap()
            .status
            .code()
            != Some(0),
        "a's commit reached the mirror"
    );

    // Full, standalone repositories: no alternates into the mirror, origin is the remote.
    for wd in [&wa, &wb] {
        assert!(!wd.join(".git/objects/info/alternates").exists());
        assert_eq!(
            git_out(&["-C", &wd.to_string_lossy(), "remote", "get-url", "origin"]),
            url
        );
    }
    // Deleting the mirror does not break a working copy.
    std::fs::remove_dir_all(&mirror).unwrap();
    let stats = e.git.diff_stats(&wa, &base, "HEAD").await.unwrap();
    assert_eq!(stats.files, ["a.txt"]);

    // And the feature branch pushes to the explicit URL as with clone_repo.
    e.git
        .push_branch(&wa, &url, "builder/one", &none)
        .await
        .unwrap();
    assert_eq!(ref_of(&bare, "refs/heads/builder/one"), new);
}

#[tokio::test]
async fn incremental_fetch_brings_new_commits_and_pushed_branches() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let none = GitCredential::None;
    e.git
        .prepare_working_copy(
            &url,
            &none,
            e.mirrors.path(),
            &e.work.path().join("1"),
            None,
        )
        .await
        .unwrap();

    let second = add_commit(&bare, "main", &[("b.txt", b"b\n")], "second").unwrap();
    add_commit(&bare, "main", &[], "unrelated").unwrap();
    // A feature branch pushed earlier (before a crash) is resumed from the mirror's copy.
    git_out(&[
        "--git-dir",
        &url,
        "update-ref",
        "refs/heads/builder/resume",
        &second,
    ]);
    let wd = e.work.path().join("2");
    let head = e
        .git
        .prepare_working_copy(&url, &none, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    assert_eq!(head, ref_of(&bare, "refs/heads/main"));
    assert_eq!(std::fs::read_to_string(wd.join("b.txt")).unwrap(), "b\n");
    e.git
        .checkout_new_branch(&wd, "builder/resume")
        .await
        .unwrap();
    assert_eq!(e.git.head_sha(&wd).await.unwrap(), second);

    // Branches deleted on the remote are pruned from the mirror.
    git_out(&[
        "--git-dir",
        &url,
        "update-ref",
        "-d",
        "refs/heads/builder/resume",
    ]);
    let mirror = e
        .git
        .fetch_mirror(&url, &none, e.mirrors.path())
        .await
        .unwrap();
    let gone = git_command()
        .args(["--git-dir", &mirror.to_string_lossy()])
        .args([
            "rev-parse",
            "--verify",
            "--quiet",
            "refs/heads/builder/resume",
        ])
        .output()
        .unwrap();
    assert!(!gone.status.success(), "deleted branch still in the mirror");

    let err = e
        .git
        .prepare_working_copy(
            &url,
            &none,
            e.mirrors.path(),
            &e.work.path().join("3"),
            Some("nope"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::NotFound { .. }), "{err:?}");
    assert!(!e.work.path().join("3").exists());
}

#[tokio::test]
async fn mirror_over_http_keeps_the_credential_out_of_every_file() {
    let e = env();
    make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let server = GitHttpServer::start(e.root.path(), USER, PASS).unwrap();
    let url = server.url("app");
    let cred = GitCredential::Basic {
        username: USER.into(),
        password: PASS.into(),
    };
    let wd = e.work.path().join("wc");
    e.git
        .prepare_working_copy(&url, &cred, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    std::fs::write(wd.join("a.txt"), "b\n").unwrap();
    e.git.commit_all(&wd, "change").await.unwrap();
    e.git
        .push_branch(&wd, &url, "builder/http", &cred)
        .await
        .unwrap();

    // No file of the mirror or the working copy holds the secret in any form.
    let forms = cred.secret_forms();
    let mut stack = vec![e.mirrors.path().to_owned(), wd.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                for form in &forms {
                    assert!(!text.contains(form.as_str()), "{} leaks", path.display());
                }
            }
        }
    }

    let err = e
        .git
        .prepare_working_copy(
            &url,
            &GitCredential::None,
            e.mirrors.path(),
            &e.work.path().join("anon"),
            Some("main"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn many_small_fetches_are_compacted() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let none = GitCredential::None;
    let mirror = e
        .git
        .fetch_mirror(&url, &none, e.mirrors.path())
        .await
        .unwrap();
    for i in 0..2 {
        add_commit(
            &bare,
            "main",
            &[("n.txt", format!("{i}").as_bytes())],
            "more",
        )
        .unwrap();
        e.git
            .fetch_mirror(&url, &none, e.mirrors.path())
            .await
            .unwrap();
    }
    let before = e.git.object_counts(&mirror).await.unwrap();
    // Each fetch kept its own pack (fsck on fetch keeps what index-pack wrote).
    assert_eq!(before.packs + before.loose.min(1), 3, "{before:?}");
    // The thresholds are large in production; pretend they were crossed.
    let forced = ObjectCounts {
        packs: MAX_PACKS + 1,
        ..before
    };
    assert!(e.git.compact(&mirror, &forced).await.unwrap());
    let after = e.git.object_counts(&mirror).await.unwrap();
    assert_eq!(after.loose, 0, "{after:?}");
    assert!(after.packs < before.packs, "{before:?} -> {after:?}");
    assert!(!e.git.compact(&mirror, &after).await.unwrap());
    let head = e
        .git
        .prepare_working_copy(
            &url,
            &none,
            e.mirrors.path(),
            &e.work.path().join("wc"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(head, ref_of(&bare, "refs/heads/main"));
}

#[tokio::test]
async fn concurrent_prepares_share_one_mirror() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let head = ref_of(&bare, "refs/heads/main");
    let mut tasks = Vec::new();
    for i in 0..6 {
        let git = e.git.clone();
        let (url, root) = (url.clone(), e.mirrors.path().to_owned());
        let dest = e.work.path().join(format!("wc{i}"));
        tasks.push(tokio::spawn(async move {
            git.prepare_working_copy(&url, &GitCredential::None, &root, &dest, None)
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), head);
    }
    // One mirror, no half-built leftovers.
    assert_eq!(
        entries(e.mirrors.path()).len(),
        2,
        "{:?}",
        entries(e.mirrors.path())
    );
}

#[tokio::test]
async fn fetch_waits_for_the_lock_held_by_another_process() {
    let e = env();
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let lock = e.mirrors.path().join(format!("{}.lock", mirror_key(&url)));
    // util-linux flock(1) takes the same flock(2) lock from a separate process.
    let mut holder = std::process::Command::new("flock")
        .arg("--exclusive")
        .arg(&lock)
        .args(["sleep", "0.6"])
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !lock.exists()
        || MirrorLock::acquire(&lock, false, Duration::ZERO)
            .await
            .is_ok()
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "flock(1) never locked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = Instant::now();
    e.git
        .prepare_working_copy(
            &url,
            &GitCredential::None,
            e.mirrors.path(),
            &e.work.path().join("wc"),
            None,
        )
        .await
        .unwrap();
    assert!(holder.wait().unwrap().success());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "prepare did not wait for the other process: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn waiting_for_the_lock_is_bounded_by_the_clone_timeout() {
    let e = env_with(GitConfig {
        clone_timeout: Duration::from_millis(300),
        ..GitConfig::default()
    });
    let bare = make_bare_repo(e.root.path(), "app", &[("a.txt", "a\n")]).unwrap();
    let url = bare.to_string_lossy().into_owned();
    let lock = e.mirrors.path().join(format!("{}.lock", mirror_key(&url)));
    let held = MirrorLock::acquire(&lock, true, Duration::from_secs(1))
        .await
        .unwrap();
    let err = e
        .git
        .fetch_mirror(&url, &GitCredential::None, e.mirrors.path())
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::Timeout { .. }), "{err:?}");
    drop(held);
    e.git
        .fetch_mirror(&url, &GitCredential::None, e.mirrors.path())
        .await
        .unwrap();
}

#[test]
fn mirror_paths_are_stable_hashes() {
    let root = Path::new("/m");
    let a = mirror_path(root, "https://host/o/r.git");
    assert_eq!(a, mirror_path(root, "https://host/o/r.git"));
    assert_ne!(a, mirror_path(root, "https://host/o/r2.git"));
    let name = a.file_name().unwrap().to_string_lossy().into_owned();
    assert_eq!(name.len(), 32 + 4, "{name}");
    assert!(!name.contains("host"));
}

#[test]
fn ls_tree_sizes_skip_submodules_and_trees() {
    let raw = b"100644 blob aaaa      12\ta.txt\x00160000 commit bbbb       -\tsub\x00100644 blob cccc  500\tbig.bin\x00";
    let s = parse_ls_tree_sizes(raw);
    assert_eq!(s.total, 512);
    assert_eq!(s.largest, Some((500, "big.bin".to_owned())));
}
