//! Offline verification of a log directory against a pinned trust policy.
//!
//! Reads segment files only (never the index, never a key store): checks
//! every record checksum and chain link, every seal, recomputes the Merkle
//! tree from the leaves and compares its root at every stored certificate
//! and seal, and checks every certificate's signatures against the policy.
//! It returns the report's checks plus the facts (events, certificates) that
//! a caller needs to check a projection such as the audit index.

use std::path::{Path, PathBuf};

use crate::checkpoint::Certificate;
use crate::hash::{Hash, to_hex};
use crate::leaf::LeafPreimage;
use crate::merkle::MerkleTree;
use crate::policy::Policy;
use crate::record::{self, OpHeader, RecordKind, SealBody};
use crate::report::{Check, Reached};
use crate::segment::{self, Chain, SegmentEnd};

/// One event as the log states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFact {
    /// Global position (leaf index).
    pub position: u64,
    /// Stream.
    pub stream: u64,
    /// Stream offset.
    pub stream_offset: u64,
    /// Op carrying it.
    pub op: u64,
    /// RFC 6962 leaf hash.
    pub leaf_hash: Hash,
    /// Segment index of its op record.
    pub segment: u64,
    /// Byte offset of its op record in the segment file.
    pub file_offset: u64,
}

/// One certificate as the log states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitFact {
    /// The commit number certified.
    pub op: u64,
    /// Tree size.
    pub tree_size: u64,
    /// Root.
    pub root: Hash,
    /// The signed note text.
    pub certificate: String,
}

/// Everything verification learned about the log.
#[derive(Debug, Default)]
pub struct LogFacts {
    /// Every event, in position order.
    pub events: Vec<EventFact>,
    /// Every certificate, in log order.
    pub commits: Vec<CommitFact>,
    /// (key id, stream) of every op.
    pub keys: Vec<(u64, u64)>,
    /// Ops in the log.
    pub ops: u64,
}

/// The checks of a log directory and the facts gathered.
#[derive(Debug)]
pub struct LogVerification {
    /// Checks in order: records and hash chain, seals, merkle roots, certificates.
    pub checks: Vec<Check>,
    /// What the log holds.
    pub facts: LogFacts,
    /// The newest verified certificate.
    pub reached: Option<Reached>,
}

/// The cluster id inside a Vellum origin ("vellum.local/cluster/<hex>").
pub fn cluster_from_origin(origin: &str) -> Option<u128> {
    let hex = origin.strip_prefix("vellum.local/cluster/")?;
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

struct Walk<'a> {
    policy: &'a Policy,
    tree: MerkleTree,
    facts: LogFacts,
    records: Check,
    seals: Check,
    merkle: Check,
    certificates: Check,
    reached: Option<Reached>,
    last_certified_op: u64,
}

/// Verifies the segments in `segments_dir` against `policy`. `progress` is
/// called with the bytes of each segment file as it is read.
pub fn verify_log_dir(
    segments_dir: &Path,
    policy: &Policy,
    progress: &mut dyn FnMut(u64),
) -> LogVerification {
    let mut walk = Walk {
        policy,
        tree: MerkleTree::default(),
        facts: LogFacts::default(),
        records: Check::start("records and hash chain"),
        seals: Check::start("segment seals"),
        merkle: Check::start("merkle roots"),
        certificates: Check::start("certificate signatures"),
        reached: None,
        last_certified_op: 0,
    };
    let Some(cluster) = cluster_from_origin(&policy.origin) else {
        walk.records.fail(
            "policy",
            format!("origin {:?} is not a vellum cluster origin", policy.origin),
        );
        return walk.finish();
    };
    let indexes = match segment::list_segments(segments_dir) {
        Ok(indexes) => indexes,
        Err(e) => {
            walk.records
                .fail(segments_dir.display().to_string(), e.to_string());
            return walk.finish();
        }
    };
    let mut chain = Chain::genesis(cluster);
    for (position, index) in indexes.iter().copied().enumerate() {
        let path = segments_dir.join(segment::segment_file_name(index));
        if index != position as u64 {
            walk.records.fail(
                path.display().to_string(),
                format!("segment {position} is missing"),
            );
            break;
        }
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) => {
                walk.records
                    .fail(path.display().to_string(), format!("cannot read: {e}"));
                break;
            }
        };
        progress(bytes.len() as u64);
        let is_last = position + 1 == indexes.len();
        if !walk.segment(&path, index, &bytes, cluster, &mut chain, is_last) {
            break;
        }
    }
    walk.finish()
}

impl Walk<'_> {
    /// Checks one segment; false when the log cannot be followed past it.
    fn segment(
        &mut self,
        path: &Path,
        index: u64,
        bytes: &[u8],
        cluster: u128,
        chain: &mut Chain,
        is_last: bool,
    ) -> bool {
        let scan = segment::scan_segment_with(bytes, index, cluster, chain);
        self.records.count("segments", 1);
        self.records.count("bytes", bytes.len() as u64);
        for scanned in &scan.records {
            let body = &bytes[scanned.body_range.clone()];
            let at = format!("{} at byte {}", path.display(), scanned.offset);
            self.records.count("records", 1);
            match scanned.header.kind {
                RecordKind::Op => self.op(&scanned.header, body, index, scanned.offset, &at),
                RecordKind::Certificate => self.certificate(&scanned.header, body, &at),
                RecordKind::Seal => self.seal(&scanned.header, body, scanned.offset, &at),
            }
        }
        let here = |offset: u64| format!("{} at byte {offset}", path.display());
        match scan.end {
            SegmentEnd::Sealed { .. } => self.seals.count("sealed segments", 1),
            SegmentEnd::Open if is_last => {}
            SegmentEnd::Open => self.seals.fail(
                path.display().to_string(),
                "a segment that is not the last is not sealed",
            ),
            SegmentEnd::TornTail { offset, bytes } => {
                self.records.fail(
                    here(offset),
                    format!("{bytes} bytes that are not a complete record (torn write or damage)"),
                );
                return false;
            }
            SegmentEnd::Corrupt { offset, reason } => {
                self.records.fail(here(offset), reason);
                return false;
            }
        }
        true
    }

    fn op(&mut self, header: &OpHeader, body: &[u8], segment: u64, offset: u64, at: &str) {
        self.records.count("ops", 1);
        self.facts.ops += 1;
        let frames = match record::decode_events(
            body,
            header.event_count,
            offset + record::HEADER_BYTES as u64,
        ) {
            Ok(frames) => frames,
            Err(e) => return self.records.fail(at, e.to_string()),
        };
        if header.global_position != self.tree.len() {
            self.merkle.fail(
                at,
                format!(
                    "op {} starts at position {}, expected {}",
                    header.op,
                    header.global_position,
                    self.tree.len()
                ),
            );
        }
        for (i, frame) in frames.iter().enumerate() {
            let i = i as u64;
            let leaf = LeafPreimage {
                global_position: header.global_position + i,
                stream: header.stream,
                stream_offset: header.stream_offset + i,
                op: header.op,
                ciphertext_hash: frame.ciphertext_hash(),
                commitment: frame.commitment,
            };
            let leaf_hash = leaf.leaf_hash();
            self.facts.events.push(EventFact {
                position: self.tree.len(),
                stream: header.stream,
                stream_offset: header.stream_offset + i,
                op: header.op,
                leaf_hash,
                segment,
                file_offset: offset,
            });
            self.tree.push(leaf_hash);
        }
        self.merkle.count("events", frames.len() as u64);
        self.facts.keys.push((header.key_id, header.stream));
    }

    fn certificate(&mut self, header: &OpHeader, body: &[u8], at: &str) {
        self.certificates.count("certificates", 1);
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(_) => return self.certificates.fail(at, "certificate is not utf-8 text"),
        };
        let certificate = match Certificate::parse(text) {
            Ok(certificate) => certificate,
            Err(e) => return self.certificates.fail(at, e.to_string()),
        };
        let size = certificate.checkpoint.size;
        if size != header.tree_size {
            self.merkle.fail(
                at,
                format!(
                    "certificate size {size} differs from its record's tree size {}",
                    header.tree_size
                ),
            );
        }
        match self.tree.root_at(size) {
            Ok(root) if root == certificate.checkpoint.root => {
                self.merkle.count("roots recomputed", 1)
            }
            Ok(root) => self.merkle.fail(
                at,
                format!(
                    "certificate root {} but the events give {}",
                    to_hex(&certificate.checkpoint.root),
                    to_hex(&root)
                ),
            ),
            Err(e) => self
                .merkle
                .fail(at, format!("certificate for tree size {size}: {e}")),
        }
        match certificate.verify(self.policy) {
            Ok(_) => {
                self.certificates.count("verified", 1);
                self.last_certified_op = self.last_certified_op.max(header.op);
                self.reached = Some(Reached {
                    tree_size: size,
                    root: to_hex(&certificate.checkpoint.root),
                    checkpoint: text.to_string(),
                });
            }
            Err(e) => self.certificates.fail(at, e.to_string()),
        }
        self.facts.commits.push(CommitFact {
            op: header.op,
            tree_size: size,
            root: certificate.checkpoint.root,
            certificate: text.to_string(),
        });
    }

    fn seal(&mut self, header: &OpHeader, body: &[u8], offset: u64, at: &str) {
        let seal = match SealBody::decode(body, offset + record::HEADER_BYTES as u64) {
            Ok(seal) => seal,
            Err(e) => return self.seals.fail(at, e.to_string()),
        };
        match self.tree.root_at(header.tree_size) {
            Ok(root) if root == seal.tree_root => self.merkle.count("roots recomputed", 1),
            Ok(_) => self.merkle.fail(
                at,
                "the seal's merkle root does not match the events before it",
            ),
            Err(e) => self
                .merkle
                .fail(at, format!("seal for tree size {}: {e}", header.tree_size)),
        }
    }

    fn finish(mut self) -> LogVerification {
        let uncertified = self.facts.ops - self.last_certified_op.min(self.facts.ops);
        self.certificates
            .count("ops after the last certificate", uncertified);
        if self.facts.ops > 0 && self.reached.is_none() && self.certificates.passed() {
            self.certificates
                .fail("log", "the log holds ops but no valid certificate");
        }
        LogVerification {
            checks: vec![
                self.records.finish(),
                self.seals.finish(),
                self.merkle.finish(),
                self.certificates.finish(),
            ],
            facts: self.facts,
            reached: self.reached,
        }
    }
}

/// The segments directory of a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}
