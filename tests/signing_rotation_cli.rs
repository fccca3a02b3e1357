//! `vellum keys rotate-signing` on a one-replica data directory, through
//! the binary: refused (nothing changed) while the last op has no
//! certificate, since a replica alone would sign that op again with the new
//! key; after a start certified it, the rotation works, appends go on,
//! `vellum verify` passes with the updated policy and fails with the old,
//! and `--recover-only` and a second rotation behave.

use std::path::Path;

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions};
use vellum::storage::{Storage, StorageConfig};
use vellum_audit::record::RecordKind;

mod support;
use support::{TestDir, vellum_cli};

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

fn options() -> LogOptions {
    LogOptions {
        lock_wait_ms: 10_000,
        ..LogOptions::default()
    }
}

fn append(data: &Path, n: u64) {
    let (log, _) = LocalLog::open(data, options()).expect("open");
    log.append(16, &[Bytes::from(format!("{{\"n\":{n}}}"))], None, None)
        .expect("append");
    log.close().expect("close");
}

/// Cuts the log's final record when it is the last op's certificate, so
/// the last op is durable but uncertified (as a crash before the lazy
/// certificate record reached the disk leaves it).
fn drop_last_certificate(data: &Path) {
    let config = StorageConfig {
        read_only: true,
        ..StorageConfig::default()
    };
    let meta = vellum::datadir::NodeMeta::load(&vellum::datadir::DataDir::new(data)).expect("meta");
    let cluster = meta.cluster_id().expect("cluster id");
    let (storage, recovery) = Storage::open(data, cluster, config).expect("scan");
    storage.close().expect("close");
    let (location, header) = recovery.records.last().expect("records");
    assert_eq!(header.kind, RecordKind::Certificate);
    let file = data
        .join("segments")
        .join(format!("{:020}.vseg", location.segment));
    let handle = std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .expect("segment");
    handle.set_len(location.offset).expect("cut");
}

// Goal: an uncertified tail is refused before anything changes; a
// certified one rotates, and the log verifies only under the pinned history.
#[test]
fn rotate_signing_on_one_replica() {
    let dir = TestDir::new("vellum-signing-cli");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    append(&data, 0);
    append(&data, 1);
    let original_policy = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    let old_key = std::fs::read(data.join("keys/signing.key")).expect("key");
    let unpinned = dir.path().join("policy-old.txt");
    std::fs::write(&unpinned, &original_policy).expect("copy");

    drop_last_certificate(&data);
    let (code, _, err) = vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data)]);
    assert_ne!(code, 0, "an uncertified tail is refused");
    assert!(err.contains("has no certificate"), "{err}");
    assert_eq!(
        std::fs::read(data.join("keys/signing.key")).expect("key"),
        old_key
    );
    assert_eq!(
        std::fs::read_to_string(data.join("policy.txt")).expect("policy"),
        original_policy
    );
    assert!(!data.join("keys/signing-rotation").exists());

    // A start certifies the tail with the old key; then the rotation works.
    let (log, report) = LocalLog::open(&data, options()).expect("open");
    assert!(report.recertified);
    log.close().expect("close");
    let (code, out, err) =
        vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data), "--json"]);
    assert_eq!(code, 0, "rotate: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["from_op"], 3);
    assert_ne!(
        std::fs::read(data.join("keys/signing.key")).expect("key"),
        old_key
    );
    append(&data, 2);

    let (code, out, err) = vellum_cli(&["verify", "--data-dir", s(&data)]);
    assert_eq!(
        code, 0,
        "verify with the replica's pinned policy:\n{out}\n{err}"
    );
    let (code, out, _) = vellum_cli(&["verify", "--data-dir", s(&data), "--policy", s(&unpinned)]);
    assert_ne!(
        code, 0,
        "the old policy refuses the new key's certificates:\n{out}"
    );

    let (code, out, err) = vellum_cli(&[
        "keys",
        "rotate-signing",
        "--data-dir",
        s(&data),
        "--recover-only",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("no signing-key rotation was in progress"),
        "{out}"
    );
    // A second rotation chains from the first.
    let (code, _, err) = vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "second rotation: {err}");
    append(&data, 3);
    let (code, out, err) = vellum_cli(&["verify", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "verify after two rotations:\n{out}\n{err}");
    let policy = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    assert_eq!(policy.matches("\nrotation 0 ").count(), 2, "{policy}");
}
