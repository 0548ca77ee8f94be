//! builder-testkit: helpers that other crates' tests use to talk to real things — a real
//! git smart-HTTP server (`git http-backend` behind basic auth, over http or https with a
//! test CA generated per test), real bare repositories made
//! with the git CLI, a real OpenSSH server on a loopback port (`sshd`, own host key and
//! authorized_keys), fake forges (GitHub, GitLab, Bitbucket, Gitea, Azure DevOps pull-request
//! APIs) and a TCP server that never answers (for timeout tests).
//!
//! It is a dev-dependency only: no production crate may depend on it, and it must not depend
//! on any builder crate, so that every crate's tests can use it without cycles.

mod cut_proxy;
mod fake_forge;
mod http_server;
mod repo;
mod serve;
mod silent;
mod ssh_server;
mod tls;

pub use cut_proxy::CutProxy;
pub use fake_forge::{
    FakeForge, FakeForgeKind, FakeForgeState, FakeLimit, FakePr, ForgeRequest, azure_basic,
};
pub use http_server::{GitHttpServer, GitHttpServerBuilder, RecordedRequest};
pub use repo::{add_commit, git_command, make_bare_repo, read_branch_file};
pub use silent::{SilentServer, closed_port};
pub use ssh_server::{SshServer, generate_ssh_key};
pub use tls::{TestCa, TlsListener};

/// Why a test helper could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`git {args}` failed ({status}): {stderr}")]
    Git {
        args: String,
        status: String,
        stderr: String,
    },
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

pub type Result<T, E = TestkitError> = std::result::Result<T, E>;

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestkitError {
    let what = what.into();
    move |source| TestkitError::Io { what, source }
}
