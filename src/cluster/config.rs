//! The cluster configuration file that `vellum start --config <file>` reads:
//! which cluster, which replica this process is, where its data directory,
//! TLS material and token file are, and every replica's addresses and pinned
//! verifier key.
//!
//! ```json
//! { "cluster": "<32 hex>", "replica": 0, "data_dir": "r0",
//!   "replicas": [ { "address": "127.0.0.1:7100", "api_address": "127.0.0.1:7200",
//!                   "verifier": "<vkey line as in policy.txt>" } ],
//!   "tls": { "ca": "tls/ca.pem", "cert": "tls/replica-0.pem", "key": "tls/replica-0.key" },
//!   "tokens": "tokens.txt", "index_url": null }
//! ```
//!
//! Optional: `"retention_days_after_last_event": N` (1 to 36,500), the
//! retention policy: the primary refuses to shred a stream within N days
//! of its newest event (409 `retention_floor`).
//!
//! Optional: `"client_certs": { "ca": "tls/client-ca.pem", "principals":
//! "clients.txt" }`: services may authenticate with a certificate of that
//! CA (a different CA from `tls.ca`) instead of a token; `principals` maps
//! certificate fingerprints to principals, in the tokens file's line
//! format (`crate::server::mtls`).
//!
//! Relative paths are resolved against the directory holding the file, so a
//! cluster directory can be moved as a whole. Unknown fields are refused
//! (a misspelt option silently ignored is a misconfigured replica), and
//! every validation error names the field it is about, so the operator
//! knows which line to fix. The file is checked against the data directory
//! too: a config pointing replica 1 at replica 2's data, or at another
//! cluster's, is refused before anything is opened.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::note::Verifier;
use vellum_audit::policy::Policy;

use crate::datadir::{DataDir, NodeMeta};
use crate::vsr::REPLICAS_MAX;

/// The largest configuration file accepted, in bytes (a 7-replica config is
/// about 2 KiB; the bound keeps a wrong path from reading a huge file).
pub const CONFIG_BYTES_MAX: u64 = 64 * 1024;

/// The configuration file as written on disk (paths as written, unresolved).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The cluster id, 32 hex digits.
    pub cluster: String,
    /// This replica's index into `replicas`.
    pub replica: u8,
    /// This replica's data directory.
    pub data_dir: PathBuf,
    /// Every replica of the cluster, in index order.
    pub replicas: Vec<ReplicaFile>,
    /// TLS material of this replica.
    pub tls: TlsPaths,
    /// The client token file (`sha256:<hex> <principal> <role> [streams=<scope>]` lines).
    pub tokens: PathBuf,
    /// The audit index URL; `null` means the SQLite file in the data directory.
    #[serde(default)]
    pub index_url: Option<String>,
    /// Retention policy: no stream is shredded within this many days of
    /// its newest event (1 to 36,500); absent: no policy floor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days_after_last_event: Option<u64>,
    /// Client identities by certificate; absent: bearer tokens only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certs: Option<ClientCertPaths>,
}

/// Where the client CA and the client certificates file are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertPaths {
    /// The client CA certificate(s) (PEM), not the cluster CA.
    pub ca: PathBuf,
    /// The client certificates file: `sha256:<hex of SHA-256(certificate
    /// DER)> <principal> <role> [streams=<scope>]` lines.
    pub principals: PathBuf,
}

/// One replica's entry as written on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaFile {
    /// Replica-to-replica address (`ip:port`).
    pub address: String,
    /// Client API address (`ip:port`).
    pub api_address: String,
    /// The replica's verifier key, as in `policy.txt`.
    pub verifier: String,
}

/// Paths of this replica's TLS material.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// The cluster CA certificate (PEM) every peer and client trusts.
    pub ca: PathBuf,
    /// This replica's certificate chain (PEM).
    pub cert: PathBuf,
    /// This replica's private key (PEM).
    pub key: PathBuf,
}

/// One replica of the cluster, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaPeer {
    /// Replica-to-replica address.
    pub address: SocketAddr,
    /// Client API address.
    pub api_address: SocketAddr,
    /// The replica's pinned checkpoint verifier key.
    pub verifier: Verifier,
}

/// A validated cluster configuration with every path resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The cluster id.
    pub cluster: u128,
    /// This replica's index, `< replicas.len()`.
    pub replica: u8,
    /// This replica's data directory (resolved).
    pub data_dir: PathBuf,
    /// Every replica, in index order; an odd count of at most [`REPLICAS_MAX`].
    pub replicas: Vec<ReplicaPeer>,
    /// This replica's TLS material (resolved).
    pub tls: TlsPaths,
    /// The client token file (resolved).
    pub tokens: PathBuf,
    /// The audit index URL, if not the default.
    pub index_url: Option<String>,
    /// The retention policy in days after a stream's newest event, if any.
    pub retention_days_after_last_event: Option<u64>,
    /// The client CA and client certificates file (resolved), if any.
    pub client_certs: Option<ClientCertPaths>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The configuration file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid JSON of the expected shape (serde's message,
    /// with line and column).
    #[error("{}: {reason}", path.display())]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// What serde reported.
        reason: String,
    },
    /// A field holds a value that is not allowed.
    #[error("{}: {field}: {reason}", path.display())]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// The field, e.g. `replicas[1].address`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// A field name and what is wrong with it (the file name is added later).
type FieldError = (String, String);

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    (field.into(), reason.into())
}

impl ClusterConfig {
    /// Reads, validates and resolves the configuration at `path`, and checks
    /// it against the data directory's `vellum.json` and signing key when
    /// they exist.
    pub fn load(path: &Path) -> Result<ClusterConfig, ConfigError> {
        let io = |source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        };
        let length = std::fs::metadata(path).map_err(io)?.len();
        if length > CONFIG_BYTES_MAX {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                reason: format!("file is {length} bytes, more than {CONFIG_BYTES_MAX}"),
            });
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let file: ConfigFile = serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let invalid = |(field, reason): FieldError| ConfigError::Invalid {
            path: path.to_path_buf(),
            field,
            reason,
        };
        let base = base_dir(path);
        let config = ClusterConfig::from_file(&file, &base).map_err(invalid)?;
        config.check_data_dir().map_err(invalid)?;
        Ok(config)
    }

    /// Validates a parsed file, resolving relative paths against `base`.
    /// Touches no file.
    pub(crate) fn from_file(file: &ConfigFile, base: &Path) -> Result<ClusterConfig, FieldError> {
        let cluster = parse_cluster(&file.cluster)?;
        check_replica_count(file.replicas.len())?;
        if usize::from(file.replica) >= file.replicas.len() {
            return Err(field_error(
                "replica",
                format!(
                    "{} is out of range for {} replicas",
                    file.replica,
                    file.replicas.len()
                ),
            ));
        }
        let replicas = file
            .replicas
            .iter()
            .enumerate()
            .map(|(i, r)| parse_replica(i, r))
            .collect::<Result<Vec<_>, _>>()?;
        check_distinct(&replicas)?;
        if let Some(days) = file.retention_days_after_last_event {
            let max = vellum_compliance::custody::RETENTION_DAYS_MAX;
            if !(1..=max).contains(&days) {
                return Err(field_error(
                    "retention_days_after_last_event",
                    format!("{days} is outside 1 to {max} days"),
                ));
            }
        }
        let resolve = |p: &Path| base.join(p);
        Ok(ClusterConfig {
            cluster,
            replica: file.replica,
            data_dir: resolve(&file.data_dir),
            replicas,
            tls: TlsPaths {
                ca: resolve(&file.tls.ca),
                cert: resolve(&file.tls.cert),
                key: resolve(&file.tls.key),
            },
            tokens: resolve(&file.tokens),
            index_url: file.index_url.clone(),
            retention_days_after_last_event: file.retention_days_after_last_event,
            client_certs: file.client_certs.as_ref().map(|c| ClientCertPaths {
                ca: resolve(&c.ca),
                principals: resolve(&c.principals),
            }),
        })
    }

    /// The file form, with paths under `base` written relative to it.
    pub fn to_file(&self, base: &Path) -> ConfigFile {
        let relative = |p: &Path| p.strip_prefix(base).unwrap_or(p).to_path_buf();
        ConfigFile {
            cluster: format!("{:032x}", self.cluster),
            replica: self.replica,
            data_dir: relative(&self.data_dir),
            replicas: self
                .replicas
                .iter()
                .map(|r| ReplicaFile {
                    address: r.address.to_string(),
                    api_address: r.api_address.to_string(),
                    verifier: r.verifier.to_vkey(),
                })
                .collect(),
            tls: TlsPaths {
                ca: relative(&self.tls.ca),
                cert: relative(&self.tls.cert),
                key: relative(&self.tls.key),
            },
            tokens: relative(&self.tokens),
            index_url: self.index_url.clone(),
            retention_days_after_last_event: self.retention_days_after_last_event,
            client_certs: self.client_certs.as_ref().map(|c| ClientCertPaths {
                ca: relative(&c.ca),
                principals: relative(&c.principals),
            }),
        }
    }

    /// Writes the configuration to `path` atomically and durably, with the
    /// paths that lie under the file's directory written relative to it.
    pub fn store(&self, path: &Path) -> Result<(), ConfigError> {
        let file = self.to_file(&base_dir(path));
        let mut text =
            serde_json::to_string_pretty(&file).expect("a config file always serializes");
        text.push('\n');
        crate::fsutil::replace_durable(path, text.as_bytes(), 0o644).map_err(|source| {
            ConfigError::Io {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    /// Replicas in the cluster.
    pub fn replica_count(&self) -> u8 {
        u8::try_from(self.replicas.len()).expect("validated: at most REPLICAS_MAX replicas")
    }

    /// f+1 of 2f+1: the replicas (and checkpoint signatures) that make a quorum.
    pub fn quorum(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    /// This replica's entry.
    pub fn this_replica(&self) -> &ReplicaPeer {
        &self.replicas[usize::from(self.replica)]
    }

    /// The client API URL of replica `i`, e.g. `https://127.0.0.1:7200`.
    /// Panics if `i` is out of range (a caller bug).
    pub fn api_url(&self, i: usize) -> String {
        format!("https://{}", self.replicas[i].api_address)
    }

    /// Every replica's client API URL, in index order.
    pub fn api_urls(&self) -> Vec<String> {
        (0..self.replicas.len()).map(|i| self.api_url(i)).collect()
    }

    /// The checkpoint origin of this cluster's log.
    pub fn origin(&self) -> String {
        origin_for_cluster(self.cluster)
    }

    /// The trust policy the configuration implies: every replica's verifier,
    /// quorum f+1.
    pub fn policy(&self) -> Policy {
        let verifiers = self.replicas.iter().map(|r| r.verifier.clone()).collect();
        Policy::new(&self.origin(), verifiers, self.quorum())
            .expect("validated: distinct keys and names, quorum within 1..=n")
    }

    /// Checks the data directory's `vellum.json` and signing key, when they
    /// exist, against this configuration.
    fn check_data_dir(&self) -> Result<(), FieldError> {
        let dir = DataDir::new(&self.data_dir);
        if dir.meta().exists() {
            let meta = NodeMeta::load(&dir).map_err(|e| field_error("data_dir", e.to_string()))?;
            let expected = format!("{:032x}", self.cluster);
            if meta.cluster != expected {
                return Err(field_error(
                    "cluster",
                    format!(
                        "{expected} differs from cluster {} in {}",
                        meta.cluster,
                        dir.meta().display()
                    ),
                ));
            }
            if meta.replica != u32::from(self.replica) {
                return Err(field_error(
                    "replica",
                    format!(
                        "{} differs from replica {} in {}",
                        self.replica,
                        meta.replica,
                        dir.meta().display()
                    ),
                ));
            }
        }
        if dir.signing_key().exists() {
            let signer = crate::crypto::load_signing_key_file(&dir.signing_key())
                .map_err(|e| field_error("data_dir", e.to_string()))?;
            let configured = self.this_replica().verifier.to_vkey();
            let actual = signer.verifier().to_vkey();
            if configured != actual
                && !rotated_to(
                    &dir,
                    self.replica,
                    &self.this_replica().verifier,
                    &signer.verifier(),
                )
            {
                return Err(field_error(
                    format!("replicas[{}].verifier", self.replica),
                    format!(
                        "{configured:?} does not match the signing key {} (its verifier is {actual:?})",
                        dir.signing_key().display()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Whether the data directory's own policy pins a rotation history of
/// `replica` from its configured key `configured` (the key it was set up
/// with, pinned first) to `actual` (the key it signs with now): a replica
/// whose signing key `vellum keys rotate-signing` rotated.
fn rotated_to(dir: &DataDir, replica: u8, configured: &Verifier, actual: &Verifier) -> bool {
    let Ok(text) = std::fs::read_to_string(dir.policy()) else {
        return false;
    };
    let Ok(policy) = Policy::parse(&text) else {
        return false;
    };
    let replica = usize::from(replica);
    policy.verifiers.get(replica) == Some(configured)
        && policy.verifier_at(replica, u64::MAX) == Some(actual)
}

/// The directory relative paths in the file at `path` are resolved against.
fn base_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Parses a cluster id of exactly 32 hex digits.
pub(crate) fn parse_cluster(text: &str) -> Result<u128, FieldError> {
    let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(field_error(
            "cluster",
            format!("must be 32 hex digits, got {text:?}"),
        ));
    }
    u128::from_str_radix(text, 16).map_err(|e| field_error("cluster", e.to_string()))
}

/// A cluster is 2f+1 replicas, 1 to [`REPLICAS_MAX`].
pub(crate) fn check_replica_count(count: usize) -> Result<(), FieldError> {
    if count == 0 || count > REPLICAS_MAX || count.is_multiple_of(2) {
        return Err(field_error(
            "replicas",
            format!("a cluster needs an odd number of replicas (1, 3, 5, 7), got {count}"),
        ));
    }
    Ok(())
}

fn parse_replica(i: usize, entry: &ReplicaFile) -> Result<ReplicaPeer, FieldError> {
    let address = |name: &str, text: &str| {
        text.parse::<SocketAddr>().map_err(|_| {
            field_error(
                format!("replicas[{i}].{name}"),
                format!("invalid socket address {text:?} (expected ip:port)"),
            )
        })
    };
    let verifier = Verifier::parse_vkey(&entry.verifier).map_err(|e| {
        field_error(
            format!("replicas[{i}].verifier"),
            format!("invalid verifier key {:?}: {e}", entry.verifier),
        )
    })?;
    Ok(ReplicaPeer {
        address: address("address", &entry.address)?,
        api_address: address("api_address", &entry.api_address)?,
        verifier,
    })
}

/// Refuses two replicas (or a replica's two ports) on one address, and a
/// verifier key or key name pinned twice.
fn check_distinct(replicas: &[ReplicaPeer]) -> Result<(), FieldError> {
    let mut seen: Vec<(SocketAddr, String)> = Vec::with_capacity(replicas.len() * 2);
    for (i, r) in replicas.iter().enumerate() {
        for (name, addr) in [("address", r.address), ("api_address", r.api_address)] {
            let field = format!("replicas[{i}].{name}");
            if let Some((_, earlier)) = seen.iter().find(|(a, _)| *a == addr) {
                return Err(field_error(
                    field,
                    format!("{addr} is already used by {earlier}"),
                ));
            }
            seen.push((addr, field));
        }
        for (j, earlier) in replicas[..i].iter().enumerate() {
            if earlier.verifier.public_key() == r.verifier.public_key() {
                return Err(field_error(
                    format!("replicas[{i}].verifier"),
                    format!("the same key as replicas[{j}].verifier"),
                ));
            }
            if earlier.verifier.name() == r.verifier.name() {
                return Err(field_error(
                    format!("replicas[{i}].verifier"),
                    format!(
                        "key name {} is already used by replicas[{j}].verifier",
                        r.verifier.name()
                    ),
                ));
            }
        }
    }
    Ok(())
}
