//! Tests of credential lifetimes (`crate::server::credentials`): expiry of
//! token and client-certificate lines, a certificate whose notAfter passes
//! after its handshake, reloading the files without a restart, and
//! revocation on an HTTP/2 connection that was already open.

use super::*;

use std::path::Path;

use crate::net::tls::{ApiPeerVerifier, ClientCa, ClientCertSpec, certificate_sha256};
use crate::server::auth::digest_line;
use crate::server::credentials::{Live, ReloadOutcome, Reloadable, Watcher};
use crate::server::logins::LoginLimits;
use crate::server::mtls::{ClientCertStore, ClientCerts, PresentedCert};

const PAST: &str = "2020-01-01T00:00:00Z";
const FUTURE: &str = "2999-01-01T00:00:00Z";

/// A certificate of `ca` as the TLS layer hands it on, with its key (PEM).
fn issue(ca: &ClientCa, name: &str, expired: bool) -> (PresentedCert, String, String) {
    let (pem, key) = ca
        .issue(&ClientCertSpec {
            common_name: name,
            dns_names: &[],
            expired,
        })
        .expect("issue");
    let chain =
        crate::net::tls::certificates_from_pem(pem.as_bytes(), Path::new("t")).expect("pem");
    let sha256 = certificate_sha256(&chain[0]);
    let presented = PresentedCert::new(chain, sha256);
    (presented, pem, key.to_string())
}

fn with_cert(call: Call<'_>, cert: &PresentedCert) -> Request<Body> {
    let mut request = call.request();
    request.extensions_mut().insert(cert.clone());
    request
}

async fn answer(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

// Goal: a token before its `expires=` works; after it, 401
// credential_expired naming the principal, recorded as a failed login in
// the trail, and counted towards the failed-login limit (429 past it).
#[tokio::test]
async fn an_expired_token_is_refused_and_counted_as_a_failed_login() {
    let lines = [
        format!(
            "{} expires={FUTURE}",
            token_line("vlm_fresh", "fresh", Role::Reader, &Scope::all())
        ),
        format!(
            "{} expires={PAST}",
            token_line("vlm_stale_token", "stale", Role::Reader, &Scope::all())
        ),
    ]
    .join("\n");
    let store = TokenStore::from_lines(&lines).expect("tokens");
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let limits = LoginLimits {
        per_source_max: 2,
        per_prefix_max: 2,
        ..LoginLimits::default()
    };
    let state = AppState::new(
        Arc::clone(&node) as Arc<dyn crate::server::node::Node>,
        store,
        Vec::new(),
        b"",
    )
    .expect("state")
    .with_login_limits(limits);
    let app = router(state.clone());
    let (status, body) = send(&app, Call::get("/v1/streams/1/events", Some("vlm_fresh"))).await;
    assert_eq!(status, StatusCode::OK, "before expires=: {body}");
    let (status, body) = send(
        &app,
        Call::get("/v1/streams/1/events", Some("vlm_stale_token")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["error"]["code"], "credential_expired", "{body}");
    assert!(
        body.to_string().contains("stale") && body.to_string().contains(PAST),
        "{body}"
    );
    let last = node.lock().trail.last().cloned().expect("recorded");
    assert_eq!(
        last.action,
        vellum_compliance::trail::AccessAction::AuthFailed
    );
    assert_eq!(
        state.counters.failed_logins().0,
        1,
        "counted as a failed login"
    );
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let call = Call::get("/v1/streams/1/events", Some("vlm_stale_token"));
        statuses.push(send(&app, call).await.0);
    }
    assert_eq!(
        statuses.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "the limit applies to expired tokens: {statuses:?}"
    );
}

// Goal: a client certificate's line with a past `expires=` is 401
// credential_expired; one with a future `expires=` works; a certificate
// whose own notAfter passed after the handshake (the TLS layer verified
// it then) is refused on its next request, also 401 credential_expired.
#[tokio::test]
async fn expired_client_certificates_are_refused_per_request() {
    let ca = ClientCa::generate().expect("ca");
    let (fresh, _, _) = issue(&ca, "fresh", false);
    let (stale, _, _) = issue(&ca, "stale", false);
    let (lapsed, _, _) = issue(&ca, "lapsed", true);
    let lines = [
        format!(
            "{} expires={FUTURE}",
            digest_line(&fresh.sha256, "fresh", Role::Reader, &Scope::all())
        ),
        format!(
            "{} expires={PAST}",
            digest_line(&stale.sha256, "stale", Role::Reader, &Scope::all())
        ),
        digest_line(&lapsed.sha256, "lapsed", Role::Reader, &Scope::all()),
    ]
    .join("\n");
    let store = ClientCertStore::from_lines(&lines).expect("table");
    let verifier = ApiPeerVerifier::new(b"", Some(ca.cert_pem().as_bytes())).expect("verifier");
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let state = state_with(Arc::clone(&node), Vec::new()).with_client_certs(ClientCerts {
        verifier: Arc::new(crate::live::Live::new(verifier)),
        store: Arc::new(Live::new(store)),
    });
    let app = router(state);
    let read = || Call::get("/v1/streams/1/events", None);
    let (status, body) = answer(&app, with_cert(read(), &fresh)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for (cert, why) in [(&stale, "expires= passed"), (&lapsed, "notAfter passed")] {
        let (status, body) = answer(&app, with_cert(read(), cert)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
        assert_eq!(body["error"]["code"], "credential_expired", "{why}: {body}");
    }
}

// Goal: an absurd or oddly spelled `expires=` (2^64-1, unix seconds, an
// offset, a fraction, Feb 30, twice) refuses the whole file at load, with
// the file and line named; a canonical one loads.
#[test]
fn odd_expiry_spellings_refuse_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tokens");
    let good = token_line("vlm_a", "ann", Role::Reader, &Scope::all());
    for bad in [
        "expires=18446744073709551615",
        "expires=1801267200",
        "expires=2027-01-31T00:00:00+00:00",
        "expires=2027-01-31T00:00:00.000Z",
        "expires=2027-02-30T00:00:00Z",
        "expires=99999-01-01T00:00:00Z",
        "expires=",
        "expires=2027-01-31T00:00:00Z expires=2028-01-31T00:00:00Z",
        "expiry=2027-01-31T00:00:00Z",
    ] {
        let text = format!("# header\n{good} {bad}\n");
        std::fs::write(&path, text).expect("write");
        let error = TokenStore::load(&path).expect_err(bad).to_string();
        assert!(
            error.contains(&path.display().to_string()) && error.contains("line 2"),
            "{bad}: {error}"
        );
    }
    let bare = token_line("vlm_a", "ann", Role::Reader, &Scope::none());
    std::fs::write(&path, format!("{bare} expires={FUTURE} streams=1-5\n")).expect("write");
    let store = TokenStore::load(&path).expect("canonical expires= loads");
    assert!(
        store
            .authenticate("vlm_a", 0)
            .expect("ann")
            .scope
            .contains(5)
    );
}

/// Writes `lines` to `path` as the operator would: a new file renamed in.
fn write_table(path: &Path, lines: &[String]) {
    let staged = path.with_extension("new");
    std::fs::write(&staged, lines.join("\n") + "\n").expect("write");
    std::fs::rename(&staged, path).expect("rename");
}

// Goal: a tokens file changed on disk is taken without a restart: a new
// token works, a removed one is refused, and a bad file (or one naming a
// principal that is also a client certificate's) keeps the old table
// whole, with the error naming file and line.
#[tokio::test]
async fn the_tokens_file_is_reloaded_whole_or_not_at_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens_path = dir.path().join("tokens.txt");
    let certs_path = dir.path().join("clients.txt");
    let old = token_line("vlm_old_token", "old", Role::Reader, &Scope::all());
    let new = token_line("vlm_new_token", "new", Role::Reader, &Scope::all());
    write_table(&tokens_path, std::slice::from_ref(&old));
    write_table(&certs_path, &[]);
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let state = AppState::new(
        Arc::clone(&node) as Arc<dyn crate::server::node::Node>,
        TokenStore::load(&tokens_path).expect("tokens"),
        Vec::new(),
        b"",
    )
    .expect("state");
    let app = router(state.clone());
    let mut watcher = Watcher::new(Reloadable {
        tokens_path: tokens_path.clone(),
        client_certs_path: Some(certs_path.clone()),
        tokens: Arc::clone(&state.tokens),
        client_certs: Arc::new(Live::new(ClientCertStore::default())),
    });
    assert_eq!(
        watcher.check(),
        ReloadOutcome::Reloaded,
        "the first check loads"
    );
    assert_eq!(watcher.check(), ReloadOutcome::Unchanged);
    let status = |token: &'static str| {
        let app = app.clone();
        async move {
            send(&app, Call::get("/v1/streams/1/events", Some(token)))
                .await
                .0
        }
    };
    assert_eq!(status("vlm_new_token").await, StatusCode::UNAUTHORIZED);
    // Rotation: old and new overlap, then the old one goes.
    write_table(&tokens_path, &[old.clone(), new.clone()]);
    assert_eq!(watcher.check(), ReloadOutcome::Reloaded);
    assert_eq!(status("vlm_new_token").await, StatusCode::OK);
    assert_eq!(status("vlm_old_token").await, StatusCode::OK);
    write_table(&tokens_path, std::slice::from_ref(&new));
    assert_eq!(watcher.check(), ReloadOutcome::Reloaded);
    assert_eq!(status("vlm_old_token").await, StatusCode::UNAUTHORIZED);
    // A bad last line: nothing of the file is taken, the old table stays.
    let later = token_line("vlm_later", "later", Role::Reader, &Scope::all());
    write_table(
        &tokens_path,
        &[later.clone(), format!("{new} expires=tomorrow")],
    );
    match watcher.check() {
        ReloadOutcome::Refused(why) => assert!(
            why.contains("tokens.txt") && why.contains("line 2"),
            "{why}"
        ),
        other => panic!("a bad file must be refused, got {other:?}"),
    }
    assert_eq!(
        status("vlm_new_token").await,
        StatusCode::OK,
        "old table kept"
    );
    assert_eq!(
        status("vlm_later").await,
        StatusCode::UNAUTHORIZED,
        "no half"
    );
    assert_eq!(watcher.check(), ReloadOutcome::Unchanged, "refused once");
    // A principal in both files: refused, both tables kept.
    let ca = ClientCa::generate().expect("ca");
    let (cert, _, _) = issue(&ca, "later", false);
    write_table(
        &certs_path,
        &[digest_line(
            &cert.sha256,
            "later",
            Role::Reader,
            &Scope::all(),
        )],
    );
    write_table(&tokens_path, &[later]);
    assert!(matches!(watcher.check(), ReloadOutcome::Refused(why) if why.contains("\"later\"")));
    assert_eq!(
        status("vlm_new_token").await,
        StatusCode::OK,
        "old table kept"
    );
}

/// A server over TLS with a client CA, reloading `tokens` and `clients`
/// from disk; its address and the cluster CA (PEM).
async fn serve_reloading(
    dir: &Path,
    client_ca: &ClientCa,
    node: Arc<FakeNode>,
) -> (
    std::net::SocketAddr,
    Vec<u8>,
    tokio::sync::watch::Sender<bool>,
) {
    let pki = crate::net::tls::generate_dev_pki(&dir.join("pki"), 1).expect("pki");
    let material = pki.material(0).expect("replica 0").expect("material");
    let ca_pem = client_ca.cert_pem().as_bytes().to_vec();
    let config = crate::server::ServerConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tls: crate::net::tls::api_server_config(&material, Some(&ca_pem)).expect("tls"),
        tokens: TokenStore::load(&dir.join("tokens.txt")).expect("tokens"),
        peer_api: Vec::new(),
        ca_pem: material.ca_pem.clone(),
        identity: None,
        client_certs: Some((
            ca_pem,
            ClientCertStore::load(&dir.join("clients.txt")).expect("clients"),
        )),
        credential_files: Some(crate::server::credentials::CredentialFiles {
            tokens: dir.join("tokens.txt"),
            client_certs: Some(dir.join("clients.txt")),
        }),
        tls_watcher: None,
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let handle = crate::server::serve(config, node, shutdown)
        .await
        .expect("serve");
    (handle.local_addr, material.ca_pem.clone(), stop)
}

/// One HTTP/2 connection over TLS to `addr`, presenting `client` (a
/// certificate and key, PEM) if given.
async fn h2_connection(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
    client: Option<(&str, &str)>,
) -> hyper::client::conn::http2::SendRequest<String> {
    try_h2_connection(addr, ca_pem, client)
        .await
        .expect("connection")
        .0
}

/// One HTTP/2 connection over TLS to `addr` trusting `ca_pem`, presenting
/// `client` (a certificate and key, PEM) if given, and the SHA-256 of the
/// certificate the server presented; or why the handshake failed.
pub(super) async fn try_h2_connection(
    addr: std::net::SocketAddr,
    ca_pem: &[u8],
    client: Option<(&str, &str)>,
) -> Result<(hyper::client::conn::http2::SendRequest<String>, [u8; 32]), String> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => {
            let chain = rustls_pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let tls = tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let presented = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| certificate_sha256(leaf))
        .ok_or("the server presented no certificate")?;
    let (send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(connection);
    Ok((send, presented))
}

/// GET stream 1's events on `connection`, with `token` if given: the status
/// and the error code, if any. Panics if the connection is gone (the test
/// is about answers on the very same connection).
pub(super) async fn read_on(
    connection: &mut hyper::client::conn::http2::SendRequest<String>,
    token: Option<&str>,
) -> (u16, String) {
    let mut request = Request::builder()
        .uri("https://localhost/v1/streams/1/events")
        .method("GET");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = request.body(String::new()).expect("request");
    connection.ready().await.expect("connection still open");
    let response = tokio::time::timeout(WAIT, connection.send_request(request))
        .await
        .expect("answer in time")
        .expect("answer on the same connection");
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .expect("body");
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or("").to_string();
    (status, code)
}

// Goal: on HTTP/2 connections opened before, a token and a client
// certificate removed from their files (revoked) are refused on their next
// request once the server has reloaded (within a bounded wait), without a
// restart and on the same connections; a token added meanwhile works.
#[tokio::test]
async fn revocation_reaches_open_http2_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = ClientCa::generate().expect("ca");
    let (cert, cert_pem, key_pem) = issue(&ca, "svc", false);
    let token = token_line("vlm_revoked_soon", "tok", Role::Reader, &Scope::all());
    let cert_line = digest_line(&cert.sha256, "svc", Role::Reader, &Scope::all());
    write_table(&dir.path().join("tokens.txt"), std::slice::from_ref(&token));
    write_table(
        &dir.path().join("clients.txt"),
        std::slice::from_ref(&cert_line),
    );
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let (addr, ca_pem, stop) = serve_reloading(dir.path(), &ca, node).await;
    let mut by_token = h2_connection(addr, &ca_pem, None).await;
    let mut by_cert = h2_connection(addr, &ca_pem, Some((&cert_pem, &key_pem))).await;
    assert_eq!(
        read_on(&mut by_token, Some("vlm_revoked_soon")).await.0,
        200
    );
    assert_eq!(read_on(&mut by_cert, None).await.0, 200);
    let successor = token_line("vlm_successor", "tok2", Role::Reader, &Scope::all());
    write_table(&dir.path().join("tokens.txt"), &[successor]);
    write_table(&dir.path().join("clients.txt"), &[]);
    let deadline = Instant::now() + Duration::from_millis(5 * RELOAD_WAIT_MS);
    loop {
        let token_status = read_on(&mut by_token, Some("vlm_revoked_soon")).await;
        let cert_status = read_on(&mut by_cert, None).await;
        if token_status.0 == 401 && cert_status.0 == 401 {
            assert_eq!(token_status.1, "unauthorized");
            assert_eq!(cert_status.1, "unauthorized");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still served after the reload wait: {token_status:?} {cert_status:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(read_on(&mut by_token, Some("vlm_successor")).await.0, 200);
    stop.send(true).expect("server running");
}

/// How long one reload takes at most: a check period and some slack.
const RELOAD_WAIT_MS: u64 = crate::server::credentials::RELOAD_CHECK_MS + 500;

// Goal: a subscription opened with a token ends, with a 401 error line,
// once that token is revoked (a reload without its line), within a few
// heartbeats (it checks before every window and heartbeat).
#[tokio::test]
async fn a_revoked_token_ends_its_open_subscription() {
    let node = Arc::new(FakeNode::default());
    node.push(1, b"before");
    let state = state_with(Arc::clone(&node), Vec::new());
    let app = router(state.clone());
    let response = app
        .oneshot(Call::get("/v1/subscribe", Some(READER)).request())
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    let mut stream = response.into_body().into_data_stream();
    let mut buffer = String::new();
    let first = read_lines(&mut stream, &mut buffer, 1, "\n").await;
    assert!(first[0].contains("\"position\":0"), "{first:?}");
    // The reader's line is gone: what a reload of the edited file does.
    let without_reader = [token_line(WRITER, "alice", Role::Writer, &Scope::all())].join("\n");
    state
        .tokens
        .replace(TokenStore::from_lines(&without_reader).expect("tokens"));
    let deadline = Instant::now() + WAIT;
    loop {
        let line = read_lines(&mut stream, &mut buffer, 1, "\n").await;
        if line[0].contains("unauthorized") {
            break;
        }
        assert!(Instant::now() < deadline, "the subscription was not ended");
    }
}
