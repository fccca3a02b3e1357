//! Key custody (P6), role `privacy-officer`: `POST /v1/streams/{stream}/shred`
//! destroys the stream's data keys on every replica; `.../hold` and
//! `.../hold/release` set and lift a legal hold (which blocks a shred);
//! `.../retention` raises the stream's retention floor (no shred before it).
//!
//! Each takes a reason (not blank, at most
//! [`CUSTODY_REASON_BYTES_MAX`] bytes, refused rather than clipped, since it is
//! committed whole in the key-custody stream). The node decides and commits
//! (`Node::custody`); the guard records the request in the access trail like
//! every other, refusals included.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vellum_compliance::custody::{CUSTODY_REASON_BYTES_MAX, CustodyAction};
use vellum_compliance::trail::clip_text;

use super::errors::ApiError;
use super::extract::{ApiPath, JsonBody, edge_value};
use super::handlers::StreamPath;
use super::{AppState, Touched, run_blocking};
use crate::api::{CustodyAnswer, CustodyRequest};
use crate::server::auth::Principal;
use crate::server::node::CustodyCall;

/// `POST /v1/streams/{stream}/shred`.
pub(crate) async fn shred(
    state: State<AppState>,
    principal: Extension<Principal>,
    path: ApiPath<StreamPath>,
    body: JsonBody<CustodyRequest>,
) -> Result<Response, ApiError> {
    custody(CustodyAction::Shred, state, principal, path, body).await
}

/// `POST /v1/streams/{stream}/hold`.
pub(crate) async fn hold(
    state: State<AppState>,
    principal: Extension<Principal>,
    path: ApiPath<StreamPath>,
    body: JsonBody<CustodyRequest>,
) -> Result<Response, ApiError> {
    custody(CustodyAction::Hold, state, principal, path, body).await
}

/// `POST /v1/streams/{stream}/hold/release`.
pub(crate) async fn release(
    state: State<AppState>,
    principal: Extension<Principal>,
    path: ApiPath<StreamPath>,
    body: JsonBody<CustodyRequest>,
) -> Result<Response, ApiError> {
    custody(CustodyAction::Release, state, principal, path, body).await
}

/// `POST /v1/streams/{stream}/retention`.
pub(crate) async fn retain(
    state: State<AppState>,
    principal: Extension<Principal>,
    path: ApiPath<StreamPath>,
    body: JsonBody<CustodyRequest>,
) -> Result<Response, ApiError> {
    custody(CustodyAction::Retain, state, principal, path, body).await
}

async fn custody(
    action: CustodyAction,
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<StreamPath>,
    body: JsonBody<CustodyRequest>,
) -> Result<Response, ApiError> {
    let stream = path.stream()?;
    let request = body.value;
    let reason = checked_reason(&request.reason)?;
    let retain_until_ms = match (action, request.retain_until_ms) {
        (CustodyAction::Retain, Some(ms)) => Some(edge_value("retain_until_ms", ms)?),
        (CustodyAction::Retain, None) => {
            return Err(ApiError::bad_request(
                "retain_until_ms: a retention request needs the new floor (unix milliseconds)",
            ));
        }
        (_, Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "retain_until_ms: only a retention request takes it, not {}",
                action.as_str()
            )));
        }
        (_, None) => None,
    };
    let call = CustodyCall {
        action,
        stream,
        reason: reason.to_string(),
        retain_until_ms,
        principal: principal.name.clone(),
        role: principal.role.name().to_string(),
    };
    tracing::warn!(principal = %principal.name, stream, action = action.as_str(), "key-custody request");
    let touched = Touched {
        stream: Some(stream),
        detail: Some(clip_text(&format!("{}: {reason}", action.as_str()))),
        ..Touched::default()
    };
    let outcome = run_blocking(&state, move |node| node.custody(call)).await?;
    let done = match outcome {
        Ok(done) => done,
        Err(error) => {
            // The refusal is recorded with the stream it named.
            let mut response = ApiError::from(error).into_response();
            response.extensions_mut().insert(touched);
            return Ok(response);
        }
    };
    let answer = CustodyAnswer {
        stream,
        action: action.as_str().to_string(),
        position: done.position,
        op: done.op,
        keys_destroyed: done.keys_destroyed,
    };
    let mut response = Json(answer).into_response();
    response.extensions_mut().insert(touched);
    Ok(response)
}

/// The reason, trimmed of ASCII blanks; refused when blank or too long.
fn checked_reason(reason: &str) -> Result<&str, ApiError> {
    if reason.len() > CUSTODY_REASON_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "reason is {} bytes, longer than {CUSTODY_REASON_BYTES_MAX}",
            reason.len()
        )));
    }
    let trimmed = reason.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if trimmed.is_empty() {
        return Err(ApiError::bad_request(
            "reason: a key-custody request needs a reason (it is committed in the log)",
        ));
    }
    Ok(trimmed)
}
