//! `vellum shred`, `vellum hold` and `vellum retain`: key custody (P6)
//! through a live cluster's API, as the privacy officer, so each request
//! is decided by the primary, committed in the key-custody stream and
//! recorded in the access trail like any other.

use std::process::ExitCode;

use clap::Args;
use vellum_compliance::custody::CustodyAction;

use super::export::{ApiArgs, client_with};
use crate::api::{CustodyAnswer, CustodyRequest};

/// `vellum shred`
#[derive(Debug, Args)]
pub struct ShredArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The stream whose data keys every replica destroys.
    #[arg(long, value_parser = crate::cli::number_flag)]
    stream: u64,
    /// Why (committed in the log; no PHI).
    #[arg(long)]
    reason: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `vellum hold`
#[derive(Debug, Args)]
pub struct HoldArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The stream.
    #[arg(long, value_parser = crate::cli::number_flag)]
    stream: u64,
    /// Why (committed in the log; no PHI).
    #[arg(long)]
    reason: String,
    /// Lift the stream's legal hold instead of setting one.
    #[arg(long)]
    release: bool,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

/// `vellum retain`
#[derive(Debug, Args)]
pub struct RetainArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The stream.
    #[arg(long, value_parser = crate::cli::number_flag)]
    stream: u64,
    /// Keep the stream's data at least until this time: RFC 3339 UTC (like
    /// 2032-01-01T00:00:00Z) or unix nanoseconds.
    #[arg(long, value_name = "TIME")]
    until: String,
    /// Why (committed in the log; no PHI).
    #[arg(long)]
    reason: String,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
}

pub fn shred(args: ShredArgs) -> anyhow::Result<ExitCode> {
    let request = CustodyRequest {
        reason: args.reason,
        retain_until_ms: None,
    };
    send(
        &args.api,
        args.stream,
        CustodyAction::Shred,
        &request,
        args.json,
    )
}

pub fn hold(args: HoldArgs) -> anyhow::Result<ExitCode> {
    let action = match args.release {
        true => CustodyAction::Release,
        false => CustodyAction::Hold,
    };
    let request = CustodyRequest {
        reason: args.reason,
        retain_until_ms: None,
    };
    send(&args.api, args.stream, action, &request, args.json)
}

pub fn retain(args: RetainArgs) -> anyhow::Result<ExitCode> {
    let until_ns = super::export::parse_time("--until", &args.until)?;
    let request = CustodyRequest {
        reason: args.reason,
        retain_until_ms: Some(until_ns / 1_000_000),
    };
    send(
        &args.api,
        args.stream,
        CustodyAction::Retain,
        &request,
        args.json,
    )
}

fn send(
    api: &ApiArgs,
    stream: u64,
    action: CustodyAction,
    request: &CustodyRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let client = client_with(api, |dev| {
        dev.privacy_officer_token.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "{} has no privacy-officer token (made before the role existed); give --token",
                dev.dir.display()
            )
        })
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    let answer = runtime.block_on(client.custody(stream, action, request))?;
    print_answer(&answer, json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_answer(answer: &CustodyAnswer, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(answer)?);
        return Ok(());
    }
    println!(
        "{} of stream {} committed at log position {} (op {})",
        answer.action, answer.stream, answer.position, answer.op
    );
    if answer.action == "shred" {
        println!(
            "every replica destroys its copies of the stream's data keys as it applies the op \
             ({} destroyed on the answering replica); reads now answer 410 shredded",
            answer.keys_destroyed
        );
    }
    Ok(())
}
