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
        if let Some(query) = parts.uri.query() {
            check_query(query)?;
        }
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(value)| ApiQuery(value))
            .map_err(|r| ApiError::bad_request(format!("bad query: {}", r.body_text())))
    }
}

/// Refuses a query that the form decoder would read as something else: a
/// `%` not followed by two hex digits (kept as is by the decoder) or a
/// name or value that decodes to bytes that are not UTF-8 (replaced by
/// U+FFFD by the decoder). So `types=%FF` is a 400, never a filter on "�".
fn check_query(query: &str) -> Result<(), ApiError> {
    for pair in query.split('&') {
        let mut decoded = Vec::with_capacity(pair.len());
        let mut bytes = pair.bytes();
        while let Some(byte) = bytes.next() {
            if byte != b'%' {
                decoded.push(byte);
                continue;
            }
            let high = bytes.next().and_then(|b| char::from(b).to_digit(16));
            let low = bytes.next().and_then(|b| char::from(b).to_digit(16));
            let (Some(high), Some(low)) = (high, low) else {
                return Err(ApiError::bad_request(format!(
                    "bad query: {:?} holds a % that is not followed by two hex digits",
                    clip(pair)
                )));
            };
            decoded.push(u8::try_from(high * 16 + low).expect("two hex digits fit a byte"));
        }
        if std::str::from_utf8(&decoded).is_err() {
            return Err(ApiError::bad_request(format!(
                "bad query: {:?} does not decode to UTF-8",
                clip(pair)
            )));
        }
    }
    Ok(())
}

/// The first 60 characters of `text`, for an error message.
fn clip(text: &str) -> String {
    text.chars().take(60).collect()
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

#[cfg(test)]
mod tests {
    use super::check_query;

    /// Goal: a query the form decoder would read as something else (a bare
    /// `%`, bytes that are not UTF-8) is refused; well-formed ones pass.
    #[test]
    fn odd_percent_escapes_are_refused() {
        for good in [
            "types=Patient",
            "types=M%C3%A9dication%2Cx&streams=5001",
            "types=Obs+ervation",
            "a=&b",
            "types=%e2%80%94",
        ] {
            assert!(check_query(good).is_ok(), "{good}");
        }
        for bad in [
            "types=%FF",
            "types=%C3",
            "types=A%2",
            "types=%",
            "types=%zz",
            "t%FFypes=x",
            "from=0&types=%ED%A0%80",
        ] {
            let error = check_query(bad).expect_err(bad);
            assert_eq!(error.status, axum::http::StatusCode::BAD_REQUEST, "{bad}");
        }
    }
}
