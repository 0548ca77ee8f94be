//! The egress proxy: an HTTP/1.1 forward proxy that builder runs (tokio, in its own
//! process, outside the sandbox) for one sandboxed run. It listens on a Unix socket that is
//! bound into the sandbox, where [`crate::run_net_bridge`] connects it to a loopback port.
//!
//! It understands `CONNECT host:port` (a byte tunnel: https, or anything else) and
//! absolute-form plain-http requests (`GET http://host[:port]/path`), which it forwards as
//! origin-form with `Connection: close`, one request per client connection. Every target
//! goes through the allow-list and the DNS-rebinding guard (`crate::egress`); a refusal is
//! answered `403` with a plain-text reason and recorded. Malformed requests get `400`,
//! oversized heads `431`, slow ones `408`; nothing a client sends can panic it.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinSet;

use crate::egress::{EgressRefusal, Policy, RefusalLog, Target};

/// Longest request head (request line and headers) accepted.
pub(crate) const MAX_HEAD_BYTES: usize = 32 * 1024;
/// Time a client has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Per address tried; at most `MAX_ADDRS_TRIED` are tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_ADDRS_TRIED: usize = 3;
/// Client connections served at once per run; more are answered `503`.
const MAX_CONNECTIONS: usize = 256;

/// Hop-by-hop headers, dropped when forwarding (plus any the `Connection` header names).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
    "host",
];

#[derive(Debug, Clone)]
pub(crate) enum Resolver {
    System,
    /// Fixed answers, for tests.
    #[cfg(test)]
    Static(std::collections::HashMap<String, Vec<IpAddr>>),
}

impl Resolver {
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        match self {
            Self::System => {
                match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port)))
                    .await
                {
                    Err(_) => Err("name resolution timed out".into()),
                    Ok(Err(e)) => Err(format!("name resolution failed: {e}")),
                    Ok(Ok(addrs)) => Ok(addrs.map(|a| a.ip()).collect()),
                }
            }
            #[cfg(test)]
            Self::Static(m) => m
                .get(host)
                .cloned()
                .ok_or_else(|| "name resolution failed: unknown host".to_string()),
        }
    }
}

/// What one run's proxy needs; shared by its connection tasks.
#[derive(Debug)]
pub(crate) struct Proxy {
    pub policy: Policy,
    pub log: RefusalLog,
    pub resolver: Resolver,
}

/// One run's proxy: its private directory (holding the socket) and listener.
pub(crate) struct ProxyRun {
    dir: tempfile::TempDir,
    listener: UnixListener,
    proxy: Arc<Proxy>,
}

/// Name of the socket inside the run's directory.
pub(crate) const SOCKET_NAME: &str = "proxy.sock";

impl ProxyRun {
    /// Creates a private directory (0700) and listens on a socket in it.
    pub fn start(policy: Policy) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("builder-egress-")
            .tempdir()?;
        let listener = UnixListener::bind(dir.path().join(SOCKET_NAME))?;
        Ok(Self {
            dir,
            listener,
            proxy: Arc::new(Proxy {
                policy,
                log: RefusalLog::default(),
                resolver: Resolver::System,
            }),
        })
    }

    /// The directory to bind into the sandbox.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    #[cfg(test)]
    pub fn socket_path(&self) -> std::path::PathBuf {
        self.dir.path().join(SOCKET_NAME)
    }

    pub fn log(&self) -> RefusalLog {
        self.proxy.log.clone()
    }

    /// Serves until dropped. Dropping it closes the listener, removes the directory and
    /// aborts every connection still open.
    pub async fn serve(self) -> Infallible {
        let Self {
            dir,
            listener,
            proxy,
        } = self;
        let _dir = dir;
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                r = listener.accept() => match r {
                    Ok((stream, _)) => {
                        let proxy = proxy.clone();
                        if tasks.len() >= MAX_CONNECTIONS {
                            tasks.spawn(async move {
                                let mut s = stream;
                                respond(&mut s, 503, "Service Unavailable",
                                    "builder egress proxy: too many connections at once\n").await;
                            });
                        } else {
                            tasks.spawn(async move { proxy.handle(stream).await });
                        }
                    }
                    // Out of file descriptors and the like: back off instead of spinning.
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum HeadError {
    /// Closed before sending anything.
    Closed,
    Malformed,
    TooLarge,
}

/// Reads up to the end of the request head; returns the head (without the blank line) and
/// whatever followed it in the same reads.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> Result<(Vec<u8>, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = s.read(&mut chunk).await.map_err(|_| HeadError::Malformed)?;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed
            });
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf[from..], b"\r\n\r\n") {
            let end = from + i;
            let rest = buf.split_off(end + 4);
            buf.truncate(end);
            if buf.len() > MAX_HEAD_BYTES {
                return Err(HeadError::TooLarge);
            }
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, PartialEq)]
pub(crate) struct Request {
    method: String,
    version: String,
    host: String,
    port: u16,
    kind: Kind,
    headers: Vec<(String, String)>,
}

#[derive(Debug, PartialEq)]
enum Kind {
    Connect,
    /// Plain http, with the origin-form target (`/path?query`).
    Forward {
        path: String,
    },
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// `host[:port]` or `[v6][:port]`; `default_port` when there is no port.
fn parse_authority(a: &str, default_port: Option<u16>) -> Result<(String, u16), String> {
    let bad = || format!("invalid authority `{a}`");
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(bad)?;
        (
            format!("[{h}]"),
            match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            },
        )
    } else {
        match a.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
            Some(_) => return Err(bad()),
            None => (a.to_string(), None),
        }
    };
    let port = match (port, default_port) {
        (Some(p), _) => Some(p)
            .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u16>().ok())
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port in `{a}`"))?,
        (None, Some(d)) => d,
        (None, None) => return Err(format!("`{a}` has no port")),
    };
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host, port))
}

pub(crate) fn parse_request(head: &[u8]) -> Result<Request, String> {
    let head = std::str::from_utf8(head).map_err(|_| "request head is not UTF-8".to_string())?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    if !is_token(method) {
        return Err("malformed method".into());
    }
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(format!("unsupported protocol version `{version}`"));
    }
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| "malformed header line".to_string())?;
        if !is_token(name) {
            return Err("malformed header name".into());
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    let (host, port, kind) = if method == "CONNECT" {
        let (h, p) = parse_authority(target, None)?;
        (h, p, Kind::Connect)
    } else {
        let scheme_end = target.find("://");
        let scheme = scheme_end.map(|i| target[..i].to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http") => {}
            Some("https") => {
                return Err(
                    "absolute-form https is not supported: use CONNECT (set HTTPS_PROXY)".into(),
                );
            }
            Some(other) => return Err(format!("unsupported scheme `{other}`")),
            None => {
                return Err(
                    "this is a forward proxy: send absolute-form `http://host/path` or CONNECT"
                        .into(),
                );
            }
        }
        let rest = &target[scheme_end.unwrap_or(0) + 3..];
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..end];
        if authority.contains('@') {
            return Err("credentials in the URL are not supported".into());
        }
        let (h, p) = parse_authority(authority, Some(80))?;
        let mut path = rest[end..]
            .split('#')
            .next()
            .unwrap_or_default()
            .to_string();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err("invalid characters in the request target".into());
        }
        (h, p, Kind::Forward { path })
    };
    Ok(Request {
        method: method.to_string(),
        version: version.to_string(),
        host,
        port,
        kind,
        headers,
    })
}

impl Request {
    /// The head sent upstream for a forwarded request: origin-form target, hop-by-hop
    /// headers dropped, `Host` from the URL, `Connection: close`.
    fn upstream_head(&self, path: &str) -> Vec<u8> {
        let named_by_connection: Vec<String> = self
            .headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
            .collect();
        let mut out = format!("{} {path} {}\r\n", self.method, self.version);
        let host = if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        out.push_str(&format!("Host: {host}\r\n"));
        for (n, v) in &self.headers {
            let l = n.to_ascii_lowercase();
            if HOP_BY_HOP.contains(&l.as_str()) || named_by_connection.contains(&l) {
                continue;
            }
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        out.push_str("Connection: close\r\n\r\n");
        out.into_bytes()
    }
}

/// Writes a small `text/plain` answer and closes the sending side.
async fn respond<S: AsyncWrite + AsyncRead + Unpin>(
    s: &mut S,
    code: u16,
    phrase: &str,
    body: &str,
) {
    let msg = format!(
        "HTTP/1.1 {code} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(msg.as_bytes()).await.is_ok() && s.shutdown().await.is_ok() {
        // Read (and discard) what the client still sends, briefly: closing with unread
        // data would reset the connection and could lose the answer.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            let mut left = 256 * 1024usize;
            while left > 0 {
                match s.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        })
        .await;
    }
}

impl Proxy {
    pub(crate) async fn handle<S>(&self, mut client: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let (head, rest) = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client)).await {
            Err(_) => {
                return respond(
                    &mut client,
                    408,
                    "Request Timeout",
                    "request head too slow\n",
                )
                .await;
            }
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::TooLarge)) => {
                return respond(
                    &mut client,
                    431,
                    "Request Header Fields Too Large",
                    &format!("builder egress proxy: request head over {MAX_HEAD_BYTES} bytes\n"),
                )
                .await;
            }
            Ok(Err(HeadError::Malformed)) => {
                return bad_request(&mut client, "incomplete request head").await;
            }
            Ok(Ok(h)) => h,
        };
        let req = match parse_request(&head) {
            Ok(r) => r,
            Err(why) => return bad_request(&mut client, &why).await,
        };
        let Some(target) = Target::parse(&req.host) else {
            return bad_request(&mut client, &format!("invalid host `{}`", req.host)).await;
        };
        let refuse = |reason: String| EgressRefusal {
            host: target.to_string(),
            port: req.port,
            reason,
        };
        if let Err(reason) = self.policy.check_name(&target, req.port) {
            return self.refused(&mut client, refuse(reason)).await;
        }
        let resolved = match &target {
            Target::Ip(_) => Vec::new(),
            Target::Name(n) => match self.resolver.resolve(n, req.port).await {
                Ok(r) => r,
                Err(e) => return gateway_error(&mut client, 502, &target, req.port, &e).await,
            },
        };
        let addrs = match self.policy.filter_resolved(&target, req.port, &resolved) {
            Ok(a) => a,
            Err(reason) => return self.refused(&mut client, refuse(reason)).await,
        };
        let mut upstream = match connect_any(&addrs).await {
            Ok(u) => u,
            Err((code, e)) => {
                return gateway_error(&mut client, code, &target, req.port, &e).await;
            }
        };
        match &req.kind {
            Kind::Connect => {
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                    || upstream.write_all(&rest).await.is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            }
            Kind::Forward { path } => {
                if upstream.write_all(&req.upstream_head(path)).await.is_err()
                    || upstream.write_all(&rest).await.is_err()
                {
                    return gateway_error(
                        &mut client,
                        502,
                        &target,
                        req.port,
                        "the upstream closed the connection",
                    )
                    .await;
                }
                let (mut ur, mut uw) = upstream.into_split();
                let (mut cr, mut cw) = tokio::io::split(client);
                // The request body (if any) goes up while the answer comes down; the
                // exchange is over when the upstream closes (it was told `Connection: close`).
                let up = async {
                    let _ = tokio::io::copy(&mut cr, &mut uw).await;
                    let _ = uw.shutdown().await;
                    std::future::pending::<()>().await
                };
                let down = tokio::io::copy(&mut ur, &mut cw);
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
                let _ = cw.shutdown().await;
            }
        }
    }

    async fn refused<S: AsyncRead + AsyncWrite + Unpin>(&self, client: &mut S, r: EgressRefusal) {
        let body = format!(
            "builder egress proxy: refused connection to {}:{}: {}\n",
            r.host, r.port, r.reason
        );
        self.log.record(r);
        respond(client, 403, "Forbidden", &body).await;
    }
}

async fn bad_request<S: AsyncRead + AsyncWrite + Unpin>(client: &mut S, why: &str) {
    respond(
        client,
        400,
        "Bad Request",
        &format!("builder egress proxy: bad request: {why}\n"),
    )
    .await;
}

async fn gateway_error<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    code: u16,
    target: &Target,
    port: u16,
    why: &str,
) {
    let phrase = if code == 504 {
        "Gateway Timeout"
    } else {
        "Bad Gateway"
    };
    respond(
        client,
        code,
        phrase,
        &format!("builder egress proxy: cannot reach {target}:{port}: {why}\n"),
    )
    .await;
}

/// Connects to the first address that answers; `(status, reason)` when none does.
async fn connect_any(addrs: &[SocketAddr]) -> Result<TcpStream, (u16, String)> {
    let mut last = (502, "no address to connect to".to_string());
    for a in addrs.iter().take(MAX_ADDRS_TRIED) {
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = (502, format!("{a}: {e}")),
            Err(_) => last = (504, format!("{a}: connection timed out")),
        }
    }
    Err(last)
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
