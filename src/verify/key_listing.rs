//! The signing-key history of a trust policy, and of a log measured
//! against it: what `vellum keys history` prints.
//!
//! Why it exists: after a rotation an operator and an auditor need to see,
//! in one place and from public material only, which key of each replica
//! signs from which op, the `rotation` lines that switch them, and where
//! the log's access trail announces each (`signing_key_rotated`). The rules
//! are not repeated here: a policy alone is read by `Policy::parse` (which
//! checks every pinned line against the chain of keys) and
//! `vellum_audit::key_history::reconcile`; a log is verified by
//! [`super::verify_data_dir`], whose check "key history" and report
//! section `key_history` are taken as they are, so this listing and
//! `vellum verify` can never disagree.

use std::path::Path;

use serde::Serialize;
use vellum_audit::hash::to_hex;
use vellum_audit::key_history::{HistoryEntry, KeyRotation, reconcile};
use vellum_audit::policy::Policy;
use vellum_audit::report::{Failure, KeyHistoryKey, Outcome, Report};

/// Name of the verification check whose failures are the history's problems.
const KEY_HISTORY_CHECK: &str = "key history";
/// Name of the verification check that reads the access trail.
const TRAIL_CHECK: &str = "access trail";

/// One key of one replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListedKey {
    /// The replica's index in the policy.
    pub replica: usize,
    /// The first op whose checkpoints the key signs (0: the key pinned first).
    pub from_op: u64,
    /// The key's name.
    pub name: String,
    /// The key's id, lowercase hex.
    pub key_id: String,
    /// The key in signed-note vkey form (public).
    pub vkey: String,
    /// Pinned in the policy (only pinned keys count toward a quorum).
    pub pinned: bool,
    /// The global trail position of the `signing_key_rotated` event that
    /// announces it (absent: no log read, the key pinned first, or not
    /// announced in the log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged_at: Option<u64>,
    /// The rotation's `rotation` line (absent for the key pinned first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

/// What was read of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum LogRead {
    /// No log was given: the history is the policy's alone.
    NotGiven,
    /// The log verified and its access trail was read.
    Verified,
    /// The log was read but did not verify in full: its announcements are
    /// not to be trusted (`vellum verify` says why).
    Failed {
        /// The checks that failed or did not run.
        checks: Vec<String>,
    },
}

/// A key history, ready to print.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyListing {
    /// The log's origin (from the policy).
    pub origin: String,
    /// What was read of the log.
    pub log: LogRead,
    /// Every key, by replica then first op.
    pub keys: Vec<ListedKey>,
    /// Announcements that do not verify (`key_rotation_invalid`) and pinned
    /// rotations the log does not announce (`key_rotation_unlogged`).
    pub problems: Vec<Failure>,
}

impl KeyListing {
    /// True when nothing is wrong: no problem, and the log (if given) verified.
    pub fn clean(&self) -> bool {
        self.problems.is_empty() && !matches!(self.log, LogRead::Failed { .. })
    }

    /// Only the keys of `replica`.
    pub fn only_replica(mut self, replica: usize) -> KeyListing {
        self.keys.retain(|k| k.replica == replica);
        self
    }
}

/// The history `policy` pins (its `rotation` lines were checked when it parsed).
pub fn of_policy(policy: &Policy) -> KeyListing {
    let (entries, _) = reconcile(policy, &[], None);
    KeyListing {
        origin: policy.origin.clone(),
        log: LogRead::NotGiven,
        keys: entries.iter().map(listed).collect(),
        problems: Vec::new(),
    }
}

/// The history of the log in `data_dir` against `policy`: the log is
/// verified first (`index_url`: its audit index; None: the data
/// directory's SQLite file).
pub fn of_data_dir(data_dir: &Path, policy: &Policy, index_url: Option<&str>) -> KeyListing {
    let report = super::verify_data_dir(data_dir, policy, index_url, &mut |_| {});
    of_report(policy, &report)
}

/// The history a verification report holds.
pub fn of_report(policy: &Policy, report: &Report) -> KeyListing {
    let failed: Vec<String> = report
        .checks
        .iter()
        .filter(|c| c.name != KEY_HISTORY_CHECK && c.outcome != Outcome::Pass)
        .map(|c| c.name.clone())
        .collect();
    let trail_read = report
        .checks
        .iter()
        .any(|c| c.name == TRAIL_CHECK && c.outcome != Outcome::NotRun);
    let history = report.checks.iter().find(|c| c.name == KEY_HISTORY_CHECK);
    let mut listing = match history {
        // No rotation pinned and none announced: the pinned keys, as they are.
        None => of_policy(policy),
        Some(check) => KeyListing {
            origin: policy.origin.clone(),
            log: LogRead::NotGiven,
            keys: report
                .key_history
                .iter()
                .map(|k| listed_from_report(policy, k))
                .collect(),
            problems: check.failures.clone(),
        },
    };
    listing.log = match (failed.is_empty(), trail_read) {
        (true, true) => LogRead::Verified,
        _ => LogRead::Failed { checks: failed },
    };
    listing
}

fn listed(entry: &HistoryEntry) -> ListedKey {
    ListedKey {
        replica: entry.replica,
        from_op: entry.from_op,
        name: entry.key.name().to_string(),
        key_id: to_hex(&entry.key.key_id()),
        vkey: entry.key.to_vkey(),
        pinned: entry.pinned,
        logged_at: entry.logged_at,
        line: entry.line.clone(),
    }
}

/// A report's key entry with its vkey: the rotation line's new key, or the
/// policy's key pinned first.
fn listed_from_report(policy: &Policy, key: &KeyHistoryKey) -> ListedKey {
    let vkey = match &key.line {
        Some(line) => KeyRotation::parse_line(line)
            .map(|r| r.new.to_vkey())
            .unwrap_or_default(),
        None => policy
            .verifiers
            .get(key.replica)
            .map(|v| v.to_vkey())
            .unwrap_or_default(),
    };
    ListedKey {
        replica: key.replica,
        from_op: key.from_op,
        name: key.name.clone(),
        key_id: key.key_id.clone(),
        vkey,
        pinned: key.pinned,
        logged_at: key.logged_at,
        line: key.line.clone(),
    }
}

/// The listing as text, one key per line, its rotation line indented below.
pub fn to_text(listing: &KeyListing) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let log = match &listing.log {
        LogRead::NotGiven => "no log read: the policy's pinned history".to_string(),
        LogRead::Verified => "log verified; announcements read from its access trail".to_string(),
        LogRead::Failed { checks } => format!(
            "the log did NOT verify (checks: {}); its announcements are not to be trusted: run vellum verify",
            checks.join(", ")
        ),
    };
    let _ = writeln!(out, "key history of {} ({log})", listing.origin);
    for key in &listing.keys {
        let pinned = if key.pinned { "pinned" } else { "NOT pinned" };
        let logged = match (key.logged_at, &listing.log, &key.line) {
            (Some(position), _, _) => format!(", announced at trail position {position}"),
            (None, LogRead::NotGiven, _) | (None, _, None) => String::new(),
            (None, _, Some(_)) => ", not announced in the log".to_string(),
        };
        let _ = writeln!(
            out,
            "replica {} from op {}: key {} (id {}) {pinned}{logged}",
            key.replica, key.from_op, key.name, key.key_id
        );
        let _ = writeln!(out, "  vkey {}", key.vkey);
        if let Some(line) = &key.line {
            let _ = writeln!(out, "  {line}");
        }
    }
    for problem in &listing.problems {
        let _ = writeln!(
            out,
            "problem {}: {}: {}",
            kind_name(problem),
            problem.location,
            problem.message
        );
    }
    out
}

/// A failure's kind as reports spell it (`key_rotation_invalid`, ...).
fn kind_name(problem: &Failure) -> String {
    serde_json::to_value(problem.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
