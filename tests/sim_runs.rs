//! Whole simulator runs against the real VSR core: a range of seeds must
//! pass every checker and converge after the faults stop, for clusters of
//! 1, 3 and 5; over the range, the coverage counters must show that view
//! changes, recoveries, repairs, state transfers and every fault kind
//! actually happened (a simulator that never reaches a path tests nothing).

use vellum::sim::{Options, Totals, run, run_seeds};

/// Seeds per cluster size in this test (CI runs 300 with `vellum sim`).
const SEEDS: u64 = 24;

fn run_range(replicas: u8, seeds: u64) -> Totals {
    run_with(Options::new(0, replicas), seeds)
}

fn run_with(template: Options, seeds: u64) -> Totals {
    let replicas = template.replicas;
    let totals = run_seeds(0..seeds, template, |summary| {
        if !summary.passed() {
            eprintln!("{}", summary.report());
        }
    });
    assert!(
        totals.failed.is_empty(),
        "failing seeds with {replicas} replicas: {:?}",
        totals.failed
    );
    totals
}

fn count(totals: &Totals, name: &str) -> u64 {
    totals.counters.get(name).copied().unwrap_or(0)
}

/// Goal: three-replica seeds pass, and reach view changes, recoveries,
/// repairs, state transfers and every fault kind.
#[test]
fn three_replicas_pass_and_cover_every_path() {
    let totals = run_range(3, SEEDS);
    for name in [
        "ops_committed",
        "view_changes",
        "recoveries",
        "repairs",
        "state_transfers",
    ] {
        assert!(
            count(&totals, name) > 0,
            "{name} never happened: {:?}",
            totals.counters
        );
    }
    let faults = [
        "message_loss",
        "message_duplicate",
        "message_reorder",
        "partition_symmetric",
        "partition_one_way",
        "crash",
        "crash_unsynced",
        "lost_write",
        "torn_write",
        "bit_flip",
        "misdirected_write",
        "wipe",
        "unchained_prepare",
    ];
    for kind in faults {
        assert!(
            count(&totals, &format!("fault:{kind}")) > 0,
            "fault {kind} never injected: {:?}",
            totals.counters
        );
    }
    assert!(
        count(&totals, "client:retry_answered") > 0,
        "no retried request was answered"
    );
}

/// Goal: with tiny windows (4 ops in flight, 8 headers in a view change),
/// so logs outgrow what a view change carries, seeds still pass. Before the
/// fix a stale op of an older view left under a gap was committed (seed 12),
/// a view change took a stale run below the commit (seed 116: "a view
/// change never replaces committed op"), and a truncation kept stale
/// headers that no peer could serve (seed 244, stuck); 6 of these 24 seeds
/// failed.
#[test]
fn three_replicas_with_small_windows_pass() {
    let template = Options {
        small_windows: true,
        ..Options::new(0, 3)
    };
    let totals = run_with(template, SEEDS);
    assert!(count(&totals, "view_changes") > 0);
    assert!(count(&totals, "truncate") > 0);
}

/// Goal: five-replica seeds pass (two faults at once are within budget).
#[test]
fn five_replicas_pass() {
    let totals = run_range(5, SEEDS / 2);
    assert!(count(&totals, "ops_committed") > 0);
    assert!(count(&totals, "view_changes") > 0);
}

/// Goal: a cluster of one survives crashes with torn and lost unsynced
/// writes, restarting from its own disk.
#[test]
fn single_replica_passes() {
    let totals = run_range(1, SEEDS / 2);
    assert!(count(&totals, "ops_committed") > 0);
    assert!(count(&totals, "fault:crash") > 0);
    assert!(count(&totals, "recoveries") > 0);
}

/// Seeds found failing by soaks outside CI, each with the options it failed
/// with; each must pass from now on.
const SOAK_REGRESSIONS: &[(u64, u8, bool)] = &[
    // Stuck: a misdirected write destroyed the only copy of an uncommitted
    // op; its holder listed it unsure and the replica that had started on
    // an empty disk could not nack it, so every view change kept it, and
    // after every replica restarted each listed it unsure. Fixed by the
    // "held nowhere" rule of `vsr::view_change`.
    (8678, 3, false),
    // Stuck: once the faults stopped, a client kept retrying backups (each
    // retry stayed put with a chance of one half) through the whole
    // convergence bound. The simulated client now rotates as a real one.
    (391, 5, false),
    // Hung on main (no answer after 60 s; a seed takes under a second):
    // not analysed. It passes since the "held nowhere" change, which may
    // only have moved the run off the path; kept so a hang shows up here.
    (528, 5, false),
];

/// Goal: every seed a soak found failing passes (and converges).
#[test]
fn soak_regressions_pass() {
    for &(seed, replicas, small_windows) in SOAK_REGRESSIONS {
        let summary = run(Options {
            small_windows,
            ..Options::new(seed, replicas)
        });
        assert!(summary.passed(), "{}", summary.report());
    }
}
