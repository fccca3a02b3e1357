//! The access trail as FHIR R4 `AuditEvent` resources
//! (hl7.org/fhir/R4/auditevent.html), one per trail event, written as
//! NDJSON (FHIR bulk data's format), so a hospital's SIEM or FHIR server can
//! take Vellum's access trail (P7) without a custom parser.
//!
//! Mapping (the trail's action → AuditEvent `type`, `subtype`, `action`):
//!
//! ```text
//! append       DCM 110110 Patient Record  restful-interaction create        C
//! read_stream  DCM 110110 Patient Record  restful-interaction search-type   R
//! export       DCM 110110 Patient Record  restful-interaction operation     R
//! shred        DCM 110110 Patient Record  restful-interaction delete        D
//! legal_hold, legal_hold_release, retention
//!              DCM 110110 Patient Record  restful-interaction operation     U
//! read_log     audit-event-type rest      restful-interaction history-system R
//! subscribe    audit-event-type rest      restful-interaction history-system R
//! proof, consistency, certificate
//!              audit-event-type rest      restful-interaction read          R
//! verify       audit-event-type rest      restful-interaction operation     E
//! auth_failed  DCM 110114 User Authentication  DCM 110122 Login            E
//! kek_rotated  DCM 110113 Security Alert       DCM 110129 Security Configuration  E
//! signing_key_rotated  (as kek_rotated)
//! break_glass  DCM 110110 Patient Record  restful-interaction operation     E
//! ```
//!
//! Break-glass: an event that opened emergency access, or was made under
//! it (it carries a `break_glass` member), has the v3-ActReason code `BTG`
//! ("break the glass") among its agent's `purposeOfUse`, and an entity
//! detail `vellum-break-glass` holding the reason and the grant's expiry.
//!
//! Outcome: "success" → `0`; "refused…" / "denied…" (the caller's fault,
//! like an HTTP 4xx) → `4`; anything else ("failed: …") → `8`. The trail's
//! own outcome text goes to `outcomeDesc`.
//!
//! `recorded` is an RFC 3339 UTC instant with nanoseconds, computed here by
//! hand from unix nanoseconds (days-to-civil-date), so this crate needs no
//! date library.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::tabular::ExportError;
use crate::trail::{AccessAction, AccessEvent};

/// Code system of DICOM audit event ids (DCM).
pub const DICOM_SYSTEM: &str = "http://dicom.nema.org/resources/ontology/DCM";
/// Code system of FHIR's own audit event types ("rest").
pub const AUDIT_EVENT_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
/// Code system of RESTful interactions (the subtype).
pub const RESTFUL_INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
/// Code system of purposes of use.
pub const ACT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// Code system of agent types.
pub const SECURITY_ROLE_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
/// Code system of audit source types.
pub const SECURITY_SOURCE_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/security-source-type";
/// Code system of audit entity types.
pub const AUDIT_ENTITY_TYPE_SYSTEM: &str =
    "http://terminology.hl7.org/CodeSystem/audit-entity-type";
/// The `entity.detail.type` naming the trail event's own global position.
pub const POSITION_DETAIL_TYPE: &str = "vellum-trail-position";
/// The v3-ActReason code of emergency access ("break the glass").
pub const BREAK_GLASS_CODE: &str = "BTG";
/// The `entity.detail.type` holding a break-glass grant's reason and expiry.
pub const BREAK_GLASS_DETAIL_TYPE: &str = "vellum-break-glass";
/// Longest purpose treated as a v3-ActReason code rather than free text.
pub const PURPOSE_CODE_BYTES_MAX: usize = 32;

/// The AuditEvent's `type`, `subtype` and `action` for a trail action.
struct Coding {
    type_system: &'static str,
    type_code: &'static str,
    type_display: &'static str,
    subtype_system: &'static str,
    subtype_code: &'static str,
    /// `None`: the restful-interaction display, the code with spaces.
    subtype_display: Option<&'static str>,
    action: &'static str,
}

const fn patient_record(subtype: &'static str, action: &'static str) -> Coding {
    Coding {
        type_system: DICOM_SYSTEM,
        type_code: "110110",
        type_display: "Patient Record",
        subtype_system: RESTFUL_INTERACTION_SYSTEM,
        subtype_code: subtype,
        subtype_display: None,
        action,
    }
}

const fn rest(subtype: &'static str, action: &'static str) -> Coding {
    Coding {
        type_system: AUDIT_EVENT_TYPE_SYSTEM,
        type_code: "rest",
        type_display: "RESTful Operation",
        subtype_system: RESTFUL_INTERACTION_SYSTEM,
        subtype_code: subtype,
        subtype_display: None,
        action,
    }
}

fn coding_of(action: AccessAction) -> Coding {
    match action {
        AccessAction::Append => patient_record("create", "C"),
        AccessAction::ReadStream => patient_record("search-type", "R"),
        AccessAction::Export => patient_record("operation", "R"),
        AccessAction::Shred => patient_record("delete", "D"),
        AccessAction::LegalHold | AccessAction::LegalHoldRelease | AccessAction::Retention => {
            patient_record("operation", "U")
        }
        AccessAction::ReadLog | AccessAction::Subscribe => rest("history-system", "R"),
        AccessAction::Proof | AccessAction::Consistency | AccessAction::Certificate => {
            rest("read", "R")
        }
        AccessAction::Verify | AccessAction::ExportTrail | AccessAction::ConsumerGroup => {
            rest("operation", "E")
        }
        AccessAction::BreakGlass => patient_record("operation", "E"),
        // DICOM CID 403 "Security Alert Type": a key-encryption key
        // or a replica signing key changed is a change of the security
        // configuration.
        AccessAction::KekRotated | AccessAction::SigningKeyRotated => Coding {
            type_system: DICOM_SYSTEM,
            type_code: "110113",
            type_display: "Security Alert",
            subtype_system: DICOM_SYSTEM,
            subtype_code: "110129",
            subtype_display: Some("Security Configuration"),
            action: "E",
        },
        AccessAction::AuthFailed => Coding {
            type_system: DICOM_SYSTEM,
            type_code: "110114",
            type_display: "User Authentication",
            subtype_system: DICOM_SYSTEM,
            subtype_code: "110122",
            subtype_display: Some("Login"),
            action: "E",
        },
    }
}

/// The AuditEvent outcome code of a trail outcome text.
pub fn outcome_code(outcome: &str) -> &'static str {
    if outcome == "success" {
        "0"
    } else if outcome.starts_with("refused") || outcome.starts_with("denied") {
        "4"
    } else {
        "8"
    }
}

/// The query text of an event's range: `stream=..&from=..&to=..`, with only
/// the parts the event has; `None` when it has none.
pub fn query_text(event: &AccessEvent) -> Option<String> {
    let parts: Vec<String> = [
        ("stream", event.stream),
        ("from", event.from),
        ("to", event.to),
    ]
    .iter()
    .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
    .collect();
    (!parts.is_empty()).then(|| parts.join("&"))
}

/// One FHIR R4 AuditEvent resource for `event`, observed by `source` (the
/// replica's name); `position` is the trail event's own global position,
/// when known, kept in `id` and an entity detail so an auditor can fetch
/// its inclusion proof.
pub fn audit_event(event: &AccessEvent, source: &str, position: Option<u64>) -> Value {
    let coding = coding_of(event.action);
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "type": {
            "system": coding.type_system,
            "code": coding.type_code,
            "display": coding.type_display,
        },
        "subtype": [{
            "system": coding.subtype_system,
            "code": coding.subtype_code,
            "display": coding
                .subtype_display
                .map_or_else(|| coding.subtype_code.replace('-', " "), str::to_string),
        }],
        "action": coding.action,
        "recorded": rfc3339_utc(event.time_ns),
        "outcome": outcome_code(&event.outcome),
        "outcomeDesc": event.outcome,
        "agent": [agent(event)],
        "source": {
            "observer": { "display": source },
            "type": [{
                "system": SECURITY_SOURCE_TYPE_SYSTEM,
                "code": "4",
                "display": "Application Server",
            }],
        },
    });
    if let Some(position) = position {
        resource["id"] = json!(format!("vellum-trail-{position}"));
    }
    if let Some(entity) = entity(event, position) {
        resource["entity"] = json!([entity]);
    }
    resource
}

fn agent(event: &AccessEvent) -> Value {
    let agent_type = if event.role == "system" {
        ("dataprocessor", "data processor")
    } else {
        ("humanuser", "human user")
    };
    let mut agent = json!({
        "type": { "coding": [{
            "system": SECURITY_ROLE_TYPE_SYSTEM,
            "code": agent_type.0,
            "display": agent_type.1,
        }]},
        "role": [{ "text": event.role }],
        "who": { "identifier": { "value": event.principal } },
        "requestor": true,
    });
    if let Some(remote) = &event.remote {
        // A socket address is kept as its IP (type 2); anything else is a
        // machine name (type 1), so the type never lies about the address.
        let (address, kind) = match (remote.parse::<SocketAddr>(), remote.parse::<IpAddr>()) {
            (Ok(socket), _) => (socket.ip().to_string(), "2"),
            (_, Ok(ip)) => (ip.to_string(), "2"),
            _ => (remote.clone(), "1"),
        };
        agent["network"] = json!({ "address": address, "type": kind });
    }
    let mut purposes: Vec<Value> = event.purpose.iter().map(|p| purpose_concept(p)).collect();
    if event.break_glass.is_some() {
        purposes.push(json!({ "coding": [{
            "system": ACT_REASON_SYSTEM,
            "code": BREAK_GLASS_CODE,
            "display": "break the glass",
        }]}));
    }
    if !purposes.is_empty() {
        agent["purposeOfUse"] = json!(purposes);
    }
    agent
}

/// A purpose that looks like a v3-ActReason code ("TREAT", "HPAYMT") is
/// coded; free text stays text, since inventing a code would misstate it.
fn purpose_concept(purpose: &str) -> Value {
    let is_code = !purpose.is_empty()
        && purpose.len() <= PURPOSE_CODE_BYTES_MAX
        && purpose
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if is_code {
        json!({ "coding": [{ "system": ACT_REASON_SYSTEM, "code": purpose }] })
    } else {
        json!({ "text": purpose })
    }
}

fn entity(event: &AccessEvent, position: Option<u64>) -> Option<Value> {
    let query = query_text(event);
    if query.is_none() && position.is_none() && event.break_glass.is_none() {
        return None;
    }
    let what = match event.stream {
        Some(stream) => format!("stream/{stream}"),
        None => "log".to_string(),
    };
    let mut entity = json!({
        "what": { "identifier": { "value": what } },
        "type": {
            "system": AUDIT_ENTITY_TYPE_SYSTEM,
            "code": "2",
            "display": "System Object",
        },
    });
    if let Some(query) = query {
        entity["query"] = json!(BASE64.encode(query));
    }
    let mut details = Vec::new();
    if let Some(position) = position {
        details.push(json!({
            "type": POSITION_DETAIL_TYPE,
            "valueString": position.to_string(),
        }));
    }
    if let Some(detail) = &event.detail {
        details.push(json!({ "type": "vellum-detail", "valueString": detail }));
    }
    if let Some(grant) = &event.break_glass {
        details.push(json!({
            "type": BREAK_GLASS_DETAIL_TYPE,
            "valueString": format!(
                "reason={} opened={} expires={}",
                grant.reason,
                rfc3339_utc(grant.opened_ns),
                rfc3339_utc(grant.expires_ns)
            ),
        }));
    }
    if !details.is_empty() {
        entity["detail"] = json!(details);
    }
    Some(entity)
}

/// Writes one AuditEvent per line to a new file at `path` (refusing an
/// existing one), fsynced with its directory. Returns the resources written.
pub fn write_fhir_ndjson(
    path: &Path,
    events: &[(AccessEvent, Option<u64>)],
    source: &str,
) -> Result<usize, ExportError> {
    crate::tabular::write_fhir(path, events, source)
}

/// Writes the AuditEvent of `event` as one line (with its `\n`) to `out`.
pub fn write_fhir_line(
    out: &mut dyn std::io::Write,
    event: &AccessEvent,
    source: &str,
    position: Option<u64>,
) -> std::io::Result<()> {
    let line = serde_json::to_string(&audit_event(event, source, position))
        .expect("a json value always serializes");
    out.write_all(line.as_bytes())?;
    out.write_all(b"\n")
}

/// Unix nanoseconds as an RFC 3339 UTC instant with nine fraction digits,
/// e.g. `2024-02-29T13:05:09.000000042Z`.
pub fn rfc3339_utc(time_ns: u64) -> String {
    let seconds = time_ns / 1_000_000_000;
    let nanos = time_ns % 1_000_000_000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = vellum_audit::report::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the hand-written date conversion matches known instants,
    // including leap days, century rules and the end of u64 nanoseconds.
    #[test]
    fn rfc3339_matches_known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400_000_000_000, "2000-02-29T00:00:00.000000000Z"),
            (1_709_211_909_000_000_042, "2024-02-29T13:05:09.000000042Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999999Z"),
            (4_107_542_400_000_000_000, "2100-03-01T00:00:00.000000000Z"),
            (u64::MAX, "2554-07-21T23:34:33.709551615Z"),
        ];
        for (ns, expected) in cases {
            assert_eq!(rfc3339_utc(ns), expected, "{ns}");
        }
    }

    // Goal: outcome texts map to the AuditEvent outcome codes.
    #[test]
    fn outcome_codes_follow_the_trail_text() {
        assert_eq!(outcome_code("success"), "0");
        assert_eq!(outcome_code("refused: bad range"), "4");
        assert_eq!(outcome_code("denied"), "4");
        assert_eq!(outcome_code("failed: disk"), "8");
    }

    // Goal: a KEK rotation's trail event becomes a DICOM Security Alert /
    // Security Configuration AuditEvent naming the replica as its agent,
    // a data processor (role `system`).
    #[test]
    fn a_kek_rotation_is_a_security_configuration_alert() {
        let event: AccessEvent = serde_json::from_str(
            r#"{"v":1,"time_ns":5,"principal":"vellum-0123-r1","role":"system","action":"kek_rotated","outcome":"success","detail":"kek rotated: old aa -> new bb (file key-encryption key)"}"#,
        )
        .expect("a kek_rotated event parses");
        let resource = audit_event(&event, "vellum-0123-r0", Some(9));
        assert_eq!(resource["type"]["code"], "110113");
        assert_eq!(resource["type"]["display"], "Security Alert");
        assert_eq!(resource["subtype"][0]["code"], "110129");
        assert_eq!(resource["subtype"][0]["display"], "Security Configuration");
        assert_eq!(resource["action"], "E");
        assert_eq!(resource["outcome"], "0");
        assert_eq!(
            resource["agent"][0]["who"]["identifier"]["value"],
            "vellum-0123-r1"
        );
        assert_eq!(
            resource["agent"][0]["type"]["coding"][0]["code"],
            "dataprocessor"
        );
    }
}
