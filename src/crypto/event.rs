//! Per-event AES-256-GCM encryption (P5).
//!
//! The plaintext inside the AEAD is `salt (32 random bytes) || payload`; the
//! salt is the one the Merkle leaf's hiding commitment uses
//! (`vellum_audit::leaf::commitment`), so it exists only inside the
//! ciphertext and dies with the data key (P6). The associated data
//! `"vellum/event/v1\0" || cluster u128 || stream u64 || stream_offset u64 ||
//! key_id u64` (little-endian) binds the ciphertext to where it belongs: a
//! ciphertext moved to another cluster, stream, offset or key fails to open.
//! Nonces come from `KeyStore::next_nonce` and never repeat under one key.

use aes_gcm::Nonce;
use aes_gcm::aead::AeadInOut as _;
use zeroize::{Zeroize as _, Zeroizing};

use super::CryptoError;
use super::keys::{DataKey, TAG_BYTES, random_fill};

/// Bytes of the per-event salt stored inside the ciphertext.
pub const SALT_BYTES: usize = 32;
/// The largest event plaintext accepted, in bytes: a payload of
/// `EVENT_BYTES_MAX` in the largest encoded envelope.
pub const EVENT_PAYLOAD_BYTES_MAX: usize =
    vellum_audit::record::EVENT_BYTES_MAX + vellum_audit::envelope::ENVELOPE_OVERHEAD_MAX;
/// Bytes a sealed event adds to its payload: the salt and the tag.
pub const SEAL_OVERHEAD_BYTES: usize = SALT_BYTES + TAG_BYTES;

/// Domain tag of the event associated data.
const EVENT_AAD_TAG: &[u8] = b"vellum/event/v1\0";
/// Bytes of the encoded associated data.
const EVENT_AAD_BYTES: usize = 16 + 16 + 8 + 8 + 8;

/// What an event's ciphertext is bound to (authenticated, not encrypted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventAad {
    /// The cluster id.
    pub cluster: u128,
    /// The stream the event belongs to.
    pub stream: u64,
    /// The event's offset within its stream.
    pub stream_offset: u64,
    /// The id of the data key that sealed it.
    pub key_id: u64,
}

impl EventAad {
    /// The little-endian encoding fed to AES-GCM as associated data.
    pub fn encode(&self) -> [u8; EVENT_AAD_BYTES] {
        let mut out = [0u8; EVENT_AAD_BYTES];
        out[..16].copy_from_slice(EVENT_AAD_TAG);
        out[16..32].copy_from_slice(&self.cluster.to_le_bytes());
        out[32..40].copy_from_slice(&self.stream.to_le_bytes());
        out[40..48].copy_from_slice(&self.stream_offset.to_le_bytes());
        out[48..56].copy_from_slice(&self.key_id.to_le_bytes());
        out
    }
}

/// A decrypted event: its commitment salt and its payload (wiped on drop).
#[derive(Debug)]
pub struct OpenedEvent {
    /// The salt of the leaf commitment.
    pub salt: [u8; SALT_BYTES],
    /// The plaintext payload.
    pub payload: Zeroizing<Vec<u8>>,
}

/// A fresh random per-event salt for [`seal_event`] and the leaf commitment.
pub fn random_salt() -> Result<[u8; SALT_BYTES], CryptoError> {
    let mut salt = [0u8; SALT_BYTES];
    random_fill(&mut salt)?;
    Ok(salt)
}

/// Encrypts `salt || payload` under `dek` with `nonce` and `ad`; returns
/// `ciphertext || tag` (`payload.len() + SEAL_OVERHEAD_BYTES` bytes).
///
/// `nonce` must come from `KeyStore::next_nonce` for this key: reusing a
/// nonce under one key breaks AES-GCM.
pub fn seal_event(
    dek: &DataKey,
    nonce: [u8; 12],
    ad: &EventAad,
    salt: &[u8; SALT_BYTES],
    payload: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    if payload.len() > EVENT_PAYLOAD_BYTES_MAX {
        return Err(CryptoError::PayloadTooLarge {
            len: payload.len(),
            max: EVENT_PAYLOAD_BYTES_MAX,
        });
    }
    // The buffer holds plaintext until encrypted in place; capacity for the
    // tag up front so it never reallocates and leaves a plaintext copy behind.
    let mut buffer = Vec::with_capacity(payload.len() + SEAL_OVERHEAD_BYTES);
    buffer.extend_from_slice(salt);
    buffer.extend_from_slice(payload);
    let tag = dek.cipher().encrypt_inout_detached(
        &Nonce::from(nonce),
        &ad.encode(),
        buffer.as_mut_slice().into(),
    );
    match tag {
        Ok(tag) => {
            buffer.extend_from_slice(&tag);
            Ok(buffer)
        }
        Err(_) => {
            buffer.zeroize();
            unreachable!(
                "aes-gcm refuses only inputs beyond 2^36 bytes, far above the payload limit"
            )
        }
    }
}

/// Decrypts an event sealed by [`seal_event`]. Any change to the ciphertext,
/// tag, nonce or associated data, or the wrong key, gives
/// [`CryptoError::Decrypt`] and nothing else.
pub fn open_event(
    dek: &DataKey,
    nonce: &[u8; 12],
    ad: &EventAad,
    sealed: &[u8],
) -> Result<OpenedEvent, CryptoError> {
    let failed = || CryptoError::Decrypt {
        stream: ad.stream,
        offset: ad.stream_offset,
    };
    if sealed.len() < SEAL_OVERHEAD_BYTES {
        return Err(failed());
    }
    let (body, tag) = sealed.split_at(sealed.len() - TAG_BYTES);
    let tag = aes_gcm::Tag::try_from(tag).expect("tag slice is 16 bytes");
    let mut plain = Zeroizing::new(body.to_vec());
    dek.cipher()
        .decrypt_inout_detached(
            &Nonce::from(*nonce),
            &ad.encode(),
            plain.as_mut_slice().into(),
            &tag,
        )
        .map_err(|_| failed())?;
    let mut salt = [0u8; SALT_BYTES];
    salt.copy_from_slice(&plain[..SALT_BYTES]);
    let payload = Zeroizing::new(plain[SALT_BYTES..].to_vec());
    Ok(OpenedEvent { salt, payload })
}
