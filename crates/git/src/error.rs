//! Typed git failures, and the mapping from git's (redacted) stderr onto them.

use std::path::PathBuf;
use std::time::Duration;

/// A failed git operation. No variant ever holds a secret: stderr is redacted with every
/// secret of the credential in use and URLs lose their userinfo before they get here.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The remote refused the credential, or one was needed and none was given.
    #[error("authentication failed for {url}: {detail}")]
    Auth { url: String, detail: String },
    /// The remote's TLS certificate was refused (unknown issuer, wrong name, expired).
    /// Retrying will not help; a private CA has to be trusted (`BUILDER_EXTRA_CA_FILE`).
    #[error(
        "the TLS certificate of {url} is not trusted: {detail} (for a private CA, add it with BUILDER_EXTRA_CA_FILE)"
    )]
    Tls { url: String, detail: String },
    /// The remote could not be reached or the connection broke; worth retrying.
    #[error("remote {url} unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    /// The repository, branch or revision does not exist.
    #[error("not found: {what}: {detail}")]
    NotFound { what: String, detail: String },
    /// The operation ran past its time limit and was killed.
    #[error("git {op} timed out after {after:?}")]
    Timeout { op: String, after: Duration },
    /// The caller asked for something unsafe or malformed; retrying will not help.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The remote rejected the push (e.g. not a fast-forward).
    #[error("push of {branch} to {url} rejected: {detail}")]
    PushRejected {
        url: String,
        branch: String,
        detail: String,
    },
    /// The repository, or one file in it, is larger than the configured limit
    /// ([`crate::RepoLimits`]); retrying will not help until the limit or the repository
    /// changes.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// The remote sent objects that fail `fsck` (e.g. tree entries named `..` or `.git`,
    /// option-looking submodule URLs): a hostile or corrupt repository, never retried.
    #[error("repository {url} refused as unsafe: {detail}")]
    UnsafeRepository { url: String, detail: String },
    /// `commit_all` found no change to commit.
    #[error("nothing to commit in {}", workdir.display())]
    NothingToCommit { workdir: PathBuf },
    /// git failed in a way none of the variants above describes.
    #[error("git {op} failed ({}): {stderr_redacted}", status_text(*.status))]
    Command {
        op: String,
        status: Option<i32>,
        stderr_redacted: String,
    },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
}

impl GitError {
    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Unreachable { .. } | GitError::Timeout { .. }
        )
    }

    pub(crate) fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> GitError {
        let op = op.into();
        move |source| GitError::Io { op, source }
    }
}

fn status_text(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit {code}"),
        None => "killed by signal".to_owned(),
    }
}

const AUTH: &[&str] = &[
    "authentication failed",
    "could not read username",
    "could not read password",
    "terminal prompts disabled",
    "permission denied (publickey",
    "permission denied, please try again",
    "http basic: access denied",
    "invalid username or password",
    "invalid credentials",
    "bad credentials",
    "returned error: 401",
    "returned error: 403",
];

const NOT_FOUND: &[&str] = &[
    "repository not found",
    "does not appear to be a git repository",
    "not found in upstream",
    "couldn't find remote ref",
    "returned error: 404",
    "' not found",
    "' does not exist",
    "no such repository",
    "unknown revision",
    "bad revision",
    "not a valid object name",
    "invalid reference",
];

const UNREACHABLE: &[&str] = &[
    "could not resolve host",
    "could not resolve hostname",
    "temporary failure in name resolution",
    "failed to connect",
    "could not connect",
    "connection refused",
    "connection timed out",
    "connection reset",
    "connection closed",
    "network is unreachable",
    "no route to host",
    "operation timed out",
    "early eof",
    "the remote end hung up",
    "rpc failed",
    "returned error: 5",
    "ssl",
    "gnutls",
    "broken pipe",
    "could not read from remote repository",
    "unable to access",
];

/// What libcurl (OpenSSL or GnuTLS builds) prints when it refuses a server certificate or
/// cannot load the trust store.
const TLS: &[&str] = &[
    "ssl certificate problem",
    "server certificate verification failed",
    "certificate verify failed",
    "unable to get local issuer certificate",
    "self-signed certificate",
    "self signed certificate",
    "no alternative certificate subject name matches",
    "ssl: certificate subject name",
    "certificate has expired",
    "error setting certificate",
];

/// What `index-pack`/`unpack-objects` print when `transfer.fsckObjects` rejects an object.
const FSCK: &[&str] = &["fsck error", "hasdotdot", "hasdotgit", "gitmodulesurl"];

const REJECTED: &[&str] = &[
    "[rejected]",
    "[remote rejected]",
    "non-fast-forward",
    "fetch first",
    "failed to push some refs",
];

/// What a failed invocation was about, so its stderr maps onto the right variant.
#[derive(Clone, Copy)]
pub(crate) struct FailureContext<'a> {
    pub op: &'a str,
    /// The remote's URL with userinfo removed, for network operations.
    pub url: Option<&'a str>,
    /// What "not found" would refer to (a repository, a branch, a revision).
    pub subject: &'a str,
    /// The branch being pushed, for push rejections.
    pub push_branch: Option<&'a str>,
}

/// Maps a failed invocation onto a variant. `stderr` must already be redacted.
pub(crate) fn classify(ctx: &FailureContext<'_>, status: Option<i32>, stderr: &str) -> GitError {
    let lower = stderr.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    let detail = summarize(stderr);
    // A changed host key is an attack or a misconfiguration, never a transient failure.
    let host_key = lower.contains("host key verification failed")
        || lower.contains("remote host identification has changed");
    if let Some(url) = ctx.url {
        if has(AUTH) {
            return GitError::Auth {
                url: url.to_owned(),
                detail,
            };
        }
        if let Some(branch) = ctx.push_branch
            && has(REJECTED)
        {
            return GitError::PushRejected {
                url: url.to_owned(),
                branch: branch.to_owned(),
                detail,
            };
        }
    }
    // Checked before NOT_FOUND/UNREACHABLE: a fetch refused by fsck ends with messages like
    // "the remote end hung up" that would otherwise look transient and be retried forever.
    if let Some(url) = ctx.url
        && has(FSCK)
    {
        return GitError::UnsafeRepository {
            url: url.to_owned(),
            detail,
        };
    }
    // Before UNREACHABLE, which matches "ssl" and "unable to access": an untrusted
    // certificate must not be retried as if the network had failed.
    if let Some(url) = ctx.url
        && has(TLS)
    {
        return GitError::Tls {
            url: url.to_owned(),
            detail,
        };
    }
    if has(NOT_FOUND) {
        return GitError::NotFound {
            what: ctx.subject.to_owned(),
            detail,
        };
    }
    if let Some(url) = ctx.url
        && !host_key
        && has(UNREACHABLE)
    {
        return GitError::Unreachable {
            url: url.to_owned(),
            detail,
        };
    }
    GitError::Command {
        op: ctx.op.to_owned(),
        status,
        stderr_redacted: detail,
    }
}

/// Keeps errors readable: git's last lines say why, progress chatter before them does not.
fn summarize(stderr: &str) -> String {
    const MAX: usize = 2000;
    let trimmed = stderr.trim();
    if trimmed.len() <= MAX {
        return trimmed.to_owned();
    }
    let mut start = trimmed.len() - MAX;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &trimmed[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(stderr: &str) -> GitError {
        classify(
            &FailureContext {
                op: "clone",
                url: Some("https://host/r.git"),
                subject: "repository https://host/r.git",
                push_branch: None,
            },
            Some(128),
            stderr,
        )
    }

    #[test]
    fn maps_typical_git_messages() {
        assert!(matches!(
            net("fatal: Authentication failed for 'https://host/r.git/'"),
            GitError::Auth { .. }
        ));
        assert!(matches!(
            net("fatal: could not read Username for 'https://host': terminal prompts disabled"),
            GitError::Auth { .. }
        ));
        assert!(matches!(
            net(
                "git@host: Permission denied (publickey).\nfatal: Could not read from remote repository."
            ),
            GitError::Auth { .. }
        ));
        assert!(matches!(
            net("remote: Repository not found.\nfatal: repository 'https://host/r.git/' not found"),
            GitError::NotFound { .. }
        ));
        assert!(matches!(
            net(
                "fatal: unable to access 'https://host/r.git/': Failed to connect to host port 443 after 0 ms: Connection refused"
            ),
            GitError::Unreachable { .. }
        ));
        assert!(matches!(
            net("fatal: unable to access 'https://host/': The requested URL returned error: 503"),
            GitError::Unreachable { .. }
        ));
        let tls = net(
            "fatal: unable to access 'https://host/r.git/': SSL certificate problem: unable to get local issuer certificate",
        );
        assert!(matches!(tls, GitError::Tls { .. }), "{tls:?}");
        assert!(!tls.is_transient());
        assert!(matches!(
            net(
                "fatal: unable to access 'https://host/': server certificate verification failed. CAfile: none CRLfile: none"
            ),
            GitError::Tls { .. }
        ));
        let hk =
            net("Host key verification failed.\nfatal: Could not read from remote repository.");
        assert!(matches!(hk, GitError::Command { .. }), "{hk:?}");
        assert!(!hk.is_transient());
        assert!(net("ssh: connect to host h port 22: Connection refused").is_transient());
    }

    #[test]
    fn local_failures_are_never_network_errors() {
        let err = classify(
            &FailureContext {
                op: "diff",
                url: None,
                subject: "revision",
                push_branch: None,
            },
            Some(128),
            "fatal: connection refused-looking text",
        );
        assert!(matches!(err, GitError::Command { .. }), "{err:?}");
    }

    #[test]
    fn push_rejections_are_their_own_variant() {
        let err = classify(
            &FailureContext {
                op: "push",
                url: Some("https://host/r.git"),
                subject: "repository",
                push_branch: Some("b"),
            },
            Some(1),
            " ! [rejected]        HEAD -> b (fetch first)\nerror: failed to push some refs to 'https://host/r.git'",
        );
        assert!(matches!(err, GitError::PushRejected { .. }), "{err:?}");
    }

    #[test]
    fn long_stderr_keeps_its_end() {
        let text = format!("{}fatal: the reason", "x".repeat(5000));
        let s = summarize(&text);
        assert!(s.len() < 2100);
        assert!(s.ends_with("fatal: the reason"));
    }
}
