//! HIPAA accounting of disclosures (45 CFR 164.528) for one patient's
//! stream, built from the access trail (P7): every successful trail event
//! that disclosed data ([`AccessAction::discloses`]: stream reads, log
//! reads, subscriptions, exports) of that stream within a time range, with
//! the date, the recipient (the principal), a description of what was
//! disclosed and the stated purpose — the content 164.528(b)(2) asks for.
//!
//! A log read or subscription names global positions, not a stream; it is
//! listed when its range covers one of the stream's positions, which the
//! caller supplies (from the audit index). Without them such reads cannot be
//! attributed and are left out — the caller must say so to the requester.
//!
//! Refused or failed attempts disclosed nothing and are not listed (they stay
//! in the full trail export). Disclosures for treatment, payment and health
//! care operations are exempt from the accounting (164.528(a)(1)(i)); they
//! are listed with `tpo_exempt: true` so the privacy officer decides, rather
//! than this code silently dropping them.

use std::path::Path;

use serde::Serialize;

use crate::fhir::rfc3339_utc;
use crate::tabular::{ExportError, csv_record, write_durably};
use crate::trail::{AccessAction, AccessEvent};

/// v3-ActReason purposes of use that are treatment, payment or operations.
pub const TPO_PURPOSES: [&str; 4] = ["TREAT", "ETREAT", "HPAYMT", "HOPERAT"];

/// The CSV columns of an accounting, in order.
pub const DISCLOSURE_COLUMNS: [&str; 12] = [
    "date",
    "time_ns",
    "recipient",
    "role",
    "action",
    "description",
    "purpose",
    "tpo_exempt",
    "stream",
    "from",
    "to",
    "position",
];

/// One disclosure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    /// Date of the disclosure, RFC 3339 UTC.
    pub date: String,
    /// The same, unix nanoseconds.
    pub time_ns: u64,
    /// Who received the data: the authenticated principal.
    pub recipient: String,
    /// The recipient's role.
    pub role: String,
    /// The trail action.
    pub action: &'static str,
    /// What was disclosed, in words.
    pub description: String,
    /// The stated purpose of use, if any.
    pub purpose: Option<String>,
    /// True when the purpose is treatment, payment or operations.
    pub tpo_exempt: bool,
    /// The stream (log reads: absent).
    pub stream: Option<u64>,
    /// First offset (log reads: position).
    pub from: Option<u64>,
    /// One past the last.
    pub to: Option<u64>,
    /// The trail event's global position, to fetch its proof.
    pub position: Option<u64>,
}

/// An accounting: the disclosures of `stream` in `[from, to)` nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Accounting {
    /// The patient's stream.
    pub stream: u64,
    /// Start of the period, unix nanoseconds (inclusive).
    pub from: u64,
    /// End of the period, unix nanoseconds (exclusive).
    pub to: u64,
    /// When this accounting was produced.
    pub generated_ns: u64,
    /// The disclosures, in trail order.
    pub disclosures: Vec<Disclosure>,
    /// How many.
    pub count: usize,
}

/// Builds the accounting of `stream` for `[from_ns, to_ns)` from trail
/// events (with their positions). `stream_positions` are the global
/// positions of the stream's events, sorted, used to attribute log reads.
pub fn account(
    events: &[(AccessEvent, Option<u64>)],
    stream: u64,
    stream_positions: &[u64],
    from_ns: u64,
    to_ns: u64,
    generated_ns: u64,
) -> Accounting {
    let disclosures: Vec<Disclosure> = events
        .iter()
        .filter(|(e, _)| e.action.discloses() && e.succeeded())
        .filter(|(e, _)| (from_ns..to_ns).contains(&e.time_ns))
        .filter(|(e, _)| touches(e, stream, stream_positions))
        .map(|(e, position)| disclosure(e, *position))
        .collect();
    Accounting {
        stream,
        from: from_ns,
        to: to_ns,
        generated_ns,
        count: disclosures.len(),
        disclosures,
    }
}

/// True when the event disclosed data of `stream`.
fn touches(event: &AccessEvent, stream: u64, stream_positions: &[u64]) -> bool {
    match event.stream {
        Some(s) => s == stream,
        None => {
            let is_log_read = matches!(
                event.action,
                AccessAction::ReadLog | AccessAction::Subscribe
            );
            let from = event.from.unwrap_or(0);
            let to = event.to.unwrap_or(u64::MAX);
            // First stream position at or after `from`; covered if below `to`.
            let first = stream_positions.partition_point(|&p| p < from);
            is_log_read && stream_positions.get(first).is_some_and(|&p| p < to)
        }
    }
}

fn disclosure(event: &AccessEvent, position: Option<u64>) -> Disclosure {
    let range = match (event.from, event.to) {
        (Some(from), Some(to)) if to > from => format!("{from} to {}", to - 1),
        (Some(_), Some(_)) => "none".to_string(),
        (Some(from), None) => format!("{from} onwards"),
        _ => "all".to_string(),
    };
    let description = match event.stream {
        Some(stream) => format!("events of stream {stream}, offsets {range}"),
        None => format!("global log positions {range}, including events of the stream"),
    };
    let description = format!("{description} ({})", event.action.as_str());
    Disclosure {
        date: rfc3339_utc(event.time_ns),
        time_ns: event.time_ns,
        recipient: event.principal.clone(),
        role: event.role.clone(),
        action: event.action.as_str(),
        description,
        purpose: event.purpose.clone(),
        tpo_exempt: event
            .purpose
            .as_deref()
            .is_some_and(|p| TPO_PURPOSES.contains(&p)),
        stream: event.stream,
        from: event.from,
        to: event.to,
        position,
    }
}

/// The accounting as CSV text (header row, RFC 4180).
pub fn disclosures_csv(accounting: &Accounting) -> String {
    let mut out = csv_record(&DISCLOSURE_COLUMNS);
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for d in &accounting.disclosures {
        out.push_str(&csv_record(&[
            d.date.clone(),
            d.time_ns.to_string(),
            d.recipient.clone(),
            d.role.clone(),
            d.action.to_string(),
            d.description.clone(),
            d.purpose.clone().unwrap_or_default(),
            d.tpo_exempt.to_string(),
            number(d.stream),
            number(d.from),
            number(d.to),
            number(d.position),
        ]));
    }
    out
}

/// The accounting as pretty JSON text, ending in a newline.
pub fn disclosures_json(accounting: &Accounting) -> String {
    let mut text =
        serde_json::to_string_pretty(accounting).expect("an accounting always serializes");
    text.push('\n');
    text
}

/// Writes the CSV to a new file; returns the disclosures written.
pub fn write_disclosures_csv(path: &Path, accounting: &Accounting) -> Result<usize, ExportError> {
    let text = disclosures_csv(accounting);
    write_durably(path, |out| out.write_all(text.as_bytes()))?;
    Ok(accounting.count)
}

/// Writes the JSON to a new file; returns the disclosures written.
pub fn write_disclosures_json(path: &Path, accounting: &Accounting) -> Result<usize, ExportError> {
    let text = disclosures_json(accounting);
    write_durably(path, |out| out.write_all(text.as_bytes()))?;
    Ok(accounting.count)
}
