//! The log as the shell of a one-replica VSR core: appends go through
//! `vsr::Replica` exactly as they do on every replica of a cluster — the
//! core numbers the op, checks the client table and the expected offset,
//! chains the header, waits for the write to be durable, signs the
//! checkpoint and commits; this shell executes its actions (seal with the
//! key store, write through storage, save the view state, store
//! certificates, answer the caller).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum_audit::checkpoint::Certificate;
use vellum_audit::leaf::commitment;
use vellum_audit::record::{self, OpHeader, Record};
use vellum_compliance::trail::AccessEvent;

use super::event_ids::IdCheck;
use super::state::{LogState, PendingOp};
use super::{Appended, ClientRequest, LocalLog, LogError, now_ns};
use crate::crypto::{self, EventAad};
use crate::storage::Ticket;
use crate::vsr::{self, Action, DurableState, Input, Reply, Request};

/// How long a caller waits for its op to commit. On a one-replica cluster
/// that takes one fsync; the bound turns a bug into an indeterminate error
/// instead of a hang.
pub const COMMIT_WAIT_MS_MAX: u64 = 60_000;
/// How long a waiting caller on a cluster replica sleeps at most between
/// two looks at the view. A view change wakes every waiter at once
/// (`publish_role`), so this is only a bound in case a wake-up is missed,
/// not a polling period.
const VIEW_CHECK_MS: u64 = 1_000;
/// How often a caller whose idempotency key is still in flight here checks
/// whether it may go (bounded by the commit wait).
const SAME_KEY_POLL_MS: u64 = 5;
/// Idle client sessions kept for reuse by callers that bring none.
pub const SESSIONS_IDLE_MAX: usize = 256;
/// Ops in flight in the local core: the most one group commit can carry.
pub const LOCAL_PIPELINE_MAX: usize = 1024;
/// A failing signing key is logged at its first failure and then once per
/// this many (the core asks again every tick while it has an op to sign).
const SIGNING_FAILURES_LOGGED_EVERY: u64 = 1_000;

/// The core, behind the log's core mutex.
#[derive(Debug)]
pub struct Core {
    pub(super) replica: vsr::Replica,
}

impl Core {
    /// Wraps a started replica.
    pub fn new(replica: vsr::Replica) -> Core {
        Core { replica }
    }
}

/// What the core hands to waiting callers: replies by request, and writes
/// that someone must see through to `WriteDone`. Callers waiting for their
/// reply take pending writes off the queue, so the writes of requests that
/// queued behind a full pipeline need no thread of their own. Each waiter
/// sleeps on its own condition variable: a reply wakes exactly its caller,
/// a write wakes one idle caller (no thundering herd of 64 threads per op).
#[derive(Default)]
pub struct Exchange {
    inner: Mutex<ExchangeInner>,
    /// Wakes the loop of a cluster replica when a write becomes pending on
    /// an empty queue (set once by the replica runtime; it must not block).
    waker: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Exchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exchange")
            .field("inner", &self.inner)
            .field("waker", &self.waker.get().is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct ExchangeInner {
    replies: HashMap<(u128, u64), Reply>,
    writes: VecDeque<PendingWrite>,
    waiting: HashMap<(u128, u64), Arc<Condvar>>,
    idle: VecDeque<(u128, u64)>,
}

impl Exchange {
    /// Wakes every caller waiting for a reply (it looks again at its reply,
    /// the log's health and the view).
    pub(super) fn wake_waiters(&self) {
        self.lock().wake_all();
    }

    fn lock(&self) -> MutexGuard<'_, ExchangeInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl ExchangeInner {
    /// Wakes one idle waiter to take a pending write.
    fn wake_one_idle(&mut self) {
        while let Some(key) = self.idle.pop_front() {
            if let Some(condvar) = self.waiting.get(&key) {
                condvar.notify_one();
                return;
            }
        }
    }

    fn push_write(&mut self, write: PendingWrite) {
        self.writes.push_back(write);
        self.wake_one_idle();
    }
}

impl Exchange {
    /// Queues a write for whoever sees it through (a waiting caller, or the
    /// loop of a cluster replica, woken when the queue was empty).
    pub(super) fn push_write(&self, write: PendingWrite) {
        let was_empty = {
            let mut inner = self.lock();
            let was_empty = inner.writes.is_empty();
            inner.push_write(write);
            was_empty
        };
        if was_empty && let Some(wake) = self.waker.get() {
            wake();
        }
    }

    /// Sets what wakes the replica loop; only the first call counts.
    pub(super) fn set_waker(&self, waker: Box<dyn Fn() + Send + Sync>) {
        let _ = self.waker.set(waker);
    }

    /// Puts writes taken but not yet durable back in front of the queue,
    /// in their order (no wake: the store wakes the loop when they are).
    pub(super) fn return_writes(&self, writes: Vec<PendingWrite>) {
        if writes.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for write in writes.into_iter().rev() {
            inner.writes.push_front(write);
        }
    }

    /// Takes every pending write (never waits).
    pub(super) fn take_writes(&self) -> Vec<PendingWrite> {
        self.lock().writes.drain(..).collect()
    }
}

impl ExchangeInner {
    fn push_reply(&mut self, key: (u128, u64), reply: Reply) {
        // A caller that gave up (timed out) is not waiting: drop its reply.
        if let Some(condvar) = self.waiting.get(&key) {
            condvar.notify_one();
            self.replies.insert(key, reply);
        }
    }

    fn wake_all(&self) {
        for condvar in self.waiting.values() {
            condvar.notify_one();
        }
    }
}

/// Client sessions for callers that bring no idempotency key: each caller
/// borrows one for one request (VSR allows one request in flight per
/// session), so concurrent callers never block each other.
#[derive(Debug, Default)]
pub struct Sessions {
    idle: Mutex<Vec<ClientRequest>>,
}

impl Sessions {
    fn take(&self) -> Result<ClientRequest, LogError> {
        let reused = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match reused {
            Some(session) => Ok(ClientRequest {
                request: session.request + 1,
                ..session
            }),
            None => Ok(ClientRequest {
                client: random_client()?,
                request: 1,
            }),
        }
    }

    fn give_back(&self, session: ClientRequest) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < SESSIONS_IDLE_MAX {
            idle.push(session);
        }
    }
}

fn random_client() -> Result<u128, LogError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| {
        // A failing random source is an internal fault, never the caller's
        // mistake: it must not surface as a refusal (422).
        LogError::Randomness(format!("no randomness for a client session: {e}"))
    })?;
    Ok(u128::from_le_bytes(bytes).max(1))
}

/// A write someone must see through to `WriteDone`.
#[derive(Debug)]
pub(super) struct PendingWrite {
    pub(super) op: u64,
    pub(super) checksum: vellum_audit::hash::Hash,
    pub(super) ticket: Ticket,
    /// The storage epoch of the ticket (a cut reopens storage).
    pub(super) epoch: u64,
}

/// The core's configuration on a one-replica log.
pub fn local_config(cluster: u128) -> vsr::Config {
    let mut config = vsr::Config::new(cluster, 1, 0);
    config.pipeline_max = LOCAL_PIPELINE_MAX;
    config.request_queue_max = 4 * LOCAL_PIPELINE_MAX;
    config.view_change_headers_max = config.view_change_headers_max.max(LOCAL_PIPELINE_MAX + 1);
    config
}

/// What `LocalLog::submit_request` did with a request.
enum Submitted {
    /// Handed to the core: the commit number before it and the view.
    ToCore { committed_before: u64, view: u64 },
    /// A resent op, answered from the log without the core.
    Resent(Box<Appended>),
}

impl LocalLog {
    pub(super) fn core(&self) -> MutexGuard<'_, Core> {
        self.core
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends through the core (see the module docs).
    pub(super) fn append_through_core(
        &self,
        stream: u64,
        events: &[Bytes],
        expected_offset: Option<u64>,
        client: Option<ClientRequest>,
        trail: Option<Bytes>,
        enveloped: bool,
    ) -> Result<Appended, LogError> {
        let session = match client {
            Some(session) => session,
            None => self.sessions.take()?,
        };
        // Register before the request reaches the core: it may answer at
        // once (a refusal, or a retry answered from the client table).
        let key = (session.client, session.request);
        let condvar = Arc::new(Condvar::new());
        self.register_waiter(key, &condvar)?;
        let submitted =
            self.submit_request(session, stream, events, expected_offset, trail, enveloped);
        let (committed_before, view) = match submitted {
            Ok(Submitted::ToCore {
                committed_before,
                view,
            }) => (committed_before, view),
            Ok(Submitted::Resent(appended)) => {
                self.exchange.lock().waiting.remove(&key);
                if client.is_none() {
                    self.sessions.give_back(session);
                }
                return Ok(*appended);
            }
            Err(e) => {
                self.exchange.lock().waiting.remove(&key);
                return Err(e);
            }
        };
        let reply = self.wait_reply(key, &condvar, view)?;
        if client.is_none() {
            self.sessions.give_back(session);
        }
        self.appended(stream, reply, committed_before)
    }

    /// Registers the caller of `key` for its reply, after any caller of the
    /// same key still waiting here is done. Replies go by idempotency key,
    /// so two callers of one key at once could take each other's reply: a
    /// retry could take the original's, or the original a refusal meant
    /// for a reuse of its key (while its own op commits). VSR allows one
    /// request in flight per session; a second one waits its turn, then is
    /// answered from the client table (a retry) or refused (a reuse).
    fn register_waiter(&self, key: (u128, u64), condvar: &Arc<Condvar>) -> Result<(), LogError> {
        let cluster = self.cluster_shell.as_ref();
        let wait_ms = cluster.map_or(COMMIT_WAIT_MS_MAX, |c| c.role.commit_wait_ms);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        loop {
            let mut exchange = self.exchange.lock();
            if let std::collections::hash_map::Entry::Vacant(slot) = exchange.waiting.entry(key) {
                slot.insert(Arc::clone(condvar));
                return Ok(());
            }
            drop(exchange);
            if Instant::now() >= deadline {
                return Err(LogError::Indeterminate(format!(
                    "request {} of this client session was still in flight after {wait_ms} ms; retry with the same key",
                    key.1
                )));
            }
            std::thread::sleep(Duration::from_millis(SAME_KEY_POLL_MS));
        }
    }

    /// Hands the request to the core; returns the commit number before it
    /// and the view it went in. A batch with envelopes is first judged by
    /// its event ids, under the core's lock (see `event_ids`): a resent op
    /// is answered from the log, any other repeat of an id is refused.
    fn submit_request(
        &self,
        session: ClientRequest,
        stream: u64,
        events: &[Bytes],
        expected_offset: Option<u64>,
        trail: Option<Bytes>,
        enveloped: bool,
    ) -> Result<Submitted, LogError> {
        self.create_stream_key_unlocked(stream);
        let mut core = self.core();
        if let Some(reason) = &self.lock().poisoned {
            return Err(LogError::Poisoned(reason.clone()));
        }
        if enveloped && let Some(resent) = self.judge_event_ids(stream, events)? {
            return Ok(Submitted::Resent(Box::new(resent)));
        }
        let committed_before = core.replica.commit();
        let view = core.replica.view();
        let (key_id, digest) =
            self.request_digest(&core, session, stream, expected_offset, events)?;
        let request = Request {
            client: session.client,
            request: session.request,
            stream,
            expected_offset,
            events: events.to_vec(),
            key_id,
            digest,
            trail,
            enveloped,
        };
        self.execute(&mut core, Input::Request(request))?;
        Ok(Submitted::ToCore {
            committed_before,
            view,
        })
    }

    /// The id rule of `event_ids` for a batch with envelopes; called under
    /// the core's lock. `Some` is the answer to a resent op.
    fn judge_event_ids(&self, stream: u64, events: &[Bytes]) -> Result<Option<Appended>, LogError> {
        let ids = events
            .iter()
            .map(|event| {
                vellum_audit::envelope::Envelope::decode(event)
                    .map(|envelope| envelope.id)
                    .map_err(|e| LogError::BadEnvelope(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let state = self.lock();
        let op_events = |op| {
            state
                .op(op)
                .map(|info| (info.stream_offset, u64::from(info.event_count)))
        };
        match state.ids.check(stream, &ids, op_events) {
            IdCheck::New => Ok(None),
            IdCheck::Duplicate {
                index,
                id,
                offset,
                first,
            } => Err(LogError::DuplicateEventId {
                stream,
                index,
                id: vellum_audit::envelope::format_uuid(&id),
                offset,
                first,
            }),
            IdCheck::Resent { op } => {
                let info = state.op(op).expect("the id index names ops of the state");
                let certificate = state
                    .certificate_covering(op)
                    .filter(|_| op <= state.commit)
                    .ok_or_else(|| {
                        LogError::Indeterminate(format!(
                            "the events with these ids are in op {op}, which is not committed yet; retry"
                        ))
                    })?;
                let count = u64::from(info.event_count);
                Ok(Some(Appended {
                    stream,
                    first_offset: info.stream_offset,
                    next_offset: info.stream_offset + count,
                    first_position: info.global_position,
                    count,
                    op,
                    certificate,
                    duplicate: true,
                    sealed: None,
                }))
            }
        }
    }

    /// Creates a new stream's data key (files and fsyncs) before the core
    /// is locked, so other requests go on meanwhile; the locked path then
    /// finds it. Any failure is left to the locked path, which decides as
    /// before (a retry of a shredded stream is answered from the table).
    fn create_stream_key_unlocked(&self, stream: u64) {
        if matches!(self.keys.key_for_stream(stream), Ok(None))
            && let Err(error) = self.keys.ensure_key_for_stream(stream)
        {
            tracing::debug!(%error, stream, "could not create the stream's data key ahead");
        }
    }

    /// The data key and keyed digest of a request (`crypto::request_digest`),
    /// computed with the core locked so the entry it is compared with
    /// cannot change before the core sees it.
    ///
    /// A request whose session and number the core already holds (committed
    /// or in flight) digests under that entry's key, so an identical retry
    /// compares equal on every replica whatever key this one would pick for
    /// the stream now; if that key is gone (shredded) the digest is unknown
    /// and the entry answers as before. A new request digests under its
    /// stream's data key, created here (durably) if the stream has none:
    /// the key exists before the core sees the request, and the batch is
    /// sealed under that same key.
    fn request_digest(
        &self,
        core: &Core,
        session: ClientRequest,
        stream: u64,
        expected_offset: Option<u64>,
        events: &[Bytes],
    ) -> Result<(u64, vellum_audit::hash::Hash), LogError> {
        if let Some(key_id) = core.replica.digest_key_for(session.client, session.request) {
            let dek = match self.keys.key(key_id) {
                Ok(Some(dek)) => dek,
                Ok(None) | Err(crypto::CryptoError::Shredded { .. }) => {
                    return Ok((key_id, vsr::DIGEST_UNKNOWN));
                }
                Err(e) => return Err(e.into()),
            };
            let digest = crypto::request_digest(&dek, stream, expected_offset, events);
            return Ok((key_id, digest));
        }
        let (key_id, dek) = self.keys.ensure_key_for_stream(stream)?;
        let digest = crypto::request_digest(&dek, stream, expected_offset, events);
        Ok((key_id, digest))
    }

    /// Waits for this caller's reply, seeing pending writes through to
    /// `WriteDone` meanwhile (each durability wait happens outside every
    /// lock, so concurrent callers share fsyncs).
    ///
    /// On a replica of a cluster the replica loop sees writes through;
    /// a waiter gives up (outcome unknown) when the view changes under it
    /// or its commit wait passes, so the client retries elsewhere.
    fn wait_reply(
        &self,
        key: (u128, u64),
        condvar: &Condvar,
        view: u64,
    ) -> Result<Reply, LogError> {
        let cluster = self.cluster_shell.as_ref();
        let wait_ms = cluster.map_or(COMMIT_WAIT_MS_MAX, |c| c.role.commit_wait_ms);
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        let mut exchange = self.exchange.lock();
        let outcome = loop {
            exchange.idle.retain(|k| *k != key);
            if let Some(reply) = exchange.replies.remove(&key) {
                break Ok(reply);
            }
            if let Some(reason) = &self.lock().poisoned {
                break Err(LogError::Poisoned(reason.clone()));
            }
            if cluster.is_some() {
                // The view as of the core's last step (published after
                // every step): no need to take the core's lock, which the
                // replica loop holds most of the time under load. Read
                // while the exchange is held: `publish_role` stores a new
                // view before it takes the exchange to wake every waiter,
                // so a change is either seen here or wakes the wait below.
                if self.view.load(std::sync::atomic::Ordering::SeqCst) != view {
                    break Err(LogError::Indeterminate(
                        "the view changed while the request was in flight".to_string(),
                    ));
                }
            } else if !exchange.writes.is_empty() {
                // All pending writes at once: they share one fdatasync and
                // the core certifies them together.
                let writes: Vec<PendingWrite> = exchange.writes.drain(..).collect();
                drop(exchange);
                let seen = self.see_through(writes);
                exchange = self.exchange.lock();
                if let Err(e) = seen {
                    break Err(e);
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(LogError::Indeterminate(format!(
                    "no commit within {wait_ms} ms; retry with the same client request"
                )));
            }
            // Cluster waiters take no writes: they only need the reply.
            if cluster.is_none() {
                exchange.idle.push_back(key);
            }
            let slice = match cluster {
                Some(_) => (deadline - now).min(Duration::from_millis(VIEW_CHECK_MS)),
                None => deadline - now,
            };
            exchange = condvar
                .wait_timeout(exchange, slice)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        };
        exchange.waiting.remove(&key);
        exchange.idle.retain(|k| *k != key);
        // Writes left behind go to another waiter.
        if !exchange.writes.is_empty() {
            exchange.wake_one_idle();
        }
        outcome
    }

    /// Waits until these writes are durable (one group commit usually
    /// covers them all) and tells the core in one input.
    fn see_through(&self, writes: Vec<PendingWrite>) -> Result<(), LogError> {
        for write in &writes {
            if let Err(e) = self.storage.get().wait_durable(write.ticket) {
                self.lock().poisoned = Some(e.to_string());
                self.exchange.lock().wake_all();
                return Err(e.into());
            }
        }
        let writes = writes.iter().map(|w| (w.op, w.checksum)).collect();
        let mut core = self.core();
        self.execute(&mut core, Input::WriteDone { writes })
    }

    fn appended(
        &self,
        stream: u64,
        reply: Reply,
        committed_before: u64,
    ) -> Result<Appended, LogError> {
        match reply {
            Reply::Committed(body) => {
                let certificate = Arc::new(Certificate::parse(&body.certificate).map_err(|e| {
                    LogError::Corrupt(format!("the core's certificate does not parse: {e}"))
                })?);
                Ok(Appended {
                    stream: body.stream,
                    first_offset: body.first_offset,
                    next_offset: body.next_offset,
                    first_position: body.first_position,
                    count: body.next_offset - body.first_offset,
                    op: body.op,
                    certificate,
                    duplicate: body.op <= committed_before,
                    sealed: self.sealed.take(body.op),
                })
            }
            Reply::WrongExpectedOffset { expected, actual } => Err(LogError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            }),
            Reply::IdempotencyKeyReused { request } => {
                Err(LogError::IdempotencyKeyReused { stream, request })
            }
            Reply::Refused(reason) => Err(LogError::Refused(reason)),
        }
    }

    /// Feeds `input` to the core and executes what it asks for.
    pub(super) fn execute(&self, core: &mut Core, input: Input) -> Result<(), LogError> {
        // The records this step writes go out in one batch (one fdatasync):
        // an append's op and the trail op closing its group, not one each.
        let _plug = self.storage.plug();
        trace_input(&input);
        let actions = core.replica.step(input);
        let outcome = self.run(core, actions);
        self.publish_role(core);
        outcome
    }

    /// Executes `actions`, feeding every completion back to the core until
    /// it is quiet. Writes and replies go to the exchange for the callers.
    pub(super) fn run(&self, core: &mut Core, first: Vec<Action>) -> Result<(), LogError> {
        let mut inputs = VecDeque::new();
        let mut actions = first;
        // Messages go out once the core is quiet, in the order it sent them,
        // so the prepares of one step (an op and the trail op closing its
        // group) reach a backup together and share its fdatasync.
        let mut sends = Vec::new();
        let outcome = self.run_inner(core, &mut inputs, &mut actions, &mut sends);
        for (to, message) in sends {
            if tracing::enabled!(target: LATENCY_TARGET, tracing::Level::TRACE) {
                let (kind, op) = message_label(&message.body);
                tracing::trace!(target: LATENCY_TARGET, step = "send", kind, op, to);
            }
            self.cluster_send(to, message);
        }
        outcome
    }

    fn run_inner(
        &self,
        core: &mut Core,
        inputs: &mut VecDeque<Input>,
        actions: &mut Vec<Action>,
        sends: &mut Vec<(vsr::ReplicaIndex, vsr::Message)>,
    ) -> Result<(), LogError> {
        loop {
            for action in std::mem::take(actions) {
                match action {
                    Action::Seal {
                        header,
                        events,
                        trail_for,
                    } => {
                        let events = complete_trail_records(events, &trail_for);
                        let record = self.seal(header, &events).inspect_err(|e| self.poison(e))?;
                        inputs.push_back(Input::Sealed { record, key: None });
                    }
                    Action::Write { record, key } if self.cluster_shell.is_some() => {
                        self.cluster_write(record, key, inputs)
                            .inspect_err(|e| self.poison(e))?;
                    }
                    Action::Write { record, key: _ } => {
                        let write = self.write(record)?;
                        self.exchange.push_write(write);
                    }
                    Action::Save { state } => {
                        self.save_state(state).inspect_err(|e| self.poison(e))?;
                        inputs.push_back(Input::SaveDone { state });
                    }
                    Action::Sign { op, body } => {
                        let signature = self.sign_checkpoint_body(op, &body);
                        inputs.push_back(Input::Signed {
                            op,
                            body,
                            signature,
                        });
                    }
                    Action::Committed { op, certificate } => {
                        tracing::trace!(target: LATENCY_TARGET, step = "committed", op);
                        self.committed(op, certificate)?;
                    }
                    Action::Reply {
                        client,
                        request,
                        reply,
                    } => {
                        tracing::trace!(target: LATENCY_TARGET, step = "reply", request);
                        self.exchange.lock().push_reply((client, request), reply);
                    }
                    Action::Send { to, message } if self.cluster_shell.is_some() => {
                        sends.push((to, message));
                    }
                    Action::Truncate { after_op } if self.cluster_shell.is_some() => {
                        self.cluster_truncate(after_op, inputs)
                            .inspect_err(|e| self.poison(e))?;
                    }
                    Action::Read {
                        op,
                        checksum,
                        purpose,
                    } if self.cluster_shell.is_some() => {
                        self.cluster_read(op, checksum, purpose, inputs);
                    }
                    // A cluster of one has no peers.
                    Action::Send { .. } => {}
                    Action::Truncate { .. } | Action::Read { .. } => {
                        let error =
                            LogError::Corrupt(format!("a one-replica core asked for {action:?}"));
                        self.poison(&error);
                        return Err(error);
                    }
                }
            }
            let Some(input) = inputs.pop_front() else {
                break;
            };
            *actions = core.replica.step(input);
        }
        Ok(())
    }

    /// Signs a checkpoint body the core asked for with this replica's key
    /// (a file key, or a token's: one token call). A failure gives no
    /// signature (the core asks again on a later tick, write or ack), is
    /// counted, and is logged once and then every
    /// [`SIGNING_FAILURES_LOGGED_EVERY`]th time, so a dead token neither
    /// stalls the core in silence nor floods the log.
    fn sign_checkpoint_body(&self, op: u64, body: &str) -> Option<Vec<u8>> {
        match self.signer.try_sign(body.as_bytes()) {
            Ok(signature) => Some(signature.to_vec()),
            Err(e) => {
                let failures = self.signing_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if failures == 1 || failures.is_multiple_of(SIGNING_FAILURES_LOGGED_EVERY) {
                    tracing::error!(
                        op,
                        failures,
                        error = %e,
                        "the signing key did not sign a checkpoint: this replica acknowledges and certifies nothing until it does"
                    );
                }
                None
            }
        }
    }

    pub(super) fn poison(&self, error: &LogError) {
        self.lock()
            .poisoned
            .get_or_insert_with(|| error.to_string());
    }

    /// Encrypts the events of the op the core described, under the data key
    /// the request's digest was computed with (the header's `key_id`, which
    /// must be a key of the header's stream); the wall clock raises the
    /// core's logical timestamp.
    fn seal(&self, mut header: OpHeader, events: &[Bytes]) -> Result<Record, LogError> {
        let (key_id, dek) = if header.key_id == 0 {
            self.keys.ensure_key_for_stream(header.stream)?
        } else {
            let key_id = header.key_id;
            let stream = self.keys.stream_of_key(key_id)?;
            let dek = self.keys.key(key_id)?;
            match (stream, dek) {
                (Some(stream), Some(dek)) if stream == header.stream => (key_id, dek),
                (stream, _) => {
                    return Err(LogError::Corrupt(format!(
                        "op {} of stream {} names data key {key_id}, which belongs to {}",
                        header.op,
                        header.stream,
                        stream.map_or("no stream here".to_string(), |s| format!("stream {s}"))
                    )));
                }
            }
        };
        header.key_id = key_id;
        header.timestamp_ns = header.timestamp_ns.max(now_ns());
        let mut sealed_events = Vec::with_capacity(events.len());
        let mut salts = Vec::with_capacity(events.len());
        for (i, payload) in (0u64..).zip(events) {
            let aad = EventAad {
                cluster: self.cluster,
                stream: header.stream,
                stream_offset: header.stream_offset + i,
                key_id,
            };
            let nonce = self.keys.next_nonce(key_id)?;
            let salt = crypto::random_salt()?;
            let sealed = crypto::seal_event(&dek, nonce, &aad, &salt, payload)?;
            sealed_events.push((commitment(&salt, payload), nonce, sealed));
            salts.push(salt);
        }
        let frames: Vec<record::EventFrame<'_>> = sealed_events
            .iter()
            .map(|(commitment, nonce, sealed)| record::EventFrame {
                commitment: *commitment,
                nonce: *nonce,
                sealed,
            })
            .collect();
        let record = Record::new(header, record::encode_events(&frames));
        // Kept for the receipt (see `super::sealed`).
        self.sealed.put_salts(header.op, record.checksum(), salts);
        Ok(record)
    }

    /// Submits an op record to storage and extends the read-side state.
    pub(super) fn write(&self, record: Record) -> Result<PendingWrite, LogError> {
        let mut state = self.lock();
        let leaves = vellum_audit::leaf::record_leaves(&record, 0).map_err(|e| {
            LogError::Corrupt(format!("a record the core accepted does not decode: {e}"))
        })?;
        let header = record.header;
        let checksum = record.checksum();
        if header.has_envelopes() {
            // Before the op enters the state: a request judged after this
            // write (under the same core lock) sees its ids (`event_ids`).
            self.index_event_ids(&mut state, &record)?;
        }
        for leaf in &leaves {
            state.tree.push(leaf.leaf_hash());
        }
        self.sealed.put_preimages(header.op, checksum, &leaves);
        let tree_after = (state.tree.len(), state.tree.root());
        let ticket = match self.storage.get().submit(record, tree_after) {
            Ok(ticket) => ticket,
            Err(e) => {
                // The tree already holds the leaves; the handle cannot go on.
                state.poisoned = Some(e.to_string());
                self.exchange.wake_waiters();
                return Err(e.into());
            }
        };
        state.push_op(&header, checksum, Some(ticket.location()));
        Ok(PendingWrite {
            op: header.op,
            checksum,
            ticket,
            epoch: 0,
        })
    }

    /// Adds the event ids of an op with envelopes to the state's index.
    /// Its data key is here: this replica sealed it, or the prepare brought
    /// it (a shredded stream's ops carry no readable ids, as at open).
    fn index_event_ids(&self, state: &mut LogState, record: &Record) -> Result<(), LogError> {
        let dek = match self.keys.key(record.header.key_id) {
            Ok(Some(dek)) => dek,
            Ok(None) | Err(crypto::CryptoError::Shredded { .. }) => {
                tracing::warn!(
                    op = record.header.op,
                    key_id = record.header.key_id,
                    "no data key for an op with envelopes: its event ids are not indexed"
                );
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        state
            .ids
            .add_record(self.cluster, record, &dek, 0)
            .map_err(|e| LogError::Corrupt(format!("event ids of op {}: {e}", record.header.op)))
    }

    /// The core committed `op` under `certificate`: reads may see it, and
    /// the certificate goes into the log (lazily) and the index.
    fn committed(&self, op: u64, certificate: Arc<Certificate>) -> Result<(), LogError> {
        let mut custody = false;
        let outcome = self.commit_op(op, certificate, &mut custody);
        if custody {
            self.wake_on_commit();
        }
        outcome
    }

    /// Commits `op`; sets `custody` when it is an op of the key-custody
    /// stream (the only commits the commit waker is told about).
    fn commit_op(
        &self,
        op: u64,
        certificate: Arc<Certificate>,
        custody: &mut bool,
    ) -> Result<(), LogError> {
        let mut state = self.lock();
        state.commit = state.commit.max(op);
        *custody = state
            .op(op)
            .is_some_and(|info| info.stream == vellum_audit::record::KEY_CUSTODY_STREAM);
        let size = certificate.checkpoint.size;
        let already = state
            .latest_certificate()
            .is_some_and(|c| c.checkpoint.size >= size);
        if already {
            return Ok(());
        }
        let certified = state
            .op_with_tree_size(size)
            .filter(|info| certifies(&certificate, info));
        match (certified, self.cluster_shell.as_ref()) {
            (Some(info), _) => self.store_certificate(&mut state, info, certificate),
            // A replica of a cluster may learn a commit before its own copy
            // of the op is written (it is held behind a gap, or being
            // repaired): keep the certificate until the op is in the log.
            (None, Some(cluster)) => {
                cluster.defer_certificate(certificate);
                Ok(())
            }
            (None, None) => Err(LogError::Corrupt(format!(
                "a certificate for tree size {size} names no op of this log"
            ))),
        }
    }

    /// Stores a deferred certificate once the op it names is in the log.
    pub(super) fn store_deferred_certificate(&self) -> Result<(), LogError> {
        let Some(cluster) = self.cluster_shell.as_ref() else {
            return Ok(());
        };
        let Some(certificate) = cluster.deferred_certificate() else {
            return Ok(());
        };
        let mut state = self.lock();
        let size = certificate.checkpoint.size;
        if state
            .latest_certificate()
            .is_some_and(|c| c.checkpoint.size >= size)
        {
            cluster.clear_deferred(size);
            return Ok(());
        }
        let Some(info) = state
            .op_with_tree_size(size)
            .filter(|info| certifies(&certificate, info))
        else {
            return Ok(());
        };
        cluster.clear_deferred(size);
        self.store_certificate(&mut state, info, certificate)
    }

    /// Writes the core's view state durably (`<data>/vsr-state.json`).
    fn save_state(&self, state: DurableState) -> Result<(), LogError> {
        let path = self.dir.root().join(super::VSR_STATE_FILE);
        let text = serde_json::json!({ "view": state.view, "log_view": state.log_view, "commit": state.commit }).to_string();
        crate::fsutil::replace_durable(&path, text.as_bytes(), 0o644)
            .map_err(|e| LogError::DataDir(format!("{}: {e}", path.display())))
    }
}

/// True when `certificate`'s signed chain head names `info`'s op and header
/// (a certificate without a chain head is matched by tree size alone).
fn certifies(certificate: &Certificate, info: &super::state::OpInfo) -> bool {
    let head = vellum_audit::verify::ChainHead {
        op: info.op,
        checksum: info.checksum,
    };
    let heads = vellum_audit::verify::ChainHead::all_in(&certificate.checkpoint);
    heads.is_empty() || heads.contains(&Ok(head))
}

/// The trail records of a trail op that closes an atomic group: each
/// template (an [`AccessEvent`]'s payload) completed with the stream and
/// offsets of the op it records. A template that does not parse (a bug in
/// whoever built it) is stored as it came, and logged: the op must still
/// close its group.
fn complete_trail_records(events: Vec<Bytes>, trail_for: &[OpHeader]) -> Vec<Bytes> {
    if trail_for.is_empty() {
        return events;
    }
    events
        .into_iter()
        .zip(trail_for)
        .map(|(template, op)| match AccessEvent::from_payload(&template) {
            Ok(mut event) => {
                event.stream = Some(op.stream);
                event.from = Some(op.stream_offset);
                event.to = Some(op.stream_offset + u64::from(op.event_count));
                Bytes::from(event.to_payload())
            }
            Err(error) => {
                tracing::error!(%error, op = op.op, "a trail template does not parse; stored as given");
                template
            }
        })
        .collect()
}

/// Reads the saved view state; a missing file is a fresh replica.
pub fn load_state(path: &std::path::Path) -> Result<DurableState, LogError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DurableState::default()),
        Err(e) => return Err(LogError::DataDir(format!("{}: {e}", path.display()))),
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| LogError::DataDir(format!("{}: not valid view state: {e}", path.display())))?;
    let field = |name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                LogError::DataDir(format!(
                    "{}: field {name:?} is missing or not a number",
                    path.display()
                ))
            })
    };
    Ok(DurableState {
        view: field("view")?,
        log_view: field("log_view")?,
        commit: field("commit")?,
    })
}

/// The core's view of what the disk holds, from the recovered state: the
/// ops of the state as intact entries, then the pending ones (from the
/// first damaged op on) as they lie on disk, a damaged one `Faulty` (its
/// header when readable) so the core repairs it from peers by op and
/// checksum, never treating it as absent.
pub fn recovered(state: &LogState, durable: DurableState) -> vsr::Recovered {
    let mut journal: Vec<vsr::JournalEntry> = state
        .headers()
        .map(|header| vsr::JournalEntry::Intact {
            header: *header,
            leaves: (header.global_position..header.tree_size)
                .map(|position| {
                    state
                        .tree
                        .leaf(position)
                        .expect("every op's leaves are in the tree")
                })
                .collect(),
        })
        .collect();
    journal.extend(state.pending.iter().map(|(op, pending)| match pending {
        PendingOp::Intact { header, leaves, .. } => vsr::JournalEntry::Intact {
            header: *header,
            leaves: leaves.clone(),
        },
        PendingOp::Damaged(damaged) => vsr::JournalEntry::Faulty {
            op: *op,
            header: damaged.header,
        },
    }));
    let certificates = state.certificate_texts();
    vsr::Recovered {
        state: durable,
        journal,
        certificates,
    }
}

/// The tracing target of the latency trace: one TRACE event per input the
/// core steps and per message, commit and reply it makes, each with its op
/// (`RUST_LOG=vellum::latency=trace` on every replica; the timestamps of
/// the three processes line up on one machine). Off by default, and then
/// free: each point checks the level first.
pub const LATENCY_TARGET: &str = "vellum::latency";

fn trace_input(input: &Input) {
    if !tracing::enabled!(target: LATENCY_TARGET, tracing::Level::TRACE) {
        return;
    }
    let (kind, op) = match input {
        Input::Tick => return,
        Input::Message(message) => {
            let (kind, op) = message_label(&message.body);
            tracing::trace!(target: LATENCY_TARGET, step = "deliver", kind, op, from = message.from);
            return;
        }
        Input::Request(request) => ("request", request.request),
        Input::Sealed { record, .. } => ("sealed", record.header.op),
        Input::WriteDone { writes } => ("write_done", writes.last().map_or(0, |w| w.0)),
        Input::ReadDone { op, .. } => ("read_done", *op),
        Input::SaveDone { .. } => ("save_done", 0),
        Input::Signed { op, .. } => ("signed", *op),
    };
    tracing::trace!(target: LATENCY_TARGET, step = "input", kind, op);
}

/// A message's kind and the op it is about, for the latency trace.
fn message_label(body: &vsr::MessageBody) -> (&'static str, u64) {
    use vsr::MessageBody as B;
    match body {
        B::Prepare { record, .. } => ("prepare", record.header.op),
        B::PrepareOk { op, .. } => ("prepare_ok", *op),
        B::Commit { commit, .. } => ("commit", *commit),
        B::StartViewChange => ("start_view_change", 0),
        B::DoViewChange { op, .. } => ("do_view_change", *op),
        B::StartView { op, .. } => ("start_view", *op),
        B::RequestPrepare { op, .. } => ("request_prepare", *op),
        B::Recovery { .. } => ("recovery", 0),
        B::RecoveryResponse { op, .. } => ("recovery_response", *op),
    }
}
