//! Key types: the key-encryption key (KEK) that wraps every data key, and the
//! per-stream data key (DEK) that encrypts events. Both are zeroized on drop
//! and never print their bytes.
//!
//! A DEK is wrapped with AES-256-GCM under the KEK, with associated data
//! `"vellum/dek-wrap/v1\0" || key_id u64 LE || stream u64 LE`, so a wrapped
//! key moved to another key id or stream fails to unwrap.

use std::fmt;
use std::path::Path;

use aes_gcm::aead::{AeadInOut as _, KeyInit as _};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use zeroize::{Zeroize as _, ZeroizeOnDrop, Zeroizing};

use super::{CryptoError, fsutil};

/// Bytes of a KEK or DEK (AES-256).
pub const KEY_BYTES: usize = 32;
/// Bytes of an AES-GCM nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes of an AES-GCM tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of a wrapped DEK: ciphertext of the 32 key bytes, then the tag.
pub const WRAPPED_KEY_BYTES: usize = KEY_BYTES + TAG_BYTES;

/// Domain tag of the DEK-wrapping associated data.
const WRAP_AAD_TAG: &[u8] = b"vellum/dek-wrap/v1\0";
/// First token of a KEK file line.
const KEK_FILE_TAG: &str = "vellum-kek-v1";

/// Fills `buf` from the operating system's random number generator.
pub(crate) fn random_fill(buf: &mut [u8]) -> Result<(), CryptoError> {
    getrandom::fill(buf).map_err(|e| CryptoError::Random(e.to_string()))
}

/// The key-encryption key: wraps every data key of one key store.
pub struct Kek {
    cipher: Aes256Gcm,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl ZeroizeOnDrop for Kek {}

impl Kek {
    /// A KEK from raw bytes (the caller wipes its copy).
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> Kek {
        Kek {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A fresh random KEK.
    pub fn generate() -> Result<Kek, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        random_fill(bytes.as_mut())?;
        Ok(Kek::from_bytes(&bytes))
    }

    /// Generates a KEK and writes it to a new 0600 file `path` as one line
    /// `vellum-kek-v1 <base64>\n`, durably. Refuses to overwrite.
    pub fn create_file(path: &Path) -> Result<Kek, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        random_fill(bytes.as_mut())?;
        let line = Zeroizing::new(format!(
            "{KEK_FILE_TAG} {}\n",
            BASE64.encode(bytes.as_ref())
        ));
        fsutil::create_new_private(path, line.as_bytes())?;
        tracing::info!(path = %path.display(), "created key-encryption key file");
        Ok(Kek::from_bytes(&bytes))
    }

    /// Loads a KEK file written by [`Kek::create_file`], refusing it if group
    /// or others may read it.
    pub fn load_file(path: &Path) -> Result<Kek, CryptoError> {
        let contents = fsutil::read_private(path)?;
        let bytes =
            parse_kek_line(&contents).map_err(|reason| CryptoError::format(path, reason))?;
        Ok(Kek::from_bytes(&bytes))
    }

    /// Wraps `dek` for `key_id` of `stream` under this KEK with a fresh random
    /// nonce. Returns the nonce and `ciphertext || tag`.
    ///
    /// A random 96-bit nonce is safe here, unlike for events: a KEK wraps one
    /// key per stream (plus rotations), far below the 2^32 messages NIST SP
    /// 800-38D allows per key with random nonces, and wraps are not on a path
    /// where a persisted counter would be worth its crash-safety machinery.
    pub fn wrap(
        &self,
        dek: &DataKey,
        key_id: u64,
        stream: u64,
    ) -> Result<([u8; NONCE_BYTES], [u8; WRAPPED_KEY_BYTES]), CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        random_fill(&mut nonce)?;
        let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
        wrapped[..KEY_BYTES].copy_from_slice(dek.bytes.as_ref());
        let (body, tag_out) = wrapped.split_at_mut(KEY_BYTES);
        let tag = self
            .cipher
            .encrypt_inout_detached(&Nonce::from(nonce), &wrap_aad(key_id, stream), body.into())
            .expect("aes-gcm encrypts 32 bytes with 35 bytes of associated data");
        tag_out.copy_from_slice(&tag);
        Ok((nonce, wrapped))
    }

    /// Unwraps a DEK wrapped by [`Kek::wrap`] for the same key id and stream.
    /// `None` when it does not authenticate (wrong KEK, tampering, or a
    /// different key id or stream).
    pub fn unwrap(
        &self,
        nonce: &[u8; NONCE_BYTES],
        wrapped: &[u8; WRAPPED_KEY_BYTES],
        key_id: u64,
        stream: u64,
    ) -> Option<DataKey> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        bytes.copy_from_slice(&wrapped[..KEY_BYTES]);
        let tag = aes_gcm::Tag::try_from(&wrapped[KEY_BYTES..]).expect("tag slice is 16 bytes");
        self.cipher
            .decrypt_inout_detached(
                &Nonce::from(*nonce),
                &wrap_aad(key_id, stream),
                bytes.as_mut_slice().into(),
                &tag,
            )
            .ok()?;
        Some(DataKey::from_bytes(&bytes))
    }

    /// The AES-GCM tag of an empty message under `nonce` and `aad`: the key
    /// store's KEK check value, which proves the KEK without revealing it.
    pub(crate) fn empty_message_tag(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
    ) -> [u8; TAG_BYTES] {
        self.cipher
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, (&mut [][..]).into())
            .expect("aes-gcm encrypts an empty message")
            .into()
    }
}

/// The associated data of a wrapped DEK: binds it to its key id and stream.
pub(crate) fn wrap_aad(key_id: u64, stream: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(WRAP_AAD_TAG.len() + 16);
    aad.extend_from_slice(WRAP_AAD_TAG);
    aad.extend_from_slice(&key_id.to_le_bytes());
    aad.extend_from_slice(&stream.to_le_bytes());
    aad
}

/// Parses `vellum-kek-v1 <base64 32 bytes>\n`; the error says what and where.
fn parse_kek_line(contents: &[u8]) -> Result<Zeroizing<[u8; KEY_BYTES]>, String> {
    let text = std::str::from_utf8(contents)
        .map_err(|e| format!("not utf-8 at byte {}", e.valid_up_to()))?;
    let line = text
        .strip_suffix('\n')
        .ok_or_else(|| format!("line 1: missing final newline at byte {}", text.len()))?;
    if line.contains('\n') {
        return Err("line 2: a kek file holds exactly one line".to_string());
    }
    let encoded = line
        .strip_prefix(KEK_FILE_TAG)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| format!("line 1, byte 0: expected \"{KEK_FILE_TAG} <base64>\""))?;
    let at = KEK_FILE_TAG.len() + 1;
    let decoded = Zeroizing::new(
        BASE64
            .decode(encoded)
            .map_err(|_| format!("line 1, byte {at}: invalid base64"))?,
    );
    if decoded.len() != KEY_BYTES {
        return Err(format!(
            "line 1, byte {at}: key is {} bytes, expected {KEY_BYTES}",
            decoded.len()
        ));
    }
    let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
    bytes.copy_from_slice(&decoded);
    Ok(bytes)
}

/// One stream's data-encryption key. Zeroized on drop; never printed.
pub struct DataKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
    cipher: Aes256Gcm,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl ZeroizeOnDrop for DataKey {}

impl DataKey {
    /// A DEK from raw bytes (the caller wipes its copy).
    pub fn from_bytes(bytes: &[u8; KEY_BYTES]) -> DataKey {
        DataKey {
            bytes: Zeroizing::new(*bytes),
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// A fresh random DEK.
    pub fn generate() -> Result<DataKey, CryptoError> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        random_fill(bytes.as_mut())?;
        let key = DataKey::from_bytes(&bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The AES-GCM instance keyed with this DEK.
    pub(crate) fn cipher(&self) -> &Aes256Gcm {
        &self.cipher
    }

    /// The raw key bytes, for keys derived from this one inside `crypto`
    /// (the request digest's MAC key) and for a token to wrap.
    pub(super) fn secret(&self) -> &[u8; KEY_BYTES] {
        &self.bytes
    }
}
