//! Each adapter against a fake forge (testkit's `FakeForge`, on loopback) that sits next to a
//! real smart-HTTP git server (testkit `GitHttpServer`) hosting `acme/widget`: the fake checks
//! the auth header the forge documents, refuses to open a pull request whose head branch is
//! not in the bare repository (with that forge's documented error), answers in the forge's
//! JSON shapes and paginates its lists. The same fakes also run behind TLS (a CA generated
//! per test) to check the real client's https: trusted through extra roots, refused without
//! them.

use base64::Engine;
use builder_forge::{
    ExtraRoots, Forge, ForgeError, ForgeKind, PullRequestSpec, forge_for, forge_for_with_roots,
};
use builder_testkit::{
    FakeForge, FakeForgeKind, FakeForgeState, FakeLimit, FakePr, GitHttpServer, TestCa,
    azure_basic, git_command, make_bare_repo, read_branch_file,
};
use std::path::PathBuf;
use std::sync::Arc;

const TOKEN: &str = "forge-token-7f3a9c";
const WRONG: &str = "wrong-token-b41d";
const GIT_USER: &str = "git-user";
const GIT_PASS: &str = "git-pass-5e2";
const BRANCH: &str = "builder/feature-1";

fn fake_kind(kind: ForgeKind) -> FakeForgeKind {
    match kind {
        ForgeKind::Github => FakeForgeKind::Github,
        ForgeKind::Gitlab => FakeForgeKind::Gitlab,
        ForgeKind::Bitbucket => FakeForgeKind::Bitbucket,
        ForgeKind::Gitea => FakeForgeKind::Gitea,
        ForgeKind::AzureDevops => FakeForgeKind::AzureDevops,
    }
}

struct Fixture {
    kind: ForgeKind,
    /// Set when the fake forge and the git server speak https with this CA's certificate.
    ca: Option<Arc<TestCa>>,
    ca_file: Option<PathBuf>,
    // Declared before the directory they serve, so they stop first.
    fake: FakeForge,
    git: GitHttpServer,
    bare: PathBuf,
    api_base: String,
    _dir: tempfile::TempDir,
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
    let fake = match &ca {
        Some(ca) => FakeForge::start_tls(fake_kind(kind), &bare, TOKEN, ca),
        None => FakeForge::start(fake_kind(kind), &bare, TOKEN),
    }
    .expect("fake forge");
    let api_base = fake.api_base();
    Fixture {
        kind,
        ca,
        ca_file,
        fake,
        git,
        bare,
        api_base,
        _dir: dir,
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

    fn with<T>(&self, f: impl FnOnce(&mut FakeForgeState) -> T) -> T {
        self.fake.with(f)
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
    assert!(
        first.url.ends_with(&fake_kind(kind).web_path(1)),
        "{}",
        first.url
    );
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
    fx.with(|f| f.limit = FakeLimit::TooMany);
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
            f.prs.push(FakePr {
                number: n,
                head,
                base: "main".into(),
                title: format!("filler {n}"),
                body: String::new(),
                source,
            });
        }
        f.prs.push(FakePr {
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
    assert!(pr.url.ends_with(&fake_kind(kind).web_path(4)), "{}", pr.url);
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
    fx.with(|f| f.limit = FakeLimit::GithubExhausted);
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
    fx.with(|f| f.limit = FakeLimit::AzureSignInPage);
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
