//! Prepares from the primary and repair: a replica missing an op (a gap, a
//! faulty slot, a log adopted in a view change, a wiped disk) asks a peer
//! for it by op and checksum and writes it only after checking it against
//! the header checksum it expects (or, for a committed op it knows no header
//! of, against the chain). A Faulty slot is never treated as absent.

use bytes::Bytes;
use vellum_audit::hash::{Hash, ZERO_HASH};
use vellum_audit::record::Record;

use super::journal::{SlotState, check_record};
use super::replica::Replica;
use super::{Action, Broken, MessageBody, ReadPurpose, ReplicaIndex, Status};

impl Replica {
    /// A prepare: from the primary of this view in normal operation, or a
    /// record answering a repair request.
    pub(super) fn on_prepare(
        &mut self,
        from: ReplicaIndex,
        view: u64,
        record: Record,
        commit: u64,
        key: Option<Bytes>,
    ) {
        let Some(leaves) = check_record(&record, self.config.cluster) else {
            return;
        };
        let from_primary = view == self.view
            && from == self.primary_of(view)
            && self.status == Status::Normal
            && self.pending.is_none()
            && !self.is_primary();
        if from_primary {
            self.timers.primary_heard = self.ticks;
            self.note_commit(commit);
            self.on_primary_prepare(record, leaves, key);
        } else {
            self.on_repair_record(record, leaves, key);
        }
    }

    /// Normal operation at a backup: append the next op if it chains,
    /// write a later one and repair the gap, or acknowledge a duplicate.
    fn on_primary_prepare(
        &mut self,
        record: Record,
        leaves: Vec<vellum_audit::hash::Hash>,
        key: Option<Bytes>,
    ) {
        let header = record.header;
        let op = header.op;
        if op <= self.journal.op() {
            let slot = self.journal.slot(op).expect("op within the journal");
            let same = slot.header.is_some_and(|h| h == header);
            if same && slot.has_body() {
                if self.journal.durable_op() >= op {
                    self.send_prepare_ok(self.journal.durable_op());
                }
            } else if !slot.has_body() && self.fits_slot(&header) {
                // The primary's log is this view's log: it fills a slot
                // whose op is not known yet.
                self.write_record(record, leaves, key);
            }
            return;
        }
        if op == self.journal.op() + 1 {
            let chains = self
                .journal
                .parent_for(op - 1)
                .is_none_or(|parent| parent == header.parent);
            if !chains && !self.broken(Broken::AcceptUnchained) {
                return; // refuse a prepare that does not chain
            }
        }
        self.journal.extend_to(op - 1);
        self.write_record(record, leaves, key);
        if self.broken(Broken::AckBeforeFsync) {
            self.send_prepare_ok(op);
        }
        self.request_repairs();
    }

    /// Whether a record from the primary fits its slot: it is the op
    /// expected there (if known) and chains to the op below (if known).
    fn fits_slot(&self, header: &vellum_audit::record::OpHeader) -> bool {
        let op = header.op;
        let expected = self.journal.expected_checksum(op);
        let below = self.journal.parent_for(op - 1);
        expected.is_none_or(|c| c == header.checksum())
            && (below.is_none_or(|p| p == header.parent) || self.broken(Broken::AcceptUnchained))
    }

    /// Journals a record this replica checked, and asks the shell to write it.
    fn write_record(&mut self, record: Record, leaves: Vec<Hash>, key: Option<Bytes>) {
        self.repairs.remove(&record.header.op);
        self.journal.fill(record.header, leaves, SlotState::Writing);
        self.out.push(Action::Write { record, key });
    }

    /// A record answering a repair request: written only into a slot that
    /// lacks it, and only if it is the op this replica expects.
    fn on_repair_record(&mut self, record: Record, leaves: Vec<Hash>, key: Option<Bytes>) {
        let header = record.header;
        let op = header.op;
        if !self.may_repair(op) {
            return;
        }
        let Some(slot) = self.journal.slot(op) else {
            return;
        };
        if slot.has_body() {
            return;
        }
        let below = self.journal.parent_for(op - 1);
        let fits = match self.journal.expected_checksum(op) {
            Some(expected) => expected == header.checksum(),
            // A committed op nobody named yet: it must chain to the op below.
            None => op <= self.commit_max && below.is_none_or(|p| p == header.parent),
        };
        if !fits {
            return;
        }
        if below.is_some_and(|p| p != header.parent) {
            // The op below is a stale leftover; never a committed one.
            if op - 1 <= self.commit {
                return;
            }
            self.journal.forget(op - 1);
        }
        // The shell attaches the stream's wrapped key to repair prepares,
        // so a replica rebuilt by repair can read what it holds.
        self.write_record(record, leaves, key);
        self.request_repairs();
    }

    /// A peer asks for an op: read it if this replica holds it durably (a
    /// zero checksum asks for the committed op, whatever its checksum).
    pub(super) fn on_request_prepare(&mut self, from: ReplicaIndex, op: u64, checksum: Hash) {
        let Some(slot) = self.journal.slot(op) else {
            return;
        };
        let Some(header) = slot.header else { return };
        if slot.state != SlotState::Durable {
            return;
        }
        let wanted = if checksum == ZERO_HASH {
            op <= self.commit
        } else {
            header.checksum() == checksum
        };
        if wanted {
            self.out.push(Action::Read {
                op,
                checksum: header.checksum(),
                purpose: ReadPurpose::Repair { to: from },
            });
        }
    }

    /// A read finished: answer the peer or retransmit. A record that can no
    /// longer be read makes its slot faulty (it is repaired like any other).
    pub(super) fn on_read_done(&mut self, op: u64, purpose: ReadPurpose, record: Option<Record>) {
        let Some(header) = self.journal.header(op).copied() else {
            return;
        };
        let intact =
            record.filter(|r| r.header == header && check_record(r, self.config.cluster).is_some());
        let Some(record) = intact else {
            if self.journal.state(op) == Some(SlotState::Durable) {
                self.journal.set_faulty(op, Some(header));
            }
            return;
        };
        match purpose {
            ReadPurpose::Repair { to } => {
                let commit = self.commit;
                self.send(
                    to,
                    MessageBody::Prepare {
                        record,
                        commit,
                        key: None,
                    },
                );
            }
            ReadPurpose::Retransmit => self.retransmit_record(record),
        }
    }

    /// Resends repair requests that went unanswered and asks for more.
    pub(super) fn repair_tick(&mut self) {
        let stale_before = self.ticks.saturating_sub(self.config.repair_retry_ticks);
        self.repairs.retain(|_, sent| *sent > stale_before);
        self.request_repairs();
    }

    /// Asks peers for the lowest ops this replica lacks, at most
    /// `repair_requests_max` outstanding.
    pub(super) fn request_repairs(&mut self) {
        if self.config.replica_count == 1 {
            return;
        }
        let mut op = self.journal.durable_op();
        while self.repairs.len() < self.config.repair_requests_max && op < self.journal.op() {
            op += 1;
            if !self.may_repair(op) {
                break;
            }
            let lacking = matches!(
                self.journal.state(op),
                Some(SlotState::Missing | SlotState::Faulty)
            );
            if !lacking || self.repairs.contains_key(&op) {
                continue;
            }
            let checksum = match self.journal.expected_checksum(op) {
                Some(checksum) => checksum,
                None if op <= self.commit_max => ZERO_HASH,
                None => continue,
            };
            let to = self.repair_peer();
            self.send(to, MessageBody::RequestPrepare { op, checksum });
            self.repairs.insert(op, self.ticks);
        }
    }

    /// Whether this replica may fetch `op` now. A committed op is the same
    /// in every log, so it is repaired at once (even while recovering: the
    /// sooner a damaged copy is replaced, the less a second fault costs).
    /// Any other op waits until a log was adopted and its view is saved.
    fn may_repair(&self, op: u64) -> bool {
        op <= self.commit || (self.status != Status::Recovering && self.pending.is_none())
    }

    /// The next peer to ask: round robin over the peers heard from within
    /// a view change timeout, or over all of them when none was. A dead
    /// peer answers nothing, each op asked of it waits `repair_retry_ticks`
    /// to be asked again, and the log becomes durable only in op order: a
    /// replica catching up with one peer down went at a fraction of its
    /// pace. (A normal backup hears its fellow backups seldom, so it then
    /// asks the primary, which it hears at every heartbeat.) Which peer
    /// answers never matters for safety: a repaired op must match its
    /// checksum or be committed.
    fn repair_peer(&mut self) -> ReplicaIndex {
        let count = u64::from(self.config.replica_count);
        let peers = count - 1;
        let replica = u64::from(self.config.replica);
        let candidate = |cursor: u64| (replica + 1 + cursor % peers) % count;
        let heard_lately = |peer: u64| {
            let heard = self.peer_heard[usize::try_from(peer).expect("below replica_count")];
            self.ticks - heard < self.config.view_change_timeout_ticks
        };
        let live = (1..=peers).find(|offset| heard_lately(candidate(self.repair_cursor + offset)));
        self.repair_cursor += live.unwrap_or(1);
        ReplicaIndex::try_from(candidate(self.repair_cursor)).expect("below replica_count")
    }
}
