//! The writer thread: group commit.
//!
//! It takes everything queued (up to the batch limits), writes it with one
//! write and one fdatasync, then wakes every waiter of the batch. A queue
//! holding only lazy records starts no batch until a forcing record, a
//! waiter, a flush, closing, or their `LAZY_DELAY_MS_MAX` comes. A Roll item
//! inside a batch writes the Seal, syncs, and creates the next segment before
//! the rest of the batch. Any failed write or sync poisons the store: the
//! writer records why, fails every waiter not yet durable, and stops. It
//! never retries a sync, because after a failed fsync the kernel may have
//! dropped the dirty pages and a second fsync can report success falsely.

use std::io;
use std::sync::Arc;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::recovery::create_segment;
use super::{Item, LAZY_DELAY_MS_MAX, PLUG_MS_MAX, SegmentFile, Shared, State};

pub(super) fn spawn(
    shared: Arc<Shared>,
    current: (u64, Arc<dyn SegmentFile>),
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vellum-storage-writer".to_string())
        .spawn(move || run(&shared, current))
}

fn run(shared: &Shared, mut current: (u64, Arc<dyn SegmentFile>)) {
    while let Some(items) = take_batch(shared) {
        match write_batch(shared, &mut current, items) {
            Ok(last_seq) => {
                let mut state = shared.lock();
                if let Some(seq) = last_seq {
                    assert!(seq >= state.durable_seq, "batches become durable in order");
                    state.durable_seq = seq + 1;
                }
                shared.durable.notify_all();
                drop(state);
                shared.wake_durable();
            }
            Err(reason) => {
                tracing::error!(%reason, "storage poisoned; reopen to recover");
                let mut state = shared.lock();
                state.poisoned = Some(reason);
                state.queue.clear();
                state.queued_records = 0;
                shared.durable.notify_all();
                shared.space.notify_all();
                drop(state);
                shared.wake_durable();
                return;
            }
        }
    }
}

/// Waits for work and takes the next batch; None once closing and drained.
fn take_batch(shared: &Shared) -> Option<Vec<Item>> {
    let config = shared.config;
    let mut state = wait_for_batch(shared)?;
    let mut items = Vec::new();
    let (mut records, mut bytes) = (0usize, 0usize);
    while let Some(queued) = state.queue.front() {
        let item = &queued.item;
        let is_record = usize::from(matches!(item, Item::Record { .. }));
        let over = records + is_record > config.batch_records_max
            || bytes + item.len() > config.batch_bytes_max;
        if over && !items.is_empty() {
            break;
        }
        records += is_record;
        bytes += item.len();
        let item = state.queue.pop_front().expect("front exists").item;
        if let Item::Record { seq, .. } = item {
            state.taken_seq = seq + 1;
        }
        items.push(item);
    }
    state.queued_records -= records;
    shared.space.notify_all();
    Some(items)
}

/// Waits until the queue holds work that must go out now: a record that
/// was submitted (not lazily) or waited on or flushed, closing, a full
/// batch, or a lazy record queued `LAZY_DELAY_MS_MAX` ago. A queue of only
/// young lazy records is left to wait for company. None once closing (or
/// poisoned) and drained.
fn wait_for_batch(shared: &Shared) -> Option<MutexGuard<'_, State>> {
    let lazy_delay = Duration::from_millis(LAZY_DELAY_MS_MAX);
    let full = shared
        .config
        .batch_records_max
        .min(shared.config.queue_records_max);
    let mut state = shared.lock();
    loop {
        let Some(front) = state.queue.front() else {
            if state.closing || state.poisoned.is_some() {
                return None;
            }
            state = shared
                .work
                .wait(state)
                .expect("storage lock is never held across a panic");
            continue;
        };
        let mut deadline = front.at + lazy_delay;
        let now = Instant::now();
        let plug_until = state.plugged_at + Duration::from_millis(PLUG_MS_MAX);
        // A plug holds back forced records (not waited ones) for a bounded time.
        let plugged = state.plugs > 0 && state.waited_seq <= state.taken_seq && now < plug_until;
        if state.closing
            || (state.forced_seq > state.taken_seq && !plugged)
            || state.queued_records >= full
            || now >= deadline
        {
            return Some(state);
        }
        if plugged && state.forced_seq > state.taken_seq {
            deadline = deadline.min(plug_until);
        }
        state = shared
            .work
            .wait_timeout(state, deadline - now)
            .expect("storage lock is never held across a panic")
            .0;
    }
}

/// Writes a batch; returns the seq of its last record. Err poisons the store.
fn write_batch(
    shared: &Shared,
    current: &mut (u64, Arc<dyn SegmentFile>),
    items: Vec<Item>,
) -> Result<Option<u64>, String> {
    let mut buffer = Vec::with_capacity(items.iter().map(Item::len).sum());
    let mut last_seq = None;
    let mut written = 0u64;
    for item in items {
        match item {
            Item::Record { seq, bytes } => {
                buffer.extend_from_slice(&bytes);
                last_seq = Some(seq);
            }
            Item::Roll { seal, next } => {
                buffer.extend_from_slice(&seal);
                write_and_sync(shared, current, &buffer)?;
                buffer.clear();
                assert_eq!(next, current.0 + 1, "segments roll over one at a time");
                let file =
                    create_segment(shared.fs.as_ref(), shared.cluster, next).map_err(|e| {
                        format!("creating segment {}: {e}", shared.fs.path(next).display())
                    })?;
                shared.syncs.fetch_add(1, Ordering::SeqCst);
                shared.segments_created.fetch_add(1, Ordering::SeqCst);
                shared.files.replace(next, Arc::clone(&file));
                *current = (next, file);
            }
        }
        written += 1;
    }
    if !buffer.is_empty() {
        write_and_sync(shared, current, &buffer)?;
    }
    shared.batches.fetch_add(1, Ordering::SeqCst);
    shared.records_written.fetch_add(written, Ordering::SeqCst);
    Ok(last_seq)
}

fn write_and_sync(
    shared: &Shared,
    current: &(u64, Arc<dyn SegmentFile>),
    bytes: &[u8],
) -> Result<(), String> {
    let path = shared.fs.path(current.0);
    // The latency trace (`vellum::latency`, see `log::shell`): the write
    // and its fdatasync, each timed by the event's timestamp.
    tracing::trace!(target: "vellum::latency", step = "write", bytes = bytes.len());
    current
        .1
        .append(bytes)
        .map_err(|e| format!("write of {} bytes to {}: {e}", bytes.len(), path.display()))?;
    current
        .1
        .sync_data()
        .map_err(|e| format!("fdatasync of {}: {e}", path.display()))?;
    tracing::trace!(target: "vellum::latency", step = "synced");
    shared.syncs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}
