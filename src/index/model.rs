//! Rows of the audit index and their conversion to and from the signed
//! 64-bit integers that SQL stores.
//!
//! The projection is total (format 3): anything that committed can be
//! indexed, however odd. Every u64 goes to the database through [`sql_int`],
//! a bit cast (the same 64 bits read as two's complement), and comes back
//! through [`u64_of`], its exact inverse: values up to `i64::MAX` are stored
//! as themselves, larger ones (a stream id of 2^64-1 in an access-trail event)
//! as negative numbers. This is the only place the mapping is written; the
//! migrations (`0003_any_u64.sql`) and `docs/format.md` describe it. A hash of
//! the wrong length read back is [`IndexError::Corrupt`]. No payload is ever
//! part of a row.

use super::error::IndexError;

/// Largest text accepted in a free-text column (principal, purpose, ...).
pub const TEXT_BYTES_MAX: usize = 4096;
/// Largest commit certificate (a signed note) accepted.
pub const CERTIFICATE_BYTES_MAX: usize = 64 * 1024;

/// One event of the log: where it is, which leaf it is, never what it says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRow {
    /// Global position, equal to the Merkle leaf index.
    pub position: u64,
    pub stream: u64,
    pub stream_offset: u64,
    pub op: u64,
    pub leaf_hash: [u8; 32],
    pub segment: u64,
    /// Byte offset of the op record inside its segment file.
    pub file_offset: u64,
}

/// One commit certificate: a checkpoint signed by a quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitRow {
    /// Commit number certified.
    pub op: u64,
    pub view: u64,
    pub tree_size: u64,
    pub root: [u8; 32],
    pub time_ns: u64,
    /// Signed note text of the certificate.
    pub certificate: String,
}

/// Lifecycle of one stream data key (the key itself never comes here).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: u64,
    pub stream: u64,
    pub created_ns: u64,
    pub rotated_ns: Option<u64>,
    pub shredded_ns: Option<u64>,
}

/// One audited access (P7 keeps the authoritative copy in the log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRow {
    pub time_ns: u64,
    pub principal: String,
    pub role: String,
    pub action: String,
    pub stream: Option<u64>,
    pub offset_from: Option<u64>,
    pub offset_to: Option<u64>,
    pub purpose: Option<String>,
    pub outcome: String,
    pub remote_addr: Option<String>,
    pub position: Option<u64>,
    /// The trail event's exact payload (JSON), when projected from the log.
    pub payload: Option<String>,
    /// The event's commitment salt, when projected from the log.
    pub salt: Option<[u8; 32]>,
}

/// One verification run and the hash of its report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerificationRow {
    pub time_ns: u64,
    pub scope: String,
    pub result: String,
    pub report_hash: [u8; 32],
}

/// Projection rows written in one transaction by [`super::Index::apply`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexBatch {
    pub events: Vec<EventRow>,
    pub commits: Vec<CommitRow>,
    pub keys: Vec<KeyRow>,
    /// Access-trail events projected from the system stream.
    pub access: Vec<AccessRow>,
}

/// Number of rows in each table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexCounts {
    pub events: u64,
    pub commits: u64,
    pub keys: u64,
    pub access: u64,
    pub verifications: u64,
}

/// `events` columns in table order.
pub(crate) type EventSql = (i64, i64, i64, i64, Vec<u8>, i64, i64);
/// `commits` columns in table order.
pub(crate) type CommitSql = (i64, i64, i64, Vec<u8>, i64, String);
/// `keys` columns in table order.
pub(crate) type KeySql = (i64, i64, i64, Option<i64>, Option<i64>);

/// The stored form of `value`: the same 64 bits as a signed integer.
pub(crate) fn sql_int(value: u64) -> i64 {
    i64::from_le_bytes(value.to_le_bytes())
}

fn sql_int_opt(value: Option<u64>) -> Option<i64> {
    value.map(sql_int)
}

/// The value a stored integer stands for: the inverse of [`sql_int`].
pub(crate) fn u64_of(value: i64) -> u64 {
    u64::from_le_bytes(value.to_le_bytes())
}

fn u64_of_opt(value: Option<i64>) -> Option<u64> {
    value.map(u64_of)
}

fn to_hash(
    table: &'static str,
    column: &'static str,
    bytes: &[u8],
) -> Result<[u8; 32], IndexError> {
    <[u8; 32]>::try_from(bytes).map_err(|_| IndexError::Corrupt {
        table,
        column,
        reason: format!("hash of {} bytes, expected 32", bytes.len()),
    })
}

pub(crate) fn check_text(column: &'static str, text: &str, max: usize) -> Result<(), IndexError> {
    if text.len() > max {
        return Err(IndexError::TooLong {
            column,
            bytes: text.len(),
            max,
        });
    }
    Ok(())
}

fn check_text_opt(column: &'static str, text: &Option<String>) -> Result<(), IndexError> {
    text.as_deref()
        .map_or(Ok(()), |t| check_text(column, t, TEXT_BYTES_MAX))
}

impl EventRow {
    pub(crate) fn to_sql(&self) -> Result<EventSql, IndexError> {
        Ok((
            sql_int(self.position),
            sql_int(self.stream),
            sql_int(self.stream_offset),
            sql_int(self.op),
            self.leaf_hash.to_vec(),
            sql_int(self.segment),
            sql_int(self.file_offset),
        ))
    }

    pub(crate) fn from_sql(row: EventSql) -> Result<EventRow, IndexError> {
        let t = "events";
        Ok(EventRow {
            position: u64_of(row.0),
            stream: u64_of(row.1),
            stream_offset: u64_of(row.2),
            op: u64_of(row.3),
            leaf_hash: to_hash(t, "leaf_hash", &row.4)?,
            segment: u64_of(row.5),
            file_offset: u64_of(row.6),
        })
    }
}

impl CommitRow {
    pub(crate) fn to_sql(&self) -> Result<CommitSql, IndexError> {
        check_text(
            "commits.certificate",
            &self.certificate,
            CERTIFICATE_BYTES_MAX,
        )?;
        Ok((
            sql_int(self.op),
            sql_int(self.view),
            sql_int(self.tree_size),
            self.root.to_vec(),
            sql_int(self.time_ns),
            self.certificate.clone(),
        ))
    }

    pub(crate) fn from_sql(row: CommitSql) -> Result<CommitRow, IndexError> {
        let t = "commits";
        Ok(CommitRow {
            op: u64_of(row.0),
            view: u64_of(row.1),
            tree_size: u64_of(row.2),
            root: to_hash(t, "root", &row.3)?,
            time_ns: u64_of(row.4),
            certificate: row.5,
        })
    }
}

impl KeyRow {
    pub(crate) fn to_sql(&self) -> Result<KeySql, IndexError> {
        Ok((
            sql_int(self.key_id),
            sql_int(self.stream),
            sql_int(self.created_ns),
            sql_int_opt(self.rotated_ns),
            sql_int_opt(self.shredded_ns),
        ))
    }

    pub(crate) fn from_sql(row: KeySql) -> Result<KeyRow, IndexError> {
        Ok(KeyRow {
            key_id: u64_of(row.0),
            stream: u64_of(row.1),
            created_ns: u64_of(row.2),
            rotated_ns: u64_of_opt(row.3),
            shredded_ns: u64_of_opt(row.4),
        })
    }
}

/// A key row may move forward in its lifecycle (rotated, then shredded) but
/// never back, and a timestamp once set never changes.
pub(crate) fn key_advances(stored: &KeySql, new: &KeySql) -> bool {
    let same_identity = stored.0 == new.0 && stored.1 == new.1 && stored.2 == new.2;
    let rotated_ok = stored.3.is_none() || stored.3 == new.3;
    let shredded_ok = stored.4.is_none() || stored.4 == new.4;
    same_identity && rotated_ok && shredded_ok
}

/// `access` columns without the id, ready to bind.
pub(crate) struct AccessSql {
    pub time_ns: i64,
    pub stream: Option<i64>,
    pub offset_from: Option<i64>,
    pub offset_to: Option<i64>,
    pub position: Option<i64>,
}

impl AccessRow {
    pub(crate) fn to_sql(&self) -> Result<AccessSql, IndexError> {
        // A row projected from the trail (it has a position) is bounded by
        // the log's event limit and must be indexable whatever it says; the
        // text limits guard only rows written directly.
        if self.position.is_none() {
            check_text("access.principal", &self.principal, TEXT_BYTES_MAX)?;
            check_text("access.role", &self.role, TEXT_BYTES_MAX)?;
            check_text("access.action", &self.action, TEXT_BYTES_MAX)?;
            check_text("access.outcome", &self.outcome, TEXT_BYTES_MAX)?;
            check_text_opt("access.purpose", &self.purpose)?;
            check_text_opt("access.remote_addr", &self.remote_addr)?;
        }
        Ok(AccessSql {
            time_ns: sql_int(self.time_ns),
            stream: sql_int_opt(self.stream),
            offset_from: sql_int_opt(self.offset_from),
            offset_to: sql_int_opt(self.offset_to),
            position: sql_int_opt(self.position),
        })
    }
}

impl VerificationRow {
    pub(crate) fn to_sql(&self) -> Result<i64, IndexError> {
        check_text("verifications.scope", &self.scope, TEXT_BYTES_MAX)?;
        check_text("verifications.result", &self.result, TEXT_BYTES_MAX)?;
        Ok(sql_int(self.time_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the stored form is the identity up to i64::MAX and every u64 round-trips.
    #[test]
    fn bit_cast_round_trips_every_u64() {
        let max = i64::MAX as u64;
        for value in [0, 1, 5001, max - 1, max, max + 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(u64_of(sql_int(value)), value, "{value}");
        }
        assert_eq!(sql_int(max), i64::MAX);
        assert_eq!(sql_int(5001), 5001);
        assert_eq!(sql_int(u64::MAX), -1);
        assert_eq!(sql_int(max + 1), i64::MIN);
        assert_eq!(u64_of(-1), u64::MAX);
    }

    /// Goal: a key may gain rotation and shredding times but never lose or change them.
    #[test]
    fn key_lifecycle_only_moves_forward() {
        let fresh: KeySql = (1, 2, 3, None, None);
        let rotated: KeySql = (1, 2, 3, Some(4), None);
        let shredded: KeySql = (1, 2, 3, Some(4), Some(5));
        assert!(key_advances(&fresh, &rotated));
        assert!(key_advances(&rotated, &shredded));
        assert!(!key_advances(&shredded, &rotated));
        assert!(!key_advances(&rotated, &(1, 2, 3, Some(9), None)));
        assert!(!key_advances(&fresh, &(1, 7, 3, None, None)));
    }
}
