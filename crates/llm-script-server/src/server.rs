//! The HTTP server: routes, answer selection, request recording.

use crate::script::{Entry, Reply, Script};
use crate::wire::{self, Completion, Provider};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("opening record file {path}: {source}")]
    Record {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One request the server received, secrets replaced by their fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Lower-case header names; `authorization`, `x-api-key`, `api-key` and
    /// `x-goog-api-key` hold [`fingerprint`] of the credential instead of the credential,
    /// so tests can check which key arrived without the log holding it.
    pub headers: BTreeMap<String, String>,
    /// The JSON body, or the raw text when it was not JSON.
    pub body: Value,
    /// Index of the script entry that answered, if any.
    pub entry: Option<usize>,
}

/// `sha256:<hex>` of a credential, as it appears in [`RecordedRequest::headers`].
pub fn fingerprint(secret: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(secret.as_bytes())))
}

const SECRET_HEADERS: [&str; 4] = ["authorization", "x-api-key", "api-key", "x-goog-api-key"];

fn redact_header(name: &str, value: &str) -> String {
    if !SECRET_HEADERS.contains(&name) {
        return value.to_owned();
    }
    // Keep the scheme visible so a test can tell `Bearer` from `Basic`.
    match value.split_once(' ') {
        Some((scheme, token)) if name == "authorization" => {
            format!("{scheme} {}", fingerprint(token.trim()))
        }
        _ => fingerprint(value),
    }
}

/// Where and how to serve.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// 0 picks a free port.
    pub port: u16,
    /// Appends every request as one JSON line.
    pub record: Option<PathBuf>,
}

struct ServerState {
    script: Script,
    used: Mutex<Vec<bool>>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: Option<Mutex<std::fs::File>>,
    counter: AtomicU64,
}

// A panic while holding a lock cannot leave these vectors half-updated in a way that
// matters to a test double, so a poisoned lock is simply taken over.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running server; stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    handle: JoinHandle<std::io::Result<()>>,
    state: Arc<ServerState>,
}

impl Running {
    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Base URL for OpenAI-style clients (`…/v1`).
    pub fn openai_base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Base URL for Anthropic-style clients (they append `/v1/messages` themselves).
    pub fn anthropic_base_url(&self) -> String {
        self.url()
    }

    /// How many script entries have not answered yet.
    pub fn unused_entries(&self) -> usize {
        lock(&self.state.used).iter().filter(|u| !**u).count()
    }

    /// Serves until the server fails.
    pub async fn wait(mut self) -> std::io::Result<()> {
        match (&mut self.handle).await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts on a free loopback port.
pub async fn start(script: Script) -> Result<Running, ServerError> {
    start_with(script, Options::default()).await
}

pub async fn start_with(script: Script, options: Options) -> Result<Running, ServerError> {
    let record = match &options.record {
        None => None,
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| ServerError::Record {
                    path: path.display().to_string(),
                    source,
                })?,
        )),
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|source| ServerError::Bind {
            port: options.port,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        port: options.port,
        source,
    })?;
    let state = Arc::new(ServerState {
        used: Mutex::new(vec![false; script.entries.len()]),
        script,
        requests: Mutex::new(Vec::new()),
        record,
        counter: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(openai))
        .route("/chat/completions", post(openai))
        .route("/v1/messages", post(anthropic))
        .route("/__requests", get(list_requests))
        .fallback(unknown)
        .with_state(state.clone());
    let handle = tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Running {
        addr,
        handle,
        state,
    })
}

async fn openai(State(st): State<Arc<ServerState>>, uri: Uri, h: HeaderMap, b: Bytes) -> Response {
    answer(&st, Provider::OpenAi, uri.path(), &h, &b).await
}

async fn anthropic(
    State(st): State<Arc<ServerState>>,
    uri: Uri,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    answer(&st, Provider::Anthropic, uri.path(), &h, &b).await
}

async fn list_requests(State(st): State<Arc<ServerState>>) -> Response {
    axum::Json(lock(&st.requests).clone()).into_response()
}

async fn unknown(
    State(st): State<Arc<ServerState>>,
    method: Method,
    uri: Uri,
    h: HeaderMap,
    b: Bytes,
) -> Response {
    st.record(RecordedRequest {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers: record_headers(&h),
        body: body_value(&b),
        entry: None,
    });
    let message = format!("llm-script-server: no route for {method} {}", uri.path());
    json_response(
        StatusCode::NOT_FOUND,
        &wire::error_body(Provider::OpenAi, 404, &message),
    )
}

impl ServerState {
    fn record(&self, request: RecordedRequest) {
        if let Some(file) = &self.record {
            let line = serde_json::to_string(&request).unwrap_or_default();
            if let Err(e) = writeln!(lock(file), "{line}") {
                eprintln!("llm-script-server: writing the record file: {e}");
            }
        }
        lock(&self.requests).push(request);
    }

    /// The first unused entry that fits; marked used under the same lock so concurrent
    /// requests never share an entry.
    fn take(&self, raw: &str, decoded: &str) -> Option<(usize, Entry)> {
        let mut used = lock(&self.used);
        let index = self
            .script
            .entries
            .iter()
            .enumerate()
            .position(|(i, e)| !used[i] && e.fits(raw, decoded))?;
        used[index] = true;
        Some((index, self.script.entries[index].clone()))
    }
}

fn record_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = redact_header(name.as_str(), &String::from_utf8_lossy(value.as_bytes()));
        out.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    out
}

fn body_value(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

/// All string leaves of the body, joined: the prompt text as the model would read it.
fn decoded_text(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| decoded_text(v, out)),
        Value::Object(map) => map.values().for_each(|v| decoded_text(v, out)),
        _ => {}
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body.clone())).into_response()
}

fn error_response(status: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, body)
}

async fn answer(
    st: &ServerState,
    provider: Provider,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let raw = String::from_utf8_lossy(body);
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let mut decoded = String::new();
    if let Some(v) = &parsed {
        decoded_text(v, &mut decoded);
    }
    let picked = match &parsed {
        Some(_) => st.take(&raw, &decoded),
        None => None,
    };
    st.record(RecordedRequest {
        method: "POST".to_owned(),
        path: path.to_owned(),
        headers: record_headers(headers),
        body: body_value(body),
        entry: picked.as_ref().map(|(i, _)| *i),
    });
    let Some(request) = parsed else {
        let message = "llm-script-server: the request body is not JSON";
        return error_response(400, &wire::error_body(provider, 400, message));
    };
    let Some((_, entry)) = picked else {
        let used = lock(&st.used).iter().filter(|u| **u).count();
        let message = format!(
            "llm-script-server: script exhausted: no unused entry matches this request \
             ({} entries, {used} used)",
            st.script.entries.len()
        );
        return error_response(500, &wire::error_body(provider, 500, &message));
    };
    if let Some(ms) = entry.delay_ms {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match entry.reply {
        Reply::Error { status, body } => {
            let body = body.unwrap_or_else(|| {
                let message = format!("llm-script-server: scripted error {status}");
                wire::error_body(provider, status, &message)
            });
            error_response(status, &body)
        }
        Reply::Text {
            text,
            finish_reason,
        } => {
            let n = st.counter.fetch_add(1, Ordering::Relaxed) + 1;
            let id = match provider {
                Provider::OpenAi => format!("chatcmpl-scripted{n}"),
                Provider::Anthropic => format!("msg_scripted{n}"),
            };
            let created = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let model = request["model"].as_str().unwrap_or("scripted-model");
            let completion = Completion {
                id: &id,
                created,
                model,
                text: &text,
                finish_reason: finish_reason.as_deref(),
                prompt_tokens: entry
                    .usage
                    .map_or_else(|| wire::estimate_tokens(&decoded), |u| u[0]),
                completion_tokens: entry
                    .usage
                    .map_or_else(|| wire::estimate_tokens(&text), |u| u[1]),
            };
            let stream = request["stream"].as_bool().unwrap_or(false);
            match (provider, stream) {
                (Provider::OpenAi, false) => {
                    json_response(StatusCode::OK, &wire::openai_completion(&completion))
                }
                (Provider::Anthropic, false) => {
                    json_response(StatusCode::OK, &wire::anthropic_message(&completion))
                }
                (Provider::OpenAi, true) => {
                    let include_usage = request["stream_options"]["include_usage"]
                        .as_bool()
                        .unwrap_or(false);
                    sse(
                        wire::openai_stream(&completion, include_usage),
                        entry.chunk_delay_ms,
                    )
                }
                (Provider::Anthropic, true) => {
                    sse(wire::anthropic_stream(&completion), entry.chunk_delay_ms)
                }
            }
        }
    }
}

/// The frames as an event stream, `delay_ms` apart when set (the first one at once).
fn sse(frames: Vec<String>, delay_ms: Option<u64>) -> Response {
    let delay = Duration::from_millis(delay_ms.unwrap_or(0));
    let stream =
        futures::stream::iter(frames.into_iter().enumerate()).then(move |(i, frame)| async move {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(frame)
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
