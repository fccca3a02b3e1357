//! `Client::subscribe`: the global log as a stream, catch-up then live, that
//! survives dropped connections and replica failures.
//!
//! It reads NDJSON lines from `GET /v1/subscribe?from=P&format=ndjson`,
//! skips heartbeat lines (they only prove the connection is alive), and
//! yields each event once, in position order. When the connection drops, the
//! answer stalls for `subscribe_idle_ms`, or the server ends the body, it
//! reconnects from the last position seen + 1 — to the same endpoint first,
//! then to the next one whenever a connect fails — so the caller sees no gap
//! and no repeat. Events below the next expected position are dropped (a
//! replayed line); an event above it is a gap and ends the stream with
//! `Protocol`, since silently skipping events would defeat an audit reader.
//! At most [`SUBSCRIBE_RECONNECTS_MAX`] reconnects in a row may fail (the count
//! resets on every line received); then the stream yields `Unavailable` and
//! ends. A definite refusal (401, 404, ...) ends it at once.

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::Deserialize;

use super::{AnswerContext, Attempt, Client, ClientError, classify_answer, error_chain, read_body};
use crate::api::{Heartbeat, LogEvent};

/// Most reconnects in a row that may fail before the subscription gives up.
pub const SUBSCRIBE_RECONNECTS_MAX: u32 = 8;
/// Longest line accepted (one event of the largest request, base64, in JSON).
pub const SUBSCRIBE_LINE_BYTES_MAX: usize = 8 * 1024 * 1024;

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// One NDJSON line of a subscription.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Line {
    Heartbeat(Heartbeat),
    Event(LogEvent),
}

impl Client {
    /// Subscribes to the global log from position `from`; see the module docs
    /// of `subscribe.rs` for the resume rules. Dropping the stream closes the
    /// connection.
    pub fn subscribe(
        &self,
        from: u64,
    ) -> impl Stream<Item = Result<LogEvent, ClientError>> + Send + 'static {
        self.subscribe_filtered(from, None)
    }

    /// [`Client::subscribe`] with a server-side filter: `streams` is the
    /// `streams` query parameter (`5001,6000-6999`: stream ids and
    /// inclusive ranges). Positions of a filtered subscription increase
    /// but skip the events left out, so a jump is not a gap here.
    pub fn subscribe_filtered(
        &self,
        from: u64,
        streams: Option<&str>,
    ) -> impl Stream<Item = Result<LogEvent, ClientError>> + Send + 'static {
        let filter = streams.map(|streams| LogFilter {
            streams: Some(streams.to_string()),
            types: Vec::new(),
        });
        self.subscribe_with(from, filter)
    }

    /// [`Client::subscribe`] with a server-side [`LogFilter`] (streams
    /// and event types); None: every event the token's scope reaches.
    pub fn subscribe_with(
        &self,
        from: u64,
        filter: Option<LogFilter>,
    ) -> impl Stream<Item = Result<LogEvent, ClientError>> + Send + 'static {
        use std::sync::atomic::Ordering;
        let inner = &self.inner;
        let start = match inner.config.spread_reads {
            true => inner.next_read.fetch_add(1, Ordering::Relaxed),
            false => inner.preferred.load(Ordering::Relaxed),
        };
        let state = Subscription {
            client: self.clone(),
            next_position: from,
            filter,
            endpoint: start % self.inner.endpoints.len(),
            body: None,
            buffer: Vec::new(),
            start: 0,
            failures: 0,
            last_failure: String::new(),
            finished: false,
        };
        futures_util::stream::unfold(state, |mut state| async move {
            let item = state.next_item().await?;
            Some((item, state))
        })
    }
}

struct Subscription {
    client: Client,
    /// The position of the next event to yield (with a filter: the
    /// lowest position the next event may have).
    next_position: u64,
    /// The filter, if any.
    filter: Option<LogFilter>,
    endpoint: usize,
    body: Option<ByteStream>,
    /// Bytes received; `buffer[start..]` not yet consumed.
    buffer: Vec<u8>,
    start: usize,
    /// Failed (re)connects since the last line received.
    failures: u32,
    last_failure: String,
    finished: bool,
}

impl Subscription {
    async fn next_item(&mut self) -> Option<Result<LogEvent, ClientError>> {
        if self.finished {
            return None;
        }
        let result = self.next_event().await;
        if result.is_err() {
            self.finished = true;
        }
        Some(result)
    }

    /// Each turn consumes a line, reads a chunk or counts a failure, so the
    /// loop ends: failures are bounded and lines come from the server.
    async fn next_event(&mut self) -> Result<LogEvent, ClientError> {
        // A position the server refuses is refused here, before sending.
        crate::bounds::check("from", self.next_position).map_err(|e| ClientError::Refused {
            code: crate::api::ErrorCode::BadRequest,
            message: e.to_string(),
        })?;
        loop {
            if self.body.is_none() {
                self.connect().await?;
                continue;
            }
            let Some(line) = self.take_line() else {
                self.read_chunk().await?;
                continue;
            };
            let text = line.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_slice(text).map_err(|e| {
                ClientError::Protocol(format!(
                    "subscription line at position {} does not parse: {e}",
                    self.next_position
                ))
            })?;
            self.failures = 0;
            let event = match parsed {
                Line::Event(event) => event,
                // A filtered subscription skips the events left out.
                Line::Heartbeat(beat)
                    if self.filter.is_some() && beat.next_position > self.next_position =>
                {
                    self.next_position = beat.next_position;
                    continue;
                }
                // A heartbeat ahead of us means the server skipped events.
                Line::Heartbeat(beat) if beat.next_position > self.next_position => {
                    return Err(self.gap(beat.next_position));
                }
                Line::Heartbeat(_) => continue,
            };
            if event.position < self.next_position {
                continue;
            }
            if event.position > self.next_position && self.filter.is_none() {
                return Err(self.gap(event.position));
            }
            self.next_position = event.position + 1;
            return Ok(event);
        }
    }

    fn gap(&self, position: u64) -> ClientError {
        ClientError::Protocol(format!(
            "subscription skipped from position {} to {position}",
            self.next_position
        ))
    }

    /// Opens the answer stream at `next_position`, or counts a failure.
    async fn connect(&mut self) -> Result<(), ClientError> {
        let inner = &self.client.inner;
        if self.failures >= SUBSCRIBE_RECONNECTS_MAX {
            return Err(ClientError::Unavailable(format!(
                "subscription at position {}: {} reconnects failed; last: {}",
                self.next_position, self.failures, self.last_failure
            )));
        }
        if self.failures > 0 {
            tokio::time::sleep(Duration::from_millis(inner.config.retry_delay_ms)).await;
        }
        let base = &inner.endpoints[self.endpoint];
        let mut url = format!(
            "{base}/v1/subscribe?from={}&format=ndjson",
            self.next_position
        );
        if let Some(filter) = &self.filter {
            url.push_str(&filter.query());
        }
        let request = super::with_token(inner.http.get(url), &inner.config).send();
        let timeout = Duration::from_millis(inner.config.request_timeout_ms.max(1));
        let response = match tokio::time::timeout(timeout, request).await {
            Err(_) => return self.fail_endpoint("no answer in time".to_string()),
            Ok(Err(error)) => return self.fail_endpoint(error_chain(&error)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if status.is_success() {
            self.body = Some(Box::pin(response.bytes_stream()));
            self.buffer.clear();
            self.start = 0;
            return Ok(());
        }
        let body = match read_body::<serde::de::IgnoredAny>(response).await {
            Ok(body) => body,
            Err(_) => return self.fail_endpoint(format!("answer {status} cut short")),
        };
        match classify_answer::<serde::de::IgnoredAny>(status, &body, AnswerContext::none()) {
            Attempt::Retry { reason, .. } => self.fail_endpoint(reason),
            Attempt::Done(Err(error)) => Err(error),
            Attempt::Done(Ok(_)) => Err(ClientError::Protocol(format!(
                "subscribe answered {status}"
            ))),
        }
    }

    /// A connect failed: count it and move to the next endpoint (the
    /// subscription goes on, so this is `Ok`).
    fn fail_endpoint(&mut self, reason: String) -> Result<(), ClientError> {
        let inner = &self.client.inner;
        tracing::debug!(endpoint = %inner.endpoints[self.endpoint], %reason, "subscribe: connect failed");
        self.last_failure = format!("{}: {reason}", inner.endpoints[self.endpoint]);
        self.failures += 1;
        self.endpoint = (self.endpoint + 1) % inner.endpoints.len();
        Ok(())
    }

    /// An open stream broke: count it and reconnect (same endpoint first).
    fn fail_stream(&mut self, reason: String) {
        let inner = &self.client.inner;
        tracing::debug!(endpoint = %inner.endpoints[self.endpoint], %reason, "subscribe: stream broke");
        self.last_failure = format!("{}: {reason}", inner.endpoints[self.endpoint]);
        self.failures += 1;
        self.body = None;
        self.buffer.clear();
        self.start = 0;
    }

    /// The next complete line, if the buffer holds one.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let rest = &self.buffer[self.start..];
        let end = rest.iter().position(|&byte| byte == b'\n')?;
        let line = rest[..end].to_vec();
        self.start += end + 1;
        Some(line)
    }

    /// Reads one more chunk into the buffer, or notes the broken stream.
    async fn read_chunk(&mut self) -> Result<(), ClientError> {
        if self.buffer.len() - self.start > SUBSCRIBE_LINE_BYTES_MAX {
            return Err(ClientError::Protocol(format!(
                "subscription line at position {} longer than {SUBSCRIBE_LINE_BYTES_MAX} bytes",
                self.next_position
            )));
        }
        let idle = Duration::from_millis(self.client.inner.config.subscribe_idle_ms.max(1));
        let Some(body) = self.body.as_mut() else {
            return Ok(());
        };
        match tokio::time::timeout(idle, body.next()).await {
            Err(_) => self.fail_stream(format!("no line for {} ms", idle.as_millis())),
            Ok(None) => self.fail_stream("the server ended the subscription".to_string()),
            Ok(Some(Err(error))) => self.fail_stream(error_chain(&error)),
            Ok(Some(Ok(chunk))) => {
                self.buffer.drain(..self.start);
                self.start = 0;
                self.buffer.extend_from_slice(&chunk);
            }
        }
        Ok(())
    }
}

/// A server-side filter of global reads and subscriptions: only events of
/// these streams and of these envelope types (each criterion given must
/// match). The server applies it after the token's scope, so it never
/// widens what the token reaches, and records it in the access trail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    streams: Option<String>,
    types: Vec<String>,
}

impl LogFilter {
    /// A filter of `streams` (the `streams` parameter, `5001,6000-6999`;
    /// None: every stream) and `types` (event types matched byte for byte;
    /// empty: every event, typed or not). A type holding a comma is
    /// refused here: the server splits the list on commas, so it could
    /// not be named (a consumer group's JSON list can name it).
    pub fn new(streams: Option<&str>, types: &[&str]) -> Result<LogFilter, ClientError> {
        if let Some(bad) = types.iter().find(|t| t.contains(',')) {
            return Err(ClientError::Refused {
                code: crate::api::ErrorCode::BadRequest,
                message: format!("types: {bad:?} holds a comma, which a types= list cannot name"),
            });
        }
        Ok(LogFilter {
            streams: streams.map(str::to_string),
            types: types.iter().map(|t| t.to_string()).collect(),
        })
    }

    /// The query parameters, each starting with `&`.
    pub(super) fn query(&self) -> String {
        let mut out = String::new();
        if let Some(streams) = &self.streams {
            out.push_str("&streams=");
            out.push_str(&percent_query(streams));
        }
        if !self.types.is_empty() {
            let types: Vec<String> = self.types.iter().map(|t| percent_query(t)).collect();
            out.push_str("&types=");
            out.push_str(&types.join(","));
        }
        out
    }
}

/// `text` for a query value: unreserved bytes and `,` as they are, every
/// other byte percent-encoded.
fn percent_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~,".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
