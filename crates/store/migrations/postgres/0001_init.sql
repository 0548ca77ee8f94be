CREATE TABLE events (
    global_position    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id           UUID        NOT NULL UNIQUE,
    feature_id         UUID        NOT NULL,
    sequence           BIGINT      NOT NULL CHECK (sequence >= 1),
    event_type         TEXT        NOT NULL,
    schema_version     INTEGER     NOT NULL,
    occurred_at        TIMESTAMPTZ NOT NULL,
    -- timestamptz keeps microseconds; the remaining nanoseconds (0–999) live here so an
    -- envelope reads back exactly as it was appended.
    occurred_at_nanos  SMALLINT    NOT NULL DEFAULT 0,
    causation_id       UUID,
    correlation_id     TEXT        NOT NULL,
    payload            JSONB       NOT NULL,
    metadata           JSONB       NOT NULL,
    -- The last line of defence of optimistic concurrency: two appends of the same sequence
    -- can never both commit.
    CONSTRAINT events_stream_sequence UNIQUE (feature_id, sequence)
);

CREATE TABLE features (
    id              UUID        PRIMARY KEY,
    repository_id   UUID        NOT NULL,
    state           TEXT        NOT NULL,
    title           TEXT        NOT NULL,
    -- Lowered in Rust so both backends agree on case-insensitive matching.
    search_text     TEXT        NOT NULL,
    correlation_id  TEXT        NOT NULL,
    -- NULL when the request carried none, so the unique index ignores it.
    idempotency_key TEXT,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    version         BIGINT      NOT NULL,
    body            JSONB       NOT NULL
);

CREATE UNIQUE INDEX features_idempotency_key ON features (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX features_created ON features (created_at DESC, id DESC);
CREATE INDEX features_repository ON features (repository_id, created_at DESC);
CREATE INDEX features_state ON features (state, created_at DESC);
CREATE INDEX features_correlation ON features (correlation_id);

CREATE TABLE repositories (
    id               UUID        PRIMARY KEY,
    name             TEXT        NOT NULL,
    url              TEXT        NOT NULL,
    default_branch   TEXT        NOT NULL,
    provider         TEXT        NOT NULL,
    credential_type  TEXT,
    properties       JSONB       NOT NULL,
    state            TEXT        NOT NULL,
    search_text      TEXT        NOT NULL,
    created_at       TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL,
    last_accessed_at TIMESTAMPTZ
);

-- A deleted repository frees its name for a new registration.
CREATE UNIQUE INDEX repositories_live_name ON repositories (name) WHERE state <> 'DELETED';

CREATE TABLE repository_credentials (
    repository_id   UUID        PRIMARY KEY REFERENCES repositories (id) ON DELETE CASCADE,
    credential_type TEXT        NOT NULL,
    -- Which key-encryption key wrapped `wrapped_key`, so keys can rotate.
    key_id          TEXT        NOT NULL,
    wrapped_key     BYTEA       NOT NULL,
    nonce           BYTEA       NOT NULL,
    ciphertext      BYTEA       NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);
