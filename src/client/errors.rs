//! The client's error type per operation: [`AppendError`] for appends,
//! [`ReadError`] for reads of a stream or of the global log. Both are built
//! from the answer's `code` (an [`ErrorCode`]) and the request's own fields,
//! never from message text; each converts into the general
//! [`ClientError`] for callers that handle every call alike.

use super::ClientError;
use crate::api::{ErrorCode, IdempotencyKey};

/// Why an append did not succeed. Only [`AppendError::Indeterminate`] (and
/// a `storage` answer folded into it after retries) leaves the outcome
/// unknown; every other variant means nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// 409 `wrong_expected_offset`: the stream's length was not the
    /// expected offset; nothing was written.
    #[error("stream {stream}: expected offset {expected}, the stream has {actual} events")]
    WrongExpectedOffset {
        /// The stream.
        stream: u64,
        /// The offset the caller expected.
        expected: u64,
        /// The stream's actual length (the answer's `actual_offset`).
        actual: u64,
    },
    /// 422 `idempotency_key_reused`: the key already named a different
    /// request (other stream, expected offset or events). Nothing was
    /// written; retrying will not help.
    #[error(
        "idempotency key reused: request {} of session {} already names a different request; nothing was written to stream {stream}",
        key.request,
        key.session
    )]
    IdempotencyKeyReused {
        /// The stream of the refused append.
        stream: u64,
        /// The reused key.
        key: IdempotencyKey,
    },
    /// A definite refusal (400 `bad_request`, 408, 413, 422 `refused`):
    /// nothing was written. A number refused before sending is `bad_request`.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The answer's code.
        code: ErrorCode,
        /// What and where (for humans).
        message: String,
    },
    /// 404: unknown route (the server does not serve this API version).
    #[error("not found: {0}")]
    NotFound(String),
    /// 401/403: missing, unknown or insufficient token; nothing was written.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Every attempt failed and at least one may have reached a primary:
    /// the append may or may not have committed (retry with the same key).
    #[error("outcome unknown after retries: {0}")]
    Indeterminate(String),
    /// Every attempt failed before any primary could take it: nothing was written.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// An answer that does not follow the API contract.
    #[error("bad answer: {0}")]
    Protocol(String),
    /// A failure before anything was sent (no randomness, encoding).
    #[error("client: {0}")]
    Local(String),
}

impl AppendError {
    /// The typed append error of a call's outcome: `stream` and `key` are
    /// the request's, the rest comes from the answer's code.
    pub(super) fn from_call(error: ClientError, stream: u64, key: &IdempotencyKey) -> AppendError {
        match error {
            ClientError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            } => AppendError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            },
            ClientError::IdempotencyKeyReused(_) => AppendError::IdempotencyKeyReused {
                stream,
                key: key.clone(),
            },
            ClientError::Refused { code, message } => AppendError::Refused { code, message },
            ClientError::NotFound(message) => AppendError::NotFound(message),
            ClientError::Unauthorized(message) => AppendError::Unauthorized(message),
            ClientError::Indeterminate(reason) => AppendError::Indeterminate(reason),
            ClientError::Unavailable(reason) => AppendError::Unavailable(reason),
            ClientError::Protocol(reason) => AppendError::Protocol(reason),
            // A write's transport failures end as Indeterminate or
            // Unavailable; one reported otherwise may have reached a primary.
            ClientError::Transport(reason) => AppendError::Indeterminate(reason),
            ClientError::Local(reason) => AppendError::Local(reason),
        }
    }

    /// A failure before anything was sent.
    pub(super) fn local(error: ClientError) -> AppendError {
        match error {
            ClientError::Local(reason) => AppendError::Local(reason),
            other => AppendError::Local(other.to_string()),
        }
    }
}

/// Why a read of a stream or of the global log did not succeed; a read has
/// no side effects, so every failure can simply be retried later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// 404 `not_found`: the stream has no committed events.
    #[error("not found: {0}")]
    NotFound(String),
    /// A definite refusal (400 `bad_request`, 422 `refused`). A number
    /// refused before sending is `bad_request`.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The answer's code.
        code: ErrorCode,
        /// What and where (for humans).
        message: String,
    },
    /// 401/403: missing, unknown or insufficient token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Every attempt got a 5xx answer.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// The last attempt got no HTTP answer.
    #[error("transport: {0}")]
    Transport(String),
    /// An answer that does not follow the API contract (also an append's
    /// refusal answering a read).
    #[error("bad answer: {0}")]
    Protocol(String),
    /// A failure before anything was sent.
    #[error("client: {0}")]
    Local(String),
}

impl From<ClientError> for ReadError {
    fn from(error: ClientError) -> ReadError {
        match error {
            ClientError::NotFound(message) => ReadError::NotFound(message),
            ClientError::Refused { code, message } => ReadError::Refused { code, message },
            ClientError::Unauthorized(message) => ReadError::Unauthorized(message),
            ClientError::Unavailable(reason) | ClientError::Indeterminate(reason) => {
                ReadError::Unavailable(reason)
            }
            ClientError::Transport(reason) => ReadError::Transport(reason),
            ClientError::Protocol(reason) => ReadError::Protocol(reason),
            ClientError::Local(reason) => ReadError::Local(reason),
            wrong @ (ClientError::WrongExpectedOffset { .. }
            | ClientError::IdempotencyKeyReused(_)) => ReadError::Protocol(format!(
                "a read was answered with an append's refusal: {wrong}"
            )),
        }
    }
}

impl From<AppendError> for ClientError {
    fn from(error: AppendError) -> ClientError {
        match error {
            AppendError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            } => ClientError::WrongExpectedOffset {
                stream,
                expected,
                actual,
            },
            reused @ AppendError::IdempotencyKeyReused { .. } => {
                ClientError::IdempotencyKeyReused(reused.to_string())
            }
            AppendError::Refused { code, message } => ClientError::Refused { code, message },
            AppendError::NotFound(message) => ClientError::NotFound(message),
            AppendError::Unauthorized(message) => ClientError::Unauthorized(message),
            AppendError::Indeterminate(reason) => ClientError::Indeterminate(reason),
            AppendError::Unavailable(reason) => ClientError::Unavailable(reason),
            AppendError::Protocol(reason) => ClientError::Protocol(reason),
            AppendError::Local(reason) => ClientError::Local(reason),
        }
    }
}

impl From<ReadError> for ClientError {
    fn from(error: ReadError) -> ClientError {
        match error {
            ReadError::NotFound(message) => ClientError::NotFound(message),
            ReadError::Refused { code, message } => ClientError::Refused { code, message },
            ReadError::Unauthorized(message) => ClientError::Unauthorized(message),
            ReadError::Unavailable(reason) => ClientError::Unavailable(reason),
            ReadError::Transport(reason) => ClientError::Transport(reason),
            ReadError::Protocol(reason) => ClientError::Protocol(reason),
            ReadError::Local(reason) => ClientError::Local(reason),
        }
    }
}
