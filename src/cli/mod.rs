//! The command line: argument definitions and dispatch. Wiring only: each
//! command parses, calls the library, prints.

mod append;
mod bench_cmd;
mod custody;
mod demo;
mod dev;
mod export;
mod init;
mod keys;
mod pkcs11_args;
mod proof;
mod read;
mod secrets;
mod sim;
mod start;
pub mod time;
mod verify;
mod witness;

use std::path::{Path, PathBuf};
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
    /// Start a local cluster (three replicas on loopback) and serve the client
    /// API until Ctrl-C.
    Dev(dev::DevArgs),
    /// Run one replica of a cluster (`--config`, as `vellum dev` writes them).
    Start(start::StartArgs),
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
    /// Compliance exports from a live cluster: signed event bundles, the
    /// access trail (FHIR AuditEvent, CSV, NDJSON), accountings of disclosures.
    Export(export::ExportArgs),
    /// Crypto-shred a stream (privacy officer): every replica destroys its
    /// copies of the stream's data keys once the shred op commits.
    Shred(custody::ShredArgs),
    /// Set (or with --release lift) a legal hold on a stream: no shred while it holds.
    Hold(custody::HoldArgs),
    /// Raise a stream's retention floor: no shred before that time.
    Retain(custody::RetainArgs),
    /// Maintain the audit index.
    Index(IndexArgs),
    /// Keep a replica's secrets, to bring it back on a new disk (`export`).
    Secrets(secrets::SecretsArgs),
    /// Lay out a replica whose disk was lost from its kept secrets (no log:
    /// it rebuilds from its peers when started).
    Replace(secrets::ReplaceArgs),
    /// Measure Vellum against a raw fdatasync loop and SQLite on this disk.
    Bench(bench_cmd::BenchArgs),
    /// Run the deterministic simulator of the replicated core (seeded faults, checkers).
    Sim(sim::SimArgs),
    /// Run an outside witness (c2sp.org/tlog-witness): cosigns a log's
    /// checkpoints only if consistent with every one it cosigned before.
    Witness(witness::WitnessArgs),
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

/// Why a number flag was refused, without the flag's name: clap's error
/// already says "invalid value '…' for '--flag <N>'".
fn number_refusal(error: &crate::bounds::NumberError) -> String {
    match error {
        crate::bounds::NumberError::NotCanonical { .. } => {
            "not a canonical decimal number (digits only, no sign, no leading zero)".to_string()
        }
        crate::bounds::NumberError::TooLarge { .. } => format!(
            "above the largest accepted value {} (2^63-1)",
            crate::bounds::EDGE_INTEGER_MAX
        ),
    }
}

/// clap value parser of every numeric flag: the edge rule of
/// [`crate::bounds::parse_canonical`] (one canonical decimal spelling, at
/// most `i64::MAX`), so the CLI never stores a number the API would refuse.
pub(crate) fn number_flag(text: &str) -> Result<u64, String> {
    crate::bounds::parse_canonical("flag", text).map_err(|e| number_refusal(&e))
}

/// [`number_flag`] converted to a narrower type (`u8`, `usize`, ...).
pub(crate) fn number_flag_as<T: TryFrom<u64>>(text: &str) -> Result<T, String> {
    let value = number_flag(text)?;
    T::try_from(value).map_err(|_| format!("{value} is too large for this flag"))
}

/// [`number_flag`] within `min..=max`.
pub(crate) fn number_flag_in(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |text: &str| {
        let value = number_flag(text)?;
        if value < min || value > max {
            return Err(format!("{value} is not in {min}..={max}"));
        }
        Ok(value)
    }
}

/// Runs one command; the exit code says whether every check passed.
///
/// An error comes back as one message: causes whose text the message already
/// holds are dropped, so `main` does not print the same cause twice.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    dispatch(cli).map_err(|error| anyhow::anyhow!(error_text(&error)))
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Dev(args) => dev::run(args),
        Command::Start(args) => start::run(args),
        Command::Init(args) => init::run(args),
        Command::Append(args) => append::run(args),
        Command::Read(args) => read::run(args),
        Command::Proof(args) => proof::run(args),
        Command::Keys(args) => keys::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Export(args) => export::run(args),
        Command::Shred(args) => custody::shred(args),
        Command::Hold(args) => custody::hold(args),
        Command::Retain(args) => custody::retain(args),
        Command::Index(IndexArgs {
            command: IndexCommand::Rebuild(args),
        }) => init::rebuild_index(args),
        Command::Secrets(args) => secrets::run(args),
        Command::Replace(args) => secrets::replace(args),
        Command::Bench(args) => bench_cmd::run(args),
        Command::Sim(args) => sim::run(args),
        Command::Witness(args) => witness::run(args),
    }
}

/// The error and its causes joined with ": ", skipping a cause whose text
/// the message already ends with (many library errors print their source).
fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.ends_with(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// Refuses a data directory that does not exist, or (when `initialized` is
/// asked for) one that `vellum init` did not create, saying how to fix it.
fn check_data_dir(path: &Path, initialized: bool) -> anyhow::Result<()> {
    if !path.is_dir() {
        anyhow::bail!(
            "data directory {} does not exist (create one with `vellum init --data-dir {}`)",
            path.display(),
            path.display()
        );
    }
    let meta = crate::datadir::DataDir::new(path).meta();
    if initialized && !meta.exists() {
        anyhow::bail!(
            "{} is not a vellum data directory: {} is missing (create one with `vellum init`)",
            path.display(),
            meta.display()
        );
    }
    Ok(())
}

/// Refuses a key directory, or a file in it, that group or others may
/// access: the same check and message as the key store's own.
fn check_key_permissions(dir: &crate::datadir::DataDir) -> Result<(), crate::crypto::CryptoError> {
    let keys = dir.keys();
    let io = |path: &Path, source| crate::crypto::CryptoError::Io {
        path: path.to_path_buf(),
        source,
    };
    crate::crypto::check_private(&keys)?;
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&keys)
        .map_err(|e| io(&keys, e))?
        .map(|entry| entry.map(|e| e.path()).map_err(|e| io(&keys, e)))
        .collect::<Result<_, _>>()?;
    entries.sort();
    entries
        .iter()
        .try_for_each(|path| crate::crypto::check_private(path))
}

/// How long a command waits for another vellum process to release the
/// data directory before giving up.
pub const LOCK_WAIT_MS_MAX: u64 = 10 * 60 * 1000;

/// Takes the data directory's lock for a command that does not open the log
/// (verify), saying so when it has to wait.
fn lock_data_dir(path: &Path) -> anyhow::Result<crate::datadir::DirLock> {
    let dir = crate::datadir::DataDir::new(path);
    match dir.lock(0) {
        Err(crate::datadir::LockError::Busy { .. }) => {
            eprintln!(
                "waiting for another vellum process using {} to finish",
                path.display()
            );
            Ok(dir.lock(LOCK_WAIT_MS_MAX)?)
        }
        other => Ok(other?),
    }
}

/// Opens the log of a data directory for a command; the log holds the
/// directory's lock (waiting, with a message, for another process).
fn open_log(args: &DataDirArgs) -> anyhow::Result<crate::log::LocalLog> {
    open_log_with(args, false)
}

/// Opens the log read-only, for commands that must change nothing.
fn open_log_read_only(args: &DataDirArgs) -> anyhow::Result<crate::log::LocalLog> {
    open_log_with(args, true)
}

fn open_log_with(args: &DataDirArgs, read_only: bool) -> anyhow::Result<crate::log::LocalLog> {
    check_data_dir(&args.data_dir, true)?;
    let mut options = crate::log::LogOptions {
        index_url: args.index_url.clone(),
        ..Default::default()
    };
    options.storage.read_only = read_only;
    let opened = match crate::log::LocalLog::open(&args.data_dir, options.clone()) {
        Err(crate::log::LogError::Busy(_)) => {
            eprintln!(
                "waiting for another vellum process using {} to finish",
                args.data_dir.display()
            );
            options.lock_wait_ms = LOCK_WAIT_MS_MAX;
            crate::log::LocalLog::open(&args.data_dir, options)
        }
        other => other,
    };
    let (log, report) = opened?;
    if let Some(torn) = &report.torn_tail {
        eprintln!("warning: recovery found a torn tail: {torn}");
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
