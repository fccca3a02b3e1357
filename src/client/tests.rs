//! Tests of the client against a stub API server (axum, plain HTTP on
//! 127.0.0.1:0) whose in-memory state honours idempotency keys and can be
//! told to misbehave: apply an append and then answer 503 `indeterminate`,
//! answer 409, or cut a subscription after k event lines. A raw TCP listener
//! that reads a request and hangs up stands in for a replica that dies
//! mid-request, and a closed port for one that is down.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;

use super::{AppendError, Client, ClientConfig, ClientError, ClientPersister, ReadError};
use crate::api::{
    self, AppendReceipt, AppendRequest, CertificateAnswer, ConsistencyAnswer, ErrorBody,
    ErrorDetail, Health, Heartbeat, LogEvent, LogEvents, ProofAnswer, StreamEvents,
};
use crate::types::{EventPersister, Offset, PersistError, StreamId};

const TOKEN: &str = "test-token";
/// Bound on any one wait in these tests.
const WAIT: Duration = Duration::from_secs(20);
/// Idle polls after which the stub ends a subscription (about 20 s).
const STUB_SUBSCRIBE_POLLS_MAX: u32 = 2000;
/// Idle polls between two heartbeat lines.
const STUB_HEARTBEAT_POLLS: u32 = 5;

#[derive(Debug, Default)]
struct Stub {
    streams: HashMap<u64, u64>,
    log: Vec<LogEvent>,
    receipts: HashMap<(String, u64), AppendReceipt>,
    /// Appends written (duplicates excluded).
    applied: usize,
    /// Append requests received (retries included).
    requests: usize,
    in_flight: HashSet<String>,
    /// A session had two requests in flight at once.
    overlaps: usize,
    last_request: HashMap<String, u64>,
    /// A session's request number did not increase.
    reorders: usize,
    /// Apply (or find applied) the next N appends, then answer 503 `indeterminate`.
    fail_after_apply: usize,
    /// Answer every append with 409.
    conflict: bool,
    /// Answer every append with this status and code, and a message that
    /// names other errors (the client must type by code, not by text).
    refuse_with: Option<(StatusCode, &'static str)>,
    append_delay_ms: u64,
    /// Cut the next subscription after this many event lines.
    cut_after: Option<usize>,
    subscribe_froms: Vec<u64>,
    /// Stream reads answered.
    stream_reads: usize,
    /// When set, the proof text every proof request gets.
    proof_text: Option<String>,
}

type Shared = Arc<Mutex<Stub>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Stub> {
    shared
        .lock()
        .expect("stub lock poisoned by a panicking handler")
}

fn error(status: StatusCode, code: &str, actual_offset: Option<u64>) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: code.to_string(),
            message: format!("stub says {code}"),
            actual_offset,
            shred_position: None,
            original_offset: None,
        },
    };
    (status, Json(body)).into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value == format!("Bearer {TOKEN}"))
}

async fn append(
    State(shared): State<Shared>,
    Path(stream): Path<u64>,
    headers: HeaderMap,
    Json(request): Json<AppendRequest>,
) -> Response {
    if !authorized(&headers) {
        return error(StatusCode::UNAUTHORIZED, api::code::UNAUTHORIZED, None);
    }
    let Some(key) = request.idempotency.clone() else {
        return error(StatusCode::BAD_REQUEST, api::code::BAD_REQUEST, None);
    };
    let delay = {
        let mut stub = lock(&shared);
        stub.requests += 1;
        if !stub.in_flight.insert(key.session.clone()) {
            stub.overlaps += 1;
        }
        stub.append_delay_ms
    };
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let mut stub = lock(&shared);
    stub.in_flight.remove(&key.session);
    if let Some((status, code)) = stub.refuse_with {
        let body = ErrorBody {
            error: ErrorDetail {
                code: code.to_string(),
                message: "not found: wrong expected offset, idempotency key reused".to_string(),
                actual_offset: None,
                shred_position: None,
                original_offset: None,
            },
        };
        return (status, Json(body)).into_response();
    }
    let answer = apply(&mut stub, stream, request, (key.session, key.request));
    if answer.status().is_success() && stub.fail_after_apply > 0 {
        stub.fail_after_apply -= 1;
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            api::code::INDETERMINATE,
            None,
        );
    }
    answer
}

fn apply(stub: &mut Stub, stream: u64, request: AppendRequest, key: (String, u64)) -> Response {
    if let Some(receipt) = stub.receipts.get(&key) {
        let mut receipt = receipt.clone();
        receipt.duplicate = true;
        return Json(receipt).into_response();
    }
    let length = stub.streams.get(&stream).copied().unwrap_or(0);
    if stub.conflict
        || request
            .expected_offset
            .is_some_and(|expected| expected != length)
    {
        return error(
            StatusCode::CONFLICT,
            api::code::WRONG_EXPECTED_OFFSET,
            Some(length),
        );
    }
    if stub
        .last_request
        .get(&key.0)
        .is_some_and(|&last| last >= key.1)
    {
        stub.reorders += 1;
    }
    stub.last_request.insert(key.0.clone(), key.1);
    let first_position = stub.log.len() as u64;
    for (index, event) in request.events.iter().enumerate() {
        stub.log.push(LogEvent {
            position: first_position + index as u64,
            stream,
            offset: length + index as u64,
            base64: event.base64.clone().unwrap_or_default(),
            salt: String::new(),
            ..Default::default()
        });
    }
    let count = request.events.len() as u64;
    stub.streams.insert(stream, length + count);
    let receipt = AppendReceipt {
        stream,
        first_offset: length,
        next_offset: length + count,
        first_position,
        op: first_position + 1,
        duplicate: false,
        certificate: "stub certificate".to_string(),
        proofs: vec!["stub proof".to_string(); request.events.len()],
        salts: Vec::new(),
    };
    stub.receipts.insert(key, receipt.clone());
    stub.applied += 1;
    Json(receipt).into_response()
}

#[derive(Debug, Deserialize)]
struct Page {
    from: u64,
    max: Option<u64>,
    to: Option<u64>,
}

async fn read_stream(
    State(shared): State<Shared>,
    Path(stream): Path<u64>,
    Query(page): Query<Page>,
) -> Response {
    let mut stub = lock(&shared);
    stub.stream_reads += 1;
    if !stub.streams.contains_key(&stream) {
        return error(StatusCode::NOT_FOUND, api::code::NOT_FOUND, None);
    }
    let max = page.max.unwrap_or(api::READ_EVENTS_MAX) as usize;
    let events: Vec<LogEvent> = stub
        .log
        .iter()
        .filter(|event| event.stream == stream && event.offset >= page.from)
        .take(max)
        .cloned()
        .collect();
    let next_offset = events.last().map_or(page.from, |event| event.offset + 1);
    Json(StreamEvents {
        stream,
        events,
        next_offset,
    })
    .into_response()
}

async fn read_log(State(shared): State<Shared>, Query(page): Query<Page>) -> Response {
    let stub = lock(&shared);
    let max = page.max.unwrap_or(api::READ_EVENTS_MAX) as usize;
    let events: Vec<LogEvent> = stub
        .log
        .iter()
        .skip(page.from as usize)
        .take(max)
        .cloned()
        .collect();
    let next_position = page.from + events.len() as u64;
    Json(LogEvents {
        events,
        next_position,
    })
    .into_response()
}

async fn proof(State(shared): State<Shared>, Path((stream, offset)): Path<(u64, u64)>) -> Response {
    let length = lock(&shared).streams.get(&stream).copied().unwrap_or(0);
    if offset >= length {
        return error(StatusCode::NOT_FOUND, api::code::NOT_FOUND, None);
    }
    let served = lock(&shared).proof_text.clone();
    Json(ProofAnswer {
        proof: served.unwrap_or_else(|| format!("proof of {stream}/{offset}")),
    })
    .into_response()
}

async fn consistency(State(shared): State<Shared>, Query(page): Query<Page>) -> Response {
    let size = lock(&shared).log.len() as u64;
    Json(ConsistencyAnswer {
        from: page.from,
        to: page.to.unwrap_or(size),
        hashes: vec!["00".repeat(32)],
        certificate: "stub certificate".to_string(),
    })
    .into_response()
}

async fn certificate(State(shared): State<Shared>) -> Response {
    let size = lock(&shared).log.len() as u64;
    Json(CertificateAnswer {
        size,
        certificate: "stub certificate".to_string(),
    })
    .into_response()
}

async fn health(State(shared): State<Shared>) -> Response {
    let events = lock(&shared).log.len() as u64;
    Json(Health {
        status: "normal".to_string(),
        replica: 0,
        replica_count: 1,
        view: 0,
        primary: 0,
        is_primary: true,
        commit: events,
        op: events,
        events,
    })
    .into_response()
}

/// Where one stub subscription is.
struct Feed {
    shared: Shared,
    next: u64,
    sent: usize,
    cut_after: Option<usize>,
    idle_polls: u32,
    done: bool,
}

async fn subscribe(State(shared): State<Shared>, Query(page): Query<Page>) -> Response {
    let cut_after = {
        let mut stub = lock(&shared);
        stub.subscribe_froms.push(page.from);
        stub.cut_after.take()
    };
    let feed = Feed {
        shared,
        next: page.from,
        sent: 0,
        cut_after,
        idle_polls: 0,
        done: false,
    };
    let lines = futures_util::stream::unfold(feed, |mut feed| async move {
        let line = next_line(&mut feed).await?;
        Some((line, feed))
    });
    axum::body::Body::from_stream(lines).into_response()
}

/// The next NDJSON line of a stub subscription, an error that cuts it, or
/// its end after [`STUB_SUBSCRIBE_POLLS_MAX`] idle polls.
async fn next_line(feed: &mut Feed) -> Option<Result<Bytes, std::io::Error>> {
    if feed.done {
        return None;
    }
    if feed.cut_after == Some(feed.sent) {
        feed.done = true;
        // Let hyper flush the lines already written before the cut.
        tokio::time::sleep(Duration::from_millis(50)).await;
        return Some(Err(std::io::Error::other("stub cuts the subscription")));
    }
    while feed.idle_polls < STUB_SUBSCRIBE_POLLS_MAX {
        let event = lock(&feed.shared).log.get(feed.next as usize).cloned();
        if let Some(event) = event {
            feed.next += 1;
            feed.sent += 1;
            let mut line = serde_json::to_vec(&event).expect("a log event serializes");
            line.push(b'\n');
            return Some(Ok(Bytes::from(line)));
        }
        feed.idle_polls += 1;
        if feed.idle_polls.is_multiple_of(STUB_HEARTBEAT_POLLS) {
            let beat = Heartbeat {
                heartbeat: true,
                next_position: feed.next,
            };
            let mut line = serde_json::to_vec(&beat).expect("a heartbeat serializes");
            line.push(b'\n');
            return Some(Ok(Bytes::from(line)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/v1/streams/{stream}/append", post(append))
        .route("/v1/streams/{stream}/events", get(read_stream))
        .route("/v1/streams/{stream}/events/{offset}/proof", get(proof))
        .route("/v1/log", get(read_log))
        .route("/v1/subscribe", get(subscribe))
        .route("/v1/consistency", get(consistency))
        .route("/v1/certificate", get(certificate))
        .route("/v1/health", get(health))
        .with_state(shared)
}

/// Serves a fresh stub on the current runtime; returns its state and URL.
async fn start_stub() -> (Shared, String) {
    let shared = Shared::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a stub port");
    let address = listener.local_addr().expect("stub address");
    let app = router(shared.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (shared, format!("http://{address}"))
}

/// A port nothing listens on: bound, then released.
fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = listener.local_addr().expect("address");
    drop(listener);
    format!("http://{address}")
}

/// A replica that dies mid-request: it reads the request, then hangs up.
async fn start_hang_up() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a port");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        // Bounded: a test makes only a few connections.
        for _ in 0..64 {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = vec![0u8; 64 * 1024];
            let read = tokio::io::AsyncReadExt::read(&mut socket, &mut buffer);
            let _ = tokio::time::timeout(Duration::from_secs(2), read).await;
        }
    });
    format!("http://{address}")
}

fn config(endpoints: Vec<String>) -> ClientConfig {
    ClientConfig {
        request_timeout_ms: 2_000,
        retries_max: 5,
        retry_delay_ms: 10,
        subscribe_idle_ms: 2_000,
        ..ClientConfig::new(endpoints, TOKEN)
    }
}

fn client(endpoints: Vec<String>) -> Client {
    Client::new(config(endpoints)).expect("valid client config")
}

fn events(texts: &[&str]) -> Vec<Bytes> {
    texts
        .iter()
        .map(|text| Bytes::copy_from_slice(text.as_bytes()))
        .collect()
}

fn decode(event: &LogEvent) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(&event.base64)
        .expect("stub stores valid base64")
}

async fn bounded<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, work)
        .await
        .expect("the call finished within the bound")
}

// Goal: an append returns its receipt, the expected offset is honoured, and
// every read call decodes the stub's answers.
#[tokio::test]
async fn append_happy_path_and_reads() {
    let (shared, url) = start_stub().await;
    let client = client(vec![url.clone()]);
    let first = bounded(client.append(20, events(&["a", "b"]), None))
        .await
        .expect("first append");
    assert_eq!((first.first_offset, first.next_offset), (0, 2));
    assert!(!first.duplicate);
    let second = bounded(client.append(20, events(&["c"]), Some(2)))
        .await
        .expect("append at the expected offset");
    assert_eq!((second.first_offset, second.next_offset), (2, 3));
    assert_eq!(lock(&shared).applied, 2);

    let read = bounded(client.read_stream(20, 1, 10)).await.expect("read");
    let payloads: Vec<Vec<u8>> = read.events.iter().map(decode).collect();
    assert_eq!(payloads, vec![b"b".to_vec(), b"c".to_vec()]);
    assert_eq!(read.next_offset, 3);
    let log = bounded(client.read_log(0, 2)).await.expect("log");
    assert_eq!((log.events.len(), log.next_position), (2, 2));
    let proof = bounded(client.proof(20, 2)).await.expect("proof");
    assert_eq!(proof.proof, "proof of 20/2");
    let missing = bounded(client.proof(20, 3)).await;
    assert!(
        matches!(missing, Err(ClientError::NotFound(_))),
        "{missing:?}"
    );
    let unknown = bounded(client.read_stream(21, 0, 10)).await;
    assert!(
        matches!(unknown, Err(ReadError::NotFound(_))),
        "{unknown:?}"
    );
    let consistency = bounded(client.consistency(1, Some(3)))
        .await
        .expect("proof");
    assert_eq!((consistency.from, consistency.to), (1, 3));
    let certificate = bounded(client.certificate()).await.expect("certificate");
    assert_eq!(certificate.size, 3);
    let health = bounded(client.health_all()).await;
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].0, url);
    assert_eq!(health[0].1.as_ref().map(|h| h.events), Ok(3));
}

// Goal: a 503 indeterminate after the stub applied the batch is retried with
// the same key, so the batch is written exactly once.
#[tokio::test]
async fn indeterminate_is_retried_with_the_same_key() {
    let (shared, url) = start_stub().await;
    lock(&shared).fail_after_apply = 2;
    let client = client(vec![url]);
    let receipt = bounded(client.append(20, events(&["once"]), None))
        .await
        .expect("append succeeds on the third attempt");
    assert!(
        receipt.duplicate,
        "the answer came from the stub's key table"
    );
    assert_eq!(receipt.next_offset, 1);
    let stub = lock(&shared);
    assert_eq!((stub.requests, stub.applied, stub.log.len()), (3, 1, 1));
}

// Goal: when every attempt may have reached a primary the outcome is
// Indeterminate; when none could have it is Unavailable.
#[tokio::test]
async fn exhausted_retries_say_whether_anything_may_be_written() {
    let (shared, url) = start_stub().await;
    lock(&shared).fail_after_apply = 100;
    let result = bounded(client(vec![url]).append(20, events(&["x"]), None)).await;
    assert!(
        matches!(result, Err(AppendError::Indeterminate(_))),
        "{result:?}"
    );
    let (requests, applied) = {
        let stub = lock(&shared);
        (stub.requests, stub.applied)
    };
    assert_eq!((requests, applied), (6, 1), "1 + retries_max attempts");

    let dead = bounded(client(vec![dead_endpoint()]).append(20, events(&["x"]), None)).await;
    assert!(matches!(dead, Err(AppendError::Unavailable(_))), "{dead:?}");
    let hang_up = start_hang_up().await;
    let cut = bounded(client(vec![hang_up]).append(20, events(&["x"]), None)).await;
    assert!(matches!(cut, Err(AppendError::Indeterminate(_))), "{cut:?}");
}

// Goal: a dead endpoint and one that hangs up mid-request are skipped, and
// the client then starts at the endpoint that worked.
#[tokio::test]
async fn rotation_skips_dead_endpoints() {
    let (shared, url) = start_stub().await;
    let hang_up = start_hang_up().await;
    let client = client(vec![dead_endpoint(), hang_up, url]);
    let receipt = bounded(client.append(20, events(&["a"]), None))
        .await
        .expect("third endpoint works");
    assert_eq!(receipt.next_offset, 1);
    assert_eq!(lock(&shared).requests, 1);
    assert_eq!(
        client
            .inner
            .preferred
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    bounded(client.append(20, events(&["b"]), None))
        .await
        .expect("second append");
    let read = bounded(client.read_stream(20, 0, 10)).await.expect("read");
    assert_eq!(read.events.len(), 2);
    assert_eq!(
        lock(&shared).requests,
        2,
        "went straight to the working endpoint"
    );
}

// Goal: definite refusals (409, 401) are answered at once, never retried, and a 409
// `wrong_expected_offset` comes back as the typed variant with the expected offset
// (the request's) and the actual one (the answer's `actual_offset`).
#[tokio::test]
async fn refusals_are_not_retried() {
    let (shared, url) = start_stub().await;
    let client = client(vec![url.clone()]);
    let result = bounded(client.append(20, events(&["a"]), Some(5))).await;
    assert_eq!(
        result,
        Err(AppendError::WrongExpectedOffset {
            stream: 20,
            expected: 5,
            actual: 0
        })
    );
    bounded(client.append(20, events(&["a", "b"]), Some(0)))
        .await
        .expect("append at 0");
    let result = bounded(client.append(20, events(&["c"]), Some(1))).await;
    match result {
        Err(AppendError::WrongExpectedOffset {
            stream,
            expected,
            actual,
        }) => assert_eq!((stream, expected, actual), (20, 1, 2)),
        other => panic!("expected the typed 409, got {other:?}"),
    }
    lock(&shared).conflict = true;
    let result = bounded(client.append(20, events(&["a"]), None)).await;
    assert!(matches!(
        result,
        Err(AppendError::WrongExpectedOffset { .. })
    ));
    assert_eq!(lock(&shared).requests, 4, "one request per append");

    let wrong_token = Client::new(ClientConfig {
        token: "wrong".to_string(),
        ..config(vec![url])
    })
    .expect("client");
    let result = bounded(wrong_token.append(20, events(&["a"]), None)).await;
    assert!(
        matches!(result, Err(AppendError::Unauthorized(_))),
        "{result:?}"
    );
    let stub = lock(&shared);
    assert_eq!((stub.requests, stub.applied), (4, 1));
}

// Goal: an append's error is typed by the answer's `code`, never by its message: the
// stub's message names other errors on purpose. A reused key comes back with the key
// the client sent; a 5xx `storage` is retried and ends as Indeterminate.
#[tokio::test]
async fn append_errors_are_typed_by_code_not_message() {
    let (shared, url) = start_stub().await;
    let client = client(vec![url]);
    let key = api::IdempotencyKey {
        session: format!("{:032x}", 0xabcu128),
        request: 3,
    };
    lock(&shared).refuse_with = Some((
        StatusCode::UNPROCESSABLE_ENTITY,
        api::code::IDEMPOTENCY_KEY_REUSED,
    ));
    let result = bounded(client.append_with_key(20, events(&["a"]), None, key.clone())).await;
    assert_eq!(
        result,
        Err(AppendError::IdempotencyKeyReused {
            stream: 20,
            key: key.clone()
        })
    );
    let refusals = [
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            api::code::REFUSED,
            api::ErrorCode::Refused,
        ),
        (
            StatusCode::BAD_REQUEST,
            api::code::BAD_REQUEST,
            api::ErrorCode::BadRequest,
        ),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            api::code::PAYLOAD_TOO_LARGE,
            api::ErrorCode::PayloadTooLarge,
        ),
    ];
    for (status, code, typed) in refusals {
        lock(&shared).refuse_with = Some((status, code));
        match bounded(client.append(20, events(&["a"]), None)).await {
            Err(AppendError::Refused { code, .. }) => assert_eq!(code, typed),
            other => panic!("{status} {code}: {other:?}"),
        }
    }
    lock(&shared).refuse_with = Some((StatusCode::FORBIDDEN, api::code::FORBIDDEN));
    let result = bounded(client.append(20, events(&["a"]), None)).await;
    assert!(
        matches!(result, Err(AppendError::Unauthorized(_))),
        "{result:?}"
    );
    let before = lock(&shared).requests;
    lock(&shared).refuse_with = Some((StatusCode::INTERNAL_SERVER_ERROR, api::code::STORAGE));
    let result = bounded(client.append(20, events(&["a"]), None)).await;
    assert!(
        matches!(result, Err(AppendError::Indeterminate(_))),
        "{result:?}"
    );
    let stub = lock(&shared);
    assert_eq!(
        stub.requests - before,
        6,
        "a 5xx is retried: 1 + retries_max attempts"
    );
    assert_eq!(stub.applied, 0, "nothing was written");
}

// Goal: concurrent appends never put two requests of one session in flight,
// request numbers only increase, and sessions are reused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_use_distinct_sessions() {
    let (shared, url) = start_stub().await;
    lock(&shared).append_delay_ms = 30;
    let client = client(vec![url]);
    let tasks: Vec<_> = (0..16)
        .map(|index| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .append(20 + index, events(&["concurrent"]), None)
                    .await
            })
        })
        .collect();
    for task in tasks {
        let result = bounded(task).await.expect("task did not panic");
        assert_eq!(result.map(|receipt| receipt.next_offset), Ok(1));
    }
    let sessions = lock(&shared).last_request.len();
    assert!(sessions > 1, "concurrent appends shared one session");
    for _ in 0..8 {
        bounded(client.append(20, events(&["sequential"]), None))
            .await
            .expect("sequential append");
    }
    let stub = lock(&shared);
    assert_eq!((stub.overlaps, stub.reorders, stub.applied), (0, 0, 24));
    assert_eq!(
        stub.last_request.len(),
        sessions,
        "idle sessions are reused"
    );
}

// Goal: persist_blocking works from a plain thread, on the persister's own runtime.
#[test]
fn persist_blocking_from_a_plain_thread() {
    let server = tokio::runtime::Runtime::new().expect("server runtime");
    let (shared, url) = server.block_on(start_stub());
    let persister = ClientPersister::new(client(vec![url])).expect("persister");
    let first = persister.persist_blocking(StreamId(20), events(&["a", "b"]));
    assert_eq!(first, Ok(Offset(2)));
    let second = persister.persist_blocking(StreamId(20), events(&["c"]));
    assert_eq!(second, Ok(Offset(3)));
    assert_eq!(lock(&shared).applied, 2);
}

// Goal: persist_blocking works inside a multi-thread runtime task
// (block_in_place), and dropping the persister there does not panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persist_blocking_inside_a_multi_thread_runtime() {
    let (shared, url) = start_stub().await;
    let persister = ClientPersister::new(client(vec![url])).expect("persister");
    let task = tokio::spawn(async move {
        let offset = persister.persist_blocking(StreamId(20), events(&["a"]));
        drop(persister);
        offset
    });
    let offset = bounded(task).await.expect("task did not panic");
    assert_eq!(offset, Ok(Offset(1)));
    assert_eq!(lock(&shared).applied, 1);
}

// Goal: on a current-thread runtime persist_blocking refuses with an error
// (never a panic) and sends nothing.
#[tokio::test]
async fn persist_blocking_on_a_current_thread_runtime_is_an_error() {
    let (shared, url) = start_stub().await;
    let persister = ClientPersister::new(client(vec![url])).expect("persister");
    let result = persister.persist_blocking(StreamId(20), events(&["a"]));
    match result {
        Err(PersistError::StorageError(message)) => {
            assert!(message.contains("current-thread"), "{message}")
        }
        other => panic!("expected a storage error, got {other:?}"),
    }
    drop(persister);
    assert_eq!(lock(&shared).requests, 0);
}

// Goal: a subscription gets catch-up then live events, and after the stub
// cuts it mid-stream resumes at the next position with no gap or repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_catches_up_goes_live_and_resumes_after_a_cut() {
    let (shared, url) = start_stub().await;
    let client = client(vec![dead_endpoint(), url]);
    for index in 0..5 {
        let text = format!("event {index}");
        bounded(client.append(20, events(&[text.as_str()]), None))
            .await
            .expect("append");
    }
    lock(&shared).cut_after = Some(3);
    let mut subscription = Box::pin(client.subscribe(0));
    let mut seen = Vec::new();
    for _ in 0..5 {
        let event = bounded(subscription.next()).await.expect("stream open");
        seen.push(event.expect("event"));
    }
    for index in 5..10 {
        let text = format!("event {index}");
        bounded(client.append(21, events(&[text.as_str()]), None))
            .await
            .expect("live append");
    }
    for _ in 5..10 {
        let event = bounded(subscription.next()).await.expect("stream open");
        seen.push(event.expect("event"));
    }
    let positions: Vec<u64> = seen.iter().map(|event| event.position).collect();
    assert_eq!(positions, (0..10).collect::<Vec<u64>>());
    for (index, event) in seen.iter().enumerate() {
        assert_eq!(decode(event), format!("event {index}").into_bytes());
    }
    assert_eq!(
        lock(&shared).subscribe_froms,
        vec![0, 3],
        "resumed after the cut"
    );
}

// Goal: a subscription with no live endpoint gives up after the bounded
// reconnects with Unavailable, then ends.
#[tokio::test]
async fn subscribe_gives_up_after_bounded_reconnects() {
    let client = client(vec![dead_endpoint(), dead_endpoint()]);
    let mut subscription = Box::pin(client.subscribe(0));
    let first = bounded(subscription.next()).await;
    assert!(
        matches!(first, Some(Err(ClientError::Unavailable(_)))),
        "{first:?}"
    );
    assert!(bounded(subscription.next()).await.is_none());
}

// Goal: bad configurations are refused before anything is sent.
#[test]
fn bad_configurations_are_refused() {
    let cases: Vec<(Vec<String>, Option<Vec<u8>>)> = vec![
        (vec![], None),
        (vec!["ftp://x".to_string()], None),
        (vec!["https://127.0.0.1:1".to_string()], None),
        (
            vec!["https://127.0.0.1:1".to_string()],
            Some(b"not a pem".to_vec()),
        ),
    ];
    for (endpoints, ca_pem) in cases {
        let config = ClientConfig {
            ca_pem,
            ..ClientConfig::new(endpoints.clone(), TOKEN)
        };
        let result = Client::new(config);
        assert!(
            matches!(result, Err(ClientError::Local(_))),
            "{endpoints:?}"
        );
    }
}

/// A test PKI: the CA's PEM, and a 127.0.0.1 server certificate and key.
struct TestPki {
    ca_pem: String,
    cert: rustls_pki_types::CertificateDer<'static>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
}

fn test_pki() -> TestPki {
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().expect("server key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
    let cert = params.signed_by(&key, &issuer).expect("server cert");
    TestPki {
        ca_pem: ca_cert.pem(),
        cert: cert.der().clone(),
        key: rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    }
}

/// The ALPN protocol each TLS connection to a stub negotiated (None: none).
type Negotiated = Arc<Mutex<Vec<Option<Vec<u8>>>>>;

/// Serves a fresh stub over TLS with `pki`'s server certificate, offering
/// `alpn` and speaking HTTP/2 or HTTP/1.1 as negotiated.
async fn start_tls_stub(pki: &TestPki, alpn: &[&[u8]]) -> (Shared, String, Negotiated) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .expect("server tls config");
    tls.alpn_protocols = alpn.iter().map(|id| id.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a stub port");
    let address = listener.local_addr().expect("stub address");
    let shared = Shared::default();
    let negotiated = Negotiated::default();
    let app = router(shared.clone());
    let seen = negotiated.clone();
    tokio::spawn(async move {
        // Bounded: a test makes only a few connections.
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app, seen) = (acceptor.clone(), app.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let protocol = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                let http2 = protocol.as_deref() == Some(b"h2");
                seen.lock().expect("negotiated lock").push(protocol);
                let service = hyper_util::service::TowerToHyperService::new(app);
                let io = hyper_util::rt::TokioIo::new(stream);
                let executor = hyper_util::rt::TokioExecutor::new();
                let builder = hyper_util::server::conn::auto::Builder::new(executor);
                let builder = match http2 {
                    true => builder.http2_only(),
                    false => builder.http1_only(),
                };
                let _ = builder.serve_connection(io, service).await;
            });
        }
    });
    (shared, format!("https://{address}"), negotiated)
}

// Goal: the client speaks HTTP/2 to a server that offers it (ALPN h2, both
// calls over one connection) and HTTP/1.1 to one that offers only
// http/1.1, with the same results.
#[tokio::test]
async fn https_uses_http2_when_offered_else_http1() {
    let pki = test_pki();
    for (offered, expected) in [
        (&[&b"h2"[..], b"http/1.1"][..], &b"h2"[..]),
        (&[&b"http/1.1"[..]][..], &b"http/1.1"[..]),
    ] {
        let (_shared, url, negotiated) = start_tls_stub(&pki, offered).await;
        let client = Client::new(ClientConfig {
            ca_pem: Some(pki.ca_pem.clone().into_bytes()),
            ..config(vec![url])
        })
        .expect("client with the CA");
        let receipt = bounded(client.append(21, events(&["a", "b"]), None))
            .await
            .expect("append over https");
        assert_eq!(receipt.next_offset, 2);
        let read = bounded(client.read_stream(21, 0, 10)).await.expect("read");
        assert_eq!(read.events.len(), 2);
        let seen = negotiated.lock().expect("negotiated lock").clone();
        assert!(!seen.is_empty());
        if expected == b"h2" {
            assert_eq!(seen.len(), 1, "one multiplexed connection: {seen:?}");
        }
        assert!(
            seen.iter().all(|p| p.as_deref() == Some(expected)),
            "offered {offered:?}: negotiated {seen:?}"
        );
    }
}

// Goal: over https the client trusts the configured CA, and only it.
#[tokio::test]
async fn https_trusts_only_the_configured_ca() {
    let pki = test_pki();
    let (shared, url, _) = start_tls_stub(&pki, &[b"h2", b"http/1.1"]).await;
    let trusting = Client::new(ClientConfig {
        ca_pem: Some(pki.ca_pem.clone().into_bytes()),
        ..config(vec![url.clone()])
    })
    .expect("client with the CA");
    let receipt = bounded(trusting.append(20, events(&["tls"]), None))
        .await
        .expect("append over https");
    assert_eq!(receipt.next_offset, 1);

    let other = test_pki();
    let distrusting = Client::new(ClientConfig {
        ca_pem: Some(other.ca_pem.into_bytes()),
        retries_max: 1,
        ..config(vec![url])
    })
    .expect("client with another CA");
    let result = bounded(distrusting.read_log(0, 10)).await;
    assert!(matches!(result, Err(ReadError::Transport(_))), "{result:?}");
    assert_eq!(lock(&shared).applied, 1);
}

// Goal: the client refuses, before sending anything, every number the server refuses
// (above i64::MAX, or a page above READ_EVENTS_MAX), naming the field.
#[tokio::test]
async fn numbers_the_server_refuses_are_refused_before_sending() {
    fn ok<T>(_: T) {}
    // Nothing listens there: a request that were sent would be Unavailable, not Refused.
    let client = Client::new(config(vec!["http://127.0.0.1:9".to_string()])).expect("client");
    let huge = u64::MAX;
    let above = crate::bounds::EDGE_INTEGER_MAX + 1;
    let refused = |what: &str, result: Result<(), ClientError>, field: &str| match result {
        Err(ClientError::Refused {
            code: api::ErrorCode::BadRequest,
            message,
        }) => {
            assert!(
                message.starts_with(&format!("{field}: ")),
                "{what}: {message}"
            )
        }
        other => panic!("{what}: expected a refusal naming {field}, got {other:?}"),
    };
    refused(
        "append stream",
        client
            .append(huge, vec![Bytes::from("x")], None)
            .await
            .map(ok)
            .map_err(ClientError::from),
        "stream",
    );
    refused(
        "append expected",
        client
            .append(1, vec![Bytes::from("x")], Some(above))
            .await
            .map(ok)
            .map_err(ClientError::from),
        "expected_offset",
    );
    refused(
        "read stream",
        client
            .read_stream(above, 0, 10)
            .await
            .map(ok)
            .map_err(ClientError::from),
        "stream",
    );
    refused(
        "read from",
        client
            .read_stream(1, huge, 10)
            .await
            .map(ok)
            .map_err(ClientError::from),
        "from",
    );
    refused(
        "read max",
        client
            .read_stream(1, 0, api::READ_EVENTS_MAX + 1)
            .await
            .map(ok)
            .map_err(ClientError::from),
        "max",
    );
    refused(
        "log from",
        client
            .read_log(above, 10)
            .await
            .map(ok)
            .map_err(ClientError::from),
        "from",
    );
    refused("proof", client.proof(1, huge).await.map(ok), "offset");
    refused(
        "consistency",
        client.consistency(0, Some(above)).await.map(ok),
        "to",
    );
    refused(
        "audit",
        client.export_audit(Some(huge), None, None).await.map(ok),
        "from_ns",
    );
    let export = api::ExportEventsRequest {
        stream: above,
        from: 0,
        to: 1,
        purpose: None,
    };
    refused(
        "export",
        client.export_events(&export).await.map(ok),
        "stream",
    );
    let record = api::VerificationRecord {
        scope: "s".into(),
        passed: true,
        report_sha256: "a".repeat(64),
        checkpoint_size: Some(huge),
    };
    refused(
        "verification",
        client.record_verification(&record).await.map(ok),
        "checkpoint_size",
    );
    let first = Box::pin(client.subscribe(above))
        .next()
        .await
        .expect("one item");
    refused("subscribe", first.map(ok), "from");
}

// Goal: with `spread_reads`, stream reads go round robin over every
// endpoint while appends stay on one; without it, reads stay where the
// last answer came from.
#[tokio::test]
async fn spread_reads_rotate_over_every_endpoint_and_writes_do_not() {
    let mut stubs = Vec::new();
    for _ in 0..3 {
        let (shared, url) = start_stub().await;
        bounded(client(vec![url.clone()]).append(20, events(&["a"]), None))
            .await
            .expect("seed");
        stubs.push((shared, url));
    }
    let urls: Vec<String> = stubs.iter().map(|(_, url)| url.clone()).collect();
    let mut spread = config(urls.clone());
    spread.spread_reads = true;
    let spread = Client::new(spread).expect("client");
    for _ in 0..9 {
        bounded(spread.read_stream(20, 0, 1)).await.expect("read");
    }
    let reads: Vec<usize> = stubs.iter().map(|(s, _)| lock(s).stream_reads).collect();
    assert_eq!(reads, vec![3, 3, 3], "round robin");
    let before: Vec<usize> = stubs.iter().map(|(s, _)| lock(s).requests).collect();
    for _ in 0..3 {
        bounded(spread.append(20, events(&["b"]), None))
            .await
            .expect("append");
    }
    let grew: Vec<usize> = stubs
        .iter()
        .zip(&before)
        .map(|((s, _), b)| lock(s).requests - b)
        .collect();
    assert_eq!(grew.iter().sum::<usize>(), 3);
    assert!(grew.contains(&3), "appends stay on one endpoint: {grew:?}");
    let plain = client(urls);
    for _ in 0..3 {
        bounded(plain.read_stream(20, 0, 1)).await.expect("read");
    }
    let after: Vec<usize> = stubs.iter().map(|(s, _)| lock(s).stream_reads).collect();
    let plain_reads: Vec<usize> = after.iter().zip(&reads).map(|(a, b)| a - b).collect();
    assert!(plain_reads.contains(&3), "one endpoint: {plain_reads:?}");
}

/// A one-replica log's proof of stream 16 offset 1 (of two events) and the
/// log's policy, for the witnessed-proof tests.
fn real_proof() -> (String, vellum_audit::policy::Policy) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    crate::init::init_data_dir(&data, None).expect("init");
    let options = crate::log::LogOptions {
        lock_wait_ms: 10_000,
        ..crate::log::LogOptions::default()
    };
    let (log, _) = crate::log::LocalLog::open(&data, options).expect("open");
    let appended = log
        .append(16, &events(&["{\"a\":0}", "{\"a\":1}"]), None, None)
        .expect("append");
    let receipt = crate::log::receipt(&log, &appended).expect("receipt");
    log.close().expect("close");
    let policy = vellum_audit::policy::Policy::parse(
        &std::fs::read_to_string(data.join("policy.txt")).expect("policy"),
    )
    .expect("policy parses");
    (receipt.proofs[1].clone(), policy)
}

// Goal: `witnessed_proof` waits while the served proof lacks the witness
// quorum and returns it once a cosigned one is served; it gives up after its
// wait (`NotWitnessed`) on a bare proof, and refuses at once a proof whose
// cosignature fails (naming the witness) or whose leaf is another event.
#[tokio::test]
async fn witnessed_proof_waits_for_cosignatures_and_refuses_forged_ones() {
    use super::WitnessedProofError;
    use vellum_audit::proof::InclusionProof;
    let (bare, policy) = real_proof();
    let witness =
        vellum_audit::cosignature::Cosigner::from_seed("witness.test/w1", [4; 32]).expect("name");
    let witnessed = policy
        .clone()
        .with_cosigners(vec![witness.key()], 1)
        .expect("policy");
    let mut proof = InclusionProof::parse(&bare).expect("proof");
    let line = witness
        .cosign(&proof.checkpoint.note.text, 1_700_000_000)
        .expect("cosigns");
    proof.checkpoint.note.signatures.push(line);
    let cosigned = proof.encode();
    let last = proof.checkpoint.note.signatures.last_mut().expect("line");
    last.signature[30] ^= 0x01;
    let forged = proof.encode();

    let (shared, url) = start_stub().await;
    {
        let mut stub = lock(&shared);
        stub.streams.insert(16, 2);
        stub.proof_text = Some(bare.clone());
    }
    let client = client(vec![url]);
    match client.witnessed_proof(16, 1, &witnessed, 300).await {
        Err(WitnessedProofError::NotWitnessed {
            needed: 1,
            valid: 0,
            waited_ms,
            ..
        }) => assert!(waited_ms >= 300, "{waited_ms}"),
        other => panic!("bare proof: {other:?}"),
    }
    // The replica-only policy takes the bare proof at once.
    let plain = client
        .witnessed_proof(16, 1, &policy, 0)
        .await
        .expect("replica quorum is enough without cosigners");
    assert!(plain.certificate.cosigners.is_empty());

    // The cosignature arrives while it waits.
    let later = shared.clone();
    let cosigned_text = cosigned.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        lock(&later).proof_text = Some(cosigned_text);
    });
    let got = client
        .witnessed_proof(16, 1, &witnessed, 20_000)
        .await
        .expect("cosigned proof");
    assert_eq!(got.text, cosigned);
    assert_eq!(got.certificate.cosigners.len(), 1);
    assert_eq!((got.leaf.stream, got.leaf.stream_offset), (16, 1));

    lock(&shared).proof_text = Some(forged);
    let started = std::time::Instant::now();
    match client.witnessed_proof(16, 1, &witnessed, 20_000).await {
        Err(WitnessedProofError::Rejected { reason, .. }) => {
            assert!(reason.contains("witness.test/w1+"), "{reason}")
        }
        other => panic!("forged cosignature: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );

    lock(&shared).proof_text = Some(cosigned);
    match client.witnessed_proof(16, 0, &witnessed, 20_000).await {
        Err(WitnessedProofError::Rejected { reason, .. }) => {
            assert!(reason.contains("stream 16 offset 1"), "{reason}")
        }
        other => panic!("another event's proof: {other:?}"),
    }
}
