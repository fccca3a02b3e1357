//! The segment format and the scanner: headers, torn tails versus corruption,
//! bit flips, sealing and the hash chain across segments.

use proptest::prelude::*;
use vellum_audit::record::{
    EventFrame, HEADER_BYTES, OpHeader, Record, RecordKind, SealBody, encode_events, genesis_parent,
};
use vellum_audit::segment::{
    Resume, SEGMENT_VERSION_V1, ScanError, ScanRules, SegmentEnd, SegmentHeader,
    ZERO_RUN_SECTOR_BYTES, parse_segment_file_name, scan_log_dir, scan_log_dir_rules,
    scan_log_dir_tolerant, scan_segment, scan_segment_from, segment_file_name,
};

const CLUSTER: u128 = 0xc1;

/// Builds well-formed segments in memory, the way storage writes them.
struct LogBuilder {
    segments: Vec<Vec<u8>>,
    last_op: u64,
    last_checksum: [u8; 32],
    tree_size: u64,
    checksums: Vec<([u8; 32], u64)>,
    records_in_segment: u64,
    ops_in_segment: u64,
}

impl LogBuilder {
    fn new() -> Self {
        LogBuilder {
            segments: vec![
                SegmentHeader {
                    cluster: CLUSTER,
                    segment_index: 0,
                    version: SEGMENT_VERSION_V1,
                }
                .encode()
                .to_vec(),
            ],
            last_op: 0,
            last_checksum: genesis_parent(CLUSTER),
            tree_size: 0,
            checksums: Vec::new(),
            records_in_segment: 0,
            ops_in_segment: 0,
        }
    }

    fn push(&mut self, record: &Record) {
        self.segments
            .last_mut()
            .expect("one segment")
            .extend_from_slice(&record.encode());
        self.records_in_segment += 1;
    }

    fn op(&mut self, events: u32) -> Record {
        self.op_with(events, |_| {})
    }

    /// An op whose header `adjust` changes (version, digest) before it is
    /// sealed into a record.
    fn op_with(&mut self, events: u32, adjust: impl FnOnce(&mut OpHeader)) -> Record {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op + 1;
        header.commit = self.last_op;
        header.stream = 16;
        header.global_position = self.tree_size;
        header.event_count = events;
        header.tree_size = self.tree_size + u64::from(events);
        header.key_id = 1;
        adjust(&mut header);
        let sealed: Vec<Vec<u8>> = (0..events)
            .map(|i| vec![i as u8; 16 + i as usize])
            .collect();
        let frames: Vec<EventFrame<'_>> = sealed
            .iter()
            .map(|s| EventFrame {
                commitment: [0x11; 32],
                nonce: [7; 12],
                sealed: s.as_slice(),
            })
            .collect();
        let record = Record::new(header, encode_events(&frames));
        self.last_op += 1;
        self.last_checksum = record.checksum();
        self.tree_size = record.header.tree_size;
        self.checksums.push((self.last_checksum, self.tree_size));
        self.ops_in_segment += 1;
        self.push(&record);
        record
    }

    fn certificate(&mut self, op: u64) {
        let mut header = OpHeader::empty(RecordKind::Certificate, CLUSTER);
        let (parent, tree_size) = self.checksums[op as usize - 1];
        header.parent = parent;
        header.op = op;
        header.tree_size = tree_size;
        self.push(&Record::new(header, b"example.org/log\n1\nAAAA\n".to_vec()));
    }

    fn seal(&mut self) {
        let mut header = OpHeader::empty(RecordKind::Seal, CLUSTER);
        header.parent = self.last_checksum;
        header.op = self.last_op;
        header.tree_size = self.tree_size;
        let body = SealBody {
            tree_root: [9; 32],
            record_count: self.records_in_segment,
            op_count: self.ops_in_segment,
        };
        self.push(&Record::new(header, body.encode().to_vec()));
        let index = self.segments.len() as u64;
        self.segments.push(
            SegmentHeader {
                cluster: CLUSTER,
                segment_index: index,
                version: SEGMENT_VERSION_V1,
            }
            .encode()
            .to_vec(),
        );
        self.records_in_segment = 0;
        self.ops_in_segment = 0;
    }

    fn write_dir(&self, dir: &std::path::Path) {
        for (index, bytes) in self.segments.iter().enumerate() {
            std::fs::write(dir.join(segment_file_name(index as u64)), bytes)
                .expect("write segment");
        }
    }
}

/// Offsets at which records (and the segment header, at 0) start, plus the end.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let scan = scan_segment(bytes, 0, CLUSTER);
    let mut starts = vec![0];
    starts.extend(scan.records.iter().map(|r| r.offset as usize));
    starts.push(bytes.len());
    starts
}

fn tempdir() -> std::path::PathBuf {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).expect("random");
    let dir = std::env::temp_dir().join(format!(
        "vellum-segment-test-{}",
        u64::from_le_bytes(random)
    ));
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

proptest! {
    /// Goal: segment headers round-trip.
    #[test]
    fn segment_header_round_trips(cluster in any::<u128>(), segment_index in any::<u64>()) {
        let header = SegmentHeader::new(cluster, segment_index);
        prop_assert_eq!(SegmentHeader::decode(&header.encode()).expect("well formed"), header);
    }

    /// Goal: file names round-trip through their 20-digit form.
    #[test]
    fn segment_names_round_trip(index in any::<u64>()) {
        prop_assert_eq!(parse_segment_file_name(&segment_file_name(index)), Some(index));
    }
}

/// Goal: the encoded segment header is byte-for-byte the blessed golden file.
#[test]
fn segment_header_matches_golden() {
    let bytes = SegmentHeader {
        cluster: 0x0123_4567_89ab_cdef_0011_2233_4455_6677,
        segment_index: 5,
        version: SEGMENT_VERSION_V1,
    }
    .encode();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/segment_header.bin");
    if std::env::var_os("VELLUM_BLESS").is_some() {
        std::fs::write(&path, bytes).expect("write golden file");
    }
    let golden = std::fs::read(&path).expect("golden file exists (bless with VELLUM_BLESS=1)");
    assert_eq!(golden, bytes, "segment header format changed");
}

/// Goal: a well-formed open segment scans clean with every record, and a sealed one ends Sealed.
#[test]
fn clean_segments_scan() {
    let mut log = LogBuilder::new();
    log.op(1);
    log.op(3);
    log.certificate(2);
    log.op(0);
    let scan = scan_segment(&log.segments[0], 0, CLUSTER);
    assert_eq!(scan.end, SegmentEnd::Open);
    assert_eq!(scan.records.len(), 4);
    log.seal();
    let scan = scan_segment(&log.segments[0], 0, CLUSTER);
    assert!(
        matches!(scan.end, SegmentEnd::Sealed { .. }),
        "{:?}",
        scan.end
    );
    assert_eq!(scan.records.len(), 5);
}

/// Goal: a log written by older builds (version 1 op headers, then
/// version 2 with request digests) and continued by this one (version 3,
/// with group flags) scans clean: the chain runs across the version
/// changes, and older headers keep their version and unknown digest.
#[test]
fn version_1_then_version_2_ops_chain_and_scan_clean() {
    let mut log = LogBuilder::new();
    log.op_with(1, |h| h.version = vellum_audit::record::VERSION_V1);
    log.op_with(2, |h| h.version = vellum_audit::record::VERSION_V1);
    log.certificate(2);
    log.op_with(1, |h| {
        h.version = vellum_audit::record::VERSION_V2;
        h.request_digest = [0x42; 32];
    });
    log.op_with(2, |h| h.version = vellum_audit::record::VERSION_V2);
    log.certificate(4);
    log.seal();
    let scan = scan_segment(&log.segments[0], 0, CLUSTER);
    assert!(
        matches!(scan.end, SegmentEnd::Sealed { .. }),
        "{:?}",
        scan.end
    );
    let versions: Vec<(u16, [u8; 32])> = scan
        .records
        .iter()
        .filter(|r| r.header.kind == RecordKind::Op)
        .map(|r| (r.header.version, r.header.request_digest))
        .collect();
    assert_eq!(
        versions,
        vec![(1, [0; 32]), (1, [0; 32]), (2, [0x42; 32]), (2, [0; 32])]
    );
    let dir = tempdir();
    log.write_dir(&dir);
    let scanned = scan_log_dir(&dir, CLUSTER);
    std::fs::remove_dir_all(&dir).expect("clean up");
    assert!(scanned.is_ok(), "{scanned:?}");
}

/// Goal: every prefix of an unsynced last record is a torn tail at the record's start, never corruption.
#[test]
fn every_prefix_of_last_record_is_torn_tail() {
    let mut log = LogBuilder::new();
    log.op(2);
    let synced = log.segments[0].len();
    log.op(3);
    let full = log.segments[0].clone();
    for cut in synced + 1..full.len() {
        let scan = scan_segment(&full[..cut], 0, CLUSTER);
        assert_eq!(scan.records.len(), 1, "cut {cut}");
        assert_eq!(
            scan.end,
            SegmentEnd::TornTail {
                offset: synced as u64,
                bytes: (cut - synced) as u64
            },
            "cut {cut}"
        );
        // The same prefix followed by garbage is still only a torn tail.
        let mut garbage = full[..cut].to_vec();
        garbage.extend((0..300u32).map(|i| (i * 131 + cut as u32) as u8));
        let scan = scan_segment(&garbage, 0, CLUSTER);
        assert_eq!(scan.records.len(), 1, "garbage cut {cut}");
        assert!(
            matches!(scan.end, SegmentEnd::TornTail { offset, .. } if offset == synced as u64),
            "garbage cut {cut}"
        );
    }
}

/// Goal: every single-bit flip anywhere in a sealed segment is refused, located at the record holding the byte.
#[test]
fn every_bit_flip_in_sealed_segment_is_caught() {
    let mut log = LogBuilder::new();
    log.op(1);
    log.op(2);
    log.certificate(1);
    log.op(1);
    log.seal();
    let clean = log.segments[0].clone();
    let starts = record_starts(&clean);
    for byte in 0..clean.len() {
        let record_start = *starts
            .iter()
            .rev()
            .find(|s| **s <= byte)
            .expect("0 is a start") as u64;
        let mut flipped = clean.clone();
        flipped[byte] ^= 1 << (byte % 8);
        let scan = scan_segment(&flipped, 0, CLUSTER);
        match scan.end {
            SegmentEnd::Corrupt { offset, .. } | SegmentEnd::TornTail { offset, .. } => {
                assert_eq!(offset, record_start, "flip at {byte}")
            }
            other => panic!("flip at byte {byte} accepted: {other:?}"),
        }
    }
}

/// Goal: a bad record followed by a valid one is corruption, not a torn tail.
#[test]
fn damage_before_a_valid_record_is_corrupt() {
    let mut log = LogBuilder::new();
    let first = log.op(1);
    log.op(1);
    let mut bytes = log.segments[0].clone();
    let body_byte = 64 + HEADER_BYTES + 2;
    bytes[body_byte] ^= 0xff;
    let scan = scan_segment(&bytes, 0, CLUSTER);
    assert!(
        matches!(scan.end, SegmentEnd::Corrupt { offset: 64, .. }),
        "{:?}",
        scan.end
    );
    assert!(scan.records.is_empty());
    assert_eq!(first.header.op, 1);
}

/// Goal: records that break the chain (reordered, skipped, replayed) are corrupt even with valid checksums.
#[test]
fn broken_chain_is_corrupt() {
    let mut log = LogBuilder::new();
    let one = log.op(1);
    let two = log.op(1);
    let header = SegmentHeader {
        cluster: CLUSTER,
        segment_index: 0,
        version: SEGMENT_VERSION_V1,
    }
    .encode()
    .to_vec();
    for order in [vec![&two, &one], vec![&one, &one], vec![&two]] {
        let mut bytes = header.clone();
        for record in &order {
            bytes.extend(record.encode());
        }
        let scan = scan_segment(&bytes, 0, CLUSTER);
        assert!(
            matches!(scan.end, SegmentEnd::Corrupt { .. }),
            "{:?}",
            scan.end
        );
    }
}

/// Goal: a segment scanned under the wrong index or cluster is corrupt at byte 0.
#[test]
fn misplaced_segment_is_corrupt() {
    let mut log = LogBuilder::new();
    log.op(1);
    let scan = scan_segment(&log.segments[0], 3, CLUSTER);
    assert!(
        matches!(scan.end, SegmentEnd::Corrupt { offset: 0, .. }),
        "{:?}",
        scan.end
    );
    let scan = scan_segment(&log.segments[0], 0, CLUSTER + 1);
    assert!(
        matches!(scan.end, SegmentEnd::Corrupt { offset: 0, .. }),
        "{:?}",
        scan.end
    );
}

/// Goal: bytes after a seal are corruption.
#[test]
fn bytes_after_seal_are_corrupt() {
    let mut log = LogBuilder::new();
    log.op(1);
    log.seal();
    let mut bytes = log.segments[0].clone();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0u8; 10]);
    let scan = scan_segment(&bytes, 0, CLUSTER);
    assert_eq!(
        scan.end,
        SegmentEnd::Corrupt {
            offset: end,
            reason: "10 bytes after the seal".to_string()
        }
    );
}

/// Goal: a log directory chains across segments, and its damage is named by file and offset.
#[test]
fn log_dir_checks_chain_across_segments() {
    let mut log = LogBuilder::new();
    log.op(1);
    log.op(2);
    log.seal();
    log.certificate(2);
    log.op(1);
    log.seal();
    log.op(4);
    let dir = tempdir();
    log.write_dir(&dir);
    let scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    assert_eq!(scan.segments.len(), 3);
    assert_eq!(scan.chain.last_op, 4);
    assert_eq!(scan.chain.tree_size, 8);
    assert!(scan.torn_tail().is_none());

    // Swap segment 1 with a segment that does not chain (op 3 replaced by a fresh op 1 chain).
    let mut other = LogBuilder::new();
    other.op(1);
    other.op(1);
    other.seal();
    other.op(1);
    other.seal();
    let path = dir.join(segment_file_name(1));
    std::fs::write(&path, &other.segments[1]).expect("write");
    match scan_log_dir(&dir, CLUSTER) {
        Err(ScanError::Corrupt { file, offset, .. }) => {
            assert_eq!(file, path);
            assert_eq!(offset, 64);
        }
        other => panic!("broken chain accepted: {other:?}"),
    }

    // A missing middle segment is named.
    std::fs::remove_file(&path).expect("remove");
    match scan_log_dir(&dir, CLUSTER) {
        Err(ScanError::Corrupt { file, .. }) => assert_eq!(file, path),
        other => panic!("gap accepted: {other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: the tolerant scan (a replica of a cluster) steps over every single
/// byte flip inside an op record below the tail, whether in its body (the
/// header still reads) or in its header (the op is placed from the next
/// op's parent, a certificate of it, or the seal), and reports exactly that
/// op with its original checksum, offset and length; the strict scan still
/// refuses every one of them.
#[test]
fn tolerant_scan_reports_every_flip_in_an_op_record() {
    let mut log = LogBuilder::new();
    let op1 = log.op(1);
    let op2 = log.op(2);
    log.certificate(2);
    let op3 = log.op(1);
    log.seal();
    log.op(3);
    let clean = log.segments[0].clone();
    let starts = record_starts(&clean);
    let dir = tempdir();
    log.write_dir(&dir);
    let path = dir.join(segment_file_name(0));
    let clean_scan = scan_log_dir(&dir, CLUSTER).expect("clean log");
    // (record start, op record): op 1 is placed by op 2, op 2 by the
    // certificate after it, op 3 by the seal.
    let ops = [(starts[1], &op1), (starts[2], &op2), (starts[4], &op3)];
    for (start, record) in ops {
        let len = record.encode().len();
        for byte in start..start + len {
            let mut flipped = clean.clone();
            flipped[byte] ^= 1 << (byte % 8);
            std::fs::write(&path, &flipped).expect("write");
            assert!(
                scan_log_dir(&dir, CLUSTER).is_err(),
                "strict: flip at {byte}"
            );
            let scan = scan_log_dir_tolerant(&dir, CLUSTER)
                .unwrap_or_else(|e| panic!("tolerant: flip at {byte}: {e}"));
            let damaged = &scan.segments[0].scan.damaged;
            assert_eq!(damaged.len(), 1, "flip at {byte}");
            let d = &damaged[0];
            assert_eq!(
                (d.offset, d.len, d.op, d.checksum),
                (
                    start as u64,
                    len as u64,
                    record.header.op,
                    record.checksum()
                ),
                "flip at {byte}"
            );
            assert_eq!(
                d.header.is_some(),
                byte >= start + HEADER_BYTES,
                "flip at {byte}"
            );
            assert_eq!(scan.chain, clean_scan.chain, "flip at {byte}");
            assert_eq!(scan.record_count() + 1, clean_scan.record_count());
        }
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: only the last segment may be unsealed or torn.
#[test]
fn only_last_segment_may_be_open_or_torn() {
    let mut log = LogBuilder::new();
    log.op(1);
    log.seal();
    log.op(1);
    let dir = tempdir();
    log.write_dir(&dir);
    // Torn last segment: accepted and reported.
    let last = dir.join(segment_file_name(1));
    let mut bytes = log.segments[1].clone();
    bytes.truncate(bytes.len() - 5);
    std::fs::write(&last, &bytes).expect("write");
    let scan = scan_log_dir(&dir, CLUSTER).expect("torn last is fine");
    assert_eq!(scan.torn_tail().map(|(_, offset, _)| offset), Some(64));
    // The seal of segment 0 torn: not the last, so corrupt.
    let first = dir.join(segment_file_name(0));
    let mut bytes = log.segments[0].clone();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&first, &bytes).expect("write");
    match scan_log_dir(&dir, CLUSTER) {
        Err(ScanError::Corrupt { file, .. }) => assert_eq!(file, first),
        other => panic!("torn sealed segment accepted: {other:?}"),
    }
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Goal: scanning a later segment on its own (no chain before it) accepts a
/// certificate that comes before the segment's first op instead of panicking.
#[test]
fn partial_scan_of_a_segment_starting_with_a_certificate_does_not_panic() {
    let cluster = 9;
    let mut header = OpHeader::empty(RecordKind::Certificate, cluster);
    header.op = 5;
    header.tree_size = 5;
    let record = Record::new(header, b"certificate text".to_vec());
    let segment_header = vellum_audit::segment::SegmentHeader {
        cluster,
        segment_index: 1,
        version: SEGMENT_VERSION_V1,
    };
    let mut bytes = segment_header.encode().to_vec();
    bytes.extend_from_slice(&record.encode());
    let scan = vellum_audit::segment::scan_segment(&bytes, 1, cluster);
    assert_eq!(scan.records.len(), 1, "{:?}", scan.end);
}

/// Goal: `ChainTip::check_next_op` and `check_certified_op` (the chain rules
/// storage and the scanner share) accept the next op and refuse a gap, a
/// wrong parent, a wrong global position, and a certificate of an op that
/// is not in the log.
#[test]
fn chain_tip_rules_accept_the_next_op_only() {
    use vellum_audit::segment::ChainTip;
    let tip = ChainTip {
        last_op: 0,
        last_op_checksum: genesis_parent(CLUSTER),
        tree_size: 0,
    };
    let mut next = OpHeader::empty(RecordKind::Op, CLUSTER);
    next.op = 1;
    next.parent = genesis_parent(CLUSTER);
    next.event_count = 2;
    next.tree_size = 2;
    assert_eq!(tip.check_next_op(&next), Ok(()));
    let mut gap = next;
    gap.op = 2;
    assert!(
        tip.check_next_op(&gap)
            .is_err_and(|e| e.contains("not consecutive"))
    );
    let mut parent = next;
    parent.parent = [7; 32];
    assert!(
        tip.check_next_op(&parent)
            .is_err_and(|e| e.contains("parent"))
    );
    let mut position = next;
    position.global_position = 1;
    assert!(
        tip.check_next_op(&position)
            .is_err_and(|e| e.contains("global position"))
    );
    let mut certificate = OpHeader::empty(RecordKind::Certificate, CLUSTER);
    certificate.op = 1;
    assert!(
        tip.check_certified_op(&certificate).is_err(),
        "op 1 not in the log yet"
    );
    let after = ChainTip {
        last_op: 1,
        last_op_checksum: next.checksum(),
        tree_size: 2,
    };
    assert_eq!(after.check_certified_op(&certificate), Ok(()));
    certificate.op = 0;
    assert!(after.check_certified_op(&certificate).is_err(), "op 0");
}

/// Goal: the encoded version 2 segment header is byte-for-byte the blessed golden file.
#[test]
fn segment_header_v2_matches_golden() {
    let bytes = SegmentHeader::new(0x0123_4567_89ab_cdef_0011_2233_4455_6677, 5).encode();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/segment_header_v2.bin");
    if std::env::var_os("VELLUM_BLESS").is_some() {
        std::fs::write(&path, bytes).expect("write golden file");
    }
    let golden = std::fs::read(&path).expect("golden file exists (bless with VELLUM_BLESS=1)");
    assert_eq!(golden, bytes, "segment header format changed");
}

/// `bytes` of segment `index` with a version 2 header.
fn as_version_2(bytes: &[u8], index: u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out[..64].copy_from_slice(&SegmentHeader::new(CLUSTER, index).encode());
    out
}

/// Zeros from `from` to the end of its 512-byte sector: a sector of the
/// zero window that never reached the disk, after synced data up to `from`.
fn lose_sector(bytes: &mut [u8], from: usize) {
    let sector = ZERO_RUN_SECTOR_BYTES as usize;
    let to = ((from / sector + 1) * sector).min(bytes.len());
    bytes[from..to].fill(0);
}

/// Goal: zeros after the last record are the window (a clean end) in a
/// version 2 segment, and a torn tail in a version 1 segment.
#[test]
fn zero_window_is_a_clean_end_only_in_version_2() {
    let mut log = LogBuilder::new();
    for _ in 0..3 {
        log.op(2);
    }
    let mut bytes = log.segments[0].clone();
    let end = bytes.len() as u64;
    bytes.extend_from_slice(&[0; 1000]);
    let scan = scan_segment(&as_version_2(&bytes, 0), 0, CLUSTER);
    assert_eq!(
        (scan.end, scan.window, scan.version),
        (SegmentEnd::Open, 1000, 2)
    );
    assert_eq!(scan.records.len(), 3);
    let scan = scan_segment(&bytes, 0, CLUSTER);
    assert_eq!(
        scan.end,
        SegmentEnd::TornTail {
            offset: end,
            bytes: 1000
        }
    );
}

/// Goal: a lost sector (zeros to its end) followed by valid records is a
/// torn tail in a version 2 last segment, and corruption in a version 1
/// segment or a version 2 segment that is not the last.
#[test]
fn hole_then_data_is_torn_only_in_a_version_2_last_segment() {
    let mut log = LogBuilder::new();
    for _ in 0..4 {
        log.op(24);
    }
    let mut bytes = log.segments[0].clone();
    bytes.extend_from_slice(&[0; 4096]);
    let second = record_starts(&bytes)[2];
    lose_sector(&mut bytes, second);
    let torn = SegmentEnd::TornTail {
        offset: second as u64,
        bytes: (bytes.len() - second) as u64,
    };
    let v2 = as_version_2(&bytes, 0);
    let scan = scan_segment(&v2, 0, CLUSTER);
    assert_eq!(scan.end, torn);
    assert_eq!(scan.records.len(), 1);
    let mut chain = vellum_audit::segment::Chain::genesis(CLUSTER);
    let not_last = scan_segment_from(&v2, 0, CLUSTER, &mut chain, Resume::START, false);
    assert!(
        matches!(not_last.end, SegmentEnd::Corrupt { offset, .. } if offset == second as u64),
        "{:?}",
        not_last.end
    );
    assert!(matches!(
        scan_segment(&bytes, 0, CLUSTER).end,
        SegmentEnd::Corrupt { offset, .. } if offset == second as u64
    ));
    // Data then a hole: the record after the first is whole, a later one lost.
    let mut later = as_version_2(&log.segments[0], 0);
    later.extend_from_slice(&[0; 4096]);
    let fourth = record_starts(&later)[4];
    lose_sector(&mut later, fourth + 300);
    let scan = scan_segment(&later, 0, CLUSTER);
    assert_eq!(scan.records.len(), 3);
    assert!(matches!(scan.end, SegmentEnd::TornTail { offset, .. } if offset == fourth as u64));
}

/// Goal: a Certificate after a hole that certifies an op at or after it
/// proves the hole's bytes were durable: damage, not a torn tail; a
/// Certificate of an op before the hole proves nothing.
#[test]
fn certificate_after_a_hole_proves_it_durable() {
    for (certified, torn) in [(3, false), (1, true)] {
        let mut log = LogBuilder::new();
        for _ in 0..3 {
            log.op(24);
        }
        log.certificate(certified);
        let mut bytes = as_version_2(&log.segments[0], 0);
        bytes.extend_from_slice(&[0; 1024]);
        let second = record_starts(&bytes)[2];
        lose_sector(&mut bytes, second);
        let end = scan_segment(&bytes, 0, CLUSTER).end;
        assert_eq!(
            matches!(end, SegmentEnd::TornTail { offset, .. } if offset == second as u64),
            torn,
            "certificate of op {certified}: {end:?}"
        );
        if !torn {
            assert!(matches!(end, SegmentEnd::Corrupt { .. }), "{end:?}");
        }
    }
}

/// Goal: zeros after a Seal are accepted only in a version 2 last segment
/// (a trim not yet durable); anywhere else they are bytes after the seal.
#[test]
fn zeros_after_a_seal_only_in_the_last_segment() {
    let mut log = LogBuilder::new();
    log.op(2);
    log.seal();
    let mut bytes = as_version_2(&log.segments[0], 0);
    bytes.extend_from_slice(&[0; 100]);
    let scan = scan_segment(&bytes, 0, CLUSTER);
    assert!(matches!(scan.end, SegmentEnd::Sealed { .. }));
    assert_eq!(scan.window, 100);
    let mut chain = vellum_audit::segment::Chain::genesis(CLUSTER);
    let not_last = scan_segment_from(&bytes, 0, CLUSTER, &mut chain, Resume::START, false);
    assert!(
        matches!(not_last.end, SegmentEnd::Corrupt { .. }),
        "{:?}",
        not_last.end
    );
}

/// Goal: a replica of a cluster scans a hole in its last segment as a torn
/// tail; without the torn-hole rule (its fallback when the cut would go
/// below a floor) the same op is a damaged op below the tail.
#[test]
fn tolerant_scan_with_and_without_the_torn_hole_rule() {
    let mut log = LogBuilder::new();
    for _ in 0..4 {
        log.op(24);
    }
    let mut bytes = as_version_2(&log.segments[0], 0);
    bytes.extend_from_slice(&[0; 2048]);
    let second = record_starts(&bytes)[2];
    lose_sector(&mut bytes, second);
    let dir = tempdir();
    std::fs::write(dir.join(segment_file_name(0)), &bytes).expect("write");
    let scan = scan_log_dir_tolerant(&dir, CLUSTER).expect("torn");
    assert_eq!(
        scan.torn_tail().map(|(_, offset, _)| offset),
        Some(second as u64)
    );
    assert!(scan.segments[0].scan.damaged.is_empty());
    let rules = ScanRules {
        tolerate_damaged_ops: true,
        last: true,
        torn_holes: false,
    };
    let scan = scan_log_dir_rules(&dir, CLUSTER, rules).expect("a damaged op");
    let damaged = &scan.segments[0].scan.damaged;
    assert_eq!(damaged.len(), 1);
    assert_eq!((damaged[0].op, damaged[0].offset), (2, second as u64));
    assert_eq!(scan.chain.last_op, 4);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
