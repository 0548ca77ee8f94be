//! The one HTTP path every adapter uses: auth header, JSON in and out, status → error mapping,
//! token redaction, and a same-origin rule for pagination links.

use crate::tls::{ExtraRoots, is_certificate_error};
use crate::url::origin;
use crate::{ForgeError, ForgeKind};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Pages followed at most when looking for an existing pull request.
pub(crate) const MAX_PAGES: usize = 20;
/// Longest forge message kept in an error.
const MAX_MESSAGE: usize = 500;

pub(crate) struct Http {
    client: reqwest::Client,
    kind: ForgeKind,
    pub api_base: String,
    auth_name: HeaderName,
    auth_value: HeaderValue,
    /// Every form of the credential that could come back in a forge's answer: the token,
    /// and the header value it was sent in (Azure's is base64 of `:<token>`).
    secrets: Vec<String>,
}

pub(crate) struct Reply {
    pub headers: HeaderMap,
    pub body: Value,
}

impl Http {
    pub fn new(
        kind: ForgeKind,
        api_base: String,
        auth_name: HeaderName,
        auth_value: String,
        token: &str,
        roots: &ExtraRoots,
    ) -> Result<Http, ForgeError> {
        if token.trim().is_empty() {
            return Err(ForgeError::InvalidInput("the access token is empty".into()));
        }
        let mut secrets = vec![token.to_owned(), auth_value.clone()];
        if let Some((_, credential)) = auth_value.split_once(' ') {
            secrets.push(credential.to_owned());
        }
        secrets.retain(|s| !s.trim().is_empty());
        // Longest first, so one secret containing another is never half-revealed.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let mut auth_value = HeaderValue::from_str(&auth_value).map_err(|_| {
            ForgeError::InvalidInput(
                "the access token has characters not allowed in an HTTP header".into(),
            )
        })?;
        auth_value.set_sensitive(true);
        let builder = reqwest::Client::builder()
            .user_agent(concat!("builder-forge/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            // An https API root must stay https: never downgrade to plain http.
            .https_only(api_base.starts_with("https://"));
        let client = roots
            .apply(builder)
            .build()
            .map_err(|e| ForgeError::Network(format!("building the HTTP client: {e}")))?;
        Ok(Http {
            client,
            kind,
            api_base,
            auth_name,
            auth_value,
            secrets,
        })
    }

    /// `api_base` + `path` (path starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api_base)
    }

    /// Whether a link the forge handed back (pagination) may receive the token.
    pub fn same_origin(&self, url: &str) -> bool {
        origin(url) == origin(&self.api_base) && url.starts_with(&self.api_base)
    }

    /// Updates the request already open for the branch (`update`: method, its URL and the
    /// fields to set) or opens one by POSTing `create` to `open`; the forge's answer and
    /// whether it was opened.
    pub async fn update_or_open(
        &self,
        update: Option<(Method, String, Value)>,
        open: &str,
        create: Value,
    ) -> Result<(Value, bool), ForgeError> {
        Ok(match update {
            Some((method, url, fields)) => {
                (self.call(method, &url, Some(&fields)).await?.body, false)
            }
            None => (
                self.call(Method::POST, open, Some(&create)).await?.body,
                true,
            ),
        })
    }

    pub async fn call(
        &self,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Reply, ForgeError> {
        if !self.same_origin(url) {
            return Err(ForgeError::InvalidInput(
                "the forge pointed outside its API base; not following".into(),
            ));
        }
        tracing::debug!(forge = ?self.kind, %method, path = %&url[self.api_base.len()..], "forge request");
        let mut req = self
            .client
            .request(method, url)
            .header(self.auth_name.clone(), self.auth_value.clone())
            .header(reqwest::header::ACCEPT, accept(self.kind));
        if self.kind == ForgeKind::Github {
            req = req.header("X-GitHub-Api-Version", "2022-11-28");
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| self.network(e))?;
        let status = resp.status();
        // Azure DevOps answers a PAT it does not accept with 203 and its HTML sign-in page.
        if self.kind == ForgeKind::AzureDevops
            && status == StatusCode::NON_AUTHORITATIVE_INFORMATION
        {
            return Err(ForgeError::Auth(
                "Azure DevOps answered with its sign-in page: the token was not accepted".into(),
            ));
        }
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(|e| self.network(e))?;
        let body: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else if status.is_success() {
            serde_json::from_slice(&bytes).map_err(|e| {
                ForgeError::Network(format!(
                    "the forge answered {status} with invalid JSON: {e}"
                ))
            })?
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        if status.is_success() {
            return Ok(Reply { headers, body });
        }
        Err(self.error(status, &headers, &body))
    }

    fn network(&self, e: reqwest::Error) -> ForgeError {
        // reqwest's own text is only "error sending request"; the reason (refused
        // connection, untrusted certificate …) is further down the source chain.
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let cause_text = cause.to_string();
            if !text.contains(&cause_text) {
                text.push_str(": ");
                text.push_str(&cause_text);
            }
            source = cause.source();
        }
        let text = self.redact(&text);
        if is_certificate_error(&text) {
            return ForgeError::Tls(text);
        }
        ForgeError::Network(text)
    }

    fn redact(&self, s: &str) -> String {
        let mut out = s.to_owned();
        for secret in &self.secrets {
            out = out.replace(secret.as_str(), "[REDACTED]");
        }
        if out.len() > MAX_MESSAGE {
            let mut end = MAX_MESSAGE;
            while !out.is_char_boundary(end) {
                end -= 1;
            }
            out.truncate(end);
            out.push('…');
        }
        out
    }

    fn error(&self, status: StatusCode, headers: &HeaderMap, body: &Value) -> ForgeError {
        let header_u64 = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let github_exhausted = self.kind == ForgeKind::Github
            && status == StatusCode::FORBIDDEN
            && (headers
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes() == b"0")
                // secondary rate limits: 403 with Retry-After
                || headers.contains_key("retry-after"));
        if status == StatusCode::TOO_MANY_REQUESTS || github_exhausted {
            let retry_after_s = header_u64("retry-after").or_else(|| {
                let reset = header_u64("x-ratelimit-reset")?;
                let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
                Some(reset.saturating_sub(now))
            });
            return ForgeError::RateLimited { retry_after_s };
        }
        let message = self.redact(
            &forge_message(self.kind, body)
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("no message").to_owned()),
        );
        match status.as_u16() {
            401 | 403 => ForgeError::Auth(message),
            404 => ForgeError::NotFound(message),
            code => ForgeError::Api {
                status: code,
                message,
            },
        }
    }
}

fn accept(kind: ForgeKind) -> &'static str {
    match kind {
        ForgeKind::Github => "application/vnd.github+json",
        _ => "application/json",
    }
}

/// The forge's own error text: GitHub `message` + `errors`, GitLab `message` (string, list
/// or field map), Bitbucket `error.message`, Gitea `message`.
fn forge_message(kind: ForgeKind, body: &Value) -> Option<String> {
    if let Value::String(s) = body {
        return Some(s.trim().to_owned()).filter(|s| !s.is_empty());
    }
    match kind {
        ForgeKind::Github => {
            let mut msg = body.get("message")?.as_str()?.to_owned();
            if let Some(errors) = body.get("errors").and_then(Value::as_array) {
                let details: Vec<String> = errors
                    .iter()
                    .map(|e| match e.get("message").and_then(Value::as_str) {
                        Some(m) => m.to_owned(),
                        None => [
                            e.get("resource").and_then(Value::as_str),
                            e.get("field").and_then(Value::as_str),
                            e.get("code").and_then(Value::as_str),
                        ]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" "),
                    })
                    .collect();
                if !details.is_empty() {
                    msg = format!("{msg}: {}", details.join("; "));
                }
            }
            Some(msg)
        }
        ForgeKind::Gitlab => {
            let m = body.get("message").or_else(|| body.get("error"))?;
            Some(flatten(m))
        }
        ForgeKind::Bitbucket => {
            let err = body.get("error")?;
            let mut msg = err.get("message")?.as_str()?.to_owned();
            if let Some(detail) = err.get("detail").and_then(Value::as_str) {
                msg = format!("{msg}: {detail}");
            }
            Some(msg)
        }
        ForgeKind::Gitea | ForgeKind::AzureDevops => {
            Some(body.get("message")?.as_str()?.to_owned())
        }
    }
}

fn flatten(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(flatten).collect::<Vec<_>>().join("; "),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k} {}", flatten(v)))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

/// The `rel="next"` target of an RFC 8288 `Link` header (GitHub, GitLab, Gitea).
pub(crate) fn next_link(headers: &HeaderMap) -> Option<String> {
    let link = headers.get(reqwest::header::LINK)?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| target.to_owned())
    })
}

/// A required field of a forge's JSON answer.
pub(crate) fn field<'v>(body: &'v Value, path: &[&str]) -> Result<&'v Value, ForgeError> {
    let mut v = body;
    for key in path {
        v = v.get(key).ok_or_else(|| {
            ForgeError::Network(format!(
                "the forge's answer lacks the field {}",
                path.join(".")
            ))
        })?;
    }
    Ok(v)
}

pub(crate) fn u64_field(body: &Value, path: &[&str]) -> Result<u64, ForgeError> {
    field(body, path)?.as_u64().ok_or_else(|| {
        ForgeError::Network(format!("the forge's {} is not a number", path.join(".")))
    })
}

pub(crate) fn str_field(body: &Value, path: &[&str]) -> Result<String, ForgeError> {
    field(body, path)?
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| {
            ForgeError::Network(format!("the forge's {} is not a string", path.join(".")))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn messages_per_forge() {
        let gh = json!({"message": "Validation Failed", "errors": [{"resource": "PullRequest", "field": "head", "code": "invalid"}]});
        assert_eq!(
            forge_message(ForgeKind::Github, &gh).unwrap(),
            "Validation Failed: PullRequest head invalid"
        );
        let gl = json!({"message": ["Source branch \"x\" does not exist"]});
        assert_eq!(
            forge_message(ForgeKind::Gitlab, &gl).unwrap(),
            "Source branch \"x\" does not exist"
        );
        let bb =
            json!({"type": "error", "error": {"message": "Bad request", "detail": "no branch"}});
        assert_eq!(
            forge_message(ForgeKind::Bitbucket, &bb).unwrap(),
            "Bad request: no branch"
        );
    }

    #[test]
    fn parses_link_next() {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LINK,
            HeaderValue::from_static(
                "<https://x/a?page=1>; rel=\"prev\", <https://x/a?page=3>; rel=\"next\"",
            ),
        );
        assert_eq!(next_link(&h).as_deref(), Some("https://x/a?page=3"));
    }
}
