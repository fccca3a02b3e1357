//! `vellum secrets export` and `vellum replace`: wiring only (the work is
//! `cluster::export_secrets` and `cluster::replace_replica`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::print_json;
use crate::cluster::SecretsSummary;

/// `vellum secrets`
#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Debug, Subcommand)]
enum SecretsCommand {
    /// Write what must be kept to bring this replica back on a new disk:
    /// identity and signing key, KEK file (or the PKCS#11 reference), TLS
    /// certificate and key, trust policy, token hashes and start config.
    /// Never the log or data keys (they come back from the peers). The file
    /// is as sensitive as the replica itself: 0600, never overwritten.
    /// Export again after every key rotation.
    Export(ExportArgs),
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// The replica's start config (`vellum start --config`); the replica may run.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// The secrets file to create (mode 0600; refuses an existing file).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// `vellum replace`
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).multiple(true).args(["data_dir", "config"]))]
pub struct ReplaceArgs {
    /// The secrets file `vellum secrets export` wrote for this replica.
    #[arg(long, value_name = "FILE")]
    secrets: PathBuf,
    /// The new, empty (or absent) data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// The config the replica will start with: the secrets must be of its
    /// cluster and replica, and its data directory is laid out.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: SecretsArgs) -> anyhow::Result<ExitCode> {
    let SecretsCommand::Export(args) = args.command;
    let summary = crate::cluster::export_secrets(&args.config, &args.out)?;
    if args.json {
        print_json(&summary)?;
    } else {
        print_summary("exported", &summary);
        println!("keep it offline and private: it is as sensitive as the replica itself");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replace(args: ReplaceArgs) -> anyhow::Result<ExitCode> {
    let summary = crate::cluster::replace_replica(
        &args.secrets,
        args.data_dir.as_deref(),
        args.config.as_deref(),
    )?;
    if args.json {
        print_json(&summary)?;
        return Ok(ExitCode::SUCCESS);
    }
    print_summary("laid out", &summary);
    let config = args
        .config
        .map(|c| c.display().to_string())
        .or(summary.config.clone())
        .unwrap_or_default();
    println!("start it:  vellum start --config {config}");
    println!("it holds no log: it rebuilds from its peers before it votes");
    Ok(ExitCode::SUCCESS)
}

fn print_summary(what: &str, summary: &SecretsSummary) {
    println!(
        "{what} replica {} of cluster {}",
        summary.replica, summary.cluster
    );
    println!("secrets   {}", summary.secrets);
    println!("verifier  {}", summary.verifier);
    println!("kek       {}", summary.kek);
    if let Some(dir) = &summary.data_dir {
        println!("data dir  {dir}");
    }
}
