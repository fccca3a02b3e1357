//! Simulated clients: each keeps one request outstanding, sends it to the
//! replica it believes is the primary, and retries with the same request
//! number after a timeout (sometimes to another replica), so retries reach
//! the client table. Replies travel over the (lossy) network, which is what
//! makes retries of already-committed requests common.

use bytes::Bytes;

use crate::types::StreamId;
use crate::vsr::{Input, Reply, Request};

use super::checker::Violation;
use super::cluster::{Event, Pending, RunError, Sim};
use super::options::{EVENTS_PER_REQUEST_MAX, STREAMS};

/// Chance a request carries an expected offset (to reach that path).
const EXPECTED_OFFSET_PER_MILLION: u32 = 50_000;
/// Requests that carry an access-trail record (so their op is prepared in
/// an atomic group with a trail op), per million.
const TRAIL_PER_MILLION: u32 = 700_000;
/// Chance a retry goes to the next replica rather than the guessed primary.
const RETRY_ELSEWHERE_PER_MILLION: u32 = 500_000;
/// Ticks before retrying after a refusal.
const REFUSED_RETRY_TICKS: u64 = 10;

impl Sim {
    /// Each client: retry a timed-out request, or send a new one when idle.
    pub(super) fn clients_act(&mut self) -> Result<(), RunError> {
        let timeout = self.options.profile.request_timeout_ticks;
        for client in 0..self.clients.len() {
            let now = self.now;
            match &self.clients[client].pending {
                Some(pending) if now >= pending.sent_at + timeout => self.retry(client),
                None if !self.quiet && now >= self.clients[client].idle_until => {
                    self.new_request(client)
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts the client's next request.
    pub(super) fn new_request(&mut self, client: usize) {
        let stream = StreamId::USER_MIN + self.prng.below(STREAMS);
        let count = self.prng.range(1, EVENTS_PER_REQUEST_MAX);
        let state = &mut self.clients[client];
        let request = state.next_request;
        state.next_request += 1;
        let events: Vec<Bytes> = (0..count)
            .map(|i| {
                Bytes::from(format!(
                    "{{\"client\":{client},\"request\":{request},\"event\":{i}}}"
                ))
            })
            .collect();
        let expected_offset = self.prng.chance(EXPECTED_OFFSET_PER_MILLION).then_some(0);
        // Most requests carry their trail record, as API appends do; the
        // rest are plain ops (as `persist_blocking` and trail appends are).
        let trail = self
            .prng
            .chance(TRAIL_PER_MILLION)
            .then(|| Bytes::from(format!("trail client {client} request {request}")));
        let id = self.clients[client].id;
        let digest = self.sealer.digest(stream, expected_offset, &events);
        let request = Request {
            client: id,
            request,
            stream,
            expected_offset,
            events,
            // One data key per stream in the simulator, named by the stream.
            key_id: stream,
            digest,
            trail,
            enveloped: false,
        };
        self.clients[client].pending = Some(Pending {
            request,
            sent_at: self.now,
            attempts: 0,
            stayed: false,
        });
        let target = self.clients[client].guess;
        self.send_request(client, target);
    }

    fn retry(&mut self, client: usize) {
        self.counters.cover("client:retry");
        // Half the retries go to the next replica: a backup may drop
        // requests silently, so the client must move on to find the primary.
        // Once the faults stopped, never twice in a row to the same one, as
        // a real client rotates through its endpoints: left to chance, a
        // client of a settled 5-replica cluster kept retrying backups
        // through the whole convergence bound (seed 391 with 5 replicas,
        // stuck). The fault phase keeps its draws and runs as before.
        let elsewhere = self.prng.chance(RETRY_ELSEWHERE_PER_MILLION);
        let now = self.now;
        let state = &mut self.clients[client];
        let pending = state
            .pending
            .as_mut()
            .expect("retry only with a pending request");
        let moved = elsewhere || (self.quiet && pending.stayed);
        pending.stayed = !moved;
        pending.attempts += 1;
        pending.sent_at = now;
        if moved {
            state.guess = (state.guess + 1) % self.options.replicas;
        }
        let target = state.guess;
        self.send_request(client, target);
    }

    fn send_request(&mut self, client: usize, target: u8) {
        let request = self.clients[client]
            .pending
            .as_ref()
            .expect("a request to send")
            .request
            .clone();
        let route = self.network.route_client(self.now);
        for at in route.arrivals {
            let input = Input::Request(request.clone());
            self.schedule(
                at,
                Event::Input {
                    replica: target,
                    incarnation: None,
                    from: None,
                    input,
                },
            );
        }
    }

    /// Executes a replica's `Reply` action: checks a committed reply's
    /// certificate, then sends the reply over the network to its client.
    pub(super) fn reply(
        &mut self,
        from: u8,
        client: u128,
        request: u64,
        reply: Reply,
    ) -> Result<(), RunError> {
        self.counters.cover(match &reply {
            Reply::Committed(_) => "reply:committed",
            Reply::WrongExpectedOffset { .. } => "reply:wrong_expected_offset",
            Reply::IdempotencyKeyReused { .. } => "reply:idempotency_key_reused",
            Reply::Refused(_) => "reply:refused",
        });
        if let Reply::Committed(body) = &reply {
            let source = format!("reply of replica {from}");
            self.checker
                .certificate(&body.certificate, &source, Some(body.op))
                .map_err(|v| self.violation(v))?;
        }
        let Some(index) = self.clients.iter().position(|c| c.id == client) else {
            self.counters.cover("reply:unknown_client");
            return Ok(());
        };
        let route = self.network.route_client(self.now);
        for at in route.arrivals {
            let reply = reply.clone();
            self.schedule(
                at,
                Event::Reply {
                    client: index,
                    from,
                    request,
                    reply,
                },
            );
        }
        Ok(())
    }

    /// A reply reached a client.
    pub(super) fn client_reply(
        &mut self,
        client: usize,
        from: u8,
        request: u64,
        reply: Reply,
    ) -> Result<(), RunError> {
        if self.debug {
            eprintln!(
                "tick {} client {client} request {request} from r{from}: {reply:?}",
                self.now
            );
        }
        let state = &self.clients[client];
        let Some(pending) = state
            .pending
            .as_ref()
            .filter(|p| p.request.request == request)
        else {
            self.counters.cover("client:stale_reply");
            return Ok(());
        };
        let (id, attempts, digest) = (state.id, pending.attempts, pending.request.digest);
        match reply {
            Reply::Committed(body) => {
                self.checker
                    .acknowledged(id, request, &body, digest)
                    .map_err(|v| self.violation(v))?;
                self.counters.acknowledged += 1;
                if attempts > 0 {
                    self.counters.cover("client:retry_answered");
                }
                let (low, high) = self.options.profile.think_ticks;
                let idle_until = self.now + self.prng.range(low, high);
                let state = &mut self.clients[client];
                state.pending = None;
                state.guess = from;
                state.idle_until = idle_until;
            }
            Reply::WrongExpectedOffset { .. } => {
                self.clients[client].pending = None;
            }
            // Simulated clients retry only the very same request: a refusal
            // as a reused key is a false alarm of the client table.
            Reply::IdempotencyKeyReused { .. } => {
                return Err(self.violation(Violation::RetryRefusedAsReused {
                    client: id,
                    request,
                }));
            }
            Reply::Refused(_) => {
                let timeout = self.options.profile.request_timeout_ticks;
                let state = &mut self.clients[client];
                state.guess = (from + 1) % self.options.replicas;
                let pending = state.pending.as_mut().expect("checked above");
                pending.sent_at = self
                    .now
                    .saturating_sub(timeout.saturating_sub(REFUSED_RETRY_TICKS));
            }
        }
        Ok(())
    }
}
