//! The event envelope on one replica's log (no network): the duplicate-id
//! rule across a restart and under concurrent appends, raw events that look
//! like envelopes read back unchanged, no envelope byte in clear on disk,
//! and `vellum verify` on a log with envelopes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use vellum::log::{LocalLog, LogError};
use vellum_audit::envelope::{Envelope, parse_uuid};

mod support;

const STREAM: u64 = 40;
const MARKER: &str = "ZQXMARKER-9f3c";

fn init(dir: &Path) -> PathBuf {
    let data = dir.join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    data
}

fn open(data: &Path) -> LocalLog {
    LocalLog::open(data, support::wait_for_lock())
        .expect("open")
        .0
}

fn uuid(n: u8) -> String {
    format!("00000000-0000-4000-8000-0000000000{n:02x}")
}

/// An encoded envelope with id `n` and the marker in type and metadata.
fn event(n: u8, payload: &str) -> Bytes {
    let envelope = Envelope {
        id: parse_uuid(&uuid(n)),
        event_type: Some(format!("{MARKER}-type")),
        content_type: Some("application/json".to_string()),
        metadata: Some(format!(r#"{{"m": "{MARKER}", "n": {n}}}"#)),
        payload: payload.as_bytes().to_vec(),
    };
    Bytes::from(envelope.encode())
}

fn append(log: &LocalLog, events: &[Bytes]) -> Result<vellum::log::Appended, LogError> {
    log.append_recorded(STREAM, events, None, None, None, true)
}

/// Goal: a resent batch is answered with the original op (also after a
/// restart rebuilt the id index from the log), a partial or reordered
/// repeat and a repeat inside one batch are refused, and nothing is
/// stored twice.
#[test]
fn duplicate_ids_are_never_stored_twice_across_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path());
    let batch = vec![event(1, "a"), event(2, "b")];
    let first = {
        let log = open(&data);
        let first = append(&log, &batch).expect("first append");
        assert!(!first.duplicate);
        let again = append(&log, &batch).expect("resend");
        assert!(again.duplicate, "a resent batch is a duplicate");
        assert_eq!(
            (again.first_offset, again.next_offset, again.op),
            (first.first_offset, first.next_offset, first.op)
        );
        let repeat = append(&log, &[event(3, "c"), event(3, "d")]).expect_err("repeat in batch");
        assert!(
            matches!(
                repeat,
                LogError::DuplicateEventId {
                    index: 1,
                    first: Some(0),
                    offset: None,
                    ..
                }
            ),
            "{repeat:?}"
        );
        log.close().expect("close");
        first
    };
    let log = open(&data);
    let again = append(&log, &batch).expect("resend after restart");
    assert!(again.duplicate, "the restarted log knows the ids");
    assert_eq!(again.first_offset, first.first_offset);
    for partial in [
        vec![event(2, "b")],
        vec![event(2, "b"), event(1, "a")],
        vec![event(9, "z"), event(1, "a")],
    ] {
        let error = append(&log, &partial).expect_err("partial repeat");
        assert!(
            matches!(
                error,
                LogError::DuplicateEventId {
                    offset: Some(_),
                    ..
                }
            ),
            "{error:?}"
        );
    }
    let stored = log.read(STREAM, 0, 100).expect("read");
    assert_eq!(stored.len(), 2, "each id stored once");
    assert!(stored.iter().all(|e| e.enveloped));
    assert_eq!(stored[0].payload, batch[0]);
    log.close().expect("close");
}

/// Goal: a payload of the full 1 MiB with the largest metadata (16 KiB)
/// appends and reads back byte for byte; one byte more of either is refused.
#[test]
fn the_largest_event_with_the_largest_envelope_fits() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path());
    let log = open(&data);
    let metadata = format!(
        "\"{}\"",
        "m".repeat(vellum_audit::envelope::METADATA_BYTES_MAX - 2)
    );
    let largest = Envelope {
        id: parse_uuid(&uuid(1)),
        event_type: Some("t".repeat(256)),
        content_type: Some("c".repeat(256)),
        metadata: Some(metadata),
        payload: vec![7; vellum::log::EVENT_BYTES_MAX],
    };
    let bytes = Bytes::from(largest.encode());
    append(&log, std::slice::from_ref(&bytes)).expect("the largest event fits");
    let read = log.read(STREAM, 0, 1).expect("read");
    assert_eq!(read[0].payload, bytes);
    let mut over = largest.clone();
    over.id = parse_uuid(&uuid(2));
    over.payload.push(7);
    let error = append(&log, &[Bytes::from(over.encode())]).expect_err("payload over 1 MiB");
    assert!(matches!(error, LogError::EventTooLarge { .. }), "{error:?}");
}

/// Goal: appends of one id from many threads at once store it exactly once
/// (the check and the op's ids share the core's lock).
#[test]
fn concurrent_appends_of_one_id_store_it_once() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path());
    let log = Arc::new(open(&data));
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || append(&log, &[event(7, "same")]))
        })
        .collect();
    let outcomes: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let stored = outcomes
        .iter()
        .filter(|o| matches!(o, Ok(a) if !a.duplicate))
        .count();
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Ok(a) => format!("offset {} duplicate {}", a.first_offset, a.duplicate),
            Err(e) => e.to_string(),
        })
        .collect();
    assert_eq!(stored, 1, "{summary:?}");
    for outcome in &outcomes {
        // The others are duplicates, or told to retry while the first was
        // not yet committed; never a second write.
        assert!(
            matches!(outcome, Ok(_) | Err(LogError::Indeterminate(_))),
            "{summary:?}"
        );
    }
    assert_eq!(log.read(STREAM, 0, 100).expect("read").len(), 1);
}

/// Goal: an event appended without envelopes keeps its exact bytes even
/// when they look like an encoded envelope (the op flag decides, not the
/// bytes), and carries no id semantics; no envelope byte is in clear in any
/// file of the data directory; `vellum verify` passes on the log.
#[test]
fn raw_lookalikes_stay_raw_and_nothing_is_in_clear() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = init(dir.path());
    let log = open(&data);
    let lookalike = event(5, "raw");
    for _ in 0..2 {
        let appended = log
            .append(STREAM, std::slice::from_ref(&lookalike), None, None)
            .expect("raw append");
        assert!(!appended.duplicate, "raw events have no id semantics");
    }
    append(&log, &[event(5, "enveloped")]).expect("enveloped append");
    let stored = log.read(STREAM, 0, 10).expect("read");
    assert_eq!(
        stored.iter().map(|e| e.enveloped).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert_eq!(
        stored[0].payload, lookalike,
        "raw bytes read back unchanged"
    );
    log.close().expect("close");

    let marker = MARKER.as_bytes();
    let id_bytes = parse_uuid(&uuid(5)).expect("uuid");
    for path in files_under(&data) {
        let bytes = std::fs::read(&path).expect("read file");
        for needle in [marker, &id_bytes[..], uuid(5).as_bytes()] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle),
                "{} holds envelope bytes in clear",
                path.display()
            );
        }
    }
    let policy = vellum::log::load_policy(&data.join("policy.txt")).expect("policy");
    let report = vellum::verify::verify_data_dir(&data, &policy, None, &mut |_| {});
    assert!(
        report.passed,
        "verify passes on a log with envelopes:\n{report:?}"
    );
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    assert!(out.len() > 3, "the data directory has files");
    out
}

/// Goal: a data directory written by the build before envelopes
/// (`tests/golden/log_before_envelopes`, made with `vellum init` and
/// `vellum append` of three JSON lines) reads byte for byte and verifies,
/// and still verifies once an op with envelopes follows its ops.
#[test]
fn a_log_written_before_envelopes_reads_and_verifies() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/log_before_envelopes/data");
    support::copy_dir(&golden, &data);
    // Git keeps no file modes: the key store wants its files private.
    std::fs::set_permissions(data.join("keys"), std::fs::Permissions::from_mode(0o700))
        .expect("chmod keys");
    for path in files_under(&data.join("keys")) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let policy = vellum::log::load_policy(&data.join("policy.txt")).expect("policy");
    let verify = |what: &str| {
        let report = vellum::verify::verify_data_dir(&data, &policy, None, &mut |_| {});
        assert!(report.passed, "{what} verifies:\n{report:?}");
    };
    verify("the old log");
    let log = open(&data);
    let old = log.read(16, 0, 10).expect("read the old stream");
    let payloads: Vec<&[u8]> = old.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(
        payloads,
        [
            &br#"{"resourceType":"Patient","id":"p1"}"#[..],
            br#"{"n": 1.50}"#,
            br#""VLEV""#
        ]
    );
    assert!(old.iter().all(|e| !e.enveloped));
    log.append_recorded(16, &[event(1, "new")], None, None, None, true)
        .expect("an enveloped append after the old ops");
    let read = log.read(16, 0, 10).expect("read");
    assert_eq!((read.len(), read[3].enveloped), (4, true));
    log.close().expect("close");
    verify("the old log with an op with envelopes after it");
}
