//! A registered repository, as the rest of the system sees it. Credentials are not part of
//! it: they live encrypted in the store and only the git layer ever sees them in clear.

use crate::ids::RepositoryId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod url;

pub use url::{
    FORGE_API_BASE_PROPERTY, RemoteScheme, URL_ALLOW_VARIABLE, UrlAllowList, UrlPolicy, UrlTarget,
    credential_travels_in_clear, is_loopback_host, url_target, validate_forge_api_base,
    validate_repository_url,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Provider {
    Github,
    Gitlab,
    Bitbucket,
    AzureDevops,
    Gitea,
    Generic,
}

impl Provider {
    /// Guesses the forge from the URL's host; anything unknown is a plain git remote.
    pub fn detect(url: &str) -> Provider {
        let lower = url.to_ascii_lowercase();
        let host = lower
            .split("://")
            .nth(1)
            .unwrap_or(&lower)
            .split(['/', ':'])
            .next()
            .unwrap_or("")
            .rsplit('@')
            .next()
            .unwrap_or("");
        if host == "github.com" || host.ends_with(".github.com") {
            Provider::Github
        } else if host.contains("gitlab") {
            Provider::Gitlab
        } else if host == "bitbucket.org" {
            Provider::Bitbucket
        } else if host == "dev.azure.com"
            || host.ends_with(".dev.azure.com")
            || host.ends_with(".visualstudio.com")
        {
            Provider::AzureDevops
        } else if host.contains("gitea") || host.contains("forgejo") || host == "codeberg.org" {
            Provider::Gitea
        } else {
            Provider::Generic
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Provider::Github => "GITHUB",
            Provider::Gitlab => "GITLAB",
            Provider::Bitbucket => "BITBUCKET",
            Provider::AzureDevops => "AZURE_DEVOPS",
            Provider::Gitea => "GITEA",
            Provider::Generic => "GENERIC",
        }
    }

    pub fn parse(s: &str) -> Option<Provider> {
        Some(match s {
            "GITHUB" => Provider::Github,
            "GITLAB" => Provider::Gitlab,
            "BITBUCKET" => Provider::Bitbucket,
            "AZURE_DEVOPS" => Provider::AzureDevops,
            "GITEA" => Provider::Gitea,
            "GENERIC" => Provider::Generic,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RepositoryState {
    Active,
    Inactive,
    Deleted,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repository {
    pub id: RepositoryId,
    pub name: String,
    pub url: String,
    pub default_branch: String,
    pub provider: Provider,
    /// `None` when no credential is stored; otherwise its type name (TOKEN, BASIC, SSH_KEY…).
    pub credential_type: Option<String>,
    pub properties: BTreeMap<String, String>,
    pub state: RepositoryState,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_accessed_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_providers_from_hosts() {
        assert_eq!(
            Provider::detect("https://github.com/a/b.git"),
            Provider::Github
        );
        assert_eq!(Provider::detect("git@github.com:a/b.git"), Provider::Github);
        assert_eq!(
            Provider::detect("https://gitlab.example.com/a/b"),
            Provider::Gitlab
        );
        assert_eq!(
            Provider::detect("https://bitbucket.org/a/b"),
            Provider::Bitbucket
        );
        assert_eq!(
            Provider::detect("https://dev.azure.com/o/p/_git/r"),
            Provider::AzureDevops
        );
        assert_eq!(
            Provider::detect("git@ssh.dev.azure.com:v3/o/p/r"),
            Provider::AzureDevops
        );
        assert_eq!(
            Provider::detect("https://codeberg.org/a/b"),
            Provider::Gitea
        );
        assert_eq!(Provider::detect("file:///srv/git/x.git"), Provider::Generic);
        assert_eq!(Provider::detect("http://127.0.0.1:9/x"), Provider::Generic);
    }
}
