//! One behavioural suite for the store traits, run against both backends: whatever passes on
//! SQLite must pass on PostgreSQL and the other way round.
//!
//! PostgreSQL tests create a fresh database per test on `BUILDER_TEST_DATABASE_URL`
//! (default: the local trust-auth server) and drop it afterwards. When the server is
//! unreachable they fail: a skipped backend would hide exactly the bugs this suite exists for.

use crate::{
    CredentialCipher, EventStore, FeatureQuery, RepositoryStore, SecretBytes, Store, StoreError,
    open_with_cipher,
};
use builder_core::event::{ErrorCode, ExecutionError};
use builder_core::{
    Event, EventEnvelope, Feature, FeatureId, FeatureSpec, FeatureState, NewEvent, Provider,
    Repository, RepositoryId, RepositoryState, SCHEMA_VERSION,
};
use chrono::{DateTime, Duration, SubsecRound, Utc};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::sync::Arc;
use tempfile::TempDir;
use uuid::Uuid;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable";
const KEY_A: [u8; 32] = [0xA5; 32];
const KEY_B: [u8; 32] = [0x5A; 32];

pub(crate) struct Fixture {
    dir: TempDir,
    /// `None`: the embedded default, `<dir>/builder.db`.
    url: Option<String>,
    /// PostgreSQL only: the server's admin URL and the database to drop at the end.
    pg: Option<(String, String)>,
}

impl Fixture {
    pub async fn sqlite() -> Fixture {
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            url: None,
            pg: None,
        }
    }

    pub async fn postgres() -> Fixture {
        let base =
            std::env::var("BUILDER_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG.to_string());
        let name = format!("builder_test_{}", Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is required for the PgStore tests, but {base} is unreachable: {e}. \
                 Start it (pg_ctlcluster --skip-systemctl-redirect <version> main start) or set \
                 BUILDER_TEST_DATABASE_URL"
                )
            });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let _ = admin.close().await;
        let (prefix, query) = match base.split_once('?') {
            Some((p, q)) => (p, format!("?{q}")),
            None => (base.as_str(), String::new()),
        };
        let server = prefix
            .rsplit_once('/')
            .map(|(server, _db)| server)
            .filter(|s| !s.ends_with('/'))
            .unwrap_or(prefix);
        Fixture {
            dir: tempfile::tempdir().expect("temp dir"),
            url: Some(format!("{server}/{name}{query}")),
            pg: Some((base, name)),
        }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        self.open_with(CredentialCipher::new("test-a", &KEY_A).expect("cipher"))
            .await
    }

    pub async fn open_with(&self, cipher: CredentialCipher) -> Arc<dyn Store> {
        open_with_cipher(self.url.as_deref(), self.dir.path(), true, cipher)
            .await
            .expect("open store")
    }

    /// The stored credential columns, read behind the store's back.
    pub async fn raw_credentials(&self) -> Vec<(String, Vec<u8>, Vec<u8>)> {
        let sql = "SELECT key_id, wrapped_key, ciphertext FROM repository_credentials";
        match &self.url {
            Some(url) => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
                sqlx::query_as(sql).fetch_all(&mut c).await.expect("query")
            }
            None => {
                let path = self.dir.path().join("builder.db");
                let mut c =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .expect("connect");
                sqlx::query_as(sql).fetch_all(&mut c).await.expect("query")
            }
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let Some((base, name)) = self.pg.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&base).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}

// ---------------------------------------------------------------------------------------------
// Building streams through core's own doors.

fn base_time() -> DateTime<Utc> {
    // Nanoseconds on purpose: envelopes must round-trip them exactly.
    DateTime::<Utc>::from_timestamp(1_714_557_600, 123_456_789).expect("valid time")
}

fn spec(repo: RepositoryId, title: &str, description: &str) -> FeatureSpec {
    FeatureSpec {
        title: title.into(),
        description: description.into(),
        repository_id: repo,
        target_branch: String::new(),
        feature_branch: String::new(),
        acceptance_criteria: vec!["it works".into()],
        path_hints: vec![],
        constraints: Default::default(),
        properties: Default::default(),
    }
}

struct NewFeature<'a> {
    repo: RepositoryId,
    title: &'a str,
    description: &'a str,
    correlation_id: &'a str,
    idempotency_key: &'a str,
    /// Empty: a branch unique to the feature.
    branch: &'a str,
    at: DateTime<Utc>,
}

impl Default for NewFeature<'_> {
    fn default() -> Self {
        NewFeature {
            repo: RepositoryId(Uuid::from_u128(1)),
            title: "Add greeting",
            description: "Add a greet function to the library.",
            correlation_id: "",
            idempotency_key: "",
            branch: "",
            at: base_time(),
        }
    }
}

/// The first event of a new stream and the fold after it.
fn requested(n: NewFeature<'_>) -> (Feature, Vec<EventEnvelope>) {
    let id = FeatureId(Uuid::now_v7());
    let (event_type, payload) = Event::FeatureRequested {
        spec: spec(n.repo, n.title, n.description),
        target_branch: "main".into(),
        feature_branch: if n.branch.is_empty() {
            format!("builder/{}", id.as_uuid().simple())
        } else {
            n.branch.to_string()
        },
        max_iterations: 2,
        idempotency_key: n.idempotency_key.into(),
        retry_of: None,
        retry_from: String::new(),
    }
    .to_parts()
    .expect("serialise");
    let env = EventEnvelope {
        event_id: Uuid::now_v7(),
        feature_id: id,
        sequence: 1,
        event_type,
        schema_version: SCHEMA_VERSION,
        timestamp: n.at,
        causation_id: None,
        correlation_id: if n.correlation_id.is_empty() {
            id.to_string()
        } else {
            n.correlation_id.to_string()
        },
        payload,
        metadata: builder_core::EventMetadata {
            producer: "store-tests".into(),
            tags: vec!["t".into()],
            trace_context: Some("00-abc-def-01".into()),
        },
        global_position: 0,
    };
    let feature = Feature::from_events(std::slice::from_ref(&env)).expect("fold");
    (feature, vec![env])
}

fn next(feature: &Feature, events: Vec<Event>, at: DateTime<Utc>) -> (Feature, Vec<EventEnvelope>) {
    let mut next_id = Uuid::now_v7;
    let mut ctx = NewEvent {
        now: at,
        causation_id: Some(Uuid::now_v7()),
        producer: "store-tests",
        next_id: &mut next_id,
    };
    let t = feature.prepare(events, &mut ctx).expect("legal events");
    (t.feature, t.envelopes)
}

async fn create(store: &Arc<dyn Store>, n: NewFeature<'_>) -> Feature {
    let (f, events) = requested(n);
    store.append(f.id, 0, &events, &f).await.expect("append");
    f
}

async fn advance(store: &Arc<dyn Store>, f: &Feature, events: Vec<Event>) -> Feature {
    let at = f.updated_at + Duration::seconds(1);
    let (next, envs) = next(f, events, at);
    store
        .append(f.id, f.version, &envs, &next)
        .await
        .expect("append");
    next
}

fn cancelled() -> Event {
    Event::FeatureCancelled {
        reason: "user asked".into(),
        phase: "pending".into(),
        remote_state: String::new(),
    }
}

fn failed() -> Event {
    Event::FeatureFailed {
        error: ExecutionError {
            code: ErrorCode::Internal,
            message: "boom".into(),
            details: String::new(),
            retryable: false,
            failed_step: "analysis".into(),
        },
    }
}

fn strip_positions(events: &[EventEnvelope]) -> Vec<EventEnvelope> {
    events
        .iter()
        .cloned()
        .map(|mut e| {
            e.global_position = 0;
            e
        })
        .collect()
}

fn repository(name: &str) -> Repository {
    let now = Utc::now();
    Repository {
        id: RepositoryId(Uuid::now_v7()),
        name: name.into(),
        url: format!("https://github.com/acme/{name}.git"),
        default_branch: "main".into(),
        provider: Provider::Github,
        credential_type: None,
        properties: BTreeMap::from([("team".to_string(), "core".to_string())]),
        state: RepositoryState::Active,
        created_at: now,
        updated_at: now,
        last_accessed_at: Some(now),
    }
}

/// What a repository reads back as: timestamps kept to the microsecond on both backends.
fn stored(r: &Repository) -> Repository {
    let mut r = r.clone();
    r.created_at = r.created_at.trunc_subsecs(6);
    r.updated_at = r.updated_at.trunc_subsecs(6);
    r.last_accessed_at = r.last_accessed_at.map(|t| t.trunc_subsecs(6));
    r
}

// ---------------------------------------------------------------------------------------------
// The suite.

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

pub(crate) async fn repository_crud(store: Arc<dyn Store>) {
    let alpha = repository("alpha");
    store.create_repository(&alpha).await.expect("create");
    assert_eq!(
        store.get_repository(alpha.id).await.expect("get"),
        Some(stored(&alpha))
    );
    assert_eq!(
        store.get_repository_by_name("alpha").await.expect("get"),
        Some(stored(&alpha))
    );
    assert_eq!(
        store.get_repository_by_name("Alpha").await.expect("get"),
        None
    );
    assert_eq!(
        store
            .get_repository(RepositoryId(Uuid::now_v7()))
            .await
            .expect("get"),
        None
    );

    match store.create_repository(&repository("alpha")).await {
        Err(StoreError::AlreadyExists { what }) => assert!(what.contains("alpha"), "{what}"),
        other => panic!("a taken name must be refused, got {other:?}"),
    }
    let mut same_id = repository("gamma");
    same_id.id = alpha.id;
    assert!(matches!(
        store.create_repository(&same_id).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let mut beta = repository("beta");
    beta.url = "git@gitlab.example.com:Team/Beta.git".into();
    beta.provider = Provider::Gitlab;
    beta.last_accessed_at = None;
    store.create_repository(&beta).await.expect("create");
    let names = |v: Vec<Repository>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
    assert_eq!(
        names(store.list_repositories(None, 0, 0).await.expect("list")),
        ["alpha", "beta"]
    );
    assert_eq!(
        names(
            store
                .list_repositories(Some("ALP"), 0, 0)
                .await
                .expect("list")
        ),
        ["alpha"]
    );
    assert_eq!(
        names(
            store
                .list_repositories(Some("team/beta"), 0, 0)
                .await
                .expect("list")
        ),
        ["beta"],
        "the URL is searched too"
    );
    assert_eq!(
        names(store.list_repositories(None, 1, 1).await.expect("list")),
        ["beta"]
    );

    // Update everything but identity and credentials.
    let mut renamed = alpha.clone();
    renamed.name = "alpha-2".into();
    renamed.default_branch = "trunk".into();
    renamed.properties.insert("tier".into(), "1".into());
    renamed.state = RepositoryState::Inactive;
    renamed.updated_at = Utc::now();
    store.update_repository(&renamed).await.expect("update");
    assert_eq!(
        store.get_repository(alpha.id).await.expect("get"),
        Some(stored(&renamed))
    );
    let mut clash = renamed.clone();
    clash.name = "beta".into();
    assert!(matches!(
        store.update_repository(&clash).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    assert!(matches!(
        store.update_repository(&repository("ghost")).await,
        Err(StoreError::NotFound { .. })
    ));

    // Soft delete: still readable by id, gone from names and lists, name reusable.
    assert!(store.delete_repository(beta.id).await.expect("delete"));
    assert!(
        !store
            .delete_repository(beta.id)
            .await
            .expect("delete again")
    );
    assert!(
        !store
            .delete_repository(RepositoryId(Uuid::now_v7()))
            .await
            .expect("delete missing")
    );
    let gone = store
        .get_repository(beta.id)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(gone.state, RepositoryState::Deleted);
    assert_eq!(
        store.get_repository_by_name("beta").await.expect("get"),
        None
    );
    assert_eq!(
        names(store.list_repositories(None, 0, 0).await.expect("list")),
        ["alpha-2"]
    );
    let beta_again = repository("beta");
    store
        .create_repository(&beta_again)
        .await
        .expect("a deleted repository's name is free again");
    assert_eq!(
        store
            .get_repository_by_name("beta")
            .await
            .expect("get")
            .map(|r| r.id),
        Some(beta_again.id)
    );
}

pub(crate) async fn credentials_are_encrypted_at_rest(fixture: &Fixture) {
    let store = fixture.open().await;
    let secret = "ghp_THIS-IS-THE-PLAINTEXT-TOKEN-0123456789";
    let repo = repository("secretive");
    assert!(matches!(
        store
            .set_credential(repo.id, "TOKEN", &SecretBytes::from(secret))
            .await,
        Err(StoreError::NotFound { .. })
    ));
    store.create_repository(&repo).await.expect("create");
    assert!(store.get_credential(repo.id).await.expect("get").is_none());
    assert!(matches!(
        store
            .set_credential(repo.id, " ", &SecretBytes::from(secret))
            .await,
        Err(StoreError::Invalid(_))
    ));

    store
        .set_credential(repo.id, "TOKEN", &SecretBytes::from(secret))
        .await
        .expect("set");
    let (kind, got) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(kind, "TOKEN");
    assert_eq!(got.expose(), secret.as_bytes());
    assert_eq!(format!("{got:?}"), "<redacted>");
    assert_eq!(
        store
            .get_repository(repo.id)
            .await
            .expect("get")
            .and_then(|r| r.credential_type),
        Some("TOKEN".to_string())
    );

    let raw = fixture.raw_credentials().await;
    assert_eq!(raw.len(), 1);
    let (key_id, wrapped, ciphertext) = &raw[0];
    assert_eq!(
        key_id, "test-a",
        "the key id is stored next to the ciphertext"
    );
    for column in [wrapped, ciphertext] {
        assert!(
            !column.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "plaintext found in the database"
        );
        assert!(!column.windows(8).any(|w| w == &secret.as_bytes()[4..12]));
    }

    // Replacing a credential replaces it.
    store
        .set_credential(repo.id, "BASIC", &SecretBytes::from("user:pass"))
        .await
        .expect("replace");
    let (kind, got) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!((kind.as_str(), got.expose()), ("BASIC", &b"user:pass"[..]));

    // Another process with the wrong key-encryption key cannot read it, and says why.
    let wrong = fixture
        .open_with(CredentialCipher::new("test-a", &KEY_B).expect("cipher"))
        .await;
    match wrong.get_credential(repo.id).await {
        Err(StoreError::Crypto(msg)) => {
            assert!(
                msg.contains("test-a") && msg.contains("does not match"),
                "{msg}"
            )
        }
        other => panic!("expected a decryption error, got {other:?}"),
    }
    let unknown = fixture
        .open_with(CredentialCipher::new("test-b", &KEY_A).expect("cipher"))
        .await;
    match unknown.get_credential(repo.id).await {
        Err(StoreError::Crypto(msg)) => assert!(msg.contains("not configured"), "{msg}"),
        other => panic!("expected an unknown-key error, got {other:?}"),
    }
    // After rotation, the old key still opens what it sealed.
    let rotated = fixture
        .open_with(
            CredentialCipher::new("test-b", &KEY_B)
                .and_then(|c| c.with_decrypt_key("test-a", &KEY_A))
                .expect("cipher"),
        )
        .await;
    let (_, got) = rotated
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(got.expose(), b"user:pass");

    // Deleting the repository destroys its credential.
    assert!(store.delete_repository(repo.id).await.expect("delete"));
    assert!(store.get_credential(repo.id).await.expect("get").is_none());
    assert!(fixture.raw_credentials().await.is_empty());
}

macro_rules! backend_suite {
    ($backend:ident, $fixture:path; store: [$($t:ident),* $(,)?]; fixture: [$($ft:ident),* $(,)?] $(;)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $t() {
                    let fixture = $fixture().await;
                    super::$t(fixture.open().await).await;
                }
            )*
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $ft() {
                    let fixture = $fixture().await;
                    super::$ft(&fixture).await;
                }
            )*
        }
    };
}

macro_rules! both_backends {
    ($($args:tt)*) => {
        backend_suite!(sqlite, super::Fixture::sqlite; $($args)*);
        backend_suite!(postgres, super::Fixture::postgres; $($args)*);
    };
}

both_backends!(
    store: [
        append_and_read_round_trip,
        wrong_expected_version_conflicts_and_writes_nothing,
        concurrent_appenders_exactly_one_wins,
        sequences_are_gapless,
        read_all_is_global_order_and_pages,
        notifications_fire_on_append,
        projection_and_search_filters,
        idempotency_and_correlation_lookups,
        non_terminal_features_are_listed,
        one_active_writer_per_branch,
        repository_crud,
    ];
    fixture: [credentials_are_encrypted_at_rest];
);

// ---------------------------------------------------------------------------------------------
// Backend-specific behaviour.

/// Another process's append (a second store on the same database) wakes our subscribers
/// through LISTEN/NOTIFY, not only the in-process channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notifications_cross_processes() {
    let fixture = Fixture::postgres().await;
    let ours = fixture.open().await;
    let theirs = fixture.open().await;
    let mut rx = ours.notifications();
    rx.borrow_and_update();
    let (f, e) = requested(NewFeature::default());
    let stored = theirs.append(f.id, 0, &e, &f).await.expect("append");
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while *rx.borrow_and_update() < stored[0].global_position {
            rx.changed().await.expect("sender alive");
        }
    })
    .await
    .expect("woken by the other store's NOTIFY within 5 s");
}

/// Everything survives closing and reopening the file, and the generated key file is private.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reopen_keeps_everything() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cipher = || CredentialCipher::from_lookup(|_| None, dir.path()).expect("cipher");
    let (f, events, repo) = {
        let store = crate::SqliteStore::open(&dir.path().join("builder.db"), cipher())
            .await
            .expect("open");
        store.migrate().await.expect("migrate");
        let (f, e1) = requested(NewFeature {
            correlation_id: "durable",
            idempotency_key: "durable-key",
            ..Default::default()
        });
        let mut events = store.append(f.id, 0, &e1, &f).await.expect("append");
        let (f, e2) = next(&f, vec![Event::AnalysisStarted {}], base_time());
        events.extend(store.append(f.id, 1, &e2, &f).await.expect("append"));
        let repo = repository("durable");
        store.create_repository(&repo).await.expect("create");
        store
            .set_credential(repo.id, "TOKEN", &SecretBytes::from("s3cret"))
            .await
            .expect("set");
        store.close().await;
        (f, events, repo)
    };
    let key_file = dir.path().join("keys").join("local-1.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("key file exists")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode is {:o}", mode & 0o777);
    }
    let key_before = std::fs::read(&key_file).expect("key");

    let store = open_with_cipher(None, dir.path(), true, cipher())
        .await
        .expect("reopen");
    assert_eq!(
        std::fs::read(&key_file).expect("key"),
        key_before,
        "key reused"
    );
    assert_eq!(store.read_stream(f.id, 0).await.expect("read"), events);
    assert_eq!(store.read_all(0, 0).await.expect("read"), events);
    assert_eq!(store.get_feature(f.id).await.expect("get"), Some(f.clone()));
    assert_eq!(
        store
            .find_by_idempotency_key("durable-key")
            .await
            .expect("find"),
        Some(f.clone())
    );
    assert_eq!(
        store.non_terminal_features().await.expect("list"),
        vec![f.id]
    );
    assert_eq!(
        *store.notifications().borrow(),
        events[1].global_position,
        "the head position is restored"
    );
    let mut stored_repo = stored(&repo);
    stored_repo.credential_type = Some("TOKEN".into());
    assert_eq!(
        store.get_repository(repo.id).await.expect("get"),
        Some(stored_repo)
    );
    let (_, secret) = store
        .get_credential(repo.id)
        .await
        .expect("get")
        .expect("present");
    assert_eq!(secret.expose(), b"s3cret");

    // New positions continue after the old ones.
    let (f2, e3) = next(&f, vec![cancelled()], base_time());
    let more = store.append(f.id, 2, &e3, &f2).await.expect("append");
    assert!(more[0].global_position > events[1].global_position);
}

/// `open` picks the backend from the URL and runs migrations when asked.
#[tokio::test]
async fn open_accepts_sqlite_urls_and_refuses_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nested").join("x.db");
    let url = format!("sqlite://{}", path.display());
    let cipher = || CredentialCipher::new("k", &KEY_A).expect("cipher");
    let store = open_with_cipher(Some(&url), dir.path(), true, cipher())
        .await
        .expect("open");
    assert!(store.read_all(0, 0).await.expect("read").is_empty());
    assert!(path.exists());
    match open_with_cipher(Some("sqlite::memory:"), dir.path(), true, cipher()).await {
        Err(StoreError::Config { variable, .. }) => assert_eq!(variable, "DATABASE_URL"),
        other => panic!("in-memory must be refused, got {:?}", other.err()),
    }
}
