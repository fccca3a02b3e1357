//! TLS rotation without a restart: a replica's certificate and key, the
//! cluster CA it trusts and the client CA are files that may be replaced
//! while it runs.
//!
//! Why it exists: a certificate that only a restart can replace turns every
//! renewal, and every CA change, into a rolling restart of the cluster.
//! Here the client API server and the replica link each keep a [`TlsWatcher`]
//! that looks at the files every second (`crate::live::RELOAD_CHECK_MS`,
//! as the credentials files are) and, when one changed, loads all of them
//! and checks them as one [`TlsSet`] before anything is swapped:
//! - the certificate is the private key's (rustls's own `keys_match`);
//! - it verifies now against the cluster CA it is loaded with, as a server
//!   named `replica-{i}.vellum` and as a client (what its peers ask of it):
//!   an expired certificate, another CA's, or one of another replica is
//!   refused;
//! - the client CA parses and is not the cluster CA;
//! - every rustls configuration builds.
//!
//! A set that fails any check is refused whole (logged with the file and
//! the reason; the API counts it in `/metrics`) and the configuration in
//! use stays. A good set replaces the configurations in one step
//! (`crate::live::Live`): each new handshake takes the configuration
//! current at that moment, so new connections present the new certificate
//! and verify peers against the new CAs, while open connections keep the
//! session they negotiated. A new `rustls::ServerConfig` has a new session
//! cache, so no session of the old configuration resumes under the new
//! one (a removed client CA cannot be bypassed by resumption).
//!
//! Replacing a certificate and its key is two writes: a check that falls
//! between them sees a pair that does not match, refuses it, and the check
//! after the second write loads both (each new version of any file is tried
//! once). Writing each file by rename avoids the half-written file.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier as _;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::tls::{
    ApiPeerVerifier, TlsError, TlsMaterial, api_server_config, certificate_sha256, parse_certs,
    parse_key, provider, replica_client_config, replica_dns_name, replica_server_config,
};
use crate::live::FileStamp;
use crate::vsr::ReplicaIndex;

/// The files of one replica's TLS material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The replica the certificate must name (`replica-{i}.vellum`).
    pub replica: ReplicaIndex,
    /// The cluster CA certificate(s).
    pub ca: PathBuf,
    /// This replica's certificate chain, leaf first.
    pub cert: PathBuf,
    /// This replica's private key (mode 0600).
    pub key: PathBuf,
    /// The client CA, when services may authenticate with certificates.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    fn stamps(&self) -> Vec<Option<FileStamp>> {
        [
            Some(&self.ca),
            Some(&self.cert),
            Some(&self.key),
            self.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|path| FileStamp::of(path))
        .collect()
    }
}

/// One version of the TLS files, checked, with every configuration built
/// from it.
#[derive(Debug, Clone)]
pub struct TlsSet {
    /// The PEM material (cluster CA, certificate chain, key).
    pub material: TlsMaterial,
    /// The client CA (PEM), if configured.
    pub client_ca_pem: Option<Vec<u8>>,
    /// SHA-256 of the leaf certificate's DER (what the logs name).
    pub cert_sha256: [u8; 32],
    /// The client API's server configuration.
    pub api_server: Arc<ServerConfig>,
    /// Tells replicas from client identities on the client API.
    pub api_peers: Arc<ApiPeerVerifier>,
    /// The replica link's server configuration.
    pub link_server: Arc<ServerConfig>,
    /// The replica link's client configuration.
    pub link_client: Arc<ClientConfig>,
}

impl TlsSet {
    /// Reads `files` and checks them as one set (see the module doc);
    /// errors name the file.
    pub fn load(files: &TlsFiles) -> Result<TlsSet, TlsError> {
        let material = TlsMaterial::load(&files.ca, &files.cert, &files.key)?;
        let client_ca_pem = match &files.client_ca {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|source| TlsError::Io {
                    path: path.clone(),
                    source,
                })?;
                parse_certs(&pem, path)?;
                Some(pem)
            }
            None => None,
        };
        TlsSet::check(material, client_ca_pem, files)
    }

    /// Checks `material` (read from `files`) and builds the configurations.
    pub fn check(
        material: TlsMaterial,
        client_ca_pem: Option<Vec<u8>>,
        files: &TlsFiles,
    ) -> Result<TlsSet, TlsError> {
        let chain = parse_certs(&material.cert_pem, &files.cert)?;
        let key = parse_key(&material.key_pem, &files.key)?;
        check_key_matches(&chain, key, files)?;
        check_trusted(&material, &chain, files)?;
        let client_ca = client_ca_pem.as_deref();
        Ok(TlsSet {
            cert_sha256: certificate_sha256(&chain[0]),
            api_server: api_server_config(&material, client_ca)?,
            api_peers: Arc::new(ApiPeerVerifier::new(&material.ca_pem, client_ca)?),
            link_server: replica_server_config(&material)?,
            link_client: replica_client_config(&material)?,
            material,
            client_ca_pem,
        })
    }
}

/// Refuses a certificate whose public key is not the private key's.
fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: rustls_pki_types::PrivateKeyDer<'static>,
    files: &TlsFiles,
) -> Result<(), TlsError> {
    match CertifiedKey::from_der(chain.to_vec(), key, &provider()) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        }),
        Err(other) => Err(TlsError::Config(other)),
    }
}

/// Refuses a certificate that does not verify now against the cluster CA
/// as this replica's server certificate and as a replica-link client.
fn check_trusted(
    material: &TlsMaterial,
    chain: &[CertificateDer<'static>],
    files: &TlsFiles,
) -> Result<(), TlsError> {
    let (leaf, intermediates) = chain
        .split_first()
        .expect("parse_certs never returns an empty chain");
    let untrusted = |e: rustls::Error| TlsError::Untrusted {
        cert: files.cert.clone(),
        ca: files.ca.clone(),
        reason: e.to_string(),
    };
    let roots = material.roots()?;
    let now = UnixTime::now();
    let name = ServerName::try_from(replica_dns_name(files.replica))
        .expect("replica-{i}.vellum is a valid dns name");
    WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), provider())
        .build()?
        .verify_server_cert(leaf, intermediates, &name, &[], now)
        .map_err(untrusted)?;
    WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()?
        .verify_client_cert(leaf, intermediates, now)
        .map_err(untrusted)?;
    Ok(())
}

/// What one check of the files found.
#[derive(Debug)]
pub enum TlsCheck {
    /// No file changed since the last check.
    Unchanged,
    /// A file changed and the set loaded: swap it in.
    Loaded(Box<TlsSet>),
    /// A file changed and the set was refused: keep the one in use. The
    /// same versions are not tried again.
    Refused(TlsError),
}

/// Watches the TLS files of one side (the client API or the replica link).
#[derive(Debug, Clone)]
pub struct TlsWatcher {
    files: TlsFiles,
    seen: Vec<Option<FileStamp>>,
    side: &'static str,
}

impl TlsWatcher {
    /// A watcher of `files` for `side` (named in the logs). The files'
    /// stamps are taken now: make the watcher before the first load, so a
    /// change made in between is loaded by the first check.
    pub fn new(files: TlsFiles, side: &'static str) -> TlsWatcher {
        TlsWatcher {
            seen: files.stamps(),
            files,
            side,
        }
    }

    /// The files watched.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// Loads the files if any changed since the last check; logs the outcome.
    pub fn check(&mut self) -> TlsCheck {
        let now = self.files.stamps();
        if now == self.seen {
            return TlsCheck::Unchanged;
        }
        // Seen either way: a bad version is reported once, not every second.
        self.seen = now;
        match TlsSet::load(&self.files) {
            Ok(set) => {
                tracing::info!(
                    side = self.side,
                    certificate_sha256 = %vellum_audit::hash::to_hex(&set.cert_sha256),
                    "tls material reloaded; new connections use it"
                );
                TlsCheck::Loaded(Box::new(set))
            }
            Err(error) => {
                tracing::error!(
                    side = self.side,
                    %error,
                    "tls material not reloaded; the configuration in use stays"
                );
                TlsCheck::Refused(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tls::{DevPki, generate_dev_pki, reissue_dev_replica_cert};
    use std::path::Path;

    /// Replaces `path` by rename (as an operator's deploy tool would), keeping its mode.
    pub(crate) fn replace_file(path: &Path, bytes: &[u8]) {
        crate::fsutil::replace_durable(path, bytes, 0o600).expect("replace");
    }

    fn files_of(pki: &DevPki, index: ReplicaIndex) -> TlsFiles {
        let (cert, key) = pki.replicas[usize::from(index)].clone();
        TlsFiles {
            replica: index,
            ca: pki.ca_cert.clone(),
            cert,
            key,
            client_ca: None,
        }
    }

    fn read(path: &Path) -> Vec<u8> {
        std::fs::read(path).expect("read")
    }

    /// Goal: each kind of broken set is refused with an error that names
    /// the kind and the file: a key of another certificate, an unparsable
    /// certificate, an expired one, one of another CA, one of another
    /// replica, a client CA that is the cluster CA or does not parse.
    #[test]
    fn broken_sets_are_refused_with_named_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(&dir.path().join("pki"), 2).expect("pki");
        let rogue = generate_dev_pki(&dir.path().join("rogue"), 1).expect("rogue pki");
        let files = files_of(&pki, 0);
        let good = TlsSet::load(&files).expect("the generated set loads");
        let leaf = parse_certs(&read(&files.cert), &files.cert).expect("cert");
        assert_eq!(good.cert_sha256, certificate_sha256(&leaf[0]));
        let (expired_cert, expired_key) =
            reissue_dev_replica_cert(&pki, 0, true).expect("expired cert");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, b"-----BEGIN CERTIFICATE-----\nnot base64\n").expect("write");
        let expired = dir.path().join("expired.pem");
        let expired_key_path = dir.path().join("expired.key");
        std::fs::write(&expired, expired_cert).expect("write");
        replace_file(&expired_key_path, expired_key.as_bytes());
        let cases: Vec<(&str, TlsFiles, &str)> = vec![
            (
                "key of another certificate",
                TlsFiles {
                    key: pki.replicas[1].1.clone(),
                    ..files.clone()
                },
                "does not match the private key",
            ),
            (
                "unparsable certificate",
                TlsFiles {
                    cert: garbage.clone(),
                    ..files.clone()
                },
                "garbage.pem",
            ),
            (
                "expired certificate",
                TlsFiles {
                    cert: expired,
                    key: expired_key_path,
                    ..files.clone()
                },
                "does not verify against the CA",
            ),
            (
                "another CA's certificate",
                TlsFiles {
                    cert: rogue.replicas[0].0.clone(),
                    key: rogue.replicas[0].1.clone(),
                    ..files.clone()
                },
                "does not verify against the CA",
            ),
            (
                "another replica's certificate",
                files_of(&pki, 1).clone_as(0),
                "does not verify against the CA",
            ),
            (
                "client CA that is the cluster CA",
                TlsFiles {
                    client_ca: Some(pki.ca_cert.clone()),
                    ..files.clone()
                },
                "must not be the cluster CA",
            ),
            (
                "unparsable client CA",
                TlsFiles {
                    client_ca: Some(garbage.clone()),
                    ..files.clone()
                },
                "garbage.pem",
            ),
        ];
        for (what, files, expected) in cases {
            let error = TlsSet::load(&files).expect_err(what).to_string();
            assert!(error.contains(expected), "{what}: {error}");
        }
    }

    impl TlsFiles {
        /// The same files, claimed for replica `index`.
        fn clone_as(&self, index: ReplicaIndex) -> TlsFiles {
            TlsFiles {
                replica: index,
                ..self.clone()
            }
        }
    }

    /// Goal: the watcher reports nothing while the files stay, refuses a
    /// half-replaced pair once (not every second), and loads the pair when
    /// the second file lands.
    #[test]
    fn the_watcher_tries_each_new_version_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = generate_dev_pki(dir.path(), 1).expect("pki");
        let files = files_of(&pki, 0);
        let mut watcher = TlsWatcher::new(files.clone(), "test");
        assert!(matches!(watcher.check(), TlsCheck::Unchanged));
        let (cert, key) = reissue_dev_replica_cert(&pki, 0, false).expect("reissue");
        replace_file(&files.cert, cert.as_bytes());
        match watcher.check() {
            TlsCheck::Refused(TlsError::KeyMismatch { .. }) => {}
            other => panic!("a certificate without its key: {other:?}"),
        }
        assert!(matches!(watcher.check(), TlsCheck::Unchanged), "tried once");
        replace_file(&files.key, key.as_bytes());
        let leaf = parse_certs(cert.as_bytes(), &files.cert).expect("cert");
        match watcher.check() {
            TlsCheck::Loaded(set) => assert_eq!(set.cert_sha256, certificate_sha256(&leaf[0])),
            other => panic!("the whole pair: {other:?}"),
        }
    }
}
