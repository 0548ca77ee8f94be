-- Timestamps are RFC 3339 text with nine fractional digits and a `Z`: fixed width, so they
-- sort and compare as text, and envelopes round-trip to the nanosecond.

CREATE TABLE events (
    global_position INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id        TEXT    NOT NULL UNIQUE,
    feature_id      TEXT    NOT NULL,
    sequence        INTEGER NOT NULL CHECK (sequence >= 1),
    event_type      TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    occurred_at     TEXT    NOT NULL,
    causation_id    TEXT,
    correlation_id  TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    -- The last line of defence of optimistic concurrency: two appends of the same sequence
    -- can never both commit.
    CONSTRAINT events_stream_sequence UNIQUE (feature_id, sequence)
);

CREATE TABLE features (
    id              TEXT    PRIMARY KEY,
    repository_id   TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    title           TEXT    NOT NULL,
    -- lower(title || '\n' || description), lowered in Rust: SQLite's lower() is ASCII-only.
    search_text     TEXT    NOT NULL,
    correlation_id  TEXT    NOT NULL,
    -- NULL when the request carried none, so the unique index ignores it.
    idempotency_key TEXT,
    created_at      TEXT    NOT NULL,
    updated_at      TEXT    NOT NULL,
    version         INTEGER NOT NULL,
    body            TEXT    NOT NULL
);

CREATE UNIQUE INDEX features_idempotency_key ON features (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX features_created ON features (created_at DESC, id DESC);
CREATE INDEX features_repository ON features (repository_id, created_at DESC);
CREATE INDEX features_state ON features (state, created_at DESC);
CREATE INDEX features_correlation ON features (correlation_id);

CREATE TABLE repositories (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    url              TEXT NOT NULL,
    default_branch   TEXT NOT NULL,
    provider         TEXT NOT NULL,
    credential_type  TEXT,
    properties       TEXT NOT NULL,
    state            TEXT NOT NULL,
    search_text      TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    last_accessed_at TEXT
);

-- A deleted repository frees its name for a new registration.
CREATE UNIQUE INDEX repositories_live_name ON repositories (name) WHERE state <> 'DELETED';

CREATE TABLE repository_credentials (
    repository_id   TEXT PRIMARY KEY REFERENCES repositories (id) ON DELETE CASCADE,
    credential_type TEXT NOT NULL,
    -- Which key-encryption key wrapped `wrapped_key`, so keys can rotate.
    key_id          TEXT NOT NULL,
    wrapped_key     BLOB NOT NULL,
    nonce           BLOB NOT NULL,
    ciphertext      BLOB NOT NULL,
    updated_at      TEXT NOT NULL
);
