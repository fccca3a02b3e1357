//! `vellum append`: events from stdin or a file, one JSON value per line.

use std::io::{BufRead as _, BufReader, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;

use super::{DataDirArgs, open_log, print_json};
use crate::log::{EVENT_BYTES_MAX, EVENTS_PER_APPEND_MAX};

/// Lines read from one input, at most (bounds memory before anything is written).
pub const INPUT_EVENTS_MAX: usize = 1_000_000;

/// `vellum append`
#[derive(Debug, Args)]
pub struct AppendArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The stream (a number, at least 16; ids below are reserved).
    #[arg(long, value_name = "S")]
    stream: u64,
    /// Read events from this file instead of stdin.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// Refuse the append unless the stream currently has exactly N events.
    #[arg(long, value_name = "N")]
    expected_offset: Option<u64>,
    /// Print the receipt (offsets, positions, certificate, inclusion proofs) as JSON.
    #[arg(long)]
    receipt: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: AppendArgs) -> anyhow::Result<ExitCode> {
    let events = match &args.file {
        Some(path) => {
            read_events(std::fs::File::open(path).with_context(|| format!("{}", path.display()))?)
                .with_context(|| format!("{}", path.display()))?
        }
        None => read_events(std::io::stdin().lock()).context("stdin")?,
    };
    if events.is_empty() {
        anyhow::bail!("no events: give one JSON value per line on stdin or with --file");
    }
    let log = open_log(&args.dir)?;
    let mut expected = args.expected_offset;
    let mut receipts = Vec::new();
    let mut last = None;
    for chunk in events.chunks(EVENTS_PER_APPEND_MAX) {
        let appended = log.append(args.stream, chunk, expected, None)?;
        expected = expected.map(|_| appended.next_offset);
        if args.receipt {
            receipts.push(crate::log::receipt(&log, &appended)?);
        }
        last = Some(appended);
    }
    log.close()?;
    let appended = last.expect("at least one chunk was appended");
    if args.receipt {
        print_json(&receipts)?;
    } else if args.json {
        print_json(&serde_json::json!({
            "stream": args.stream, "offset": appended.next_offset, "events": events.len(), "op": appended.op,
        }))?;
    } else {
        println!("{}", appended.next_offset);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and validates every line before anything is written: one bad line
/// refuses the whole input, naming the line.
fn read_events(input: impl Read) -> anyhow::Result<Vec<Bytes>> {
    let mut events = Vec::new();
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let number = i + 1;
        let line = line.with_context(|| format!("line {number}: not readable utf-8 text"))?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if line.len() > EVENT_BYTES_MAX {
            anyhow::bail!(
                "line {number}: {} bytes; an event is at most {EVENT_BYTES_MAX} bytes",
                line.len()
            );
        }
        serde_json::from_str::<serde::de::IgnoredAny>(line)
            .with_context(|| format!("line {number}: not a JSON value; nothing was appended"))?;
        if events.len() == INPUT_EVENTS_MAX {
            anyhow::bail!("more than {INPUT_EVENTS_MAX} events in one input; split it");
        }
        events.push(Bytes::copy_from_slice(line.as_bytes()));
    }
    Ok(events)
}
