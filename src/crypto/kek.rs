//! The key-encryption key behind one narrow trait, so the key store does not
//! care where the KEK lives: in a file (`Kek`, for `vellum dev`, the demo and
//! tests) or in a PKCS#11 token (`Pkcs11Kek`, where the key never leaves
//! the token). Which one a replica uses is written at init in `vellum.json`
//! ([`KekConfig`]); no entry means the file KEK `keys/kek.key`.
//!
//! Both implementations produce the same wrapped-DEK bytes: AES-256-GCM with
//! a 96-bit nonce and the associated data of `keys` (`"vellum/dek-wrap/v1\0"
//! || key_id || stream`), so the key file format (docs/format.md, "The key
//! store") does not depend on where the KEK lives.

use std::fmt;
use std::path::{Path, PathBuf};

use super::CryptoError;
use super::keys::{DataKey, Kek, NONCE_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES};
use super::pkcs11::Pkcs11Kek;

/// A key-encryption key: wraps and unwraps data keys, and proves itself to
/// the key store's marker without revealing anything.
pub trait KeyEncryptionKey: Send + Sync + fmt::Debug {
    /// Where the key lives, for log lines and errors (never key material).
    fn describe(&self) -> String;

    /// Wraps `dek` for `key_id` of `stream` with a fresh random nonce:
    /// returns the nonce and `ciphertext || tag`.
    fn wrap_dek(
        &self,
        dek: &DataKey,
        key_id: u64,
        stream: u64,
    ) -> Result<([u8; NONCE_BYTES], [u8; WRAPPED_KEY_BYTES]), CryptoError>;

    /// Unwraps a DEK wrapped for the same key id and stream: `Ok(None)` when
    /// it does not authenticate (wrong KEK, a changed byte, another key id or
    /// stream), `Err` when the KEK could not be asked (e.g. the token failed).
    fn unwrap_dek(
        &self,
        nonce: &[u8; NONCE_BYTES],
        wrapped: &[u8; WRAPPED_KEY_BYTES],
        key_id: u64,
        stream: u64,
    ) -> Result<Option<DataKey>, CryptoError>;

    /// The AES-GCM tag of an empty message with the key store's check
    /// associated data under `nonce`: the marker's KEK check value.
    fn check_tag(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
    ) -> Result<[u8; TAG_BYTES], CryptoError>;
}

impl KeyEncryptionKey for Kek {
    fn describe(&self) -> String {
        "file key-encryption key".to_string()
    }

    fn wrap_dek(
        &self,
        dek: &DataKey,
        key_id: u64,
        stream: u64,
    ) -> Result<([u8; NONCE_BYTES], [u8; WRAPPED_KEY_BYTES]), CryptoError> {
        self.wrap(dek, key_id, stream)
    }

    fn unwrap_dek(
        &self,
        nonce: &[u8; NONCE_BYTES],
        wrapped: &[u8; WRAPPED_KEY_BYTES],
        key_id: u64,
        stream: u64,
    ) -> Result<Option<DataKey>, CryptoError> {
        Ok(self.unwrap(nonce, wrapped, key_id, stream))
    }

    fn check_tag(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
    ) -> Result<[u8; TAG_BYTES], CryptoError> {
        Ok(self.empty_message_tag(nonce, aad))
    }
}

impl From<Kek> for Box<dyn KeyEncryptionKey> {
    fn from(kek: Kek) -> Self {
        Box::new(kek)
    }
}

impl From<Pkcs11Kek> for Box<dyn KeyEncryptionKey> {
    fn from(kek: Pkcs11Kek) -> Self {
        Box::new(kek)
    }
}

/// Where a replica's KEK lives, as written in `vellum.json` under `"kek"`.
/// Absent: the file `keys/kek.key`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum KekConfig {
    /// An AES-256 key inside a PKCS#11 token.
    Pkcs11(Pkcs11Config),
}

/// How to reach a KEK in a PKCS#11 token. Holds no secret: the PIN comes
/// from a private file or an environment variable named here.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The token vendor's PKCS#11 module (a shared library).
    pub module: PathBuf,
    /// The token's label (`CKA_LABEL` of the token, as `softhsm2-util
    /// --show-slots` prints it).
    pub token_label: String,
    /// The AES key's label on the token.
    pub key_label: String,
    /// A file (0600) holding the user PIN, one line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_env: Option<String>,
}

impl fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only names and paths: the PIN is never held here.
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("key_label", &self.key_label)
            .field("pin_file", &self.pin_file)
            .field("pin_env", &self.pin_env)
            .finish()
    }
}

/// Opens the KEK `config` names, or the file KEK `kek_file` when it names
/// none. The one place that chooses the implementation.
pub fn open_kek(
    config: Option<&KekConfig>,
    kek_file: &Path,
) -> Result<Box<dyn KeyEncryptionKey>, CryptoError> {
    match config {
        None => Ok(Box::new(Kek::load_file(kek_file)?)),
        Some(KekConfig::Pkcs11(pkcs11)) => Ok(Box::new(Pkcs11Kek::open(pkcs11)?)),
    }
}
