//! A small seeded chaos test of the replica core, beside the unit tests:
//! message loss, duplication and reordering, crashes that lose unsynced
//! writes and saves, restarts and wiped disks, then a quiet phase in which
//! the cluster must converge. Checkers run after every step. The real
//! simulator (`crate::sim`) goes much further; this one catches regressions
//! in the core's own test run.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use vellum_audit::checkpoint::{Certificate, origin_for_cluster};
use vellum_audit::hash::Hash;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::Record;

use super::*;
use vellum_audit::leaf::record_leaf_hashes;

const CLUSTER: u128 = 0x000c_4a05;
/// Steps of the faulty phase.
const FAULT_STEPS: usize = 6_000;
/// Ticks of the quiet phase in which the cluster must converge.
const QUIET_TICKS: usize = 400;
/// Clients issuing requests.
const CLIENTS: u128 = 4;

/// splitmix64: a tiny deterministic PRNG.
#[derive(Debug)]
struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_thousand: u64) -> bool {
        self.below(1000) < per_thousand
    }
}

#[derive(Debug, Default, Clone)]
struct Disk {
    records: BTreeMap<u64, Record>,
    unsynced: BTreeSet<u64>,
    state: DurableState,
    pending_state: Option<DurableState>,
    certificates: BTreeMap<u64, String>,
}

impl Disk {
    fn recovered(&self) -> Recovered {
        let last = self.records.keys().max().copied().unwrap_or(0);
        let journal = (1..=last)
            .map(|op| match self.records.get(&op) {
                Some(r) => JournalEntry::Intact {
                    header: r.header,
                    leaves: record_leaf_hashes(r, 0).expect("valid body"),
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
                .map(|(o, t)| (*o, t.clone()))
                .collect(),
        }
    }

    /// A crash: each unsynced write is lost, an unsaved state too.
    fn crash(&mut self) {
        for op in std::mem::take(&mut self.unsynced) {
            self.records.remove(&op);
        }
        self.pending_state = None;
    }
}

struct Chaos {
    n: u8,
    rng: Prng,
    signers: Vec<Signer>,
    policy: Policy,
    replicas: Vec<Option<Replica>>,
    disks: Vec<Disk>,
    inputs: Vec<(u8, Input)>,
    saves: std::collections::VecDeque<(u8, DurableState)>,
    faults: bool,
    nonce: u64,
    // Checker state.
    committed: BTreeMap<u64, Hash>,
    executed: BTreeMap<(u128, u64), u64>,
    acknowledged: BTreeMap<u64, (u64, u64)>,
    views: Vec<u64>,
    commits: Vec<u64>,
    // Clients: next request number and whether it was answered.
    client_request: BTreeMap<u128, (u64, bool)>,
}

impl Chaos {
    fn new(n: u8, seed: u64) -> Chaos {
        let signers: Vec<Signer> = (0..n)
            .map(|i| Signer::from_seed(&format!("r{i}"), [i + 11; 32]).expect("name"))
            .collect();
        let verifiers = signers.iter().map(Signer::verifier).collect();
        let quorum = usize::from(n) / 2 + 1;
        let policy = Policy::new(&origin_for_cluster(CLUSTER), verifiers, quorum).expect("policy");
        let mut chaos = Chaos {
            n,
            rng: Prng(seed),
            signers,
            policy,
            replicas: (0..n).map(|_| None).collect(),
            disks: vec![Disk::default(); usize::from(n)],
            inputs: Vec::new(),
            saves: std::collections::VecDeque::new(),
            faults: true,
            nonce: seed << 8,
            committed: BTreeMap::new(),
            executed: BTreeMap::new(),
            acknowledged: BTreeMap::new(),
            views: vec![0; usize::from(n)],
            commits: vec![0; usize::from(n)],
            client_request: (1..=CLIENTS).map(|c| (c, (1, false))).collect(),
        };
        for i in 0..n {
            chaos.start(i);
        }
        chaos
    }

    fn config(&self, i: u8) -> Config {
        let mut config = Config::new(CLUSTER, self.n, i);
        config.heartbeat_ticks = 3;
        config.view_change_timeout_ticks = 20;
        config.prepare_retry_ticks = 6;
        config.repair_retry_ticks = 6;
        config.pipeline_max = 4;
        config.view_change_headers_max = 64;
        config
    }

    fn start(&mut self, i: u8) {
        self.nonce += 1;
        let (replica, actions) = Replica::new(
            self.config(i),
            &self.signers[usize::from(i)].verifier(),
            self.policy.clone(),
            self.disks[usize::from(i)].recovered(),
            self.nonce,
            Broken::None,
        );
        self.replicas[usize::from(i)] = Some(replica);
        self.check(i);
        self.apply(i, actions);
    }

    fn crash(&mut self, i: u8, wipe: bool) {
        self.replicas[usize::from(i)] = None;
        self.inputs.retain(|(to, _)| *to != i);
        self.saves.retain(|(to, _)| *to != i);
        let corrupt = self.rng.chance(200);
        let pick = self.rng.next();
        let disk = &mut self.disks[usize::from(i)];
        disk.crash();
        if corrupt && disk.records.len() > 1 {
            // A damaged sector below the tail: the record reads back faulty
            // at restart (a damaged tail would look absent in this harness).
            let mut ops: Vec<u64> = disk.records.keys().copied().collect();
            ops.pop();
            let op = ops[usize::try_from(pick % ops.len() as u64).expect("small")];
            disk.records.remove(&op);
        }
        if wipe {
            *disk = Disk::default();
            // A wiped replica starts over; only its peers remember.
            self.views[usize::from(i)] = 0;
            self.commits[usize::from(i)] = 0;
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
                if self.faults && self.rng.chance(80) {
                    return;
                }
                if self.faults && self.rng.chance(20) {
                    self.inputs.push((to, Input::Message(message.clone())));
                }
                self.inputs.push((to, Input::Message(message)));
                return;
            }
            Action::Seal { header, events, .. } => Input::Sealed {
                record: super::tests::seal(&header, &events),
                key: None,
            },
            Action::Write { record, .. } => {
                let (op, checksum) = (record.header.op, record.checksum());
                disk.records.insert(op, record);
                disk.unsynced.insert(op);
                self.inputs.push((
                    i,
                    Input::WriteDone {
                        writes: vec![(op, checksum)],
                    },
                ));
                return;
            }
            Action::Truncate { after_op } => {
                disk.records.retain(|op, _| *op <= after_op);
                disk.unsynced.retain(|op| *op <= after_op);
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
                    .filter(|r| r.checksum() == checksum)
                    .cloned(),
            },
            Action::Save { state } => {
                // Saves complete in the order issued, like one superblock.
                disk.pending_state = Some(state);
                self.saves.push_back((i, state));
                return;
            }
            Action::Sign { op, body } => {
                let signature = self.signers[usize::from(i)].sign(body.as_bytes()).to_vec();
                Input::Signed {
                    op,
                    body,
                    signature: Some(signature),
                }
            }
            Action::Committed { op, certificate } => {
                let certificate = certificate.encode();
                self.on_committed(i, op, &certificate);
                self.disks[usize::from(i)]
                    .certificates
                    .insert(op, certificate);
                return;
            }
            Action::Reply {
                client,
                request,
                reply,
            } => {
                self.on_reply(client, request, &reply);
                return;
            }
        };
        self.inputs.push((i, input));
    }

    fn on_committed(&mut self, i: u8, op: u64, certificate: &str) {
        let replica = self.replicas[usize::from(i)].as_ref().expect("up");
        let header = *replica.header(op).expect("a committed op is held");
        let checksum = header.checksum();
        let agreed = *self.committed.entry(op).or_insert(checksum);
        assert_eq!(agreed, checksum, "replicas committed different op {op}");
        let key = (header.client_id, header.request);
        let first = *self.executed.entry(key).or_insert(op);
        assert_eq!(first, op, "request {key:?} executed twice");
        let parsed = Certificate::parse(certificate).expect("parses");
        let verified = parsed.verify(&self.policy).expect("certificate verifies");
        assert!(verified.signers.len() >= self.policy.quorum);
        assert!(
            parsed.checkpoint.size >= header.tree_size,
            "certificate covers op {op}"
        );
    }

    fn on_reply(&mut self, client: u128, request: u64, reply: &Reply) {
        let entry = self.client_request.get_mut(&client).expect("known client");
        if entry.0 == request {
            entry.1 = true;
        }
        if let Reply::Committed(body) = reply {
            let seen = *self
                .acknowledged
                .entry(body.op)
                .or_insert((body.stream, body.first_offset));
            assert_eq!(
                seen,
                (body.stream, body.first_offset),
                "ack of op {} moved",
                body.op
            );
        }
    }

    /// Views and commits never go back, even across restarts.
    fn check(&mut self, i: u8) {
        let Some(replica) = self.replicas[usize::from(i)].as_ref() else {
            return;
        };
        let index = usize::from(i);
        assert!(
            replica.view() >= self.views[index],
            "replica {i} went back in view"
        );
        assert!(
            replica.commit() >= self.commits[index],
            "replica {i} went back in commit"
        );
        self.views[index] = replica.view();
        self.commits[index] = replica.commit();
    }

    fn step(&mut self) {
        if !self.saves.is_empty() && (self.inputs.is_empty() || self.rng.chance(300)) {
            let (i, state) = self.saves.pop_front().expect("not empty");
            self.inputs.insert(0, (i, Input::SaveDone { state }));
        }
        if self.inputs.is_empty() {
            return;
        }
        if matches!(self.inputs[0].1, Input::SaveDone { .. }) {
            self.deliver(0);
            return;
        }
        let pick = if self.faults {
            usize::try_from(self.rng.below(self.inputs.len() as u64)).expect("small")
        } else {
            0
        };
        self.deliver(pick);
    }

    fn deliver(&mut self, pick: usize) {
        let (i, input) = self.inputs.remove(pick);
        let disk = &mut self.disks[usize::from(i)];
        match &input {
            Input::WriteDone { writes } => {
                for (op, _) in writes {
                    disk.unsynced.remove(op);
                }
            }
            Input::SaveDone { state } => {
                disk.state = *state;
                disk.pending_state = None;
            }
            _ => {}
        }
        let Some(replica) = self.replicas[usize::from(i)].as_mut() else {
            return;
        };
        let actions = replica.step(input);
        self.check(i);
        self.apply(i, actions);
    }

    fn tick(&mut self) {
        for i in 0..self.n {
            if self.replicas[usize::from(i)].is_some() {
                self.inputs.push((i, Input::Tick));
            }
        }
        let clients: Vec<(u128, u64, bool)> = self
            .client_request
            .iter()
            .map(|(c, (r, done))| (*c, *r, *done))
            .collect();
        for (client, number, done) in clients {
            let number = if done { number + 1 } else { number };
            self.client_request.insert(client, (number, false));
            if self.rng.chance(300) {
                let to = u8::try_from(self.rng.below(u64::from(self.n))).expect("small");
                let request = super::tests::with_digest(
                    client,
                    number,
                    16 + u64::try_from(client % 2).expect("small"),
                    None,
                    vec![Bytes::from(format!("{client}/{number}"))],
                );
                self.inputs.push((to, Input::Request(request)));
            }
        }
    }

    fn fault(&mut self) {
        let up: Vec<u8> = (0..self.n)
            .filter(|i| self.replicas[usize::from(*i)].is_some())
            .collect();
        let down: Vec<u8> = (0..self.n)
            .filter(|i| self.replicas[usize::from(*i)].is_none())
            .collect();
        let f = usize::from(self.n - 1) / 2;
        if !down.is_empty() && self.rng.chance(8) {
            let i = down[usize::try_from(self.rng.below(down.len() as u64)).expect("small")];
            self.start(i);
        } else if down.len() < f && self.rng.chance(4) {
            let i = up[usize::try_from(self.rng.below(up.len() as u64)).expect("small")];
            let wipe = self.rng.chance(150);
            self.crash(i, wipe);
        }
    }

    fn run(&mut self) {
        for step in 0..FAULT_STEPS {
            if step % 8 == 0 {
                self.tick();
                self.fault();
            }
            self.step();
        }
        self.faults = false;
        for i in 0..self.n {
            if self.replicas[usize::from(i)].is_none() {
                self.start(i);
            }
        }
        for _ in 0..QUIET_TICKS {
            self.tick();
            let mut steps = 0;
            while !(self.inputs.is_empty() && self.saves.is_empty()) && steps < 20_000 {
                self.step();
                steps += 1;
            }
        }
    }

    fn converged(&self) -> Result<(), String> {
        let replicas: Vec<&Replica> = self
            .replicas
            .iter()
            .map(|r| r.as_ref().expect("up"))
            .collect();
        let commit = replicas[0].commit();
        for (i, r) in replicas.iter().enumerate() {
            if r.status() != Status::Normal
                || r.commit() != commit
                || r.view() != replicas[0].view()
            {
                return Err(format!(
                    "replica {i}: {:?} view {} commit {} op {} (replica 0: view {} commit {commit})",
                    r.status(),
                    r.view(),
                    r.commit(),
                    r.op(),
                    replicas[0].view()
                ));
            }
        }
        if commit == 0 {
            return Err("nothing committed".to_owned());
        }
        Ok(())
    }
}

/// Goal: under loss, duplication, reordering, crashes (losing unsynced
/// writes and saves) and wiped disks, committed ops agree, no request runs
/// twice, acknowledged ops stay put, damaged records are repaired, certificates verify, views and commits
/// never go back, and the cluster converges once faults stop.
#[test]
fn chaos_seeds_hold_the_invariants_and_converge() {
    // VSR_CHAOS_SEEDS=A..B runs more seeds locally (default 1..13).
    let range = std::env::var("VSR_CHAOS_SEEDS").unwrap_or_else(|_| "1..13".to_owned());
    let (from, to) = range.split_once("..").expect("A..B");
    let seeds = from.parse::<u64>().expect("A")..to.parse::<u64>().expect("B");
    for seed in seeds {
        for n in [3u8, 5] {
            if std::env::var_os("VSR_CHAOS_SEEDS").is_some() {
                eprintln!("seed {seed} n {n}");
            }
            let mut chaos = Chaos::new(n, seed);
            chaos.run();
            if let Err(problem) = chaos.converged() {
                for (i, r) in chaos.replicas.iter().enumerate() {
                    let r = r.as_ref().expect("up");
                    eprintln!(
                        "replica {i}: {:?} view {} log_view {} op {} commit {} commit_max {} durable {} tree {} pending {:?}",
                        r.status(),
                        r.view(),
                        r.log_view(),
                        r.op(),
                        r.commit(),
                        r.commit_max,
                        r.journal.durable_op(),
                        r.journal.tree_op(),
                        r.pending
                    );
                }
                panic!("seed {seed} n {n}: {problem}");
            }
        }
    }
}
