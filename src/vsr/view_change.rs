//! The view change (VRR §4.2): start_view_change, do_view_change and
//! start_view. Every move to a higher view is saved before it takes effect,
//! so a replica never goes back in view across restarts. The new primary
//! keeps every committed op, keeps the uncommitted ops some log of the
//! newest log view holds durably, and drops the rest.

use std::collections::BTreeMap;

use vellum_audit::record::{OpHeader, RecordKind};

use super::replica::{AfterSave, Dvc, Replica};
use super::{Action, DurableState, MessageBody, ReplicaIndex, Status};

impl Replica {
    /// Moves towards `view` (higher than any view this replica is in or
    /// entering): save it, then send start_view_change.
    pub(super) fn start_view_change(&mut self, view: u64) {
        if !self.may_join_view_change() || view <= self.target_view() {
            return;
        }
        self.status = Status::ViewChange;
        self.sealing = None;
        self.group.clear();
        self.queue.clear();
        if self.svc_view != view {
            self.svc_view = view;
            self.svc_from.clear();
        }
        self.svc_from.insert(self.config.replica);
        if self.dvc_view != view {
            self.dvc_view = view;
            self.dvcs.clear();
            self.dvc_sent = false;
            self.dvc_done = false;
        }
        let state = DurableState {
            view,
            log_view: self.log_view,
            commit: self.commit,
        };
        self.save(state, AfterSave::StartViewChange);
    }

    /// The new view is saved: announce it.
    pub(super) fn enter_view_change(&mut self) {
        self.status = Status::ViewChange;
        self.timers.view_change_started = self.ticks;
        self.timers.view_change_sent = self.ticks;
        self.acks.clear();
        self.acked.clear();
        self.broadcast(MessageBody::StartViewChange);
        self.maybe_do_view_change();
    }

    pub(super) fn on_start_view_change(&mut self, from: ReplicaIndex, view: u64) {
        if !self.accepts_view_change_message(view) {
            return;
        }
        self.start_view_change(view);
        if self.svc_view == view {
            self.svc_from.insert(from);
        }
        self.maybe_do_view_change();
    }

    /// Whether a view change message of `view` concerns this replica.
    fn accepts_view_change_message(&self, view: u64) -> bool {
        let settled = view == self.view && self.status == Status::Normal;
        self.may_join_view_change() && view >= self.target_view() && !settled
    }

    /// Whether this replica may take part in a view change. A recovering
    /// replica may when its disk kept its saved view (it knows every view
    /// change it joined, and it claims only ops it holds durably): without
    /// it, a cluster in which more than f replicas restarted at once could
    /// never elect a primary to recover from. A wiped replica may not.
    pub(super) fn may_join_view_change(&self) -> bool {
        self.status != Status::Recovering || self.recovery_counts_self
    }

    /// On f+1 start_view_changes (its own included), send do_view_change.
    fn maybe_do_view_change(&mut self) {
        let ready = self.status == Status::ViewChange
            && self.pending.is_none()
            && !self.dvc_sent
            && self.svc_view == self.view
            && self.svc_from.len() >= self.config.quorum();
        if ready {
            self.dvc_sent = true;
            self.send_do_view_change();
        }
    }

    /// This replica's do_view_change: only ops it holds durably are claimed.
    fn own_dvc(&self) -> Dvc {
        let headers = self
            .journal
            .suffix(self.config.view_change_headers_max, true);
        Dvc {
            log_view: self.log_view,
            op: headers.last().map_or(0, |h| h.op),
            commit: self.commit_max,
            headers,
        }
    }

    fn send_do_view_change(&mut self) {
        let dvc = self.own_dvc();
        let primary = self.primary_of(self.view);
        if primary == self.config.replica {
            self.dvcs.insert(primary, dvc);
            self.maybe_start_view();
            return;
        }
        self.send(
            primary,
            MessageBody::DoViewChange {
                log_view: dvc.log_view,
                op: dvc.op,
                commit: dvc.commit,
                headers: dvc.headers,
            },
        );
    }

    pub(super) fn on_do_view_change(&mut self, from: ReplicaIndex, view: u64, dvc: Dvc) {
        if !self.accepts_view_change_message(view) || !headers_valid(&dvc.headers, self) {
            return;
        }
        self.start_view_change(view);
        if self.primary_of(view) != self.config.replica || self.dvc_view != view {
            return;
        }
        self.dvcs.insert(from, dvc);
        if self.svc_view == view {
            self.svc_from.insert(from); // it took part in the view change
        }
        self.maybe_do_view_change();
        self.maybe_start_view();
    }

    /// On f+1 do_view_changes (its own included), the new primary builds the
    /// view's log, saves the view and then starts it.
    fn maybe_start_view(&mut self) {
        let ready = self.status == Status::ViewChange
            && self.pending.is_none()
            && !self.dvc_done
            && self.dvc_sent
            && self.dvc_view == self.view
            && self.primary_of(self.view) == self.config.replica
            && self.dvcs.len() >= self.config.quorum();
        if !ready {
            return;
        }
        self.dvc_done = true;
        let (op, commit, canonical) = merge(&self.dvcs);
        self.install_log(op, commit, &canonical);
        let state = DurableState {
            view: self.view,
            log_view: self.view,
            commit: self.commit,
        };
        self.save(state, AfterSave::BecomePrimary);
    }

    /// Replaces this replica's log with `op` ops whose known headers are
    /// `canonical`: uncommitted ops that differ are truncated, the rest is
    /// repaired from peers.
    pub(super) fn install_log(
        &mut self,
        op: u64,
        commit: u64,
        canonical: &BTreeMap<u64, OpHeader>,
    ) {
        let mut diverge = (self.journal.op() > op).then_some(op + 1);
        let mut lower = |at: u64| diverge = Some(diverge.map_or(at, |d| d.min(at)));
        for (k, header) in canonical.range(..=op) {
            if self.journal.header(*k).is_some_and(|own| own != header) {
                lower(*k);
            }
            let below = k - 1;
            let stale_below = below > 0
                && !canonical.contains_key(&below)
                && self
                    .journal
                    .header(below)
                    .is_some_and(|own| own.checksum() != header.parent);
            if stale_below {
                lower(below);
            }
        }
        if let Some(first) = diverge {
            assert!(
                first > self.commit,
                "a view change never replaces committed op {first} (commit {})",
                self.commit
            );
            self.out.push(Action::Truncate {
                after_op: first - 1,
            });
            self.journal.discard_bodies_after(first - 1);
            self.journal.shorten_to(op);
            self.repairs.clear();
        }
        self.journal.extend_to(op);
        for header in canonical.range(..=op).map(|(_, h)| h) {
            self.journal.set_header(*header);
        }
        self.commit_max = self.commit_max.max(commit);
    }

    /// The view is saved: act as its primary.
    pub(super) fn become_primary(&mut self) {
        self.status = Status::Normal;
        self.log_view = self.view;
        self.recovery_counts_self = true;
        self.acks.clear();
        self.acked.clear();
        self.sealing = None;
        self.group.clear();
        self.drop_unclosed_group();
        self.timers.heartbeat_sent = self.ticks;
        self.timers.prepare_retried = self.ticks;
        self.timers.primary_complete = self.ticks;
        let headers = self
            .journal
            .suffix(self.config.view_change_headers_max, false);
        let op = self.journal.op();
        let commit = self.commit_max;
        self.broadcast(MessageBody::StartView {
            op,
            commit,
            headers,
        });
        self.request_repairs();
        self.on_durable();
        self.drain_queue();
    }

    /// A new primary whose log ends inside an atomic group (its trail op
    /// never reached this log) drops that unclosed tail: no certificate can
    /// name an op inside a group, so none of it committed, and its clients
    /// retry. Every group below it is whole.
    fn drop_unclosed_group(&mut self) {
        let op = self.journal.op();
        let unclosed = self.journal.header(op).is_some_and(|h| h.group_continues());
        if !unclosed {
            return;
        }
        let keep = self
            .journal
            .group_end_at_or_below(op)
            .unwrap_or(0)
            .max(self.commit);
        assert!(
            keep >= self.commit_max.min(op),
            "an unclosed group holds no committed op (keep {keep}, commit max {})",
            self.commit_max
        );
        self.out.push(Action::Truncate { after_op: keep });
        self.journal.discard_bodies_after(keep);
        self.journal.shorten_to(keep);
        self.repairs.clear();
    }

    pub(super) fn on_start_view(
        &mut self,
        from: ReplicaIndex,
        view: u64,
        op: u64,
        commit: u64,
        headers: Vec<OpHeader>,
    ) {
        let usable = self.may_join_view_change()
            && from == self.primary_of(view)
            && view >= self.target_view()
            && headers_valid(&headers, self)
            && headers.iter().all(|h| h.op <= op)
            && commit <= op;
        if !usable {
            return;
        }
        if view == self.view && self.status == Status::Normal {
            if self.pending.is_none() {
                self.send_prepare_ok(self.journal.durable_op());
            }
            return;
        }
        let joining = self
            .pending
            .is_some_and(|p| p.state.view == view && p.then == AfterSave::BecomeBackup);
        if joining {
            return;
        }
        let canonical = headers.into_iter().map(|h| (h.op, h)).collect();
        self.join_view(view, op, commit, &canonical);
    }

    /// Adopts the log of `view`'s primary, then saves the view and joins it
    /// as a backup (after start_view or recovery).
    pub(super) fn join_view(
        &mut self,
        view: u64,
        op: u64,
        commit: u64,
        canonical: &BTreeMap<u64, OpHeader>,
    ) {
        self.install_log(op, commit, canonical);
        if self.status == Status::Normal {
            self.status = Status::ViewChange;
        }
        self.sealing = None;
        self.group.clear();
        self.queue.clear();
        let state = DurableState {
            view,
            log_view: view,
            commit: self.commit,
        };
        self.save(state, AfterSave::BecomeBackup);
    }

    /// The view is saved: act as a backup in it.
    pub(super) fn become_backup(&mut self) {
        self.status = Status::Normal;
        self.log_view = self.view;
        self.recovery_counts_self = true;
        self.recovery_responses.clear();
        self.acks.clear();
        self.acked.clear();
        self.timers.primary_heard = self.ticks;
        let durable = self.journal.durable_op();
        if durable > 0 {
            self.send_prepare_ok(durable);
        }
        self.request_repairs();
        self.backup_try_commit();
    }

    /// Resends view change messages and escalates a stalled view change.
    pub(super) fn view_change_tick(&mut self) {
        if self.pending.is_some() {
            return;
        }
        if self.ticks - self.timers.view_change_started >= self.config.view_change_timeout_ticks {
            self.start_view_change(self.view + 1);
            return;
        }
        if self.ticks - self.timers.view_change_sent >= self.config.heartbeat_ticks {
            self.timers.view_change_sent = self.ticks;
            self.broadcast(MessageBody::StartViewChange);
            let primary = self.primary_of(self.view);
            if self.dvc_sent && primary != self.config.replica {
                self.send_do_view_change();
            }
        }
    }
}

/// Rank of a header claimed as committed (below every sender's commit).
const RANK_COMMITTED: u64 = u64::MAX;

/// The new view's log from f+1 do_view_changes (VRR's "highest log view
/// wins", op by op along the hash chain). Each claimed header ranks by the
/// sender's log view, or highest when the sender knows it committed. From
/// the lowest claimed op up, the log takes at each op the highest-ranked
/// claim that chains to the op below; above the highest known commit it
/// ends at the first op no claim continues.
///
/// Why op by op: a replica that restarted keeps its log view but only the
/// ops it holds durably, so no single claim need hold the whole log; yet a
/// committed op is durable on f+1 replicas, one of which is in any quorum,
/// and at any op a claim of a newer log view supersedes an older one.
fn merge(dvcs: &BTreeMap<ReplicaIndex, Dvc>) -> (u64, u64, BTreeMap<u64, OpHeader>) {
    let commit = dvcs.values().map(|d| d.commit).max().unwrap_or(0);
    let mut claims: BTreeMap<u64, Vec<(u64, OpHeader)>> = BTreeMap::new();
    for dvc in dvcs.values() {
        for header in &dvc.headers {
            let rank = if header.op <= dvc.commit {
                RANK_COMMITTED
            } else {
                dvc.log_view
            };
            claims.entry(header.op).or_default().push((rank, *header));
        }
    }
    let mut canonical: BTreeMap<u64, OpHeader> = BTreeMap::new();
    let mut op = commit;
    for (&at, list) in &claims {
        let below = canonical.get(&(at - 1)).map(OpHeader::checksum);
        if at > commit + 1 && below.is_none() {
            break; // a hole above the commit ends the log
        }
        let fits = |h: &OpHeader| below.is_none_or(|parent| parent == h.parent);
        let best = list
            .iter()
            .filter(|(_, h)| fits(h))
            .max_by_key(|(rank, _)| *rank)
            .copied();
        let Some((rank, header)) = best else {
            if at > commit {
                break;
            }
            continue;
        };
        if rank == RANK_COMMITTED {
            let agree = list
                .iter()
                .filter(|(r, _)| *r == RANK_COMMITTED)
                .all(|(_, h)| h.checksum() == header.checksum());
            assert!(agree, "view change claims disagree on committed op {at}");
        }
        canonical.insert(at, header);
        op = op.max(at);
    }
    (op, commit, canonical)
}

/// Whether headers received in a view change or recovery message are op
/// headers of this cluster, in increasing op order, chained where adjacent.
pub(super) fn headers_valid(headers: &[OpHeader], replica: &Replica) -> bool {
    let each = headers.iter().all(|h| {
        h.kind == RecordKind::Op && h.cluster == replica.config.cluster && h.check_rules().is_ok()
    });
    let ordered = headers.windows(2).all(|pair| {
        let (a, b) = (&pair[0], &pair[1]);
        a.op < b.op && (b.op != a.op + 1 || b.parent == a.checksum())
    });
    each && ordered && headers.len() <= replica.config.view_change_headers_max
}
