//! The narrow file interface the segment writer uses, so tests can make a
//! write or an fdatasync fail on demand and see exactly which bytes were
//! synced when the "machine crashed".
//!
//! [`RealFs`] is the production implementation (a directory of segment
//! files). [`FaultFs`] wraps it: it counts syncs, fails writes or syncs when
//! told to, and remembers the synced length of each file. Recovery reads the
//! directory directly through the audit scanner; only writing goes through
//! here.

use std::collections::HashMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vellum_audit::segment::segment_file_name;

/// One segment file, written by the writer at its data end and read at
/// offsets by anyone.
pub trait SegmentFile: Send + Sync + fmt::Debug {
    /// Writes all of `bytes` at `offset` (the writer's data end: records
    /// are never written over, only into the zero window or past the end).
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()>;
    /// Makes every byte written so far durable (fdatasync; it also makes a
    /// changed file length durable, as fdatasync(2) does).
    fn sync_data(&self) -> io::Result<()>;
    /// Reads exactly `buf.len()` bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes zeros over `[from, to)`, which holds no record (the window
    /// after the data end): zero-written, not only allocated, so that a
    /// later write there and its fdatasync change no metadata (fallocate
    /// leaves unwritten extents, whose conversion is again a metadata
    /// update). Durable with the next `sync_data`.
    fn preallocate(&self, from: u64, to: u64) -> io::Result<()>;
    /// Sets the file's length to `len` (a sealed segment is trimmed to its
    /// Seal's end). Durable with the next `sync_data`.
    fn trim(&self, len: u64) -> io::Result<()>;
    /// The file's length now, window included.
    fn file_len(&self) -> io::Result<u64>;
}

/// Zeros written by one `preallocate` write call.
const ZERO_CHUNK_BYTES: usize = 64 * 1024;

/// Writes zeros over `[from, to)` of `file`.
fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let len = usize::try_from(to - at).map_or(ZERO_CHUNK_BYTES, |n| n.min(ZERO_CHUNK_BYTES));
        file.write_all_at(&zeros[..len], at)?;
        at += len as u64;
    }
    Ok(())
}

/// A directory of segment files.
pub trait SegmentFs: Send + Sync + fmt::Debug {
    /// Creates segment `index`, which must not exist yet, empty.
    fn create(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens existing segment `index` to read and write.
    fn open(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens existing segment `index` for reading only (its `append` and
    /// `sync_data` fail); used for reads and by read-only opens, so a
    /// read-only file or mount is enough.
    fn open_read(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>>;
    /// Makes created files durable in the directory (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// The path of segment `index`, for errors.
    fn path(&self, index: u64) -> PathBuf;
}

/// Segment files in a real directory.
#[derive(Debug, Clone)]
pub struct RealFs {
    dir: PathBuf,
}

impl RealFs {
    pub fn new(dir: &Path) -> RealFs {
        RealFs {
            dir: dir.to_path_buf(),
        }
    }
}

#[derive(Debug)]
struct RealFile {
    file: File,
}

impl SegmentFile for RealFile {
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn preallocate(&self, from: u64, to: u64) -> io::Result<()> {
        write_zeros(&self.file, from, to)
    }

    fn trim(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

/// A segment opened for reading: appends and syncs are refused, so a
/// read-only handle can never change the file (fdatasync on a read-only
/// descriptor would otherwise succeed).
#[derive(Debug)]
struct ReadOnlyFile {
    file: File,
}

impl SegmentFile for ReadOnlyFile {
    fn write_at(&self, _bytes: &[u8], _offset: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn sync_data(&self) -> io::Result<()> {
        Err(read_only())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn preallocate(&self, _from: u64, _to: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn trim(&self, _len: u64) -> io::Result<()> {
        Err(read_only())
    }

    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

fn read_only() -> io::Error {
    io::Error::other("segment file is open read-only")
}

impl SegmentFs for RealFs {
    fn create(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(self.path(index))?;
        Ok(Arc::new(RealFile { file }))
    }

    fn open(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(index))?;
        Ok(Arc::new(RealFile { file }))
    }

    fn open_read(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = File::open(self.path(index))?;
        Ok(Arc::new(ReadOnlyFile { file }))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn path(&self, index: u64) -> PathBuf {
        self.dir.join(segment_file_name(index))
    }
}

/// A [`RealFs`] that fails on demand and remembers what was synced.
#[derive(Debug, Clone)]
pub struct FaultFs {
    inner: RealFs,
    state: Arc<FaultState>,
}

#[derive(Debug, Default)]
struct FaultState {
    /// Data syncs that succeed before every later one fails (u64::MAX: never fail).
    syncs_allowed: AtomicU64,
    fail_writes: AtomicBool,
    syncs: AtomicU64,
    /// While true, appends wait (so a test can line up a batch behind them).
    hold_writes: Mutex<bool>,
    released: Condvar,
    /// Appends currently waiting on `hold_writes`.
    held: AtomicU64,
    /// Per segment: (data end written, data end covered by the last
    /// successful sync); the zero window is not data.
    lengths: Mutex<HashMap<u64, (u64, u64)>>,
    /// `preallocate` calls so far.
    preallocations: AtomicU64,
}

impl FaultFs {
    pub fn new(dir: &Path) -> FaultFs {
        let state = FaultState {
            syncs_allowed: AtomicU64::new(u64::MAX),
            ..FaultState::default()
        };
        FaultFs {
            inner: RealFs::new(dir),
            state: Arc::new(state),
        }
    }

    /// From now on, `allowed` more data syncs succeed, then every one fails.
    pub fn fail_syncs_after(&self, allowed: u64) {
        let done = self.state.syncs.load(Ordering::SeqCst);
        self.state
            .syncs_allowed
            .store(done + allowed, Ordering::SeqCst);
    }

    /// Makes every later append fail.
    pub fn fail_writes(&self) {
        self.state.fail_writes.store(true, Ordering::SeqCst);
    }

    /// Makes appends wait until `release_writes`.
    pub fn hold_writes(&self) {
        *self
            .state
            .hold_writes
            .lock()
            .expect("fault fs lock is never held across a panic") = true;
    }

    /// Lets held appends go on.
    pub fn release_writes(&self) {
        *self
            .state
            .hold_writes
            .lock()
            .expect("fault fs lock is never held across a panic") = false;
        self.state.released.notify_all();
    }

    /// Appends waiting on `hold_writes` right now.
    pub fn held_writes(&self) -> u64 {
        self.state.held.load(Ordering::SeqCst)
    }

    /// Successful data syncs so far.
    pub fn syncs(&self) -> u64 {
        self.state.syncs.load(Ordering::SeqCst)
    }

    /// `preallocate` calls so far (the window extended).
    pub fn preallocations(&self) -> u64 {
        self.state.preallocations.load(Ordering::SeqCst)
    }

    /// The data end of segment `index` covered by its last successful sync
    /// (0 if never synced): the file may be longer (its zero window).
    pub fn synced_len(&self, index: u64) -> u64 {
        self.lengths().get(&index).map_or(0, |(_, synced)| *synced)
    }

    fn lengths(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u64, u64)>> {
        self.state
            .lengths
            .lock()
            .expect("fault fs lock is never held across a panic")
    }

    fn wrap(&self, index: u64, inner: Arc<dyn SegmentFile>, len: u64) -> Arc<dyn SegmentFile> {
        self.lengths().insert(index, (len, len));
        Arc::new(FaultFile {
            fs: self.clone(),
            index,
            inner,
        })
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    index: u64,
    inner: Arc<dyn SegmentFile>,
}

impl SegmentFile for FaultFile {
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let state = &self.fs.state;
        let mut hold = state
            .hold_writes
            .lock()
            .expect("fault fs lock is never held across a panic");
        if *hold {
            state.held.fetch_add(1, Ordering::SeqCst);
            while *hold {
                hold = state
                    .released
                    .wait(hold)
                    .expect("fault fs lock is never held across a panic");
            }
            state.held.fetch_sub(1, Ordering::SeqCst);
        }
        drop(hold);
        if self.fs.state.fail_writes.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected write failure"));
        }
        self.inner.write_at(bytes, offset)?;
        // The writer writes only at its data end, so a write says where the
        // data ended: anything past `offset` (an opened file's window) was
        // never synced data.
        let mut lengths = self.fs.lengths();
        let entry = lengths.entry(self.index).or_default();
        entry.0 = offset + bytes.len() as u64;
        entry.1 = entry.1.min(offset);
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let state = &self.fs.state;
        if state.syncs.load(Ordering::SeqCst) >= state.syncs_allowed.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        self.inner.sync_data()?;
        state.syncs.fetch_add(1, Ordering::SeqCst);
        let mut lengths = self.fs.lengths();
        let entry = lengths.entry(self.index).or_default();
        entry.1 = entry.0;
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }

    /// Zeros are not data: the data end (`synced_len`) stays where it is.
    fn preallocate(&self, from: u64, to: u64) -> io::Result<()> {
        self.fs.state.preallocations.fetch_add(1, Ordering::SeqCst);
        self.inner.preallocate(from, to)
    }

    fn trim(&self, len: u64) -> io::Result<()> {
        self.inner.trim(len)?;
        let mut lengths = self.fs.lengths();
        let entry = lengths.entry(self.index).or_default();
        entry.0 = entry.0.min(len);
        entry.1 = entry.1.min(len);
        Ok(())
    }

    fn file_len(&self) -> io::Result<u64> {
        self.inner.file_len()
    }
}

impl SegmentFs for FaultFs {
    fn create(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let file = self.inner.create(index)?;
        Ok(self.wrap(index, file, 0))
    }

    fn open(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        let len = std::fs::metadata(self.path(index))?.len();
        let file = self.inner.open(index)?;
        Ok(self.wrap(index, file, len))
    }

    fn open_read(&self, index: u64) -> io::Result<Arc<dyn SegmentFile>> {
        // Not wrapped: a read-only handle never appends or syncs.
        self.inner.open_read(index)
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.inner.sync_dir()
    }

    fn path(&self, index: u64) -> PathBuf {
        self.inner.path(index)
    }
}
