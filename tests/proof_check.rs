//! `vellum proof check` through the binary (defect 6 of issue 9): a
//! receipt's proof, the event's bytes and its salt check offline against the
//! trust policy, and each way the three can disagree fails naming the part
//! (inclusion, quorum, commitment, witnesses) and, for the quorum and the
//! witnesses, the keys. Ends with
//! a live cluster: append through the API, check the receipt's proof and
//! salt, and the salt a read returns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use vellum::log::{LocalLog, LogOptions, receipt};
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vellum"))
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Exit code, stdout and stderr of a `vellum` run.
fn vellum(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe()).args(args).output().expect("run vellum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One event as a writer holds it after its append.
#[derive(Clone)]
struct Held {
    event: Vec<u8>,
    proof: String,
    salt: String,
}

/// A one-replica data directory with two appends of two events; returns
/// the directory's policy path and the four events with their receipts'
/// proofs and salts.
fn appended(dir: &Path) -> (PathBuf, Vec<Held>) {
    let data = dir.join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let options = LogOptions {
        lock_wait_ms: 10_000,
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&data, options).expect("open");
    let mut held = Vec::new();
    for batch in 0..2 {
        let events: Vec<Bytes> = (0..2)
            .map(|i| {
                Bytes::from(format!(
                    "{{\"resourceType\":\"Note\",\"b\":{batch},\"i\":{i}}}"
                ))
            })
            .collect();
        let appended = log.append(16, &events, None, None).expect("append");
        let receipt = receipt(&log, &appended).expect("receipt");
        assert_eq!(receipt.salts.len(), events.len(), "one salt per event");
        for ((event, proof), salt) in events.iter().zip(receipt.proofs).zip(receipt.salts) {
            held.push(Held {
                event: event.to_vec(),
                proof,
                salt,
            });
        }
    }
    log.close().expect("close");
    (data.join("policy.txt"), held)
}

/// Runs `vellum proof check` on `held` (written to files in `dir`).
fn check(dir: &Path, held: &Held, policy: &Path, json: bool) -> (i32, String, String) {
    let proof = dir.join("proof.txt");
    let event = dir.join("event.bin");
    std::fs::write(&proof, &held.proof).expect("write proof");
    std::fs::write(&event, &held.event).expect("write event");
    let (proof, event, policy) = (s(&proof), s(&event), s(policy));
    let mut args = vec![
        "proof", "check", "--proof", &proof, "--event", &event, "--salt", &held.salt, "--policy",
        &policy,
    ];
    if json {
        args.push("--json");
    }
    vellum(&args)
}

/// The failing parts of a `--json` result.
fn failed_parts(stdout: &str) -> Vec<String> {
    let value: serde_json::Value = serde_json::from_str(stdout).expect("json result");
    value["failed"]
        .as_array()
        .expect("failed list")
        .iter()
        .map(|p| p.as_str().expect("part name").to_string())
        .collect()
}

// Goal: a good receipt's proof, event bytes and salt pass every part, in
// text and JSON, with exit code 0.
#[test]
fn a_good_receipt_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (policy, held) = appended(dir.path());
    for one in &held {
        let (code, out, err) = check(dir.path(), one, &policy, false);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.ends_with("proof check PASSED\n"), "{out}");
        assert!(!out.contains("FAIL"), "{out}");
    }
    let (code, out, err) = check(dir.path(), &held[3], &policy, true);
    assert_eq!(code, 0, "{err}");
    let value: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(value["passed"], true);
    assert_eq!(value["commitment"]["passed"], true);
}

// Goal: one changed event byte and a wrong salt each fail the commitment
// only (the proof itself is sound), exit 1, and the message says so.
#[test]
fn a_changed_event_byte_or_a_wrong_salt_fails_the_commitment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (policy, held) = appended(dir.path());
    let mut changed = held[1].clone();
    changed.event[5] ^= 0x01;
    let mut wrong_salt = held[1].clone();
    wrong_salt.salt = held[2].salt.clone();
    for bad in [&changed, &wrong_salt] {
        let (code, out, _) = check(dir.path(), bad, &policy, false);
        assert_eq!(code, 1, "{out}");
        assert!(out.ends_with("proof check FAILED: commitment\n"), "{out}");
        assert!(out.contains("FAIL commitment"), "{out}");
        let (code, json, _) = check(dir.path(), bad, &policy, true);
        assert_eq!(
            (code, failed_parts(&json)),
            (1, vec!["commitment".to_string()])
        );
    }
    let mut short = held[1].clone();
    short.salt = BASE64.encode([7u8; 31]);
    let (code, _, err) = check(dir.path(), &short, &policy, false);
    assert_ne!(code, 0);
    assert!(
        err.contains("--salt is not the standard base64 of 32 bytes"),
        "{err}"
    );
}

// Goal: a proof for another leaf does not vouch for this event: with the
// other leaf's whole proof the commitment fails; with this proof's path but
// the other leaf's preimage the inclusion fails too.
#[test]
fn a_proof_for_another_leaf_fails() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (policy, held) = appended(dir.path());
    let other = Held {
        proof: held[2].proof.clone(),
        ..held[0].clone()
    };
    let (code, json, _) = check(dir.path(), &other, &policy, true);
    assert_eq!(
        (code, failed_parts(&json)),
        (1, vec!["commitment".to_string()])
    );

    let mut spliced = InclusionProof::parse(&held[0].proof).expect("proof");
    let donor = InclusionProof::parse(&held[3].proof).expect("proof");
    spliced.extra = donor.extra.clone();
    let spliced = Held {
        proof: spliced.encode(),
        ..held[0].clone()
    };
    let (code, out, _) = check(dir.path(), &spliced, &policy, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL inclusion"), "{out}");
    assert!(
        out.contains("proof check FAILED: inclusion, commitment"),
        "{out}"
    );
}

// Goal: a certificate signed by fewer distinct pinned keys than the quorum
// fails the quorum part, naming the keys that signed and those that did
// not; a certificate re-signed by an unpinned key names no valid signer.
#[test]
fn a_certificate_signed_by_too_few_pinned_keys_fails_naming_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (policy_path, held) = appended(dir.path());
    let policy = Policy::parse(&std::fs::read_to_string(&policy_path).expect("policy"))
        .expect("policy parses");
    let second = Signer::from_seed("replica-9", [9; 32]).expect("signer");
    let mut verifiers = policy.verifiers.clone();
    verifiers.push(second.verifier());
    let stricter = Policy::new(&policy.origin, verifiers, 2).expect("policy of 2 of 2");
    let stricter_path = dir.path().join("stricter.txt");
    std::fs::write(&stricter_path, stricter.encode()).expect("write policy");
    let (code, out, _) = check(dir.path(), &held[0], &stricter_path, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.ends_with("proof check FAILED: quorum\n"), "{out}");
    let missing = format!(
        "not signed by: replica-9+{}",
        vellum_audit::hash::to_hex(&second.key_id())
    );
    assert!(
        out.contains("1 valid signatures of distinct pinned keys, 2 needed"),
        "{out}"
    );
    assert!(out.contains(&missing), "{out}");

    let mut forged = InclusionProof::parse(&held[0].proof).expect("proof");
    let stranger = Signer::from_seed("stranger", [5; 32]).expect("signer");
    forged.checkpoint =
        vellum_audit::checkpoint::Certificate::sign(forged.checkpoint.checkpoint, &[&stranger])
            .expect("sign");
    let forged = Held {
        proof: forged.encode(),
        ..held[0].clone()
    };
    let (code, json, _) = check(dir.path(), &forged, &policy_path, true);
    assert_eq!((code, failed_parts(&json)), (1, vec!["quorum".to_string()]));
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    let message = value["quorum"]["message"].as_str().expect("message");
    assert!(message.starts_with("0 valid signatures"), "{message}");
    assert!(
        message.contains("signatures of unpinned keys ignored: 1"),
        "{message}"
    );
}

// Goal: under a policy requiring an outside witness (`cosigner-quorum 1`),
// a proof whose certificate carries the witness's cosignature passes; the
// same proof with the cosignature removed, with one bit of it flipped, or
// with a cosignature of another checkpoint fails the `witnesses` part alone
// (exit 1), naming the witness; a replica-only policy still passes it.
#[test]
fn a_forged_or_removed_cosignature_fails_the_witnesses_part() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (policy_path, held) = appended(dir.path());
    let policy = Policy::parse(&std::fs::read_to_string(&policy_path).expect("policy"))
        .expect("policy parses");
    let witness =
        vellum_audit::cosignature::Cosigner::from_seed("witness.test/w1", [4; 32]).expect("name");
    let witnessed = policy
        .with_cosigners(vec![witness.key()], 1)
        .expect("policy");
    let witnessed_path = dir.path().join("witnessed.txt");
    std::fs::write(&witnessed_path, witnessed.encode()).expect("write policy");
    let key_name = format!(
        "witness.test/w1+{}",
        vellum_audit::hash::to_hex(&witness.key().key_id())
    );
    let with_proof = |proof: &InclusionProof| Held {
        proof: proof.encode(),
        ..held[1].clone()
    };

    let bare = InclusionProof::parse(&held[1].proof).expect("proof");
    let mut cosigned = bare.clone();
    let line = witness
        .cosign(&cosigned.checkpoint.note.text, 1_700_000_000)
        .expect("cosigns");
    cosigned.checkpoint.note.signatures.push(line.clone());
    let (code, out, err) = check(dir.path(), &with_proof(&cosigned), &witnessed_path, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "ok   witnesses  1 of 1 needed pinned witnesses cosigned: {key_name}"
        )),
        "{out}"
    );

    let mut flipped = cosigned.clone();
    let last = flipped.checkpoint.note.signatures.last_mut().expect("line");
    last.signature[40] ^= 0x01;
    // held[3]'s certificate is the second append's (size 4, not 2).
    let other = InclusionProof::parse(&held[3].proof).expect("proof");
    let mut elsewhere = bare.clone();
    elsewhere.checkpoint.note.signatures.push(
        witness
            .cosign(&other.checkpoint.note.text, 1_700_000_000)
            .expect("cosigns"),
    );
    for (what, proof, named) in [
        ("removed", &bare, format!("not cosigned by: {key_name}")),
        ("flipped", &flipped, format!("bad cosignature: {key_name}")),
        (
            "another checkpoint",
            &elsewhere,
            format!("bad cosignature: {key_name}"),
        ),
    ] {
        let (code, json, _) = check(dir.path(), &with_proof(proof), &witnessed_path, true);
        assert_eq!(
            (code, failed_parts(&json)),
            (1, vec!["witnesses".to_string()]),
            "{what}: {json}"
        );
        let value: serde_json::Value = serde_json::from_str(&json).expect("json");
        let message = value["witnesses"]["message"].as_str().expect("message");
        assert!(message.contains(&named), "{what}: {message}");
        let (code, out, _) = check(dir.path(), &with_proof(proof), &witnessed_path, false);
        assert_eq!(code, 1, "{what}: {out}");
        assert!(out.contains("FAIL witnesses"), "{what}: {out}");
        assert!(
            out.ends_with("proof check FAILED: witnesses\n"),
            "{what}: {out}"
        );
    }
    // The replica-only policy ignores cosignature lines of unpinned keys.
    let (code, out, _) = check(dir.path(), &with_proof(&flipped), &policy_path, false);
    assert_eq!(code, 0, "{out}");
}

// Goal: end to end on a live three-replica cluster: the receipt of an
// append through the API carries one salt per event, `vellum proof check`
// accepts its proof with the cluster's policy, and stream reads, global
// reads and subscriptions return the same salt.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receipt_from_a_live_cluster_checks_offline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cluster =
        vellum::local_cluster::LocalCluster::start(&dir.path().join("cluster"), 3, exe())
            .expect("cluster starts");
    cluster
        .wait_primary(Duration::from_secs(60))
        .await
        .expect("primary");
    let client = cluster.client(None).expect("client");
    let events = vec![
        Bytes::from_static(b"{\"resourceType\":\"Observation\",\"value\":1}"),
        Bytes::from_static(b"{\"resourceType\":\"Observation\",\"value\":2}"),
    ];
    let receipt = client
        .append(9000, events.clone(), None)
        .await
        .expect("append");
    assert_eq!(receipt.salts.len(), 2, "one salt per event");
    let read = client.read_stream(9000, 0, 10).await.expect("read");
    let read_salts: Vec<&str> = read.events.iter().map(|e| e.salt.as_str()).collect();
    assert_eq!(read_salts, [&receipt.salts[0], &receipt.salts[1]]);
    let log = client
        .read_log(receipt.first_position, 2)
        .await
        .expect("read log");
    assert_eq!(log.events[1].salt, receipt.salts[1]);
    let mut subscription = Box::pin(client.subscribe(receipt.first_position));
    let first = tokio::time::timeout(Duration::from_secs(30), subscription.next())
        .await
        .expect("a subscription event in time")
        .expect("the stream goes on")
        .expect("an event");
    assert_eq!(first.salt, receipt.salts[0], "subscriptions carry the salt");
    drop(subscription);
    let policy = cluster.dev.policy_path.clone();
    let work = dir.path().to_path_buf();
    let held: Vec<Held> = events
        .iter()
        .zip(&receipt.proofs)
        .zip(&receipt.salts)
        .map(|((event, proof), salt)| Held {
            event: event.to_vec(),
            proof: proof.clone(),
            salt: salt.clone(),
        })
        .collect();
    let outcome = tokio::task::spawn_blocking(move || {
        let good = check(&work, &held[1], &policy, false);
        let swapped = Held {
            salt: held[0].salt.clone(),
            ..held[1].clone()
        };
        (good, check(&work, &swapped, &policy, false))
    })
    .await
    .expect("checks");
    cluster.stop().expect("stop");
    let ((code, out, err), (bad_code, bad_out, _)) = outcome;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("of 2 needed distinct pinned keys signed"),
        "{out}"
    );
    assert_eq!(bad_code, 1, "{bad_out}");
    assert!(bad_out.contains("FAILED: commitment"), "{bad_out}");
}
