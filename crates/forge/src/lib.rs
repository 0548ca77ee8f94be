//! builder-forge: opens or updates the pull/merge request for a pushed branch on GitHub,
//! GitLab, Bitbucket Cloud, Gitea/Forgejo and Azure DevOps through their documented REST APIs — finding the
//! open one for the head branch first so a later delivery updates it instead of opening a
//! second.
//!
//! The access token only ever travels in the forge's auth header (marked sensitive); it never
//! appears in a URL, a log line or an error (forge messages are redacted), and pagination
//! links pointing outside the API base are not followed.
//!
//! It must not depend on other builder crates (core, store, worker, api …): callers map its
//! typed errors onto their own domain.

mod azure_url;
mod error;
mod forges;
mod http;
mod tls;
mod url;

pub use error::ForgeError;
pub use tls::{ExtraRoots, install_extra_roots};

use std::future::Future;
use std::pin::Pin;

/// Which forge API speaks for a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForgeKind {
    Github,
    Gitlab,
    /// Bitbucket Cloud (API 2.0).
    Bitbucket,
    /// Gitea and Forgejo (API v1).
    Gitea,
    /// Azure DevOps Services (`dev.azure.com`, `*.visualstudio.com`) and Server (REST 7.1).
    AzureDevops,
}

/// What to open: `head_branch` (already pushed) into `base_branch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestSpec {
    pub head_branch: String,
    pub base_branch: String,
    pub title: String,
    pub body: String,
}

/// The pull/merge request as the forge reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    /// GitHub/Gitea `number`, GitLab `iid`, Bitbucket `id`, Azure DevOps `pullRequestId`.
    pub number: u64,
    /// The web URL users open.
    pub url: String,
    /// `false` when an existing open one was found and updated.
    pub created: bool,
}

/// One forge's pull/merge-request API for one repository.
pub trait Forge: Send + Sync {
    fn kind(&self) -> ForgeKind;
    /// Finds the open pull/merge request whose head is `spec.head_branch` and updates its
    /// title and body, or opens one.
    fn open_or_update<'a>(
        &'a self,
        spec: &'a PullRequestSpec,
    ) -> Pin<Box<dyn Future<Output = Result<PullRequest, ForgeError>> + Send + 'a>>;
}

/// The adapter for `kind` and the repository at `repo_url` (any git remote form: https, ssh,
/// scp-like). `api_base` overrides the API root, which defaults to `https://api.github.com`,
/// `https://<host>/api/v4`, `https://api.bitbucket.org/2.0`, `https://<host>/api/v1`, or for
/// Azure DevOps the organisation's root (`https://dev.azure.com/<org>`,
/// `https://<org>.visualstudio.com`).
/// TLS trusts the platform's roots plus those set with [`install_extra_roots`].
pub fn forge_for(
    kind: ForgeKind,
    repo_url: &str,
    api_base: Option<&str>,
    token: &str,
) -> Result<Box<dyn Forge>, ForgeError> {
    forge_for_with_roots(kind, repo_url, api_base, token, &tls::default_roots())
}

/// [`forge_for`] trusting the platform's roots plus `roots` (and not the process-wide ones).
pub fn forge_for_with_roots(
    kind: ForgeKind,
    repo_url: &str,
    api_base: Option<&str>,
    token: &str,
    roots: &ExtraRoots,
) -> Result<Box<dyn Forge>, ForgeError> {
    // The given API root, else the forge's default for this remote.
    let root = |default: String| url::check_api_base(api_base.unwrap_or(&default));
    Ok(match kind {
        ForgeKind::Github => {
            let loc = url::parse_repo_url(repo_url)?;
            let api_base = root("https://api.github.com".to_owned())?;
            Box::new(forges::Github::new(&loc, api_base, token, roots)?)
        }
        ForgeKind::Gitlab => {
            let loc = url::parse_repo_url(repo_url)?;
            let api_base = root(format!("https://{}/api/v4", web_host(&loc.host)))?;
            Box::new(forges::Gitlab::new(&loc, api_base, token, roots)?)
        }
        ForgeKind::Bitbucket => {
            let loc = url::parse_repo_url(repo_url)?;
            let api_base = root("https://api.bitbucket.org/2.0".to_owned())?;
            Box::new(forges::Bitbucket::new(&loc, api_base, token, roots)?)
        }
        ForgeKind::Gitea => {
            let loc = url::parse_repo_url(repo_url)?;
            let api_base = root(format!("https://{}/api/v1", web_host(&loc.host)))?;
            Box::new(forges::Gitea::new(&loc, api_base, token, roots)?)
        }
        ForgeKind::AzureDevops => {
            // Its remotes (`…/_git/<repo>`, `v3/…`, percent-encoded project names) follow
            // their own rules.
            let loc = azure_url::parse_azure_url(repo_url)?;
            let api_base = root(loc.default_api_base.clone())?;
            Box::new(forges::AzureDevops::new(&loc, api_base, token, roots)?)
        }
    })
}

/// The web host for an API default: an ssh remote's port is not the web port.
fn web_host(host: &str) -> &str {
    match host.rsplit_once(':') {
        Some((h, port)) if !h.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_inputs_without_echoing_the_token() {
        let token = "ghp_supersecret";
        for (kind, url) in [
            (ForgeKind::Github, "https://github.com/a/b/c"),
            (ForgeKind::Gitea, "not a url"),
            (
                ForgeKind::Bitbucket,
                "https://x:ghp_supersecret@bitbucket.org/w/r",
            ),
        ] {
            let err = forge_for(kind, url, None, token).err().unwrap();
            assert!(matches!(err, ForgeError::InvalidInput(_)), "{err}");
            assert!(!err.to_string().contains(token));
        }
        let err = forge_for(
            ForgeKind::Github,
            "https://github.com/a/b",
            None,
            "bad\ntoken",
        )
        .err()
        .unwrap();
        assert!(matches!(err, ForgeError::InvalidInput(_)));
        assert!(!err.to_string().contains("bad\ntoken"));
        assert!(forge_for(ForgeKind::Github, "https://github.com/a/b", None, " ").is_err());
    }

    #[test]
    fn a_token_is_never_sent_over_plain_http_off_this_machine() {
        let token = "glpat-secret-token";
        for kind in [
            ForgeKind::Github,
            ForgeKind::Gitlab,
            ForgeKind::Bitbucket,
            ForgeKind::Gitea,
        ] {
            let err = forge_for(
                kind,
                "https://git.example/acme/widget.git",
                Some("http://attacker.example/api"),
                token,
            )
            .err()
            .expect("refused");
            assert!(
                matches!(err, ForgeError::InvalidInput(_)),
                "{kind:?}: {err}"
            );
            assert!(err.to_string().contains("https://"), "{err}");
            assert!(!err.to_string().contains(token));
            assert!(
                forge_for(
                    kind,
                    "https://git.example/acme/widget.git",
                    Some("http://127.0.0.1:9/api"),
                    token,
                )
                .is_ok(),
                "{kind:?}: loopback stays usable for local forges and tests"
            );
        }
        let err = forge_for(
            ForgeKind::AzureDevops,
            "https://dev.azure.com/org/proj/_git/repo",
            Some("http://attacker.example/org"),
            token,
        )
        .err()
        .expect("refused");
        assert!(matches!(err, ForgeError::InvalidInput(_)), "{err}");
    }

    #[test]
    fn gitlab_accepts_subgroups_and_defaults_the_api_to_the_host() {
        let f = forge_for(
            ForgeKind::Gitlab,
            "git@gitlab.example.com:grp/sub/proj.git",
            None,
            "t",
        )
        .unwrap();
        assert_eq!(f.kind(), ForgeKind::Gitlab);
        assert_eq!(web_host("gitlab.example.com:2222"), "gitlab.example.com");
    }

    #[test]
    fn transient_classification() {
        assert!(
            ForgeError::RateLimited {
                retry_after_s: None
            }
            .is_transient()
        );
        assert!(ForgeError::Network("x".into()).is_transient());
        assert!(
            ForgeError::Api {
                status: 502,
                message: String::new()
            }
            .is_transient()
        );
        assert!(
            !ForgeError::Api {
                status: 422,
                message: String::new()
            }
            .is_transient()
        );
        assert!(!ForgeError::Auth(String::new()).is_transient());
    }
}
