//! `vellum sim`: run the deterministic simulator for one seed or a range.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

use crate::sim::{self, Options};

/// `vellum sim`
#[derive(Debug, Args)]
pub struct SimArgs {
    /// Run this one seed and print its summary.
    #[arg(long, conflicts_with = "seeds", value_parser = crate::cli::number_flag)]
    seed: Option<u64>,
    /// Run a range of seeds `A..B` (B excluded); one line per seed.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Replicas in the simulated cluster (1, 3 or 5).
    #[arg(long, default_value_t = 3, value_parser = crate::cli::number_flag_as::<u8>)]
    replicas: u8,
    /// Ticks of the fault phase (convergence gets its own bound after it).
    #[arg(long, default_value_t = sim::options::FAULT_TICKS_DEFAULT, value_parser = crate::cli::number_flag)]
    ticks: u64,
    /// Run the cores with tiny windows (4 ops in flight, 8 headers in a
    /// view change), so logs outgrow a view change's headers.
    #[arg(long)]
    small_windows: bool,
    /// Print JSON (one object per seed).
    #[arg(long)]
    json: bool,
    /// Run a deliberately broken core, to see the checkers catch it.
    #[cfg(feature = "sim-broken")]
    #[arg(long, value_enum)]
    broken: Option<BrokenArg>,
}

/// The broken variants of the core (`sim-broken` builds only).
#[cfg(feature = "sim-broken")]
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BrokenArg {
    CommitWithoutQuorum,
    AckBeforeFsync,
    SkipClientTable,
    AcceptUnchained,
    CertifyInsideGroup,
}

pub fn run(args: SimArgs) -> anyhow::Result<ExitCode> {
    if !(1..=7).contains(&args.replicas) {
        anyhow::bail!("--replicas {} is not in 1..=7", args.replicas);
    }
    if args.replicas.is_multiple_of(2) {
        anyhow::bail!("--replicas {} is not an odd number (2f+1)", args.replicas);
    }
    let mut template = Options::new(0, args.replicas);
    template.fault_ticks = args.ticks;
    template.small_windows = args.small_windows;
    #[cfg(feature = "sim-broken")]
    if let Some(broken) = args.broken {
        template.broken = match broken {
            BrokenArg::CommitWithoutQuorum => crate::vsr::Broken::CommitWithoutQuorum,
            BrokenArg::AckBeforeFsync => crate::vsr::Broken::AckBeforeFsync,
            BrokenArg::SkipClientTable => crate::vsr::Broken::SkipClientTable,
            BrokenArg::AcceptUnchained => crate::vsr::Broken::AcceptUnchained,
            BrokenArg::CertifyInsideGroup => crate::vsr::Broken::CertifyInsideGroup,
        };
    }
    match (args.seed, &args.seeds) {
        (Some(seed), _) => {
            let summary = sim::run(Options { seed, ..template });
            if args.json {
                super::print_json(&summary)?;
            } else {
                print!("{}", summary.report());
            }
            Ok(if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        (None, Some(range)) => run_range(parse_range(range)?, template, args.json),
        (None, None) => anyhow::bail!("give --seed N or --seeds A..B"),
    }
}

fn run_range(
    seeds: std::ops::Range<u64>,
    template: Options,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let count = seeds.end - seeds.start;
    let started = std::time::Instant::now();
    let mut done = 0u64;
    let mut stdout = std::io::stdout().lock();
    let mut failed_write = None;
    let totals = sim::run_seeds(seeds, template, |summary| {
        done += 1;
        let line = if json {
            serde_json::to_string(summary).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        } else {
            summary.line()
        };
        if let Err(e) = writeln!(stdout, "{line}") {
            failed_write.get_or_insert(e);
        }
        if done.is_multiple_of(100) || done == count {
            eprintln!(
                "sim: {done}/{count} seeds, {:.1} s",
                started.elapsed().as_secs_f64()
            );
        }
    });
    if let Some(e) = failed_write {
        anyhow::bail!("cannot write to stdout: {e}");
    }
    let coverage: Vec<String> = totals
        .counters
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    eprintln!("sim: totals: {}", coverage.join(" "));
    let wall_s = started.elapsed().as_secs_f64();
    let ticks = totals.counters.get("ticks").copied().unwrap_or(0);
    let simulated_s = (ticks * sim::summary::TICK_MS) as f64 / 1000.0;
    eprintln!(
        "sim: simulated {simulated_s:.0} s in {wall_s:.1} s of wall time ({:.0}x real time at {} ms per tick)",
        simulated_s / wall_s.max(1e-9),
        sim::summary::TICK_MS
    );
    if totals.failed.is_empty() {
        eprintln!(
            "sim: all {} seeds passed in {:.1} s",
            totals.runs,
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let names: Vec<String> = totals.failed.iter().map(u64::to_string).collect();
    eprintln!(
        "sim: {} of {} seeds FAILED: {}",
        totals.failed.len(),
        totals.runs,
        names.join(" ")
    );
    eprintln!("sim: reproduce one with `vellum sim --seed N`");
    Ok(ExitCode::FAILURE)
}

/// `A..B` with A < B.
fn parse_range(text: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let parsed = text
        .split_once("..")
        .and_then(|(a, b)| Some((super::number_flag(a).ok()?, super::number_flag(b).ok()?)));
    match parsed {
        Some((start, end)) if start < end => Ok(start..end),
        _ => anyhow::bail!("--seeds {text:?} is not a range A..B with A < B (B excluded)"),
    }
}
