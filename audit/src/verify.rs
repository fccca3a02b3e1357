//! Offline verification of a log directory against a pinned trust policy.
//!
//! Reads segment files only (never the index, never a key store): checks
//! every record checksum and chain link, every seal, recomputes the Merkle
//! tree from the leaves and compares its root at every stored certificate
//! and seal, and checks every certificate's signatures against the policy.
//! It returns the report's checks plus the facts (events, certificates) that
//! a caller needs to check a projection such as the audit index, and the
//! recomputed tree, so that `check_since` (a checkpoint the auditor kept) and
//! `compare_replicas` (a cluster's replicas against each other) need no
//! second read of the files.
//!
//! The chain and the seals are not signed: an attacker who rewrites bytes can
//! recompute every checksum, parent and seal after them. What such a rewrite
//! cannot forge is a quorum certificate over the Merkle root, so the log must
//! END with one: every op must be covered by a verified certificate whose root
//! the events reproduce. Ops after the last certificate (a crash between an
//! op and its certificate, repaired by the next open, or certificates that
//! were stripped) fail verification rather than pass unproven.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::checkpoint::{Certificate, Checkpoint};
use crate::frontier::{self, Frontier, PathNodes};
use crate::hash::{Hash, to_hex};
use crate::leaf::LeafPreimage;
use crate::merkle::{self, MerkleTree, ProofError};
use crate::note::Verifier;
use crate::policy::Policy;
use crate::record::{self, OpHeader, RecordKind, SealBody};
use crate::report::{Check, FailureKind, Outcome, Reached};
use crate::segment::{self, Chain, Resume, ScanError, SegmentEnd};
use crate::since::{self, SinceStart};

/// The checkpoint extension line that binds a certificate to the op header
/// chain: `vellum-head <op> <header checksum, 64 lowercase hex>`. The Merkle
/// leaves do not cover header-only fields (timestamp, client id and request,
/// view, commit, key id), and the chain alone is unsigned, so only a signed
/// head makes a rewrite of those fields evident. Every certificate Vellum
/// writes carries exactly one, naming the certified op; verify requires it.
pub const CHAIN_HEAD_EXTENSION: &str = "vellum-head";

/// The extension line naming `op` and its header checksum.
pub fn chain_head_extension(op: u64, checksum: &Hash) -> String {
    ChainHead {
        op,
        checksum: *checksum,
    }
    .line()
}

/// A signed chain head: the op a certificate certifies and that op's
/// header checksum. The one parser and writer of the `vellum-head` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// The certified op (at least 1).
    pub op: u64,
    /// The certified op's header checksum.
    pub checksum: Hash,
}

impl ChainHead {
    /// `vellum-head <op> <checksum as 64 lowercase hex>`.
    pub fn line(&self) -> String {
        format!(
            "{CHAIN_HEAD_EXTENSION} {} {}",
            self.op,
            to_hex(&self.checksum)
        )
    }

    /// Parses an extension line. `None`: the line is not a chain head (it
    /// does not start with `vellum-head`). `Some(Err)`: it claims to be one
    /// but is not exactly the canonical line (op in decimal without leading
    /// zeros, at least 1; 64 lowercase hex digits; single spaces).
    pub fn parse(line: &str) -> Option<Result<ChainHead, String>> {
        line.starts_with(CHAIN_HEAD_EXTENSION).then(|| {
            ChainHead::parse_strict(line).ok_or_else(|| format!("malformed chain head {line:?}"))
        })
    }

    fn parse_strict(line: &str) -> Option<ChainHead> {
        let rest = line.strip_prefix(CHAIN_HEAD_EXTENSION)?.strip_prefix(' ')?;
        let (op, hex) = rest.split_once(' ')?;
        let op: u64 = op.parse().ok().filter(|&op| op >= 1)?;
        let head = ChainHead {
            op,
            checksum: crate::hash::from_hex(hex)?,
        };
        (head.line() == line).then_some(head)
    }

    /// Every chain head line of `checkpoint`, parsed, in order.
    pub fn all_in(checkpoint: &Checkpoint) -> Vec<Result<ChainHead, String>> {
        checkpoint
            .extensions
            .iter()
            .filter_map(|line| ChainHead::parse(line))
            .collect()
    }
}

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
    /// The leaf's hiding commitment to the plaintext (checks access rows
    /// that reveal their payload and salt).
    pub commitment: Hash,
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
    /// The view of the certificate record.
    pub view: u64,
    /// Tree size.
    pub tree_size: u64,
    /// Root.
    pub root: Hash,
    /// The signed note text.
    pub certificate: String,
}

/// One op record's header as the log states it: what replicas compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpFact {
    /// The op number.
    pub op: u64,
    /// Its header checksum (the next op's `parent`).
    pub checksum: Hash,
    /// Segment index of the record.
    pub segment: u64,
    /// Byte offset of the record in the segment file.
    pub file_offset: u64,
    /// The op's stream, first stream offset and event count.
    pub stream: u64,
    /// First stream offset of the op's events.
    pub stream_offset: u64,
    /// Events in the op.
    pub event_count: u32,
    /// The next op belongs to this op's atomic group.
    pub group_continues: bool,
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
    /// Every op header, in op order (index = op - 1).
    pub op_headers: Vec<OpFact>,
}

/// What the walk tells about the log as it reads it, in log order: each op
/// header (before its events), each event, each op's key id (after its
/// events, only for an op whose events decoded) and each certificate.
/// [`LogFacts`] keeps them all; a streaming consumer (`vellum verify`
/// comparing the audit index in chunks) keeps only what it still needs.
pub trait FactSink {
    /// An op record's header.
    fn op(&mut self, fact: &OpFact);
    /// One event of the op last given.
    fn event(&mut self, fact: &EventFact);
    /// The key id and stream of an op whose events decoded.
    fn key(&mut self, key_id: u64, stream: u64);
    /// A certificate record (valid or not).
    fn commit(&mut self, fact: &CommitFact);
}

impl FactSink for LogFacts {
    fn op(&mut self, fact: &OpFact) {
        self.ops += 1;
        self.op_headers.push(fact.clone());
    }

    fn event(&mut self, fact: &EventFact) {
        self.events.push(fact.clone());
    }

    fn key(&mut self, key_id: u64, stream: u64) {
        self.keys.push((key_id, stream));
    }

    fn commit(&mut self, fact: &CommitFact) {
        self.commits.push(fact.clone());
    }
}

/// A sink that keeps nothing (only the walk's own bounded state remains).
#[derive(Debug, Default)]
pub struct DiscardFacts;

impl FactSink for DiscardFacts {
    fn op(&mut self, _: &OpFact) {}
    fn event(&mut self, _: &EventFact) {}
    fn key(&mut self, _: u64, _: u64) {}
    fn commit(&mut self, _: &CommitFact) {}
}

/// The recomputed Merkle tree as a verification kept it.
#[derive(Debug, Clone)]
pub enum LogTree {
    /// Every leaf and complete subtree ([`verify_log_dir`]): any root and
    /// proof of any size.
    Full(MerkleTree),
    /// Bounded ([`verify_log_stream`]): the frontier at the end, at the
    /// newest verified certificate and at the kept checkpoint's size, and
    /// the nodes beside the kept size's path; roots of those sizes and the
    /// consistency proof between the kept and the newest certified size.
    Compact(CompactTree),
}

/// See [`LogTree::Compact`].
#[derive(Debug, Clone, Default)]
pub struct CompactTree {
    /// The frontier after the last event read.
    pub end: Frontier,
    /// The frontier at the newest verified certificate's size.
    pub reached: Option<Frontier>,
    /// The frontier at the kept checkpoint's size (when the log reached it).
    pub kept: Option<Frontier>,
    /// The nodes beside the kept size's path.
    pub path: Option<PathNodes>,
}

impl CompactTree {
    fn frontiers(&self) -> impl Iterator<Item = &Frontier> {
        [Some(&self.end), self.reached.as_ref(), self.kept.as_ref()]
            .into_iter()
            .flatten()
    }
}

impl LogTree {
    /// The number of leaves read.
    pub fn len(&self) -> u64 {
        match self {
            LogTree::Full(tree) => tree.len(),
            LogTree::Compact(tree) => tree.end.len(),
        }
    }

    /// Whether no leaf was read.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The root at `size`: any size of a full tree; a compact tree answers
    /// the sizes it kept a frontier of.
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        match self {
            LogTree::Full(tree) => tree.root_at(size),
            LogTree::Compact(tree) => {
                let len = tree.end.len();
                if size > len {
                    return Err(ProofError::SizeBeyondTree { size, len });
                }
                tree.frontiers()
                    .find(|f| f.len() == size)
                    .map(Frontier::root)
                    .ok_or(ProofError::NotRetained {
                        height: 0,
                        index: size,
                    })
            }
        }
    }

    /// The frontier at `size`: any size of a full tree; a compact tree
    /// answers the sizes it kept a frontier of.
    pub fn frontier_at(&self, size: u64) -> Option<Frontier> {
        match self {
            LogTree::Full(tree) if size <= tree.len() => {
                Frontier::from_subtrees(size, |height, index| tree.subtree(height, index))
            }
            LogTree::Full(_) => None,
            LogTree::Compact(tree) => tree.frontiers().find(|f| f.len() == size).cloned(),
        }
    }

    /// The consistency proof from `old_size` to `new_size`.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProofError> {
        match self {
            LogTree::Full(tree) => tree.consistency_proof(old_size, new_size),
            LogTree::Compact(tree) => {
                let at = |size: u64| tree.frontiers().find(|f| f.len() == size);
                let (Some(old), Some(new), Some(path)) =
                    (at(old_size), at(new_size), tree.path.as_ref())
                else {
                    return Err(ProofError::NotRetained {
                        height: 0,
                        index: old_size,
                    });
                };
                frontier::consistency_proof(old, new, path)
            }
        }
    }
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
    /// The Merkle tree recomputed from the events, to answer "what was the
    /// root at size N" for a kept checkpoint or another replica.
    pub tree: LogTree,
    /// The root of the newest verified certificate as the log's
    /// certificate records state it (what `--since` proves consistency to).
    pub reached_root: Option<Hash>,
    /// The segments directory that was read (failures name its files).
    pub segments_dir: PathBuf,
    /// True when every segment was read to its end. When false, the checks
    /// after "records and hash chain" saw only a prefix (or nothing) and are
    /// `not_run` unless they found a failure; checks of projections of the
    /// log (index, trail, replicas compared) must not run on it either.
    pub complete: bool,
}

/// The note of a log check that saw only part of the log (or none).
pub const INCOMPLETE_LOG_NOTE: &str = "not run in full: the log could not be read to its end \
     (see records and hash chain); what it could not read was not checked";

impl LogVerification {
    /// A live replica's log ends in a record being written: the walk
    /// stopped there, but everything before it was checked in full. The
    /// caller (which dropped that one torn-tail failure) calls this to
    /// take the walk as complete again.
    pub fn accept_live_tail(&mut self) {
        self.complete = true;
        for check in &mut self.checks {
            if check.outcome == Outcome::NotRun
                && check.note.as_deref() == Some(INCOMPLETE_LOG_NOTE)
            {
                check.outcome = Outcome::Pass;
                check.note = None;
            }
        }
    }
}

/// The cluster id inside a Vellum origin ("vellum.local/cluster/<hex>").
pub fn cluster_from_origin(origin: &str) -> Option<u128> {
    let hex = origin.strip_prefix("vellum.local/cluster/")?;
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(hex, 16).ok()
}

/// Op records whose place, checksum, group flag and tree frontier a
/// streaming walk keeps, at most: certificates and seals name recent ops
/// (a certificate rides along with a later group commit; a cluster's
/// pipeline is 256 ops). An older one is found again by re-reading the log
/// from its start, one segment at a time (exact, only slower).
pub const OPS_WINDOW_MAX: usize = 4096;

/// What the walk keeps of one op record.
#[derive(Debug, Clone)]
struct OpSeen {
    op: u64,
    segment: u64,
    file_offset: u64,
    checksum: Hash,
    group_continues: bool,
    /// The tree after the op's events.
    frontier: Frontier,
}

/// What a re-read of the log looks for.
#[derive(Debug, Clone, Copy)]
enum Target {
    Op(u64),
    Size(u64),
}

/// The walk's tree: a frontier (always) and, for [`verify_log_dir`], the
/// full tree too.
struct WalkTree {
    frontier: Frontier,
    full: Option<MerkleTree>,
    /// The kept checkpoint's size and what a proof from it needs.
    since: Option<(u64, PathNodes)>,
    kept: Option<Frontier>,
    reached: Option<Frontier>,
}

impl WalkTree {
    fn push(&mut self, leaf: Hash) {
        match &mut self.since {
            Some((_, path)) => self
                .frontier
                .push_with(leaf, |height, index, hash| path.offer(height, index, hash)),
            None => self.frontier.push(leaf),
        }
        if let Some(full) = &mut self.full {
            full.push(leaf);
        }
        if self.since.as_ref().map(|(size, _)| *size) == Some(self.frontier.len()) {
            self.kept = Some(self.frontier.clone());
        }
    }

    fn len(&self) -> u64 {
        self.frontier.len()
    }
}

struct Walk<'a> {
    policy: &'a Policy,
    segments_dir: &'a Path,
    cluster: u128,
    sink: &'a mut dyn FactSink,
    /// The last [`OPS_WINDOW_MAX`] op records read.
    recent_ops: VecDeque<OpSeen>,
    ops_window: usize,
    ops: u64,
    /// The stream each key id was first seen with.
    key_streams: BTreeMap<u64, u64>,
    /// True when every segment was read to its end.
    complete: bool,
    tree: WalkTree,
    records: Check,
    seals: Check,
    merkle: Check,
    certificates: Check,
    reached: Option<Reached>,
    reached_root: Option<Hash>,
    last_certified_op: u64,
    /// The first op of the atomic group the walk is inside, if any.
    open_group: Option<u64>,
    /// An incremental walk: the kept op it resumed after; the log before
    /// it is not read (not even by a re-read).
    floor: Option<OpSeen>,
}

/// Verifies the segments in `segments_dir` against `policy`. `progress` is
/// called with the bytes of each segment file as it is read. Keeps every
/// fact and the full tree (memory grows with the log); see
/// [`verify_log_stream`] for the bounded walk.
pub fn verify_log_dir(
    segments_dir: &Path,
    policy: &Policy,
    progress: &mut dyn FnMut(u64),
) -> LogVerification {
    let mut facts = LogFacts::default();
    let mut verification = walk_log_dir(segments_dir, policy, None, None, &mut facts, progress);
    verification.reached_root = verification.reached.as_ref().and_then(|r| {
        let fact = facts.commits.iter().find(|c| c.tree_size == r.tree_size)?;
        Some(fact.root)
    });
    verification.facts = facts;
    verification
}

/// The same checks as [`verify_log_dir`], in memory independent of the
/// log's size: every fact goes to `sink` as it is read and is not kept; the
/// tree is kept as its frontier ([`LogTree::Compact`]). `since_size`: the
/// size of a kept checkpoint, so that its root and the consistency proof
/// from it to the newest certificate can be answered ([`check_since`]).
/// The returned facts hold only the op count.
pub fn verify_log_stream(
    segments_dir: &Path,
    policy: &Policy,
    since_size: Option<u64>,
    sink: &mut dyn FactSink,
    progress: &mut dyn FnMut(u64),
) -> LogVerification {
    let options = StreamOptions {
        since_size,
        ..StreamOptions::default()
    };
    verify_log_stream_with(segments_dir, policy, &options, sink, progress)
}

/// How a streaming walk runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// The size of a kept checkpoint (see [`verify_log_stream`]).
    pub since_size: Option<u64>,
    /// Recent op records kept (at least 1; [`OPS_WINDOW_MAX`] by default).
    /// Smaller windows re-read the log more often; tests use 1 to make
    /// every lookup of an older op go through the re-read.
    pub ops_window: usize,
}

impl Default for StreamOptions {
    fn default() -> StreamOptions {
        StreamOptions {
            since_size: None,
            ops_window: OPS_WINDOW_MAX,
        }
    }
}

/// [`verify_log_stream`] with options.
pub fn verify_log_stream_with(
    segments_dir: &Path,
    policy: &Policy,
    options: &StreamOptions,
    sink: &mut dyn FactSink,
    progress: &mut dyn FnMut(u64),
) -> LogVerification {
    let window = options.ops_window.clamp(1, OPS_WINDOW_MAX);
    walk_log_dir(
        segments_dir,
        policy,
        options.since_size,
        Some(window),
        sink,
        progress,
    )
}

fn walk_log_dir(
    segments_dir: &Path,
    policy: &Policy,
    since_size: Option<u64>,
    ops_window: Option<usize>,
    sink: &mut dyn FactSink,
    progress: &mut dyn FnMut(u64),
) -> LogVerification {
    let cluster = cluster_from_origin(&policy.origin);
    let mut walk = Walk::new(segments_dir, policy, since_size, ops_window, sink);
    let Some(cluster) = cluster else {
        walk.records.fail(
            FailureKind::ConfigMismatch,
            "policy",
            format!("origin {:?} is not a vellum cluster origin", policy.origin),
        );
        return walk.finish();
    };
    let indexes = match segment::list_segments(segments_dir) {
        Ok(indexes) => indexes,
        Err(ScanError::Corrupt {
            file,
            offset,
            reason,
        }) => {
            walk.records.fail(
                FailureKind::Damaged,
                format!("{} at byte {offset}", file.display()),
                reason,
            );
            return walk.finish();
        }
        Err(e) => {
            walk.records.fail(
                FailureKind::Unreadable,
                segments_dir.display().to_string(),
                e.to_string(),
            );
            return walk.finish();
        }
    };
    if indexes.is_empty() {
        // `vellum init` creates segment 0, so a log without it was deleted.
        walk.records.fail(
            FailureKind::Damaged,
            format!(
                "{} at byte 0",
                segments_dir.join(segment::segment_file_name(0)).display()
            ),
            "no segment files: segment 0 is missing (an initialized log always has it)",
        );
        return walk.finish();
    }
    walk.complete = walk.segments(&indexes, cluster, progress);
    walk.finish()
}

/// Verifies only the part of the log after a kept checkpoint
/// (`vellum verify --since`, see [`crate::since`]): the walk starts from
/// the kept frontier and the op record its signed chain head names, found
/// without reading the segments before it, and checks everything after it
/// as [`verify_log_stream_with`] does. The returned tree answers the kept
/// size and the consistency proof from it, so [`check_since`] runs as
/// after a full walk. `Err`: the kept op could not be found as signed (the
/// caller reads the whole log instead, which names what is wrong).
pub fn verify_log_since(
    segments_dir: &Path,
    policy: &Policy,
    start: &SinceStart,
    options: &StreamOptions,
    sink: &mut dyn FactSink,
    progress: &mut dyn FnMut(u64),
) -> Result<LogVerification, String> {
    let cluster = cluster_from_origin(&policy.origin)
        .ok_or_else(|| format!("origin {:?} is not a vellum cluster origin", policy.origin))?;
    let indexes = segment::list_segments(segments_dir).map_err(|e| e.to_string())?;
    let location = since::locate_op(segments_dir, &indexes, start.head.op)?;
    let header = location.header;
    let at = format!(
        "{} at byte {}",
        segments_dir
            .join(segment::segment_file_name(location.segment))
            .display(),
        location.offset
    );
    if header.checksum() != start.head.checksum || header.tree_size != start.size {
        return Err(format!(
            "op {} ({at}) is not the op the kept checkpoint's signed chain head names \
             (header checksum {}, tree size {})",
            start.head.op,
            to_hex(&header.checksum()),
            header.tree_size
        ));
    }
    let window = options.ops_window.clamp(1, OPS_WINDOW_MAX);
    let mut walk = Walk::new(segments_dir, policy, Some(start.size), Some(window), sink);
    walk.resume_after(start, &location, &at);
    let chain = Chain::after(
        cluster,
        segment::ChainTip {
            last_op: start.head.op,
            last_op_checksum: start.head.checksum,
            tree_size: start.size,
        },
    );
    walk.complete = walk.segments_from(&indexes, chain, Some(location), progress);
    Ok(walk.finish())
}

impl<'a> Walk<'a> {
    fn new(
        segments_dir: &'a Path,
        policy: &'a Policy,
        since_size: Option<u64>,
        ops_window: Option<usize>,
        sink: &'a mut dyn FactSink,
    ) -> Walk<'a> {
        Walk {
            policy,
            segments_dir,
            cluster: cluster_from_origin(&policy.origin).unwrap_or(0),
            sink,
            recent_ops: VecDeque::new(),
            ops_window: ops_window.unwrap_or(OPS_WINDOW_MAX),
            ops: 0,
            key_streams: BTreeMap::new(),
            complete: false,
            tree: WalkTree {
                frontier: Frontier::new(),
                full: ops_window.is_none().then(MerkleTree::default),
                since: since_size.map(|size| (size, PathNodes::new(size))),
                kept: (since_size == Some(0)).then(Frontier::new),
                reached: None,
            },
            records: Check::start("records and hash chain"),
            seals: Check::start("segment seals"),
            merkle: Check::start("merkle roots"),
            certificates: Check::start("certificate signatures"),
            reached: None,
            reached_root: None,
            last_certified_op: 0,
            open_group: None,
            floor: None,
        }
    }
}

impl Walk<'_> {
    /// Sets an incremental walk at the kept op (`location`, already matched
    /// with the signed chain head): the tree is the kept frontier, the kept
    /// checkpoint is the newest certified, and the ops before are not read.
    fn resume_after(&mut self, start: &SinceStart, location: &since::OpLocation, at: &str) {
        let header = &location.header;
        let kept = OpSeen {
            op: start.head.op,
            segment: location.segment,
            file_offset: location.offset,
            checksum: start.head.checksum,
            group_continues: header.group_continues(),
            frontier: start.frontier.clone(),
        };
        if kept.group_continues {
            self.certificates.fail(
                FailureKind::CertificateInvalid,
                at,
                format!(
                    "the kept checkpoint names op {}, inside an atomic group (only a group's \
                     last op may be certified)",
                    start.head.op
                ),
            );
        }
        self.ops = start.head.op;
        self.last_certified_op = start.head.op;
        self.tree.frontier = start.frontier.clone();
        self.tree.kept = Some(start.frontier.clone());
        self.tree.reached = Some(start.frontier.clone());
        self.reached = Some(Reached {
            tree_size: start.size,
            root: to_hex(&start.root),
            signed_by: start.signed_by.clone(),
            checkpoint: start.text.clone(),
        });
        self.reached_root = Some(start.root);
        self.records.count(
            "ops before the kept checkpoint (not re-read)",
            start.head.op,
        );
        self.merkle.count(
            "events before the kept checkpoint (not re-hashed)",
            start.size,
        );
        self.records.note = Some(since::INCREMENTAL_NOTE.to_string());
        self.remember(kept.clone());
        self.floor = Some(kept);
    }

    /// Checks every segment in order; false when one could not be followed
    /// to its end.
    fn segments(&mut self, indexes: &[u64], cluster: u128, progress: &mut dyn FnMut(u64)) -> bool {
        self.segments_from(indexes, Chain::genesis(cluster), None, progress)
    }

    /// Checks the segments from `resume`'s (or from the first), continuing
    /// `chain`.
    fn segments_from(
        &mut self,
        indexes: &[u64],
        mut chain: Chain,
        resume: Option<since::OpLocation>,
        progress: &mut dyn FnMut(u64),
    ) -> bool {
        let first = resume.as_ref().map_or(0, |l| l.segment);
        let mut resume = resume;
        let first = usize::try_from(first).expect("a segment index read from the directory");
        for (position, index) in indexes.iter().copied().enumerate().skip(first) {
            let path = self.segment_path(index);
            assert_eq!(index, position as u64, "list_segments returns 0, 1, 2, ...");
            let (bytes, from) = match resume.take() {
                Some(location) => (location.bytes, location.resume),
                None => match std::fs::read(&path) {
                    Ok(bytes) => (bytes, Resume::START),
                    Err(e) => {
                        self.records.fail(
                            FailureKind::Unreadable,
                            path.display().to_string(),
                            format!("cannot read: {e}"),
                        );
                        return false;
                    }
                },
            };
            progress((bytes.len() as u64).saturating_sub(from.offset - Resume::START.offset));
            let is_last = position + 1 == indexes.len();
            if !self.segment(&path, index, &bytes, from, &mut chain, is_last) {
                return false;
            }
        }
        true
    }

    fn segment_path(&self, index: u64) -> PathBuf {
        self.segments_dir.join(segment::segment_file_name(index))
    }

    /// Checks one segment; false when the log cannot be followed past it.
    fn segment(
        &mut self,
        path: &Path,
        index: u64,
        bytes: &[u8],
        from: Resume,
        chain: &mut Chain,
        is_last: bool,
    ) -> bool {
        let scan = segment::scan_segment_from(bytes, index, self.cluster, chain, from, is_last);
        self.records.count("segments", 1);
        let skipped = from.offset - Resume::START.offset;
        self.records
            .count("bytes", (bytes.len() as u64).saturating_sub(skipped));
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
                FailureKind::Damaged,
                here(bytes.len() as u64),
                "a segment that is not the last is not sealed (it ends here without a seal)",
            ),
            SegmentEnd::TornTail { offset, bytes } => {
                // Only the newest segment is written to: an incomplete
                // record at the end of an older one is damage.
                let kind = match is_last {
                    true => FailureKind::Torn,
                    false => FailureKind::Damaged,
                };
                self.records.fail(
                    kind,
                    here(offset),
                    format!("{bytes} bytes that are not a complete record (torn write or damage)"),
                );
                return false;
            }
            SegmentEnd::Corrupt { offset, reason } => {
                self.records
                    .fail(FailureKind::Damaged, here(offset), reason);
                return false;
            }
        }
        true
    }

    fn op(&mut self, header: &OpHeader, body: &[u8], segment: u64, offset: u64, at: &str) {
        self.records.count("ops", 1);
        self.ops += 1;
        self.check_group(header, at);
        self.sink.op(&OpFact {
            op: header.op,
            checksum: header.checksum(),
            segment,
            file_offset: offset,
            stream: header.stream,
            stream_offset: header.stream_offset,
            event_count: header.event_count,
            group_continues: header.group_continues(),
        });
        match self.key_streams.get(&header.key_id) {
            Some(&stream) if stream != header.stream => self.records.fail(
                FailureKind::ChainBroken,
                at,
                format!(
                    "op {} uses key id {} of stream {stream} for stream {}",
                    header.op, header.key_id, header.stream
                ),
            ),
            Some(_) => {}
            None => {
                self.key_streams.insert(header.key_id, header.stream);
            }
        }
        self.events(header, body, segment, offset, at);
        self.remember(OpSeen {
            op: self.ops,
            segment,
            file_offset: offset,
            checksum: header.checksum(),
            group_continues: header.group_continues(),
            frontier: self.tree.frontier.clone(),
        });
    }

    /// The op's events: decoded, leaves pushed, facts given to the sink.
    fn events(&mut self, header: &OpHeader, body: &[u8], segment: u64, offset: u64, at: &str) {
        let frames = match record::decode_events(
            body,
            header.event_count,
            offset + record::HEADER_BYTES as u64,
        ) {
            Ok(frames) => frames,
            Err(e) => return self.records.fail(FailureKind::Damaged, at, e.to_string()),
        };
        if header.global_position != self.tree.len() {
            self.merkle.fail(
                FailureKind::ChainBroken,
                at,
                format!(
                    "op {} starts at position {}, expected {}",
                    header.op,
                    header.global_position,
                    self.tree.len()
                ),
            );
        }
        for (frame, i) in frames.iter().zip(0u64..) {
            let leaf_hash = LeafPreimage::of_event(header, frame, i).leaf_hash();
            self.sink.event(&EventFact {
                position: self.tree.len(),
                stream: header.stream,
                stream_offset: header.stream_offset + i,
                op: header.op,
                leaf_hash,
                commitment: frame.commitment,
                segment,
                file_offset: offset,
            });
            self.tree.push(leaf_hash);
        }
        self.merkle.count("events", frames.len() as u64);
        self.sink.key(header.key_id, header.stream);
    }

    fn remember(&mut self, seen: OpSeen) {
        if self.recent_ops.len() >= self.ops_window {
            self.recent_ops.pop_front();
        }
        self.recent_ops.push_back(seen);
    }

    /// The `ordinal`-th op record read (1-based), if the walk read it.
    fn op_seen(&self, ordinal: u64) -> Option<OpSeen> {
        if ordinal == 0 || ordinal > self.ops {
            return None;
        }
        if let Some(floor) = self.floor.as_ref().filter(|f| ordinal <= f.op) {
            // Before the kept op nothing is read: only the kept op is known.
            return (ordinal == floor.op).then(|| floor.clone());
        }
        let first = self.recent_ops.front().map_or(u64::MAX, |o| o.op);
        if ordinal >= first {
            let index = usize::try_from(ordinal - first).ok()?;
            return self.recent_ops.get(index).cloned();
        }
        match self.rescan(Target::Op(ordinal))? {
            Found::Op(seen) => Some(seen),
            Found::Frontier(_) => None,
        }
    }

    /// The root at `size` and, for a streaming walk, the frontier there.
    fn root_at(&self, size: u64) -> Result<(Hash, Option<Frontier>), ProofError> {
        if let Some(full) = &self.tree.full {
            return full.root_at(size).map(|root| (root, None));
        }
        let len = self.tree.len();
        if size > len {
            return Err(ProofError::SizeBeyondTree { size, len });
        }
        if let Some(floor) = &self.floor {
            match size.cmp(&floor.frontier.len()) {
                std::cmp::Ordering::Less => {
                    return Err(ProofError::NotRetained {
                        height: 0,
                        index: size,
                    });
                }
                std::cmp::Ordering::Equal => {
                    return Ok((floor.frontier.root(), Some(floor.frontier.clone())));
                }
                std::cmp::Ordering::Greater => {}
            }
        }
        let frontier = if size == len {
            Some(self.tree.frontier.clone())
        } else {
            self.recent_ops
                .iter()
                .rev()
                .find(|o| o.frontier.len() == size)
                .map(|o| o.frontier.clone())
                .or_else(|| match self.rescan(Target::Size(size))? {
                    Found::Frontier(frontier) => Some(frontier),
                    Found::Op(_) => None,
                })
        };
        let frontier = frontier.ok_or(ProofError::NotRetained {
            height: 0,
            index: size,
        })?;
        Ok((frontier.root(), Some(frontier)))
    }

    /// Re-reads the log from its start, one segment at a time, as far as
    /// `target`: an op the window no longer holds, or the tree at a size
    /// that is not the end of a recent op. Only logs whose certificates
    /// or seals name old ops (damage, or a rewrite) come here.
    fn rescan(&self, target: Target) -> Option<Found> {
        let indexes = segment::list_segments(self.segments_dir).ok()?;
        let mut chain = Chain::genesis(self.cluster);
        let mut frontier = Frontier::new();
        let mut ordinal = 0u64;
        let size_reached =
            |frontier: &Frontier| matches!(target, Target::Size(s) if s == frontier.len());
        for index in indexes {
            let bytes = std::fs::read(self.segment_path(index)).ok()?;
            let scan = segment::scan_segment_with(&bytes, index, self.cluster, &mut chain);
            for scanned in &scan.records {
                if scanned.header.kind != RecordKind::Op {
                    continue;
                }
                let header = &scanned.header;
                ordinal += 1;
                let body = &bytes[scanned.body_range.clone()];
                let at = scanned.offset + record::HEADER_BYTES as u64;
                if let Ok(frames) = record::decode_events(body, header.event_count, at) {
                    for (frame, i) in frames.iter().zip(0u64..) {
                        if size_reached(&frontier) {
                            return Some(Found::Frontier(frontier));
                        }
                        frontier.push(LeafPreimage::of_event(header, frame, i).leaf_hash());
                    }
                }
                if size_reached(&frontier) {
                    return Some(Found::Frontier(frontier));
                }
                if matches!(target, Target::Op(o) if o == ordinal) {
                    return Some(Found::Op(OpSeen {
                        op: ordinal,
                        segment: index,
                        file_offset: scanned.offset,
                        checksum: header.checksum(),
                        group_continues: header.group_continues(),
                        frontier,
                    }));
                }
            }
            if matches!(
                scan.end,
                SegmentEnd::TornTail { .. } | SegmentEnd::Corrupt { .. }
            ) {
                break;
            }
        }
        size_reached(&frontier).then_some(Found::Frontier(frontier))
    }

    /// Atomic groups (version 3): a group is a run of ops that continue
    /// it, closed by a trail op (access-trail stream, trail client) that
    /// holds their access records; a trail op closes a group, never
    /// stands alone.
    fn check_group(&mut self, header: &OpHeader, at: &str) {
        let continues = header.group_continues();
        let trail_op = header.stream == record::ACCESS_TRAIL_STREAM
            && header.client_id == record::TRAIL_CLIENT;
        match (self.open_group, continues) {
            (None, true) => self.open_group = Some(header.op),
            (Some(_), true) => {}
            (Some(first), false) => {
                self.open_group = None;
                if trail_op {
                    self.records.count("atomic groups", 1);
                } else {
                    self.records.fail(
                        FailureKind::ChainBroken,
                        at,
                        format!(
                            "op {} closes the atomic group of ops {first}..{} but is not a trail op",
                            header.op, header.op
                        ),
                    );
                }
            }
            (None, false) if trail_op => self.records.fail(
                FailureKind::ChainBroken,
                at,
                format!("trail op {} closes no atomic group", header.op),
            ),
            (None, false) => {}
        }
    }

    fn certificate(&mut self, header: &OpHeader, body: &[u8], at: &str) {
        self.certificates.count("certificates", 1);
        if self.floor.as_ref().is_some_and(|f| header.op < f.op) {
            return self.certificate_before_floor(header, body, at);
        }
        // The op record read `max(op, 1)`-th (as the walk always looked it up).
        let inside_group = self
            .op_seen(header.op.max(1))
            .is_some_and(|o| o.group_continues);
        if inside_group {
            self.certificates.fail(
                FailureKind::CertificateInvalid,
                at,
                format!(
                    "certificate names op {}, inside an atomic group (only a group's last op may be certified)",
                    header.op
                ),
            );
        }
        let text = match std::str::from_utf8(body) {
            Ok(text) => text,
            Err(_) => {
                return self.certificates.fail(
                    FailureKind::CertificateInvalid,
                    at,
                    "certificate is not utf-8 text",
                );
            }
        };
        let certificate = match Certificate::parse(text) {
            Ok(certificate) => certificate,
            Err(e) => {
                return self
                    .certificates
                    .fail(FailureKind::CertificateInvalid, at, e.to_string());
            }
        };
        let size = certificate.checkpoint.size;
        if size != header.tree_size {
            self.merkle.fail(
                FailureKind::RootMismatch,
                at,
                format!(
                    "certificate size {size} differs from its record's tree size {}",
                    header.tree_size
                ),
            );
        }
        let head_matches = self.check_chain_head(&certificate, header.op, at);
        let (root_matches, frontier) = match self.root_at(size) {
            Ok((root, frontier))
                if root == certificate.checkpoint.root && size == header.tree_size =>
            {
                self.merkle.count("roots recomputed", 1);
                (true, frontier)
            }
            Ok((root, _)) if root == certificate.checkpoint.root => (false, None),
            Ok((root, _)) => {
                self.merkle.fail(
                    FailureKind::RootMismatch,
                    at,
                    format!(
                        "certificate root {} but the events give {}",
                        to_hex(&certificate.checkpoint.root),
                        to_hex(&root)
                    ),
                );
                (false, None)
            }
            Err(e) => {
                self.merkle.fail(
                    FailureKind::RootMismatch,
                    at,
                    format!("certificate for tree size {size}: {e}"),
                );
                (false, None)
            }
        };
        match certificate.verify(self.policy) {
            Ok(verified) => {
                self.certificates.count("verified", 1);
                if root_matches && head_matches {
                    self.certified(header.op, &certificate, text, &verified.signers, frontier);
                }
            }
            Err(e) => self
                .certificates
                .fail(FailureKind::CertificateInvalid, at, e.to_string()),
        }
        self.sink.commit(&CommitFact {
            op: header.op,
            view: header.view,
            tree_size: size,
            root: certificate.checkpoint.root,
            certificate: text.to_string(),
        });
    }

    /// A certificate record after the kept op that names an op before it
    /// (written late, beside newer ops): its signatures are checked, but
    /// its root is not recomputed (the events before the kept checkpoint
    /// are not read; the kept root already covers them).
    fn certificate_before_floor(&mut self, header: &OpHeader, body: &[u8], at: &str) {
        self.certificates.count(
            "certificates of ops before the kept checkpoint (root not recomputed)",
            1,
        );
        let parsed = std::str::from_utf8(body)
            .map_err(|_| "certificate is not utf-8 text".to_string())
            .and_then(|text| {
                Certificate::parse(text)
                    .map(|c| (text, c))
                    .map_err(|e| e.to_string())
            });
        let (text, certificate) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                return self
                    .certificates
                    .fail(FailureKind::CertificateInvalid, at, e);
            }
        };
        match certificate.verify(self.policy) {
            Ok(_) => self.certificates.count("verified", 1),
            Err(e) => self
                .certificates
                .fail(FailureKind::CertificateInvalid, at, e.to_string()),
        }
        self.sink.commit(&CommitFact {
            op: header.op,
            view: header.view,
            tree_size: certificate.checkpoint.size,
            root: certificate.checkpoint.root,
            certificate: text.to_string(),
        });
    }

    /// Checks the certificate's signed chain head: exactly one
    /// `vellum-head` extension, naming the certified op and its header
    /// checksum. Without it the signatures would cover the leaves but not
    /// the header fields (view, client, request, timestamp, key id).
    fn check_chain_head(&mut self, certificate: &Certificate, certified_op: u64, at: &str) -> bool {
        let heads = ChainHead::all_in(&certificate.checkpoint);
        let head = match heads.as_slice() {
            [Ok(head)] if head.op == certified_op => *head,
            _ => {
                self.certificates.fail(FailureKind::CertificateInvalid,
                    at,
                    format!(
                        "certificate must carry exactly one signed chain head naming op {certified_op}, found {}",
                        heads.len()
                    ),
                );
                return false;
            }
        };
        let in_log = self.op_seen(head.op).map(|o| o.checksum) == Some(head.checksum);
        if in_log {
            self.certificates.count("chain heads matched", 1);
        } else {
            self.certificates.fail(
                FailureKind::CertificateInvalid,
                at,
                format!(
                    "signed chain head {:?} does not match the op headers in the log",
                    head.line()
                ),
            );
        }
        in_log
    }

    /// Notes a certificate whose signatures and root both verified.
    fn certified(
        &mut self,
        op: u64,
        certificate: &Certificate,
        text: &str,
        signers: &[Verifier],
        frontier: Option<Frontier>,
    ) {
        self.last_certified_op = self.last_certified_op.max(op);
        let size = certificate.checkpoint.size;
        if self.reached.as_ref().is_none_or(|r| r.tree_size <= size) {
            self.reached = Some(Reached {
                tree_size: size,
                root: to_hex(&certificate.checkpoint.root),
                signed_by: signer_names(signers),
                checkpoint: text.to_string(),
            });
            self.reached_root = Some(certificate.checkpoint.root);
            self.tree.reached = frontier;
        }
    }

    fn seal(&mut self, header: &OpHeader, body: &[u8], offset: u64, at: &str) {
        let seal = match SealBody::decode(body, offset + record::HEADER_BYTES as u64) {
            Ok(seal) => seal,
            Err(e) => return self.seals.fail(FailureKind::Damaged, at, e.to_string()),
        };
        match self.root_at(header.tree_size) {
            Ok((root, _)) if root == seal.tree_root => self.merkle.count("roots recomputed", 1),
            Ok(_) => self.merkle.fail(
                FailureKind::RootMismatch,
                at,
                "the seal's merkle root does not match the events before it",
            ),
            Err(e) => self.merkle.fail(
                FailureKind::RootMismatch,
                at,
                format!("seal for tree size {}: {e}", header.tree_size),
            ),
        }
    }

    fn finish(mut self) -> LogVerification {
        let uncertified = self.ops - self.last_certified_op.min(self.ops);
        self.certificates
            .count("ops after the last certificate", uncertified);
        if self.complete && uncertified > 0 {
            self.fail_uncertified_tail(uncertified);
        }
        if !self.complete {
            // Zero counts or a prefix prove nothing about the rest.
            for check in [&mut self.seals, &mut self.merkle, &mut self.certificates] {
                check.mark_not_run(INCOMPLETE_LOG_NOTE);
            }
        }
        let tree = match self.tree.full {
            Some(full) => LogTree::Full(full),
            None => LogTree::Compact(CompactTree {
                end: self.tree.frontier,
                reached: self.tree.reached,
                kept: self.tree.kept,
                path: self.tree.since.map(|(_, path)| path),
            }),
        };
        LogVerification {
            checks: vec![
                self.records.finish(),
                self.seals.finish(),
                self.merkle.finish(),
                self.certificates.finish(),
            ],
            facts: LogFacts {
                ops: self.ops,
                ..LogFacts::default()
            },
            reached: self.reached,
            reached_root: self.reached_root,
            tree,
            segments_dir: self.segments_dir.to_path_buf(),
            complete: self.complete,
        }
    }

    /// The log ends with ops that no verified certificate covers: nothing
    /// signed vouches for them, so they could have been rewritten at will.
    fn fail_uncertified_tail(&mut self, uncertified: u64) {
        let first = self.last_certified_op + 1;
        let seen = self
            .op_seen(first)
            .expect("the first uncertified op was read: it is at most the op count");
        let location = format!(
            "{} at byte {}",
            self.segment_path(seen.segment).display(),
            seen.file_offset
        );
        let (kind, message) = if self.last_certified_op == 0 {
            (
                FailureKind::NoCertificate,
                format!(
                    "the log holds {uncertified} ops but no valid certificate covers any of them"
                ),
            )
        } else {
            (
                FailureKind::Uncertified,
                format!(
                    "ops {first} to {} ({uncertified} ops) are not covered by any valid certificate: \
                 the log must end with one (a crash before the certificate was written is \
                 repaired by opening the log; otherwise certificates were removed)",
                    self.ops
                ),
            )
        };
        self.certificates.fail(kind, location, message);
    }
}

/// What a re-read of the log found.
enum Found {
    Op(OpSeen),
    Frontier(Frontier),
}

/// `name+keyid` of each signer, as reports show them.
pub fn signer_names(signers: &[Verifier]) -> Vec<String> {
    signers
        .iter()
        .map(|v| format!("{}+{}", v.name(), to_hex(&v.key_id())))
        .collect()
}

/// The name of the `--since` check.
pub const SINCE_CHECK: &str = "kept checkpoint (--since)";

/// Checks a checkpoint the auditor kept from an earlier run (`source` names
/// where it came from): its signatures must meet the policy's quorum, and
/// the log's tree at its size must have exactly its root — the log only
/// grew since. A consistency proof from it to the newest verified
/// certificate is built and checked too (RFC 9162), as a third party would.
/// Returns the check and the kept checkpoint as the report shows it.
pub fn check_since(
    kept_text: &str,
    source: &str,
    policy: &Policy,
    log: &LogVerification,
) -> (Check, Option<Reached>) {
    let mut check = Check::start(SINCE_CHECK);
    if !log.complete {
        return (
            Check::not_run(
                SINCE_CHECK,
                "the log could not be read to its end (see records and hash chain)",
            ),
            None,
        );
    }
    let certificate = match Certificate::parse(kept_text) {
        Ok(certificate) => certificate,
        Err(e) => {
            check.fail(
                FailureKind::Unreadable,
                source,
                format!("not a signed checkpoint: {e}"),
            );
            return (check.finish(), None);
        }
    };
    let mut kept = Reached {
        tree_size: certificate.checkpoint.size,
        root: to_hex(&certificate.checkpoint.root),
        signed_by: Vec::new(),
        checkpoint: kept_text.to_string(),
    };
    match certificate.verify(policy) {
        Ok(verified) => {
            check.count("distinct pinned signatures", verified.signers.len() as u64);
            kept.signed_by = signer_names(&verified.signers);
        }
        Err(e) => check.fail(
            FailureKind::CertificateInvalid,
            source,
            format!("the kept checkpoint is not certified under the pinned policy: {e}"),
        ),
    }
    check_kept_in_log(&mut check, source, &certificate.checkpoint, log);
    (check.finish(), Some(kept))
}

/// The log must hold the kept tree unchanged and a verified certificate at
/// or beyond it.
fn check_kept_in_log(check: &mut Check, source: &str, kept: &Checkpoint, log: &LogVerification) {
    let len = log.tree.len();
    let at = format!("{source}: tree size {}", kept.size);
    if kept.size > len {
        return check.fail(
            FailureKind::HistoryRewritten,
            at,
            format!(
                "the kept checkpoint is beyond the log: it has tree size {} but the log holds \
                 only {len} events (the log was truncated or rolled back since)",
                kept.size
            ),
        );
    }
    let root = log
        .tree
        .root_at(kept.size)
        .expect("size checked against len");
    if root != kept.root {
        return check.fail(
            FailureKind::HistoryRewritten,
            at,
            format!(
                "history was rewritten: the log's root at tree size {} is {} but the kept \
                 checkpoint has {}",
                kept.size,
                to_hex(&root),
                to_hex(&kept.root)
            ),
        );
    }
    check.count("kept tree size", kept.size);
    let newest = log
        .reached
        .as_ref()
        .zip(log.reached_root)
        .map(|(r, root)| (r.tree_size, root));
    match newest {
        None => check.fail(
            FailureKind::HistoryRewritten,
            at,
            "no verified certificate in the log covers the kept checkpoint",
        ),
        Some((size, _)) if size < kept.size => check.fail(
            FailureKind::HistoryRewritten,
            at,
            format!(
                "the kept checkpoint is beyond the newest verified certificate (tree size {size})"
            ),
        ),
        Some((size, _)) if kept.size == 0 || size == kept.size => {}
        Some((size, new_root)) => {
            let proof = log.tree.consistency_proof(kept.size, size);
            let checked = proof.and_then(|proof| {
                merkle::verify_consistency(kept.size, size, &kept.root, &new_root, &proof)
                    .map(|()| proof.len())
            });
            match checked {
                Ok(hashes) => check.count("consistency proof hashes", hashes as u64),
                Err(e) => check.fail(
                    FailureKind::HistoryRewritten,
                    at,
                    format!("no consistency from the kept checkpoint to tree size {size}: {e}"),
                ),
            }
        }
    }
}

/// One replica's verified log, named for the report ("replica 1").
#[derive(Debug, Clone, Copy)]
pub struct ReplicaLog<'a> {
    /// How failures name the replica.
    pub name: &'a str,
    /// Its verification.
    pub log: &'a LogVerification,
}

/// Compares the logs of a cluster's replicas, each already verified on its
/// own: op header chains agree op by op on their common prefix, the newest
/// certificates are consistent, and every certificate carries a quorum of
/// distinct pinned keys of a policy whose quorum is at least f+1 of the
/// `replica_count` replicas (P4).
pub fn compare_replicas(
    replicas: &[ReplicaLog<'_>],
    policy: &Policy,
    replica_count: usize,
) -> Vec<Check> {
    // A replica whose log could not be read to its end has failed on its
    // own; comparing its prefix would only add knock-on failures.
    let readable: Vec<ReplicaLog<'_>> = replicas
        .iter()
        .copied()
        .filter(|r| r.log.complete)
        .collect();
    let unreadable: Vec<&str> = replicas
        .iter()
        .filter(|r| !r.log.complete)
        .map(|r| r.name)
        .collect();
    let mut checks = vec![
        compare_chains(&readable),
        compare_certificates(&readable),
        check_quorums(&readable, policy, replica_count),
    ];
    if !unreadable.is_empty() {
        let why = format!(
            "not compared: {} could not be read to the end (see their records checks)",
            unreadable.join(", ")
        );
        for (i, check) in checks.iter_mut().enumerate() {
            // Comparing needs two readable replicas; the quorum check
            // (index 2) looks at each readable replica on its own.
            if i < 2 && readable.len() < 2 {
                check.mark_not_run(&why);
            } else if check.note.is_none() {
                check.note = Some(why.clone());
            }
        }
    }
    checks
}

/// The file and byte of op fact `fact` of `log`.
fn op_place(log: &LogVerification, fact: &OpFact) -> String {
    let file = log
        .segments_dir
        .join(segment::segment_file_name(fact.segment));
    format!("{} at byte {}", file.display(), fact.file_offset)
}

fn compare_chains(replicas: &[ReplicaLog<'_>]) -> Check {
    let mut check = Check::start("replica op header chains");
    for (i, a) in replicas.iter().enumerate() {
        for b in &replicas[i + 1..] {
            check.count("replica pairs", 1);
            // Aligned by op number: an incremental run's facts start after
            // its kept op, a full one's at op 1, and one replica may have
            // been read whole while the others were not.
            let (ours, theirs) = aligned_ops(&a.log.facts.op_headers, &b.log.facts.op_headers);
            let common = ours.len().min(theirs.len());
            check.count("ops compared", common as u64);
            let diverged = ours
                .iter()
                .zip(theirs)
                .find(|(x, y)| x.checksum != y.checksum);
            if let Some((x, y)) = diverged {
                check.fail(
                    FailureKind::ReplicaDivergence,
                    format!("{} op {} ({})", b.name, y.op, op_place(b.log, y)),
                    format!(
                        "op header differs from {}'s op {} ({}): checksum {} vs {}; the \
                         replicas' histories diverge from here",
                        a.name,
                        x.op,
                        op_place(a.log, x),
                        to_hex(&y.checksum),
                        to_hex(&x.checksum)
                    ),
                );
            }
        }
    }
    check.finish()
}

/// The op facts of `ours` and `theirs` from the first op both hold on
/// (each list is dense in op numbers, in order).
fn aligned_ops<'a>(ours: &'a [OpFact], theirs: &'a [OpFact]) -> (&'a [OpFact], &'a [OpFact]) {
    let (Some(a), Some(b)) = (ours.first(), theirs.first()) else {
        return (&[], &[]);
    };
    let skip = |first: u64, list: &'a [OpFact]| {
        let n = usize::try_from(a.op.max(b.op) - first).unwrap_or(usize::MAX);
        list.get(n..).unwrap_or(&[])
    };
    (skip(a.op, ours), skip(b.op, theirs))
}

fn compare_certificates(replicas: &[ReplicaLog<'_>]) -> Check {
    let mut check = Check::start("replica certificates consistent");
    for (i, a) in replicas.iter().enumerate() {
        for b in &replicas[i + 1..] {
            let (Some(ra), Some(rb)) = (&a.log.reached, &b.log.reached) else {
                check.count("pairs without a certificate", 1);
                continue;
            };
            let (small, small_reached, big) = match ra.tree_size <= rb.tree_size {
                true => (a, ra, b),
                false => (b, rb, a),
            };
            check.count("replica pairs", 1);
            let at = format!(
                "{} certificate at tree size {}",
                small.name, small_reached.tree_size
            );
            match big.log.tree.root_at(small_reached.tree_size) {
                Ok(root) if to_hex(&root) == small_reached.root => {}
                Ok(root) => check.fail(
                    FailureKind::ReplicaDivergence,
                    at,
                    format!(
                        "root {} but {}'s log has root {} at that size: the certified \
                         histories disagree",
                        small_reached.root,
                        big.name,
                        to_hex(&root)
                    ),
                ),
                // An incremental run keeps the roots of a few sizes only
                // (its start, its newest certificate, its end): a pair at
                // another size is not compared here; the op header chains
                // (which fix every leaf) are, op by op.
                Err(ProofError::NotRetained { .. }) => {
                    check.count("pairs at a size an incremental run kept no root of", 1);
                }
                Err(e) => check.fail(
                    FailureKind::ReplicaDivergence,
                    at,
                    format!("{}'s log: {e}", big.name),
                ),
            }
        }
    }
    check.finish()
}

fn check_quorums(replicas: &[ReplicaLog<'_>], policy: &Policy, replica_count: usize) -> Check {
    let mut check = Check::start("certificate quorum (distinct pinned keys)");
    let needed = replica_count / 2 + 1;
    if policy.quorum < needed {
        check.fail(
            FailureKind::ConfigMismatch,
            "policy",
            format!(
                "quorum {} is below f+1 = {needed} for {replica_count} replicas: fewer keys \
                 than a quorum could sign a forged history",
                policy.quorum
            ),
        );
    }
    for replica in replicas {
        for fact in &replica.log.facts.commits {
            let at = format!(
                "{} certificate of op {} (tree size {})",
                replica.name, fact.op, fact.tree_size
            );
            let verified = Certificate::parse(&fact.certificate)
                .map_err(|e| e.to_string())
                .and_then(|c| c.verify(policy).map_err(|e| e.to_string()));
            match verified {
                Ok(v) if v.signers.len() >= needed => {
                    check.count("certificates with a quorum", 1);
                }
                Ok(v) => check.fail(
                    FailureKind::CertificateInvalid,
                    at,
                    format!(
                        "{} distinct pinned keys signed, f+1 = {needed} needed",
                        v.signers.len()
                    ),
                ),
                Err(e) => check.fail(FailureKind::CertificateInvalid, at, e),
            }
        }
    }
    check.finish()
}

/// The segments directory of a data directory.
pub fn segments_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("segments")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::origin_for_cluster;
    use crate::note::Signer;

    fn policy(cluster: u128) -> Policy {
        let signer = Signer::from_seed("r0", [3; 32]).expect("signer");
        Policy::new(&origin_for_cluster(cluster), vec![signer.verifier()], 1).expect("policy")
    }

    /// Goal: the cluster id round-trips through the origin; other origins name none.
    #[test]
    fn cluster_from_origin_reads_only_vellum_origins() {
        let cluster = 0x0123_4567_89ab_cdef_0011_2233_4455_6677u128;
        assert_eq!(
            cluster_from_origin(&origin_for_cluster(cluster)),
            Some(cluster)
        );
        for other in [
            "example.com/log",
            "vellum.local/cluster/123",
            "vellum.local/cluster/0123456789abcdef00112233445566zz",
        ] {
            assert_eq!(cluster_from_origin(other), None, "{other}");
        }
    }

    /// Goal: a segments directory without segment 0 fails, naming that file.
    #[test]
    fn verify_empty_segments_dir_fails_naming_segment_zero() {
        let dir = std::env::temp_dir().join(format!("vellum-verify-empty-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let verification = verify_log_dir(&dir, &policy(7), &mut |_| {});
        let _ = std::fs::remove_dir_all(&dir);
        let records = &verification.checks[0];
        assert!(!records.passed());
        let expected = format!(
            "{} at byte 0",
            dir.join(segment::segment_file_name(0)).display()
        );
        assert_eq!(records.failures[0].location, expected);
    }

    /// Goal: a policy whose origin names no vellum cluster fails before any file is read.
    #[test]
    fn verify_refuses_a_foreign_origin_policy() {
        let signer = Signer::from_seed("r0", [3; 32]).expect("signer");
        let foreign = Policy::new("example.com/log", vec![signer.verifier()], 1).expect("policy");
        let mut read = 0u64;
        let verification = verify_log_dir(Path::new("/nonexistent"), &foreign, &mut |n| read += n);
        assert!(!verification.checks[0].passed());
        assert_eq!(read, 0);
    }
}
