//! Errors of the audit index.
//!
//! The index is a projection of the log: a `Conflict` or `Corrupt` error means
//! the index disagrees with what the writer knows, and is reported, never
//! repaired in place (`vellum index rebuild` is the repair).

/// Everything that can go wrong while opening, writing or reading the index.
///
/// The underlying `sqlx` error is kept as the `source` of the error chain;
/// print the chain (`{:#}` with anyhow) to see the database's own message.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("no audit index at {target}")]
    Missing { target: String },
    #[error("cannot connect to audit index {target}")]
    Connect { target: String, source: sqlx::Error },
    #[error("cannot apply audit index migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("audit index query failed: {what}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("audit index table {table} already holds a different row at {key}")]
    Conflict { table: &'static str, key: String },
    #[error("text of column {column} is {bytes} bytes, above the limit of {max} bytes")]
    TooLong {
        column: &'static str,
        bytes: usize,
        max: usize,
    },
    #[error("audit index batch has {rows} rows, above the limit of {max} rows")]
    BatchTooLarge { rows: usize, max: usize },
    #[error("audit index belongs to cluster {index}, but the log belongs to cluster {log}")]
    ClusterMismatch { index: String, log: String },
    #[error("audit index has format version {found:?}, this build reads version {expected}")]
    UnsupportedFormat {
        found: String,
        expected: &'static str,
    },
    #[error("audit index row is corrupt: table {table}, column {column}: {reason}")]
    Corrupt {
        table: &'static str,
        column: &'static str,
        reason: String,
    },
    #[error("bad audit index url {0:?}: expected postgres://, postgresql:// or sqlite://<path>")]
    BadUrl(String),
}

/// Maps a `sqlx` error of the step named `what` to [`IndexError::Query`].
pub(crate) fn query_error(what: &'static str) -> impl FnOnce(sqlx::Error) -> IndexError {
    move |source| IndexError::Query { what, source }
}
