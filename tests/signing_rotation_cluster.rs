//! Replica signing-key rotation on three real replica processes:
//! `vellum keys rotate-signing` is refused on a running replica; replica 1
//! is stopped and rotated; the printed `rotation` line is pinned on the
//! other replicas and in the auditor's policy; after the restart, with
//! replica 1 a backup and the third replica down, every certificate needs
//! replica 1's new key, so appends commit only if the primary accepts it. Then a proof from before and one
//! from after both check under the updated policy, the proof from after
//! fails under the policy without the rotation, a checkpoint after the
//! rotation signed with the retired key is refused, and
//! `vellum verify --cluster` passes with the updated policy only.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;
use vellum_audit::checkpoint::{Certificate, CertificateError};
use vellum_audit::key_history::KeyRotation;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;

mod support;
use support::{TestDir, vellum_cli};

const WAIT: Duration = Duration::from_secs(60);
const BEFORE: u64 = 6200;
const AFTER: u64 = 6201;

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

fn payloads(stream: u64) -> Vec<Bytes> {
    (0..2)
        .map(|n| Bytes::from(format!("{{\"chart\":{stream},\"n\":{n}}}")))
        .collect()
}

/// Pins `rotation` in the policy file at `path`.
fn pin(path: &Path, rotation: &KeyRotation) {
    let policy = Policy::parse(&std::fs::read_to_string(path).expect("policy")).expect("parses");
    let mut rotations = policy.rotations.clone();
    rotations.push(rotation.clone());
    let pinned = policy
        .with_rotations(rotations)
        .expect("the rotation verifies");
    std::fs::write(path, pinned.encode()).expect("write policy");
}

fn signer(path: &Path) -> Signer {
    let text = std::fs::read_to_string(path).expect("key file");
    Signer::parse_skey(text.trim_end()).expect("signer key")
}

/// `vellum proof check` of the first event of an append's receipt.
fn proof_check(
    dir: &Path,
    receipt: &vellum::api::AppendReceipt,
    proof: &str,
    policy: &Path,
) -> (i32, String) {
    let (proof_file, event_file) = (dir.join("proof.txt"), dir.join("event.json"));
    std::fs::write(&proof_file, proof).expect("proof");
    std::fs::write(&event_file, &payloads(receipt.stream)[0]).expect("event");
    let (code, out, err) = vellum_cli(&[
        "proof",
        "check",
        "--proof",
        s(&proof_file),
        "--event",
        s(&event_file),
        "--salt",
        &receipt.salts[0],
        "--policy",
        s(policy),
    ]);
    (code, format!("{out}{err}"))
}

// Goal: a replica's signing key rotated offline and pinned keeps the
// cluster committing (its peers accept the new key from the rotation's
// op), keeps old proofs valid, and makes the retired key useless.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_on_a_cluster() {
    let dir = TestDir::new("vellum-signing-rotate");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    let before = client
        .append(BEFORE, payloads(BEFORE), None)
        .await
        .expect("append before");

    let data1 = cluster.data_dir(1);
    let (code, _, err) = vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data1)]);
    assert_ne!(code, 0, "refused on a running replica");
    assert!(err.contains("stop the replica first"), "{err}");
    // A thief's copy of the key about to be retired.
    let retired = signer(&data1.join("keys/signing.key"));
    cluster.kill(1).expect("stop replica 1");
    let (code, out, err) =
        vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data1), "--json"]);
    assert_eq!(code, 0, "rotate-signing: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rotation =
        KeyRotation::parse_line(report["rotation"].as_str().expect("line")).expect("a pinned line");
    assert_eq!(rotation.replica, 1);
    assert!(
        rotation.from_op > before.op,
        "{} after {}",
        rotation.from_op,
        before.op
    );
    let current = signer(&data1.join("keys/signing.key"));
    assert_eq!(current.verifier(), rotation.new);
    assert_eq!(current.name(), retired.name());
    let (code, out, err) = vellum_cli(&["keys", "show", "--data-dir", s(&data1), "--json"]);
    assert_eq!(code, 0, "keys show: {err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(shown["vkey"], rotation.new.to_vkey());
    assert_eq!(shown["rotations"], serde_json::json!([rotation.to_line()]));
    let own_policy = std::fs::read_to_string(data1.join("policy.txt")).expect("policy");
    assert!(own_policy.contains(&rotation.to_line()), "{own_policy}");

    // The operator pins the line on the other replicas (read at start) and
    // the auditor in their policy.
    let auditor = cluster.dev.policy_path.clone();
    let unpinned = dir.path().join("policy-without-rotation.txt");
    std::fs::copy(&auditor, &unpinned).expect("keep the old policy");
    for i in [0, 2] {
        cluster.kill(i).expect("stop");
        pin(&cluster.data_dir(i).join("policy.txt"), &rotation);
    }
    pin(&auditor, &rotation);
    for i in 0..3 {
        cluster.start_replica(i).expect("start");
    }
    let mut primary = usize::from(
        cluster
            .wait_primary(WAIT)
            .await
            .expect("primary after restart"),
    );
    if primary == 1 {
        // Replica 1 must be a backup, so its prepare_oks are checked.
        cluster.kill(1).expect("stop replica 1");
        primary = usize::from(
            cluster
                .wait_primary(WAIT)
                .await
                .expect("primary of 0 and 2"),
        );
        cluster.start_replica(1).expect("start replica 1");
    }
    assert_ne!(primary, 1);
    // With the third replica down, a quorum needs replica 1's prepare_ok
    // (signed with the new key) and its signature in the certificate.
    let third = 2 - primary;
    cluster.kill(third).expect("stop the third replica");
    assert_eq!(
        usize::from(cluster.wait_primary(WAIT).await.expect("primary")),
        primary,
        "the primary stays"
    );
    let after = tokio::time::timeout(WAIT, client.append(AFTER, payloads(AFTER), None))
        .await
        .expect("the peers accept the new key in time")
        .expect("append after");
    assert!(after.op >= rotation.from_op);
    let certificate = Certificate::parse(&after.certificate).expect("certificate");
    let policy =
        Policy::parse(&std::fs::read_to_string(&auditor).expect("policy")).expect("policy");
    let verified = certificate
        .verify(&policy)
        .expect("verifies under the pinned history");
    assert!(
        verified.signers.contains(&rotation.new),
        "signed by the new key"
    );

    // Proofs from before and after the rotation.
    let (code, out) = proof_check(dir.path(), &before, &before.proofs[0], &auditor);
    assert_eq!(code, 0, "proof from before, updated policy: {out}");
    let (code, out) = proof_check(dir.path(), &after, &after.proofs[0], &auditor);
    assert_eq!(code, 0, "proof from after, updated policy: {out}");
    let (code, out) = proof_check(dir.path(), &after, &after.proofs[0], &unpinned);
    assert_ne!(code, 0, "proof from after needs the pinned rotation: {out}");

    // The retired key cannot certify history after the rotation.
    let peer = signer(&cluster.data_dir(primary).join("keys/signing.key"));
    let forged =
        Certificate::sign(certificate.checkpoint.clone(), &[&peer, &retired]).expect("sign");
    assert!(matches!(
        forged.verify(&policy),
        Err(CertificateError::QuorumNotMet { valid: 1, .. })
    ));
    let forged_proof = after.proofs[0].replace(&after.certificate, &forged.encode());
    assert_ne!(
        forged_proof, after.proofs[0],
        "the proof carries the certificate"
    );
    let (code, out) = proof_check(dir.path(), &after, &forged_proof, &auditor);
    assert_ne!(code, 0, "a certificate by the retired key: {out}");
    assert!(out.contains("quorum"), "{out}");

    // Export bundles while the third replica is down: every certificate
    // since the restart needed replica 1's new key.
    let cluster_dir = cluster.dev.dir.clone();
    let bundles = dir.path().join("bundles");
    let (auditor_path, unpinned_path) = (auditor.clone(), unpinned.clone());
    let export_dir = cluster_dir.clone();
    tokio::task::spawn_blocking(move || {
        for stream in [BEFORE, AFTER] {
            let bundle = bundles.join(stream.to_string());
            let (code, _, err) = vellum_cli(&[
                "export",
                "events",
                "--cluster",
                s(&export_dir),
                "--stream",
                &stream.to_string(),
                "--to",
                "2",
                "--purpose",
                "signing rotation test",
                "--out",
                s(&bundle),
            ]);
            assert_eq!(code, 0, "export stream {stream}: {err}");
            let (code, out, err) = vellum_cli(&[
                "verify",
                "--bundle",
                s(&bundle),
                "--policy",
                s(&auditor_path),
            ]);
            assert_eq!(
                code, 0,
                "bundle of {stream}, pinned rotation:\n{out}\n{err}"
            );
            if stream == AFTER {
                let (code, out, err) = vellum_cli(&[
                    "verify",
                    "--bundle",
                    s(&bundle),
                    "--policy",
                    s(&unpinned_path),
                ]);
                assert_ne!(
                    code, 0,
                    "bundle of {stream} without the rotation:\n{out}\n{err}"
                );
            }
        }
    })
    .await
    .expect("export task");

    cluster
        .start_replica(third)
        .expect("restart the third replica");
    cluster
        .wait_commit(&[0, 1, 2], after.op, WAIT)
        .await
        .expect("the third replica catches up");
    // Replica 1 announces its rotation in the log at its start; `vellum
    // verify` with the pinned line requires it there (check "key history").
    let logged = data1.join("keys/signing-rotations.logged");
    for poll in 0.. {
        if std::fs::read_to_string(&logged).ok().as_deref() == Some("1\n") {
            break;
        }
        assert!(poll < 600, "the announcement never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = client
        .append(AFTER, payloads(AFTER), None)
        .await
        .expect("an append after the announcement");
    cluster
        .wait_commit(&[0, 1, 2], last.op, WAIT)
        .await
        .expect("every replica holds the announcement");
    cluster.stop().expect("stop the cluster");
    let (code, out, err) =
        vellum_cli(&["verify", "--data-dir", s(&data1), "--policy", s(&auditor)]);
    assert_eq!(
        code, 0,
        "verify --data-dir of the rotated replica:\n{out}\n{err}"
    );
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster_dir),
        "--policy",
        s(&auditor),
    ]);
    assert_eq!(
        code, 0,
        "verify --cluster with the pinned rotation:\n{out}\n{err}"
    );
    let pinned = format!(
        "pinned rotation of replica 1 from op {}: key {}",
        rotation.from_op,
        rotation.new.name()
    );
    assert!(
        out.contains(&pinned),
        "the report names the rotation:\n{out}"
    );
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster_dir),
        "--policy",
        s(&unpinned),
    ]);
    assert_ne!(
        code, 0,
        "verify --cluster without the rotation:\n{out}\n{err}"
    );
}
