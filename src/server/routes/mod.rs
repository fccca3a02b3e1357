//! The axum router of the client API, built from one route table
//! ([`ROUTES`]): path, method, access rule and handler of every route are
//! written once there, and the router, the trail guard, metrics and the
//! OpenAPI test all read it, so they cannot drift.
//!
//! Layout: [`errors`] ([`ApiError`], the mapping of node errors to statuses),
//! [`extract`] (extractors whose rejections are JSON 400s naming the field),
//! [`guard`] (authentication, roles and the access-trail record of every
//! protected request), [`handlers`] (one function per route), [`tlog`] (the
//! read-only C2SP tlog-tiles view of the log).
//!
//! Every node call runs on the blocking pool ([`run_blocking`]): the node may
//! wait for disk or for a commit, and a panic there becomes a logged
//! `500 storage` instead of taking the server down.

pub mod audit_export;
pub mod breakglass;
pub mod custody;
pub mod errors;
pub mod extract;
pub mod groups;
pub mod guard;
pub mod handlers;
pub mod tlog;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::routing::{MethodFilter, MethodRouter, on};
use tokio::sync::Semaphore;

use super::auth::{Action, TokenStore};
use super::forward::Forwarder;
use super::logins::{FailedLogins, LoginLimits};
use super::metrics::Counters;
use super::node::Node;
use super::{HEARTBEAT_MS, SUBSCRIPTIONS_MAX, ServerError};
use crate::api::{self, code};

pub use errors::ApiError;
pub use extract::{ApiPath, ApiQuery, JsonBody};
pub use guard::{DESCRIPTION_HEADER, PURPOSE_HEADER, RECIPIENT_HEADER, Touched, TrailTemplate};

/// Events a read returns when the caller does not say.
pub const READ_EVENTS_DEFAULT: u64 = 100;
/// Longest `purpose` an append may carry, in bytes.
pub const PURPOSE_BYTES_MAX: usize = 1024;

/// One route of the API: the single table that auth, metrics and the
/// OpenAPI test read, so they cannot drift from each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSpec {
    /// HTTP method.
    pub method: &'static str,
    /// axum path pattern (also the OpenAPI path).
    pub path: &'static str,
    /// What the route does; `None` for the public routes (no token).
    pub action: Option<Action>,
    /// The handler that serves it.
    pub endpoint: Endpoint,
}

/// The handler of one route. The router is built from [`ROUTES`], and this
/// enum only names handlers, so a path, a method or an access rule is
/// written exactly once: in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `handlers::append`.
    Append,
    /// `handlers::read_stream`.
    ReadStream,
    /// `handlers::read_log`.
    ReadLog,
    /// `subscribe::subscribe`.
    Subscribe,
    /// `handlers::proof`.
    Proof,
    /// `handlers::consistency`.
    Consistency,
    /// `handlers::certificate`.
    Certificate,
    /// `handlers::export_events`.
    ExportEvents,
    /// `handlers::export_audit`.
    ExportAudit,
    /// `handlers::record_verification`.
    RecordVerification,
    /// `breakglass::open`.
    BreakGlass,
    /// `custody::shred`.
    Shred,
    /// `custody::hold`.
    Hold,
    /// `custody::release`.
    ReleaseHold,
    /// `custody::retain`.
    Retain,
    /// `groups::create`.
    GroupCreate,
    /// `groups::get`.
    GroupGet,
    /// `groups::delete`.
    GroupDelete,
    /// `groups::pull`.
    GroupPull,
    /// `groups::ack`.
    GroupAck,
    /// `groups::nack`.
    GroupNack,
    /// `groups::parked`.
    GroupParked,
    /// `groups::replay`.
    GroupReplay,
    /// `tlog::checkpoint`.
    TlogCheckpoint,
    /// `tlog::tile` (hash tiles and entry bundles).
    TlogTile,
    /// `handlers::health`.
    Health,
    /// `metrics::metrics`.
    Metrics,
    /// `openapi::openapi`.
    OpenApi,
}

impl Endpoint {
    /// The handler, accepting `method` only.
    fn method_router(self, method: &str) -> MethodRouter<AppState> {
        let filter = match method {
            "GET" => MethodFilter::GET,
            "POST" => MethodFilter::POST,
            "DELETE" => MethodFilter::DELETE,
            other => panic!("route table names method {other}, which the router does not serve"),
        };
        match self {
            Endpoint::Append => on(filter, handlers::append),
            Endpoint::ReadStream => on(filter, handlers::read_stream),
            Endpoint::ReadLog => on(filter, handlers::read_log),
            Endpoint::Subscribe => on(filter, super::subscribe::subscribe),
            Endpoint::Proof => on(filter, handlers::proof),
            Endpoint::Consistency => on(filter, handlers::consistency),
            Endpoint::Certificate => on(filter, handlers::certificate),
            Endpoint::ExportEvents => on(filter, handlers::export_events),
            Endpoint::ExportAudit => on(filter, handlers::export_audit),
            Endpoint::RecordVerification => on(filter, handlers::record_verification),
            Endpoint::BreakGlass => on(filter, breakglass::open),
            Endpoint::Shred => on(filter, custody::shred),
            Endpoint::Hold => on(filter, custody::hold),
            Endpoint::ReleaseHold => on(filter, custody::release),
            Endpoint::Retain => on(filter, custody::retain),
            Endpoint::GroupCreate => on(filter, groups::create),
            Endpoint::GroupGet => on(filter, groups::get),
            Endpoint::GroupDelete => on(filter, groups::delete),
            Endpoint::GroupPull => on(filter, groups::pull),
            Endpoint::GroupAck => on(filter, groups::ack),
            Endpoint::GroupNack => on(filter, groups::nack),
            Endpoint::GroupParked => on(filter, groups::parked),
            Endpoint::GroupReplay => on(filter, groups::replay),
            Endpoint::TlogCheckpoint => on(filter, tlog::checkpoint),
            Endpoint::TlogTile => on(filter, tlog::tile),
            Endpoint::Health => on(filter, handlers::health),
            Endpoint::Metrics => on(filter, super::metrics::metrics),
            Endpoint::OpenApi => on(filter, super::openapi::openapi),
        }
    }
}

/// Every route the router serves.
pub const ROUTES: &[RouteSpec] = &[
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/append",
        endpoint: Endpoint::Append,
        action: Some(Action::Append),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/streams/{stream}/events",
        endpoint: Endpoint::ReadStream,
        action: Some(Action::ReadStream),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/log",
        endpoint: Endpoint::ReadLog,
        action: Some(Action::ReadLog),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/subscribe",
        endpoint: Endpoint::Subscribe,
        action: Some(Action::Subscribe),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/streams/{stream}/events/{offset}/proof",
        endpoint: Endpoint::Proof,
        action: Some(Action::Proof),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/consistency",
        endpoint: Endpoint::Consistency,
        action: Some(Action::Consistency),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/certificate",
        endpoint: Endpoint::Certificate,
        action: Some(Action::Certificate),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/export/events",
        endpoint: Endpoint::ExportEvents,
        action: Some(Action::ExportEvents),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/export/audit",
        endpoint: Endpoint::ExportAudit,
        action: Some(Action::ExportAudit),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/break-glass",
        endpoint: Endpoint::BreakGlass,
        action: Some(Action::BreakGlass),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/shred",
        endpoint: Endpoint::Shred,
        action: Some(Action::Shred),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/hold",
        endpoint: Endpoint::Hold,
        action: Some(Action::Hold),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/hold/release",
        endpoint: Endpoint::ReleaseHold,
        action: Some(Action::ReleaseHold),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/streams/{stream}/retention",
        endpoint: Endpoint::Retain,
        action: Some(Action::Retain),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/groups",
        endpoint: Endpoint::GroupCreate,
        action: Some(Action::GroupCreate),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/groups/{group}",
        endpoint: Endpoint::GroupGet,
        action: Some(Action::GroupGet),
    },
    RouteSpec {
        method: "DELETE",
        path: "/v1/groups/{group}",
        endpoint: Endpoint::GroupDelete,
        action: Some(Action::GroupDelete),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/groups/{group}/pull",
        endpoint: Endpoint::GroupPull,
        action: Some(Action::GroupPull),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/groups/{group}/ack",
        endpoint: Endpoint::GroupAck,
        action: Some(Action::GroupAck),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/groups/{group}/nack",
        endpoint: Endpoint::GroupNack,
        action: Some(Action::GroupNack),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/groups/{group}/parked",
        endpoint: Endpoint::GroupParked,
        action: Some(Action::GroupParked),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/groups/{group}/replay",
        endpoint: Endpoint::GroupReplay,
        action: Some(Action::GroupReplay),
    },
    RouteSpec {
        method: "POST",
        path: "/v1/verifications",
        endpoint: Endpoint::RecordVerification,
        action: Some(Action::RecordVerification),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tlog/checkpoint",
        endpoint: Endpoint::TlogCheckpoint,
        action: Some(Action::TlogCheckpoint),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/tlog/tile/{*path}",
        endpoint: Endpoint::TlogTile,
        action: Some(Action::TlogTiles),
    },
    RouteSpec {
        method: "GET",
        path: "/v1/health",
        endpoint: Endpoint::Health,
        action: None,
    },
    RouteSpec {
        method: "GET",
        path: "/metrics",
        endpoint: Endpoint::Metrics,
        action: None,
    },
    RouteSpec {
        method: "GET",
        path: "/openapi.json",
        endpoint: Endpoint::OpenApi,
        action: None,
    },
];

/// The index in [`ROUTES`] of a matched route.
pub fn route_index(method: &Method, path: &str) -> Option<usize> {
    ROUTES
        .iter()
        .position(|r| r.path == path && r.method == method.as_str())
}

/// Shared state of all handlers; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub(crate) node: Arc<dyn Node>,
    /// Who may call the API; replaced whole when the tokens file changes
    /// (`crate::server::credentials`).
    pub(crate) tokens: Arc<super::credentials::Live<TokenStore>>,
    /// Relays requests to the primary; replaced whole when the TLS files
    /// change (its client presents this replica's certificate).
    pub(crate) forwarder: Arc<super::credentials::Live<Forwarder>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) heartbeat_ms: u64,
    /// A request body must arrive within this time (408 otherwise).
    pub(crate) body_read_timeout_ms: u64,
    pub(crate) subscriptions: Arc<Semaphore>,
    /// Failed logins: rate limits and their pending trail aggregates. Taken
    /// only when authentication failed, never for a valid token.
    pub(crate) failed_logins: Arc<std::sync::Mutex<FailedLogins>>,
    /// Open break-glass grants (`breakglass`); in this replica's memory.
    pub(crate) break_glass: Arc<std::sync::Mutex<breakglass::BreakGlassGrants>>,
    /// At a backup: the queue of access-trail records on their way to the
    /// primary (`crate::server::relay`).
    pub(crate) relay: super::relay::TrailRelay,
    /// Client identities by certificate (`crate::server::mtls`); None:
    /// tokens only.
    pub(crate) client_certs: Option<super::mtls::ClientCerts>,
}

impl AppState {
    /// State for `node`; `peer_api` and `ca_pem` configure forwarding (an
    /// empty `ca_pem` allows only `http://` peers, for tests).
    pub fn new(
        node: Arc<dyn Node>,
        tokens: TokenStore,
        peer_api: Vec<(u8, String)>,
        ca_pem: &[u8],
    ) -> Result<AppState, ServerError> {
        Ok(AppState {
            node,
            tokens: Arc::new(super::credentials::Live::new(tokens)),
            forwarder: Arc::new(super::credentials::Live::new(Forwarder::new(
                peer_api, ca_pem,
            )?)),
            counters: Arc::new(Counters::new()),
            heartbeat_ms: HEARTBEAT_MS,
            body_read_timeout_ms: super::BODY_READ_TIMEOUT_MS,
            subscriptions: Arc::new(Semaphore::new(SUBSCRIPTIONS_MAX)),
            failed_logins: Arc::new(std::sync::Mutex::new(FailedLogins::new(
                LoginLimits::default(),
            ))),
            break_glass: Arc::default(),
            relay: super::relay::TrailRelay::default(),
            client_certs: None,
        })
    }

    /// Lets callers authenticate with client certificates (`mtls`).
    pub fn with_client_certs(mut self, certs: super::mtls::ClientCerts) -> AppState {
        self.client_certs = Some(certs);
        self
    }

    /// Makes forwarded requests present this replica's certificate (from
    /// `identity`) to the primary; None: none.
    pub fn with_forwarding_identity(
        mut self,
        identity: Option<&crate::net::tls::TlsMaterial>,
    ) -> Result<AppState, ServerError> {
        if let Some(material) = identity {
            let pem = super::forward::identity_pem(material);
            let forwarder = (*self.forwarder.get()).clone().with_identity(&pem)?;
            self.forwarder = Arc::new(super::credentials::Live::new(forwarder));
        }
        Ok(self)
    }

    /// Changes the body-read deadline (tests use a short one).
    pub fn with_body_read_timeout_ms(mut self, timeout_ms: u64) -> AppState {
        self.body_read_timeout_ms = timeout_ms.max(1);
        self
    }

    /// Changes the failed-login limits (tests use small ones); forgets
    /// what was tracked.
    pub fn with_login_limits(mut self, limits: LoginLimits) -> AppState {
        self.failed_logins = Arc::new(std::sync::Mutex::new(FailedLogins::new(limits)));
        self
    }

    /// Changes the idle-subscription heartbeat period (tests use a short one).
    pub fn with_heartbeat_ms(mut self, heartbeat_ms: u64) -> AppState {
        self.heartbeat_ms = heartbeat_ms.max(1);
        self
    }
}

/// The API router (without TLS; [`super::serve`] adds it), built from [`ROUTES`].
pub fn router(state: AppState) -> Router {
    let mut protected = Router::new();
    let mut public = Router::new();
    for spec in ROUTES {
        let handler = spec.endpoint.method_router(spec.method);
        if spec.action.is_some() {
            protected = protected.route(spec.path, handler);
        } else {
            public = public.route(spec.path, handler);
        }
    }
    let protected = protected.route_layer(middleware::from_fn_with_state(
        state.clone(),
        guard::authorize,
    ));
    // The backups' trail relay: no token, a replica certificate instead
    // (checked by the handler); not a client route, so not in ROUTES.
    let internal = Router::new().route(
        super::relay::RELAY_PATH,
        axum::routing::post(super::relay::accept),
    );
    protected
        .merge(public)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            super::metrics::count,
        ))
        .merge(internal)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(api::REQUEST_BODY_BYTES_MAX))
        .with_state(state)
}

/// Runs a blocking node call on the blocking pool; a panic becomes `500 storage`.
pub(crate) async fn run_blocking<R, F>(state: &AppState, call: F) -> Result<R, ApiError>
where
    R: Send + 'static,
    F: FnOnce(&dyn Node) -> R + Send + 'static,
{
    let node = state.node.clone();
    tokio::task::spawn_blocking(move || call(node.as_ref()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "node call panicked or was cancelled");
            ApiError::storage("the replica failed while handling the request (see its log)")
        })
}

async fn not_found(
    State(state): State<AppState>,
    method: Method,
    uri: axum::http::Uri,
) -> ApiError {
    state.counters.record(ROUTES.len(), StatusCode::NOT_FOUND);
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        code::BAD_REQUEST,
        format!("method {method} is not allowed on {}", uri.path()),
    )
}
