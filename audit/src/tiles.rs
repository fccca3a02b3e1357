//! The Merkle tree of [`crate::merkle`] laid out as C2SP `tlog-tiles`, so any
//! tool that speaks tlog-tiles can follow and audit a Vellum log.
//!
//! Facts and formats from the C2SP specification "Tiled Transparency Logs"
//! (<https://c2sp.org/tlog-tiles>, `tlog-tiles.md` in the C2SP/C2SP
//! repository): tiles of height 8 (256 hashes, 8,192 bytes when full); the
//! level-`l` tile `n` holds `MTH(D[(n·256 + i)·256^l : (n·256 + i + 1)·256^l])`
//! for `i` in `0..256`; the rightmost tile of each level is partial, with
//! `floor(s / 256^l) mod 256` hashes for a tree of size `s`, and empty tiles do
//! not exist; paths are `tile/<L>/<N>[.p/<W>]` and `tile/entries/<N>[.p/<W>]`
//! with `<N>` in zero-padded 3-digit path elements, all but the last prefixed
//! `x`; an entry bundle is a sequence of big-endian u16 length-prefixed
//! entries.
//!
//! This module is a library only: paths, which tiles a tree size has, the
//! hashes each tile holds, root and proofs computed from nothing but a
//! [`TileReader`], and the byte encodings. Nothing here writes tiles to disk
//! or serves them.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::hash::BuildHasher;

use crate::error::DecodeError;
use crate::hash::Hash;
use crate::merkle::{self, ProofError, Subtrees, root_from_leaf_hashes};

/// Tree levels one tile spans: a tile is a subtree of height 8.
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile (2^[`TILE_HEIGHT`]); also the entries in a full
/// entry bundle.
pub const TILE_WIDTH: u16 = 256;
/// The highest level a tile path may name (the specification's bound; a tree
/// of u64 size has tiles up to level 7 only).
pub const TILE_LEVEL_MAX: u8 = 63;
/// The longest entry an entry bundle can carry: its u16 length prefix.
pub const ENTRY_BYTES_MAX: usize = u16::MAX as usize;

const HASH_BYTES: usize = 32;
/// The longest decimal a path element may spell (level, width): 3 digits
/// are enough for both bounds, so longer numbers are refused before parsing.
const SMALL_DECIMAL_DIGITS_MAX: usize = 3;

/// A tile's coordinates: its level, its index within the level, and its
/// width in hashes (256 for a full tile, 1..=255 for a partial one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TileId {
    level: u8,
    index: u64,
    width: u16,
}

/// The coordinates of an entry bundle: the same index and width as the
/// level-0 tile whose leaf hashes its entries hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryBundleId {
    index: u64,
    width: u16,
}

/// Coordinates no tile can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TileIdError {
    /// A level above [`TILE_LEVEL_MAX`].
    #[error("tile level {0} is above {TILE_LEVEL_MAX}")]
    LevelTooHigh(u8),
    /// A width outside 1..=256.
    #[error("tile width {0} is not in 1..=256")]
    BadWidth(u16),
}

/// A tile or entry bundle path that is not the one canonical spelling of any
/// coordinates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tile path {path:?}: {reason}")]
pub struct TilePathError {
    /// The refused path.
    pub path: String,
    /// What was wrong, lowercase.
    pub reason: &'static str,
}

fn check_width(width: u16) -> Result<(), TileIdError> {
    if !(1..=TILE_WIDTH).contains(&width) {
        return Err(TileIdError::BadWidth(width));
    }
    Ok(())
}

impl TileId {
    /// The tile at `level`, `index` with `width` hashes.
    pub fn new(level: u8, index: u64, width: u16) -> Result<Self, TileIdError> {
        if level > TILE_LEVEL_MAX {
            return Err(TileIdError::LevelTooHigh(level));
        }
        check_width(width)?;
        Ok(Self {
            level,
            index,
            width,
        })
    }

    /// The tile at `level`, `index` as the tree of `size` leaves has it
    /// (full, or partial at the right edge), or `None` if that tree has no
    /// hash there.
    pub fn in_tree(level: u8, index: u64, size: u64) -> Option<Self> {
        let count = hashes_at_level(size, level);
        let start = index.checked_mul(u64::from(TILE_WIDTH))?;
        let left = count.checked_sub(start).filter(|left| *left > 0)?;
        let width = u16::try_from(left.min(u64::from(TILE_WIDTH)))
            .expect("the width is at most TILE_WIDTH");
        Some(Self {
            level,
            index,
            width,
        })
    }

    /// Whether some tree of at most `size` leaves has this tile: every hash
    /// it holds is a complete subtree of the tree of `size` leaves. For a
    /// full tile that is the tree of `size` itself; a partial tile of width
    /// `W` is the tile of the tree sizes whose level has exactly
    /// `index·256 + W` hashes, the smallest of which is at most `size`. A
    /// log that serves tiles of its newest checkpoint serves so every
    /// partial tile of an older checkpoint too.
    pub fn fits(&self, size: u64) -> bool {
        self.index
            .checked_mul(u64::from(TILE_WIDTH))
            .and_then(|start| start.checked_add(u64::from(self.width)))
            .is_some_and(|end| end <= hashes_at_level(size, self.level))
    }

    /// The leaves below this tile, `[start, end)`: those its hashes cover
    /// (None if that range does not fit a u64, for a tile no u64 tree has).
    pub fn leaf_range(&self) -> Option<(u64, u64)> {
        let shift = TILE_HEIGHT * u32::from(self.level);
        let first_hash = self.index.checked_mul(u64::from(TILE_WIDTH))?;
        let end_hash = first_hash.checked_add(u64::from(self.width))?;
        let scale = 1u64.checked_shl(shift)?;
        Some((first_hash.checked_mul(scale)?, end_hash.checked_mul(scale)?))
    }

    /// The level: 0 holds leaf hashes, level `l` hashes of subtrees of
    /// 256^l leaves.
    pub fn level(&self) -> u8 {
        self.level
    }

    /// The index within the level.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The number of hashes (256 for a full tile).
    pub fn width(&self) -> u16 {
        self.width
    }

    /// Whether the tile is partial (fewer than 256 hashes).
    pub fn is_partial(&self) -> bool {
        self.width < TILE_WIDTH
    }

    /// The path `tile/<L>/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        let mut out = format!("tile/{}/", self.level);
        write_index_and_width(&mut out, self.index, self.width);
        out
    }

    /// The coordinates `path` spells, refusing every spelling but the one
    /// [`TileId::path`] writes.
    pub fn parse(path: &str) -> Result<Self, TilePathError> {
        let refuse = |reason| TilePathError {
            path: path.to_owned(),
            reason,
        };
        let rest = path
            .strip_prefix("tile/")
            .ok_or_else(|| refuse("does not start with tile/"))?;
        let (level, rest) = rest.split_once('/').ok_or_else(|| refuse("no index"))?;
        let level = small_decimal(level).ok_or_else(|| refuse("level is not a decimal"))?;
        let level = u8::try_from(level)
            .ok()
            .filter(|level| *level <= TILE_LEVEL_MAX)
            .ok_or_else(|| refuse("level is above 63"))?;
        let (index, width) = parse_index_and_width(rest).map_err(refuse)?;
        Ok(Self {
            level,
            index,
            width,
        })
    }

    /// The entry bundle beside this tile, for a level-0 tile.
    pub fn entry_bundle(&self) -> Option<EntryBundleId> {
        (self.level == 0).then_some(EntryBundleId {
            index: self.index,
            width: self.width,
        })
    }
}

impl fmt::Display for TileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

impl EntryBundleId {
    /// The bundle `index` with `width` entries.
    pub fn new(index: u64, width: u16) -> Result<Self, TileIdError> {
        check_width(width)?;
        Ok(Self { index, width })
    }

    /// The index (the same as its level-0 tile's).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The number of entries (256 for a full bundle).
    pub fn width(&self) -> u16 {
        self.width
    }

    /// The level-0 tile that holds the leaf hashes of these entries.
    pub fn tile(&self) -> TileId {
        TileId {
            level: 0,
            index: self.index,
            width: self.width,
        }
    }

    /// The path `tile/entries/<N>[.p/<W>]`.
    pub fn path(&self) -> String {
        let mut out = String::from("tile/entries/");
        write_index_and_width(&mut out, self.index, self.width);
        out
    }

    /// The coordinates `path` spells, refusing every spelling but the one
    /// [`EntryBundleId::path`] writes.
    pub fn parse(path: &str) -> Result<Self, TilePathError> {
        let rest = path
            .strip_prefix("tile/entries/")
            .ok_or_else(|| TilePathError {
                path: path.to_owned(),
                reason: "does not start with tile/entries/",
            })?;
        let (index, width) = parse_index_and_width(rest).map_err(|reason| TilePathError {
            path: path.to_owned(),
            reason,
        })?;
        Ok(Self { index, width })
    }
}

impl fmt::Display for EntryBundleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

/// Writes `<N>[.p/<W>]`: the index in 3-digit elements, most significant
/// first, all but the last prefixed `x`.
fn write_index_and_width(out: &mut String, index: u64, width: u16) {
    let mut groups = Vec::with_capacity(7);
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    for (i, group) in groups.iter().rev().enumerate() {
        let prefix = if i + 1 < groups.len() { "x" } else { "" };
        let slash = if i + 1 < groups.len() { "/" } else { "" };
        write!(out, "{prefix}{group:03}{slash}").expect("writing to a String cannot fail");
    }
    if width < TILE_WIDTH {
        write!(out, ".p/{width}").expect("writing to a String cannot fail");
    }
}

/// Parses `<N>[.p/<W>]` as [`write_index_and_width`] writes it, and nothing
/// else: no leading `x000` element, no missing `x`, no element of other than
/// 3 digits, no index above u64, no width 0, 256 or with leading zeros, no
/// trailing or doubled slash.
fn parse_index_and_width(text: &str) -> Result<(u64, u16), &'static str> {
    let mut elements = text.split('/');
    let mut index = 0u64;
    let mut first = true;
    loop {
        let element = elements.next().ok_or("index has no last element")?;
        let (digits, last) = match element.strip_prefix('x') {
            Some(digits) => (digits, false),
            None => (element.strip_suffix(".p").unwrap_or(element), true),
        };
        let group = three_digits(digits).ok_or("index element is not 3 digits")?;
        if first && !last && group == 0 {
            return Err("index has a leading zero element");
        }
        index = index
            .checked_mul(1000)
            .and_then(|index| index.checked_add(group))
            .ok_or("index is above u64")?;
        first = false;
        if !last {
            continue;
        }
        let width = if element.ends_with(".p") {
            let width = elements.next().ok_or("partial tile without a width")?;
            small_decimal(width)
                .filter(|width| (1..u64::from(TILE_WIDTH)).contains(width))
                .ok_or("width is not a decimal in 1..=255")?
        } else {
            u64::from(TILE_WIDTH)
        };
        if elements.next().is_some() {
            return Err("path elements after the tile");
        }
        let width = u16::try_from(width).expect("the width is below TILE_WIDTH");
        return Ok((index, width));
    }
}

/// Exactly three ASCII digits.
fn three_digits(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(bytes.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A decimal of at most three digits with no leading zero ("0" itself is
/// fine): the spelling the specification requires of levels and widths.
fn small_decimal(text: &str) -> Option<u64> {
    let bytes = text.as_bytes();
    let canonical = !bytes.is_empty()
        && bytes.len() <= SMALL_DECIMAL_DIGITS_MAX
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes[0] != b'0' || bytes.len() == 1);
    canonical.then(|| bytes.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// How many hashes level `level` of the tree of `size` leaves has: one per
/// complete subtree of 256^level leaves.
fn hashes_at_level(size: u64, level: u8) -> u64 {
    size.checked_shr(TILE_HEIGHT * u32::from(level))
        .unwrap_or(0)
}

/// Every tile the tree of `size` leaves has, level by level from 0, each
/// level's full tiles in index order and then its partial tile if any.
pub fn tiles_for_size(size: u64) -> impl Iterator<Item = TileId> {
    (0..=TILE_LEVEL_MAX)
        .take_while(move |level| hashes_at_level(size, *level) > 0)
        .flat_map(move |level| {
            let count = hashes_at_level(size, level);
            let tiles = count.div_ceil(u64::from(TILE_WIDTH));
            (0..tiles).map(move |index| {
                TileId::in_tree(level, index, size).expect("every index below the count has hashes")
            })
        })
}

/// Every tile of the tree over `leaf_hashes` with the hashes it holds, in
/// the order of [`tiles_for_size`]. Level 0 holds the leaf hashes; each hash
/// of level `l + 1` is the MTH of a full tile of level `l`. O(n).
pub fn tiles_from_leaf_hashes(leaf_hashes: &[Hash]) -> Vec<(TileId, Vec<Hash>)> {
    let width = usize::from(TILE_WIDTH);
    let mut tiles = Vec::new();
    let mut level_hashes = leaf_hashes.to_vec();
    let mut level = 0u8;
    while !level_hashes.is_empty() {
        for (index, hashes) in level_hashes.chunks(width).enumerate() {
            let id = TileId {
                level,
                index: index as u64,
                width: u16::try_from(hashes.len()).expect("a chunk holds at most TILE_WIDTH"),
            };
            tiles.push((id, hashes.to_vec()));
        }
        level_hashes = level_hashes
            .chunks_exact(width)
            .map(root_from_leaf_hashes)
            .collect();
        level += 1;
    }
    tiles
}

/// The hashes of `tile` read from the in-memory tree (each is a complete
/// subtree it stores), or `None` if the tree does not hold them all. O(width).
pub fn tile_from_tree(tree: &merkle::MerkleTree, tile: TileId) -> Option<Vec<Hash>> {
    let height = TILE_HEIGHT * u32::from(tile.level);
    let first = tile.index.checked_mul(u64::from(TILE_WIDTH))?;
    (0..u64::from(tile.width))
        .map(|i| tree.subtree(height, first.checked_add(i)?))
        .collect()
}

/// Where tiles come from: a directory, an HTTP client, a map in memory.
/// Everything below reads the tree through this alone.
pub trait TileReader {
    /// Why a tile could not be read (missing, I/O, ...).
    type Error: std::error::Error + 'static;

    /// The hashes of tile `id`, as stored (the callers check the count).
    fn tile(&self, id: TileId) -> Result<Vec<Hash>, Self::Error>;
}

/// A tile an in-memory reader does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("tile {0} is missing")]
pub struct MissingTile(pub TileId);

/// A map from tile to hashes is a reader (e.g. from [`tiles_from_leaf_hashes`]).
impl<S: BuildHasher> TileReader for HashMap<TileId, Vec<Hash>, S> {
    type Error = MissingTile;

    fn tile(&self, id: TileId) -> Result<Vec<Hash>, MissingTile> {
        self.get(&id).cloned().ok_or(MissingTile(id))
    }
}

/// Why a hash, root or proof could not be computed from tiles.
#[derive(Debug, thiserror::Error)]
pub enum TileError<E: std::error::Error + 'static> {
    /// The reader could not give the tile.
    #[error("reading tile {tile}: {source}")]
    Read {
        /// The tile asked for.
        tile: TileId,
        /// The reader's error.
        #[source]
        source: E,
    },
    /// The reader gave a tile with more or fewer hashes than its width.
    #[error("tile {tile} holds {actual} hashes, not its width {expected}")]
    WrongWidth {
        /// The tile asked for.
        tile: TileId,
        /// Its width.
        expected: u16,
        /// The hashes the reader gave.
        actual: usize,
    },
    /// A subtree that is not complete inside the tree size.
    #[error("subtree of height {height} at index {index} is not complete in a tree of {size}")]
    NotInTree {
        /// The subtree's height.
        height: u32,
        /// The subtree's index at its height.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// Arguments no proof exists for (index or sizes out of range).
    #[error(transparent)]
    Proof(#[from] ProofError),
}

/// The tree of `size` leaves seen through a reader. Keeps the tiles it read,
/// so one root or proof reads each tile once: a proof touches at most a few
/// tiles per level and a u64 tree has 8 levels, so the set stays small.
struct TiledTree<'r, R> {
    reader: &'r R,
    size: u64,
    read: Vec<(TileId, Vec<Hash>)>,
}

impl<'r, R: TileReader> TiledTree<'r, R> {
    fn new(reader: &'r R, size: u64) -> Self {
        Self {
            reader,
            size,
            read: Vec::new(),
        }
    }

    /// The hashes of `tile`, read once and checked against its width.
    fn hashes(&mut self, tile: TileId) -> Result<&[Hash], TileError<R::Error>> {
        let at = match self.read.iter().position(|(id, _)| *id == tile) {
            Some(at) => at,
            None => {
                let hashes = self
                    .reader
                    .tile(tile)
                    .map_err(|source| TileError::Read { tile, source })?;
                if hashes.len() != usize::from(tile.width) {
                    return Err(TileError::WrongWidth {
                        tile,
                        expected: tile.width,
                        actual: hashes.len(),
                    });
                }
                self.read.push((tile, hashes));
                self.read.len() - 1
            }
        };
        Ok(&self.read[at].1)
    }
}

impl<R: TileReader> Subtrees for TiledTree<'_, R> {
    type Error = TileError<R::Error>;

    /// A subtree of height `8l + r` is the MTH of 2^r consecutive hashes of
    /// one level-`l` tile (2^r divides 256 and the subtree is aligned): the
    /// stored hash itself when r = 0.
    fn subtree(&mut self, height: u32, index: u64) -> Result<Hash, Self::Error> {
        let size = self.size;
        let not_in_tree = TileError::NotInTree {
            height,
            index,
            size,
        };
        let end = index
            .checked_add(1)
            .and_then(|end| end.checked_mul(1u64.checked_shl(height)?));
        if end.is_none_or(|end| end > size) {
            return Err(not_in_tree);
        }
        let level = u8::try_from(height / TILE_HEIGHT).expect("a u64 subtree height is below 64");
        let below = height % TILE_HEIGHT;
        let first = index << below;
        let width = u64::from(TILE_WIDTH);
        let tile = TileId::in_tree(level, first / width, size)
            .expect("a complete subtree inside the tree lies in one of its tiles");
        let offset = usize::try_from(first % width).expect("an offset in a tile fits usize");
        let hashes = self.hashes(tile)?;
        Ok(root_from_leaf_hashes(
            &hashes[offset..offset + (1 << below)],
        ))
    }
}

/// The hash of the complete subtree of `height` at `index` (over leaves
/// `[index·2^height, (index+1)·2^height)`) in the tree of `size` leaves, from
/// the one tile that holds it or its descendants at the tile level below it.
pub fn subtree_hash_from_tiles<R: TileReader>(
    reader: &R,
    size: u64,
    height: u32,
    index: u64,
) -> Result<Hash, TileError<R::Error>> {
    TiledTree::new(reader, size).subtree(height, index)
}

/// The root of the tree of `size` leaves, from tiles of that size.
pub fn root_from_tiles<R: TileReader>(reader: &R, size: u64) -> Result<Hash, TileError<R::Error>> {
    merkle::root_of(&mut TiledTree::new(reader, size), size)
}

/// The inclusion proof of leaf `index` in the tree of `size` leaves, from
/// tiles of that size: the same hashes as [`merkle::MerkleTree::inclusion_proof`].
pub fn inclusion_proof_from_tiles<R: TileReader>(
    reader: &R,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, TileError<R::Error>> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size }.into());
    }
    merkle::inclusion_path(&mut TiledTree::new(reader, size), index, size)
}

/// The consistency proof from `old_size` to `new_size`, from tiles of
/// `new_size`: the same hashes as [`merkle::MerkleTree::consistency_proof`].
pub fn consistency_proof_from_tiles<R: TileReader>(
    reader: &R,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, TileError<R::Error>> {
    merkle::check_consistency_sizes(old_size, new_size)?;
    merkle::consistency_path(&mut TiledTree::new(reader, new_size), old_size, new_size)
}

/// A hash tile's bytes: its hashes concatenated, 32 bytes each.
///
/// # Panics
/// If `hashes` is empty or longer than a tile: a caller bug, as tiles are
/// built from their [`TileId`].
pub fn encode_hash_tile(hashes: &[Hash]) -> Vec<u8> {
    assert!(
        (1..=usize::from(TILE_WIDTH)).contains(&hashes.len()),
        "a tile holds 1..=256 hashes, not {}",
        hashes.len()
    );
    hashes.concat()
}

/// The hashes of a hash tile's bytes; refuses a length that is not a
/// positive multiple of 32 bytes or holds more than 256 hashes.
pub fn decode_hash_tile(bytes: &[u8]) -> Result<Vec<Hash>, DecodeError> {
    const FORMAT: &str = "hash tile";
    if bytes.is_empty() {
        return Err(DecodeError::at_byte(FORMAT, 0, "empty tile"));
    }
    let whole = bytes.len() - bytes.len() % HASH_BYTES;
    if whole != bytes.len() {
        let reason = format!("{} bytes is not a multiple of 32", bytes.len());
        return Err(DecodeError::at_byte(FORMAT, whole as u64, reason));
    }
    let limit = usize::from(TILE_WIDTH) * HASH_BYTES;
    if bytes.len() > limit {
        let reason = format!("{} hashes, more than 256", bytes.len() / HASH_BYTES);
        return Err(DecodeError::at_byte(FORMAT, limit as u64, reason));
    }
    Ok(bytes
        .chunks_exact(HASH_BYTES)
        .map(|hash| hash.try_into().expect("chunks are 32 bytes"))
        .collect())
}

/// Entries no entry bundle can carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EntryBundleError {
    /// No entries, or more than 256.
    #[error("an entry bundle holds 1..=256 entries, not {0}")]
    BadCount(usize),
    /// An entry longer than its u16 length prefix can say.
    #[error("entry {index} is {len} bytes, above the {ENTRY_BYTES_MAX}-byte limit")]
    EntryTooLong {
        /// The entry's place in the bundle.
        index: usize,
        /// Its length.
        len: usize,
    },
}

/// An entry bundle's bytes: each entry as its big-endian u16 length and
/// then its bytes.
pub fn encode_entry_bundle<E: AsRef<[u8]>>(entries: &[E]) -> Result<Vec<u8>, EntryBundleError> {
    if !(1..=usize::from(TILE_WIDTH)).contains(&entries.len()) {
        return Err(EntryBundleError::BadCount(entries.len()));
    }
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let entry = entry.as_ref();
        let len = u16::try_from(entry.len()).map_err(|_| EntryBundleError::EntryTooLong {
            index,
            len: entry.len(),
        })?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(entry);
    }
    Ok(out)
}

/// The entries of the bundle `id`: exactly its width of them, refusing a
/// bundle cut short (in a length prefix, in an entry, or with fewer entries)
/// and bytes after the last entry.
pub fn decode_entry_bundle(id: EntryBundleId, bytes: &[u8]) -> Result<Vec<Vec<u8>>, DecodeError> {
    const FORMAT: &str = "entry bundle";
    let mut entries = Vec::with_capacity(usize::from(id.width));
    let mut at = 0usize;
    for number in 0..id.width {
        let truncated = |what| {
            let reason = format!("truncated {what} of entry {number} of {}", id.width);
            DecodeError::at_byte(FORMAT, at as u64, reason)
        };
        let prefix = bytes.get(at..at + 2).ok_or_else(|| truncated("length"))?;
        let len = usize::from(u16::from_be_bytes([prefix[0], prefix[1]]));
        let entry = bytes
            .get(at + 2..at + 2 + len)
            .ok_or_else(|| truncated("bytes"))?;
        entries.push(entry.to_vec());
        at += 2 + len;
    }
    if at != bytes.len() {
        let reason = format!("{} bytes after the last entry", bytes.len() - at);
        return Err(DecodeError::at_byte(FORMAT, at as u64, reason));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MerkleTree, leaf_hash, verify_consistency, verify_inclusion};
    use proptest::prelude::*;

    fn tile(level: u8, index: u64, width: u16) -> TileId {
        TileId::new(level, index, width).expect("valid test tile")
    }

    fn leaves(size: u64) -> Vec<Hash> {
        (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    fn tree_and_tiles(size: u64) -> (MerkleTree, HashMap<TileId, Vec<Hash>>) {
        let leaves = leaves(size);
        let mut tree = MerkleTree::new();
        leaves.iter().for_each(|leaf| tree.push(*leaf));
        (tree, tiles_from_leaf_hashes(&leaves).into_iter().collect())
    }

    /// Goal: paths match the examples of the specification text.
    #[test]
    fn paths_match_the_specification_examples() {
        assert_eq!(tile(0, 1_234_067, 256).path(), "tile/0/x001/x234/067");
        assert_eq!(tile(3, 1_234_067, 8).path(), "tile/3/x001/x234/067.p/8");
        assert_eq!(tile(0, 0, 256).path(), "tile/0/000");
        assert_eq!(tile(1, 0, 17).path(), "tile/1/000.p/17");
        assert_eq!(tile(0, 1000, 256).path(), "tile/0/x001/000");
        assert_eq!(tile(63, 999, 255).path(), "tile/63/999.p/255");
        assert_eq!(
            tile(0, u64::MAX, 1).path(),
            "tile/0/x018/x446/x744/x073/x709/x551/615.p/1"
        );
        let bundle = EntryBundleId::new(1_234_067, 112).expect("valid");
        assert_eq!(bundle.path(), "tile/entries/x001/x234/067.p/112");
        assert_eq!(bundle.tile().entry_bundle(), Some(bundle));
        assert_eq!(tile(1, 0, 256).entry_bundle(), None);
        assert_eq!(TileId::new(64, 0, 1), Err(TileIdError::LevelTooHigh(64)));
        assert_eq!(TileId::new(0, 0, 0), Err(TileIdError::BadWidth(0)));
        assert_eq!(EntryBundleId::new(0, 257), Err(TileIdError::BadWidth(257)));
    }

    /// Goal: the tile sets of the specification's examples (70,000 and 256).
    #[test]
    fn tiles_for_size_match_the_specification_examples() {
        let tiles: Vec<TileId> = tiles_for_size(70_000).collect();
        let full_level_0 = tiles.iter().filter(|t| t.level == 0 && !t.is_partial());
        assert_eq!(full_level_0.count(), 273);
        let partial: Vec<TileId> = tiles.iter().filter(|t| t.is_partial()).copied().collect();
        assert_eq!(partial, [tile(0, 273, 112), tile(1, 1, 17), tile(2, 0, 1)]);
        assert!(tiles.contains(&tile(1, 0, 256)));
        assert_eq!(tiles.len(), 273 + 1 + 1 + 1 + 1);
        let tiles: Vec<TileId> = tiles_for_size(256).collect();
        assert_eq!(tiles, [tile(0, 0, 256), tile(1, 0, 1)]);
        assert_eq!(tiles_for_size(0).count(), 0);
        assert_eq!(tiles_for_size(1).collect::<Vec<_>>(), [tile(0, 0, 1)]);
        assert_eq!(TileId::in_tree(7, 0, u64::MAX), Some(tile(7, 0, 255)));
        assert_eq!(TileId::in_tree(8, 0, u64::MAX), None);
        assert_eq!(TileId::in_tree(0, u64::MAX, u64::MAX), None);
    }

    /// Goal: non-canonical spellings of valid coordinates, and malformed
    /// paths, are refused.
    #[test]
    fn non_canonical_paths_are_refused() {
        let refused = [
            "",
            "tile/0/",
            "tile/0/67",
            "tile/0/0067",
            "tile/0/x000/067",
            "tile/0/001/234/067",
            "tile/0/x001/234/067",
            "tile/0/x001/x234/x067",
            "tile/0/X001/067",
            "tile/0/000/",
            "tile/0/000.p/5/",
            "tile/0/000//",
            "tile//000",
            "tile/00/000",
            "tile/01/000",
            "tile/64/000",
            "tile/255/000",
            "tile/-1/000",
            "tile/+1/000",
            "tile/0/000.p/0",
            "tile/0/000.p/256",
            "tile/0/000.p/05",
            "tile/0/000.p/",
            "tile/0/000.p",
            "tile/0/000.p/1000",
            "tile/0/000.P/5",
            "tile/0/x000.p/5",
            "tile/0/x018/x446/x744/x073/x709/x551/616",
            "tile/0/x001/x000/x000/x000/x000/x000/x000/000",
            "tile/0/-01",
            "tile/0/0a1",
            "tile/entries/000",
            "/tile/0/000",
            "tiles/0/000",
            "tile/0/\u{0661}23",
        ];
        for path in refused {
            assert!(TileId::parse(path).is_err(), "accepted {path:?}");
            let entries = path.replacen("tile/0/", "tile/entries/", 1);
            if entries != "tile/entries/000" {
                assert!(
                    EntryBundleId::parse(&entries).is_err(),
                    "accepted {entries:?}"
                );
            }
        }
        assert!(EntryBundleId::parse("tile/0/000").is_err());
        let error = TileId::parse("tile/0/000.p/256").expect_err("refused");
        assert_eq!(error.reason, "width is not a decimal in 1..=255");
    }

    /// Goal: an in-memory reader missing one needed tile gives the typed
    /// error naming that tile, for the root and both proofs.
    #[test]
    fn a_missing_tile_is_named() {
        let (_, mut tiles) = tree_and_tiles(1000);
        let gone = tile(0, 3, 232);
        assert!(tiles.remove(&gone).is_some());
        let named = |error: TileError<MissingTile>| {
            matches!(error, TileError::Read { tile, source: MissingTile(missing) }
                if tile == gone && missing == gone)
        };
        assert!(named(root_from_tiles(&tiles, 1000).expect_err("missing")));
        assert!(named(
            inclusion_proof_from_tiles(&tiles, 0, 1000).expect_err("missing")
        ));
        assert!(named(
            consistency_proof_from_tiles(&tiles, 10, 1000).expect_err("missing")
        ));
        let message = root_from_tiles(&tiles, 1000)
            .expect_err("missing")
            .to_string();
        assert!(message.contains("tile/0/003.p/232"), "{message}");
        // A proof that needs none of that tile still works.
        assert!(consistency_proof_from_tiles(&tiles, 512, 768).is_ok());
    }

    /// Goal: a tile with the wrong number of hashes is a typed error naming it.
    #[test]
    fn a_short_tile_is_named() {
        let (_, mut tiles) = tree_and_tiles(70_000);
        let short = tile(1, 1, 17);
        tiles.get_mut(&short).expect("tile").pop();
        let error = root_from_tiles(&tiles, 70_000).expect_err("short");
        assert!(
            matches!(error, TileError::WrongWidth { tile, expected: 17, actual: 16 } if tile == short),
            "{error}"
        );
    }

    /// Goal: one flipped hash in a tile (level 0, level 1) gives a proof
    /// that fails verification against the true root.
    #[test]
    fn a_flipped_hash_gives_a_failing_proof() {
        let (tree, tiles) = tree_and_tiles(70_000);
        let root = tree.root();
        // Leaf 769's sibling is leaf 768, position 0 of tile 0/3; leaf 0's
        // proof holds [1024, 2048), the MTH of positions 4..8 of tile 1/0.
        // The partial tile 0/273 is under the root's right edge.
        let flips = [
            (tile(0, 3, 256), 0, 769u64),
            (tile(1, 0, 256), 5, 0),
            (tile(0, 273, 112), 3, 0),
        ];
        for (flip, position, leaf) in flips {
            let mut bad = tiles.clone();
            bad.get_mut(&flip).expect("tile")[position][7] ^= 1;
            let proof = inclusion_proof_from_tiles(&bad, leaf, 70_000).expect("proof");
            let leaf_hash = tree.leaf(leaf).expect("leaf");
            assert!(
                verify_inclusion(&leaf_hash, leaf, 70_000, &proof, &root).is_err(),
                "flip in {flip}"
            );
            if flip.is_partial() {
                assert_ne!(root_from_tiles(&bad, 70_000).expect("root"), root);
            }
        }
    }

    /// Goal: coordinates no u64 tree has never fit, never overflow, and the
    /// tree gives no hashes for them.
    #[test]
    fn far_tiles_do_not_fit() {
        let mut tree = MerkleTree::new();
        (0..300u64).for_each(|i| tree.push(leaf_hash(&i.to_le_bytes())));
        for (level, index, width) in [
            (0, u64::MAX, 256),
            (0, u64::MAX / 256, 256),
            (0, u64::MAX / 256 + 1, 1),
            (7, 0, 1),
            (8, 0, 1),
            (63, u64::MAX, 255),
            (0, 1, 45),
            (1, 0, 2),
        ] {
            let id = TileId::new(level, index, width).expect("valid coordinates");
            assert!(!id.fits(300), "{id}");
            assert_eq!(tile_from_tree(&tree, id), None, "{id}");
        }
        assert_eq!(
            TileId::new(63, u64::MAX, 255).expect("valid").leaf_range(),
            None
        );
        assert!(TileId::new(7, 0, 1).expect("valid").fits(u64::MAX));
        assert!(TileId::new(0, 1, 44).expect("valid").fits(300));
        assert!(TileId::new(1, 0, 1).expect("valid").fits(300));
    }

    /// Goal: bad arguments are typed errors, never panics.
    #[test]
    fn bad_arguments_are_errors() {
        let (_, tiles) = tree_and_tiles(300);
        assert!(matches!(
            inclusion_proof_from_tiles(&tiles, 300, 300),
            Err(TileError::Proof(ProofError::IndexOutOfRange { .. }))
        ));
        assert!(matches!(
            consistency_proof_from_tiles(&tiles, 0, 300),
            Err(TileError::Proof(ProofError::OldSizeZero))
        ));
        assert!(matches!(
            consistency_proof_from_tiles(&tiles, 301, 300),
            Err(TileError::Proof(ProofError::OldSizeAfterNew { .. }))
        ));
        for (height, index) in [(0, 300), (8, 1), (9, 0), (63, 0), (64, 0), (0, u64::MAX)] {
            assert!(
                matches!(
                    subtree_hash_from_tiles(&tiles, 300, height, index),
                    Err(TileError::NotInTree { .. })
                ),
                "height {height} index {index}"
            );
        }
        assert_eq!(
            root_from_tiles(&tiles, 0).expect("empty"),
            merkle::empty_root()
        );
    }

    /// Goal: the hash tile codec refuses lengths that are not 1..=256
    /// whole hashes.
    #[test]
    fn hash_tile_decode_refuses_bad_lengths() {
        for len in [0usize, 1, 31, 33, 63, 8191, 8193, 8224] {
            assert!(decode_hash_tile(&vec![7; len]).is_err(), "len {len}");
        }
        assert_eq!(decode_hash_tile(&[9; 8192]).expect("full").len(), 256);
        assert_eq!(decode_hash_tile(&[9; 32]).expect("one"), [[9; 32]]);
    }

    /// Goal: the entry bundle encoder refuses what its format cannot carry.
    #[test]
    fn entry_bundle_encode_refuses_what_it_cannot_carry() {
        let long = vec![0u8; ENTRY_BYTES_MAX + 1];
        assert_eq!(
            encode_entry_bundle(&[&b"a"[..], &long[..]]),
            Err(EntryBundleError::EntryTooLong {
                index: 1,
                len: ENTRY_BYTES_MAX + 1
            })
        );
        let none: [&[u8]; 0] = [];
        assert_eq!(
            encode_entry_bundle(&none),
            Err(EntryBundleError::BadCount(0))
        );
        let many = vec![b"x"; 257];
        assert_eq!(
            encode_entry_bundle(&many),
            Err(EntryBundleError::BadCount(257))
        );
        let max = vec![0u8; ENTRY_BYTES_MAX];
        let bundle = encode_entry_bundle(&[&max]).expect("fits");
        let id = EntryBundleId::new(0, 1).expect("valid");
        assert_eq!(decode_entry_bundle(id, &bundle).expect("decodes"), [max]);
    }

    fn any_tile() -> impl Strategy<Value = TileId> {
        (0..=TILE_LEVEL_MAX, any::<u64>(), 1..=TILE_WIDTH)
            .prop_map(|(level, index, width)| tile(level, index, width))
    }

    /// A reader that records what it was asked, to check which tiles a
    /// root or proof reads.
    struct Recording<'a> {
        tiles: &'a HashMap<TileId, Vec<Hash>>,
        asked: std::cell::RefCell<Vec<TileId>>,
    }

    impl TileReader for Recording<'_> {
        type Error = MissingTile;

        fn tile(&self, id: TileId) -> Result<Vec<Hash>, MissingTile> {
            self.asked.borrow_mut().push(id);
            self.tiles.tile(id)
        }
    }

    impl Recording<'_> {
        /// The tiles asked since the last call; none asked twice.
        fn take_asked(&self) -> Vec<TileId> {
            let asked = self.asked.take();
            let mut unique = asked.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), asked.len(), "a tile read twice: {asked:?}");
            asked
        }
    }

    /// Sizes for the tree properties: mostly small, a few up to 70,000
    /// (three tile levels), so the run stays short.
    fn tree_size() -> impl Strategy<Value = u64> {
        prop_oneof![6 => 1u64..1_500, 1 => 60_000u64..70_001]
    }

    proptest! {
        // Cheap cases, and about one in ten is accepted: run many.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Goal: every path-like string parse accepts is the canonical path
        /// of what it parsed to, so every other spelling is refused.
        #[test]
        fn parse_accepts_only_canonical_paths(
            path in "tile/(entries|0|00|7|07|63|64)/(x(000|[0-9]{3}|[0-9]{2})/){0,3}(000|[0-9]{3}|[0-9]{2})(\\.p/(0|1|01|17|255|256))?/?"
        ) {
            if let Ok(tile) = TileId::parse(&path) {
                prop_assert_eq!(tile.path(), path.clone());
            }
            if let Ok(bundle) = EntryBundleId::parse(&path) {
                prop_assert_eq!(bundle.path(), path);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Goal: parse is the exact inverse of path, for tiles and bundles.
        #[test]
        fn parse_inverts_path(tile in any_tile()) {
            prop_assert_eq!(TileId::parse(&tile.path()), Ok(tile));
            let bundle = EntryBundleId::new(tile.index, tile.width).expect("valid");
            prop_assert_eq!(EntryBundleId::parse(&bundle.path()), Ok(bundle));
            prop_assert!(EntryBundleId::parse(&tile.path()).is_err());
            prop_assert!(TileId::parse(&bundle.path()).is_err());
        }

        /// Goal: each kind of non-canonical edit of a valid path is refused.
        #[test]
        fn edited_paths_are_refused(tile in any_tile(), edit in 0usize..7) {
            let path = tile.path();
            let tail = path.strip_prefix(&format!("tile/{}/", tile.level)).expect("prefix");
            let edited = match edit {
                0 => format!("tile/{}/x000/{tail}", tile.level),
                1 => format!("tile/0{}/{tail}", tile.level),
                2 => format!("{path}/"),
                3 => format!("tile/{}/{tail}", u16::from(tile.level) + 64),
                4 => format!("tile/{}/{}.p/256", tile.level, tail.split(".p/").next().expect("n")),
                5 => format!("tile/{}/{}.p/0", tile.level, tail.split(".p/").next().expect("n")),
                6 if path.contains("/x") => path.replacen("/x", "/", 1),
                _ => format!("tile/{}/{}", tile.level, &tail[1..]),
            };
            prop_assert!(TileId::parse(&edited).is_err(), "accepted {}", edited);
        }

        /// Goal: the tiles built from leaves are exactly tiles_for_size, and
        /// each level-l hash is the MTH of its 256^l leaves.
        #[test]
        fn tiles_hold_the_subtree_hashes(size in 1u64..1_500) {
            let leaves = leaves(size);
            let tiles = tiles_from_leaf_hashes(&leaves);
            let ids: Vec<TileId> = tiles.iter().map(|(id, _)| *id).collect();
            prop_assert_eq!(ids, tiles_for_size(size).collect::<Vec<_>>());
            for (id, hashes) in &tiles {
                prop_assert_eq!(hashes.len(), usize::from(id.width));
                let span = 1usize << (TILE_HEIGHT * u32::from(id.level));
                for (i, hash) in hashes.iter().enumerate() {
                    let first = (id.index as usize * 256 + i) * span;
                    prop_assert_eq!(*hash, root_from_leaf_hashes(&leaves[first..first + span]));
                }
            }
        }

        /// Goal: every tile of a tree size fits that size and every larger
        /// one, and the in-memory tree of the larger size gives its exact
        /// hashes; a partial tile one hash wider, or the tile after it, does
        /// not fit.
        #[test]
        fn tiles_of_older_sizes_fit_and_come_from_the_tree(
            size in 1u64..1_500, more in 0u64..600
        ) {
            let larger = size + more;
            let leaves = leaves(larger);
            let mut tree = MerkleTree::new();
            leaves.iter().for_each(|leaf| tree.push(*leaf));
            for (id, hashes) in tiles_from_leaf_hashes(&leaves[..usize::try_from(size).expect("small")]) {
                prop_assert!(id.fits(size) && id.fits(larger), "{}", id);
                prop_assert_eq!(tile_from_tree(&tree, id), Some(hashes));
                let (start, end) = id.leaf_range().expect("in range");
                let span = 1u64 << (TILE_HEIGHT * u32::from(id.level));
                prop_assert_eq!(start, id.index * 256 * span);
                prop_assert_eq!(end, (id.index * 256 + u64::from(id.width)) * span);
                prop_assert!(end <= size);
                if id.is_partial() {
                    let wider = TileId::new(id.level, id.index, id.width + 1).expect("valid");
                    let next = TileId::new(id.level, id.index + 1, 1).expect("valid");
                    prop_assert!(!wider.fits(size), "{}", wider);
                    prop_assert!(!next.fits(size), "{}", next);
                }
            }
        }

        /// Goal: the root and proofs from tiles equal the in-memory tree's
        /// and verify, reading each tile once and a few tiles per level.
        #[test]
        fn tiles_give_the_trees_root_and_proofs(
            size in tree_size(), picks in prop::collection::vec(any::<u64>(), 6)
        ) {
            let (tree, map) = tree_and_tiles(size);
            let tiles = Recording { tiles: &map, asked: Default::default() };
            let levels = tiles_for_size(size).map(|t| t.level).max().expect("tiles") as usize + 1;
            let root = root_from_tiles(&tiles, size).expect("root");
            prop_assert_eq!(root, tree.root());
            prop_assert!(tiles.take_asked().len() <= levels);
            for pick in picks {
                let index = pick % size;
                let proof = inclusion_proof_from_tiles(&tiles, index, size).expect("proof");
                prop_assert_eq!(&proof, &tree.inclusion_proof(index, size).expect("proof"));
                prop_assert!(tiles.take_asked().len() <= 2 * levels);
                let leaf = tree.leaf(index).expect("leaf");
                prop_assert!(verify_inclusion(&leaf, index, size, &proof, &root).is_ok());
                prop_assert_eq!(subtree_hash_from_tiles(&tiles, size, 0, index).expect("leaf"), leaf);
                tiles.take_asked();
                let old = 1 + pick.rotate_left(17) % size;
                let proof = consistency_proof_from_tiles(&tiles, old, size).expect("proof");
                prop_assert_eq!(&proof, &tree.consistency_proof(old, size).expect("proof"));
                prop_assert!(tiles.take_asked().len() <= 3 * levels);
                let old_root = tree.root_at(old).expect("old root");
                prop_assert!(verify_consistency(old, size, &old_root, &root, &proof).is_ok());
            }
        }

        /// Goal: hash tiles round-trip through their bytes.
        #[test]
        fn hash_tiles_round_trip(hashes in prop::collection::vec(any::<[u8; 32]>(), 1..=256)) {
            let bytes = encode_hash_tile(&hashes);
            prop_assert_eq!(bytes.len(), hashes.len() * 32);
            prop_assert_eq!(decode_hash_tile(&bytes), Ok(hashes));
        }

        /// Goal: bundles round-trip, and every truncation, every extra byte
        /// and every wrong width is refused.
        #[test]
        fn entry_bundles_round_trip_and_refuse_damage(
            entries in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 1..=20),
            extra in any::<u8>(),
        ) {
            let bytes = encode_entry_bundle(&entries).expect("fits");
            let width = u16::try_from(entries.len()).expect("small");
            let id = EntryBundleId::new(5, width).expect("valid");
            prop_assert_eq!(decode_entry_bundle(id, &bytes), Ok(entries.clone()));
            for cut in 0..bytes.len() {
                prop_assert!(decode_entry_bundle(id, &bytes[..cut]).is_err(), "cut at {}", cut);
            }
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(decode_entry_bundle(id, &longer).is_err());
            let wider = EntryBundleId::new(5, width + 1).expect("valid");
            prop_assert!(decode_entry_bundle(wider, &bytes).is_err());
            if width > 1 {
                let narrower = EntryBundleId::new(5, width - 1).expect("valid");
                prop_assert!(decode_entry_bundle(narrower, &bytes).is_err());
            }
        }
    }
}
