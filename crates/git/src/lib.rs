//! builder-git: every git operation builder performs — clone, branch, commit, diff, push,
//! remote look-ups — through the `git` CLI, with credentials handed over only through a
//! per-process askpass/ssh environment (never a URL, a log, an error or `.git/config`) and
//! with hooks, filters and foreign configuration unable to run on the host.
//!
//! It must not depend on other builder crates (core, store, worker …): callers map its
//! typed errors onto their own domain.

mod branch;
mod credential;
mod error;
mod ops;
mod runner;
mod url;

pub use branch::{feature_branch_name, validate_branch_name};
pub use credential::{GitCredential, redact};
pub use error::GitError;
pub use ops::{DiffStats, Git, GitConfig};
pub use url::redact_url;
