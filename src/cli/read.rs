//! `vellum read`: a stream's events, one per line, byte for byte as appended
//! (the payload; envelope fields are not printed).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Args;

use super::{DataDirArgs, open_log_read_only};

/// `vellum read`
#[derive(Debug, Args)]
pub struct ReadArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The stream.
    #[arg(long, value_name = "S", value_parser = crate::cli::number_flag)]
    stream: u64,
    /// The first stream offset to read.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = crate::cli::number_flag)]
    from: u64,
    /// Events to read at most.
    #[arg(
        long,
        value_name = "M",
        default_value_t = crate::log::READ_EVENTS_MAX,
        value_parser = crate::cli::number_flag_in(0, crate::log::READ_EVENTS_MAX),
    )]
    max: u64,
}

pub fn run(args: ReadArgs) -> anyhow::Result<ExitCode> {
    let log = open_log_read_only(&args.dir)?;
    let events = log.read(args.stream, args.from, args.max)?;
    // Reading at the end gives nothing (a reader polls there); reading past
    // it is a mistake worth saying, which only the event before shows.
    let past_end =
        events.is_empty() && args.from > 0 && log.read(args.stream, args.from - 1, 1)?.is_empty();
    log.close()?;
    if past_end {
        anyhow::bail!(
            "--from {} is past the end of stream {}: it has fewer than {} events",
            args.from,
            args.stream,
            args.from
        );
    }
    let mut out = std::io::stdout().lock();
    for event in events {
        // An event with envelope fields prints its payload only.
        if event.enveloped {
            let envelope =
                vellum_audit::envelope::Envelope::decode(&event.payload).map_err(|e| {
                    anyhow::anyhow!("stream {} offset {}: {e}", args.stream, event.offset)
                })?;
            out.write_all(&envelope.payload)?;
        } else {
            out.write_all(&event.payload)?;
        }
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
