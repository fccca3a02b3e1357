//! Replacing a replica whose disk is lost (issue 12), on three real
//! `vellum start` processes: the replica's secrets are exported at setup;
//! while a client writes, its data directory is deleted; `vellum replace`
//! lays it out again from the secrets and it is started. It rebuilds from
//! its peers: every acknowledged event is at its offset, byte for byte, on
//! every replica (a stream created while it was gone too), a stream shredded
//! before the loss stays shredded there (its key never comes back), and
//! `vellum verify --cluster` passes. Strangers — a non-empty target, the
//! secrets of another replica or cluster, a truncated or changed file, a
//! file others may read — are refused by the binary, naming the problem.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use support::{TestDir, client_of, cluster_call, vellum_cli};
use vellum::client::Client;
use vellum::local_cluster::LocalCluster;

const WAIT: Duration = Duration::from_secs(60);
/// Written before the loss.
const BEFORE: u64 = 7000;
/// Written by a client throughout the loss and the replacement.
const DURING: u64 = 7001;
/// Created while the replica was gone.
const CREATED_WHILE_GONE: u64 = 7002;
/// Shredded before the loss.
const SHREDDED: u64 = 7003;
/// Appends of the writer that runs throughout.
const DURING_APPENDS: u64 = 30;

/// An acknowledged event: stream, offset, bytes.
type Acked = (u64, u64, Bytes);

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// Payload `i` of `stream`: bytes that are not text (NUL, 0xff, a quote, a
/// newline), so a reader that reinterprets them fails.
fn event(stream: u64, i: u64) -> Bytes {
    let mut bytes = format!("stream {stream} event {i} ").into_bytes();
    bytes.extend_from_slice(&[0x00, 0xff, 0x7f, b'"', b'\n']);
    Bytes::from(bytes)
}

async fn append(client: &Client, stream: u64, i: u64) -> Acked {
    let bytes = event(stream, i);
    let receipt = client
        .append(stream, vec![bytes.clone()], None)
        .await
        .expect("append");
    (stream, receipt.first_offset, bytes)
}

/// Runs the `vellum` binary off the runtime's threads.
async fn cli(args: &[String]) -> (i32, String, String) {
    let args = args.to_vec();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        vellum_cli(&args)
    })
    .await
    .expect("cli task")
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|a| (*a).to_string()).collect()
}

/// Every event of `stream` on one replica, as bytes by offset.
async fn read_bytes(client: &Client, stream: u64) -> Vec<Bytes> {
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = client
            .read_stream(stream, out.len() as u64, 1000)
            .await
            .expect("read");
        if page.events.is_empty() {
            break;
        }
        for e in &page.events {
            assert_eq!(e.offset, out.len() as u64, "dense offsets");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&e.base64)
                .expect("base64");
            out.push(Bytes::from(bytes));
        }
    }
    out
}

/// Writes `bytes` to a new file with `mode`.
fn write_with_mode(path: &Path, bytes: &[u8], mode: u32) {
    std::fs::write(path, bytes).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every stranger `replace` must refuse while the replica is gone, each
/// with the words that name its problem; none may lay anything out.
async fn strangers_are_refused(dir: &Path, cluster: &LocalCluster, victim: usize, secrets: &Path) {
    let config = cluster.dev.configs[victim].clone();
    let kept = std::fs::read(secrets).expect("secrets");
    let other = (victim + 1) % 3;
    let other_replica = dir.join("other-replica.secrets");
    let (code, _, err) = cli(&args(&[
        "secrets",
        "export",
        "--config",
        &s(&cluster.dev.configs[other]),
        "--out",
        &s(&other_replica),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let foreign_root = dir.join("other-cluster");
    vellum::cluster::create_dev_cluster(&foreign_root, 3, None).expect("another cluster");
    let foreign = dir.join("other-cluster.secrets");
    let foreign_config = foreign_root.join(format!("r{victim}.json"));
    let (code, _, err) = cli(&args(&[
        "secrets",
        "export",
        "--config",
        &s(&foreign_config),
        "--out",
        &s(&foreign),
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let truncated = dir.join("truncated.secrets");
    write_with_mode(&truncated, &kept[..kept.len() - 30], 0o600);
    let tampered = dir.join("tampered.secrets");
    let mut changed = kept.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 0x01;
    write_with_mode(&tampered, &changed, 0o600);
    let readable = dir.join("readable.secrets");
    write_with_mode(&readable, &kept, 0o644);
    let busy = dir.join("busy");
    std::fs::create_dir(&busy).expect("mkdir");
    std::fs::write(busy.join("vsr-state.json"), b"{}").expect("an old file");

    let with_config =
        |file: &Path| args(&["replace", "--secrets", &s(file), "--config", &s(&config)]);
    let cases: Vec<(&str, Vec<String>, String)> = vec![
        (
            "non-empty target",
            args(&["replace", "--secrets", &s(secrets), "--data-dir", &s(&busy)]),
            "is not empty".into(),
        ),
        (
            "another replica",
            with_config(&other_replica),
            format!("secrets of replica {other}"),
        ),
        (
            "another cluster",
            with_config(&foreign),
            "holds the secrets of cluster".into(),
        ),
        ("truncated", with_config(&truncated), "truncated".into()),
        (
            "tampered",
            with_config(&tampered),
            "checksum mismatch".into(),
        ),
        (
            "readable by others",
            with_config(&readable),
            "insecure permissions 0644".into(),
        ),
    ];
    for (what, command, expected) in cases {
        let (code, out, err) = cli(&command).await;
        assert_ne!(code, 0, "{what} is refused: {out}");
        assert!(
            err.contains(&expected),
            "{what}: expected {expected:?} in {err}"
        );
    }
    assert!(
        !cluster.data_dir(victim).exists(),
        "a refused replace lays nothing out"
    );
    assert_eq!(
        std::fs::read_dir(&busy).expect("busy").count(),
        1,
        "busy left as it was"
    );
}

// Goal: a replica whose disk is lost comes back by `vellum replace` from its
// kept secrets and rebuilds from its peers: every acknowledged event at its
// offset with its bytes on every replica, a shredded stream's key never back,
// `vellum verify --cluster` passing; strangers refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_replica_is_replaced_from_its_secrets_and_rebuilds() {
    let dir = TestDir::new("vellum-replace");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let victim = (primary + 1) % 3;
    let config = cluster.dev.configs[victim].clone();
    let secrets = dir.path().join(format!("r{victim}.secrets"));
    let export = args(&[
        "secrets",
        "export",
        "--config",
        &s(&config),
        "--out",
        &s(&secrets),
    ]);
    let (code, out, err) = cli(&export).await;
    assert_eq!(code, 0, "export from the running replica: {out}{err}");
    let mode = std::fs::metadata(&secrets)
        .expect("secrets")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the secrets file is private");
    let (code, _, err) = cli(&export).await;
    assert!(code != 0 && err.contains("refusing to overwrite"), "{err}");

    let client = cluster.client(None).expect("client");
    let mut acked: Vec<Acked> = Vec::new();
    for i in 0..5 {
        acked.push(append(&client, BEFORE, i).await);
        append(&client, SHREDDED, i).await;
    }
    let officer = cluster
        .dev
        .privacy_officer_token
        .clone()
        .expect("officer token");
    let shred = format!("/v1/streams/{SHREDDED}/shred");
    let reason = json!({ "reason": "patient request 2026-12" });
    let (got, body) = cluster_call(
        &cluster,
        primary,
        "POST",
        Some(&officer),
        &shred,
        Some(&reason),
    )
    .await;
    assert_eq!(got, 200, "{body}");

    // A client writes throughout the loss and the replacement.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..DURING_APPENDS {
                let bytes = event(DURING, i);
                if let Ok(receipt) = client.append(DURING, vec![bytes.clone()], None).await {
                    acked.push((DURING, receipt.first_offset, bytes));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            acked
        })
    };
    cluster.kill(victim).expect("kill");
    std::fs::remove_dir_all(cluster.data_dir(victim)).expect("the disk is lost");
    for i in 0..5 {
        acked.push(append(&client, CREATED_WHILE_GONE, i).await);
    }
    strangers_are_refused(dir.path(), &cluster, victim, &secrets).await;

    let replace = args(&[
        "replace",
        "--secrets",
        &s(&secrets),
        "--config",
        &s(&config),
    ]);
    let (code, out, err) = cli(&replace).await;
    assert_eq!(code, 0, "replace: {out}{err}");
    assert!(out.contains("vellum start --config"), "{out}");
    let new_dir = cluster.data_dir(victim);
    for absent in ["segments", "vsr-state.json", "index.sqlite3"] {
        assert!(!new_dir.join(absent).exists(), "{absent}: nothing of a log");
    }
    cluster
        .start_replica(victim)
        .expect("start the replaced replica");
    for i in 5..8 {
        acked.push(append(&client, CREATED_WHILE_GONE, i).await);
    }
    let during = writer.await.expect("writer");
    assert!(
        during.len() as u64 > DURING_APPENDS / 2,
        "most appends acknowledged"
    );
    acked.extend(during);
    let commit = cluster.health().await[primary]
        .as_ref()
        .map_or(0, |h| h.commit);
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the replaced replica rebuilds");

    for i in 0..3 {
        let reader = client_of(&cluster, i);
        for stream in [BEFORE, DURING, CREATED_WHILE_GONE] {
            let held = read_bytes(&reader, stream).await;
            for (_, offset, bytes) in acked.iter().filter(|(s, _, _)| *s == stream) {
                let at = usize::try_from(*offset).expect("offset");
                assert_eq!(
                    held.get(at),
                    Some(bytes),
                    "replica {i} stream {stream} offset {offset}"
                );
            }
        }
    }
    let writer_token = cluster.dev.writer_token.clone();
    let events = format!("/v1/streams/{SHREDDED}/events");
    let (got, body) =
        cluster_call(&cluster, victim, "GET", Some(&writer_token), &events, None).await;
    assert_eq!(got, 410, "the shredded stream stays shredded: {body}");
    cluster.stop().expect("stop");

    let held = held_streams(&new_dir);
    assert!(
        held.contains(&CREATED_WHILE_GONE),
        "the new stream's key came back: {held:?}"
    );
    assert!(
        !held.contains(&SHREDDED),
        "the shredded key never came back: {held:?}"
    );
    let policy = root.join("policy.txt");
    let verify = args(&["verify", "--cluster", &s(&root), "--policy", &s(&policy)]);
    let (code, out, err) = cli(&verify).await;
    assert_eq!(code, 0, "verify --cluster: {out}{err}");
}

/// The streams whose data keys a stopped replica's key store holds.
fn held_streams(data: &Path) -> Vec<u64> {
    use vellum::crypto::{KeyStore, open_kek};
    let dir = vellum::datadir::DataDir::new(PathBuf::from(data));
    let meta = vellum::datadir::NodeMeta::load(&dir).expect("vellum.json");
    let kek = open_kek(meta.kek.as_ref(), &dir.kek()).expect("the replica's KEK");
    let store = KeyStore::open(&dir.keys(), kek, meta.writer_id()).expect("key store");
    let keys = store.held_keys().expect("every held key unwraps");
    keys.iter().map(|(_, stream, _)| *stream).collect()
}
