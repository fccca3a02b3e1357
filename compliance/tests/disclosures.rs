//! HIPAA accounting of disclosures from the access trail: exactly the
//! successful disclosing accesses of one stream in the period (log reads
//! when they list the stream among the streams returned or cover its
//! positions), with date, recipient, description and purpose, as CSV and
//! JSON; exempt purposes marked with their rule, internal and empty reads
//! left out, and what cannot be attributed said plainly.

use vellum_compliance::disclosures::{
    Attribution, DISCLOSURE_COLUMNS, RULE_INDIVIDUAL, RULE_TPO, account, disclosures_csv,
    disclosures_json, exempt_rule, write_disclosures_csv, write_disclosures_json,
};
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent, BreakGlass};

const STREAM: u64 = 1001;
const SECOND: u64 = 1_000_000_000;
const T0: u64 = 1_709_211_909 * SECOND;

fn access(n: u64, action: AccessAction, stream: Option<u64>, outcome: &str) -> AccessEvent {
    AccessEvent {
        v: ACCESS_EVENT_VERSION,
        time_ns: T0 + n * SECOND,
        principal: format!("user-{n}"),
        role: "reader".into(),
        action,
        stream,
        from: Some(0),
        to: Some(5),
        purpose: Some(
            if n.is_multiple_of(2) {
                "TREAT"
            } else {
                "legal, \"subpoena\""
            }
            .into(),
        ),
        outcome: outcome.into(),
        remote: Some("10.0.0.1:1".into()),
        detail: None,
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    }
}

/// A trail with one event of each case, labelled by its principal.
fn trail() -> Vec<(AccessEvent, Option<u64>)> {
    let mut log_hit = access(6, AccessAction::ReadLog, None, "success");
    (log_hit.from, log_hit.to) = (Some(40), Some(60));
    let mut log_miss = access(7, AccessAction::ReadLog, None, "success");
    (log_miss.from, log_miss.to) = (Some(60), Some(80));
    let mut subscribe = access(8, AccessAction::Subscribe, None, "success");
    (subscribe.from, subscribe.to) = (Some(55), None);
    let events = vec![
        access(0, AccessAction::ReadStream, Some(STREAM), "success"), // listed
        access(1, AccessAction::Export, Some(STREAM), "success"),     // listed
        access(2, AccessAction::ReadStream, Some(2002), "success"),   // other stream
        access(3, AccessAction::Append, Some(STREAM), "success"),     // not a disclosure
        access(4, AccessAction::ReadStream, Some(STREAM), "denied"),  // nothing disclosed
        access(100, AccessAction::ReadStream, Some(STREAM), "success"), // after the period
        log_hit,                                                      // covers position 50
        log_miss,                                                     // covers none
        subscribe,                                                    // from 55 on: covers 70
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(i, e)| (e, Some(i as u64 + 500)))
        .collect()
}

const STREAM_POSITIONS: [u64; 3] = [10, 50, 90];

// Goal: exactly the successful disclosing accesses of the stream in the
// period are listed, log reads only when they cover its positions.
#[test]
fn accounting_selects_exactly_the_disclosures() {
    let positions = [10, 50, 95];
    let accounting = account(&trail(), STREAM, &positions, T0, T0 + 50 * SECOND, T0 + 99);
    let recipients: Vec<&str> = accounting
        .disclosures
        .iter()
        .map(|d| d.recipient.as_str())
        .collect();
    assert_eq!(recipients, ["user-0", "user-1", "user-6", "user-8"]);
    assert_eq!(accounting.count, 4);
    let first = &accounting.disclosures[0];
    assert_eq!(first.date, "2024-02-29T13:05:09.000000000Z");
    assert_eq!(
        first.description,
        "events of stream 1001, offsets 0 to 4 (read_stream)"
    );
    assert!(first.exempt);
    assert_eq!(first.exempt_rule, Some(RULE_TPO));
    assert!(!accounting.disclosures[1].exempt);
    assert_eq!(
        accounting.accountable, 1,
        "only user-1's purpose is not exempt"
    );
    assert_eq!(accounting.disclosures[1].position, Some(501));
    // Without the stream's positions, log reads cannot be attributed: they
    // are listed apart and the export says so.
    let bare = account(&trail(), STREAM, &[], T0, T0 + 50 * SECOND, 0);
    assert_eq!(bare.count, 2);
    assert_eq!(bare.not_attributable.len(), 3);
    assert!(
        bare.notes
            .iter()
            .any(|n| n.starts_with("Cannot attribute: 3 "))
    );
    // A subscription from 55 on covers position 90 of STREAM_POSITIONS.
    let later = account(
        &trail(),
        STREAM,
        &STREAM_POSITIONS,
        T0 + 8 * SECOND,
        T0 + 9 * SECOND,
        0,
    );
    assert_eq!(later.count, 1);
}

// Goal: the JSON has the documented shape and the CSV quotes free text.
#[test]
fn json_and_csv_have_the_documented_shape() {
    let accounting = account(&trail(), STREAM, &STREAM_POSITIONS, T0, T0 + 50 * SECOND, 7);
    let json: serde_json::Value =
        serde_json::from_str(&disclosures_json(&accounting)).expect("json");
    let keys: Vec<&str> = json
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "accountable",
            "break_glass",
            "count",
            "disclosures",
            "from",
            "generated_ns",
            "not_attributable",
            "notes",
            "omitted",
            "stream",
            "to"
        ]
    );
    assert_eq!(json["stream"], STREAM);
    assert_eq!(
        json["count"],
        json["disclosures"].as_array().expect("array").len()
    );
    assert_eq!(json["disclosures"][1]["purpose"], "legal, \"subpoena\"");
    let csv = disclosures_csv(&accounting);
    let mut lines = csv.split("\r\n");
    assert_eq!(lines.next(), Some(DISCLOSURE_COLUMNS.join(",").as_str()));
    assert!(csv.contains(",\"legal, \"\"subpoena\"\"\","), "{csv}");
    assert_eq!(csv.matches("\r\n").count(), 1 + accounting.count);
}

// Goal: the file writers write what the text functions return, once.
#[test]
fn writers_write_files_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let accounting = account(&trail(), STREAM, &[], T0, T0 + 50 * SECOND, 7);
    let csv = tmp.path().join("d.csv");
    let json = tmp.path().join("d.json");
    assert_eq!(write_disclosures_csv(&csv, &accounting).expect("csv"), 2);
    assert_eq!(write_disclosures_json(&json, &accounting).expect("json"), 2);
    assert_eq!(
        std::fs::read_to_string(&csv).expect("read"),
        disclosures_csv(&accounting)
    );
    assert_eq!(
        std::fs::read_to_string(&json).expect("read"),
        disclosures_json(&accounting)
    );
    assert!(
        write_disclosures_json(&json, &accounting).is_err(),
        "must not overwrite"
    );
}

/// A successful global-log read at second `n` of positions [from, to).
fn log_read(n: u64, from: u64, to: u64) -> AccessEvent {
    let mut event = access(n, AccessAction::ReadLog, None, "success");
    (event.from, event.to) = (Some(from), Some(to));
    event
}

// Goal: a global read or subscription that lists the streams it returned
// is attributed by that list alone (no positions needed); one whose list
// leaves the stream out is not a disclosure of it; one whose list was cut
// at its bound cannot rule the stream out.
#[test]
fn streams_returned_attribute_global_reads() {
    let mut hit = log_read(0, 0, 10);
    hit.set_streams_returned([16, STREAM]);
    let mut miss = log_read(1, 10, 20);
    miss.set_streams_returned([16, 17]);
    let mut cut = log_read(2, 20, 30);
    cut.set_streams_returned(0..1000);
    let mut window = access(3, AccessAction::Subscribe, None, "success");
    window.set_streams_returned([STREAM]);
    let events: Vec<_> = [hit, miss, cut, window]
        .into_iter()
        .map(|e| (e, None))
        .collect();
    let accounting = account(&events, STREAM, &[], T0, T0 + 10 * SECOND, 0);
    let listed: Vec<(&str, Attribution)> = accounting
        .disclosures
        .iter()
        .map(|d| (d.recipient.as_str(), d.attribution))
        .collect();
    assert_eq!(
        listed,
        [
            ("user-0", Attribution::StreamsReturned),
            ("user-3", Attribution::StreamsReturned)
        ]
    );
    assert_eq!(accounting.not_attributable.len(), 1);
    assert_eq!(accounting.not_attributable[0].recipient, "user-2");
}

// Goal: internal reads (role system), reads that returned nothing and
// failed attempts are left out and counted by reason; a subscription window
// that returned no stream is not about this stream at all.
#[test]
fn internal_and_empty_reads_are_left_out() {
    let mut internal = access(0, AccessAction::ReadStream, Some(STREAM), "success");
    internal.role = "system".into();
    let mut empty_range = access(1, AccessAction::ReadStream, Some(STREAM), "success");
    (empty_range.from, empty_range.to) = (Some(5), Some(5));
    let mut empty_window = access(2, AccessAction::Subscribe, None, "success");
    empty_window.set_streams_returned([]);
    let failed = access(3, AccessAction::ReadStream, Some(STREAM), "refused: 404");
    let real = access(4, AccessAction::ReadStream, Some(STREAM), "success");
    let events: Vec<_> = [internal, empty_range, empty_window, failed, real]
        .into_iter()
        .map(|e| (e, None))
        .collect();
    let accounting = account(&events, STREAM, &[], T0, T0 + 10 * SECOND, 0);
    assert_eq!(accounting.count, 1);
    assert_eq!(accounting.disclosures[0].recipient, "user-4");
    assert!(accounting.not_attributable.is_empty());
    let omitted = accounting.omitted;
    assert_eq!(
        (omitted.internal, omitted.empty, omitted.unsuccessful),
        (1, 1, 1)
    );
}

// Goal: exempt purposes are marked with the rule that exempts them (TPO
// codes, disclosures to the individual by code or by words), others not.
#[test]
fn exempt_purposes_are_marked_with_their_rule() {
    for (purpose, rule) in [
        ("TREAT", Some(RULE_TPO)),
        ("hpaymt", Some(RULE_TPO)),
        ("HOPERAT", Some(RULE_TPO)),
        ("PATRQT", Some(RULE_INDIVIDUAL)),
        ("Patient request", Some(RULE_INDIVIDUAL)),
        ("HLEGAL", None),
        ("PUBHLTH", None),
        ("legal, \"subpoena\"", None),
    ] {
        assert_eq!(exempt_rule(purpose), rule, "{purpose}");
    }
    let mut own = access(0, AccessAction::Export, Some(STREAM), "success");
    own.purpose = Some("PATRQT".into());
    let accounting = account(&[(own, Some(9))], STREAM, &[], T0, T0 + SECOND, 0);
    let d = &accounting.disclosures[0];
    assert!(d.exempt && d.exempt_rule == Some(RULE_INDIVIDUAL));
    assert_eq!(accounting.accountable, 0);
    let csv = disclosures_csv(&accounting);
    assert!(
        csv.contains(",true,45 CFR 164.528(a)(1)(ii): to the individual"),
        "{csv}"
    );
}

// Goal: the recipient and description a request named are what the
// accounting shows; the API account stays beside them.
#[test]
fn named_recipient_and_description_are_used() {
    let mut export = access(0, AccessAction::Export, Some(STREAM), "success");
    export.recipient = Some("County Hospital, records dept.".into());
    export.description = Some("discharge summary of 2024-02-01".into());
    let accounting = account(&[(export, Some(3))], STREAM, &[], T0, T0 + SECOND, 0);
    let d = &accounting.disclosures[0];
    assert_eq!(d.recipient, "County Hospital, records dept.");
    assert_eq!(d.account, "user-0");
    assert_eq!(d.description, "discharge summary of 2024-02-01");
}

// Goal: trail events written before recipient, description and streams
// existed still decode and are accounted as before (global reads among
// them reported as not attributable, in both CSV and JSON).
#[test]
fn older_trail_events_are_still_accounted() {
    let old_read = br#"{"v":1,"time_ns":1709211909000000000,"principal":"dr-lee","role":"reader","action":"read_stream","stream":1001,"from":0,"to":2,"purpose":"TREAT","outcome":"success"}"#;
    let old_log = br#"{"v":1,"time_ns":1709211910000000000,"principal":"etl","role":"reader","action":"read_log","from":0,"to":100,"outcome":"success"}"#;
    let events: Vec<_> = [&old_read[..], &old_log[..]]
        .into_iter()
        .map(|p| {
            (
                AccessEvent::from_payload(p).expect("an old event decodes"),
                None,
            )
        })
        .collect();
    let accounting = account(&events, STREAM, &[], T0, T0 + 10 * SECOND, 0);
    assert_eq!(accounting.count, 1);
    assert_eq!(accounting.disclosures[0].recipient, "dr-lee");
    assert_eq!(accounting.not_attributable.len(), 1);
    let csv = disclosures_csv(&accounting);
    let last = csv.trim_end().rsplit("\r\n").next().expect("a row");
    assert!(last.contains(",not_attributable,"), "{last}");
    assert!(
        last.contains("does not record which streams this returned"),
        "{last}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&disclosures_json(&accounting)).expect("json");
    assert_eq!(json["not_attributable"][0]["account"], "etl");
    assert!(json["notes"].as_array().expect("notes").iter().any(|n| {
        n.as_str()
            .is_some_and(|n| n.contains("may have disclosed events of stream 1001"))
    }));
}

// Goal: break-glass openings and accesses under a grant of the stream in
// the period are listed in their own section with the reason and expiry
// (also a refused one); other streams' and out-of-period ones are not; an
// access under a grant that disclosed data is a disclosure too.
#[test]
fn break_glass_has_its_own_section() {
    let grant = BreakGlass {
        reason: "patient unconscious in the ED".into(),
        opened_ns: T0 + 10 * SECOND,
        expires_ns: T0 + 70 * SECOND,
    };
    let marked = |n: u64, action: AccessAction, stream: u64, outcome: &str| {
        let mut event = access(n, action, Some(stream), outcome);
        event.mark_break_glass(grant.clone());
        event
    };
    let events = vec![
        (
            marked(10, AccessAction::BreakGlass, STREAM, "success"),
            Some(100),
        ),
        (
            marked(11, AccessAction::ReadStream, STREAM, "success"),
            Some(101),
        ),
        (
            marked(12, AccessAction::ReadStream, STREAM, "refused: 404"),
            Some(102),
        ),
        (
            marked(13, AccessAction::ReadStream, 2002, "success"),
            Some(103),
        ),
        (
            marked(90, AccessAction::ReadStream, STREAM, "success"),
            Some(104),
        ),
        (
            access(14, AccessAction::ReadStream, Some(STREAM), "success"),
            Some(105),
        ),
    ];
    let accounting = account(&events, STREAM, &[], T0, T0 + 50 * SECOND, 7);
    let listed: Vec<(u64, &str, &str)> = accounting
        .break_glass
        .iter()
        .map(|b| (b.position.expect("position"), b.action, b.outcome.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            (100, "break_glass", "success"),
            (101, "read_stream", "success"),
            (102, "read_stream", "refused: 404")
        ]
    );
    assert!(
        accounting
            .break_glass
            .iter()
            .all(|b| b.reason == grant.reason
                && b.expires == "2024-02-29T13:06:19.000000000Z"
                && b.account.starts_with("user-"))
    );
    let positions: Vec<u64> = accounting
        .disclosures
        .iter()
        .filter_map(|d| d.position)
        .collect();
    assert_eq!(positions, [101, 105]);
    assert!(
        accounting
            .notes
            .iter()
            .any(|n| n.starts_with("Break-glass: 3 ")),
        "{:?}",
        accounting.notes
    );
    let json: serde_json::Value =
        serde_json::from_str(&disclosures_json(&accounting)).expect("json");
    assert_eq!(
        json["break_glass"][0]["reason"],
        "patient unconscious in the ED"
    );
}
