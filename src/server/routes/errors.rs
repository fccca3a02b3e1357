//! The error answer of the client API: [`ApiError`] (a status, one of
//! `api::code`, a message saying what and where) and the mapping of
//! [`NodeError`] to status codes. Every refusal the server sends is one of
//! these, as a JSON [`ErrorBody`]; axum's plain-text rejections never leave
//! the extractors.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::{self, ErrorBody, ErrorDetail, code};
use crate::server::node::NodeError;

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
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
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
    /// 408 `request_timeout`: the body did not arrive in time.
    pub fn request_timeout(timeout_ms: u64) -> ApiError {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            code::REQUEST_TIMEOUT,
            format!("the request body did not arrive within {timeout_ms} ms"),
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
    /// 422 `refused`: well-formed, but not a request this log can answer
    /// (an empty or reversed range).
    pub fn refused(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code::REFUSED, message)
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
            // The guard forwards every request a backup gets to the
            // primary; a replica that loses the primacy while handling one
            // answers "try again".
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
