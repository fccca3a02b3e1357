//! The streaming `vellum verify` (issue 11: memory independent of the log's
//! size) against the collecting one it replaced (every fact kept, compared
//! afterwards): the same report, check by check, failure by failure, on an
//! untouched log and on every tamper case here, also with a window of one
//! op (every lookup of an older op re-reads the log). And a log of many
//! events is verified by the `vellum` binary in bounded peak memory.

mod support;

use support::{TestDir, copy_dir, index_exec, vellum_exe};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions, load_policy};
use vellum::storage::{SEGMENT_BYTES_MIN, StorageConfig};
use vellum::verify::{KeptCheckpoint, LIVE_LAG_OPS_MAX_DEFAULT, VerifyOptions};
use vellum_audit::policy::Policy;
use vellum_audit::segment::segment_file_name;

fn small_segments() -> LogOptions {
    LogOptions {
        storage: StorageConfig {
            segment_bytes_max: SEGMENT_BYTES_MIN,
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    }
}

fn append(data: &Path, options: LogOptions, appends: u64, per_append: u64, bytes: usize) {
    let (log, _) = LocalLog::open(data, options).expect("open");
    for i in 0..appends {
        let stream = 16 + i % 3;
        let events: Vec<Bytes> = (0..per_append)
            .map(|j| {
                Bytes::from(format!(
                    "{{\"i\":{i},\"j\":{j},\"pad\":\"{}\"}}",
                    "x".repeat(bytes)
                ))
            })
            .collect();
        log.append(stream, &events, None, None).expect("append");
    }
    log.close().expect("close");
}

fn policy_of(data: &Path) -> Policy {
    load_policy(&data.join("policy.txt")).expect("policy")
}

/// The report as JSON without its times (which differ run to run).
fn report(
    data: &Path,
    keep_facts: bool,
    window: Option<usize>,
    since: Option<&str>,
) -> serde_json::Value {
    let options = VerifyOptions {
        index_url: None,
        since: since.map(|text| KeptCheckpoint::from_text("kept.txt", text)),
        live: false,
        live_lag_ops_max: LIVE_LAG_OPS_MAX_DEFAULT,
        keep_facts,
        ops_window: window,
    };
    let report =
        vellum::verify::verify_data_dir_with(data, &policy_of(data), &options, &mut |_| {});
    let mut value = serde_json::to_value(&report).expect("json");
    for key in ["started", "finished", "duration_ms"] {
        value.as_object_mut().expect("object").remove(key);
    }
    for check in value["checks"].as_array_mut().expect("checks") {
        check.as_object_mut().expect("check").remove("elapsed_ms");
    }
    value
}

/// Asserts the streaming runs give the collecting run's report; returns
/// whether it passed.
fn assert_same(data: &Path, since: Option<&str>, case: &str) -> bool {
    let collecting = report(data, true, None, since);
    for window in [None, Some(1)] {
        let streaming = report(data, false, window, since);
        assert_eq!(
            streaming, collecting,
            "{case} (window {window:?}): streaming and collecting verify differ"
        );
    }
    collecting["passed"].as_bool().expect("passed")
}

fn segments(data: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(data.join("segments"))
        .expect("segments")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

/// Goal: on every tamper case (bit flips across every segment, truncated,
/// deleted and swapped segments, edited index rows) the streaming verify
/// gives exactly the collecting verify's report, and the cases do fail.
#[test]
fn streaming_verify_equals_collecting_verify_on_tamper_cases() {
    let dir = TestDir::new("verify-stream");
    let original = dir.path().join("original");
    vellum::init::init_data_dir(&original, None).expect("init");
    append(&original, small_segments(), 14, 3, 120);
    assert!(
        assert_same(&original, None, "untouched"),
        "untouched log passes"
    );
    assert!(segments(&original).len() >= 4, "several segments");

    let tampered = dir.path().join("tampered");
    let mut failed = 0;
    let mut case = |what: String, tamper: &dyn Fn(&Path)| {
        let _ = std::fs::remove_dir_all(&tampered);
        copy_dir(&original, &tampered);
        tamper(&tampered);
        if !assert_same(&tampered, None, &what) {
            failed += 1;
        }
    };
    for (i, file) in segments(&original).iter().enumerate() {
        let name = file.file_name().expect("name").to_owned();
        let len = std::fs::metadata(file).expect("meta").len();
        for at in (0..len).step_by((len / 9).max(1) as usize) {
            case(
                format!("flip {} byte {at}", name.to_string_lossy()),
                &|data| {
                    let path = data.join("segments").join(&name);
                    let mut bytes = std::fs::read(&path).expect("read");
                    bytes[at as usize] ^= 0x10;
                    std::fs::write(&path, bytes).expect("write");
                },
            );
        }
        case(format!("truncate segment {i}"), &|data| {
            let path = data.join("segments").join(&name);
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .expect("open");
            file.set_len(len / 2).expect("truncate");
        });
        case(format!("delete segment {i}"), &|data| {
            std::fs::remove_file(data.join("segments").join(&name)).expect("remove");
        });
    }
    case("swap segments 1 and 2".into(), &|data| {
        let (a, b) = (
            data.join("segments").join(segment_file_name(1)),
            data.join("segments").join(segment_file_name(2)),
        );
        let (x, y) = (std::fs::read(&a).expect("a"), std::fs::read(&b).expect("b"));
        std::fs::write(&a, y).expect("write a");
        std::fs::write(&b, x).expect("write b");
    });
    let statements = [
        "DELETE FROM events WHERE position = 3",
        "INSERT INTO events (position, stream, stream_offset, op, leaf_hash, segment, file_offset) VALUES (100000, 999, 0, 1, zeroblob(32), 0, 64)",
        "UPDATE events SET leaf_hash = zeroblob(32) WHERE position = 4",
        "UPDATE events SET file_offset = 1 WHERE position = 40",
        "DELETE FROM events WHERE position > 30",
        "DELETE FROM commits WHERE op = 2",
        "UPDATE commits SET certificate = 'forged' WHERE op = 5",
        "DELETE FROM keys",
        "INSERT INTO keys (key_id, stream, created_ns) VALUES (999, 16, 0)",
    ];
    for statement in statements {
        case(format!("index: {statement}"), &|data| {
            index_exec(data, &[statement]);
        });
    }
    assert!(failed >= 40, "the tamper cases fail ({failed} did)");
}

/// Goal: `--since` gives the same report streaming and collecting: a kept
/// checkpoint of the same log (passes, with a consistency proof), one
/// beyond the log, and garbage.
#[test]
fn streaming_since_equals_collecting_since() {
    let dir = TestDir::new("verify-stream-since");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    append(&data, small_segments(), 7, 3, 120);
    let older = dir.path().join("older");
    copy_dir(&data, &older);
    let kept = report(&data, false, None, None)["reached"]["checkpoint"]
        .as_str()
        .expect("a checkpoint")
        .to_string();
    append(&data, small_segments(), 7, 3, 120);
    let newer = report(&data, false, None, None)["reached"]["checkpoint"]
        .as_str()
        .expect("a checkpoint")
        .to_string();
    assert!(assert_same(&data, Some(&kept), "kept from an older state"));
    let proof = report(&data, false, None, Some(&kept));
    let since = proof["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .find(|c| c["name"] == "kept checkpoint (--since)")
        .expect("the since check");
    assert!(
        since["counts"]["consistency proof hashes"].as_u64() > Some(0),
        "{since}"
    );
    assert!(assert_same(&data, Some(&newer), "kept = newest"));
    assert!(!assert_same(&older, Some(&newer), "kept beyond the log"));
    assert!(!assert_same(&data, Some("garbage"), "garbage"));
}

/// Peak resident memory (VmHWM, KiB) of `pid` as last seen, polled until
/// it exits; the child's exit status.
fn run_and_watch_peak(mut command: std::process::Command) -> (u64, std::process::ExitStatus) {
    let mut child = command.spawn().expect("spawn vellum");
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak_kib = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file)
            && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM:"))
        {
            let kib: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|n| n.parse().ok())
                .expect("VmHWM in kB");
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            return (peak_kib, status);
        }
        assert!(Instant::now() < deadline, "vellum verify ran over 120 s");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Peak memory `vellum verify` may use on the log below, in MiB. The
/// collecting verify needs about 60 MiB more on it (its facts and full
/// tree grow by ~300 bytes per event); a streaming one stays at the
/// process's base (index connection, one segment read, the recent-op
/// window).
const VERIFY_PEAK_MIB_MAX: u64 = 48;

/// Goal: `vellum verify` of a log of 200,000 events (8 MiB segments read
/// whole) peaks below `VERIFY_PEAK_MIB_MAX` resident, measured on the
/// process.
#[test]
fn many_events_verify_in_bounded_peak_memory() {
    let dir = TestDir::new("verify-stream-memory");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let options = LogOptions {
        storage: StorageConfig {
            segment_bytes_max: 8 << 20,
            ..StorageConfig::default()
        },
        ..LogOptions::default()
    };
    append(&data, options, 200, 1000, 16);
    let mut command = std::process::Command::new(vellum_exe());
    command
        .args(["verify", "--json", "--data-dir"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let (peak_kib, status) = run_and_watch_peak(command);
    assert!(status.success(), "the log verifies");
    let peak_mib = peak_kib / 1024;
    eprintln!("vellum verify of 200,000 events: peak {peak_mib} MiB resident");
    assert!(
        peak_mib < VERIFY_PEAK_MIB_MAX,
        "peak {peak_mib} MiB, at most {VERIFY_PEAK_MIB_MAX} MiB"
    );
}
