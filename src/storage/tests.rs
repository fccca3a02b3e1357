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

/// A small zero window, so crash images stay small.
fn window_config() -> StorageConfig {
    StorageConfig {
        window_bytes: 8192,
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

/// Copies the segment files of `from` into a fresh directory, with the
/// bytes of segment `index` from `cut` on zeros (the window, its length
/// kept) and `extra` written at `cut`: one crash state of a preallocated
/// segment.
fn crash_image_window(from: &Path, index: u64, cut: u64, extra: &[u8]) -> PathBuf {
    let to = crash_image(from, index, u64::MAX, &[]);
    let path = to.join(segment_file_name(index));
    let mut bytes = std::fs::read(&path).expect("read");
    let cut = cut as usize;
    bytes[cut..].fill(0);
    let end = (cut + extra.len()).min(bytes.len());
    bytes[cut..end].copy_from_slice(&extra[..end - cut]);
    std::fs::write(&path, bytes).expect("write");
    to
}

/// The synced records and the records of one batch whose fdatasync failed
/// (written, never synced), in a log with a small zero window.
struct UnsyncedBatch {
    dir: PathBuf,
    submitted: Vec<Record>,
    synced_records: usize,
    /// The synced data end.
    synced: u64,
    /// The end of each record of the failed batch.
    ends: Vec<u64>,
}

fn unsynced_batch(events: u32) -> UnsyncedBatch {
    let dir = temp_dir();
    let (storage, _, fs) = open_fault(&dir, window_config());
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
        let (record, tree) = chain.op(events);
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
    let ends: Vec<u64> = tickets
        .iter()
        .map(|t| t.location().offset + u64::from(t.location().len))
        .collect();
    UnsyncedBatch {
        dir,
        submitted,
        synced_records,
        synced,
        ends,
    }
}

/// Goal: for every prefix of an unsynced batch (the rest still the zero
/// window, or garbage after the prefix), recovery keeps every synced
/// record, accepts only whole records that were written, and reports a
/// torn tail exactly when bytes were cut.
#[test]
fn every_crash_state_keeps_synced_records_and_refuses_damaged_ones() {
    let UnsyncedBatch {
        dir,
        submitted,
        synced_records,
        synced,
        ends,
    } = unsynced_batch(3);
    let written = *ends.last().expect("three records");
    let garbage: Vec<u8> = (0..700u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for cut in synced..=written {
        for extra in [&[][..], &garbage[..]] {
            let image = crash_image_window(&dir, 0, cut, extra);
            let (reopened, recovery) = Storage::open_with(
                &image,
                CLUSTER,
                window_config(),
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

/// The sector a lost write reverts in the out-of-order crash model.
const SECTOR: u64 = vellum_audit::segment::ZERO_RUN_SECTOR_BYTES;

/// Goal: power loss may persist the sectors of an unsynced batch written
/// into the zero window in any order (a hole then data, data then a hole,
/// the whole window still zero, and every other subset): each such state
/// opens, keeps every synced record, keeps exactly the unsynced records
/// before the first lost sector, and cuts the rest as a torn tail.
#[test]
fn unsynced_sectors_persisted_in_any_order_are_a_torn_tail() {
    let batch = unsynced_batch(12);
    let written = *batch.ends.last().expect("three records");
    let first = batch.synced / SECTOR;
    let sectors = (written - 1) / SECTOR + 1 - first;
    assert!((3..=12).contains(&sectors), "{sectors} sectors");
    let original = std::fs::read(batch.dir.join(segment_file_name(0))).expect("read");
    let starts: Vec<u64> = std::iter::once(batch.synced)
        .chain(batch.ends.iter().copied())
        .collect();
    let mut seen = [false; 3];
    for lost in 0u32..(1 << sectors) {
        let image = crash_image(&batch.dir, 0, u64::MAX, &[]);
        let path = image.join(segment_file_name(0));
        let mut bytes = original.clone();
        for k in (0..sectors).filter(|k| lost & (1 << k) != 0) {
            // A lost sector reads as last synced: data up to the synced end, then zeros.
            let from = ((first + k) * SECTOR).max(batch.synced) as usize;
            let to = ((first + k + 1) * SECTOR).min(bytes.len() as u64) as usize;
            bytes[from..to].fill(0);
        }
        std::fs::write(&path, &bytes).expect("write");
        let intact = |i: usize| {
            let (from, to) = (starts[i] as usize, starts[i + 1] as usize);
            bytes[from..to] == original[from..to]
        };
        let kept = (0..3).take_while(|&i| intact(i)).count();
        let end = starts[kept] as usize;
        let torn = !bytes[end..].iter().all(|&b| b == 0);
        seen[0] |= lost & 1 != 0 && kept == 0 && torn;
        seen[1] |= lost & 1 == 0 && kept > 0 && torn;
        seen[2] |= lost == (1 << sectors) - 1;
        let (reopened, recovery) = Storage::open_with(
            &image,
            CLUSTER,
            window_config(),
            Arc::new(RealFs::new(&image)),
        )
        .unwrap_or_else(|e| panic!("lost sectors {lost:#b}: {e}"));
        assert_eq!(
            recovery.records.len(),
            batch.synced_records + kept,
            "lost sectors {lost:#b}"
        );
        for ((location, _), record) in recovery.records.iter().zip(&batch.submitted) {
            assert_eq!(&reopened.read(*location).expect("read back"), record);
        }
        assert_eq!(
            recovery.torn_tail.as_ref().map(|t| t.offset),
            torn.then_some(end as u64),
            "lost sectors {lost:#b}"
        );
        reopened.close().expect("close");
        std::fs::remove_dir_all(&image).expect("cleanup");
    }
    assert_eq!(seen, [true; 3], "hole then data, data then hole, all zero");
    std::fs::remove_dir_all(&batch.dir).expect("cleanup");
}

/// Goal: a byte flipped or zeroed inside synced data of the last segment,
/// with synced records after it, is damage named by file and byte, never
/// a torn tail, although the segment holds a zero window.
#[test]
fn flipped_or_zeroed_byte_in_synced_data_is_damage() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, window_config());
    let mut chain = Chain::new();
    let locations: Vec<RecordLocation> = (0..5)
        .map(|_| submit_durable(&storage, chain.op(2)))
        .collect();
    storage.close().expect("close");
    let path = dir.join(segment_file_name(0));
    let original = std::fs::read(&path).expect("read");
    let target = locations[2];
    for at in target.offset..end_of(target) {
        for zero in [false, true] {
            let mut bytes = original.clone();
            let byte = &mut bytes[at as usize];
            *byte = if zero { 0 } else { *byte ^ 0x10 };
            if bytes == original {
                continue; // zeroing a zero byte changes nothing
            }
            std::fs::write(&path, &bytes).expect("write");
            match Storage::open_with(&dir, CLUSTER, window_config(), Arc::new(RealFs::new(&dir))) {
                Err(StorageError::Corrupt { file, offset, .. }) => {
                    assert_eq!((file, offset), (path.clone(), target.offset), "byte {at}");
                }
                other => panic!("byte {at} (zeroed: {zero}): {other:?}"),
            }
        }
    }
    std::fs::write(&path, &original).expect("restore");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: a sealed segment is trimmed to its Seal's end (no window left),
/// while the last one keeps a window; a crash before the trim was durable
/// (zeros after the Seal of the last segment) opens, is trimmed, and the
/// log goes on in a new segment.
#[test]
fn sealed_segments_are_trimmed() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    while storage.stats().segments_created < 2 {
        submit_durable(&storage, chain.op(4));
    }
    storage.close().expect("close");
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    let (last, sealed) = scan.segments.split_last().expect("segments");
    for segment in sealed {
        let seal = segment.scan.records.last().expect("seal");
        assert_eq!(segment.file_len, seal.offset + seal.encoded_len());
        assert_eq!(segment.scan.window, 0);
    }
    assert!(last.scan.window > 0, "the last segment keeps its window");
    // The crash came after the Seal of the second to last segment was
    // written, before its fdatasync (and the next file) made the trim durable.
    std::fs::remove_file(&last.path).expect("remove last");
    let untrimmed = &sealed.last().expect("a sealed segment").path;
    let mut bytes = std::fs::read(untrimmed).expect("read");
    let seal_end = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 1000]);
    std::fs::write(untrimmed, &bytes).expect("write");
    let scan = scan_log_dir(&dir, CLUSTER).expect("a sealed last segment with zeros scans");
    assert_eq!(scan.segments.last().expect("last").scan.window, 1000);
    let (storage, recovery, _) = open_fault(&dir, small_config());
    assert!(recovery.torn_tail.is_none());
    assert_eq!(std::fs::metadata(untrimmed).expect("stat").len(), seal_end);
    let mut next = Chain {
        last_op: recovery.chain.last_op,
        last_checksum: recovery.chain.last_op_checksum,
        tree_size: recovery.chain.tree_size,
    };
    submit_durable(&storage, next.op(1));
    storage.close().expect("close");
    scan_log_dir(&dir, CLUSTER).expect("clean log");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Rewrites every segment of `dir` as the code before zero windows wrote
/// it: version 1 header, no bytes after the last record.
fn downgrade_to_version_1(dir: &Path) {
    let scan = scan_log_dir(dir, CLUSTER).expect("clean log");
    for segment in &scan.segments {
        let mut bytes = std::fs::read(&segment.path).expect("read");
        bytes.truncate((segment.file_len - segment.scan.window) as usize);
        let header = vellum_audit::segment::SegmentHeader {
            cluster: CLUSTER,
            segment_index: segment.index,
            version: vellum_audit::segment::SEGMENT_VERSION_V1,
        };
        bytes[..64].copy_from_slice(&header.encode());
        std::fs::write(&segment.path, bytes).expect("write");
    }
}

/// Goal: a log written before zero windows (version 1 segments) opens with
/// every record, its last segment grows without a window until it is
/// sealed, and the segments after it are version 2.
#[test]
fn version_1_log_opens_and_goes_on() {
    let dir = temp_dir();
    let (storage, _, _) = open_fault(&dir, small_config());
    let mut chain = Chain::new();
    let mut written = 0;
    while storage.stats().segments_created < 1 {
        submit_durable(&storage, chain.op(4));
        written += 1;
    }
    submit_durable(&storage, chain.op(1));
    written += 1;
    storage.close().expect("close");
    downgrade_to_version_1(&dir);
    let (storage, recovery, _) = open_fault(&dir, small_config());
    assert!(recovery.torn_tail.is_none());
    let ops = |records: &[(RecordLocation, OpHeader)]| {
        records
            .iter()
            .filter(|(_, h)| h.kind == RecordKind::Op)
            .count()
    };
    assert_eq!(ops(&recovery.records), written);
    let last = recovery.segments - 1;
    let len = std::fs::metadata(dir.join(segment_file_name(last)))
        .expect("stat")
        .len();
    let location = submit_durable(&storage, chain.op(1));
    assert_eq!(
        location.offset, len,
        "appended at the end of a version 1 segment"
    );
    assert_eq!(
        std::fs::metadata(dir.join(segment_file_name(last)))
            .expect("stat")
            .len(),
        end_of(location),
        "a version 1 segment gets no window"
    );
    storage.resume_tree(chain.tree()).expect("tree");
    let before = recovery.segments;
    while storage.stats().segments_created < 1 {
        submit_durable(&storage, chain.op(4));
    }
    storage.close().expect("close");
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    assert_eq!(scan.chain.last_op, chain.last_op);
    let versions: Vec<u16> = scan.segments.iter().map(|s| s.scan.version).collect();
    let expected: Vec<u16> = (0..scan.segments.len() as u64)
        .map(|i| if i < before { 1 } else { 2 })
        .collect();
    assert_eq!(versions, expected);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
