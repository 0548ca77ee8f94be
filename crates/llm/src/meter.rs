//! The metering proxy: a loopback HTTP server between the BAML sidecar and the provider.
//!
//! `baml-cli serve` answers `/call` with the function's value only — no token usage — so
//! builder points each call's client at a private route of this proxy instead of at the
//! provider. The proxy forwards every request unchanged (headers, API key and all) to the
//! real endpoint and reads the usage out of the answer, plain JSON or a server-sent event
//! stream, in the OpenAI and the Anthropic shapes. Because it sees each provider request
//! before it leaves, it is also where budgets hold: a request whose worst case (every byte
//! of the request a token, plus the answer's `max_tokens`) does not fit what is left is
//! refused, or its `max_tokens` lowered to fit, so a budget is never exceeded.
//!
//! Streaming calls (`baml-cli serve`'s `/stream`) need two more things of it. Their routes
//! *capture* the answer: a streamed answer is assembled, as it passes, into the body a
//! non-streamed request would have received (or the provider's error, verbatim), and the
//! caller is told when each request is over. A *replay* route answers with such a captured
//! answer instead of forwarding anything, so the client can have `/call` judge a streamed
//! answer exactly as it judges any other (see `crate::stream`). And because OpenAI-shaped
//! streams report usage only when asked (`stream_options.include_usage`, which BAML sends
//! for `openai` but not for `openai-generic`), the proxy asks on BAML's behalf.
//!
//! Routes are random 128-bit tokens that exist only while their call runs, so no other
//! local process can use the proxy as an open relay. Nothing here logs a header or a body.

use crate::prices::Price;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Largest request body forwarded (prompts are far smaller; this only bounds memory).
const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
/// Largest non-streamed answer read to find its usage.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Largest streamed answer text assembled for a replay (far above any `max_tokens`).
const MAX_CAPTURED_TEXT: usize = 16 * 1024 * 1024;
/// An answer cut below this many tokens to fit a budget is not worth asking for.
pub const MIN_OUTPUT_TOKENS: u64 = 64;

/// Tokens one provider request consumed.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TokenUsage {
    /// Every input token, cached ones included.
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
    /// The provider's answer carried no usage: the figures are upper bounds (request bytes
    /// for input, the answer's bytes capped by `max_tokens` for output).
    pub estimated: bool,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

/// One request the proxy forwarded (or refused).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Attempt {
    /// The provider's HTTP status; `None` when it could not be reached or the proxy refused.
    pub status: Option<u16>,
    pub usage: TokenUsage,
    pub cost_usd: Option<f64>,
}

/// What is left to spend, shared by every request of one call (fallbacks included) and
/// charged as answers arrive. Clone it to share.
#[derive(Clone, Debug, Default)]
pub struct Budget {
    inner: Arc<Mutex<BudgetState>>,
}

#[derive(Debug, Default)]
struct BudgetState {
    tokens_left: Option<(u64, String)>,
    cost_left: Option<(f64, String)>,
    /// Why the last request was refused, for the client to report.
    refused: Option<String>,
}

impl Budget {
    /// No limit at all.
    pub fn unlimited() -> Budget {
        Budget::default()
    }

    /// At most `left` more tokens (input and output), `what` naming the limit in errors.
    pub fn limit_tokens(self, left: u64, what: impl Into<String>) -> Budget {
        {
            let mut s = self.lock();
            if s.tokens_left.as_ref().is_none_or(|(l, _)| left < *l) {
                s.tokens_left = Some((left, what.into()));
            }
        }
        self
    }

    /// At most `left` more US dollars, `what` naming the limit in errors.
    pub fn limit_cost(self, left: f64, what: impl Into<String>) -> Budget {
        {
            let mut s = self.lock();
            let left = left.max(0.0);
            if s.cost_left.as_ref().is_none_or(|(l, _)| left < *l) {
                s.cost_left = Some((left, what.into()));
            }
        }
        self
    }

    pub fn is_limited(&self) -> bool {
        let s = self.lock();
        s.tokens_left.is_some() || s.cost_left.is_some()
    }

    /// The reason the most recent request was refused, taken.
    pub(crate) fn take_refusal(&self) -> Option<String> {
        self.lock().refused.take()
    }

    /// Fails when not even a minimal answer fits, so a call is refused before it is made.
    pub(crate) fn precheck(&self, price: Option<Price>) -> Result<(), String> {
        let s = self.lock();
        if let Some((left, what)) = &s.tokens_left
            && *left < MIN_OUTPUT_TOKENS
        {
            return Err(format!("{what} is spent ({left} tokens left)"));
        }
        if let Some((left, what)) = &s.cost_left {
            let Some(price) = price else {
                return Err(format!(
                    "{what} is set but the model has no price in the price table"
                ));
            };
            if *left < price.output_cost(MIN_OUTPUT_TOKENS) {
                return Err(format!("{what} is spent (${left:.4} left)"));
            }
        }
        Ok(())
    }

    /// The largest `max_tokens` a request of `request_bytes` may ask for, or why none fits.
    fn allowance(
        &self,
        request_bytes: u64,
        asked: u64,
        price: Option<Price>,
    ) -> Result<u64, String> {
        let mut s = self.lock();
        let mut allowed = asked;
        // Every token is at least one byte of the request, so its length bounds the input.
        if let Some((left, what)) = &s.tokens_left {
            let room = left.saturating_sub(request_bytes);
            allowed = allowed.min(room);
            if allowed < MIN_OUTPUT_TOKENS {
                let why = format!(
                    "{what} would be exceeded: {left} tokens left, the request may use up to \
                     {request_bytes} input tokens plus its answer"
                );
                s.refused = Some(why.clone());
                return Err(why);
            }
        }
        if let Some((left, what)) = &s.cost_left {
            let Some(price) = price else {
                let why = format!("{what} is set but the model has no price in the price table");
                s.refused = Some(why.clone());
                return Err(why);
            };
            let room = left - price.input_cost(request_bytes);
            let out = if price.output <= 0.0 {
                u64::MAX
            } else {
                (room.max(0.0) / (price.output / 1_000_000.0)).floor() as u64
            };
            allowed = allowed.min(out);
            if room <= 0.0 || allowed < MIN_OUTPUT_TOKENS {
                let why = format!(
                    "{what} would be exceeded: ${left:.4} left, the request may cost up to \
                     ${:.4} before its answer",
                    price.input_cost(request_bytes)
                );
                s.refused = Some(why.clone());
                return Err(why);
            }
        }
        Ok(allowed)
    }

    fn charge(&self, usage: &TokenUsage, cost: Option<f64>) {
        let mut s = self.lock();
        if let Some((left, _)) = &mut s.tokens_left {
            *left = left.saturating_sub(usage.total());
        }
        if let (Some((left, _)), Some(cost)) = (&mut s.cost_left, cost) {
            *left -= cost;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A provider's answer as a non-streamed request receives it: what a replay route serves.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Captured {
    pub status: u16,
    pub body: Bytes,
}

struct Route {
    /// The provider's base URL (no trailing slash); the route's path is appended to it.
    upstream: String,
    price: Option<Price>,
    budget: Budget,
    attempts: Mutex<Vec<Attempt>>,
    /// Keep the last answer (see [`Captured`]); only streaming calls ask for it.
    capture: bool,
    answer: Mutex<Option<Captured>>,
    /// How many requests are over; lets a caller wait for the next one to end.
    recorded: tokio::sync::watch::Sender<u64>,
    /// Answer every request with this instead of forwarding it.
    replay: Option<Captured>,
}

impl Route {
    fn new(upstream: &str, price: Option<Price>, budget: Budget, capture: bool) -> Route {
        Route {
            upstream: upstream.trim_end_matches('/').to_owned(),
            price,
            budget,
            attempts: Mutex::new(Vec::new()),
            capture,
            answer: Mutex::new(None),
            recorded: tokio::sync::watch::Sender::new(0),
            replay: None,
        }
    }

    /// Counts the request, and keeps its answer when capturing (built only then: `answer`
    /// may copy a large body).
    fn record(&self, attempt: Attempt, answer: impl FnOnce() -> Captured) {
        self.budget.charge(&attempt.usage, attempt.cost_usd);
        if self.capture {
            *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer());
        }
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attempt);
        // After the attempt is stored, so a woken caller finds it.
        self.recorded.send_modify(|n| *n += 1);
    }
}

struct MeterState {
    routes: Mutex<HashMap<String, Arc<Route>>>,
    http: reqwest::Client,
}

/// The running proxy. Dropping it stops it.
pub(crate) struct Meter {
    state: Arc<MeterState>,
    base_url: String,
    task: JoinHandle<()>,
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A route for the requests of one provider within one call; removed when dropped.
pub(crate) struct RouteGuard {
    state: Arc<MeterState>,
    token: String,
    route: Arc<Route>,
    /// What BAML is given as the client's `base_url`.
    pub url: String,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        self.state
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.token);
    }
}

impl RouteGuard {
    /// Changes (to the number of requests over so far) each time a request of this route
    /// ends: answered, failed or refused.
    pub fn ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.route.recorded.subscribe()
    }

    /// The answer of the last request that ended, taken; only on capturing routes.
    pub fn take_answer(&self) -> Option<Captured> {
        self.route
            .answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// The requests recorded since the last call, taken.
    pub fn take_attempts(&self) -> Vec<Attempt> {
        std::mem::take(
            &mut *self
                .route
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }
}

impl Meter {
    /// Binds a free loopback port and serves until dropped.
    pub async fn start(upstream_timeout: Duration) -> std::io::Result<Meter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(upstream_timeout)
            // The sidecar speaks to us in plain HTTP on loopback; the provider may not be.
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let state = Arc::new(MeterState {
            routes: Mutex::new(HashMap::new()),
            http,
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the LLM metering proxy stopped");
            }
        });
        Ok(Meter {
            state,
            base_url: format!("http://{addr}"),
            task,
        })
    }

    /// A fresh private route to `upstream` (e.g. `https://api.openai.com/v1`); with
    /// `capture`, it keeps each answer for [`RouteGuard::take_answer`].
    pub fn route(
        &self,
        upstream: &str,
        price: Option<Price>,
        budget: Budget,
        capture: bool,
    ) -> RouteGuard {
        self.install(Route::new(upstream, price, budget, capture))
    }

    /// A route that answers every request with `answer`, forwarding nothing and recording
    /// nothing: no provider is asked, so nothing is spent.
    pub fn replay(&self, answer: Captured) -> RouteGuard {
        let mut route = Route::new("", None, Budget::unlimited(), false);
        route.replay = Some(answer);
        self.install(route)
    }

    fn install(&self, route: Route) -> RouteGuard {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let route = Arc::new(route);
        self.state
            .routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token.clone(), route.clone());
        RouteGuard {
            state: self.state.clone(),
            url: format!("{}/r/{token}", self.base_url),
            token,
            route,
        }
    }
}

fn plain(status: StatusCode, message: &str) -> Response {
    json_response(status.as_u16(), plain_body(message))
}

/// Shaped like a provider error so BAML quotes it in its own message.
fn plain_body(message: &str) -> Bytes {
    let body = serde_json::json!({"error": {"type": "builder_meter", "message": message}});
    Bytes::from(body.to_string())
}

fn plain_captured(status: StatusCode, message: &str) -> Captured {
    Captured {
        status: status.as_u16(),
        body: plain_body(message),
    }
}

fn json_response(status: u16, body: Bytes) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

async fn forward(State(state): State<Arc<MeterState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path();
    let Some(rest) = path.strip_prefix("/r/") else {
        return plain(StatusCode::NOT_FOUND, "unknown route");
    };
    let (token, tail) = rest.split_once('/').unwrap_or((rest, ""));
    let route = state
        .routes
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(token)
        .cloned();
    let Some(route) = route else {
        return plain(StatusCode::NOT_FOUND, "unknown route");
    };
    let mut body = match axum::body::to_bytes(body, MAX_REQUEST_BYTES).await {
        Ok(b) => b,
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
    };
    if let Some(answer) = &route.replay {
        return json_response(answer.status, answer.body.clone());
    }

    // The budget check: the worst case of this request must fit what is left.
    let mut max_tokens = None;
    if let Ok(Value::Object(mut json)) = serde_json::from_slice::<Value>(&body) {
        let mut changed = ask_for_stream_usage(tail, &mut json);
        let field = ["max_completion_tokens", "max_tokens"]
            .into_iter()
            .find(|f| json.get(*f).and_then(Value::as_u64).is_some());
        if route.budget.is_limited() {
            let Some(field) = field else {
                let why = "a budget is set but the request names no max_tokens, so its \
                           answer cannot be bounded";
                route.budget.lock().refused = Some(why.into());
                route.record(refused_attempt(), || {
                    plain_captured(StatusCode::PAYMENT_REQUIRED, why)
                });
                return plain(StatusCode::PAYMENT_REQUIRED, why);
            };
            let asked = json.get(field).and_then(Value::as_u64).unwrap_or(0);
            match route
                .budget
                .allowance(body.len() as u64, asked, route.price)
            {
                Ok(allowed) if allowed < asked => {
                    json.insert(field.to_owned(), Value::from(allowed));
                    max_tokens = Some(allowed);
                    changed = true;
                }
                Ok(_) => max_tokens = Some(asked),
                Err(why) => {
                    route.record(refused_attempt(), || {
                        plain_captured(StatusCode::PAYMENT_REQUIRED, &why)
                    });
                    return plain(StatusCode::PAYMENT_REQUIRED, &why);
                }
            }
        } else if let Some(field) = field {
            max_tokens = json.get(field).and_then(Value::as_u64);
        }
        if changed {
            match serde_json::to_vec(&json) {
                Ok(v) => body = Bytes::from(v),
                Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "re-encode"),
            }
        }
    } else if route.budget.is_limited() {
        let why = "a budget is set but the request is not JSON, so it cannot be bounded";
        route.budget.lock().refused = Some(why.into());
        route.record(refused_attempt(), || {
            plain_captured(StatusCode::PAYMENT_REQUIRED, why)
        });
        return plain(StatusCode::PAYMENT_REQUIRED, why);
    }

    let mut url = format!("{}/{tail}", route.upstream);
    if let Some(q) = parts.uri.query() {
        url.push('?');
        url.push_str(q);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    let request_bytes = body.len() as u64;
    let sent = state
        .http
        .request(parts.method.clone(), &url)
        .headers(headers)
        .body(body)
        .send()
        .await;
    let upstream = match sent {
        Ok(r) => r,
        Err(e) => {
            // Never the URL's query or a header: only what kind of failure it was.
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            let message = format!("the provider request {kind}");
            route.record(
                Attempt {
                    status: None,
                    usage: TokenUsage::default(),
                    cost_usd: Some(0.0),
                },
                || plain_captured(StatusCode::BAD_GATEWAY, &message),
            );
            return plain(StatusCode::BAD_GATEWAY, &message);
        }
    };
    let status = upstream.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in upstream.headers() {
        if !is_hop_by_hop(name.as_str()) && name != header::CONTENT_LENGTH {
            out_headers.append(name.clone(), value.clone());
        }
    }
    let streaming = upstream
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));

    if !status.is_success() {
        // The error body is small; reading it whole lets a replay quote it verbatim.
        let bytes = read_capped(upstream, MAX_RESPONSE_BYTES)
            .await
            .unwrap_or_default();
        // Providers do not bill refused requests.
        route.record(
            Attempt {
                status: Some(status.as_u16()),
                usage: TokenUsage::default(),
                cost_usd: Some(0.0),
            },
            || Captured {
                status: status.as_u16(),
                body: bytes.clone(),
            },
        );
        return (status, out_headers, bytes).into_response();
    }

    if streaming {
        let route = route.clone();
        let mut scanner = SseUsage {
            answer: route.capture.then(StreamedAnswer::default),
            ..SseUsage::default()
        };
        let mut stream = upstream.bytes_stream();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            let mut response_bytes = 0u64;
            let mut broke_off = false;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => {
                        response_bytes += bytes.len() as u64;
                        scanner.feed(&bytes);
                        if tx.send(Ok(bytes)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        broke_off = true;
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        break;
                    }
                }
            }
            let (usage, answer) = scanner.finish();
            let usage =
                usage.unwrap_or_else(|| estimate(request_bytes, response_bytes, max_tokens));
            route.record(
                Attempt {
                    status: Some(status.as_u16()),
                    cost_usd: route.price.map(|p| p.cost(&usage)),
                    usage,
                },
                || match answer {
                    // As a non-streamed answer cut off would be (see `read_capped`).
                    _ if broke_off => {
                        plain_captured(StatusCode::BAD_GATEWAY, "the provider's answer broke off")
                    }
                    Some(answer) => answer.into_captured(&usage),
                    None => plain_captured(StatusCode::BAD_GATEWAY, "nothing was captured"),
                },
            );
        });
        let body = Body::from_stream(tokio_stream_from(rx));
        return (status, out_headers, body).into_response();
    }

    let bytes = match read_capped(upstream, MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(why) => {
            route.record(
                Attempt {
                    status: Some(status.as_u16()),
                    usage: estimate(request_bytes, MAX_RESPONSE_BYTES as u64, max_tokens),
                    cost_usd: None,
                },
                || plain_captured(StatusCode::BAD_GATEWAY, &why),
            );
            return plain(StatusCode::BAD_GATEWAY, &why);
        }
    };
    let usage = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| usage_of(&v["usage"]))
        .unwrap_or_else(|| estimate(request_bytes, bytes.len() as u64, max_tokens));
    route.record(
        Attempt {
            status: Some(status.as_u16()),
            cost_usd: route.price.map(|p| p.cost(&usage)),
            usage,
        },
        || Captured {
            status: status.as_u16(),
            body: bytes.clone(),
        },
    );
    let mut response = (status, out_headers, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
}

/// Adds `stream_options.include_usage` to an OpenAI-shaped streaming request that does not
/// ask for it; says whether it did. Without it OpenAI (and the servers that copy its API)
/// report no usage in a stream at all, so the call would be charged estimates — upper
/// bounds that would eat a budget many times faster than the real figures. BAML asks by
/// itself for provider `openai`, not for `openai-generic`. Servers that implement the
/// chat completions API accept the option (vLLM, Ollama, llama.cpp, LiteLLM…); it changes
/// nothing but one extra final chunk, which BAML ignores.
fn ask_for_stream_usage(tail: &str, json: &mut serde_json::Map<String, Value>) -> bool {
    let streaming = json.get("stream").and_then(Value::as_bool) == Some(true);
    if !streaming || !tail.trim_end_matches('/').ends_with("chat/completions") {
        return false;
    }
    let options = json
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    let Value::Object(options) = options else {
        // Something we do not understand: leave it to the provider to judge.
        return false;
    };
    if options.get("include_usage").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    options.insert("include_usage".into(), Value::Bool(true));
    true
}

fn refused_attempt() -> Attempt {
    Attempt {
        status: None,
        usage: TokenUsage::default(),
        cost_usd: Some(0.0),
    }
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

async fn read_capped(mut response: reqwest::Response, cap: usize) -> Result<Bytes, String> {
    let mut buf = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    return Err(format!("the provider's answer exceeded {cap} bytes"));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(Bytes::from(buf)),
            Err(_) => return Err("the provider's answer broke off".into()),
        }
    }
}

/// An upper bound when the provider reported nothing: a token is at least one byte.
fn estimate(request_bytes: u64, response_bytes: u64, max_tokens: Option<u64>) -> TokenUsage {
    TokenUsage {
        input_tokens: request_bytes,
        output_tokens: max_tokens.map_or(response_bytes, |m| m.min(response_bytes)),
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        estimated: true,
    }
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "host"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            // Ask for an identity answer: the usage has to be read.
            | "accept-encoding"
    )
}

/// Reads a `usage` object in either provider's shape.
pub(crate) fn usage_of(u: &Value) -> Option<TokenUsage> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    if u.get("prompt_tokens").is_some() || u.get("completion_tokens").is_some() {
        // OpenAI: prompt_tokens already includes the cached ones.
        return Some(TokenUsage {
            input_tokens: n(&u["prompt_tokens"]),
            output_tokens: n(&u["completion_tokens"]),
            cache_read_tokens: n(&u["prompt_tokens_details"]["cached_tokens"]),
            cache_write_tokens: 0,
            estimated: false,
        });
    }
    if u.get("input_tokens").is_some() || u.get("output_tokens").is_some() {
        // Anthropic: input_tokens excludes what was read from or written to the cache.
        let read = n(&u["cache_read_input_tokens"]);
        let write = n(&u["cache_creation_input_tokens"]);
        return Some(TokenUsage {
            // Saturating: the figures come from outside, and a wrapped count would undercharge.
            input_tokens: n(&u["input_tokens"])
                .saturating_add(read)
                .saturating_add(write),
            output_tokens: n(&u["output_tokens"]),
            cache_read_tokens: read,
            cache_write_tokens: write,
            estimated: false,
        });
    }
    None
}

mod sse;
use sse::{SseUsage, StreamedAnswer};

#[cfg(test)]
#[path = "meter_fuzz_tests.rs"]
mod fuzz_tests;

#[cfg(test)]
#[path = "meter_tests.rs"]
mod tests;
