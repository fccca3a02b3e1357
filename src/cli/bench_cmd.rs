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
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("vellum-bench-{}", std::process::id()))
    });
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
