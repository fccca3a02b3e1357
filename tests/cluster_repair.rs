//! Damaged entries are repaired, not fatal (issue 10, item 2): a byte
//! flipped inside a committed op record of a stopped backup's segment (in
//! its body, or in its header) is found when that replica restarts, fetched
//! from its peers by op and checksum and written back in place, while the
//! cluster keeps serving; afterwards every acknowledged event is at its
//! offset on every replica and offline `vellum verify --cluster` passes. A
//! lone replica, which has no peers, still refuses to open and names the
//! file and byte.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use vellum::local_cluster::LocalCluster;
use vellum::log::{LocalLog, LogOptions};
use vellum_audit::record::{HEADER_BYTES, RecordKind};
use vellum_audit::segment::{SegmentEnd, scan_log_dir, segment_file_name};

mod support;
use support::{TestDir, vellum_cli};

const WAIT: Duration = Duration::from_secs(60);
const STREAM: u64 = 7000;

/// Where a byte is flipped inside the chosen op record.
#[derive(Clone, Copy, Debug)]
enum Flip {
    /// A byte of the body (an event frame): the header still reads.
    Body,
    /// A byte of the header (its `client_id` field): the header checksum
    /// fails, so the op is known only from the record after it.
    Header,
}

/// The segment file, offset and length of the `nth` op record of a
/// replica's log that has at least one valid record after it.
fn op_record(data: &Path, nth: usize) -> (PathBuf, u64, u64, u64) {
    let cluster = support_cluster(data);
    let scan = scan_log_dir(&data.join("segments"), cluster).expect("the log scans clean");
    let mut ops = scan
        .segments
        .iter()
        .flat_map(|s| s.scan.records.iter().map(move |r| (s, r)))
        .filter(|(_, r)| r.header.kind == RecordKind::Op);
    let (segment, record) = ops.nth(nth).expect("enough ops");
    assert!(
        matches!(
            segment.scan.end,
            SegmentEnd::Open | SegmentEnd::Sealed { .. }
        ),
        "a clean segment"
    );
    (
        segment.path.clone(),
        record.offset,
        record.encoded_len(),
        record.header.op,
    )
}

fn support_cluster(data: &Path) -> u128 {
    let meta =
        vellum::datadir::NodeMeta::load(&vellum::datadir::DataDir::new(data)).expect("vellum.json");
    meta.cluster_id().expect("cluster id")
}

/// Flips one byte of the record at `offset`; returns the original bytes of
/// the whole record.
fn flip(file: &Path, offset: u64, len: u64, flip: Flip) -> Vec<u8> {
    let mut bytes = std::fs::read(file).expect("segment");
    let start = usize::try_from(offset).expect("small file");
    let end = start + usize::try_from(len).expect("small record");
    let original = bytes[start..end].to_vec();
    let at = match flip {
        Flip::Body => start + HEADER_BYTES + 20,
        Flip::Header => start + 150,
    };
    assert!(at < end, "the flipped byte is inside the record");
    bytes[at] ^= 0x40;
    std::fs::write(file, &bytes).expect("write the flipped byte");
    original
}

/// Every event of `stream` as a stopped replica's data directory holds it,
/// as (offset, payload).
fn stored(data: &Path, stream: u64) -> Vec<(u64, Bytes)> {
    let mut options = support::wait_for_lock();
    options.without_index = true;
    options.storage.read_only = true;
    let (log, _) = LocalLog::open(data, options).expect("open read-only");
    log.read(stream, 0, 10_000)
        .expect("read with the replica's own keys")
        .into_iter()
        .map(|e| (e.offset, e.payload))
        .collect()
}

/// Appends `n` single-event batches through any replica; returns each
/// acknowledged event with the offset the receipt gave it.
async fn append(client: &vellum::client::Client, label: &str, n: u64) -> Vec<(u64, Bytes)> {
    let mut acknowledged = Vec::new();
    for i in 0..n {
        let event = Bytes::from(format!("{label} {i}"));
        let appended = client
            .append(STREAM, vec![event.clone()], None)
            .await
            .expect("the cluster serves appends");
        acknowledged.push((appended.first_offset, event));
    }
    acknowledged
}

async fn flipped_byte_in_a_stopped_backup_is_repaired_from_peers(kind: Flip) {
    let dir = TestDir::new("vellum-repair");
    let mut cluster = LocalCluster::start(&dir.path().join("cluster"), 3, support::vellum_exe())
        .expect("cluster starts");
    let primary = usize::from(cluster.wait_primary(WAIT).await.expect("primary"));
    let victim = (primary + 1) % 3;
    let client = cluster.client(None).expect("client");
    let mut acknowledged = append(&client, "before", 12).await;
    let commit = cluster.health().await[primary]
        .as_ref()
        .map_or(0, |h| h.commit);
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("every replica holds the committed ops");
    cluster.kill(victim).expect("stop the backup");

    // A committed op in the middle of the backup's log: its fifth op.
    let data = cluster.data_dir(victim);
    let (file, offset, len, op) = op_record(&data, 4);
    assert!(op <= commit, "op {op} is committed (commit {commit})");
    let original = flip(&file, offset, len, kind);
    let Err(refused) = LocalLog::open(
        &data,
        LogOptions {
            without_index: true,
            ..support::wait_for_lock()
        },
    ) else {
        panic!("opened alone (no peers), the damaged log is refused");
    };
    let refused = refused.to_string();
    let name = segment_file_name(0);
    assert!(
        refused.contains(&name) && refused.contains(&format!("byte {offset}")),
        "the refusal names the file and byte: {refused}"
    );

    cluster
        .start_replica(victim)
        .expect("restart the damaged backup");
    // The cluster never stops serving: these go on while it repairs.
    acknowledged.extend(append(&client, "after", 12).await);
    let commit = cluster.health().await[primary]
        .as_ref()
        .map_or(0, |h| h.commit);
    cluster
        .wait_commit(&[0, 1, 2], commit, WAIT)
        .await
        .expect("the damaged backup repairs and catches up");
    assert!(
        cluster.is_running(victim),
        "the damaged backup kept running"
    );
    cluster.stop().expect("stop");

    let bytes = std::fs::read(&file).expect("segment");
    let start = usize::try_from(offset).expect("small file");
    assert_eq!(
        &bytes[start..start + original.len()],
        &original[..],
        "op {op} was written back in place, byte for byte"
    );
    let log = std::fs::read_to_string(cluster.log_path(victim)).unwrap_or_default();
    assert!(
        log.contains("repaired a damaged op record in place"),
        "the backup reports the repair"
    );
    for i in 0..3 {
        let held = stored(&cluster.data_dir(i), STREAM);
        for (offset, event) in &acknowledged {
            let found = held.iter().find(|(o, _)| o == offset).map(|(_, e)| e);
            assert_eq!(
                found,
                Some(event),
                "replica {i} holds the acknowledged event at offset {offset}"
            );
        }
    }
    let s = |p: &Path| p.display().to_string();
    let (code, report, err) = vellum_cli(&[
        "verify",
        "--cluster",
        &s(&cluster.dev.dir),
        "--policy",
        &s(&cluster.dev.policy_path),
    ]);
    assert_eq!(code, 0, "the repaired cluster verifies:\n{report}\n{err}");
}

// Goal: a byte flipped inside the body of a committed op record of a
// stopped backup is repaired from its peers after restart; the cluster
// serves throughout; every acknowledged event is at its offset on every
// replica; `vellum verify --cluster` passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_body_byte_of_a_committed_op_is_repaired_from_peers() {
    flipped_byte_in_a_stopped_backup_is_repaired_from_peers(Flip::Body).await;
}

// Goal: the same for a byte flipped in the op record's header, where the
// op is known only from the chain (the next op's parent).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flipped_header_byte_of_a_committed_op_is_repaired_from_peers() {
    flipped_byte_in_a_stopped_backup_is_repaired_from_peers(Flip::Header).await;
}

// Goal: a lone replica (not a cluster: no peers to repair from) still
// refuses to open a log with a damaged op below its tail, naming the
// segment file and the byte, and changes nothing.
#[test]
fn single_replica_refuses_a_damaged_op_naming_file_and_byte() {
    for kind in [Flip::Body, Flip::Header] {
        let dir = TestDir::new("vellum-repair-single");
        let data = dir.path().join("data");
        vellum::init::init_data_dir(&data, None).expect("init");
        let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
        for i in 0..8 {
            log.append(STREAM, &[Bytes::from(format!("event {i}"))], None, None)
                .expect("append");
        }
        log.close().expect("close");
        let (file, offset, len, _) = op_record(&data, 3);
        flip(&file, offset, len, kind);
        let damaged = std::fs::read(&file).expect("segment");
        let Err(error) = LocalLog::open(&data, LogOptions::default()) else {
            panic!("{kind:?}: a damaged op below the tail is refused");
        };
        let error = error.to_string();
        assert!(
            error.contains(&file.display().to_string())
                && error.contains(&format!("byte {offset}")),
            "{kind:?}: the refusal names file and byte: {error}"
        );
        assert_eq!(
            std::fs::read(&file).expect("segment"),
            damaged,
            "{kind:?}: nothing was changed"
        );
    }
}
