//! Recovery of the local log through its public API: torn tails, lost
//! certificates, segment rollover, index catch-up and rebuild, and the
//! PostgreSQL index backend end to end. Each ends with `verify` passing.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sqlx::AssertSqlSafe;
use vellum::log::{LocalLog, LogOptions, load_policy};
use vellum::storage::StorageConfig;

mod support;

fn init(dir: &tempfile::TempDir, index_url: Option<&str>) -> PathBuf {
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, index_url).expect("init");
    data
}

fn small_segments() -> LogOptions {
    LogOptions {
        storage: StorageConfig {
            segment_bytes_max: 4096,
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    }
}

fn event(i: u64) -> Bytes {
    Bytes::from(format!(
        "{{\"resourceType\":\"Observation\",\"i\":{i},\"pad\":\"{}\"}}",
        "x".repeat(200)
    ))
}

fn append_n(log: &LocalLog, stream: u64, n: u64) {
    for i in 0..n {
        log.append(stream, &[event(i)], None, None).expect("append");
    }
}

fn verify_passes(data: &Path, index_url: Option<&str>) {
    let policy = load_policy(&data.join("policy.txt")).expect("policy");
    let report = vellum::verify::verify_data_dir(data, &policy, index_url, &mut |_| {});
    assert!(report.passed, "verify must pass:\n{}", report.to_text());
}

fn last_segment(data: &Path) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files.pop().expect("at least one segment")
}

/// Goal: garbage after the last record (a torn write) is truncated, reported, and appends continue on a valid chain.
#[test]
fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 100, 5);
    log.close().expect("close");
    let segment = last_segment(&data);
    // The data end (the file may hold a zero window after it).
    let scan =
        vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster(&data)).expect("scan");
    let last = scan.segments.last().expect("a segment");
    let before = last.file_len - last.scan.window;
    // The torn write lies at the data end, inside the window.
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    std::os::unix::fs::FileExt::write_all_at(&file, &[0xab; 100], before).expect("write garbage");
    drop(file);
    let torn_bytes = std::fs::metadata(&segment).expect("stat").len() - before;
    assert!(torn_bytes >= 100);

    let (log, report) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    let torn = report.torn_tail.expect("the torn tail is reported");
    assert!(
        torn.contains(&format!("byte {before}")) && torn.contains(&format!("{torn_bytes} bytes")),
        "{torn}"
    );
    assert_eq!(log.read(100, 0, 100).expect("read").len(), 5);
    append_n(&log, 100, 2);
    log.close().expect("close");
    verify_passes(&data, None);
}

/// Goal: if the certificate record of the last op is lost, open signs the tail again and verify passes.
#[test]
fn lost_tail_certificate_is_signed_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 101, 3);
    log.close().expect("close");
    let segment = last_segment(&data);
    let bytes = std::fs::read(&segment).expect("read");
    let scan = vellum_audit::segment::scan_segment(&bytes, 0, cluster(&data));
    let last = scan.records.last().expect("records");
    assert_eq!(
        last.header.kind,
        vellum_audit::record::RecordKind::Certificate,
        "the log ends with a certificate"
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(last.offset)
        .expect("truncate");

    let (log, report) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    assert!(report.recertified, "the tail must be certified again");
    log.close().expect("close");
    verify_passes(&data, None);
}

fn cluster(data: &Path) -> u128 {
    let meta = vellum::datadir::NodeMeta::load(&vellum::datadir::DataDir::new(data)).expect("meta");
    meta.cluster_id().expect("cluster id")
}

/// Goal: many small segments roll over and seal; everything reads back after reopen and verifies.
#[test]
fn rollover_reopen_and_read_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, small_segments()).expect("open");
    append_n(&log, 102, 40);
    log.close().expect("close");
    let segments = std::fs::read_dir(data.join("segments"))
        .expect("dir")
        .count();
    assert!(segments >= 3, "expected several segments, got {segments}");
    let (log, report) = LocalLog::open(&data, small_segments()).expect("reopen");
    assert_eq!(report.events, 40);
    let read = log.read(102, 0, 1000).expect("read");
    assert_eq!(read.len(), 40);
    assert!(
        read.iter()
            .enumerate()
            .all(|(i, e)| e.payload == event(i as u64) && e.offset == i as u64)
    );
    append_n(&log, 102, 10);
    log.close().expect("close");
    verify_passes(&data, None);
}

/// Goal: an index that missed appends catches up on the next open; a deleted index is rebuilt.
#[test]
fn index_catches_up_and_rebuilds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let without = LogOptions {
        without_index: true,
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&data, without).expect("open without index");
    append_n(&log, 103, 7);
    log.close().expect("close");
    let policy = load_policy(&data.join("policy.txt")).expect("policy");
    let stale = vellum::verify::verify_data_dir(&data, &policy, None, &mut |_| {});
    assert!(
        !stale.passed,
        "an index that missed appends must fail verify"
    );

    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open with index");
    let status = log.index_status().expect("indexer");
    assert_eq!(status.last_position, Some(6));
    log.close().expect("close");
    verify_passes(&data, None);

    std::fs::remove_file(data.join("index.sqlite3")).expect("delete index");
    let _ = std::fs::remove_file(data.join("index.sqlite3-wal"));
    let _ = std::fs::remove_file(data.join("index.sqlite3-shm"));
    let counts = vellum::log::rebuild_index(&data, None).expect("rebuild");
    assert_eq!(counts.events, 7);
    verify_passes(&data, None);
}

/// Goal: the whole flow works with the audit index on PostgreSQL (skipped without VELLUM_TEST_POSTGRES_URL).
#[test]
fn postgres_index_end_to_end() {
    let Some(base) = vellum::index::postgres_url_from_env() else {
        eprintln!("skipping: VELLUM_TEST_POSTGRES_URL not set");
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let schema = format!(
        "vellum_log_test_{}_{}",
        std::process::id(),
        vellum::log::now_ns() % 1_000_000_007
    );
    let admin = runtime
        .block_on(sqlx::PgPool::connect(&base))
        .expect("connect");
    runtime
        .block_on(sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(&admin))
        .expect("schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options[search_path]={schema}");

    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, Some(&url));
    let options = LogOptions {
        index_url: Some(url.clone()),
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&data, options).expect("open");
    append_n(&log, 104, 6);
    log.close().expect("close");
    verify_passes(&data, Some(&url));
    assert!(
        !data.join("index.sqlite3").exists(),
        "no sqlite index when postgres is selected"
    );

    runtime
        .block_on(
            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(&admin),
        )
        .expect("drop");
}

/// Every file of a directory tree with its bytes and modification time.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let modified = std::fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .expect("mtime");
                out.push((path.clone(), std::fs::read(&path).expect("read"), modified));
            }
        }
    }
    out.sort();
    out
}

/// Goal: a certified op cut off the end of the log (cut inside its record) is
/// not silently dropped as a torn tail: the index's certified commit is a
/// floor, the open fails naming it, and nothing is changed.
#[test]
fn certified_ops_are_never_truncated_as_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 105, 2);
    log.close().expect("close");
    let segment = last_segment(&data);
    let bytes = std::fs::read(&segment).expect("read");
    let scan = vellum_audit::segment::scan_segment(&bytes, 0, cluster(&data));
    let last_op = scan
        .records
        .iter()
        .rev()
        .find(|r| r.header.kind == vellum_audit::record::RecordKind::Op)
        .expect("an op record");
    // Cut inside the last op's record: its certificate goes too.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open")
        .set_len(last_op.offset + 100)
        .expect("truncate");
    let before = snapshot(&data);
    let err =
        LocalLog::open(&data, LogOptions::default()).expect_err("the floor must refuse the open");
    let message = err.to_string();
    assert!(
        message.contains("certified") && message.contains("nothing was truncated"),
        "{message}"
    );
    let after = snapshot(&data);
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.clone())
        .collect();
    let segment_unchanged = !changed.iter().any(|p| p.starts_with(data.join("segments")));
    assert!(segment_unchanged, "segments changed: {changed:?}");
}

/// Goal: a read-only open (vellum read / proof) changes no byte and no
/// mtime of the data directory, even with a torn tail present.
#[test]
fn read_only_open_changes_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 106, 3);
    log.close().expect("close");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(last_segment(&data))
        .expect("segment");
    file.write_all(&[0x5a; 64]).expect("garbage");
    drop(file);
    let before = snapshot(&data);
    let mut options = LogOptions::default();
    options.storage.read_only = true;
    let (log, report) = LocalLog::open(&data, options).expect("read-only open");
    assert!(
        report
            .torn_tail
            .is_some_and(|t| t.contains("left in place"))
    );
    assert_eq!(log.read(106, 0, 10).expect("read").len(), 3);
    log.inclusion_proof(106, 2).expect("proof");
    assert!(
        log.append(106, &[event(9)], None, None).is_err(),
        "appends are refused read-only"
    );
    log.close().expect("close");
    assert_eq!(
        snapshot(&data),
        before,
        "a read-only open must change nothing"
    );
}

/// Goal: a saved view state whose commit is beyond the log (lost ops or an
/// edited file) refuses the open with both numbers, instead of hanging.
#[test]
fn saved_commit_beyond_the_log_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 107, 2);
    log.close().expect("close");
    std::fs::write(
        data.join(vellum::log::VSR_STATE_FILE),
        r#"{"view":0,"log_view":0,"commit":9}"#,
    )
    .expect("edit state");
    let err = LocalLog::open(&data, LogOptions::default()).expect_err("refused");
    let message = err.to_string();
    assert!(
        message.contains("op 9") && message.contains("op 2"),
        "{message}"
    );
}

/// Rewrites every segment as the code before zero windows wrote it: a
/// version 1 header and no bytes after the last record.
fn downgrade_segments_to_version_1(data: &Path) {
    let segments = data.join("segments");
    let scan = vellum_audit::segment::scan_log_dir(&segments, cluster(data)).expect("clean log");
    for segment in &scan.segments {
        let mut bytes = std::fs::read(&segment.path).expect("read");
        bytes.truncate((segment.file_len - segment.scan.window) as usize);
        let header = vellum_audit::segment::SegmentHeader {
            cluster: cluster(data),
            segment_index: segment.index,
            version: vellum_audit::segment::SEGMENT_VERSION_V1,
        };
        bytes[..64].copy_from_slice(&header.encode());
        std::fs::write(&segment.path, bytes).expect("write");
    }
}

/// Goal: a log written before zero windows (version 1 segments) passes
/// `verify`, opens with every event, takes appends (its last segment grows
/// without a window: a version 1 segment has none) and passes again.
#[test]
fn version_1_log_verifies_opens_and_goes_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 100, 20);
    log.close().expect("close");
    downgrade_segments_to_version_1(&data);
    verify_passes(&data, None);
    let (log, report) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    assert!(report.torn_tail.is_none(), "{:?}", report.torn_tail);
    assert_eq!(log.read(100, 0, 100).expect("read").len(), 20);
    append_n(&log, 100, 5);
    log.close().expect("close");
    verify_passes(&data, None);
    let scan = vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster(&data))
        .expect("clean log");
    let last = scan.segments.last().expect("a segment");
    assert_eq!((last.scan.version, last.scan.window), (1, 0));
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    assert_eq!(log.read(100, 0, 100).expect("read").len(), 25);
    log.close().expect("close");
}

/// Goal: after power loss during a batch that was never synced, its
/// sectors persisted out of order in the zero window (a lost sector at the
/// batch's start, a whole op record of the same batch after it), the
/// replica opens with every synced op, cuts the batch as a torn tail, goes
/// on, and `verify` passes.
#[test]
fn unsynced_batch_persisted_out_of_order_is_cut_and_verify_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir, None);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 100, 5);
    log.close().expect("close");
    // The index and keys as the crash leaves them: 5 appends certified.
    let crashed = dir.path().join("crashed");
    support::copy_dir(&data, &crashed);
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    append_n(&log, 100, 10);
    log.close().expect("close");
    let cluster = cluster(&data);
    let scan = vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster).expect("scan");
    let last = scan.segments.last().expect("a segment");
    let certificates: Vec<_> = last
        .scan
        .records
        .iter()
        .filter(|r| r.header.kind == vellum_audit::record::RecordKind::Certificate)
        .filter(|r| r.header.op > 5)
        .collect();
    // The unsynced batch: the lazy certificate of op 6 and the op after it,
    // up to the next certificate (written only once that op was synced).
    let (batch_start, batch_end) = (
        certificates[0].offset as usize,
        certificates[1].offset as usize,
    );
    let synced_ops = certificates[0].header.op;
    let ops_in_batch = last
        .scan
        .records
        .iter()
        .filter(|r| (batch_start..batch_end).contains(&(r.offset as usize)))
        .filter(|r| r.header.kind == vellum_audit::record::RecordKind::Op)
        .count();
    assert!(ops_in_batch >= 1, "a whole op follows the hole");
    let mut bytes = std::fs::read(&last.path).expect("read");
    bytes[batch_end..].fill(0);
    let sector = vellum_audit::segment::ZERO_RUN_SECTOR_BYTES as usize;
    bytes[batch_start..(batch_start / sector + 1) * sector].fill(0);
    let crashed_segment = crashed
        .join("segments")
        .join(last.path.file_name().expect("name"));
    std::fs::write(&crashed_segment, &bytes).expect("write the crash image");

    let (log, report) =
        LocalLog::open(&crashed, LogOptions::default()).expect("opens after the crash");
    let torn = report.torn_tail.expect("the unsynced batch is a torn tail");
    assert!(torn.contains(&format!("byte {batch_start}")), "{torn}");
    let events = log.read(100, 0, 100).expect("read");
    assert_eq!(events.len() as u64, synced_ops, "every synced op is kept");
    append_n(&log, 100, 2);
    log.close().expect("close");
    verify_passes(&crashed, None);
}
