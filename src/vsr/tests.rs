//! Unit tests of the replica core. A tiny deterministic harness routes
//! messages between replicas (with crashed replicas and cut links) and
//! completes every seal, write, read and save at once; each test drives one
//! scenario and checks the property it names. The simulator (`crate::sim`)
//! is where faults are hammered in.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use vellum_audit::checkpoint::{Certificate, origin_for_cluster};
use vellum_audit::hash::sha256;
use vellum_audit::merkle::root_from_leaf_hashes;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::{self, EventFrame, OpHeader, Record, genesis_parent};

use super::*;
use vellum_audit::leaf::record_leaf_hashes;

const CLUSTER: u128 = 0x5eed_0001;
/// Inputs one `run` may process before the test calls it a livelock.
const STEPS_MAX: usize = 200_000;

/// A disk that never fails: records by op, saved state, certificates.
#[derive(Debug, Default, Clone)]
struct Disk {
    records: BTreeMap<u64, Record>,
    /// Ops whose stored record is damaged: found Faulty at restart and
    /// unreadable, until a write replaces it.
    damaged: BTreeSet<u64>,
    state: DurableState,
    certificates: BTreeMap<u64, String>,
}

impl Disk {
    fn recovered(&self) -> Recovered {
        let last = self.records.keys().max().copied().unwrap_or(0);
        let journal = (1..=last)
            .map(|op| match self.records.get(&op) {
                Some(r) if self.damaged.contains(&op) => JournalEntry::Faulty {
                    op,
                    header: Some(r.header),
                },
                Some(r) => JournalEntry::Intact {
                    header: r.header,
                    leaves: record_leaf_hashes(r, 0).expect("the harness seals valid bodies"),
                },
                None => JournalEntry::Faulty { op, header: None },
            })
            .collect();
        Recovered {
            state: self.state,
            journal,
            certificates: self
                .certificates
                .iter()
                .map(|(op, text)| (*op, text.clone()))
                .collect(),
        }
    }
}

/// Seals like the shell would, without real encryption.
pub(super) fn seal(header: &OpHeader, events: &[Bytes]) -> Record {
    let sealed: Vec<Vec<u8>> = events
        .iter()
        .map(|e| {
            let mut bytes = e.to_vec();
            bytes.extend_from_slice(&[0xee; record::TAG_BYTES]);
            bytes
        })
        .collect();
    let frames: Vec<EventFrame<'_>> = events
        .iter()
        .zip(&sealed)
        .map(|(event, sealed)| EventFrame {
            commitment: sha256(&[event]),
            nonce: [7; record::NONCE_BYTES],
            sealed,
        })
        .collect();
    let mut header = *header;
    header.key_id = 1;
    Record::new(header, record::encode_events(&frames))
}

struct Cluster {
    n: u8,
    signers: Vec<Signer>,
    policy: Policy,
    replicas: Vec<Option<Replica>>,
    disks: Vec<Disk>,
    inputs: VecDeque<(u8, Input)>,
    cut: BTreeSet<(u8, u8)>,
    replies: Vec<(u8, u128, u64, Reply)>,
    committed: Vec<BTreeMap<u64, String>>,
    /// Every message sent: (from, to, body).
    sent: Vec<(u8, u8, MessageBody)>,
    /// Replicas that receive no Prepare (so they never get an op's body).
    drop_prepares_to: BTreeSet<u8>,
    /// Replicas whose shell's signer fails (a token that errs): every
    /// `Sign` is answered with no signature.
    failing_signers: BTreeSet<u8>,
    /// `Sign` actions answered, by replica.
    signs: Vec<u64>,
    nonce: u64,
    inflight_max: u64,
}

fn config(n: u8, replica: u8) -> Config {
    let mut config = Config::new(CLUSTER, n, replica);
    config.heartbeat_ticks = 2;
    config.view_change_timeout_ticks = 12;
    config.prepare_retry_ticks = 4;
    config.repair_retry_ticks = 4;
    config
}

impl Cluster {
    /// A new cluster of `n`, started and settled.
    fn new(n: u8) -> Cluster {
        let signers: Vec<Signer> = (0..n)
            .map(|i| Signer::from_seed(&format!("replica-{i}"), [i + 1; 32]).expect("valid name"))
            .collect();
        let verifiers = signers.iter().map(Signer::verifier).collect();
        let quorum = usize::from(n) / 2 + 1;
        let policy =
            Policy::new(&origin_for_cluster(CLUSTER), verifiers, quorum).expect("valid policy");
        let mut cluster = Cluster {
            n,
            signers,
            policy,
            replicas: (0..n).map(|_| None).collect(),
            disks: vec![Disk::default(); usize::from(n)],
            inputs: VecDeque::new(),
            cut: BTreeSet::new(),
            replies: Vec::new(),
            committed: vec![BTreeMap::new(); usize::from(n)],
            sent: Vec::new(),
            drop_prepares_to: BTreeSet::new(),
            failing_signers: BTreeSet::new(),
            signs: vec![0; usize::from(n)],
            nonce: 1000,
            inflight_max: 0,
        };
        for i in 0..n {
            cluster.start(i);
        }
        cluster.tick(10);
        cluster
    }

    fn replica(&self, i: u8) -> &Replica {
        self.replicas[usize::from(i)]
            .as_ref()
            .expect("replica is up")
    }

    fn replica_mut(&mut self, i: u8) -> &mut Replica {
        self.replicas[usize::from(i)]
            .as_mut()
            .expect("replica is up")
    }

    fn start(&mut self, i: u8) {
        self.nonce += 1;
        let recovered = self.disks[usize::from(i)].recovered();
        let (replica, actions) = Replica::new(
            config(self.n, i),
            &self.signers[usize::from(i)].verifier(),
            self.policy.clone(),
            recovered,
            self.nonce,
            Broken::None,
        );
        self.replicas[usize::from(i)] = Some(replica);
        self.apply(i, actions);
        self.run();
    }

    fn crash(&mut self, i: u8) {
        self.replicas[usize::from(i)] = None;
        self.inputs.retain(|(to, _)| *to != i);
    }

    fn run(&mut self) {
        let mut steps = 0;
        while let Some((i, input)) = self.inputs.pop_front() {
            steps += 1;
            assert!(steps < STEPS_MAX, "the cluster does not settle");
            let Some(replica) = self.replicas[usize::from(i)].as_mut() else {
                continue;
            };
            let actions = replica.step(input);
            if replica.is_primary() {
                self.inflight_max = self.inflight_max.max(replica.op() - replica.commit());
            }
            self.apply(i, actions);
        }
    }

    fn apply(&mut self, i: u8, actions: Vec<Action>) {
        for action in actions {
            self.apply_one(i, action);
        }
    }

    fn apply_one(&mut self, i: u8, action: Action) {
        let disk = &mut self.disks[usize::from(i)];
        let input = match action {
            Action::Send { to, message } => {
                if let MessageBody::PrepareOk { op, .. } = &message.body {
                    // P4: an ack only for ops this replica holds durably.
                    assert!(
                        (1..=*op).all(|o| disk.records.contains_key(&o)),
                        "ack of {op} by {i}"
                    );
                }
                self.sent.push((i, to, message.body.clone()));
                let dropped = matches!(message.body, MessageBody::Prepare { .. })
                    && self.drop_prepares_to.contains(&to);
                if !dropped
                    && !self.cut.contains(&(i, to))
                    && self.replicas[usize::from(to)].is_some()
                {
                    self.inputs.push_back((to, Input::Message(message)));
                }
                return;
            }
            Action::Seal { header, events, .. } => Input::Sealed {
                record: seal(&header, &events),
                key: None,
            },
            Action::Write { record, .. } => {
                let (op, checksum) = (record.header.op, record.checksum());
                disk.records.insert(op, record);
                disk.damaged.remove(&op);
                Input::WriteDone {
                    writes: vec![(op, checksum)],
                }
            }
            Action::Truncate { after_op } => {
                disk.records.retain(|op, _| *op <= after_op);
                return;
            }
            Action::Read {
                op,
                checksum,
                purpose,
            } => Input::ReadDone {
                op,
                purpose,
                record: disk
                    .records
                    .get(&op)
                    .filter(|r| r.checksum() == checksum && !disk.damaged.contains(&op))
                    .cloned(),
            },
            Action::Save { state } => {
                disk.state = state;
                Input::SaveDone { state }
            }
            Action::Sign { op, body } => {
                self.signs[usize::from(i)] += 1;
                let signature = (!self.failing_signers.contains(&i))
                    .then(|| self.signers[usize::from(i)].sign(body.as_bytes()).to_vec());
                Input::Signed {
                    op,
                    body,
                    signature,
                }
            }
            Action::Committed { op, certificate } => {
                let certificate = certificate.encode();
                disk.certificates.insert(op, certificate.clone());
                self.committed[usize::from(i)].insert(op, certificate);
                return;
            }
            Action::Reply {
                client,
                request,
                reply,
            } => {
                self.replies.push((i, client, request, reply));
                return;
            }
        };
        self.inputs.push_back((i, input));
    }

    fn tick(&mut self, ticks: usize) {
        for _ in 0..ticks {
            for i in 0..self.n {
                if self.replicas[usize::from(i)].is_some() {
                    self.inputs.push_back((i, Input::Tick));
                }
            }
            self.run();
        }
    }

    fn primary(&self) -> Option<u8> {
        (0..self.n).find(|i| {
            self.replicas[usize::from(*i)]
                .as_ref()
                .is_some_and(Replica::is_primary)
        })
    }

    fn submit(&mut self, to: u8, request: Request) {
        self.inputs.push_back((to, Input::Request(request)));
    }

    /// Sends one request to the primary and returns its reply.
    fn append(&mut self, client: u128, number: u64, stream: u64, expected: Option<u64>) -> Reply {
        let primary = self.primary().expect("a primary");
        self.submit(primary, request(client, number, stream, expected, 2));
        self.run();
        self.reply_of(client, number).expect("a reply")
    }

    fn reply_of(&self, client: u128, number: u64) -> Option<Reply> {
        self.replies
            .iter()
            .rev()
            .find(|(_, c, r, _)| *c == client && *r == number)
            .map(|(_, _, _, reply)| reply.clone())
    }

    /// Checks that a certificate verifies under the policy and that its root
    /// is the root of the leaves of `disk`'s ops up to its size.
    fn check_certificate(&self, text: &str, disk: u8) -> u64 {
        let certificate = Certificate::parse(text).expect("certificate parses");
        let verified = certificate
            .verify(&self.policy)
            .expect("certificate verifies");
        assert!(verified.signers.len() >= self.policy.quorum);
        let leaves: Vec<_> = self.disks[usize::from(disk)]
            .records
            .values()
            .flat_map(|r| record_leaf_hashes(r, 0).expect("valid"))
            .collect();
        let size = usize::try_from(certificate.checkpoint.size).expect("small");
        assert_eq!(
            certificate.checkpoint.root,
            root_from_leaf_hashes(&leaves[..size])
        );
        certificate.checkpoint.size
    }
}

fn request(
    client: u128,
    number: u64,
    stream: u64,
    expected: Option<u64>,
    events: usize,
) -> Request {
    let events: Vec<Bytes> = (0..events)
        .map(|i| Bytes::from(format!("event {client} {number} {i}")))
        .collect();
    with_digest(client, number, stream, expected, events)
}

/// A request whose digest is a stand-in for the shell's keyed digest (the
/// core only compares the bytes).
pub(super) fn with_digest(
    client: u128,
    number: u64,
    stream: u64,
    expected: Option<u64>,
    events: Vec<Bytes>,
) -> Request {
    let mut encoded = stream.to_le_bytes().to_vec();
    encoded.push(u8::from(expected.is_some()));
    encoded.extend_from_slice(&expected.unwrap_or(0).to_le_bytes());
    for event in &events {
        encoded.extend_from_slice(&(event.len() as u64).to_le_bytes());
        encoded.extend_from_slice(event);
    }
    Request {
        client,
        request: number,
        stream,
        expected_offset: expected,
        events,
        key_id: 1,
        digest: sha256(&[b"test digest", &encoded]),
        trail: None,
        enveloped: false,
    }
}

fn committed_body(reply: &Reply) -> &ReplyBody {
    match reply {
        Reply::Committed(body) => body,
        other => panic!("expected a commit, got {other:?}"),
    }
}

/// Goal: a cluster of one commits alone once its own write is durable, with
/// a certificate of its own signature.
#[test]
fn single_replica_commits_alone() {
    let mut cluster = Cluster::new(1);
    assert_eq!(cluster.primary(), Some(0));
    let reply = cluster.append(7, 1, 16, Some(0));
    let body = committed_body(&reply);
    assert_eq!((body.op, body.first_offset, body.next_offset), (1, 0, 2));
    cluster.check_certificate(&body.certificate, 0);
    assert_eq!(cluster.replica(0).commit(), 1);
}

/// Goal: three replicas commit an op on a quorum; every replica learns the
/// commit with a certificate of >= quorum valid signatures whose root
/// matches the log.
#[test]
fn three_replicas_commit_with_quorum_certificates() {
    let mut cluster = Cluster::new(3);
    assert_eq!(cluster.primary(), Some(0));
    let reply = cluster.append(7, 1, 16, None);
    let body = committed_body(&reply).clone();
    assert_eq!(cluster.check_certificate(&body.certificate, 0), 2);
    cluster.tick(3);
    for i in 0..3 {
        assert_eq!(cluster.replica(i).commit(), 1, "replica {i}");
        let text = cluster.committed[usize::from(i)]
            .get(&1)
            .expect("committed");
        cluster.check_certificate(text, i);
        assert_eq!(cluster.replica(i).header(1), cluster.replica(0).header(1));
    }
}

/// Goal: several ops are in flight at once and commit in order with dense
/// offsets.
#[test]
fn pipelining_keeps_several_ops_in_flight() {
    let mut cluster = Cluster::new(3);
    for number in 1..=6 {
        cluster.submit(0, request(number as u128, 1, 20, None, 1));
    }
    cluster.run();
    assert!(
        cluster.inflight_max >= 2,
        "in flight at most {}",
        cluster.inflight_max
    );
    let mut offsets: Vec<u64> = (1..=6)
        .map(|c| committed_body(&cluster.reply_of(c, 1).expect("reply")).first_offset)
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(cluster.replica(0).commit(), 6);
}

/// Goal: a retry of the latest request gets the stored reply and writes
/// nothing; an older request number is refused.
#[test]
fn client_table_answers_retries_once() {
    let mut cluster = Cluster::new(3);
    let first = cluster.append(9, 1, 16, None);
    let again = cluster.append(9, 1, 16, None);
    assert_eq!(committed_body(&first).op, committed_body(&again).op);
    assert_eq!(cluster.replica(0).op(), 1, "the retry prepared nothing");
    cluster.append(9, 2, 16, None);
    assert!(matches!(cluster.append(9, 1, 16, None), Reply::Refused(_)));
    assert_eq!(cluster.replica(0).op(), 2);
}

/// Goal: a reused idempotency key (same client and request number, another
/// stream, expected offset or body) is refused as reused and writes
/// nothing, while an identical retry gets the original reply; this holds
/// on the primary and on a backup, after a view change and after every
/// replica restarted (the client table is rebuilt from the headers).
#[test]
fn reused_idempotency_key_is_refused_and_retry_is_answered() {
    let mut cluster = Cluster::new(3);
    let original = request(9, 1, 16, None, 2);
    cluster.submit(0, original.clone());
    cluster.run();
    let first = committed_body(&cluster.reply_of(9, 1).expect("reply")).clone();
    let mut other_body = original.clone();
    other_body.events[1] = Bytes::from_static(b"another event");
    other_body = with_digest(9, 1, 16, None, other_body.events);
    let other_stream = with_digest(9, 1, 17, None, original.events.clone());
    let other_expected = with_digest(9, 1, 16, Some(0), original.events.clone());
    let reused = [other_body, other_stream, other_expected];

    let check = |cluster: &mut Cluster, to: u8, when: &str| {
        for request in &reused {
            cluster.replies.clear();
            cluster.submit(to, request.clone());
            cluster.run();
            assert_eq!(
                cluster.reply_of(9, 1),
                Some(Reply::IdempotencyKeyReused { request: 1 }),
                "{when}: reuse by {request:?} at replica {to}"
            );
        }
        cluster.replies.clear();
        cluster.submit(to, original.clone());
        cluster.run();
        let again = cluster.reply_of(9, 1).expect("a retry is answered");
        assert_eq!(committed_body(&again).op, first.op, "{when}");
        assert_eq!(committed_body(&again).first_offset, first.first_offset);
    };
    check(&mut cluster, 0, "primary");
    check(&mut cluster, 1, "backup");
    assert_eq!(cluster.replica(0).op(), 1, "nothing was prepared");

    // A view change: the new primary knows the entry from the committed header.
    cluster.crash(0);
    cluster.tick(40);
    let primary = cluster.primary().expect("a new primary");
    assert_ne!(primary, 0);
    check(&mut cluster, primary, "after a view change");

    // Every replica restarts: the table is rebuilt from the journal.
    for i in 0..3 {
        cluster.crash(i);
    }
    for i in 0..3 {
        cluster.start(i);
    }
    cluster.tick(60);
    let primary = cluster.primary().expect("a primary after the restart");
    check(&mut cluster, primary, "after a restart");
    assert_eq!(
        cluster.replica(primary).op(),
        1,
        "nothing was ever prepared"
    );
    assert!(
        cluster
            .replica(primary)
            .header(1)
            .is_some_and(|h| h.request_digest == original.digest),
        "the op header keeps the digest"
    );
}

/// Goal: while a request is in flight (prepared, not committed), a request
/// with its client and number but another digest is refused at once as
/// reused, and the in-flight one still commits; a header without a digest
/// (an old log) answers any retry as before.
#[test]
fn reused_key_in_flight_is_refused_and_unknown_digest_answers_as_before() {
    let mut cluster = Cluster::new(3);
    // Cut the primary from its backups so the op stays in flight.
    cluster.cut.insert((0, 1));
    cluster.cut.insert((0, 2));
    let original = request(4, 1, 16, None, 1);
    cluster.submit(0, original.clone());
    cluster.run();
    assert!(cluster.reply_of(4, 1).is_none(), "no quorum yet");
    let reused = with_digest(4, 1, 16, None, vec![Bytes::from_static(b"other")]);
    cluster.submit(0, reused);
    cluster.run();
    assert_eq!(
        cluster.reply_of(4, 1),
        Some(Reply::IdempotencyKeyReused { request: 1 })
    );
    assert_eq!(
        cluster.replica(0).digest_key_for(4, 1),
        Some(1),
        "the shell digests a retry under the in-flight op's key"
    );
    cluster.replies.clear();
    cluster.cut.clear();
    cluster.tick(10);
    let committed = cluster.reply_of(4, 1).expect("the original commits");
    assert_eq!(committed_body(&committed).first_offset, 0);
    assert_eq!(cluster.replica(0).op(), 1);

    // Unknown digest (version 1 header, or a request without one): answered.
    let mut unknown = request(4, 1, 99, None, 1);
    unknown.digest = DIGEST_UNKNOWN;
    cluster.replies.clear();
    cluster.submit(0, unknown);
    cluster.run();
    assert!(matches!(cluster.reply_of(4, 1), Some(Reply::Committed(_))));
    assert!(!digests_conflict(&DIGEST_UNKNOWN, &[1; 32]));
    assert!(digests_conflict(&[2; 32], &[1; 32]));
}

/// Goal: an expected offset that is not the stream's length is refused
/// with the actual length and nothing is prepared.
#[test]
fn wrong_expected_offset_is_refused() {
    let mut cluster = Cluster::new(3);
    cluster.append(5, 1, 30, Some(0));
    let reply = cluster.append(5, 2, 30, Some(0));
    assert_eq!(
        reply,
        Reply::WrongExpectedOffset {
            expected: 0,
            actual: 2
        }
    );
    assert_eq!(cluster.replica(0).op(), 1);
}

/// Goal: when the primary stops, the backups elect a new one that keeps
/// the committed op and commits new ones.
#[test]
fn view_change_after_the_primary_stops() {
    let mut cluster = Cluster::new(3);
    cluster.append(1, 1, 16, None);
    cluster.crash(0);
    cluster.tick(40);
    let primary = cluster.primary().expect("a new primary");
    assert_ne!(primary, 0);
    assert!(cluster.replica(primary).view() >= 1);
    let reply = cluster.append(1, 2, 16, None);
    assert_eq!(committed_body(&reply).first_offset, 2, "op 1 survived");
    assert_eq!(cluster.replica(primary).commit(), 2);
}

/// Goal: a restarted replica does not vote until it recovered, then
/// catches up with the ops it missed.
#[test]
fn restarted_replica_recovers_and_catches_up() {
    let mut cluster = Cluster::new(3);
    cluster.append(1, 1, 16, None);
    cluster.crash(2);
    cluster.append(1, 2, 16, None);
    cluster.append(1, 3, 16, None);
    cluster.sent.clear();
    cluster.start(2);
    let first = cluster.sent.iter().find(|(from, _, _)| *from == 2);
    assert!(matches!(first, Some((_, _, MessageBody::Recovery { .. }))));
    cluster.tick(10);
    let replica = cluster.replica(2);
    assert_eq!(replica.status(), Status::Normal);
    assert_eq!(replica.op(), 3);
    assert_eq!(replica.header(3), cluster.replica(0).header(3));
    assert_eq!(replica.commit(), 3);
}

/// Goal: a wiped replica rebuilds every op from its peers (state transfer)
/// and acknowledges no op before it holds every op up to it.
#[test]
fn wiped_replica_catches_up() {
    let mut cluster = Cluster::new(3);
    for number in 1..=5 {
        cluster.append(1, number, 16, None);
    }
    cluster.crash(2);
    cluster.disks[2] = Disk::default();
    cluster.sent.clear();
    cluster.start(2);
    cluster.tick(20);
    assert_eq!(cluster.replica(2).status(), Status::Normal);
    assert_eq!(cluster.disks[2].records.len(), 5);
    assert_eq!(cluster.disks[2].records, cluster.disks[0].records);
    assert_eq!(cluster.replica(2).commit(), 5);
    // The harness asserts on every send that an ack covers only ops held.
    let acks = cluster
        .sent
        .iter()
        .filter(|(from, _, body)| *from == 2 && matches!(body, MessageBody::PrepareOk { .. }))
        .count();
    assert!(acks > 0, "it votes again once rebuilt");
}

/// Goal: a replica whose disk lost an op in the middle repairs it from a
/// peer instead of treating it as absent.
#[test]
fn faulty_slot_is_repaired() {
    let mut cluster = Cluster::new(3);
    for number in 1..=4 {
        cluster.append(1, number, 16, None);
    }
    cluster.crash(1);
    cluster.disks[1].records.remove(&2);
    cluster.start(1);
    cluster.tick(10);
    assert_eq!(cluster.disks[1].records, cluster.disks[0].records);
    assert_eq!(cluster.replica(1).status(), Status::Normal);
}

/// Goal: a backup catching up asks only the peers it hears from: with one
/// peer down, no repair request goes to it (each would wait out a retry).
#[test]
fn repair_asks_only_peers_heard_lately() {
    let mut cluster = Cluster::new(3);
    cluster.drop_prepares_to.insert(2);
    for number in 1..=6 {
        cluster.append(1, number, 16, None);
    }
    cluster.crash(1);
    // Replica 1 is silent for longer than a view change timeout; replica 2
    // hears the primary's heartbeats (and their commit) but none of its ops.
    cluster.tick(20);
    assert_eq!(cluster.replica(2).commit(), 0);
    cluster.sent.clear();
    cluster.drop_prepares_to.clear();
    cluster.tick(4);
    let asked: Vec<u8> = cluster
        .sent
        .iter()
        .filter(|(from, _, body)| *from == 2 && matches!(body, MessageBody::RequestPrepare { .. }))
        .map(|(_, to, _)| *to)
        .collect();
    assert!(!asked.is_empty(), "replica 2 repairs");
    assert!(
        asked.iter().all(|to| *to == 0),
        "only the primary, which it hears, is asked: {asked:?}"
    );
    assert_eq!(cluster.replica(2).commit(), 6);
}

/// Goal: a backup refuses a prepare whose parent does not chain to its log.
#[test]
fn unchained_prepare_is_refused() {
    let mut cluster = Cluster::new(3);
    let mut header = OpHeader::empty(record::RecordKind::Op, CLUSTER);
    header.op = 1;
    header.stream = 16;
    header.event_count = 1;
    header.tree_size = 1;
    header.parent = [9; 32];
    assert_ne!(header.parent, genesis_parent(CLUSTER));
    let record = seal(&header, &[Bytes::from_static(b"x")]);
    let message = Message {
        cluster: CLUSTER,
        from: 0,
        view: 0,
        body: MessageBody::Prepare {
            record,
            commit: 0,
            key: None,
        },
    };
    let actions = cluster.replicas[1]
        .as_mut()
        .expect("up")
        .step(Input::Message(message));
    assert!(!actions.iter().any(|a| matches!(a, Action::Write { .. })));
    assert_eq!(cluster.replica(1).op(), 0);
}

/// Goal: a prepare_ok whose signature is not over the primary's checkpoint
/// does not count towards the quorum.
#[test]
fn forged_prepare_ok_does_not_commit() {
    let mut cluster = Cluster::new(3);
    cluster.cut.insert((1, 0));
    cluster.cut.insert((2, 0));
    cluster.submit(0, request(3, 1, 16, None, 1));
    cluster.run();
    assert_eq!(cluster.replica(0).commit(), 0);
    let checksum = cluster.replica(0).header(1).expect("prepared").checksum();
    let forged = Message {
        cluster: CLUSTER,
        from: 1,
        view: 0,
        body: MessageBody::PrepareOk {
            op: 1,
            checksum,
            signature: vec![0; 64],
        },
    };
    let actions = cluster.replicas[0]
        .as_mut()
        .expect("up")
        .step(Input::Message(forged));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Committed { .. }))
    );
    assert_eq!(cluster.replica(0).commit(), 0);
    cluster.cut.clear();
    cluster.tick(6);
    assert_eq!(cluster.replica(0).commit(), 1, "real acks commit it");
}

/// Goal: the view and commit a replica reports never go back across a
/// restart (they are saved before they take effect).
#[test]
fn view_survives_restart() {
    let mut cluster = Cluster::new(3);
    cluster.append(1, 1, 16, None);
    cluster.crash(0);
    cluster.tick(40);
    let primary = cluster.primary().expect("new primary");
    let view = cluster.replica(primary).view();
    cluster.crash(primary);
    cluster.start(primary);
    assert!(cluster.replica(primary).view() >= view);
    assert!(cluster.replica(primary).commit() >= 1);
}

/// Prepares op 2 ("X") at the primary (replica 0) and at replica 1 only,
/// uncommitted (replica 1's acknowledgement is lost, replica 2 gets no
/// prepare), after op 1 committed everywhere. Replica 0 is then stopped and
/// replicas 0 and 2 receive no prepares from here on. Returns X's header.
fn prepare_x_at_primary_and_one_backup(cluster: &mut Cluster) -> OpHeader {
    cluster.append(1, 1, 16, None);
    cluster.tick(3);
    cluster.drop_prepares_to.insert(2);
    cluster.cut.insert((1, 0));
    cluster.submit(0, request(2, 1, 16, None, 1));
    cluster.run();
    let x = *cluster.replica(0).header(2).expect("X prepared");
    assert!(
        cluster.disks[1].records.contains_key(&2),
        "X reached replica 1"
    );
    assert!(!cluster.disks[2].records.contains_key(&2));
    assert_eq!(cluster.replica(0).commit(), 1, "X is not committed");
    cluster.crash(0);
    cluster.cut.clear();
    cluster.drop_prepares_to.insert(0);
    x
}

/// Goal: when the only replica holding an uncommitted op's body is gone and
/// the two left both know its header but not its body, their nacks (a
/// quorum) end the new view's log below it, and the cluster commits new
/// requests in its place instead of waiting for it forever.
#[test]
fn view_change_drops_an_op_a_quorum_nacks() {
    let mut cluster = Cluster::new(3);
    let x = prepare_x_at_primary_and_one_backup(&mut cluster);
    // Replica 0 lost its copy (an unsynced write): it never acknowledged X.
    cluster.disks[0].records.remove(&2);
    // Replica 1 leads view 1 with X; replica 2 learns X's header only.
    cluster.tick(40);
    assert_eq!(cluster.primary(), Some(1));
    assert_eq!(cluster.replica(2).op(), 2, "replica 2 knows X's header");
    assert!(cluster.replica(2).header(2).is_none(), "but not its body");
    // Replica 0 restarts and learns X's header from the primary, no body.
    cluster.start(0);
    cluster.tick(10);
    assert_eq!(cluster.replica(0).status(), Status::Normal);
    assert_eq!(cluster.replica(0).op(), 2);
    // The only holder of X's body goes away for good.
    cluster.crash(1);
    cluster.tick(120);
    let primary = cluster.primary().expect("a primary without X");
    assert_eq!(cluster.replica(primary).op(), 1, "the log ends below X");
    let led: u64 = [0, 2]
        .iter()
        .map(|i| cluster.replica(*i).nack_truncations())
        .sum();
    assert!(led >= 1, "the view change truncated a nacked op");
    cluster.drop_prepares_to.clear();
    let reply = cluster.append(3, 1, 16, None);
    let body = committed_body(&reply);
    assert_eq!(body.op, 2, "a new op takes X's place");
    let header = *cluster.replica(primary).header(2).expect("committed op 2");
    assert_ne!(header.checksum(), x.checksum());
}

/// Goal: a voter whose copy of the uncommitted op is damaged (Faulty) does
/// not nack it, so the view change keeps it and waits instead of dropping
/// an op that may have committed; once its holder is back, it commits.
#[test]
fn view_change_keeps_an_op_whose_copy_is_damaged() {
    let mut cluster = Cluster::new(3);
    let x = prepare_x_at_primary_and_one_backup(&mut cluster);
    // Replica 0's copy of X is damaged: found Faulty on restart.
    cluster.disks[0].damaged.insert(2);
    cluster.tick(40);
    assert_eq!(cluster.primary(), Some(1));
    cluster.start(0);
    cluster.tick(10);
    assert_eq!(cluster.replica(0).status(), Status::Normal);
    cluster.crash(1);
    cluster.tick(200);
    for i in [0, 2] {
        let replica = cluster.replica(i);
        assert!(replica.op() >= 2, "replica {i} kept X");
        assert_eq!(replica.commit(), 1, "replica {i} committed nothing past X");
        assert_eq!(replica.nack_truncations(), 0);
    }
    assert!(
        cluster.disks[0].records.contains_key(&2),
        "X never truncated"
    );
    // X's holder returns: X is repaired and commits, as it might have before.
    cluster.drop_prepares_to.clear();
    cluster.start(1);
    cluster.tick(200);
    let primary = cluster.primary().expect("a primary");
    assert!(cluster.replica(primary).commit() >= 2);
    assert_eq!(cluster.replica(primary).header(2), Some(&x));
    let reply = cluster.append(3, 1, 16, None);
    assert_eq!(committed_body(&reply).op, 3);
}

/// Goal: a wiped replica that adopted a log does not nack that log's ops
/// (an earlier life of it may have acknowledged them) until it holds them
/// all; then it nacks from the first op, like any replica.
#[test]
fn wiped_replica_nacks_nothing_of_the_log_it_adopted_until_it_holds_it() {
    let mut cluster = Cluster::new(3);
    for number in 1..=3 {
        cluster.append(1, number, 16, None);
    }
    assert_eq!(cluster.replica(1).own_dvc().nack_from, 1);
    cluster.crash(2);
    cluster.disks[2] = Disk::default();
    cluster.drop_prepares_to.insert(2);
    cluster.start(2);
    cluster.tick(10);
    assert_eq!(cluster.replica(2).status(), Status::Normal);
    assert_eq!(cluster.replica(2).op(), 3, "it adopted the log");
    assert!(cluster.disks[2].records.is_empty(), "and holds none of it");
    assert_eq!(cluster.replica(2).own_dvc().nack_from, 4);
    cluster.drop_prepares_to.clear();
    cluster.tick(10);
    assert_eq!(cluster.disks[2].records.len(), 3);
    assert_eq!(cluster.replica(2).own_dvc().nack_from, 1);
}

/// Goal: after a pinned rotation of its signing key from op R, a replica
/// signs the checkpoints of ops from R on with its new key and refuses to
/// sign any op before R (a signature by a key not in force there, which no
/// peer or auditor would count); the cluster certifies new ops under the
/// rotated policy.
#[test]
fn rotated_replica_signs_only_from_its_rotation_op() {
    let mut cluster = Cluster::new(3);
    for number in 1..=3 {
        committed_body(&cluster.append(7, number, 16, None));
    }
    let before = cluster.replica(1).commit();
    let from_op = cluster.replica(0).op() + 1;
    let new = Signer::from_seed("replica-1", [42; 32]).expect("valid name");
    let rotation = vellum_audit::key_history::KeyRotation::sign(
        &origin_for_cluster(CLUSTER),
        1,
        from_op,
        &cluster.signers[1],
        &new,
    );
    cluster.policy = cluster
        .policy
        .clone()
        .with_rotations(vec![rotation])
        .expect("a valid rotation");
    cluster.signers[1] = new.clone();
    // Every replica restarts with the rotated policy (replica 1 also with
    // its new key), one at a time.
    for i in [1, 2, 0] {
        cluster.crash(i);
        cluster.start(i);
        cluster.tick(20);
    }
    let replica = cluster.replica_mut(1);
    assert!(before >= 1 && replica.op() >= before);
    for op in 1..from_op {
        assert_eq!(replica.sign_checkpoint(op), None);
        assert!(
            !replica.out.iter().any(|a| matches!(a, Action::Sign { .. })),
            "op {op} is before the rotation at {from_op}: the new key must not be asked to sign it"
        );
    }
    let reply = cluster.append(7, 4, 16, None);
    let body = committed_body(&reply);
    assert!(body.op >= from_op);
    let primary = cluster.primary().expect("a primary");
    cluster.check_certificate(&body.certificate, primary);
    let replica = cluster.replica_mut(1);
    let checkpoint = replica.checkpoint_of(body.op).expect("its checkpoint");
    match replica.sign_checkpoint(body.op) {
        Some(signature) => assert!(
            new.verifier()
                .verify(checkpoint.body().as_bytes(), &signature),
            "signed with the new key"
        ),
        None => assert!(
            replica
                .out
                .iter()
                .any(|a| matches!(a, Action::Sign { op: asked, body: text } if *asked == body.op && *text == checkpoint.body())),
            "the new key is asked to sign ops from the rotation on"
        ),
    }
}

/// Signing is the shell's work (the key may be in a token): while the
/// primary's signer fails, no op commits and no certificate is made, the
/// core asks again (once a tick, not in a loop within one step), and once
/// the signer works again the waiting append commits with a certificate
/// every replica's policy accepts.
#[test]
fn a_failing_primary_signer_withholds_commits_until_it_signs_again() {
    let mut cluster = Cluster::new(3);
    let primary = cluster.primary().expect("a primary");
    let commit_before = cluster.replica(primary).commit();
    cluster.failing_signers.insert(primary);
    cluster.signs = vec![0; 3];
    cluster.submit(primary, request(7, 1, 16, None, 2));
    cluster.run();
    assert!(
        cluster.reply_of(7, 1).is_none(),
        "no reply while the primary cannot sign"
    );
    assert_eq!(
        cluster.replica(primary).commit(),
        commit_before,
        "nothing committed"
    );
    let asked = cluster.signs[usize::from(primary)];
    assert!(asked >= 1, "the primary asked its shell to sign");
    assert!(
        asked <= 3,
        "asked {asked} times in one settled run: the core loops on a failing signer"
    );
    cluster.tick(5);
    assert!(
        cluster.reply_of(7, 1).is_none(),
        "still nothing while the signer fails"
    );
    let asked_after_ticks = cluster.signs[usize::from(primary)];
    assert!(
        asked_after_ticks > asked,
        "the primary asks again on later ticks ({asked} then {asked_after_ticks})"
    );
    cluster.failing_signers.clear();
    cluster.tick(2);
    let reply = cluster
        .reply_of(7, 1)
        .expect("the append commits once the signer works");
    let body = committed_body(&reply);
    cluster.check_certificate(&body.certificate, primary);
}

/// A backup whose signer fails sends no prepare_ok (it has no signature to
/// send), yet with the other backup's the quorum commits; the failing
/// backup's acknowledgements resume with its signer.
#[test]
fn a_failing_backup_signer_sends_no_acknowledgement() {
    let mut cluster = Cluster::new(3);
    let primary = cluster.primary().expect("a primary");
    let backup = (0..3).find(|i| *i != primary).expect("a backup");
    cluster.failing_signers.insert(backup);
    cluster.sent.clear();
    let reply = cluster.append(7, 1, 16, None);
    let body = committed_body(&reply);
    cluster.check_certificate(&body.certificate, primary);
    let acks_from = |cluster: &Cluster| {
        cluster
            .sent
            .iter()
            .filter(|(from, _, m)| *from == backup && matches!(m, MessageBody::PrepareOk { .. }))
            .count()
    };
    assert_eq!(acks_from(&cluster), 0, "no prepare_ok without a signature");
    cluster.failing_signers.clear();
    cluster.append(7, 2, 16, None);
    cluster.tick(10);
    assert!(
        acks_from(&cluster) >= 1,
        "acknowledgements resume with the signer"
    );
}

/// A replica keeps its own signatures by age, never by op number: after a
/// view change replaced ops, stale signatures of higher ops must not crowd
/// out the one just made, or the core would ask for it again forever
/// (`vellum sim --seed 528 --replicas 5` spun signing at one tick).
#[test]
fn stale_signatures_of_higher_ops_do_not_crowd_out_a_new_one() {
    let mut cluster = Cluster::new(3);
    let primary = cluster.primary().expect("a primary");
    let kept = super::certify::OWN_SIGNATURES_KEPT as u64;
    for i in [primary] {
        let replica = cluster.replica_mut(i);
        for op in 1_000..1_000 + kept {
            replica
                .own_signatures
                .push_back((op, "a stale checkpoint".to_string(), vec![0; 64]));
        }
    }
    cluster.signs = vec![0; 3];
    let reply = cluster.append(7, 1, 16, None);
    let body = committed_body(&reply);
    cluster.check_certificate(&body.certificate, primary);
    let asked = cluster.signs[usize::from(primary)];
    assert!(
        asked <= 2,
        "the primary asked its shell to sign {asked} times for one commit"
    );
}
