//! The event log: appends with an expected version, reads, global order, notifications.

use super::*;

pub(crate) async fn append_and_read_round_trip(store: Arc<dyn Store>) {
    let (f1, e1) = requested(NewFeature {
        correlation_id: "corr-1",
        ..Default::default()
    });
    let stored1 = store.append(f1.id, 0, &e1, &f1).await.expect("append 1");
    assert_eq!(stored1.len(), 1);
    assert!(stored1[0].global_position > 0);
    assert_eq!(
        strip_positions(&stored1),
        e1,
        "append returns what it stored"
    );

    let (f2, e2) = next(
        &f1,
        vec![
            Event::AnalysisStarted {},
            Event::RepositoryCloneStarted {
                url: "https://example.com/r.git".into(),
                branch: "main".into(),
            },
        ],
        base_time() + Duration::nanoseconds(987_654_321),
    );
    let stored2 = store.append(f1.id, 1, &e2, &f2).await.expect("append 2");
    assert_eq!(stored2.len(), 2);
    assert!(stored2[0].global_position > stored1[0].global_position);
    assert!(stored2[1].global_position > stored2[0].global_position);

    let all: Vec<EventEnvelope> = stored1.iter().chain(&stored2).cloned().collect();
    let read = store.read_stream(f1.id, 0).await.expect("read");
    assert_eq!(
        read, all,
        "envelopes round-trip exactly, nanoseconds included"
    );
    assert_eq!(read[0].timestamp.timestamp_subsec_nanos(), 123_456_789);
    assert_eq!(store.read_stream(f1.id, 1).await.expect("read"), all[1..]);
    assert!(store.read_stream(f1.id, 3).await.expect("read").is_empty());
    assert!(
        store
            .read_stream(FeatureId(Uuid::now_v7()), 0)
            .await
            .expect("read")
            .is_empty()
    );

    // The events fold back into exactly the stored projection.
    let folded = Feature::from_events(&read).expect("fold");
    assert_eq!(folded, f2);
    assert_eq!(store.get_feature(f1.id).await.expect("get"), Some(f2));
    assert_eq!(
        store
            .get_feature(FeatureId(Uuid::now_v7()))
            .await
            .expect("get"),
        None
    );
}

pub(crate) async fn wrong_expected_version_conflicts_and_writes_nothing(store: Arc<dyn Store>) {
    let f = create(&store, NewFeature::default()).await;
    let head = *store.notifications().borrow();

    // A second "first" event for the same stream.
    let (_, mut dup) = requested(NewFeature::default());
    dup[0].feature_id = f.id;
    let mut dup_projection = f.clone();
    dup_projection.state = FeatureState::Failed;
    match store.append(f.id, 0, &dup, &dup_projection).await {
        Err(StoreError::Conflict { expected, actual }) => assert_eq!((expected, actual), (0, 1)),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // A stale writer that thinks the stream is further along.
    let (later, mut envs) = next(&f, vec![Event::AnalysisStarted {}], base_time());
    for e in &mut envs {
        e.sequence = 6;
    }
    let mut later5 = later.clone();
    later5.version = 6;
    match store.append(f.id, 5, &envs, &later5).await {
        Err(StoreError::Conflict { expected, actual }) => assert_eq!((expected, actual), (5, 1)),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Malformed batches are refused before touching the database.
    let (good, envs) = next(&f, vec![Event::AnalysisStarted {}], base_time());
    assert!(matches!(
        store.append(f.id, 1, &[], &good).await,
        Err(StoreError::Invalid(_))
    ));
    let mut bad_projection = good.clone();
    bad_projection.version = 7;
    assert!(matches!(
        store.append(f.id, 1, &envs, &bad_projection).await,
        Err(StoreError::Invalid(_))
    ));
    let mut gap = envs.clone();
    gap[0].sequence = 3;
    assert!(matches!(
        store.append(f.id, 1, &gap, &good).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store
            .append(FeatureId(Uuid::now_v7()), 1, &envs, &good)
            .await,
        Err(StoreError::Invalid(_))
    ));

    assert_eq!(store.read_stream(f.id, 0).await.expect("read").len(), 1);
    assert_eq!(store.read_all(0, 100).await.expect("read").len(), 1);
    assert_eq!(store.get_feature(f.id).await.expect("get"), Some(f.clone()));
    assert_eq!(*store.notifications().borrow(), head);

    // The right expected version still works afterwards.
    store.append(f.id, 1, &envs, &good).await.expect("append");
    assert_eq!(store.get_feature(f.id).await.expect("get"), Some(good));
}

pub(crate) async fn concurrent_appenders_exactly_one_wins(store: Arc<dyn Store>) {
    for race in 0..20 {
        // Race on creating the stream…
        let (f, first) = requested(NewFeature::default());
        let (mut f_b, mut first_b) = requested(NewFeature::default());
        first_b[0].feature_id = f.id;
        f_b.id = f.id;
        let (a, b) = {
            let (sa, sb) = (store.clone(), store.clone());
            let (fa, fb) = (f.clone(), f_b.clone());
            let (ea, eb) = (first.clone(), first_b.clone());
            let ta = tokio::spawn(async move { sa.append(fa.id, 0, &ea, &fa).await });
            let tb = tokio::spawn(async move { sb.append(fb.id, 0, &eb, &fb).await });
            (ta.await.expect("join"), tb.await.expect("join"))
        };
        let winner_first = match (&a, &b) {
            (
                Ok(_),
                Err(StoreError::Conflict {
                    expected: 0,
                    actual: 1,
                }),
            ) => first.clone(),
            (
                Err(StoreError::Conflict {
                    expected: 0,
                    actual: 1,
                }),
                Ok(_),
            ) => first_b.clone(),
            other => panic!("race {race} on creation: exactly one must win, got {other:?}"),
        };
        let current = Feature::from_events(&winner_first).expect("fold");

        // …and on advancing it.
        let (fa, ea) = next(&current, vec![Event::AnalysisStarted {}], base_time());
        let (fb, eb) = next(&current, vec![cancelled()], base_time());
        let (sa, sb) = (store.clone(), store.clone());
        let (ea2, eb2) = (ea.clone(), eb.clone());
        let (fa2, fb2) = (fa.clone(), fb.clone());
        let ta = tokio::spawn(async move { sa.append(fa2.id, 1, &ea2, &fa2).await });
        let tb = tokio::spawn(async move { sb.append(fb2.id, 1, &eb2, &fb2).await });
        let (a, b) = (ta.await.expect("join"), tb.await.expect("join"));
        let (winner_events, winner) = match (&a, &b) {
            (
                Ok(_),
                Err(StoreError::Conflict {
                    expected: 1,
                    actual: 2,
                }),
            ) => (ea, fa),
            (
                Err(StoreError::Conflict {
                    expected: 1,
                    actual: 2,
                }),
                Ok(_),
            ) => (eb, fb),
            other => panic!("race {race} on advance: exactly one must win, got {other:?}"),
        };
        let stream = store.read_stream(current.id, 0).await.expect("read");
        let expected: Vec<EventEnvelope> = winner_first.into_iter().chain(winner_events).collect();
        assert_eq!(strip_positions(&stream), expected, "race {race}");
        assert_eq!(
            store.get_feature(current.id).await.expect("get"),
            Some(winner),
            "race {race}: the projection is the winner's"
        );
    }
}

pub(crate) async fn sequences_are_gapless(store: Arc<dyn Store>) {
    let mut f = create(&store, NewFeature::default()).await;
    f = advance(&store, &f, vec![Event::AnalysisStarted {}]).await;
    f = advance(
        &store,
        &f,
        vec![
            Event::RepositoryCloneStarted {
                url: "u".into(),
                branch: "main".into(),
            },
            Event::RepositoryCloneCompleted {
                head_sha: "abc".into(),
                duration_ms: 5,
            },
            Event::AnalysisCompleted { duration_ms: 9 },
        ],
    )
    .await;
    f = advance(&store, &f, vec![Event::PlanningStarted {}]).await;
    let stream = store.read_stream(f.id, 0).await.expect("read");
    let sequences: Vec<u64> = stream.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, (1..=6).collect::<Vec<u64>>());
    assert_eq!(f.version, 6);
    assert_eq!(f.state, FeatureState::Planning);
    let positions: Vec<i64> = stream.iter().map(|e| e.global_position).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.get_feature(f.id).await.expect("get"), Some(f));
}

pub(crate) async fn read_all_is_global_order_and_pages(store: Arc<dyn Store>) {
    let a = create(&store, NewFeature::default()).await;
    let b = create(&store, NewFeature::default()).await;
    let a = advance(&store, &a, vec![Event::AnalysisStarted {}]).await;
    let c = create(&store, NewFeature::default()).await;
    let _b = advance(&store, &b, vec![cancelled()]).await;
    let _a = advance(&store, &a, vec![failed()]).await;
    let _c = advance(&store, &c, vec![Event::AnalysisStarted {}]).await;

    let all = store.read_all(0, 0).await.expect("read all");
    assert_eq!(all.len(), 7);
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let order: Vec<(FeatureId, u64)> = all.iter().map(|e| (e.feature_id, e.sequence)).collect();
    assert_eq!(
        order,
        vec![
            (a.id, 1),
            (b.id, 1),
            (a.id, 2),
            (c.id, 1),
            (b.id, 2),
            (a.id, 3),
            (c.id, 2)
        ]
    );

    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 3).await.expect("page");
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = last.global_position;
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let tail = store
        .read_all(all[4].global_position, 10)
        .await
        .expect("tail");
    assert_eq!(tail, all[5..]);
    assert_eq!(*store.notifications().borrow(), all[6].global_position);
}

pub(crate) async fn notifications_fire_on_append(store: Arc<dyn Store>) {
    let mut rx = store.notifications();
    let start = *rx.borrow_and_update();
    assert_eq!(start, 0, "a fresh store starts at position 0");
    let (f, e) = requested(NewFeature::default());
    let waiter = tokio::spawn(async move {
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.changed())
            .await
            .expect("woken within 5 s")
            .expect("sender alive");
        *rx.borrow_and_update()
    });
    let stored = store.append(f.id, 0, &e, &f).await.expect("append");
    assert_eq!(waiter.await.expect("join"), stored[0].global_position);

    // A subscriber that looks late still sees the latest position.
    let rx = store.notifications();
    let f2 = advance(&store, &f, vec![Event::AnalysisStarted {}]).await;
    let last = store.read_stream(f2.id, 1).await.expect("read")[0].global_position;
    assert_eq!(*rx.borrow(), last);
}
