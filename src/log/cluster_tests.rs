//! Tests of a log opened as one replica of a cluster, driven by hand: no
//! replica loop, no transport (the outbox drops every message), messages
//! delivered by the test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{ClusterRole, LocalLog, LogError, LogOptions, Outbox};
use crate::vsr::{Message, MessageBody, ReplicaIndex};

/// Sends nothing; keeps the recovery nonce the replica asked its peers with.
#[derive(Debug, Default)]
struct Dropping {
    nonce: std::sync::Mutex<Option<u64>>,
}

impl Outbox for Dropping {
    fn send(&self, _to: ReplicaIndex, message: Message) {
        if let MessageBody::Recovery { nonce } = message.body {
            *self.nonce.lock().expect("lock") = Some(nonce);
        }
    }
}

/// Opens replica 0 of a new three-replica dev cluster and brings it to
/// normal status as the primary of view 0 (both peers answer its recovery:
/// nothing anywhere, a new cluster).
fn new_primary(dir: &std::path::Path) -> (Arc<LocalLog>, u128) {
    let dev = crate::cluster::create_dev_cluster(&dir.join("dev"), 3, None).expect("a dev cluster");
    let config = crate::cluster::ClusterConfig::load(&dev.configs[0]).expect("r0 config");
    let outbox = Arc::new(Dropping::default());
    let role = ClusterRole {
        replica_count: 3,
        outbox: Arc::clone(&outbox) as Arc<dyn Outbox>,
        commit_wait_ms: 30_000,
    };
    let options = LogOptions {
        cluster: Some(role),
        without_index: true,
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(&config.data_dir, options).expect("open replica 0");
    let deadline = Instant::now() + Duration::from_secs(10);
    let nonce = loop {
        if let Some(nonce) = *outbox.nonce.lock().expect("lock") {
            break nonce;
        }
        assert!(
            Instant::now() < deadline,
            "replica 0 never asked to recover"
        );
        log.tick().expect("tick");
        std::thread::sleep(Duration::from_millis(1));
    };
    for from in [1, 2] {
        log.deliver(Message {
            cluster: config.cluster,
            from,
            view: 0,
            body: MessageBody::RecoveryResponse {
                nonce,
                op: 0,
                commit: 0,
                headers: Vec::new(),
                is_primary: false,
            },
        })
        .expect("deliver");
    }
    (Arc::new(log), config.cluster)
}

// Goal: a caller waiting for its op's reply gives up at once when the view
// changes under it (every waiter is woken by the change), instead of
// noticing at its next periodic look (a polling wait, up to
// `VIEW_CHECK_MS` = 1 s later).
#[test]
fn a_view_change_wakes_a_waiting_append_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (log, cluster) = new_primary(dir.path());
    let before = log.status();
    assert!(before.is_primary, "replica 0 leads view 0: {before:?}");
    let appender = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let outcome = log.append(5000, &[Bytes::from_static(b"{}")], None, None);
            (outcome, Instant::now())
        })
    };
    // The append is in flight (no backup ever acknowledges it).
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.status().op == before.op {
        assert!(
            Instant::now() < deadline,
            "the append never reached the core"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(50));
    // Both backups start a view change to view 1: replica 0 joins it.
    for from in [1, 2] {
        log.deliver(Message {
            cluster,
            from,
            view: 1,
            body: MessageBody::StartViewChange,
        })
        .expect("deliver");
    }
    let changed = Instant::now();
    assert_eq!(log.status().view, 1, "replica 0 moved to view 1");
    let (outcome, returned) = appender.join().expect("appender");
    assert!(
        matches!(outcome, Err(LogError::Indeterminate(_))),
        "the append's outcome is unknown after the view change: {outcome:?}"
    );
    let waited = returned.saturating_duration_since(changed);
    assert!(
        waited < Duration::from_millis(300),
        "the waiter returned {waited:?} after the view change: not woken by it"
    );
}
