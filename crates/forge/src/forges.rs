//! The five adapters. Each follows its forge's documented REST shapes: look for the open
//! pull/merge request of the head branch (following pagination up to `MAX_PAGES`), update it
//! if found, else create it.

use crate::azure_url::AzureLocation;
use crate::http::{Http, MAX_PAGES, next_link, str_field, u64_field};
use crate::tls::ExtraRoots;
use crate::url::{RepoLocation, check_branch, encode, owner_and_name};
use crate::{Forge, ForgeError, ForgeKind, PullRequest, PullRequestSpec};
use base64::Engine;
use reqwest::Method;
use reqwest::header::{AUTHORIZATION, HeaderName};
use serde_json::{Value, json};
use std::future::Future;
use std::pin::Pin;

type BoxFut<'a> = Pin<Box<dyn Future<Output = Result<PullRequest, ForgeError>> + Send + 'a>>;

fn check_spec(spec: &PullRequestSpec) -> Result<(), ForgeError> {
    check_branch("head branch", &spec.head_branch)?;
    check_branch("base branch", &spec.base_branch)?;
    if spec.title.trim().is_empty() {
        return Err(ForgeError::InvalidInput("the title is empty".into()));
    }
    Ok(())
}

fn array(body: &Value, what: &str) -> Result<Vec<Value>, ForgeError> {
    body.as_array()
        .cloned()
        .ok_or_else(|| ForgeError::Network(format!("the forge's {what} is not a list")))
}

// ---------------------------------------------------------------- GitHub

pub(crate) struct Github {
    http: Http,
    owner: String,
    repo: String,
}

impl Github {
    pub fn new(
        loc: &RepoLocation,
        api_base: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Self, ForgeError> {
        let (owner, repo) = owner_and_name(loc)?;
        let http = Http::new(
            ForgeKind::Github,
            api_base,
            AUTHORIZATION,
            format!("Bearer {token}"),
            token,
            roots,
        )?;
        Ok(Github { http, owner, repo })
    }

    async fn run(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        check_spec(spec)?;
        let pulls = self
            .http
            .url(&format!("/repos/{}/{}/pulls", self.owner, self.repo));
        let mut url = format!(
            "{pulls}?head={}&state=open&per_page=100",
            encode(&format!("{}:{}", self.owner, spec.head_branch))
        );
        let mut found = None;
        for _ in 0..MAX_PAGES {
            let reply = self.http.call(Method::GET, &url, None).await?;
            found = array(&reply.body, "pull request list")?
                .into_iter()
                .find(|pr| pr["head"]["ref"].as_str() == Some(&spec.head_branch));
            match (&found, next_link(&reply.headers)) {
                (None, Some(next)) => url = next,
                _ => break,
            }
        }
        let update = match found {
            Some(pr) => Some((
                Method::PATCH,
                format!("{pulls}/{}", u64_field(&pr, &["number"])?),
                json!({ "title": spec.title, "body": spec.body }),
            )),
            None => None,
        };
        let create = json!({
            "title": spec.title,
            "head": spec.head_branch,
            "base": spec.base_branch,
            "body": spec.body,
        });
        let (body, created) = self.http.update_or_open(update, &pulls, create).await?;
        Ok(PullRequest {
            number: u64_field(&body, &["number"])?,
            url: str_field(&body, &["html_url"])?,
            created,
        })
    }
}

impl Forge for Github {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Github
    }
    fn open_or_update<'a>(&'a self, spec: &'a PullRequestSpec) -> BoxFut<'a> {
        Box::pin(self.run(spec))
    }
}

// ---------------------------------------------------------------- GitLab

pub(crate) struct Gitlab {
    http: Http,
    /// The URL-encoded full project path (`group%2Fsub%2Fproject`).
    project: String,
}

impl Gitlab {
    pub fn new(
        loc: &RepoLocation,
        api_base: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Self, ForgeError> {
        if loc.segments.len() < 2 {
            return Err(ForgeError::InvalidInput(
                "repository URL path must be group[/subgroup…]/project".into(),
            ));
        }
        let project = encode(&loc.segments.join("/"));
        let http = Http::new(
            ForgeKind::Gitlab,
            api_base,
            HeaderName::from_static("private-token"),
            token.to_owned(),
            token,
            roots,
        )?;
        Ok(Gitlab { http, project })
    }

    async fn run(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        check_spec(spec)?;
        let mrs = self
            .http
            .url(&format!("/projects/{}/merge_requests", self.project));
        let mut url = format!(
            "{mrs}?source_branch={}&state=opened&per_page=100",
            encode(&spec.head_branch)
        );
        let mut found = None;
        for _ in 0..MAX_PAGES {
            let reply = self.http.call(Method::GET, &url, None).await?;
            found = array(&reply.body, "merge request list")?
                .into_iter()
                .find(|mr| {
                    // `source_branch` also matches merge requests from forks.
                    mr["source_branch"].as_str() == Some(&spec.head_branch)
                        && mr["source_project_id"] == mr["target_project_id"]
                });
            if found.is_some() {
                break;
            }
            // GitLab sends `Link` and `x-next-page` (empty on the last page).
            let next = next_link(&reply.headers).or_else(|| {
                let page = reply.headers.get("x-next-page")?.to_str().ok()?.trim();
                (!page.is_empty()).then(|| {
                    format!(
                        "{mrs}?source_branch={}&state=opened&per_page=100&page={}",
                        encode(&spec.head_branch),
                        encode(page)
                    )
                })
            });
            match next {
                Some(next) => url = next,
                None => break,
            }
        }
        let update = match found {
            Some(mr) => Some((
                Method::PUT,
                format!("{mrs}/{}", u64_field(&mr, &["iid"])?),
                json!({ "title": spec.title, "description": spec.body }),
            )),
            None => None,
        };
        let create = json!({
            "source_branch": spec.head_branch,
            "target_branch": spec.base_branch,
            "title": spec.title,
            "description": spec.body,
        });
        let (body, created) = self.http.update_or_open(update, &mrs, create).await?;
        Ok(PullRequest {
            number: u64_field(&body, &["iid"])?,
            url: str_field(&body, &["web_url"])?,
            created,
        })
    }
}

impl Forge for Gitlab {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Gitlab
    }
    fn open_or_update<'a>(&'a self, spec: &'a PullRequestSpec) -> BoxFut<'a> {
        Box::pin(self.run(spec))
    }
}

// ---------------------------------------------------------------- Bitbucket Cloud

pub(crate) struct Bitbucket {
    http: Http,
    workspace: String,
    slug: String,
}

impl Bitbucket {
    pub fn new(
        loc: &RepoLocation,
        api_base: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Self, ForgeError> {
        let (workspace, slug) = owner_and_name(loc)?;
        let http = Http::new(
            ForgeKind::Bitbucket,
            api_base,
            AUTHORIZATION,
            format!("Bearer {token}"),
            token,
            roots,
        )?;
        Ok(Bitbucket {
            http,
            workspace,
            slug,
        })
    }

    async fn run(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        check_spec(spec)?;
        let prs = self.http.url(&format!(
            "/repositories/{}/{}/pullrequests",
            self.workspace, self.slug
        ));
        // check_branch refused `"` and `\`, so the branch cannot break out of the string.
        let q = format!(
            "source.branch.name=\"{}\" AND state=\"OPEN\"",
            spec.head_branch
        );
        let mut url = format!("{prs}?q={}&pagelen=50", encode(&q));
        let full_name = format!("{}/{}", self.workspace, self.slug);
        let mut found = None;
        for _ in 0..MAX_PAGES {
            let reply = self.http.call(Method::GET, &url, None).await?;
            let values = array(&reply.body["values"], "pull request page's values")?;
            found = values.into_iter().find(|pr| {
                // The branch-name query also matches pull requests from forks.
                pr["source"]["branch"]["name"].as_str() == Some(&spec.head_branch)
                    && pr["state"].as_str() == Some("OPEN")
                    && pr["source"]["repository"]["full_name"]
                        .as_str()
                        .is_none_or(|n| n.eq_ignore_ascii_case(&full_name))
            });
            match (&found, reply.body["next"].as_str()) {
                (None, Some(next)) => url = next.to_owned(),
                _ => break,
            }
        }
        let update = match found {
            Some(pr) => Some((
                Method::PUT,
                format!("{prs}/{}", u64_field(&pr, &["id"])?),
                json!({ "title": spec.title, "description": spec.body }),
            )),
            None => None,
        };
        let create = json!({
            "title": spec.title,
            "description": spec.body,
            "source": { "branch": { "name": spec.head_branch } },
            "destination": { "branch": { "name": spec.base_branch } },
        });
        let (body, created) = self.http.update_or_open(update, &prs, create).await?;
        Ok(PullRequest {
            number: u64_field(&body, &["id"])?,
            url: str_field(&body, &["links", "html", "href"])?,
            created,
        })
    }
}

impl Forge for Bitbucket {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Bitbucket
    }
    fn open_or_update<'a>(&'a self, spec: &'a PullRequestSpec) -> BoxFut<'a> {
        Box::pin(self.run(spec))
    }
}

// ---------------------------------------------------------------- Gitea / Forgejo

pub(crate) struct Gitea {
    http: Http,
    owner: String,
    repo: String,
}

/// Gitea's default `MAX_RESPONSE_ITEMS`.
const GITEA_LIMIT: usize = 50;

impl Gitea {
    pub fn new(
        loc: &RepoLocation,
        api_base: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Self, ForgeError> {
        let (owner, repo) = owner_and_name(loc)?;
        let http = Http::new(
            ForgeKind::Gitea,
            api_base,
            AUTHORIZATION,
            format!("token {token}"),
            token,
            roots,
        )?;
        Ok(Gitea { http, owner, repo })
    }

    async fn run(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        check_spec(spec)?;
        let pulls = self
            .http
            .url(&format!("/repos/{}/{}/pulls", self.owner, self.repo));
        let mut found = None;
        let mut seen = 0usize;
        for page in 1..=MAX_PAGES {
            let url = format!("{pulls}?state=open&page={page}&limit={GITEA_LIMIT}");
            let reply = self.http.call(Method::GET, &url, None).await?;
            let items = array(&reply.body, "pull request list")?;
            if items.is_empty() {
                break;
            }
            seen += items.len();
            // The list has no head filter: match the head branch in this repository.
            found = items.into_iter().find(|pr| {
                pr["head"]["ref"].as_str() == Some(&spec.head_branch)
                    && pr["head"]["repo"]["full_name"]
                        .as_str()
                        .is_none_or(|n| n == format!("{}/{}", self.owner, self.repo))
            });
            let total = reply
                .headers
                .get("x-total-count")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok());
            if found.is_some() || total.is_some_and(|t| seen >= t) {
                break;
            }
        }
        let update = match found {
            Some(pr) => Some((
                Method::PATCH,
                format!("{pulls}/{}", u64_field(&pr, &["number"])?),
                json!({ "title": spec.title, "body": spec.body }),
            )),
            None => None,
        };
        let create = json!({
            "head": spec.head_branch,
            "base": spec.base_branch,
            "title": spec.title,
            "body": spec.body,
        });
        let (body, created) = self.http.update_or_open(update, &pulls, create).await?;
        Ok(PullRequest {
            number: u64_field(&body, &["number"])?,
            url: str_field(&body, &["html_url"])?,
            created,
        })
    }
}

impl Forge for Gitea {
    fn kind(&self) -> ForgeKind {
        ForgeKind::Gitea
    }
    fn open_or_update<'a>(&'a self, spec: &'a PullRequestSpec) -> BoxFut<'a> {
        Box::pin(self.run(spec))
    }
}

// ---------------------------------------------------------------- Azure DevOps

pub(crate) struct AzureDevops {
    http: Http,
    /// `<api_base>/<project>/_apis/git/repositories/<repo>/pullrequests`.
    prs: String,
    /// The repository's web page, for pull request links when an answer lacks `webUrl`.
    web_repo: String,
}

/// The REST version every call pins (`api-version` is mandatory on Azure DevOps).
const AZURE_API_VERSION: &str = "7.1";
/// Azure DevOps refuses pull request descriptions longer than this (in characters).
const AZURE_MAX_DESCRIPTION: usize = 4000;
const AZURE_PAGE: usize = 100;

impl AzureDevops {
    pub fn new(
        loc: &AzureLocation,
        api_base: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Self, ForgeError> {
        // A personal access token goes as the password of basic auth with an empty user.
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(":{token}"));
        let project = encode(&loc.project);
        let repo = encode(&loc.repo);
        let prs = format!("{api_base}/{project}/_apis/git/repositories/{repo}/pullrequests");
        let web_repo = format!("{api_base}/{project}/_git/{repo}");
        let http = Http::new(
            ForgeKind::AzureDevops,
            api_base,
            AUTHORIZATION,
            format!("Basic {basic}"),
            token,
            roots,
        )?;
        Ok(AzureDevops {
            http,
            prs,
            web_repo,
        })
    }

    async fn run(&self, spec: &PullRequestSpec) -> Result<PullRequest, ForgeError> {
        check_spec(spec)?;
        let source = format!("refs/heads/{}", spec.head_branch);
        let v = AZURE_API_VERSION;
        let mut found = None;
        let mut skip = 0usize;
        for _ in 0..MAX_PAGES {
            let url = format!(
                "{}?searchCriteria.sourceRefName={}&searchCriteria.status=active&$top={AZURE_PAGE}&$skip={skip}&api-version={v}",
                self.prs,
                encode(&source)
            );
            let reply = self.http.call(Method::GET, &url, None).await?;
            let items = array(&reply.body["value"], "pull request page's value")?;
            // The server may cap `$top`, so only an empty page ends the list.
            if items.is_empty() {
                break;
            }
            skip += items.len();
            found = items.into_iter().find(|pr| {
                // The source filter also matches pull requests from forks of the repository.
                pr["sourceRefName"].as_str() == Some(&source)
                    && pr["status"].as_str() == Some("active")
                    && pr.get("forkSource").is_none_or(Value::is_null)
            });
            if found.is_some() {
                break;
            }
        }
        let description = truncate_chars(&spec.body, AZURE_MAX_DESCRIPTION);
        let update = match found {
            Some(pr) => Some((
                Method::PATCH,
                format!(
                    "{}/{}?api-version={v}",
                    self.prs,
                    u64_field(&pr, &["pullRequestId"])?
                ),
                json!({ "title": spec.title, "description": description }),
            )),
            None => None,
        };
        let create = json!({
            "sourceRefName": source,
            "targetRefName": format!("refs/heads/{}", spec.base_branch),
            "title": spec.title,
            "description": description,
        });
        let open = format!("{}?api-version={v}", self.prs);
        let (body, created) = self.http.update_or_open(update, &open, create).await?;
        let number = u64_field(&body, &["pullRequestId"])?;
        // The API answer's `url` is the REST resource; people open the web page.
        let web_repo = body["repository"]["webUrl"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| self.web_repo.clone());
        Ok(PullRequest {
            number,
            url: format!("{}/pullrequest/{number}", web_repo.trim_end_matches('/')),
            created,
        })
    }
}

/// At most `max` characters of `text`, ending in `…` when cut.
fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max.saturating_sub(1)) {
        Some((cut, _)) if text.chars().count() > max => format!("{}…", &text[..cut]),
        _ => text.to_owned(),
    }
}

impl Forge for AzureDevops {
    fn kind(&self) -> ForgeKind {
        ForgeKind::AzureDevops
    }
    fn open_or_update<'a>(&'a self, spec: &'a PullRequestSpec) -> BoxFut<'a> {
        Box::pin(self.run(spec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncates_by_characters() {
        assert_eq!(truncate_chars("abc", 5), "abc");
        assert_eq!(truncate_chars("abcdef", 4), "abc…");
        assert_eq!(truncate_chars("ééééé", 3).chars().count(), 3);
        assert_eq!(truncate_chars(&"x".repeat(4000), 4000).len(), 4000);
    }
}
