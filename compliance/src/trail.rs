//! The access trail's event (P7): one record per access to patient data or
//! to the log — append, read, subscription, proof, export, shred,
//! verification, and every failed or denied attempt. Replicas append these
//! to the system stream [`ACCESS_TRAIL_STREAM`] like any event (hash-chained,
//! quorum-certified, provable); the audit index projects them into its
//! `access` table; the compliance exports turn them into FHIR AuditEvent,
//! CSV, NDJSON and HIPAA accountings of disclosures.
//!
//! The payload is this struct as compact JSON (field order fixed by the
//! struct), so an index row holding the payload text and its salt can be
//! checked against the leaf's commitment without any key.

use serde::{Deserialize, Serialize};

/// The system stream holding the access trail (ids below 16 are reserved).
pub const ACCESS_TRAIL_STREAM: u64 = vellum_audit::record::ACCESS_TRAIL_STREAM;
/// Version of the trail event format: events without a `break_glass`
/// member are written as version 1, whose bytes never changed.
pub const ACCESS_EVENT_VERSION: u32 = 1;
/// Version of an event that carries the `break_glass` member (version 1
/// plus that member, last); [`AccessEvent::mark_break_glass`] sets it.
pub const ACCESS_EVENT_VERSION_BREAK_GLASS: u32 = 2;
/// Longest free text (purpose, detail, recipient, description) kept in a
/// trail event, in bytes.
pub const ACCESS_TEXT_BYTES_MAX: usize = 512;
/// Most stream ids one trail event lists in `streams` (what a global-log
/// read or a subscription window returned); beyond it `streams_truncated`
/// is set, and an accounting cannot rule a stream out.
pub const STREAMS_RETURNED_MAX: usize = 256;

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccessAction {
    /// Events appended to a stream.
    Append,
    /// A stream's events read.
    ReadStream,
    /// The global log read.
    ReadLog,
    /// A subscription to the global log opened.
    Subscribe,
    /// An inclusion proof fetched.
    Proof,
    /// A consistency proof fetched.
    Consistency,
    /// The latest certificate fetched.
    Certificate,
    /// An export of patient events written (a disclosure).
    Export,
    /// The access trail itself exported (no patient data).
    ExportTrail,
    /// A stream's keys destroyed.
    Shred,
    /// A legal hold set on a stream (it blocks shredding).
    LegalHold,
    /// A stream's legal hold lifted.
    LegalHoldRelease,
    /// A stream's retention floor raised.
    Retention,
    /// A verification run.
    Verify,
    /// A request refused for a missing or unknown credential.
    AuthFailed,
    /// Emergency access to a stream opened (break-glass), with a reason.
    BreakGlass,
    /// A replica's key-encryption key rotated (`vellum keys rotate-kek`):
    /// recorded by that replica at its next start; `detail` names the old
    /// and new KEK fingerprints, never key material.
    KekRotated,
    /// A replica's signing key rotated (`vellum keys rotate-signing`):
    /// recorded by that replica at its next start; `detail` is the
    /// rotation's pinned line `rotation <replica> <op> <new vkey> <old sig>
    /// <new sig>` (public: the announcement signed by the old and the new
    /// key, see docs/format.md "Signing-key rotation"), which `vellum
    /// verify` reads from the log to report each replica's key history.
    SigningKeyRotated,
    /// A consumer group created, deleted or looked at, or events of it
    /// acked, nacked, listed as parked or replayed (no patient data; a
    /// group's deliveries are recorded as `subscribe`).
    ConsumerGroup,
}

impl AccessAction {
    /// The snake_case name used in the payload and the index.
    pub fn as_str(self) -> &'static str {
        match self {
            AccessAction::Append => "append",
            AccessAction::ReadStream => "read_stream",
            AccessAction::ReadLog => "read_log",
            AccessAction::Subscribe => "subscribe",
            AccessAction::Proof => "proof",
            AccessAction::Consistency => "consistency",
            AccessAction::Certificate => "certificate",
            AccessAction::Export => "export",
            AccessAction::ExportTrail => "export_trail",
            AccessAction::Shred => "shred",
            AccessAction::LegalHold => "legal_hold",
            AccessAction::LegalHoldRelease => "legal_hold_release",
            AccessAction::Retention => "retention",
            AccessAction::Verify => "verify",
            AccessAction::AuthFailed => "auth_failed",
            AccessAction::BreakGlass => "break_glass",
            AccessAction::KekRotated => "kek_rotated",
            AccessAction::SigningKeyRotated => "signing_key_rotated",
            AccessAction::ConsumerGroup => "consumer_group",
        }
    }

    /// True for actions that disclose patient data (reads, subscriptions,
    /// exports): what an accounting of disclosures lists.
    pub fn discloses(self) -> bool {
        matches!(
            self,
            AccessAction::ReadStream
                | AccessAction::ReadLog
                | AccessAction::Subscribe
                | AccessAction::Export
        )
    }
}

/// One access, as recorded in the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEvent {
    /// Format version ([`ACCESS_EVENT_VERSION`]).
    pub v: u32,
    /// When, in unix nanoseconds (the recording replica's clock).
    pub time_ns: u64,
    /// Who: the authenticated principal, or "anonymous" for a failed login.
    pub principal: String,
    /// The principal's role ("writer", "reader", "auditor", "system", "none").
    pub role: String,
    /// What.
    pub action: AccessAction,
    /// Which stream, if one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<u64>,
    /// First offset (or global position for log reads) touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// One past the last offset (or position) touched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// The purpose of use the caller gave (e.g. "TREAT", "HPAYMT", "HOPERAT").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    /// "success", or "refused: <why>", "denied", "failed: <why>".
    pub outcome: String,
    /// The caller's network address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
    /// What else identifies the access (a verification's report hash and
    /// checkpoint, an export's bundle manifest hash).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The recipient of a disclosure as the request named it (a person or
    /// organization, 164.528(b)(2)(ii)); absent: the principal received it.
    /// Absent in events written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// A description of what was disclosed, as the request gave it
    /// (164.528(b)(2)(iii)); absent: the accounting describes the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// For a global-log read or a subscription window: the distinct streams
    /// whose events it returned, ascending, at most [`STREAMS_RETURNED_MAX`].
    /// Absent: not recorded (then a disclosure cannot be attributed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Vec<u64>>,
    /// True when more streams were returned than `streams` lists.
    #[serde(default, skip_serializing_if = "is_false")]
    pub streams_truncated: bool,
    /// For an aggregate of failed logins (`auth_failed`): how many failed
    /// attempts from one source this one event stands for (at least 1).
    /// Absent: the event stands for one attempt, as every event written
    /// before it existed does. See [`AccessEvent::attempts`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Present when the access was made under (or opened) emergency
    /// access: the grant's reason and expiry. Only in version 2 events
    /// ([`ACCESS_EVENT_VERSION_BREAK_GLASS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<BreakGlass>,
}

/// The break-glass grant an access was made under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlass {
    /// Why emergency access was opened, as the principal gave it (clipped).
    pub reason: String,
    /// When the grant was opened, unix nanoseconds.
    pub opened_ns: u64,
    /// When the grant expires, unix nanoseconds.
    pub expires_ns: u64,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl AccessEvent {
    /// The payload stored in the log: compact JSON in struct field order.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an access event always serializes")
    }

    /// Parses a payload written by [`AccessEvent::to_payload`]: version 1
    /// without a `break_glass` member, or version 2 with one.
    pub fn from_payload(bytes: &[u8]) -> Result<AccessEvent, serde_json::Error> {
        use serde::de::Error as _;
        let event: AccessEvent = serde_json::from_slice(bytes)?;
        match (event.v, event.break_glass.is_some()) {
            (ACCESS_EVENT_VERSION, false) | (ACCESS_EVENT_VERSION_BREAK_GLASS, true) => Ok(event),
            (ACCESS_EVENT_VERSION, true) => Err(serde_json::Error::custom(
                "a version 1 access event carries a break_glass member (only version 2 may)",
            )),
            (ACCESS_EVENT_VERSION_BREAK_GLASS, false) => Err(serde_json::Error::custom(
                "a version 2 access event lacks its break_glass member",
            )),
            (v, _) => Err(serde_json::Error::custom(format!(
                "unknown access event version {v} (this build reads 1 and 2)"
            ))),
        }
    }

    /// Marks the event as made under (or opening) the break-glass grant
    /// `grant`; it becomes a version 2 event.
    pub fn mark_break_glass(&mut self, grant: BreakGlass) {
        self.v = ACCESS_EVENT_VERSION_BREAK_GLASS;
        self.break_glass = Some(grant);
    }

    /// How many attempts this event stands for: `count`, or 1 when absent.
    pub fn attempts(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// True when the outcome is a success.
    pub fn succeeded(&self) -> bool {
        self.outcome == "success"
    }

    /// Sets `streams` to the distinct streams of `returned` (ascending,
    /// bounded by [`STREAMS_RETURNED_MAX`], `streams_truncated` when cut).
    /// The server calls it for global-log reads and subscription windows.
    pub fn set_streams_returned(&mut self, returned: impl IntoIterator<Item = u64>) {
        let distinct: std::collections::BTreeSet<u64> = returned.into_iter().collect();
        self.streams_truncated = distinct.len() > STREAMS_RETURNED_MAX;
        self.streams = Some(distinct.into_iter().take(STREAMS_RETURNED_MAX).collect());
    }

    /// True when the event says it returned events of `stream`: it names the
    /// stream, or lists it among the streams returned.
    pub fn names_stream(&self, stream: u64) -> bool {
        self.stream == Some(stream) || self.streams.as_ref().is_some_and(|s| s.contains(&stream))
    }
}

/// The trail event announcing one signing-key rotation (`line`: its pinned
/// `rotation` line) by the replica whose key name is `principal`: role
/// `system`, no stream, the line whole in `detail` (docs/format.md,
/// "Signing-key rotation", step 5).
pub fn signing_key_rotated_event(principal: &str, time_ns: u64, line: &str) -> AccessEvent {
    system_event(
        principal,
        time_ns,
        AccessAction::SigningKeyRotated,
        line.to_string(),
    )
}

/// A replica's own record of what it did to its keys (role `system`, no
/// stream, a successful outcome, `detail` saying what): the shape of the
/// `kek_rotated` and `signing_key_rotated` events.
pub fn system_event(
    principal: &str,
    time_ns: u64,
    action: AccessAction,
    detail: String,
) -> AccessEvent {
    AccessEvent {
        v: ACCESS_EVENT_VERSION,
        time_ns,
        principal: principal.to_string(),
        role: "system".to_string(),
        action,
        stream: None,
        from: None,
        to: None,
        purpose: None,
        outcome: "success".to_string(),
        remote: None,
        detail: Some(detail),
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    }
}

/// Cuts free text to [`ACCESS_TEXT_BYTES_MAX`] bytes on a char boundary.
pub fn clip_text(text: &str) -> String {
    if text.len() <= ACCESS_TEXT_BYTES_MAX {
        return text.to_string();
    }
    let mut end = ACCESS_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the payload round-trips and keeps a fixed field order.
    #[test]
    fn payload_round_trips_in_field_order() {
        let event = AccessEvent {
            v: ACCESS_EVENT_VERSION,
            time_ns: 5,
            principal: "dev".into(),
            role: "writer".into(),
            action: AccessAction::ReadStream,
            stream: Some(1001),
            from: Some(0),
            to: Some(3),
            purpose: Some("TREAT".into()),
            outcome: "success".into(),
            remote: Some("127.0.0.1:5".into()),
            detail: None,
            recipient: None,
            description: None,
            streams: None,
            streams_truncated: false,
            count: None,
            break_glass: None,
        };
        let payload = event.to_payload();
        let text = String::from_utf8(payload.clone()).expect("utf-8");
        assert!(
            text.starts_with("{\"v\":1,\"time_ns\":5,\"principal\":\"dev\""),
            "{text}"
        );
        assert_eq!(AccessEvent::from_payload(&payload).expect("parses"), event);
        assert!(AccessEvent::from_payload(b"{\"v\":1}").is_err());
    }

    // Goal: an event written before recipient, description and streams
    // existed still decodes, and re-encodes to the very same bytes (so its
    // committed payload still opens its leaf commitment).
    #[test]
    fn version_1_events_without_the_new_members_still_decode() {
        let old = br#"{"v":1,"time_ns":5,"principal":"dev","role":"reader","action":"read_log","from":0,"to":3,"outcome":"success"}"#;
        let event = AccessEvent::from_payload(old).expect("an old event decodes");
        assert_eq!(
            (&event.recipient, &event.description, &event.streams),
            (&None, &None, &None)
        );
        assert!(!event.streams_truncated);
        assert_eq!(event.to_payload(), old.to_vec());
    }

    // Goal: the new members round-trip after the old ones, and the streams
    // returned are distinct, ascending and bounded, with the cut marked.
    #[test]
    fn recipient_description_and_streams_round_trip_bounded() {
        let mut event = AccessEvent::from_payload(
            br#"{"v":1,"time_ns":5,"principal":"dev","role":"reader","action":"subscribe","from":0,"outcome":"success"}"#,
        )
        .expect("decodes");
        event.recipient = Some("Dr. Ada, County Hospital".into());
        event.description = Some("discharge summary".into());
        event.set_streams_returned([40, 17, 40, 16]);
        assert_eq!(event.streams, Some(vec![16, 17, 40]));
        assert!(!event.streams_truncated && event.names_stream(17) && !event.names_stream(18));
        let text = String::from_utf8(event.to_payload()).expect("utf-8");
        assert!(
            text.ends_with(r#""outcome":"success","recipient":"Dr. Ada, County Hospital","description":"discharge summary","streams":[16,17,40]}"#),
            "{text}"
        );
        assert_eq!(
            AccessEvent::from_payload(text.as_bytes()).expect("parses"),
            event
        );
        event.set_streams_returned(0..(STREAMS_RETURNED_MAX as u64 + 10));
        assert_eq!(
            event.streams.as_ref().map(Vec::len),
            Some(STREAMS_RETURNED_MAX)
        );
        assert!(event.streams_truncated);
        let text = String::from_utf8(event.to_payload()).expect("utf-8");
        assert!(text.ends_with(r#","streams_truncated":true}"#), "{text}");
    }

    // Goal: `count` is optional and last, so an event without it keeps its
    // bytes, and one with it round-trips and counts its attempts.
    #[test]
    fn count_is_optional_and_last() {
        let old = br#"{"v":1,"time_ns":5,"principal":"anonymous","role":"none","action":"auth_failed","outcome":"denied: 401 unknown bearer token"}"#;
        let mut event = AccessEvent::from_payload(old).expect("an old event decodes");
        assert_eq!((event.count, event.attempts()), (None, 1));
        assert_eq!(event.to_payload(), old.to_vec());
        event.count = Some(41);
        let text = String::from_utf8(event.to_payload()).expect("utf-8");
        assert!(text.ends_with(r#","count":41}"#), "{text}");
        let back = AccessEvent::from_payload(text.as_bytes()).expect("parses");
        assert_eq!((back.attempts(), back), (41, event));
    }

    // Goal: a break-glass event is version 2 with its member last, round-
    // trips, and a version/member mismatch or an unknown version is refused.
    #[test]
    fn break_glass_member_is_version_2_and_last() {
        let old = br#"{"v":1,"time_ns":5,"principal":"dev","role":"reader","action":"read_stream","stream":16,"outcome":"success"}"#;
        let mut event = AccessEvent::from_payload(old).expect("v1 decodes");
        assert_eq!(event.to_payload(), old.to_vec());
        event.mark_break_glass(BreakGlass {
            reason: "unconscious patient in the ED".into(),
            opened_ns: 3,
            expires_ns: 9,
        });
        let text = String::from_utf8(event.to_payload()).expect("utf-8");
        assert!(text.starts_with(r#"{"v":2,"#), "{text}");
        assert!(
            text.ends_with(r#","break_glass":{"reason":"unconscious patient in the ED","opened_ns":3,"expires_ns":9}}"#),
            "{text}"
        );
        assert_eq!(
            AccessEvent::from_payload(text.as_bytes()).expect("v2 decodes"),
            event
        );
        let v1_with_member = text.replacen(r#""v":2"#, r#""v":1"#, 1);
        let v2_without = String::from_utf8(old.to_vec())
            .expect("utf-8")
            .replacen(r#""v":1"#, r#""v":2"#, 1);
        let v3 = text.replacen(r#""v":2"#, r#""v":3"#, 1);
        for bad in [v1_with_member, v2_without, v3] {
            let error = AccessEvent::from_payload(bad.as_bytes()).expect_err(&bad);
            assert!(error.to_string().contains("version"), "{error}");
        }
    }

    // Goal: clipping keeps text under the bound on a char boundary.
    #[test]
    fn clip_text_respects_bound_and_chars() {
        let long = "é".repeat(ACCESS_TEXT_BYTES_MAX);
        let clipped = clip_text(&long);
        assert!(clipped.len() <= ACCESS_TEXT_BYTES_MAX);
        assert!(clipped.chars().all(|c| c == 'é'));
        assert_eq!(clip_text("short"), "short");
    }
}
