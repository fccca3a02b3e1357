//! Creating a data directory: cluster id, keys, trust policy, empty log and
//! index. Everything is created durably, and an existing directory is never
//! overwritten.

use std::path::Path;

use vellum_audit::checkpoint::origin_for_cluster;
use vellum_audit::policy::Policy;

use crate::crypto::{
    self, CryptoError, Kek, KekConfig, KeyEncryptionKey, KeyStore, Pkcs11Kek, SigningConfig,
};
use crate::datadir::{DataDir, LAYOUT_VERSION, NodeMeta};
use crate::index::IndexTarget;
use crate::log::{LocalLog, LogError, LogOptions};

/// What `init` created.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// The data directory.
    pub data_dir: String,
    /// The new cluster id (hex).
    pub cluster: String,
    /// The log origin used in checkpoints.
    pub origin: String,
    /// This replica's verifier key (signed-note vkey format).
    pub vkey: String,
    /// The trust policy file.
    pub policy: String,
    /// Where the key-encryption key lives.
    pub kek: String,
    /// Where the signing key lives.
    pub signing: String,
}

/// Creates a one-replica data directory at `path`. It refuses a directory
/// that is initialized or not empty, touching nothing; once it has started
/// creating files, a failure removes everything it created, so the same
/// command can simply be rerun.
pub fn init_data_dir(path: &Path, index_url: Option<&str>) -> Result<InitReport, LogError> {
    init_data_dir_with_kek(path, index_url, None)
}

/// [`init_data_dir`] with the KEK where `kek` says: `None` generates the
/// file KEK `keys/kek.key`; a PKCS#11 config uses the key with that label
/// on the token, generating it there (never extractable) if it is absent,
/// and records the config in `vellum.json`.
pub fn init_data_dir_with_kek(
    path: &Path,
    index_url: Option<&str>,
    kek: Option<&KekConfig>,
) -> Result<InitReport, LogError> {
    init_data_dir_with_keys(path, index_url, kek, None)
}

/// [`init_data_dir_with_kek`] with the signing key where `signing` says:
/// `None` generates the file `keys/signing.key`; a PKCS#11 config uses the
/// Ed25519 pair with that label on the token, generating it there (never
/// extractable) if it is absent, and records the config in `vellum.json`.
pub fn init_data_dir_with_keys(
    path: &Path,
    index_url: Option<&str>,
    kek: Option<&KekConfig>,
    signing: Option<&SigningConfig>,
) -> Result<InitReport, LogError> {
    IndexTarget::parse(index_url, path).map_err(|e| LogError::DataDir(e.to_string()))?;
    check_target(path)?;
    let existed = path.exists();
    let result = create(path, index_url, kek, signing);
    if result.is_err() {
        remove_created(path, existed);
    }
    result
}

/// Removes what a failed init created: the directory itself or, when it
/// existed before (and was empty, as `check_target` made sure), its contents.
pub(crate) fn remove_created(path: &Path, existed: bool) {
    if !existed {
        let _ = std::fs::remove_dir_all(path);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let child = entry.path();
            let _ = if child.is_dir() {
                std::fs::remove_dir_all(&child)
            } else {
                std::fs::remove_file(&child)
            };
        }
    }
}

fn create(
    path: &Path,
    index_url: Option<&str>,
    kek_config: Option<&KekConfig>,
    signing_config: Option<&SigningConfig>,
) -> Result<InitReport, LogError> {
    let dir = DataDir::new(path);
    let io = |what: &str, e: std::io::Error| LogError::DataDir(format!("{what}: {e}"));
    std::fs::create_dir_all(path).map_err(|e| io(&path.display().to_string(), e))?;
    crate::fsutil::create_dir_with_mode(&dir.keys(), 0o700)
        .map_err(|e| io(&dir.keys().display().to_string(), e))?;

    let cluster = random_cluster_id()?;
    let name = format!("vellum-{:08x}-r0", (cluster >> 96) as u32);
    let kek = open_or_generate_kek(kek_config, &dir.kek())?;
    let kek_description = kek.describe();
    KeyStore::create(&dir.keys(), kek, 0)?;
    let signer = crypto::create_signer(signing_config, &dir.signing_key(), &name)?;
    let origin = origin_for_cluster(cluster);
    let policy = Policy::new(&origin, vec![signer.verifier()], 1)
        .map_err(|e| LogError::DataDir(format!("trust policy: {e}")))?;
    crate::fsutil::write_durable(&dir.policy(), policy.encode().as_bytes(), 0o644)
        .map_err(|e| io(&dir.policy().display().to_string(), e))?;
    let meta = NodeMeta {
        layout_version: LAYOUT_VERSION,
        cluster: format!("{cluster:032x}"),
        replica: 0,
        name,
        kek: kek_config.cloned(),
        writer_epoch: None,
        signing: signing_config.cloned(),
    };
    meta.store(&dir)
        .map_err(|e| LogError::DataDir(e.to_string()))?;

    let options = LogOptions {
        index_url: index_url.map(str::to_string),
        ..LogOptions::default()
    };
    let (log, _) = LocalLog::open(path, options)?;
    log.close()?;
    Ok(InitReport {
        data_dir: path.display().to_string(),
        cluster: meta.cluster,
        origin,
        vkey: signer.verifier().to_vkey(),
        policy: dir.policy().display().to_string(),
        kek: kek_description,
        signing: crypto::describe_signer(signing_config, &dir.signing_key()),
    })
}

/// The new data directory's KEK: a fresh file, or the token's key (made on
/// the token if no key carries the label yet).
pub(crate) fn open_or_generate_kek(
    config: Option<&KekConfig>,
    kek_file: &Path,
) -> Result<Box<dyn KeyEncryptionKey>, CryptoError> {
    match config {
        None => Ok(Box::new(Kek::create_file(kek_file)?)),
        Some(KekConfig::Pkcs11(pkcs11)) => Ok(Box::new(Pkcs11Kek::open_or_generate(pkcs11)?)),
    }
}

/// Refuses an initialized or non-empty target before anything is created.
fn check_target(path: &Path) -> Result<(), LogError> {
    let dir = DataDir::new(path);
    if dir.meta().exists() {
        return Err(LogError::DataDir(format!(
            "{} is already initialized (found {}); refusing to overwrite it",
            path.display(),
            dir.meta().display()
        )));
    }
    // vellum.json is written last of the files that define the directory,
    // so a directory without it that holds anything is an init that stopped
    // part-way (it can hold no events): say so instead of guessing.
    if std::fs::read_dir(path).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(LogError::DataDir(format!(
            "{} exists, is not empty and has no vellum.json: not a data directory, or an earlier init \
             stopped part-way (which stores no events); choose an empty directory, or remove it and run init again",
            path.display()
        )));
    }
    Ok(())
}

fn random_cluster_id() -> Result<u128, LogError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|e| LogError::DataDir(format!("no randomness for the cluster id: {e}")))?;
    Ok(u128::from_le_bytes(bytes))
}
