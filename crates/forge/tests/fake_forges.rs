//! Each adapter against a fake forge (axum on loopback) that sits next to a real smart-HTTP
//! git server (testkit `GitHttpServer`) hosting `acme/widget`: the fake checks the auth header
//! the forge documents, refuses to open a pull request whose head branch is not in the bare
//! repository (with that forge's documented error), answers in the forge's JSON shapes and
//! paginates its lists. The same fakes also run behind TLS (a CA generated per test) to
//! check the real client's https: trusted through extra roots, refused without them.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use builder_forge::{
    ExtraRoots, Forge, ForgeError, ForgeKind, PullRequestSpec, forge_for, forge_for_with_roots,
};
use builder_testkit::{
    GitHttpServer, TestCa, TlsListener, git_command, make_bare_repo, read_branch_file,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "forge-token-7f3a9c";
const WRONG: &str = "wrong-token-b41d";
const GIT_USER: &str = "git-user";
const GIT_PASS: &str = "git-pass-5e2";
const BRANCH: &str = "builder/feature-1";

#[derive(Clone, Copy, PartialEq)]
enum Limit {
    None,
    TooMany,
    GithubExhausted,
    /// Azure DevOps' answer to a token it does not take: 203 and the HTML sign-in page.
    AzureSignInPage,
}

struct Pr {
    number: u64,
    head: String,
    base: String,
    title: String,
    body: String,
    /// `acme/widget`, or a fork's full name.
    source: String,
}

struct Fake {
    kind: ForgeKind,
    base: String,
    bare: PathBuf,
    prs: Vec<Pr>,
    creates: usize,
    updates: usize,
    lists: usize,
    page_size: usize,
    limit: Limit,
}

type Shared = Arc<Mutex<Fake>>;

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

impl Fake {
    fn prefix(&self) -> &'static str {
        match self.kind {
            ForgeKind::Github => "/repos/acme/widget/pulls",
            ForgeKind::Gitlab => "/api/v4/projects/acme%2Fwidget/merge_requests",
            ForgeKind::Bitbucket => "/2.0/repositories/acme/widget/pullrequests",
            ForgeKind::Gitea => "/api/v1/repos/acme/widget/pulls",
            ForgeKind::AzureDevops => "/acme/widget/_apis/git/repositories/widget/pullrequests",
        }
    }

    fn render(&self, pr: &Pr) -> Value {
        let n = pr.number;
        let web = &self.base;
        match self.kind {
            ForgeKind::Github => json!({
                "id": 1000 + n, "number": n, "state": "open", "title": pr.title, "body": pr.body,
                "url": format!("{web}/repos/acme/widget/pulls/{n}"),
                "html_url": format!("{web}/acme/widget/pull/{n}"),
                "head": {"ref": pr.head, "label": format!("acme:{}", pr.head), "repo": {"full_name": pr.source}},
                "base": {"ref": pr.base, "label": format!("acme:{}", pr.base)},
            }),
            ForgeKind::Gitlab => json!({
                "id": 1000 + n, "iid": n, "project_id": 7, "state": "opened",
                "title": pr.title, "description": pr.body,
                "source_branch": pr.head, "target_branch": pr.base,
                "source_project_id": if pr.source == "acme/widget" { 7 } else { 99 },
                "target_project_id": 7,
                "web_url": format!("{web}/acme/widget/-/merge_requests/{n}"),
            }),
            ForgeKind::Bitbucket => json!({
                "type": "pullrequest", "id": n, "state": "OPEN",
                "title": pr.title, "description": pr.body,
                "source": {"branch": {"name": pr.head}, "repository": {"full_name": pr.source}},
                "destination": {"branch": {"name": pr.base}, "repository": {"full_name": "acme/widget"}},
                "links": {
                    "html": {"href": format!("https://bitbucket.org/acme/widget/pull-requests/{n}")},
                    "self": {"href": format!("{web}/2.0/repositories/acme/widget/pullrequests/{n}")},
                },
            }),
            ForgeKind::Gitea => json!({
                "id": 1000 + n, "number": n, "state": "open", "title": pr.title, "body": pr.body,
                "html_url": format!("{web}/acme/widget/pulls/{n}"),
                "head": {"ref": pr.head, "label": pr.head, "repo": {"full_name": pr.source}},
                "base": {"ref": pr.base, "label": pr.base},
            }),
            ForgeKind::AzureDevops => {
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
            ForgeKind::Github | ForgeKind::Bitbucket => {
                ("authorization", format!("Bearer {TOKEN}"))
            }
            ForgeKind::Gitlab => ("private-token", TOKEN.to_owned()),
            ForgeKind::Gitea => ("authorization", format!("token {TOKEN}")),
            ForgeKind::AzureDevops => ("authorization", format!("Basic {}", azure_basic(TOKEN))),
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
                ForgeKind::Github => {
                    json!({"message": echo, "documentation_url": "https://docs.github.com/rest"})
                }
                ForgeKind::Gitlab => json!({"message": format!("401 Unauthorized ({echo})")}),
                ForgeKind::Bitbucket => json!({"type": "error", "error": {"message": echo}}),
                ForgeKind::Gitea => {
                    json!({"message": echo, "url": "https://gitea.example/api/swagger"})
                }
                ForgeKind::AzureDevops => json!({
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
                ForgeKind::Github => json!({"message": "Not Found"}),
                ForgeKind::Gitlab => json!({"message": "404 Not Found"}),
                ForgeKind::Bitbucket => {
                    json!({"type": "error", "error": {"message": "Resource not found"}})
                }
                ForgeKind::Gitea => {
                    json!({"message": "The target couldn't be found.", "errors": []})
                }
                ForgeKind::AzureDevops => {
                    json!({"$id": "1", "message": "TF401180: The requested pull request was not found.", "typeKey": "GitPullRequestNotFoundException"})
                }
            },
        )
    }

    fn list(&mut self, q: &HashMap<String, String>) -> Response {
        self.lists += 1;
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
        if self.kind == ForgeKind::AzureDevops {
            assert_eq!(get("searchCriteria.status"), "active");
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
        let (items, per_page): (Vec<&Pr>, usize) = match self.kind {
            ForgeKind::Github => {
                assert_eq!(get("state"), "open");
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
            ForgeKind::Gitlab => {
                assert_eq!(get("state"), "opened");
                let branch = get("source_branch");
                (
                    self.prs.iter().filter(|p| p.head == branch).collect(),
                    get("per_page").parse().unwrap_or(20),
                )
            }
            ForgeKind::Bitbucket => {
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
            ForgeKind::Gitea => {
                assert_eq!(get("state"), "open");
                (
                    self.prs.iter().collect(),
                    get("limit").parse().unwrap_or(30),
                )
            }
            ForgeKind::AzureDevops => unreachable!("answered above"),
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
            ForgeKind::Bitbucket => {
                let mut body =
                    json!({"values": slice, "page": page, "pagelen": size, "size": total});
                if more {
                    body["next"] = json!(next_url);
                }
                reply(200, body)
            }
            ForgeKind::Gitlab => with_headers(
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
            ForgeKind::Github | ForgeKind::Gitea | ForgeKind::AzureDevops => {
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
            ForgeKind::Github | ForgeKind::Gitea => (
                s(&body["head"]),
                s(&body["base"]),
                s(&body["title"]),
                s(&body["body"]),
            ),
            ForgeKind::Gitlab => (
                s(&body["source_branch"]),
                s(&body["target_branch"]),
                s(&body["title"]),
                s(&body["description"]),
            ),
            ForgeKind::Bitbucket => (
                s(&body["source"]["branch"]["name"]),
                s(&body["destination"]["branch"]["name"]),
                s(&body["title"]),
                s(&body["description"]),
            ),
            ForgeKind::AzureDevops => {
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
        if self.kind == ForgeKind::AzureDevops && text.chars().count() > 4000 {
            return reply(
                400,
                json!({"message": "TF401181: The pull request description is too long."}),
            );
        }
        if !branch_exists(&self.bare, &head) || !branch_exists(&self.bare, &base) {
            return match self.kind {
                ForgeKind::Github => reply(
                    422,
                    json!({
                        "message": "Validation Failed",
                        "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}],
                        "documentation_url": "https://docs.github.com/rest/pulls/pulls#create-a-pull-request",
                    }),
                ),
                ForgeKind::Gitlab => reply(
                    422,
                    json!({"message": [format!("Source branch \"{head}\" does not exist")]}),
                ),
                ForgeKind::Bitbucket => reply(
                    400,
                    json!({"type": "error", "error": {
                        "message": format!("source: Branch not found: {head}"),
                        "fields": {"source": [format!("Branch not found: {head}")]},
                    }}),
                ),
                ForgeKind::Gitea => reply(
                    404,
                    json!({"message": "The target couldn't be found.", "errors": []}),
                ),
                ForgeKind::AzureDevops => reply(
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
                ForgeKind::Github => reply(
                    422,
                    json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "code": "custom", "message": format!("A pull request already exists for acme:{head}.")}]}),
                ),
                ForgeKind::Gitlab => reply(
                    409,
                    json!({"message": [format!("Another open merge request already exists for this source branch: !{n}")]}),
                ),
                ForgeKind::Bitbucket => reply(
                    400,
                    json!({"type": "error", "error": {"message": "duplicate pull request"}}),
                ),
                ForgeKind::Gitea => reply(
                    409,
                    json!({"message": format!("pull request already exists for these targets [id: {n}]")}),
                ),
                ForgeKind::AzureDevops => reply(
                    409,
                    json!({"message": format!("TF401179: An active pull request for the source and target branch already exists (id {n}).")}),
                ),
            };
        }
        self.creates += 1;
        let number = self.prs.iter().map(|p| p.number).max().unwrap_or(0) + 1;
        self.prs.push(Pr {
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
            ForgeKind::Github | ForgeKind::Gitea | ForgeKind::AzureDevops => Method::PATCH,
            ForgeKind::Gitlab | ForgeKind::Bitbucket => Method::PUT,
        };
        if *method != expected {
            return reply(405, json!({"message": "Method Not Allowed"}));
        }
        let text_key = match self.kind {
            ForgeKind::Github | ForgeKind::Gitea => "body",
            ForgeKind::Gitlab | ForgeKind::Bitbucket | ForgeKind::AzureDevops => "description",
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
    match f.limit {
        Limit::TooMany => {
            return with_headers(
                reply(429, json!({"message": "API rate limit exceeded"})),
                &[("retry-after", "7".into())],
            );
        }
        Limit::GithubExhausted => {
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
        Limit::AzureSignInPage => {
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
        Limit::None => {}
    }
    if let Err(presented) = f.auth_ok(&headers) {
        return f.unauthorized(&presented);
    }
    let q: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    // Every Azure DevOps REST call must pin its version.
    if f.kind == ForgeKind::AzureDevops && q.get("api-version").map(String::as_str) != Some("7.1") {
        return reply(
            400,
            json!({"message": "VS800075: The project name is missing or api-version is not 7.1"}),
        );
    }
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
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

struct Fixture {
    kind: ForgeKind,
    /// Set when the fake forge and the git server speak https with this CA's certificate.
    ca: Option<Arc<TestCa>>,
    ca_file: Option<PathBuf>,
    _dir: tempfile::TempDir,
    git: GitHttpServer,
    bare: PathBuf,
    fake: Shared,
    api_base: String,
}

async fn fixture(kind: ForgeKind) -> Fixture {
    fixture_with(kind, None).await
}

async fn fixture_with(kind: ForgeKind, ca: Option<Arc<TestCa>>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare =
        make_bare_repo(dir.path(), "acme/widget", &[("README.md", "widget\n")]).expect("bare repo");
    let git = match &ca {
        Some(ca) => GitHttpServer::start_tls(dir.path(), GIT_USER, GIT_PASS, ca),
        None => GitHttpServer::start(dir.path(), GIT_USER, GIT_PASS),
    }
    .expect("git server");
    let ca_file = ca
        .as_ref()
        .map(|ca| ca.write_ca_file(dir.path(), "ca.pem").expect("ca file"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let scheme = if ca.is_some() { "https" } else { "http" };
    let base = format!("{scheme}://{}", listener.local_addr().expect("addr"));
    let fake = Arc::new(Mutex::new(Fake {
        kind,
        base: base.clone(),
        bare: bare.clone(),
        prs: Vec::new(),
        creates: 0,
        updates: 0,
        lists: 0,
        page_size: 2,
        limit: Limit::None,
    }));
    let app = Router::new().fallback(handle).with_state(fake.clone());
    match &ca {
        Some(ca) => {
            let listener = TlsListener::new(listener, ca);
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
        None => {
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
        }
    }
    let api_base = match kind {
        ForgeKind::Github => base,
        ForgeKind::Gitlab => format!("{base}/api/v4"),
        ForgeKind::Bitbucket => format!("{base}/2.0"),
        ForgeKind::Gitea => format!("{base}/api/v1"),
        ForgeKind::AzureDevops => format!("{base}/acme"),
    };
    Fixture {
        kind,
        ca,
        ca_file,
        _dir: dir,
        git,
        bare,
        fake,
        api_base,
    }
}

impl Fixture {
    /// The repository's remote as the forge knows it: Azure DevOps remotes have their own
    /// shape (`<org>/<project>/_git/<repo>`); the others are the git server's URL.
    fn repo_url(&self) -> String {
        match self.kind {
            ForgeKind::AzureDevops => "https://dev.azure.com/acme/widget/_git/widget".to_owned(),
            _ => self.git.url("acme/widget"),
        }
    }

    fn forge(&self, token: &str) -> Box<dyn Forge> {
        let f = match &self.ca {
            Some(ca) => forge_for_with_roots(
                self.kind,
                &self.repo_url(),
                Some(&self.api_base),
                token,
                &ExtraRoots::from_pem(ca.ca_pem().as_bytes()).expect("roots"),
            ),
            None => forge_for(self.kind, &self.repo_url(), Some(&self.api_base), token),
        }
        .expect("forge_for");
        assert_eq!(f.kind(), self.kind);
        f
    }

    /// Pushes `branch` over the real smart-HTTP server, as builder's push step would.
    fn push_branch(&self, branch: &str) {
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("{GIT_USER}:{GIT_PASS}"));
        let header = format!("http.extraHeader=Authorization: Basic {basic}");
        let work = self._dir.path().join("work");
        let work_s = work.to_string_lossy().into_owned();
        let run = |args: &[&str]| {
            let mut cmd = git_command();
            if let Some(file) = &self.ca_file {
                cmd.env("GIT_SSL_CAINFO", file);
            }
            let out = cmd.args(args).output().expect("git");
            assert!(
                out.status.success(),
                "git {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let url = self.git.url("acme/widget");
        run(&["-c", &header, "clone", "--quiet", &url, &work_s]);
        run(&["-C", &work_s, "checkout", "--quiet", "-b", branch]);
        std::fs::write(work.join("CHANGE.md"), "a change\n").expect("write");
        run(&["-C", &work_s, "add", "CHANGE.md"]);
        run(&["-C", &work_s, "commit", "--quiet", "-m", "change"]);
        run(&[
            "-C", &work_s, "-c", &header, "push", "--quiet", "origin", branch,
        ]);
        assert_eq!(
            read_branch_file(&self.bare, branch, "CHANGE.md").as_deref(),
            Some("a change\n")
        );
    }

    fn with<T>(&self, f: impl FnOnce(&mut Fake) -> T) -> T {
        f(&mut self.fake.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

fn spec(head: &str, title: &str, body: &str) -> PullRequestSpec {
    PullRequestSpec {
        head_branch: head.into(),
        base_branch: "main".into(),
        title: title.into(),
        body: body.into(),
    }
}

fn assert_no_token(err: &ForgeError) {
    for text in [err.to_string(), format!("{err:?}")] {
        for secret in [
            TOKEN.to_owned(),
            WRONG.to_owned(),
            azure_basic(TOKEN),
            azure_basic(WRONG),
        ] {
            assert!(!text.contains(&secret), "token leaked: {text}");
        }
    }
}

fn web_path(kind: ForgeKind, n: u64) -> String {
    match kind {
        ForgeKind::Github => format!("/acme/widget/pull/{n}"),
        ForgeKind::Gitlab => format!("/acme/widget/-/merge_requests/{n}"),
        ForgeKind::Bitbucket => format!("https://bitbucket.org/acme/widget/pull-requests/{n}"),
        ForgeKind::Gitea => format!("/acme/widget/pulls/{n}"),
        ForgeKind::AzureDevops => format!("/acme/widget/_git/widget/pullrequest/{n}"),
    }
}

/// Azure DevOps' basic-auth credential for a personal access token: `:<token>`.
fn azure_basic(token: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!(":{token}"))
}

async fn creates_then_updates_the_same_one(kind: ForgeKind) {
    let fx = fixture(kind).await;
    fx.push_branch(BRANCH);
    let forge = fx.forge(TOKEN);
    let first = forge
        .open_or_update(&spec(BRANCH, "Add widget", "plan v1"))
        .await
        .expect("create");
    assert!(first.created);
    assert_eq!(first.number, 1);
    assert!(first.url.ends_with(&web_path(kind, 1)), "{}", first.url);
    let second = forge
        .open_or_update(&spec(
            BRANCH,
            "Add widget (v2)",
            "plan v2\n\ntests: 3 passed",
        ))
        .await
        .expect("update");
    assert!(!second.created);
    assert_eq!(second.number, first.number);
    assert_eq!(second.url, first.url);
    fx.with(|f| {
        assert_eq!(f.creates, 1);
        assert_eq!(f.updates, 1);
        assert_eq!(f.prs.len(), 1);
        let pr = &f.prs[0];
        assert_eq!((pr.head.as_str(), pr.base.as_str()), (BRANCH, "main"));
        assert_eq!(pr.title, "Add widget (v2)");
        assert_eq!(pr.body, "plan v2\n\ntests: 3 passed");
    });
    // The git server really served the push the fake relied on.
    assert!(
        fx.git
            .requests()
            .iter()
            .any(|r| r.path.ends_with("git-receive-pack"))
    );
}

async fn branch_not_pushed_is_refused(kind: ForgeKind) {
    let fx = fixture(kind).await;
    let err = fx
        .forge(TOKEN)
        .open_or_update(&spec("builder/never-pushed", "t", "b"))
        .await
        .expect_err("no branch");
    match (kind, &err) {
        (
            ForgeKind::Github,
            ForgeError::Api {
                status: 422,
                message,
            },
        ) => {
            assert!(
                message.contains("Validation Failed") && message.contains("head invalid"),
                "{message}"
            )
        }
        (
            ForgeKind::Gitlab,
            ForgeError::Api {
                status: 422,
                message,
            },
        ) => {
            assert!(message.contains("does not exist"), "{message}")
        }
        (
            ForgeKind::Bitbucket,
            ForgeError::Api {
                status: 400,
                message,
            },
        ) => {
            assert!(message.contains("Branch not found"), "{message}")
        }
        (ForgeKind::Gitea, ForgeError::NotFound(_)) => {}
        (
            ForgeKind::AzureDevops,
            ForgeError::Api {
                status: 400,
                message,
            },
        ) => {
            assert!(message.contains("TF401398"), "{message}")
        }
        _ => panic!("unexpected error for {kind:?}: {err}"),
    }
    assert!(!err.is_transient());
    assert_no_token(&err);
    assert_eq!(fx.with(|f| f.creates), 0);
}

async fn wrong_token_is_auth_and_never_echoed(kind: ForgeKind) {
    let fx = fixture(kind).await;
    fx.push_branch(BRANCH);
    let err = fx
        .forge(WRONG)
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect_err("wrong token");
    assert!(matches!(err, ForgeError::Auth(_)), "{err}");
    assert!(err.to_string().contains("[REDACTED]"), "{err}");
    assert_no_token(&err);
    assert_eq!(fx.with(|f| f.creates), 0);
}

async fn rate_limit_carries_retry_after(kind: ForgeKind) {
    let fx = fixture(kind).await;
    fx.with(|f| f.limit = Limit::TooMany);
    let err = fx
        .forge(TOKEN)
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect_err("rate limited");
    assert_eq!(
        err,
        ForgeError::RateLimited {
            retry_after_s: Some(7)
        }
    );
    assert!(err.is_transient());
    assert_no_token(&err);
}

macro_rules! per_forge {
    ($m:ident, $kind:expr) => {
        mod $m {
            use super::*;
            #[tokio::test]
            async fn creates_then_updates_the_same_one() {
                super::creates_then_updates_the_same_one($kind).await
            }
            #[tokio::test]
            async fn branch_not_pushed_is_refused() {
                super::branch_not_pushed_is_refused($kind).await
            }
            #[tokio::test]
            async fn wrong_token_is_auth_and_never_echoed() {
                super::wrong_token_is_auth_and_never_echoed($kind).await
            }
            #[tokio::test]
            async fn rate_limit_carries_retry_after() {
                super::rate_limit_carries_retry_after($kind).await
            }
        }
    };
}

per_forge!(github, ForgeKind::Github);
per_forge!(gitlab, ForgeKind::Gitlab);
per_forge!(bitbucket, ForgeKind::Bitbucket);
per_forge!(gitea, ForgeKind::Gitea);
per_forge!(azure_devops, ForgeKind::AzureDevops);

/// The open pull request for the branch sits on page 2 behind three others the list
/// legitimately returns (fork PRs of the same branch name for GitLab and Bitbucket, whose
/// filters match by name only; any open PR for Gitea, whose list has no head filter).
async fn finds_the_existing_one_on_page_two(kind: ForgeKind) {
    let fx = fixture(kind).await;
    fx.push_branch(BRANCH);
    fx.with(|f| {
        for n in 1..=3 {
            let (head, source) = match kind {
                ForgeKind::Gitea => (format!("other-{n}"), "acme/widget".to_owned()),
                _ => (BRANCH.to_owned(), format!("fork{n}/widget")),
            };
            f.prs.push(Pr {
                number: n,
                head,
                base: "main".into(),
                title: format!("filler {n}"),
                body: String::new(),
                source,
            });
        }
        f.prs.push(Pr {
            number: 4,
            head: BRANCH.into(),
            base: "main".into(),
            title: "old".into(),
            body: "old".into(),
            source: "acme/widget".into(),
        });
    });
    let pr = fx
        .forge(TOKEN)
        .open_or_update(&spec(BRANCH, "new title", "new body"))
        .await
        .expect("update");
    assert!(!pr.created);
    assert_eq!(pr.number, 4);
    assert!(pr.url.ends_with(&web_path(kind, 4)), "{}", pr.url);
    fx.with(|f| {
        assert_eq!(f.creates, 0);
        assert_eq!(f.updates, 1);
        assert_eq!(f.lists, 2, "the match is on the second page");
        assert_eq!(f.prs[3].title, "new title");
        assert_eq!(f.prs[0].title, "filler 1");
    });
}

#[tokio::test]
async fn gitlab_finds_the_existing_one_on_page_two() {
    finds_the_existing_one_on_page_two(ForgeKind::Gitlab).await
}

#[tokio::test]
async fn bitbucket_finds_the_existing_one_on_page_two() {
    finds_the_existing_one_on_page_two(ForgeKind::Bitbucket).await
}

#[tokio::test]
async fn gitea_finds_the_existing_one_on_page_two() {
    finds_the_existing_one_on_page_two(ForgeKind::Gitea).await
}

#[tokio::test]
async fn azure_devops_finds_the_existing_one_on_page_two() {
    finds_the_existing_one_on_page_two(ForgeKind::AzureDevops).await
}

#[tokio::test]
async fn github_exhausted_quota_403_is_rate_limited_with_reset() {
    let fx = fixture(ForgeKind::Github).await;
    fx.with(|f| f.limit = Limit::GithubExhausted);
    let err = fx
        .forge(TOKEN)
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect_err("rate limited");
    match err {
        ForgeError::RateLimited {
            retry_after_s: Some(s),
        } => assert!((1..=30).contains(&s), "{s}"),
        other => panic!("expected RateLimited, got {other}"),
    }
}

#[tokio::test]
async fn unreachable_forge_is_a_transient_network_error() {
    let port = builder_testkit::closed_port().expect("port");
    let forge = forge_for(
        ForgeKind::Gitea,
        "https://gitea.example/acme/widget.git",
        Some(&format!("http://127.0.0.1:{port}/api/v1")),
        TOKEN,
    )
    .expect("forge");
    let err = forge
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect_err("closed port");
    assert!(matches!(err, ForgeError::Network(_)), "{err}");
    assert!(err.is_transient());
    assert_no_token(&err);
}

// ---------------------------------------------------------------- over TLS

#[tokio::test]
async fn github_over_tls_opens_then_updates_through_the_real_client() {
    let ca = Arc::new(TestCa::new().expect("test CA"));
    let fx = fixture_with(ForgeKind::Github, Some(ca)).await;
    assert!(
        fx.api_base.starts_with("https://127.0.0.1:"),
        "{}",
        fx.api_base
    );
    assert!(fx.git.url("acme/widget").starts_with("https://"));
    fx.push_branch(BRANCH);
    let forge = fx.forge(TOKEN);
    let first = forge
        .open_or_update(&spec(BRANCH, "Add widget", "over https"))
        .await
        .expect("create over https");
    assert!(first.created);
    assert!(first.url.starts_with("https://"), "{}", first.url);
    let second = forge
        .open_or_update(&spec(BRANCH, "Add widget (v2)", "again"))
        .await
        .expect("update over https");
    assert!(!second.created);
    assert_eq!(second.number, first.number);
    fx.with(|f| {
        assert_eq!((f.creates, f.updates), (1, 1));
        assert_eq!(f.prs[0].title, "Add widget (v2)");
    });
}

#[tokio::test]
async fn gitlab_over_tls_works_too() {
    let ca = Arc::new(TestCa::new().expect("test CA"));
    let fx = fixture_with(ForgeKind::Gitlab, Some(ca)).await;
    fx.push_branch(BRANCH);
    let pr = fx
        .forge(TOKEN)
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect("create over https");
    assert!(pr.created);
}

#[tokio::test]
async fn a_forge_certificate_from_an_unknown_ca_is_refused_without_the_token() {
    let ca = Arc::new(TestCa::new().expect("test CA"));
    let fx = fixture_with(ForgeKind::Github, Some(ca)).await;
    fx.push_branch(BRANCH);
    let stranger = TestCa::new().expect("other CA");
    for roots in [
        ExtraRoots::none(),
        ExtraRoots::from_pem(stranger.ca_pem().as_bytes()).expect("roots"),
    ] {
        let forge = forge_for_with_roots(
            ForgeKind::Github,
            &fx.git.url("acme/widget"),
            Some(&fx.api_base),
            TOKEN,
            &roots,
        )
        .expect("forge");
        let err = forge
            .open_or_update(&spec(BRANCH, "t", "b"))
            .await
            .expect_err("untrusted certificate");
        assert!(matches!(err, ForgeError::Tls(_)), "{err:?}");
        assert!(!err.is_transient(), "a certificate does not fix itself");
        assert!(err.to_string().contains("BUILDER_EXTRA_CA_FILE"), "{err}");
        assert_no_token(&err);
    }
    fx.with(|f| assert_eq!(f.lists + f.creates, 0, "no request got through"));
}

/// The process-wide roots `builder serve` installs from `BUILDER_EXTRA_CA_FILE` reach plain
/// `forge_for`. The only test in this binary that installs them (once per process).
#[tokio::test]
async fn installed_extra_roots_reach_forge_for() {
    let ca = Arc::new(TestCa::new().expect("test CA"));
    let fx = fixture_with(ForgeKind::Gitea, Some(ca.clone())).await;
    fx.push_branch(BRANCH);
    let file = fx.ca_file.clone().expect("ca file");
    builder_forge::install_extra_roots(ExtraRoots::from_pem_file(&file).expect("roots"))
        .expect("install once");
    assert!(
        builder_forge::install_extra_roots(ExtraRoots::none()).is_err(),
        "a second install is refused"
    );
    let forge = forge_for(
        ForgeKind::Gitea,
        &fx.git.url("acme/widget"),
        Some(&fx.api_base),
        TOKEN,
    )
    .expect("forge");
    let pr = forge
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect("create with the installed roots");
    assert!(pr.created);
}

// ---------------------------------------------------------------- Azure DevOps specifics

#[tokio::test]
async fn azure_devops_sign_in_page_is_an_auth_error() {
    let fx = fixture(ForgeKind::AzureDevops).await;
    fx.with(|f| f.limit = Limit::AzureSignInPage);
    let err = fx
        .forge(WRONG)
        .open_or_update(&spec(BRANCH, "t", "b"))
        .await
        .expect_err("sign-in page");
    assert!(matches!(err, ForgeError::Auth(_)), "{err:?}");
    assert!(!err.is_transient());
    assert_no_token(&err);
}

#[tokio::test]
async fn azure_devops_long_descriptions_are_cut_to_its_limit() {
    let fx = fixture(ForgeKind::AzureDevops).await;
    fx.push_branch(BRANCH);
    let long = "é".repeat(5000);
    let pr = fx
        .forge(TOKEN)
        .open_or_update(&spec(BRANCH, "t", &long))
        .await
        .expect("create with a cut description");
    assert!(pr.created);
    fx.with(|f| {
        let body = &f.prs[0].body;
        assert_eq!(body.chars().count(), 4000);
        assert!(body.ends_with('…'));
    });
}

#[tokio::test]
async fn azure_devops_remote_forms_need_no_api_base() {
    for url in [
        "https://dev.azure.com/acme/My%20Project/_git/widget",
        "git@ssh.dev.azure.com:v3/acme/My%20Project/widget",
        "https://acme.visualstudio.com/Proj/_git/widget",
    ] {
        let f = forge_for(ForgeKind::AzureDevops, url, None, TOKEN).expect(url);
        assert_eq!(f.kind(), ForgeKind::AzureDevops);
    }
    let err = forge_for(
        ForgeKind::AzureDevops,
        "https://dev.azure.com/acme/widget",
        None,
        TOKEN,
    )
    .err()
    .expect("not an Azure repository URL");
    assert!(matches!(err, ForgeError::InvalidInput(_)), "{err}");
}
