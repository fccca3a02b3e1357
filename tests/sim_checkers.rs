//! The simulator's checkers on hand-made histories: each broken property
//! (divergence, unchained ops, gaps in offsets, duplicate requests, views
//! or commits going back, lost acks, bad certificates) must be caught, and
//! a correct history must pass. These keep the checkers honest without
//! depending on the replica core.

use bytes::Bytes;
use vellum::sim::checker::{Checker, Violation};
use vellum::sim::records::{Sealer, leaf_hashes};
use vellum::vsr::{DurableState, ReplyBody};
use vellum_audit::checkpoint::{Certificate, Checkpoint, origin_for_cluster};
use vellum_audit::merkle::MerkleTree;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::{OpHeader, Record, RecordKind, genesis_parent};
use vellum_audit::verify::chain_head_extension;

const CLUSTER: u128 = 0x5151;

fn signers() -> Vec<Signer> {
    (0..3u8)
        .map(|i| Signer::from_seed(&format!("replica-{i}"), [i + 1; 32]).expect("valid name"))
        .collect()
}

fn checker() -> Checker {
    let policy = Policy::new(
        &origin_for_cluster(CLUSTER),
        signers().iter().map(Signer::verifier).collect(),
        2,
    )
    .expect("valid policy");
    Checker::new(CLUSTER, 3, policy)
}

/// Builds a chained log of ops; each spec is (stream, events, client, request).
struct LogBuilder {
    sealer: Sealer,
    records: Vec<Record>,
    stream_next: std::collections::BTreeMap<u64, u64>,
}

impl LogBuilder {
    fn new() -> LogBuilder {
        LogBuilder {
            sealer: Sealer::new([9; 32]),
            records: Vec::new(),
            stream_next: Default::default(),
        }
    }

    fn header(&self, stream: u64, events: u32, client: u128, request: u64) -> OpHeader {
        let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
        header.op = self.records.len() as u64 + 1;
        header.parent = self
            .records
            .last()
            .map_or(genesis_parent(CLUSTER), Record::checksum);
        header.stream = stream;
        header.stream_offset = self.stream_next.get(&stream).copied().unwrap_or(0);
        header.global_position = self.records.last().map_or(0, |r| r.header.tree_size);
        header.event_count = events;
        header.tree_size = header.global_position + u64::from(events);
        header.client_id = client;
        header.request = request;
        header
    }

    fn push_header(&mut self, header: OpHeader) -> Record {
        let events: Vec<Bytes> = (0..header.event_count)
            .map(|i| Bytes::from(format!("e{i}")))
            .collect();
        let (record, _) = self.sealer.seal(&header, &events);
        *self.stream_next.entry(header.stream).or_default() =
            header.stream_offset + u64::from(header.event_count);
        self.records.push(record.clone());
        record
    }

    fn push(&mut self, stream: u64, events: u32, client: u128, request: u64) -> Record {
        let header = self.header(stream, events, client, request);
        self.push_header(header)
    }

    fn standard() -> LogBuilder {
        let mut log = LogBuilder::new();
        log.push(16, 2, 1, 1);
        log.push(17, 1, 2, 1);
        log.push(16, 3, 1, 2);
        log
    }

    fn header_of(&self) -> impl Fn(u64) -> Option<OpHeader> + '_ {
        |op| {
            self.records
                .get(op.checked_sub(1)? as usize)
                .map(|r| r.header)
        }
    }

    fn certificate(&self, op: u64, signers: &[&Signer]) -> String {
        let mut tree = MerkleTree::new();
        for record in &self.records[..op as usize] {
            for leaf in leaf_hashes(record).expect("op record") {
                tree.push(leaf);
            }
        }
        let last = &self.records[op as usize - 1];
        let checkpoint = Checkpoint {
            origin: origin_for_cluster(CLUSTER),
            size: tree.len(),
            root: tree.root(),
            extensions: vec![chain_head_extension(op, &last.checksum())],
        };
        Certificate::sign(checkpoint, signers)
            .expect("signing")
            .encode()
    }
}

fn note_all(checker: &mut Checker, log: &LogBuilder) {
    for record in &log.records {
        checker.note_record(record);
    }
}

/// Goal: two replicas committing the same chained, dense log pass, and the
/// agreed log holds every op.
#[test]
fn agreeing_replicas_pass() {
    let log = LogBuilder::standard();
    let mut checker = checker();
    note_all(&mut checker, &log);
    checker
        .observe(0, (0, 0, 3), log.header_of())
        .expect("replica 0");
    checker
        .observe(1, (0, 0, 2), log.header_of())
        .expect("replica 1");
    checker
        .observe(1, (1, 1, 3), log.header_of())
        .expect("replica 1 later");
    assert_eq!(checker.committed(), 3);
}

/// Goal: a replica that committed another header at an op the agreed log
/// fixed is a divergence.
#[test]
fn divergent_committed_prefix_is_caught() {
    let log = LogBuilder::standard();
    let mut other = LogBuilder::new();
    other.push(16, 2, 1, 1);
    other.push(18, 1, 3, 1);
    let mut checker = checker();
    note_all(&mut checker, &log);
    note_all(&mut checker, &other);
    checker
        .observe(0, (0, 0, 3), log.header_of())
        .expect("first replica fixes the log");
    let err = checker
        .observe(2, (0, 0, 2), other.header_of())
        .expect_err("must diverge");
    assert!(
        matches!(
            err,
            Violation::Divergence {
                replica: 2,
                op: 2,
                ..
            }
        ),
        "{err}"
    );
}

/// Goal: an op whose parent is not the previous op's checksum is caught.
#[test]
fn unchained_op_is_caught() {
    let mut log = LogBuilder::new();
    log.push(16, 1, 1, 1);
    let mut header = log.header(16, 1, 1, 2);
    header.parent = [7; 32];
    log.push_header(header);
    let mut checker = checker();
    note_all(&mut checker, &log);
    let err = checker
        .observe(0, (0, 0, 2), log.header_of())
        .expect_err("unchained");
    assert!(
        matches!(&err, Violation::BadOp { op: 2, reason } if reason.contains("unchained")),
        "{err}"
    );
}

/// Goal: a gap in a stream's offsets, or in global positions, is caught.
#[test]
fn offsets_must_be_dense() {
    let mut log = LogBuilder::new();
    log.push(16, 2, 1, 1);
    let mut header = log.header(16, 1, 1, 2);
    header.stream_offset = 3;
    log.push_header(header);
    let mut checker_a = checker();
    note_all(&mut checker_a, &log);
    let err = checker_a
        .observe(0, (0, 0, 2), log.header_of())
        .expect_err("offset gap");
    assert!(
        matches!(&err, Violation::BadOp { op: 2, reason } if reason.contains("offset")),
        "{err}"
    );

    let mut log = LogBuilder::new();
    log.push(16, 2, 1, 1);
    let mut header = log.header(17, 1, 1, 2);
    header.global_position += 1;
    header.tree_size += 1;
    log.push_header(header);
    let mut checker_b = checker();
    note_all(&mut checker_b, &log);
    let err = checker_b
        .observe(0, (0, 0, 2), log.header_of())
        .expect_err("position gap");
    assert!(
        matches!(&err, Violation::BadOp { op: 2, reason } if reason.contains("global position")),
        "{err}"
    );
}

/// Goal: the same (client, request) committed at two ops is caught.
#[test]
fn duplicate_request_is_caught() {
    let mut log = LogBuilder::new();
    log.push(16, 1, 5, 1);
    log.push(16, 1, 5, 1);
    let mut checker = checker();
    note_all(&mut checker, &log);
    let err = checker
        .observe(0, (0, 0, 2), log.header_of())
        .expect_err("executed twice");
    assert_eq!(
        err,
        Violation::DuplicateRequest {
            client: 5,
            request: 1,
            first: 1,
            second: 2
        }
    );
}

/// Goal: view, log view and commit never go back, in one life and across
/// a restart (against the saved state); a wiped replica starts over.
#[test]
fn numbers_never_go_back() {
    let log = LogBuilder::standard();
    let mut checker = checker();
    note_all(&mut checker, &log);
    checker
        .observe(0, (4, 4, 2), log.header_of())
        .expect("first look");
    let err = checker
        .observe(0, (3, 3, 2), log.header_of())
        .expect_err("view back");
    assert!(
        matches!(
            err,
            Violation::WentBack {
                what: "view",
                before: 4,
                after: 3,
                ..
            }
        ),
        "{err}"
    );
    let err = checker
        .observe(0, (4, 4, 1), log.header_of())
        .expect_err("commit back");
    assert!(
        matches!(err, Violation::WentBack { what: "commit", .. }),
        "{err}"
    );

    checker
        .saved(
            1,
            DurableState {
                view: 6,
                log_view: 5,
                commit: 2,
            },
        )
        .expect("save");
    let err = checker
        .saved(
            1,
            DurableState {
                view: 5,
                log_view: 5,
                commit: 2,
            },
        )
        .expect_err("saved view back");
    assert!(
        matches!(
            err,
            Violation::WentBack {
                what: "saved view",
                ..
            }
        ),
        "{err}"
    );
    checker.restarted(
        1,
        DurableState {
            view: 6,
            log_view: 5,
            commit: 2,
        },
    );
    let err = checker
        .check_restart(1, 4, 2)
        .expect_err("restart below saved view");
    assert!(
        matches!(
            err,
            Violation::WentBack {
                what: "view across restart",
                ..
            }
        ),
        "{err}"
    );
    let err = checker
        .check_restart(1, 6, 1)
        .expect_err("restart below saved commit");
    assert!(
        matches!(
            err,
            Violation::WentBack {
                what: "commit across restart",
                ..
            }
        ),
        "{err}"
    );
    checker
        .check_restart(1, 6, 2)
        .expect("at the saved numbers");

    checker.wiped(1);
    checker
        .observe(1, (0, 0, 0), log.header_of())
        .expect("a wiped replica starts over");
}

fn reply(log: &LogBuilder, op: u64, certificate: String) -> ReplyBody {
    let header = log.records[op as usize - 1].header;
    ReplyBody {
        op,
        view: 0,
        stream: header.stream,
        first_offset: header.stream_offset,
        next_offset: header.stream_offset + u64::from(header.event_count),
        first_position: header.global_position,
        certificate,
    }
}

/// Goal: an acknowledged append must sit at its op, stream and offsets in
/// the agreed log; acks ahead of the agreed log wait and are checked later.
#[test]
fn acknowledged_appends_stay_put() {
    let log = LogBuilder::standard();
    let signers = signers();
    let quorum = [&signers[0], &signers[1]];
    let mut checker = checker();
    note_all(&mut checker, &log);
    checker
        .observe(0, (0, 0, 2), log.header_of())
        .expect("two ops");
    let good = reply(&log, 2, log.certificate(2, &quorum));
    checker
        .acknowledged(2, 1, &good, [0; 32])
        .expect("the ack matches op 2");

    let mut moved = reply(&log, 3, log.certificate(3, &quorum));
    moved.first_offset += 1;
    checker
        .acknowledged(1, 2, &moved, [0; 32])
        .expect("op 3 not committed yet: waits");
    assert_eq!(checker.acks_waiting(), 1);
    let err = checker
        .observe(0, (0, 0, 3), log.header_of())
        .expect_err("the wrong offset surfaces");
    assert!(matches!(err, Violation::LostAck { op: 3, .. }), "{err}");

    let mut again = checker_with(&log, 3);
    let mut other = reply(&log, 3, log.certificate(3, &quorum));
    again
        .acknowledged(1, 2, &other, [0; 32])
        .expect("first ack");
    other.op = 1;
    let err = again
        .acknowledged(1, 2, &other, [0; 32])
        .expect_err("acked at two ops");
    assert!(matches!(err, Violation::LostAck { .. }), "{err}");
}

/// Goal: an ack whose committed op carries another request's digest (the
/// client table answered a reused key with another request's receipt) is
/// caught.
#[test]
fn ack_of_another_requests_op_is_caught() {
    let log = LogBuilder::standard();
    let signers = signers();
    let quorum = [&signers[0], &signers[1]];
    let mut checker = checker_with(&log, 2);
    let good = reply(&log, 2, log.certificate(2, &quorum));
    let err = checker
        .acknowledged(2, 1, &good, [9; 32])
        .expect_err("the op holds another digest");
    assert!(
        matches!(&err, Violation::LostAck { op: 2, reason, .. } if reason.contains("digest")),
        "{err}"
    );
}

fn checker_with(log: &LogBuilder, commit: u64) -> Checker {
    let mut checker = checker();
    note_all(&mut checker, log);
    checker
        .observe(0, (0, 0, commit), log.header_of())
        .expect("committed");
    checker
}

/// Goal: certificates need a quorum of valid signatures of distinct pinned
/// replicas, the agreed root at their size and the agreed chain head;
/// ones ahead of the agreed log wait and fail at the end if never reached.
#[test]
fn certificates_are_checked() {
    let log = LogBuilder::standard();
    let signers = signers();
    let mut checker = checker_with(&log, 2);
    let quorum = log.certificate(2, &[&signers[0], &signers[2]]);
    checker
        .certificate(&quorum, "test", Some(2))
        .expect("quorum-signed, right root");
    checker
        .certificate(&quorum, "test", Some(1))
        .expect("covers op 1 too");

    let lonely = log.certificate(2, &[&signers[1]]);
    let err = checker
        .certificate(&lonely, "test", Some(2))
        .expect_err("one signature");
    assert!(
        matches!(&err, Violation::BadCertificate { reason, .. } if reason.contains("valid signatures")),
        "{err}"
    );

    let mut forged = LogBuilder::new();
    forged.push(16, 2, 1, 1);
    forged.push(18, 1, 2, 1);
    let wrong_root = forged.certificate(2, &[&signers[0], &signers[1]]);
    let err = checker
        .certificate(&wrong_root, "test", Some(2))
        .expect_err("wrong root");
    assert!(
        matches!(&err, Violation::BadCertificate { reason, .. } if reason.contains("root")),
        "{err}"
    );

    // Same leaves, another client in the header: only the signed chain head differs.
    let mut rewritten = LogBuilder::new();
    rewritten.push(16, 2, 1, 1);
    rewritten.push(17, 1, 9, 9);
    let wrong_head = rewritten.certificate(2, &[&signers[0], &signers[1]]);
    let err = checker
        .certificate(&wrong_head, "test", Some(2))
        .expect_err("wrong head");
    assert!(
        matches!(&err, Violation::BadCertificate { reason, .. } if reason.contains("chain head")),
        "{err}"
    );

    let ahead = log.certificate(3, &[&signers[0], &signers[1]]);
    checker
        .certificate(&ahead, "test", Some(3))
        .expect("waits for op 3");
    assert!(
        checker.finish().is_err(),
        "a certificate of uncommitted ops fails at the end"
    );
    checker
        .observe(1, (0, 0, 3), log.header_of())
        .expect("op 3 commits; the waiting certificate checks out");
    checker.finish().expect("nothing waits any more");
    assert!(checker.certificates_checked >= 2);
}
