//! Batching access-trail events into ops (P7). Every API access records one
//! trail event and waits until it is committed before its answer goes out;
//! under load, many callers share one op: the first caller to find no batch
//! in flight becomes the leader, takes everything queued (up to
//! [`TRAIL_BATCH_EVENTS_MAX`]) and appends it as one op; callers that queue
//! meanwhile form the next batch (group commit, like storage's).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum_compliance::trail::AccessEvent;

use crate::log::LocalLog;
use crate::server::node::{TrailError, Unavailable};

/// Trail events in one op, at most.
pub const TRAIL_BATCH_EVENTS_MAX: usize = 512;
/// Trail events waiting for the next batch, at most; beyond it an access
/// is refused (503) rather than queued without bound.
pub const TRAIL_QUEUE_MAX: usize = 16 * TRAIL_BATCH_EVENTS_MAX;
/// How long a caller waits for its trail event to commit.
pub const TRAIL_WAIT_MS_MAX: u64 = 15_000;

/// One batch's outcome, shared by its callers.
#[derive(Debug, Default)]
struct Outcome {
    result: Mutex<Option<Result<(), TrailError>>>,
}

#[derive(Debug, Default)]
struct Queue {
    events: Vec<AccessEvent>,
    /// The outcome the queued events will get.
    outcome: Arc<Outcome>,
    /// A leader is appending a batch right now.
    leader: bool,
}

/// The batcher of one replica.
#[derive(Debug, Default)]
pub struct TrailBatcher {
    queue: Mutex<Queue>,
    done: Condvar,
}

impl TrailBatcher {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Records `events` and waits until they are committed.
    pub fn record(&self, log: &LocalLog, events: Vec<AccessEvent>) -> Result<(), TrailError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut queue = self.lock();
        if queue.events.len() + events.len() > TRAIL_QUEUE_MAX {
            return Err(TrailError::Unavailable(Unavailable::TrailQueueFull {
                queued: TRAIL_QUEUE_MAX,
            }));
        }
        queue.events.extend(events);
        let mine = Arc::clone(&queue.outcome);
        let deadline = Instant::now() + Duration::from_millis(TRAIL_WAIT_MS_MAX);
        loop {
            if let Some(result) = mine
                .result
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
            {
                return result;
            }
            if !queue.leader {
                queue = self.lead(log, queue);
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(TrailError::Unavailable(Unavailable::TrailTimeout {
                    waited_ms: TRAIL_WAIT_MS_MAX,
                }));
            }
            queue = self
                .done
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }

    /// Appends the queued events (in ops of at most the batch bound) and
    /// publishes the outcome to their callers.
    fn lead<'a>(
        &'a self,
        log: &LocalLog,
        mut queue: MutexGuard<'a, Queue>,
    ) -> MutexGuard<'a, Queue> {
        queue.leader = true;
        let events = std::mem::take(&mut queue.events);
        let outcome = std::mem::take(&mut queue.outcome);
        drop(queue);
        let mut result = Ok(());
        for chunk in events.chunks(TRAIL_BATCH_EVENTS_MAX) {
            let payloads: Vec<Bytes> = chunk.iter().map(|e| Bytes::from(e.to_payload())).collect();
            if let Err(error) = log.append_trail(&payloads) {
                result = Err(TrailError::from(error));
                break;
            }
        }
        if let Err(error) = &result {
            tracing::error!(%error, events = events.len(), "access-trail events not recorded");
        }
        *outcome
            .result
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(result);
        let mut queue = self.lock();
        queue.leader = false;
        self.done.notify_all();
        queue
    }
}
