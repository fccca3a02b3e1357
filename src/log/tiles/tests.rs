//! The tile store against the in-memory tree: what it writes, what open
//! finds after a crash or damage, and proofs read back from the files.

use std::path::Path;

use proptest::prelude::*;
use vellum_audit::merkle::leaf_hash;
use vellum_audit::tiles::{
    consistency_proof_from_tiles, inclusion_proof_from_tiles, tiles_for_size,
};

use super::*;

fn tree_of(size: u64) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..size {
        tree.push(leaf_hash(&i.to_le_bytes()));
    }
    tree
}

fn certified(tree: &MerkleTree, size: u64) -> Option<(u64, Hash)> {
    Some((size, tree.root_at(size).expect("size within the tree")))
}

/// A store written at `sizes` in turn, as certificates would write it.
fn store_at(root: &Path, tree: &MerkleTree, sizes: &[u64]) -> TileStore {
    let mut store = TileStore::new(root.to_path_buf(), false);
    store.written = Some(0);
    for size in sizes {
        store.write_size(tree, *size).expect("write tiles");
    }
    store
}

/// Every file below `root`, as paths relative to it, sorted.
fn files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else {
                let relative = path.strip_prefix(root).expect("below root");
                out.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn expected_files(size: u64) -> Vec<String> {
    let mut paths: Vec<String> = tiles_for_size(size).map(|id| id.path()).collect();
    paths.sort();
    paths
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    /// Goal: tiles written at a rising series of certified sizes are exactly
    /// the tiles of the last size, and every root and proof read from the
    /// files equals the in-memory tree's.
    #[test]
    fn proofs_from_stored_tiles_equal_the_trees(
        steps in proptest::collection::vec(1u64..700, 1..8),
        picks in proptest::collection::vec(any::<u64>(), 8),
    ) {
        let sizes: Vec<u64> = steps.iter().scan(0, |s, d| { *s += d; Some(*s) }).collect();
        let size = *sizes.last().expect("at least one step");
        let tree = tree_of(size);
        let temp = tempfile::tempdir().expect("temp dir");
        let store = store_at(temp.path(), &tree, &sizes);
        prop_assert_eq!(files(temp.path()), expected_files(size));
        prop_assert_eq!(root_from_tiles(store.dir(), size).ok(), tree.root_at(size).ok());
        for pick in &picks {
            let index = pick % size;
            prop_assert_eq!(
                inclusion_proof_from_tiles(store.dir(), index, size).ok(),
                tree.inclusion_proof(index, size).ok()
            );
            let old = 1 + pick % size;
            prop_assert_eq!(
                consistency_proof_from_tiles(store.dir(), old, size).ok(),
                tree.consistency_proof(old, size).ok()
            );
        }
    }
}

/// Goal: open finds nothing to do on tiles written up to the newest
/// certificate, and reads no more than the right edge to say so.
#[test]
fn open_accepts_tiles_that_match_the_certificate() {
    let tree = tree_of(70_000);
    let temp = tempfile::tempdir().expect("temp dir");
    store_at(temp.path(), &tree, &[1_000, 65_536, 70_000]);
    let mut store = TileStore::new(temp.path().to_path_buf(), false);
    let report = store.open_check(&tree, certified(&tree, 70_000));
    assert_eq!(report.problem, None);
    assert_eq!(report.rewritten_count, 0, "{report:?}");
    assert_eq!(store.written_size(), Some(70_000));
}

/// Goal: every unsynced prefix of a partial tile's write (the renamed file
/// cut short, or only the temporary file written) is found at open and the
/// tile recomputed from the tree; the leftover temporary file is dropped.
#[test]
fn every_unsynced_prefix_of_a_partial_tile_write_is_rebuilt() {
    let tree = tree_of(600);
    let whole = encode_hash_tile(&tile_from_tree(&tree, tile(0, 2, 88)).expect("tile"));
    for cut in (0..whole.len()).step_by(13).chain([whole.len() - 1]) {
        for renamed in [true, false] {
            let temp = tempfile::tempdir().expect("temp dir");
            store_at(temp.path(), &tree, &[580]);
            let dir = TileDir::new(temp.path());
            let target = dir.path(tile(0, 2, 88));
            let written = if renamed {
                target.clone()
            } else {
                target.with_extension("tmp")
            };
            std::fs::write(&written, &whole[..cut]).expect("write prefix");
            let mut store = TileStore::new(temp.path().to_path_buf(), false);
            let report = store.open_check(&tree, certified(&tree, 600));
            let problem = report.problem.expect("the cut tile is reported");
            assert!(problem.contains("tile/0/002.p/88"), "{problem}");
            assert!(report.rewritten.contains(&"tile/0/002.p/88".to_string()));
            assert_eq!(files(temp.path()), expected_files(600), "cut {cut}");
            assert_eq!(
                dir.read(tile(0, 2, 88)).ok(),
                tile_from_tree(&tree, tile(0, 2, 88))
            );
        }
    }
}

/// Goal: a full tile whose write did not reach its rename (a temporary
/// file of any length, no tile) is written at open, and one whose bytes
/// were cut after the rename is rewritten.
#[test]
fn every_prefix_of_a_full_tile_write_is_rebuilt() {
    let tree = tree_of(600);
    let whole = encode_hash_tile(&tile_from_tree(&tree, tile(0, 1, 256)).expect("tile"));
    for cut in (0..whole.len()).step_by(509) {
        let temp = tempfile::tempdir().expect("temp dir");
        store_at(temp.path(), &tree, &[600]);
        let dir = TileDir::new(temp.path());
        let target = dir.path(tile(0, 1, 256));
        std::fs::write(&target, &whole[..cut]).expect("cut tile");
        std::fs::write(target.with_extension("tmp"), &whole[..cut]).expect("temp");
        let mut store = TileStore::new(temp.path().to_path_buf(), false);
        let report = store.open_check(&tree, certified(&tree, 600));
        assert_eq!(
            report.rewritten,
            vec!["tile/0/001".to_string()],
            "cut {cut}"
        );
        assert_eq!(
            dir.read(tile(0, 1, 256)).ok(),
            tile_from_tree(&tree, tile(0, 1, 256))
        );
    }
}

/// Goal: tiles that lag behind the newest certificate (a crash after its
/// record was durable, before its tiles were written) are caught up at open.
#[test]
fn tiles_behind_the_certificate_are_caught_up_at_open() {
    let tree = tree_of(66_000);
    let temp = tempfile::tempdir().expect("temp dir");
    store_at(temp.path(), &tree, &[300]);
    let mut store = TileStore::new(temp.path().to_path_buf(), false);
    let report = store.open_check(&tree, certified(&tree, 66_000));
    assert!(report.problem.expect("missing tiles").contains("missing"));
    assert_eq!(files(temp.path()), expected_files(66_000));
    assert_eq!(
        root_from_tiles(store.dir(), 66_000).ok(),
        tree.root_at(66_000).ok()
    );
}

/// Goal: a missing or disagreeing tile on the right edge is rewritten at
/// open and named, whether or not the root at the certificate reads it.
#[test]
fn a_missing_or_disagreeing_edge_tile_is_named_and_rewritten() {
    let tree = tree_of(70_000);
    for (victim, remove) in [
        (tile(0, 273, 112), true),
        (tile(0, 272, 256), true),
        (tile(1, 0, 256), false),
        (tile(0, 273, 112), false),
    ] {
        let temp = tempfile::tempdir().expect("temp dir");
        store_at(temp.path(), &tree, &[70_000]);
        let path = TileDir::new(temp.path()).path(victim);
        if remove {
            std::fs::remove_file(&path).expect("remove tile");
        } else {
            let mut bytes = std::fs::read(&path).expect("read tile");
            bytes[40] ^= 1;
            std::fs::write(&path, bytes).expect("write tile");
        }
        let mut store = TileStore::new(temp.path().to_path_buf(), false);
        let report = store.open_check(&tree, certified(&tree, 70_000));
        assert_eq!(
            report.rewritten,
            vec![victim.path()],
            "{victim}: {report:?}"
        );
        let tiles = TileDir::new(temp.path());
        assert_eq!(tiles.read(victim).ok(), tile_from_tree(&tree, victim));
    }
}

/// Goal: a read-only open reports a damaged tile and writes nothing.
#[test]
fn a_read_only_open_reports_and_writes_nothing() {
    let tree = tree_of(600);
    let temp = tempfile::tempdir().expect("temp dir");
    store_at(temp.path(), &tree, &[600]);
    let path = TileDir::new(temp.path()).path(tile(0, 2, 88));
    std::fs::write(&path, b"torn").expect("tear");
    let mut store = TileStore::new(temp.path().to_path_buf(), true);
    let report = store.open_check(&tree, certified(&tree, 600));
    assert!(report.problem.is_some());
    assert_eq!(report.rewritten_count, 0);
    assert_eq!(std::fs::read(&path).expect("read"), b"torn");
}

fn tile(level: u8, index: u64, width: u16) -> TileId {
    TileId::new(level, index, width).expect("valid tile")
}
