//! Unit tests of the egress proxy: request parsing, refusals, forwarding and tunnelling, cleanup.

use super::*;
use crate::egress::parse_allow_list;
use std::collections::HashMap;
use tokio::net::TcpListener;

fn proxy(allow: &str, names: &[(&str, &str)]) -> Arc<Proxy> {
    let mut m: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for (n, ip) in names {
        m.entry(n.to_string())
            .or_default()
            .push(ip.parse().unwrap());
    }
    Arc::new(Proxy {
        policy: Policy::new(parse_allow_list(allow).unwrap()),
        log: RefusalLog::default(),
        resolver: Resolver::Static(m),
    })
}

/// Sends `req` through the proxy over an in-memory stream; returns the whole answer.
async fn exchange(p: &Arc<Proxy>, req: &[u8]) -> String {
    exchange_then(p, req, false).await
}

/// `eof`: the client closes its sending side after the request.
async fn exchange_then(p: &Arc<Proxy>, req: &[u8], eof: bool) -> String {
    let (mut c, s) = tokio::io::duplex(1 << 20);
    let p2 = p.clone();
    let task = tokio::spawn(async move { p2.handle(s).await });
    c.write_all(req).await.unwrap();
    if eof {
        c.shutdown().await.unwrap();
    }
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut out))
        .await
        .expect("proxy answered")
        .unwrap();
    drop(c);
    task.await.expect("the handler did not panic");
    String::from_utf8_lossy(&out).into_owned()
}

/// A one-shot HTTP server: records the request head, answers `hello`.
async fn origin() -> (u16, tokio::task::JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let h = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let (head, _) = read_head(&mut s).await.unwrap();
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            .await
            .unwrap();
        String::from_utf8(head).unwrap()
    });
    (port, h)
}

#[test]
fn request_parsing() {
    let r = parse_request(b"CONNECT crates.io:443 HTTP/1.1\r\nHost: crates.io:443").unwrap();
    assert_eq!(
        (r.host.as_str(), r.port, &r.kind),
        ("crates.io", 443, &Kind::Connect)
    );
    let r = parse_request(b"GET http://Example.com/a?b=1 HTTP/1.1\r\nAccept: */*").unwrap();
    assert_eq!(
        (r.host.as_str(), r.port, &r.kind),
        (
            "Example.com",
            80,
            &Kind::Forward {
                path: "/a?b=1".into()
            }
        )
    );
    let r = parse_request(b"GET http://[::1]:8080?x HTTP/1.0").unwrap();
    assert_eq!(
        (r.host.as_str(), r.port, &r.kind),
        ("[::1]", 8080, &Kind::Forward { path: "/?x".into() })
    );
    for bad in [
        &b""[..],
        b"GET",
        b"GET / HTTP/1.1",
        b"GET https://crates.io/ HTTP/1.1",
        b"GET ftp://x/ HTTP/1.1",
        b"GET http://user:pw@x/ HTTP/1.1",
        b"CONNECT crates.io HTTP/1.1",
        b"CONNECT crates.io:0 HTTP/1.1",
        b"CONNECT crates.io:99999 HTTP/1.1",
        b"CONNECT crates.io:443 HTTP/2.0",
        b"CONNECT ::1:443 HTTP/1.1",
        b"GET  http://x/ HTTP/1.1",
        b"G(T http://x/ HTTP/1.1",
        b"GET http://x/ HTTP/1.1\r\nno colon",
        b"GET http://x/ HTTP/1.1\r\n bad name: v",
        b"GET http://x:/ HTTP/1.1",
        b"\xff\xfe",
    ] {
        assert!(
            parse_request(bad).is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

#[test]
fn forwarded_head_is_origin_form_without_hop_by_hop_headers() {
    let r = parse_request(
        b"POST http://h.example:8080/up HTTP/1.1\r\nHost: other\r\nProxy-Connection: keep-alive\r\n\
          Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic x\r\n\
          Content-Length: 3",
    )
    .unwrap();
    let Kind::Forward { path } = &r.kind else {
        panic!()
    };
    let head = String::from_utf8(r.upstream_head(path)).unwrap();
    assert_eq!(
        head,
        "POST /up HTTP/1.1\r\nHost: h.example:8080\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    );
}

#[tokio::test]
async fn refusals_are_answered_403_and_recorded() {
    let p = proxy(
        "allowed.example:8080 *.example.org",
        &[
            ("allowed.example", "127.0.0.1"),
            ("www.example.org", "169.254.169.254"),
        ],
    );
    let out = exchange(&p, b"CONNECT evil.example:443 HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{out}");
    assert!(
        out.contains("evil.example:443") && out.contains("not on the egress allow-list"),
        "{out}"
    );
    let out = exchange(&p, b"GET http://EVIL.example./x HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // Allowed name, but it resolves to loopback / metadata: the rebinding guard.
    let out = exchange(&p, b"CONNECT allowed.example:8080 HTTP/1.1\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 403") && out.contains("127.0.0.1"),
        "{out}"
    );
    let out = exchange(&p, b"GET http://www.example.org/ HTTP/1.1\r\n\r\n").await;
    assert!(out.contains("169.254.169.254"), "{out}");
    // An address literal not on the list.
    let out = exchange(&p, b"CONNECT 127.0.0.1:8080 HTTP/1.1\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    let (log, more) = p.log.take();
    let got: Vec<(String, u16)> = log.iter().map(|r| (r.host.clone(), r.port)).collect();
    assert_eq!(
        got,
        [
            ("evil.example".to_string(), 443),
            ("evil.example".to_string(), 80),
            ("allowed.example".to_string(), 8080),
            ("www.example.org".to_string(), 80),
            ("127.0.0.1".to_string(), 8080),
        ]
    );
    assert!(log[2].reason.contains("DNS-rebinding"), "{:?}", log[2]);
    assert_eq!(more, 0);
}

#[tokio::test]
async fn malformed_requests_get_400_or_431_and_are_not_recorded() {
    let p = proxy("allowed.example", &[]);
    for req in [
        &b"garbage\r\n\r\n"[..],
        b"GET /relative HTTP/1.1\r\n\r\n",
        b"CONNECT nohostport HTTP/1.1\r\n\r\n",
        b"GET http://bad_host!/ HTTP/1.1\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\nbroken header\r\n\r\n",
    ] {
        let out = exchange(&p, req).await;
        assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    }
    let mut huge = b"GET http://allowed.example/ HTTP/1.1\r\n".to_vec();
    while huge.len() <= MAX_HEAD_BYTES + 10 {
        huge.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    let out = exchange(&p, &huge).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    // Half a head, then EOF.
    let out = exchange_then(&p, b"GET http://allowed.exa", true).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(p.log.take(), (vec![], 0));
}

#[tokio::test]
async fn forwards_plain_http_and_tunnels_connect_to_a_listed_address() {
    let (port, seen) = origin().await;
    let p = proxy(&format!("127.0.0.1:{port}"), &[]);
    let out = exchange(
        &p,
        format!("GET http://127.0.0.1:{port}/path?q=1 HTTP/1.1\r\nHost: x\r\nProxy-Connection: keep-alive\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 OK") && out.ends_with("hello"),
        "{out}"
    );
    let head = seen.await.unwrap();
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
    assert!(head.contains(&format!("Host: 127.0.0.1:{port}")), "{head}");
    assert!(
        head.contains("Connection: close") && !head.contains("Proxy-Connection"),
        "{head}"
    );

    let (port, seen) = origin().await;
    let p = proxy(&format!("127.0.0.1:{port}"), &[]);
    let out = exchange(
        &p,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\nGET /tunnelled HTTP/1.1\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 200 OK"),
        "{out}"
    );
    assert!(seen.await.unwrap().starts_with("GET /tunnelled"));
    assert_eq!(p.log.take(), (vec![], 0));
}

#[tokio::test]
async fn unreachable_upstream_is_502_not_a_refusal() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    let p = proxy(&format!("127.0.0.1:{port} gone.example"), &[]);
    let out = exchange(
        &p,
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 502"), "{out}");
    let out = exchange(&p, b"CONNECT gone.example:443 HTTP/1.1\r\n\r\n").await;
    assert!(
        out.starts_with("HTTP/1.1 502") && out.contains("resolution"),
        "{out}"
    );
    assert_eq!(p.log.take(), (vec![], 0));
}

#[tokio::test]
async fn serve_stops_and_cleans_up_when_dropped() {
    let run = ProxyRun::start(Policy::new(vec![])).unwrap();
    let sock = run.socket_path();
    let dir = run.dir().to_path_buf();
    let serve = tokio::spawn(run.serve());
    let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
    c.write_all(b"CONNECT a.example:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    c.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    serve.abort();
    let _ = serve.await;
    assert!(!dir.exists(), "the run's directory is removed");
    assert!(tokio::net::UnixStream::connect(&sock).await.is_err());
}
