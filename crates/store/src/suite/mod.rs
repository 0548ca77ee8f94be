//! One behavioural suite for the store traits, run against both backends: whatever passes on
//! SQLite must pass on PostgreSQL and the other way round.
//!
//! PostgreSQL tests create a fresh database per test on `BUILDER_TEST_DATABASE_URL`
//! (default: the local trust-auth server) and drop it afterwards. When the server is
//! unreachable they fail: a skipped backend would hide exactly the bugs this suite exists for.
//!
//! This module holds the fixture and the helpers that build streams through core's own
//! doors; the tests are in one module per topic, registered for both backends at the end.

mod backends;
mod events;
mod features;
mod repositories;
mod resilience;

use events::*;
use features::*;
use repositories::*;

use crate::{
    CredentialCipher, EventStore, FeatureQuery, RepositoryQuery, RepositoryStore, SecretBytes,
    Store, StoreError, open_with_cipher,
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
// Registration: every suite test runs on both backends.

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
        listing_filters_states_in_the_query,
    ];
    fixture: [credentials_are_encrypted_at_rest, clearing_a_credential_destroys_it];
);
