//! TLS rotation on three real replica processes: replica 1's certificate
//! and key files are replaced while the cluster runs; a new connection to
//! its client API is shown the new certificate, without a restart; after
//! replica 2 restarts (so the replica links reconnect, both ways, with the
//! new certificate on replica 1's side) the cluster commits on every
//! replica, and `vellum verify --cluster` passes.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use vellum::local_cluster::LocalCluster;
use vellum::net::tls::{
    DevPki, certificate_sha256, certificates_from_pem, reissue_dev_replica_cert,
};

mod support;
use support::{TestDir, vellum_cli};

const WAIT: Duration = Duration::from_secs(60);
/// A replica reloads within a second; room for a loaded machine.
const RELOAD_WAIT: Duration = Duration::from_secs(15);
const STREAM: u64 = 4200;

fn s(path: &Path) -> &str {
    path.to_str().expect("utf-8 temp paths")
}

/// The SHA-256 of the certificate a new TLS connection to `url`'s address
/// is shown (trusting `ca_pem`, as replica `replica`).
async fn presented(url: &str, ca_pem: &[u8], replica: u8) -> [u8; 32] {
    let addr = url.trim_start_matches("https://").to_string();
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let name = ServerName::try_from(format!("replica-{replica}.vellum")).expect("name");
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("handshake");
    let leaf = tls.get_ref().1.peer_certificates().expect("certificate")[0].clone();
    certificate_sha256(&leaf)
}

// Goal: a replaced replica certificate reaches new client connections
// without a restart, and the replica links keep the cluster committing
// after they reconnect with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_certificate_is_rotated_while_the_cluster_runs() {
    let dir = TestDir::new("vellum-tls-rotation-cluster");
    let root = dir.path().join("cluster");
    let mut cluster = LocalCluster::start(&root, 3, support::vellum_exe()).expect("cluster");
    cluster.wait_primary(WAIT).await.expect("primary");
    let tls = cluster.dev.dir.join("tls");
    let pki = DevPki {
        ca_cert: tls.join("ca.pem"),
        ca_key: tls.join("ca.key"),
        replicas: (0..3)
            .map(|i| {
                (
                    tls.join(format!("replica-{i}.pem")),
                    tls.join(format!("replica-{i}.key")),
                )
            })
            .collect(),
    };
    let ca_pem = cluster.ca_pem().to_vec();
    let url = cluster.dev.api_urls[1].clone();
    let old = presented(&url, &ca_pem, 1).await;
    let (cert, key) = reissue_dev_replica_cert(&pki, 1, false).expect("reissue");
    let new = certificate_sha256(
        &certificates_from_pem(cert.as_bytes(), Path::new("t")).expect("pem")[0],
    );
    assert_ne!(old, new);
    let (cert_path, key_path) = &pki.replicas[1];
    vellum::fsutil::replace_durable(key_path, key.as_bytes(), 0o600).expect("key");
    vellum::fsutil::replace_durable(cert_path, cert.as_bytes(), 0o644).expect("cert");
    let deadline = Instant::now() + RELOAD_WAIT;
    while presented(&url, &ca_pem, 1).await != new {
        assert!(
            Instant::now() < deadline,
            "replica 1 still presents the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    cluster.restart(2).expect("restart replica 2");
    let client = cluster.client(None).expect("client");
    let receipt = client
        .append(
            STREAM,
            vec![Bytes::from_static(b"{\"after\":\"rotation\"}")],
            None,
        )
        .await
        .expect("append after the rotation");
    cluster
        .wait_commit(&[0, 1, 2], receipt.op, WAIT)
        .await
        .expect("every replica commits after the rotation");
    cluster.stop().expect("stop");
    let (code, out, err) = vellum_cli(&[
        "verify",
        "--cluster",
        s(&cluster.dev.dir),
        "--policy",
        s(&cluster.dev.policy_path),
    ]);
    assert_eq!(code, 0, "verify --cluster: {out}{err}");
}
