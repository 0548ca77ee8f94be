//! The PostgreSQL backend, for many processes on many machines.
//!
//! Identity values are handed out when a row is inserted, not when its transaction commits,
//! so a reader following `global_position` could pass a position whose transaction commits
//! later and miss it forever. Every append therefore takes one transaction-scoped advisory
//! lock first: appends commit one at a time, in position order. Simple and correct; its cost
//! is that appends do not run in parallel.

use crate::common::{
    self, EventRow, Notifier, ProjectionRow, RepositoryRow, TERMINAL_STATES, check_append,
    clamp_limit, micros,
};
use crate::secret::{CredentialCipher, SealedCredential, SecretBytes};
use crate::{EventStore, FeatureQuery, RepositoryQuery, RepositoryStore, StoreError};
use async_trait::async_trait;
use builder_core::{EventEnvelope, Feature, FeatureId, Repository, RepositoryId};
use chrono::{DateTime, Duration, SubsecRound, Timelike, Utc};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use std::str::FromStr;
use std::sync::Arc;
use tokio::task::JoinHandle;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Key of the advisory lock that serialises appends ("builder" in ASCII).
const APPEND_LOCK: i64 = 0x0062_7569_6c64_6572;
/// NOTIFY channel carrying the last global position of each committed append.
const CHANNEL: &str = "builder_events";
const POOL_SIZE: u32 = 8;

pub struct PgStore {
    pool: PgPool,
    cipher: Arc<CredentialCipher>,
    notifier: Notifier,
    listener: JoinHandle<()>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgStore {
    /// Connects to `url` and starts listening for other processes' appends. Needs a tokio
    /// runtime.
    pub async fn connect(url: &str, cipher: CredentialCipher) -> Result<Self, StoreError> {
        Self::connect_with(url, cipher, crate::StoreSettings::DEFAULT_ACQUIRE_TIMEOUT).await
    }

    /// [`connect`](Self::connect) with a bound on how long a request waits for a connection:
    /// with the server gone, every request would otherwise wait out sqlx's 30 s default.
    pub async fn connect_with(
        url: &str,
        cipher: CredentialCipher,
        acquire_timeout: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|e| StoreError::Config {
            variable: "DATABASE_URL",
            reason: format!("not a valid PostgreSQL URL: {e}"),
        })?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(acquire_timeout)
            .connect_with(options)
            .await?;
        let head = max_position(&pool).await.unwrap_or(0);
        let notifier = Notifier::new(head);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(CHANNEL).await?;
        let listener = tokio::spawn(listen(listener, pool.clone(), notifier.downgrade()));
        Ok(Self {
            pool,
            cipher: Arc::new(cipher),
            notifier,
            listener,
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        self.notifier.advance(max_position(&self.pool).await?);
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn version_of(&self, feature_id: FeatureId) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0)::BIGINT FROM events WHERE feature_id = $1",
        )
        .bind(feature_id.as_uuid())
        .fetch_one(&self.pool)
        .await?;
        common::to_u64(v, "sequence")
    }

    async fn features_where(
        &self,
        column: &'static str,
        value: &str,
    ) -> Result<Option<Feature>, StoreError> {
        if value.is_empty() {
            return Ok(None);
        }
        let mut qb = QueryBuilder::<Postgres>::new("SELECT body FROM features WHERE ");
        qb.push(column)
            .push(" = ")
            .push_bind(value.to_string())
            .push(" ORDER BY created_at DESC, id DESC LIMIT 1");
        let body: Option<Json<serde_json::Value>> =
            qb.build_query_scalar().fetch_optional(&self.pool).await?;
        body.map(|b| feature_from_json(b.0)).transpose()
    }
}

/// Follows NOTIFY messages until the store is dropped. Notifications sent while the
/// connection was down are lost, so after a reconnect the head is re-read from the table.
async fn listen(
    mut listener: PgListener,
    pool: PgPool,
    sender: std::sync::Weak<tokio::sync::watch::Sender<i64>>,
) {
    loop {
        let position = match listener.try_recv().await {
            Ok(Some(n)) => n.payload().parse::<i64>().ok(),
            Ok(None) => max_position(&pool).await.ok(),
            Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "event notification listener failed; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                max_position(&pool).await.ok()
            }
        };
        let Some(sender) = sender.upgrade() else {
            return;
        };
        if let Some(p) = position {
            common::advance(&sender, p);
        }
    }
}

async fn max_position(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0)::BIGINT FROM events")
            .fetch_one(pool)
            .await?,
    )
}

fn feature_from_json(v: serde_json::Value) -> Result<Feature, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("feature projection: {e}")))
}

const EVENT_COLUMNS: &str = "SELECT global_position, event_id, feature_id, sequence, event_type, \
     schema_version, occurred_at, occurred_at_nanos, causation_id, correlation_id, payload, \
     metadata FROM events ";

fn event_row(row: &PgRow) -> Result<EventEnvelope, StoreError> {
    let at: DateTime<Utc> = row.try_get("occurred_at")?;
    let nanos: i16 = row.try_get("occurred_at_nanos")?;
    EventRow {
        global_position: row.try_get("global_position")?,
        event_id: row.try_get("event_id")?,
        feature_id: row.try_get("feature_id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        schema_version: i64::from(row.try_get::<i32, _>("schema_version")?),
        timestamp: at + Duration::nanoseconds(i64::from(nanos)),
        causation_id: row.try_get("causation_id")?,
        correlation_id: row.try_get("correlation_id")?,
        payload: row.try_get::<Json<serde_json::Value>, _>("payload")?.0,
        metadata: row.try_get::<Json<serde_json::Value>, _>("metadata")?.0,
    }
    .into_envelope()
}

const REPOSITORY_COLUMNS: &str = "SELECT id, name, url, default_branch, provider, credential_type, \
     properties, state, created_at, updated_at, last_accessed_at FROM repositories ";

fn repository_row(row: &PgRow) -> Result<Repository, StoreError> {
    RepositoryRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        default_branch: row.try_get("default_branch")?,
        provider: row.try_get("provider")?,
        credential_type: row.try_get("credential_type")?,
        properties: row.try_get::<Json<serde_json::Value>, _>("properties")?.0,
        state: row.try_get("state")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        last_accessed_at: row.try_get("last_accessed_at")?,
    }
    .into_repository()
}

#[async_trait]
impl EventStore for PgStore {
    async fn append(
        &self,
        feature_id: FeatureId,
        expected_version: u64,
        events: &[EventEnvelope],
        projection: &Feature,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        check_append(feature_id, expected_version, events, projection)?;
        let row = ProjectionRow::new(projection)?;
        let body: serde_json::Value = serde_json::from_str(&row.body)
            .map_err(|e| StoreError::Invalid(format!("projection: {e}")))?;
        let fid = feature_id.as_uuid();
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        let actual: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0)::BIGINT FROM events WHERE feature_id = $1",
        )
        .bind(fid)
        .fetch_one(&mut *tx)
        .await?;
        let actual = common::to_u64(actual, "sequence")?;
        if actual != expected_version {
            return Err(StoreError::Conflict {
                expected: expected_version,
                actual,
            });
        }
        let mut stored = Vec::with_capacity(events.len());
        for env in events {
            // timestamptz keeps microseconds; the rest goes to its own column.
            let at = env.timestamp.trunc_subsecs(6);
            let nanos =
                i16::try_from(env.timestamp.nanosecond().saturating_sub(at.nanosecond()))
                    .map_err(|_| StoreError::Invalid("event timestamp is a leap second".into()))?;
            let result = sqlx::query_scalar::<_, i64>(
                "INSERT INTO events (event_id, feature_id, sequence, event_type, schema_version, \
                 occurred_at, occurred_at_nanos, causation_id, correlation_id, payload, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING global_position",
            )
            .bind(env.event_id)
            .bind(fid)
            .bind(common::to_i64(env.sequence, "sequence")?)
            .bind(&env.event_type)
            .bind(i32::try_from(env.schema_version).map_err(|_| {
                StoreError::Invalid(format!("schema version {}", env.schema_version))
            })?)
            .bind(at)
            .bind(nanos)
            .bind(env.causation_id)
            .bind(&env.correlation_id)
            .bind(Json(&env.payload))
            .bind(Json(&env.metadata))
            .fetch_one(&mut *tx)
            .await;
            let position = match result {
                Ok(p) => p,
                Err(e) => {
                    let Some(c) = common::unique_violation(&e) else {
                        return Err(e.into());
                    };
                    // Only reachable if another writer slipped past the version check: report
                    // the version it left behind.
                    drop(tx);
                    let now = self.version_of(feature_id).await?;
                    return Err(common::append_violation(&c, expected_version, now));
                }
            };
            let mut env = env.clone();
            env.global_position = position;
            stored.push(env);
        }
        let upsert = sqlx::query(
            "INSERT INTO features (id, repository_id, state, title, search_text, correlation_id, \
             idempotency_key, created_at, updated_at, version, body, feature_branch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO UPDATE SET repository_id = excluded.repository_id, \
             state = excluded.state, title = excluded.title, search_text = excluded.search_text, \
             correlation_id = excluded.correlation_id, idempotency_key = excluded.idempotency_key, \
             updated_at = excluded.updated_at, version = excluded.version, body = excluded.body, \
             feature_branch = excluded.feature_branch",
        )
        .bind(fid)
        .bind(row.repository_id.as_uuid())
        .bind(row.state)
        .bind(&row.title)
        .bind(&row.search_text)
        .bind(&row.correlation_id)
        .bind(&row.idempotency_key)
        .bind(micros(projection.created_at))
        .bind(micros(projection.updated_at))
        .bind(row.version)
        .bind(Json(&body))
        .bind(&projection.feature_branch)
        .execute(&mut *tx)
        .await;
        if let Err(e) = upsert {
            return Err(match common::unique_violation(&e) {
                Some(c) => common::append_violation(&c, expected_version, actual),
                None => e.into(),
            });
        }
        let last = stored.last().map(|e| e.global_position).unwrap_or(0);
        // Delivered to listeners only if and when the transaction commits.
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(last.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.notifier.advance(last);
        Ok(stored)
    }

    async fn read_stream(
        &self,
        feature_id: FeatureId,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EVENT_COLUMNS} WHERE feature_id = $1 AND sequence > $2 ORDER BY sequence"
        )))
        .bind(feature_id.as_uuid())
        .bind(common::to_i64(after_sequence, "sequence")?)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }

    async fn read_all(
        &self,
        after_position: i64,
        limit: u32,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EVENT_COLUMNS} WHERE global_position > $1 ORDER BY global_position LIMIT $2"
        )))
        .bind(after_position)
        .bind(clamp_limit(
            limit,
            common::READ_ALL_DEFAULT,
            common::READ_ALL_MAX,
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_row).collect()
    }

    fn notifications(&self) -> tokio::sync::watch::Receiver<i64> {
        self.notifier.subscribe()
    }

    async fn get_feature(&self, id: FeatureId) -> Result<Option<Feature>, StoreError> {
        let body: Option<Json<serde_json::Value>> =
            sqlx::query_scalar("SELECT body FROM features WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool)
                .await?;
        body.map(|b| feature_from_json(b.0)).transpose()
    }

    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Option<Feature>, StoreError> {
        self.features_where("correlation_id", correlation_id).await
    }

    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Feature>, StoreError> {
        self.features_where("idempotency_key", key).await
    }

    async fn search(&self, q: &FeatureQuery) -> Result<Vec<Feature>, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new("SELECT body FROM features WHERE TRUE");
        if let Some(repo) = q.repository_id {
            qb.push(" AND repository_id = ").push_bind(repo.as_uuid());
        }
        if !q.states.is_empty() {
            let states: Vec<String> = q.states.iter().map(|s| s.as_str().to_string()).collect();
            qb.push(" AND state = ANY(").push_bind(states).push(")");
        }
        if let Some(t) = q.created_after {
            qb.push(" AND created_at >= ").push_bind(micros(t));
        }
        if let Some(t) = q.created_before {
            qb.push(" AND created_at < ").push_bind(micros(t));
        }
        if let Some(text) = common::lower_query(q.query.as_deref()) {
            qb.push(" AND strpos(search_text, ")
                .push_bind(text)
                .push(") > 0");
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(clamp_limit(
                q.limit,
                FeatureQuery::DEFAULT_LIMIT,
                FeatureQuery::MAX_LIMIT,
            ))
            .push(" OFFSET ")
            .push_bind(i64::from(q.offset));
        let bodies: Vec<Json<serde_json::Value>> =
            qb.build_query_scalar().fetch_all(&self.pool).await?;
        bodies.into_iter().map(|b| feature_from_json(b.0)).collect()
    }

    async fn non_terminal_features(&self) -> Result<Vec<FeatureId>, StoreError> {
        let terminal: Vec<String> = TERMINAL_STATES.iter().map(|s| s.to_string()).collect();
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM features WHERE NOT (state = ANY($1)) ORDER BY created_at, id",
        )
        .bind(terminal)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(FeatureId).collect())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl RepositoryStore for PgStore {
    async fn create_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO repositories (id, name, url, default_branch, provider, credential_type, \
             properties, state, search_text, created_at, updated_at, last_accessed_at) \
             VALUES ($1, $2, $3, $4, $5, NULL, $6, $7, $8, $9, $10, $11)",
        )
        .bind(repo.id.as_uuid())
        .bind(&repo.name)
        .bind(&repo.url)
        .bind(&repo.default_branch)
        .bind(repo.provider.as_str())
        .bind(Json(&repo.properties))
        .bind(common::repo_state_str(repo.state))
        .bind(common::repo_search_text(repo))
        .bind(micros(repo.created_at))
        .bind(micros(repo.updated_at))
        .bind(repo.last_accessed_at.map(micros))
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => Err(match common::unique_violation(&e) {
                Some(c) => common::repository_violation(&c, repo),
                None => e.into(),
            }),
        }
    }

    async fn get_repository(&self, id: RepositoryId) -> Result<Option<Repository>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{REPOSITORY_COLUMNS} WHERE id = $1"
        )))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(repository_row).transpose()
    }

    async fn get_repository_by_name(&self, name: &str) -> Result<Option<Repository>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{REPOSITORY_COLUMNS} WHERE name = $1 AND state <> 'DELETED'"
        )))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(repository_row).transpose()
    }

    async fn list_repositories(&self, q: &RepositoryQuery) -> Result<Vec<Repository>, StoreError> {
        let mut qb = QueryBuilder::<Postgres>::new(REPOSITORY_COLUMNS);
        // COLLATE "C" so names order byte-wise, as SQLite does.
        common::push_repository_filters(&mut qb, q, "strpos", "name COLLATE \"C\"");
        let rows = qb.build().fetch_all(&self.pool).await?;
        rows.iter().map(repository_row).collect()
    }

    async fn update_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE repositories SET name = $1, url = $2, default_branch = $3, provider = $4, \
             properties = $5, state = $6, search_text = $7, updated_at = $8, \
             last_accessed_at = $9 WHERE id = $10",
        )
        .bind(&repo.name)
        .bind(&repo.url)
        .bind(&repo.default_branch)
        .bind(repo.provider.as_str())
        .bind(Json(&repo.properties))
        .bind(common::repo_state_str(repo.state))
        .bind(common::repo_search_text(repo))
        .bind(micros(repo.updated_at))
        .bind(repo.last_accessed_at.map(micros))
        .bind(repo.id.as_uuid())
        .execute(&self.pool)
        .await;
        match result {
            Ok(r) if r.rows_affected() == 0 => Err(StoreError::NotFound {
                what: format!("repository {}", repo.id),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(match common::unique_violation(&e) {
                Some(c) => common::repository_violation(&c, repo),
                None => e.into(),
            }),
        }
    }

    async fn delete_repository(&self, id: RepositoryId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE repositories SET state = 'DELETED', credential_type = NULL, updated_at = $1 \
             WHERE id = $2 AND state <> 'DELETED'",
        )
        .bind(micros(Utc::now()))
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        // A deleted repository must not keep a usable secret around.
        sqlx::query("DELETE FROM repository_credentials WHERE repository_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn set_credential(
        &self,
        id: RepositoryId,
        credential_type: &str,
        secret: &SecretBytes,
    ) -> Result<(), StoreError> {
        let credential_type = common::validate_credential_type(credential_type)?;
        let sealed = self.cipher.seal(&common::credential_context(id), secret)?;
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE repositories SET credential_type = $1 WHERE id = $2 AND state <> 'DELETED'",
        )
        .bind(credential_type)
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("repository {id}"),
            });
        }
        sqlx::query(
            "INSERT INTO repository_credentials (repository_id, credential_type, key_id, \
             wrapped_key, nonce, ciphertext, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (repository_id) DO UPDATE SET credential_type = excluded.credential_type, \
             key_id = excluded.key_id, wrapped_key = excluded.wrapped_key, nonce = excluded.nonce, \
             ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(id.as_uuid())
        .bind(credential_type)
        .bind(&sealed.key_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(micros(Utc::now()))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn get_credential(
        &self,
        id: RepositoryId,
    ) -> Result<Option<(String, SecretBytes)>, StoreError> {
        let row = sqlx::query(
            "SELECT credential_type, key_id, wrapped_key, nonce, ciphertext \
             FROM repository_credentials WHERE repository_id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed = SealedCredential {
            key_id: row.try_get("key_id")?,
            wrapped_key: row.try_get("wrapped_key")?,
            nonce: row.try_get("nonce")?,
            ciphertext: row.try_get("ciphertext")?,
        };
        let secret = self.cipher.open(&common::credential_context(id), &sealed)?;
        Ok(Some((row.try_get("credential_type")?, secret)))
    }

    async fn clear_credential(&self, id: RepositoryId) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE repositories SET credential_type = NULL WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM repository_credentials WHERE repository_id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }
}
