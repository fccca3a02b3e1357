//! The shell signs for the core (`Action::Sign`): a signing key that fails
//! (a PKCS#11 token that errs) stalls commits without a wrong signature,
//! is counted for `/metrics`, and commits resume once it signs again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use vellum_audit::note::{NoteError, NoteSigner, Verifier};

use super::{LocalLog, LogOptions};

/// A signer that fails while `failing` is set, else signs with `inner`.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn NoteSigner>,
    failing: Arc<AtomicBool>,
}

impl NoteSigner for Flaky {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn key_id(&self) -> [u8; 4] {
        self.inner.key_id()
    }

    fn verifier(&self) -> Verifier {
        self.inner.verifier()
    }

    fn try_sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(NoteError::SignFailed {
                name: self.inner.name().to_string(),
                key_id: "00000000".to_string(),
                reason: "the token is unplugged (test)".to_string(),
            });
        }
        self.inner.try_sign(message)
    }
}

#[test]
fn a_failing_signing_key_stalls_commits_is_counted_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    crate::init::init_data_dir(&data, None).expect("init");
    let (mut log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    let failing = Arc::new(AtomicBool::new(false));
    log.signer = Arc::new(Flaky {
        inner: Arc::clone(&log.signer),
        failing: Arc::clone(&failing),
    });
    let log = Arc::new(log);
    log.append(1001, &[Bytes::from_static(b"before")], None, None)
        .expect("appends while the key signs");
    assert_eq!(log.signing_failures(), 0);

    failing.store(true, Ordering::SeqCst);
    let waiting = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || log.append(1001, &[Bytes::from_static(b"stalled")], None, None))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log.signing_failures() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.signing_failures() >= 1, "the failure is counted");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !waiting.is_finished(),
        "no commit (and no reply) while the key cannot sign"
    );

    failing.store(false, Ordering::SeqCst);
    let later = log
        .append(1001, &[Bytes::from_static(b"after")], None, None)
        .expect("commits once the key signs again");
    let stalled = waiting
        .join()
        .expect("the waiting append's thread")
        .expect("the stalled append commits with the next certificate");
    assert_eq!(stalled.first_offset, 1, "the stalled event kept its place");
    assert_eq!(later.first_offset, 2);
    let read = log.read(1001, 0, 10).expect("read");
    let payloads: Vec<&[u8]> = read.iter().map(|e| e.payload.as_ref()).collect();
    assert_eq!(payloads, [&b"before"[..], b"stalled", b"after"]);
}
