//! Incremental verification (`vellum verify --since`): where the part of a
//! log that is new since a checkpoint the auditor kept begins, and what the
//! walk of that part starts from, without reading the old part.
//!
//! What makes skipping the old part sound: the kept checkpoint is signed by
//! a quorum of pinned keys, so its tree size, root and signed chain head
//! (`vellum-head <op> <checksum>`) are the history the auditor accepted
//! earlier. The walk starts from the tree's frontier at the kept size
//! (kept beside the checkpoint, in the earlier JSON report) and accepts it
//! only if it folds to the signed root (any other frontier would be a
//! SHA-256 collision), and from the op record the chain head names, found
//! by its header checksum. Every new op must then link to it by `parent`,
//! every new certificate's root is recomputed from the kept frontier plus
//! the new leaves, and the consistency proof from the kept checkpoint to
//! the newest certificate is checked (RFC 9162).
//!
//! What it does not see: damage to the bytes before the kept checkpoint
//! (bit rot, a flipped event) is not re-read. The kept root still pins
//! those events, so a later proof or export of a changed old event fails
//! against it, and a full verify names the damage.

use std::path::Path;

use crate::checkpoint::Certificate;
use crate::frontier::Frontier;
use crate::hash::{Hash, from_hex, to_hex};
use crate::policy::Policy;
use crate::record::{HEADER_BYTES, OpHeader, RecordKind, SEAL_BODY_BYTES};
use crate::segment::{Resume, SEGMENT_HEADER_BYTES, segment_file_name};
use crate::verify::ChainHead;

/// The note on the checks of an incremental run: what was not re-read.
pub const INCREMENTAL_NOTE: &str = "incremental (--since): the old part of the log was not \
     re-read; its root is the kept, signed root; run a full verify to check the old bytes at rest";

/// What an incremental walk starts from: a kept checkpoint whose
/// signatures, chain head and frontier all checked out.
#[derive(Debug, Clone)]
pub struct SinceStart {
    /// The kept checkpoint's tree size.
    pub size: u64,
    /// Its signed root.
    pub root: Hash,
    /// Its signed chain head: the op the walk resumes after.
    pub head: ChainHead,
    /// The tree's frontier at `size` (its root is `root`).
    pub frontier: Frontier,
    /// The pinned keys that signed it, as reports name them.
    pub signed_by: Vec<String>,
    /// The signed checkpoint text.
    pub text: String,
}

/// Why a kept checkpoint cannot start an incremental walk (the caller then
/// reads the whole log, and the kept checkpoint is checked against it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinceError {
    /// Not a signed checkpoint.
    #[error("not a signed checkpoint: {0}")]
    Unparsable(String),
    /// Its signatures do not meet the policy.
    #[error("not certified under the pinned policy: {0}")]
    NotCertified(String),
    /// It carries no single valid chain head.
    #[error("it carries no single valid signed chain head")]
    NoChainHead,
    /// No frontier was kept with it.
    #[error("no frontier was kept with it (keep the JSON report of a verify run)")]
    NoFrontier,
    /// The kept frontier is malformed or is not the signed tree's.
    #[error("the kept frontier {0}")]
    BadFrontier(String),
}

impl SinceStart {
    /// Checks a kept checkpoint and the frontier kept with it (hex nodes,
    /// highest first) against `policy`.
    pub fn new(
        kept_text: &str,
        frontier_hex: Option<&[String]>,
        policy: &Policy,
    ) -> Result<SinceStart, SinceError> {
        let certificate =
            Certificate::parse(kept_text).map_err(|e| SinceError::Unparsable(e.to_string()))?;
        let verified = certificate
            .verify(policy)
            .map_err(|e| SinceError::NotCertified(e.to_string()))?;
        let checkpoint = &certificate.checkpoint;
        let head = match ChainHead::all_in(checkpoint).as_slice() {
            [Ok(head)] => *head,
            _ => return Err(SinceError::NoChainHead),
        };
        let nodes = frontier_hex
            .ok_or(SinceError::NoFrontier)?
            .iter()
            .map(|hex| from_hex(hex))
            .collect::<Option<Vec<Hash>>>()
            .ok_or_else(|| {
                SinceError::BadFrontier("has a node that is not 64 hex digits".into())
            })?;
        let frontier = Frontier::from_nodes(checkpoint.size, nodes)
            .map_err(|e| SinceError::BadFrontier(e.to_string()))?;
        if frontier.root() != checkpoint.root {
            return Err(SinceError::BadFrontier(format!(
                "folds to root {}, not the signed root {}",
                to_hex(&frontier.root()),
                to_hex(&checkpoint.root)
            )));
        }
        Ok(SinceStart {
            size: checkpoint.size,
            root: checkpoint.root,
            head,
            frontier,
            signed_by: crate::verify::signer_names(&verified.signers),
            text: kept_text.to_string(),
        })
    }
}

/// Where the op a chain head names was found.
#[derive(Debug, Clone)]
pub struct OpLocation {
    /// Its segment.
    pub segment: u64,
    /// File offset of its record.
    pub offset: u64,
    /// Its header.
    pub header: OpHeader,
    /// Where a scan resumes: right after its record.
    pub resume: Resume,
    /// The segment's bytes as a scan from `resume` needs them: the segment
    /// header and everything from `resume.offset` on; the bytes between
    /// are zero (never read, and never touched, so they cost no memory).
    pub bytes: Vec<u8>,
}

/// The read window while record headers are followed through a segment.
const HEADER_WALK_BUFFER_BYTES: usize = 1 << 20;

/// While the records followed so far average at least this many bytes, only
/// the next header is read, not a window: a log of large batches then costs
/// a header per record, not the segment (whose pages a window over small
/// records touches anyway).
const HEADER_WALK_SKIP_BYTES: u64 = 16 * 1024;

/// Finds the record of op `op` without reading the segments before its
/// own: each earlier segment's seal (its last 304 bytes) names the last op
/// it holds, so whole segments are skipped; in the segment that holds it,
/// record headers are followed by their lengths through a bounded window
/// (headers checked, bodies skipped). Nothing found is trusted: the caller
/// compares the op's header checksum with the signed chain head.
pub fn locate_op(dir: &Path, indexes: &[u64], op: u64) -> Result<OpLocation, String> {
    for (position, &index) in indexes.iter().enumerate() {
        let path = dir.join(segment_file_name(index));
        let is_last = position + 1 == indexes.len();
        if !is_last && seal_last_op(&path).is_some_and(|last| last < op) {
            continue;
        }
        let unreadable = |e: std::io::Error| format!("{}: cannot read: {e}", path.display());
        match find_op(&path, op).map_err(|e| e.unwrap_or_else(unreadable))? {
            Found::Here(offset, header, resume) => {
                return Ok(OpLocation {
                    segment: index,
                    offset,
                    header: *header,
                    resume,
                    bytes: read_from(&path, resume.offset).map_err(unreadable)?,
                });
            }
            Found::Before(last) if is_last => {
                return Err(format!(
                    "op {op} is beyond the log (its last op is {last}): the log was truncated \
                     or rolled back"
                ));
            }
            Found::Before(_) => {}
            Found::Passed(after) => {
                return Err(format!(
                    "op {op} is not in the log ({} holds op {after} where it should be)",
                    path.display()
                ));
            }
        }
    }
    Err(format!("op {op} is not in the log (no segment holds it)"))
}

enum Found {
    /// At this offset, with this header; a scan resumes here.
    Here(u64, Box<OpHeader>, Resume),
    /// The segment ends before it (its last op, 0 for none).
    Before(u64),
    /// The segment holds a later op where it should be.
    Passed(u64),
}

/// Follows the record headers of one segment file to op `op`. `Err(Ok)`:
/// a header that does not decode; `Err(Err)`: the file cannot be read.
fn find_op(path: &Path, op: u64) -> Result<Found, Result<String, std::io::Error>> {
    let file = std::fs::File::open(path).map_err(Err)?;
    let len = file.metadata().map_err(Err)?.len();
    let mut walk = HeaderWalk::new(file);
    let mut pos = SEGMENT_HEADER_BYTES as u64;
    let (mut records, mut ops, mut last) = (0u64, 0u64, 0u64);
    // The first header alone: nothing is known yet of the records' sizes.
    let mut wide = false;
    while pos + HEADER_BYTES as u64 <= len {
        let header_bytes = walk.header_at(pos, wide, len).map_err(Err)?;
        if header_bytes.iter().all(|&b| b == 0) {
            break; // the zero window of a version 2 segment: no more records
        }
        let header = OpHeader::decode(&header_bytes, pos)
            .map_err(|e| Ok(format!("{} at byte {pos}: {e}", path.display())))?;
        let end = pos + HEADER_BYTES as u64 + u64::from(header.body_size);
        if header.kind == RecordKind::Op {
            if header.op == op && end > len {
                return Err(Ok(format!(
                    "{} at byte {pos}: op {op}'s record runs past the end of the file",
                    path.display()
                )));
            }
            if header.op == op {
                let resume = Resume {
                    offset: end,
                    records: records + 1,
                    ops: ops + 1,
                };
                return Ok(Found::Here(pos, Box::new(header), resume));
            }
            if header.op > op {
                return Ok(Found::Passed(header.op));
            }
            last = header.op;
            ops += 1;
        }
        if header.kind == RecordKind::Seal || end > len {
            break;
        }
        records += 1;
        pos = end;
        // A window while the records passed are small on average (the next
        // ones share pages); an average, so that the small certificate
        // record after each large op does not make it read the op bodies.
        wide = (pos - SEGMENT_HEADER_BYTES as u64) / records < HEADER_WALK_SKIP_BYTES;
    }
    Ok(Found::Before(last))
}

/// Positioned reads of record headers through one window of the file.
struct HeaderWalk {
    file: std::fs::File,
    window: Vec<u8>,
    window_start: u64,
}

impl HeaderWalk {
    fn new(file: std::fs::File) -> HeaderWalk {
        HeaderWalk {
            file,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The `HEADER_BYTES` at `pos` (`pos + HEADER_BYTES <= len`). Outside
    /// the window, reads a new one there: `HEADER_WALK_BUFFER_BYTES` when
    /// `wide` (small records follow), else the header alone.
    fn header_at(
        &mut self,
        pos: u64,
        wide: bool,
        len: u64,
    ) -> Result<[u8; HEADER_BYTES], std::io::Error> {
        use std::io::{Read as _, Seek as _, SeekFrom};
        let window_end = self.window_start + self.window.len() as u64;
        if pos < self.window_start || pos + HEADER_BYTES as u64 > window_end {
            let wanted = match wide {
                true => (HEADER_WALK_BUFFER_BYTES as u64).min(len - pos),
                false => HEADER_BYTES as u64,
            };
            self.window
                .resize(usize::try_from(wanted).map_err(std::io::Error::other)?, 0);
            self.file.seek(SeekFrom::Start(pos))?;
            self.file.read_exact(&mut self.window)?;
            self.window_start = pos;
        }
        let at = usize::try_from(pos - self.window_start).map_err(std::io::Error::other)?;
        let mut header = [0u8; HEADER_BYTES];
        header.copy_from_slice(&self.window[at..at + HEADER_BYTES]);
        Ok(header)
    }
}

/// A segment file's bytes with only its header and the part from `offset`
/// on read; the rest is left zero (a zeroed allocation touches no page
/// until written, so the skipped part costs neither reads nor memory).
fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, std::io::Error> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    let from = usize::try_from(offset)
        .map_err(std::io::Error::other)?
        .clamp(SEGMENT_HEADER_BYTES.min(len), len);
    let mut bytes = vec![0u8; len];
    let header = SEGMENT_HEADER_BYTES.min(len);
    file.read_exact(&mut bytes[..header])?;
    file.seek(SeekFrom::Start(from as u64))?;
    file.read_exact(&mut bytes[from..])?;
    Ok(bytes)
}

/// The last op a sealed segment holds, from its seal record (its last
/// bytes); `None` when the file does not end in a readable seal.
fn seal_last_op(path: &Path) -> Option<u64> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let seal_bytes = (HEADER_BYTES + SEAL_BODY_BYTES) as u64;
    let mut file = std::fs::File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let start = len.checked_sub(seal_bytes)?;
    file.seek(SeekFrom::Start(start)).ok()?;
    let mut header_bytes = [0u8; HEADER_BYTES];
    file.read_exact(&mut header_bytes).ok()?;
    let header = OpHeader::decode(&header_bytes, start).ok()?;
    (header.kind == RecordKind::Seal && header.body_size as usize == SEAL_BODY_BYTES)
        .then_some(header.op)
}
