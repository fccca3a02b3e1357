//! Tests of TLS rotation on a running client API server
//! (`crate::net::tls_reload`): a replaced certificate reaches new
//! connections while open HTTP/2 connections keep working, a broken set of
//! files is refused whole, and a replaced client CA takes effect.

use super::*;

use std::path::Path;

use super::credentials_tests::{read_on, try_h2_connection};
use crate::net::tls::{
    ClientCa, ClientCertSpec, DevPki, certificate_sha256, certificates_from_pem, generate_dev_pki,
    reissue_dev_replica_cert,
};
use crate::net::tls_reload::{TlsFiles, TlsSet, TlsWatcher};
use crate::server::auth::digest_line;
use crate::server::mtls::ClientCertStore;

/// How long a reload may take: a few check periods (the checks run on a
/// busy test machine).
const RELOAD_WAIT: Duration = Duration::from_millis(5 * crate::live::RELOAD_CHECK_MS + 500);

/// A server reloading the TLS files `files`; its address and stop switch.
async fn serve_rotating(
    files: &TlsFiles,
    clients: Option<ClientCertStore>,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let watcher = TlsWatcher::new(files.clone(), "client api");
    let set = TlsSet::load(files).expect("tls set");
    let config = crate::server::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: Arc::clone(&set.api_server),
        tls_watcher: Some(watcher),
        tokens: tokens(),
        peer_api: Vec::new(),
        ca_pem: set.material.ca_pem.clone(),
        identity: Some(set.material.clone()),
        client_certs: set.client_ca_pem.clone().zip(clients),
        credential_files: None,
    };
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = crate::server::serve(config, node, shutdown)
        .await
        .expect("serve");
    (handle.local_addr, stop)
}

fn replica_files(pki: &DevPki, client_ca: Option<&Path>) -> TlsFiles {
    TlsFiles {
        replica: 0,
        ca: pki.ca_cert.clone(),
        cert: pki.replicas[0].0.clone(),
        key: pki.replicas[0].1.clone(),
        client_ca: client_ca.map(Path::to_path_buf),
    }
}

/// Replaces `path` by rename, as a deploy tool would.
fn replace(path: &Path, bytes: &[u8]) {
    crate::fsutil::replace_durable(path, bytes, 0o600).expect("replace");
}

fn sha256_of_pem(pem: &[u8]) -> [u8; 32] {
    certificate_sha256(&certificates_from_pem(pem, Path::new("t")).expect("pem")[0])
}

/// The fingerprint of the certificate a new connection is shown.
async fn presented(addr: std::net::SocketAddr, ca_pem: &[u8]) -> [u8; 32] {
    try_h2_connection(addr, ca_pem, None)
        .await
        .expect("a new connection")
        .1
}

/// `/metrics`' value of `name` on a new connection.
async fn metric(addr: std::net::SocketAddr, ca_pem: &[u8], name: &str) -> u64 {
    let (mut connection, _) = try_h2_connection(addr, ca_pem, None)
        .await
        .expect("connection");
    let request = Request::builder()
        .uri("https://localhost/metrics")
        .body(String::new())
        .expect("request");
    connection.ready().await.expect("ready");
    let response = connection.send_request(request).await.expect("answer");
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .expect("body");
    let text = String::from_utf8_lossy(&bytes).to_string();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {text}"))
}

/// Polls `metric` until it reaches at least `value` (within [`RELOAD_WAIT`]).
async fn wait_for_metric(addr: std::net::SocketAddr, ca_pem: &[u8], name: &str, value: u64) {
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let now = metric(addr, ca_pem, name).await;
        if now >= value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} is {now}, expected {value}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Goal: once the certificate and key files are replaced, new connections
// are shown the new certificate (its fingerprint, seen by the client),
// without a restart, while an HTTP/2 connection opened before goes on
// answering on the very same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_reaches_new_connections_and_open_ones_keep_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = generate_dev_pki(dir.path(), 1).expect("pki");
    let files = replica_files(&pki, None);
    let ca_pem = std::fs::read(&pki.ca_cert).expect("ca");
    let old = sha256_of_pem(&std::fs::read(&files.cert).expect("cert"));
    let (addr, stop) = serve_rotating(&files, None).await;
    let (mut before, shown) = try_h2_connection(addr, &ca_pem, None)
        .await
        .expect("connection");
    assert_eq!(shown, old);
    assert_eq!(read_on(&mut before, Some(READER)).await.0, 200);
    let (cert, key) = reissue_dev_replica_cert(&pki, 0, false).expect("reissue");
    let new = sha256_of_pem(cert.as_bytes());
    assert_ne!(new, old);
    replace(&files.key, key.as_bytes());
    replace(&files.cert, cert.as_bytes());
    let deadline = Instant::now() + RELOAD_WAIT;
    while presented(addr, &ca_pem).await != new {
        assert!(
            Instant::now() < deadline,
            "new connections still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        read_on(&mut before, Some(READER)).await.0,
        200,
        "the connection opened before answers on"
    );
    assert!(metric(addr, &ca_pem, "vellum_tls_reloads_total").await >= 1);
    stop.send(true).expect("server running");
}

// Goal: a broken set of TLS files (a certificate without its key, an
// unparsable certificate, an expired one, another CA's) is refused whole,
// counted in /metrics, and new connections are still shown the old
// certificate; a good set afterwards is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_tls_files_are_refused_and_the_old_certificate_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = generate_dev_pki(&dir.path().join("pki"), 1).expect("pki");
    let rogue = generate_dev_pki(&dir.path().join("rogue"), 1).expect("rogue pki");
    let files = replica_files(&pki, None);
    let ca_pem = std::fs::read(&pki.ca_cert).expect("ca");
    let (old_cert, old_key) = (
        std::fs::read(&files.cert).expect("cert"),
        std::fs::read(&files.key).expect("key"),
    );
    let old = sha256_of_pem(&old_cert);
    let (addr, stop) = serve_rotating(&files, None).await;
    let (other_cert, _other_key) = reissue_dev_replica_cert(&pki, 0, false).expect("reissue");
    let (expired_cert, expired_key) = reissue_dev_replica_cert(&pki, 0, true).expect("expired");
    let rogue_pair = (
        std::fs::read(&rogue.replicas[0].0).expect("rogue cert"),
        std::fs::read(&rogue.replicas[0].1).expect("rogue key"),
    );
    let broken: [(&str, Vec<u8>, Vec<u8>); 4] = [
        (
            "cert without its key",
            other_cert.into_bytes(),
            old_key.clone(),
        ),
        (
            "unparsable cert",
            b"-----BEGIN CERTIFICATE-----\n!!\n".to_vec(),
            old_key.clone(),
        ),
        (
            "expired cert",
            expired_cert.into_bytes(),
            expired_key.as_bytes().to_vec(),
        ),
        ("another CA's cert", rogue_pair.0, rogue_pair.1),
    ];
    // A check may fall between the two writes: every such half is broken
    // too (a key without its certificate), so each case counts one or two
    // refusals, and a pause of one check period lets the second be seen.
    let mut current_key = old_key.clone();
    for (what, cert, key) in broken {
        let refused = metric(addr, &ca_pem, "vellum_tls_reloads_refused_total").await;
        if key != current_key {
            replace(&files.key, &key);
            current_key = key;
        }
        replace(&files.cert, &cert);
        wait_for_metric(
            addr,
            &ca_pem,
            "vellum_tls_reloads_refused_total",
            refused + 1,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(crate::live::RELOAD_CHECK_MS + 200)).await;
        assert_eq!(
            presented(addr, &ca_pem).await,
            old,
            "{what}: the old certificate stays"
        );
    }
    assert_eq!(metric(addr, &ca_pem, "vellum_tls_reloads_total").await, 0);
    replace(&files.key, &old_key);
    replace(&files.cert, &old_cert);
    wait_for_metric(addr, &ca_pem, "vellum_tls_reloads_total", 1).await;
    assert_eq!(presented(addr, &ca_pem).await, old);
    stop.send(true).expect("server running");
}

/// A certificate of `ca` for principal `name`, its key (PEM) and its
/// client certificates line.
fn client_cert(ca: &ClientCa, name: &str) -> (String, String, String) {
    let (cert, key) = ca
        .issue(&ClientCertSpec {
            common_name: name,
            ..ClientCertSpec::default()
        })
        .expect("issue");
    let line = digest_line(
        &sha256_of_pem(cert.as_bytes()),
        name,
        Role::Reader,
        &Scope::all(),
    );
    (cert, key.to_string(), line)
}

/// The status of one read on a new connection presenting `client`, or
/// None when the handshake or the request failed (a refused certificate).
async fn status_on_new_connection(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
    client: (&str, &str),
) -> Option<u16> {
    let (mut connection, _) = try_h2_connection(addr, ca_pem, Some(client)).await.ok()?;
    let request = Request::builder()
        .uri("https://localhost/v1/streams/1/events")
        .body(String::new())
        .expect("request");
    connection.ready().await.ok()?;
    let response = tokio::time::timeout(WAIT, connection.send_request(request))
        .await
        .ok()?
        .ok()?;
    Some(response.status().as_u16())
}

// Goal: once the client CA file is replaced by another CA, a certificate
// of the new CA is accepted on new connections and one of the old CA is
// refused, on new connections and on its connection opened before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_client_ca_takes_new_certificates_and_refuses_old_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = generate_dev_pki(&dir.path().join("pki"), 1).expect("pki");
    let (old_ca, new_ca) = (
        ClientCa::generate().expect("old ca"),
        ClientCa::generate().expect("new ca"),
    );
    let client_ca = dir.path().join("client-ca.pem");
    replace(&client_ca, old_ca.cert_pem().as_bytes());
    let (old_cert, old_key, old_line) = client_cert(&old_ca, "svc-old");
    let (new_cert, new_key, new_line) = client_cert(&new_ca, "svc-new");
    let clients = ClientCertStore::from_lines(&[old_line, new_line].join("\n")).expect("table");
    let files = replica_files(&pki, Some(&client_ca));
    let ca_pem = std::fs::read(&pki.ca_cert).expect("ca");
    let (addr, stop) = serve_rotating(&files, Some(clients)).await;
    let old_client = (old_cert.as_str(), old_key.as_str());
    let new_client = (new_cert.as_str(), new_key.as_str());
    assert_eq!(
        status_on_new_connection(addr, &ca_pem, old_client).await,
        Some(200)
    );
    assert_ne!(
        status_on_new_connection(addr, &ca_pem, new_client).await,
        Some(200),
        "the new CA is not trusted yet"
    );
    let (mut open, _) = try_h2_connection(addr, &ca_pem, Some(old_client))
        .await
        .expect("connection");
    assert_eq!(read_on(&mut open, None).await.0, 200);
    replace(&client_ca, new_ca.cert_pem().as_bytes());
    wait_for_metric(addr, &ca_pem, "vellum_tls_reloads_total", 1).await;
    assert_eq!(
        status_on_new_connection(addr, &ca_pem, new_client).await,
        Some(200)
    );
    assert_ne!(
        status_on_new_connection(addr, &ca_pem, old_client).await,
        Some(200),
        "the old CA's certificate on a new connection"
    );
    assert_eq!(
        read_on(&mut open, None).await.0,
        401,
        "the old CA's certificate on its connection opened before"
    );
    stop.send(true).expect("server running");
}
