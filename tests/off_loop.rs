//! Nothing slow under the commit path (issue 10, item 5), on one replica's
//! data directory driven through the library: appends keep committing while
//! the audit index is stalled, and the index catches up from the log once
//! it runs again (`vellum verify` passes); a receipt built from the salts
//! and leaf preimages kept from sealing equals the one read back from disk,
//! and every event of it checks with `vellum proof check`'s logic.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use vellum::log::{LocalLog, receipt};
use vellum_audit::policy::Policy;
use vellum_audit::proof::{InclusionProof, check_event};

fn init(tmp: &tempfile::TempDir) -> PathBuf {
    let data = tmp.path().join("data");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vellum"))
        .args(["init", "--data-dir"])
        .arg(&data)
        .env_remove("VELLUM_INDEX_URL")
        .output()
        .expect("run vellum init");
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    data
}

fn policy(data: &Path) -> Policy {
    let text = std::fs::read_to_string(data.join("policy.txt")).expect("policy");
    Policy::parse(&text).expect("policy parses")
}

fn open(data: &Path) -> LocalLog {
    LocalLog::open(data, support::wait_for_lock())
        .expect("open")
        .0
}

fn events(count: usize, tag: usize) -> Vec<Bytes> {
    (0..count)
        .map(|i| Bytes::from(format!("event {tag}/{i}")))
        .collect()
}

/// Goal: a stalled index never holds up an append. With the index thread
/// taking nothing, appends of more rows than its queue holds all commit
/// (the rows stay in the log and the index is behind); once it runs again,
/// later certificates send what it lacks, it reaches the log's end live,
/// and `vellum verify` passes after close.
#[test]
fn appends_commit_while_the_index_is_stalled_and_it_catches_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(&tmp);
    let log = Arc::new(open(&data));
    log.set_index_stalled(true);
    let (done_tx, done_rx) = mpsc::channel();
    let writer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            // 60,000 event rows: more than the index queue holds.
            for i in 0..60 {
                log.append(16 + (i % 3) as u64, &events(1000, i), None, None)
                    .expect("append while the index is stalled");
            }
            // More certificates than the old 1,024-batch queue took.
            for i in 0..1100 {
                log.append(20, &events(1, i), None, None)
                    .expect("append while the index is stalled");
            }
            let _ = done_tx.send(());
        })
    };
    done_rx
        .recv_timeout(Duration::from_secs(300))
        .expect("appends keep committing while the index is stalled");
    writer.join().expect("writer");
    let committed = log.committed_events();
    assert_eq!(committed, 61_100);
    let status = log.index_status().expect("indexed");
    assert!(
        status.deferred_feeds > 0,
        "the queue filled and the log kept rows back: {status:?}"
    );
    assert!(
        status.last_position.is_none_or(|p| p + 1 < committed),
        "a stalled index is behind: {status:?}"
    );
    log.set_index_stalled(false);
    // Live catch-up: each later certificate sends a slice of the backlog
    // (applied once its certificate record is durable: within the lazy
    // record delay, so appends here are spaced wider than that).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut extra = 0usize;
    loop {
        let status = log.index_status().expect("indexed");
        if status.last_position == Some(log.committed_events() - 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the index did not catch up: {status:?}"
        );
        log.append(21, &events(1, extra), None, None)
            .expect("append after the stall");
        extra += 1;
        std::thread::sleep(Duration::from_millis(400));
    }
    let status = log.index_status().expect("indexed");
    assert_eq!(status.skipped_rows, 0, "{status:?}");
    assert_eq!(status.dropped_batches, 0, "{status:?}");
    let log = Arc::try_unwrap(log).unwrap_or_else(|_| panic!("the writer is done"));
    log.close().expect("close");
    let report = vellum::verify::verify_data_dir(&data, &policy(&data), None, &mut |_| {});
    assert!(report.passed, "verify after the stall:\n{report:?}");
}

/// Goal: closing a log whose index is behind sends it the rows it lacks,
/// so verify passes right after close (nothing waits for the next open).
#[test]
fn close_sends_the_index_what_a_full_queue_kept_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(&tmp);
    let log = open(&data);
    log.set_index_stalled(true);
    for i in 0..60 {
        log.append(22, &events(1000, i), None, None)
            .expect("append while the index is stalled");
    }
    let status = log.index_status().expect("indexed");
    assert!(status.deferred_feeds > 0, "{status:?}");
    log.close().expect("close");
    let report = vellum::verify::verify_data_dir(&data, &policy(&data), None, &mut |_| {});
    assert!(report.passed, "verify after close:\n{report:?}");
}

/// Goal: the receipt of an append comes from the material kept from
/// sealing, equals the receipt read back from the record, and every event
/// of it checks (inclusion, quorum, commitment) as `vellum proof check`
/// does; a retry answered from the client table reads the record instead.
#[test]
fn receipts_from_sealed_material_equal_read_back_ones_and_check() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = init(&tmp);
    let policy = policy(&data);
    let log = open(&data);
    for (round, count) in [1usize, 5, 64].into_iter().enumerate() {
        let batch = events(count, round);
        let session = vellum::log::ClientRequest {
            client: 0xfeed + round as u128,
            request: 1,
        };
        let appended = log
            .append(40 + round as u64, &batch, None, Some(session))
            .expect("append");
        let sealed = appended.sealed.clone().expect("material kept from sealing");
        assert_eq!(sealed.preimages.len(), count);
        let in_hand = receipt(&log, &appended).expect("receipt from material in hand");
        let read_back = receipt(
            &log,
            &vellum::log::Appended {
                sealed: None,
                ..appended.clone()
            },
        )
        .expect("receipt read back");
        assert_eq!(
            serde_json::to_value(&in_hand).expect("json"),
            serde_json::to_value(&read_back).expect("json"),
            "both ways give the same receipt"
        );
        for (i, payload) in batch.iter().enumerate() {
            let proof = InclusionProof::parse(&in_hand.proofs[i]).expect("proof parses");
            let salt: [u8; 32] = BASE64
                .decode(&in_hand.salts[i])
                .expect("salt is base64")
                .try_into()
                .expect("32-byte salt");
            let check = check_event(&proof, &policy, &salt, payload);
            assert!(check.passed(), "event {i} of round {round}: {check:?}");
        }
        // A retry is answered from the client table: no material in hand.
        let retry = log
            .append(40 + round as u64, &batch, None, Some(session))
            .expect("retry");
        assert!(retry.duplicate);
        let again = receipt(&log, &retry).expect("receipt of the retry");
        assert_eq!(again.salts, in_hand.salts);
        assert_eq!(again.proofs.len(), count);
    }
    log.close().expect("close");
}
