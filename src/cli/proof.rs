//! `vellum proof`: an event's inclusion proof, or a consistency proof; and
//! `vellum proof check`, which checks offline that a receipt's proof is
//! about a given event: inclusion, quorum of pinned keys, commitment and
//! witness cosignatures (the rules are `vellum_audit::proof::check_event`'s).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Args, Subcommand};
use vellum_audit::policy::Policy;
use vellum_audit::proof::{EventCheck, InclusionProof, PartCheck, check_event};

use super::{DataDirArgs, open_log_read_only};

/// The largest proof file `proof check` reads, in bytes (a proof holds at
/// most 64 hashes and a certificate of a few signatures).
const PROOF_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The largest event file `proof check` reads, in bytes (an event is at
/// most 1 MiB).
const EVENT_FILE_BYTES_MAX: u64 = vellum_audit::record::EVENT_BYTES_MAX as u64;

/// `vellum proof`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProofArgs {
    #[command(subcommand)]
    command: Option<ProofCommand>,
    #[command(flatten)]
    dir: Option<DataDirArgs>,
    /// The stream of the event to prove.
    #[arg(long, value_name = "S", required_unless_present = "consistency", value_parser = crate::cli::number_flag)]
    stream: Option<u64>,
    /// The stream offset of the event to prove.
    #[arg(long, value_name = "N", required_unless_present = "consistency", value_parser = crate::cli::number_flag)]
    offset: Option<u64>,
    /// Print a consistency proof instead: the log at --from-size is a prefix of the newer one.
    #[arg(long, requires = "from_size", conflicts_with_all = ["stream", "offset"])]
    consistency: bool,
    /// The older tree size (a checkpoint the verifier kept).
    #[arg(long, value_name = "A", value_parser = crate::cli::number_flag)]
    from_size: Option<u64>,
    /// The newer tree size; default: the latest certificate.
    #[arg(long, value_name = "B", value_parser = crate::cli::number_flag)]
    to_size: Option<u64>,
}

#[derive(Debug, Subcommand)]
enum ProofCommand {
    /// Check offline that a proof (from a receipt, `vellum proof` or `GET
    /// .../proof`) is about an event: the inclusion proof, the certificate's
    /// quorum of distinct pinned keys, the commitment of the salt and the
    /// event's bytes, and the cosignatures of the policy's outside witnesses
    /// (`cosigner-quorum`). Exits 1 naming each part that failed.
    Check(CheckArgs),
}

/// `vellum proof check`
#[derive(Debug, Args)]
struct CheckArgs {
    /// The `c2sp.org/tlog-proof@v1` text (one element of a receipt's `proofs`).
    #[arg(long, value_name = "P")]
    proof: PathBuf,
    /// The event's bytes exactly as appended (for a JSON event: its text as sent).
    #[arg(long, value_name = "FILE")]
    event: PathBuf,
    /// The event's commitment salt, standard base64 (the receipt's `salts`
    /// element, or the `salt` of a read).
    #[arg(long, value_name = "B64")]
    salt: String,
    /// The trust policy to pin (keys and quorum).
    #[arg(long, value_name = "POLICY")]
    policy: PathBuf,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ProofArgs) -> anyhow::Result<ExitCode> {
    if let Some(ProofCommand::Check(check)) = args.command {
        return run_check(check);
    }
    let dir = args
        .dir
        .as_ref()
        .context("give --data-dir DIR (or use `vellum proof check`)")?;
    let log = open_log_read_only(dir)?;
    let text = if args.consistency {
        let from = args
            .from_size
            .expect("clap requires --from-size with --consistency");
        let to = args.to_size.map_or_else(
            || "the latest certificate".to_string(),
            |n| format!("tree size {n}"),
        );
        log.consistency_proof(from, args.to_size)
            .with_context(|| format!("consistency proof from tree size {from} to {to}"))?
            .encode()
    } else {
        let stream = args
            .stream
            .expect("clap requires --stream without --consistency");
        let offset = args
            .offset
            .expect("clap requires --offset without --consistency");
        log.inclusion_proof(stream, offset)?.encode()
    };
    log.close()?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn run_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let proof_text =
        String::from_utf8(read_bounded(&args.proof, PROOF_FILE_BYTES_MAX, "proof")?)
            .with_context(|| format!("{}: the proof is not utf-8 text", args.proof.display()))?;
    let proof = InclusionProof::parse(&proof_text)
        .with_context(|| format!("{}: not a tlog-proof", args.proof.display()))?;
    let event = read_bounded(&args.event, EVENT_FILE_BYTES_MAX, "event")?;
    let salt: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(args.salt.trim())
        .ok()
        .and_then(|bytes| bytes.try_into().ok())
        .context("--salt is not the standard base64 of 32 bytes")?;
    let policy_text = std::fs::read_to_string(&args.policy)
        .with_context(|| format!("{}: cannot read the trust policy", args.policy.display()))?;
    let policy = Policy::parse(&policy_text).with_context(|| args.policy.display().to_string())?;
    let check = check_event(&proof, &policy, &salt, &event);
    match args.json {
        true => super::print_json(&CheckOutput {
            passed: check.passed(),
            failed: check.failed_parts(),
            check: &check,
        })?,
        false => print!("{}", check_text(&check)),
    }
    Ok(match check.passed() {
        true => ExitCode::SUCCESS,
        false => ExitCode::FAILURE,
    })
}

/// The JSON of `proof check --json`.
#[derive(Debug, serde::Serialize)]
struct CheckOutput<'a> {
    passed: bool,
    failed: Vec<&'static str>,
    #[serde(flatten)]
    check: &'a EventCheck,
}

fn check_text(check: &EventCheck) -> String {
    let line = |name: &str, part: &PartCheck| {
        let tag = if part.passed { "ok  " } else { "FAIL" };
        format!("{tag} {name:<10} {}\n", part.message)
    };
    let mut out = String::new();
    out.push_str(&line("inclusion", &check.inclusion));
    out.push_str(&line("quorum", &check.quorum));
    out.push_str(&line("commitment", &check.commitment));
    out.push_str(&line("witnesses", &check.witnesses));
    match check.passed() {
        true => out.push_str("proof check PASSED\n"),
        false => out.push_str(&format!(
            "proof check FAILED: {}\n",
            check.failed_parts().join(", ")
        )),
    }
    out
}

/// A file's bytes, refusing one larger than `max` (named `what`).
fn read_bounded(path: &Path, max: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    let length = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read the {what}", path.display()))?
        .len();
    if length > max {
        anyhow::bail!(
            "{}: {length} bytes, more than the {max} a {what} file may have",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read the {what}", path.display()))
}
