//! The verification report model: what `vellum verify` checked, with counts,
//! times and the location of every failure, the keys it pinned and the
//! checkpoint it reached. Rendered as text here, as HTML in `html`, and as
//! JSON through serde, so machines and people read the same content.
//!
//! Two rules keep a broken input from misleading the reader. A check whose
//! input could not be read is `not_run`, never `pass`: zero counts prove
//! nothing. And the failures of a check are grouped by where they are (one
//! segment file, one index table, one replica): the first one of each group
//! is shown, with the count of the further ones after it, which are mostly
//! knock-on effects of the first (the JSON keeps every failure). Every
//! report names the tool (version and git commit) and the SHA-256 of the
//! trust policy file, so a reader knows what ran against which keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::hash::to_hex;
use crate::policy::Policy;

/// Failures kept per check, at most; the count of the rest is still reported.
pub const FAILURES_PER_CHECK_MAX: usize = 100;

/// The report format version (2: times, pinned keys, kept checkpoint;
/// 3: `not_run` outcome, failure groups, tool and policy SHA-256;
/// 4: every failure carries a `kind`; 5: the `break_glass` section).
pub const REPORT_VERSION: u32 = 5;
/// Break-glass uses a report lists, at most; the count of the rest is in
/// `break_glass_dropped`.
pub const BREAK_GLASS_LISTED_MAX: usize = 1000;

/// One access-trail event that opened emergency access (break-glass) or
/// was made under it, as the verified trail holds it: the report's
/// `break_glass` section, so an auditor sees every use next to the proof
/// that the trail holding it is intact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BreakGlassUse {
    /// The trail event's global position (its leaf).
    pub position: u64,
    /// When, unix nanoseconds.
    pub time_ns: u64,
    /// Who.
    pub principal: String,
    /// The principal's role.
    pub role: String,
    /// The trail action (`break_glass` for the opening).
    pub action: String,
    /// The stream.
    pub stream: Option<u64>,
    /// The trail outcome.
    pub outcome: String,
    /// The reason given when the grant was opened.
    pub reason: String,
    /// When the grant opened, unix nanoseconds.
    pub opened_ns: u64,
    /// When it expired (or expires), unix nanoseconds.
    pub expires_ns: u64,
}

/// One key of one replica's history as the report shows it (the
/// `key_history` section, see `key_history::reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyHistoryKey {
    /// The replica's index in the policy.
    pub replica: usize,
    /// The first op whose checkpoints the key signs (0: pinned first).
    pub from_op: u64,
    /// The key's name.
    pub name: String,
    /// The key's id, lowercase hex.
    pub key_id: String,
    /// Pinned in the policy: only pinned keys count toward a quorum.
    pub pinned: bool,
    /// The global position of the access-trail event that announces it in
    /// the log (absent: a key pinned first, or a pinned rotation the
    /// verified trail does not hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logged_at: Option<u64>,
    /// The rotation's `rotation` line (absent for a key pinned first): an
    /// auditor who decides to trust an unpinned one pins this line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<String>,
}

/// One failed expectation and where it failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// What kind of failure: what a program decides by (the message is
    /// for people and may change).
    pub kind: FailureKind,
    /// Where: "file at byte N", "index row events.position=N", ...
    pub location: String,
    /// What was wrong.
    pub message: String,
}

/// What kind of thing went wrong. Callers that act on failures (e.g.
/// `vellum verify --live`, which accepts a record being written at the
/// tail) match on this, never on message text. Serialized in snake case
/// (`"torn"`, `"chain_broken"`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// An input could not be read: a file, a directory, a database, a
    /// runtime; or a setting named something that is not there.
    Unreadable,
    /// The bytes at the end of a segment are not a complete record: a torn
    /// write, or on a running replica the record being written.
    Torn,
    /// Bytes before the tail that fail a checksum, do not decode or break
    /// a rule of their format (`SegmentEnd::Corrupt`, a bad event frame, a
    /// missing segment or seal).
    Damaged,
    /// Records decode but do not link: an op at the wrong global position,
    /// a key id reused across streams.
    ChainBroken,
    /// A Merkle root (of a certificate or a seal) that the events do not
    /// give, or a certificate whose size is not its record's tree size.
    RootMismatch,
    /// A certificate that does not parse or verify under the pinned policy,
    /// or whose signed chain head is missing or names other headers.
    CertificateInvalid,
    /// Ops at the end of the log that no valid certificate covers (on a
    /// replica of a running cluster: prepared, not yet certified here).
    Uncertified,
    /// A log with ops and no valid certificate at all.
    NoCertificate,
    /// An audit index row that differs from the log, or is missing or extra.
    IndexMismatch,
    /// The audit index trails the log by more than allowed.
    IndexLag,
    /// An access-trail row that the trail in the log contradicts, or a
    /// trail event without its row.
    TrailMismatch,
    /// A kept checkpoint the log does not extend (history rewritten, or
    /// the checkpoint is beyond the log or not certified).
    HistoryRewritten,
    /// Replicas of one cluster disagree (op headers, roots, signers).
    ReplicaDivergence,
    /// The data directory's settings or the trust policy do not fit what
    /// is verified (another cluster, a quorum below f+1).
    ConfigMismatch,
    /// An export bundle whose files, manifest or signature do not agree.
    BundleMismatch,
    /// A signing-key rotation announced in the log that does not parse,
    /// names another principal than the replica, or does not verify under
    /// the key in force and the new key.
    KeyRotationInvalid,
    /// A signing-key rotation pinned in the policy that no announcement in
    /// the log holds, although the log holds an op from its op on (whose certificate needs its key).
    KeyRotationUnlogged,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Every item checked was right.
    Pass,
    /// At least one failure.
    Fail,
    /// Did not run, or not in full, because its input could not be read
    /// (an earlier check names why). Never a pass.
    #[serde(rename = "not_run")]
    NotRun,
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
    /// The kept failures grouped by where they are: the first of each
    /// group and how many further ones follow it (see [`Check::regroup`]).
    pub groups: Vec<FailureGroup>,
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
            groups: Vec::new(),
            note: None,
            elapsed_ms: 0,
            started: Some(Instant::now()),
        }
    }

    /// A check that could not run, and why.
    pub fn not_run(name: &str, why: &str) -> Check {
        let mut check = Check::start(name);
        check.outcome = Outcome::NotRun;
        check.note = Some(why.to_string());
        check.finish()
    }

    /// Marks a check that found nothing wrong as not run (its input was
    /// incomplete), saying why; a check with failures keeps them.
    pub fn mark_not_run(&mut self, why: &str) {
        if self.outcome == Outcome::Pass {
            self.outcome = Outcome::NotRun;
            self.note = Some(why.to_string());
        }
    }

    /// Recomputes [`Check::groups`] from the kept failures: consecutive
    /// or not, failures with the same [`failure_source`] form one group,
    /// in the order of their first failure.
    pub fn regroup(&mut self) {
        let mut groups: Vec<FailureGroup> = Vec::new();
        for failure in &self.failures {
            let source = failure_source(&failure.location);
            match groups.iter_mut().find(|g| g.source == source) {
                Some(group) => group.more += 1,
                None => groups.push(FailureGroup {
                    source,
                    first: failure.clone(),
                    more: 0,
                }),
            }
        }
        self.groups = groups;
    }

    /// Adds `n` to a counter.
    pub fn count(&mut self, what: &str, n: u64) {
        *self.counts.entry(what.to_string()).or_default() += n;
    }

    /// Records a failure of `kind`.
    pub fn fail(
        &mut self,
        kind: FailureKind,
        location: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.outcome = Outcome::Fail;
        if self.failures.len() < FAILURES_PER_CHECK_MAX {
            self.failures.push(Failure {
                kind,
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

    /// Removes the kept failures for which `drop` is true and returns how
    /// many it removed. A check left without failures (and none dropped
    /// for the bound) passes again; its groups are recomputed.
    pub fn drop_failures(&mut self, mut drop: impl FnMut(&Failure) -> bool) -> usize {
        let before = self.failures.len();
        self.failures.retain(|f| !drop(f));
        let removed = before - self.failures.len();
        if removed > 0 {
            if self.failures.is_empty() && self.failures_dropped == 0 {
                self.outcome = Outcome::Pass;
            }
            self.regroup();
        }
        removed
    }

    /// True when a kept failure is of `kind`.
    pub fn has_failure(&self, kind: FailureKind) -> bool {
        self.failures.iter().any(|f| f.kind == kind)
    }
}

/// The failures of one check at one place: the first, and how many more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureGroup {
    /// Where: a segment file, an index table, a replica (see
    /// [`failure_source`]).
    pub source: String,
    /// The first failure there: usually the root cause.
    pub first: Failure,
    /// Further failures there after the first, mostly knock-on effects.
    pub more: u64,
}

/// The place a failure location names, without its position in it: the
/// file of `"<file> at byte N"`; otherwise the location with every number
/// written as `N`, except the one right after a leading `replica ` (so
/// `index row events.position=7` is `index row events.position=N`, and
/// replicas stay apart).
pub fn failure_source(location: &str) -> String {
    if let Some((file, _)) = location.split_once(" at byte ") {
        return file.to_string();
    }
    let (keep, rest) = match location.strip_prefix("replica ") {
        Some(rest) => {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            location.split_at("replica ".len() + digits)
        }
        None => ("", location),
    };
    let mut out = keep.to_string();
    let mut in_number = false;
    for c in rest.chars() {
        match (c.is_ascii_digit(), in_number) {
            (true, false) => out.push('N'),
            (true, true) => {}
            (false, _) => out.push(c),
        }
        in_number = c.is_ascii_digit();
    }
    out
}

/// The program that wrote a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tool {
    /// The program's name.
    pub name: String,
    /// Its version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The git commit it was built from, when known at build time.
    pub commit: Option<String>,
}

impl Tool {
    /// "name version (commit c)" or "name version".
    pub fn describe(&self) -> String {
        match &self.commit {
            Some(commit) => format!("{} {} (commit {commit})", self.name, self.version),
            None => format!("{} {}", self.name, self.version),
        }
    }
}

/// Where verification got to: the newest certificate it verified (or, for
/// `--since`, the checkpoint the auditor kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reached {
    /// Tree size of that certificate.
    pub tree_size: u64,
    /// Its root, lowercase hex.
    pub root: String,
    /// The pinned keys whose signatures verified, as `name+keyid`.
    pub signed_by: Vec<String>,
    /// The signed checkpoint, to keep and pass to the next run's `--since`.
    pub checkpoint: String,
}

/// One pinned verifier key as the report shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PinnedKey {
    /// The key name (the replica's label).
    pub name: String,
    /// The 4-byte key id, lowercase hex.
    pub key_id: String,
    /// The whole verifier key line.
    pub vkey: String,
}

/// The policy as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySummary {
    /// The log origin.
    pub origin: String,
    /// Signatures needed.
    pub quorum: usize,
    /// Pinned verifier keys (vkey lines, kept for readers of version 1).
    pub vkeys: Vec<String>,
    /// Pinned verifier keys with their names and key ids.
    pub keys: Vec<PinnedKey>,
    /// SHA-256 of the policy file as read, lowercase hex (set by the
    /// caller that read the file; absent for a policy built in memory).
    pub sha256: Option<String>,
    /// Pinned signing-key rotations, in the policy's order (absent from
    /// the JSON when there are none, so older reports read the same).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rotations: Vec<PinnedRotation>,
}

/// One pinned signing-key rotation as the report shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PinnedRotation {
    /// The replica's index in the policy.
    pub replica: usize,
    /// The first op whose checkpoints the new key signs.
    pub from_op: u64,
    /// The new key's name.
    pub name: String,
    /// The new key's id, lowercase hex.
    pub key_id: String,
    /// The `rotation` line as pinned (both signatures).
    pub line: String,
}

impl PolicySummary {
    /// The summary of `policy`.
    pub fn from_policy(policy: &Policy) -> PolicySummary {
        let keys: Vec<PinnedKey> = policy
            .verifiers
            .iter()
            .map(|v| PinnedKey {
                name: v.name().to_string(),
                key_id: to_hex(&v.key_id()),
                vkey: v.to_vkey(),
            })
            .collect();
        PolicySummary {
            origin: policy.origin.clone(),
            quorum: policy.quorum,
            vkeys: keys.iter().map(|k| k.vkey.clone()).collect(),
            keys,
            sha256: None,
            rotations: policy
                .rotations
                .iter()
                .map(|r| PinnedRotation {
                    replica: r.replica,
                    from_op: r.from_op,
                    name: r.new.name().to_string(),
                    key_id: to_hex(&r.new.key_id()),
                    line: r.to_line(),
                })
                .collect(),
        }
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Report format version ([`REPORT_VERSION`]).
    pub version: u32,
    /// What was verified, e.g. "data-dir /var/lib/vellum".
    pub scope: String,
    /// The program that verified (see [`Report::with_tool`]).
    pub tool: Tool,
    /// True when every check ran and passed.
    pub passed: bool,
    /// When verification started, RFC 3339 UTC.
    pub started: String,
    /// When it finished, RFC 3339 UTC.
    pub finished: String,
    /// Wall time of the whole run, in milliseconds.
    pub duration_ms: u64,
    /// The pinned policy: origin, quorum and verifier keys.
    pub policy: PolicySummary,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
    /// Failure groups over all checks: the places where something broke
    /// (each check's groups counted; knock-on failures are inside them).
    pub root_causes: u64,
    /// The checkpoint the auditor kept (`--since`), when one was given.
    pub since: Option<Reached>,
    /// The newest certificate verified, if any.
    pub reached: Option<Reached>,
    /// The Merkle tree's frontier at the reached size: the complete
    /// subtrees on its right edge, highest first, lowercase hex (one per
    /// set bit of the size). Kept with this report, it lets the next run's
    /// `--since` start from `reached` without re-reading the log (the next
    /// run accepts it only if it folds to the signed root). Absent when
    /// the run did not keep it (a bundle run, or no certificate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reached_frontier: Option<Vec<String>>,
    /// Every break-glass use in the verified access trail (at most
    /// [`BREAK_GLASS_LISTED_MAX`], in trail order); empty when there was
    /// none, or when the trail check did not run.
    pub break_glass: Vec<BreakGlassUse>,
    /// Break-glass uses beyond [`BREAK_GLASS_LISTED_MAX`], not listed.
    pub break_glass_dropped: u64,
    /// Each replica's signing keys: pinned first, then every rotation
    /// pinned or announced in the verified access trail, by replica and
    /// op. Absent from the JSON when no rotation is pinned or announced
    /// (so a report without rotations reads as before).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub key_history: Vec<KeyHistoryKey>,
}

impl Report {
    /// A report over `checks`; it passes when every check ran and none failed. Its times are
    /// "now" until [`Report::with_times`] sets the real ones.
    pub fn new(
        scope: String,
        policy: PolicySummary,
        mut checks: Vec<Check>,
        reached: Option<Reached>,
    ) -> Report {
        checks.iter_mut().for_each(Check::regroup);
        // A check that did not run proves nothing: the report cannot pass.
        let passed = checks.iter().all(|c| c.outcome == Outcome::Pass);
        let root_causes = checks.iter().map(|c| c.groups.len() as u64).sum();
        let now = rfc3339(SystemTime::now());
        Report {
            version: REPORT_VERSION,
            scope,
            tool: Tool {
                name: "vellum-audit".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                commit: None,
            },
            passed,
            root_causes,
            started: now.clone(),
            finished: now,
            duration_ms: 0,
            policy,
            checks,
            since: None,
            reached,
            reached_frontier: None,
            break_glass: Vec::new(),
            break_glass_dropped: 0,
            key_history: Vec::new(),
        }
    }

    /// Sets the `key_history` section (kept empty when it holds only the
    /// keys pinned first: nothing rotated).
    pub fn with_key_history(mut self, keys: Vec<KeyHistoryKey>) -> Report {
        let rotated = keys.iter().any(|k| k.from_op > 0);
        self.key_history = if rotated { keys } else { Vec::new() };
        self
    }

    /// Lists `uses` (sorted by position, bounded by
    /// [`BREAK_GLASS_LISTED_MAX`]) in the report's break-glass section.
    pub fn with_break_glass(mut self, mut uses: Vec<BreakGlassUse>) -> Report {
        uses.sort_by_key(|u| u.position);
        uses.dedup_by_key(|u| u.position);
        self.break_glass_dropped = uses.len().saturating_sub(BREAK_GLASS_LISTED_MAX) as u64;
        uses.truncate(BREAK_GLASS_LISTED_MAX);
        self.break_glass = uses;
        self
    }

    /// Names the program that verified (the `vellum` binary sets its own
    /// version and commit; the default is this crate's version).
    pub fn with_tool(mut self, tool: Tool) -> Report {
        self.tool = tool;
        self
    }

    /// Records the SHA-256 of the policy file the run pinned.
    pub fn with_policy_sha256(mut self, sha256: String) -> Report {
        self.policy.sha256 = Some(sha256);
        self
    }

    /// Sets when the run started and finished.
    pub fn with_times(mut self, started: SystemTime, finished: SystemTime) -> Report {
        self.started = rfc3339(started);
        self.finished = rfc3339(finished);
        let elapsed = finished.duration_since(started).unwrap_or_default();
        self.duration_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Every failure of every check, as (check name, failure).
    pub fn failures(&self) -> impl Iterator<Item = (&str, &Failure)> {
        self.checks
            .iter()
            .flat_map(|c| c.failures.iter().map(move |f| (c.name.as_str(), f)))
    }

    /// Human-readable text: one line per check, failures with their location.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let _ = writeln!(out, "verification {verdict}: {}", self.scope);
        let _ = writeln!(out, "tool: {}", self.tool.describe());
        let _ = writeln!(
            out,
            "started {} finished {} ({} ms)",
            self.started, self.finished, self.duration_ms
        );
        let _ = writeln!(
            out,
            "policy: origin {} quorum {} ({} keys)",
            self.policy.origin,
            self.policy.quorum,
            self.policy.keys.len()
        );
        let _ = writeln!(
            out,
            "policy sha256: {}",
            self.policy.sha256.as_deref().unwrap_or("unknown")
        );
        for key in &self.policy.keys {
            let _ = writeln!(out, "  pinned key {} id {}", key.name, key.key_id);
        }
        for rotation in &self.policy.rotations {
            let _ = writeln!(
                out,
                "  pinned rotation of replica {} from op {}: key {} id {}",
                rotation.replica, rotation.from_op, rotation.name, rotation.key_id
            );
        }
        for check in &self.checks {
            write_check_text(&mut out, check);
        }
        if !self.passed {
            let not_run = self
                .checks
                .iter()
                .filter(|c| c.outcome == Outcome::NotRun)
                .count();
            let places = match self.root_causes {
                1 => "1 place".to_string(),
                n => format!("{n} places"),
            };
            let _ = writeln!(out, "failures in {places}; {not_run} checks not run");
        }
        self.break_glass_text(&mut out);
        for key in &self.key_history {
            let logged = match (key.logged_at, key.from_op) {
                (Some(p), _) => format!("logged at position {p}"),
                (None, 0) => "the key pinned first".to_string(),
                (None, _) => "not in the log".to_string(),
            };
            let pinned = if key.pinned {
                "pinned"
            } else {
                "NOT pinned (does not count)"
            };
            let _ = writeln!(
                out,
                "key history: replica {} from op {} key {} id {}: {pinned}, {logged}",
                key.replica, key.from_op, key.name, key.key_id
            );
            if !key.pinned
                && let Some(line) = &key.line
            {
                let _ = writeln!(out, "  to trust it, pin: {line}");
            }
        }
        if let Some(since) = &self.since {
            let _ = writeln!(
                out,
                "kept checkpoint: tree size {} root {}",
                since.tree_size, since.root
            );
        }
        if let Some(reached) = &self.reached {
            let _ = writeln!(
                out,
                "reached tree size {} root {} signed by {}",
                reached.tree_size,
                reached.root,
                reached.signed_by.join(", ")
            );
        }
        out
    }
}

impl Report {
    /// The break-glass section of the text report.
    fn break_glass_text(&self, out: &mut String) {
        let total = self.break_glass.len() as u64 + self.break_glass_dropped;
        if total == 0 {
            let _ = writeln!(out, "break-glass: none in the verified access trail");
            return;
        }
        let _ = writeln!(
            out,
            "break-glass: {total} uses in the verified access trail"
        );
        for u in &self.break_glass {
            let stream = u.stream.map_or("-".to_string(), |s| s.to_string());
            let _ = writeln!(
                out,
                "  position {} time_ns {} {} ({}) {} stream {stream} {} reason {:?} expires_ns {}",
                u.position,
                u.time_ns,
                u.principal,
                u.role,
                u.action,
                u.outcome,
                u.reason,
                u.expires_ns
            );
        }
        if self.break_glass_dropped > 0 {
            let _ = writeln!(
                out,
                "  ... and {} more not listed",
                self.break_glass_dropped
            );
        }
    }
}

fn write_check_text(out: &mut String, check: &Check) {
    let counts: Vec<String> = check
        .counts
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "{} {:<28} {} ({} ms)",
        check.outcome.tag(),
        check.name,
        counts.join(" "),
        check.elapsed_ms
    );
    if let Some(note) = &check.note {
        let _ = writeln!(out, "        note: {note}");
    }
    for group in &check.groups {
        let first = &group.first;
        let _ = writeln!(out, "        at {}: {}", first.location, first.message);
        if group.more > 0 {
            let _ = writeln!(
                out,
                "           + {} further failures in {} after this one (mostly knock-on; --format json lists each)",
                group.more, group.source
            );
        }
    }
    if check.failures_dropped > 0 {
        let _ = writeln!(
            out,
            "        ... and {} more failures (not kept)",
            check.failures_dropped
        );
    }
}

impl Outcome {
    /// The seven-letter tag of the text report.
    pub fn tag(self) -> &'static str {
        match self {
            Outcome::Pass => "ok     ",
            Outcome::Fail => "FAIL   ",
            Outcome::NotRun => "not run",
        }
    }
}

/// `time` as RFC 3339 UTC with milliseconds, e.g. `2024-05-01T12:00:00.250Z`
/// (times before 1970 print as the epoch).
pub fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_millis()
    )
}

/// (year, month, day) of `days` since 1970-01-01 in the proleptic Gregorian
/// calendar (Howard Hinnant's days-to-civil algorithm).
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: one failure anywhere fails the report, and the text names its location.
    #[test]
    fn a_failure_fails_the_report_and_is_located() {
        let mut bad = Check::start("records");
        bad.count("records", 3);
        bad.fail(
            FailureKind::Damaged,
            "segments/0.vseg at byte 320",
            "header checksum mismatch",
        );
        let ok = Check::start("seals").finish();
        let policy = PolicySummary {
            origin: "o".into(),
            quorum: 1,
            vkeys: vec![],
            keys: vec![],
            sha256: None,
            rotations: vec![],
        };
        let report = Report::new("test".into(), policy, vec![ok, bad.finish()], None);
        assert!(!report.passed);
        assert!(
            report
                .to_text()
                .contains("at segments/0.vseg at byte 320: header checksum mismatch")
        );
    }

    /// Goal: failures group by file, table or replica, numbers aside, so a
    /// root cause and its knock-on failures make one group.
    #[test]
    fn failures_group_by_place() {
        for (location, source) in [
            (
                "segments/00000000.vseg at byte 320",
                "segments/00000000.vseg",
            ),
            (
                "index row events.position=17",
                "index row events.position=N",
            ),
            (
                "index table access, position 4",
                "index table access, position N",
            ),
            ("replica 2 op 5 (x at byte 9)", "replica 2 op 5 (x"),
            (
                "replica 12 certificate of op 7 (tree size 30)",
                "replica 12 certificate of op N (tree size N)",
            ),
            ("policy", "policy"),
        ] {
            assert_eq!(failure_source(location), source, "{location}");
        }
        let mut check = Check::start("audit index");
        for i in 0..50 {
            check.fail(
                FailureKind::IndexMismatch,
                format!("index row events.position={i}"),
                "extra",
            );
        }
        check.fail(
            FailureKind::IndexMismatch,
            "index row commits.op=1",
            "extra",
        );
        check.regroup();
        assert_eq!(check.groups.len(), 2);
        assert_eq!(check.groups[0].more, 49);
        assert_eq!(
            check.groups[0].first.location,
            "index row events.position=0"
        );
    }

    /// Goal: a check marked not run is never a pass, and keeps failures it found.
    #[test]
    fn not_run_is_not_a_pass() {
        let mut idle = Check::start("merkle roots");
        idle.mark_not_run("the log could not be read");
        assert_eq!(idle.outcome, Outcome::NotRun);
        assert_eq!(idle.outcome.tag(), "not run");
        let mut failed = Check::start("records");
        failed.fail(FailureKind::Damaged, "x", "bad");
        failed.mark_not_run("ignored");
        assert_eq!(failed.outcome, Outcome::Fail);
    }

    /// Goal: every failure carries its kind into the JSON report, in snake
    /// case, and `drop_failures` removes by kind and passes an emptied check.
    #[test]
    fn failures_carry_their_kind() {
        let mut check = Check::start("records and hash chain");
        check.fail(
            FailureKind::Torn,
            "s at byte 9",
            "7 bytes that are not a complete record",
        );
        check.fail(
            FailureKind::ChainBroken,
            "s at byte 2",
            "op 3 starts at position 4",
        );
        let json = serde_json::to_value(&check).expect("json");
        assert_eq!(json["failures"][0]["kind"], "torn");
        assert_eq!(json["failures"][1]["kind"], "chain_broken");
        assert!(check.has_failure(FailureKind::Torn));
        assert_eq!(check.drop_failures(|f| f.kind == FailureKind::Torn), 1);
        assert_eq!(check.outcome, Outcome::Fail, "the chain failure stays");
        assert_eq!(
            check.drop_failures(|f| f.kind == FailureKind::ChainBroken),
            1
        );
        assert_eq!(check.outcome, Outcome::Pass);
        assert!(check.groups.is_empty());
    }

    /// Goal: failures beyond the bound are counted, not kept.
    #[test]
    fn failures_are_bounded() {
        let mut check = Check::start("x");
        for i in 0..FAILURES_PER_CHECK_MAX + 5 {
            check.fail(FailureKind::Damaged, format!("{i}"), "bad");
        }
        assert_eq!(check.failures.len(), FAILURES_PER_CHECK_MAX);
        assert_eq!(check.failures_dropped, 5);
    }

    /// Goal: RFC 3339 formatting matches known instants (epoch, a leap day, a millisecond).
    #[test]
    fn rfc3339_formats_known_instants() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + std::time::Duration::from_millis(secs * 1000 + millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 0), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_700_000_000, 250), "2023-11-14T22:13:20.250Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    /// Goal: the summary of a policy names each pinned key with its key id.
    #[test]
    fn policy_summary_names_keys_and_ids() {
        let signer = crate::note::Signer::from_seed("r0", [3; 32]).expect("signer");
        let policy =
            Policy::new("vellum.local/cluster/x", vec![signer.verifier()], 1).expect("policy");
        let summary = PolicySummary::from_policy(&policy);
        assert_eq!(summary.keys.len(), 1);
        assert_eq!(summary.keys[0].name, "r0");
        assert_eq!(summary.keys[0].key_id, to_hex(&signer.key_id()));
        assert_eq!(summary.vkeys, vec![signer.verifier().to_vkey()]);
    }

    /// Goal: the break-glass section lists uses sorted by position, once
    /// each, at most BREAK_GLASS_LISTED_MAX with the rest counted, and the
    /// text says "none" when there is none.
    #[test]
    fn break_glass_section_is_sorted_deduplicated_and_bounded() {
        let policy = PolicySummary {
            origin: "o".into(),
            quorum: 1,
            vkeys: Vec::new(),
            keys: Vec::new(),
            sha256: None,
            rotations: Vec::new(),
        };
        let empty = Report::new("s".into(), policy.clone(), Vec::new(), None);
        assert!(empty.to_text().contains("break-glass: none"));
        let use_at = |position: u64| BreakGlassUse {
            position,
            time_ns: position,
            principal: "p".into(),
            role: "reader".into(),
            action: "read_stream".into(),
            stream: Some(16),
            outcome: "success".into(),
            reason: "why\nnot".into(),
            opened_ns: 0,
            expires_ns: 9,
        };
        let mut uses: Vec<BreakGlassUse> = (0..BREAK_GLASS_LISTED_MAX as u64 + 5)
            .rev()
            .map(use_at)
            .collect();
        uses.push(use_at(3));
        let report = Report::new("s".into(), policy, Vec::new(), None).with_break_glass(uses);
        assert_eq!(report.break_glass.len(), BREAK_GLASS_LISTED_MAX);
        assert_eq!(report.break_glass_dropped, 5);
        assert!(
            report
                .break_glass
                .windows(2)
                .all(|w| w[0].position < w[1].position)
        );
        let text = report.to_text();
        assert!(text.contains(&format!("break-glass: {} uses", BREAK_GLASS_LISTED_MAX + 5)));
        assert!(text.contains("reason \"why\\nnot\""), "one line per use");
        assert!(text.contains("... and 5 more not listed"));
    }
}
