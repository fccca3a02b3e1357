//! Segment files and the log scanner.
//!
//! The log is split into files `segments/<index as 20 digits>.vseg`. Each
//! starts with a 64-byte [`SegmentHeader`], then records back to back; a full
//! segment ends with exactly one Seal record. [`scan_segment`] checks one
//! file's bytes (pure, no I/O) and tells a torn tail (an unsynced write that
//! did not finish) from corruption (damage before the tail). [`scan_log_dir`]
//! reads every segment of a directory in order and checks the hash chain
//! across them. Storage recovery and `vellum verify` both use it; it reads
//! files but never writes. [`scan_log_dir_tolerant`] (a replica of a cluster,
//! which can repair from peers) also steps over a damaged Op record below
//! the tail whose place in the chain is known, and reports it. The rules are written down in `docs/format.md`
//! ("Segments", "Crash cases").

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::error::DecodeError;
use crate::hash::{Hash, sha256};
use crate::record::{
    HEADER_BYTES, MAGIC, MAGIC_OFFSET, OpHeader, RecordKind, SealBody, decode_events,
    genesis_parent,
};

/// Size of an encoded [`SegmentHeader`].
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Magic bytes of a segment header, at offset 32.
pub const SEGMENT_MAGIC: [u8; 4] = *b"VLSG";
/// The segment header version this code writes: 2, a segment whose last
/// record may be followed by a zero-written window (see [`ZERO_RUN_SECTOR_BYTES`]).
pub const SEGMENT_VERSION: u16 = 2;
/// The first segment version, still read: records end at the end of the file.
pub const SEGMENT_VERSION_V1: u16 = 1;
/// The unit of the torn-hole rule of a version 2 segment: a sector that was
/// not persisted reads as its old bytes, zeros in a zero-written window.
/// Any device's atomic write unit is a multiple of it.
pub const ZERO_RUN_SECTOR_BYTES: u64 = 512;
/// File name suffix of segment files.
pub const SEGMENT_SUFFIX: &str = ".vseg";
/// Digits of the index in a segment file name.
const SEGMENT_NAME_DIGITS: usize = 20;

/// The first 64 bytes of every segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub cluster: u128,
    pub segment_index: u64,
    /// [`SEGMENT_VERSION_V1`] or [`SEGMENT_VERSION`].
    pub version: u16,
}

impl SegmentHeader {
    /// The header of a new segment, in the version this code writes.
    pub fn new(cluster: u128, segment_index: u64) -> SegmentHeader {
        SegmentHeader {
            cluster,
            segment_index,
            version: SEGMENT_VERSION,
        }
    }

    /// Whether the segment may hold a zero-written window after its last
    /// record (version 2 and later).
    pub fn preallocated(&self) -> bool {
        self.version >= 2
    }

    /// `[checksum: 32][magic][version u16][reserved u16][cluster u128][segment_index u64]`.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[32..36].copy_from_slice(&SEGMENT_MAGIC);
        out[36..38].copy_from_slice(&self.version.to_le_bytes());
        out[40..56].copy_from_slice(&self.cluster.to_le_bytes());
        out[56..64].copy_from_slice(&self.segment_index.to_le_bytes());
        let checksum = sha256(&[&out[32..]]);
        out[0..32].copy_from_slice(&checksum);
        out
    }

    /// Decodes and checks magic, checksum, version and reserved bytes.
    pub fn decode(bytes: &[u8; SEGMENT_HEADER_BYTES]) -> Result<SegmentHeader, DecodeError> {
        const FORMAT: &str = "segment header";
        if bytes[32..36] != SEGMENT_MAGIC {
            return Err(DecodeError::at_byte(FORMAT, 32, "bad magic"));
        }
        if sha256(&[&bytes[32..]])[..] != bytes[0..32] {
            return Err(DecodeError::at_byte(FORMAT, 0, "header checksum mismatch"));
        }
        let version = u16::from_le_bytes([bytes[36], bytes[37]]);
        if version != SEGMENT_VERSION && version != SEGMENT_VERSION_V1 {
            return Err(DecodeError::at_byte(
                FORMAT,
                36,
                format!("unsupported version {version}"),
            ));
        }
        if bytes[38..40] != [0, 0] {
            return Err(DecodeError::at_byte(
                FORMAT,
                38,
                "reserved bytes are not zero",
            ));
        }
        let mut cluster = [0u8; 16];
        cluster.copy_from_slice(&bytes[40..56]);
        let mut index = [0u8; 8];
        index.copy_from_slice(&bytes[56..64]);
        Ok(SegmentHeader {
            cluster: u128::from_le_bytes(cluster),
            segment_index: u64::from_le_bytes(index),
            version,
        })
    }
}

/// `<index as 20 digits>.vseg`.
pub fn segment_file_name(index: u64) -> String {
    format!(
        "{index:0width$}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// The index in a segment file name, if the name is exactly one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// One valid record found by the scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedRecord {
    /// File offset of the record's header.
    pub offset: u64,
    pub header: OpHeader,
    /// Where the body lies in the scanned bytes.
    pub body_range: Range<usize>,
}

impl ScannedRecord {
    /// Header plus body length.
    pub fn encoded_len(&self) -> u64 {
        (HEADER_BYTES + self.body_range.len()) as u64
    }
}

/// How a segment's bytes end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentEnd {
    /// Ends with a valid Seal at `seal_offset`, nothing after it.
    Sealed { seal_offset: u64 },
    /// Clean end of an unsealed segment: the last record ends at end of file.
    Open,
    /// From `offset` to the end (`bytes` long) lies an incomplete write: no
    /// valid record header starts anywhere after `offset`.
    TornTail { offset: u64, bytes: u64 },
    /// Damage at `offset` that is not a torn tail; never repaired.
    Corrupt { offset: u64, reason: String },
}

/// The result of scanning one segment: the valid records before `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    pub records: Vec<ScannedRecord>,
    pub end: SegmentEnd,
    /// Damaged Op records stepped over (a tolerant scan only; else empty).
    pub damaged: Vec<DamagedOp>,
    /// The segment header's version (0 when the header is unreadable).
    pub version: u16,
    /// Zero bytes after the last record of a version 2 segment (its
    /// preallocated window), when it ends `Open` or (last segment only)
    /// `Sealed`; 0 otherwise.
    pub window: u64,
}

/// An Op record a tolerant scan found damaged below the tail: a valid
/// record follows it, and its place in the chain is known, so a peer's copy
/// can be checked against `checksum` and written back over exactly these
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedOp {
    /// File offset of the damaged record.
    pub offset: u64,
    /// Its length in the file (header plus body).
    pub len: u64,
    /// Its op number.
    pub op: u64,
    /// The checksum its header must have: its own when the header is
    /// readable (only the body is damaged), else the `parent` of the record
    /// after it.
    pub checksum: Hash,
    /// Its header, when readable.
    pub header: Option<OpHeader>,
    /// What is wrong with it.
    pub reason: String,
}

/// What the hash chain rules need to remember about the ops seen so far.
#[derive(Debug, Clone)]
pub struct Chain {
    cluster: u128,
    /// True when every op before the next one is known (scan from genesis).
    complete: bool,
    /// Op number of `ops[0]`.
    base_op: u64,
    /// (header checksum, tree size) of each op seen, from `base_op` on.
    ops: Vec<(Hash, u64)>,
    tip: ChainTip,
}

/// The last op of the chain so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainTip {
    /// 0 before op 1.
    pub last_op: u64,
    /// Checksum of the last Op header (genesis parent before op 1).
    pub last_op_checksum: Hash,
    /// Merkle tree size after the last op.
    pub tree_size: u64,
}

impl ChainTip {
    /// The chain rules of the Op that follows this tip: the next op number,
    /// the parent is this tip's header checksum, and its events start at
    /// this tip's tree size. The one statement of the chain rules for ops,
    /// used by the scanner and by storage when it accepts a write.
    pub fn check_next_op(&self, header: &OpHeader) -> Result<(), String> {
        if header.op != self.last_op + 1 {
            return Err(format!(
                "op {} follows op {} (not consecutive)",
                header.op, self.last_op
            ));
        }
        if header.parent != self.last_op_checksum {
            return Err(format!(
                "op {} parent is not the checksum of op {}",
                header.op, self.last_op
            ));
        }
        if header.global_position != self.tree_size {
            return Err(format!(
                "op {} global position {} is not the tree size {} after op {}",
                header.op, header.global_position, self.tree_size, self.last_op
            ));
        }
        Ok(())
    }

    /// The chain rule of a Certificate record after this tip: it certifies
    /// an op already in the log (1 to `last_op`).
    pub fn check_certified_op(&self, header: &OpHeader) -> Result<(), String> {
        if header.op == 0 {
            return Err("certificate of op 0".to_string());
        }
        if header.op > self.last_op {
            return Err(format!(
                "certificate of op {} not yet in the log",
                header.op
            ));
        }
        Ok(())
    }
}

impl Chain {
    /// The chain before op 1 of `cluster`: every rule is checked.
    pub fn genesis(cluster: u128) -> Chain {
        Chain {
            cluster,
            complete: true,
            base_op: 1,
            ops: Vec::new(),
            tip: ChainTip {
                last_op: 0,
                last_op_checksum: genesis_parent(cluster),
                tree_size: 0,
            },
        }
    }

    /// A chain entered in the middle (a lone segment): links to ops before
    /// the first one seen cannot be checked and are taken on trust.
    pub fn unknown(cluster: u128) -> Chain {
        Chain {
            complete: false,
            ..Chain::genesis(cluster)
        }
    }

    /// The chain after a known op (`tip`, e.g. the op a kept certificate's
    /// signed chain head names): the next op must link to it, and a
    /// certificate of an op before it is taken on trust (not read).
    pub fn after(cluster: u128, tip: ChainTip) -> Chain {
        Chain {
            cluster,
            complete: false,
            base_op: tip.last_op,
            ops: vec![(tip.last_op_checksum, tip.tree_size)],
            tip,
        }
    }

    /// The last op seen.
    pub fn tip(&self) -> ChainTip {
        self.tip
    }

    /// True when `tip()` is known (from genesis, or an op was seen).
    fn tip_known(&self) -> bool {
        self.complete || !self.ops.is_empty()
    }

    /// Checks an Op or Certificate header against the chain, then extends
    /// the chain with it. Seals are checked by the segment scanner.
    pub fn check_and_push(&mut self, header: &OpHeader) -> Result<(), String> {
        if header.cluster != self.cluster {
            return Err(format!(
                "cluster {:#x} is not {:#x}",
                header.cluster, self.cluster
            ));
        }
        match header.kind {
            RecordKind::Op => self.push_op(header),
            RecordKind::Certificate => self.check_certificate(header),
            RecordKind::Seal => Ok(()),
        }
    }

    fn push_op(&mut self, header: &OpHeader) -> Result<(), String> {
        if self.tip_known() {
            self.tip.check_next_op(header)?;
        } else {
            self.base_op = header.op;
        }
        let checksum = header.checksum();
        self.ops.push((checksum, header.tree_size));
        self.tip = ChainTip {
            last_op: header.op,
            last_op_checksum: checksum,
            tree_size: header.tree_size,
        };
        Ok(())
    }

    /// Extends the chain with an op whose header is unreadable but whose
    /// checksum and tree size the record after it names.
    fn push_inferred(&mut self, op: u64, checksum: Hash, tree_size: u64) {
        self.ops.push((checksum, tree_size));
        self.tip = ChainTip {
            last_op: op,
            last_op_checksum: checksum,
            tree_size,
        };
    }

    fn check_certificate(&self, header: &OpHeader) -> Result<(), String> {
        if header.op == 0 {
            return Err("certificate of op 0".to_string());
        }
        if self.tip_known() {
            self.tip.check_certified_op(header)?;
        }
        if header.op < self.base_op || !self.tip_known() {
            assert!(!self.complete, "a complete chain starts at op 1");
            // Before the first op seen by a partial scan: nothing to check it against.
            return Ok(());
        }
        let index = usize::try_from(header.op - self.base_op).expect("op index fits in memory");
        let (checksum, tree_size) = self.ops[index];
        if header.parent != checksum {
            return Err(format!(
                "certificate parent is not the checksum of op {}",
                header.op
            ));
        }
        if header.tree_size != tree_size {
            return Err(format!(
                "certificate tree size {} is not op {}'s tree size {tree_size}",
                header.tree_size, header.op
            ));
        }
        Ok(())
    }

    /// Checks a Seal header against the chain tip.
    fn check_seal(&self, header: &OpHeader) -> Result<(), String> {
        if header.cluster != self.cluster {
            return Err(format!(
                "cluster {:#x} is not {:#x}",
                header.cluster, self.cluster
            ));
        }
        if !self.tip_known() {
            return Ok(());
        }
        let tip = self.tip;
        if header.op != tip.last_op
            || header.parent != tip.last_op_checksum
            || header.tree_size != tip.tree_size
        {
            return Err(format!(
                "seal (op {}, tree size {}) does not match the last op {} (tree size {})",
                header.op, header.tree_size, tip.last_op, tip.tree_size
            ));
        }
        Ok(())
    }
}

/// Scans one segment's bytes on their own. Links to ops in earlier segments
/// are checked only for segment 0 (which starts at genesis); use
/// [`scan_segment_with`] to carry a chain across segments. The segment is
/// judged as a log's last one (see [`ScanRules::last`]).
pub fn scan_segment(bytes: &[u8], expected_index: u64, cluster: u128) -> SegmentScan {
    let mut chain = if expected_index == 0 {
        Chain::genesis(cluster)
    } else {
        Chain::unknown(cluster)
    };
    scan_segment_with(bytes, expected_index, cluster, &mut chain)
}

/// Scans one segment's bytes, continuing `chain` (which is extended by each
/// valid record and left at the last one). Judged as a log's last segment.
pub fn scan_segment_with(
    bytes: &[u8],
    expected_index: u64,
    cluster: u128,
    chain: &mut Chain,
) -> SegmentScan {
    scan_segment_inner(bytes, expected_index, cluster, chain, ScanRules::LAST)
}

/// What a scan of one segment may accept beyond the rules every segment
/// keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanRules {
    /// Step over a damaged Op record below the tail whose place in the
    /// chain is known, and report it (a replica of a cluster).
    pub tolerate_damaged_ops: bool,
    /// The log's last segment, the only one written since the last crash.
    /// A version 2 last segment may keep its zero window after its Seal (a
    /// trim not yet durable), and the torn-hole rule applies to it.
    pub last: bool,
    /// Apply the torn-hole rule to a version 2 last segment (see
    /// [`hole_is_torn`]). Off: a hole before a valid record is damage, as in
    /// version 1 (a replica of a cluster rescans so when the hole would cut
    /// below what its index saw durable, to repair the op from peers).
    pub torn_holes: bool,
}

impl ScanRules {
    /// The rules of a log's last segment.
    pub const LAST: ScanRules = ScanRules {
        tolerate_damaged_ops: false,
        last: true,
        torn_holes: true,
    };
    /// The rules of a segment that is not the log's last.
    pub const NOT_LAST: ScanRules = ScanRules {
        tolerate_damaged_ops: false,
        last: false,
        torn_holes: false,
    };
}

/// Where a scan of a segment starts: the segment header's end, or (for a
/// scan that resumes after a record found by [`locate_op`]) the byte after
/// that record, with the records and ops of the segment before it (the
/// seal counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// File offset of the first record to scan.
    pub offset: u64,
    /// Records (Ops and Certificates) of the segment before `offset`.
    pub records: u64,
    /// Op records of the segment before `offset`.
    pub ops: u64,
}

impl Resume {
    /// The start of a segment: the first record after its header.
    pub const START: Resume = Resume {
        offset: SEGMENT_HEADER_BYTES as u64,
        records: 0,
        ops: 0,
    };
}

/// [`scan_segment_with`] from `resume` instead of the first record: the
/// segment header is still checked; the records before `resume.offset`
/// are neither read nor checked (the returned records start there).
/// `is_last`: the segment is the log's last ([`ScanRules::last`]).
pub fn scan_segment_from(
    bytes: &[u8],
    expected_index: u64,
    cluster: u128,
    chain: &mut Chain,
    resume: Resume,
    is_last: bool,
) -> SegmentScan {
    let rules = if is_last {
        ScanRules::LAST
    } else {
        ScanRules::NOT_LAST
    };
    scan_segment_rules(bytes, expected_index, cluster, chain, resume, rules)
}

/// One segment's bytes under `rules`, from `resume`, continuing `chain`.
pub fn scan_segment_rules(
    bytes: &[u8],
    expected_index: u64,
    cluster: u128,
    chain: &mut Chain,
    resume: Resume,
    rules: ScanRules,
) -> SegmentScan {
    let mut scan = SegmentScan {
        records: Vec::new(),
        end: SegmentEnd::Open,
        damaged: Vec::new(),
        version: 0,
        window: 0,
    };
    let version = match check_segment_header(bytes, expected_index, cluster) {
        Ok(header) => header.version,
        Err(invalid) => {
            scan.end = classify(bytes, 0, invalid);
            return scan;
        }
    };
    scan.version = version;
    let mut scanner = Scanner {
        bytes,
        rules,
        preallocated: version >= 2,
        chain,
        records: &mut scan.records,
        damaged: rules.tolerate_damaged_ops.then_some(&mut scan.damaged),
    };
    let (end, window) = scanner.run(resume);
    scan.end = end;
    scan.window = window;
    scan
}

fn scan_segment_inner(
    bytes: &[u8],
    expected_index: u64,
    cluster: u128,
    chain: &mut Chain,
    rules: ScanRules,
) -> SegmentScan {
    scan_segment_rules(bytes, expected_index, cluster, chain, Resume::START, rules)
}

/// Why a record at some offset is not accepted.
enum Invalid {
    /// Checksums or framing fail: a torn write or damage, decided by what follows.
    Unreadable(String),
    /// Checksums hold but a rule fails: damage (or a writer bug), never torn.
    Broken(String),
    /// A valid header whose body runs past the end of the file.
    Truncated,
}

/// The records of one segment after its header.
struct Scanner<'a> {
    bytes: &'a [u8],
    rules: ScanRules,
    /// Version 2: zeros after the last record are the preallocated window.
    preallocated: bool,
    chain: &'a mut Chain,
    records: &'a mut Vec<ScannedRecord>,
    damaged: Option<&'a mut Vec<DamagedOp>>,
}

impl Scanner<'_> {
    /// How the segment ends, and the zero bytes after its last record
    /// (the window of a version 2 segment; 0 otherwise).
    fn run(&mut self, resume: Resume) -> (SegmentEnd, u64) {
        let bytes = self.bytes;
        let Some(mut pos) = usize::try_from(resume.offset)
            .ok()
            .filter(|&p| p >= SEGMENT_HEADER_BYTES && p <= bytes.len())
        else {
            let reason = format!("resume offset beyond the file ({} bytes)", bytes.len());
            let end = SegmentEnd::Corrupt {
                offset: resume.offset,
                reason,
            };
            return (end, 0);
        };
        let mut op_count = resume.ops;
        while pos < bytes.len() {
            let record = match read_record(bytes, pos) {
                Ok(record) => record,
                // Version 2: zeros to the end are the window, not a record.
                Err(_) if self.preallocated && all_zero(&bytes[pos..]) => {
                    return (SegmentEnd::Open, (bytes.len() - pos) as u64);
                }
                Err(invalid) => match self.invalid_at(pos, invalid) {
                    Ok(len) => {
                        pos += len;
                        op_count += 1;
                        continue;
                    }
                    Err(end) => return (end, 0),
                },
            };
            let header = record.header;
            let body = &bytes[record.body_range.clone()];
            let stepped_over = self.damaged.as_ref().map_or(0, |d| d.len());
            let record_count = resume.records as usize + self.records.len() + stepped_over;
            let checked = if header.kind == RecordKind::Seal {
                check_seal(self.chain, &header, body, record_count as u64, op_count)
            } else {
                check_body(&header, body, record.body_range.start as u64)
                    .and_then(|()| self.chain.check_and_push(&header))
            };
            if let Err(reason) = checked {
                let offset = pos as u64;
                return (SegmentEnd::Corrupt { offset, reason }, 0);
            }
            op_count += u64::from(header.kind == RecordKind::Op);
            let record_end = record.body_range.end;
            self.records.push(record);
            if header.kind == RecordKind::Seal {
                return self.after_seal(pos, record_end);
            }
            pos = record_end;
        }
        (SegmentEnd::Open, 0)
    }

    /// The end after a Seal at `pos`: nothing may follow it, except the
    /// zero window of a version 2 last segment whose trim is not durable.
    fn after_seal(&self, pos: usize, record_end: usize) -> (SegmentEnd, u64) {
        let after = &self.bytes[record_end..];
        let sealed = SegmentEnd::Sealed {
            seal_offset: pos as u64,
        };
        if after.is_empty() {
            return (sealed, 0);
        }
        if self.preallocated && self.rules.last && all_zero(after) {
            return (sealed, after.len() as u64);
        }
        let reason = format!("{} bytes after the seal", after.len());
        let offset = record_end as u64;
        (SegmentEnd::Corrupt { offset, reason }, 0)
    }

    /// An invalid record at `pos`: Ok(its length) when a tolerant scan
    /// steps over it as a damaged op, else how the segment ends there.
    fn invalid_at(&mut self, pos: usize, invalid: Invalid) -> Result<usize, SegmentEnd> {
        let Invalid::Unreadable(reason) = invalid else {
            return Err(classify(self.bytes, pos, invalid));
        };
        let holes = self.preallocated && self.rules.last && self.rules.torn_holes;
        if holes && hole_is_torn(self.bytes, pos, self.chain.tip()) {
            return Err(SegmentEnd::TornTail {
                offset: pos as u64,
                bytes: (self.bytes.len() - pos) as u64,
            });
        }
        if let Some(damaged) = self.damaged.as_mut()
            && let Some(op) = damaged_op(self.bytes, pos, self.chain, reason.clone())
        {
            let len = usize::try_from(op.len).expect("within the file");
            damaged.push(op);
            return Ok(len);
        }
        Err(classify(self.bytes, pos, Invalid::Unreadable(reason)))
    }
}

fn all_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// The torn-hole rule of a version 2 last segment, for an unreadable
/// record at `pos` (the first one after the last valid record) with bytes
/// after it. Its pages were written into the zero-written window; power
/// loss may persist the pages of an unsynced write in any order, so a
/// sector that never reached the disk reads as zeros from where the
/// synced data ended (at or before `pos`) to the sector's end, while later
/// sectors may hold whole records. The bytes from `pos` are a torn tail
/// when:
///
/// 1. some 512-byte sector that overlaps the record reads as zeros from
///    `pos` (or the sector's start, if later) to its end (or the file's).
///    The record's extent is its header and body when the header is whole,
///    else its header. A flipped or zeroed byte inside synced data leaves
///    no such run: records never hold a sector of zeros, and their first
///    bytes are a SHA-256 checksum; and
/// 2. no readable record after it proves the hole durable: a Certificate
///    of an op after the last valid one (`tip`) is written only once that
///    op was fdatasync'ed (a replica of a cluster that wrote both in one
///    batch rescans without this rule and repairs the op from peers).
///
/// Storage then cuts the tail only under its floors (the audit index's
/// certified op and durable certificate), as for any torn tail.
pub fn hole_is_torn(bytes: &[u8], pos: usize, tip: ChainTip) -> bool {
    let header_end = (pos + HEADER_BYTES).min(bytes.len());
    let extent_end = bytes
        .get(pos..pos + HEADER_BYTES)
        .and_then(|b| OpHeader::decode(b.try_into().expect("HEADER_BYTES"), pos as u64).ok())
        .map_or(header_end, |header| {
            (pos + HEADER_BYTES + header.body_size as usize).min(bytes.len())
        });
    let sector = ZERO_RUN_SECTOR_BYTES as usize;
    let mut start = pos;
    let zero_run = loop {
        if start >= extent_end {
            break false;
        }
        let sector_end = ((start / sector + 1) * sector).min(bytes.len());
        if all_zero(&bytes[start..sector_end]) {
            break true;
        }
        start = sector_end;
    };
    zero_run && !durable_after(bytes, pos, tip)
}

/// Whether a readable Certificate record after `pos` certifies an op after
/// `tip` (so that op, at or after `pos`, was durable).
fn durable_after(bytes: &[u8], pos: usize, tip: ChainTip) -> bool {
    let mut at = pos;
    while let Some(next) = find_valid_header_after(bytes, at) {
        let header = OpHeader::decode(
            bytes[next..next + HEADER_BYTES]
                .try_into()
                .expect("HEADER_BYTES"),
            next as u64,
        )
        .expect("find_valid_header_after returns decodable headers");
        if header.kind == RecordKind::Certificate && header.op > tip.last_op {
            return true;
        }
        at = next;
    }
    false
}

fn check_segment_header(
    bytes: &[u8],
    expected_index: u64,
    cluster: u128,
) -> Result<SegmentHeader, Invalid> {
    let header_bytes: &[u8; SEGMENT_HEADER_BYTES] = bytes
        .get(..SEGMENT_HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Invalid::Unreadable("file shorter than the segment header".to_string()))?;
    let header =
        SegmentHeader::decode(header_bytes).map_err(|e| Invalid::Unreadable(e.to_string()))?;
    if header.segment_index != expected_index {
        return Err(Invalid::Broken(format!(
            "segment header says index {}, file name says {expected_index}",
            header.segment_index
        )));
    }
    if header.cluster != cluster {
        return Err(Invalid::Broken(format!(
            "segment of cluster {:#x}, expected {cluster:#x}",
            header.cluster
        )));
    }
    Ok(header)
}

/// Decodes the record at `pos` and checks its body checksum.
fn read_record(bytes: &[u8], pos: usize) -> Result<ScannedRecord, Invalid> {
    let header_bytes: &[u8; HEADER_BYTES] = bytes
        .get(pos..pos + HEADER_BYTES)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Invalid::Unreadable("file ends inside a record header".to_string()))?;
    let header = OpHeader::decode(header_bytes, pos as u64)
        .map_err(|e| Invalid::Unreadable(e.to_string()))?;
    let body_start = pos + HEADER_BYTES;
    let body_end = body_start + header.body_size as usize;
    let body = bytes.get(body_start..body_end).ok_or(Invalid::Truncated)?;
    if sha256(&[body]) != header.body_checksum {
        return Err(Invalid::Unreadable("body checksum mismatch".to_string()));
    }
    Ok(ScannedRecord {
        offset: pos as u64,
        header,
        body_range: body_start..body_end,
    })
}

/// The damaged Op record at `pos`, if a valid record follows it (so it is
/// not a torn tail) and its place in the chain is known: from its own
/// header when only the body is damaged, else from the record right after
/// it (the next op's `parent`, or a Certificate or Seal naming it). On
/// success the chain is extended with it. `None`: not an op this scan can
/// place (the caller reports the damage as before).
fn damaged_op(bytes: &[u8], pos: usize, chain: &mut Chain, reason: String) -> Option<DamagedOp> {
    let next = find_valid_header_after(bytes, pos)?;
    let tip = chain.tip();
    if !chain.tip_known() {
        return None;
    }
    let own = bytes
        .get(pos..pos + HEADER_BYTES)
        .and_then(|b| OpHeader::decode(b.try_into().expect("HEADER_BYTES"), pos as u64).ok());
    if let Some(header) = own {
        let end = pos + HEADER_BYTES + header.body_size as usize;
        if header.kind != RecordKind::Op || end > next || chain.check_and_push(&header).is_err() {
            return None;
        }
        return Some(DamagedOp {
            offset: pos as u64,
            len: (end - pos) as u64,
            op: header.op,
            checksum: header.checksum(),
            header: Some(header),
            reason,
        });
    }
    let after = OpHeader::decode(
        bytes[next..next + HEADER_BYTES]
            .try_into()
            .expect("HEADER_BYTES"),
        next as u64,
    )
    .ok()?;
    let op = tip.last_op + 1;
    let (checksum, tree_size) = match after.kind {
        RecordKind::Op if after.op == op + 1 => (after.parent, after.global_position),
        RecordKind::Certificate | RecordKind::Seal if after.op == op => {
            (after.parent, after.tree_size)
        }
        _ => return None,
    };
    if tree_size < tip.tree_size {
        return None;
    }
    chain.push_inferred(op, checksum, tree_size);
    Some(DamagedOp {
        offset: pos as u64,
        len: (next - pos) as u64,
        op,
        checksum,
        header: None,
        reason,
    })
}

/// Decides whether an invalid record at `offset` is a torn tail or corruption.
fn classify(bytes: &[u8], offset: usize, invalid: Invalid) -> SegmentEnd {
    let torn = SegmentEnd::TornTail {
        offset: offset as u64,
        bytes: (bytes.len() - offset) as u64,
    };
    match invalid {
        Invalid::Broken(reason) => SegmentEnd::Corrupt {
            offset: offset as u64,
            reason,
        },
        Invalid::Truncated => torn,
        Invalid::Unreadable(reason) => match find_valid_header_after(bytes, offset) {
            None => torn,
            Some(later) => SegmentEnd::Corrupt {
                offset: offset as u64,
                reason: format!("{reason}, but a valid record follows at byte {later}"),
            },
        },
    }
}

/// The first offset after `offset` where a valid record header starts.
fn find_valid_header_after(bytes: &[u8], offset: usize) -> Option<usize> {
    let last_start = bytes.len().checked_sub(HEADER_BYTES)?;
    (offset + 1..=last_start).find(|&start| {
        bytes[start + MAGIC_OFFSET..start + MAGIC_OFFSET + MAGIC.len()] == MAGIC
            && OpHeader::decode(
                bytes[start..start + HEADER_BYTES]
                    .try_into()
                    .expect("slice of HEADER_BYTES"),
                start as u64,
            )
            .is_ok()
    })
}

/// Checks the body of an Op or Certificate (its checksum already holds).
fn check_body(header: &OpHeader, body: &[u8], at: u64) -> Result<(), String> {
    match header.kind {
        RecordKind::Op => decode_events(body, header.event_count, at)
            .map(|_| ())
            .map_err(|e| e.to_string()),
        RecordKind::Certificate => std::str::from_utf8(body)
            .map(|_| ())
            .map_err(|e| format!("certificate body is not utf-8: {e}")),
        RecordKind::Seal => unreachable!("seals are checked by check_seal"),
    }
}

fn check_seal(
    chain: &Chain,
    header: &OpHeader,
    body: &[u8],
    record_count: u64,
    op_count: u64,
) -> Result<(), String> {
    chain.check_seal(header)?;
    let seal = SealBody::decode(body, 0).map_err(|e| e.reason)?;
    if seal.record_count != record_count || seal.op_count != op_count {
        return Err(format!(
            "seal counts {} records and {} ops, the segment holds {record_count} and {op_count}",
            seal.record_count, seal.op_count
        ));
    }
    if record_count == 0 {
        return Err("seal of an empty segment".to_string());
    }
    Ok(())
}

/// Why a log directory could not be scanned.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: corrupt at byte {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// One segment file of a scanned log.
#[derive(Debug, Clone)]
pub struct ScannedSegment {
    pub index: u64,
    pub path: PathBuf,
    pub file_len: u64,
    pub scan: SegmentScan,
}

/// A whole log directory, checked: only the last segment may be unsealed or
/// end in a torn tail.
#[derive(Debug, Clone)]
pub struct LogScan {
    pub segments: Vec<ScannedSegment>,
    /// The chain after the last valid record.
    pub chain: ChainTip,
}

impl LogScan {
    /// The torn tail of the last segment, if any: (file, offset, bytes).
    pub fn torn_tail(&self) -> Option<(&Path, u64, u64)> {
        let last = self.segments.last()?;
        match last.scan.end {
            SegmentEnd::TornTail { offset, bytes } => Some((&last.path, offset, bytes)),
            _ => None,
        }
    }

    /// Number of valid records in the whole log.
    pub fn record_count(&self) -> usize {
        self.segments.iter().map(|s| s.scan.records.len()).sum()
    }
}

impl fmt::Display for LogScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} segments, {} records, last op {}",
            self.segments.len(),
            self.record_count(),
            self.chain.last_op
        )
    }
}

/// Reads and checks every segment of `dir` in index order. Errors name the
/// file and byte offset. Reads files, never writes.
pub fn scan_log_dir(dir: &Path, cluster: u128) -> Result<LogScan, ScanError> {
    scan_log_dir_rules(dir, cluster, ScanRules::LAST)
}

/// Like [`scan_log_dir`], but a damaged Op record below the tail whose
/// place in the chain is known is stepped over and reported in its
/// segment's `damaged` list instead of failing the scan (every other damage
/// still fails it). For a replica of a cluster, which repairs such an op
/// from its peers; `vellum verify` never tolerates damage.
pub fn scan_log_dir_tolerant(dir: &Path, cluster: u128) -> Result<LogScan, ScanError> {
    let rules = ScanRules {
        tolerate_damaged_ops: true,
        ..ScanRules::LAST
    };
    scan_log_dir_rules(dir, cluster, rules)
}

/// Scans `dir` under `rules` (`rules.last` is ignored: only the directory's
/// last segment is scanned as the last).
pub fn scan_log_dir_rules(
    dir: &Path,
    cluster: u128,
    rules: ScanRules,
) -> Result<LogScan, ScanError> {
    let indexes = list_segments(dir)?;
    let mut chain = Chain::genesis(cluster);
    let mut segments = Vec::with_capacity(indexes.len());
    let count = indexes.len();
    for (position, index) in indexes.into_iter().enumerate() {
        let path = dir.join(segment_file_name(index));
        let bytes = std::fs::read(&path).map_err(|source| ScanError::Io {
            path: path.clone(),
            source,
        })?;
        let is_last = position + 1 == count;
        let rules = ScanRules {
            last: is_last,
            torn_holes: rules.torn_holes && is_last,
            ..rules
        };
        let scan = scan_segment_inner(&bytes, index, cluster, &mut chain, rules);
        let corrupt = |offset: u64, reason: String| ScanError::Corrupt {
            file: path.clone(),
            offset,
            reason,
        };
        match &scan.end {
            SegmentEnd::Corrupt { offset, reason } => return Err(corrupt(*offset, reason.clone())),
            SegmentEnd::TornTail { offset, bytes } if !is_last => {
                return Err(corrupt(
                    *offset,
                    format!(
                        "{bytes} unreadable bytes at the end of a segment that is not the last"
                    ),
                ));
            }
            SegmentEnd::Open if !is_last => {
                return Err(corrupt(
                    bytes.len() as u64,
                    "segment is not sealed but is not the last".to_string(),
                ));
            }
            _ => {}
        }
        segments.push(ScannedSegment {
            index,
            path,
            file_len: bytes.len() as u64,
            scan,
        });
    }
    Ok(LogScan {
        segments,
        chain: chain.tip(),
    })
}

/// Segment indexes of `dir`, checked to run 0, 1, 2, ... without a gap.
pub fn list_segments(dir: &Path) -> Result<Vec<u64>, ScanError> {
    let io = |source| ScanError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut indexes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        let name = name.to_string_lossy();
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let index = parse_segment_file_name(&name).ok_or_else(|| ScanError::Corrupt {
            file: dir.join(name.as_ref()),
            offset: 0,
            reason: "not a segment file name (20 digits then .vseg)".to_string(),
        })?;
        indexes.push(index);
    }
    indexes.sort_unstable();
    for (expected, index) in indexes.iter().enumerate() {
        if *index != expected as u64 {
            return Err(ScanError::Corrupt {
                file: dir.join(segment_file_name(expected as u64)),
                offset: 0,
                reason: format!("segment {expected} is missing (next present is {index})"),
            });
        }
    }
    Ok(indexes)
}
