//! Rules both backends share, so SQLite and PostgreSQL cannot drift apart on them.

use crate::{RepositoryQuery, StoreError};
use builder_core::{
    EventEnvelope, Feature, FeatureId, Provider, Repository, RepositoryId, RepositoryState,
};
use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use sqlx::{Database, QueryBuilder};
use std::sync::Arc;
use tokio::sync::watch;

pub(crate) const READ_ALL_DEFAULT: u32 = 1000;
pub(crate) const READ_ALL_MAX: u32 = 10_000;
pub(crate) const TERMINAL_STATES: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

pub(crate) fn clamp_limit(limit: u32, default: u32, max: u32) -> i64 {
    i64::from(if limit == 0 { default } else { limit.min(max) })
}

/// Refuses an append whose envelopes or projection do not describe exactly the next
/// `events.len()` steps of this stream; a caller bug must not corrupt the log.
pub(crate) fn check_append(
    feature_id: FeatureId,
    expected_version: u64,
    events: &[EventEnvelope],
    projection: &Feature,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Err(StoreError::Invalid(
            "append needs at least one event".into(),
        ));
    }
    for (i, env) in events.iter().enumerate() {
        if env.feature_id != feature_id {
            return Err(StoreError::Invalid(format!(
                "event {} belongs to feature {}, not {feature_id}",
                env.event_id, env.feature_id
            )));
        }
        let want = expected_version + 1 + i as u64;
        if env.sequence != want {
            return Err(StoreError::Invalid(format!(
                "event {} has sequence {}, expected {want}",
                env.event_id, env.sequence
            )));
        }
    }
    if projection.id != feature_id {
        return Err(StoreError::Invalid(format!(
            "projection is of feature {}, not {feature_id}",
            projection.id
        )));
    }
    let last = expected_version + events.len() as u64;
    if projection.version != last {
        return Err(StoreError::Invalid(format!(
            "projection is at version {}, but the appended events end at {last}",
            projection.version
        )));
    }
    to_i64(last, "sequence")?;
    Ok(())
}

pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid(format!("{what} {v} is out of range")))
}

pub(crate) fn to_u64(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("{what} {v} is negative")))
}

/// Fixed width (nine fractional digits, `Z`), so SQLite can order and compare it as text.
pub(crate) fn ts_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

pub(crate) fn parse_ts(s: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("timestamp {s:?}: {e}")))
}

/// Repository timestamps are kept to the microsecond on both backends (PostgreSQL's
/// resolution), so both read back the same value.
pub(crate) fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.trunc_subsecs(6)
}

pub(crate) fn lower_query(q: Option<&str>) -> Option<String> {
    q.map(str::trim)
        .filter(|q| !q.is_empty())
        .map(str::to_lowercase)
}

pub(crate) fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("does not serialise: {e}")))
}

/// The projection columns of a feature, computed once for both backends.
pub(crate) struct ProjectionRow {
    pub repository_id: RepositoryId,
    pub state: &'static str,
    pub title: String,
    pub search_text: String,
    pub correlation_id: String,
    pub idempotency_key: Option<String>,
    pub version: i64,
    pub body: String,
}

impl ProjectionRow {
    pub fn new(f: &Feature) -> Result<Self, StoreError> {
        Ok(Self {
            repository_id: f.spec.repository_id,
            state: f.state.as_str(),
            title: f.spec.title.clone(),
            // Lowered in Rust: SQLite's lower() only knows ASCII.
            search_text: format!("{}\n{}", f.spec.title, f.spec.description).to_lowercase(),
            correlation_id: f.correlation_id.clone(),
            idempotency_key: Some(f.idempotency_key.clone()).filter(|k| !k.is_empty()),
            version: to_i64(f.version, "version")?,
            body: json(f)?,
        })
    }
}

pub(crate) fn parse_feature(body: &str) -> Result<Feature, StoreError> {
    serde_json::from_str(body).map_err(|e| StoreError::Corrupt(format!("feature projection: {e}")))
}

/// An event row with its columns already decoded by the backend.
pub(crate) struct EventRow {
    pub global_position: i64,
    pub event_id: uuid::Uuid,
    pub feature_id: uuid::Uuid,
    pub sequence: i64,
    pub event_type: String,
    pub schema_version: i64,
    pub timestamp: DateTime<Utc>,
    pub causation_id: Option<uuid::Uuid>,
    pub correlation_id: String,
    pub payload: serde_json::Value,
    pub metadata: serde_json::Value,
}

impl EventRow {
    pub fn into_envelope(self) -> Result<EventEnvelope, StoreError> {
        Ok(EventEnvelope {
            event_id: self.event_id,
            feature_id: FeatureId(self.feature_id),
            sequence: to_u64(self.sequence, "sequence")?,
            event_type: self.event_type,
            schema_version: u32::try_from(self.schema_version).map_err(|_| {
                StoreError::Corrupt(format!("schema version {}", self.schema_version))
            })?,
            timestamp: self.timestamp,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            payload: self.payload,
            metadata: serde_json::from_value(self.metadata)
                .map_err(|e| StoreError::Corrupt(format!("event metadata: {e}")))?,
            global_position: self.global_position,
        })
    }
}

pub(crate) fn parse_uuid(s: &str, what: &str) -> Result<uuid::Uuid, StoreError> {
    uuid::Uuid::parse_str(s).map_err(|_| StoreError::Corrupt(format!("{what} {s:?} is not a UUID")))
}

pub(crate) fn parse_json(s: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn repo_search_text(r: &Repository) -> String {
    format!("{}\n{}", r.name, r.url).to_lowercase()
}

pub(crate) fn repo_state_str(s: RepositoryState) -> &'static str {
    match s {
        RepositoryState::Active => "ACTIVE",
        RepositoryState::Inactive => "INACTIVE",
        RepositoryState::Deleted => "DELETED",
    }
}

pub(crate) fn parse_repo_state(s: &str) -> Result<RepositoryState, StoreError> {
    match s {
        "ACTIVE" => Ok(RepositoryState::Active),
        "INACTIVE" => Ok(RepositoryState::Inactive),
        "DELETED" => Ok(RepositoryState::Deleted),
        _ => Err(StoreError::Corrupt(format!("repository state {s:?}"))),
    }
}

/// A repository row with its columns already decoded by the backend.
pub(crate) struct RepositoryRow {
    pub id: uuid::Uuid,
    pub name: String,
    pub url: String,
    pub default_branch: String,
    pub provider: String,
    pub credential_type: Option<String>,
    pub properties: serde_json::Value,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_accessed_at: Option<DateTime<Utc>>,
}

impl RepositoryRow {
    pub fn into_repository(self) -> Result<Repository, StoreError> {
        Ok(Repository {
            id: RepositoryId(self.id),
            name: self.name,
            url: self.url,
            default_branch: self.default_branch,
            provider: Provider::parse(&self.provider)
                .ok_or_else(|| StoreError::Corrupt(format!("provider {:?}", self.provider)))?,
            credential_type: self.credential_type,
            properties: serde_json::from_value(self.properties)
                .map_err(|e| StoreError::Corrupt(format!("repository properties: {e}")))?,
            state: parse_repo_state(&self.state)?,
            created_at: self.created_at,
            updated_at: self.updated_at,
            last_accessed_at: self.last_accessed_at,
        })
    }
}

/// Every state but DELETED: what a repository listing shows unless told otherwise.
const LISTED_BY_DEFAULT: [RepositoryState; 2] =
    [RepositoryState::Active, RepositoryState::Inactive];

/// The WHERE, ORDER BY and LIMIT of a repository listing, for both backends. Only the SQL
/// spelling differs, and the caller gives it: the substring function (`instr` on SQLite,
/// `strpos` on PostgreSQL, both `(haystack, needle)` and 1-based) and how to order names
/// byte-wise. The state filter is in the query, never applied to a page afterwards, so
/// pages are full and DELETED rows can be asked for.
pub(crate) fn push_repository_filters<DB>(
    qb: &mut QueryBuilder<DB>,
    q: &RepositoryQuery,
    substring_fn: &str,
    name_order: &str,
) where
    DB: Database,
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    let states: &[RepositoryState] = if q.states.is_empty() {
        &LISTED_BY_DEFAULT
    } else {
        &q.states
    };
    qb.push(" WHERE state IN (");
    let mut list = qb.separated(", ");
    for s in states {
        list.push_bind(repo_state_str(*s).to_string());
    }
    qb.push(")");
    if let Some(text) = lower_query(q.query.as_deref()) {
        qb.push(" AND ")
            .push(substring_fn)
            .push("(search_text, ")
            .push_bind(text)
            .push(") > 0");
    }
    qb.push(" ORDER BY ")
        .push(name_order)
        .push(", id LIMIT ")
        .push_bind(clamp_limit(
            q.limit,
            RepositoryQuery::DEFAULT_LIMIT,
            RepositoryQuery::MAX_LIMIT,
        ))
        .push(" OFFSET ")
        .push_bind(i64::from(q.offset));
}

/// Whether a database error means "could not reach the database" rather than "the database
/// refused this": the first is an outage, answered as unavailable and counted by the
/// circuit breaker; the second is a bug or a bad request.
pub(crate) fn is_connection_failure(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        // A connection cut mid-message shows up as garbage as often as as an I/O error.
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| unreachable_code(&c)),
        _ => false,
    }
}

/// PostgreSQL SQLSTATEs of a server that is going away or refusing connections, and
/// SQLite's "busy" result codes (another process held the lock past the busy timeout:
/// SQLITE_BUSY and its extended codes RECOVERY, SNAPSHOT and TIMEOUT).
fn unreachable_code(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "5" | "261" | "517" | "773"
        )
}

/// Associated data binding a sealed credential to its repository.
pub(crate) fn credential_context(id: RepositoryId) -> Vec<u8> {
    format!("builder/repository-credential/{id}").into_bytes()
}

/// Which unique constraint a database error violated, if any (constraint name on
/// PostgreSQL, the message on SQLite, which names the columns instead).
pub(crate) fn unique_violation(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => Some(
            db.constraint()
                .map(str::to_string)
                .unwrap_or_else(|| db.message().to_string()),
        ),
        _ => None,
    }
}

/// Publishes the latest global position; never moves backwards, whichever of the
/// in-process send or a LISTEN/NOTIFY message arrives first.
#[derive(Clone)]
pub(crate) struct Notifier(Arc<watch::Sender<i64>>);

impl Notifier {
    pub fn new(initial: i64) -> Self {
        Self(Arc::new(watch::Sender::new(initial)))
    }

    pub fn advance(&self, position: i64) {
        advance(&self.0, position);
    }

    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.0.subscribe()
    }

    pub fn downgrade(&self) -> std::sync::Weak<watch::Sender<i64>> {
        Arc::downgrade(&self.0)
    }
}

pub(crate) fn advance(sender: &watch::Sender<i64>, position: i64) {
    sender.send_if_modified(|current| {
        if position > *current {
            *current = position;
            true
        } else {
            false
        }
    });
}

/// What a unique violation during an append means for the caller.
pub(crate) fn append_violation(constraint: &str, expected: u64, actual: u64) -> StoreError {
    if constraint.contains("idempotency_key") {
        StoreError::AlreadyExists {
            what: "a feature with this idempotency key".into(),
        }
    } else if constraint.contains("feature_branch") {
        StoreError::AlreadyExists {
            what: "an active feature writing this feature branch".into(),
        }
    } else if constraint.contains("event_id") {
        StoreError::AlreadyExists {
            what: "an event with this event id".into(),
        }
    } else {
        StoreError::Conflict { expected, actual }
    }
}

/// What a unique violation on the repositories table means for the caller.
pub(crate) fn repository_violation(constraint: &str, repo: &Repository) -> StoreError {
    if constraint.contains("name") {
        StoreError::AlreadyExists {
            what: format!("repository named {:?}", repo.name),
        }
    } else {
        StoreError::AlreadyExists {
            what: format!("repository {}", repo.id),
        }
    }
}

pub(crate) fn validate_credential_type(t: &str) -> Result<&str, StoreError> {
    let t = t.trim();
    if t.is_empty() || t.len() > 64 {
        return Err(StoreError::Invalid(
            "credential type must be 1–64 characters".into(),
        ));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_text_is_fixed_width_and_exact() {
        let t = DateTime::<Utc>::from_timestamp(1_700_000_000, 123_456_789).unwrap();
        let s = ts_text(&t);
        assert_eq!(s, "2023-11-14T22:13:20.123456789Z");
        assert_eq!(parse_ts(&s).unwrap(), t);
        let whole = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        assert_eq!(ts_text(&whole).len(), s.len());
        assert!(ts_text(&whole) < s);
    }

    #[test]
    fn limits_default_and_cap() {
        assert_eq!(clamp_limit(0, 50, 500), 50);
        assert_eq!(clamp_limit(7, 50, 500), 7);
        assert_eq!(clamp_limit(9999, 50, 500), 500);
    }

    #[test]
    fn connection_failures_are_told_from_refusals() {
        assert!(is_connection_failure(&sqlx::Error::PoolTimedOut));
        assert!(is_connection_failure(&sqlx::Error::Io(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused)
        )));
        assert!(!is_connection_failure(&sqlx::Error::RowNotFound));
        assert!(!is_connection_failure(&sqlx::Error::ColumnNotFound(
            "x".into()
        )));
        assert!(unreachable_code("08006"));
        assert!(unreachable_code("57P01"));
        assert!(unreachable_code("5"));
        assert!(unreachable_code("517"), "SQLITE_BUSY_SNAPSHOT");
        assert!(!unreachable_code("23505"), "unique violation");
        assert!(!unreachable_code("2067"), "SQLITE_CONSTRAINT_UNIQUE");
        assert!(!unreachable_code("42P01"), "undefined table");
    }

    #[test]
    fn notifier_never_goes_backwards() {
        let n = Notifier::new(5);
        let rx = n.subscribe();
        n.advance(3);
        assert_eq!(*rx.borrow(), 5);
        n.advance(9);
        assert_eq!(*rx.borrow(), 9);
    }
}
