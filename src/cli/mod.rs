//! The command line: argument definitions and dispatch. Wiring only: each
//! command parses, calls the library, prints.

mod append;
mod bench_cmd;
mod demo;
mod init;
mod keys;
mod proof;
mod read;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// Vellum: an audited event store for healthcare.
#[derive(Debug, Parser)]
#[command(name = "vellum", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the end-to-end story on a fresh data directory: init, append sample
    /// EHR events, read back, prove, verify.
    Demo(demo::DemoArgs),
    /// Create a data directory: keys, trust policy, empty log and index.
    Init(init::InitArgs),
    /// Append events (one JSON value per line) to a stream.
    Append(append::AppendArgs),
    /// Read a stream's events back, one per line, byte for byte as appended.
    Read(read::ReadArgs),
    /// Print an inclusion proof (c2sp.org/tlog-proof@v1) or a consistency proof.
    Proof(proof::ProofArgs),
    /// Show keys.
    Keys(keys::KeysArgs),
    /// Check everything: records, chain, seals, Merkle roots, signatures, index.
    Verify(verify::VerifyArgs),
    /// Maintain the audit index.
    Index(IndexArgs),
    /// Measure Vellum against a raw fdatasync loop and SQLite on this disk.
    Bench(bench_cmd::BenchArgs),
}

/// `vellum index ...`
#[derive(Debug, Args)]
struct IndexArgs {
    #[command(subcommand)]
    command: IndexCommand,
}

#[derive(Debug, Subcommand)]
enum IndexCommand {
    /// Drop the index's projection rows and rebuild them from the log.
    Rebuild(DataDirArgs),
}

/// Where the data lives and which index to use.
#[derive(Debug, Args, Clone)]
pub struct DataDirArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// Audit index URL (postgres://...); default: SQLite file in the data directory.
    #[arg(long, value_name = "URL", env = "VELLUM_INDEX_URL")]
    pub index_url: Option<String>,
}

/// Runs one command; the exit code says whether every check passed.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Init(args) => init::run(args),
        Command::Append(args) => append::run(args),
        Command::Read(args) => read::run(args),
        Command::Proof(args) => proof::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Index(IndexArgs {
            command: IndexCommand::Rebuild(args),
        }) => init::rebuild_index(args),
        Command::Bench(args) => bench_cmd::run(args),
    }
}

/// Opens the log of a data directory for a command.
fn open_log(args: &DataDirArgs) -> anyhow::Result<crate::log::LocalLog> {
    let options = crate::log::LogOptions {
        index_url: args.index_url.clone(),
        ..Default::default()
    };
    let (log, report) = crate::log::LocalLog::open(&args.data_dir, options)?;
    if let Some(torn) = &report.torn_tail {
        eprintln!("warning: recovery truncated a torn tail: {torn}");
    }
    Ok(log)
}

/// Prints a value as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    vellum_audit::hash::to_hex(bytes)
}
