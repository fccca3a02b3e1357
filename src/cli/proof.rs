//! `vellum proof`: an event's inclusion proof, or a consistency proof.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Args;

use super::{DataDirArgs, open_log_read_only};

/// `vellum proof`
#[derive(Debug, Args)]
pub struct ProofArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The stream of the event to prove.
    #[arg(long, value_name = "S", required_unless_present = "consistency")]
    stream: Option<u64>,
    /// The stream offset of the event to prove.
    #[arg(long, value_name = "N", required_unless_present = "consistency")]
    offset: Option<u64>,
    /// Print a consistency proof instead: the log at --from-size is a prefix of the newer one.
    #[arg(long, requires = "from_size", conflicts_with_all = ["stream", "offset"])]
    consistency: bool,
    /// The older tree size (a checkpoint the verifier kept).
    #[arg(long, value_name = "A")]
    from_size: Option<u64>,
    /// The newer tree size; default: the latest certificate.
    #[arg(long, value_name = "B")]
    to_size: Option<u64>,
}

pub fn run(args: ProofArgs) -> anyhow::Result<ExitCode> {
    let log = open_log_read_only(&args.dir)?;
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
