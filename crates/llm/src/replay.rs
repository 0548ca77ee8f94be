//! Record and replay: every answer a feature got from the model, in order, as JSON lines.
//! A transcript kept as an artifact can be replayed with no LLM at all — to debug a
//! feature, or to check that a prompt or pipeline change still produces the same events.

use crate::LlmError;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// The artifact name the worker records under.
pub const TRANSCRIPT_FILE: &str = "llm-transcript.jsonl";

/// One line of a transcript.
pub fn transcript_line(function: &str, raw: &Value) -> String {
    serde_json::json!({ "function": function, "output": raw }).to_string()
}

/// Recorded answers, handed out per function in the order they were recorded.
#[derive(Debug)]
pub struct Replay {
    answers: Mutex<HashMap<String, VecDeque<Value>>>,
}

impl Replay {
    pub fn from_jsonl(text: &str) -> Result<Replay, LlmError> {
        let mut answers: HashMap<String, VecDeque<Value>> = HashMap::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let entry: Value = serde_json::from_str(line)
                .map_err(|e| LlmError::Config(format!("transcript line {}: {e}", n + 1)))?;
            let function = entry["function"].as_str().ok_or_else(|| {
                LlmError::Config(format!("transcript line {} has no function", n + 1))
            })?;
            answers
                .entry(function.to_string())
                .or_default()
                .push_back(entry["output"].clone());
        }
        Ok(Replay {
            answers: Mutex::new(answers),
        })
    }

    pub(crate) fn next(&self, function: &str) -> Result<Value, LlmError> {
        let mut answers = self
            .answers
            .lock()
            .map_err(|_| LlmError::Config("the replay transcript lock is poisoned".into()))?;
        answers
            .get_mut(function)
            .and_then(VecDeque::pop_front)
            .ok_or_else(|| {
                LlmError::Config(format!(
                    "the replay transcript has no further answer for {function}"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_come_back_per_function_in_order() {
        let text = [
            transcript_line("PlanFeature", &serde_json::json!({"n": 1})),
            transcript_line("GenerateEdits", &serde_json::json!({"n": 2})),
            transcript_line("GenerateEdits", &serde_json::json!({"n": 3})),
        ]
        .join("\n");
        let r = Replay::from_jsonl(&text).unwrap();
        assert_eq!(r.next("GenerateEdits").unwrap()["n"], 2);
        assert_eq!(r.next("PlanFeature").unwrap()["n"], 1);
        assert_eq!(r.next("GenerateEdits").unwrap()["n"], 3);
        let err = r.next("GenerateEdits").unwrap_err().to_string();
        assert!(err.contains("no further answer for GenerateEdits"), "{err}");
        assert!(Replay::from_jsonl("{not json").is_err());
        assert!(Replay::from_jsonl(r#"{"output": 1}"#).is_err());
    }
}
