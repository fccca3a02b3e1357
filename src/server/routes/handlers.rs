//! The handlers of the client API's routes: each checks its input, calls
//! the node on the blocking pool ([`run_blocking`]) and answers JSON, telling
//! the trail guard what it touched ([`Touched`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use super::errors::ApiError;
use super::extract::{ApiPath, ApiQuery, JsonBody, edge_number, edge_optional, edge_value};
use super::guard::{Touched, TrailRecorded, TrailTemplate};
use super::{AppState, PURPOSE_BYTES_MAX, READ_EVENTS_DEFAULT, run_blocking};
use crate::api::{
    self, AppendRequest, CertificateAnswer, EventIn, IdempotencyKey, LogEvents, ProofAnswer,
    StreamEvents, code,
};
use crate::server::auth::Principal;
use crate::server::node::AppendCall;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamPath {
    // Path and query numbers are taken as text and parsed by
    // `edge_number`: one spelling, at most i64::MAX, a 400 naming the field.
    stream: String,
}

impl StreamPath {
    pub(crate) fn stream(&self) -> Result<u64, ApiError> {
        edge_number("stream", &self.stream)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProofPath {
    stream: String,
    offset: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
    from: Option<String>,
    max: Option<String>,
    /// Read-your-writes: the read waits (bounded) until this replica
    /// serves every position below this one.
    min_position: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    from: Option<String>,
    max: Option<String>,
    min_position: Option<String>,
    /// The event filter (`crate::server::filter`).
    streams: Option<String>,
    /// The event filter's types (`crate::server::filter`).
    types: Option<String>,
}

/// How long a read at a backup waits for its certified prefix to reach the
/// caller's `min_position` before it answers 422 `position_not_reached`.
/// The primary does not wait: its committed prefix is the cluster's, and a
/// position a caller learned from a receipt is already in it.
pub const MIN_POSITION_WAIT_MS: u64 = 100;

/// Checks that this replica serves every position below `min_position`
/// (None: nothing to check); a backup waits for it at most
/// [`MIN_POSITION_WAIT_MS`]. Else 422 `position_not_reached` (nothing was
/// read).
pub(crate) async fn await_position(
    state: &AppState,
    min_position: Option<u64>,
) -> Result<(), ApiError> {
    let Some(asked) = min_position else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let mut served = run_blocking(state, |node| node.committed_events()).await?;
    let wait_ms = match state.node.role().is_primary {
        true => 0,
        false => MIN_POSITION_WAIT_MS,
    };
    while served < asked {
        let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if waited >= wait_ms {
            return Err(crate::server::node::Unavailable::PositionNotReached {
                asked,
                served,
                waited_ms: waited,
            }
            .into());
        }
        let left = wait_ms - waited;
        served = run_blocking(state, move |node| node.wait_events(served, left)).await?;
    }
    Ok(())
}

impl ReadQuery {
    /// (from, max); `max` above [`api::READ_EVENTS_MAX`] is refused, as the
    /// OpenAPI document says, rather than silently clamped.
    fn window(&self) -> Result<(u64, u64), ApiError> {
        read_window(self.from.as_deref(), self.max.as_deref())
    }
}

/// (from, max) of a read; `max` above [`api::READ_EVENTS_MAX`] is refused.
fn read_window(from: Option<&str>, max: Option<&str>) -> Result<(u64, u64), ApiError> {
    let from = edge_optional("from", from)?.unwrap_or(0);
    let max = edge_optional("max", max)?.unwrap_or(READ_EVENTS_DEFAULT);
    if max > api::READ_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "max: {max} is above the largest page, {} events",
            api::READ_EVENTS_MAX
        )));
    }
    Ok((from, max))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConsistencyQuery {
    from: String,
    to: Option<String>,
}

pub(crate) async fn append(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Extension(TrailTemplate(template)): Extension<TrailTemplate>,
    ApiPath(path): ApiPath<StreamPath>,
    body: JsonBody<AppendRequest>,
) -> Result<Response, ApiError> {
    let mut call = append_call(path.stream()?, &body.value)?;
    let purpose = body
        .value
        .purpose
        .as_deref()
        .map(vellum_compliance::trail::clip_text);
    // The access record rides in the append's own atomic group (one
    // round; the events never commit without it); the replica fills in
    // the offsets.
    let mut event = template;
    event.stream = Some(call.stream);
    if purpose.is_some() {
        event.purpose.clone_from(&purpose);
    }
    event.outcome = "success".to_string();
    call.trail = Some(Bytes::from(event.to_payload()));
    tracing::debug!(principal = %principal.name, stream = call.stream, "append");
    tracing::trace!(target: "vellum::latency", step = "api_append");
    let outcome = run_blocking(&state, move |node| node.append(call)).await?;
    tracing::trace!(target: "vellum::latency", step = "api_answered");
    match outcome {
        Ok(receipt) => {
            let recorded = !receipt.duplicate;
            let touched = Touched {
                stream: Some(receipt.stream),
                from: Some(receipt.first_offset),
                to: Some(receipt.next_offset),
                purpose,
                detail: None,
                streams: None,
            };
            let mut response = with_touched(Json(receipt).into_response(), touched);
            if recorded {
                response.extensions_mut().insert(TrailRecorded);
            }
            Ok(response)
        }
        Err(error) => Err(error.into()),
    }
}

/// Checks an append request and turns it into the node's call.
fn append_call(stream: u64, request: &AppendRequest) -> Result<AppendCall, ApiError> {
    if request.events.is_empty() {
        return Err(ApiError::bad_request("events must hold at least one event"));
    }
    if request.events.len() > api::APPEND_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "events: {} events, more than the {} one append may carry",
            request.events.len(),
            api::APPEND_EVENTS_MAX
        )));
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
    if let Some((i, event)) = events
        .iter()
        .enumerate()
        .find(|(_, e)| e.len() > api::EVENT_BYTES_MAX)
    {
        return Err(ApiError::bad_request(format!(
            "events[{i}]: {} bytes, more than the largest event, {} bytes",
            event.len(),
            api::EVENT_BYTES_MAX
        )));
    }
    let enveloped = request.events.iter().any(EventIn::has_envelope);
    let events = if enveloped {
        events
            .into_iter()
            .zip(&request.events)
            .enumerate()
            .map(|(i, (payload, event))| envelope_bytes(i, event, payload))
            .collect::<Result<Vec<Bytes>, ApiError>>()?
    } else {
        events
    };
    let idempotency = request.idempotency.as_ref().map(idempotency).transpose()?;
    let expected_offset = request
        .expected_offset
        .map(|offset| edge_value("expected_offset", offset))
        .transpose()?;
    Ok(AppendCall {
        stream,
        events,
        enveloped,
        expected_offset,
        idempotency,
        trail: None,
    })
}

/// One event of a batch with envelope fields, encoded
/// (`vellum_audit::envelope`): 422 `invalid_envelope` for a malformed field,
/// 413 `envelope_too_large` for one over its limit.
fn envelope_bytes(index: usize, event: &EventIn, payload: Bytes) -> Result<Bytes, ApiError> {
    use vellum_audit::envelope::{Envelope, FieldError, parse_uuid};
    let id = match &event.id {
        Some(text) => Some(parse_uuid(text).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::INVALID_ENVELOPE,
                format!(
                    "events[{index}].id is not a UUID in canonical form (36 characters, lowercase hex digits 8-4-4-4-12)"
                ),
            )
        })?),
        None => None,
    };
    let envelope = Envelope {
        id,
        event_type: event.event_type.clone(),
        content_type: event.content_type.clone(),
        // The member's text exactly as sent (P9), never re-serialized.
        metadata: event.metadata.as_ref().map(|raw| raw.get().to_owned()),
        payload: payload.to_vec(),
    };
    match envelope.check() {
        Ok(()) => Ok(Bytes::from(envelope.encode())),
        // Metadata over its limit is a size the schema cannot state (any
        // JSON value): 413. A type or content type over its limit breaks
        // the schema's `maxLength`, like any other schema violation: 422
        // (schemathesis: a schema-violating request must get a 4xx it
        // knows as a rejection, and 413 is not one).
        Err(
            error @ FieldError::TooLarge {
                field: "metadata", ..
            },
        ) => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::ENVELOPE_TOO_LARGE,
            format!("events[{index}]: {error}"),
        )),
        Err(error @ (FieldError::TooLarge { .. } | FieldError::Invalid { .. })) => {
            Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::INVALID_ENVELOPE,
                format!("events[{index}]: {error}"),
            ))
        }
    }
}

fn event_bytes(index: usize, event: &EventIn) -> Result<Bytes, ApiError> {
    match (&event.json, &event.base64) {
        // The member's bytes exactly as sent (P9), never re-serialized.
        (Some(raw), None) => Ok(Bytes::copy_from_slice(raw.get().as_bytes())),
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
    // All zero and all f are reserved (the latter is the session of the
    // trail ops that close atomic groups).
    let reserved = |s: &u128| *s == 0 || *s == crate::vsr::TRAIL_CLIENT;
    let Some(session) = session.filter(|s| !reserved(s)) else {
        return Err(ApiError::bad_request(
            "idempotency.session must be 32 lowercase hex digits, not all zero and not all f (reserved)",
        ));
    };
    if key.request == 0 {
        return Err(ApiError::bad_request(
            "idempotency.request must be at least 1",
        ));
    }
    Ok((session, edge_value("idempotency.request", key.request)?))
}

/// Puts what a handler touched into its response, for the access trail.
fn with_touched(mut response: Response, touched: Touched) -> Response {
    response.extensions_mut().insert(touched);
    response
}

pub(crate) async fn read_stream(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<StreamPath>,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Response, ApiError> {
    let stream = path.stream()?;
    let (from, max) = query.window()?;
    let min_position = edge_optional("min_position", query.min_position.as_deref())?;
    await_position(&state, min_position).await?;
    let events = run_blocking(&state, move |node| node.read_stream(stream, from, max))
        .await?
        .map_err(ApiError::from)?;
    let next_offset = events.last().map_or(from, |e| e.offset + 1);
    let touched = Touched {
        stream: Some(stream),
        from: Some(from),
        to: Some(next_offset),
        purpose: None,
        detail: None,
        streams: None,
    };
    let answer = Json(StreamEvents {
        stream,
        events,
        next_offset,
    });
    Ok(with_touched(answer.into_response(), touched))
}

pub(crate) async fn read_log(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let (from, max) = read_window(query.from.as_deref(), query.max.as_deref())?;
    let min_position = edge_optional("min_position", query.min_position.as_deref())?;
    let filter = crate::server::filter::EventFilter::parse(
        query.streams.as_deref(),
        query.types.as_deref(),
    )?;
    await_position(&state, min_position).await?;
    let mut events = run_blocking(&state, move |node| node.read_log(from, max))
        .await?
        .map_err(ApiError::from)?;
    // Past every position read, also those of events left out below, so
    // a scoped reader pages on without seeing them again.
    let next_position = events.last().map_or(from, |e| e.position + 1);
    // Events of streams outside the token's scope are left out (no 403:
    // the global log holds every patient's events).
    events.retain(|e| principal.scope.contains(e.stream) && filter.matches(e));
    let touched = Touched {
        stream: None,
        from: Some(from),
        to: Some(next_position),
        purpose: None,
        detail: filter.describe(),
        streams: Some(events.iter().map(|e| e.stream).collect()),
    };
    let answer = Json(LogEvents {
        events,
        next_position,
    });
    Ok(with_touched(answer.into_response(), touched))
}

pub(crate) async fn proof(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ProofPath>,
) -> Result<Response, ApiError> {
    let stream = edge_number("stream", &path.stream)?;
    let offset = edge_number("offset", &path.offset)?;
    let proof = run_blocking(&state, move |node| node.proof(stream, offset))
        .await?
        .map_err(ApiError::from)?;
    let touched = Touched {
        stream: Some(stream),
        from: Some(offset),
        to: Some(offset.saturating_add(1)),
        purpose: None,
        detail: None,
        streams: None,
    };
    Ok(with_touched(
        Json(ProofAnswer { proof }).into_response(),
        touched,
    ))
}

pub(crate) async fn consistency(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<ConsistencyQuery>,
) -> Result<Json<api::ConsistencyAnswer>, ApiError> {
    let from = edge_number("from", &query.from)?;
    let to = edge_optional("to", query.to.as_deref())?;
    if to.is_some_and(|to| to < from) {
        return Err(ApiError::refused("from must not be greater than to"));
    }
    if from == 0 {
        return Err(ApiError::bad_request(
            "from: a consistency proof starts at a tree size of at least 1",
        ));
    }
    // Checked here, so the answer names the API's parameters (the log's own
    // message is written for the command line).
    if to.is_none() {
        let latest = run_blocking(&state, |node| node.certificate().map(|(size, _)| size)).await?;
        if let Some(size) = latest.filter(|size| from > *size) {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                api::code::REFUSED,
                format!("from: tree size {from} is beyond the latest certificate's size {size}"),
            ));
        }
    }
    let answer = run_blocking(&state, move |node| node.consistency(from, to))
        .await?
        .map_err(ApiError::from)?;
    Ok(Json(answer))
}

pub(crate) async fn certificate(
    State(state): State<AppState>,
) -> Result<Json<CertificateAnswer>, ApiError> {
    match run_blocking(&state, |node| node.certificate()).await? {
        Some((size, certificate)) => Ok(Json(CertificateAnswer { size, certificate })),
        None => Err(ApiError::not_found(
            "no certificate yet (nothing committed)",
        )),
    }
}

pub(crate) async fn export_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: JsonBody<api::ExportEventsRequest>,
) -> Result<Response, ApiError> {
    let request = body.value;
    edge_value("stream", request.stream)?;
    if !principal.scope.contains(request.stream) {
        state.counters.record_scope_denied();
        return Err(ApiError::scope_denied(format!(
            "principal {} may not export stream {}: it is outside the token's scope (streams=); \
             break-glass does not open exports",
            principal.name, request.stream
        )));
    }
    edge_value("from", request.from)?;
    edge_value("to", request.to)?;
    if request.to <= request.from {
        return Err(ApiError::refused("to must be greater than from"));
    }
    let purpose = request
        .purpose
        .as_deref()
        .map(vellum_compliance::trail::clip_text);
    let call = crate::server::node::ExportCall {
        stream: request.stream,
        from: request.from,
        to: request.to,
        principal: principal.name.clone(),
        purpose: purpose.clone(),
    };
    let files = run_blocking(&state, move |node| node.export_events(call))
        .await?
        .map_err(ApiError::from)?;
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
        streams: None,
    };
    Ok(with_touched(Json(bundle).into_response(), touched))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    from_ns: Option<String>,
    to_ns: Option<String>,
    stream: Option<String>,
}

pub(crate) async fn export_audit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Response, ApiError> {
    let from_ns = edge_optional("from_ns", query.from_ns.as_deref())?;
    let to_ns = edge_optional("to_ns", query.to_ns.as_deref())?;
    let stream = edge_optional("stream", query.stream.as_deref())?;
    // The trail names every patient's stream: a scoped token sees the
    // trail of one stream in its scope at a time.
    let allowed = match stream {
        Some(stream) => principal.scope.contains(stream),
        None => principal.scope.is_all(),
    };
    if !allowed {
        state.counters.record_scope_denied();
        let what = stream.map_or(
            "the whole access trail (a scoped token names ?stream=N)".to_string(),
            |s| format!("the access trail of stream {s}"),
        );
        return Err(ApiError::scope_denied(format!(
            "principal {} may not export {what}: it is outside the token's scope (streams=)",
            principal.name
        )));
    }
    // The snapshot and the first page are read before answering, so a
    // trail that cannot be read is an ordinary error answer; the rest is
    // streamed (`audit_export`).
    let (snapshot, first) = run_blocking(&state, |node| {
        let snapshot = node.trail_snapshot()?;
        let first = node.trail_page(0, snapshot.end)?;
        Ok::<_, crate::server::node::TrailError>((snapshot, first))
    })
    .await?
    .map_err(ApiError::from)?;
    let filter = super::audit_export::AuditFilter {
        from_ns,
        to_ns,
        stream,
    };
    let answer = super::audit_export::answer(state.clone(), snapshot, filter, first);
    let touched = Touched {
        stream,
        from: from_ns,
        to: to_ns,
        purpose: None,
        detail: None,
        streams: None,
    };
    Ok(with_touched(answer, touched))
}

/// Records a verification run in the access trail: its scope, result,
/// the SHA-256 of the report file and the checkpoint it reached.
pub(crate) async fn record_verification(
    State(state): State<AppState>,
    body: JsonBody<api::VerificationRecord>,
) -> Result<Response, ApiError> {
    let record = body.value;
    if let Some(size) = record.checkpoint_size {
        edge_value("checkpoint_size", size)?;
        let committed = run_blocking(&state, |node| node.committed_events()).await?;
        if size > committed {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                api::code::REFUSED,
                format!(
                    "checkpoint_size: {size} is beyond this log, which has {committed} committed events"
                ),
            ));
        }
    }
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

pub(crate) async fn health(State(state): State<AppState>) -> Result<Json<api::Health>, ApiError> {
    Ok(Json(run_blocking(&state, |node| node.health()).await?))
}
