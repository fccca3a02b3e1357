//! The one error type of `vellum::crypto`: what went wrong, and where (a file
//! path, a stream and offset, or a key id). Messages never contain key bytes
//! or payload bytes.

use std::path::PathBuf;

/// Why a crypto or key-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// A file-system operation on `path` failed.
    #[error("i/o error on {}: {source}", path.display())]
    Io {
        /// The file or directory being read or written.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A secret file or the key directory is readable or writable by group or
    /// others; it is refused rather than used.
    #[error(
        "insecure permissions {perms:04o} on {path}: secret files must be private to their owner \
         (fix: chmod {fix} {path})",
        path = path.display(),
        perms = mode & 0o7777,
        fix = if mode & 0o170000 == 0o040000 { "700" } else { "600" }
    )]
    InsecurePermissions {
        /// The refused file or directory.
        path: PathBuf,
        /// Its full `st_mode` (file type and permission bits).
        mode: u32,
    },
    /// An event did not authenticate: wrong key, or ciphertext, tag, nonce or
    /// associated data changed. Deliberately says nothing more.
    #[error("authentication failed for event at stream {stream} offset {offset}")]
    Decrypt {
        /// The stream named in the associated data.
        stream: u64,
        /// The stream offset named in the associated data.
        offset: u64,
    },
    /// A wrapped data key did not authenticate under this KEK: the wrong KEK
    /// or a tampered key file.
    #[error("cannot unwrap data key {key_id} from {}: wrong key-encryption key or tampered key file", path.display())]
    Unwrap {
        /// The key file.
        path: PathBuf,
        /// The key id the file claims.
        key_id: u64,
    },
    /// The key store was created with a different KEK.
    #[error("key-encryption key does not match the key store at {}: wrong KEK file or token key?", path.display())]
    WrongKek {
        /// The key store's marker file.
        path: PathBuf,
    },
    /// No data key with this id exists in the store.
    #[error("data key {0} not found")]
    KeyNotFound(u64),
    /// The stream's keys were destroyed by `vellum shred`; its events can
    /// never be decrypted again.
    #[error("stream {stream} was shredded: its data keys are destroyed")]
    Shredded {
        /// The shredded stream.
        stream: u64,
    },
    /// A key-store file is malformed or corrupt.
    #[error("malformed file {}: {reason}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong and where in the file.
        reason: String,
    },
    /// A key store, key or key file already exists where a new one was asked for.
    #[error("{} already exists; refusing to overwrite it", path.display())]
    AlreadyExists {
        /// The existing path.
        path: PathBuf,
    },
    /// The 64-bit nonce counter of a data key is used up (rotate the key).
    #[error("nonce counter of data key {key_id} is exhausted; rotate the stream's key")]
    NonceExhausted {
        /// The key whose counter ran out.
        key_id: u64,
    },
    /// A payload larger than [`crate::crypto::EVENT_PAYLOAD_BYTES_MAX`].
    #[error("event payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An earlier write of the key store failed (e.g. fsync); it refuses all
    /// further work until reopened, because the state on disk is unknown.
    #[error("key store at {} stopped after a failed write; reopen it", path.display())]
    StoreFailed {
        /// The key store directory.
        path: PathBuf,
    },
    /// A stream already has the most keys one stream may have.
    #[error("stream {stream} already has {max} data keys, the limit")]
    TooManyKeys {
        /// The stream.
        stream: u64,
        /// The limit.
        max: usize,
    },
    /// The PKCS#11 token holding the KEK or the signing key could not be
    /// used. Names the key's role, module, token and key label; never the PIN.
    #[error(
        "pkcs11 {role} (module {}, token {token:?}, key {key:?}): {failure}",
        module.display()
    )]
    Hsm {
        /// Which key the token was asked for.
        role: HsmRole,
        /// The PKCS#11 module (shared library) path.
        module: PathBuf,
        /// The token label asked for.
        token: String,
        /// The key label asked for.
        key: String,
        /// What went wrong.
        failure: HsmFailure,
    },
    /// The operating system's random number generator failed.
    #[error("operating system random number generator failed: {0}")]
    Random(String),
    /// A KEK rotation was interrupted (its journal is present): the store
    /// is not opened until the rotation is finished or rolled back
    /// (`crypto::recover_kek_rotation`, which every replica start runs).
    #[error(
        "an interrupted key-encryption key rotation ({}) must be finished first: start the replica or run `vellum keys rotate-kek --recover-only`",
        journal.display()
    )]
    RotationInterrupted {
        /// The rotation journal.
        journal: PathBuf,
    },
    /// A KEK rotation was refused before it changed anything.
    #[error("kek rotation refused: {0}")]
    RotationRefused(String),
}

impl CryptoError {
    /// An [`CryptoError::Io`] for `path`.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        CryptoError::Io {
            path: path.into(),
            source,
        }
    }

    /// A [`CryptoError::Format`] for `path`.
    pub(crate) fn format(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        CryptoError::Format {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// Which of a replica's keys a PKCS#11 error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsmRole {
    /// The key-encryption key (`crypto::Pkcs11Kek`).
    Kek,
    /// The replica's Ed25519 signing key (`crypto::Pkcs11Signer`).
    Signing,
}

impl std::fmt::Display for HsmRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HsmRole::Kek => "key-encryption key",
            HsmRole::Signing => "signing key",
        })
    }
}

/// What went wrong with a PKCS#11 token (see [`CryptoError::Hsm`]).
#[derive(Debug, thiserror::Error)]
pub enum HsmFailure {
    /// The module could not be loaded (wrong path, not a PKCS#11 library).
    #[error("cannot load the pkcs11 module: {0}")]
    Module(String),
    /// No slot holds a token with this label.
    #[error("no token with this label is present (tokens present: {present:?})")]
    TokenNotFound {
        /// The labels of the tokens that are present (public names).
        present: Vec<String>,
    },
    /// The user PIN could not be read from where the config says.
    #[error("cannot read the user pin: {0}")]
    PinUnavailable(String),
    /// The token refused the user PIN.
    #[error("the token refused the user pin ({source_of_pin}): incorrect pin")]
    PinIncorrect {
        /// Where the PIN came from (a file path or a variable name).
        source_of_pin: String,
    },
    /// The token's user PIN is locked after too many wrong tries.
    #[error("the user pin is locked on the token (too many wrong tries); ask the token's officer")]
    PinLocked,
    /// No AES secret key with this label is on the token.
    #[error("no aes secret key with this label is on the token")]
    KeyNotFound,
    /// More than one key has the label, so which one is meant is unknown.
    #[error("{0} aes secret keys carry this label; labels must be unique")]
    KeyAmbiguous(usize),
    /// The key is unfit as a KEK: it could leave the token, or is not an
    /// AES-256 key for encryption and decryption.
    #[error("the key is refused as a kek: {0}")]
    KeyUnfit(String),
    /// No Ed25519 private key with this label is on the token.
    #[error("no ed25519 private key with this label is on the token")]
    SigningKeyNotFound,
    /// More than one Ed25519 key of one kind carries the label.
    #[error("{0} ed25519 keys of one kind carry this label; labels must be unique")]
    SigningKeyAmbiguous(usize),
    /// The key pair is unfit to sign as the replica: its private half could
    /// leave the token or may not sign, another curve, no readable public key.
    #[error("the key is refused as a signing key: {0}")]
    SigningKeyUnfit(String),
    /// The token returned a signature that is not a valid Ed25519 signature
    /// of the message under the key's public key: it is never used.
    #[error("the token's signature is refused: {0}")]
    BadSignature(String),
    /// A key with the label already exists where a new one was asked for.
    #[error("a key with this label already exists on the token")]
    KeyExists,
    /// Another PKCS#11 call failed (the function and the token's code).
    #[error("{0}")]
    Call(String),
}
