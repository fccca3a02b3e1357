//! The two guards on `Storage::open` that keep recovery from harming what
//! is stored: the durable op floor (a torn-tail cut may never lose an op the
//! caller saw certified) and the read-only open (nothing on disk changes, not
//! even a byte's mtime). And reads of many segments hold a bounded number
//! of file descriptors (`storage::open_files`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use vellum::storage::{
    RecordLocation, SEGMENT_BYTES_MIN, SEGMENTS_DIR, Storage, StorageConfig, StorageError,
};
use vellum_audit::hash::{Hash, sha256};
use vellum_audit::record::{
    EventFrame, OpHeader, Record, RecordKind, encode_events, genesis_parent,
};
use vellum_audit::segment::{SegmentEnd, scan_log_dir, segment_file_name};

const CLUSTER: u128 = 0xf1;

/// The log layer's view of the chain: builds the next op and its certificate.
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

    fn op(&mut self) -> (Record, (u64, Hash)) {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op + 1;
        header.stream = 16;
        header.key_id = 1;
        header.global_position = self.tree_size;
        header.event_count = 2;
        header.tree_size = self.tree_size + 2;
        let sealed = [vec![0x21u8; 64], vec![0x42u8; 64]];
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
        self.tree_size += 2;
        (record, self.tree())
    }

    /// A certificate of about the size of a real one (a signed note).
    fn certificate(&self) -> (Record, (u64, Hash)) {
        let mut header = OpHeader::empty(RecordKind::Certificate, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op;
        header.tree_size = self.tree_size;
        (
            Record::new(header, "n".repeat(200).into_bytes()),
            self.tree(),
        )
    }

    fn tree(&self) -> (u64, Hash) {
        (self.tree_size, sha256(&[&self.tree_size.to_le_bytes()]))
    }
}

/// Appends `ops` rounds of (op, certificate), like the single-replica log
/// does, and returns every record with its location.
/// Builds a log without a zero window, so the cases below cut and append
/// at the file's end as at the data's end (the windowed crash cases are
/// `src/storage/tests.rs` and `tests/log_recovery.rs`).
fn build_log(dir: &Path, ops: u64, config: StorageConfig) -> Vec<(Record, RecordLocation)> {
    let config = StorageConfig {
        window_bytes: 0,
        ..config
    };
    let (storage, _) = Storage::open(dir, CLUSTER, config).expect("open");
    let mut chain = Chain::new();
    let mut written = Vec::new();
    for _ in 0..ops {
        for (record, tree) in [chain.op(), chain.certificate()] {
            let ticket = storage.submit(record.clone(), tree).expect("submit");
            written.push((record, storage.wait_durable(ticket).expect("durable")));
        }
    }
    storage.close().expect("close");
    written
}

fn floor(durable_op_floor: u64) -> StorageConfig {
    StorageConfig {
        durable_op_floor,
        window_bytes: 0,
        ..StorageConfig::default()
    }
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(SEGMENTS_DIR).join(segment_file_name(index))
}

fn cut_end(path: &Path, bytes: u64) {
    let len = std::fs::metadata(path).expect("stat").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open segment");
    file.set_len(len - bytes).expect("truncate");
}

/// Every entry under `root`: relative path -> (is dir, length, contents, mtime).
type Snapshot = BTreeMap<PathBuf, (bool, u64, Vec<u8>, SystemTime)>;

fn snapshot(root: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::metadata(&path).expect("stat");
        let relative = path.strip_prefix(root).expect("under root").to_path_buf();
        let contents = if meta.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
            Vec::new()
        } else {
            std::fs::read(&path).expect("read")
        };
        let mtime = meta.modified().expect("mtime");
        out.insert(relative, (meta.is_dir(), meta.len(), contents, mtime));
    }
    out
}

/// Sets every mtime under `root` to one old instant, so any write, truncate
/// or new entry would show as a changed mtime whatever the clock resolution.
fn age(root: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).expect("read dir") {
                pending.push(entry.expect("entry").path());
            }
        }
        std::fs::File::open(&path)
            .expect("open")
            .set_modified(old)
            .expect("set mtime");
    }
}

/// Goal: the bug report. Two appends, the segment cut by 500 bytes: with the
/// floor at the last op the open fails as corrupt, naming the certified op
/// and where the log ends, and leaves every byte as it was.
#[test]
fn floor_at_last_op_refuses_to_cut_a_certified_op() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = build_log(dir.path(), 2, StorageConfig::default());
    let path = segment_path(dir.path(), 0);
    cut_end(&path, 500);
    age(dir.path());
    let before = snapshot(dir.path());
    let (_, op_two_at) = &written[2];
    match Storage::open(dir.path(), CLUSTER, floor(2)) {
        Err(StorageError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            assert_eq!(file, path);
            assert_eq!(offset, op_two_at.offset, "where the damaged op starts");
            assert!(
                reason.contains("ops up to 2 were certified but the log ends at op 1"),
                "{reason}"
            );
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok((_, recovery)) => panic!("opened, torn tail {:?}", recovery.torn_tail),
    }
    assert_eq!(snapshot(dir.path()), before, "nothing was truncated");
}

/// Goal: with the floor one below the last op, the same damage is a torn
/// tail as before: cut at the end of op 1's certificate and reported.
#[test]
fn floor_below_last_op_cuts_and_reports_as_before() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = build_log(dir.path(), 2, StorageConfig::default());
    let path = segment_path(dir.path(), 0);
    cut_end(&path, 500);
    let cut_len = std::fs::metadata(&path).expect("stat").len();
    let (storage, recovery) = Storage::open(dir.path(), CLUSTER, floor(1)).expect("opens");
    let op_two_at = written[2].1.offset;
    let torn = recovery.torn_tail.clone().expect("torn tail reported");
    assert_eq!((torn.file, torn.offset), (path.clone(), op_two_at));
    assert_eq!(torn.bytes, cut_len - op_two_at);
    assert_eq!(recovery.chain.last_op, 1);
    assert_eq!(recovery.records.len(), 2);
    storage.close().expect("close");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), op_two_at);
}

/// Goal: a torn tail past the floor (a half-written certificate of the last
/// op, or garbage after it) is still cut, and the ops are all kept.
#[test]
fn torn_tail_past_the_floor_is_still_cut() {
    let dir = tempfile::tempdir().expect("temp dir");
    build_log(dir.path(), 2, StorageConfig::default());
    let path = segment_path(dir.path(), 0);
    let clean = std::fs::read(&path).expect("read");
    for damage in ["cut 100 bytes", "append garbage"] {
        let mut bytes = clean.clone();
        if damage == "cut 100 bytes" {
            bytes.truncate(clean.len() - 100);
        } else {
            bytes.extend_from_slice(&[0x5a; 300]);
        }
        std::fs::write(&path, &bytes).expect("write");
        let (storage, recovery) = Storage::open(dir.path(), CLUSTER, floor(2)).expect(damage);
        let torn = recovery.torn_tail.clone().expect(damage);
        assert_eq!(recovery.chain.last_op, 2, "{damage}");
        storage.close().expect("close");
        assert_eq!(
            std::fs::metadata(&path).expect("stat").len(),
            torn.offset,
            "{damage}: cut"
        );
        std::fs::write(&path, &clean).expect("restore");
    }
}

/// Goal: a log cut exactly at a record boundary (no torn tail) or with no
/// segments left still fails the open when it ends below the floor, and
/// nothing is created.
#[test]
fn log_ending_below_the_floor_fails_without_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = build_log(dir.path(), 2, StorageConfig::default());
    let path = segment_path(dir.path(), 0);
    let (_, cert_one_at) = &written[1];
    let end_of_op_one = cert_one_at.offset + u64::from(cert_one_at.len);
    let len = std::fs::metadata(&path).expect("stat").len();
    cut_end(&path, len - end_of_op_one);
    age(dir.path());
    let before = snapshot(dir.path());
    match Storage::open(dir.path(), CLUSTER, floor(2)) {
        Err(StorageError::Corrupt { file, offset, .. }) => {
            assert_eq!((file, offset), (path.clone(), end_of_op_one));
        }
        other => panic!("expected corrupt, got {:?}", other.map(|(_, r)| r.chain)),
    }
    assert_eq!(snapshot(dir.path()), before);

    std::fs::remove_dir_all(dir.path().join(SEGMENTS_DIR)).expect("remove segments");
    assert!(matches!(
        Storage::open(dir.path(), CLUSTER, floor(2)),
        Err(StorageError::Corrupt { ref reason, .. }) if reason.contains("ops up to 2")
    ));
    assert!(
        !dir.path().join(SEGMENTS_DIR).exists(),
        "no empty log was created"
    );
}

/// Opens read-only, reads every record back, checks that writes are
/// refused and flush/close succeed; returns the recovery.
fn read_only_session(
    dir: &Path,
    written: &[(Record, RecordLocation)],
) -> vellum::storage::Recovery {
    let config = StorageConfig {
        read_only: true,
        ..StorageConfig::default()
    };
    let (storage, recovery) = Storage::open(dir, CLUSTER, config).expect("read-only open");
    let kept: Vec<_> = recovery
        .records
        .iter()
        .filter(|(_, header)| header.kind != RecordKind::Seal)
        .collect();
    for ((location, header), (record, at)) in kept.iter().zip(written) {
        assert_eq!((location, header), (at, &record.header));
        assert_eq!(&storage.read(*location).expect("read"), record);
    }
    let mut chain = Chain::new();
    let (record, tree) = chain.op();
    for refused in [
        storage.submit(record.clone(), tree),
        storage.submit_lazy(record, tree),
    ] {
        match refused {
            Err(StorageError::Rejected(reason)) => {
                assert_eq!(reason, "storage is open read-only");
            }
            other => panic!("submit not refused: {other:?}"),
        }
    }
    storage.flush().expect("flush");
    storage.close().expect("close");
    recovery
}

/// Goal: a read-only open, reads and close leave the directory identical
/// (names, lengths, contents, mtimes), whether the log is clean, ends in a
/// torn tail (reported, not cut; the records before it readable), ends with
/// a sealed segment (no next one created) or with a torn segment header
/// (not rewritten).
#[test]
fn read_only_open_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StorageConfig::default()
    };
    let written = build_log(dir.path(), 12, config);
    let scan = scan_log_dir(&dir.path().join(SEGMENTS_DIR), CLUSTER).expect("clean log");
    let last = scan.segments.len() as u64 - 1;
    assert!(last >= 1, "the log rolled over");
    let last_path = segment_path(dir.path(), last);
    let last_len = std::fs::metadata(&last_path).expect("stat").len();
    let in_last = written.iter().filter(|(_, at)| at.segment == last).count();
    let before_last = written.len() - in_last;

    // Clean, then a torn tail: the last record cut in half.
    let recovery = read_only_round(dir.path(), &written, None);
    assert_eq!(recovery.records.len(), scan.record_count());
    cut_end(&last_path, 100);
    let last_record = written.last().expect("records").1;
    let torn = u64::from(last_record.len) - 100;
    let recovery = read_only_round(dir.path(), &written[..written.len() - 1], Some(torn));
    assert_eq!(recovery.chain.last_op, 12);

    // A torn segment header: the last file holds 10 bytes.
    cut_end(&last_path, last_len - 100 - 10);
    let recovery = read_only_round(dir.path(), &written[..before_last], Some(10));
    assert_eq!(
        recovery.torn_tail.map(|t| (t.file, t.offset)),
        Some((last_path.clone(), 0))
    );

    // The last segment gone: the one before it is sealed and last.
    std::fs::remove_file(&last_path).expect("remove");
    let recovery = read_only_round(dir.path(), &written[..before_last], None);
    assert_eq!(recovery.segments, last);
    let scan = scan_log_dir(&dir.path().join(SEGMENTS_DIR), CLUSTER).expect("log");
    assert!(matches!(
        scan.segments.last().expect("segments").scan.end,
        SegmentEnd::Sealed { .. }
    ));
}

/// One read-only session between two snapshots that must be equal.
fn read_only_round(
    dir: &Path,
    written: &[(Record, RecordLocation)],
    torn_bytes: Option<u64>,
) -> vellum::storage::Recovery {
    age(dir);
    let before = snapshot(dir);
    let recovery = read_only_session(dir, written);
    assert_eq!(recovery.torn_tail.as_ref().map(|t| t.bytes), torn_bytes);
    assert_eq!(snapshot(dir), before, "the directory changed");
    recovery
}

/// Goal: a read-only open of a directory without a log fails clearly and
/// creates nothing.
#[test]
fn read_only_open_needs_the_segments_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = StorageConfig {
        read_only: true,
        ..StorageConfig::default()
    };
    match Storage::open(dir.path(), CLUSTER, config) {
        Err(StorageError::Io { path, source }) => {
            assert_eq!(path, dir.path().join(SEGMENTS_DIR));
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
            assert!(source.to_string().contains("read-only"), "{source}");
        }
        other => panic!("expected a not-found error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("read dir").count(),
        0,
        "nothing was created"
    );
}

/// The descriptors of this process open on a file inside `dir`.
fn fds_into(dir: &Path) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.starts_with(dir))
        .count()
}

/// Goal: reading records spread over many segments, twice over, keeps at
/// most `OPEN_FILES_MAX` descriptors open on segment files for reads (plus
/// the writer's own handle of the segment it appends to).
#[test]
fn reads_across_many_segments_hold_bounded_file_descriptors() {
    use vellum::storage::open_files::OPEN_FILES_MAX;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StorageConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StorageConfig::default()
    };
    let written = build_log(dir.path(), 400, config);
    let segments = dir.path().join(SEGMENTS_DIR);
    let segment_count = std::fs::read_dir(&segments).expect("segments").count();
    assert!(
        segment_count > 4 * OPEN_FILES_MAX,
        "{segment_count} segments: the reads must span many more than the bound"
    );
    let (storage, _) = Storage::open(dir.path(), CLUSTER, config).expect("open");
    let mut most = 0;
    for _ in 0..2 {
        for (record, location) in &written {
            assert_eq!(&storage.read(*location).expect("read"), record);
            most = most.max(fds_into(&segments));
        }
    }
    assert!(
        most <= OPEN_FILES_MAX + 1,
        "{most} descriptors open on segment files, at most {} allowed",
        OPEN_FILES_MAX + 1
    );
    storage.close().expect("close");
}
