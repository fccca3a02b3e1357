//! One replica process (`vellum start --config C`): the VSR shell on the
//! network. It opens the replica's log as one replica of the cluster
//! (`LogOptions::cluster`), connects it to its peers through `net`
//! (framed messages over mutual TLS), and serves the client API (`server`).
//!
//! Threads: one replica loop owns the core's steps that are not a client's
//! request: ticks (every [`TICK_MS`]), the peers' messages (from a bounded
//! inbox the network fills, taken in batches under one hold of the core),
//! and the writes the core asked for: after each batch, those already
//! durable are reported in one `WriteDone`; the loop never waits for a
//! group commit (the store sends it a note when one ends). A small
//! tokio runtime runs the network and the HTTP server. The core itself
//! stays pure: everything here only moves inputs in and actions out.

mod custody;
mod groups;
mod node;
mod trail;
pub mod witness_feed;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use custody::{CUSTODY_POLL_MS, Custody, CustodyCounts};
pub use node::ReplicaNode;
pub use trail::{TRAIL_BATCH_EVENTS_MAX, TrailBatcher};

use crate::cluster::ClusterConfig;
use crate::log::{ClusterRole, LocalLog, LogOptions, Outbox};
use crate::net::tls;
use crate::net::tls_reload::{TlsFiles, TlsSet, TlsWatcher};
use crate::net::{NetConfig, NetTransport, Transport};
use crate::server::auth::TokenStore;
use crate::server::{ServerConfig, serve};
use crate::vsr::{Message, ReplicaIndex};

/// Milliseconds per core tick (the core's timeouts count ticks).
pub const TICK_MS: u64 = 10;
/// Peer messages waiting for the core, at most; more are dropped (VSR
/// tolerates loss; the sender retries).
pub const INBOX_MAX: usize = 4096;
/// Inbox entries the loop takes for one hold of the core, at most (HTTP
/// threads stepping the core for their requests wait no longer than that).
pub const LOOP_BATCH_MAX: usize = 256;

/// What wakes the replica loop besides its tick.
// Messages travel unboxed, as they did before the note was added: a box
// would cost an allocation per message for a variant that carries nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum LoopInput {
    /// A peer's message.
    Message(Message),
    /// A write became pending, or a group commit ended: see writes through.
    Writes,
}
/// How long an append waits for its commit before reporting an unknown outcome.
pub const COMMIT_WAIT_MS: u64 = 10_000;

/// Why a replica could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The configuration or a file it names is unusable.
    #[error("{0}")]
    Config(String),
    /// The log could not be opened or failed.
    #[error(transparent)]
    Log(#[from] crate::log::LogError),
    /// The network or the API server failed.
    #[error("{0}")]
    Io(String),
}

/// The network as the log's outbox; set once the transport has started
/// (the log must exist before the transport can deliver to it).
#[derive(Debug, Default)]
struct LateOutbox {
    transport: OnceLock<Arc<NetTransport>>,
}

impl Outbox for LateOutbox {
    fn send(&self, to: ReplicaIndex, message: Message) {
        if let Some(transport) = self.transport.get() {
            transport.send(to, message);
        }
    }
}

/// A running replica. Dropping it stops it.
#[derive(Debug)]
pub struct RunningReplica {
    log: Arc<LocalLog>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Stops the consumer groups' reaper (`vellum-groups`).
    groups_stop: Arc<AtomicBool>,
    groups_reaper: Option<JoinHandle<()>>,
    transport: Arc<NetTransport>,
    shutdown: tokio::sync::watch::Sender<bool>,
    runtime: Option<tokio::runtime::Runtime>,
    /// The client API's bound address.
    pub api_address: std::net::SocketAddr,
    inbox_dropped: Arc<AtomicU64>,
}

/// Starts replica `config.replica` of the cluster described by `config`.
pub fn start(config: &ClusterConfig) -> Result<RunningReplica, ReplicaError> {
    let this = config.this_replica().clone();
    // The watchers take the files' stamps before the first load, so a
    // change made while the replica starts is loaded by their first check.
    let tls_files = TlsFiles {
        replica: config.replica,
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.client_certs.as_ref().map(|c| c.ca.clone()),
    };
    let api_tls_watcher = TlsWatcher::new(tls_files.clone(), "client api");
    let link_tls_watcher = TlsWatcher::new(tls_files.clone(), "replica link");
    let tls_set = TlsSet::load(&tls_files).map_err(|e| ReplicaError::Config(e.to_string()))?;
    let material = tls_set.material.clone();
    let tokens =
        TokenStore::load(&config.tokens).map_err(|e| ReplicaError::Config(e.to_string()))?;
    let client_certs = load_client_certs(config)?;
    let outbox = Arc::new(LateOutbox::default());
    let role = ClusterRole {
        replica_count: config.replica_count(),
        outbox: Arc::clone(&outbox) as Arc<dyn Outbox>,
        commit_wait_ms: COMMIT_WAIT_MS,
    };
    let options = LogOptions {
        index_url: config.index_url.clone(),
        lock_wait_ms: 2_000,
        cluster: Some(role),
        ..LogOptions::default()
    };
    let (log, report) = LocalLog::open(&config.data_dir, options)?;
    tracing::info!(
        replica = config.replica,
        ops = report.ops,
        events = report.events,
        "opened the replica's log"
    );
    let log = Arc::new(log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vellum-replica-io")
        .enable_all()
        .build()
        .map_err(|e| ReplicaError::Io(format!("tokio runtime: {e}")))?;
    let (inbox_tx, inbox_rx) = std::sync::mpsc::sync_channel::<LoopInput>(INBOX_MAX);
    let inbox_dropped = Arc::new(AtomicU64::new(0));
    let waker = inbox_tx.clone();
    // A full inbox needs no note: the loop looks for writes after every batch.
    log.set_write_waker(Arc::new(move || {
        let _ = waker.try_send(LoopInput::Writes);
    }));
    let deliver = deliver_into(inbox_tx, Arc::clone(&inbox_dropped));
    let net_config = NetConfig {
        cluster: config.cluster,
        replica: config.replica,
        listen: this.address,
        peers: (0u8..)
            .zip(&config.replicas)
            .filter(|(i, _)| *i != config.replica)
            .map(|(i, peer)| (i, peer.address))
            .collect(),
        tls: material.clone(),
        tls_watcher: Some(link_tls_watcher),
    };
    let (transport, _bound) = NetTransport::start(net_config, runtime.handle().clone(), deliver)
        .map_err(|e| ReplicaError::Io(format!("replica network on {}: {e}", this.address)))?;
    outbox
        .transport
        .set(Arc::clone(&transport))
        .expect("the outbox is set once, here");
    let stop = Arc::new(AtomicBool::new(false));
    // Key custody rebuilt from the log before serving (a shred committed
    // while this replica was down destroys its keys here).
    let custody = Arc::new(
        Custody::new(Arc::clone(&log)).with_retention_days(config.retention_days_after_last_event),
    );
    custody.catch_up()?;
    let threads = vec![
        spawn_replica_loop(Arc::clone(&log), inbox_rx, Arc::clone(&stop))?,
        custody
            .spawn_applier(Arc::clone(&stop))
            .map_err(|e| ReplicaError::Io(format!("key-custody thread: {e}")))?,
    ];
    let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
    let server_config = ServerConfig {
        listen: this.api_address,
        tls: Arc::clone(&tls_set.api_server),
        tls_watcher: Some(api_tls_watcher),
        tokens,
        peer_api: (0u8..).zip(config.api_urls()).collect(),
        ca_pem: material.ca_pem.clone(),
        identity: Some(material.clone()),
        client_certs,
        credential_files: Some(crate::server::credentials::CredentialFiles {
            tokens: config.tokens.clone(),
            client_certs: config.client_certs.as_ref().map(|c| c.principals.clone()),
        }),
    };
    // Witnesses named with a URL in the replica's policy are fed by the
    // primary, off the append path (`witness_feed`).
    let witnesses = Arc::new(witness_feed::WitnessFeed::open(
        &config.data_dir,
        log.policy(),
    ));
    witnesses.spawn(runtime.handle(), Arc::clone(&log), shutdown.subscribe());
    let node = Arc::new(
        ReplicaNode::new(
            Arc::clone(&log),
            Some(Arc::clone(&transport) as Arc<dyn Transport>),
            custody,
        )
        .with_witnesses(witnesses),
    );
    let groups = Arc::clone(node.groups());
    let served = runtime
        .block_on(serve(server_config, node, shutdown_rx))
        .map_err(|e| ReplicaError::Io(format!("client API on {}: {e}", this.api_address)))?;
    // Expired leases come back without waiting for a pull (the primary
    // only). Its own stop flag: `halt` stops it before the replica loop.
    let groups_stop = Arc::new(AtomicBool::new(false));
    let groups_reaper = groups
        .spawn_reaper(Arc::clone(&groups_stop))
        .map_err(|e| ReplicaError::Io(format!("consumer-groups thread: {e}")))?;
    Ok(RunningReplica {
        log,
        stop,
        threads,
        groups_stop,
        groups_reaper: Some(groups_reaper),
        transport,
        shutdown,
        runtime: Some(runtime),
        api_address: served.local_addr,
        inbox_dropped,
    })
}

/// The client CA (PEM, checked) and client certificates table of the
/// config's `client_certs`, if it names them.
fn load_client_certs(
    config: &ClusterConfig,
) -> Result<Option<(Vec<u8>, crate::server::mtls::ClientCertStore)>, ReplicaError> {
    let Some(paths) = &config.client_certs else {
        return Ok(None);
    };
    let config_error = |e: &dyn std::fmt::Display| ReplicaError::Config(e.to_string());
    let pem = std::fs::read(&paths.ca)
        .map_err(|e| config_error(&format!("client CA {}: {e}", paths.ca.display())))?;
    tls::certificates_from_pem(&pem, &paths.ca).map_err(|e| config_error(&e))?;
    let store = crate::server::mtls::ClientCertStore::load(&paths.principals)
        .map_err(|e| config_error(&e))?;
    Ok(Some((pem, store)))
}

fn deliver_into(
    inbox: SyncSender<LoopInput>,
    dropped: Arc<AtomicU64>,
) -> Arc<dyn Fn(Message) + Send + Sync> {
    Arc::new(
        move |message| match inbox.try_send(LoopInput::Message(message)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
        },
    )
}

/// The replica loop: ticks on time; messages in batches as they come;
/// after each batch, the writes that are durable by now are reported (the
/// loop never blocks on the disk: the store's note wakes it).
fn spawn_replica_loop(
    log: Arc<LocalLog>,
    inbox: Receiver<LoopInput>,
    stop: Arc<AtomicBool>,
) -> Result<JoinHandle<()>, ReplicaError> {
    std::thread::Builder::new()
        // Linux keeps 15 bytes of a thread's name: short enough to stay
        // distinct from `vellum-replica-io` in ps and perf.
        .name("vellum-loop".to_string())
        .spawn(move || {
            let tick = Duration::from_millis(TICK_MS);
            let mut next_tick = Instant::now() + tick;
            let mut batch = Vec::with_capacity(LOOP_BATCH_MAX);
            while !stop.load(Ordering::SeqCst) {
                let wait = next_tick.saturating_duration_since(Instant::now());
                match inbox.recv_timeout(wait) {
                    Ok(input) => batch.push(input),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                while batch.len() < LOOP_BATCH_MAX {
                    match inbox.try_recv() {
                        Ok(input) => batch.push(input),
                        Err(_) => break,
                    }
                }
                let messages: Vec<Message> = batch
                    .drain(..)
                    .filter_map(|input| match input {
                        LoopInput::Message(message) => Some(message),
                        LoopInput::Writes => None,
                    })
                    .collect();
                let mut outcome = match messages.is_empty() {
                    true => Ok(()),
                    false => log.deliver_all(messages),
                };
                let now = Instant::now();
                if outcome.is_ok() && now >= next_tick {
                    next_tick += tick;
                    // After a long stall (SIGSTOP) do not replay every missed tick.
                    if next_tick < now {
                        next_tick = now + tick;
                    }
                    outcome = log.tick();
                }
                if outcome.is_ok() {
                    outcome = log.complete_pending_writes();
                }
                if let Err(error) = outcome {
                    tracing::error!(%error, "the replica's core or storage failed; stopping (restart to recover from disk)");
                    stop.store(true, Ordering::SeqCst);
                    return;
                }
            }
        })
        .map_err(|e| ReplicaError::Io(format!("replica loop thread: {e}")))
}

impl RunningReplica {
    /// The replica's log (for tests and tools in the same process).
    pub fn log(&self) -> &Arc<LocalLog> {
        &self.log
    }

    /// True once the replica stopped on its own (a storage failure).
    pub fn failed(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Peer messages dropped because the core's inbox was full.
    pub fn inbox_dropped(&self) -> u64 {
        self.inbox_dropped.load(Ordering::Relaxed)
    }

    /// Blocks until `signal` is set or the replica fails.
    pub fn wait(&self, signal: &AtomicBool) {
        while !signal.load(Ordering::SeqCst) && !self.failed() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops serving, stops the threads and closes the log.
    pub fn stop(mut self) -> Result<(), ReplicaError> {
        self.halt();
        let log = Arc::clone(&self.log);
        drop(self);
        match Arc::try_unwrap(log) {
            Ok(log) => log.close().map_err(ReplicaError::from),
            Err(_) => Ok(()), // still shared (a test holds it): dropped later
        }
    }

    fn halt(&mut self) {
        let _ = self.shutdown.send(true);
        // The reaper first, while the replica loop still runs: a park it
        // is committing ends like any request's commit (within
        // COMMIT_WAIT_MS), not by waiting out a loop that stopped.
        self.groups_stop.store(true, Ordering::SeqCst);
        if let Some(reaper) = self.groups_reaper.take() {
            let _ = reaper.join();
        }
        self.stop.store(true, Ordering::SeqCst);
        self.transport.shutdown();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

impl Drop for RunningReplica {
    fn drop(&mut self) {
        self.halt();
    }
}

/// `vellum start --config C`: runs the replica until SIGINT/SIGTERM.
pub fn run(config_path: &Path) -> Result<(), ReplicaError> {
    let config =
        ClusterConfig::load(config_path).map_err(|e| ReplicaError::Config(e.to_string()))?;
    let replica = start(&config)?;
    let signal = Arc::new(AtomicBool::new(false));
    install_signal_handler(Arc::clone(&signal))?;
    eprintln!(
        "vellum: replica {} of cluster {:032x} serving https://{} (replicas on {})",
        config.replica,
        config.cluster,
        replica.api_address,
        config.this_replica().address
    );
    replica.wait(&signal);
    let failed = replica.failed() && !signal.load(Ordering::SeqCst);
    replica.stop()?;
    if failed {
        return Err(ReplicaError::Io(
            "the replica stopped after a storage failure; see the log above, then restart it"
                .to_string(),
        ));
    }
    Ok(())
}

/// Sets `signal` on SIGINT or SIGTERM (a small runtime of its own).
fn install_signal_handler(signal: Arc<AtomicBool>) -> Result<(), ReplicaError> {
    std::thread::Builder::new()
        .name("vellum-signals".to_string())
        .spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let Ok(mut term) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            });
            signal.store(true, Ordering::SeqCst);
        })
        .map(|_| ())
        .map_err(|e| ReplicaError::Io(format!("signal thread: {e}")))
}
