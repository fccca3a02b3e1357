//! The verification report as one self-contained HTML page, for a person
//! reading it in a browser or attaching it to an audit file: inline CSS, no
//! script, no external resource, so it renders the same offline years later
//! and cannot phone home. Every text from the report is HTML-escaped (file
//! names, messages and certificate text are data, never markup).
//!
//! Order: the verdict and summary first (with the tool's version and the
//! policy file's SHA-256), then each check with its counts and time, the
//! failures grouped by place (the first of each group, and how many
//! further ones follow it), the pinned keys, and the checkpoint reached
//! (the text to keep for the next `--since`).

use std::fmt::Write as _;

use crate::report::{Check, Outcome, Reached, Report};

/// The page's style sheet (inline; no external resource).
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:72em}\
h1.pass{color:#176b2c}h1.fail{color:#a11b1b}\
table{border-collapse:collapse;margin:0.5em 0 1.5em}\
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left;vertical-align:top}\
th{background:#f2f2f2}td.pass{color:#176b2c}td.fail{color:#a11b1b;font-weight:bold}\
td.not_run{color:#8a5a00;font-weight:bold}code,pre{font-family:ui-monospace,monospace;font-size:0.9em}\
pre{background:#f7f7f7;border:1px solid #ddd;padding:0.6em;white-space:pre-wrap;word-break:break-all}";

/// Escapes `text` for HTML element content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Report {
    /// The report as one self-contained HTML page.
    pub fn to_html(&self) -> String {
        let verdict = if self.passed { "PASSED" } else { "FAILED" };
        let mut out = String::new();
        let _ = writeln!(out, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>");
        let _ = writeln!(out, "<meta charset=\"utf-8\">");
        let _ = writeln!(
            out,
            "<title>Vellum verification {verdict}: {}</title>",
            escape(&self.scope)
        );
        let _ = writeln!(out, "<style>{STYLE}</style>\n</head>\n<body>");
        let class = if self.passed { "pass" } else { "fail" };
        let _ = writeln!(out, "<h1 class=\"{class}\">Verification {verdict}</h1>");
        self.summary_html(&mut out);
        self.checks_html(&mut out);
        self.failures_html(&mut out);
        self.break_glass_html(&mut out);
        self.keys_html(&mut out);
        if let Some(since) = &self.since {
            checkpoint_html(&mut out, "Kept checkpoint (--since)", since);
        }
        match &self.reached {
            Some(reached) => checkpoint_html(&mut out, "Checkpoint reached", reached),
            None => {
                let _ = writeln!(
                    out,
                    "<h2>Checkpoint reached</h2>\n<p>No certificate was verified.</p>"
                );
            }
        }
        let _ = writeln!(
            out,
            "<p><small>{}, report format version {}</small></p>\n</body>\n</html>",
            escape(&self.tool.describe()),
            self.version
        );
        out
    }

    /// The break-glass section: every emergency access in the verified trail.
    fn break_glass_html(&self, out: &mut String) {
        let _ = writeln!(out, "<h2>Break-glass (emergency access)</h2>");
        if self.break_glass.is_empty() && self.break_glass_dropped == 0 {
            let _ = writeln!(out, "<p>None in the verified access trail.</p>");
            return;
        }
        let _ = writeln!(
            out,
            "<table>\n<tr><th>Position</th><th>Time (ns)</th><th>Principal</th><th>Role</th><th>Action</th><th>Stream</th><th>Outcome</th><th>Reason</th><th>Expires (ns)</th></tr>"
        );
        for u in &self.break_glass {
            let stream = u.stream.map_or("-".to_string(), |s| s.to_string());
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{stream}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                u.position,
                u.time_ns,
                escape(&u.principal),
                escape(&u.role),
                escape(&u.action),
                escape(&u.outcome),
                escape(&u.reason),
                u.expires_ns
            );
        }
        let _ = writeln!(out, "</table>");
        if self.break_glass_dropped > 0 {
            let _ = writeln!(out, "<p>{} more not listed.</p>", self.break_glass_dropped);
        }
    }

    fn summary_html(&self, out: &mut String) {
        let failed = self.checks.iter().filter(|c| !c.passed()).count();
        let not_run = self
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::NotRun)
            .count();
        let failures: u64 = self
            .checks
            .iter()
            .map(|c| c.failures.len() as u64 + c.failures_dropped)
            .sum();
        let rows = [
            ("Scope", escape(&self.scope)),
            ("Tool", escape(&self.tool.describe())),
            ("Started", escape(&self.started)),
            ("Finished", escape(&self.finished)),
            ("Duration", format!("{} ms", self.duration_ms)),
            (
                "Origin",
                format!("<code>{}</code>", escape(&self.policy.origin)),
            ),
            (
                "Quorum",
                format!(
                    "{} of {} pinned keys",
                    self.policy.quorum,
                    self.policy.keys.len()
                ),
            ),
            (
                "Policy SHA-256",
                format!(
                    "<code>{}</code>",
                    escape(self.policy.sha256.as_deref().unwrap_or("unknown"))
                ),
            ),
            (
                "Checks",
                format!(
                    "{} checks, {failed} failed, {not_run} not run",
                    self.checks.len()
                ),
            ),
            (
                "Failures",
                match self.root_causes {
                    1 => format!("{failures} in 1 place"),
                    n => format!("{failures} in {n} places"),
                },
            ),
        ];
        let _ = writeln!(out, "<table class=\"summary\">");
        for (name, value) in rows {
            let _ = writeln!(out, "<tr><th>{name}</th><td>{value}</td></tr>");
        }
        let _ = writeln!(out, "</table>");
    }

    fn checks_html(&self, out: &mut String) {
        let _ = writeln!(out, "<h2>Checks</h2>\n<table class=\"checks\">");
        let _ = writeln!(
            out,
            "<tr><th>Outcome</th><th>Check</th><th>Counts</th><th>Time</th><th>Note</th></tr>"
        );
        for check in &self.checks {
            let counts: Vec<String> = check
                .counts
                .iter()
                .map(|(k, v)| format!("{}: {v}", escape(k)))
                .collect();
            let _ = writeln!(
                out,
                "<tr><td class=\"{}\">{}</td><td>{}</td><td>{}</td><td>{} ms</td><td>{}</td></tr>",
                outcome_class(check.outcome),
                outcome_word(check.outcome),
                escape(&check.name),
                counts.join("<br>"),
                check.elapsed_ms,
                check.note.as_deref().map(escape).unwrap_or_default()
            );
        }
        let _ = writeln!(out, "</table>");
    }

    fn failures_html(&self, out: &mut String) {
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.passed()).collect();
        if failed.is_empty() {
            return;
        }
        let _ = writeln!(out, "<h2>Failures</h2>");
        for check in failed {
            let _ = writeln!(
                out,
                "<h3>{}</h3>\n<table class=\"failures\">",
                escape(&check.name)
            );
            let _ = writeln!(
                out,
                "<tr><th>Location</th><th>What was wrong</th><th>Further failures there</th></tr>"
            );
            for group in &check.groups {
                let more = match group.more {
                    0 => String::new(),
                    n => format!(
                        "{n} more in <code>{}</code> (mostly knock-on; the JSON report lists each)",
                        escape(&group.source)
                    ),
                };
                let _ = writeln!(
                    out,
                    "<tr><td><code>{}</code></td><td>{}</td><td>{more}</td></tr>",
                    escape(&group.first.location),
                    escape(&group.first.message)
                );
            }
            if check.failures_dropped > 0 {
                let _ = writeln!(
                    out,
                    "<tr><td colspan=\"3\">... and {} more failures (not kept)</td></tr>",
                    check.failures_dropped
                );
            }
            let _ = writeln!(out, "</table>");
        }
    }

    fn keys_html(&self, out: &mut String) {
        let _ = writeln!(out, "<h2>Pinned keys</h2>\n<table class=\"keys\">");
        let _ = writeln!(
            out,
            "<tr><th>Name</th><th>Key id</th><th>Verifier key</th></tr>"
        );
        for key in &self.policy.keys {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&key.name),
                escape(&key.key_id),
                escape(&key.vkey)
            );
        }
        let _ = writeln!(out, "</table>");
    }
}

fn checkpoint_html(out: &mut String, title: &str, checkpoint: &Reached) {
    let _ = writeln!(
        out,
        "<h2>{}</h2>\n<table class=\"checkpoint\">",
        escape(title)
    );
    let _ = writeln!(
        out,
        "<tr><th>Tree size</th><td>{}</td></tr>",
        checkpoint.tree_size
    );
    let _ = writeln!(
        out,
        "<tr><th>Root</th><td><code>{}</code></td></tr>",
        escape(&checkpoint.root)
    );
    let signers: Vec<String> = checkpoint.signed_by.iter().map(|s| escape(s)).collect();
    let _ = writeln!(
        out,
        "<tr><th>Signed by</th><td>{}</td></tr>\n</table>",
        signers.join(", ")
    );
    let _ = writeln!(out, "<pre>{}</pre>", escape(&checkpoint.checkpoint));
}

fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "pass",
        Outcome::Fail => "fail",
        Outcome::NotRun => "not_run",
    }
}

fn outcome_word(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Pass => "passed",
        Outcome::Fail => "FAILED",
        Outcome::NotRun => "not run",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::PolicySummary;

    /// Goal: every markup character of report text is escaped.
    #[test]
    fn escape_neutralizes_markup() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    /// Goal: a failure whose location and message hold markup appears
    /// escaped, never as a tag, and the page has no script.
    #[test]
    fn failure_text_is_escaped_in_the_page() {
        let mut check = Check::start("records");
        check.fail(
            crate::report::FailureKind::Damaged,
            "<b>seg</b> at byte 7",
            "bad <script>x</script>",
        );
        let policy = PolicySummary {
            origin: "o".into(),
            quorum: 1,
            vkeys: vec![],
            keys: vec![],
            sha256: None,
            rotations: vec![],
        };
        let html = Report::new("s<".into(), policy, vec![check.finish()], None).to_html();
        assert!(html.contains("&lt;b&gt;seg&lt;/b&gt; at byte 7"));
        assert!(!html.contains("<script"));
        assert!(html.contains("Verification FAILED"));
    }
}
