//! The trail guard of every protected route (P7): it authenticates the
//! caller (bearer token or client certificate), checks the role, runs the handler, and records one
//! access-trail event ([`TrailEntry`]) — also for a refused or denied
//! attempt — before the answer goes out. Handlers tell it what they touched
//! through [`Touched`] in the response's extensions. A failed login is
//! answered by `refuse_login`: rate-limited and, after the first of its
//! source's window, recorded in one aggregate event
//! (`crate::server::logins`).

use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;
use vellum_compliance::trail::{AccessAction, AccessEvent};

use super::breakglass::{BreakGlassGrants, GrantToOpen, UnderBreakGlass};
use super::errors::ApiError;
use super::{AppState, ROUTES, route_index, run_blocking};
use crate::server::auth::{Action, Principal, Refusal, ScopeRule, TokenStore};
use crate::server::logins::{Aggregate, FailedLogins, LOGIN_SWEEP_MS, Source, token_prefix};
use vellum_compliance::trail::BreakGlass;

/// What a handler touched, for the access trail: handlers put it in the
/// response's extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// The stream, if one.
    pub stream: Option<u64>,
    /// First offset (or position) touched.
    pub from: Option<u64>,
    /// One past the last offset (or position) touched.
    pub to: Option<u64>,
    /// The purpose of use given in the request body.
    pub purpose: Option<String>,
    /// What else identifies the access (report hash, manifest hash).
    pub detail: Option<String>,
    /// For a global-log read: the streams whose events it returned, so the
    /// accounting of disclosures can attribute it to each patient.
    pub streams: Option<Vec<u64>>,
}

/// The request header carrying the purpose of use (HL7 v3 ActReason code
/// such as `TREAT`, or free text, clipped), recorded in the access trail.
pub const PURPOSE_HEADER: &str = "x-purpose-of-use";
/// The request header naming the recipient of a disclosure (a person or
/// organization, 45 CFR 164.528(b)(2)(ii)), clipped, recorded in the trail.
pub const RECIPIENT_HEADER: &str = "x-disclosure-recipient";
/// The request header describing what is disclosed and why
/// (164.528(b)(2)(iii)-(iv)), clipped, recorded in the trail.
pub const DESCRIPTION_HEADER: &str = "x-disclosure-description";

/// The guard of every protected route (P7): authenticates the bearer token
/// and checks the role before any body is read; at a backup, forwards the
/// request to the primary (which authenticates again and records it; a
/// refused caller's body is not read nor relayed); at the primary, runs the
/// handler, and records one access-trail event — also for a refused or
/// denied attempt — before the answer goes out. If the event cannot be
/// recorded the answer is withheld (503): no access goes unrecorded.
pub(crate) async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let action = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| route_index(request.method(), p.as_str()))
        .and_then(|i| ROUTES[i].action);
    let Some(action) = action else {
        // A protected route missing from ROUTES is a bug; refuse rather than open it.
        tracing::error!(
            path = request.uri().path(),
            "protected route missing from the route table"
        );
        return ApiError::forbidden("this route has no access rule").into_response();
    };
    // The token and role are checked before any body is read, on every
    // replica (P10): a stranger's body is never read, at a backup neither.
    let authenticated = authenticate(&state, request.headers(), request.extensions());
    let relay_body = authenticated
        .as_ref()
        .is_ok_and(|principal| principal.role.allows(action));
    if relay_body {
        return guard(state, request, next, action, authenticated, relay_body).await;
    }
    // A request that will be refused never has its body read for meaning;
    // its bytes are drained and dropped alongside the refusal (bounded in
    // bytes and time), so a client still uploading reads the 401/403/429
    // instead of a connection torn down under it (a lingering close, RFC
    // 9112 section 9.6).
    let (parts, body) = request.into_parts();
    let request = Request::from_parts(parts, axum::body::Body::empty());
    let (response, ()) = tokio::join!(
        guard(state, request, next, action, authenticated, relay_body),
        linger(body)
    );
    response
}

/// Bytes of a refused request's body drained at most.
const LINGER_BYTES_MAX: usize = crate::api::REQUEST_BODY_BYTES_MAX;
/// How long a refused request's body is drained at most (a stalled body
/// delays its refusal by this much, no more).
const LINGER_MS: u64 = 1_000;

/// Reads and drops a refused request's body, within the bounds above.
async fn linger(body: axum::body::Body) {
    let drain = axum::body::to_bytes(body, LINGER_BYTES_MAX);
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_MS), drain).await;
}

/// The guard after the route's action and the caller's token are known.
async fn guard(
    state: AppState,
    request: Request,
    next: Next,
    action: Action,
    authenticated: Result<Principal, ApiError>,
    relay_body: bool,
) -> Response {
    // A backup serves an authorized read itself (from its certified
    // prefix; its trail record committed through the primary). Any other
    // request at a backup goes to the primary, which checks the token
    // again and records the access (also a refused one) in the trail; a
    // refused caller's request goes there without its body.
    let (request, here) = match &authenticated {
        Ok(principal) if relay_body => backup_serves(&state, request, action, principal).await,
        _ => (request, false),
    };
    let request = match here {
        true => request,
        false => match crate::server::forward::forward_if_backup(&state, request, relay_body).await
        {
            Ok(request) => request,
            Err(answer) => return answer,
        },
    };
    let mut trail = TrailEntry::new(action, &request);
    let principal = match authenticated {
        Ok(principal) => principal,
        Err(error) => {
            let source = client_source(&request);
            let prefix = presented_token(request.headers()).map(token_prefix);
            return refuse_login(&state, trail, source, prefix, error).await;
        }
    };
    if !principal.role.allows(action) {
        let error = ApiError::forbidden(format!(
            "principal {} has role {}, which may not {}",
            principal.name,
            principal.role,
            action.name()
        ));
        trail.deny(&principal.name, principal.role.name(), &error);
        return trail.record_then(&state, error.into_response()).await;
    }
    let (request, path_stream) = decoded_path_stream(request, &state).await;
    if trail.event.stream.is_none() {
        // A percent-encoded stream is recorded as the handler reads it.
        trail.event.stream = path_stream
            .as_deref()
            .and_then(|text| crate::bounds::parse_canonical("stream", text).ok());
    }
    let under_grant = match check_scope(&state, &principal, action, path_stream.as_deref()) {
        Ok(under_grant) => under_grant,
        Err(error) => {
            state.counters.record_scope_denied();
            trail.deny(&principal.name, principal.role.name(), &error);
            return trail.record_then(&state, error.into_response()).await;
        }
    };
    let mut request = request;
    request.extensions_mut().insert(principal.clone());
    // A handler that keeps delivering after its answer (a subscription)
    // records each later window from this template.
    let mut template = trail.event.clone();
    template.principal = principal.name.clone();
    template.role = principal.role.name().to_string();
    request.extensions_mut().insert(TrailTemplate(template));
    if action == Action::Subscribe {
        // A subscription outlives this check: it asks again before each
        // window, so a credential revoked or expired meanwhile ends it.
        let recheck = Recheck {
            state: state.clone(),
            headers: request.headers().clone(),
            extensions: request.extensions().clone(),
            principal: principal.clone(),
        };
        request.extensions_mut().insert(recheck);
    }
    let mut response = next.run(request).await;
    if response.status().is_success() && response.extensions().get::<TrailRecorded>().is_some() {
        return response;
    }
    if let Some(grant) = under_grant {
        state.counters.record_break_glass_access();
        response.extensions_mut().insert(UnderBreakGlass(grant));
    }
    record_opening_grant(&state, trail, &principal, response).await
}

/// At a backup that knows a primary: whether it serves this request itself,
/// which it does only for a stream read, a global read or a subscription
/// by a caller whose scope admits it without a break-glass grant (grants
/// live in the primary's memory: such a read, and any refusal, is the
/// primary's to answer), not already forwarded, and whose `min_position`
/// (if any) its certified prefix reaches within
/// [`BACKUP_POSITION_WAIT_MS`] (else the primary answers). Gives the
/// request back either way.
async fn backup_serves(
    state: &AppState,
    request: Request,
    action: Action,
    principal: &Principal,
) -> (Request, bool) {
    let role = state.node.role();
    let reads = matches!(
        action,
        Action::ReadStream | Action::ReadLog | Action::Subscribe
    );
    let forwarded = request
        .headers()
        .contains_key(crate::server::forward::FORWARDED_HEADER);
    if role.is_primary || role.primary.is_none() || !reads || forwarded {
        return (request, false);
    }
    let (request, path_stream) = decoded_path_stream(request, state).await;
    if action == Action::ReadStream {
        let in_scope = path_stream
            .as_deref()
            .and_then(|text| crate::bounds::parse_canonical("stream", text).ok())
            .is_some_and(|stream| principal.scope.contains(stream));
        if !in_scope {
            return (request, false);
        }
    }
    let Ok(min_position) = query_min_position(request.uri().query()) else {
        return (request, false); // The primary answers the 400.
    };
    let reached = match min_position {
        None => true,
        Some(asked) => {
            let wait = BACKUP_POSITION_WAIT_MS;
            let served = run_blocking(state, move |node| {
                let started = Instant::now();
                let mut served = node.committed_events();
                loop {
                    let waited = u64::try_from(started.elapsed().as_millis()).unwrap_or(wait);
                    if served >= asked || waited >= wait {
                        break;
                    }
                    served = node.wait_events(served, wait - waited);
                }
                served
            })
            .await;
            served.is_ok_and(|served| served >= asked)
        }
    };
    (request, reached)
}

/// How long a backup waits for its certified prefix to reach a read's
/// `min_position` before it forwards the read to the primary.
pub const BACKUP_POSITION_WAIT_MS: u64 = 100;

/// The `min_position` query parameter, if given; Err when it is given in a
/// spelling the handlers refuse (or more than once).
fn query_min_position(query: Option<&str>) -> Result<Option<u64>, ()> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name == "min_position" {
            if found.is_some() {
                return Err(());
            }
            found = Some(crate::bounds::parse_canonical("min_position", value).map_err(|_| ())?);
        }
    }
    Ok(found)
}

/// Records the access and answers; for a break-glass opening (the
/// handler's [`GrantToOpen`]), the grant is open only while its opening's
/// record is committed: opened before recording, closed again if the
/// record failed.
async fn record_opening_grant(
    state: &AppState,
    mut trail: TrailEntry,
    principal: &Principal,
    mut response: Response,
) -> Response {
    let to_open = response.extensions().get::<GrantToOpen>().cloned();
    if let Some(grant) = to_open.as_ref().filter(|_| response.status().is_success()) {
        let now = Instant::now();
        let opened = lock_grants(state).open(
            &principal.name,
            grant.stream,
            now + grant.duration,
            grant.record.clone(),
            now,
        );
        if !opened {
            response = ApiError::unavailable(format!(
                "too many open break-glass grants on this replica (at most {}); retry later",
                super::breakglass::BREAK_GLASS_GRANTS_MAX
            ))
            .into_response();
        }
    }
    trail.finish(principal, &response);
    let answer = trail.record_then(state, response).await;
    if let Some(grant) = to_open {
        if answer.status().is_success() {
            state.counters.record_break_glass_opened();
        } else {
            lock_grants(state).close(&principal.name, grant.stream);
        }
    }
    answer
}

fn lock_grants(state: &AppState) -> std::sync::MutexGuard<'_, BreakGlassGrants> {
    state
        .break_glass
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Checks the stream the request names against the principal's scope
/// (`Action::scope_rule`). `Ok(Some(grant))`: allowed only by an open
/// break-glass grant; `Ok(None)`: allowed by the scope, or the rule is
/// checked elsewhere (the handler: a body's stream, filtered reads) or the
/// stream is unreadable (the handler answers 400).
fn check_scope(
    state: &AppState,
    principal: &Principal,
    action: Action,
    path_stream: Option<&str>,
) -> Result<Option<BreakGlass>, ApiError> {
    let scope = &principal.scope;
    let denied = |what: String| {
        ApiError::scope_denied(format!(
            "principal {} may not {} {what}: it is outside the token's scope (streams=)",
            principal.name,
            action.name()
        ))
    };
    match action.scope_rule() {
        ScopeRule::PathStream => {
            // Unreadable: the handler reads the same decoded text with the
            // same parse, and answers 400.
            let Some(stream) =
                path_stream.and_then(|text| crate::bounds::parse_canonical("stream", text).ok())
            else {
                return Ok(None);
            };
            if scope.contains(stream) {
                return Ok(None);
            }
            if action.break_glass_opens() {
                let grant = lock_grants(state).active(&principal.name, stream, Instant::now());
                if grant.is_some() {
                    return Ok(grant);
                }
                return Err(denied(format!(
                    "stream {stream} (no open break-glass grant either; POST \
                     /v1/streams/{stream}/break-glass with a reason opens one)"
                )));
            }
            Err(denied(format!("stream {stream}")))
        }
        ScopeRule::AllStreams if scope.is_all() => Ok(None),
        ScopeRule::AllStreams => Err(denied(
            "every stream's leaves (only a token with streams=* may)".to_string(),
        )),
        // Checked by the handler on the value it parsed (a body's stream,
        // the trail export's query), or not a matter of one stream.
        ScopeRule::Unscoped
        | ScopeRule::BodyStream
        | ScopeRule::StreamQueryOrAll
        | ScopeRule::FilterEvents
        | ScopeRule::OpensBreakGlass
        | ScopeRule::GroupStreams => Ok(None),
    }
}

/// The route's `{stream}` path parameter, percent-decoded exactly as the
/// handler's `Path` extractor reads it (a check of the raw text would let
/// `%31%36` past a scope without 16); None when the route has none.
async fn decoded_path_stream(request: Request, state: &AppState) -> (Request, Option<String>) {
    use axum::extract::{FromRequestParts as _, RawPathParams};
    let (mut parts, body) = request.into_parts();
    let stream = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .ok()
        .and_then(|params| {
            params
                .iter()
                .find(|(name, _)| *name == "stream")
                .map(|(_, value)| value.to_string())
        });
    (Request::from_parts(parts, body), stream)
}

/// Put in a response's extensions by a handler whose own op already
/// carried this request's access-trail record (an append: the record
/// committed in the append's atomic group), so the guard records nothing
/// more.
#[derive(Debug, Clone, Copy)]
pub struct TrailRecorded;

/// The access-trail event of an authorized request as the guard knows it
/// before the handler runs (who, from where, why), for handlers that record
/// more than one event (subscription windows).
#[derive(Debug, Clone)]
pub struct TrailTemplate(pub vellum_compliance::trail::AccessEvent);

/// The authentication of a request, to run again later (a subscription
/// runs it before each window): the credential must still be in the
/// current tables, unexpired, and name the same principal, role and scope.
#[derive(Clone)]
pub struct Recheck {
    state: AppState,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    principal: Principal,
}

impl std::fmt::Debug for Recheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The headers hold the bearer token: never shown.
        f.debug_struct("Recheck")
            .field("principal", &self.principal.name)
            .finish_non_exhaustive()
    }
}

impl Recheck {
    /// Ok while the credential still authenticates as the same principal.
    pub fn check(&self) -> Result<(), ApiError> {
        let now = authenticate(&self.state, &self.headers, &self.extensions)?;
        if now != self.principal {
            return Err(ApiError::unauthorized(format!(
                "the credential of principal {} changed (its role or scope) since this \
                 subscription opened; subscribe again",
                self.principal.name
            )));
        }
        Ok(())
    }
}

/// The access-trail event of one request, filled in as it is handled.
struct TrailEntry {
    action: vellum_compliance::trail::AccessAction,
    event: vellum_compliance::trail::AccessEvent,
}

impl TrailEntry {
    fn new(action: Action, request: &Request) -> TrailEntry {
        use vellum_compliance::trail::{ACCESS_EVENT_VERSION, AccessEvent, clip_text};
        let headers = request.headers();
        let text_header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(clip_text)
        };
        let purpose = text_header(PURPOSE_HEADER);
        let recipient = text_header(RECIPIENT_HEADER);
        let description = text_header(DESCRIPTION_HEADER);
        let peer = request
            .extensions()
            .get::<crate::server::RemoteAddr>()
            .map(|r| r.0.to_string());
        // A backup that forwarded the request names the client it came
        // from; only a peer that proved it is a replica (its certificate)
        // may, never a client.
        let from_replica = request
            .extensions()
            .get::<crate::server::PeerReplica>()
            .is_some();
        let via = headers
            .get(crate::server::forward::CLIENT_ADDR_HEADER)
            .filter(|_| from_replica)
            .and_then(|v| v.to_str().ok());
        let remote = match (peer, via) {
            (Some(peer), Some(client)) => Some(clip_text(&format!("{client} via {peer}"))),
            (peer, _) => peer,
        };
        TrailEntry {
            action: action.trail_action(),
            event: AccessEvent {
                v: ACCESS_EVENT_VERSION,
                time_ns: crate::log::now_ns(),
                principal: String::new(),
                role: String::new(),
                action: action.trail_action(),
                stream: stream_in_path(request.uri().path()),
                from: None,
                to: None,
                purpose,
                outcome: String::new(),
                remote,
                detail: None,
                recipient,
                description,
                streams: None,
                streams_truncated: false,
                count: None,
                break_glass: None,
            },
        }
    }

    fn deny(&mut self, principal: &str, role: &str, error: &ApiError) {
        self.event.principal = vellum_compliance::trail::clip_text(principal);
        self.event.role = role.to_string();
        self.event.outcome = vellum_compliance::trail::clip_text(&format!(
            "denied: {} {}",
            error.status.as_u16(),
            error.message
        ));
    }

    fn finish(&mut self, principal: &Principal, response: &Response) {
        self.event.principal = principal.name.clone();
        self.event.role = principal.role.name().to_string();
        if let Some(touched) = response.extensions().get::<Touched>() {
            self.event.stream = touched.stream.or(self.event.stream);
            self.event.from = touched.from;
            self.event.to = touched.to;
            if touched.purpose.is_some() {
                self.event.purpose = touched.purpose.clone();
            }
            self.event.detail = touched.detail.clone();
            if let Some(streams) = &touched.streams {
                self.event.set_streams_returned(streams.iter().copied());
            }
        }
        if let Some(UnderBreakGlass(grant)) = response.extensions().get::<UnderBreakGlass>() {
            self.event.mark_break_glass(grant.clone());
        }
        let status = response.status();
        self.event.outcome = if status.is_success() {
            "success".to_string()
        } else {
            format!("refused: {}", status.as_u16())
        };
    }

    /// The event as it is recorded: its action set, numbers above the
    /// index's range dropped, logged.
    fn seal(&mut self) -> AccessEvent {
        self.event.action = self.action;
        // The audit index stores these in signed 64-bit integers: a larger
        // one must never enter the trail (it once stopped the index). The
        // handlers refuse such inputs, so this only catches a bug.
        for number in [
            &mut self.event.stream,
            &mut self.event.from,
            &mut self.event.to,
        ] {
            if number.is_some_and(|n| n > crate::bounds::EDGE_INTEGER_MAX) {
                tracing::error!(?number, "a trail number above i64::MAX was dropped");
                *number = None;
            }
        }
        tracing::info!(
            principal = %self.event.principal,
            action = self.event.action.as_str(),
            stream = ?self.event.stream,
            outcome = %self.event.outcome,
            "api access"
        );
        self.event.clone()
    }

    /// Records the event; returns `answer` once it is committed, or a 503
    /// in its place when it could not be recorded.
    async fn record_then(mut self, state: &AppState, answer: Response) -> Response {
        let event = self.seal();
        let wrote = matches!(self.action, vellum_compliance::trail::AccessAction::Append)
            && answer.status().is_success();
        match crate::server::relay::record_access(state, vec![event]).await {
            Ok(Ok(())) => answer,
            // The append itself committed: its outcome must not read as
            // "nothing written"; a retry with the same key is answered from
            // the client table and recorded then.
            Ok(Err(error)) if wrote => ApiError::indeterminate(format!(
                "the append committed but its access could not be recorded in the access trail \
                 ({error}); the receipt is withheld, retry with the same idempotency key"
            ))
            .into_response(),
            Ok(Err(error)) => ApiError::unavailable(format!(
                "the access could not be recorded in the access trail ({error}); \
                 the answer is withheld, retry"
            ))
            .into_response(),
            Err(error) => error.into_response(),
        }
    }
}

/// Answers a request whose token did not authenticate: 401, or 429 with
/// `Retry-After` once its source or token prefix is over its limit
/// (`crate::server::logins`). The first failure of its source's window is
/// recorded at once (the answer waits for it, as every access's does);
/// later ones are counted into the window's aggregate, and aggregates that
/// came due are recorded with this request.
async fn refuse_login(
    state: &AppState,
    mut trail: TrailEntry,
    source: Source,
    prefix: Option<String>,
    error: ApiError,
) -> Response {
    let now_ns = trail.event.time_ns;
    let (verdict, due) = {
        let mut table = lock_logins(state);
        let verdict = table.fail(source, prefix.as_deref(), Instant::now(), now_ns);
        (verdict, table.take_due())
    };
    // A request that presents no credential guesses nothing: it is always
    // 401 (and still counted into its address's trail aggregate); only an
    // attempt with a token is answered 429 once over the limit.
    let retry_after_s = verdict.retry_after_s.filter(|_| prefix.is_some());
    state.counters.record_failed_login(retry_after_s.is_some());
    let (error, retry_after) = match retry_after_s {
        Some(seconds) => (
            ApiError::rate_limited(format!(
                "too many failed logins from this address or with this token; \
                 retry after {seconds} s"
            )),
            Some(seconds),
        ),
        None => (error, None),
    };
    let mut answer = error.clone().into_response();
    if let Some(seconds) = retry_after {
        answer
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    trail.deny("anonymous", "none", &error);
    trail.action = AccessAction::AuthFailed;
    let own = verdict.record_now.then(|| trail.seal());
    if own.is_none() && due.is_empty() {
        return answer;
    }
    match record_failed_logins(state, due, own).await {
        Ok(()) => answer,
        Err(unrecorded) if verdict.record_now => {
            lock_logins(state).unrecorded(source, now_ns);
            unrecorded.into_response()
        }
        // This failure is counted in its window's aggregate; its answer
        // does not wait for an older window's aggregate, which waits again.
        Err(_) => answer,
    }
}

fn lock_logins(state: &AppState) -> std::sync::MutexGuard<'_, FailedLogins> {
    state
        .failed_logins
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Records `aggregates` and then `own` (this request's event, if any) in
/// one call; when that fails, puts the aggregates back to wait for the
/// next try and says why (a 503 for the caller, if it waited on it).
async fn record_failed_logins(
    state: &AppState,
    aggregates: Vec<Aggregate>,
    own: Option<AccessEvent>,
) -> Result<(), ApiError> {
    let mut events: Vec<AccessEvent> = aggregates.iter().map(Aggregate::to_event).collect();
    events.extend(own);
    let outcome = match crate::server::relay::record_access(state, events).await {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => ApiError::unavailable(format!(
            "the access could not be recorded in the access trail ({error}); \
             the answer is withheld, retry"
        )),
        Err(error) => error,
    };
    if !aggregates.is_empty() {
        tracing::warn!(
            error = %outcome.message,
            "failed-login aggregates could not be recorded; they wait for the next try"
        );
        for lost in lock_logins(state).requeue(aggregates) {
            tracing::error!(
                source = %lost.source,
                count = lost.count,
                "failed-login aggregate dropped: too many waiting to be recorded"
            );
        }
    }
    Err(outcome)
}

/// Records the aggregates of failed-login windows closed by `now`; with
/// `everything`, of open windows too (at shutdown). The server's sweep
/// task calls it every [`LOGIN_SWEEP_MS`]; tests call it directly.
pub(crate) async fn flush_failed_logins(state: &AppState, now: Instant, everything: bool) {
    let due = {
        let mut table = lock_logins(state);
        if everything {
            table.drain_all()
        } else {
            table.sweep(now)
        }
    };
    if !due.is_empty() {
        // On failure the aggregates were put back (and the failure logged).
        let _ = record_failed_logins(state, due, None).await;
    }
}

/// Flushes failed-login aggregates every [`LOGIN_SWEEP_MS`] until
/// `shutdown` flips (or its sender is dropped), then flushes all of them.
pub(crate) async fn sweep_failed_logins(state: AppState, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(LOGIN_SWEEP_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => flush_failed_logins(&state, Instant::now(), false).await,
            changed = shutdown.changed() => if changed.is_err() { break },
        }
    }
    flush_failed_logins(&state, Instant::now(), true).await;
}

/// The client a request comes from, for the failed-login limits: the TCP
/// peer's address, or for a request a proven replica forwarded, the client
/// address it names (`CLIENT_ADDR_HEADER`, as the trail records it).
fn client_source(request: &Request) -> Source {
    let peer = request
        .extensions()
        .get::<crate::server::RemoteAddr>()
        .map(|r| r.0.ip());
    let forwarded = request
        .extensions()
        .get::<crate::server::PeerReplica>()
        .and_then(|_| {
            request
                .headers()
                .get(crate::server::forward::CLIENT_ADDR_HEADER)
        })
        .and_then(|v| v.to_str().ok())
        .and_then(|text| text.parse::<std::net::SocketAddr>().ok())
        .map(|addr| addr.ip());
    forwarded.or(peer).map_or(Source::Unknown, Source::of)
}

/// The bearer token presented, if the Authorization header holds one.
fn presented_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The caller: by client certificate (`crate::server::mtls`: the rules
/// for a certificate plus a token, a replica's certificate and forwarded
/// requests are there), else by bearer token.
fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
) -> Result<Principal, ApiError> {
    let from_replica = extensions.get::<crate::server::PeerReplica>().is_some();
    let by_cert = crate::server::mtls::cert_principal(
        state.client_certs.as_ref(),
        headers,
        extensions.get::<crate::server::mtls::PresentedCert>(),
        from_replica,
    )?;
    if let Some(principal) = by_cert {
        return Ok(principal);
    }
    let no_token = !headers.contains_key(header::AUTHORIZATION);
    // A backup relays a tokenless request as it came (the primary refuses
    // and records it): only a replica calling on its own gets this answer.
    let forwarded = headers.contains_key(crate::server::forward::FORWARDED_HEADER);
    if no_token && from_replica && !forwarded {
        return Err(ApiError::unauthorized(
            "a replica certificate is not a client identity: present a client certificate \
             or `Authorization: Bearer <token>`",
        ));
    }
    if no_token && extensions.get::<crate::server::mtls::OtherCert>().is_some() {
        return Err(ApiError::unauthorized(
            "the client certificate presented is not a client identity (it is not of the \
             client CA); present a client certificate or `Authorization: Bearer <token>`",
        ));
    }
    bearer_principal(&state.tokens.get(), headers)
}

fn bearer_principal(tokens: &TokenStore, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::unauthorized(
            "missing `Authorization: Bearer <token>` header",
        ));
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("the Authorization header is not ASCII"))?;
    let (scheme, token) = value.trim().split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(ApiError::unauthorized(
            "the Authorization header must be `Bearer <token>`",
        ));
    }
    match tokens.authenticate(token.trim(), crate::server::credentials::now_unix_s()) {
        Ok(principal) => Ok(principal.clone()),
        Err(Refusal::Unknown) => Err(ApiError::unauthorized("unknown bearer token")),
        Err(Refusal::Expired {
            principal,
            expires_s,
        }) => Err(ApiError::credential_expired(format!(
            "the bearer token of principal {principal} expired at {} (expires= in the \
             tokens file); ask the operator for its successor",
            crate::server::credentials::format_expires(expires_s)
        ))),
    }
}

/// The stream id in `/v1/streams/{stream}/...`, for the trail: read with
/// the same canonical parse as the handlers, so a number the handlers
/// would refuse (above i64::MAX, `+5`, `05`) is never recorded; None then.
fn stream_in_path(path: &str) -> Option<u64> {
    let text = path.strip_prefix("/v1/streams/")?.split('/').next()?;
    crate::bounds::parse_canonical("stream", text).ok()
}
