//! Persistent subscriptions (consumer groups): `/v1/groups` routes.
//!
//! `POST /v1/groups` creates a group (writer), `GET`/`DELETE
//! /v1/groups/{group}` shows or deletes it (delete: writer);
//! `POST .../pull` leases events to a consumer (long-poll up to
//! `wait_ms`), `POST .../ack` and `POST .../nack` settle them,
//! `GET .../parked` lists parked events and `POST .../replay` delivers
//! them again (writer). The primary serves them all (a backup forwards).
//!
//! Scope: a group's stream filter (every user stream when it has none)
//! must be inside the caller's scope, else 403 `scope_denied`; a group
//! delivers events of those streams, so a narrower token may not consume it.
//! The guard records every call in the access trail; a pull names the
//! streams and positions it delivered (a disclosure, like a subscription).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use vellum_compliance::groups::{
    GROUP_LEASE_MS_MAX, GROUP_LEASE_MS_MIN, GROUP_POSITIONS_MAX, GROUP_REASON_BYTES_MAX,
    GROUP_RETRY_MAX, valid_group_name,
};
use vellum_compliance::trail::clip_text;

use super::errors::ApiError;
use super::extract::{ApiPath, ApiQuery, JsonBody, edge_number, edge_optional, edge_value};
use super::{AppState, Touched, run_blocking};
use crate::api::code;
use crate::server::auth::Principal;
use crate::server::filter::EventFilter;
use crate::server::groups::{
    AckRequest, CreateGroupRequest, GROUP_CONSUMER_BYTES_MAX, GROUP_LEASE_MS_DEFAULT,
    GROUP_PARKED_LIST_MAX, GROUP_PULL_EVENTS_DEFAULT, GROUP_PULL_EVENTS_MAX,
    GROUP_PULL_WAIT_MS_MAX, GROUP_RETRY_DEFAULT, GroupAnswer, GroupCall, GroupError, GroupInfo,
    GroupStart, NackRequest, PullRequest, ReplayRequest,
};

/// The `{group}` path parameter.
#[derive(Debug, Deserialize)]
pub(crate) struct GroupPath {
    group: String,
}

impl GroupPath {
    fn name(&self) -> Result<String, ApiError> {
        checked_name(&self.group)
    }
}

fn checked_name(name: &str) -> Result<String, ApiError> {
    if !valid_group_name(name) {
        let shown: String = name.chars().take(80).collect();
        return Err(ApiError::bad_request(format!(
            "group: {shown:?} ({} bytes) is not a group name: 1 to {} bytes of A-Z a-z 0-9 - _ ., not starting with .",
            name.len(),
            vellum_compliance::groups::GROUP_NAME_BYTES_MAX
        )));
    }
    Ok(name.to_string())
}

/// `GET /v1/groups/{group}/parked` query.
#[derive(Debug, Deserialize)]
pub(crate) struct ParkedQuery {
    from: Option<String>,
    max: Option<String>,
}

impl From<GroupError> for ApiError {
    fn from(error: GroupError) -> ApiError {
        let message = error.to_string();
        match error {
            GroupError::NotFound { .. } => ApiError::not_found(message),
            GroupError::Exists { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::GROUP_EXISTS, message)
            }
            GroupError::TooManyGroups { .. } => ApiError::refused(message),
            GroupError::NotDelivered { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::NOT_DELIVERED, message)
            }
            GroupError::NotParked { .. } => {
                ApiError::new(StatusCode::CONFLICT, code::NOT_PARKED, message)
            }
            GroupError::CatchingUp { .. } => ApiError::unavailable(message),
            GroupError::Unavailable(unavailable) => unavailable.into(),
            GroupError::Indeterminate { .. } => ApiError::indeterminate(message),
            GroupError::Internal(fault) => fault.into(),
        }
    }
}

/// Refuses unless `principal`'s scope holds every stream of `ranges`
/// (empty: every user stream, so only `streams=*`).
fn check_scope(principal: &Principal, group: &str, ranges: &[(u64, u64)]) -> Result<(), ApiError> {
    let inside = match ranges.is_empty() {
        true => principal.scope.is_all(),
        false => ranges
            .iter()
            .all(|(first, last)| principal.scope.covers(*first, *last)),
    };
    match inside {
        true => Ok(()),
        false => Err(ApiError::scope_denied(format!(
            "principal {} may not use consumer group {group:?}: its streams ({}) are not all inside the token's scope (streams=)",
            principal.name,
            crate::server::groups::streams_text(ranges)
                .unwrap_or_else(|| "every user stream".to_string())
        ))),
    }
}

async fn call(state: &AppState, call: GroupCall) -> Result<GroupAnswer, ApiError> {
    run_blocking(state, move |node| node.group(call))
        .await?
        .map_err(ApiError::from)
}

/// The group's state, after checking the caller may use it.
async fn usable_group(
    state: &AppState,
    principal: &Principal,
    name: &str,
) -> Result<GroupInfo, ApiError> {
    let answer = call(
        state,
        GroupCall::Get {
            name: name.to_string(),
        },
    )
    .await?;
    let GroupAnswer::Info(info) = answer else {
        return Err(unexpected());
    };
    let filter = EventFilter::parse(info.streams.as_deref(), None)?;
    check_scope(principal, name, filter.stream_ranges().unwrap_or_default())?;
    Ok(info)
}

fn unexpected() -> ApiError {
    ApiError::storage("the replica answered a consumer-group call with the wrong kind of answer")
}

fn answered(answer: impl serde::Serialize, touched: Touched) -> Response {
    let mut response = Json(answer).into_response();
    response.extensions_mut().insert(touched);
    response
}

fn about(group: &str, what: &str) -> Touched {
    Touched {
        detail: Some(clip_text(&format!("group {group}: {what}"))),
        ..Touched::default()
    }
}

/// `POST /v1/groups`.
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: JsonBody<CreateGroupRequest>,
) -> Result<Response, ApiError> {
    let request = body.value;
    let name = checked_name(&request.name)?;
    let mut filter = EventFilter::parse(request.streams.as_deref(), None)?;
    if let Some(types) = &request.types {
        filter = filter.with_types(types)?;
    }
    let streams = filter.stream_ranges().unwrap_or_default().to_vec();
    let types: Vec<String> = filter
        .event_types()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    // The scope is checked on streams only: a type list narrows what the
    // group delivers, never widens it.
    check_scope(&principal, &name, &streams)?;
    let start = match request.start.as_deref() {
        None | Some("beginning") => GroupStart::Beginning,
        Some("end") => GroupStart::End,
        Some(text) => GroupStart::Position(edge_number("start", text)?),
    };
    let retry_max = request.retry_max.unwrap_or(GROUP_RETRY_DEFAULT);
    if retry_max > GROUP_RETRY_MAX {
        return Err(ApiError::bad_request(format!(
            "retry_max: {retry_max} is more than {GROUP_RETRY_MAX}"
        )));
    }
    let lease_ms = request.lease_ms.unwrap_or(GROUP_LEASE_MS_DEFAULT);
    if !(GROUP_LEASE_MS_MIN..=GROUP_LEASE_MS_MAX).contains(&lease_ms) {
        return Err(ApiError::bad_request(format!(
            "lease_ms: {lease_ms} is not between {GROUP_LEASE_MS_MIN} and {GROUP_LEASE_MS_MAX}"
        )));
    }
    let touched = match filter.describe() {
        Some(filter) => about(&name, &format!("create; {filter}")),
        None => about(&name, "create"),
    };
    let answer = call(
        &state,
        GroupCall::Create {
            name,
            streams,
            types,
            start,
            retry_max,
            lease_ms,
            principal: principal.name.clone(),
        },
    )
    .await?;
    let GroupAnswer::Info(info) = answer else {
        return Err(unexpected());
    };
    let mut response = answered(info, touched);
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `GET /v1/groups/{group}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let info = usable_group(&state, &principal, &name).await?;
    Ok(answered(info, about(&name, "get")))
}

/// `DELETE /v1/groups/{group}`.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    usable_group(&state, &principal, &name).await?;
    let touched = about(&name, "delete");
    let answer = call(
        &state,
        GroupCall::Delete {
            name,
            principal: principal.name.clone(),
        },
    )
    .await?;
    let GroupAnswer::Deleted(deleted) = answer else {
        return Err(unexpected());
    };
    Ok(answered(deleted, touched))
}

/// `POST /v1/groups/{group}/pull`.
pub(crate) async fn pull(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
    body: JsonBody<PullRequest>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let request = body.value;
    let consumer = request.consumer.unwrap_or_else(|| principal.name.clone());
    if consumer.is_empty() || consumer.len() > GROUP_CONSUMER_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "consumer: {} bytes, must be 1 to {GROUP_CONSUMER_BYTES_MAX}",
            consumer.len()
        )));
    }
    let max = request.max.unwrap_or(GROUP_PULL_EVENTS_DEFAULT);
    if max == 0 || max > GROUP_PULL_EVENTS_MAX {
        return Err(ApiError::bad_request(format!(
            "max: {max} is not between 1 and {GROUP_PULL_EVENTS_MAX}"
        )));
    }
    let wait_ms = request.wait_ms.unwrap_or(0);
    if wait_ms > GROUP_PULL_WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "wait_ms: {wait_ms} is more than {GROUP_PULL_WAIT_MS_MAX}"
        )));
    }
    usable_group(&state, &principal, &name).await?;
    let answer = call(
        &state,
        GroupCall::Pull {
            name: name.clone(),
            consumer: consumer.clone(),
            max,
            wait_ms,
        },
    )
    .await?;
    let GroupAnswer::Delivered(delivery) = answer else {
        return Err(unexpected());
    };
    let positions = delivery.events.iter().map(|e| e.event.position);
    let touched = Touched {
        from: positions.clone().min(),
        to: positions.max().map(|p| p.saturating_add(1)),
        detail: Some(clip_text(&format!(
            "group {name}: pull by consumer {consumer}, {} events",
            delivery.events.len()
        ))),
        streams: Some(delivery.events.iter().map(|e| e.event.stream).collect()),
        ..Touched::default()
    };
    Ok(answered(delivery, touched))
}

/// Positions of an ack, nack or replay body: 1 to [`GROUP_POSITIONS_MAX`],
/// each at most the API's integer bound.
fn checked_positions(positions: &[u64]) -> Result<Vec<u64>, ApiError> {
    if positions.is_empty() || positions.len() > GROUP_POSITIONS_MAX {
        return Err(ApiError::bad_request(format!(
            "positions: {} given, must be 1 to {GROUP_POSITIONS_MAX}",
            positions.len()
        )));
    }
    positions
        .iter()
        .enumerate()
        .map(|(i, p)| edge_value(&format!("positions[{i}]"), *p))
        .collect()
}

/// `POST /v1/groups/{group}/ack`.
pub(crate) async fn ack(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
    body: JsonBody<AckRequest>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let positions = checked_positions(&body.value.positions)?;
    usable_group(&state, &principal, &name).await?;
    let touched = about(&name, &format!("ack of {} positions", positions.len()));
    let answer = call(
        &state,
        GroupCall::Ack {
            name,
            positions,
            principal: principal.name.clone(),
        },
    )
    .await?;
    let GroupAnswer::Acked(acked) = answer else {
        return Err(unexpected());
    };
    Ok(answered(acked, touched))
}

/// `POST /v1/groups/{group}/nack`.
pub(crate) async fn nack(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
    body: JsonBody<NackRequest>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let request = body.value;
    let positions = checked_positions(&request.positions)?;
    let park = match request.action.as_deref() {
        None | Some("retry") => false,
        Some("park") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "action: {:?} is neither \"retry\" nor \"park\"",
                clip_text(other)
            )));
        }
    };
    let reason = request.reason.unwrap_or_default();
    if reason.len() > GROUP_REASON_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "reason: {} bytes, at most {GROUP_REASON_BYTES_MAX}",
            reason.len()
        )));
    }
    usable_group(&state, &principal, &name).await?;
    let touched = about(&name, &format!("nack of {} positions", positions.len()));
    let answer = call(
        &state,
        GroupCall::Nack {
            name,
            positions,
            park,
            reason,
            principal: principal.name.clone(),
        },
    )
    .await?;
    let GroupAnswer::Nacked(nacked) = answer else {
        return Err(unexpected());
    };
    Ok(answered(nacked, touched))
}

/// `GET /v1/groups/{group}/parked`.
pub(crate) async fn parked(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
    ApiQuery(query): ApiQuery<ParkedQuery>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let from = edge_optional("from", query.from.as_deref())?.unwrap_or(0);
    let max = edge_optional("max", query.max.as_deref())?.unwrap_or(GROUP_PARKED_LIST_MAX);
    if max == 0 || max > GROUP_PARKED_LIST_MAX {
        return Err(ApiError::bad_request(format!(
            "max: {max} is not between 1 and {GROUP_PARKED_LIST_MAX}"
        )));
    }
    usable_group(&state, &principal, &name).await?;
    let touched = about(&name, "parked list");
    let answer = call(&state, GroupCall::Parked { name, from, max }).await?;
    let GroupAnswer::Parked(list) = answer else {
        return Err(unexpected());
    };
    Ok(answered(list, touched))
}

/// `POST /v1/groups/{group}/replay`.
pub(crate) async fn replay(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<GroupPath>,
    body: JsonBody<ReplayRequest>,
) -> Result<Response, ApiError> {
    let name = path.name()?;
    let positions = body
        .value
        .positions
        .as_deref()
        .map(checked_positions)
        .transpose()?;
    usable_group(&state, &principal, &name).await?;
    let touched = about(&name, "replay");
    let answer = call(
        &state,
        GroupCall::Replay {
            name,
            positions,
            principal: principal.name.clone(),
        },
    )
    .await?;
    let GroupAnswer::Replayed(replayed) = answer else {
        return Err(unexpected());
    };
    Ok(answered(replayed, touched))
}
