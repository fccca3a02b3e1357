//! Creating the replicas of a cluster: one data directory per replica, each
//! with its own signing key and the same trust policy, and — for a local dev
//! cluster — the TLS material, client tokens and one config file per
//! replica, so `vellum start --config <dir>/r<i>.json` starts replica i.
//!
//! ```text
//! <dir>/r<i>/             replica i's data directory (see `datadir`)
//! <dir>/r<i>.json         replica i's config (`vellum start --config`)
//! <dir>/tls/              dev CA, one certificate and key per replica
//! <dir>/tokens.txt        `sha256:<hex> <principal> <role> streams=*` per client token
//! <dir>/dev-token.txt     the plaintext dev tokens (0600), for `vellum dev` to print
//! <dir>/tls/client-ca.*   the dev client CA (a different CA from the replicas')
//! <dir>/tls/client-service.{pem,key}  a service's client certificate and key
//! <dir>/clients.txt       `sha256:<fingerprint> service writer streams=*`
//! <dir>/policy.txt        the auditor's copy of the trust policy
//! ```
//!
//! Signing keys are made for every replica before anything else, because
//! the policy every replica stores pins all of them. A dev cluster shares
//! ONE key-encryption key between its replicas: data keys are wrapped by
//! the primary and travel to the backups wrapped, so every replica must be
//! able to unwrap them. That is a dev-only shortcut: in production the KEK
//! lives in an HSM that every replica asks to unwrap, and is never a file
//! copied between machines ([`KekSource::Token`], which `vellum demo
//! --kek-pkcs11-*` uses).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::hash::to_hex;
use vellum_audit::note::Signer;
use vellum_audit::policy::Policy;
use zeroize::Zeroizing;

use super::config::{ClusterConfig, ConfigError, ReplicaPeer, TlsPaths, check_replica_count};
use crate::crypto::{self, CryptoError, Kek, KekConfig, KeyEncryptionKey, KeyStore};
use crate::datadir::{DataDir, LAYOUT_VERSION, MetaError, NodeMeta};

/// Principal and role of the dev cluster's writing client.
pub const DEV_WRITER: (&str, &str) = ("dev", "writer");
/// Principal and role of the dev cluster's auditing client.
pub const DEV_AUDITOR: (&str, &str) = ("auditor", "auditor");
/// Principal and role of the dev cluster's privacy officer (key custody:
/// shred, legal hold, retention).
pub const DEV_PRIVACY_OFFICER: (&str, &str) = ("privacy", "privacy-officer");
/// Principal and role of the dev cluster's service that authenticates with
/// a client certificate (mTLS) instead of a token.
pub const DEV_SERVICE: (&str, &str) = ("service", "writer");
/// Random bytes in a generated client token.
pub const TOKEN_BYTES: usize = 32;
/// Prefix of generated tokens, so a leaked one is easy to recognize.
pub const TOKEN_PREFIX: &str = "vlm_";
/// Offset of the first API port from the first replica port when a base port
/// is given (`base`, `base+1`, … for replicas; `base+100`, … for the API).
pub const API_PORT_OFFSET: u16 = 100;
/// Largest `dev-token.txt` accepted, in bytes.
const DEV_TOKEN_FILE_BYTES_MAX: u64 = 4096;

/// Why creating or reopening a cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The target directory is not usable (exists and not empty, or not a
    /// cluster directory when reopening).
    #[error("{}: {reason}", path.display())]
    Target {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A file or directory could not be created or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An argument is out of range (replica count, index, base port, policy).
    #[error("invalid cluster setup: {0}")]
    Invalid(String),
    /// Key creation or the key store failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// `vellum.json` could not be written or read.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A config file could not be written or does not validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The TLS material could not be generated.
    #[error("tls material in {}: {reason}", path.display())]
    Tls {
        /// The TLS directory.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The operating system's random number generator failed.
    #[error("no randomness: {0}")]
    Random(String),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SetupError + '_ {
    move |source| SetupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a replica's key-encryption key comes from.
#[derive(Debug, Clone, Copy)]
pub enum KekSource<'a> {
    /// Generate a fresh KEK (the first replica of a dev cluster).
    Generate,
    /// Copy an existing KEK file (the other replicas of a dev cluster).
    CopyFrom(&'a Path),
    /// The key in a PKCS#11 token (generated there if absent), the same
    /// for every replica; recorded in each replica's `vellum.json`.
    Token(&'a KekConfig),
}

/// What [`init_cluster_replica`] needs to know.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaInit<'a> {
    /// The replica's data directory; its signing key must already exist
    /// (see [`create_replica_signing_key`]).
    pub data_dir: &'a Path,
    /// The cluster id.
    pub cluster: u128,
    /// This replica's index.
    pub replica: u8,
    /// Where the KEK comes from.
    pub kek: KekSource<'a>,
    /// The cluster's trust policy (every replica's verifier, quorum f+1).
    pub policy: &'a Policy,
}

/// The key name of replica `replica`: `vellum-<first 8 hex of cluster>-r<i>`.
pub fn replica_key_name(cluster: u128, replica: u8) -> String {
    format!("vellum-{:08x}-r{replica}", (cluster >> 96) as u32)
}

/// Creates `data_dir` (if absent), its private `keys/` directory and the
/// replica's signing key `keys/signing.key`, named by [`replica_key_name`].
/// Refuses an existing key.
pub fn create_replica_signing_key(
    data_dir: &Path,
    cluster: u128,
    replica: u8,
) -> Result<Signer, SetupError> {
    let dir = DataDir::new(data_dir);
    std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
    crate::fsutil::create_dir_with_mode(&dir.keys(), 0o700).map_err(io_error(&dir.keys()))?;
    Ok(crypto::create_signing_key_file(
        &dir.signing_key(),
        &replica_key_name(cluster, replica),
    )?)
}

/// Initializes replica `init.replica` of a cluster in `init.data_dir`, like
/// `vellum init` does for a single replica: KEK (generated or copied), an
/// empty key store whose writer id is the replica index (so nonces of
/// different replicas never collide under a shared data key), the policy,
/// and `vellum.json` last. The signing key must exist already and be pinned
/// by the policy. The log itself is not created: the replica runtime creates
/// its segments on first start.
pub fn init_cluster_replica(init: &ReplicaInit<'_>) -> Result<NodeMeta, SetupError> {
    let dir = DataDir::new(init.data_dir);
    check_policy(init.policy, init.cluster, init.replica)?;
    if dir.meta().exists() {
        return Err(SetupError::Target {
            path: init.data_dir.to_path_buf(),
            reason: "is already initialized; refusing to overwrite it".into(),
        });
    }
    let name = replica_key_name(init.cluster, init.replica);
    let signer = crypto::load_signing_key_file(&dir.signing_key())?;
    if signer.name() != name || !init.policy.verifiers.contains(&signer.verifier()) {
        return Err(SetupError::Invalid(format!(
            "signing key {} ({}) is not the policy's key of replica {}",
            dir.signing_key().display(),
            signer.verifier().to_vkey(),
            init.replica
        )));
    }
    let kek: Box<dyn KeyEncryptionKey> = match init.kek {
        KekSource::Generate => Box::new(Kek::create_file(&dir.kek())?),
        KekSource::CopyFrom(source) => Box::new(copy_kek(source, &dir.kek())?),
        KekSource::Token(config) => crate::init::open_or_generate_kek(Some(config), &dir.kek())?,
    };
    KeyStore::create(&dir.keys(), kek, u32::from(init.replica))?;
    crate::fsutil::write_durable(&dir.policy(), init.policy.encode().as_bytes(), 0o644)
        .map_err(io_error(&dir.policy()))?;
    let meta = NodeMeta {
        layout_version: LAYOUT_VERSION,
        cluster: format!("{:032x}", init.cluster),
        replica: u32::from(init.replica),
        name,
        kek: match init.kek {
            KekSource::Token(config) => Some(config.clone()),
            _ => None,
        },
        writer_epoch: None,
        signing: None,
    };
    meta.store(&dir)?;
    Ok(meta)
}

/// A policy fit for replica `replica` of `cluster`: its origin, an odd
/// number of keys, quorum f+1, and the index in range.
fn check_policy(policy: &Policy, cluster: u128, replica: u8) -> Result<(), SetupError> {
    let count = policy.verifiers.len();
    check_replica_count(count).map_err(|(_, reason)| SetupError::Invalid(reason))?;
    if policy.origin != origin_for_cluster(cluster) {
        return Err(SetupError::Invalid(format!(
            "policy origin {} is not cluster {cluster:032x}'s",
            policy.origin
        )));
    }
    if policy.quorum != count / 2 + 1 {
        return Err(SetupError::Invalid(format!(
            "policy quorum {} is not f+1 = {} for {count} replicas",
            policy.quorum,
            count / 2 + 1
        )));
    }
    if usize::from(replica) >= count {
        return Err(SetupError::Invalid(format!(
            "replica {replica} is out of range for {count} replicas"
        )));
    }
    Ok(())
}

/// Copies the KEK file `source` to a new private file `target` and loads it
/// (which checks both its format and its permissions).
fn copy_kek(source: &Path, target: &Path) -> Result<Kek, SetupError> {
    crypto::check_private(source)?;
    let bytes = Zeroizing::new(std::fs::read(source).map_err(io_error(source))?);
    crate::fsutil::write_durable(target, &bytes, 0o600).map_err(io_error(target))?;
    Ok(Kek::load_file(target)?)
}

/// A fresh random cluster id.
pub fn random_cluster_id() -> Result<u128, SetupError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SetupError::Random(e.to_string()))?;
    Ok(u128::from_le_bytes(bytes))
}

/// A fresh client token: [`TOKEN_PREFIX`] and [`TOKEN_BYTES`] random bytes in hex.
pub fn generate_token() -> Result<Zeroizing<String>, SetupError> {
    let mut bytes = Zeroizing::new([0u8; TOKEN_BYTES]);
    getrandom::fill(bytes.as_mut()).map_err(|e| SetupError::Random(e.to_string()))?;
    Ok(Zeroizing::new(format!(
        "{TOKEN_PREFIX}{}",
        to_hex(bytes.as_ref())
    )))
}

/// One line of a dev tokens file:
/// `sha256:<hex of SHA-256(token)> <principal> <role> streams=*` (the dev
/// cluster's principals see every stream; `crate::server::auth::token_line`
/// writes it).
pub fn token_line(token: &str, principal: &str, role: &str) -> String {
    let role = role
        .parse::<crate::server::Role>()
        .expect("the dev cluster names only known roles");
    crate::server::auth::token_line(token, principal, role, &crate::server::auth::Scope::all())
}

/// A local dev cluster on disk: what `vellum dev` and `vellum demo` need to
/// start it and talk to it. `Debug` leaves the tokens out.
#[derive(Clone, PartialEq, Eq)]
pub struct DevCluster {
    /// The cluster directory.
    pub dir: PathBuf,
    /// `r<i>.json` of every replica, in index order.
    pub configs: Vec<PathBuf>,
    /// Every replica's client API URL, in index order.
    pub api_urls: Vec<String>,
    /// The dev CA certificate clients must trust.
    pub ca_pem_path: PathBuf,
    /// The token of principal `dev`, role `writer`.
    pub writer_token: String,
    /// The token of principal `auditor`, role `auditor`.
    pub auditor_token: String,
    /// The token of principal `privacy`, role `privacy-officer` (None in a
    /// dev cluster made before the role existed).
    pub privacy_officer_token: Option<String>,
    /// The auditor's copy of the trust policy.
    pub policy_path: PathBuf,
    /// The dev service's client certificate and key (principal
    /// [`DEV_SERVICE`]), when the cluster has a client CA (clusters made
    /// before mTLS have none).
    pub service_cert: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for DevCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCluster")
            .field("dir", &self.dir)
            .field("configs", &self.configs)
            .field("api_urls", &self.api_urls)
            .field("ca_pem_path", &self.ca_pem_path)
            .field("policy_path", &self.policy_path)
            .field("service_cert", &self.service_cert)
            .finish_non_exhaustive()
    }
}

/// Paths inside a dev cluster directory.
fn config_path(dir: &Path, replica: u8) -> PathBuf {
    dir.join(format!("r{replica}.json"))
}
fn tokens_path(dir: &Path) -> PathBuf {
    dir.join("tokens.txt")
}
fn dev_token_path(dir: &Path) -> PathBuf {
    dir.join("dev-token.txt")
}
fn policy_copy_path(dir: &Path) -> PathBuf {
    dir.join("policy.txt")
}
fn clients_path(dir: &Path) -> PathBuf {
    dir.join("clients.txt")
}
fn service_cert_paths(dir: &Path) -> (PathBuf, PathBuf) {
    let tls = dir.join("tls");
    (
        tls.join("client-service.pem"),
        tls.join("client-service.key"),
    )
}

/// Creates a dev cluster of `replica_count` replicas in `dir`, which must be
/// absent or empty. Ports are `base_port + i` (replicas) and
/// `base_port + 100 + i` (API) when `base_port` is given, else free loopback
/// ports picked now. On failure everything created is removed again, so the
/// command can simply be rerun.
pub fn create_dev_cluster(
    dir: &Path,
    replica_count: u8,
    base_port: Option<u16>,
) -> Result<DevCluster, SetupError> {
    create_dev_cluster_with_kek(dir, replica_count, base_port, None)
}

/// [`create_dev_cluster`] with every replica's KEK in the PKCS#11 token
/// `kek` names (one key, shared through the token) instead of a dev KEK
/// file copied to each replica.
pub fn create_dev_cluster_with_kek(
    dir: &Path,
    replica_count: u8,
    base_port: Option<u16>,
    kek: Option<&KekConfig>,
) -> Result<DevCluster, SetupError> {
    check_replica_count(usize::from(replica_count))
        .map_err(|(_, reason)| SetupError::Invalid(reason))?;
    let ports = match base_port {
        Some(base) => fixed_ports(base, replica_count)?,
        None => free_ports(replica_count)?,
    };
    check_empty_target(dir)?;
    let existed = dir.exists();
    let result = create_dev(dir, replica_count, &ports, kek);
    if result.is_err() {
        crate::init::remove_created(dir, existed);
    }
    result
}

/// Reopens the dev cluster created in `dir` if it holds one, else creates
/// one (so `vellum dev --data-dir D` run twice reuses D). Refuses an
/// existing cluster of a different size.
pub fn open_or_create_dev_cluster(
    dir: &Path,
    replica_count: u8,
    base_port: Option<u16>,
) -> Result<DevCluster, SetupError> {
    if !config_path(dir, 0).exists() {
        return create_dev_cluster(dir, replica_count, base_port);
    }
    let cluster = DevCluster::load(dir)?;
    if cluster.configs.len() != usize::from(replica_count) {
        return Err(SetupError::Target {
            path: dir.to_path_buf(),
            reason: format!(
                "holds a cluster of {} replicas, not {replica_count}",
                cluster.configs.len()
            ),
        });
    }
    Ok(cluster)
}

fn create_dev(
    dir: &Path,
    replica_count: u8,
    ports: &[Ports],
    token_kek: Option<&KekConfig>,
) -> Result<DevCluster, SetupError> {
    crate::fsutil::create_dir_with_mode(dir, 0o700).map_err(io_error(dir))?;
    let cluster = random_cluster_id()?;
    let data_dir = |i: u8| dir.join(format!("r{i}"));
    let signers = (0..replica_count)
        .map(|i| create_replica_signing_key(&data_dir(i), cluster, i))
        .collect::<Result<Vec<_>, _>>()?;
    let verifiers = signers.iter().map(Signer::verifier).collect::<Vec<_>>();
    let quorum = usize::from(replica_count) / 2 + 1;
    let policy = Policy::new(&origin_for_cluster(cluster), verifiers.clone(), quorum)
        .map_err(|e| SetupError::Invalid(format!("trust policy: {e}")))?;
    let first_kek = DataDir::new(data_dir(0)).kek();
    for i in 0..replica_count {
        let kek = match (token_kek, i) {
            (Some(config), _) => KekSource::Token(config),
            (None, 0) => KekSource::Generate,
            (None, _) => KekSource::CopyFrom(&first_kek),
        };
        init_cluster_replica(&ReplicaInit {
            data_dir: &data_dir(i),
            cluster,
            replica: i,
            kek,
            policy: &policy,
        })?;
    }
    let tls_dir = dir.join("tls");
    let tls = dev_tls(&tls_dir, replica_count)?;
    write_tokens(dir)?;
    let client_certs = dev_client_certs(dir)?;
    let policy_path = policy_copy_path(dir);
    crate::fsutil::write_durable(&policy_path, policy.encode().as_bytes(), 0o644)
        .map_err(io_error(&policy_path))?;
    let replicas = ports
        .iter()
        .zip(verifiers)
        .map(|(p, verifier)| ReplicaPeer {
            address: p.address,
            api_address: p.api_address,
            verifier,
        })
        .collect::<Vec<_>>();
    for i in 0..replica_count {
        let config = ClusterConfig {
            cluster,
            replica: i,
            data_dir: data_dir(i),
            replicas: replicas.clone(),
            tls: tls[usize::from(i)].clone(),
            tokens: tokens_path(dir),
            index_url: None,
            retention_days_after_last_event: None,
            client_certs: Some(client_certs.clone()),
        };
        config.store(&config_path(dir, i))?;
    }
    DevCluster::load(dir)
}

/// Generates the dev CA and one certificate per replica in `tls_dir`;
/// returns each replica's TLS paths, in index order.
fn dev_tls(tls_dir: &Path, replica_count: u8) -> Result<Vec<TlsPaths>, SetupError> {
    let tls_error = |reason: String| SetupError::Tls {
        path: tls_dir.to_path_buf(),
        reason,
    };
    let pki = crate::net::tls::generate_dev_pki(tls_dir, replica_count)
        .map_err(|e| tls_error(e.to_string()))?;
    if pki.replicas.len() != usize::from(replica_count) {
        return Err(tls_error(format!(
            "{} replica certificates generated for {replica_count} replicas",
            pki.replicas.len()
        )));
    }
    Ok(pki
        .replicas
        .iter()
        .map(|(cert, key)| TlsPaths {
            ca: pki.ca_cert.clone(),
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect())
}

/// Generates the dev client CA and the dev service's certificate (in
/// `tls/`), and `clients.txt` mapping its fingerprint to [`DEV_SERVICE`].
fn dev_client_certs(dir: &Path) -> Result<super::config::ClientCertPaths, SetupError> {
    let tls_dir = dir.join("tls");
    let tls_error = |e: crate::net::tls::TlsError| SetupError::Tls {
        path: tls_dir.clone(),
        reason: e.to_string(),
    };
    let ca = crate::net::tls::ClientCa::generate().map_err(tls_error)?;
    let paths = super::config::ClientCertPaths {
        ca: tls_dir.join("client-ca.pem"),
        principals: clients_path(dir),
    };
    ca.store(&paths.ca, &tls_dir.join("client-ca.key"))
        .map_err(tls_error)?;
    let (cert_pem, key_pem) = ca
        .issue(&crate::net::tls::ClientCertSpec {
            common_name: DEV_SERVICE.0,
            ..Default::default()
        })
        .map_err(tls_error)?;
    let (cert_path, key_path) = service_cert_paths(dir);
    crate::fsutil::write_durable(&cert_path, cert_pem.as_bytes(), 0o644)
        .map_err(io_error(&cert_path))?;
    crate::fsutil::write_durable(&key_path, key_pem.as_bytes(), 0o600)
        .map_err(io_error(&key_path))?;
    let leaf = crate::net::tls::certificates_from_pem(cert_pem.as_bytes(), &cert_path)
        .map_err(tls_error)?;
    let role = DEV_SERVICE
        .1
        .parse::<crate::server::Role>()
        .expect("the dev cluster names only known roles");
    let line = crate::server::auth::digest_line(
        &crate::net::tls::certificate_sha256(&leaf[0]),
        DEV_SERVICE.0,
        role,
        &crate::server::auth::Scope::all(),
    );
    crate::fsutil::write_durable(&paths.principals, format!("{line}\n").as_bytes(), 0o600)
        .map_err(io_error(&paths.principals))?;
    Ok(paths)
}

/// Writes `tokens.txt` (hashes) and `dev-token.txt` (plaintext, 0600).
fn write_tokens(dir: &Path) -> Result<(), SetupError> {
    let writer = generate_token()?;
    let auditor = generate_token()?;
    let privacy = generate_token()?;
    let hashes = format!(
        "{}\n{}\n{}\n",
        token_line(&writer, DEV_WRITER.0, DEV_WRITER.1),
        token_line(&auditor, DEV_AUDITOR.0, DEV_AUDITOR.1),
        token_line(&privacy, DEV_PRIVACY_OFFICER.0, DEV_PRIVACY_OFFICER.1)
    );
    let tokens = tokens_path(dir);
    crate::fsutil::write_durable(&tokens, hashes.as_bytes(), 0o600).map_err(io_error(&tokens))?;
    let plain = Zeroizing::new(format!(
        "{} {} {}\n{} {} {}\n{} {} {}\n",
        DEV_WRITER.1,
        DEV_WRITER.0,
        *writer,
        DEV_AUDITOR.1,
        DEV_AUDITOR.0,
        *auditor,
        DEV_PRIVACY_OFFICER.1,
        DEV_PRIVACY_OFFICER.0,
        *privacy
    ));
    let path = dev_token_path(dir);
    crate::fsutil::write_durable(&path, plain.as_bytes(), 0o600).map_err(io_error(&path))
}

/// The dev tokens read back: writer, auditor, privacy officer (absent in a
/// cluster made before that role existed).
type DevTokens = (String, String, Option<String>);

/// Reads `dev-token.txt`: lines `<role> <principal> <token>`; returns the
/// writer's, the auditor's and the privacy officer's token.
fn read_dev_tokens(dir: &Path) -> Result<DevTokens, SetupError> {
    let path = dev_token_path(dir);
    let length = std::fs::metadata(&path).map_err(io_error(&path))?.len();
    let bad = |reason: String| SetupError::Target {
        path: path.clone(),
        reason,
    };
    if length > DEV_TOKEN_FILE_BYTES_MAX {
        return Err(bad(format!(
            "is {length} bytes, more than {DEV_TOKEN_FILE_BYTES_MAX}"
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(io_error(&path))?);
    let find = |role: &str| {
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split(' ').collect();
                (fields.len() == 3 && fields[0] == role).then(|| fields[2].to_string())
            })
            .next()
            .ok_or_else(|| bad(format!("has no {role} token line")))
    };
    Ok((
        find(DEV_WRITER.1)?,
        find(DEV_AUDITOR.1)?,
        find(DEV_PRIVACY_OFFICER.1).ok(),
    ))
}

impl DevCluster {
    /// Reopens the dev cluster in `dir`: loads and validates every
    /// `r<i>.json` (each against its data directory), checks that they
    /// describe one cluster, and reads the dev tokens.
    pub fn load(dir: &Path) -> Result<DevCluster, SetupError> {
        let configs: Vec<PathBuf> = (0..crate::vsr::REPLICAS_MAX as u8)
            .map(|i| config_path(dir, i))
            .take_while(|p| p.exists())
            .collect();
        let loaded = configs
            .iter()
            .map(|p| ClusterConfig::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let first = loaded.first().ok_or_else(|| SetupError::Target {
            path: dir.to_path_buf(),
            reason: "holds no dev cluster (no r0.json)".into(),
        })?;
        for (i, config) in loaded.iter().enumerate() {
            let agrees = config.cluster == first.cluster
                && config.replicas == first.replicas
                && usize::from(config.replica) == i;
            if !agrees {
                return Err(SetupError::Target {
                    path: configs[i].clone(),
                    reason: format!(
                        "does not describe replica {i} of the cluster in {}",
                        configs[0].display()
                    ),
                });
            }
        }
        if loaded.len() != first.replicas.len() {
            return Err(SetupError::Target {
                path: dir.to_path_buf(),
                reason: format!(
                    "has {} replica configs for a cluster of {} replicas",
                    loaded.len(),
                    first.replicas.len()
                ),
            });
        }
        let (writer_token, auditor_token, privacy_officer_token) = read_dev_tokens(dir)?;
        let service_cert = first
            .client_certs
            .as_ref()
            .map(|_| service_cert_paths(dir))
            .filter(|(cert, key)| cert.exists() && key.exists());
        Ok(DevCluster {
            dir: dir.to_path_buf(),
            api_urls: first.api_urls(),
            ca_pem_path: first.tls.ca.clone(),
            configs,
            writer_token,
            auditor_token,
            privacy_officer_token,
            policy_path: policy_copy_path(dir),
            service_cert,
        })
    }
}

/// The two addresses of one replica.
#[derive(Debug, Clone, Copy)]
struct Ports {
    address: SocketAddr,
    api_address: SocketAddr,
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn fixed_ports(base: u16, replica_count: u8) -> Result<Vec<Ports>, SetupError> {
    let last = u32::from(base) + u32::from(API_PORT_OFFSET) + u32::from(replica_count);
    if base == 0 || last > u32::from(u16::MAX) {
        return Err(SetupError::Invalid(format!(
            "base port {base} leaves no room for {replica_count} replicas (ports up to {last})"
        )));
    }
    Ok((0..u16::from(replica_count))
        .map(|i| Ports {
            address: loopback(base + i),
            api_address: loopback(base + API_PORT_OFFSET + i),
        })
        .collect())
}

/// Picks distinct free loopback ports by binding them all at once, then
/// releasing them. Another process may take one before the replica binds
/// it; for a dev cluster that risk is accepted (the replica then fails to
/// start and says which address is in use).
fn free_ports(replica_count: u8) -> Result<Vec<Ports>, SetupError> {
    let bind = || {
        let listener =
            TcpListener::bind(loopback(0)).map_err(io_error(Path::new("127.0.0.1:0")))?;
        let address = listener
            .local_addr()
            .map_err(io_error(Path::new("127.0.0.1:0")))?;
        Ok::<_, SetupError>((listener, address))
    };
    let mut held = Vec::with_capacity(usize::from(replica_count) * 2);
    let mut ports = Vec::with_capacity(usize::from(replica_count));
    for _ in 0..replica_count {
        let (a, address) = bind()?;
        let (b, api_address) = bind()?;
        held.extend([a, b]);
        ports.push(Ports {
            address,
            api_address,
        });
    }
    drop(held);
    Ok(ports)
}

/// Refuses a target that exists and is not an empty directory.
fn check_empty_target(dir: &Path) -> Result<(), SetupError> {
    if !dir.exists() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    if entries.next().is_some() {
        return Err(SetupError::Target {
            path: dir.to_path_buf(),
            reason: "exists and is not empty; choose an empty directory for a new cluster".into(),
        });
    }
    Ok(())
}

/// Pins an outside witness in every replica's policy of the dev cluster in
/// `dev` (`cosigner <name> <vkey> <url>`), with `cosigner-quorum 0`: the
/// primary submits its certificates to `url`, and a replica never needs a
/// cosignature (appends never wait for the witness). Replicas read the
/// policy when they start. The auditor's copy (`policy.txt` of the cluster
/// directory) is left as is: auditors choose their own witness quorum.
pub fn add_dev_cosigner(
    dev: &DevCluster,
    key: &vellum_audit::cosignature::CosignerKey,
    url: &str,
) -> Result<(), SetupError> {
    for config in &dev.configs {
        let config = ClusterConfig::load(config)?;
        let path = DataDir::new(&config.data_dir).policy();
        let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
        let policy = Policy::parse(&text)
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", path.display())))?;
        let mut cosigners = policy.cosigners.clone();
        let mut urls = policy.cosigner_urls.clone();
        if cosigners.contains(key) {
            continue;
        }
        cosigners.push(key.clone());
        urls.push(Some(url.to_owned()));
        let quorum = policy.cosigner_quorum;
        let policy = policy
            .with_cosigners(cosigners, quorum)
            .map(|p| p.with_cosigner_urls(urls))
            .map_err(|e| SetupError::Invalid(format!("{}: {e}", path.display())))?;
        crate::fsutil::replace_durable(&path, policy.encode().as_bytes(), 0o644)
            .map_err(io_error(&path))?;
    }
    Ok(())
}
