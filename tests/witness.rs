//! The outside witness over loopback HTTP (c2sp.org/tlog-witness): it
//! cosigns consistent checkpoints, refuses a rewritten history re-signed by
//! every replica key, refuses rollbacks, keeps its state across a restart,
//! and answers odd input with a 4xx, never a 5xx.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use vellum_audit::checkpoint::{Certificate, CertificateError, Checkpoint, origin_for_cluster};
use vellum_audit::cosignature::{CosignerKey, check_cosignatures, parse_signature_lines};
use vellum_audit::merkle::{MerkleTree, leaf_hash};
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;

const CLUSTER: u128 = 0x0fed_cba9_8765_4321_0fed_cba9_8765_4321;
const WITNESS_NAME: &str = "witness.test/w1";

fn replicas() -> Vec<Signer> {
    (0..3u8)
        .map(|i| Signer::from_seed(&format!("vellum-test-r{i}"), [0x21 + i; 32]).expect("name"))
        .collect()
}

fn policy() -> Policy {
    let verifiers = replicas().iter().map(Signer::verifier).collect();
    Policy::new(&origin_for_cluster(CLUSTER), verifiers, 2).expect("valid policy")
}

/// A tree of `size` leaves; `fork` changes leaf 2 (a rewritten history).
fn tree(size: u64, fork: bool) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..size {
        let leaf = if fork && i == 2 {
            "rewritten".to_owned()
        } else {
            format!("event-{i}")
        };
        tree.push(leaf_hash(leaf.as_bytes()));
    }
    tree
}

fn certificate(tree: &MerkleTree, signers: &[&Signer]) -> Certificate {
    let checkpoint = Checkpoint {
        origin: origin_for_cluster(CLUSTER),
        size: tree.len(),
        root: tree.root(),
        extensions: vec![format!("vellum-head {} {}", tree.len(), "ab".repeat(32))],
    };
    Certificate::sign(checkpoint, signers).expect("sign")
}

fn all_replicas(tree: &MerkleTree) -> Certificate {
    let r = replicas();
    certificate(tree, &[&r[0], &r[1], &r[2]])
}

fn body(old: u64, tree: &MerkleTree, certificate: &Certificate) -> String {
    let mut out = format!("old {old}\n");
    if old > 0 && old < tree.len() {
        for hash in tree.consistency_proof(old, tree.len()).expect("proof") {
            out.push_str(&BASE64.encode(hash));
            out.push('\n');
        }
    }
    out.push('\n');
    out.push_str(&certificate.encode());
    out
}

struct Running {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

async fn start(dir: &Path) -> Running {
    let witness = vellum::witness::open(dir, WITNESS_NAME, vec![policy()])
        .await
        .expect("witness opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = vellum::witness::server::serve(listener, Arc::new(witness)).await;
    });
    Running { addr, task }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

async fn post(addr: SocketAddr, body: impl Into<reqwest::Body>) -> Answer {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/add-checkpoint"))
        .timeout(std::time::Duration::from_secs(10))
        .body(body)
        .send()
        .await
        .expect("witness answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    Answer {
        status,
        content_type,
        body,
    }
}

fn witness_key(dir: &Path) -> CosignerKey {
    let text = std::fs::read_to_string(dir.join("witness.vkey")).expect("vkey file");
    CosignerKey::parse_vkey(text.trim_end()).expect("vkey parses")
}

/// The answer's cosignature verifies on the submitted checkpoint.
fn assert_cosigned(answer: &Answer, certificate: &Certificate, key: &CosignerKey) -> Certificate {
    assert_eq!(answer.status, 200, "{}", answer.body);
    let mut cosigned = certificate.clone();
    cosigned
        .note
        .signatures
        .extend(parse_signature_lines(&answer.body).expect("signature lines"));
    let check = check_cosignatures(&cosigned.note, std::slice::from_ref(key));
    assert_eq!(check.valid.len(), 1, "{check:?}");
    cosigned
}

/// Goal: a rewritten history, re-signed by every replica key, is refused
/// (422 from a larger size, 409 at the same size), and a policy with a
/// witness quorum refuses the rewritten certificate that lacks a cosignature.
#[tokio::test]
async fn rewritten_history_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = start(dir.path()).await;
    let key = witness_key(dir.path());
    let honest = tree(4, false);
    let answer = post(witness.addr, body(0, &honest, &all_replicas(&honest))).await;
    let cosigned = assert_cosigned(&answer, &all_replicas(&honest), &key);

    let forged = tree(9, true);
    let forged_cert = all_replicas(&forged);
    let answer = post(witness.addr, body(4, &forged, &forged_cert)).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let same_size = tree(4, true);
    let answer = post(witness.addr, body(4, &same_size, &all_replicas(&same_size))).await;
    assert_eq!(answer.status, 409, "{}", answer.body);

    let witnessed = policy().with_cosigners(vec![key], 1).expect("policy");
    assert!(matches!(
        forged_cert.verify(&witnessed),
        Err(CertificateError::WitnessQuorumNotMet { .. })
    ));
    assert!(cosigned.verify(&witnessed).is_ok());
    // The honest continuation is still cosigned.
    let next = tree(9, false);
    let answer = post(witness.addr, body(4, &next, &all_replicas(&next))).await;
    assert_cosigned(&answer, &all_replicas(&next), &witness_key(dir.path()));
    witness.task.abort();
}

/// Goal: a smaller checkpoint after a larger one is refused, with the spec's
/// 409 body and content type; resubmitting the witnessed one is fine.
#[tokio::test]
async fn rollback_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = start(dir.path()).await;
    let key = witness_key(dir.path());
    let big = tree(9, false);
    let small = tree(4, false);
    assert_cosigned(
        &post(witness.addr, body(0, &big, &all_replicas(&big))).await,
        &all_replicas(&big),
        &key,
    );
    let answer = post(witness.addr, body(0, &small, &all_replicas(&small))).await;
    assert_eq!((answer.status, answer.body.as_str()), (409, "9\n"));
    assert_eq!(answer.content_type, "text/x.tlog.size");
    let answer = post(witness.addr, body(4, &small, &all_replicas(&small))).await;
    assert_eq!((answer.status, answer.body.as_str()), (409, "9\n"));
    let answer = post(witness.addr, body(9, &small, &all_replicas(&small))).await;
    assert_eq!(
        answer.status, 400,
        "old above the checkpoint size: {}",
        answer.body
    );
    let answer = post(witness.addr, body(9, &big, &all_replicas(&big))).await;
    assert_cosigned(&answer, &all_replicas(&big), &key);
    witness.task.abort();
}

/// Goal: a restarted witness keeps its key and its state: same answers.
#[tokio::test]
async fn restart_keeps_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = start(dir.path()).await;
    let key = witness_key(dir.path());
    let t = tree(6, false);
    assert_cosigned(
        &post(first.addr, body(0, &t, &all_replicas(&t))).await,
        &all_replicas(&t),
        &key,
    );
    first.task.abort();
    let _ = first.task.await;

    let second = start(dir.path()).await;
    assert_eq!(witness_key(dir.path()), key, "same key after restart");
    let answer = post(second.addr, body(0, &t, &all_replicas(&t))).await;
    assert_eq!((answer.status, answer.body.as_str()), (409, "6\n"));
    let forked = tree(6, true);
    let answer = post(second.addr, body(6, &forked, &all_replicas(&forked))).await;
    assert_eq!(answer.status, 409);
    let answer = post(second.addr, body(6, &t, &all_replicas(&t))).await;
    assert_cosigned(&answer, &all_replicas(&t), &key);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("witness.key"))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    second.task.abort();
}

/// Goal: odd inputs get a 4xx naming the spec's status, never a 5xx or a
/// panic, and the witness still works afterwards.
#[tokio::test]
async fn odd_inputs_get_4xx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = start(dir.path()).await;
    let t = tree(5, false);
    let good = body(0, &t, &all_replicas(&t));
    let cert = all_replicas(&t).encode();
    let r = replicas();
    let stranger = Signer::from_seed("vellum-test-r0", [0x99; 32]).expect("name");
    let other_origin = {
        let mut c = all_replicas(&t);
        c.checkpoint.origin = origin_for_cluster(CLUSTER + 1);
        let r = replicas();
        Certificate::sign(c.checkpoint, &[&r[0], &r[1]])
            .expect("sign")
            .encode()
    };
    let huge_size = {
        let checkpoint = Checkpoint {
            origin: origin_for_cluster(CLUSTER),
            size: u64::MAX,
            root: [7; 32],
            extensions: Vec::new(),
        };
        Certificate::sign(checkpoint, &[&r[0], &r[1]])
            .expect("sign")
            .encode()
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("no body", Vec::new(), 400),
        ("huge body", vec![b'a'; 200 * 1024], 413),
        ("not utf-8", vec![0xff, 0xfe, b'\n'], 400),
        ("no old line", format!("\n{cert}").into_bytes(), 400),
        (
            "old with a leading zero",
            format!("old 00\n\n{cert}").into_bytes(),
            400,
        ),
        (
            "old with a plus",
            format!("old +1\n\n{cert}").into_bytes(),
            400,
        ),
        (
            "old 2^64-1",
            format!("old {}\n\n{cert}", u64::MAX).into_bytes(),
            400,
        ),
        (
            "old 2^64",
            format!("old 18446744073709551616\n\n{cert}").into_bytes(),
            400,
        ),
        (
            "bad base64 proof",
            format!("old 0\n!!!notbase64\n\n{cert}").into_bytes(),
            400,
        ),
        (
            "short proof hash",
            format!("old 0\nAAAA\n\n{cert}").into_bytes(),
            400,
        ),
        (
            "64 proof lines",
            format!(
                "old 0\n{}\n{cert}",
                format!("{}\n", BASE64.encode([1u8; 32])).repeat(64)
            )
            .into_bytes(),
            400,
        ),
        ("no empty line", format!("old 0\n{cert}").into_bytes(), 400),
        ("no checkpoint", b"old 0\n\n".to_vec(), 400),
        (
            "wrong origin",
            format!("old 0\n\n{other_origin}").into_bytes(),
            404,
        ),
        (
            "signed by one replica",
            format!("old 0\n\n{}", certificate(&t, &[&r[0]]).encode()).into_bytes(),
            403,
        ),
        (
            "signed by unknown keys",
            format!("old 0\n\n{}", certificate(&t, &[&stranger]).encode()).into_bytes(),
            403,
        ),
        (
            "proof from size 0",
            format!("old 0\n{}\n\n{cert}", BASE64.encode([1u8; 32])).into_bytes(),
            422,
        ),
    ];
    for (name, request, status) in cases {
        let answer = post(witness.addr, request).await;
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
    }
    // A size of 2^64-1 signed by the quorum is a valid first checkpoint, and
    // then the only acceptable old size is 2^64-1.
    let answer = post(witness.addr, format!("old 0\n\n{huge_size}")).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let answer = post(witness.addr, good).await;
    assert_eq!(
        (answer.status, answer.body.clone()),
        (409, format!("{}\n", u64::MAX))
    );
    let answer = post(witness.addr, format!("old {}\n\n{huge_size}", u64::MAX)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let get = reqwest::get(format!("http://{}/add-checkpoint", witness.addr))
        .await
        .expect("get");
    assert_eq!(get.status().as_u16(), 405);
    witness.task.abort();
}

/// Goal: check and persist are atomic: of many concurrent requests from the
/// same old size, exactly one is cosigned and the rest get 409 with the
/// size that one stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_cosign_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let witness = start(dir.path()).await;
    let mut tasks = Vec::new();
    for size in 3..11u64 {
        let t = tree(size, false);
        let request = body(0, &t, &all_replicas(&t));
        let addr = witness.addr;
        tasks.push(tokio::spawn(
            async move { (size, post(addr, request).await) },
        ));
    }
    let mut cosigned = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        let (size, answer) = task.await.expect("task");
        match answer.status {
            200 => cosigned.push(size),
            409 => refused.push(answer.body),
            other => panic!("size {size}: unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!(cosigned.len(), 1, "{cosigned:?}");
    let stored = format!("{}\n", cosigned[0]);
    assert!(
        refused.iter().all(|b| *b == stored),
        "{refused:?} vs {stored:?}"
    );
    witness.task.abort();
}

/// Goal: a witness key that group or others can read is refused at start.
#[tokio::test]
async fn readable_key_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    vellum::witness::open(dir.path(), WITNESS_NAME, vec![policy()])
        .await
        .expect("first start creates the key");
    let key = dir.path().join("witness.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let error = vellum::witness::open(dir.path(), WITNESS_NAME, vec![policy()])
        .await
        .expect_err("readable key refused");
    assert!(error.to_string().contains("chmod 600"), "{error}");
}
