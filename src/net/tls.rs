//! TLS for the cluster: a development PKI, loading of PEM material, and the
//! rustls configurations of the replica links (mutual TLS) and of the HTTP
//! API (server TLS only).
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
//! Every configuration is built with `rustls::crypto::ring::default_provider()`
//! explicitly, never a process-wide default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "vellum dev ca");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
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
        let cert = params.signed_by(&key, &issuer)?;
        write_file(cert_path, cert.pem().as_bytes(), CERT_FILE_MODE)?;
        write_file(key_path, key.serialize_pem().as_bytes(), KEY_FILE_MODE)?;
    }
    Ok(pki)
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

    fn roots(&self) -> Result<Arc<RootCertStore>, TlsError> {
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

fn parse_certs(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
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

fn parse_key(pem: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        path: path.to_path_buf(),
        reason: format!("no usable private key: {e}"),
    })
}

fn provider() -> Arc<CryptoProvider> {
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
/// TLS 1.2 and 1.3. Client
/// certificates are optional: clients use bearer tokens; a peer replica
/// that forwards a request presents its certificate (verified against the
/// CA), which is what lets the server trust the client address it names.
pub fn api_server_config(material: &TlsMaterial) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = material.chain_and_key()?;
    let verifier = WebPkiClientVerifier::builder_with_provider(material.roots()?, provider())
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
            let api = api_server_config(&material).expect("api config");
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
