//! Normal operation (VRR §4.1): the primary turns client requests into
//! sealed, journaled, broadcast prepares; replicas acknowledge ops only once
//! durable, with a signature over the checkpoint they computed (P4); the
//! primary commits on a quorum of matching signatures and every replica
//! commits what a verified certificate covers.

use bytes::Bytes;
use vellum_audit::hash::Hash;
use vellum_audit::record::{
    EVENT_BYTES_MAX, EVENTS_PER_OP_MAX, OpHeader, Record, RecordKind, genesis_parent,
};

use super::certify::Cert;
use super::journal::{SlotState, check_record};
use super::replica::{Replica, Sealing};
use super::{
    Action, Broken, MessageBody, ReadPurpose, ReplicaIndex, Reply, ReplyBody, Request, Status,
    digests_conflict,
};
use crate::types::StreamId;

/// View change timeouts a primary waits for a missing op before stepping down.
const STUCK_TIMEOUTS: u64 = 4;

/// Bytes a sealed event frame may add to its plaintext (frame length,
/// commitment, nonce, tag and the sealing layer's own overhead).
const FRAME_OVERHEAD_MAX: usize = 4 + 32 + 12 + vellum_audit::record::SEAL_OVERHEAD_MAX;

impl Replica {
    /// A client request: answered from the client table, refused, queued or
    /// (on a ready primary) prepared.
    pub(super) fn on_request(&mut self, request: Request) {
        let skip_table = self.broken(Broken::SkipClientTable);
        if !skip_table && self.answer_from_table(&request) {
            return;
        }
        if !self.is_primary() {
            return; // backups ignore requests (VRR); the client retries elsewhere
        }
        if let Err(reason) = self.validate_request(&request, skip_table) {
            self.refuse(&request, reason);
            return;
        }
        if let Some(digest) = self.in_flight(request.client, request.request) {
            if digests_conflict(&digest, &request.digest) {
                self.refuse_reused(&request);
            }
            return; // a retry: its reply follows the commit
        }
        if self.queue.len() >= self.config.request_queue_max {
            self.refuse(&request, super::RequestRefusal::QueueFull);
            return;
        }
        self.queue.push_back(request);
        self.drain_queue();
    }

    /// Answers a retry of the latest committed request from the client
    /// table; true when the table holds it (even if no certificate covers
    /// it yet: then the client retries later, and it never runs twice).
    /// A request with that number but another digest is refused as a
    /// reused idempotency key, never answered with the other's reply.
    fn answer_from_table(&mut self, request: &Request) -> bool {
        let Some(session) = self.clients.get(request.client) else {
            return false;
        };
        if session.request != request.request {
            return false;
        }
        let header = session.header;
        if digests_conflict(&header.request_digest, &request.digest) {
            self.refuse_reused(request);
            return true;
        }
        let Some(reply) = self.reply_for(&header) else {
            return true;
        };
        self.out.push(Action::Reply {
            client: request.client,
            request: request.request,
            reply,
        });
        true
    }

    fn validate_request(
        &self,
        request: &Request,
        skip_table: bool,
    ) -> Result<(), super::RequestRefusal> {
        if request.client == 0 || request.client == super::TRAIL_CLIENT {
            return Err(super::RequestRefusal::ReservedClient);
        }
        // The access trail's, key custody's and consumer groups' system streams are written
        // by the replicas' own shells (the API refuses every reserved stream).
        if request.stream < StreamId::USER_MIN
            && request.stream != vellum_compliance::trail::ACCESS_TRAIL_STREAM
            && request.stream != vellum_compliance::custody::KEY_CUSTODY_STREAM
            && request.stream != vellum_compliance::groups::CONSUMER_GROUPS_STREAM
        {
            return Err(super::RequestRefusal::ReservedStream {
                stream: request.stream,
            });
        }
        let count = request.events.len();
        if count == 0 || count > EVENTS_PER_OP_MAX as usize {
            return Err(super::RequestRefusal::EventCount {
                count,
                max: EVENTS_PER_OP_MAX,
            });
        }
        // An encoded envelope holds a payload of up to EVENT_BYTES_MAX and
        // its fields (the shell checked each envelope's payload).
        let event_bytes_max = match request.enveloped {
            true => EVENT_BYTES_MAX + vellum_audit::envelope::ENVELOPE_OVERHEAD_MAX,
            false => EVENT_BYTES_MAX,
        };
        if let Some(big) = request
            .events
            .iter()
            .position(|e| e.len() > event_bytes_max)
        {
            return Err(super::RequestRefusal::EventTooLarge {
                index: big,
                max: event_bytes_max,
            });
        }
        let body: usize = request
            .events
            .iter()
            .map(|e| e.len() + FRAME_OVERHEAD_MAX)
            .sum();
        if body > vellum_audit::record::BODY_BYTES_MAX {
            return Err(super::RequestRefusal::BatchTooLarge { bytes: body });
        }
        let latest = self.clients.get(request.client).map(|s| s.request);
        if !skip_table && latest.is_some_and(|latest| request.request < latest) {
            return Err(super::RequestRefusal::StaleRequest {
                request: request.request,
                latest: latest.unwrap_or(0),
            });
        }
        Ok(())
    }

    fn refuse(&mut self, request: &Request, reason: super::RequestRefusal) {
        self.out.push(Action::Reply {
            client: request.client,
            request: request.request,
            reply: Reply::Refused(reason),
        });
    }

    fn refuse_reused(&mut self, request: &Request) {
        self.out.push(Action::Reply {
            client: request.client,
            request: request.request,
            reply: Reply::IdempotencyKeyReused {
                request: request.request,
            },
        });
    }

    /// The digest of the request with this session and number if it is
    /// queued, being sealed or prepared but not committed.
    fn in_flight(&self, client: u128, request: u64) -> Option<Hash> {
        self.in_flight_entry(client, request)
            .map(|(_, digest)| digest)
    }

    /// (key id, digest) of the request with this session and number that is
    /// queued, being sealed or prepared but not committed.
    fn in_flight_entry(&self, client: u128, request: u64) -> Option<(u64, Hash)> {
        let same = |h: &&OpHeader| h.client_id == client && h.request == request;
        let entry = |h: &OpHeader| (h.key_id, h.request_digest);
        let prepared = (self.commit + 1..=self.journal.op())
            .filter_map(|op| self.journal.header(op))
            .find(same)
            .map(entry);
        let sealing = || {
            self.sealing
                .as_ref()
                .map(|s| &s.header)
                .filter(same)
                .map(entry)
        };
        let queued = || {
            self.queue
                .iter()
                .find(|r| r.client == client && r.request == request)
                .map(|r| (r.key_id, r.digest))
        };
        prepared.or_else(sealing).or_else(queued)
    }

    /// The data key under which a request of this session and number must
    /// compute its digest to be compared with the entry it would meet: the
    /// key of the session's latest committed op (same number), or of the
    /// in-flight request with that number. `None`: no such entry, so a new
    /// request digests under its stream's current key. A pure query: the
    /// shell asks it before it builds the [`Request`].
    pub fn digest_key_for(&self, client: u128, request: u64) -> Option<u64> {
        let committed = self
            .clients
            .get(client)
            .filter(|s| s.request == request)
            .map(|s| s.header.key_id);
        committed.or_else(|| self.in_flight_entry(client, request).map(|(key, _)| key))
    }

    /// Whether the primary may prepare another op now: it knows every body
    /// (so stream lengths and its tree are complete) and the pipeline has room.
    fn can_prepare(&self) -> bool {
        self.is_primary()
            && self.sealing.is_none()
            && self.journal.tree_op() == self.journal.op()
            && self.journal.op() - self.commit < self.config.pipeline_max as u64
    }

    /// Prepares queued requests while the pipeline has room, and closes the
    /// open atomic group with its trail op when it should.
    pub(super) fn drain_queue(&mut self) {
        while self.can_prepare() {
            if self.should_close_group() {
                self.close_group();
                continue;
            }
            let Some(next) = self.queue.front() else {
                return;
            };
            // An op with a trail record needs room for its group's trail op.
            if next.trail.is_some() && self.pipeline_room() < 2 {
                return;
            }
            let request = self.queue.pop_front().expect("peeked above");
            self.start_prepare(request);
        }
    }

    /// Ops the pipeline may still take.
    fn pipeline_room(&self) -> u64 {
        (self.config.pipeline_max as u64).saturating_sub(self.journal.op() - self.commit)
    }

    /// Whether the open group should be closed now: it is full, the
    /// pipeline has room for its trail op only, or nothing prepared before
    /// it is still being written here (then waiting for more appends would
    /// only add latency; while an earlier batch is in flight, appends that
    /// arrive meanwhile join this group and share its round).
    fn should_close_group(&self) -> bool {
        if self.group.is_empty() {
            return false;
        }
        let earlier_durable = self.journal.durable_op() + 1 >= self.group_first_op;
        self.group.len() >= self.config.group_appends_max
            || self.pipeline_room() <= 1
            || (self.queue.is_empty() && earlier_durable)
    }

    /// Seals the trail op that closes the open group: one event per
    /// templated op of the group, which the shell completes with that op's
    /// stream and offsets.
    fn close_group(&mut self) {
        let group = std::mem::take(&mut self.group);
        let (events, trail_for): (Vec<Bytes>, Vec<OpHeader>) = group.into_iter().unzip();
        let stream_offset = self.journal.stream_length(super::TRAIL_STREAM);
        let op = self.journal.op() + 1;
        let request = Request {
            client: super::TRAIL_CLIENT,
            request: op,
            stream: super::TRAIL_STREAM,
            expected_offset: None,
            events,
            key_id: 0,
            digest: super::DIGEST_UNKNOWN,
            trail: None,
            enveloped: false,
        };
        let header = self.next_header(&request, stream_offset);
        self.sealing = Some(Sealing {
            header,
            trail: None,
        });
        self.out.push(Action::Seal {
            header,
            events: request.events,
            trail_for,
        });
    }

    /// Checks the expected offset against the prepared state and asks the
    /// shell to seal the batch.
    fn start_prepare(&mut self, request: Request) {
        // Checked again now that the journal is complete: a request queued
        // while the log was being repaired may have committed meanwhile.
        if !self.broken(Broken::SkipClientTable) {
            if self.answer_from_table(&request) {
                return;
            }
            if let Err(reason) = self.validate_request(&request, false) {
                self.refuse(&request, reason);
                return;
            }
            if let Some(digest) = self.in_flight(request.client, request.request) {
                if digests_conflict(&digest, &request.digest) {
                    self.refuse_reused(&request);
                }
                return;
            }
        }
        let actual = self.journal.stream_length(request.stream);
        if let Some(expected) = request.expected_offset
            && expected != actual
        {
            self.out.push(Action::Reply {
                client: request.client,
                request: request.request,
                reply: Reply::WrongExpectedOffset { expected, actual },
            });
            return;
        }
        let mut header = self.next_header(&request, actual);
        if request.trail.is_some() || !self.group.is_empty() {
            header.flags |= vellum_audit::record::FLAG_GROUP_CONTINUES;
        }
        if request.enveloped {
            header.flags |= vellum_audit::record::FLAG_ENVELOPES;
        }
        self.sealing = Some(Sealing {
            header,
            trail: request.trail,
        });
        self.out.push(Action::Seal {
            header,
            events: request.events,
            trail_for: Vec::new(),
        });
    }

    /// The header of the next op; the shell fills in key id and body.
    fn next_header(&self, request: &Request, stream_offset: u64) -> OpHeader {
        let op = self.journal.op();
        let previous = self.journal.header(op);
        let mut header = OpHeader::empty(RecordKind::Op, self.config.cluster);
        header.parent = previous.map_or(genesis_parent(self.config.cluster), |h| h.checksum());
        header.view = self.view;
        header.op = op + 1;
        header.commit = self.commit;
        header.client_id = request.client;
        header.request = request.request;
        // A logical timestamp: the core has no clock.
        header.timestamp_ns = previous.map_or(0, |h| h.timestamp_ns + 1).max(self.ticks);
        header.stream = request.stream;
        header.stream_offset = stream_offset;
        header.global_position = previous.map_or(0, |h| h.tree_size);
        header.event_count = u32::try_from(request.events.len()).expect("checked against the max");
        header.tree_size = header.global_position + u64::from(header.event_count);
        header.key_id = request.key_id;
        header.request_digest = request.digest;
        header
    }

    /// The shell sealed the batch: journal it and send the prepare.
    pub(super) fn on_sealed(&mut self, record: Record, key: Option<Bytes>) {
        let Some(sealing) = self.sealing.take() else {
            return;
        };
        let mut expected = sealing.header;
        expected.key_id = record.header.key_id;
        // The shell may raise the core's logical timestamp to its wall clock
        // (headers carry real time), never lower it: timestamps stay
        // increasing along the chain.
        if record.header.timestamp_ns >= expected.timestamp_ns {
            expected.timestamp_ns = record.header.timestamp_ns;
        }
        expected.body_checksum = record.header.body_checksum;
        expected.body_size = record.header.body_size;
        let leaves = check_record(&record, self.config.cluster);
        let fits = expected == record.header && self.journal.op() + 1 == expected.op;
        let (true, Some(leaves), true) = (fits, leaves, self.is_primary()) else {
            self.out.push(Action::Reply {
                client: sealing.header.client_id,
                request: sealing.header.request,
                reply: Reply::Refused(super::RequestRefusal::SealMismatch),
            });
            self.drain_queue();
            return;
        };
        let op = record.header.op;
        if let Some(trail) = sealing.trail {
            if self.group.is_empty() {
                self.group_first_op = op;
            }
            self.group.push((trail, record.header));
        }
        self.journal.fill(record.header, leaves, SlotState::Writing);
        if let Some(key) = &key {
            self.keys.insert(op, key.clone());
        }
        self.out.push(Action::Write {
            record: record.clone(),
            key: key.clone(),
        });
        let commit = self.commit;
        self.broadcast(MessageBody::Prepare {
            record,
            commit,
            key,
        });
        self.drain_queue();
    }

    /// Writes are durable: the durable prefix is acknowledged once for the
    /// whole batch.
    pub(super) fn on_writes_done(&mut self, writes: &[(u64, Hash)]) {
        let mut grew = false;
        for (op, checksum) in writes {
            grew |= self.journal.mark_durable(*op, checksum);
        }
        if grew {
            self.on_durable();
        }
    }

    /// The durable prefix may have grown: acknowledge (backup) or count the
    /// own vote (primary).
    pub(super) fn on_durable(&mut self) {
        if self.status != Status::Normal || self.pending.is_some() {
            return;
        }
        if self.is_primary() {
            self.try_commit();
            self.drain_queue();
        } else {
            let durable = self.journal.durable_op();
            if let Some(end) = self.journal.group_end_at_or_below(durable) {
                self.send_prepare_ok(end);
            }
            self.backup_try_commit();
        }
    }

    /// Sends prepare_ok for `op` (every op up to it is durable here) with
    /// this replica's signature over its checkpoint.
    pub(super) fn send_prepare_ok(&mut self, op: u64) {
        let Some(header) = self.journal.header(op).copied() else {
            return;
        };
        let Some(signature) = self.sign_checkpoint(op) else {
            return;
        };
        let primary = self.primary_of(self.view);
        self.send(
            primary,
            MessageBody::PrepareOk {
                op,
                checksum: header.checksum(),
                signature,
            },
        );
    }

    /// A backup's prepare_ok: kept if its signature is over the primary's
    /// own checkpoint of that op.
    pub(super) fn on_prepare_ok(
        &mut self,
        from: ReplicaIndex,
        view: u64,
        op: u64,
        checksum: Hash,
        signature: Vec<u8>,
    ) {
        if !self.is_primary() || view != self.view || op <= self.commit {
            return;
        }
        let matches = self
            .journal
            .header(op)
            .is_some_and(|h| h.checksum() == checksum);
        if !matches || !self.check_ack(from, op, &signature) {
            return;
        }
        self.acks.entry(op).or_default().insert(from, signature);
        let acked = self.acked.entry(from).or_default();
        *acked = (*acked).max(op);
        self.try_commit();
    }

    /// Commits the highest op a quorum (the primary included) signed.
    pub(super) fn try_commit(&mut self) {
        let needed = if self.broken(Broken::CommitWithoutQuorum) {
            1
        } else {
            self.config.quorum()
        };
        let own = self.journal.durable_op();
        let top = own.min(self.journal.op());
        // Only the last op of an atomic group may be certified.
        let found = (self.commit + 1..=top).rev().find(|op| {
            let others = self.acks.get(op).map_or(0, |a| a.len());
            let certifiable =
                self.journal.is_group_end(*op) || self.broken(Broken::CertifyInsideGroup);
            others + 1 >= needed && certifiable
        });
        let Some(op) = found else { return };
        let Some(own_signature) = self.sign_checkpoint(op) else {
            return;
        };
        let mut signatures = self.acks.get(&op).cloned().unwrap_or_default();
        signatures.insert(self.config.replica, own_signature);
        let cert = self.assemble_certificate(op, &signatures);
        self.commit_to(op, cert);
        let certificate = self.certificate.as_ref().map(|c| c.text.clone());
        let commit = self.commit;
        self.broadcast(MessageBody::Commit {
            commit,
            certificate,
        });
        self.timers.heartbeat_sent = self.ticks;
        self.drain_queue();
    }

    /// Commits every op up to `target`, all covered by `cert`.
    pub(super) fn commit_to(&mut self, target: u64, cert: Cert) {
        assert!(target <= cert.op, "the certificate covers the commit");
        assert!(
            target <= self.journal.durable_op(),
            "commit only ops held intact"
        );
        let primary = self.is_primary();
        for op in self.commit + 1..=target {
            let header = *self.journal.header(op).expect("durable ops have headers");
            self.clients.apply(&header);
            self.out.push(Action::Committed {
                op,
                certificate: std::sync::Arc::clone(&cert.certificate),
            });
            if primary {
                let body = reply_body(&header, &cert.text);
                self.out.push(Action::Reply {
                    client: header.client_id,
                    request: header.request,
                    reply: Reply::Committed(body),
                });
            }
            self.acks.remove(&op);
            self.keys.remove(&op);
        }
        self.commit = self.commit.max(target);
        self.commit_max = self.commit_max.max(target);
        self.keep_certificate(cert);
    }

    /// The reply to the committed op `header`, if a known certificate
    /// covers it.
    fn reply_for(&self, header: &OpHeader) -> Option<Reply> {
        let cert = self.certificate.as_ref()?;
        if cert.op < header.op {
            return None;
        }
        Some(Reply::Committed(reply_body(header, &cert.text)))
    }

    /// A commit heartbeat from the primary.
    pub(super) fn on_commit(
        &mut self,
        from: ReplicaIndex,
        view: u64,
        commit: u64,
        certificate: Option<String>,
    ) {
        if from != self.primary_of(view) || view < self.view {
            return;
        }
        let normal_here = self.status == Status::Normal && view == self.view;
        if !normal_here {
            // The view started without this replica: catch up through recovery.
            if self.pending.is_none() && self.status != Status::Recovering {
                self.start_recovery();
            }
            return;
        }
        if self.is_primary() || self.pending.is_some() {
            return;
        }
        self.timers.primary_heard = self.ticks;
        self.note_commit(commit);
        let known = |text: &String| self.certificate.as_ref().is_some_and(|c| c.text == *text);
        let fresh = certificate.filter(|text| !known(text));
        if let Some(cert) = fresh.and_then(|text| self.verify_certificate(&text)) {
            self.keep_certificate(cert);
        }
        self.backup_try_commit();
    }

    /// Learns that the cluster committed up to `commit` (so ops up to it may
    /// be fetched from anyone who committed them).
    pub(super) fn note_commit(&mut self, commit: u64) {
        self.commit_max = self.commit_max.max(commit);
        self.journal.extend_to(self.commit_max);
    }

    /// Commits what the newest certificate covers, over ops held intact.
    pub(super) fn backup_try_commit(&mut self) {
        let Some(cert) = self.certificate.clone() else {
            return;
        };
        if cert.op <= self.commit || !self.certificate_matches_log(&cert) {
            return;
        }
        let target = cert.op.min(self.journal.durable_op());
        if target > self.commit {
            self.commit_to(target, cert);
        }
    }

    /// The primary's timers: heartbeats and retransmissions.
    pub(super) fn primary_tick(&mut self) {
        if self.ticks - self.timers.heartbeat_sent >= self.config.heartbeat_ticks {
            self.timers.heartbeat_sent = self.ticks;
            let certificate = self.certificate.as_ref().map(|c| c.text.clone());
            let commit = self.commit;
            self.broadcast(MessageBody::Commit {
                commit,
                certificate,
            });
        }
        if self.ticks - self.timers.prepare_retried >= self.config.prepare_retry_ticks {
            self.timers.prepare_retried = self.ticks;
            self.retransmit();
        }
        self.try_commit();
        self.drain_queue();
        self.step_down_if_stuck();
    }

    /// A primary whose log stays incomplete (an op nobody answers for) for
    /// `STUCK_TIMEOUTS` view change timeouts starts the next view: there,
    /// only ops some replica holds durably are kept.
    fn step_down_if_stuck(&mut self) {
        if self.journal.tree_op() == self.journal.op() {
            self.timers.primary_complete = self.ticks;
            return;
        }
        let stuck = self.ticks - self.timers.primary_complete;
        if stuck >= STUCK_TIMEOUTS * self.config.view_change_timeout_ticks {
            self.start_view_change(self.view + 1);
        }
    }

    /// Reads every uncommitted op some backup has not acknowledged, to send
    /// it again.
    fn retransmit(&mut self) {
        let backups = usize::from(self.config.replica_count) - 1;
        let ops: Vec<u64> = (self.commit + 1..=self.journal.op())
            .filter(|op| {
                let acked = self.acked.values().filter(|a| **a >= *op).count();
                acked < backups && self.journal.state(*op) == Some(SlotState::Durable)
            })
            .take(self.config.pipeline_max)
            .collect();
        for op in ops {
            let checksum = self.journal.header(op).expect("durable").checksum();
            self.out.push(Action::Read {
                op,
                checksum,
                purpose: ReadPurpose::Retransmit,
            });
        }
    }

    /// Sends a re-read uncommitted op to the backups that lack it.
    pub(super) fn retransmit_record(&mut self, record: Record) {
        let op = record.header.op;
        if !self.is_primary() || op <= self.commit {
            return;
        }
        let key = self.keys.get(&op).cloned();
        let commit = self.commit;
        for to in 0..self.config.replica_count {
            let acked = self.acked.get(&to).copied().unwrap_or(0);
            if to != self.config.replica && acked < op {
                let body = MessageBody::Prepare {
                    record: record.clone(),
                    commit,
                    key: key.clone(),
                };
                self.send(to, body);
            }
        }
    }

    /// A backup's timer: start a view change when the primary is silent.
    pub(super) fn backup_tick(&mut self) {
        let silent = self.ticks - self.timers.primary_heard;
        if silent >= self.config.view_change_timeout_ticks {
            self.start_view_change(self.view + 1);
        }
    }
}

/// The reply body of a committed op.
fn reply_body(header: &OpHeader, certificate: &str) -> ReplyBody {
    ReplyBody {
        op: header.op,
        view: header.view,
        stream: header.stream,
        first_offset: header.stream_offset,
        next_offset: header.stream_offset + u64::from(header.event_count),
        first_position: header.global_position,
        certificate: certificate.to_owned(),
    }
}
