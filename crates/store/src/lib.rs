//! builder's persistence: the event store (append with an expected version, read, follow by
//! global position), the feature projection used by Get and Search, registered
//! repositories and their credentials, encrypted at rest.
//!
//! Two backends implement the same traits: SQLite (the embedded default, one file) and
//! PostgreSQL (many processes). This crate knows the domain core and nothing else of
//! builder: it must not depend on git, llm, sandbox, bus, worker or api crates, and it never
//! decides what is legal — callers fold and check events with `builder-core` first.

mod circuit;
mod commit;
mod common;
pub mod postgres;
pub mod private_fs;
pub mod secret;
pub mod sqlite;

#[cfg(test)]
mod suite;

use async_trait::async_trait;
use builder_core::{
    EventEnvelope, Feature, FeatureId, FeatureState, Repository, RepositoryId, RepositoryState,
};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use circuit::CircuitSettings;
pub use commit::{AppendError, append_events};
pub use postgres::PgStore;
pub use secret::{CredentialCipher, SealedCredential, SecretBytes};
pub use sqlite::SqliteStore;

/// What went wrong, in three families a caller must tell apart: the request itself
/// (`Conflict`, `AlreadyExists`, `NotFound`, `Invalid`: answering the same request again
/// gives the same answer), the database being out of reach for now (`Unavailable`: retry
/// later), and everything else, which a retry does not fix (configuration, corrupt data,
/// a query the database refused).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Someone else advanced the stream first: reload, decide again, retry.
    #[error("version conflict: expected stream version {expected}, found {actual}")]
    Conflict { expected: u64, actual: u64 },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error("{what} not found")]
    NotFound { what: String },
    /// The caller asked for something the store cannot represent (a sequence past
    /// `i64::MAX`, an empty append, …).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The database could not be reached, did not hand out a connection in time, or the
    /// circuit is open after repeated connection failures. Transient by nature.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A bad configuration value; `variable` names the environment variable to fix.
    #[error("{variable}: {reason}")]
    Config {
        variable: &'static str,
        reason: String,
    },
    #[error("credential encryption: {0}")]
    Crypto(String),
    /// A stored row no longer parses (hand-edited database, incompatible schema).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The database answered with an error that is not about reaching it.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl StoreError {
    /// True for failures to reach the database, which retrying later can fix.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

impl From<sqlx::Error> for StoreError {
    /// Sorts sqlx's errors into "could not reach the database" and "the database said no",
    /// so that neither an outage is reported as a bug nor a bug as an outage.
    fn from(e: sqlx::Error) -> Self {
        if common::is_connection_failure(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Database(e)
        }
    }
}

/// Filters for [`EventStore::search`]. Results are newest first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FeatureQuery {
    pub repository_id: Option<RepositoryId>,
    /// Empty: any state.
    pub states: Vec<FeatureState>,
    /// Inclusive lower bound on `created_at`.
    pub created_after: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `created_at`.
    pub created_before: Option<DateTime<Utc>>,
    /// Case-insensitive substring of the title or description.
    pub query: Option<String>,
    /// 0 means [`FeatureQuery::DEFAULT_LIMIT`]; capped at [`FeatureQuery::MAX_LIMIT`].
    pub limit: u32,
    pub offset: u32,
}

impl FeatureQuery {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
}

/// Filters for [`RepositoryStore::list_repositories`]. Results are ordered by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RepositoryQuery {
    /// Case-insensitive substring of the name or URL.
    pub query: Option<String>,
    /// Empty: every state but DELETED. DELETED repositories are listed only when asked for.
    pub states: Vec<RepositoryState>,
    /// 0 means [`RepositoryQuery::DEFAULT_LIMIT`]; capped at [`RepositoryQuery::MAX_LIMIT`].
    pub limit: u32,
    pub offset: u32,
}

impl RepositoryQuery {
    pub const DEFAULT_LIMIT: u32 = 50;
    pub const MAX_LIMIT: u32 = 500;
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Atomically appends `events` (stamped with sequences `expected_version + 1 ..`) and
    /// upserts the feature projection from `projection` (the fold after these events) in
    /// one transaction. If the stream is not at `expected_version`, returns
    /// [`StoreError::Conflict`] and writes nothing; of concurrent appenders with the same
    /// expected version exactly one succeeds. Returns the envelopes with their
    /// `global_position` set. A projection whose non-empty idempotency key belongs to another
    /// feature is refused with [`StoreError::AlreadyExists`].
    async fn append(
        &self,
        feature_id: FeatureId,
        expected_version: u64,
        events: &[EventEnvelope],
        projection: &Feature,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Events of one stream with `sequence > after_sequence`, in order.
    async fn read_stream(
        &self,
        feature_id: FeatureId,
        after_sequence: u64,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// Events of all streams with `global_position > after_position`, in global order, at
    /// most `limit` (0 means 1000; capped at 10 000).
    async fn read_all(
        &self,
        after_position: i64,
        limit: u32,
    ) -> Result<Vec<EventEnvelope>, StoreError>;

    /// The latest global position, updated whenever anything is appended (by this process,
    /// or with PostgreSQL by any process). Wake on `changed()`, then `read_all`.
    fn notifications(&self) -> tokio::sync::watch::Receiver<i64>;

    /// The projection of one feature.
    async fn get_feature(&self, id: FeatureId) -> Result<Option<Feature>, StoreError>;
    /// The newest feature with this correlation id.
    async fn find_by_correlation(
        &self,
        correlation_id: &str,
    ) -> Result<Option<Feature>, StoreError>;
    async fn find_by_idempotency_key(&self, key: &str) -> Result<Option<Feature>, StoreError>;
    async fn search(&self, q: &FeatureQuery) -> Result<Vec<Feature>, StoreError>;
    /// Features not COMPLETED, FAILED or CANCELLED, oldest first: the start-up re-enqueue list.
    async fn non_terminal_features(&self) -> Result<Vec<FeatureId>, StoreError>;

    /// One round trip to the database: `Ok` when it answers. Readiness probes call it.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[async_trait]
pub trait RepositoryStore: Send + Sync {
    /// Fails with [`StoreError::AlreadyExists`] if the id, or the name of a repository that
    /// is not deleted, is taken. `credential_type` is ignored: use `set_credential`.
    async fn create_repository(&self, repo: &Repository) -> Result<(), StoreError>;
    /// Also returns deleted repositories (state DELETED).
    async fn get_repository(&self, id: RepositoryId) -> Result<Option<Repository>, StoreError>;
    /// Only repositories that are not deleted.
    async fn get_repository_by_name(&self, name: &str) -> Result<Option<Repository>, StoreError>;
    /// Repositories matching `q`, by name. The state filter is part of the query, so a
    /// page holds `limit` matching repositories whenever that many exist.
    async fn list_repositories(&self, q: &RepositoryQuery) -> Result<Vec<Repository>, StoreError>;
    /// Replaces every field but `id`, `created_at` and `credential_type` (owned by
    /// `set_credential`). [`StoreError::NotFound`] if absent, `AlreadyExists` on a taken name.
    async fn update_repository(&self, repo: &Repository) -> Result<(), StoreError>;
    /// Soft delete: state DELETED, and its credential is destroyed. False if it was absent
    /// or already deleted.
    async fn delete_repository(&self, id: RepositoryId) -> Result<bool, StoreError>;
    /// Stores the credential encrypted and sets the repository's `credential_type`.
    async fn set_credential(
        &self,
        id: RepositoryId,
        credential_type: &str,
        secret: &SecretBytes,
    ) -> Result<(), StoreError>;
    async fn get_credential(
        &self,
        id: RepositoryId,
    ) -> Result<Option<(String, SecretBytes)>, StoreError>;
    /// Destroys the repository's credential and clears its `credential_type` (the client
    /// must give it again). False if there was none to destroy.
    async fn clear_credential(&self, id: RepositoryId) -> Result<bool, StoreError>;
}

pub trait Store: EventStore + RepositoryStore {}
impl<T: EventStore + RepositoryStore> Store for T {}

/// How the store behaves when the database is slow or gone.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    /// How long a request waits for a PostgreSQL connection (`DATABASE_ACQUIRE_TIMEOUT_SECONDS`)
    /// before it is answered "unavailable". SQLite keeps its own pool's default: its single
    /// writer connection is queued for, not out of reach.
    pub acquire_timeout: Duration,
    pub circuit: CircuitSettings,
}

impl StoreSettings {
    pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            acquire_timeout: Self::DEFAULT_ACQUIRE_TIMEOUT,
            circuit: CircuitSettings::default(),
        }
    }
}

/// Opens the store named by `database_url` (`DATABASE_URL`): none or `sqlite://…` for the
/// embedded SQLite file (default `<data_dir>/builder.db`), `postgres://` or `postgresql://`
/// for PostgreSQL. Credentials are sealed with the key from [`CredentialCipher::from_env`].
pub async fn open(
    database_url: Option<&str>,
    data_dir: &Path,
    migrate: bool,
) -> Result<Arc<dyn Store>, StoreError> {
    open_with_settings(database_url, data_dir, migrate, StoreSettings::default()).await
}

/// [`open`] with explicit settings.
pub async fn open_with_settings(
    database_url: Option<&str>,
    data_dir: &Path,
    migrate: bool,
    settings: StoreSettings,
) -> Result<Arc<dyn Store>, StoreError> {
    let cipher = CredentialCipher::from_env(data_dir)?;
    open_with(database_url, data_dir, migrate, cipher, settings).await
}

/// [`open`] with an explicit credential cipher.
pub async fn open_with_cipher(
    database_url: Option<&str>,
    data_dir: &Path,
    migrate: bool,
    cipher: CredentialCipher,
) -> Result<Arc<dyn Store>, StoreError> {
    open_with(
        database_url,
        data_dir,
        migrate,
        cipher,
        StoreSettings::default(),
    )
    .await
}

/// [`open`] with an explicit credential cipher and settings. The store comes behind a
/// circuit breaker (see [`CircuitSettings`]), so an unreachable database is answered at once
/// instead of once per request after a timeout.
pub async fn open_with(
    database_url: Option<&str>,
    data_dir: &Path,
    migrate: bool,
    cipher: CredentialCipher,
    settings: StoreSettings,
) -> Result<Arc<dyn Store>, StoreError> {
    let url = database_url.map(str::trim).filter(|u| !u.is_empty());
    match url {
        None => {
            let store = SqliteStore::open(&data_dir.join("builder.db"), cipher).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(circuit::Guarded::new(store, settings.circuit)))
        }
        Some(url) if url.starts_with("sqlite:") => {
            let store = SqliteStore::open_url(url, cipher).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(circuit::Guarded::new(store, settings.circuit)))
        }
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            if cipher.active_key_id() == secret::LOCAL_KEY_ID {
                tracing::warn!(
                    "{} is not set: credentials are sealed with the key file under the data \
                     directory, which other machines sharing this database do not have",
                    secret::ENV_KEY
                );
            }
            let store = PgStore::connect_with(url, cipher, settings.acquire_timeout).await?;
            if migrate {
                store.migrate().await?;
            }
            Ok(Arc::new(circuit::Guarded::new(store, settings.circuit)))
        }
        Some(url) => Err(StoreError::Config {
            variable: "DATABASE_URL",
            reason: format!(
                "unsupported scheme in {:?}: use sqlite://PATH, postgres:// or postgresql://, \
                 or leave it unset for the embedded database",
                url.split("://").next().unwrap_or(url)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unknown_database_url_names_the_variable() {
        let dir = tempfile::tempdir().unwrap();
        let cipher = CredentialCipher::new("t", &[0u8; 32]).unwrap();
        let err = open_with_cipher(Some("mysql://u:pw@h/db"), dir.path(), true, cipher)
            .await
            .err()
            .expect("mysql is not supported");
        let msg = err.to_string();
        assert!(msg.contains("DATABASE_URL"), "{msg}");
        assert!(
            !msg.contains("pw"),
            "the error must not echo the URL's password: {msg}"
        );
    }
}
