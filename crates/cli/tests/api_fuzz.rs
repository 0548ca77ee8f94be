//! API fuzzing with a fixed seed, against the real `builder serve` binary: every method of
//! both services over Connect JSON, Connect streaming envelopes and gRPC-Web, fed malformed
//! JSON, wrong types, extreme numbers, huge bodies, deep nesting, invalid UTF-8, wrong
//! content types and envelope garbage. Bad input must get a client error — never a crash,
//! never `internal`/`unknown`/`unavailable`/`data_loss` (which tell clients the server broke
//! or to retry forever) — and store nothing: at the end the server holds exactly what the
//! requests it accepted created.
//!
//! The seed is fixed so that a failure reproduces; `API_FUZZ_SEED` and `API_FUZZ_CASES`
//! run other seeds or more cases by hand.

mod common;

use builder_testkit::make_bare_repo;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const REPO: &str = "builder.repository.v1.RepositoryService";
const FEATURE: &str = "builder.feature.v1.FeatureService";

/// Codes that say the server, not the request, is at fault.
const SERVER_FAULTS: [&str; 4] = ["internal", "unknown", "unavailable", "data_loss"];
/// The same as gRPC status numbers: UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS.
const GRPC_SERVER_FAULTS: [u32; 4] = [2, 13, 14, 15];

struct Method {
    path: String,
    streaming: bool,
    seed: Value,
}

fn methods(repo_id: &str, feature_id: &str, url: &str) -> Vec<Method> {
    let m = |service: &str, name: &str, streaming: bool, seed: Value| Method {
        path: format!("{service}/{name}"),
        streaming,
        seed,
    };
    let absent = "0190a0a0-0000-7000-8000-000000000000";
    vec![
        m(
            REPO,
            "Register",
            false,
            json!({"name": "fuzzed", "url": url, "defaultBranch": "main",
                   "properties": {"k": "v"}, "provider": "GENERIC",
                   "credential": {"type": "TOKEN", "token": "fuzz-token-value"}}),
        ),
        m(REPO, "Get", false, json!({"id": repo_id})),
        m(REPO, "GetByName", false, json!({"name": "base"})),
        m(
            REPO,
            "List",
            true,
            json!({"query": "ba", "states": ["ACTIVE"], "pagination": {"limit": 10, "offset": 0}}),
        ),
        m(
            REPO,
            "Update",
            false,
            json!({"id": repo_id, "name": "base", "defaultBranch": "main", "properties": {"a": "b"}}),
        ),
        m(
            REPO,
            "UpdateCredentials",
            false,
            json!({"id": repo_id, "credential": {"type": "BASIC", "username": "u", "password": "p"}}),
        ),
        m(REPO, "ValidateAccess", false, json!({"id": repo_id})),
        // A repository that does not exist: fuzzing Delete must not delete the one in use.
        m(REPO, "Delete", false, json!({"id": absent})),
        m(
            FEATURE,
            "Create",
            false,
            json!({"spec": {"title": "Add a greeting", "description": "Add greet(name).",
                            "repositoryId": repo_id, "targetBranch": "main",
                            "featureBranch": "feature/fuzz", "acceptanceCriteria": ["greets"],
                            "pathHints": ["calc.py"],
                            "constraints": {"maxIterations": 3, "timeoutMinutes": 30},
                            "properties": {"k": "v"}},
                   "correlationId": "c-1", "idempotencyKey": "k-1"}),
        ),
        m(FEATURE, "Get", false, json!({"id": feature_id})),
        m(
            FEATURE,
            "GetByCorrelation",
            false,
            json!({"correlationId": "c-0"}),
        ),
        m(
            FEATURE,
            "Search",
            true,
            json!({"repositoryId": repo_id, "states": ["PENDING"], "query": "greet",
                   "createdAfter": "2020-01-01T00:00:00Z", "createdBefore": "2099-01-01T00:00:00Z",
                   "pagination": {"limit": 5, "offset": 0}}),
        ),
        m(
            FEATURE,
            "Cancel",
            false,
            json!({"id": absent, "reason": "fuzz"}),
        ),
        m(
            FEATURE,
            "Retry",
            false,
            json!({"id": absent, "fromStep": "plan"}),
        ),
        m(
            FEATURE,
            "ListEvents",
            true,
            json!({"featureExecutionId": feature_id, "afterSequence": "1", "eventTypes": ["feature.requested"]}),
        ),
        m(
            FEATURE,
            "GetArtifacts",
            false,
            json!({"featureExecutionId": feature_id}),
        ),
    ]
}

// ---------------------------------------------------------------- what bad input looks like

/// A value of a type the field does not have, or a value at the edge of its type.
fn odd_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..16) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!([]),
        3 => json!({}),
        4 => json!(-1),
        5 => json!(i64::MAX),
        6 => json!(u64::MAX),
        7 => json!(1e308),
        8 => json!(-0.5),
        9 => json!("18446744073709551616"),
        10 => json!("NaN"),
        11 => json!("\u{0000}\u{FEFF}\u{202E}"),
        12 => json!("x".repeat(rng.random_range(256..70_000))),
        13 => json!(["a", 1, null, {"b": []}]),
        14 => json!("../../../../etc/passwd"),
        _ => json!("not-a-uuid-\u{1F600}"),
    }
}

/// Replaces, removes or adds one field somewhere in `v`.
fn mutate(v: &mut Value, rng: &mut StdRng) {
    match v {
        Value::Object(map) if !map.is_empty() && rng.random_bool(0.8) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            let key = &keys[rng.random_range(0..keys.len())];
            match rng.random_range(0..6) {
                0 => {
                    map.remove(key);
                }
                1 | 2 => {
                    if let Some(inner) = map.get_mut(key) {
                        mutate(inner, rng);
                    }
                }
                _ => {
                    map.insert(key.clone(), odd_value(rng));
                }
            }
        }
        Value::Object(map) => {
            map.insert(format!("unknown{}", rng.random_range(0..9)), odd_value(rng));
        }
        Value::Array(items) if !items.is_empty() => {
            let i = rng.random_range(0..items.len());
            mutate(&mut items[i], rng);
        }
        other => *other = odd_value(rng),
    }
}

fn deep_nesting(depth: usize) -> Vec<u8> {
    let mut s = String::from("{\"id\":");
    s.push_str(&"[".repeat(depth));
    s.push_str(&"]".repeat(depth));
    s.push('}');
    s.into_bytes()
}

/// A body that is not a well-formed request at all.
fn garbage_body(seed: &Value, rng: &mut StdRng) -> Vec<u8> {
    let text = seed.to_string().into_bytes();
    match rng.random_range(0..9) {
        // Cut anywhere.
        0 => text[..rng.random_range(0..text.len())].to_vec(),
        // Random bytes flipped, invalid UTF-8 likely.
        1 => {
            let mut t = text;
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..t.len());
                t[i] = rng.random();
            }
            t
        }
        // Invalid UTF-8 inside a string, and a lone surrogate escape.
        2 => {
            let mut t = b"{\"id\":\"".to_vec();
            t.extend_from_slice(&[0xff, 0xfe, 0xc3, 0x28]);
            t.extend_from_slice(b"\",\"name\":\"\\ud800\"}");
            t
        }
        3 => deep_nesting(rng.random_range(200..20_000)),
        4 => Vec::new(),
        5 => b"null".to_vec(),
        6 => b"[1,2,3]".to_vec(),
        // A huge body: several MiB of one string.
        7 => format!(
            "{{\"name\":\"{}\"}}",
            "a".repeat(rng.random_range(1..9) << 20)
        )
        .into_bytes(),
        _ => {
            let n = rng.random_range(1..2048);
            (0..n).map(|_| rng.random()).collect()
        }
    }
}

/// Connect's streaming envelope: flags, big-endian length, payload.
fn envelope(flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flags];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An envelope that lies: wrong length, compressed with no encoding, end-of-stream first,
/// several messages for a unary request, or a header cut short.
fn bad_envelope(payload: &[u8], rng: &mut StdRng) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => {
            let mut e = envelope(0, payload);
            let lie = (payload.len() as u32).wrapping_add(rng.random_range(1..1_000_000));
            e[1..5].copy_from_slice(&lie.to_be_bytes());
            e
        }
        1 => envelope(1, payload),
        2 => envelope(2, payload),
        3 => [envelope(0, payload), envelope(0, payload)].concat(),
        4 => vec![0, 0, 0],
        _ => {
            let mut e = envelope(rng.random(), payload);
            e[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
            e
        }
    }
}

// ---------------------------------------------------------------- sending and judging

#[derive(Clone, Copy, Debug)]
enum Protocol {
    ConnectUnary,
    ConnectStream,
    GrpcWeb,
}

struct Case {
    method: usize,
    protocol: Protocol,
    content_type: String,
    body: Vec<u8>,
    what: String,
}

/// The cases of one run, all from `seed`.
fn cases(methods: &[Method], seed: u64, n: usize) -> Vec<Case> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let method = i % methods.len();
        let m = &methods[method];
        let native = if m.streaming {
            Protocol::ConnectStream
        } else {
            Protocol::ConnectUnary
        };
        let (protocol, content_type, body, what) = match rng.random_range(0..10) {
            // Well-formed JSON with one or more fields wrong.
            0..=3 => {
                let mut v = m.seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    mutate(&mut v, &mut rng);
                }
                (native, None, v.to_string().into_bytes(), "mutated JSON")
            }
            4 | 5 => (
                native,
                None,
                garbage_body(&m.seed, &mut rng),
                "malformed body",
            ),
            6 => {
                let ct = [
                    "text/plain",
                    "application/xml",
                    "",
                    "application/json; charset=latin1",
                    "application/proto",
                    "application/connect+proto",
                    "multipart/form-data; boundary=x",
                    "application/grpc",
                ][rng.random_range(0..8)];
                let body = if rng.random_bool(0.5) {
                    m.seed.to_string().into_bytes()
                } else {
                    garbage_body(&m.seed, &mut rng)
                };
                (
                    Protocol::ConnectUnary,
                    Some(ct.to_owned()),
                    body,
                    "wrong content type",
                )
            }
            7 => {
                let payload = m.seed.to_string().into_bytes();
                (
                    Protocol::ConnectStream,
                    Some("application/connect+json".to_owned()),
                    bad_envelope(&payload, &mut rng),
                    "envelope garbage",
                )
            }
            8 => {
                let payload: Vec<u8> = (0..rng.random_range(0..512))
                    .map(|_| rng.random())
                    .collect();
                let body = if rng.random_bool(0.5) {
                    envelope(0, &payload)
                } else {
                    bad_envelope(&payload, &mut rng)
                };
                (
                    Protocol::GrpcWeb,
                    Some("application/grpc-web+proto".to_owned()),
                    body,
                    "gRPC-Web garbage",
                )
            }
            _ => {
                // Valid JSON in a stream envelope, mutated.
                let mut v = m.seed.clone();
                mutate(&mut v, &mut rng);
                let payload = v.to_string().into_bytes();
                (
                    Protocol::ConnectStream,
                    Some("application/connect+json".to_owned()),
                    envelope(0, &payload),
                    "enveloped mutated JSON",
                )
            }
        };
        let content_type = content_type.unwrap_or_else(|| match protocol {
            Protocol::ConnectStream => "application/connect+json".into(),
            _ => "application/json".into(),
        });
        // A unary method called with a streaming content type, or the reverse, is bad input
        // too; keep what was drawn.
        out.push(Case {
            method,
            protocol,
            content_type,
            body,
            what: what.to_owned(),
        });
    }
    out
}

/// What a response says about who is at fault: `Err` when the server claims a fault of its
/// own (or crashed).
fn judge(
    protocol: Protocol,
    status: u16,
    grpc_status_header: Option<u32>,
    body: &[u8],
) -> Result<Option<String>, String> {
    // Connect answers `unimplemented` with 501; any other 5xx without a client-side code
    // is the server's fault.
    let connect_code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["code"].as_str().map(str::to_owned));
    if status >= 500 && connect_code.as_deref() != Some("unimplemented") {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    if let Some(code) = grpc_status_header
        && GRPC_SERVER_FAULTS.contains(&code)
    {
        return Err(format!("grpc-status {code}"));
    }
    // A stream's verdict is in its last frame; anything else carries Connect's error JSON.
    let code = match protocol {
        Protocol::ConnectStream | Protocol::GrpcWeb if status == 200 => {
            end_of_stream_code(protocol, body)
        }
        _ => connect_code,
    };
    match code {
        Some(c) if SERVER_FAULTS.contains(&c.as_str()) && !compressed_without_encoding(body) => {
            Err(format!(
                "{c}: {}",
                String::from_utf8_lossy(&body[..body.len().min(400)])
            ))
        }
        Some(c) if c.starts_with("grpc:") => {
            let n: u32 = c[5..].parse().unwrap_or(0);
            if GRPC_SERVER_FAULTS.contains(&n) && !compressed_without_encoding(body) {
                Err(format!(
                    "grpc-status {n}: {}",
                    String::from_utf8_lossy(&body[..body.len().min(400)])
                ))
            } else {
                Ok(Some(c))
            }
        }
        other => Ok(other),
    }
}

/// A message flagged compressed on a stream that declared no encoding. gRPC's reference
/// implementations answer this protocol violation with INTERNAL (grpc-go: "compressed flag
/// set with identity or empty encoding"; connect-go likewise), and clients rely on that
/// mapping, so it is the one INTERNAL that bad input may get.
fn compressed_without_encoding(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("compressed message without grpc-encoding")
        || text.contains("compressed message without connect-content-encoding")
}

/// The error code in a stream's last frame: Connect's end-of-stream JSON, or gRPC-Web's
/// trailer frame (`grpc-status: N`, reported as `grpc:N`).
fn end_of_stream_code(protocol: Protocol, mut body: &[u8]) -> Option<String> {
    let mut last = None;
    while body.len() >= 5 {
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let Some(payload) = body.get(5..5 + len) else {
            break;
        };
        match protocol {
            Protocol::ConnectStream if flags & 2 != 0 => {
                last = serde_json::from_slice::<Value>(payload)
                    .ok()
                    .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            }
            Protocol::GrpcWeb if flags & 0x80 != 0 => {
                let text = String::from_utf8_lossy(payload).to_ascii_lowercase();
                last = text.lines().find_map(|l| {
                    l.strip_prefix("grpc-status:")
                        .map(|n| format!("grpc:{}", n.trim()))
                });
            }
            _ => {}
        }
        body = &body[5 + len..];
    }
    last
}

/// Bodies above this go over a raw connection (see [`send_raw`]).
const RAW_ABOVE: usize = 1 << 20;

async fn send(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    case: &Case,
) -> Result<(u16, Option<u32>, Vec<u8>), String> {
    if case.body.len() > RAW_ABOVE {
        return send_raw(base, path, case).await;
    }
    let mut req = client
        .post(format!("{base}/{path}"))
        .body(case.body.clone());
    if !case.content_type.is_empty() {
        req = req.header("content-type", case.content_type.as_str());
    }
    if matches!(case.protocol, Protocol::GrpcWeb) {
        req = req.header("x-grpc-web", "1");
    }
    let resp = req.send().await.map_err(|e| format!("no answer: {e}"))?;
    let status = resp.status().as_u16();
    let grpc = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| format!("body cut off: {e}"))?;
    Ok((status, grpc, body.to_vec()))
}

/// A server may answer an oversized body before reading all of it and close the connection;
/// an HTTP client library then reports the failed write, not the answer. Writing from one
/// task and reading from another gets the answer the server actually gave.
async fn send_raw(
    base: &str,
    path: &str,
    case: &Case,
) -> Result<(u16, Option<u32>, Vec<u8>), String> {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut head = format!(
        "POST /{path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: {}\r\nconnection: close\r\n",
        case.body.len()
    );
    if !case.content_type.is_empty() {
        head.push_str(&format!("content-type: {}\r\n", case.content_type));
    }
    head.push_str("\r\n");
    let body = case.body.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, String> {
        use std::io::{Read, Write};
        let stream = std::net::TcpStream::connect(&addr).map_err(|e| format!("connect: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let mut wr = stream.try_clone().map_err(|e| e.to_string())?;
        let writer = std::thread::spawn(move || {
            // A refused body ends in a reset or broken pipe here: expected.
            let _ = wr.write_all(head.as_bytes());
            let _ = wr.write_all(&body);
        });
        let mut answer = Vec::new();
        let mut rd = stream;
        let read = rd.read_to_end(&mut answer);
        let _ = rd.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
        match read {
            // A reset after the answer arrived still leaves the answer.
            Err(e) if answer.is_empty() => Err(format!("no answer: {e}")),
            _ => Ok(answer),
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no HTTP head in {} bytes", answer.len()))?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let body = &answer[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        return Ok((status, None, dechunk(body)));
    }
    Ok((status, None, body.to_vec()))
}

/// The payload of a chunked HTTP/1.1 body (as much as arrived).
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&body[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok());
        let Some(size) = size.filter(|n| *n > 0) else {
            break;
        };
        let start = eol + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = body.get(end + 2..).unwrap_or(&[]);
    }
    out
}

/// The messages of a Connect server stream, or its error.
async fn stream(client: &reqwest::Client, base: &str, path: &str, request: Value) -> Vec<Value> {
    let body = envelope(0, request.to_string().as_bytes());
    let resp = client
        .post(format!("{base}/{path}"))
        .header("content-type", "application/connect+json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200, "{path}");
    let bytes = resp.bytes().await.unwrap();
    let mut rest = &bytes[..];
    let mut out = Vec::new();
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let v: Value = serde_json::from_slice(&rest[5..5 + len]).unwrap();
        if rest[0] & 2 != 0 {
            assert!(v.get("error").is_none(), "{path}: {v}");
        } else {
            out.push(v);
        }
        rest = &rest[5 + len..];
    }
    out
}

/// Every repository the server holds, in any state, and every feature.
async fn holdings(client: &reqwest::Client, server: &Server, repo_id: &str) -> (usize, usize) {
    let repos = stream(
        client,
        &server.url,
        &format!("{REPO}/List"),
        json!({"pagination": {"limit": 500}, "states": ["ACTIVE", "INACTIVE", "DELETED"]}),
    )
    .await
    .len();
    let (code, _) = call(server, &format!("{REPO}/Get"), json!({"id": repo_id}));
    assert_eq!(code, 200, "the repository in use is still there");
    let features = stream(
        client,
        &server.url,
        &format!("{FEATURE}/Search"),
        json!({"pagination": {"limit": 500}}),
    )
    .await
    .len();
    (repos, features)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_client_errors_and_store_nothing() {
    let seed: u64 = std::env::var("API_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_0014);
    let n: usize = std::env::var("API_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000);

    let remotes = tempfile::tempdir().unwrap();
    let bare = make_bare_repo(remotes.path(), "app", &[("calc.py", CALC)]).unwrap();
    let url = format!("file://{}", bare.display());
    // No LLM: features that fuzzing happens to create fail at their first call, and the
    // server says so; nothing here needs a model.
    let server = start_server(&[("LOG_LEVEL", "info".into())]);
    let (code, body) = call(
        &server,
        &format!("{REPO}/Register"),
        json!({"name": "base", "url": url, "defaultBranch": "main"}),
    );
    assert_eq!(code, 200, "{body}");
    let repo_id = body["repository"]["id"].as_str().unwrap().to_owned();
    let (code, body) = call(
        &server,
        &format!("{FEATURE}/Create"),
        json!({"spec": {"title": "t", "description": "Add greet(name).", "repositoryId": repo_id},
               "correlationId": "c-0"}),
    );
    assert_eq!(code, 200, "{body}");
    let feature_id = body["execution"]["id"].as_str().unwrap().to_owned();

    let methods = methods(&repo_id, &feature_id, &url);
    let cases = cases(&methods, seed, n);
    // A connection per request: a server may close a connection after refusing a body it
    // did not read, and a reused connection's failure would be the client's, not builder's.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let before = holdings(&client, &server, &repo_id).await;
    let mut faults = Vec::new();
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    let (mut created_repos, mut created_features) = (0usize, 0usize);
    for (i, case) in cases.iter().enumerate() {
        let path = &methods[case.method].path;
        let verdict = match send(&client, &server.url, path, case).await {
            Ok((status, grpc, body)) => {
                let verdict = judge(case.protocol, status, grpc, &body);
                if status == 200 && verdict.as_ref().is_ok_and(Option::is_none) {
                    // Accepted: what it created is allowed to be there.
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if path.ends_with("RepositoryService/Register")
                        && v["repository"]["id"].is_string()
                        && v["repository"]["id"] != json!(repo_id)
                    {
                        created_repos += 1;
                    }
                    if path.ends_with("FeatureService/Create")
                        && v["execution"]["id"].is_string()
                        && v["execution"]["id"] != json!(feature_id)
                    {
                        created_features += 1;
                    }
                }
                verdict.map(|c| c.unwrap_or_else(|| format!("HTTP {status}")))
            }
            Err(e) => Err(e),
        };
        match verdict {
            Ok(code) => *codes.entry(code).or_default() += 1,
            Err(fault) => faults.push(format!(
                "case {i} ({}, {:?}, {} {:?}, {} bytes): {fault}",
                case.what,
                case.protocol,
                path,
                case.content_type,
                case.body.len()
            )),
        }
    }
    eprintln!("seed {seed:#x}, {n} cases, answers: {codes:?}");
    assert!(
        faults.is_empty(),
        "{} of {n} bad requests were answered as server faults (seed {seed:#x}):\n{}",
        faults.len(),
        faults.join("\n")
    );

    // Alive, nothing panicked, and only what was accepted is stored. Idempotent Register and
    // Create may answer an existing one, so the counts are upper bounds.
    let (code, _) = call(&server, &format!("{REPO}/Get"), json!({"id": repo_id}));
    assert_eq!(code, 200);
    let log = server_log(&server);
    assert!(!log.contains("panicked"), "{log}");
    let after = holdings(&client, &server, &repo_id).await;
    assert!(
        after.0 <= before.0 + created_repos && after.1 <= before.1 + created_features,
        "stored {after:?} from {before:?} with {created_repos} repositories and \
         {created_features} features accepted"
    );
}
