//! The handlers of the client API's routes: each checks its input, calls
//! the node on the blocking pool ([`run_blocking`]) and answers JSON, telling
//! the trail guard what it touched ([`Touched`]).

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;

use super::errors::ApiError;
use super::extract::{ApiPath, ApiQuery, JsonBody};
use super::guard::Touched;
use super::{AppState, PURPOSE_BYTES_MAX, READ_EVENTS_DEFAULT, run_blocking};
use crate::api::{
    self, AppendRequest, CertificateAnswer, EventIn, IdempotencyKey, LogEvents, ProofAnswer,
    StreamEvents,
};
use crate::server::auth::Principal;
use crate::server::node::AppendCall;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StreamPath {
    stream: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProofPath {
    stream: u64,
    offset: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadQuery {
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
pub(crate) struct ConsistencyQuery {
    from: u64,
    to: Option<u64>,
}

pub(crate) async fn append(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
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

pub(crate) async fn read_stream(
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

pub(crate) async fn read_log(
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

pub(crate) async fn proof(
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

pub(crate) async fn consistency(
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
    if request.to <= request.from {
        return Err(ApiError::bad_request("to must be greater than from"));
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
pub(crate) struct AuditQuery {
    from_ns: Option<u64>,
    to_ns: Option<u64>,
    stream: Option<u64>,
}

pub(crate) async fn export_audit(
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
pub(crate) async fn record_verification(
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

pub(crate) async fn health(State(state): State<AppState>) -> Result<Json<api::Health>, ApiError> {
    Ok(Json(run_blocking(&state, |node| node.health()).await?))
}
