//! The audit index after odd values, conflicts and crashes (issue 9, defects
//! 1 and 4), on one replica's data directory driven through the library and
//! the binary: any committed number is indexed and verified; a row the index
//! cannot take is skipped and named while later rows are indexed; a
//! certificate row whose record a crash took is reconciled on open; a
//! bit-flipped last record is damage, not a torn write; `verify --live`
//! fails on a lagging index.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions};
use vellum_audit::policy::Policy;

/// Runs `vellum args...`; returns (exit code, stdout, stderr).
fn vellum(args: &[&str]) -> (i32, String, String) {
    vellum_with(args, b"")
}

/// Runs `vellum args...` with `input` on stdin.
fn vellum_with(args: &[&str], input: &[u8]) -> (i32, String, String) {
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vellum"))
        .args(args)
        .env_remove("VELLUM_INDEX_URL")
        .env_remove("VELLUM_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vellum");
    // A command that refuses early may close stdin before reading it all.
    let _ = child.stdin.take().expect("piped").write_all(input);
    let out = child.wait_with_output().expect("wait for vellum");
    (
        out.status.code().expect("vellum exits, not killed"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("temp paths are utf-8")
}

/// A fresh initialized data directory inside `tmp`.
fn init(tmp: &tempfile::TempDir) -> PathBuf {
    let data = tmp.path().join("data");
    let (code, _, err) = vellum(&["init", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "init: {err}");
    data
}

fn open(data: &Path) -> LocalLog {
    LocalLog::open(data, support::wait_for_lock())
        .expect("open")
        .0
}

fn append(log: &LocalLog, stream: u64, text: &str) {
    log.append(stream, &[Bytes::from(text.to_string())], None, None)
        .expect("append");
}

/// `vellum verify`'s checks of the data directory (log, index, trail).
fn verify(data: &Path) -> vellum_audit::report::Report {
    let text = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    let policy = Policy::parse(&text).expect("policy parses");
    vellum::verify::verify_data_dir(data, &policy, None, &mut |_| {})
}

/// The last segment file and the offset of its last valid record.
fn last_record(data: &Path) -> (PathBuf, u64) {
    let policy = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    let policy = Policy::parse(&policy).expect("policy parses");
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin).expect("cluster id");
    let scan = vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster).expect("scan");
    let segment = scan.segments.last().expect("a segment");
    let record = segment.scan.records.last().expect("a record");
    (segment.path.clone(), record.offset)
}

/// Where the last record of the log ends (its last segment may hold a zero
/// window after it).
fn last_record_end(data: &Path) -> u64 {
    let policy = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    let policy = Policy::parse(&policy).expect("policy parses");
    let cluster = vellum_audit::verify::cluster_from_origin(&policy.origin).expect("cluster id");
    let scan = vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster).expect("scan");
    let segment = scan.segments.last().expect("a segment");
    segment.file_len - segment.scan.window
}

/// Goal: an access-trail event carrying 2^64-1 (stream, range) and a user
/// stream above i64::MAX are indexed, and offline verify passes.
#[test]
fn numbers_above_i64_max_are_indexed_and_verify() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let log = open(&data);
    let trail = concat!(
        r#"{"v":1,"time_ns":18446744073709551615,"principal":"anonymous","role":"none","#,
        r#""action":"read_stream","stream":18446744073709551615,"from":9223372036854775808,"#,
        r#""to":18446744073709551615,"outcome":"denied"}"#
    );
    vellum_compliance::trail::AccessEvent::from_payload(trail.as_bytes())
        .expect("the payload is a trail event");
    log.append_trail(&[Bytes::from(trail)])
        .expect("trail append");
    append(&log, u64::MAX, "{\"odd\":true}");
    append(&log, 16, "{\"after\":1}");
    let status = log.index_status().expect("indexed");
    assert_eq!(status.skipped_rows, 0, "{status:?}");
    log.close().expect("close");
    let report = verify(&data);
    assert!(report.passed, "verify after odd numbers:\n{report:?}");
}

/// A fresh PostgreSQL schema on the test server, as an index URL (None,
/// with one line, when `VELLUM_TEST_POSTGRES_URL` is unset); dropped by the
/// returned guard.
fn postgres_index() -> Option<(String, impl Drop)> {
    let Some(base) = vellum::index::postgres_url_from_env() else {
        println!("skipping: VELLUM_TEST_POSTGRES_URL not set");
        return None;
    };
    let schema = format!(
        "vellum_total_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos()
    );
    let server = base.clone();
    let run = move |sql: String| {
        let base = server.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let pool = sqlx::PgPool::connect(&base).await.expect("connect");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .expect("schema statement");
            pool.close().await;
        });
    };
    run(format!("CREATE SCHEMA {schema}"));
    struct SchemaGuard<F: FnMut()>(F);
    impl<F: FnMut()> Drop for SchemaGuard<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let separator = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{separator}options[search_path]={schema}");
    let drop_schema = format!("DROP SCHEMA {schema} CASCADE");
    Some((url, SchemaGuard(move || run(drop_schema.clone()))))
}

/// Goal: on PostgreSQL too, a trail event carrying 2^64-1 is indexed and
/// offline verify (against that index) passes.
#[test]
fn numbers_above_i64_max_are_indexed_and_verify_on_postgres() {
    let Some((url, _guard)) = postgres_index() else {
        return;
    };
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let options = LogOptions {
        index_url: Some(url.clone()),
        ..support::wait_for_lock()
    };
    let log = LocalLog::open(&data, options).expect("open").0;
    let trail = concat!(
        r#"{"v":1,"time_ns":18446744073709551615,"principal":"anonymous","role":"none","#,
        r#""action":"read_stream","stream":18446744073709551615,"outcome":"denied"}"#
    );
    log.append_trail(&[Bytes::from(trail)])
        .expect("trail append");
    append(&log, u64::MAX, "{\"odd\":true}");
    log.close().expect("close");
    let text = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    let policy = Policy::parse(&text).expect("policy parses");
    let report = vellum::verify::verify_data_dir(&data, &policy, Some(&url), &mut |_| {});
    assert!(report.passed, "verify against PostgreSQL:\n{report:?}");
}

/// Goal: a row the index cannot take is skipped, counted and named by
/// verify, and every later op is still indexed (the indexer does not stop).
#[test]
fn indexer_skips_a_refused_row_and_continues() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let log = open(&data);
    append(&log, 16, "{\"n\":0}");
    // A forged row at the position the next event will take.
    support::tamper_index(
        &data,
        &["INSERT INTO events VALUES (1, 99, 0, 9, zeroblob(32), 0, 0)"],
    );
    append(&log, 16, "{\"n\":1}");
    for n in 2..5 {
        append(&log, 16, &format!("{{\"n\":{n}}}"));
    }
    // The index applies rows off the write path: wait (bounded) for them.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let status = log.index_status().expect("indexed");
        if status.last_position == Some(4) || std::time::Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        status.skipped_rows, 1,
        "one row skipped and counted: {status:?}"
    );
    assert!(
        status
            .error
            .as_deref()
            .is_some_and(|e| e.contains("events.position=1")),
        "the skipped row is named: {status:?}"
    );
    assert_eq!(
        status.last_position,
        Some(4),
        "later events indexed: {status:?}"
    );
    log.close().expect("close");
    let log = open(&data);
    let status = log.index_status().expect("indexed");
    assert_eq!(
        status.last_position,
        Some(4),
        "later events indexed: {status:?}"
    );
    log.close().expect("close");
    let report = verify(&data);
    assert!(!report.passed, "the forged row is reported");
    let text = format!("{report:?}");
    assert!(
        text.contains("events.position=1"),
        "verify names the row:\n{text}"
    );
    assert!(
        !text.contains("events.position=3"),
        "later rows are fine:\n{text}"
    );
}

/// Goal: an index row of a certificate the log lost in a crash (the
/// replacement certificate differs, as when a cluster re-certifies the tail
/// at a later op) is dropped on open, and verify passes after the reopen.
#[test]
fn certificate_row_of_a_lost_record_is_reconciled_on_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let log = open(&data);
    for n in 0..3 {
        append(&log, 16, &format!("{{\"n\":{n}}}"));
    }
    log.close().expect("close");
    // The crash: the last certificate record (lazy) never reached the disk,
    // while the index already held its row — one that the certificate
    // signed again on restart will not equal.
    let (segment, offset) = last_record(&data);
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment");
    file.set_len(offset).expect("drop the certificate record");
    support::tamper_index(
        &data,
        &["UPDATE commits SET time_ns = time_ns + 1 WHERE op = (SELECT max(op) FROM commits)"],
    );
    let (log, report) = LocalLog::open(&data, support::wait_for_lock()).expect("reopen");
    assert!(report.recertified, "the tail was certified again");
    let status = log.index_status().expect("indexed");
    assert_eq!(status.skipped_rows, 0, "{status:?}");
    log.close().expect("close");
    let report = verify(&data);
    assert!(report.passed, "verify after reconcile:\n{report:?}");
}

/// Goal: a bit flipped in the last record (a certificate the index saw
/// durable) is refused as damage on open, and nothing is cut.
#[test]
fn bit_flip_in_the_last_record_is_damage_not_a_torn_write() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    for n in 0..2 {
        let input = format!("{{\"n\":{n}}}\n");
        let (code, _, err) = vellum_with(
            &["append", "--data-dir", s(&data), "--stream", "16"],
            input.as_bytes(),
        );
        assert_eq!(code, 0, "append: {err}");
    }
    let (segment, offset) = last_record(&data);
    let mut bytes = std::fs::read(&segment).expect("read segment");
    let len = bytes.len();
    let at = last_record_end(&data) as usize - 20;
    assert!(at as u64 > offset, "the flip lands in the last record");
    bytes[at] ^= 0x04;
    std::fs::write(&segment, &bytes).expect("flip");
    let append = ["append", "--data-dir", s(&data), "--stream", "16"];
    let (code, _, err) = vellum_with(&append, b"{\"n\":2}\n");
    assert_ne!(code, 0, "open must refuse damaged data");
    assert!(err.contains("damage"), "names the damage: {err}");
    assert!(
        err.contains(&segment.display().to_string()),
        "names the file: {err}"
    );
    let (code, _, err) = vellum(&["index", "rebuild", "--data-dir", s(&data)]);
    assert_ne!(code, 0, "index rebuild refuses too: {err}");
    assert_eq!(
        std::fs::metadata(&segment).expect("segment").len(),
        len as u64,
        "nothing was cut"
    );
    let (code, out, err) = vellum(&["verify", "--data-dir", s(&data)]);
    assert_ne!(code, 0, "verify fails on the damage: {out}{err}");
}

/// Goal: `verify --live` fails when the index lags the log by more than
/// --index-lag-max commits, and passes within the bound.
#[test]
fn live_verify_fails_when_the_index_lags_beyond_the_bound() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let log = open(&data);
    for n in 0..4 {
        append(&log, 16, &format!("{{\"n\":{n}}}"));
    }
    log.close().expect("close");
    // A frozen index: it stopped two commits ago.
    support::tamper_index(
        &data,
        &[
            "DELETE FROM commits WHERE op = (SELECT max(op) FROM commits)",
            "DELETE FROM commits WHERE op = (SELECT max(op) FROM commits)",
        ],
    );
    let dir = s(&data);
    let (code, out, err) = vellum(&[
        "verify",
        "--data-dir",
        dir,
        "--live",
        "--index-lag-max",
        "1",
    ]);
    assert_ne!(code, 0, "a lagging index fails live verify:\n{out}{err}");
    assert!(
        out.contains("lags the log by 2 commits"),
        "names the lag:\n{out}"
    );
    let (code, out, err) = vellum(&[
        "verify",
        "--data-dir",
        dir,
        "--live",
        "--index-lag-max",
        "2",
    ]);
    assert_eq!(code, 0, "within the bound:\n{out}{err}");
}

/// Goal: a stopped replica whose index ends before its log (killed before
/// the indexer caught up) fails offline `verify` with one `index_lag`
/// failure that names both ends and the remedy, not with a "missing" row
/// per event of the lag (which reads as rows deleted); the rows it holds
/// are still compared; and after `vellum index rebuild` it passes.
#[test]
fn a_stopped_index_behind_its_log_fails_once_naming_the_lag_and_rebuild_passes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = init(&tmp);
    let log = open(&data);
    for n in 0..5 {
        append(&log, 16, &format!("{{\"n\":{n}}}"));
    }
    log.close().expect("close");
    // What a kill -9 leaves: the last two commits and their events (written
    // in one transaction each) are not in the index yet.
    support::tamper_index(
        &data,
        &[
            "DELETE FROM commits WHERE op = (SELECT max(op) FROM commits)",
            "DELETE FROM commits WHERE op = (SELECT max(op) FROM commits)",
            "DELETE FROM events WHERE position = (SELECT max(position) FROM events)",
            "DELETE FROM events WHERE position = (SELECT max(position) FROM events)",
        ],
    );
    let dir = s(&data);
    let (code, out, err) = vellum(&["verify", "--data-dir", dir, "--json"]);
    assert_ne!(
        code, 0,
        "an index behind its log does not pass:\n{out}{err}"
    );
    let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
    let failures: Vec<&serde_json::Value> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .flat_map(|c| c["failures"].as_array().into_iter().flatten())
        .collect();
    let kinds: Vec<&str> = failures
        .iter()
        .map(|f| f["kind"].as_str().unwrap_or(""))
        .collect();
    assert!(
        !kinds.is_empty() && kinds.iter().all(|k| *k == "index_lag"),
        "only index_lag failures, got {kinds:?}:\n{out}"
    );
    let message = failures[0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("the index ends at commit 3") && message.contains("through commit 5"),
        "names both ends: {message}"
    );
    assert!(
        message.contains("vellum index rebuild"),
        "names the remedy: {message}"
    );

    // The rows it holds are still compared: an edited one is named.
    support::tamper_index(&data, &["UPDATE events SET stream = 17 WHERE position = 0"]);
    let (code, out, _) = vellum(&["verify", "--data-dir", dir]);
    assert_ne!(code, 0);
    assert!(
        out.contains("events.position=0"),
        "an edited row below the lag is still named:\n{out}"
    );

    let (code, _, err) = vellum(&["index", "rebuild", "--data-dir", dir]);
    assert_eq!(code, 0, "index rebuild: {err}");
    let (code, out, err) = vellum(&["verify", "--data-dir", dir]);
    assert_eq!(
        code, 0,
        "after the rebuild the index matches the log:\n{out}{err}"
    );
}
