//! `vellum start --config C`: run one replica of a cluster until stopped.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `vellum start`
#[derive(Debug, Args)]
pub struct StartArgs {
    /// The replica's configuration file (JSON; `vellum dev` writes examples).
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(args: StartArgs) -> anyhow::Result<ExitCode> {
    crate::replica::run(&args.config)?;
    Ok(ExitCode::SUCCESS)
}
