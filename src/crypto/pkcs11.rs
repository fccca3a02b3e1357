//! The KEK inside a PKCS#11 token (an HSM, or SoftHSM2 in tests): an
//! AES-256 secret key that is sensitive and not extractable, so its bytes
//! never leave the token. Wrapping a DEK is `C_Encrypt` with `CKM_AES_GCM`
//! on the token; unwrapping is `C_Decrypt`.
//!
//! Why AES-GCM on the token and not `CKM_AES_KEY_WRAP_KWP` (RFC 5649):
//! GCM takes associated data, so a wrapped DEK stays bound to its key id and
//! stream exactly as under the file KEK (KWP has no associated data); the
//! wrapped bytes keep the key file format of the file KEK, so nothing on disk
//! changes with the KEK's home; and DEKs are used by the host anyway, so
//! KWP's unwrap into a token object would only add an object to extract
//! again. The 96-bit nonce is random from the host, as for the file KEK (one
//! wrap per stream key, far below the 2^32 random-nonce bound per key).
//!
//! One process keeps one PKCS#11 context per module (`C_Initialize` may run
//! once per process) and each `Pkcs11Kek` owns one logged-in session,
//! serialized by a mutex: wraps are rare (the key store caches DEKs).
//!
//! Errors name the module, token and key label, never the PIN.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use super::error::{HsmFailure, HsmRole};
use super::kek::{KeyEncryptionKey, Pkcs11Config};
use super::keys::{
    DataKey, KEY_BYTES, NONCE_BYTES, TAG_BYTES, WRAPPED_KEY_BYTES, random_fill, wrap_aad,
};
use super::{CryptoError, fsutil};

/// Bits of the AES-GCM tag asked of the token.
const GCM_TAG_BITS: u64 = (TAG_BYTES * 8) as u64;
/// Associated data of the probe that tells a bad tag from a failed token.
const PROBE_AAD: &[u8] = b"vellum/kek-probe/v1\0";
/// Attempts to open the token before its error is final (see `open`).
pub const OPEN_ATTEMPTS_MAX: u32 = 20;
/// Pause between two attempts to open the token.
pub const OPEN_RETRY_MS: u64 = 100;
/// Attempts of one token encryption or decryption that fails with
/// `CKR_GENERAL_ERROR` before the answer counts (see `gcm`).
pub(super) const CALL_ATTEMPTS_MAX: u32 = 5;
/// Pause between two such attempts.
pub(super) const CALL_RETRY_MS: u64 = 20;
/// Largest PIN file read, in bytes.
const PIN_FILE_BYTES_MAX: usize = 256;

/// A KEK that lives in a PKCS#11 token.
pub struct Pkcs11Kek {
    config: Pkcs11Config,
    session: Mutex<Session>,
    key: ObjectHandle,
    /// Keeps the module's context from being reset while this KEK (and its
    /// session, dropped first) lives; see `reset_context`.
    _context_user: Arc<()>,
}

impl fmt::Debug for Pkcs11Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Kek")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Kek {
    /// Opens the token `config` names, logs in with its PIN, and finds the
    /// key. Refuses a key that could leave the token or is not AES-256.
    ///
    /// A token that looks absent or answers a call with an error is asked
    /// again, [`OPEN_ATTEMPTS_MAX`] times in all, [`OPEN_RETRY_MS`] apart:
    /// SoftHSM2's file store, shared by several processes (the replicas of
    /// one host), briefly shows a token as absent or empty while another
    /// process rewrites it. So an absent key is only final after the last
    /// attempt (about two seconds); a wrong PIN is never asked again.
    pub fn open(config: &Pkcs11Config) -> Result<Pkcs11Kek, CryptoError> {
        open_retrying(config, || Pkcs11Kek::open_once(config, false))
    }

    /// Opens the key as [`Pkcs11Kek::open`] does, or, when the token holds
    /// no key with the label, generates it there ([`Pkcs11Kek::generate`]):
    /// what `vellum init` does.
    pub fn open_or_generate(config: &Pkcs11Config) -> Result<Pkcs11Kek, CryptoError> {
        open_retrying(config, || Pkcs11Kek::open_once(config, true))
    }

    fn open_once(config: &Pkcs11Config, generate: bool) -> Result<Pkcs11Kek, CryptoError> {
        let (session, context_user) = login(config)?;
        let key = match (find_key(config, &session)?, generate) {
            (Some(key), _) => key,
            (None, true) => generate_key(config, &session)?,
            (None, false) => return Err(fail(config, HsmFailure::KeyNotFound)),
        };
        check_key(config, &session, key)?;
        tracing::info!(token = %config.token_label, key = %config.key_label, "opened pkcs11 key-encryption key");
        Ok(Pkcs11Kek {
            config: config.clone(),
            session: Mutex::new(session),
            key,
            _context_user: context_user,
        })
    }

    /// Generates the KEK on the token: AES-256, a token object, private,
    /// sensitive and not extractable, for encryption and decryption only.
    /// Refuses when a key with the label exists.
    pub fn generate(config: &Pkcs11Config) -> Result<Pkcs11Kek, CryptoError> {
        let (session, _context_user) = login(config)?;
        if find_key(config, &session)?.is_some() {
            return Err(fail(config, HsmFailure::KeyExists));
        }
        generate_key(config, &session)?;
        drop(session);
        Pkcs11Kek::open(config)
    }

    /// Whether the token holds an AES key with `config`'s label (one
    /// attempt; a rotation asks before it generates a new key).
    pub(crate) fn key_exists(config: &Pkcs11Config) -> Result<bool, CryptoError> {
        let (session, _context_user) = login(config)?;
        Ok(find_key(config, &session)?.is_some())
    }

    /// Destroys the AES key with `config`'s label on the token
    /// (`C_DestroyObject`): what a KEK rotation does to the old KEK. Returns
    /// false when no key carries the label (destroyed already).
    pub(crate) fn destroy(config: &Pkcs11Config) -> Result<bool, CryptoError> {
        let (session, _context_user) = login(config)?;
        let Some(key) = find_key(config, &session)? else {
            return Ok(false);
        };
        session
            .destroy_object(key)
            .map_err(|e| call_failed(config, &e))?;
        tracing::info!(token = %config.token_label, key = %config.key_label, "destroyed pkcs11 key-encryption key");
        Ok(true)
    }

    /// The session, for the token's value check in tests and for calls.
    fn session(&self) -> MutexGuard<'_, Session> {
        self.session
            .lock()
            .expect("pkcs11 session mutex poisoned: a panic while holding it is a bug")
    }

    /// Asks the token for the KEK's value (`CKA_VALUE`). Always refused for
    /// a key `open` accepted; exists so tests can show the token says no.
    pub fn try_read_key_value(&self) -> Result<Vec<u8>, CryptoError> {
        let session = self.session();
        let attributes = session
            .get_attributes(self.key, &[AttributeType::Value])
            .map_err(|e| call_failed(&self.config, &e))?;
        match attributes.into_iter().next() {
            Some(Attribute::Value(bytes)) => Ok(bytes),
            _ => Err(fail(
                &self.config,
                HsmFailure::Call("the token refused to reveal the key's value".to_string()),
            )),
        }
    }

    fn gcm(
        &self,
        encrypt: bool,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        input: &[u8],
    ) -> Result<Result<Zeroizing<Vec<u8>>, RvError>, CryptoError> {
        let mut attempt = 1;
        loop {
            let result = self.gcm_once(encrypt, nonce, aad, input)?;
            match result {
                Ok(output) => return Ok(Ok(Zeroizing::new(output))),
                Err(CkError::Pkcs11(rv, _)) if !encrypt && is_not_authentic(rv) => {
                    return Ok(Err(rv));
                }
                // SoftHSM2 answers CKR_GENERAL_ERROR both to a GCM tag
                // mismatch and while another process rewrites its store:
                // ask again, and only then take a decryption's answer as
                // "not authentic", if the token works (a probe encryption
                // succeeds), so a failing token is an error, not "tampered".
                Err(CkError::Pkcs11(RvError::GeneralError, _)) if attempt < CALL_ATTEMPTS_MAX => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(CALL_RETRY_MS));
                }
                Err(CkError::Pkcs11(rv @ RvError::GeneralError, _)) if !encrypt => {
                    self.probe()?;
                    return Ok(Err(rv));
                }
                Err(e) => return Err(call_failed(&self.config, &e)),
            }
        }
    }

    /// One `C_Encrypt` or `C_Decrypt` with AES-GCM on the token.
    fn gcm_once(
        &self,
        encrypt: bool,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
        input: &[u8],
    ) -> Result<Result<Vec<u8>, CkError>, CryptoError> {
        let mut iv = *nonce;
        let params = GcmParams::new(&mut iv, aad, GCM_TAG_BITS.into())
            .map_err(|e| call_failed(&self.config, &e))?;
        let mechanism = Mechanism::AesGcm(params);
        let session = self.session();
        Ok(match encrypt {
            true => session.encrypt(&mechanism, self.key, input),
            false => session.decrypt(&mechanism, self.key, input),
        })
    }

    /// Encrypts an empty message under a random nonce: succeeds only when
    /// the token and the key are working.
    fn probe(&self) -> Result<(), CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        random_fill(&mut nonce)?;
        self.gcm(true, &nonce, PROBE_AAD, &[]).map(drop)
    }
}

impl KeyEncryptionKey for Pkcs11Kek {
    fn describe(&self) -> String {
        format!(
            "pkcs11 token {:?} key {:?}",
            self.config.token_label, self.config.key_label
        )
    }

    fn wrap_dek(
        &self,
        dek: &DataKey,
        key_id: u64,
        stream: u64,
    ) -> Result<([u8; NONCE_BYTES], [u8; WRAPPED_KEY_BYTES]), CryptoError> {
        let mut nonce = [0u8; NONCE_BYTES];
        random_fill(&mut nonce)?;
        let output = self
            .gcm(true, &nonce, &wrap_aad(key_id, stream), dek.secret())?
            .expect("encryption never reports an authentication failure");
        let wrapped: [u8; WRAPPED_KEY_BYTES] = output.as_slice().try_into().map_err(|_| {
            fail(
                &self.config,
                HsmFailure::Call(format!(
                    "the token returned {} bytes for a wrapped key, expected {WRAPPED_KEY_BYTES}",
                    output.len()
                )),
            )
        })?;
        Ok((nonce, wrapped))
    }

    fn unwrap_dek(
        &self,
        nonce: &[u8; NONCE_BYTES],
        wrapped: &[u8; WRAPPED_KEY_BYTES],
        key_id: u64,
        stream: u64,
    ) -> Result<Option<DataKey>, CryptoError> {
        let Ok(plain) = self.gcm(false, nonce, &wrap_aad(key_id, stream), wrapped)? else {
            return Ok(None);
        };
        let bytes: &[u8; KEY_BYTES] = plain.as_slice().try_into().map_err(|_| {
            fail(
                &self.config,
                HsmFailure::Call(format!(
                    "the token returned {} bytes for a key, expected {KEY_BYTES}",
                    plain.len()
                )),
            )
        })?;
        Ok(Some(DataKey::from_bytes(bytes)))
    }

    fn check_tag(
        &self,
        nonce: &[u8; NONCE_BYTES],
        aad: &[u8],
    ) -> Result<[u8; TAG_BYTES], CryptoError> {
        let output = self
            .gcm(true, nonce, aad, &[])?
            .expect("encryption never reports an authentication failure");
        output.as_slice().try_into().map_err(|_| {
            fail(
                &self.config,
                HsmFailure::Call(format!(
                    "the token returned {} bytes for a tag, expected {TAG_BYTES}",
                    output.len()
                )),
            )
        })
    }
}

/// Codes a token returns when a ciphertext does not authenticate.
fn is_not_authentic(rv: RvError) -> bool {
    matches!(
        rv,
        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange
    )
}

/// Runs `open_once` until it succeeds or fails for good: a token that looks
/// absent, a key not (yet) found, or a failed call is asked again,
/// [`OPEN_ATTEMPTS_MAX`] times in all, [`OPEN_RETRY_MS`] apart (see
/// [`Pkcs11Kek::open`] for why); any other failure is final at once.
pub(super) fn open_retrying<T>(
    config: &Pkcs11Config,
    mut open_once: impl FnMut() -> Result<T, CryptoError>,
) -> Result<T, CryptoError> {
    let mut attempt = 1;
    loop {
        match open_once() {
            Err(CryptoError::Hsm {
                failure:
                    HsmFailure::TokenNotFound { .. }
                    | HsmFailure::KeyNotFound
                    | HsmFailure::SigningKeyNotFound
                    | HsmFailure::Call(_),
                ..
            }) if attempt < OPEN_ATTEMPTS_MAX => {
                tracing::warn!(attempt, token = %config.token_label, "pkcs11 token not ready; asking again");
                attempt += 1;
                // The module keeps what it read of the token at
                // C_Initialize: start it afresh if nothing uses it.
                reset_context(config);
                std::thread::sleep(std::time::Duration::from_millis(OPEN_RETRY_MS));
            }
            result => return result,
        }
    }
}

pub(super) fn fail(config: &Pkcs11Config, failure: HsmFailure) -> CryptoError {
    CryptoError::Hsm {
        role: HsmRole::Kek,
        module: config.module.clone(),
        token: config.token_label.clone(),
        key: config.key_label.clone(),
        failure,
    }
}

pub(super) fn call_failed(config: &Pkcs11Config, error: &CkError) -> CryptoError {
    fail(config, HsmFailure::Call(error.to_string()))
}

/// The process's PKCS#11 contexts, one per module, each with a handle whose
/// clones mark the KEKs that use it.
type Contexts = HashMap<PathBuf, (Pkcs11, Arc<()>)>;

fn contexts() -> MutexGuard<'static, Contexts> {
    static CONTEXTS: OnceLock<Mutex<Contexts>> = OnceLock::new();
    CONTEXTS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .expect("pkcs11 context registry poisoned: a panic while holding it is a bug")
}

/// Finalizes the module's context when no KEK uses it, so the next open
/// loads and reads the token afresh.
fn reset_context(config: &Pkcs11Config) {
    let mut contexts = contexts();
    let unused = contexts
        .get(&config.module)
        .is_some_and(|(_, users)| Arc::strong_count(users) == 1);
    if unused && let Some((context, _)) = contexts.remove(&config.module) {
        let _ = context.finalize();
    }
}

/// The process's PKCS#11 context for `module`, loaded and initialized once
/// (`C_Initialize` may run once per process), and a handle marking a user.
fn context(config: &Pkcs11Config) -> Result<(Pkcs11, Arc<()>), CryptoError> {
    let mut contexts = contexts();
    if let Some((context, users)) = contexts.get(&config.module) {
        return Ok((context.clone(), Arc::clone(users)));
    }
    let context =
        Pkcs11::new(&config.module).map_err(|e| fail(config, HsmFailure::Module(e.to_string())))?;
    match context.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Another library in this process initialized the module: share it.
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(fail(config, HsmFailure::Module(e.to_string()))),
    }
    let users = Arc::new(());
    contexts.insert(config.module.clone(), (context.clone(), Arc::clone(&users)));
    Ok((context, users))
}

/// Opens a session on the token with the configured label and logs the
/// user in.
pub(super) fn login(config: &Pkcs11Config) -> Result<(Session, Arc<()>), CryptoError> {
    // The PIN is read first: a config without one is refused before any
    // module is loaded.
    let (pin, source_of_pin) = read_pin(config)?;
    let (context, context_user) = context(config)?;
    let slots = context
        .get_slots_with_token()
        .map_err(|e| call_failed(config, &e))?;
    let mut present = Vec::new();
    let mut found = None;
    for slot in slots {
        let info = context
            .get_token_info(slot)
            .map_err(|e| call_failed(config, &e))?;
        let label = info.label().trim_end().to_string();
        if label == config.token_label && found.is_none() {
            found = Some(slot);
        }
        present.push(label);
    }
    let slot = found.ok_or_else(|| fail(config, HsmFailure::TokenNotFound { present }))?;
    let session = context
        .open_rw_session(slot)
        .map_err(|e| call_failed(config, &e))?;
    match session.login(UserType::User, Some(&pin)) {
        // PKCS#11 login is per application and token: a session of this
        // process already logged in (another KEK handle on the same token).
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            Ok((session, context_user))
        }
        Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
            Err(fail(config, HsmFailure::PinIncorrect { source_of_pin }))
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(fail(config, HsmFailure::PinLocked)),
        Err(e) => Err(call_failed(config, &e)),
    }
}

/// The user PIN from the file or variable the config names (exactly one),
/// and a description of where it came from for errors.
fn read_pin(config: &Pkcs11Config) -> Result<(AuthPin, String), CryptoError> {
    let unavailable = |reason: String| fail(config, HsmFailure::PinUnavailable(reason));
    let (text, source) = match (&config.pin_file, &config.pin_env) {
        (Some(path), None) => (
            read_pin_file(path).map_err(&unavailable)?,
            format!("pin file {}", path.display()),
        ),
        (None, Some(name)) => {
            let value = std::env::var(name).map_err(|_| {
                unavailable(format!(
                    "environment variable {name} is not set or not utf-8"
                ))
            })?;
            (
                Zeroizing::new(value),
                format!("environment variable {name}"),
            )
        }
        (None, None) => {
            return Err(unavailable(
                "the config names neither pin_file nor pin_env".to_string(),
            ));
        }
        (Some(_), Some(_)) => {
            return Err(unavailable(
                "the config names both pin_file and pin_env; keep one".to_string(),
            ));
        }
    };
    if text.is_empty() {
        return Err(unavailable(format!("{source} is empty")));
    }
    Ok((AuthPin::from(text.as_str()), source))
}

/// A private file of one line holding the PIN (a final newline is dropped).
fn read_pin_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let bytes = fsutil::read_private(path).map_err(|e| e.to_string())?;
    if bytes.len() > PIN_FILE_BYTES_MAX {
        return Err(format!(
            "{} is {} bytes, more than {PIN_FILE_BYTES_MAX}",
            path.display(),
            bytes.len()
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        format!(
            "{} is not utf-8 at byte {}",
            path.display(),
            e.valid_up_to()
        )
    })?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.contains('\n') {
        return Err(format!("{} holds more than one line", path.display()));
    }
    Ok(Zeroizing::new(line.to_string()))
}

/// The AES secret key with the configured label, if there is exactly one.
fn find_key(config: &Pkcs11Config, session: &Session) -> Result<Option<ObjectHandle>, CryptoError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Label(config.key_label.as_bytes().to_vec()),
    ];
    find_unique(config, session, &template, HsmFailure::KeyAmbiguous)
}

/// The one object matching `template`, if any; more than one is
/// `ambiguous(count)`, since which is meant is unknown.
pub(super) fn find_unique(
    config: &Pkcs11Config,
    session: &Session,
    template: &[Attribute],
    ambiguous: fn(usize) -> HsmFailure,
) -> Result<Option<ObjectHandle>, CryptoError> {
    let found = session
        .find_objects(template)
        .map_err(|e| call_failed(config, &e))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(fail(config, ambiguous(many.len()))),
    }
}

/// Refuses a key that could leave the token or is not AES-256 for
/// encryption and decryption.
fn check_key(
    config: &Pkcs11Config,
    session: &Session,
    key: ObjectHandle,
) -> Result<(), CryptoError> {
    let wanted = [
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::ValueLen,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
    ];
    let refuse = |attribute: &Attribute| match attribute {
        Attribute::ValueLen(len) if u64::from(*len) != KEY_BYTES as u64 => {
            Some("it is not a 256-bit key")
        }
        Attribute::Encrypt(false) | Attribute::Decrypt(false) => {
            Some("it may not encrypt and decrypt")
        }
        other => refuse_leaving(other),
    };
    let check = KeyCheck {
        wanted: &wanted,
        unfit: HsmFailure::KeyUnfit,
        unreported: "the token did not report its sensitivity, extractability, length and usage",
    };
    check_attributes(config, session, key, &check, refuse)
}

/// What a key's attributes are checked for: which to read, the failure
/// an unfit key gets, and the reason when the token leaves one unreported.
pub(super) struct KeyCheck<'a> {
    pub(super) wanted: &'a [AttributeType],
    pub(super) unfit: fn(String) -> HsmFailure,
    pub(super) unreported: &'a str,
}

/// The reason a key that could leave the token is refused, if it could.
pub(super) fn refuse_leaving(attribute: &Attribute) -> Option<&'static str> {
    match attribute {
        Attribute::Sensitive(false) => Some("it is not sensitive (CKA_SENSITIVE false)"),
        Attribute::Extractable(true) => Some("it is extractable (CKA_EXTRACTABLE true)"),
        _ => None,
    }
}

/// Reads `check.wanted` of `key` and refuses it with the first reason
/// `refuse` gives, or when the token does not report every attribute.
pub(super) fn check_attributes(
    config: &Pkcs11Config,
    session: &Session,
    key: ObjectHandle,
    check: &KeyCheck<'_>,
    refuse: impl Fn(&Attribute) -> Option<&'static str>,
) -> Result<(), CryptoError> {
    let attributes = session
        .get_attributes(key, check.wanted)
        .map_err(|e| call_failed(config, &e))?;
    let unfit = |reason: &str| Err(fail(config, (check.unfit)(reason.to_string())));
    if let Some(reason) = attributes.iter().find_map(&refuse) {
        return unfit(reason);
    }
    if attributes.len() != check.wanted.len() {
        return unfit(check.unreported);
    }
    Ok(())
}

/// Generates the KEK on the token with the configured label: AES-256, a
/// token object, private, sensitive and not extractable, for encryption and
/// decryption only.
fn generate_key(config: &Pkcs11Config, session: &Session) -> Result<ObjectHandle, CryptoError> {
    let template = [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen((KEY_BYTES as u64).into()),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Label(config.key_label.as_bytes().to_vec()),
    ];
    let key = session
        .generate_key(&Mechanism::AesKeyGen, &template)
        .map_err(|e| call_failed(config, &e))?;
    tracing::info!(token = %config.token_label, key = %config.key_label, "generated pkcs11 key-encryption key");
    Ok(key)
}
