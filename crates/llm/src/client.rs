//! Typed calls of the four BAML functions through the sidecar, with retries.

use crate::error::{LlmError, tidy};
use crate::meter::{Attempt, Budget, RouteGuard, TokenUsage};
use crate::prices::PriceTable;
use crate::settings::LlmSettings;
use crate::sidecar::Shared;
use crate::stream::{DEFAULT_PARTIAL_INTERVAL, EventReader, Partial, Throttle};
use crate::types::{Analysis, EditSet, FeatureRequest, Plan, RepoContext, Review, SourceFile};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A function's result with what it took to get it.
#[derive(Debug, Clone, PartialEq)]
pub struct Called<T> {
    pub value: T,
    /// The BAML function name, e.g. `GenerateEdits`.
    pub function: &'static str,
    /// The provider and model that gave this answer (a fallback's, if it came to that).
    pub provider: String,
    pub model: String,
    /// Wall time of the whole call, retries and back-off included.
    pub latency_ms: u64,
    /// Tries made, the successful one included: one sidecar call each (a streamed try
    /// adds a local replay, which is not counted; see `crate::stream`).
    pub attempts: u32,
    /// The function's answer as BAML returned it: what a transcript records.
    pub raw: Value,
}

/// A failed attempt the client is about to retry.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryNotice {
    pub function: &'static str,
    pub attempt: u32,
    /// Redacted: never contains the API key.
    pub error: String,
    pub delay_ms: u64,
}

/// How often to try again.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Further tries after output that does not parse (the model may answer better).
    pub parse_retries: u32,
    /// Further tries after a transient failure, waiting `backoff · 2^n` before try n+1;
    /// per provider: once spent, the next provider of the chain is asked.
    pub transient_retries: u32,
    pub backoff: Duration,
    /// Further tries after the sidecar itself went away (once it is back).
    pub sidecar_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            parse_retries: 2,
            transient_retries: 3,
            backoff: Duration::from_millis(200),
            sidecar_retries: 2,
        }
    }
}

/// What the provider requests of calls consumed, failed ones included; shared with the
/// caller, who reads it whether the call succeeded or not.
#[derive(Debug, Clone, Default)]
pub struct UsageLedger {
    inner: Arc<Mutex<Spent>>,
}

/// Totals of a [`UsageLedger`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Spent {
    pub usage: TokenUsage,
    /// `None` once a request with tokens had no price.
    pub cost_usd: Option<f64>,
    /// Provider requests made (or refused by a budget).
    pub requests: u32,
}

impl UsageLedger {
    pub fn new() -> UsageLedger {
        UsageLedger {
            inner: Arc::new(Mutex::new(Spent {
                cost_usd: Some(0.0),
                ..Spent::default()
            })),
        }
    }

    pub fn spent(&self) -> Spent {
        *self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The totals so far, starting the ledger afresh: what one call of a client that makes
    /// several spent.
    pub fn take(&self) -> Spent {
        std::mem::replace(
            &mut *self.inner.lock().unwrap_or_else(PoisonError::into_inner),
            Spent {
                cost_usd: Some(0.0),
                ..Spent::default()
            },
        )
    }

    fn add(&self, attempt: &Attempt) {
        let mut s = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let u = &attempt.usage;
        // The figures come from the provider: saturate rather than overflow.
        let add = |a: &mut u64, b: u64| *a = a.saturating_add(b);
        add(&mut s.usage.input_tokens, u.input_tokens);
        add(&mut s.usage.output_tokens, u.output_tokens);
        add(&mut s.usage.cache_read_tokens, u.cache_read_tokens);
        add(&mut s.usage.cache_write_tokens, u.cache_write_tokens);
        s.usage.estimated |= u.estimated;
        s.cost_usd = match (s.cost_usd, attempt.cost_usd) {
            (Some(a), Some(b)) => Some(a + b),
            (Some(a), None) if u.total() == 0 => Some(a),
            _ => None,
        };
        s.requests += 1;
    }
}

/// Calls the BAML functions with one provider chain. Cheap to clone.
#[derive(Clone)]
pub struct LlmClient {
    /// Told about every attempt that failed and is retried, so callers can record it.
    observer: Option<tokio::sync::mpsc::UnboundedSender<RetryNotice>>,
    shared: Option<Arc<Shared>>,
    replay: Option<Arc<crate::replay::Replay>>,
    /// The provider asked first, then the fallbacks in order.
    chain: Vec<LlmSettings>,
    retry: RetryPolicy,
    prices: PriceTable,
    budget: Budget,
    ledger: UsageLedger,
    /// When set, calls stream and their partial values go here.
    partials: Option<tokio::sync::mpsc::UnboundedSender<Partial>>,
    partial_interval: Duration,
}

impl std::fmt::Debug for LlmClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmClient")
            .field("chain", &self.chain)
            .field("retry", &self.retry)
            .field("streaming", &self.partials.is_some())
            .finish()
    }
}

/// What one HTTP call to the sidecar came to.
enum Outcome {
    Ok(Value),
    Failed(LlmError),
    /// The sidecar could not be reached on this generation.
    Unreachable(u64, String),
}

/// What a streamed try needs besides the request: the route whose answer it waits for,
/// what to rebuild the request from for the replay, and where partial values go.
struct StreamTry<'a> {
    route: &'a RouteGuard,
    args: &'a Map<String, Value>,
    settings: &'a LlmSettings,
    throttle: &'a mut Throttle,
}

/// Where the current provider stands within one call.
enum Next {
    Retry,
    Fallback,
    Fail,
}

impl LlmClient {
    pub(crate) fn new(shared: Arc<Shared>, chain: Vec<LlmSettings>) -> LlmClient {
        LlmClient {
            observer: None,
            shared: Some(shared),
            replay: None,
            chain,
            retry: RetryPolicy::default(),
            prices: PriceTable::default(),
            budget: Budget::unlimited(),
            ledger: UsageLedger::new(),
            partials: None,
            partial_interval: DEFAULT_PARTIAL_INTERVAL,
        }
    }

    /// A client that answers from a recorded transcript instead of a model: no sidecar, no
    /// provider, deterministic. Its provider reads "replay".
    pub fn replay(replay: Arc<crate::replay::Replay>) -> LlmClient {
        LlmClient {
            observer: None,
            shared: None,
            replay: Some(replay),
            chain: vec![LlmSettings {
                provider: "replay".into(),
                model: "transcript".into(),
                api_key: None,
                base_url: None,
                max_tokens: 0,
                temperature: 0.0,
            }],
            retry: RetryPolicy::default(),
            prices: PriceTable::default(),
            budget: Budget::unlimited(),
            ledger: UsageLedger::new(),
            partials: None,
            partial_interval: DEFAULT_PARTIAL_INTERVAL,
        }
    }

    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> LlmClient {
        self.retry = retry;
        self
    }

    /// Prices each provider request by its model.
    pub fn with_prices(mut self, prices: PriceTable) -> LlmClient {
        self.prices = prices;
        self
    }

    /// Refuses any provider request whose worst case does not fit `budget`.
    pub fn with_budget(mut self, budget: Budget) -> LlmClient {
        self.budget = budget;
        self
    }

    /// Adds every provider request's usage to `ledger`.
    pub fn with_ledger(mut self, ledger: UsageLedger) -> LlmClient {
        self.ledger = ledger;
        self
    }

    /// Reports each retried attempt on `tx` (rate limits, overload, unparseable output).
    pub fn with_retry_observer(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<RetryNotice>,
    ) -> LlmClient {
        self.observer = Some(tx);
        self
    }

    /// Streams every call and sends the model's partial answers on `tx` as they are
    /// written — at most one per [`LlmClient::with_partial_interval`] (default
    /// [`DEFAULT_PARTIAL_INTERVAL`]), only when changed, never after the call returned.
    /// Results, errors, retries, fallbacks, budgets and usage are exactly those of an
    /// unstreamed call. A client answering from a transcript sends none.
    pub fn with_partial_observer(
        mut self,
        tx: tokio::sync::mpsc::UnboundedSender<Partial>,
    ) -> LlmClient {
        self.partials = Some(tx);
        self
    }

    /// The least time between two partial values of one call (zero: every change).
    pub fn with_partial_interval(mut self, every: Duration) -> LlmClient {
        self.partial_interval = every;
        self
    }

    fn notify(&self, function: &'static str, attempt: u32, error: String, delay: Duration) {
        if let Some(tx) = &self.observer {
            let _ = tx.send(RetryNotice {
                function,
                attempt,
                error,
                delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            });
        }
    }

    /// The provider asked first.
    pub fn settings(&self) -> Option<&LlmSettings> {
        self.chain.first()
    }

    pub async fn analyze(
        &self,
        req: &FeatureRequest,
        ctx: &RepoContext,
    ) -> Result<Called<Analysis>, LlmError> {
        self.call("AnalyzeFeature", json!({"request": req, "context": ctx}))
            .await
    }

    pub async fn plan(
        &self,
        req: &FeatureRequest,
        analysis: &Analysis,
        ctx: &RepoContext,
    ) -> Result<Called<Plan>, LlmError> {
        self.call(
            "PlanFeature",
            json!({"request": req, "analysis": analysis, "context": ctx}),
        )
        .await
    }

    pub async fn generate(
        &self,
        req: &FeatureRequest,
        plan: &Plan,
        step_index: u32,
        files: &[SourceFile],
        feedback: Option<&str>,
    ) -> Result<Called<EditSet>, LlmError> {
        self.call(
            "GenerateEdits",
            json!({
                "request": req,
                "plan": plan,
                "step_index": step_index,
                "files": files,
                "feedback": feedback,
            }),
        )
        .await
    }

    pub async fn validate(
        &self,
        req: &FeatureRequest,
        diff: &str,
        test_summary: &str,
    ) -> Result<Called<Review>, LlmError> {
        self.call(
            "ValidateChange",
            json!({"request": req, "diff": diff, "test_summary": test_summary}),
        )
        .await
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        function: &'static str,
        args: Value,
    ) -> Result<Called<T>, LlmError> {
        if let Some(replay) = &self.replay {
            let raw = replay.next(function)?;
            let value = serde_json::from_value::<T>(raw.clone()).map_err(|e| LlmError::Parse {
                function,
                message: format!("the recorded answer does not fit the Rust type: {e}"),
                raw_output: Some(tidy(&raw.to_string(), RAW_OUTPUT_CHARS)),
            })?;
            return Ok(Called {
                value,
                function,
                provider: "replay".into(),
                model: "transcript".into(),
                latency_ms: 0,
                attempts: 1,
                raw,
            });
        }
        let Some(shared) = &self.shared else {
            return Err(LlmError::Sidecar {
                message: "no sidecar behind this client".into(),
            });
        };
        if self.chain.is_empty() {
            return Err(LlmError::NotConfigured);
        }
        let args = match args {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let started = Instant::now();
        let mut throttle = self
            .partials
            .as_ref()
            .map(|tx| Throttle::new(tx.clone(), function, self.partial_interval));
        let mut attempts = 0u32;
        let mut sidecar_failures = 0;
        let mut failed_generation = None;
        let mut last_error = None;
        for (index, settings) in self.chain.iter().enumerate() {
            let key = settings.api_key.as_deref();
            settings.validate().map_err(|e| e.redacted(key))?;
            let price = self.prices.price(&settings.model);
            if let Err(why) = self.budget.precheck(price) {
                return Err(LlmError::Budget { message: why });
            }
            let Some(upstream) = settings.upstream() else {
                return Err(LlmError::Config(format!(
                    "provider {} needs a base URL",
                    settings.provider
                )));
            };
            // The sidecar talks to the provider through a private route of the meter.
            let route =
                shared
                    .meter
                    .route(upstream, price, self.budget.clone(), throttle.is_some());
            let body = call_body(&args, settings, &route.url);
            let (mut parse_failures, mut transient_failures) = (0, 0);
            loop {
                let endpoint = shared.endpoint(failed_generation).await?;
                attempts += 1;
                let outcome = match &mut throttle {
                    None => self.post(shared, function, &endpoint, &body).await,
                    Some(throttle) => {
                        throttle.attempt = attempts;
                        let streamed = StreamTry {
                            route: &route,
                            args: &args,
                            settings,
                            throttle,
                        };
                        self.stream(shared, function, &endpoint, &body, streamed)
                            .await
                    }
                };
                let mut unreachable = false;
                for attempt in route.take_attempts() {
                    unreachable |= attempt.status.is_none();
                    self.ledger.add(&attempt);
                }
                if let Some(why) = self.budget.take_refusal() {
                    return Err(LlmError::Budget { message: why });
                }
                let error = match outcome {
                    Outcome::Ok(raw) => match serde_json::from_value::<T>(raw.clone()) {
                        Ok(value) => {
                            return Ok(Called {
                                value,
                                raw,
                                function,
                                provider: settings.provider.clone(),
                                model: settings.model.clone(),
                                latency_ms: u64::try_from(started.elapsed().as_millis())
                                    .unwrap_or(u64::MAX),
                                attempts,
                            });
                        }
                        // BAML coerced the answer into its class, but a value does not fit
                        // the Rust mirror (e.g. a negative index): the model is at fault.
                        Err(e) => LlmError::Parse {
                            function,
                            message: format!("the answer does not fit the Rust type: {e}"),
                            raw_output: Some(tidy(&raw.to_string(), RAW_OUTPUT_CHARS)),
                        },
                    },
                    // The meter answers 502 when the provider cannot be reached at all.
                    Outcome::Failed(LlmError::Transient { message, .. }) if unreachable => {
                        LlmError::Transient {
                            status: None,
                            message,
                        }
                    }
                    Outcome::Failed(e) => e,
                    Outcome::Unreachable(generation, why) => {
                        if sidecar_failures < self.retry.sidecar_retries {
                            sidecar_failures += 1;
                            tracing::warn!(function, attempts, %why, "BAML sidecar unreachable; retrying once it is back");
                            failed_generation = Some(generation);
                            continue;
                        }
                        LlmError::Sidecar {
                            message: format!("unreachable: {why}"),
                        }
                    }
                };
                // The route's address is the meter's, never a secret, but keys are.
                let error = error.redacted(key);
                let next = match &error {
                    LlmError::Parse { message, .. }
                        if parse_failures < self.retry.parse_retries =>
                    {
                        parse_failures += 1;
                        tracing::warn!(function, attempts, %message, "model output did not parse; asking again");
                        self.notify(function, attempts, error.to_string(), Duration::ZERO);
                        Next::Retry
                    }
                    LlmError::Transient { status, message }
                        if transient_failures < self.retry.transient_retries =>
                    {
                        let base = self.retry.backoff * 2u32.saturating_pow(transient_failures);
                        // Jitter spreads the retries of many features hitting one rate limit.
                        let delay = base + base.mul_f64(rand::random::<f64>() * 0.5);
                        transient_failures += 1;
                        tracing::warn!(function, attempts, ?status, %message, ?delay, "transient LLM failure; retrying");
                        self.notify(function, attempts, error.to_string(), delay);
                        tokio::time::sleep(delay).await;
                        Next::Retry
                    }
                    LlmError::Transient { .. } if index + 1 < self.chain.len() => Next::Fallback,
                    _ => Next::Fail,
                };
                match next {
                    Next::Retry => {}
                    Next::Fallback => {
                        let to = &self.chain[index + 1];
                        tracing::warn!(function, attempts, from = %settings.provider, to = %to.provider, "provider keeps failing; falling back");
                        self.notify(
                            function,
                            attempts,
                            format!(
                                "{error}; falling back from {}/{} to {}/{}",
                                settings.provider, settings.model, to.provider, to.model
                            ),
                            Duration::ZERO,
                        );
                        last_error = Some(error);
                        break;
                    }
                    Next::Fail => return Err(error),
                }
            }
        }
        Err(last_error.unwrap_or(LlmError::NotConfigured))
    }

    /// One try through `/stream` (see `crate::stream`): partial values go to `throttle`
    /// until the metering proxy reports the provider request over; then `/call` judges
    /// the answer it kept, served by a replay route.
    async fn stream(
        &self,
        shared: &Shared,
        function: &'static str,
        endpoint: &crate::sidecar::Endpoint,
        body: &Value,
        StreamTry {
            route,
            args,
            settings,
            throttle,
        }: StreamTry<'_>,
    ) -> Outcome {
        let timeout = shared.config.call_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let mut ended = route.ended();
        ended.borrow_and_update();
        let sent = shared
            .http
            .post(format!("{}/stream/{function}", endpoint.base_url))
            .header("x-baml-api-key", &endpoint.password)
            .json(body)
            .send();
        let response = match tokio::time::timeout_at(deadline, sent).await {
            Err(_) => return Outcome::Failed(LlmError::Timeout { after: timeout }),
            Ok(Err(e)) => return Outcome::Unreachable(endpoint.generation, e.to_string()),
            Ok(Ok(r)) => r,
        };
        let status = response.status().as_u16();
        if status != 200 {
            // Refused before streaming (arguments, password): the same answers as `/call`.
            return match tokio::time::timeout_at(deadline, response.text()).await {
                Err(_) => Outcome::Failed(LlmError::Timeout { after: timeout }),
                Ok(Err(e)) => Outcome::Unreachable(endpoint.generation, e.to_string()),
                Ok(Ok(text)) => Outcome::Failed(classify(function, status, &text)),
            };
        }
        let mut events = EventReader::default();
        let mut chunks = response.bytes_stream();
        let broken = loop {
            let due = throttle.due();
            tokio::select! {
                // The provider request is over: its answer is what counts, not the stream.
                biased;
                _ = ended.changed() => break None,
                _ = tokio::time::sleep_until(deadline) => {
                    throttle.end_attempt();
                    return Outcome::Failed(LlmError::Timeout { after: timeout });
                }
                _ = tokio::time::sleep_until(due.unwrap_or(deadline)), if due.is_some() => {
                    throttle.flush(tokio::time::Instant::now());
                }
                chunk = chunks.next() => match chunk {
                    Some(Ok(bytes)) => {
                        for data in events.feed(&bytes) {
                            throttle.offer(data, tokio::time::Instant::now());
                        }
                    }
                    Some(Err(e)) => break Some(e.to_string()),
                    None => break Some(String::new()),
                },
            }
        };
        drop(chunks);
        throttle.end_attempt();
        if let Some(why) = broken {
            // The stream ended first. Normally the proxy is about to record the provider's
            // end (BAML may finish on the last event before the provider's connection
            // closes); if it never does, no provider request was made.
            let wait = tokio::time::Instant::now() + METER_GRACE;
            if !matches!(
                tokio::time::timeout_at(wait.min(deadline), ended.changed()).await,
                Ok(Ok(()))
            ) {
                if !why.is_empty() {
                    return Outcome::Unreachable(endpoint.generation, why);
                }
                // BAML gave up before asking the provider; `/call` says why.
                return self.post(shared, function, endpoint, body).await;
            }
        }
        let Some(answer) = route.take_answer() else {
            return Outcome::Failed(LlmError::Sidecar {
                message: format!("{function}: the metering proxy kept no answer to judge"),
            });
        };
        let replay = shared.meter.replay(answer);
        let body = call_body(args, settings, &replay.url);
        self.post(shared, function, endpoint, &body).await
    }

    async fn post(
        &self,
        shared: &Shared,
        function: &'static str,
        endpoint: &crate::sidecar::Endpoint,
        body: &Value,
    ) -> Outcome {
        let timeout = shared.config.call_timeout;
        let sent = shared
            .http
            .post(format!("{}/call/{function}", endpoint.base_url))
            .header("x-baml-api-key", &endpoint.password)
            .timeout(timeout)
            .json(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Outcome::Failed(LlmError::Timeout { after: timeout });
            }
            Err(e) => return Outcome::Unreachable(endpoint.generation, e.to_string()),
        };
        let status = response.status().as_u16();
        let text = match response.text().await {
            Ok(t) => t,
            Err(e) if e.is_timeout() => {
                return Outcome::Failed(LlmError::Timeout { after: timeout });
            }
            Err(e) => return Outcome::Unreachable(endpoint.generation, e.to_string()),
        };
        if status == 200 {
            return match serde_json::from_str(&text) {
                Ok(v) => Outcome::Ok(v),
                Err(e) => Outcome::Failed(LlmError::Sidecar {
                    message: format!("{function} answered 200 with a body that is not JSON: {e}"),
                }),
            };
        }
        Outcome::Failed(classify(function, status, &text))
    }
}

/// How long a stream that ended may wait for the proxy to record the provider's end.
const METER_GRACE: Duration = Duration::from_secs(5);

/// The body of a `/call` or `/stream` request: the function's arguments and the provider
/// settings, pointed at `url` (a route of the metering proxy).
fn call_body(args: &Map<String, Value>, settings: &LlmSettings, url: &str) -> Value {
    let mut routed = settings.clone();
    routed.base_url = Some(url.to_owned());
    let mut body = args.clone();
    body.insert(
        "__baml_options__".into(),
        json!({"client_registry": routed.client_registry()}),
    );
    Value::Object(body)
}

const RAW_OUTPUT_CHARS: usize = 4000;
const MESSAGE_CHARS: usize = 2000;

/// Turns a non-200 answer of `baml-cli serve` into an error. Its bodies look like
/// `{"error": "<kind>", "message": "...", ...}`; the kinds were found by experiment with
/// baml-cli 0.226.3:
/// - 500 `validation_failure` (+ `raw_output`): the model's output did not parse;
/// - 500 `internal_error` "Finish reason not allowed": a finish reason on our deny list;
/// - 502 `client_error` "Request failed with status code: NNN …": the provider's HTTP
///   error, or a transport error (no status) when the provider was unreachable;
/// - 400 `invalid_argument`: the arguments do not fit `baml_src/`;
/// - 403 (plain text): the sidecar password was wrong.
pub(crate) fn classify(function: &'static str, status: u16, text: &str) -> LlmError {
    let parsed: Option<Value> = serde_json::from_str(text).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v["error"].as_str())
        .unwrap_or("");
    let message = parsed
        .as_ref()
        .and_then(|v| v["message"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.to_owned());
    // BAML quotes the provider's message as a JSON string inside its own message.
    let message = serde_json::from_str::<String>(&message).unwrap_or(message);
    match (status, kind) {
        (_, "validation_failure") => LlmError::Parse {
            function,
            message: tidy(&message, MESSAGE_CHARS),
            raw_output: parsed
                .as_ref()
                .and_then(|v| v["raw_output"].as_str())
                .map(|s| tidy(s, RAW_OUTPUT_CHARS)),
        },
        (_, "internal_error") if message.contains("Finish reason not allowed") => {
            let reason = message
                .split("Finish Reason: ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .unwrap_or("unknown");
            LlmError::Refused {
                message: format!("{function}: the model stopped with finish reason `{reason}`"),
            }
        }
        (_, "client_error") => match provider_status(&message) {
            Some(s) if s == 408 || s == 409 || s == 429 || s >= 500 => LlmError::Transient {
                status: Some(s),
                message: tidy(&message, MESSAGE_CHARS),
            },
            Some(s) => LlmError::Rejected {
                status: s,
                message: tidy(&message, MESSAGE_CHARS),
            },
            // No HTTP status: the provider could not be reached (DNS, refused, reset).
            None => LlmError::Transient {
                status: None,
                message: tidy(&message, MESSAGE_CHARS),
            },
        },
        (403, _) => LlmError::Sidecar {
            message: format!("rejected builder's password: {}", tidy(&message, 200)),
        },
        _ => LlmError::Sidecar {
            message: format!(
                "{function} failed (HTTP {status}, {}): {}",
                if kind.is_empty() {
                    "no error kind"
                } else {
                    kind
                },
                tidy(&message, MESSAGE_CHARS)
            ),
        },
    }
}

/// The provider's HTTP status from BAML's "Request failed with status code: 429 …".
fn provider_status(message: &str) -> Option<u16> {
    let rest = message.split("status code: ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
