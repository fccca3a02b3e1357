//! The verifier page (`verifier/vellum-verify.html`) in headless Chromium,
//! driven through chromedriver's W3C WebDriver HTTP API on loopback: for a
//! good bundle and for every case of the bundle tamper suite (and a few
//! more), the test picks the bundle's files and the policy file the way a
//! user does ("send keys" of the file paths to the page's `<input
//! type=file>`s), clicks Verify, reads the page's report and asserts it
//! agrees with the Rust verifier (`verify_bundle`, what `vellum verify
//! --bundle` runs): the same verdict, the same checks with the same outcomes
//! and counts, and the same failure places in the same order. Also for
//! bundles from before and after a pinned signing-key rotation (under the
//! policy with and without it), and for tampered `rotation` lines (refused
//! at the same line).
//!
//! Needs `chromium` and `chromedriver` (Debian: `chromium`,
//! `chromium-driver`; or set VELLUM_CHROMIUM / VELLUM_CHROMEDRIVER); without
//! them the test says SKIP and passes.

use std::path::Path;
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use vellum_audit::checkpoint::Certificate;
use vellum_audit::cosignature::Cosigner;
use vellum_audit::key_history::KeyRotation;
use vellum_audit::note::{Signer, Verifier};
use vellum_audit::policy::Policy;
use vellum_audit::report::{Outcome, Report};
use vellum_compliance::bundle::{
    CERTIFICATE_FILE, EVENTS_FILE, MANIFEST_FILE, PROOFS_FILE, verify_bundle, write_bundle,
};

mod browser;
mod support;
use browser::{Browser, find_program, listing};

/// What both verifiers must agree on, from the Rust report.
fn rust_summary(report: &Report) -> Value {
    let checks: Vec<Value> = report
        .checks
        .iter()
        .map(|check| {
            let outcome = match check.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::NotRun => "not_run",
            };
            let places: Vec<&str> = check.failures.iter().map(|f| f.location.as_str()).collect();
            json!({"name": check.name, "outcome": outcome, "counts": check.counts,
                   "places": places})
        })
        .collect();
    let reached = report
        .reached
        .as_ref()
        .map(|r| json!({"tree_size": r.tree_size, "root": r.root, "signed_by": r.signed_by}));
    json!({"passed": report.passed, "checks": checks, "reached": reached})
}

/// The same summary from the page's report.
fn page_summary(report: &Value) -> Value {
    assert!(
        report.get("error").is_none(),
        "the page refused: {}",
        report["error"]
    );
    let checks: Vec<Value> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .map(|check| {
            let places: Vec<Value> = check["failures"]
                .as_array()
                .expect("failures")
                .iter()
                .map(|f| f["location"].clone())
                .collect();
            json!({"name": check["name"], "outcome": check["outcome"],
                   "counts": check["counts"], "places": places})
        })
        .collect();
    let reached = match &report["reached"] {
        Value::Null => Value::Null,
        r => json!({"tree_size": r["tree_size"], "root": r["root"], "signed_by": r["signed_by"]}),
    };
    json!({"passed": report["passed"], "checks": checks, "reached": reached})
}

/// A named way to change a bundle.
type NamedCase = (&'static str, fn(&Path));

/// More ways to break a bundle than the tamper suite has, each one place
/// where the two implementations could read the format differently.
fn more_cases() -> Vec<NamedCase> {
    use support::{read, write};
    fn edit_event(dir: &Path, line: usize, edit: impl Fn(&mut Value)) {
        let text = read(dir, EVENTS_FILE);
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut event: Value = serde_json::from_str(&lines[line]).expect("json");
        edit(&mut event);
        lines[line] = event.to_string();
        write(dir, EVENTS_FILE, &(lines.join("\n") + "\n"));
    }
    fn replace_in(dir: &Path, name: &str, from: &str, to: &str) {
        let text = read(dir, name);
        assert!(text.contains(from), "{name} holds {from:?}");
        write(dir, name, &text.replacen(from, to, 1));
    }
    vec![
        ("manifest.json missing", |dir| {
            std::fs::remove_file(dir.join(MANIFEST_FILE)).expect("remove");
        }),
        ("events.ndjson missing", |dir| {
            std::fs::remove_file(dir.join(EVENTS_FILE)).expect("remove");
        }),
        ("last event line without newline", |dir| {
            let text = read(dir, EVENTS_FILE);
            write(dir, EVENTS_FILE, text.trim_end());
        }),
        ("salt in upper case", |dir| {
            edit_event(dir, 0, |e| {
                e["salt"] = e["salt"].as_str().expect("salt").to_uppercase().into()
            })
        }),
        ("plaintext not base64", |dir| {
            edit_event(dir, 2, |e| e["plaintext_base64"] = "Zm9v=".into())
        }),
        ("plaintext_utf8 differs", |dir| {
            edit_event(dir, 1, |e| e["plaintext_utf8"] = "other".into())
        }),
        ("event with an unknown member", |dir| {
            edit_event(dir, 3, |e| e["note"] = "x".into())
        }),
        ("event as an array of its fields", |dir| {
            edit_event(dir, 0, |e| {
                let fields = ["stream", "offset", "position", "op", "plaintext_base64"];
                let mut array: Vec<Value> = fields.iter().map(|f| e[*f].clone()).collect();
                array.push(e["plaintext_utf8"].clone());
                array.push(e["salt"].clone());
                *e = Value::Array(array);
            })
        }),
        ("event with another stream", |dir| {
            edit_event(dir, 1, |e| e["stream"] = 7.into())
        }),
        ("event offset above u64", |dir| {
            replace_in(
                dir,
                EVENTS_FILE,
                "\"offset\":0",
                "\"offset\":18446744073709551616",
            )
        }),
        ("empty event line", |dir| {
            let text = read(dir, EVENTS_FILE);
            write(dir, EVENTS_FILE, &format!("\n{text}"));
        }),
        ("certificate without its blank line", |dir| {
            let text = read(dir, CERTIFICATE_FILE);
            write(dir, CERTIFICATE_FILE, &text.replacen("\n\n", "\n", 1));
        }),
        ("certificate size with a leading zero", |dir| {
            replace_in(dir, CERTIFICATE_FILE, "\n8\n", "\n08\n")
        }),
        (
            "certificate with an extension line the proofs lack",
            |dir| {
                let mut checkpoint = Certificate::parse(&read(dir, CERTIFICATE_FILE))
                    .expect("parse")
                    .checkpoint;
                checkpoint
                    .extensions
                    .push(format!("vellum-head 8 {}", "ab".repeat(32)));
                let replicas = support::replicas();
                let signed =
                    Certificate::sign(checkpoint, &[&replicas[0], &replicas[2]]).expect("sign");
                write(dir, CERTIFICATE_FILE, &signed.encode());
            },
        ),
        ("proof with a changed hash", |dir| {
            let text = read(dir, PROOFS_FILE);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut proof: Value = serde_json::from_str(&lines[2]).expect("json");
            let body = proof["proof"].as_str().expect("proof").to_string();
            let mut body_lines: Vec<String> = body.lines().map(str::to_string).collect();
            body_lines[3] = format!("A{}", &body_lines[3][1..]);
            proof["proof"] = (body_lines.join("\n") + "\n").into();
            lines[2] = proof.to_string();
            write(dir, PROOFS_FILE, &(lines.join("\n") + "\n"));
        }),
        ("proof header misspelled", |dir| {
            replace_in(
                dir,
                PROOFS_FILE,
                "c2sp.org/tlog-proof@v1",
                "c2sp.org/tlog-proof@v2",
            )
        }),
        ("oversized certificate in a proof", |dir| {
            let text = read(dir, PROOFS_FILE);
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            let mut proof: Value = serde_json::from_str(&lines[0]).expect("json");
            let body = proof["proof"].as_str().expect("proof").to_string();
            let blank = body.find("\n\n").expect("blank line") + 2;
            let padding = "a".repeat(64 * 1024 - 1);
            proof["proof"] = format!("{}{padding}\u{e9}{}", &body[..blank], &body[blank..]).into();
            lines[0] = proof.to_string();
            write(dir, PROOFS_FILE, &(lines.join("\n") + "\n"));
        }),
        ("manifest member of the wrong type", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"time_ns\": 1", "\"time_ns\": \"1\"")
        }),
        ("manifest with an unknown member", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"principal\"", "\"principle\"")
        }),
        ("manifest query without its end", |dir| {
            replace_in(dir, MANIFEST_FILE, ",\n    \"to\": 4", "")
        }),
        ("manifest with a trailing comma", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"end\": true", "\"end\": true,")
        }),
        ("manifest with two newlines at the end", |dir| {
            let text = read(dir, MANIFEST_FILE);
            write(dir, MANIFEST_FILE, &format!("{text}\n"));
        }),
        ("manifest string member holding a number", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"auditor-ann\"", "42")
        }),
        ("manifest struct member holding an array", |dir| {
            replace_in(
                dir,
                MANIFEST_FILE,
                "\"time_ns\": 1709211909000000042",
                "\"time_ns\": [1]",
            )
        }),
        ("manifest query as an array with one too many", |dir| {
            let text = read(dir, MANIFEST_FILE);
            let start = text.find("\"query\": {").expect("query") + "\"query\": ".len();
            let end = start + text[start..].find('}').expect("end of query") + 1;
            write(
                dir,
                MANIFEST_FILE,
                &format!("{}[1001, 0, 4, 5]{}", &text[..start], &text[end..]),
            );
        }),
        ("manifest trailer as an array too short", |dir| {
            replace_in(
                dir,
                MANIFEST_FILE,
                "{\n    \"events\": 4,\n    \"end\": true\n  }",
                "[4]",
            )
        }),
        ("manifest with a repeated member", |dir| {
            replace_in(
                dir,
                MANIFEST_FILE,
                "\"kind\": \"events\",",
                "\"kind\": \"events\",\n  \"kind\": \"events\",",
            )
        }),
        ("manifest with a negative size", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"size\": 8", "\"size\": -8")
        }),
        ("manifest with a fraction", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"size\": 8", "\"size\": 8.0")
        }),
        ("manifest with a leading zero", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"size\": 8", "\"size\": 08")
        }),
        ("manifest with a tab in a string", |dir| {
            replace_in(dir, MANIFEST_FILE, "auditor-ann", "auditor\tann")
        }),
        ("manifest key with a tab", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"principal\"", "\"princ\tipal\"")
        }),
        ("manifest with a bad escape", |dir| {
            replace_in(dir, MANIFEST_FILE, "auditor-ann", "auditor\\qann")
        }),
        ("manifest with a lone surrogate", |dir| {
            replace_in(dir, MANIFEST_FILE, "auditor-ann", "auditor\\ud800ann")
        }),
        ("manifest with a misspelled literal", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"end\": true", "\"end\": trve")
        }),
        ("manifest with a missing colon", |dir| {
            replace_in(dir, MANIFEST_FILE, "\"kind\": ", "\"kind\" ")
        }),
        ("manifest with text after it", |dir| {
            let text = read(dir, MANIFEST_FILE);
            write(dir, MANIFEST_FILE, &format!("{text}x\n"));
        }),
        ("manifest that is an array", |dir| {
            write(dir, MANIFEST_FILE, "[1, 2]\n")
        }),
        ("manifest that is a number", |dir| {
            write(dir, MANIFEST_FILE, "  17\n")
        }),
        ("manifest that is empty", |dir| {
            write(dir, MANIFEST_FILE, "")
        }),
        ("manifest with a trailer of null", |dir| {
            let text = read(dir, MANIFEST_FILE);
            let cut = text.find("\"trailer\"").expect("trailer");
            write(
                dir,
                MANIFEST_FILE,
                &format!("{}\"trailer\": null\n}}\n", &text[..cut]),
            );
        }),
        ("manifest query from the largest offset", |dir| {
            let mut m = support::manifest(dir);
            m.query.from = u64::MAX;
            m.query.to = u64::MAX;
            if let Some(trailer) = m.trailer.as_mut() {
                trailer.events = 0;
            }
            support::resign(dir, &m, &support::replicas()[0]);
        }),
    ]
}

/// Trust policies both verifiers must refuse, each at one line.
fn bad_policies() -> Vec<(&'static str, String)> {
    let good = support::policy().encode();
    let first_id = good.find("+723d505c+").expect("key id of replica 0");
    vec![
        ("no quorum line", good.replace("quorum replicas\n", "")),
        (
            "threshold zero",
            good.replace("group replicas 2", "group replicas 0"),
        ),
        (
            "threshold above the members",
            good.replace("group replicas 2", "group replicas 4"),
        ),
        ("key id that does not match its key", {
            let mut text = good.clone();
            text.replace_range(first_id + 1..first_id + 2, "8");
            text
        }),
        ("line after the quorum", format!("{good}origin x\n")),
        ("log line", good.replacen("origin", "log x\norigin", 1)),
        ("origin twice", format!("origin a\n{good}")),
        (
            "witness left out of the quorum",
            good.replace(" vellum-replica-2\nquorum", "\nquorum"),
        ),
        ("carriage returns", good.replace('\n', "\r\n")),
        ("key not base64", good.replacen("+AdBK", "+AdB*", 1)),
        ("empty", String::new()),
        ("cosigner without cosigner-quorum", {
            let witnessed = witnessed_policy(1, 1).encode();
            witnessed.replace("cosigner-quorum 1\n", "")
        }),
        ("cosigner-quorum above the cosigners", {
            witnessed_policy(1, 1)
                .encode()
                .replace("cosigner-quorum 1", "cosigner-quorum 2")
        }),
        ("cosigner with a replica's key type", {
            // The key's first base64 digit 'B' (type 0x04) becomes 'A'.
            let witnessed = witnessed_policy(1, 1).encode();
            let line = witnessed.find("\ncosigner ").expect("cosigner line");
            let key = line + witnessed[line..].find("+B").expect("type 0x04 key");
            let mut text = witnessed.clone();
            text.replace_range(key + 1..key + 2, "A");
            text
        }),
        ("cosigner-quorum before the cosigner", {
            let witnessed = witnessed_policy(1, 1).encode();
            let cosigner = witnessed
                .lines()
                .find(|l| l.starts_with("cosigner "))
                .expect("line")
                .to_owned();
            witnessed.replace(
                &format!("{cosigner}\ncosigner-quorum 1\n"),
                &format!("cosigner-quorum 1\n{cosigner}\n"),
            )
        }),
    ]
}

/// Replica 1's new key and the test policy with its rotation to it from op
/// 50 pinned (what `vellum keys rotate-signing` gives an auditor).
fn rotated_policy() -> (Signer, Policy) {
    let r = support::replicas();
    let new = Signer::from_seed("vellum-replica-1", [0x77; 32]).expect("name");
    let rotation = KeyRotation::sign(&support::policy().origin, 1, 50, &r[1], &new);
    let pinned = support::policy()
        .with_rotations(vec![rotation])
        .expect("the rotation verifies");
    (new, pinned)
}

/// Rotated policies both verifiers must refuse, each at one line: every
/// rule of `KeyHistory::add` and of the `rotation` line's syntax.
fn bad_rotation_policies() -> Vec<(&'static str, String)> {
    let r = support::replicas();
    let (new, pinned) = rotated_policy();
    let good = pinned.encode();
    let line = pinned.rotations[0].to_line();
    let fields: Vec<&str> = line.split(' ').collect();
    let origin = support::policy().origin;
    let with = |rotations: Vec<KeyRotation>| -> String {
        let lines: Vec<String> = rotations.iter().map(KeyRotation::to_line).collect();
        good.replace(&line, &lines.join("\n"))
    };
    let replace_field = |i: usize, value: &str| {
        let mut changed = fields.clone();
        changed[i] = value;
        good.replace(&line, &changed.join(" "))
    };
    let mut flipped = BASE64.decode(fields[4]).expect("base64");
    flipped[0] ^= 1;
    let flipped = BASE64.encode(&flipped);
    let other_new = Signer::from_seed("vellum-replica-1", [0x78; 32]).expect("name");
    let named_as_0 = Signer::from_seed("vellum-replica-0", [0x79; 32]).expect("name");
    vec![
        (
            "rotation: old signature changed",
            replace_field(4, &flipped),
        ),
        (
            "rotation: new signature is the old one",
            replace_field(5, fields[4]),
        ),
        ("rotation: unknown replica", replace_field(1, "7")),
        ("rotation: from op 0", replace_field(2, "0")),
        (
            "rotation: from op with a leading zero",
            replace_field(2, "050"),
        ),
        (
            "rotation: from op above u64",
            replace_field(2, "18446744073709551616"),
        ),
        (
            "rotation: five fields",
            good.replace(&line, &fields[..5].join(" ")),
        ),
        ("rotation: signature not base64", replace_field(5, "AAAA*")),
        ("rotation: after the quorum line", format!("{good}{line}\n")),
        ("rotation: to a key already pinned", {
            with(vec![KeyRotation::sign(&origin, 1, 50, &r[1], &r[0])])
        }),
        ("rotation: to another replica's key name", {
            with(vec![KeyRotation::sign(&origin, 1, 50, &r[1], &named_as_0)])
        }),
        ("rotation: second one not after the first", {
            with(vec![
                pinned.rotations[0].clone(),
                KeyRotation::sign(&origin, 1, 40, &new, &other_new),
            ])
        }),
        ("rotation: second one signed by the retired key", {
            with(vec![
                pinned.rotations[0].clone(),
                KeyRotation::sign(&origin, 1, 90, &r[1], &other_new),
            ])
        }),
    ]
}

/// Bundles from before and after replica 1's rotation at op 50: (name,
/// certified op, certificate signers, manifest signer, passes under the
/// pinned rotation).
fn rotation_bundles() -> Vec<(&'static str, u64, [Signer; 2], Signer, bool)> {
    let r = support::replicas();
    let (new, _) = rotated_policy();
    vec![
        (
            "before the rotation, exported by the old key",
            49,
            [r[0].clone(), r[1].clone()],
            r[1].clone(),
            true,
        ),
        (
            "before the rotation, exported by the new key",
            49,
            [r[0].clone(), r[1].clone()],
            new.clone(),
            true,
        ),
        (
            "at the rotation, new key",
            50,
            [r[0].clone(), new.clone()],
            new.clone(),
            true,
        ),
        (
            "after the rotation, certified by the retired key",
            60,
            [r[0].clone(), r[1].clone()],
            r[0].clone(),
            false,
        ),
        (
            "after the rotation, exported by the retired key",
            60,
            [r[0].clone(), new.clone()],
            r[1].clone(),
            false,
        ),
        (
            "after the rotation, exported by replica 0",
            60,
            [r[0].clone(), new.clone()],
            r[0].clone(),
            true,
        ),
    ]
}

/// Two outside witnesses of the test log (`cosigner` keys, type 0x04).
fn cosigners() -> [Cosigner; 2] {
    [
        Cosigner::from_seed("witness.example/w1", [0xa1; 32]).expect("name"),
        Cosigner::from_seed("witness.example/w2", [0xa2; 32]).expect("name"),
    ]
}

/// The test policy requiring `quorum` of the first `count` cosigners, with
/// a URL on the first (which verifiers ignore).
fn witnessed_policy(count: usize, quorum: usize) -> Policy {
    let keys: Vec<_> = cosigners()[..count].iter().map(Cosigner::key).collect();
    let mut urls = vec![None; count];
    urls[0] = Some("http://127.0.0.1:7380".to_owned());
    support::policy()
        .with_cosigners(keys, quorum)
        .expect("policy")
        .with_cosigner_urls(urls)
}

/// A cosignature line of `witness` over the bundle's certificate.
fn cosignature(dir: &Path, witness: &Cosigner) -> String {
    let certificate = Certificate::parse(&support::read(dir, CERTIFICATE_FILE)).expect("parse");
    witness
        .cosign(&certificate.note.text, 1_700_000_000)
        .expect("cosigns")
        .line()
}

/// Bundles with witness cosignatures under a witness-quorum policy: (name,
/// cosigners the policy pins, its quorum, the cosignatures.txt to write or
/// none, whether it must pass).
fn cosignature_cases(dir: &Path) -> Vec<(&'static str, usize, usize, Option<String>, bool)> {
    let [w1, w2] = cosigners();
    let good = cosignature(dir, &w1);
    let both = good.clone() + &cosignature(dir, &w2);
    let mut tampered = good.clone().into_bytes();
    let at = tampered.len() - 10;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let impostor = Cosigner::from_seed("witness.example/w1", [0xee; 32]).expect("name");
    let wrong_key = cosignature(dir, &impostor);
    let huge_time = {
        // The pinned key's name and key id, a timestamp above 2^63 - 1.
        let line = w1.cosign("x\n", 0).expect("cosigns");
        let mut signature = line.signature.clone();
        signature[..8].copy_from_slice(&u64::MAX.to_be_bytes());
        let mut raw = line.key_id.to_vec();
        raw.extend_from_slice(&signature);
        format!("\u{2014} {} {}\n", line.name, BASE64.encode(raw))
    };
    vec![
        ("cosigned bundle", 1, 1, Some(good.clone()), true),
        ("two witnesses, quorum 2", 2, 2, Some(both.clone()), true),
        ("no cosignatures.txt", 1, 1, None, false),
        ("tampered cosignature", 1, 1, Some(tampered), false),
        (
            "cosignature under another key",
            1,
            1,
            Some(wrong_key),
            false,
        ),
        ("under the witness quorum", 2, 2, Some(good.clone()), false),
        ("timestamp above 2^63 - 1", 1, 1, Some(huge_time), false),
        (
            "cosignatures.txt not signature lines",
            1,
            1,
            Some("garbage\n".into()),
            false,
        ),
        (
            "cosignatures.txt without newline",
            1,
            1,
            Some(good.trim_end().into()),
            false,
        ),
        ("empty cosignatures.txt", 1, 1, Some(String::new()), false),
        ("cosignatures reported, quorum 0", 2, 0, Some(good), true),
    ]
}

/// The Ed25519 group order ℓ, little-endian.
const GROUP_ORDER_LE: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// A signature line of `name` whose signature is `signature`.
fn signature_line(verifier: &Verifier, signature: &[u8]) -> String {
    let mut raw = verifier.key_id().to_vec();
    raw.extend_from_slice(signature);
    format!("\u{2014} {} {}\n", verifier.name(), BASE64.encode(raw))
}

/// Strict Ed25519, where WebCrypto alone would differ from the Rust
/// verifier: a pinned key of small order (the identity point) "signs" with
/// R = identity and s = 0, which the plain equation accepts; and a real
/// signature with s + ℓ for s. Both must fail in both verifiers, so a
/// quorum counted from either shows as a disagreement.
fn strict_signature_cases(dir: &Path) -> Vec<(&'static str, String)> {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = Verifier::new("vellum-weak", &identity).expect("the identity decompresses");
    let certificate = Certificate::parse(&support::read(dir, CERTIFICATE_FILE)).expect("parse");
    let replicas = support::replicas();
    let one = Certificate::sign(certificate.checkpoint.clone(), &[&replicas[0]]).expect("sign");
    let mut forged_weak = identity.to_vec();
    forged_weak.extend_from_slice(&[0u8; 32]);
    let weak_case = one.encode() + &signature_line(&weak, &forged_weak);
    let mut big_s = replicas[1].sign(certificate.note.text.as_bytes()).to_vec();
    let mut carry = 0u16;
    for (byte, add) in big_s[32..].iter_mut().zip(GROUP_ORDER_LE) {
        let sum = u16::from(*byte) + u16::from(add) + carry;
        *byte = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "s + ℓ fits 32 bytes");
    let big_s_case = one.encode() + &signature_line(&replicas[1].verifier(), &big_s);
    vec![
        ("a small-order pinned key signs", weak_case),
        ("a signature with s + ℓ", big_s_case),
    ]
}

/// The test policy plus the small-order key `vellum-weak`, quorum 2.
fn policy_with_weak_key() -> Policy {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut verifiers: Vec<Verifier> = support::replicas().iter().map(Signer::verifier).collect();
    verifiers.push(Verifier::new("vellum-weak", &identity).expect("the identity decompresses"));
    Policy::new(&support::policy().origin, verifiers, 2).expect("policy")
}

/// Runs one bundle through both verifiers and asserts they agree; returns
/// the Rust report.
async fn agree(browser: &Browser, name: &str, dir: &Path, policy_file: &Path) -> Report {
    agree_under(browser, name, dir, &support::policy(), policy_file).await
}

/// [`agree`] under another policy (`policy_file` is its text).
async fn agree_under(
    browser: &Browser,
    name: &str,
    dir: &Path,
    policy: &Policy,
    policy_file: &Path,
) -> Report {
    let rust = verify_bundle(dir, policy);
    let started = Instant::now();
    let page = browser.verify(&listing(dir), policy_file).await;
    eprintln!("{name}: the page took {} ms", started.elapsed().as_millis());
    let (expected, actual) = (rust_summary(&rust), page_summary(&page));
    assert_eq!(
        actual,
        expected,
        "{name}: the page (left) and verify_bundle (right) disagree\n{}",
        rust.to_text()
    );
    rust
}

// Goal: a good bundle passes in the page; every tampering case of the
// bundle tamper suite fails there with the same places the Rust verifier
// names; and the two agree on every further case.
#[test]
fn page_and_rust_verifier_agree_on_every_bundle() {
    let chromium = find_program("VELLUM_CHROMIUM", &["chromium", "chromium-browser"]);
    let chromedriver = find_program("VELLUM_CHROMEDRIVER", &["chromedriver"]);
    let (Some(chromium), Some(chromedriver)) = (chromium, chromedriver) else {
        eprintln!(
            "SKIP: the verifier page test needs chromium and chromedriver \
             (apt-get install chromium chromium-driver, or set VELLUM_CHROMIUM and VELLUM_CHROMEDRIVER)"
        );
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let browser = Browser::start(&chromium, &chromedriver).await;
        let policy_dir = tempfile::tempdir().expect("tempdir");
        let policy_file = policy_dir.path().join("policy.txt");
        std::fs::write(&policy_file, support::policy().encode()).expect("write policy");

        let (_tmp, dir) = support::bundle();
        let good = agree(&browser, "good bundle", &dir, &policy_file).await;
        assert!(good.passed, "{}", good.to_text());

        for case in support::tamper_cases() {
            let (_tmp, dir) = support::bundle();
            (case.apply)(&dir);
            let report = agree(&browser, case.name, &dir, &policy_file).await;
            assert!(
                !report.passed,
                "{}: the tampering went unnoticed",
                case.name
            );
        }
        let (_, rotated) = rotated_policy();
        let rotated_file = policy_dir.path().join("rotated-policy.txt");
        std::fs::write(&rotated_file, rotated.encode()).expect("write policy");
        for (name, op, certified_by, exporter, passes) in rotation_bundles() {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("bundle");
            let signers: Vec<&Signer> = certified_by.iter().collect();
            let log = support::build_log_signed(4, true, &support::small_body, Some(op), &signers);
            let mut request = support::request(4);
            request.exported_by = exporter.name().to_string();
            write_bundle(
                &dir,
                &request,
                &log.certificate.encode(),
                &log.events,
                &exporter,
            )
            .expect("write bundle");
            let report = agree_under(&browser, name, &dir, &rotated, &rotated_file).await;
            assert_eq!(report.passed, passes, "{name}: {}", report.to_text());
            // The same bundle under the policy without the rotation.
            agree(&browser, name, &dir, &policy_file).await;
        }
        let mut bad = bad_policies();
        bad.extend(bad_rotation_policies());
        for (name, text) in bad {
            let error = vellum_audit::policy::Policy::parse(&text).expect_err(name);
            let bad_policy = policy_dir.path().join("bad-policy.txt");
            std::fs::write(&bad_policy, &text).expect("write policy");
            let page = browser.verify(&listing(&dir), &bad_policy).await;
            let message = page["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: the page verified with a bad policy: {page}"));
            let place = message.rsplit_once(" at ").map(|(_, place)| place);
            assert_eq!(
                place,
                Some(error.location.to_string().as_str()),
                "{name}: page {message:?}, rust {error}"
            );
        }
        let weak_policy = policy_with_weak_key();
        let weak_policy_file = policy_dir.path().join("weak-policy.txt");
        std::fs::write(&weak_policy_file, weak_policy.encode()).expect("write policy");
        let (_tmp, strict_dir) = support::bundle();
        for (name, certificate) in strict_signature_cases(&strict_dir) {
            let (_tmp, dir) = support::bundle();
            support::write(&dir, CERTIFICATE_FILE, &certificate);
            let report = agree_under(&browser, name, &dir, &weak_policy, &weak_policy_file).await;
            assert!(!report.passed, "{name}: the forged signature counted");
        }

        let (_tmp, cosign_dir) = support::bundle();
        for (name, count, quorum, lines, passes) in cosignature_cases(&cosign_dir) {
            let (_tmp, dir) = support::bundle();
            if let Some(lines) = lines {
                support::write(&dir, "cosignatures.txt", &lines);
            }
            let policy = witnessed_policy(count, quorum);
            let policy_file = policy_dir.path().join("witnessed-policy.txt");
            std::fs::write(&policy_file, policy.encode()).expect("write policy");
            let report = agree_under(&browser, name, &dir, &policy, &policy_file).await;
            assert_eq!(report.passed, passes, "{name}: {}", report.to_text());
        }

        let witnessed = support::witnessed_policy();
        let witnessed_file = policy_dir.path().join("witnessed-cosigned.txt");
        std::fs::write(&witnessed_file, witnessed.encode()).expect("write policy");
        for case in support::cosigned_cases() {
            let (_tmp, dir) = support::bundle();
            (case.apply)(&dir);
            let report = agree_under(&browser, case.name, &dir, &witnessed, &witnessed_file).await;
            assert_eq!(
                report.passed,
                case.passes,
                "{}: {}",
                case.name,
                report.to_text()
            );
        }

        let (_tmp, dir) = {
            let tmp = tempfile::tempdir().expect("tempdir");
            let dir = tmp.path().join("bundle");
            let log = support::build_log(1000, false, &support::small_body);
            let events = &log.events;
            write_bundle(
                &dir,
                &support::request(1000),
                &log.certificate.encode(),
                events,
                &support::replicas()[0],
            )
            .expect("write bundle");
            (tmp, dir)
        };
        let large = agree(&browser, "bundle of 1,000 events", &dir, &policy_file).await;
        assert!(large.passed, "{}", large.to_text());

        for (name, apply) in more_cases() {
            let (_tmp, dir) = support::bundle();
            apply(&dir);
            let report = agree(&browser, name, &dir, &policy_file).await;
            assert!(!report.passed, "{name}: the tampering went unnoticed");
        }
        browser.quit().await;
    });
}
