//! The `vellum-tiles` thread: writes the tiles of each certified size once
//! its certificate record is durable, so no tile file write and no fsync
//! ever runs on the commit path or under the log's state lock.
//!
//! The commit path (under the state lock) hands over only the leaf hashes
//! a new certified size adds (32 bytes a leaf, copied from the tree) with
//! the certificate record's ticket; it never waits. The thread keeps the
//! tree's right edge (one partial tile per level, [`TileBuilder`]), waits
//! for each ticket to be durable, then builds and writes the tiles without
//! any lock the log takes. When it falls more than
//! [`TILES_QUEUED_LEAVES_MAX`] leaves behind, or a write or the store
//! fails, it stops: the next open checks the right edge and writes what is
//! missing from the log (the tiles are a cache, never the source of truth).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use vellum_audit::hash::Hash;
use vellum_audit::merkle::MerkleTree;
use vellum_audit::tile_dir::{TileBuilder, TileDir};

use super::{TileStore, TileWriteError, hashes_at_level, write_full, write_partial};
use crate::storage::{DurableProbe, Ticket};

/// Leaf hashes handed to the thread and not yet written, at most (32 MiB):
/// beyond it the thread is abandoned and the next open writes the rest.
pub const TILES_QUEUED_LEAVES_MAX: usize = 1 << 20;
/// How long the thread waits on one certificate record before it looks
/// again whether it was told to stop.
const DURABLE_POLL: Duration = Duration::from_millis(50);

/// The handle the log keeps: hands certified sizes to the thread.
#[derive(Debug)]
pub struct TileWriter {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Holds the thread back before its next tile write while alive (see
/// [`TileWriter::hold`]).
#[derive(Debug)]
pub struct TilesHeld<'a> {
    _gate: MutexGuard<'a, ()>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job or a stop arrives.
    wake: Condvar,
    /// Taken by the thread around each batch of tile writes ([`TilesHeld`]).
    gate: Mutex<()>,
}

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// The largest certified size handed over (the next job's leaves start
    /// there).
    handed: u64,
    /// Leaf hashes in `jobs`.
    queued_leaves: usize,
    /// The tree size the stored tiles are written up to.
    written: u64,
    stop: Option<Stop>,
    /// Nothing more is written until the next open.
    abandoned: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// Write what is durable, then end (a clean close).
    Drain,
    /// End before the next write (dropped without close: open repairs).
    Abandon,
}

#[derive(Debug)]
struct Job {
    /// The certified size the leaves bring the tree to.
    size: u64,
    leaves: Vec<Hash>,
    ticket: Ticket,
    probe: DurableProbe,
}

impl TileWriter {
    /// Starts the thread on a store open checked (and wrote up to the
    /// newest certificate); `tree` gives its right edge. None when the
    /// store is read-only, its open repair failed, or open could not check
    /// it (damaged ops waiting for repair): tiles then wait for the next
    /// open.
    pub fn start(store: TileStore, tree: &MerkleTree) -> Option<TileWriter> {
        if store.read_only || store.failed {
            return None;
        }
        let size = store.written?;
        let builder = TileBuilder::resume(tree, size)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                handed: size,
                written: size,
                ..Queue::default()
            }),
            ..Shared::default()
        });
        let output = Output {
            dir: store.dir,
            builder,
        };
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("vellum-tiles".to_string())
            .spawn(move || run(&thread_shared, output));
        match thread {
            Ok(thread) => Some(TileWriter {
                shared,
                thread: Some(thread),
            }),
            Err(error) => {
                tracing::warn!(%error, "could not start the tile writer; tiles wait for the next open");
                None
            }
        }
    }

    /// Hands over the tree of `size` leaves, certified by the record of
    /// `ticket`: its new leaf hashes are copied from `tree` (which holds at
    /// least `size` leaves). Never waits on I/O; called under the state lock.
    pub fn certified(&self, tree: &MerkleTree, size: u64, ticket: Ticket, probe: DurableProbe) {
        let mut queue = self.shared.lock();
        if queue.abandoned || queue.stop.is_some() || size <= queue.handed {
            return;
        }
        let Some(leaves) = (queue.handed..size)
            .map(|index| tree.leaf(index))
            .collect::<Option<Vec<Hash>>>()
        else {
            tracing::warn!(
                size,
                leaves = tree.len(),
                "a certified size beyond the tree; tiles wait for the next open"
            );
            queue.abandon();
            return;
        };
        if queue.queued_leaves + leaves.len() > TILES_QUEUED_LEAVES_MAX {
            tracing::warn!(
                queued = queue.queued_leaves,
                "the tile writer fell too far behind; tiles wait for the next open"
            );
            queue.abandon();
            return;
        }
        queue.queued_leaves += leaves.len();
        queue.handed = size;
        queue.jobs.push_back(Job {
            size,
            leaves,
            ticket,
            probe,
        });
        self.shared.wake.notify_one();
    }

    /// The tree size the stored tiles are written up to.
    pub fn written_size(&self) -> u64 {
        self.shared.lock().written
    }

    /// Whether the thread stopped before the next open (a failed write, a
    /// failed store, or too far behind).
    pub fn abandoned(&self) -> bool {
        self.shared.lock().abandoned
    }

    /// Holds the thread back before its next batch of tile writes until the
    /// guard is dropped: what a slow or stalled disk does to it. Appends go
    /// on meanwhile (tests use it to show the commit path never waits).
    pub fn hold(&self) -> TilesHeld<'_> {
        TilesHeld {
            _gate: self
                .shared
                .gate
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Writes the tiles of every handed size whose record is durable (call
    /// after a flush: all of them), then ends the thread.
    pub fn drain(mut self) {
        self.stop(Stop::Drain);
    }

    fn stop(&mut self, stop: Stop) {
        {
            let mut queue = self.shared.lock();
            queue.stop = Some(queue.stop.map_or(stop, |s| s.max_with(stop)));
            self.shared.wake.notify_all();
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the tile writer panicked; tiles wait for the next open");
        }
    }
}

impl Drop for TileWriter {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop(Stop::Abandon);
        }
    }
}

impl Stop {
    /// Abandon wins over drain.
    fn max_with(self, other: Stop) -> Stop {
        match (self, other) {
            (Stop::Drain, Stop::Drain) => Stop::Drain,
            _ => Stop::Abandon,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Queue {
    fn abandon(&mut self) {
        self.abandoned = true;
        self.jobs.clear();
        self.queued_leaves = 0;
    }
}

/// What the thread owns: the files and the tree's right edge.
struct Output {
    dir: TileDir,
    builder: TileBuilder,
}

fn run(shared: &Shared, mut output: Output) {
    while let Some(leaves) = next_batch(shared) {
        let _gate = shared.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if shared.lock().stop == Some(Stop::Abandon) {
            return;
        }
        match output.write(&leaves) {
            Ok(()) => shared.lock().written = output.builder.len(),
            Err(error) => {
                tracing::warn!(%error, "writing tiles failed; they are rebuilt at the next open");
                shared.lock().abandon();
                return;
            }
        }
    }
}

/// Waits for the oldest handed size's record to be durable, then takes
/// the leaves of it and of every later size durable by then. None: stop.
fn next_batch(shared: &Shared) -> Option<Vec<Hash>> {
    let mut queue = shared.lock();
    loop {
        if queue.abandoned || queue.stop == Some(Stop::Abandon) {
            return None;
        }
        let Some(front) = queue.jobs.front() else {
            if queue.stop == Some(Stop::Drain) {
                return None;
            }
            queue = shared
                .wake
                .wait(queue)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        };
        let (ticket, probe) = (front.ticket, front.probe.clone());
        let draining = queue.stop == Some(Stop::Drain);
        drop(queue);
        // After the flush a drain follows, every record is durable.
        let durable = match draining {
            true => probe.is_durable(ticket),
            false => probe.wait(ticket, DURABLE_POLL),
        };
        queue = shared.lock();
        match durable {
            Ok(true) => return Some(take_durable(&mut queue)),
            Ok(false) if !draining => {}
            // Not durable at a drain, or the store failed or closed first:
            // whether the record made it is decided at the next open.
            Ok(false) | Err(_) => {
                queue.abandon();
                return None;
            }
        }
    }
}

/// The leaves of the front job (known durable) and of the jobs after it
/// whose records are durable too, in order.
fn take_durable(queue: &mut Queue) -> Vec<Hash> {
    let mut leaves = Vec::new();
    while let Some(job) = queue.jobs.pop_front() {
        queue.queued_leaves -= job.leaves.len();
        assert_eq!(
            job.size,
            queue.written + (leaves.len() + job.leaves.len()) as u64,
            "tile jobs follow each other"
        );
        leaves.extend(job.leaves);
        let next_durable = queue
            .jobs
            .front()
            .is_some_and(|next| next.probe.is_durable(next.ticket).unwrap_or(false));
        if !next_durable {
            break;
        }
    }
    leaves
}

impl Output {
    /// Extends the tree by `leaves` and writes the tiles that changed: the
    /// full tiles completed, durably and left to right, then the partial
    /// tile of each level that grew.
    fn write(&mut self, leaves: &[Hash]) -> Result<(), TileWriteError> {
        let before = self.builder.len();
        let mut full = Vec::new();
        for leaf in leaves {
            self.builder
                .push(*leaf, |id, hashes| full.push((id, hashes.to_vec())));
        }
        for (id, hashes) in &full {
            write_full(&self.dir, *id, hashes)?;
        }
        let after = self.builder.len();
        for (id, hashes) in self.builder.partial_tiles() {
            if hashes_at_level(before, id.level()) != hashes_at_level(after, id.level()) {
                write_partial(&self.dir, id, hashes)?;
            }
        }
        Ok(())
    }
}
