//! The hostile-repository corpus: remotes built to attack the host when builder fetches,
//! checks out, diffs, commits or pushes them. Each test shows the attack contained — the
//! marker file the attack would create stays absent, or the fetch is refused with a typed
//! error — and, where it matters, a control shows the same attack does work under plain
//! git, so the test cannot pass vacuously.

use super::*;
use builder_testkit::git_command;
use std::process::{Command, Stdio};
use tempfile::TempDir;

struct Env {
    git: Git,
    root: TempDir,
    mirrors: TempDir,
    work: TempDir,
    /// Where attacks try to write; never inside a working copy.
    outside: TempDir,
    _scratch: TempDir,
}

fn env() -> Env {
    let scratch = tempfile::tempdir().unwrap();
    Env {
        git: Git::new(GitConfig::default(), scratch.path()).unwrap(),
        root: tempfile::tempdir().unwrap(),
        mirrors: tempfile::tempdir().unwrap(),
        work: tempfile::tempdir().unwrap(),
        outside: tempfile::tempdir().unwrap(),
        _scratch: scratch,
    }
}

fn ok(mut cmd: Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git_in(dir: &Path, args: &[&str]) -> String {
    let mut cmd = git_command();
    cmd.arg("-C").arg(dir).args(args);
    ok(cmd)
}

/// A bare remote `<root>/<name>.git` whose `main` holds what `setup` writes into a fresh
/// working tree (exec bits and symlinks included).
fn hostile_remote(root: &Path, name: &str, setup: impl FnOnce(&Path)) -> PathBuf {
    let work = root.join(format!("{name}-src"));
    let bare = root.join(format!("{name}.git"));
    std::fs::create_dir_all(&work).unwrap();
    git_in(&work, &["init", "--quiet", "-b", "main"]);
    setup(&work);
    git_in(&work, &["add", "-A"]);
    git_in(&work, &["commit", "--quiet", "-m", "hostile"]);
    let mut init = git_command();
    init.args(["init", "--quiet", "--bare", "-b", "main"])
        .arg(&bare);
    ok(init);
    git_in(
        &work,
        &["push", "--quiet", &bare.to_string_lossy(), "main:main"],
    );
    bare
}

/// Writes a raw tree object into `bare` (no validation, as an attacker's server would) and
/// points `branch` at a commit of it.
fn crafted_branch(bare: &Path, branch: &str, tree: &[u8]) -> String {
    let bare_s = bare.to_string_lossy();
    let mut hash = git_command();
    hash.args(["--git-dir", &bare_s, "hash-object", "-t", "tree", "-w"])
        .args(["--literally", "--stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = hash.spawn().unwrap();
    child.stdin.take().unwrap().write_all(tree).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let tree_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let mut commit = git_command();
    commit.args([
        "--git-dir",
        &bare_s,
        "commit-tree",
        &tree_id,
        "-m",
        "crafted",
    ]);
    let sha = ok(commit);
    let mut update = git_command();
    update.args([
        "--git-dir",
        &bare_s,
        "update-ref",
        &format!("refs/heads/{branch}"),
        &sha,
    ]);
    ok(update);
    sha
}

fn blob(bare: &Path, contents: &str) -> Vec<u8> {
    let mut cmd = git_command();
    cmd.args([
        "--git-dir",
        &bare.to_string_lossy(),
        "hash-object",
        "-w",
        "--stdin",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(contents.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let hex_id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    hex::decode(hex_id).unwrap()
}

fn tree_entry(mode: &str, name: &str, id: &[u8]) -> Vec<u8> {
    let mut e = format!("{mode} {name}\0").into_bytes();
    e.extend_from_slice(id);
    e
}

fn write_exec(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs every working-copy operation the worker performs on `wd`.
async fn full_cycle(git: &Git, wd: &Path, url: &str) {
    let base = git.head_sha(wd).await.unwrap();
    git.checkout_new_branch(wd, "builder/feature")
        .await
        .unwrap();
    std::fs::write(wd.join("builder-edit.txt"), "edit\n").unwrap();
    assert!(git.has_changes(wd).await.unwrap());
    git.changed_files(wd, &base).await.unwrap();
    git.worktree_diff(wd, &base).await.unwrap();
    git.commit_all(wd, "edit").await.unwrap();
    git.diff_stats(wd, &base, "HEAD").await.unwrap();
    git.diff_patch(wd, &base, "HEAD").await.unwrap();
    git.push_branch(wd, url, "builder/feature", &GitCredential::None)
        .await
        .unwrap();
}

#[tokio::test]
async fn in_repo_hooks_and_hookspath_never_run() {
    let e = env();
    let marker = e.outside.path().join("hook-ran");
    let script = format!("#!/bin/sh\ntouch '{}'\n", marker.display());
    let bare = hostile_remote(e.root.path(), "hooks", |w| {
        for hook in [
            "post-checkout",
            "pre-commit",
            "commit-msg",
            "post-commit",
            "pre-push",
        ] {
            write_exec(&w.join(".githooks").join(hook), &script);
            write_exec(&w.join(".husky").join(hook), &script);
        }
        // In-repo files that ask for hooks; git never reads config from the tree.
        std::fs::write(w.join(".gitconfig"), "[core]\n\thooksPath = .githooks\n").unwrap();
        std::fs::write(w.join(".git-config"), "[core]\n\thooksPath = .githooks\n").unwrap();
        std::fs::write(w.join("a.txt"), "a\n").unwrap();
    });
    let url = bare.to_string_lossy().into_owned();
    let wd = e.work.path().join("wc");
    e.git
        .prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    full_cycle(&e.git, &wd, &url).await;
    assert!(!marker.exists(), "a repository hook ran");

    // Pointing the working copy at the hooks (what a hostile build step would try) is
    // refused before git runs there.
    git_in(&wd, &["config", "core.hooksPath", ".githooks"]);
    std::fs::write(wd.join("a.txt"), "b\n").unwrap();
    let err = e.git.commit_all(&wd, "x").await.unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    assert!(!marker.exists(), "a repository hook ran");

    // Control: with that config, plain git runs the hook.
    git_in(
        &wd,
        &[
            "-c",
            "core.hooksPath=.githooks",
            "commit",
            "-qam",
            "control",
        ],
    );
    assert!(
        marker.exists(),
        "control: the hook should run under plain git"
    );
}

#[tokio::test]
async fn gitattributes_filters_and_diff_drivers_never_run() {
    let e = env();
    let marker = e.outside.path().join("filter-ran");
    let cmd = format!("sh -c 'touch {}; cat'", marker.display());
    let bare = hostile_remote(e.root.path(), "attrs", |w| {
        std::fs::write(
            w.join(".gitattributes"),
            "* filter=evil diff=evil merge=evil\n*.txt filter=lfs diff=lfs merge=lfs -text\n",
        )
        .unwrap();
        std::fs::write(w.join("a.txt"), "plain\n").unwrap();
        std::fs::write(w.join("b.rs"), "fn main() {}\n").unwrap();
    });
    let url = bare.to_string_lossy().into_owned();
    let wd = e.work.path().join("wc");
    e.git
        .prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    std::fs::write(wd.join("b.rs"), "fn main() { x() }\n").unwrap();
    full_cycle(&e.git, &wd, &url).await;
    assert_eq!(
        std::fs::read_to_string(wd.join("a.txt")).unwrap(),
        "plain\n"
    );
    assert!(!marker.exists(), "a filter or diff driver ran");

    // Defining the driver in the working copy's config is refused.
    git_in(&wd, &["config", "filter.evil.clean", &cmd]);
    git_in(&wd, &["config", "diff.evil.textconv", &cmd]);
    std::fs::write(wd.join("b.rs"), "fn main() { y() }\n").unwrap();
    let err = e.git.commit_all(&wd, "x").await.unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    let err = e.git.diff_patch(&wd, "HEAD~1", "HEAD").await.unwrap_err();
    assert!(matches!(err, GitError::InvalidInput(_)), "{err:?}");
    assert!(!marker.exists(), "a filter or diff driver ran");

    // Control: plain git runs the clean filter the attributes name.
    git_in(&wd, &["add", "b.rs"]);
    assert!(
        marker.exists(),
        "control: the filter should run under plain git"
    );
}

#[tokio::test]
async fn symlinks_out_of_the_working_copy_are_never_written_through() {
    let e = env();
    let target = e.outside.path().to_string_lossy().into_owned();
    let bare = hostile_remote(e.root.path(), "links", |w| {
        std::os::unix::fs::symlink(&target, w.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", w.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", w.join("up")).unwrap();
        std::fs::write(w.join("a.txt"), "a\n").unwrap();
    });
    // A later branch turns `link` into a directory with a file in it: checking it out over
    // the symlink would write into `outside` if git followed the link.
    let src = e.root.path().join("links-src");
    git_in(&src, &["switch", "-q", "-c", "builder/evil"]);
    std::fs::remove_file(src.join("link")).unwrap();
    std::fs::create_dir(src.join("link")).unwrap();
    std::fs::write(src.join("link/pwned"), "pwned\n").unwrap();
    git_in(&src, &["add", "-A"]);
    git_in(&src, &["commit", "-qm", "through the link"]);
    git_in(
        &src,
        &[
            "push",
            "-q",
            &bare.to_string_lossy(),
            "builder/evil:builder/evil",
        ],
    );

    let url = bare.to_string_lossy().into_owned();
    let wd = e.work.path().join("wc");
    e.git
        .prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    // Checked out as links (reading code confines itself; see analysis and llm), not
    // followed: nothing was copied from their targets.
    let meta = std::fs::symlink_metadata(wd.join("etc")).unwrap();
    assert!(meta.file_type().is_symlink());
    e.git
        .checkout_new_branch(&wd, "builder/evil")
        .await
        .unwrap();
    assert!(
        !e.outside.path().join("pwned").exists(),
        "wrote through a symlink"
    );
    assert!(wd.join("link/pwned").is_file());
    assert_eq!(std::fs::read_dir(e.outside.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn dot_dot_and_dot_git_tree_entries_are_refused_by_fsck() {
    let e = env();
    let bare = hostile_remote(e.root.path(), "paths", |w| {
        std::fs::write(w.join("a.txt"), "a\n").unwrap();
    });
    let hook = blob(&bare, "#!/bin/sh\ntouch /tmp/never\n");
    let link = blob(&bare, "/etc");
    let attacks: Vec<(&str, Vec<u8>)> = vec![
        ("dotdot", tree_entry("100644", "..", &hook)),
        ("dotgit", tree_entry("100755", ".git", &hook)),
        ("dotgit-case", tree_entry("100755", ".GIT", &hook)),
        // The same name as a symlink and as a directory: a checkout could follow one into
        // the other.
        ("duplicate", {
            let mut sub = tree_entry("100644", "pwned", &hook);
            let mut hash = git_command();
            hash.args([
                "--git-dir",
                &bare.to_string_lossy(),
                "hash-object",
                "-t",
                "tree",
            ])
            .args(["-w", "--literally", "--stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
            let mut child = hash.spawn().unwrap();
            child.stdin.take().unwrap().write_all(&sub).unwrap();
            let out = child.wait_with_output().unwrap();
            let sub_id = hex::decode(String::from_utf8_lossy(&out.stdout).trim()).unwrap();
            sub = tree_entry("120000", "link", &link);
            sub.extend(tree_entry("40000", "link", &sub_id));
            sub
        }),
    ];
    for (name, tree) in attacks {
        let branch = format!("evil/{name}");
        crafted_branch(&bare, &branch, &tree);
        let root = e.mirrors.path().join(name);
        let dest = e.work.path().join(name);
        let err = e
            .git
            .prepare_working_copy(
                &bare.to_string_lossy(),
                &GitCredential::None,
                &root,
                &dest,
                Some(&branch),
            )
            .await
            .unwrap_err();
        assert!(
            matches!(err, GitError::UnsafeRepository { .. }),
            "{name}: {err:?}"
        );
        assert!(!err.is_transient());
        assert!(!dest.exists(), "{name}: working copy left behind");
        // No mirror (not even a partial one) is kept from a refused fetch.
        let left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{name}: {left:?}");
        // Remove the branch so the next attack is judged on its own.
        git_in(
            &bare,
            &["update-ref", "-d", &format!("refs/heads/{branch}")],
        );
    }
    assert!(!Path::new("/tmp/never").exists());
}

#[tokio::test]
async fn giant_files_and_repositories_are_refused() {
    let e = env();
    // Limits are fixed once a handle is shared, so clones never disagree about them.
    let limited = e
        .git
        .clone()
        .with_limits(RepoLimits::default())
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(limited, GitError::InvalidInput(_)), "{limited:?}");
    let scratch = tempfile::tempdir().unwrap();
    let git = Git::new(GitConfig::default(), scratch.path())
        .unwrap()
        .with_limits(RepoLimits {
            max_file_size: 1 << 20,
            max_repo_size: 8 << 20,
        })
        .unwrap();
    // Incompressible bytes, so the pack is as large as the file.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let noise: Vec<u8> = (0..(3 << 20))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let bare = hostile_remote(e.root.path(), "giant", |w| {
        std::fs::write(w.join("small.txt"), "ok\n").unwrap();
        std::fs::create_dir_all(w.join("assets")).unwrap();
        std::fs::write(w.join("assets/giant.bin"), &noise).unwrap();
    });
    let url = bare.to_string_lossy().into_owned();
    let dest = e.work.path().join("wc");
    let err = git
        .prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &dest, None)
        .await
        .unwrap_err();
    match &err {
        GitError::TooLarge { what, size, limit } => {
            assert!(what.contains("assets/giant.bin"), "{err}");
            assert_eq!((*size, *limit), (3 << 20, 1 << 20));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!dest.exists(), "giant file checked out");
    // A direct clone (no mirror) applies the same limits before checking anything out.
    let err = git
        .clone_repo(&url, &dest, None, &GitCredential::None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GitError::TooLarge { what, .. } if what.contains("assets/giant.bin")),
        "{err:?}"
    );
    assert!(!dest.exists(), "giant file checked out");
    // An existing (empty) destination is left empty, ready for a retry.
    std::fs::create_dir(&dest).unwrap();
    git.prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &dest, None)
        .await
        .unwrap_err();
    assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);
    std::fs::remove_dir(&dest).unwrap();

    // Over the repository limit, the mirror itself is refused and not kept.
    let tiny = Git::new(GitConfig::default(), scratch.path())
        .unwrap()
        .with_limits(RepoLimits {
            max_file_size: 16 << 20,
            max_repo_size: 1 << 20,
        })
        .unwrap();
    let root = e.mirrors.path().join("tiny");
    let err = tiny
        .prepare_working_copy(&url, &GitCredential::None, &root, &dest, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GitError::TooLarge { what, .. } if what.starts_with("repository")),
        "{err:?}"
    );
    assert!(!mirror_path(&root, &url).exists());
    assert!(!dest.exists());
}

#[tokio::test]
async fn malicious_submodules_are_never_cloned() {
    let e = env();
    let marker = e.outside.path().join("submodule-ran");
    let ext_url = format!("ext::sh -c touch% {}", marker.display());
    let gitlink = "1111111111111111111111111111111111111111";
    let bare = hostile_remote(e.root.path(), "subs", |w| {
        std::fs::write(
            w.join(".gitmodules"),
            format!("[submodule \"evil\"]\n\tpath = evil\n\turl = {ext_url}\n"),
        )
        .unwrap();
        std::fs::write(w.join("a.txt"), "a\n").unwrap();
        // An empty directory keeps `git add -A` from dropping the gitlink as deleted.
        std::fs::create_dir(w.join("evil")).unwrap();
        git_in(
            w,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{gitlink},evil"),
            ],
        );
    });
    let url = bare.to_string_lossy().into_owned();
    let wd = e.work.path().join("wc");
    e.git
        .prepare_working_copy(&url, &GitCredential::None, e.mirrors.path(), &wd, None)
        .await
        .unwrap();
    full_cycle(&e.git, &wd, &url).await;
    assert!(!marker.exists(), "the submodule URL ran a command");
    assert!(!wd.join(".git/modules").exists(), "a submodule was cloned");
    let evil = std::fs::read_dir(wd.join("evil"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(evil, 0, "the submodule was checked out");

    // Control: a plain git that allows ext:: runs the URL's command.
    let mut control = git_command();
    control.arg("-C").arg(&wd).args([
        "-c",
        "protocol.ext.allow=always",
        "submodule",
        "update",
        "--init",
    ]);
    // The clone itself fails (ext:: runs no git server); only the command's side effect
    // matters.
    let out = control.output().unwrap();
    assert!(
        marker.exists(),
        "control: the ext:: URL should run under plain git: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Option-looking submodule URLs (CVE-2018-17456 style) are refused by fsck on fetch.
    let bare2 = hostile_remote(e.root.path(), "subs2", |w| {
        std::fs::write(
            w.join(".gitmodules"),
            "[submodule \"evil\"]\n\tpath = evil\n\turl = --upload-pack=touch${IFS}/tmp/x\n",
        )
        .unwrap();
        // An empty directory keeps `git add -A` from dropping the gitlink as deleted.
        std::fs::create_dir(w.join("evil")).unwrap();
        git_in(
            w,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{gitlink},evil"),
            ],
        );
    });
    let err = e
        .git
        .prepare_working_copy(
            &bare2.to_string_lossy(),
            &GitCredential::None,
            e.mirrors.path(),
            &e.work.path().join("wc2"),
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GitError::UnsafeRepository { .. }), "{err:?}");
}
