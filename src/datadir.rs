//! The layout of a replica's data directory, and its small metadata file.
//!
//! ```text
//! <data>/vellum.json        cluster id, replica index and name (public, not secret)
//! <data>/policy.txt         the trust policy: pinned verifier keys and quorum (public)
//! <data>/segments/          the immutable log (encrypted, hash-chained)
//! <data>/keys/              key store BESIDE the log, never inside it (P6): 0700
//! <data>/keys/kek.key       key-encryption key (file KEK, dev only; 0600; absent
//!                           when vellum.json names a PKCS#11 KEK)
//! <data>/keys/signing.key   this replica's Ed25519 checkpoint signing key (0600)
//! <data>/keys/dek-*.key     wrapped per-stream data keys (0600)
//! <data>/index.sqlite3      the audit index (default backend; a projection of the log)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Version of the data directory layout written in `vellum.json`.
pub const LAYOUT_VERSION: u32 = 1;
/// Low bits of a key-store writer id that hold the replica index (indices
/// are below `vsr::REPLICAS_MAX` = 7 < 8).
pub const WRITER_REPLICA_BITS: u32 = 3;
/// Largest writer epoch: writer ids stay below 2^23, so key ids (writer id
/// shifted by `crypto::KEY_ID_WRITER_SHIFT` = 40) stay below 2^63 and fit
/// the audit index's signed integers.
pub const WRITER_EPOCH_MAX: u32 = (1 << 20) - 1;

/// Paths inside one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Wraps a data directory path (nothing is touched).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Segment files of the log.
    pub fn segments(&self) -> PathBuf {
        self.root.join("segments")
    }

    /// The Merkle tree as C2SP tlog-tiles (`tiles/tile/<L>/<N>[.p/<W>]`),
    /// a cache of the log rebuilt from it when it disagrees.
    pub fn tiles(&self) -> PathBuf {
        self.root.join("tiles")
    }

    /// The key store directory.
    pub fn keys(&self) -> PathBuf {
        self.root.join("keys")
    }

    /// The key-encryption key file.
    pub fn kek(&self) -> PathBuf {
        self.keys().join("kek.key")
    }

    /// This replica's checkpoint signing key.
    pub fn signing_key(&self) -> PathBuf {
        self.keys().join("signing.key")
    }

    /// The trust policy written at init.
    pub fn policy(&self) -> PathBuf {
        self.root.join("policy.txt")
    }

    /// Node metadata.
    pub fn meta(&self) -> PathBuf {
        self.root.join("vellum.json")
    }

    /// The default SQLite audit index.
    pub fn index_sqlite(&self) -> PathBuf {
        self.root.join("index.sqlite3")
    }
}

/// Contents of `vellum.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeMeta {
    /// Layout version, see [`LAYOUT_VERSION`].
    pub layout_version: u32,
    /// The cluster id as 32 lowercase hex digits.
    pub cluster: String,
    /// This replica's index in the cluster (0 for a single replica).
    pub replica: u32,
    /// This replica's key name (used in signature lines).
    pub name: String,
    /// Where the key-encryption key lives; absent: the file `keys/kek.key`
    /// (see `crypto::KekConfig`). Names and paths only, never a PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kek: Option<crate::crypto::KekConfig>,
    /// A replica laid out again by `vellum replace` gets a fresh random
    /// epoch (1 to [`WRITER_EPOCH_MAX`]); absent (0) in its first life. It
    /// is part of the key store's writer id ([`NodeMeta::writer_id`]), so
    /// the nonces and key ids of a replaced replica never repeat those of
    /// an earlier life it cannot remember (its peers' copies of a data key
    /// do not record how far it used them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer_epoch: Option<u32>,
    /// Where the signing key lives; absent: the file `keys/signing.key`
    /// (see `crypto::SigningConfig`). Names and paths only, never a PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing: Option<crate::crypto::SigningConfig>,
}

/// Why the metadata file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid metadata.
    #[error("{path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl NodeMeta {
    /// The cluster id as a number.
    pub fn cluster_id(&self) -> Result<u128, String> {
        if self.cluster.len() != 32 {
            return Err(format!(
                "cluster id must be 32 hex digits, got {:?}",
                self.cluster
            ));
        }
        u128::from_str_radix(&self.cluster, 16).map_err(|e| format!("cluster id is not hex: {e}"))
    }

    /// The key store's writer id (the first 4 bytes of every nonce this
    /// replica makes, and the high bits of every key id it creates): the
    /// replica index in the low [`WRITER_REPLICA_BITS`], the writer epoch
    /// above them. Distinct for distinct replicas, and for two lives of one
    /// replica unless their random epochs collide (2^-20 per pair).
    pub fn writer_id(&self) -> u32 {
        self.replica | (self.writer_epoch.unwrap_or(0) << WRITER_REPLICA_BITS)
    }

    /// Reads and validates `vellum.json`.
    pub fn load(dir: &DataDir) -> Result<NodeMeta, MetaError> {
        let path = dir.meta();
        let text = std::fs::read_to_string(&path).map_err(|source| MetaError::Io {
            path: path.clone(),
            source,
        })?;
        let meta: NodeMeta = serde_json::from_str(&text).map_err(|e| MetaError::Format {
            path: path.clone(),
            reason: format!("not valid metadata: {e}"),
        })?;
        if meta.layout_version != LAYOUT_VERSION {
            return Err(MetaError::Format {
                path,
                reason: format!(
                    "layout version {} is not supported (expected {LAYOUT_VERSION})",
                    meta.layout_version
                ),
            });
        }
        meta.cluster_id().map_err(|reason| MetaError::Format {
            path: path.clone(),
            reason,
        })?;
        let in_range = meta.replica < 1 << WRITER_REPLICA_BITS
            && meta
                .writer_epoch
                .is_none_or(|e| (1..=WRITER_EPOCH_MAX).contains(&e));
        if !in_range {
            return Err(MetaError::Format {
                path,
                reason: format!(
                    "replica {} or writer_epoch {:?} out of range (replica below {}, epoch 1 to {WRITER_EPOCH_MAX})",
                    meta.replica,
                    meta.writer_epoch,
                    1 << WRITER_REPLICA_BITS
                ),
            });
        }
        Ok(meta)
    }

    /// Writes `vellum.json` durably (it is written once, at init).
    pub fn store(&self, dir: &DataDir) -> Result<(), MetaError> {
        let path = dir.meta();
        let text = serde_json::to_string_pretty(self).expect("metadata always serializes");
        crate::fsutil::write_durable(&path, text.as_bytes(), 0o644)
            .map_err(|source| MetaError::Io { path, source })
    }
}

impl NodeMeta {
    /// Replaces `vellum.json` atomically and durably: what a KEK rotation
    /// that moves the KEK to a new token key does (its only change after
    /// init). The new file is a new inode: a process waiting for the
    /// directory lock on the old one reloads the file once it holds the
    /// lock (`LocalLog::open` does).
    pub fn replace(&self, dir: &DataDir) -> Result<(), MetaError> {
        let path = dir.meta();
        let text = serde_json::to_string_pretty(self).expect("metadata always serializes");
        crate::fsutil::replace_durable(&path, text.as_bytes(), 0o644)
            .map_err(|source| MetaError::Io { path, source })
    }

    /// Finishes or undoes a KEK rotation a crash cut short (see
    /// `crypto::recover_kek_rotation`), writing `vellum.json` if the
    /// finished rotation moved the KEK; returns the metadata in force.
    /// Call with the directory's lock held, before opening the key store.
    pub fn recover_kek_rotation(
        self,
        dir: &DataDir,
    ) -> Result<(NodeMeta, crate::crypto::Recovery), crate::crypto::CryptoError> {
        let mut meta = self;
        let keys = dir.keys();
        let kek_file = dir.kek();
        let home = crate::crypto::KeyHome {
            keys_dir: &keys,
            kek_file: &kek_file,
            writer_id: meta.writer_id(),
        };
        let mut written = meta.clone();
        let recovery = crate::crypto::recover_kek_rotation(
            home,
            &mut |config| {
                written.kek = config.cloned();
                written.replace(dir).map_err(|e| meta_io(dir, e))
            },
            &mut crate::crypto::CrashGate::never(),
        )?;
        if let crate::crypto::Recovery::Finished(report) = &recovery {
            meta.kek = report.config.clone();
        }
        Ok((meta, recovery))
    }
}

impl NodeMeta {
    /// Rotates this data directory's KEK (`crypto::rotate_kek`) after
    /// finishing any rotation a crash cut short, writing `vellum.json` when
    /// the KEK moves to a new token key. Call with the directory's lock
    /// held and the replica stopped.
    pub fn rotate_kek(
        self,
        dir: &DataDir,
        new: crate::crypto::NewKek<'_>,
        gate: &mut crate::crypto::CrashGate,
    ) -> Result<crate::crypto::RotationReport, crate::crypto::CryptoError> {
        let (meta, _) = self.recover_kek_rotation(dir)?;
        let keys = dir.keys();
        let kek_file = dir.kek();
        let home = crate::crypto::KeyHome {
            keys_dir: &keys,
            kek_file: &kek_file,
            writer_id: meta.writer_id(),
        };
        let mut written = meta.clone();
        crate::crypto::rotate_kek(
            home,
            meta.kek.as_ref(),
            new,
            &mut |config| {
                written.kek = config.cloned();
                written.replace(dir).map_err(|e| meta_io(dir, e))
            },
            gate,
        )
    }
}

impl DataDir {
    /// Pins `rotation` in this directory's `policy.txt` (checked against
    /// the keys in force before it); nothing when it is pinned already.
    pub fn pin_rotation(
        &self,
        rotation: &vellum_audit::key_history::KeyRotation,
    ) -> Result<(), crate::crypto::CryptoError> {
        let path = self.policy();
        let failed = |reason: String| crate::crypto::CryptoError::format(&path, reason);
        let text =
            std::fs::read_to_string(&path).map_err(|e| crate::crypto::CryptoError::io(&path, e))?;
        let policy =
            vellum_audit::policy::Policy::parse(&text).map_err(|e| failed(e.to_string()))?;
        if policy.rotations.contains(rotation) {
            return Ok(());
        }
        let mut rotations = policy.rotations.clone();
        rotations.push(rotation.clone());
        let pinned = policy
            .with_rotations(rotations)
            .map_err(|e| failed(e.to_string()))?;
        crate::fsutil::replace_durable(&path, pinned.encode().as_bytes(), 0o644)
            .map_err(|e| crate::crypto::CryptoError::io(&path, e))
    }

    /// Finishes or undoes a signing-key rotation a crash cut short (see
    /// `crypto::recover_signing_rotation`). Call with the directory's lock
    /// held, before loading the signing key.
    pub fn recover_signing_rotation(
        &self,
    ) -> Result<crate::crypto::SigningRecovery, crate::crypto::CryptoError> {
        let (keys, key_file) = (self.keys(), self.signing_key());
        let home = crate::crypto::SigningKeyHome {
            keys_dir: &keys,
            key_file: &key_file,
        };
        crate::crypto::recover_signing_rotation(
            home,
            &mut |rotation| self.pin_rotation(rotation),
            &mut crate::crypto::CrashGate::never(),
        )
    }

    /// Rotates this stopped replica's signing key (`crypto::rotate_signing_key`)
    /// so the new key signs from `from_op`, after finishing any rotation a
    /// crash cut short. Call with the directory's lock held.
    pub fn rotate_signing_key(
        &self,
        meta: &NodeMeta,
        from_op: u64,
        gate: &mut crate::crypto::CrashGate,
    ) -> Result<vellum_audit::key_history::KeyRotation, crate::crypto::CryptoError> {
        self.recover_signing_rotation()?;
        let cluster = meta
            .cluster_id()
            .map_err(|reason| crate::crypto::CryptoError::format(self.meta(), reason))?;
        let origin = vellum_audit::checkpoint::origin_for_cluster(cluster);
        let (keys, key_file) = (self.keys(), self.signing_key());
        let home = crate::crypto::SigningKeyHome {
            keys_dir: &keys,
            key_file: &key_file,
        };
        let replica = usize::try_from(meta.replica).expect("a u32 fits in usize");
        crate::crypto::rotate_signing_key(
            home,
            &origin,
            replica,
            from_op,
            &mut |rotation| self.pin_rotation(rotation),
            gate,
        )
    }
}

/// A `vellum.json` write failure as a crypto error (the rotation's).
pub(crate) fn meta_io(dir: &DataDir, error: MetaError) -> crate::crypto::CryptoError {
    crate::crypto::CryptoError::Io {
        path: dir.meta(),
        source: std::io::Error::other(error.to_string()),
    }
}

/// Polling interval while waiting for the data directory lock.
const LOCK_POLL_MS: u64 = 50;

/// An exclusive advisory lock on a data directory (on its `vellum.json`),
/// released when dropped. Two processes writing one log at once would
/// interleave records and break the chain for good, so every open of the
/// log takes it.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Why the data directory lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it (after waiting as long as allowed).
    #[error("{path} is in use by another vellum process")]
    Busy {
        /// The locked file.
        path: PathBuf,
    },
    /// The file could not be opened or locked.
    #[error("{path}: cannot lock: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DataDir {
    /// Takes the directory's lock, waiting up to `wait_ms` for another
    /// process to release it (0: try once).
    pub fn lock(&self, wait_ms: u64) -> Result<DirLock, LockError> {
        let path = self.meta();
        let file = std::fs::File::open(&path).map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(DirLock { _file: file }),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(LOCK_POLL_MS));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(LockError::Busy { path }),
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::Io { path, source });
                }
            }
        }
    }
}
