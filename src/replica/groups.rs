//! Persistent subscriptions (consumer groups) on a replica.
//!
//! Committed state (every replica, [`Groups::catch_up`]): the events of the
//! system stream `CONSUMER_GROUPS_STREAM` folded into
//! `vellum_compliance::groups::GroupsState` (groups, checkpoints, acked and
//! parked positions). Folded on demand (every group call catches up first),
//! so a backup that becomes primary starts from what the cluster committed.
//!
//! In flight (the primary only, [`Live`]): which events are leased to which
//! consumer until when, which wait for delivery, and how often each was
//! delivered. Memory only: it is rebuilt from the committed state whenever
//! the view changes or the committed state moved under it (a failover, an
//! outcome that was unknown), and the un-acked events are then delivered
//! again: delivery is at-least-once.
//!
//! Deciding (the primary, one decision at a time under one lock): an ack
//! or park checks every position against the in-flight state, computes
//! the new checkpoint, appends one group event with the stream's length as
//! expected offset, and applies it from the log once committed. Pulls
//! wait (long-poll) without the lock.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use vellum_compliance::groups::{
    CONSUMER_GROUPS_STREAM, GROUP_EVENT_VERSION, GROUP_POSITIONS_MAX, GROUP_REASON_BYTES_MAX,
    GROUPS_MAX, GroupAction, GroupConfig, GroupEvent, GroupState, GroupsState,
};

use crate::log::{LocalLog, LogError, READ_EVENTS_MAX};
use crate::server::groups::{
    DeliveredEvent, GROUP_PARKED_LIST_MAX, GroupAcked, GroupAnswer, GroupCall, GroupDeleted,
    GroupDelivery, GroupError, GroupMetrics, GroupNacked, GroupParkedList, GroupReplayed,
    GroupStart, ParkedEvent, group_info,
};
use crate::server::node::{FaultKind, InternalFault};

/// Matching events a group holds between its checkpoint and its scan
/// cursor at most (waiting, leased, or acked above the checkpoint): the
/// bound on the primary's memory per group and on the acked set the log
/// keeps; a stuck event holds the window until it is parked.
pub const GROUP_WINDOW_MAX: usize = 4096;
/// How long a waiting pull sleeps between looks, at most.
pub const GROUP_PULL_POLL_MS: u64 = 50;
/// The principal of the primary's own group events (parks after expired leases).
pub const GROUP_SYSTEM_PRINCIPAL: &str = "vellum";
/// How often the primary's reaper ([`Groups::spawn_reaper`]) takes back
/// expired leases when no pull does, at most.
pub const GROUP_REAP_MS: u64 = 250;
/// Park events one look (a pull, a nack, a reaper round) commits per group
/// at most; positions marked for parking beyond them wait for the next.
pub const GROUP_PARK_COMMITS_MAX: usize = 8;

/// One event out for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Due {
    /// Deliveries so far.
    attempts: u32,
    /// Leased to this consumer until this time (ms on the primary's
    /// monotonic clock); None: waiting for a consumer.
    lease: Option<(String, u64)>,
    /// Decided to be parked, the park not committed yet (its commit
    /// failed, or it waits for its turn): never leased again, so the retry
    /// limit holds whatever the commit does; each look commits it again.
    parking: Option<Parking>,
}

impl Due {
    fn waiting() -> Due {
        Due {
            attempts: 0,
            lease: None,
            parking: None,
        }
    }
}

/// Who decided to park an event and why: one park event per distinct pair.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Parking {
    principal: String,
    reason: String,
}

/// The primary's in-flight state of one group (memory only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Live {
    /// The create event of the group this state was built for.
    created_at: u64,
    /// The next position to look at in the log.
    scan: u64,
    /// Events out for delivery (waiting or leased), by position.
    due: BTreeMap<u64, Due>,
    /// Deliveries since this state was built.
    delivered: u64,
    /// Nacks and expired leases since this state was built.
    nacked: u64,
}

/// What a nack or an expired lease does to a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    Retry,
    Park,
}

impl Live {
    /// The in-flight state a new primary starts with: the replayed events
    /// wait for delivery; the log is scanned from the checkpoint on.
    pub fn rebuild(state: &GroupState) -> Live {
        Live {
            created_at: state.created_at,
            scan: state.checkpoint,
            due: state
                .replaying
                .iter()
                .map(|p| (*p, Due::waiting()))
                .collect(),
            delivered: 0,
            nacked: 0,
        }
    }

    /// This state after committed events it did not expect were applied
    /// (an outcome that was unknown turned out committed), in the same
    /// view: what is done now is dropped, every other event keeps its
    /// lease, its attempts and its mark for parking, so neither the retry
    /// limit nor a lease restarts. A group created afresh starts afresh.
    fn carried(self, state: &GroupState) -> Live {
        let mut live = Live::rebuild(state);
        if self.created_at != state.created_at {
            return live;
        }
        live.scan = self.scan.max(state.checkpoint);
        live.delivered = self.delivered;
        live.nacked = self.nacked;
        for (position, due) in self.due {
            if !state.is_done(position) {
                live.due.insert(position, due);
            }
        }
        live
    }

    /// Events leased now.
    pub fn in_flight(&self) -> u64 {
        self.due.values().filter(|d| d.lease.is_some()).count() as u64
    }

    /// Whether the scan may take more events in.
    fn wants_more(&self, state: &GroupState) -> bool {
        self.due.len() + state.acked_above.len() < GROUP_WINDOW_MAX
    }

    /// Takes in the event at `position` of `stream`, of type `event_type`
    /// (None: untyped), found by the scan.
    fn offer(&mut self, position: u64, stream: u64, event_type: Option<&str>, state: &GroupState) {
        self.scan = self.scan.max(position + 1);
        if state.config.matches(stream)
            && state.config.matches_type(event_type)
            && !state.is_done(position)
        {
            self.due.entry(position).or_insert_with(Due::waiting);
        }
    }

    /// Expired leases go back to waiting, or are marked for parking (as
    /// `parking` says) once delivered more than `retry_max` times.
    /// Returns how many expired.
    fn expire(&mut self, now_ms: u64, retry_max: u32, parking: &Parking) -> u64 {
        let expired: Vec<u64> = self
            .due
            .iter()
            .filter(|(_, d)| d.lease.as_ref().is_some_and(|(_, until)| *until <= now_ms))
            .map(|(p, _)| *p)
            .collect();
        for position in &expired {
            self.nacked += 1;
            self.fail(*position, retry_max, false, parking);
        }
        expired.len() as u64
    }

    /// A delivery of `position` failed: back to waiting, or marked for
    /// parking (as `parking` says; a mark made earlier stays).
    fn fail(&mut self, position: u64, retry_max: u32, park_now: bool, parking: &Parking) -> Failed {
        let Some(due) = self.due.get_mut(&position) else {
            return Failed::Retry;
        };
        due.lease = None;
        if due.parking.is_none() && !park_now && due.attempts <= retry_max {
            return Failed::Retry;
        }
        due.parking.get_or_insert_with(|| parking.clone());
        Failed::Park
    }

    /// The positions marked for parking, by who decided and why (each
    /// list ascending, at most [`GROUP_POSITIONS_MAX`] long); `first`'s
    /// list leads, then up to [`GROUP_PARK_COMMITS_MAX`] in all.
    fn parking(&self, first: Option<&Parking>) -> Vec<(Parking, Vec<u64>)> {
        let mut by: BTreeMap<&Parking, Vec<u64>> = BTreeMap::new();
        for (position, due) in &self.due {
            if let Some(parking) = &due.parking {
                let positions = by.entry(parking).or_default();
                if positions.len() < GROUP_POSITIONS_MAX {
                    positions.push(*position);
                }
            }
        }
        let lead = first.and_then(|f| by.remove_entry(f));
        lead.into_iter()
            .chain(by)
            .take(GROUP_PARK_COMMITS_MAX)
            .map(|(parking, positions)| (parking.clone(), positions))
            .collect()
    }

    /// Leases up to `max` waiting events to `consumer` until `until_ms`.
    fn lease(&mut self, consumer: &str, max: u64, until_ms: u64) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for (position, due) in self.due.iter_mut() {
            if out.len() as u64 >= max {
                break;
            }
            if due.lease.is_none() && due.parking.is_none() {
                due.attempts = due.attempts.saturating_add(1);
                due.lease = Some((consumer.to_string(), until_ms));
                out.push((*position, due.attempts));
            }
        }
        self.delivered += out.len() as u64;
        out
    }

    /// Whether `position` was delivered and is not settled yet.
    fn delivered_unsettled(&self, position: u64) -> bool {
        self.due.get(&position).is_some_and(|d| d.attempts > 0)
    }

    /// Forgets settled (acked or parked) positions.
    fn settle(&mut self, positions: &[u64]) {
        for p in positions {
            self.due.remove(p);
        }
    }

    /// The checkpoint once `settled` are done: the lowest position still
    /// out for delivery at or above the current one, else the scan cursor.
    fn checkpoint_after(&self, current: u64, settled: &BTreeSet<u64>) -> u64 {
        let lowest_due = self
            .due
            .range(current..)
            .map(|(p, _)| *p)
            .find(|p| !settled.contains(p));
        current.max(lowest_due.unwrap_or(self.scan).min(self.scan))
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: GroupsState,
    live: BTreeMap<String, Live>,
    /// The view `live` was built in (None: not built).
    live_view: Option<u64>,
    /// A view this replica leads whose inherited ops are not all committed
    /// yet: (view, the op it must commit first).
    view_start: Option<(u64, u64)>,
}

/// The consumer groups of one replica.
#[derive(Debug)]
pub struct Groups {
    log: Arc<LocalLog>,
    inner: Mutex<Inner>,
    started: Instant,
    /// Faults the next commits meet, in order (unit tests only).
    #[cfg(test)]
    commit_faults: Mutex<std::collections::VecDeque<tests::CommitFault>>,
}

fn log_fault(error: LogError) -> GroupError {
    match error {
        LogError::Indeterminate(reason) => GroupError::Indeterminate { reason },
        LogError::ReadOnly => GroupError::Unavailable(crate::server::node::Unavailable::ReadOnly),
        LogError::Refused(crate::vsr::RequestRefusal::QueueFull) => {
            GroupError::Unavailable(crate::server::node::Unavailable::QueueFull)
        }
        LogError::NotDurable { op } => {
            GroupError::Unavailable(crate::server::node::Unavailable::NotDurable { op })
        }
        other => GroupError::Internal(InternalFault::new(FaultKind::Storage, other)),
    }
}

impl Groups {
    /// The groups of `log`; folded from the log at the first call.
    pub fn new(log: Arc<LocalLog>) -> Groups {
        Groups {
            log,
            inner: Mutex::new(Inner::default()),
            started: Instant::now(),
            #[cfg(test)]
            commit_faults: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Applies every committed group event not applied yet; returns how many.
    fn catch_up(&self, inner: &mut Inner) -> Result<u64, LogError> {
        let mut applied = 0;
        loop {
            let from = inner.state.events();
            let page = match self.log.read(CONSUMER_GROUPS_STREAM, from, READ_EVENTS_MAX) {
                Ok(page) => page,
                Err(LogError::UnknownStream(_)) => return Ok(applied),
                Err(other) => return Err(other),
            };
            if page.is_empty() {
                return Ok(applied);
            }
            for event in page {
                assert_eq!(
                    event.offset,
                    inner.state.events(),
                    "group events are applied densely, in stream order"
                );
                match GroupEvent::from_payload(&event.payload) {
                    Ok(parsed) => inner.state.apply(&parsed, event.position),
                    Err(error) => {
                        tracing::error!(%error, position = event.position, "a consumer-group event does not parse; skipped");
                        inner.state.skip_unreadable();
                    }
                }
                applied += 1;
            }
        }
    }

    /// Catches up and, at the primary, makes the in-flight state match
    /// the committed one: rebuilt when the view changed or events this
    /// primary did not expect were applied.
    fn refresh(&self, inner: &mut Inner) -> Result<(), GroupError> {
        let status = self.log.status();
        let view = status.view;
        if inner.live_view != Some(view) {
            // A new primary serves groups only once it committed every op
            // it inherited (an ack committed under the old primary may
            // still be uncommitted here), so its state is the cluster's.
            let needed = match inner.view_start {
                Some((v, op)) if v == view => op,
                _ => {
                    inner.view_start = Some((view, status.op));
                    status.op
                }
            };
            if status.commit < needed {
                return Err(GroupError::CatchingUp {
                    commit: status.commit,
                    needed,
                });
            }
        }
        let applied = self.catch_up(inner).map_err(log_fault)?;
        let Inner {
            state,
            live,
            live_view,
            ..
        } = inner;
        if *live_view != Some(view) {
            live.clear();
            *live_view = Some(view);
        } else if applied > 0 {
            let old = std::mem::take(live);
            for (name, was) in old {
                if let Some(group) = state.group(&name) {
                    live.insert(name, was.carried(group));
                }
            }
        }
        live.retain(|name, _| state.group(name).is_some());
        for (name, group) in state.groups() {
            live.entry(name.clone())
                .or_insert_with(|| Live::rebuild(group));
        }
        Ok(())
    }

    /// Appends `event`, waits for its commit and applies it (with any
    /// other group event committed before it). Returns its position.
    fn commit(&self, inner: &mut Inner, event: &GroupEvent) -> Result<u64, GroupError> {
        let expected = inner.state.events();
        let payload = Bytes::from(event.to_payload());
        #[cfg(test)]
        if let Some(fault) = self.take_commit_fault() {
            return self.inject(fault, payload, expected);
        }
        match self.log.append_groups(&[payload], expected) {
            Err(LogError::WrongExpectedOffset { .. }) => {
                // Another primary's events: the caller decides again on them.
                self.refresh(inner)?;
                Err(GroupError::Indeterminate {
                    reason: "the consumer-group stream moved under this decision (a new primary); nothing was written, retry".to_string(),
                })
            }
            Err(error) => Err(log_fault(error)),
            Ok(appended) => {
                let applied = self.catch_up(inner).map_err(log_fault)?;
                assert!(applied >= 1, "a committed group event is applied");
                Ok(appended.first_position)
            }
        }
    }

    fn event(action: GroupAction, group: &str, principal: &str) -> GroupEvent {
        GroupEvent {
            v: GROUP_EVENT_VERSION,
            time_ns: crate::log::now_ns(),
            action,
            group: group.to_string(),
            principal: clip(
                principal,
                vellum_compliance::groups::GROUP_PRINCIPAL_BYTES_MAX,
            ),
            config: None,
            positions: Vec::new(),
            checkpoint: None,
            reason: None,
        }
    }

    /// Serves one call; the caller checked that this replica is the
    /// primary (except for `Metrics`).
    pub fn call(&self, call: GroupCall) -> Result<GroupAnswer, GroupError> {
        match call {
            GroupCall::Pull {
                name,
                consumer,
                max,
                wait_ms,
            } => self.pull(&name, &consumer, max, wait_ms),
            GroupCall::Metrics => Ok(GroupAnswer::Metrics(self.metrics())),
            other => {
                let mut inner = self.inner();
                self.refresh(&mut inner)?;
                self.decide(&mut inner, other)
            }
        }
    }

    fn decide(&self, inner: &mut Inner, call: GroupCall) -> Result<GroupAnswer, GroupError> {
        match call {
            GroupCall::Create {
                name,
                streams,
                types,
                start,
                retry_max,
                lease_ms,
                principal,
            } => {
                if inner.state.group(&name).is_some() {
                    return Err(GroupError::Exists { group: name });
                }
                if inner.state.groups().len() >= GROUPS_MAX {
                    return Err(GroupError::TooManyGroups { max: GROUPS_MAX });
                }
                let start = match start {
                    GroupStart::Beginning => 0,
                    GroupStart::End => self.log.committed_events(),
                    GroupStart::Position(p) => p,
                };
                let mut event = Self::event(GroupAction::Create, &name, &principal);
                let config = GroupConfig {
                    streams,
                    types,
                    start,
                    retry_max,
                    lease_ms,
                };
                event.v = config.event_version();
                event.config = Some(config);
                self.commit(inner, &event)?;
                self.refresh(inner)?;
                self.info(inner, &name)
            }
            GroupCall::Get { name } => self.info(inner, &name),
            GroupCall::Delete { name, principal } => {
                self.group_state(inner, &name)?;
                let event = Self::event(GroupAction::Delete, &name, &principal);
                let position = self.commit(inner, &event)?;
                inner.live.remove(&name);
                Ok(GroupAnswer::Deleted(GroupDeleted { name, position }))
            }
            GroupCall::Ack {
                name,
                positions,
                principal,
            } => self.ack(inner, &name, &positions, &principal),
            GroupCall::Nack {
                name,
                positions,
                park,
                reason,
                principal,
            } => self.nack(inner, &name, &positions, park, &reason, &principal),
            GroupCall::Parked { name, from, max } => {
                let group = self.group_state(inner, &name)?;
                let max = max.min(GROUP_PARKED_LIST_MAX);
                let mut parked: Vec<ParkedEvent> = group
                    .parked
                    .range(from..)
                    .take(usize::try_from(max).unwrap_or(usize::MAX).saturating_add(1))
                    .map(|(p, parked)| ParkedEvent {
                        position: *p,
                        parked_at: parked.parked_at,
                        reason: parked.reason.clone(),
                    })
                    .collect();
                let next_position = match parked.len() as u64 > max {
                    true => parked.pop().map(|p| p.position),
                    false => None,
                };
                Ok(GroupAnswer::Parked(GroupParkedList {
                    group: name,
                    parked,
                    next_position,
                }))
            }
            GroupCall::Replay {
                name,
                positions,
                principal,
            } => self.replay(inner, &name, positions, &principal),
            GroupCall::Pull { .. } | GroupCall::Metrics => {
                unreachable!("served by Groups::call without a decision")
            }
        }
    }

    fn group_state<'a>(&self, inner: &'a Inner, name: &str) -> Result<&'a GroupState, GroupError> {
        inner.state.group(name).ok_or_else(|| GroupError::NotFound {
            group: name.to_string(),
        })
    }

    fn info(&self, inner: &Inner, name: &str) -> Result<GroupAnswer, GroupError> {
        let group = self.group_state(inner, name)?;
        let in_flight = inner.live.get(name).map_or(0, Live::in_flight);
        Ok(GroupAnswer::Info(group_info(name, group, in_flight)))
    }

    fn ack(
        &self,
        inner: &mut Inner,
        name: &str,
        positions: &[u64],
        principal: &str,
    ) -> Result<GroupAnswer, GroupError> {
        let group = self.group_state(inner, name)?;
        let empty = Live::default();
        let live = inner.live.get(name).unwrap_or(&empty);
        let mut fresh = BTreeSet::new();
        let mut already = 0;
        for p in positions {
            if live.delivered_unsettled(*p) {
                fresh.insert(*p);
            } else if group.is_done(*p) {
                already += 1;
            } else {
                return Err(GroupError::NotDelivered {
                    group: name.to_string(),
                    position: *p,
                });
            }
        }
        let checkpoint = live.checkpoint_after(group.checkpoint, &fresh);
        if fresh.is_empty() {
            return Ok(GroupAnswer::Acked(GroupAcked {
                acked: 0,
                already,
                checkpoint: group.checkpoint,
                position: None,
            }));
        }
        let mut event = Self::event(GroupAction::Ack, name, principal);
        event.positions = fresh.iter().copied().collect();
        event.checkpoint = Some(checkpoint);
        let position = self.commit(inner, &event)?;
        if let Some(live) = inner.live.get_mut(name) {
            live.settle(&event.positions);
        }
        let checkpoint = self.group_state(inner, name)?.checkpoint;
        Ok(GroupAnswer::Acked(GroupAcked {
            acked: fresh.len() as u64,
            already,
            checkpoint,
            position: Some(position),
        }))
    }

    fn nack(
        &self,
        inner: &mut Inner,
        name: &str,
        positions: &[u64],
        park_now: bool,
        reason: &str,
        principal: &str,
    ) -> Result<GroupAnswer, GroupError> {
        let group = self.group_state(inner, name)?;
        let retry_max = group.config.retry_max;
        let empty = Live::default();
        let live = inner.live.get(name).unwrap_or(&empty);
        for p in positions {
            if !live.delivered_unsettled(*p) && !group.is_done(*p) {
                return Err(GroupError::NotDelivered {
                    group: name.to_string(),
                    position: *p,
                });
            }
        }
        let parking = Parking {
            principal: principal.to_string(),
            reason: match park_now {
                true => format!("nacked: {reason}"),
                false => format!("nacked past the retry limit ({retry_max}): {reason}"),
            },
        };
        let live = inner.live.entry(name.to_string()).or_default();
        let mut parked = 0;
        let mut retried = 0;
        for p in positions {
            if !live.delivered_unsettled(*p) {
                continue; // done already
            }
            live.nacked += 1;
            match live.fail(*p, retry_max, park_now, &parking) {
                Failed::Park => parked += 1,
                Failed::Retry => retried += 1,
            }
        }
        self.park_marked(inner, name, Some(&parking))?;
        let checkpoint = self.group_state(inner, name)?.checkpoint;
        Ok(GroupAnswer::Nacked(GroupNacked {
            retried,
            parked,
            checkpoint,
        }))
    }

    /// Commits the parks of the positions of group `name` marked for
    /// parking (`first`'s first), one park event per who and why, so a
    /// park whose commit failed before is committed now. Stops at the
    /// first failure: those positions stay marked, never leased again.
    fn park_marked(
        &self,
        inner: &mut Inner,
        name: &str,
        first: Option<&Parking>,
    ) -> Result<(), GroupError> {
        let batches = inner
            .live
            .get(name)
            .map_or_else(Vec::new, |live| live.parking(first));
        for (parking, positions) in batches {
            self.park(inner, name, positions, &parking.principal, &parking.reason)?;
        }
        Ok(())
    }

    /// Commits a park event for `positions` (none: nothing written).
    fn park(
        &self,
        inner: &mut Inner,
        name: &str,
        mut positions: Vec<u64>,
        principal: &str,
        reason: &str,
    ) -> Result<(), GroupError> {
        if positions.is_empty() {
            return Ok(());
        }
        positions.sort_unstable();
        positions.dedup();
        positions.truncate(GROUP_POSITIONS_MAX);
        let group = self.group_state(inner, name)?;
        let settled: BTreeSet<u64> = positions.iter().copied().collect();
        let checkpoint = inner.live.get(name).map_or(group.checkpoint, |l| {
            l.checkpoint_after(group.checkpoint, &settled)
        });
        let mut event = Self::event(GroupAction::Park, name, principal);
        event.positions = positions;
        event.checkpoint = Some(checkpoint);
        event.reason = Some(clip(reason, GROUP_REASON_BYTES_MAX));
        self.commit(inner, &event)?;
        if let Some(live) = inner.live.get_mut(name) {
            live.settle(&event.positions);
        }
        Ok(())
    }

    fn replay(
        &self,
        inner: &mut Inner,
        name: &str,
        positions: Option<Vec<u64>>,
        principal: &str,
    ) -> Result<GroupAnswer, GroupError> {
        let group = self.group_state(inner, name)?;
        let positions: Vec<u64> = match positions {
            None => group
                .parked
                .keys()
                .take(GROUP_POSITIONS_MAX)
                .copied()
                .collect(),
            Some(asked) => {
                if let Some(p) = asked.iter().find(|p| !group.parked.contains_key(p)) {
                    return Err(GroupError::NotParked {
                        group: name.to_string(),
                        position: *p,
                    });
                }
                let set: BTreeSet<u64> = asked.into_iter().collect();
                set.into_iter().collect()
            }
        };
        if positions.is_empty() {
            return Ok(GroupAnswer::Replayed(GroupReplayed {
                replayed: 0,
                position: None,
            }));
        }
        let mut event = Self::event(GroupAction::Replay, name, principal);
        event.positions = positions;
        let position = self.commit(inner, &event)?;
        let live = inner.live.entry(name.to_string()).or_default();
        for p in &event.positions {
            live.due.insert(*p, Due::waiting());
        }
        Ok(GroupAnswer::Replayed(GroupReplayed {
            replayed: event.positions.len() as u64,
            position: Some(position),
        }))
    }

    /// Leases up to `max` events to `consumer`, waiting up to `wait_ms`
    /// for the first (without holding the lock while waiting).
    fn pull(
        &self,
        name: &str,
        consumer: &str,
        max: u64,
        wait_ms: u64,
    ) -> Result<GroupAnswer, GroupError> {
        let started = Instant::now();
        loop {
            let (leased, lease_ms) = self.try_lease(name, consumer, max)?;
            let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            if !leased.is_empty() || waited >= wait_ms {
                let events = self.contents(name, leased)?;
                return Ok(GroupAnswer::Delivered(GroupDelivery {
                    group: name.to_string(),
                    consumer: consumer.to_string(),
                    events,
                    lease_ms,
                }));
            }
            let nap = (wait_ms - waited).min(GROUP_PULL_POLL_MS);
            std::thread::sleep(Duration::from_millis(nap));
        }
    }

    /// Takes back every expired lease of every group (parking the events
    /// past their retry limit), so an event a dead consumer held is due
    /// again, and a poison event parked, without waiting for a pull.
    /// Returns the leases taken back; nothing at a backup, or while a new
    /// primary catches up (its in-flight state is rebuilt then anyway).
    pub fn reclaim_expired(&self) -> Result<u64, GroupError> {
        if !self.log.role().is_primary {
            return Ok(0);
        }
        let mut inner = self.inner();
        match self.refresh(&mut inner) {
            Err(GroupError::CatchingUp { .. }) => return Ok(0),
            other => other?,
        }
        let now = self.now_ms();
        // After a refresh `live` holds exactly the committed groups.
        let names: Vec<String> = inner.live.keys().cloned().collect();
        let mut reclaimed = 0;
        for name in names {
            // A failed park ends this round; the next one looks again.
            reclaimed += self.expire(&mut inner, &name, now)?;
        }
        Ok(reclaimed)
    }

    /// Starts the reaper thread (`vellum-groups`): every
    /// [`GROUP_REAP_MS`] it calls [`Groups::reclaim_expired`]; it ends
    /// within one period once `stop` is set, or after the commit of a
    /// park under way (bounded by the log's commit wait).
    pub fn spawn_reaper(
        self: &Arc<Groups>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let groups = Arc::clone(self);
        std::thread::Builder::new()
            .name("vellum-groups".to_string())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_millis(GROUP_REAP_MS));
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    if let Err(error) = groups.reclaim_expired() {
                        tracing::warn!(%error, "consumer groups: taking back expired leases failed; retrying");
                    }
                }
            })
    }

    /// Expired leases of group `name` go back to waiting, or are parked
    /// past the retry limit; parks marked before and not committed yet
    /// are committed too. Returns how many leases expired.
    fn expire(&self, inner: &mut Inner, name: &str, now_ms: u64) -> Result<u64, GroupError> {
        let retry_max = self.group_state(inner, name)?.config.retry_max;
        let parking = Parking {
            principal: GROUP_SYSTEM_PRINCIPAL.to_string(),
            reason: format!(
                "lease expired on its last of {} deliveries",
                u64::from(retry_max) + 1
            ),
        };
        let expired = inner
            .live
            .entry(name.to_string())
            .or_default()
            .expire(now_ms, retry_max, &parking);
        self.park_marked(inner, name, None)?;
        Ok(expired)
    }

    /// One look: expire leases (parking past the limit), scan the log,
    /// lease what waits.
    fn try_lease(
        &self,
        name: &str,
        consumer: &str,
        max: u64,
    ) -> Result<(Vec<(u64, u32)>, u64), GroupError> {
        let mut inner = self.inner();
        self.refresh(&mut inner)?;
        let lease_ms = self.group_state(&inner, name)?.config.lease_ms;
        let now = self.now_ms();
        self.expire(&mut inner, name, now)?;
        // Disjoint borrows: the committed state read, the in-flight one changed.
        let Inner { state, live, .. } = &mut *inner;
        let group = state.group(name).ok_or_else(|| GroupError::NotFound {
            group: name.to_string(),
        })?;
        let live = live.entry(name.to_string()).or_default();
        self.scan(live, group)?;
        let leased = live.lease(consumer, max, now.saturating_add(lease_ms));
        Ok((leased, lease_ms))
    }

    /// Takes committed log events into the group's window, up to its bound.
    fn scan(&self, live: &mut Live, group: &GroupState) -> Result<(), GroupError> {
        let committed = self.log.committed_events();
        while live.wants_more(group) && live.scan < committed {
            let page = self
                .log
                .read_log(live.scan, READ_EVENTS_MAX)
                .map_err(log_fault)?;
            let Some(last) = page.last().map(|(_, e)| e.position) else {
                break;
            };
            for (stream, event) in &page {
                if !live.wants_more(group) {
                    return Ok(());
                }
                let event_type = match group.config.types.is_empty() {
                    true => None, // Not needed: every type matches.
                    false => event_type(event),
                };
                live.offer(event.position, *stream, event_type.as_deref(), group);
            }
            live.scan = live.scan.max(last + 1);
        }
        Ok(())
    }

    /// The events at the leased positions, read and decrypted.
    fn contents(
        &self,
        name: &str,
        leased: Vec<(u64, u32)>,
    ) -> Result<Vec<DeliveredEvent>, GroupError> {
        let mut out = Vec::with_capacity(leased.len());
        for (position, attempt) in leased {
            let page = self.log.read_log(position, 1).map_err(log_fault)?;
            match page.first().filter(|(_, e)| e.position == position) {
                Some((stream, event)) => out.push(DeliveredEvent {
                    event: super::node::log_event(*stream, event),
                    attempt,
                }),
                None => {
                    // Shredded since it was scanned: it can never be
                    // delivered; it stays leased until its lease expires
                    // and is then parked, so the checkpoint moves on.
                    tracing::warn!(
                        group = name,
                        position,
                        "a leased event is no longer readable (shredded)"
                    );
                }
            }
        }
        Ok(out)
    }

    fn metrics(&self) -> Vec<GroupMetrics> {
        let mut inner = self.inner();
        if let Err(error) = self.catch_up(&mut inner) {
            tracing::warn!(%error, "consumer-group metrics: catching up failed");
        }
        let is_primary = self.log.role().is_primary;
        inner
            .state
            .groups()
            .iter()
            .map(|(name, group)| {
                let live = inner.live.get(name).filter(|_| is_primary);
                GroupMetrics {
                    name: name.clone(),
                    delivered: live.map_or(0, |l| l.delivered),
                    acked: group.acked_total,
                    nacked: live.map_or(0, |l| l.nacked),
                    parked: group.parked.len() as u64,
                    in_flight: live.map_or(0, Live::in_flight),
                }
            })
            .collect()
    }
}

/// The envelope type of a read event (None: no envelope, or no type). The
/// writer checked every envelope and the AEAD vouches for the bytes, so an
/// envelope decodes; one that did not would have no type (never matched).
fn event_type(event: &crate::log::ReadEvent) -> Option<String> {
    if !event.enveloped {
        return None;
    }
    vellum_audit::envelope::Envelope::decode(&event.payload)
        .ok()
        .and_then(|envelope| envelope.event_type)
}

/// `text` cut to at most `max` bytes on a character boundary.
fn clip(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(retry_max: u32) -> GroupState {
        let mut state = GroupsState::default();
        state.apply(
            &GroupEvent {
                v: GROUP_EVENT_VERSION,
                time_ns: 0,
                action: GroupAction::Create,
                group: "g".to_string(),
                principal: "p".to_string(),
                config: Some(GroupConfig {
                    streams: Vec::new(),
                    types: Vec::new(),
                    start: 0,
                    retry_max,
                    lease_ms: 100,
                }),
                positions: Vec::new(),
                checkpoint: None,
                reason: None,
            },
            0,
        );
        state.group("g").expect("created").clone()
    }

    /// Goal: competing consumers never hold the same event at once, and an
    /// expired lease makes the event available to another consumer.
    #[test]
    fn leases_are_exclusive_until_they_expire() {
        let group = group(5);
        let mut live = Live::rebuild(&group);
        for p in 0..6 {
            live.offer(p, 100, None, &group);
        }
        let a = live.lease("a", 4, 100);
        let b = live.lease("b", 4, 100);
        assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(b.iter().map(|x| x.0).collect::<Vec<_>>(), vec![4, 5]);
        assert!(live.lease("b", 4, 100).is_empty());
        assert_eq!(live.expire(99, 5, &why()), 0);
        assert_eq!(live.in_flight(), 6);
        assert_eq!(live.expire(100, 5, &why()), 6);
        assert!(live.parking(None).is_empty(), "retry limit not reached");
        let again = live.lease("b", 10, 300);
        assert_eq!(again.len(), 6);
        assert!(again.iter().all(|(_, attempt)| *attempt == 2));
    }

    /// Goal: an event delivered more than retry_max + 1 times is parked,
    /// not delivered again.
    #[test]
    fn the_retry_limit_parks() {
        let group = group(1);
        let mut live = Live::rebuild(&group);
        live.offer(7, 100, None, &group);
        assert_eq!(live.lease("a", 1, 10), vec![(7, 1)]);
        assert_eq!(live.fail(7, 1, false, &why()), Failed::Retry);
        assert_eq!(live.lease("a", 1, 10), vec![(7, 2)]);
        let mut expiring = live.clone();
        assert_eq!(live.fail(7, 1, false, &why()), Failed::Park);
        assert_eq!(live.parking(None), vec![(why(), vec![7])]);
        assert!(live.lease("a", 1, 10).is_empty(), "marked: never again");
        assert_eq!(expiring.expire(10, 1, &why()), 1);
        assert_eq!(
            expiring.parking(None),
            vec![(why(), vec![7])],
            "expiry past the limit parks too"
        );
        assert!(expiring.lease("a", 1, 10).is_empty());
    }

    fn why() -> Parking {
        Parking {
            principal: "p".to_string(),
            reason: "r".to_string(),
        }
    }

    /// What the next commit of a group event meets.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum CommitFault {
        /// Refused before anything is written (a full queue).
        Refused,
        /// Written and committed, but the caller hears "outcome unknown"
        /// (a commit wait that timed out).
        Unknown,
    }

    impl Groups {
        pub(super) fn take_commit_fault(&self) -> Option<CommitFault> {
            self.commit_faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop_front()
        }

        fn fail_next_commit(&self, fault: CommitFault) {
            self.commit_faults
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push_back(fault);
        }

        pub(super) fn inject(
            &self,
            fault: CommitFault,
            payload: Bytes,
            expected: u64,
        ) -> Result<u64, GroupError> {
            if fault == CommitFault::Unknown {
                self.log
                    .append_groups(&[payload], expected)
                    .expect("the injected unknown outcome commits");
            }
            Err(match fault {
                CommitFault::Refused => {
                    GroupError::Unavailable(crate::server::node::Unavailable::QueueFull)
                }
                CommitFault::Unknown => GroupError::Indeterminate {
                    reason: "injected".to_string(),
                },
            })
        }
    }

    /// Goal: the checkpoint stops at the lowest unsettled event, and moves
    /// to the scan cursor once all are settled.
    #[test]
    fn the_checkpoint_stops_at_the_lowest_unsettled_event() {
        let group = group(5);
        let mut live = Live::rebuild(&group);
        for p in [3, 5, 9] {
            live.offer(p, 100, None, &group);
        }
        live.offer(11, 1, None, &group); // a system stream: never delivered
        live.lease("a", 3, 10);
        assert_eq!(live.checkpoint_after(0, &BTreeSet::from([3])), 5);
        assert_eq!(live.checkpoint_after(0, &BTreeSet::from([5, 9])), 3);
        assert_eq!(live.checkpoint_after(0, &BTreeSet::from([3, 5, 9])), 12);
        assert_eq!(
            live.checkpoint_after(20, &BTreeSet::new()),
            20,
            "never back"
        );
    }

    /// A one-replica log in a fresh directory and its groups.
    fn one_replica() -> (tempfile::TempDir, Arc<LocalLog>, Arc<Groups>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        crate::init::init_data_dir(&data, None).expect("init");
        let (log, _) = LocalLog::open(&data, crate::log::LogOptions::default()).expect("open");
        let log = Arc::new(log);
        let groups = Arc::new(Groups::new(Arc::clone(&log)));
        (dir, log, groups)
    }

    fn info(groups: &Groups) -> crate::server::groups::GroupInfo {
        match groups.call(GroupCall::Get {
            name: "g".to_string(),
        }) {
            Ok(GroupAnswer::Info(info)) => info,
            other => panic!("get: {other:?}"),
        }
    }

    fn pull(groups: &Groups, consumer: &str) -> Vec<(u64, u32)> {
        try_pull(groups, consumer).expect("pull")
    }

    /// (position, attempt) of each event a pull delivered.
    fn try_pull(groups: &Groups, consumer: &str) -> Result<Vec<(u64, u32)>, GroupError> {
        match groups.call(GroupCall::Pull {
            name: "g".to_string(),
            consumer: consumer.to_string(),
            max: 10,
            wait_ms: 0,
        })? {
            GroupAnswer::Delivered(d) => Ok(d
                .events
                .iter()
                .map(|e| (e.event.position, e.attempt))
                .collect()),
            other => panic!("pull: {other:?}"),
        }
    }

    fn create(groups: &Groups, retry_max: u32, lease_ms: u64) {
        let created = groups.call(GroupCall::Create {
            name: "g".to_string(),
            streams: Vec::new(),
            types: Vec::new(),
            start: GroupStart::Beginning,
            retry_max,
            lease_ms,
            principal: "p".to_string(),
        });
        assert!(matches!(created, Ok(GroupAnswer::Info(_))), "{created:?}");
    }

    fn append(log: &LocalLog, count: u64) -> Vec<u64> {
        let events: Vec<Bytes> = (0..count)
            .map(|i| Bytes::from(vec![b'e'; i as usize + 1]))
            .collect();
        let appended = log.append(5001, &events, None, None).expect("append");
        (appended.first_position..appended.first_position + count).collect()
    }

    fn nack(groups: &Groups, positions: &[u64]) -> Result<GroupAnswer, GroupError> {
        groups.call(GroupCall::Nack {
            name: "g".to_string(),
            positions: positions.to_vec(),
            park: false,
            reason: "bad".to_string(),
            principal: "p".to_string(),
        })
    }

    fn parked(groups: &Groups) -> Vec<(u64, String)> {
        match groups.call(GroupCall::Parked {
            name: "g".to_string(),
            from: 0,
            max: 100,
        }) {
            Ok(GroupAnswer::Parked(list)) => list
                .parked
                .into_iter()
                .map(|p| (p.position, p.reason))
                .collect(),
            other => panic!("parked: {other:?}"),
        }
    }

    /// Goal: an event past its retry limit whose park commit fails (a
    /// nack's, then the reaper's after lease expiry) is never delivered
    /// again; the next pull or reaper round commits the park.
    #[test]
    fn a_failed_park_never_delivers_past_the_retry_limit() {
        const LEASE_MS: u64 = 100;
        let (_dir, log, groups) = one_replica();
        create(&groups, 1, LEASE_MS);
        let [nacked, expired] = append(&log, 2)[..] else {
            panic!("two appended")
        };
        for attempt in 1..=2u32 {
            assert_eq!(
                pull(&groups, "a"),
                vec![(nacked, attempt), (expired, attempt)]
            );
            if attempt == 1 {
                assert!(matches!(
                    nack(&groups, &[nacked]),
                    Ok(GroupAnswer::Nacked(_))
                ));
                std::thread::sleep(Duration::from_millis(LEASE_MS + 20));
            }
        }
        groups.fail_next_commit(CommitFault::Refused);
        let refused = nack(&groups, &[nacked]);
        assert!(
            matches!(refused, Err(GroupError::Unavailable(_))),
            "{refused:?}"
        );
        // The pull commits the park again; refused, it leases nothing.
        groups.fail_next_commit(CommitFault::Refused);
        let refused = try_pull(&groups, "b");
        assert!(
            matches!(refused, Err(GroupError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(pull(&groups, "b").is_empty(), "a third delivery");
        assert_eq!(parked(&groups).len(), 1, "the pull committed the park");
        std::thread::sleep(Duration::from_millis(LEASE_MS + 20));
        groups.fail_next_commit(CommitFault::Refused);
        assert!(groups.reclaim_expired().is_err(), "the injected refusal");
        assert_eq!(info(&groups).in_flight, 0, "the lease was taken back");
        assert!(pull(&groups, "b").is_empty(), "a third delivery");
        let parked = parked(&groups);
        assert_eq!(
            parked.iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![nacked, expired]
        );
        assert!(
            parked[0].1.starts_with("nacked past the retry limit"),
            "{parked:?}"
        );
        assert!(parked[1].1.starts_with("lease expired"), "{parked:?}");
        assert_eq!(info(&groups).in_flight, 0);
        assert_eq!(groups.reclaim_expired(), Ok(0));
    }

    /// Goal: a park whose outcome was unknown and which then committed
    /// leaves every other event's lease and attempts as they were (the
    /// in-flight state is carried, not rebuilt), so none is delivered
    /// again early or past its limit.
    #[test]
    fn an_unknown_park_outcome_keeps_other_leases_and_attempts() {
        let (_dir, log, groups) = one_replica();
        create(&groups, 1, 60_000);
        let [poison, held] = append(&log, 2)[..] else {
            panic!("two appended")
        };
        for attempt in 1..=2u32 {
            assert_eq!(pull(&groups, "a"), vec![(poison, attempt), (held, attempt)]);
            if attempt == 1 {
                assert!(nack(&groups, &[poison, held]).is_ok());
            }
        }
        groups.fail_next_commit(CommitFault::Unknown);
        let unknown = nack(&groups, &[poison]);
        assert!(
            matches!(unknown, Err(GroupError::Indeterminate { .. })),
            "{unknown:?}"
        );
        assert!(pull(&groups, "b").is_empty(), "`held` is still leased to a");
        assert_eq!(info(&groups).in_flight, 1);
        match nack(&groups, &[held]) {
            Ok(GroupAnswer::Nacked(n)) => assert_eq!((n.retried, n.parked), (0, 1), "{n:?}"),
            other => panic!("nack: {other:?}"),
        }
        assert_eq!(
            parked(&groups).iter().map(|p| p.0).collect::<Vec<_>>(),
            vec![poison, held]
        );
        assert!(pull(&groups, "b").is_empty());
    }

    /// Goal: without any pull, an expired lease is taken back (nothing in
    /// flight, the event due again) and, after the last delivery the retry
    /// limit allows, parked; a lease not expired yet is left alone.
    #[test]
    fn expired_leases_come_back_without_a_pull() {
        const LEASE_MS: u64 = 100;
        let (_dir, log, groups) = one_replica();
        let created = groups.call(GroupCall::Create {
            name: "g".to_string(),
            streams: Vec::new(),
            types: Vec::new(),
            start: GroupStart::Beginning,
            retry_max: 1,
            lease_ms: LEASE_MS,
            principal: "p".to_string(),
        });
        assert!(matches!(created, Ok(GroupAnswer::Info(_))), "{created:?}");
        let appended = log
            .append(
                5001,
                &[Bytes::from_static(b"a"), Bytes::from_static(b"b")],
                None,
                None,
            )
            .expect("append");
        let positions = [appended.first_position, appended.first_position + 1];
        for attempt in 1..=2u32 {
            let leased_at = Instant::now();
            let want: Vec<(u64, u32)> = positions.iter().map(|p| (*p, attempt)).collect();
            assert_eq!(pull(&groups, if attempt == 1 { "a" } else { "b" }), want);
            if leased_at.elapsed() < Duration::from_millis(LEASE_MS / 2) {
                assert_eq!(groups.reclaim_expired(), Ok(0), "the leases still run");
                assert_eq!(info(&groups).in_flight, 2);
            }
            std::thread::sleep(Duration::from_millis(LEASE_MS + 20));
            assert_eq!(groups.reclaim_expired(), Ok(2), "attempt {attempt}");
            let info = info(&groups);
            assert_eq!(info.in_flight, 0, "attempt {attempt}: {info:?}");
            let parked = if attempt == 1 { 0 } else { 2 };
            assert_eq!(info.parked, parked, "attempt {attempt}: {info:?}");
        }
        assert!(info(&groups).checkpoint > positions[1]);
        assert_eq!(groups.reclaim_expired(), Ok(0), "nothing left to take back");
        assert!(pull(&groups, "c").is_empty(), "parked events are not due");
    }

    /// Goal: the reaper thread ends within about one period once told to
    /// stop (a replica's shutdown waits for it).
    #[test]
    fn the_reaper_stops_promptly() {
        let (_dir, _log, groups) = one_replica();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reaper = groups.spawn_reaper(Arc::clone(&stop)).expect("spawn");
        std::thread::sleep(Duration::from_millis(GROUP_REAP_MS + 50));
        assert!(!reaper.is_finished(), "it runs until told to stop");
        let asked = Instant::now();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let bound = Duration::from_millis(GROUP_REAP_MS + 1000);
        while !reaper.is_finished() {
            assert!(asked.elapsed() < bound, "the reaper did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        reaper.join().expect("the reaper ends without a panic");
    }

    /// Goal: a rebuilt state skips what is done and delivers replays again.
    #[test]
    fn a_rebuild_skips_done_events_and_keeps_replays() {
        let mut group = group(5);
        group.checkpoint = 4;
        group.acked_above.insert(6);
        group.replaying.insert(1);
        let mut live = Live::rebuild(&group);
        for p in 4..8 {
            live.offer(p, 100, None, &group);
        }
        let leased: Vec<u64> = live.lease("a", 10, 10).iter().map(|x| x.0).collect();
        assert_eq!(leased, vec![1, 4, 5, 7]);
    }
}
