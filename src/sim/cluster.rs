//! The simulated cluster: replicas, their disks, the network, the clients
//! and the event queue, driven tick by tick. The shell part executes every
//! action of the core exactly as the production shell would, but against
//! simulated devices; the checkers run after every step of every replica.

use std::collections::BTreeMap;

use bytes::Bytes;
use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::hash::Hash;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use vellum_audit::record::{OpHeader, Record};

use crate::vsr::{
    Action, Config, DurableState, Input, MessageBody, ReadPurpose, Recovered, Replica, Reply,
    Request, Status,
};

use super::checker::{Checker, Violation};
use super::disk::Disk;
use super::network::Network;
use super::options::Options;
use super::prng::Prng;
use super::records::Sealer;
use super::trace::{Trace, message_kind};

/// Events waiting in the queue, at most (a bug guard: the queue must drain).
pub const EVENTS_MAX: usize = 1 << 20;

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// A checker caught a broken safety property.
    #[error("tick {tick}: {violation}")]
    Violation { tick: u64, violation: Violation },
    /// The cluster did not converge within the bound once faults stopped.
    #[error("stuck cluster: not converged {ticks} ticks after faults stopped: {state}")]
    Stuck { ticks: u64, state: String },
    /// The core panicked (a broken invariant).
    #[error("tick {tick}: replica panicked: {message}")]
    Panic { tick: u64, message: String },
}

/// Something scheduled for a later tick.
#[derive(Debug, Clone)]
#[expect(
    clippy::large_enum_variant,
    reason = "each event is moved once; boxing inputs would only add an allocation"
)]
pub(super) enum Event {
    /// An input for a replica. `incarnation` binds completions to the
    /// process that asked (a restarted replica never sees them); `from`
    /// is the sending replica, whose link a partition may have cut since.
    Input {
        replica: u8,
        incarnation: Option<u32>,
        from: Option<u8>,
        input: Input,
    },
    /// A prepare with a forged parent: delivered as `forged` if the replica
    /// holds the header of the op before (so it can and must refuse it),
    /// else as `original`.
    Forged {
        replica: u8,
        from: u8,
        forged: Input,
        original: Input,
    },
    /// A reply reaching a client.
    Reply {
        client: usize,
        from: u8,
        request: u64,
        reply: Reply,
    },
    /// An fsync completes.
    Fsync {
        replica: u8,
        incarnation: u32,
        op: u64,
        checksum: Hash,
    },
    /// A state save completes.
    Saved {
        replica: u8,
        incarnation: u32,
        state: DurableState,
    },
}

/// One replica process and its devices.
#[derive(Debug)]
pub(super) struct Node {
    pub replica: Option<Replica>,
    pub disk: Disk,
    pub signer: Signer,
    pub incarnation: u32,
    pub down_until: Option<u64>,
    /// Ticks per million simulated ticks (clock drift).
    pub rate_per_million: u64,
    pub tick_credit: u64,
    pub last_status: Option<Status>,
    /// Restarted and not yet back in normal status.
    pub restarted: bool,
    /// Restarted from a wiped disk and not yet back in normal status.
    pub wiped: bool,
    /// The tick at which the disk's fsync queue is free.
    pub fsync_free_at: u64,
    /// (op, checksum) of every record this process knows durable: fsynced
    /// (WriteDone delivered) or found intact at start. A prepare_ok for
    /// anything else acknowledges a write that a crash could still lose.
    pub durable: std::collections::HashSet<(u64, Hash)>,
}

/// A client's request waiting for its answer.
#[derive(Debug, Clone)]
pub(super) struct Pending {
    pub request: Request,
    pub sent_at: u64,
    pub attempts: u32,
    /// The last retry went to the same replica as the attempt before it.
    pub stayed: bool,
}

/// A simulated client session.
#[derive(Debug, Clone)]
pub(super) struct Client {
    pub id: u128,
    pub next_request: u64,
    pub pending: Option<Pending>,
    /// The replica it believes is the primary.
    pub guess: u8,
    pub idle_until: u64,
}

/// The whole simulated world of one run.
#[derive(Debug)]
pub struct Sim {
    pub(super) options: Options,
    pub(super) cluster: u128,
    pub(super) policy: Policy,
    pub(super) prng: Prng,
    pub(super) now: u64,
    seq: u64,
    events: BTreeMap<(u64, u64), Event>,
    pub(super) nodes: Vec<Node>,
    pub(super) clients: Vec<Client>,
    pub(super) network: Network,
    pub(super) sealer: Sealer,
    pub(super) checker: Checker,
    pub(super) trace: Trace,
    pub(super) quiet: bool,
    pub(super) isolated: Vec<u8>,
    pub(super) partition_until: Option<u64>,
    highest_normal_view: u64,
    pub(super) counters: Counters,
    /// `VELLUM_SIM_DEBUG` is set: narrate crashes, restarts, status changes
    /// and requests on stderr.
    pub(super) debug: bool,
}

/// What the run counted.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub faults: BTreeMap<String, u64>,
    pub coverage: BTreeMap<String, u64>,
    pub view_changes: u64,
    pub recoveries: u64,
    pub state_transfers: u64,
    pub repairs: u64,
    pub acknowledged: u64,
}

impl Counters {
    pub fn fault(&mut self, kind: &str, count: u64) {
        if count > 0 {
            *self.faults.entry(kind.to_string()).or_default() += count;
        }
    }

    pub fn cover(&mut self, path: &str) {
        *self.coverage.entry(path.to_string()).or_default() += 1;
    }
}

impl Sim {
    /// A cluster for `options`, not started yet. Every key, id and rate is
    /// drawn from the seed.
    pub fn new(options: Options) -> Sim {
        assert!(
            (1..=crate::vsr::REPLICAS_MAX as u8).contains(&options.replicas)
                && options.replicas % 2 == 1,
            "replica count {} is not 2f+1 within the limit",
            options.replicas
        );
        assert!(
            options.clients <= super::options::CLIENTS_MAX,
            "too many clients"
        );
        let mut prng = Prng::new(options.seed);
        let cluster = u128::from(prng.next_u64()) << 64 | u128::from(prng.next_u64());
        let signers: Vec<Signer> = (0..options.replicas)
            .map(|i| {
                Signer::from_seed(&format!("replica-{i}"), prng.bytes32())
                    .expect("replica-N is a valid key name")
            })
            .collect();
        let quorum = usize::from(options.replicas) / 2 + 1;
        let policy = Policy::new(
            &origin_for_cluster(cluster),
            signers.iter().map(Signer::verifier).collect(),
            quorum,
        )
        .expect("distinct generated keys make a valid policy");
        let drift = u64::from(options.profile.drift_per_million);
        let nodes = signers
            .into_iter()
            .map(|signer| Node {
                replica: None,
                disk: Disk::new(),
                signer,
                incarnation: 0,
                down_until: None,
                rate_per_million: 1_000_000 - drift + prng.range(0, 2 * drift),
                tick_credit: 0,
                last_status: None,
                restarted: false,
                wiped: false,
                fsync_free_at: 0,
                durable: std::collections::HashSet::new(),
            })
            .collect();
        let clients = (0..options.clients)
            .map(|_| Client {
                id: u128::from(prng.next_u64() | 1) << 64 | u128::from(prng.next_u64()),
                next_request: 1,
                pending: None,
                guess: 0,
                idle_until: 0,
            })
            .collect();
        let network = Network::new(options.profile.link, prng.fork());
        let sealer = Sealer::new(prng.bytes32());
        let checker = Checker::new(cluster, options.replicas, policy.clone());
        Sim {
            options,
            cluster,
            policy,
            prng,
            now: 0,
            seq: 0,
            events: BTreeMap::new(),
            nodes,
            clients,
            network,
            sealer,
            checker,
            trace: Trace::new(),
            quiet: false,
            isolated: Vec::new(),
            partition_until: None,
            highest_normal_view: 0,
            counters: Counters::default(),
            debug: std::env::var_os("VELLUM_SIM_DEBUG").is_some(),
        }
    }

    pub(super) fn violation(&self, violation: Violation) -> RunError {
        RunError::Violation {
            tick: self.now,
            violation,
        }
    }

    /// Queues an event for `tick`.
    pub(super) fn schedule(&mut self, tick: u64, event: Event) {
        assert!(
            self.events.len() < EVENTS_MAX,
            "event queue overflow: events are not draining"
        );
        self.seq += 1;
        self.events.insert((tick, self.seq), event);
    }

    /// The earliest queued event due at or before `tick`.
    pub(super) fn pop_event_at_or_before(&mut self, tick: u64) -> Option<Event> {
        let entry = self.events.first_entry()?;
        if entry.key().0 > tick {
            return None;
        }
        Some(entry.remove())
    }

    /// Starts replica `index` from its disk (fresh at tick 0, or a restart).
    pub(super) fn start(&mut self, index: u8) -> Result<(), RunError> {
        let recovered: Recovered = self.nodes[usize::from(index)].disk.recover();
        if self.debug {
            let faulty: Vec<u64> = recovered
                .journal
                .iter()
                .filter_map(|e| match e {
                    crate::vsr::JournalEntry::Faulty { op, .. } => Some(*op),
                    crate::vsr::JournalEntry::Intact { .. } => None,
                })
                .collect();
            eprintln!(
                "tick {} r{index} starts: {:?}, {} ops, faulty {faulty:?}",
                self.now,
                recovered.state,
                recovered.journal.len()
            );
        }
        let nonce = self.prng.next_u64();
        self.trace.event(self.now, index, 1, nonce);
        // The bounds a real replica runs with.
        let mut config = Config::for_cluster(self.cluster, self.options.replicas, index);
        if self.options.small_windows {
            config.pipeline_max = super::options::SMALL_PIPELINE_MAX;
            config.request_queue_max = 4 * super::options::SMALL_PIPELINE_MAX;
            config.view_change_headers_max = super::options::SMALL_VIEW_CHANGE_HEADERS_MAX;
        }
        let node = &mut self.nodes[usize::from(index)];
        let restart = node.incarnation > 0;
        if restart {
            self.checker.restarted(index, recovered.state);
        }
        node.durable = recovered
            .journal
            .iter()
            .filter_map(|entry| match entry {
                crate::vsr::JournalEntry::Intact { header, .. } => {
                    Some((header.op, header.checksum()))
                }
                crate::vsr::JournalEntry::Faulty { .. } => None,
            })
            .collect();
        let (replica, actions) = Replica::new(
            config,
            &node.signer.verifier(),
            self.policy.clone(),
            recovered,
            nonce,
            self.options.broken,
        );
        node.incarnation += 1;
        node.down_until = None;
        node.restarted = restart;
        node.last_status = None;
        let (view, commit) = (replica.view(), replica.commit());
        node.replica = Some(replica);
        if restart {
            self.checker
                .check_restart(index, view, commit)
                .map_err(|v| self.violation(v))?;
        }
        self.after_step(index, actions)
    }

    /// Feeds one input to a running replica, then checks and executes.
    pub(super) fn deliver(&mut self, index: u8, input: Input) -> Result<(), RunError> {
        let Some(replica) = self.nodes[usize::from(index)].replica.as_mut() else {
            return Ok(());
        };
        self.trace.input(self.now, index, &input);
        let debug = match (&input, self.debug) {
            (Input::Request(r), true) => Some((r.client, r.request)),
            _ => None,
        };
        let nacked_before = replica.nack_truncations();
        let actions = replica.step(input);
        if replica.nack_truncations() > nacked_before {
            self.counters.cover("view_change:nack_truncated");
        }
        if let Some((client, request)) = debug {
            let kinds: Vec<String> = actions
                .iter()
                .map(|a| format!("{a:?}").chars().take(60).collect())
                .collect();
            eprintln!(
                "tick {} r{index} request {client:x}/{request} status {:?} view {}: {kinds:?}",
                self.now,
                replica.status(),
                replica.view()
            );
        }
        self.after_step(index, actions)
    }

    fn after_step(&mut self, index: u8, actions: Vec<Action>) -> Result<(), RunError> {
        self.observe(index)?;
        for action in actions {
            self.execute(index, action)?;
        }
        Ok(())
    }

    /// Runs the per-replica checkers and counts status transitions.
    fn observe(&mut self, index: u8) -> Result<(), RunError> {
        let node = &self.nodes[usize::from(index)];
        let Some(replica) = node.replica.as_ref() else {
            return Ok(());
        };
        let disk = &node.disk;
        let numbers = (replica.view(), replica.log_view(), replica.commit());
        let header = |op: u64| -> Option<OpHeader> {
            replica.header(op).copied().or_else(|| disk.header(op))
        };
        if let Err(v) = self.checker.observe(index, numbers, header) {
            return Err(self.violation(v));
        }
        let status = replica.status();
        let view = replica.view();
        let node = &mut self.nodes[usize::from(index)];
        let previous = node.last_status.replace(status);
        if previous != Some(status) && self.debug {
            eprintln!("tick {} r{index} status {status:?} view {view}", self.now);
        }
        if previous != Some(status) {
            self.counters
                .cover(&format!("status:{status:?}").to_lowercase());
        }
        if status == Status::Normal && node.restarted {
            node.restarted = false;
            if std::mem::take(&mut node.wiped) {
                self.counters.state_transfers += 1;
            } else {
                self.counters.recoveries += 1;
            }
        }
        if status == Status::Normal && view > self.highest_normal_view {
            self.highest_normal_view = view;
            self.counters.view_changes += 1;
        }
        Ok(())
    }

    /// Schedules a shell's answer to replica `index`'s action (dropped if
    /// that incarnation is gone by then).
    fn answer(&mut self, index: u8, incarnation: Option<u32>, at: u64, input: Input) {
        self.schedule(
            at,
            Event::Input {
                replica: index,
                incarnation,
                from: None,
                input,
            },
        );
    }

    /// Executes one action of replica `index` against the simulated world.
    fn execute(&mut self, index: u8, action: Action) -> Result<(), RunError> {
        let incarnation = Some(self.nodes[usize::from(index)].incarnation);
        match action {
            Action::Send { to, message } => self.send(index, to, message)?,
            Action::Seal {
                header,
                events,
                trail_for,
            } => {
                if !trail_for.is_empty() {
                    self.counters.cover("group:trail-op");
                }
                let events = super::records::complete_trail(events, &trail_for);
                let (record, key) = self.sealer.seal(&header, &events);
                self.checker.note_record(&record);
                let input = Input::Sealed { record, key };
                self.answer(index, incarnation, self.now, input);
            }
            Action::Write { record, key } => self.write(index, &record, key)?,
            Action::Truncate { after_op } => {
                self.counters.cover("truncate");
                self.nodes[usize::from(index)].disk.truncate(after_op);
            }
            Action::Read {
                op,
                checksum,
                purpose,
            } => {
                let record = self.nodes[usize::from(index)].disk.read(op, &checksum);
                self.counters.cover(match (&purpose, &record) {
                    (_, None) => "read:missing",
                    (ReadPurpose::Repair { .. }, Some(_)) => "read:repair",
                    (ReadPurpose::Retransmit, Some(_)) => "read:retransmit",
                });
                if let Some(record) = &record {
                    self.checker.note_record(record);
                }
                let input = Input::ReadDone {
                    op,
                    purpose,
                    record,
                };
                self.answer(index, incarnation, self.now + 1, input);
            }
            Action::Save { state } => {
                let node = &mut self.nodes[usize::from(index)];
                node.disk.save(state);
                let (low, high) = self.options.profile.fsync_ticks;
                let at = self.now + self.prng.range(low, high);
                let incarnation = node.incarnation;
                self.schedule(
                    at,
                    Event::Saved {
                        replica: index,
                        incarnation,
                        state,
                    },
                );
            }
            Action::Sign { op, body } => {
                // The simulated signer never fails; the answer comes back
                // as its own input, as the production shell's does.
                self.counters.cover("sign");
                let node = &self.nodes[usize::from(index)];
                let signature = node.signer.sign(body.as_bytes()).to_vec();
                let input = Input::Signed {
                    op,
                    body,
                    signature: Some(signature),
                };
                self.answer(index, incarnation, self.now, input);
            }
            Action::Committed { op, certificate } => {
                let certificate = certificate.encode();
                self.counters.cover("committed");
                self.nodes[usize::from(index)]
                    .disk
                    .store_certificate(op, &certificate);
                let source = format!("committed action of replica {index}");
                self.checker
                    .certificate(&certificate, &source, Some(op))
                    .map_err(|v| self.violation(v))?;
            }
            Action::Reply {
                client,
                request,
                reply,
            } => self.reply(index, client, request, reply)?,
        }
        Ok(())
    }

    fn send(&mut self, index: u8, to: u8, message: crate::vsr::Message) -> Result<(), RunError> {
        self.counters
            .cover(&format!("send:{}", message_kind(&message.body)));
        match &message.body {
            MessageBody::Prepare { record, .. } => self.checker.note_record(record),
            MessageBody::PrepareOk { op, checksum, .. }
                if !self.nodes[usize::from(index)]
                    .durable
                    .contains(&(*op, *checksum)) =>
            {
                let violation = Violation::AckBeforeDurable {
                    replica: index,
                    op: *op,
                };
                return Err(self.violation(violation));
            }
            MessageBody::RequestPrepare { .. } => self.counters.repairs += 1,
            MessageBody::Commit {
                certificate: Some(text),
                ..
            } => {
                let source = format!("commit heartbeat of replica {index}");
                self.checker
                    .certificate(text, &source, None)
                    .map_err(|v| self.violation(v))?;
            }
            _ => {}
        }
        assert!(
            to < self.options.replicas,
            "replica {index} sends to unknown replica {to}"
        );
        let forged = self.maybe_unchain(&message);
        let route = self.network.route(index, to, self.now);
        if !self.quiet {
            self.counters
                .fault("message_loss", u64::from(route.lost && !route.partitioned));
            self.counters
                .fault("message_duplicate", u64::from(route.duplicated));
            self.counters
                .fault("message_reorder", u64::from(route.reordered));
        }
        for at in route.arrivals {
            let event = match &forged {
                Some(forged) => Event::Forged {
                    replica: to,
                    from: index,
                    forged: Input::Message(forged.clone()),
                    original: Input::Message(message.clone()),
                },
                None => Event::Input {
                    replica: to,
                    incarnation: None,
                    from: Some(index),
                    input: Input::Message(message.clone()),
                },
            };
            self.schedule(at, event);
        }
        Ok(())
    }

    /// The fault "unchained prepare": a copy of the prepare whose record
    /// names another parent (body and checksums still well-formed). It is
    /// delivered only to a replica that holds the op before (see
    /// `Event::Forged`): one that cannot check the chain may rightly accept
    /// it, since a primary sends one prepare per op and view.
    fn maybe_unchain(&mut self, message: &crate::vsr::Message) -> Option<crate::vsr::Message> {
        let MessageBody::Prepare {
            record,
            commit,
            key,
        } = &message.body
        else {
            return None;
        };
        let rate = self.options.profile.unchained_prepare_per_million;
        if self.quiet || record.header.op < 2 || !self.prng.chance(rate) {
            return None;
        }
        let mut header = record.header;
        header.parent = vellum_audit::hash::sha256(&[b"unchained", &header.parent]);
        let forged = Record {
            header,
            body: record.body.clone(),
        };
        self.checker.note_record(&forged);
        let body = MessageBody::Prepare {
            record: forged,
            commit: *commit,
            key: key.clone(),
        };
        Some(crate::vsr::Message {
            body,
            ..message.clone()
        })
    }

    fn write(&mut self, index: u8, record: &Record, key: Option<Bytes>) -> Result<(), RunError> {
        let op = record.header.op;
        let previous = self.nodes[usize::from(index)]
            .replica
            .as_ref()
            .and_then(|r| r.header(op.checked_sub(1)?).map(OpHeader::checksum));
        if previous.is_some_and(|parent| parent != record.header.parent) {
            let violation = Violation::UnchainedJournal { replica: index, op };
            return Err(self.violation(violation));
        }
        if key.is_some() {
            // The key store is not simulated: keys never enter the journal (P6).
            self.counters.cover("write:with_key");
        }
        self.checker.note_record(record);
        let (low, high) = self.options.profile.fsync_ticks;
        let delay = self.prng.range(low, high);
        let node = &mut self.nodes[usize::from(index)];
        node.disk.write(record);
        let at = node.fsync_free_at.max(self.now) + delay;
        node.fsync_free_at = at;
        let incarnation = node.incarnation;
        let checksum = record.checksum();
        self.schedule(
            at,
            Event::Fsync {
                replica: index,
                incarnation,
                op,
                checksum,
            },
        );
        Ok(())
    }
}
