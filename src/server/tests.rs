//! Unit tests of the client API server against an in-memory [`FakeNode`]:
//! each route's happy path, every kind of bad input on every endpoint (a
//! JSON 4xx naming the problem, never a 5xx), node failures, subscriptions,
//! forwarding to the primary, metrics, the OpenAPI document and one TLS
//! end-to-end round trip.

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use super::auth::{Action, Role, TokenStore, generate_token, token_line};
use super::node::{AppendCall, Node, NodeError, NodeMetrics};
use super::routes::{AppState, ROUTES, router};
use crate::api::{self, AppendReceipt, ConsistencyAnswer, ErrorBody, Health, LogEvent};

const WRITER: &str = "vlm_writer_token";
const READER: &str = "vlm_reader_token";
const AUDITOR: &str = "vlm_auditor_token";
/// Every wait in these tests ends within this time.
const WAIT: Duration = Duration::from_secs(10);

/// How the fake answers appends (and, for `Panic`, every call that can fail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Normal,
    NotPrimary(Option<u8>),
    Indeterminate,
    Storage,
    Panic,
}

#[derive(Debug, Default)]
struct FakeState {
    streams: BTreeMap<u64, Vec<Bytes>>,
    log: Vec<LogEvent>,
    mode: Mode,
    last_max: Option<u64>,
    trail: Vec<vellum_compliance::trail::AccessEvent>,
    /// Refuse to record the trail (the answer must then be withheld).
    trail_down: bool,
}

/// An in-memory node: streams, a global log, and a switch for failures.
#[derive(Debug, Default)]
struct FakeNode {
    state: Mutex<FakeState>,
    grew: Condvar,
}

impl FakeNode {
    fn set_mode(&self, mode: Mode) {
        self.state.lock().expect("fake lock").mode = mode;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake lock")
    }

    fn fail(&self) -> Result<(), NodeError> {
        // Copy the mode out first: panicking with the lock held would poison it.
        let mode = self.lock().mode;
        match mode {
            Mode::Normal => Ok(()),
            Mode::NotPrimary(primary) => Err(NodeError::NotPrimary {
                replica: 0,
                primary,
            }),
            Mode::Indeterminate => Err(NodeError::Indeterminate("view change".into())),
            Mode::Storage => Err(NodeError::Storage("disk on fire".into())),
            Mode::Panic => panic!("fake node told to panic"),
        }
    }

    /// Appends directly (as if committed by another replica).
    fn push(&self, stream: u64, payload: &[u8]) {
        let mut state = self.lock();
        let position = state.log.len() as u64;
        let events = state.streams.entry(stream).or_default();
        let offset = events.len() as u64;
        events.push(Bytes::copy_from_slice(payload));
        let base64 = base64::engine::general_purpose::STANDARD.encode(payload);
        state.log.push(LogEvent {
            position,
            stream,
            offset,
            base64,
            salt: String::new(),
        });
        drop(state);
        self.grew.notify_all();
    }
}

impl Node for FakeNode {
    fn health(&self) -> Health {
        let events = self.lock().log.len() as u64;
        Health {
            status: "normal".into(),
            replica: 0,
            replica_count: 3,
            view: 0,
            primary: 0,
            is_primary: true,
            commit: events,
            op: events,
            events,
        }
    }

    fn append(&self, call: AppendCall) -> Result<AppendReceipt, NodeError> {
        self.fail()?;
        if call.stream == 0 {
            return Err(NodeError::Refused("stream id 0 is reserved".into()));
        }
        let actual = self
            .lock()
            .streams
            .get(&call.stream)
            .map_or(0, |s| s.len() as u64);
        if let Some(expected) = call.expected_offset.filter(|e| *e != actual) {
            return Err(NodeError::WrongExpectedOffset {
                stream: call.stream,
                expected,
                actual,
            });
        }
        let first_position = self.lock().log.len() as u64;
        for payload in &call.events {
            self.push(call.stream, payload);
        }
        let count = call.events.len() as u64;
        Ok(AppendReceipt {
            stream: call.stream,
            first_offset: actual,
            next_offset: actual + count,
            first_position,
            op: first_position + 1,
            duplicate: false,
            certificate: "certificate".into(),
            proofs: (0..count).map(|i| format!("proof {i}")).collect(),
            salts: Vec::new(),
        })
    }

    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError> {
        self.fail()?;
        let mut state = self.lock();
        state.last_max = Some(max);
        if !state.streams.contains_key(&stream) {
            return Err(NodeError::NotFound(format!("no stream {stream}")));
        }
        let events = state
            .log
            .iter()
            .filter(|e| e.stream == stream && e.offset >= from);
        Ok(events.take(max as usize).cloned().collect())
    }

    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError> {
        self.fail()?;
        let mut state = self.lock();
        state.last_max = Some(max);
        let start = (from as usize).min(state.log.len());
        Ok(state.log[start..]
            .iter()
            .take(max as usize)
            .cloned()
            .collect())
    }

    fn committed_events(&self) -> u64 {
        self.lock().log.len() as u64
    }

    fn wait_events(&self, seen: u64, timeout_ms: u64) -> u64 {
        let guard = self.lock();
        let (guard, _) = self
            .grew
            .wait_timeout_while(guard, Duration::from_millis(timeout_ms), |s| {
                s.log.len() as u64 <= seen
            })
            .expect("fake lock");
        guard.log.len() as u64
    }

    fn proof(&self, stream: u64, offset: u64) -> Result<String, NodeError> {
        self.fail()?;
        let state = self.lock();
        match state.streams.get(&stream) {
            Some(events) if offset < events.len() as u64 => Ok(format!("proof {stream} {offset}")),
            _ => Err(NodeError::NotFound(format!(
                "no event {offset} in stream {stream}"
            ))),
        }
    }

    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, NodeError> {
        self.fail()?;
        let size = self.lock().log.len() as u64;
        let to = to.unwrap_or(size);
        if to > size {
            return Err(NodeError::Refused(format!(
                "tree size {to} is beyond {size}"
            )));
        }
        Ok(ConsistencyAnswer {
            from,
            to,
            hashes: vec!["00".repeat(32)],
            certificate: "certificate".into(),
        })
    }

    fn certificate(&self) -> Option<(u64, String)> {
        let size = self.lock().log.len() as u64;
        (size > 0).then(|| (size, "certificate".to_string()))
    }

    fn export_events(
        &self,
        call: crate::server::node::ExportCall,
    ) -> Result<Vec<(String, Vec<u8>)>, NodeError> {
        self.fail()?;
        let state = self.lock();
        let events = state
            .streams
            .get(&call.stream)
            .ok_or_else(|| NodeError::NotFound(format!("stream {} has no events", call.stream)))?;
        let lines: Vec<u8> = events
            .iter()
            .skip(call.from as usize)
            .take((call.to - call.from) as usize)
            .flat_map(|e| [e.to_vec(), b"\n".to_vec()].concat())
            .collect();
        Ok(vec![("events.ndjson".to_string(), lines)])
    }

    fn audit_records(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
        stream: Option<u64>,
    ) -> Result<(String, Vec<(vellum_compliance::trail::AccessEvent, u64)>), NodeError> {
        let state = self.lock();
        let records = (0u64..)
            .zip(state.trail.iter())
            .filter(|(_, e)| from_ns.is_none_or(|f| e.time_ns >= f))
            .filter(|(_, e)| to_ns.is_none_or(|t| e.time_ns < t))
            .filter(|(_, e)| stream.is_none_or(|s| e.stream == Some(s)))
            .map(|(position, e)| (e.clone(), position))
            .collect();
        Ok(("fake-replica".to_string(), records))
    }

    fn record_access(
        &self,
        events: Vec<vellum_compliance::trail::AccessEvent>,
    ) -> Result<(), NodeError> {
        let mut state = self.lock();
        if state.trail_down {
            return Err(NodeError::Unavailable("trail down".into()));
        }
        state.trail.extend(events);
        Ok(())
    }

    fn metrics(&self) -> NodeMetrics {
        NodeMetrics {
            commit: 7,
            events: self.lock().log.len() as u64,
            ..NodeMetrics::default()
        }
    }
}

fn tokens() -> TokenStore {
    let text = [
        token_line(WRITER, "alice", Role::Writer),
        token_line(READER, "bob", Role::Reader),
        token_line(AUDITOR, "carol", Role::Auditor),
    ]
    .join("\n");
    TokenStore::from_lines(&text).expect("valid tokens")
}

fn state_with(node: Arc<FakeNode>, peers: Vec<(u8, String)>) -> AppState {
    AppState::new(node, tokens(), peers, b"")
        .expect("state")
        .with_heartbeat_ms(100)
}

fn app(node: Arc<FakeNode>) -> Router {
    router(state_with(node, Vec::new()))
}

/// One request built from parts; `body` is sent as JSON unless `content_type` says otherwise.
struct Call<'a> {
    method: &'a str,
    uri: &'a str,
    token: Option<&'a str>,
    body: Option<&'a str>,
    content_type: &'a str,
}

impl<'a> Call<'a> {
    fn get(uri: &'a str, token: Option<&'a str>) -> Call<'a> {
        Call {
            method: "GET",
            uri,
            token,
            body: None,
            content_type: "application/json",
        }
    }
    fn post(uri: &'a str, token: Option<&'a str>, body: &'a str) -> Call<'a> {
        Call {
            method: "POST",
            uri,
            token,
            body: Some(body),
            content_type: "application/json",
        }
    }
    fn request(&self) -> Request<Body> {
        let mut builder = Request::builder().method(self.method).uri(self.uri);
        if let Some(token) = self.token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if self.body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, self.content_type);
        }
        let body = self
            .body
            .map_or_else(Body::empty, |b| Body::from(b.to_string()));
        builder.body(body).expect("request")
    }
}

/// Sends one request; the body as JSON, or as a JSON string when it is not JSON.
async fn send(app: &Router, call: Call<'_>) -> (StatusCode, Value) {
    let response = app
        .clone()
        .oneshot(call.request())
        .await
        .expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

fn error_of(value: &Value) -> ErrorBody {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("not an ErrorBody ({e}): {value}"))
}

// Goal: every route answers its happy path with the documented body.
#[tokio::test]
async fn happy_paths_of_every_route() {
    let node = Arc::new(FakeNode::default());
    let app = app(node.clone());
    let body = r#"{"events":[{"json":{"a":1}},{"base64":"AAEC"}],"expected_offset":0,
        "idempotency":{"session":"0123456789abcdef0123456789abcdef","request":1},"purpose":"care"}"#;
    let (status, receipt) =
        send(&app, Call::post("/v1/streams/7/append", Some(WRITER), body)).await;
    assert_eq!(status, StatusCode::OK, "{receipt}");
    let receipt: AppendReceipt = serde_json::from_value(receipt).expect("receipt");
    assert_eq!(
        (receipt.stream, receipt.first_offset, receipt.next_offset),
        (7, 0, 2)
    );
    assert_eq!(
        node.lock().streams[&7],
        vec![
            Bytes::from_static(br#"{"a":1}"#),
            Bytes::from_static(&[0, 1, 2])
        ]
    );

    let (status, events) = send(&app, Call::get("/v1/streams/7/events?from=1", Some(READER))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(events["next_offset"], 2);
    assert_eq!(events["events"][0]["base64"], "AAEC");
    let (status, log) = send(&app, Call::get("/v1/log", Some(READER))).await;
    assert_eq!(
        (status, log["next_position"].clone()),
        (StatusCode::OK, json!(2))
    );
    let (status, proof) = send(
        &app,
        Call::get("/v1/streams/7/events/1/proof", Some(AUDITOR)),
    )
    .await;
    assert_eq!(
        (status, proof["proof"].clone()),
        (StatusCode::OK, json!("proof 7 1"))
    );
    let (status, answer) = send(
        &app,
        Call::get("/v1/consistency?from=1&to=2", Some(AUDITOR)),
    )
    .await;
    assert_eq!((status, answer["to"].clone()), (StatusCode::OK, json!(2)));
    let (status, cert) = send(&app, Call::get("/v1/certificate", Some(AUDITOR))).await;
    assert_eq!((status, cert["size"].clone()), (StatusCode::OK, json!(2)));
    let (status, health) = send(&app, Call::get("/v1/health", None)).await;
    assert_eq!(
        (status, health["events"].clone()),
        (StatusCode::OK, json!(2))
    );
    let (status, metrics) = send(&app, Call::get("/metrics", None)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics
            .as_str()
            .is_some_and(|m| m.contains("vellum_events 2")),
        "{metrics}"
    );
    let (status, doc) = send(&app, Call::get("/openapi.json", None)).await;
    assert_eq!(
        (status, doc["openapi"].clone()),
        (StatusCode::OK, json!("3.1.0"))
    );
}

/// One bad-input case: the request, the status and code, and a message fragment.
struct Bad {
    call: Call<'static>,
    status: u16,
    code: &'static str,
    says: &'static str,
}

fn bad(call: Call<'static>, status: u16, code: &'static str, says: &'static str) -> Bad {
    Bad {
        call,
        status,
        code,
        says,
    }
}

fn bad_inputs() -> Vec<Bad> {
    let w = Some(WRITER);
    let append = "/v1/streams/1/append";
    let ok_body = r#"{"events":[{"json":1}]}"#;
    vec![
        bad(Call::post(append, w, "{"), 400, "bad_request", "JSON"),
        bad(
            Call::post(append, w, r#"{"events":[{"json":1,"base64":"AA=="}]}"#),
            400,
            "bad_request",
            "events[0] has both json and base64",
        ),
        bad(
            Call::post(append, w, r#"{"events":[{}]}"#),
            400,
            "bad_request",
            "neither json nor base64",
        ),
        bad(
            Call::post(append, w, r#"{"events":[]}"#),
            400,
            "bad_request",
            "at least one event",
        ),
        bad(
            Call::post(append, w, r#"{"events":[{"base64":"%%%"}]}"#),
            400,
            "bad_request",
            "events[0].base64",
        ),
        bad(
            Call::post(append, w, r#"{"events":[{"json":1}],"colour":1}"#),
            400,
            "bad_request",
            "unknown field `colour`",
        ),
        bad(
            Call::post(append, w, r#"{"events":"x"}"#),
            400,
            "bad_request",
            "events",
        ),
        bad(
            Call::post(
                append,
                w,
                r#"{"events":[{"json":1}],"idempotency":{"session":"ABC","request":1}}"#,
            ),
            400,
            "bad_request",
            "idempotency.session",
        ),
        bad(
            Call::post(
                append,
                w,
                r#"{"events":[{"json":1}],"idempotency":{"session":"0123456789abcdef0123456789abcdef","request":0}}"#,
            ),
            400,
            "bad_request",
            "idempotency.request",
        ),
        bad(
            Call {
                content_type: "text/plain",
                ..Call::post(append, w, ok_body)
            },
            400,
            "bad_request",
            "Content-Type",
        ),
        bad(
            Call {
                body: None,
                ..Call::post(append, w, ok_body)
            },
            400,
            "bad_request",
            "Content-Type",
        ),
        bad(
            Call::post("/v1/streams/abc/append", w, ok_body),
            400,
            "bad_request",
            "stream",
        ),
        bad(
            Call::post("/v1/streams/-1/append", w, ok_body),
            400,
            "bad_request",
            "stream",
        ),
        bad(
            Call::post("/v1/streams/0/append", w, ok_body),
            422,
            "refused",
            "stream id 0",
        ),
        bad(
            Call::post(append, w, r#"{"events":[{"json":1}],"expected_offset":5}"#),
            409,
            "wrong_expected_offset",
            "expected 5",
        ),
        bad(
            Call::post(append, None, ok_body),
            401,
            "unauthorized",
            "missing",
        ),
        bad(
            Call::post(append, Some("vlm_nope"), ok_body),
            401,
            "unauthorized",
            "unknown bearer token",
        ),
        bad(
            Call::post(append, Some(READER), ok_body),
            403,
            "forbidden",
            "may not append",
        ),
        bad(
            Call::post(append, Some(AUDITOR), "{"),
            403,
            "forbidden",
            "may not append",
        ),
        bad(Call::get(append, w), 405, "bad_request", "not allowed"),
        bad(
            Call::get("/v1/streams/abc/events", w),
            400,
            "bad_request",
            "stream",
        ),
        bad(
            Call::get("/v1/streams/1/events?from=x", w),
            400,
            "bad_request",
            "from",
        ),
        bad(
            Call::get("/v1/streams/1/events?max=-1", w),
            400,
            "bad_request",
            "max",
        ),
        bad(
            Call::get("/v1/streams/1/events?form=1", w),
            400,
            "bad_request",
            "form",
        ),
        bad(
            Call::get("/v1/streams/99/events", w),
            404,
            "not_found",
            "no stream 99",
        ),
        bad(
            Call::get("/v1/streams/1/events", None),
            401,
            "unauthorized",
            "missing",
        ),
        bad(
            Call::get("/v1/streams/1/events", Some(AUDITOR)),
            403,
            "forbidden",
            "read_stream",
        ),
        bad(Call::get("/v1/log?from=x", w), 400, "bad_request", "from"),
        bad(Call::get("/v1/log?max=1.5", w), 400, "bad_request", "max"),
        bad(
            Call::get("/v1/log", Some("vlm_nope")),
            401,
            "unauthorized",
            "unknown",
        ),
        bad(
            Call::get("/v1/log", Some(AUDITOR)),
            403,
            "forbidden",
            "read_log",
        ),
        bad(
            Call::get("/v1/subscribe?format=xml", w),
            400,
            "bad_request",
            "format",
        ),
        bad(
            Call::get("/v1/subscribe?from=-3", w),
            400,
            "bad_request",
            "from",
        ),
        bad(
            Call::get("/v1/subscribe", None),
            401,
            "unauthorized",
            "missing",
        ),
        bad(
            Call::get("/v1/subscribe", Some(AUDITOR)),
            403,
            "forbidden",
            "subscribe",
        ),
        bad(
            Call::get("/v1/streams/1/events/x/proof", w),
            400,
            "bad_request",
            "offset",
        ),
        bad(
            Call::get("/v1/streams/x/events/0/proof", w),
            400,
            "bad_request",
            "stream",
        ),
        bad(
            Call::get("/v1/streams/1/events/9/proof", w),
            404,
            "not_found",
            "no event 9",
        ),
        bad(
            Call::get("/v1/streams/1/events/0/proof", None),
            401,
            "unauthorized",
            "missing",
        ),
        bad(Call::get("/v1/consistency", w), 400, "bad_request", "from"),
        bad(
            Call::get("/v1/consistency?from=1&to=x", w),
            400,
            "bad_request",
            "to",
        ),
        bad(
            Call::get("/v1/consistency?from=2&to=1", w),
            400,
            "bad_request",
            "greater than to",
        ),
        bad(
            Call::get("/v1/consistency?from=1&to=50", w),
            422,
            "refused",
            "beyond",
        ),
        bad(
            Call::get("/v1/consistency?from=0", Some("vlm_nope")),
            401,
            "unauthorized",
            "unknown",
        ),
        bad(
            Call::get("/v1/certificate", None),
            401,
            "unauthorized",
            "missing",
        ),
        bad(
            Call::get("/v1/no/such/route", w),
            404,
            "not_found",
            "no route GET /v1/no/such/route",
        ),
        bad(
            Call::post("/v1/health", None, "{}"),
            405,
            "bad_request",
            "not allowed",
        ),
    ]
}

// Goal: every bad input on every endpoint is a JSON 4xx whose code and message say what is wrong.
#[tokio::test]
async fn bad_input_on_every_endpoint_is_a_json_4xx() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"one");
    let app = app(node.clone());
    for case in bad_inputs() {
        let what = format!("{} {}", case.call.method, case.call.uri);
        let unauthorized = case.status == 401;
        let response = app
            .clone()
            .oneshot(case.call.request())
            .await
            .expect("infallible");
        let status = response.status();
        let challenge = response.headers().get(header::WWW_AUTHENTICATE).cloned();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let value: Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{what}: body is not JSON ({e}): {bytes:?}"));
        let error = error_of(&value);
        assert_eq!(status.as_u16(), case.status, "{what}: {value}");
        assert!(status.is_client_error(), "{what}: {status}");
        assert_eq!(error.error.code, case.code, "{what}: {value}");
        assert!(
            error.error.message.contains(case.says),
            "{what}: {:?} lacks {:?}",
            error.error.message,
            case.says
        );
        if unauthorized {
            assert_eq!(
                challenge.as_ref().and_then(|v| v.to_str().ok()),
                Some("Bearer"),
                "{what}"
            );
        }
    }
    // Nothing reached the stream through any bad request.
    assert_eq!(node.lock().log.len(), 1);
}

// Goal: a wrong expected offset reports the stream's actual length.
#[tokio::test]
async fn wrong_expected_offset_carries_actual_offset() {
    let node = Arc::new(FakeNode::default());
    node.push(3, b"a");
    node.push(3, b"b");
    let body = r#"{"events":[{"json":1}],"expected_offset":0}"#;
    let (status, value) = send(
        &app(node),
        Call::post("/v1/streams/3/append", Some(WRITER), body),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(error_of(&value).error.actual_offset, Some(2));
}

// Goal: a body over the limit is refused with 413 before it reaches the node.
#[tokio::test]
async fn oversized_body_is_413() {
    let node = Arc::new(FakeNode::default());
    let payload = "A".repeat(api::REQUEST_BODY_BYTES_MAX);
    let body = format!(r#"{{"events":[{{"base64":"{payload}"}}]}}"#);
    let (status, value) = send(
        &app(node.clone()),
        Call::post("/v1/streams/1/append", Some(WRITER), &body),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{value}");
    let error = error_of(&value);
    assert_eq!(error.error.code, api::code::PAYLOAD_TOO_LARGE);
    assert!(
        error.error.message.contains("larger than"),
        "{}",
        error.error.message
    );
    assert!(node.lock().log.is_empty());
}

// Goal: each node failure maps to its documented status and code, and a panic leaves the server serving.
#[tokio::test]
async fn node_errors_map_to_statuses() {
    let node = Arc::new(FakeNode::default());
    let app = app(node.clone());
    let body = r#"{"events":[{"json":1}]}"#;
    let cases = [
        (
            Mode::Indeterminate,
            503,
            api::code::INDETERMINATE,
            "same idempotency key",
        ),
        (Mode::Storage, 500, api::code::STORAGE, "disk on fire"),
        (Mode::Panic, 500, api::code::STORAGE, "replica failed"),
        (
            Mode::NotPrimary(None),
            503,
            api::code::UNAVAILABLE,
            "no primary right now",
        ),
        (
            Mode::NotPrimary(Some(2)),
            503,
            api::code::UNAVAILABLE,
            "no API address for primary 2",
        ),
    ];
    for (mode, status, code, says) in cases {
        node.set_mode(mode);
        let (got, value) = send(&app, Call::post("/v1/streams/1/append", Some(WRITER), body)).await;
        let error = error_of(&value);
        assert_eq!(
            (got.as_u16(), error.error.code.as_str()),
            (status, code),
            "{mode:?}: {value}"
        );
        assert!(
            error.error.message.contains(says),
            "{mode:?}: {}",
            error.error.message
        );
    }
    node.set_mode(Mode::Normal);
    let (status, _) = send(&app, Call::post("/v1/streams/1/append", Some(WRITER), body)).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the server still serves after a node panic"
    );
}

// Goal: reads default to 100 events and never ask the node for more than READ_EVENTS_MAX.
#[tokio::test]
async fn read_max_defaults_and_is_capped() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let app = app(node.clone());
    let _ = send(&app, Call::get("/v1/log", Some(READER))).await;
    assert_eq!(node.lock().last_max, Some(100));
    let _ = send(
        &app,
        Call::get("/v1/streams/1/events?max=999999", Some(READER)),
    )
    .await;
    assert_eq!(node.lock().last_max, Some(api::READ_EVENTS_MAX));
}

/// Reads subscription lines until `count` complete lines arrived (bounded by [`WAIT`]).
async fn read_lines(
    stream: &mut axum::body::BodyDataStream,
    buffer: &mut String,
    count: usize,
    separator: &str,
) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    let mut lines = Vec::new();
    while lines.len() < count {
        if let Some(end) = buffer.find(separator) {
            lines.push(buffer[..end].to_string());
            buffer.drain(..end + separator.len());
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.next())
            .await
            .expect("subscription line within the wait")
            .expect("stream still open")
            .expect("chunk");
        buffer.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    lines
}

// Goal: a subscription delivers catch-up events, then live ones, then a heartbeat while idle.
#[tokio::test]
async fn subscription_catches_up_goes_live_and_heartbeats() {
    let node = Arc::new(FakeNode::default());
    for payload in [b"a", b"b", b"c"] {
        node.push(1, payload);
    }
    let app = app(node.clone());
    let response = app
        .oneshot(Call::get("/v1/subscribe?from=1", Some(READER)).request())
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-ndjson"
    );
    let mut stream = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let caught_up = read_lines(&mut stream, &mut buffer, 2, "\n").await;
    let positions: Vec<u64> = caught_up
        .iter()
        .map(|l| {
            serde_json::from_str::<LogEvent>(l)
                .expect("event line")
                .position
        })
        .collect();
    assert_eq!(positions, vec![1, 2]);
    node.push(2, b"live");
    let live = read_lines(&mut stream, &mut buffer, 1, "\n").await;
    let event: LogEvent = serde_json::from_str(&live[0]).expect("live event line");
    assert_eq!((event.position, event.stream), (3, 2));
    let idle = read_lines(&mut stream, &mut buffer, 1, "\n").await;
    let beat: api::Heartbeat = serde_json::from_str(&idle[0]).expect("heartbeat line");
    assert_eq!(
        beat,
        api::Heartbeat {
            heartbeat: true,
            next_position: 4
        }
    );
}

// Goal: the SSE format frames events as `data:` and heartbeats as named events.
#[tokio::test]
async fn subscription_sse_framing() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"a");
    let app = app(node);
    let request = Call::get("/v1/subscribe?format=sse", Some(WRITER)).request();
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/event-stream"
    );
    let mut stream = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let frames = read_lines(&mut stream, &mut buffer, 2, "\n\n").await;
    assert!(
        frames[0].starts_with("data: {\"position\":0"),
        "{}",
        frames[0]
    );
    assert!(
        frames[1].starts_with("event: heartbeat\ndata: "),
        "{}",
        frames[1]
    );
}

// Goal: a dropped subscriber stops the producer and frees its subscription slot.
#[tokio::test]
async fn dropped_subscription_frees_its_slot() {
    let node = Arc::new(FakeNode::default());
    let state = state_with(node, Vec::new());
    let app = router(state.clone());
    let response = app
        .oneshot(Call::get("/v1/subscribe", Some(READER)).request())
        .await
        .expect("infallible");
    assert_eq!(
        state.subscriptions.available_permits(),
        super::SUBSCRIPTIONS_MAX - 1
    );
    drop(response);
    let deadline = Instant::now() + WAIT;
    while state.subscriptions.available_permits() < super::SUBSCRIPTIONS_MAX {
        assert!(
            Instant::now() < deadline,
            "the producer never noticed the disconnect"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves `app` over plain HTTP on 127.0.0.1:0; returns its base URL.
async fn serve_plain(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

// Goal: an append to a backup is forwarded to the primary with the caller's token and its receipt relayed.
#[tokio::test]
async fn append_to_backup_is_forwarded_to_primary() {
    let primary = Arc::new(FakeNode::default());
    let base = serve_plain(app(primary.clone())).await;
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let backup_app = router(state_with(backup.clone(), vec![(1, base)]));
    let body = r#"{"events":[{"json":"hello"}]}"#;
    let (status, value) = send(
        &backup_app,
        Call::post("/v1/streams/5/append", Some(WRITER), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
    let receipt: AppendReceipt = serde_json::from_value(value).expect("receipt");
    assert_eq!((receipt.stream, receipt.next_offset), (5, 1));
    assert_eq!(
        primary.lock().streams[&5],
        vec![Bytes::from_static(b"\"hello\"")]
    );
    assert!(backup.lock().log.is_empty());
    // The primary's refusal is relayed as is (reader token: 403 from the primary's own check
    // cannot happen here because the backup checks first, so use a bad expected offset).
    let body = r#"{"events":[{"json":1}],"expected_offset":9}"#;
    let (status, value) = send(
        &backup_app,
        Call::post("/v1/streams/5/append", Some(WRITER), body),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{value}");
    assert_eq!(error_of(&value).error.actual_offset, Some(1));
}

// Goal: a request already forwarded that lands on a non-primary gets 503, never a second hop.
#[tokio::test]
async fn forwarded_request_to_non_primary_is_503() {
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let app = router(state_with(backup, vec![(1, "http://127.0.0.1:9".into())]));
    let mut request = Call::post(
        "/v1/streams/5/append",
        Some(WRITER),
        r#"{"events":[{"json":1}]}"#,
    )
    .request();
    request.headers_mut().insert(
        super::forward::FORWARDED_HEADER,
        "1".parse().expect("header"),
    );
    let response = app.oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let error: ErrorBody = serde_json::from_slice(&bytes).expect("error body");
    assert_eq!(error.error.code, api::code::UNAVAILABLE);
    assert!(
        error.error.message.contains("already forwarded"),
        "{}",
        error.error.message
    );
}

// Goal: an unreachable primary is 503 unavailable (nothing was sent, so nothing was written).
#[tokio::test]
async fn unreachable_primary_is_503_unavailable() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let app = router(state_with(backup, vec![(1, format!("http://{addr}"))]));
    let body = r#"{"events":[{"json":1}]}"#;
    let (status, value) = send(&app, Call::post("/v1/streams/5/append", Some(WRITER), body)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{value}");
    assert_eq!(error_of(&value).error.code, api::code::UNAVAILABLE);
}

// Goal: /metrics is Prometheus text with HELP/TYPE lines and counts answers by route and class.
#[tokio::test]
async fn metrics_count_requests_by_route_and_class() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let app = app(node);
    let _ = send(&app, Call::get("/v1/log", Some(READER))).await;
    let _ = send(&app, Call::get("/v1/log", None)).await;
    let _ = send(&app, Call::get("/nowhere", None)).await;
    let (_, text) = send(&app, Call::get("/metrics", None)).await;
    let text = text.as_str().expect("text").to_string();
    for line in [
        "# TYPE vellum_commit gauge",
        "vellum_commit 7",
        "# HELP vellum_api_requests_total",
        "vellum_api_requests_total{method=\"GET\",route=\"/v1/log\",class=\"2xx\"} 1",
        "vellum_api_requests_total{method=\"GET\",route=\"/v1/log\",class=\"4xx\"} 1",
        "vellum_api_requests_total{method=\"\",route=\"unmatched\",class=\"4xx\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
}

// Goal: every route the router serves is in the route table and in the OpenAPI document.
#[tokio::test]
async fn openapi_describes_every_route() {
    let doc = super::openapi::document();
    let paths = doc["paths"].as_object().expect("paths");
    let app = app(Arc::new(FakeNode::default()));
    for route in ROUTES {
        let method = route.method.to_ascii_lowercase();
        assert!(
            paths.get(route.path).and_then(|p| p.get(&method)).is_some(),
            "{} {} missing",
            route.method,
            route.path
        );
        // The route exists in the router: it is not answered by the not-found fallback.
        let uri = route.path.replace("{stream}", "1").replace("{offset}", "0");
        let mut request = Call::get(&uri, None).request();
        *request.method_mut() = route.method.parse().expect("method");
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert_ne!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{} {} is not routed",
            route.method,
            route.path
        );
    }
    let documented: usize = paths
        .values()
        .map(|p| p.as_object().map_or(0, |m| m.len()))
        .sum();
    assert_eq!(
        documented,
        ROUTES.len(),
        "the document has routes the router lacks"
    );
}

// Goal: token lines round-trip, tokens have the documented shape, and roles allow what the docs say.
#[test]
fn tokens_and_roles() {
    let token = generate_token();
    assert!(
        token.starts_with("vlm_") && token.len() == 4 + 43,
        "{token}"
    );
    assert_ne!(token, generate_token());
    let store = TokenStore::from_lines(&format!(
        "# comment\n\n{}\n",
        token_line(&token, "dora", Role::Reader)
    ))
    .expect("store");
    let principal = store.authenticate(&token).expect("known token");
    assert_eq!(
        (principal.name.as_str(), principal.role),
        ("dora", Role::Reader)
    );
    assert!(store.authenticate("vlm_other").is_none());
    assert!(Role::Writer.allows(Action::Append));
    assert!(!Role::Reader.allows(Action::Append) && Role::Reader.allows(Action::Subscribe));
    assert!(Role::Auditor.allows(Action::Proof) && !Role::Auditor.allows(Action::ReadLog));
}

// Goal: a malformed tokens file is refused with the file and line named.
#[test]
fn tokens_file_errors_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens");
    let good = token_line("vlm_a", "ann", Role::Writer);
    let cases = [
        format!("{good}\nsha256:zz ann2 writer\n"),
        format!(
            "{good}\n{}\n",
            token_line("vlm_b", "ben", Role::Writer).replace("writer", "admin")
        ),
        format!("{good}\n{}\n", token_line("vlm_a", "ann2", Role::Reader)),
        format!("{good}\nonly-two fields\n"),
    ];
    for text in cases {
        std::fs::write(&path, &text).expect("write");
        let error = TokenStore::load(&path)
            .expect_err("malformed file")
            .to_string();
        assert!(
            error.contains(&path.display().to_string()) && error.contains("line 2"),
            "{error}"
        );
    }
    let missing = TokenStore::load(&dir.path().join("absent")).expect_err("missing file");
    assert!(missing.to_string().contains("absent"), "{missing}");
}

fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let cert_der = certified.cert.der().clone();
    let key_der =
        rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert_der], key_der)
        .expect("server config");
    (Arc::new(config), certified.cert.pem())
}

// Goal: the real server answers over TLS (reqwest trusting only the test CA) and stops on shutdown.
#[tokio::test]
async fn tls_end_to_end() {
    let (tls, pem) = tls_config();
    let node = Arc::new(FakeNode::default());
    let config = super::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls,
        tokens: tokens(),
        peer_api: Vec::new(),
        ca_pem: pem.clone().into_bytes(),
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = super::serve(config, node.clone(), shutdown)
        .await
        .expect("serve");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .resolve("localhost", handle.local_addr)
        .timeout(WAIT)
        .build()
        .expect("client");
    let base = format!("https://localhost:{}", handle.local_addr.port());
    let receipt: AppendReceipt = client
        .post(format!("{base}/v1/streams/4/append"))
        .bearer_auth(WRITER)
        .json(&json!({"events":[{"json":{"k":"v"}}]}))
        .send()
        .await
        .expect("append over tls")
        .json()
        .await
        .expect("receipt");
    assert_eq!((receipt.stream, receipt.next_offset), (4, 1));
    let health = client
        .get(format!("{base}/v1/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let denied = client
        .get(format!("{base}/v1/log"))
        .send()
        .await
        .expect("no token");
    assert_eq!(denied.status(), reqwest::StatusCode::UNAUTHORIZED);
    stop.send(true).expect("server listening to shutdown");
    tokio::time::timeout(WAIT, handle.join())
        .await
        .expect("server stops after shutdown");
}

// Goal: every protected request leaves one access-trail event (P7) — a
// success, a refusal, a bad token and a denied role alike — with the
// principal, action, stream, touched range, purpose and outcome.
#[tokio::test]
async fn every_access_is_recorded_in_the_trail() {
    use vellum_compliance::trail::AccessAction;
    let node = Arc::new(FakeNode::default());
    let app = app(Arc::clone(&node));
    let body = r#"{"events":[{"json":{"a":1}},{"json":{"a":2}}],"purpose":"TREAT"}"#;
    let (status, _) = send(
        &app,
        Call::post("/v1/streams/1001/append", Some(WRITER), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &app,
        Call::get("/v1/streams/1001/events?from=1", Some(READER)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = send(
        &app,
        Call::get("/v1/streams/1001/events", Some("vlm_wrong")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(&app, Call::get("/v1/streams/1001/events", Some(AUDITOR))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(&app, Call::get("/v1/streams/4242/events", Some(READER))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let trail = node.lock().trail.clone();
    assert_eq!(trail.len(), 5, "one event per request: {trail:?}");
    assert_eq!(trail[0].action, AccessAction::Append);
    assert_eq!(
        (trail[0].principal.as_str(), trail[0].role.as_str()),
        ("alice", "writer")
    );
    assert_eq!(
        (trail[0].stream, trail[0].from, trail[0].to),
        (Some(1001), Some(0), Some(2))
    );
    assert_eq!(trail[0].purpose.as_deref(), Some("TREAT"));
    assert_eq!(trail[0].outcome, "success");
    assert_eq!(trail[1].action, AccessAction::ReadStream);
    assert_eq!((trail[1].from, trail[1].to), (Some(1), Some(2)));
    assert_eq!(trail[2].action, AccessAction::AuthFailed);
    assert_eq!(trail[2].principal, "anonymous");
    assert!(
        trail[2].outcome.starts_with("denied: 401"),
        "{}",
        trail[2].outcome
    );
    assert_eq!(trail[3].principal, "carol");
    assert!(
        trail[3].outcome.starts_with("denied: 403"),
        "{}",
        trail[3].outcome
    );
    assert_eq!(trail[4].outcome, "refused: 404");
}

// Goal: when the trail cannot record an access, the answer is withheld
// (503) — a read never goes out unrecorded.
#[tokio::test]
async fn an_unrecorded_access_is_not_answered() {
    let node = Arc::new(FakeNode::default());
    let app = app(Arc::clone(&node));
    let body = r#"{"events":[{"json":{"secret":"phi"}}]}"#;
    let (status, _) = send(
        &app,
        Call::post("/v1/streams/1001/append", Some(WRITER), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    node.lock().trail_down = true;
    let (status, value) = send(&app, Call::get("/v1/streams/1001/events", Some(READER))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        !value.to_string().contains("phi"),
        "no event text in the refusal: {value}"
    );
    assert!(error_of(&value).error.message.contains("access trail"));
}
