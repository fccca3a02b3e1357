//! Real replica processes on loopback (DESIGN §7 "real processes"): three
//! `vellum start` processes per test, driven through the Rust client.
//! `kill -9` of the primary under load, a paused backup, a wiped replica
//! that rebuilds, a subscription across a primary change, bad input
//! against a live server, and a scoped token with break-glass.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use vellum::client::{Client, ClientConfig};
use vellum::local_cluster::{LocalCluster, wipe_replica_data};

mod support;
use support::{TestDir, client_of};

const WAIT: Duration = Duration::from_secs(60);

fn exe() -> &'static Path {
    support::vellum_exe()
}

fn test_dir() -> TestDir {
    TestDir::new("vellum-cluster")
}

fn start_cluster(dir: &Path) -> LocalCluster {
    LocalCluster::start(&dir.join("cluster"), 3, exe()).expect("cluster starts")
}

fn payload(event: &vellum::api::LogEvent) -> String {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(&event.base64)
        .expect("base64 from the server");
    String::from_utf8(bytes).expect("utf-8 payloads in these tests")
}

/// Every event of `stream` as (offset, payload), read through `client`.
async fn read_all(client: &Client, stream: u64) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = client
            .read_stream(stream, out.len() as u64, 1000)
            .await
            .expect("read");
        if page.events.is_empty() {
            break;
        }
        out.extend(page.events.iter().map(|e| (e.offset, payload(e))));
    }
    out
}

/// Runs `vellum verify`'s checks on every replica's data directory (each
/// must pass) and returns the distinct roots of those at `size` events.
fn verify_replicas(
    dirs: &[std::path::PathBuf],
    policy_path: &Path,
    size: u64,
) -> HashSet<vellum_audit::hash::Hash> {
    let policy_text = std::fs::read_to_string(policy_path).expect("policy");
    let policy = vellum_audit::policy::Policy::parse(&policy_text).expect("policy parses");
    let mut roots = HashSet::new();
    for (i, dir) in dirs.iter().enumerate() {
        let report = vellum::verify::verify_data_dir(dir, &policy, None, &mut |_| {});
        assert!(report.passed, "replica {i} verifies:\n{report:?}");
        let options = vellum::log::LogOptions {
            without_index: true,
            // Another test's child process may hold the lock for an instant.
            lock_wait_ms: 10_000,
            storage: vellum::storage::StorageConfig {
                read_only: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let (log, _) = vellum::log::LocalLog::open(dir, options).expect("open read-only");
        let certificate = log.latest_certificate().expect("a certificate");
        assert!(
            certificate.checkpoint.size >= size,
            "replica {i} certified {size} events"
        );
        roots.insert(log.root_at(size).expect("the root at the common size"));
    }
    roots
}

/// Events of `stream` a stopped replica's own data directory decrypts.
fn read_only_stream(dir: &Path, stream: u64) -> usize {
    let mut options = vellum::log::LogOptions {
        without_index: true,
        // Another test's child process may hold the lock for an instant.
        lock_wait_ms: 10_000,
        ..Default::default()
    };
    options.storage.read_only = true;
    let (log, _) = vellum::log::LocalLog::open(dir, options).expect("open read-only");
    log.read(stream, 0, 1000)
        .expect("read with the replica's own keys")
        .len()
}

/// The fewest committed events any replica reports.
async fn commit_events(cluster: &LocalCluster) -> u64 {
    cluster
        .health()
        .await
        .iter()
        .map(|h| h.as_ref().map_or(0, |h| h.events))
        .min()
        .unwrap_or(0)
}

async fn commit_of(cluster: &LocalCluster, i: usize) -> u64 {
    cluster.health().await[i].as_ref().map_or(0, |h| h.commit)
}

// Goal: kill -9 of the primary under a steady load from several clients
// loses no acknowledged event, duplicates none, and a new primary takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_primary_under_load_loses_and_duplicates_nothing() {
    const WRITERS: u64 = 4;
    const APPENDS: u64 = 25;
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let old_primary = cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    let acked = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let client = client.clone();
        let acked = Arc::clone(&acked);
        writers.push(tokio::spawn(async move {
            let stream = 2000 + w;
            let mut receipts = Vec::new();
            for i in 0..APPENDS {
                let event = Bytes::from(format!("writer {w} event {i}"));
                let outcome = client.append(stream, vec![event], None).await;
                if let Ok(receipt) = &outcome {
                    acked.fetch_add(1, Ordering::SeqCst);
                    receipts.push((receipt.first_offset, format!("writer {w} event {i}")));
                }
                assert!(
                    outcome.is_ok(),
                    "append {i} of writer {w} failed: {outcome:?}"
                );
            }
            (stream, receipts)
        }));
    }
    let deadline = Instant::now() + WAIT;
    while acked.load(Ordering::SeqCst) < WRITERS * APPENDS / 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster
        .kill(usize::from(old_primary))
        .expect("kill -9 the primary");
    let mut acknowledged = BTreeMap::new();
    for writer in writers {
        let (stream, receipts) = writer.await.expect("writer task");
        acknowledged.insert(stream, receipts);
    }
    let new_primary = cluster.wait_primary(WAIT).await.expect("a new primary");
    assert_ne!(new_primary, old_primary, "a new primary was elected");
    cluster
        .start_replica(usize::from(old_primary))
        .expect("restart");
    let commit = commit_of(&cluster, usize::from(new_primary)).await;
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the restarted replica catches up");
    for (stream, receipts) in &acknowledged {
        for replica in 0..3 {
            let stored = read_all(&client_of(&cluster, replica), *stream).await;
            let distinct: HashSet<&String> = stored.iter().map(|(_, p)| p).collect();
            assert_eq!(
                distinct.len(),
                stored.len(),
                "no duplicate on replica {replica}"
            );
            assert_eq!(stored.len() as u64, APPENDS, "every append stored once");
            for (offset, payload) in receipts {
                assert_eq!(
                    stored.get(*offset as usize).map(|(_, p)| p),
                    Some(payload),
                    "acknowledged event at stream {stream} offset {offset} on replica {replica}"
                );
            }
        }
    }
    cluster.stop().expect("stop");
}

// Goal: a paused (SIGSTOP) backup does not stop the cluster, and catches up
// after it is resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn paused_backup_catches_up_after_resume() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backup = (primary + 1) % 3;
    let client = client_of(&cluster, primary);
    client
        .append(3000, vec![Bytes::from_static(b"before pause")], None)
        .await
        .expect("append");
    cluster.pause(backup).expect("SIGSTOP");
    for i in 0..10 {
        let event = Bytes::from(format!("while paused {i}"));
        client
            .append(3000, vec![event], None)
            .await
            .expect("append with one backup paused");
    }
    cluster.resume(backup).expect("SIGCONT");
    let commit = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[backup], commit, WAIT)
        .await
        .expect("the backup catches up");
    let on_backup = read_all(&client_of(&cluster, backup), 3000).await;
    assert_eq!(on_backup.len(), 11);
    assert_eq!(on_backup[10].1, "while paused 9");
    cluster.stop().expect("stop");
}

// Goal: a replica whose data is wiped rebuilds from its peers, can read
// what it rebuilt, and every replica's data directory verifies afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wiped_replica_rebuilds_and_cluster_verifies() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let victim = (primary + 2) % 3;
    let client = cluster.client(None).expect("client");
    for i in 0..10 {
        let event = Bytes::from(format!("first {i}"));
        client
            .append(4000 + i % 2, vec![event], None)
            .await
            .expect("append");
    }
    cluster.kill(victim).expect("kill");
    wipe_replica_data(&cluster.data_dir(victim)).expect("wipe");
    assert!(!cluster.data_dir(victim).join("segments").exists());
    cluster
        .start_replica(victim)
        .expect("restart on an empty disk");
    for i in 0..10 {
        let event = Bytes::from(format!("second {i}"));
        client
            .append(4000 + i % 2, vec![event], None)
            .await
            .expect("append");
    }
    let commit = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the wiped replica rebuilds");
    // The appends and their access-trail events: every replica holds at
    // least this many committed events.
    let common = commit_events(&cluster).await;
    cluster.stop().expect("stop");
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| cluster.data_dir(i)).collect();
    let victim_dir = cluster.data_dir(victim);
    let rebuilt = tokio::task::spawn_blocking(move || read_only_stream(&victim_dir, 4000))
        .await
        .expect("read task");
    assert_eq!(
        rebuilt, 10,
        "the wiped replica decrypts its rebuilt stream (keys came with repairs)"
    );
    let policy_path = cluster.dev.policy_path.clone();
    let roots = tokio::task::spawn_blocking(move || verify_replicas(&dirs, &policy_path, common))
        .await
        .expect("verify task");
    assert_eq!(
        roots.len(),
        1,
        "every replica has the same root at {common} events"
    );
}

// Goal: a subscription delivers every event once, in order, across a
// primary change (the client resumes from the last position it saw).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_survives_primary_change() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let client = cluster.client(None).expect("client");
    let mut subscription = Box::pin(client.subscribe(0));
    for i in 0..5 {
        client
            .append(5000, vec![Bytes::from(format!("before {i}"))], None)
            .await
            .expect("append");
    }
    cluster.kill(primary).expect("kill the primary");
    for i in 0..5 {
        client
            .append(5001, vec![Bytes::from(format!("after {i}"))], None)
            .await
            .expect("append after the primary change");
    }
    let mut positions = Vec::new();
    let deadline = Instant::now() + WAIT;
    while positions.len() < 10 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), subscription.next()).await {
            Ok(Some(Ok(event))) => positions.push(event.position),
            Ok(Some(Err(error))) => panic!("subscription failed: {error}"),
            Ok(None) => panic!("subscription ended"),
            Err(_) => {}
        }
    }
    assert_eq!(
        positions,
        (0..10).collect::<Vec<u64>>(),
        "no gap, no repeat"
    );
    cluster.stop().expect("stop");
}

// Goal: bad input against a live replica gets a 4xx with a JSON error that
// says what is wrong, never a 5xx, and harms nothing stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_on_a_live_cluster_gets_clear_4xx() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    client
        .append(6000, vec![Bytes::from_static(b"kept")], None)
        .await
        .expect("append");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("ca"))
        .build()
        .expect("http client");
    let base = &cluster.dev.api_urls[0];
    let token = format!("Bearer {}", cluster.dev.writer_token);
    let append_url = format!("{base}/v1/streams/6000/append");
    let cases: Vec<(&str, reqwest::RequestBuilder, u16)> = vec![
        (
            "malformed json",
            http.post(&append_url)
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body("{\"events\": [}"),
            400,
        ),
        (
            "bad token",
            http.post(&append_url)
                .header("authorization", "Bearer vlm_nope")
                .header("content-type", "application/json")
                .body("{\"events\":[{\"json\":1}]}"),
            401,
        ),
        (
            "wrong expected offset",
            http.post(&append_url)
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body("{\"events\":[{\"json\":1}],\"expected_offset\":7}"),
            409,
        ),
        (
            "unknown stream",
            http.get(format!("{base}/v1/streams/6999/events"))
                .header("authorization", &token),
            404,
        ),
        (
            "export beyond the stream",
            http.post(format!("{base}/v1/export/events"))
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body("{\"stream\":6000,\"from\":0,\"to\":50}"),
            422,
        ),
        (
            "oversized body",
            http.post(&append_url)
                .header("authorization", &token)
                .header("content-type", "application/json")
                .body(vec![b' '; 5 * 1024 * 1024]),
            413,
        ),
    ];
    for (name, request, status) in cases {
        let answer = request.send().await.expect("an answer");
        assert_eq!(answer.status().as_u16(), status, "{name}");
        let body: vellum::api::ErrorBody = answer.json().await.expect("a JSON error body");
        assert!(
            !body.error.message.is_empty(),
            "{name}: the error says what is wrong"
        );
    }
    let stored = read_all(&client, 6000).await;
    assert_eq!(
        stored,
        vec![(0, "kept".to_string())],
        "nothing stored was harmed"
    );
    cluster.stop().expect("stop");
}

// Goal: every access through any replica is recorded in the replicated
// access trail (system stream 1) before it is answered, with the principal,
// action, stream and caller — failed logins too — and every replica's audit
// index projects the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn access_trail_records_every_access_through_any_replica() {
    use vellum_compliance::trail::{ACCESS_TRAIL_STREAM, AccessAction, AccessEvent};
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backup = (primary + 1) % 3;
    let client = cluster.client(None).expect("client");
    client
        .append(7000, vec![Bytes::from_static(b"observation")], None)
        .await
        .expect("append");
    let via_backup = client_of(&cluster, backup);
    via_backup
        .read_stream(7000, 0, 10)
        .await
        .expect("read through a backup");
    let mut bad = ClientConfig::new(
        vec![cluster.dev.api_urls[primary].clone()],
        "vlm_not_a_token",
    );
    bad.ca_pem = Some(cluster.ca_pem().to_vec());
    let refused = Client::new(bad)
        .expect("client")
        .read_stream(7000, 0, 10)
        .await;
    assert!(refused.is_err(), "a bad token is refused");
    let trail: Vec<AccessEvent> = read_all(&client, ACCESS_TRAIL_STREAM)
        .await
        .iter()
        .map(|(_, payload)| {
            AccessEvent::from_payload(payload.as_bytes()).expect("trail events parse")
        })
        .collect();
    let append = trail
        .iter()
        .find(|e| e.action == AccessAction::Append && e.stream == Some(7000))
        .expect("the append is in the trail");
    assert_eq!(
        (append.principal.as_str(), append.role.as_str()),
        ("dev", "writer")
    );
    assert_eq!((append.from, append.to), (Some(0), Some(1)));
    let read = trail
        .iter()
        .find(|e| e.action == AccessAction::ReadStream && e.stream == Some(7000))
        .expect("the read through the backup is in the trail");
    assert_eq!(read.outcome, "success");
    assert!(
        read.remote
            .as_deref()
            .is_some_and(|r| r.ends_with(&format!(" served by replica {backup}"))),
        "a read a backup served names the client and the backup: {read:?}"
    );
    assert!(
        trail
            .iter()
            .any(|e| e.action == AccessAction::AuthFailed && e.outcome.starts_with("denied: 401")),
        "the failed login is in the trail"
    );
    let committed = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[0, 1, 2], committed, WAIT)
        .await
        .expect("all caught up");
    cluster.stop().expect("stop");
    let dirs: Vec<std::path::PathBuf> = (0..3).map(|i| cluster.data_dir(i)).collect();
    let rows = tokio::task::spawn_blocking(move || {
        dirs.iter()
            .map(|dir| projected_access_rows(dir))
            .collect::<Vec<usize>>()
    })
    .await
    .expect("index task");
    for (replica, rows) in rows.iter().enumerate() {
        assert!(
            *rows >= trail.len(),
            "replica {replica} indexes the trail: {rows} rows"
        );
    }
}

/// Access rows projected from the trail in a replica's audit index.
fn projected_access_rows(data_dir: &Path) -> usize {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let meta = vellum::datadir::NodeMeta::load(&vellum::datadir::DataDir::new(data_dir))
            .expect("meta");
        let target = vellum::index::IndexTarget::parse(None, data_dir).expect("target");
        let index = vellum::index::Index::open_existing(&target, meta.cluster_id().expect("id"))
            .await
            .expect("index");
        let rows = index.access_projected().await.expect("rows");
        assert!(
            rows.iter()
                .all(|r| r.payload.is_some() && r.salt.as_ref().is_some_and(|s| s.len() == 32))
        );
        index.close().await;
        rows.len()
    })
}

/// Runs the `vellum` binary; returns (exit code, stdout, stderr).
fn vellum_cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .output()
        .expect("run vellum");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// Goal: a compliance officer exports a patient's events from a live
// cluster, an auditor verifies the bundle offline with the policy alone (and
// an edited bundle fails), the access trail exports as FHIR AuditEvent and
// the accounting of disclosures lists the export, which is itself recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exports_from_a_live_cluster_verify_offline_and_are_trailed() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    for i in 0..5 {
        let event = Bytes::from(format!("{{\"resourceType\":\"Observation\",\"n\":{i}}}"));
        client
            .append(8000, vec![event], None)
            .await
            .expect("append");
    }
    let cluster_dir = cluster.dev.dir.clone();
    let policy = cluster.dev.policy_path.clone();
    let out = dir.path().join("out");
    let outcome = tokio::task::spawn_blocking(move || {
        let s = |p: &Path| p.display().to_string();
        let bundle = out.join("bundle");
        let (code, _, err) = vellum_cli(&[
            "export",
            "events",
            "--cluster",
            &s(&cluster_dir),
            "--stream",
            "8000",
            "--from",
            "0",
            "--to",
            "5",
            "--purpose",
            "patient request",
            "--out",
            &s(&bundle),
        ]);
        assert_eq!(code, 0, "export events: {err}");
        let html = out.join("bundle-report.html");
        let (code, report, err) = vellum_cli(&[
            "verify",
            "--bundle",
            &s(&bundle),
            "--policy",
            &s(&policy),
            "--format",
            "html",
            "--output",
            &s(&html),
            "--record-to",
            &s(&cluster_dir),
        ]);
        assert_eq!(code, 0, "the bundle verifies offline:\n{report}\n{err}");
        use sha2::Digest as _;
        let report_hash = vellum_audit::hash::to_hex(&sha2::Sha256::digest(
            std::fs::read(&html).expect("the html report"),
        ));
        let events = bundle.join("events.ndjson");
        let text = std::fs::read_to_string(&events).expect("events");
        std::fs::write(&events, text.replacen("\"n\\\":0", "\"n\\\":9", 1)).expect("edit");
        let edited = std::fs::read_to_string(&events).expect("events");
        assert_ne!(edited, text, "the edit changed the bundle");
        let (code, report, _) =
            vellum_cli(&["verify", "--bundle", &s(&bundle), "--policy", &s(&policy)]);
        assert_eq!(code, 1, "an edited bundle fails:\n{report}");
        let fhir = out.join("audit.fhir.ndjson");
        let (code, _, err) = vellum_cli(&[
            "export",
            "audit",
            "--cluster",
            &s(&cluster_dir),
            "--format",
            "fhir",
            "--out",
            &s(&fhir),
        ]);
        assert_eq!(code, 0, "export audit: {err}");
        let resources: Vec<serde_json::Value> = std::fs::read_to_string(&fhir)
            .expect("fhir")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        assert!(resources.len() >= 6, "5 appends and the export at least");
        assert!(resources.iter().all(|r| r["resourceType"] == "AuditEvent"));
        let (code, json, err) = vellum_cli(&[
            "export",
            "disclosures",
            "--cluster",
            &s(&cluster_dir),
            "--stream",
            "8000",
            "--format",
            "json",
        ]);
        assert_eq!(code, 0, "export disclosures: {err}");
        let accounting: serde_json::Value = serde_json::from_str(&json).expect("JSON accounting");
        let listed = accounting["disclosures"].as_array().expect("a list").len();
        assert!(
            listed >= 1,
            "the bundle export is a disclosure of stream 8000: {json}"
        );
        report_hash
    });
    let report_hash = outcome.await.expect("export steps");
    let verifications = client.export_audit(None, None, None).await.expect("trail");
    assert!(
        verifications.records.iter().any(|r| r.event.action
            == vellum_compliance::trail::AccessAction::Verify
            && r.event
                .detail
                .as_deref()
                .is_some_and(|d| d.contains(&report_hash))),
        "the verification and its report's hash are in the access trail"
    );
    let trail = client
        .export_audit(None, None, Some(8000))
        .await
        .expect("trail");
    assert!(
        trail.records.iter().any(|r| r.event.action
            == vellum_compliance::trail::AccessAction::Export
            && r.event.purpose.as_deref() == Some("patient request")),
        "the export is in the access trail"
    );
    cluster.stop().expect("stop");
}

// Goal: an auditor with only the policy verifies a RUNNING cluster
// (`verify --cluster --live`) while clients append, and damage to data
// already committed is still caught live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn live_cluster_verifies_while_appending_and_catches_damage() {
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    for i in 0..10 {
        client
            .append(9000, vec![Bytes::from(format!("before {i}"))], None)
            .await
            .expect("append");
    }
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let client = client.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..40 {
                let event = Bytes::from(format!("live {w} {i}"));
                client
                    .append(9100 + w, vec![event], None)
                    .await
                    .expect("append");
            }
        }));
    }
    let cluster_dir = cluster.dev.dir.clone();
    let policy = cluster.dev.policy_path.clone();
    let s = |p: &Path| p.display().to_string();
    let (dir_arg, policy_arg) = (s(&cluster_dir), s(&policy));
    let runs = tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|_| {
                vellum_cli(&[
                    "verify",
                    "--cluster",
                    &dir_arg,
                    "--policy",
                    &policy_arg,
                    "--live",
                ])
            })
            .collect::<Vec<_>>()
    })
    .await
    .expect("verify runs");
    for (code, report, err) in &runs {
        assert_eq!(
            *code, 0,
            "a live cluster verifies while appending:\n{report}\n{err}"
        );
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    // Damage a committed record of replica 2 while it runs: a byte inside
    // the first op record's body (after the 64-byte segment header and the
    // 256-byte record header).
    let segment = cluster
        .data_dir(2)
        .join("segments")
        .join("00000000000000000000.vseg");
    let mut bytes = std::fs::read(&segment).expect("segment");
    bytes[64 + 256 + 8] ^= 0x01;
    std::fs::write(&segment, &bytes).expect("flip");
    let (dir_arg, policy_arg) = (s(&cluster_dir), s(&policy));
    let (code, report, _) = tokio::task::spawn_blocking(move || {
        vellum_cli(&[
            "verify",
            "--cluster",
            &dir_arg,
            "--policy",
            &policy_arg,
            "--live",
        ])
    })
    .await
    .expect("verify");
    assert_eq!(
        code, 1,
        "damage to committed data is caught live:\n{report}"
    );
    assert!(
        report.contains("replica 2"),
        "the report names the replica:\n{report}"
    );
    cluster.stop().expect("stop");
}

// Goal: on a live cluster, reusing an idempotency key for another request
// (other body, other stream, other expected offset) is answered 422
// `idempotency_key_reused` and stores nothing, through the primary and
// through a backup, while the identical retry gets the original receipt;
// both still hold after the primary is killed and another replica leads
// (its client table and keys came by replication).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reused_idempotency_key_is_refused_with_422_and_stores_nothing() {
    use vellum::api::IdempotencyKey;
    use vellum::client::{AppendError, ReadError};
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let client = cluster.client(None).expect("client");
    let key = IdempotencyKey {
        session: format!("{:032x}", 0x5e55_1011_u128),
        request: 1,
    };
    let original = vec![
        Bytes::from_static(b"{\"resourceType\":\"Observation\",\"value\":1.50}"),
        Bytes::from_static(b"second"),
    ];
    let first = client
        .append_with_key(8100, original.clone(), None, key.clone())
        .await
        .expect("append");
    assert!(!first.duplicate);

    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("ca"))
        .build()
        .expect("http client");
    let token = format!("Bearer {}", cluster.dev.writer_token);
    let check = async |cluster: &LocalCluster, leader: usize, when: &str| {
        let reuses: [(u64, Vec<Bytes>, Option<u64>, &str); 3] = [
            (
                8100,
                vec![Bytes::from_static(b"other")],
                None,
                "another body",
            ),
            (8101, original.clone(), None, "another stream"),
            (8100, original.clone(), Some(0), "another expected offset"),
        ];
        for (stream, events, expected, what) in reuses {
            let refused = client
                .append_with_key(stream, events, expected, key.clone())
                .await;
            assert!(
                matches!(refused, Err(AppendError::IdempotencyKeyReused { .. })),
                "{when}: {what}: {refused:?}"
            );
        }
        // The wire answer, through a backup (forwarded to the primary).
        let backup = (leader + 1) % 3;
        let body = serde_json::json!({
            "events": [{"base64": "b3RoZXI="}],
            "idempotency": {"session": key.session, "request": key.request},
        });
        let answer = http
            .post(format!(
                "{}/v1/streams/8100/append",
                cluster.dev.api_urls[backup]
            ))
            .header("authorization", &token)
            .json(&body)
            .send()
            .await
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 422, "{when}");
        let error: vellum::api::ErrorBody = answer.json().await.expect("a JSON error");
        assert_eq!(error.error.code, "idempotency_key_reused", "{when}");

        let again = client
            .append_with_key(8100, original.clone(), None, key.clone())
            .await
            .expect("identical retry");
        assert!(again.duplicate, "{when}");
        assert_eq!(
            (again.op, again.first_offset, again.next_offset),
            (first.op, first.first_offset, first.next_offset),
            "{when}: the original receipt"
        );
        let stored = read_all(&client, 8100).await;
        assert_eq!(stored.len(), 2, "{when}: nothing more was stored");
        match client.read_stream(8101, 0, 1).await {
            Err(ReadError::NotFound(_)) => {}
            Ok(page) => assert!(
                page.events.is_empty(),
                "{when}: nothing on the other stream"
            ),
            Err(e) => panic!("{when}: reading the other stream: {e}"),
        }
    };
    check(&cluster, primary, "first primary").await;

    let committed = commit_of(&cluster, primary).await;
    cluster
        .wait_commit(&[0, 1, 2], committed, WAIT)
        .await
        .expect("every replica has the op");
    cluster.kill(primary).expect("kill -9 the primary");
    let leader = usize::from(cluster.wait_primary(WAIT).await.expect("a new primary"));
    assert_ne!(leader, primary);
    cluster.start_replica(primary).expect("restart");
    check(&cluster, leader, "after a view change").await;
    cluster.stop().expect("stop");
}

/// GET `path` on replica `i` with `token`: the status and the JSON body.
async fn get_as(
    cluster: &LocalCluster,
    i: usize,
    token: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let answer = http
        .get(format!("{}{path}", cluster.dev.api_urls[i]))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = answer.status().as_u16();
    (
        status,
        answer.json().await.unwrap_or(serde_json::Value::Null),
    )
}

// Goal: on real processes, a token scoped to one stream reads it through
// every replica (backups forward), is refused 403 scope_denied on another
// stream, sees only its stream in the global log; break-glass opened
// through one backup lets it read the other stream through another (the
// grant lives at the primary), and the trail holds both, marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scoped_token_and_break_glass_on_a_live_cluster() {
    use vellum::server::auth::{Role, Scope, generate_token, token_line};
    use vellum_compliance::trail::{AccessAction, AccessEvent};
    let dir = test_dir();
    let root = dir.path().join("cluster");
    let dev = vellum::cluster::create_dev_cluster(&root, 3, None).expect("dev cluster");
    let nurse = generate_token();
    let scope = Scope::parse("7001").expect("scope");
    let mut tokens = std::fs::read_to_string(dev.dir.join("tokens.txt")).expect("tokens");
    tokens.push_str(&token_line(&nurse, "nurse", Role::Reader, &scope));
    tokens.push('\n');
    std::fs::write(dev.dir.join("tokens.txt"), tokens).expect("write tokens");
    let mut cluster = LocalCluster::start(&root, 3, exe()).expect("cluster starts");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backups = [(primary + 1) % 3, (primary + 2) % 3];
    let client = cluster.client(None).expect("client");
    for stream in [7001, 7002] {
        client
            .append(
                stream,
                vec![Bytes::from(format!("chart of {stream}"))],
                None,
            )
            .await
            .expect("append");
    }
    for i in 0..3 {
        let (status, _) = get_as(&cluster, i, &nurse, "/v1/streams/7001/events").await;
        assert_eq!(status, 200, "replica {i}");
        let (status, body) = get_as(&cluster, i, &nurse, "/v1/streams/7002/events").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (403, &"scope_denied".into()),
            "{body}"
        );
    }
    let (status, log) = get_as(&cluster, backups[0], &nurse, "/v1/log?max=1000").await;
    assert_eq!(status, 200);
    let streams: HashSet<u64> = log["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["stream"].as_u64().expect("stream"))
        .collect();
    assert_eq!(streams, HashSet::from([7001]), "only the nurse's stream");

    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let opened = http
        .post(format!(
            "{}/v1/streams/7002/break-glass",
            cluster.dev.api_urls[backups[0]]
        ))
        .bearer_auth(&nurse)
        .json(&serde_json::json!({ "reason": "patient collapsed in the corridor" }))
        .send()
        .await
        .expect("break-glass");
    assert_eq!(opened.status().as_u16(), 200);
    let (status, body) = get_as(&cluster, backups[1], &nurse, "/v1/streams/7002/events").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1));

    let auditor = cluster.dev.auditor_token.clone();
    let (status, trail) = get_as(&cluster, primary, &auditor, "/v1/export/audit?stream=7002").await;
    assert_eq!(status, 200, "{trail}");
    let events: Vec<AccessEvent> = trail["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| serde_json::from_value(r["event"].clone()).expect("event"))
        .filter(|e: &AccessEvent| e.principal == "nurse")
        .collect();
    let refused = events
        .iter()
        .filter(|e| e.outcome.starts_with("denied: 403") && e.break_glass.is_none())
        .count();
    assert_eq!(refused, 3, "{events:?}");
    let opening = events
        .iter()
        .find(|e| e.action == AccessAction::BreakGlass)
        .expect("the opening is in the trail");
    assert_eq!(
        opening.break_glass.as_ref().map(|g| g.reason.as_str()),
        Some("patient collapsed in the corridor")
    );
    assert!(
        events.iter().any(|e| e.action == AccessAction::ReadStream
            && e.outcome == "success"
            && e.break_glass == opening.break_glass
            && e.v == 2),
        "{events:?}"
    );
    cluster.stop().expect("stop");
}

/// GET `path` on replica `i` with `token` (None: no Authorization header):
/// the status and the body's bytes, exactly as sent.
async fn get_raw(
    cluster: &LocalCluster,
    i: usize,
    token: Option<&str>,
    path: &str,
) -> (u16, Vec<u8>) {
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let mut request = http.get(format!("{}{path}", cluster.dev.api_urls[i]));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let answer = request.send().await.expect("request");
    let status = answer.status().as_u16();
    (status, answer.bytes().await.expect("body").to_vec())
}

/// The error code of an error answer's body.
fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    value["error"]["code"].as_str().unwrap_or("").to_string()
}

/// A dev cluster whose tokens also hold a reader scoped to `scope`
/// (returned), started.
fn start_cluster_with_reader(dir: &Path, scope: &str) -> (LocalCluster, String) {
    use vellum::server::auth::{Role, Scope, generate_token, token_line};
    let root = dir.join("cluster");
    let dev = vellum::cluster::create_dev_cluster(&root, 3, None).expect("dev cluster");
    let reader = generate_token();
    let scope = Scope::parse(scope).expect("scope");
    let mut tokens = std::fs::read_to_string(dev.dir.join("tokens.txt")).expect("tokens");
    tokens.push_str(&token_line(&reader, "nurse", Role::Reader, &scope));
    tokens.push('\n');
    std::fs::write(dev.dir.join("tokens.txt"), tokens).expect("write tokens");
    let cluster = LocalCluster::start(&root, 3, exe()).expect("cluster starts");
    (cluster, reader)
}

/// Every access-trail event committed so far, read through the primary.
async fn trail_events(client: &Client) -> Vec<vellum_compliance::trail::AccessEvent> {
    read_all(client, vellum_compliance::trail::ACCESS_TRAIL_STREAM)
        .await
        .iter()
        .map(|(_, payload)| {
            vellum_compliance::trail::AccessEvent::from_payload(payload.as_bytes())
                .expect("trail events parse")
        })
        .collect()
}

/// Streams the backup-read test appends to, and events in each.
const READ_STREAMS: [(u64, usize); 6] = [
    (7300, 1),
    (7301, 2),
    (7302, 3),
    (7303, 1),
    (7304, 2),
    (7305, 3),
];

// Goal: on a live cluster, reads from each backup (stream reads, global
// reads, filtered global reads, a filtered subscription) equal reads from
// the primary at the same position byte for byte; each read a backup
// served has exactly one committed trail record naming the read and the
// backup; min_position beyond the end is a typed 503; bad filters and huge
// numbers are the same 400 everywhere; and every refusal (no token, wrong
// role, out of scope) and a break-glass read answer exactly as the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_serve_reads_equal_to_the_primary_and_trail_each() {
    use vellum_compliance::trail::AccessAction;
    let dir = test_dir();
    let (mut cluster, nurse) = start_cluster_with_reader(dir.path(), "7300");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backups = [(primary + 1) % 3, (primary + 2) % 3];
    let writer = cluster.dev.writer_token.clone();
    let client = cluster.client(None).expect("client");
    let mut end = 0;
    for (stream, count) in READ_STREAMS {
        for n in 0..count {
            // JSON and raw bytes (not UTF-8) alike.
            let event = match n % 2 {
                0 => Bytes::from(format!("{{\"resourceType\":\"Observation\",\"n\":{n}}}")),
                _ => Bytes::from(vec![0xff, 0x00, 0xfe, u8::try_from(n).expect("small")]),
            };
            let receipt = client
                .append(stream, vec![event], None)
                .await
                .expect("append");
            end = receipt.first_position + 1;
        }
    }
    // Every replica answers at the same position: the first `end` events.
    let mut served_ok = [0usize; 3];
    let log_path = format!("/v1/log?from=0&max={end}&min_position={end}");
    let mut answers = Vec::new();
    for (i, served) in served_ok.iter_mut().enumerate() {
        let (status, body) = get_raw(&cluster, i, Some(&writer), &log_path).await;
        assert_eq!(
            status,
            200,
            "replica {i}: {}",
            String::from_utf8_lossy(&body)
        );
        *served += 1;
        answers.push(body);
    }
    assert!(
        answers.iter().all(|a| *a == answers[primary]),
        "global reads differ"
    );
    let whole: serde_json::Value = serde_json::from_slice(&answers[primary]).expect("json");
    let whole = whole["events"].as_array().expect("events").clone();
    assert_eq!(whole.len() as u64, end, "the first {end} events");
    for (stream, count) in READ_STREAMS {
        let path = format!("/v1/streams/{stream}/events?from=0&max=100&min_position={end}");
        let mut bodies = Vec::new();
        for (i, served) in served_ok.iter_mut().enumerate() {
            let (status, body) = get_raw(&cluster, i, Some(&writer), &path).await;
            assert_eq!(status, 200, "replica {i} stream {stream}");
            *served += 1;
            bodies.push(body);
        }
        assert!(
            bodies.iter().all(|b| *b == bodies[primary]),
            "stream {stream} differs"
        );
        let page: vellum::api::StreamEvents = serde_json::from_slice(&bodies[0]).expect("page");
        assert_eq!(page.events.len(), count, "stream {stream}");
    }
    // Filters: a generated matrix of lists, each answer byte-equal on every
    // replica and holding exactly the events of the listed streams.
    let lists = [
        vec![(7300, 7300)],
        vec![(7301, 7302)],
        vec![(7300, 7300), (7303, 7305)],
        vec![(7302, 7302), (7304, 7304), (7299, 7299)],
        vec![(0, 9_223_372_036_854_775_807)],
        vec![(9000, 9999)],
    ];
    for list in &lists {
        let text: Vec<String> = list
            .iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let text = text.join(",");
        let path = format!("{log_path}&streams={text}");
        let mut bodies = Vec::new();
        for (i, served) in served_ok.iter_mut().enumerate() {
            let (status, body) = get_raw(&cluster, i, Some(&writer), &path).await;
            assert_eq!(status, 200, "replica {i} filter {text}");
            *served += 1;
            bodies.push(body);
        }
        assert!(
            bodies.iter().all(|b| *b == bodies[primary]),
            "filter {text} differs"
        );
        let got: serde_json::Value = serde_json::from_slice(&bodies[0]).expect("json");
        let expected: Vec<&serde_json::Value> = whole
            .iter()
            .filter(|e| {
                let stream = e["stream"].as_u64().expect("stream");
                list.iter().any(|(a, b)| *a <= stream && stream <= *b)
            })
            .collect();
        let got: Vec<&serde_json::Value> =
            got["events"].as_array().expect("events").iter().collect();
        assert_eq!(got, expected, "filter {text}");
    }
    // A filtered subscription at each backup: catch-up holds exactly the
    // listed streams' events, in order.
    let filter = "7301,7304-7305";
    let expected: Vec<(u64, u64, String)> = whole
        .iter()
        .filter(|e| [7301, 7304, 7305].contains(&e["stream"].as_u64().expect("stream")))
        .map(|e| {
            let position = e["position"].as_u64().expect("position");
            let stream = e["stream"].as_u64().expect("stream");
            (
                position,
                stream,
                e["base64"].as_str().expect("base64").to_string(),
            )
        })
        .collect();
    for &backup in &backups {
        let reader = client_of(&cluster, backup);
        let stream = reader.subscribe_filtered(0, Some(filter));
        let got: Vec<(u64, u64, String)> =
            tokio::time::timeout(WAIT, stream.take(expected.len()).collect::<Vec<_>>())
                .await
                .expect("catch-up in time")
                .into_iter()
                .map(|e| e.expect("event"))
                .map(|e| (e.position, e.stream, e.base64))
                .collect();
        assert_eq!(got, expected, "filtered subscription at replica {backup}");
    }
    // Bad filters and numbers: the same 400 from every replica.
    for bad in [
        "streams=18446744073709551615",
        "streams=9223372036854775808",
        "streams=%2B7300",
        "streams=07300",
        "streams=7300-",
        "streams=7300,,7301",
        "min_position=18446744073709551615",
        "min_position=%2B5",
    ] {
        let path = format!("/v1/log?{bad}");
        let mut bodies = Vec::new();
        for i in 0..3 {
            let (status, body) = get_raw(&cluster, i, Some(&writer), &path).await;
            assert_eq!(
                (status, error_code(&body).as_str()),
                (400, "bad_request"),
                "{bad}"
            );
            bodies.push(body);
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{bad}");
    }
    // A reversed range is well-formed but names no stream: the same 422.
    let mut bodies = Vec::new();
    for i in 0..3 {
        let (status, body) = get_raw(&cluster, i, Some(&writer), "/v1/log?streams=7305-7300").await;
        assert_eq!((status, error_code(&body).as_str()), (422, "refused"));
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "reversed range");
    // min_position beyond the end: a typed 422, within the wait bounds.
    for i in 0..3 {
        let started = Instant::now();
        let far = "/v1/streams/7300/events?min_position=9223372036854775807";
        let (status, body) = get_raw(&cluster, i, Some(&writer), far).await;
        assert_eq!(
            (status, error_code(&body).as_str()),
            (422, "position_not_reached"),
            "replica {i}"
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // Refusals and break-glass answer as at the primary, byte for byte.
    let auditor = cluster.dev.auditor_token.clone();
    let cases: [(Option<&str>, &str, u16); 4] = [
        (None, "/v1/streams/7300/events", 401),
        (Some(&auditor), "/v1/streams/7300/events", 403),
        (Some(&nurse), "/v1/streams/7301/events", 403),
        (Some(&nurse), "/v1/streams/7300/events", 200),
    ];
    for (token, path, expected) in cases {
        let mut bodies = Vec::new();
        for (i, served) in served_ok.iter_mut().enumerate() {
            let (status, body) = get_raw(&cluster, i, token, path).await;
            assert_eq!(status, expected, "replica {i} {path}");
            if status == 200 {
                *served += 1;
            }
            bodies.push(body);
        }
        assert!(bodies.iter().all(|b| *b == bodies[0]), "{path} {expected}");
    }
    let (status, log) = get_raw(&cluster, backups[0], Some(&nurse), "/v1/log?max=1000").await;
    assert_eq!(status, 200);
    served_ok[backups[0]] += 1;
    let log: serde_json::Value = serde_json::from_slice(&log).expect("json");
    assert!(
        log["events"]
            .as_array()
            .expect("events")
            .iter()
            .all(|e| e["stream"] == 7300)
    );
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cluster.ca_pem()).expect("dev CA"))
        .timeout(WAIT)
        .build()
        .expect("http client");
    let opened = http
        .post(format!(
            "{}/v1/streams/7301/break-glass",
            cluster.dev.api_urls[primary]
        ))
        .bearer_auth(&nurse)
        .json(&serde_json::json!({ "reason": "patient collapsed" }))
        .send()
        .await
        .expect("break-glass");
    assert_eq!(opened.status().as_u16(), 200);
    let mut bodies = Vec::new();
    for i in 0..3 {
        let (status, body) = get_raw(&cluster, i, Some(&nurse), "/v1/streams/7301/events").await;
        assert_eq!(status, 200, "break-glass read at replica {i}");
        bodies.push(body);
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "break-glass reads differ"
    );

    // The trail: one committed record per read each backup served, naming
    // the read and the backup; break-glass reads were the primary's.
    let trail = trail_events(&client).await;
    for &backup in &backups {
        let mark = format!(" served by replica {backup}");
        let served: Vec<_> = trail
            .iter()
            .filter(|e| e.remote.as_deref().is_some_and(|r| r.ends_with(&mark)))
            .collect();
        let reads = served
            .iter()
            .filter(|e| {
                matches!(e.action, AccessAction::ReadStream | AccessAction::ReadLog)
                    && e.outcome == "success"
            })
            .count();
        assert_eq!(reads, served_ok[backup], "replica {backup}: {served:#?}");
        for (stream, count) in READ_STREAMS {
            let named = served
                .iter()
                .filter(|e| {
                    e.action == AccessAction::ReadStream
                        && e.principal == "dev"
                        && e.stream == Some(stream)
                        && (e.from, e.to) == (Some(0), Some(count as u64))
                })
                .count();
            assert_eq!(named, 1, "replica {backup} stream {stream}");
        }
        let filtered = served
            .iter()
            .filter(|e| {
                e.action == AccessAction::ReadLog
                    && e.detail.as_deref() == Some("filter streams=7300,7303-7305")
            })
            .count();
        assert_eq!(filtered, 1, "replica {backup}: the filter is in the trail");
        assert!(served.iter().any(|e| e.action == AccessAction::Subscribe
            && e.detail.as_deref()
                == Some("subscription window delivered; filter streams=7301,7304-7305")));
        assert!(served.iter().all(|e| e.break_glass.is_none()));
    }
    let glass_reads = trail
        .iter()
        .filter(|e| e.action == AccessAction::ReadStream && e.break_glass.is_some())
        .collect::<Vec<_>>();
    assert_eq!(glass_reads.len(), 3, "{glass_reads:#?}");
    assert!(
        glass_reads
            .iter()
            .all(|e| !e.remote.as_deref().unwrap_or("").contains(" served by "))
    );
    cluster.stop().expect("stop");
}

// Goal: a backup cut off from the primary answers no read (503, nothing
// recorded, nothing served), serves again once the primary is back, and
// `vellum verify --cluster` passes afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_cut_off_from_the_primary_serves_no_read() {
    use vellum_compliance::trail::AccessAction;
    let dir = test_dir();
    let mut cluster = start_cluster(dir.path());
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let backup = (primary + 1) % 3;
    let writer = cluster.dev.writer_token.clone();
    let client = cluster.client(None).expect("client");
    let mut end = 0;
    for n in 0..3 {
        let receipt = client
            .append(7400, vec![Bytes::from(format!("event {n}"))], None)
            .await
            .expect("append");
        end = receipt.first_position + 1;
    }
    let warm = format!("/v1/streams/7400/events?from=0&min_position={end}");
    let (status, _) = get_raw(&cluster, backup, Some(&writer), &warm).await;
    assert_eq!(status, 200, "the backup serves while the primary is up");
    cluster.pause(primary).expect("pause the primary");
    let cut = format!("/v1/streams/7400/events?from=2&min_position={end}");
    let (status, body) = get_raw(&cluster, backup, Some(&writer), &cut).await;
    cluster.resume(primary).expect("resume the primary");
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    assert_eq!(error_code(&body), "unavailable");
    assert!(!String::from_utf8_lossy(&body).contains("\"events\""));
    cluster.wait_primary(WAIT).await.expect("a primary again");
    // Served again once a primary records (the client retries a view change).
    let again = client_of(&cluster, backup)
        .read_stream_at_least(7400, 1, 10, end)
        .await
        .expect("read after the primary is back");
    assert_eq!(again.events.len(), 2);
    let trail = trail_events(&client).await;
    let unrecorded = trail
        .iter()
        .filter(|e| {
            e.action == AccessAction::ReadStream
                && e.stream == Some(7400)
                && e.from == Some(2)
                && e.outcome == "success"
        })
        .count();
    assert_eq!(unrecorded, 0, "the refused read left no success record");
    assert!(trail.iter().any(|e| e.action == AccessAction::ReadStream
        && e.stream == Some(7400)
        && e.from == Some(1)
        && e.outcome == "success"));
    cluster.stop().expect("stop");
    let s = |p: &Path| p.display().to_string();
    let (cluster_dir, policy) = (s(&cluster.dev.dir), s(&cluster.dev.policy_path));
    let (code, report, err) = tokio::task::spawn_blocking(move || {
        vellum_cli(&["verify", "--cluster", &cluster_dir, "--policy", &policy])
    })
    .await
    .expect("verify");
    assert_eq!(
        code, 0,
        "the cluster verifies after the cut:\n{report}\n{err}"
    );
}
