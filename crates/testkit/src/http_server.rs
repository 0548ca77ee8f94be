//! A git smart-HTTP server: the real `git http-backend` run as CGI per request, behind HTTP
//! basic auth, on a loopback port, in a thread of its own so sync and async tests alike can
//! use it. It can speak https with a [`TestCa`]'s certificate, and can accept a second,
//! read-only user who is refused `git-receive-pack` (403) the way forges refuse a token
//! without write scope.

use crate::serve::{ServerThread, bind_loopback};
use crate::tls::TestCa;
use crate::{Result, TestkitError, io_err};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use base64::Engine;
use futures::StreamExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{ChildStdout, Command};

/// One request the server answered, for tests to assert on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub status: u16,
    /// The request's `Content-Encoding` (git gzips larger upload-pack requests).
    pub content_encoding: Option<String>,
}

struct ServerState {
    root: PathBuf,
    username: String,
    password: String,
    read_only: Option<(String, String)>,
    log: Arc<Mutex<Vec<RecordedRequest>>>,
}

/// Serves every bare repository under `root` at `http(s)://127.0.0.1:PORT/<name>`; stops on
/// drop.
pub struct GitHttpServer {
    log: Arc<Mutex<Vec<RecordedRequest>>>,
    server: ServerThread,
}

/// Options for [`GitHttpServer::builder`].
pub struct GitHttpServerBuilder<'a> {
    root: &'a Path,
    username: &'a str,
    password: &'a str,
    read_only: Option<(&'a str, &'a str)>,
    tls: Option<&'a TestCa>,
}

impl<'a> GitHttpServerBuilder<'a> {
    /// Also accept `username:password`, for fetching only: `git-receive-pack` answers 403.
    pub fn read_only_user(mut self, username: &'a str, password: &'a str) -> Self {
        self.read_only = Some((username, password));
        self
    }

    /// Speak https with `ca`'s server certificate (for `127.0.0.1` and `localhost`).
    pub fn tls(mut self, ca: &'a TestCa) -> Self {
        self.tls = Some(ca);
        self
    }

    pub fn start(self) -> Result<GitHttpServer> {
        GitHttpServer::start_with(self)
    }
}

impl GitHttpServer {
    /// Starts serving `root` over plain http; every request must carry basic auth
    /// `username:password`.
    pub fn start(root: &Path, username: &str, password: &str) -> Result<GitHttpServer> {
        GitHttpServer::builder(root, username, password).start()
    }

    /// [`GitHttpServer::start`] over https with `ca`'s server certificate.
    pub fn start_tls(
        root: &Path,
        username: &str,
        password: &str,
        ca: &TestCa,
    ) -> Result<GitHttpServer> {
        GitHttpServer::builder(root, username, password)
            .tls(ca)
            .start()
    }

    /// A server with more options than [`GitHttpServer::start`].
    pub fn builder<'a>(
        root: &'a Path,
        username: &'a str,
        password: &'a str,
    ) -> GitHttpServerBuilder<'a> {
        GitHttpServerBuilder {
            root,
            username,
            password,
            read_only: None,
            tls: None,
        }
    }

    fn start_with(opts: GitHttpServerBuilder<'_>) -> Result<GitHttpServer> {
        let (root, username, password) = (opts.root, opts.username, opts.password);
        let root = root
            .canonicalize()
            .map_err(io_err(format!("resolving {}", root.display())))?;
        let bound = bind_loopback()?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let state = Arc::new(ServerState {
            root,
            username: username.to_owned(),
            password: password.to_owned(),
            read_only: opts.read_only.map(|(u, p)| (u.to_owned(), p.to_owned())),
            log: log.clone(),
        });
        let app = Router::new().fallback(handle).with_state(state);
        let name = format!("git-http-{}", bound.addr.port());
        let server = bound.serve(name, app, opts.tls)?;
        Ok(GitHttpServer { log, server })
    }

    /// `http(s)://127.0.0.1:PORT/<repo_name>` — never with credentials in it.
    pub fn url(&self, repo_name: &str) -> String {
        format!("{}://{}/{repo_name}", self.server.scheme, self.server.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        match self.log.lock() {
            Ok(log) => log.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

fn record(state: &ServerState, parts: &Parts, status: u16) {
    let entry = RecordedRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or("").to_owned(),
        status,
        content_encoding: parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    match state.log.lock() {
        Ok(mut log) => log.push(entry),
        Err(poisoned) => poisoned.into_inner().push(entry),
    }
}

/// Who a request authenticates as: `(user, may_write)`.
fn authorized(state: &ServerState, parts: &Parts) -> Option<(String, bool)> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, pass) = decoded.split_once(':')?;
    if user == state.username && pass == state.password {
        return Some((user.to_owned(), true));
    }
    let (ro_user, ro_pass) = state.read_only.as_ref()?;
    (user == ro_user && pass == ro_pass).then(|| (user.to_owned(), false))
}

/// Whether the request is (the advertisement for) a push.
fn is_receive_pack(parts: &Parts) -> bool {
    parts.uri.path().ends_with("/git-receive-pack")
        || parts
            .uri
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "service=git-receive-pack"))
}

fn plain(status: StatusCode, text: &str) -> Response {
    let mut resp = Response::new(Body::from(text.to_owned()));
    *resp.status_mut() = status;
    resp
}

async fn handle(State(state): State<Arc<ServerState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let Some((user, may_write)) = authorized(&state, &parts) else {
        record(&state, &parts, 401);
        let mut resp = plain(StatusCode::UNAUTHORIZED, "authentication required\n");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"git\""),
        );
        return resp;
    };
    if !may_write && is_receive_pack(&parts) {
        record(&state, &parts, 403);
        return plain(StatusCode::FORBIDDEN, "this user may not push\n");
    }
    match run_backend(&state, &user, &parts, body).await {
        Ok(resp) => {
            record(&state, &parts, resp.status().as_u16());
            resp
        }
        Err(err) => {
            record(&state, &parts, 502);
            plain(StatusCode::BAD_GATEWAY, &format!("http-backend: {err}\n"))
        }
    }
}

/// Runs `git http-backend` for one request: the body goes to its stdin while its stdout is
/// parsed as a CGI response (headers, then a streamed body).
async fn run_backend(
    state: &ServerState,
    user: &str,
    parts: &Parts,
    body: Body,
) -> Result<Response> {
    let header_str = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_PROJECT_ROOT", &state.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("PATH_INFO", parts.uri.path())
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(v) = header_str("content-type") {
        cmd.env("CONTENT_TYPE", v);
    }
    // Without a length (chunked upload) http-backend reads stdin to EOF, which is what it gets.
    if let Some(v) = header_str("content-length") {
        cmd.env("CONTENT_LENGTH", v);
    }
    // http-backend inflates gzip request bodies itself when told about them.
    if let Some(v) = header_str("content-encoding") {
        cmd.env("HTTP_CONTENT_ENCODING", v);
    }
    if let Some(v) = header_str("git-protocol") {
        cmd.env("GIT_PROTOCOL", v);
    }
    let mut child = cmd.spawn().map_err(io_err("spawning git http-backend"))?;
    let (Some(mut stdin), Some(mut stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(TestkitError::InvalidInput(
            "http-backend started without pipes".into(),
        ));
    };
    // Fed concurrently with reading stdout, so neither side can block the other on a full pipe.
    tokio::spawn(async move {
        let mut data = body.into_data_stream();
        while let Some(Ok(chunk)) = data.next().await {
            if stdin.write_all(&chunk).await.is_err() {
                break;
            }
        }
    });
    // Reaps the backend; the task holds the child so it dies with the server runtime.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });

    let (head, rest) = read_cgi_head(&mut stdout).await?;
    let mut resp = Response::new(Body::from_stream(body_stream(rest, stdout)));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_GATEWAY);
            *resp.status_mut() = code;
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.trim().as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().append(n, v);
        }
    }
    Ok(resp)
}

/// Reads the CGI header block; returns it and whatever body bytes came with it.
async fn read_cgi_head(stdout: &mut ChildStdout) -> Result<(String, Vec<u8>)> {
    const MAX_HEAD: usize = 64 * 1024;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let end = find(&buf, b"\r\n\r\n")
            .map(|i| (i, 4))
            .or_else(|| find(&buf, b"\n\n").map(|i| (i, 2)));
        if let Some((i, sep)) = end {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + sep..].to_vec()));
        }
        if buf.len() > MAX_HEAD {
            return Err(TestkitError::InvalidInput("CGI header too large".into()));
        }
        let n = stdout
            .read(&mut chunk)
            .await
            .map_err(io_err("reading http-backend output"))?;
        if n == 0 {
            return Err(TestkitError::InvalidInput(
                "http-backend exited before sending headers".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn body_stream(
    first: Vec<u8>,
    stdout: ChildStdout,
) -> impl futures::Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let first = (!first.is_empty()).then(|| Bytes::from(first));
    futures::stream::unfold((first, Some(stdout)), |(first, stdout)| async move {
        if let Some(bytes) = first {
            return Some((Ok(bytes), (None, stdout)));
        }
        let mut stdout = stdout?;
        let mut buf = vec![0u8; 16 * 1024];
        match stdout.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (None, Some(stdout))))
            }
            Err(e) => Some((Err(e), (None, None))),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TestCa, git_command, make_bare_repo, read_branch_file};

    fn git_ok(args: &[&str]) -> String {
        let out = git_command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn with_userinfo(url: &str, user: &str, pass: &str) -> String {
        url.replacen("http://", &format!("http://{user}:{pass}@"), 1)
    }

    #[test]
    fn clone_and_push_over_smart_http_with_basic_auth() {
        let root = tempfile::tempdir().unwrap();
        let bare = make_bare_repo(root.path(), "demo", &[("a.txt", "one\n")]).unwrap();
        let server = GitHttpServer::start(root.path(), "alice", "s3cret").unwrap();
        let url = server.url("demo.git");
        assert!(!url.contains('@'), "{url}");

        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("clone");
        let dest_s = dest.to_string_lossy().into_owned();
        git_ok(&[
            "clone",
            "--quiet",
            &with_userinfo(&url, "alice", "s3cret"),
            &dest_s,
        ]);
        assert_eq!(
            std::fs::read_to_string(dest.join("a.txt")).unwrap(),
            "one\n"
        );

        std::fs::write(dest.join("b.txt"), "two\n").unwrap();
        git_ok(&["-C", &dest_s, "add", "b.txt"]);
        git_ok(&["-C", &dest_s, "commit", "--quiet", "-m", "b"]);
        git_ok(&[
            "-C",
            &dest_s,
            "push",
            "--quiet",
            "origin",
            "HEAD:refs/heads/feature",
        ]);
        assert_eq!(
            read_branch_file(&bare, "feature", "b.txt").as_deref(),
            Some("two\n")
        );

        let reqs = server.requests();
        assert!(
            reqs.iter().any(|r| r.method == "POST"
                && r.path == "/demo.git/git-receive-pack"
                && r.status == 200),
            "{reqs:?}"
        );
        assert!(
            reqs.iter()
                .any(|r| r.path == "/demo.git/info/refs" && r.query == "service=git-upload-pack"),
            "{reqs:?}"
        );
    }

    #[test]
    fn every_request_needs_the_right_password() {
        let root = tempfile::tempdir().unwrap();
        make_bare_repo(root.path(), "demo", &[("a.txt", "one\n")]).unwrap();
        let server = GitHttpServer::start(root.path(), "alice", "s3cret").unwrap();
        let url = server.url("demo.git");
        for bad in [url.clone(), with_userinfo(&url, "alice", "wrong")] {
            let out = git_command().args(["ls-remote", &bad]).output().unwrap();
            assert!(!out.status.success());
        }
        let reqs = server.requests();
        assert!(!reqs.is_empty());
        assert!(reqs.iter().all(|r| r.status == 401), "{reqs:?}");
        let ok = git_ok(&["ls-remote", &with_userinfo(&url, "alice", "s3cret"), "HEAD"]);
        assert!(ok.ends_with("\tHEAD\n"), "{ok}");
    }

    #[test]
    fn unknown_repository_is_404() {
        let root = tempfile::tempdir().unwrap();
        let server = GitHttpServer::start(root.path(), "u", "p").unwrap();
        let out = git_command()
            .args([
                "ls-remote",
                &with_userinfo(&server.url("missing.git"), "u", "p"),
            ])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(server.requests().iter().any(|r| r.status == 404));
    }

    #[test]
    fn gzip_request_bodies_are_understood() {
        let root = tempfile::tempdir().unwrap();
        let bare = make_bare_repo(root.path(), "many", &[("a.txt", "0\n")]).unwrap();
        let bare_s = bare.to_string_lossy().into_owned();
        // Many distinct branch tips make the fetch request larger than git's 1 KiB gzip
        // threshold.
        let seed = tempfile::tempdir().unwrap();
        let seed_s = seed.path().join("w").to_string_lossy().into_owned();
        git_ok(&["clone", "--quiet", &bare_s, &seed_s]);
        for i in 0..60 {
            git_ok(&[
                "-C",
                &seed_s,
                "commit",
                "--quiet",
                "--allow-empty",
                "-m",
                &format!("c{i}"),
            ]);
            git_ok(&["-C", &seed_s, "branch", &format!("b{i}")]);
            git_ok(&["-C", &seed_s, "reset", "--quiet", "--hard", "HEAD~1"]);
        }
        git_ok(&[
            "-C",
            &seed_s,
            "push",
            "--quiet",
            "origin",
            "refs/heads/*:refs/heads/*",
        ]);

        let server = GitHttpServer::start(root.path(), "u", "p").unwrap();
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("c").to_string_lossy().into_owned();
        git_ok(&[
            "clone",
            "--quiet",
            "--mirror",
            &with_userinfo(&server.url("many.git"), "u", "p"),
            &dest,
        ]);
        let reqs = server.requests();
        assert!(
            reqs.iter()
                .any(|r| r.content_encoding.as_deref() == Some("gzip") && r.status == 200),
            "{reqs:?}"
        );
        let branches = git_ok(&["--git-dir", &dest, "branch", "--list", "b*"]);
        assert_eq!(branches.lines().count(), 60);
    }

    #[test]
    fn serves_https_to_clients_that_trust_the_test_ca_only() {
        let root = tempfile::tempdir().unwrap();
        make_bare_repo(root.path(), "demo", &[("a.txt", "one\n")]).unwrap();
        let ca = TestCa::new().unwrap();
        let server = GitHttpServer::start_tls(root.path(), "alice", "s3cret", &ca).unwrap();
        let url = server.url("demo.git");
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let ca_file = ca.write_ca_file(root.path(), "ca.pem").unwrap();
        let authed = url.replacen("https://", "https://alice:s3cret@", 1);

        let out = git_command()
            .env("GIT_SSL_CAINFO", &ca_file)
            .args(["ls-remote", &authed, "HEAD"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A different CA is not trusted, and the server survives the refused handshake.
        let other = TestCa::new().unwrap();
        let other_file = other.write_ca_file(root.path(), "other.pem").unwrap();
        let out = git_command()
            .env("GIT_SSL_CAINFO", &other_file)
            .args(["ls-remote", &authed, "HEAD"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(stderr.contains("certificate"), "{stderr}");
        let again = git_command()
            .env("GIT_SSL_CAINFO", &ca_file)
            .args(["ls-remote", &authed, "HEAD"])
            .output()
            .unwrap();
        assert!(again.status.success());
    }

    #[test]
    fn read_only_user_may_fetch_but_not_push() {
        let root = tempfile::tempdir().unwrap();
        let bare = make_bare_repo(root.path(), "demo", &[("a.txt", "one\n")]).unwrap();
        let server = GitHttpServer::builder(root.path(), "alice", "s3cret")
            .read_only_user("reader", "r3ad")
            .start()
            .unwrap();
        let url = server.url("demo.git");
        let work = tempfile::tempdir().unwrap();
        let dest = work.path().join("clone");
        let dest_s = dest.to_string_lossy().into_owned();
        git_ok(&[
            "clone",
            "--quiet",
            &with_userinfo(&url, "reader", "r3ad"),
            &dest_s,
        ]);
        git_ok(&[
            "-C",
            &dest_s,
            "commit",
            "--quiet",
            "--allow-empty",
            "-m",
            "x",
        ]);
        let out = git_command()
            .args(["-C", &dest_s, "push", "origin", "HEAD:refs/heads/nope"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(read_branch_file(&bare, "nope", "a.txt").is_none());
        assert!(server.requests().iter().any(|r| r.status == 403));
    }

    #[test]
    fn stops_on_drop() {
        let root = tempfile::tempdir().unwrap();
        make_bare_repo(root.path(), "demo", &[("a.txt", "one\n")]).unwrap();
        let server = GitHttpServer::start(root.path(), "drop-user", "drop-pass").unwrap();
        let url = with_userinfo(&server.url("demo.git"), "drop-user", "drop-pass");
        let ls = |url: &str| {
            git_command()
                .args(["ls-remote", url, "HEAD"])
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(ls(&url));
        drop(server);
        // Another test may reuse the port at once, but never with this repo and these
        // credentials, so only a server that is still running could answer.
        assert!(!ls(&url));
    }
}
