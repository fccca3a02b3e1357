//! Integration tests of the proof formats: golden files (byte for byte,
//! regenerated only with `VELLUM_BLESS=1`), certificate quorum rules, proof
//! verification and tampering, line-located decode errors, and proptest
//! round trips of every codec.

use std::path::PathBuf;

use proptest::prelude::*;
use vellum_audit::Location;
use vellum_audit::checkpoint::{Certificate, CertificateError, Checkpoint, origin_for_cluster};
use vellum_audit::merkle::{MerkleTree, leaf_hash};
use vellum_audit::note::{Note, Signer, Verifier};
use vellum_audit::policy::{Policy, PolicyError};
use vellum_audit::proof::{ConsistencyProof, InclusionProof, ProofVerifyError};

const CLUSTER: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;

fn replicas() -> Vec<Signer> {
    (0..3u8)
        .map(|i| {
            Signer::from_seed(&format!("vellum-replica-{i}"), [0x11 * (i + 1); 32])
                .expect("valid name")
        })
        .collect()
}

fn policy() -> Policy {
    let verifiers = replicas().iter().map(Signer::verifier).collect();
    Policy::new(&origin_for_cluster(CLUSTER), verifiers, 2).expect("valid policy")
}

fn preimage(i: u64) -> Vec<u8> {
    format!("event-{i}").into_bytes()
}

fn tree(size: u64) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..size {
        tree.push(leaf_hash(&preimage(i)));
    }
    tree
}

fn certificate(tree: &MerkleTree, size: u64, signers: &[&Signer]) -> Certificate {
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size,
        root: tree.root_at(size).expect("size within tree"),
        extensions: Vec::new(),
    };
    Certificate::sign(checkpoint, signers).expect("sign")
}

fn inclusion_proof(index: u64, size: u64) -> InclusionProof {
    let tree = tree(size);
    let r = replicas();
    InclusionProof {
        extra: Some(preimage(index)),
        index,
        hashes: tree.inclusion_proof(index, size).expect("proof"),
        checkpoint: certificate(&tree, size, &[&r[0], &r[1]]),
    }
}

fn consistency_proof(old_size: u64, new_size: u64) -> ConsistencyProof {
    let tree = tree(new_size);
    let r = replicas();
    ConsistencyProof {
        old_size,
        new_size,
        hashes: tree.consistency_proof(old_size, new_size).expect("proof"),
        checkpoint: certificate(&tree, new_size, &[&r[2], &r[0]]),
    }
}

/// Compares `actual` with the golden file, or rewrites it under VELLUM_BLESS=1.
fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with VELLUM_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(actual, expected, "{name} differs from its golden file");
}

/// Goal: every proof format is byte-for-byte stable, and each golden file
/// parses back to the value that wrote it.
#[test]
fn golden_files_match() {
    let r = replicas();
    let note = Note::sign("Vellum golden note.\nSecond line.\n", &[&r[0], &r[1]]).expect("sign");
    golden("note.txt", &note.encode());
    assert_eq!(Note::parse(&note.encode()).expect("parse"), note);

    let cert = certificate(&tree(10), 10, &[&r[0], &r[1]]);
    golden("checkpoint.txt", &cert.encode());
    assert_eq!(Certificate::parse(&cert.encode()).expect("parse"), cert);

    let inclusion = inclusion_proof(6, 10);
    golden("proof_inclusion.txt", &inclusion.encode());
    assert_eq!(
        InclusionProof::parse(&inclusion.encode()).expect("parse"),
        inclusion
    );

    let consistency = consistency_proof(4, 10);
    golden("proof_consistency.txt", &consistency.encode());
    assert_eq!(
        ConsistencyProof::parse(&consistency.encode(), 4).expect("parse"),
        consistency
    );

    golden("policy.txt", &policy().encode());
    assert_eq!(Policy::parse(&policy().encode()).expect("parse"), policy());
}

/// Goal: a certificate verifies only with the pinned origin and at least a
/// quorum of distinct valid pinned signatures; errors say valid/needed/failed.
#[test]
fn certificate_quorum_rules() {
    let r = replicas();
    let tree = tree(5);
    let policy = policy();
    let good = certificate(&tree, 5, &[&r[0], &r[1]]);
    let verified = good.verify(&policy).expect("quorum of 2");
    assert_eq!(verified.signers.len(), 2);
    assert_eq!(verified.checkpoint.size, 5);

    let one = certificate(&tree, 5, &[&r[0]]);
    assert_eq!(
        one.verify(&policy),
        Err(CertificateError::QuorumNotMet {
            valid: 1,
            needed: 2,
            failed: vec![]
        })
    );

    // The same replica twice counts once.
    let mut twice = one.clone();
    twice.note.signatures.push(twice.note.signatures[0].clone());
    assert!(matches!(
        twice.verify(&policy),
        Err(CertificateError::QuorumNotMet { valid: 1, .. })
    ));

    // An unpinned key is ignored, even with a pinned key's name.
    let stranger = Signer::from_seed("vellum-replica-1", [0x99; 32]).expect("name");
    let mut with_stranger = one.clone();
    with_stranger.add_signature(&stranger).expect("sign");
    assert!(matches!(
        with_stranger.verify(&policy),
        Err(CertificateError::QuorumNotMet { valid: 1, .. })
    ));

    // A failing pinned signature is named, even when a quorum is met.
    let mut forged = certificate(&tree, 5, &[&r[0], &r[1], &r[2]]);
    forged.note.signatures[2].signature[5] ^= 0x40;
    let error = forged.verify(&policy).expect_err("forged signature");
    assert!(error.to_string().contains("2 valid"), "{error}");
    assert!(error.to_string().contains("vellum-replica-2+"), "{error}");

    let mut other_origin = good.clone();
    other_origin.checkpoint.origin = origin_for_cluster(CLUSTER + 1);
    assert!(matches!(
        other_origin.verify(&policy),
        Err(CertificateError::OriginMismatch { .. })
    ));

    let mut other_root = good.clone();
    other_root.checkpoint.root[0] ^= 1;
    assert_eq!(
        other_root.verify(&policy),
        Err(CertificateError::BodyMismatch)
    );

    let text = good.encode().replacen("\n5\n", "\n6\n", 1);
    let reparsed = Certificate::parse(&text).expect("still well-formed");
    assert!(matches!(
        reparsed.verify(&policy),
        Err(CertificateError::QuorumNotMet { valid: 0, .. })
    ));
}

/// Goal: proofs verify with the policy alone, and any change to the leaf,
/// index, hashes or checkpoint makes them fail.
#[test]
fn proofs_verify_and_tampering_fails() {
    let policy = policy();
    let proof = inclusion_proof(6, 10);
    assert_eq!(proof.verify(&policy).expect("valid").checkpoint.size, 10);

    let mut bad = proof.clone();
    bad.extra = Some(preimage(7));
    assert!(matches!(
        bad.verify(&policy),
        Err(ProofVerifyError::Merkle(_))
    ));
    let mut bad = proof.clone();
    bad.index = 7;
    assert!(matches!(
        bad.verify(&policy),
        Err(ProofVerifyError::Merkle(_))
    ));
    let mut bad = proof.clone();
    bad.hashes[1][0] ^= 1;
    assert!(matches!(
        bad.verify(&policy),
        Err(ProofVerifyError::Merkle(_))
    ));
    let mut bad = proof.clone();
    bad.extra = None;
    assert_eq!(bad.verify(&policy), Err(ProofVerifyError::MissingExtra));

    let consistency = consistency_proof(4, 10);
    let old_root = tree(4).root();
    consistency.verify(&old_root, &policy).expect("valid");
    let mut wrong_old = old_root;
    wrong_old[3] ^= 1;
    assert!(matches!(
        consistency.verify(&wrong_old, &policy),
        Err(ProofVerifyError::Merkle(_))
    ));
    let misread = ConsistencyProof::parse(&consistency.encode(), 5).expect("parse");
    assert!(misread.verify(&tree(5).root(), &policy).is_err());
    let mut resized = consistency.clone();
    resized.new_size = 11;
    assert!(matches!(
        resized.verify(&old_root, &policy),
        Err(ProofVerifyError::SizeMismatch { .. })
    ));
}

/// Goal: malformed proofs and checkpoints are DecodeErrors at the right line.
#[test]
fn malformed_proofs_name_their_line() {
    let text = inclusion_proof(6, 10).encode();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    // Lines: 1 header, 2 extra, 3 index, 4-7 hashes, 8 blank, 9-11 checkpoint,
    // 12 blank, 13-14 signatures.
    let replace = |n: usize, with: &str| {
        let mut l = lines.clone();
        l[n - 1] = with;
        l.concat()
    };
    let cases = [
        (replace(1, "c2sp.org/tlog-proof@v2\n"), 1),
        (replace(2, "extra !!!\n"), 2),
        (replace(3, "index 06\n"), 3),
        (replace(3, "index -1\n"), 3),
        (replace(5, "AAAA\n"), 5),
        (replace(10, "010\n"), 10),
        (replace(11, "notbase64\n"), 11),
        (replace(13, "- vellum-replica-0 AAAAAAA=\n"), 13),
        (lines[..7].concat(), 8),
    ];
    for (input, line) in cases {
        let error = InclusionProof::parse(&input).expect_err(&input);
        assert_eq!(error.location, Location::Line(line), "{error}");
    }
    let body_errors = [
        ("o\n1\n", 3),
        ("o\n1\nAAAA\n", 3),
        ("\n1\nAAAA\n", 1),
        ("o\n1\nr", 3),
    ];
    for (body, line) in body_errors {
        let error = Checkpoint::parse_body(body).expect_err(body);
        assert_eq!(error.location, Location::Line(line), "{body:?}: {error}");
    }
    let consistency = consistency_proof(4, 10).encode();
    let error =
        ConsistencyProof::parse(&consistency.replacen('=', "!", 1), 4).expect_err("bad hash");
    assert_eq!(error.location, Location::Line(1));
}

/// Goal: the policy parser follows tlog-policy's syntax and refuses what
/// Vellum cannot honour, each at the right line.
#[test]
fn policy_parsing_rules() {
    let r = replicas();
    let vkeys: Vec<String> = r.iter().map(|s| s.verifier().to_vkey()).collect();
    let origin = origin_for_cluster(CLUSTER);
    let spec_style = format!(
        "# comment\n\norigin {origin}\n  witness a\t{} https://a.example/\nwitness b {}\nwitness c {}\n\
         group g any a b c\nquorum g\n",
        vkeys[0], vkeys[1], vkeys[2]
    );
    let parsed = Policy::parse(&spec_style).expect("spec-style policy");
    assert_eq!(parsed.quorum, 1);
    assert_eq!(parsed.verifiers.len(), 3);
    let all = spec_style.replace(" any ", " all ");
    assert_eq!(Policy::parse(&all).expect("all").quorum, 3);

    let base = format!(
        "origin {origin}\nwitness a {}\nwitness b {}\n",
        vkeys[0], vkeys[1]
    );
    let cases = [
        (format!("{base}group g 3 a b\nquorum g\n"), 4),
        (format!("{base}group g 0 a b\nquorum g\n"), 4),
        (format!("{base}group g 1 a a\nquorum g\n"), 4),
        (format!("{base}group g 1 a x\nquorum g\n"), 4),
        (format!("{base}quorum none\n"), 4),
        (format!("{base}quorum a\n"), 4),
        (format!("{base}witness c {}\n", vkeys[0]), 4),
        (format!("{base}witness a {}\n", vkeys[2]), 4),
        (format!("{base}log {}\n", vkeys[2]), 4),
        (format!("{base}frobnicate\n"), 4),
        (format!("{base}group g 2 a b\n"), 4),
        (format!("{base}group g 2 a b\nquorum g\norigin x\n"), 6),
        (
            format!("witness a {}\ngroup g 1 a\nquorum g\n", vkeys[0]),
            3,
        ),
        (base.replace(&vkeys[1], &vkeys[1][..20]), 3),
    ];
    for (text, line) in cases {
        let error = Policy::parse(&text).expect_err(&text);
        assert_eq!(error.location, Location::Line(line), "{text}\n{error}");
    }
    let verifiers: Vec<Verifier> = r.iter().map(Signer::verifier).collect();
    assert_eq!(
        Policy::new(&origin, verifiers.clone(), 0),
        Err(PolicyError::QuorumZero)
    );
    assert!(matches!(
        Policy::new(&origin, verifiers.clone(), 4),
        Err(PolicyError::QuorumAboveKeys { .. })
    ));
    let dup = vec![verifiers[0].clone(), verifiers[0].clone()];
    assert!(matches!(
        Policy::new(&origin, dup, 1),
        Err(PolicyError::DuplicateKey { .. })
    ));
    assert!(matches!(
        Policy::new("has space", verifiers, 1),
        Err(PolicyError::InvalidOrigin(_))
    ));
}

/// Goal: the cluster origin is the documented, unique-per-cluster string.
#[test]
fn origin_is_unique_per_cluster() {
    assert_eq!(
        origin_for_cluster(CLUSTER),
        "vellum.local/cluster/0123456789abcdef0123456789abcdef"
    );
    assert_eq!(
        origin_for_cluster(1),
        "vellum.local/cluster/00000000000000000000000000000001"
    );
    assert_ne!(origin_for_cluster(1), origin_for_cluster(2));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Goal: checkpoint bodies round-trip for any size, root and extensions.
    #[test]
    fn checkpoints_round_trip(size in any::<u64>(), root in any::<[u8; 32]>(), cluster in any::<u128>(),
                              extensions in proptest::collection::vec("[a-z0-9 ]{1,20}", 0..3)) {
        let checkpoint = Checkpoint { origin: origin_for_cluster(cluster), size, root, extensions };
        prop_assert_eq!(Checkpoint::parse_body(&checkpoint.body()).expect("parse"), checkpoint);
    }

    /// Goal: inclusion proofs round-trip and verify for any index and size.
    #[test]
    fn inclusion_proofs_round_trip(size in 1u64..64, index_seed in any::<u64>()) {
        let proof = inclusion_proof(index_seed % size, size);
        let parsed = InclusionProof::parse(&proof.encode()).expect("parse");
        prop_assert_eq!(&parsed, &proof);
        prop_assert!(parsed.verify(&policy()).is_ok());
    }

    /// Goal: consistency proofs round-trip and verify for any old ≤ new.
    #[test]
    fn consistency_proofs_round_trip(new in 1u64..64, old_seed in any::<u64>()) {
        let old = 1 + old_seed % new;
        let proof = consistency_proof(old, new);
        let parsed = ConsistencyProof::parse(&proof.encode(), old).expect("parse");
        prop_assert_eq!(&parsed, &proof);
        prop_assert!(parsed.verify(&tree(old).root(), &policy()).is_ok());
    }

    /// Goal: policies round-trip for any keys and quorum.
    #[test]
    fn policies_round_trip(seeds in proptest::collection::hash_set(any::<[u8; 32]>(), 1..6), q in any::<usize>(), cluster in any::<u128>()) {
        let verifiers: Vec<Verifier> = seeds
            .iter()
            .enumerate()
            .map(|(i, seed)| Signer::from_seed(&format!("r{i}.example"), *seed).expect("name").verifier())
            .collect();
        let quorum = 1 + q % verifiers.len();
        let policy = Policy::new(&origin_for_cluster(cluster), verifiers, quorum).expect("valid");
        prop_assert_eq!(Policy::parse(&policy.encode()).expect("parse"), policy);
    }

    /// Goal: decoders never panic on arbitrary text.
    #[test]
    fn decoders_never_panic(input in "(?s).{0,300}") {
        let _ = InclusionProof::parse(&input);
        let _ = ConsistencyProof::parse(&input, 3);
        let _ = Certificate::parse(&input);
        let _ = Policy::parse(&input);
    }
}
