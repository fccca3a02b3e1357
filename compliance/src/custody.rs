//! Key custody (P6): the events of system stream [`KEY_CUSTODY_STREAM`]
//! that shred a stream's data keys, set its retention floor, and put it
//! under a legal hold or lift one, and the state every replica folds from
//! them.
//!
//! A privacy officer's request becomes one [`CustodyEvent`], appended to
//! stream 2 through consensus like any event (hash-chained, certified,
//! provable). The primary decides whether the request is allowed
//! ([`CustodyState::check`]: not a system stream, not already shredded, no
//! hold, past the retention floor) before it appends; once the event is
//! committed, every replica applies it ([`CustodyState::apply`]) without
//! deciding again, so all replicas reach the same state, and a `shred`
//! event makes each of them destroy its copies of the stream's data keys.
//! The state is rebuilt from the stream on open.
//!
//! The payload is the struct as compact JSON (field order fixed by the
//! struct). It holds no PHI and no key material: stream ids, times, the
//! principal and the officer's reason.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The system stream of key-custody events (ids below 16 are reserved).
pub const KEY_CUSTODY_STREAM: u64 = vellum_audit::record::KEY_CUSTODY_STREAM;
/// Version of the custody event format.
pub const CUSTODY_EVENT_VERSION: u32 = 1;
/// Longest reason a custody request may carry, in bytes (the API refuses
/// longer ones; nothing is clipped).
pub const CUSTODY_REASON_BYTES_MAX: usize = 1024;
/// Longest principal name kept in an event, in bytes.
pub const CUSTODY_PRINCIPAL_BYTES_MAX: usize = 128;
/// The longest retention policy a configuration may set, in days (100 years).
pub const RETENTION_DAYS_MAX: u64 = 36_500;
/// Milliseconds per day, for the retention policy.
pub const DAY_MS: u64 = 86_400_000;

/// The retention policy's floor for a stream whose newest event was at
/// `last_event_ms`: `days` later (saturating).
pub fn policy_floor_ms(last_event_ms: u64, days: u64) -> u64 {
    last_event_ms.saturating_add(days.saturating_mul(DAY_MS))
}

/// User streams start here: custody applies to user streams only.
pub const USER_STREAM_MIN: u64 = 16;

/// What a custody event does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustodyAction {
    /// Destroy every data key of the stream (crypto-shredding).
    Shred,
    /// Put the stream under a legal hold: no shred until it is released.
    Hold,
    /// Lift the stream's legal hold.
    Release,
    /// Raise the stream's retention floor to `retain_until_ms`.
    Retain,
}

impl CustodyAction {
    /// The snake_case name used in the payload.
    pub fn as_str(self) -> &'static str {
        match self {
            CustodyAction::Shred => "shred",
            CustodyAction::Hold => "hold",
            CustodyAction::Release => "release",
            CustodyAction::Retain => "retain",
        }
    }
}

/// One custody event, as committed in stream 2.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodyEvent {
    /// Format version ([`CUSTODY_EVENT_VERSION`]).
    pub v: u32,
    /// When the primary decided, in unix nanoseconds (its clock).
    pub time_ns: u64,
    /// What.
    pub action: CustodyAction,
    /// The user stream it applies to.
    pub stream: u64,
    /// Who asked (the authenticated principal).
    pub principal: String,
    /// The role it asked with.
    pub role: String,
    /// Why (never empty).
    pub reason: String,
    /// For `retain`: the new floor, unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain_until_ms: Option<u64>,
}

impl CustodyEvent {
    /// The event's payload: compact JSON in field order.
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a custody event always serializes")
    }

    /// Parses a payload written by [`CustodyEvent::to_payload`].
    pub fn from_payload(bytes: &[u8]) -> Result<CustodyEvent, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// A request to change a stream's custody, before the primary decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustodyRequest {
    /// What.
    pub action: CustodyAction,
    /// The stream.
    pub stream: u64,
    /// For `retain`: the new floor, unix milliseconds.
    pub retain_until_ms: Option<u64>,
}

/// Why the primary refused a custody request (nothing was written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CustodyRefusal {
    /// Streams below 16 are vellum's own (trail, custody): never shredded,
    /// held or retained.
    #[error("stream {stream} is a system stream; custody applies to user streams (16 and up)")]
    SystemStream {
        /// The stream.
        stream: u64,
    },
    /// The stream was shredded already.
    #[error("stream {stream} was shredded at log position {position}")]
    Shredded {
        /// The stream.
        stream: u64,
        /// Global position of the shred event.
        position: u64,
    },
    /// The stream is under a legal hold.
    #[error(
        "legal hold: stream {stream} is under a legal hold since log position {position} (reason: {reason}); release it first"
    )]
    LegalHold {
        /// The stream.
        stream: u64,
        /// Global position of the hold event.
        position: u64,
        /// The hold's reason.
        reason: String,
    },
    /// The stream's retention floor is in the future.
    #[error(
        "retention floor: stream {stream} must be kept until {retain_until_ms} ms since the epoch (now {now_ms})"
    )]
    RetentionFloor {
        /// The stream.
        stream: u64,
        /// The floor.
        retain_until_ms: u64,
        /// The primary's clock when it decided.
        now_ms: u64,
    },
    /// The cluster's retention policy keeps a stream this long after its
    /// newest event (`retention_days_after_last_event` in the replica's
    /// configuration).
    #[error(
        "retention floor: the retention policy keeps stream {stream} for {days} days after its last event (at {last_event_ms} ms), until {until_ms} ms since the epoch (now {now_ms})"
    )]
    RetentionPolicy {
        /// The stream.
        stream: u64,
        /// The policy's days.
        days: u64,
        /// When the stream's newest event was appended (unix ms).
        last_event_ms: u64,
        /// The floor the policy sets (unix ms).
        until_ms: u64,
        /// The primary's clock when it decided.
        now_ms: u64,
    },
    /// A retention floor only goes up.
    #[error(
        "retention floor: stream {stream} is kept until {current_ms} ms; a floor is only ever raised (asked {asked_ms})"
    )]
    RetentionLowered {
        /// The stream.
        stream: u64,
        /// The floor in force.
        current_ms: u64,
        /// The floor asked for.
        asked_ms: u64,
    },
    /// A hold on a stream already held.
    #[error("stream {stream} is already under a legal hold since log position {position}")]
    AlreadyHeld {
        /// The stream.
        stream: u64,
        /// Global position of the hold event.
        position: u64,
    },
    /// A release of a stream not under a hold.
    #[error("stream {stream} is not under a legal hold")]
    NotHeld {
        /// The stream.
        stream: u64,
    },
    /// A `retain` request without its floor.
    #[error("a retention request needs retain_until_ms")]
    MissingFloor,
}

/// A legal hold in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    /// Global position of the hold event.
    pub position: u64,
    /// Who set it.
    pub principal: String,
    /// Why.
    pub reason: String,
}

/// The custody of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamCustody {
    /// Global position of the shred event, once shredded.
    pub shredded_at: Option<u64>,
    /// The legal hold in force, if any.
    pub hold: Option<Hold>,
    /// The retention floor (unix ms; 0: none).
    pub retain_until_ms: u64,
}

/// What the custody events committed so far say, per stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CustodyState {
    streams: BTreeMap<u64, StreamCustody>,
    events: u64,
}

impl CustodyState {
    /// Custody events applied so far (stream 2's offset of the next one).
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The custody of `stream` (default: none).
    pub fn stream(&self, stream: u64) -> StreamCustody {
        self.streams.get(&stream).cloned().unwrap_or_default()
    }

    /// Global position of the shred of `stream`, if it was shredded.
    pub fn shredded_at(&self, stream: u64) -> Option<u64> {
        self.streams.get(&stream).and_then(|s| s.shredded_at)
    }

    /// Every shredded stream with the position of its shred.
    pub fn shredded(&self) -> Vec<(u64, u64)> {
        self.streams
            .iter()
            .filter_map(|(stream, s)| s.shredded_at.map(|p| (*stream, p)))
            .collect()
    }

    /// Whether the primary may append `request` now (`now_ms`: its clock).
    /// Pure: the same state and request give the same answer.
    pub fn check(&self, request: &CustodyRequest, now_ms: u64) -> Result<(), CustodyRefusal> {
        let stream = request.stream;
        if stream < USER_STREAM_MIN {
            return Err(CustodyRefusal::SystemStream { stream });
        }
        let custody = self.stream(stream);
        if let Some(position) = custody.shredded_at {
            return Err(CustodyRefusal::Shredded { stream, position });
        }
        match request.action {
            CustodyAction::Shred => {
                if let Some(hold) = custody.hold {
                    return Err(CustodyRefusal::LegalHold {
                        stream,
                        position: hold.position,
                        reason: hold.reason,
                    });
                }
                if now_ms < custody.retain_until_ms {
                    return Err(CustodyRefusal::RetentionFloor {
                        stream,
                        retain_until_ms: custody.retain_until_ms,
                        now_ms,
                    });
                }
            }
            CustodyAction::Hold => {
                if let Some(hold) = custody.hold {
                    return Err(CustodyRefusal::AlreadyHeld {
                        stream,
                        position: hold.position,
                    });
                }
            }
            CustodyAction::Release => {
                if custody.hold.is_none() {
                    return Err(CustodyRefusal::NotHeld { stream });
                }
            }
            CustodyAction::Retain => {
                let asked = request
                    .retain_until_ms
                    .ok_or(CustodyRefusal::MissingFloor)?;
                if asked < custody.retain_until_ms {
                    return Err(CustodyRefusal::RetentionLowered {
                        stream,
                        current_ms: custody.retain_until_ms,
                        asked_ms: asked,
                    });
                }
            }
        }
        Ok(())
    }

    /// Applies a committed event at global `position`. Never refuses: the
    /// primary decided before it appended, and every replica must reach
    /// the same state from the same log. Returns true for a shred (the
    /// caller destroys the stream's keys).
    pub fn apply(&mut self, event: &CustodyEvent, position: u64) -> bool {
        self.events += 1;
        let custody = self.streams.entry(event.stream).or_default();
        match event.action {
            CustodyAction::Shred => {
                custody.shredded_at.get_or_insert(position);
                true
            }
            CustodyAction::Hold => {
                custody.hold = Some(Hold {
                    position,
                    principal: event.principal.clone(),
                    reason: event.reason.clone(),
                });
                false
            }
            CustodyAction::Release => {
                custody.hold = None;
                false
            }
            CustodyAction::Retain => {
                let asked = event.retain_until_ms.unwrap_or(0);
                custody.retain_until_ms = custody.retain_until_ms.max(asked);
                false
            }
        }
    }

    /// Counts an event that could not be parsed (it still took an offset).
    pub fn skip_unreadable(&mut self) {
        self.events += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(action: CustodyAction, stream: u64, retain: Option<u64>) -> CustodyEvent {
        CustodyEvent {
            v: CUSTODY_EVENT_VERSION,
            time_ns: 7,
            action,
            stream,
            principal: "po".into(),
            role: "privacy-officer".into(),
            reason: "why".into(),
            retain_until_ms: retain,
        }
    }

    fn request(action: CustodyAction, stream: u64, retain: Option<u64>) -> CustodyRequest {
        CustodyRequest {
            action,
            stream,
            retain_until_ms: retain,
        }
    }

    // Goal: the payload is compact JSON in field order and round-trips;
    // unknown members are refused.
    #[test]
    fn payload_round_trips_in_field_order() {
        let e = event(CustodyAction::Retain, 17, Some(9));
        let text = String::from_utf8(e.to_payload()).expect("utf-8");
        assert_eq!(
            text,
            r#"{"v":1,"time_ns":7,"action":"retain","stream":17,"principal":"po","role":"privacy-officer","reason":"why","retain_until_ms":9}"#
        );
        assert_eq!(
            CustodyEvent::from_payload(text.as_bytes()).expect("parse"),
            e
        );
        let extra = text.replace("\"v\":1", "\"v\":1,\"key\":\"x\"");
        assert!(CustodyEvent::from_payload(extra.as_bytes()).is_err());
    }

    // Goal: a hold blocks a shred until released; the refusal names the rule.
    #[test]
    fn hold_blocks_shred_until_released() {
        let mut state = CustodyState::default();
        state.apply(&event(CustodyAction::Hold, 20, None), 100);
        let refused = state.check(&request(CustodyAction::Shred, 20, None), 5);
        assert!(
            matches!(
                refused,
                Err(CustodyRefusal::LegalHold { position: 100, .. })
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .expect_err("refused")
                .to_string()
                .starts_with("legal hold")
        );
        assert!(
            state
                .check(&request(CustodyAction::Hold, 20, None), 5)
                .is_err()
        );
        state.apply(&event(CustodyAction::Release, 20, None), 101);
        assert_eq!(
            state.check(&request(CustodyAction::Shred, 20, None), 5),
            Ok(())
        );
        assert_eq!(
            state.check(&request(CustodyAction::Release, 20, None), 5),
            Err(CustodyRefusal::NotHeld { stream: 20 })
        );
    }

    // Goal: a shred before the retention floor is refused, at or after it
    // allowed; a floor is never lowered.
    #[test]
    fn retention_floor_blocks_shred_before_it() {
        let mut state = CustodyState::default();
        state.apply(&event(CustodyAction::Retain, 20, Some(1_000)), 3);
        let refused = state.check(&request(CustodyAction::Shred, 20, None), 999);
        assert!(
            matches!(
                refused,
                Err(CustodyRefusal::RetentionFloor {
                    retain_until_ms: 1_000,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .expect_err("refused")
                .to_string()
                .starts_with("retention floor")
        );
        assert_eq!(
            state.check(&request(CustodyAction::Shred, 20, None), 1_000),
            Ok(())
        );
        assert!(matches!(
            state.check(&request(CustodyAction::Retain, 20, Some(999)), 0),
            Err(CustodyRefusal::RetentionLowered { .. })
        ));
        // A lower floor in the log (never appended by a correct primary)
        // still cannot lower it.
        state.apply(&event(CustodyAction::Retain, 20, Some(5)), 4);
        assert_eq!(state.stream(20).retain_until_ms, 1_000);
    }

    // Goal: a shredded stream refuses every later request, names its
    // position, and a second shred event keeps the first position.
    #[test]
    fn shred_is_final_and_keeps_its_position() {
        let mut state = CustodyState::default();
        assert!(state.apply(&event(CustodyAction::Shred, 30, None), 50));
        assert!(state.apply(&event(CustodyAction::Shred, 30, None), 60));
        assert_eq!(state.shredded_at(30), Some(50));
        assert_eq!(state.shredded(), vec![(30, 50)]);
        assert_eq!(state.events(), 2);
        for action in [
            CustodyAction::Shred,
            CustodyAction::Hold,
            CustodyAction::Release,
            CustodyAction::Retain,
        ] {
            assert_eq!(
                state.check(&request(action, 30, Some(1)), 0),
                Err(CustodyRefusal::Shredded {
                    stream: 30,
                    position: 50
                })
            );
        }
    }

    // Goal: system streams (0 to 15) are refused for every action, and the
    // edges 15/16 and u64::MAX behave.
    #[test]
    fn system_streams_are_refused() {
        let state = CustodyState::default();
        for stream in [0, 1, 2, 15] {
            assert_eq!(
                state.check(&request(CustodyAction::Shred, stream, None), 0),
                Err(CustodyRefusal::SystemStream { stream })
            );
        }
        assert_eq!(
            state.check(&request(CustodyAction::Shred, 16, None), 0),
            Ok(())
        );
        assert_eq!(
            state.check(&request(CustodyAction::Shred, u64::MAX, None), u64::MAX),
            Ok(())
        );
        assert_eq!(
            state.check(&request(CustodyAction::Retain, 16, None), 0),
            Err(CustodyRefusal::MissingFloor)
        );
    }
}
