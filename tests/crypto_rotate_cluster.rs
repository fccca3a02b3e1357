//! KEK rotation on three real replica processes: `vellum keys rotate-kek`
//! is refused on a running replica; each replica in turn is stopped,
//! rotated to the same new KEK and restarted; the cluster serves throughout
//! and afterwards (old and new streams), each replica's rotation is in the
//! access trail, every replica decrypts every event byte for byte with the
//! new KEK, and `vellum verify --cluster` passes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;
use vellum_compliance::trail::{ACCESS_TRAIL_STREAM, AccessAction, AccessEvent};

mod support;
use support::{TestDir, vellum_cli};

const WAIT: Duration = Duration::from_secs(60);
const BEFORE: u64 = 6100;
const AFTER: u64 = 6101;

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

/// Payloads with bytes a careless codec would change.
fn payloads(stream: u64) -> Vec<Bytes> {
    (0..3)
        .map(|n| {
            Bytes::from(format!(
                "{{\"chart\":{stream},\"n\":{n},\"note\":\"caf\u{e9} \\\"q\\\"\"}}"
            ))
        })
        .collect()
}

async fn trail(cluster: &LocalCluster) -> Vec<AccessEvent> {
    let client = cluster.client(None).expect("client");
    let mut out = Vec::new();
    for _ in 0..100 {
        let page = client
            .read_stream(ACCESS_TRAIL_STREAM, out.len() as u64, 1000)
            .await
            .expect("read the trail");
        if page.events.is_empty() {
            break;
        }
        for event in &page.events {
            use base64::Engine as _;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&event.base64)
                .expect("base64");
            out.push(AccessEvent::from_payload(&bytes).expect("trail event"));
        }
    }
    out
}

/// Waits until the trail holds a `kek_rotated` record of each of `names`.
async fn wait_rotations_recorded(cluster: &LocalCluster, names: &[String]) -> Vec<AccessEvent> {
    let deadline = Instant::now() + WAIT;
    loop {
        let rotated: Vec<AccessEvent> = trail(cluster)
            .await
            .into_iter()
            .filter(|e| e.action == AccessAction::KekRotated)
            .collect();
        if names
            .iter()
            .all(|n| rotated.iter().any(|e| &e.principal == n))
        {
            return rotated;
        }
        assert!(
            Instant::now() < deadline,
            "rotations of {names:?} not all in the trail: {rotated:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn replica_name(data: &Path) -> String {
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("vellum.json")).expect("vellum.json"))
            .expect("json");
    meta["name"].as_str().expect("name").to_string()
}

// Goal: a rolling KEK rotation of a live cluster (one stopped replica at a
// time, all to the same new KEK) loses nothing, is audited per replica,
// and leaves a cluster that serves, replicates new keys and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_kek_rotation_on_a_live_cluster() {
    let dir = TestDir::new("vellum-kek-rotate");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let client = cluster.client(None).expect("client");
    let receipt = client
        .append(BEFORE, payloads(BEFORE), None)
        .await
        .expect("append before");
    let written = receipt.first_position + 3;
    let new_kek = dir.path().join("new-kek.key");
    let (code, _, err) = vellum_cli(&["keys", "new-kek", "--out", s(&new_kek)]);
    assert_eq!(code, 0, "keys new-kek: {err}");
    let (code, _, err) = vellum_cli(&["keys", "new-kek", "--out", s(&new_kek)]);
    assert_ne!(code, 0, "new-kek never overwrites");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        std::fs::metadata(&new_kek)
            .expect("kek")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let old_line = std::fs::read(cluster.data_dir(0).join("keys/kek.key")).expect("old kek");

    let data0 = cluster.data_dir(0);
    let (code, _, err) = vellum_cli(&["keys", "rotate-kek", "--data-dir", s(&data0)]);
    assert_ne!(code, 0, "refused on a running replica");
    assert!(err.contains("stop the replica first"), "{err}");

    let mut names = Vec::new();
    for i in 0..3 {
        let data = cluster.data_dir(i);
        names.push(replica_name(&data));
        cluster.kill(i).expect("stop");
        let dek_files = std::fs::read_dir(data.join("keys"))
            .expect("keys dir")
            .filter(|e| {
                let name = e.as_ref().expect("entry").file_name();
                let name = name.to_string_lossy();
                name.starts_with("dek-") && name.ends_with(".key")
            })
            .count();
        assert!(dek_files >= 2, "the trail's key and stream {BEFORE}'s");
        let (code, out, err) = vellum_cli(&[
            "keys",
            "rotate-kek",
            "--data-dir",
            s(&data),
            "--new-kek-file",
            s(&new_kek),
            "--json",
        ]);
        assert_eq!(code, 0, "rotate replica {i}: {err}");
        let report: serde_json::Value = serde_json::from_str(&out).expect("json report");
        assert_eq!(report["keys_rewrapped"], dek_files, "replica {i}: {out}");
        assert_eq!(
            std::fs::read(data.join("keys/kek.key")).expect("kek"),
            std::fs::read(&new_kek).expect("new kek"),
            "replica {i} holds the new kek"
        );
        cluster.start_replica(i).expect("restart");
        cluster
            .wait_primary(WAIT)
            .await
            .expect("a primary after the restart");
        let read = client
            .read_stream_at_least(BEFORE, 0, 10, written)
            .await
            .expect("read back");
        assert_eq!(read.events.len(), 3, "replica {i} restarted, stream served");
    }
    let rotated = wait_rotations_recorded(&cluster, &names).await;
    for event in &rotated {
        assert_eq!(event.role, "system");
        let detail = event.detail.as_deref().unwrap_or("");
        assert!(detail.starts_with("kek rotated: old "), "{detail}");
        assert!(!detail.contains(std::str::from_utf8(&old_line).expect("line").trim_end()));
    }

    // A stream keyed after the rotation: its key travels wrapped under the
    // new KEK and every replica can store it.
    client
        .append(AFTER, payloads(AFTER), None)
        .await
        .expect("append after");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cluster_dir = cluster.dev.dir.clone();
    let policy = cluster.dev.policy_path.clone();
    let dirs: Vec<_> = (0..3).map(|i| cluster.data_dir(i)).collect();
    cluster.stop().expect("stop the cluster");

    for (i, data) in dirs.iter().enumerate() {
        assert!(
            !data.join("keys/kek-rotated.pending").exists(),
            "replica {i}: recorded rotations leave the pending file"
        );
        for stream in [BEFORE, AFTER] {
            let (code, out, err) = vellum_cli(&[
                "read",
                "--data-dir",
                s(data),
                "--stream",
                &stream.to_string(),
            ]);
            assert_eq!(code, 0, "replica {i} reads stream {stream}: {err}");
            let expected: String = payloads(stream)
                .iter()
                .map(|p| format!("{}\n", std::str::from_utf8(p).expect("utf-8")))
                .collect();
            assert_eq!(out, expected, "replica {i} stream {stream} byte for byte");
        }
    }
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster_dir),
        "--policy",
        s(&policy),
    ]);
    assert_eq!(
        code, 0,
        "verify --cluster after the rotation:\n{out}\n{err}"
    );
}
