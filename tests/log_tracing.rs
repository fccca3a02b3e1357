//! P5: event payloads never reach the logs. Every tracing event of the whole
//! process, at TRACE level, is captured while events are appended, read,
//! proven and recovered; the payload's text must appear nowhere in it.

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use vellum::log::{LocalLog, LogOptions};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("capture lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Goal: nothing logged at any level, on any thread, contains an event payload.
#[test]
fn payloads_never_reach_the_logs() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .init();

    let marker = "PHI-MARKER-Jane-Doe-1970-01-01";
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    let payload = Bytes::from(format!("{{\"name\":\"{marker}\"}}"));
    log.append(500, std::slice::from_ref(&payload), None, None)
        .expect("append");
    assert_eq!(log.read(500, 0, 1).expect("read")[0].payload, payload);
    log.inclusion_proof(500, 0).expect("proof");
    log.close().expect("close");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    log.read(500, 0, 1).expect("read after reopen");
    log.close().expect("close");

    let logged = String::from_utf8_lossy(&capture.0.lock().expect("capture lock")).to_string();
    assert!(
        !logged.is_empty(),
        "the test must capture something, or it proves nothing"
    );
    assert!(
        !logged.contains(marker),
        "a payload reached the logs:\n{logged}"
    );
    assert!(
        !logged.contains("Jane"),
        "a payload fragment reached the logs"
    );
}
