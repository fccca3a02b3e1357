//! The extractors of the client API: `Path`, `Query` and JSON bodies whose
//! every rejection is a JSON `400 bad_request` naming the segment, parameter
//! or field (axum's own rejections are plain text and never leave here).

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use std::time::Duration;

use super::AppState;
use super::errors::ApiError;

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

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;
    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::bad_request(
                "the body must be JSON with `Content-Type: application/json`",
            ));
        }
        // The whole body must arrive within the deadline: a caller that
        // trickles it cannot hold a connection (and a worker) forever.
        let deadline = Duration::from_millis(state.body_read_timeout_ms);
        let read = tokio::time::timeout(deadline, Bytes::from_request(request, state));
        let raw = read
            .await
            .map_err(|_| ApiError::request_timeout(state.body_read_timeout_ms))?
            .map_err(|r| {
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

/// A number written in a path segment or query parameter: its one canonical
/// spelling (`5001`, never `+5001` or `05001`) and at most
/// [`crate::bounds::EDGE_INTEGER_MAX`]; else a 400 naming `field`.
pub fn edge_number(field: &str, text: &str) -> Result<u64, ApiError> {
    crate::bounds::parse_canonical(field, text).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// [`edge_number`] of an optional parameter.
pub fn edge_optional(field: &str, text: Option<&str>) -> Result<Option<u64>, ApiError> {
    text.map(|text| edge_number(field, text)).transpose()
}

/// A number from a JSON body: at most [`crate::bounds::EDGE_INTEGER_MAX`];
/// else a 400 naming `field`.
pub fn edge_value(field: &str, value: u64) -> Result<u64, ApiError> {
    crate::bounds::check(field, value).map_err(|e| ApiError::bad_request(e.to_string()))
}
