//! Bundles for tests, shared by the bundle tamper suite (`bundle_tamper.rs`)
//! and the verifier page test (`verifier_page.rs`): a real bundle built from
//! a tiny in-test log (RFC 6962 tree, Vellum leaves, a 2-of-3 certificate),
//! the policy that pins its keys, and each kind of tampering as a named case
//! so both verifiers are run on exactly the same bytes.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_audit::checkpoint::{Certificate, Checkpoint, origin_for_cluster};
use vellum_audit::hash::sha256;
use vellum_audit::leaf::{LeafPreimage, commitment};
use vellum_audit::merkle::MerkleTree;
use vellum_audit::note::{Note, Signer};
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;
use vellum_compliance::bundle::{
    BundleRequest, CERTIFICATE_FILE, COSIGNED_FILE, EVENTS_FILE, ExportedEvent, FileEntry,
    MANIFEST_FILE, MANIFEST_SIG_FILE, Manifest, PROOFS_FILE, encode_cosigned, encode_manifest,
    manifest_sig_text, write_bundle,
};

pub const CLUSTER: u128 = 0x0123_4567_89ab_cdef_0123_4567_89ab_cdef;
pub const STREAM: u64 = 1001;
pub const OTHER_STREAM: u64 = 7;

pub fn replicas() -> Vec<Signer> {
    (0..3u8)
        .map(|i| {
            Signer::from_seed(&format!("vellum-replica-{i}"), [0x11 * (i + 1); 32])
                .expect("valid name")
        })
        .collect()
}

pub fn outsider() -> Signer {
    Signer::from_seed("vellum-replica-9", [0x99; 32]).expect("valid name")
}

pub fn policy() -> Policy {
    let verifiers = replicas().iter().map(Signer::verifier).collect();
    Policy::new(&origin_for_cluster(CLUSTER), verifiers, 2).expect("valid policy")
}

/// A tiny log: the stream's `count` events interleaved with another
/// stream's, so positions and offsets differ; plaintexts from `body`.
pub struct TestLog {
    pub certificate: Certificate,
    pub events: Vec<ExportedEvent>,
    pub tree: MerkleTree,
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

pub fn build_log(count: u64, interleave: bool, body: &dyn Fn(u64) -> Vec<u8>) -> TestLog {
    let r = replicas();
    build_log_signed(count, interleave, body, None, &[&r[0], &r[1]])
}

/// [`build_log`] with the certificate signed by `signers` and, with
/// `head_op`, carrying a `vellum-head` line naming that op (what a policy
/// with key rotations needs to pick the keys in force).
pub fn build_log_signed(
    count: u64,
    interleave: bool,
    body: &dyn Fn(u64) -> Vec<u8>,
    head_op: Option<u64>,
    signers: &[&Signer],
) -> TestLog {
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
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size: tree.len(),
        root: tree.root(),
        extensions: head_op
            .map(|op| vellum_audit::verify::chain_head_extension(op, &[0x42; 32]))
            .into_iter()
            .collect(),
    };
    let certificate = Certificate::sign(checkpoint, signers).expect("sign");
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
        tree,
    }
}

pub fn small_body(offset: u64) -> Vec<u8> {
    format!(
        "{{\"resourceType\":\"Observation\",\"id\":\"obs-{offset}\",\"note\":\"a, \\\"b\\\"\"}}"
    )
    .into_bytes()
}

pub fn request(count: u64) -> BundleRequest {
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
pub fn bundle() -> (tempfile::TempDir, PathBuf) {
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

pub fn read(dir: &Path, name: &str) -> String {
    fs::read_to_string(dir.join(name)).expect("read bundle file")
}

pub fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).expect("write bundle file");
}

/// Rewrites the manifest and re-signs it with `signer` (an insider, or an
/// outsider whose key the policy does not pin).
pub fn resign(dir: &Path, manifest: &Manifest, signer: &Signer) {
    let text = encode_manifest(manifest);
    write(dir, MANIFEST_FILE, &text);
    let note =
        Note::sign(&manifest_sig_text(&sha256(&[text.as_bytes()])), &[signer]).expect("sign");
    write(dir, MANIFEST_SIG_FILE, &note.encode());
}

pub fn manifest(dir: &Path) -> Manifest {
    serde_json::from_str(&read(dir, MANIFEST_FILE)).expect("manifest parses")
}

/// Rewrites the lines of an `.ndjson` file through `edit`.
fn edit_lines(dir: &Path, name: &str, edit: impl FnOnce(&mut Vec<String>)) {
    let mut lines: Vec<String> = read(dir, name).lines().map(str::to_string).collect();
    edit(&mut lines);
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    write(dir, name, &text);
}

// ------------------------------------------------------- tampering cases

/// One way to tamper with a bundle: applied to a fresh bundle by
/// [`tamper_cases`] users.
#[derive(Debug, Clone, Copy)]
pub struct TamperCase {
    pub name: &'static str,
    pub apply: fn(&Path),
}

/// Every tampering of the bundle tamper suite, by name.
pub fn tamper_cases() -> Vec<TamperCase> {
    let case = |name, apply| TamperCase { name, apply };
    vec![
        case("edited plaintext", edit_plaintext as fn(&Path)),
        case("dropped event", drop_event),
        case("missing trailer", drop_trailer),
        case("manifest cut in half", cut_manifest_in_half),
        case("manifest cut before its brace", cut_manifest_before_brace),
        case("swapped proofs", swap_proofs),
        case("single-key certificate", single_key_certificate),
        case("manifest signed by an unpinned key", sign_manifest_unpinned),
        case("extra file", add_extra_file),
        case("manifest claims an extra file", claim_extra_file),
        case(
            "manifest signed by another replica",
            sign_manifest_by_other_replica,
        ),
    ]
}

/// Event line 2 (position 3) gets another plaintext.
pub fn edit_plaintext(dir: &Path) {
    edit_lines(dir, EVENTS_FILE, |lines| {
        let mut event: serde_json::Value = serde_json::from_str(&lines[1]).expect("json");
        event["plaintext_utf8"] = "forged".into();
        event["plaintext_base64"] = "Zm9yZ2Vk".into();
        lines[1] = event.to_string();
    });
}

/// Event line 2 is removed; its proof stays.
pub fn drop_event(dir: &Path) {
    edit_lines(dir, EVENTS_FILE, |lines| {
        lines.remove(1);
    });
}

/// The manifest loses its trailer (and no longer matches its signature).
pub fn drop_trailer(dir: &Path) {
    let mut m = manifest(dir);
    m.trailer = None;
    write(dir, MANIFEST_FILE, &encode_manifest(&m));
}

pub fn cut_manifest_in_half(dir: &Path) {
    let text = read(dir, MANIFEST_FILE);
    write(dir, MANIFEST_FILE, &text[..text.len() / 2]);
}

/// A cut just before the closing brace and newline.
pub fn cut_manifest_before_brace(dir: &Path) {
    let text = read(dir, MANIFEST_FILE);
    write(dir, MANIFEST_FILE, text.trim_end().trim_end_matches('}'));
}

/// Proof lines 1 and 2 change places.
pub fn swap_proofs(dir: &Path) {
    edit_lines(dir, PROOFS_FILE, |lines| lines.swap(0, 1));
}

/// certificate.txt is signed by one key only.
pub fn single_key_certificate(dir: &Path) {
    let original = Certificate::parse(&read(dir, CERTIFICATE_FILE)).expect("parse");
    let single = Certificate::sign(original.checkpoint, &[&replicas()[2]]).expect("sign");
    write(dir, CERTIFICATE_FILE, &single.encode());
}

/// A changed manifest, consistently re-signed by a key the policy does not pin.
pub fn sign_manifest_unpinned(dir: &Path) {
    let mut m = manifest(dir);
    m.principal = "someone-else".into();
    resign(dir, &m, &outsider());
}

pub fn add_extra_file(dir: &Path) {
    write(dir, "notes.txt", "not part of the bundle\n");
}

/// The manifest lists a file the format does not have, validly signed.
pub fn claim_extra_file(dir: &Path) {
    let mut m = manifest(dir);
    m.files.push(FileEntry {
        name: "extra.ndjson".into(),
        sha256: "00".repeat(32),
        bytes: 0,
        records: 0,
    });
    resign(dir, &m, &replicas()[0]);
}

/// The manifest is signed by a pinned replica other than its exporter.
pub fn sign_manifest_by_other_replica(dir: &Path) {
    let m = manifest(dir);
    resign(dir, &m, &replicas()[1]);
}

// ------------------------------------------------ cosigned.txt (witnesses)

/// The outside witness of the `cosigned.txt` cases (type 0x04 key).
pub fn witness() -> vellum_audit::cosignature::Cosigner {
    vellum_audit::cosignature::Cosigner::from_seed("witness.example/w1", [0xa1; 32]).expect("name")
}

/// The test policy requiring [`witness`]'s cosignature (`cosigner-quorum 1`).
pub fn witnessed_policy() -> Policy {
    policy()
        .with_cosigners(vec![witness().key()], 1)
        .expect("policy")
}

/// The cosigned size of the `cosigned.txt` cases: below the bundle
/// certificate's 8, and not a power of two (the proof's seed is a hash).
pub const COSIGNED_SIZE: u64 = 5;

/// A checkpoint of `tree` at `size`, signed by two replicas and, if
/// `cosigned`, by [`witness`].
fn cosigned_at(tree: &MerkleTree, size: u64, cosigned: bool) -> Certificate {
    let r = replicas();
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size,
        root: tree.root_at(size).expect("size in the tree"),
        extensions: Vec::new(),
    };
    let mut certificate = Certificate::sign(checkpoint, &[&r[0], &r[1]]).expect("sign");
    if cosigned {
        let line = witness()
            .cosign(&certificate.note.text, 1_700_000_000)
            .expect("cosigns");
        certificate.note.signatures.push(line);
    }
    certificate
}

/// The good `cosigned.txt` of [`bundle`]: the checkpoint of size
/// [`COSIGNED_SIZE`] cosigned by [`witness`], and the consistency proof
/// from it to the bundle's certificate (size 8).
pub fn cosigned_text() -> String {
    let log = build_log(4, true, &small_body);
    let hashes = log
        .tree
        .consistency_proof(COSIGNED_SIZE, log.tree.len())
        .expect("proof");
    vellum_compliance::bundle::encode_cosigned(
        &hashes,
        &cosigned_at(&log.tree, COSIGNED_SIZE, true),
    )
}

/// One `cosigned.txt` case: its name, whether the bundle must pass under
/// [`witnessed_policy`], and what to do to a fresh [`bundle`].
pub struct CosignedCase {
    pub name: &'static str,
    pub passes: bool,
    pub apply: fn(&Path),
}

/// Bundles carrying `cosigned.txt` (an older cosigned checkpoint and the
/// consistency proof to certificate.txt), checked under
/// [`witnessed_policy`] by both verifiers.
pub fn cosigned_cases() -> Vec<CosignedCase> {
    let case = |name, passes, apply| CosignedCase {
        name,
        passes,
        apply,
    };
    vec![
        case(
            "cosigned.txt: cosigned checkpoint and consistency proof",
            true,
            |dir| write(dir, COSIGNED_FILE, &cosigned_text()),
        ),
        case(
            "cosigned.txt: a consistency proof hash changed",
            false,
            |dir| {
                let text = cosigned_text();
                let line = text.lines().nth(1).expect("a hash").to_string();
                let mut bytes = BASE64.decode(&line).expect("base64");
                bytes[0] ^= 0x01;
                write(
                    dir,
                    COSIGNED_FILE,
                    &text.replacen(&line, &BASE64.encode(bytes), 1),
                );
            },
        ),
        case("cosigned.txt: a hash dropped", false, |dir| {
            let text = cosigned_text();
            let line = text.lines().nth(1).expect("a hash").to_string();
            write(
                dir,
                COSIGNED_FILE,
                &text.replacen(&format!("{line}\n"), "", 1),
            );
        }),
        case("cosigned.txt: the cosignature flipped", false, |dir| {
            let text = cosigned_text();
            let at = text.len() - 12;
            let mut bytes = text.into_bytes();
            bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
            write(
                dir,
                COSIGNED_FILE,
                &String::from_utf8(bytes).expect("ascii"),
            );
        }),
        case("cosigned.txt: no cosignature", false, |dir| {
            let log = build_log(4, true, &small_body);
            let hashes = log.tree.consistency_proof(COSIGNED_SIZE, 8).expect("proof");
            let cosigned = cosigned_at(&log.tree, COSIGNED_SIZE, false);
            write(dir, COSIGNED_FILE, &encode_cosigned(&hashes, &cosigned));
        }),
        case("cosigned.txt: a fork the witness cosigned", false, |dir| {
            // Another history of the same size, signed and cosigned: the
            // consistency proof cannot lead from it to certificate.txt.
            let log = build_log(4, true, &small_body);
            let mut fork = MerkleTree::new();
            for i in 0..COSIGNED_SIZE {
                fork.push(sha256(&[b"another history", &i.to_le_bytes()]));
            }
            let hashes = log.tree.consistency_proof(COSIGNED_SIZE, 8).expect("proof");
            let cosigned = cosigned_at(&fork, COSIGNED_SIZE, true);
            write(dir, COSIGNED_FILE, &encode_cosigned(&hashes, &cosigned));
        }),
        case(
            "cosigned.txt: cosigned above the certificate",
            false,
            |dir| {
                let log = build_log(5, true, &small_body);
                let cosigned = cosigned_at(&log.tree, 10, true);
                write(dir, COSIGNED_FILE, &encode_cosigned(&[], &cosigned));
            },
        ),
        case("cosigned.txt: with cosignatures.txt too", false, |dir| {
            write(dir, COSIGNED_FILE, &cosigned_text());
            let certificate = Certificate::parse(&read(dir, CERTIFICATE_FILE)).expect("parse");
            let line = witness()
                .cosign(&certificate.note.text, 1_700_000_000)
                .expect("cosigns")
                .line();
            write(dir, "cosignatures.txt", &line);
        }),
        case("cosigned.txt: another first line", false, |dir| {
            let text = cosigned_text().replacen("vellum-cosigned/v1", "vellum-cosigned/v2", 1);
            write(dir, COSIGNED_FILE, &text);
        }),
        case("cosigned.txt: no blank line", false, |dir| {
            let text = cosigned_text();
            let cut = text.find("\n\n").expect("blank line");
            write(dir, COSIGNED_FILE, &text[..cut + 1]);
        }),
        case("cosigned.txt: a hash that is not base64", false, |dir| {
            let text = cosigned_text();
            let line = text.lines().nth(2).expect("a hash").to_string();
            write(dir, COSIGNED_FILE, &text.replacen(&line, "not base64!", 1));
        }),
        case("cosigned.txt: the certificate cut", false, |dir| {
            let text = cosigned_text();
            let cut = text.rfind("\n\n").expect("signatures");
            write(dir, COSIGNED_FILE, &text[..cut + 1]);
        }),
    ]
}
