//! Group commit of the segment store under concurrent submitters, and
//! rollover on a real directory.

use std::sync::{Arc, Mutex};

use vellum::storage::{SEGMENT_BYTES_MIN, Storage, StorageConfig};
use vellum_audit::hash::{Hash, sha256};
use vellum_audit::record::{
    EventFrame, OpHeader, Record, RecordKind, encode_events, genesis_parent,
};
use vellum_audit::segment::{SegmentEnd, scan_log_dir};

const CLUSTER: u128 = 0x9c;

/// The log layer's view of the chain: builds the next op.
struct Chain {
    last_op: u64,
    last_checksum: Hash,
    tree_size: u64,
}

impl Chain {
    fn new() -> Chain {
        Chain {
            last_op: 0,
            last_checksum: genesis_parent(CLUSTER),
            tree_size: 0,
        }
    }

    fn op(&mut self, client: u128, events: u32) -> (Record, (u64, Hash)) {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op + 1;
        header.client_id = client;
        header.stream = 16 + client as u64;
        header.key_id = 1;
        header.global_position = self.tree_size;
        header.event_count = events;
        header.tree_size = self.tree_size + u64::from(events);
        let sealed: Vec<Vec<u8>> = (0..events).map(|i| vec![i as u8; 64]).collect();
        let frames: Vec<EventFrame<'_>> = sealed
            .iter()
            .map(|s| EventFrame {
                commitment: [0x11; 32],
                nonce: [1; 12],
                sealed: s.as_slice(),
            })
            .collect();
        let record = Record::new(header, encode_events(&frames));
        self.last_op += 1;
        self.last_checksum = record.checksum();
        self.tree_size = record.header.tree_size;
        (
            record,
            (self.tree_size, sha256(&[&self.tree_size.to_le_bytes()])),
        )
    }
}

/// Goal: 8 threads appending at once share fdatasyncs (fewer syncs than
/// records), every record is durable at its location, and the log keeps
/// the submit order.
#[test]
fn concurrent_submitters_share_fsyncs_and_keep_order() {
    const THREADS: u128 = 8;
    const PER_THREAD: usize = 100;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig {
        segment_bytes_max: 64 * 1024,
        ..StorageConfig::default()
    };
    let (storage, recovery) = Storage::open(dir.path(), CLUSTER, config).expect("open");
    assert!(recovery.records.is_empty());
    let storage = Arc::new(storage);
    // The log layer orders ops: building and submitting happen under its lock.
    let chain = Arc::new(Mutex::new(Chain::new()));
    let workers: Vec<_> = (0..THREADS)
        .map(|client| {
            let storage = Arc::clone(&storage);
            let chain = Arc::clone(&chain);
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for _ in 0..PER_THREAD {
                    let ticket = {
                        let mut chain = chain.lock().expect("chain lock");
                        let (record, tree) = chain.op(client, 2);
                        storage.submit(record.clone(), tree).expect("submit")
                    };
                    let location = storage.wait_durable(ticket).expect("durable");
                    let read = storage.read(location).expect("read back");
                    assert_eq!(read.header.client_id, client);
                    mine.push(read.header.op);
                }
                mine
            })
        })
        .collect();
    for worker in workers {
        let ops = worker.join().expect("worker");
        assert!(
            ops.windows(2).all(|w| w[0] < w[1]),
            "each thread's ops are in its submit order"
        );
    }
    let storage = Arc::into_inner(storage).expect("workers are done");
    let stats = storage.stats();
    let records = THREADS as u64 * PER_THREAD as u64;
    assert!(stats.records >= records);
    assert!(
        stats.syncs < records,
        "group commit shares syncs: {stats:?}"
    );
    assert!(
        stats.segments_created >= 1,
        "64 KiB segments rolled over: {stats:?}"
    );
    storage.close().expect("close");

    let (reopened, recovery) = Storage::open(dir.path(), CLUSTER, config).expect("reopen");
    let ops: Vec<u64> = recovery
        .records
        .iter()
        .filter(|(_, header)| header.kind == RecordKind::Op)
        .map(|(_, header)| header.op)
        .collect();
    assert_eq!(
        ops,
        (1..=records).collect::<Vec<_>>(),
        "dense, in order, none lost"
    );
    assert!(recovery.torn_tail.is_none());
    reopened.close().expect("close");
}

/// Goal: sealed segments stay within their limit, end with a seal, and the
/// whole directory passes the auditor's scanner.
#[test]
fn rollover_produces_sealed_segments_the_scanner_accepts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StorageConfig::default()
    };
    let (storage, _) = Storage::open(dir.path(), CLUSTER, config).expect("open");
    let mut chain = Chain::new();
    for _ in 0..100 {
        let (record, tree) = chain.op(1, 3);
        storage.submit(record, tree).expect("submit");
    }
    storage.flush().expect("flush");
    storage.close().expect("close");
    let scan = scan_log_dir(&dir.path().join("segments"), CLUSTER).expect("clean log");
    assert!(scan.segments.len() > 3);
    for segment in &scan.segments[..scan.segments.len() - 1] {
        assert!(matches!(segment.scan.end, SegmentEnd::Sealed { .. }));
        assert!(segment.file_len <= SEGMENT_BYTES_MIN);
    }
    assert_eq!(scan.chain.last_op, 100);
}

/// Goal: records submitted while a plug is held go out in one write and one
/// fdatasync when it is dropped (an op and the trail op closing its group
/// must not take two syncs), even with a 5 ms pause between the submits;
/// without a plug the first goes out alone.
#[test]
fn records_submitted_under_a_plug_share_one_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(dir.path(), CLUSTER, StorageConfig::default()).expect("open");
    let mut chain = Chain::new();
    let batches_before = storage.stats().batches;
    let plug = storage.plug();
    let (first, tree) = chain.op(1, 1);
    let first = storage.submit(first, tree).expect("submit");
    std::thread::sleep(std::time::Duration::from_millis(5));
    let (second, tree) = chain.op(1, 1);
    let second = storage.submit(second, tree).expect("submit");
    drop(plug);
    storage.wait_durable(first).expect("durable");
    storage.wait_durable(second).expect("durable");
    assert_eq!(
        storage.stats().batches - batches_before,
        1,
        "both records in one batch: {:?}",
        storage.stats()
    );

    // Without a plug the writer does not wait for company: the first
    // record goes out alone (what the plug exists to prevent, so the
    // assertion above can fail).
    let batches_before = storage.stats().batches;
    let (third, tree) = chain.op(1, 1);
    let third = storage.submit(third, tree).expect("submit");
    let probe = storage.durable_probe();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !probe.is_durable(third).expect("probe") {
        assert!(
            std::time::Instant::now() < deadline,
            "unplugged write stalled"
        );
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let (fourth, tree) = chain.op(1, 1);
    let fourth = storage.submit(fourth, tree).expect("submit");
    storage.wait_durable(third).expect("durable");
    storage.wait_durable(fourth).expect("durable");
    assert_eq!(storage.stats().batches - batches_before, 2);
    storage.close().expect("close");
}

/// Goal: a plug never stalls the store: a caller waiting for its record is
/// served while the plug is held, and a plug kept forever holds queued
/// records back only for a bounded time (`PLUG_MS_MAX`), never for good.
#[test]
fn a_plug_holds_neither_waiters_nor_the_store() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (storage, _) = Storage::open(dir.path(), CLUSTER, StorageConfig::default()).expect("open");
    let storage = Arc::new(storage);
    let mut chain = Chain::new();
    let plug = storage.plug();
    let (record, tree) = chain.op(1, 1);
    let ticket = storage.submit(record, tree).expect("submit");
    let started = std::time::Instant::now();
    storage
        .wait_durable(ticket)
        .expect("a waiter is served under a plug");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );

    // Nobody waits: the writer still goes after at most PLUG_MS_MAX.
    let (record, tree) = chain.op(1, 1);
    let ticket = storage.submit(record, tree).expect("submit");
    let probe = storage.durable_probe();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !probe.is_durable(ticket).expect("probe") {
        assert!(
            std::time::Instant::now() < deadline,
            "a held plug stalled the store"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    drop(plug);
    Arc::into_inner(storage)
        .expect("only owner")
        .close()
        .expect("close");
}
