//! The segment store: an append-only log of records in segment files, with
//! group commit and crash recovery.
//!
//! Callers `submit` encoded records in log order and get a [`Ticket`] at once;
//! one writer thread takes everything queued, writes it with one write and
//! one fdatasync, then wakes every waiter of that batch (group commit).
//! Records nobody waits for (a Certificate after its op) go in with
//! `submit_lazy`: they start no write of their own but ride along with the
//! next batch, a `flush`, `close`, a `wait_durable` on them, or at the latest
//! [`LAZY_DELAY_MS_MAX`] after they were queued.
//! A full segment is sealed (Seal record, fdatasync) before the next one is
//! created (header, fdatasync, directory fsync). On open, the log is checked
//! with the audit crate's scanner (the same code `vellum verify` runs): a torn
//! tail of the last segment is cut off and reported; anything else wrong
//! fails the open and nothing is repaired. A cut that would lose an op at or
//! below `StorageConfig::durable_op_floor` (ops the caller saw certified)
//! fails the open instead. A read-only open changes nothing on disk: no
//! cut, no new segment, no header rewrite, no sync. A failed write or fdatasync
//! poisons the handle until it is reopened; an fsync is never retried
//! ("fsyncgate"). The formats are in `docs/format.md`.

mod cut;
pub mod file;
pub mod open_files;
mod recovery;
mod writer;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use vellum_audit::hash::Hash;
use vellum_audit::record::{BODY_BYTES_MAX, HEADER_BYTES, OpHeader, Record, RecordKind};
use vellum_audit::segment::{ChainTip, SEGMENT_HEADER_BYTES};

pub use cut::{CutReport, cut_after_op};
pub use file::{FaultFs, RealFs, SegmentFile, SegmentFs};
pub use recovery::{DamagedRecord, restore_record, restore_record_check};

/// Encoded size of a Seal record (header and 48-byte body).
pub const SEAL_RECORD_BYTES: u64 = (HEADER_BYTES + vellum_audit::record::SEAL_BODY_BYTES) as u64;
/// Smallest allowed `segment_bytes_max`.
pub const SEGMENT_BYTES_MIN: u64 = 4096;
/// Name of the directory of segment files inside the data directory.
pub const SEGMENTS_DIR: &str = "segments";
/// Longest a lazy record waits in the queue for a batch to ride along with
/// before the writer writes and syncs it on its own (so an idle log still
/// makes it durable).
pub const LAZY_DELAY_MS_MAX: u64 = 200;
/// Longest a [`Plug`] holds back the writer: past it, queued records go out
/// even while the plug is held (a plug only gathers the writes of one step
/// of the replica into one batch; it must never stall the store).
pub const PLUG_MS_MAX: u64 = 20;

/// Default of `StorageConfig::window_bytes`: a 1 MiB zero window, extended
/// by 512 KiB (one more fdatasync, with the file size) about every 450
/// appends of 1 KiB.
pub const WINDOW_BYTES_DEFAULT: u64 = 1024 * 1024;

/// Limits of the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageConfig {
    /// A segment is sealed before a record would take it past this size
    /// (a single record larger than a segment gets a segment of its own).
    pub segment_bytes_max: u64,
    /// Most records written by one write + fdatasync.
    pub batch_records_max: usize,
    /// Most bytes written by one write + fdatasync (at least one record).
    pub batch_bytes_max: usize,
    /// Most records queued and not yet taken by the writer; `submit` blocks
    /// while the queue is full.
    pub queue_records_max: usize,
    /// The highest op the caller knows was certified (e.g. from the audit
    /// index); 0 = no floor. If the log would end before this op after
    /// recovery (a torn tail that holds certified ops, or a log cut short),
    /// open fails as corrupt and nothing is truncated.
    pub durable_op_floor: u64,
    /// An op whose Certificate record the caller knows was durable (the
    /// audit index holds a certificate's row only once its record was
    /// fdatasync'ed); 0 = none. A torn tail is cut only if the records
    /// before it still hold a Certificate of this op or a later one: else
    /// the "torn" bytes hold a record that was durable, so they are damage,
    /// and the open fails as corrupt with nothing truncated.
    pub durable_certificate_floor: u64,
    /// Open without changing anything on disk: no file is created, written,
    /// truncated or synced; a torn tail is reported, not cut; `submit` is
    /// refused. The segments directory must exist.
    pub read_only: bool,
    /// A replica of a cluster: a damaged Op record below the tail whose
    /// place in the chain is known is reported in `Recovery::damaged`
    /// (to be repaired from peers) instead of failing the open.
    pub tolerate_damaged_ops: bool,
    /// Zero-written bytes kept ahead of the data end of a (version 2)
    /// segment, so an fdatasync of a record written there syncs no file
    /// size (0 = none: the file grows with each write). Extended by half of
    /// it whenever less than half is left, never past `segment_bytes_max`.
    pub window_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            segment_bytes_max: 64 * 1024 * 1024,
            batch_records_max: 1024,
            batch_bytes_max: 16 * 1024 * 1024,
            queue_records_max: 4096,
            durable_op_floor: 0,
            durable_certificate_floor: 0,
            read_only: false,
            tolerate_damaged_ops: false,
            window_bytes: WINDOW_BYTES_DEFAULT,
        }
    }
}

/// Where a record lies: segment index, file offset, encoded length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordLocation {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// A submitted record: its place in the submit order and where it will lie.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    seq: u64,
    location: RecordLocation,
}

impl Ticket {
    /// Where the record will lie once durable.
    pub fn location(&self) -> RecordLocation {
        self.location
    }
}

/// A torn tail found during recovery: cut off, or only reported when the
/// store was opened read-only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: PathBuf,
    pub offset: u64,
    pub bytes: u64,
}

/// What `open` found.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// Every valid record in log order, all kinds (Seals included).
    pub records: Vec<(RecordLocation, OpHeader)>,
    /// The torn tail of the last segment (cut off unless read-only), if any.
    pub torn_tail: Option<TornTail>,
    /// Segment files in the log after open.
    pub segments: u64,
    /// The last op of the log (0 and the genesis parent when empty).
    pub chain: ChainTip,
    /// Damaged Op records below the tail, in log order (only with
    /// `tolerate_damaged_ops`; else any damage fails the open).
    pub damaged: Vec<DamagedRecord>,
}

/// Counters of the writer, for tests and `vellum bench`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StorageStats {
    /// Records made durable (Seals included).
    pub records: u64,
    /// Batches written (each one write of records and one fdatasync).
    pub batches: u64,
    /// fdatasync calls on segment files, including seals and new headers.
    pub syncs: u64,
    /// Segments created since open.
    pub segments_created: u64,
}

/// Why a storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error on {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}: corrupt at byte {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    /// A write or fdatasync failed; every call fails until reopened.
    #[error("storage poisoned by a failed write or sync, reopen to recover: {0}")]
    Poisoned(String),
    #[error("record body of {bytes} bytes exceeds the limit of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
    /// The record or config breaks a rule (chain, kind, limits); nothing was written.
    #[error("refused: {0}")]
    Rejected(String),
    #[error("storage is closed")]
    Closed,
}

impl From<vellum_audit::segment::ScanError> for StorageError {
    /// The audit scanner's verdict on a log directory, as storage reports it.
    fn from(error: vellum_audit::segment::ScanError) -> StorageError {
        use vellum_audit::segment::ScanError;
        match error {
            ScanError::Io { path, source } => StorageError::Io { path, source },
            ScanError::Corrupt {
                file,
                offset,
                reason,
            } => StorageError::Corrupt {
                file,
                offset,
                reason,
            },
        }
    }
}

/// The segment store. Send + Sync; share it behind an `Arc`.
#[derive(Debug)]
pub struct Storage {
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
}

/// A queued item and when it was queued (the front one's age bounds how
/// long lazy records wait).
#[derive(Debug)]
struct Queued {
    item: Item,
    at: Instant,
}

/// One queued unit of work for the writer, in log order.
#[derive(Debug)]
enum Item {
    Record {
        seq: u64,
        bytes: Vec<u8>,
    },
    /// Write this Seal record, sync, then create segment `next` and write to it.
    Roll {
        seal: Vec<u8>,
        next: u64,
    },
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Record { bytes, .. } => bytes.len(),
            Item::Roll { seal, .. } => seal.len(),
        }
    }
}

/// Where the next submitted record goes, and the chain as submitted so far.
#[derive(Debug, Clone)]
struct Tail {
    segment: u64,
    offset: u64,
    records: u64,
    ops: u64,
    view: u64,
    chain: ChainTip,
    /// Merkle (size, root) after the last submitted record; unknown right
    /// after open until `resume_tree` or the next submit.
    tree: Option<(u64, Hash)>,
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Queued>,
    queued_records: usize,
    next_seq: u64,
    /// Every seq below this has been taken by the writer.
    taken_seq: u64,
    /// Every seq below this must be written without waiting for more: set
    /// by a (non-lazy) submit, `wait_durable` and `flush`.
    forced_seq: u64,
    /// Every seq below this is durable.
    durable_seq: u64,
    /// Every seq below this has a caller blocked on it (`wait_durable`,
    /// `flush`): a plug does not hold it back.
    waited_seq: u64,
    /// Plugs held now, and since when the first of them is held.
    plugs: usize,
    plugged_at: Instant,
    poisoned: Option<String>,
    closing: bool,
    tail: Tail,
}

/// Holds back the store's writer while alive (see [`Storage::plug`]).
#[must_use = "the writer is held back only while the plug is alive"]
pub struct Plug(Arc<Shared>);

impl std::fmt::Debug for Plug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plug")
    }
}

impl Drop for Plug {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.plugs = state.plugs.saturating_sub(1);
        if state.plugs == 0 {
            self.0.work.notify_one();
        }
    }
}

/// Called after every batch the writer made durable (or when it failed).
pub type DurableWaker = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    cluster: u128,
    config: StorageConfig,
    fs: Arc<dyn SegmentFs>,
    state: Mutex<State>,
    /// Signals the writer: work queued or closing.
    work: Condvar,
    /// Signals waiters: a batch became durable, or poisoned.
    durable: Condvar,
    /// Signals submitters: the queue has room.
    space: Condvar,
    /// Open segment files for reads, at most `OPEN_FILES_MAX` (the writer
    /// puts each new segment in).
    files: open_files::OpenFiles,
    records_written: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    segments_created: AtomicU64,
    /// Wakes whoever sees writes through without waiting on them (a
    /// replica loop); it must not block.
    durable_waker: Mutex<Option<DurableWaker>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("cluster", &self.cluster)
            .field("config", &self.config)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Tells the durable waker, if any, that a batch ended.
    fn wake_durable(&self) {
        let waker = self
            .durable_waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(wake) = waker {
            wake();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("storage lock is never held across a panic")
    }
}

impl Storage {
    /// Opens (or creates) the log in `dir/segments`, recovering from a crash.
    pub fn open(
        dir: &Path,
        cluster: u128,
        config: StorageConfig,
    ) -> Result<(Storage, Recovery), StorageError> {
        let segments = dir.join(SEGMENTS_DIR);
        if !config.read_only && (config.durable_op_floor == 0 || segments.exists()) {
            // With a floor, a missing directory is a lost log: let recovery
            // refuse it rather than create an empty one.
            std::fs::create_dir_all(&segments).map_err(|source| StorageError::Io {
                path: segments.clone(),
                source,
            })?;
        }
        Storage::open_with(&segments, cluster, config, Arc::new(RealFs::new(&segments)))
    }

    /// Like [`Storage::open`] on the segment directory itself, writing
    /// through `fs` (tests pass a [`FaultFs`]).
    pub fn open_with(
        segments_dir: &Path,
        cluster: u128,
        config: StorageConfig,
        fs: Arc<dyn SegmentFs>,
    ) -> Result<(Storage, Recovery), StorageError> {
        check_config(&config)?;
        check_segments_dir(segments_dir, &config)?;
        let recovered = recovery::recover(segments_dir, cluster, fs.as_ref(), &config)?;
        let state = State {
            queue: VecDeque::new(),
            queued_records: 0,
            next_seq: 0,
            taken_seq: 0,
            forced_seq: 0,
            durable_seq: 0,
            waited_seq: 0,
            plugs: 0,
            plugged_at: Instant::now(),
            poisoned: None,
            closing: false,
            tail: recovered.tail,
        };
        let shared = Arc::new(Shared {
            cluster,
            config,
            fs,
            state: Mutex::new(state),
            work: Condvar::new(),
            durable: Condvar::new(),
            space: Condvar::new(),
            files: open_files::OpenFiles::new(recovered.files),
            records_written: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            syncs: AtomicU64::new(recovered.syncs),
            segments_created: AtomicU64::new(recovered.segments_created),
            durable_waker: Mutex::new(None),
        });
        let writer = match recovered.current {
            // Read-only: no writer thread, nothing can ever be written.
            None => None,
            Some(current) => Some(writer::spawn(Arc::clone(&shared), current).map_err(
                |source| StorageError::Io {
                    path: segments_dir.to_path_buf(),
                    source,
                },
            )?),
        };
        Ok((Storage { shared, writer }, recovered.recovery))
    }

    /// Enqueues one record, in log order; returns at once (blocks only while
    /// the queue is full). `tree_after` is the Merkle (size, root) after this
    /// record, kept so a seal written after it carries the root.
    ///
    /// Refuses (nothing written) a record that is not the next link of the
    /// chain: an Op must be op `last + 1` with the last op's checksum as
    /// parent and the tree size as global position; a Certificate must
    /// certify an op already submitted; Seals are written by storage only.
    pub fn submit(&self, record: Record, tree_after: (u64, Hash)) -> Result<Ticket, StorageError> {
        self.enqueue(record, tree_after, false)
    }

    /// Like [`Storage::submit`] (same order, same checks), for a record
    /// nobody needs to wait for: it starts no write + fdatasync of its own.
    /// It is written, in submit order, with the next batch that holds a
    /// `submit`ted record, on `flush` or `close`, when its ticket is waited
    /// on, or at the latest [`LAZY_DELAY_MS_MAX`] after it was queued.
    pub fn submit_lazy(
        &self,
        record: Record,
        tree_after: (u64, Hash),
    ) -> Result<Ticket, StorageError> {
        self.enqueue(record, tree_after, true)
    }

    fn enqueue(
        &self,
        record: Record,
        tree_after: (u64, Hash),
        lazy: bool,
    ) -> Result<Ticket, StorageError> {
        if self.shared.config.read_only {
            return Err(StorageError::Rejected(
                "storage is open read-only".to_string(),
            ));
        }
        check_record_alone(&record, self.shared.cluster)?;
        let bytes = record.encode();
        let mut state = self.shared.lock();
        loop {
            if let Some(reason) = &state.poisoned {
                return Err(StorageError::Poisoned(reason.clone()));
            }
            if state.closing {
                return Err(StorageError::Closed);
            }
            if state.queued_records < self.shared.config.queue_records_max {
                break;
            }
            state = self
                .shared
                .space
                .wait(state)
                .expect("storage lock is never held across a panic");
        }
        check_chain(&state.tail, &record.header, tree_after)?;
        let location = place(
            &mut state,
            &self.shared,
            &record.header,
            bytes.len() as u64,
            tree_after,
        );
        let seq = state.next_seq;
        state.next_seq += 1;
        state.queued_records += 1;
        state.queue.push_back(Queued {
            item: Item::Record { seq, bytes },
            at: Instant::now(),
        });
        if !lazy {
            // Everything before it (lazy records included) goes in its batch.
            state.forced_seq = seq + 1;
        }
        self.shared.work.notify_one();
        Ok(Ticket { seq, location })
    }

    /// Blocks until the ticket's record is fdatasync'ed; concurrent waiters
    /// share one fdatasync. A record made durable before a failure is still
    /// reported durable; later ones get `Poisoned`.
    pub fn wait_durable(&self, ticket: Ticket) -> Result<RecordLocation, StorageError> {
        let mut state = self.shared.lock();
        self.force(&mut state, ticket.seq + 1);
        loop {
            if state.durable_seq > ticket.seq {
                return Ok(ticket.location);
            }
            if let Some(reason) = &state.poisoned {
                return Err(StorageError::Poisoned(reason.clone()));
            }
            state = self
                .shared
                .durable
                .wait(state)
                .expect("storage lock is never held across a panic");
        }
    }

    /// Waits until everything submitted so far is durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        let mut state = self.shared.lock();
        let target = state.next_seq;
        self.force(&mut state, target);
        loop {
            if let Some(reason) = &state.poisoned {
                return Err(StorageError::Poisoned(reason.clone()));
            }
            if state.durable_seq >= target {
                return Ok(());
            }
            state = self
                .shared
                .durable
                .wait(state)
                .expect("storage lock is never held across a panic");
        }
    }

    /// A handle that waits for records to become durable without forcing a
    /// write (a lazy record stays lazy). The audit index holds back a
    /// certificate's row until its record is durable through it.
    /// Calls `waker` after every batch that became durable (and when the
    /// store fails), so a caller can see tickets through with
    /// [`DurableProbe::is_durable`] instead of blocking on them.
    pub fn set_durable_waker(&self, waker: DurableWaker) {
        *self
            .shared
            .durable_waker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(waker);
    }

    pub fn durable_probe(&self) -> DurableProbe {
        DurableProbe(Arc::clone(&self.shared))
    }

    /// Makes the writer write every record below `seq` without waiting for
    /// more (a caller blocks on it: no plug holds it back).
    fn force(&self, state: &mut State, seq: u64) {
        state.waited_seq = state.waited_seq.max(seq);
        if seq > state.forced_seq && seq > state.durable_seq {
            state.forced_seq = seq;
        }
        self.shared.work.notify_one();
    }

    /// Holds back the writer until the returned plug is dropped (or
    /// [`PLUG_MS_MAX`] passes), so the records one step of the replica
    /// submits (an append's op and the trail op that closes its group, a
    /// burst of peers' prepares) share one write and one fdatasync instead
    /// of the first going out alone. Plugs nest; waiters are never held.
    pub fn plug(&self) -> Plug {
        let mut state = self.shared.lock();
        if state.plugs == 0 {
            state.plugged_at = Instant::now();
        }
        state.plugs += 1;
        Plug(Arc::clone(&self.shared))
    }

    /// Reads the record at `location` and checks both its checksums.
    pub fn read(&self, location: RecordLocation) -> Result<Record, StorageError> {
        let path = self.shared.fs.path(location.segment);
        let file = self.file(location.segment)?;
        let mut bytes = vec![0u8; location.len as usize];
        file.read_exact_at(&mut bytes, location.offset)
            .map_err(|source| StorageError::Io {
                path: path.clone(),
                source,
            })?;
        Record::decode(&bytes, location.offset).map_err(|error| StorageError::Corrupt {
            file: path,
            offset: location.offset,
            reason: error.to_string(),
        })
    }

    /// Tells storage the Merkle (size, root) after the last recovered record,
    /// so the first record after a reopen may roll the segment over. Without
    /// it, that first record goes into the current segment regardless of size.
    pub fn resume_tree(&self, tree: (u64, Hash)) -> Result<(), StorageError> {
        let mut state = self.shared.lock();
        if tree.0 != state.tail.chain.tree_size {
            return Err(StorageError::Rejected(format!(
                "tree size {} is not the log's tree size {}",
                tree.0, state.tail.chain.tree_size
            )));
        }
        state.tail.tree = Some(tree);
        Ok(())
    }

    /// Counters since open.
    pub fn stats(&self) -> StorageStats {
        StorageStats {
            records: self.shared.records_written.load(Ordering::SeqCst),
            batches: self.shared.batches.load(Ordering::SeqCst),
            syncs: self.shared.syncs.load(Ordering::SeqCst),
            segments_created: self.shared.segments_created.load(Ordering::SeqCst),
        }
    }

    /// Writes and syncs everything submitted, then stops the writer.
    pub fn close(mut self) -> Result<(), StorageError> {
        self.stop();
        match self.shared.lock().poisoned.clone() {
            Some(reason) => Err(StorageError::Poisoned(reason)),
            None => Ok(()),
        }
    }

    fn stop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.work.notify_all();
        self.shared.space.notify_all();
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            let mut state = self.shared.lock();
            state
                .poisoned
                .get_or_insert_with(|| "the writer thread panicked".to_string());
            self.shared.durable.notify_all();
        }
    }

    fn file(&self, segment: u64) -> Result<Arc<dyn SegmentFile>, StorageError> {
        if let Some(file) = self.shared.files.get(segment) {
            return Ok(file);
        }
        let file = self
            .shared
            .fs
            .open_read(segment)
            .map_err(|source| StorageError::Io {
                path: self.shared.fs.path(segment),
                source,
            })?;
        Ok(self.shared.files.insert(segment, file))
    }
}

/// Waits for a [`Ticket`] of one open store to become durable, without
/// forcing its write (see [`Storage::durable_probe`]).
#[derive(Clone)]
pub struct DurableProbe(Arc<Shared>);

impl std::fmt::Debug for DurableProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DurableProbe")
    }
}

impl DurableProbe {
    /// Whether `ticket`'s record is fdatasync'ed now (never waits).
    /// `Err`: the store was poisoned or closed before it became durable.
    pub fn is_durable(&self, ticket: Ticket) -> Result<bool, StorageError> {
        self.wait(ticket, std::time::Duration::ZERO)
    }

    /// Waits up to `timeout` for `ticket`'s record to be fdatasync'ed.
    /// `Ok(true)`: durable; `Ok(false)`: not yet; `Err`: the store was
    /// poisoned or closed before the record became durable.
    pub fn wait(&self, ticket: Ticket, timeout: std::time::Duration) -> Result<bool, StorageError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.0.lock();
        loop {
            if state.durable_seq > ticket.seq {
                return Ok(true);
            }
            if let Some(reason) = &state.poisoned {
                return Err(StorageError::Poisoned(reason.clone()));
            }
            if state.closing && state.queue.is_empty() && state.taken_seq <= ticket.seq {
                return Err(StorageError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            state = self
                .0
                .durable
                .wait_timeout(state, deadline - now)
                .expect("storage lock is never held across a panic")
                .0;
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A read-only open needs the segments directory: it creates nothing. With a
/// durable op floor, a missing directory is a lost log.
fn check_segments_dir(segments_dir: &Path, config: &StorageConfig) -> Result<(), StorageError> {
    if segments_dir.is_dir() {
        return Ok(());
    }
    if config.durable_op_floor > 0 {
        return Err(StorageError::Corrupt {
            file: segments_dir.to_path_buf(),
            offset: 0,
            reason: format!(
                "ops up to {} were certified but the log ends at op 0 (no segments directory); \
                 nothing was created",
                config.durable_op_floor
            ),
        });
    }
    if config.read_only {
        return Err(StorageError::Io {
            path: segments_dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "segments directory does not exist (a read-only open creates nothing)",
            ),
        });
    }
    Ok(())
}

fn check_config(config: &StorageConfig) -> Result<(), StorageError> {
    if config.segment_bytes_max < SEGMENT_BYTES_MIN {
        return Err(StorageError::Rejected(format!(
            "config: segment_bytes_max {} is below {SEGMENT_BYTES_MIN}",
            config.segment_bytes_max
        )));
    }
    if config.batch_records_max == 0 || config.batch_bytes_max == 0 || config.queue_records_max == 0
    {
        return Err(StorageError::Rejected(
            "config: batch and queue limits must be at least 1".to_string(),
        ));
    }
    Ok(())
}

/// The checks that need no lock: size, cluster, kind rules, body checksum.
fn check_record_alone(record: &Record, cluster: u128) -> Result<(), StorageError> {
    let header = &record.header;
    if record.body.len() > BODY_BYTES_MAX {
        return Err(StorageError::TooLarge {
            bytes: record.body.len() as u64,
            max: BODY_BYTES_MAX as u64,
        });
    }
    if header.kind == RecordKind::Seal {
        return Err(StorageError::Rejected(
            "seal records are written by storage only".to_string(),
        ));
    }
    record.check(cluster).map_err(StorageError::Rejected)
}

/// The chain rules against what was submitted before.
fn check_chain(
    tail: &Tail,
    header: &OpHeader,
    tree_after: (u64, Hash),
) -> Result<(), StorageError> {
    let chain = tail.chain;
    let reject = |reason: String| Err(StorageError::Rejected(reason));
    match header.kind {
        RecordKind::Op => {
            chain
                .check_next_op(header)
                .map_err(StorageError::Rejected)?;
            if tree_after.0 != header.tree_size {
                return reject(format!(
                    "tree_after size {} is not the op's tree size {}",
                    tree_after.0, header.tree_size
                ));
            }
        }
        RecordKind::Certificate => {
            chain
                .check_certified_op(header)
                .map_err(StorageError::Rejected)?;
            if tree_after.0 != chain.tree_size {
                return reject(format!(
                    "tree_after size {} is not the tree size {}",
                    tree_after.0, chain.tree_size
                ));
            }
        }
        RecordKind::Seal => unreachable!("refused by check_record_alone"),
    }
    Ok(())
}

/// Decides where a record of `len` bytes goes, queueing a seal and rollover
/// first when it would take the segment past its limit. Returns its location.
fn place(
    state: &mut State,
    shared: &Shared,
    header: &OpHeader,
    len: u64,
    tree_after: (u64, Hash),
) -> RecordLocation {
    let tail = &state.tail;
    let full = tail.offset + len + SEAL_RECORD_BYTES > shared.config.segment_bytes_max;
    if full
        && tail.records > 0
        && let Some(tree) = tail.tree
    {
        let seal = seal_record(shared.cluster, tail, tree);
        let next = tail.segment + 1;
        state.queue.push_back(Queued {
            item: Item::Roll {
                seal: seal.encode(),
                next,
            },
            at: Instant::now(),
        });
        state.tail = Tail {
            segment: next,
            offset: SEGMENT_HEADER_BYTES as u64,
            records: 0,
            ops: 0,
            ..state.tail.clone()
        };
    }
    let tail = &mut state.tail;
    let location = RecordLocation {
        segment: tail.segment,
        offset: tail.offset,
        len: u32::try_from(len).expect("records are bounded by BODY_BYTES_MAX"),
    };
    tail.offset += len;
    tail.records += 1;
    tail.view = header.view;
    tail.tree = Some(tree_after);
    if header.kind == RecordKind::Op {
        tail.ops += 1;
        tail.chain = ChainTip {
            last_op: header.op,
            last_op_checksum: header.checksum(),
            tree_size: header.tree_size,
        };
    }
    location
}

/// The Seal record closing the tail's segment.
fn seal_record(cluster: u128, tail: &Tail, tree: (u64, Hash)) -> Record {
    assert_eq!(
        tree.0, tail.chain.tree_size,
        "tree after the last record matches the chain"
    );
    let mut header = OpHeader::empty(RecordKind::Seal, cluster);
    header.parent = tail.chain.last_op_checksum;
    header.view = tail.view;
    header.op = tail.chain.last_op;
    header.tree_size = tree.0;
    let body = vellum_audit::record::SealBody {
        tree_root: tree.1,
        record_count: tail.records,
        op_count: tail.ops,
    };
    Record::new(header, body.encode().to_vec())
}
