//! Tiles as files: a directory laid out as the C2SP `tlog-tiles` paths
//! (`tile/<L>/<N>[.p/<W>]` below a root), read by whoever holds it (the
//! replica at open, `vellum verify`, a tool that copied the directory), and
//! tiles built while leaf hashes stream past ([`TileBuilder`]), so a
//! verifier compares stored tiles with the log in one pass and bounded
//! memory.
//!
//! Reading only: the replica's writer (`vellum::log::tiles`) decides when
//! and how tiles are written. A stored tile is never trusted by itself: a
//! reader checks a root computed from tiles against a signed checkpoint, or
//! compares tiles with hashes it computed from the log.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::DecodeError;
use crate::hash::Hash;
use crate::merkle::{MerkleTree, root_from_leaf_hashes};
use crate::tiles::{
    TILE_HEIGHT, TILE_LEVEL_MAX, TILE_WIDTH, TileId, TileReader, decode_hash_tile, tile_from_tree,
};

/// A stored tile that could not be read as a tile.
#[derive(Debug, thiserror::Error)]
pub enum TileDirError {
    /// No file at the tile's path.
    #[error("{}: tile file is missing", path.display())]
    Missing {
        /// Where the tile should be.
        path: PathBuf,
    },
    /// The file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The tile file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file is not a tile of its path's width (torn, cut, grown).
    #[error("{}: {source}", path.display())]
    Torn {
        /// The tile file.
        path: PathBuf,
        /// What the decoder refused.
        #[source]
        source: DecodeError,
    },
}

/// A directory of tile files (`<root>/tile/<L>/<N>[.p/<W>]`).
#[derive(Debug, Clone)]
pub struct TileDir {
    root: PathBuf,
}

impl TileDir {
    /// The tiles below `root` (the directory holding `tile/`).
    pub fn new(root: impl Into<PathBuf>) -> TileDir {
        TileDir { root: root.into() }
    }

    /// The directory holding `tile/`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file of tile `id`.
    pub fn path(&self, id: TileId) -> PathBuf {
        self.root.join(id.path())
    }

    /// The directory of the partial tiles of index `index` at `level`
    /// (`tile/<L>/<N>.p`), whatever their width.
    pub fn partial_dir(&self, level: u8, index: u64) -> PathBuf {
        let some_partial = TileId::new(level, index, 1).expect("width 1 is a valid width");
        self.path(some_partial)
            .parent()
            .expect("a partial tile's path ends in .p/<W>")
            .to_path_buf()
    }

    /// The hashes of tile `id`, checked to be exactly its width.
    pub fn read(&self, id: TileId) -> Result<Vec<Hash>, TileDirError> {
        let path = self.path(id);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(TileDirError::Missing { path });
            }
            Err(source) => return Err(TileDirError::Io { path, source }),
        };
        let hashes = decode_hash_tile(&bytes).map_err(|source| TileDirError::Torn {
            path: path.clone(),
            source,
        })?;
        if hashes.len() != usize::from(id.width()) {
            let reason = format!("{} hashes, not the width {}", hashes.len(), id.width());
            let source = DecodeError::at_byte("hash tile", bytes.len() as u64, reason);
            return Err(TileDirError::Torn { path, source });
        }
        Ok(hashes)
    }
}

impl TileReader for TileDir {
    type Error = TileDirError;

    fn tile(&self, id: TileId) -> Result<Vec<Hash>, TileDirError> {
        self.read(id)
    }
}

/// Every tile of a tree built as its leaf hashes arrive in order, in
/// memory bounded by one tile per level (at most 8 × 256 hashes): a tile
/// is handed out when it becomes full, the partial ones on request.
#[derive(Debug, Clone, Default)]
pub struct TileBuilder {
    /// The hashes of each level's rightmost, not yet full tile.
    levels: Vec<Vec<Hash>>,
    /// Each level's full tiles so far (the index of its open tile).
    full: Vec<u64>,
    len: u64,
}

impl TileBuilder {
    /// A builder of the empty tree.
    pub fn new() -> TileBuilder {
        TileBuilder::default()
    }

    /// The builder of the tree of `size` leaves that `tree` holds, taken
    /// from its right edge (at most one partial tile per level is copied),
    /// so a writer resumes where the stored tiles end without pushing every
    /// leaf again. `None` when the tree has fewer than `size` leaves.
    pub fn resume(tree: &MerkleTree, size: u64) -> Option<TileBuilder> {
        if size > tree.len() {
            return None;
        }
        let mut builder = TileBuilder {
            len: size,
            ..TileBuilder::default()
        };
        for level in 0..=TILE_LEVEL_MAX {
            let count = size
                .checked_shr(TILE_HEIGHT * u32::from(level))
                .unwrap_or(0);
            if count == 0 {
                break;
            }
            let full = count / u64::from(TILE_WIDTH);
            let open = match TileId::in_tree(level, full, size) {
                Some(id) => tile_from_tree(tree, id)?,
                None => Vec::with_capacity(usize::from(TILE_WIDTH)),
            };
            builder.levels.push(open);
            builder.full.push(full);
        }
        Some(builder)
    }

    /// The leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether no leaf was pushed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one leaf hash; `full` sees every tile it completes (its
    /// level-0 tile, and above it each tile the new hash completes).
    pub fn push(&mut self, leaf_hash: Hash, mut full: impl FnMut(TileId, &[Hash])) {
        self.len += 1;
        let mut hash = leaf_hash;
        let mut level = 0usize;
        loop {
            if self.levels.len() == level {
                self.levels
                    .push(Vec::with_capacity(usize::from(TILE_WIDTH)));
                self.full.push(0);
            }
            self.levels[level].push(hash);
            if self.levels[level].len() < usize::from(TILE_WIDTH) {
                return;
            }
            let level_u8 = u8::try_from(level).expect("a u64 tree has at most 8 tile levels");
            let id = TileId::new(level_u8, self.full[level], TILE_WIDTH)
                .expect("a full tile of a u64 tree is a valid tile");
            full(id, &self.levels[level]);
            hash = root_from_leaf_hashes(&self.levels[level]);
            self.levels[level].clear();
            self.full[level] += 1;
            level += 1;
        }
    }

    /// The tile levels the tree so far has (0 for the empty tree).
    pub fn levels(&self) -> u8 {
        u8::try_from(self.levels.len()).expect("a u64 tree has at most 8 tile levels")
    }

    /// The rightmost, not yet full tile of `level`: its index and the
    /// hashes it holds so far (none for a level the tree has not reached).
    pub fn open_tile(&self, level: u8) -> (u64, &[Hash]) {
        let level = usize::from(level);
        match (self.full.get(level), self.levels.get(level)) {
            (Some(index), Some(hashes)) => (*index, hashes.as_slice()),
            _ => (0, &[]),
        }
    }

    /// The partial tiles of the tree so far (one per level whose rightmost
    /// tile is not full), lowest level first.
    pub fn partial_tiles(&self) -> impl Iterator<Item = (TileId, &[Hash])> + '_ {
        (0..self.levels()).filter_map(|level| {
            let (index, hashes) = self.open_tile(level);
            let width = u16::try_from(hashes.len()).expect("a partial tile is below 256");
            let id = TileId::new(level, index, width).ok()?;
            Some((id, hashes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;
    use crate::tiles::tiles_from_leaf_hashes;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Goal: the streaming builder hands out exactly the tiles the batch
        /// layout has, full ones as they complete and the partial ones at the end.
        #[test]
        fn builder_matches_batch_tiles(size in 0u64..70_000) {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            let mut builder = TileBuilder::new();
            let mut built = Vec::new();
            for leaf in &leaves {
                builder.push(*leaf, |id, hashes| built.push((id, hashes.to_vec())));
            }
            built.extend(builder.partial_tiles().map(|(id, h)| (id, h.to_vec())));
            let mut expected = tiles_from_leaf_hashes(&leaves);
            built.sort_by_key(|(id, _)| *id);
            expected.sort_by_key(|(id, _)| *id);
            prop_assert_eq!(builder.len(), size);
            prop_assert_eq!(built, expected);
        }

        /// Goal: a builder resumed from a tree's right edge at any size
        /// hands out, for the leaves after it, the very tiles a builder that
        /// saw every leaf does.
        #[test]
        fn resumed_builder_matches_one_that_saw_every_leaf(
            size in 0u64..70_000,
            cut in any::<u64>(),
        ) {
            let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
            let cut = if size == 0 { 0 } else { cut % (size + 1) };
            let mut tree = MerkleTree::new();
            let mut whole = TileBuilder::new();
            let mut from_whole = Vec::new();
            for (i, leaf) in leaves.iter().enumerate() {
                tree.push(*leaf);
                let after_cut = i as u64 >= cut;
                whole.push(*leaf, |id, h| if after_cut { from_whole.push((id, h.to_vec())) });
            }
            let mut resumed = TileBuilder::resume(&tree, cut).expect("cut within the tree");
            let mut from_resumed = Vec::new();
            for leaf in &leaves[usize::try_from(cut).expect("small")..] {
                resumed.push(*leaf, |id, h| from_resumed.push((id, h.to_vec())));
            }
            let partial = |b: &TileBuilder| -> Vec<(TileId, Vec<Hash>)> {
                b.partial_tiles().map(|(id, h)| (id, h.to_vec())).collect()
            };
            prop_assert_eq!(from_resumed, from_whole);
            prop_assert_eq!(partial(&resumed), partial(&whole));
            prop_assert_eq!(resumed.len(), size);
            prop_assert!(TileBuilder::resume(&tree, size + 1).is_none());
        }
    }
}
