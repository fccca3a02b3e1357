//! The Merkle tree on disk as C2SP `tlog-tiles` (`<data>/tiles/tile/<L>/<N>[.p/<W>]`),
//! written as certificates become durable and checked at open.
//!
//! The tiles are a cache of the log, never its source of truth: a tile is
//! written only for a certified tree size whose certificate record (and so
//! every op record before it) is fdatasync'ed, so no tile ever holds a leaf
//! the log lacks. [`TileStore`] checks and repairs them at open, from the
//! tree rebuilt from the log; after open the `vellum-tiles` thread
//! ([`TileWriter`]) writes them, off the commit path: the commit path only
//! hands it the new leaf hashes of each certified size. Full tiles are written once (temporary file, fsync,
//! rename, fsync of the directory); the rightmost partial tile of each level
//! is rewritten as the tree grows, without fsync, since open rebuilds it
//! when a crash tore or lost it. At open the root computed from the tiles
//! at the newest certificate's size (O(log n) tile reads) is compared with
//! that certificate; when it differs or a tile is missing or torn, the
//! tiles on the right edge are recomputed from the tree rebuilt from the
//! log and the open report names them. A failed tile write never fails an
//! append: writing stops until the next open, which repairs.

use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use vellum_audit::hash::Hash;
use vellum_audit::merkle::{MerkleTree, empty_root};
use vellum_audit::tile_dir::TileDir;
use vellum_audit::tiles::{
    TILE_HEIGHT, TILE_WIDTH, TileId, encode_hash_tile, root_from_tiles, tile_from_tree,
};

mod writer;
pub use writer::{TILES_QUEUED_LEAVES_MAX, TileWriter, TilesHeld};

/// Rewritten tiles an open report names, at most (the rest are counted).
pub const TILES_NAMED_MAX: usize = 8;

/// File mode of tile files: public data (hashes only, no PHI: P3).
const TILE_MODE: u32 = 0o644;

/// A tile write that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct TileWriteError {
    /// The file or directory being written.
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: io::Error,
}

/// What open found in the tile store.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TilesOnOpen {
    /// The tree size the tiles were checked at: the newest certificate's
    /// (0: no certificate, nothing to check).
    pub checked_size: u64,
    /// Why the stored tiles were not taken as they are (a missing or torn
    /// tile, a root that differs from the certificate's); None when their
    /// root matched.
    pub problem: Option<String>,
    /// Tiles written again from the log, the first [`TILES_NAMED_MAX`].
    pub rewritten: Vec<String>,
    /// How many tiles were written again.
    pub rewritten_count: u64,
}

/// The tile files of one data directory and how far they are written.
#[derive(Debug)]
pub struct TileStore {
    dir: TileDir,
    /// The tree size the stored tiles are known to match (None: not known,
    /// so the next write checks the right edge first).
    written: Option<u64>,
    /// A write failed: nothing more is written until the next open.
    failed: bool,
    read_only: bool,
}

impl TileStore {
    /// The store below `root` (`<data>/tiles`); nothing is touched yet.
    pub fn new(root: PathBuf, read_only: bool) -> TileStore {
        TileStore {
            dir: TileDir::new(root),
            written: None,
            failed: false,
            read_only,
        }
    }

    /// The tile files, for readers.
    pub fn dir(&self) -> &TileDir {
        &self.dir
    }

    /// The tree size the stored tiles are known to match, if known.
    pub fn written_size(&self) -> Option<u64> {
        self.written
    }

    /// Checks the stored tiles against the newest certificate's tree size
    /// and root (`certified`, which the caller checked against `tree`) and,
    /// unless read-only, rewrites from `tree` what is missing, torn or
    /// different on the right edge: the partial tile and the last full tile
    /// of each level (O(log n) tiles read when all is well).
    pub fn open_check(&mut self, tree: &MerkleTree, certified: Option<(u64, Hash)>) -> TilesOnOpen {
        let (size, root) = certified.unwrap_or((0, empty_root()));
        let mut report = TilesOnOpen {
            checked_size: size,
            ..TilesOnOpen::default()
        };
        self.written = None;
        if size == 0 {
            self.written = Some(0);
            return report;
        }
        match root_from_tiles(&self.dir, size) {
            Ok(stored) if stored == root => {}
            Ok(_) => {
                report.problem = Some(format!(
                    "the root of the tiles at tree size {size} differs from the certificate's"
                ));
            }
            Err(e) => report.problem = Some(e.to_string()),
        }
        if self.read_only {
            return report;
        }
        match self.write_size(tree, size) {
            Ok(rewritten) => {
                report.rewritten_count = rewritten.len() as u64;
                report.rewritten = rewritten
                    .iter()
                    .take(TILES_NAMED_MAX)
                    .map(TileId::path)
                    .collect();
            }
            Err(e) => {
                self.failed = true;
                let problem = report.problem.take().map_or(String::new(), |p| p + "; ");
                report.problem = Some(format!("{problem}rewriting tiles failed: {e}"));
            }
        }
        report
    }

    /// Writes the tiles of the tree of `size` leaves that differ from what
    /// is stored: the full tiles completed since the last written size (or,
    /// when that is not known, those on the right edge that are missing or
    /// differ) and the partial tile of each level. Returns the tiles
    /// written.
    fn write_size(&mut self, tree: &MerkleTree, size: u64) -> Result<Vec<TileId>, TileWriteError> {
        assert!(
            size <= tree.len(),
            "tiles of size {size} asked of a tree of {} leaves",
            tree.len()
        );
        let mut written = Vec::new();
        for level in 0..=u8::MAX {
            let count = hashes_at_level(size, level);
            if count == 0 {
                break;
            }
            let width = u64::from(TILE_WIDTH);
            let full_end = count / width;
            let before = self.written.map(|w| hashes_at_level(w, level));
            if before == Some(count) {
                continue;
            }
            let full_start = match before {
                Some(before) => before / width,
                None => self.first_stale_full(tree, level, full_end),
            };
            for index in full_start..full_end {
                let id = TileId::new(level, index, TILE_WIDTH).expect("a full tile is valid");
                self.write_full(tree, id)?;
                written.push(id);
            }
            let partial = TileId::in_tree(level, full_end, size);
            // With nothing known (open), an equal stored partial stays.
            if let Some(id) = partial.filter(|id| before.is_some() || !self.holds(tree, *id)) {
                self.write_partial(tree, id)?;
                written.push(id);
            }
        }
        self.written = Some(size);
        Ok(written)
    }

    /// The index after the rightmost full tile at `level` (below `full_end`)
    /// that is stored and equal to the tree's: tiles are written left to
    /// right, each durable before the next, so those before it are too.
    fn first_stale_full(&self, tree: &MerkleTree, level: u8, full_end: u64) -> u64 {
        (0..full_end)
            .rev()
            .find(|index| {
                let id = TileId::new(level, *index, TILE_WIDTH).expect("a full tile is valid");
                self.holds(tree, id)
            })
            .map_or(0, |index| index + 1)
    }

    /// Whether tile `id` is stored whole and equal to the tree's.
    fn holds(&self, tree: &MerkleTree, id: TileId) -> bool {
        let stored = self.dir.read(id).ok();
        stored.is_some() && stored == tile_from_tree(tree, id)
    }

    fn write_full(&self, tree: &MerkleTree, id: TileId) -> Result<(), TileWriteError> {
        let hashes = tile_from_tree(tree, id).expect("the tree holds every tile below its size");
        write_full(&self.dir, id, &hashes)
    }

    fn write_partial(&self, tree: &MerkleTree, id: TileId) -> Result<(), TileWriteError> {
        let hashes = tile_from_tree(tree, id).expect("the tree holds every tile below its size");
        write_partial(&self.dir, id, &hashes)
    }
}

/// Writes a full tile durably, then drops the partial tiles it replaces.
fn write_full(dir: &TileDir, id: TileId, hashes: &[Hash]) -> Result<(), TileWriteError> {
    assert_eq!(hashes.len(), usize::from(id.width()), "tile {id}");
    let path = dir.path(id);
    ensure_dir(parent(&path))?;
    crate::fsutil::replace_durable(&path, &encode_hash_tile(hashes), TILE_MODE).map_err(
        |source| TileWriteError {
            path: path.clone(),
            source,
        },
    )?;
    let partials = dir.partial_dir(id.level(), id.index());
    match std::fs::remove_dir_all(&partials) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(TileWriteError {
            path: partials,
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Writes a partial tile (temporary file and rename, no fsync: open
/// rebuilds a lost or torn one), then drops the narrower ones.
fn write_partial(tiles: &TileDir, id: TileId, hashes: &[Hash]) -> Result<(), TileWriteError> {
    assert_eq!(hashes.len(), usize::from(id.width()), "tile {id}");
    let path = tiles.path(id);
    let dir = parent(&path);
    ensure_dir(dir)?;
    let temp = path.with_extension("tmp");
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| TileWriteError { path, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(TILE_MODE)
        .open(&temp)
        .map_err(io_error(&temp))?;
    file.write_all(&encode_hash_tile(hashes))
        .map_err(io_error(&temp))?;
    drop(file);
    std::fs::rename(&temp, &path).map_err(io_error(&path))?;
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        if entry.path() != path {
            std::fs::remove_file(entry.path()).map_err(io_error(&entry.path()))?;
        }
    }
    Ok(())
}

/// How many hashes level `level` of the tree of `size` leaves has.
fn hashes_at_level(size: u64, level: u8) -> u64 {
    size.checked_shr(TILE_HEIGHT * u32::from(level))
        .unwrap_or(0)
}

fn parent(path: &Path) -> &Path {
    path.parent().expect("a tile path has a directory")
}

/// Creates `dir` and its missing parents, fsyncing each parent a new
/// directory was made in, so a durable tile is never lost with its
/// directory's entry.
fn ensure_dir(dir: &Path) -> Result<(), TileWriteError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(up) = dir.parent() {
        ensure_dir(up)?;
    }
    let error = |source| TileWriteError {
        path: dir.to_path_buf(),
        source,
    };
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(error(e)),
        _ => {}
    }
    crate::fsutil::sync_parent(dir).map_err(error)
}

#[cfg(test)]
mod tests;
