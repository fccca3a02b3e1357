//! Cutting uncommitted ops off the end of a closed log.
//!
//! A view change may replace ops a replica prepared but the cluster never
//! committed (VRR §4.2: the new primary's log wins). The segment files are
//! append-only, so the replica closes its store, cuts the log right after
//! the last op it keeps, and opens it again. Only the caller knows which
//! ops are uncommitted: it must never name a cut below its commit.
//!
//! Crash safety: later segment files are removed first, newest first, and
//! the segment holding the cut is shortened last, so a crash part-way leaves
//! a valid log that still holds some of the doomed ops — the core truncates
//! them again after the restart. Seals after the cut go with it.
//!
//! Certificates only ever cover committed ops, which stay; but a
//! certificate's record is lazy and often lies *after* later, uncommitted
//! ops in the file. Such a record was durable, and the audit index may
//! already hold its row, so the cut copies it back: after the file is
//! shortened, every certificate record that lay past the cut and certifies
//! a kept op is appended again (same bytes, same order) and synced. A crash
//! between the shortening and the re-append leaves the index ahead of the
//! log, which the replica's index reconciliation drops on open.

use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vellum_audit::record::RecordKind;
use vellum_audit::segment::scan_log_dir_tolerant;

use super::{SEGMENTS_DIR, StorageError};

/// What a cut removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CutReport {
    /// Ops removed.
    pub ops_removed: u64,
    /// Segment files removed whole.
    pub segments_removed: u64,
}

/// Removes every record after op `after_op` from the (closed) log in
/// `data_dir/segments`. Does nothing when the log ends at or before it.
pub fn cut_after_op(
    data_dir: &Path,
    cluster: u128,
    after_op: u64,
) -> Result<CutReport, StorageError> {
    let segments_dir = data_dir.join(SEGMENTS_DIR);
    // A replica of a cluster may hold a damaged op (to be repaired from
    // peers); cutting past it, or removing it, is as for any other op.
    let scan = scan_log_dir_tolerant(&segments_dir, cluster)?;
    let last_op = scan.chain.last_op;
    if last_op <= after_op {
        return Ok(CutReport::default());
    }
    // Where the kept log ends: (segment position in the scan, byte offset).
    let mut end: Option<(usize, u64)> = None;
    for (i, segment) in scan.segments.iter().enumerate() {
        for record in &segment.scan.records {
            if record.header.kind == RecordKind::Op && record.header.op == after_op {
                end = Some((i, record.offset + record.encoded_len()));
            }
        }
        for damaged in segment.scan.damaged.iter().filter(|d| d.op == after_op) {
            end = Some((i, damaged.offset + damaged.len));
        }
    }
    let (keep_segment, keep_bytes) = match (after_op, end) {
        (0, _) => (None, 0),
        (_, Some((i, bytes))) => (Some(i), bytes),
        (_, None) => {
            return Err(StorageError::Rejected(format!(
                "cannot cut after op {after_op}: the log in {} does not hold it",
                segments_dir.display()
            )));
        }
    };
    let first_removed = keep_segment.map_or(0, |i| i + 1);
    let mut report = CutReport {
        ops_removed: last_op - after_op,
        segments_removed: 0,
    };
    let kept_certificates = certificates_past_cut(&scan, keep_segment, keep_bytes, after_op)?;
    for segment in scan.segments[first_removed..].iter().rev() {
        std::fs::remove_file(&segment.path).map_err(|source| StorageError::Io {
            path: segment.path.clone(),
            source,
        })?;
        report.segments_removed += 1;
    }
    sync_dir(&segments_dir)?;
    if let Some(i) = keep_segment {
        let path = &scan.segments[i].path;
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new().write(true).open(path).map_err(io)?;
        file.set_len(keep_bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        if !kept_certificates.is_empty() {
            file.seek(SeekFrom::End(0)).map_err(io)?;
            for record in &kept_certificates {
                file.write_all(record).map_err(io)?;
            }
            file.sync_all().map_err(io)?;
        }
    }
    tracing::warn!(
        after_op,
        ops_removed = report.ops_removed,
        segments_removed = report.segments_removed,
        "cut uncommitted ops a view change replaced"
    );
    Ok(report)
}

/// Most certificate records a cut copies back. The ops past a cut are the
/// uncommitted pipeline, so only a few certificate records can lie among
/// them; more means the log is not what a view change leaves.
const CUT_CERTIFICATES_MAX: usize = 4096;

/// The bytes of every certificate record that lies past the cut point
/// (`keep_segment`, `keep_bytes`) and certifies an op at or below
/// `after_op`, in log order.
fn certificates_past_cut(
    scan: &vellum_audit::segment::LogScan,
    keep_segment: Option<usize>,
    keep_bytes: u64,
    after_op: u64,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let Some(keep) = keep_segment else {
        return Ok(Vec::new()); // Nothing is kept, so nothing is certified.
    };
    let mut out = Vec::new();
    for (i, segment) in scan.segments.iter().enumerate().skip(keep) {
        let past = |offset: u64| i > keep || offset >= keep_bytes;
        let wanted: Vec<_> = segment
            .scan
            .records
            .iter()
            .filter(|r| {
                r.header.kind == RecordKind::Certificate
                    && r.header.op <= after_op
                    && past(r.offset)
            })
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let io = |source| StorageError::Io {
            path: segment.path.clone(),
            source,
        };
        let file = std::fs::File::open(&segment.path).map_err(io)?;
        for record in wanted {
            let len = usize::try_from(record.encoded_len()).expect("a record fits in memory");
            let mut bytes = vec![0u8; len];
            file.read_exact_at(&mut bytes, record.offset).map_err(io)?;
            out.push(bytes);
        }
        if out.len() > CUT_CERTIFICATES_MAX {
            return Err(StorageError::Rejected(format!(
                "cannot cut after op {after_op}: more than {CUT_CERTIFICATES_MAX} certificate \
                 records lie past the cut"
            )));
        }
    }
    Ok(out)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })
}
