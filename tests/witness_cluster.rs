//! A witness fed from a live three-replica cluster over loopback:
//! `vellum witness submit` writes a cosigned certificate that verifies under
//! a policy requiring the witness, the bare certificate does not, a second
//! submission moves the witness forward with the cluster's consistency
//! proof, and an inclusion proof whose certificate carries the cosignature
//! verifies under that policy.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use vellum::client::{Client, ClientConfig};
use vellum::local_cluster::LocalCluster;
use vellum_audit::checkpoint::{Certificate, CertificateError};
use vellum_audit::cosignature::CosignerKey;
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;

mod support;
use support::{TestDir, vellum_cli, vellum_exe};

fn auditor(cluster: &LocalCluster) -> Client {
    let mut config = ClientConfig::new(
        cluster.dev.api_urls.clone(),
        cluster.dev.auditor_token.clone(),
    );
    config.ca_pem = Some(cluster.ca_pem().to_vec());
    Client::new(config).expect("client")
}

/// Goal: cosignatures from a witness fed by `vellum witness submit` satisfy
/// a witness quorum; certificates without them do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_cosigns_a_live_cluster() {
    let dir = TestDir::new("vellum-witness");
    let mut cluster =
        LocalCluster::start(&dir.path().join("cluster"), 3, vellum_exe()).expect("cluster starts");
    cluster
        .wait_primary(Duration::from_secs(60))
        .await
        .expect("primary");
    let writer = cluster.client(None).expect("writer");
    for i in 0..3 {
        let event = Bytes::from(format!("{{\"n\":{i}}}"));
        writer
            .append(1001, vec![event], None)
            .await
            .expect("append");
    }
    let policy_text = std::fs::read_to_string(&cluster.dev.policy_path).expect("policy");
    let policy = Policy::parse(&policy_text).expect("policy parses");

    let witness_dir = dir.path().join("witness");
    let witness = vellum::witness::open(&witness_dir, "witness.test/w1", vec![policy.clone()])
        .await
        .expect("witness opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = vellum::witness::server::serve(listener, Arc::new(witness)).await;
    });
    let vkey = std::fs::read_to_string(witness_dir.join("witness.vkey")).expect("vkey");
    let key = CosignerKey::parse_vkey(vkey.trim_end()).expect("vkey parses");
    let witnessed = policy.clone().with_cosigners(vec![key], 1).expect("policy");

    let cluster_dir = dir.path().join("cluster");
    bundle_cosigned_by_witness_verifies(dir.path(), &url, &witnessed).await;

    let out = dir.path().join("cosigned.txt");
    let args: Vec<String> = vec![
        "witness".into(),
        "submit".into(),
        "--cluster".into(),
        cluster_dir.display().to_string(),
        "--witness".into(),
        url.clone(),
        "--out".into(),
        out.display().to_string(),
    ];
    let (code, _, stderr) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vellum_cli(&args)
    })
    .await
    .expect("cli runs");
    assert_eq!(code, 0, "{stderr}");
    let cosigned =
        Certificate::parse(&std::fs::read_to_string(&out).expect("out")).expect("parses");
    let verified = cosigned
        .verify(&witnessed)
        .expect("cosigned certificate verifies");
    assert_eq!(verified.cosigners.len(), 1);
    let first_size = cosigned.checkpoint.size;

    let client = auditor(&cluster);
    let bare = Certificate::parse(&client.certificate().await.expect("certificate").certificate)
        .expect("parses");
    assert!(bare.verify(&policy).is_ok());
    assert!(matches!(
        bare.verify(&witnessed),
        Err(CertificateError::WitnessQuorumNotMet { .. })
    ));

    for i in 3..5 {
        let event = Bytes::from(format!("{{\"n\":{i}}}"));
        writer
            .append(1001, vec![event], None)
            .await
            .expect("append");
    }
    let second = vellum::witness::submit::submit(&client, &url)
        .await
        .expect("second submit");
    assert!(second.size > first_size, "{} > {first_size}", second.size);
    let second_cert = Certificate::parse(&second.cosigned).expect("parses");
    assert!(second_cert.verify(&witnessed).is_ok());

    // An inclusion proof: cosign its own certificate, attach the line.
    let answer = client.proof(1001, 0).await.expect("proof");
    let mut proof = InclusionProof::parse(&answer.proof).expect("proof parses");
    assert!(proof.verify(&witnessed).is_err(), "no cosignature yet");
    let size = proof.checkpoint.checkpoint.size;
    let mut body = format!("old {}\n", second.size);
    if size > second.size {
        let consistency = client
            .consistency(second.size, Some(size))
            .await
            .expect("consistency");
        for hex in consistency.hashes {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            body.push_str(&BASE64.encode(bytes));
            body.push('\n');
        }
    }
    body.push('\n');
    body.push_str(&proof.checkpoint.encode());
    let response = reqwest::Client::new()
        .post(format!("{url}/add-checkpoint"))
        .body(body)
        .send()
        .await
        .expect("witness answers");
    assert_eq!(response.status().as_u16(), 200);
    let lines = response.text().await.expect("body");
    let lines = vellum_audit::cosignature::parse_signature_lines(&lines).expect("lines");
    proof.checkpoint.note.signatures.extend(lines);
    let reparsed = InclusionProof::parse(&proof.encode()).expect("cosigned proof parses");
    reparsed
        .verify(&witnessed)
        .expect("cosigned proof verifies");

    server.abort();
    cluster.stop().expect("cluster stops");
}

/// Runs the CLI off the async runtime.
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vellum_cli(&args)
    })
    .await
    .expect("cli runs")
}

/// An export bundle verifies under a witness-quorum policy only with the
/// witness's `cosignatures.txt`; a tampered cosignature fails, naming the
/// certificate check.
async fn bundle_cosigned_by_witness_verifies(dir: &std::path::Path, url: &str, witnessed: &Policy) {
    let cluster = dir.join("cluster").display().to_string();
    let bundle = dir.join("bundle");
    let policy_file = dir.join("witnessed-policy.txt");
    std::fs::write(&policy_file, witnessed.encode()).expect("policy file");
    let s = |x: &str| x.to_string();
    let b = bundle.display().to_string();
    let p = policy_file.display().to_string();
    let (code, _, stderr) = cli(vec![
        s("export"),
        s("events"),
        s("--cluster"),
        cluster.clone(),
        s("--stream"),
        s("1001"),
        s("--from"),
        s("0"),
        s("--to"),
        s("3"),
        s("--out"),
        b.clone(),
    ])
    .await;
    assert_eq!(code, 0, "export: {stderr}");
    let verify = vec![
        s("verify"),
        s("--bundle"),
        b.clone(),
        s("--policy"),
        p.clone(),
    ];
    let (code, stdout, _) = cli(verify.clone()).await;
    assert_ne!(code, 0, "no cosignature yet: {stdout}");
    assert!(stdout.contains("bundle certificate"), "{stdout}");

    let (code, _, stderr) = cli(vec![
        s("witness"),
        s("submit"),
        s("--cluster"),
        cluster,
        s("--witness"),
        s(url),
        s("--bundle"),
        b.clone(),
    ])
    .await;
    assert_eq!(code, 0, "submit --bundle: {stderr}");
    let (code, stdout, stderr) = cli(verify.clone()).await;
    assert_eq!(code, 0, "cosigned bundle verifies: {stdout}{stderr}");
    assert!(
        stdout.contains("witness.test/w1"),
        "names the witness: {stdout}"
    );

    let path = bundle.join("cosignatures.txt");
    let good = std::fs::read_to_string(&path).expect("cosignatures");
    let mut bytes = good.clone().into_bytes();
    let at = bytes.len() - 10;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&path, bytes).expect("tamper");
    let (code, stdout, _) = cli(verify).await;
    assert_ne!(code, 0, "tampered cosignature: {stdout}");
    std::fs::write(&path, good).expect("restore");
}

/// `vellum verify --cluster DIR --policy P`: exit code and stdout.
async fn verify_cluster(cluster_dir: &std::path::Path, policy: &std::path::Path) -> (i32, String) {
    let (code, stdout, stderr) = cli(vec![
        "verify".into(),
        "--cluster".into(),
        cluster_dir.display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
    ])
    .await;
    (code, format!("{stdout}{stderr}"))
}

/// Owned CLI arguments.
fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// Copies directory `from` to `to` (`cp -a`: keys keep their modes).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Appends `n` events `{"history":"<tag>","n":i}` to stream 1001.
async fn append_history(cluster: &LocalCluster, tag: &str, n: usize) {
    cluster
        .wait_primary(Duration::from_secs(60))
        .await
        .expect("primary");
    let writer = cluster.client(None).expect("writer");
    for i in 0..n {
        let event = Bytes::from(format!("{{\"history\":\"{tag}\",\"n\":{i}}}"));
        writer
            .append(1001, vec![event], None)
            .await
            .expect("append");
    }
}

/// Goal: `vellum verify --cluster` with a witness quorum in the policy
/// checks the cosignatures the replicas kept: it passes on the history the
/// witness cosigned; it fails naming the kept file when a cosignature is
/// forged; and when the operator rewrites the whole history (every replica
/// started again from its pristine directory, the same keys re-signing
/// another history, the old kept cosignatures left in place), the
/// replica-only policy accepts the cluster but the witness policy fails at
/// the kept file (the cosigned root is not the log's), and with the kept
/// files removed it fails the witness quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_cluster_checks_kept_cosignatures_and_catches_a_rewrite() {
    let dir = TestDir::new("vellum-witness-verify-cluster");
    let cluster_dir = dir.path().join("cluster");
    let pristine = dir.path().join("pristine");
    let mut cluster = LocalCluster::start_prepared(&cluster_dir, 3, vellum_exe(), |dev| {
        copy_dir(&dev.dir, &pristine);
        Ok(())
    })
    .expect("cluster starts");
    append_history(&cluster, "a", 3).await;
    let primary = cluster
        .wait_primary(Duration::from_secs(60))
        .await
        .expect("primary");
    let certificate = Certificate::parse(
        &auditor(&cluster)
            .certificate()
            .await
            .expect("certificate")
            .certificate,
    )
    .expect("certificate parses");
    cluster.stop().expect("cluster stops");

    // A witness cosigns history A; the primary keeps it (as its feeder does).
    let witness =
        vellum_audit::cosignature::Cosigner::from_seed("witness.test/w1", [8; 32]).expect("name");
    let key = witness.key();
    let line = witness
        .cosign(&certificate.note.text, 1_700_000_000)
        .expect("cosigns")
        .line();
    let kept = vellum::witness::kept::accept(&key, &certificate, &line).expect("valid line");
    let primary_dir = cluster.data_dir(usize::from(primary));
    vellum::witness::kept::save(&primary_dir, &key, &kept).expect("kept");
    let kept_path = vellum::witness::kept::path_for(&primary_dir, &key);
    let replica_policy = cluster.dev.policy_path.clone();
    let policy = Policy::parse(&std::fs::read_to_string(&replica_policy).expect("policy"))
        .expect("policy parses");
    let witnessed_path = dir.path().join("witnessed.txt");
    let witnessed = policy.with_cosigners(vec![key.clone()], 1).expect("policy");
    std::fs::write(&witnessed_path, witnessed.encode()).expect("policy file");

    let (code, out) = verify_cluster(&cluster_dir, &witnessed_path).await;
    assert_eq!(code, 0, "history A under the witness policy: {out}");
    assert!(out.contains("witness cosignatures"), "{out}");

    // `--since` of a kept cluster report under the witness policy reads
    // every log whole (the kept cosignature's root is at a size before the
    // report's, which an incremental walk does not hold) and passes.
    let report_path = dir.path().join("report.json");
    let (code, _, stderr) = cli(strings(&[
        "verify",
        "--cluster",
        &cluster_dir.display().to_string(),
        "--policy",
        &witnessed_path.display().to_string(),
        "--json",
        "--output",
        &report_path.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 0, "kept report: {stderr}");
    let (code, stdout, stderr) = cli(strings(&[
        "verify",
        "--cluster",
        &cluster_dir.display().to_string(),
        "--policy",
        &witnessed_path.display().to_string(),
        "--since",
        &report_path.display().to_string(),
    ]))
    .await;
    assert_eq!(
        code, 0,
        "--since under the witness policy: {stdout}{stderr}"
    );
    assert!(
        stdout.contains("not incremental: a witness policy reads the whole log"),
        "{stdout}"
    );

    // A forged cosignature: one character of its base64 changed.
    let good = std::fs::read_to_string(&kept_path).expect("kept file");
    let at = good.len() - 12;
    let mut forged = good.clone().into_bytes();
    forged[at] = if forged[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(&kept_path, &forged).expect("forge");
    let (code, out) = verify_cluster(&cluster_dir, &witnessed_path).await;
    assert_ne!(code, 0, "forged cosignature: {out}");
    assert!(
        out.contains(&kept_path.display().to_string()),
        "names the file: {out}"
    );
    std::fs::write(&kept_path, &good).expect("restore");

    // The rewrite: every replica from its pristine directory, the kept
    // cosignatures of history A left in place, then another history.
    for i in 0..3 {
        let data = cluster.data_dir(i);
        let saved = dir.path().join(format!("kept-r{i}"));
        let kept_dir = data.join(vellum::witness::kept::DIR_NAME);
        if kept_dir.exists() {
            std::fs::rename(&kept_dir, &saved).expect("save kept");
        }
        std::fs::remove_dir_all(&data).expect("remove replica");
        copy_dir(&pristine.join(format!("r{i}")), &data);
        if saved.exists() {
            std::fs::rename(&saved, &kept_dir).expect("keep kept");
        }
    }
    let mut cluster = LocalCluster::start(&cluster_dir, 3, vellum_exe()).expect("restarts");
    append_history(&cluster, "b", 8).await;
    cluster.stop().expect("cluster stops");

    let (code, out) = verify_cluster(&cluster_dir, &replica_policy).await;
    assert_eq!(code, 0, "every replica key signed history B: {out}");
    let (code, out) = verify_cluster(&cluster_dir, &witnessed_path).await;
    assert_ne!(code, 0, "rewritten history under the witness policy: {out}");
    assert!(
        out.contains(&kept_path.display().to_string()),
        "names the file: {out}"
    );
    assert!(out.contains("not the history the witness saw"), "{out}");

    std::fs::remove_file(&kept_path).expect("remove kept");
    let (code, out) = verify_cluster(&cluster_dir, &witnessed_path).await;
    assert_ne!(code, 0, "no kept cosignature: {out}");
    assert!(
        out.contains("0 pinned witnesses cosigned a checkpoint of this log"),
        "{out}"
    );
}
