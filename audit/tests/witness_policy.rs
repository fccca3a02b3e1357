//! Outside witnesses in the trust policy: `cosigner` and `cosigner-quorum`
//! lines parse and round-trip, old policies parse exactly as before, and a
//! certificate (and so every proof built on one) is accepted only with the
//! quorum of valid cosignatures the policy names.

use vellum_audit::Location;
use vellum_audit::checkpoint::{Certificate, CertificateError, Checkpoint, origin_for_cluster};
use vellum_audit::cosignature::Cosigner;
use vellum_audit::merkle::{MerkleTree, leaf_hash};
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::proof::{InclusionProof, ProofVerifyError};

const CLUSTER: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;

fn replicas() -> Vec<Signer> {
    (0..3u8)
        .map(|i| {
            Signer::from_seed(&format!("vellum-replica-{i}"), [0x11 * (i + 1); 32])
                .expect("valid name")
        })
        .collect()
}

fn witnesses() -> Vec<Cosigner> {
    (0..3u8)
        .map(|i| {
            Cosigner::from_seed(&format!("witness.example/w{i}"), [0xa0 + i; 32])
                .expect("valid name")
        })
        .collect()
}

fn replica_policy() -> Policy {
    let verifiers = replicas().iter().map(Signer::verifier).collect();
    Policy::new(&origin_for_cluster(CLUSTER), verifiers, 2).expect("valid policy")
}

fn witnessed_policy(quorum: usize) -> Policy {
    let keys = witnesses().iter().map(Cosigner::key).collect();
    replica_policy()
        .with_cosigners(keys, quorum)
        .expect("valid cosigners")
}

fn certificate(size: u64) -> Certificate {
    let mut tree = MerkleTree::new();
    for i in 0..size {
        tree.push(leaf_hash(format!("event-{i}").as_bytes()));
    }
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size,
        root: tree.root(),
        extensions: vec!["vellum-head 3 00".to_owned()],
    };
    let r = replicas();
    Certificate::sign(checkpoint, &[&r[0], &r[1], &r[2]]).expect("sign")
}

fn cosign(certificate: &mut Certificate, witness: &Cosigner, time: u64) {
    let line = witness
        .cosign(&certificate.note.text, time)
        .expect("valid time");
    certificate.note.signatures.push(line);
}

/// A policy without cosigner lines is byte-for-byte the old format and
/// needs no cosignature.
#[test]
fn old_policies_parse_as_before() {
    let policy = replica_policy();
    let text = policy.encode();
    assert!(!text.contains("cosigner"));
    let parsed = Policy::parse(&text).expect("old policy parses");
    assert_eq!(parsed, policy);
    assert_eq!(parsed.cosigner_quorum, 0);
    assert!(parsed.cosigners.is_empty());
    let verified = certificate(5)
        .verify(&parsed)
        .expect("no cosignature needed");
    assert!(verified.cosigners.is_empty());
}

/// Cosigner lines round-trip through encode and parse, with each threshold
/// spelling.
#[test]
fn cosigner_lines_round_trip() {
    for quorum in 0..=3 {
        let policy = witnessed_policy(quorum);
        let text = policy.encode();
        assert_eq!(Policy::parse(&text).expect("parses"), policy, "{text}");
    }
    let text = witnessed_policy(1).encode();
    let all = text.replace("cosigner-quorum 1", "cosigner-quorum all");
    assert_eq!(Policy::parse(&all).expect("all").cosigner_quorum, 3);
    let any = text.replace("cosigner-quorum 1", "cosigner-quorum any");
    assert_eq!(Policy::parse(&any).expect("any").cosigner_quorum, 1);
}

/// A cosigner's submission URL is kept (the primary submits there), encoded
/// back, and listed only for the cosigners that name one.
#[test]
fn cosigner_urls_are_kept() {
    let policy = witnessed_policy(1).with_cosigner_urls(vec![
        Some("http://127.0.0.1:7380".to_owned()),
        None,
        Some("https://w2.example/witness".to_owned()),
    ]);
    let text = policy.encode();
    assert!(text.contains(" http://127.0.0.1:7380\n"), "{text}");
    let parsed = Policy::parse(&text).expect("parses");
    assert_eq!(parsed, policy);
    let named: Vec<(String, String)> = parsed
        .cosigners_with_urls()
        .map(|(k, u)| (k.name().to_owned(), u.to_owned()))
        .collect();
    assert_eq!(
        named,
        [
            (
                "witness.example/w0".to_owned(),
                "http://127.0.0.1:7380".to_owned()
            ),
            (
                "witness.example/w2".to_owned(),
                "https://w2.example/witness".to_owned()
            ),
        ]
    );
    // The replicas-only policy drops cosigners and their URLs together.
    let replicas = parsed.replicas_only();
    assert!(replicas.cosigners.is_empty() && replicas.cosigner_urls.is_empty());
    assert_eq!(replicas.cosigners_with_urls().count(), 0);
}

/// Each malformed cosigner policy is refused at the line that is wrong.
#[test]
fn bad_cosigner_lines_are_refused_with_their_line() {
    let good = witnessed_policy(2).encode();
    let lines: Vec<&str> = good.lines().collect();
    let quorum_line = lines.len();
    let cq_line = quorum_line - 1;
    let first_cosigner = quorum_line - 4;
    let replica_vkey = replicas()[0].verifier().to_vkey();
    let cases: Vec<(String, usize)> = vec![
        (
            good.replace("cosigner-quorum 2", "cosigner-quorum 4"),
            cq_line,
        ),
        (
            good.replace("cosigner-quorum 2", "cosigner-quorum 02"),
            cq_line,
        ),
        (
            good.replace("cosigner-quorum 2", "cosigner-quorum -1"),
            cq_line,
        ),
        (
            good.replace("cosigner-quorum 2", "cosigner-quorum"),
            cq_line,
        ),
        (good.replace("cosigner-quorum 2\n", ""), quorum_line - 1),
        (
            good.replace("quorum replicas\n", "quorum replicas\ncosigner-quorum 1\n"),
            quorum_line + 1,
        ),
        (
            good.replacen(
                lines[first_cosigner],
                &format!("cosigner x {replica_vkey}"),
                1,
            ),
            first_cosigner + 1,
        ),
        (
            good.replacen(
                lines[first_cosigner],
                &format!(
                    "cosigner vellum-replica-0 {}",
                    witnesses()[0].key().to_vkey()
                ),
                1,
            ),
            first_cosigner + 1,
        ),
        (
            format!(
                "{}cosigner-quorum 1\n{}\n{}\n",
                lines[..first_cosigner].join("\n") + "\n",
                lines[first_cosigner],
                "quorum replicas"
            ),
            first_cosigner + 2,
        ),
    ];
    for (text, line) in cases {
        let error = Policy::parse(&text).expect_err(&text);
        assert_eq!(error.location, Location::Line(line), "{text}\n{error}");
    }
    // A witness key pinned twice (once per name) is refused.
    let twice = good.replacen(
        lines[first_cosigner + 1],
        &format!("cosigner other {}", witnesses()[0].key().to_vkey()),
        1,
    );
    assert!(Policy::parse(&twice).is_err());
}

/// With a cosigner quorum, a certificate re-signed by every replica key but
/// lacking cosignatures fails; with enough valid ones it passes and names
/// them; a second line of the same witness counts once; unpinned witnesses
/// do not count; one failing pinned cosignature rejects it.
#[test]
fn certificates_need_the_witness_quorum() {
    let policy = witnessed_policy(2);
    let w = witnesses();
    let bare = certificate(7);
    assert!(matches!(
        bare.verify(&policy),
        Err(CertificateError::WitnessQuorumNotMet { ref valid, needed: 2, .. }) if valid.is_empty()
    ));

    let mut one = bare.clone();
    cosign(&mut one, &w[0], 100);
    cosign(&mut one, &w[0], 101);
    let stranger = Cosigner::from_seed("witness.example/w0", [0x55; 32]).expect("name");
    cosign(&mut one, &stranger, 100);
    let error = one.verify(&policy).expect_err("one distinct witness");
    assert!(error.to_string().contains("witness.example/w0"), "{error}");

    let mut two = one.clone();
    cosign(&mut two, &w[2], 102);
    let reparsed = Certificate::parse(&two.encode()).expect("parses");
    let verified = reparsed.verify(&policy).expect("quorum of two witnesses");
    let names: Vec<&str> = verified.cosigners.iter().map(|c| c.key.name()).collect();
    assert_eq!(names, ["witness.example/w0", "witness.example/w2"]);
    assert_eq!(verified.cosigners[0].timestamp, 100);

    let mut broken = two.clone();
    let last = broken.note.signatures.len() - 1;
    broken.note.signatures[last].signature[20] ^= 1;
    assert!(matches!(
        broken.verify(&policy),
        Err(CertificateError::WitnessQuorumNotMet { ref failed, .. }) if failed.len() == 1
    ));

    // The cosignatures do not transfer to another checkpoint.
    let mut moved = certificate(8);
    moved
        .note
        .signatures
        .extend(two.note.signatures[3..].iter().cloned());
    assert!(moved.verify(&policy).is_err());

    // Without a quorum, cosignatures are reported but not required.
    let report_only = witnessed_policy(0);
    assert!(bare.verify(&report_only).is_ok());
    assert_eq!(two.verify(&report_only).expect("valid").cosigners.len(), 2);
}

/// A proof whose certificate lacks the witness quorum does not verify.
#[test]
fn proofs_need_the_witness_quorum() {
    let mut tree = MerkleTree::new();
    for i in 0..7u64 {
        tree.push(leaf_hash(format!("event-{i}").as_bytes()));
    }
    let mut cert = certificate(7);
    let proof = |certificate: Certificate| InclusionProof {
        extra: Some(b"event-3".to_vec()),
        index: 3,
        hashes: tree.inclusion_proof(3, 7).expect("proof"),
        checkpoint: certificate,
    };
    let policy = witnessed_policy(1);
    assert!(matches!(
        proof(cert.clone()).verify(&policy),
        Err(ProofVerifyError::Certificate(
            CertificateError::WitnessQuorumNotMet { .. }
        ))
    ));
    cosign(&mut cert, &witnesses()[1], 9);
    let text = proof(cert).encode();
    let parsed = InclusionProof::parse(&text).expect("parses");
    assert!(parsed.verify(&policy).is_ok());
}

/// `vellum proof check`'s witnesses part (`check_event`) passes a cosigned
/// certificate naming the witnesses that cosigned, and fails a bare one
/// under a witness quorum, saying how many cosignatures were needed, while
/// its quorum part (replica keys) passes: the failure names the part.
#[test]
fn proof_check_reports_the_witnesses() {
    let mut tree = MerkleTree::new();
    for i in 0..7u64 {
        tree.push(leaf_hash(format!("event-{i}").as_bytes()));
    }
    let proof = |checkpoint: Certificate| InclusionProof {
        extra: Some(b"event-3".to_vec()),
        index: 3,
        hashes: tree.inclusion_proof(3, 7).expect("proof"),
        checkpoint,
    };
    let policy = witnessed_policy(1);
    let bare = vellum_audit::proof::check_event(&proof(certificate(7)), &policy, &[0; 32], b"");
    assert!(bare.quorum.passed, "{}", bare.quorum.message);
    assert!(!bare.witnesses.passed);
    assert!(
        bare.witnesses.message.contains("1 needed"),
        "{}",
        bare.witnesses.message
    );
    assert!(bare.failed_parts().contains(&"witnesses"));

    let mut cert = certificate(7);
    cosign(&mut cert, &witnesses()[2], 9);
    let checked = vellum_audit::proof::check_event(&proof(cert.clone()), &policy, &[0; 32], b"");
    assert!(checked.quorum.passed, "{}", checked.quorum.message);
    assert!(checked.witnesses.passed, "{}", checked.witnesses.message);
    assert!(
        checked
            .witnesses
            .message
            .contains("1 of 1 needed pinned witnesses cosigned: witness.example/w2+"),
        "{}",
        checked.witnesses.message
    );

    // One flipped bit in the cosignature: the part fails naming the witness.
    let line = cert.note.signatures.last_mut().expect("cosignature line");
    line.signature[20] ^= 0x01;
    let forged = vellum_audit::proof::check_event(&proof(cert), &policy, &[0; 32], b"");
    assert!(forged.quorum.passed, "{}", forged.quorum.message);
    assert!(!forged.witnesses.passed);
    assert!(
        forged
            .witnesses
            .message
            .contains("bad cosignature: witness.example/w2+"),
        "{}",
        forged.witnesses.message
    );
}
