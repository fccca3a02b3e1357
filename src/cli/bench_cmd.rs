//! `vellum bench`

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

/// `vellum bench`
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Working directory; every system writes here (default: a temp directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Appends per system and concurrency level.
    #[arg(long, default_value_t = 2000, value_parser = crate::cli::number_flag)]
    appends: u64,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 1024, value_parser = crate::cli::number_flag_as::<usize>)]
    event_bytes: usize,
    /// Concurrency levels, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64", value_parser = crate::cli::number_flag_as::<usize>)]
    concurrency: Vec<usize>,
    /// Time limit per system and level, in seconds.
    #[arg(long, default_value_t = 30, value_parser = crate::cli::number_flag)]
    seconds: u64,
    /// PostgreSQL URL to include PostgreSQL (synchronous_commit=on).
    #[arg(long, value_name = "URL", env = "VELLUM_BENCH_POSTGRES_URL")]
    postgres_url: Option<String>,
    /// Also build a log of this many MB and time `vellum verify` on it
    /// against a raw SHA-256 pass over the same bytes (0: skip).
    #[arg(long, value_name = "MB", default_value_t = 0, value_parser = crate::cli::number_flag)]
    verify_mb: u64,
    /// Also measure bulk ingest: 8 clients appending N events per append to
    /// the three-replica cluster, against a raw 1 MiB write+fdatasync loop
    /// (0: skip; at most the events one append carries).
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = crate::cli::number_flag_in(0, crate::bench::BATCH_MAX as u64))]
    batch: u64,
    /// Skip the three-replica cluster (started from this binary on loopback).
    #[arg(long)]
    no_cluster: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Instead of the systems above: build logs of `--scale-sizes` events
    /// (512 bytes, CLI batches of 4096) and one of `--scale-per-op` events
    /// (one per op), and measure a replica's open, memory and descriptors,
    /// bytes on disk, and `vellum verify` (full and `--since` the last 1%).
    #[arg(long)]
    scale: bool,
    /// Log sizes of `--scale`, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000", value_parser = crate::cli::number_flag)]
    scale_sizes: Vec<u64>,
    /// With `--scale`: also a log of 10,000,000 events.
    #[arg(long)]
    scale_10m: bool,
    /// With `--scale`: events of the log written one event per op (0: skip).
    #[arg(long, default_value_t = 10_000, value_parser = crate::cli::number_flag)]
    scale_per_op: u64,
    /// With `--scale`: events appended after the measured open.
    #[arg(long, default_value_t = 10_000, value_parser = crate::cli::number_flag)]
    scale_appends: u64,
    /// Internal: the open probe of `--scale` (opens DIR, measures, appends).
    #[arg(long, value_name = "DIR", hide = true)]
    scale_probe: Option<PathBuf>,
    /// Internal: events per append of the open probe.
    #[arg(long, default_value_t = 4096, hide = true, value_parser = crate::cli::number_flag)]
    scale_probe_batch: u64,
}

fn run_scale(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    if let Some(probe) = &args.scale_probe {
        let result = crate::bench::scale::probe(probe, args.scale_appends, args.scale_probe_batch)?;
        super::print_json(&result)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut sizes = args.scale_sizes.clone();
    if args.scale_10m {
        sizes.push(10_000_000);
    }
    let config = crate::bench::scale::ScaleConfig {
        dir: dir.to_path_buf(),
        sizes,
        per_op_events: args.scale_per_op,
        appends: args.scale_appends,
        exe: std::env::current_exe()?,
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    let report = crate::bench::scale::run(&config, &|what| {
        progress.set_message(format!("bench --scale: {what}"))
    });
    progress.finish_and_clear();
    let report = report?;
    let _ = std::fs::remove_dir_all(dir);
    if args.json {
        super::print_json(&report)?;
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vellum-bench-{}", std::process::id()))
    });
    if args.scale || args.scale_probe.is_some() {
        return run_scale(&args, &dir);
    }
    let config = crate::bench::BenchConfig {
        dir: dir.clone(),
        appends: args.appends,
        event_bytes: args.event_bytes.max(16),
        concurrency: args.concurrency,
        time_limit: Duration::from_secs(args.seconds),
        postgres_url: args.postgres_url,
        verify_mb: args.verify_mb,
        batch: usize::try_from(args.batch)?,
        cluster_exe: match args.no_cluster {
            true => None,
            false => Some(std::env::current_exe()?),
        },
    };
    let progress = indicatif::ProgressBar::new_spinner();
    progress.enable_steady_tick(Duration::from_millis(200));
    let report = crate::bench::run(&config, &|what| {
        progress.set_message(format!("bench: {what}"))
    });
    progress.finish_and_clear();
    let report = report?;
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        super::print_json(&report)?;
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
