//! The Rust client of Vellum's HTTP API (`crate::api` is the wire contract).
//!
//! It exists so that applications, the CLI and [`ClientPersister`] talk to a
//! cluster through one place that gets retries right: an append is the one
//! call whose retry can do harm (a second copy of the batch), so the rules
//! below are the client's promise about outcomes.
//!
//! # Sessions
//!
//! VSR keeps one client-table entry per client session and allows one
//! request in flight per session. The client therefore keeps a pool of
//! sessions: each session id is a random non-zero `u128` (32 lowercase hex
//! digits) and its request numbers increase from 1. Each [`Client::append`]
//! borrows an idle session (or creates one), sends `request = next`, and gives
//! the session back with `next + 1` whatever the outcome — also when the
//! caller drops the future half-way — so a session never has two requests in
//! flight and a request number is never used for two different batches. At
//! most [`SESSIONS_IDLE_MAX`] idle sessions are kept.
//!
//! # Outcome semantics of `append`
//!
//! | what happened | retried? | result |
//! |---|---|---|
//! | 200 | — | `Ok(receipt)` (`duplicate` is true when a retry found the first copy) |
//! | 409 `wrong_expected_offset` | never | [`ClientError::WrongExpectedOffset`] |
//! | 422 `idempotency_key_reused` | never | [`ClientError::IdempotencyKeyReused`] (the key named another request; nothing written) |
//! | other 4xx | never | `Refused` / `NotFound` / `Unauthorized` (nothing was written) |
//! | connect refused / connect timeout | yes | the request never left the client |
//! | timeout, reset, cut answer after sending | yes | the request may have reached a primary |
//! | 503 `unavailable` | yes | this replica did not take the request |
//! | 503 `indeterminate`, other 5xx | yes | the request may have reached a primary |
//!
//! Every retry sends the SAME body with the SAME idempotency key, so the
//! cluster's client table answers a retry of an applied request with the
//! first receipt (`duplicate: true`) instead of appending twice. Attempts
//! rotate through the endpoints starting at the one that last answered, up to
//! `1 + retries_max` attempts (capped by [`RETRIES_MAX_LIMIT`]), sleeping
//! `retry_delay_ms` after each full round, so one append takes at most about
//! `(1 + retries_max) * request_timeout_ms + rounds * retry_delay_ms`. When
//! every attempt failed the error is [`ClientError::Indeterminate`] if any
//! attempt may have reached a primary, else [`ClientError::Unavailable`]
//! (then nothing was written). After `Indeterminate`, a new call to `append`
//! uses a new request number: it is a NEW request and may write the batch a
//! second time; use [`Client::append_with_key`] with the old key to retry
//! safely.
//!
//! Reads have no side effects: they rotate on the same failures and end in
//! `Transport` or `Unavailable`.
//!
//! # TLS
//!
//! `https://` endpoints need [`ClientConfig::ca_pem`]: the client then trusts
//! only that CA (no built-in roots), with rustls' ring provider chosen
//! explicitly. `http://` endpoints are accepted for tests and local use.

mod audit;
mod errors;
mod persister;
mod subscribe;
#[cfg(test)]
mod tests;
mod witnessed;

pub use crate::api::ErrorCode;
pub use audit::{AuditStream, ChunkReader, read_audit_export};
pub use errors::{AppendError, ReadError};
pub use persister::{ClientPersister, PERSISTER_WORKER_THREADS, to_persist_error};
pub use subscribe::{LogFilter, SUBSCRIBE_LINE_BYTES_MAX, SUBSCRIBE_RECONNECTS_MAX};
pub use witnessed::{WITNESS_WAIT_MS_MAX, WitnessedProof, WitnessedProofError};

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::api::{
    self, AppendReceipt, AppendRequest, CertificateAnswer, ConsistencyAnswer, ErrorBody, EventIn,
    Health, IdempotencyKey, LogEvents, ProofAnswer, StreamEvents,
};

/// Most endpoints one client accepts (a cluster has a handful of replicas).
pub const ENDPOINTS_MAX: usize = 64;
/// Ceiling on `retries_max`, so a misconfiguration cannot retry for hours.
pub const RETRIES_MAX_LIMIT: u32 = 64;
/// Most idle sessions kept for reuse; more are forgotten (the cluster's
/// client table evicts them in time).
pub const SESSIONS_IDLE_MAX: usize = 256;
/// Most bytes of an answer body the client reads (a full read page of base64
/// events fits well inside).
pub const ANSWER_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes of an answer quoted in an error message.
const QUOTE_BYTES_MAX: usize = 200;

/// Where and how to reach a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Base URLs of every replica's API, e.g. `https://10.0.0.1:7440`.
    pub endpoints: Vec<String>,
    /// When set, the PEM of the only CA trusted for `https://` endpoints.
    pub ca_pem: Option<Vec<u8>>,
    /// The bearer token sent with every request; empty: none (a client
    /// that presents [`ClientConfig::client_identity`] sends no token).
    pub token: String,
    /// A client certificate (and its key) presented in every TLS
    /// handshake, the mTLS alternative to a bearer token; needs `ca_pem`
    /// (https), and an empty `token`: the server refuses both at once.
    pub client_identity: Option<ClientIdentity>,
    /// Bound on one request (connect, send, answer), in milliseconds.
    pub request_timeout_ms: u64,
    /// Retries after the first attempt (capped by [`RETRIES_MAX_LIMIT`]).
    pub retries_max: u32,
    /// Pause after each full round over the endpoints, in milliseconds.
    pub retry_delay_ms: u64,
    /// A subscription that receives no line (event or heartbeat) for this
    /// long is taken as dead and reconnected, in milliseconds.
    pub subscribe_idle_ms: u64,
    /// Spread reads (stream reads, global reads, subscriptions) over all
    /// endpoints, round robin, instead of sending them where the last
    /// answer came from: backups serve reads from their certified prefix,
    /// so reads scale with the replicas. Pass `min_position` for
    /// read-your-writes. Writes always start at the last good endpoint.
    pub spread_reads: bool,
}

impl ClientConfig {
    /// Defaults: 10 s per request, 45 retries (15 rounds over 3 replicas, about 3 s: enough to ride out a view change) 200 ms apart, no CA (http only),
    /// a subscription idle for 30 s reconnects.
    pub fn new(endpoints: Vec<String>, token: impl Into<String>) -> Self {
        Self {
            endpoints,
            ca_pem: None,
            token: token.into(),
            client_identity: None,
            request_timeout_ms: 10_000,
            retries_max: 45,
            retry_delay_ms: 200,
            subscribe_idle_ms: 30_000,
            spread_reads: false,
        }
    }
}

impl fmt::Debug for ClientConfig {
    // The token is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoints", &self.endpoints)
            .field("ca_pem", &self.ca_pem.as_ref().map(|pem| pem.len()))
            .field("token", &"<redacted>")
            .field("client_identity", &self.client_identity)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retries_max", &self.retries_max)
            .field("retry_delay_ms", &self.retry_delay_ms)
            .field("subscribe_idle_ms", &self.subscribe_idle_ms)
            .field("spread_reads", &self.spread_reads)
            .finish()
    }
}

/// A client certificate chain and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (wiped from memory when dropped).
    pub key_pem: zeroize::Zeroizing<Vec<u8>>,
}

impl ClientIdentity {
    /// Reads the certificate and key files.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Self, ClientError> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| ClientError::Local(format!("reading {}: {e}", path.display())))
        };
        Ok(ClientIdentity {
            cert_pem: read(cert)?,
            key_pem: zeroize::Zeroizing::new(read(key)?),
        })
    }
}

impl fmt::Debug for ClientIdentity {
    // The key is a credential: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// 409: the stream's length was not the expected offset; nothing written.
    #[error("stream {stream}: expected offset {expected}, the stream has {actual} events")]
    WrongExpectedOffset {
        /// The stream.
        stream: u64,
        /// The offset the caller expected.
        expected: u64,
        /// The stream's actual length.
        actual: u64,
    },
    /// 422 `idempotency_key_reused`: the idempotency key (session, request
    /// number) already named a different request (other stream, expected
    /// offset or events). Nothing was written; retrying will not help.
    #[error("idempotency key reused: {0}")]
    IdempotencyKeyReused(String),
    /// A definite refusal (400, 408, 413, 422): nothing was written. `code`
    /// is the answer's; a number the client refuses before sending (as the
    /// server would) is `bad_request`.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The answer's code.
        code: ErrorCode,
        /// The answer's message (what and where; for humans).
        message: String,
    },
    /// 404: unknown stream, event or route.
    #[error("not found: {0}")]
    NotFound(String),
    /// 401/403: missing, unknown or insufficient token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// Every attempt failed and at least one may have reached a primary: the
    /// append may or may not have committed (retry with the same key).
    #[error("outcome unknown after retries: {0}")]
    Indeterminate(String),
    /// Every attempt failed before any primary could take the request:
    /// nothing was written.
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// An answer that does not follow the API contract.
    #[error("bad answer: {0}")]
    Protocol(String),
    /// A network failure of a call that is not retried, or of a read after
    /// its retries.
    #[error("transport: {0}")]
    Transport(String),
    /// A failure before anything was sent: bad configuration, bad CA PEM, a
    /// request too large, no randomness.
    #[error("client: {0}")]
    Local(String),
}

/// One client session: VSR allows one request in flight per session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Session {
    id: u128,
    next_request: u64,
}

/// A handle on a cluster; cheap to clone (shared state behind an `Arc`).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    /// Endpoints without a trailing slash.
    endpoints: Vec<String>,
    /// Index of the endpoint that last gave a definite answer.
    preferred: AtomicUsize,
    /// With `spread_reads`: where the next read starts (round robin).
    next_read: AtomicUsize,
    sessions: Mutex<Vec<Session>>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.config)
            .field("preferred", &self.preferred.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What one attempt against one endpoint gave.
#[derive(Debug)]
enum Attempt<T> {
    /// A definite answer (success or refusal): stop.
    Done(Result<T, ClientError>),
    /// Worth trying again elsewhere. `reached` is true when the request may
    /// have reached a primary; `transport` when no HTTP answer came.
    Retry {
        reached: bool,
        transport: bool,
        reason: String,
    },
}

/// Whether a failed call could have changed anything on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallKind {
    Write,
    Read,
}

impl Client {
    /// Checks the configuration and builds the HTTP client.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let endpoints = check_endpoints(&config)?;
        let timeout = Duration::from_millis(config.request_timeout_ms.max(1));
        let mut builder = reqwest::Client::builder()
            .connect_timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30));
        match (&config.ca_pem, &config.client_identity) {
            (Some(pem), identity) => {
                builder = builder.use_preconfigured_tls(tls_config(pem, identity.as_ref())?);
            }
            (None, Some(_)) => {
                return Err(ClientError::Local(
                    "client_identity needs ca_pem: a client certificate is presented over https only"
                        .to_string(),
                ));
            }
            (None, None) => {}
        }
        if config.client_identity.is_some() && !config.token.is_empty() {
            return Err(ClientError::Local(
                "both client_identity and a token are set; the server refuses both at once \
                 (set the token to an empty string)"
                    .to_string(),
            ));
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Local(format!("building the http client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config,
                endpoints,
                preferred: AtomicUsize::new(0),
                next_read: AtomicUsize::new(0),
                sessions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Appends `events` (all-or-nothing) under a pooled session; see the
    /// module docs for the outcome semantics.
    pub async fn append(
        &self,
        stream: u64,
        events: Vec<Bytes>,
        expected_offset: Option<u64>,
    ) -> Result<AppendReceipt, AppendError> {
        let lease = SessionLease::borrow(&self.inner).map_err(AppendError::local)?;
        let key = lease.key();
        self.append_with_key(stream, events, expected_offset, key)
            .await
    }

    /// Appends under the caller's idempotency key: retrying with a key whose
    /// append committed returns the first receipt and writes nothing.
    pub async fn append_with_key(
        &self,
        stream: u64,
        events: Vec<Bytes>,
        expected_offset: Option<u64>,
        key: IdempotencyKey,
    ) -> Result<AppendReceipt, AppendError> {
        let events = events.iter().map(|event| EventIn::bytes(event)).collect();
        self.append_events_with_key(stream, events, expected_offset, key)
            .await
    }

    /// Appends events given as the API's [`EventIn`] (raw or JSON payloads,
    /// with envelope fields: `id`, `type`, `content_type`, `metadata`), with
    /// a fresh idempotency key.
    pub async fn append_events(
        &self,
        stream: u64,
        events: Vec<EventIn>,
        expected_offset: Option<u64>,
    ) -> Result<AppendReceipt, AppendError> {
        let lease = SessionLease::borrow(&self.inner).map_err(AppendError::local)?;
        let key = lease.key();
        self.append_events_with_key(stream, events, expected_offset, key)
            .await
    }

    /// [`Client::append_events`] under the caller's idempotency key. A
    /// resent batch whose event ids the stream holds answers the original
    /// receipt with `duplicate` set; any other repeat of an id is refused
    /// (`duplicate_event_id`).
    pub async fn append_events_with_key(
        &self,
        stream: u64,
        events: Vec<EventIn>,
        expected_offset: Option<u64>,
        key: IdempotencyKey,
    ) -> Result<AppendReceipt, AppendError> {
        let refused = |e: ClientError| AppendError::from_call(e, stream, &key);
        edge("stream", stream).map_err(refused)?;
        expected_offset
            .map(|offset| edge("expected_offset", offset))
            .transpose()
            .map_err(refused)?;
        edge("idempotency.request", key.request).map_err(refused)?;
        let request = AppendRequest {
            events,
            expected_offset,
            idempotency: Some(key.clone()),
            purpose: None,
        };
        let body = serde_json::to_vec(&request)
            .map_err(|e| AppendError::Local(format!("encoding the append to {stream}: {e}")))?;
        if body.len() > api::REQUEST_BODY_BYTES_MAX {
            return Err(AppendError::Refused {
                code: ErrorCode::PayloadTooLarge,
                message: format!(
                    "append to stream {stream} is {} bytes, more than the {} the server accepts",
                    body.len(),
                    api::REQUEST_BODY_BYTES_MAX
                ),
            });
        }
        let body = Bytes::from(body);
        let path = format!("/v1/streams/{stream}/append");
        let context = AnswerContext {
            stream,
            expected: expected_offset,
        };
        self.call(CallKind::Write, context, |http, base| {
            http.post(format!("{base}{path}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
        .map_err(|e| AppendError::from_call(e, stream, &key))
    }

    /// Reads up to `max` events of `stream` from offset `from`.
    pub async fn read_stream(
        &self,
        stream: u64,
        from: u64,
        max: u64,
    ) -> Result<StreamEvents, ReadError> {
        edge("stream", stream)?;
        edge("from", from)?;
        page("max", max)?;
        let path = format!("/v1/streams/{stream}/events?from={from}&max={max}");
        Ok(self.get(stream, &path).await?)
    }

    /// [`Client::read_stream`] at a replica whose committed prefix holds
    /// at least `min_position` events (read-your-writes: pass the
    /// receipt's `first_position` plus its event count). A backup that
    /// lags waits briefly, then forwards the read to the primary; a
    /// position beyond the committed log is `Refused` with code
    /// `position_not_reached`.
    pub async fn read_stream_at_least(
        &self,
        stream: u64,
        from: u64,
        max: u64,
        min_position: u64,
    ) -> Result<StreamEvents, ReadError> {
        edge("stream", stream)?;
        edge("from", from)?;
        page("max", max)?;
        edge("min_position", min_position)?;
        let path = format!(
            "/v1/streams/{stream}/events?from={from}&max={max}&min_position={min_position}"
        );
        Ok(self.get(stream, &path).await?)
    }

    /// Reads up to `max` committed events of the global log from `from`.
    pub async fn read_log(&self, from: u64, max: u64) -> Result<LogEvents, ReadError> {
        edge("from", from)?;
        page("max", max)?;
        Ok(self
            .get(0, &format!("/v1/log?from={from}&max={max}"))
            .await?)
    }

    /// [`Client::read_log`] with a server-side [`LogFilter`]: only the
    /// matching events; `next_position` is past every position read, the
    /// events left out too, so paging on from it skips nothing.
    pub async fn read_log_filtered(
        &self,
        from: u64,
        max: u64,
        filter: &LogFilter,
    ) -> Result<LogEvents, ReadError> {
        edge("from", from)?;
        page("max", max)?;
        let query = filter.query();
        Ok(self
            .get(0, &format!("/v1/log?from={from}&max={max}{query}"))
            .await?)
    }

    /// The inclusion proof of one event.
    pub async fn proof(&self, stream: u64, offset: u64) -> Result<ProofAnswer, ClientError> {
        edge("stream", stream)?;
        edge("offset", offset)?;
        let path = format!("/v1/streams/{stream}/events/{offset}/proof");
        self.get(stream, &path).await
    }

    /// The consistency proof from tree size `from` to `to` (or the latest
    /// certified size).
    pub async fn consistency(
        &self,
        from: u64,
        to: Option<u64>,
    ) -> Result<ConsistencyAnswer, ClientError> {
        edge("from", from)?;
        to.map(|to| edge("to", to)).transpose()?;
        let path = match to {
            Some(to) => format!("/v1/consistency?from={from}&to={to}"),
            None => format!("/v1/consistency?from={from}"),
        };
        self.get(0, &path).await
    }

    /// An export bundle of `request.stream`, built and signed by the
    /// primary; the export is recorded in the access trail.
    pub async fn export_events(
        &self,
        request: &api::ExportEventsRequest,
    ) -> Result<api::ExportBundle, ClientError> {
        edge("stream", request.stream)?;
        edge("from", request.from)?;
        edge("to", request.to)?;
        let body = serde_json::to_vec(request)
            .map_err(|e| ClientError::Local(format!("encoding the export request: {e}")))?;
        let body = Bytes::from(body);
        let context = AnswerContext {
            stream: request.stream,
            expected: None,
        };
        self.call(CallKind::Read, context, |http, base| {
            http.post(format!("{base}/v1/export/events"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// The access trail recorded in `[from_ns, to_ns)`, about `stream` if given.
    pub async fn export_audit(
        &self,
        from_ns: Option<u64>,
        to_ns: Option<u64>,
        stream: Option<u64>,
    ) -> Result<api::AuditExport, ClientError> {
        let path = audit_path(from_ns, to_ns, stream)?;
        self.get(stream.unwrap_or(0), &path).await
    }

    /// Records a verification run in the access trail.
    pub async fn record_verification(
        &self,
        record: &api::VerificationRecord,
    ) -> Result<serde_json::Value, ClientError> {
        record
            .checkpoint_size
            .map(|size| edge("checkpoint_size", size))
            .transpose()?;
        let body = serde_json::to_vec(record)
            .map_err(|e| ClientError::Local(format!("encoding the verification record: {e}")))?;
        let body = Bytes::from(body);
        let context = AnswerContext {
            stream: 0,
            expected: None,
        };
        self.call(CallKind::Read, context, |http, base| {
            http.post(format!("{base}/v1/verifications"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// A key-custody request on `stream` (role `privacy-officer`):
    /// `action` is `shred`, `hold`, `release` or `retain`. Answers once the
    /// custody event is committed; a refusal by a rule is
    /// [`ClientError::Refused`] with its code (`legal_hold`,
    /// `retention_floor`, `shredded`, `custody_conflict`).
    pub async fn custody(
        &self,
        stream: u64,
        action: vellum_compliance::custody::CustodyAction,
        request: &api::CustodyRequest,
    ) -> Result<api::CustodyAnswer, ClientError> {
        use vellum_compliance::custody::CustodyAction;
        edge("stream", stream)?;
        request
            .retain_until_ms
            .map(|ms| edge("retain_until_ms", ms))
            .transpose()?;
        let route = match action {
            CustodyAction::Shred => "shred",
            CustodyAction::Hold => "hold",
            CustodyAction::Release => "hold/release",
            CustodyAction::Retain => "retention",
        };
        let body = serde_json::to_vec(request)
            .map_err(|e| ClientError::Local(format!("encoding the custody request: {e}")))?;
        let body = Bytes::from(body);
        let context = AnswerContext {
            stream,
            expected: None,
        };
        // A write: an unknown outcome is reported as such, never hidden. A
        // retry of a committed request is refused by its rule (shredded,
        // already held), never applied twice.
        self.call(CallKind::Write, context, |http, base| {
            http.post(format!("{base}/v1/streams/{stream}/{route}"))
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
        })
        .await
    }

    /// The newest commit certificate.
    pub async fn certificate(&self) -> Result<CertificateAnswer, ClientError> {
        self.get(0, "/v1/certificate").await
    }

    /// Asks every endpoint for its health, all at once, one attempt each.
    pub async fn health_all(&self) -> Vec<(String, Result<Health, ClientError>)> {
        let asks = (0..self.inner.endpoints.len()).map(|index| async move {
            let base = &self.inner.endpoints[index];
            let answer = self
                .attempt::<Health>(index, AnswerContext::none(), &|http, base| {
                    http.get(format!("{base}/v1/health"))
                })
                .await;
            let result = match answer {
                Attempt::Done(result) => result,
                Attempt::Retry {
                    transport: true,
                    reason,
                    ..
                } => Err(ClientError::Transport(reason)),
                Attempt::Retry { reason, .. } => Err(ClientError::Unavailable(reason)),
            };
            (base.clone(), result)
        });
        futures_util::future::join_all(asks).await
    }

    async fn get<T: DeserializeOwned>(&self, stream: u64, path: &str) -> Result<T, ClientError> {
        let context = AnswerContext {
            stream,
            expected: None,
        };
        self.call(CallKind::Read, context, |http, base| {
            http.get(format!("{base}{path}"))
        })
        .await
    }

    /// Runs one call with the retry and rotation rules of the module docs.
    async fn call<T: DeserializeOwned>(
        &self,
        kind: CallKind,
        context: AnswerContext,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let count = self.inner.endpoints.len();
        let start = match kind {
            CallKind::Read if self.inner.config.spread_reads => {
                self.inner.next_read.fetch_add(1, Ordering::Relaxed) % count
            }
            _ => self.inner.preferred.load(Ordering::Relaxed) % count,
        };
        let attempts = self.inner.config.retries_max.min(RETRIES_MAX_LIMIT) as usize + 1;
        let delay = Duration::from_millis(self.inner.config.retry_delay_ms);
        let mut reached_any = false;
        let mut last_transport = false;
        let mut failures = Vec::new();
        for attempt in 0..attempts {
            if attempt > 0 && attempt % count == 0 {
                tokio::time::sleep(delay).await;
            }
            let index = (start + attempt) % count;
            match self.attempt(index, context, &build).await {
                Attempt::Done(result) => {
                    if kind == CallKind::Write || !self.inner.config.spread_reads {
                        self.inner.preferred.store(index, Ordering::Relaxed);
                    }
                    return result;
                }
                Attempt::Retry {
                    reached,
                    transport,
                    reason,
                } => {
                    tracing::debug!(endpoint = %self.inner.endpoints[index], %reason, "retrying");
                    reached_any |= reached;
                    last_transport = transport;
                    failures.push(format!("{}: {reason}", self.inner.endpoints[index]));
                }
            }
        }
        let summary = summarize(attempts, &failures);
        Err(match kind {
            CallKind::Write if reached_any => ClientError::Indeterminate(summary),
            CallKind::Write => ClientError::Unavailable(summary),
            CallKind::Read if last_transport => ClientError::Transport(summary),
            CallKind::Read => ClientError::Unavailable(summary),
        })
    }

    /// One request to one endpoint, classified.
    async fn attempt<T: DeserializeOwned>(
        &self,
        index: usize,
        context: AnswerContext,
        build: &impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Attempt<T> {
        let inner = &self.inner;
        let request = with_token(build(&inner.http, &inner.endpoints[index]), &inner.config)
            .timeout(Duration::from_millis(
                inner.config.request_timeout_ms.max(1),
            ));
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_failure(&error),
        };
        let status = response.status();
        let body = match read_body::<T>(response).await {
            Ok(body) => body,
            Err(Attempt::Done(Err(e))) => return Attempt::Done(Err(e)),
            Err(_) => {
                return Attempt::Retry {
                    reached: true,
                    transport: true,
                    reason: format!("answer {status} cut short"),
                };
            }
        };
        classify_answer(status, &body, context)
    }
}

/// What an error answer needs to know about its request.
#[derive(Debug, Clone, Copy)]
struct AnswerContext {
    stream: u64,
    expected: Option<u64>,
}

impl AnswerContext {
    fn none() -> Self {
        Self {
            stream: 0,
            expected: None,
        }
    }
}

/// Reads a whole answer body, bounded by [`ANSWER_BYTES_MAX`].
async fn read_body<T>(mut response: reqwest::Response) -> Result<Vec<u8>, Attempt<T>> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > ANSWER_BYTES_MAX {
                    return Err(Attempt::Done(Err(ClientError::Protocol(format!(
                        "answer larger than {ANSWER_BYTES_MAX} bytes"
                    )))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(error) => return Err(transport_failure(&error)),
        }
    }
}

/// A network failure: only a failed connect proves the request never left.
fn transport_failure<T>(error: &reqwest::Error) -> Attempt<T> {
    Attempt::Retry {
        reached: !error.is_connect(),
        transport: true,
        reason: error_chain(error),
    }
}

/// Maps an HTTP answer onto a result or a retry, by status and `ErrorBody.code`.
fn classify_answer<T: DeserializeOwned>(
    status: reqwest::StatusCode,
    body: &[u8],
    context: AnswerContext,
) -> Attempt<T> {
    if status.is_success() {
        return Attempt::Done(serde_json::from_slice(body).map_err(|e| {
            ClientError::Protocol(format!(
                "answer {status} does not parse: {e}: {}",
                quote(body)
            ))
        }));
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = match &parsed {
        Some(error) => (error.error.code.as_str(), error.error.message.clone()),
        None => ("", format!("answer {status}: {}", quote(body))),
    };
    if status.is_server_error() {
        // Only an explicit `unavailable` says the request was not taken.
        return Attempt::Retry {
            reached: code != api::code::UNAVAILABLE,
            transport: false,
            reason: format!("{status} {code}: {message}"),
        };
    }
    if !status.is_client_error() {
        return Attempt::Done(Err(ClientError::Protocol(format!(
            "unexpected status {status}: {message}"
        ))));
    }
    let actual = parsed.as_ref().and_then(|error| error.error.actual_offset);
    Attempt::Done(Err(refusal(status, code, message, actual, context)))
}

/// A definite 4xx refusal as an error, by the answer's `code` (the
/// message is carried for humans, never read). An answer without a known
/// code falls back on its status.
fn refusal(
    status: reqwest::StatusCode,
    code: &str,
    message: String,
    actual: Option<u64>,
    context: AnswerContext,
) -> ClientError {
    let code = ErrorCode::parse(code).unwrap_or(match status {
        reqwest::StatusCode::NOT_FOUND => ErrorCode::NotFound,
        reqwest::StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        reqwest::StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        reqwest::StatusCode::CONFLICT => ErrorCode::WrongExpectedOffset,
        reqwest::StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        reqwest::StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        reqwest::StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::Refused,
        reqwest::StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        _ => ErrorCode::BadRequest,
    });
    match code {
        ErrorCode::WrongExpectedOffset => match actual {
            Some(actual) => ClientError::WrongExpectedOffset {
                stream: context.stream,
                expected: context.expected.unwrap_or(0),
                actual,
            },
            None => ClientError::Protocol(format!(
                "wrong_expected_offset without actual_offset: {message}"
            )),
        },
        ErrorCode::IdempotencyKeyReused => ClientError::IdempotencyKeyReused(message),
        ErrorCode::NotFound => ClientError::NotFound(message),
        ErrorCode::Unauthorized => ClientError::Unauthorized(message),
        ErrorCode::CredentialExpired => {
            ClientError::Unauthorized(format!("credential expired: {message}"))
        }
        ErrorCode::Forbidden => ClientError::Unauthorized(format!("forbidden: {message}")),
        ErrorCode::ScopeDenied => ClientError::Unauthorized(format!("scope denied: {message}")),
        // Only failed logins are rate limited: the token did not authenticate.
        ErrorCode::RateLimited => ClientError::Unauthorized(format!("rate limited: {message}")),
        ErrorCode::BadRequest
        | ErrorCode::RequestTimeout
        | ErrorCode::PayloadTooLarge
        | ErrorCode::Refused
        | ErrorCode::PositionNotReached
        | ErrorCode::Shredded
        | ErrorCode::LegalHold
        | ErrorCode::RetentionFloor
        | ErrorCode::CustodyConflict
        | ErrorCode::DuplicateEventId
        | ErrorCode::InvalidEnvelope
        | ErrorCode::EnvelopeTooLarge => ClientError::Refused { code, message },
        ErrorCode::GroupExists | ErrorCode::NotDelivered | ErrorCode::NotParked => {
            ClientError::Refused { code, message }
        }
        // 5xx codes on a 4xx status: the answer breaks the contract.
        ErrorCode::Indeterminate | ErrorCode::Unavailable | ErrorCode::Storage => {
            ClientError::Protocol(format!("{status} with code {code}: {message}"))
        }
    }
}

/// The error with its sources, since reqwest's top-level text is terse.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    let mut depth = 0;
    while let Some(cause) = source {
        if depth >= 4 {
            break;
        }
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
        depth += 1;
    }
    text
}

/// The start of a body, for error messages.
fn quote(body: &[u8]) -> String {
    let end = body.len().min(QUOTE_BYTES_MAX);
    String::from_utf8_lossy(&body[..end]).into_owned()
}

fn summarize(attempts: usize, failures: &[String]) -> String {
    let last = failures.last().map(String::as_str).unwrap_or("no attempt");
    format!("{attempts} attempts failed; last: {last}")
}

/// Validates the endpoints and strips trailing slashes.
fn check_endpoints(config: &ClientConfig) -> Result<Vec<String>, ClientError> {
    if config.endpoints.is_empty() || config.endpoints.len() > ENDPOINTS_MAX {
        return Err(ClientError::Local(format!(
            "need 1 to {ENDPOINTS_MAX} endpoints, got {}",
            config.endpoints.len()
        )));
    }
    let mut endpoints = Vec::with_capacity(config.endpoints.len());
    for endpoint in &config.endpoints {
        let trimmed = endpoint.trim_end_matches('/');
        if trimmed.starts_with("https://") {
            if config.ca_pem.is_none() {
                return Err(ClientError::Local(format!(
                    "endpoint {trimmed} is https but no CA is configured to trust"
                )));
            }
        } else if !trimmed.starts_with("http://") {
            return Err(ClientError::Local(format!(
                "endpoint {endpoint:?} is neither http:// nor https://"
            )));
        }
        reqwest::Url::parse(trimmed)
            .map_err(|e| ClientError::Local(format!("endpoint {endpoint:?}: {e}")))?;
        endpoints.push(trimmed.to_string());
    }
    Ok(endpoints)
}

/// A rustls client config that trusts only the CA(s) in `pem`, with the ring
/// provider chosen explicitly (never a process-wide default), presenting
/// `identity` if given.
pub(crate) fn tls_config(
    pem: &[u8],
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| ClientError::Local(format!("ca_pem: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Local(format!("ca_pem: certificate refused: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Local(
            "ca_pem holds no certificate".to_string(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Local(format!("tls versions: {e}")))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => builder.with_no_client_auth(),
        Some(identity) => {
            use rustls_pki_types::PrivateKeyDer;
            let chain = CertificateDer::pem_slice_iter(&identity.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ClientError::Local(format!("client certificate: {e}")))?;
            if chain.is_empty() {
                return Err(ClientError::Local(
                    "client certificate: no certificate in the PEM".to_string(),
                ));
            }
            let key = PrivateKeyDer::from_pem_slice(&identity.key_pem)
                .map_err(|e| ClientError::Local(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::Local(format!("client certificate and key: {e}")))?
        }
    };
    // HTTP/2 when the server offers it (one connection carries every
    // concurrent call and subscription), else HTTP/1.1.
    config.alpn_protocols = api::ALPN_PROTOCOLS.iter().map(|id| id.to_vec()).collect();
    Ok(config)
}

/// `request` with the configured bearer token, if there is one (a client
/// with a client certificate has none).
pub(crate) fn with_token(
    request: reqwest::RequestBuilder,
    config: &ClientConfig,
) -> reqwest::RequestBuilder {
    match config.token.is_empty() {
        true => request,
        false => request.bearer_auth(&config.token),
    }
}

/// A session borrowed from the pool; given back with `next_request + 1` when
/// dropped, whatever happened (also when the caller's future is dropped).
struct SessionLease<'a> {
    inner: &'a Inner,
    session: Session,
}

impl<'a> SessionLease<'a> {
    fn borrow(inner: &'a Inner) -> Result<Self, ClientError> {
        let idle = inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        let session = match idle {
            Some(session) => session,
            None => Session {
                id: new_session_id()?,
                next_request: 1,
            },
        };
        Ok(Self { inner, session })
    }

    fn key(&self) -> IdempotencyKey {
        IdempotencyKey {
            session: format!("{:032x}", self.session.id),
            request: self.session.next_request,
        }
    }
}

impl Drop for SessionLease<'_> {
    fn drop(&mut self) {
        let mut sessions = self
            .inner
            .sessions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if sessions.len() < SESSIONS_IDLE_MAX {
            sessions.push(Session {
                id: self.session.id,
                next_request: self.session.next_request + 1,
            });
        }
    }
}

/// A random non-zero session id.
fn new_session_id() -> Result<u128, ClientError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| ClientError::Local(format!("no randomness for a session id: {e}")))?;
    // Zero is reserved; mapping it to 1 costs one value in 2^128.
    Ok(u128::from_le_bytes(bytes).max(1))
}

/// Refuses, before anything is sent, a number the server refuses: above
/// [`crate::bounds::EDGE_INTEGER_MAX`] (the audit index stores such numbers
/// in signed 64-bit integers). The error names the field.
fn edge(field: &str, value: u64) -> Result<u64, ClientError> {
    crate::bounds::check(field, value).map_err(|e| ClientError::Refused {
        code: ErrorCode::BadRequest,
        message: e.to_string(),
    })
}

/// The path of `GET /v1/export/audit` with its query; every value
/// checked against the edge rule before anything is sent.
fn audit_path(
    from_ns: Option<u64>,
    to_ns: Option<u64>,
    stream: Option<u64>,
) -> Result<String, ClientError> {
    let mut query = Vec::new();
    for (field, value) in [("from_ns", from_ns), ("to_ns", to_ns), ("stream", stream)] {
        if let Some(value) = value {
            query.push(format!("{field}={}", edge(field, value)?));
        }
    }
    Ok(match query.is_empty() {
        true => "/v1/export/audit".to_string(),
        false => format!("/v1/export/audit?{}", query.join("&")),
    })
}

/// Refuses a page size above [`api::READ_EVENTS_MAX`] before sending.
fn page(field: &str, max: u64) -> Result<u64, ClientError> {
    if max > api::READ_EVENTS_MAX {
        return Err(ClientError::Refused {
            code: ErrorCode::BadRequest,
            message: format!(
                "{field}: {max} is above the largest page, {} events",
                api::READ_EVENTS_MAX
            ),
        });
    }
    Ok(max)
}
