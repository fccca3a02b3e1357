//! Opening a log after a clean shutdown or a crash.
//!
//! The audit scanner decides what is on disk (the same rules `vellum verify`
//! applies). Only one thing is ever changed: a torn tail of the last segment,
//! an unsynced write that did not finish, is cut off (ftruncate + fsync) and
//! reported. Any other damage fails the open with the file and byte offset;
//! nothing is repaired. Two guards keep even that cut honest: a durable op
//! floor (ops the caller knows were certified) fails the open instead of
//! cutting them, and a read-only open reports a torn tail without cutting it
//! and creates, writes and syncs nothing.
//!
//! A replica of a cluster (`tolerate_damaged_ops`) may also find a damaged
//! Op record below the tail: it is reported, not fatal, and the log repairs
//! it from peers with [`restore_record`], which writes the peer's copy (the
//! exact original bytes, checked against the checksum the chain names) over
//! the damaged bytes in place.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vellum_audit::hash::Hash;
use vellum_audit::record::{OpHeader, Record, RecordKind};
use vellum_audit::segment::{
    LogScan, ScanRules, ScannedSegment, SegmentEnd, SegmentHeader, scan_log_dir_rules,
    segment_file_name,
};

use super::writer::Current;
use super::{
    RecordLocation, Recovery, SegmentFile, SegmentFs, StorageConfig, StorageError, Tail, TornTail,
};

/// Everything `Storage::open_with` needs to start the writer.
pub(super) struct Recovered {
    pub recovery: Recovery,
    pub tail: Tail,
    /// The segment the writer appends to; None when read-only (no writer).
    pub current: Option<Current>,
    pub files: BTreeMap<u64, Arc<dyn SegmentFile>>,
    pub syncs: u64,
    pub segments_created: u64,
}

pub(super) fn recover(
    segments_dir: &Path,
    cluster: u128,
    fs: &dyn SegmentFs,
    config: &StorageConfig,
) -> Result<Recovered, StorageError> {
    let scan = scan_checked(segments_dir, cluster, config)?;
    let damaged = damaged_records(&scan);
    let torn_tail = if config.read_only {
        report_torn_tail(&scan)
    } else {
        trim_sealed_window(&scan)?;
        cut_torn_tail(&scan)?
    };
    let records = recovered_records(&scan);
    let view = records.last().map_or(0, |(_, header)| header.view);
    let (tail, current, syncs, created) = if config.read_only {
        (read_only_tail(&scan, view), None, 0, 0)
    } else {
        let (tail, current, syncs, created) = open_tail(&scan, cluster, fs, view, config)?;
        (tail, Some(current), syncs, created)
    };
    let segments = if config.read_only {
        scan.segments.len() as u64
    } else {
        tail.segment + 1
    };
    let mut files = BTreeMap::new();
    if let Some(current) = &current {
        files.insert(current.index, Arc::clone(&current.file));
    }
    Ok(Recovered {
        recovery: Recovery {
            records,
            torn_tail,
            segments,
            chain: scan.chain,
            damaged,
        },
        tail,
        current,
        files,
        syncs,
        segments_created: created,
    })
}

/// Scans the log and checks the floors before anything is changed. The
/// torn-hole rule of a version 2 last segment applies; when the tail it
/// finds would cut below a floor, a replica of a cluster scans again
/// without it, so the hole is a damaged op below the tail (repaired from
/// peers) where its place in the chain is known, and a lone replica fails
/// naming file and byte.
fn scan_checked(
    segments_dir: &Path,
    cluster: u128,
    config: &StorageConfig,
) -> Result<LogScan, StorageError> {
    let rules = |torn_holes: bool| ScanRules {
        tolerate_damaged_ops: config.tolerate_damaged_ops,
        last: true,
        torn_holes,
    };
    let scan = scan_log_dir_rules(segments_dir, cluster, rules(true))?;
    let checked = check_floor(&scan, segments_dir, config.durable_op_floor)
        .and_then(|()| check_certificate_floor(&scan, config.durable_certificate_floor));
    match checked {
        Ok(()) => Ok(scan),
        Err(error) if config.tolerate_damaged_ops && scan.torn_tail().is_some() => {
            tracing::warn!(%error, "a torn tail would cut below what the index saw durable; scanning for damaged ops instead");
            let scan = scan_log_dir_rules(segments_dir, cluster, rules(false))?;
            check_floor(&scan, segments_dir, config.durable_op_floor)?;
            check_certificate_floor(&scan, config.durable_certificate_floor)?;
            Ok(scan)
        }
        Err(error) => Err(error),
    }
}

/// Trims the zero window after the Seal of a sealed last segment (a crash
/// between writing the Seal and its fdatasync, which made the trim durable).
fn trim_sealed_window(scan: &LogScan) -> Result<(), StorageError> {
    let Some(last) = scan.segments.last() else {
        return Ok(());
    };
    if !matches!(last.scan.end, SegmentEnd::Sealed { .. }) || last.scan.window == 0 {
        return Ok(());
    }
    let len = last.file_len - last.scan.window;
    let io = |source| StorageError::Io {
        path: last.path.clone(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .open(&last.path)
        .map_err(io)?;
    file.set_len(len).map_err(io)?;
    file.sync_all().map_err(io)?;
    tracing::info!(file = %last.path.display(), len, "trimmed the zero window after the seal of the last segment");
    Ok(())
}

/// A damaged Op record below the tail, found by a tolerant open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedRecord {
    /// The segment file.
    pub file: PathBuf,
    /// Where the damaged bytes lie (`len` is what a repair must fill).
    pub location: RecordLocation,
    /// The op it holds.
    pub op: u64,
    /// The header checksum the op must have (its own readable header, or
    /// the `parent` of the record after it).
    pub checksum: Hash,
    /// Its header, when readable (only the body is damaged).
    pub header: Option<OpHeader>,
    /// What the scanner found wrong.
    pub reason: String,
}

/// Every damaged Op record of a tolerant scan, in log order, each reported.
fn damaged_records(scan: &LogScan) -> Vec<DamagedRecord> {
    let mut damaged = Vec::new();
    for segment in &scan.segments {
        for op in &segment.scan.damaged {
            let len = u32::try_from(op.len).expect("a record between two valid ones is bounded");
            tracing::warn!(file = %segment.path.display(), offset = op.offset, len, op = op.op, reason = %op.reason, "found a damaged op record below the tail; it will be repaired from peers");
            damaged.push(DamagedRecord {
                file: segment.path.clone(),
                location: RecordLocation {
                    segment: segment.index,
                    offset: op.offset,
                    len,
                },
                op: op.op,
                checksum: op.checksum,
                header: op.header,
                reason: op.reason.clone(),
            });
        }
    }
    damaged
}

/// Writes a peer's copy of a damaged op record over the damaged bytes, in
/// place, and `fdatasync`s the file. Refused (nothing written) unless the
/// record is exactly `damaged.len` bytes long and its header checksum is the
/// one the chain names, so the bytes written are the original ones: a crash
/// part-way leaves a record that is still damaged (repaired again on the
/// next open) or whole. The store must be closed (no writer on the file).
pub fn restore_record(
    segments_dir: &Path,
    damaged: &DamagedRecord,
    record: &Record,
) -> Result<(), StorageError> {
    restore_record_check(damaged, record)?;
    let path = segments_dir.join(segment_file_name(damaged.location.segment));
    let bytes = record.encode();
    let io = |source| StorageError::Io {
        path: path.clone(),
        source,
    };
    let file = OpenOptions::new().write(true).open(&path).map_err(io)?;
    file.write_all_at(&bytes, damaged.location.offset)
        .map_err(io)?;
    file.sync_data().map_err(io)?;
    tracing::warn!(file = %path.display(), offset = damaged.location.offset, len = bytes.len(), op = damaged.op, "repaired a damaged op record in place from a peer's copy");
    Ok(())
}

/// Whether `record` may be written over `damaged`: the same op, exactly
/// as long, with the header checksum the chain names (so, the original
/// bytes). Reads and writes nothing.
pub fn restore_record_check(damaged: &DamagedRecord, record: &Record) -> Result<(), StorageError> {
    let len = record.encoded_len();
    if record.checksum() == damaged.checksum
        && len == damaged.location.len as usize
        && record.header.op == damaged.op
    {
        return Ok(());
    }
    Err(StorageError::Rejected(format!(
        "{}: the copy of op {} ({len} bytes) is not the damaged record at byte {} \
         ({} bytes): another checksum or length",
        damaged.file.display(),
        damaged.op,
        damaged.location.offset,
        damaged.location.len
    )))
}

/// Every valid record of the scan, in log order, with its location.
fn recovered_records(scan: &LogScan) -> Vec<(RecordLocation, vellum_audit::record::OpHeader)> {
    let mut records = Vec::with_capacity(scan.record_count());
    for segment in &scan.segments {
        for record in &segment.scan.records {
            let len =
                u32::try_from(record.encoded_len()).expect("records are bounded by BODY_BYTES_MAX");
            records.push((
                RecordLocation {
                    segment: segment.index,
                    offset: record.offset,
                    len,
                },
                record.header,
            ));
        }
    }
    records
}

/// Fails when the valid log ends before op `floor`: the ops after its end
/// were certified, so what follows is damage, not an unfinished write, and
/// cutting it would silently lose acknowledged events. Checked before any
/// change, so a failed open leaves every byte as it was.
fn check_floor(scan: &LogScan, segments_dir: &Path, floor: u64) -> Result<(), StorageError> {
    let last_op = scan.chain.last_op;
    if last_op >= floor {
        return Ok(());
    }
    let (file, offset, damage) = match scan.torn_tail() {
        Some((path, offset, bytes)) => (
            path.to_path_buf(),
            offset,
            format!(" and the {bytes} unreadable bytes from here on are damage, not a torn write"),
        ),
        None => match scan.segments.last() {
            Some(last) => (
                last.path.clone(),
                last.file_len - last.scan.window,
                String::new(),
            ),
            None => (
                segments_dir.to_path_buf(),
                0,
                " (no segment files)".to_string(),
            ),
        },
    };
    Err(StorageError::Corrupt {
        file,
        offset,
        reason: format!(
            "ops up to {floor} were certified but the log ends at op {last_op}{damage}; \
             nothing was truncated"
        ),
    })
}

/// Fails when a torn tail would be cut although the records before it hold
/// no Certificate of op `floor` or later: that certificate's record was
/// durable, so the unreadable bytes at the end held a synced record and are
/// damage (a flipped bit, say), not an unfinished write. Checked before any
/// change, so a failed open leaves every byte as it was.
fn check_certificate_floor(scan: &LogScan, floor: u64) -> Result<(), StorageError> {
    let Some((path, offset, bytes)) = scan.torn_tail() else {
        return Ok(());
    };
    if floor == 0 {
        return Ok(());
    }
    let certified = scan
        .segments
        .iter()
        .flat_map(|segment| &segment.scan.records)
        .filter(|record| record.header.kind == RecordKind::Certificate)
        .map(|record| record.header.op)
        .max()
        .unwrap_or(0);
    if certified >= floor {
        return Ok(());
    }
    Err(StorageError::Corrupt {
        file: path.to_path_buf(),
        offset,
        reason: format!(
            "the certificate of op {floor} was durable but the readable log holds certificates \
             only up to op {certified}: the {bytes} unreadable bytes from here on are damage, \
             not a torn write; nothing was truncated"
        ),
    })
}

/// The torn tail of the last segment, if any, found but left in place.
fn report_torn_tail(scan: &LogScan) -> Option<TornTail> {
    let (path, offset, bytes) = scan.torn_tail()?;
    tracing::warn!(file = %path.display(), offset, bytes, "found a torn tail at the end of the last segment (read-only: not cut)");
    Some(TornTail {
        file: path.to_path_buf(),
        offset,
        bytes,
    })
}

/// Cuts the torn tail of the last segment, if any, and makes the cut durable.
fn cut_torn_tail(scan: &LogScan) -> Result<Option<TornTail>, StorageError> {
    let Some((path, offset, bytes)) = scan.torn_tail() else {
        return Ok(None);
    };
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(io)?;
    file.set_len(offset).map_err(io)?;
    file.sync_all().map_err(io)?;
    // Never the bytes themselves: they may be (encrypted) payload.
    tracing::warn!(file = %path.display(), offset, bytes, "cut a torn tail off the last segment (an unfinished write)");
    Ok(Some(TornTail {
        file: path.to_path_buf(),
        offset,
        bytes,
    }))
}

/// The segment the writer starts on, and the syncs and segments made to get it.
type OpenedTail = (Tail, Current, u64, u64);

/// Opens the segment to append to, creating it when the log is empty, the
/// last segment is sealed, or its header was torn, and brings the window
/// of a version 2 segment up to size. Returns the tail, the segment, and
/// the syncs and segments made.
fn open_tail(
    scan: &LogScan,
    cluster: u128,
    fs: &dyn SegmentFs,
    view: u64,
    config: &StorageConfig,
) -> Result<OpenedTail, StorageError> {
    let io = |index: u64| {
        move |source| StorageError::Io {
            path: fs.path(index),
            source,
        }
    };
    let fresh = |segment: u64| Tail {
        segment,
        offset: vellum_audit::segment::SEGMENT_HEADER_BYTES as u64,
        records: 0,
        ops: 0,
        view,
        chain: scan.chain,
        tree: None,
    };
    let window = config.window_bytes.min(config.segment_bytes_max);
    let created = |index: u64, file: Arc<dyn SegmentFile>, allocated: u64| Current {
        index,
        file,
        end: vellum_audit::segment::SEGMENT_HEADER_BYTES as u64,
        allocated,
        windowed: true,
    };
    let Some(last) = scan.segments.last() else {
        let (file, allocated) = create_segment(fs, cluster, 0, window).map_err(io(0))?;
        return Ok((fresh(0), created(0, file, allocated), 2, 1));
    };
    let index = last.index;
    match last.scan.end {
        SegmentEnd::Sealed { .. } => {
            let next = index + 1;
            let (file, allocated) = create_segment(fs, cluster, next, window).map_err(io(next))?;
            Ok((fresh(next), created(next, file, allocated), 2, 1))
        }
        SegmentEnd::TornTail { offset: 0, .. } => {
            // The header itself never became durable: write it again.
            let file = fs.open(index).map_err(io(index))?;
            let allocated =
                write_header(file.as_ref(), cluster, index, window).map_err(io(index))?;
            Ok((fresh(index), created(index, file, allocated), 1, 0))
        }
        SegmentEnd::Open | SegmentEnd::TornTail { .. } => {
            let file = fs.open(index).map_err(io(index))?;
            let tail = tail_after(last, fresh(index));
            let mut current = Current {
                index,
                allocated: file.file_len().map_err(io(index))?,
                file,
                end: tail.offset,
                windowed: last.scan.version >= 2,
            };
            let mut syncs = 0;
            if let Some(target) = current.window_target(config) {
                current.extend_window(target).map_err(io(index))?;
                syncs += 1;
            }
            Ok((tail, current, syncs, 0))
        }
        SegmentEnd::Corrupt { .. } => unreachable!("scan_log_dir returns corruption as an error"),
    }
}

/// The tail of a read-only open: where the next record would go, were
/// writing allowed. Nothing is created or opened for writing.
fn read_only_tail(scan: &LogScan, view: u64) -> Tail {
    let fresh = |segment: u64| Tail {
        segment,
        offset: vellum_audit::segment::SEGMENT_HEADER_BYTES as u64,
        records: 0,
        ops: 0,
        view,
        chain: scan.chain,
        tree: None,
    };
    match scan.segments.last() {
        None => fresh(0),
        Some(last) if matches!(last.scan.end, SegmentEnd::Sealed { .. }) => fresh(last.index + 1),
        Some(last) => tail_after(last, fresh(last.index)),
    }
}

/// `fresh` moved past the valid records of the (unsealed) segment `last`.
fn tail_after(last: &ScannedSegment, fresh: Tail) -> Tail {
    let records = &last.scan.records;
    let offset = records
        .last()
        .map_or(fresh.offset, |r| r.offset + r.encoded_len());
    // Damaged ops lie between valid records, so the last valid record ends
    // the segment; they count as records and ops for the seal.
    let damaged = last.scan.damaged.len();
    let ops = damaged
        + records
            .iter()
            .filter(|r| r.header.kind == RecordKind::Op)
            .count();
    Tail {
        offset,
        records: (records.len() + damaged) as u64,
        ops: ops as u64,
        ..fresh
    }
}

/// Creates segment `index` with its header and a zero window up to
/// `window` bytes, syncs it (one fdatasync), then syncs the directory.
/// Returns the file and its length.
pub(super) fn create_segment(
    fs: &dyn SegmentFs,
    cluster: u128,
    index: u64,
    window: u64,
) -> std::io::Result<(Arc<dyn SegmentFile>, u64)> {
    let file = fs.create(index)?;
    let len = write_header(file.as_ref(), cluster, index, window)?;
    fs.sync_dir()?;
    Ok((file, len))
}

/// Writes the header of a new segment at byte 0 and zeros after it up to
/// `window`, then syncs. Returns the file's length.
fn write_header(
    file: &dyn SegmentFile,
    cluster: u128,
    index: u64,
    window: u64,
) -> std::io::Result<u64> {
    let header_bytes = vellum_audit::segment::SEGMENT_HEADER_BYTES as u64;
    file.write_at(&SegmentHeader::new(cluster, index).encode(), 0)?;
    let len = window.max(header_bytes);
    if len > header_bytes {
        file.preallocate(header_bytes, len)?;
    }
    file.sync_data()?;
    Ok(len)
}
