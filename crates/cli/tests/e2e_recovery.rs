//! End-to-end recovery: cancelling, idempotent creates and retries, a killed server resuming, replays.

mod common;

use builder_testkit::read_branch_file;
use common::*;
use llm_script_server::{Entry, Script};
use serde_json::{Value, json};
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_running_feature() {
    let (_root, _bare, git) = repo_fixture();
    // The model takes its time: the feature sits in the LLM call when we cancel.
    let llm = llm_script_server::start(Script::new(vec![Entry::text(ANALYSIS).delay_ms(60_000)]))
        .await
        .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !types(&events(&server, &id))
        .iter()
        .any(|t| t == "llm.invocation.started")
    {
        assert!(Instant::now() < deadline, "never reached the LLM call");
        std::thread::sleep(Duration::from_millis(100));
    }
    // One writer per branch: while it runs, nobody else may claim its branch.
    let (_, current) = call(
        &server,
        "builder.feature.v1.FeatureService/Get",
        json!({"id": id}),
    );
    let branch = current["execution"]["featureBranch"]
        .as_str()
        .unwrap()
        .to_string();
    let second = json!({"spec": {"title": "Same branch", "description": "Wants to push the same branch at once.",
                                 "repositoryId": repo_id, "featureBranch": branch}});
    let (code, clash) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        second.clone(),
    );
    assert_eq!(
        (code, clash["code"].as_str()),
        (400, Some("failed_precondition")),
        "{clash}"
    );
    assert!(
        clash["message"].as_str().unwrap().contains("being written"),
        "{clash}"
    );

    let started = Instant::now();
    let (code, body) = call(
        &server,
        "builder.feature.v1.FeatureService/Cancel",
        json!({"id": id, "reason": "changed my mind"}),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["execution"]["state"], "CANCELLED");
    // Idempotent.
    let (code, _) = call(
        &server,
        "builder.feature.v1.FeatureService/Cancel",
        json!({"id": id}),
    );
    assert_eq!(code, 200);
    let execution = wait_terminal(&server, &id, Duration::from_secs(5));
    assert_eq!(execution["state"], "CANCELLED");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The worker stopped: no event after the cancellation, even after a moment.
    std::thread::sleep(Duration::from_millis(500));
    let events = events(&server, &id);
    assert_gapless(&events);
    assert_eq!(
        types(&events).last().map(String::as_str),
        Some("feature.cancelled")
    );
    let cancelled = events.last().unwrap();
    assert_eq!(
        cancelled["payload"]["remote_state"], "untouched: nothing was pushed",
        "{cancelled}"
    );
    assert_eq!(cancelled["payload"]["phase"], "analysis");
    // Once it ended, the branch is free again.
    let (code, answer) = call(&server, "builder.feature.v1.FeatureService/Create", second);
    assert_eq!(code, 200, "{answer}");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_is_idempotent_and_retry_links_a_new_execution() {
    let (_root, _bare, git) = repo_fixture();
    // No LLM: features fail fast at analysis, which is what Retry needs.
    let server = start_server(&[]);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let spec = json!({
        "title": "Idempotent",
        "description": "A request that a client sends twice.",
        "repositoryId": repo_id,
    });
    let body = json!({"spec": spec, "idempotencyKey": "client-key-1", "correlationId": "corr-42"});
    let (code, first) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        body.clone(),
    );
    assert_eq!(code, 200, "{first}");
    let (code, second) = call(&server, "builder.feature.v1.FeatureService/Create", body);
    assert_eq!(code, 200, "{second}");
    let id = first["execution"]["id"].as_str().unwrap().to_string();
    assert_eq!(
        second["execution"]["id"],
        id.as_str(),
        "the same key gives the same execution"
    );
    let (code, other) = call(
        &server,
        "builder.feature.v1.FeatureService/Create",
        json!({"spec": {"title": "Something else", "description": "A different request, same key.", "repositoryId": repo_id},
               "idempotencyKey": "client-key-1"}),
    );
    assert_eq!(
        (code, other["code"].as_str()),
        (409, Some("already_exists")),
        "{other}"
    );

    let (code, found) = call(
        &server,
        "builder.feature.v1.FeatureService/GetByCorrelation",
        json!({"correlationId": "corr-42"}),
    );
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["execution"]["id"], id.as_str());

    let failed = wait_terminal(&server, &id, Duration::from_secs(30));
    assert_eq!(failed["state"], "FAILED");
    let (code, retried) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(code, 200, "{retried}");
    let new_id = retried["execution"]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    let (_, again) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(
        again["execution"]["id"],
        new_id.as_str(),
        "Retry is idempotent"
    );
    let first_event = &events(&server, &new_id)[0];
    assert_eq!(first_event["payload"]["retry_of"], id.as_str());
    let (code, refused) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id, "fromStep": "verification"}),
    );
    assert_eq!(
        (code, refused["code"].as_str()),
        (501, Some("unimplemented")),
        "{refused}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_server_resumes_the_feature_and_pushes_once() {
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
        // The review is slow the first time: the process dies while waiting for it.
        Entry::text(APPROVE)
            .when_contains("Task: ValidateChange")
            .delay_ms(30_000),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !llm
        .requests()
        .iter()
        .any(|r| r.body.to_string().contains("Task: ValidateChange"))
    {
        assert!(
            Instant::now() < deadline,
            "never reached the review: {:?}",
            types(&events(&server, &id))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let server = server.kill_and_restart();
    let execution = wait_terminal(&server, &id, Duration::from_secs(90));
    assert_eq!(execution["state"], "COMPLETED", "{execution}");
    let events = events(&server, &id);
    assert_gapless(&events);
    let t = types(&events);
    assert_eq!(
        t.iter().filter(|x| *x == "push.completed").count(),
        1,
        "{t:?}"
    );
    assert_eq!(
        t.iter().filter(|x| *x == "commit.created").count(),
        1,
        "{t:?}"
    );
    let pushes = git
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("git-receive-pack"))
        .count();
    assert_eq!(pushes, 1, "pushed exactly once");
    let branch = execution["result"]["branchName"].as_str().unwrap();
    assert!(
        read_branch_file(&bare, branch, "calc.py")
            .unwrap()
            .contains("Hello")
    );
    assert_no_secrets(&server, &events);
}

/// Fault injection: several features at once, the server SIGKILLed at seeded random
/// moments and restarted each time. Whatever the timing, every feature ends, every stream
/// is gapless, and a delivered feature committed and pushed exactly once.
/// Reproduce a run with BUILDER_FAULT_SEED=<seed printed below>.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("BUILDER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_b11d);
    println!("fault-injection seed: {seed}");
    let mut state = seed;
    let mut next = move |bound: u64| {
        // SplitMix64: a fixed, seedable sequence.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    };
    const FEATURES: usize = 5;
    const KILLS: usize = 4;
    let (_root, bare, git) = repo_fixture();
    // An LLM that always has an answer, however often a step is redone. Entries are shared
    // by all features, so answers are chosen by what the prompt holds: a repair prompt
    // carries pytest's "'Hi Bob' == 'Hello, Bob!'" and gets the fix (listed first so it
    // wins); a first attempt gets the wrong edit.
    let rounds = FEATURES * (KILLS + 2);
    let mut entries = Vec::new();
    entries
        .extend((0..rounds).map(|_| Entry::text(FIX_EDIT).when_contains("Hi Bob").delay_ms(100)));
    for _ in 0..rounds {
        entries.push(
            Entry::text(ANALYSIS)
                .when_contains("Task: AnalyzeFeature")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(PLAN)
                .when_contains("Task: PlanFeature")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(WRONG_EDIT)
                .when_contains("Task: GenerateEdits")
                .delay_ms(100),
        );
        entries.push(
            Entry::text(APPROVE)
                .when_contains("Task: ValidateChange")
                .delay_ms(100),
        );
    }
    let llm = llm_script_server::start(Script::new(entries))
        .await
        .unwrap();
    let mut server = start_server(&llm_env(&llm));
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let ids: Vec<String> = (0..FEATURES).map(|_| create(&server, &repo_id)).collect();
    for kill in 0..KILLS {
        let wait = 300 + next(2_500);
        std::thread::sleep(Duration::from_millis(wait));
        println!("kill {kill} after {wait} ms");
        server = server.kill_and_restart();
    }
    for id in &ids {
        let execution = wait_terminal(&server, id, Duration::from_secs(180));
        let events = events(&server, id);
        assert_gapless(&events);
        let t = types(&events);
        assert_eq!(t[0], "feature.requested");
        assert_eq!(
            t.iter()
                .filter(|x| matches!(
                    x.as_str(),
                    "feature.delivered" | "feature.failed" | "feature.cancelled"
                ))
                .count(),
            1
        );
        if execution["state"] == "COMPLETED" {
            assert_eq!(
                t.iter().filter(|x| *x == "commit.created").count(),
                1,
                "{id}: {t:?}"
            );
            assert_eq!(
                t.iter().filter(|x| *x == "push.completed").count(),
                1,
                "{id}: {t:?}"
            );
            let branch = execution["result"]["branchName"].as_str().unwrap();
            let remote = Command::new("git")
                .arg("--git-dir")
                .arg(&bare)
                .args(["rev-parse", branch])
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&remote.stdout).trim(),
                execution["result"]["commitSha"].as_str().unwrap()
            );
        } else {
            println!(
                "{id} ended {}: {}",
                execution["state"], execution["error"]["message"]
            );
        }
    }
    let delivered = ids
        .iter()
        .filter(|id| wait_terminal(&server, id, Duration::from_secs(1))["state"] == "COMPLETED")
        .count();
    println!("{delivered}/{FEATURES} delivered across {KILLS} kills");
    assert_eq!(
        delivered, FEATURES,
        "an interrupted step resumes from its checkpoint, so every feature delivers"
    );
    let pushes = git
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("git-receive-pack"))
        .count();
    assert!(
        pushes >= delivered,
        "{pushes} pushes for {delivered} deliveries"
    );
}

/// Drops what legitimately differs between two runs of the same feature: ids, times,
/// shas of commits (they embed a time), branch names (they embed the feature id), the
/// provider's name and tool output with timings in it.
fn comparable(events: &[Value]) -> Vec<Value> {
    fn strip(v: &mut Value) {
        const VOLATILE: &[&str] = &[
            "duration_ms",
            "latency_ms",
            "head_sha",
            "base_sha",
            "sha",
            "commit_sha",
            "provider",
            "model",
            // A replay asks no model, so it spends nothing.
            "usage",
            "branch",
            "branch_name",
            "feature_branch",
            "target_branch",
            "output_tail",
            "output",
            "checkpoint",
            "repository_id",
            "url",
            "patch_url",
            "details",
            "message",
        ];
        match v {
            Value::Object(map) => {
                map.retain(|k, _| !VOLATILE.contains(&k.as_str()));
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    events
        .iter()
        // How many partial answers a streamed call shows depends on timing; a replay has none.
        .filter(|e| e["type"] != "llm.output.partial")
        // The baseline records itself as it runs, beside the steps: where its records fall,
        // and whether verification had to wait for it, depends on timing. Its records are
        // compared on their own (`baseline_records`).
        .filter(|e| e["payload"]["baseline"] != true && e["payload"]["resource"] != "baseline")
        .map(|e| {
            let mut payload = e["payload"].clone();
            strip(&mut payload);
            json!({"type": e["type"], "payload": payload})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recorded_feature_replays_without_an_llm_to_the_same_events() {
    let run = |env: Vec<(&'static str, String)>| async move {
        let (_root, _bare, git) = repo_fixture();
        let server = start_server(&env);
        let repo_id = register(&server, &git, GIT_PASSWORD);
        let id = create(&server, &repo_id);
        let execution = wait_terminal(&server, &id, Duration::from_secs(120));
        assert_eq!(execution["state"], "COMPLETED", "{execution}");
        let transcript = server
            ._data
            .path()
            .join("data/artifacts")
            .join(&id)
            .join("llm-transcript.jsonl");
        let transcript = std::fs::read_to_string(transcript).expect("the transcript artifact");
        (events(&server, &id), transcript)
    };
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(FIX_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let (recorded, transcript) = run(llm_env(&llm)).await;
    assert_eq!(
        transcript.lines().count(),
        5,
        "one line per LLM call:\n{transcript}"
    );
    assert!(!transcript.contains(LLM_KEY));

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &transcript).unwrap();
    // No BAML_CLIENT_* at all: every answer comes from the transcript.
    let (replayed, _) = run(vec![(
        "BUILDER_LLM_REPLAY",
        file.path().display().to_string(),
    )])
    .await;
    assert_eq!(comparable(&replayed), comparable(&recorded));
    let baseline_records = |events: &[Value]| {
        let only: Vec<Value> = events
            .iter()
            .filter(|e| e["payload"]["baseline"] == true)
            .cloned()
            .collect();
        assert!(!only.is_empty(), "the baseline ran");
        comparable(
            &only
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    e["payload"]["baseline"] = json!("yes");
                    e
                })
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(baseline_records(&replayed), baseline_records(&recorded));
    let providers: Vec<&Value> = replayed
        .iter()
        .filter(|e| e["type"] == "llm.invocation.started")
        .map(|e| &e["payload"]["provider"])
        .collect();
    assert!(providers.iter().all(|p| *p == "replay"), "{providers:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_starts_from_the_failed_step_and_reuses_analysis_and_plan() {
    let (_root, bare, git) = repo_fixture();
    let llm = llm_script_server::start(Script::new(vec![
        Entry::text(ANALYSIS).when_contains("Task: AnalyzeFeature"),
        Entry::text(PLAN).when_contains("Task: PlanFeature"),
        Entry::text(WRONG_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(RIGHT_EDIT).when_contains("Task: GenerateEdits"),
        Entry::text(APPROVE).when_contains("Task: ValidateChange"),
    ]))
    .await
    .unwrap();
    let mut env = llm_env(&llm);
    env.push(("BUILDER_MAX_REPAIR_ITERATIONS", "0".into()));
    let server = start_server(&env);
    let repo_id = register(&server, &git, GIT_PASSWORD);
    let id = create(&server, &repo_id);
    let failed = wait_terminal(&server, &id, Duration::from_secs(120));
    assert_eq!(failed["error"]["code"], "TEST_FAILED", "{failed}");

    let (code, refused) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id, "fromStep": "nonsense"}),
    );
    assert_eq!(
        (code, refused["code"].as_str()),
        (400, Some("invalid_argument")),
        "{refused}"
    );
    let (code, retried) = call(
        &server,
        "builder.feature.v1.FeatureService/Retry",
        json!({"id": id}),
    );
    assert_eq!(code, 200, "{retried}");
    let new_id = retried["execution"]["id"].as_str().unwrap().to_string();
    let done = wait_terminal(&server, &new_id, Duration::from_secs(120));
    assert_eq!(done["state"], "COMPLETED", "{done}");
    let events = events(&server, &new_id);
    assert_gapless(&events);
    assert_eq!(events[0]["payload"]["retry_from"], "execution");
    let asked: Vec<String> = events
        .iter()
        .filter(|e| e["type"] == "llm.invocation.started")
        .map(|e| e["payload"]["function"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        asked,
        ["GenerateEdits", "ValidateChange"],
        "analysis and plan were taken over, not asked again"
    );
    let branch = done["result"]["branchName"].as_str().unwrap();
    assert!(
        read_branch_file(&bare, branch, "calc.py")
            .unwrap()
            .contains("Hello")
    );
}
