//! HIPAA accounting of disclosures (45 CFR 164.528) for one patient's
//! stream, built from the access trail (P7): every successful trail event
//! that disclosed data ([`AccessAction::discloses`]: stream reads, log
//! reads, subscriptions, exports) of that stream within a time range, with
//! the date, the recipient, a description of what was disclosed and the
//! stated purpose — the content 164.528(b)(2) asks for.
//!
//! Recipient and description are the ones the request named (trail members
//! `recipient`, `description`); without them the recipient is the API
//! account and the description is the range that was read.
//!
//! A global-log read or a subscription window names positions, not a
//! stream. It is attributed to the stream when its trail event lists the
//! stream among the `streams` it returned, or (when the caller supplies the
//! stream's positions) when its range covers one of them. When neither can
//! tell — an event written before `streams` existed, or one whose list was
//! cut at its bound — the accounting cannot say whether the patient's data
//! was among what was returned: such reads are listed apart, under
//! `not_attributable`, and the export says so in plain words rather than
//! leaving them out.
//!
//! Left out, and counted in `omitted`: refused or failed attempts (nothing
//! was disclosed; they stay in the full trail export), reads that returned
//! no event, and internal reads by the replica itself (role `system`).
//! Disclosures exempt from the accounting under 164.528(a)(1) — treatment,
//! payment and health care operations, disclosures to the individual, and
//! the others an HL7 v3 purpose-of-use code can name — are listed and
//! marked with the rule (`exempt_rule`), so the privacy officer decides,
//! rather than this code silently dropping them.
//!
//! Break-glass (emergency access) has its own section, `break_glass`: every
//! trail event of the stream in the period that opened emergency access or
//! was made under it (its `break_glass` member), successful or not, with
//! the reason and the grant's expiry, so the privacy officer reviews each
//! one. Accesses under break-glass that disclosed data are also listed
//! among the disclosures, like any other.

use std::path::Path;

use serde::Serialize;

use crate::fhir::rfc3339_utc;
use crate::tabular::{ExportError, csv_record, write_durably};
use crate::trail::{AccessAction, AccessEvent};

/// 164.528(a)(1)(i): treatment, payment and health care operations.
pub const RULE_TPO: &str =
    "45 CFR 164.528(a)(1)(i): to carry out treatment, payment or health care operations";
/// 164.528(a)(1)(ii): to the individual (or the personal representative).
pub const RULE_INDIVIDUAL: &str =
    "45 CFR 164.528(a)(1)(ii): to the individual about whom the information is";
/// 164.528(a)(1)(v): facility directory and persons involved in care.
pub const RULE_DIRECTORY: &str = "45 CFR 164.528(a)(1)(v): for the facility's directory or to persons involved in the individual's care";
/// 164.528(a)(1)(vi): national security or intelligence.
pub const RULE_NATIONAL_SECURITY: &str =
    "45 CFR 164.528(a)(1)(vi): for national security or intelligence purposes";

/// HL7 v3 purpose-of-use codes (ActReason) whose disclosures 164.528(a)(1)
/// exempts, with the rule. Matched case-insensitively; "patient request"
/// is taken as `PATRQT`.
pub const EXEMPT_PURPOSES: [(&str, &str); 24] = [
    ("TREAT", RULE_TPO),
    ("ETREAT", RULE_TPO),
    ("COC", RULE_TPO),
    ("CAREMGT", RULE_TPO),
    ("HPAYMT", RULE_TPO),
    ("CLMATTCH", RULE_TPO),
    ("COVAUTH", RULE_TPO),
    ("COVERAGE", RULE_TPO),
    ("ELIGDTRM", RULE_TPO),
    ("ELIGVER", RULE_TPO),
    ("ENROLLM", RULE_TPO),
    ("REMITADV", RULE_TPO),
    ("HOPERAT", RULE_TPO),
    ("HQUALIMP", RULE_TPO),
    ("PATADMIN", RULE_TPO),
    ("PATSFTY", RULE_TPO),
    ("PERFMSR", RULE_TPO),
    ("RECORDMGT", RULE_TPO),
    ("TRAIN", RULE_TPO),
    ("PATRQT", RULE_INDIVIDUAL),
    ("PWATRNY", RULE_INDIVIDUAL),
    ("HDIRECT", RULE_DIRECTORY),
    ("FAMRQT", RULE_DIRECTORY),
    ("NATLSEC", RULE_NATIONAL_SECURITY),
];

/// The role of the replica's own, internal accesses (never a disclosure).
pub const INTERNAL_ROLE: &str = "system";

/// The CSV columns of an accounting, in order.
pub const DISCLOSURE_COLUMNS: [&str; 15] = [
    "date",
    "time_ns",
    "recipient",
    "account",
    "role",
    "action",
    "description",
    "purpose",
    "exempt",
    "exempt_rule",
    "attribution",
    "stream",
    "from",
    "to",
    "position",
];

/// How a listed access was tied to the patient's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The trail event names the stream (stream reads, exports).
    Stream,
    /// A global read or subscription whose event lists the stream among
    /// the streams it returned.
    StreamsReturned,
    /// A global read whose range covers one of the stream's positions (the
    /// caller supplied them).
    Positions,
    /// A global read or subscription that may or may not have returned the
    /// stream's events: the trail does not say.
    NotAttributable,
}

impl Attribution {
    /// The snake_case name of the CSV column.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Stream => "stream",
            Attribution::StreamsReturned => "streams_returned",
            Attribution::Positions => "positions",
            Attribution::NotAttributable => "not_attributable",
        }
    }
}

/// One disclosure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disclosure {
    /// Date of the disclosure, RFC 3339 UTC.
    pub date: String,
    /// The same, unix nanoseconds.
    pub time_ns: u64,
    /// Who received the data: the recipient the request named, else the
    /// API account.
    pub recipient: String,
    /// The API account (authenticated principal) that made the request.
    pub account: String,
    /// The account's role.
    pub role: String,
    /// The trail action.
    pub action: &'static str,
    /// What was disclosed, in words.
    pub description: String,
    /// The stated purpose of use, if any.
    pub purpose: Option<String>,
    /// True when 164.528(a)(1) exempts the disclosure (see `exempt_rule`).
    pub exempt: bool,
    /// The exempting rule, when `exempt`.
    pub exempt_rule: Option<&'static str>,
    /// How the access was tied to the stream.
    pub attribution: Attribution,
    /// The stream (log reads: absent).
    pub stream: Option<u64>,
    /// First offset (log reads: position).
    pub from: Option<u64>,
    /// One past the last.
    pub to: Option<u64>,
    /// The trail event's global position, to fetch its proof.
    pub position: Option<u64>,
}

/// One trail event that opened emergency access to the stream or was made
/// under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlassUse {
    /// Date of the access, RFC 3339 UTC.
    pub date: String,
    /// The same, unix nanoseconds.
    pub time_ns: u64,
    /// The API account.
    pub account: String,
    /// The account's role.
    pub role: String,
    /// The trail action (`break_glass` for the opening itself).
    pub action: &'static str,
    /// The trail outcome (`success`, `refused: …`, `denied: …`).
    pub outcome: String,
    /// The reason given when the grant was opened.
    pub reason: String,
    /// When the grant expires, RFC 3339 UTC.
    pub expires: String,
    /// First offset touched.
    pub from: Option<u64>,
    /// One past the last.
    pub to: Option<u64>,
    /// The trail event's global position, to fetch its proof.
    pub position: Option<u64>,
}

/// Trail events of the period deliberately not listed, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Omitted {
    /// Refused, denied or failed attempts (nothing disclosed).
    pub unsuccessful: usize,
    /// Reads that returned no event.
    pub empty: usize,
    /// The replica's own reads (role `system`).
    pub internal: usize,
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
    /// The disclosures, in trail order (exempt ones marked).
    pub disclosures: Vec<Disclosure>,
    /// How many disclosures.
    pub count: usize,
    /// How many of them are not exempt: what 164.528 requires listing.
    pub accountable: usize,
    /// Global-log reads and subscriptions that may have returned the
    /// stream's events: the trail does not record which streams they
    /// returned. Not counted in `count`.
    pub not_attributable: Vec<Disclosure>,
    /// What was left out, by reason.
    pub omitted: Omitted,
    /// Emergency access to the stream in the period: its openings and
    /// every access made under it, in trail order.
    pub break_glass: Vec<BreakGlassUse>,
    /// What this accounting cannot say, in plain words.
    pub notes: Vec<String>,
}

/// The exempting rule of a purpose of use, if 164.528(a)(1) exempts it.
pub fn exempt_rule(purpose: &str) -> Option<&'static str> {
    let code = purpose.trim();
    if code.eq_ignore_ascii_case("patient request") {
        return Some(RULE_INDIVIDUAL);
    }
    EXEMPT_PURPOSES
        .iter()
        .find(|(known, _)| known.eq_ignore_ascii_case(code))
        .map(|(_, rule)| *rule)
}

/// What one trail event is to the accounting of a stream.
enum Verdict {
    Listed(Attribution),
    Unattributable,
    Omit(fn(&mut Omitted)),
    Unrelated,
}

/// Builds the accounting of `stream` for `[from_ns, to_ns)` from trail
/// events (with their positions). `stream_positions` are the global
/// positions of the stream's events, sorted, used to attribute log reads
/// that do not list the streams they returned (empty: unknown).
pub fn account(
    events: &[(AccessEvent, Option<u64>)],
    stream: u64,
    stream_positions: &[u64],
    from_ns: u64,
    to_ns: u64,
    generated_ns: u64,
) -> Accounting {
    let mut builder = AccountingBuilder::new(stream, stream_positions, from_ns, to_ns);
    for (event, position) in events {
        builder.push(event, *position);
    }
    builder.finish(generated_ns)
}

/// [`account`] one trail event at a time, in trail order, so an export of
/// a long trail holds only what the accounting lists (the stream's
/// disclosures, the unattributable reads and the break-glass uses), never
/// the whole trail. Gives exactly what [`account`] gives for the same events.
#[derive(Debug)]
pub struct AccountingBuilder<'a> {
    stream: u64,
    stream_positions: &'a [u64],
    from_ns: u64,
    to_ns: u64,
    disclosures: Vec<Disclosure>,
    not_attributable: Vec<Disclosure>,
    omitted: Omitted,
    break_glass: Vec<BreakGlassUse>,
}

impl<'a> AccountingBuilder<'a> {
    /// An empty accounting of `stream` for `[from_ns, to_ns)` (see [`account`]).
    pub fn new(
        stream: u64,
        stream_positions: &'a [u64],
        from_ns: u64,
        to_ns: u64,
    ) -> AccountingBuilder<'a> {
        AccountingBuilder {
            stream,
            stream_positions,
            from_ns,
            to_ns,
            disclosures: Vec::new(),
            not_attributable: Vec::new(),
            omitted: Omitted::default(),
            break_glass: Vec::new(),
        }
    }

    /// Takes the next trail event (at `position`, when known).
    pub fn push(&mut self, event: &AccessEvent, position: Option<u64>) {
        let (stream, in_period) = (
            self.stream,
            (self.from_ns..self.to_ns).contains(&event.time_ns),
        );
        if in_period && event.action.discloses() {
            match verdict(event, stream, self.stream_positions) {
                Verdict::Listed(how) => self
                    .disclosures
                    .push(disclosure(event, position, how, stream)),
                Verdict::Unattributable => self.not_attributable.push(disclosure(
                    event,
                    position,
                    Attribution::NotAttributable,
                    stream,
                )),
                Verdict::Omit(count) => count(&mut self.omitted),
                Verdict::Unrelated => {}
            }
        }
        if in_period && event.stream == Some(stream) {
            self.break_glass.extend(break_glass_use(event, position));
        }
    }

    /// The accounting of every event pushed.
    pub fn finish(self, generated_ns: u64) -> Accounting {
        let stream = self.stream;
        let mut notes = notes(stream, &self.not_attributable, self.omitted);
        if !self.break_glass.is_empty() {
            notes.push(format!(
                "Break-glass: {} accesses to stream {stream} in this period opened emergency \
                 access or were made under it; they are listed under break_glass with the reason.",
                self.break_glass.len()
            ));
        }
        Accounting {
            stream,
            from: self.from_ns,
            to: self.to_ns,
            generated_ns,
            count: self.disclosures.len(),
            accountable: self.disclosures.iter().filter(|d| !d.exempt).count(),
            disclosures: self.disclosures,
            not_attributable: self.not_attributable,
            omitted: self.omitted,
            break_glass: self.break_glass,
            notes,
        }
    }
}

/// The break-glass use `event` (of the accounted stream, in the period)
/// is, when it carries a grant.
fn break_glass_use(event: &AccessEvent, position: Option<u64>) -> Option<BreakGlassUse> {
    let grant = event.break_glass.as_ref()?;
    Some(BreakGlassUse {
        date: rfc3339_utc(event.time_ns),
        time_ns: event.time_ns,
        account: event.principal.clone(),
        role: event.role.clone(),
        action: event.action.as_str(),
        outcome: event.outcome.clone(),
        reason: grant.reason.clone(),
        expires: rfc3339_utc(grant.expires_ns),
        from: event.from,
        to: event.to,
        position,
    })
}

fn verdict(event: &AccessEvent, stream: u64, stream_positions: &[u64]) -> Verdict {
    let how = match attribution(event, stream, stream_positions) {
        None => return Verdict::Unrelated,
        Some(how) => how,
    };
    if !event.succeeded() {
        return Verdict::Omit(|o| o.unsuccessful += 1);
    }
    if event.role == INTERNAL_ROLE {
        return Verdict::Omit(|o| o.internal += 1);
    }
    if returned_nothing(event) {
        return Verdict::Omit(|o| o.empty += 1);
    }
    match how {
        Attribution::NotAttributable => Verdict::Unattributable,
        how => Verdict::Listed(how),
    }
}

/// How the event is tied to `stream`; `None` when it provably is not.
fn attribution(event: &AccessEvent, stream: u64, stream_positions: &[u64]) -> Option<Attribution> {
    if event.stream == Some(stream) {
        return Some(Attribution::Stream);
    }
    let is_log_read = event.stream.is_none()
        && matches!(
            event.action,
            AccessAction::ReadLog | AccessAction::Subscribe
        );
    if !is_log_read {
        return None;
    }
    if event.names_stream(stream) {
        return Some(Attribution::StreamsReturned);
    }
    if event.streams.is_some() && !event.streams_truncated {
        return None;
    }
    if stream_positions.is_empty() {
        return Some(Attribution::NotAttributable);
    }
    let from = event.from.unwrap_or(0);
    let to = event.to.unwrap_or(u64::MAX);
    // First stream position at or after `from`; covered if below `to`.
    let first = stream_positions.partition_point(|&p| p < from);
    stream_positions
        .get(first)
        .is_some_and(|&p| p < to)
        .then_some(Attribution::Positions)
}

/// True when the event says it returned no event: an empty range, or an
/// empty list of streams returned.
fn returned_nothing(event: &AccessEvent) -> bool {
    let empty_range = matches!((event.from, event.to), (Some(from), Some(to)) if to <= from);
    let no_streams = event
        .streams
        .as_ref()
        .is_some_and(|s| s.is_empty() && !event.streams_truncated);
    empty_range || no_streams
}

fn disclosure(
    event: &AccessEvent,
    position: Option<u64>,
    attribution: Attribution,
    stream: u64,
) -> Disclosure {
    let exempt_rule = event.purpose.as_deref().and_then(exempt_rule);
    Disclosure {
        date: rfc3339_utc(event.time_ns),
        time_ns: event.time_ns,
        recipient: event
            .recipient
            .clone()
            .unwrap_or_else(|| event.principal.clone()),
        account: event.principal.clone(),
        role: event.role.clone(),
        action: event.action.as_str(),
        description: description(event, attribution, stream),
        purpose: event.purpose.clone(),
        exempt: exempt_rule.is_some(),
        exempt_rule,
        attribution,
        stream: event.stream,
        from: event.from,
        to: event.to,
        position,
    }
}

fn description(event: &AccessEvent, attribution: Attribution, stream: u64) -> String {
    if let (Some(text), false) = (
        &event.description,
        attribution == Attribution::NotAttributable,
    ) {
        return text.clone();
    }
    let range = match (event.from, event.to) {
        (Some(from), Some(to)) if to > from => format!("{from} to {}", to - 1),
        (Some(_), Some(_)) => "none".to_string(),
        (Some(from), None) => format!("{from} onwards"),
        _ => "all".to_string(),
    };
    let what = match (event.stream, attribution) {
        (Some(s), _) => format!("events of stream {s}, offsets {range}"),
        (None, Attribution::NotAttributable) => format!(
            "global log positions {range}; the trail does not record which streams this \
             returned, so it may or may not include events of stream {stream}"
        ),
        (None, _) => format!("global log positions {range}, including events of stream {stream}"),
    };
    format!("{what} ({})", event.action.as_str())
}

fn notes(stream: u64, not_attributable: &[Disclosure], omitted: Omitted) -> Vec<String> {
    let mut notes = vec![
        format!(
            "Listed: successful reads, subscriptions and exports that returned events of \
             stream {stream}. Disclosures exempt under 45 CFR 164.528(a)(1) are listed with \
             exempt=true and the rule."
        ),
        format!(
            "Left out: {} refused or failed attempts, {} reads that returned no event, {} \
             internal reads by the replica.",
            omitted.unsuccessful, omitted.empty, omitted.internal
        ),
    ];
    if !not_attributable.is_empty() {
        notes.push(format!(
            "Cannot attribute: {} global-log reads or subscriptions in this period do not \
             record which streams they returned; they may have disclosed events of stream \
             {stream}. They are listed under not_attributable and are not counted.",
            not_attributable.len()
        ));
    }
    notes
}

/// The accounting as CSV text (header row, RFC 4180): the disclosures,
/// then the accesses it cannot attribute (`attribution` =
/// `not_attributable`, the description saying why).
pub fn disclosures_csv(accounting: &Accounting) -> String {
    let mut out = csv_record(&DISCLOSURE_COLUMNS);
    let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
    for d in accounting
        .disclosures
        .iter()
        .chain(&accounting.not_attributable)
    {
        out.push_str(&csv_record(&[
            d.date.clone(),
            d.time_ns.to_string(),
            d.recipient.clone(),
            d.account.clone(),
            d.role.clone(),
            d.action.to_string(),
            d.description.clone(),
            d.purpose.clone().unwrap_or_default(),
            d.exempt.to_string(),
            d.exempt_rule.unwrap_or_default().to_string(),
            d.attribution.as_str().to_string(),
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
