//! Batching access-trail events into ops (P7). Every API access records one
//! trail event and waits until it is committed before its answer goes out;
//! under load, many callers share one op: a caller that finds fewer than
//! [`TRAIL_BATCHES_IN_FLIGHT_MAX`] batches in flight becomes a leader, takes
//! everything queued (up to [`TRAIL_BATCH_EVENTS_MAX`] per op) and appends
//! it; callers that queue meanwhile form the next batch (group commit, like
//! storage's). More than one batch in flight keeps the pipeline busy: with
//! one, closed-loop readers alternate a batch of the first caller back
//! with a batch of everyone else, two round trips per round of reads.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum_compliance::trail::AccessEvent;

use crate::log::LocalLog;
use crate::server::node::{TrailError, Unavailable};

/// Trail batches appended at once, at most (each is one op in the core's
/// pipeline; they commit in order and share group commits).
pub const TRAIL_BATCHES_IN_FLIGHT_MAX: usize = 4;
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
    /// Leaders appending a batch right now.
    leaders: usize,
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
            if queue.leaders < TRAIL_BATCHES_IN_FLIGHT_MAX && !queue.events.is_empty() {
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
        queue.leaders += 1;
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
        queue.leaders -= 1;
        self.done.notify_all();
        queue
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use vellum_compliance::trail::{ACCESS_TRAIL_STREAM, AccessEvent};

    use super::TrailBatcher;
    use crate::log::{LocalLog, LogOptions};

    fn event(principal: &str) -> AccessEvent {
        let json = format!(
            r#"{{"v":1,"time_ns":1,"principal":"{principal}","role":"reader","action":"read_stream","stream":4096,"outcome":"success"}}"#
        );
        AccessEvent::from_payload(json.as_bytes()).expect("a valid access event")
    }

    fn principals(log: &LocalLog) -> Vec<String> {
        log.read(ACCESS_TRAIL_STREAM, 0, 100_000)
            .expect("read the trail")
            .iter()
            .map(|e| {
                AccessEvent::from_payload(&e.payload)
                    .expect("event")
                    .principal
            })
            .collect()
    }

    // Goal: with several batches in flight, every caller returns only once
    // its own event is committed in the trail stream, and every event is
    // recorded exactly once (none lost, none twice).
    #[test]
    fn concurrent_accesses_are_recorded_once_before_they_return() {
        const THREADS: usize = 16;
        const PER_THREAD: usize = 12;
        let dir = tempfile::tempdir().expect("temp dir");
        crate::init::init_data_dir(dir.path(), None).expect("init");
        let (log, _) = LocalLog::open(dir.path(), LogOptions::default()).expect("open");
        let log = Arc::new(log);
        let batcher = Arc::new(TrailBatcher::default());
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                let (log, batcher) = (Arc::clone(&log), Arc::clone(&batcher));
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        let principal = format!("reader-{t}-{i}");
                        batcher
                            .record(&log, vec![event(&principal)])
                            .expect("recorded");
                        assert!(
                            principals(&log).contains(&principal),
                            "{principal} is committed before its caller returns"
                        );
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker");
        }
        let recorded = principals(&log);
        let distinct: BTreeSet<&String> = recorded.iter().collect();
        assert_eq!(
            recorded.len(),
            THREADS * PER_THREAD,
            "none lost, none twice"
        );
        assert_eq!(distinct.len(), THREADS * PER_THREAD);
        Arc::into_inner(log)
            .expect("workers done")
            .close()
            .expect("close");
    }
}
