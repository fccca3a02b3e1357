//! Encryption at rest (P5) and crypto-shredding (P6).
//!
//! - `event`: AES-256-GCM per event, associated data binding cluster, stream,
//!   offset and key id; the plaintext inside the AEAD is `salt || payload`,
//!   where the salt feeds the Merkle leaf's hiding commitment.
//! - `keys`: the file key-encryption key (KEK) and per-stream data keys (DEKs).
//! - `kek`: the KEK behind one trait, and the choice of where it lives.
//! - `pkcs11`: the KEK inside a PKCS#11 token (an HSM), never leaving it.
//! - `store`: the key store in `<data_dir>/keys/`, beside the log and never
//!   inside it: wrapped DEKs, crash-safe nonce reservation, shredding.
//! - `rotate`: KEK rotation (every DEK rewrapped, the old KEK destroyed),
//!   journaled so a crash at any step finishes or undoes it.
//! - `signing`: the replica's Ed25519 signing key behind one trait, and its
//!   file (the default).
//! - `pkcs11_signing`: the signing key inside a PKCS#11 token (`CKM_EDDSA`),
//!   never leaving it.
//! - `signing_rotation`: a stopped replica's move to a new signing key (the
//!   announcement both keys sign, pinned in its policy, the old key
//!   destroyed), journaled like `rotate`.
//! - `digest`: the keyed request digest the VSR client table keeps, under a
//!   key derived from the stream's DEK (so shredding covers it too).
//!
//! Nothing here logs a payload or a key; tracing carries ids only.

mod digest;
mod error;
mod event;
pub(crate) mod fsutil;
mod kek;
mod keys;
mod pkcs11;
mod pkcs11_signing;
mod record;
mod rotate;
mod signing;
mod signing_rotation;
mod store;

pub use digest::{REQUEST_DIGEST_BYTES, REQUEST_DIGEST_TAG, RequestDigestKey, request_digest};
pub use error::{CryptoError, HsmFailure, HsmRole};
pub use event::{
    EVENT_PAYLOAD_BYTES_MAX, EventAad, OpenedEvent, SALT_BYTES, SEAL_OVERHEAD_BYTES, open_event,
    random_salt, seal_event,
};
pub use kek::{KekConfig, KeyEncryptionKey, Pkcs11Config, open_kek};
pub use keys::{DataKey, KEY_BYTES, Kek, NONCE_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES};
pub use pkcs11::Pkcs11Kek;
pub use pkcs11_signing::Pkcs11Signer;
pub use rotate::{
    CrashGate, KeyHome, NEXT_KEK_FILE, NewKek, PersistKekConfig, ROTATED_RECORDS_FILE,
    ROTATED_RECORDS_MAX, ROTATION_JOURNAL_FILE, ROTATION_STAGING_DIR, Recovery, RotatedRecord,
    RotationReport, clear_rotation_records, kek_fingerprint, pending_rotation_records,
    recover_kek_rotation, rotate_kek,
};
pub use signing::{
    ReplicaSigner, SigningConfig, create_signer, create_signing_key_file, describe_signer,
    load_signing_key_file, move_signing_key_to_token, open_signer,
};
pub use signing_rotation::{
    NEXT_SIGNING_KEY_FILE, PinRotation, SIGNING_ROTATION_JOURNAL_FILE, SIGNING_ROTATIONS_FILE,
    SIGNING_ROTATIONS_LOGGED_FILE, SIGNING_ROTATIONS_MAX, SigningKeyHome, SigningRecovery,
    pending_signing_announcements, recover_signing_rotation, rotate_signing_key,
    signing_announcements_logged, signing_rotations,
};

/// Refuses a key file or directory that group or others may access (the key
/// store's own check, for callers that read keys outside the store).
pub(crate) use fsutil::check_private;
pub use store::{DEK_CACHE_MAX_DEFAULT, KEYS_PER_STREAM_MAX, KeyStore, NONCE_BLOCK};
