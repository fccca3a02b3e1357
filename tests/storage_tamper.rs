//! Tamper evidence of closed segments: every flipped bit is refused by
//! `Storage::open` with the file and the offset of the damaged record.

use vellum::storage::{SEGMENT_BYTES_MIN, Storage, StorageConfig, StorageError};
use vellum_audit::hash::{Hash, sha256};
use vellum_audit::record::{
    EventFrame, OpHeader, Record, RecordKind, encode_events, genesis_parent,
};
use vellum_audit::segment::{scan_segment, segment_file_name};

const CLUSTER: u128 = 0x7a;

fn build_log(dir: &std::path::Path) {
    let config = StorageConfig {
        segment_bytes_max: SEGMENT_BYTES_MIN,
        ..StorageConfig::default()
    };
    let (storage, _) = Storage::open(dir, CLUSTER, config).expect("open");
    let (mut parent, mut tree_size): (Hash, u64) = (genesis_parent(CLUSTER), 0);
    for op in 1..=20u64 {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.parent = parent;
        header.op = op;
        header.stream = 16;
        header.key_id = 1;
        header.global_position = tree_size;
        header.event_count = 2;
        header.tree_size = tree_size + 2;
        let record = Record::new(
            header,
            encode_events(&[
                EventFrame {
                    commitment: [op as u8; 32],
                    nonce: [op as u8; 12],
                    sealed: &[7; 100],
                },
                EventFrame {
                    commitment: [9; 32],
                    nonce: [9; 12],
                    sealed: &[8; 50],
                },
            ]),
        );
        parent = record.checksum();
        tree_size += 2;
        let root = sha256(&[&tree_size.to_le_bytes()]);
        storage.submit(record, (tree_size, root)).expect("submit");
        if op % 5 == 0 {
            let mut cert = OpHeader::empty(RecordKind::Certificate, CLUSTER);
            cert.parent = parent;
            cert.op = op;
            cert.tree_size = tree_size;
            storage
                .submit(Record::new(cert, b"note".to_vec()), (tree_size, root))
                .expect("submit");
        }
    }
    storage.close().expect("close");
}

/// Goal: a bit flip at every byte of a closed (sealed, not last) segment
/// fails the open with that file and the offset of the record holding the
/// byte; no flip is accepted or silently cut off.
#[test]
fn every_bit_flip_in_a_closed_segment_fails_open_with_location() {
    let dir = tempfile::tempdir().expect("temp dir");
    build_log(dir.path());
    let path = dir.path().join("segments").join(segment_file_name(0));
    let clean = std::fs::read(&path).expect("read");
    let scan = scan_segment(&clean, 0, CLUSTER);
    let mut starts: Vec<u64> = vec![0];
    starts.extend(scan.records.iter().map(|r| r.offset));
    assert!(std::fs::exists(dir.path().join("segments").join(segment_file_name(1))).expect("stat"));
    for byte in 0..clean.len() {
        let mut flipped = clean.clone();
        flipped[byte] ^= 1 << (byte % 8);
        std::fs::write(&path, &flipped).expect("write");
        let expected = *starts
            .iter()
            .rev()
            .find(|s| **s <= byte as u64)
            .expect("0 is a start");
        match Storage::open(dir.path(), CLUSTER, StorageConfig::default()) {
            Err(StorageError::Corrupt { file, offset, .. }) => {
                assert_eq!(file, path, "flip at {byte}");
                assert_eq!(offset, expected, "flip at {byte}");
            }
            Err(other) => panic!("flip at {byte}: unexpected error {other}"),
            Ok((_, recovery)) => panic!(
                "flip at {byte} accepted (torn tail {:?})",
                recovery.torn_tail
            ),
        }
    }
    std::fs::write(&path, &clean).expect("restore");
    let (storage, recovery) =
        Storage::open(dir.path(), CLUSTER, StorageConfig::default()).expect("clean log opens");
    assert!(recovery.torn_tail.is_none());
    storage.close().expect("close");
}

/// Goal: truncating, deleting or swapping closed segments fails the open.
#[test]
fn truncated_deleted_or_swapped_segments_fail_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    build_log(dir.path());
    let segments = dir.path().join("segments");
    let first = segments.join(segment_file_name(0));
    let second = segments.join(segment_file_name(1));
    let (a, b) = (
        std::fs::read(&first).expect("read"),
        std::fs::read(&second).expect("read"),
    );
    let open = || Storage::open(dir.path(), CLUSTER, StorageConfig::default()).map(|_| ());

    std::fs::write(&first, &a[..a.len() - 10]).expect("truncate");
    assert!(matches!(open(), Err(StorageError::Corrupt { ref file, .. }) if *file == first));
    std::fs::write(&first, &b).expect("swap");
    std::fs::write(&second, &a).expect("swap");
    assert!(
        matches!(open(), Err(StorageError::Corrupt { ref file, offset: 0, .. }) if *file == first)
    );
    std::fs::write(&first, &a).expect("restore");
    std::fs::write(&second, &b).expect("restore");
    std::fs::remove_file(&first).expect("delete");
    assert!(matches!(open(), Err(StorageError::Corrupt { ref file, .. }) if *file == first));
}
