//! The contract of DESIGN §1 over the local log: `persist_blocking` from a
//! plain thread, from a multi-thread tokio runtime, and refused (never a
//! panic) on a current-thread runtime; offsets are the stream's new length;
//! retries with the same client request never write twice.

use std::sync::Arc;

use bytes::Bytes;
use vellum::log::{ClientRequest, LocalLog, LocalPersister, LogOptions};
use vellum::{EventPersister, Offset, PersistError, StreamId};

fn fresh() -> (tempfile::TempDir, Arc<LocalLog>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    (dir, Arc::new(log))
}

fn events(n: usize, tag: &str) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(format!("{{\"tag\":\"{tag}\",\"i\":{i}}}")))
        .collect()
}

/// Goal: from a plain thread, the returned offset is the stream's new length.
#[test]
fn plain_thread_gets_the_new_stream_length() {
    let (_dir, log) = fresh();
    let persister = LocalPersister::new(Arc::clone(&log));
    assert_eq!(
        persister.persist_blocking(StreamId(20), events(3, "a")),
        Ok(Offset(3))
    );
    assert_eq!(
        persister.persist_blocking(StreamId(20), events(2, "b")),
        Ok(Offset(5))
    );
    assert_eq!(
        persister.persist_blocking(StreamId(21), events(1, "c")),
        Ok(Offset(1))
    );
    let read = log.read(20, 3, 10).expect("read");
    assert_eq!(
        read.iter().map(|e| e.payload.clone()).collect::<Vec<_>>(),
        events(2, "b")
    );
}

/// Goal: from tasks of a multi-thread runtime the call works (block_in_place).
#[test]
fn multi_thread_runtime_tasks_can_persist() {
    let (_dir, log) = fresh();
    let persister = LocalPersister::new(Arc::clone(&log));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    let offsets = runtime.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..8u64 {
            let persister = persister.clone();
            tasks.push(tokio::spawn(async move {
                persister.persist_blocking(StreamId(30 + i % 2), events(2, "t"))
            }));
        }
        let mut offsets = Vec::new();
        for task in tasks {
            offsets.push(task.await.expect("task").expect("persist"));
        }
        offsets
    });
    assert_eq!(offsets.len(), 8);
    assert_eq!(
        log.read(30, 0, 100).expect("read").len() + log.read(31, 0, 100).expect("read").len(),
        16
    );
}

/// Goal: on a current-thread runtime the call returns an error, never panics, and writes nothing.
#[test]
fn current_thread_runtime_is_refused_without_writing() {
    let (_dir, log) = fresh();
    let persister = LocalPersister::new(Arc::clone(&log));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let result =
        runtime.block_on(async { persister.persist_blocking(StreamId(40), events(1, "x")) });
    match result {
        Err(PersistError::StorageError(message)) => {
            assert!(message.contains("current-thread"), "{message}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(
        log.read(40, 0, 10).is_err(),
        "nothing may have been written to stream 40"
    );
    assert_eq!(
        persister.persist_blocking(StreamId(40), events(1, "x")),
        Ok(Offset(1))
    );
}

/// Goal: 16 threads appending at once get dense, distinct offsets per stream.
#[test]
fn concurrent_appends_get_dense_distinct_offsets() {
    let (_dir, log) = fresh();
    let persister = LocalPersister::new(Arc::clone(&log));
    let per_thread = 25u64;
    let results: Vec<Vec<(u64, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16u64)
            .map(|t| {
                let persister = persister.clone();
                scope.spawn(move || {
                    (0..per_thread)
                        .map(|_| {
                            let stream = 50 + t % 4;
                            (
                                stream,
                                persister
                                    .persist_blocking(StreamId(stream), events(1, "c"))
                                    .expect("persist")
                                    .0,
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    for stream in 50..54u64 {
        let mut offsets: Vec<u64> = results
            .iter()
            .flatten()
            .filter(|(s, _)| *s == stream)
            .map(|(_, o)| *o)
            .collect();
        offsets.sort_unstable();
        let expected: Vec<u64> = (1..=4 * per_thread).collect();
        assert_eq!(
            offsets, expected,
            "stream {stream} offsets must be exactly 1..=n"
        );
    }
}

/// Goal: a retried client request is answered from the client table and never written twice, also after reopen.
#[test]
fn retried_request_executes_at_most_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let client = ClientRequest {
        client: 0xfeed,
        request: 1,
    };
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    let first = log
        .append(60, &events(2, "r"), None, Some(client))
        .expect("append");
    let again = log
        .append(60, &events(2, "r"), None, Some(client))
        .expect("retry");
    assert!(again.duplicate && !first.duplicate);
    assert_eq!((again.first_offset, again.next_offset), (0, 2));
    log.close().expect("close");

    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    let after_reopen = log
        .append(60, &events(2, "r"), None, Some(client))
        .expect("retry after reopen");
    assert!(after_reopen.duplicate);
    assert_eq!(
        log.read(60, 0, 100).expect("read").len(),
        2,
        "the batch must be stored once"
    );
    let next = log
        .append(
            60,
            &events(1, "s"),
            None,
            Some(ClientRequest {
                request: 2,
                ..client
            }),
        )
        .expect("next");
    assert_eq!(next.next_offset, 3);
    let stale = log.append(60, &events(1, "s"), None, Some(client));
    assert!(stale.is_err(), "an older request number is refused");
}

/// Goal: reusing an idempotency key for another request (other body, other
/// stream, other expected offset) is refused as `IdempotencyKeyReused` and
/// stores nothing, while the identical retry gets the original receipt;
/// also after reopen (the client table is rebuilt from the op headers), and
/// the op header holds a keyed digest, not a plain hash of the request.
#[test]
fn reused_idempotency_key_is_refused_and_stores_nothing() {
    use vellum::log::LogError;
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let key = ClientRequest {
        client: 0xbeef,
        request: 1,
    };
    let original = events(2, "original");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    let first = log.append(80, &original, None, Some(key)).expect("append");
    let check = |log: &LocalLog, when: &str| {
        let reuses: [(u64, Vec<Bytes>, Option<u64>, &str); 4] = [
            (80, events(2, "other body"), None, "another body"),
            (80, events(3, "original"), None, "another event count"),
            (81, original.clone(), None, "another stream"),
            (80, original.clone(), Some(0), "another expected offset"),
        ];
        for (stream, batch, expected, what) in reuses {
            let refused = log.append(stream, &batch, expected, Some(key));
            assert!(
                matches!(
                    refused,
                    Err(LogError::IdempotencyKeyReused { request: 1, .. })
                ),
                "{when}: {what}: {refused:?}"
            );
        }
        let again = log
            .append(80, &original, None, Some(key))
            .expect("identical retry");
        assert!(again.duplicate, "{when}");
        assert_eq!(
            (again.op, again.first_offset, again.next_offset),
            (first.op, 0, 2),
            "{when}: the original receipt"
        );
        assert_eq!(log.read(80, 0, 100).expect("read").len(), 2, "{when}");
        assert!(
            matches!(log.read(81, 0, 100), Err(LogError::UnknownStream(81))),
            "{when}: nothing stored on the other stream"
        );
    };
    check(&log, "live");
    log.close().expect("close");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("reopen");
    check(&log, "after reopen");
    log.close().expect("close");

    // The digest in the header is keyed: it is not SHA-256 of anything the
    // request holds, and it is not zero (unknown).
    let segments = data.join("segments");
    let mut found = false;
    for entry in std::fs::read_dir(&segments).expect("segments") {
        let bytes = std::fs::read(entry.expect("entry").path()).expect("segment");
        for window in bytes.windows(vellum_audit::record::HEADER_BYTES) {
            let header: &[u8; 256] = window.try_into().expect("256 bytes");
            let Ok(header) = vellum_audit::record::OpHeader::decode(header, 0) else {
                continue;
            };
            if header.client_id != 0xbeef {
                continue;
            }
            found = true;
            assert_eq!(header.version, vellum_audit::record::VERSION);
            assert_ne!(header.request_digest, [0; 32]);
            for event in &original {
                assert_ne!(header.request_digest, vellum_audit::sha256(&[event]));
            }
        }
    }
    assert!(found, "the op header of the append is in the log");
}

/// Goal: callers racing with one idempotency key and two different bodies
/// each get the answer for their own body: exactly one body is stored once,
/// every caller of that body gets its receipt, every caller of the other
/// body gets `IdempotencyKeyReused` (never the other's receipt or refusal).
#[test]
fn racing_callers_of_one_key_each_get_their_own_answer() {
    use vellum::log::LogError;
    let (_dir, log) = fresh();
    let key = ClientRequest {
        client: 0xcafe,
        request: 1,
    };
    let outcomes: Vec<(usize, Result<u64, bool>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let log = Arc::clone(&log);
                scope.spawn(move || {
                    let body = events(2, if i % 2 == 0 { "x" } else { "y" });
                    let outcome = match log.append(90, &body, None, Some(key)) {
                        Ok(appended) => Ok(appended.op),
                        Err(LogError::IdempotencyKeyReused { .. }) => Err(true),
                        Err(other) => panic!("caller {i}: {other}"),
                    };
                    (i % 2, outcome)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("caller thread"))
            .collect()
    });
    let stored = log.read(90, 0, 100).expect("read");
    assert_eq!(stored.len(), 2, "one body, stored once");
    let winner = if stored[0].payload == events(2, "x")[0] {
        0
    } else {
        1
    };
    for (body, outcome) in outcomes {
        if body == winner {
            assert!(outcome.is_ok(), "the stored body's caller gets a receipt");
        } else {
            assert_eq!(outcome, Err(true), "the other body's caller is refused");
        }
    }
}

/// Goal: an expected offset that does not match refuses the append and names both numbers.
#[test]
fn wrong_expected_offset_is_a_clear_conflict() {
    let (_dir, log) = fresh();
    log.append(70, &events(2, "e"), Some(0), None)
        .expect("expected 0 on an empty stream");
    let started = std::time::Instant::now();
    let err = log
        .append(70, &events(1, "e"), Some(5), None)
        .expect_err("conflict");
    let message = err.to_string();
    assert!(
        message.contains("expected 5") && message.contains("2 events"),
        "{message}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "a refusal is answered at once, not after a commit timeout"
    );
    assert_eq!(log.read(70, 0, 10).expect("read").len(), 2);
}

/// Goal: invalid batches (reserved stream, empty, oversized event) are refused before anything is written.
#[test]
fn invalid_batches_are_refused() {
    let (_dir, log) = fresh();
    assert!(
        log.append(3, &events(1, "sys"), None, None)
            .expect_err("reserved")
            .to_string()
            .contains("reserved")
    );
    assert!(log.append(80, &[], None, None).is_err());
    let huge = Bytes::from(vec![b'x'; vellum::log::EVENT_BYTES_MAX + 1]);
    assert!(log.append(80, &[huge], None, None).is_err());
    assert!(
        log.read(80, 0, 10).is_err(),
        "stream 80 must still be unknown"
    );
}

/// Goal: one writer per data directory: a second open is refused as busy until the first closes.
#[test]
fn second_open_of_a_data_directory_is_busy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    vellum::init::init_data_dir(&data, None).expect("init");
    let (log, _) = LocalLog::open(&data, LogOptions::default()).expect("open");
    match LocalLog::open(&data, LogOptions::default()) {
        Err(vellum::log::LogError::Busy(message)) => {
            assert!(message.contains("in use"), "{message}")
        }
        other => panic!("expected busy, got {:?}", other.map(|_| ())),
    }
    log.close().expect("close");
    LocalLog::open(&data, LogOptions::default())
        .expect("open after close")
        .0
        .close()
        .expect("close");
}
