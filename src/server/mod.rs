//! The client API server: HTTP/2 or HTTP/1.1 (chosen by TLS ALPN) + JSON
//! over TLS, in front of one replica.
//!
//! Why it exists: clients (and auditors) need a narrow, authenticated,
//! well-documented door into the replicated log. The server owns no state of
//! its own beyond counters; everything it answers comes from the [`node::Node`]
//! trait, whose blocking methods run on tokio's blocking pool so a slow disk
//! or a commit wait never stalls the async workers.
//!
//! Layout: [`routes`] (the route table, the router built from it, errors,
//! extractors, the trail guard, handlers), [`auth`] (bearer
//! tokens stored hashed, roles), [`mtls`] (client certificates as an
//! alternative to tokens), [`forward`] (appends sent to a backup are
//! relayed to the primary), [`subscribe`] (long-lived event streams with
//! backpressure), [`logins`] (rate limits on failed logins and their
//! aggregated trail events), [`metrics`] (Prometheus text), [`openapi`] (the served
//! description of the contract in `crate::api`).

pub mod auth;
pub mod credentials;
pub mod filter;
pub mod forward;
pub mod groups;
#[cfg(test)]
mod http2_tests;
pub mod logins;
pub mod metrics;
pub mod mtls;
pub mod node;
pub mod openapi;
pub mod relay;
mod rotations;
pub mod routes;
pub mod subscribe;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tlog_tests;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder as AutoBuilder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use auth::{AuthError, Principal, Role, TokenStore, generate_token, token_line};
pub use routes::{ApiError, AppState, router};

/// Most client connections served at once; further ones wait in the
/// kernel's accept queue until a slot frees.
pub const CONNECTIONS_MAX: usize = 1024;
/// Most concurrent subscriptions; each one holds a blocking thread while it
/// waits for events, so they are bounded well below tokio's blocking pool.
pub const SUBSCRIPTIONS_MAX: usize = 256;
/// A TLS handshake that takes longer than this is dropped.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Request headers must arrive within this time (slow-loris guard).
pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// A request body must arrive whole within this time, else 408 and the
/// connection is closed (slow-body guard). Bodies are read only after the
/// bearer token and role were checked.
pub const BODY_READ_TIMEOUT_MS: u64 = 10_000;
/// Most connections served at once from one remote IP address; more are
/// closed on accept, so one address cannot take all [`CONNECTIONS_MAX`].
/// A peer replica that proves itself (its certificate) is not counted once
/// its handshake is done, so forwarded subscriptions are not capped.
pub const CONNECTIONS_PER_ADDRESS_MAX: usize = CONNECTIONS_MAX / 4;
/// After shutdown, open connections get this long to finish in-flight requests.
pub const SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// Idle subscriptions send a heartbeat this often.
pub const HEARTBEAT_MS: u64 = 2_000;
/// Lines a subscription may buffer before the producer waits for the reader.
pub const SUBSCRIPTION_BUFFER_MAX: usize = 64;
/// A forwarded request gets this long to connect to the primary.
pub const FORWARD_TIMEOUT_MS: u64 = 30_000;

/// HTTP/2: most streams (requests) one connection may have open at once
/// (SETTINGS_MAX_CONCURRENT_STREAMS). RFC 9113 §6.5.2 recommends no fewer
/// than 100 so clients need not open more connections; with HTTP/1.1 a
/// client got the same concurrency from 100 of its 256 connections per
/// address. Subscriptions stay capped by [`SUBSCRIPTIONS_MAX`] whatever
/// the protocol. A client that opens more gets them refused (RST_STREAM).
pub const H2_STREAMS_MAX: u32 = 100;
/// HTTP/2: largest header list a request may carry, decoded, in bytes
/// (SETTINGS_MAX_HEADER_LIST_SIZE): a bearer token and the trail headers
/// (each clipped to the trail's text limit) fit many times over; larger
/// is refused with 431 before any handler runs.
pub const H2_HEADER_LIST_BYTES_MAX: u32 = 16 * 1024;
/// HTTP/2: answer bytes buffered per stream beyond what the client's flow
/// control window lets us send. A client that opens streams and never
/// reads holds at most this much per stream; the handler (a subscription)
/// then waits, as it does on a full TCP buffer with HTTP/1.1.
pub const H2_SEND_BUFFER_BYTES_MAX: usize = 256 * 1024;
/// HTTP/2: after the handshake, the client preface must arrive within this
/// time (the HTTP/2 counterpart of [`HEADER_READ_TIMEOUT_MS`]).
pub const H2_PREFACE_TIMEOUT_MS: u64 = HEADER_READ_TIMEOUT_MS;
/// HTTP/2: the server pings an open connection this often, and closes it
/// when a ping is not answered within [`H2_PING_TIMEOUT_MS`], so a dead
/// peer does not hold a connection slot.
pub const H2_PING_INTERVAL_MS: u64 = 30_000;
/// HTTP/2: how long a ping may go unanswered.
pub const H2_PING_TIMEOUT_MS: u64 = 10_000;
/// HTTP/2: streams a client may reset before the server accepted them,
/// before the connection is closed (the "rapid reset" attack,
/// CVE-2023-44487; hyper's default).
pub const H2_PENDING_RESETS_MAX: usize = 20;
/// HTTP/2: streams the server may reset because of client errors before
/// it closes the connection (CVE-2024-27316-like floods of bad requests).
pub const H2_ERROR_RESETS_MAX: usize = 256;
/// The 24-byte HTTP/2 client connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Everything [`serve`] needs besides the node.
#[derive(Debug)]
pub struct ServerConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The TLS configuration (built by `crate::net::tls`).
    pub tls: Arc<rustls::ServerConfig>,
    /// Watches the files `tls`, `ca_pem`, `identity` and the client CA came
    /// from: a new version that passes its checks replaces all four for the
    /// next handshake and request (`crate::net::tls_reload`); None: never.
    pub tls_watcher: Option<crate::net::tls_reload::TlsWatcher>,
    /// Who may call the API.
    pub tokens: TokenStore,
    /// API base URL (`https://host:port`) of every replica, for forwarding appends.
    pub peer_api: Vec<(u8, String)>,
    /// The cluster CA (PEM) that signs the peers' API certificates.
    pub ca_pem: Vec<u8>,
    /// This replica's TLS material, whose certificate it presents when it
    /// forwards a request to the primary; None: none (tests).
    pub identity: Option<crate::net::tls::TlsMaterial>,
    /// Client identities by certificate: the client CA (PEM, also in `tls`'s
    /// roots) and the client certificates table; None: tokens only.
    pub client_certs: Option<(Vec<u8>, mtls::ClientCertStore)>,
    /// The files `tokens` and the client certificates table came from: the
    /// server reloads them when they change (`credentials`); None: never.
    pub credential_files: Option<credentials::CredentialFiles>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The forwarding client could not be built (bad CA PEM, TLS setup).
    #[error("cannot build the forwarding client: {0}")]
    Forwarder(String),
    /// The client certificates setup is unusable (bad CA, a principal
    /// named in both the tokens and the client certificates file).
    #[error("client certificates: {0}")]
    ClientCerts(String),
    /// An environment setting is not usable.
    #[error("{name}={value:?}: {why}")]
    Setting {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

/// Environment variable that sets both failed-login limits (per source
/// and per token prefix, per window); the defaults are in `logins`.
pub const FAILED_LOGINS_MAX_VAR: &str = "VELLUM_FAILED_LOGINS_MAX";

/// The failed-login limits: the defaults, or both maxima from
/// [`FAILED_LOGINS_MAX_VAR`] (a whole number from 1).
fn login_limits_from_env() -> Result<logins::LoginLimits, ServerError> {
    login_limits_from(std::env::var(FAILED_LOGINS_MAX_VAR).ok())
}

/// The failed-login limits for `value` of [`FAILED_LOGINS_MAX_VAR`].
fn login_limits_from(value: Option<String>) -> Result<logins::LoginLimits, ServerError> {
    let mut limits = logins::LoginLimits::default();
    if let Some(value) = value {
        let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
        let max = digits
            .then(|| value.parse::<u64>().ok())
            .flatten()
            .filter(|max| *max >= 1)
            .ok_or(ServerError::Setting {
                name: FAILED_LOGINS_MAX_VAR,
                value,
                why: "expected a whole number of failures per window, at least 1",
            })?;
        limits.per_source_max = max;
        limits.per_prefix_max = max;
    }
    Ok(limits)
}

/// A running server: its bound address and its accept task.
#[derive(Debug)]
pub struct ServeHandle {
    /// The address actually bound (the real port when 0 was asked for).
    pub local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServeHandle {
    /// Waits until the accept loop has stopped (after shutdown flips) and
    /// open connections had their drain time.
    pub async fn join(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "api server accept task failed");
        }
    }
}

/// Binds `config.listen` and serves the API over TLS until `shutdown`
/// becomes true (or its sender is dropped).
pub async fn serve(
    config: ServerConfig,
    node: Arc<dyn node::Node>,
    shutdown: watch::Receiver<bool>,
) -> Result<ServeHandle, ServerError> {
    let client_certs = client_certs(&config.ca_pem, config.client_certs, &config.tokens)?;
    let state = AppState::new(node, config.tokens, config.peer_api, &config.ca_pem)?
        .with_forwarding_identity(config.identity.as_ref())?
        .with_login_limits(login_limits_from_env()?)
        .with_client_certs(client_certs.clone());
    if let Some(files) = config.credential_files {
        let watcher = credentials::Watcher::new(credentials::Reloadable {
            tokens_path: files.tokens,
            client_certs_path: files.client_certs,
            tokens: Arc::clone(&state.tokens),
            client_certs: Arc::clone(&client_certs.store),
        });
        tokio::spawn(credentials::watch_files(watcher, shutdown.clone()));
    }
    let tls = Arc::new(credentials::Live::new(config.tls));
    if let Some(watcher) = config.tls_watcher {
        let reload = ApiTlsReload {
            tls: Arc::clone(&tls),
            verifier: Arc::clone(&client_certs.verifier),
            forwarder: Arc::clone(&state.forwarder),
            counters: Arc::clone(&state.counters),
        };
        tokio::spawn(reload.watch(watcher, shutdown.clone()));
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Bind {
        addr: config.listen,
        source,
    })?;
    // Failed-login aggregates of closed windows reach the trail even when
    // their source stops failing; at shutdown, all that are pending.
    tokio::spawn(routes::guard::sweep_failed_logins(
        state.clone(),
        shutdown.clone(),
    ));
    // KEK rotations made while this replica was stopped reach the trail.
    tokio::spawn(rotations::record_kek_rotations(
        state.clone(),
        shutdown.clone(),
    ));
    let app = router(state);
    tracing::info!(%addr, "api server listening");
    let task = tokio::spawn(accept_loop(
        listener,
        ApiTls {
            config: tls,
            verifier: client_certs.verifier,
        },
        app,
        shutdown,
    ));
    Ok(ServeHandle {
        local_addr: addr,
        task,
    })
}

/// The verifier of presented certificates and the client certificates
/// table; refuses a principal named in both files (the trail would not
/// tell which credential acted).
fn client_certs(
    cluster_ca_pem: &[u8],
    configured: Option<(Vec<u8>, mtls::ClientCertStore)>,
    tokens: &TokenStore,
) -> Result<mtls::ClientCerts, ServerError> {
    let (client_ca, store) = match configured {
        Some((pem, store)) => (Some(pem), store),
        None => (None, mtls::ClientCertStore::default()),
    };
    let verifier = crate::net::tls::ApiPeerVerifier::new(cluster_ca_pem, client_ca.as_deref())
        .map_err(|e| ServerError::ClientCerts(e.to_string()))?;
    check_distinct_principals(tokens, &store).map_err(ServerError::ClientCerts)?;
    Ok(mtls::ClientCerts {
        verifier: Arc::new(credentials::Live::new(verifier)),
        store: Arc::new(credentials::Live::new(store)),
    })
}

/// Refuses a principal named in both the tokens and the client
/// certificates table (at start and at every reload).
pub(crate) fn check_distinct_principals(
    tokens: &TokenStore,
    certs: &mtls::ClientCertStore,
) -> Result<(), String> {
    let token_names: std::collections::HashSet<&str> = tokens.names().collect();
    match certs.names().find(|name| token_names.contains(name)) {
        Some(name) => Err(format!(
            "principal {name:?} is in both the tokens file and the client certificates file; \
             give each credential its own principal name"
        )),
        None => Ok(()),
    }
}

/// The client API's TLS configuration and the verifier of presented
/// chains, each replaced whole when the TLS files change; every
/// connection takes the ones current at its accept.
#[derive(Debug, Clone)]
struct ApiTls {
    config: Arc<credentials::Live<Arc<rustls::ServerConfig>>>,
    verifier: Arc<credentials::Live<crate::net::tls::ApiPeerVerifier>>,
}

/// What a reload of the TLS files replaces in a running server.
struct ApiTlsReload {
    tls: Arc<credentials::Live<Arc<rustls::ServerConfig>>>,
    verifier: Arc<credentials::Live<crate::net::tls::ApiPeerVerifier>>,
    forwarder: Arc<credentials::Live<forward::Forwarder>>,
    counters: Arc<metrics::Counters>,
}

impl ApiTlsReload {
    /// Checks the files every second until shutdown.
    async fn watch(
        self,
        mut watcher: crate::net::tls_reload::TlsWatcher,
        shutdown: watch::Receiver<bool>,
    ) {
        let check = move || match watcher.check() {
            crate::net::tls_reload::TlsCheck::Unchanged => {}
            crate::net::tls_reload::TlsCheck::Loaded(set) => self.swap(&set),
            crate::net::tls_reload::TlsCheck::Refused(_) => self.counters.record_tls_reload(false),
        };
        crate::live::check_every_second(check, "client api tls", shutdown).await;
    }

    /// Swaps in `set`, all three parts or none (the forwarder's client is
    /// the one part that can still fail to build).
    fn swap(&self, set: &crate::net::tls_reload::TlsSet) {
        let forwarder = match self.forwarder.get().with_tls(&set.material) {
            Ok(forwarder) => forwarder,
            Err(error) => {
                tracing::error!(%error, "tls material not reloaded (forwarding client); the configuration in use stays");
                self.counters.record_tls_reload(false);
                return;
            }
        };
        self.verifier.replace((*set.api_peers).clone());
        self.tls.replace(Arc::clone(&set.api_server));
        self.forwarder.replace(forwarder);
        self.counters.record_tls_reload(true);
    }
}

/// Accepts connections while slots are free and shutdown has not flipped.
async fn accept_loop(
    listener: TcpListener,
    tls: ApiTls,
    app: axum::Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let per_address = Arc::new(AddressSlots::default());
    loop {
        if *shutdown.borrow() {
            break;
        }
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // The semaphore is never closed; treat it as shutdown.
            },
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break, // The sender is gone: nobody can ever ask us to run on.
            },
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE or a connection reset before accept: back off briefly.
                    tracing::warn!(error = %e, "api accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            changed = shutdown.changed() => match changed {
                Ok(()) => continue,
                Err(_) => break,
            },
        };
        // Responses are written in small pieces (headers, body, TLS
        // records): without TCP_NODELAY, Nagle's algorithm holds a piece
        // back until the previous one is acknowledged.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "api connection: TCP_NODELAY not set");
        }
        let Some(address_slot) = per_address.try_take(peer.ip()) else {
            tracing::debug!(%peer, "api connection closed: too many from this address");
            drop(tcp);
            continue;
        };
        // The configuration current now: a reload after this accept
        // changes the next connection, not this one.
        let acceptor = TlsAcceptor::from(Arc::clone(&*tls.config.get()));
        let verifier = tls.verifier.get();
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let connection = Connection {
                tcp,
                peer,
                verifier,
                address_slot,
            };
            serve_connection(connection, acceptor, app, shutdown).await;
            drop(permit);
        });
    }
    tracing::info!("api server stopped accepting");
}

/// Open connections per remote IP address, bounded by
/// [`CONNECTIONS_PER_ADDRESS_MAX`].
#[derive(Debug, Default)]
struct AddressSlots {
    open: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl AddressSlots {
    /// A slot for one more connection from `ip`, if it has fewer than the maximum.
    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= CONNECTIONS_PER_ADDRESS_MAX {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            slots: Arc::clone(self),
            ip,
        })
    }
}

/// One connection's slot; given back on drop.
#[derive(Debug)]
struct AddressSlot {
    slots: Arc<AddressSlots>,
    ip: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The replica at the other end of a connection that presented a replica
/// certificate signed by the cluster CA: only such a peer may name the
/// client it forwards for (`forward::CLIENT_ADDR_HEADER`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerReplica(pub u8);

/// The TCP peer of the connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteAddr(pub SocketAddr);

/// One accepted TCP connection, before its TLS handshake.
struct Connection {
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    verifier: Arc<crate::net::tls::ApiPeerVerifier>,
    address_slot: AddressSlot,
}

/// Runs the TLS handshake (bounded in time) and then HTTP/2 or HTTP/1.1 on
/// one connection: HTTP/2 exactly when ALPN chose `h2`. Without ALPN (or
/// with `http/1.1`) the connection is HTTP/1.1 only, so an HTTP/2 preface
/// sent without ALPN is refused as a bad HTTP/1.1 request (RFC 9113 §3.3
/// asks for ALPN over TLS); plaintext h2c is never spoken on this port.
async fn serve_connection(
    connection: Connection,
    acceptor: TlsAcceptor,
    app: axum::Router,
    shutdown: watch::Receiver<bool>,
) {
    let Connection {
        tcp,
        peer,
        verifier,
        address_slot,
    } = connection;
    let handshake = Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS);
    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "api tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "api tls handshake timed out");
            return;
        }
    };
    // The caller's address travels with each request into the access trail,
    // and so does what its certificate proved: a replica, or a client
    // identity (`mtls`).
    let session = &tls.get_ref().1;
    let chain = session.peer_certificates().map(<[_]>::to_vec);
    let http2 = session.alpn_protocol() == Some(crate::api::ALPN_PROTOCOLS[0]);
    let mut app = app.layer(axum::Extension(RemoteAddr(peer)));
    let mut address_slot = Some(address_slot);
    if let Some(chain) = chain {
        match verifier.classify(&chain) {
            crate::net::tls::ApiPeer::Replica(replica) => {
                app = app.layer(axum::Extension(PeerReplica(replica)));
                // A proven replica does not use up its address's share.
                address_slot = None;
            }
            crate::net::tls::ApiPeer::Client { sha256 } => {
                let presented = mtls::PresentedCert::new(chain, sha256);
                app = app.layer(axum::Extension(presented));
            }
            crate::net::tls::ApiPeer::Other => app = app.layer(axum::Extension(mtls::OtherCert)),
        }
    }
    let (prefix, builder) = match http2 {
        true => match read_h2_preface(tls, peer).await {
            Some((prefix, tls)) => (Prefixed::new(prefix, tls), http2_builder()),
            None => return,
        },
        false => (Prefixed::new(Vec::new(), tls), http1_builder()),
    };
    let service = TowerToHyperService::new(app);
    let conn = builder.serve_connection(TokioIo::new(prefix), service);
    drive_connection(conn, peer, shutdown).await;
    drop(address_slot);
}

/// A client connection after its TLS handshake.
type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// Reads the 24-byte HTTP/2 client preface within [`H2_PREFACE_TIMEOUT_MS`]
/// (hyper waits for it without a deadline), and hands back what was read
/// for hyper to read again. Bytes that are not the preface are handed on
/// too: hyper refuses them with a GOAWAY.
async fn read_h2_preface(mut stream: TlsStream, peer: SocketAddr) -> Option<(Vec<u8>, TlsStream)> {
    use tokio::io::AsyncReadExt as _;
    let mut preface = vec![0u8; H2_PREFACE.len()];
    let deadline = Duration::from_millis(H2_PREFACE_TIMEOUT_MS);
    match tokio::time::timeout(deadline, stream.read_exact(&mut preface)).await {
        Ok(Ok(_)) => Some((preface, stream)),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "api h2 connection closed before its preface");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "api h2 preface timed out");
            None
        }
    }
}

/// HTTP/1.1 only, with the header read deadline (slow-loris guard).
fn http1_builder() -> AutoBuilder<TokioExecutor> {
    let mut builder = AutoBuilder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS));
    builder
}

/// HTTP/2 only, with the limits named `H2_*` above.
fn http2_builder() -> AutoBuilder<TokioExecutor> {
    let mut builder = AutoBuilder::new(TokioExecutor::new()).http2_only();
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS_MAX)
        .max_header_list_size(H2_HEADER_LIST_BYTES_MAX)
        .max_send_buf_size(H2_SEND_BUFFER_BYTES_MAX)
        .max_pending_accept_reset_streams(H2_PENDING_RESETS_MAX)
        .max_local_error_reset_streams(H2_ERROR_RESETS_MAX)
        .keep_alive_interval(Duration::from_millis(H2_PING_INTERVAL_MS))
        .keep_alive_timeout(Duration::from_millis(H2_PING_TIMEOUT_MS));
    builder
}

/// Serves `conn` until it ends; on shutdown, lets in-flight requests finish
/// within [`SHUTDOWN_DRAIN_MS`] (a subscription never finishes on its own).
async fn drive_connection(
    conn: hyper_util::server::conn::auto::Connection<
        '_,
        TokioIo<Prefixed<TlsStream>>,
        TowerToHyperService<axum::Router>,
        TokioExecutor,
    >,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "api connection ended with an error");
            }
            return;
        }
        _ = shutdown.changed() => conn.as_mut().graceful_shutdown(),
    }
    let drain = Duration::from_millis(SHUTDOWN_DRAIN_MS);
    if tokio::time::timeout(drain, conn).await.is_err() {
        tracing::debug!(%peer, "api connection dropped after the shutdown drain time");
    }
}

/// A stream that first yields `prefix` (bytes already read from `inner`),
/// then reads on from `inner`; writes go straight to `inner`.
#[derive(Debug)]
struct Prefixed<T> {
    prefix: Vec<u8>,
    taken: usize,
    inner: T,
}

impl<T> Prefixed<T> {
    fn new(prefix: Vec<u8>, inner: T) -> Self {
        Self {
            prefix,
            taken: 0,
            inner,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.taken < this.prefix.len() {
            let rest = &this.prefix[this.taken..];
            let count = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..count]);
            this.taken += count;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod setting_tests {
    use super::{FAILED_LOGINS_MAX_VAR, ServerError, login_limits_from, logins};

    /// Goal: `VELLUM_FAILED_LOGINS_MAX` sets both limits; unset keeps the
    /// defaults; any other spelling than a whole number from 1 is refused
    /// with the variable and value named.
    #[test]
    fn failed_logins_max_is_a_whole_number_from_one() {
        let defaults = logins::LoginLimits::default();
        let unset = login_limits_from(None).expect("unset");
        assert_eq!(
            (unset.per_source_max, unset.per_prefix_max),
            (defaults.per_source_max, defaults.per_prefix_max)
        );
        let set = login_limits_from(Some("5".into())).expect("5");
        assert_eq!((set.per_source_max, set.per_prefix_max), (5, 5));
        for bad in [
            "0",
            "-1",
            "+5",
            "",
            " 5",
            "5 ",
            "1e3",
            "0x10",
            "18446744073709551616",
        ] {
            match login_limits_from(Some(bad.into())) {
                Err(error @ ServerError::Setting { .. }) => {
                    let text = error.to_string();
                    assert!(
                        text.contains(FAILED_LOGINS_MAX_VAR) && text.contains(&format!("{bad:?}")),
                        "{text}"
                    );
                }
                other => panic!("{bad:?} must be refused, got {other:?}"),
            }
        }
    }
}
