//! `/openapi.json`: a hand-written OpenAPI 3.1 description of the client API.
//!
//! Hand-written rather than generated so the contract in `crate::api` stays
//! free of schema macros; a test checks that every route of the router
//! appears here, so the two cannot silently drift apart.

use axum::Json;
use serde_json::{Value, json};

use crate::{api, bounds};

#[path = "openapi_groups.rs"]
mod groups;

/// The tile paths `/v1/tlog/tile/{path}` serves, as an ECMA-262 pattern:
/// a level 0..=63 or `entries`, the index in 3-digit elements (all but the
/// last prefixed `x`, no leading `x000`), an optional `.p/<W>` of 1..=255.
const TILE_PATH_PATTERN: &str = "^(?:entries|[0-9]|[1-5][0-9]|6[0-3])/\
(?:x(?:00[1-9]|0[1-9][0-9]|[1-9][0-9]{2})/(?:x[0-9]{3}/){0,4})?[0-9]{3}\
(?:\\.p/(?:[1-9]|[1-9][0-9]|1[0-9]{2}|2[0-4][0-9]|25[0-5]))?$";

/// `GET /openapi.json`.
pub(crate) async fn openapi() -> Json<Value> {
    Json(document())
}

/// The OpenAPI document.
pub fn document() -> Value {
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Vellum client API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Audited, replicated event store. Every error is an ErrorBody; 4xx for the caller's mistakes, 503 for 'retry', 500 only for internal faults of the replica (storage, encryption, the random source)."
        },
        "security": [{ "bearer": [] }, { "mtls": [] }],
        "paths": merged(paths(), groups::paths()),
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "description": "Token from the replica's tokens file; roles writer, reader, auditor; a per-stream scope (streams=) limits which streams' data it reaches (403 scope_denied outside it, events outside it left out of global reads and subscriptions)." },
                "mtls": { "type": "mutualTLS", "description": "Instead of a token: a client certificate of the replica's client CA, mapped by its SHA-256 fingerprint to a principal with a role and scope as a token's (client_certs in the replica config). An unknown certificate is 401; a certificate together with a bearer token is 401; a replica's certificate is never a client identity." }
            },
            "schemas": merged(schemas(), groups::schemas()),
            "responses": error_responses(),
        }
    })
}

/// `base` with the members of `more` added (both objects).
fn merged(mut base: Value, more: Value) -> Value {
    if let (Some(map), Value::Object(more)) = (base.as_object_mut(), more) {
        map.extend(more);
    }
    base
}

fn paths() -> Value {
    json!({
        "/v1/streams/{stream}/append": {
            "post": {
                "summary": "Append events to a stream (all or nothing); role writer. Sent to a backup, the append is forwarded to the primary.",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("AppendRequest") } }
                },
                "responses": with_errors(ok("AppendReceipt"), &["400", "401", "403", "404", "408", "409", "410", "413", "422", "500", "503"])
            }
        },
        "/v1/streams/{stream}/events": {
            "get": {
                "summary": "Read committed events of one stream; roles writer, reader. Served by any replica (a backup from its certified prefix; the read's trail record commits through the primary first).",
                "parameters": [stream_param(), query_param("from", "First offset (default 0).", false), max_param(), min_position_param()],
                "responses": with_errors(ok("StreamEvents"), &["400", "401", "403", "404", "410", "422", "500", "503"])
            }
        },
        "/v1/log": {
            "get": {
                "summary": "Read committed events of the global log; roles writer, reader. Served by any replica (a backup from its certified prefix; the read's trail record commits through the primary first).",
                "parameters": [query_param("from", "First position (default 0).", false), max_param(), min_position_param(), streams_param(), types_param()],
                "responses": with_errors(ok("LogEvents"), &["400", "401", "403", "422", "500", "503"])
            }
        },
        "/v1/subscribe": {
            "get": {
                "summary": "Stream committed events from a position on, then live; heartbeat lines while idle; roles writer, reader. Served by any replica (each window's trail record commits through the primary first).",
                "parameters": [
                    query_param("from", "First position (default 0).", false),
                    min_position_param(),
                    streams_param(),
                    types_param(),
                    {
                        "name": "format", "in": "query", "required": false,
                        "description": "ndjson (default): one LogEvent or Heartbeat per line. sse: `data: <json>` events, heartbeats as events named heartbeat.",
                        "schema": { "type": "string", "enum": ["ndjson", "sse"] }
                    }
                ],
                "responses": with_errors(json!({
                    "200": {
                        "description": "A never-ending stream of LogEvent and Heartbeat documents; a final ErrorBody line if the replica fails.",
                        "content": {
                            "application/x-ndjson": { "schema": { "oneOf": [schema_ref("LogEvent"), schema_ref("Heartbeat")] } },
                            "text/event-stream": { "schema": { "type": "string" } }
                        }
                    }
                }), &["400", "401", "403", "422", "503"])
            }
        },
        "/v1/streams/{stream}/events/{offset}/proof": {
            "get": {
                "summary": "Inclusion proof (c2sp.org/tlog-proof@v1) of one event against the latest certificate; roles writer, reader, auditor.",
                "parameters": [stream_param(), path_param("offset", "Offset of the event in the stream.")],
                "responses": with_errors(ok("ProofAnswer"), &["400", "401", "403", "404", "422", "500", "503"])
            }
        },
        "/v1/consistency": {
            "get": {
                "summary": "RFC 6962 consistency proof between two tree sizes; roles writer, reader, auditor.",
                "parameters": [
                    {
                        "name": "from", "in": "query", "required": true,
                        "description": "The older tree size (at least 1: RFC 6962 defines no proof from the empty tree).",
                        "schema": { "type": "integer", "format": "uint64", "minimum": 1, "maximum": bounds::EDGE_INTEGER_MAX }
                    },
                    query_param("to", "The newer, certified tree size (default: the latest certificate).", false)
                ],
                "responses": with_errors(ok("ConsistencyAnswer"), &["400", "401", "403", "404", "422", "500", "503"])
            }
        },
        "/v1/certificate": {
            "get": {
                "summary": "The latest commit certificate (C2SP signed note); roles writer, reader, auditor.",
                "responses": with_errors(ok("CertificateAnswer"), &["401", "403", "404", "500"])
            }
        },
        "/v1/export/events": {
            "post": {
                "summary": "An export bundle of one stream's events (plaintext, salts, a tlog-proof per event, the certificate, the exporting replica's signature over the manifest), as files; roles writer, reader. Recorded in the access trail.",
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("ExportEventsRequest") } }
                },
                "responses": with_errors(ok("ExportBundle"), &["400", "401", "403", "404", "408", "410", "413", "422", "500", "503"])
            }
        },
        "/v1/export/audit": {
            "get": {
                "summary": "The access trail (P7): every recorded access with its position; roles writer, reader, auditor. Recorded in the access trail.",
                "parameters": [
                    query_param("from_ns", "From this time, unix nanoseconds.", false),
                    query_param("to_ns", "Until this time (excluded), unix nanoseconds.", false),
                    query_param("stream", "Only accesses to this stream.", false)
                ],
                "responses": with_errors(ok("AuditExport"), &["400", "401", "403", "500", "503"])
            }
        },
        "/v1/streams/{stream}/break-glass": {
            "post": {
                "summary": "Break-glass: open time-boxed emergency access to a stream outside the token's scope, with a reason; roles writer, reader. While open, the principal may read the stream's events and proofs (not append, export or see it in global reads); each such access is recorded in the access trail as break-glass (AccessEvent v2) and counted in /metrics. Grants live in the primary's memory: a restart or view change closes them.",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("BreakGlassRequest") } }
                },
                "responses": with_errors(ok("BreakGlassAnswer"), &["400", "401", "403", "408", "413", "503"])
            }
        },
        "/v1/streams/{stream}/shred": {
            "post": {
                "summary": "Crypto-shred a stream (role privacy-officer): the primary checks the rules (a user stream, not shredded, no legal hold, past the retention floor), then commits a shred event in the key-custody stream (2); every replica destroys its copies of the stream's data keys as it applies it. Afterwards reads, exports and appends of the stream answer 410 shredded (shred_position names the event); proofs and verification still pass.",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("CustodyRequest") } }
                },
                "responses": with_errors(ok("CustodyAnswer"), &["400", "401", "403", "408", "409", "410", "413", "422", "503"])
            }
        },
        "/v1/streams/{stream}/hold": {
            "post": {
                "summary": "Set a legal hold on a stream (role privacy-officer), committed in the key-custody stream: no shred while it holds (409 legal_hold).",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("CustodyRequest") } }
                },
                "responses": with_errors(ok("CustodyAnswer"), &["400", "401", "403", "408", "409", "410", "413", "422", "503"])
            }
        },
        "/v1/streams/{stream}/hold/release": {
            "post": {
                "summary": "Lift a stream's legal hold (role privacy-officer, with a reason), committed in the key-custody stream.",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("CustodyRequest") } }
                },
                "responses": with_errors(ok("CustodyAnswer"), &["400", "401", "403", "408", "409", "410", "413", "422", "503"])
            }
        },
        "/v1/streams/{stream}/retention": {
            "post": {
                "summary": "Raise a stream's retention floor (role privacy-officer; retain_until_ms required), committed in the key-custody stream: no shred before it (409 retention_floor); a floor is never lowered.",
                "parameters": [stream_param()],
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("CustodyRequest") } }
                },
                "responses": with_errors(ok("CustodyAnswer"), &["400", "401", "403", "408", "409", "410", "413", "422", "503"])
            }
        },
        "/v1/verifications": {
            "post": {
                "summary": "Record a verification run (scope, result, SHA-256 of the report, checkpoint reached) in the access trail; role auditor.",
                "requestBody": {
                    "required": true,
                    "content": { "application/json": { "schema": schema_ref("VerificationRecord") } }
                },
                "responses": with_errors(json!({
                    "200": { "description": "Recorded (committed in the trail).", "content": { "application/json": { "schema": { "type": "object" } } } }
                }), &["400", "401", "403", "408", "413", "422", "503"])
            }
        },
        "/v1/tlog/checkpoint": {
            "get": {
                "summary": "C2SP tlog-tiles checkpoint: the latest commit certificate as its signed note text (origin, size, base64 root, extension lines, then one signature line per replica); role auditor. Never cached (private, no-store). Recorded in the access trail.",
                "responses": with_errors(json!({
                    "200": {
                        "description": "The signed checkpoint.",
                        "headers": { "Cache-Control": { "schema": { "type": "string", "const": "private, no-store" } } },
                        "content": { "text/plain; charset=utf-8": { "schema": { "type": "string" } } }
                    }
                }), &["401", "403", "404", "500", "503"])
            }
        },
        "/v1/tlog/tile/{path}": {
            "get": {
                "summary": "C2SP tlog-tiles hash tile `<L>/<N>[.p/<W>]` (32-byte hashes concatenated) or entry bundle `entries/<N>[.p/<W>]` (big-endian u16 length, then one 97-byte leaf preimage, per entry) of the tree of the latest certificate or of any smaller tree the tile fits; role auditor. Recorded in the access trail.",
                "parameters": [{
                    "name": "path", "in": "path", "required": true,
                    "description": "The rest of the tile path, slashes included, in the one canonical spelling of c2sp.org/tlog-tiles: level 0..=63 without leading zeros, the index in 3-digit elements with all but the last prefixed x, `.p/<W>` (1..=255) only for a partial tile. Any other spelling (percent-encoding, trailing slash, x000 first element, ...) is 400.",
                    // The canonical spellings (indexes of up to 18 digits, so
                    // every one fits a u64); anything else is 400.
                    "schema": { "type": "string", "pattern": TILE_PATH_PATTERN }
                }],
                "responses": with_errors(json!({
                    "200": {
                        "description": "The tile or bundle. Cache-Control: private, max-age=31536000, immutable (full); private, max-age=60 (partial).",
                        "headers": { "Cache-Control": { "schema": { "type": "string" } } },
                        "content": { "application/octet-stream": { "schema": { "type": "string", "format": "binary" } } }
                    }
                }), &["400", "401", "403", "404", "500", "503"])
            }
        },
        "/v1/health": {
            "get": {
                "summary": "Replica status; no token needed.",
                "security": [],
                "responses": ok("Health")
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus text exposition of replica and API counters; no token needed.",
                "security": [],
                "responses": {
                    "200": { "description": "Prometheus text format 0.0.4.", "content": { "text/plain": { "schema": { "type": "string" } } } }
                }
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document; no token needed.",
                "security": [],
                "responses": {
                    "200": { "description": "OpenAPI 3.1.", "content": { "application/json": { "schema": { "type": "object" } } } }
                }
            }
        }
    })
}

/// The OpenAPI path of a route-table path: axum's catch-all `{*name}` is
/// OpenAPI's `{name}` (whose value the description says may hold slashes).
pub fn openapi_path(route_path: &str) -> String {
    route_path.replace("{*", "{")
}

fn schema_ref(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn ok(schema: &str) -> Value {
    json!({
        "200": {
            "description": "Success.",
            "content": { "application/json": { "schema": schema_ref(schema) } }
        }
    })
}

fn with_errors(mut responses: Value, statuses: &[&str]) -> Value {
    if let Some(map) = responses.as_object_mut() {
        // Every protected route (401) may also answer 429 to failed logins.
        let limited = statuses.contains(&"401").then_some("429");
        for status in statuses.iter().copied().chain(limited) {
            map.insert(
                (*status).to_string(),
                json!({ "$ref": format!("#/components/responses/E{status}") }),
            );
        }
    }
    responses
}

/// An integer the client sends: at most i64::MAX (`crate::bounds`), and in
/// a path or query, one spelling (digits only, no sign, no leading zero).
fn edge_integer() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": 0, "maximum": crate::bounds::EDGE_INTEGER_MAX })
}

fn edge_schema(description: &str) -> Value {
    let mut schema = edge_integer();
    schema["description"] = json!(description);
    schema
}

fn path_param(name: &str, description: &str) -> Value {
    json!({
        "name": name, "in": "path", "required": true, "description": description,
        "schema": edge_integer()
    })
}

fn stream_param() -> Value {
    path_param(
        "stream",
        "The stream id: decimal digits, no sign, no leading zero, at most 2^63-1.",
    )
}

fn query_param(name: &str, description: &str, required: bool) -> Value {
    json!({
        "name": name, "in": "query", "required": required, "description": description,
        "schema": edge_integer()
    })
}

fn min_position_param() -> Value {
    json!({
        "name": "min_position", "in": "query", "required": false,
        "description": "Read-your-writes: serve only once this replica's committed prefix holds at least this many events (after an append: the receipt's first_position plus its event count). A backup waits briefly, then forwards to the primary; beyond the committed log: 422 position_not_reached.",
        "schema": edge_integer()
    })
}

/// One number of a `streams` filter: canonical, at most 18 digits (so
/// every schema-valid filter is within 2^63-1).
const FILTER_NUMBER: &str = "(?:0|[1-9][0-9]{0,17})";

/// The pattern of a `streams` filter (`5001,6000-6999`).
fn streams_pattern() -> String {
    let item = format!("{FILTER_NUMBER}(?:-{FILTER_NUMBER})?");
    let most = crate::server::filter::FILTER_STREAM_ITEMS_MAX - 1;
    format!("^{item}(?:,{item}){{0,{most}}}$")
}

fn streams_param() -> Value {
    json!({
        "name": "streams", "in": "query", "required": false,
        "description": format!("Filter: only events of these streams, a comma-separated list of stream ids (5001) and inclusive ranges (6000-6999), at most {} items, applied on the server after the token's scope and recorded in the access trail. A reversed range is 422 refused.", crate::server::filter::FILTER_STREAM_ITEMS_MAX),
        "schema": { "type": "string", "pattern": streams_pattern() }
    })
}

/// The pattern of a `types` filter: 1 to `FILTER_TYPE_ITEMS_MAX` non-empty
/// items without a comma. A schema-valid item that is no event type (over
/// 256 bytes, a control character) is refused for its meaning: 422.
fn types_pattern() -> String {
    let most = crate::server::filter::FILTER_TYPE_ITEMS_MAX - 1;
    format!("^[^,]+(?:,[^,]+){{0,{most}}}$")
}

fn types_param() -> Value {
    json!({
        "name": "types", "in": "query", "required": false,
        "description": format!("Filter: only events whose envelope type is one of these, a comma-separated list (percent-decoded) of at most {} types, each matched byte for byte; an event without a type never matches. Joins streams= (both must match); applied on the server after the token's scope (it never widens it) and recorded in the access trail. A type no event can carry (over {} bytes, a control character) is 422 refused; a type holding a comma cannot be named here.", crate::server::filter::FILTER_TYPE_ITEMS_MAX, vellum_audit::envelope::TYPE_BYTES_MAX),
        "schema": { "type": "string", "pattern": types_pattern() }
    })
}

fn max_param() -> Value {
    json!({
        "name": "max", "in": "query", "required": false,
        "description": format!("Most events to return (default 100; above {} is refused with 400).", api::READ_EVENTS_MAX),
        "schema": { "type": "integer", "format": "int64", "minimum": 0, "maximum": api::READ_EVENTS_MAX }
    })
}

fn error_responses() -> Value {
    let entries: [(&str, &str); 13] = [
        (
            "400",
            "bad_request: malformed JSON, wrong content type, bad path or query, bad field (the message names it).",
        ),
        (
            "401",
            "unauthorized: missing, unknown or revoked bearer token (with WWW-Authenticate: Bearer); credential_expired: the token's or client certificate's expires= (or the certificate's notAfter) has passed.",
        ),
        (
            "403",
            "forbidden: the token's role may not do this; scope_denied: the stream is outside the token's scope (streams= in the tokens file) and no break-glass grant covers it.",
        ),
        (
            "429",
            "rate_limited: too many failed logins from this address or with this token prefix; retry after the Retry-After header's seconds. A valid token is never refused so.",
        ),
        (
            "404",
            "not_found: unknown stream, event, certificate, route, or a tlog tile no checkpoint's tree has.",
        ),
        (
            "409",
            "wrong_expected_offset: the stream's length is not expected_offset; actual_offset says what it is; nothing was written. Consumer groups: group_exists (a group of that name exists), not_delivered (an ack or nack of a position not out for delivery), not_parked (a replay of a position not parked); nothing was written. Key custody: legal_hold (the stream is under a legal hold), retention_floor (before the stream's retention floor, or a lower floor asked), custody_conflict (hold on a held stream, release of one not held). duplicate_event_id: an event id is already on the stream (original_offset names the stored event) or repeated in the batch, and the batch is not a resend of the op that holds it; nothing was written.",
        ),
        (
            "410",
            "shredded: the stream was crypto-shredded; shred_position is the global position of the shred event (absent while the shred is being committed). Nothing was written or read.",
        ),
        (
            "413",
            "payload_too_large: the body exceeds the limit; envelope_too_large: an event's metadata is above 16 KiB.",
        ),
        (
            "408",
            "request_timeout: the body did not arrive within the server's deadline (10 s).",
        ),
        (
            "422",
            "refused: the replica refused the request (bad stream id, stale request number, bad range); idempotency_key_reused: the idempotency key already named a different request (another stream, expected_offset or events), nothing was written; position_not_reached: a read's min_position is beyond the committed log, nothing was read; invalid_envelope: an event's id is not a UUID in canonical form, or its type or content_type is empty or holds a control character.",
        ),
        (
            "500",
            "storage: storage failed on this replica (never for bad input).",
        ),
        (
            "503",
            "indeterminate (outcome unknown: retry with the same idempotency key) or unavailable (no primary, shutting down, too many subscriptions, a read's trail record not confirmed by the primary: retry).",
        ),
        (
            "405",
            "bad_request: the method is not allowed on this path.",
        ),
    ];
    let mut out = serde_json::Map::new();
    for (status, description) in entries {
        out.insert(
            format!("E{status}"),
            json!({
                "description": description,
                "content": { "application/json": { "schema": schema_ref("ErrorBody") } }
            }),
        );
    }
    Value::Object(out)
}

fn u64_schema(description: &str) -> Value {
    let mut schema = edge_integer();
    schema["description"] = json!(description);
    schema
}

/// Standard base64 with padding, as the server decodes it: canonical, so the
/// unused bits of the last character are zero.
const BASE64_PATTERN: &str =
    "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$";
/// A UUID in canonical text form (`vellum_audit::envelope::parse_uuid`).
const UUID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
/// An envelope type or content type: no control character (Unicode Cc).
const LABEL_PATTERN: &str = "^[^\\u0000-\\u001f\\u007f-\\u009f]+$";

fn schemas() -> Value {
    let limit = api::REQUEST_BODY_BYTES_MAX;
    json!({
        "IdempotencyKey": {
            "type": "object", "required": ["session", "request"], "additionalProperties": false,
            "properties": {
                "session": { "type": "string", "minLength": 32, "maxLength": 32, "pattern": "^0*[1-9a-f][0-9a-f]*$", "description": "Client session id: 32 lowercase hex digits, not all zero and not all f (both reserved)." },
                "request": { "type": "integer", "format": "int64", "minimum": 1, "maximum": crate::bounds::EDGE_INTEGER_MAX, "description": "Request number in the session, increasing from 1." }
            }
        },
        "EventIn": {
            "type": "object", "additionalProperties": false,
            "oneOf": [
                { "required": ["json"], "not": { "required": ["base64"] } },
                { "required": ["base64"], "not": { "required": ["json"] } }
            ],
            "description": format!("Exactly one of json (stored as exactly the bytes of the value as sent: key order, number spelling and whitespace kept) or base64 (standard, padded). At most {} bytes per event (the json value's text, or the decoded base64). Optional envelope fields (id, type, content_type, metadata) are encrypted and committed with the payload and read back byte for byte. A repeat of an id on the stream is never stored twice: a resent batch (every event with an id, exactly the events of one earlier append, in order) is answered with that append's receipt and duplicate true; any other repeat is refused with 409 duplicate_event_id.", api::EVENT_BYTES_MAX),
            "properties": {
                "json": {},
                "base64": { "type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN, "maxLength": api::EVENT_BYTES_MAX.div_ceil(3) * 4 },
                "id": { "type": "string", "pattern": UUID_PATTERN, "description": "The event's id: a UUID in canonical form (lowercase hex, 8-4-4-4-12); other spellings are refused (422 invalid_envelope)." },
                "type": { "type": "string", "minLength": 1, "maxLength": vellum_audit::envelope::TYPE_BYTES_MAX, "pattern": LABEL_PATTERN, "description": "The event's type (for FHIR the resourceType or a domain event name): 1 to 256 bytes of UTF-8, no control characters." },
                "content_type": { "type": "string", "minLength": 1, "maxLength": vellum_audit::envelope::CONTENT_TYPE_BYTES_MAX, "pattern": LABEL_PATTERN, "description": "The payload's media type: 1 to 256 bytes of UTF-8, no control characters." },
                "metadata": { "description": "Any JSON value, at most 16 KiB of text, stored and read back byte for byte as sent (413 envelope_too_large above)." }
            }
        },
        "AppendRequest": {
            "type": "object", "required": ["events"], "additionalProperties": false,
            "description": format!("At most {limit} bytes."),
            "properties": {
                "events": { "type": "array", "minItems": 1, "maxItems": api::APPEND_EVENTS_MAX, "items": schema_ref("EventIn") },
                "expected_offset": edge_schema("Refuse with 409 unless the stream has exactly this many events."),
                "idempotency": schema_ref("IdempotencyKey"),
                "purpose": { "type": "string", "maxLength": super::routes::PURPOSE_BYTES_MAX }
            }
        },
        "AppendReceipt": {
            "type": "object",
            "required": ["stream", "first_offset", "next_offset", "first_position", "op", "duplicate", "certificate", "proofs", "salts"],
            "properties": {
                "stream": u64_schema("The stream."),
                "first_offset": u64_schema("Stream offset of the first event."),
                "next_offset": u64_schema("The stream's new length."),
                "first_position": u64_schema("Global position of the first event."),
                "op": u64_schema("The VSR op carrying the batch."),
                "duplicate": { "type": "boolean", "description": "Nothing new written: a retry answered from the client table, or a resent batch whose event ids the stream holds (the offsets are the original events')." },
                "certificate": { "type": "string", "description": "C2SP signed note with a quorum of signatures." },
                "proofs": { "type": "array", "items": { "type": "string" }, "description": "One tlog-proof@v1 per event." },
                "salts": { "type": "array", "items": { "type": "string", "contentEncoding": "base64" }, "description": "Each event's 32-byte commitment salt (standard base64), in batch order; with the event's bytes it opens its leaf's commitment (`vellum proof check`)." }
            }
        },
        "LogEvent": {
            "type": "object", "required": ["position", "stream", "offset", "base64", "salt"],
            "properties": {
                "position": u64_schema("Global position (Merkle leaf index)."),
                "stream": u64_schema("The stream."),
                "offset": u64_schema("Offset in the stream."),
                "base64": { "type": "string", "contentEncoding": "base64" },
                "envelope": { "type": "boolean", "description": "Present and true when the event was appended in a batch with envelope fields: its leaf commits to the encoded envelope (docs/format.md, \"Event envelope\"), not to the bare payload." },
                "id": { "type": "string", "description": "The event's id, as appended." },
                "type": { "type": "string", "description": "The event's type, as appended." },
                "content_type": { "type": "string", "description": "The payload's media type, as appended." },
                "metadata": { "description": "The metadata, the JSON text exactly as appended." },
                "salt": { "type": "string", "contentEncoding": "base64", "description": "The event's 32-byte commitment salt (standard base64); with the payload (or, with envelope, the encoded envelope) it opens its leaf's commitment (`vellum proof check`)." }
            }
        },
        "StreamEvents": {
            "type": "object", "required": ["stream", "events", "next_offset"],
            "properties": {
                "stream": u64_schema("The stream."),
                "events": { "type": "array", "items": schema_ref("LogEvent") },
                "next_offset": u64_schema("Where the next read starts.")
            }
        },
        "LogEvents": {
            "type": "object", "required": ["events", "next_position"],
            "properties": {
                "events": { "type": "array", "items": schema_ref("LogEvent") },
                "next_position": u64_schema("Where the next read starts.")
            }
        },
        "Heartbeat": {
            "type": "object", "required": ["heartbeat", "next_position"],
            "properties": {
                "heartbeat": { "const": true },
                "next_position": u64_schema("Where the subscription continues.")
            }
        },
        "ProofAnswer": {
            "type": "object", "required": ["proof"],
            "properties": { "proof": { "type": "string", "description": "c2sp.org/tlog-proof@v1 text." } }
        },
        "ConsistencyAnswer": {
            "type": "object", "required": ["from", "to", "hashes", "certificate"],
            "properties": {
                "from": u64_schema("The older tree size."),
                "to": u64_schema("The newer tree size."),
                "hashes": { "type": "array", "items": { "type": "string", "pattern": "^[0-9a-f]{64}$" } },
                "certificate": { "type": "string" }
            }
        },
        "VerificationRecord": {
            "type": "object", "required": ["scope", "passed", "report_sha256"], "additionalProperties": false,
            "properties": {
                "scope": { "type": "string" },
                "passed": { "type": "boolean" },
                "report_sha256": { "type": "string", "pattern": "^[0-9a-fA-F]{64}$" },
                "checkpoint_size": edge_schema("Tree size of the checkpoint reached; refused (422) beyond the replica's log.")
            }
        },
        "ExportEventsRequest": {
            "type": "object", "required": ["stream", "from", "to"], "additionalProperties": false,
            "properties": {
                "stream": edge_schema("The stream."),
                "from": edge_schema("First offset."),
                "to": edge_schema("One past the last offset."),
                "purpose": { "type": "string", "description": "Why (trail and manifest)." }
            }
        },
        "BreakGlassRequest": {
            "type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {
                "reason": { "type": "string", "pattern": "[^ \t\n\r]", "description": "Why emergency access is needed: not blank (something besides spaces, tabs and line breaks), at most 1024 bytes of UTF-8 (400 beyond); clipped to 512 bytes in the trail." },
                "duration_s": { "type": "integer", "minimum": 1, "maximum": api::BREAK_GLASS_SECONDS_MAX, "description": "How long the grant lasts, in seconds (default 3600, at most 14400)." }
            }
        },
        "BreakGlassAnswer": {
            "type": "object", "required": ["stream", "principal", "opened_ns", "expires_ns"],
            "properties": {
                "stream": u64_schema("The stream now open to the principal."),
                "principal": { "type": "string" },
                "opened_ns": u64_schema("When the grant opened, unix nanoseconds."),
                "expires_ns": u64_schema("When it expires, unix nanoseconds; afterwards 403 scope_denied.")
            }
        },
        "CustodyRequest": {
            "type": "object", "required": ["reason"], "additionalProperties": false,
            "properties": {
                "reason": { "type": "string", "pattern": "[^ \t\n\r]", "description": "Why: not blank, at most 1024 bytes of UTF-8 (400 beyond); committed whole in the key-custody stream, so it must hold no PHI." },
                "retain_until_ms": u64_schema("For retention only (required there, 400 elsewhere): keep the stream's data until this time, unix milliseconds.")
            }
        },
        "CustodyAnswer": {
            "type": "object", "required": ["stream", "action", "position", "op", "keys_destroyed"],
            "properties": {
                "stream": u64_schema("The stream."),
                "action": { "type": "string", "enum": ["shred", "hold", "release", "retain"] },
                "position": u64_schema("Global log position of the committed custody event."),
                "op": u64_schema("The op holding it."),
                "keys_destroyed": u64_schema("For a shred: data keys the answering replica destroyed.")
            }
        },
        "ExportBundle": {
            "type": "object", "required": ["files"],
            "properties": {
                "files": { "type": "array", "items": {
                    "type": "object", "required": ["name", "base64"],
                    "properties": { "name": { "type": "string" }, "base64": { "type": "string", "contentEncoding": "base64" } }
                } }
            }
        },
        "AuditExport": {
            "type": "object", "required": ["source", "records"],
            "properties": {
                "source": { "type": "string", "description": "The answering replica's key name." },
                "records": { "type": "array", "items": {
                    "type": "object", "required": ["position", "event"],
                    "properties": {
                        "position": u64_schema("Global position of the trail event."),
                        "event": { "type": "object", "description": "The access event: v, time_ns, principal, role, action, stream, from, to, purpose, outcome, remote." }
                    }
                } }
            }
        },
        "CertificateAnswer": {
            "type": "object", "required": ["size", "certificate"],
            "properties": { "size": u64_schema("Tree size covered."), "certificate": { "type": "string" } }
        },
        "Health": {
            "type": "object",
            "required": ["status", "replica", "replica_count", "view", "primary", "is_primary", "commit", "op", "events"],
            "properties": {
                "status": { "type": "string", "enum": ["normal", "view_change", "recovering"] },
                "replica": { "type": "integer", "minimum": 0, "maximum": 255 },
                "replica_count": { "type": "integer", "minimum": 0, "maximum": 255 },
                "view": u64_schema("The replica's view."),
                "primary": { "type": "integer", "minimum": 0, "maximum": 255 },
                "is_primary": { "type": "boolean" },
                "commit": u64_schema("Commit number."),
                "op": u64_schema("Highest op."),
                "events": u64_schema("Committed events.")
            }
        },
        "ErrorBody": {
            "type": "object", "required": ["error"],
            "properties": {
                "error": {
                    "type": "object", "required": ["code", "message"],
                    "properties": {
                        // Every code the server can send, from the one list.
                        "code": { "type": "string", "enum": api::ErrorCode::ALL
                            .iter()
                            .map(|code| code.as_str())
                            .collect::<Vec<_>>() },
                        "message": { "type": "string" },
                        "actual_offset": u64_schema("For wrong_expected_offset: the stream's length."),
                        "shred_position": u64_schema("For shredded: the global log position of the shred event."),
                        "original_offset": u64_schema("For duplicate_event_id: the stream offset of the stored event with that id.")
                    }
                }
            }
        }
    })
}
