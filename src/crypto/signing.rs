//! The replica's Ed25519 signing key behind one narrow trait
//! (`vellum_audit::note::NoteSigner`), so the replica does not care where
//! the key lives: in a file (the default, for `vellum dev`, the demo and
//! tests) or in a PKCS#11 token (`Pkcs11Signer`, where the seed never
//! leaves the token). Which one is written at init in `vellum.json`
//! ([`SigningConfig`]); no entry means the file `keys/signing.key`.
//!
//! The file is the C2SP signer-key encoding
//! `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>\n`, created 0600 and
//! refused on load if group or others may read it. The encoding itself is
//! defined once, in `vellum_audit::note`.

use std::path::Path;
use std::sync::Arc;

use vellum_audit::note::{NoteSigner, Signer};
use zeroize::Zeroizing;

use super::error::{HsmFailure, HsmRole};
use super::kek::Pkcs11Config;
use super::keys::{KEY_BYTES, random_fill};
use super::pkcs11_signing::Pkcs11Signer;
use super::{CryptoError, fsutil};

/// A replica's signing key, wherever it lives; shared by the VSR core (which
/// signs checkpoints) and the shell (one-replica certificates, manifests).
pub type ReplicaSigner = Arc<dyn NoteSigner>;

/// Where a replica's signing key lives, as written in `vellum.json` under
/// `"signing"`. Absent: the file `keys/signing.key`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SigningConfig {
    /// An Ed25519 key pair inside a PKCS#11 token (`key_label` names both
    /// halves).
    Pkcs11(Pkcs11Config),
}

/// Opens the signing key `config` names (called `name` in signature lines),
/// or the key file `key_file` when it names none. The one place that
/// chooses the implementation.
pub fn open_signer(
    config: Option<&SigningConfig>,
    key_file: &Path,
    name: &str,
) -> Result<ReplicaSigner, CryptoError> {
    match config {
        None => Ok(Arc::new(load_signing_key_file(key_file)?)),
        Some(SigningConfig::Pkcs11(pkcs11)) => Ok(Arc::new(Pkcs11Signer::open(pkcs11, name)?)),
    }
}

/// Where the signing key lives, for errors and reports (no key material).
pub fn describe_signer(config: Option<&SigningConfig>, key_file: &Path) -> String {
    match config {
        None => format!("key file {}", key_file.display()),
        Some(SigningConfig::Pkcs11(pkcs11)) => format!(
            "pkcs11 token {:?} key {:?}",
            pkcs11.token_label, pkcs11.key_label
        ),
    }
}

/// A new replica's signing key named `name`: a fresh key file at
/// `key_file`, or the token's pair (generated there if no key carries the
/// label yet).
pub fn create_signer(
    config: Option<&SigningConfig>,
    key_file: &Path,
    name: &str,
) -> Result<ReplicaSigner, CryptoError> {
    match config {
        None => Ok(Arc::new(create_signing_key_file(key_file, name)?)),
        Some(SigningConfig::Pkcs11(pkcs11)) => {
            Ok(Arc::new(Pkcs11Signer::open_or_generate(pkcs11, name)?))
        }
    }
}

/// Largest signing key file accepted, in bytes (a key line is ~100 bytes).
const SIGNING_KEY_FILE_BYTES_MAX: u64 = 4096;

/// Moves the file signing key `key_file` into the token
/// `config` names, then destroys the file: the key is imported as a
/// sensitive, non-extractable pair ([`Pkcs11Signer::import`]) or, when the
/// token holds a pair with the label already (a move a crash cut short),
/// that pair is used if it is the same key. `persist` records the new home
/// (`vellum.json`) before the file is destroyed, so at every point one of
/// the two holds the key in force. Returns the key, now on the token.
pub fn move_signing_key_to_token(
    key_file: &Path,
    config: &Pkcs11Config,
    persist: impl FnOnce(SigningConfig) -> Result<(), CryptoError>,
) -> Result<ReplicaSigner, CryptoError> {
    let file_signer = load_signing_key_file(key_file)?;
    let name = file_signer.name();
    let token_signer = match Pkcs11Signer::open(config, name) {
        Ok(found) => found,
        Err(CryptoError::Hsm {
            failure: HsmFailure::SigningKeyNotFound,
            ..
        }) => {
            let seed = Zeroizing::new(file_signer.to_seed());
            Pkcs11Signer::import(config, name, &seed)?
        }
        Err(other) => return Err(other),
    };
    if NoteSigner::verifier(&token_signer) != file_signer.verifier() {
        return Err(CryptoError::Hsm {
            role: HsmRole::Signing,
            module: config.module.clone(),
            token: config.token_label.clone(),
            key: config.key_label.clone(),
            failure: HsmFailure::KeyExists,
        });
    }
    persist(SigningConfig::Pkcs11(config.clone()))?;
    fsutil::overwrite_and_remove(key_file)?;
    tracing::info!(key_file = %key_file.display(), token = %config.token_label, key = %config.key_label, "moved the signing key into the pkcs11 token");
    Ok(Arc::new(token_signer))
}

/// Generates an Ed25519 key named `name` and writes it to a new 0600 file at
/// `path`, durably. Refuses to overwrite an existing file.
pub fn create_signing_key_file(path: &Path, name: &str) -> Result<Signer, CryptoError> {
    let mut seed = Zeroizing::new([0u8; KEY_BYTES]);
    random_fill(seed.as_mut())?;
    let signer = Signer::from_seed(name, *seed)
        .map_err(|e| CryptoError::format(path, format!("cannot create signing key: {e}")))?;
    let mut line = Zeroizing::new(signer.to_skey());
    line.push('\n');
    fsutil::create_new_private(path, line.as_bytes())?;
    tracing::info!(path = %path.display(), name, "created signing key file");
    Ok(signer)
}

/// Loads a signing key file written by [`create_signing_key_file`].
pub fn load_signing_key_file(path: &Path) -> Result<Signer, CryptoError> {
    fsutil::check_private(path)?;
    let length = std::fs::metadata(path)
        .map_err(|e| CryptoError::io(path, e))?
        .len();
    if length > SIGNING_KEY_FILE_BYTES_MAX {
        return Err(CryptoError::format(
            path,
            format!("file is {length} bytes, more than {SIGNING_KEY_FILE_BYTES_MAX}"),
        ));
    }
    let contents = fsutil::read_private(path)?;
    let text = std::str::from_utf8(&contents)
        .map_err(|e| CryptoError::format(path, format!("not utf-8 at byte {}", e.valid_up_to())))?;
    let line = text.strip_suffix('\n').ok_or_else(|| {
        CryptoError::format(
            path,
            format!("missing final newline at byte {}", text.len()),
        )
    })?;
    Signer::parse_skey(line).map_err(|e| CryptoError::format(path, e.to_string()))
}
