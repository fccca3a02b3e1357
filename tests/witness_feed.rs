//! The primary feeds witnesses by itself: a live three-replica cluster
//! whose replicas' policy names a real witness and a misbehaving one (each
//! with a URL, `cosigner-quorum 0`). One cluster serves every check, in
//! order: cosignatures arrive without any `witness submit`; the kept file
//! verifies under the policy's key; garbage, a 2^64-1 size and a
//! cosignature under another key are counted and never kept; appends go on
//! while the witness is stopped, within their normal time; cosignatures
//! resume after it restarts; a bundle exported afterwards passes `verify
//! --bundle` under a witness-quorum policy and a served proof carries the
//! cosignature; after `kill -9` of the primary the new primary goes on
//! submitting; `vellum verify --cluster` passes after each fault.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use bytes::Bytes;
use vellum::local_cluster::LocalCluster;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::cosignature::Cosigner;
use vellum_audit::policy::Policy;
use vellum_audit::proof::InclusionProof;

mod support;
use support::{TestDir, vellum_cli, vellum_exe};

const WITNESS: &str = "witness.test/w1";
const ROGUE: &str = "witness.test/rogue";
const STREAM: u64 = 1001;
/// Longest wait for a cosignature to arrive (the feeder looks every 100 ms).
const COSIGN_WAIT: Duration = Duration::from_secs(30);

/// What the misbehaving witness answers.
const GARBAGE: u8 = 0;
const HUGE_SIZE: u8 = 1;
const OTHER_KEY: u8 = 2;
const BAD_SIGNATURE: u8 = 3;
/// Accepts the request and answers nothing for a minute (a hung witness).
const HANG: u8 = 4;

async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vellum_cli(&args)
    })
    .await
    .expect("cli runs")
}

/// `vellum export events --cluster DIR --stream 1001 --from 0 --to TO --out OUT`.
async fn export_stream_1001(
    cluster_dir: &std::path::Path,
    to: u64,
    out: &std::path::Path,
) -> (i32, String, String) {
    let (dir, to, out) = (
        cluster_dir.display().to_string(),
        to.to_string(),
        out.display().to_string(),
    );
    cli(strings(&[
        "export",
        "events",
        "--cluster",
        &dir,
        "--stream",
        "1001",
        "--from",
        "0",
        "--to",
        &to,
        "--out",
        &out,
    ]))
    .await
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| (*s).to_string()).collect()
}

/// A witness that answers every request the way `mode` says; its pinned
/// key is `pinned`, but it never signs with it correctly.
async fn rogue_witness(listener: tokio::net::TcpListener, mode: Arc<AtomicU8>, pinned: Cosigner) {
    let other = Cosigner::from_seed(ROGUE, [0x55; 32]).expect("name");
    let app = axum::Router::new().route(
        "/add-checkpoint",
        axum::routing::post(move |body: Bytes| {
            let (mode, pinned, other) = (Arc::clone(&mode), pinned.clone(), other.clone());
            async move {
                let text = String::from_utf8_lossy(&body).into_owned();
                let note = text.split_once("\n\n").map_or("", |(_, n)| n);
                let note_text = Certificate::parse(note)
                    .map(|c| c.note.text)
                    .unwrap_or_default();
                match mode.load(Ordering::SeqCst) {
                    GARBAGE => (StatusCode::OK, "\u{1}not a signature line\n").into_response(),
                    HUGE_SIZE => (
                        StatusCode::CONFLICT,
                        [(header::CONTENT_TYPE, "text/x.tlog.size")],
                        "18446744073709551615\n",
                    )
                        .into_response(),
                    HANG => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        (StatusCode::OK, "").into_response()
                    }
                    OTHER_KEY => {
                        let line = other.cosign(&note_text, 1).expect("cosigns").line();
                        (StatusCode::OK, line).into_response()
                    }
                    _ => {
                        // The pinned name and key id, over another text.
                        let line = pinned.cosign("forged\n", 1).expect("cosigns").line();
                        (StatusCode::OK, line).into_response()
                    }
                }
            }
        }),
    );
    let _ = axum::serve(listener, app).await;
}

/// Starts the real witness on `listener` (its key in `dir`).
fn start_witness(
    dir: &std::path::Path,
    policy: &Policy,
    listener: std::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let (dir, policy) = (dir.to_owned(), policy.clone());
    tokio::spawn(async move {
        let witness = vellum::witness::open(&dir, WITNESS, vec![policy])
            .await
            .expect("witness opens");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let _ = vellum::witness::server::serve(listener, Arc::new(witness)).await;
    })
}

fn metric_key(family: &str, witness: &str) -> String {
    format!("{family}{{witness=\"{witness}\"}}")
}

/// The value of `family` for `witness` on replica `replica`.
async fn witness_metric(cluster: &LocalCluster, replica: u8, family: &str, witness: &str) -> u64 {
    cluster.metric_all(&metric_key(family, witness)).await[usize::from(replica)].unwrap_or(0)
}

/// Waits until the primary `replica` keeps a cosignature of the real witness
/// for a size of at least `size`; returns how long it took.
async fn wait_cosigned(cluster: &LocalCluster, replica: u8, size: u64) -> Duration {
    let started = Instant::now();
    loop {
        let got = witness_metric(cluster, replica, "vellum_witness_cosigned_size", WITNESS).await;
        if got >= size {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < COSIGN_WAIT,
            "replica {replica}: cosigned size {got}, waited for {size}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends `n` events and returns each append's latency.
async fn append_timed(writer: &vellum::client::Client, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        writer
            .append(STREAM, vec![Bytes::from(format!("{{\"n\":{i}}}"))], None)
            .await
            .expect("append");
        times.push(started.elapsed());
    }
    times
}

fn max(times: &[Duration]) -> Duration {
    times.iter().copied().max().unwrap_or_default()
}

async fn verify_cluster(cluster_dir: &std::path::Path, policy: &std::path::Path, after: &str) {
    let (code, stdout, stderr) = cli(vec![
        "verify".into(),
        "--cluster".into(),
        cluster_dir.display().to_string(),
        "--policy".into(),
        policy.display().to_string(),
        "--live".into(),
    ])
    .await;
    assert_eq!(code, 0, "verify --cluster after {after}: {stdout}{stderr}");
}

/// Goal: the primary submits to the witnesses of its policy by itself,
/// keeps only cosignatures that verify, never lets a witness slow an append,
/// and a new primary goes on after the old one is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_feeds_witnesses_by_itself() {
    let dir = TestDir::new("vellum-witness-feed");
    let witness_dir = dir.path().join("witness");
    let witness_key = vellum::witness::load_or_create_key(&witness_dir, WITNESS).expect("key");
    let rogue_key = Cosigner::from_seed(ROGUE, [0x66; 32]).expect("name");
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let witness_addr = std_listener.local_addr().expect("addr");
    let witness_url = format!("http://{witness_addr}");
    let rogue_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let rogue_url = format!("http://{}", rogue_listener.local_addr().expect("addr"));
    let rogue_mode = Arc::new(AtomicU8::new(GARBAGE));
    let rogue = tokio::spawn(rogue_witness(
        rogue_listener,
        Arc::clone(&rogue_mode),
        rogue_key.clone(),
    ));

    let cluster_dir = dir.path().join("cluster");
    let (key, rkey) = (witness_key.key(), rogue_key.key());
    let mut cluster = LocalCluster::start_prepared(&cluster_dir, 3, vellum_exe(), |dev| {
        vellum::cluster::add_dev_cosigner(dev, &key, &witness_url)?;
        vellum::cluster::add_dev_cosigner(dev, &rkey, &rogue_url)?;
        Ok(())
    })
    .expect("cluster starts");
    let policy_path = cluster.dev.policy_path.clone();
    let policy = Policy::parse(&std::fs::read_to_string(&policy_path).expect("policy"))
        .expect("policy parses");
    let witnessed = policy
        .clone()
        .with_cosigners(vec![witness_key.key()], 1)
        .expect("policy");
    let witnessed_path = dir.path().join("witnessed-policy.txt");
    std::fs::write(&witnessed_path, witnessed.encode()).expect("policy file");
    let mut witness = start_witness(&witness_dir, &policy, std_listener);

    let primary = cluster
        .wait_primary(Duration::from_secs(60))
        .await
        .expect("primary");
    let writer = cluster.client(None).expect("writer");
    let baseline = append_timed(&writer, 10).await;
    let events = cluster.metric_all("vellum_events").await[usize::from(primary)].unwrap_or(0);
    let took = wait_cosigned(&cluster, primary, events).await;
    eprintln!("first cosignature after {took:?} (events {events})");

    // The kept file verifies under the policy's key for the witness.
    let kept = vellum::witness::kept::load(&cluster.data_dir(usize::from(primary)), &key)
        .expect("kept file verifies")
        .expect("kept file exists");
    kept.certificate
        .verify(&witnessed)
        .expect("kept cosigned certificate verifies under the witness quorum");
    assert!(kept.size >= events);

    // The rogue witness: each kind of bad answer is counted, none kept.
    for mode in [GARBAGE, HUGE_SIZE, OTHER_KEY, BAD_SIGNATURE] {
        rogue_mode.store(mode, Ordering::SeqCst);
        let before =
            witness_metric(&cluster, primary, "vellum_witness_rejected_total", ROGUE).await;
        append_timed(&writer, 1).await;
        let started = Instant::now();
        while witness_metric(&cluster, primary, "vellum_witness_rejected_total", ROGUE).await
            <= before
        {
            assert!(started.elapsed() < COSIGN_WAIT, "mode {mode} not counted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(
            witness_metric(&cluster, primary, "vellum_witness_cosigned_size", ROGUE).await,
            0,
            "mode {mode}: nothing kept"
        );
        assert_eq!(
            vellum::witness::kept::load(&cluster.data_dir(usize::from(primary)), &rkey),
            Ok(None),
            "mode {mode}: no kept file"
        );
    }

    // The witness stopped and the rogue one hung: appends go on, in their
    // normal time.
    rogue_mode.store(HANG, Ordering::SeqCst);
    witness.abort();
    let _ = witness.await;
    let failures_before =
        witness_metric(&cluster, primary, "vellum_witness_failures_total", WITNESS).await;
    let during = append_timed(&writer, 10).await;
    eprintln!(
        "append max: {:?} with the witness up, {:?} with it down",
        max(&baseline),
        max(&during)
    );
    assert!(
        max(&during) < max(&baseline) * 3 + Duration::from_secs(1),
        "appends slowed by a stopped witness: {during:?} vs {baseline:?}"
    );
    let started = Instant::now();
    while witness_metric(&cluster, primary, "vellum_witness_failures_total", WITNESS).await
        <= failures_before
    {
        assert!(started.elapsed() < COSIGN_WAIT, "failures not counted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    verify_cluster(&cluster_dir, &policy_path, "the witness stopped").await;

    // A bundle of the events appended while the witness was down: against
    // the latest certificate, with the older cosigned checkpoint and the
    // consistency proof to it in cosigned.txt; it passes under the witness
    // quorum, and fails once a proof hash is changed.
    let bundle = dir.path().join("bundle-cosigned");
    let (code, _, stderr) = export_stream_1001(&cluster_dir, 24, &bundle).await;
    assert_eq!(code, 0, "export: {stderr}");
    assert!(bundle.join("cosigned.txt").exists(), "cosigned.txt written");
    assert!(
        !bundle.join("cosignatures.txt").exists(),
        "not cosigned itself"
    );
    let verify_cosigned = strings(&[
        "verify",
        "--bundle",
        &bundle.display().to_string(),
        "--policy",
        &witnessed_path.display().to_string(),
    ]);
    let (code, stdout, stderr) = cli(verify_cosigned.clone()).await;
    assert_eq!(code, 0, "cosigned.txt bundle: {stdout}{stderr}");
    assert!(stdout.contains("cosigned tree size"), "{stdout}");
    let path = bundle.join("cosigned.txt");
    let text = std::fs::read_to_string(&path).expect("cosigned.txt");
    let hash = text.lines().nth(1).expect("a proof hash").to_string();
    let other = if hash.starts_with('A') { "B" } else { "A" };
    let changed = format!("{other}{}", &hash[1..]);
    std::fs::write(&path, text.replacen(&hash, &changed, 1)).expect("tamper");
    let (code, stdout, _) = cli(verify_cosigned).await;
    assert_ne!(code, 0, "tampered proof hash: {stdout}");
    assert!(stdout.contains("cosigned.txt"), "{stdout}");

    // Restarted on the same address and store: cosignatures resume.
    let listener = std::net::TcpListener::bind(witness_addr).expect("rebind");
    witness = start_witness(&witness_dir, &policy, listener);
    let events = cluster.metric_all("vellum_events").await[usize::from(primary)].unwrap_or(0);
    let took = wait_cosigned(&cluster, primary, events).await;
    eprintln!("cosignatures resumed after {took:?}");

    // A bundle exported now carries cosignatures.txt and passes under the
    // witness quorum, with no `witness submit`.
    let bundle = dir.path().join("bundle");
    let (code, _, stderr) = export_stream_1001(&cluster_dir, 10, &bundle).await;
    assert_eq!(code, 0, "export: {stderr}");
    assert!(bundle.join("cosignatures.txt").exists(), "bundle cosigned");
    let (code, stdout, stderr) = cli(strings(&[
        "verify",
        "--bundle",
        &bundle.display().to_string(),
        "--policy",
        &witnessed_path.display().to_string(),
    ]))
    .await;
    assert_eq!(code, 0, "bundle under the witness quorum: {stdout}{stderr}");
    assert!(stdout.contains(WITNESS), "{stdout}");

    // A served proof carries the cosignature and verifies under the quorum.
    let mut auditor_config = vellum::client::ClientConfig::new(
        cluster.dev.api_urls.clone(),
        cluster.dev.auditor_token.clone(),
    );
    auditor_config.ca_pem = Some(cluster.ca_pem().to_vec());
    let auditor = vellum::client::Client::new(auditor_config).expect("client");
    let answer = auditor.proof(STREAM, 0).await.expect("proof");
    let proof = InclusionProof::parse(&answer.proof).expect("proof parses");
    proof
        .verify(&witnessed)
        .expect("served proof verifies under the witness quorum");

    // Only the primary submits: no backup kept a cosignature.
    for replica in (0..3u8).filter(|r| *r != primary) {
        assert_eq!(
            witness_metric(
                &cluster,
                replica,
                "vellum_witness_cosignatures_total",
                WITNESS
            )
            .await,
            0,
            "backup {replica} submitted"
        );
    }

    // kill -9 of the primary: the new primary goes on submitting.
    cluster.kill(usize::from(primary)).expect("kill");
    let started = Instant::now();
    let new_primary = loop {
        let found = cluster
            .wait_primary(Duration::from_secs(60))
            .await
            .expect("primary");
        if found != primary {
            break found;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no view change"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let writer = cluster.client(None).expect("writer");
    append_timed(&writer, 3).await;
    let events = cluster.metric_all("vellum_events").await[usize::from(new_primary)].unwrap_or(0);
    let took = wait_cosigned(&cluster, new_primary, events).await;
    eprintln!("new primary {new_primary} cosigned after {took:?}");
    let kept = vellum::witness::kept::load(&cluster.data_dir(usize::from(new_primary)), &key)
        .expect("kept file verifies")
        .expect("the new primary keeps its own");
    kept.certificate.verify(&witnessed).expect("verifies");
    cluster
        .start_replica(usize::from(primary))
        .expect("restart the killed replica");
    // Give the restarted replica a moment to catch up before verifying.
    let commit = cluster.metric_all("vellum_commit").await[usize::from(new_primary)].unwrap_or(0);
    cluster
        .wait_commit(&[usize::from(primary)], commit, Duration::from_secs(60))
        .await
        .expect("the restarted replica catches up");
    verify_cluster(&cluster_dir, &policy_path, "kill -9 of the primary").await;

    witness.abort();
    rogue.abort();
    cluster.stop().expect("cluster stops");

    // `verify --data-dir` under the witness quorum, from the kept
    // cosignatures: passes on the new primary; a flipped byte in its kept
    // file, or a replica that kept none, fails.
    let verify_data_dir = |replica: u8| {
        cli(strings(&[
            "verify",
            "--data-dir",
            &cluster.data_dir(usize::from(replica)).display().to_string(),
            "--policy",
            &witnessed_path.display().to_string(),
        ]))
    };
    let (code, stdout, stderr) = verify_data_dir(new_primary).await;
    assert_eq!(code, 0, "witnessed data dir: {stdout}{stderr}");
    assert!(stdout.contains("witness cosignatures"), "{stdout}");
    let never_primary = (0..3u8)
        .find(|r| *r != primary && *r != new_primary)
        .expect("a third replica");
    let (code, stdout, _) = verify_data_dir(never_primary).await;
    assert_ne!(code, 0, "no kept cosignature: {stdout}");
    let kept_path =
        vellum::witness::kept::path_for(&cluster.data_dir(usize::from(new_primary)), &key);
    let text = std::fs::read_to_string(&kept_path).expect("kept");
    let tampered = text.replacen("\n\n", "\nx\n\n", 1);
    std::fs::write(&kept_path, tampered).expect("tamper");
    let (code, stdout, _) = verify_data_dir(new_primary).await;
    assert_ne!(code, 0, "tampered kept cosignature: {stdout}");
    assert!(stdout.contains("cosignatures"), "names the place: {stdout}");
}
