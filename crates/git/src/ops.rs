//! The git operations builder performs, each one a locked-down `git` invocation.

use crate::branch::validate_branch_name;
use crate::credential::GitCredential;
use crate::error::{FailureContext, GitError};
use crate::runner::{Invocation, Output, RawOutput, run, run_raw};
use crate::url::{UrlKind, classify_url, redact_url};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Limits and identity for git operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitConfig {
    pub clone_timeout: Duration,
    /// Every operation other than clone, local or remote.
    pub op_timeout: Duration,
    /// Author and committer of every commit builder makes.
    pub author_name: String,
    pub author_email: String,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            clone_timeout: Duration::from_secs(600),
            op_timeout: Duration::from_secs(120),
            author_name: "builder".to_owned(),
            author_email: "builder@localhost".to_owned(),
        }
    }
}

/// Size limits on what builder fetches and checks out. Kept apart from [`GitConfig`] so
/// existing `GitConfig { .. }` literals keep compiling; set with [`Git::with_limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepoLimits {
    /// Largest single file (blob) a working copy may contain, in bytes.
    pub max_file_size: u64,
    /// Largest repository, in bytes: both the mirror's objects on disk and the sum of the
    /// files of a checked-out commit.
    pub max_repo_size: u64,
}

impl Default for RepoLimits {
    fn default() -> Self {
        // GitHub refuses files over 100 MiB; a few GiB covers all but monorepos, which can
        // raise it explicitly.
        RepoLimits {
            max_file_size: 100 << 20,
            max_repo_size: 4 << 30,
        }
    }
}

/// Size of the change between two revisions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffStats {
    pub files_changed: usize,
    pub lines_added: u64,
    pub lines_removed: u64,
    /// Paths changed (the new path of a rename), in git's order.
    pub files: Vec<String>,
}

/// Runs git operations. Cheap to clone; the private directory (askpass helper, ssh
/// known_hosts, short-lived key files) is removed when the last clone drops.
#[derive(Clone)]
pub struct Git {
    inner: Arc<Inner>,
}

struct Inner {
    config: GitConfig,
    limits: RepoLimits,
    dir: tempfile::TempDir,
    askpass: PathBuf,
    known_hosts: PathBuf,
    /// Platform roots plus the operator's extra CA, for git's https (`GIT_SSL_CAINFO`).
    ca_bundle: Option<PathBuf>,
}

impl std::fmt::Debug for Git {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Git")
            .field("config", &self.inner.config)
            .field("dir", &self.inner.dir.path())
            .finish()
    }
}

const ASKPASS_USER_VAR: &str = "BUILDER_GIT_ASKPASS_USERNAME";
const ASKPASS_PASS_VAR: &str = "BUILDER_GIT_ASKPASS_PASSWORD";

/// The script holds no secret: it echoes values that exist only in the environment of the
/// one git process that needs them.
const ASKPASS_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  [Uu]sername*) printf '%s\n' "$BUILDER_GIT_ASKPASS_USERNAME" ;;
  [Pp]assword*) printf '%s\n' "$BUILDER_GIT_ASKPASS_PASSWORD" ;;
  *) exit 1 ;;
esac
"#;

/// Keys a working copy's `.git/config` may hold: what `git clone` and branch switching write.
/// Anything else (url.*.insteadOf, http.proxy, filter.*, core.sshCommand, include.path …)
/// means something other than builder wrote there, and could redirect a credential or run a
/// program on the host.
fn allowed_local_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "remote.origin.url",
        "remote.origin.fetch",
        "extensions.objectformat",
        "extensions.refstorage",
    ];
    if EXACT.contains(&key) {
        return true;
    }
    key.strip_prefix("branch.")
        .and_then(|rest| rest.rsplit_once('.'))
        .is_some_and(|(_, leaf)| leaf == "remote" || leaf == "merge")
}

/// Per-operation credential plumbing; the ssh key file is deleted when this drops.
struct Prepared {
    env: Vec<(&'static str, OsString)>,
    secrets: Vec<String>,
    _key_file: Option<tempfile::NamedTempFile>,
}

fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.to_string_lossy().replace('\'', r"'\''"))
}

fn absolute(path: &Path) -> Result<PathBuf, GitError> {
    std::path::absolute(path).map_err(GitError::io(format!("resolving {}", path.display())))
}

/// `workdir` made absolute, if its `.git` is a plain directory (not a symlink or a
/// `gitdir:` file that could point git at another repository).
fn check_dot_git(workdir: &Path) -> Result<PathBuf, GitError> {
    let workdir = absolute(workdir)?;
    let dot_git = workdir.join(".git");
    let meta = std::fs::symlink_metadata(&dot_git).map_err(|_| GitError::NotFound {
        what: format!("working copy {}", workdir.display()),
        detail: "no .git directory".into(),
    })?;
    if !meta.is_dir() {
        return Err(GitError::InvalidInput(format!(
            "{} is not a plain directory",
            dot_git.display()
        )));
    }
    Ok(workdir)
}

fn validate_rev(rev: &str) -> Result<(), GitError> {
    if rev.is_empty() || rev.starts_with('-') || rev.chars().any(|c| c.is_control()) {
        return Err(GitError::InvalidInput(format!("revision {rev:?}")));
    }
    Ok(())
}

fn stdout_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn args<I, S>(items: I) -> Vec<OsString>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    items.into_iter().map(Into::into).collect()
}

impl Git {
    /// Creates the private 0700 directory under `scratch_dir` and the askpass helper in it.
    pub fn new(config: GitConfig, scratch_dir: &Path) -> Result<Git, GitError> {
        for (what, value) in [
            ("author_name", &config.author_name),
            ("author_email", &config.author_email),
        ] {
            if value.trim().is_empty()
                || value
                    .chars()
                    .any(|c| c.is_control() || c == '<' || c == '>')
            {
                return Err(GitError::InvalidInput(format!("{what} {value:?}")));
            }
        }
        if config.clone_timeout.is_zero() || config.op_timeout.is_zero() {
            return Err(GitError::InvalidInput("timeouts must be positive".into()));
        }
        std::fs::create_dir_all(scratch_dir)
            .map_err(GitError::io(format!("creating {}", scratch_dir.display())))?;
        let dir = tempfile::Builder::new()
            .prefix("builder-git-")
            .tempdir_in(scratch_dir)
            .map_err(GitError::io("creating the private git directory"))?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .map_err(GitError::io("restricting the private git directory"))?;
        let askpass = dir.path().join("askpass.sh");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&askpass)
            .map_err(GitError::io("creating the askpass helper"))?;
        file.write_all(ASKPASS_SCRIPT.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(GitError::io("writing the askpass helper"))?;
        let known_hosts = dir.path().join("known_hosts");
        Ok(Git {
            inner: Arc::new(Inner {
                config,
                limits: RepoLimits::default(),
                dir,
                askpass,
                known_hosts,
                ca_bundle: None,
            }),
        })
    }

    pub fn config(&self) -> &GitConfig {
        &self.inner.config
    }

    /// This `Git` with `limits` instead of [`RepoLimits::default`]. Clones made earlier
    /// keep theirs; the private directory is shared.
    pub fn with_limits(self, limits: RepoLimits) -> Result<Git, GitError> {
        if limits.max_file_size == 0 || limits.max_repo_size == 0 {
            return Err(GitError::InvalidInput(
                "size limits must be positive".into(),
            ));
        }
        let inner = match Arc::try_unwrap(self.inner) {
            Ok(mut inner) => {
                inner.limits = limits;
                inner
            }
            Err(_) => {
                return Err(GitError::InvalidInput(
                    "with_limits must be called before the Git handle is cloned".into(),
                ));
            }
        };
        Ok(Git {
            inner: Arc::new(inner),
        })
    }

    pub fn limits(&self) -> RepoLimits {
        self.inner.limits
    }

    /// This `Git` trusting the CA certificates in the PEM file `extra_ca_file` for https
    /// remotes, on top of the platform's roots (a self-hosted forge behind a private CA).
    /// The bundle is assembled once, in the private directory; verification stays on.
    pub fn with_extra_ca_file(self, extra_ca_file: &Path) -> Result<Git, GitError> {
        let mut inner = Arc::try_unwrap(self.inner).map_err(|_| {
            GitError::InvalidInput(
                "with_extra_ca_file must be called before the Git handle is cloned".into(),
            )
        })?;
        inner.ca_bundle = Some(crate::tls::write_bundle(inner.dir.path(), extra_ca_file)?);
        Ok(Git {
            inner: Arc::new(inner),
        })
    }

    fn private_dir(&self) -> &Path {
        self.inner.dir.path()
    }

    fn ssh_command(&self, key: Option<&Path>) -> OsString {
        let mut cmd = String::from("ssh -F /dev/null -o BatchMode=yes -o IdentitiesOnly=yes");
        cmd.push_str(" -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile=");
        cmd.push_str(&shell_quote(&self.inner.known_hosts));
        match key {
            Some(path) => {
                cmd.push_str(" -o PasswordAuthentication=no -i ");
                cmd.push_str(&shell_quote(path));
            }
            // Without a credential, never fall back to the host's own ~/.ssh keys.
            None => cmd.push_str(" -o PubkeyAuthentication=no -o PasswordAuthentication=no"),
        }
        cmd.into()
    }

    /// Builds the environment that hands `cred` to git for `url`, and nothing more.
    fn prepare(&self, url: &str, cred: &GitCredential) -> Result<Prepared, GitError> {
        let kind = classify_url(url)?;
        let mut env: Vec<(&'static str, OsString)> = vec![
            // Empty means "no askpass at all" to git, and prompts are off, so a missing
            // credential fails fast instead of asking anything.
            ("GIT_ASKPASS", OsString::new()),
            ("GIT_SSH_COMMAND", self.ssh_command(None)),
        ];
        if let Some(bundle) = &self.inner.ca_bundle {
            // Beats a GIT_SSL_CAINFO passed through from our own environment, whose
            // certificates the bundle already holds.
            env.push(("GIT_SSL_CAINFO", bundle.clone().into_os_string()));
        }
        let mut key_file = None;
        let mismatch = |what: &str| {
            Err(GitError::InvalidInput(format!(
                "{what} credential cannot be used with {}",
                redact_url(url)
            )))
        };
        match (cred, kind) {
            (GitCredential::None, _) | (_, UrlKind::Local) => {}
            (GitCredential::Token { .. } | GitCredential::Basic { .. }, UrlKind::Http) => {
                crate::credential::check_sent_encrypted(url, cred)?;
                let Some((user, secret)) = cred.http_pair() else {
                    return mismatch("this");
                };
                if user.is_empty() || user.contains(':') {
                    return Err(GitError::InvalidInput(
                        "credential username must be non-empty and contain no ':'".into(),
                    ));
                }
                if [user, secret]
                    .iter()
                    .any(|v| v.chars().any(|c| c == '\n' || c == '\r' || c == '\0'))
                {
                    return Err(GitError::InvalidInput(
                        "credential contains a line break or NUL".into(),
                    ));
                }
                env[0].1 = self.inner.askpass.clone().into_os_string();
                env.push((ASKPASS_USER_VAR, user.into()));
                env.push((ASKPASS_PASS_VAR, secret.into()));
            }
            (GitCredential::SshKey { private_key }, UrlKind::Ssh) => {
                let mut file = tempfile::Builder::new()
                    .prefix("ssh-key-")
                    .permissions(std::fs::Permissions::from_mode(0o600))
                    .tempfile_in(self.private_dir())
                    .map_err(GitError::io("creating the ssh key file"))?;
                let mut key = private_key.trim().to_owned();
                // ssh refuses a key whose last line has no newline.
                key.push('\n');
                file.write_all(key.as_bytes())
                    .and_then(|()| file.flush())
                    .map_err(GitError::io("writing the ssh key file"))?;
                env[1].1 = self.ssh_command(Some(file.path()));
                key_file = Some(file);
            }
            (GitCredential::Token { .. }, UrlKind::Ssh) => return mismatch("a token"),
            (GitCredential::Basic { .. }, UrlKind::Ssh) => return mismatch("a basic"),
            (GitCredential::SshKey { .. }, UrlKind::Http) => return mismatch("an ssh key"),
        }
        Ok(Prepared {
            env,
            secrets: cred.secret_forms(),
            _key_file: key_file,
        })
    }

    /// A working copy's invocation: explicit git dir and work tree, so a missing `.git`
    /// never makes git wander up into some enclosing repository.
    /// `git diff` as builder runs it everywhere: no external diff driver and no textconv
    /// filter a repository could configure, and revisions that cannot pass for options.
    fn diff<'a>(
        &'a self,
        workdir: &'a Path,
        options: &[&str],
        revisions: &[&str],
    ) -> Invocation<'a> {
        let mut a = args(["diff"]);
        a.extend(args(options.iter().copied()));
        a.extend(args(["--no-ext-diff", "--no-textconv", "--end-of-options"]));
        a.extend(args(revisions.iter().copied()));
        a.push("--".into());
        self.local("diff", workdir, a, "revision")
    }

    fn local<'a>(
        &'a self,
        op: &'a str,
        workdir: &'a Path,
        rest: Vec<OsString>,
        subject: &'a str,
    ) -> Invocation<'a> {
        let mut all = vec![
            OsString::from("--git-dir"),
            workdir.join(".git").into_os_string(),
            OsString::from("--work-tree"),
            workdir.as_os_str().to_owned(),
        ];
        all.extend(rest);
        Invocation {
            op,
            args: all,
            cwd: workdir,
            home: self.private_dir(),
            timeout: self.inner.config.op_timeout,
            env: Vec::new(),
            secrets: &[],
            failure: FailureContext {
                op,
                url: None,
                subject,
                push_branch: None,
            },
        }
    }

    /// Refuses a working copy whose `.git` is not a plain directory or whose config holds
    /// keys builder never writes (see [`allowed_local_key`]).
    async fn check_workdir(&self, workdir: &Path) -> Result<PathBuf, GitError> {
        let workdir = check_dot_git(workdir)?;
        let out = run(self.local(
            "config",
            &workdir,
            args(["config", "--local", "--list", "--name-only", "-z"]),
            "working copy config",
        ))
        .await?;
        for key in out.stdout.split(|b| *b == 0).filter(|k| !k.is_empty()) {
            let key = String::from_utf8_lossy(key);
            if !allowed_local_key(&key) {
                return Err(GitError::InvalidInput(format!(
                    "working copy {} has unexpected config key {key:?}; refusing to run git there",
                    workdir.display()
                )));
            }
        }
        Ok(workdir)
    }

    fn remote<'a>(
        &'a self,
        op: &'a str,
        rest: Vec<OsString>,
        prepared: &'a Prepared,
        shown_url: &'a str,
        subject: &'a str,
        timeout: Duration,
    ) -> Invocation<'a> {
        Invocation {
            op,
            args: rest,
            cwd: self.private_dir(),
            home: self.private_dir(),
            timeout,
            env: prepared.env.clone(),
            secrets: &prepared.secrets,
            failure: FailureContext {
                op,
                url: Some(shown_url),
                subject,
                push_branch: None,
            },
        }
    }

    /// Clones `url` into `dest` (which must not exist or be empty), optionally checking out
    /// `branch`; returns the HEAD commit. A failed clone leaves no `dest` behind if it
    /// created it.
    pub async fn clone_repo(
        &self,
        url: &str,
        dest: &Path,
        branch: Option<&str>,
        cred: &GitCredential,
    ) -> Result<String, GitError> {
        if let Some(b) = branch {
            validate_branch_name(b)?;
        }
        let (dest, existed) = mirror::check_clone_dest(dest)?;
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        // No checkout yet: the size limits are checked on the objects first, so a giant file
        // is refused before it is written out.
        let mut rest = args([
            "clone",
            "--quiet",
            "--no-recurse-submodules",
            "--no-local",
            "--no-checkout",
        ]);
        if let Some(b) = branch {
            rest.push("--branch".into());
            rest.push(b.into());
        }
        rest.push("--".into());
        rest.push(url.into());
        rest.push(dest.clone().into_os_string());
        let subject = match branch {
            Some(b) => format!("branch {b} of {shown}"),
            None => format!("repository {shown}"),
        };
        let result = async {
            run(self.remote(
                "clone",
                rest,
                &prepared,
                &shown,
                &subject,
                self.inner.config.clone_timeout,
            ))
            .await?;
            let git_dir = dest.join(".git");
            let size = self.object_counts(&git_dir).await?.bytes;
            let limit = self.inner.limits.max_repo_size;
            if size > limit {
                return Err(GitError::TooLarge {
                    what: format!("repository {shown}"),
                    size,
                    limit,
                });
            }
            let head = self.rev_parse(&dest, "HEAD").await?;
            self.check_tree_size(&git_dir, &head, &shown).await?;
            let mut checkout = self.local(
                "checkout",
                &dest,
                args(["reset", "--hard", "--quiet"]),
                "working copy",
            );
            checkout.timeout = self.inner.config.clone_timeout;
            run(checkout).await?;
            Ok(head)
        }
        .await;
        if result.is_err() {
            mirror::discard(&dest, existed);
        }
        result
    }

    /// The remote's default branch, from the symref its HEAD advertises.
    pub async fn ls_remote_default_branch(
        &self,
        url: &str,
        cred: &GitCredential,
    ) -> Result<String, GitError> {
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        let subject = format!("repository {shown}");
        let out = run(self.remote(
            "ls-remote",
            args([
                OsString::from("ls-remote"),
                "--symref".into(),
                "--".into(),
                url.into(),
                "HEAD".into(),
            ]),
            &prepared,
            &shown,
            &subject,
            self.inner.config.op_timeout,
        ))
        .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| {
                let (target, name) = line.strip_prefix("ref: ")?.split_once('\t')?;
                (name == "HEAD").then_some(target)
            })
            .and_then(|target| target.strip_prefix("refs/heads/"))
            .map(str::to_owned)
            .ok_or_else(|| GitError::NotFound {
                what: format!("default branch of {shown}"),
                detail: "the remote advertises no HEAD branch".into(),
            })
    }

    /// The commit `branch` points to on the remote, or `None` if it has no such branch.
    pub async fn remote_branch_sha(
        &self,
        url: &str,
        branch: &str,
        cred: &GitCredential,
    ) -> Result<Option<String>, GitError> {
        validate_branch_name(branch)?;
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        let subject = format!("repository {shown}");
        let full = format!("refs/heads/{branch}");
        let out = run(self.remote(
            "ls-remote",
            args([
                OsString::from("ls-remote"),
                "--".into(),
                url.into(),
                full.clone().into(),
            ]),
            &prepared,
            &shown,
            &subject,
            self.inner.config.op_timeout,
        ))
        .await?;
        // ls-remote patterns match ref-name tails; only the exact ref counts.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|line| {
                let (sha, name) = line.split_once('\t')?;
                (name == full).then(|| sha.to_owned())
            }))
    }

    /// Switches to `branch`, creating it if needed. Idempotent: an existing local branch is
    /// checked out as is; one that exists only as `origin/<branch>` (pushed before a crash)
    /// is recreated from there, so resumed work continues the pushed history.
    pub async fn checkout_new_branch(&self, workdir: &Path, branch: &str) -> Result<(), GitError> {
        validate_branch_name(branch)?;
        let workdir = self.check_workdir(workdir).await?;
        let local = format!("refs/heads/{branch}");
        let remote = format!("refs/remotes/origin/{branch}");
        let rest = if self.ref_exists(&workdir, &local).await? {
            args(["switch", "--quiet", "--no-guess", branch])
        } else if self.ref_exists(&workdir, &remote).await? {
            args([
                "switch",
                "--quiet",
                "--no-track",
                "-c",
                branch,
                remote.as_str(),
            ])
        } else {
            args(["switch", "--quiet", "-c", branch])
        };
        let subject = format!("branch {branch}");
        run(self.local("switch", &workdir, rest, &subject)).await?;
        Ok(())
    }

    async fn ref_exists(&self, workdir: &Path, full_ref: &str) -> Result<bool, GitError> {
        let raw: RawOutput = run_raw(self.local(
            "rev-parse",
            workdir,
            args([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                full_ref,
            ]),
            full_ref,
        ))
        .await?;
        match raw.status {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            status => Err(GitError::Command {
                op: "rev-parse".into(),
                status,
                stderr_redacted: raw.stderr_redacted,
            }),
        }
    }

    async fn rev_parse(&self, workdir: &Path, rev: &str) -> Result<String, GitError> {
        let spec = format!("{rev}^{{commit}}");
        let out = run(self.local(
            "rev-parse",
            workdir,
            args(["rev-parse", "--verify", "--end-of-options", spec.as_str()]),
            rev,
        ))
        .await?;
        Ok(stdout_line(&out))
    }

    /// Pushes HEAD to `refs/heads/<branch>` of `url`. The URL is given explicitly (never a
    /// configured remote), so nothing about credentials or remotes is stored anywhere.
    pub async fn push_branch(
        &self,
        workdir: &Path,
        url: &str,
        branch: &str,
        cred: &GitCredential,
    ) -> Result<(), GitError> {
        validate_branch_name(branch)?;
        let workdir = self.check_workdir(workdir).await?;
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        let subject = format!("repository {shown}");
        let mut inv = self.local(
            "push",
            &workdir,
            args([
                OsString::from("push"),
                "--quiet".into(),
                "--porcelain".into(),
                "--no-verify".into(),
                "--recurse-submodules=no".into(),
                "--".into(),
                url.into(),
                format!("HEAD:refs/heads/{branch}").into(),
            ]),
            &subject,
        );
        inv.env = prepared.env.clone();
        inv.secrets = &prepared.secrets;
        inv.failure.url = Some(&shown);
        inv.failure.push_branch = Some(branch);
        run(inv).await?;
        Ok(())
    }
}

/// Parses `git diff --numstat -z`: `added\tremoved\tpath\0`, or for a rename
/// `added\tremoved\t\0old\0new\0`; binary files show `-` counts.
fn parse_numstat_z(raw: &[u8]) -> DiffStats {
    let mut stats = DiffStats::default();
    let mut fields = raw.split(|b| *b == 0);
    while let Some(record) = fields.next() {
        if record.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(record);
        let mut parts = text.splitn(3, '\t');
        let (Some(added), Some(removed), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = if path.is_empty() {
            let _old = fields.next();
            fields
                .next()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default()
        } else {
            path.to_owned()
        };
        stats.lines_added += added.parse::<u64>().unwrap_or(0);
        stats.lines_removed += removed.parse::<u64>().unwrap_or(0);
        stats.files.push(path);
    }
    stats.files_changed = stats.files.len();
    stats
}

mod access;
mod changes;
mod mirror;
pub use mirror::mirror_path;

#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod ssh_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;
