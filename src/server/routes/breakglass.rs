//! Break-glass: emergency access to a stream outside a token's scope.
//!
//! `POST /v1/streams/{stream}/break-glass` with a reason opens a grant for
//! (principal, stream) that lasts at most [`api::BREAK_GLASS_SECONDS_MAX`].
//! While it is open, the principal may read the stream and fetch its proofs
//! ([`Action::break_glass_opens`](crate::server::auth::Action::break_glass_opens));
//! every such access is recorded in the access trail with the grant (a
//! version 2 `AccessEvent` carrying `break_glass`), and counted in
//! `/metrics`. The opening itself is a trail event (`break_glass`).
//!
//! Grants live in the memory of the replica that serves the API, which is
//! the primary (every protected request is forwarded there): a restart or a
//! view change forgets them, and the principal opens a new one (recorded
//! again). Losing a grant only ever refuses access, never widens it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use vellum_compliance::trail::{BreakGlass, clip_text};

use super::Touched;
use super::errors::ApiError;
use super::extract::{ApiPath, JsonBody, edge_value};
use super::handlers::StreamPath;
use crate::api::{self, BreakGlassAnswer, BreakGlassRequest};
use crate::server::auth::Principal;

/// Most break-glass grants held at once (expired ones are dropped first);
/// beyond it a new grant is refused with 503, so memory stays bounded.
pub const BREAK_GLASS_GRANTS_MAX: usize = 10_000;

/// One open grant.
#[derive(Debug, Clone)]
struct Grant {
    expires: Instant,
    record: BreakGlass,
}

/// The open grants, by (principal, stream).
#[derive(Debug, Default)]
pub struct BreakGlassGrants {
    grants: HashMap<(String, u64), Grant>,
}

impl BreakGlassGrants {
    /// The grant `principal` holds on `stream` at `now`, if open.
    pub fn active(&self, principal: &str, stream: u64, now: Instant) -> Option<BreakGlass> {
        self.grants
            .get(&(principal.to_string(), stream))
            .filter(|grant| now < grant.expires)
            .map(|grant| grant.record.clone())
    }

    /// Opens (or replaces) the grant of `principal` on `stream` until
    /// `expires`; false when [`BREAK_GLASS_GRANTS_MAX`] open grants remain
    /// after the expired ones are dropped.
    pub fn open(
        &mut self,
        principal: &str,
        stream: u64,
        expires: Instant,
        record: BreakGlass,
        now: Instant,
    ) -> bool {
        let key = (principal.to_string(), stream);
        if self.grants.len() >= BREAK_GLASS_GRANTS_MAX && !self.grants.contains_key(&key) {
            self.grants.retain(|_, grant| now < grant.expires);
            if self.grants.len() >= BREAK_GLASS_GRANTS_MAX {
                return false;
            }
        }
        self.grants.insert(key, Grant { expires, record });
        true
    }

    /// Drops the grant of `principal` on `stream`, if any.
    pub fn close(&mut self, principal: &str, stream: u64) {
        self.grants.remove(&(principal.to_string(), stream));
    }
}

/// What the break-glass handler asks the guard to open once the opening is
/// recorded in the trail (a grant is never open without its record).
#[derive(Debug, Clone)]
pub struct GrantToOpen {
    /// The stream.
    pub stream: u64,
    /// How long from now.
    pub duration: Duration,
    /// The grant as the trail records it.
    pub record: BreakGlass,
}

/// Put in a response's extensions when the request was made under (or
/// opened) a break-glass grant: the guard marks its trail event with it.
#[derive(Debug, Clone)]
pub struct UnderBreakGlass(pub BreakGlass);

/// `POST /v1/streams/{stream}/break-glass`.
pub(crate) async fn open(
    Extension(principal): Extension<Principal>,
    ApiPath(path): ApiPath<StreamPath>,
    body: JsonBody<BreakGlassRequest>,
) -> Result<Response, ApiError> {
    let stream = path.stream()?;
    let request = body.value;
    // Blank: only ASCII spaces, tabs and line breaks (the OpenAPI pattern
    // says the same, so any schema-valid reason is accepted).
    let reason = request
        .reason
        .trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    if reason.is_empty() {
        return Err(ApiError::bad_request(
            "reason: break-glass needs a reason (it is recorded in the access trail)",
        ));
    }
    if request.reason.len() > api::BREAK_GLASS_REASON_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "reason is longer than {} bytes",
            api::BREAK_GLASS_REASON_BYTES_MAX
        )));
    }
    let seconds = request
        .duration_s
        .map(|s| edge_value("duration_s", s))
        .transpose()?
        .unwrap_or(api::BREAK_GLASS_SECONDS_DEFAULT);
    if !(1..=api::BREAK_GLASS_SECONDS_MAX).contains(&seconds) {
        return Err(ApiError::bad_request(format!(
            "duration_s: {seconds} is outside 1 to {} seconds",
            api::BREAK_GLASS_SECONDS_MAX
        )));
    }
    let opened_ns = crate::log::now_ns();
    let record = BreakGlass {
        reason: clip_text(reason),
        opened_ns,
        expires_ns: opened_ns.saturating_add(seconds.saturating_mul(1_000_000_000)),
    };
    tracing::warn!(principal = %principal.name, stream, seconds, "break-glass access asked for (opens once recorded)");
    let answer = BreakGlassAnswer {
        stream,
        principal: principal.name.clone(),
        opened_ns,
        expires_ns: record.expires_ns,
    };
    let mut response = Json(answer).into_response();
    response.extensions_mut().insert(Touched {
        stream: Some(stream),
        ..Touched::default()
    });
    response
        .extensions_mut()
        .insert(UnderBreakGlass(record.clone()));
    response.extensions_mut().insert(GrantToOpen {
        stream,
        duration: Duration::from_secs(seconds),
        record,
    });
    Ok(response)
}
