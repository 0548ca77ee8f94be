//! builder-git: every git operation builder performs — clone, branch, commit, diff, push,
//! remote look-ups — through the `git` CLI, with credentials handed over only through a
//! per-process askpass/ssh environment (never a URL, a log, an error or `.git/config`) and
//! with hooks, filters and foreign configuration unable to run on the host.
//!
//! Working copies come from a per-repository bare mirror (`Git::prepare_working_copy`):
//! fetched incrementally under a file lock, `fsck`ed on fetch, size-limited
//! ([`RepoLimits`]), then cloned locally with hard-linked objects. `git-bench`
//! (the `builder-git-bench` crate) measures it against a fresh clone and the cost of writing the
//! files.
//!
//! https remotes are verified against the platform's CA roots, plus an operator's private CA
//! with [`Git::with_extra_ca_file`]; verification cannot be switched off by any repository
//! config. [`Git::check_push_access`] proves a credential may push with a dry run that
//! changes nothing on the remote.
//!
//! It must not depend on other builder crates (core, store, worker …): callers map its
//! typed errors onto their own domain.

mod branch;
mod credential;
mod error;
mod ops;
mod runner;
mod tls;
mod url;

pub use branch::{feature_branch_name, validate_branch_name};
pub use credential::{GitCredential, redact};
pub use error::GitError;
pub use ops::{DiffStats, Git, GitConfig, RepoLimits, mirror_path};
pub use url::redact_url;
