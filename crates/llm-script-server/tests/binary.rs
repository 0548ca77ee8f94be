//! The binary as a user runs it: `--port 0` announces its port on the first stdout line.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[tokio::test]
async fn binary_announces_its_port_and_answers_from_the_script_file() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"{"responses": [{"text": "from file"}]}"#).unwrap();
    let record = dir.path().join("rec.jsonl");
    let mut child = Command::new(env!("CARGO_BIN_EXE_llm-script-server"))
        .args(["--port", "0", "--script"])
        .arg(&script)
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let url = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");

    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .json(&serde_json::json!({"model": "m", "messages": []}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "from file");
    assert_eq!(std::fs::read_to_string(&record).unwrap().lines().count(), 1);
}

#[test]
fn binary_rejects_a_bad_script_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.json");
    std::fs::write(&script, r#"[{"text": "a", "status": 500}]"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_llm-script-server"))
        .arg("--script")
        .arg(&script)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("either `text` or `status`"), "{stderr}");
}
