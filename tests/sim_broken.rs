//! The checkers bite: each deliberately broken variant of the core (built
//! only with `--features sim-broken`) must be caught by some checker within
//! a stated number of seeds. Run with
//! `cargo test --features sim-broken --test sim_broken`.
#![cfg(feature = "sim-broken")]

use vellum::sim::{Options, run};
use vellum::vsr::Broken;

/// Runs seeds until one fails; returns (seed, failure) or None after `seeds_max`.
fn first_failure(broken: Broken, replicas: u8, seeds_max: u64) -> Option<(u64, String)> {
    (0..seeds_max).find_map(|seed| {
        let summary = run(Options {
            broken,
            ..Options::new(seed, replicas)
        });
        summary.failure.map(|failure| (seed, failure))
    })
}

fn assert_caught(broken: Broken, seeds_max: u64, expected: &str) {
    let caught = first_failure(broken, 3, seeds_max);
    let Some((seed, failure)) = caught else {
        panic!("{broken:?} survived {seeds_max} seeds: the checkers do not bite");
    };
    assert!(
        failure.contains(expected),
        "{broken:?} at seed {seed} failed otherwise: {failure}"
    );
}

/// Goal: committing without a quorum of prepare_ok is caught within 5 seeds
/// (a certificate with fewer than f+1 signatures). Seen: seed 0.
#[test]
fn commit_without_quorum_is_caught() {
    assert_caught(Broken::CommitWithoutQuorum, 5, "valid signatures");
}

/// Goal: acknowledging a prepare before its fsync is caught within 5 seeds
/// (a prepare_ok for a write the shell has not reported durable). Seen: seed 0.
#[test]
fn ack_before_fsync_is_caught() {
    assert_caught(Broken::AckBeforeFsync, 5, "before its write was durable");
}

/// Goal: ignoring the client table is caught within 5 seeds (a retried
/// request executes twice). Seen: seed 0.
#[test]
fn skip_client_table_is_caught() {
    assert_caught(Broken::SkipClientTable, 5, "committed twice");
}

/// Goal: accepting an unchained prepare is caught within 10 seeds (the
/// journal no longer chains). Seen: seed 1.
#[test]
fn accept_unchained_is_caught() {
    assert_caught(Broken::AcceptUnchained, 10, "parent is not its header");
}

/// Goal: certifying an op inside an atomic group (an append committed
/// without its trail record) is caught within 5 seeds.
#[test]
fn certify_inside_group_is_caught() {
    assert_caught(Broken::CertifyInsideGroup, 5, "inside an atomic group");
}

/// Goal: the correct core passes the same first seeds (so the failures
/// above come from the broken behaviour, not from the simulator).
#[test]
fn correct_core_passes_those_seeds() {
    assert_eq!(first_failure(Broken::None, 3, 10), None);
}
