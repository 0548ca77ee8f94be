//! Runs `baml-cli test` on `baml_src/`: the functions' own test blocks (and their asserts),
//! against the scripted provider, so a prompt or schema change that breaks them fails here.

use llm_script_server::{Entry, Script};
use std::process::Command;

const ANALYSIS: &str = r#"{"summary": "add a route", "affected_files": ["src/main.rs"], "risks": [], "acceptance_interpretation": ["GET /health gives ok"]}"#;
const PLAN: &str = r#"{"summary": "one step", "steps": [{"index": 0, "description": "add the route", "step_type": "MODIFY_FILE", "target_files": ["src/main.rs"], "dependencies": []}], "affected_files": ["src/main.rs"]}"#;
const EDITS: &str = r#"{"summary": "adds health", "edits": [{"path": "src/main.rs", "action": "SEARCH_REPLACE", "search": "fn main() {}", "replace": "fn health() -> &'static str { \"ok\" }\nfn main() {}"}]}"#;
const REVIEW: &str = r#"{"approved": true, "reasons": ["the route returns ok"]}"#;

#[tokio::test(flavor = "multi_thread")]
async fn baml_cli_test_runs_the_functions_own_tests() {
    let server = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(EDITS).when_contains("Task: GenerateEdits"),
        Entry::text(REVIEW).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let baml_src = concat!(env!("CARGO_MANIFEST_DIR"), "/../../baml_src");
    // A scratch cwd: baml-cli reads `.env` files from its working directory upwards.
    let cwd = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking({
        let url = server.openai_base_url();
        let cwd = cwd.path().to_path_buf();
        move || {
            Command::new("baml-cli")
                .args(["test", "--from", baml_src])
                .current_dir(cwd)
                .env("BUILDER_BAML_TEST_BASE_URL", url)
                .output()
                .expect("baml-cli is installed (pip install baml-py==0.226.3)")
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "baml-cli test failed:\n{text}");
    assert_eq!(
        server.requests().len(),
        4,
        "each of the four test blocks called the model:\n{text}"
    );
    assert_eq!(server.unused_entries(), 0, "every scripted answer was used");
}
