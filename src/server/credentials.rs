//! Credential lifetimes: expiry of tokens-file and client-certificates-file
//! lines, and reloading both files while the server runs.
//!
//! Why it exists: a credential that never expires and a table that only a
//! restart can change make rotation and revocation an outage. Here:
//! - a line may carry `expires=<RFC 3339 UTC>`; from that second on, the
//!   credential is refused (401 `credential_expired`, counted as a failed
//!   login like any other refusal);
//! - the server checks both files once every [`RELOAD_CHECK_MS`] and, when
//!   one changed, loads it whole and swaps the table in one step ([`Live`]):
//!   a file that does not load (a bad line, a principal in both files, a
//!   world-writable file) keeps the old tables and logs an error naming the
//!   file and line; a half-loaded table is never served;
//! - every request looks its credential up in the table current at that
//!   moment, so a line deleted from the file (a revocation) refuses the
//!   next request, also on an HTTP/2 connection opened before.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use super::auth::{AuthError, TokenStore};
use super::mtls::ClientCertStore;

use crate::live::FileStamp;
pub use crate::live::{Live, RELOAD_CHECK_MS};
/// The earliest accepted `expires=`: 1970-01-01T00:00:00Z.
pub const EXPIRES_S_MIN: u64 = 0;
/// The latest accepted `expires=`: 9999-12-31T23:59:59Z (four-digit years).
pub const EXPIRES_S_MAX: u64 = 253_402_300_799;

/// Parses an `expires=` value: exactly `YYYY-MM-DDTHH:MM:SSZ` (UTC, upper
/// case `T` and `Z`, no fraction, no offset, a real calendar date, a year
/// from 1970 to 9999) into unix seconds. Every other spelling (unix
/// seconds, `+00:00`, lower case, `2026-02-30`, leap second `:60`) is refused,
/// so one instant has one spelling.
pub fn parse_expires(text: &str) -> Result<u64, String> {
    let refuse = || {
        format!(
            "expires={:?} is not an RFC 3339 UTC time spelled YYYY-MM-DDTHH:MM:SSZ \
             (like 2027-01-31T00:00:00Z) from 1970 to 9999",
            text.chars().take(40).collect::<String>()
        )
    };
    let bytes = text.as_bytes();
    let shape_ok = bytes.len() == 20
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 | 16 => *b == b':',
            19 => *b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return Err(refuse());
    }
    let number = |from: usize, to: usize| -> u64 {
        bytes[from..to]
            .iter()
            .fold(0, |n, b| n * 10 + u64::from(b - b'0'))
    };
    let (year, month, day) = (number(0, 4), number(5, 7), number(8, 10));
    let (hour, minute, second) = (number(11, 13), number(14, 16), number(17, 19));
    let calendar_ok = year >= 1970
        && (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour <= 23
        && minute <= 59
        && second <= 59;
    if !calendar_ok {
        return Err(refuse());
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    assert!(
        (EXPIRES_S_MIN..=EXPIRES_S_MAX).contains(&seconds),
        "a four-digit year from 1970 is within the bounds"
    );
    Ok(seconds)
}

/// The `expires=` spelling of `seconds` (the inverse of [`parse_expires`]).
pub fn format_expires(seconds: u64) -> String {
    let seconds = seconds.min(EXPIRES_S_MAX);
    let (days, rest) = (seconds / 86_400, seconds % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

fn is_leap(year: u64) -> bool {
    year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400))
}

fn days_in_month(year: u64, month: u64) -> u64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a Gregorian date from 1970: whole years
/// (with the leap days before `year`), then whole months, then days.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let leap_days_before = |y: u64| (y - 1) / 4 - (y - 1) / 100 + (y - 1) / 400;
    let years = 365 * (year - 1970) + leap_days_before(year) - leap_days_before(1970);
    let months: u64 = (1..month).map(|m| days_in_month(year, m)).sum();
    years + months + day - 1
}

/// The date of `days` since 1970-01-01 (the inverse of [`days_from_civil`]).
fn civil_from_days(mut days: u64) -> (u64, u64, u64) {
    let mut year = 1970;
    loop {
        let length = if is_leap(year) { 366 } else { 365 };
        if days < length {
            break;
        }
        days -= length;
        year += 1;
    }
    let mut month = 1;
    while days >= days_in_month(year, month) {
        days -= days_in_month(year, month);
        month += 1;
    }
    (year, month, days + 1)
}

/// Now, in unix seconds (0 if the clock is before 1970).
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The files a server's tables were loaded from, to reload them from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// The tokens file.
    pub tokens: PathBuf,
    /// The client certificates file, when client certificates are configured.
    pub client_certs: Option<PathBuf>,
}

/// The files the server reloads, and the tables it swaps.
#[derive(Debug, Clone)]
pub struct Reloadable {
    /// The tokens file.
    pub tokens_path: PathBuf,
    /// The client certificates file, when client certificates are configured.
    pub client_certs_path: Option<PathBuf>,
    /// The tokens table the guard reads.
    pub tokens: Arc<Live<TokenStore>>,
    /// The client certificates table the guard reads.
    pub client_certs: Arc<Live<ClientCertStore>>,
}

/// What one check found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// Neither file changed since the last check.
    Unchanged,
    /// A changed file loaded; the tables were swapped.
    Reloaded,
    /// A changed file did not load (the message says why); the old tables
    /// stay. The same version is not tried again.
    Refused(String),
}

/// Watches the two files: [`Watcher::check`] reloads what changed.
#[derive(Debug)]
pub struct Watcher {
    files: Reloadable,
    seen_tokens: Option<FileStamp>,
    seen_certs: Option<FileStamp>,
}

impl Watcher {
    /// A watcher of `files`. Its first check loads both files again: a
    /// change made between the server's first load and this watcher's
    /// start is not missed.
    pub fn new(files: Reloadable) -> Watcher {
        Watcher {
            files,
            seen_tokens: None,
            seen_certs: None,
        }
    }

    /// Loads the files that changed since the last check and swaps the
    /// tables, both or neither.
    pub fn check(&mut self) -> ReloadOutcome {
        let tokens_now = FileStamp::of(&self.files.tokens_path);
        let certs_now = self
            .files
            .client_certs_path
            .as_deref()
            .and_then(FileStamp::of);
        let tokens_changed = tokens_now != self.seen_tokens;
        let certs_changed = certs_now != self.seen_certs;
        if !tokens_changed && !certs_changed {
            return ReloadOutcome::Unchanged;
        }
        // Seen either way: a bad version is reported once, not every second.
        self.seen_tokens = tokens_now;
        self.seen_certs = certs_now;
        match self.load(tokens_changed, certs_changed) {
            Ok((tokens, certs)) => {
                let (token_count, cert_count) = (tokens.len(), certs.len());
                self.files.tokens.replace(tokens);
                self.files.client_certs.replace(certs);
                tracing::info!(
                    tokens = token_count,
                    client_certificates = cert_count,
                    "credentials reloaded"
                );
                ReloadOutcome::Reloaded
            }
            Err(why) => {
                tracing::error!(error = %why, "credentials not reloaded; the previous tables stay");
                ReloadOutcome::Refused(why)
            }
        }
    }

    /// The tables after this change: each changed file loaded whole, the
    /// other kept; refused when a principal would be in both.
    fn load(
        &self,
        tokens_changed: bool,
        certs_changed: bool,
    ) -> Result<(TokenStore, ClientCertStore), String> {
        let text = |e: AuthError| e.to_string();
        let tokens = match tokens_changed {
            true => TokenStore::load(&self.files.tokens_path).map_err(text)?,
            false => (*self.files.tokens.get()).clone(),
        };
        let certs = match (certs_changed, &self.files.client_certs_path) {
            (true, Some(path)) => ClientCertStore::load(path).map_err(text)?,
            _ => (*self.files.client_certs.get()).clone(),
        };
        super::check_distinct_principals(&tokens, &certs)?;
        Ok((tokens, certs))
    }
}

/// Checks the files every [`RELOAD_CHECK_MS`] until `shutdown` flips (or
/// its sender is dropped).
pub(crate) async fn watch_files(mut watcher: Watcher, shutdown: watch::Receiver<bool>) {
    let check = move || {
        watcher.check();
    };
    crate::live::check_every_second(check, "credentials", shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: canonical RFC 3339 UTC parses to its unix seconds and back;
    /// every other spelling, impossible date or absurd value is refused.
    #[test]
    fn expires_has_one_spelling() {
        for (text, seconds) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2000-02-29T12:00:00Z", 951_825_600),
            ("2027-01-31T00:00:00Z", 1_801_353_600),
            ("9999-12-31T23:59:59Z", EXPIRES_S_MAX),
        ] {
            assert_eq!(parse_expires(text), Ok(seconds), "{text}");
            assert_eq!(format_expires(seconds), text);
        }
        for bad in [
            "",
            "18446744073709551615",
            "1801267200",
            "2027-01-31",
            "2027-01-31T00:00:00",
            "2027-01-31t00:00:00z",
            "2027-01-31T00:00:00.5Z",
            "2027-01-31T00:00:00+00:00",
            "2027-01-31 00:00:00Z",
            "+2027-01-31T00:00:00Z",
            "12027-01-31T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2027-13-01T00:00:00Z",
            "2027-00-10T00:00:00Z",
            "2027-04-31T00:00:00Z",
            "2027-01-00T00:00:00Z",
            "2027-01-31T24:00:00Z",
            "2027-01-31T23:60:00Z",
            "2027-01-31T23:59:60Z",
            "２027-01-31T00:00:00Z",
        ] {
            assert!(parse_expires(bad).is_err(), "{bad:?} must be refused");
        }
    }

    /// Goal: every day of the years around leap rules round-trips.
    #[test]
    fn days_round_trip() {
        for days in 0..(2_101 - 1_970) * 366 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
