"""The Vellum HTTP client: appends, reads, subscriptions, proofs.

One HTTP library: httpx with its `h2` extra, so calls share one HTTP/2
connection per replica when the server offers ALPN `h2` (it does), and
fall back to HTTP/1.1 otherwise (`http2=False` forces HTTP/1.1).

Retries follow the Rust client (`src/client/mod.rs`): an append is the
one call whose retry could write twice, so every append carries an
idempotency key (session, request number) and every retry resends the
same body with the same key; the cluster answers a retry of a committed
append with the first receipt (`duplicate=True`). Attempts rotate over
the endpoints, at most `1 + retries_max` of them, sleeping `retry_delay`
after each full round. When all fail, an append raises `Indeterminate`
(carrying the key to retry with) if any attempt may have reached a
primary, else `Unavailable` (nothing written). 4xx answers are definite
and raised at once as typed `ApiError`s.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import json.decoder
import json.scanner
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

import httpx

from . import envelope as _envelope
from . import errors
from .proof import EventCheck, Policy, check_event

__all__ = [
    "Client",
    "AppendReceipt",
    "Event",
    "Heartbeat",
    "NewEvent",
    "GroupInfo",
    "GroupDelivery",
    "DeliveredEvent",
    "GroupAcked",
    "GroupNacked",
    "GroupDeleted",
    "ParkedEvent",
    "GroupParkedList",
    "GroupReplayed",
    "StreamEvents",
    "LogEvents",
    "CertificateAnswer",
    "IdempotencyKey",
]

# Bounds, as the server's (docs/api.md) and the Rust client's.
REQUEST_BODY_BYTES_MAX = 4 * 1024 * 1024
APPEND_EVENTS_MAX = 4096
EVENT_BYTES_MAX = 1024 * 1024
READ_EVENTS_MAX = 1000
EDGE_INTEGER_MAX = 2**63 - 1
ENDPOINTS_MAX = 64
RETRIES_MAX_LIMIT = 64
SESSIONS_IDLE_MAX = 256
ANSWER_BYTES_MAX = 64 * 1024 * 1024
SUBSCRIBE_LINE_BYTES_MAX = 8 * 1024 * 1024
SUBSCRIBE_RECONNECTS_MAX = 20
_QUOTE_BYTES_MAX = 200


@dataclasses.dataclass(frozen=True)
class IdempotencyKey:
    """(session, request): session is 32 lowercase hex digits, not all 0
    and not all f; request counts from 1."""

    session: str
    request: int

    def __post_init__(self) -> None:
        s = self.session
        if len(s) != 32 or any(c not in "0123456789abcdef" for c in s) or s in ("0" * 32, "f" * 32):
            raise ValueError("idempotency session must be 32 lowercase hex digits, not all 0 or all f")
        if not 1 <= self.request <= EDGE_INTEGER_MAX:
            raise ValueError(f"idempotency request must be from 1 to {EDGE_INTEGER_MAX}")

    @classmethod
    def new(cls) -> "IdempotencyKey":
        """A key of a fresh random session, request 1."""
        while True:
            session = secrets.token_hex(16)
            if session not in ("0" * 32, "f" * 32):
                return cls(session, 1)


def _bare(event: "bytes | NewEvent") -> bytes:
    return bytes(event.data) if isinstance(event, NewEvent) else bytes(event)


@dataclasses.dataclass(frozen=True)
class AppendReceipt:
    stream: int
    first_offset: int
    next_offset: int
    first_position: int
    op: int
    duplicate: bool
    certificate: str
    proofs: tuple[str, ...]
    salts: tuple[str, ...]

    def check(self, policy: Policy, events: "Sequence[bytes | NewEvent]") -> list[EventCheck]:
        """Checks each event's proof offline (inclusion, quorum, commitment);
        `events` as given to `append`."""
        if len(events) != len(self.proofs) or len(events) != len(self.salts):
            raise ValueError(f"{len(events)} events for a receipt of {len(self.proofs)} proofs")
        # As the writer does: when any event of the batch carries an
        # envelope field, every event of it was committed as an envelope.
        enveloped = any(isinstance(e, NewEvent) and e.has_fields() for e in events)
        committed = [
            (e if isinstance(e, NewEvent) else NewEvent(bytes(e))).committed_bytes() if enveloped else _bare(e)
            for e in events
        ]
        return [check_event(p, policy, s, e) for p, s, e in zip(self.proofs, self.salts, committed)]


@dataclasses.dataclass(frozen=True)
class Event:
    """One committed event: its global position, stream, offset, bytes and
    commitment salt (32 bytes; empty when the server withholds it)."""

    position: int
    stream: int
    offset: int
    data: bytes
    salt: bytes
    # The envelope fields as appended (None when absent); `envelope` is
    # true when the event's leaf commits to its encoded envelope.
    # `metadata_json` is the metadata's exact JSON text as the server
    # returned it (key order, number spelling, whitespace, escapes), not a
    # parsed value: the commitment covers those bytes. `metadata()` parses it.
    envelope: bool = False
    id: str | None = None
    type: str | None = None
    content_type: str | None = None
    metadata_json: str | None = None

    def metadata(self) -> Any:
        """The metadata parsed with `json.loads` (None when absent)."""
        return None if self.metadata_json is None else json.loads(self.metadata_json)

    def committed_bytes(self) -> bytes:
        """The bytes the event's leaf commits to (with `salt`; what
        `check_event` and `vellum proof check` take as the event): the
        payload, or with `envelope` true the encoded envelope rebuilt from
        the fields (`vellum_client.envelope`). ValueError when a field does
        not encode (not an answer of a Vellum server)."""
        if not self.envelope:
            return self.data
        return _envelope.encode(
            self.data, id=self.id, type=self.type, content_type=self.content_type, metadata_json=self.metadata_json
        )

    def check(self, policy: Policy, proof: str) -> EventCheck:
        """Checks `proof` (e.g. `Client.proof(stream, offset)`) offline for
        this event's committed bytes and salt."""
        return check_event(proof, policy, self.salt, self)


@dataclasses.dataclass(frozen=True)
class NewEvent:
    """An event to append with envelope fields: `data` (bytes), and any of
    `id` (a canonical lowercase UUID), `type`, `content_type`, and
    `metadata_json` (JSON text, sent byte for byte as given)."""

    data: bytes
    id: str | None = None
    type: str | None = None
    content_type: str | None = None
    metadata_json: str | None = None

    def has_fields(self) -> bool:
        """True when any envelope field is set."""
        return any(v is not None for v in (self.id, self.type, self.content_type, self.metadata_json))

    def committed_bytes(self) -> bytes:
        """This event's encoded envelope: what its leaf commits to when
        its batch carries envelopes (`vellum_client.envelope`)."""
        return _envelope.encode(
            bytes(self.data), id=self.id, type=self.type, content_type=self.content_type, metadata_json=self.metadata_json
        )

    def to_json(self) -> str:
        """This event as a member of an append's `events`."""
        parts = [f'"base64":"{base64.b64encode(bytes(self.data)).decode()}"']
        for name, value in (("id", self.id), ("type", self.type), ("content_type", self.content_type)):
            if value is not None:
                parts.append(f"{json.dumps(name)}:{json.dumps(value)}")
        if self.metadata_json is not None:
            json.loads(self.metadata_json)  # one JSON value, or ValueError here
            parts.append(f'"metadata":{self.metadata_json}')
        return "{" + ",".join(parts) + "}"


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """An idle subscription's sign of life (with `heartbeats=True`):
    nothing before `next_position` is left to deliver."""

    next_position: int


@dataclasses.dataclass(frozen=True)
class StreamEvents:
    stream: int
    events: tuple[Event, ...]
    next_offset: int


@dataclasses.dataclass(frozen=True)
class LogEvents:
    events: tuple[Event, ...]
    next_position: int


@dataclasses.dataclass(frozen=True)
class CertificateAnswer:
    size: int
    certificate: str


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """A consumer group's configuration and state: `checkpoint` (every
    matching event below it is acked or parked), `acked` and `parked`
    (committed), `in_flight` (leased now, the primary's memory)."""

    name: str
    streams: str | None
    start: int
    retry_max: int
    lease_ms: int
    created_at: int
    checkpoint: int
    acked: int
    parked: int
    in_flight: int
    types: tuple[str, ...] | None = None
    """The group's event-type filter, sorted; None: every event."""


@dataclasses.dataclass(frozen=True)
class DeliveredEvent:
    """An event leased by a pull: the event (as `read_log` returns it) and
    which delivery of it this is (`attempt`, 1 the first)."""

    event: Event
    attempt: int

    @property
    def position(self) -> int:
        return self.event.position


@dataclasses.dataclass(frozen=True)
class GroupDelivery:
    group: str
    consumer: str
    events: tuple[DeliveredEvent, ...]
    lease_ms: int


@dataclasses.dataclass(frozen=True)
class GroupAcked:
    acked: int
    already: int
    checkpoint: int
    position: int | None


@dataclasses.dataclass(frozen=True)
class GroupNacked:
    retried: int
    parked: int
    checkpoint: int


@dataclasses.dataclass(frozen=True)
class GroupDeleted:
    name: str
    position: int


@dataclasses.dataclass(frozen=True)
class ParkedEvent:
    position: int
    parked_at: int
    reason: str


@dataclasses.dataclass(frozen=True)
class GroupParkedList:
    group: str
    parked: tuple[ParkedEvent, ...]
    next_position: int | None


@dataclasses.dataclass(frozen=True)
class GroupReplayed:
    replayed: int
    position: int | None


# Bounds of the group routes (docs/api.md, "Persistent subscriptions").
GROUP_NAME_BYTES_MAX = 64
GROUP_PULL_EVENTS_MAX = 500
GROUP_PULL_WAIT_MS_MAX = 5000
GROUP_POSITIONS_MAX = 1000
_GROUP_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")


def _group_name(name: str) -> str:
    if (
        not isinstance(name, str)
        or not 1 <= len(name) <= GROUP_NAME_BYTES_MAX
        or name.startswith(".")
        or any(c not in _GROUP_NAME_CHARS for c in name)
    ):
        raise errors.BadRequest(
            400, "bad_request", f"group: {name!r} is not 1 to 64 bytes of A-Z a-z 0-9 - _ ., not starting with ."
        )
    return name


def _positions(positions: Sequence[int]) -> list[int]:
    listed = list(positions)
    if not 1 <= len(listed) <= GROUP_POSITIONS_MAX:
        raise errors.BadRequest(400, "bad_request", f"positions: {len(listed)}, expected 1 to {GROUP_POSITIONS_MAX}")
    return [_edge("positions", p) for p in listed]


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _group_info(doc: dict[str, Any]) -> GroupInfo:
    try:
        return GroupInfo(
            name=str(doc["name"]),
            streams=None if doc.get("streams") is None else str(doc["streams"]),
            start=int(doc["start"]),
            retry_max=int(doc["retry_max"]),
            lease_ms=int(doc["lease_ms"]),
            created_at=int(doc["created_at"]),
            checkpoint=int(doc["checkpoint"]),
            acked=int(doc["acked"]),
            parked=int(doc["parked"]),
            in_flight=int(doc["in_flight"]),
            types=None if doc.get("types") is None else tuple(str(t) for t in doc["types"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise errors.ProtocolError(f"not a group: {error}") from None


def _filter_params(streams: str | None, types: Sequence[str] | None) -> dict[str, str]:
    """The `streams` and `types` query parameters of a filter (not yet
    percent-encoded). A type holding a comma cannot be named in `types=`
    (the server splits the list on commas): ValueError, nothing sent."""
    params: dict[str, str] = {}
    if streams is not None:
        params["streams"] = streams
    if types is not None:
        if isinstance(types, str):
            raise TypeError("types: a sequence of event types, not one string")
        for name in types:
            if "," in name:
                raise ValueError(f"types: {name!r} holds a comma, which a types= list cannot name")
        params["types"] = ",".join(types)
    return params


def _edge(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= EDGE_INTEGER_MAX:
        raise errors.BadRequest(400, "bad_request", f"{field}: {value!r} is not a whole number from 0 to 2^63-1")
    return value


def _page(field: str, value: int) -> int:
    _edge(field, value)
    if value > READ_EVENTS_MAX:
        raise errors.BadRequest(400, "bad_request", f"{field}: {value} is above the largest page, {READ_EVENTS_MAX}")
    return value


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError) as error:
        raise errors.ProtocolError(f"{what} is not standard base64: {error}") from None


class _Spanned:
    """A parsed JSON value with its exact source text (only while decoding)."""

    __slots__ = ("value", "text")

    def __init__(self, value: Any, text: str):
        self.value = value
        self.text = text


def _keep_metadata_text(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Every member value arrives as _Spanned; `metadata` keeps its text.
    out: dict[str, Any] = {}
    for key, spanned in pairs:
        if key == "metadata" and spanned.value is not None:
            out[key] = spanned.text
        else:
            out[key] = spanned.value
    return out


def _parse_object_spanned(s_and_end, strict, scan_once, object_hook, object_pairs_hook, memo=None):  # type: ignore[no-untyped-def]
    def spanned(string: str, idx: int) -> tuple[_Spanned, int]:
        value, end = scan_once(string, idx)
        return _Spanned(value, string[idx:end]), end

    return json.decoder.JSONObject(s_and_end, strict, spanned, object_hook, object_pairs_hook, memo)


def _metadata_text_decoder() -> json.JSONDecoder:
    """A JSON decoder like `json.loads`, except that every object member
    named `metadata` is kept as its exact source text (a str of JSON), not
    parsed: Python's parser would lose key order of duplicates, number
    spellings (`1.50`), whitespace and escapes, which the envelope's
    commitment covers. The pure-Python scanner is used, since the C one
    cannot report a value's span."""
    decoder = json.JSONDecoder(object_pairs_hook=_keep_metadata_text)
    decoder.parse_object = _parse_object_spanned  # type: ignore[attr-defined]
    decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
    return decoder


def _loads_events(body: bytes | str) -> Any:
    """Parses an answer that holds events (reads, subscription lines,
    group pulls), keeping each `metadata` as text."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8")
    if '"metadata"' not in body:
        # No member to keep as text: the C parser (about 8 times faster).
        return json.loads(body)
    # A decoder per call: the pure-Python scanner's memo is not thread-safe.
    return _metadata_text_decoder().decode(body)


def _event(doc: dict[str, Any]) -> Event:
    metadata = doc.get("metadata")
    if metadata is not None and not isinstance(metadata, str):
        raise errors.ProtocolError("event metadata was not kept as JSON text")
    try:
        return Event(
            position=int(doc["position"]),
            stream=int(doc["stream"]),
            offset=int(doc["offset"]),
            data=_b64decode(doc["base64"], "event base64"),
            salt=_b64decode(doc.get("salt", ""), "event salt"),
            envelope=bool(doc.get("envelope", False)),
            id=doc.get("id"),
            type=doc.get("type"),
            content_type=doc.get("content_type"),
            metadata_json=metadata,
        )
    except (KeyError, TypeError, ValueError) as error:
        raise errors.ProtocolError(f"not an event: {error}: {str(doc)[:_QUOTE_BYTES_MAX]}") from None


class _Retry(Exception):
    """One attempt failed in a way worth trying elsewhere."""

    def __init__(self, reason: str, reached: bool, transport: bool):
        super().__init__(reason)
        self.reason = reason
        self.reached = reached
        self.transport = transport


class Client:
    """A handle on a Vellum cluster. Thread-safe; close it (or use `with`).

    `endpoints`: every replica's API base URL (`https://host:port`);
    `token`: the bearer token; or instead `client_cert`: a client
    certificate and its key, `(cert_path, key_path)` (PEM files), presented
    in the TLS handshake (mTLS; https only; the server refuses a
    certificate together with a token, so give one of them);
    `ca_file`: the cluster CA (PEM) trusted for https, and the only one;
    `http2`: offer HTTP/2 (default) or speak HTTP/1.1 only; `timeout`:
    seconds per request."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        token: str | None = None,
        *,
        client_cert: tuple[str, str] | None = None,
        ca_file: str | None = None,
        http2: bool = True,
        timeout: float = 10.0,
        retries_max: int = 45,
        retry_delay: float = 0.2,
    ):
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        if not 1 <= len(endpoints) <= ENDPOINTS_MAX:
            raise ValueError(f"need 1 to {ENDPOINTS_MAX} endpoints, got {len(endpoints)}")
        self._endpoints = []
        for endpoint in endpoints:
            base = endpoint.rstrip("/")
            if base.startswith("https://") and ca_file is None:
                raise ValueError(f"endpoint {base} is https but no ca_file is given to trust")
            if not base.startswith(("https://", "http://")):
                raise ValueError(f"endpoint {endpoint!r} is neither http:// nor https://")
            self._endpoints.append(base)
        if (token is None) == (client_cert is None):
            raise ValueError("give a token or a client_cert (exactly one: the server refuses both)")
        verify: ssl.SSLContext | bool = False
        if ca_file is not None:
            # Only the cluster CA: no system roots.
            verify = ssl.create_default_context(cafile=ca_file)
        if client_cert is not None:
            if not isinstance(verify, ssl.SSLContext) or not all(e.startswith("https://") for e in self._endpoints):
                raise ValueError("a client_cert needs https:// endpoints and a ca_file")
            cert_path, key_path = client_cert
            verify.load_cert_chain(certfile=cert_path, keyfile=key_path)
        self._token = token
        self._retries_max = min(max(retries_max, 0), RETRIES_MAX_LIMIT)
        self._retry_delay = retry_delay
        self._timeout = timeout
        self._http = httpx.Client(http2=http2, http1=True, verify=verify, timeout=timeout)
        self._preferred = 0
        self._sessions: list[IdempotencyKey] = []
        self._lock = threading.Lock()
        #: The HTTP version of the last answer ("HTTP/2" or "HTTP/1.1").
        self.last_http_version: str | None = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        # The token is a credential: never shown.
        return f"Client(endpoints={self._endpoints!r}, token=<redacted>)"

    # --- appends -------------------------------------------------------

    def append(
        self,
        stream: int,
        events: Sequence[bytes | NewEvent],
        expected_offset: int | None = None,
        *,
        key: IdempotencyKey | None = None,
        purpose: str | None = None,
    ) -> AppendReceipt:
        """Appends `events` (bytes, or `NewEvent` with envelope fields; all
        or nothing). With `expected_offset`,
        only if the stream has exactly that many events (else
        `WrongExpectedOffset`). Without `key`, a pooled session's next
        request number is used; pass the key of an `Indeterminate` error
        to retry that append safely."""
        _edge("stream", stream)
        if expected_offset is not None:
            _edge("expected_offset", expected_offset)
        if not 1 <= len(events) <= APPEND_EVENTS_MAX:
            raise errors.BadRequest(400, "bad_request", f"events: {len(events)}, expected 1 to {APPEND_EVENTS_MAX}")
        for i, event in enumerate(events):
            if isinstance(event, NewEvent):
                event = event.data
            if not isinstance(event, (bytes, bytearray, memoryview)):
                raise TypeError(f"events[{i}] is {type(event).__name__}, expected bytes or NewEvent")
            if len(event) > EVENT_BYTES_MAX:
                raise errors.BadRequest(400, "bad_request", f"events[{i}]: {len(event)} bytes, more than 1 MiB")
        if key is not None:
            return self._append_with_key(stream, events, expected_offset, key, purpose)
        lease = self._borrow_session()
        try:
            return self._append_with_key(stream, events, expected_offset, lease, purpose)
        finally:
            self._return_session(lease)

    def _append_with_key(
        self,
        stream: int,
        events: Sequence[bytes | NewEvent],
        expected_offset: int | None,
        key: IdempotencyKey,
        purpose: str | None,
    ) -> AppendReceipt:
        body: dict[str, Any] = {
            "events": [],
            "idempotency": {"session": key.session, "request": key.request},
        }
        if expected_offset is not None:
            body["expected_offset"] = expected_offset
        if purpose is not None:
            body["purpose"] = purpose
        # Events are spliced in as text, so metadata goes byte for byte.
        members = ",".join(
            e.to_json() if isinstance(e, NewEvent) else NewEvent(bytes(e)).to_json() for e in events
        )
        rest = json.dumps(body, separators=(",", ":"))
        content = rest.replace('"events":[]', '"events":[' + members + "]", 1).encode()
        if len(content) > REQUEST_BODY_BYTES_MAX:
            raise errors.PayloadTooLarge(
                413, "payload_too_large", f"append to stream {stream} is {len(content)} bytes, more than 4 MiB"
            )
        doc = self._call(
            "POST",
            f"/v1/streams/{stream}/append",
            content=content,
            write=True,
            stream=stream,
            expected=expected_offset,
            key=key,
        )
        try:
            return AppendReceipt(
                stream=int(doc["stream"]),
                first_offset=int(doc["first_offset"]),
                next_offset=int(doc["next_offset"]),
                first_position=int(doc["first_position"]),
                op=int(doc["op"]),
                duplicate=bool(doc["duplicate"]),
                certificate=str(doc["certificate"]),
                proofs=tuple(doc["proofs"]),
                salts=tuple(doc["salts"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a receipt: {error}") from None

    def _borrow_session(self) -> IdempotencyKey:
        with self._lock:
            if self._sessions:
                return self._sessions.pop()
        return IdempotencyKey.new()

    def _return_session(self, used: IdempotencyKey) -> None:
        # The next request number whatever happened: a number is never
        # used for two different batches.
        with self._lock:
            if len(self._sessions) < SESSIONS_IDLE_MAX and used.request < EDGE_INTEGER_MAX:
                self._sessions.append(IdempotencyKey(used.session, used.request + 1))

    # --- reads ---------------------------------------------------------

    def read_stream(self, stream: int, from_offset: int = 0, max_events: int = 100) -> StreamEvents:
        """Up to `max_events` events of `stream` from offset `from_offset`."""
        _edge("stream", stream)
        _edge("from", from_offset)
        _page("max", max_events)
        doc = self._call(
            "GET", f"/v1/streams/{stream}/events?from={from_offset}&max={max_events}", stream=stream, events=True
        )
        try:
            return StreamEvents(int(doc["stream"]), tuple(_event(e) for e in doc["events"]), int(doc["next_offset"]))
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a stream read: {error}") from None

    def read_log(
        self,
        from_position: int = 0,
        max_events: int = 100,
        *,
        streams: str | None = None,
        types: Sequence[str] | None = None,
    ) -> LogEvents:
        """Up to `max_events` committed events of the global log. A filter
        is applied on the server (after the token's scope, recorded in the
        access trail): `streams` (`"5001,6000-6999"`) and `types` (event
        types, matched byte for byte; an event without a type never
        matches). `next_position` is past every position read, the events
        left out too, so paging on from it skips nothing."""
        _edge("from", from_position)
        _page("max", max_events)
        query = urllib.parse.urlencode(
            {"from": str(from_position), "max": str(max_events), **_filter_params(streams, types)},
            quote_via=urllib.parse.quote,
        )
        doc = self._call("GET", f"/v1/log?{query}", events=True)
        try:
            return LogEvents(tuple(_event(e) for e in doc["events"]), int(doc["next_position"]))
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a log read: {error}") from None

    def proof(self, stream: int, offset: int) -> str:
        """The tlog-proof text of one event, against the latest certificate."""
        _edge("stream", stream)
        _edge("offset", offset)
        doc = self._call("GET", f"/v1/streams/{stream}/events/{offset}/proof", stream=stream)
        return str(doc["proof"])

    def certificate(self) -> CertificateAnswer:
        """The newest commit certificate."""
        doc = self._call("GET", "/v1/certificate")
        return CertificateAnswer(int(doc["size"]), str(doc["certificate"]))

    def health(self) -> dict[str, Any]:
        """The health of the first endpoint that answers."""
        return self._call("GET", "/v1/health")

    # --- consumer groups (persistent subscriptions) ---------------------
    #
    # Served by the primary (a backup forwards). Calls that change the
    # group (create, delete, ack, nack, replay) are writes: when every
    # attempt failed and one may have reached a primary they raise
    # `Indeterminate`. Retrying them is safe: a repeated ack or park counts
    # as `already`, a repeated create raises `GroupExists`.

    def create_group(
        self,
        name: str,
        *,
        streams: str | None = None,
        types: Sequence[str] | None = None,
        start: str | int | None = None,
        retry_max: int | None = None,
        lease_ms: int | None = None,
    ) -> GroupInfo:
        """Creates a consumer group. `streams`: a filter as on `read_log`
        (`"5001,6000-6999"`; None: every user stream, which needs a token
        scoped to every stream); `types`: event types as on `read_log` (sent
        as a JSON list, so a type may hold a comma; None: every event);
        `start`: `"beginning"` (default), `"end"`
        or a global position; `retry_max` (0 to 100, default 5) failed
        deliveries before an event is parked; `lease_ms` (100 to 600,000,
        default 30,000). An existing name raises `GroupExists`."""
        body: dict[str, Any] = {"name": _group_name(name)}
        if streams is not None:
            body["streams"] = streams
        if types is not None:
            if isinstance(types, str):
                raise TypeError("types: a sequence of event types, not one string")
            body["types"] = list(types)
        if start is not None:
            body["start"] = str(_edge("start", start)) if isinstance(start, int) else start
        if retry_max is not None:
            body["retry_max"] = _edge("retry_max", retry_max)
        if lease_ms is not None:
            body["lease_ms"] = _edge("lease_ms", lease_ms)
        return _group_info(self._call("POST", "/v1/groups", content=self._json(body), write=True))

    def group(self, name: str) -> GroupInfo:
        """A group's configuration and state (`NotFound` when none)."""
        return _group_info(self._call("GET", f"/v1/groups/{_group_name(name)}"))

    def delete_group(self, name: str) -> GroupDeleted:
        """Deletes a group; the name may then be created again, afresh."""
        doc = self._call("DELETE", f"/v1/groups/{_group_name(name)}", write=True)
        try:
            return GroupDeleted(str(doc["name"]), int(doc["position"]))
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a group deletion: {error}") from None

    def pull(
        self, group: str, *, consumer: str | None = None, max_events: int | None = None, wait_ms: int | None = None
    ) -> GroupDelivery:
        """Leases up to `max_events` (1 to 500, default 100) events of the
        group to `consumer` (default: the token's principal), waiting up to
        `wait_ms` (0 to 5,000, default 0) for a first one; an empty
        delivery when none came. Each event stays leased for the group's
        `lease_ms`; settle it with `ack` or `nack`, else it is delivered
        again (at least once). Events carry envelope fields as `read_log`'s."""
        body: dict[str, Any] = {}
        if consumer is not None:
            body["consumer"] = consumer
        if max_events is not None:
            _edge("max", max_events)
            if not 1 <= max_events <= GROUP_PULL_EVENTS_MAX:
                raise errors.BadRequest(400, "bad_request", f"max: {max_events}, expected 1 to {GROUP_PULL_EVENTS_MAX}")
            body["max"] = max_events
        if wait_ms is not None:
            _edge("wait_ms", wait_ms)
            if wait_ms > GROUP_PULL_WAIT_MS_MAX:
                raise errors.BadRequest(400, "bad_request", f"wait_ms: {wait_ms}, at most {GROUP_PULL_WAIT_MS_MAX}")
            body["wait_ms"] = wait_ms
        # A pull changes only leases (the primary's memory); retrying one
        # at worst leases events that come back when the lease expires.
        doc = self._call("POST", f"/v1/groups/{_group_name(group)}/pull", content=self._json(body), events=True)
        try:
            return GroupDelivery(
                group=str(doc["group"]),
                consumer=str(doc["consumer"]),
                events=tuple(DeliveredEvent(_event(e), int(e["attempt"])) for e in doc["events"]),
                lease_ms=int(doc["lease_ms"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a group delivery: {error}") from None

    def ack(self, group: str, positions: Sequence[int]) -> GroupAcked:
        """Settles delivered events as processed (1 to 1,000 positions; one
        committed event per call, so ack in batches). A position not out
        for delivery raises `NotDelivered` and nothing is written; one
        acked or parked already counts in `already`."""
        body = {"positions": _positions(positions)}
        doc = self._call("POST", f"/v1/groups/{_group_name(group)}/ack", content=self._json(body), write=True)
        try:
            return GroupAcked(
                int(doc["acked"]), int(doc["already"]), int(doc["checkpoint"]), _optional_int(doc.get("position"))
            )
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a group ack: {error}") from None

    def nack(
        self, group: str, positions: Sequence[int], *, park: bool = False, reason: str | None = None
    ) -> GroupNacked:
        """Settles delivered events as failed: delivered again (parked once
        past the group's `retry_max`), or with `park=True` parked at once.
        `reason` (at most 512 bytes) is kept with a parked event."""
        body: dict[str, Any] = {"positions": _positions(positions), "action": "park" if park else "retry"}
        if reason is not None:
            body["reason"] = reason
        doc = self._call("POST", f"/v1/groups/{_group_name(group)}/nack", content=self._json(body), write=True)
        try:
            return GroupNacked(int(doc["retried"]), int(doc["parked"]), int(doc["checkpoint"]))
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a group nack: {error}") from None

    def parked(self, group: str, from_position: int = 0, max_events: int | None = None) -> GroupParkedList:
        """Parked events of the group from `from_position`, in position
        order; `next_position` is where the next listing starts (None: no
        more)."""
        query = f"from={_edge('from', from_position)}"
        if max_events is not None:
            query += f"&max={_edge('max', max_events)}"
        doc = self._call("GET", f"/v1/groups/{_group_name(group)}/parked?{query}")
        try:
            return GroupParkedList(
                group=str(doc["group"]),
                parked=tuple(ParkedEvent(int(p["position"]), int(p["parked_at"]), str(p["reason"])) for p in doc["parked"]),
                next_position=_optional_int(doc.get("next_position")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a parked list: {error}") from None

    def replay(self, group: str, positions: Sequence[int] | None = None) -> GroupReplayed:
        """Delivers parked events again, their attempts afresh: `positions`
        (a position not parked raises `NotParked`), or every parked event
        (up to 1,000 a call) when None."""
        body: dict[str, Any] = {}
        if positions is not None:
            body["positions"] = _positions(positions)
        doc = self._call("POST", f"/v1/groups/{_group_name(group)}/replay", content=self._json(body), write=True)
        try:
            return GroupReplayed(int(doc["replayed"]), _optional_int(doc.get("position")))
        except (KeyError, TypeError, ValueError) as error:
            raise errors.ProtocolError(f"not a group replay: {error}") from None

    @staticmethod
    def _json(body: dict[str, Any]) -> bytes:
        content = json.dumps(body, separators=(",", ":")).encode()
        if len(content) > REQUEST_BODY_BYTES_MAX:
            raise errors.PayloadTooLarge(413, "payload_too_large", f"request body is {len(content)} bytes, more than 4 MiB")
        return content

    # --- subscription --------------------------------------------------

    def subscribe(
        self,
        from_position: int = 0,
        *,
        idle_timeout: float = 30.0,
        reconnects_max: int = SUBSCRIBE_RECONNECTS_MAX,
        heartbeats: bool = False,
        streams: str | None = None,
        types: Sequence[str] | None = None,
    ) -> Iterator[Event | Heartbeat]:
        """Committed events from global position `from_position`: first the
        backlog, then live events as they commit, forever. A connection that
        fails, ends, or sends nothing (not even a heartbeat, every 2 s) for
        `idle_timeout` s is resumed, on the next endpoint, from the position
        after the last event; more than `reconnects_max` failures in a row
        raise `SubscriptionError`. A 4xx is raised at once. With
        `heartbeats=True`, heartbeats are yielded too (`Heartbeat`), so a
        caller can bound its wait on a quiet log. `streams` and `types`
        filter on the server as on `read_log`; positions then skip the
        events left out."""
        _edge("from", from_position)
        filter_params = _filter_params(streams, types)
        position = from_position
        failures = 0
        attempt = 0
        while True:
            index = (self._preferred + attempt) % len(self._endpoints)
            attempt += 1
            url = f"{self._endpoints[index]}/v1/subscribe"
            timeout = httpx.Timeout(self._timeout, read=idle_timeout)
            reason = ""
            try:
                with self._http.stream(
                    "GET",
                    url,
                    params={"from": str(position), "format": "ndjson", **filter_params},
                    headers=self._headers(),
                    timeout=timeout,
                ) as answer:
                    self.last_http_version = answer.http_version
                    if answer.status_code != 200:
                        body = self._read_bounded(answer)
                        self._raise_refusal(answer, body, stream=None, expected=None)
                        raise _Retry(f"{answer.status_code}: {body[:_QUOTE_BYTES_MAX]!r}", True, False)
                    for line in answer.iter_lines():
                        if len(line) > SUBSCRIBE_LINE_BYTES_MAX:
                            raise errors.ProtocolError("subscription line larger than the limit")
                        if not line.strip():
                            continue
                        doc = _loads_events(line)
                        if "error" in doc:
                            raise _Retry(f"server ended the subscription: {doc['error']}", True, False)
                        failures = 0
                        if doc.get("heartbeat"):
                            position = max(position, int(doc["next_position"]))
                            if heartbeats:
                                yield Heartbeat(position)
                            continue
                        event = _event(doc)
                        position = event.position + 1
                        yield event
                    reason = "the server ended the subscription"
            except _Retry as retry:
                reason = retry.reason
            except (httpx.TransportError, json.JSONDecodeError) as error:
                reason = f"{type(error).__name__}: {error}"
            failures += 1
            if failures > reconnects_max:
                raise errors.SubscriptionError(
                    f"subscription failed {failures} times in a row; last: {reason}", position
                )
            if attempt % len(self._endpoints) == 0:
                time.sleep(self._retry_delay)

    # --- plumbing ------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            return {}  # The client certificate speaks for us, in the handshake.
        return {"authorization": f"Bearer {self._token}"}

    def _call(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        write: bool = False,
        stream: int | None = None,
        expected: int | None = None,
        key: IdempotencyKey | None = None,
        events: bool = False,
    ) -> Any:
        """One call with retries; `events`: the answer holds events, parsed
        keeping each `metadata` as its JSON text."""
        count = len(self._endpoints)
        start = self._preferred % count
        attempts = self._retries_max + 1
        reached_any = False
        last_transport = False
        last = "no attempt"
        for attempt in range(attempts):
            if attempt and attempt % count == 0:
                time.sleep(self._retry_delay)
            index = (start + attempt) % count
            try:
                result = self._attempt(index, method, path, content, stream, expected, events)
            except _Retry as retry:
                reached_any |= retry.reached
                last_transport = retry.transport
                last = f"{self._endpoints[index]}: {retry.reason}"
                continue
            except errors.ApiError:
                self._preferred = index
                raise
            self._preferred = index
            return result
        summary = f"{attempts} attempts failed; last: {last}"
        if write and reached_any:
            pair = (key.session, key.request) if key is not None else None
            raise errors.Indeterminate(summary, pair)
        if not write and last_transport:
            raise errors.TransportError(summary)
        raise errors.Unavailable(summary)

    def _attempt(
        self,
        index: int,
        method: str,
        path: str,
        content: bytes | None,
        stream: int | None,
        expected: int | None,
        events: bool = False,
    ) -> Any:
        headers = self._headers()
        if content is not None:
            headers["content-type"] = "application/json"
        try:
            with self._http.stream(method, self._endpoints[index] + path, content=content, headers=headers) as answer:
                self.last_http_version = answer.http_version
                body = self._read_bounded(answer)
        except (httpx.ConnectError, httpx.ConnectTimeout) as error:
            raise _Retry(f"connect: {error}", reached=False, transport=True) from None
        except httpx.TransportError as error:
            raise _Retry(f"{type(error).__name__}: {error}", reached=True, transport=True) from None
        if answer.status_code < 300:
            try:
                return _loads_events(body) if events else json.loads(body)
            except ValueError as error:
                raise errors.ProtocolError(f"answer {answer.status_code} does not parse: {error}") from None
        if answer.status_code >= 500:
            code = self._error_code(body)
            # Only an explicit `unavailable` says the request was not taken.
            raise _Retry(f"{answer.status_code} {code}: {body[:_QUOTE_BYTES_MAX]!r}", code != "unavailable", False)
        self._raise_refusal(answer, body, stream, expected)
        raise errors.ProtocolError(f"unexpected status {answer.status_code}")

    @staticmethod
    def _read_bounded(answer: httpx.Response) -> bytes:
        chunks = []
        total = 0
        for chunk in answer.iter_bytes():
            total += len(chunk)
            if total > ANSWER_BYTES_MAX:
                raise errors.ProtocolError(f"answer larger than {ANSWER_BYTES_MAX} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    @staticmethod
    def _error_code(body: bytes) -> str:
        try:
            return str(json.loads(body)["error"]["code"])
        except (ValueError, KeyError, TypeError):
            return ""

    @staticmethod
    def _raise_refusal(answer: httpx.Response, body: bytes, stream: int | None, expected: int | None) -> None:
        """Raises the typed error of a 4xx answer, by its `error.code`."""
        status = answer.status_code
        if not 400 <= status < 500:
            return
        try:
            detail = json.loads(body)["error"]
            code, message = str(detail["code"]), str(detail["message"])
            actual = detail.get("actual_offset")
        except (ValueError, KeyError, TypeError):
            code, message, actual = "", body[:_QUOTE_BYTES_MAX].decode(errors="replace"), None
        retry_after = None
        header = answer.headers.get("retry-after")
        if header is not None and header.isdigit():
            retry_after = int(header)
        if code == "wrong_expected_offset" or (not code and status == 409):
            if actual is None:
                raise errors.ProtocolError(f"wrong_expected_offset without actual_offset: {message}")
            raise errors.WrongExpectedOffset(
                status, code or "wrong_expected_offset", message, stream or 0, expected or 0, int(actual)
            )
        by_code: dict[str, type[errors.ApiError]] = {
            "idempotency_key_reused": errors.IdempotencyKeyReused,
            "duplicate_event_id": errors.DuplicateEventId,
            "group_exists": errors.GroupExists,
            "not_delivered": errors.NotDelivered,
            "not_parked": errors.NotParked,
            "invalid_envelope": errors.InvalidEnvelope,
            "envelope_too_large": errors.PayloadTooLarge,
            "unauthorized": errors.Unauthorized,
            "credential_expired": errors.CredentialExpired,
            "forbidden": errors.Forbidden,
            "rate_limited": errors.RateLimited,
            "not_found": errors.NotFound,
            "payload_too_large": errors.PayloadTooLarge,
            "bad_request": errors.BadRequest,
            "refused": errors.Refused,
            "request_timeout": errors.Refused,
        }
        by_status: dict[int, type[errors.ApiError]] = {
            401: errors.Unauthorized,
            403: errors.Forbidden,
            404: errors.NotFound,
            413: errors.PayloadTooLarge,
            429: errors.RateLimited,
        }
        kind = by_code.get(code) or by_status.get(status) or errors.Refused
        raise kind(status, code, message, retry_after)
