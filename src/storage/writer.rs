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
//!
//! Records go into the zero-written window ahead of the data end of a
//! version 2 segment (`StorageConfig::window_bytes`), so a batch's
//! fdatasync changes no file size. After a batch is acknowledged, the
//! writer extends the window (zeros, one fdatasync) once less than half is
//! left: ahead of need, off the acknowledged batch's path. A Seal trims the
//! file to its end before its fdatasync; a version 1 segment (from before
//! windows) keeps growing without one until it is sealed.

use std::io;
use std::sync::Arc;
use std::sync::MutexGuard;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::recovery::create_segment;
use super::{Item, LAZY_DELAY_MS_MAX, PLUG_MS_MAX, SegmentFile, Shared, State, StorageConfig};

/// The segment the writer writes to.
#[derive(Debug)]
pub(super) struct Current {
    pub index: u64,
    pub file: Arc<dyn SegmentFile>,
    /// Where the next record goes: the end of the last record.
    pub end: u64,
    /// The file's length; `[end, allocated)` is the zero window.
    pub allocated: u64,
    /// A version 2 segment, which keeps a window; a version 1 one grows.
    pub windowed: bool,
}

impl Current {
    /// Where the window should end when it is extended now, if it should
    /// be: less than half of `window_bytes` left, and room before
    /// `segment_bytes_max`.
    pub fn window_target(&self, config: &StorageConfig) -> Option<u64> {
        let window = config.window_bytes;
        if !self.windowed || window == 0 || self.allocated - self.end >= window / 2 {
            return None;
        }
        let target = (self.end + window).min(config.segment_bytes_max);
        (target > self.allocated).then_some(target)
    }

    /// Writes zeros up to `target` and syncs them (with the file size).
    pub fn extend_window(&mut self, target: u64) -> io::Result<()> {
        self.file.preallocate(self.allocated, target)?;
        self.file.sync_data()?;
        self.allocated = target;
        Ok(())
    }
}

pub(super) fn spawn(shared: Arc<Shared>, current: Current) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("vellum-storage-writer".to_string())
        .spawn(move || run(&shared, current))
}

fn run(shared: &Shared, mut current: Current) {
    while let Some(items) = take_batch(shared) {
        let written = write_batch(shared, &mut current, items);
        match written {
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
                poison(shared, reason);
                return;
            }
        }
        // Ahead of need, after the batch's waiters were woken.
        if let Some(target) = current.window_target(&shared.config) {
            if let Err(e) = current.extend_window(target) {
                let path = shared.fs.path(current.index);
                poison(shared, format!("zero window of {}: {e}", path.display()));
                return;
            }
            shared.syncs.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Records why the store failed, fails every waiter not yet durable.
fn poison(shared: &Shared, reason: String) {
    tracing::error!(%reason, "storage poisoned; reopen to recover");
    let mut state = shared.lock();
    state.poisoned = Some(reason);
    state.queue.clear();
    state.queued_records = 0;
    shared.durable.notify_all();
    shared.space.notify_all();
    drop(state);
    shared.wake_durable();
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
    current: &mut Current,
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
                write_and_sync(shared, current, &buffer, true)?;
                buffer.clear();
                assert_eq!(next, current.index + 1, "segments roll over one at a time");
                *current = roll(shared, next)?;
            }
        }
        written += 1;
    }
    if !buffer.is_empty() {
        write_and_sync(shared, current, &buffer, false)?;
    }
    shared.batches.fetch_add(1, Ordering::SeqCst);
    shared.records_written.fetch_add(written, Ordering::SeqCst);
    Ok(last_seq)
}

/// Creates segment `next` with its header and window (one fdatasync).
fn roll(shared: &Shared, next: u64) -> Result<Current, String> {
    let window = shared
        .config
        .window_bytes
        .min(shared.config.segment_bytes_max);
    let (file, allocated) = create_segment(shared.fs.as_ref(), shared.cluster, next, window)
        .map_err(|e| format!("creating segment {}: {e}", shared.fs.path(next).display()))?;
    shared.syncs.fetch_add(1, Ordering::SeqCst);
    shared.segments_created.fetch_add(1, Ordering::SeqCst);
    shared.files.replace(next, Arc::clone(&file));
    Ok(Current {
        index: next,
        file,
        end: vellum_audit::segment::SEGMENT_HEADER_BYTES as u64,
        allocated,
        windowed: true,
    })
}

/// Writes `bytes` at the data end and fdatasyncs. `seal`: they end with
/// the segment's Seal, so the file is first trimmed to their end (the
/// same fdatasync makes the new length durable).
fn write_and_sync(
    shared: &Shared,
    current: &mut Current,
    bytes: &[u8],
    seal: bool,
) -> Result<(), String> {
    let path = shared.fs.path(current.index);
    // The latency trace (`vellum::latency`, see `log::shell`): the write
    // and its fdatasync, each timed by the event's timestamp.
    tracing::trace!(target: "vellum::latency", step = "write", bytes = bytes.len());
    current
        .file
        .write_at(bytes, current.end)
        .map_err(|e| format!("write of {} bytes to {}: {e}", bytes.len(), path.display()))?;
    current.end += bytes.len() as u64;
    current.allocated = current.allocated.max(current.end);
    if seal && current.allocated > current.end {
        current
            .file
            .trim(current.end)
            .map_err(|e| format!("trim of {} to {}: {e}", path.display(), current.end))?;
        current.allocated = current.end;
    }
    current
        .file
        .sync_data()
        .map_err(|e| format!("fdatasync of {}: {e}", path.display()))?;
    tracing::trace!(target: "vellum::latency", step = "synced");
    shared.syncs.fetch_add(1, Ordering::SeqCst);
    Ok(())
}
