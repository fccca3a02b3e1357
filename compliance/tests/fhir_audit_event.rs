//! FHIR R4 AuditEvent export: every trail action kind, with and without its
//! optional parts, passes a structural validator written here from the R4
//! definition (hl7.org/fhir/R4/auditevent.html: elements, cardinalities,
//! required bindings, the `instant` regex, base64Binary, the sev-1
//! invariant, and JSON's no-null/no-empty rule); one resource is golden.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use proptest::prelude::*;
use serde_json::{Map, Value};
use vellum_compliance::fhir::{
    ACT_REASON_SYSTEM, BREAK_GLASS_CODE, BREAK_GLASS_DETAIL_TYPE, audit_event, rfc3339_utc,
    write_fhir_ndjson,
};
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent, BreakGlass};

const ALL_ACTIONS: [AccessAction; 12] = [
    AccessAction::Append,
    AccessAction::ReadStream,
    AccessAction::ReadLog,
    AccessAction::Subscribe,
    AccessAction::Proof,
    AccessAction::Consistency,
    AccessAction::Certificate,
    AccessAction::Export,
    AccessAction::Shred,
    AccessAction::Verify,
    AccessAction::AuthFailed,
    AccessAction::BreakGlass,
];

fn event(action: AccessAction) -> AccessEvent {
    AccessEvent {
        v: ACCESS_EVENT_VERSION,
        time_ns: 1_709_211_909_123_456_789,
        principal: "dr-lee".into(),
        role: "reader".into(),
        action,
        stream: Some(1001),
        from: Some(0),
        to: Some(3),
        purpose: Some("TREAT".into()),
        outcome: "success".into(),
        remote: Some("10.1.2.3:51234".into()),
        detail: None,
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    }
}

/// Each way an event can differ: bare, failed, free-text purpose, IPv6,
/// log range without a stream.
fn variants(action: AccessAction) -> Vec<AccessEvent> {
    let full = event(action);
    let bare = AccessEvent {
        stream: None,
        from: None,
        to: None,
        purpose: None,
        remote: None,
        detail: None,
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
        principal: "anonymous".into(),
        role: "none".into(),
        outcome: "refused: no credential".into(),
        ..full.clone()
    };
    let mut failed = full.clone();
    failed.outcome = "failed: disk full".into();
    failed.purpose = Some("audit of a complaint, see ticket 42".into());
    failed.remote = Some("[::1]:8443".into());
    let mut log = full.clone();
    log.stream = None;
    log.from = Some(100);
    log.to = None;
    log.remote = Some("edge-proxy".into());
    let mut glass = bare.clone();
    glass.mark_break_glass(grant());
    vec![full, bare, failed, log, glass]
}

fn grant() -> BreakGlass {
    BreakGlass {
        reason: "patient unconscious in the ED".into(),
        opened_ns: 1_709_211_909_000_000_000,
        expires_ns: 1_709_215_509_000_000_000,
    }
}

// ---------------------------------------------------- the R4 validator

const RESOURCE_ELEMENTS: [&str; 19] = [
    "resourceType",
    "id",
    "meta",
    "implicitRules",
    "language",
    "text",
    "contained",
    "extension",
    "modifierExtension",
    "type",
    "subtype",
    "action",
    "period",
    "recorded",
    "outcome",
    "outcomeDesc",
    "purposeOfEvent",
    "agent",
    "source",
    // `entity` is checked below too; listed here as an allowed element.
];
const AGENT_ELEMENTS: [&str; 14] = [
    "id",
    "extension",
    "modifierExtension",
    "type",
    "role",
    "who",
    "altId",
    "name",
    "requestor",
    "location",
    "policy",
    "media",
    "network",
    "purposeOfUse",
];
const SOURCE_ELEMENTS: [&str; 6] = [
    "id",
    "extension",
    "modifierExtension",
    "site",
    "observer",
    "type",
];
const ENTITY_ELEMENTS: [&str; 12] = [
    "id",
    "extension",
    "modifierExtension",
    "what",
    "type",
    "role",
    "lifecycle",
    "securityLabel",
    "name",
    "description",
    "query",
    "detail",
];
const CODING_ELEMENTS: [&str; 5] = ["system", "version", "code", "display", "userSelected"];
const REFERENCE_ELEMENTS: [&str; 4] = ["reference", "type", "identifier", "display"];
const IDENTIFIER_ELEMENTS: [&str; 6] = ["use", "type", "system", "value", "period", "assigner"];

type Errors = Vec<String>;

fn object<'a>(
    value: &'a Value,
    path: &str,
    allowed: &[&str],
    errors: &mut Errors,
) -> &'a Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    let Some(map) = value.as_object() else {
        errors.push(format!("{path}: not an object"));
        return EMPTY.get_or_init(Map::new);
    };
    if map.is_empty() {
        errors.push(format!("{path}: empty object"));
    }
    for key in map.keys() {
        if !allowed.contains(&key.as_str()) {
            errors.push(format!("{path}.{key}: not an element of this type"));
        }
    }
    map
}

/// A 0..* or 1..* element: a non-empty JSON array.
fn array<'a>(value: &'a Value, path: &str, errors: &mut Errors) -> &'a [Value] {
    match value.as_array() {
        Some(items) if !items.is_empty() => items,
        Some(_) => {
            errors.push(format!("{path}: empty array (FHIR JSON forbids it)"));
            &[]
        }
        None => {
            errors.push(format!("{path}: not an array"));
            &[]
        }
    }
}

fn string(value: &Value, path: &str, errors: &mut Errors) -> String {
    match value.as_str() {
        Some(s) if !s.is_empty() && s.trim() == s => s.to_string(),
        _ => {
            errors.push(format!("{path}: not a non-empty trimmed string"));
            String::new()
        }
    }
}

fn coding(value: &Value, path: &str, errors: &mut Errors) {
    let map = object(value, path, &CODING_ELEMENTS, errors);
    for (key, item) in map {
        if key == "userSelected" {
            if !item.is_boolean() {
                errors.push(format!("{path}.userSelected: not a boolean"));
            }
        } else {
            string(item, &format!("{path}.{key}"), errors);
        }
    }
    if !map.contains_key("code") {
        errors.push(format!("{path}: coding without code"));
    }
}

fn codeable_concept(value: &Value, path: &str, errors: &mut Errors) {
    let map = object(value, path, &["coding", "text"], errors);
    if let Some(codings) = map.get("coding") {
        for (i, c) in array(codings, &format!("{path}.coding"), errors)
            .iter()
            .enumerate()
        {
            coding(c, &format!("{path}.coding[{i}]"), errors);
        }
    }
    if let Some(text) = map.get("text") {
        string(text, &format!("{path}.text"), errors);
    }
}

fn reference(value: &Value, path: &str, errors: &mut Errors) {
    let map = object(value, path, &REFERENCE_ELEMENTS, errors);
    if let Some(identifier) = map.get("identifier") {
        let id = object(
            identifier,
            &format!("{path}.identifier"),
            &IDENTIFIER_ELEMENTS,
            errors,
        );
        match id.get("value") {
            Some(v) => drop(string(v, &format!("{path}.identifier.value"), errors)),
            None => errors.push(format!("{path}.identifier: no value")),
        }
    }
    for key in ["reference", "type", "display"] {
        if let Some(v) = map.get(key) {
            string(v, &format!("{path}.{key}"), errors);
        }
    }
}

/// Digits of `s` in `range`, parsed.
fn number_at(s: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let part = s.get(range)?;
    part.bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| part.parse().ok())?
}

/// The R4 `instant` regex, by hand: YYYY-MM-DDThh:mm:ss(.f+)?(Z|±hh:mm),
/// year 0001-9999, month 01-12, day 01-31, hour 00-23, minute 00-59,
/// second 00-60, offset up to 14:00.
fn is_instant(s: &str) -> bool {
    let b = s.as_bytes();
    let fixed = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':';
    if !fixed {
        return false;
    }
    let in_range = |r: std::ops::Range<usize>, lo: u32, hi: u32| {
        number_at(s, r).is_some_and(|n| (lo..=hi).contains(&n))
    };
    let date_time = in_range(0..4, 1, 9999)
        && in_range(5..7, 1, 12)
        && in_range(8..10, 1, 31)
        && in_range(11..13, 0, 23)
        && in_range(14..16, 0, 59)
        && in_range(17..19, 0, 60);
    let mut rest = &s[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return false;
        }
        rest = &fraction[digits..];
    }
    let zone = rest == "Z"
        || (rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":"
            && (in_range(s.len() - 5..s.len() - 3, 0, 13)
                && in_range(s.len() - 2..s.len(), 0, 59)
                || &rest[1..] == "14:00"));
    date_time && zone
}

fn validate_agent(agent: &Value, path: &str, errors: &mut Errors) {
    let map = object(agent, path, &AGENT_ELEMENTS, errors);
    match map.get("requestor") {
        Some(Value::Bool(_)) => {}
        _ => errors.push(format!("{path}.requestor: required boolean missing")),
    }
    if let Some(t) = map.get("type") {
        codeable_concept(t, &format!("{path}.type"), errors);
    }
    for key in ["role", "purposeOfUse"] {
        if let Some(list) = map.get(key) {
            for (i, c) in array(list, &format!("{path}.{key}"), errors)
                .iter()
                .enumerate()
            {
                codeable_concept(c, &format!("{path}.{key}[{i}]"), errors);
            }
        }
    }
    if let Some(who) = map.get("who") {
        reference(who, &format!("{path}.who"), errors);
    }
    if let Some(network) = map.get("network") {
        let net = object(
            network,
            &format!("{path}.network"),
            &["address", "type"],
            errors,
        );
        if let Some(a) = net.get("address") {
            string(a, &format!("{path}.network.address"), errors);
        }
        let kind = net.get("type").and_then(Value::as_str).unwrap_or("");
        if !["1", "2", "3", "4", "5"].contains(&kind) {
            errors.push(format!(
                "{path}.network.type: {kind:?} not in network-type 1..5"
            ));
        }
    }
}

fn validate_entity(entity: &Value, path: &str, errors: &mut Errors) {
    let map = object(entity, path, &ENTITY_ELEMENTS, errors);
    if map.contains_key("name") && map.contains_key("query") {
        errors.push(format!("{path}: sev-1 violated (both name and query)"));
    }
    if let Some(what) = map.get("what") {
        reference(what, &format!("{path}.what"), errors);
    }
    for key in ["type", "role"] {
        if let Some(c) = map.get(key) {
            coding(c, &format!("{path}.{key}"), errors);
        }
    }
    if let Some(query) = map.get("query") {
        let text = string(query, &format!("{path}.query"), errors);
        match BASE64.decode(&text).map(String::from_utf8) {
            Ok(Ok(decoded)) => {
                let well_formed = decoded.split('&').all(|part| {
                    part.split_once('=').is_some_and(|(k, v)| {
                        ["stream", "from", "to"].contains(&k) && v.parse::<u64>().is_ok()
                    })
                });
                if !well_formed {
                    errors.push(format!("{path}.query: decodes to {decoded:?}"));
                }
            }
            _ => errors.push(format!("{path}.query: not base64Binary of UTF-8")),
        }
    }
    if let Some(details) = map.get("detail") {
        for (i, d) in array(details, &format!("{path}.detail"), errors)
            .iter()
            .enumerate()
        {
            let p = format!("{path}.detail[{i}]");
            let detail = object(d, &p, &["type", "valueString", "valueBase64Binary"], errors);
            match detail.get("type") {
                Some(t) => drop(string(t, &format!("{p}.type"), errors)),
                None => errors.push(format!("{p}.type: required")),
            }
            let values = ["valueString", "valueBase64Binary"]
                .iter()
                .filter(|k| detail.contains_key(**k))
                .count();
            if values != 1 {
                errors.push(format!("{p}: value[x] is 1..1, found {values}"));
            }
        }
    }
}

/// Every violation of the R4 AuditEvent definition found in `resource`.
fn validate(resource: &Value) -> Errors {
    let mut errors = Vec::new();
    let e = &mut errors;
    let mut allowed = RESOURCE_ELEMENTS.to_vec();
    allowed.push("entity");
    let map = object(resource, "AuditEvent", &allowed, e);
    if map.get("resourceType") != Some(&Value::from("AuditEvent")) {
        e.push("resourceType: not AuditEvent".into());
    }
    if let Some(id) = map.get("id").and_then(Value::as_str) {
        let ok = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            e.push(format!("id: {id:?} is not an R4 id"));
        }
    }
    match map.get("type") {
        Some(t) => coding(t, "type", e),
        None => e.push("type: required (1..1)".into()),
    }
    if let Some(subtypes) = map.get("subtype") {
        for (i, s) in array(subtypes, "subtype", e).iter().enumerate() {
            coding(s, &format!("subtype[{i}]"), e);
        }
    }
    let action = map.get("action").and_then(Value::as_str).unwrap_or("");
    if map.contains_key("action") && !["C", "R", "U", "D", "E"].contains(&action) {
        e.push(format!("action: {action:?} not in audit-event-action"));
    }
    match map.get("recorded").and_then(Value::as_str) {
        Some(r) if is_instant(r) => {}
        other => e.push(format!("recorded: required instant, found {other:?}")),
    }
    let outcome = map.get("outcome").and_then(Value::as_str).unwrap_or("0");
    if !["0", "4", "8", "12"].contains(&outcome) {
        e.push(format!("outcome: {outcome:?} not in audit-event-outcome"));
    }
    if let Some(d) = map.get("outcomeDesc") {
        string(d, "outcomeDesc", e);
    }
    let agents = map
        .get("agent")
        .map(|a| array(a, "agent", e))
        .unwrap_or_default();
    if agents.is_empty() {
        e.push("agent: required (1..*)".into());
    }
    for (i, agent) in agents.iter().enumerate() {
        validate_agent(agent, &format!("agent[{i}]"), e);
    }
    match map.get("source") {
        Some(source) => {
            let s = object(source, "source", &SOURCE_ELEMENTS, e);
            match s.get("observer") {
                Some(o) => reference(o, "source.observer", e),
                None => e.push("source.observer: required (1..1)".into()),
            }
            if let Some(types) = s.get("type") {
                for (i, t) in array(types, "source.type", e).iter().enumerate() {
                    coding(t, &format!("source.type[{i}]"), e);
                }
            }
        }
        None => e.push("source: required (1..1)".into()),
    }
    if let Some(entities) = map.get("entity") {
        for (i, entity) in array(entities, "entity", e).iter().enumerate() {
            validate_entity(entity, &format!("entity[{i}]"), e);
        }
    }
    errors
}

// ------------------------------------------------------------- the tests

// Goal: every action kind, in every variant, yields a valid R4 AuditEvent.
#[test]
fn every_action_is_a_valid_r4_audit_event() {
    for action in ALL_ACTIONS {
        for (i, event) in variants(action).iter().enumerate() {
            let resource = audit_event(event, "vellum-replica-0", (i % 2 == 0).then_some(42));
            let errors = validate(&resource);
            assert!(
                errors.is_empty(),
                "{action:?} variant {i}: {errors:?}\n{resource:#}"
            );
        }
    }
}

/// One way to break a resource.
type Breakage = fn(&mut Value);

// Goal: the validator bites — broken resources are rejected.
#[test]
fn validator_rejects_broken_resources() {
    let good = audit_event(&event(AccessAction::ReadStream), "r0", Some(1));
    let breakages: [(&str, Breakage); 7] = [
        ("no agent", |r| {
            drop(r.as_object_mut().map(|m| m.remove("agent")))
        }),
        ("no requestor", |r| {
            drop(r["agent"][0].as_object_mut().map(|m| m.remove("requestor")))
        }),
        ("no observer", |r| {
            drop(r["source"].as_object_mut().map(|m| m.remove("observer")))
        }),
        ("bad action", |r| r["action"] = "X".into()),
        ("bad instant", |r| {
            r["recorded"] = "2024-02-30 10:00:00".into()
        }),
        ("bad query", |r| {
            r["entity"][0]["query"] = "not base64!".into()
        }),
        ("bad outcome", |r| r["outcome"] = "1".into()),
    ];
    assert!(validate(&good).is_empty(), "{:?}", validate(&good));
    for (name, breakage) in breakages {
        let mut broken = good.clone();
        breakage(&mut broken);
        assert!(!validate(&broken).is_empty(), "{name} was not caught");
    }
}

// Goal: the mapping of actions, outcomes, purposes and addresses is the
// documented one.
#[test]
fn mapping_follows_the_documented_table() {
    let expect = [
        (AccessAction::Append, "110110", "create", "C"),
        (AccessAction::ReadStream, "110110", "search-type", "R"),
        (AccessAction::ReadLog, "rest", "history-system", "R"),
        (AccessAction::Proof, "rest", "read", "R"),
        (AccessAction::Export, "110110", "operation", "R"),
        (AccessAction::Shred, "110110", "delete", "D"),
        (AccessAction::Verify, "rest", "operation", "E"),
        (AccessAction::AuthFailed, "110114", "110122", "E"),
    ];
    for (action, type_code, subtype, code) in expect {
        let r = audit_event(&event(action), "r0", None);
        assert_eq!(r["type"]["code"], type_code, "{action:?}");
        assert_eq!(r["subtype"][0]["code"], subtype, "{action:?}");
        assert_eq!(r["action"], code, "{action:?}");
    }
    let variants = variants(AccessAction::ReadStream);
    let full = audit_event(&variants[0], "r0", None);
    assert_eq!(full["agent"][0]["network"]["address"], "10.1.2.3");
    assert_eq!(full["agent"][0]["network"]["type"], "2");
    assert_eq!(
        full["agent"][0]["purposeOfUse"][0]["coding"][0]["code"],
        "TREAT"
    );
    assert_eq!(
        BASE64
            .decode(full["entity"][0]["query"].as_str().expect("query"))
            .expect("b64"),
        b"stream=1001&from=0&to=3"
    );
    let bare = audit_event(&variants[1], "r0", None);
    assert_eq!(bare["outcome"], "4");
    assert!(bare.get("entity").is_none());
    let failed = audit_event(&variants[2], "r0", None);
    assert_eq!(failed["outcome"], "8");
    assert_eq!(failed["agent"][0]["network"]["address"], "::1");
    assert!(failed["agent"][0]["purposeOfUse"][0]["text"].is_string());
    let log = audit_event(&variants[3], "r0", None);
    assert_eq!(log["entity"][0]["what"]["identifier"]["value"], "log");
    assert_eq!(log["agent"][0]["network"]["type"], "1");
}

// Goal: an event opened or made under break-glass carries the v3-ActReason
// BTG purpose (beside its own) and a detail with the reason and expiry;
// an event without a grant carries neither.
#[test]
fn break_glass_is_marked() {
    let plain = audit_event(&event(AccessAction::ReadStream), "r0", Some(9));
    assert!(!plain.to_string().contains(BREAK_GLASS_CODE));
    assert!(!plain.to_string().contains(BREAK_GLASS_DETAIL_TYPE));
    for action in [AccessAction::ReadStream, AccessAction::BreakGlass] {
        let mut marked = event(action);
        marked.mark_break_glass(grant());
        let r = audit_event(&marked, "r0", Some(9));
        assert!(validate(&r).is_empty(), "{:?}", validate(&r));
        let purposes = r["agent"][0]["purposeOfUse"].as_array().expect("purposes");
        assert_eq!(purposes[0]["coding"][0]["code"], "TREAT");
        assert_eq!(purposes[1]["coding"][0]["system"], ACT_REASON_SYSTEM);
        assert_eq!(purposes[1]["coding"][0]["code"], BREAK_GLASS_CODE);
        let details = r["entity"][0]["detail"].as_array().expect("details");
        let glass = details
            .iter()
            .find(|d| d["type"] == BREAK_GLASS_DETAIL_TYPE)
            .expect("break-glass detail");
        assert_eq!(
            glass["valueString"],
            "reason=patient unconscious in the ED opened=2024-02-29T13:05:09.000000000Z \
             expires=2024-02-29T14:05:09.000000000Z"
        );
    }
    let opened = audit_event(&event(AccessAction::BreakGlass), "r0", None);
    assert_eq!(
        (
            &opened["type"]["code"],
            &opened["subtype"][0]["code"],
            &opened["action"]
        ),
        (&"110110".into(), &"operation".into(), &"E".into())
    );
}

// Goal: the NDJSON file holds one valid resource per line and refuses to
// overwrite.
#[test]
fn ndjson_file_has_one_valid_resource_per_line() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("audit.ndjson");
    let events: Vec<(AccessEvent, Option<u64>)> = ALL_ACTIONS
        .iter()
        .enumerate()
        .map(|(i, a)| (event(*a), Some(i as u64)))
        .collect();
    assert_eq!(
        write_fhir_ndjson(&path, &events, "vellum-replica-0").expect("write"),
        ALL_ACTIONS.len()
    );
    let text = std::fs::read_to_string(&path).expect("read");
    assert_eq!(text.lines().count(), ALL_ACTIONS.len());
    for line in text.lines() {
        let resource: Value = serde_json::from_str(line).expect("json line");
        assert!(validate(&resource).is_empty(), "{resource}");
    }
    assert!(
        write_fhir_ndjson(&path, &events, "r0").is_err(),
        "must not overwrite"
    );
}

// Goal: one resource is byte-for-byte stable (golden file).
#[test]
fn audit_event_matches_golden_file() {
    let resource = audit_event(
        &event(AccessAction::ReadStream),
        "vellum-replica-0",
        Some(42),
    );
    let actual = serde_json::to_string_pretty(&resource).expect("json") + "\n";
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/fhir_audit_event.json");
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with VELLUM_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "fhir_audit_event.json differs");
}

/// Days from 1970-01-01 to a civil date, counted naively year by year and
/// month by month: the oracle for the fast conversion.
fn naive_days(year: u64, month: u64, day: u64) -> u64 {
    let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
    let mut days = (1970..year)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<u64>();
    let lengths = [
        31,
        if leap(year) { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    days += lengths[..(month - 1) as usize].iter().sum::<u64>();
    days + day - 1
}

proptest! {
    // Goal: any time yields a valid instant that reads back to the same nanoseconds.
    #[test]
    fn recorded_is_a_valid_instant_that_round_trips(ns in any::<u64>()) {
        let text = rfc3339_utc(ns);
        prop_assert!(is_instant(&text), "{text}");
        let field = |r: std::ops::Range<usize>| u64::from(number_at(&text, r).expect("digits"));
        let days = naive_days(field(0..4), field(5..7), field(8..10));
        let seconds = days * 86_400 + field(11..13) * 3600 + field(14..16) * 60 + field(17..19);
        let nanos: u64 = text[20..29].parse().expect("nanos");
        prop_assert_eq!(u128::from(seconds) * 1_000_000_000 + u128::from(nanos), u128::from(ns));
    }
}
