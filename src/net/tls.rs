//! TLS for the cluster: a development PKI, loading of PEM material, and the
//! rustls configurations of the replica links (mutual TLS) and of the HTTP
//! API (server TLS; client certificates optional: replicas that forward,
//! and services that authenticate with a certificate of the client CA).
//!
//! Identity. Every replica holds a certificate signed by the cluster CA with
//! the DNS SAN `replica-{i}.vellum`. Outbound, a replica connects to peer
//! `j` with server name `replica-{j}.vellum`, so webpki itself checks that
//! the server is `j`. Inbound, rustls checks that the client's chain leads to
//! the CA, and [`peer_replica_index`] reads the `replica-{i}.vellum` SAN from
//! the verified certificate. No X.509 parser is among our dependencies (rcgen
//! keeps its parser behind a feature we lack), so that function walks the
//! few DER structures from the certificate to its SAN extension itself; it
//! only ever sees certificates that rustls has already verified against our
//! own CA. This keeps deployment simple: a replica needs only the CA and its
//! own key pair, not every peer's certificate.
//!
//! Client identities (mTLS on the client API). An optional second CA, the
//! client CA, issues certificates to services. The API handshake accepts a
//! chain that leads to either CA; [`ApiPeerVerifier`] then tells which one
//! by verifying the chain against each CA alone: a chain that verifies
//! against the cluster CA is a replica's (with its SAN) or nothing, never a
//! client identity; only a chain that verifies against the client CA alone
//! is one. So a client CA can never mint a replica (a `replica-0.vellum`
//! SAN on a client certificate counts for nothing), and the two CAs must be
//! different certificates ([`TlsError::SharedClientCa`]).
//!
//! Every configuration is built with `rustls::crypto::ring::default_provider()`
//! explicitly, never a process-wide default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest as _, Sha256};

use crate::vsr::{REPLICAS_MAX, ReplicaIndex};

/// File mode of written private keys.
const KEY_FILE_MODE: u32 = 0o600;
/// File mode of written certificates.
const CERT_FILE_MODE: u32 = 0o644;
/// Certificates in one PEM chain file, at most.
pub const CHAIN_CERTS_MAX: usize = 8;

/// What went wrong building or loading TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("tls file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("tls file {path}: {reason}")]
    Pem {
        /// The file ("<memory>" when not loaded from a file).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A private key file is readable or writable by group or others.
    #[error("tls key: {0}")]
    Insecure(#[source] crate::crypto::CryptoError),
    /// Certificate generation failed.
    #[error("generating the dev pki: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the material (e.g. a key that does not match the cert).
    #[error("tls configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client verifier could not be built from the CA.
    #[error("tls client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Asked for more replicas than a cluster may have.
    #[error("replica count {count} outside 1..={REPLICAS_MAX}")]
    ReplicaCount {
        /// The count asked for.
        count: u8,
    },
    /// The client CA holds a certificate of the cluster CA: every replica
    /// certificate would then also verify as a client identity.
    #[error(
        "the client CA must not be the cluster CA (a replica certificate would verify as a \
         client identity); make a separate CA for client certificates"
    )]
    SharedClientCa,
    /// The certificate is not the private key's (a half-replaced pair).
    #[error("tls certificate {cert} does not match the private key {key}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate does not verify, now, against the CA it is loaded
    /// with (another CA's, expired, not yet valid, without the replica's
    /// name or the key usages a replica needs).
    #[error("tls certificate {cert} does not verify against the CA {ca}: {reason}")]
    Untrusted {
        /// The certificate file.
        cert: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// What webpki said.
        reason: String,
    },
}

/// The DNS name in replica `index`'s certificate (and the server name a
/// peer connects to).
pub fn replica_dns_name(index: ReplicaIndex) -> String {
    format!("replica-{index}.vellum")
}

/// Paths of a generated dev PKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevPki {
    /// The CA certificate (`ca.pem`).
    pub ca_cert: PathBuf,
    /// The CA private key (`ca.key`, mode 0600).
    pub ca_key: PathBuf,
    /// Per replica, in index order: (`replica-{i}.pem`, `replica-{i}.key`).
    pub replicas: Vec<(PathBuf, PathBuf)>,
}

impl DevPki {
    /// Loads replica `index`'s material (None if out of range).
    pub fn material(&self, index: ReplicaIndex) -> Option<Result<TlsMaterial, TlsError>> {
        let (cert, key) = self.replicas.get(usize::from(index))?;
        Some(TlsMaterial::load(&self.ca_cert, cert, key))
    }
}

/// Generates a CA and one certificate per replica into `dir` (created with
/// mode 0700 if missing). Refuses to overwrite existing files, so a dev cluster's keys are
/// never silently replaced. Certificates are valid for both server and
/// client auth, with SANs `replica-{i}.vellum`, `localhost` and 127.0.0.1;
/// validity is rcgen's default (1975 to 4096): this PKI is for development.
pub fn generate_dev_pki(dir: &Path, replica_count: u8) -> Result<DevPki, TlsError> {
    if replica_count == 0 || usize::from(replica_count) > REPLICAS_MAX {
        return Err(TlsError::ReplicaCount {
            count: replica_count,
        });
    }
    if !dir.is_dir() {
        crate::fsutil::create_dir_with_mode(dir, 0o700).map_err(|source| TlsError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let ca_params = dev_ca_params()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

    let pki = DevPki {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca.key"),
        replicas: (0..replica_count)
            .map(|i| {
                (
                    dir.join(format!("replica-{i}.pem")),
                    dir.join(format!("replica-{i}.key")),
                )
            })
            .collect(),
    };
    write_file(&pki.ca_cert, ca_cert.pem().as_bytes(), CERT_FILE_MODE)?;
    write_file(
        &pki.ca_key,
        ca_key.serialize_pem().as_bytes(),
        KEY_FILE_MODE,
    )?;
    for (index, (cert_path, key_path)) in (0..replica_count).zip(&pki.replicas) {
        let key = rcgen::KeyPair::generate()?;
        let cert = dev_replica_params(index, false)?.signed_by(&key, &issuer)?;
        write_file(cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
        write_file(key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    }
    Ok(pki)
}

/// A new certificate and key (PEM) for replica `index`, issued by the dev
/// CA of `pki` (its `ca.pem` and `ca.key`): what a rotation drill on a dev
/// cluster, and the rotation tests, put in place of `replica-{i}.pem` and
/// `replica-{i}.key`. `expired`: valid only in 2000 (for tests).
pub fn reissue_dev_replica_cert(
    pki: &DevPki,
    index: ReplicaIndex,
    expired: bool,
) -> Result<(String, zeroize::Zeroizing<String>), TlsError> {
    crate::crypto::fsutil::check_private(&pki.ca_key).map_err(TlsError::Insecure)?;
    let ca_key_pem =
        zeroize::Zeroizing::new(std::fs::read_to_string(&pki.ca_key).map_err(|source| {
            TlsError::Io {
                path: pki.ca_key.clone(),
                source,
            }
        })?);
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem)?;
    let ca_params = dev_ca_params()?;
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert = dev_replica_params(index, expired)?.signed_by(&key, &issuer)?;
    Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
}

/// The dev CA's subject and usages (the same at generation and reissue, so
/// reissued certificates chain to the stored CA certificate).
fn dev_ca_params() -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vellum dev ca");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// Replica `index`'s certificate: SANs `replica-{i}.vellum`, `localhost`
/// and 127.0.0.1, for server and client auth.
fn dev_replica_params(
    index: ReplicaIndex,
    expired: bool,
) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![
        replica_dns_name(index),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, replica_dns_name(index));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    if expired {
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 12, 31);
    }
    Ok(params)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    crate::fsutil::write_durable(path, bytes, mode).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// One replica's TLS material, as PEM: the CA it trusts, its certificate
/// (chain) and its private key.
#[derive(Clone)]
pub struct TlsMaterial {
    /// The cluster CA certificate(s).
    pub ca_pem: Vec<u8>,
    /// This node's certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// This node's private key.
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for TlsMaterial {
    // The key never reaches a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl TlsMaterial {
    /// Reads and checks the three PEM files; errors name the file. The key
    /// must be private to its owner (as the key directory's files are):
    /// mode 0644 is refused, not loaded silently.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial, TlsError> {
        crate::crypto::fsutil::check_private(key).map_err(TlsError::Insecure)?;
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let material = TlsMaterial {
            ca_pem: read(ca)?,
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        };
        parse_certs(&material.ca_pem, ca)?;
        parse_certs(&material.cert_pem, cert)?;
        parse_key(&material.key_pem, key)?;
        Ok(material)
    }

    pub(super) fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in parse_certs(&self.ca_pem, Path::new("<ca>"))? {
            roots.add(cert)?;
        }
        Ok(Arc::new(roots))
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        Ok((
            parse_certs(&self.cert_pem, Path::new("<cert>"))?,
            parse_key(&self.key_pem, Path::new("<key>"))?,
        ))
    }
}

pub(super) fn parse_certs(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .take(CHAIN_CERTS_MAX + 1)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(format!("bad certificate pem: {e}")))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate found".to_string()));
    }
    if certs.len() > CHAIN_CERTS_MAX {
        return Err(pem_error(format!(
            "more than {CHAIN_CERTS_MAX} certificates"
        )));
    }
    Ok(certs)
}

pub(super) fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The replica-link server: TLS 1.3, client certificates required and
/// verified against the CA.
pub fn replica_server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(material.roots()?, provider()).build()?;
    let (chain, key) = material.chain_and_key()?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The replica-link client: TLS 1.3, trusts only the CA, presents this
/// replica's certificate.
pub fn replica_client_config(material: &TlsMaterial) -> Result<Arc<ClientConfig>, TlsError> {
    let (chain, key) = material.chain_and_key()?;
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(material.roots()?)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// The HTTP API server: ALPN `crate::api::ALPN_PROTOCOLS` (h2, http/1.1),
/// TLS 1.2 and 1.3. Client certificates are optional: clients use bearer
/// tokens; a peer replica that forwards a request presents its certificate
/// (verified against the cluster CA), which is what lets the server trust
/// the client address it names; with `client_ca_pem`, a service may present
/// a certificate of that CA instead of a token. The handshake accepts a
/// chain to either CA (an invalid, expired or foreign one fails the
/// handshake); [`ApiPeerVerifier`] tells afterwards which one it was.
pub fn api_server_config(
    material: &TlsMaterial,
    client_ca_pem: Option<&[u8]>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = material.chain_and_key()?;
    let mut roots = (*material.roots()?).clone();
    if let Some(pem) = client_ca_pem {
        let client_roots = client_ca_roots(&material.ca_pem, pem)?;
        for anchor in client_roots.roots.iter().cloned() {
            roots.roots.push(anchor);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = crate::api::ALPN_PROTOCOLS
        .iter()
        .map(|id| id.to_vec())
        .collect();
    Ok(Arc::new(config))
}

/// The client CA's roots; refused when it shares a certificate with the
/// cluster CA (`cluster_ca_pem`; empty in tests).
fn client_ca_roots(cluster_ca_pem: &[u8], client_ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let cluster = match cluster_ca_pem.is_empty() {
        true => Vec::new(),
        false => parse_certs(cluster_ca_pem, Path::new("<ca>"))?,
    };
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(client_ca_pem, Path::new("<client ca>"))? {
        if cluster.contains(&cert) {
            return Err(TlsError::SharedClientCa);
        }
        roots.add(cert)?;
    }
    Ok(roots)
}

/// What a certificate chain presented on the client API is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiPeer {
    /// A replica of this cluster: the chain verifies against the cluster CA
    /// alone and the leaf names `replica-{i}.vellum`.
    Replica(ReplicaIndex),
    /// A client identity: the chain verifies against the client CA alone
    /// (and not against the cluster CA); `sha256` is the leaf's fingerprint
    /// (SHA-256 of its DER), the key of the client certificates table.
    Client {
        /// SHA-256 of the leaf certificate's DER.
        sha256: [u8; 32],
    },
    /// Neither: a cluster-CA certificate that names no replica, a chain
    /// that no longer verifies (expired since the handshake), or no
    /// client CA is configured.
    Other,
}

/// Verifies a presented chain against the cluster CA and the client CA,
/// each alone, to tell a replica from a client identity ([`ApiPeer`]).
/// Reuses rustls's webpki verifier (chain, validity period, extended key
/// usage `clientAuth`), so the rules are those of the handshake itself.
#[derive(Debug, Clone)]
pub struct ApiPeerVerifier {
    cluster: Option<Arc<dyn ClientCertVerifier>>,
    clients: Option<Arc<dyn ClientCertVerifier>>,
}

impl ApiPeerVerifier {
    /// From the cluster CA (PEM; empty: no replica is recognised, for
    /// tests) and the client CA, if one is configured.
    pub fn new(cluster_ca_pem: &[u8], client_ca_pem: Option<&[u8]>) -> Result<Self, TlsError> {
        let build = |roots: RootCertStore| {
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).build()
        };
        let cluster = match cluster_ca_pem.is_empty() {
            true => None,
            false => {
                let mut roots = RootCertStore::empty();
                for cert in parse_certs(cluster_ca_pem, Path::new("<ca>"))? {
                    roots.add(cert)?;
                }
                Some(build(roots)?)
            }
        };
        let clients = match client_ca_pem {
            Some(pem) => Some(build(client_ca_roots(cluster_ca_pem, pem)?)?),
            None => None,
        };
        Ok(ApiPeerVerifier { cluster, clients })
    }

    /// Whether a client CA is configured.
    pub fn accepts_clients(&self) -> bool {
        self.clients.is_some()
    }

    /// What `chain` (leaf first) is, verified now. A chain that verifies
    /// against the cluster CA is never a client identity.
    pub fn classify(&self, chain: &[CertificateDer<'_>]) -> ApiPeer {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return ApiPeer::Other;
        };
        let now = UnixTime::now();
        let verifies = |verifier: &Option<Arc<dyn ClientCertVerifier>>| {
            verifier
                .as_ref()
                .is_some_and(|v| v.verify_client_cert(leaf, intermediates, now).is_ok())
        };
        if verifies(&self.cluster) {
            return peer_replica_index(leaf).map_or(ApiPeer::Other, ApiPeer::Replica);
        }
        if verifies(&self.clients) {
            return ApiPeer::Client {
                sha256: certificate_sha256(leaf),
            };
        }
        ApiPeer::Other
    }
}

/// The SHA-256 fingerprint of a certificate's DER (what
/// `openssl x509 -outform der | sha256sum` prints).
pub fn certificate_sha256(cert_der: &[u8]) -> [u8; 32] {
    Sha256::digest(cert_der).into()
}

/// The certificates of a PEM chain file (leaf first), for callers outside
/// this module (the client CA, a forwarded chain).
pub fn certificates_from_pem(
    pem: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    parse_certs(pem, path)
}

/// Common name of the dev client CA (also what [`ClientCa::load`] expects).
pub const DEV_CLIENT_CA_NAME: &str = "vellum dev client ca";

/// A client CA that issues service certificates: the dev cluster's, and
/// the tests'. Not an operator's production CA (they bring their own).
pub struct ClientCa {
    params: rcgen::CertificateParams,
    key: rcgen::KeyPair,
    cert_pem: String,
}

impl fmt::Debug for ClientCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCa").finish_non_exhaustive()
    }
}

/// What [`ClientCa::issue`] puts in a certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientCertSpec<'a> {
    /// The subject's common name (informational: the table keys on the
    /// fingerprint).
    pub common_name: &'a str,
    /// DNS SANs, if any (tests use this to mimic a replica name).
    pub dns_names: &'a [&'a str],
    /// Valid only in 2000 (an expired certificate, for tests).
    pub expired: bool,
}

impl ClientCa {
    fn params() -> Result<rcgen::CertificateParams, TlsError> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, DEV_CLIENT_CA_NAME);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        Ok(params)
    }

    /// A fresh client CA.
    pub fn generate() -> Result<ClientCa, TlsError> {
        let params = Self::params()?;
        let key = rcgen::KeyPair::generate()?;
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(ClientCa {
            params,
            key,
            cert_pem,
        })
    }

    /// A client CA written by [`ClientCa::store`] (its subject is the fixed
    /// [`DEV_CLIENT_CA_NAME`]; certificates it issues chain to the stored one).
    pub fn load(cert: &Path, key: &Path) -> Result<ClientCa, TlsError> {
        crate::crypto::fsutil::check_private(key).map_err(TlsError::Insecure)?;
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read(cert)?;
        parse_certs(cert_pem.as_bytes(), cert)?;
        let key = rcgen::KeyPair::from_pem(&read(key)?)?;
        Ok(ClientCa {
            params: Self::params()?,
            key,
            cert_pem,
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Writes the certificate (0644) and key (0600) to new files.
    pub fn store(&self, cert: &Path, key: &Path) -> Result<(), TlsError> {
        write_file(cert, self.cert_pem.as_bytes(), CERT_FILE_MODE)?;
        let key_pem = zeroize::Zeroizing::new(self.key.serialize_pem());
        write_file(key, key_pem.as_bytes(), KEY_FILE_MODE)
    }

    /// A new client certificate (extended key usage `clientAuth` only) and
    /// its key, both PEM.
    pub fn issue(
        &self,
        spec: &ClientCertSpec<'_>,
    ) -> Result<(String, zeroize::Zeroizing<String>), TlsError> {
        let names: Vec<String> = spec.dns_names.iter().map(|n| (*n).to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, spec.common_name);
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2000, 12, 31);
        }
        let key = rcgen::KeyPair::generate()?;
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), zeroize::Zeroizing::new(key.serialize_pem())))
    }
}

/// The replica index named by the `replica-{i}.vellum` DNS SAN of a
/// certificate already verified against the CA. None when the certificate
/// has no such SAN, has two different ones, or does not parse.
pub fn peer_replica_index(cert_der: &[u8]) -> Option<ReplicaIndex> {
    let mut found: Option<ReplicaIndex> = None;
    for name in der::dns_names(cert_der)? {
        let Some(index) = parse_replica_name(name) else {
            continue;
        };
        if found.is_some_and(|seen| seen != index) {
            return None;
        }
        found = Some(index);
    }
    found
}

/// `replica-{i}.vellum` with `i` a plain decimal below [`REPLICAS_MAX`].
fn parse_replica_name(name: &[u8]) -> Option<ReplicaIndex> {
    let digits = name.strip_prefix(b"replica-")?.strip_suffix(b".vellum")?;
    if digits.is_empty() || digits.len() > 3 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    let index: u8 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    (usize::from(index) < REPLICAS_MAX).then_some(index)
}

/// Just enough DER to reach the subjectAltName extension of an X.509
/// certificate (RFC 5280 §4.1, §4.2.1.6).
mod der {
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    const BOOLEAN: u8 = 0x01;
    const OCTET_STRING: u8 = 0x04;
    /// `[3] EXPLICIT Extensions` inside TBSCertificate.
    const EXTENSIONS: u8 = 0xa3;
    /// `dNSName [2] IA5String` inside GeneralName.
    const DNS_NAME: u8 = 0x82;
    /// 2.5.29.17, id-ce-subjectAltName.
    const SAN_OID: [u8; 3] = [0x55, 0x1d, 0x11];
    /// Elements walked in one SEQUENCE, at most (a bound on hostile input).
    const ELEMENTS_MAX: usize = 256;

    /// One TLV: (tag, contents, rest). Single-byte tags, definite lengths.
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            let len = rest[..count]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[count..])
        };
        if rest.len() < len {
            return None;
        }
        Some((tag, &rest[..len], &rest[len..]))
    }

    /// The elements of a constructed value's contents.
    fn elements(mut contents: &[u8]) -> Option<Vec<(u8, &[u8])>> {
        let mut out = Vec::new();
        while !contents.is_empty() {
            if out.len() == ELEMENTS_MAX {
                return None;
            }
            let (tag, value, rest) = tlv(contents)?;
            out.push((tag, value));
            contents = rest;
        }
        Some(out)
    }

    fn expect(input: &[u8], tag: u8) -> Option<&[u8]> {
        let (found, value, _) = tlv(input)?;
        (found == tag).then_some(value)
    }

    /// The dNSName entries of the certificate's SAN extension (empty if it
    /// has none); None if the DER does not parse.
    pub(super) fn dns_names(cert: &[u8]) -> Option<Vec<&[u8]>> {
        let certificate = expect(cert, SEQUENCE)?;
        let tbs = expect(certificate, SEQUENCE)?;
        let Some((_, extensions)) = elements(tbs)?.into_iter().find(|(t, _)| *t == EXTENSIONS)
        else {
            return Some(Vec::new());
        };
        for (tag, extension) in elements(expect(extensions, SEQUENCE)?)? {
            if tag != SEQUENCE {
                return None;
            }
            let fields = elements(extension)?;
            let (oid_tag, oid) = *fields.first()?;
            if oid_tag != OID || oid != SAN_OID {
                continue;
            }
            let value = fields
                .iter()
                .skip(1)
                .find(|(t, _)| *t != BOOLEAN)
                .filter(|(t, _)| *t == OCTET_STRING)?
                .1;
            let names = elements(expect(value, SEQUENCE)?)?;
            return Some(
                names
                    .into_iter()
                    .filter(|(t, _)| *t == DNS_NAME)
                    .map(|(_, name)| name)
                    .collect(),
            );
        }
        Some(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("file exists")
            .permissions()
            .mode()
            & 0o777
    }

    /// Goal: the dev PKI writes every file, keys 0600, and refuses to overwrite.
    #[test]
    fn dev_pki_files_and_permissions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), 3).expect("generates");
        assert_eq!(pki.replicas.len(), 3);
        assert_eq!(mode(&pki.ca_key), 0o600);
        assert!(
            std::fs::read_to_string(&pki.ca_cert)
                .expect("ca")
                .contains("BEGIN CERTIFICATE")
        );
        for (index, (cert, key)) in pki.replicas.iter().enumerate() {
            assert_eq!(cert, &dir.path().join(format!("replica-{index}.pem")));
            assert_eq!(mode(key), 0o600, "{}", key.display());
            let pem = std::fs::read_to_string(cert).expect("replica cert");
            assert!(pem.contains("BEGIN CERTIFICATE"), "{}", cert.display());
        }
        assert!(
            generate_dev_pki(dir.path(), 3).is_err(),
            "overwrote the pki"
        );
        assert!(matches!(
            generate_dev_pki(dir.path(), 0),
            Err(TlsError::ReplicaCount { count: 0 })
        ));
    }

    /// Goal: every generated cert names its replica, and all configs build.
    #[test]
    fn certs_name_their_replica_and_configs_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), 3).expect("generates");
        for index in 0..3u8 {
            let material = pki.material(index).expect("in range").expect("loads");
            let leaf = parse_certs(&material.cert_pem, Path::new("x")).expect("cert")[0].clone();
            assert_eq!(peer_replica_index(&leaf), Some(index));
            replica_server_config(&material).expect("server config");
            replica_client_config(&material).expect("client config");
            let api = api_server_config(&material, None).expect("api config");
            assert_eq!(
                api.alpn_protocols,
                vec![b"h2".to_vec(), b"http/1.1".to_vec()]
            );
        }
        let ca = parse_certs(&std::fs::read(&pki.ca_cert).expect("ca"), Path::new("x"))
            .expect("ca cert");
        assert_eq!(peer_replica_index(&ca[0]), None, "the ca is no replica");
    }

    /// Goal: a load error names the missing or broken file.
    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), 1).expect("generates");
        let (cert, _key) = &pki.replicas[0];
        let missing = dir.path().join("nope.key");
        let error = TlsMaterial::load(&pki.ca_cert, cert, &missing).expect_err("missing");
        assert!(error.to_string().contains("nope.key"), "{error}");
        let error = TlsMaterial::load(&pki.ca_cert, cert, cert).expect_err("cert as key");
        assert!(error.to_string().contains("replica-0.pem"), "{error}");
    }

    /// Goal: a private key readable by group or others (0644) is refused at load, naming the file.
    #[test]
    fn world_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), 1).expect("generates");
        let (cert, key) = &pki.replicas[0];
        TlsMaterial::load(&pki.ca_cert, cert, key).expect("a 0600 key loads");
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let error = TlsMaterial::load(&pki.ca_cert, cert, key).expect_err("0644 key");
        let text = error.to_string();
        assert!(text.contains(&key.display().to_string()), "{text}");
        assert!(text.contains("0644"), "{text}");
    }

    /// Goal: replica names parse strictly, and garbage DER never panics.
    #[test]
    fn replica_names_and_garbage_der() {
        assert_eq!(parse_replica_name(b"replica-2.vellum"), Some(2));
        for bad in [
            &b"replica-02.vellum"[..],
            b"replica-.vellum",
            b"replica-7.vellum",
            b"replica-1.vellum.evil",
            b"xreplica-1.vellum",
        ] {
            assert_eq!(parse_replica_name(bad), None, "{bad:?}");
        }
        for garbage in [
            &[][..],
            &[0x30],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x00],
        ] {
            assert_eq!(peer_replica_index(garbage), None);
        }
    }
}
