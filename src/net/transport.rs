//! The replica network: VSR messages between replicas over mutual TLS.
//!
//! The VSR core only asks to "send this message to replica j" and tolerates
//! loss, so [`Transport::send`] never blocks and never fails: it pushes into
//! a bounded per-peer queue and counts what it drops. One task per peer owns
//! that peer's single outbound connection and drains its queue; a listener
//! task accepts inbound connections and delivers each authenticated message.
//!
//! Authentication: the TLS layer proves the peer holds a CA-signed
//! certificate for `replica-{i}.vellum` (see `tls.rs`); a message is
//! delivered only if its `from` is that `i` and its `cluster` is ours, so a
//! replica cannot speak for another. A stream that carries a bad frame or an
//! undecodable message is closed, because nothing marks where the next frame
//! would start.
//!
//! Outbound connections are write-only: the server never writes application
//! data, so any read on an outbound stream (EOF, error, data) means the
//! connection is gone and is the signal to reconnect.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector, client};

use super::codec::{decode_message, encode_message};
use super::frame::{FrameError, encode_frame, read_frame};
use super::tls::{
    TlsError, TlsMaterial, peer_replica_index, replica_client_config, replica_dns_name,
    replica_server_config,
};
use super::tls_reload::{TlsCheck, TlsWatcher};
use crate::live::Live;
use crate::vsr::{Message, REPLICAS_MAX, ReplicaIndex};

/// Messages queued for one peer, at most; more are dropped and counted.
pub const PEER_QUEUE_MAX: usize = 1024;
/// First delay before reconnecting to a peer.
pub const RECONNECT_DELAY_MS_MIN: u64 = 50;
/// Longest delay between reconnection attempts (the backoff doubles up to
/// it). Short: a restarted peer stays unreachable from here until the next
/// attempt, and in the crash test a restarted replica whose recovery went
/// unanswered that long (1 s then) timed out and forced a view change on a
/// healthy cluster. A refused connect costs next to nothing, and an
/// unanswered one is bounded by `CONNECT_TIMEOUT_MS` anyway.
pub const RECONNECT_DELAY_MS_MAX: u64 = 200;
/// TCP connect plus TLS handshake to a peer, at most.
pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
/// Inbound TLS handshake, at most (a silent client does not hold a slot).
pub const HANDSHAKE_TIMEOUT_MS: u64 = 5_000;
/// Writing one frame to a peer, at most; a stuck peer loses its connection.
pub const WRITE_TIMEOUT_MS: u64 = 10_000;
/// Bytes of queued frames coalesced into one write, about (a batch stops
/// taking messages once it holds this much).
pub const COALESCE_BYTES_MAX: usize = 1 << 20;
/// Inbound connections served at once, at most.
pub const INBOUND_CONNECTIONS_MAX: usize = 64;
/// Pause after a failed accept (e.g. out of file descriptors).
const ACCEPT_RETRY_MS: u64 = 100;

/// Replica-to-replica messaging as the shell sees it.
pub trait Transport: Send + Sync + fmt::Debug {
    /// Queues `message` for replica `to` (delivered locally if `to` is this
    /// replica). Never blocks; a message that cannot be queued is dropped
    /// and counted, as VSR tolerates loss.
    fn send(&self, to: ReplicaIndex, message: Message);
    /// Counters since start.
    fn stats(&self) -> NetStats;
}

/// Counters of a transport since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames written to peers.
    pub sent: u64,
    /// Messages received from peers and delivered.
    pub received: u64,
    /// Frames refused: bad frames, undecodable messages, messages whose
    /// sender or cluster is wrong (inbound), and unencodable messages (outbound).
    pub frames_dropped: u64,
    /// Messages dropped because a peer's queue was full or the peer unknown.
    pub queue_dropped: u64,
    /// Outbound connections established.
    pub connects: u64,
}

#[derive(Debug, Default)]
struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    frames_dropped: AtomicU64,
    queue_dropped: AtomicU64,
    connects: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What a transport needs to start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// The cluster id; messages of another cluster are dropped.
    pub cluster: u128,
    /// This replica's index.
    pub replica: ReplicaIndex,
    /// Where to listen for peers (port 0 picks one).
    pub listen: SocketAddr,
    /// The other replicas and their replica-link addresses.
    pub peers: Vec<(ReplicaIndex, SocketAddr)>,
    /// This replica's TLS material (CA, certificate, key).
    pub tls: TlsMaterial,
    /// Watches the files `tls` came from: a new version that passes its
    /// checks is used by the next handshake in either direction
    /// (`super::tls_reload`); None: `tls` is kept for good.
    pub tls_watcher: Option<TlsWatcher>,
}

/// The link's TLS configurations, replaced whole when the files change.
struct LinkTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
}

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TLS material was refused.
    #[error("replica network tls: {0}")]
    Tls(#[from] TlsError),
    /// The listen address could not be bound.
    #[error("binding the replica listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The peer list is inconsistent.
    #[error("replica network peer list: {0}")]
    Peers(String),
}

/// Called for every authenticated inbound message (and every message to
/// self). Must be cheap and must not block: it runs on the network tasks
/// and, for messages to self, inside [`Transport::send`].
pub type Deliver = Arc<dyn Fn(Message) + Send + Sync>;

/// The TCP + mutual TLS transport.
pub struct NetTransport {
    replica: ReplicaIndex,
    queues: BTreeMap<ReplicaIndex, mpsc::Sender<Message>>,
    counters: Arc<Counters>,
    deliver: Deliver,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Dropped with the transport: stops the TLS files' watcher.
    _tls_watch_stop: tokio::sync::watch::Sender<bool>,
}

impl fmt::Debug for NetTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NetTransport")
            .field("replica", &self.replica)
            .field("peers", &self.queues.keys().collect::<Vec<_>>())
            .field("stats", &self.stats())
            .finish()
    }
}

/// What an inbound connection needs.
struct Inbound {
    cluster: u128,
    peers: Vec<ReplicaIndex>,
    counters: Arc<Counters>,
    deliver: Deliver,
}

impl NetTransport {
    /// Binds the listener and starts the listener and per-peer tasks on
    /// `runtime`. Returns the transport and the bound listen address.
    pub fn start(
        config: NetConfig,
        runtime: tokio::runtime::Handle,
        deliver: Deliver,
    ) -> Result<(Arc<NetTransport>, SocketAddr), NetError> {
        check_peers(&config)?;
        let tls = Arc::new(Live::new(LinkTls {
            acceptor: TlsAcceptor::from(replica_server_config(&config.tls)?),
            connector: TlsConnector::from(replica_client_config(&config.tls)?),
        }));
        let bind_error = |source| NetError::Bind {
            addr: config.listen,
            source,
        };
        // Bound synchronously so a bind error is returned here, and so this
        // works whether or not the caller is itself inside the runtime.
        let std_listener = std::net::TcpListener::bind(config.listen).map_err(bind_error)?;
        std_listener.set_nonblocking(true).map_err(bind_error)?;
        let bound = std_listener.local_addr().map_err(bind_error)?;
        let listener = {
            let _context = runtime.enter();
            TcpListener::from_std(std_listener).map_err(bind_error)?
        };
        let counters = Arc::new(Counters::default());
        let inbound = Arc::new(Inbound {
            cluster: config.cluster,
            peers: config.peers.iter().map(|(index, _)| *index).collect(),
            counters: Arc::clone(&counters),
            deliver: Arc::clone(&deliver),
        });
        let mut tasks = vec![runtime.spawn(accept_loop(listener, Arc::clone(&tls), inbound))];
        let (tls_watch_stop, stopped) = tokio::sync::watch::channel(false);
        if let Some(watcher) = config.tls_watcher {
            tasks.push(runtime.spawn(watch_tls(watcher, Arc::clone(&tls), stopped)));
        }
        let mut queues = BTreeMap::new();
        for (peer, addr) in &config.peers {
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(*peer, sender);
            let link = PeerLink {
                peer: *peer,
                addr: *addr,
                tls: Arc::clone(&tls),
                counters: Arc::clone(&counters),
            };
            tasks.push(runtime.spawn(link.run(receiver)));
        }
        tracing::info!(replica = config.replica, %bound, peers = queues.len(), "replica network started");
        let transport = NetTransport {
            replica: config.replica,
            queues,
            counters,
            deliver,
            tasks: Mutex::new(tasks),
            _tls_watch_stop: tls_watch_stop,
        };
        Ok((Arc::new(transport), bound))
    }

    /// Stops the listener, every connection and every peer task. Messages
    /// sent afterwards are dropped and counted.
    pub fn shutdown(&self) {
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for task in tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for NetTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Transport for NetTransport {
    fn send(&self, to: ReplicaIndex, message: Message) {
        if to == self.replica {
            (self.deliver)(message);
            return;
        }
        let Some(queue) = self.queues.get(&to) else {
            bump(&self.counters.queue_dropped);
            tracing::warn!(to, "message to an unknown replica dropped");
            return;
        };
        if queue.try_send(message).is_err() {
            // Full (the peer is slow or down) or closed (shut down).
            bump(&self.counters.queue_dropped);
        }
    }

    fn stats(&self) -> NetStats {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        NetStats {
            sent: load(&self.counters.sent),
            received: load(&self.counters.received),
            frames_dropped: load(&self.counters.frames_dropped),
            queue_dropped: load(&self.counters.queue_dropped),
            connects: load(&self.counters.connects),
        }
    }
}

/// Peers must be distinct, in range, and not this replica.
fn check_peers(config: &NetConfig) -> Result<(), NetError> {
    let mut seen = [false; REPLICAS_MAX];
    if usize::from(config.replica) >= REPLICAS_MAX {
        return Err(NetError::Peers(format!(
            "this replica {} is not below {REPLICAS_MAX}",
            config.replica
        )));
    }
    seen[usize::from(config.replica)] = true;
    for (peer, _) in &config.peers {
        match seen.get_mut(usize::from(*peer)) {
            None => {
                return Err(NetError::Peers(format!(
                    "peer {peer} is not below {REPLICAS_MAX}"
                )));
            }
            Some(true) => {
                return Err(NetError::Peers(format!(
                    "peer {peer} is listed twice or is this replica"
                )));
            }
            Some(slot) => *slot = true,
        }
    }
    Ok(())
}

/// Checks the TLS files every second and swaps in each new version that
/// passes its checks; open connections keep their session.
async fn watch_tls(
    mut watcher: TlsWatcher,
    tls: Arc<Live<LinkTls>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let check = move || {
        if let TlsCheck::Loaded(set) = watcher.check() {
            tls.replace(LinkTls {
                acceptor: TlsAcceptor::from(Arc::clone(&set.link_server)),
                connector: TlsConnector::from(Arc::clone(&set.link_client)),
            });
        }
    };
    crate::live::check_every_second(check, "replica-link tls", stop).await;
}

/// Accepts connections until aborted; dropping the JoinSet (on abort)
/// aborts every connection task with it.
async fn accept_loop(listener: TcpListener, tls: Arc<Live<LinkTls>>, inbound: Arc<Inbound>) {
    let mut connections = JoinSet::new();
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a replica connection failed");
                tokio::time::sleep(Duration::from_millis(ACCEPT_RETRY_MS)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if connections.len() >= INBOUND_CONNECTIONS_MAX {
            tracing::warn!(%remote, "too many inbound replica connections; refused");
            continue;
        }
        connections.spawn(serve_inbound(
            tcp,
            remote,
            tls.get().acceptor.clone(),
            Arc::clone(&inbound),
        ));
    }
}

/// Handshakes, identifies the peer, then delivers its messages until the
/// stream ends or carries something bad.
async fn serve_inbound(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    inbound: Arc<Inbound>,
) {
    let handshake = tokio::time::timeout(
        Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        acceptor.accept(tcp),
    );
    let mut stream = match handshake.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => {
            tracing::warn!(%remote, %error, "replica tls handshake refused");
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "replica tls handshake timed out");
            return;
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| peer_replica_index(leaf));
    let Some(peer) = peer.filter(|p| inbound.peers.contains(p)) else {
        tracing::warn!(%remote, ?peer, "replica certificate names no peer of this cluster");
        return;
    };
    loop {
        let body = match read_frame(&mut stream).await {
            Ok(body) => body,
            Err(FrameError::Closed) => return,
            Err(error @ FrameError::Io { .. }) => {
                tracing::debug!(%remote, peer, %error, "replica connection lost");
                return;
            }
            Err(error) => {
                bump(&inbound.counters.frames_dropped);
                tracing::warn!(%remote, peer, %error, "bad frame from replica; closing");
                return;
            }
        };
        let message = match decode_message(&body) {
            Ok(message) => message,
            Err(error) => {
                bump(&inbound.counters.frames_dropped);
                tracing::warn!(%remote, peer, %error, "undecodable message from replica; closing");
                return;
            }
        };
        if message.from != peer || message.cluster != inbound.cluster {
            bump(&inbound.counters.frames_dropped);
            tracing::warn!(
                %remote, peer, from = message.from, cluster = message.cluster,
                "message claims another sender or cluster; dropped"
            );
            continue;
        }
        bump(&inbound.counters.received);
        (inbound.deliver)(message);
    }
}

/// One peer's outbound side.
struct PeerLink {
    peer: ReplicaIndex,
    addr: SocketAddr,
    /// Each connection attempt takes the configuration current then.
    tls: Arc<Live<LinkTls>>,
    counters: Arc<Counters>,
}

/// Why a connection's pump stopped.
enum PumpEnd {
    /// The transport was dropped: stop for good.
    QueueClosed,
    /// The connection failed: reconnect.
    Lost(String),
}

impl PeerLink {
    /// Connects, pumps the queue, reconnects with bounded exponential
    /// backoff; returns only when the queue is closed.
    async fn run(self, mut queue: mpsc::Receiver<Message>) {
        let name = ServerName::try_from(replica_dns_name(self.peer))
            .expect("replica-{i}.vellum is a valid dns name");
        let mut delay_ms = RECONNECT_DELAY_MS_MIN;
        loop {
            match self.connect(name.clone()).await {
                Ok(stream) => {
                    bump(&self.counters.connects);
                    delay_ms = RECONNECT_DELAY_MS_MIN;
                    tracing::debug!(peer = self.peer, addr = %self.addr, "connected to replica");
                    match self.pump(stream, &mut queue).await {
                        PumpEnd::QueueClosed => return,
                        PumpEnd::Lost(reason) => {
                            tracing::debug!(peer = self.peer, %reason, "replica connection lost")
                        }
                    }
                }
                Err(reason) => {
                    tracing::debug!(peer = self.peer, addr = %self.addr, %reason, "connecting to replica failed")
                }
            }
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MS_MAX);
        }
    }

    async fn connect(
        &self,
        name: ServerName<'static>,
    ) -> Result<client::TlsStream<TcpStream>, String> {
        let attempt = async {
            let tcp = TcpStream::connect(self.addr).await?;
            tcp.set_nodelay(true)?;
            let connector = self.tls.get().connector.clone();
            connector.connect(name, tcp).await
        };
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), attempt).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err("connect timed out".to_string()),
        }
    }

    /// Writes queued messages until the connection fails or the queue closes.
    async fn pump(
        &self,
        stream: client::TlsStream<TcpStream>,
        queue: &mut mpsc::Receiver<Message>,
    ) -> PumpEnd {
        let (mut reader, mut writer) = tokio::io::split(stream);
        let mut probe = [0u8; 1];
        loop {
            tokio::select! {
                message = queue.recv() => {
                    let Some(message) = message else {
                        return PumpEnd::QueueClosed;
                    };
                    // Every message already queued goes out in one write (one
                    // TLS record run and one syscall for the batch, not one
                    // per message), up to a bound.
                    let mut frames = Vec::new();
                    let mut count = 0u64;
                    let mut next = Some(message);
                    while let Some(message) = next.take() {
                        match encode_message(&message) {
                            Ok(body) => {
                                frames.extend_from_slice(&encode_frame(&body));
                                count += 1;
                            }
                            Err(error) => {
                                bump(&self.counters.frames_dropped);
                                tracing::error!(peer = self.peer, %error, "message over the wire bounds; dropped");
                            }
                        }
                        if frames.len() < COALESCE_BYTES_MAX {
                            next = queue.try_recv().ok();
                        }
                    }
                    if frames.is_empty() {
                        continue;
                    }
                    let write = async {
                        writer.write_all(&frames).await?;
                        writer.flush().await
                    };
                    match tokio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), write).await {
                        Ok(Ok(())) => {
                            self.counters.sent.fetch_add(count, Ordering::Relaxed);
                        }
                        Ok(Err(error)) => return PumpEnd::Lost(error.to_string()),
                        Err(_) => return PumpEnd::Lost("write timed out".to_string()),
                    }
                }
                read = reader.read(&mut probe) => {
                    return PumpEnd::Lost(match read {
                        Ok(0) => "closed by the peer".to_string(),
                        Ok(_) => "unexpected data from the peer".to_string(),
                        Err(error) => error.to_string(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::{DevPki, generate_dev_pki};
    use crate::vsr::MessageBody;
    use std::time::Instant;

    const CLUSTER: u128 = 0xc1;
    /// Every wait in these tests gives up after this long.
    const WAIT_MS_MAX: u64 = 10_000;

    type Inbox = Arc<Mutex<Vec<Message>>>;

    fn message(from: ReplicaIndex, nonce: u64) -> Message {
        Message {
            cluster: CLUSTER,
            from,
            view: 1,
            body: MessageBody::Recovery { nonce },
        }
    }

    fn dev_pki(count: u8) -> (tempfile::TempDir, DevPki) {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), count).expect("dev pki");
        (dir, pki)
    }

    fn material(pki: &DevPki, index: ReplicaIndex) -> TlsMaterial {
        pki.material(index).expect("in range").expect("loads")
    }

    /// Addresses on 127.0.0.1 picked by the OS (port 0), then released so a
    /// transport can bind them: peers must know each other's address first.
    fn free_addrs(count: usize) -> Vec<SocketAddr> {
        let listeners: Vec<_> = (0..count)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
            .collect();
        listeners
            .iter()
            .map(|l| l.local_addr().expect("bound address"))
            .collect()
    }

    fn start(
        pki: &DevPki,
        replica: ReplicaIndex,
        addrs: &[SocketAddr],
    ) -> (Arc<NetTransport>, Inbox) {
        start_watching(pki, replica, addrs, None)
    }

    fn start_watching(
        pki: &DevPki,
        replica: ReplicaIndex,
        addrs: &[SocketAddr],
        tls_watcher: Option<TlsWatcher>,
    ) -> (Arc<NetTransport>, Inbox) {
        let inbox: Inbox = Arc::default();
        let sink = Arc::clone(&inbox);
        let deliver: Deliver = Arc::new(move |m| sink.lock().expect("inbox lock").push(m));
        let config = NetConfig {
            cluster: CLUSTER,
            replica,
            listen: addrs[usize::from(replica)],
            peers: (0u8..)
                .zip(addrs)
                .filter(|(i, _)| *i != replica)
                .map(|(i, a)| (i, *a))
                .collect(),
            tls: material(pki, replica),
            tls_watcher,
        };
        let (transport, bound) =
            NetTransport::start(config, tokio::runtime::Handle::current(), deliver)
                .expect("starts");
        assert_eq!(bound, addrs[usize::from(replica)]);
        (transport, inbox)
    }

    /// Polls `done` every 20 ms for at most WAIT_MS_MAX; true if it held.
    async fn wait_until(done: impl Fn() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done()
    }

    fn inbox_len(inbox: &Inbox) -> usize {
        inbox.lock().expect("inbox lock").len()
    }

    /// A raw mTLS client speaking as whoever `material` names.
    async fn raw_client(
        material: &TlsMaterial,
        addr: SocketAddr,
        server: ReplicaIndex,
    ) -> std::io::Result<client::TlsStream<TcpStream>> {
        let connector = TlsConnector::from(replica_client_config(material).expect("client config"));
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(replica_dns_name(server)).expect("dns name");
        connector.connect(name, tcp).await
    }

    fn frame_of(message: &Message) -> Vec<u8> {
        encode_frame(&encode_message(message).expect("encodes"))
    }

    /// Goal: three transports deliver messages every way, and to self locally.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn three_replicas_exchange_messages() {
        let (_dir, pki) = dev_pki(3);
        let addrs = free_addrs(3);
        let nodes: Vec<_> = (0..3).map(|i| start(&pki, i, &addrs)).collect();
        for (from, (transport, _)) in (0u8..).zip(&nodes) {
            for to in 0..3u8 {
                transport.send(to, message(from, u64::from(from) * 10 + u64::from(to)));
            }
        }
        for (to, (transport, inbox)) in (0u8..).zip(&nodes) {
            assert!(
                wait_until(|| inbox_len(inbox) == 3).await,
                "replica {to} got {:?}",
                inbox
            );
            let mut nonces: Vec<u64> = inbox
                .lock()
                .expect("inbox lock")
                .iter()
                .map(|m| match m.body {
                    MessageBody::Recovery { nonce } => nonce,
                    _ => u64::MAX,
                })
                .collect();
            nonces.sort_unstable();
            let expected: Vec<u64> = (0..3u64).map(|from| from * 10 + u64::from(to)).collect();
            assert_eq!(nonces, expected, "replica {to}");
            let stats = transport.stats();
            assert_eq!(stats.received, 2, "replica {to}: {stats:?}");
            assert_eq!(stats.frames_dropped, 0, "replica {to}: {stats:?}");
        }
        for (transport, _) in &nodes {
            assert!(
                wait_until(|| transport.stats().sent == 2).await,
                "{transport:?}"
            );
            transport.shutdown();
        }
    }

    /// Goal: once replica 0's certificate and key files are replaced, new
    /// link connections to it are shown the new certificate (its
    /// fingerprint, seen by the connecting peer) without a restart, and
    /// messages still flow.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_replaced_certificate_reaches_new_link_connections() {
        use crate::net::tls::{
            certificate_sha256, certificates_from_pem, reissue_dev_replica_cert,
        };
        let (_dir, pki) = dev_pki(2);
        let addrs = free_addrs(2);
        let (cert_path, key_path) = pki.replicas[0].clone();
        let watcher = TlsWatcher::new(
            crate::net::tls_reload::TlsFiles {
                replica: 0,
                ca: pki.ca_cert.clone(),
                cert: cert_path.clone(),
                key: key_path.clone(),
                client_ca: None,
            },
            "replica link",
        );
        let (zero, _) = start_watching(&pki, 0, &addrs, Some(watcher));
        let (one, inbox) = start(&pki, 1, &addrs);
        let shown = || async {
            let stream = raw_client(&material(&pki, 1), addrs[0], 0)
                .await
                .expect("handshake");
            let leaf = stream.get_ref().1.peer_certificates().expect("certificate")[0].clone();
            certificate_sha256(&leaf)
        };
        let sha256_of = |pem: &[u8]| {
            certificate_sha256(
                &certificates_from_pem(pem, std::path::Path::new("t")).expect("pem")[0],
            )
        };
        assert_eq!(
            shown().await,
            sha256_of(&std::fs::read(&cert_path).expect("cert"))
        );
        let (cert, key) = reissue_dev_replica_cert(&pki, 0, false).expect("reissue");
        crate::fsutil::replace_durable(&key_path, key.as_bytes(), 0o600).expect("key");
        crate::fsutil::replace_durable(&cert_path, cert.as_bytes(), 0o644).expect("cert");
        let deadline = Instant::now() + Duration::from_millis(WAIT_MS_MAX);
        while shown().await != sha256_of(cert.as_bytes()) {
            assert!(
                Instant::now() < deadline,
                "new connections still get the old certificate"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        zero.send(1, message(0, 42));
        assert!(
            wait_until(|| inbox_len(&inbox) == 1).await,
            "a message after the rotation"
        );
        zero.shutdown();
        one.shutdown();
    }

    /// Goal: a client whose certificate is not signed by the cluster CA is
    /// refused: its connection fails and nothing it sends is delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn client_outside_the_ca_is_refused() {
        let (_dir, pki) = dev_pki(2);
        let (_rogue_dir, rogue) = dev_pki(2);
        let addrs = free_addrs(2);
        let (transport, inbox) = start(&pki, 0, &addrs);
        let impostor = TlsMaterial {
            ca_pem: material(&pki, 0).ca_pem,
            ..material(&rogue, 1)
        };
        if let Ok(mut stream) = raw_client(&impostor, addrs[0], 0).await {
            // TLS 1.3 finishes the client's side first; the server's refusal
            // arrives as an alert on the next read.
            let _ = stream.write_all(&frame_of(&message(1, 7))).await;
            let _ = stream.flush().await;
            let mut buf = [0u8; 16];
            let read =
                tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), stream.read(&mut buf))
                    .await
                    .expect("the server answers the impostor within the wait");
            assert!(matches!(read, Ok(0) | Err(_)), "impostor read {read:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(inbox_len(&inbox), 0);
        assert_eq!(transport.stats().received, 0);
        transport.shutdown();
    }

    /// Goal: garbage on an authenticated stream is counted, closes that
    /// stream, and the transport keeps delivering afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn garbage_is_dropped_and_transport_survives() {
        let (_dir, pki) = dev_pki(2);
        let addrs = free_addrs(2);
        let (t0, inbox0) = start(&pki, 0, &addrs);
        let mut raw = raw_client(&material(&pki, 1), addrs[0], 0)
            .await
            .expect("connects");
        raw.write_all(&[0xab; 100]).await.expect("writes");
        raw.flush().await.expect("flushes");
        assert!(
            wait_until(|| t0.stats().frames_dropped == 1).await,
            "{:?}",
            t0.stats()
        );
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_millis(WAIT_MS_MAX), raw.read(&mut buf))
            .await
            .expect("the stream is closed within the wait");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "garbage stream still open: {read:?}"
        );
        let (t1, _inbox1) = start(&pki, 1, &addrs);
        t1.send(0, message(1, 42));
        assert!(wait_until(|| inbox_len(&inbox0) == 1).await);
        assert_eq!(inbox0.lock().expect("inbox lock")[0], message(1, 42));
        t0.shutdown();
        t1.shutdown();
    }

    /// Goal: a message whose `from` or cluster differs from the authenticated
    /// peer is dropped and counted, and the stream keeps working.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forged_sender_or_cluster_is_dropped() {
        let (_dir, pki) = dev_pki(3);
        let addrs = free_addrs(3);
        let (t0, inbox0) = start(&pki, 0, &addrs);
        let mut raw = raw_client(&material(&pki, 1), addrs[0], 0)
            .await
            .expect("connects");
        let forged_from = message(2, 1);
        let mut other_cluster = message(1, 2);
        other_cluster.cluster = CLUSTER + 1;
        let genuine = message(1, 3);
        for m in [&forged_from, &other_cluster, &genuine] {
            raw.write_all(&frame_of(m)).await.expect("writes");
        }
        raw.flush().await.expect("flushes");
        // Frames on one stream are handled in order: once the genuine one
        // is delivered, both forgeries were seen.
        assert!(wait_until(|| inbox_len(&inbox0) == 1).await);
        assert_eq!(inbox0.lock().expect("inbox lock")[0], genuine);
        assert_eq!(t0.stats().frames_dropped, 2, "{:?}", t0.stats());
        assert_eq!(t0.stats().received, 1);
        t0.shutdown();
    }

    /// Goal: a peer that is down at start is reached once it comes up, and
    /// the message queued meanwhile arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn peer_down_at_start_is_reached_later() {
        let (_dir, pki) = dev_pki(2);
        let addrs = free_addrs(2);
        let (t0, _inbox0) = start(&pki, 0, &addrs);
        t0.send(1, message(0, 5));
        // Long enough for several failed attempts and a grown backoff.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(t0.stats().connects, 0);
        let (t1, inbox1) = start(&pki, 1, &addrs);
        assert!(
            wait_until(|| inbox_len(&inbox1) == 1).await,
            "{:?}",
            t0.stats()
        );
        assert_eq!(inbox1.lock().expect("inbox lock")[0], message(0, 5));
        assert!(t0.stats().connects >= 1);
        t0.shutdown();
        t1.shutdown();
    }

    /// Goal: a full peer queue drops and counts instead of blocking, and an
    /// unknown peer is counted too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_drops_without_blocking() {
        let (_dir, pki) = dev_pki(2);
        let addrs = free_addrs(2);
        let (t0, _inbox0) = start(&pki, 0, &addrs);
        let extra = 10;
        // The peer is down: the pump holds at most one message besides the queue.
        for nonce in 0..(PEER_QUEUE_MAX + extra) as u64 {
            t0.send(1, message(0, nonce));
        }
        t0.send(5, message(0, 0));
        let dropped = t0.stats().queue_dropped;
        assert!(
            (extra as u64..=extra as u64 + 1).contains(&(dropped - 1)),
            "dropped {dropped}"
        );
        t0.shutdown();
    }

    /// Goal: after shutdown the listener stops accepting connections.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_stops_the_listener() {
        let (_dir, pki) = dev_pki(2);
        let addrs = free_addrs(2);
        let (t0, _inbox0) = start(&pki, 0, &addrs);
        assert!(
            TcpStream::connect(addrs[0]).await.is_ok(),
            "listening before shutdown"
        );
        t0.shutdown();
        let refused = wait_until(|| std::net::TcpStream::connect(addrs[0]).is_err()).await;
        assert!(refused, "still accepting after shutdown");
    }
}
