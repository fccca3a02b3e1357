//! Failed logins: rate limits and the aggregation of their trail events.
//!
//! Why it exists: every refused request is recorded in the access trail
//! (P7), so before this anyone who could reach the API could grow the
//! trail (and the log) by one event per bad token, and try tokens as fast
//! as the server answered. This table bounds both. It is consulted only
//! when authentication failed: a valid token never touches it, so it is
//! never slowed nor refused by it, even from an address under a flood.
//!
//! Two limits, each over a fixed window that opens with a key's first
//! failure:
//! - per **source** (the client's IP address; an IPv6 address by its /64,
//!   the block one host or customer usually gets): more than
//!   [`LoginLimits::per_source_max`] failures in a window are answered 429;
//! - per **token prefix** (the first [`TOKEN_PREFIX_CHARS`] characters of
//!   the presented token, across all sources): more than
//!   [`LoginLimits::per_prefix_max`] failures are answered 429. The prefix
//!   lives only in this table's memory; it is never logged nor recorded.
//!
//! Trail events, per (source, window): the window's first failure is
//! recorded at once, as before (its answer waits for it). Later failures
//! are only counted; their sum becomes ONE aggregate event with `count`
//! when the window is closed — on the source's next failure after it, by
//! the server's sweep ([`FailedLogins::sweep`], every
//! [`LOGIN_SWEEP_MS`]), when the source is evicted to make room, or at
//! shutdown ([`FailedLogins::drain_all`]). So a flood from one source adds
//! at most two events per window, and their counts sum to its failures.
//!
//! Bounded: at most [`LoginLimits::sources_max`] sources and
//! [`LoginLimits::prefixes_max`] prefixes are tracked (the oldest window is
//! evicted, its count flushed first), and at most `sources_max` aggregates
//! wait to be recorded. The table is pure: callers pass the time in; it
//! does no I/O.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessAction, AccessEvent};

/// Characters of a presented bearer token that key the per-prefix limit.
/// Generated tokens are `vlm_` + 64 hex digits, so this is the `vlm_` tag
/// and 16 bits of the random part: enough to tell a replayed token's
/// failures apart from others', far too little to help guess one (a
/// token has 256 random bits).
pub const TOKEN_PREFIX_CHARS: usize = 8;
/// Failed logins one source may make in a window before it is answered 429.
pub const FAILED_LOGINS_PER_SOURCE_MAX: u64 = 20;
/// Failed logins with one token prefix, from all sources together, in a
/// window before they are answered 429.
pub const FAILED_LOGINS_PER_PREFIX_MAX: u64 = 20;
/// Length of a rate-limit and aggregation window, from a key's first failure.
pub const FAILED_LOGIN_WINDOW_MS: u64 = 60_000;
/// Most sources tracked at once (each holds one window and its count).
pub const FAILED_LOGIN_SOURCES_MAX: usize = 4096;
/// Most token prefixes tracked at once.
pub const FAILED_LOGIN_PREFIXES_MAX: usize = 4096;
/// How often the server flushes the aggregates of closed windows.
pub const LOGIN_SWEEP_MS: u64 = 5_000;

/// The limits of a [`FailedLogins`] table; [`LoginLimits::default`] holds
/// the constants above (tests shrink them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// [`FAILED_LOGINS_PER_SOURCE_MAX`].
    pub per_source_max: u64,
    /// [`FAILED_LOGINS_PER_PREFIX_MAX`].
    pub per_prefix_max: u64,
    /// [`FAILED_LOGIN_WINDOW_MS`].
    pub window_ms: u64,
    /// [`FAILED_LOGIN_SOURCES_MAX`].
    pub sources_max: usize,
    /// [`FAILED_LOGIN_PREFIXES_MAX`].
    pub prefixes_max: usize,
}

impl Default for LoginLimits {
    fn default() -> LoginLimits {
        LoginLimits {
            per_source_max: FAILED_LOGINS_PER_SOURCE_MAX,
            per_prefix_max: FAILED_LOGINS_PER_PREFIX_MAX,
            window_ms: FAILED_LOGIN_WINDOW_MS,
            sources_max: FAILED_LOGIN_SOURCES_MAX,
            prefixes_max: FAILED_LOGIN_PREFIXES_MAX,
        }
    }
}

/// Where failed logins come from: a client IP address (IPv6 by its /64),
/// or unknown (a request without a peer address: only in-process tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address, or an IPv6 address with its last 64 bits zeroed.
    Ip(IpAddr),
    /// No address known.
    Unknown,
}

impl Source {
    /// The source of `ip`: itself for IPv4 (and IPv4-mapped IPv6), its /64
    /// for IPv6.
    pub fn of(ip: IpAddr) -> Source {
        match ip {
            IpAddr::V4(v4) => Source::Ip(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::Ip(IpAddr::V4(v4)),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    Source::Ip(IpAddr::V6(Ipv6Addr::from(bits)))
                }
            },
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Ip(IpAddr::V6(v6)) => write!(f, "{v6}/64"),
            Source::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Source::Unknown => f.write_str("unknown"),
        }
    }
}

/// The key of the per-prefix limit: at most [`TOKEN_PREFIX_CHARS`]
/// characters of `token`, never the whole token when it is longer than
/// twice that (a shorter token is cut to half its length), so the table
/// never holds a presented token whole.
pub fn token_prefix(token: &str) -> String {
    let chars = token.chars().count();
    let keep = TOKEN_PREFIX_CHARS.min(chars / 2);
    token.chars().take(keep).collect()
}

/// Failed logins after the first of one source's window, to be recorded as
/// one trail event with `count`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Aggregate {
    /// Whose.
    pub source: Source,
    /// Failed logins counted (at least 1).
    pub count: u64,
    /// How many of them were answered 429.
    pub limited: u64,
    /// Wall-clock time of the first and the last of them, unix ns.
    pub first_ns: u64,
    /// See `first_ns`.
    pub last_ns: u64,
}

impl Aggregate {
    /// The access-trail event of this aggregate: `auth_failed` by
    /// `anonymous` from the source, with `count` and, in `detail`, how many
    /// were answered 429 and when the first and last came.
    pub fn to_event(&self) -> AccessEvent {
        AccessEvent {
            v: ACCESS_EVENT_VERSION,
            time_ns: self.first_ns,
            principal: "anonymous".to_string(),
            role: "none".to_string(),
            action: AccessAction::AuthFailed,
            stream: None,
            from: None,
            to: None,
            purpose: None,
            outcome: "denied: repeated failed logins".to_string(),
            remote: Some(self.source.to_string()),
            detail: Some(format!(
                "failed logins after the first of a window: count={} answered_429={} \
                 first_ns={} last_ns={}",
                self.count, self.limited, self.first_ns, self.last_ns
            )),
            recipient: None,
            description: None,
            streams: None,
            streams_truncated: false,
            count: Some(self.count),
            break_glass: None,
        }
    }
}

/// What to do with one failed login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Record this failure's own trail event now: it opened its source's
    /// window. Otherwise it was counted into the window's aggregate.
    pub record_now: bool,
    /// Answer 429 with `Retry-After` of this many seconds (over a limit);
    /// None: answer the authentication error (401).
    pub retry_after_s: Option<u64>,
}

#[derive(Debug)]
struct SourceWindow {
    start: Instant,
    failures: u64,
    pending: Option<Aggregate>,
}

#[derive(Debug)]
struct PrefixWindow {
    start: Instant,
    failures: u64,
}

/// The failed-login table of one server (module docs).
#[derive(Debug)]
pub struct FailedLogins {
    limits: LoginLimits,
    sources: HashMap<Source, SourceWindow>,
    prefixes: HashMap<String, PrefixWindow>,
    /// Aggregates of closed or evicted windows not yet recorded, oldest first.
    backlog: VecDeque<Aggregate>,
}

impl FailedLogins {
    /// An empty table with `limits`.
    pub fn new(limits: LoginLimits) -> FailedLogins {
        FailedLogins {
            limits,
            sources: HashMap::new(),
            prefixes: HashMap::new(),
            backlog: VecDeque::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> LoginLimits {
        self.limits
    }

    /// Sources tracked now (at most `sources_max`).
    pub fn sources_tracked(&self) -> usize {
        self.sources.len()
    }

    /// Token prefixes tracked now (at most `prefixes_max`).
    pub fn prefixes_tracked(&self) -> usize {
        self.prefixes.len()
    }

    fn window(&self) -> Duration {
        Duration::from_millis(self.limits.window_ms)
    }

    /// Counts one failed login from `source` presenting a token with
    /// `prefix` (None: no token) at `now` (wall clock `now_ns`), and says
    /// how to answer and whether to record it now. Aggregates that became
    /// due are left in the backlog ([`FailedLogins::take_due`]).
    pub fn fail(
        &mut self,
        source: Source,
        prefix: Option<&str>,
        now: Instant,
        now_ns: u64,
    ) -> Verdict {
        let window = self.window();
        self.close_if_over(source, now);
        if !self.sources.contains_key(&source) && self.sources.len() >= self.limits.sources_max {
            self.evict_oldest_source();
        }
        let entry = self.sources.entry(source).or_insert(SourceWindow {
            start: now,
            failures: 0,
            pending: None,
        });
        entry.failures += 1;
        let record_now = entry.failures == 1;
        let source_over = entry.failures > self.limits.per_source_max;
        let source_retry = remaining(entry.start + window, now);
        let prefix_retry = prefix.and_then(|p| self.count_prefix(p, now));
        let retry_after = [source_over.then_some(source_retry), prefix_retry]
            .into_iter()
            .flatten()
            .max()
            .map(|d| d.as_millis().div_ceil(1000).max(1))
            .map(|s| u64::try_from(s).unwrap_or(u64::MAX));
        if !record_now {
            let entry = self
                .sources
                .get_mut(&source)
                .expect("the source was inserted above");
            count_into(&mut entry.pending, source, retry_after.is_some(), now_ns);
        }
        Verdict {
            record_now,
            retry_after_s: retry_after,
        }
    }

    /// Counts a failure whose own trail event could not be recorded into
    /// its source's aggregate, so the trail's counts still add up.
    pub fn unrecorded(&mut self, source: Source, now_ns: u64) {
        match self.sources.get_mut(&source) {
            Some(entry) => count_into(&mut entry.pending, source, false, now_ns),
            None => self.push_backlog(Aggregate {
                source,
                count: 1,
                limited: 0,
                first_ns: now_ns,
                last_ns: now_ns,
            }),
        }
    }

    /// The aggregates due to be recorded (of closed or evicted windows),
    /// oldest first; the backlog is empty afterwards.
    pub fn take_due(&mut self) -> Vec<Aggregate> {
        self.backlog.drain(..).collect()
    }

    /// Puts aggregates that could not be recorded back, to be tried again
    /// with the next ones due; beyond the bound the oldest are dropped and
    /// returned (the caller logs them).
    pub fn requeue(&mut self, aggregates: Vec<Aggregate>) -> Vec<Aggregate> {
        for aggregate in aggregates.into_iter().rev() {
            self.backlog.push_front(aggregate);
        }
        self.trim_backlog()
    }

    /// Closes every window older than the window length at `now` (its
    /// aggregate joins the backlog; the source and prefix are forgotten)
    /// and returns the aggregates due.
    pub fn sweep(&mut self, now: Instant) -> Vec<Aggregate> {
        let window = self.window();
        let closed: Vec<Source> = self
            .sources
            .iter()
            .filter(|(_, w)| now >= w.start + window)
            .map(|(s, _)| *s)
            .collect();
        for source in closed {
            if let Some(entry) = self.sources.remove(&source) {
                self.push_backlog_opt(entry.pending);
            }
        }
        self.prefixes.retain(|_, w| now < w.start + window);
        self.take_due()
    }

    /// Every aggregate, of open windows too (at shutdown: nothing counted
    /// is left unrecorded if the trail still takes it).
    pub fn drain_all(&mut self) -> Vec<Aggregate> {
        let pending: Vec<Aggregate> = self
            .sources
            .drain()
            .filter_map(|(_, entry)| entry.pending)
            .collect();
        for aggregate in pending {
            self.push_backlog(aggregate);
        }
        self.prefixes.clear();
        self.take_due()
    }

    fn close_if_over(&mut self, source: Source, now: Instant) {
        let window = self.window();
        let over = self
            .sources
            .get(&source)
            .is_some_and(|w| now >= w.start + window);
        if over && let Some(entry) = self.sources.remove(&source) {
            self.push_backlog_opt(entry.pending);
        }
    }

    fn evict_oldest_source(&mut self) {
        let oldest = self
            .sources
            .iter()
            .min_by_key(|(_, w)| w.start)
            .map(|(s, _)| *s);
        if let Some(entry) = oldest.and_then(|s| self.sources.remove(&s)) {
            self.push_backlog_opt(entry.pending);
        }
    }

    /// Counts one failure for `prefix`; Some(time left in its window) when
    /// it is over the per-prefix limit.
    fn count_prefix(&mut self, prefix: &str, now: Instant) -> Option<Duration> {
        let window = self.window();
        if self
            .prefixes
            .get(prefix)
            .is_some_and(|w| now >= w.start + window)
        {
            self.prefixes.remove(prefix);
        }
        if !self.prefixes.contains_key(prefix) && self.prefixes.len() >= self.limits.prefixes_max {
            let oldest = self
                .prefixes
                .iter()
                .min_by_key(|(_, w)| w.start)
                .map(|(p, _)| p.clone());
            if let Some(oldest) = oldest {
                self.prefixes.remove(&oldest);
            }
        }
        let entry = self
            .prefixes
            .entry(prefix.to_string())
            .or_insert(PrefixWindow {
                start: now,
                failures: 0,
            });
        entry.failures += 1;
        (entry.failures > self.limits.per_prefix_max).then(|| remaining(entry.start + window, now))
    }

    fn push_backlog_opt(&mut self, aggregate: Option<Aggregate>) {
        if let Some(aggregate) = aggregate {
            self.push_backlog(aggregate);
        }
    }

    fn push_backlog(&mut self, aggregate: Aggregate) {
        self.backlog.push_back(aggregate);
        for lost in self.trim_backlog() {
            tracing::error!(
                source = %lost.source,
                count = lost.count,
                "failed-login aggregate dropped: too many waiting to be recorded"
            );
        }
    }

    fn trim_backlog(&mut self) -> Vec<Aggregate> {
        let mut dropped = Vec::new();
        while self.backlog.len() > self.limits.sources_max {
            if let Some(oldest) = self.backlog.pop_front() {
                dropped.push(oldest);
            }
        }
        dropped
    }
}

/// Time from `now` until `end`, at least a millisecond (so Retry-After is
/// never 0).
fn remaining(end: Instant, now: Instant) -> Duration {
    end.saturating_duration_since(now)
        .max(Duration::from_millis(1))
}

fn count_into(pending: &mut Option<Aggregate>, source: Source, limited: bool, now_ns: u64) {
    let aggregate = pending.get_or_insert(Aggregate {
        source,
        count: 0,
        limited: 0,
        first_ns: now_ns,
        last_ns: now_ns,
    });
    aggregate.count += 1;
    aggregate.limited += u64::from(limited);
    aggregate.last_ns = aggregate.last_ns.max(now_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LoginLimits {
        LoginLimits {
            per_source_max: 3,
            per_prefix_max: 5,
            window_ms: 1_000,
            sources_max: 4,
            prefixes_max: 2,
        }
    }

    fn ip(text: &str) -> Source {
        Source::of(text.parse().expect("an address"))
    }

    // Goal: one source's flood is answered 401 up to the limit and 429
    // after, only the first failure is recorded at once, and the window's
    // aggregate comes due when the window closes, with the rest counted.
    #[test]
    fn a_flood_from_one_source_is_limited_and_aggregated() {
        let mut table = FailedLogins::new(limits());
        let t0 = Instant::now();
        let source = ip("10.0.0.1");
        let verdicts: Vec<Verdict> = (0..10)
            .map(|i| table.fail(source, None, t0 + Duration::from_millis(i), i))
            .collect();
        assert!(verdicts[0].record_now);
        assert!(verdicts[1..].iter().all(|v| !v.record_now));
        assert!(verdicts[..3].iter().all(|v| v.retry_after_s.is_none()));
        assert!(verdicts[3..].iter().all(|v| v.retry_after_s == Some(1)));
        assert!(table.take_due().is_empty(), "nothing due in an open window");
        assert!(table.sweep(t0 + Duration::from_millis(999)).is_empty());
        let due = table.sweep(t0 + Duration::from_millis(1_000));
        assert_eq!(
            due,
            vec![Aggregate {
                source,
                count: 9,
                limited: 7,
                first_ns: 1,
                last_ns: 9
            }]
        );
        assert_eq!(table.sources_tracked(), 0);
    }

    // Goal: the next failure after a closed window flushes its aggregate
    // and opens a new window whose first failure is recorded at once.
    #[test]
    fn the_next_failure_after_a_window_flushes_it() {
        let mut table = FailedLogins::new(limits());
        let t0 = Instant::now();
        let source = ip("10.0.0.1");
        for i in 0..5 {
            table.fail(source, None, t0, i);
        }
        let later = table.fail(source, None, t0 + Duration::from_secs(2), 99);
        assert!(later.record_now && later.retry_after_s.is_none());
        let due = table.take_due();
        assert_eq!(due.iter().map(|a| a.count).collect::<Vec<_>>(), vec![4]);
    }

    // Goal: one token prefix is limited across sources, each of which is
    // under its own limit; other prefixes are not.
    #[test]
    fn one_prefix_is_limited_across_sources() {
        let mut table = FailedLogins::new(LoginLimits {
            sources_max: 100,
            ..limits()
        });
        let t0 = Instant::now();
        let answers: Vec<Option<u64>> = (0..8)
            .map(|i| {
                let source = ip(&format!("10.0.1.{i}"));
                table.fail(source, Some("vlm_abcd"), t0, 0).retry_after_s
            })
            .collect();
        assert!(answers[..5].iter().all(Option::is_none), "{answers:?}");
        assert!(answers[5..].iter().all(|a| *a == Some(1)), "{answers:?}");
        let other = table.fail(ip("10.0.2.1"), Some("vlm_ef01"), t0, 0);
        assert_eq!(other.retry_after_s, None);
    }

    // Goal: the tables stay bounded under many sources and prefixes, and
    // an evicted source's count is not lost but comes due.
    #[test]
    fn tracked_sources_and_prefixes_are_bounded() {
        let mut table = FailedLogins::new(limits());
        let t0 = Instant::now();
        let mut failures = 0u64;
        let mut due = 0u64;
        for i in 0..100u64 {
            let source = ip(&format!("10.1.{}.{}", i / 256, i % 256));
            let prefix = format!("p{i}");
            for _ in 0..3 {
                let at = t0 + Duration::from_millis(i);
                table.fail(source, Some(&prefix), at, i);
                failures += 1;
            }
            assert!(table.sources_tracked() <= limits().sources_max);
            assert!(table.prefixes_tracked() <= limits().prefixes_max);
            // The guard takes what is due after every failure.
            due += table.take_due().iter().map(|a| a.count).sum::<u64>();
        }
        let recorded_at_once = 100;
        assert!(due > 0, "evicted sources' counts came due");
        let rest: u64 = table.drain_all().iter().map(|a| a.count).sum();
        assert_eq!(recorded_at_once + due + rest, failures);
        assert_eq!(table.sources_tracked(), 0);
    }

    // Goal: IPv6 addresses of one /64 are one source, IPv4-mapped ones
    // are their IPv4 address.
    #[test]
    fn ipv6_sources_are_their_slash_64() {
        assert_eq!(ip("2001:db8:1:2:aaaa::1"), ip("2001:db8:1:2:bbbb::9"));
        assert_ne!(ip("2001:db8:1:2::1"), ip("2001:db8:1:3::1"));
        assert_eq!(ip("::ffff:10.0.0.1"), ip("10.0.0.1"));
        assert_eq!(ip("2001:db8:1:2::1").to_string(), "2001:db8:1:2::/64");
    }

    // Goal: the prefix is never the whole token.
    #[test]
    fn token_prefix_never_holds_the_whole_token() {
        assert_eq!(
            token_prefix(&format!("vlm_{}", "ab".repeat(32))),
            "vlm_abab"
        );
        assert_eq!(token_prefix("vlm_wrong"), "vlm_");
        assert_eq!(token_prefix("x"), "");
        assert_eq!(token_prefix("héllo-wörld-token"), "héllo-wö");
    }

    // Goal: aggregates that could not be recorded wait, bounded, and come
    // due again, oldest first.
    #[test]
    fn requeued_aggregates_come_due_again_bounded() {
        let mut table = FailedLogins::new(limits());
        let aggregate = |n: u64| Aggregate {
            source: Source::Unknown,
            count: n,
            limited: 0,
            first_ns: n,
            last_ns: n,
        };
        let dropped = table.requeue((1..=6).map(aggregate).collect());
        assert_eq!(dropped, vec![aggregate(1), aggregate(2)]);
        assert_eq!(table.take_due(), (3..=6).map(aggregate).collect::<Vec<_>>());
        table.unrecorded(Source::Unknown, 7);
        let mut one = aggregate(1);
        (one.first_ns, one.last_ns) = (7, 7);
        assert_eq!(table.take_due(), vec![one]);
    }
}
