//! The mirror cache: one bare mirror per remote repository, fetched incrementally under a
//! per-repository file lock, and per-feature working copies made from it locally.
//!
//! Working copies are local clones of the mirror with hard-linked objects (git's default for
//! a local path). `git-bench` timed it against `git worktree add`, `clone --shared` and
//! `clone --no-hardlinks` on 20 000 commits × 3 000 files: all four are within noise of
//! each other (each is dominated by writing the files), so the choice rests on safety —
//! only this one is a complete repository independent of the mirror:
//! - a worktree's `.git` is a `gitdir:` file (refused by [`check_dot_git`]) and shares refs
//!   and config with the mirror, so a feature's commits and a fetch's `--prune` would
//!   interfere, and a fetch refuses to move a branch checked out in a worktree;
//! - `--shared`/`--reference` leave the copy depending on the mirror's objects through
//!   `objects/info/alternates`; the mirror's own compaction (`repack -d`, see
//!   `Git::compact`) would then delete objects they still need;
//! - `--no-hardlinks` copies every pack: time and disk per working copy grow with the
//!   whole history (21 MiB in the bench), not just with the checked-out files.
//!
//! Hard links are safe because git never modifies an object file in place. Across
//! filesystems git falls back to copying by itself.

use super::*;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Instant;

/// `<mirror_root>/<hash>.git`: where the mirror of `url` lives. Derived from a hash of the
/// URL so that no part of a URL (even a redacted one) becomes a path component.
pub fn mirror_path(mirror_root: &Path, url: &str) -> PathBuf {
    mirror_root.join(format!("{}.git", mirror_key(url)))
}

fn mirror_key(url: &str) -> String {
    let digest = Sha256::digest(url.as_bytes());
    hex::encode(&digest[..16])
}

/// An advisory `flock` on `<hash>.lock`. Exclusive while fetching (one fetch per mirror
/// across tasks and processes: flock locks belong to the open file, so two tasks of one
/// process exclude each other too), shared while working copies are cloned from it.
/// Released when dropped (closing the file).
struct MirrorLock {
    _file: File,
}

impl MirrorLock {
    async fn acquire(path: &Path, exclusive: bool, timeout: Duration) -> Result<Self, GitError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(GitError::io(format!("opening {}", path.display())))?;
        let op = if exclusive {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        let started = Instant::now();
        // Polled rather than a blocking flock on a thread, so that the wait honours the
        // timeout and dropping the future stops it.
        let mut pause = Duration::from_millis(2);
        loop {
            // SAFETY: flock only takes a lock on a descriptor we own and keep open.
            let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(MirrorLock { _file: file });
            }
            let err = std::io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => {}
                Some(libc::EINTR) => continue,
                _ => {
                    return Err(GitError::Io {
                        op: format!("locking {}", path.display()),
                        source: err,
                    });
                }
            }
            if started.elapsed() >= timeout {
                return Err(GitError::Timeout {
                    op: "waiting for the mirror lock".into(),
                    after: timeout,
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

/// Past these, a mirror's objects are repacked after a fetch (see `Git::compact`).
const MAX_PACKS: u64 = 24;
const MAX_LOOSE: u64 = 2_000;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct ObjectCounts {
    pub(super) bytes: u64,
    loose: u64,
    packs: u64,
}

/// The `git ls-tree -r -l -z` totals of one commit.
#[derive(Debug, Default)]
struct TreeSize {
    total: u64,
    largest: Option<(u64, String)>,
}

fn parse_ls_tree_sizes(raw: &[u8]) -> TreeSize {
    let mut out = TreeSize::default();
    for record in raw.split(|b| *b == 0).filter(|r| !r.is_empty()) {
        let text = String::from_utf8_lossy(record);
        let Some((meta, path)) = text.split_once('\t') else {
            continue;
        };
        let mut fields = meta.split_whitespace();
        let (Some(_mode), Some(kind), Some(_oid), Some(size)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        // Submodule entries are commits with size "-": never fetched, never checked out.
        let Ok(size) = size.parse::<u64>() else {
            continue;
        };
        if kind != "blob" {
            continue;
        }
        out.total = out.total.saturating_add(size);
        if out.largest.as_ref().is_none_or(|(l, _)| size > *l) {
            out.largest = Some((size, path.to_owned()));
        }
    }
    out
}

impl Git {
    /// An invocation on a bare repository (the mirror), run from the private directory.
    pub(super) fn bare<'a>(
        &'a self,
        op: &'a str,
        git_dir: &Path,
        rest: Vec<OsString>,
        subject: &'a str,
    ) -> Invocation<'a> {
        let mut all = vec![OsString::from("--git-dir"), git_dir.as_os_str().to_owned()];
        all.extend(rest);
        self.plain(op, all, subject)
    }

    /// A local invocation that names its repositories in `args`, run from the private
    /// directory.
    pub(super) fn plain<'a>(
        &'a self,
        op: &'a str,
        args: Vec<OsString>,
        subject: &'a str,
    ) -> Invocation<'a> {
        Invocation {
            op,
            args,
            cwd: self.private_dir(),
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

    /// Brings the mirror of `url` under `mirror_root` up to date (creating it on first use)
    /// and returns its path. Only the remote's branches and tags are mirrored, pruned to what
    /// the remote has; every object received is checked by `fsck`. Holds the mirror's
    /// exclusive lock while fetching; waiting for it counts against the clone timeout.
    pub async fn fetch_mirror(
        &self,
        url: &str,
        cred: &GitCredential,
        mirror_root: &Path,
    ) -> Result<PathBuf, GitError> {
        let mirror_root = self.ensure_mirror_root(mirror_root)?;
        let lock_path = mirror_root.join(format!("{}.lock", mirror_key(url)));
        let _lock = MirrorLock::acquire(&lock_path, true, self.inner.config.clone_timeout).await?;
        self.fetch_mirror_locked(url, cred, &mirror_root).await
    }

    fn ensure_mirror_root(&self, mirror_root: &Path) -> Result<PathBuf, GitError> {
        let mirror_root = absolute(mirror_root)?;
        std::fs::create_dir_all(&mirror_root)
            .map_err(GitError::io(format!("creating {}", mirror_root.display())))?;
        Ok(mirror_root)
    }

    /// The fetch itself; the caller holds the exclusive lock.
    async fn fetch_mirror_locked(
        &self,
        url: &str,
        cred: &GitCredential,
        mirror_root: &Path,
    ) -> Result<PathBuf, GitError> {
        let prepared = self.prepare(url, cred)?;
        let shown = redact_url(url);
        let mirror = mirror_path(mirror_root, url);
        let fresh = match std::fs::symlink_metadata(&mirror) {
            Ok(meta) if meta.is_dir() => false,
            Ok(_) => {
                return Err(GitError::InvalidInput(format!(
                    "mirror {} is not a directory",
                    mirror.display()
                )));
            }
            Err(_) => true,
        };
        // A new mirror is built beside its final name and renamed only once its first fetch
        // succeeded, so a crash or timeout never leaves a half-filled mirror that later calls
        // would trust. Under the exclusive lock any leftover partial directory is stale.
        let target = if fresh {
            let partial = mirror.with_extension("git.partial");
            if partial.exists() {
                std::fs::remove_dir_all(&partial)
                    .map_err(GitError::io(format!("removing {}", partial.display())))?;
            }
            run(self.bare(
                "init",
                &partial,
                args([
                    OsString::from("init"),
                    "--quiet".into(),
                    "--bare".into(),
                    partial.clone().into_os_string(),
                ]),
                "mirror",
            ))
            .await?;
            partial
        } else {
            mirror.clone()
        };
        let subject = format!("repository {shown}");
        let inv = self.remote(
            "fetch",
            args([
                OsString::from("--git-dir"),
                target.clone().into_os_string(),
                "fetch".into(),
                "--quiet".into(),
                "--prune".into(),
                "--no-tags".into(),
                "--no-recurse-submodules".into(),
                "--no-write-fetch-head".into(),
                "--".into(),
                url.into(),
                "+refs/heads/*:refs/heads/*".into(),
                "+refs/tags/*:refs/tags/*".into(),
            ]),
            &prepared,
            &shown,
            &subject,
            self.inner.config.clone_timeout,
        );
        let fetched = run(inv).await;
        if let Err(err) = fetched {
            if fresh {
                let _ = std::fs::remove_dir_all(&target);
            }
            return Err(err);
        }
        let counts = self.object_counts(&target).await?;
        let (size, limit) = (counts.bytes, self.inner.limits.max_repo_size);
        if size > limit {
            // Keeping it would only occupy the disk: every later use would be refused too.
            let _ = std::fs::remove_dir_all(&target);
            return Err(GitError::TooLarge {
                what: format!("repository {shown}"),
                size,
                limit,
            });
        }
        self.compact(&target, &counts).await?;
        if fresh {
            std::fs::rename(&target, &mirror).map_err(GitError::io(format!(
                "moving the new mirror to {}",
                mirror.display()
            )))?;
        }
        Ok(mirror)
    }

    /// Small fetches leave loose objects and larger ones a pack each; lookups and the hard
    /// links of every working copy slow down with their number, so past a threshold they are
    /// merged (geometric repack: loose objects and small packs only, big packs stay). Safe
    /// under the exclusive lock: working copies made earlier hold hard links to the old
    /// files, and no clone from the mirror runs meanwhile.
    async fn compact(&self, git_dir: &Path, counts: &ObjectCounts) -> Result<bool, GitError> {
        if counts.packs <= MAX_PACKS && counts.loose <= MAX_LOOSE {
            return Ok(false);
        }
        let mut inv = self.bare(
            "repack",
            git_dir,
            args(["repack", "-d", "-q", "--geometric=2"]),
            "mirror",
        );
        inv.timeout = self.inner.config.clone_timeout;
        run(inv).await?;
        Ok(true)
    }

    /// What `git count-objects -v` reports: bytes on disk, loose objects and packs.
    pub(super) async fn object_counts(&self, git_dir: &Path) -> Result<ObjectCounts, GitError> {
        let out = run(self.bare(
            "count-objects",
            git_dir,
            args(["count-objects", "-v"]),
            "mirror",
        ))
        .await?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut counts = ObjectCounts::default();
        for (key, value) in text.lines().filter_map(|l| l.split_once(": ")) {
            let Ok(value) = value.trim().parse::<u64>() else {
                continue;
            };
            match key {
                "size" | "size-pack" | "size-garbage" => {
                    counts.bytes = counts.bytes.saturating_add(value.saturating_mul(1024));
                }
                "count" => counts.loose = value,
                "packs" => counts.packs = value,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Refuses `commit` if one of its files or all of them together exceed the limits.
    /// Runs on the mirror before anything is written to a working copy.
    pub(super) async fn check_tree_size(
        &self,
        git_dir: &Path,
        commit: &str,
        shown: &str,
    ) -> Result<(), GitError> {
        let out = run(self.bare(
            "ls-tree",
            git_dir,
            args([
                "ls-tree",
                "-r",
                "-l",
                "-z",
                "--full-tree",
                "--end-of-options",
                commit,
            ]),
            "revision",
        ))
        .await?;
        let sizes = parse_ls_tree_sizes(&out.stdout);
        let limits = self.inner.limits;
        if let Some((size, path)) = sizes.largest
            && size > limits.max_file_size
        {
            return Err(GitError::TooLarge {
                what: format!("file {path:?} in {shown}"),
                size,
                limit: limits.max_file_size,
            });
        }
        if sizes.total > limits.max_repo_size {
            return Err(GitError::TooLarge {
                what: format!("the files of {shown} at {commit}"),
                size: sizes.total,
                limit: limits.max_repo_size,
            });
        }
        Ok(())
    }

    /// Makes `dest` (which must not exist or be empty) a working copy of `branch` of `url`
    /// — the remote's default branch if `None` — and returns its HEAD commit.
    ///
    /// The repository's mirror under `mirror_root` is fetched first (see
    /// [`Git::fetch_mirror`]); the working copy is then a local clone of the mirror with
    /// hard-linked objects: independent of the mirror and of every other working copy, and
    /// as fast to create as writing its files. Its `origin` is `url` (which never holds a
    /// credential: such URLs are refused), and `refs/remotes/origin/*` are the remote's
    /// branches as of the fetch, so [`Git::checkout_new_branch`] resumes pushed work as
    /// after [`Git::clone_repo`]. Files larger than [`RepoLimits`] allow are refused before
    /// anything is checked out. A failure leaves no `dest` behind if this created it.
    pub async fn prepare_working_copy(
        &self,
        url: &str,
        cred: &GitCredential,
        mirror_root: &Path,
        dest: &Path,
        branch: Option<&str>,
    ) -> Result<String, GitError> {
        if let Some(b) = branch {
            validate_branch_name(b)?;
        }
        classify_url(url)?;
        let (dest, existed) = check_clone_dest(dest)?;
        let shown = redact_url(url);
        let branch = match branch {
            Some(b) => b.to_owned(),
            None => self.ls_remote_default_branch(url, cred).await?,
        };
        let mirror_root = self.ensure_mirror_root(mirror_root)?;
        let lock_path = mirror_root.join(format!("{}.lock", mirror_key(url)));
        let timeout = self.inner.config.clone_timeout;
        let mirror = {
            let _exclusive = MirrorLock::acquire(&lock_path, true, timeout).await?;
            self.fetch_mirror_locked(url, cred, &mirror_root).await?
        };
        // Shared while cloning: other working copies may be made at the same time, but no
        // fetch may replace refs (or drop the mirror for size) under us. Another fetch may
        // slip in between the two locks; that only makes the copy newer.
        let _shared = MirrorLock::acquire(&lock_path, false, timeout).await?;
        let full = format!("refs/heads/{branch}");
        let subject = format!("branch {branch} of {shown}");
        let head = run(self.bare(
            "rev-parse",
            &mirror,
            args([
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &format!("{full}^{{commit}}"),
            ]),
            &subject,
        ))
        .await
        .map_err(|_| GitError::NotFound {
            what: subject.clone(),
            detail: "the remote has no such branch".into(),
        })?;
        let head = stdout_line(&head);
        // Objects are linked while the size check reads the mirror; files are written only
        // once it passed, so a giant file never reaches the disk of a working copy.
        let mut clone = self.plain(
            "clone",
            args([
                OsString::from("clone"),
                "--quiet".into(),
                "--no-recurse-submodules".into(),
                "--no-checkout".into(),
                "--branch".into(),
                branch.clone().into(),
                "--".into(),
                mirror.clone().into_os_string(),
                dest.clone().into_os_string(),
            ]),
            &subject,
        );
        clone.timeout = timeout;
        let result = async {
            let (sized, cloned) =
                tokio::join!(self.check_tree_size(&mirror, &head, &shown), run(clone));
            sized?;
            cloned?;
            run(self.local(
                "config",
                &dest,
                args(["config", "remote.origin.url", url]),
                "working copy config",
            ))
            .await?;
            let mut checkout = self.local(
                "checkout",
                &dest,
                // Writing the files is most of a working copy's cost; parallel checkout
                // (one worker per CPU) measured 1.3–1.6× faster on a 3,000-file tree.
                args(["-c", "checkout.workers=0", "reset", "--hard", "--quiet"]),
                "working copy",
            );
            checkout.timeout = timeout;
            run(checkout).await?;
            self.rev_parse(&dest, "HEAD").await
        }
        .await;
        match result {
            Ok(sha) if sha == head => Ok(sha),
            Ok(sha) => {
                discard(&dest, existed);
                Err(GitError::Command {
                    op: "clone".into(),
                    status: None,
                    stderr_redacted: format!(
                        "working copy is at {sha}, expected {head} from the mirror"
                    ),
                })
            }
            Err(err) => {
                discard(&dest, existed);
                Err(err)
            }
        }
    }
}

/// Undoes a failed working copy: removes `dest` if this call created it, else empties it
/// again so that a retry finds it as the caller left it.
pub(super) fn discard(dest: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(dest);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(dest) {
        for entry in entries.flatten() {
            let path = entry.path();
            // symlink_metadata: a link is removed itself, never followed.
            let is_dir = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            let _ = if is_dir {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// `dest` made absolute, and whether it already existed (then it must be empty).
pub(super) fn check_clone_dest(dest: &Path) -> Result<(PathBuf, bool), GitError> {
    let dest = absolute(dest)?;
    let existed = dest.exists();
    if existed {
        let mut entries = std::fs::read_dir(&dest)
            .map_err(GitError::io(format!("reading {}", dest.display())))?;
        if entries.next().is_some() {
            return Err(GitError::InvalidInput(format!(
                "clone destination {} exists and is not empty",
                dest.display()
            )));
        }
    }
    Ok((dest, existed))
}

#[cfg(test)]
mod tests;
