//! The sidecar's output never carries a prompt or an answer into builder's log: a real
//! `baml-cli serve` is given a prompt and an answer holding marker strings while builder's
//! log records everything down to TRACE, and an operator's `BAML_LOG=trace` asks BAML to
//! print all it can.

use super::{Forward, classify};
use crate::sidecar_tests::{config, fresh_key, openai, request};
use crate::{RepoContext, Sidecar, SourceFile};
use llm_script_server::{Entry, Script, start};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

/// Every event and span field, as text: what any log formatter could have written.
#[derive(Clone, Default)]
struct Capture {
    text: Arc<Mutex<String>>,
    next_span: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={value}", field.name());
    }
}

impl Capture {
    fn push(&self, meta: &Metadata<'_>, record: impl FnOnce(&mut Fields<'_>)) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = write!(text, "{} {}:", meta.level(), meta.target());
        record(&mut Fields(&mut text));
        text.push('\n');
    }

    fn text(&self) -> String {
        self.text
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::TRACE)
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        self.push(span.metadata(), |f| span.record(f));
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed) + 1)
    }
    fn record(&self, _: &Id, values: &Record<'_>) {
        let mut text = self.text.lock().unwrap_or_else(PoisonError::into_inner);
        values.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        self.push(event.metadata(), |f| event.record(f));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

const CHILD: &str = "BUILDER_LLM_LOG_CHILD";

/// Runs in a child process of this test binary so that the capturing subscriber can be the
/// process's global one (the sidecar's output is read on spawned tasks) and `BAML_LOG` can
/// be set in a real environment.
#[test]
fn prompts_and_answers_never_reach_builders_log() {
    if std::env::var_os(CHILD).is_some() {
        let capture = Capture::default();
        tracing::subscriber::set_global_default(capture.clone()).unwrap();
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(in_child(&capture));
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sidecar::log_tests::prompts_and_answers_never_reach_builders_log",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("BAML_LOG", "trace")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("1 passed"), "{stdout}");
}

async fn in_child(capture: &Capture) {
    let prompt_marker = format!("PROMPT-MARKER-{}", fresh_key());
    let answer_marker = format!("ANSWER-MARKER-{}", fresh_key());
    let answer = format!(
        r#"{{"summary": "{answer_marker}", "affected_files": ["src/main.rs"], "risks": [], "acceptance_interpretation": []}}"#
    );
    // BAML logs a failed call with its prompt and raw answer even at `warn`.
    let unparsable = format!("no JSON, only {answer_marker}");
    let server = start(Script::new(vec![
        Entry::text(&answer),
        Entry::text(&unparsable),
        Entry::text(&unparsable),
        Entry::text(&unparsable),
        Entry::text(&unparsable),
    ]))
    .await
    .unwrap();
    let sidecar = Sidecar::start(config()).await.unwrap();
    // BAML's prompt logging is off whatever builder's environment asked for.
    let environ = std::fs::read(format!("/proc/{}/environ", sidecar.pid().unwrap())).unwrap();
    let baml_log: Vec<&[u8]> = environ
        .split(|b| *b == 0)
        .filter(|v| v.starts_with(b"BAML_LOG="))
        .collect();
    assert_eq!(baml_log, [b"BAML_LOG=warn"]);
    let mut req = request();
    req.description = format!("please keep {prompt_marker} in mind");
    let ctx = RepoContext {
        languages: vec!["rust".into()],
        build_command: None,
        test_command: None,
        file_tree: vec!["src/main.rs".into()],
        files: vec![SourceFile {
            path: "src/main.rs".into(),
            content: format!("const DB_PASSWORD: &str = \"{prompt_marker}\";\n"),
        }],
    };
    let client = sidecar.client(openai(&server, &fresh_key()));
    let called = client.analyze(&req, &ctx).await.unwrap();
    assert_eq!(called.value.summary, answer_marker);
    let failed = client.analyze(&req, &ctx).await;
    assert!(
        matches!(failed, Err(crate::LlmError::Parse { .. })),
        "{failed:?}"
    );
    // The provider did get the prompt: the marker's absence below is the log's doing.
    assert!(
        server.requests()[0]
            .body
            .to_string()
            .contains(&prompt_marker),
        "{:?}",
        server.requests()
    );
    sidecar.shutdown().await;
    // The forwarding tasks read until the pipes close; give them time to drain.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = capture.text();
    for marker in [&prompt_marker, &answer_marker] {
        let leaked: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(marker.as_str()))
            .collect();
        assert!(leaked.is_empty(), "{marker} reached the log:\n{leaked:#?}");
    }
    // What is useful still arrives: startup output as it is (here BAML's answer to the
    // password check, which comes before the sidecar is handed out) and, for the failed
    // call, which function it was.
    let sidecar_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("builder_llm::sidecar"))
        .collect();
    assert!(
        sidecar_lines
            .iter()
            .any(|l| l.contains("[BAML ERROR] Function BuilderPasswordCheck:")),
        "{sidecar_lines:#?}"
    );
    assert!(
        sidecar_lines
            .iter()
            .any(|l| l.contains("logged a call") && l.contains("function=AnalyzeFeature")),
        "{sidecar_lines:#?}"
    );
}

#[test]
fn sidecar_lines_are_shown_in_full_only_before_it_serves() {
    let head = "2026-12-06T05:16:28.381 [BAML WARN] Function AnalyzeFeature:";
    let prompt = "    const DB_PASSWORD = \"hunter2\";";
    let other = "2026-12-06T05:16:28.381 [BAML ERROR] Failed to parse: hunter2";
    let panic = "thread 'tokio-runtime-worker' panicked at src/x.rs:1:1: hunter2";
    for line in [head, prompt, other, panic] {
        assert_eq!(classify(line, false), Forward::Verbatim(line));
    }
    assert_eq!(
        classify(head, true),
        Forward::Call {
            function: "AnalyzeFeature",
            level: "WARN"
        }
    );
    assert_eq!(
        classify(other, true),
        Forward::Entry {
            level: "ERROR",
            bytes: "Failed to parse: hunter2".len()
        }
    );
    assert_eq!(classify(prompt, true), Forward::Withheld);
    assert_eq!(classify(panic, true), Forward::Withheld);
    // A head that names more than a function is not taken for a call's.
    let odd = "2026-12-06T05:16:28.381 [BAML WARN] Function x = hunter2:";
    assert!(matches!(classify(odd, true), Forward::Entry { .. }));
    // Text that only looks like a head further into the line is still withheld.
    let fake = "    x [BAML WARN] Function AnalyzeFeature:";
    assert_eq!(classify(fake, true), Forward::Withheld);
}
