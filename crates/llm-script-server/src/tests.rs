//! Real HTTP against the running server.

use crate::{Entry, Options, Script, fingerprint, start, start_with};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn openai_body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
    })
}

fn anthropic_body(prompt: &str, stream: bool) -> Value {
    json!({
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "messages": [{"role": "user", "content": prompt}],
    })
}

async fn post(url: String, key_header: (&str, &str), body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .header(key_header.0, key_header.1)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Splits an SSE body into (event name, data) pairs.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty())
        .map(|block| {
            let mut event = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = Some(e.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                } else {
                    panic!("unexpected SSE line {line:?}");
                }
            }
            (event, data)
        })
        .collect()
}

#[tokio::test]
async fn openai_non_streaming_has_the_exact_shape_and_records_the_key_hash() {
    let server = start(Script::new(vec![Entry::text("hello there")]))
        .await
        .unwrap();
    let url = format!("{}/chat/completions", server.openai_base_url());
    let resp = post(
        url,
        ("authorization", "Bearer sk-test-123"),
        &openai_body("hi", false),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = &v["usage"];
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );

    let recorded = server.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(
        recorded[0].headers["authorization"],
        format!("Bearer {}", fingerprint("sk-test-123"))
    );
    assert!(!format!("{recorded:?}").contains("sk-test-123"));
    assert_eq!(recorded[0].body["model"], "gpt-test");
    assert_eq!(recorded[0].entry, Some(0));
}

#[tokio::test]
async fn openai_streaming_sends_deltas_finish_usage_and_done() {
    let text = "a longer answer that spans several chunks of streamed text";
    let server = start(Script::new(vec![Entry::text(text)])).await.unwrap();
    let mut body = openai_body("hi", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = post(
        format!("{}/chat/completions", server.url()),
        ("authorization", "Bearer k"),
        &body,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(name, data)| {
            assert!(name.is_none());
            serde_json::from_str(data).unwrap()
        })
        .collect();
    assert!(chunks.len() > 4, "expected several chunks");
    let joined: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(joined, text);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter(|c| !c["choices"][0]["finish_reason"].is_null())
        .collect();
    assert_eq!(finish.len(), 1);
    assert_eq!(finish[0]["choices"][0]["finish_reason"], "stop");
    // As with OpenAI, usage comes only in the last chunk, and only because it was asked for.
    assert!(finish[0]["usage"].is_null());
    assert_eq!(chunks.last().unwrap()["choices"], json!([]));
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
}

#[tokio::test]
async fn anthropic_non_streaming_and_streaming() {
    let server = start(Script::new(vec![
        Entry::text("plain answer"),
        Entry::text("streamed answer, long enough for several deltas"),
    ]))
    .await
    .unwrap();
    let url = format!("{}/v1/messages", server.anthropic_base_url());

    let v: Value = post(
        url.clone(),
        ("x-api-key", "ak-1"),
        &anthropic_body("q", false),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "plain answer"}])
    );
    assert_eq!(v["model"], "claude-test");
    assert_eq!(v["stop_reason"], "end_turn");
    assert!(v["usage"]["input_tokens"].as_u64().unwrap() > 0);
    assert!(v["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let resp = post(url, ("x-api-key", "ak-1"), &anthropic_body("q", true)).await;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(&resp.text().await.unwrap());
    let names: Vec<String> = events.iter().map(|(n, _)| n.clone().unwrap()).collect();
    assert_eq!(names.first().unwrap(), "message_start");
    assert_eq!(names[1], "content_block_start");
    assert_eq!(
        names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let mut joined = String::new();
    for (name, data) in &events {
        let d: Value = serde_json::from_str(data).unwrap();
        assert_eq!(&d["type"], name.as_deref().unwrap());
        if name.as_deref() == Some("content_block_delta") {
            assert_eq!(d["delta"]["type"], "text_delta");
            joined.push_str(d["delta"]["text"].as_str().unwrap());
        }
        if name.as_deref() == Some("message_delta") {
            assert_eq!(d["delta"]["stop_reason"], "end_turn");
            assert!(d["usage"]["output_tokens"].as_u64().unwrap() > 0);
        }
    }
    assert_eq!(joined, "streamed answer, long enough for several deltas");
    let recorded = server.requests();
    assert_eq!(recorded[1].headers["x-api-key"], fingerprint("ak-1"));
}

#[tokio::test]
async fn errors_use_each_providers_shape_and_custom_bodies_verbatim() {
    let custom = json!({"error": {"message": "custom", "type": "x"}});
    let server = start(Script::new(vec![
        Entry::error(429),
        Entry::error(529),
        Entry::error_with_body(500, custom.clone()),
        Entry::text("refused").finish_reason("content_filter"),
    ]))
    .await
    .unwrap();
    let oa = format!("{}/chat/completions", server.openai_base_url());
    let an = format!("{}/v1/messages", server.url());

    let r = post(
        oa.clone(),
        ("authorization", "Bearer k"),
        &openai_body("q", false),
    )
    .await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());

    let r = post(an.clone(), ("x-api-key", "k"), &anthropic_body("q", true)).await;
    assert_eq!(r.status(), 529);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "overloaded_error");

    let r = post(an, ("x-api-key", "k"), &anthropic_body("q", false)).await;
    assert_eq!(r.status(), 500);
    assert_eq!(r.json::<Value>().await.unwrap(), custom);

    let r = post(oa, ("authorization", "Bearer k"), &openai_body("q", false)).await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
}

#[tokio::test]
async fn matchers_pick_the_next_unused_fitting_entry_then_the_script_is_exhausted() {
    let server = start(Script::new(vec![
        Entry::text("edits-1").when_contains("GenerateEdits"),
        Entry::text("plan").when_contains("PlanFeature"),
        Entry::text("fallback"),
        Entry::text("edits-2").when_contains("GenerateEdits"),
    ]))
    .await
    .unwrap();
    let url = format!("{}/chat/completions", server.openai_base_url());
    let ask = |prompt: &'static str| {
        let url = url.clone();
        async move {
            let r = post(
                url,
                ("authorization", "Bearer k"),
                &openai_body(prompt, false),
            )
            .await;
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (status, v)
        }
    };
    let content = |v: &Value| {
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .to_owned()
    };

    assert_eq!(content(&ask("task: PlanFeature").await.1), "plan");
    assert_eq!(content(&ask("task: GenerateEdits").await.1), "edits-1");
    // The unconditional entry comes before the second GenerateEdits entry.
    assert_eq!(content(&ask("task: GenerateEdits").await.1), "fallback");
    assert_eq!(content(&ask("task: GenerateEdits").await.1), "edits-2");
    assert_eq!(server.unused_entries(), 0);

    let (status, v) = ask("task: GenerateEdits").await;
    assert_eq!(status, 500);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("script exhausted"), "{message}");
    assert!(message.contains("4 entries, 4 used"), "{message}");
    let entries: Vec<Option<usize>> = server.requests().iter().map(|r| r.entry).collect();
    assert_eq!(entries, [Some(1), Some(0), Some(2), Some(3), None]);
}

#[tokio::test]
async fn matcher_needle_matches_decoded_prompt_text() {
    let server = start(Script::new(vec![
        Entry::text("yes").when_contains("line one\n\"quoted\""),
    ]))
    .await
    .unwrap();
    let r = post(
        format!("{}/v1/messages", server.url()),
        ("x-api-key", "k"),
        &anthropic_body("line one\n\"quoted\" rest", false),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn delay_holds_the_answer_back() {
    let server = start(Script::new(vec![Entry::text("late").delay_ms(300)]))
        .await
        .unwrap();
    let started = Instant::now();
    let r = post(
        format!("{}/v1/messages", server.url()),
        ("x-api-key", "k"),
        &anthropic_body("q", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn records_over_http_and_to_a_jsonl_file() {
    let dir = tempfile::tempdir().unwrap();
    let record = dir.path().join("requests.jsonl");
    let options = Options {
        port: 0,
        record: Some(record.clone()),
    };
    let server = start_with(Script::new(vec![Entry::text("a")]), options)
        .await
        .unwrap();
    post(
        format!("{}/v1/chat/completions", server.url()),
        ("authorization", "Bearer secret-1"),
        &openai_body("q", false),
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/unknown", server.url()))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let listed: Vec<crate::RecordedRequest> = reqwest::get(format!("{}/__requests", server.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, server.requests());
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[1].path, "/v1/unknown");
    assert_eq!(listed[1].body, json!("not json"));

    let lines: Vec<crate::RecordedRequest> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, listed);
    assert!(
        !std::fs::read_to_string(&record)
            .unwrap()
            .contains("secret-1")
    );
}

#[tokio::test]
async fn a_non_json_body_is_a_400_in_the_provider_shape() {
    let server = start(Script::new(vec![Entry::text("unused")]))
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .post(format!("{}/v1/messages", server.url()))
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(server.unused_entries(), 1);
}

#[tokio::test]
async fn chunk_delay_spaces_the_events_of_a_stream() {
    use futures::StreamExt;
    let text = "forty-eight characters of text, in three pieces";
    let server = start(Script::new(vec![
        Entry::text(text).chunk_delay_ms(150),
        Entry::text(text).chunk_delay_ms(150),
    ]))
    .await
    .unwrap();
    for (url, key, body) in [
        (
            format!("{}/chat/completions", server.openai_base_url()),
            ("authorization", "Bearer k"),
            openai_body("q", true),
        ),
        (
            format!("{}/v1/messages", server.url()),
            ("x-api-key", "k"),
            anthropic_body("q", true),
        ),
    ] {
        let started = Instant::now();
        let resp = post(url, key, &body).await;
        let mut stream = resp.bytes_stream();
        // Each piece of text arrives on its own, the next one a delay later.
        let mut arrivals = Vec::new();
        let mut seen = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk = String::from_utf8(chunk.unwrap().to_vec()).unwrap();
            // A text delta: Anthropic's `text_delta`, OpenAI's non-empty `content`.
            let anthropic_text = chunk.contains("text_delta");
            let openai_text =
                chunk.contains("\"content\":\"") && !chunk.contains("\"content\":\"\"");
            if anthropic_text || openai_text {
                arrivals.push(started.elapsed());
            }
            seen.push_str(&chunk);
        }
        assert!(arrivals.len() >= 3, "{arrivals:?}\n{seen}");
        for pair in arrivals.windows(2) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(100),
                "{arrivals:?}"
            );
        }
        assert!(started.elapsed() >= Duration::from_millis(150 * 4));
    }
}
