//! Feeds the audit index from the write path without putting SQL on it.
//!
//! The index is a projection of the log (DESIGN §5): appends never wait for
//! it. A background thread with its own small tokio runtime receives row
//! batches over a bounded channel, coalesces them into one transaction, and
//! records how far it got. If it falls behind or fails, the next open catches
//! it up from the log; `vellum verify` reports any difference.

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::LogError;
use crate::index::{Index, IndexBatch, IndexTarget};

/// Batches waiting for the index thread, at most; senders block beyond it.
pub const INDEX_QUEUE_MAX: usize = 1024;
/// Rows coalesced into one index transaction, at most.
pub const INDEX_COALESCE_ROWS_MAX: usize = 20_000;

/// How far the index got.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IndexStatus {
    /// The index's highest event position.
    pub last_position: Option<u64>,
    /// The index's highest certified commit.
    pub last_commit: Option<u64>,
    /// The first error the index thread hit; it stops applying after one.
    pub error: Option<String>,
}

enum Message {
    Batch(IndexBatch),
    Flush(SyncSender<()>),
}

/// Handle to the index thread.
#[derive(Debug)]
pub struct Indexer {
    sender: Option<SyncSender<Message>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<IndexStatus>>,
}

impl Indexer {
    /// Opens the index (creating and migrating it if needed) on a new thread
    /// and returns once it is open, with its status read.
    pub fn start(target: IndexTarget, cluster: u128) -> Result<Indexer, LogError> {
        let (sender, receiver) = mpsc::sync_channel(INDEX_QUEUE_MAX);
        let (opened_tx, opened_rx) = mpsc::sync_channel(1);
        let status = Arc::new(Mutex::new(IndexStatus::default()));
        let thread_status = Arc::clone(&status);
        let thread = std::thread::Builder::new()
            .name("vellum-index".to_string())
            .spawn(move || run(target, cluster, receiver, opened_tx, thread_status))
            .map_err(|e| LogError::DataDir(format!("cannot start the index thread: {e}")))?;
        match opened_rx.recv() {
            Ok(Ok(())) => Ok(Indexer {
                sender: Some(sender),
                thread: Some(thread),
                status,
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

    /// Queues a batch (blocks while the queue is full).
    pub fn send(&self, batch: IndexBatch) {
        if let Some(sender) = &self.sender {
            // A closed channel means the thread stopped after an error that
            // is already in the status.
            let _ = sender.send(Message::Batch(batch));
        }
    }

    /// Waits until every batch sent so far was applied (or the thread failed).
    pub fn flush(&self) {
        let Some(sender) = &self.sender else { return };
        let (tx, rx) = mpsc::sync_channel(1);
        if sender.send(Message::Flush(tx)).is_ok() {
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
        self.flush();
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Indexer {
    fn drop(&mut self) {
        self.sender = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    target: IndexTarget,
    cluster: u128,
    receiver: Receiver<Message>,
    opened: SyncSender<Result<(), String>>,
    status: Arc<Mutex<IndexStatus>>,
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
        let index = match open_and_read(&target, cluster, &status).await {
            Ok(index) => index,
            Err(message) => {
                let _ = opened.send(Err(message));
                return;
            }
        };
        let _ = opened.send(Ok(()));
        serve(&index, &receiver, &status).await;
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

async fn serve(index: &Index, receiver: &Receiver<Message>, status: &Mutex<IndexStatus>) {
    loop {
        let first = match receiver.recv_timeout(Duration::from_millis(200)) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = IndexBatch::default();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Batch(more) => merge(&mut batch, more),
                Message::Flush(done) => flushes.push(done),
            }
            if rows(&batch) < INDEX_COALESCE_ROWS_MAX {
                next = receiver.try_recv().ok();
            }
        }
        apply(index, &batch, status).await;
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn apply(index: &Index, batch: &IndexBatch, status: &Mutex<IndexStatus>) {
    if rows(batch) == 0
        || status
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .error
            .is_some()
    {
        return;
    }
    let result = index.apply(batch).await;
    let mut status = status
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match result {
        Ok(()) => {
            if let Some(position) = batch.events.iter().map(|e| e.position).max() {
                status.last_position = status.last_position.max(Some(position));
            }
            if let Some(op) = batch.commits.iter().map(|c| c.op).max() {
                status.last_commit = status.last_commit.max(Some(op));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "audit index update failed; it will catch up from the log on the next open");
            status.error = Some(error_chain(&e));
        }
    }
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
