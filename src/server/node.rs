//! What the client API needs from the replica it runs beside. The server
//! only talks to this trait, so it is tested against a fake and the real
//! replica (`crate::replica`) implements it. Every method may block (disk,
//! waiting for a commit): the server calls them on blocking threads.

use bytes::Bytes;

use vellum_compliance::trail::AccessEvent;

use crate::api::{AppendReceipt, ConsistencyAnswer, Health, LogEvent};

/// Why a node call failed. The server maps each kind to one status code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// Caller's mistake (bad stream id, bad range, stale request number): 422/400.
    #[error("{0}")]
    Refused(String),
    /// No such stream / event / certificate: 404.
    #[error("{0}")]
    NotFound(String),
    /// The stream's length was not the expected offset; nothing was written: 409.
    #[error("stream {stream} has {actual} events, the request expected {expected}")]
    WrongExpectedOffset {
        /// The stream.
        stream: u64,
        /// What the caller expected.
        expected: u64,
        /// The stream's length.
        actual: u64,
    },
    /// The idempotency key (client session, request number) already names
    /// a different request; nothing was written, retrying will not help: 422.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    /// This replica is not the primary (writes must go to `primary`): the
    /// server forwards the request there.
    #[error("replica {replica} is not the primary (primary is {primary:?})")]
    NotPrimary {
        /// This replica.
        replica: u8,
        /// The primary it believes in, if in normal status.
        primary: Option<u8>,
    },
    /// The outcome is unknown (view change, timeout): retry with the same key: 503.
    #[error("outcome unknown: {0}; retry with the same idempotency key")]
    Indeterminate(String),
    /// Shutting down or not ready: 503.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Storage or corruption on this replica: 500 (never for bad input).
    #[error("storage: {0}")]
    Storage(String),
}

/// An append as the server hands it to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendCall {
    /// The stream.
    pub stream: u64,
    /// The payloads.
    pub events: Vec<Bytes>,
    /// Optimistic concurrency check.
    pub expected_offset: Option<u64>,
    /// (client session, request number); None: the node picks a fresh one.
    pub idempotency: Option<(u128, u64)>,
    /// The access-trail event of this append (its payload), stream and
    /// offsets filled in by the replica: it commits in the same atomic
    /// group as the events, in the same round. `None`: the caller records
    /// the access itself.
    pub trail: Option<Bytes>,
}

/// Who leads, as the node last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeRole {
    /// This replica.
    pub replica: u8,
    /// This replica is the primary in normal status.
    pub is_primary: bool,
    /// The primary it believes in, when in normal status.
    pub primary: Option<u8>,
}

/// An export as the server hands it to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCall {
    /// The stream.
    pub stream: u64,
    /// First offset.
    pub from: u64,
    /// One past the last offset.
    pub to: u64,
    /// Who asked (written into the manifest).
    pub principal: String,
    /// Why.
    pub purpose: Option<String>,
}

/// Counters for `/metrics` (monotonic unless named as a gauge).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Gauge: committed ops.
    pub commit: u64,
    /// Gauge: highest op in the journal.
    pub op: u64,
    /// Gauge: view.
    pub view: u64,
    /// Gauge: committed events (tree size).
    pub events: u64,
    /// Replica messages sent / received / dropped (bad frame, unknown peer, full queue).
    pub messages_sent: u64,
    /// See above.
    pub messages_received: u64,
    /// See above.
    pub frames_dropped: u64,
    /// Storage fdatasyncs since start.
    pub syncs: u64,
}

/// The replica as the client API sees it.
pub trait Node: Send + Sync + std::fmt::Debug + 'static {
    /// Status for `/v1/health`.
    fn health(&self) -> Health;
    /// Who leads, for routing every request; must be cheap (no waiting).
    fn role(&self) -> NodeRole {
        let health = self.health();
        NodeRole {
            replica: health.replica,
            is_primary: health.is_primary,
            primary: (health.status == "normal").then_some(health.primary),
        }
    }
    /// Appends through consensus; returns after commit with the receipt.
    fn append(&self, call: AppendCall) -> Result<AppendReceipt, NodeError>;
    /// Up to `max` committed events of `stream` from offset `from`.
    fn read_stream(&self, stream: u64, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError>;
    /// Up to `max` committed events of the global log from position `from`.
    fn read_log(&self, from: u64, max: u64) -> Result<Vec<LogEvent>, NodeError>;
    /// Committed events (the position the next event will get), for
    /// subscriptions: they poll this or wait with [`Node::wait_events`].
    fn committed_events(&self) -> u64;
    /// Blocks until more than `seen` events are committed or `timeout_ms`
    /// passes; returns the committed event count.
    fn wait_events(&self, seen: u64, timeout_ms: u64) -> u64;
    /// The `tlog-proof@v1` text of one event against the latest certificate.
    fn proof(&self, stream: u64, offset: u64) -> Result<String, NodeError>;
    /// Consistency proof from `from` to `to` (None: the latest certificate).
    fn consistency(&self, from: u64, to: Option<u64>) -> Result<ConsistencyAnswer, NodeError>;
    /// The latest certificate: (tree size, text).
    fn certificate(&self) -> Option<(u64, String)>;
    /// Counters for `/metrics`.
    fn metrics(&self) -> NodeMetrics;
    /// An export bundle of `stream` offsets `[from, to)`, built and signed
    /// by this replica: the bundle's files (name, bytes).
    fn export_events(&self, call: ExportCall) -> Result<Vec<(String, Vec<u8>)>, NodeError>;
    /// The access trail: (this replica's key name, events with positions)
    /// recorded in `[from_ns, to_ns)` (None: unbounded), about `stream` if given.
    fn audit_records(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
        stream: Option<u64>,
    ) -> Result<(String, Vec<(AccessEvent, u64)>), NodeError>;
    /// Records access-trail events (P7) in the replicated system stream and
    /// returns once they are committed (a read is answered only after
    /// this). Concurrent callers are batched into one op.
    fn record_access(&self, events: Vec<AccessEvent>) -> Result<(), NodeError>;
}
