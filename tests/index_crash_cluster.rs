//! Real replica processes and the audit index (issue 9, defects 1 and 4):
//! `kill -9` of replicas right after acknowledged appends, a few times, then
//! offline `vellum verify` passes on every replica (no index row for a
//! certificate a crash took from the log); and `vellum index rebuild` of a
//! stopped cluster replica rebuilds its index (refused while it runs).

mod support;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;

const WAIT: Duration = Duration::from_secs(60);
/// Kill-and-restart rounds (bounded).
const ROUNDS: usize = 8;
/// Appends acknowledged before each kill.
const APPENDS_PER_ROUND: u64 = 6;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vellum"))
}

fn vellum(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(exe())
        .args(args)
        .env_remove("VELLUM_INDEX_URL")
        .env_remove("VELLUM_LOG")
        .output()
        .expect("run vellum");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Offline `vellum verify` of one stopped replica against the pinned
/// policy: (passed, report text).
fn verify(dir: &Path, policy_path: &Path) -> (bool, String) {
    let (code, text) = vellum(&[
        "verify",
        "--data-dir",
        dir.to_str().expect("utf-8"),
        "--policy",
        policy_path.to_str().expect("utf-8"),
    ]);
    (code == 0, text)
}

// Goal: kill -9 of a replica right after acknowledged appends (several
// rounds) leaves every replica verifiable offline, and a stopped replica's
// index can be rebuilt with `vellum index rebuild` (refused while running).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_after_appends_then_offline_verify_and_rebuild() {
    let tmp = tempfile::Builder::new()
        .prefix("vellum-index-crash-")
        .tempdir()
        .expect("tempdir");
    let mut cluster =
        LocalCluster::start(&tmp.path().join("cluster"), 3, exe()).expect("cluster starts");
    let client = cluster.client(None).expect("client");
    for round in 0..ROUNDS {
        let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
        // Alternate between the backups, and take the primary twice.
        let victim = match round {
            2 | 5 => primary,
            _ => (primary + 1 + round % 2) % 3,
        };
        for i in 0..APPENDS_PER_ROUND {
            let event = Bytes::from(format!("{{\"round\":{round},\"i\":{i}}}"));
            client
                .append(3000 + round as u64, vec![event], None)
                .await
                .expect("append acknowledged");
        }
        cluster.kill(victim).expect("kill -9");
        cluster.start_replica(victim).expect("restart");
        let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
        let commit = cluster.health().await[primary]
            .as_ref()
            .map_or(0, |h| h.commit);
        cluster
            .wait_commit(&[0, 1, 2], commit, WAIT)
            .await
            .expect("every replica catches up");
    }
    let running = cluster.data_dir(0);
    let (code, text) = vellum(&[
        "index",
        "rebuild",
        "--data-dir",
        running.to_str().expect("utf-8"),
    ]);
    assert_ne!(code, 0, "rebuild of a running replica is refused: {text}");
    cluster.stop().expect("stop");
    let policy_path = cluster.dev.policy_path.clone();
    for i in 0..3 {
        let (passed, report) = verify(&cluster.data_dir(i), &policy_path);
        assert!(passed, "replica {i} verifies after the kills:\n{report}");
    }
    // A damaged index on a stopped replica, then the supported rebuild.
    let dir = cluster.data_dir(1);
    tokio::task::block_in_place(|| {
        support::tamper_index(
            &dir,
            &["DELETE FROM commits WHERE op = (SELECT max(op) FROM commits)"],
        );
    });
    assert!(!verify(&dir, &policy_path).0, "the damage is seen");
    let (code, text) = vellum(&[
        "index",
        "rebuild",
        "--data-dir",
        dir.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "rebuild of a stopped cluster replica: {text}");
    let (passed, report) = verify(&dir, &policy_path);
    assert!(passed, "replica 1 verifies after the rebuild:\n{report}");
}
