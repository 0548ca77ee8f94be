//! A task's starting tree, made with the git CLI from a local mirror: the upstream tree at
//! `commit` (blobs the snapshot lacks left out), `starting_point_patch` applied, committed as
//! one commit on `main`; and the files `fix_patch` changes, read back after applying it.
//!
//! Every git call runs with hooks, fsmonitor and system/global configuration off: the
//! mirrors and patches are untrusted input, and a user's `~/.gitconfig` must not change what
//! the eval measures.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(
        "no mirror of {repo}: {} does not exist (--mirrors DIR must hold DIR/owner+name)",
        dir.display()
    )]
    MirrorMissing { repo: String, dir: PathBuf },
    #[error(
        "the mirror {} holds no git directory (a directory with HEAD and objects/, at most two levels down)",
        dir.display()
    )]
    NoGitDir { dir: PathBuf },
    #[error("commit {commit} is not in the mirror {} (a shallow or stale snapshot?)", git_dir.display())]
    CommitMissing { commit: String, git_dir: PathBuf },
    #[error("{which} does not apply — git apply: {git} — patch -p1: {patch}")]
    PatchDoesNotApply {
        which: &'static str,
        git: String,
        patch: String,
    },
    #[error("{path}: {what}; the eval's edits are text files")]
    NotRepresentable { path: String, what: &'static str },
    #[error("git {args}: {stderr}")]
    Git { args: String, stderr: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + use<> {
    let path = path.to_path_buf();
    move |source| TreeError::Io { what, path, source }
}

/// The first ~1,500 characters of a tool's error output: enough to see why, short enough
/// for a report line.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    match text.char_indices().nth(1500) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_string(),
    }
}

fn is_git_dir(dir: &Path) -> bool {
    dir.join("HEAD").is_file() && dir.join("objects").is_dir()
}

/// The git directory of `repo` under `mirrors`: `DIR/owner+name` itself when it is one,
/// else the first (by name) directory at most two levels below it that is one — the fetch
/// tool lays snapshots out as `owner+name/repo` or `owner+name/repo/.git`.
pub fn find_git_dir(mirrors: &Path, repo: &str) -> Result<PathBuf, TreeError> {
    let dir = mirrors.join(repo.replace('/', "+"));
    if !dir.is_dir() {
        return Err(TreeError::MirrorMissing {
            repo: repo.to_string(),
            dir,
        });
    }
    let mut level = vec![dir.clone()];
    for _ in 0..3 {
        let mut next = Vec::new();
        for d in &level {
            if is_git_dir(d) {
                return Ok(d.clone());
            }
            let mut children: Vec<PathBuf> = std::fs::read_dir(d)
                .map_err(io("reading", d))?
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            children.sort();
            next.extend(children);
        }
        level = next;
    }
    Err(TreeError::NoGitDir { dir })
}

/// `git` with the eval's hardening; `cwd` is where it runs.
async fn git<S: AsRef<OsStr>>(
    cwd: &Path,
    args: &[S],
    env: &[(&str, &OsStr)],
    input: Option<Vec<u8>>,
) -> Result<Vec<u8>, TreeError> {
    let shown: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    let mut cmd = Command::new("git");
    cmd.current_dir(cwd)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env_remove("GIT_OBJECT_DIRECTORY")
        .env_remove("GIT_ALTERNATE_OBJECT_DIRECTORIES")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "core.fsmonitor=false",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "user.name=builder-eval",
            "-c",
            "user.email=builder-eval@localhost",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(io("running git in", cwd))?;
    // Written beside the reads: a large input and a large output would otherwise block on
    // each other's pipe.
    let writer = match (input, child.stdin.take()) {
        (Some(bytes), Some(mut stdin)) => Some(tokio::spawn(async move {
            let _ = stdin.write_all(&bytes).await;
        })),
        _ => None,
    };
    let out = child
        .wait_with_output()
        .await
        .map_err(io("running git in", cwd))?;
    if let Some(w) = writer {
        let _ = w.await;
    }
    if !out.status.success() {
        return Err(TreeError::Git {
            args: shown.join(" "),
            stderr: excerpt(&out.stderr),
        });
    }
    Ok(out.stdout)
}

fn os(parts: &[&str]) -> Vec<OsString> {
    parts.iter().map(OsString::from).collect()
}

fn with_path(mut args: Vec<OsString>, prefix: &str, path: &Path) -> Vec<OsString> {
    let mut a = OsString::from(prefix);
    a.push(path.as_os_str());
    args.insert(0, a);
    args
}

/// What making the starting tree left out.
#[derive(Debug, Clone, Default)]
pub struct Starting {
    /// Paths whose blob the snapshot lacks (very large files).
    pub skipped: Vec<String>,
}

/// Makes `dest` (created here) a fresh repository whose `main` holds the task's starting
/// tree as one commit.
pub async fn make_starting_tree(
    git_dir: &Path,
    commit: &str,
    starting_patch: &str,
    dest: &Path,
    scratch: &Path,
) -> Result<Starting, TreeError> {
    std::fs::create_dir_all(dest).map_err(io("creating", dest))?;
    std::fs::create_dir_all(scratch).map_err(io("creating", scratch))?;
    let spec = format!("{commit}^{{commit}}");
    let in_mirror = |rest: &[&str]| with_path(os(rest), "--git-dir=", git_dir);
    git(dest, &in_mirror(&["cat-file", "-e", &spec]), &[], None)
        .await
        .map_err(|_| TreeError::CommitMissing {
            commit: commit.to_string(),
            git_dir: git_dir.to_path_buf(),
        })?;
    git(dest, &os(&["init", "-q", "-b", "main", "."]), &[], None).await?;

    // A private index: the tree is read without touching blobs, the missing ones are
    // dropped from it, and only then are files written.
    let index = scratch.join("export.index");
    let _ = std::fs::remove_file(&index);
    let env = [("GIT_INDEX_FILE", index.as_os_str())];
    git(dest, &in_mirror(&["read-tree", commit]), &env, None).await?;
    let listing = git(dest, &in_mirror(&["ls-files", "-s", "-z"]), &env, None).await?;
    let mut entries: Vec<(String, String)> = Vec::new();
    for record in listing.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let record = String::from_utf8_lossy(record);
        let Some((meta, path)) = record.split_once('\t') else {
            continue;
        };
        let mut fields = meta.split_whitespace();
        let (Some(mode), Some(sha)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Submodules are commits of other repositories, not blobs of this one.
        if mode != "160000" {
            entries.push((sha.to_string(), path.to_string()));
        }
    }
    let mut input = Vec::new();
    for (sha, _) in &entries {
        input.extend_from_slice(sha.as_bytes());
        input.push(b'\n');
    }
    let checked = git(
        dest,
        &in_mirror(&["cat-file", "--batch-check"]),
        &[],
        Some(input),
    )
    .await?;
    let missing: HashSet<String> = String::from_utf8_lossy(&checked)
        .lines()
        .filter_map(|l| l.strip_suffix(" missing").map(str::to_string))
        .collect();
    let skipped: Vec<String> = entries
        .iter()
        .filter(|(sha, _)| missing.contains(sha))
        .map(|(_, p)| p.clone())
        .collect();
    let with_tree = |rest: &[&str]| with_path(in_mirror(rest), "--work-tree=", dest);
    if !skipped.is_empty() {
        let mut paths = Vec::new();
        for p in &skipped {
            paths.extend_from_slice(p.as_bytes());
            paths.push(0);
        }
        git(
            dest,
            &with_tree(&["update-index", "--force-remove", "-z", "--stdin"]),
            &env,
            Some(paths),
        )
        .await?;
    }
    git(
        dest,
        &with_tree(&["checkout-index", "-a", "-f"]),
        &env,
        None,
    )
    .await?;
    let _ = std::fs::remove_file(&index);

    apply_patch(dest, starting_patch, "starting_point_patch", scratch).await?;
    stage_all(dest).await?;
    git(
        dest,
        &os(&[
            "commit",
            "-q",
            "--no-verify",
            "--allow-empty",
            "-m",
            "builder-eval: the task's starting tree",
        ]),
        &[],
        None,
    )
    .await?;
    Ok(Starting { skipped })
}

/// Everything in the work tree, ignored files too: the tree was written by the eval alone,
/// and a tracked file that `.gitignore` matches must stay tracked.
async fn stage_all(dest: &Path) -> Result<(), TreeError> {
    git(dest, &os(&["add", "-A", "-f", "."]), &[], None)
        .await
        .map(|_| ())
}

/// Creates the bare repository `bare` and pushes `main` of `dest` to it.
pub async fn push_to_bare(dest: &Path, bare: &Path) -> Result<(), TreeError> {
    std::fs::create_dir_all(bare).map_err(io("creating", bare))?;
    git(
        bare,
        &os(&["init", "-q", "--bare", "-b", "main", "."]),
        &[],
        None,
    )
    .await?;
    let mut args = os(&["push", "-q"]);
    args.push(bare.as_os_str().to_os_string());
    args.push("main:refs/heads/main".into());
    git(dest, &args, &[], None).await.map(|_| ())
}

/// Applies a unified diff to the work tree of `dest`: `git apply`, else `patch -p1` (checked
/// with a dry run first so a half-applied patch never stays behind). An empty patch is a
/// no-op.
pub async fn apply_patch(
    dest: &Path,
    patch: &str,
    which: &'static str,
    scratch: &Path,
) -> Result<(), TreeError> {
    if patch.trim().is_empty() {
        return Ok(());
    }
    let file = scratch.join(format!("{which}.diff"));
    std::fs::write(&file, patch).map_err(io("writing", &file))?;
    let mut args = os(&["apply", "--whitespace=nowarn"]);
    args.push(file.as_os_str().to_os_string());
    let git_err = match git(dest, &args, &[], None).await {
        Ok(_) => return Ok(()),
        Err(TreeError::Git { stderr, .. }) => stderr,
        Err(e) => return Err(e),
    };
    let patch_cmd = |dry: bool| {
        let mut cmd = Command::new("patch");
        cmd.current_dir(dest)
            .args(["-p1", "--batch", "--no-backup-if-mismatch", "-i"])
            .arg(&file)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if dry {
            cmd.arg("--dry-run");
        }
        cmd
    };
    let dry = patch_cmd(true)
        .output()
        .await
        .map_err(io("running patch in", dest))?;
    if !dry.status.success() {
        let mut text = dry.stdout;
        text.extend_from_slice(&dry.stderr);
        return Err(TreeError::PatchDoesNotApply {
            which,
            git: git_err,
            patch: excerpt(&text),
        });
    }
    let real = patch_cmd(false)
        .output()
        .await
        .map_err(io("running patch in", dest))?;
    if !real.status.success() {
        let mut text = real.stdout;
        text.extend_from_slice(&real.stderr);
        return Err(TreeError::PatchDoesNotApply {
            which,
            git: git_err,
            patch: excerpt(&text),
        });
    }
    Ok(())
}

/// One file the fix changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: String,
    /// Whether the starting tree has the file.
    pub existed: bool,
    /// The file after the fix; `None` when the fix deletes it.
    pub after: Option<String>,
}

/// Applies `fix_patch` to the work tree of `dest` and returns every file it changed, read
/// back from disk (created, modified and deleted files alike).
pub async fn changes_of_fix(
    dest: &Path,
    fix_patch: &str,
    scratch: &Path,
) -> Result<Vec<FileChange>, TreeError> {
    apply_patch(dest, fix_patch, "fix_patch", scratch).await?;
    stage_all(dest).await?;
    let listing = git(
        dest,
        &os(&[
            "diff",
            "--cached",
            "--no-renames",
            "--name-status",
            "-z",
            "HEAD",
        ]),
        &[],
        None,
    )
    .await?;
    let mut fields = listing
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned());
    let mut changes = Vec::new();
    while let (Some(status), Some(path)) = (fields.next(), fields.next()) {
        let full = dest.join(&path);
        let change = match status.chars().next() {
            Some('D') => FileChange {
                path,
                existed: true,
                after: None,
            },
            Some(kind @ ('A' | 'M' | 'T')) => {
                let meta = std::fs::symlink_metadata(&full).map_err(io("reading", &full))?;
                if meta.file_type().is_symlink() {
                    return Err(TreeError::NotRepresentable {
                        path,
                        what: "the fix makes it a symbolic link",
                    });
                }
                let bytes = std::fs::read(&full).map_err(io("reading", &full))?;
                let Ok(text) = String::from_utf8(bytes) else {
                    return Err(TreeError::NotRepresentable {
                        path,
                        what: "the fixed file is not UTF-8 text",
                    });
                };
                FileChange {
                    path,
                    existed: kind != 'A',
                    after: Some(text),
                }
            }
            _ => {
                return Err(TreeError::Git {
                    args: "diff --name-status".into(),
                    stderr: format!("unexpected status {status:?} for {path}"),
                });
            }
        };
        changes.push(change);
    }
    Ok(changes)
}

/// Every tracked path of `dest`'s index.
pub async fn tracked_files(dest: &Path) -> Result<Vec<String>, TreeError> {
    let out = git(dest, &os(&["ls-files", "-z"]), &[], None).await?;
    Ok(out
        .split(|b| *b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect())
}

/// Clones `branch` of `bare` into `dest` (which must not exist).
pub async fn clone_branch(bare: &Path, branch: &str, dest: &Path) -> Result<(), TreeError> {
    let parent = dest.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
    let mut args = os(&[
        "clone",
        "-q",
        "--no-tags",
        "--single-branch",
        "--branch",
        branch,
    ]);
    args.push("--".into());
    args.push(bare.as_os_str().to_os_string());
    args.push(dest.as_os_str().to_os_string());
    git(parent, &args, &[], None).await.map(|_| ())
}

/// Whether `bare` has the branch.
pub async fn has_branch(bare: &Path, branch: &str) -> Result<bool, TreeError> {
    let reference = format!("refs/heads/{branch}");
    let out = git(
        bare,
        &os(&["for-each-ref", "--format=%(refname)", &reference]),
        &[],
        None,
    )
    .await?;
    Ok(String::from_utf8_lossy(&out)
        .lines()
        .any(|l| l == reference))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command as Sync;

    fn sh(dir: &Path, script: &str) {
        let out = Sync::new("bash")
            .args(["-ec", script])
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An upstream repository with three files, mirrored bare at `mirrors/acme+lib/repo`,
    /// whose `big.bin` blob is then deleted from the mirror (a snapshot without it).
    fn mirror(root: &Path) -> (PathBuf, String) {
        sh(
            root,
            "git init -q -b main up && cd up && printf 'one\\ntwo\\n' > a.txt && mkdir -p src \
             && printf 'fn f() {}\\n' > src/lib.rs && echo secret-size > big.bin \
             && printf 'big.bin\\n' > .gitignore && git add -A -f && git commit -qm base \
             && cd .. && mkdir -p mirrors/acme+lib && git clone -q --bare up mirrors/acme+lib/repo \
             && cd mirrors/acme+lib/repo && git repack -q -a -d --no-write-bitmap-index \
             && b=$(git rev-parse HEAD:big.bin) && rm -f objects/pack/* \
             && cd ../../../up && git rev-list --objects --all | grep -v \"^$b\" | cut -d' ' -f1 \
             | git pack-objects -q ../mirrors/acme+lib/repo/objects/pack/pack >/dev/null",
        );
        let head = Sync::new("git")
            .args(["-C", "up", "rev-parse", "HEAD"])
            .current_dir(root)
            .output()
            .unwrap();
        (
            root.join("mirrors"),
            String::from_utf8(head.stdout).unwrap().trim().to_string(),
        )
    }

    #[tokio::test]
    async fn starting_tree_skips_missing_blobs_applies_both_patches_and_reads_changes() {
        let root = tempfile::tempdir().unwrap();
        let (mirrors, commit) = mirror(root.path());
        let git_dir = find_git_dir(&mirrors, "acme/lib").unwrap();
        assert!(git_dir.ends_with("acme+lib/repo"), "{git_dir:?}");
        let dest = root.path().join("start");
        let scratch = root.path().join("scratch");
        let starting = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n one\n-two\n+TWO\n";
        let got = make_starting_tree(&git_dir, &commit, starting, &dest, &scratch)
            .await
            .unwrap();
        assert_eq!(got.skipped, ["big.bin"]);
        assert_eq!(
            std::fs::read_to_string(dest.join("a.txt")).unwrap(),
            "one\nTWO\n"
        );
        let mut files = tracked_files(&dest).await.unwrap();
        files.sort();
        assert_eq!(files, [".gitignore", "a.txt", "src/lib.rs"]);

        let bare = root.path().join("bare.git");
        push_to_bare(&dest, &bare).await.unwrap();
        assert!(has_branch(&bare, "main").await.unwrap());
        assert!(!has_branch(&bare, "other").await.unwrap());

        let fix = "diff --git a/a.txt b/a.txt\ndeleted file mode 100644\n--- a/a.txt\n+++ /dev/null\n@@ -1,2 +0,0 @@\n-one\n-TWO\n\
                   diff --git a/src/new.rs b/src/new.rs\nnew file mode 100644\n--- /dev/null\n+++ b/src/new.rs\n@@ -0,0 +1 @@\n+pub fn g() {}\n\
                   diff --git a/src/lib.rs b/src/lib.rs\n--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1,2 @@\n fn f() {}\n+mod new;\n";
        let mut changes = changes_of_fix(&dest, fix, &scratch).await.unwrap();
        changes.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(
            changes,
            [
                FileChange {
                    path: "a.txt".into(),
                    existed: true,
                    after: None
                },
                FileChange {
                    path: "src/lib.rs".into(),
                    existed: true,
                    after: Some("fn f() {}\nmod new;\n".into())
                },
                FileChange {
                    path: "src/new.rs".into(),
                    existed: false,
                    after: Some("pub fn g() {}\n".into())
                },
            ]
        );

        let check = root.path().join("check/src");
        clone_branch(&bare, "main", &check).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(check.join("a.txt")).unwrap(),
            "one\nTWO\n"
        );
    }

    #[tokio::test]
    async fn clear_errors_for_a_missing_mirror_commit_or_patch() {
        let root = tempfile::tempdir().unwrap();
        let (mirrors, commit) = mirror(root.path());
        let err = find_git_dir(&mirrors, "acme/none").unwrap_err().to_string();
        assert!(err.contains("no mirror of acme/none"), "{err}");
        std::fs::create_dir_all(mirrors.join("acme+empty/x")).unwrap();
        let err = find_git_dir(&mirrors, "acme/empty")
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no git directory"), "{err}");

        let git_dir = find_git_dir(&mirrors, "acme/lib").unwrap();
        let scratch = root.path().join("scratch");
        let err = make_starting_tree(
            &git_dir,
            "1234567890abcdef1234567890abcdef12345678",
            "",
            &root.path().join("d1"),
            &scratch,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("is not in the mirror"), "{err}");

        let bad = "diff --git a/a.txt b/a.txt\n--- a/a.txt\n+++ b/a.txt\n@@ -1,2 +1,2 @@\n nope\n-never\n+x\n";
        let err = make_starting_tree(&git_dir, &commit, bad, &root.path().join("d2"), &scratch)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("starting_point_patch does not apply") && err.contains("patch -p1"),
            "{err}"
        );
    }
}
