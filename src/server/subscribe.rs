//! `GET /v1/subscribe`: a long-lived stream of committed events.
//!
//! A producer task catches up from the requested position in pages of
//! [`api::READ_EVENTS_MAX`], then waits for new commits with
//! `Node::wait_events`, sending an [`api::Heartbeat`] line whenever a wait
//! ends with nothing new. It writes into a bounded channel
//! ([`SUBSCRIPTION_BUFFER_MAX`] lines): a slow reader makes the producer
//! wait instead of growing memory, and a disconnected reader makes the send
//! fail, which ends the producer. A failed node read ends the stream with
//! one [`api::ErrorBody`] line; the client resumes from its last position.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::SUBSCRIPTION_BUFFER_MAX;
use super::routes::extract::edge_optional;
use axum::Extension;
use vellum_compliance::trail::AccessEvent;

use super::routes::{ApiError, ApiQuery, AppState, TrailTemplate, run_blocking};
use crate::api::{self, Heartbeat, LogEvent};
use crate::server::auth::{Principal, Scope};
use crate::server::filter::EventFilter;

/// Pause after a wait reported new events that a read then did not find.
const SUBSCRIPTION_RETRY_MS: u64 = 10;

/// How lines are framed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One JSON document per line (`application/x-ndjson`).
    #[default]
    Ndjson,
    /// Server-sent events (`text/event-stream`).
    Sse,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscribeQuery {
    from: Option<String>,
    #[serde(default)]
    format: Format,
    /// Read-your-writes: the subscription opens once this replica serves
    /// every position below this one (bounded wait).
    min_position: Option<String>,
    /// The event filter (`crate::server::filter`).
    streams: Option<String>,
    /// The event filter's types (`crate::server::filter`).
    types: Option<String>,
}

/// `GET /v1/subscribe?from=P&format=ndjson|sse`.
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    Extension(TrailTemplate(template)): Extension<TrailTemplate>,
    Extension(principal): Extension<Principal>,
    recheck: Option<Extension<super::routes::guard::Recheck>>,
    ApiQuery(query): ApiQuery<SubscribeQuery>,
) -> Result<Response, ApiError> {
    let from = edge_optional("from", query.from.as_deref())?.unwrap_or(0);
    let min_position = edge_optional("min_position", query.min_position.as_deref())?;
    let filter = EventFilter::parse(query.streams.as_deref(), query.types.as_deref())?;
    super::routes::handlers::await_position(&state, min_position).await?;
    let permit = state
        .subscriptions
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::unavailable("too many open subscriptions on this replica; retry later")
        })?;
    let (sender, receiver) = mpsc::channel::<Bytes>(SUBSCRIPTION_BUFFER_MAX);
    let detail = filter.describe();
    let window = Window {
        template,
        scope: principal.scope,
        filter,
        format: query.format,
        recheck: recheck.map(|Extension(recheck)| recheck),
    };
    tokio::spawn(produce(state, window, from, sender, permit));
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let line = receiver.recv().await?;
        Some((Ok::<Bytes, Infallible>(line), receiver))
    });
    let content_type = match query.format {
        Format::Ndjson => "application/x-ndjson",
        Format::Sse => "text/event-stream",
    };
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(stream),
    )
        .into_response();
    // The trail records the subscription's start; the guard sends this
    // answer (and so the first event) only after that record is committed.
    response.extensions_mut().insert(super::routes::Touched {
        stream: None,
        from: Some(from),
        to: None,
        purpose: None,
        detail,
        streams: None,
    });
    Ok(response)
}

/// What every window of one subscription shares.
struct Window {
    /// The trail event each delivered window is recorded from.
    template: AccessEvent,
    /// The subscriber's scope: events of other streams are left out.
    scope: Scope,
    /// What the subscriber asked for: other events are left out too.
    filter: EventFilter,
    format: Format,
    /// The subscriber's authentication, asked again before each window
    /// (None only when the guard did not set it: in-process tests).
    recheck: Option<super::routes::guard::Recheck>,
}

/// Feeds the channel until the reader goes away or a read fails.
async fn produce(
    state: AppState,
    window: Window,
    mut position: u64,
    sender: mpsc::Sender<Bytes>,
    _permit: OwnedSemaphorePermit,
) {
    let Window {
        template,
        scope,
        filter,
        format,
        recheck,
    } = window;
    // True when the last wait reported new events; if the read that follows
    // finds none (the node's counters ran ahead of its readable log), pause
    // briefly instead of spinning between an instant wait and an empty read.
    let mut grew = false;
    loop {
        if sender.is_closed() {
            return; // The reader went away.
        }
        // A token or certificate revoked (its line deleted, the file
        // reloaded) or expired since the subscription opened ends it.
        if let Some(Err(error)) = recheck.as_ref().map(|r| r.check()) {
            tracing::info!(position, error = %error.message, "subscription ended: credential no longer valid");
            let _ = sender.send(error_line(format, &error)).await;
            return;
        }
        let page = run_blocking(&state, move |node| {
            node.read_log(position, api::READ_EVENTS_MAX)
        })
        .await
        .and_then(|r| r.map_err(ApiError::from));
        let mut events = match page {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(position, error = %error.message, "subscription read failed");
                let _ = sender.send(error_line(format, &error)).await;
                return;
            }
        };
        if let Some(last) = events.last().map(|e| e.position) {
            // Events outside the subscriber's scope are left out; when a
            // page holds none of its streams, a heartbeat carries the
            // position past it, so the subscriber can resume from there.
            events.retain(|e| scope.contains(e.stream) && filter.matches(e));
            if events.is_empty() {
                position = last + 1;
                if sender.send(heartbeat_line(format, position)).await.is_err() {
                    return;
                }
                continue;
            }
        }
        if !events.is_empty() {
            grew = false;
            // P7 and 164.528: the window is recorded, with the streams it
            // returns, before any of its events leaves.
            if let Err(error) = record_window(&state, &template, &filter, &events).await {
                tracing::warn!(position, error = %error.message, "subscription window not recorded");
                let _ = sender.send(error_line(format, &error)).await;
                return;
            }
            for event in &events {
                position = event.position + 1;
                if sender.send(event_line(format, event)).await.is_err() {
                    return;
                }
            }
            continue;
        }
        if grew {
            tokio::time::sleep(Duration::from_millis(SUBSCRIPTION_RETRY_MS)).await;
        }
        // Caught up: wait for the next commit, or send a heartbeat.
        let seen = position;
        let timeout_ms = state.heartbeat_ms;
        let Ok(committed) =
            run_blocking(&state, move |node| node.wait_events(seen, timeout_ms)).await
        else {
            let error = ApiError::storage("the replica failed while waiting for events");
            let _ = sender.send(error_line(format, &error)).await;
            return;
        };
        grew = committed > seen;
        if !grew && sender.send(heartbeat_line(format, seen)).await.is_err() {
            return;
        }
    }
}

/// Records one delivered window of a subscription in the access trail:
/// its positions and the distinct streams whose events it carries.
async fn record_window(
    state: &AppState,
    template: &AccessEvent,
    filter: &EventFilter,
    events: &[LogEvent],
) -> Result<(), ApiError> {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok(());
    };
    let mut event = template.clone();
    event.time_ns = crate::log::now_ns();
    event.from = Some(first.position);
    event.to = Some(last.position + 1);
    event.outcome = "success".to_string();
    event.detail = Some(match filter.describe() {
        Some(filter) => format!("subscription window delivered; {filter}"),
        None => "subscription window delivered".to_string(),
    });
    event.set_streams_returned(events.iter().map(|e| e.stream));
    crate::server::relay::record_access(state, vec![event])
        .await?
        .map_err(|error| {
            ApiError::unavailable(format!(
                "the subscription window could not be recorded in the access trail ({error}); \
                 resume from position {}",
                first.position
            ))
        })
}

fn frame(format: Format, event: Option<&str>, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(json.len() + 32);
    match format {
        Format::Ndjson => {
            out.extend_from_slice(json);
            out.push(b'\n');
        }
        Format::Sse => {
            if let Some(name) = event {
                out.extend_from_slice(format!("event: {name}\n").as_bytes());
            }
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(json);
            out.extend_from_slice(b"\n\n");
        }
    }
    Bytes::from(out)
}

fn event_line(format: Format, event: &LogEvent) -> Bytes {
    let json = serde_json::to_vec(event).expect("a LogEvent always serializes");
    frame(format, None, &json)
}

fn heartbeat_line(format: Format, next_position: u64) -> Bytes {
    let beat = Heartbeat {
        heartbeat: true,
        next_position,
    };
    let json = serde_json::to_vec(&beat).expect("a Heartbeat always serializes");
    frame(format, Some("heartbeat"), &json)
}

fn error_line(format: Format, error: &ApiError) -> Bytes {
    let json = serde_json::to_vec(&error.body()).expect("an ErrorBody always serializes");
    frame(format, Some("error"), &json)
}
