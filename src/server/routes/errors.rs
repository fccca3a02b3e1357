//! The error answer of the client API: [`ApiError`] (a status, one of
//! `api::code`, a message saying what and where) and, in one `From` impl per
//! operation, the status and code of each variant of the node's error types
//! ([`AppendError`], [`ReadError`], [`ProofError`], [`ExportError`],
//! [`TrailError`], [`TlogError`]). The mapping matches typed variants only, never message
//! text; an internal fault is 500 whatever operation met it. Every refusal
//! the server sends is one of these, as a JSON [`ErrorBody`]; axum's
//! plain-text rejections never leave the extractors.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::api::{self, ErrorBody, ErrorDetail, code};
use crate::server::node::{
    AppendError, CustodyError, ExportError, InternalFault, ProofError, ReadError, Shredded,
    TlogError, TrailError, Unavailable,
};
use vellum_compliance::custody::CustodyRefusal;

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
    /// For `shredded`: the shred event's global position.
    pub shred_position: Option<u64>,
    /// For `duplicate_event_id`: the offset of the stored event.
    pub original_offset: Option<u64>,
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
            shred_position: None,
            original_offset: None,
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
    /// 401 `credential_expired`: the token's or client certificate's
    /// `expires=` (or the certificate's notAfter) has passed.
    pub fn credential_expired(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, code::CREDENTIAL_EXPIRED, message)
    }
    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }
    /// 403 `scope_denied`: the stream is outside the token's scope.
    pub fn scope_denied(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, code::SCOPE_DENIED, message)
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
    /// 429 `rate_limited`: too many failed logins; the guard adds
    /// `Retry-After`.
    pub fn rate_limited(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, code::RATE_LIMITED, message)
    }
    /// 500 `storage`.
    pub fn storage(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code::STORAGE, message)
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                actual_offset: self.actual_offset,
                shred_position: self.shred_position,
                original_offset: self.original_offset,
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

impl From<Unavailable> for ApiError {
    /// 503 `unavailable`: nothing was written, retrying is safe. (The guard
    /// forwards every request a backup gets to the primary; a replica that
    /// loses the primacy while handling one answers "try again".)
    /// (`PositionNotReached` is the one 422 among them: the read asked for
    /// a position beyond the committed log, which waiting did not change.)
    fn from(error: Unavailable) -> ApiError {
        if let Unavailable::PositionNotReached { .. } = error {
            return ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::POSITION_NOT_REACHED,
                error.to_string(),
            );
        }
        ApiError::unavailable(error.to_string())
    }
}

impl From<InternalFault> for ApiError {
    /// 500 `storage`: a fault of this replica, never the caller's.
    fn from(error: InternalFault) -> ApiError {
        tracing::error!(%error, "internal fault answered 500");
        ApiError::storage(error.to_string())
    }
}

impl From<AppendError> for ApiError {
    fn from(error: AppendError) -> ApiError {
        let message = error.to_string();
        match error {
            AppendError::ReservedStream { .. }
            | AppendError::Batch(_)
            | AppendError::StaleRequest { .. } => ApiError::refused(message),
            AppendError::WrongExpectedOffset { actual, .. } => ApiError {
                actual_offset: Some(actual),
                ..ApiError::new(StatusCode::CONFLICT, code::WRONG_EXPECTED_OFFSET, message)
            },
            AppendError::IdempotencyKeyReused { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::IDEMPOTENCY_KEY_REUSED,
                message,
            ),
            AppendError::DuplicateEventId { offset, .. } => ApiError {
                original_offset: offset,
                ..ApiError::new(StatusCode::CONFLICT, code::DUPLICATE_EVENT_ID, message)
            },
            AppendError::InvalidEnvelope { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                code::INVALID_ENVELOPE,
                message,
            ),
            AppendError::Shredded(shredded) => shredded.into(),
            AppendError::Unavailable(unavailable) => unavailable.into(),
            AppendError::Indeterminate { .. } => ApiError::indeterminate(message),
            AppendError::Internal(fault) => fault.into(),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(error: ReadError) -> ApiError {
        match error {
            ReadError::UnknownStream { .. } => ApiError::not_found(error.to_string()),
            ReadError::Shredded(shredded) => shredded.into(),
            ReadError::Unavailable(unavailable) => unavailable.into(),
            ReadError::Internal(fault) => fault.into(),
        }
    }
}

impl From<ProofError> for ApiError {
    fn from(error: ProofError) -> ApiError {
        let message = error.to_string();
        match error {
            ProofError::NoSuchEvent { .. } | ProofError::NotCertifiedYet { .. } => {
                ApiError::not_found(message)
            }
            ProofError::NoCertificate { .. } | ProofError::ConsistencyRange { .. } => {
                ApiError::refused(message)
            }
            ProofError::Unavailable(unavailable) => unavailable.into(),
            ProofError::Internal(fault) => fault.into(),
        }
    }
}

impl From<ExportError> for ApiError {
    fn from(error: ExportError) -> ApiError {
        let message = error.to_string();
        match error {
            ExportError::UnknownStream { .. } => ApiError::not_found(message),
            ExportError::Range { .. }
            | ExportError::BeyondStream { .. }
            | ExportError::NothingCertified => ApiError::refused(message),
            ExportError::Shredded(shredded) => shredded.into(),
            ExportError::Unavailable(unavailable) => unavailable.into(),
            ExportError::Internal(fault) => fault.into(),
        }
    }
}

impl From<Shredded> for ApiError {
    /// 410 `shredded` with the shred's position when it is known.
    fn from(shredded: Shredded) -> ApiError {
        ApiError {
            shred_position: shredded.position,
            ..ApiError::new(StatusCode::GONE, code::SHREDDED, shredded.to_string())
        }
    }
}

impl From<CustodyError> for ApiError {
    fn from(error: CustodyError) -> ApiError {
        let message = error.to_string();
        match error {
            CustodyError::Refused(refusal) => refusal.into(),
            CustodyError::Unavailable(unavailable) => unavailable.into(),
            CustodyError::Indeterminate { .. } => ApiError::indeterminate(message),
            CustodyError::Internal(fault) => fault.into(),
        }
    }
}

impl From<CustodyRefusal> for ApiError {
    /// Each rule its own code, so a client branches on the code alone.
    fn from(refusal: CustodyRefusal) -> ApiError {
        let message = refusal.to_string();
        match refusal {
            CustodyRefusal::SystemStream { .. } => ApiError::refused(message),
            CustodyRefusal::MissingFloor => ApiError::bad_request(message),
            CustodyRefusal::Shredded { stream, position } => Shredded {
                stream,
                position: Some(position),
            }
            .into(),
            CustodyRefusal::LegalHold { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::LEGAL_HOLD, message)
            }
            CustodyRefusal::RetentionFloor { .. }
            | CustodyRefusal::RetentionLowered { .. }
            | CustodyRefusal::RetentionPolicy { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::RETENTION_FLOOR, message)
            }
            CustodyRefusal::AlreadyHeld { .. } | CustodyRefusal::NotHeld { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::CUSTODY_CONFLICT, message)
            }
        }
    }
}

impl From<TrailError> for ApiError {
    fn from(error: TrailError) -> ApiError {
        match error {
            TrailError::Unavailable(unavailable) => unavailable.into(),
            TrailError::Indeterminate { .. } => ApiError::indeterminate(error.to_string()),
            TrailError::Internal(fault) => fault.into(),
        }
    }
}

impl From<TlogError> for ApiError {
    fn from(error: TlogError) -> ApiError {
        match error {
            TlogError::BeyondCheckpoint { .. } => ApiError::not_found(error.to_string()),
            TlogError::Unavailable(unavailable) => unavailable.into(),
            TlogError::Internal(fault) => fault.into(),
        }
    }
}
