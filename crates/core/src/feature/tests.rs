use super::*;
use crate::event::{ErrorCode, PlanStep};
use crate::ids::RepositoryId;
use crate::spec::FeatureConstraints;
use uuid::Uuid;

fn spec() -> FeatureSpec {
    FeatureSpec {
        title: "Add greeting".into(),
        description: "Add a greet function to the library.".into(),
        repository_id: RepositoryId(Uuid::from_u128(9)),
        target_branch: String::new(),
        feature_branch: String::new(),
        acceptance_criteria: vec![],
        path_hints: vec![],
        constraints: FeatureConstraints::default(),
        properties: Default::default(),
    }
}

fn requested(max_iterations: u32) -> Event {
    Event::FeatureRequested {
        spec: spec(),
        target_branch: "main".into(),
        feature_branch: "builder/add-greeting-00000000".into(),
        max_iterations,
        idempotency_key: String::new(),
        retry_of: None,
        retry_from: String::new(),
    }
}

fn plan() -> ExecutionPlan {
    ExecutionPlan {
        steps: vec![PlanStep {
            index: 0,
            description: "edit lib".into(),
            step_type: "MODIFY_FILE".into(),
            target_files: vec!["src/lib.rs".into()],
            dependencies: vec![],
        }],
        affected_files: vec!["src/lib.rs".into()],
        summary: "one step".into(),
    }
}

/// Builds a stream through `prepare`, the same door the worker uses.
fn stream(events: Vec<Event>) -> Result<(Feature, Vec<EventEnvelope>), TransitionError> {
    let mut counter = 0u128;
    let mut next_id = move || {
        counter += 1;
        Uuid::from_u128(counter)
    };
    let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
    let mut iter = events.into_iter();
    let first = iter.next().expect("at least one event");
    let (ty, payload) = first.to_parts().unwrap();
    let env = EventEnvelope {
        event_id: next_id(),
        feature_id: FeatureId(Uuid::from_u128(1)),
        sequence: 1,
        event_type: ty,
        schema_version: SCHEMA_VERSION,
        timestamp: now,
        causation_id: None,
        correlation_id: "corr".into(),
        payload,
        metadata: Default::default(),
        global_position: 0,
    };
    let mut feature = Feature::from_events(std::slice::from_ref(&env))?;
    let mut all = vec![env];
    for event in iter {
        let mut ctx = NewEvent {
            now,
            causation_id: None,
            producer: "test",
            next_id: &mut next_id,
        };
        let t = feature.prepare(vec![event], &mut ctx)?;
        feature = t.feature;
        all.extend(t.envelopes);
    }
    Ok((feature, all))
}

fn happy_prefix() -> Vec<Event> {
    vec![
        requested(2),
        Event::AnalysisStarted {},
        Event::RepositoryCloneStarted {
            url: "file:///x".into(),
            branch: "main".into(),
        },
        Event::RepositoryCloneCompleted {
            head_sha: "abc".into(),
            duration_ms: 3,
        },
        Event::CodebaseAnalyzed {
            languages: vec!["rust".into()],
            build_command: None,
            test_command: Some("cargo test".into()),
            command_source: "detected".into(),
            file_count: 3,
            reasons: vec![],
            deps_command: None,
        },
        Event::AnalysisCompleted { duration_ms: 5 },
        Event::PlanningStarted {},
        Event::LlmInvocationStarted {
            function: "PlanFeature".into(),
            provider: "openai".into(),
            model: "m".into(),
        },
        Event::PlanGenerated { plan: plan() },
        Event::ExecutionStarted { iteration: 1 },
        Event::StepStarted {
            iteration: 1,
            index: 0,
            description: "edit".into(),
            checkpoint: None,
        },
        Event::FileModified {
            path: "src/lib.rs".into(),
            action: "MODIFY".into(),
            before_sha256: None,
            after_sha256: None,
        },
        Event::StepCompleted {
            iteration: 1,
            index: 0,
        },
        Event::ExecutionCompleted {
            iteration: 1,
            files_changed: 1,
        },
        Event::VerificationStarted { iteration: 1 },
    ]
}

fn delivery() -> Vec<Event> {
    vec![
        Event::BranchCreated {
            branch: "b".into(),
            base_sha: "abc".into(),
        },
        Event::CommitCreated {
            sha: "def".into(),
            message: "m".into(),
            files_changed: 1,
            lines_added: 1,
            lines_removed: 0,
        },
        Event::PushStarted {
            branch: "b".into(),
            sha: "def".into(),
        },
        Event::PushCompleted {
            branch: "b".into(),
            sha: "def".into(),
            already_present: false,
        },
        Event::FeatureDelivered {
            result: DeliveryResult::default(),
        },
    ]
}

fn failed_verification(iteration: u32) -> Event {
    Event::VerificationFailed {
        iteration,
        reason: "tests failed".into(),
        output: "assertion failed".into(),
    }
}

#[test]
fn next_steps_along_the_happy_path() {
    let events = happy_prefix();
    let expectations = [
        (1, NextStep::Analyze),
        (2, NextStep::Analyze),
        (6, NextStep::Plan),
        (7, NextStep::Plan),
        (9, NextStep::Execute { iteration: 1 }),
        (10, NextStep::Execute { iteration: 1 }),
        (14, NextStep::Verify { iteration: 1 }),
        (15, NextStep::Verify { iteration: 1 }),
    ];
    for (n, expected) in expectations {
        let (f, _) = stream(events[..n].to_vec()).unwrap();
        assert_eq!(f.next_step(), expected, "after {n} events");
    }
}

#[test]
fn delivers_after_passing_verification() {
    let mut events = happy_prefix();
    events.push(Event::VerificationPassed {
        iteration: 1,
        summary: "ok".into(),
    });
    let (f, _) = stream(events.clone()).unwrap();
    assert_eq!(f.next_step(), NextStep::Deliver);
    events.extend(delivery());
    let (f, envs) = stream(events).unwrap();
    assert_eq!(f.state, FeatureState::Completed);
    assert_eq!(f.next_step(), NextStep::Done);
    assert!(f.completed_at.is_some());
    assert_eq!(f.percent_complete(), 100);
    // Gapless from 1.
    for (i, e) in envs.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1);
    }
}

#[test]
fn repair_loop_is_bounded_by_max_iterations() {
    let mut events = happy_prefix();
    events.push(failed_verification(1));
    let (f, _) = stream(events.clone()).unwrap();
    assert_eq!(f.next_step(), NextStep::Repair { iteration: 2 });
    assert!(
        f.last_failure
            .as_deref()
            .unwrap()
            .contains("assertion failed")
    );

    for iteration in 2..=3 {
        events.push(Event::IterationStarted {
            iteration,
            reason: "tests failed".into(),
        });
        let (f, _) = stream(events.clone()).unwrap();
        assert_eq!(f.state, FeatureState::Verifying);
        assert_eq!(f.next_step(), NextStep::Execute { iteration });
        events.push(Event::ExecutionStarted { iteration });
        events.push(Event::ExecutionCompleted {
            iteration,
            files_changed: 1,
        });
        events.push(Event::VerificationStarted { iteration });
        events.push(failed_verification(iteration));
    }
    let (f, _) = stream(events.clone()).unwrap();
    assert_eq!(f.iteration, 3);
    assert_eq!(f.next_step(), NextStep::GiveUp);
    // A fourth attempt is refused by the machine itself.
    let mut over = events.clone();
    over.push(Event::IterationStarted {
        iteration: 4,
        reason: "again".into(),
    });
    assert!(stream(over).is_err());

    events.push(Event::FeatureFailed {
        error: ExecutionError {
            code: ErrorCode::TestFailed,
            message: "gave up".into(),
            details: String::new(),
            retryable: false,
            failed_step: "verification".into(),
        },
    });
    let (f, _) = stream(events).unwrap();
    assert_eq!(f.state, FeatureState::Failed);
    assert_eq!(f.error.as_ref().unwrap().code, ErrorCode::TestFailed);
}

#[test]
fn a_repair_that_passes_delivers() {
    let mut events = happy_prefix();
    events.push(failed_verification(1));
    events.push(Event::IterationStarted {
        iteration: 2,
        reason: "r".into(),
    });
    events.push(Event::ExecutionStarted { iteration: 2 });
    events.push(Event::ExecutionCompleted {
        iteration: 2,
        files_changed: 1,
    });
    events.push(Event::VerificationStarted { iteration: 2 });
    events.push(Event::VerificationPassed {
        iteration: 2,
        summary: "ok".into(),
    });
    events.push(Event::IterationCompleted {
        iteration: 2,
        outcome: "passed".into(),
    });
    events.extend(delivery());
    let (f, _) = stream(events).unwrap();
    assert_eq!(f.state, FeatureState::Completed);
}

#[test]
fn cancel_and_fail_are_legal_from_every_non_terminal_state() {
    let prefix = happy_prefix();
    for n in 1..=prefix.len() {
        for end in [
            Event::FeatureCancelled {
                reason: "user".into(),
                phase: "x".into(),
                remote_state: String::new(),
            },
            Event::FeatureFailed {
                error: ExecutionError {
                    code: ErrorCode::Internal,
                    message: "x".into(),
                    details: String::new(),
                    retryable: true,
                    failed_step: String::new(),
                },
            },
        ] {
            let mut events = prefix[..n].to_vec();
            events.push(end);
            let (f, _) = stream(events).unwrap();
            assert!(f.state.is_terminal());
            assert_eq!(f.next_step(), NextStep::Done);
        }
    }
}

#[test]
fn terminal_states_accept_nothing() {
    let ends = [
        Event::FeatureCancelled {
            reason: "user".into(),
            phase: "x".into(),
            remote_state: String::new(),
        },
        Event::FeatureFailed {
            error: ExecutionError {
                code: ErrorCode::Internal,
                message: "x".into(),
                details: String::new(),
                retryable: false,
                failed_step: String::new(),
            },
        },
    ];
    for end in ends {
        for after in [
            Event::AnalysisStarted {},
            Event::FeatureCancelled {
                reason: "again".into(),
                phase: "x".into(),
                remote_state: String::new(),
            },
            Event::PlanningStarted {},
        ] {
            let err = stream(vec![requested(1), end.clone(), after]).unwrap_err();
            assert!(err.reason.contains("ended"), "{err}");
        }
    }
    let mut delivered = happy_prefix();
    delivered.push(Event::VerificationPassed {
        iteration: 1,
        summary: "ok".into(),
    });
    delivered.extend(delivery());
    delivered.push(Event::FeatureCancelled {
        reason: "late".into(),
        phase: "x".into(),
        remote_state: String::new(),
    });
    assert!(stream(delivered).is_err());
}

#[test]
fn illegal_transitions_are_refused() {
    let p = happy_prefix();
    let cases: Vec<(Vec<Event>, Event)> = vec![
        // Skipping analysis.
        (p[..1].to_vec(), Event::PlanningStarted {}),
        (p[..2].to_vec(), Event::PlanningStarted {}),
        (p[..1].to_vec(), Event::ExecutionStarted { iteration: 1 }),
        (p[..1].to_vec(), Event::VerificationStarted { iteration: 1 }),
        (
            p[..1].to_vec(),
            Event::RepositoryCloneStarted {
                url: "u".into(),
                branch: "b".into(),
            },
        ),
        // A second request.
        (p[..3].to_vec(), requested(1)),
        // Executing without a plan.
        (p[..7].to_vec(), Event::ExecutionStarted { iteration: 1 }),
        // An empty plan.
        (
            p[..7].to_vec(),
            Event::PlanGenerated {
                plan: ExecutionPlan::default(),
            },
        ),
        // Wrong first iteration.
        (p[..9].to_vec(), Event::ExecutionStarted { iteration: 2 }),
        // Verifying before execution completed.
        (
            p[..11].to_vec(),
            Event::VerificationStarted { iteration: 1 },
        ),
        // Repair without a failed verification.
        (
            p.clone(),
            Event::IterationStarted {
                iteration: 2,
                reason: "r".into(),
            },
        ),
        // Delivering before verification.
        (
            p.clone(),
            Event::CommitCreated {
                sha: "s".into(),
                message: "m".into(),
                files_changed: 0,
                lines_added: 0,
                lines_removed: 0,
            },
        ),
        (
            p.clone(),
            Event::FeatureDelivered {
                result: DeliveryResult::default(),
            },
        ),
        // Stale iteration numbers.
        (
            p.clone(),
            Event::VerificationPassed {
                iteration: 2,
                summary: String::new(),
            },
        ),
        (
            p[..9].to_vec(),
            Event::FileModified {
                path: "x".into(),
                action: "CREATE".into(),
                before_sha256: None,
                after_sha256: None,
            },
        ),
    ];
    for (prefix, event) in cases {
        let ty = event.event_type();
        let mut events = prefix;
        events.push(event);
        assert!(stream(events).is_err(), "{ty} should be refused");
    }
    // The LLM events are fine while analysing, but not while pending.
    assert!(
        stream(vec![
            requested(1),
            Event::LlmInvocationStarted {
                function: "f".into(),
                provider: "p".into(),
                model: "m".into()
            }
        ])
        .is_err()
    );
}

#[test]
fn delivery_requires_the_recorded_commit_to_be_pushed() {
    let mut events = happy_prefix();
    events.push(Event::VerificationPassed {
        iteration: 1,
        summary: "ok".into(),
    });
    events.push(Event::CommitCreated {
        sha: "def".into(),
        message: "m".into(),
        files_changed: 1,
        lines_added: 1,
        lines_removed: 0,
    });
    let mut wrong = events.clone();
    wrong.push(Event::PushCompleted {
        branch: "b".into(),
        sha: "other".into(),
        already_present: false,
    });
    assert!(stream(wrong).is_err());
    let mut unpushed = events.clone();
    unpushed.push(Event::FeatureDelivered {
        result: DeliveryResult::default(),
    });
    assert!(stream(unpushed).is_err());
}

#[test]
fn apply_refuses_gaps_and_reordering() {
    let (_, envs) = stream(happy_prefix()[..4].to_vec()).unwrap();
    let mut gap = envs.clone();
    gap.remove(2);
    assert!(Feature::from_events(&gap).is_err());
    let mut swapped = envs.clone();
    swapped.swap(1, 2);
    assert!(Feature::from_events(&swapped).is_err());
    assert!(
        Feature::from_events(&envs[1..]).is_err(),
        "must start with feature.requested"
    );
    assert!(Feature::from_events(&[]).is_err());
    let f = Feature::from_events(&envs).unwrap();
    assert_eq!(f.version, 4);
}

#[test]
fn prepare_is_all_or_nothing() {
    let (f, _) = stream(happy_prefix()[..2].to_vec()).unwrap();
    let mut n = 0u128;
    let mut next_id = || {
        n += 1;
        Uuid::from_u128(1000 + n)
    };
    let mut ctx = NewEvent {
        now: f.updated_at,
        causation_id: None,
        producer: "t",
        next_id: &mut next_id,
    };
    let bad = f.prepare(
        vec![
            Event::AnalysisCompleted { duration_ms: 1 },
            Event::ExecutionStarted { iteration: 1 },
        ],
        &mut ctx,
    );
    assert!(bad.is_err());
    let good = f
        .prepare(
            vec![
                Event::AnalysisCompleted { duration_ms: 1 },
                Event::PlanningStarted {},
            ],
            &mut ctx,
        )
        .unwrap();
    assert_eq!(
        good.envelopes
            .iter()
            .map(|e| e.sequence)
            .collect::<Vec<_>>(),
        vec![3, 4]
    );
    assert_eq!(good.feature.state, FeatureState::Planning);
    assert_eq!(good.envelopes[0].correlation_id, "corr");
}

#[test]
fn states_round_trip_their_names() {
    for s in [
        FeatureState::Pending,
        FeatureState::Analyzing,
        FeatureState::Planning,
        FeatureState::Executing,
        FeatureState::Verifying,
        FeatureState::Completed,
        FeatureState::Failed,
        FeatureState::Cancelled,
    ] {
        assert_eq!(FeatureState::parse(s.as_str()), Some(s));
    }
    assert_eq!(FeatureState::parse("nope"), None);
}

#[test]
fn waiting_is_visible_until_the_next_event_and_retries_are_recorded() {
    let mut events = happy_prefix()[..3].to_vec();
    events.push(Event::StepRetrying {
        step: "clone".into(),
        attempt: 1,
        error: "connection reset".into(),
        delay_ms: 500,
    });
    events.push(Event::StepWaiting {
        resource: "llm".into(),
        detail: "waiting for an LLM slot".into(),
    });
    let (f, _) = stream(events.clone()).unwrap();
    assert_eq!(f.waiting_for.as_deref(), Some("waiting for an LLM slot"));
    events.push(Event::RepositoryCloneCompleted {
        head_sha: "abc".into(),
        duration_ms: 1,
    });
    let (f, _) = stream(events).unwrap();
    assert_eq!(f.waiting_for, None);
    // Nothing waits before the feature started.
    assert!(
        stream(vec![
            requested(1),
            Event::StepWaiting {
                resource: "sandbox".into(),
                detail: "d".into()
            }
        ])
        .is_err()
    );
}

#[test]
fn remote_state_says_what_the_remote_holds() {
    let mut events = happy_prefix();
    events.push(Event::VerificationPassed {
        iteration: 1,
        summary: "ok".into(),
    });
    let (f, _) = stream(events.clone()).unwrap();
    assert!(f.remote_state().starts_with("untouched"));
    events.push(Event::CommitCreated {
        sha: "def".into(),
        message: "m".into(),
        files_changed: 1,
        lines_added: 1,
        lines_removed: 0,
    });
    events.push(Event::PushStarted {
        branch: "b".into(),
        sha: "def".into(),
    });
    let (f, _) = stream(events.clone()).unwrap();
    assert!(
        f.remote_state().contains("in flight"),
        "{}",
        f.remote_state()
    );
    events.push(Event::PushCompleted {
        branch: "b".into(),
        sha: "def".into(),
        already_present: false,
    });
    let (f, _) = stream(events).unwrap();
    assert!(
        f.remote_state().contains("pushed at def"),
        "{}",
        f.remote_state()
    );
}

fn baseline_tests_completed() -> Event {
    Event::TestsCompleted {
        command: "cargo test".into(),
        success: true,
        exit_code: Some(0),
        timed_out: false,
        passed: 3,
        failed: 0,
        ignored: 0,
        duration_ms: 9,
        output_tail: String::new(),
        killed_by: None,
        limits_hit: vec![],
        baseline: true,
        report_format: None,
        failures: vec![],
        preexisting_failures: vec![],
        diagnostics: vec![],
        egress_refused: vec![],
    }
}

#[test]
fn the_baseline_is_recorded_as_it_happens_even_after_the_feature_ended() {
    let failed = Event::FeatureFailed {
        error: ExecutionError {
            code: ErrorCode::AnalysisFailed,
            message: "the LLM could not analyse the request".into(),
            details: String::new(),
            retryable: true,
            failed_step: "analysis".into(),
        },
    };
    let started = Event::TestsStarted {
        command: "cargo test".into(),
        baseline: true,
    };
    let (f, _) = stream(vec![
        requested(1),
        Event::AnalysisStarted {},
        started.clone(),
        failed,
        baseline_tests_completed(),
    ])
    .unwrap();
    assert_eq!(
        f.state,
        FeatureState::Failed,
        "the baseline changes no state"
    );

    // Not before analysis started, and the feature's own runs only while verifying.
    let err = stream(vec![requested(1), started]).unwrap_err();
    assert!(err.reason.contains("analysis has not started"), "{err}");
    for own in [
        Event::TestsStarted {
            command: "cargo test".into(),
            baseline: false,
        },
        Event::DependenciesStarted {
            command: "cargo fetch".into(),
            hosts: vec![],
            baseline: false,
        },
    ] {
        let err = stream(vec![requested(1), Event::AnalysisStarted {}, own]).unwrap_err();
        assert!(err.reason.contains("only allowed in VERIFYING"), "{err}");
    }
}
