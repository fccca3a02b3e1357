//! Key custody on a replica (P6): shreds, legal holds and retention floors,
//! as events of the system stream
//! [`KEY_CUSTODY_STREAM`](vellum_compliance::custody::KEY_CUSTODY_STREAM).
//!
//! Deciding (the primary only, [`Custody::request`]): one request at a time,
//! the state caught up with every committed custody event, the rules of
//! `CustodyState::check` applied, then the event is appended through
//! consensus with the stream's length as expected offset, so no other
//! custody event can slip in between the decision and its commit. A shred
//! marks its stream pending first: appends to it are refused from then on.
//!
//! Applying (every replica, [`Custody::catch_up`]): the committed custody
//! events are read back in order and folded into the state; a shred event
//! destroys this replica's copies of the stream's data keys
//! (`KeyStore::shred_stream`: tombstone, then each key file overwritten,
//! fsynced and deleted). The log's commit path only wakes the applier
//! thread ([`Custody::spawn_applier`]); the key store's fsyncs never run on
//! the replica loop. On open the state is rebuilt from the log the same way
//! (a replica that was down during a shred destroys the key then, or when
//! it catches up and commits the shred op).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use vellum_compliance::custody::{
    CUSTODY_EVENT_VERSION, CustodyAction, CustodyEvent, CustodyRefusal, CustodyRequest,
    CustodyState, KEY_CUSTODY_STREAM, policy_floor_ms,
};

use crate::log::{LocalLog, LogError, READ_EVENTS_MAX};
use crate::server::node::{CustodyCall, CustodyDone, CustodyError, Shredded};

/// How long the applier sleeps without a commit before it looks anyway.
pub const CUSTODY_POLL_MS: u64 = 250;
/// How often one request retries when a custody event it had not seen
/// committed between its decision and its append (a new primary's).
pub const CUSTODY_DECIDE_ATTEMPTS_MAX: usize = 3;

/// Counters of applied custody events (by action) and refusals.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CustodyCounts {
    /// Shred events applied.
    pub shreds: u64,
    /// Hold events applied.
    pub holds: u64,
    /// Release events applied.
    pub releases: u64,
    /// Retain events applied.
    pub retentions: u64,
    /// Requests refused by a rule on this replica.
    pub refused: u64,
}

#[derive(Debug, Default)]
struct Applied {
    state: CustodyState,
    counts: CustodyCounts,
}

/// The key custody of one replica.
#[derive(Debug)]
pub struct Custody {
    log: Arc<LocalLog>,
    /// The state folded from the committed custody events; held while
    /// catching up, so events are applied once and in order.
    applied: Mutex<Applied>,
    /// One custody request at a time (the primary's decisions).
    decide: Mutex<()>,
    /// Streams whose shred is being committed: appends are refused.
    pending_shreds: Mutex<BTreeSet<u64>>,
    refused: AtomicU64,
    /// The cluster's retention policy: no shred within this many days of
    /// a stream's newest event (None: no policy floor).
    retention_days: Option<u64>,
}

impl Custody {
    /// The custody of `log`; empty until [`Custody::catch_up`].
    pub fn new(log: Arc<LocalLog>) -> Custody {
        Custody {
            log,
            applied: Mutex::new(Applied::default()),
            decide: Mutex::new(()),
            pending_shreds: Mutex::new(BTreeSet::new()),
            refused: AtomicU64::new(0),
            retention_days: None,
        }
    }

    /// With the cluster's retention policy: a shred within `days` days of
    /// the stream's newest event is refused (409 `retention_floor`).
    pub fn with_retention_days(mut self, days: Option<u64>) -> Custody {
        self.retention_days = days;
        self
    }

    /// The retention policy's verdict on shredding `stream` at `now_ms`.
    fn check_policy(&self, call: &CustodyCall, now_ms: u64) -> Result<(), CustodyRefusal> {
        let (Some(days), CustodyAction::Shred) = (self.retention_days, call.action) else {
            return Ok(());
        };
        let Some(last_ns) = self.log.stream_last_event_ns(call.stream) else {
            return Ok(());
        };
        let last_event_ms = last_ns / 1_000_000;
        let until_ms = policy_floor_ms(last_event_ms, days);
        if now_ms < until_ms {
            return Err(CustodyRefusal::RetentionPolicy {
                stream: call.stream,
                days,
                last_event_ms,
                until_ms,
                now_ms,
            });
        }
        Ok(())
    }

    fn applied(&self) -> MutexGuard<'_, Applied> {
        self.applied
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn pending(&self) -> MutexGuard<'_, BTreeSet<u64>> {
        self.pending_shreds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies every committed custody event not applied yet; a shred
    /// destroys this replica's keys of its stream before this returns.
    pub fn catch_up(&self) -> Result<(), LogError> {
        let mut applied = self.applied();
        loop {
            let from = applied.state.events();
            let page = match self.log.read(KEY_CUSTODY_STREAM, from, READ_EVENTS_MAX) {
                Ok(page) => page,
                Err(LogError::UnknownStream(_)) => return Ok(()),
                Err(other) => return Err(other),
            };
            if page.is_empty() {
                return Ok(());
            }
            for event in page {
                assert_eq!(
                    event.offset,
                    applied.state.events(),
                    "custody events are applied densely, in stream order"
                );
                self.apply_one(&mut applied, &event.payload, event.position)?;
            }
        }
    }

    fn apply_one(
        &self,
        applied: &mut Applied,
        payload: &[u8],
        position: u64,
    ) -> Result<(), LogError> {
        let event = match CustodyEvent::from_payload(payload) {
            Ok(event) => event,
            Err(error) => {
                // Only replicas write this stream; an event that does not
                // parse is a bug, but it must not stop the replica.
                tracing::error!(%error, position, "a key-custody event does not parse; skipped");
                applied.state.skip_unreadable();
                return Ok(());
            }
        };
        let counts = &mut applied.counts;
        match event.action {
            CustodyAction::Shred => counts.shreds += 1,
            CustodyAction::Hold => counts.holds += 1,
            CustodyAction::Release => counts.releases += 1,
            CustodyAction::Retain => counts.retentions += 1,
        }
        if applied.state.apply(&event, position) {
            let keys = self.log.shred_stream_keys(event.stream)?;
            tracing::warn!(
                stream = event.stream,
                position,
                keys = keys.len(),
                "applied a committed shred: this replica's data keys of the stream are destroyed"
            );
        }
        Ok(())
    }

    /// The stream's shred, if it was shredded or a shred of it is being
    /// committed here: appends and reads of it are refused.
    pub fn shredded(&self, stream: u64) -> Option<Shredded> {
        if let Some(position) = self.applied().state.shredded_at(stream) {
            return Some(Shredded {
                stream,
                position: Some(position),
            });
        }
        self.pending().contains(&stream).then_some(Shredded {
            stream,
            position: None,
        })
    }

    /// Counters for `/metrics`.
    pub fn counts(&self) -> CustodyCounts {
        CustodyCounts {
            refused: self.refused.load(Ordering::Relaxed),
            ..self.applied().counts
        }
    }

    /// Decides `call` and, if the rules allow it, commits its event; a
    /// committed shred has destroyed this replica's keys when this returns.
    /// The caller checked that this replica is the primary.
    pub fn request(&self, call: &CustodyCall) -> Result<CustodyDone, CustodyError> {
        let _one = self
            .decide
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for _ in 0..CUSTODY_DECIDE_ATTEMPTS_MAX {
            self.catch_up()?;
            let expected = {
                let applied = self.applied();
                let request = CustodyRequest {
                    action: call.action,
                    stream: call.stream,
                    retain_until_ms: call.retain_until_ms,
                };
                let now_ms = crate::log::now_ns() / 1_000_000;
                let checked = applied
                    .state
                    .check(&request, now_ms)
                    .and_then(|()| self.check_policy(call, now_ms));
                if let Err(refusal) = checked {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(CustodyError::Refused(refusal));
                }
                applied.state.events()
            };
            match self.append(call, expected) {
                Err(LogError::WrongExpectedOffset { .. }) => continue,
                Err(error) => return Err(error.into()),
                Ok(appended) => return self.committed(call, &appended),
            }
        }
        Err(CustodyError::Indeterminate {
            reason: format!(
                "the key-custody stream moved under {CUSTODY_DECIDE_ATTEMPTS_MAX} decisions in a row; nothing was written, try again"
            ),
        })
    }

    fn append(&self, call: &CustodyCall, expected: u64) -> Result<crate::log::Appended, LogError> {
        let shred = call.action == CustodyAction::Shred;
        if shred {
            self.pending().insert(call.stream);
        }
        let event = CustodyEvent {
            v: CUSTODY_EVENT_VERSION,
            time_ns: crate::log::now_ns(),
            action: call.action,
            stream: call.stream,
            principal: call.principal.clone(),
            role: call.role.clone(),
            reason: call.reason.clone(),
            retain_until_ms: call.retain_until_ms,
        };
        let result = self
            .log
            .append_custody(&[Bytes::from(event.to_payload())], expected);
        // Known not written: appends to the stream are allowed again. An
        // unknown outcome keeps them refused (the shred may have committed)
        // until the state says, or this replica restarts.
        let known_unwritten = matches!(
            &result,
            Err(error) if !matches!(error, LogError::Indeterminate(_))
        );
        if shred && known_unwritten {
            self.pending().remove(&call.stream);
        }
        result
    }

    fn committed(
        &self,
        call: &CustodyCall,
        appended: &crate::log::Appended,
    ) -> Result<CustodyDone, CustodyError> {
        self.catch_up()?;
        let keys_destroyed = match call.action {
            // Idempotent: the tombstone lists the keys it destroyed.
            CustodyAction::Shred => self.log.shred_stream_keys(call.stream)?.len() as u64,
            _ => 0,
        };
        self.pending().remove(&call.stream);
        Ok(CustodyDone {
            position: appended.first_position,
            op: appended.op,
            keys_destroyed,
        })
    }

    /// Starts the applier thread: woken by every commit of a key-custody op
    /// (the log's commit waker only sends it a note), and every
    /// [`CUSTODY_POLL_MS`] regardless; stops when `stop` is set.
    pub fn spawn_applier(
        self: &Arc<Custody>,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        self.log.set_commit_waker(Arc::new(move || {
            let _ = wake.try_send(());
        }));
        let custody = Arc::clone(self);
        std::thread::Builder::new()
            .name("vellum-custody".to_string())
            .spawn(move || {
                let poll = Duration::from_millis(CUSTODY_POLL_MS);
                while !stop.load(Ordering::SeqCst) {
                    match woken.recv_timeout(poll) {
                        Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if let Err(error) = custody.catch_up() {
                        tracing::error!(%error, "applying key-custody events failed; retrying");
                    }
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::LogOptions;

    const STREAM: u64 = 20;

    /// A new data directory whose log holds one event on `STREAM` (the
    /// temp dir, the data dir, the open log).
    fn charted_log() -> (tempfile::TempDir, std::path::PathBuf, Arc<LocalLog>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        crate::init::init_data_dir(&data, None).expect("init");
        let log = open(&data);
        log.append(STREAM, &[Bytes::from_static(b"chart")], None, None)
            .expect("append");
        (dir, data, log)
    }

    /// Closes the log (a restart) and opens it again with custody caught
    /// up from the log.
    fn reopen(
        log: Arc<LocalLog>,
        custody: Custody,
        data: &std::path::Path,
    ) -> (Arc<LocalLog>, Custody) {
        drop(custody);
        Arc::try_unwrap(log)
            .expect("one owner")
            .close()
            .expect("close");
        let log = open(data);
        let custody = Custody::new(Arc::clone(&log));
        custody.catch_up().expect("catch up");
        (log, custody)
    }

    fn open(data: &std::path::Path) -> Arc<LocalLog> {
        Arc::new(LocalLog::open(data, LogOptions::default()).expect("open").0)
    }

    fn call(action: CustodyAction) -> CustodyCall {
        CustodyCall {
            action,
            stream: STREAM,
            reason: "why".into(),
            retain_until_ms: None,
            principal: "po".into(),
            role: "privacy-officer".into(),
        }
    }

    fn key_files(data: &std::path::Path) -> usize {
        std::fs::read_dir(data.join("keys"))
            .expect("keys dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("dek-"))
            })
            .count()
    }

    // Goal: custody state is rebuilt from the log on open: a hold set
    // before a restart still refuses a shred after it; a shred after the
    // release destroys the key, and the reopened log still refuses reads.
    #[test]
    fn custody_state_is_rebuilt_from_the_log_on_open() {
        let (_dir, data, log) = charted_log();
        let custody = Custody::new(Arc::clone(&log));
        custody.request(&call(CustodyAction::Hold)).expect("hold");
        let (log, custody) = reopen(log, custody, &data);
        let refused = custody.request(&call(CustodyAction::Shred));
        assert!(
            matches!(
                refused,
                Err(CustodyError::Refused(CustodyRefusal::LegalHold { .. }))
            ),
            "{refused:?}"
        );
        custody
            .request(&call(CustodyAction::Release))
            .expect("release");
        let before = key_files(&data);
        let done = custody.request(&call(CustodyAction::Shred)).expect("shred");
        assert_eq!(done.keys_destroyed, 1);
        assert_eq!(
            key_files(&data),
            before - 1,
            "the stream's key file is gone"
        );
        assert_eq!(
            custody.shredded(STREAM).and_then(|s| s.position),
            Some(done.position)
        );
        assert_eq!(custody.counts().holds, 1, "counted since this open");
        let (log, custody) = reopen(log, custody, &data);
        assert_eq!(
            custody.shredded(STREAM).and_then(|s| s.position),
            Some(done.position)
        );
        assert!(matches!(
            log.read(STREAM, 0, 10),
            Err(LogError::Crypto(
                crate::crypto::CryptoError::Shredded { .. }
            ))
        ));
    }

    // Goal: the cluster's retention policy refuses a shred within its days
    // of the stream's newest event, naming the rule, and nothing is
    // written; without the policy the same shred commits.
    #[test]
    fn retention_policy_refuses_a_shred_within_its_days() {
        let (_dir, _data, log) = charted_log();
        let custody = Custody::new(Arc::clone(&log)).with_retention_days(Some(6 * 365));
        let refused = custody.request(&call(CustodyAction::Shred));
        let Err(CustodyError::Refused(refusal)) = refused else {
            panic!("refused by the policy: {refused:?}");
        };
        assert!(
            matches!(refusal, CustodyRefusal::RetentionPolicy { days: 2190, .. }),
            "{refusal:?}"
        );
        assert!(
            refusal.to_string().starts_with("retention floor"),
            "{refusal}"
        );
        assert_eq!(custody.counts().refused, 1);
        assert!(custody.shredded(STREAM).is_none(), "nothing pending");
        assert!(log.read(STREAM, 0, 10).is_ok(), "the key is intact");
        // A stream without events has no policy floor; holds pass the policy.
        custody
            .request(&call(CustodyAction::Hold))
            .expect("a hold is not a shred");
        let custody = Custody::new(Arc::clone(&log));
        custody
            .request(&call(CustodyAction::Release))
            .expect("release");
        custody
            .request(&call(CustodyAction::Shred))
            .expect("no policy");
    }

    // Goal: a global read skips a shredded stream's events without counting
    // them toward its page, so a page starting on them still reaches the
    // events after them (a subscription never stalls behind a shred).
    #[test]
    fn global_reads_go_on_past_a_shredded_stream() {
        let (_dir, _data, log) = charted_log();
        log.append(STREAM, &[Bytes::from_static(b"chart")], None, None)
            .expect("append");
        log.append(STREAM + 1, &[Bytes::from_static(b"kept")], None, None)
            .expect("append");
        let custody = Custody::new(Arc::clone(&log));
        let done = custody.request(&call(CustodyAction::Shred)).expect("shred");
        let page = log.read_log(0, 1).expect("read");
        let seen: Vec<(u64, u64)> = page.iter().map(|(s, e)| (*s, e.position)).collect();
        assert_eq!(seen, vec![(STREAM + 1, 2)]);
        let page = log.read_log(0, 10).expect("read");
        let seen: Vec<(u64, u64)> = page.iter().map(|(s, e)| (*s, e.position)).collect();
        assert_eq!(
            seen,
            vec![(STREAM + 1, 2), (KEY_CUSTODY_STREAM, done.position)]
        );
        assert!(
            log.read_log(done.position + 1, 10)
                .expect("read")
                .is_empty()
        );
    }

    // Goal: a shred event committed while the keys were not destroyed (a
    // crash between the commit and the custody thread) destroys them when
    // the state is rebuilt.
    #[test]
    fn a_committed_shred_not_applied_yet_destroys_the_key_on_catch_up() {
        let (_dir, data, log) = charted_log();
        let event = CustodyEvent {
            v: CUSTODY_EVENT_VERSION,
            time_ns: 1,
            action: CustodyAction::Shred,
            stream: STREAM,
            principal: "po".into(),
            role: "privacy-officer".into(),
            reason: "why".into(),
            retain_until_ms: None,
        };
        log.append_custody(&[Bytes::from(event.to_payload())], 0)
            .expect("custody event committed");
        assert_eq!(log.read(STREAM, 0, 10).expect("still readable").len(), 1);
        let before = key_files(&data);
        let custody = Custody::new(Arc::clone(&log));
        custody.catch_up().expect("catch up");
        assert!(custody.shredded(STREAM).is_some());
        assert!(matches!(
            log.read(STREAM, 0, 10),
            Err(LogError::Crypto(
                crate::crypto::CryptoError::Shredded { .. }
            ))
        ));
        assert_eq!(
            key_files(&data),
            before - 1,
            "the stream's key file is gone"
        );
        assert!(
            data.join("keys")
                .join(format!("shred-{STREAM:020}.tomb"))
                .exists()
        );
    }
}
