//! The access trail as CSV (RFC 4180) and NDJSON, for spreadsheets and log
//! tools: one row per trail event with every field of the event plus its
//! global position and a readable UTC time. Also the durable file writer the
//! other exports share (new file only, fsync of file and directory).
//!
//! CSV: header row, CRLF line ends, a field is quoted when it holds a comma,
//! a double quote, CR or LF, and quotes inside are doubled (RFC 4180 §2).
//! Absent values are empty fields.
//!
//! CSV cells are defused against spreadsheet formula injection ("CSV
//! injection", OWASP: <https://owasp.org/www-community/attacks/CSV_Injection>):
//! a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return —
//! which a spreadsheet may run as a formula — gets one leading `'`, and so
//! does a cell that already starts with `'`, so the escape can always be
//! undone: a reader strips exactly one leading `'` from every cell that has
//! one ([`csv_cell_value`]). The `'` is part of the exported CSV value. The
//! rule follows OWASP strictly: a text cell such as `-5` is prefixed too
//! (the number columns are unsigned and never start with `-`). NDJSON is
//! not defused: it is the faithful form, byte for byte as before.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::fhir::rfc3339_utc;
use crate::trail::AccessEvent;

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 19] = [
    "position",
    "v",
    "time_ns",
    "time",
    "principal",
    "role",
    "action",
    "stream",
    "from",
    "to",
    "purpose",
    "outcome",
    "remote",
    "detail",
    "recipient",
    "description",
    "streams",
    "streams_truncated",
    "count",
];

/// Why an export file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The target exists already; exports never overwrite.
    #[error("{path}: already exists; exports never overwrite a file")]
    Exists { path: PathBuf },
    /// Creating, writing or syncing failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One trail event as an export row: every field, in CSV column order.
#[derive(Debug, Serialize)]
pub struct AccessRow<'a> {
    /// The trail event's global position, when known.
    pub position: Option<u64>,
    /// Trail format version.
    pub v: u32,
    /// Unix nanoseconds.
    pub time_ns: u64,
    /// The same instant, RFC 3339 UTC.
    pub time: String,
    /// Who.
    pub principal: &'a str,
    /// Their role.
    pub role: &'a str,
    /// What (snake_case).
    pub action: &'static str,
    /// Which stream.
    pub stream: Option<u64>,
    /// First offset or position.
    pub from: Option<u64>,
    /// One past the last.
    pub to: Option<u64>,
    /// Purpose of use.
    pub purpose: Option<&'a str>,
    /// Outcome text.
    pub outcome: &'a str,
    /// Caller's address.
    pub remote: Option<&'a str>,
    /// Report or manifest hash and the like.
    pub detail: Option<&'a str>,
    /// The disclosure's recipient as the request named it.
    pub recipient: Option<&'a str>,
    /// The disclosure's description as the request gave it.
    pub description: Option<&'a str>,
    /// The streams a global read or subscription window returned (CSV:
    /// space-separated).
    pub streams: Option<&'a [u64]>,
    /// True when more streams were returned than `streams` lists.
    pub streams_truncated: bool,
    /// For an aggregate of failed logins: the attempts it stands for. CSV:
    /// empty when absent (one attempt); NDJSON: left out when absent, so a
    /// line of an event without it is byte for byte what it was before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The break-glass grant of a version 2 event. NDJSON only (left out
    /// when absent, so other lines keep their bytes); the CSV keeps its
    /// columns and shows such an event by its `v` of 2.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<&'a crate::trail::BreakGlass>,
}

impl<'a> AccessRow<'a> {
    /// The row of `event` at `position`.
    pub fn new(event: &'a AccessEvent, position: Option<u64>) -> AccessRow<'a> {
        AccessRow {
            position,
            v: event.v,
            time_ns: event.time_ns,
            time: rfc3339_utc(event.time_ns),
            principal: &event.principal,
            role: &event.role,
            action: event.action.as_str(),
            stream: event.stream,
            from: event.from,
            to: event.to,
            purpose: event.purpose.as_deref(),
            outcome: &event.outcome,
            remote: event.remote.as_deref(),
            detail: event.detail.as_deref(),
            recipient: event.recipient.as_deref(),
            description: event.description.as_deref(),
            streams: event.streams.as_deref(),
            streams_truncated: event.streams_truncated,
            count: event.count,
            break_glass: event.break_glass.as_ref(),
        }
    }

    fn cells(&self) -> [String; 19] {
        let number = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_default();
        [
            number(self.position),
            self.v.to_string(),
            self.time_ns.to_string(),
            self.time.clone(),
            self.principal.to_string(),
            self.role.to_string(),
            self.action.to_string(),
            number(self.stream),
            number(self.from),
            number(self.to),
            self.purpose.unwrap_or_default().to_string(),
            self.outcome.to_string(),
            self.remote.unwrap_or_default().to_string(),
            self.detail.unwrap_or_default().to_string(),
            self.recipient.unwrap_or_default().to_string(),
            self.description.unwrap_or_default().to_string(),
            self.streams.map_or_else(String::new, |s| {
                s.iter().map(u64::to_string).collect::<Vec<_>>().join(" ")
            }),
            self.streams_truncated.to_string(),
            number(self.count),
        ]
    }
}

/// First characters that make a spreadsheet treat a cell as a formula
/// (OWASP, "CSV Injection": `=`, `+`, `-`, `@`, tab, carriage return).
pub const CSV_FORMULA_STARTS: [char; 6] = ['=', '+', '-', '@', '\t', '\r'];
/// The character put before a cell that could start a formula.
pub const CSV_DEFUSE_PREFIX: char = '\'';

/// One CSV field: defused against formula injection ([`csv_defuse`]), then
/// quoted per RFC 4180 when it needs to be.
pub fn csv_field(value: &str) -> String {
    let value = csv_defuse(value);
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.into_owned()
    }
}

/// The cell text for `value`: `'` + `value` when it starts with one of
/// [`CSV_FORMULA_STARTS`] (OWASP's CSV injection rule) or with `'` itself
/// (so the escape stays reversible); `value` unchanged otherwise.
pub fn csv_defuse(value: &str) -> std::borrow::Cow<'_, str> {
    match value.chars().next() {
        Some(first) if CSV_FORMULA_STARTS.contains(&first) || first == CSV_DEFUSE_PREFIX => {
            std::borrow::Cow::Owned(format!("{CSV_DEFUSE_PREFIX}{value}"))
        }
        _ => std::borrow::Cow::Borrowed(value),
    }
}

/// The recorded value of a cell read back from our CSV (after RFC 4180
/// unquoting): the cell without the one leading `'` [`csv_defuse`] added.
pub fn csv_cell_value(cell: &str) -> &str {
    cell.strip_prefix(CSV_DEFUSE_PREFIX).unwrap_or(cell)
}

/// One CSV record (with its CRLF) from already-plain cells.
pub fn csv_record<S: AsRef<str>>(cells: &[S]) -> String {
    let fields: Vec<String> = cells.iter().map(|c| csv_field(c.as_ref())).collect();
    format!("{}\r\n", fields.join(","))
}

/// The formats of an access-trail export file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrailFormat {
    /// FHIR R4 `AuditEvent`, one resource per line ([`crate::fhir`]).
    Fhir,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// One JSON object per event and line.
    Ndjson,
}

/// An access-trail export being written one event at a time, so that an
/// export of any length holds one event in memory (see [`write_trail`]).
pub struct TrailRows<'a> {
    out: &'a mut dyn Write,
    format: TrailFormat,
    rows: usize,
}

impl std::fmt::Debug for TrailRows<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrailRows")
            .field("format", &self.format)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl TrailRows<'_> {
    /// Writes the row of `event` at `position`; `source` is the replica
    /// that served the trail (FHIR names it as the observer).
    pub fn push(
        &mut self,
        source: &str,
        event: &AccessEvent,
        position: Option<u64>,
    ) -> std::io::Result<()> {
        match self.format {
            TrailFormat::Fhir => crate::fhir::write_fhir_line(self.out, event, source, position)?,
            TrailFormat::Csv => self
                .out
                .write_all(csv_record(&AccessRow::new(event, position).cells()).as_bytes())?,
            TrailFormat::Ndjson => {
                serde_json::to_writer(&mut *self.out, &AccessRow::new(event, position))?;
                self.out.write_all(b"\n")?;
            }
        }
        self.rows += 1;
        Ok(())
    }
}

/// Writes a trail export in `format` to `out`: the CSV header, then each
/// row `fill` pushes. Returns the rows written.
pub fn write_trail_to(
    out: &mut dyn Write,
    format: TrailFormat,
    fill: impl FnOnce(&mut TrailRows<'_>) -> std::io::Result<()>,
) -> std::io::Result<usize> {
    if format == TrailFormat::Csv {
        out.write_all(csv_record(&CSV_COLUMNS).as_bytes())?;
    }
    let mut rows = TrailRows {
        out,
        format,
        rows: 0,
    };
    fill(&mut rows)?;
    Ok(rows.rows)
}

/// [`write_trail_to`] a new file at `path` (never an existing one),
/// fsynced with its directory; removed again when `fill` fails, so a
/// failed export leaves no partial file. Returns the rows written.
pub fn write_trail(
    path: &Path,
    format: TrailFormat,
    fill: impl FnOnce(&mut TrailRows<'_>) -> std::io::Result<()>,
) -> Result<usize, ExportError> {
    let mut rows = 0;
    write_durably(path, |out| {
        rows = write_trail_to(out, format, fill)?;
        Ok(())
    })?;
    Ok(rows)
}

/// Every event of `events` through [`TrailRows::push`].
fn push_all(
    rows: &mut TrailRows<'_>,
    source: &str,
    events: &[(AccessEvent, Option<u64>)],
) -> std::io::Result<()> {
    for (event, position) in events {
        rows.push(source, event, *position)?;
    }
    Ok(())
}

/// Writes the header and one row per event as CSV to `out`.
pub fn write_csv_to(
    out: &mut dyn Write,
    events: &[(AccessEvent, Option<u64>)],
) -> std::io::Result<()> {
    write_trail_to(out, TrailFormat::Csv, |rows| push_all(rows, "", events)).map(|_| ())
}

/// Writes one JSON object per event and line to `out`.
pub fn write_ndjson_to(
    out: &mut dyn Write,
    events: &[(AccessEvent, Option<u64>)],
) -> std::io::Result<()> {
    write_trail_to(out, TrailFormat::Ndjson, |rows| push_all(rows, "", events)).map(|_| ())
}

/// Writes the CSV to a new file at `path`; returns the rows written.
pub fn write_csv(path: &Path, events: &[(AccessEvent, Option<u64>)]) -> Result<usize, ExportError> {
    write_trail(path, TrailFormat::Csv, |rows| push_all(rows, "", events))
}

/// Writes the NDJSON to a new file at `path`; returns the lines written.
pub fn write_ndjson(
    path: &Path,
    events: &[(AccessEvent, Option<u64>)],
) -> Result<usize, ExportError> {
    write_trail(path, TrailFormat::Ndjson, |rows| push_all(rows, "", events))
}

/// Writes FHIR `AuditEvent` NDJSON to a new file at `path`; returns the
/// resources written.
pub(crate) fn write_fhir(
    path: &Path,
    events: &[(AccessEvent, Option<u64>)],
    source: &str,
) -> Result<usize, ExportError> {
    write_trail(path, TrailFormat::Fhir, |rows| {
        push_all(rows, source, events)
    })
}

/// Creates `path` (which must not exist), lets `fill` write it, then
/// fsyncs the file and its directory, so a returned `Ok` survives a crash.
/// When `fill` (or the flush) fails, the file is removed again: a failed
/// export leaves nothing half-written behind.
pub(crate) fn write_durably(
    path: &Path,
    fill: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), ExportError> {
    let io = |source: std::io::Error| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => ExportError::Exists {
                path: path.to_path_buf(),
            },
            _ => io(source),
        })?;
    let mut out = BufWriter::new(file);
    let filled = fill(&mut out).and_then(|()| out.into_inner().map_err(|e| e.into_error()));
    let file = match filled {
        Ok(file) => file,
        Err(error) => {
            // Best effort: the fill error is what the caller must see.
            let _ = std::fs::remove_file(path);
            return Err(io(error));
        }
    };
    file.sync_all().map_err(io)?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|source| ExportError::Io {
            path: parent.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: an export whose records stop with an error (a broken-off
    // answer) leaves no file behind, even after rows were written; one
    // that completes is written whole, and an existing file is refused.
    #[test]
    fn a_failed_streamed_export_leaves_no_file() {
        let dir = std::env::temp_dir().join(format!("vellum-trail-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let event: AccessEvent =
            serde_json::from_str(r#"{"v":1,"time_ns":5,"principal":"p","role":"reader","action":"read_stream","outcome":"success"}"#)
                .expect("event");
        for format in [TrailFormat::Fhir, TrailFormat::Csv, TrailFormat::Ndjson] {
            let path = dir.join(format!("{format:?}"));
            let failed = write_trail(&path, format, |rows| {
                for position in 0..3 {
                    rows.push("r0", &event, Some(position))?;
                }
                Err(std::io::Error::other("the answer broke off"))
            });
            assert!(failed.is_err(), "{format:?}");
            assert!(!path.exists(), "{format:?}: no partial file");
            let rows = write_trail(&path, format, |rows| rows.push("r0", &event, Some(0)));
            assert_eq!(rows.expect("written"), 1);
            assert!(matches!(
                write_trail(&path, format, |_| Ok(())),
                Err(ExportError::Exists { .. })
            ));
            assert!(path.exists(), "the refusal left the existing file alone");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    // Goal: fields are quoted exactly when RFC 4180 requires it.
    #[test]
    fn csv_field_quotes_only_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field(""), "");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
        assert_eq!(csv_field("cr\r"), "\"cr\r\"");
    }

    // Goal: every dangerous first character gets one leading quote (OWASP),
    // a negative number too, and reading the cell back gives the value.
    #[test]
    fn formula_starts_are_defused_reversibly() {
        for (value, cell) in [
            (
                "=HYPERLINK(\"http://x\")",
                "\"'=HYPERLINK(\"\"http://x\"\")\"",
            ),
            ("+1+1", "'+1+1"),
            ("-5", "'-5"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tcmd", "'\tcmd"),
            ("\r=1", "\"'\r=1\""),
            ("'=1", "''=1"),
            ("'", "''"),
        ] {
            assert_eq!(csv_field(value), cell, "{value:?}");
            let unquoted = cell
                .strip_prefix('"')
                .and_then(|c| c.strip_suffix('"'))
                .map_or_else(|| cell.to_string(), |c| c.replace("\"\"", "\""));
            assert_eq!(csv_cell_value(&unquoted), value);
        }
        for safe in ["", "dr-lee", "5", "a=b", "TREAT", "1.5", " =x"] {
            assert_eq!(csv_defuse(safe), safe, "{safe:?} is left alone");
            assert_eq!(csv_cell_value(safe), safe);
        }
    }
}
