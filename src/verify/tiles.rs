//! The "stored tiles" check of `vellum verify`: every tile file of the
//! data directory (`tiles/`, C2SP tlog-tiles) compared with the tiles the
//! log's leaf hashes give, as the walk hands them over, in memory bounded
//! by one tile per level.
//!
//! Tiles are a cache the replica rewrites from the log at open, so a
//! missing tile (not written yet, or lost in a crash) is counted, not a
//! failure; a tile that differs from the log, does not decode or holds a
//! hash beyond the log's leaves is a failure named by its path.

use std::path::PathBuf;

use vellum_audit::hash::Hash;
use vellum_audit::report::{Check, FailureKind};
use vellum_audit::tile_dir::{TileBuilder, TileDir, TileDirError};
use vellum_audit::tiles::{TILE_WIDTH, TileId};

/// The check's name in reports.
pub(super) const CHECK_NAME: &str = "stored tiles";
/// Why the check did not run when the log walk stopped early.
pub(super) const NOT_READ: &str =
    "the log could not be read to its end, so its tiles are not known";

/// Stored tiles compared with the log's, leaf by leaf.
pub(super) struct TileAudit {
    dir: TileDir,
    builder: TileBuilder,
    check: Check,
}

impl TileAudit {
    /// The audit of the tiles below `root` (`<data>/tiles`); None when the
    /// directory does not exist (a log written before tiles, or never
    /// certified).
    pub(super) fn new(root: PathBuf) -> Option<TileAudit> {
        root.is_dir().then(|| TileAudit {
            dir: TileDir::new(root),
            builder: TileBuilder::new(),
            check: Check::start(CHECK_NAME),
        })
    }

    /// The next leaf hash of the log, in position order.
    pub(super) fn leaf(&mut self, leaf_hash: Hash) {
        let TileAudit {
            dir,
            builder,
            check,
        } = self;
        builder.push(leaf_hash, |id, hashes| compare(dir, check, id, hashes));
    }

    /// The check, once every leaf was given: the rightmost tile of each
    /// level compared with what is stored of it (any width), and no tile
    /// stored beyond the log.
    pub(super) fn finish(self) -> Check {
        let TileAudit {
            dir,
            builder,
            mut check,
        } = self;
        for level in 0..=builder.levels() {
            let (index, hashes) = builder.open_tile(level);
            let full = TileId::new(level, index, TILE_WIDTH).expect("a full tile is valid");
            if dir.path(full).exists() {
                let message = format!(
                    "the tile is stored but the log has only {} leaves",
                    builder.len()
                );
                check.fail(FailureKind::RootMismatch, place(full), message);
            }
            let open = OpenTile {
                level,
                index,
                hashes,
                leaves: builder.len(),
            };
            partials(&dir, &mut check, &open);
        }
        check.finish()
    }
}

/// The rightmost, not yet full tile of one level of the log's tree.
struct OpenTile<'a> {
    level: u8,
    index: u64,
    hashes: &'a [Hash],
    /// The log's leaves, for messages.
    leaves: u64,
}

/// Each stored partial tile of the open tile's index and level against the
/// first hashes of the open tile.
fn partials(dir: &TileDir, check: &mut Check, open: &OpenTile<'_>) {
    let Ok(entries) = std::fs::read_dir(dir.partial_dir(open.level, open.index)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(width) = name.to_str().and_then(|n| n.parse::<u16>().ok()) else {
            continue;
        };
        let Ok(id) = TileId::new(open.level, open.index, width) else {
            continue;
        };
        match open.hashes.get(..usize::from(width)) {
            Some(expected) => compare(dir, check, id, expected),
            None => check.fail(
                FailureKind::RootMismatch,
                place(id),
                format!(
                    "the tile holds hashes beyond the log's {} leaves",
                    open.leaves
                ),
            ),
        }
    }
}

/// One stored tile against the hashes the log gives it.
fn compare(dir: &TileDir, check: &mut Check, id: TileId, expected: &[Hash]) {
    match dir.read(id) {
        Ok(stored) if stored == expected => check.count("tiles", 1),
        Ok(stored) => {
            let at = stored
                .iter()
                .zip(expected)
                .position(|(s, e)| s != e)
                .unwrap_or(0);
            check.fail(
                FailureKind::RootMismatch,
                place(id),
                format!("hash {at} of the tile differs from the one the log gives"),
            );
        }
        Err(TileDirError::Missing { .. }) => check.count("tiles not stored", 1),
        Err(e @ TileDirError::Torn { .. }) => {
            check.fail(FailureKind::Damaged, place(id), e.to_string());
        }
        Err(e @ TileDirError::Io { .. }) => {
            check.fail(FailureKind::Unreadable, place(id), e.to_string());
        }
    }
}

/// A tile's place in the data directory, as failures name it.
fn place(id: TileId) -> String {
    format!("tiles/{}", id.path())
}
