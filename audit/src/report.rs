//! The verification report model: what `vellum verify` checked, with counts,
//! times and the location of every failure. Rendered as text here and as JSON
//! through serde, so machines and people read the same content.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

/// Failures kept per check, at most; the count of the rest is still reported.
pub const FAILURES_PER_CHECK_MAX: usize = 100;

/// One failed expectation and where it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Where: "file at byte N", "index row events.position=N", ...
    pub location: String,
    /// What was wrong.
    pub message: String,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every item checked was right.
    Pass,
    /// At least one failure.
    Fail,
    /// Could not run because an earlier check found the input unreadable.
    Skipped,
}

/// One named check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked, e.g. "records and hash chain".
    pub name: String,
    /// The outcome.
    pub outcome: Outcome,
    /// What was counted ("records": 1200, ...).
    pub counts: BTreeMap<String, u64>,
    /// The failures (at most [`FAILURES_PER_CHECK_MAX`]).
    pub failures: Vec<Failure>,
    /// Failures beyond the kept ones.
    pub failures_dropped: u64,
    /// A note, e.g. why it was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Wall time spent, in milliseconds.
    pub elapsed_ms: u64,
    #[serde(skip)]
    started: Option<Instant>,
}

impl Check {
    /// Starts a check (its clock starts now).
    pub fn start(name: &str) -> Check {
        Check {
            name: name.to_string(),
            outcome: Outcome::Pass,
            counts: BTreeMap::new(),
            failures: Vec::new(),
            failures_dropped: 0,
            note: None,
            elapsed_ms: 0,
            started: Some(Instant::now()),
        }
    }

    /// A check that could not run.
    pub fn skipped(name: &str, why: &str) -> Check {
        let mut check = Check::start(name);
        check.outcome = Outcome::Skipped;
        check.note = Some(why.to_string());
        check.finish()
    }

    /// Adds `n` to a counter.
    pub fn count(&mut self, what: &str, n: u64) {
        *self.counts.entry(what.to_string()).or_default() += n;
    }

    /// Records a failure.
    pub fn fail(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.outcome = Outcome::Fail;
        if self.failures.len() < FAILURES_PER_CHECK_MAX {
            self.failures.push(Failure {
                location: location.into(),
                message: message.into(),
            });
        } else {
            self.failures_dropped += 1;
        }
    }

    /// Stops the clock.
    pub fn finish(mut self) -> Check {
        if let Some(started) = self.started.take() {
            self.elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        }
        self
    }

    /// True unless a failure was recorded.
    pub fn passed(&self) -> bool {
        self.outcome != Outcome::Fail
    }
}

/// Where verification got to: the newest certificate it verified.
#[derive(Debug, Clone, Serialize)]
pub struct Reached {
    /// Tree size of that certificate.
    pub tree_size: u64,
    /// Its root, lowercase hex.
    pub root: String,
    /// The signed checkpoint, to keep and pass to the next run's `--since`.
    pub checkpoint: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report format version.
    pub version: u32,
    /// What was verified, e.g. "data-dir /var/lib/vellum".
    pub scope: String,
    /// True when no check failed.
    pub passed: bool,
    /// The pinned policy: origin, quorum and verifier keys.
    pub policy: PolicySummary,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// The newest certificate verified, if any.
    pub reached: Option<Reached>,
}

/// The policy as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// The log origin.
    pub origin: String,
    /// Signatures needed.
    pub quorum: usize,
    /// Pinned verifier keys.
    pub vkeys: Vec<String>,
}

impl Report {
    /// A report over `checks`; it passes when none failed.
    pub fn new(
        scope: String,
        policy: PolicySummary,
        checks: Vec<Check>,
        reached: Option<Reached>,
    ) -> Report {
        let passed = checks.iter().all(Check::passed);
        Report {
            version: 1,
            scope,
            passed,
            policy,
            checks,
            reached,
        }
    }

    /// Human-readable text: one line per check, failures with their location.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "verification {verdict}: {}", self.scope);
        let _ = writeln!(
            out,
            "policy: origin {} quorum {} ({} keys)",
            self.policy.origin,
            self.policy.quorum,
            self.policy.vkeys.len()
        );
        for check in &self.checks {
            let tag = match check.outcome {
                Outcome::Pass => "ok  ",
                Outcome::Fail => "FAIL",
                Outcome::Skipped => "skip",
            };
            let counts: Vec<String> = check
                .counts
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "{tag} {:<28} {} ({} ms)",
                check.name,
                counts.join(" "),
                check.elapsed_ms
            );
            if let Some(note) = &check.note {
                let _ = writeln!(out, "     note: {note}");
            }
            for failure in &check.failures {
                let _ = writeln!(out, "     at {}: {}", failure.location, failure.message);
            }
            if check.failures_dropped > 0 {
                let _ = writeln!(out, "     ... and {} more failures", check.failures_dropped);
            }
        }
        if let Some(reached) = &self.reached {
            let _ = writeln!(
                out,
                "reached tree size {} root {}",
                reached.tree_size, reached.root
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: one failure anywhere fails the report, and the text names its location.
    #[test]
    fn a_failure_fails_the_report_and_is_located() {
        let mut bad = Check::start("records");
        bad.count("records", 3);
        bad.fail("segments/0.vseg at byte 320", "header checksum mismatch");
        let ok = Check::start("seals").finish();
        let policy = PolicySummary {
            origin: "o".into(),
            quorum: 1,
            vkeys: vec![],
        };
        let report = Report::new("test".into(), policy, vec![ok, bad.finish()], None);
        assert!(!report.passed);
        assert!(
            report
                .to_text()
                .contains("at segments/0.vseg at byte 320: header checksum mismatch")
        );
    }

    /// Goal: failures beyond the bound are counted, not kept.
    #[test]
    fn failures_are_bounded() {
        let mut check = Check::start("x");
        for i in 0..FAILURES_PER_CHECK_MAX + 5 {
            check.fail(format!("{i}"), "bad");
        }
        assert_eq!(check.failures.len(), FAILURES_PER_CHECK_MAX);
        assert_eq!(check.failures_dropped, 5);
    }
}
