//! Bare repositories built with the real git CLI.

use crate::{Result, TestkitError, io_err};
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// A `git` command isolated from the machine's and the user's configuration, so tests behave
/// the same on every machine (no global hooks, signing, templates or default-branch names).
pub fn git_command() -> Command {
    let mut cmd = Command::new("git");
    cmd.env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "Testkit")
        .env("GIT_AUTHOR_EMAIL", "testkit@example.invalid")
        .env("GIT_COMMITTER_NAME", "Testkit")
        .env("GIT_COMMITTER_EMAIL", "testkit@example.invalid")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .args([
            "-c",
            "core.hooksPath=/dev/null",
            "-c",
            "commit.gpgSign=false",
        ])
        .stdin(Stdio::null());
    cmd
}

fn run(mut cmd: Command, args: &[&str]) -> Result<Vec<u8>> {
    let out = cmd
        .args(args)
        .output()
        .map_err(io_err(format!("running git {}", args.join(" "))))?;
    if !out.status.success() {
        return Err(TestkitError::Git {
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out.stdout)
}

/// Creates `<root>/<name>.git`, a bare repository with one commit on `main` holding `files`
/// (`(path, contents)`, paths relative, `/`-separated). The repository accepts pushes over
/// smart HTTP (`http.receivepack=true`).
pub fn make_bare_repo(root: &Path, name: &str, files: &[(&str, &str)]) -> Result<PathBuf> {
    if name.is_empty() || name.contains("..") || name.starts_with('/') {
        return Err(TestkitError::InvalidInput(format!("repo name {name:?}")));
    }
    let bare = root.join(format!("{name}.git"));
    std::fs::create_dir_all(&bare).map_err(io_err(format!("creating {}", bare.display())))?;
    let bare_str = bare.to_string_lossy().into_owned();
    run(
        git_command(),
        &["init", "--quiet", "--bare", "-b", "main", &bare_str],
    )?;
    run(
        git_command(),
        &["--git-dir", &bare_str, "config", "http.receivepack", "true"],
    )?;

    let scratch = tempfile::tempdir().map_err(io_err("creating a scratch dir"))?;
    let work = scratch.path().join("work");
    let work_str = work.to_string_lossy().into_owned();
    run(git_command(), &["init", "--quiet", "-b", "main", &work_str])?;
    for (path, contents) in files {
        let rel = Path::new(path);
        // A helper that writes outside its scratch clone would corrupt the caller's machine.
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(TestkitError::InvalidInput(format!("file path {path:?}")));
        }
        let full = work.join(rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&full, contents).map_err(io_err(format!("writing {}", full.display())))?;
    }
    run(git_command(), &["-C", &work_str, "add", "-A"])?;
    run(
        git_command(),
        &[
            "-C",
            &work_str,
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            "initial commit",
        ],
    )?;
    run(
        git_command(),
        &[
            "-C",
            &work_str,
            "push",
            "--quiet",
            &bare_str,
            "HEAD:refs/heads/main",
        ],
    )?;
    Ok(bare)
}

/// Adds one commit on top of `branch` of the bare repository `bare` that writes `files`
/// (`(path, contents)`, relative `/`-separated paths) and returns the new commit's id — a
/// remote that moved on, as seen by a mirror or working copy made earlier.
pub fn add_commit(
    bare: &Path,
    branch: &str,
    files: &[(&str, &[u8])],
    message: &str,
) -> Result<String> {
    let scratch = tempfile::tempdir().map_err(io_err("creating a scratch dir"))?;
    let work = scratch.path().join("work");
    let work_str = work.to_string_lossy().into_owned();
    let bare_str = bare.to_string_lossy().into_owned();
    run(
        git_command(),
        &[
            "clone",
            "--quiet",
            "--no-local",
            "--branch",
            branch,
            &bare_str,
            &work_str,
        ],
    )?;
    for (path, contents) in files {
        let rel = Path::new(path);
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(TestkitError::InvalidInput(format!("file path {path:?}")));
        }
        let full = work.join(rel);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .map_err(io_err(format!("creating {}", parent.display())))?;
        }
        std::fs::write(&full, contents).map_err(io_err(format!("writing {}", full.display())))?;
    }
    run(git_command(), &["-C", &work_str, "add", "-A"])?;
    run(
        git_command(),
        &[
            "-C",
            &work_str,
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            message,
        ],
    )?;
    run(
        git_command(),
        &[
            "-C",
            &work_str,
            "push",
            "--quiet",
            &bare_str,
            &format!("HEAD:refs/heads/{branch}"),
        ],
    )?;
    let sha = run(git_command(), &["-C", &work_str, "rev-parse", "HEAD"])?;
    Ok(String::from_utf8_lossy(&sha).trim().to_owned())
}

/// The contents of `path` on `branch` of a bare repository, or `None` if the branch or the
/// file does not exist.
pub fn read_branch_file(bare: &Path, branch: &str, path: &str) -> Option<String> {
    let out = git_command()
        .arg("--git-dir")
        .arg(bare)
        .arg("show")
        .arg(format!("refs/heads/{branch}:{path}"))
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_repo_has_files_on_main() {
        let dir = tempfile::tempdir().unwrap();
        let bare = make_bare_repo(
            dir.path(),
            "demo",
            &[("README.md", "hello\n"), ("src/lib.rs", "pub fn f() {}\n")],
        )
        .unwrap();
        assert_eq!(bare, dir.path().join("demo.git"));
        assert_eq!(
            read_branch_file(&bare, "main", "README.md").as_deref(),
            Some("hello\n")
        );
        assert_eq!(
            read_branch_file(&bare, "main", "src/lib.rs").as_deref(),
            Some("pub fn f() {}\n")
        );
        assert_eq!(read_branch_file(&bare, "main", "missing.txt"), None);
        assert_eq!(read_branch_file(&bare, "nope", "README.md"), None);
        let head = run(
            git_command(),
            &["--git-dir", &bare.to_string_lossy(), "symbolic-ref", "HEAD"],
        )
        .unwrap();
        assert_eq!(String::from_utf8_lossy(&head).trim(), "refs/heads/main");
    }

    #[test]
    fn add_commit_moves_the_branch() {
        let dir = tempfile::tempdir().unwrap();
        let bare = make_bare_repo(dir.path(), "demo", &[("a.txt", "1\n")]).unwrap();
        let sha = add_commit(&bare, "main", &[("b/c.txt", b"2\n")], "second").unwrap();
        assert_eq!(sha.len(), 40);
        assert_eq!(
            read_branch_file(&bare, "main", "b/c.txt").as_deref(),
            Some("2\n")
        );
        assert!(add_commit(&bare, "main", &[("../x", b"y")], "evil").is_err());
    }

    #[test]
    fn rejects_paths_escaping_the_scratch_clone() {
        let dir = tempfile::tempdir().unwrap();
        let err = make_bare_repo(dir.path(), "evil", &[("../x", "y")]).unwrap_err();
        assert!(matches!(err, TestkitError::InvalidInput(_)), "{err}");
    }
}
