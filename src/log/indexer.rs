//! Feeds the audit index from the write path without putting SQL on it.
//!
//! The index is a projection of the log (DESIGN §5): appends never wait for
//! it. A background thread with its own small tokio runtime receives row
//! batches, coalesces many certificates' rows into one transaction (up to
//! [`INDEX_COALESCE_ROWS_MAX`] rows, gathered for up to
//! [`INDEX_LINGER_MS_MAX`]), and records how far it got.
//!
//! Handing rows over never blocks the commit path: the queue is bounded by
//! rows ([`INDEX_QUEUE_ROWS_MAX`]), and the log asks [`Indexer::has_room`]
//! before it builds a batch. When the queue is full the rows stay in the
//! log and the index is behind: a later certificate sends them (at most
//! `state::INDEX_FEED_EVENTS_MAX` events at a time), and `close` and the
//! next open send the rest; `vellum verify` reports any difference.
//!
//! Two rules keep the index honest after any crash:
//! - It never gets ahead of what is durable in the log: a batch that carries
//!   a certificate's `commits` row waits until the certificate record (a
//!   lazy record, synced up to `LAZY_DELAY_MS_MAX` later) is fdatasync'ed,
//!   so a `kill -9` can never leave a row for a certificate the log lost.
//! - It never stops: a row the index cannot take (it conflicts with a
//!   stored row, say) is logged with its key and counted in
//!   [`IndexStatus::skipped_rows`], and later rows keep being indexed;
//!   `vellum verify` names the missing row.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::LogError;
use crate::index::{Backing, Index, IndexBatch, IndexTarget};
use crate::storage::{DurableProbe, Ticket};

/// Rows queued for the index thread, at most (plus the one batch that
/// found room): beyond it the log keeps the rows and the index is behind.
pub const INDEX_QUEUE_ROWS_MAX: usize = 50_000;
/// Rows coalesced into one index transaction, at most.
pub const INDEX_COALESCE_ROWS_MAX: usize = 20_000;
/// Longest the index thread waits for more batches to join a transaction
/// once it holds one (the index runs behind the log anyway).
pub const INDEX_LINGER_MS_MAX: u64 = 100;
/// How often a stalled index thread (a test hook) looks again.
const STALL_POLL_MS: u64 = 5;
/// Longest the index thread waits for a gating record to become durable
/// before giving up on the batch (it is caught up on the next open). Lazy
/// records are synced within `storage::LAZY_DELAY_MS_MAX`, far below this.
pub const INDEX_DURABLE_WAIT_MS_MAX: u64 = 30_000;

/// How far the index got.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexStatus {
    /// The index's highest event position.
    pub last_position: Option<u64>,
    /// The index's highest certified commit.
    pub last_commit: Option<u64>,
    /// The latest error the index thread hit (it carries on after one).
    pub error: Option<String>,
    /// Rows the index could not take, each logged with its key; they stay
    /// missing until `vellum index rebuild`, and `vellum verify` names them.
    pub skipped_rows: u64,
    /// Batches dropped because their certificate record never became
    /// durable (storage failed); the next open catches them up.
    pub dropped_batches: u64,
    /// Certificates whose rows the log kept back because the queue was
    /// full (the index was behind); later certificates send them.
    pub deferred_feeds: u64,
}

/// A record that must be durable before a batch may be indexed.
#[derive(Debug, Clone)]
pub struct DurableGate {
    pub probe: DurableProbe,
    pub ticket: Ticket,
}

enum Message {
    Batch(IndexBatch, Option<DurableGate>),
    Flush(SyncSender<()>),
    Reconcile(Backing, SyncSender<()>),
}

/// Rows queued and not yet taken by a transaction, with a wake-up for
/// senders that may wait (open and close, never the commit path).
#[derive(Debug, Default)]
struct Queued {
    rows: Mutex<usize>,
    drained: Condvar,
}

impl Queued {
    fn rows(&self) -> std::sync::MutexGuard<'_, usize> {
        self.rows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn add(&self, rows: usize) {
        *self.rows() += rows;
    }

    fn take(&self, rows: usize) {
        let mut queued = self.rows();
        *queued = queued.saturating_sub(rows);
        self.drained.notify_all();
    }
}

/// Handle to the index thread.
#[derive(Debug)]
pub struct Indexer {
    sender: Option<Sender<Message>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<IndexStatus>>,
    queued: Arc<Queued>,
    stalled: Arc<AtomicBool>,
}

impl Indexer {
    /// Opens the index (creating and migrating it if needed) on a new thread
    /// and returns once it is open, with its status read.
    pub fn start(target: IndexTarget, cluster: u128) -> Result<Indexer, LogError> {
        let (sender, receiver) = mpsc::channel();
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let status = Arc::new(Mutex::new(IndexStatus::default()));
        let queued = Arc::new(Queued::default());
        let stalled = Arc::new(AtomicBool::new(false));
        let shared = Shared {
            status: Arc::clone(&status),
            queued: Arc::clone(&queued),
            stalled: Arc::clone(&stalled),
        };
        let thread = std::thread::Builder::new()
            .name("vellum-index".to_string())
            .spawn(move || run(target, cluster, receiver, opened_tx, shared))
            .map_err(|e| LogError::DataDir(format!("cannot start the index thread: {e}")))?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Indexer {
                sender: Some(sender),
                thread: Some(thread),
                status,
                queued,
                stalled,
            }),
            Ok(Err(message)) => {
                let _ = thread.join();
                Err(LogError::DataDir(format!("audit index: {message}")))
            }
            Err(_) => Err(LogError::DataDir(
                "audit index thread stopped while opening".to_string(),
            )),
        }
    }

    /// True when the queue can take another batch. The caller that found
    /// no room keeps the rows (they are in the log) and sends them later.
    pub fn has_room(&self) -> bool {
        *self.queued.rows() < INDEX_QUEUE_ROWS_MAX
    }

    /// Counts a certificate whose rows were kept back for want of room.
    pub fn note_deferred(&self) {
        lock(&self.status).deferred_feeds += 1;
    }

    /// Queues a batch after waiting for room in the queue: for open and
    /// close only, never the commit path.
    pub fn send_waiting(&self, batch: IndexBatch) {
        let mut queued = self.queued.rows();
        while *queued >= INDEX_QUEUE_ROWS_MAX && self.thread_alive() {
            queued = self
                .queued
                .drained
                .wait_timeout(queued, Duration::from_millis(STALL_POLL_MS))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        drop(queued);
        self.send_gated(batch, None);
    }

    fn thread_alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Queues a batch that is applied only once `gate`'s record is durable.
    /// Never blocks: ask [`Indexer::has_room`] first (the queue holds at
    /// most one batch beyond [`INDEX_QUEUE_ROWS_MAX`] rows).
    pub fn send_gated(&self, batch: IndexBatch, gate: Option<DurableGate>) {
        if let Some(sender) = &self.sender {
            let count = rows(&batch);
            self.queued.add(count);
            // A closed channel means the thread is gone (it stops only when
            // the handle is dropped).
            if sender.send(Message::Batch(batch, gate)).is_err() {
                self.queued.take(count);
            }
        }
    }

    /// Test hook: while stalled, the index thread takes nothing off its
    /// queue (an index that cannot keep up).
    pub fn set_stalled(&self, stalled: bool) {
        self.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Waits until every batch sent so far was applied (or the thread failed).
    pub fn flush(&self) {
        let Some(sender) = &self.sender else { return };
        let (tx, rx) = mpsc::sync_channel(1);
        if sender.send(Message::Flush(tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// Drops the index rows `backing` (the durable log) does not back and
    /// re-reads how far the index got; waits until done. A failure is
    /// logged and kept in the status (verify then names the rows).
    pub fn reconcile(&self, backing: Backing) {
        let Some(sender) = &self.sender else { return };
        let (tx, rx) = mpsc::sync_channel(1);
        if sender.send(Message::Reconcile(backing, tx)).is_ok() {
            let _ = rx.recv();
        }
    }

    /// The index's state as last seen.
    pub fn status(&self) -> IndexStatus {
        self.status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Applies everything queued, then stops the thread.
    pub fn shutdown(mut self) {
        self.set_stalled(false);
        self.flush();
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.set_stalled(false);
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the index thread shares with its handle.
struct Shared {
    status: Arc<Mutex<IndexStatus>>,
    queued: Arc<Queued>,
    stalled: Arc<AtomicBool>,
}

fn run(
    target: IndexTarget,
    cluster: u128,
    receiver: Receiver<Message>,
    opened: SyncSender<Result<(), String>>,
    shared: Shared,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = opened.send(Err(format!("cannot start a runtime: {e}")));
            return;
        }
    };
    runtime.block_on(async move {
        let index = match open_and_read(&target, cluster, &shared.status).await {
            Ok(index) => index,
            Err(message) => {
                let _ = opened.send(Err(message));
                return;
            }
        };
        let _ = opened.send(Ok(()));
        serve(&index, &receiver, &shared).await;
        index.close().await;
    });
}

async fn open_and_read(
    target: &IndexTarget,
    cluster: u128,
    status: &Mutex<IndexStatus>,
) -> Result<Index, String> {
    let index = Index::open(target, cluster)
        .await
        .map_err(|e| error_chain(&e))?;
    let last_position = index.last_position().await.map_err(|e| error_chain(&e))?;
    let last_commit = index
        .last_commit()
        .await
        .map_err(|e| error_chain(&e))?
        .map(|c| c.op);
    let mut status = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    status.last_position = last_position;
    status.last_commit = last_commit;
    Ok(index)
}

async fn serve(index: &Index, receiver: &Receiver<Message>, shared: &Shared) {
    let status = shared.status.as_ref();
    loop {
        while shared.stalled.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(STALL_POLL_MS));
        }
        let first = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = IndexBatch::default();
        let mut gates = Vec::new();
        let mut flushes = Vec::new();
        let linger_until = Instant::now() + Duration::from_millis(INDEX_LINGER_MS_MAX);
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Batch(more, gate) => {
                    merge(&mut batch, more);
                    gates.extend(gate);
                }
                // A flush waits for what was sent before it: stop gathering.
                Message::Flush(done) => flushes.push(done),
                Message::Reconcile(backing, done) => {
                    // Sent on open before any batch: nothing is merged yet.
                    reconcile(index, &backing, status).await;
                    let _ = done.send(());
                }
            }
            if rows(&batch) < INDEX_COALESCE_ROWS_MAX && flushes.is_empty() {
                next = gather_next(receiver, linger_until, rows(&batch) > 0);
            }
        }
        let taken = rows(&batch);
        if wait_durable(&gates, status) {
            apply(index, &batch, status).await;
        }
        shared.queued.take(taken);
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// The next queued message for the transaction being gathered: at once if
/// one is queued, else (when rows are held) waiting until `linger_until`.
fn gather_next(
    receiver: &Receiver<Message>,
    linger_until: Instant,
    holding_rows: bool,
) -> Option<Message> {
    if let Ok(message) = receiver.try_recv() {
        return Some(message);
    }
    let left = linger_until.saturating_duration_since(Instant::now());
    if !holding_rows || left.is_zero() {
        return None;
    }
    receiver.recv_timeout(left).ok()
}

async fn reconcile(index: &Index, backing: &Backing, status: &Mutex<IndexStatus>) {
    let result = async {
        let dropped = index.reconcile(backing).await?;
        let last_position = index.last_position().await?;
        let last_commit = index.last_commit().await?.map(|c| c.op);
        Ok::<_, crate::index::IndexError>((dropped, last_position, last_commit))
    }
    .await;
    let mut status = lock(status);
    match result {
        Ok((dropped, last_position, last_commit)) => {
            if dropped > 0 {
                tracing::warn!(
                    rows = dropped,
                    "dropped audit index rows the durable log does not back (a crash took their records); catching up from the log"
                );
            }
            status.last_position = last_position;
            status.last_commit = last_commit;
        }
        Err(e) => {
            let error = error_chain(&e);
            tracing::error!(%error, "cannot reconcile the audit index with the log");
            status.error = Some(error);
        }
    }
}

/// Waits until every gating record is durable. False (the batch is dropped,
/// counted, and caught up from the log on the next open) when storage
/// failed or the wait ran past [`INDEX_DURABLE_WAIT_MS_MAX`].
fn wait_durable(gates: &[DurableGate], status: &Mutex<IndexStatus>) -> bool {
    let limit = Duration::from_millis(INDEX_DURABLE_WAIT_MS_MAX);
    for gate in gates {
        let outcome = gate.probe.wait(gate.ticket, limit);
        let reason = match outcome {
            Ok(true) => continue,
            Ok(false) => format!("a certificate record was not durable after {limit:?}"),
            Err(e) => format!("a certificate record never became durable: {e}"),
        };
        tracing::error!(%reason, "audit index batch held back; it is caught up from the log on the next open");
        let mut status = lock(status);
        status.dropped_batches += 1;
        status.error = Some(reason);
        return false;
    }
    true
}

fn lock(status: &Mutex<IndexStatus>) -> std::sync::MutexGuard<'_, IndexStatus> {
    status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Applies `batch` in one transaction; if the index refuses it, applies it
/// row by row, so that one row it cannot take is reported and skipped while
/// every other row is indexed.
async fn apply(index: &Index, batch: &IndexBatch, status: &Mutex<IndexStatus>) {
    if rows(batch) == 0 {
        return;
    }
    match index.apply(batch).await {
        Ok(()) => advance(&mut lock(status), batch),
        Err(e) => {
            tracing::warn!(error = %error_chain(&e), "audit index batch refused; applying it row by row");
            for (key, row) in single_rows(batch) {
                match index.apply(&row).await {
                    Ok(()) => advance(&mut lock(status), &row),
                    Err(e) => {
                        let error = error_chain(&e);
                        tracing::error!(row = %key, %error, "audit index cannot take this row; skipped (vellum verify names it, vellum index rebuild retries it)");
                        let mut status = lock(status);
                        status.skipped_rows += 1;
                        status.error = Some(format!("{key}: {error}"));
                    }
                }
            }
        }
    }
}

/// Records how far the index got after `batch` was applied.
fn advance(status: &mut IndexStatus, batch: &IndexBatch) {
    if let Some(position) = batch.events.iter().map(|e| e.position).max() {
        status.last_position = status.last_position.max(Some(position));
    }
    if let Some(op) = batch.commits.iter().map(|c| c.op).max() {
        status.last_commit = status.last_commit.max(Some(op));
    }
}

/// Every row of `batch` as a batch of its own, with the key it is logged
/// under. Keys come before events (as in one `apply`).
fn single_rows(batch: &IndexBatch) -> Vec<(String, IndexBatch)> {
    let mut out = Vec::with_capacity(rows(batch));
    for row in &batch.commits {
        let one = IndexBatch {
            commits: vec![row.clone()],
            ..IndexBatch::default()
        };
        out.push((format!("commits.op={}", row.op), one));
    }
    for row in &batch.keys {
        let one = IndexBatch {
            keys: vec![row.clone()],
            ..IndexBatch::default()
        };
        out.push((format!("keys.key_id={}", row.key_id), one));
    }
    for row in &batch.events {
        let one = IndexBatch {
            events: vec![row.clone()],
            ..IndexBatch::default()
        };
        out.push((
            format!("events.position={} (op {})", row.position, row.op),
            one,
        ));
    }
    for row in &batch.access {
        let one = IndexBatch {
            access: vec![row.clone()],
            ..IndexBatch::default()
        };
        let position = row.position.map_or("none".to_string(), |p| p.to_string());
        out.push((format!("access.position={position}"), one));
    }
    out
}

fn merge(into: &mut IndexBatch, more: IndexBatch) {
    into.events.extend(more.events);
    into.commits.extend(more.commits);
    into.keys.extend(more.keys);
    into.access.extend(more.access);
}

fn rows(batch: &IndexBatch) -> usize {
    batch.events.len() + batch.commits.len() + batch.keys.len() + batch.access.len()
}

/// An error with its causes ("a: b: c"): index errors keep the database's
/// own message only as their source.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Many errors already print their source; say each thing once.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
