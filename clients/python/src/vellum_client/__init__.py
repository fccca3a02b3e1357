"""Python client of Vellum, the audited event store (HTTP/2 over TLS).

    from vellum_client import Client, Policy
    with Client(["https://127.0.0.1:7440"], token, ca_file="ca.pem") as client:
        receipt = client.append(1001, [b"event bytes"], expected_offset=0)
        policy = Policy.parse(open("policy.txt").read())
        assert all(check.passed for check in receipt.check(policy, [b"event bytes"]))

See clients/python/README.md.
"""

from .client import (
    AppendReceipt,
    CertificateAnswer,
    Client,
    DeliveredEvent,
    Event,
    GroupAcked,
    GroupDeleted,
    GroupDelivery,
    GroupInfo,
    GroupNacked,
    GroupParkedList,
    GroupReplayed,
    ParkedEvent,
    Heartbeat,
    IdempotencyKey,
    LogEvents,
    NewEvent,
    StreamEvents,
)
from .errors import (
    ApiError,
    BadRequest,
    DuplicateEventId,
    Forbidden,
    GroupExists,
    IdempotencyKeyReused,
    InvalidEnvelope,
    Indeterminate,
    NotDelivered,
    NotFound,
    NotParked,
    PayloadTooLarge,
    ProofFormatError,
    ProtocolError,
    RateLimited,
    Refused,
    SubscriptionError,
    TransportError,
    Unauthorized,
    CredentialExpired,
    Unavailable,
    VellumError,
    WrongExpectedOffset,
)
from .proof import EventCheck, InclusionProof, PartCheck, Policy, Verifier, check_event

__version__ = "0.1.0"

__all__ = [
    "AppendReceipt",
    "ApiError",
    "BadRequest",
    "CertificateAnswer",
    "Client",
    "DeliveredEvent",
    "GroupAcked",
    "GroupDeleted",
    "GroupDelivery",
    "GroupExists",
    "GroupInfo",
    "GroupNacked",
    "GroupParkedList",
    "GroupReplayed",
    "NotDelivered",
    "NotParked",
    "ParkedEvent",
    "Event",
    "NewEvent",
    "DuplicateEventId",
    "InvalidEnvelope",
    "EventCheck",
    "Heartbeat",
    "Forbidden",
    "IdempotencyKey",
    "IdempotencyKeyReused",
    "InclusionProof",
    "Indeterminate",
    "LogEvents",
    "NotFound",
    "PartCheck",
    "PayloadTooLarge",
    "Policy",
    "ProofFormatError",
    "ProtocolError",
    "RateLimited",
    "Refused",
    "StreamEvents",
    "SubscriptionError",
    "TransportError",
    "Unauthorized",
    "CredentialExpired",
    "Unavailable",
    "Verifier",
    "VellumError",
    "WrongExpectedOffset",
    "check_event",
]
