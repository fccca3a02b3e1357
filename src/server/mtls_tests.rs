//! Tests of client-certificate authentication against the in-memory
//! `FakeNode` of the server's tests: the guard's rules, with the
//! extensions the TLS layer sets (a verified client certificate, a proven
//! replica) put on requests by hand, and the forwarded-chain header.

use super::*;

use crate::net::tls::{ApiPeerVerifier, ClientCa, ClientCertSpec, certificate_sha256};
use crate::server::auth::digest_line;
use crate::server::mtls::{
    CLIENT_CERT_HEADER, ClientCertStore, ClientCerts, PresentedCert, encode_chain,
};

/// A certificate of `ca` as the TLS layer hands it on.
fn presented(ca: &ClientCa, name: &str, expired: bool) -> PresentedCert {
    let (pem, _key) = ca
        .issue(&ClientCertSpec {
            common_name: name,
            dns_names: &[],
            expired,
        })
        .expect("issue");
    let chain = crate::net::tls::certificates_from_pem(pem.as_bytes(), std::path::Path::new("t"))
        .expect("pem");
    let sha256 = certificate_sha256(&chain[0]);
    PresentedCert::new(chain, sha256)
}

struct Fixture {
    app: Router,
    node: Arc<FakeNode>,
    good: PresentedCert,
    scoped: PresentedCert,
    unknown: PresentedCert,
    expired: PresentedCert,
}

fn fixture() -> Fixture {
    let ca = ClientCa::generate().expect("ca");
    let good = presented(&ca, "svc", false);
    let scoped = presented(&ca, "narrow", false);
    let unknown = presented(&ca, "stranger", false);
    let expired = presented(&ca, "old", true);
    let lines = [
        digest_line(&good.sha256, "svc", Role::Writer, &Scope::all()),
        digest_line(
            &scoped.sha256,
            "narrow",
            Role::Writer,
            &Scope::parse("2").expect("scope"),
        ),
        digest_line(&expired.sha256, "old", Role::Writer, &Scope::all()),
    ]
    .join("\n");
    let store = ClientCertStore::from_lines(&lines).expect("table");
    let verifier = ApiPeerVerifier::new(b"", Some(ca.cert_pem().as_bytes())).expect("verifier");
    let node = Arc::new(FakeNode::default());
    node.push(1, b"{\"a\":1}");
    let state = state_with(Arc::clone(&node), Vec::new()).with_client_certs(ClientCerts {
        verifier: Arc::new(crate::live::Live::new(verifier)),
        store: Arc::new(crate::server::credentials::Live::new(store)),
    });
    Fixture {
        app: router(state),
        node,
        good,
        scoped,
        unknown,
        expired,
    }
}

/// A read of stream 1, with `token`, and what the TLS layer proved.
fn read(token: Option<&str>, cert: Option<&PresentedCert>, replica: bool) -> Request<Body> {
    let mut request = Call::get("/v1/streams/1/events", token).request();
    if let Some(cert) = cert {
        request.extensions_mut().insert(cert.clone());
    }
    if replica {
        request
            .extensions_mut()
            .insert(crate::server::PeerReplica(1));
    }
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

// Goal: a listed certificate acts as its principal (and the trail names
// it); unknown is 401 naming its fingerprint; a certificate plus a token is
// 401; out of scope is 403; a replica's certificate alone is 401; tokens
// still work beside certificates.
#[tokio::test]
async fn a_client_certificate_is_a_principal_and_nothing_more() {
    let f = fixture();
    let (status, body) = answer(&f.app, read(None, Some(&f.good), false)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let last = f.node.lock().trail.last().cloned().expect("recorded");
    assert_eq!(
        (last.principal.as_str(), last.role.as_str()),
        ("svc", "writer")
    );
    let (status, body) = answer(&f.app, read(None, Some(&f.unknown), false)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let hex = vellum_audit::hash::to_hex(&f.unknown.sha256);
    assert!(
        body.to_string().contains(&hex),
        "names the fingerprint: {body}"
    );
    let (status, body) = answer(&f.app, read(Some(WRITER), Some(&f.good), false)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "certificate plus token: {body}"
    );
    let (status, body) = answer(&f.app, read(None, Some(&f.scoped), false)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "scope_denied", "{body}");
    let (status, body) = answer(&f.app, read(None, None, true)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a replica alone: {body}");
    let (status, body) = answer(&f.app, read(Some(WRITER), None, false)).await;
    assert_eq!(status, StatusCode::OK, "a token still works: {body}");
}

// Goal: the forwarded-chain header counts only from a proven replica, and
// the primary verifies the chain itself (an expired one is refused even
// from a replica); a forwarded good chain keeps its principal.
#[tokio::test]
async fn a_forwarded_chain_counts_only_from_a_replica() {
    let f = fixture();
    let with_header = |cert: &PresentedCert, replica: bool| {
        let mut request = read(None, None, replica);
        let value = encode_chain(&cert.chain).parse().expect("header value");
        request.headers_mut().insert(CLIENT_CERT_HEADER, value);
        request
    };
    let (status, body) = answer(&f.app, with_header(&f.good, false)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a client naming a chain: {body}"
    );
    let (status, body) = answer(&f.app, with_header(&f.expired, true)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "an expired chain: {body}");
    let (status, body) = answer(&f.app, with_header(&f.good, true)).await;
    assert_eq!(status, StatusCode::OK, "forwarded by a replica: {body}");
    let last = f.node.lock().trail.last().cloned().expect("recorded");
    assert_eq!(last.principal, "svc");
}

// Goal: a principal in both the tokens and the client certificates file is
// refused at start, naming it.
#[test]
fn one_name_in_both_files_is_refused() {
    let ca = ClientCa::generate().expect("ca");
    let cert = presented(&ca, "alice", false);
    let line = digest_line(&cert.sha256, "alice", Role::Reader, &Scope::all());
    let store = ClientCertStore::from_lines(&line).expect("table");
    let pem = ca.cert_pem().as_bytes().to_vec();
    let error = crate::server::client_certs(b"", Some((pem, store)), &tokens())
        .expect_err("alice is a token's principal");
    assert!(error.to_string().contains("\"alice\""), "{error}");
}
