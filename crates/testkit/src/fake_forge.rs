//! Fake forges: GitHub, GitLab, Bitbucket Cloud, Gitea and Azure DevOps stand-ins on a
//! loopback port (http, or https with a [`TestCa`]'s certificate), each serving the
//! repository `acme/widget` the way the forge documents its pull-request API: the auth header
//! it takes (a wrong one is answered with its 401, echoing what it got, as a careless forge
//! might), list filters and pagination (page size 2), create (refused when the head or base
//! branch is not in the bare repository next to it, or when one is already open for the
//! branch, with the forge's own errors) and update. Every request is recorded. Used with a
//! [`crate::GitHttpServer`] serving the same bare repository, so a pull request can only be
//! opened for a branch that was really pushed.

use crate::serve::{Bound, ServerThread, bind_loopback};
use crate::tls::TestCa;
use crate::{Result, git_command};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Which forge the fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeForgeKind {
    Github,
    Gitlab,
    Bitbucket,
    Gitea,
    AzureDevops,
}

impl FakeForgeKind {
    pub const ALL: [FakeForgeKind; 5] = [
        FakeForgeKind::Github,
        FakeForgeKind::Gitlab,
        FakeForgeKind::Bitbucket,
        FakeForgeKind::Gitea,
        FakeForgeKind::AzureDevops,
    ];

    /// Where the repository lives on a git server for this forge's URL rules: Azure DevOps
    /// remotes are `<org>/<project>/_git/<repo>`, the others `owner/repo`.
    pub fn git_repo_name(self) -> &'static str {
        match self {
            FakeForgeKind::AzureDevops => "acme/widget/_git/widget",
            _ => "acme/widget",
        }
    }

    /// The path of the web page of pull request `n` (Bitbucket's is absolute: its web host
    /// is not its API host).
    pub fn web_path(self, n: u64) -> String {
        match self {
            FakeForgeKind::Github => format!("/acme/widget/pull/{n}"),
            FakeForgeKind::Gitlab => format!("/acme/widget/-/merge_requests/{n}"),
            FakeForgeKind::Bitbucket => {
                format!("https://bitbucket.org/acme/widget/pull-requests/{n}")
            }
            FakeForgeKind::Gitea => format!("/acme/widget/pulls/{n}"),
            FakeForgeKind::AzureDevops => format!("/acme/widget/_git/widget/pullrequest/{n}"),
        }
    }
}

/// Answers every request the same way, instead of by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeLimit {
    None,
    /// 429 with `Retry-After: 7`.
    TooMany,
    /// GitHub's 403 with `x-ratelimit-remaining: 0` and a reset 30 s ahead.
    GithubExhausted,
    /// Azure DevOps' answer to a token it does not take: 203 and the HTML sign-in page.
    AzureSignInPage,
}

/// A pull request the fake holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakePr {
    pub number: u64,
    pub head: String,
    pub base: String,
    pub title: String,
    pub body: String,
    /// `acme/widget`, or a fork's full name.
    pub source: String,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgeRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    pub body: String,
}

/// The fake's state, for tests to seed and inspect through [`FakeForge::with`].
pub struct FakeForgeState {
    kind: FakeForgeKind,
    base: String,
    bare: PathBuf,
    token: String,
    pub prs: Vec<FakePr>,
    pub creates: usize,
    pub updates: usize,
    pub lists: usize,
    pub page_size: usize,
    pub limit: FakeLimit,
    pub requests: Vec<ForgeRequest>,
}

type Shared = Arc<Mutex<FakeForgeState>>;

/// A running fake forge; stops on drop.
pub struct FakeForge {
    kind: FakeForgeKind,
    state: Shared,
    server: ServerThread,
}

impl FakeForge {
    /// A fake `kind` over plain http that takes `token` and opens pull requests only for
    /// branches of the bare repository `bare`.
    pub fn start(kind: FakeForgeKind, bare: &Path, token: &str) -> Result<FakeForge> {
        FakeForge::start_with(kind, bare, token, None)
    }

    /// [`FakeForge::start`] over https with `ca`'s server certificate.
    pub fn start_tls(
        kind: FakeForgeKind,
        bare: &Path,
        token: &str,
        ca: &TestCa,
    ) -> Result<FakeForge> {
        FakeForge::start_with(kind, bare, token, Some(ca))
    }

    fn start_with(
        kind: FakeForgeKind,
        bare: &Path,
        token: &str,
        ca: Option<&TestCa>,
    ) -> Result<FakeForge> {
        let bound = bind_loopback()?;
        let (addr, scheme) = (bound.addr, Bound::scheme(ca));
        let state = Arc::new(Mutex::new(FakeForgeState {
            kind,
            base: format!("{scheme}://{addr}"),
            bare: bare.to_owned(),
            token: token.to_owned(),
            prs: Vec::new(),
            creates: 0,
            updates: 0,
            lists: 0,
            page_size: 2,
            limit: FakeLimit::None,
            requests: Vec::new(),
        }));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let server = bound.serve(format!("fake-forge-{}", addr.port()), app, ca)?;
        Ok(FakeForge {
            kind,
            state,
            server,
        })
    }

    pub fn kind(&self) -> FakeForgeKind {
        self.kind
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", self.server.scheme, self.server.addr)
    }

    /// The API root an adapter is pointed at (the repository property `forge_api_base`).
    pub fn api_base(&self) -> String {
        let base = self.base_url();
        match self.kind {
            FakeForgeKind::Github => base,
            FakeForgeKind::Gitlab => format!("{base}/api/v4"),
            FakeForgeKind::Bitbucket => format!("{base}/2.0"),
            FakeForgeKind::Gitea => format!("{base}/api/v1"),
            FakeForgeKind::AzureDevops => format!("{base}/acme"),
        }
    }

    /// Reads or changes the state (seed pull requests, set a limit, count calls).
    pub fn with<T>(&self, f: impl FnOnce(&mut FakeForgeState) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The pull requests held now.
    pub fn pull_requests(&self) -> Vec<FakePr> {
        self.with(|s| s.prs.clone())
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<ForgeRequest> {
        self.with(|s| s.requests.clone())
    }
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn branch_exists(bare: &Path, branch: &str) -> bool {
    git_command()
        .arg("--git-dir")
        .arg(bare)
        .args(["rev-parse", "--verify", "--quiet"])
        .arg(format!("refs/heads/{branch}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn reply(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(body)).into_response()
}

fn with_headers(mut resp: Response, headers: &[(&'static str, String)]) -> Response {
    for (name, value) in headers {
        if let Ok(v) = value.parse() {
            resp.headers_mut().insert(*name, v);
        }
    }
    resp
}

impl FakeForgeState {
    fn prefix(&self) -> &'static str {
        match self.kind {
            FakeForgeKind::Github => "/repos/acme/widget/pulls",
            FakeForgeKind::Gitlab => "/api/v4/projects/acme%2Fwidget/merge_requests",
            FakeForgeKind::Bitbucket => "/2.0/repositories/acme/widget/pullrequests",
            FakeForgeKind::Gitea => "/api/v1/repos/acme/widget/pulls",
            FakeForgeKind::AzureDevops => "/acme/widget/_apis/git/repositories/widget/pullrequests",
        }
    }

    fn render(&self, pr: &FakePr) -> Value {
        let n = pr.number;
        let web = &self.base;
        match self.kind {
            FakeForgeKind::Github => json!({
                "id": 1000 + n, "number": n, "state": "open", "title": pr.title, "body": pr.body,
                "url": format!("{web}/repos/acme/widget/pulls/{n}"),
                "html_url": format!("{web}/acme/widget/pull/{n}"),
                "head": {"ref": pr.head, "label": format!("acme:{}", pr.head), "repo": {"full_name": pr.source}},
                "base": {"ref": pr.base, "label": format!("acme:{}", pr.base)},
            }),
            FakeForgeKind::Gitlab => json!({
                "id": 1000 + n, "iid": n, "project_id": 7, "state": "opened",
                "title": pr.title, "description": pr.body,
                "source_branch": pr.head, "target_branch": pr.base,
                "source_project_id": if pr.source == "acme/widget" { 7 } else { 99 },
                "target_project_id": 7,
                "web_url": format!("{web}/acme/widget/-/merge_requests/{n}"),
            }),
            FakeForgeKind::Bitbucket => json!({
                "type": "pullrequest", "id": n, "state": "OPEN",
                "title": pr.title, "description": pr.body,
                "source": {"branch": {"name": pr.head}, "repository": {"full_name": pr.source}},
                "destination": {"branch": {"name": pr.base}, "repository": {"full_name": "acme/widget"}},
                "links": {
                    "html": {"href": format!("https://bitbucket.org/acme/widget/pull-requests/{n}")},
                    "self": {"href": format!("{web}/2.0/repositories/acme/widget/pullrequests/{n}")},
                },
            }),
            FakeForgeKind::Gitea => json!({
                "id": 1000 + n, "number": n, "state": "open", "title": pr.title, "body": pr.body,
                "html_url": format!("{web}/acme/widget/pulls/{n}"),
                "head": {"ref": pr.head, "label": pr.head, "repo": {"full_name": pr.source}},
                "base": {"ref": pr.base, "label": pr.base},
            }),
            FakeForgeKind::AzureDevops => {
                let mut v = json!({
                    "pullRequestId": n, "codeReviewId": n, "status": "active",
                    "title": pr.title, "description": pr.body,
                    "sourceRefName": format!("refs/heads/{}", pr.head),
                    "targetRefName": format!("refs/heads/{}", pr.base),
                    "url": format!("{web}/acme/widget/_apis/git/repositories/widget/pullRequests/{n}"),
                    "repository": {
                        "id": "5febef5a-833d-4e14-b9c0-14cb638f91e6", "name": "widget",
                        "webUrl": format!("{web}/acme/widget/_git/widget"),
                        "project": {"name": "widget"},
                    },
                });
                if pr.source != "acme/widget" {
                    v["forkSource"] =
                        json!({"name": "refs/heads/x", "repository": {"name": pr.source}});
                }
                v
            }
        }
    }

    fn auth_ok(&self, headers: &HeaderMap) -> Result<(), String> {
        let (name, expected) = match self.kind {
            FakeForgeKind::Github | FakeForgeKind::Bitbucket => {
                ("authorization", format!("Bearer {}", self.token))
            }
            FakeForgeKind::Gitlab => ("private-token", self.token.clone()),
            FakeForgeKind::Gitea => ("authorization", format!("token {}", self.token)),
            FakeForgeKind::AzureDevops => (
                "authorization",
                format!("Basic {}", azure_basic(&self.token)),
            ),
        };
        let presented = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        if presented == expected {
            Ok(())
        } else {
            Err(presented)
        }
    }

    /// The forge's 401, echoing what it was sent (as a careless forge might).
    fn unauthorized(&self, presented: &str) -> Response {
        let echo = format!("bad credentials: {presented}");
        reply(
            401,
            match self.kind {
                FakeForgeKind::Github => {
                    json!({"message": echo, "documentation_url": "https://docs.github.com/rest"})
                }
                FakeForgeKind::Gitlab => json!({"message": format!("401 Unauthorized ({echo})")}),
                FakeForgeKind::Bitbucket => json!({"type": "error", "error": {"message": echo}}),
                FakeForgeKind::Gitea => {
                    json!({"message": echo, "url": "https://gitea.example/api/swagger"})
                }
                FakeForgeKind::AzureDevops => json!({
                    "$id": "1", "innerException": null,
                    "message": format!("TF400813: The user is not authorized to access this resource. {echo}"),
                    "typeName": "Microsoft.TeamFoundation.Framework.Server.UnauthorizedRequestException",
                    "typeKey": "UnauthorizedRequestException", "errorCode": 0, "eventId": 3000,
                }),
            },
        )
    }

    fn not_found(&self) -> Response {
        reply(
            404,
            match self.kind {
                FakeForgeKind::Github => json!({"message": "Not Found"}),
                FakeForgeKind::Gitlab => json!({"message": "404 Not Found"}),
                FakeForgeKind::Bitbucket => {
                    json!({"type": "error", "error": {"message": "Resource not found"}})
                }
                FakeForgeKind::Gitea => {
                    json!({"message": "The target couldn't be found.", "errors": []})
                }
                FakeForgeKind::AzureDevops => {
                    json!({"$id": "1", "message": "TF401180: The requested pull request was not found.", "typeKey": "GitPullRequestNotFoundException"})
                }
            },
        )
    }

    fn list(&mut self, q: &HashMap<String, String>) -> Response {
        self.lists += 1;
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        if self.kind == FakeForgeKind::AzureDevops {
            if get("searchCriteria.status") != "active" {
                return reply(
                    400,
                    json!({"message": "only active pull requests are listed here"}),
                );
            }
            let Some(branch) = get("searchCriteria.sourceRefName")
                .strip_prefix("refs/heads/")
                .map(str::to_owned)
            else {
                return reply(400, json!({"message": "sourceRefName must be a full ref"}));
            };
            // Azure caps `$top` on its side; so does this fake, at its page size.
            let top: usize = get("$top").parse().unwrap_or(101);
            let skip: usize = get("$skip").parse().unwrap_or(0);
            let value: Vec<Value> = self
                .prs
                .iter()
                .filter(|p| p.head == branch)
                .skip(skip)
                .take(top.min(self.page_size))
                .map(|p| self.render(p))
                .collect();
            let count = value.len();
            return reply(200, json!({"value": value, "count": count}));
        }
        let (items, per_page): (Vec<&FakePr>, usize) = match self.kind {
            FakeForgeKind::Github => {
                if get("state") != "open" {
                    return reply(
                        400,
                        json!({"message": "only open pull requests are listed here"}),
                    );
                }
                let head = get("head");
                let Some(branch) = head.strip_prefix("acme:") else {
                    return reply(422, json!({"message": "head must be owner:branch"}));
                };
                let items = self
                    .prs
                    .iter()
                    .filter(|p| p.head == branch && p.source == "acme/widget")
                    .collect();
                (items, get("per_page").parse().unwrap_or(30))
            }
            FakeForgeKind::Gitlab => {
                if get("state") != "opened" {
                    return reply(
                        400,
                        json!({"message": "only opened pull requests are listed here"}),
                    );
                }
                let branch = get("source_branch");
                (
                    self.prs.iter().filter(|p| p.head == branch).collect(),
                    get("per_page").parse().unwrap_or(20),
                )
            }
            FakeForgeKind::Bitbucket => {
                let query = get("q");
                let Some(branch) = query
                    .strip_prefix("source.branch.name=\"")
                    .and_then(|r| r.strip_suffix("\" AND state=\"OPEN\""))
                else {
                    return reply(
                        400,
                        json!({"type": "error", "error": {"message": format!("Invalid query: {query}")}}),
                    );
                };
                (
                    self.prs.iter().filter(|p| p.head == branch).collect(),
                    get("pagelen").parse().unwrap_or(10),
                )
            }
            FakeForgeKind::Gitea => {
                if get("state") != "open" {
                    return reply(
                        400,
                        json!({"message": "only open pull requests are listed here"}),
                    );
                }
                (
                    self.prs.iter().collect(),
                    get("limit").parse().unwrap_or(30),
                )
            }
            FakeForgeKind::AzureDevops => unreachable!("answered above"),
        };
        let size = per_page.min(self.page_size).max(1);
        let page: usize = get("page").parse().unwrap_or(1).max(1);
        let total = items.len();
        let slice: Vec<Value> = items
            .iter()
            .skip((page - 1) * size)
            .take(size)
            .map(|p| self.render(p))
            .collect();
        let more = page * size < total;
        let mut next_q: Vec<(String, String)> = q
            .iter()
            .filter(|(k, _)| k.as_str() != "page")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        next_q.push(("page".into(), (page + 1).to_string()));
        let next_url = format!(
            "{}{}?{}",
            self.base,
            self.prefix(),
            next_q
                .iter()
                .map(|(k, v)| format!("{k}={}", enc(v)))
                .collect::<Vec<_>>()
                .join("&")
        );
        match self.kind {
            FakeForgeKind::Bitbucket => {
                let mut body =
                    json!({"values": slice, "page": page, "pagelen": size, "size": total});
                if more {
                    body["next"] = json!(next_url);
                }
                reply(200, body)
            }
            FakeForgeKind::Gitlab => with_headers(
                reply(200, json!(slice)),
                &[
                    (
                        "x-next-page",
                        if more {
                            (page + 1).to_string()
                        } else {
                            String::new()
                        },
                    ),
                    ("x-total", total.to_string()),
                ],
            ),
            FakeForgeKind::Github | FakeForgeKind::Gitea | FakeForgeKind::AzureDevops => {
                let mut headers = vec![("x-total-count", total.to_string())];
                if more {
                    headers.push(("link", format!("<{next_url}>; rel=\"next\"")));
                }
                with_headers(reply(200, json!(slice)), &headers)
            }
        }
    }

    fn create(&mut self, body: &Value) -> Response {
        let s = |v: &Value| v.as_str().unwrap_or("").to_owned();
        let (head, base, title, text) = match self.kind {
            FakeForgeKind::Github | FakeForgeKind::Gitea => (
                s(&body["head"]),
                s(&body["base"]),
                s(&body["title"]),
                s(&body["body"]),
            ),
            FakeForgeKind::Gitlab => (
                s(&body["source_branch"]),
                s(&body["target_branch"]),
                s(&body["title"]),
                s(&body["description"]),
            ),
            FakeForgeKind::Bitbucket => (
                s(&body["source"]["branch"]["name"]),
                s(&body["destination"]["branch"]["name"]),
                s(&body["title"]),
                s(&body["description"]),
            ),
            FakeForgeKind::AzureDevops => {
                let branch = |v: &Value| {
                    let full = s(v);
                    match full.strip_prefix("refs/heads/") {
                        Some(b) => b.to_owned(),
                        // Not a full ref: Azure refuses it; so does this fake, below.
                        None => String::new(),
                    }
                };
                (
                    branch(&body["sourceRefName"]),
                    branch(&body["targetRefName"]),
                    s(&body["title"]),
                    s(&body["description"]),
                )
            }
        };
        if self.kind == FakeForgeKind::AzureDevops && text.chars().count() > 4000 {
            return reply(
                400,
                json!({"message": "TF401181: The pull request description is too long."}),
            );
        }
        if !branch_exists(&self.bare, &head) || !branch_exists(&self.bare, &base) {
            return match self.kind {
                FakeForgeKind::Github => reply(
                    422,
                    json!({
                        "message": "Validation Failed",
                        "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                        "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                    }),
                ),
                FakeForgeKind::Gitlab => reply(
                    422,
                    json!({"message": [format!("Source branch \"{head}\" does not exist")]}),
                ),
                FakeForgeKind::Bitbucket => reply(
                    400,
                    json!({"type": "error", "error": {
                        "message": format!("source: Branch not found: {head}"),
                        "fields": {"source": [format!("Branch not found: {head}")]},
                    }}),
                ),
                FakeForgeKind::Gitea => reply(
                    404,
                    json!({"message": "The target couldn't be found.", "errors": []}),
                ),
                FakeForgeKind::AzureDevops => reply(
                    400,
                    json!({"$id": "1", "message": "TF401398: The pull request cannot be activated because the source and/or the target branch no longer exists, or the requested refs are not branches", "typeKey": "GitPullRequestInvalidRefsException"}),
                ),
            };
        }
        if let Some(existing) = self
            .prs
            .iter()
            .find(|p| p.head == head && p.source == "acme/widget")
        {
            let n = existing.number;
            return match self.kind {
                FakeForgeKind::Github => reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for acme:{head}.")}]}),
                ),
                FakeForgeKind::Gitlab => reply(
                    409,
                    json!({"message": [format!("Another open merge request already exists for this source branch: !{n}")]}),
                ),
                FakeForgeKind::Bitbucket => reply(
                    400,
                    json!({"type": "error", "error": {"message": "duplicate pull request"}}),
                ),
                FakeForgeKind::Gitea => reply(
                    409,
                    json!({"message": format!("pull request already exists for these targets [id: {n}]")}),
                ),
                FakeForgeKind::AzureDevops => reply(
                    409,
                    json!({"message": format!("TF401179: An active pull request for the source and target branch already exists (id {n}).")}),
                ),
            };
        }
        self.creates += 1;
        let number = self.prs.iter().map(|p| p.number).max().unwrap_or(0) + 1;
        self.prs.push(FakePr {
            number,
            head,
            base,
            title,
            body: text,
            source: "acme/widget".into(),
        });
        let rendered = self.render(&self.prs[self.prs.len() - 1]);
        reply(201, rendered)
    }

    fn update(&mut self, method: &Method, number: u64, body: &Value) -> Response {
        let expected = match self.kind {
            FakeForgeKind::Github | FakeForgeKind::Gitea | FakeForgeKind::AzureDevops => {
                Method::PATCH
            }
            FakeForgeKind::Gitlab | FakeForgeKind::Bitbucket => Method::PUT,
        };
        if *method != expected {
            return reply(405, json!({"message": "Method Not Allowed"}));
        }
        let text_key = match self.kind {
            FakeForgeKind::Github | FakeForgeKind::Gitea => "body",
            FakeForgeKind::Gitlab | FakeForgeKind::Bitbucket | FakeForgeKind::AzureDevops => {
                "description"
            }
        };
        let Some(i) = self.prs.iter().position(|p| p.number == number) else {
            return self.not_found();
        };
        if let Some(t) = body["title"].as_str() {
            self.prs[i].title = t.to_owned();
        }
        if let Some(t) = body[text_key].as_str() {
            self.prs[i].body = t.to_owned();
        }
        self.updates += 1;
        let rendered = self.render(&self.prs[i]);
        reply(200, rendered)
    }
}

async fn handle(
    State(fake): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut f = fake.lock().unwrap_or_else(|p| p.into_inner());
    let resp = respond(&mut f, method.clone(), &uri, &headers, &body);
    f.requests.push(ForgeRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        status: resp.status().as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    });
    resp
}

/// One answer of the fake, by the forge's documented rules.
fn respond(
    f: &mut FakeForgeState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    match f.limit {
        FakeLimit::TooMany => {
            return with_headers(
                reply(429, json!({"message": "API rate limit exceeded"})),
                &[("retry-after", "7".into())],
            );
        }
        FakeLimit::GithubExhausted => {
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() + 30)
                .unwrap_or(0);
            return with_headers(
                reply(
                    403,
                    json!({"message": "API rate limit exceeded for user ID 1."}),
                ),
                &[
                    ("x-ratelimit-remaining", "0".into()),
                    ("x-ratelimit-reset", reset.to_string()),
                ],
            );
        }
        FakeLimit::AzureSignInPage => {
            let echo = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let mut resp = (
                StatusCode::NON_AUTHORITATIVE_INFORMATION,
                format!("<html><body>Sign in ({echo})</body></html>"),
            )
                .into_response();
            if let Ok(v) = "text/html; charset=utf-8".parse() {
                resp.headers_mut().insert("content-type", v);
            }
            return resp;
        }
        FakeLimit::None => {}
    }
    if let Err(presented) = f.auth_ok(headers) {
        return f.unauthorized(&presented);
    }
    let q: HashMap<String, String> = Query::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    // Every Azure DevOps REST call must pin its version.
    if f.kind == FakeForgeKind::AzureDevops
        && q.get("api-version").map(String::as_str) != Some("7.1")
    {
        return reply(
            400,
            json!({"message": "VS800075: The project name is missing or api-version is not 7.1"}),
        );
    }
    let json_body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let Some(rest) = uri.path().strip_prefix(f.prefix()) else {
        return f.not_found();
    };
    match (method.clone(), rest) {
        (Method::GET, "") => f.list(&q),
        (Method::POST, "") => f.create(&json_body),
        (_, rest) => match rest.strip_prefix('/').and_then(|n| n.parse::<u64>().ok()) {
            Some(n) => f.update(&method, n, &json_body),
            None => f.not_found(),
        },
    }
}

/// Azure DevOps' basic-auth credential for a personal access token: `:<token>`.
pub fn azure_basic(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!(":{token}"))
}
