//! The consumer-group routes (`/v1/groups`) of `/openapi.json`: paths and
//! schemas, merged into the document by `super::document`. A file of its
//! own so the feature's contract sits in one place.

use serde_json::{Value, json};

use super::{edge_schema, ok, schema_ref, u64_schema, with_errors};
use crate::server::groups::{
    GROUP_CONSUMER_BYTES_MAX, GROUP_PARKED_LIST_MAX, GROUP_PULL_EVENTS_MAX, GROUP_PULL_WAIT_MS_MAX,
};
use vellum_compliance::groups::{
    GROUP_LEASE_MS_MAX, GROUP_LEASE_MS_MIN, GROUP_NAME_BYTES_MAX, GROUP_POSITIONS_MAX,
    GROUP_REASON_BYTES_MAX, GROUP_RETRY_MAX,
};

/// The `{group}` path parameter.
fn group_param() -> Value {
    json!({
        "name": "group", "in": "path", "required": true,
        "description": "The group's name.",
        "schema": name_schema()
    })
}

fn name_schema() -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": GROUP_NAME_BYTES_MAX,
        "pattern": "^[A-Za-z0-9_-][A-Za-z0-9._-]*$"
    })
}

fn body(schema: &str) -> Value {
    json!({
        "required": true,
        "content": { "application/json": { "schema": schema_ref(schema) } }
    })
}

/// Every `/v1/groups` path.
pub(super) fn paths() -> Value {
    let common = ["400", "401", "403", "404", "408", "413", "500", "503"];
    let settle = [
        "400", "401", "403", "404", "408", "409", "413", "500", "503",
    ];
    let mut created = ok("GroupInfo");
    if let Some(map) = created.as_object_mut()
        && let Some(success) = map.remove("200")
    {
        map.insert("201".to_string(), success);
    }
    let mut parked_max =
        super::query_param("max", "Most entries (default and at most 1000).", false);
    parked_max["schema"]["minimum"] = json!(1);
    parked_max["schema"]["maximum"] = json!(GROUP_PARKED_LIST_MAX);
    json!({
        "/v1/groups": {
            "post": {
                "summary": "Create a consumer group (persistent subscription; role writer): a named group whose position the cluster keeps in the consumer-group system stream (3). It delivers the user-stream events of its filter from its start, to competing consumers, at least once. The filter must be inside the token's scope (every user stream: streams=*).",
                "requestBody": body("CreateGroupRequest"),
                "responses": with_errors(created, &["400", "401", "403", "408", "409", "413", "422", "500", "503"])
            }
        },
        "/v1/groups/{group}": {
            "get": {
                "summary": "A consumer group's state (roles writer, reader): its configuration, committed checkpoint, acked and parked counts, and the events in flight.",
                "parameters": [group_param()],
                "responses": with_errors(ok("GroupInfo"), &common)
            },
            "delete": {
                "summary": "Delete a consumer group (role writer), committed in the consumer-group stream; its name may be created again, afresh.",
                "parameters": [group_param()],
                "responses": with_errors(ok("GroupDeleted"), &common)
            }
        },
        "/v1/groups/{group}/pull": {
            "post": {
                "summary": "Lease up to max events of the group to a consumer (roles writer, reader), waiting up to wait_ms for the first (long-poll). A leased event goes to no other consumer until its lease expires; the primary then takes it back within about 250 ms, pulled or not: it is delivered again (attempt + 1), or parked after its delivery number retry_max + 1. Each pull is recorded in the access trail as a subscribe with the streams and positions it delivered.",
                "parameters": [group_param()],
                "requestBody": body("PullRequest"),
                "responses": with_errors(ok("GroupDelivery"), &common)
            }
        },
        "/v1/groups/{group}/ack": {
            "post": {
                "summary": "Acknowledge delivered events (roles writer, reader): one committed event in the consumer-group stream per call, however many positions it names; the group's checkpoint moves past every settled event. A position not out for delivery answers 409 not_delivered and nothing is written.",
                "parameters": [group_param()],
                "requestBody": body("AckRequest"),
                "responses": with_errors(ok("GroupAcked"), &settle)
            }
        },
        "/v1/groups/{group}/nack": {
            "post": {
                "summary": "Negatively acknowledge delivered events (roles writer, reader): retry (delivered again; parked when it was delivery number retry_max + 1) or park now. A position not out for delivery answers 409 not_delivered and nothing is written.",
                "parameters": [group_param()],
                "requestBody": body("NackRequest"),
                "responses": with_errors(ok("GroupNacked"), &settle)
            }
        },
        "/v1/groups/{group}/parked": {
            "get": {
                "summary": "The group's parked events in position order (roles writer, reader).",
                "parameters": [
                    group_param(),
                    super::query_param("from", "First position listed (default 0).", false),
                    parked_max
                ],
                "responses": with_errors(ok("GroupParkedList"), &common)
            }
        },
        "/v1/groups/{group}/replay": {
            "post": {
                "summary": "Deliver parked events again (role writer): the listed positions, or every parked event (up to 1000 per call). A position not parked answers 409 not_parked and nothing is written.",
                "parameters": [group_param()],
                "requestBody": body("ReplayRequest"),
                "responses": with_errors(ok("GroupReplayed"), &settle)
            }
        }
    })
}

fn positions_schema() -> Value {
    json!({
        "type": "array", "minItems": 1, "maxItems": GROUP_POSITIONS_MAX,
        "items": edge_schema("A global position delivered by this group.")
    })
}

/// The schemas of the group routes.
pub(super) fn schemas() -> Value {
    json!({
        "CreateGroupRequest": {
            "type": "object", "required": ["name"], "additionalProperties": false,
            "properties": {
                "name": name_schema(),
                "streams": { "type": "string", "pattern": super::streams_pattern(), "description": "Stream filter as in GET /v1/log?streams= (5001,6000-6999); absent: every user stream. A reversed range is 422 refused." },
                "types": { "type": "array", "minItems": 1, "maxItems": crate::server::filter::FILTER_TYPE_ITEMS_MAX, "items": { "type": "string", "minLength": 1 }, "description": "Event-type filter as in GET /v1/log?types=, as a list (a type may hold a comma here): only events whose envelope type is one of these, byte for byte; an event without a type never matches; absent: every event. Kept in the group's create event (version 2). A type no event can carry (over 256 bytes, a control character) is 422 refused." },
                "start": { "type": "string", "pattern": "^(?:beginning|end|0|[1-9][0-9]{0,17})$", "description": "beginning (default), end (the committed end of the log: new events only), or a global position in decimal (at most 2^63-1)." },
                "retry_max": { "type": "integer", "minimum": 0, "maximum": GROUP_RETRY_MAX, "description": "Failed deliveries before an event is parked (default 5)." },
                "lease_ms": { "type": "integer", "minimum": GROUP_LEASE_MS_MIN, "maximum": GROUP_LEASE_MS_MAX, "description": "How long a consumer holds a delivered event (default 30000)." }
            }
        },
        "GroupInfo": {
            "type": "object",
            "required": ["name", "start", "retry_max", "lease_ms", "created_at", "checkpoint", "acked", "parked", "in_flight"],
            "properties": {
                "name": { "type": "string" },
                "streams": { "type": ["string", "null"], "description": "The filter, canonical; null: every user stream." },
                "types": { "type": "array", "items": { "type": "string" }, "description": "The event-type filter, sorted and distinct; absent: every event." },
                "start": u64_schema("The position it started at."),
                "retry_max": { "type": "integer", "minimum": 0 },
                "lease_ms": u64_schema("Lease of a delivered event, ms."),
                "created_at": u64_schema("Global position of the create event."),
                "checkpoint": u64_schema("Every matching event below it is acked or parked (committed)."),
                "acked": u64_schema("Events acked in total (committed)."),
                "parked": u64_schema("Events parked now (committed)."),
                "in_flight": u64_schema("Events leased now (the primary's memory).")
            }
        },
        "GroupDeleted": {
            "type": "object", "required": ["name", "position"],
            "properties": { "name": { "type": "string" }, "position": u64_schema("Global position of the delete event.") }
        },
        "PullRequest": {
            "type": "object", "additionalProperties": false,
            "properties": {
                "consumer": { "type": "string", "minLength": 1, "description": format!("The consumer's name, 1 to {GROUP_CONSUMER_BYTES_MAX} bytes of UTF-8 (default: the principal's).") },
                "max": { "type": "integer", "minimum": 1, "maximum": GROUP_PULL_EVENTS_MAX, "description": "Most events (default 100)." },
                "wait_ms": { "type": "integer", "minimum": 0, "maximum": GROUP_PULL_WAIT_MS_MAX, "description": "Longest wait for a first event (default 0)." }
            }
        },
        "GroupDelivery": {
            "type": "object", "required": ["group", "consumer", "events", "lease_ms"],
            "properties": {
                "group": { "type": "string" },
                "consumer": { "type": "string" },
                "events": { "type": "array", "items": {
                    "type": "object", "required": ["position", "stream", "offset", "base64", "salt", "attempt"],
                    "properties": {
                        "position": u64_schema("Global position: what ack and nack name."),
                        "stream": u64_schema("The stream."),
                        "offset": u64_schema("Offset in the stream."),
                        "base64": { "type": "string", "contentEncoding": "base64" },
                        "salt": { "type": "string", "contentEncoding": "base64" },
                        "attempt": { "type": "integer", "minimum": 1, "description": "Which delivery of the event this is." }
                    }
                } },
                "lease_ms": u64_schema("How long the lease lasts from the answer, ms.")
            }
        },
        "AckRequest": {
            "type": "object", "required": ["positions"], "additionalProperties": false,
            "properties": { "positions": positions_schema() }
        },
        "GroupAcked": {
            "type": "object", "required": ["acked", "already", "checkpoint"],
            "properties": {
                "acked": u64_schema("Positions this call acked."),
                "already": u64_schema("Positions acked or parked before."),
                "checkpoint": u64_schema("The committed checkpoint after the call."),
                "position": { "type": ["integer", "null"], "minimum": 0, "description": "Global position of the ack event; null when nothing new was acked." }
            }
        },
        "NackRequest": {
            "type": "object", "required": ["positions"], "additionalProperties": false,
            "properties": {
                "positions": positions_schema(),
                "action": { "type": "string", "enum": ["retry", "park"], "description": "retry (default) or park now." },
                "reason": { "type": "string", "description": format!("Why, at most {GROUP_REASON_BYTES_MAX} bytes of UTF-8 (kept with a parked event; no PHI: it is committed in the log).") }
            }
        },
        "GroupNacked": {
            "type": "object", "required": ["retried", "parked", "checkpoint"],
            "properties": {
                "retried": u64_schema("Positions to be delivered again."),
                "parked": u64_schema("Positions parked by this call."),
                "checkpoint": u64_schema("The committed checkpoint after the call.")
            }
        },
        "GroupParkedList": {
            "type": "object", "required": ["group", "parked"],
            "properties": {
                "group": { "type": "string" },
                "parked": { "type": "array", "maxItems": GROUP_PARKED_LIST_MAX, "items": {
                    "type": "object", "required": ["position", "parked_at", "reason"],
                    "properties": {
                        "position": u64_schema("The parked event's position."),
                        "parked_at": u64_schema("Global position of the park event."),
                        "reason": { "type": "string" }
                    }
                } },
                "next_position": { "type": ["integer", "null"], "minimum": 0, "description": "Where the next listing starts; null: no more." }
            }
        },
        "ReplayRequest": {
            "type": "object", "additionalProperties": false,
            "properties": { "positions": positions_schema() }
        },
        "GroupReplayed": {
            "type": "object", "required": ["replayed"],
            "properties": {
                "replayed": u64_schema("Positions to be delivered again."),
                "position": { "type": ["integer", "null"], "minimum": 0, "description": "Global position of the replay event; null when nothing was parked." }
            }
        }
    })
}
