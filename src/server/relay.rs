//! The access-trail relay: how a backup that serves a read itself gets the
//! read's trail record committed by the primary before it answers (P7).
//!
//! Why it exists: backups serve stream reads, global reads and
//! subscriptions from their own certified prefix, so reads scale with the
//! replicas; but only the primary appends, and no access may be answered
//! before its trail record is committed. So a backup hands its access
//! events to [`record_access`], which batches them (concurrent readers
//! share one round trip, at most [`RELAY_EVENTS_MAX`] events, at most
//! [`RELAY_IN_FLIGHT_MAX`] batches in flight) and posts each batch to the
//! primary's internal route [`RELAY_PATH`]. That route accepts only a
//! caller that proved on the TLS handshake that it is a replica of the
//! cluster (its certificate, the trust a forwarded request already uses;
//! never a client's token), appends the events through the primary's own
//! trail batcher and answers only once they are committed. A batch that is
//! not confirmed (no primary, timeout, refusal) fails every read waiting on
//! it: the backup answers 503 and the read is not served.
//!
//! The primary queues its own access events the same way ([`record_access`]
//! with the local route): a caller awaits a channel instead of holding a
//! blocking thread, one task drains the queue into batches of at most
//! [`RELAY_EVENTS_MAX`] events, and at most [`LOCAL_IN_FLIGHT_MAX`] batches
//! are appended at once through the node (the relayed batches of backups
//! join the same queue). 64 concurrent readers thus park no blocking
//! thread for their trail record (they did, each on a condition variable
//! that every commit woke).
//!
//! Invariant: a backup answers a read only after the primary confirmed the
//! commit of its trail record. The relay accepts only access events of
//! reads (stream reads, global reads, subscriptions): a replica's
//! certificate cannot be used to write appends, exports or break-glass
//! records into the trail.

use std::sync::Arc;
use std::sync::OnceLock;
use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use tokio::sync::{Semaphore, mpsc, oneshot};
use vellum_compliance::trail::{AccessAction, AccessEvent};

use super::PeerReplica;
use super::node::{TrailError, Unavailable};
use super::routes::{ApiError, AppState, run_blocking};

/// The internal route a backup posts its access events to (not part of the
/// client API: absent from the route table and the OpenAPI document).
pub const RELAY_PATH: &str = "/internal/v1/trail";
/// Most access events in one relayed batch.
pub const RELAY_EVENTS_MAX: usize = 512;
/// Most batches one backup has in flight to the primary at once.
pub const RELAY_IN_FLIGHT_MAX: usize = 8;
/// Most batches of the primary's own queue appended at once (each is one
/// trail op in the core's pipeline; the node's trail batcher allows as
/// many, `replica::trail::TRAIL_BATCHES_IN_FLIGHT_MAX`).
pub const LOCAL_IN_FLIGHT_MAX: usize = 4;
/// Most access events waiting to be relayed; beyond, a read is refused
/// (503) instead of queueing without bound.
pub const RELAY_QUEUE_MAX: usize = 4096;
/// A relayed batch the primary has not confirmed within this time fails
/// (the reads waiting on it answer 503).
pub const RELAY_TIMEOUT_MS: u64 = 5_000;

/// Records `events` in the access trail and returns once they are
/// committed: at the primary through its node, at a backup through the
/// primary (the relay). Either way the caller waits on a channel, not on a
/// thread: its events join a queue that one task drains in batches
/// (concurrent callers share one trail op or one round trip), and only the
/// batches in flight occupy the blocking pool. The outer error is kept for
/// the callers' signature; a panicked node call is an inner
/// [`TrailError::Internal`].
pub(crate) async fn record_access(
    state: &AppState,
    events: Vec<AccessEvent>,
) -> Result<Result<(), TrailError>, ApiError> {
    if events.is_empty() {
        return Ok(Ok(()));
    }
    let role = state.node.role();
    if role.is_primary {
        return Ok(state.relay.record(state, Route::Local, events).await);
    }
    // The record names the backup that served the access (a backup's own
    // KEK rotation served no client: it names the backup as principal).
    let events = events
        .into_iter()
        .map(|mut event| {
            if matches!(
                event.action,
                AccessAction::KekRotated | AccessAction::SigningKeyRotated
            ) {
                return event;
            }
            let client = event.remote.as_deref().unwrap_or("unknown");
            event.remote = Some(vellum_compliance::trail::clip_text(&format!(
                "{client} served by replica {}",
                role.replica
            )));
            event
        })
        .collect();
    Ok(state.relay.record(state, Route::Primary, events).await)
}

/// Where a queue's batches go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// This replica is the primary: its own node appends them.
    Local,
    /// A backup: posted to the primary's [`RELAY_PATH`].
    Primary,
}

/// One caller's events, and where to tell it the batch's outcome.
struct Pending {
    events: Vec<AccessEvent>,
    done: oneshot::Sender<Result<(), TrailError>>,
}

/// The access-trail queues of one replica, toward its own node (while it
/// is the primary) and toward the primary (while it is a backup); cheap to
/// clone. The task that drains a queue starts on its first use (inside the
/// server's runtime).
#[derive(Debug, Clone, Default)]
pub struct TrailRelay {
    local: Arc<OnceLock<mpsc::Sender<Pending>>>,
    to_primary: Arc<OnceLock<mpsc::Sender<Pending>>>,
}

impl TrailRelay {
    async fn record(
        &self,
        state: &AppState,
        route: Route,
        events: Vec<AccessEvent>,
    ) -> Result<(), TrailError> {
        let queue = match route {
            Route::Local => &self.local,
            Route::Primary => &self.to_primary,
        };
        let sender = queue.get_or_init(|| {
            let (sender, receiver) = mpsc::channel(RELAY_QUEUE_MAX);
            tokio::spawn(drain(state.clone(), route, receiver));
            sender
        });
        let (done, outcome) = oneshot::channel();
        let queued = events.len();
        sender
            .try_send(Pending { events, done })
            .map_err(|_| Unavailable::TrailQueueFull { queued })?;
        outcome.await.unwrap_or_else(|_| {
            Err(TrailError::Unavailable(Unavailable::TrailRelay {
                detail: "the trail queue stopped before the batch was confirmed".to_string(),
            }))
        })
    }
}

/// Takes whatever waits (up to [`RELAY_EVENTS_MAX`] events) as one batch
/// and sends it, with at most [`RELAY_IN_FLIGHT_MAX`] batches in flight.
async fn drain(state: AppState, route: Route, mut receiver: mpsc::Receiver<Pending>) {
    let in_flight_max = match route {
        Route::Local => LOCAL_IN_FLIGHT_MAX,
        Route::Primary => RELAY_IN_FLIGHT_MAX,
    };
    let in_flight = Arc::new(Semaphore::new(in_flight_max));
    while let Some(first) = receiver.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        let mut count = first.events.len();
        let mut batch = vec![first];
        while count < RELAY_EVENTS_MAX {
            let Ok(next) = receiver.try_recv() else {
                break;
            };
            count += next.events.len();
            batch.push(next);
        }
        let state = state.clone();
        tokio::spawn(async move {
            let events: Vec<AccessEvent> = batch.iter().flat_map(|p| p.events.clone()).collect();
            let outcome = match route {
                Route::Local => append(&state, events).await,
                Route::Primary => send(&state, &events).await,
            };
            for pending in batch {
                let _ = pending.done.send(outcome.clone());
            }
            drop(permit);
        });
    }
}

/// Appends one batch through this replica's own node (its trail batcher);
/// Ok once committed.
async fn append(state: &AppState, events: Vec<AccessEvent>) -> Result<(), TrailError> {
    run_blocking(state, move |node| node.record_access(events))
        .await
        .unwrap_or_else(|_| {
            Err(TrailError::Internal(super::node::InternalFault::new(
                super::node::FaultKind::Unexpected,
                "the access-trail append panicked (see the replica's log)",
            )))
        })
}

/// Posts one batch to the primary the node believes in; Ok once the
/// primary answered that the events are committed.
async fn send(state: &AppState, events: &[AccessEvent]) -> Result<(), TrailError> {
    let role = state.node.role();
    let failed = |detail: String| TrailError::Unavailable(Unavailable::TrailRelay { detail });
    let Some(primary) = role.primary.filter(|p| *p != role.replica) else {
        return Err(failed(format!(
            "replica {} knows no primary to record the access with",
            role.replica
        )));
    };
    state
        .forwarder
        .get()
        .relay_trail(primary, events, Duration::from_millis(RELAY_TIMEOUT_MS))
        .await
        .map_err(failed)
}

/// What the primary answers a relayed batch.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct RelayAnswer {
    /// Events committed.
    pub recorded: u64,
}

/// `POST /internal/v1/trail` at the primary: a backup's access events,
/// appended through the trail batcher; 200 only once committed.
pub(crate) async fn accept(
    State(state): State<AppState>,
    peer: Option<Extension<PeerReplica>>,
    body: axum::body::Bytes,
) -> Response {
    let Some(Extension(PeerReplica(replica))) = peer else {
        return ApiError::forbidden(
            "only a replica of this cluster (its certificate) may relay access-trail records",
        )
        .into_response();
    };
    let events = match relayed_events(&body) {
        Ok(events) => events,
        Err(error) => return error.into_response(),
    };
    // A KEK rotation record is the relaying replica's own: it must name it.
    let own_name = state.node.replica_key_name(replica);
    if let Some(index) = events.iter().position(|e| {
        e.action == AccessAction::KekRotated && own_name.as_deref() != Some(e.principal.as_str())
    }) {
        return ApiError::bad_request(format!(
            "relayed event {index}: a kek_rotated record must name the relaying replica {replica} as principal"
        ))
        .into_response();
    }
    // A signing-key rotation is the relaying replica's own, and its
    // announcement must verify under this replica's policy (the key in
    // force and the new key), so a replica's certificate cannot put a
    // forged key history in the trail.
    for (index, event) in events.iter().enumerate() {
        if event.action == AccessAction::SigningKeyRotated
            && let Err(why) = state.node.check_signing_rotation(replica, event)
        {
            return ApiError::bad_request(format!("relayed event {index}: {why}")).into_response();
        }
    }
    let recorded = events.len() as u64;
    tracing::debug!(
        replica,
        recorded,
        "access-trail records relayed by a backup"
    );
    // Through the primary's own queue: relayed reads share trail ops with
    // the primary's own.
    match state.relay.record(&state, Route::Local, events).await {
        Ok(()) => Json(RelayAnswer { recorded }).into_response(),
        Err(error) => ApiError::unavailable(format!(
            "the relayed access-trail records were not committed ({error}); retry"
        ))
        .into_response(),
    }
}

/// The batch a backup relayed: a JSON array of access events, each an
/// access of a read, within the limits the primary's own events keep.
fn relayed_events(body: &[u8]) -> Result<Vec<AccessEvent>, ApiError> {
    let events: Vec<AccessEvent> = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("relayed trail batch: {e}")))?;
    if events.is_empty() || events.len() > RELAY_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "a relayed trail batch holds 1 to {RELAY_EVENTS_MAX} events, not {}",
            events.len()
        )));
    }
    for (index, event) in events.iter().enumerate() {
        check_relayed(event)
            .map_err(|why| ApiError::bad_request(format!("relayed event {index}: {why}")))?;
    }
    Ok(events)
}

/// Whether a backup may relay `event`: the access of a read it served,
/// numbers in the index's range, no break-glass mark (break-glass reads
/// are served by the primary).
fn check_relayed(event: &AccessEvent) -> Result<(), String> {
    let read = matches!(
        event.action,
        AccessAction::ReadStream | AccessAction::ReadLog | AccessAction::Subscribe
    );
    // A backup's own KEK rotation, recorded at its start (the only
    // non-read a backup relays; it names no stream).
    let kek_rotated = matches!(
        event.action,
        AccessAction::KekRotated | AccessAction::SigningKeyRotated
    ) && event.role == "system"
        && event.stream.is_none();
    if !(read || kek_rotated) {
        return Err(format!(
            "action {} is not a read a backup serves",
            event.action.as_str()
        ));
    }
    if event.break_glass.is_some() {
        return Err("a backup never serves a read under break-glass".to_string());
    }
    let numbers = [event.stream, event.from, event.to, event.count];
    if numbers
        .into_iter()
        .flatten()
        .any(|n| n > crate::bounds::EDGE_INTEGER_MAX)
    {
        return Err("a number above the trail's range".to_string());
    }
    // The payload must read back as the trail reads it (version, fields).
    AccessEvent::from_payload(&event.to_payload())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_event(action: AccessAction) -> AccessEvent {
        AccessEvent {
            v: vellum_compliance::trail::ACCESS_EVENT_VERSION,
            time_ns: 1,
            principal: "reader".into(),
            role: "reader".into(),
            action,
            stream: Some(5001),
            from: Some(0),
            to: Some(1),
            purpose: None,
            outcome: "success".into(),
            remote: None,
            detail: None,
            recipient: None,
            description: None,
            streams: None,
            streams_truncated: false,
            count: None,
            break_glass: None,
        }
    }

    /// Goal: the relay accepts the accesses of reads only, with numbers in
    /// range, never a break-glass record, in batches of 1 to the maximum.
    #[test]
    fn relay_accepts_read_accesses_only() {
        for action in [
            AccessAction::ReadStream,
            AccessAction::ReadLog,
            AccessAction::Subscribe,
        ] {
            let body = serde_json::to_vec(&vec![read_event(action)]).expect("json");
            assert_eq!(relayed_events(&body).expect("a read").len(), 1);
        }
        for action in [
            AccessAction::Append,
            AccessAction::Export,
            AccessAction::BreakGlass,
            AccessAction::AuthFailed,
        ] {
            let body = serde_json::to_vec(&vec![read_event(action)]).expect("json");
            assert!(relayed_events(&body).is_err(), "{action:?} must be refused");
        }
        let mut huge = read_event(AccessAction::ReadStream);
        huge.to = Some(u64::MAX);
        let body = serde_json::to_vec(&vec![huge]).expect("json");
        assert!(relayed_events(&body).is_err(), "2^64-1 must be refused");
        assert!(relayed_events(b"[]").is_err(), "an empty batch");
        assert!(relayed_events(b"{").is_err(), "bad json");
        let many = vec![read_event(AccessAction::ReadLog); RELAY_EVENTS_MAX + 1];
        let body = serde_json::to_vec(&many).expect("json");
        assert!(relayed_events(&body).is_err(), "too many");
    }

    /// Goal: a backup's own KEK rotation record is relayed (role `system`,
    /// no stream); the same action with a client's role or naming a stream
    /// is refused, so a replica certificate cannot dress up other records.
    #[test]
    fn relay_accepts_a_backups_kek_rotation_record_only_as_system() {
        let rotation = AccessEvent {
            principal: "vellum-0123-r1".into(),
            role: "system".into(),
            stream: None,
            from: None,
            to: None,
            ..read_event(AccessAction::KekRotated)
        };
        let body = serde_json::to_vec(&vec![rotation.clone()]).expect("json");
        assert_eq!(relayed_events(&body).expect("a rotation").len(), 1);
        let as_writer = AccessEvent {
            role: "writer".into(),
            ..rotation.clone()
        };
        let with_stream = AccessEvent {
            stream: Some(5001),
            ..rotation
        };
        for event in [as_writer, with_stream] {
            let body = serde_json::to_vec(&vec![event.clone()]).expect("json");
            assert!(relayed_events(&body).is_err(), "{event:?} must be refused");
        }
    }
}
