//! `vellum append`: events from stdin or a file, one JSON value per line.

use std::io::{BufRead as _, BufReader, IsTerminal as _, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;

use super::{DataDirArgs, open_log, print_json};
use crate::log::{EVENT_BYTES_MAX, EVENTS_PER_APPEND_MAX};

/// Lines read from one input, at most (bounds memory before anything is written).
pub const INPUT_EVENTS_MAX: usize = 1_000_000;
/// Bytes read from one input, at most (bounds memory before anything is written).
pub const INPUT_BYTES_MAX: usize = 256 * 1024 * 1024;

/// `vellum append`
#[derive(Debug, Args)]
pub struct AppendArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// The stream (a number, at least 16; ids below are reserved).
    #[arg(long, value_name = "S", value_parser = crate::cli::number_flag)]
    stream: u64,
    /// Read events from this file instead of stdin. Every line is checked
    /// before anything is written; an input of more than 4096 events is
    /// appended as several batches, each all-or-nothing.
    #[arg(long, value_name = "F")]
    file: Option<PathBuf>,
    /// Refuse the append unless the stream currently has exactly N events.
    #[arg(long, value_name = "N", value_parser = crate::cli::number_flag)]
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
        None => {
            if std::io::stdin().is_terminal() {
                eprintln!("reading events from stdin, one JSON value per line; end with Ctrl-D");
            }
            read_events(std::io::stdin().lock()).context("stdin")?
        }
    };
    if events.is_empty() {
        let source = args
            .file
            .as_ref()
            .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
        anyhow::bail!(
            "no events in {source}: it is empty or holds only blank lines; \
             give one JSON value per line on stdin or with --file"
        );
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
            // The stream's new length; the batch took [first_offset, next_offset).
            "stream": args.stream,
            "first_offset": appended.next_offset - events.len() as u64,
            "next_offset": appended.next_offset,
            "events": events.len(),
            "op": appended.op,
        }))?;
    } else {
        println!("{}", appended.next_offset);
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads and validates every line before anything is written: one bad line
/// refuses the whole input, naming the line. Memory stays bounded: a line is
/// read at most one byte past the event limit, the input at most
/// [`INPUT_BYTES_MAX`].
fn read_events(input: impl Read) -> anyhow::Result<Vec<Bytes>> {
    let mut reader = BufReader::new(input);
    let mut events = Vec::new();
    let mut input_bytes = 0usize;
    let mut line = Vec::new();
    for number in 1usize.. {
        line.clear();
        // Room for the longest event plus "\r\n": a line that fills it
        // without ending is too long, whatever follows.
        let line_limit = EVENT_BYTES_MAX as u64 + 2;
        let read = (&mut reader)
            .take(line_limit)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("line {number}: cannot read"))?;
        if read == 0 {
            break;
        }
        input_bytes += read;
        if input_bytes > INPUT_BYTES_MAX {
            anyhow::bail!("more than {INPUT_BYTES_MAX} bytes in one input; split it");
        }
        if let Some(event) = check_line(&mut line, number)? {
            if events.len() == INPUT_EVENTS_MAX {
                anyhow::bail!("more than {INPUT_EVENTS_MAX} events in one input; split it");
            }
            events.push(event);
        }
    }
    Ok(events)
}

/// One input line without its line end: `None` when blank, the event when it
/// is one JSON value, an error naming the line otherwise.
fn check_line(line: &mut Vec<u8>, number: usize) -> anyhow::Result<Option<Bytes>> {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
    if line.len() > EVENT_BYTES_MAX {
        anyhow::bail!(
            "line {number}: longer than {EVENT_BYTES_MAX} bytes, the most one event may hold; \
             nothing was appended"
        );
    }
    let text = std::str::from_utf8(line).map_err(|e| {
        anyhow::anyhow!(
            "line {number}: not valid UTF-8 (bad byte at column {}); nothing was appended",
            e.valid_up_to() + 1
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(text) {
        let reason = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = reason.strip_suffix(&suffix).unwrap_or(&reason);
        anyhow::bail!(
            "line {number}, column {}: not a JSON value ({reason}); nothing was appended",
            e.column()
        );
    }
    Ok(Some(Bytes::copy_from_slice(text.as_bytes())))
}
