-- Format 3: the projection is total. Every u64 is stored bit-cast into
-- INTEGER (the same 64 bits read as two's complement): 0..=i64::MAX keep
-- their value, a u64 above i64::MAX is stored as a negative number and read
-- back exactly (code: `src/index/model.rs`, `sql_int` / `u64_of`). So a
-- column that can carry a value chosen by a client or found in the log
-- (stream ids, access offsets and times, key ids and times, views, commit
-- times) no longer refuses negatives. The dense counters the log assigns and
-- that pages are read by (events.position, events.stream_offset, events.op,
-- events.segment, events.file_offset, commits.op, commits.tree_size,
-- access.position) keep CHECK (x >= 0): no log reaches 2^63 of them, and
-- paging from 0 must see every row. SQLite cannot drop a CHECK in place, so
-- the tables are rebuilt with their rows and indexes.

CREATE TABLE events_v3 (
    position      INTEGER PRIMARY KEY NOT NULL CHECK (position >= 0),
    stream        INTEGER NOT NULL,
    stream_offset INTEGER NOT NULL CHECK (stream_offset >= 0),
    op            INTEGER NOT NULL CHECK (op >= 0),
    leaf_hash     BLOB    NOT NULL CHECK (length(leaf_hash) = 32),
    segment       INTEGER NOT NULL CHECK (segment >= 0),
    file_offset   INTEGER NOT NULL CHECK (file_offset >= 0),
    UNIQUE (stream, stream_offset)
) STRICT;
INSERT INTO events_v3 SELECT position, stream, stream_offset, op, leaf_hash, segment, file_offset
    FROM events;
DROP TABLE events;
ALTER TABLE events_v3 RENAME TO events;
CREATE INDEX events_op ON events (op);

CREATE TABLE commits_v3 (
    op          INTEGER PRIMARY KEY NOT NULL CHECK (op >= 0),
    view        INTEGER NOT NULL,
    tree_size   INTEGER NOT NULL CHECK (tree_size >= 0),
    root        BLOB    NOT NULL CHECK (length(root) = 32),
    time_ns     INTEGER NOT NULL,
    certificate TEXT    NOT NULL CHECK (length(certificate) > 0)
) STRICT;
INSERT INTO commits_v3 SELECT op, view, tree_size, root, time_ns, certificate FROM commits;
DROP TABLE commits;
ALTER TABLE commits_v3 RENAME TO commits;
CREATE INDEX commits_tree_size ON commits (tree_size);

CREATE TABLE keys_v3 (
    key_id      INTEGER PRIMARY KEY NOT NULL,
    stream      INTEGER NOT NULL,
    created_ns  INTEGER NOT NULL,
    rotated_ns  INTEGER,
    shredded_ns INTEGER
) STRICT;
INSERT INTO keys_v3 SELECT key_id, stream, created_ns, rotated_ns, shredded_ns FROM keys;
DROP TABLE keys;
ALTER TABLE keys_v3 RENAME TO keys;

CREATE TABLE access_v3 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns     INTEGER NOT NULL,
    principal   TEXT    NOT NULL,
    role        TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    stream      INTEGER,
    offset_from INTEGER,
    offset_to   INTEGER,
    purpose     TEXT,
    outcome     TEXT    NOT NULL,
    remote_addr TEXT,
    position    INTEGER CHECK (position >= 0),
    payload     TEXT,
    salt        BLOB CHECK (salt IS NULL OR length(salt) = 32)
) STRICT;
INSERT INTO access_v3 SELECT id, time_ns, principal, role, action, stream, offset_from,
    offset_to, purpose, outcome, remote_addr, position, payload, salt FROM access;
DROP TABLE access;
ALTER TABLE access_v3 RENAME TO access;
CREATE INDEX access_time ON access (time_ns);
CREATE INDEX access_stream ON access (stream);
CREATE UNIQUE INDEX access_position ON access (position);

CREATE TABLE verifications_v3 (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    time_ns     INTEGER NOT NULL,
    scope       TEXT    NOT NULL,
    result      TEXT    NOT NULL,
    report_hash BLOB    NOT NULL CHECK (length(report_hash) = 32)
) STRICT;
INSERT INTO verifications_v3 SELECT id, time_ns, scope, result, report_hash FROM verifications;
DROP TABLE verifications;
ALTER TABLE verifications_v3 RENAME TO verifications;

UPDATE meta SET value = '3' WHERE key = 'format_version';
