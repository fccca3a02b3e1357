//! Persistent subscriptions (consumer groups) as the client API and the
//! node see them: the calls the server hands the node ([`GroupCall`]),
//! the answers ([`GroupAnswer`]), the typed errors ([`GroupError`]), and
//! the JSON bodies of the `/v1/groups` routes.
//!
//! Why a file of its own: the group routes are one feature with one call
//! into the node ([`crate::server::node::Node::group`]), so they add one
//! trait method and keep their types together here.

use serde::{Deserialize, Serialize};

use crate::api::LogEvent;
use crate::server::node::{InternalFault, Unavailable};
use vellum_compliance::groups::GroupConfig;

/// Events one pull delivers at most.
pub const GROUP_PULL_EVENTS_MAX: u64 = 500;
/// Events one pull delivers when the caller does not say.
pub const GROUP_PULL_EVENTS_DEFAULT: u64 = 100;
/// The longest a pull waits for an event, in milliseconds (well below the
/// forwarder's timeouts, so a pull through a backup is not cut).
pub const GROUP_PULL_WAIT_MS_MAX: u64 = 5_000;
/// Longest consumer name, in bytes.
pub const GROUP_CONSUMER_BYTES_MAX: usize = 128;
/// Parked events one listing returns at most.
pub const GROUP_PARKED_LIST_MAX: u64 = 1000;
/// The retry limit of a group created without one.
pub const GROUP_RETRY_DEFAULT: u32 = 5;
/// The lease of a group created without one, in milliseconds.
pub const GROUP_LEASE_MS_DEFAULT: u64 = 30_000;

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupStart {
    /// Position 0: every event of the log.
    Beginning,
    /// The committed end of the log when the group is created: new events only.
    End,
    /// This global position.
    Position(u64),
}

/// A consumer-group call as the server hands it to the node (names and
/// bounds already checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupCall {
    /// Create a group.
    Create {
        /// Its name.
        name: String,
        /// Stream ranges (empty: every user stream).
        streams: Vec<(u64, u64)>,
        /// Event types, sorted and distinct (empty: every event).
        types: Vec<String>,
        /// Where it starts.
        start: GroupStart,
        /// Its retry limit.
        retry_max: u32,
        /// Its lease, in milliseconds.
        lease_ms: u64,
        /// Who asked.
        principal: String,
    },
    /// A group's state.
    Get {
        /// The group.
        name: String,
    },
    /// Delete a group.
    Delete {
        /// The group.
        name: String,
        /// Who asked.
        principal: String,
    },
    /// Lease up to `max` events to `consumer`, waiting up to `wait_ms` for one.
    Pull {
        /// The group.
        name: String,
        /// The consumer the events are leased to.
        consumer: String,
        /// Most events.
        max: u64,
        /// Longest wait for a first event, in milliseconds.
        wait_ms: u64,
    },
    /// These positions were processed.
    Ack {
        /// The group.
        name: String,
        /// Positions, each delivered to some consumer.
        positions: Vec<u64>,
        /// Who asked.
        principal: String,
    },
    /// These positions failed: deliver again (up to the retry limit) or park now.
    Nack {
        /// The group.
        name: String,
        /// Positions, each delivered to some consumer.
        positions: Vec<u64>,
        /// Park now instead of retrying.
        park: bool,
        /// Why (kept when parked).
        reason: String,
        /// Who asked.
        principal: String,
    },
    /// The parked events from position `from`, at most `max`.
    Parked {
        /// The group.
        name: String,
        /// First position.
        from: u64,
        /// Most entries.
        max: u64,
    },
    /// Deliver parked events again (None: every parked event, up to the
    /// positions one event holds).
    Replay {
        /// The group.
        name: String,
        /// Positions to replay.
        positions: Option<Vec<u64>>,
        /// Who asked.
        principal: String,
    },
    /// Counters of every group, for `/metrics`.
    Metrics,
}

/// What a group call answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupAnswer {
    /// `Create` and `Get`.
    Info(GroupInfo),
    /// `Delete`: the global position of the delete event.
    Deleted(GroupDeleted),
    /// `Pull`.
    Delivered(GroupDelivery),
    /// `Ack`.
    Acked(GroupAcked),
    /// `Nack`.
    Nacked(GroupNacked),
    /// `Parked`.
    Parked(GroupParkedList),
    /// `Replay`.
    Replayed(GroupReplayed),
    /// `Metrics`.
    Metrics(Vec<GroupMetrics>),
}

/// Why a group call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// No group of that name: 404 `not_found`.
    #[error("no consumer group named {group:?}")]
    NotFound {
        /// The name.
        group: String,
    },
    /// A group of that name exists: 409 `group_exists`.
    #[error("consumer group {group:?} exists already (delete it first to start afresh)")]
    Exists {
        /// The name.
        group: String,
    },
    /// The cluster keeps its maximum of groups: 422 `refused`.
    #[error("the cluster keeps {max} consumer groups already; delete one first")]
    TooManyGroups {
        /// The bound.
        max: usize,
    },
    /// An ack or nack of a position that is not out for delivery in this
    /// group (never delivered, beyond the log, or not matching the group);
    /// nothing was written: 409 `not_delivered`.
    #[error(
        "position {position} is not delivered and unacknowledged in consumer group {group:?}; nothing was written"
    )]
    NotDelivered {
        /// The group.
        group: String,
        /// The first such position in the call.
        position: u64,
    },
    /// A replay of a position that is not parked; nothing was written:
    /// 409 `not_parked`.
    #[error("position {position} is not parked in consumer group {group:?}; nothing was written")]
    NotParked {
        /// The group.
        group: String,
        /// The first such position in the call.
        position: u64,
    },
    /// A new primary has not committed the ops it inherited yet: 503
    /// `unavailable` (retry shortly).
    #[error(
        "this primary has committed op {commit}; it serves consumer groups once it committed op {needed}, the last it inherited; retry"
    )]
    CatchingUp {
        /// Its commit number.
        commit: u64,
        /// The op it must commit first.
        needed: u64,
    },
    /// Not served now: 503 `unavailable`.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The outcome is unknown: 503 `indeterminate`.
    #[error("outcome unknown: {reason}")]
    Indeterminate {
        /// What made it unknown (for humans only).
        reason: String,
    },
    /// A fault inside the replica: 500 `storage`.
    #[error(transparent)]
    Internal(#[from] InternalFault),
}

/// `POST /v1/groups` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateGroupRequest {
    /// The group's name: 1 to 64 bytes of `A-Z a-z 0-9 - _ .`, not starting with `.`.
    pub name: String,
    /// Stream filter as in `GET /v1/log?streams=` (`5001,6000-6999`);
    /// absent: every user stream.
    #[serde(default, deserialize_with = "crate::api::present")]
    pub streams: Option<String>,
    /// Event types as in `GET /v1/log?types=`, as a JSON list (so a type
    /// may hold a comma): 1 to 32 types, each 1 to 256 bytes without
    /// control characters, matched byte for byte; an event without a type
    /// never matches. Absent: every event, typed or not.
    #[serde(default, deserialize_with = "crate::api::present")]
    pub types: Option<Vec<String>>,
    /// `"beginning"` (default), `"end"`, or a global position as a decimal string.
    #[serde(default, deserialize_with = "crate::api::present")]
    pub start: Option<String>,
    /// Failed deliveries (nack or lease expiry) before an event is parked
    /// (default 5, at most 100).
    #[serde(default, deserialize_with = "crate::api::present_whole_u32")]
    pub retry_max: Option<u32>,
    /// Lease of a delivered event in milliseconds (default 30000, 100 to 600000).
    #[serde(default, deserialize_with = "crate::api::present_whole")]
    pub lease_ms: Option<u64>,
}

/// A group's state (`POST /v1/groups`, `GET /v1/groups/{group}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Its name.
    pub name: String,
    /// Its filter, canonical (`5001,6000-6999`); None: every user stream.
    pub streams: Option<String>,
    /// Its event types, sorted and distinct; absent: every event (groups
    /// created without types, and every group created before types existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<String>>,
    /// Where it started.
    pub start: u64,
    /// Its retry limit.
    pub retry_max: u32,
    /// Its lease, in milliseconds.
    pub lease_ms: u64,
    /// Global position of its create event.
    pub created_at: u64,
    /// Every matching event below this position is acked or parked
    /// (committed: a new primary continues from here).
    pub checkpoint: u64,
    /// Events acked in total (committed).
    pub acked: u64,
    /// Events parked now (committed).
    pub parked: u64,
    /// Events leased to a consumer now (the primary's memory).
    pub in_flight: u64,
}

/// `DELETE /v1/groups/{group}` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDeleted {
    /// The group.
    pub name: String,
    /// Global position of the delete event.
    pub position: u64,
}

/// `POST /v1/groups/{group}/pull` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullRequest {
    /// The consumer's name (default: the principal's).
    #[serde(default, deserialize_with = "crate::api::present")]
    pub consumer: Option<String>,
    /// Most events (default 100, at most 500).
    #[serde(default, deserialize_with = "crate::api::present_whole")]
    pub max: Option<u64>,
    /// Longest wait for a first event in milliseconds (default 0, at most 5000).
    #[serde(default, deserialize_with = "crate::api::present_whole")]
    pub wait_ms: Option<u64>,
}

/// One delivered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredEvent {
    /// The event, as `GET /v1/log` returns it.
    #[serde(flatten)]
    pub event: LogEvent,
    /// Which delivery of it this is (1: the first).
    pub attempt: u32,
}

/// `POST /v1/groups/{group}/pull` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDelivery {
    /// The group.
    pub group: String,
    /// The consumer they are leased to.
    pub consumer: String,
    /// The events, in position order (empty: none within the wait).
    pub events: Vec<DeliveredEvent>,
    /// How long the lease lasts, in milliseconds from the answer.
    pub lease_ms: u64,
}

/// `POST /v1/groups/{group}/ack` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    /// Positions processed (1 to 1000).
    #[serde(deserialize_with = "whole_list")]
    pub positions: Vec<u64>,
}

/// `POST /v1/groups/{group}/ack` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupAcked {
    /// Positions this call acked.
    pub acked: u64,
    /// Positions of the call that were acked (or parked) already.
    pub already: u64,
    /// The group's committed checkpoint after the call.
    pub checkpoint: u64,
    /// Global position of the ack event (None: nothing new to write).
    pub position: Option<u64>,
}

/// `POST /v1/groups/{group}/nack` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NackRequest {
    /// Positions that failed (1 to 1000).
    #[serde(deserialize_with = "whole_list")]
    pub positions: Vec<u64>,
    /// `"retry"` (default: deliver again, parked past the retry limit) or `"park"`.
    #[serde(default, deserialize_with = "crate::api::present")]
    pub action: Option<String>,
    /// Why (kept with a parked event; at most 512 bytes).
    #[serde(default, deserialize_with = "crate::api::present")]
    pub reason: Option<String>,
}

/// `POST /v1/groups/{group}/nack` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupNacked {
    /// Positions that will be delivered again.
    pub retried: u64,
    /// Positions parked by this call.
    pub parked: u64,
    /// The group's committed checkpoint after the call.
    pub checkpoint: u64,
}

/// One parked event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParkedEvent {
    /// Its global position.
    pub position: u64,
    /// Global position of the park event.
    pub parked_at: u64,
    /// Why it was parked.
    pub reason: String,
}

/// `GET /v1/groups/{group}/parked` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupParkedList {
    /// The group.
    pub group: String,
    /// Parked events in position order.
    pub parked: Vec<ParkedEvent>,
    /// Where the next listing starts (None: no more).
    pub next_position: Option<u64>,
}

/// `POST /v1/groups/{group}/replay` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Parked positions to deliver again (absent: every parked event, up
    /// to 1000 per call).
    #[serde(default, deserialize_with = "present_whole_list")]
    pub positions: Option<Vec<u64>>,
}

/// `POST /v1/groups/{group}/replay` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReplayed {
    /// Positions that will be delivered again.
    pub replayed: u64,
    /// Global position of the replay event (None: nothing was parked).
    pub position: Option<u64>,
}

/// What `/metrics` shows of one group on this replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupMetrics {
    /// The group.
    pub name: String,
    /// Deliveries by this replica while primary (since start).
    pub delivered: u64,
    /// Acked events (committed: the same on every caught-up replica).
    pub acked: u64,
    /// Nacks and expired leases seen by this replica while primary.
    pub nacked: u64,
    /// Gauge: parked events (committed).
    pub parked: u64,
    /// Gauge: events leased now (the primary's memory; 0 at a backup).
    pub in_flight: u64,
}

/// A list of positions: each a JSON integer, or a number whose value is
/// a whole number (`211.0`), as `crate::api::whole` reads one.
fn whole_list<'de, D>(deserializer: D) -> Result<Vec<u64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    #[derive(Deserialize)]
    struct Whole(#[serde(deserialize_with = "crate::api::whole")] u64);
    let list = Vec::<Whole>::deserialize(deserializer)?;
    Ok(list.into_iter().map(|w| w.0).collect())
}

/// [`whole_list`] for an optional member that, when present, must not be null.
fn present_whole_list<'de, D>(deserializer: D) -> Result<Option<Vec<u64>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    whole_list(deserializer).map(Some)
}

/// The canonical text of a stream filter (`5001,6000-6999`); None when empty.
pub fn streams_text(ranges: &[(u64, u64)]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    let items: Vec<String> = ranges
        .iter()
        .map(|(first, last)| match first == last {
            true => first.to_string(),
            false => format!("{first}-{last}"),
        })
        .collect();
    Some(items.join(","))
}

/// The [`GroupInfo`] of a group's committed state and in-flight count.
pub fn group_info(
    name: &str,
    state: &vellum_compliance::groups::GroupState,
    in_flight: u64,
) -> GroupInfo {
    let GroupConfig {
        streams,
        types,
        start,
        retry_max,
        lease_ms,
    } = &state.config;
    GroupInfo {
        name: name.to_string(),
        streams: streams_text(streams),
        types: (!types.is_empty()).then(|| types.clone()),
        start: *start,
        retry_max: *retry_max,
        lease_ms: *lease_ms,
        created_at: state.created_at,
        checkpoint: state.checkpoint,
        acked: state.acked_total,
        parked: state.parked.len() as u64,
        in_flight,
    }
}
