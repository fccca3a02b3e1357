//! `/metrics` in the Prometheus text exposition format: the node's counters
//! plus the server's own request counts by route and status class.
//!
//! The request counters are a fixed table of atomics (one row per entry of
//! [`ROUTES`] plus one for unmatched paths, one column per status class), so
//! counting never allocates and the label set cannot grow with hostile input.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::node::NodeMetrics;
use super::routes::{AppState, ROUTES, route_index, run_blocking};

/// Rows of the request table: every route plus "unmatched".
const ROUTE_SLOTS: usize = ROUTES.len() + 1;
/// Status classes 1xx to 5xx.
const CLASS_SLOTS: usize = 5;

/// Request counts by route and status class, and failed logins.
#[derive(Debug)]
pub struct Counters {
    requests: [[AtomicU64; CLASS_SLOTS]; ROUTE_SLOTS],
    failed_logins: AtomicU64,
    failed_logins_limited: AtomicU64,
    /// Break-glass grants opened.
    break_glass_opened: AtomicU64,
    /// Requests allowed only by an open break-glass grant.
    break_glass_accesses: AtomicU64,
    /// Requests refused 403 `scope_denied`.
    scope_denied: AtomicU64,
    /// New versions of the TLS files swapped in.
    tls_reloads: AtomicU64,
    /// New versions of the TLS files refused (the old configuration stayed).
    tls_reloads_refused: AtomicU64,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters::new()
    }
}

impl Counters {
    /// All zero.
    pub fn new() -> Counters {
        Counters {
            requests: [const { [const { AtomicU64::new(0) }; CLASS_SLOTS] }; ROUTE_SLOTS],
            failed_logins: AtomicU64::new(0),
            failed_logins_limited: AtomicU64::new(0),
            break_glass_opened: AtomicU64::new(0),
            break_glass_accesses: AtomicU64::new(0),
            scope_denied: AtomicU64::new(0),
            tls_reloads: AtomicU64::new(0),
            tls_reloads_refused: AtomicU64::new(0),
        }
    }

    /// Counts one answer; `route` is an index in [`ROUTES`] or `ROUTES.len()`
    /// for unmatched paths.
    pub fn record(&self, route: usize, status: StatusCode) {
        let row = route.min(ROUTE_SLOTS - 1);
        let class = usize::from(status.as_u16() / 100).clamp(1, CLASS_SLOTS) - 1;
        self.requests[row][class].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one failed login; `limited`: it was answered 429.
    pub fn record_failed_login(&self, limited: bool) {
        self.failed_logins.fetch_add(1, Ordering::Relaxed);
        if limited {
            self.failed_logins_limited.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Failed logins counted, and how many of them were answered 429.
    pub fn failed_logins(&self) -> (u64, u64) {
        (
            self.failed_logins.load(Ordering::Relaxed),
            self.failed_logins_limited.load(Ordering::Relaxed),
        )
    }

    /// The count for one route and status class (1 to 5).
    /// Counts a break-glass grant opened.
    pub fn record_break_glass_opened(&self) {
        self.break_glass_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request allowed only by a break-glass grant.
    pub fn record_break_glass_access(&self) {
        self.break_glass_accesses.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request refused for its token's scope.
    pub fn record_scope_denied(&self) {
        self.scope_denied.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a new version of the TLS files: swapped in, or refused.
    pub fn record_tls_reload(&self, loaded: bool) {
        let counter = match loaded {
            true => &self.tls_reloads,
            false => &self.tls_reloads_refused,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// (TLS reloads, TLS reloads refused) so far.
    pub fn tls_reloads(&self) -> (u64, u64) {
        (
            self.tls_reloads.load(Ordering::Relaxed),
            self.tls_reloads_refused.load(Ordering::Relaxed),
        )
    }

    /// (grants opened, accesses under a grant, scope refusals) so far.
    pub fn scope_counts(&self) -> (u64, u64, u64) {
        (
            self.break_glass_opened.load(Ordering::Relaxed),
            self.break_glass_accesses.load(Ordering::Relaxed),
            self.scope_denied.load(Ordering::Relaxed),
        )
    }

    pub fn get(&self, route: usize, class: usize) -> u64 {
        self.requests[route.min(ROUTE_SLOTS - 1)][class.clamp(1, CLASS_SLOTS) - 1]
            .load(Ordering::Relaxed)
    }
}

/// Route layer: counts each answer of a matched route.
pub(crate) async fn count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let index = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| route_index(request.method(), p.as_str()))
        .unwrap_or(ROUTES.len());
    let response = next.run(request).await;
    state.counters.record(index, response.status());
    response
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let read = run_blocking(&state, |node| {
        let groups = match node.group(super::groups::GroupCall::Metrics) {
            Ok(super::groups::GroupAnswer::Metrics(groups)) => groups,
            _ => Vec::new(),
        };
        (node.metrics(), groups)
    });
    match read.await {
        Ok((node, groups)) => {
            let mut text = render(&node, &state.counters);
            render_groups(&mut text, &groups);
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                text,
            )
                .into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// One series per witness (label `witness`, its key name, escaped).
fn render_witnesses(out: &mut String, witnesses: &[super::node::WitnessMetrics]) {
    type Pick = fn(&super::node::WitnessMetrics) -> u64;
    let families: [(&str, &str, &str, Pick); 4] = [
        (
            "vellum_witness_cosigned_size",
            "gauge",
            "Tree size of the newest witness cosignature kept.",
            |w| w.cosigned_size,
        ),
        (
            "vellum_witness_cosignatures_total",
            "counter",
            "Witness cosignatures verified and kept.",
            |w| w.cosignatures,
        ),
        (
            "vellum_witness_failures_total",
            "counter",
            "Witness rounds that ended without a cosignature.",
            |w| w.failures,
        ),
        (
            "vellum_witness_rejected_total",
            "counter",
            "Witness answers refused (malformed, impossible size, bad cosignature).",
            |w| w.rejected,
        ),
    ];
    if witnesses.is_empty() {
        return;
    }
    for (name, kind, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for witness in witnesses {
            let label = witness.name.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(out, "{name}{{witness=\"{label}\"}} {}", pick(witness));
        }
    }
}

/// One series per consumer group (label `group`: names are restricted
/// to `A-Z a-z 0-9 - _ .`, nothing to escape).
pub fn render_groups(out: &mut String, groups: &[super::groups::GroupMetrics]) {
    type Pick = fn(&super::groups::GroupMetrics) -> u64;
    let families: [(&str, &str, &str, Pick); 5] = [
        (
            "vellum_group_delivered_total",
            "counter",
            "Consumer-group deliveries by this replica while primary (redeliveries included).",
            |g| g.delivered,
        ),
        (
            "vellum_group_acked_total",
            "counter",
            "Consumer-group events acked (committed).",
            |g| g.acked,
        ),
        (
            "vellum_group_nacked_total",
            "counter",
            "Consumer-group nacks and expired leases seen by this replica while primary.",
            |g| g.nacked,
        ),
        (
            "vellum_group_parked",
            "gauge",
            "Consumer-group events parked now (committed).",
            |g| g.parked,
        ),
        (
            "vellum_group_in_flight",
            "gauge",
            "Consumer-group events leased to a consumer now (the primary's memory).",
            |g| g.in_flight,
        ),
    ];
    if groups.is_empty() {
        return;
    }
    for (name, kind, help, pick) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for group in groups {
            let _ = writeln!(out, "{name}{{group=\"{}\"}} {}", group.name, pick(group));
        }
    }
}

/// The exposition text.
pub fn render(node: &NodeMetrics, counters: &Counters) -> String {
    let gauges: [(&str, &str, &str, u64); 9] = [
        ("vellum_commit", "gauge", "Committed VSR ops.", node.commit),
        ("vellum_op", "gauge", "Highest op in the journal.", node.op),
        ("vellum_view", "gauge", "Current VSR view.", node.view),
        (
            "vellum_events",
            "gauge",
            "Committed events (tree size).",
            node.events,
        ),
        (
            "vellum_messages_sent_total",
            "counter",
            "Replica messages sent.",
            node.messages_sent,
        ),
        (
            "vellum_messages_received_total",
            "counter",
            "Replica messages received.",
            node.messages_received,
        ),
        (
            "vellum_frames_dropped_total",
            "counter",
            "Replica frames dropped (bad frame, unknown peer, full queue).",
            node.frames_dropped,
        ),
        (
            "vellum_syncs_total",
            "counter",
            "Storage fdatasyncs since start.",
            node.syncs,
        ),
        (
            "vellum_signing_failures_total",
            "counter",
            "Checkpoint signatures this replica's signing key (a file or a PKCS#11 token) failed to make; while it fails the replica acknowledges and certifies nothing.",
            node.signing_failures,
        ),
    ];
    let (failed, limited) = counters.failed_logins();
    let logins: [(&str, &str, &str, u64); 2] = [
        (
            "vellum_failed_logins_total",
            "counter",
            "Requests to protected routes whose bearer token did not authenticate.",
            failed,
        ),
        (
            "vellum_failed_logins_limited_total",
            "counter",
            "Failed logins answered 429 (over the per-address or per-token-prefix limit).",
            limited,
        ),
    ];
    let (opened, accesses, denied) = counters.scope_counts();
    let scopes: [(&str, &str, &str, u64); 3] = [
        (
            "vellum_break_glass_opened_total",
            "counter",
            "Break-glass (emergency access) grants opened.",
            opened,
        ),
        (
            "vellum_break_glass_accesses_total",
            "counter",
            "Requests allowed only by an open break-glass grant.",
            accesses,
        ),
        (
            "vellum_scope_denied_total",
            "counter",
            "Requests refused 403 scope_denied (stream outside the token's scope).",
            denied,
        ),
    ];
    let (tls_reloads, tls_refused) = counters.tls_reloads();
    let tls: [(&str, &str, &str, u64); 2] = [
        (
            "vellum_tls_reloads_total",
            "counter",
            "New versions of the client API's TLS files (certificate, key, CAs) swapped in without a restart.",
            tls_reloads,
        ),
        (
            "vellum_tls_reloads_refused_total",
            "counter",
            "New versions of the TLS files refused (key mismatch, unparsable, expired, untrusted); the old configuration stayed.",
            tls_refused,
        ),
    ];
    let custody: [(&str, &str, &str, u64); 5] = [
        (
            "vellum_shreds_total",
            "counter",
            "Committed shreds this replica applied (its copies of the stream's data keys destroyed).",
            node.shreds,
        ),
        (
            "vellum_legal_holds_total",
            "counter",
            "Committed legal holds this replica applied.",
            node.holds,
        ),
        (
            "vellum_legal_hold_releases_total",
            "counter",
            "Committed legal hold releases this replica applied.",
            node.releases,
        ),
        (
            "vellum_retention_floors_total",
            "counter",
            "Committed retention floors this replica applied.",
            node.retentions,
        ),
        (
            "vellum_custody_refused_total",
            "counter",
            "Key-custody requests refused by a rule (hold, retention floor, shredded, system stream).",
            node.custody_refused,
        ),
    ];
    let mut out = String::new();
    for (name, kind, help, value) in gauges
        .into_iter()
        .chain(logins)
        .chain(scopes)
        .chain(tls)
        .chain(custody)
    {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
    render_witnesses(&mut out, &node.witnesses);
    let name = "vellum_api_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Client API answers by route and status class."
    );
    let _ = writeln!(out, "# TYPE {name} counter");
    for row in 0..ROUTE_SLOTS {
        let (method, path) = ROUTES
            .get(row)
            .map_or(("", "unmatched"), |r| (r.method, r.path));
        for class in 1..=CLASS_SLOTS {
            let value = counters.get(row, class);
            let _ = writeln!(
                out,
                "{name}{{method=\"{method}\",route=\"{path}\",class=\"{class}xx\"}} {value}"
            );
        }
    }
    out
}
