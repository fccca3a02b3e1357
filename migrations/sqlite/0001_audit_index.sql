-- Audit index, format version 1 (SQLite dialect).
--
-- A projection of the log, never its source of truth: every row here can be
-- rebuilt from the segments and is checked against them by `vellum verify`.
-- No event payload is ever stored (P5): only positions, hashes and ids.
-- u64 values are stored as INTEGER (i64); the writer refuses values above
-- i64::MAX and the CHECKs below refuse negatives, so a forged row must at
-- least respect the shape of a real one. STRICT makes SQLite enforce types.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;

INSERT INTO meta (key, value) VALUES ('format_version', '1');

CREATE TABLE events (
    position      INTEGER PRIMARY KEY NOT NULL CHECK (position >= 0),
    stream        INTEGER NOT NULL CHECK (stream >= 0),
    stream_offset INTEGER NOT NULL CHECK (stream_offset >= 0),
    op            INTEGER NOT NULL CHECK (op >= 0),
    leaf_hash     BLOB    NOT NULL CHECK (length(leaf_hash) = 32),
    segment       INTEGER NOT NULL CHECK (segment >= 0),
    file_offset   INTEGER NOT NULL CHECK (file_offset >= 0),
    UNIQUE (stream, stream_offset)
) STRICT;

CREATE INDEX events_op ON events (op);

CREATE TABLE commits (
    op          INTEGER PRIMARY KEY NOT NULL CHECK (op >= 0),
    view        INTEGER NOT NULL CHECK (view >= 0),
    tree_size   INTEGER NOT NULL CHECK (tree_size >= 0),
    root        BLOB    NOT NULL CHECK (length(root) = 32),
    time_ns     INTEGER NOT NULL CHECK (time_ns >= 0),
    certificate TEXT    NOT NULL CHECK (length(certificate) > 0)
) STRICT;

CREATE INDEX commits_tree_size ON commits (tree_size);

CREATE TABLE keys (
    key_id      INTEGER PRIMARY KEY NOT NULL CHECK (key_id >= 0),
    stream      INTEGER NOT NULL CHECK (stream >= 0),
    created_ns  INTEGER NOT NULL CHECK (created_ns >= 0),
    rotated_ns  INTEGER CHECK (rotated_ns >= 0),
    shredded_ns INTEGER CHECK (shredded_ns >= 0)
) STRICT;

CREATE TABLE access (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns     INTEGER NOT NULL CHECK (time_ns >= 0),
    principal   TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    stream      INTEGER CHECK (stream >= 0),
    offset_from INTEGER CHECK (offset_from >= 0),
    offset_to   INTEGER CHECK (offset_to >= 0),
    purpose     TEXT,
    outcome     TEXT    NOT NULL,
    remote_addr TEXT,
    position    INTEGER CHECK (position >= 0)
) STRICT;

CREATE INDEX access_time ON access (time_ns);
CREATE INDEX access_stream ON access (stream);

CREATE TABLE verifications (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns     INTEGER NOT NULL CHECK (time_ns >= 0),
    scope       TEXT    NOT NULL,
    result      TEXT    NOT NULL,
    report_hash BLOB    NOT NULL CHECK (length(report_hash) = 32)
) STRICT;
