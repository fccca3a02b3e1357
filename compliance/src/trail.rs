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
pub const ACCESS_TRAIL_STREAM: u64 = 1;
/// Version of the trail event format.
pub const ACCESS_EVENT_VERSION: u32 = 1;
/// Longest free text (purpose, detail) kept in a trail event, in bytes.
pub const ACCESS_TEXT_BYTES_MAX: usize = 512;

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
    /// A verification run.
    Verify,
    /// A request refused for a missing or unknown credential.
    AuthFailed,
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
            AccessAction::Verify => "verify",
            AccessAction::AuthFailed => "auth_failed",
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
}

impl AccessEvent {
    /// The payload stored in the log: compact JSON in struct field order.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an access event always serializes")
    }

    /// Parses a payload written by [`AccessEvent::to_payload`].
    pub fn from_payload(bytes: &[u8]) -> Result<AccessEvent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// True when the outcome is a success.
    pub fn succeeded(&self) -> bool {
        self.outcome == "success"
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
