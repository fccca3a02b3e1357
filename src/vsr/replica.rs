//! One VSR replica: its state, its start from disk and the dispatch of
//! inputs. The protocol's parts live beside it: `normal.rs` (requests,
//! prepare, prepare_ok, commit), `view_change.rs`, `recovery.rs`,
//! `repair.rs`, `certify.rs` (checkpoints and certificates), `journal.rs`
//! and `client_table.rs`. Every handler pushes its actions to `self.out`,
//! which [`Replica::step`] hands back in order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::note::Verifier;
use vellum_audit::policy::Policy;
use vellum_audit::record::OpHeader;

use super::certify::Cert;
use super::client_table::ClientTable;
use super::journal::{Journal, SlotState};
use super::{
    Action, Broken, Config, DurableState, DvcHeader, Input, JournalEntry, Message, MessageBody,
    NACK_NONE, REPLICAS_MAX, Recovered, ReplicaIndex, Request, Status,
};

/// What a replica does once a [`DurableState`] it asked to save is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterSave {
    /// Enter the view change (send start_view_change).
    StartViewChange,
    /// Start the view as its primary (send start_view).
    BecomePrimary,
    /// Join the view as a backup (after start_view or recovery).
    BecomeBackup,
}

/// A save in flight and what waits on it.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingSave {
    pub state: DurableState,
    pub then: AfterSave,
}

/// The event being sealed by the shell (one at a time, to keep op order).
#[derive(Debug, Clone)]
pub(super) struct Sealing {
    pub header: OpHeader,
    /// The request's trail template, kept for the trail op of its group.
    pub trail: Option<Bytes>,
}

/// A do_view_change as the new primary keeps it.
#[derive(Debug, Clone)]
pub(super) struct Dvc {
    pub log_view: u64,
    pub op: u64,
    pub commit: u64,
    pub nack_from: u64,
    pub headers: Vec<DvcHeader>,
}

/// A recovery_response as the recovering replica keeps it.
#[derive(Debug, Clone)]
pub(super) struct RecoveryResponse {
    pub view: u64,
    pub op: u64,
    pub commit: u64,
    pub headers: Vec<OpHeader>,
    pub is_primary: bool,
}

/// Tick stamps of the replica's timers.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Timers {
    /// A backup last heard from its primary.
    pub primary_heard: u64,
    /// The primary last sent a commit heartbeat.
    pub heartbeat_sent: u64,
    /// The primary last retransmitted unacknowledged prepares.
    pub prepare_retried: u64,
    /// The current view change started.
    pub view_change_started: u64,
    /// View change messages were last (re)sent.
    pub view_change_sent: u64,
    /// Recovery was last (re)sent.
    pub recovery_sent: u64,
    /// The current recovery started.
    pub recovery_started: u64,
    /// The primary's log was last complete (every body known).
    pub primary_complete: u64,
}

/// One replica of the cluster, as a pure state machine.
#[derive(Debug)]
pub struct Replica {
    pub(super) config: Config,
    /// The key id of this replica's signing key (its newest pinned key).
    /// The core never signs: it asks the shell ([`Action::Sign`]), whose
    /// key may live in a token, and keeps the answers in `own_signatures`.
    pub(super) own_key_id: [u8; 4],
    /// This replica's signatures over its own checkpoints, by op, with the
    /// checkpoint body signed (a signature counts only while the
    /// checkpoint after its op is still that body). At most
    /// `certify::OWN_SIGNATURES_KEPT`, the most recently made.
    pub(super) own_signatures: VecDeque<(u64, String, Vec<u8>)>,
    /// Checkpoint bodies the shell was asked to sign and has not answered
    /// yet, by op: asked once each.
    pub(super) signing: BTreeMap<u64, String>,
    pub(super) policy: Policy,
    pub(super) origin: String,
    pub(super) broken: Broken,
    pub(super) nonce: u64,
    pub(super) status: Status,
    pub(super) view: u64,
    pub(super) log_view: u64,
    /// Ops `1..=commit` are committed and applied here.
    pub(super) commit: u64,
    /// The highest op known committed in the cluster (from the primary).
    pub(super) commit_max: u64,
    pub(super) journal: Journal,
    pub(super) clients: ClientTable,
    /// The newest certificate verified here.
    pub(super) certificate: Option<Cert>,
    pub(super) ticks: u64,
    pub(super) timers: Timers,
    pub(super) pending: Option<PendingSave>,
    // Primary.
    /// Verified prepare_ok signatures by op, then replica.
    pub(super) acks: BTreeMap<u64, BTreeMap<ReplicaIndex, Vec<u8>>>,
    /// The highest op each replica acknowledged in this view.
    pub(super) acked: BTreeMap<ReplicaIndex, u64>,
    pub(super) sealing: Option<Sealing>,
    /// The open atomic group (primary): the trail template and header of
    /// each op prepared in it that carries one. Non-empty while the group
    /// is open; every op prepared then continues the group, until the
    /// trail op that closes it.
    pub(super) group: Vec<(Bytes, OpHeader)>,
    /// The first op of the open group (meaningful while `group` is not empty).
    pub(super) group_first_op: u64,
    pub(super) queue: VecDeque<Request>,
    /// Wrapped data keys of uncommitted ops, for retransmissions.
    pub(super) keys: BTreeMap<u64, Bytes>,
    // View change.
    pub(super) svc_view: u64,
    pub(super) svc_from: BTreeSet<ReplicaIndex>,
    pub(super) dvc_view: u64,
    pub(super) dvcs: BTreeMap<ReplicaIndex, Dvc>,
    pub(super) dvc_sent: bool,
    pub(super) dvc_done: bool,
    /// Ops at or below this one are never nacked: this replica adopted a
    /// log after a wiped disk and an earlier life of it may have
    /// acknowledged them. [`NACK_NONE`] until it adopts a log after its
    /// start (it nacks nothing before). See `view_change.rs`.
    pub(super) nack_floor: u64,
    /// View changes this replica led whose log ended below a nacked op.
    pub(super) nack_truncations: u64,
    // Recovery.
    pub(super) recovery_attempt: u64,
    pub(super) recovery_counts_self: bool,
    pub(super) recovery_responses: BTreeMap<ReplicaIndex, RecoveryResponse>,
    // Repair: op -> tick the request was sent.
    pub(super) repairs: BTreeMap<u64, u64>,
    pub(super) repair_cursor: u64,
    /// The tick at which each replica (by index) was last heard from.
    pub(super) peer_heard: Vec<u64>,
    pub(super) out: Vec<Action>,
}

impl Replica {
    /// Starts a replica from what its disk holds. `nonce` is the shell's
    /// random number for the recovery protocol (the core has no randomness).
    /// Returns the replica and its first actions.
    ///
    /// A replica always starts `Recovering` (a cluster of one recovers from
    /// its own disk at once); an empty disk rebuilds from its peers, and a
    /// brand-new cluster is recognized when every peer reports an empty disk.
    pub fn new(
        config: Config,
        own_key: &Verifier,
        policy: Policy,
        recovered: Recovered,
        nonce: u64,
        broken: Broken,
    ) -> (Replica, Vec<Action>) {
        check_config(&config, own_key, &policy);
        let origin = origin_for_cluster(config.cluster);
        let empty = recovered.journal.is_empty()
            && recovered.state == DurableState::default()
            && recovered.certificates.is_empty();
        let replica_count = usize::from(config.replica_count);
        let mut replica = Replica {
            journal: Journal::new(config.cluster),
            clients: ClientTable::new(config.clients_max),
            config,
            own_key_id: own_key.key_id(),
            own_signatures: VecDeque::new(),
            signing: BTreeMap::new(),
            policy,
            origin,
            broken,
            nonce,
            status: Status::Recovering,
            view: recovered.state.view,
            log_view: recovered.state.log_view,
            commit: 0,
            commit_max: 0,
            certificate: None,
            ticks: 0,
            timers: Timers::default(),
            pending: None,
            acks: BTreeMap::new(),
            acked: BTreeMap::new(),
            sealing: None,
            group: Vec::new(),
            group_first_op: 0,
            queue: VecDeque::new(),
            keys: BTreeMap::new(),
            svc_view: 0,
            svc_from: BTreeSet::new(),
            dvc_view: 0,
            dvcs: BTreeMap::new(),
            dvc_sent: false,
            dvc_done: false,
            nack_floor: NACK_NONE,
            nack_truncations: 0,
            recovery_attempt: 0,
            recovery_counts_self: !empty,
            recovery_responses: BTreeMap::new(),
            repairs: BTreeMap::new(),
            repair_cursor: 0,
            peer_heard: vec![0; replica_count],
            out: Vec::new(),
        };
        replica.load(&recovered);
        if replica.config.replica_count == 1 {
            replica.recover_alone();
        } else {
            replica.send_recovery();
        }
        let actions = std::mem::take(&mut replica.out);
        (replica, actions)
    }

    /// Loads the journal, the certificates and the client table from disk.
    fn load(&mut self, recovered: &Recovered) {
        for entry in &recovered.journal {
            match entry {
                JournalEntry::Intact { header, leaves } => self.load_intact(header, leaves),
                JournalEntry::Faulty { op, header } => {
                    self.journal.set_faulty(*op, header.filter(|h| h.op == *op))
                }
            }
        }
        let mut commit = recovered.state.commit;
        // A certificate stored for an op may certify a later op that covers it.
        let newest = recovered.certificates.iter().rev().find_map(|(op, text)| {
            let cert = self.verify_certificate(text)?;
            (cert.op >= *op).then_some(cert)
        });
        if let Some(cert) = newest.filter(|c| {
            self.journal
                .header(c.op)
                .is_none_or(|h| h.checksum() == c.head)
        }) {
            commit = commit.max(cert.op);
            self.certificate = Some(cert);
        }
        self.journal.extend_to(commit);
        for op in 1..=commit {
            if let Some(header) = self.journal.header(op).copied() {
                self.clients.apply(&header);
            }
        }
        self.commit = commit;
        self.commit_max = commit;
    }

    /// Loads one intact entry; one that does not chain to the op before it
    /// (a stale record left behind) is faulty.
    fn load_intact(&mut self, header: &OpHeader, leaves: &[vellum_audit::hash::Hash]) {
        let op = header.op;
        let chains = self
            .journal
            .parent_for(op - 1)
            .is_none_or(|parent| parent == header.parent);
        let fits = header.tree_size - header.global_position == leaves.len() as u64
            && self.journal.op() + 1 == op;
        if chains && fits {
            self.journal
                .fill(*header, leaves.to_vec(), SlotState::Durable);
        } else {
            self.journal.set_faulty(op, Some(*header));
        }
    }

    /// Feeds one input; returns the actions to execute, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        match input {
            Input::Tick => self.on_tick(),
            Input::Message(message) => self.on_message(message),
            Input::Request(request) => self.on_request(request),
            Input::Sealed { record, key } => self.on_sealed(record, key),
            Input::WriteDone { writes } => self.on_writes_done(&writes),
            Input::ReadDone {
                op,
                purpose,
                record,
            } => self.on_read_done(op, purpose, record),
            Input::SaveDone { state } => self.on_save_done(state),
            Input::Signed {
                op,
                body,
                signature,
            } => self.on_signed(op, body, signature),
        }
        std::mem::take(&mut self.out)
    }

    fn on_message(&mut self, message: Message) {
        let from = message.from;
        let known = message.cluster == self.config.cluster
            && from != self.config.replica
            && from < self.config.replica_count;
        if !known {
            return;
        }
        self.peer_heard[usize::from(from)] = self.ticks;
        let view = message.view;
        match message.body {
            MessageBody::Prepare {
                record,
                commit,
                key,
            } => self.on_prepare(from, view, record, commit, key),
            MessageBody::PrepareOk {
                op,
                checksum,
                signature,
            } => self.on_prepare_ok(from, view, op, checksum, signature),
            MessageBody::Commit {
                commit,
                certificate,
            } => self.on_commit(from, view, commit, certificate),
            MessageBody::StartViewChange => self.on_start_view_change(from, view),
            MessageBody::DoViewChange {
                log_view,
                op,
                commit,
                nack_from,
                headers,
            } => self.on_do_view_change(
                from,
                view,
                Dvc {
                    log_view,
                    op,
                    commit,
                    nack_from,
                    headers,
                },
            ),
            MessageBody::StartView {
                op,
                commit,
                headers,
            } => self.on_start_view(from, view, op, commit, headers),
            MessageBody::RequestPrepare { op, checksum } => {
                self.on_request_prepare(from, op, checksum)
            }
            MessageBody::Recovery { nonce } => self.on_recovery(from, view, nonce),
            MessageBody::RecoveryResponse {
                nonce,
                op,
                commit,
                headers,
                is_primary,
            } => self.on_recovery_response(
                from,
                nonce,
                RecoveryResponse {
                    view,
                    op,
                    commit,
                    headers,
                    is_primary,
                },
            ),
        }
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        match self.status {
            Status::Normal if self.pending.is_none() => {
                if self.is_primary() {
                    self.primary_tick();
                } else {
                    self.backup_tick();
                }
            }
            Status::ViewChange => self.view_change_tick(),
            Status::Recovering => self.recovery_tick(),
            Status::Normal => {}
        }
        self.repair_tick();
    }

    /// Asks the shell to save `state`; `then` runs once it is durable.
    pub(super) fn save(&mut self, state: DurableState, then: AfterSave) {
        self.pending = Some(PendingSave { state, then });
        self.out.push(Action::Save { state });
    }

    fn on_save_done(&mut self, state: DurableState) {
        let Some(pending) = self.pending else { return };
        if pending.state != state {
            return; // an older save; the newest one is still in flight
        }
        self.pending = None;
        assert!(state.view >= self.view, "a replica never goes back in view");
        self.view = state.view;
        match pending.then {
            AfterSave::StartViewChange => self.enter_view_change(),
            AfterSave::BecomePrimary => self.become_primary(),
            AfterSave::BecomeBackup => self.become_backup(),
        }
    }

    /// The view this replica is in or is about to enter (a save in flight).
    pub(super) fn target_view(&self) -> u64 {
        self.pending
            .map_or(self.view, |p| p.state.view.max(self.view))
    }

    /// The primary of `view`.
    pub(super) fn primary_of(&self, view: u64) -> ReplicaIndex {
        let index = view % u64::from(self.config.replica_count);
        ReplicaIndex::try_from(index).expect("below replica_count, which is a u8")
    }

    /// Whether a deliberately broken behaviour is on (only with `sim-broken`).
    pub(super) fn broken(&self, variant: Broken) -> bool {
        cfg!(feature = "sim-broken") && self.broken == variant
    }

    /// Sends `body` to one replica, stamped with this replica's view.
    pub(super) fn send(&mut self, to: ReplicaIndex, body: MessageBody) {
        let message = Message {
            cluster: self.config.cluster,
            from: self.config.replica,
            view: self.view,
            body,
        };
        self.out.push(Action::Send { to, message });
    }

    /// Sends `body` to every other replica.
    pub(super) fn broadcast(&mut self, body: MessageBody) {
        for to in 0..self.config.replica_count {
            if to != self.config.replica {
                self.send(to, body.clone());
            }
        }
    }

    /// f: the failures the cluster tolerates.
    pub(super) fn faults_max(&self) -> usize {
        usize::from(self.config.replica_count - 1) / 2
    }

    /// The replica's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Current status.
    pub fn status(&self) -> Status {
        self.status
    }

    /// Current view.
    pub fn view(&self) -> u64 {
        self.view
    }

    /// The last view in which the status was normal.
    pub fn log_view(&self) -> u64 {
        self.log_view
    }

    /// The highest op in the journal.
    pub fn op(&self) -> u64 {
        self.journal.op()
    }

    /// The commit number.
    /// One line per op above the commit: state, checksum and parent
    /// prefixes, and the repairs in flight (the simulator prints it for a
    /// replica that did not converge).
    pub fn describe_tail(&self) -> String {
        let short = |h: &[u8; 32]| {
            h[..3]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let mut out = format!(
            "commit {} commit_max {} durable {} tree {} repairs {:?}\n",
            self.commit,
            self.commit_max,
            self.journal.durable_op(),
            self.journal.tree_op(),
            self.repairs.keys().collect::<Vec<_>>()
        );
        for op in self.commit.saturating_sub(1).max(1)..=self.journal.op() {
            let slot = self.journal.slot(op).expect("within the journal");
            let header = slot
                .header
                .map(|h| format!("{} <- {}", short(&h.checksum()), short(&h.parent)));
            out.push_str(&format!("  op {op} {:?} {header:?}\n", slot.state));
        }
        out
    }

    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// True when this replica is the primary of its view and normal.
    pub fn is_primary(&self) -> bool {
        self.status == Status::Normal
            && self.pending.is_none()
            && self.primary_of(self.view) == self.config.replica
    }

    /// View changes this replica led (as the new primary) whose log ended
    /// below an op that a quorum nacked (for the simulator's coverage).
    pub fn nack_truncations(&self) -> u64 {
        self.nack_truncations
    }

    /// The journal's header for `op`, if present and intact.
    pub fn header(&self, op: u64) -> Option<&OpHeader> {
        let slot = self.journal.slot(op)?;
        if slot.has_body() {
            slot.header.as_ref()
        } else {
            None
        }
    }
}

/// Checks the configuration against the keys; a mismatch is a wiring bug.
fn check_config(config: &Config, own_key: &Verifier, policy: &Policy) {
    let count = usize::from(config.replica_count);
    assert!(
        (1..=REPLICAS_MAX).contains(&count) && count % 2 == 1,
        "replica count {count} is not 2f+1 within {REPLICAS_MAX}"
    );
    assert!(
        config.replica < config.replica_count,
        "replica index out of range"
    );
    // An atomic group needs room for an append and its trail op.
    assert!(config.pipeline_max >= 2 && config.repair_requests_max >= 1);
    assert!(config.group_appends_max >= 1);
    assert!(
        config.view_change_headers_max > config.pipeline_max,
        "view change headers must cover the pipeline"
    );
    assert!(config.heartbeat_ticks >= 1 && config.view_change_timeout_ticks >= 1);
    assert!(config.prepare_retry_ticks >= 1 && config.repair_retry_ticks >= 1);
    assert!(
        policy.verifiers.len() >= count,
        "the policy pins every replica"
    );
    assert!(
        policy.quorum <= config.quorum(),
        "policy quorum above the cluster's"
    );
    assert_eq!(
        policy.origin,
        origin_for_cluster(config.cluster),
        "policy origin"
    );
    // After a pinned rotation the replica signs with its newest key.
    let own = policy
        .verifier_at(usize::from(config.replica), u64::MAX)
        .expect("the policy pins every replica");
    assert_eq!(
        own.key_id(),
        own_key.key_id(),
        "signer is not this replica's pinned key"
    );
}
