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

use super::auth::{Action, Role, Scope, TokenStore, generate_token, token_line};
use super::node::{
    AppendCall, AppendError, BatchRefusal, ExportError, FaultKind, InternalFault, Node,
    NodeMetrics, ProofError, ReadError, TrailError, Unavailable,
};
use super::routes::{AppState, ROUTES, router};
use crate::api::{self, AppendReceipt, ConsistencyAnswer, ErrorBody, Health, LogEvent};

pub(super) const WRITER: &str = "vlm_writer_token";
pub(super) const READER: &str = "vlm_reader_token";
const AUDITOR: &str = "vlm_auditor_token";
/// Every wait in these tests ends within this time.
pub(super) const WAIT: Duration = Duration::from_secs(10);

/// How the fake answers appends (and, for `Panic`, every call that can fail).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Mode {
    #[default]
    Normal,
    NotPrimary(Option<u8>),
    /// Says it is the primary, then refuses the call as a backup (lost the
    /// primacy while the request was in flight).
    LostPrimacy,
    Indeterminate,
    Storage,
    /// The random source fails (an internal fault, never the caller's).
    Randomness,
    Panic,
}

/// What [`FakeNode::fail`] makes every fallible call answer.
#[derive(Debug, Clone)]
enum Failure {
    Unavailable(Unavailable),
    Indeterminate(String),
    Internal(InternalFault),
}

impl From<Failure> for AppendError {
    fn from(failure: Failure) -> AppendError {
        match failure {
            Failure::Unavailable(u) => AppendError::Unavailable(u),
            Failure::Indeterminate(reason) => AppendError::Indeterminate { reason },
            Failure::Internal(fault) => AppendError::Internal(fault),
        }
    }
}

impl From<Failure> for ReadError {
    fn from(failure: Failure) -> ReadError {
        match failure {
            Failure::Unavailable(u) => ReadError::Unavailable(u),
            Failure::Indeterminate(reason) => {
                ReadError::Internal(InternalFault::new(FaultKind::Unexpected, reason))
            }
            Failure::Internal(fault) => ReadError::Internal(fault),
        }
    }
}

impl From<Failure> for ProofError {
    fn from(failure: Failure) -> ProofError {
        match ReadError::from(failure) {
            ReadError::Unavailable(u) => ProofError::Unavailable(u),
            ReadError::Internal(fault) => ProofError::Internal(fault),
            ReadError::UnknownStream { stream } => ProofError::NoSuchEvent { stream, offset: 0 },
            ReadError::Shredded(s) => ProofError::NoSuchEvent {
                stream: s.stream,
                offset: 0,
            },
        }
    }
}

impl From<Failure> for ExportError {
    fn from(failure: Failure) -> ExportError {
        match ReadError::from(failure) {
            ReadError::Unavailable(u) => ExportError::Unavailable(u),
            ReadError::Internal(fault) => ExportError::Internal(fault),
            ReadError::UnknownStream { stream } => ExportError::UnknownStream { stream },
            ReadError::Shredded(s) => ExportError::Shredded(s),
        }
    }
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
    /// Calls of `record_access` (each is one trail op of a real node).
    trail_calls: u64,
    /// How long each `record_access` takes (a commit's round).
    trail_delay_ms: u64,
    /// The next appends, reads, proofs and exports fail with these.
    append_error: Option<AppendError>,
    read_error: Option<ReadError>,
    proof_error: Option<ProofError>,
    export_error: Option<ExportError>,
}

/// An in-memory node: streams, a global log, and a switch for failures.
#[derive(Debug, Default)]
pub(super) struct FakeNode {
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

    fn fail(&self) -> Result<(), Failure> {
        // Copy the mode out first: panicking with the lock held would poison it.
        let mode = self.lock().mode;
        match mode {
            Mode::Normal => Ok(()),
            Mode::NotPrimary(primary) => Err(Failure::Unavailable(Unavailable::NotPrimary {
                replica: 0,
                primary,
            })),
            Mode::LostPrimacy => Err(Failure::Unavailable(Unavailable::NotPrimary {
                replica: 0,
                primary: Some(1),
            })),
            Mode::Indeterminate => Err(Failure::Indeterminate("view change".into())),
            Mode::Storage => Err(Failure::Internal(InternalFault::new(
                FaultKind::Storage,
                "disk on fire",
            ))),
            Mode::Randomness => Err(Failure::Internal(InternalFault::new(
                FaultKind::Randomness,
                "getrandom: no entropy",
            ))),
            Mode::Panic => panic!("fake node told to panic"),
        }
    }

    /// Appends directly (as if committed by another replica).
    pub(super) fn push(&self, stream: u64, payload: &[u8]) {
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
            ..Default::default()
        });
        drop(state);
        self.grew.notify_all();
    }
}

impl Node for FakeNode {
    /// Every group of the fake follows stream 16 and holds nothing.
    fn group(
        &self,
        call: super::groups::GroupCall,
    ) -> Result<super::groups::GroupAnswer, super::groups::GroupError> {
        use super::groups::{GroupAnswer, GroupCall, GroupInfo};
        let info = |name: String| GroupInfo {
            name,
            streams: Some("16".to_string()),
            types: None,
            start: 0,
            retry_max: 5,
            lease_ms: 30_000,
            created_at: 0,
            checkpoint: 0,
            acked: 0,
            parked: 0,
            in_flight: 0,
        };
        Ok(match call {
            GroupCall::Create { name, .. } | GroupCall::Get { name } => {
                GroupAnswer::Info(info(name))
            }
            GroupCall::Metrics => GroupAnswer::Metrics(Vec::new()),
            GroupCall::Delete { name, .. } => {
                GroupAnswer::Deleted(super::groups::GroupDeleted { name, position: 0 })
            }
            GroupCall::Pull { name, consumer, .. } => {
                GroupAnswer::Delivered(super::groups::GroupDelivery {
                    group: name,
                    consumer,
                    events: Vec::new(),
                    lease_ms: 30_000,
                })
            }
            GroupCall::Ack { name, .. } | GroupCall::Nack { name, .. } => {
                return Err(super::groups::GroupError::NotDelivered {
                    group: name,
                    position: 0,
                });
            }
            GroupCall::Parked { name, .. } => GroupAnswer::Parked(super::groups::GroupParkedList {
                group: name,
                parked: Vec::new(),
                next_position: None,
            }),
            GroupCall::Replay { .. } => GroupAnswer::Replayed(super::groups::GroupReplayed {
                replayed: 0,
                position: None,
            }),
        })
    }

    fn health(&self) -> Health {
        let (events, mode) = {
            let state = self.lock();
            (state.log.len() as u64, state.mode)
        };
        // A backup (NotPrimary mode) says so, as a real replica does, so the
        // guard forwards its requests; every other mode is the primary.
        let (status, primary, is_primary) = match mode {
            Mode::NotPrimary(None) => ("view_change", 0, false),
            Mode::NotPrimary(Some(primary)) => ("normal", primary, false),
            _ => ("normal", 0, true),
        };
        Health {
            status: status.into(),
            replica: 0,
            replica_count: 3,
            view: 0,
            primary,
            is_primary,
            commit: events,
            op: events,
            events,
        }
    }

    fn append(&self, call: AppendCall) -> Result<AppendReceipt, AppendError> {
        self.fail()?;
        if let Some(error) = self.lock().append_error.clone() {
            return Err(error);
        }
        if call.stream == 0 {
            return Err(AppendError::ReservedStream { stream: 0 });
        }
        let actual = self
            .lock()
            .streams
            .get(&call.stream)
            .map_or(0, |s| s.len() as u64);
        if let Some(expected) = call.expected_offset.filter(|e| *e != actual) {
            return Err(AppendError::WrongExpectedOffset {
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
        // Like a replica: the trail record commits with the append, its
        // offsets filled in.
        if let Some(trail) = &call.trail {
            let mut event = vellum_compliance::trail::AccessEvent::from_payload(trail)
                .expect("the server sends an access event");
            event.from = Some(actual);
            event.to = Some(actual + count);
            self.lock().trail.push(event);
        }
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

    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError> {
        self.fail()?;
        let mut state = self.lock();
        if let Some(error) = state.read_error.clone() {
            return Err(error);
        }
        state.last_max = Some(max);
        if !state.streams.contains_key(&stream) {
            return Err(ReadError::UnknownStream { stream });
        }
        let events = state
            .log
            .iter()
            .filter(|e| e.stream == stream && e.offset >= from);
        Ok(events.take(max as usize).cloned().collect())
    }

    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, ReadError> {
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

    fn proof(&self, stream: u64, offset: u64) -> Result<String, ProofError> {
        self.fail()?;
        let state = self.lock();
        if let Some(error) = state.proof_error.clone() {
            return Err(error);
        }
        match state.streams.get(&stream) {
            Some(events) if offset < events.len() as u64 => Ok(format!("proof {stream} {offset}")),
            _ => Err(ProofError::NoSuchEvent { stream, offset }),
        }
    }

    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, ProofError> {
        self.fail()?;
        let size = self.lock().log.len() as u64;
        let to = to.unwrap_or(size);
        if to > size {
            return Err(ProofError::NoCertificate { size: Some(to) });
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

    /// The fake has no tree: every tile is beyond its (empty) checkpoint.
    /// The tlog routes are tested over a real log in `server::tlog_tests`.
    fn tlog_tile(
        &self,
        tile: vellum_audit::tiles::TileId,
    ) -> Result<Vec<vellum_audit::hash::Hash>, crate::server::node::TlogError> {
        Err(crate::server::node::TlogError::BeyondCheckpoint {
            path: tile.path(),
            size: 0,
        })
    }

    fn tlog_entries(
        &self,
        bundle: vellum_audit::tiles::EntryBundleId,
    ) -> Result<Vec<vellum_audit::leaf::LeafPreimage>, crate::server::node::TlogError> {
        Err(crate::server::node::TlogError::BeyondCheckpoint {
            path: bundle.path(),
            size: 0,
        })
    }

    fn export_events(
        &self,
        call: crate::server::node::ExportCall,
    ) -> Result<Vec<(String, Vec<u8>)>, ExportError> {
        self.fail()?;
        let state = self.lock();
        if let Some(error) = state.export_error.clone() {
            return Err(error);
        }
        let events = state
            .streams
            .get(&call.stream)
            .ok_or(ExportError::UnknownStream {
                stream: call.stream,
            })?;
        let lines: Vec<u8> = events
            .iter()
            .skip(call.from as usize)
            .take((call.to - call.from) as usize)
            .flat_map(|e| [e.to_vec(), b"\n".to_vec()].concat())
            .collect();
        Ok(vec![("events.ndjson".to_string(), lines)])
    }

    fn trail_snapshot(&self) -> Result<crate::server::node::TrailSnapshot, TrailError> {
        Ok(crate::server::node::TrailSnapshot {
            source: "fake-replica".to_string(),
            end: self.lock().trail.len() as u64,
        })
    }

    fn trail_page(
        &self,
        from: u64,
        end: u64,
    ) -> Result<crate::server::node::TrailPage, TrailError> {
        // Pages of 2, so that a handful of requests spans several pages.
        let state = self.lock();
        let events: Vec<_> = (0u64..)
            .zip(state.trail.iter())
            .skip(usize::try_from(from).expect("small"))
            .take_while(|(position, _)| *position < end)
            .take(2)
            .map(|(position, e)| (e.clone(), position))
            .collect();
        let next = events.last().map(|(_, p)| p + 1).filter(|&p| p < end);
        Ok(crate::server::node::TrailPage { events, next })
    }

    fn record_access(
        &self,
        events: Vec<vellum_compliance::trail::AccessEvent>,
    ) -> Result<(), TrailError> {
        let delay = {
            let mut state = self.lock();
            state.trail_calls += 1;
            state.trail_delay_ms
        };
        std::thread::sleep(std::time::Duration::from_millis(delay));
        let mut state = self.lock();
        if state.trail_down {
            return Err(TrailError::Unavailable(Unavailable::TrailTimeout {
                waited_ms: 1,
            }));
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

pub(super) fn tokens() -> TokenStore {
    let text = [
        token_line(WRITER, "alice", Role::Writer, &Scope::all()),
        token_line(READER, "bob", Role::Reader, &Scope::all()),
        token_line(AUDITOR, "carol", Role::Auditor, &Scope::all()),
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

// Goal: concurrent accesses at the primary share trail appends: each
// waits on the queue (no blocking thread of its own parked on the node),
// every one is recorded before its answer, and the node sees a handful of
// batched calls, not one per access.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_accesses_share_batched_trail_appends() {
    const READERS: usize = 64;
    let node = Arc::new(FakeNode::default());
    node.lock()
        .streams
        .insert(7, vec![Bytes::from_static(b"{}")]);
    node.lock().trail_delay_ms = 20;
    let app = app(node.clone());
    let reads: Vec<_> = (0..READERS)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                send(&app, Call::get("/v1/streams/7/events?from=0", Some(READER))).await
            })
        })
        .collect();
    for read in reads {
        let (status, body) = read.await.expect("task");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let state = node.lock();
    let reads_recorded = state
        .trail
        .iter()
        .filter(|e| e.action == vellum_compliance::trail::AccessAction::ReadStream)
        .count();
    assert_eq!(reads_recorded, READERS, "every read recorded once");
    assert!(
        state.trail_calls <= (READERS / 4) as u64,
        "{} trail appends for {READERS} concurrent reads: not batched",
        state.trail_calls
    );
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
        // The trail ops' reserved session (all f) is refused at the edge.
        bad(
            Call::post(
                append,
                w,
                r#"{"events":[{"json":1}],"idempotency":{"session":"ffffffffffffffffffffffffffffffff","request":1}}"#,
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
            "stream 0 is reserved",
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
            "stream 99 has no committed events",
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
            "no committed event at offset 9",
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
            422,
            "refused",
            "greater than to",
        ),
        bad(
            Call::get("/v1/consistency?from=1&to=50", w),
            422,
            "refused",
            "no certificate at tree size 50",
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
            "knows no primary right now",
        ),
        (
            Mode::NotPrimary(Some(2)),
            503,
            api::code::UNAVAILABLE,
            "no API address for primary 2",
        ),
        // One forwarding path: a node that refuses as a backup after the
        // guard saw it as primary is "try again", never a second forward.
        (
            Mode::LostPrimacy,
            503,
            api::code::UNAVAILABLE,
            "is not the primary",
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

// Goal: an internal fault (the random source, storage) is a 500 `storage` for every
// operation, never a 4xx: a caller must not read "your request was wrong" when the
// replica failed.
#[tokio::test]
async fn internal_faults_are_500_never_4xx() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let app = app(node.clone());
    let calls = [
        Call::post(
            "/v1/streams/1/append",
            Some(WRITER),
            r#"{"events":[{"json":1}]}"#,
        ),
        Call::get("/v1/streams/1/events", Some(READER)),
        Call::get("/v1/log", Some(READER)),
        Call::get("/v1/streams/1/events/0/proof", Some(READER)),
        Call::get("/v1/consistency?from=1&to=1", Some(READER)),
        Call::post(
            "/v1/export/events",
            Some(WRITER),
            r#"{"stream":1,"from":0,"to":1}"#,
        ),
    ];
    for (mode, says) in [
        (Mode::Randomness, "the random source failed"),
        (Mode::Storage, "storage failed"),
    ] {
        node.set_mode(mode);
        for call in &calls {
            let uri = call.uri;
            let (status, value) = send(&app, Call { ..*call }).await;
            let error = error_of(&value);
            assert_eq!(
                (status.as_u16(), error.error.code.as_str()),
                (500, api::code::STORAGE),
                "{mode:?} {uri}: {value}"
            );
            assert!(
                error.error.message.contains(says),
                "{mode:?} {uri}: {value}"
            );
        }
    }
    node.set_mode(Mode::Normal);
    let (status, _) = send(&app, Call { ..calls[0] }).await;
    assert_eq!(status, StatusCode::OK, "nothing stays broken");
}

// Goal: each typed node error maps to its documented status and code (docs/api.md's
// table), by variant: the message is never read to choose them.
#[tokio::test]
async fn each_typed_node_error_maps_to_its_status_and_code() {
    let fault = || InternalFault::new(FaultKind::Crypto, "key store unreadable");
    let not_primary = Unavailable::NotPrimary {
        replica: 0,
        primary: Some(1),
    };
    let appends: Vec<(AppendError, u16, &str)> = vec![
        (
            AppendError::ReservedStream { stream: 3 },
            422,
            api::code::REFUSED,
        ),
        (
            AppendError::Batch(BatchRefusal::NoEvents),
            422,
            api::code::REFUSED,
        ),
        (
            AppendError::Batch(BatchRefusal::TooLarge { bytes: 9 }),
            422,
            api::code::REFUSED,
        ),
        (
            AppendError::StaleRequest {
                request: 1,
                latest: 2,
            },
            422,
            api::code::REFUSED,
        ),
        (
            AppendError::WrongExpectedOffset {
                stream: 1,
                expected: 4,
                actual: 2,
            },
            409,
            api::code::WRONG_EXPECTED_OFFSET,
        ),
        (
            AppendError::IdempotencyKeyReused {
                stream: 1,
                request: 7,
            },
            422,
            api::code::IDEMPOTENCY_KEY_REUSED,
        ),
        (
            AppendError::Unavailable(Unavailable::QueueFull),
            503,
            api::code::UNAVAILABLE,
        ),
        (
            AppendError::Unavailable(not_primary.clone()),
            503,
            api::code::UNAVAILABLE,
        ),
        (
            AppendError::Indeterminate {
                reason: "view change".into(),
            },
            503,
            api::code::INDETERMINATE,
        ),
        (AppendError::Internal(fault()), 500, api::code::STORAGE),
    ];
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let app = app(node.clone());
    let append = r#"{"events":[{"json":1}]}"#;
    for (error, status, code) in appends {
        let expected = error.to_string();
        node.lock().append_error = Some(error.clone());
        let (got, value) = send(
            &app,
            Call::post("/v1/streams/1/append", Some(WRITER), append),
        )
        .await;
        let body = error_of(&value);
        assert_eq!(
            (got.as_u16(), body.error.code.as_str()),
            (status, code),
            "{error:?}: {value}"
        );
        assert_eq!(
            body.error.message, expected,
            "the message is the error's Display"
        );
        let actual = match error {
            AppendError::WrongExpectedOffset { actual, .. } => Some(actual),
            _ => None,
        };
        assert_eq!(body.error.actual_offset, actual, "{error:?}");
    }
    node.lock().append_error = None;

    let reads: Vec<(ReadError, u16, &str)> = vec![
        (
            ReadError::UnknownStream { stream: 1 },
            404,
            api::code::NOT_FOUND,
        ),
        (
            ReadError::Unavailable(Unavailable::NotDurable { op: 3 }),
            503,
            api::code::UNAVAILABLE,
        ),
        (ReadError::Internal(fault()), 500, api::code::STORAGE),
    ];
    for (error, status, code) in reads {
        node.lock().read_error = Some(error.clone());
        let (got, value) = send(&app, Call::get("/v1/streams/1/events", Some(READER))).await;
        let body = error_of(&value);
        assert_eq!(
            (got.as_u16(), body.error.code.as_str()),
            (status, code),
            "{error:?}"
        );
    }
    node.lock().read_error = None;

    let proofs: Vec<(ProofError, u16, &str)> = vec![
        (
            ProofError::NoSuchEvent {
                stream: 1,
                offset: 0,
            },
            404,
            api::code::NOT_FOUND,
        ),
        (
            ProofError::NotCertifiedYet {
                stream: 1,
                offset: 0,
            },
            404,
            api::code::NOT_FOUND,
        ),
        (
            ProofError::NoCertificate { size: Some(9) },
            422,
            api::code::REFUSED,
        ),
        (
            ProofError::ConsistencyRange { from: 5, to: 2 },
            422,
            api::code::REFUSED,
        ),
        (
            ProofError::Unavailable(Unavailable::NotDurable { op: 1 }),
            503,
            api::code::UNAVAILABLE,
        ),
        (ProofError::Internal(fault()), 500, api::code::STORAGE),
    ];
    for (error, status, code) in proofs {
        node.lock().proof_error = Some(error.clone());
        let (got, value) = send(
            &app,
            Call::get("/v1/streams/1/events/0/proof", Some(READER)),
        )
        .await;
        let body = error_of(&value);
        assert_eq!(
            (got.as_u16(), body.error.code.as_str()),
            (status, code),
            "{error:?}"
        );
    }
    node.lock().proof_error = None;

    let exports: Vec<(ExportError, u16, &str)> = vec![
        (
            ExportError::UnknownStream { stream: 1 },
            404,
            api::code::NOT_FOUND,
        ),
        (
            ExportError::Range {
                from: 0,
                to: 1,
                max: 1,
            },
            422,
            api::code::REFUSED,
        ),
        (
            ExportError::BeyondStream {
                stream: 1,
                committed: 0,
                to: 1,
            },
            422,
            api::code::REFUSED,
        ),
        (ExportError::NothingCertified, 422, api::code::REFUSED),
        (
            ExportError::Unavailable(not_primary),
            503,
            api::code::UNAVAILABLE,
        ),
        // A bundle that failed to build from the replica's own log.
        (
            ExportError::Internal(InternalFault::new(FaultKind::Bundle, "signing failed")),
            500,
            api::code::STORAGE,
        ),
    ];
    let export = r#"{"stream":1,"from":0,"to":1}"#;
    for (error, status, code) in exports {
        node.lock().export_error = Some(error.clone());
        let (got, value) = send(&app, Call::post("/v1/export/events", Some(WRITER), export)).await;
        let body = error_of(&value);
        assert_eq!(
            (got.as_u16(), body.error.code.as_str()),
            (status, code),
            "{error:?}"
        );
    }
}

// Goal: the trail's errors map by variant too (the guard withholds the answer with a
// 503 whatever the trail's error, so this checks the mapping itself).
#[test]
fn trail_errors_map_by_variant() {
    use super::routes::errors::ApiError;
    let cases = [
        (
            TrailError::Unavailable(Unavailable::TrailQueueFull { queued: 8 }),
            503,
            api::code::UNAVAILABLE,
        ),
        (
            TrailError::Indeterminate {
                reason: "view change".into(),
            },
            503,
            api::code::INDETERMINATE,
        ),
        (
            TrailError::Internal(InternalFault::new(FaultKind::Storage, "fsync")),
            500,
            api::code::STORAGE,
        ),
    ];
    for (error, status, code) in cases {
        let api = ApiError::from(error.clone());
        assert_eq!((api.status.as_u16(), api.code), (status, code), "{error:?}");
    }
}

// Goal: each tlog error variant maps to its status and code: a tile no
// certified tree has is 404, never a 5xx; only an internal fault is 500.
#[test]
fn tlog_errors_map_by_variant() {
    use super::node::TlogError;
    use super::routes::errors::ApiError;
    let cases = [
        (
            TlogError::BeyondCheckpoint {
                path: "tile/0/001".into(),
                size: 300,
            },
            404,
            api::code::NOT_FOUND,
        ),
        (
            TlogError::Unavailable(Unavailable::NotDurable { op: 4 }),
            503,
            api::code::UNAVAILABLE,
        ),
        (
            TlogError::Internal(InternalFault::new(FaultKind::Corruption, "leaf")),
            500,
            api::code::STORAGE,
        ),
    ];
    for (error, status, code) in cases {
        let api = ApiError::from(error.clone());
        assert_eq!((api.status.as_u16(), api.code), (status, code), "{error:?}");
    }
}

// Goal: reads default to 100 events; a max above READ_EVENTS_MAX is refused (400, as the
// OpenAPI document says), never silently clamped, and never reaches the node.
#[tokio::test]
async fn read_max_defaults_and_above_the_page_is_refused() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let app = app(node.clone());
    let _ = send(&app, Call::get("/v1/log", Some(READER))).await;
    assert_eq!(node.lock().last_max, Some(100));
    let (status, _) = send(&app, Call::get("/v1/log?max=1000", Some(READER))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(node.lock().last_max, Some(api::READ_EVENTS_MAX));
    node.lock().last_max = None;
    for uri in ["/v1/streams/1/events?max=1001", "/v1/log?max=999999"] {
        let (status, value) = send(&app, Call::get(uri, Some(READER))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {value}");
        assert!(
            error_of(&value).error.message.starts_with("max: "),
            "{value}"
        );
    }
    assert_eq!(
        node.lock().last_max,
        None,
        "a refused read reached the node"
    );
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

// Goal: a backup forwards tlog-tiles requests to the primary, but refuses
// (400) a path with dot segments, which the forwarding client would resolve
// into another, canonical tile path the primary would then serve.
#[tokio::test]
async fn backup_refuses_dot_segments_instead_of_forwarding_another_path() {
    let primary = Arc::new(FakeNode::default());
    let base = serve_plain(app(primary.clone())).await;
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let backup_app = router(state_with(backup.clone(), vec![(1, base)]));
    let (status, value) = send(&backup_app, Call::get("/v1/tlog/tile/0/000", Some(AUDITOR))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
    assert!(
        error_of(&value)
            .error
            .message
            .contains("tile/0/000 is not in the tree"),
        "{value}"
    );
    assert_eq!(primary.lock().trail.len(), 1, "recorded by the primary");
    for path in [
        "/v1/tlog/tile/0/x001/../000",
        "/v1/tlog/tile/0/./000",
        "/v1/tlog/tile/0/x001/%2E%2e/000",
        "/v1/tlog/tile/0/x001/.%2E/000",
    ] {
        let (status, value) = send(&backup_app, Call::get(path, Some(AUDITOR))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {value}");
        assert!(
            error_of(&value).error.message.contains("segment"),
            "{value}"
        );
    }
    assert_eq!(
        primary.lock().trail.len(),
        1,
        "nothing more reached the primary"
    );
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
            paths
                .get(&super::openapi::openapi_path(route.path))
                .and_then(|p| p.get(&method))
                .is_some(),
            "{} {} missing",
            route.method,
            route.path
        );
        // The route exists in the router: it is not answered by the not-found fallback.
        let uri = route
            .path
            .replace("{stream}", "1")
            .replace("{offset}", "0")
            .replace("{*path}", "0/000");
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
        token.starts_with("vlm_")
            && token.len() == 4 + 64
            && token[4..]
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{token}"
    );
    assert_ne!(token, generate_token());
    let store = TokenStore::from_lines(&format!(
        "# comment\n\n{}\n",
        token_line(&token, "dora", Role::Reader, &Scope::all())
    ))
    .expect("store");
    let principal = store.authenticate(&token, 0).expect("known token");
    assert_eq!(
        (principal.name.as_str(), principal.role),
        ("dora", Role::Reader)
    );
    assert!(store.authenticate("vlm_other", 0).is_err());
    assert!(Role::Writer.allows(Action::Append));
    assert!(!Role::Reader.allows(Action::Append) && Role::Reader.allows(Action::Subscribe));
    assert!(Role::Auditor.allows(Action::Proof) && !Role::Auditor.allows(Action::ReadLog));
}

// Goal: a tokens file of the most principals allowed loads (each line
// checked against the others by set, not pairwise), and a repeated token
// or principal anywhere in it refuses the whole file, naming the line.
#[test]
fn a_full_tokens_file_loads_and_any_repeat_refuses_it() {
    let lines: Vec<(String, String)> = (0..crate::server::auth::PRINCIPALS_MAX)
        .map(|i| {
            let token = format!("vlm_{i:064x}");
            let line = token_line(&token, &format!("svc-{i}"), Role::Reader, &Scope::all());
            (token, line)
        })
        .collect();
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    let store = TokenStore::from_lines(&text).expect("a full file loads");
    let (last_token, _) = &lines[lines.len() - 1];
    let principal = store
        .authenticate(last_token, 0)
        .expect("the last line's token");
    assert_eq!(
        principal.name,
        format!("svc-{}", crate::server::auth::PRINCIPALS_MAX - 1)
    );
    // The file's first token again, under a new name, as its last line
    // (the most principals allowed in all).
    let repeated_token = token_line(&lines[1].0, "svc-again", Role::Reader, &Scope::all());
    let mut text_token: String = lines[1..].iter().map(|(_, l)| format!("{l}\n")).collect();
    text_token.push_str(&format!("{repeated_token}\n"));
    let Err(error) = TokenStore::from_lines(&text_token) else {
        panic!("a repeated token was accepted");
    };
    assert!(
        error.to_string().contains("digest appears twice"),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!("line {}", lines.len())),
        "{error}"
    );
    // A new token under the first line's name.
    let repeated_name = token_line("vlm_another", "svc-0", Role::Reader, &Scope::all());
    let Err(error) = TokenStore::from_lines(&format!("{}\n{repeated_name}\n", lines[0].1)) else {
        panic!("a repeated principal was accepted");
    };
    assert!(
        error.to_string().contains("\"svc-0\" appears twice"),
        "{error}"
    );
}

// Goal: key custody (shred, hold, release, retention) is the privacy
// officer's alone, and the privacy officer sees no payload; the role's
// tokens-file spelling round-trips.
#[test]
fn key_custody_is_the_privacy_officers_alone() {
    let custody = [
        Action::Shred,
        Action::Hold,
        Action::ReleaseHold,
        Action::Retain,
    ];
    for action in custody {
        assert!(Role::PrivacyOfficer.allows(action), "{action:?}");
        for role in [Role::Writer, Role::Reader, Role::Auditor] {
            assert!(!role.allows(action), "{role} may not {action:?}");
        }
    }
    for action in [
        Action::Append,
        Action::ReadStream,
        Action::ReadLog,
        Action::Subscribe,
        Action::ExportEvents,
        Action::BreakGlass,
    ] {
        assert!(!Role::PrivacyOfficer.allows(action), "{action:?}");
    }
    assert!(Role::PrivacyOfficer.allows(Action::ExportAudit));
    assert_eq!("privacy-officer".parse::<Role>(), Ok(Role::PrivacyOfficer));
    assert_eq!(Role::PrivacyOfficer.name(), "privacy-officer");
}

// Goal: a malformed tokens file is refused with the file and line named.
#[test]
fn tokens_file_errors_name_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens");
    let good = token_line("vlm_a", "ann", Role::Writer, &Scope::all());
    let cases = [
        format!("{good}\nsha256:zz ann2 writer\n"),
        format!(
            "{good}\n{}\n",
            token_line("vlm_b", "ben", Role::Writer, &Scope::all()).replace("writer", "admin")
        ),
        format!(
            "{good}\n{}\n",
            token_line("vlm_a", "ann2", Role::Reader, &Scope::all())
        ),
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
    // A world-writable tokens file is refused (anyone could add a token), naming the file.
    use std::os::unix::fs::PermissionsExt as _;
    let open = dir.path().join("open.tokens");
    std::fs::write(
        &open,
        token_line(WRITER, "alice", Role::Writer, &Scope::all()),
    )
    .expect("write");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let error = TokenStore::load(&open).expect_err("world-writable");
    assert!(error.to_string().contains("open.tokens"), "{error}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    TokenStore::load(&open).expect("a file only its owner may write loads");
}

pub(super) fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
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
        identity: None,
        client_certs: None,
        credential_files: None,
        tls_watcher: None,
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

// ------------------------------------------------- numbers at the edge (issue 9, defect 1)

const HUGE: &str = "18446744073709551615";
const ABOVE_I64: &str = "9223372036854775808";

/// Every number in the trail fits a signed 64-bit SQL integer.
fn assert_trail_fits_i64(node: &FakeNode) {
    for event in &node.lock().trail {
        for (what, number) in [
            ("stream", event.stream),
            ("from", event.from),
            ("to", event.to),
        ] {
            assert!(
                number.is_none_or(|n| n <= crate::bounds::EDGE_INTEGER_MAX),
                "trail {what} {number:?} is above i64::MAX: {event:?}"
            );
        }
    }
}

// Goal: a stream id above i64::MAX without a token answers 400/401 and its trail event
// carries no number above i64::MAX (the number that once stopped the audit index).
#[tokio::test]
async fn huge_stream_without_token_never_reaches_the_trail() {
    let node = Arc::new(FakeNode::default());
    let state = state_with(node.clone(), Vec::new());
    let app = router(state.clone());
    let uris = [
        format!("/v1/streams/{HUGE}/events"),
        format!("/v1/streams/{ABOVE_I64}/events"),
        format!("/v1/streams/{HUGE}/events/0/proof"),
        "/v1/streams/+5/events".to_string(),
    ];
    for uri in &uris {
        for token in [None, Some("vlm_nope"), Some(READER)] {
            let (status, value) = send(&app, Call::get(uri, token)).await;
            assert!(
                matches!(status.as_u16(), 400 | 401),
                "{uri} {token:?}: {status} {value}"
            );
        }
    }
    // Failed logins after the first of their window are counted into one
    // aggregate, recorded once the window closes.
    flush_logins(&state).await;
    let trail = node.lock().trail.clone();
    let attempts: u64 = trail.iter().map(|e| e.attempts()).sum();
    assert_eq!(attempts, uris.len() as u64 * 3, "every attempt is counted");
    assert!(trail.iter().all(|e| e.stream.is_none()), "{trail:?}");
    assert_trail_fits_i64(&node);
}

// Goal: every id, offset, position, size and time in path, query and body is refused
// with a 400 naming the field when above i64::MAX or not in its one canonical spelling,
// before it reaches the node or the trail.
#[tokio::test]
async fn edge_numbers_are_range_and_spelling_checked() {
    let node = Arc::new(FakeNode::default());
    node.push(5001, b"x");
    let app = app(node.clone());
    let w = Some(WRITER);
    let ok = r#"{"events":[{"json":1}]}"#;
    let gets: Vec<(String, Option<&str>, &str)> = vec![
        (format!("/v1/streams/{HUGE}/events"), w, "stream"),
        ("/v1/streams/+5001/events".into(), w, "stream"),
        ("/v1/streams/05001/events".into(), w, "stream"),
        (
            format!("/v1/streams/5001/events?from={ABOVE_I64}"),
            w,
            "from",
        ),
        ("/v1/streams/5001/events?from=01".into(), w, "from"),
        ("/v1/streams/5001/events?max=+5".into(), w, "max"),
        (format!("/v1/log?from={HUGE}"), w, "from"),
        (format!("/v1/subscribe?from={ABOVE_I64}"), w, "from"),
        (format!("/v1/streams/{HUGE}/events/0/proof"), w, "stream"),
        (format!("/v1/streams/5001/events/{HUGE}/proof"), w, "offset"),
        ("/v1/streams/5001/events/00/proof".into(), w, "offset"),
        (format!("/v1/consistency?from={HUGE}"), w, "from"),
        (format!("/v1/consistency?from=0&to={ABOVE_I64}"), w, "to"),
        (
            format!("/v1/export/audit?from_ns={HUGE}"),
            Some(AUDITOR),
            "from_ns",
        ),
        (
            format!("/v1/export/audit?to_ns={ABOVE_I64}"),
            Some(AUDITOR),
            "to_ns",
        ),
        (
            format!("/v1/export/audit?stream={HUGE}"),
            Some(AUDITOR),
            "stream",
        ),
    ];
    for (uri, token, field) in &gets {
        let (status, value) = send(&app, Call::get(uri, *token)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {value}");
        let message = error_of(&value).error.message;
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{uri}: {message}"
        );
    }
    let session = "0123456789abcdef0123456789abcdef";
    let posts: Vec<(String, String, Option<&str>, &str)> = vec![
        (
            format!("/v1/streams/{ABOVE_I64}/append"),
            ok.into(),
            w,
            "stream",
        ),
        ("/v1/streams/+5001/append".into(), ok.into(), w, "stream"),
        (
            "/v1/streams/5001/append".into(),
            format!(r#"{{"events":[{{"json":1}}],"expected_offset":{HUGE}}}"#),
            w,
            "expected_offset",
        ),
        (
            "/v1/streams/5001/append".into(),
            format!(
                r#"{{"events":[{{"json":1}}],"idempotency":{{"session":"{session}","request":{ABOVE_I64}}}}}"#
            ),
            w,
            "idempotency.request",
        ),
        (
            "/v1/export/events".into(),
            format!(r#"{{"stream":{HUGE},"from":0,"to":1}}"#),
            w,
            "stream",
        ),
        (
            "/v1/export/events".into(),
            format!(r#"{{"stream":5001,"from":0,"to":{ABOVE_I64}}}"#),
            w,
            "to",
        ),
        (
            "/v1/verifications".into(),
            format!(
                r#"{{"scope":"s","passed":true,"report_sha256":"{}","checkpoint_size":{HUGE}}}"#,
                "a".repeat(64)
            ),
            Some(AUDITOR),
            "checkpoint_size",
        ),
    ];
    for (uri, body, token, field) in &posts {
        let (status, value) = send(&app, Call::post(uri, *token, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {value}");
        let message = error_of(&value).error.message;
        assert!(
            message.starts_with(&format!("{field}: ")),
            "{uri} {body}: {message}"
        );
    }
    // Members typed integer (or string, or object) refuse `null`, as the schema says.
    let nulls = [
        r#"{"events":[{"json":1}],"expected_offset":null}"#,
        r#"{"events":[{"json":1}],"idempotency":null}"#,
        r#"{"events":[{"json":1}],"purpose":null}"#,
        r#"{"events":[{"base64":null}]}"#,
    ];
    for body in nulls {
        let (status, value) = send(&app, Call::post("/v1/streams/5001/append", w, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {value}");
    }
    let null_size = format!(
        r#"{{"scope":"s","passed":true,"report_sha256":"{}","checkpoint_size":null}}"#,
        "a".repeat(64)
    );
    let (status, value) = send(
        &app,
        Call::post("/v1/verifications", Some(AUDITOR), &null_size),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    // Consistency: a start of 0, or beyond the latest certificate, is refused naming
    // the API's parameter, never a command-line flag.
    for (uri, status) in [
        ("/v1/consistency?from=0", StatusCode::BAD_REQUEST),
        ("/v1/consistency?from=9", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (got, value) = send(&app, Call::get(uri, w)).await;
        assert_eq!(got, status, "{uri}: {value}");
        let message = error_of(&value).error.message;
        assert!(
            message.starts_with("from: ") && !message.contains("--"),
            "{uri}: {message}"
        );
    }
    // Nothing was appended, and the trail holds no number above i64::MAX.
    assert_eq!(node.lock().log.len(), 1);
    assert_trail_fits_i64(&node);
    // The largest accepted value passes the edge (and reaches the node).
    let max = crate::bounds::EDGE_INTEGER_MAX;
    let (status, value) = send(&app, Call::get(&format!("/v1/streams/{max}/events"), w)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{value}");
}

// Goal: an append of more events than one op carries, or of an event above the largest
// event size, is a 400 naming the limit (the limits the docs and OpenAPI state).
#[tokio::test]
async fn append_limits_are_refused_at_the_edge() {
    let node = Arc::new(FakeNode::default());
    let app = app(node.clone());
    let many = vec![r#"{"json":1}"#; api::APPEND_EVENTS_MAX + 1].join(",");
    let body = format!(r#"{{"events":[{many}]}}"#);
    let (status, value) = send(
        &app,
        Call::post("/v1/streams/1/append", Some(WRITER), &body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert!(error_of(&value).error.message.contains("4096"), "{value}");
    let big = base64::engine::general_purpose::STANDARD.encode(vec![7u8; api::EVENT_BYTES_MAX + 1]);
    let body = format!(r#"{{"events":[{{"base64":"{big}"}}]}}"#);
    let (status, value) = send(
        &app,
        Call::post("/v1/streams/1/append", Some(WRITER), &body),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
    assert!(
        error_of(&value).error.message.contains("events[0]"),
        "{value}"
    );
    assert!(node.lock().log.is_empty());
    let openapi = super::openapi::document();
    let append = &openapi["components"]["schemas"]["AppendRequest"]["properties"]["events"];
    assert_eq!(append["maxItems"], json!(api::APPEND_EVENTS_MAX));
}

// Goal: only the auditor role may record a verification, and never with a checkpoint
// beyond the replica's log.
#[tokio::test]
async fn only_auditors_record_verifications_within_the_log() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"a");
    node.push(1, b"b");
    let app = app(node.clone());
    let record = |size: u64| {
        format!(
            r#"{{"scope":"s","passed":true,"report_sha256":"{}","checkpoint_size":{size}}}"#,
            "a".repeat(64)
        )
    };
    for token in [WRITER, READER] {
        let (status, value) = send(
            &app,
            Call::post("/v1/verifications", Some(token), &record(1)),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{token}: {value}");
    }
    let (status, value) = send(
        &app,
        Call::post("/v1/verifications", Some(AUDITOR), &record(3)),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{value}");
    assert!(error_of(&value).error.message.contains("beyond"), "{value}");
    let (status, value) = send(
        &app,
        Call::post("/v1/verifications", Some(AUDITOR), &record(2)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{value}");
}

// ------------------------------------------------- byte-exact json events (issue 9, defect 2)

/// Appends `json` as the one event's `json` member and returns the stored bytes.
async fn store_json(app: &Router, node: &FakeNode, stream: u64, json: &str) -> Bytes {
    let body = format!(r#"{{"events":[{{"json":{json}}}]}}"#);
    let uri = format!("/v1/streams/{stream}/append");
    let (status, value) = send(app, Call::post(&uri, Some(WRITER), &body)).await;
    assert_eq!(status, StatusCode::OK, "{json}: {value}");
    node.lock().streams[&stream]
        .last()
        .cloned()
        .expect("stored")
}

// Goal: a real FHIR Observation keeps its decimals (`-96.17060814119407`, `1.50`), key
// order and spacing byte for byte, and reads back the same bytes through the API.
#[tokio::test]
async fn fhir_observation_is_stored_byte_for_byte() {
    let node = Arc::new(FakeNode::default());
    let app = app(node.clone());
    let observation = r#"{"resourceType":"Observation","id":"f-1","status":"final",
  "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
  "valueQuantity":{"value":1.50,"unit":"mg/dL"},
  "component":[{"valueQuantity":{"value": -96.17060814119407}}],
  "note":[{"text":"caf\u00e9 \/ 12345678901234567890123"}],"z":1,"a":2}"#;
    let stored = store_json(&app, &node, 9, observation).await;
    assert_eq!(stored, Bytes::from(observation), "stored bytes differ");
    let (status, events) = send(&app, Call::get("/v1/streams/9/events", Some(READER))).await;
    assert_eq!(status, StatusCode::OK);
    let text = events["events"][0]["base64"].as_str().expect("base64");
    let read = base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64");
    assert_eq!(read, observation.as_bytes(), "read-back bytes differ");
    // `null` is a JSON value too, stored as itself.
    assert_eq!(
        store_json(&app, &node, 9, "null").await,
        Bytes::from("null")
    );
}

fn json_number() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        Just("1.50".to_string()),
        Just("-0.0".to_string()),
        Just("1e400".to_string()),
        Just("-96.17060814119407".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("0".to_string()),
        "-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
    ]
}

fn json_string() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    proptest::collection::vec(
        prop_oneof![
            "[a-zA-Z0-9 ]{1,5}",
            Just("\\u00e9".to_string()),
            Just("\\/".to_string()),
            Just("\\\"".to_string()),
            Just("\\n".to_string()),
            Just("é".to_string()),
        ],
        0..4,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

/// JSON texts with every number form, escapes, key orders and inner whitespace.
fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    let space = prop_oneof![Just(""), Just(" "), Just("\n  "), Just("\t")];
    let leaf = prop_oneof![
        json_number(),
        json_string(),
        Just("true".to_string()),
        Just("null".to_string()),
    ];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        let space = space.clone();
        prop_oneof![
            (proptest::collection::vec((json_string(), inner.clone(), space.clone()), 0..4))
                .prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}{s}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            (proptest::collection::vec((inner, space), 0..4)).prop_map(|items| {
                let items: Vec<String> =
                    items.into_iter().map(|(v, s)| format!("{s}{v}")).collect();
                format!("[{}]", items.join(","))
            }),
        ]
    })
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    // Goal (P9): any JSON text appended as `json` reads back byte for byte.
    #[test]
    fn json_events_read_back_byte_for_byte(text in json_text()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let node = Arc::new(FakeNode::default());
        let app = app(node.clone());
        let stored = runtime.block_on(store_json(&app, &node, 3, &text));
        proptest::prop_assert_eq!(stored, Bytes::from(text));
    }
}

// ------------------------------------------------- pre-auth stalls (issue 9, defect 5)

/// A body that sends `head` and then never ends.
fn stalled_body(head: &'static str) -> Body {
    let first =
        futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) });
    Body::from_stream(first.chain(futures_util::stream::pending()))
}

// Goal: a body that does not arrive within the deadline is cut with 408, at the primary
// and at a backup (which reads it only for an authorized caller).
#[tokio::test]
async fn slow_body_is_cut_after_the_deadline() {
    let primary = Arc::new(FakeNode::default());
    let primary_app =
        router(state_with(primary.clone(), Vec::new()).with_body_read_timeout_ms(200));
    let base = serve_plain(primary_app.clone()).await;
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let backup_app = router(state_with(backup, vec![(1, base)]).with_body_read_timeout_ms(200));
    for app in [&primary_app, &backup_app] {
        let request = Request::builder()
            .method("POST")
            .uri("/v1/streams/1/append")
            .header(header::AUTHORIZATION, format!("Bearer {WRITER}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(stalled_body(r#"{"events":["#))
            .expect("request");
        let started = Instant::now();
        let response = tokio::time::timeout(WAIT, app.clone().oneshot(request))
            .await
            .expect("a slow body is cut, not waited for")
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(primary.lock().log.is_empty());
}

// Goal: a backup never uses a refused caller's body: a tokenless request with a body that
// never ends is answered 401 within the drain bound (its bytes are dropped unread for meaning),
// and the primary records the refusal in the trail.
#[tokio::test]
async fn backup_refuses_tokenless_request_without_reading_its_body() {
    let primary = Arc::new(FakeNode::default());
    let primary_state = state_with(primary.clone(), Vec::new());
    let base = serve_plain(router(primary_state.clone())).await;
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let backup_app = router(state_with(backup, vec![(1, base)]));
    for token in [None, Some("vlm_nope"), Some(READER)] {
        let mut builder = Request::builder()
            .method("POST")
            .uri("/v1/streams/1/append")
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = builder.body(stalled_body("{")).expect("request");
        let response =
            tokio::time::timeout(Duration::from_secs(3), backup_app.clone().oneshot(request))
                .await
                .expect("answered without waiting for the body")
                .expect("infallible");
        let expected = if token == Some(READER) { 403 } else { 401 };
        assert_eq!(response.status().as_u16(), expected, "{token:?}");
    }
    // The second failed login of the window is counted, then recorded in
    // its window's aggregate.
    flush_logins(&primary_state).await;
    let trail = primary.lock().trail.clone();
    assert_eq!(
        trail.iter().map(|e| e.attempts()).sum::<u64>(),
        3,
        "each refusal is recorded at the primary: {trail:?}"
    );
    assert!(
        trail.iter().all(|e| e.outcome.starts_with("denied")),
        "{trail:?}"
    );
}

// Goal: a client still uploading a large body with a bad token, or with a
// role that may not append, reads its 401/403 instead of having the
// connection torn down under it: the refused body is drained and dropped
// (a lingering close), so the whole upload is written and the answer read.
#[tokio::test]
async fn refused_uploads_read_their_answer_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = Arc::new(FakeNode::default());
    let base = serve_plain(router(state_with(node, Vec::new()))).await;
    let addr = base.trim_start_matches("http://").to_string();
    let body = format!("{{\"events\":[{{\"json\":\"{}\"}}]}}", "a".repeat(1 << 20));
    for (token, expected) in [("vlm_nope", "401"), (READER, "403")] {
        let mut stream = tokio::net::TcpStream::connect(&addr)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/streams/1/append HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        // Slowly enough that a server answering and closing at once would
        // reset the connection before the last chunk.
        for chunk in body.as_bytes().chunks(64 << 10) {
            stream
                .write_all(chunk)
                .await
                .unwrap_or_else(|e| panic!("{token}: upload cut off: {e}"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut answer = vec![0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered")
            .expect("read");
        let status = String::from_utf8_lossy(&answer[..read]).to_string();
        assert!(
            status.starts_with(&format!("HTTP/1.1 {expected}")),
            "{token}: {status}"
        );
    }
}

/// A TLS client trusting the test certificate.
fn tls_connector(pem: &str) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

// Goal: stalled tokenless connections against a backup (256 stalling in the body, and
// more silent ones from one address than that address may hold) do not stop a legitimate
// client (another address) from being served within a short bound.
#[tokio::test]
async fn stalled_tokenless_connections_do_not_starve_a_backup() {
    use tokio::io::AsyncWriteExt as _;
    const STALLED: usize = 256;
    let silent_max = super::CONNECTIONS_PER_ADDRESS_MAX + 64;
    let primary = Arc::new(FakeNode::default());
    primary.push(1, b"x");
    let base = serve_plain(app(primary.clone())).await;
    let (tls, pem) = tls_config();
    let backup = Arc::new(FakeNode::default());
    backup.set_mode(Mode::NotPrimary(Some(1)));
    let config = super::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls,
        tokens: tokens(),
        peer_api: vec![(1, base)],
        ca_pem: Vec::new(),
        identity: None,
        client_certs: None,
        credential_files: None,
        tls_watcher: None,
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = super::serve(config, backup, shutdown).await.expect("serve");
    let addr = handle.local_addr;
    let connector = tls_connector(&pem);
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut stalled = Vec::new();
    let started = Instant::now();
    // STALLED stall in the body of a tokenless append (127.0.0.2); then more
    // than one address may hold send no request at all (127.0.0.3).
    let mut silent_served = 0;
    for i in 0..STALLED + silent_max {
        if started.elapsed() > WAIT {
            break;
        }
        let silent = i >= STALLED;
        let from = if silent { "127.0.0.3:0" } else { "127.0.0.2:0" };
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(from.parse().expect("addr"))
            .expect("bind a loopback address");
        let Ok(Ok(tcp)) = tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await
        else {
            continue;
        };
        let handshake =
            tokio::time::timeout(Duration::from_secs(1), connector.connect(name.clone(), tcp));
        let Ok(Ok(mut tls)) = handshake.await else {
            continue; // Closed on accept: this address has its share.
        };
        if silent {
            silent_served += 1;
        } else {
            let head = "POST /v1/streams/1/append HTTP/1.1\r\nhost: localhost\r\n\
                        content-type: application/json\r\ncontent-length: 1000000\r\n\r\n{";
            let _ = tls.write_all(head.as_bytes()).await;
        }
        stalled.push(tls);
    }
    assert!(
        silent_served <= super::CONNECTIONS_PER_ADDRESS_MAX,
        "{silent_served} silent connections from one address were served"
    );
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(pem.as_bytes()).expect("pem"))
        .resolve("localhost", addr)
        .timeout(Duration::from_secs(8))
        .build()
        .expect("client");
    let served = Instant::now();
    // An append: the backup forwards it to the (plain-HTTP) primary. (A read
    // the backup would serve itself, and relay its trail record, which
    // needs the replica certificate these plain test peers lack.)
    let answer = client
        .post(format!(
            "https://localhost:{}/v1/streams/5/append",
            addr.port()
        ))
        .bearer_auth(WRITER)
        .header("content-type", "application/json")
        .body(r#"{"events":[{"json":"hello"}]}"#)
        .send()
        .await
        .expect("the legitimate client is served");
    assert_eq!(answer.status(), reqwest::StatusCode::OK);
    // Well under the 10 s header and body deadlines: nothing waited for a staller.
    assert!(
        served.elapsed() < Duration::from_secs(8),
        "{:?}",
        served.elapsed()
    );
    // The stalled requests were refused at once (their bodies never read) and
    // recorded at the primary, each as one bounded trail record.
    let denied = primary
        .lock()
        .trail
        .iter()
        .filter(|e| e.outcome.starts_with("denied"))
        .count();
    assert!((1..=STALLED).contains(&denied), "{denied}");
    drop(stalled);
    stop.send(true).expect("server listening");
    tokio::time::timeout(WAIT, handle.join())
        .await
        .expect("server stops");
}

// Goal: the forwarded-client address header is honored only from a peer that proved it is
// a replica (its certificate); a client setting it cannot put an address in the trail.
#[tokio::test]
async fn client_address_header_is_honored_only_from_a_replica() {
    let node = Arc::new(FakeNode::default());
    let app = app(node.clone());
    let peer: std::net::SocketAddr = "127.0.0.1:4000".parse().expect("addr");
    for from_replica in [false, true] {
        let mut request = Call::get("/v1/log", Some(READER)).request();
        request.headers_mut().insert(
            super::forward::CLIENT_ADDR_HEADER,
            "203.0.113.9:1".parse().expect("header"),
        );
        request.extensions_mut().insert(super::RemoteAddr(peer));
        if from_replica {
            request.extensions_mut().insert(super::PeerReplica(1));
        }
        let response = app.clone().oneshot(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
    }
    let remotes: Vec<Option<String>> = node.lock().trail.iter().map(|e| e.remote.clone()).collect();
    assert_eq!(
        remotes,
        vec![
            Some("127.0.0.1:4000".to_string()),
            Some("203.0.113.9:1 via 127.0.0.1:4000".to_string())
        ]
    );
}

// Goal: the router is built from the route table: every row is served with its method
// (never 404 or 405), and its access rule holds (a protected row without a token is 401).
#[tokio::test]
async fn router_serves_exactly_the_route_table() {
    let node = Arc::new(FakeNode::default());
    let app = app(node);
    for spec in ROUTES {
        let uri = spec
            .path
            .replace("{stream}", "1")
            .replace("{offset}", "0")
            .replace("{*path}", "0/000");
        let request = Request::builder()
            .method(spec.method)
            .uri(&uri)
            .body(Body::empty())
            .expect("request");
        let response = app.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        assert!(
            status != StatusCode::NOT_FOUND && status != StatusCode::METHOD_NOT_ALLOWED,
            "{} {uri}: {status}",
            spec.method
        );
        if spec.action.is_some() {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{} {uri}", spec.method);
        } else {
            assert_eq!(status, StatusCode::OK, "{} {uri}", spec.method);
        }
    }
}

// Goal (45 CFR 164.528, issue 9 defect 7): a global-log read records the
// streams it returned, a request can name the disclosure's recipient and
// description, and each subscription window is recorded with its streams
// before any of its events leaves.
#[tokio::test]
async fn global_reads_and_subscription_windows_record_the_streams_they_return() {
    use vellum_compliance::trail::AccessAction;
    let node = Arc::new(FakeNode::default());
    node.push(1001, b"a");
    node.push(2002, b"b");
    node.push(1001, b"c");
    let app = app(Arc::clone(&node));
    let request = Request::builder()
        .uri("/v1/log?from=0&max=3")
        .header(header::AUTHORIZATION, format!("Bearer {READER}"))
        .header(super::routes::RECIPIENT_HEADER, "County Health Dept.")
        .header(super::routes::DESCRIPTION_HEADER, "immunization report")
        .body(Body::empty())
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    {
        let trail = node.lock().trail.clone();
        let read = trail.last().expect("the read is recorded");
        assert_eq!(read.action, AccessAction::ReadLog);
        assert_eq!(read.streams, Some(vec![1001, 2002]));
        assert_eq!(read.recipient.as_deref(), Some("County Health Dept."));
        assert_eq!(read.description.as_deref(), Some("immunization report"));
    }

    let before = node.lock().trail.len();
    let response = app
        .oneshot(Call::get("/v1/subscribe?from=1", Some(READER)).request())
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let lines = read_lines(&mut stream, &mut buffer, 2, "\n").await;
    assert_eq!(lines.len(), 2);
    let trail = node.lock().trail.clone();
    let windows: Vec<_> = trail[before..]
        .iter()
        .filter(|e| e.action == AccessAction::Subscribe && e.streams.is_some())
        .collect();
    assert_eq!(windows.len(), 1, "{trail:?}");
    assert_eq!(windows[0].streams, Some(vec![1001, 2002]));
    assert_eq!((windows[0].from, windows[0].to), (Some(1), Some(3)));
    assert_eq!(windows[0].principal, "bob");
    // The subscription's opening is recorded too, without streams.
    assert!(
        trail[before..]
            .iter()
            .any(|e| e.action == AccessAction::Subscribe && e.streams.is_none())
    );
}

// ------------------------------------------------- failed logins (issue 12)

/// Records every pending failed-login aggregate, as the server's sweep does
/// once their windows close.
async fn flush_logins(state: &AppState) {
    let later = Instant::now() + Duration::from_millis(super::logins::FAILED_LOGIN_WINDOW_MS);
    super::routes::guard::flush_failed_logins(state, later, false).await;
}

/// A GET of the global log from `ip` with `token`: status and Retry-After.
async fn get_log_from(app: &Router, ip: &str, token: &str) -> (StatusCode, Option<u64>) {
    get_log_maybe_token(app, ip, Some(token)).await
}

async fn get_log_maybe_token(
    app: &Router,
    ip: &str,
    token: Option<&str>,
) -> (StatusCode, Option<u64>) {
    let mut request = Call::get("/v1/log", token).request();
    let peer = std::net::SocketAddr::new(ip.parse().expect("ip"), 40_000);
    request.extensions_mut().insert(super::RemoteAddr(peer));
    let response = app.clone().oneshot(request).await.expect("infallible");
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (response.status(), retry_after)
}

fn auth_failures(node: &FakeNode) -> Vec<vellum_compliance::trail::AccessEvent> {
    use vellum_compliance::trail::AccessAction;
    let trail = node.lock().trail.clone();
    trail
        .into_iter()
        .filter(|e| e.action == AccessAction::AuthFailed)
        .collect()
}

// Goal: requests without any credential guess nothing, so they are always
// 401 (never 429, no Retry-After, not counted as limited), and still count
// into the address's one trail aggregate: the trail does not grow per request.
#[tokio::test]
async fn tokenless_requests_are_401_never_429_and_aggregated() {
    use super::logins::FAILED_LOGINS_PER_SOURCE_MAX;
    const FLOOD: u64 = 3 * FAILED_LOGINS_PER_SOURCE_MAX;
    let node = Arc::new(FakeNode::default());
    let state = state_with(node.clone(), Vec::new());
    let app = router(state.clone());
    for i in 0..FLOOD {
        let answer = get_log_maybe_token(&app, "198.51.100.9", None).await;
        assert_eq!(answer, (StatusCode::UNAUTHORIZED, None), "{i}");
    }
    assert_eq!(
        auth_failures(&node).len(),
        1,
        "one event while the window is open; the rest are counted into its aggregate"
    );
}

// Goal: a flood of N bad tokens from one address is answered 401 up to the
// per-address limit and 429 with Retry-After after it; the trail grows by
// exactly one event during the window and one aggregate after it, whose
// counts sum to N; a good token from that address is served all along;
// /metrics counts the failures.
#[tokio::test]
async fn a_flood_of_bad_tokens_is_limited_and_aggregated() {
    use super::logins::{FAILED_LOGIN_WINDOW_MS, FAILED_LOGINS_PER_SOURCE_MAX};
    const FLOOD: u64 = 3 * FAILED_LOGINS_PER_SOURCE_MAX;
    let node = Arc::new(FakeNode::default());
    node.push(1, b"x");
    let state = state_with(node.clone(), Vec::new());
    let app = router(state.clone());
    let window_s = FAILED_LOGIN_WINDOW_MS / 1000;
    for i in 0..FLOOD {
        // A different token prefix each time: the per-address limit bites.
        let token = format!("vlm_{i:04x}{}", "0".repeat(60));
        let (status, retry_after) = get_log_from(&app, "198.51.100.7", &token).await;
        if i < FAILED_LOGINS_PER_SOURCE_MAX {
            assert_eq!(
                (status, retry_after),
                (StatusCode::UNAUTHORIZED, None),
                "{i}"
            );
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{i}");
            assert!(
                retry_after.is_some_and(|s| (1..=window_s).contains(&s)),
                "{i}: {retry_after:?}"
            );
        }
        if i == FLOOD / 2 {
            let (status, _) = get_log_from(&app, "198.51.100.7", READER).await;
            assert_eq!(status, StatusCode::OK, "a good token is never locked out");
        }
    }
    let during = auth_failures(&node);
    assert_eq!(
        during.len(),
        1,
        "one event while the window is open: {during:?}"
    );
    assert_eq!(during[0].count, None);
    assert_eq!(during[0].remote.as_deref(), Some("198.51.100.7:40000"));
    let reads = node.lock().trail.iter().filter(|e| e.succeeded()).count();
    assert_eq!(reads, 1, "the good token's read is recorded");
    flush_logins(&state).await;
    let after = auth_failures(&node);
    assert_eq!(
        after.len(),
        2,
        "and one aggregate once it closed: {after:?}"
    );
    assert_eq!(after[1].count, Some(FLOOD - 1));
    assert_eq!(after[1].remote.as_deref(), Some("198.51.100.7"));
    assert_eq!(after.iter().map(|e| e.attempts()).sum::<u64>(), FLOOD);
    let limited = FLOOD - FAILED_LOGINS_PER_SOURCE_MAX;
    let detail = after[1].detail.clone().unwrap_or_default();
    assert!(
        detail.contains(&format!("answered_429={limited}")),
        "{detail}"
    );
    flush_logins(&state).await;
    assert_eq!(
        auth_failures(&node).len(),
        2,
        "an aggregate is recorded once"
    );
    let (_, text) = send(&app, Call::get("/metrics", None)).await;
    let text = text.as_str().expect("text").to_string();
    for line in [
        format!("vellum_failed_logins_total {FLOOD}"),
        format!("vellum_failed_logins_limited_total {limited}"),
    ] {
        assert!(text.contains(&line), "missing {line:?} in\n{text}");
    }
    // No event of the trail holds a presented token, whole or in part.
    let trail = format!("{:?}", node.lock().trail);
    assert!(!trail.contains("vlm_00"), "{trail}");
}

// Goal: one token prefix failing from many addresses, each under its own
// limit, is answered 429 after the per-prefix limit; another prefix from a
// fresh address is not; each address's first failure is recorded.
#[tokio::test]
async fn one_token_prefix_is_limited_across_addresses() {
    use super::logins::FAILED_LOGINS_PER_PREFIX_MAX;
    let node = Arc::new(FakeNode::default());
    let app = router(state_with(node.clone(), Vec::new()));
    let replayed = format!("vlm_dead{}", "1".repeat(60));
    let total = FAILED_LOGINS_PER_PREFIX_MAX + 5;
    for i in 0..total {
        let ip = format!("203.0.113.{}", i + 1);
        let (status, retry_after) = get_log_from(&app, &ip, &replayed).await;
        if i < FAILED_LOGINS_PER_PREFIX_MAX {
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{i}");
        } else {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{i}");
            assert!(retry_after.is_some(), "{i}");
        }
    }
    let other = format!("vlm_beef{}", "1".repeat(60));
    let (status, _) = get_log_from(&app, "192.0.2.1", &other).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let failures = auth_failures(&node);
    assert_eq!(failures.len() as u64, total + 1, "one per address");
    assert!(
        failures[total as usize - 1]
            .outcome
            .starts_with("denied: 429"),
        "{:?}",
        failures[total as usize - 1]
    );
}

// Goal: with many failing addresses the tracked sources stay within their
// bound, and no failure is lost: the trail's counts sum to the failures.
#[tokio::test]
async fn failing_addresses_are_tracked_within_a_bound() {
    use super::logins::LoginLimits;
    let limits = LoginLimits {
        sources_max: 8,
        prefixes_max: 8,
        ..LoginLimits::default()
    };
    let node = Arc::new(FakeNode::default());
    let state = state_with(node.clone(), Vec::new()).with_login_limits(limits);
    let app = router(state.clone());
    let mut failures = 0u64;
    for i in 0..64u64 {
        let ip = format!("10.9.{}.{}", i / 256, i % 256);
        for _ in 0..3 {
            let (status, _) = get_log_from(&app, &ip, "vlm_nope_nope").await;
            assert!(status.is_client_error());
            failures += 1;
        }
        let tracked = state
            .failed_logins
            .lock()
            .expect("not poisoned")
            .sources_tracked();
        assert!(tracked <= limits.sources_max, "{tracked}");
    }
    flush_logins(&state).await;
    super::routes::guard::flush_failed_logins(&state, Instant::now(), true).await;
    let recorded: u64 = auth_failures(&node).iter().map(|e| e.attempts()).sum();
    assert_eq!(recorded, failures);
}

#[path = "scope_tests.rs"]
mod scope_tests;

#[path = "mtls_tests.rs"]
mod mtls_tests;

#[path = "credentials_tests.rs"]
mod credentials_tests;

#[path = "tls_reload_tests.rs"]
mod tls_reload_tests;

// Goal: the backups' trail relay refuses (403) a caller that did not prove
// on the TLS handshake that it is a replica, whatever token it shows, and
// records nothing: a client cannot write into the access trail through it.
#[tokio::test]
async fn trail_relay_refuses_callers_without_a_replica_certificate() {
    let primary = Arc::new(FakeNode::default());
    let app = app(primary.clone());
    let body = r#"[{"v":1,"time_ns":1,"principal":"x","role":"reader","action":"read_stream","stream":5,"from":0,"to":1,"outcome":"success"}]"#;
    for token in [None, Some(WRITER), Some(AUDITOR)] {
        let (status, value) = send(&app, Call::post(super::relay::RELAY_PATH, token, body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{value}");
    }
    assert!(primary.lock().trail.is_empty(), "nothing was recorded");
}

// Goal: `GET /v1/export/audit` streamed a page at a time (the fake's
// pages hold 2 events) is byte for byte the JSON of the whole answer as
// the trail stood when it was asked (its own record not in it), with and
// without a filter, and it is recorded once.
#[tokio::test]
async fn audit_export_streams_the_whole_answer_bytes() {
    let node = Arc::new(FakeNode::default());
    let app = app(Arc::clone(&node));
    for i in 0..7 {
        let uri = format!("/v1/streams/100{}/events", i % 2);
        let _ = send(&app, Call::get(&uri, Some(READER))).await;
    }
    for (uri, stream) in [
        ("/v1/export/audit", None),
        ("/v1/export/audit?stream=1001", Some(1001)),
    ] {
        let before = node.lock().trail.clone();
        let expected = crate::api::AuditExport {
            source: "fake-replica".into(),
            records: (0u64..)
                .zip(before.iter())
                .filter(|(_, e)| stream.is_none_or(|s| e.names_stream(s)))
                .map(|(position, event)| crate::api::AuditRecord {
                    position,
                    event: event.clone(),
                })
                .collect(),
        };
        assert!(expected.records.len() >= 3, "spans several pages");
        let response = app
            .clone()
            .oneshot(Call::get(uri, Some(AUDITOR)).request())
            .await
            .expect("infallible");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            serde_json::to_string(&expected).expect("json"),
            "{uri}"
        );
        assert_eq!(node.lock().trail.len(), before.len() + 1, "recorded once");
    }
}
