//! The axum router of the client API: the route table, the extractors that
//! turn every malformed input into a JSON `400 bad_request` naming the field
//! (axum's own rejections are plain text and never leave this module), the
//! mapping of [`NodeError`] to status codes, and the handlers.
//!
//! Every node call runs on the blocking pool ([`run_blocking`]): the node may
//! wait for disk or for a commit, and a panic there becomes a logged
//! `500 storage` instead of taking the server down.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use super::auth::{Action, Principal, TokenStore};
use super::forward::Forwarder;
use super::metrics::Counters;
use super::node::{AppendCall, Node, NodeError};
use super::{HEARTBEAT_MS, SUBSCRIPTIONS_MAX, ServerError};
use crate::api::{
    self, AppendRequest, CertificateAnswer, ErrorBody, ErrorDetail, EventIn, IdempotencyKey,
    LogEvents, ProofAnswer, StreamEvents, code,
};

/// Events a read returns when the caller does not say.
pub const READ_EVENTS_DEFAULT: u64 = 100;
/// Longest `purpose` an append may carry, in bytes.
pub const PURPOSE_BYTES_MAX: usize = 1024;

/// One route of the API: the single table that auth, metrics and the
/// OpenAPI test read, so they cannot drift from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// axum path pattern (also the OpenAPI path).
    pub path: &'static str,
    /// What the route does; `None` for the public routes (no token).
    pub action: Option<Action>,
}

/// Every route the router serves.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/append",
        action: Some(Action::Append),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/streams/{stream}/events",
        action: Some(Action::ReadStream),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/log",
        action: Some(Action::ReadLog),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/subscribe",
        action: Some(Action::Subscribe),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/streams/{stream}/events/{offset}/proof",
        action: Some(Action::Proof),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/consistency",
        action: Some(Action::Consistency),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/certificate",
        action: Some(Action::Certificate),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/export/events",
        action: Some(Action::ExportEvents),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/export/audit",
        action: Some(Action::ExportAudit),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/verifications",
        action: Some(Action::RecordVerification),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/health",
        action: None,
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        action: None,
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        action: None,
    },
];

/// The index in [`ROUTES`] of a matched route.
pub fn route_index(method: &Method, path: &str) -> Option<usize> {
    ROUTES
        .iter()
        .position(|r| r.path == path && r.method == method.as_str())
}

/// Shared state of all handlers; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) node: Arc<dyn Node>,
    pub(crate) tokens: Arc<TokenStore>,
    pub(crate) forwarder: Forwarder,
    pub(crate) counters: Arc<Counters>,
    pub(crate) heartbeat_ms: u64,
    pub(crate) subscriptions: Arc<Semaphore>,
}

impl AppState {
    /// State for `node`; `peer_api` and `ca_pem` configure forwarding (an
    /// empty `ca_pem` allows only `http://` peers, for tests).
    pub fn new(
        node: Arc<dyn Node>,
        tokens: TokenStore,
        peer_api: Vec<(u8, String)>,
        ca_pem: &[u8],
    ) -> Result<AppState, ServerError> {
        Ok(AppState {
            node,
            tokens: Arc::new(tokens),
            forwarder: Forwarder::new(peer_api, ca_pem)?,
            counters: Arc::new(Counters::new()),
            heartbeat_ms: HEARTBEAT_MS,
            subscriptions: Arc::new(Semaphore::new(SUBSCRIPTIONS_MAX)),
        })
    }

    /// Changes the idle-subscription heartbeat period (tests use a short one).
    pub fn with_heartbeat_ms(mut self, heartbeat_ms: u64) -> AppState {
        self.heartbeat_ms = heartbeat_ms.max(1);
        self
    }
}

/// The API router (without TLS; [`super::serve`] adds it).
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/streams/{stream}/append", post(append))
        .route("/v1/streams/{stream}/events", get(read_stream))
        .route("/v1/log", get(read_log))
        .route("/v1/subscribe", get(super::subscribe::subscribe))
        .route("/v1/streams/{stream}/events/{offset}/proof", get(proof))
        .route("/v1/consistency", get(consistency))
        .route("/v1/certificate", get(certificate))
        .route("/v1/export/events", post(export_events))
        .route("/v1/export/audit", get(export_audit))
        .route("/v1/verifications", post(record_verification))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize));
    let public = Router::new()
        .route("/v1/health", get(health))
        .route("/metrics", get(super::metrics::metrics))
        .route("/openapi.json", get(super::openapi::openapi));
    protected
        .merge(public)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::metrics::count,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api::REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

// ---------------------------------------------------------------- errors

/// An error answer: a status and an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// One of [`api::code`].
    pub code: &'static str,
    /// What and where.
    pub message: String,
    /// For `wrong_expected_offset`.
    pub actual_offset: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            actual_offset: None,
        }
    }
    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code::BAD_REQUEST, message)
    }
    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }
    /// 404 `not_found`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code::NOT_FOUND, message)
    }
    /// 413 `payload_too_large`.
    pub fn payload_too_large() -> ApiError {
        let limit = api::REQUEST_BODY_BYTES_MAX;
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
    }
    /// 503 `unavailable`.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
    }
    /// 503 `indeterminate`.
    pub fn indeterminate(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code::INDETERMINATE,
            message,
        )
    }
    /// 500 `storage`.
    pub fn storage(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::STORAGE, message)
    }

    /// The status and code of each node failure.
    pub fn from_node(error: NodeError) -> ApiError {
        let message = error.to_string();
        match error {
            NodeError::Refused(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code::REFUSED, message)
            }
            NodeError::NotFound(_) => ApiError::not_found(message),
            NodeError::IdempotencyKeyReused(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::IDEMPOTENCY_KEY_REUSED,
                message,
            ),
            NodeError::WrongExpectedOffset { actual, .. } => ApiError {
                actual_offset: Some(actual),
                ..ApiError::new(StatusCode::CONFLICT, code::WRONG_EXPECTED_OFFSET, message)
            },
            // Only appends are forwarded; anything else that needs the
            // primary is a "try again" for the caller.
            NodeError::NotPrimary { .. } => ApiError::unavailable(message),
            NodeError::Indeterminate(_) => ApiError::indeterminate(message),
            NodeError::Unavailable(_) => ApiError::unavailable(message),
            NodeError::Storage(_) => ApiError::storage(message),
        }
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                actual_offset: self.actual_offset,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// Runs a blocking node call on the blocking pool; a panic becomes `500 storage`.
pub(crate) async fn run_blocking<R, F>(state: &AppState, call: F) -> Result<R, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&dyn Node) -> R + Send + 'static,
{
    let node = state.node.clone();
    tokio::task::spawn_blocking(move || call(node.as_ref()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "node call panicked or was cancelled");
            ApiError::storage("the replica failed while handling the request (see its log)")
        })
}

async fn not_found(
    State(state): State<AppState>,
    method: Method,
    uri: axum::http::Uri,
) -> ApiError {
    state.counters.record(ROUTES.len(), StatusCode::NOT_FOUND);
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::BAD_REQUEST,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}

// ------------------------------------------------------------ extractors

/// `Path<T>` whose rejection is a JSON 400 naming the segment.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|r| ApiError::bad_request(format!("bad path: {}", r.body_text())))
    }
}

/// `Query<T>` whose rejection is a JSON 400 naming the parameter.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|r| ApiError::bad_request(format!("bad query: {}", r.body_text())))
    }
}

/// A JSON body, parsed, plus its raw bytes (relayed as is when forwarding).
#[derive(Debug)]
pub struct JsonBody<T> {
    /// The parsed body.
    pub value: T,
    /// The bytes as received.
    pub raw: Bytes,
}

impl<T, S> FromRequest<S> for JsonBody<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::bad_request(
                "the body must be JSON with `Content-Type: application/json`",
            ));
        }
        let raw = Bytes::from_request(request, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large()
            } else {
                ApiError::bad_request(format!("cannot read the body: {}", r.body_text()))
            }
        })?;
        let Json(value) = Json::<T>::from_bytes(&raw).map_err(json_error)?;
        Ok(JsonBody { value, raw })
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn json_error(rejection: JsonRejection) -> ApiError {
    // axum's text already names the field and position, e.g.
    // "...: events[0]: unknown field `x` at line 1 column 20".
    ApiError::bad_request(format!("bad JSON body: {}", rejection.body_text()))
}

// -------------------------------------------------------------- auth layer

/// What a handler touched, for the access trail: handlers put it in the
/// response's extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// The stream, if one.
    pub stream: Option<u64>,
    /// First offset (or position) touched.
    pub from: Option<u64>,
    /// One past the last offset (or position) touched.
    pub to: Option<u64>,
    /// The purpose of use given in the request body.
    pub purpose: Option<String>,
    /// What else identifies the access (report hash, manifest hash).
    pub detail: Option<String>,
}

/// The request header carrying the purpose of use (HL7 v3 ActReason code
/// such as `TREAT`, or free text, clipped), recorded in the access trail.
pub const PURPOSE_HEADER: &str = "x-purpose-of-use";

/// The guard of every protected route (P7): at a backup, forwards the whole
/// request to the primary (which authenticates and records it); at the
/// primary, authenticates the bearer token, checks the role, runs the
/// handler, and records one access-trail event — also for a refused or
/// denied attempt — before the answer goes out. If the event cannot be
/// recorded the answer is withheld (503): no access goes unrecorded.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let action = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| route_index(request.method(), p.as_str()))
        .and_then(|i| ROUTES[i].action);
    let Some(action) = action else {
        // A protected route missing from ROUTES is a bug; refuse rather than open it.
        tracing::error!(
            path = request.uri().path(),
            "protected route missing from the route table"
        );
        return ApiError::forbidden("this route has no access rule").into_response();
    };
    let request = match super::forward::forward_if_backup(&state, request).await {
        Ok(request) => request,
        Err(answer) => return answer,
    };
    let mut trail = TrailEntry::new(action, &request);
    let principal = match bearer_principal(&state.tokens, request.headers()) {
        Ok(principal) => principal,
        Err(error) => {
            trail.deny("anonymous", "none", &error);
            trail.action = vellum_compliance::trail::AccessAction::AuthFailed;
            return trail.record_then(&state, error.into_response()).await;
        }
    };
    if !principal.role.allows(action) {
        let error = ApiError::forbidden(format!(
            "principal {} has role {}, which may not {}",
            principal.name,
            principal.role,
            action.name()
        ));
        trail.deny(&principal.name, principal.role.name(), &error);
        return trail.record_then(&state, error.into_response()).await;
    }
    let mut request = request;
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    trail.finish(&principal, &response);
    trail.record_then(&state, response).await
}

/// The access-trail event of one request, filled in as it is handled.
struct TrailEntry {
    action: vellum_compliance::trail::AccessAction,
    event: vellum_compliance::trail::AccessEvent,
}

impl TrailEntry {
    fn new(action: Action, request: &Request) -> TrailEntry {
        use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessEvent, clip_text};
        let headers = request.headers();
        let purpose = headers
            .get(PURPOSE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(clip_text);
        let peer = request
            .extensions()
            .get::<super::RemoteAddr>()
            .map(|r| r.0.to_string());
        // A backup that forwarded the request names the client it came from.
        let via = headers
            .get(super::forward::CLIENT_ADDR_HEADER)
            .and_then(|v| v.to_str().ok());
        let remote = match (peer, via) {
            (Some(peer), Some(client)) => Some(clip_text(&format!("{client} via {peer}"))),
            (peer, _) => peer,
        };
        TrailEntry {
            action: action.trail_action(),
            event: AccessEvent {
                v: ACCESS_EVENT_VERSION,
                time_ns: crate::log::now_ns(),
                principal: String::new(),
                role: String::new(),
                action: action.trail_action(),
                stream: stream_in_path(request.uri().path()),
                from: None,
                to: None,
                purpose,
                outcome: String::new(),
                remote,
                detail: None,
                recipient: None,
                description: None,
                streams: None,
                streams_truncated: false,
            },
        }
    }

    fn deny(&mut self, principal: &str, role: &str, error: &ApiError) {
        self.event.principal = vellum_compliance::trail::clip_text(principal);
        self.event.role = role.to_string();
        self.event.outcome = vellum_compliance::trail::clip_text(&format!(
            "denied: {} {}",
            error.status.as_u16(),
            error.message
        ));
    }

    fn finish(&mut self, principal: &Principal, response: &Response) {
        self.event.principal = principal.name.clone();
        self.event.role = principal.role.name().to_string();
        if let Some(touched) = response.extensions().get::<Touched>() {
            self.event.stream = touched.stream.or(self.event.stream);
            self.event.from = touched.from;
            self.event.to = touched.to;
            if touched.purpose.is_some() {
                self.event.purpose = touched.purpose.clone();
            }
            self.event.detail = touched.detail.clone();
        }
        let status = response.status();
        self.event.outcome = if status.is_success() {
            "success".to_string()
        } else {
            format!("refused: {}", status.as_u16())
        };
    }

    /// Records the event; returns `answer` once it is committed, or a 503
    /// in its place when it could not be recorded.
    async fn record_then(mut self, state: &AppState, answer: Response) -> Response {
        self.event.action = self.action;
        tracing::info!(
            principal = %self.event.principal,
            action = self.event.action.as_str(),
            stream = ?self.event.stream,
            outcome = %self.event.outcome,
            "api access"
        );
        let event = self.event;
        let wrote = matches!(self.action, vellum_compliance::trail::AccessAction::Append)
            && answer.status().is_success();
        match run_blocking(state, move |node| node.record_access(vec![event])).await {
            Ok(Ok(())) => answer,
            // The append itself committed: its outcome must not read as
            // "nothing written"; a retry with the same key is answered from
            // the client table and recorded then.
            Ok(Err(error)) if wrote => ApiError::indeterminate(format!(
                "the append committed but its access could not be recorded in the access trail \
                 ({error}); the receipt is withheld, retry with the same idempotency key"
            ))
            .into_response(),
            Ok(Err(error)) => ApiError::unavailable(format!(
                "the access could not be recorded in the access trail ({error}); \
                 the answer is withheld, retry"
            ))
            .into_response(),
            Err(error) => error.into_response(),
        }
    }
}

fn bearer_principal(tokens: &TokenStore, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    tokens
        .authenticate(token.trim())
        .cloned()
        .ok_or_else(|| ApiError::unauthorized("unknown bearer token"))
}

/// The stream id in `/v1/streams/{stream}/...`, for logs.
fn stream_in_path(path: &str) -> Option<u64> {
    path.strip_prefix("/v1/streams/")?
        .split('/')
        .next()?
        .parse()
        .ok()
}

// ---------------------------------------------------------------- handlers

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamPath {
    stream: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProofPath {
    stream: u64,
    offset: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadQuery {
    from: Option<u64>,
    max: Option<u64>,
}

impl ReadQuery {
    fn window(&self) -> (u64, u64) {
        let max = self
            .max
            .unwrap_or(READ_EVENTS_DEFAULT)
            .min(api::READ_EVENTS_MAX);
        (self.from.unwrap_or(0), max)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

async fn append(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    ApiPath(path): ApiPath<StreamPath>,
    body: JsonBody<AppendRequest>,
) -> Result<Response, ApiError> {
    let call = append_call(path.stream, &body.value)?;
    let purpose = body
        .value
        .purpose
        .as_deref()
        .map(vellum_compliance::trail::clip_text);
    tracing::debug!(principal = %principal.name, stream = path.stream, "append");
    match run_blocking(&state, move |node| node.append(call)).await? {
        Ok(receipt) => {
            let touched = Touched {
                stream: Some(receipt.stream),
                from: Some(receipt.first_offset),
                to: Some(receipt.next_offset),
                purpose,
                detail: None,
            };
            Ok(with_touched(Json(receipt).into_response(), touched))
        }
        Err(NodeError::NotPrimary { replica, primary }) => {
            let target = super::forward::Target {
                replica,
                primary,
                stream: path.stream,
            };
            state
                .forwarder
                .forward_append(target, &headers, body.raw)
                .await
        }
        Err(error) => Err(ApiError::from_node(error)),
    }
}

/// Checks an append request and turns it into the node's call.
fn append_call(stream: u64, request: &AppendRequest) -> Result<AppendCall, ApiError> {
    if request.events.is_empty() {
        return Err(ApiError::bad_request("events must hold at least one event"));
    }
    if request
        .purpose
        .as_ref()
        .is_some_and(|p| p.len() > PURPOSE_BYTES_MAX)
    {
        return Err(ApiError::bad_request(format!(
            "purpose is longer than {PURPOSE_BYTES_MAX} bytes"
        )));
    }
    let events = request
        .events
        .iter()
        .enumerate()
        .map(|(i, event)| event_bytes(i, event))
        .collect::<Result<Vec<Bytes>, ApiError>>()?;
    let idempotency = request.idempotency.as_ref().map(idempotency).transpose()?;
    Ok(AppendCall {
        stream,
        events,
        expected_offset: request.expected_offset,
        idempotency,
    })
}

fn event_bytes(index: usize, event: &EventIn) -> Result<Bytes, ApiError> {
    match (&event.json, &event.base64) {
        (Some(value), None) => serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| ApiError::bad_request(format!("events[{index}].json: {e}"))),
        (None, Some(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map(Bytes::from)
            .map_err(|e| {
                ApiError::bad_request(format!(
                    "events[{index}].base64 is not standard base64: {e}"
                ))
            }),
        (Some(_), Some(_)) => Err(ApiError::bad_request(format!(
            "events[{index}] has both json and base64; give exactly one"
        ))),
        (None, None) => Err(ApiError::bad_request(format!(
            "events[{index}] has neither json nor base64; give exactly one"
        ))),
    }
}

fn idempotency(key: &IdempotencyKey) -> Result<(u128, u64), ApiError> {
    let hex_ok = key.session.len() == 32
        && key
            .session
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    let session = if hex_ok {
        u128::from_str_radix(&key.session, 16).ok()
    } else {
        None
    };
    let Some(session) = session.filter(|s| *s != 0) else {
        return Err(ApiError::bad_request(
            "idempotency.session must be 32 lowercase hex digits, not all zero",
        ));
    };
    if key.request == 0 {
        return Err(ApiError::bad_request(
            "idempotency.request must be at least 1",
        ));
    }
    Ok((session, key.request))
}

/// Puts what a handler touched into its response, for the access trail.
fn with_touched(mut response: Response, touched: Touched) -> Response {
    response.extensions_mut().insert(touched);
    response
}

async fn read_stream(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<StreamPath>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (from, max) = query.window();
    let stream = path.stream;
    let events = run_blocking(&state, move |node| node.read_stream(stream, from, max))
        .await?
        .map_err(ApiError::from_node)?;
    let next_offset = events.last().map_or(from, |e| e.offset + 1);
    let touched = Touched {
        stream: Some(stream),
        from: Some(from),
        to: Some(next_offset),
        purpose: None,
        detail: None,
    };
    let answer = Json(StreamEvents {
        stream,
        events,
        next_offset,
    });
    Ok(with_touched(answer.into_response(), touched))
}

async fn read_log(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let (from, max) = query.window();
    let events = run_blocking(&state, move |node| node.read_log(from, max))
        .await?
        .map_err(ApiError::from_node)?;
    let next_position = events.last().map_or(from, |e| e.position + 1);
    let touched = Touched {
        stream: None,
        from: Some(from),
        to: Some(next_position),
        purpose: None,
        detail: None,
    };
    let answer = Json(LogEvents {
        events,
        next_position,
    });
    Ok(with_touched(answer.into_response(), touched))
}

async fn proof(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ProofPath>,
) -> Result<Response, ApiError> {
    let proof = run_blocking(&state, move |node| node.proof(path.stream, path.offset))
        .await?
        .map_err(ApiError::from_node)?;
    let touched = Touched {
        stream: Some(path.stream),
        from: Some(path.offset),
        to: Some(path.offset.saturating_add(1)),
        purpose: None,
        detail: None,
    };
    Ok(with_touched(
        Json(ProofAnswer { proof }).into_response(),
        touched,
    ))
}

async fn consistency(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<api::ConsistencyAnswer>, ApiError> {
    if query.to.is_some_and(|to| to < query.from) {
        return Err(ApiError::bad_request("from must not be greater than to"));
    }
    let answer = run_blocking(&state, move |node| node.consistency(query.from, query.to))
        .await?
        .map_err(ApiError::from_node)?;
    Ok(Json(answer))
}

async fn certificate(State(state): State<AppState>) -> Result<Json<CertificateAnswer>, ApiError> {
    match run_blocking(&state, |node| node.certificate()).await? {
        Some((size, certificate)) => Ok(Json(CertificateAnswer { size, certificate })),
        None => Err(ApiError::not_found(
            "no certificate yet (nothing committed)",
        )),
    }
}

async fn export_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: JsonBody<api::ExportEventsRequest>,
) -> Result<Response, ApiError> {
    let request = body.value;
    if request.to <= request.from {
        return Err(ApiError::bad_request("to must be greater than from"));
    }
    let purpose = request
        .purpose
        .as_deref()
        .map(vellum_compliance::trail::clip_text);
    let call = super::node::ExportCall {
        stream: request.stream,
        from: request.from,
        to: request.to,
        principal: principal.name.clone(),
        purpose: purpose.clone(),
    };
    let files = run_blocking(&state, move |node| node.export_events(call))
        .await?
        .map_err(ApiError::from_node)?;
    let bundle = api::ExportBundle {
        files: files
            .into_iter()
            .map(|(name, bytes)| api::ExportFile {
                name,
                base64: base64::engine::general_purpose::STANDARD.encode(bytes),
            })
            .collect(),
    };
    let touched = Touched {
        stream: Some(request.stream),
        from: Some(request.from),
        to: Some(request.to),
        purpose,
        detail: None,
    };
    Ok(with_touched(Json(bundle).into_response(), touched))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    from_ns: Option<u64>,
    to_ns: Option<u64>,
    stream: Option<u64>,
}

async fn export_audit(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let (from_ns, to_ns, stream) = (query.from_ns, query.to_ns, query.stream);
    let (source, records) = run_blocking(&state, move |node| {
        node.audit_records(from_ns, to_ns, stream)
    })
    .await?
    .map_err(ApiError::from_node)?;
    let answer = api::AuditExport {
        source,
        records: records
            .into_iter()
            .map(|(event, position)| api::AuditRecord { position, event })
            .collect(),
    };
    let touched = Touched {
        stream,
        from: from_ns,
        to: to_ns,
        purpose: None,
        detail: None,
    };
    Ok(with_touched(Json(answer).into_response(), touched))
}

/// Records a verification run in the access trail: its scope, result,
/// the SHA-256 of the report file and the checkpoint it reached.
async fn record_verification(
    body: JsonBody<api::VerificationRecord>,
) -> Result<Response, ApiError> {
    let record = body.value;
    let hash_ok = record.report_sha256.len() == 64
        && record.report_sha256.bytes().all(|b| b.is_ascii_hexdigit());
    if !hash_ok {
        return Err(ApiError::bad_request(
            "report_sha256 must be 64 hex digits (the SHA-256 of the report file)",
        ));
    }
    let scope = vellum_compliance::trail::clip_text(&record.scope);
    let detail = format!(
        "verification scope={scope} result={} report_sha256={} checkpoint_size={}",
        if record.passed { "passed" } else { "failed" },
        record.report_sha256.to_ascii_lowercase(),
        record
            .checkpoint_size
            .map_or("-".to_string(), |s| s.to_string())
    );
    let touched = Touched {
        detail: Some(vellum_compliance::trail::clip_text(&detail)),
        ..Touched::default()
    };
    let answer = Json(serde_json::json!({ "recorded": true }));
    Ok(with_touched(answer.into_response(), touched))
}

async fn health(State(state): State<AppState>) -> Result<Json<api::Health>, ApiError> {
    Ok(Json(run_blocking(&state, |node| node.health()).await?))
}
