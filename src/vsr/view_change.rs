//! The view change (VRR §4.2): start_view_change, do_view_change and
//! start_view. Every move to a higher view is saved before it takes effect,
//! so a replica never goes back in view across restarts. The new primary
//! keeps every committed op, keeps the uncommitted ops the newest log view
//! names unless a quorum nacks them, and drops the rest. A view change
//! carries only the newest headers of each log, so below them a replica's
//! own ops may be stale leftovers of older views: below the highest known
//! commit only headers claimed as committed are taken, and a replica that
//! adopts a log keeps an own uncommitted op only if it chains, header by
//! header, up to the new log (`first_unproven_below`).
//!
//! # The nack (protocol-aware recovery)
//!
//! A do_view_change lists every header its sender knows in its suffix,
//! each `Durable`, `Missing` (the record is not here) or `Unsure` (damaged,
//! or a write in flight), and a `nack_from` op. The sender *nacks* op `k`
//! with checksum `X` when `k >= nack_from` and it lists, at `k`, nothing
//! (its log ends below `k`, or the slot is an unwritten gap), or `X` as
//! `Missing`, or another header that is not `Unsure`. The new primary walks
//! the uncommitted ops of the merged log upwards; at the first whose chosen
//! header f+1 do_view_changes nack, the log ends below it (and every op
//! above goes too; a log then ending inside an atomic group loses that
//! unclosed group as well, `drop_unclosed_group`).
//!
//! Why that is safe: an op commits only once f+1 replicas have it durable
//! and acknowledged it (the primary included). Those f+1 keep it forever:
//! a view change never drops a committed op (this very rule, by induction
//! over views), a restart finds it intact or marks its slot Faulty (never
//! absent: a damaged or missing slot below the tail is Faulty), and a read
//! that fails marks it Faulty too. None of them can nack it: each lists it
//! as `Durable`, or `Unsure`, or (header damaged too) has a headerless
//! Faulty slot at or above which its `nack_from` is not. A replica stamps
//! every message with its saved view, so once it sent a do_view_change of
//! view v no primary of an older view counts its acknowledgements. So if
//! f+1 distinct replicas nack (k, X), they are disjoint from X's f+1
//! holders, 2f+2 replicas in a cluster of 2f+1: X cannot have committed.
//!
//! What a replica may not nack, and why `nack_from` exists:
//! - until it adopts a log after it started (`NACK_NONE`): a replica whose
//!   disk was wiped forgets what it acknowledged, and one that restarted
//!   cannot tell whether it was wiped in an earlier life;
//! - after a wiped disk, the ops of the log it adopted (`nack_floor`) until
//!   it holds them all durably: an earlier life may have acknowledged one
//!   of them, which may have committed (every committed op is in that log,
//!   so ops above it are safe to nack). A truncation below the floor lowers
//!   it (the ops cut were not committed);
//! - at or below a headerless Faulty slot, and below the oldest header its
//!   suffix lists (it says nothing about ops it does not list).
//!
//! # Held nowhere
//!
//! A nack needs f+1 senders that positively lack the op, so an op whose
//! only copy was lost (a misdirected write over the one replica that held
//! it) stays in every log while its holder lists the slot `Unsure` and a
//! replica that adopted the log after an empty disk may not nack it: every
//! view change keeps it and no primary can fetch it (seed 8678 of `vellum
//! sim`, stuck). And once every replica restarted, a slot never written
//! below the tail is `Faulty` on each disk, so nobody can nack it at all.
//! So the new primary also ends its log below an op above the commit that
//! no do_view_change lists as held durably, when it has the do_view_change
//! of every replica of the cluster (and each suffix reaches down to the
//! op). Had the op committed, each of its f+1 holders would have lost its
//! copy (a damaged slot, a wiped disk, a write lost in flight after its
//! ack): more than the f faulty replicas the cluster is built to survive,
//! the same bound the nack rests on for a committed op's holders. A primary
//! whose quorum of do_view_changes would keep such an op waits half a view
//! change timeout for the others before it starts the view with the log it
//! has (as before), so that a replica unable to take part does not keep
//! the cluster out of normal status.
//!
//! A cluster of one lists only the ops it holds durably, as before the
//! nack: it has no peer to repair from or to wait for, so a hole or a
//! damaged uncommitted op ends its log.
//!
//! Known limit: a wiped replica that restarts again before it holds every
//! op of the log it adopted forgets its floor (it is kept in memory only).
//! A committed op lost that way needs the wipe, a second crash before the
//! repair, and its remaining f holders all away from the view change.

use std::collections::BTreeMap;

use vellum_audit::record::{OpHeader, RecordKind};

use super::replica::{AfterSave, Dvc, Replica};
use super::{
    Action, DurableState, DvcHeader, MessageBody, NACK_NONE, Presence, ReplicaIndex, Status,
};

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

    /// This replica's do_view_change: every header it knows, with what its
    /// disk holds for each, and where its nacks start.
    pub(super) fn own_dvc(&self) -> Dvc {
        let max = self.config.view_change_headers_max;
        let mut headers = self.journal.presence_suffix(max);
        if self.config.replica_count == 1 {
            // A cluster of one has no peer to repair from or to wait for:
            // it keeps what its disk holds durably (module doc).
            headers.retain(|h| h.presence == Presence::Durable);
        }
        Dvc {
            log_view: self.log_view,
            op: self.journal.op(),
            commit: self.commit_max,
            nack_from: self.nack_from(&headers, max),
            headers,
        }
    }

    /// The lowest op from which this replica nacks what `headers` (its
    /// suffix, at most `max` long) does not list as held (see the module
    /// doc): above its nack floor, above any damaged slot whose header it
    /// lost, and not below the oldest op its suffix covers.
    fn nack_from(&self, headers: &[DvcHeader], max: usize) -> u64 {
        if self.nack_floor == NACK_NONE {
            return NACK_NONE;
        }
        let caught_up = self.journal.durable_op() >= self.nack_floor;
        let floor = if caught_up { 0 } else { self.nack_floor };
        let covered_from = match headers.first() {
            Some(oldest) if headers.len() >= max => oldest.header.op,
            _ => 1,
        };
        (floor + 1)
            .max(self.journal.highest_headerless_faulty() + 1)
            .max(covered_from)
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
                nack_from: dvc.nack_from,
                headers: dvc.headers,
            },
        );
    }

    pub(super) fn on_do_view_change(&mut self, from: ReplicaIndex, view: u64, dvc: Dvc) {
        let headers: Vec<OpHeader> = dvc.headers.iter().map(|h| h.header).collect();
        if !self.accepts_view_change_message(view) || !headers_valid(&headers, self) {
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
    /// view's log, saves the view and then starts it. A log that would keep
    /// an op no do_view_change in hand holds durably waits, for half a view
    /// change timeout, for every replica's do_view_change: with all of them
    /// the op can be decided (module doc, "Held nowhere"); after the wait it
    /// starts with what it has, so a replica that cannot join (wiped, down)
    /// does not keep the cluster out of normal status.
    pub(super) fn maybe_start_view(&mut self) {
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
        let replica_count = usize::from(self.config.replica_count);
        let merged = merge(&self.dvcs, self.config.quorum(), replica_count);
        let waited = self.ticks - self.timers.view_change_started;
        let waiting = merged.unheld.is_some()
            && self.dvcs.len() < replica_count
            && waited < self.config.view_change_timeout_ticks / 2;
        if waiting {
            return;
        }
        self.dvc_done = true;
        if merged.nacked.is_some() {
            self.nack_truncations += 1;
        }
        self.install_log(merged.op, merged.commit, &merged.canonical);
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
            if let Some(stale) = self.first_unproven_below(*k, header, canonical) {
                lower(stale);
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
            // A header the new log does not name is no longer known to be
            // in it: fetched by its checksum, a stale one would never come.
            for k in first..=op.min(self.journal.op()) {
                if !canonical.contains_key(&k) {
                    self.journal.forget(k);
                }
            }
            self.repairs.clear();
            // The ops cut were not committed: none is one an earlier life
            // of this replica may have acknowledged into a commit.
            self.nack_floor = self.nack_floor.min(first - 1);
        }
        self.journal.extend_to(op);
        for header in canonical.range(..=op).map(|(_, h)| h) {
            self.journal.set_header(*header);
        }
        self.commit_max = self.commit_max.max(commit);
        if self.nack_floor == NACK_NONE {
            // The first log adopted since the start: from now on it may
            // nack, but a wiped replica not the ops of this log (see the
            // module doc); one that kept its disk holds all it acknowledged.
            self.nack_floor = if self.recovery_counts_self { 0 } else { op };
        }
    }

    /// The lowest uncommitted own op below canonical op `k` (whose own
    /// predecessor the canonical headers do not name) that is not proven to
    /// be in the canonical log, if any.
    ///
    /// Own ops there are kept only if they chain, header by header, up to
    /// `k`: a view change carries only the newest headers, so an own op
    /// below them may be a stale leftover of an older view (prepared by a
    /// partitioned primary, say) that happens to sit under a gap. Kept, it
    /// would later be committed by a certificate whose root was never
    /// compared with it. Walking down from `k`, the first own header that
    /// does not chain (or a slot without one) makes every own op at or
    /// below it unproven; the lowest of them is where the log must be cut.
    fn first_unproven_below(
        &self,
        k: u64,
        header: &OpHeader,
        canonical: &BTreeMap<u64, OpHeader>,
    ) -> Option<u64> {
        let mut expected = header.parent;
        let mut below = k - 1;
        while below > self.commit && !canonical.contains_key(&below) {
            match self.journal.header(below) {
                Some(own) if own.checksum() == expected => {
                    expected = own.parent;
                    below -= 1;
                }
                _ => {
                    return (self.commit + 1..=below).find(|j| self.journal.header(*j).is_some());
                }
            }
        }
        None
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
        let headers = self.journal.suffix(self.config.view_change_headers_max);
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
        self.nack_floor = self.nack_floor.min(keep);
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
        // A new primary waiting for every do_view_change stops waiting.
        self.maybe_start_view();
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

/// The new view's log, as `merge` builds it.
#[derive(Debug)]
pub(super) struct Merged {
    /// The log's last op.
    pub op: u64,
    /// The highest commit any sender knows.
    pub commit: u64,
    /// The chosen header of each op the log names.
    pub canonical: BTreeMap<u64, OpHeader>,
    /// The op whose chosen header a quorum nacked, or that no replica holds
    /// (with every do_view_change in hand), if the log ends below one.
    pub nacked: Option<u64>,
    /// The lowest op above the commit the log keeps although no
    /// do_view_change in hand lists it as held durably, if any.
    pub unheld: Option<u64>,
}

/// The new view's log from f+1 do_view_changes (VRR's "highest log view
/// wins", op by op along the hash chain). Each listed header ranks by the
/// sender's log view, or highest when the sender holds it durably and knows
/// it committed. At or below the highest known commit it takes only headers
/// claimed as committed (a gap elsewhere is repaired from a peer that
/// committed the op); above it, from the commit up, the log takes at each op
/// the highest-ranked header that chains to the op below; above the highest
/// known commit it ends at the first op no header continues, or below the
/// first op whose chosen header `quorum` senders nack (module doc).
///
/// Why op by op: a replica that restarted keeps its log view but only the
/// ops its disk holds, so no single claim need hold the whole log; yet a
/// committed op is durable on f+1 replicas, one of which is in any quorum,
/// and at any op a claim of a newer log view supersedes an older one.
///
/// With every replica's do_view_change in hand (`replica_count` of them),
/// an op above the commit that none of them holds durably also ends the log
/// (module doc, "Held nowhere").
pub(super) fn merge(
    dvcs: &BTreeMap<ReplicaIndex, Dvc>,
    quorum: usize,
    replica_count: usize,
) -> Merged {
    let commit = dvcs.values().map(|d| d.commit).max().unwrap_or(0);
    let mut claims: BTreeMap<u64, Vec<(u64, OpHeader)>> = BTreeMap::new();
    for dvc in dvcs.values() {
        for listed in &dvc.headers {
            let header = listed.header;
            let committed = header.op <= dvc.commit && listed.presence == Presence::Durable;
            let rank = if committed {
                RANK_COMMITTED
            } else {
                dvc.log_view
            };
            claims.entry(header.op).or_default().push((rank, header));
        }
    }
    let mut merged = Merged {
        op: commit,
        commit,
        canonical: BTreeMap::new(),
        nacked: None,
        unheld: None,
    };
    let everyone = dvcs.len() >= replica_count;
    // The rank each chosen header above the commit was taken with.
    let mut ranks: BTreeMap<u64, u64> = BTreeMap::new();
    for (&at, list) in &claims {
        if at <= commit {
            // At or below the highest known commit only a committed claim
            // is taken: any other may be a stale leftover of an older view
            // (a sender that knows a lower commit), and as the lowest op
            // listed it would anchor the chain and push out the committed
            // headers above it. An op no sender claims as committed stays a
            // gap, fetched from a peer that committed it.
            let committed = list.iter().find(|(rank, _)| *rank == RANK_COMMITTED);
            if let Some((_, header)) = committed {
                let agree = list
                    .iter()
                    .filter(|(r, _)| *r == RANK_COMMITTED)
                    .all(|(_, h)| h.checksum() == header.checksum());
                assert!(agree, "view change claims disagree on committed op {at}");
                merged.canonical.insert(at, *header);
            }
            continue;
        }
        let below = merged.canonical.get(&(at - 1)).map(OpHeader::checksum);
        if at > commit + 1 && below.is_none() {
            break; // a hole above the commit ends the log
        }
        let fits = |h: &OpHeader| below.is_none_or(|parent| parent == h.parent);
        let best = list
            .iter()
            .filter(|(_, h)| fits(h))
            .max_by_key(|(rank, _)| *rank)
            .copied();
        let newest = list.iter().max_by_key(|(rank, _)| *rank).copied();
        let below_rank = ranks.get(&(at - 1)).copied().unwrap_or(RANK_COMMITTED);
        let chosen = match newest {
            // A claim of a newer log view than the op below was taken from
            // does not chain to it: in that newer log the op below is
            // another, so the older choices below are stale. They are
            // dropped (a gap, repaired from this claim's parent down) and
            // the newer claim is taken: it may be a committed op.
            Some((rank, header))
                if !fits(&header)
                    && rank > below_rank
                    && best.is_none_or(|(best_rank, _)| best_rank < rank) =>
            {
                let mut k = at - 1;
                while k > commit && ranks.get(&k).is_some_and(|r| *r < rank) {
                    merged.canonical.remove(&k);
                    ranks.remove(&k);
                    k -= 1;
                }
                Some((rank, header))
            }
            _ => best,
        };
        let Some((rank, header)) = chosen else {
            break;
        };
        let held_nowhere = dvcs.values().all(|dvc| holds(dvc, &header) == Some(false));
        if nacks(dvcs, &header) >= quorum || (everyone && held_nowhere) {
            merged.nacked = Some(at);
            break;
        }
        if held_nowhere && merged.unheld.is_none() {
            merged.unheld = Some(at);
        }
        merged.canonical.insert(at, header);
        ranks.insert(at, rank);
        merged.op = merged.op.max(at);
    }
    merged
}

/// How many do_view_changes nack `header` (module doc).
fn nacks(dvcs: &BTreeMap<ReplicaIndex, Dvc>, header: &OpHeader) -> usize {
    dvcs.values().filter(|dvc| nacks_one(dvc, header)).count()
}

/// Whether `dvc`'s sender positively does not hold `header`.
fn nacks_one(dvc: &Dvc, header: &OpHeader) -> bool {
    if header.op < dvc.nack_from {
        return false;
    }
    let listed = dvc
        .headers
        .binary_search_by_key(&header.op, |h| h.header.op)
        .ok()
        .map(|index| dvc.headers[index]);
    match listed {
        // Above its log, or an unwritten gap (a damaged one is below nack_from).
        None => true,
        Some(listed) => match listed.presence {
            Presence::Unsure => false,
            Presence::Missing => true,
            Presence::Durable => listed.header.checksum() != header.checksum(),
        },
    }
}

/// Whether `dvc`'s sender holds `header` durably: `None` when its suffix
/// does not reach down to the op (it says nothing about ops below it).
fn holds(dvc: &Dvc, header: &OpHeader) -> Option<bool> {
    if dvc
        .headers
        .first()
        .is_some_and(|oldest| header.op < oldest.header.op)
    {
        return None;
    }
    let durable = dvc.headers.iter().any(|listed| {
        listed.presence == Presence::Durable && listed.header.checksum() == header.checksum()
    });
    Some(durable)
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

#[cfg(test)]
mod tests {
    use vellum_audit::record::genesis_parent;

    use super::Presence::{Durable, Missing, Unsure};
    use super::*;

    const CLUSTER: u128 = 0x5eed_0002;
    const QUORUM: usize = 2;

    /// Ops 1..=n chained from the genesis parent.
    fn chain(n: u64) -> Vec<OpHeader> {
        let mut parent = genesis_parent(CLUSTER);
        (1..=n)
            .map(|op| {
                let mut header = OpHeader::empty(RecordKind::Op, CLUSTER);
                header.op = op;
                header.parent = parent;
                header.stream = 16;
                parent = header.checksum();
                header
            })
            .collect()
    }

    /// A do_view_change of log view 1 that knows op 1 committed.
    fn dvc(nack_from: u64, listed: &[(OpHeader, Presence)]) -> Dvc {
        Dvc {
            log_view: 1,
            op: listed.last().map_or(0, |(h, _)| h.op),
            commit: 1,
            nack_from,
            headers: listed
                .iter()
                .map(|(header, presence)| DvcHeader {
                    header: *header,
                    presence: *presence,
                })
                .collect(),
        }
    }

    fn merged(a: Dvc, b: Dvc) -> Merged {
        merge(&BTreeMap::from([(0, a), (1, b)]), QUORUM, 3)
    }

    /// Goal: above the commit, a claim of a newer log view that does not
    /// chain to the op taken below (from an older log view, because the
    /// newer sender lacks that op's header) wins, and the older run below
    /// it becomes a gap: the newer claim may be a committed op.
    #[test]
    fn newer_claim_above_the_commit_displaces_an_older_run_below() {
        let good = chain(6);
        let mut stale = good.clone();
        let mut parent = good[1].checksum();
        for header in &mut stale[2..] {
            header.parent = parent;
            header.stream = 17;
            parent = header.checksum();
        }
        // The newer sender knows ops 1..2 committed, lacks op 3's header,
        // holds 4..6 of the new log. The older one holds a stale 3..6.
        let mut newer = dvc(
            NACK_NONE,
            &[
                (good[0], Durable),
                (good[1], Durable),
                (good[3], Durable),
                (good[4], Durable),
                (good[5], Durable),
            ],
        );
        newer.log_view = 3;
        newer.commit = 2;
        let mut older = dvc(
            NACK_NONE,
            &[
                (good[0], Durable),
                (good[1], Durable),
                (stale[2], Durable),
                (stale[3], Durable),
                (stale[4], Durable),
                (stale[5], Durable),
            ],
        );
        older.log_view = 2;
        older.commit = 2;
        let merged = merged(newer, older);
        assert_eq!(merged.canonical.get(&3), None, "the stale op 3 is a gap");
        for op in [1u64, 2, 4, 5, 6] {
            let index = usize::try_from(op - 1).expect("small");
            assert_eq!(merged.canonical.get(&op), Some(&good[index]), "op {op}");
        }
        assert_eq!((merged.op, merged.nacked), (6, None));
    }

    /// Goal: below the highest known commit only headers claimed as
    /// committed are taken. A sender of an older log view that knows a low
    /// commit lists a stale run of ops (prepared in a view that lost them)
    /// from below the committed sender's oldest listed op; taken, the run's
    /// lowest op anchored the chain and its stale ops replaced committed
    /// ones (found by `vellum sim --small-windows`, seed 116, and by the
    /// crash test: "a view change never replaces committed op").
    #[test]
    fn stale_claims_below_the_commit_are_not_taken() {
        let good = chain(10);
        let mut parent = good[3].checksum();
        let stale: Vec<OpHeader> = (5..=8)
            .map(|op| {
                let mut header = good[usize::try_from(op - 1).expect("small")];
                header.parent = parent;
                header.stream = 17;
                parent = header.checksum();
                header
            })
            .collect();
        let mut newer = dvc(NACK_NONE, &[7, 8, 9, 10].map(|op| (good[op - 1], Durable)));
        newer.log_view = 3;
        newer.commit = 10;
        let mut older = dvc(
            NACK_NONE,
            &stale.iter().map(|h| (*h, Durable)).collect::<Vec<_>>(),
        );
        older.log_view = 2;
        older.commit = 4;
        let merged = merged(newer, older);
        assert_eq!(merged.commit, 10);
        for op in 7..=10 {
            assert_eq!(
                merged.canonical.get(&op),
                Some(&good[usize::try_from(op - 1).expect("small")]),
                "op {op}"
            );
        }
        for op in 5..=6 {
            assert_eq!(
                merged.canonical.get(&op),
                None,
                "op {op}: a stale claim is a gap"
            );
        }
    }

    /// Goal: an uncommitted op that one voter lists as missing and the other
    /// never saw (its log ends below) is nacked by a quorum: the log ends
    /// below it.
    #[test]
    fn quorum_of_nacks_ends_the_log_below_the_op() {
        let h = chain(3);
        let a = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
        let b = dvc(1, &[(h[0], Durable), (h[1], Durable)]);
        let merged = merged(a, b);
        assert_eq!((merged.op, merged.nacked), (2, Some(3)));
        assert!(!merged.canonical.contains_key(&3));
    }

    /// Goal: the ops above a nacked op go with it, even one a voter holds.
    #[test]
    fn nothing_above_a_nacked_op_is_kept() {
        let h = chain(4);
        let a = dvc(1, &[(h[0], Durable), (h[2], Missing), (h[3], Durable)]);
        let b = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
        let merged = merged(a, b);
        assert_eq!((merged.op, merged.nacked), (2, Some(3)));
        assert_eq!(merged.canonical.keys().copied().collect::<Vec<_>>(), [1, 2]);
    }

    /// Goal: a damaged (Faulty) or in-flight copy is no nack: the op may
    /// have committed with it, so the log keeps it.
    #[test]
    fn unsure_copy_blocks_the_nack() {
        let h = chain(3);
        let a = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
        let b = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Unsure)]);
        let merged = merged(a, b);
        assert_eq!((merged.op, merged.nacked), (3, None));
        assert_eq!(merged.canonical.get(&3), Some(&h[2]));
    }

    /// Goal: a sender nacks nothing below its `nack_from` (a restarted
    /// replica that adopted no log yet, or a wiped one's floor), so one
    /// nack is not enough and the op stays.
    #[test]
    fn no_nack_below_nack_from() {
        let h = chain(3);
        for nack_from in [NACK_NONE, 4] {
            let a = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
            let b = dvc(nack_from, &[(h[0], Durable), (h[1], Durable)]);
            let merged = merged(a, b);
            assert_eq!((merged.op, merged.nacked), (3, None), "{nack_from}");
        }
    }

    /// Goal: an op at or below the highest known commit is never nacked.
    #[test]
    fn committed_op_is_never_nacked() {
        let h = chain(3);
        let mut a = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Durable)]);
        a.commit = 3;
        let b = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
        let c = dvc(1, &[(h[0], Durable), (h[1], Durable)]);
        let merged = merge(&BTreeMap::from([(0, a), (1, b), (2, c)]), QUORUM, 3);
        assert_eq!((merged.op, merged.commit, merged.nacked), (3, 3, None));
    }

    /// Goal: with every replica's do_view_change in hand, an uncommitted op
    /// that none holds durably ends the log even without f+1 nacks (its
    /// only copy was damaged, and the other non-holder may not nack); with
    /// a quorum only it is kept, and reported unheld so the primary waits
    /// (seed 8678, stuck before).
    #[test]
    fn op_held_nowhere_ends_the_log_once_every_replica_answered() {
        let h = chain(3);
        let damaged = dvc(1, &[(h[0], Durable), (h[1], Unsure), (h[2], Durable)]);
        let lacking = dvc(1, &[(h[0], Durable), (h[1], Missing), (h[2], Durable)]);
        let floored = dvc(4, &[(h[0], Durable), (h[1], Missing), (h[2], Durable)]);
        let quorum_only = merged(damaged.clone(), floored.clone());
        assert_eq!(
            (quorum_only.op, quorum_only.nacked, quorum_only.unheld),
            (3, None, Some(2))
        );
        let all = BTreeMap::from([(0, damaged.clone()), (1, lacking), (2, floored)]);
        let merged_all = merge(&all, QUORUM, 3);
        assert_eq!((merged_all.op, merged_all.nacked), (1, Some(2)));
        assert!(!merged_all.canonical.contains_key(&2));
        // One durable copy anywhere keeps it (it is repaired from there).
        let holder = dvc(NACK_NONE, &[(h[0], Durable), (h[1], Durable)]);
        let all = BTreeMap::from([(0, damaged.clone()), (1, holder), (2, damaged)]);
        let merged_all = merge(&all, QUORUM, 3);
        assert_eq!(
            (merged_all.op, merged_all.nacked, merged_all.unheld),
            (3, None, None)
        );
    }

    /// Goal: a sender holding another header at the op durably nacks the
    /// chosen one; holding the chosen one durably is no nack.
    #[test]
    fn durable_other_header_is_a_nack() {
        let h = chain(3);
        let mut other = h[2];
        other.stream = 17;
        let mut a = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Missing)]);
        a.log_view = 2;
        let b = dvc(1, &[(h[0], Durable), (h[1], Durable), (other, Durable)]);
        assert_eq!(merged(a.clone(), b).nacked, Some(3));
        let c = dvc(1, &[(h[0], Durable), (h[1], Durable), (h[2], Durable)]);
        assert_eq!(merged(a, c).nacked, None);
    }
}
