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

struct Route {
    /// The provider's base URL (no trailing slash); the route's path is appended to it.
    upstream: String,
    price: Option<Price>,
    budget: Budget,
    attempts: Mutex<Vec<Attempt>>,
}

impl Route {
    fn record(&self, attempt: Attempt) {
        self.budget.charge(&attempt.usage, attempt.cost_usd);
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(attempt);
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

    /// A fresh private route to `upstream` (e.g. `https://api.openai.com/v1`).
    pub fn route(&self, upstream: &str, price: Option<Price>, budget: Budget) -> RouteGuard {
        let token = hex::encode(rand::random::<[u8; 16]>());
        let route = Arc::new(Route {
            upstream: upstream.trim_end_matches('/').to_owned(),
            price,
            budget,
            attempts: Mutex::new(Vec::new()),
        });
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
    // Shaped like a provider error so BAML quotes it in its own message.
    let body = serde_json::json!({"error": {"type": "builder_meter", "message": message}});
    (status, axum::Json(body)).into_response()
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

    // The budget check: the worst case of this request must fit what is left.
    let mut max_tokens = None;
    if let Ok(Value::Object(mut json)) = serde_json::from_slice::<Value>(&body) {
        let field = ["max_completion_tokens", "max_tokens"]
            .into_iter()
            .find(|f| json.get(*f).and_then(Value::as_u64).is_some());
        if route.budget.is_limited() {
            let Some(field) = field else {
                let why = "a budget is set but the request names no max_tokens, so its \
                           answer cannot be bounded";
                route.budget.lock().refused = Some(why.into());
                route.record(refused_attempt());
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
                    match serde_json::to_vec(&json) {
                        Ok(v) => body = Bytes::from(v),
                        Err(_) => return plain(StatusCode::INTERNAL_SERVER_ERROR, "re-encode"),
                    }
                }
                Ok(_) => max_tokens = Some(asked),
                Err(why) => {
                    route.record(refused_attempt());
                    return plain(StatusCode::PAYMENT_REQUIRED, &why);
                }
            }
        } else if let Some(field) = field {
            max_tokens = json.get(field).and_then(Value::as_u64);
        }
    } else if route.budget.is_limited() {
        let why = "a budget is set but the request is not JSON, so it cannot be bounded";
        route.budget.lock().refused = Some(why.into());
        route.record(refused_attempt());
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
            route.record(Attempt {
                status: None,
                usage: TokenUsage::default(),
                cost_usd: Some(0.0),
            });
            // Never the URL's query or a header: only what kind of failure it was.
            let kind = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "failed"
            };
            return plain(
                StatusCode::BAD_GATEWAY,
                &format!("the provider request {kind}"),
            );
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
        // Providers do not bill refused requests.
        route.record(Attempt {
            status: Some(status.as_u16()),
            usage: TokenUsage::default(),
            cost_usd: Some(0.0),
        });
        let bytes = upstream.bytes().await.unwrap_or_default();
        return (status, out_headers, bytes).into_response();
    }

    if streaming {
        let route = route.clone();
        let mut scanner = SseUsage::default();
        let mut stream = upstream.bytes_stream();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
        tokio::spawn(async move {
            let mut response_bytes = 0u64;
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
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        break;
                    }
                }
            }
            let usage = scanner
                .usage()
                .unwrap_or_else(|| estimate(request_bytes, response_bytes, max_tokens));
            route.record(Attempt {
                status: Some(status.as_u16()),
                cost_usd: route.price.map(|p| p.cost(&usage)),
                usage,
            });
        });
        let body = Body::from_stream(tokio_stream_from(rx));
        return (status, out_headers, body).into_response();
    }

    let bytes = match read_capped(upstream, MAX_RESPONSE_BYTES).await {
        Ok(b) => b,
        Err(why) => {
            route.record(Attempt {
                status: Some(status.as_u16()),
                usage: estimate(request_bytes, MAX_RESPONSE_BYTES as u64, max_tokens),
                cost_usd: None,
            });
            return plain(StatusCode::BAD_GATEWAY, &why);
        }
    };
    let usage = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| usage_of(&v["usage"]))
        .unwrap_or_else(|| estimate(request_bytes, bytes.len() as u64, max_tokens));
    route.record(Attempt {
        status: Some(status.as_u16()),
        cost_usd: route.price.map(|p| p.cost(&usage)),
        usage,
    });
    let mut response = (status, out_headers, bytes).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
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
            input_tokens: n(&u["input_tokens"]) + read + write,
            output_tokens: n(&u["output_tokens"]),
            cache_read_tokens: read,
            cache_write_tokens: write,
            estimated: false,
        });
    }
    None
}

/// Finds the usage in a server-sent event stream as it passes.
#[derive(Default)]
struct SseUsage {
    line: Vec<u8>,
    usage: Option<TokenUsage>,
}

impl SseUsage {
    fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                self.line_done(&line);
            } else if self.line.len() < 1024 * 1024 {
                self.line.push(b);
            }
        }
    }

    fn line_done(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
            return;
        };
        match v["type"].as_str() {
            // Anthropic: input (and cache) figures first, cumulative output at the end.
            Some("message_start") => {
                if let Some(u) = usage_of(&v["message"]["usage"]) {
                    self.usage = Some(u);
                }
            }
            Some("message_delta") => {
                if let Some(out) = v["usage"]["output_tokens"].as_u64() {
                    let mut u = self.usage.unwrap_or_default();
                    u.output_tokens = out;
                    self.usage = Some(u);
                }
            }
            // OpenAI: a final chunk carries the usage when `stream_options.include_usage`.
            _ => {
                if let Some(u) = usage_of(&v["usage"]) {
                    self.usage = Some(u);
                }
            }
        }
    }

    fn usage(mut self) -> Option<TokenUsage> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line);
        }
        self.usage
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_both_usage_shapes() {
        let openai = json!({"prompt_tokens": 100, "completion_tokens": 20,
            "prompt_tokens_details": {"cached_tokens": 60}});
        assert_eq!(
            usage_of(&openai),
            Some(TokenUsage {
                input_tokens: 100,
                output_tokens: 20,
                cache_read_tokens: 60,
                cache_write_tokens: 0,
                estimated: false
            })
        );
        let anthropic = json!({"input_tokens": 10, "output_tokens": 5,
            "cache_read_input_tokens": 30, "cache_creation_input_tokens": 7});
        let u = usage_of(&anthropic).unwrap();
        assert_eq!(
            (u.input_tokens, u.cache_read_tokens, u.cache_write_tokens),
            (47, 30, 7)
        );
        assert_eq!(usage_of(&json!(null)), None);
        assert_eq!(usage_of(&json!({"other": 1})), None);
    }

    #[test]
    fn finds_usage_in_streams_split_anywhere() {
        let anthropic = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":12,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"hi\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":9}}\n\n";
        let openai = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n\
            data: {\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":3}}\n\ndata: [DONE]\n\n";
        for (text, want) in [(anthropic, (12, 9)), (openai, (8, 3))] {
            for split in [1, 3, 7, 64] {
                let mut s = SseUsage::default();
                for chunk in text.as_bytes().chunks(split) {
                    s.feed(chunk);
                }
                let u = s.usage().unwrap();
                assert_eq!((u.input_tokens, u.output_tokens), want, "split {split}");
            }
        }
        let mut s = SseUsage::default();
        s.feed(b"data: {not json\n\ndata: \xff\xfe\n");
        assert_eq!(s.usage(), None);
    }

    #[test]
    fn budget_bounds_each_request_by_its_worst_case() {
        let b = Budget::unlimited().limit_tokens(1000, "constraints.max_llm_tokens");
        // 400 request bytes leave room for 600 output tokens.
        assert_eq!(b.allowance(400, 4096, None), Ok(600));
        assert_eq!(b.allowance(400, 100, None), Ok(100));
        let e = b.allowance(990, 4096, None).unwrap_err();
        assert!(e.contains("constraints.max_llm_tokens"), "{e}");
        assert_eq!(b.take_refusal().as_deref(), Some(e.as_str()));
        b.charge(
            &TokenUsage {
                input_tokens: 500,
                output_tokens: 100,
                ..Default::default()
            },
            None,
        );
        assert_eq!(b.allowance(100, 4096, None), Ok(300));
        // The tighter of two limits wins.
        let b = b.limit_tokens(5000, "looser");
        assert_eq!(b.allowance(100, 4096, None), Ok(300));
    }

    #[test]
    fn cost_budget_needs_a_price_and_lowers_max_tokens() {
        let price = Price {
            input: 1.0,
            output: 10.0,
            cache_read: None,
            cache_write: None,
        };
        let b = Budget::unlimited().limit_cost(0.01, "llm.max_cost_usd");
        // $0.01 - 1000 bytes · $1/M = $0.009 → 900 output tokens at $10/M.
        assert_eq!(b.allowance(1000, 4096, Some(price)), Ok(900));
        assert!(b.allowance(1000, 4096, None).unwrap_err().contains("price"));
        assert!(b.precheck(None).is_err());
        assert!(b.precheck(Some(price)).is_ok());
        b.charge(&TokenUsage::default(), Some(0.0099));
        assert!(b.precheck(Some(price)).is_err());
    }

    #[test]
    fn estimates_are_upper_bounds() {
        let e = estimate(1000, 5000, Some(256));
        assert_eq!(
            (e.input_tokens, e.output_tokens, e.estimated),
            (1000, 256, true)
        );
        assert_eq!(estimate(10, 20, None).output_tokens, 20);
    }
}
