//! The kept secrets of one replica (`vellum secrets export`) and a replica
//! laid out again from them on a new disk (`vellum replace`).
//!
//! What an operator keeps of a replica is what its peers cannot give back:
//! its identity (`vellum.json`, the signing key and its rotation history),
//! its trust policy, its access to the KEK (the dev KEK file, or the PKCS#11
//! reference `vellum.json` holds; never a PIN), its TLS certificate and key
//! with the CA, the client token hashes, and its start config. Never the log,
//! the VSR view state, the index or a data key: those come back from the
//! peers (repair and key transfer), and a shredded stream's key is held by
//! no peer any more, so it never comes back.
//!
//! Why nothing of the log: a replica that starts on a disk holding a saved
//! view counts its own vote in recovery, and may nack ops an earlier life of
//! it acknowledged. That is right for its own last state and wrong for an
//! old copy of it. [`replace_replica`] lays out a directory with no op, no
//! saved view, no certificate and no data key, into an absent or empty
//! directory only: the state the recovery protocol treats as a wiped disk
//! (`vsr::recovery`: it needs f+1 peers, adopts the primary's log, and never
//! nacks ops of that log until it holds them).
//!
//! The file (docs/format.md, "Replica secrets file"), three lines:
//!
//! ```text
//! vellum-replica-secrets v1
//! {"cluster":"<32 hex>","replica":1,"name":"...","meta":"<base64>",...}
//! sha256 <hex of SHA-256 of the first two lines, newlines included>
//! ```

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::hash::{sha256, to_hex};
use vellum_audit::note::{Signer, Verifier};
use vellum_audit::policy::Policy;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::config::{
    CONFIG_BYTES_MAX, ClientCertPaths, ClusterConfig, ConfigError, ConfigFile, TlsPaths,
};
use super::setup::replica_key_name;
use crate::crypto::{self, CryptoError, KeyStore};
use crate::datadir::{DataDir, LAYOUT_VERSION, NodeMeta, WRITER_EPOCH_MAX};

/// First line of a secrets file.
pub const SECRETS_HEADER: &str = "vellum-replica-secrets v1";
/// Prefix of the checksum line.
const CHECKSUM_PREFIX: &str = "sha256 ";
/// Largest secrets file read or written, in bytes (a dev replica's is about
/// 6 KiB; the token file is the part that grows).
pub const SECRETS_FILE_BYTES_MAX: u64 = 1024 * 1024;
/// The start config `replace` writes into the new data directory.
pub const REPLACED_CONFIG_FILE: &str = "replica.json";
/// Where `replace` puts the TLS material, inside the new data directory.
const TLS_DIR: &str = "tls";
/// Where `replace` puts the token hashes, inside the new data directory.
const TOKENS_FILE: &str = "tokens.txt";
/// Where `replace` puts the client-certificate principals (mTLS), inside
/// the new data directory.
const CLIENT_PRINCIPALS_FILE: &str = "clients.txt";
/// Key files that mean a rotation is under way: their secrets would be
/// neither the old nor the new ones.
const ROTATION_IN_PROGRESS: [&str; 5] = [
    crypto::ROTATION_JOURNAL_FILE,
    crypto::ROTATION_STAGING_DIR,
    crypto::NEXT_KEK_FILE,
    crypto::SIGNING_ROTATION_JOURNAL_FILE,
    crypto::NEXT_SIGNING_KEY_FILE,
];

/// Why a secrets file could not be written, read or laid out.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The output file exists: secrets are never overwritten.
    #[error("{} already exists; refusing to overwrite it (choose a new file)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Not a secrets file, or a truncated or changed one.
    #[error("{}: {reason}", path.display())]
    Damaged {
        /// The secrets file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The secrets are of another cluster or replica than the config.
    #[error("{}: {reason}", path.display())]
    Mismatch {
        /// The secrets file.
        path: PathBuf,
        /// Which field differs, and both values.
        reason: String,
    },
    /// The target directory or the replica's state does not allow it.
    #[error("{}: {reason}", path.display())]
    Refused {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A key could not be read, checked or created.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The replica's config does not load or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SecretsError + '_ {
    move |source| SecretsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The JSON line of the file: every kept file's exact bytes in base64.
/// Wiped from memory when dropped.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct SecretsBody {
    cluster: String,
    replica: u8,
    name: String,
    /// `vellum.json`.
    meta: String,
    /// `policy.txt`.
    policy: String,
    /// `keys/signing.key`.
    /// `keys/signing.key`; absent when `vellum.json` names a PKCS#11
    /// signing key (the token keeps it; `vellum start` checks it against
    /// the policy when it opens the log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signing_key: Option<String>,
    /// `keys/signing-rotations`, when the key was ever rotated.
    signing_rotations: Option<String>,
    /// `keys/kek.key`; absent when `vellum.json` names a PKCS#11 KEK.
    kek: Option<String>,
    /// The start config (`vellum start --config`), as written.
    config: String,
    tls_ca: String,
    tls_cert: String,
    tls_key: String,
    /// The client token hashes the config names.
    tokens: String,
    /// The client CA and the client-certificate principals the config
    /// names (`client_certs`), when it names them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    client_certs: Option<ClientCertsBody>,
}

/// The files of a config's `client_certs` (mTLS client identities), in
/// base64.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
#[serde(deny_unknown_fields)]
struct ClientCertsBody {
    ca: String,
    principals: String,
}

/// One replica's kept secrets, decoded and checked against each other.
/// `Debug` shows only which replica they are of.
pub struct ReplicaSecrets {
    /// The cluster id.
    pub cluster: u128,
    /// The replica index.
    pub replica: u8,
    meta: NodeMeta,
    policy_bytes: Vec<u8>,
    signing_key: Option<Zeroizing<Vec<u8>>>,
    signing_rotations: Option<Vec<u8>>,
    kek: Option<Zeroizing<Vec<u8>>>,
    config: ConfigFile,
    verifier: String,
    tls_ca: Vec<u8>,
    tls_cert: Vec<u8>,
    tls_key: Zeroizing<Vec<u8>>,
    tokens: Vec<u8>,
    /// The client CA and principals files, when the config names them.
    client_certs: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ReplicaSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaSecrets")
            .field("cluster", &format_args!("{:032x}", self.cluster))
            .field("replica", &self.replica)
            .finish_non_exhaustive()
    }
}

/// What was exported or laid out (names and public facts only).
#[derive(Debug, Clone, Serialize)]
pub struct SecretsSummary {
    /// The secrets file.
    pub secrets: String,
    /// The cluster id, 32 hex digits.
    pub cluster: String,
    /// The replica index.
    pub replica: u8,
    /// The replica's verifier key as pinned in the config.
    pub verifier: String,
    /// Where the KEK is: `file` (inside the secrets) or the PKCS#11 token.
    pub kek: String,
    /// The new data directory (`replace` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<String>,
    /// The start config written into it (`replace` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl ReplicaSecrets {
    fn summary(&self, secrets: &Path) -> SecretsSummary {
        let kek = match &self.meta.kek {
            None => "file".to_string(),
            Some(crypto::KekConfig::Pkcs11(p)) => {
                format!("pkcs11 token {:?} key {:?}", p.token_label, p.key_label)
            }
        };
        SecretsSummary {
            secrets: secrets.display().to_string(),
            cluster: format!("{:032x}", self.cluster),
            replica: self.replica,
            verifier: self.verifier.clone(),
            kek,
            data_dir: None,
            config: None,
        }
    }
}

/// Writes the kept secrets of the replica that `config_path` starts to a
/// new 0600 file `out` (refusing an existing one), then reads it back and
/// checks it. The replica may be running: every file read is replaced
/// atomically by its writers. Refused while a key rotation is under way.
pub fn export_secrets(config_path: &Path, out: &Path) -> Result<SecretsSummary, SecretsError> {
    if out.symlink_metadata().is_ok() {
        return Err(SecretsError::Exists {
            path: out.to_path_buf(),
        });
    }
    let config = ClusterConfig::load(config_path)?;
    let dir = DataDir::new(&config.data_dir);
    check_no_rotation(&dir)?;
    let meta = crate::datadir::NodeMeta::load(&dir).map_err(|e| SecretsError::Refused {
        path: config.data_dir.clone(),
        reason: e.to_string(),
    })?;
    let read = |path: &Path| std::fs::read(path).map_err(io_error(path));
    let read_secret = |path: &Path| -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        crypto::check_private(path)?;
        Ok(Zeroizing::new(read(path)?))
    };
    let encode = |bytes: &[u8]| BASE64.encode(bytes);
    let rotations = dir.keys().join(crypto::SIGNING_ROTATIONS_FILE);
    let body = SecretsBody {
        cluster: meta.cluster.clone(),
        replica: config.replica,
        name: meta.name.clone(),
        meta: encode(&read(&dir.meta())?),
        policy: encode(&read(&dir.policy())?),
        signing_key: match meta.signing {
            None => Some(encode(&read_secret(&dir.signing_key())?)),
            Some(_) => None,
        },
        signing_rotations: match rotations.exists() {
            true => Some(encode(&read_secret(&rotations)?)),
            false => None,
        },
        kek: match meta.kek {
            None => Some(encode(&read_secret(&dir.kek())?)),
            Some(_) => None,
        },
        config: encode(&read_bounded(config_path, CONFIG_BYTES_MAX)?),
        tls_ca: encode(&read(&config.tls.ca)?),
        tls_cert: encode(&read(&config.tls.cert)?),
        tls_key: encode(&read(&config.tls.key)?),
        tokens: encode(&read(&config.tokens)?),
        client_certs: match &config.client_certs {
            Some(paths) => Some(ClientCertsBody {
                ca: encode(&read(&paths.ca)?),
                principals: encode(&read(&paths.principals)?),
            }),
            None => None,
        },
    };
    let text = Zeroizing::new(encode_file(&body)?);
    if text.len() as u64 > SECRETS_FILE_BYTES_MAX {
        return Err(SecretsError::Refused {
            path: out.to_path_buf(),
            reason: format!(
                "would be {} bytes, more than {SECRETS_FILE_BYTES_MAX}",
                text.len()
            ),
        });
    }
    crate::fsutil::write_durable(out, text.as_bytes(), 0o600).map_err(|source| {
        match source.kind() {
            std::io::ErrorKind::AlreadyExists => SecretsError::Exists {
                path: out.to_path_buf(),
            },
            _ => SecretsError::Io {
                path: out.to_path_buf(),
                source,
            },
        }
    })?;
    Ok(read_secrets(out)?.summary(out))
}

/// Refuses a key directory holding the files of an unfinished rotation.
fn check_no_rotation(dir: &DataDir) -> Result<(), SecretsError> {
    for name in ROTATION_IN_PROGRESS {
        let path = dir.keys().join(name);
        if path.symlink_metadata().is_ok() {
            return Err(SecretsError::Refused {
                path,
                reason: "a key rotation is under way or was interrupted; finish it \
                         (`vellum keys rotate-kek --recover-only` or `rotate-signing \
                         --recover-only`, or start the replica) and export again"
                    .into(),
            });
        }
    }
    Ok(())
}

/// Reads a file of at most `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<Vec<u8>, SecretsError> {
    let length = std::fs::metadata(path).map_err(io_error(path))?.len();
    if length > max {
        return Err(SecretsError::Damaged {
            path: path.to_path_buf(),
            reason: format!("is {length} bytes, more than {max}"),
        });
    }
    std::fs::read(path).map_err(io_error(path))
}

/// The three lines of a secrets file.
fn encode_file(body: &SecretsBody) -> Result<String, SecretsError> {
    let json = Zeroizing::new(
        serde_json::to_string(body).map_err(|e| SecretsError::Refused {
            path: PathBuf::from("<secrets>"),
            reason: format!("cannot encode: {e}"),
        })?,
    );
    let signed = format!("{SECRETS_HEADER}\n{}\n", *json);
    let checksum = to_hex(&sha256(&[signed.as_bytes()]));
    Ok(format!("{signed}{CHECKSUM_PREFIX}{checksum}\n"))
}

/// Reads and checks the secrets file at `path`: owner-only permissions,
/// size, header, checksum, and every part against the others.
pub fn read_secrets(path: &Path) -> Result<ReplicaSecrets, SecretsError> {
    crypto::check_private(path)?;
    let bytes = Zeroizing::new(read_bounded(path, SECRETS_FILE_BYTES_MAX)?);
    decode_secrets(&bytes, path)
}

/// Decodes a secrets file's bytes (`path` names it in errors). Pure.
pub fn decode_secrets(bytes: &[u8], path: &Path) -> Result<ReplicaSecrets, SecretsError> {
    let damaged = |reason: String| SecretsError::Damaged {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|e| damaged(format!("not utf-8 at byte {}", e.valid_up_to())))?;
    let header_end = SECRETS_HEADER.len() + 1;
    if !text.starts_with(&format!("{SECRETS_HEADER}\n")) {
        return Err(damaged(format!(
            "not a vellum secrets file (the first line is not {SECRETS_HEADER:?})"
        )));
    }
    let json_end = text[header_end..]
        .find('\n')
        .map(|i| header_end + i + 1)
        .ok_or_else(|| damaged("truncated: the JSON line does not end".into()))?;
    let (signed, trailer) = text.split_at(json_end);
    let checksum = trailer
        .strip_prefix(CHECKSUM_PREFIX)
        .and_then(|rest| rest.strip_suffix('\n'))
        .ok_or_else(|| {
            damaged("truncated: the last line is not `sha256 <64 hex>` and a newline".into())
        })?;
    if checksum != to_hex(&sha256(&[signed.as_bytes()])) {
        return Err(damaged(
            "checksum mismatch: the file was changed or damaged after export".into(),
        ));
    }
    let body: SecretsBody = serde_json::from_str(&text[header_end..json_end - 1])
        .map_err(|e| damaged(format!("not valid secrets JSON: {e}")))?;
    check_body(&body).map_err(damaged)
}

/// Decodes every part of `body` and checks them against each other: one
/// cluster, one replica, the signing key pinned for it, the KEK present
/// exactly when `vellum.json` names no token.
fn check_body(body: &SecretsBody) -> Result<ReplicaSecrets, String> {
    let decode = |field: &str, text: &str| {
        BASE64
            .decode(text)
            .map_err(|e| format!("{field}: not base64: {e}"))
    };
    let cluster =
        super::config::parse_cluster(&body.cluster).map_err(|(f, r)| format!("{f}: {r}"))?;
    let meta_bytes = decode("meta", &body.meta)?;
    let meta: NodeMeta =
        serde_json::from_slice(&meta_bytes).map_err(|e| format!("meta: not a vellum.json: {e}"))?;
    let same_replica = meta.layout_version == LAYOUT_VERSION
        && meta.cluster == body.cluster
        && meta.replica == u32::from(body.replica)
        && meta.name == body.name
        && body.name == replica_key_name(cluster, body.replica);
    if !same_replica {
        return Err(format!(
            "meta: vellum.json (cluster {}, replica {}, name {}) disagrees with the file's \
             cluster {}, replica {}, name {}",
            meta.cluster, meta.replica, meta.name, body.cluster, body.replica, body.name
        ));
    }
    let policy_bytes = decode("policy", &body.policy)?;
    let policy = std::str::from_utf8(&policy_bytes)
        .map_err(|e| e.to_string())
        .and_then(|t| Policy::parse(t).map_err(|e| e.to_string()))
        .map_err(|e| format!("policy: {e}"))?;
    if policy.origin != origin_for_cluster(cluster) {
        return Err(format!(
            "policy: origin {} is not this cluster's",
            policy.origin
        ));
    }
    let signing_key = body
        .signing_key
        .as_deref()
        .map(|k| decode("signing_key", k).map(Zeroizing::new))
        .transpose()?;
    if signing_key.is_some() == meta.signing.is_some() {
        return Err(
            "signing_key: a signing key file must be kept exactly when vellum.json \
             names no PKCS#11 signing key"
                .into(),
        );
    }
    let replica = usize::from(body.replica);
    if let Some(signing_key) = &signing_key {
        let signer = parse_signing_key(signing_key)?;
        if policy.verifier_at(replica, u64::MAX) != Some(&signer.verifier()) {
            return Err(format!(
                "signing_key: {} is not the policy's key of replica {replica}",
                signer.verifier().to_vkey()
            ));
        }
    }
    let kek = body
        .kek
        .as_deref()
        .map(|k| decode("kek", k).map(Zeroizing::new))
        .transpose()?;
    if kek.is_some() == meta.kek.is_some() {
        return Err(
            "kek: a KEK file must be kept exactly when vellum.json names no PKCS#11 KEK".into(),
        );
    }
    let (config, verifier) = check_config(&decode("config", &body.config)?, body, &policy)?;
    let client_certs = match &body.client_certs {
        Some(files) => Some((
            decode("client_certs.ca", &files.ca)?,
            decode("client_certs.principals", &files.principals)?,
        )),
        None => None,
    };
    if client_certs.is_some() != config.client_certs.is_some() {
        return Err(
            "client_certs: the client CA and principals must be kept exactly when the config \
             names them"
                .into(),
        );
    }
    Ok(ReplicaSecrets {
        cluster,
        replica: body.replica,
        meta,
        policy_bytes,
        signing_key,
        signing_rotations: body
            .signing_rotations
            .as_deref()
            .map(|r| decode("signing_rotations", r))
            .transpose()?,
        kek,
        config,
        verifier: verifier.to_vkey(),
        tls_ca: decode("tls_ca", &body.tls_ca)?,
        tls_cert: decode("tls_cert", &body.tls_cert)?,
        tls_key: Zeroizing::new(decode("tls_key", &body.tls_key)?),
        tokens: decode("tokens", &body.tokens)?,
        client_certs,
    })
}

/// The kept start config: of the file's cluster and replica, pinning the
/// key `policy.txt` pins first for it. Returns it and that verifier.
fn check_config(
    bytes: &[u8],
    body: &SecretsBody,
    policy: &Policy,
) -> Result<(ConfigFile, Verifier), String> {
    let config: ConfigFile =
        serde_json::from_slice(bytes).map_err(|e| format!("config: not a replica config: {e}"))?;
    let checked = ClusterConfig::from_file(&config, Path::new("."))
        .map_err(|(field, reason)| format!("config: {field}: {reason}"))?;
    if format!("{:032x}", checked.cluster) != body.cluster || checked.replica != body.replica {
        return Err(format!(
            "config: describes replica {} of cluster {:032x}, not replica {} of {}",
            checked.replica, checked.cluster, body.replica, body.cluster
        ));
    }
    let verifier = checked.this_replica().verifier.clone();
    if policy.verifiers.get(usize::from(body.replica)) != Some(&verifier) {
        return Err(format!(
            "config: replica {}'s verifier {} is not the one policy.txt pins",
            body.replica,
            verifier.to_vkey()
        ));
    }
    Ok((config, verifier))
}

/// The signing key file's bytes as a signer (the format
/// `crypto::load_signing_key_file` reads: one skey line and a newline).
fn parse_signing_key(bytes: &[u8]) -> Result<Signer, String> {
    let line = std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.strip_suffix('\n'))
        .ok_or("signing_key: not one line of text")?;
    Signer::parse_skey(line).map_err(|e| format!("signing_key: {e}"))
}

/// Lays out a new data directory for the replica whose secrets are in
/// `secrets`, in `data_dir` (absent or empty), or in the data directory of
/// `config` (the config the replica will start with; the secrets must be of
/// its cluster and replica). Writes the identity, KEK access, policy, an
/// empty key store, the TLS material, the token hashes and a start config
/// `<data_dir>/replica.json`; no log, no view state, no data key. On
/// failure, whatever it created is removed again.
pub fn replace_replica(
    secrets_path: &Path,
    data_dir: Option<&Path>,
    config: Option<&Path>,
) -> Result<SecretsSummary, SecretsError> {
    let secrets = read_secrets(secrets_path)?;
    let target = match (data_dir, config) {
        (None, None) => {
            return Err(SecretsError::Refused {
                path: secrets_path.to_path_buf(),
                reason:
                    "give the new data directory (--data-dir) or the replica's config (--config)"
                        .into(),
            });
        }
        (Some(dir), None) => dir.to_path_buf(),
        (dir, Some(config)) => check_against_config(&secrets, secrets_path, config, dir)?,
    };
    check_empty(&target)?;
    let existed = target.exists();
    let result = lay_out(&secrets, &target);
    if result.is_err() {
        crate::init::remove_created(&target, existed);
    }
    let config_path = result?;
    let mut summary = secrets.summary(secrets_path);
    summary.data_dir = Some(target.display().to_string());
    summary.config = Some(config_path.display().to_string());
    Ok(summary)
}

/// Checks the secrets against the config the replica will start with;
/// returns the data directory to lay out (the config's, which `data_dir`
/// must name too when given).
fn check_against_config(
    secrets: &ReplicaSecrets,
    secrets_path: &Path,
    config_path: &Path,
    data_dir: Option<&Path>,
) -> Result<PathBuf, SecretsError> {
    let config = ClusterConfig::load(config_path)?;
    let mismatch = |reason: String| SecretsError::Mismatch {
        path: secrets_path.to_path_buf(),
        reason,
    };
    if config.cluster != secrets.cluster {
        return Err(mismatch(format!(
            "holds the secrets of cluster {:032x}, but {} is of cluster {:032x}",
            secrets.cluster,
            config_path.display(),
            config.cluster
        )));
    }
    if config.replica != secrets.replica {
        return Err(mismatch(format!(
            "holds the secrets of replica {}, but {} starts replica {}",
            secrets.replica,
            config_path.display(),
            config.replica
        )));
    }
    if config.this_replica().verifier.to_vkey() != secrets.verifier {
        return Err(mismatch(format!(
            "pins verifier {} for replica {}, but {} pins {}",
            secrets.verifier,
            secrets.replica,
            config_path.display(),
            config.this_replica().verifier.to_vkey()
        )));
    }
    if let Some(dir) = data_dir
        && std::path::absolute(dir).ok() != std::path::absolute(&config.data_dir).ok()
    {
        return Err(SecretsError::Refused {
            path: dir.to_path_buf(),
            reason: format!(
                "is not the data directory {} names ({})",
                config_path.display(),
                config.data_dir.display()
            ),
        });
    }
    Ok(config.data_dir)
}

/// A random writer epoch in 1..=[`WRITER_EPOCH_MAX`], never `kept` (the
/// epoch of the life the secrets were exported from).
fn fresh_writer_epoch(kept: Option<u32>) -> Result<u32, SecretsError> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| SecretsError::Refused {
        path: PathBuf::from("<random>"),
        reason: format!("no randomness for the writer epoch: {e}"),
    })?;
    let epoch = 1 + u32::from_le_bytes(bytes) % WRITER_EPOCH_MAX;
    Ok(match kept {
        Some(k) if k == epoch => epoch % WRITER_EPOCH_MAX + 1,
        _ => epoch,
    })
}

/// Refuses a target that exists and is not an empty directory: a replica
/// is never laid out over any earlier state of it.
fn check_empty(dir: &Path) -> Result<(), SecretsError> {
    if dir.symlink_metadata().is_err() {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    if entries.next().is_some() {
        return Err(SecretsError::Refused {
            path: dir.to_path_buf(),
            reason: "is not empty; a replica is laid out only into an empty or absent directory \
                     (an earlier data directory, or a copy of one, must never be reused: it \
                     would vote with a state the cluster has moved past)"
                .into(),
        });
    }
    Ok(())
}

/// Writes the new data directory; returns the start config written into it.
/// `vellum.json` goes last, as at init: a directory without it is an
/// unfinished layout, never a replica.
fn lay_out(secrets: &ReplicaSecrets, target: &Path) -> Result<PathBuf, SecretsError> {
    let dir = DataDir::new(target);
    create_dir(target, 0o700)?;
    create_dir(&dir.keys(), 0o700)?;
    if let Some(signing_key) = &secrets.signing_key {
        write(&dir.signing_key(), signing_key, 0o600)?;
    }
    if let Some(rotations) = &secrets.signing_rotations {
        write(
            &dir.keys().join(crypto::SIGNING_ROTATIONS_FILE),
            rotations,
            0o600,
        )?;
    }
    if let Some(kek) = &secrets.kek {
        write(&dir.kek(), kek, 0o600)?;
    }
    write(&dir.policy(), &secrets.policy_bytes, 0o644)?;
    // A new writer identity: this life's nonces and key ids never meet
    // those of the life whose disk was lost (see `NodeMeta::writer_epoch`).
    let meta = NodeMeta {
        writer_epoch: Some(fresh_writer_epoch(secrets.meta.writer_epoch)?),
        ..secrets.meta.clone()
    };
    let kek = crypto::open_kek(meta.kek.as_ref(), &dir.kek())?;
    KeyStore::create(&dir.keys(), kek, meta.writer_id())?;
    let config_path = write_start_config(secrets, target)?;
    let mut meta_text = serde_json::to_string_pretty(&meta).expect("metadata always serializes");
    meta_text.push('\n');
    write(&dir.meta(), meta_text.as_bytes(), 0o644)?;
    // The start config loads against the directory (cluster, replica and
    // signing key agree), as `vellum start` will check it.
    ClusterConfig::load(&config_path)?;
    Ok(config_path)
}

/// Creates a directory with `mode` (see `fsutil::create_dir_with_mode`).
fn create_dir(path: &Path, mode: u32) -> Result<(), SecretsError> {
    crate::fsutil::create_dir_with_mode(path, mode).map_err(io_error(path))
}

/// Writes a new file durably with `mode`; never over an existing one.
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), SecretsError> {
    crate::fsutil::write_durable(path, bytes, mode).map_err(io_error(path))
}

/// Writes the TLS material, the token hashes and the start config
/// `replica.json` (the kept config, its paths pointing into `target`).
fn write_start_config(secrets: &ReplicaSecrets, target: &Path) -> Result<PathBuf, SecretsError> {
    let tls_dir = target.join(TLS_DIR);
    create_dir(&tls_dir, 0o700)?;
    let tls = TlsPaths {
        ca: PathBuf::from(TLS_DIR).join("ca.pem"),
        cert: PathBuf::from(TLS_DIR).join("replica.pem"),
        key: PathBuf::from(TLS_DIR).join("replica.key"),
    };
    write(&target.join(&tls.ca), &secrets.tls_ca, 0o644)?;
    write(&target.join(&tls.cert), &secrets.tls_cert, 0o644)?;
    write(&target.join(&tls.key), &secrets.tls_key, 0o600)?;
    write(&target.join(TOKENS_FILE), &secrets.tokens, 0o600)?;
    let client_certs = match &secrets.client_certs {
        Some((ca, principals)) => {
            let paths = ClientCertPaths {
                ca: PathBuf::from(TLS_DIR).join("client-ca.pem"),
                principals: PathBuf::from(CLIENT_PRINCIPALS_FILE),
            };
            write(&target.join(&paths.ca), ca, 0o644)?;
            write(&target.join(&paths.principals), principals, 0o600)?;
            Some(paths)
        }
        None => None,
    };
    let config = ConfigFile {
        data_dir: PathBuf::from("."),
        tls,
        tokens: PathBuf::from(TOKENS_FILE),
        client_certs,
        ..secrets.config.clone()
    };
    let mut text = serde_json::to_string_pretty(&config).expect("a config file always serializes");
    text.push('\n');
    let config_path = target.join(REPLACED_CONFIG_FILE);
    write(&config_path, text.as_bytes(), 0o644)?;
    Ok(config_path)
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
