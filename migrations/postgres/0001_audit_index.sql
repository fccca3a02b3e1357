-- Audit index, format version 1 (PostgreSQL dialect).
--
-- A projection of the log, never its source of truth: every row here can be
-- rebuilt from the segments and is checked against them by `vellum verify`.
-- No event payload is ever stored (P5): only positions, hashes and ids.
-- u64 values are stored as BIGINT (i64); the writer refuses values above
-- i64::MAX and the CHECKs below refuse negatives, so a forged row must at
-- least respect the shape of a real one. Same columns as the SQLite dialect.
-- Names are unqualified: the tables go into the first schema of search_path.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

INSERT INTO meta (key, value) VALUES ('format_version', '1');

CREATE TABLE events (
    position      BIGINT PRIMARY KEY NOT NULL CHECK (position >= 0),
    stream        BIGINT NOT NULL CHECK (stream >= 0),
    stream_offset BIGINT NOT NULL CHECK (stream_offset >= 0),
    op            BIGINT NOT NULL CHECK (op >= 0),
    leaf_hash     BYTEA  NOT NULL CHECK (octet_length(leaf_hash) = 32),
    segment       BIGINT NOT NULL CHECK (segment >= 0),
    file_offset   BIGINT NOT NULL CHECK (file_offset >= 0),
    UNIQUE (stream, stream_offset)
);

CREATE INDEX events_op ON events (op);

CREATE TABLE commits (
    op          BIGINT PRIMARY KEY NOT NULL CHECK (op >= 0),
    view        BIGINT NOT NULL CHECK (view >= 0),
    tree_size   BIGINT NOT NULL CHECK (tree_size >= 0),
    root        BYTEA  NOT NULL CHECK (octet_length(root) = 32),
    time_ns     BIGINT NOT NULL CHECK (time_ns >= 0),
    certificate TEXT   NOT NULL CHECK (length(certificate) > 0)
);

CREATE INDEX commits_tree_size ON commits (tree_size);

CREATE TABLE keys (
    key_id      BIGINT PRIMARY KEY NOT NULL CHECK (key_id >= 0),
    stream      BIGINT NOT NULL CHECK (stream >= 0),
    created_ns  BIGINT NOT NULL CHECK (created_ns >= 0),
    rotated_ns  BIGINT CHECK (rotated_ns >= 0),
    shredded_ns BIGINT CHECK (shredded_ns >= 0)
);

CREATE TABLE access (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ns     BIGINT NOT NULL CHECK (time_ns >= 0),
    principal   TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    stream      BIGINT CHECK (stream >= 0),
    offset_from BIGINT CHECK (offset_from >= 0),
    offset_to   BIGINT CHECK (offset_to >= 0),
    purpose     TEXT,
    outcome     TEXT   NOT NULL,
    remote_addr TEXT,
    position    BIGINT CHECK (position >= 0)
);

CREATE INDEX access_time ON access (time_ns);
CREATE INDEX access_stream ON access (stream);

CREATE TABLE verifications (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time_ns     BIGINT NOT NULL CHECK (time_ns >= 0),
    scope       TEXT   NOT NULL,
    result      TEXT   NOT NULL,
    report_hash BYTEA  NOT NULL CHECK (octet_length(report_hash) = 32)
);
