//! Audit index behaviour suite (DESIGN §5), written once and run against both
//! backends: SQLite in a temporary directory, and PostgreSQL in a freshly
//! created schema of the server named by `VELLUM_TEST_POSTGRES_URL` (skipped,
//! with one plain line, when that variable is not set).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use vellum::index::{
    AccessRow, CommitRow, EventRow, Index, IndexBatch, IndexCounts, IndexError, IndexTarget,
    KeyRow, VerificationRow, postgres_url_from_env,
};

const CLUSTER: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;

/// A scratch database for one test; removed by `cleanup`.
struct Scratch {
    target: IndexTarget,
    _dir: Option<tempfile::TempDir>,
    postgres: Option<(String, String)>,
}

impl Scratch {
    async fn sqlite() -> Option<Scratch> {
        let dir = tempfile::tempdir().expect("create temp dir");
        let target = IndexTarget::parse(None, dir.path()).expect("default target");
        Some(Scratch {
            target,
            _dir: Some(dir),
            postgres: None,
        })
    }

    /// Creates a uniquely named schema and points `search_path` at it, so
    /// tests run in parallel and never touch other data.
    async fn postgres() -> Option<Scratch> {
        let Some(base) = postgres_url_from_env() else {
            println!("skipping: VELLUM_TEST_POSTGRES_URL not set");
            return None;
        };
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let schema = format!("vellum_test_{}_{n}_{nanos}", std::process::id());
        let pool = PgPool::connect(&base)
            .await
            .expect("connect to test server");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&pool)
            .await
            .expect("create test schema");
        pool.close().await;
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options[search_path]={schema}");
        Some(Scratch {
            target: IndexTarget::parse(Some(&url), std::path::Path::new("/")).expect("pg url"),
            _dir: None,
            postgres: Some((base, schema)),
        })
    }

    async fn cleanup(self) {
        if let Some((base, schema)) = self.postgres {
            let pool = PgPool::connect(&base)
                .await
                .expect("connect to test server");
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
                .execute(&pool)
                .await
                .expect("drop test schema");
            pool.close().await;
        }
    }
}

/// Runs `test` on a fresh scratch database and removes it even if the test panics.
async fn run<M, MF, T, TF>(make: M, test: T)
where
    M: FnOnce() -> MF,
    MF: Future<Output = Option<Scratch>>,
    T: FnOnce(IndexTarget) -> TF,
    TF: Future<Output = ()> + Send + 'static,
{
    let Some(scratch) = make().await else { return };
    let outcome = tokio::spawn(test(scratch.target.clone())).await;
    scratch.cleanup().await;
    if let Err(error) = outcome {
        std::panic::resume_unwind(error.into_panic());
    }
}

macro_rules! suite {
    ($backend:ident, $make:path, [$($test:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $test() {
                    super::run($make, super::$test).await
                }
            )*
        }
    };
}

suite!(
    sqlite,
    super::Scratch::sqlite,
    [
        fresh_migrations_and_reopen_is_noop,
        apply_is_idempotent,
        conflicting_rows_are_refused,
        large_batches_round_trip_and_refuse_one_forged_row,
        key_lifecycle_only_moves_forward,
        last_position_and_last_commit,
        reads_are_ordered_and_limited,
        values_above_i64_max_round_trip,
        reconcile_drops_rows_beyond_the_log,
        cluster_mismatch_is_refused,
        clear_keeps_access_and_verifications,
        forged_rows_fail_constraints,
    ]
);
suite!(
    postgres,
    super::Scratch::postgres,
    [
        fresh_migrations_and_reopen_is_noop,
        apply_is_idempotent,
        conflicting_rows_are_refused,
        large_batches_round_trip_and_refuse_one_forged_row,
        key_lifecycle_only_moves_forward,
        last_position_and_last_commit,
        reads_are_ordered_and_limited,
        values_above_i64_max_round_trip,
        reconcile_drops_rows_beyond_the_log,
        cluster_mismatch_is_refused,
        clear_keeps_access_and_verifications,
        forged_rows_fail_constraints,
    ]
);

// ---- fixtures ----

fn event(position: u64, stream: u64, stream_offset: u64) -> EventRow {
    EventRow {
        position,
        stream,
        stream_offset,
        op: position / 2,
        leaf_hash: [position as u8; 32],
        segment: 0,
        file_offset: position % 1_000_000 * 64,
    }
}

fn commit(op: u64, tree_size: u64) -> CommitRow {
    CommitRow {
        op,
        view: 1,
        tree_size,
        root: [op as u8 ^ 0xa5; 32],
        time_ns: 1_700_000_000_000_000_000 + op,
        certificate: format!("vellum.test/log\n{tree_size}\nroot\n\n— replica sig\n"),
    }
}

fn key(key_id: u64, stream: u64) -> KeyRow {
    KeyRow {
        key_id,
        stream,
        created_ns: 1_000 + key_id,
        rotated_ns: None,
        shredded_ns: None,
    }
}

fn access() -> AccessRow {
    AccessRow {
        payload: None,
        salt: None,
        time_ns: 42,
        principal: "dr.house".into(),
        role: "clinician".into(),
        action: "read".into(),
        stream: Some(7),
        offset_from: Some(0),
        offset_to: Some(10),
        purpose: Some("treatment".into()),
        outcome: "ok".into(),
        remote_addr: None,
        position: None,
    }
}

fn small_batch() -> IndexBatch {
    IndexBatch {
        access: Vec::new(),
        events: vec![event(0, 7, 0), event(1, 7, 1), event(2, 8, 0)],
        commits: vec![commit(1, 3)],
        keys: vec![key(1, 7), key(2, 8)],
    }
}

async fn open(target: &IndexTarget) -> Index {
    Index::open(target, CLUSTER).await.expect("open index")
}

/// Runs one scalar query on the raw database, bypassing the index API.
async fn raw_scalar(target: &IndexTarget, sql: &'static str) -> i64 {
    match target {
        IndexTarget::Sqlite(path) => {
            let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path))
                .await
                .expect("raw sqlite");
            let value = sqlx::query_scalar(sql).fetch_one(&pool).await.expect(sql);
            pool.close().await;
            value
        }
        IndexTarget::Postgres(url) => {
            let pool = PgPool::connect(url).await.expect("raw postgres");
            let value = sqlx::query_scalar(sql).fetch_one(&pool).await.expect(sql);
            pool.close().await;
            value
        }
    }
}

/// Executes one statement on the raw database, bypassing the index API.
async fn raw_execute(target: &IndexTarget, sql: &'static str) -> Result<(), sqlx::Error> {
    match target {
        IndexTarget::Sqlite(path) => {
            let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(path)).await?;
            let result = sqlx::query(sql).execute(&pool).await.map(drop);
            pool.close().await;
            result
        }
        IndexTarget::Postgres(url) => {
            let pool = PgPool::connect(url).await?;
            let result = sqlx::query(sql).execute(&pool).await.map(drop);
            pool.close().await;
            result
        }
    }
}

// ---- the suite ----

/// Goal: a fresh database gets the schema once; re-opening applies nothing and keeps the rows.
async fn fresh_migrations_and_reopen_is_noop(target: IndexTarget) {
    let index = open(&target).await;
    assert_eq!(
        index.counts().await.expect("counts"),
        IndexCounts::default()
    );
    index.apply(&small_batch()).await.expect("apply");
    index.close().await;
    let migrations = "SELECT count(*) FROM _sqlx_migrations";
    // 0001 (the schema), 0002 (the access trail projection), 0003 (any u64).
    assert_eq!(raw_scalar(&target, migrations).await, 3);

    let index = open(&target).await;
    assert_eq!(raw_scalar(&target, migrations).await, 3);
    let counts = index.counts().await.expect("counts");
    assert_eq!((counts.events, counts.commits, counts.keys), (3, 1, 2));
    index.close().await;
}

/// Goal: applying the same batch twice (a log replay) changes nothing and reads back the same rows.
async fn apply_is_idempotent(target: IndexTarget) {
    let index = open(&target).await;
    let batch = small_batch();
    index.apply(&batch).await.expect("first apply");
    let before = index.counts().await.expect("counts");
    index.apply(&batch).await.expect("second apply");
    assert_eq!(index.counts().await.expect("counts"), before);
    assert_eq!(
        index.events_after(0, 100).await.expect("events"),
        batch.events
    );
    assert_eq!(
        index.commits_after(0, 100).await.expect("commits"),
        batch.commits
    );
    assert_eq!(index.keys().await.expect("keys"), batch.keys);
    index.close().await;
}

/// Goal: a different row under an existing key is refused with table and key, and the batch writes nothing.
async fn conflicting_rows_are_refused(target: IndexTarget) {
    let index = open(&target).await;
    index.apply(&small_batch()).await.expect("apply");
    let mut forged = event(1, 7, 1);
    forged.leaf_hash = [0xff; 32];
    let cases = [
        (vec![forged], vec![], vec![], "events", "position 1"),
        (
            vec![event(9, 7, 1)],
            vec![],
            vec![],
            "events",
            "stream 7 offset 1",
        ),
        (vec![], vec![commit(1, 4)], vec![], "commits", "op 1"),
        (vec![], vec![], vec![key(2, 9)], "keys", "key_id 2"),
    ];
    for (mut events, commits, keys, table, key_text) in cases {
        events.push(event(5, 9, 0)); // a new, valid row in the same batch
        let batch = IndexBatch {
            access: Vec::new(),
            events,
            commits,
            keys,
        };
        match index.apply(&batch).await {
            Err(IndexError::Conflict { table: t, key: k }) => {
                assert_eq!((t, k.as_str()), (table, key_text));
            }
            other => panic!("expected conflict in {table}, got {other:?}"),
        }
        assert_eq!(
            index.last_position().await.expect("last"),
            Some(2),
            "batch rolled back"
        );
    }
    index.close().await;
}

/// Goal: a batch of many rows (inserted many per statement) reads back
/// row for row, replays harmlessly, and one forged row deep inside a large
/// replayed batch is still refused by table and key with nothing written.
async fn large_batches_round_trip_and_refuse_one_forged_row(target: IndexTarget) {
    let index = open(&target).await;
    // 203 rows: three full chunks of 64 and a remainder of 8 + 2 + 1.
    let rows = 203u64;
    let projected = |position: u64| AccessRow {
        position: Some(position),
        payload: Some(format!("{{\"p\":{position}}}")),
        salt: Some([position as u8; 32]),
        ..access()
    };
    let batch = IndexBatch {
        events: (0..rows).map(|p| event(p, 7 + p % 3, p / 3)).collect(),
        commits: (1..=rows).map(|op| commit(op, op)).collect(),
        keys: Vec::new(),
        access: (0..rows).map(|p| projected(1_000 + p)).collect(),
    };
    index.apply(&batch).await.expect("apply a large batch");
    assert_eq!(
        index.events_after(0, 1_000).await.expect("events"),
        batch.events
    );
    assert_eq!(
        index.commits_after(0, 1_000).await.expect("commits"),
        batch.commits
    );
    let access = index.access_projected().await.expect("access");
    assert_eq!(access.len() as u64, rows);
    assert!(
        access
            .iter()
            .zip(&batch.access)
            .all(|(stored, sent)| stored.payload == sent.payload
                && stored.salt == sent.salt.map(|s| s.to_vec())),
        "projected access rows read back as sent"
    );
    index
        .apply(&batch)
        .await
        .expect("replaying the batch is harmless");
    let mut forged = batch.clone();
    forged.events[150].leaf_hash = [0xee; 32];
    forged.events.push(event(rows, 99, 0)); // a new row in the same batch
    match index.apply(&forged).await {
        Err(IndexError::Conflict { table, key }) => {
            assert_eq!((table, key.as_str()), ("events", "position 150"));
        }
        other => panic!("expected a conflict on position 150, got {other:?}"),
    }
    let mut forged = batch.clone();
    forged.commits[100].root = [0xee; 32];
    match index.apply(&forged).await {
        Err(IndexError::Conflict { table, key }) => {
            assert_eq!((table, key.as_str()), ("commits", "op 101"));
        }
        other => panic!("expected a conflict on op 101, got {other:?}"),
    }
    assert_eq!(
        index.last_position().await.expect("last"),
        Some(rows - 1),
        "the refused batches wrote nothing"
    );
    index.close().await;
}

/// Goal: a key row may gain rotation then shredding times, but never lose or change them.
async fn key_lifecycle_only_moves_forward(target: IndexTarget) {
    let index = open(&target).await;
    let mut k = key(3, 7);
    let apply_key = |k: KeyRow| IndexBatch {
        access: Vec::new(),
        keys: vec![k],
        ..IndexBatch::default()
    };
    index.apply(&apply_key(k.clone())).await.expect("created");
    k.rotated_ns = Some(2_000);
    index.apply(&apply_key(k.clone())).await.expect("rotated");
    k.shredded_ns = Some(3_000);
    index.apply(&apply_key(k.clone())).await.expect("shredded");
    assert_eq!(index.keys().await.expect("keys"), vec![k.clone()]);
    let mut unshred = k.clone();
    unshred.shredded_ns = None;
    let refused = index.apply(&apply_key(unshred)).await;
    assert!(
        matches!(refused, Err(IndexError::Conflict { table: "keys", .. })),
        "{refused:?}"
    );
    assert_eq!(index.keys().await.expect("keys"), vec![k]);
    index.close().await;
}

/// Goal: last_position and last_commit are None on an empty index and the maxima afterwards.
async fn last_position_and_last_commit(target: IndexTarget) {
    let index = open(&target).await;
    assert_eq!(index.last_position().await.expect("last"), None);
    assert_eq!(index.last_commit().await.expect("last"), None);
    let batch = IndexBatch {
        access: Vec::new(),
        events: vec![event(4, 1, 1), event(3, 1, 0)],
        commits: vec![commit(9, 5), commit(2, 3)],
        keys: vec![],
    };
    index.apply(&batch).await.expect("apply");
    assert_eq!(index.last_position().await.expect("last"), Some(4));
    assert_eq!(index.last_commit().await.expect("last"), Some(commit(9, 5)));
    index.close().await;
}

/// Goal: reads return rows in position / offset / op order, from the given start, within the limit.
async fn reads_are_ordered_and_limited(target: IndexTarget) {
    let index = open(&target).await;
    // Two interleaved streams, written out of order.
    let mut events: Vec<EventRow> = (0..20).map(|p| event(p, p % 2, p / 2)).collect();
    events.reverse();
    let commits = (0..5).rev().map(|op| commit(op, op * 4)).collect();
    index
        .apply(&IndexBatch {
            access: Vec::new(),
            events,
            commits,
            keys: vec![],
        })
        .await
        .expect("apply");

    let odd = index.stream_events(1, 3, 4).await.expect("stream");
    let offsets: Vec<u64> = odd.iter().map(|e| e.stream_offset).collect();
    assert_eq!(offsets, vec![3, 4, 5, 6]);
    assert!(odd.iter().all(|e| e.stream == 1));
    assert_eq!(index.stream_events(1, 9, 100).await.expect("tail").len(), 1);
    assert!(
        index
            .stream_events(1, 10, 100)
            .await
            .expect("past end")
            .is_empty()
    );
    assert!(
        index
            .stream_events(5, 0, 100)
            .await
            .expect("no stream")
            .is_empty()
    );
    assert!(
        index
            .stream_events(0, 0, 0)
            .await
            .expect("limit 0")
            .is_empty()
    );

    let positions: Vec<u64> = index
        .events_after(15, 100)
        .await
        .expect("after")
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(positions, vec![15, 16, 17, 18, 19]);
    let ops: Vec<u64> = index
        .commits_after(1, 2)
        .await
        .expect("commits")
        .iter()
        .map(|c| c.op)
        .collect();
    assert_eq!(ops, vec![1, 2]);
    index.close().await;
}

/// Goal: the projection is total: any u64 (above i64::MAX too) in a stream id, key, time or access range is stored and read back exactly.
async fn values_above_i64_max_round_trip(target: IndexTarget) {
    let index = open(&target).await;
    let max = i64::MAX as u64;
    let odd_event = EventRow {
        file_offset: 64,
        ..event(0, u64::MAX, 0)
    };
    let edge_event = event(1, max + 1, 0);
    let odd_commit = CommitRow {
        view: u64::MAX,
        time_ns: max + 7,
        ..commit(1, 2)
    };
    let odd_key = KeyRow {
        key_id: u64::MAX,
        stream: u64::MAX,
        created_ns: max + 1,
        rotated_ns: Some(u64::MAX),
        shredded_ns: None,
    };
    let odd_access = AccessRow {
        time_ns: u64::MAX,
        stream: Some(18_446_744_073_709_551_615),
        offset_from: Some(max + 1),
        offset_to: Some(u64::MAX),
        position: Some(0),
        payload: Some("{}".into()),
        salt: Some([7; 32]),
        ..access()
    };
    let batch = IndexBatch {
        events: vec![odd_event.clone(), edge_event.clone()],
        commits: vec![odd_commit.clone()],
        keys: vec![odd_key.clone()],
        access: vec![odd_access.clone()],
    };
    index.apply(&batch).await.expect("odd values are indexed");
    // Replaying the same rows is accepted (they compare equal once stored).
    index.apply(&batch).await.expect("replay");
    assert_eq!(
        index.events_after(0, 10).await.expect("read"),
        vec![odd_event.clone(), edge_event]
    );
    assert_eq!(
        index
            .stream_events(u64::MAX, 0, 10)
            .await
            .expect("by stream"),
        vec![odd_event]
    );
    assert_eq!(
        index.commits_after(0, 10).await.expect("commits"),
        vec![odd_commit]
    );
    assert_eq!(index.keys().await.expect("keys"), vec![odd_key]);
    let projected = index.access_projected().await.expect("access");
    assert_eq!(projected.len(), 1);
    assert_eq!(projected[0].columns.time_ns, u64::MAX);
    assert_eq!(projected[0].columns.stream, Some(u64::MAX));
    assert_eq!(projected[0].columns.offset_from, Some(max + 1));
    assert_eq!(projected[0].columns.offset_to, Some(u64::MAX));
    let late = AccessRow {
        time_ns: u64::MAX,
        ..access()
    };
    index.record_access(&late).await.expect("direct access row");
    index
        .record_verification(&VerificationRow {
            time_ns: u64::MAX,
            scope: "test".into(),
            result: "pass".into(),
            report_hash: [1; 32],
        })
        .await
        .expect("verification row");
    // Dense counters the log assigns never reach 2^63: such a row is refused
    // by the schema (an error, never a wrapped value), and nothing is written.
    let before = index.counts().await.expect("counts");
    let impossible = IndexBatch {
        events: vec![event(max + 1, 3, 0)],
        ..IndexBatch::default()
    };
    assert!(index.apply(&impossible).await.is_err());
    assert_eq!(index.counts().await.expect("counts"), before);
    index.close().await;
}

/// Goal: reconcile drops exactly the rows beyond what the durable log backs and keeps the rest.
async fn reconcile_drops_rows_beyond_the_log(target: IndexTarget) {
    let index = open(&target).await;
    let access_at = |position: u64| AccessRow {
        position: Some(position),
        payload: Some("{}".into()),
        salt: Some([position as u8; 32]),
        ..access()
    };
    let batch = IndexBatch {
        events: vec![
            event(0, 7, 0),
            event(1, 7, 1),
            event(2, 8, 0),
            event(3, 8, 1),
        ],
        commits: vec![commit(1, 2), commit(2, 4)],
        keys: vec![key(1, 7), key(2, 8)],
        access: vec![access_at(1), access_at(3)],
    };
    index.apply(&batch).await.expect("apply");
    let backing = vellum::index::Backing {
        certified_through_op: 1,
        events: 2,
        key_ids: [1].into_iter().collect(),
    };
    // Commit 2, events 2 and 3, access at 3 and key 2: five rows.
    assert_eq!(index.reconcile(&backing).await.expect("reconcile"), 5);
    assert_eq!(index.last_position().await.expect("last"), Some(1));
    assert_eq!(
        index
            .last_commit()
            .await
            .expect("last commit")
            .map(|c| c.op),
        Some(1)
    );
    assert_eq!(index.keys().await.expect("keys"), vec![key(1, 7)]);
    let access: Vec<u64> = index
        .access_projected()
        .await
        .expect("access")
        .iter()
        .map(|a| a.position)
        .collect();
    assert_eq!(access, vec![1]);
    assert_eq!(index.reconcile(&backing).await.expect("again"), 0);
    index.close().await;
}

/// Goal: an index made for one cluster refuses to open for another and names both ids.
async fn cluster_mismatch_is_refused(target: IndexTarget) {
    open(&target).await.close().await;
    let other: u128 = 0xfeed;
    match Index::open(&target, other).await {
        Err(IndexError::ClusterMismatch { index, log }) => {
            assert_eq!(index, format!("{CLUSTER:032x}"));
            assert_eq!(log, format!("{other:032x}"));
        }
        other => panic!("expected cluster mismatch, got {other:?}"),
    }
    open(&target).await.close().await;
}

/// Goal: clear empties the projection tables but keeps the access and verification trails.
async fn clear_keeps_access_and_verifications(target: IndexTarget) {
    let index = open(&target).await;
    index.apply(&small_batch()).await.expect("apply");
    index.record_access(&access()).await.expect("access");
    let bare = AccessRow {
        payload: None,
        salt: None,
        stream: None,
        offset_from: None,
        offset_to: None,
        purpose: None,
        ..access()
    };
    index
        .record_access(&bare)
        .await
        .expect("access without range");
    let verification = VerificationRow {
        time_ns: 7,
        scope: "full".into(),
        result: "pass".into(),
        report_hash: [3; 32],
    };
    index
        .record_verification(&verification)
        .await
        .expect("verification");
    index.clear().await.expect("clear");
    let expected = IndexCounts {
        access: 2,
        verifications: 1,
        ..IndexCounts::default()
    };
    assert_eq!(index.counts().await.expect("counts"), expected);
    assert_eq!(index.last_position().await.expect("last"), None);
    index
        .apply(&small_batch())
        .await
        .expect("rebuild after clear");
    assert_eq!(index.counts().await.expect("counts").events, 3);
    index.close().await;
}

/// Goal: rows written behind the index's back with a short hash or a negative dense counter are refused.
async fn forged_rows_fail_constraints(target: IndexTarget) {
    open(&target).await.close().await;
    let forged = [
        "INSERT INTO events VALUES (100, 1, 1, 1, x'00', 0, 0)",
        "INSERT INTO commits VALUES (5, 1, -1, x'00', 0, 'note')",
        "INSERT INTO access (time_ns, principal, role, action, outcome, position) \
         VALUES (0, 'p', 'r', 'a', 'ok', -3)",
    ];
    for sql in forged {
        let sql = match target {
            // PostgreSQL spells a bytea literal differently.
            IndexTarget::Postgres(_) => match sql {
                s if s.contains("events") => {
                    "INSERT INTO events VALUES (100, 1, 1, 1, '\\x00', 0, 0)"
                }
                s if s.contains("commits") => {
                    "INSERT INTO commits VALUES (5, 1, -1, '\\x00', 0, 'note')"
                }
                s => s,
            },
            IndexTarget::Sqlite(_) => sql,
        };
        let error = raw_execute(&target, sql).await.expect_err(sql).to_string();
        assert!(error.to_lowercase().contains("check"), "{sql}: {error}");
    }
    let index = open(&target).await;
    assert_eq!(
        index.counts().await.expect("counts"),
        IndexCounts::default()
    );
    index.close().await;
}

/// Goal: the default index is a WAL-mode SQLite file named index.sqlite3 in the data directory.
#[tokio::test]
async fn sqlite_default_file_uses_wal() {
    let dir = tempfile::tempdir().expect("create temp dir");
    let target = IndexTarget::parse(None, dir.path()).expect("default target");
    assert_eq!(
        target,
        IndexTarget::Sqlite(dir.path().join("index.sqlite3"))
    );
    open(&target).await.close().await;
    let path = dir.path().join("index.sqlite3");
    assert!(path.is_file(), "{path:?} created");
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path))
        .await
        .expect("raw sqlite");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .expect("journal mode");
    pool.close().await;
    assert_eq!(mode, "wal");
}
