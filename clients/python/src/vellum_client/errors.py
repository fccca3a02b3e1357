"""Typed errors of the Vellum client.

Each API refusal maps, by the answer's `error.code` (never its wording),
onto one exception class, so callers can tell "nothing was written"
(every `ApiError` and `Unavailable`) from "outcome unknown"
(`Indeterminate`: retry with the same idempotency key).
"""

from __future__ import annotations

__all__ = [
    "VellumError",
    "ApiError",
    "BadRequest",
    "Refused",
    "NotFound",
    "Unauthorized",
    "CredentialExpired",
    "Forbidden",
    "RateLimited",
    "WrongExpectedOffset",
    "IdempotencyKeyReused",
    "DuplicateEventId",
    "InvalidEnvelope",
    "GroupExists",
    "NotDelivered",
    "NotParked",
    "PayloadTooLarge",
    "Unavailable",
    "Indeterminate",
    "TransportError",
    "ProtocolError",
    "ProofFormatError",
    "SubscriptionError",
]


class VellumError(Exception):
    """Base class of every error this package raises."""


class ApiError(VellumError):
    """A definite refusal (4xx): nothing was written.

    `status` is the HTTP status, `code` the answer's `error.code`,
    `message` its text (for humans), `retry_after` the `Retry-After`
    header in seconds when the answer had one."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


class BadRequest(ApiError):
    """400 `bad_request` (or 405): malformed request, named field."""


class Refused(ApiError):
    """422 `refused`, 408 `request_timeout`: a well-formed request refused."""


class PayloadTooLarge(ApiError):
    """413 `payload_too_large`: the body is over 4 MiB."""


class NotFound(ApiError):
    """404: unknown stream, event, certificate or route."""


class Unauthorized(ApiError):
    """401: missing, malformed or unknown bearer token."""


class CredentialExpired(Unauthorized):
    """401 `credential_expired`: the token or client certificate was valid
    but its `expires=` (or the certificate's notAfter) has passed."""


class Forbidden(ApiError):
    """403: the token's role may not do this."""


class RateLimited(ApiError):
    """429 `rate_limited`: too many failed logins; wait `retry_after` s."""


class WrongExpectedOffset(ApiError):
    """409: the stream's length was not `expected`; it is `actual`."""

    def __init__(self, status: int, code: str, message: str, stream: int, expected: int, actual: int):
        super().__init__(status, code, message)
        self.stream = stream
        self.expected = expected
        self.actual = actual


class IdempotencyKeyReused(ApiError):
    """422 `idempotency_key_reused`: the key already names another append
    (other stream, expected offset or events). Nothing was written; do not
    retry."""


class DuplicateEventId(ApiError):
    """409 `duplicate_event_id`: an event id is already on the stream (or
    twice in the batch) and the batch is not a resend of the append holding
    it. Nothing was written; the message names the stored event's offset."""


class InvalidEnvelope(ApiError):
    """422 `invalid_envelope`: an event's id is not a canonical UUID, or its
    type or content type is empty or holds a control character."""


class GroupExists(ApiError):
    """409 `group_exists`: a consumer group of that name exists already."""


class NotDelivered(ApiError):
    """409 `not_delivered`: an ack or nack names a position that is not out
    for delivery to the group (never delivered, beyond the log, not in the
    group). Nothing was written."""


class NotParked(ApiError):
    """409 `not_parked`: a replay names a position that is not parked.
    Nothing was written."""


class Unavailable(VellumError):
    """Every attempt failed before any primary could take the request
    (connect refused, 503 `unavailable`): nothing was written."""


class Indeterminate(VellumError):
    """Every attempt failed and at least one may have reached a primary:
    the append may or may not have committed. Retry with `key` (the same
    idempotency key): a committed append is then answered, not repeated."""

    def __init__(self, message: str, key: tuple[str, int] | None = None):
        super().__init__(message)
        self.key = key


class TransportError(VellumError):
    """A read failed on the network after its retries."""


class ProtocolError(VellumError):
    """An answer that does not follow the API contract."""


class ProofFormatError(VellumError):
    """A proof, certificate, key or policy text that does not parse."""


class SubscriptionError(VellumError):
    """A subscription ended with the server's error line, or could not be
    resumed within the reconnect bound; `next_position` is where to
    resume."""

    def __init__(self, message: str, next_position: int):
        super().__init__(message)
        self.next_position = next_position
