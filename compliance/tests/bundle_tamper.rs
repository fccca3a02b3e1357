//! Export bundles end to end: a real bundle built from a tiny in-test log
//! (RFC 6962 tree, Vellum leaves, a 2-of-3 certificate), verified offline
//! against a pinned policy; then each kind of tampering, which must fail and
//! name the file and line or position (P2, P3). Also the manifest's golden
//! file and the size of a bundle of 1,000 events of 1 KiB.

use std::fs;
use std::path::{Path, PathBuf};

use vellum_audit::checkpoint::{Certificate, Checkpoint, origin_for_cluster};
use vellum_audit::hash::sha256;
use vellum_audit::leaf::{LeafPreimage, commitment};
use vellum_audit::merkle::MerkleTree;
use vellum_audit::note::{Note, Signer};
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;
use vellum_audit::report::Report;
use vellum_compliance::bundle::{
    BundleError, BundleRequest, CERTIFICATE_FILE, EVENTS_FILE, ExportedEvent, FileEntry,
    MANIFEST_FILE, MANIFEST_SIG_FILE, Manifest, PROOFS_FILE, encode_manifest, manifest_sig_text,
    verify_bundle, write_bundle,
};

const CLUSTER: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
const STREAM: u64 = 1001;
const OTHER_STREAM: u64 = 7;

fn replicas() -> Vec<Signer> {
    (0..3u8)
        .map(|i| {
            Signer::from_seed(&format!("vellum-replica-{i}"), [0x11 * (i + 1); 32])
                .expect("valid name")
        })
        .collect()
}

fn outsider() -> Signer {
    Signer::from_seed("vellum-replica-9", [0x99; 32]).expect("valid name")
}

fn policy() -> Policy {
    let verifiers = replicas().iter().map(Signer::verifier).collect();
    Policy::new(&origin_for_cluster(CLUSTER), verifiers, 2).expect("valid policy")
}

/// A tiny log: the stream's `count` events interleaved with another
/// stream's, so positions and offsets differ; plaintexts from `body`.
struct TestLog {
    certificate: Certificate,
    events: Vec<ExportedEvent>,
}

fn leaf_for(position: u64, stream: u64, offset: u64, salt: &[u8; 32], text: &[u8]) -> LeafPreimage {
    LeafPreimage {
        global_position: position,
        stream,
        stream_offset: offset,
        op: position + 1,
        ciphertext_hash: sha256(&[b"ciphertext", &position.to_le_bytes()]),
        commitment: commitment(salt, text),
    }
}

fn build_log(count: u64, interleave: bool, body: &dyn Fn(u64) -> Vec<u8>) -> TestLog {
    let mut tree = MerkleTree::new();
    let mut ours = Vec::new();
    for offset in 0..count {
        if interleave {
            let position = tree.len();
            let filler = leaf_for(position, OTHER_STREAM, offset, &[0xee; 32], b"other");
            tree.push(filler.leaf_hash());
        }
        let position = tree.len();
        let salt = [offset as u8 ^ 0x5a; 32];
        let text = body(offset);
        let leaf = leaf_for(position, STREAM, offset, &salt, &text);
        tree.push(leaf.leaf_hash());
        ours.push((leaf, salt, text));
    }
    let r = replicas();
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size: tree.len(),
        root: tree.root(),
        extensions: Vec::new(),
    };
    let certificate = Certificate::sign(checkpoint, &[&r[0], &r[1]]).expect("sign");
    let events = ours
        .into_iter()
        .map(|(leaf, salt, plaintext)| {
            let proof = InclusionProof {
                extra: Some(leaf.encode().to_vec()),
                index: leaf.global_position,
                hashes: tree
                    .inclusion_proof(leaf.global_position, tree.len())
                    .expect("proof"),
                checkpoint: certificate.clone(),
            };
            ExportedEvent {
                stream: STREAM,
                offset: leaf.stream_offset,
                position: leaf.global_position,
                op: leaf.op,
                plaintext,
                salt,
                proof: proof.encode(),
            }
        })
        .collect();
    TestLog {
        certificate,
        events,
    }
}

fn small_body(offset: u64) -> Vec<u8> {
    format!(
        "{{\"resourceType\":\"Observation\",\"id\":\"obs-{offset}\",\"note\":\"a, \\\"b\\\"\"}}"
    )
    .into_bytes()
}

fn request(count: u64) -> BundleRequest {
    BundleRequest {
        stream: STREAM,
        from: 0,
        to: count,
        principal: "auditor-ann".into(),
        purpose: Some("HOPERAT".into()),
        time_ns: 1_709_211_909_000_000_042,
        exported_by: "vellum-replica-0".into(),
    }
}

/// Writes a bundle of four events into a fresh temp dir.
fn bundle() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bundle");
    let log = build_log(4, true, &small_body);
    write_bundle(
        &dir,
        &request(4),
        &log.certificate.encode(),
        &log.events,
        &replicas()[0],
    )
    .expect("write bundle");
    (tmp, dir)
}

fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).expect("read bundle file")
}

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).expect("write bundle file");
}

/// Rewrites the manifest and re-signs it with `signer` (an insider, or an
/// outsider whose key the policy does not pin).
fn resign(dir: &Path, manifest: &Manifest, signer: &Signer) {
    let text = encode_manifest(manifest);
    write(dir, MANIFEST_FILE, &text);
    let note =
        Note::sign(&manifest_sig_text(&sha256(&[text.as_bytes()])), &[signer]).expect("sign");
    write(dir, MANIFEST_SIG_FILE, &note.encode());
}

fn manifest(dir: &Path) -> Manifest {
    serde_json::from_str(&read(dir, MANIFEST_FILE)).expect("manifest parses")
}

/// Asserts the report failed with a failure at `location` (prefix) whose
/// message contains `message`.
fn assert_fails_at(report: &Report, location: &str, message: &str) {
    assert!(!report.passed, "{}", report.to_text());
    let found = report
        .failures()
        .any(|(_, f)| f.location.starts_with(location) && f.message.contains(message));
    assert!(
        found,
        "no failure at {location:?} containing {message:?}:\n{}",
        report.to_text()
    );
}

// Goal: an untouched bundle verifies, and the report reaches its certificate.
#[test]
fn happy_path_passes() {
    let (_tmp, dir) = bundle();
    let report = verify_bundle(&dir, &policy());
    assert!(report.passed, "{}", report.to_text());
    let events = report
        .checks
        .iter()
        .find(|c| c.name == "bundle events")
        .expect("check");
    assert_eq!(events.counts.get("events"), Some(&4));
    assert_eq!(report.reached.as_ref().map(|r| r.tree_size), Some(8));
}

// Goal: changing one event's plaintext breaks its commitment and the file hash.
#[test]
fn edited_plaintext_fails_at_its_line() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, EVENTS_FILE);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut event: serde_json::Value = serde_json::from_str(&lines[1]).expect("json");
    event["plaintext_utf8"] = "forged".into();
    event["plaintext_base64"] = "Zm9yZ2Vk".into();
    lines[1] = event.to_string();
    write(&dir, EVENTS_FILE, &(lines.join("\n") + "\n"));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "events.ndjson line 2 (position 3)", "commitment");
    assert_fails_at(&report, EVENTS_FILE, "sha256");
}

// Goal: a dropped event breaks density at its line and leaves a proof over.
#[test]
fn dropped_event_fails_at_its_line() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, EVENTS_FILE);
    let kept: Vec<&str> = text
        .lines()
        .enumerate()
        .filter(|(i, _)| *i != 1)
        .map(|(_, l)| l)
        .collect();
    write(&dir, EVENTS_FILE, &(kept.join("\n") + "\n"));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        "events.ndjson line 2",
        "offset 2 where 1 was expected",
    );
    assert_fails_at(&report, "proofs.ndjson line 4", "a proof with no event");
    assert_fails_at(&report, EVENTS_FILE, "records");
}

// Goal: a manifest without its trailer is reported incomplete.
#[test]
fn missing_trailer_fails() {
    let (_tmp, dir) = bundle();
    let mut m = manifest(&dir);
    m.trailer = None;
    write(&dir, MANIFEST_FILE, &encode_manifest(&m));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, MANIFEST_FILE, "no trailer");
    assert_fails_at(
        &report,
        "manifest.sig line 2",
        "does not name manifest.json's sha256",
    );
}

// Goal: a manifest cut short is reported truncated, with its line.
#[test]
fn truncated_manifest_fails() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, MANIFEST_FILE);
    write(&dir, MANIFEST_FILE, &text[..text.len() / 2]);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "manifest.json line", "truncated");
    // A cut just before the closing brace and newline is truncated too.
    write(&dir, MANIFEST_FILE, text.trim_end().trim_end_matches('}'));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "manifest.json line", "truncated");
}

// Goal: two swapped proofs are each reported at their line and position.
#[test]
fn swapped_proofs_fail_at_their_lines() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, PROOFS_FILE);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(0, 1);
    write(&dir, PROOFS_FILE, &(lines.join("\n") + "\n"));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        "proofs.ndjson line 1 (position 1)",
        "for position 3",
    );
    assert_fails_at(
        &report,
        "events.ndjson line 1 (position 1)",
        "the proof is for position 3",
    );
    assert_fails_at(
        &report,
        "proofs.ndjson line 2 (position 3)",
        "for position 1",
    );
    assert_fails_at(&report, PROOFS_FILE, "sha256");
}

// Goal: a certificate signed by one key is not a quorum certificate.
#[test]
fn single_key_certificate_fails() {
    let (_tmp, dir) = bundle();
    let original = Certificate::parse(&read(&dir, CERTIFICATE_FILE)).expect("parse");
    let single = Certificate::sign(original.checkpoint, &[&replicas()[2]]).expect("sign");
    write(&dir, CERTIFICATE_FILE, &single.encode());
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        CERTIFICATE_FILE,
        "1 valid signatures of pinned keys, 2 needed",
    );
    assert_fails_at(&report, CERTIFICATE_FILE, "sha256");
    assert!(report.reached.is_none());
}

// Goal: a manifest signed by a key the policy does not pin is refused, even
// when the manifest is consistent with the files.
#[test]
fn manifest_signed_by_unpinned_key_fails() {
    let (_tmp, dir) = bundle();
    let mut m = manifest(&dir);
    m.principal = "someone-else".into();
    resign(&dir, &m, &outsider());
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        MANIFEST_SIG_FILE,
        "not validly signed by a key the policy pins",
    );
}

// Goal: a file the manifest does not know, and a manifest claiming a file
// the format does not have, are both named — even under a valid signature.
#[test]
fn extra_file_claims_fail() {
    let (_tmp, dir) = bundle();
    write(&dir, "notes.txt", "not part of the bundle\n");
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "notes.txt", "an extra file");
    fs::remove_file(dir.join("notes.txt")).expect("remove");

    let mut m = manifest(&dir);
    m.files.push(FileEntry {
        name: "extra.ndjson".into(),
        sha256: "00".repeat(32),
        bytes: 0,
        records: 0,
    });
    resign(&dir, &m, &replicas()[0]);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        "manifest.json files[3]",
        "claims file \"extra.ndjson\"",
    );
}

// Goal: the manifest must be signed by the replica it names as exporter.
#[test]
fn manifest_signed_by_another_pinned_replica_fails() {
    let (_tmp, dir) = bundle();
    let m = manifest(&dir);
    resign(&dir, &m, &replicas()[1]);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        MANIFEST_SIG_FILE,
        "not by exported_by vellum-replica-0",
    );
}

// Goal: the writer refuses a non-empty directory and an event its proof
// contradicts, writing nothing.
#[test]
fn writer_refuses_bad_targets_and_inputs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = build_log(2, false, &small_body);
    let cert = log.certificate.encode();
    fs::write(tmp.path().join("x"), "x").expect("write");
    let error = write_bundle(tmp.path(), &request(2), &cert, &log.events, &replicas()[0])
        .expect_err("non-empty dir");
    assert!(matches!(error, BundleError::NotEmpty { .. }), "{error}");

    let dir = tmp.path().join("b");
    let mut events = log.events.clone();
    events[1].plaintext = b"changed".to_vec();
    let error = write_bundle(&dir, &request(2), &cert, &events, &replicas()[0])
        .expect_err("contradicted event");
    assert!(error.to_string().contains("commitment"), "{error}");
    let error = write_bundle(&dir, &request(3), &cert, &log.events, &replicas()[0])
        .expect_err("short range");
    assert!(error.to_string().contains("2 events given"), "{error}");
    assert!(!dir.exists(), "nothing may be written for refused input");
}

/// Compares `actual` with the golden file, or rewrites it under VELLUM_BLESS=1.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with VELLUM_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

// Goal: the manifest and its signature are byte-for-byte stable for fixed
// inputs and seeds, so a format change shows in review.
#[test]
fn manifest_matches_golden_file() {
    let (_tmp, dir) = bundle();
    golden("bundle_manifest.json", &read(&dir, MANIFEST_FILE));
    golden("bundle_manifest.sig", &read(&dir, MANIFEST_SIG_FILE));
}

/// Upper bound of a bundle of 1,000 events of 1 KiB, in bytes (measured:
/// see the assertion message; the bound leaves about 25% headroom).
const BUNDLE_BYTES_PER_1000_MAX: u64 = 4_500_000;

// Goal: a bundle of 1,000 events of ~1 KiB stays under a known size, and
// verifies.
#[test]
fn bundle_size_per_thousand_events_is_bounded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("bundle");
    let body = |offset: u64| {
        let mut text = format!("{{\"id\":\"obs-{offset}\",\"text\":\"");
        text.push_str(&"x".repeat(1024 - text.len() - 2));
        text.push_str("\"}");
        text.into_bytes()
    };
    let log = build_log(1000, false, &body);
    let summary = write_bundle(
        &dir,
        &request(1000),
        &log.certificate.encode(),
        &log.events,
        &replicas()[0],
    )
    .expect("write");
    let report = verify_bundle(&dir, &policy());
    assert!(report.passed, "{}", report.to_text());
    let per_event = summary.bytes / 1000;
    assert!(
        summary.bytes <= BUNDLE_BYTES_PER_1000_MAX,
        "1,000 events of 1 KiB make a bundle of {} bytes ({per_event} per event), over {BUNDLE_BYTES_PER_1000_MAX}",
        summary.bytes
    );
    eprintln!("bundle of 1,000 events of 1 KiB: {} bytes", summary.bytes);
}
