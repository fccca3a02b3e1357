//! SQL statements shared by both backends.
//!
//! Only the schema differs between SQLite and PostgreSQL (see
//! `migrations/<backend>`); every statement here is written in the subset
//! both accept: `$n` placeholders, `ON CONFLICT DO NOTHING`, `LIMIT $n`.

pub(crate) const META_GET: &str = "SELECT value FROM meta WHERE key = $1";
pub(crate) const META_INSERT: &str =
    "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING";

pub(crate) const EVENT_INSERT: &str = "INSERT INTO events \
    (position, stream, stream_offset, op, leaf_hash, segment, file_offset) \
    VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING";
/// The head of a multi-row `events` insert (values and [`ON_CONFLICT_NOTHING`] follow).
pub(crate) const EVENT_INSERT_HEAD: &str = "INSERT INTO events \
    (position, stream, stream_offset, op, leaf_hash, segment, file_offset) ";
/// The tail of a multi-row insert: rows already stored are checked row by row.
pub(crate) const ON_CONFLICT_NOTHING: &str = " ON CONFLICT DO NOTHING";
pub(crate) const EVENT_BY_POSITION: &str = "SELECT position, stream, stream_offset, op, \
    leaf_hash, segment, file_offset FROM events WHERE position = $1";
pub(crate) const EVENTS_FROM: &str = "SELECT position, stream, stream_offset, op, \
    leaf_hash, segment, file_offset FROM events WHERE position >= $1 \
    ORDER BY position LIMIT $2";
pub(crate) const STREAM_EVENTS_FROM: &str = "SELECT position, stream, stream_offset, op, \
    leaf_hash, segment, file_offset FROM events WHERE stream = $1 AND stream_offset >= $2 \
    ORDER BY stream_offset LIMIT $3";
pub(crate) const EVENT_POSITION_MAX: &str = "SELECT max(position) FROM events";

pub(crate) const COMMIT_INSERT: &str = "INSERT INTO commits \
    (op, view, tree_size, root, time_ns, certificate) \
    VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING";
/// The head of a multi-row `commits` insert.
pub(crate) const COMMIT_INSERT_HEAD: &str = "INSERT INTO commits \
    (op, view, tree_size, root, time_ns, certificate) ";
pub(crate) const COMMIT_BY_OP: &str =
    "SELECT op, view, tree_size, root, time_ns, certificate FROM commits WHERE op = $1";
pub(crate) const COMMITS_FROM: &str = "SELECT op, view, tree_size, root, time_ns, certificate \
    FROM commits WHERE op >= $1 ORDER BY op LIMIT $2";
pub(crate) const COMMIT_LAST: &str = "SELECT op, view, tree_size, root, time_ns, certificate \
    FROM commits ORDER BY op DESC LIMIT 1";

pub(crate) const KEY_INSERT: &str = "INSERT INTO keys \
    (key_id, stream, created_ns, rotated_ns, shredded_ns) \
    VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";
pub(crate) const KEY_BY_ID: &str =
    "SELECT key_id, stream, created_ns, rotated_ns, shredded_ns FROM keys WHERE key_id = $1";
pub(crate) const KEY_ADVANCE: &str =
    "UPDATE keys SET rotated_ns = $2, shredded_ns = $3 WHERE key_id = $1";
pub(crate) const KEYS_ALL: &str =
    "SELECT key_id, stream, created_ns, rotated_ns, shredded_ns FROM keys ORDER BY key_id";

pub(crate) const ACCESS_INSERT: &str = "INSERT INTO access \
    (time_ns, principal, role, action, stream, offset_from, offset_to, purpose, outcome, \
    remote_addr, position, payload, salt) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
/// The head of a multi-row projection of trail events into `access` (values
/// and [`ACCESS_PROJECT_TAIL`] follow; replaying the log is harmless).
pub(crate) const ACCESS_PROJECT_HEAD: &str = "INSERT INTO access \
    (time_ns, principal, role, action, stream, offset_from, offset_to, purpose, outcome, \
    remote_addr, position, payload, salt) ";
pub(crate) const ACCESS_PROJECT_TAIL: &str = " ON CONFLICT (position) DO NOTHING";
/// Every projected access row (with a position), in position order.
pub(crate) const ACCESS_PROJECTED: &str = "SELECT position, payload, salt, time_ns, \
    principal, role, action, stream, offset_from, offset_to, purpose, outcome, remote_addr \
    FROM access WHERE position IS NOT NULL ORDER BY position";
/// Access rows that claim no position (none comes from the trail).
pub(crate) const ACCESS_UNPOSITIONED: &str = "SELECT count(*) FROM access WHERE position IS NULL";
pub(crate) const VERIFICATION_INSERT: &str = "INSERT INTO verifications \
    (time_ns, scope, result, report_hash) VALUES ($1, $2, $3, $4)";

pub(crate) const COUNTS: &str = "SELECT \
    (SELECT count(*) FROM events), \
    (SELECT count(*) FROM commits), \
    (SELECT count(*) FROM keys), \
    (SELECT count(*) FROM access), \
    (SELECT count(*) FROM verifications)";

/// Projection rows emptied by `clear` (access rows projected from the
/// trail included); verifications and pre-trail access rows stay.
pub(crate) const CLEAR_PROJECTION: [&str; 4] = [
    "DELETE FROM events",
    "DELETE FROM commits",
    "DELETE FROM keys",
    "DELETE FROM access WHERE position IS NOT NULL",
];

/// Reconcile on open: rows beyond what the durable log backs. Positions and
/// ops are dense counters below 2^63, so `>` on their stored form is exact.
pub(crate) const RECONCILE_COMMITS: &str = "DELETE FROM commits WHERE op > $1";
pub(crate) const RECONCILE_EVENTS: &str = "DELETE FROM events WHERE position >= $1";
pub(crate) const RECONCILE_ACCESS: &str =
    "DELETE FROM access WHERE position IS NOT NULL AND position >= $1";
pub(crate) const RECONCILE_KEY: &str = "DELETE FROM keys WHERE key_id = $1";
