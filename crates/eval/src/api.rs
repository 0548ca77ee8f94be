//! builder's public API as any client sees it: Connect with JSON over HTTP (unary calls as
//! plain JSON posts, the ListEvents stream as Connect envelopes).

use serde_json::{Value, json};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method}: {source}")]
    Http {
        method: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method}: HTTP {status}: {code}: {message}")]
    Rpc {
        method: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{method}: {reason}")]
    Protocol { method: String, reason: String },
}

#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

const FEATURES: &str = "builder.feature.v1.FeatureService";
const REPOSITORIES: &str = "builder.repository.v1.RepositoryService";

/// Connect's streaming envelope: one flag byte, a big-endian length, the message.
const END_STREAM: u8 = 0x02;
const COMPRESSED: u8 = 0x01;

impl Api {
    pub fn new(base: &str) -> Result<Api, ApiError> {
        let http = reqwest::Client::builder()
            // The server is on loopback; a proxy from the environment must not be in the way.
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|source| ApiError::Http {
                method: "client".into(),
                source,
            })?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    async fn unary(&self, method: &str, body: Value) -> Result<Value, ApiError> {
        let http = |source| ApiError::Http {
            method: method.to_string(),
            source,
        };
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(http)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(http)?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status != 200 {
            return Err(ApiError::Rpc {
                method: method.to_string(),
                status,
                code: value["code"].as_str().unwrap_or("unknown").to_string(),
                message: value["message"].as_str().unwrap_or(&text).to_string(),
            });
        }
        Ok(value)
    }

    /// Registers a repository; returns its id.
    pub async fn register(&self, name: &str, url: &str) -> Result<String, ApiError> {
        let method = format!("{REPOSITORIES}/Register");
        let v = self
            .unary(&method, json!({"name": name, "url": url}))
            .await?;
        id_of(&method, &v["repository"]["id"])
    }

    /// Submits a feature; returns its id.
    pub async fn create(&self, spec: Value) -> Result<String, ApiError> {
        let method = format!("{FEATURES}/Create");
        let v = self.unary(&method, json!({ "spec": spec })).await?;
        id_of(&method, &v["execution"]["id"])
    }

    /// The feature's execution (state, error, result, branches).
    pub async fn get(&self, id: &str) -> Result<Value, ApiError> {
        let v = self
            .unary(&format!("{FEATURES}/Get"), json!({"id": id}))
            .await?;
        Ok(v["execution"].clone())
    }

    pub async fn cancel(&self, id: &str, reason: &str) -> Result<(), ApiError> {
        self.unary(
            &format!("{FEATURES}/Cancel"),
            json!({"id": id, "reason": reason}),
        )
        .await
        .map(|_| ())
    }

    /// Every event the feature has so far (not following).
    pub async fn events(&self, id: &str) -> Result<Vec<Value>, ApiError> {
        let method = format!("{FEATURES}/ListEvents");
        let http = |source| ApiError::Http {
            method: method.clone(),
            source,
        };
        let message = json!({"featureExecutionId": id}).to_string().into_bytes();
        let mut body = Vec::with_capacity(message.len() + 5);
        body.push(0);
        body.extend_from_slice(&(message.len() as u32).to_be_bytes());
        body.extend_from_slice(&message);
        let resp = self
            .http
            .post(format!("{}/{method}", self.base))
            .header("content-type", "application/connect+json")
            .header("connect-protocol-version", "1")
            .body(body)
            .send()
            .await
            .map_err(http)?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(http)?;
        if status != 200 {
            let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            return Err(ApiError::Rpc {
                method,
                status,
                code: value["code"].as_str().unwrap_or("unknown").to_string(),
                message: value["message"].as_str().unwrap_or("").to_string(),
            });
        }
        decode_stream(&method, &bytes)
    }
}

fn id_of(method: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or_else(|| ApiError::Protocol {
            method: method.to_string(),
            reason: "the answer has no id".into(),
        })
}

/// The `event` of every message of a Connect JSON stream; the end-of-stream message's error,
/// if it has one, is the call's error.
pub fn decode_stream(method: &str, mut bytes: &[u8]) -> Result<Vec<Value>, ApiError> {
    let bad = |reason: String| ApiError::Protocol {
        method: method.to_string(),
        reason,
    };
    let mut events = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < 5 {
            return Err(bad("a truncated stream envelope".into()));
        }
        let flags = bytes[0];
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(payload) = bytes.get(5..5 + len) else {
            return Err(bad("a stream message longer than the body".into()));
        };
        bytes = &bytes[5 + len..];
        if flags & COMPRESSED != 0 {
            return Err(bad("a compressed message (none was asked for)".into()));
        }
        let value: Value = serde_json::from_slice(payload)
            .map_err(|e| bad(format!("a stream message is not JSON: {e}")))?;
        if flags & END_STREAM != 0 {
            if let Some(err) = value.get("error") {
                return Err(ApiError::Rpc {
                    method: method.to_string(),
                    status: 200,
                    code: err["code"].as_str().unwrap_or("unknown").to_string(),
                    message: err["message"].as_str().unwrap_or("").to_string(),
                });
            }
            return Ok(events);
        }
        if let Some(event) = value.get("event") {
            events.push(event.clone());
        }
    }
    Err(bad("the stream ended without its end message".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(flags: u8, v: Value) -> Vec<u8> {
        let m = v.to_string().into_bytes();
        let mut out = vec![flags];
        out.extend_from_slice(&(m.len() as u32).to_be_bytes());
        out.extend_from_slice(&m);
        out
    }

    #[test]
    fn decodes_messages_and_the_end_of_stream() {
        let mut body = envelope(0, json!({"event": {"type": "a"}}));
        body.extend(envelope(0, json!({"event": {"type": "b"}})));
        body.extend(envelope(END_STREAM, json!({})));
        let got = decode_stream("m", &body).unwrap();
        assert_eq!(got, [json!({"type": "a"}), json!({"type": "b"})]);

        let mut failed = envelope(0, json!({"event": {"type": "a"}}));
        failed.extend(envelope(
            END_STREAM,
            json!({"error": {"code": "not_found", "message": "no such feature"}}),
        ));
        let err = decode_stream("m", &failed).unwrap_err().to_string();
        assert!(err.contains("not_found: no such feature"), "{err}");
        let err = decode_stream("m", &body[..body.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(err.contains("longer than the body"), "{err}");
        let err = decode_stream("m", &envelope(0, json!({})))
            .unwrap_err()
            .to_string();
        assert!(err.contains("without its end"), "{err}");
    }
}
