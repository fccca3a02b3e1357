//! The client API's wire types (HTTP/JSON), shared by the server
//! (`crate::server`) and the Rust client (`crate::client`) so the two can
//! never disagree. The routes and their meaning are documented in
//! `docs/api.md` and served as OpenAPI at `/openapi.json`.
//!
//! Routes (all under TLS; every route except `/v1/health`, `/metrics` and
//! `/openapi.json` needs `Authorization: Bearer <token>`):
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | POST | `/v1/streams/{stream}/append` | [`AppendRequest`] | [`AppendReceipt`] |
//! | GET | `/v1/streams/{stream}/events?from=N&max=M` | | [`StreamEvents`] |
//! | GET | `/v1/log?from=P&max=M` | | [`LogEvents`] |
//! | GET | `/v1/subscribe?from=P&format=ndjson\|sse` | | one [`LogEvent`] per line / SSE `data:`; [`Heartbeat`] lines while idle |
//! | GET | `/v1/streams/{stream}/events/{offset}/proof` | | [`ProofAnswer`] |
//! | GET | `/v1/consistency?from=A&to=B` | | [`ConsistencyAnswer`] |
//! | GET | `/v1/certificate` | | [`CertificateAnswer`] |
//! | POST | `/v1/export/events` | [`ExportEventsRequest`] | [`ExportBundle`] |
//! | GET | `/v1/export/audit?from_ns=&to_ns=&stream=` | | [`AuditExport`] |
//! | POST | `/v1/streams/{stream}/break-glass` | [`BreakGlassRequest`] | [`BreakGlassAnswer`] |
//! | POST | `/v1/streams/{stream}/shred` | [`CustodyRequest`] | [`CustodyAnswer`] |
//! | POST | `/v1/streams/{stream}/hold` | [`CustodyRequest`] | [`CustodyAnswer`] |
//! | POST | `/v1/streams/{stream}/hold/release` | [`CustodyRequest`] | [`CustodyAnswer`] |
//! | POST | `/v1/streams/{stream}/retention` | [`CustodyRequest`] (with `retain_until_ms`) | [`CustodyAnswer`] |
//! | POST | `/v1/verifications` | [`VerificationRecord`] | `{"recorded": true}` |
//! | GET | `/v1/tlog/checkpoint` | | C2SP signed checkpoint (text) |
//! | GET | `/v1/tlog/tile/<L>/<N>[.p/<W>]`, `/v1/tlog/tile/entries/<N>[.p/<W>]` | | C2SP tlog-tiles tile / entry bundle (bytes) |
//! | GET | `/v1/health` | | [`Health`] |
//! | GET | `/metrics` | | Prometheus text format |
//! | GET | `/openapi.json` | | OpenAPI 3.1 document |
//!
//! Every error is an [`ErrorBody`] with a 4xx status for the caller's
//! mistakes and 503 for "try again" (no primary, indeterminate outcome);
//! never a 5xx for bad input.

use serde::{Deserialize, Serialize};

/// Largest request body the server accepts, in bytes.
pub const REQUEST_BODY_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Most events one read or one subscription page returns.
pub const READ_EVENTS_MAX: u64 = 1000;
/// Most events one append may carry (they share one VSR op).
pub const APPEND_EVENTS_MAX: usize = vellum_audit::record::EVENTS_PER_OP_MAX as usize;
/// Largest event, in bytes (after base64 decoding; a `json` event's text).
pub const EVENT_BYTES_MAX: usize = vellum_audit::record::EVENT_BYTES_MAX;
/// The TLS ALPN protocol ids of the API, most preferred first: HTTP/2,
/// else HTTP/1.1. The server offers both and speaks the one negotiated.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Deserializes an optional member that, when present, must hold a value:
/// `null` is refused (the OpenAPI document gives these members a type
/// without `null`), so an absent member and `null` are not two spellings of
/// one request.
/// Largest float taken as a whole number: 2^53, the last integer up to
/// which every integer has an exact `f64`.
const WHOLE_FLOAT_MAX: f64 = 9_007_199_254_740_992.0;

/// A request's integer member: a JSON integer, or a number written with a
/// fraction or exponent whose value is a whole number (`211.0`, `2e3`),
/// since JSON (and the OpenAPI schema's `integer`) give those the same
/// value. A float above 2^53 is refused: it may not be the number the
/// client meant. Negative and fractional numbers are refused.
pub(crate) fn whole<'de, D>(deserializer: D) -> Result<u64, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct Whole;
    impl serde::de::Visitor<'_> for Whole {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a non-negative whole number")
        }
        fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<u64, E> {
            Ok(value)
        }
        fn visit_i64<E: serde::de::Error>(self, value: i64) -> Result<u64, E> {
            u64::try_from(value).map_err(|_| E::custom(format!("{value} is negative")))
        }
        fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<u64, E> {
            if value.fract() != 0.0 || !(0.0..=WHOLE_FLOAT_MAX).contains(&value) {
                return Err(E::custom(format!(
                    "{value} is not a whole number from 0 to 2^53 (write large integers without a fraction or exponent)"
                )));
            }
            // Whole and within 0..=2^53: the conversion is exact.
            Ok(value as u64)
        }
    }
    deserializer.deserialize_any(Whole)
}

/// [`whole`] for an optional member that, when present, must not be null.
pub(crate) fn present_whole<'de, D>(deserializer: D) -> Result<Option<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    whole(deserializer).map(Some)
}

/// [`present_whole`] for a `u32` member: a whole number in any spelling
/// (JSON Schema's `integer`), at most 2^32-1.
pub(crate) fn present_whole_u32<'de, D>(deserializer: D) -> Result<Option<u32>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let value = whole(deserializer)?;
    u32::try_from(value).map(Some).map_err(|_| {
        <D::Error as serde::de::Error>::custom(format!("{value} is above {}", u32::MAX))
    })
}

pub(crate) fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// An idempotency key: the client session (32 lowercase hex digits, not all
/// zero) and the request number within it (increasing from 1). A retry with
/// the same key never appends twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdempotencyKey {
    /// The client session id, 32 lowercase hex digits.
    pub session: String,
    /// The request number within the session.
    #[serde(deserialize_with = "whole")]
    pub request: u64,
}

/// One event to append: either JSON (stored as exactly the bytes of the
/// member's value as the client sent them) or raw bytes in base64. Exactly
/// one of the two.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// A JSON value, stored byte for byte as sent (P9): never re-serialized,
    /// so key order, number spelling (`1.50`, `-96.17060814119407`, integers
    /// beyond 2^64), escapes and inner whitespace are kept. `null` is a value.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub json: Option<Box<serde_json::value::RawValue>>,
    /// Raw bytes, standard base64 with padding.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub base64: Option<String>,
    /// The event's id: a UUID in canonical text form (lowercase,
    /// 8-4-4-4-12). A repeat of an id on the same stream is never stored
    /// twice (see docs/api.md, "Event envelope").
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub id: Option<String>,
    /// The event's type (for FHIR the resourceType or a domain event
    /// name): 1 to 256 bytes of UTF-8 without control characters.
    #[serde(
        rename = "type",
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub event_type: Option<String>,
    /// The payload's media type: 1 to 256 bytes of UTF-8 without control
    /// characters.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub content_type: Option<String>,
    /// Any JSON value (at most 16 KiB of text), stored byte for byte as
    /// sent, like `json`.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub metadata: Option<Box<serde_json::value::RawValue>>,
}

impl EventIn {
    /// An event of raw bytes (sent as base64), without envelope fields.
    pub fn bytes(payload: &[u8]) -> EventIn {
        use base64::Engine as _;
        EventIn {
            base64: Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ..EventIn::default()
        }
    }

    /// True when the event carries any envelope field.
    pub fn has_envelope(&self) -> bool {
        self.id.is_some()
            || self.event_type.is_some()
            || self.content_type.is_some()
            || self.metadata.is_some()
    }
}

impl PartialEq for EventIn {
    fn eq(&self, other: &EventIn) -> bool {
        let raw = |v: &Option<Box<serde_json::value::RawValue>>| {
            v.as_ref().map(|raw| raw.get().to_owned())
        };
        raw(&self.json) == raw(&other.json)
            && self.base64 == other.base64
            && self.id == other.id
            && self.event_type == other.event_type
            && self.content_type == other.content_type
            && raw(&self.metadata) == raw(&other.metadata)
    }
}

impl LogEvent {
    /// The bytes the event's leaf commits to (with `salt`, what
    /// `vellum proof check` takes as the event): the payload, or for an
    /// event of a batch with envelopes its encoded envelope
    /// (`vellum_audit::envelope`). None when a field does not encode (not
    /// an answer of a Vellum server).
    pub fn committed_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine as _;
        let payload = base64::engine::general_purpose::STANDARD
            .decode(&self.base64)
            .ok()?;
        if !self.envelope {
            return Some(payload);
        }
        let id = match &self.id {
            Some(text) => Some(vellum_audit::envelope::parse_uuid(text)?),
            None => None,
        };
        let envelope = vellum_audit::envelope::Envelope {
            id,
            event_type: self.event_type.clone(),
            content_type: self.content_type.clone(),
            metadata: self.metadata.clone(),
            payload,
        };
        envelope.check().ok()?;
        Some(envelope.encode())
    }
}

/// JSON text kept as text: written into an answer as the JSON value it
/// is, byte for byte, and read back the same way.
mod raw_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use serde_json::value::RawValue;

    pub(super) fn serialize<S: Serializer>(
        text: &Option<String>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let raw = text
            .as_ref()
            .map(|t| RawValue::from_string(t.clone()))
            .transpose()
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        let raw = Option::<Box<RawValue>>::deserialize(deserializer)?;
        Ok(raw.map(|r| r.get().to_owned()))
    }
}

/// `POST /v1/streams/{stream}/append`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppendRequest {
    /// The events, 1 to the per-op maximum, appended all-or-nothing.
    pub events: Vec<EventIn>,
    /// Refuse (409 `wrong_expected_offset`) unless the stream has exactly
    /// this many events.
    #[serde(
        default,
        deserialize_with = "present_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub expected_offset: Option<u64>,
    /// Makes retries safe; without one the server picks a fresh key.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub idempotency: Option<IdempotencyKey>,
    /// Why the caller appends (recorded in the access trail).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub purpose: Option<String>,
}

/// The durability proof of an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendReceipt {
    /// The stream.
    pub stream: u64,
    /// Stream offset of the first event.
    pub first_offset: u64,
    /// The stream's new length (the `Offset` of `persist_blocking`).
    pub next_offset: u64,
    /// Global position of the first event.
    pub first_position: u64,
    /// The VSR op that carries the batch.
    pub op: u64,
    /// True when nothing new was written: a retry answered from the client
    /// table, or a resent batch whose event ids the stream already holds
    /// (the offsets are the original events').
    pub duplicate: bool,
    /// The commit certificate: a C2SP signed note (tlog-checkpoint) with a quorum of signatures.
    pub certificate: String,
    /// One `c2sp.org/tlog-proof@v1` inclusion proof per event, in batch order.
    pub proofs: Vec<String>,
    /// Each event's 32-byte commitment salt, standard base64, in batch
    /// order: with the event's bytes it opens the leaf's commitment
    /// (`vellum proof check`).
    #[serde(default)]
    pub salts: Vec<String>,
}

/// One event as read back.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    /// Global position (Merkle leaf index).
    pub position: u64,
    /// The stream.
    pub stream: u64,
    /// Offset in the stream.
    pub offset: u64,
    /// The payload, standard base64.
    pub base64: String,
    /// True when the event was appended in a batch with envelope fields:
    /// its committed bytes are then the encoded envelope, even when this
    /// event has no field of its own (`LogEvent::committed_bytes`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub envelope: bool,
    /// The event's id, as appended (canonical UUID text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The event's type, as appended.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// The payload's media type, as appended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The metadata: the JSON text exactly as appended (written into this
    /// answer as that JSON value, byte for byte).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        serialize_with = "raw_json::serialize",
        deserialize_with = "raw_json::deserialize"
    )]
    pub metadata: Option<String>,
    /// The event's 32-byte commitment salt, standard base64: with the
    /// payload it opens the leaf's commitment (`vellum proof check`); for
    /// an event with envelope fields, with the encoded envelope
    /// (`LogEvent::committed_bytes`).
    #[serde(default)]
    pub salt: String,
}

/// `GET /v1/streams/{stream}/events`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvents {
    /// The stream.
    pub stream: u64,
    /// The events, in offset order.
    pub events: Vec<LogEvent>,
    /// Where the next read should start.
    pub next_offset: u64,
}

/// `GET /v1/log`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvents {
    /// Committed events from the requested position, in position order.
    pub events: Vec<LogEvent>,
    /// Where the next read should start.
    pub next_position: u64,
}

/// A subscription line sent while no event arrives, so clients can tell a
/// quiet log from a dead connection; `next_position` is where to resume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Always true (tells a heartbeat line from an event line).
    pub heartbeat: bool,
    /// The position the subscription continues from.
    pub next_position: u64,
}

/// `GET /v1/streams/{stream}/events/{offset}/proof`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofAnswer {
    /// The `c2sp.org/tlog-proof@v1` text (leaf preimage as `extra`, checkpoint included).
    pub proof: String,
}

/// `GET /v1/consistency`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyAnswer {
    /// The older tree size.
    pub from: u64,
    /// The newer tree size (a certified one).
    pub to: u64,
    /// The RFC 6962 consistency proof hashes, lowercase hex.
    pub hashes: Vec<String>,
    /// The certificate at the newer size.
    pub certificate: String,
}

/// `GET /v1/certificate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateAnswer {
    /// Tree size the certificate covers.
    pub size: u64,
    /// The certificate text.
    pub certificate: String,
}

/// `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// "normal", "view_change" or "recovering".
    pub status: String,
    /// This replica's index.
    pub replica: u8,
    /// Replicas in the cluster.
    pub replica_count: u8,
    /// The replica's view.
    pub view: u64,
    /// The primary of that view.
    pub primary: u8,
    /// True when this replica is the primary in normal status.
    pub is_primary: bool,
    /// The replica's commit number.
    pub commit: u64,
    /// The replica's highest op.
    pub op: u64,
    /// Committed events (tree size).
    pub events: u64,
}

/// `POST /v1/export/events`: an export bundle of one stream's events
/// (plaintext, salts, proofs, the certificate, the replica's signature).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEventsRequest {
    /// The stream.
    #[serde(deserialize_with = "whole")]
    pub stream: u64,
    /// First offset.
    #[serde(deserialize_with = "whole")]
    pub from: u64,
    /// One past the last offset.
    #[serde(deserialize_with = "whole")]
    pub to: u64,
    /// The purpose of the export (recorded in the trail and the manifest).
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub purpose: Option<String>,
}

/// Longest break-glass reason, in bytes.
pub const BREAK_GLASS_REASON_BYTES_MAX: usize = 1024;
/// A break-glass grant lasts this long unless the request asks for less.
pub const BREAK_GLASS_SECONDS_DEFAULT: u64 = 3600;
/// The longest a break-glass grant may last, in seconds (four hours); a
/// longer ask is refused, never clamped.
pub const BREAK_GLASS_SECONDS_MAX: u64 = 4 * 3600;

/// `POST /v1/streams/{stream}/break-glass`: open emergency access to a
/// stream outside the token's scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakGlassRequest {
    /// Why (required, not blank, at most [`BREAK_GLASS_REASON_BYTES_MAX`]
    /// bytes); recorded in the access trail with every access under it.
    pub reason: String,
    /// How long the grant lasts, 1 to [`BREAK_GLASS_SECONDS_MAX`] seconds
    /// (default [`BREAK_GLASS_SECONDS_DEFAULT`]).
    #[serde(
        default,
        deserialize_with = "present_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub duration_s: Option<u64>,
}

/// The answer of `POST /v1/streams/{stream}/break-glass`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlassAnswer {
    /// The stream now open to the principal.
    pub stream: u64,
    /// Who may read it.
    pub principal: String,
    /// When the grant opened, unix nanoseconds.
    pub opened_ns: u64,
    /// When it expires, unix nanoseconds; afterwards 403 `scope_denied`.
    pub expires_ns: u64,
}

/// `POST /v1/streams/{stream}/shred`, `.../hold`, `.../hold/release` and
/// `.../retention` (role `privacy-officer`): a key-custody request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyRequest {
    /// Why (required, not blank, at most
    /// [`vellum_compliance::custody::CUSTODY_REASON_BYTES_MAX`] bytes); it is
    /// committed in the key-custody stream and must hold no PHI.
    pub reason: String,
    /// For `retention` only (required there): keep the stream's data at
    /// least until this time, unix milliseconds; a floor is only raised.
    #[serde(
        default,
        deserialize_with = "present_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub retain_until_ms: Option<u64>,
}

/// The answer of a committed key-custody request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustodyAnswer {
    /// The stream.
    pub stream: u64,
    /// `shred`, `hold`, `release` or `retain`.
    pub action: String,
    /// Global log position of the committed custody event.
    pub position: u64,
    /// The op that holds it.
    pub op: u64,
    /// For a shred: data keys the answering replica destroyed (every
    /// replica destroys its own copies when it applies the event).
    pub keys_destroyed: u64,
}

/// One file of an export bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFile {
    /// Path inside the bundle directory (forward slashes, no `..`).
    pub name: String,
    /// The bytes, standard base64.
    pub base64: String,
}

/// The answer of `POST /v1/export/events`: the bundle's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportBundle {
    /// Every file of the bundle.
    pub files: Vec<ExportFile>,
}

/// One access-trail event and its global position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Global position of the trail event (provable like any event).
    pub position: u64,
    /// The event.
    pub event: vellum_compliance::trail::AccessEvent,
}

/// `GET /v1/export/audit?from_ns=&to_ns=&stream=`: the access trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    /// The replica that answered (its key name).
    pub source: String,
    /// The matching trail events, in position order.
    pub records: Vec<AuditRecord>,
}

/// `POST /v1/verifications`: a verification run to record in the access trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerificationRecord {
    /// What was verified ("data-dir r0", "cluster C", "bundle B").
    pub scope: String,
    /// Whether every check passed.
    pub passed: bool,
    /// SHA-256 of the report file, 64 hex digits.
    pub report_sha256: String,
    /// The tree size of the checkpoint the run reached, if any (never
    /// beyond the answering replica's log).
    #[serde(
        default,
        deserialize_with = "present_whole",
        skip_serializing_if = "Option::is_none"
    )]
    pub checkpoint_size: Option<u64>,
}

/// Error codes, one per kind of refusal.
pub mod code {
    /// Malformed JSON, bad field, bad query (400).
    pub const BAD_REQUEST: &str = "bad_request";
    /// The request body did not arrive within the server's deadline (408).
    pub const REQUEST_TIMEOUT: &str = "request_timeout";
    /// Missing or unknown bearer token (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// The bearer token or client certificate was valid but has expired:
    /// its line's `expires=` (or the certificate's notAfter) has passed;
    /// ask the operator for its successor (401).
    pub const CREDENTIAL_EXPIRED: &str = "credential_expired";
    /// The token may not do this (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// The token's role allows the call, but the stream is outside the
    /// token's scope and no break-glass grant covers it (403).
    pub const SCOPE_DENIED: &str = "scope_denied";
    /// Unknown stream, event or route (404).
    pub const NOT_FOUND: &str = "not_found";
    /// The stream's length is not the expected offset (409).
    pub const WRONG_EXPECTED_OFFSET: &str = "wrong_expected_offset";
    /// The body is larger than the limit (413).
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// The idempotency key (client session and request number) was already
    /// used for a different request; nothing was written (422).
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
    /// Too many failed logins from this address or with this token prefix:
    /// wait the `Retry-After` seconds (429). A valid token is never refused so.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// The request was refused by the replica (bad stream id, stale request number) (422).
    pub const REFUSED: &str = "refused";
    /// The outcome is unknown: retry with the same idempotency key (503).
    pub const INDETERMINATE: &str = "indeterminate";
    /// No primary reachable right now, or shutting down: retry (503).
    pub const UNAVAILABLE: &str = "unavailable";
    /// Storage failed on this replica (500; never for bad input).
    pub const STORAGE: &str = "storage";
    /// The read's `min_position` is beyond the committed log (the primary's
    /// committed prefix, or a backup's after its wait): nothing was read;
    /// ask again once the position is committed (422).
    pub const POSITION_NOT_REACHED: &str = "position_not_reached";
    /// The stream was crypto-shredded: its events can never be read
    /// again; `shred_position` names the shred event (410).
    pub const SHREDDED: &str = "shredded";
    /// A shred refused because the stream is under a legal hold (409).
    pub const LEGAL_HOLD: &str = "legal_hold";
    /// A shred refused because the stream's retention floor is in the
    /// future, or a floor asked lower than the one in force (409).
    pub const RETENTION_FLOOR: &str = "retention_floor";
    /// A hold on a held stream, or a release of a stream not held (409).
    pub const CUSTODY_CONFLICT: &str = "custody_conflict";
    /// An event id is already on the stream, or repeated in the batch, and
    /// the batch is not a resend of the op that holds it; nothing was
    /// written (409). `original_offset` names the stored event.
    pub const DUPLICATE_EVENT_ID: &str = "duplicate_event_id";
    /// An envelope field is malformed: an id not in canonical UUID form, an
    /// empty type or content type, one with a control character, or one
    /// over 256 bytes (422).
    pub const INVALID_ENVELOPE: &str = "invalid_envelope";
    /// An event's metadata is above 16 KiB (413).
    pub const ENVELOPE_TOO_LARGE: &str = "envelope_too_large";
    /// A consumer group of that name exists already (409).
    pub const GROUP_EXISTS: &str = "group_exists";
    /// An ack or nack names a position that is not out for delivery in
    /// the group (never delivered, beyond the log); nothing was written (409).
    pub const NOT_DELIVERED: &str = "not_delivered";
    /// A replay names a position that is not parked; nothing was written (409).
    pub const NOT_PARKED: &str = "not_parked";
}

/// The error codes of [`code`] as a type, for clients that branch on an
/// answer's `code` (never on its message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// [`code::BAD_REQUEST`] (400).
    BadRequest,
    /// [`code::REQUEST_TIMEOUT`] (408).
    RequestTimeout,
    /// [`code::UNAUTHORIZED`] (401).
    Unauthorized,
    /// [`code::CREDENTIAL_EXPIRED`] (401).
    CredentialExpired,
    /// [`code::FORBIDDEN`] (403).
    Forbidden,
    /// [`code::SCOPE_DENIED`] (403).
    ScopeDenied,
    /// [`code::NOT_FOUND`] (404).
    NotFound,
    /// [`code::WRONG_EXPECTED_OFFSET`] (409).
    WrongExpectedOffset,
    /// [`code::PAYLOAD_TOO_LARGE`] (413).
    PayloadTooLarge,
    /// [`code::IDEMPOTENCY_KEY_REUSED`] (422).
    IdempotencyKeyReused,
    /// [`code::REFUSED`] (422).
    Refused,
    /// [`code::RATE_LIMITED`] (429).
    RateLimited,
    /// [`code::INDETERMINATE`] (503).
    Indeterminate,
    /// [`code::UNAVAILABLE`] (503).
    Unavailable,
    /// [`code::STORAGE`] (500).
    Storage,
    /// [`code::POSITION_NOT_REACHED`] (422).
    PositionNotReached,
    /// [`code::SHREDDED`] (410).
    Shredded,
    /// [`code::LEGAL_HOLD`] (409).
    LegalHold,
    /// [`code::RETENTION_FLOOR`] (409).
    RetentionFloor,
    /// [`code::CUSTODY_CONFLICT`] (409).
    CustodyConflict,
    /// [`code::DUPLICATE_EVENT_ID`] (409).
    DuplicateEventId,
    /// [`code::INVALID_ENVELOPE`] (422).
    InvalidEnvelope,
    /// [`code::ENVELOPE_TOO_LARGE`] (413).
    EnvelopeTooLarge,
    /// [`code::GROUP_EXISTS`] (409).
    GroupExists,
    /// [`code::NOT_DELIVERED`] (409).
    NotDelivered,
    /// [`code::NOT_PARKED`] (409).
    NotParked,
}

impl ErrorCode {
    /// Every code, for tests and documents.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::BadRequest,
        ErrorCode::RequestTimeout,
        ErrorCode::Unauthorized,
        ErrorCode::CredentialExpired,
        ErrorCode::Forbidden,
        ErrorCode::ScopeDenied,
        ErrorCode::NotFound,
        ErrorCode::WrongExpectedOffset,
        ErrorCode::PayloadTooLarge,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::Refused,
        ErrorCode::RateLimited,
        ErrorCode::Indeterminate,
        ErrorCode::Unavailable,
        ErrorCode::Storage,
        ErrorCode::PositionNotReached,
        ErrorCode::Shredded,
        ErrorCode::LegalHold,
        ErrorCode::RetentionFloor,
        ErrorCode::CustodyConflict,
        ErrorCode::DuplicateEventId,
        ErrorCode::InvalidEnvelope,
        ErrorCode::EnvelopeTooLarge,
        ErrorCode::GroupExists,
        ErrorCode::NotDelivered,
        ErrorCode::NotParked,
    ];

    /// The wire spelling, one of [`code`].
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => code::BAD_REQUEST,
            ErrorCode::RequestTimeout => code::REQUEST_TIMEOUT,
            ErrorCode::Unauthorized => code::UNAUTHORIZED,
            ErrorCode::CredentialExpired => code::CREDENTIAL_EXPIRED,
            ErrorCode::Forbidden => code::FORBIDDEN,
            ErrorCode::ScopeDenied => code::SCOPE_DENIED,
            ErrorCode::NotFound => code::NOT_FOUND,
            ErrorCode::WrongExpectedOffset => code::WRONG_EXPECTED_OFFSET,
            ErrorCode::PayloadTooLarge => code::PAYLOAD_TOO_LARGE,
            ErrorCode::IdempotencyKeyReused => code::IDEMPOTENCY_KEY_REUSED,
            ErrorCode::Refused => code::REFUSED,
            ErrorCode::RateLimited => code::RATE_LIMITED,
            ErrorCode::Indeterminate => code::INDETERMINATE,
            ErrorCode::Unavailable => code::UNAVAILABLE,
            ErrorCode::Storage => code::STORAGE,
            ErrorCode::PositionNotReached => code::POSITION_NOT_REACHED,
            ErrorCode::Shredded => code::SHREDDED,
            ErrorCode::LegalHold => code::LEGAL_HOLD,
            ErrorCode::RetentionFloor => code::RETENTION_FLOOR,
            ErrorCode::CustodyConflict => code::CUSTODY_CONFLICT,
            ErrorCode::DuplicateEventId => code::DUPLICATE_EVENT_ID,
            ErrorCode::InvalidEnvelope => code::INVALID_ENVELOPE,
            ErrorCode::EnvelopeTooLarge => code::ENVELOPE_TOO_LARGE,
            ErrorCode::GroupExists => code::GROUP_EXISTS,
            ErrorCode::NotDelivered => code::NOT_DELIVERED,
            ErrorCode::NotParked => code::NOT_PARKED,
        }
    }

    /// The code of a wire spelling; None for a code this build does not know.
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The details.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// One of [`code`].
    pub code: String,
    /// A sentence saying what and where.
    pub message: String,
    /// For `wrong_expected_offset`: the stream's actual length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_offset: Option<u64>,
    /// For `shredded`: the global log position of the shred event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shred_position: Option<u64>,
    /// For `duplicate_event_id`: the stream offset of the event already
    /// stored with that id (absent when the id repeats inside the batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_offset: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: integer members take any JSON spelling of a whole number
    /// (JSON Schema's `integer`: `211`, `211.0`, `2.11e2`) and refuse
    /// fractions, negatives, nulls and floats beyond exact range.
    #[test]
    fn integer_members_take_whole_numbers_in_any_spelling() {
        let parse = |expected: &str| {
            serde_json::from_str::<AppendRequest>(&format!(
                r#"{{"events":[{{"base64":""}}],"expected_offset":{expected}}}"#
            ))
            .map(|r| r.expected_offset)
        };
        for (text, value) in [("211", 211), ("211.0", 211), ("2.11e2", 211), ("0.0", 0)] {
            assert_eq!(parse(text).expect(text), Some(value), "{text}");
        }
        assert_eq!(parse("9007199254740992.0").expect("2^53"), Some(1 << 53));
        for text in [
            "1.5",
            "-1",
            "-0.5",
            "1e300",
            "null",
            "\"5\"",
            "18446744073709551616",
        ] {
            parse(text).expect_err(text);
        }
        let record: VerificationRecord = serde_json::from_str(
            r#"{"scope":"s","passed":true,"report_sha256":"00","checkpoint_size":1350.0}"#,
        )
        .expect("whole float");
        assert_eq!(record.checkpoint_size, Some(1350));
        let export: ExportEventsRequest =
            serde_json::from_str(r#"{"stream":16.0,"from":0,"to":2e0}"#).expect("whole floats");
        assert_eq!((export.stream, export.from, export.to), (16, 0, 2));
        // A u32 member (a consumer group's retry_max; schemathesis sent 0.0).
        let group = |retry_max: &str| {
            serde_json::from_str::<crate::server::groups::CreateGroupRequest>(&format!(
                r#"{{"name":"g","retry_max":{retry_max}}}"#
            ))
            .map(|r| r.retry_max)
        };
        for (text, value) in [("0.0", 0), ("3", 3), ("1e2", 100), ("4294967295", u32::MAX)] {
            assert_eq!(group(text).expect(text), Some(value), "{text}");
        }
        for text in ["0.5", "-1", "4294967296", "null"] {
            group(text).expect_err(text);
        }
    }
}
