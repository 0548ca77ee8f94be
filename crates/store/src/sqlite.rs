//! The embedded backend: one SQLite file in WAL mode. Appends and other writes go through a
//! single connection, so they are serialised in-process and global positions commit in
//! order; `BEGIN IMMEDIATE` plus the busy timeout serialise them against other processes
//! that open the same file. Reads use a separate small pool and never block writers.

use crate::common::{
    self, EventRow, Notifier, ProjectionRow, RepositoryRow, TERMINAL_STATES, check_append,
    clamp_limit, json, micros, parse_feature, parse_json, parse_ts, parse_uuid, ts_text,
};
use crate::private_fs::{self, PRIVATE_FILE_MODE};
use crate::secret::{CredentialCipher, SealedCredential, SecretBytes};
use crate::{EventStore, FeatureQuery, RepositoryQuery, RepositoryStore, StoreError};
use async_trait::async_trait;
use builder_core::{EventEnvelope, Feature, FeatureId, Repository, RepositoryId};
use chrono::Utc;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

const READERS: u32 = 4;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    cipher: Arc<CredentialCipher>,
    notifier: Notifier,
    path: PathBuf,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`. A directory it has to create
    /// for it is private; the file, its -wal and -shm are readable by their owner only.
    pub async fn open(path: &Path, cipher: CredentialCipher) -> Result<Self, StoreError> {
        Self::with_options(SqliteConnectOptions::new().filename(path), cipher).await
    }

    /// Opens a `sqlite://PATH` URL (as given in `DATABASE_URL`).
    pub async fn open_url(url: &str, cipher: CredentialCipher) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Config {
                variable: "DATABASE_URL",
                reason: "an in-memory SQLite database is not supported: it would lose every \
                         feature on restart; give a file path"
                    .into(),
            });
        }
        let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Config {
            variable: "DATABASE_URL",
            reason: format!("not a valid SQLite URL: {e}"),
        })?;
        Self::with_options(options, cipher).await
    }

    async fn with_options(
        options: SqliteConnectOptions,
        cipher: CredentialCipher,
    ) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode is durable against process crashes; only a power loss can
            // drop the last transactions, never corrupt the file.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let path = options.get_filename().to_path_buf();
        prepare_private_file(&path)?;
        // The writer connects first so the file exists and is in WAL mode before readers come.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options)
            .await?;
        // Before migrations the table may be missing; the position is refreshed by migrate().
        let head = max_position(&reader).await.unwrap_or(0);
        Ok(Self {
            writer,
            reader,
            cipher: Arc::new(cipher),
            notifier: Notifier::new(head),
            path,
        })
    }

    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.writer).await?;
        self.notifier.advance(max_position(&self.reader).await?);
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes both pools, checkpointing the WAL; the store is unusable afterwards.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }

    async fn version_of(&self, feature_id: FeatureId) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0) FROM events WHERE feature_id = ?",
        )
        .bind(feature_id.to_string())
        .fetch_one(&self.writer)
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
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT body FROM features WHERE ");
        qb.push(column)
            .push(" = ")
            .push_bind(value.to_string())
            .push(" ORDER BY created_at DESC, id DESC LIMIT 1");
        let body: Option<String> = qb.build_query_scalar().fetch_optional(&self.reader).await?;
        body.as_deref().map(parse_feature).transpose()
    }
}

/// Creates the database file before SQLite does, so it is private from the first byte:
/// SQLite would create it 0644 (minus the umask), and gives -wal and -shm the mode of the
/// database file. Files left by an older start are tightened.
fn prepare_private_file(path: &Path) -> Result<(), StoreError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_fs::create_private_dir_if_missing(parent)?;
    }
    private_fs::ensure_private_file(path)?;
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        private_fs::tighten(Path::new(&side), PRIVATE_FILE_MODE)?;
    }
    Ok(())
}

async fn max_position(pool: &SqlitePool) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(global_position), 0) FROM events")
            .fetch_one(pool)
            .await?,
    )
}

const EVENT_COLUMNS: &str = "SELECT global_position, event_id, feature_id, sequence, event_type, \
     schema_version, occurred_at, causation_id, correlation_id, payload, metadata FROM events ";

fn event_row(row: &SqliteRow) -> Result<EventEnvelope, StoreError> {
    let causation: Option<String> = row.try_get("causation_id")?;
    EventRow {
        global_position: row.try_get("global_position")?,
        event_id: parse_uuid(&row.try_get::<String, _>("event_id")?, "event id")?,
        feature_id: parse_uuid(&row.try_get::<String, _>("feature_id")?, "feature id")?,
        sequence: row.try_get("sequence")?,
        event_type: row.try_get("event_type")?,
        schema_version: row.try_get("schema_version")?,
        timestamp: parse_ts(&row.try_get::<String, _>("occurred_at")?)?,
        causation_id: causation
            .as_deref()
            .map(|c| parse_uuid(c, "causation id"))
            .transpose()?,
        correlation_id: row.try_get("correlation_id")?,
        payload: parse_json(&row.try_get::<String, _>("payload")?, "event payload")?,
        metadata: parse_json(&row.try_get::<String, _>("metadata")?, "event metadata")?,
    }
    .into_envelope()
}

const REPOSITORY_COLUMNS: &str = "SELECT id, name, url, default_branch, provider, credential_type, \
     properties, state, created_at, updated_at, last_accessed_at FROM repositories ";

fn repository_row(row: &SqliteRow) -> Result<Repository, StoreError> {
    let last: Option<String> = row.try_get("last_accessed_at")?;
    RepositoryRow {
        id: parse_uuid(&row.try_get::<String, _>("id")?, "repository id")?,
        name: row.try_get("name")?,
        url: row.try_get("url")?,
        default_branch: row.try_get("default_branch")?,
        provider: row.try_get("provider")?,
        credential_type: row.try_get("credential_type")?,
        properties: parse_json(&row.try_get::<String, _>("properties")?, "properties")?,
        state: row.try_get("state")?,
        created_at: parse_ts(&row.try_get::<String, _>("created_at")?)?,
        updated_at: parse_ts(&row.try_get::<String, _>("updated_at")?)?,
        last_accessed_at: last.as_deref().map(parse_ts).transpose()?,
    }
    .into_repository()
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append(
        &self,
        feature_id: FeatureId,
        expected_version: u64,
        events: &[EventEnvelope],
        projection: &Feature,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        check_append(feature_id, expected_version, events, projection)?;
        let row = ProjectionRow::new(projection)?;
        let fid = feature_id.to_string();
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let actual: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(sequence), 0) FROM events WHERE feature_id = ?",
        )
        .bind(&fid)
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
            let result = sqlx::query_scalar::<_, i64>(
                "INSERT INTO events (event_id, feature_id, sequence, event_type, schema_version, \
                 occurred_at, causation_id, correlation_id, payload, metadata) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING global_position",
            )
            .bind(env.event_id.to_string())
            .bind(&fid)
            .bind(common::to_i64(env.sequence, "sequence")?)
            .bind(&env.event_type)
            .bind(i64::from(env.schema_version))
            .bind(ts_text(&env.timestamp))
            .bind(env.causation_id.map(|c| c.to_string()))
            .bind(&env.correlation_id)
            .bind(json(&env.payload)?)
            .bind(json(&env.metadata)?)
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
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (id) DO UPDATE SET repository_id = excluded.repository_id, \
             state = excluded.state, title = excluded.title, search_text = excluded.search_text, \
             correlation_id = excluded.correlation_id, idempotency_key = excluded.idempotency_key, \
             updated_at = excluded.updated_at, version = excluded.version, body = excluded.body, \
             feature_branch = excluded.feature_branch",
        )
        .bind(&fid)
        .bind(row.repository_id.to_string())
        .bind(row.state)
        .bind(&row.title)
        .bind(&row.search_text)
        .bind(&row.correlation_id)
        .bind(&row.idempotency_key)
        .bind(ts_text(&projection.created_at))
        .bind(ts_text(&projection.updated_at))
        .bind(row.version)
        .bind(&row.body)
        .bind(&projection.feature_branch)
        .execute(&mut *tx)
        .await;
        if let Err(e) = upsert {
            return Err(match common::unique_violation(&e) {
                Some(c) => common::append_violation(&c, expected_version, actual),
                None => e.into(),
            });
        }
        tx.commit().await?;
        if let Some(last) = stored.last() {
            self.notifier.advance(last.global_position);
        }
        Ok(stored)
    }

    async fn read_stream(
        &self,
        feature_id: FeatureId,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EVENT_COLUMNS} WHERE feature_id = ? AND sequence > ? ORDER BY sequence"
        )))
        .bind(feature_id.to_string())
        .bind(common::to_i64(after_sequence, "sequence")?)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_row).collect()
    }

    async fn read_all(
        &self,
        after_position: i64,
        limit: u32,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{EVENT_COLUMNS} WHERE global_position > ? ORDER BY global_position LIMIT ?"
        )))
        .bind(after_position)
        .bind(clamp_limit(
            limit,
            common::READ_ALL_DEFAULT,
            common::READ_ALL_MAX,
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(event_row).collect()
    }

    fn notifications(&self) -> tokio::sync::watch::Receiver<i64> {
        self.notifier.subscribe()
    }

    async fn get_feature(&self, id: FeatureId) -> Result<Option<Feature>, StoreError> {
        self.features_where("id", &id.to_string()).await
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
        let mut qb = QueryBuilder::<Sqlite>::new("SELECT body FROM features WHERE 1 = 1");
        if let Some(repo) = q.repository_id {
            qb.push(" AND repository_id = ").push_bind(repo.to_string());
        }
        if !q.states.is_empty() {
            qb.push(" AND state IN (");
            let mut list = qb.separated(", ");
            for s in &q.states {
                list.push_bind(s.as_str());
            }
            qb.push(")");
        }
        if let Some(t) = q.created_after {
            qb.push(" AND created_at >= ").push_bind(ts_text(&t));
        }
        if let Some(t) = q.created_before {
            qb.push(" AND created_at < ").push_bind(ts_text(&t));
        }
        if let Some(text) = common::lower_query(q.query.as_deref()) {
            qb.push(" AND instr(search_text, ")
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
        let bodies: Vec<String> = qb.build_query_scalar().fetch_all(&self.reader).await?;
        bodies.iter().map(|b| parse_feature(b)).collect()
    }

    async fn non_terminal_features(&self) -> Result<Vec<FeatureId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM features WHERE state NOT IN ('{}', '{}', '{}') \
             ORDER BY created_at, id",
            TERMINAL_STATES[0], TERMINAL_STATES[1], TERMINAL_STATES[2]
        )))
        .fetch_all(&self.reader)
        .await?;
        ids.iter()
            .map(|id| parse_uuid(id, "feature id").map(FeatureId))
            .collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }
}

#[async_trait]
impl RepositoryStore for SqliteStore {
    async fn create_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        let result = sqlx::query(
            "INSERT INTO repositories (id, name, url, default_branch, provider, credential_type, \
             properties, state, search_text, created_at, updated_at, last_accessed_at) \
             VALUES (?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
        )
        .bind(repo.id.to_string())
        .bind(&repo.name)
        .bind(&repo.url)
        .bind(&repo.default_branch)
        .bind(repo.provider.as_str())
        .bind(json(&repo.properties)?)
        .bind(common::repo_state_str(repo.state))
        .bind(common::repo_search_text(repo))
        .bind(ts_text(&micros(repo.created_at)))
        .bind(ts_text(&micros(repo.updated_at)))
        .bind(repo.last_accessed_at.map(|t| ts_text(&micros(t))))
        .execute(&self.writer)
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
            "{REPOSITORY_COLUMNS} WHERE id = ?"
        )))
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(repository_row).transpose()
    }

    async fn get_repository_by_name(&self, name: &str) -> Result<Option<Repository>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{REPOSITORY_COLUMNS} WHERE name = ? AND state <> 'DELETED'"
        )))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(repository_row).transpose()
    }

    async fn list_repositories(&self, q: &RepositoryQuery) -> Result<Vec<Repository>, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(REPOSITORY_COLUMNS);
        common::push_repository_filters(&mut qb, q, "instr", "name");
        let rows = qb.build().fetch_all(&self.reader).await?;
        rows.iter().map(repository_row).collect()
    }

    async fn update_repository(&self, repo: &Repository) -> Result<(), StoreError> {
        let result = sqlx::query(
            "UPDATE repositories SET name = ?, url = ?, default_branch = ?, provider = ?, \
             properties = ?, state = ?, search_text = ?, updated_at = ?, last_accessed_at = ? \
             WHERE id = ?",
        )
        .bind(&repo.name)
        .bind(&repo.url)
        .bind(&repo.default_branch)
        .bind(repo.provider.as_str())
        .bind(json(&repo.properties)?)
        .bind(common::repo_state_str(repo.state))
        .bind(common::repo_search_text(repo))
        .bind(ts_text(&micros(repo.updated_at)))
        .bind(repo.last_accessed_at.map(|t| ts_text(&micros(t))))
        .bind(repo.id.to_string())
        .execute(&self.writer)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE repositories SET state = 'DELETED', credential_type = NULL, updated_at = ? \
             WHERE id = ? AND state <> 'DELETED'",
        )
        .bind(ts_text(&micros(Utc::now())))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        // A deleted repository must not keep a usable secret around.
        sqlx::query("DELETE FROM repository_credentials WHERE repository_id = ?")
            .bind(id.to_string())
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let updated = sqlx::query(
            "UPDATE repositories SET credential_type = ? WHERE id = ? AND state <> 'DELETED'",
        )
        .bind(credential_type)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: format!("repository {id}"),
            });
        }
        sqlx::query(
            "INSERT INTO repository_credentials (repository_id, credential_type, key_id, \
             wrapped_key, nonce, ciphertext, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (repository_id) DO UPDATE SET credential_type = excluded.credential_type, \
             key_id = excluded.key_id, wrapped_key = excluded.wrapped_key, nonce = excluded.nonce, \
             ciphertext = excluded.ciphertext, updated_at = excluded.updated_at",
        )
        .bind(id.to_string())
        .bind(credential_type)
        .bind(&sealed.key_id)
        .bind(&sealed.wrapped_key)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(ts_text(&Utc::now()))
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
             FROM repository_credentials WHERE repository_id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
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
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE repositories SET credential_type = NULL WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM repository_credentials WHERE repository_id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }
}
