//! Export bundles end to end: a real bundle built from a tiny in-test log
//! (RFC 6962 tree, Vellum leaves, a 2-of-3 certificate), verified offline
//! against a pinned policy; then each kind of tampering, which must fail and
//! name the file and line or position (P2, P3). Also the manifest's golden
//! file and the size of a bundle of 1,000 events of 1 KiB.

use std::fs;
use std::path::PathBuf;

use vellum_audit::report::Report;
use vellum_compliance::bundle::{
    BundleError, EVENTS_FILE, MANIFEST_FILE, MANIFEST_SIG_FILE, PROOFS_FILE, verify_bundle,
    write_bundle,
};

mod support;
use support::{build_log, bundle, policy, read, replicas, request, small_body};

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
    support::edit_plaintext(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "events.ndjson line 2 (position 3)", "commitment");
    assert_fails_at(&report, EVENTS_FILE, "sha256");
}

// Goal: a dropped event breaks density at its line and leaves a proof over.
#[test]
fn dropped_event_fails_at_its_line() {
    let (_tmp, dir) = bundle();
    support::drop_event(&dir);
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
    support::drop_trailer(&dir);
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
    support::cut_manifest_in_half(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "manifest.json line", "truncated");
    // A cut just before the closing brace and newline is truncated too.
    let (_tmp, dir) = bundle();
    support::cut_manifest_before_brace(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "manifest.json line", "truncated");
}

// Goal: two swapped proofs are each reported at their line and position.
#[test]
fn swapped_proofs_fail_at_their_lines() {
    let (_tmp, dir) = bundle();
    support::swap_proofs(&dir);
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
    support::single_key_certificate(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        "certificate.txt",
        "1 valid signatures of pinned keys, 2 needed",
    );
    assert_fails_at(&report, "certificate.txt", "sha256");
    assert!(report.reached.is_none());
}

// Goal: a manifest signed by a key the policy does not pin is refused, even
// when the manifest is consistent with the files.
#[test]
fn manifest_signed_by_unpinned_key_fails() {
    let (_tmp, dir) = bundle();
    support::sign_manifest_unpinned(&dir);
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
    support::add_extra_file(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "notes.txt", "an extra file");

    let (_tmp, dir) = bundle();
    support::claim_extra_file(&dir);
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
    support::sign_manifest_by_other_replica(&dir);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        MANIFEST_SIG_FILE,
        "not by exported_by vellum-replica-0",
    );
}

// Goal: with a pinned signing-key rotation, a bundle's manifest.sig counts
// when signed by the exporting replica's key in force at the bundle's
// certificate or a later one (so a bundle from before the rotation keeps
// verifying, and one the rotated replica exports verifies), never by a key
// retired before the certificate; and the policy without the rotation
// refuses the new key.
#[test]
fn manifest_signed_under_a_pinned_rotation() {
    use vellum_audit::key_history::KeyRotation;
    use vellum_audit::note::Signer;
    let r = replicas();
    let new = Signer::from_seed("vellum-replica-1", [0x77; 32]).expect("name");
    let rotation = KeyRotation::sign(&policy().origin, 1, 50, &r[1], &new);
    let pinned = policy()
        .with_rotations(vec![rotation])
        .expect("the rotation verifies");
    // (certified op, certificate signers, manifest signer, passes)
    let cases: [(u64, [&Signer; 2], &Signer, bool); 5] = [
        (49, [&r[0], &r[1]], &r[1], true),
        (49, [&r[0], &r[1]], &new, true),
        (50, [&r[0], &new], &new, true),
        (60, [&r[0], &new], &r[1], false),
        (60, [&r[0], &new], &r[0], true),
    ];
    for (op, certified_by, exporter, passes) in cases {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("bundle");
        let log = support::build_log_signed(4, true, &small_body, Some(op), &certified_by);
        let mut request = request(4);
        request.exported_by = exporter.name().to_string();
        write_bundle(
            &dir,
            &request,
            &log.certificate.encode(),
            &log.events,
            exporter,
        )
        .expect("write bundle");
        let report = verify_bundle(&dir, &pinned);
        let case = format!("op {op}, manifest by {}", exporter.verifier().to_vkey());
        assert_eq!(report.passed, passes, "{case}:\n{}", report.to_text());
        if !passes {
            assert_fails_at(&report, MANIFEST_SIG_FILE, "not validly signed");
        }
        if exporter.verifier() == new.verifier() {
            assert_fails_at(
                &verify_bundle(&dir, &policy()),
                MANIFEST_SIG_FILE,
                "not validly signed",
            );
        }
    }
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

// Goal: every case of the shared tampering table (which the verifier page
// test replays in a browser) makes an otherwise good bundle fail.
#[test]
fn every_shared_tamper_case_fails() {
    for case in support::tamper_cases() {
        let (_tmp, dir) = bundle();
        (case.apply)(&dir);
        let report = verify_bundle(&dir, &policy());
        assert!(!report.passed, "{}: {}", case.name, report.to_text());
    }
}

// Goal: a manifest whose last member is `"trailer": null` is reported
// incomplete, not a crash of the verifier.
#[test]
fn null_trailer_is_incomplete_not_a_crash() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, MANIFEST_FILE);
    let cut = text.find("\"trailer\"").expect("trailer");
    let forged = format!("{}\"trailer\": null\n}}\n", &text[..cut]);
    support::write(&dir, MANIFEST_FILE, &forged);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, MANIFEST_FILE, "no trailer");
}

// Goal: a signed manifest whose query starts at the largest offset, with
// more event lines than that leaves room for, fails at the event line
// instead of overflowing.
#[test]
fn query_at_the_largest_offset_fails_at_the_line() {
    let (_tmp, dir) = bundle();
    let mut m = support::manifest(&dir);
    m.query.from = u64::MAX;
    m.query.to = u64::MAX;
    if let Some(trailer) = m.trailer.as_mut() {
        trailer.events = 0;
    }
    support::resign(&dir, &m, &replicas()[0]);
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(&report, "events.ndjson line 2", "past the largest offset");
}

// Goal: a proof whose certificate is over the note size limit, with a
// character across the limit, is refused at its line, not a crash.
#[test]
fn oversized_certificate_in_a_proof_is_refused() {
    let (_tmp, dir) = bundle();
    let text = read(&dir, PROOFS_FILE);
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut proof: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
    let body = proof["proof"].as_str().expect("proof").to_string();
    // The certificate starts after the blank line; make it 64 KiB - 1 bytes
    // of origin, then a two-byte character across the limit.
    let blank = body.find("\n\n").expect("blank line") + 2;
    let padding = "a".repeat(64 * 1024 - 1);
    let forged = format!("{}{padding}é{}", &body[..blank], &body[blank..]);
    proof["proof"] = forged.into();
    lines[0] = proof.to_string();
    support::write(&dir, PROOFS_FILE, &(lines.join("\n") + "\n"));
    let report = verify_bundle(&dir, &policy());
    assert_fails_at(
        &report,
        "proofs.ndjson line 1 (position 1) tlog-proof line",
        "larger than the note size limit",
    );
}

// Goal: a bundle whose certificate is newer than the newest cosigned
// checkpoint carries both (`cosigned.txt`): the good one passes under a
// policy requiring the witness, counting the witness and the cosigned size;
// every broken one (a proof hash changed or dropped, a forged or missing
// cosignature, a fork the witness cosigned, a cosigned size above the
// certificate's, a second cosignature file, a bad layout) fails, and only
// at `cosigned.txt` (its line when the layout is wrong).
#[test]
fn cosigned_checkpoint_with_consistency_proof() {
    for case in support::cosigned_cases() {
        let (_tmp, dir) = bundle();
        (case.apply)(&dir);
        let report = verify_bundle(&dir, &support::witnessed_policy());
        assert_eq!(
            report.passed,
            case.passes,
            "{}: {}",
            case.name,
            report.to_text()
        );
        let places: Vec<&str> = report
            .failures()
            .map(|(_, f)| f.location.as_str())
            .collect();
        assert!(
            places.iter().all(|p| p.starts_with("cosigned.txt")),
            "{}: {places:?}",
            case.name
        );
        if case.passes {
            let certificate = report
                .checks
                .iter()
                .find(|c| c.name == "bundle certificate")
                .expect("check");
            assert_eq!(certificate.counts.get("witness cosignatures"), Some(&1));
            assert_eq!(
                certificate.counts.get("cosigned tree size"),
                Some(&support::COSIGNED_SIZE)
            );
            assert_eq!(report.reached.as_ref().map(|r| r.tree_size), Some(8));
        }
    }
    // Without cosigned.txt the same bundle fails the witness quorum.
    let (_tmp, dir) = bundle();
    let report = verify_bundle(&dir, &support::witnessed_policy());
    assert_fails_at(&report, "certificate.txt", "cosignatures");
}
