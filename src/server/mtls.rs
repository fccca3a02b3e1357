//! mTLS client identities: a service may authenticate to the client API
//! with a certificate of the configured client CA instead of a bearer token.
//!
//! Why a fingerprint table. A verified certificate maps to a principal
//! through the client certificates file, whose lines are those of the
//! tokens file with the certificate's SHA-256 fingerprint (of its DER) in
//! place of the token's digest:
//! `sha256:<hex> <principal> <role> [streams=<scope>] [expires=<time>]`. Keying on the
//! fingerprint pins one exact certificate: the CA alone grants nothing
//! (an unknown certificate of the client CA is 401), no subject or SAN
//! spelling has to be compared (no X.509 name matching, which we would
//! have to parse by hand), and revoking one certificate is deleting its
//! line (the server reloads the file: `crate::server::credentials`). The
//! price: a renewed certificate needs its new line.
//!
//! Expiry: a line's `expires=` ends the identity whatever the certificate
//! says; the certificate's own notAfter is checked at the handshake (by
//! rustls) and again on every request (the chain is verified anew, at
//! the request's time), so an HTTP/2 connection opened before the
//! notAfter does not outlive it. Either is 401 `credential_expired`.
//!
//! The rules, in the order the guard applies them ([`cert_principal`]):
//! - a certificate plus a bearer token is refused (401, ambiguous: which
//!   one should the trail name?);
//! - a replica's certificate is never a client identity (it only marks a
//!   forwarding peer), even if its fingerprint were listed;
//! - a backup that forwards an mTLS request to the primary sends the
//!   client's chain in [`CLIENT_CERT_HEADER`]; the primary honours that
//!   header only on a connection whose own certificate proved a replica,
//!   verifies the chain again against its client CA, at its clock, and maps
//!   it through its own table. A client that sends the header itself gets
//!   401.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, header};
use base64::Engine as _;
use rustls_pki_types::CertificateDer;

use super::auth::{AuthError, Principal, Refusal, TokenStore};
use super::credentials::{Live, format_expires, now_unix_s};
use super::routes::ApiError;
use crate::net::tls::{ApiPeer, ApiPeerVerifier, CHAIN_CERTS_MAX};

/// The header in which a forwarding backup passes the client's certificate
/// chain to the primary: each certificate's DER in standard base64, leaf
/// first, separated by commas.
pub const CLIENT_CERT_HEADER: &str = "x-vellum-client-cert";
/// Longest [`CLIENT_CERT_HEADER`] value accepted, in bytes (fits within
/// the server's HTTP/2 header list bound, `H2_HEADER_LIST_BYTES_MAX`).
pub const CLIENT_CERT_HEADER_BYTES_MAX: usize = 12 * 1024;
/// The `kind` of a client certificates file in [`AuthError`].
const CLIENTS_KIND: &str = "client certificates";

/// Principals by certificate fingerprint (the client certificates file).
#[derive(Debug, Clone, Default)]
pub struct ClientCertStore {
    table: TokenStore,
}

impl ClientCertStore {
    /// Reads a client certificates file; errors name the file and line.
    pub fn load(path: &Path) -> Result<ClientCertStore, AuthError> {
        Ok(ClientCertStore {
            table: TokenStore::load_kind(path, CLIENTS_KIND)?,
        })
    }

    /// Parses client certificates lines held in memory.
    pub fn from_lines(text: &str) -> Result<ClientCertStore, AuthError> {
        Ok(ClientCertStore {
            table: TokenStore::from_lines_kind(text, CLIENTS_KIND)?,
        })
    }

    /// The principal of the certificate with fingerprint `sha256` at
    /// `now_s` (unix seconds), or why not.
    pub fn principal(&self, sha256: &[u8; 32], now_s: u64) -> Result<&Principal, Refusal> {
        self.table.by_digest(sha256, now_s)
    }

    /// Principals in the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when the table is empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The principals' names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.table.names()
    }
}

/// Client-certificate authentication of one server: who verifies chains,
/// and the table they map through.
#[derive(Debug, Clone)]
pub struct ClientCerts {
    /// Tells replicas from client identities; replaced whole when the TLS
    /// files change (`crate::net::tls_reload`).
    pub verifier: Arc<Live<ApiPeerVerifier>>,
    /// Principals by fingerprint (empty without a client CA); replaced
    /// whole when the file changes.
    pub store: Arc<Live<ClientCertStore>>,
}

/// Put in a request's extensions when its connection presented a chain
/// that verified as a client identity ([`ApiPeer::Client`]).
#[derive(Debug, Clone)]
pub struct PresentedCert {
    /// The chain, leaf first (relayed when the request is forwarded).
    pub chain: Arc<Vec<CertificateDer<'static>>>,
    /// The leaf's fingerprint.
    pub sha256: [u8; 32],
    /// The unix second in which the chain last verified again (0: not
    /// yet), shared by the requests of one connection: certificate times
    /// have whole seconds, so within that second it verifies the same.
    verified_s: Arc<AtomicU64>,
}

impl PresentedCert {
    /// A chain that verified as a client identity with leaf fingerprint `sha256`.
    pub fn new(chain: Vec<CertificateDer<'static>>, sha256: [u8; 32]) -> PresentedCert {
        PresentedCert {
            chain: Arc::new(chain),
            sha256,
            verified_s: Arc::default(),
        }
    }
}

/// Put in a request's extensions when its connection presented a chain
/// the handshake accepted but that is neither a replica's nor a client
/// identity (a cluster-CA certificate without a replica name).
#[derive(Debug, Clone, Copy)]
pub struct OtherCert;

/// The [`CLIENT_CERT_HEADER`] value for `chain`.
pub fn encode_chain(chain: &[CertificateDer<'_>]) -> String {
    let engine = base64::engine::general_purpose::STANDARD;
    chain
        .iter()
        .map(|cert| engine.encode(cert.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// Reads a [`CLIENT_CERT_HEADER`] value; bounded in bytes and certificates.
pub fn decode_chain(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    if text.len() > CLIENT_CERT_HEADER_BYTES_MAX {
        return Err(format!(
            "{CLIENT_CERT_HEADER} is longer than {CLIENT_CERT_HEADER_BYTES_MAX} bytes"
        ));
    }
    let items: Vec<&str> = text.split(',').collect();
    if items.len() > CHAIN_CERTS_MAX {
        return Err(format!(
            "{CLIENT_CERT_HEADER} holds more than {CHAIN_CERTS_MAX} certificates"
        ));
    }
    let engine = base64::engine::general_purpose::STANDARD;
    items
        .into_iter()
        .map(|item| {
            engine
                .decode(item.trim())
                .map(CertificateDer::from)
                .map_err(|e| format!("{CLIENT_CERT_HEADER} is not base64: {e}"))
        })
        .collect()
}

/// What the request proved with a certificate, if anything: `Ok(None)`
/// when it presented no client identity (the bearer token decides), else
/// the principal or why not (401). `from_replica` says whether the
/// connection's own certificate proved a replica.
pub(crate) fn cert_principal(
    certs: Option<&ClientCerts>,
    headers: &HeaderMap,
    presented: Option<&PresentedCert>,
    from_replica: bool,
) -> Result<Option<Principal>, ApiError> {
    let forwarded = headers.get(CLIENT_CERT_HEADER);
    let sha256 = match (forwarded, presented) {
        (Some(value), _) => forwarded_fingerprint(certs, value, from_replica)?,
        (None, Some(presented)) => still_valid(certs, presented)?,
        (None, None) => return Ok(None),
    };
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::unauthorized(
            "both a client certificate and a bearer token were presented; present one \
             (the access trail must name one principal)",
        ));
    }
    let store = certs.map(|c| c.store.get()).unwrap_or_default();
    match store.principal(&sha256, now_unix_s()) {
        Ok(principal) => Ok(Some(principal.clone())),
        Err(Refusal::Unknown) => Err(ApiError::unauthorized(format!(
            "unknown client certificate sha256:{} (not in the client certificates file)",
            vellum_audit::hash::to_hex(&sha256)
        ))),
        Err(Refusal::Expired {
            principal,
            expires_s,
        }) => Err(ApiError::credential_expired(format!(
            "the client certificate of principal {principal} expired at {} \
             (expires= in the client certificates file)",
            format_expires(expires_s)
        ))),
    }
}

/// The fingerprint of the certificate the connection presented, once its
/// chain verified again now: the handshake checked it at its own time,
/// and an HTTP/2 connection may outlive the certificate's notAfter.
fn still_valid(
    certs: Option<&ClientCerts>,
    presented: &PresentedCert,
) -> Result<[u8; 32], ApiError> {
    // One verification per connection and second (a signature check costs
    // about 0.3 ms in a debug build).
    let now_s = now_unix_s();
    if now_s != 0 && presented.verified_s.load(Ordering::Relaxed) == now_s {
        return Ok(presented.sha256);
    }
    let now = certs.map(|c| c.verifier.get().classify(&presented.chain));
    match now {
        Some(ApiPeer::Client { sha256 }) if sha256 == presented.sha256 => {
            presented.verified_s.store(now_s, Ordering::Relaxed);
            Ok(sha256)
        }
        _ => Err(ApiError::credential_expired(format!(
            "the client certificate sha256:{} no longer verifies against the client CA \
             (its notAfter has passed since this connection's handshake); reconnect with a \
             current certificate",
            vellum_audit::hash::to_hex(&presented.sha256)
        ))),
    }
}

/// The fingerprint of the chain a forwarding replica names, verified here.
fn forwarded_fingerprint(
    certs: Option<&ClientCerts>,
    value: &axum::http::HeaderValue,
    from_replica: bool,
) -> Result<[u8; 32], ApiError> {
    if !from_replica {
        return Err(ApiError::unauthorized(format!(
            "only a replica forwarding a request may send {CLIENT_CERT_HEADER}"
        )));
    }
    let Some(certs) = certs.filter(|c| c.verifier.get().accepts_clients()) else {
        return Err(ApiError::unauthorized(
            "a forwarded client certificate, but this replica has no client CA configured",
        ));
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthorized(format!("{CLIENT_CERT_HEADER} is not ASCII")))?;
    let chain = decode_chain(text).map_err(ApiError::unauthorized)?;
    match certs.verifier.get().classify(&chain) {
        ApiPeer::Client { sha256 } => Ok(sha256),
        ApiPeer::Replica(_) => Err(ApiError::unauthorized(
            "a replica certificate is not a client identity",
        )),
        ApiPeer::Other => Err(ApiError::unauthorized(
            "the forwarded client certificate does not verify against this replica's client CA \
             (expired, or another CA's)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::{ClientCa, ClientCertSpec, certificates_from_pem};

    fn chain_of(pem: &str) -> Vec<CertificateDer<'static>> {
        certificates_from_pem(pem.as_bytes(), Path::new("<test>")).expect("pem")
    }

    /// Goal: a chain survives the header encoding byte for byte, and an
    /// oversized or garbled header is refused, not half-read.
    #[test]
    fn chain_header_round_trip_and_bounds() {
        let ca = ClientCa::generate().expect("ca");
        let (cert, _key) = ca
            .issue(&ClientCertSpec {
                common_name: "svc",
                ..ClientCertSpec::default()
            })
            .expect("issue");
        let chain = chain_of(&cert);
        let text = encode_chain(&chain);
        assert_eq!(decode_chain(&text).expect("decodes"), chain);
        assert!(decode_chain("not base64!").is_err());
        let many = [text.as_str(); CHAIN_CERTS_MAX + 1].join(",");
        assert!(decode_chain(&many).is_err(), "more than CHAIN_CERTS_MAX");
        let long = "A".repeat(CLIENT_CERT_HEADER_BYTES_MAX + 1);
        assert!(decode_chain(&long).is_err(), "longer than the bound");
    }

    /// Goal: a client-CA certificate that names `replica-0.vellum` is a
    /// client identity at most, never a replica; a cluster-CA certificate
    /// is never a client identity, even when the client CA is configured;
    /// an expired one is neither; the two CAs may not be one.
    #[test]
    fn the_client_ca_cannot_mint_a_replica() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = crate::net::tls::generate_dev_pki(dir.path(), 1).expect("pki");
        let cluster_pem = std::fs::read(&pki.ca_cert).expect("ca");
        let ca = ClientCa::generate().expect("client ca");
        let verifier =
            ApiPeerVerifier::new(&cluster_pem, Some(ca.cert_pem().as_bytes())).expect("verifier");
        let (mimic, _) = ca
            .issue(&ClientCertSpec {
                common_name: "replica-0.vellum",
                dns_names: &["replica-0.vellum"],
                expired: false,
            })
            .expect("issue");
        let mimic = chain_of(&mimic);
        assert_eq!(
            verifier.classify(&mimic),
            ApiPeer::Client {
                sha256: crate::net::tls::certificate_sha256(&mimic[0])
            }
        );
        let replica = chain_of(
            &String::from_utf8(std::fs::read(&pki.replicas[0].0).expect("cert")).expect("utf8"),
        );
        assert_eq!(verifier.classify(&replica), ApiPeer::Replica(0));
        let (expired, _) = ca
            .issue(&ClientCertSpec {
                common_name: "old",
                dns_names: &[],
                expired: true,
            })
            .expect("issue");
        assert_eq!(verifier.classify(&chain_of(&expired)), ApiPeer::Other);
        let same = ApiPeerVerifier::new(&cluster_pem, Some(&cluster_pem));
        assert!(matches!(
            same,
            Err(crate::net::tls::TlsError::SharedClientCa)
        ));
    }
}
