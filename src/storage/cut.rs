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
//! them again after the restart. Certificates and seals after the cut go
//! with it; certificates only ever cover committed ops, which stay, and a
//! newer one arrives with the primary's next heartbeat.

use std::fs::OpenOptions;
use std::path::Path;

use vellum_audit::record::RecordKind;
use vellum_audit::segment::scan_log_dir;

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
    let scan = scan_log_dir(&segments_dir, cluster)?;
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
        let file = OpenOptions::new().write(true).open(path).map_err(io)?;
        file.set_len(keep_bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
    }
    tracing::warn!(
        after_op,
        ops_removed = report.ops_removed,
        segments_removed = report.segments_removed,
        "cut uncommitted ops a view change replaced"
    );
    Ok(report)
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })
}
