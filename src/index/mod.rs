//! The audit index (DESIGN §5): a SQL projection of the log, never its source
//! of truth.
//!
//! It maps global positions and stream offsets to where each event's record
//! lies on disk, lists commit certificates and the lifecycle of data keys, and
//! records accesses and verification runs. It holds positions, hashes and ids
//! only, never an event payload (P5). Everything in `events`, `commits` and
//! `keys` can be rebuilt from the log (`vellum index rebuild`) and is checked
//! against it by `vellum verify` (P2).
//!
//! Two backends share one code path: SQLite (a file in the data directory,
//! the default) and PostgreSQL (selected by URL). The schemas live in
//! `migrations/<backend>` and are applied with `sqlx::migrate!`; the DML in
//! [`sql`] is written once in the dialect both accept. [`on_backend!`]
//! expands one body for each pool type, so that shared code stays shared
//! while each expansion is checked against its own driver.

mod error;
mod model;
mod sql;
mod target;

use std::path::Path;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use error::IndexError;
pub use model::{
    AccessRow, CERTIFICATE_BYTES_MAX, CommitRow, EventRow, IndexBatch, IndexCounts, KeyRow,
    TEXT_BYTES_MAX, VerificationRow,
};
pub use target::{IndexTarget, SQLITE_FILE_NAME, TEST_POSTGRES_URL_VAR, postgres_url_from_env};

use error::query_error;
use model::{CommitSql, EventSql, KeySql, key_advances, sql_int, u64_of};

/// What the durable log backs, as far as reconciling the index on open needs:
/// rows beyond it were written for records a crash took from the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    /// The highest op with a certificate record in the log (0: none).
    pub certified_through_op: u64,
    /// Events in the log (positions below this are backed).
    pub events: u64,
    /// Data keys the log's ops use.
    pub key_ids: std::collections::BTreeSet<u64>,
}

/// One access row as projected from the trail: what the row claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectedAccess {
    /// The trail event's global position.
    pub position: u64,
    /// The payload text the row claims.
    pub payload: Option<String>,
    /// The commitment salt the row claims.
    pub salt: Option<Vec<u8>>,
    /// The row's columns, to compare with its payload.
    pub columns: AccessRow,
}

#[derive(sqlx::FromRow)]
struct ProjectedSql {
    position: i64,
    payload: Option<String>,
    salt: Option<Vec<u8>>,
    time_ns: i64,
    principal: String,
    role: String,
    action: String,
    stream: Option<i64>,
    offset_from: Option<i64>,
    offset_to: Option<i64>,
    purpose: Option<String>,
    outcome: String,
    remote_addr: Option<String>,
}

impl ProjectedSql {
    fn into_projected(self) -> Result<ProjectedAccess, IndexError> {
        let position = u64_of(self.position);
        Ok(ProjectedAccess {
            position,
            payload: self.payload.clone(),
            salt: self.salt.clone(),
            columns: AccessRow {
                time_ns: u64_of(self.time_ns),
                principal: self.principal,
                role: self.role,
                action: self.action,
                stream: self.stream.map(u64_of),
                offset_from: self.offset_from.map(u64_of),
                offset_to: self.offset_to.map(u64_of),
                purpose: self.purpose,
                outcome: self.outcome,
                remote_addr: self.remote_addr,
                position: Some(position),
                payload: self.payload,
                salt: None,
            },
        })
    }
}

/// Format version written by the migrations into `meta`; bumped with any
/// change to the meaning of a column.
pub const FORMAT_VERSION: &str = "3";
/// Most rows returned by one read; callers page with the last position seen.
pub const ROWS_PER_QUERY_MAX: u32 = 10_000;
/// Most rows (events + commits + keys) in one `apply` transaction.
pub const BATCH_ROWS_MAX: usize = 100_000;
/// Connections held by the pool of either backend.
const POOL_CONNECTIONS_MAX: u32 = 4;
/// Bytes of the SQLite file mapped into memory, at most.
const SQLITE_MMAP_BYTES: u64 = 256 << 20;
/// SQLite page cache per connection, in KiB.
const SQLITE_CACHE_KIB: u64 = 16 << 10;
/// How long SQLite waits for a lock held by another connection.
const SQLITE_BUSY_TIMEOUT_MS: u64 = 5_000;
/// How long a caller waits for a free pool connection.
const POOL_ACQUIRE_TIMEOUT_MS: u64 = 30_000;

const META_CLUSTER_ID: &str = "cluster_id";
const META_FORMAT_VERSION: &str = "format_version";

static SQLITE_MIGRATOR: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// An open audit index. Cheap to clone: the clones share one pool.
#[derive(Clone, Debug)]
pub struct Index {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the pool of whichever backend is open.
macro_rules! on_backend {
    ($backend:expr, $pool:ident => $body:expr) => {
        match $backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

/// Inserts one `events` row in transaction `$tx`, or checks that the row
/// already stored under its position is identical.
macro_rules! apply_event {
    ($tx:ident, $row:expr) => {{
        let row: &EventSql = $row;
        let inserted = sqlx::query(sql::EVENT_INSERT)
            .bind(row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(row.3)
            .bind(row.4.as_slice())
            .bind(row.5)
            .bind(row.6)
            .execute(&mut *$tx)
            .await
            .map_err(query_error("insert into events"))?
            .rows_affected();
        if inserted == 0 {
            let stored: Option<EventSql> = sqlx::query_as(sql::EVENT_BY_POSITION)
                .bind(row.0)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(query_error("read back events row"))?;
            check_event(stored.as_ref(), row)?;
        }
    }};
}

/// Inserts one `access` row with `$statement` on `$exec` (a pool or a transaction).
macro_rules! insert_access {
    ($exec:expr, $statement:expr, $row:expr, $n:expr, $what:expr) => {{
        let row: &AccessRow = $row;
        let n: &model::AccessSql = $n;
        sqlx::query($statement)
            .bind(n.time_ns)
            .bind(row.principal.as_str())
            .bind(row.role.as_str())
            .bind(row.action.as_str())
            .bind(n.stream)
            .bind(n.offset_from)
            .bind(n.offset_to)
            .bind(row.purpose.as_deref())
            .bind(row.outcome.as_str())
            .bind(row.remote_addr.as_deref())
            .bind(n.position)
            .bind(row.payload.as_deref())
            .bind(row.salt.as_ref().map(|s| s.as_slice()))
            .execute($exec)
            .await
            .map_err(query_error($what))?;
    }};
}

/// Inserts one `commits` row in `$tx`, or checks the stored one is identical.
macro_rules! apply_commit {
    ($tx:ident, $row:expr) => {{
        let row: &CommitSql = $row;
        let inserted = sqlx::query(sql::COMMIT_INSERT)
            .bind(row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(row.3.as_slice())
            .bind(row.4)
            .bind(row.5.as_str())
            .execute(&mut *$tx)
            .await
            .map_err(query_error("insert into commits"))?
            .rows_affected();
        if inserted == 0 {
            let stored: Option<CommitSql> = sqlx::query_as(sql::COMMIT_BY_OP)
                .bind(row.0)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(query_error("read back commits row"))?;
            if stored.as_ref() != Some(row) {
                return Err(conflict("commits", format!("op {}", row.0)));
            }
        }
    }};
}

/// Inserts one `keys` row in `$tx`; an existing row may only move forward in
/// its lifecycle (see [`key_advances`]).
macro_rules! apply_key {
    ($tx:ident, $row:expr) => {{
        let row: &KeySql = $row;
        let inserted = sqlx::query(sql::KEY_INSERT)
            .bind(row.0)
            .bind(row.1)
            .bind(row.2)
            .bind(row.3)
            .bind(row.4)
            .execute(&mut *$tx)
            .await
            .map_err(query_error("insert into keys"))?
            .rows_affected();
        if inserted == 0 {
            let stored: Option<KeySql> = sqlx::query_as(sql::KEY_BY_ID)
                .bind(row.0)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(query_error("read back keys row"))?;
            match stored {
                Some(stored) if stored == *row => {}
                Some(stored) if key_advances(&stored, row) => {
                    sqlx::query(sql::KEY_ADVANCE)
                        .bind(row.0)
                        .bind(row.3)
                        .bind(row.4)
                        .execute(&mut *$tx)
                        .await
                        .map_err(query_error("update keys lifecycle"))?;
                }
                _ => return Err(conflict("keys", format!("key_id {}", row.0))),
            }
        }
    }};
}

/// Rows in one multi-row insert, at most (13 columns × 64 rows stays far
/// below SQLite's and PostgreSQL's limits on bound values).
const INSERT_ROWS_MAX: usize = 64;

/// Splits `rows` for multi-row inserts: full chunks of [`INSERT_ROWS_MAX`],
/// then the powers of two of the remainder, so a table has at most seven
/// statement shapes and every one stays in the prepared-statement cache.
fn insert_chunks<T>(rows: &[T]) -> Vec<&[T]> {
    let mut chunks = Vec::new();
    let mut rest = rows;
    while !rest.is_empty() {
        let take = if rest.len() >= INSERT_ROWS_MAX {
            INSERT_ROWS_MAX
        } else {
            1 << rest.len().ilog2()
        };
        let (chunk, tail) = rest.split_at(take);
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// A query builder for `pool`'s database, starting with `head`.
fn builder_for<DB: sqlx::Database>(_pool: &sqlx::Pool<DB>, head: &str) -> sqlx::QueryBuilder<DB>
where
    DB::Arguments: Default,
{
    sqlx::QueryBuilder::new(head)
}

impl Index {
    /// Opens (creating if needed) the index at `target`, applies pending
    /// migrations, and binds it to `cluster`: an index made for another
    /// cluster is refused with both ids.
    pub async fn open(target: &IndexTarget, cluster: u128) -> Result<Index, IndexError> {
        let backend = match target {
            IndexTarget::Sqlite(path) => Backend::Sqlite(connect_sqlite(path, target).await?),
            IndexTarget::Postgres(url) => Backend::Postgres(connect_postgres(url, target).await?),
        };
        let index = Index { backend };
        match index.prepare(cluster).await {
            Ok(()) => Ok(index),
            Err(error) => {
                index.close().await;
                Err(error)
            }
        }
    }

    /// Opens an index that must already exist, for checking it: nothing is
    /// created, migrated or written (a SQLite file is opened read-only), so
    /// `vellum verify` never changes what it audits. A missing SQLite file is
    /// [`IndexError::Missing`].
    pub async fn open_existing(target: &IndexTarget, cluster: u128) -> Result<Index, IndexError> {
        let backend = match target {
            IndexTarget::Sqlite(path) => {
                if !path.exists() {
                    return Err(IndexError::Missing {
                        target: target.to_string(),
                    });
                }
                Backend::Sqlite(connect_sqlite_read_only(path, target).await?)
            }
            IndexTarget::Postgres(url) => Backend::Postgres(connect_postgres(url, target).await?),
        };
        let index = Index { backend };
        let checked = async {
            let version = index.meta_get(META_FORMAT_VERSION).await?;
            if version.as_deref() != Some(FORMAT_VERSION) {
                return Err(IndexError::UnsupportedFormat {
                    found: version.unwrap_or_default(),
                    expected: FORMAT_VERSION,
                });
            }
            match index.meta_get(META_CLUSTER_ID).await? {
                Some(stored) if stored == format!("{cluster:032x}") => Ok(()),
                Some(stored) => Err(IndexError::ClusterMismatch {
                    index: stored,
                    log: format!("{cluster:032x}"),
                }),
                None => Err(IndexError::Corrupt {
                    table: "meta",
                    column: "value",
                    reason: "cluster_id is missing".into(),
                }),
            }
        }
        .await;
        match checked {
            Ok(()) => Ok(index),
            Err(error) => {
                index.close().await;
                Err(error)
            }
        }
    }

    async fn prepare(&self, cluster: u128) -> Result<(), IndexError> {
        match &self.backend {
            Backend::Sqlite(pool) => SQLITE_MIGRATOR.run(pool).await?,
            Backend::Postgres(pool) => POSTGRES_MIGRATOR.run(pool).await?,
        }
        let version = self.meta_get(META_FORMAT_VERSION).await?;
        if version.as_deref() != Some(FORMAT_VERSION) {
            return Err(IndexError::UnsupportedFormat {
                found: version.unwrap_or_default(),
                expected: FORMAT_VERSION,
            });
        }
        self.claim_cluster(cluster).await
    }

    /// Records `cluster` in `meta` on first open; later opens must match it.
    async fn claim_cluster(&self, cluster: u128) -> Result<(), IndexError> {
        let ours = format!("{cluster:032x}");
        on_backend!(&self.backend, pool => {
            sqlx::query(sql::META_INSERT)
                .bind(META_CLUSTER_ID)
                .bind(ours.as_str())
                .execute(pool)
                .await
                .map_err(query_error("insert cluster id into meta"))?;
        });
        let stored = self.meta_get(META_CLUSTER_ID).await?;
        match stored {
            Some(stored) if stored == ours => Ok(()),
            Some(stored) => Err(IndexError::ClusterMismatch {
                index: stored,
                log: ours,
            }),
            None => Err(IndexError::Corrupt {
                table: "meta",
                column: "value",
                reason: "cluster_id missing right after it was written".into(),
            }),
        }
    }

    async fn meta_get(&self, key: &str) -> Result<Option<String>, IndexError> {
        on_backend!(&self.backend, pool => {
            sqlx::query_scalar(sql::META_GET)
                .bind(key)
                .fetch_optional(pool)
                .await
                .map_err(query_error("read meta"))
        })
    }

    /// Writes a batch of projection rows in one transaction. Rows already
    /// present with identical content are accepted (so replaying the log is
    /// harmless); a different row under the same key is
    /// [`IndexError::Conflict`] and nothing of the batch is written.
    pub async fn apply(&self, batch: &IndexBatch) -> Result<(), IndexError> {
        let rows = batch.events.len() + batch.commits.len() + batch.keys.len() + batch.access.len();
        if rows > BATCH_ROWS_MAX {
            return Err(IndexError::BatchTooLarge {
                rows,
                max: BATCH_ROWS_MAX,
            });
        }
        // Convert everything first, so an out-of-range value opens no transaction.
        let events: Vec<EventSql> = batch
            .events
            .iter()
            .map(EventRow::to_sql)
            .collect::<Result<_, _>>()?;
        let commits: Vec<CommitSql> = batch
            .commits
            .iter()
            .map(CommitRow::to_sql)
            .collect::<Result<_, _>>()?;
        let keys: Vec<KeySql> = batch
            .keys
            .iter()
            .map(KeyRow::to_sql)
            .collect::<Result<_, _>>()?;
        let access: Vec<(&AccessRow, model::AccessSql)> = batch
            .access
            .iter()
            .map(|row| row.to_sql().map(|n| (row, n)))
            .collect::<Result<_, _>>()?;
        on_backend!(&self.backend, pool => {
            let mut tx = pool.begin().await.map_err(query_error("begin apply transaction"))?;
            // Many rows per statement: one statement is one hop to the
            // driver's worker (SQLite) or one round trip (PostgreSQL), which
            // per row was most of the index's cost.
            for chunk in insert_chunks(&commits) {
                let mut insert = builder_for(pool, sql::COMMIT_INSERT_HEAD);
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(row.0)
                        .push_bind(row.1)
                        .push_bind(row.2)
                        .push_bind(row.3.clone())
                        .push_bind(row.4)
                        .push_bind(row.5.clone());
                });
                insert.push(sql::ON_CONFLICT_NOTHING);
                let inserted = insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("insert into commits"))?
                    .rows_affected();
                if inserted != chunk.len() as u64 {
                    // Some were stored before: each must be the same row.
                    for row in chunk {
                        apply_commit!(tx, row);
                    }
                }
            }
            for row in &keys {
                apply_key!(tx, row);
            }
            for chunk in insert_chunks(&events) {
                let mut insert = builder_for(pool, sql::EVENT_INSERT_HEAD);
                insert.push_values(chunk, |mut values, row| {
                    values
                        .push_bind(row.0)
                        .push_bind(row.1)
                        .push_bind(row.2)
                        .push_bind(row.3)
                        .push_bind(row.4.clone())
                        .push_bind(row.5)
                        .push_bind(row.6);
                });
                insert.push(sql::ON_CONFLICT_NOTHING);
                let inserted = insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("insert into events"))?
                    .rows_affected();
                if inserted != chunk.len() as u64 {
                    for row in chunk {
                        apply_event!(tx, row);
                    }
                }
            }
            for chunk in insert_chunks(&access) {
                let mut insert = builder_for(pool, sql::ACCESS_PROJECT_HEAD);
                insert.push_values(chunk, |mut values, (row, n)| {
                    values
                        .push_bind(n.time_ns)
                        .push_bind(row.principal.clone())
                        .push_bind(row.role.clone())
                        .push_bind(row.action.clone())
                        .push_bind(n.stream)
                        .push_bind(n.offset_from)
                        .push_bind(n.offset_to)
                        .push_bind(row.purpose.clone())
                        .push_bind(row.outcome.clone())
                        .push_bind(row.remote_addr.clone())
                        .push_bind(n.position)
                        .push_bind(row.payload.clone())
                        .push_bind(row.salt.map(|s| s.to_vec()));
                });
                insert.push(sql::ACCESS_PROJECT_TAIL);
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("project into access"))?;
            }
            tx.commit().await.map_err(query_error("commit apply transaction"))?;
        });
        Ok(())
    }

    /// Highest global position indexed, or `None` when no event is.
    pub async fn last_position(&self) -> Result<Option<u64>, IndexError> {
        let max: Option<i64> = on_backend!(&self.backend, pool => {
            sqlx::query_scalar(sql::EVENT_POSITION_MAX)
                .fetch_one(pool)
                .await
                .map_err(query_error("read highest event position"))?
        });
        Ok(max.map(u64_of))
    }

    /// The commit with the highest op, or `None` when no commit is indexed.
    pub async fn last_commit(&self) -> Result<Option<CommitRow>, IndexError> {
        let row: Option<CommitSql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::COMMIT_LAST)
                .fetch_optional(pool)
                .await
                .map_err(query_error("read last commit"))?
        });
        row.map(CommitRow::from_sql).transpose()
    }

    /// Events at positions `>= position_from`, ordered by position, at most
    /// `min(limit, ROWS_PER_QUERY_MAX)` of them.
    pub async fn events_after(
        &self,
        position_from: u64,
        limit: u32,
    ) -> Result<Vec<EventRow>, IndexError> {
        let from = sql_int(position_from);
        let rows: Vec<EventSql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::EVENTS_FROM)
                .bind(from)
                .bind(limit_rows(limit))
                .fetch_all(pool)
                .await
                .map_err(query_error("read events by position"))?
        });
        rows.into_iter().map(EventRow::from_sql).collect()
    }

    /// Events of `stream` at offsets `>= from`, ordered by stream offset, at
    /// most `min(limit, ROWS_PER_QUERY_MAX)` of them.
    pub async fn stream_events(
        &self,
        stream: u64,
        from: u64,
        limit: u32,
    ) -> Result<Vec<EventRow>, IndexError> {
        let stream = sql_int(stream);
        let from = sql_int(from);
        let rows: Vec<EventSql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::STREAM_EVENTS_FROM)
                .bind(stream)
                .bind(from)
                .bind(limit_rows(limit))
                .fetch_all(pool)
                .await
                .map_err(query_error("read events of stream"))?
        });
        rows.into_iter().map(EventRow::from_sql).collect()
    }

    /// Commits with op `>= op_from`, ordered by op, at most
    /// `min(limit, ROWS_PER_QUERY_MAX)` of them.
    pub async fn commits_after(
        &self,
        op_from: u64,
        limit: u32,
    ) -> Result<Vec<CommitRow>, IndexError> {
        let from = sql_int(op_from);
        let rows: Vec<CommitSql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::COMMITS_FROM)
                .bind(from)
                .bind(limit_rows(limit))
                .fetch_all(pool)
                .await
                .map_err(query_error("read commits by op"))?
        });
        rows.into_iter().map(CommitRow::from_sql).collect()
    }

    /// All data-key rows, ordered by key id.
    pub async fn keys(&self) -> Result<Vec<KeyRow>, IndexError> {
        let rows: Vec<KeySql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::KEYS_ALL)
                .fetch_all(pool)
                .await
                .map_err(query_error("read keys"))?
        });
        rows.into_iter().map(KeyRow::from_sql).collect()
    }

    /// Appends one access row (the authoritative copy is the system stream).
    pub async fn record_access(&self, row: &AccessRow) -> Result<(), IndexError> {
        let n = row.to_sql()?;
        on_backend!(&self.backend, pool => {
            insert_access!(pool, sql::ACCESS_INSERT, row, &n, "insert into access");
        });
        Ok(())
    }

    /// Every access row projected from the trail, in position order:
    /// (position, payload, salt) — what verify checks against the log.
    pub async fn access_projected(&self) -> Result<Vec<ProjectedAccess>, IndexError> {
        let rows: Vec<ProjectedSql> = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::ACCESS_PROJECTED)
                .fetch_all(pool)
                .await
                .map_err(query_error("read access"))?
        });
        rows.into_iter().map(ProjectedSql::into_projected).collect()
    }

    /// Access rows with no position: none of them comes from the trail.
    pub async fn access_unpositioned(&self) -> Result<u64, IndexError> {
        let n: i64 = on_backend!(&self.backend, pool => {
            sqlx::query_scalar(sql::ACCESS_UNPOSITIONED)
                .fetch_one(pool)
                .await
                .map_err(query_error("count access"))?
        });
        Ok(u64_of(n))
    }

    /// Appends one verification row.
    pub async fn record_verification(&self, row: &VerificationRow) -> Result<(), IndexError> {
        let time_ns = row.to_sql()?;
        on_backend!(&self.backend, pool => {
            sqlx::query(sql::VERIFICATION_INSERT)
                .bind(time_ns)
                .bind(row.scope.as_str())
                .bind(row.result.as_str())
                .bind(row.report_hash.as_slice())
                .execute(pool)
                .await
                .map_err(query_error("insert into verifications"))?;
        });
        Ok(())
    }

    /// Number of rows in each table.
    pub async fn counts(&self) -> Result<IndexCounts, IndexError> {
        let c: (i64, i64, i64, i64, i64) = on_backend!(&self.backend, pool => {
            sqlx::query_as(sql::COUNTS)
                .fetch_one(pool)
                .await
                .map_err(query_error("count rows"))?
        });
        Ok(IndexCounts {
            events: u64_of(c.0),
            commits: u64_of(c.1),
            keys: u64_of(c.2),
            access: u64_of(c.3),
            verifications: u64_of(c.4),
        })
    }

    /// Deletes, in one transaction, the projection rows the durable log does
    /// not back: commits above `certified_through_op`, events and projected
    /// access rows at positions from `events` on, and keys no op uses.
    /// Rows inside the log's range are never touched (a row that differs
    /// there is for `vellum verify` to report). Returns the rows deleted.
    pub async fn reconcile(&self, backing: &Backing) -> Result<u64, IndexError> {
        let op = sql_int(backing.certified_through_op);
        let position = sql_int(backing.events);
        let stored_keys = self.keys().await?;
        let stale_keys: Vec<i64> = stored_keys
            .iter()
            .filter(|k| !backing.key_ids.contains(&k.key_id))
            .map(|k| sql_int(k.key_id))
            .collect();
        let deleted = on_backend!(&self.backend, pool => {
            let mut tx = pool.begin().await.map_err(query_error("begin reconcile transaction"))?;
            let mut deleted = 0u64;
            for (statement, bound) in [
                (sql::RECONCILE_COMMITS, op),
                (sql::RECONCILE_EVENTS, position),
                (sql::RECONCILE_ACCESS, position),
            ] {
                deleted += sqlx::query(statement)
                    .bind(bound)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("delete rows the log does not back"))?
                    .rows_affected();
            }
            for key_id in &stale_keys {
                deleted += sqlx::query(sql::RECONCILE_KEY)
                    .bind(*key_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("delete a key row the log does not back"))?
                    .rows_affected();
            }
            tx.commit().await.map_err(query_error("commit reconcile transaction"))?;
            deleted
        });
        Ok(deleted)
    }

    /// Deletes the projection rows (events, commits, keys) in one transaction
    /// before `vellum index rebuild`; the access and verification trails stay.
    pub async fn clear(&self) -> Result<(), IndexError> {
        on_backend!(&self.backend, pool => {
            let mut tx = pool.begin().await.map_err(query_error("begin clear transaction"))?;
            for statement in sql::CLEAR_PROJECTION {
                sqlx::query(statement)
                    .execute(&mut *tx)
                    .await
                    .map_err(query_error("delete projection rows"))?;
            }
            tx.commit().await.map_err(query_error("commit clear transaction"))?;
        });
        Ok(())
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(self) {
        on_backend!(&self.backend, pool => pool.close().await)
    }
}

async fn connect_sqlite_read_only(
    path: &Path,
    target: &IndexTarget,
) -> Result<SqlitePool, IndexError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS));
    SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_with(options)
        .await
        .map_err(|source| connect_error(target, source))
}

async fn connect_sqlite(path: &Path, target: &IndexTarget) -> Result<SqlitePool, IndexError> {
    // synchronous=NORMAL in WAL mode: a power loss may drop the last index
    // transactions but never corrupts the file. The index is a projection
    // that catches up from the log on open, so it does not need a second
    // fsync per append on top of the log's own.
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_millis(SQLITE_BUSY_TIMEOUT_MS))
        // Pages come from the OS page cache through a mapping, not one
        // read() each, and a larger page cache keeps the B-tree interiors
        // the inserts walk (the index's reads were most of its syscalls).
        .pragma("mmap_size", SQLITE_MMAP_BYTES.to_string())
        .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"));
    SqlitePoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_with(options)
        .await
        .map_err(|source| connect_error(target, source))
}

async fn connect_postgres(url: &str, target: &IndexTarget) -> Result<PgPool, IndexError> {
    let options: PgConnectOptions = url
        .parse()
        .map_err(|source| connect_error(target, source))?;
    PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(Duration::from_millis(POOL_ACQUIRE_TIMEOUT_MS))
        .connect_with(options)
        .await
        .map_err(|source| connect_error(target, source))
}

fn connect_error(target: &IndexTarget, source: sqlx::Error) -> IndexError {
    IndexError::Connect {
        target: target.to_string(),
        source,
    }
}

fn conflict(table: &'static str, key: String) -> IndexError {
    IndexError::Conflict { table, key }
}

fn limit_rows(limit: u32) -> i64 {
    i64::from(limit.min(ROWS_PER_QUERY_MAX))
}

/// An event insert that changed nothing hit either its position or its
/// (stream, stream_offset); both must name this very row.
fn check_event(stored: Option<&EventSql>, row: &EventSql) -> Result<(), IndexError> {
    match stored {
        Some(stored) if stored == row => Ok(()),
        Some(_) => Err(conflict("events", format!("position {}", row.0))),
        None => Err(conflict(
            "events",
            format!("stream {} offset {}", row.1, row.2),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{INSERT_ROWS_MAX, insert_chunks};

    /// Goal: chunks cover every row once, in order, with at most seven
    /// sizes (so the prepared-statement cache never churns).
    #[test]
    fn insert_chunks_cover_rows_in_order_with_few_shapes() {
        let mut shapes = std::collections::BTreeSet::new();
        for n in 0..=1_000usize {
            let rows: Vec<usize> = (0..n).collect();
            let chunks = insert_chunks(&rows);
            let joined: Vec<usize> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert_eq!(joined, rows, "n = {n}");
            for chunk in &chunks {
                assert!(chunk.len().is_power_of_two() && chunk.len() <= INSERT_ROWS_MAX);
                shapes.insert(chunk.len());
            }
        }
        assert_eq!(shapes.len(), 7, "{shapes:?}");
    }
}
