//! Recovery (VRR §4.3, with durable view state): a restarted replica, or one
//! that finds the cluster moved to a view it missed, does not vote until it
//! has heard, with its nonce, from enough replicas including the primary of
//! the newest view among them, and adopted that primary's log.
//!
//! A replica whose disk still holds its saved view counts itself: it knows
//! every view change it took part in, so f peers suffice (none in a cluster
//! of one). A replica with an empty disk (wiped, or new) counts itself not
//! and needs f+1 peers; when every peer reports an empty disk too, the
//! cluster is new and it starts in view 0.

use std::collections::BTreeMap;

use vellum_audit::record::OpHeader;

use super::journal::SlotState;
use super::replica::{RecoveryResponse, Replica};
use super::view_change::headers_valid;
use super::{Action, MessageBody, ReplicaIndex, Status};

impl Replica {
    /// The nonce of the current recovery attempt.
    fn recovery_nonce(&self) -> u64 {
        self.nonce.wrapping_add(self.recovery_attempt)
    }

    /// Sends Recovery to every peer.
    pub(super) fn send_recovery(&mut self) {
        self.timers.recovery_sent = self.ticks;
        let nonce = self.recovery_nonce();
        self.broadcast(MessageBody::Recovery { nonce });
    }

    /// The cluster moved on without this replica: stop voting and recover.
    pub(super) fn start_recovery(&mut self) {
        self.status = Status::Recovering;
        self.sealing = None;
        self.group.clear();
        self.queue.clear();
        self.recovery_attempt += 1;
        self.recovery_responses.clear();
        self.timers.recovery_started = self.ticks;
        self.repairs.clear();
        self.send_recovery();
    }

    pub(super) fn recovery_tick(&mut self) {
        if self.pending.is_some() {
            return;
        }
        let waited = self.ticks - self.timers.recovery_started;
        if self.recovery_counts_self && waited >= self.config.view_change_timeout_ticks {
            // No primary answers (perhaps every replica restarted): elect one.
            self.start_view_change(self.view + 1);
            return;
        }
        if self.ticks - self.timers.recovery_sent >= self.config.repair_retry_ticks {
            self.send_recovery();
        }
    }

    /// Whether this replica holds nothing at all (a new or wiped disk).
    fn holds_nothing(&self) -> bool {
        self.journal.op() == 0
            && self.view == 0
            && self.log_view == 0
            && self.commit == 0
            && self.certificate.is_none()
    }

    /// Every replica answers; only a normal primary answers as primary (the
    /// others' op and commit tell an empty replica whether anything was
    /// ever committed).
    pub(super) fn on_recovery(&mut self, from: ReplicaIndex, view: u64, nonce: u64) {
        if self.status != Status::Recovering && view > self.target_view() {
            // It saved a view this replica never reached: move there.
            self.start_view_change(view);
        }
        let is_primary = self.is_primary();
        self.send_recovery_response(from, nonce, is_primary);
    }

    fn send_recovery_response(&mut self, to: ReplicaIndex, nonce: u64, is_primary: bool) {
        let headers = if is_primary {
            self.journal.suffix(self.config.view_change_headers_max)
        } else {
            Vec::new()
        };
        // The primary names its log; the others their durable prefix, which
        // is what tells an empty replica whether any disk holds an op.
        let op = if is_primary {
            self.journal.op()
        } else {
            self.journal.durable_op()
        };
        let commit = self.commit;
        self.send(
            to,
            MessageBody::RecoveryResponse {
                nonce,
                op,
                commit,
                headers,
                is_primary,
            },
        );
    }

    pub(super) fn on_recovery_response(
        &mut self,
        from: ReplicaIndex,
        nonce: u64,
        response: RecoveryResponse,
    ) {
        let wanted = self.status == Status::Recovering
            && self.pending.is_none()
            && nonce == self.recovery_nonce()
            && headers_valid(&response.headers, self)
            && response.headers.iter().all(|h| h.op <= response.op)
            && response.commit <= response.op;
        if !wanted {
            return;
        }
        self.recovery_responses.insert(from, response);
        self.try_finish_recovery();
    }

    /// Adopts the primary's log once enough replicas answered.
    fn try_finish_recovery(&mut self) {
        let peers = usize::from(self.config.replica_count) - 1;
        let responses = &self.recovery_responses;
        let nothing_anywhere = !self.recovery_counts_self
            && self.holds_nothing()
            && responses.len() == peers
            && responses.values().all(|r| r.op == 0 && r.commit == 0);
        if nothing_anywhere {
            // No disk holds an op, so nothing was ever committed (at most f
            // disks are lost): an empty log may vote without losing anything.
            let new_cluster = responses.values().all(|r| r.view == 0 && !r.is_primary);
            if new_cluster {
                self.become_primary_or_backup_of_new_cluster();
                return;
            }
            self.recovery_counts_self = true;
        }
        let responses = &self.recovery_responses;
        let needed = self.faults_max() + usize::from(!self.recovery_counts_self);
        let Some(view) = responses.values().map(|r| r.view).max() else {
            return;
        };
        let primary = self.primary_of(view);
        let Some(chosen) = responses
            .get(&primary)
            .filter(|r| r.is_primary && r.view == view)
        else {
            return;
        };
        if responses.len() < needed || view < self.view {
            return;
        }
        let (op, commit) = (chosen.op, chosen.commit);
        let canonical: BTreeMap<u64, OpHeader> =
            chosen.headers.iter().map(|h| (h.op, *h)).collect();
        self.join_view(view, op, commit, &canonical);
    }

    /// Every replica reported an empty disk: the cluster is new.
    fn become_primary_or_backup_of_new_cluster(&mut self) {
        self.recovery_responses.clear();
        // No disk ever held an op: nothing was acknowledged before, so this
        // replica may nack from the start (see `view_change.rs`).
        self.nack_floor = 0;
        if self.primary_of(0) == self.config.replica {
            self.become_primary();
        } else {
            self.become_backup();
        }
    }

    /// A cluster of one recovers from its own disk: a damaged tail that
    /// was never committed is dropped (it was never durable, so never
    /// acknowledged); damage it cannot repair alone keeps it recovering.
    pub(super) fn recover_alone(&mut self) {
        let op = self.journal.op();
        let has_body = |op: u64| {
            self.journal
                .state(op)
                .is_some_and(|s| matches!(s, SlotState::Durable | SlotState::Writing))
        };
        if let Some(bad) = (1..=op).find(|o| !has_body(*o)) {
            let intact_after = (bad..=op).any(has_body);
            if bad <= self.commit || intact_after {
                return; // nobody to repair from
            }
            self.out.push(Action::Truncate { after_op: bad - 1 });
            self.journal.shorten_to(bad - 1);
        }
        self.become_primary();
    }
}
