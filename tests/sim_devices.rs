//! The simulator's devices on their own: what a crash does to unsynced
//! writes, bit flips, misdirected writes, wiped disks and saved state, as a
//! restarting replica sees them (`Disk::recover`), and the determinism of a
//! whole run (the same seed gives the same trace hash).

use bytes::Bytes;
use vellum::sim::disk::{CrashFaults, Disk};
use vellum::sim::prng::Prng;
use vellum::sim::records::Sealer;
use vellum::sim::{Options, run};
use vellum::vsr::{DurableState, JournalEntry};
use vellum_audit::record::{OpHeader, Record, RecordKind, genesis_parent};

const KEEP: CrashFaults = CrashFaults {
    lost_per_million: 0,
    torn_per_million: 0,
};
const LOSE: CrashFaults = CrashFaults {
    lost_per_million: 1_000_000,
    torn_per_million: 0,
};
const TEAR: CrashFaults = CrashFaults {
    lost_per_million: 0,
    torn_per_million: 1_000_000,
};

/// Ops 1..=count, chained, one event each.
fn records(count: u64) -> Vec<Record> {
    let sealer = Sealer::new([1; 32]);
    let mut out: Vec<Record> = Vec::new();
    for op in 1..=count {
        let mut header = OpHeader::empty(RecordKind::Op, 1);
        header.op = op;
        header.parent = out.last().map_or(genesis_parent(1), Record::checksum);
        header.stream = 16;
        header.stream_offset = op - 1;
        header.global_position = op - 1;
        header.event_count = 1;
        header.tree_size = op;
        out.push(
            sealer
                .seal(&header, &[Bytes::from(format!("event {op}"))])
                .0,
        );
    }
    out
}

fn synced_disk(records: &[Record]) -> Disk {
    let mut disk = Disk::new();
    for record in records {
        disk.write(record);
        assert!(disk.sync(record.header.op, &record.checksum(), None));
    }
    disk
}

fn shape(disk: &Disk) -> Vec<String> {
    disk.recover()
        .journal
        .iter()
        .map(|entry| match entry {
            JournalEntry::Intact { header, leaves } => {
                format!("{}:intact:{}", header.op, leaves.len())
            }
            JournalEntry::Faulty { op, header } => format!("{op}:faulty:{}", header.is_some()),
        })
        .collect()
}

/// Goal: synced writes survive any crash; unsynced ones are lost or torn
/// as the crash faults say, and a torn tail is faulty, never absent.
#[test]
fn crash_keeps_synced_and_loses_or_tears_unsynced() {
    let ops = records(3);
    let mut disk = synced_disk(&ops[..2]);
    disk.write(&ops[2]);
    assert!(disk.has_unsynced());
    let mut lost = disk.clone();
    let report = lost.crash(&mut Prng::new(1), LOSE);
    assert_eq!((report.unsynced, report.lost), (1, 1));
    assert_eq!(shape(&lost), ["1:intact:1", "2:intact:1"]);

    let mut torn = disk.clone();
    assert_eq!(torn.crash(&mut Prng::new(1), TEAR).torn, 1);
    assert_eq!(shape(&torn)[..2], ["1:intact:1", "2:intact:1"]);
    assert!(shape(&torn)[2].starts_with("3:faulty"));

    let mut kept = disk;
    kept.crash(&mut Prng::new(1), KEEP);
    assert_eq!(shape(&kept), ["1:intact:1", "2:intact:1", "3:intact:1"]);
}

/// Goal: a lost write below a surviving one leaves a faulty slot (a gap is
/// never read as "the log ends here").
#[test]
fn a_gap_below_the_tail_is_faulty() {
    let ops = records(2);
    let mut disk = Disk::new();
    disk.write(&ops[0]);
    disk.write(&ops[1]);
    assert!(disk.sync(2, &ops[1].checksum(), None));
    disk.crash(&mut Prng::new(2), LOSE);
    assert_eq!(shape(&disk), ["1:faulty:false", "2:intact:1"]);
}

/// Goal: a bit flip makes its slot faulty on restart and unreadable.
#[test]
fn bit_flip_is_detected() {
    let ops = records(2);
    let mut disk = synced_disk(&ops);
    let op = disk.flip_bit(&mut Prng::new(3)).expect("a record to flip");
    let checksum = ops[op as usize - 1].checksum();
    assert!(disk.read(op, &checksum).is_none());
    let faulty = shape(&disk);
    assert!(
        faulty[op as usize - 1].starts_with(&format!("{op}:faulty")),
        "{faulty:?}"
    );
    let other = 3 - op;
    assert!(
        disk.read(other, &ops[other as usize - 1].checksum())
            .is_some()
    );
}

/// Goal: a disk counts as damaged (against the simulator's fault budget)
/// while it holds a rotted record, a gap below its tail or another op's
/// record in a slot, and no longer once the record is written intact.
#[test]
fn damage_is_known_until_repaired() {
    let ops = records(3);
    let mut disk = synced_disk(&ops);
    assert!(!disk.has_damage(), "an intact disk");
    let op = disk.flip_bit(&mut Prng::new(3)).expect("a record to flip");
    assert!(disk.has_damage(), "a rotted record");
    let record = &ops[op as usize - 1];
    disk.write(record);
    assert!(disk.sync(op, &record.checksum(), None));
    assert!(!disk.has_damage(), "repaired in place");

    let mut gap = Disk::new();
    gap.write(&ops[0]);
    gap.write(&ops[1]);
    assert!(gap.sync(2, &ops[1].checksum(), None));
    gap.crash(&mut Prng::new(2), LOSE);
    assert!(gap.has_damage(), "a lost write below a kept one");

    let mut misdirected = synced_disk(&ops[..2]);
    misdirected.write(&ops[2]);
    assert!(misdirected.sync(3, &ops[2].checksum(), Some(1)));
    assert!(misdirected.has_damage(), "another op's record in slot 1");
}

/// Goal: a misdirected write damages the slot it lands in and is still
/// found as its own op on restart, while a read of its own slot misses.
#[test]
fn misdirected_write_lands_elsewhere() {
    let ops = records(3);
    let mut disk = synced_disk(&ops[..2]);
    disk.write(&ops[2]);
    assert!(
        disk.sync(3, &ops[2].checksum(), Some(1)),
        "the disk reports success"
    );
    assert!(disk.read(3, &ops[2].checksum()).is_none());
    assert!(disk.read(1, &ops[0].checksum()).is_none());
    assert_eq!(shape(&disk), ["1:faulty:false", "2:intact:1", "3:intact:1"]);
}

/// Goal: truncation drops later slots; an fsync of a truncated or replaced
/// write completes nothing.
#[test]
fn truncate_and_stale_fsync() {
    let ops = records(3);
    let mut disk = synced_disk(&ops[..2]);
    disk.write(&ops[2]);
    disk.truncate(1);
    assert!(!disk.sync(3, &ops[2].checksum(), None));
    assert_eq!(shape(&disk), ["1:intact:1"]);
}

/// Goal: the saved state survives a crash only once the save completed; a
/// wipe forgets everything.
#[test]
fn saved_state_and_wipe() {
    let mut disk = synced_disk(&records(1));
    let first = DurableState {
        view: 2,
        log_view: 2,
        commit: 1,
    };
    disk.save(first);
    assert!(disk.save_done(&first));
    let second = DurableState {
        view: 3,
        log_view: 2,
        commit: 1,
    };
    disk.save(second);
    assert!(disk.crash(&mut Prng::new(4), KEEP).state_lost);
    assert_eq!(disk.recover().state, first);
    disk.store_certificate(1, "text");
    disk.wipe();
    let recovered = disk.recover();
    assert_eq!(recovered.state, DurableState::default());
    assert!(recovered.journal.is_empty() && recovered.certificates.is_empty());
}

/// Goal: a run is a function of its seed: the same seed twice gives the
/// same trace hash and summary, another seed another trace.
#[test]
fn same_seed_same_trace() {
    let options = Options {
        fault_ticks: 600,
        converge_ticks_max: 300,
        ..Options::new(11, 3)
    };
    let mut first = run(options);
    let mut second = run(options);
    first.wall_micros = 0;
    second.wall_micros = 0;
    assert_eq!(first, second);
    assert!(first.inputs > 0);
    let other = run(Options {
        seed: 12,
        ..options
    });
    assert_ne!(first.trace_hash, other.trace_hash);
}
