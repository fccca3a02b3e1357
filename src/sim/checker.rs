//! The simulator's checkers: the safety properties of the replicated log,
//! checked after every step of every replica (DESIGN §2 P1, P4; §7).
//!
//! The checker keeps the agreed committed log: the first replica to commit
//! an op fixes its header, and every other replica that commits that op
//! (now or after any number of restarts) must hold the very same header.
//! Beside it, an oracle Merkle tree of the agreed log's events gives the
//! root every certificate must sign. What is checked:
//! - committed prefixes agree (same header checksum per op) and chain
//!   (each parent is the previous op's checksum);
//! - views, log views and commit numbers never go back, also across
//!   restarts (against the durable state the replica saved);
//! - stream offsets and global positions are dense;
//! - no (client, request) is committed twice;
//! - every acknowledged append stays at its op, stream and offsets, and
//!   the op carries the digest of the very request the client sent;
//! - every certificate carries >= quorum valid signatures of distinct
//!   replicas on the root of the agreed log at its size.

use std::collections::{BTreeMap, HashMap, HashSet};

use vellum_audit::checkpoint::Certificate;
use vellum_audit::hash::{Hash, sha256, to_hex};
use vellum_audit::merkle::MerkleTree;
use vellum_audit::policy::Policy;
use vellum_audit::record::{OpHeader, Record, RecordKind, genesis_parent};
use vellum_audit::verify::ChainHead;

use crate::vsr::{DurableState, ReplyBody};

use super::records::leaf_hashes;

/// A broken safety property, with what and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Two replicas committed different headers at the same op.
    #[error("replica {replica} committed op {op} with header {found}, the agreed log has {agreed}")]
    Divergence {
        replica: u8,
        op: u64,
        agreed: String,
        found: String,
    },
    /// A committed header does not chain, or its positions are not dense.
    #[error("committed op {op}: {reason}")]
    BadOp { op: u64, reason: String },
    /// The same client request committed at two ops.
    #[error("client {client:x} request {request} committed twice: ops {first} and {second}")]
    DuplicateRequest {
        client: u128,
        request: u64,
        first: u64,
        second: u64,
    },
    /// A view, log view or commit number went back.
    #[error("replica {replica}: {what} went back from {before} to {after}")]
    WentBack {
        replica: u8,
        what: &'static str,
        before: u64,
        after: u64,
    },
    /// An acknowledged append is not where its reply said.
    #[error("acknowledged append of client {client:x} request {request} at op {op}: {reason}")]
    LostAck {
        client: u128,
        request: u64,
        op: u64,
        reason: String,
    },
    /// A replica acknowledged (prepare_ok) an op its disk has not made durable.
    #[error("replica {replica} acknowledged op {op} before its write was durable")]
    AckBeforeDurable { replica: u8, op: u64 },
    /// A replica journaled a record that does not chain to its header of the op before.
    #[error("replica {replica} journaled op {op} whose parent is not its header of op {}", op - 1)]
    UnchainedJournal { replica: u8, op: u64 },
    /// An identical retry was refused as a reused idempotency key (the
    /// client table compared digests of the same request and found them
    /// different).
    #[error(
        "client {client:x} request {request}: an identical retry was refused as a reused idempotency key"
    )]
    RetryRefusedAsReused { client: u128, request: u64 },
    /// A certificate is malformed, under-signed or signs the wrong root.
    #[error("certificate from {source_name}: {reason}")]
    BadCertificate { source_name: String, reason: String },
}

/// One acknowledged append, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    client: u128,
    request: u64,
    /// The digest of the request the client sent (and retried).
    digest: Hash,
    body: ReplyBody,
}

/// What the checker last saw of one replica.
#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    view: u64,
    log_view: u64,
    commit: u64,
    /// Ops 1..=checked of this replica were compared with the agreed log.
    checked: u64,
    /// The saved state: a lower bound for view, log view and commit.
    saved: DurableState,
}

/// The checkers' state over one run.
#[derive(Debug)]
pub struct Checker {
    cluster: u128,
    policy: Policy,
    agreed: Vec<OpHeader>,
    oracle: MerkleTree,
    records: HashMap<Hash, Record>,
    stream_next: BTreeMap<u64, u64>,
    executed: HashMap<(u128, u64), u64>,
    /// Acks whose op the agreed log does not reach yet.
    acks: Vec<Ack>,
    acked: HashMap<(u128, u64), u64>,
    watches: Vec<Watch>,
    certificates_ok: HashSet<Hash>,
    /// Digests of certificate texts whose signatures verified.
    signatures_ok: HashSet<Hash>,
    /// (text, source, op it must cover): waiting for the agreed log to grow.
    certificates_pending: Vec<(String, String, Option<u64>)>,
    /// Certificates fully checked.
    pub certificates_checked: u64,
}

impl Checker {
    /// A checker for a cluster of `replica_count` under `policy`.
    pub fn new(cluster: u128, replica_count: u8, policy: Policy) -> Checker {
        Checker {
            cluster,
            policy,
            agreed: Vec::new(),
            oracle: MerkleTree::new(),
            records: HashMap::new(),
            stream_next: BTreeMap::new(),
            executed: HashMap::new(),
            acks: Vec::new(),
            acked: HashMap::new(),
            watches: vec![Watch::default(); usize::from(replica_count)],
            certificates_ok: HashSet::new(),
            signatures_ok: HashSet::new(),
            certificates_pending: Vec::new(),
            certificates_checked: 0,
        }
    }

    /// Ops in the agreed committed log.
    pub fn committed(&self) -> u64 {
        self.agreed.len() as u64
    }

    /// The agreed header of `op`.
    pub fn agreed(&self, op: u64) -> Option<&OpHeader> {
        self.agreed.get(usize::try_from(op.checked_sub(1)?).ok()?)
    }

    /// Remembers a record the shell saw (sealed, written, read or sent), so
    /// the oracle can compute its leaves once it commits.
    pub fn note_record(&mut self, record: &Record) {
        self.records
            .entry(record.checksum())
            .or_insert_with(|| record.clone());
    }

    /// The replica restarted from a disk whose saved state is `saved`.
    pub fn restarted(&mut self, replica: u8, saved: DurableState) {
        self.watches[usize::from(replica)] = Watch {
            saved,
            ..Watch::default()
        };
    }

    /// The replica's disk was wiped: it starts over from nothing, so its
    /// numbers may start over too (it must rejoin before it votes).
    pub fn wiped(&mut self, replica: u8) {
        self.watches[usize::from(replica)] = Watch::default();
    }

    /// The replica's saved state is now `state`: it must never go back.
    pub fn saved(&mut self, replica: u8, state: DurableState) -> Result<(), Violation> {
        let watch = &mut self.watches[usize::from(replica)];
        went_back(replica, "saved view", watch.saved.view, state.view)?;
        went_back(
            replica,
            "saved log view",
            watch.saved.log_view,
            state.log_view,
        )?;
        watch.saved = state;
        Ok(())
    }

    /// Checks a replica after a step: monotonic numbers, and its newly
    /// committed ops against the agreed log (extending it). `header` gives
    /// the replica's header of an op, if it has one at hand.
    pub fn observe(
        &mut self,
        replica: u8,
        (view, log_view, commit): (u64, u64, u64),
        header: impl Fn(u64) -> Option<OpHeader>,
    ) -> Result<(), Violation> {
        let watch = self.watches[usize::from(replica)];
        went_back(replica, "view", watch.view.max(watch.saved.view), view)?;
        went_back(
            replica,
            "log view",
            watch.log_view.max(watch.saved.log_view),
            log_view,
        )?;
        went_back(replica, "commit", watch.commit, commit)?;
        let mut checked = watch.checked;
        while checked < commit {
            let op = checked + 1;
            let Some(found) = header(op) else { break };
            self.check_committed(replica, op, &found)?;
            checked = op;
        }
        let watch = &mut self.watches[usize::from(replica)];
        (watch.view, watch.log_view, watch.commit, watch.checked) =
            (view, log_view, commit, checked);
        Ok(())
    }

    /// Checks the restarted replica's numbers against what it saved.
    pub fn check_restart(&self, replica: u8, view: u64, commit: u64) -> Result<(), Violation> {
        let saved = self.watches[usize::from(replica)].saved;
        went_back(replica, "view across restart", saved.view, view)?;
        went_back(replica, "commit across restart", saved.commit, commit)
    }

    fn check_committed(&mut self, replica: u8, op: u64, found: &OpHeader) -> Result<(), Violation> {
        if let Some(agreed) = self.agreed(op) {
            if agreed.checksum() != found.checksum() {
                return Err(Violation::Divergence {
                    replica,
                    op,
                    agreed: to_hex(&agreed.checksum()),
                    found: to_hex(&found.checksum()),
                });
            }
            return Ok(());
        }
        assert_eq!(op, self.committed() + 1, "ops are checked in order");
        self.extend(op, found)
    }

    /// Appends `header` to the agreed log after checking chain, density,
    /// uniqueness and leaves.
    fn extend(&mut self, op: u64, header: &OpHeader) -> Result<(), Violation> {
        let bad = |reason: String| Violation::BadOp { op, reason };
        let parent = self
            .agreed
            .last()
            .map_or(genesis_parent(self.cluster), OpHeader::checksum);
        if header.op != op || header.kind != RecordKind::Op || header.cluster != self.cluster {
            return Err(bad(format!(
                "header names op {} of kind {:?}",
                header.op, header.kind
            )));
        }
        if header.parent != parent {
            return Err(bad(
                "parent is not the previous op's checksum (unchained)".into()
            ));
        }
        if header.global_position != self.oracle.len() {
            return Err(bad(format!(
                "global position {} is not the tree size {}",
                header.global_position,
                self.oracle.len()
            )));
        }
        let next = self.stream_next.get(&header.stream).copied().unwrap_or(0);
        if header.stream_offset != next {
            return Err(bad(format!(
                "stream {} offset {} is not the stream length {next}",
                header.stream, header.stream_offset
            )));
        }
        if header.client_id != 0 {
            let key = (header.client_id, header.request);
            if let Some(first) = self.executed.insert(key, op) {
                return Err(Violation::DuplicateRequest {
                    client: header.client_id,
                    request: header.request,
                    first,
                    second: op,
                });
            }
        }
        let leaves = self
            .records
            .get(&header.checksum())
            .and_then(leaf_hashes)
            .ok_or_else(|| bad("no intact record with this header was ever written".into()))?;
        if leaves.len() as u64 != u64::from(header.event_count) {
            return Err(bad("record holds another number of events".into()));
        }
        for leaf in leaves {
            self.oracle.push(leaf);
        }
        self.stream_next
            .insert(header.stream, next + u64::from(header.event_count));
        self.agreed.push(*header);
        self.check_acks()?;
        self.retry_certificates()
    }

    /// A client saw `reply` committed: remember it, and check it against the
    /// agreed log now and whenever the log grows.
    pub fn acknowledged(
        &mut self,
        client: u128,
        request: u64,
        body: &ReplyBody,
        digest: Hash,
    ) -> Result<(), Violation> {
        if let Some(op) = self.acked.insert((client, request), body.op)
            && op != body.op
        {
            return Err(Violation::LostAck {
                client,
                request,
                op: body.op,
                reason: format!("the same request was acknowledged at op {op} before"),
            });
        }
        self.certificate(
            &body.certificate,
            &format!("reply to client {client:x}"),
            Some(body.op),
        )?;
        self.acks.push(Ack {
            client,
            request,
            digest,
            body: body.clone(),
        });
        self.check_acks()
    }

    /// Checks every waiting ack the agreed log now reaches (each once: the
    /// agreed log never changes, and every replica's committed ops are
    /// compared with it, so a checked ack stays true in every replica).
    fn check_acks(&mut self) -> Result<(), Violation> {
        let committed = self.committed();
        let (ready, waiting): (Vec<Ack>, Vec<Ack>) = std::mem::take(&mut self.acks)
            .into_iter()
            .partition(|a| a.body.op <= committed);
        self.acks = waiting;
        for ack in &ready {
            check_ack(
                ack,
                self.agreed(ack.body.op)
                    .expect("partitioned on the agreed length"),
            )?;
        }
        Ok(())
    }

    /// Acks the agreed log does not reach yet.
    pub fn acks_waiting(&self) -> usize {
        self.acks.len()
    }

    /// Checks a certificate: parses, >= quorum valid signatures of distinct
    /// pinned replicas, the root of the agreed log at its size, its chain
    /// head (if it names one), and that it covers `op`. A certificate whose
    /// size the agreed log does not reach yet waits.
    pub fn certificate(
        &mut self,
        text: &str,
        source: &str,
        op: Option<u64>,
    ) -> Result<(), Violation> {
        let digest = sha256(&[text.as_bytes(), &op.unwrap_or(0).to_le_bytes()]);
        if self.certificates_ok.contains(&digest) {
            return Ok(());
        }
        match self.check_certificate(text, op) {
            Ok(true) => {
                self.certificates_ok.insert(digest);
                self.certificates_checked += 1;
                Ok(())
            }
            Ok(false) => {
                self.certificates_pending
                    .push((text.to_owned(), source.to_owned(), op));
                Ok(())
            }
            Err(reason) => Err(Violation::BadCertificate {
                source_name: source.to_owned(),
                reason,
            }),
        }
    }

    /// Ok(true): checked; Ok(false): the agreed log is too short yet.
    fn check_certificate(&mut self, text: &str, op: Option<u64>) -> Result<bool, String> {
        let certificate = Certificate::parse(text).map_err(|e| e.to_string())?;
        // Signatures are the costly part; each text is verified once.
        let digest = sha256(&[text.as_bytes()]);
        if !self.signatures_ok.contains(&digest) {
            certificate
                .verify(&self.policy)
                .map_err(|e| e.to_string())?;
            self.signatures_ok.insert(digest);
        }
        let size = certificate.checkpoint.size;
        if size > self.oracle.len() || op.is_some_and(|op| op > self.committed()) {
            return Ok(false);
        }
        let root = self.oracle.root_at(size).map_err(|e| e.to_string())?;
        if root != certificate.checkpoint.root {
            return Err(format!(
                "root at size {size} is not the root of the committed log"
            ));
        }
        if let Some(op) = op {
            let covered = self.agreed(op).expect("op <= committed").tree_size;
            if size < covered {
                return Err(format!(
                    "size {size} does not cover op {op} (tree size {covered})"
                ));
            }
        }
        for head in ChainHead::all_in(&certificate.checkpoint) {
            self.check_head(head?, size)?;
        }
        Ok(true)
    }

    /// The chain head names the agreed header of its op, at this tree size.
    fn check_head(&self, head: ChainHead, size: u64) -> Result<(), String> {
        let op = head.op;
        let header = self
            .agreed(op)
            .ok_or(format!("chain head names uncommitted op {op}"))?;
        if header.checksum() != head.checksum || header.tree_size != size {
            return Err(format!(
                "chain head of op {op} is not the agreed header at size {size}"
            ));
        }
        if header.group_continues() {
            return Err(format!(
                "the certificate names op {op}, inside an atomic group"
            ));
        }
        Ok(())
    }

    fn retry_certificates(&mut self) -> Result<(), Violation> {
        let pending = std::mem::take(&mut self.certificates_pending);
        for (text, source, op) in pending {
            self.certificate(&text, &source, op)?;
        }
        Ok(())
    }

    /// At the end of a run: certificates that never matched a committed
    /// prefix are violations (they signed ops no replica committed).
    pub fn finish(&self) -> Result<(), Violation> {
        match self.certificates_pending.first() {
            Some((_, source, _)) => Err(Violation::BadCertificate {
                source_name: source.clone(),
                reason: "certifies ops that no replica committed".into(),
            }),
            None => Ok(()),
        }
    }
}

fn went_back(replica: u8, what: &'static str, before: u64, after: u64) -> Result<(), Violation> {
    if after < before {
        return Err(Violation::WentBack {
            replica,
            what,
            before,
            after,
        });
    }
    Ok(())
}

fn check_ack(ack: &Ack, header: &OpHeader) -> Result<(), Violation> {
    let body = &ack.body;
    let same = header.client_id == ack.client
        && header.request == ack.request
        && header.stream == body.stream
        && header.stream_offset == body.first_offset
        && header.stream_offset + u64::from(header.event_count) == body.next_offset
        && header.global_position == body.first_position
        && header.request_digest == ack.digest;
    if same {
        return Ok(());
    }
    Err(Violation::LostAck {
        client: ack.client,
        request: ack.request,
        op: body.op,
        reason: format!(
            "the committed op holds client {:x} request {} stream {} offsets {}..{} digest {}",
            header.client_id,
            header.request,
            header.stream,
            header.stream_offset,
            header.stream_offset + u64::from(header.event_count),
            to_hex(&header.request_digest)
        ),
    })
}
