//! The signing-key rotation announced in the log (docs/format.md,
//! "Signing-key rotation", "In the log"):
//!
//! - on three real replica processes, replica 1 is stopped, rotated and
//!   restarted; its announcement commits in the access trail (relayed to
//!   the primary, which checks it) with no other replica told; `vellum
//!   verify --cluster` reports the key history (pinned and logged) and
//!   passes; a policy without the rotation sees it listed as not pinned,
//!   with the line to pin; a policy pinning a rotation the log never
//!   announced fails `key_rotation_unlogged`; a proof from before the
//!   rotation still checks;
//! - on one replica in process, a tampered announcement committed in the
//!   trail (what a malicious primary could do) fails
//!   `key_rotation_invalid`, named by its trail position.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;
use vellum::log::LocalLog;
use vellum_audit::key_history::KeyRotation;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::report::FailureKind;
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent};

mod support;
use support::{TestDir, vellum_cli};

const WAIT: Duration = Duration::from_secs(60);
/// Polls of the rotated replica's logged count, at most (100 ms apart).
const POLLS_MAX: u32 = 600;
const BEFORE: u64 = 6300;
const AFTER: u64 = 6301;

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

fn payloads(stream: u64) -> Vec<Bytes> {
    (0..2)
        .map(|n| Bytes::from(format!("{{\"chart\":{stream},\"n\":{n}}}")))
        .collect()
}

fn signer(path: &Path) -> Signer {
    let text = std::fs::read_to_string(path).expect("key file");
    Signer::parse_skey(text.trim_end()).expect("signer key")
}

fn read_policy(path: &Path) -> Policy {
    Policy::parse(&std::fs::read_to_string(path).expect("policy")).expect("parses")
}

/// Writes `base` with `rotations` pinned to `path`.
fn write_pinned(path: &Path, base: &Policy, rotations: Vec<KeyRotation>) {
    let pinned = base
        .clone()
        .with_rotations(rotations)
        .expect("the rotations verify");
    std::fs::write(path, pinned.encode()).expect("write policy");
}

/// `vellum verify --cluster --json`: (exit code, report).
fn verify_cluster(cluster: &Path, policy: &Path) -> (i32, serde_json::Value, String) {
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(cluster),
        "--policy",
        s(policy),
        "--json",
    ]);
    let report = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (code, report, format!("{out}\n{err}"))
}

/// The failures of kind `kind` in the check whose name ends in `check`.
fn failures_of(report: &serde_json::Value, check: &str, kind: &str) -> Vec<serde_json::Value> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.ends_with(check)))
        .flat_map(|c| c["failures"].as_array().cloned().unwrap_or_default())
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// The `key_history` entries of replica `replica` from op `from_op`.
fn history_entry(report: &serde_json::Value, replica: u64, from_op: u64) -> serde_json::Value {
    report["key_history"]
        .as_array()
        .unwrap_or_else(|| panic!("a key_history section: {report}"))
        .iter()
        .find(|k| k["replica"] == replica && k["from_op"] == from_op)
        .cloned()
        .unwrap_or_else(|| panic!("replica {replica} from op {from_op} in {report}"))
}

// Goal: a rotation made offline reaches the log at the replica's next
// start without any other replica being told, and an auditor reads the key
// history from the log: pinned and logged passes; logged but not pinned is
// listed with its line (and does not count); pinned but never logged fails
// by name; a proof from before the rotation still checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_announced_in_the_log_and_verify_reads_the_history() {
    let dir = TestDir::new("vellum-signing-rotation-log");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    let before = client
        .append(BEFORE, payloads(BEFORE), None)
        .await
        .expect("append before");

    let data1 = cluster.data_dir(1);
    cluster.kill(1).expect("stop replica 1");
    let (code, out, err) =
        vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data1), "--json"]);
    assert_eq!(code, 0, "rotate-signing: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rotation =
        KeyRotation::parse_line(report["rotation"].as_str().expect("line")).expect("a pinned line");
    let logged_file = data1.join("keys/signing-rotations.logged");
    assert!(!logged_file.exists(), "nothing logged before the start");
    cluster.start_replica(1).expect("start replica 1");
    // The announcement commits (at the primary, or relayed by replica 1 as
    // a backup): its pending count moves only once the commit is confirmed.
    let mut polls = 0;
    while std::fs::read_to_string(&logged_file).ok().as_deref() != Some("1\n") {
        polls += 1;
        assert!(polls < POLLS_MAX, "the announcement never committed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = client
        .append(AFTER, payloads(AFTER), None)
        .await
        .expect("append after");
    assert!(after.op > rotation.from_op);
    cluster
        .wait_commit(&[0, 1, 2], after.op, WAIT)
        .await
        .expect("every replica holds the announcement");
    cluster.stop().expect("stop the cluster");

    let cluster_dir = cluster.dev.dir.clone();
    let original = cluster.dev.policy_path.clone();
    let base = read_policy(&original);
    let pinned = dir.path().join("policy-pinned.txt");
    write_pinned(&pinned, &base, vec![rotation.clone()]);

    // Pinned and logged: passes, the history says where the log announces it.
    let (code, report, text) = verify_cluster(&cluster_dir, &pinned);
    assert_eq!(code, 0, "verify --cluster, pinned: {text}");
    let entry = history_entry(&report, 1, rotation.from_op);
    assert_eq!(entry["pinned"], true, "{entry}");
    assert!(entry["logged_at"].is_u64(), "announced in the log: {entry}");
    assert_eq!(entry["line"], rotation.to_line());
    assert_eq!(history_entry(&report, 1, 0)["pinned"], true);
    let check = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "key history")
        .cloned()
        .expect("a key history check");
    assert_eq!(check["counts"]["rotations announced"], 1, "{check}");
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster_dir),
        "--policy",
        s(&pinned),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "key history: replica 1 from op {} key {}",
            rotation.from_op,
            rotation.new.name()
        )) && out.contains("pinned, logged at position"),
        "the text report lists the history:\n{out}"
    );

    // Logged, not pinned: listed with the line to pin; it does not count.
    let (_, report, text) = verify_cluster(&cluster_dir, &original);
    let entry = history_entry(&report, 1, rotation.from_op);
    assert_eq!(entry["pinned"], false, "{text}");
    assert!(entry["logged_at"].is_u64(), "{entry}");
    assert!(
        failures_of(&report, "key history", "key_rotation_invalid").is_empty(),
        "{text}"
    );
    assert!(
        failures_of(&report, "key history", "key_rotation_unlogged").is_empty(),
        "{text}"
    );
    let (_, out, _) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster_dir),
        "--policy",
        s(&original),
    ]);
    assert!(
        out.contains(&format!("to trust it, pin: {}", rotation.to_line())),
        "{out}"
    );

    // Pinned, never announced: a rotation of replica 2 (signed with its
    // real key) from op 2, which every later certificate would need.
    let key2 = signer(&cluster.data_dir(2).join("keys/signing.key"));
    let fresh = Signer::from_seed(key2.name(), [42; 32]).expect("name");
    let unannounced = KeyRotation::sign(&base.origin, 2, 2, &key2, &fresh);
    let overpinned = dir.path().join("policy-overpinned.txt");
    write_pinned(
        &overpinned,
        &base,
        vec![rotation.clone(), unannounced.clone()],
    );
    let (code, report, text) = verify_cluster(&cluster_dir, &overpinned);
    assert_ne!(code, 0, "{text}");
    let unlogged = failures_of(&report, "key history", "key_rotation_unlogged");
    assert_eq!(unlogged.len(), 1, "{text}");
    assert_eq!(
        unlogged[0]["location"], "policy rotation of replica 2 from op 2",
        "{text}"
    );
    assert_eq!(
        history_entry(&report, 2, 2)["logged_at"],
        serde_json::Value::Null
    );

    // A proof from before the rotation checks under the pinned history.
    let (proof_file, event_file) = (dir.path().join("proof.txt"), dir.path().join("event.json"));
    std::fs::write(&proof_file, &before.proofs[0]).expect("proof");
    std::fs::write(&event_file, &payloads(BEFORE)[0]).expect("event");
    let (code, out, err) = vellum_cli(&[
        "proof",
        "check",
        "--proof",
        s(&proof_file),
        "--event",
        s(&event_file),
        "--salt",
        &before.salts[0],
        "--policy",
        s(&pinned),
    ]);
    assert_eq!(code, 0, "proof from before: {out}{err}");
}

fn rotated_event(principal: &str, line: String) -> Bytes {
    let event = AccessEvent {
        v: ACCESS_EVENT_VERSION,
        time_ns: 1,
        principal: principal.to_string(),
        role: "system".to_string(),
        action: AccessAction::SigningKeyRotated,
        stream: None,
        from: None,
        to: None,
        purpose: None,
        outcome: "success".to_string(),
        remote: None,
        detail: Some(line),
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    };
    Bytes::from(event.to_payload())
}

/// The global position of the `n`th event appended to the trail since `first`.
fn key_history_failures(report: &vellum_audit::report::Report) -> Vec<(FailureKind, String)> {
    report
        .checks
        .iter()
        .filter(|c| c.name == "key history")
        .flat_map(|c| c.failures.iter())
        .map(|f| (f.kind, f.location.clone()))
        .collect()
}

// Goal: an announcement in the committed trail that does not verify (its
// op changed after signing, or announced under another replica's name) is
// refused by `vellum verify` with `key_rotation_invalid` at its trail
// position, while a valid one beside it is listed (not pinned) and, once
// pinned, passes.
#[test]
fn a_tampered_announcement_in_the_log_is_named() {
    let dir = TestDir::new("vellum-signing-rotation-tamper");
    let data = dir.path().join("data");
    let (code, _, err) = vellum_cli(&["init", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "init: {err}");
    let policy = read_policy(&data.join("policy.txt"));
    let old = signer(&data.join("keys/signing.key"));
    let new = Signer::from_seed(old.name(), [9; 32]).expect("name");
    // Far ahead: no certificate of this log needs the new key.
    let valid = KeyRotation::sign(&policy.origin, 0, 1_000_000, &old, &new);
    let mut moved = valid.clone();
    moved.from_op = 1_000_001;
    let (log, _) = LocalLog::open(&data, support::wait_for_lock()).expect("open");
    log.append(7000, &[Bytes::from_static(b"{\"n\":1}")], None, None)
        .expect("append");
    let good = log
        .append_trail(&[rotated_event(old.name(), valid.to_line())])
        .expect("valid announcement");
    let bad = log
        .append_trail(&[
            rotated_event(old.name(), moved.to_line()),
            rotated_event("vellum-someone-else", valid.to_line()),
        ])
        .expect("tampered announcements");
    drop(log);
    let (good_at, bad_at) = (good.first_position, bad.first_position);

    let report = vellum::verify::verify_data_dir(&data, &policy, None, &mut |_| {});
    assert_eq!(
        key_history_failures(&report),
        vec![
            (
                FailureKind::KeyRotationInvalid,
                format!("access trail position {bad_at}")
            ),
            (
                FailureKind::KeyRotationInvalid,
                format!("access trail position {}", bad_at + 1)
            ),
        ],
        "{}",
        report.to_text()
    );
    assert!(!report.passed);
    let listed = report
        .key_history
        .iter()
        .find(|k| k.from_op == 1_000_000)
        .expect("the valid one is listed");
    assert_eq!((listed.pinned, listed.logged_at), (false, Some(good_at)));

    let pinned = policy
        .clone()
        .with_rotations(vec![valid.clone()])
        .expect("pins");
    let report = vellum::verify::verify_data_dir(&data, &pinned, None, &mut |_| {});
    let listed = report
        .key_history
        .iter()
        .find(|k| k.from_op == 1_000_000)
        .expect("listed");
    assert_eq!((listed.pinned, listed.logged_at), (true, Some(good_at)));
    assert_eq!(key_history_failures(&report).len(), 2, "still named");
    // The other checks are untouched by the announcements.
    let others_pass = report
        .checks
        .iter()
        .filter(|c| c.name != "key history")
        .all(|c| c.failures.is_empty());
    assert!(others_pass, "{}", report.to_text());
}
