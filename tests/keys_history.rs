//! `vellum keys history`: a replica's signing-key history after a
//! rotation, read from its data directory (the rotation line and the
//! `signing_key_rotated` trail event that announced it) or from a policy
//! file alone; and the odd inputs it must name instead of printing a
//! history: missing files, a tampered `rotation` line, an announcement
//! that does not verify, a pinned rotation the log never announced.

use std::path::Path;

use bytes::Bytes;
use vellum::log::LocalLog;
use vellum_audit::key_history::KeyRotation;
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent};

mod support;
use support::{TestDir, vellum_cli};

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

/// A `signing_key_rotated` trail event by `principal` carrying `line`.
fn rotated_event(principal: &str, line: &str) -> Bytes {
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
        detail: Some(line.to_string()),
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    };
    Bytes::from(event.to_payload())
}

/// A fresh data directory whose replica rotated its signing key (from op
/// 1); the rotation. The log announces it when it is next opened.
fn rotated_replica(dir: &TestDir) -> (std::path::PathBuf, KeyRotation) {
    let data = dir.path().join("data");
    let (code, _, err) = vellum_cli(&["init", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "init: {err}");
    let (code, out, err) =
        vellum_cli(&["keys", "rotate-signing", "--data-dir", s(&data), "--json"]);
    assert_eq!(code, 0, "rotate-signing: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let rotation =
        KeyRotation::parse_line(report["rotation"].as_str().expect("line")).expect("a pinned line");
    (data, rotation)
}

/// Appends one event (an op the new key certifies) and, if given, trail
/// events announcing `lines` (principal, line); the first announcement's
/// trail position.
fn append(data: &Path, announcements: &[(&str, &str)]) -> Option<u64> {
    let (log, _) = LocalLog::open(data, support::wait_for_lock()).expect("open");
    log.append(7000, &[Bytes::from_static(b"{\"n\":1}")], None, None)
        .expect("append");
    let events: Vec<Bytes> = announcements
        .iter()
        .map(|(principal, line)| rotated_event(principal, line))
        .collect();
    (!events.is_empty()).then(|| {
        log.append_trail(&events)
            .expect("announcements")
            .first_position
    })
}

/// `vellum keys history ARGS --json`: (exit code, listing, stderr).
fn history_json(args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut all = vec!["keys", "history"];
    all.extend_from_slice(args);
    all.push("--json");
    let (code, out, err) = vellum_cli(&all);
    let listing = serde_json::from_str(&out).unwrap_or(serde_json::Value::Null);
    (code, listing, err)
}

fn signer(data: &Path) -> vellum_audit::note::Signer {
    let text = std::fs::read_to_string(data.join("keys/signing.key")).expect("key");
    vellum_audit::note::Signer::parse_skey(text.trim_end()).expect("signer")
}

fn key_name(data: &Path) -> String {
    signer(data).name().to_string()
}

// Goal: after a rotation announced in the log, the history lists the key
// pinned first (from op 0) and the new key from the rotation's op with its
// line, its vkey and the trail position of its announcement, in JSON and
// in text; from the policy file alone it lists the same keys, unannounced.
#[test]
fn a_rotation_is_listed_with_its_line_and_its_announcement() {
    let dir = TestDir::new("vellum-keys-history");
    let (data, rotation) = rotated_replica(&dir);
    let name = key_name(&data);
    let line = rotation.to_line();
    // Opening the log announces the rotation in the trail, as a replica's
    // start does; one op after it is certified by the new key.
    append(&data, &[]);

    let (code, listing, err) = history_json(&["--data-dir", s(&data)]);
    assert_eq!(code, 0, "{listing}\n{err}");
    assert_eq!(listing["log"]["state"], "verified", "{listing}");
    let keys = listing["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{listing}");
    assert_eq!(
        (keys[0]["replica"].as_u64(), keys[0]["from_op"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(keys[1]["from_op"], rotation.from_op, "{listing}");
    assert_eq!(keys[1]["pinned"], true);
    let announced_at = keys[1]["logged_at"]
        .as_u64()
        .expect("announced in the trail");
    assert_eq!(keys[1]["line"], line);
    assert_eq!(keys[1]["vkey"], rotation.new.to_vkey());
    assert_ne!(keys[0]["vkey"], keys[1]["vkey"], "two different keys");

    let (code, out, err) = vellum_cli(&["keys", "history", "--data-dir", s(&data)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "replica 0 from op {}: key {name} (id {}) pinned, announced at trail position {announced_at}",
            rotation.from_op,
            vellum_audit::hash::to_hex(&rotation.new.key_id())
        )) && out.contains(&line),
        "{out}"
    );

    let (code, listing, err) = history_json(&["--policy", s(&data.join("policy.txt"))]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(listing["log"]["state"], "not_given");
    let keys = listing["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{listing}");
    assert_eq!(keys[1]["line"], line);
    assert!(keys[1].get("logged_at").is_none(), "{listing}");
}

// Goal: odd inputs are named, with a nonzero exit, never printed as a
// history: a missing data directory or policy file; a tampered `rotation`
// line in the policy; a pinned rotation the log never announced
// (`key_rotation_unlogged`); an announcement that does not verify
// (`key_rotation_invalid`). A policy with no rotation lists one key per
// replica from op 0 and exits 0.
#[test]
fn odd_input_is_named_with_a_nonzero_exit() {
    let dir = TestDir::new("vellum-keys-history-odd");
    let missing = dir.path().join("nope");
    let (code, _, err) = history_json(&["--data-dir", s(&missing)]);
    assert_ne!(code, 0);
    assert!(
        err.contains(s(&missing)) && err.contains("does not exist"),
        "{err}"
    );
    let (code, _, err) = history_json(&["--policy", s(&missing.join("policy.txt"))]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot read the trust policy"), "{err}");

    let plain = dir.path().join("plain");
    let (code, _, err) = vellum_cli(&["init", "--data-dir", s(&plain)]);
    assert_eq!(code, 0, "init: {err}");
    let (code, listing, err) = history_json(&["--data-dir", s(&plain)]);
    assert_eq!(code, 0, "{err}");
    let keys = listing["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 1, "{listing}");
    assert_eq!(keys[0]["from_op"], 0);
    assert!(keys[0].get("line").is_none());

    let (data, rotation) = rotated_replica(&dir);
    let policy_path = data.join("policy.txt");
    let policy = std::fs::read_to_string(&policy_path).expect("policy");
    let line = rotation.to_line();
    // One signature byte changed (the last base64 character before the end).
    let mut tampered_line = line.clone();
    let last = tampered_line.pop().expect("a character");
    tampered_line.push(if last == 'A' { 'B' } else { 'A' });
    let tampered = dir.path().join("tampered-policy.txt");
    std::fs::write(&tampered, policy.replace(&line, &tampered_line)).expect("write");
    let (code, _, err) = history_json(&["--policy", s(&tampered)]);
    assert_ne!(code, 0);
    assert!(
        err.contains(s(&tampered)) && err.contains("rotation"),
        "names the file and the rotation: {err}"
    );

    // Pinned, never announced, while the log holds an op from which it
    // would sign: a rotation of the plain replica's key nobody announced.
    append(&plain, &[]);
    let plain_policy = vellum_audit::policy::Policy::parse(
        &std::fs::read_to_string(plain.join("policy.txt")).expect("policy"),
    )
    .expect("parses");
    let key = signer(&plain);
    let fresh = vellum_audit::note::Signer::from_seed(key.name(), [42; 32]).expect("name");
    let unannounced = KeyRotation::sign(&plain_policy.origin, 0, 1, &key, &fresh);
    let overpinned = dir.path().join("overpinned-policy.txt");
    let pinned = plain_policy
        .with_rotations(vec![unannounced])
        .expect("the rotation verifies");
    std::fs::write(&overpinned, pinned.encode()).expect("write");
    let (code, listing, _) = history_json(&["--data-dir", s(&plain), "--policy", s(&overpinned)]);
    assert_ne!(code, 0, "{listing}");
    let unlogged = listing["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "key_rotation_unlogged")
        .count();
    assert_eq!(unlogged, 1, "{listing}");

    // An announcement whose op was changed after signing.
    let mut moved = rotation.clone();
    moved.from_op += 1;
    let name = key_name(&data);
    let bad_at = append(&data, &[(name.as_str(), moved.to_line().as_str())]).expect("appended");
    let (code, listing, _) = history_json(&["--data-dir", s(&data)]);
    assert_ne!(code, 0, "{listing}");
    let invalid: Vec<&serde_json::Value> = listing["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "key_rotation_invalid")
        .collect();
    assert_eq!(invalid.len(), 1, "{listing}");
    assert_eq!(
        invalid[0]["location"],
        format!("access trail position {bad_at}")
    );
}
