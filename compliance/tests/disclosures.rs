//! HIPAA accounting of disclosures from the access trail: exactly the
//! successful disclosing accesses of one stream in the period (log reads
//! only when they cover the stream's positions), with date, recipient,
//! description and purpose, as CSV and JSON.

use vellum_compliance::disclosures::{
    DISCLOSURE_COLUMNS, account, disclosures_csv, disclosures_json, write_disclosures_csv,
    write_disclosures_json,
};
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent};

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
    assert!(first.tpo_exempt);
    assert!(!accounting.disclosures[1].tpo_exempt);
    assert_eq!(accounting.disclosures[1].position, Some(501));
    // Without the stream's positions, log reads cannot be attributed.
    let bare = account(&trail(), STREAM, &[], T0, T0 + 50 * SECOND, 0);
    assert_eq!(bare.count, 2);
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
            "count",
            "disclosures",
            "from",
            "generated_ns",
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
