//! Working-copy changes: HEAD, checkpoints, changed files, diffs, commits and their stats.

use super::*;

impl Git {
    /// The commit checked out in `workdir`.
    pub async fn head_sha(&self, workdir: &Path) -> Result<String, GitError> {
        let workdir = check_dot_git(workdir)?;
        self.rev_parse(&workdir, "HEAD").await
    }

    /// Whether the working tree differs from HEAD (tracked changes or untracked files).
    pub async fn has_changes(&self, workdir: &Path) -> Result<bool, GitError> {
        let workdir = self.check_workdir(workdir).await?;
        let out = run(self.local(
            "status",
            &workdir,
            args(["status", "--porcelain=v1", "-z", "--untracked-files=all"]),
            "working copy",
        ))
        .await?;
        Ok(!out.stdout.is_empty())
    }

    /// Records the whole working tree (tracked and untracked, not ignored) as a tree object
    /// and returns its id, so a step interrupted half-way can start again from exactly here.
    pub async fn checkpoint(&self, workdir: &Path) -> Result<String, GitError> {
        let workdir = self.check_workdir(workdir).await?;
        run(self.local(
            "add",
            &workdir,
            args(["add", "--all", "--", "."]),
            "working copy",
        ))
        .await?;
        let out =
            run(self.local("write-tree", &workdir, args(["write-tree"]), "working copy")).await?;
        Ok(stdout_line(&out))
    }

    /// Puts the working tree back to a [`Git::checkpoint`]: files added since are removed,
    /// changed ones restored. Ignored files (build caches) are left alone.
    pub async fn restore_checkpoint(&self, workdir: &Path, tree: &str) -> Result<(), GitError> {
        validate_rev(tree)?;
        let workdir = self.check_workdir(workdir).await?;
        // Stage everything first so files created after the checkpoint are known to the
        // index and `read-tree -u` removes them.
        run(self.local(
            "add",
            &workdir,
            args(["add", "--all", "--", "."]),
            "working copy",
        ))
        .await?;
        run(self.local(
            "read-tree",
            &workdir,
            args(["read-tree", "--reset", "-u", "--end-of-options", tree]),
            "revision",
        ))
        .await?;
        Ok(())
    }

    /// Paths that differ between `base` and the working tree, untracked files included.
    pub async fn changed_files(&self, workdir: &Path, base: &str) -> Result<Vec<String>, GitError> {
        validate_rev(base)?;
        let workdir = self.check_workdir(workdir).await?;
        let tracked = run(self.diff(&workdir, &["--name-only", "-z"], &[base])).await?;
        let untracked = run(self.local(
            "ls-files",
            &workdir,
            args(["ls-files", "--others", "--exclude-standard", "-z"]),
            "working copy",
        ))
        .await?;
        let mut files: Vec<String> = tracked
            .stdout
            .split(|b| *b == 0)
            .chain(untracked.stdout.split(|b| *b == 0))
            .filter(|p| !p.is_empty())
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// The uncommitted change against `base` as a patch, new (untracked) files included.
    pub async fn worktree_diff(&self, workdir: &Path, base: &str) -> Result<String, GitError> {
        validate_rev(base)?;
        let workdir = self.check_workdir(workdir).await?;
        // Intent-to-add makes new files visible to `git diff` without staging content.
        run(self.local(
            "add",
            &workdir,
            args(["add", "--intent-to-add", "--all", "--", "."]),
            "working copy",
        ))
        .await?;
        let out = run(self.diff(&workdir, &["--no-color", "-M"], &[base])).await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Stages everything (additions, edits, deletions) and commits it as the configured
    /// author; returns the new commit. Fails with `NothingToCommit` if nothing changed.
    pub async fn commit_all(&self, workdir: &Path, message: &str) -> Result<String, GitError> {
        if message.trim().is_empty() || message.contains('\0') {
            return Err(GitError::InvalidInput(
                "commit message must be non-empty text".into(),
            ));
        }
        let workdir = self.check_workdir(workdir).await?;
        run(self.local("add", &workdir, args(["add", "--all"]), "working copy")).await?;
        let staged = run_raw(self.local(
            "diff",
            &workdir,
            args(["diff", "--cached", "--quiet", "--no-ext-diff"]),
            "index",
        ))
        .await?;
        match staged.status {
            Some(0) => {
                return Err(GitError::NothingToCommit { workdir });
            }
            Some(1) => {}
            status => {
                return Err(GitError::Command {
                    op: "diff".into(),
                    status,
                    stderr_redacted: staged.stderr_redacted,
                });
            }
        }
        let cfg = &self.inner.config;
        let mut inv = self.local(
            "commit",
            &workdir,
            args([
                "commit",
                "--quiet",
                "--no-verify",
                "--no-gpg-sign",
                // LLM-written messages may hold lines starting with '#'; keep them.
                "--cleanup=whitespace",
                "-m",
                message,
            ]),
            "working copy",
        );
        inv.env = vec![
            ("GIT_AUTHOR_NAME", cfg.author_name.clone().into()),
            ("GIT_AUTHOR_EMAIL", cfg.author_email.clone().into()),
            ("GIT_COMMITTER_NAME", cfg.author_name.clone().into()),
            ("GIT_COMMITTER_EMAIL", cfg.author_email.clone().into()),
        ];
        run(inv).await?;
        self.rev_parse(&workdir, "HEAD").await
    }

    /// Files and lines changed from `base` to `head`.
    pub async fn diff_stats(
        &self,
        workdir: &Path,
        base: &str,
        head: &str,
    ) -> Result<DiffStats, GitError> {
        validate_rev(base)?;
        validate_rev(head)?;
        let workdir = self.check_workdir(workdir).await?;
        let out = run(self.diff(&workdir, &["--numstat", "-z", "-M"], &[base, head])).await?;
        Ok(parse_numstat_z(&out.stdout))
    }

    /// The unified diff from `base` to `head`.
    pub async fn diff_patch(
        &self,
        workdir: &Path,
        base: &str,
        head: &str,
    ) -> Result<String, GitError> {
        validate_rev(base)?;
        validate_rev(head)?;
        let workdir = self.check_workdir(workdir).await?;
        let out = run(self.diff(&workdir, &["--no-color", "-M"], &[base, head])).await?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}
