//! `vellum verify --cluster` on a real cluster (DESIGN P2, P4): three
//! `vellum start` processes append ~20 events and stop; the stopped cluster
//! passes, then each tamper (on its own copy) is caught through the binary,
//! with a non-zero exit and the replica and place named: a record body, a
//! header, a truncated segment, swapped records, index rows, a replaced or
//! duplicated certificate signature, one replica's history rewritten and
//! re-signed with its own key only. A dev cluster's segments (64 MiB) never
//! fill with 20 events, so the sealed-footer case uses a single-replica data
//! directory with the smallest segment size instead. The fixture also
//! opens one break-glass grant, which the report lists in its own section.

mod support;

use support::{copy_dir, index_exec, tamper_index};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use vellum::local_cluster::{LocalCluster, wipe_replica_data};
use vellum::log::{LocalLog, LogOptions, load_policy};
use vellum_audit::checkpoint::Certificate;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::{Record, RecordKind};
use vellum_audit::segment::{Chain, ScannedRecord, scan_segment_with, segment_file_name};
use vellum_audit::verify::cluster_from_origin;

const WAIT: Duration = Duration::from_secs(60);
/// Appends made on the cluster, one event each.
const APPENDS: u64 = 20;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vellum"))
}

/// The stopped cluster every test copies (made once per test binary run,
/// under cargo's scratch directory for integration tests).
fn fixture() -> &'static Path {
    static FIXTURE: OnceLock<PathBuf> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("verify-cluster-fixture");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).expect("fixture dir");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let dir = root.join("cluster");
        runtime.block_on(run_and_stop(&dir));
        dir
    })
}

async fn run_and_stop(dir: &Path) {
    let mut cluster = LocalCluster::start(dir, 3, exe()).expect("cluster starts");
    cluster.wait_primary(WAIT).await.expect("a primary");
    let client = cluster.client(None).expect("client");
    for i in 0..APPENDS {
        let event = Bytes::from(format!("{{\"resourceType\":\"Observation\",\"i\":{i}}}"));
        client
            .append(7000 + i % 3, vec![event], None)
            .await
            .expect("append");
    }
    open_break_glass(&cluster).await;
    let commit = cluster
        .health()
        .await
        .iter()
        .flatten()
        .map(|h| h.commit)
        .max()
        .expect("a replica answers");
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("every replica commits everything");
    cluster.stop().expect("stop");
}

/// The reason the fixture's break-glass grant is opened with.
const BREAK_GLASS_REASON: &str = "patient unconscious in the ED <b>";

/// Opens break-glass on stream 7000 with the dev writer token, through the
/// API of replica 1 (forwarded to the primary if need be).
async fn open_break_glass(cluster: &LocalCluster) {
    let ca = reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .timeout(WAIT)
        .build()
        .expect("http client");
    let url = format!("{}/v1/streams/7000/break-glass", cluster.dev.api_urls[1]);
    let answer = http
        .post(url)
        .bearer_auth(&cluster.dev.writer_token)
        .json(&serde_json::json!({ "reason": BREAK_GLASS_REASON, "duration_s": 60 }))
        .send()
        .await
        .expect("break-glass request");
    let status = answer.status();
    let body = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "break-glass: {status} {body}");
}

/// A copy of the stopped cluster to tamper with.
struct Case {
    _dir: tempfile::TempDir,
    cluster: PathBuf,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("temp dir");
        let cluster = dir.path().join("cluster");
        copy_dir(fixture(), &cluster);
        Case { _dir: dir, cluster }
    }

    fn replica(&self, i: usize) -> PathBuf {
        self.cluster.join(format!("r{i}"))
    }

    fn segment(&self, i: usize) -> PathBuf {
        self.replica(i).join("segments").join(segment_file_name(0))
    }

    /// Segment 0 of replica `i` and its records.
    fn records(&self, i: usize) -> (Vec<u8>, Vec<ScannedRecord>) {
        let cluster = cluster_from_origin(&policy().origin).expect("vellum origin");
        let bytes = std::fs::read(self.segment(i)).expect("segment");
        let scan = scan_segment_with(&bytes, 0, cluster, &mut Chain::genesis(cluster));
        (bytes, scan.records)
    }

    fn verify(&self) -> Outcome {
        verify_cluster(&self.cluster)
    }
}

fn policy_path() -> PathBuf {
    fixture().join("policy.txt")
}

fn policy() -> Policy {
    load_policy(&policy_path()).expect("policy")
}

/// The exit code and every failure (check, location, message) of a JSON report.
struct Outcome {
    code: i32,
    failures: Vec<(String, String, String)>,
    report: serde_json::Value,
}

impl Outcome {
    fn describe(&self) -> String {
        self.failures
            .iter()
            .map(|(c, l, m)| format!("[{c}] at {l}: {m}"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts a failed exit and a failure whose check starts with `check`,
    /// whose location holds `location` and whose message holds `message`.
    fn assert_caught(&self, check: &str, location: &str, message: &str) {
        assert_eq!(self.code, 1, "verify must fail:\n{}", self.describe());
        let found = self
            .failures
            .iter()
            .any(|(c, l, m)| c.starts_with(check) && l.contains(location) && m.contains(message));
        assert!(
            found,
            "no failure [{check}...] at ...{location}...: ...{message}...:\n{}",
            self.describe()
        );
    }

    /// Asserts some failure of `check` names `file` at a byte at or before `byte`.
    fn assert_at_or_before(&self, check: &str, file: &Path, byte: u64) {
        assert_eq!(self.code, 1, "verify must fail:\n{}", self.describe());
        let prefix = format!("{} at byte ", file.display());
        let found = self.failures.iter().any(|(c, l, _)| {
            c.starts_with(check)
                && l.strip_prefix(&prefix)
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|at| at <= byte)
        });
        assert!(
            found,
            "no failure [{check}...] at {prefix}<= {byte}:\n{}",
            self.describe()
        );
    }
}

fn run(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(exe()).args(args).output().expect("run vellum");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

fn verify_cluster(cluster: &Path) -> Outcome {
    let policy = policy_path();
    let (code, stdout, stderr) = run(&[
        "verify",
        "--cluster",
        s(cluster),
        "--policy",
        s(&policy),
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("JSON report ({e}):\n{stdout}\n{stderr}"));
    let failures = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .flat_map(|c| {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            c["failures"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .map(move |f| {
                    (
                        name.clone(),
                        f["location"].as_str().unwrap_or_default().to_string(),
                        f["message"].as_str().unwrap_or_default().to_string(),
                    )
                })
        })
        .collect();
    Outcome {
        code,
        failures,
        report,
    }
}

fn first_op(records: &[ScannedRecord]) -> &ScannedRecord {
    records
        .iter()
        .find(|r| r.header.kind == RecordKind::Op)
        .expect("an op record")
}

fn flip(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x04;
    std::fs::write(path, bytes).expect("write");
}

// Goal: the untouched stopped cluster passes every check through the binary
// (exit 0), compares every op of every replica pair, counts certificates
// with a quorum, and renders as text and a self-contained HTML page; one
// config file path (its siblings give the other replicas) passes too.
#[test]
fn stopped_cluster_passes() {
    let outcome = verify_cluster(fixture());
    assert_eq!(outcome.code, 0, "{}", outcome.describe());
    let checks = outcome.report["checks"].as_array().expect("checks");
    let count = |name: &str, counter: &str| {
        checks
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["counts"][counter].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(count("cluster configuration", "configs"), 3);
    assert_eq!(count("replica op header chains", "replica pairs"), 3);
    assert!(count("replica op header chains", "ops compared") >= 3 * APPENDS);
    assert!(
        count(
            "certificate quorum (distinct pinned keys)",
            "certificates with a quorum"
        ) >= 3
    );
    assert!(checks.iter().any(|c| c["name"] == "replica 2: audit index"));
    // Every API append committed with its access-trail record in its own
    // atomic group, on every replica (docs/format.md "Atomic groups").
    for replica in 0..3 {
        let trail = format!("replica {replica}: access trail");
        assert_eq!(
            count(&trail, "appends recorded in their own group"),
            APPENDS,
            "{trail}"
        );
        let records = format!("replica {replica}: records and hash chain");
        assert!(count(&records, "atomic groups") >= 1, "{records}");
    }
    // The break-glass opening is listed once (every replica holds it),
    // with its reason, from the verified trail.
    let uses = outcome.report["break_glass"].as_array().expect("section");
    assert_eq!(uses.len(), 1, "{uses:?}");
    assert_eq!(
        (&uses[0]["action"], &uses[0]["stream"], &uses[0]["reason"]),
        (
            &"break_glass".into(),
            &7000.into(),
            &BREAK_GLASS_REASON.into()
        )
    );
    assert_eq!(uses[0]["principal"], "dev");
    assert_eq!(
        uses[0]["expires_ns"]
            .as_u64()
            .zip(uses[0]["opened_ns"].as_u64())
            .map(|(e, o)| e - o),
        Some(60_000_000_000)
    );
    // The access trail (system stream) adds events of its own.
    let size = outcome.report["reached"]["tree_size"].as_u64();
    assert!(size >= Some(APPENDS), "reached {size:?}");

    let policy = policy_path();
    let one = fixture().join("r1.json");
    let (code, text, _) = run(&["verify", "--cluster", s(&one), "--policy", s(&policy)]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("(3 replicas)"), "{text}");
    assert!(
        text.contains("break-glass: 1 uses") && text.contains(BREAK_GLASS_REASON),
        "{text}"
    );
    let (code, html, _) = run(&[
        "verify",
        "--cluster",
        s(fixture()),
        "--policy",
        s(&policy),
        "--format",
        "html",
    ]);
    assert_eq!(code, 0);
    assert!(html.contains("Verification PASSED") && !html.to_ascii_lowercase().contains("<script"));
    assert!(
        html.contains("<h2>Break-glass (emergency access)</h2>")
            && html.contains("patient unconscious in the ED &lt;b&gt;"),
        "the section lists the use, escaped"
    );
}

// Goal: --cluster without --policy is refused (keys never come from the data).
#[test]
fn cluster_needs_a_policy() {
    let (code, _, stderr) = run(&["verify", "--cluster", s(fixture())]);
    assert_ne!(code, 0);
    assert!(stderr.contains("--policy"), "{stderr}");
}

// Goal: a flipped byte in an event body of replica 1 fails, naming
// replica 1's segment at that record.
#[test]
fn flipped_record_body_of_replica_1_is_named() {
    let case = Case::new();
    let (_, records) = case.records(1);
    let op = first_op(&records);
    flip(&case.segment(1), op.body_range.start + 30);
    case.verify()
        .assert_at_or_before("replica 1:", &case.segment(1), op.offset);
}

// Goal: a flipped byte in an op header of replica 1 fails, naming replica
// 1's segment at that record.
#[test]
fn flipped_header_of_replica_1_is_named() {
    let case = Case::new();
    let (_, records) = case.records(1);
    let op = records
        .iter()
        .filter(|r| r.header.kind == RecordKind::Op)
        .nth(3)
        .expect("a fourth op");
    flip(&case.segment(1), op.offset as usize + 100);
    case.verify()
        .assert_at_or_before("replica 1:", &case.segment(1), op.offset);
}

// Goal: replica 2's segment cut inside its last record fails as a torn
// tail at that record.
#[test]
fn truncated_segment_of_replica_2_is_named() {
    let case = Case::new();
    let (_, records) = case.records(2);
    let last = records.last().expect("records");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(case.segment(2))
        .expect("open");
    file.set_len(last.offset + 50).expect("truncate");
    let outcome = case.verify();
    outcome.assert_at_or_before("replica 2: records", &case.segment(2), last.offset);
    outcome.assert_caught("replica 2: records", "r2", "torn write or damage");
}

// Goal: two op records of replica 0 swapped fail at the first of them.
#[test]
fn swapped_records_of_replica_0_are_named() {
    let case = Case::new();
    let (bytes, records) = case.records(0);
    let ops: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].header.kind == RecordKind::Op)
        .collect();
    let encoded = |r: &ScannedRecord| bytes[r.offset as usize..r.body_range.end].to_vec();
    let mut out = bytes[..records[0].offset as usize].to_vec();
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.swap(ops[1], ops[2]);
    for i in order {
        out.extend_from_slice(&encoded(&records[i]));
    }
    std::fs::write(case.segment(0), out).expect("write");
    case.verify()
        .assert_at_or_before("replica 0:", &case.segment(0), records[ops[1]].offset);
}

/// A global position far beyond the log, for a forged index row.
const EXTRA_POSITION: u64 = 1_000_000;

// Goal: a deleted, added or edited row of replica 0's events and commits
// tables fails its audit index check, naming the row.
#[test]
fn tampered_index_rows_of_replica_0_are_named() {
    let commit_op = {
        let case = Case::new();
        let (bytes, records) = case.records(0);
        let cert = records
            .iter()
            .find(|r| r.header.kind == RecordKind::Certificate)
            .expect("a certificate");
        drop(bytes);
        cert.header.op
    };
    let cases: Vec<(String, String)> = vec![
        (
            "DELETE FROM events WHERE position = 3".into(),
            "events.position=3".into(),
        ),
        (
            format!(
                "INSERT INTO events (position, stream, stream_offset, op, leaf_hash, segment, file_offset) \
                 VALUES ({EXTRA_POSITION}, 999, 0, 1, zeroblob(32), 0, 64)"
            ),
            format!("events.position={EXTRA_POSITION}"),
        ),
        (
            "UPDATE events SET leaf_hash = zeroblob(32) WHERE position = 4".into(),
            "events.position=4".into(),
        ),
        (
            format!("DELETE FROM commits WHERE op = {commit_op}"),
            format!("commits.op={commit_op}"),
        ),
        (
            format!("UPDATE commits SET root = zeroblob(32) WHERE op = {commit_op}"),
            format!("commits.op={commit_op}"),
        ),
    ];
    for (statement, row) in &cases {
        let case = Case::new();
        tamper_index(&case.replica(0), &[statement.as_str()]);
        case.verify()
            .assert_caught("replica 0: audit index", &format!("index row {row}"), "");
    }
}

/// Replaces the body of certificate `record` of replica `i`'s segment 0.
fn replace_certificate(case: &Case, i: usize, record: &ScannedRecord, text: &str) {
    let (bytes, _) = case.records(i);
    let replacement = Record::new(record.header, text.as_bytes().to_vec()).encode();
    let mut out = bytes[..record.offset as usize].to_vec();
    out.extend_from_slice(&replacement);
    out.extend_from_slice(&bytes[record.body_range.end..]);
    std::fs::write(case.segment(i), out).expect("write");
}

/// The last certificate record of replica `i`'s segment 0 and its parsed form.
fn last_certificate(case: &Case, i: usize) -> (ScannedRecord, Certificate) {
    let (bytes, records) = case.records(i);
    let record = records
        .into_iter()
        .rev()
        .find(|r| r.header.kind == RecordKind::Certificate)
        .expect("a certificate");
    let text = std::str::from_utf8(&bytes[record.body_range.clone()]).expect("utf-8");
    let certificate = Certificate::parse(text).expect("certificate");
    (record, certificate)
}

// Goal: one replica's signature in a certificate of replica 1 replaced by
// another key's signature (under the pinned name and key id) fails at that
// record, naming the key whose signature failed.
#[test]
fn replaced_signature_in_a_certificate_of_replica_1_is_named() {
    let case = Case::new();
    let (record, mut certificate) = last_certificate(&case, 1);
    let victim = certificate.note.signatures[0].name.clone();
    let intruder = Signer::from_seed(&victim, [7; 32]).expect("signer");
    let forged = intruder.sign(certificate.note.text.as_bytes()).to_vec();
    certificate.note.signatures[0].signature = forged;
    replace_certificate(&case, 1, &record, &certificate.encode());
    let outcome = case.verify();
    let place = format!("{} at byte {}", case.segment(1).display(), record.offset);
    outcome.assert_caught("replica 1: certificate signatures", &place, &victim);
    outcome.assert_caught(
        "certificate quorum",
        "replica 1 certificate of op",
        "valid signatures",
    );
}

// Goal: a certificate of replica 1 whose signature lines are all copies of
// one replica's signature (one key, many times) fails: the quorum counts
// distinct pinned keys (P4).
#[test]
fn one_key_signing_many_times_is_not_a_quorum() {
    let case = Case::new();
    let (record, certificate) = last_certificate(&case, 1);
    let text = certificate.encode();
    let (body, signatures) = text.split_once("\n\n").expect("a signed note");
    let first = signatures.lines().next().expect("a signature line");
    let copies = vec![first; signatures.lines().count().max(2)];
    let forged = format!("{body}\n\n{}\n", copies.join("\n"));
    replace_certificate(&case, 1, &record, &forged);
    let place = format!("{} at byte {}", case.segment(1).display(), record.offset);
    case.verify().assert_caught(
        "replica 1: certificate signatures",
        &place,
        "1 valid signatures of pinned keys, 2 needed",
    );
}

// Goal: replica 1's whole history rewritten (other events) and signed with
// replica 1's own key only is self-consistent, yet fails: too few keys sign
// its certificates, and its op chain diverges from the others at op 1.
#[test]
fn history_rewritten_and_resigned_by_one_replica_fails_quorum() {
    let case = Case::new();
    let data = case.replica(1);
    wipe_replica_data(&data).expect("wipe");
    let signer = vellum::crypto::load_signing_key_file(&data.join("keys/signing.key"))
        .expect("replica 1's key");
    let own = Policy::new(&policy().origin, vec![signer.verifier()], 1).expect("policy");
    std::fs::write(data.join("policy.txt"), own.encode()).expect("write policy");
    let (log, _) = LocalLog::open(&data, support::wait_for_lock()).expect("open");
    for i in 0..APPENDS {
        let event = Bytes::from(format!("{{\"forged\":{i}}}"));
        log.append(7000 + i % 3, &[event], None, None)
            .expect("append");
    }
    log.close().expect("close");
    let outcome = case.verify();
    outcome.assert_caught(
        "replica 1: certificate signatures",
        "r1",
        "1 valid signatures of pinned keys, 2 needed",
    );
    outcome.assert_caught("replica op header chains", "replica 1 op 1", "diverge");
    outcome.assert_caught(
        "certificate quorum",
        "replica 1 certificate of op",
        "2 needed",
    );
    for check in ["replica 0:", "replica 2:"] {
        assert!(
            !outcome
                .failures
                .iter()
                .any(|(c, _, _)| c.starts_with(check)),
            "{check} is untouched:\n{}",
            outcome.describe()
        );
    }
}

// Goal: a flipped byte in a sealed segment's footer (the seal record) fails
// naming that segment and a byte at or before the flip. Uses a single
// replica with 4 KiB segments: a cluster's 64 MiB segments never seal here.
#[test]
fn flipped_sealed_footer_is_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let options = LogOptions {
        storage: vellum::storage::StorageConfig {
            segment_bytes_max: vellum::storage::SEGMENT_BYTES_MIN,
            ..Default::default()
        },
        ..support::wait_for_lock()
    };
    let (log, _) = LocalLog::open(&data, options).expect("open");
    for i in 0..12u64 {
        let event = Bytes::from(format!("{{\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(300)));
        log.append(16, &[event], None, None).expect("append");
    }
    log.close().expect("close");
    let policy = load_policy(&data.join("policy.txt")).expect("policy");
    let cluster = cluster_from_origin(&policy.origin).expect("origin");
    let path = data.join("segments").join(segment_file_name(0));
    let bytes = std::fs::read(&path).expect("segment 0");
    let scan = scan_segment_with(&bytes, 0, cluster, &mut Chain::genesis(cluster));
    let seal = scan.records.last().expect("records");
    assert_eq!(seal.header.kind, RecordKind::Seal, "segment 0 is sealed");
    let at = seal.body_range.start + 8;
    flip(&path, at);
    let (code, stdout, _) = run(&["verify", "--data-dir", s(&data), "--format", "text"]);
    assert_eq!(code, 1, "{stdout}");
    let located = stdout.lines().any(|line| {
        line.trim_start()
            .strip_prefix(&format!("at {} at byte ", path.display()))
            .and_then(|rest| rest.split(':').next())
            .and_then(|n| n.parse::<usize>().ok())
            .is_some_and(|n| n <= at)
    });
    assert!(located, "the seal flip at byte {at} is named:\n{stdout}");
}

// Goal: the access trail's rows in replica 0's index are checked against
// the log without keys (P7): an edited, deleted or invented access row is
// caught and named by position.
#[test]
fn tampered_access_rows_of_replica_0_are_named() {
    let position: u64 = {
        let case = Case::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let url = format!(
                "sqlite://{}",
                case.replica(0).join("index.sqlite3").display()
            );
            let pool = sqlx::SqlitePool::connect(&url).await.expect("connect");
            let first: i64 = sqlx::query_scalar("SELECT min(position) FROM access")
                .fetch_one(&pool)
                .await
                .expect("the fixture's index has access rows");
            pool.close().await;
            u64::try_from(first).expect("non-negative")
        })
    };
    let cases: Vec<String> = vec![
        format!(
            "UPDATE access SET payload = replace(payload, '\"dev\"', '\"mallory\"') WHERE position = {position}"
        ),
        format!("DELETE FROM access WHERE position = {position}"),
        format!(
            "INSERT INTO access (time_ns, principal, role, action, outcome, position, payload, salt) \
             VALUES (1, 'x', 'writer', 'read_stream', 'success', {EXTRA_POSITION}, '{{}}', zeroblob(32))"
        ),
    ];
    for (statement, place) in cases.iter().zip([position, position, EXTRA_POSITION]) {
        let case = Case::new();
        tamper_index(&case.replica(0), &[statement.as_str()]);
        case.verify().assert_caught(
            "replica 0: access trail",
            &format!("index table access, position {place}"),
            "",
        );
    }
}

// Goal: an access row's columns must agree with its committed payload, and
// no access row may exist outside the trail: editing a column alone, or
// adding a row without a position, is caught.
#[test]
fn access_row_columns_and_stray_rows_are_caught() {
    let case = Case::new();
    tamper_index(
        &case.replica(0),
        &[
            "UPDATE access SET principal = 'mallory' WHERE position = (SELECT min(position) FROM access)",
        ],
    );
    case.verify().assert_caught(
        "replica 0: access trail",
        "index table access, position",
        "column principal differs",
    );
    let case = Case::new();
    tamper_index(
        &case.replica(0),
        &[
            "INSERT INTO access (time_ns, principal, role, action, outcome) VALUES (1, 'x', 'writer', 'read_stream', 'success')",
        ],
    );
    case.verify().assert_caught(
        "replica 0: access trail",
        "index table access",
        "name no position",
    );
}

// Goal: a replica of a cluster stopped with ops its certificates do not
// cover yet (prepared, or committed without the certificate here) and, as
// the index rule says, no index rows for them, passes `verify --cluster`:
// its index and trail are compared with the log up to its newest
// certificate (the replica comparison checks the rest). The same tail with
// index rows still present fails: the index never holds rows of ops a
// certificate does not cover.
#[test]
fn uncertified_tail_without_index_rows_passes_in_a_cluster() {
    let prepare = |drop_rows: bool| {
        let case = Case::new();
        let (bytes, records) = case.records(0);
        let certificates: Vec<&ScannedRecord> = records
            .iter()
            .filter(|r| r.header.kind == RecordKind::Certificate)
            .collect();
        let [.., previous, last] = certificates[..] else {
            panic!("at least two certificates");
        };
        let text = std::str::from_utf8(&bytes[previous.body_range.clone()]).expect("utf-8");
        let kept = Certificate::parse(text).expect("certificate");
        // Drop the newest certificate record (and anything after it): the
        // ops after the previous certificate are uncertified here.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(case.segment(0))
            .expect("open");
        file.set_len(last.offset).expect("truncate");
        let (size, op) = (kept.checkpoint.size, previous.header.op);
        if drop_rows {
            let changed = index_exec(
                &case.replica(0),
                &[
                    format!("DELETE FROM events WHERE position >= {size}"),
                    format!("DELETE FROM commits WHERE op > {op}"),
                    format!("DELETE FROM access WHERE position >= {size}"),
                ],
            );
            assert!(changed[0] > 0, "the uncovered ops had event rows");
        }
        (case, size)
    };
    let (case, _) = prepare(true);
    let outcome = case.verify();
    assert_eq!(outcome.code, 0, "{}", outcome.describe());
    let (case, size) = prepare(false);
    case.verify().assert_caught(
        "replica 0: audit index",
        &format!("index row events.position={size}"),
        "",
    );
}
