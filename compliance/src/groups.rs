//! Persistent subscriptions (consumer groups): the events of system stream
//! [`CONSUMER_GROUPS_STREAM`] that create and delete a group, advance its
//! position (acks), park events and replay them, and the state every
//! replica folds from them.
//!
//! Why a system stream: a group's position must survive the loss of any
//! minority, including the primary that served it, so it is kept where
//! everything else durable is kept: in the log, through consensus, hash
//! chained and certified. The primary decides (which positions are acked,
//! where the checkpoint moves); every replica folds the committed events
//! ([`GroupsState::apply`]) without deciding again, so a new primary
//! continues from the same acked position.
//!
//! What is *not* here: which events are leased to which consumer, lease
//! deadlines and retry counts. That is the primary's memory only
//! (`vellum::replica::groups`); after a failover the un-acked events are
//! delivered again (at-least-once).
//!
//! One ack call of a consumer is one event (covering up to
//! [`GROUP_POSITIONS_MAX`] positions), so the log grows with ack *calls*,
//! not with acked events: a consumer that acks in batches writes little.
//!
//! The payload is the struct as compact JSON (field order fixed by the
//! struct). It holds no PHI: group names, positions, the principal, and a
//! reason clipped to [`GROUP_REASON_BYTES_MAX`].

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The system stream of consumer-group events (ids below 16 are reserved).
pub const CONSUMER_GROUPS_STREAM: u64 = vellum_audit::record::CONSUMER_GROUPS_STREAM;
/// Version of the group event format this code writes for a group event
/// without event types (version 1, unchanged since groups exist).
pub const GROUP_EVENT_VERSION: u32 = 1;
/// Version of a `create` event whose configuration lists event types
/// ([`GroupConfig::types`]): readers of version 1 refuse its unknown
/// field, so such an event says so in `v`. Readers accept both.
pub const GROUP_EVENT_VERSION_TYPES: u32 = 2;
/// Most event types one group's filter lists.
pub const GROUP_FILTER_TYPES_MAX: usize = 32;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 64;
/// Most groups a cluster keeps at once.
pub const GROUPS_MAX: usize = 256;
/// Most positions one ack, nack or replay event names.
pub const GROUP_POSITIONS_MAX: usize = 1000;
/// Longest reason kept in a park event, in bytes.
pub const GROUP_REASON_BYTES_MAX: usize = 512;
/// Longest principal name kept in an event, in bytes.
pub const GROUP_PRINCIPAL_BYTES_MAX: usize = 128;
/// Most stream ranges one group's filter lists.
pub const GROUP_FILTER_RANGES_MAX: usize = 64;
/// The highest retry limit a group may set.
pub const GROUP_RETRY_MAX: u32 = 100;
/// Shortest and longest lease a group may set, in milliseconds.
pub const GROUP_LEASE_MS_MIN: u64 = 100;
/// See [`GROUP_LEASE_MS_MIN`].
pub const GROUP_LEASE_MS_MAX: u64 = 600_000;

/// Whether `name` is a valid group name: 1 to [`GROUP_NAME_BYTES_MAX`]
/// bytes of ASCII letters, digits, `-`, `_` and `.`, not starting with
/// `.` (so it is one path segment, never `.` or `..`).
pub fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= GROUP_NAME_BYTES_MAX
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What a group event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupAction {
    /// A group is created with its filter, start, retry limit and lease.
    Create,
    /// A group is deleted (its name may be created again, afresh).
    Delete,
    /// Positions were processed: they are done; the checkpoint may move.
    Ack,
    /// Positions are parked: not delivered again until replayed.
    Park,
    /// Parked positions are delivered again.
    Replay,
}

/// One group event, as committed in stream 3.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupEvent {
    /// Format version ([`GROUP_EVENT_VERSION`]).
    pub v: u32,
    /// When the primary decided, in unix nanoseconds (its clock).
    pub time_ns: u64,
    /// What.
    pub action: GroupAction,
    /// The group.
    pub group: String,
    /// Who asked (the authenticated principal; `vellum` for the primary's
    /// own decisions, such as parking after expired leases).
    pub principal: String,
    /// For `create`: the group's configuration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<GroupConfig>,
    /// For `ack`, `park`, `replay`: the positions, ascending, distinct.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub positions: Vec<u64>,
    /// For `ack` and `park`: the group's checkpoint after this event
    /// (every matching event below it is acked or parked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<u64>,
    /// For `park`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl GroupEvent {
    /// The event's payload: compact JSON in field order.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a group event always serializes")
    }

    /// Parses a payload written by [`GroupEvent::to_payload`].
    pub fn from_payload(bytes: &[u8]) -> Result<GroupEvent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A group's configuration, fixed at creation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    /// Inclusive stream ranges the group follows; empty: every user stream.
    #[serde(default)]
    pub streams: Vec<(u64, u64)>,
    /// Event types (the envelope's `type`, byte for byte) the group
    /// follows; empty: every event, typed or not. An event without a type
    /// never matches a non-empty list. Absent in version 1 events.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub types: Vec<String>,
    /// The global position the group starts at.
    pub start: u64,
    /// Deliveries of one event that may fail (nack or lease expiry) before
    /// it is parked: an event is delivered at most `retry_max + 1` times.
    pub retry_max: u32,
    /// How long a consumer holds a delivered event before it goes to
    /// another consumer, in milliseconds.
    pub lease_ms: u64,
}

/// User streams start here: groups deliver user streams only.
pub const USER_STREAM_MIN: u64 = 16;

impl GroupConfig {
    /// The event version a `create` event with this configuration has.
    pub fn event_version(&self) -> u32 {
        match self.types.is_empty() {
            true => GROUP_EVENT_VERSION,
            false => GROUP_EVENT_VERSION_TYPES,
        }
    }

    /// Whether the group delivers an event of type `event_type` (None:
    /// an event without a type).
    pub fn matches_type(&self, event_type: Option<&str>) -> bool {
        self.types.is_empty() || event_type.is_some_and(|t| self.types.iter().any(|x| x == t))
    }

    /// Whether the group delivers events of `stream`.
    pub fn matches(&self, stream: u64) -> bool {
        stream >= USER_STREAM_MIN
            && (self.streams.is_empty()
                || self
                    .streams
                    .iter()
                    .any(|(first, last)| (*first..=*last).contains(&stream)))
    }
}

/// A parked event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Global position of the park event.
    pub parked_at: u64,
    /// Why.
    pub reason: String,
}

/// One group as the committed events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Its configuration.
    pub config: GroupConfig,
    /// Global position of the create event.
    pub created_at: u64,
    /// Every matching event below this position is acked or parked.
    pub checkpoint: u64,
    /// Acked positions at or above the checkpoint.
    pub acked_above: BTreeSet<u64>,
    /// Parked positions (any side of the checkpoint).
    pub parked: BTreeMap<u64, Parked>,
    /// Replayed positions not acked or parked again yet.
    pub replaying: BTreeSet<u64>,
    /// Positions acked in total.
    pub acked_total: u64,
    /// Positions parked in total.
    pub parked_total: u64,
    /// Ack events applied (one per ack call).
    pub ack_events: u64,
}

impl GroupState {
    /// Whether `position` is done for this group: acked or parked, and
    /// not replayed since.
    pub fn is_done(&self, position: u64) -> bool {
        !self.replaying.contains(&position)
            && (position < self.checkpoint
                || self.acked_above.contains(&position)
                || self.parked.contains_key(&position))
    }

    fn move_checkpoint(&mut self, checkpoint: Option<u64>) {
        if let Some(checkpoint) = checkpoint.filter(|c| *c > self.checkpoint) {
            self.checkpoint = checkpoint;
            self.acked_above = self.acked_above.split_off(&checkpoint);
        }
    }
}

/// What the group events committed so far say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupsState {
    groups: BTreeMap<String, GroupState>,
    events: u64,
}

impl GroupsState {
    /// Group events applied so far (stream 3's offset of the next one).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The group named `name`, if it exists.
    pub fn group(&self, name: &str) -> Option<&GroupState> {
        self.groups.get(name)
    }

    /// Every group, by name.
    pub fn groups(&self) -> &BTreeMap<String, GroupState> {
        &self.groups
    }

    /// Counts an event that does not parse (only replicas write this
    /// stream: a bug, logged by the caller, never a reason to stop).
    pub fn skip_unreadable(&mut self) {
        self.events += 1;
    }

    /// Applies a committed event at global `position`. Never refuses: the
    /// primary decided before it appended, and every replica must reach
    /// the same state from the same log. An event naming a group that does
    /// not exist (deleted meanwhile) changes nothing but the count.
    pub fn apply(&mut self, event: &GroupEvent, position: u64) {
        self.events += 1;
        if event.action == GroupAction::Create {
            if let Some(config) = &event.config {
                self.groups
                    .entry(event.group.clone())
                    .or_insert(GroupState {
                        checkpoint: config.start,
                        config: config.clone(),
                        created_at: position,
                        acked_above: BTreeSet::new(),
                        parked: BTreeMap::new(),
                        replaying: BTreeSet::new(),
                        acked_total: 0,
                        parked_total: 0,
                        ack_events: 0,
                    });
            }
            return;
        }
        if event.action == GroupAction::Delete {
            self.groups.remove(&event.group);
            return;
        }
        let Some(group) = self.groups.get_mut(&event.group) else {
            return;
        };
        match event.action {
            GroupAction::Create | GroupAction::Delete => {}
            GroupAction::Ack => {
                group.ack_events += 1;
                for p in &event.positions {
                    group.acked_total += 1;
                    let replayed = group.replaying.remove(p);
                    if !replayed && *p >= group.checkpoint {
                        group.acked_above.insert(*p);
                    }
                }
                group.move_checkpoint(event.checkpoint);
            }
            GroupAction::Park => {
                let reason = event.reason.clone().unwrap_or_default();
                for p in &event.positions {
                    group.parked_total += 1;
                    group.replaying.remove(p);
                    group.parked.insert(
                        *p,
                        Parked {
                            parked_at: position,
                            reason: reason.clone(),
                        },
                    );
                }
                group.move_checkpoint(event.checkpoint);
            }
            GroupAction::Replay => {
                for p in &event.positions {
                    if group.parked.remove(p).is_some() {
                        group.replaying.insert(*p);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: GroupAction, positions: &[u64], checkpoint: Option<u64>) -> GroupEvent {
        GroupEvent {
            v: GROUP_EVENT_VERSION,
            time_ns: 1,
            action,
            group: "g".to_string(),
            principal: "p".to_string(),
            config: (action == GroupAction::Create).then(|| GroupConfig {
                streams: vec![(100, 199)],
                types: Vec::new(),
                start: 10,
                retry_max: 2,
                lease_ms: 1000,
            }),
            positions: positions.to_vec(),
            checkpoint,
            reason: (action == GroupAction::Park).then(|| "bad".to_string()),
        }
    }

    /// Goal: acks, parks, replays and deletes fold into the state the
    /// primary decided: checkpoint, acked set, parked and replaying sets.
    #[test]
    fn events_fold_into_the_group_state() {
        let mut state = GroupsState::default();
        state.apply(&event(GroupAction::Create, &[], None), 5);
        let group = state.group("g").expect("created");
        assert_eq!((group.checkpoint, group.created_at), (10, 5));
        state.apply(&event(GroupAction::Ack, &[12, 14], Some(11)), 6);
        let group = state.group("g").expect("still there");
        assert_eq!(group.checkpoint, 11);
        assert_eq!(group.acked_above, BTreeSet::from([12, 14]));
        assert!(group.is_done(10) && group.is_done(12) && !group.is_done(11));
        state.apply(&event(GroupAction::Park, &[11], Some(13)), 7);
        let group = state.group("g").expect("still there");
        assert_eq!(group.checkpoint, 13);
        assert_eq!(group.acked_above, BTreeSet::from([14]));
        assert_eq!(group.parked.get(&11).map(|p| p.parked_at), Some(7));
        state.apply(&event(GroupAction::Replay, &[11, 99], None), 8);
        let group = state.group("g").expect("still there");
        assert!(group.parked.is_empty());
        assert_eq!(group.replaying, BTreeSet::from([11]));
        assert!(!group.is_done(11), "a replayed event is due again");
        state.apply(&event(GroupAction::Ack, &[11], Some(13)), 9);
        let group = state.group("g").expect("still there");
        assert!(group.replaying.is_empty() && group.is_done(11));
        assert_eq!((group.acked_total, group.parked_total), (3, 1));
        state.apply(&event(GroupAction::Delete, &[], None), 10);
        assert!(state.group("g").is_none());
        assert_eq!(state.events(), 6);
    }

    /// Goal: a checkpoint never moves back, whatever an event says.
    #[test]
    fn the_checkpoint_only_moves_forward() {
        let mut state = GroupsState::default();
        state.apply(&event(GroupAction::Create, &[], None), 0);
        state.apply(&event(GroupAction::Ack, &[20], Some(30)), 1);
        state.apply(&event(GroupAction::Ack, &[31], Some(12)), 2);
        assert_eq!(state.group("g").map(|g| g.checkpoint), Some(30));
    }

    /// Goal: the payload round-trips byte for byte and unknown fields are refused.
    #[test]
    fn payloads_round_trip() {
        let original = event(GroupAction::Park, &[1, 2], Some(3));
        let bytes = original.to_payload();
        let parsed = GroupEvent::from_payload(&bytes).expect("parses");
        assert_eq!(parsed, original);
        assert_eq!(parsed.to_payload(), bytes);
        let mut text = String::from_utf8(bytes).expect("json");
        text.insert_str(1, "\"extra\":1,");
        assert!(GroupEvent::from_payload(text.as_bytes()).is_err());
    }

    /// Goal: names are one safe path segment of bounded length.
    #[test]
    fn group_names() {
        for good in ["a", "billing-projection", "A.b_c-9", &"x".repeat(64)] {
            assert!(valid_group_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a b",
            "a/b",
            "é",
            "a%2e",
            &"x".repeat(65),
            "a\0",
        ] {
            assert!(!valid_group_name(bad), "{bad:?}");
        }
    }

    /// Goal: a group matches user streams in its ranges only.
    #[test]
    fn filters_match_user_streams_only() {
        let mut config = event(GroupAction::Create, &[], None)
            .config
            .expect("create has a config");
        assert!(config.matches(100) && config.matches(199));
        assert!(!config.matches(99) && !config.matches(200));
        config.streams.clear();
        assert!(config.matches(16) && config.matches(u64::MAX));
        assert!(!config.matches(1) && !config.matches(3));
    }

    /// Goal: a group's type list matches its types byte for byte and never
    /// an untyped event; an empty list matches every event.
    #[test]
    fn type_filters_match_exact_types_only() {
        let mut config = event(GroupAction::Create, &[], None)
            .config
            .expect("create has a config");
        assert!(config.matches_type(None) && config.matches_type(Some("Patient")));
        config.types = vec!["Patient".to_string(), "Observation".to_string()];
        assert!(config.matches_type(Some("Patient")) && config.matches_type(Some("Observation")));
        for other in [
            None,
            Some("patient"),
            Some("Patient "),
            Some("Pat"),
            Some(""),
        ] {
            assert!(!config.matches_type(other), "{other:?}");
        }
    }

    /// Goal: the group event format stays readable both ways: a version 1
    /// create event (no `types`) parses with an empty list and writes the
    /// same bytes back; a create with types says version 2 and round-trips.
    #[test]
    fn create_events_with_and_without_types() {
        let v1 = r#"{"v":1,"time_ns":1,"action":"create","group":"g","principal":"p","config":{"streams":[[100,199]],"start":10,"retry_max":2,"lease_ms":1000}}"#;
        let parsed = GroupEvent::from_payload(v1.as_bytes()).expect("a version 1 event");
        let config = parsed.config.clone().expect("a config");
        assert!(config.types.is_empty() && config.event_version() == GROUP_EVENT_VERSION);
        assert_eq!(parsed.to_payload(), v1.as_bytes());
        let mut typed = parsed;
        let mut config = config;
        config.types = vec!["Patient".to_string()];
        typed.v = config.event_version();
        typed.config = Some(config);
        let bytes = typed.to_payload();
        let text = String::from_utf8(bytes.clone()).expect("json");
        assert!(text.starts_with(r#"{"v":2,"#), "{text}");
        assert!(text.contains(r#""types":["Patient"]"#), "{text}");
        assert_eq!(GroupEvent::from_payload(&bytes).expect("parses"), typed);
    }
}
