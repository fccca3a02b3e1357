//! Rows of the audit index and their checked conversion to and from the
//! signed 64-bit integers that SQL stores.
//!
//! Every u64 goes to the database through [`to_i64`], which refuses values
//! above `i64::MAX` instead of wrapping; every value read back goes through
//! [`to_u64`] or [`to_hash`], which report a negative number or a hash of the
//! wrong length as [`IndexError::Corrupt`]. No payload is ever part of a row.

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

/// Converts `value` of `column` for storage, refusing values above i64::MAX.
pub(crate) fn to_i64(column: &'static str, value: u64) -> Result<i64, IndexError> {
    i64::try_from(value).map_err(|_| IndexError::OutOfRange { column, value })
}

fn to_i64_opt(column: &'static str, value: Option<u64>) -> Result<Option<i64>, IndexError> {
    value.map(|v| to_i64(column, v)).transpose()
}

/// Converts a stored value back, reporting a negative one as corruption.
pub(crate) fn to_u64(
    table: &'static str,
    column: &'static str,
    value: i64,
) -> Result<u64, IndexError> {
    u64::try_from(value).map_err(|_| IndexError::Corrupt {
        table,
        column,
        reason: format!("negative value {value}"),
    })
}

fn to_u64_opt(
    table: &'static str,
    column: &'static str,
    value: Option<i64>,
) -> Result<Option<u64>, IndexError> {
    value.map(|v| to_u64(table, column, v)).transpose()
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
            to_i64("events.position", self.position)?,
            to_i64("events.stream", self.stream)?,
            to_i64("events.stream_offset", self.stream_offset)?,
            to_i64("events.op", self.op)?,
            self.leaf_hash.to_vec(),
            to_i64("events.segment", self.segment)?,
            to_i64("events.file_offset", self.file_offset)?,
        ))
    }

    pub(crate) fn from_sql(row: EventSql) -> Result<EventRow, IndexError> {
        let t = "events";
        Ok(EventRow {
            position: to_u64(t, "position", row.0)?,
            stream: to_u64(t, "stream", row.1)?,
            stream_offset: to_u64(t, "stream_offset", row.2)?,
            op: to_u64(t, "op", row.3)?,
            leaf_hash: to_hash(t, "leaf_hash", &row.4)?,
            segment: to_u64(t, "segment", row.5)?,
            file_offset: to_u64(t, "file_offset", row.6)?,
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
            to_i64("commits.op", self.op)?,
            to_i64("commits.view", self.view)?,
            to_i64("commits.tree_size", self.tree_size)?,
            self.root.to_vec(),
            to_i64("commits.time_ns", self.time_ns)?,
            self.certificate.clone(),
        ))
    }

    pub(crate) fn from_sql(row: CommitSql) -> Result<CommitRow, IndexError> {
        let t = "commits";
        Ok(CommitRow {
            op: to_u64(t, "op", row.0)?,
            view: to_u64(t, "view", row.1)?,
            tree_size: to_u64(t, "tree_size", row.2)?,
            root: to_hash(t, "root", &row.3)?,
            time_ns: to_u64(t, "time_ns", row.4)?,
            certificate: row.5,
        })
    }
}

impl KeyRow {
    pub(crate) fn to_sql(&self) -> Result<KeySql, IndexError> {
        Ok((
            to_i64("keys.key_id", self.key_id)?,
            to_i64("keys.stream", self.stream)?,
            to_i64("keys.created_ns", self.created_ns)?,
            to_i64_opt("keys.rotated_ns", self.rotated_ns)?,
            to_i64_opt("keys.shredded_ns", self.shredded_ns)?,
        ))
    }

    pub(crate) fn from_sql(row: KeySql) -> Result<KeyRow, IndexError> {
        let t = "keys";
        Ok(KeyRow {
            key_id: to_u64(t, "key_id", row.0)?,
            stream: to_u64(t, "stream", row.1)?,
            created_ns: to_u64(t, "created_ns", row.2)?,
            rotated_ns: to_u64_opt(t, "rotated_ns", row.3)?,
            shredded_ns: to_u64_opt(t, "shredded_ns", row.4)?,
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
        check_text("access.principal", &self.principal, TEXT_BYTES_MAX)?;
        check_text("access.role", &self.role, TEXT_BYTES_MAX)?;
        check_text("access.action", &self.action, TEXT_BYTES_MAX)?;
        check_text("access.outcome", &self.outcome, TEXT_BYTES_MAX)?;
        check_text_opt("access.purpose", &self.purpose)?;
        check_text_opt("access.remote_addr", &self.remote_addr)?;
        Ok(AccessSql {
            time_ns: to_i64("access.time_ns", self.time_ns)?,
            stream: to_i64_opt("access.stream", self.stream)?,
            offset_from: to_i64_opt("access.offset_from", self.offset_from)?,
            offset_to: to_i64_opt("access.offset_to", self.offset_to)?,
            position: to_i64_opt("access.position", self.position)?,
        })
    }
}

impl VerificationRow {
    pub(crate) fn to_sql(&self) -> Result<i64, IndexError> {
        check_text("verifications.scope", &self.scope, TEXT_BYTES_MAX)?;
        check_text("verifications.result", &self.result, TEXT_BYTES_MAX)?;
        to_i64("verifications.time_ns", self.time_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the conversion is exact up to i64::MAX and refuses the next value.
    #[test]
    fn to_i64_refuses_above_max() {
        assert_eq!(to_i64("c", i64::MAX as u64).ok(), Some(i64::MAX));
        assert!(matches!(
            to_i64("c", i64::MAX as u64 + 1),
            Err(IndexError::OutOfRange { column: "c", .. })
        ));
        assert!(to_i64("c", u64::MAX).is_err());
        assert!(matches!(
            to_u64("t", "c", -1),
            Err(IndexError::Corrupt { .. })
        ));
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
