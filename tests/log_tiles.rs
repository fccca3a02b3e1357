//! The Merkle tree on disk as C2SP tlog-tiles, through the log's public
//! API: tiles follow the certificates, open checks and rewrites them after
//! a crash or damage, and `vellum verify` names a tile that disagrees.

mod support;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions, load_policy};
use vellum_audit::tile_dir::TileDir;
use vellum_audit::tiles::{
    TileId, consistency_proof_from_tiles, inclusion_proof_from_tiles, root_from_tiles,
    tiles_for_size,
};

/// Options with the tile store on (it is off by default, `LogOptions::tiles`).
fn tiles_on() -> LogOptions {
    LogOptions {
        tiles: true,
        ..LogOptions::default()
    }
}

fn init(dir: &tempfile::TempDir) -> PathBuf {
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    data
}

/// Appends `batches` batches of `per_batch` events to stream 100.
/// A log of 30 appends of 20 events written with tiles and closed: its
/// data directory and certified size.
fn closed_log_with_tiles(dir: &tempfile::TempDir) -> (PathBuf, u64) {
    let data = init(dir);
    let (log, _) = LocalLog::open(&data, tiles_on()).expect("open");
    append(&log, 30, 20);
    let size = log.latest_certificate().expect("certified").checkpoint.size;
    log.close().expect("close");
    (data, size)
}

fn append(log: &LocalLog, batches: u64, per_batch: u64) {
    for b in 0..batches {
        let events: Vec<Bytes> = (0..per_batch)
            .map(|i| Bytes::from(format!("{{\"b\":{b},\"i\":{i}}}")))
            .collect();
        log.append(100, &events, None, None).expect("append");
    }
}

fn verify(data: &Path) -> vellum_audit::report::Report {
    let policy = load_policy(&data.join("policy.txt")).expect("policy");
    vellum::verify::verify_data_dir(data, &policy, None, &mut |_| {})
}

fn tiles_check(report: &vellum_audit::report::Report) -> &vellum_audit::report::Check {
    report
        .checks
        .iter()
        .find(|c| c.name == "stored tiles")
        .expect("a stored tiles check")
}

/// Every tile file below `root`, relative, sorted.
fn tile_files(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
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

fn tile(level: u8, index: u64, width: u16) -> TileId {
    TileId::new(level, index, width).expect("valid tile")
}

/// Goal: after appends and a close, the tiles directory holds exactly the
/// tiles of the newest certificate's tree, whose root and proofs read from
/// the files equal the certificate's and the log's; verify compares them.
#[test]
fn tiles_follow_the_certificates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir);
    let (log, report) = LocalLog::open(&data, tiles_on()).expect("open");
    assert_eq!(report.tiles.problem, None);
    append(&log, 30, 20);
    let certificate = log.latest_certificate().expect("certified");
    let proof = log.inclusion_proof(100, 123).expect("proof");
    log.close().expect("close");
    let size = certificate.checkpoint.size;
    let tiles = TileDir::new(data.join("tiles"));
    assert_eq!(tile_files(tiles.root()), expected_files(size));
    assert_eq!(
        root_from_tiles(&tiles, size).expect("root"),
        certificate.checkpoint.root
    );
    let from_tiles =
        inclusion_proof_from_tiles(&tiles, proof.index, proof.checkpoint.checkpoint.size)
            .expect("proof from tiles");
    assert_eq!(from_tiles, proof.hashes);
    assert!(consistency_proof_from_tiles(&tiles, 100, size).is_ok());
    let report = verify(&data);
    assert!(report.passed, "{}", report.to_text());
    let check = tiles_check(&report);
    assert_eq!(
        check.counts.get("tiles").copied(),
        Some(tiles_for_size(size).count() as u64)
    );
}

/// Goal: a crash while the log is open (a copy of its directory: tiles
/// lag the newest certificate by up to one group commit) leaves tiles the
/// next open completes; verify passes.
#[test]
fn tiles_after_a_crash_are_completed_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir);
    let (log, _) = LocalLog::open(&data, tiles_on()).expect("open");
    append(&log, 40, 9);
    let crashed = dir.path().join("crashed");
    support::copy_dir(&data, &crashed);
    log.close().expect("close");
    let (log, _) = LocalLog::open(&crashed, tiles_on()).expect("reopen");
    let size = log.latest_certificate().expect("certified").checkpoint.size;
    log.close().expect("close");
    assert_eq!(tile_files(&crashed.join("tiles")), expected_files(size));
    let report = verify(&crashed);
    assert!(report.passed, "{}", report.to_text());
}

/// Goal: tiles behind the newest certificate (its record durable, the
/// process killed before its tiles were written: here, the right edge's
/// tiles removed) are named as missing at open and written from the log.
#[test]
fn tiles_behind_the_certificate_are_written_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, size) = closed_log_with_tiles(&dir);
    let tiles = TileDir::new(data.join("tiles"));
    let gone = [
        tile(0, size / 256 - 1, 256),
        TileId::in_tree(0, size / 256, size).expect("partial"),
        TileId::in_tree(1, 0, size).expect("partial"),
    ];
    for id in gone {
        std::fs::remove_file(tiles.path(id)).expect("remove tile");
    }
    let (log, report) = LocalLog::open(&data, tiles_on()).expect("reopen");
    let problem = report
        .tiles
        .problem
        .clone()
        .expect("missing tiles are reported");
    assert!(problem.contains("missing"), "{problem}");
    let mut named = report.tiles.rewritten.clone();
    named.sort();
    let mut expected: Vec<String> = gone.iter().map(TileId::path).collect();
    expected.sort();
    assert_eq!(named, expected);
    log.close().expect("close");
    assert_eq!(tile_files(tiles.root()), expected_files(size));
    assert!(verify(&data).passed);
}

/// Goal: a torn partial tile and a disagreeing full tile on the right edge
/// are named in the open report and rewritten from the log.
#[test]
fn a_torn_or_disagreeing_edge_tile_is_rewritten_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, size) = closed_log_with_tiles(&dir);
    let tiles = TileDir::new(data.join("tiles"));
    assert!(size > 512 && size % 256 != 0, "{size} leaves");
    let edge_full = tile(0, size / 256 - 1, 256);
    let partial = TileId::in_tree(0, size / 256, size).expect("a partial tile");
    let full_before = std::fs::read(tiles.path(edge_full)).expect("full tile");
    let mut flipped = full_before.clone();
    flipped[100] ^= 0x20;
    std::fs::write(tiles.path(edge_full), &flipped).expect("flip");
    let partial_before = std::fs::read(tiles.path(partial)).expect("partial tile");
    std::fs::write(tiles.path(partial), &partial_before[..45]).expect("tear");

    let (log, report) = LocalLog::open(&data, tiles_on()).expect("reopen");
    let problem = report
        .tiles
        .problem
        .clone()
        .expect("the torn tile is reported");
    assert!(problem.contains(&partial.path()), "{problem}");
    for named in [edge_full.path(), partial.path()] {
        assert!(
            report.tiles.rewritten.contains(&named),
            "{named}: {:?}",
            report.tiles
        );
    }
    log.close().expect("close");
    assert_eq!(
        std::fs::read(tiles.path(edge_full)).expect("read"),
        full_before
    );
    let report = verify(&data);
    assert!(report.passed, "{}", report.to_text());
}

/// Goal: `vellum verify` fails on a stored tile that disagrees with the
/// log, or holds a hash beyond it, and names the tile.
#[test]
fn verify_names_a_tile_that_disagrees_with_the_log() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (data, size) = closed_log_with_tiles(&dir);
    assert!(size > 512 && size < 768, "{size} leaves");
    let tiles = TileDir::new(data.join("tiles"));
    let interior = tiles.path(tile(0, 0, 256));
    let mut bytes = std::fs::read(&interior).expect("tile");
    bytes[32 * 17] ^= 1;
    std::fs::write(&interior, &bytes).expect("flip");
    let beyond = tiles.path(tile(0, size / 256, 256));
    std::fs::write(&beyond, vec![7u8; 8192]).expect("a tile beyond the log");

    let report = verify(&data);
    assert!(!report.passed);
    let check = tiles_check(&report);
    let places: Vec<&str> = check.failures.iter().map(|f| f.location.as_str()).collect();
    assert_eq!(
        places,
        ["tiles/tile/0/000", "tiles/tile/0/002"],
        "{check:?}"
    );
    assert!(check.failures[0].message.contains("hash 17"), "{check:?}");
    // The way back the docs give: drop the tiles; the next open writes them.
    std::fs::remove_dir_all(tiles.root()).expect("drop tiles");
    let (log, report) = LocalLog::open(&data, tiles_on()).expect("reopen");
    assert_eq!(
        report.tiles.rewritten_count,
        tiles_for_size(size).count() as u64
    );
    log.close().expect("close");
    assert!(verify(&data).passed);
}

/// Goal: appends complete while the tile writer is held back (a stalled
/// disk under its fsyncs): the commit path never waits for a tile write.
/// Released, the writer catches up to the certified sizes, and a read-only
/// open runs no writer at all.
#[test]
fn appends_do_not_wait_for_the_tile_writer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(&dir);
    let (log, _) = LocalLog::open(&data, tiles_on()).expect("open");
    let before = log.tiles_written().expect("a tile writer runs");
    let held = log.hold_tiles().expect("a tile writer runs");
    std::thread::scope(|scope| {
        let (done, finished) = std::sync::mpsc::channel();
        let log = &log;
        scope.spawn(move || {
            append(log, 20, 30);
            let _ = done.send(());
        });
        let finished = finished
            .recv_timeout(std::time::Duration::from_secs(30))
            .is_ok();
        let written_while_held = log.tiles_written();
        drop(held);
        assert!(finished, "appends waited for the held tile writer");
        assert_eq!(written_while_held, Some(before), "the writer was held");
    });
    let certified = log.latest_certificate().expect("certified").checkpoint.size;
    assert!(certified >= 600, "{certified} leaves");
    // The next group commit makes the last certificate record durable.
    append(&log, 1, 1);
    let caught_up = (0..600).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        log.tiles_written()
            .is_some_and(|written| written >= certified)
    });
    assert!(
        caught_up,
        "tiles at {:?} of {certified}",
        log.tiles_written()
    );
    let tiles = TileDir::new(data.join("tiles"));
    assert_eq!(
        root_from_tiles(&tiles, certified).expect("root from tiles"),
        log.root_at(certified).expect("root")
    );
    let size = log.latest_certificate().expect("certified").checkpoint.size;
    log.close().expect("close");
    assert_eq!(tile_files(tiles.root()), expected_files(size));
    assert!(verify(&data).passed);

    let read_only = LogOptions {
        storage: vellum::storage::StorageConfig {
            read_only: true,
            ..vellum::storage::StorageConfig::default()
        },
        ..tiles_on()
    };
    let (log, report) = LocalLog::open(&data, read_only).expect("read-only open");
    assert_eq!(report.tiles.problem, None);
    assert!(
        log.hold_tiles().is_none(),
        "a read-only open runs no writer"
    );
    assert_eq!(log.tiles_written(), None);
}
