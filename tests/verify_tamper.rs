//! Tamper evidence of `vellum verify` (DESIGN P2): flipped, truncated,
//! reordered, deleted, forged and re-signed bytes of the segments, and
//! deleted, added and edited rows of the audit index, are each refused with
//! a location that names the file and byte (or the index row). An untouched
//! copy of the same data directory passes.

mod support;

use support::{copy_dir, tamper_index};

use std::path::{Path, PathBuf};

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions, load_policy};
use vellum::storage::{SEGMENT_BYTES_MIN, StorageConfig};
use vellum_audit::checkpoint::Certificate;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::{self, OpHeader, Record, RecordKind, SealBody};
use vellum_audit::report::{Check, FailureKind, Outcome};
use vellum_audit::segment::{
    Chain, ScannedRecord, SegmentEnd, scan_segment_with, segment_file_name,
};
use vellum_audit::verify::{LogVerification, cluster_from_origin, verify_log_dir};

/// Appends made by [`make_log`]; enough for four or more 4 KiB segments.
const APPENDS: u64 = 14;

fn options() -> LogOptions {
    LogOptions {
        storage: StorageConfig {
            segment_bytes_max: SEGMENT_BYTES_MIN,
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    }
}

fn event(stream: u64, i: u64, tag: &str) -> Bytes {
    Bytes::from(format!(
        "{{\"resourceType\":\"Observation\",\"stream\":{stream},\"i\":{i},\"tag\":\"{tag}\",\"pad\":\"{}\"}}",
        "x".repeat(120)
    ))
}

/// A closed data directory of several sealed segments and one open one.
fn make_log_with(parent: &Path, tag: &str) -> PathBuf {
    let data = parent.join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    append_to(&data, tag, APPENDS);
    data
}

fn append_to(data: &Path, tag: &str, appends: u64) {
    let (log, _) = LocalLog::open(data, options()).expect("open");
    for i in 0..appends {
        let stream = 16 + i % 3;
        let count = 1 + i % 3;
        let events: Vec<Bytes> = (0..count).map(|j| event(stream, i * 10 + j, tag)).collect();
        log.append(stream, &events, None, None).expect("append");
    }
    log.close().expect("close");
}

fn make_log(parent: &Path) -> PathBuf {
    make_log_with(parent, "original")
}

fn policy_of(data: &Path) -> Policy {
    load_policy(&data.join("policy.txt")).expect("policy")
}

fn segments(data: &Path) -> PathBuf {
    data.join("segments")
}

fn segment_path(data: &Path, index: u64) -> PathBuf {
    segments(data).join(segment_file_name(index))
}

fn segment_count(data: &Path) -> u64 {
    std::fs::read_dir(segments(data))
        .expect("segments dir")
        .count() as u64
}

fn verify_log(data: &Path, policy: &Policy) -> LogVerification {
    verify_log_dir(&segments(data), policy, &mut |_| {})
}

fn cluster(policy: &Policy) -> u128 {
    cluster_from_origin(&policy.origin).expect("a vellum origin")
}

/// The valid records of segment `index`, as the scanner sees them (the
/// chain is carried from genesis, so every rule is checked).
fn records_of(
    data: &Path,
    policy: &Policy,
    index: u64,
) -> (Vec<u8>, Vec<ScannedRecord>, SegmentEnd) {
    let mut chain = Chain::genesis(cluster(policy));
    for earlier in 0..index {
        let bytes = std::fs::read(segment_path(data, earlier)).expect("read segment");
        scan_segment_with(&bytes, earlier, cluster(policy), &mut chain);
    }
    let bytes = std::fs::read(segment_path(data, index)).expect("read segment");
    let scan = scan_segment_with(&bytes, index, cluster(policy), &mut chain);
    (bytes, scan.records, scan.end)
}

/// Every failure of every check: (check name, location, message).
fn failures(checks: &[Check]) -> Vec<(String, String, String)> {
    checks
        .iter()
        .flat_map(|c| {
            c.failures
                .iter()
                .map(|f| (c.name.clone(), f.location.clone(), f.message.clone()))
        })
        .collect()
}

fn describe(checks: &[Check]) -> String {
    failures(checks)
        .iter()
        .map(|(c, l, m)| format!("[{c}] at {l}: {m}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `"<file> at byte N"` split into file and N.
fn file_and_byte(location: &str) -> Option<(PathBuf, u64)> {
    let (file, byte) = location.rsplit_once(" at byte ")?;
    Some((PathBuf::from(file), byte.parse().ok()?))
}

fn assert_passes(data: &Path, policy: &Policy) {
    let verification = verify_log(data, policy);
    assert!(
        verification.checks.iter().all(Check::passed),
        "an untouched log must pass:\n{}",
        describe(&verification.checks)
    );
}

/// Asserts verification failed and some failure names `file` at a byte at or before `byte`.
fn assert_caught_at(checks: &[Check], file: &Path, byte: u64, what: &str) {
    let all = failures(checks);
    assert!(!all.is_empty(), "{what}: verify passed a tampered log");
    let located = all.iter().any(|(_, location, _)| {
        file_and_byte(location).is_some_and(|(f, at)| f == file && at <= byte)
    });
    assert!(
        located,
        "{what}: no failure names {} at or before byte {byte}:\n{}",
        file.display(),
        describe(checks)
    );
}

/// Asserts the check named `name` failed with a failure of `kind` whose
/// message holds `needle` (the kind is what programs decide by; the message
/// is for people).
fn assert_check_failed(checks: &[Check], name: &str, kind: FailureKind, needle: &str) {
    let check = checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check named {name}"));
    assert_eq!(
        check.outcome,
        Outcome::Fail,
        "{name} must fail:\n{}",
        describe(checks)
    );
    assert!(
        check
            .failures
            .iter()
            .any(|f| f.kind == kind && f.message.contains(needle)),
        "{name} must fail as {kind:?} saying {needle:?}:\n{}",
        describe(checks)
    );
}

/// Goal: the fixture has several sealed segments and an open last one, and it passes.
#[test]
fn the_fixture_has_sealed_segments_and_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = make_log(dir.path());
    let policy = policy_of(&data);
    let count = segment_count(&data);
    assert!(count >= 3, "expected several segments, got {count}");
    for index in 0..count - 1 {
        let (_, records, end) = records_of(&data, &policy, index);
        assert!(
            matches!(end, SegmentEnd::Sealed { .. }),
            "segment {index} is sealed"
        );
        let kinds: Vec<RecordKind> = records.iter().map(|r| r.header.kind).collect();
        eprintln!("segment {index}: {kinds:?}");
    }
    assert_passes(&data, &policy);
}

/// Flips one bit of byte `at` of `path`, runs `verify_log_dir`, restores the byte.
fn verify_with_flip(
    data: &Path,
    policy: &Policy,
    path: &Path,
    clean: &mut [u8],
    at: usize,
) -> Vec<Check> {
    clean[at] ^= 1 << (at % 8);
    std::fs::write(path, &*clean).expect("write flipped");
    let checks = verify_log(data, policy).checks;
    clean[at] ^= 1 << (at % 8);
    checks
}

/// Appends of the bit-flip fixture: three sealed segments and an open one.
const FLIP_APPENDS: u64 = 10;
/// Every byte of the first and last segments is flipped; in the others every
/// `FLIP_STRIDE`-th byte (a stride coprime with the 256-byte header, so the
/// sample walks through every header field), to keep the test near 20 s.
const FLIP_STRIDE: usize = 7;

/// Goal: a bit flip at every byte of the first sealed segment and of the
/// last (open) segment, and at every 7th byte of the sealed segments between,
/// is refused by `verify_log_dir`, naming that file and a byte at or before
/// the flip.
#[test]
fn every_bit_flip_in_the_segments_is_caught_with_its_location() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    append_to(&data, "flip", FLIP_APPENDS);
    let policy = policy_of(&data);
    let count = segment_count(&data);
    assert!(count >= 3, "expected several segments, got {count}");
    let started = std::time::Instant::now();
    let mut flips = 0u64;
    for index in 0..count {
        let path = segment_path(&data, index);
        let mut bytes = std::fs::read(&path).expect("read segment");
        let stride = if index == 0 || index + 1 == count {
            1
        } else {
            FLIP_STRIDE
        };
        for at in (0..bytes.len()).step_by(stride) {
            let checks = verify_with_flip(&data, &policy, &path, &mut bytes, at);
            assert_caught_at(&checks, &path, at as u64, &format!("flip at byte {at}"));
            flips += 1;
        }
        std::fs::write(&path, &bytes).expect("restore");
    }
    eprintln!("{flips} flips in {:?}", started.elapsed());
    assert_passes(&data, &policy);
}

/// The original log and a copy of it to tamper with.
struct Fixture {
    _dir: tempfile::TempDir,
    original: PathBuf,
    tampered: PathBuf,
    policy: Policy,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let original = make_log(dir.path());
        let tampered = dir.path().join("tampered");
        copy_dir(&original, &tampered);
        let policy = policy_of(&original);
        Fixture {
            _dir: dir,
            original,
            tampered,
            policy,
        }
    }

    fn segment(&self, index: u64) -> PathBuf {
        segment_path(&self.tampered, index)
    }

    fn last_index(&self) -> u64 {
        segment_count(&self.tampered) - 1
    }

    fn records(&self, index: u64) -> (Vec<u8>, Vec<ScannedRecord>) {
        let (bytes, records, _) = records_of(&self.tampered, &self.policy, index);
        (bytes, records)
    }

    /// Verifies the tampered copy (which must fail) and the original (which must pass).
    fn verify(&self) -> Vec<Check> {
        assert_passes(&self.original, &self.policy);
        verify_log(&self.tampered, &self.policy).checks
    }
}

/// The bytes of a scanned record.
fn record_bytes(bytes: &[u8], record: &ScannedRecord) -> Vec<u8> {
    bytes[record.offset as usize..record.body_range.end].to_vec()
}

/// Writes a segment: its 64-byte header then `records`, back to back.
fn write_segment(path: &Path, header: &[u8], records: &[Vec<u8>]) {
    let mut out = header.to_vec();
    for record in records {
        out.extend_from_slice(record);
    }
    std::fs::write(path, out).expect("write segment");
}

fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for truncation");
    file.set_len(len).expect("truncate");
}

/// Goal: a sealed segment cut in the middle, or cut just before its seal,
/// fails with that file and the byte where it now ends or breaks.
#[test]
fn truncated_sealed_segment_is_caught() {
    let fixture = Fixture::new();
    let path = fixture.segment(1);
    let (bytes, records) = fixture.records(1);
    let middle = bytes.len() as u64 / 2;
    truncate(&path, middle);
    assert_caught_at(&fixture.verify(), &path, middle, "cut in the middle");

    std::fs::write(&path, &bytes).expect("restore");
    let seal = records.last().expect("a sealed segment has records");
    assert_eq!(seal.header.kind, RecordKind::Seal);
    truncate(&path, seal.offset);
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, seal.offset, "seal cut off");
    assert_check_failed(&checks, "segment seals", FailureKind::Damaged, "not sealed");
}

/// Goal: the last segment cut inside its last record (a torn tail) is
/// reported at that record, never accepted as a shorter log.
#[test]
fn torn_tail_of_the_last_segment_is_reported() {
    let fixture = Fixture::new();
    let path = fixture.segment(fixture.last_index());
    let (_, records) = fixture.records(fixture.last_index());
    let last = records.last().expect("the last segment has records");
    let cut = last.offset + 100;
    truncate(&path, cut);
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, last.offset, "torn tail");
    assert_check_failed(
        &checks,
        "records and hash chain",
        FailureKind::Torn,
        "torn write or damage",
    );
}

/// Goal: a deleted middle segment fails naming the missing file; a deleted
/// last segment fails `verify_data_dir` at the first index row the log lost.
#[test]
fn deleted_segment_is_caught() {
    let fixture = Fixture::new();
    let middle = fixture.segment(2);
    std::fs::remove_file(&middle).expect("delete");
    let checks = fixture.verify();
    assert_caught_at(&checks, &middle, 0, "middle segment deleted");
    assert_check_failed(
        &checks,
        "records and hash chain",
        FailureKind::Damaged,
        "segment 2 is missing",
    );

    copy_dir(&segments(&fixture.original), &segments(&fixture.tampered));
    let last = fixture.segment(fixture.last_index());
    let (_, records) = fixture.records(fixture.last_index());
    let first_position = records
        .iter()
        .find(|r| r.header.kind == RecordKind::Op)
        .expect("the last segment holds an op")
        .header
        .global_position;
    std::fs::remove_file(&last).expect("delete");
    let report =
        vellum::verify::verify_data_dir(&fixture.tampered, &fixture.policy, None, &mut |_| {});
    assert!(
        !report.passed,
        "a deleted last segment must fail:\n{}",
        report.to_text()
    );
    assert_check_failed(
        &report.checks,
        "audit index",
        FailureKind::IndexMismatch,
        "extra",
    );
    let row = format!("index row events.position={first_position}");
    assert!(
        failures(&report.checks).iter().any(|(_, l, _)| *l == row),
        "{row} must be named:\n{}",
        report.to_text()
    );
}

/// Goal: two segment files swapped by name fail at byte 0 of the first one.
#[test]
fn swapped_segment_files_are_caught() {
    let fixture = Fixture::new();
    let (one, two) = (fixture.segment(1), fixture.segment(2));
    let temp = fixture.tampered.join("swap");
    std::fs::rename(&one, &temp).expect("rename");
    std::fs::rename(&two, &one).expect("rename");
    std::fs::rename(&temp, &two).expect("rename");
    let checks = fixture.verify();
    assert_caught_at(&checks, &one, 0, "swapped segments");
}

/// Goal: two op records swapped inside a segment fail at the first of them.
#[test]
fn swapped_records_are_caught() {
    let fixture = Fixture::new();
    let path = fixture.segment(1);
    let (bytes, records) = fixture.records(1);
    let ops: Vec<usize> = (0..records.len())
        .filter(|&i| records[i].header.kind == RecordKind::Op)
        .collect();
    assert!(ops.len() >= 2, "segment 1 holds two ops");
    let mut encoded: Vec<Vec<u8>> = records.iter().map(|r| record_bytes(&bytes, r)).collect();
    encoded.swap(ops[0], ops[1]);
    write_segment(&path, &bytes[..64], &encoded);
    assert_caught_at(
        &fixture.verify(),
        &path,
        records[ops[0]].offset,
        "swapped ops",
    );
}

/// Goal: bytes appended after a seal fail at the byte where the seal ended.
#[test]
fn garbage_after_a_seal_is_caught() {
    let fixture = Fixture::new();
    let path = fixture.segment(0);
    let mut bytes = std::fs::read(&path).expect("read");
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0x5a; 50]);
    std::fs::write(&path, &bytes).expect("write");
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, end, "garbage after the seal");
    assert_check_failed(
        &checks,
        "records and hash chain",
        FailureKind::Damaged,
        "bytes after the seal",
    );
}

/// An op record that follows `last` in every field the scanner checks except `parent`.
fn forged_op(last: &OpHeader, parent: [u8; 32]) -> Record {
    let mut header = *last;
    header.parent = parent;
    header.op = last.op + 1;
    header.commit = last.op;
    header.global_position = last.tree_size;
    header.event_count = 1;
    header.tree_size = last.tree_size + 1;
    let sealed = [0x42u8; 64];
    let body = record::encode_events(&[record::EventFrame {
        commitment: [1; 32],
        nonce: [2; 12],
        sealed: &sealed,
    }]);
    Record::new(header, body)
}

/// Goal: a forged op with valid checksums but the wrong parent fails at its
/// offset, wherever it is inserted.
#[test]
fn forged_record_with_a_wrong_parent_is_caught() {
    let fixture = Fixture::new();
    let index = fixture.last_index();
    let path = fixture.segment(index);
    let (bytes, records) = fixture.records(index);
    let last_op = records
        .iter()
        .rev()
        .find(|r| r.header.kind == RecordKind::Op)
        .expect("the last segment holds an op");
    let forged = forged_op(&last_op.header, [0x55; 32]);
    // Written at the data end, where the next record goes (the file may
    // hold a zero window after it).
    let last = records.last().expect("records");
    let end = (last.offset + last.encoded_len()) as usize;
    let mut appended = bytes[..end].to_vec();
    appended.extend_from_slice(&forged.encode());
    appended.resize(appended.len().max(bytes.len()), 0);
    std::fs::write(&path, &appended).expect("write");
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, end as u64, "forged op at the end");
    assert_check_failed(
        &checks,
        "records and hash chain",
        FailureKind::Damaged,
        "parent is not the checksum",
    );
}

/// Replaces the body of `record` (a certificate) in its segment, keeping its header fields.
fn replace_certificate(path: &Path, bytes: &[u8], record: &ScannedRecord, text: &str) {
    let replacement = Record::new(record.header, text.as_bytes().to_vec()).encode();
    let mut out = bytes[..record.offset as usize].to_vec();
    out.extend_from_slice(&replacement);
    out.extend_from_slice(&bytes[record.body_range.end..]);
    std::fs::write(path, out).expect("write");
}

fn first_certificate(fixture: &Fixture) -> (PathBuf, Vec<u8>, ScannedRecord, Certificate) {
    let (bytes, records) = fixture.records(0);
    let record = records
        .into_iter()
        .find(|r| r.header.kind == RecordKind::Certificate)
        .expect("segment 0 holds a certificate");
    let text = std::str::from_utf8(&bytes[record.body_range.clone()]).expect("utf-8");
    let certificate = Certificate::parse(text).expect("certificate");
    (fixture.segment(0), bytes, record, certificate)
}

/// Goal: a certificate re-signed with another key (same key name) fails the
/// certificate check at its record, naming valid and needed signatures.
#[test]
fn certificate_signed_by_another_key_is_caught() {
    let fixture = Fixture::new();
    let (path, bytes, record, certificate) = first_certificate(&fixture);
    let name = certificate.note.signatures[0].name.clone();
    let intruder = Signer::from_seed(&name, [7; 32]).expect("signer");
    let forged = Certificate::sign(certificate.checkpoint.clone(), &[&intruder]).expect("sign");
    replace_certificate(&path, &bytes, &record, &forged.encode());
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, record.offset, "re-signed certificate");
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::CertificateInvalid,
        "0 valid signatures of pinned keys, 1 needed",
    );
}

/// Goal: a certificate for another log's origin, signed with the replica's
/// real key, is refused: a signature never carries over between logs.
#[test]
fn certificate_of_another_origin_is_caught() {
    let fixture = Fixture::new();
    let (path, bytes, record, certificate) = first_certificate(&fixture);
    let signer = vellum::crypto::load_signing_key_file(&fixture.tampered.join("keys/signing.key"))
        .expect("the replica's key");
    let mut checkpoint = certificate.checkpoint.clone();
    checkpoint.origin = "vellum.local/cluster/00000000000000000000000000000001".to_string();
    let forged = Certificate::sign(checkpoint, &[&signer]).expect("sign");
    replace_certificate(&path, &bytes, &record, &forged.encode());
    let checks = fixture.verify();
    assert_caught_at(
        &checks,
        &path,
        record.offset,
        "certificate of another origin",
    );
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::CertificateInvalid,
        "is not the pinned origin",
    );
}

/// Goal: a whole log rebuilt with different events under the same cluster id
/// and signed by another key is self-consistent, yet verify against the
/// ORIGINAL policy fails in the certificate check.
#[test]
fn rewritten_history_signed_by_another_key_is_caught() {
    let fixture = Fixture::new();
    let forged = fixture._dir.path().join("forged");
    vellum::init::init_data_dir(&forged, None).expect("init");
    let intruder_policy = policy_of(&forged);
    std::fs::copy(
        fixture.original.join("vellum.json"),
        forged.join("vellum.json"),
    )
    .expect("copy meta");
    std::fs::remove_dir_all(segments(&forged)).expect("remove segments");
    std::fs::create_dir(segments(&forged)).expect("segments dir");
    for name in ["index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"] {
        let _ = std::fs::remove_file(forged.join(name));
    }
    let policy = Policy::new(&fixture.policy.origin, intruder_policy.verifiers.clone(), 1)
        .expect("intruder policy");
    std::fs::write(forged.join("policy.txt"), policy.encode()).expect("write policy");
    append_to(&forged, "forged", APPENDS);
    assert_passes(&forged, &policy);

    let checks = verify_log(&forged, &fixture.policy).checks;
    for name in ["records and hash chain", "segment seals", "merkle roots"] {
        let check = checks.iter().find(|c| c.name == name).expect("check");
        assert!(
            check.passed(),
            "the forged log is self-consistent in {name}"
        );
    }
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::CertificateInvalid,
        "0 valid signatures of pinned keys, 1 needed",
    );
    let (_, records, _) = records_of(&forged, &fixture.policy, 0);
    let first_cert = records
        .iter()
        .find(|r| r.header.kind == RecordKind::Certificate)
        .expect("a certificate");
    assert_caught_at(
        &checks,
        &segment_path(&forged, 0),
        first_cert.offset,
        "rewritten history",
    );
}

/// Rewrites segments `from..` without their certificate records, re-sealing
/// each sealed one with honest counts: what an attacker with write access
/// (but no replica key) can do, since seals and the chain are unsigned.
fn strip_certificates(fixture: &Fixture, from: u64) {
    let mut chain = Chain::genesis(cluster(&fixture.policy));
    for index in 0..=fixture.last_index() {
        let path = fixture.segment(index);
        let bytes = std::fs::read(&path).expect("read");
        let scan = scan_segment_with(&bytes, index, cluster(&fixture.policy), &mut chain);
        if index < from {
            continue;
        }
        let mut kept: Vec<Vec<u8>> = Vec::new();
        for scanned in &scan.records {
            match scanned.header.kind {
                RecordKind::Certificate => {}
                RecordKind::Op => kept.push(record_bytes(&bytes, scanned)),
                RecordKind::Seal => {
                    let body = &bytes[scanned.body_range.clone()];
                    let mut seal = SealBody::decode(body, 0).expect("seal body");
                    seal.record_count = kept.len() as u64;
                    kept.push(Record::new(scanned.header, seal.encode().to_vec()).encode());
                }
            }
        }
        write_segment(&path, &bytes[..64], &kept);
    }
}

/// Where op `op` starts: (file, byte).
fn op_location(data: &Path, policy: &Policy, op: u64) -> (PathBuf, u64) {
    for index in 0..segment_count(data) {
        let (_, records, _) = records_of(data, policy, index);
        if let Some(r) = records
            .iter()
            .find(|r| r.header.kind == RecordKind::Op && r.header.op == op)
        {
            return (segment_path(data, index), r.offset);
        }
    }
    panic!("op {op} is not in the log");
}

/// Goal: a log whose certificates were all stripped (seals recomputed, so
/// records, seals and roots are consistent) fails the certificate check at op 1.
#[test]
fn log_with_every_certificate_stripped_fails() {
    let fixture = Fixture::new();
    strip_certificates(&fixture, 0);
    let checks = fixture.verify();
    for name in ["records and hash chain", "segment seals", "merkle roots"] {
        let check = checks.iter().find(|c| c.name == name).expect("check");
        assert!(
            check.passed(),
            "the stripped log is consistent in {name}:\n{}",
            describe(&checks)
        );
    }
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::NoCertificate,
        "no valid certificate covers",
    );
    let (file, byte) = op_location(&fixture.tampered, &fixture.policy, 1);
    assert_caught_at(&checks, &file, byte, "every certificate stripped");
}

/// Goal: stripping the certificates of the last segments (seals recomputed)
/// leaves ops no signature vouches for; verify fails naming the first of them.
#[test]
fn log_with_its_tail_certificates_stripped_fails() {
    let fixture = Fixture::new();
    let from = fixture.last_index() - 1;
    strip_certificates(&fixture, from);
    let checks = fixture.verify();
    let last_certified = (0..from)
        .flat_map(|i| fixture.records(i).1)
        .filter(|r| r.header.kind == RecordKind::Certificate)
        .map(|r| r.header.op)
        .max()
        .expect("a certificate remains");
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::Uncertified,
        "not covered by any valid certificate",
    );
    let (file, byte) = op_location(&fixture.tampered, &fixture.policy, last_certified + 1);
    let expected = format!("{} at byte {byte}", file.display());
    assert!(
        failures(&checks).iter().any(|(_, l, _)| *l == expected),
        "the first uncertified op {} at {expected} must be named:\n{}",
        last_certified + 1,
        describe(&checks)
    );
}

/// Goal: a log whose last certificate record was cut off (ops at the end
/// with no certificate) fails; the same log passes once reopened, which
/// signs the tail again.
#[test]
fn uncertified_tail_fails_until_the_log_is_reopened() {
    let fixture = Fixture::new();
    let index = fixture.last_index();
    let path = fixture.segment(index);
    let (_, records) = fixture.records(index);
    let last = records.last().expect("records");
    assert_eq!(
        last.header.kind,
        RecordKind::Certificate,
        "the log ends with a certificate"
    );
    truncate(&path, last.offset);
    let checks = fixture.verify();
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::Uncertified,
        "not covered by any valid certificate",
    );
    let (file, byte) = op_location(&fixture.tampered, &fixture.policy, last.header.op);
    assert_caught_at(&checks, &file, byte, "tail certificate cut off");

    let (log, report) = LocalLog::open(&fixture.tampered, options()).expect("reopen");
    assert!(report.recertified, "open signs the uncertified tail");
    log.close().expect("close");
    assert_passes(&fixture.tampered, &fixture.policy);
}

/// Goal: a data directory whose segment files were all deleted fails in the
/// log checks (segment 0 missing); the index check does not run (compared
/// with nothing, every row would fail as a knock-on) and never passes.
#[test]
fn log_of_zero_segments_with_a_full_index_fails() {
    let fixture = Fixture::new();
    for index in 0..=fixture.last_index() {
        std::fs::remove_file(fixture.segment(index)).expect("delete");
    }
    let checks = fixture.verify();
    assert_caught_at(&checks, &fixture.segment(0), 0, "every segment deleted");
    let report =
        vellum::verify::verify_data_dir(&fixture.tampered, &fixture.policy, None, &mut |_| {});
    assert!(!report.passed);
    let index = report
        .checks
        .iter()
        .find(|c| c.name == "audit index")
        .expect("an audit index check");
    assert_eq!(
        index.outcome,
        vellum_audit::report::Outcome::NotRun,
        "the index is not compared with a log that could not be read:\n{}",
        report.to_text()
    );
    assert_eq!(report.root_causes, 1, "{}", report.to_text());
}

/// Goal: a freshly initialized data directory (segment 0, no ops) passes.
#[test]
fn empty_initialized_log_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let policy = policy_of(&data);
    assert_passes(&data, &policy);
    let report = vellum::verify::verify_data_dir(&data, &policy, None, &mut |_| {});
    assert!(report.passed, "{}", report.to_text());
}

/// Goal: a policy of quorum 2 (two pinned keys) fails a one-replica log's
/// certificates with a message naming the valid and needed counts.
#[test]
fn quorum_two_with_one_signature_fails() {
    let fixture = Fixture::new();
    let other = Signer::from_seed("other-replica", [9; 32]).expect("signer");
    let mut verifiers = fixture.policy.verifiers.clone();
    verifiers.push(other.verifier());
    let policy = Policy::new(&fixture.policy.origin, verifiers, 2).expect("policy");
    let checks = verify_log(&fixture.original, &policy).checks;
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::CertificateInvalid,
        "1 valid signatures of pinned keys, 2 needed",
    );
    let (_, records) = fixture.records(0);
    let first_cert = records
        .iter()
        .find(|r| r.header.kind == RecordKind::Certificate)
        .expect("a certificate");
    let path = segment_path(&fixture.original, 0);
    assert_caught_at(&checks, &path, first_cert.offset, "quorum 2");
}

/// Goal: each deleted, added or edited row of the events, commits and keys
/// tables fails `verify_data_dir` in the "audit index" check naming that row,
/// and `rebuild_index` makes verify pass again.
#[test]
fn tampered_index_rows_are_named_and_rebuild_repairs_them() {
    let fixture = Fixture::new();
    let facts = verify_log(&fixture.original, &fixture.policy).facts;
    let events = facts.events.len();
    let commit = facts.commits[1].op;
    let key = facts.keys[0].0;
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["DELETE FROM events WHERE position = 3".into()],
            "events.position=3".into(),
        ),
        (
            vec![format!(
                "INSERT INTO events (position, stream, stream_offset, op, leaf_hash, segment, file_offset) \
                 VALUES ({events}, 999, 0, 1, zeroblob(32), 0, 64)"
            )],
            format!("events.position={events}"),
        ),
        (
            vec!["UPDATE events SET leaf_hash = zeroblob(32) WHERE position = 4".into()],
            "events.position=4".into(),
        ),
        (
            vec!["UPDATE events SET stream_offset = 1000 WHERE position = 5".into()],
            "events.position=5".into(),
        ),
        (
            vec![format!("DELETE FROM commits WHERE op = {commit}")],
            format!("commits.op={commit}"),
        ),
        (
            vec![format!(
                "UPDATE commits SET root = zeroblob(32) WHERE op = {commit}"
            )],
            format!("commits.op={commit}"),
        ),
        (
            vec![format!(
                "UPDATE commits SET certificate = certificate || 'x' WHERE op = {commit}"
            )],
            format!("commits.op={commit}"),
        ),
        (
            vec![format!("UPDATE commits SET view = 7 WHERE op = {commit}")],
            format!("commits.op={commit}"),
        ),
        (
            vec![format!("DELETE FROM keys WHERE key_id = {key}")],
            format!("keys.key_id={key}"),
        ),
    ];
    let report =
        vellum::verify::verify_data_dir(&fixture.original, &fixture.policy, None, &mut |_| {});
    assert!(
        report.passed,
        "the untouched index passes:\n{}",
        report.to_text()
    );
    for (i, (statements, row)) in cases.iter().enumerate() {
        let data = fixture._dir.path().join(format!("index-case-{i}"));
        copy_dir(&fixture.original, &data);
        tamper_index(&data, statements);
        let report = vellum::verify::verify_data_dir(&data, &fixture.policy, None, &mut |_| {});
        let expected = format!("index row {row}");
        let named = report.checks.iter().any(|c| {
            c.name == "audit index"
                && c.outcome == Outcome::Fail
                && c.failures.iter().any(|f| f.location == expected)
        });
        assert!(
            named,
            "{statements:?} must fail naming {expected}:\n{}",
            report.to_text()
        );
        vellum::log::rebuild_index(&data, None).expect("rebuild");
        let report = vellum::verify::verify_data_dir(&data, &fixture.policy, None, &mut |_| {});
        assert!(
            report.passed,
            "after rebuild ({statements:?}):\n{}",
            report.to_text()
        );
    }
}

/// Rewrites header-only fields (timestamp, client id) of op `op` and
/// recomputes every later parent and checksum: an attacker's rewrite that
/// leaves the leaves, roots and signatures untouched.
fn rewrite_header_and_rechain(fixture: &Fixture, op: u64) {
    let mut by_op = std::collections::BTreeMap::new();
    let mut last = [0u8; 32];
    let all: Vec<_> = (0..=fixture.last_index())
        .map(|i| fixture.records(i))
        .collect();
    for (index, (bytes, records)) in all.iter().enumerate() {
        let mut out = Vec::new();
        for scanned in records {
            let mut header = scanned.header;
            let body = bytes[scanned.body_range.clone()].to_vec();
            match header.kind {
                RecordKind::Op => {
                    if header.op > 1 {
                        header.parent = last;
                    }
                    if header.op == op {
                        header.timestamp_ns = 1;
                        header.client_id = 42;
                    }
                    last = header.checksum();
                    by_op.insert(header.op, last);
                }
                RecordKind::Certificate => header.parent = by_op[&header.op],
                RecordKind::Seal => header.parent = last,
            }
            out.push(Record::new(header, body).encode());
        }
        write_segment(&fixture.segment(index as u64), &bytes[..64], &out);
    }
}

/// Goal: every certificate carries a signed chain head, so a rewrite of
/// header-only fields (timestamp, client id) with the whole chain recomputed
/// fails at the certificates after it; the untouched log passes with every
/// head matched.
#[test]
fn header_rewrite_is_caught_by_the_signed_chain_head() {
    let fixture = Fixture::new();
    let checks = verify_log(&fixture.tampered, &fixture.policy).checks;
    assert!(
        failures(&checks).is_empty(),
        "the untouched log passes:\n{}",
        describe(&checks)
    );
    let certificates = checks
        .iter()
        .find(|c| c.name == "certificate signatures")
        .map(|c| {
            (
                c.counts.get("certificates").copied(),
                c.counts.get("chain heads matched").copied(),
            )
        });
    let (total, heads) = certificates.expect("the certificate check ran");
    assert!(
        total.is_some() && total == heads,
        "every certificate's head matched: {total:?} vs {heads:?}"
    );

    rewrite_header_and_rechain(&fixture, 2);
    let (_, records) = fixture.records(0);
    let op2 = records
        .iter()
        .find(|r| r.header.op == 2 && r.header.kind == RecordKind::Op);
    assert_eq!(
        op2.map(|r| r.header.timestamp_ns),
        Some(1),
        "the rewrite took effect"
    );
    let checks = fixture.verify();
    assert_check_failed(
        &checks,
        "certificate signatures",
        FailureKind::CertificateInvalid,
        "does not match the op headers",
    );
}

fn verify_dir(data: &Path, policy: &Policy) -> Vec<Check> {
    vellum::verify::verify_data_dir(data, policy, None, &mut |_| {}).checks
}

/// Goal: an edited vellum.json (another cluster, or garbage) fails the data
/// directory check; the untouched copy passes it.
#[test]
fn edited_node_metadata_is_caught() {
    let fixture = Fixture::new();
    let meta = fixture.tampered.join("vellum.json");
    let text = std::fs::read_to_string(&meta).expect("meta");
    let cluster = format!("{:032x}", cluster(&fixture.policy));
    std::fs::write(&meta, text.replace(&cluster, &"0".repeat(32))).expect("edit");
    assert_check_failed(
        &verify_dir(&fixture.tampered, &fixture.policy),
        "data directory",
        FailureKind::ConfigMismatch,
        "names cluster",
    );
    std::fs::write(&meta, &text[..text.len() / 2]).expect("cut");
    assert_check_failed(
        &verify_dir(&fixture.tampered, &fixture.policy),
        "data directory",
        FailureKind::Unreadable,
        "vellum.json",
    );
    assert!(failures(&verify_dir(&fixture.original, &fixture.policy)).is_empty());
}

/// Goal: verify never writes into what it audits: a copy without an index
/// fails the index check as missing and no index file appears.
#[test]
fn verify_does_not_create_a_missing_index() {
    let fixture = Fixture::new();
    for name in ["index.sqlite3", "index.sqlite3-wal", "index.sqlite3-shm"] {
        let _ = std::fs::remove_file(fixture.tampered.join(name));
    }
    assert_check_failed(
        &verify_dir(&fixture.tampered, &fixture.policy),
        "audit index",
        FailureKind::Unreadable,
        "no audit index",
    );
    assert!(
        !fixture.tampered.join("index.sqlite3").exists(),
        "verify must not create the index"
    );
}

/// The newest certificate record of the log: its segment, that segment's
/// bytes, the record and the certificate.
fn newest_certificate(fixture: &Fixture) -> (PathBuf, Vec<u8>, ScannedRecord, Certificate) {
    for index in (0..=fixture.last_index()).rev() {
        let (bytes, records) = fixture.records(index);
        if let Some(record) = records
            .into_iter()
            .rev()
            .find(|r| r.header.kind == RecordKind::Certificate)
        {
            let text = std::str::from_utf8(&bytes[record.body_range.clone()]).expect("utf-8");
            let certificate = Certificate::parse(text).expect("certificate");
            return (fixture.segment(index), bytes, record, certificate);
        }
    }
    panic!("the log holds a certificate");
}

/// Goal: open checks the signatures of the newest certificate (the one
/// proofs and receipts hand out) and refuses a forged one, naming the
/// segment and byte; an older certificate's signatures are not checked
/// again on open (they were checked when it was made, and re-verifying
/// years of them made open grow with the log) but `vellum verify` still
/// refuses a forged one.
#[test]
fn open_checks_the_newest_certificate_and_verify_checks_them_all() {
    let fixture = Fixture::new();
    let (path, bytes, record, certificate) = newest_certificate(&fixture);
    let name = certificate.note.signatures[0].name.clone();
    let intruder = Signer::from_seed(&name, [7; 32]).expect("signer");
    let forged = Certificate::sign(certificate.checkpoint.clone(), &[&intruder]).expect("sign");
    replace_certificate(&path, &bytes, &record, &forged.encode());
    let error = match LocalLog::open(&fixture.tampered, options()) {
        Ok(_) => panic!("a forged newest certificate is refused at open"),
        Err(error) => error.to_string(),
    };
    assert!(
        error.contains("does not verify under the trust policy")
            && error.contains(&format!("byte {}", record.offset)),
        "{error}"
    );

    let fixture = Fixture::new();
    let (path, bytes, record, certificate) = first_certificate(&fixture);
    let (_, _, newest, _) = newest_certificate(&fixture);
    assert!(
        (path.clone(), record.offset) != (fixture.segment(fixture.last_index()), newest.offset),
        "the first certificate is not the newest"
    );
    let name = certificate.note.signatures[0].name.clone();
    let intruder = Signer::from_seed(&name, [7; 32]).expect("signer");
    let forged = Certificate::sign(certificate.checkpoint.clone(), &[&intruder]).expect("sign");
    replace_certificate(&path, &bytes, &record, &forged.encode());
    let checks = fixture.verify();
    assert_caught_at(&checks, &path, record.offset, "re-signed old certificate");
    let (log, _) = LocalLog::open(&fixture.tampered, options())
        .expect("open trusts an older certificate record that chains and matches its root");
    log.close().expect("close");
}
