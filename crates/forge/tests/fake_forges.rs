//! Each adapter against a fake forge (axum on loopback) that sits next to a real smart-HTTP
//! git server (testkit `GitHttpServer`) hosting `acme/widget`: the fake checks the auth header
//! the forge documents, refuses to open a pull request whose head branch is not in the bare
//! repository (with that forge's documented error), answers in the forge's JSON shapes and
//! paginates its lists.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use builder_forge::{Forge, ForgeError, ForgeKind, PullRequestSpec, forge_for};
use builder_testkit::{GitHttpServer, git_command, make_bare_repo, read_branch_file};
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
        }
    }

    fn auth_ok(&self, headers: &HeaderMap) -> Result<(), String> {
        let (name, expected) = match self.kind {
            ForgeKind::Github | ForgeKind::Bitbucket => {
                ("authorization", format!("Bearer {TOKEN}"))
            }
            ForgeKind::Gitlab => ("private-token", TOKEN.to_owned()),
            ForgeKind::Gitea => ("authorization", format!("token {TOKEN}")),
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
            },
        )
    }

    fn list(&mut self, q: &HashMap<String, String>) -> Response {
        self.lists += 1;
        let get = |k: &str| q.get(k).cloned().unwrap_or_default();
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
            ForgeKind::Github | ForgeKind::Gitea => {
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
        };
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
            ForgeKind::Github | ForgeKind::Gitea => Method::PATCH,
            ForgeKind::Gitlab | ForgeKind::Bitbucket => Method::PUT,
        };
        if *method != expected {
            return reply(405, json!({"message": "Method Not Allowed"}));
        }
        let text_key = match self.kind {
            ForgeKind::Github | ForgeKind::Gitea => "body",
            ForgeKind::Gitlab | ForgeKind::Bitbucket => "description",
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
        Limit::None => {}
    }
    if let Err(presented) = f.auth_ok(&headers) {
        return f.unauthorized(&presented);
    }
    let q: HashMap<String, String> = Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
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
    _dir: tempfile::TempDir,
    git: GitHttpServer,
    bare: PathBuf,
    fake: Shared,
    api_base: String,
}

async fn fixture(kind: ForgeKind) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let bare =
        make_bare_repo(dir.path(), "acme/widget", &[("README.md", "widget\n")]).expect("bare repo");
    let git = GitHttpServer::start(dir.path(), GIT_USER, GIT_PASS).expect("git server");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
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
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let api_base = match kind {
        ForgeKind::Github => base,
        ForgeKind::Gitlab => format!("{base}/api/v4"),
        ForgeKind::Bitbucket => format!("{base}/2.0"),
        ForgeKind::Gitea => format!("{base}/api/v1"),
    };
    Fixture {
        kind,
        _dir: dir,
        git,
        bare,
        fake,
        api_base,
    }
}

impl Fixture {
    fn forge(&self, token: &str) -> Box<dyn Forge> {
        let f = forge_for(
            self.kind,
            &self.git.url("acme/widget"),
            Some(&self.api_base),
            token,
        )
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
            let out = git_command().args(args).output().expect("git");
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
        assert!(!text.contains(TOKEN), "token leaked: {text}");
        assert!(!text.contains(WRONG), "token leaked: {text}");
    }
}

fn web_path(kind: ForgeKind, n: u64) -> String {
    match kind {
        ForgeKind::Github => format!("/acme/widget/pull/{n}"),
        ForgeKind::Gitlab => format!("/acme/widget/-/merge_requests/{n}"),
        ForgeKind::Bitbucket => format!("https://bitbucket.org/acme/widget/pull-requests/{n}"),
        ForgeKind::Gitea => format!("/acme/widget/pulls/{n}"),
    }
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
