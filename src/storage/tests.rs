//! Unit tests of the segment store that need the fault-injecting file
//! system: crash states, poisoning, rollover, refusal of broken chains.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vellum_audit::hash::{Hash, sha256};
use vellum_audit::record::{
    EventFrame, OpHeader, Record, RecordKind, encode_events, genesis_parent,
};
use vellum_audit::segment::{SegmentEnd, scan_log_dir, segment_file_name};

use super::*;

const CLUSTER: u128 = 0x5eed;

/// Builds the records a log layer would submit, with a stand-in tree root.
#[derive(Clone)]
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

    fn op(&mut self, events: u32) -> (Record, (u64, Hash)) {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op + 1;
        header.stream = 16;
        header.key_id = 1;
        header.global_position = self.tree_size;
        header.event_count = events;
        header.tree_size = self.tree_size + u64::from(events);
        let sealed: Vec<Vec<u8>> = (0..events).map(|i| vec![i as u8 ^ 0x5a; 40]).collect();
        let frames: Vec<EventFrame<'_>> = sealed
            .iter()
            .map(|s| EventFrame {
                commitment: [0x11; 32],
                nonce: [3; 12],
                sealed: s.as_slice(),
            })
            .collect();
        let record = Record::new(header, encode_events(&frames));
        self.last_op += 1;
        self.last_checksum = record.checksum();
        self.tree_size = record.header.tree_size;
        (record, self.tree())
    }

    fn certificate(&self) -> (Record, (u64, Hash)) {
        let mut header = OpHeader::empty(RecordKind::Certificate, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op;
        header.tree_size = self.tree_size;
        (
            Record::new(header, b"certificate note".to_vec()),
            self.tree(),
        )
    }

    fn tree(&self) -> (u64, Hash) {
        (self.tree_size, sha256(&[&self.tree_size.to_le_bytes()]))
    }
}

fn temp_dir() -> PathBuf {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random");
    let dir = std::env::temp_dir().join(format!(
        "vellum-storage-unit-{:016x}",
        u64::from_le_bytes(random)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

fn small_config() -> StorageConfig {
    StorageConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StorageConfig::default()
    }
}

fn open_fault(dir: &Path, config: StorageConfig) -> (Storage, Recovery, FaultFs) {
    let fs = FaultFs::new(dir);
    let (storage, recovery) =
        Storage::open_with(dir, CLUSTER, config, Arc::new(fs.clone())).expect("open");
    (storage, recovery, fs)
}

fn submit_durable(storage: &Storage, (record, tree): (Record, (u64, Hash))) -> RecordLocation {
    let ticket = storage.submit(record, tree).expect("submit");
    storage.wait_durable(ticket).expect("durable")
}

/// Copies the segment files of `from` into a fresh directory, with segment
/// `index` cut to `len` bytes and `extra` appended: one crash state.
fn crash_image(from: &Path, index: u64, len: u64, extra: &[u8]) -> PathBuf {
    let to = temp_dir();
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, to.join(path.file_name().expect("file name"))).expect("copy");
    }
    let path = to.join(segment_file_name(index));
    let mut bytes = std::fs::read(&path).expect("read");
    bytes.truncate(len as usize);
    bytes.extend_from_slice(extra);
    std::fs::write(&path, bytes).expect("write");
    to
}

/// Goal: for every prefix of an unsynced batch (and each prefix followed by
/// garbage), recovery keeps every synced record, accepts only whole records
/// that were written, and reports a torn tail exactly when bytes were cut.
#[test]
fn every_crash_state_keeps_synced_records_and_refuses_damaged_ones() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    let mut submitted = Vec::new();
    for _ in 0..3 {
        let (record, tree) = chain.op(2);
        submitted.push(record.clone());
        submit_durable(&storage, (record, tree));
    }
    // One more synced record holds the writer while the next three queue up
    // behind it, so they are written by one write whose sync fails.
    fs.hold_writes();
    let (record, tree) = chain.op(1);
    submitted.push(record.clone());
    let held = storage.submit(record, tree).expect("submit");
    while fs.held_writes() == 0 {
        std::thread::yield_now();
    }
    let mut tickets = Vec::new();
    for _ in 0..3 {
        let (record, tree) = chain.op(3);
        submitted.push(record.clone());
        tickets.push(storage.submit(record, tree).expect("submit"));
    }
    fs.fail_syncs_after(1);
    fs.release_writes();
    storage
        .wait_durable(held)
        .expect("the held record is synced");
    let synced = fs.synced_len(0);
    let synced_records = 4;
    let last = *tickets.last().expect("three tickets");
    assert!(matches!(
        storage.wait_durable(last),
        Err(StorageError::Poisoned(_))
    ));
    drop(storage);
    let written = std::fs::metadata(dir.join(segment_file_name(0)))
        .expect("stat")
        .len();
    assert!(
        written > synced,
        "the failed batch was written but not synced"
    );
    let ends: Vec<u64> = tickets
        .iter()
        .map(|t| t.location().offset + u64::from(t.location().len))
        .collect();
    let garbage: Vec<u8> = (0..700u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for cut in synced..=written {
        for extra in [&[][..], &garbage[..]] {
            let image = crash_image(&dir, 0, cut, extra);
            let (reopened, recovery) = Storage::open_with(
                &image,
                CLUSTER,
                StorageConfig::default(),
                Arc::new(RealFs::new(&image)),
            )
            .expect("every crash state opens");
            let whole = synced_records + ends.iter().filter(|end| **end <= cut).count();
            assert_eq!(
                recovery.records.len(),
                whole,
                "cut {cut} extra {}",
                extra.len()
            );
            for ((location, header), record) in recovery.records.iter().zip(&submitted) {
                assert_eq!(header, &record.header, "cut {cut}");
                assert_eq!(
                    &reopened.read(*location).expect("read back"),
                    record,
                    "cut {cut}"
                );
            }
            let clean_end = cut == synced || ends.contains(&cut);
            assert_eq!(
                recovery.torn_tail.is_none(),
                clean_end && extra.is_empty(),
                "cut {cut} extra {}",
                extra.len()
            );
            reopened.close().expect("close");
            std::fs::remove_dir_all(&image).expect("cleanup");
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a failed fdatasync poisons the store: that batch's waiters and every
/// later call fail, records synced before stay reported durable, and a
/// reopen recovers.
#[test]
fn failed_sync_poisons_until_reopen() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    let first = storage.submit(chain.op(1).0, chain.tree()).expect("submit");
    storage.wait_durable(first).expect("durable");
    fs.fail_syncs_after(0);
    let second = storage.submit(chain.op(1).0, chain.tree()).expect("submit");
    assert!(matches!(
        storage.wait_durable(second),
        Err(StorageError::Poisoned(_))
    ));
    assert!(
        storage.wait_durable(first).is_ok(),
        "a record synced before the failure stays durable"
    );
    assert!(matches!(
        storage.submit(chain.op(1).0, chain.tree()),
        Err(StorageError::Poisoned(_))
    ));
    assert!(matches!(storage.flush(), Err(StorageError::Poisoned(_))));
    let syncs = fs.syncs();
    assert!(matches!(storage.close(), Err(StorageError::Poisoned(_))));
    assert_eq!(fs.syncs(), syncs, "no sync is retried after a failure");
    let (reopened, recovery, _) = open_fault(&dir, StorageConfig::default());
    assert!(!recovery.records.is_empty());
    reopened.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a failed write poisons the store too.
#[test]
fn failed_write_poisons() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    fs.fail_writes();
    let ticket = storage.submit(chain.op(1).0, chain.tree()).expect("submit");
    assert!(matches!(
        storage.wait_durable(ticket),
        Err(StorageError::Poisoned(_))
    ));
    assert!(matches!(
        storage.submit(chain.op(1).0, chain.tree()),
        Err(StorageError::Poisoned(_))
    ));
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: full segments are sealed with the right counts and root, the next
/// one chains on, and every record reads back after reopen.
#[test]
fn rollover_seals_and_chains() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    let mut written = Vec::new();
    for i in 0..60 {
        let item = if i % 7 == 6 {
            chain.certificate()
        } else {
            chain.op(2)
        };
        written.push((item.0.clone(), submit_durable(&storage, item)));
    }
    assert!(
        storage.stats().segments_created >= 3,
        "{:?}",
        storage.stats()
    );
    storage.close().expect("close");
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    for segment in &scan.segments[..scan.segments.len() - 1] {
        assert!(
            matches!(segment.scan.end, SegmentEnd::Sealed { .. }),
            "segment {}",
            segment.index
        );
        assert!(
            segment.file_len <= SEGMENT_BYTES_MIN,
            "segment {} is {} bytes",
            segment.index,
            segment.file_len
        );
        let seal = segment.scan.records.last().expect("seal");
        let bytes = std::fs::read(&segment.path).expect("read");
        let body = vellum_audit::record::SealBody::decode(&bytes[seal.body_range.clone()], 0)
            .expect("seal body");
        assert_eq!(
            body.tree_root,
            sha256(&[&seal.header.tree_size.to_le_bytes()])
        );
    }
    let (reopened, recovery, _) = open_fault(&dir, small_config());
    let kept: Vec<_> = recovery
        .records
        .iter()
        .filter(|(_, h)| h.kind != RecordKind::Seal)
        .collect();
    assert_eq!(kept.len(), written.len());
    for ((location, _), (record, submitted_at)) in kept.iter().zip(&written) {
        assert_eq!(location, submitted_at);
        assert_eq!(&reopened.read(*location).expect("read"), record);
    }
    reopened.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: after a reopen the chain continues from the recovered tip, and a
/// rollover right after reopen waits for the tree root (`resume_tree`).
#[test]
fn reopen_continues_chain_and_rolls_after_resume_tree() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    while storage.stats().segments_created == 0 {
        submit_durable(&storage, chain.op(4));
    }
    storage.close().expect("close");
    // Fill the open segment almost to its limit in a fresh session, then reopen.
    let (storage, recovery, _) = open_fault(&dir, small_config());
    assert_eq!(recovery.chain.last_op, chain.last_op);
    storage
        .resume_tree(chain.tree())
        .expect("tree size matches");
    assert!(storage.resume_tree((chain.tree_size + 1, [0; 32])).is_err());
    let before = recovery.segments;
    let mut session = 0;
    while storage.stats().segments_created == 0 {
        submit_durable(&storage, chain.op(4));
        session += 1;
    }
    assert!(session > 1);
    storage.close().expect("close");
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    assert_eq!(scan.segments.len() as u64, before + 1);
    assert_eq!(scan.chain.last_op, chain.last_op);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: records that would break the chain, the cluster or the body checksum are refused and nothing is written.
#[test]
fn broken_records_are_refused() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    let (one, tree_one) = chain.op(1);
    let (two, tree_two) = chain.op(1);
    assert!(matches!(
        storage.submit(two.clone(), tree_two),
        Err(StorageError::Rejected(_))
    ));
    let mut foreign = one.clone();
    foreign.header.cluster += 1;
    assert!(matches!(
        storage.submit(foreign, tree_one),
        Err(StorageError::Rejected(_))
    ));
    let mut tampered = one.clone();
    tampered.body[0] ^= 1;
    assert!(matches!(
        storage.submit(tampered, tree_one),
        Err(StorageError::Rejected(_))
    ));
    submit_durable(&storage, (one, tree_one));
    submit_durable(&storage, (two, tree_two));
    let mut future = chain.certificate().0;
    future.header.op = 9;
    assert!(matches!(
        storage.submit(future, chain.tree()),
        Err(StorageError::Rejected(_))
    ));
    storage.close().expect("close");
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    assert_eq!(scan.record_count(), 2);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a crash that leaves a new segment with a torn header is recovered by rewriting that header.
#[test]
fn torn_segment_header_is_rewritten() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    let mut before_last = chain.clone();
    while storage.stats().segments_created == 0 {
        before_last = chain.clone();
        submit_durable(&storage, chain.op(4));
    }
    storage.close().expect("close");
    // The crash came right after the new segment was created, before its
    // header (and the record after it) became durable.
    let last = scan_log_dir(&dir, CLUSTER).expect("clean").segments.len() as u64 - 1;
    for len in 0..64 {
        let image = crash_image(&dir, last, len, &[]);
        let (reopened, recovery) = Storage::open_with(
            &image,
            CLUSTER,
            small_config(),
            Arc::new(RealFs::new(&image)),
        )
        .expect("opens");
        assert_eq!(
            recovery.torn_tail.as_ref().map(|t| (t.offset, t.bytes)),
            Some((0, len))
        );
        assert_eq!(recovery.chain.last_op, before_last.last_op);
        let mut next = before_last.clone();
        submit_durable(&reopened, next.op(1));
        reopened.close().expect("close");
        let scan = scan_log_dir(&image, CLUSTER).expect("clean after rewrite");
        assert_eq!(scan.chain.last_op, before_last.last_op + 1);
        assert_eq!(scan.segments.len() as u64, last + 1);
        std::fs::remove_dir_all(&image).expect("cleanup");
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// The end of a record's bytes in its segment.
fn end_of(location: RecordLocation) -> u64 {
    location.offset + u64::from(location.len)
}

/// Goal: N sequential rounds of (submit op, wait durable, submit_lazy its
/// certificate) cost about N data syncs, not 2N: each certificate rides
/// along with the next op's batch. Every record is on disk in submit order.
#[test]
fn lazy_certificates_ride_with_the_next_op() {
    const ROUNDS: u64 = 40;
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    let mut submitted = Vec::new();
    let syncs_before = fs.syncs();
    let started = std::time::Instant::now();
    for _ in 0..ROUNDS {
        let (op, tree) = chain.op(2);
        submitted.push(op.clone());
        let ticket = storage.submit(op, tree).expect("submit");
        storage.wait_durable(ticket).expect("durable");
        let (certificate, tree) = chain.certificate();
        submitted.push(certificate.clone());
        storage.submit_lazy(certificate, tree).expect("submit lazy");
    }
    let syncs = fs.syncs() - syncs_before;
    // A round slower than the lazy delay may sync its certificate alone; allow
    // one extra sync per such delay that passed.
    let slow_rounds = started.elapsed().as_millis() as u64 / LAZY_DELAY_MS_MAX;
    assert!(syncs >= ROUNDS, "each op was synced: {syncs}");
    assert!(
        syncs <= ROUNDS + slow_rounds,
        "{syncs} syncs for {ROUNDS} rounds ({slow_rounds} delays passed)"
    );
    storage.close().expect("close");
    let (reopened, recovery, _) = open_fault(&dir, StorageConfig::default());
    assert_eq!(recovery.records.len(), submitted.len());
    for ((location, _), record) in recovery.records.iter().zip(&submitted) {
        assert_eq!(&reopened.read(*location).expect("read"), record);
    }
    reopened.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a lazy record on an idle log is not written at once, but becomes
/// durable on its own no sooner and not much later than LAZY_DELAY_MS_MAX.
#[test]
fn idle_lazy_record_becomes_durable_within_the_delay() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    submit_durable(&storage, chain.op(1));
    let (certificate, tree) = chain.certificate();
    let started = std::time::Instant::now();
    let ticket = storage.submit_lazy(certificate, tree).expect("submit lazy");
    let end = end_of(ticket.location());
    // Not written at submit: the first time it is seen durable is at least
    // the delay after `started` (checked below).
    while fs.synced_len(0) < end {
        assert!(
            started.elapsed().as_millis() < u128::from(LAZY_DELAY_MS_MAX) + 5_000,
            "the lazy record never became durable"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        started.elapsed().as_millis() >= u128::from(LAZY_DELAY_MS_MAX),
        "written before its delay: {:?}",
        started.elapsed()
    );
    storage.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: flush, wait_durable on the lazy ticket itself, and close each make
/// a queued lazy record durable without waiting for the delay to pass.
#[test]
fn flush_wait_and_close_make_lazy_records_durable() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    submit_durable(&storage, chain.op(1));
    let (certificate, tree) = chain.certificate();
    let flushed = storage.submit_lazy(certificate, tree).expect("lazy");
    storage.flush().expect("flush");
    assert!(fs.synced_len(0) >= end_of(flushed.location()), "flush");

    submit_durable(&storage, chain.op(1));
    let (certificate, tree) = chain.certificate();
    let waited = storage.submit_lazy(certificate, tree).expect("lazy");
    assert_eq!(
        storage.wait_durable(waited).expect("wait"),
        waited.location()
    );
    assert!(fs.synced_len(0) >= end_of(waited.location()), "wait");

    submit_durable(&storage, chain.op(1));
    let (certificate, tree) = chain.certificate();
    let closed = storage
        .submit_lazy(certificate.clone(), tree)
        .expect("lazy");
    storage.close().expect("close");
    assert!(fs.synced_len(0) >= end_of(closed.location()), "close");
    let (reopened, recovery, _) = open_fault(&dir, StorageConfig::default());
    let (location, header) = recovery.records.last().expect("records");
    assert_eq!(
        (*location, header),
        (closed.location(), &certificate.header)
    );
    reopened.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: lazy records keep the submit order across segment rollovers (a
/// seal may be queued in front of a lazy record), and the log stays clean.
#[test]
fn lazy_records_keep_order_across_rollovers() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    let mut submitted = Vec::new();
    for round in 0..60 {
        let (op, tree) = chain.op(2);
        submitted.push(op.clone());
        let ticket = storage.submit(op, tree).expect("submit");
        if round % 3 == 0 {
            storage.wait_durable(ticket).expect("durable");
        }
        let (certificate, tree) = chain.certificate();
        submitted.push(certificate.clone());
        storage.submit_lazy(certificate, tree).expect("lazy");
    }
    assert!(storage.stats().segments_created >= 2);
    storage.close().expect("close");
    let (reopened, recovery, _) = open_fault(&dir, small_config());
    let kept: Vec<_> = recovery
        .records
        .iter()
        .filter(|(_, h)| h.kind != RecordKind::Seal)
        .collect();
    assert_eq!(kept.len(), submitted.len());
    for ((location, _), record) in kept.iter().zip(&submitted) {
        assert_eq!(&reopened.read(*location).expect("read"), record);
    }
    reopened.close().expect("close");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a crash while a lazy certificate is still queued (or its write not
/// finished) loses only that certificate: the log reopens clean, ending at
/// the acknowledged op, ready to be certified again.
#[test]
fn crash_before_a_lazy_record_is_written_keeps_the_acknowledged_op() {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, StorageConfig::default());
    let mut chain = Chain::new();
    let op_at = submit_durable(&storage, chain.op(2));
    let synced = fs.synced_len(0);
    fs.hold_writes();
    let (certificate, tree) = chain.certificate();
    storage.submit_lazy(certificate, tree).expect("lazy");
    // The crash: what is on disk now, while the certificate is queued or held.
    let image = crash_image(&dir, 0, synced, &[]);
    fs.release_writes();
    storage.close().expect("close");
    let (reopened, recovery) = Storage::open_with(
        &image,
        CLUSTER,
        StorageConfig::default(),
        Arc::new(RealFs::new(&image)),
    )
    .expect("opens");
    assert!(recovery.torn_tail.is_none());
    assert_eq!(recovery.records.len(), 1);
    assert_eq!(recovery.records[0].0, op_at);
    assert_eq!(recovery.chain.last_op, 1);
    reopened.close().expect("close");
    std::fs::remove_dir_all(&image).expect("cleanup");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a cut keeps the certificates of the ops it keeps even when their
/// (lazy) records lay after the cut ops, so an audit-index row for such a
/// certificate stays backed by the log (a `kill -9` crash test found rows
/// whose certificate a view change's cut had removed).
#[test]
fn cut_copies_back_certificates_of_kept_ops() {
    let data_dir = temp_dir();
    let segments = data_dir.join(SEGMENTS_DIR);
    std::fs::create_dir_all(&segments).expect("segments dir");
    let (storage, _, _) = open_fault(&segments, small_config());
    let mut chain = Chain::new();
    for _ in 0..3 {
        submit_durable(&storage, chain.op(2));
    }
    let certificate_of_3 = chain.certificate();
    submit_durable(&storage, chain.op(1));
    let certificate_of_4 = chain.certificate();
    submit_durable(&storage, chain.op(1));
    // Late certificates are submitted at the current tree, as the shell does.
    submit_durable(&storage, (certificate_of_3.0, chain.tree()));
    submit_durable(&storage, (certificate_of_4.0, chain.tree()));
    let certificate_of_5 = chain.certificate();
    submit_durable(&storage, certificate_of_5);
    storage.close().expect("close");

    let report = cut_after_op(&data_dir, CLUSTER, 4).expect("cut");
    assert_eq!(report.ops_removed, 1);
    let scan = scan_log_dir(&segments, CLUSTER).expect("the cut log scans clean");
    let kinds: Vec<(RecordKind, u64)> = scan
        .segments
        .iter()
        .flat_map(|s| s.scan.records.iter().map(|r| (r.header.kind, r.header.op)))
        .collect();
    assert_eq!(scan.chain.last_op, 4);
    assert!(
        kinds.ends_with(&[
            (RecordKind::Op, 4),
            (RecordKind::Certificate, 3),
            (RecordKind::Certificate, 4)
        ]),
        "{kinds:?}"
    );
    assert!(!kinds.contains(&(RecordKind::Certificate, 5)), "{kinds:?}");
    let (reopened, recovery) = Storage::open_with(
        &segments,
        CLUSTER,
        small_config(),
        Arc::new(RealFs::new(&segments)),
    )
    .expect("the cut log opens");
    assert!(recovery.torn_tail.is_none());
    reopened.close().expect("close");
    std::fs::remove_dir_all(&data_dir).expect("cleanup");
}
