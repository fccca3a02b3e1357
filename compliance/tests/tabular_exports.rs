//! CSV and NDJSON exports of the access trail: RFC 4180 quoting (commas,
//! quotes, CR and LF in free text), header row, every field present, and a
//! golden CSV file.

use std::path::PathBuf;

use proptest::prelude::*;
use vellum_compliance::tabular::{
    CSV_COLUMNS, CSV_FORMULA_STARTS, csv_cell_value, csv_defuse, write_csv, write_csv_to,
    write_ndjson, write_ndjson_to,
};
use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent};

fn events() -> Vec<(AccessEvent, Option<u64>)> {
    let read = AccessEvent {
        v: ACCESS_EVENT_VERSION,
        time_ns: 1_709_211_909_000_000_042,
        principal: "dr-lee".into(),
        role: "reader".into(),
        action: AccessAction::ReadStream,
        stream: Some(1001),
        from: Some(0),
        to: Some(3),
        purpose: Some("follow-up, \"urgent\"\r\nsecond line".into()),
        outcome: "success".into(),
        remote: Some("10.1.2.3:51234".into()),
        detail: None,
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
    };
    let failed = AccessEvent {
        principal: "anonymous".into(),
        role: "none".into(),
        action: AccessAction::AuthFailed,
        stream: None,
        from: None,
        to: None,
        purpose: None,
        outcome: "refused: unknown token".into(),
        remote: None,
        detail: None,
        recipient: None,
        description: None,
        streams: None,
        streams_truncated: false,
        count: None,
        break_glass: None,
        ..read.clone()
    };
    vec![(read, Some(17)), (failed, None)]
}

/// A strict RFC 4180 reader: records end in CRLF, quoted fields may hold
/// anything with quotes doubled. The test's oracle.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(
                    chars.next(),
                    Some('\n'),
                    "CR outside quotes must start CRLF"
                );
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => {
                assert!(c != '\n' && c != '"', "bare {c:?} outside quotes");
                field.push(c);
            }
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "text must end with CRLF"
    );
    records
}

// Goal: CSV has the header, one record per event, and free text with
// commas, quotes and line breaks reads back exactly.
#[test]
fn csv_quotes_free_text_and_reads_back() {
    let mut out = Vec::new();
    write_csv_to(&mut out, &events()).expect("write");
    let text = String::from_utf8(out).expect("utf-8");
    let records = parse_csv(&text);
    assert_eq!(records.len(), 3);
    assert_eq!(records[0], CSV_COLUMNS.to_vec());
    let row = &records[1];
    let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).expect("column");
    assert_eq!(row[col("position")], "17");
    assert_eq!(row[col("purpose")], "follow-up, \"urgent\"\r\nsecond line");
    assert_eq!(row[col("time")], "2024-02-29T13:05:09.000000042Z");
    assert_eq!(row[col("action")], "read_stream");
    assert_eq!(records[2][col("stream")], "");
    assert_eq!(records[2][col("outcome")], "refused: unknown token");
    assert!(records.iter().all(|r| r.len() == CSV_COLUMNS.len()));
}

// Goal: NDJSON has one object per line with every field, nulls for absent
// ones, except `count`, which only an aggregate of failed logins carries.
#[test]
fn ndjson_has_every_field_per_line() {
    let mut out = Vec::new();
    write_ndjson_to(&mut out, &events()).expect("write");
    let text = String::from_utf8(out).expect("utf-8");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2);
    for line in &lines {
        let keys: Vec<&str> = line
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut columns: Vec<&str> = CSV_COLUMNS.into_iter().filter(|c| *c != "count").collect();
        columns.sort_unstable();
        let mut keys = keys;
        keys.sort_unstable();
        assert_eq!(keys, columns);
    }
    assert_eq!(lines[0]["purpose"], "follow-up, \"urgent\"\r\nsecond line");
    assert_eq!(lines[0]["position"], 17);
    assert!(lines[1]["stream"].is_null());
}

// Goal: the file writers write the same bytes, count rows, and never overwrite.
#[test]
fn file_writers_match_and_refuse_overwrite() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let csv = tmp.path().join("trail.csv");
    let ndjson = tmp.path().join("trail.ndjson");
    assert_eq!(write_csv(&csv, &events()).expect("csv"), 2);
    assert_eq!(write_ndjson(&ndjson, &events()).expect("ndjson"), 2);
    let mut expected = Vec::new();
    write_csv_to(&mut expected, &events()).expect("write");
    assert_eq!(std::fs::read(&csv).expect("read"), expected);
    let error = write_csv(&csv, &events()).expect_err("exists");
    assert!(error.to_string().contains("already exists"), "{error}");
}

// Goal: the CSV is byte-for-byte stable (golden file).
#[test]
fn csv_matches_golden_file() {
    let mut out = Vec::new();
    write_csv_to(&mut out, &events()).expect("write");
    let actual = String::from_utf8(out).expect("utf-8");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/access_trail.csv");
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with VELLUM_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "access_trail.csv differs");
}

// Goal: a recorded value that a spreadsheet would run as a formula is
// exported with one leading `'` in CSV (each OWASP first character), while
// NDJSON carries it byte for byte as recorded.
#[test]
fn csv_defuses_formula_cells_and_ndjson_keeps_them() {
    let col = |name: &str| CSV_COLUMNS.iter().position(|c| *c == name).expect("column");
    for first in CSV_FORMULA_STARTS {
        let mut list = events();
        let attack = format!("{first}HYPERLINK(\"http://evil\",\"x\")");
        list[0].0.principal = attack.clone();
        list[0].0.purpose = Some("-5".into());
        list[0].0.remote = Some(format!("@{first}"));
        let mut out = Vec::new();
        write_csv_to(&mut out, &list).expect("write");
        let records = parse_csv(&String::from_utf8(out).expect("utf-8"));
        let row = &records[1];
        assert_eq!(row[col("principal")], format!("'{attack}"), "{first:?}");
        assert_eq!(
            row[col("purpose")],
            "'-5",
            "negative numbers follow OWASP too"
        );
        assert_eq!(row[col("remote")], format!("'@{first}"));
        assert_eq!(csv_cell_value(&row[col("principal")]), attack);
        let mut ndjson = Vec::new();
        write_ndjson_to(&mut ndjson, &list).expect("write");
        let text = String::from_utf8(ndjson).expect("utf-8");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("a line")).expect("json");
        assert_eq!(line["principal"], attack.as_str(), "NDJSON is not defused");
        assert_eq!(line["purpose"], "-5");
    }
}

// Goal: an aggregate of failed logins carries its count in both exports;
// an event without one keeps NDJSON bytes without a `count` member.
#[test]
fn count_is_exported_only_where_present() {
    let mut list = events();
    list[1].0.count = Some(41);
    let mut out = Vec::new();
    write_csv_to(&mut out, &list).expect("write");
    let records = parse_csv(&String::from_utf8(out).expect("utf-8"));
    let count = CSV_COLUMNS.len() - 1;
    assert_eq!(CSV_COLUMNS[count], "count");
    assert_eq!(
        (records[1][count].as_str(), records[2][count].as_str()),
        ("", "41")
    );
    let mut ndjson = Vec::new();
    write_ndjson_to(&mut ndjson, &list).expect("write");
    let text = String::from_utf8(ndjson).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines[0].contains("\"count\""), "{}", lines[0]);
    assert!(lines[1].ends_with(",\"count\":41}"), "{}", lines[1]);
}

// Goal: a break-glass event's grant is in its NDJSON line (last) and its
// CSV row shows v 2 under the same columns; other lines keep their bytes.
#[test]
fn break_glass_is_exported_only_where_present() {
    let mut list = events();
    list[1]
        .0
        .mark_break_glass(vellum_compliance::trail::BreakGlass {
            reason: "code blue".into(),
            opened_ns: 1,
            expires_ns: 2,
        });
    let mut ndjson = Vec::new();
    write_ndjson_to(&mut ndjson, &list).expect("write");
    let text = String::from_utf8(ndjson).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines[0].contains("break_glass"), "{}", lines[0]);
    assert!(
        lines[1]
            .ends_with(r#","break_glass":{"reason":"code blue","opened_ns":1,"expires_ns":2}}"#),
        "{}",
        lines[1]
    );
    let mut out = Vec::new();
    write_csv_to(&mut out, &list).expect("write");
    let records = parse_csv(&String::from_utf8(out).expect("utf-8"));
    assert!(records.iter().all(|r| r.len() == CSV_COLUMNS.len()));
    let v = CSV_COLUMNS
        .iter()
        .position(|c| *c == "v")
        .expect("v column");
    assert_eq!((records[1][v].as_str(), records[2][v].as_str()), ("1", "2"));
}

// Goal: the NDJSON is byte-for-byte stable (golden file): defusing CSV
// cells and the optional `count` leave it as it was.
#[test]
fn ndjson_matches_golden_file() {
    let mut list = events();
    list[0].0.principal = "=cmd|' /C calc'!A0".into();
    let mut out = Vec::new();
    write_ndjson_to(&mut out, &list).expect("write");
    let actual = String::from_utf8(out).expect("utf-8");
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/access_trail.ndjson");
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with VELLUM_BLESS=1)", path.display()));
    assert_eq!(actual, expected, "access_trail.ndjson differs");
}

proptest! {
    // Goal: any principal and purpose text survives CSV quoting and defusing:
    // the cell is the defused value, and stripping the defuse prefix gives
    // back exactly what was recorded; a safe value is not changed at all.
    #[test]
    fn any_text_round_trips_through_csv(principal in ".{1,40}", purpose in "[a-z,\"\r\n ]{0,40}") {
        let mut list = events();
        list[0].0.principal = principal.clone();
        list[0].0.purpose = Some(purpose.clone());
        let mut out = Vec::new();
        write_csv_to(&mut out, &list).expect("write");
        let records = parse_csv(&String::from_utf8(out).expect("utf-8"));
        prop_assert_eq!(&records[1][4], &csv_defuse(&principal).into_owned());
        prop_assert_eq!(csv_cell_value(&records[1][4]), principal.as_str());
        let safe = !principal.starts_with(CSV_FORMULA_STARTS) && !principal.starts_with('\'');
        prop_assert_eq!(records[1][4] == principal, safe);
        prop_assert_eq!(&records[1][10], &csv_defuse(&purpose).into_owned());
        prop_assert_eq!(csv_cell_value(&records[1][10]), purpose.as_str());
    }
}
