//! `vellum demo`

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

/// `vellum demo`
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to create the demo's cluster directory (must not exist yet, or be empty).
    /// Default: a new directory under the system temp directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Print only the summary, as JSON.
    #[arg(long)]
    json: bool,
    /// Keep every replica's KEK in a PKCS#11 token instead of a dev KEK file.
    #[command(flatten)]
    pkcs11: super::pkcs11_args::Pkcs11Args,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = match args.data_dir {
        Some(dir) => dir,
        None => {
            let mut suffix = [0u8; 4];
            getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            std::env::temp_dir().join(format!("vellum-demo-{}", super::hex(&suffix)))
        }
    };
    let kek = args.pkcs11.config()?;
    let summary = if args.json {
        crate::demo::run_demo_with_kek(&dir, kek.as_ref(), &mut std::io::sink())?
    } else {
        crate::demo::run_demo_with_kek(&dir, kek.as_ref(), &mut std::io::stdout().lock())?
    };
    if args.json {
        super::print_json(&summary)?;
    }
    let passed = summary.proof_verified
        && summary.consistency_verified
        && summary.verify_passed
        && summary.replicas_agree
        && summary.bundle_verified
        && summary.witness_proof_checked
        && summary.fork_refused_by_witness
        && summary.fork_refused_by_policy
        && summary.break_glass_read
        && summary.break_glass_in_trail
        && summary.shred_refuses_reads
        && summary.shred_in_trail
        && summary.trail_events > 0
        && summary.restarted_caught_up
        && summary.certificate_signatures > usize::from(summary.replicas) / 2
        && summary.events_read_back == summary.events_appended;
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
