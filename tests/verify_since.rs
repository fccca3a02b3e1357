//! Incremental `vellum verify --since` (issue 11): from the JSON report of
//! an earlier run (its checkpoint and the tree's frontier there), a run
//! reads only the part of the log after the kept checkpoint. These tests
//! pin what it still catches (a changed new record, a checkpoint of a
//! fork, a bad or foreign kept checkpoint) and what it by design does not
//! (a changed old record, which only a full verify sees).

mod support;

use support::{TestDir, copy_dir, vellum_exe, wait_for_lock};

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions};
use vellum::storage::{SEGMENT_BYTES_MIN, StorageConfig};
use vellum_audit::checkpoint::Certificate;
use vellum_audit::record::{HEADER_BYTES, RecordKind};
use vellum_audit::since::INCREMENTAL_NOTE;
use vellum_audit::verify::SINCE_CHECK;

/// Tiny segments, so that a log of a few dozen events spans many files.
fn small_segments() -> LogOptions {
    LogOptions {
        storage: StorageConfig {
            segment_bytes_max: SEGMENT_BYTES_MIN,
            ..StorageConfig::default()
        },
        ..wait_for_lock()
    }
}

fn append(data: &Path, appends: u64, tag: &str) {
    let (log, _) = LocalLog::open(data, small_segments()).expect("open");
    for i in 0..appends {
        let events: Vec<Bytes> = (0..3)
            .map(|j| {
                Bytes::from(format!(
                    "{{\"{tag}\":{i},\"j\":{j},\"pad\":\"{}\"}}",
                    "x".repeat(200)
                ))
            })
            .collect();
        log.append(16 + i % 3, &events, None, None).expect("append");
    }
    log.close().expect("close");
}

fn init(dir: &TestDir, name: &str) -> PathBuf {
    let data = dir.path().join(name);
    vellum::init::init_data_dir(&data, None).expect("init");
    data
}

/// `vellum verify --data-dir DATA --json ARGS`: (exit code, report).
fn verify(data: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    verify_json("--data-dir", data, args)
}

/// `vellum verify SCOPE PATH --policy PATH/policy.txt --json ARGS`, where
/// SCOPE is `--data-dir` or `--cluster`: (exit code, report).
fn verify_json(scope: &str, path: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    let output = Command::new(vellum_exe())
        .arg("verify")
        .arg(scope)
        .arg(path)
        .arg("--policy")
        .arg(path.join("policy.txt"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run vellum verify");
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output.status.code().expect("an exit code"), report)
}

/// A full verify that passes, its JSON report kept at `out` (what an
/// auditor keeps for the next `--since`).
fn keep_report(data: &Path, out: &Path) -> serde_json::Value {
    let (code, report) = verify(data, &[]);
    assert_eq!(code, 0, "{report}");
    std::fs::write(out, report.to_string()).expect("keep the report");
    report
}

fn since(data: &Path, kept: &Path) -> (i32, serde_json::Value) {
    verify(data, &["--since", kept.to_str().expect("utf-8 path")])
}

fn check_of<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name:?} in {report}"))
}

fn incremental(report: &serde_json::Value) -> bool {
    check_of(report, SINCE_CHECK)["note"]
        .as_str()
        .is_some_and(|note| note.contains(INCREMENTAL_NOTE))
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// The op records of `data` as (segment file, record offset, op).
fn op_records(data: &Path) -> Vec<(PathBuf, u64, u64)> {
    op_records_under(data, &data.join("policy.txt"))
}

/// [`op_records`] of a data directory whose cluster `policy` names.
fn op_records_under(data: &Path, policy: &Path) -> Vec<(PathBuf, u64, u64)> {
    let cluster = vellum_audit::verify::cluster_from_origin(
        &vellum::log::load_policy(policy).expect("policy").origin,
    )
    .expect("a vellum origin");
    let scan = vellum_audit::segment::scan_log_dir(&data.join("segments"), cluster).expect("scan");
    let mut ops = Vec::new();
    for segment in &scan.segments {
        for record in &segment.scan.records {
            if record.header.kind == RecordKind::Op {
                ops.push((segment.path.clone(), record.offset, record.header.op));
            }
        }
    }
    ops
}

/// Flips one byte inside the body of the record at `offset` of `file`.
fn flip_body_byte(file: &Path, offset: u64) {
    let mut bytes = std::fs::read(file).expect("read segment");
    let at = usize::try_from(offset).expect("offset") + HEADER_BYTES + 40;
    bytes[at] ^= 0x20;
    std::fs::write(file, bytes).expect("write segment");
}

/// The kept op of a report: the op its checkpoint's chain head names.
fn kept_op(report: &serde_json::Value) -> u64 {
    let text = report["reached"]["checkpoint"]
        .as_str()
        .expect("checkpoint");
    let certificate = Certificate::parse(text).expect("certificate");
    let heads = vellum_audit::verify::ChainHead::all_in(&certificate.checkpoint);
    heads[0].as_ref().expect("a chain head").op
}

// Goal: from a kept report, --since reads only the segments from the kept
// op on (the byte count says so), says in the report what it did not
// re-read, passes with a consistency proof, and its own report starts the
// next incremental run.
#[test]
fn since_a_kept_report_reads_only_the_new_part() {
    let dir = TestDir::new("since-reads-new");
    let data = init(&dir, "data");
    append(&data, 20, "old");
    let kept_path = dir.path().join("kept.json");
    let kept = keep_report(&data, &kept_path);
    assert!(
        kept["reached_frontier"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "the report keeps the frontier: {kept}"
    );
    append(&data, 3, "new");
    let (code, report) = since(&data, &kept_path);
    assert_eq!(code, 0, "{report}");
    assert!(incremental(&report), "{report}");
    let records = check_of(&report, "records and hash chain");
    assert_eq!(records["note"], INCREMENTAL_NOTE);
    assert_eq!(
        records["counts"]["ops before the kept checkpoint (not re-read)"],
        kept_op(&kept)
    );
    assert_eq!(check_of(&report, "merkle roots")["counts"]["events"], 9);
    let total: u64 = segments(&data)
        .iter()
        .map(|f| std::fs::metadata(f).expect("meta").len())
        .sum();
    let read = records["counts"]["bytes"].as_u64().expect("bytes read");
    assert!(segments(&data).len() >= 8, "many segments");
    assert!(read * 3 < total, "read {read} of {total} bytes");
    assert!(
        check_of(&report, SINCE_CHECK)["counts"]["consistency proof hashes"].as_u64() > Some(0)
    );
    assert_eq!(check_of(&report, "audit index")["counts"]["event rows"], 9);

    // The incremental run's report is the next run's start.
    let next_path = dir.path().join("next.json");
    std::fs::write(&next_path, report.to_string()).expect("keep");
    append(&data, 2, "newer");
    let (code, next) = since(&data, &next_path);
    assert_eq!(code, 0, "{next}");
    assert!(incremental(&next), "{next}");
    assert_eq!(check_of(&next, "merkle roots")["counts"]["events"], 6);
    // A plain full verify agrees on where the log got to.
    let (code, full) = verify(&data, &[]);
    assert_eq!(code, 0);
    assert_eq!(full["reached"], next["reached"]);
    assert_eq!(full["reached_frontier"], next["reached_frontier"]);
}

/// Bytes `vellum verify --data-dir DATA --json ARGS` read (its `rchar`,
/// which the shell that reaps it adds to its own): every file it read,
/// segments, index, kept report.
fn verify_bytes_read(data: &Path, args: &[&str]) -> u64 {
    let script =
        r#"exe="$1"; shift; "$exe" "$@" > /dev/null; code=$?; cat /proc/$$/io; exit $code"#;
    let output = Command::new("sh")
        .args(["-c", script, "sh"])
        .arg(vellum_exe())
        .arg("verify")
        .arg("--data-dir")
        .arg(data)
        .arg("--policy")
        .arg(data.join("policy.txt"))
        .arg("--json")
        .args(args)
        .output()
        .expect("run vellum verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no rchar in {stdout}"))
}

// Goal: in one segment of large batches (the default segment size holds
// years of a small clinic), --since finds the kept op by reading record
// headers, not the segment: the whole run reads under a quarter of the
// bytes a full verify reads.
#[test]
fn since_reads_headers_not_the_old_part_of_its_segment() {
    let dir = TestDir::new("since-one-segment");
    let data = init(&dir, "data");
    let batch = |tag: &str, i: u64| -> Vec<Bytes> {
        (0..16)
            .map(|j| {
                Bytes::from(format!(
                    "{{\"{tag}\":{i},\"j\":{j},\"pad\":\"{}\"}}",
                    "x".repeat(4000)
                ))
            })
            .collect()
    };
    // Both verifies read the last segment's zero window to its end; a small
    // one keeps this a measure of the records read (a 1 MiB window adds
    // 1 MiB of zeros to both counts).
    let mut options = wait_for_lock();
    options.storage.window_bytes = 64 * 1024;
    let (log, _) = LocalLog::open(&data, options.clone()).expect("open");
    for i in 0..40 {
        log.append(16, &batch("old", i), None, None)
            .expect("append");
    }
    log.close().expect("close");
    let kept_path = dir.path().join("kept.json");
    keep_report(&data, &kept_path);
    let (log, _) = LocalLog::open(&data, options).expect("open");
    log.append(16, &batch("new", 0), None, None)
        .expect("append");
    log.close().expect("close");
    assert_eq!(segments(&data).len(), 1, "one segment");
    let (code, report) = since(&data, &kept_path);
    assert_eq!(code, 0, "{report}");
    assert!(incremental(&report), "{report}");

    let full = verify_bytes_read(&data, &[]);
    let read = verify_bytes_read(&data, &["--since", kept_path.to_str().expect("utf-8")]);
    eprintln!("bytes read: full verify {full}, --since {read}");
    assert!(
        read * 4 < full,
        "--since read {read} bytes, a full verify {full}"
    );
}

// Goal (documented limitation): a byte changed in an old segment (before
// the kept checkpoint) is not seen by --since, which does not read it,
// while a full verify fails naming the record.
#[test]
fn an_old_record_changed_passes_since_but_fails_a_full_verify() {
    let dir = TestDir::new("since-old-tamper");
    let data = init(&dir, "data");
    append(&data, 20, "old");
    let kept_path = dir.path().join("kept.json");
    keep_report(&data, &kept_path);
    append(&data, 3, "new");
    let (file, offset, op) = op_records(&data)[1].clone();
    assert_eq!(op, 2);
    flip_body_byte(&file, offset);
    let (code, report) = since(&data, &kept_path);
    assert_eq!(code, 0, "--since does not read the old part: {report}");
    assert!(incremental(&report));
    let (code, full) = verify(&data, &[]);
    assert_eq!(code, 1, "{full}");
    let failure = &check_of(&full, "records and hash chain")["failures"][0];
    assert_eq!(
        failure["location"],
        format!("{} at byte {offset}", file.display()),
        "{failure}"
    );
}

// Goal: a byte changed in a record after the kept checkpoint fails
// --since, naming that record's file and byte; so does each new record
// in turn (the first, in the kept op's own segment, and the last).
#[test]
fn a_new_record_changed_fails_since_naming_the_place() {
    let dir = TestDir::new("since-new-tamper");
    let pristine = init(&dir, "pristine");
    append(&pristine, 20, "old");
    let kept_path = dir.path().join("kept.json");
    let kept = keep_report(&pristine, &kept_path);
    append(&pristine, 4, "new");
    let new_ops: Vec<_> = op_records(&pristine)
        .into_iter()
        .filter(|(_, _, op)| *op > kept_op(&kept))
        .collect();
    assert_eq!(new_ops.len(), 4);
    for (i, (file, offset, op)) in new_ops.iter().enumerate() {
        let data = dir.path().join(format!("case-{i}"));
        copy_dir(&pristine, &data);
        let file = data
            .join("segments")
            .join(file.file_name().expect("file name"));
        flip_body_byte(&file, *offset);
        let (code, report) = since(&data, &kept_path);
        assert_eq!(code, 1, "op {op}: {report}");
        assert!(
            incremental(&report),
            "op {op}: {}",
            check_of(&report, SINCE_CHECK)
        );
        let failure = &check_of(&report, "records and hash chain")["failures"][0];
        assert_eq!(
            failure["location"],
            format!("{} at byte {offset}", file.display()),
            "op {op}: {failure}"
        );
    }
}

// Goal: a kept checkpoint of a fork (the same cluster id and replica key,
// so validly signed by every replica key, with its own frontier) fails
// --since as rewritten history; so does the true checkpoint with the
// fork's frontier.
#[test]
fn a_checkpoint_of_a_fork_signed_by_every_replica_key_fails_since() {
    let dir = TestDir::new("since-fork");
    let data = init(&dir, "data");
    append(&data, 6, "common");
    let fork = dir.path().join("fork");
    copy_dir(&data, &fork);
    append(&data, 6, "truth");
    append(&fork, 6, "fork");
    let truth_path = dir.path().join("truth.json");
    let mut truth = keep_report(&data, &truth_path);
    let fork_path = dir.path().join("fork.json");
    let fork_report = keep_report(&fork, &fork_path);
    assert_eq!(
        truth["reached"]["tree_size"], fork_report["reached"]["tree_size"],
        "the fork has the same size"
    );
    append(&data, 2, "later");

    let (code, report) = since(&data, &fork_path);
    assert_eq!(code, 1, "{report}");
    let check = check_of(&report, SINCE_CHECK);
    let message = check["failures"][0]["message"].as_str().expect("a failure");
    assert!(message.contains("history was rewritten"), "{message}");
    assert!(
        check["note"]
            .as_str()
            .is_some_and(|n| n.contains("not the op the kept checkpoint's signed chain head names")),
        "{check}"
    );

    truth["reached_frontier"] = fork_report["reached_frontier"].clone();
    let mixed = dir.path().join("mixed.json");
    std::fs::write(&mixed, truth.to_string()).expect("write");
    let (code, report) = since(&data, &mixed);
    let check = check_of(&report, SINCE_CHECK);
    assert!(
        check["note"]
            .as_str()
            .is_some_and(|n| n.contains("not the signed root")),
        "{check}"
    );
    // The frontier was refused, so the whole log was read, and passes.
    assert_eq!(code, 0, "{report}");
}

// Goal: a kept checkpoint from another cluster, with a broken signature,
// beyond the log, or claiming 2^64-1 events (validly signed by the
// replica's own key) fails --since with a named error and exit code 1.
#[test]
fn bad_kept_checkpoints_fail_since_with_a_named_error() {
    let dir = TestDir::new("since-bad");
    let data = init(&dir, "data");
    append(&data, 4, "first");
    let older = dir.path().join("older");
    copy_dir(&data, &older);
    append(&data, 4, "second");
    let kept_path = dir.path().join("kept.json");
    let kept = keep_report(&data, &kept_path);
    let other = init(&dir, "other");
    append(&other, 2, "other");
    let other_path = dir.path().join("other.json");
    keep_report(&other, &other_path);

    let expect_failure = |kept: &Path, target: &Path, words: &str| {
        let (code, report) = since(target, kept);
        assert_eq!(code, 1, "{words}: {report}");
        let check = check_of(&report, SINCE_CHECK);
        let message = check["failures"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{words}: {check}");
    };
    expect_failure(&other_path, &data, "not certified under the pinned policy");
    expect_failure(&kept_path, &older, "beyond the log");

    let mut broken = kept.clone();
    let text = broken["reached"]["checkpoint"].as_str().expect("text");
    let signature_line = text.lines().last().expect("a signature line");
    let (prefix, sig) = signature_line.rsplit_once(' ').expect("name and signature");
    let flipped_sig = match sig.as_bytes()[10] {
        b'A' => sig.replacen(&sig[10..11], "B", 1),
        _ => format!("{}A{}", &sig[..10], &sig[11..]),
    };
    let forged_text = text.replace(signature_line, &format!("{prefix} {flipped_sig}"));
    broken["reached"]["checkpoint"] = forged_text.into();
    let broken_path = dir.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).expect("write");
    expect_failure(&broken_path, &data, "not certified under the pinned policy");

    // 2^64-1 events, signed by the replica's own key, with a frontier of
    // 64 nodes that folds to the signed root: only the log can refuse it.
    let signer =
        vellum::crypto::load_signing_key_file(&data.join("keys/signing.key")).expect("signing key");
    let true_certificate =
        Certificate::parse(kept["reached"]["checkpoint"].as_str().expect("text")).expect("parse");
    let nodes: Vec<[u8; 32]> = (0..64u8).map(|i| [i; 32]).collect();
    let frontier =
        vellum_audit::frontier::Frontier::from_nodes(u64::MAX, nodes.clone()).expect("frontier");
    let mut checkpoint = true_certificate.checkpoint.clone();
    checkpoint.size = u64::MAX;
    checkpoint.root = frontier.root();
    checkpoint.extensions = vec![vellum_audit::verify::chain_head_extension(
        u64::MAX,
        &[7; 32],
    )];
    let huge = Certificate::sign(checkpoint, &[&signer]).expect("sign");
    let huge_report = serde_json::json!({
        "reached": { "checkpoint": huge.encode() },
        "reached_frontier": nodes.iter().map(|n| vellum_audit::hash::to_hex(n)).collect::<Vec<_>>(),
    });
    let huge_path = dir.path().join("huge.json");
    std::fs::write(&huge_path, huge_report.to_string()).expect("write");
    expect_failure(&huge_path, &data, "beyond the log");
}

// Goal (P11 with --since): a replica process killed with SIGKILL in the
// middle of appends, then restarted, passes an incremental --since from a
// report kept before the crash.
#[test]
fn a_replica_killed_then_restarted_passes_since() {
    let dir = TestDir::new("since-kill");
    let data = init(&dir, "data");
    append(&data, 10, "before");
    let kept_path = dir.path().join("kept.json");
    keep_report(&data, &kept_path);
    let lines: String = (0..200_000)
        .map(|i| format!("{{\"after\":{i},\"pad\":\"{}\"}}\n", "y".repeat(100)))
        .collect();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, lines).expect("write events");
    let size_before: u64 = segments(&data)
        .iter()
        .map(|f| std::fs::metadata(f).expect("meta").len())
        .sum();
    let mut child = Command::new(vellum_exe())
        .args(["append", "--stream", "40", "--data-dir"])
        .arg(&data)
        .arg("--file")
        .arg(&input)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn vellum append");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let size: u64 = segments(&data)
            .iter()
            .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
            .sum();
        if size > size_before + 200_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the append wrote nothing"
        );
        assert!(child.try_wait().expect("wait").is_none(), "exited early");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
    // The restart: opening the log repairs a torn tail or a lost certificate.
    append(&data, 1, "after-restart");
    let (code, report) = since(&data, &kept_path);
    assert_eq!(code, 0, "{report}");
    assert!(incremental(&report), "{report}");
    let (code, full) = verify(&data, &[]);
    assert_eq!(code, 0, "{full}");
    assert_eq!(full["reached"], report["reached"]);
}

/// The report of a library run of verify (`--since` the kept report text).
fn verify_lib(data: &Path, kept: Option<&str>) -> serde_json::Value {
    let options = vellum::verify::VerifyOptions {
        index_url: None,
        since: kept.map(|text| vellum::verify::KeptCheckpoint::from_text("kept.json", text)),
        live: false,
        live_lag_ops_max: vellum::verify::LIVE_LAG_OPS_MAX_DEFAULT,
        keep_facts: false,
        ops_window: None,
    };
    let policy = vellum::log::load_policy(&data.join("policy.txt")).expect("policy");
    let report = vellum::verify::verify_data_dir_with(data, &policy, &options, &mut |_| {});
    serde_json::to_value(&report).expect("json")
}

// Goal: a report kept after every append of a log of many tiny segments
// (so kept ops fall first, inside and last in a segment, before and after
// a seal) starts an incremental run that passes and reaches exactly what
// the full verify reaches, with the same frontier.
#[test]
fn since_from_every_kept_point_reaches_what_a_full_verify_reaches() {
    let dir = TestDir::new("since-every-point");
    let data = init(&dir, "data");
    let mut kept = Vec::new();
    for round in 0..14 {
        append(&data, 1, &format!("r{round}"));
        let report = verify_lib(&data, None);
        assert_eq!(report["passed"], true, "{report}");
        kept.push(report.to_string());
    }
    assert!(segments(&data).len() >= 4, "several segments");
    let full = verify_lib(&data, None);
    for (i, text) in kept.iter().enumerate() {
        let report = verify_lib(&data, Some(text));
        assert_eq!(report["passed"], true, "kept after append {i}: {report}");
        assert!(incremental(&report), "kept after append {i}: {report}");
        assert_eq!(report["reached"], full["reached"], "kept after append {i}");
        assert_eq!(report["reached_frontier"], full["reached_frontier"]);
    }
}

/// Appends `n` events through the cluster and waits until every replica
/// in `which` committed everything.
async fn append_to_cluster(
    cluster: &vellum::local_cluster::LocalCluster,
    which: &[usize],
    n: u64,
    tag: &str,
) {
    let wait = std::time::Duration::from_secs(60);
    let client = cluster.client(None).expect("client");
    for i in 0..n {
        let event = Bytes::from(format!("{{\"{tag}\":{i}}}"));
        client
            .append(7000 + i % 2, vec![event], None)
            .await
            .expect("append");
    }
    let commit = cluster
        .health()
        .await
        .iter()
        .flatten()
        .map(|h| h.commit)
        .max()
        .expect("a replica answers");
    cluster
        .wait_commit(which, commit, wait)
        .await
        .expect("the replicas commit everything");
}

// Goal: a replica of a three-replica cluster (a policy of three keys)
// passes an incremental --since on its data directory, from a report kept
// while the cluster was stopped, after the cluster ran on, the replica was
// killed with SIGKILL and restarted, and the cluster stopped (the index
// and the trail compared from the kept size on, up to its newest
// certificate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_replica_killed_and_restarted_passes_an_incremental_since() {
    let wait = std::time::Duration::from_secs(60);
    let dir = TestDir::new("since-cluster");
    let root = dir.path().join("cluster");
    let mut cluster =
        vellum::local_cluster::LocalCluster::start(&root, 3, vellum_exe()).expect("cluster");
    cluster.wait_primary(wait).await.expect("a primary");
    append_to_cluster(&cluster, &[0, 1, 2], 6, "before").await;
    cluster.stop().expect("stop");
    let data = cluster.data_dir(0);
    let policy = root.join("policy.txt");
    let run = |args: &[&str]| {
        let output = Command::new(vellum_exe())
            .arg("verify")
            .arg("--data-dir")
            .arg(&data)
            .arg("--policy")
            .arg(&policy)
            .arg("--json")
            .args(args)
            .output()
            .expect("run verify");
        let report: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("a JSON report");
        (output.status.code().expect("exit code"), report)
    };
    let (code, kept) = run(&[]);
    assert_eq!(code, 0, "{kept}");
    let kept_path = dir.path().join("kept.json");
    std::fs::write(&kept_path, kept.to_string()).expect("keep");

    for i in 0..3 {
        cluster.start_replica(i).expect("start again");
    }
    cluster.wait_primary(wait).await.expect("a primary");
    append_to_cluster(&cluster, &[0, 1, 2], 3, "after").await;
    cluster.kill(0).expect("kill -9 replica 0");
    append_to_cluster(&cluster, &[1, 2], 2, "while-down").await;
    cluster.start_replica(0).expect("restart replica 0");
    append_to_cluster(&cluster, &[0, 1, 2], 2, "after-restart").await;
    cluster.stop().expect("stop");

    let (code, report) = run(&["--since", kept_path.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{report}");
    assert!(incremental(&report), "{report}");
    let index = check_of(&report, "audit index");
    assert!(index["counts"]["event rows"].as_u64() >= Some(7), "{index}");
    let (code, full) = run(&[]);
    assert_eq!(code, 0, "{full}");
    assert_eq!(full["reached"], report["reached"]);
}

/// `vellum verify --cluster ROOT --policy ROOT/policy.txt --json ARGS`.
fn verify_cluster(root: &Path, args: &[&str]) -> (i32, serde_json::Value) {
    verify_json("--cluster", root, args)
}

// Goal: `verify --cluster --since` of a kept cluster report (or of the
// file its --checkpoint-out kept) reads every replica incrementally: it passes with an old record of replica 1
// changed (not re-read, while a full cluster verify fails naming it),
// fails naming a new record changed in replica 2, and its report carries
// the frontier the next incremental run starts from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_since_reads_every_replica_incrementally() {
    let wait = std::time::Duration::from_secs(60);
    let dir = TestDir::new("since-cluster-all");
    let root = dir.path().join("cluster");
    let mut cluster =
        vellum::local_cluster::LocalCluster::start(&root, 3, vellum_exe()).expect("cluster");
    cluster.wait_primary(wait).await.expect("a primary");
    append_to_cluster(&cluster, &[0, 1, 2], 6, "before").await;
    cluster.stop().expect("stop");
    let checkpoint_out = dir.path().join("checkpoint.json");
    let checkpoint_arg = checkpoint_out.to_str().expect("utf-8");
    let (code, kept) = verify_cluster(&root, &["--checkpoint-out", checkpoint_arg]);
    assert_eq!(code, 0, "{kept}");
    assert!(
        kept["reached_frontier"]
            .as_array()
            .is_some_and(|f| !f.is_empty()),
        "a cluster report keeps the frontier: {kept}"
    );
    let kept_path = dir.path().join("kept.json");
    std::fs::write(&kept_path, kept.to_string()).expect("keep");
    let since_args = ["--since", kept_path.to_str().expect("utf-8")];

    for i in 0..3 {
        cluster.start_replica(i).expect("start again");
    }
    cluster.wait_primary(wait).await.expect("a primary");
    append_to_cluster(&cluster, &[0, 1, 2], 4, "after").await;
    cluster.stop().expect("stop");
    let (code, report) = verify_cluster(&root, &since_args);
    assert_eq!(code, 0, "{report}");
    let note = check_of(&report, SINCE_CHECK)["note"]
        .as_str()
        .unwrap_or("");
    assert!(
        note.contains(INCREMENTAL_NOTE) && !note.contains("read whole"),
        "every replica incremental: {note}"
    );
    let (_, full) = verify_cluster(&root, &[]);
    assert_eq!(report["reached"], full["reached"]);
    assert_eq!(report["reached_frontier"], full["reached_frontier"]);
    // The file --checkpoint-out kept serves as well as the report.
    let (code, from_file) = verify_cluster(&root, &["--since", checkpoint_arg]);
    assert_eq!(code, 0, "{from_file}");
    let note = check_of(&from_file, SINCE_CHECK)["note"]
        .as_str()
        .unwrap_or("");
    assert!(
        note.contains(INCREMENTAL_NOTE) && !note.contains("read whole"),
        "--since of the --checkpoint-out file: {note}"
    );

    let policy = root.join("policy.txt");
    let kept_op = kept_op(&kept);
    let old: Vec<_> = op_records_under(&cluster.data_dir(1), &policy)
        .into_iter()
        .filter(|(_, _, op)| *op < kept_op)
        .collect();
    let (file, offset, op) = old.last().expect("an old op").clone();
    flip_body_byte(&file, offset);
    let (code, report) = verify_cluster(&root, &since_args);
    assert_eq!(code, 0, "old op {op} of replica 1 is not re-read: {report}");
    let (code, full) = verify_cluster(&root, &[]);
    assert_eq!(code, 1, "{full}");
    let failure = &check_of(&full, "replica 1: records and hash chain")["failures"][0];
    assert_eq!(
        failure["location"],
        format!("{} at byte {offset}", file.display()),
        "{failure}"
    );
    flip_body_byte(&file, offset);

    let (file, offset, op) = op_records_under(&cluster.data_dir(2), &policy)
        .into_iter()
        .rfind(|(_, _, op)| *op > kept_op)
        .expect("a new op");
    flip_body_byte(&file, offset);
    let (code, report) = verify_cluster(&root, &since_args);
    assert_eq!(code, 1, "new op {op} of replica 2 changed: {report}");
    let failure = &check_of(&report, "replica 2: records and hash chain")["failures"][0];
    assert_eq!(
        failure["location"],
        format!("{} at byte {offset}", file.display()),
        "{failure}"
    );
}
