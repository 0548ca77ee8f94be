//! Write-access check without writing: `git push --dry-run` of a throwaway commit to a
//! throwaway branch. The remote's receive-pack is contacted and authenticates the credential
//! (smart HTTP: the `info/refs?service=git-receive-pack` advertisement, which forges refuse
//! with 401/403 to a read-only token; ssh: the server starts `git-receive-pack` only for a
//! key allowed to push), then git stops before sending anything: no ref, no object, no hook
//! on the remote.

use super::{Git, args};
use crate::credential::GitCredential;
use crate::error::GitError;
use crate::runner::run;
use crate::url::redact_url;
use std::ffi::OsString;
use std::time::{SystemTime, UNIX_EPOCH};

/// Prefix of the branch name the dry run pretends to create.
const PROBE_PREFIX: &str = "refs/heads/builder-access-check/";

impl Git {
    /// Checks that `cred` may push to `url`, changing nothing there. `Ok(())` means the
    /// remote accepted the credential for receive-pack; an error says why not (typically
    /// `GitError::Auth`). Branch protection rules are not evaluated by a dry run. For
    /// local/file remotes it shows the path is a repository that accepts pushes, not that
    /// builder's user may write its files.
    pub async fn check_push_access(&self, url: &str, cred: &GitCredential) -> Result<(), GitError> {
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        let subject = format!("repository {shown}");
        // A scratch repository in the private directory holds the one commit pushed "to" the
        // remote; it is removed when this returns.
        let scratch = tempfile::Builder::new()
            .prefix("push-check-")
            .tempdir_in(self.private_dir())
            .map_err(GitError::io("creating the push-check repository"))?;
        let git_dir = scratch.path().join("probe.git");
        run(self.plain(
            "init",
            args([
                OsString::from("init"),
                "--quiet".into(),
                "--bare".into(),
                git_dir.clone().into_os_string(),
            ]),
            "push-check repository",
        ))
        .await?;
        // mktree on empty input (stdin is /dev/null) writes the empty tree in the scratch
        // repository's own hash algorithm.
        let tree = run(self.bare("mktree", &git_dir, args(["mktree"]), "empty tree")).await?;
        let tree = String::from_utf8_lossy(&tree.stdout).trim().to_owned();
        let cfg = self.config();
        let mut commit = self.bare(
            "commit-tree",
            &git_dir,
            args([
                "commit-tree",
                "-m",
                "builder write-access check (never pushed)",
                tree.as_str(),
            ]),
            "probe commit",
        );
        commit.env = vec![
            ("GIT_AUTHOR_NAME", cfg.author_name.clone().into()),
            ("GIT_AUTHOR_EMAIL", cfg.author_email.clone().into()),
            ("GIT_COMMITTER_NAME", cfg.author_name.clone().into()),
            ("GIT_COMMITTER_EMAIL", cfg.author_email.clone().into()),
        ];
        let commit = run(commit).await?;
        let commit = String::from_utf8_lossy(&commit.stdout).trim().to_owned();
        // A name no one uses, so even a remote that mishandled --dry-run could not clobber
        // a real branch.
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let probe_ref = format!("{PROBE_PREFIX}{nonce:x}-{:x}", std::process::id());
        let mut inv = self.remote(
            "push",
            args([
                OsString::from("--git-dir"),
                git_dir.into_os_string(),
                "push".into(),
                "--dry-run".into(),
                "--porcelain".into(),
                "--quiet".into(),
                "--no-verify".into(),
                "--recurse-submodules=no".into(),
                "--".into(),
                url.into(),
                format!("{commit}:{probe_ref}").into(),
            ]),
            &prepared,
            &shown,
            &subject,
            self.config().op_timeout,
        );
        inv.failure.push_branch = Some(PROBE_PREFIX);
        run(inv).await?;
        Ok(())
    }
}
