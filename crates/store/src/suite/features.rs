//! The feature projection: search filters, idempotency and correlation lookups, one writer
//! per branch, the start-up re-enqueue list.

use super::*;

pub(crate) async fn projection_and_search_filters(store: Arc<dyn Store>) {
    let repo1 = RepositoryId(Uuid::now_v7());
    let repo2 = RepositoryId(Uuid::now_v7());
    let t0 = base_time();
    let a = create(
        &store,
        NewFeature {
            repo: repo1,
            title: "Add greeting",
            at: t0,
            ..Default::default()
        },
    )
    .await;
    let b = create(
        &store,
        NewFeature {
            repo: repo1,
            title: "Fix LOGIN bug",
            description: "Sessions expire too early.",
            at: t0 + Duration::hours(1),
            ..Default::default()
        },
    )
    .await;
    let b = advance(&store, &b, vec![Event::AnalysisStarted {}]).await;
    let c = create(
        &store,
        NewFeature {
            repo: repo2,
            title: "Caching layer",
            description: "Speed up Ünïcode handling and ADD a cache.",
            at: t0 + Duration::hours(2),
            ..Default::default()
        },
    )
    .await;
    let c = advance(&store, &c, vec![cancelled()]).await;
    let d = create(
        &store,
        NewFeature {
            repo: repo2,
            title: "Dark mode",
            description: "A dark theme for the console.",
            at: t0 + Duration::hours(3),
            ..Default::default()
        },
    )
    .await;

    let ids = |v: Vec<Feature>| v.into_iter().map(|f| f.id).collect::<Vec<_>>();
    let search = |q: FeatureQuery| {
        let store = store.clone();
        async move { ids(store.search(&q).await.expect("search")) }
    };

    assert_eq!(
        search(FeatureQuery::default()).await,
        vec![d.id, c.id, b.id, a.id],
        "newest first"
    );
    assert_eq!(
        store
            .search(&FeatureQuery::default())
            .await
            .expect("search")[1],
        c,
        "search returns whole projections"
    );
    assert_eq!(
        search(FeatureQuery {
            repository_id: Some(repo1),
            ..Default::default()
        })
        .await,
        vec![b.id, a.id]
    );
    assert_eq!(
        search(FeatureQuery {
            states: vec![FeatureState::Pending],
            ..Default::default()
        })
        .await,
        vec![d.id, a.id]
    );
    assert_eq!(
        search(FeatureQuery {
            states: vec![FeatureState::Cancelled, FeatureState::Analyzing],
            ..Default::default()
        })
        .await,
        vec![c.id, b.id]
    );
    assert_eq!(
        search(FeatureQuery {
            repository_id: Some(repo2),
            states: vec![FeatureState::Pending],
            ..Default::default()
        })
        .await,
        vec![d.id]
    );
    for (text, expect) in [
        ("add", vec![c.id, a.id]),
        ("login", vec![b.id]),
        ("SESSIONS EXPIRE", vec![b.id]),
        ("ÜNÏCODE", vec![c.id]),
        ("  dark ", vec![d.id]),
        ("%", vec![]),
        ("nothing like this", vec![]),
    ] {
        assert_eq!(
            search(FeatureQuery {
                query: Some(text.into()),
                ..Default::default()
            })
            .await,
            expect,
            "query {text:?}"
        );
    }
    assert_eq!(
        search(FeatureQuery {
            query: Some(String::new()),
            ..Default::default()
        })
        .await
        .len(),
        4,
        "an empty query matches everything"
    );
    assert_eq!(
        search(FeatureQuery {
            created_after: Some(t0 + Duration::hours(1)),
            ..Default::default()
        })
        .await,
        vec![d.id, c.id, b.id],
        "created_after is inclusive"
    );
    assert_eq!(
        search(FeatureQuery {
            created_before: Some(t0 + Duration::hours(2)),
            ..Default::default()
        })
        .await,
        vec![b.id, a.id],
        "created_before is exclusive"
    );
    assert_eq!(
        search(FeatureQuery {
            created_after: Some(t0 + Duration::minutes(30)),
            created_before: Some(t0 + Duration::minutes(150)),
            ..Default::default()
        })
        .await,
        vec![c.id, b.id]
    );
    assert_eq!(
        search(FeatureQuery {
            limit: 2,
            ..Default::default()
        })
        .await,
        vec![d.id, c.id]
    );
    assert_eq!(
        search(FeatureQuery {
            limit: 2,
            offset: 2,
            ..Default::default()
        })
        .await,
        vec![b.id, a.id]
    );
    assert!(
        search(FeatureQuery {
            limit: 2,
            offset: 4,
            ..Default::default()
        })
        .await
        .is_empty()
    );
    assert_eq!(
        search(FeatureQuery {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .len(),
        4,
        "a huge limit is capped, not an error"
    );
}

pub(crate) async fn idempotency_and_correlation_lookups(store: Arc<dyn Store>) {
    let f = create(
        &store,
        NewFeature {
            correlation_id: "req-42",
            idempotency_key: "idem-1",
            ..Default::default()
        },
    )
    .await;
    let plain = create(&store, NewFeature::default()).await;
    let f = advance(&store, &f, vec![Event::AnalysisStarted {}]).await;

    assert_eq!(
        store.find_by_idempotency_key("idem-1").await.expect("find"),
        Some(f.clone())
    );
    assert_eq!(
        store.find_by_correlation("req-42").await.expect("find"),
        Some(f.clone())
    );
    assert_eq!(
        store.find_by_idempotency_key("idem-2").await.expect("find"),
        None
    );
    assert_eq!(
        store.find_by_correlation("req-43").await.expect("find"),
        None
    );
    assert_eq!(store.find_by_idempotency_key("").await.expect("find"), None);
    assert_eq!(store.find_by_correlation("").await.expect("find"), None);
    assert_eq!(
        store
            .find_by_correlation(&plain.correlation_id)
            .await
            .expect("find"),
        Some(plain)
    );

    // Many features may carry no key; only a non-empty key is unique.
    create(&store, NewFeature::default()).await;

    // A second feature claiming the same key is refused, and leaves nothing behind.
    let (dup, events) = requested(NewFeature {
        idempotency_key: "idem-1",
        ..Default::default()
    });
    match store.append(dup.id, 0, &events, &dup).await {
        Err(StoreError::AlreadyExists { what }) => {
            assert!(what.contains("idempotency key"), "{what}")
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert!(store.read_stream(dup.id, 0).await.expect("read").is_empty());
    assert_eq!(store.get_feature(dup.id).await.expect("get"), None);
    assert_eq!(
        store.find_by_idempotency_key("idem-1").await.expect("find"),
        Some(f)
    );

    // The same correlation id on a later feature (a retry): the newest is returned.
    let retry = create(
        &store,
        NewFeature {
            correlation_id: "req-42",
            at: base_time() + Duration::minutes(5),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        store.find_by_correlation("req-42").await.expect("find"),
        Some(retry)
    );
}

pub(crate) async fn one_active_writer_per_branch(store: Arc<dyn Store>) {
    let shared = NewFeature {
        branch: "builder/shared",
        ..Default::default()
    };
    let first = create(
        &store,
        NewFeature {
            branch: "builder/shared",
            ..Default::default()
        },
    )
    .await;
    let (second, events) = requested(NewFeature {
        branch: "builder/shared",
        ..Default::default()
    });
    match store.append(second.id, 0, &events, &second).await {
        Err(StoreError::AlreadyExists { what }) => assert!(what.contains("branch"), "{what}"),
        other => panic!("a second active writer of the branch must be refused, got {other:?}"),
    }
    assert!(
        store
            .read_stream(second.id, 0)
            .await
            .expect("read")
            .is_empty(),
        "nothing written"
    );
    // Another repository, or another branch, is fine.
    create(
        &store,
        NewFeature {
            repo: RepositoryId(Uuid::from_u128(2)),
            ..shared
        },
    )
    .await;
    create(
        &store,
        NewFeature {
            branch: "builder/other",
            ..Default::default()
        },
    )
    .await;
    // Once the first ended, the branch is free.
    advance(&store, &first, vec![cancelled()]).await;
    store
        .append(second.id, 0, &events, &second)
        .await
        .expect("the branch is free again");
}

pub(crate) async fn non_terminal_features_are_listed(store: Arc<dyn Store>) {
    let t0 = base_time();
    let pending = create(&store, NewFeature::default()).await;
    let analyzing = create(
        &store,
        NewFeature {
            at: t0 + Duration::seconds(1),
            ..Default::default()
        },
    )
    .await;
    advance(&store, &analyzing, vec![Event::AnalysisStarted {}]).await;
    let done = create(
        &store,
        NewFeature {
            at: t0 + Duration::seconds(2),
            ..Default::default()
        },
    )
    .await;
    advance(&store, &done, vec![cancelled()]).await;
    let broken = create(
        &store,
        NewFeature {
            at: t0 + Duration::seconds(3),
            ..Default::default()
        },
    )
    .await;
    advance(&store, &broken, vec![failed()]).await;

    assert_eq!(
        store.non_terminal_features().await.expect("list"),
        vec![pending.id, analyzing.id],
        "oldest first, terminal ones left out"
    );
}
