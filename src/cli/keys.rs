//! `vellum keys show`: public key material only.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::print_json;
use crate::datadir::DataDir;

/// `vellum keys`
#[derive(Debug, Args)]
pub struct KeysArgs {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Show this replica's public keys (never secrets).
    Show(ShowArgs),
}

#[derive(Debug, Args)]
struct ShowArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: std::path::PathBuf,
    /// Print only the verifier keys, one per line, in signed-note vkey format.
    #[arg(long)]
    vkeys: bool,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let KeysCommand::Show(args) = args.command;
    super::check_data_dir(&args.data_dir, true)?;
    let dir = DataDir::new(&args.data_dir);
    // Only public keys are printed, but world-readable secrets next to them
    // are refused here as by every other command, so the user hears of it.
    super::check_key_permissions(&dir)?;
    let signer = crate::crypto::load_signing_key_file(&dir.signing_key())?;
    let vkey = signer.verifier().to_vkey();
    if args.vkeys {
        println!("{vkey}");
    } else if args.json {
        print_json(&serde_json::json!({
            "name": signer.name(),
            "key_id": crate::cli::hex(&signer.key_id()),
            "vkey": vkey,
        }))?;
    } else {
        println!("name    {}", signer.name());
        println!("key id  {}", crate::cli::hex(&signer.key_id()));
        println!("vkey    {vkey}");
    }
    Ok(ExitCode::SUCCESS)
}
