//! The replica's Ed25519 signing key inside a PKCS#11 token (an HSM, or
//! SoftHSM2 in tests): a `CKK_EC_EDWARDS` key pair on the Ed25519 curve
//! whose private half is sensitive and never extractable. Checkpoints,
//! certificates and export manifests are signed on the token with
//! `CKM_EDDSA` (pure Ed25519, no parameters), so the seed never exists in
//! the replica's memory or on its disk.
//!
//! The public key is read back once, at open, as `CKA_EC_POINT` (a DER
//! OCTET STRING of the 32 bytes; a bare 32-byte value is accepted too, as
//! some tokens return it), and every signature the token returns is checked
//! with ed25519-dalek against it before it is used: a token that misbehaves
//! yields an error, never a certificate that would not verify.
//!
//! Cost: one logged-in session per key, kept for the key's life (no login
//! per signature); a signature is one `C_Sign` plus one local verification.
//! Errors name the module, token and key label, never the PIN.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use vellum_audit::hash::to_hex;
use vellum_audit::note::{NoteError, NoteSigner, Verifier};

use super::CryptoError;
use super::error::{HsmFailure, HsmRole};
use super::kek::Pkcs11Config;
use super::pkcs11::{
    CALL_ATTEMPTS_MAX, CALL_RETRY_MS, KeyCheck, call_failed, check_attributes, fail, find_unique,
    login, open_retrying, refuse_leaving,
};

/// `CKA_EC_PARAMS` of Ed25519 as written at generation and import: the DER
/// object identifier 1.3.101.112 (RFC 8410).
const ED25519_OID: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
/// The same curve as PKCS#11 3.0 also allows it: the DER printable string
/// `edwards25519`. Accepted on keys made by other tools.
const ED25519_PRINTABLE: &[u8] = b"\x13\x0cedwards25519";
/// Bytes of an Ed25519 public key, seed and signature.
const PUBLIC_KEY_BYTES: usize = 32;
const SEED_BYTES: usize = 32;
const SIGNATURE_BYTES: usize = 64;

/// A replica signing key that lives in a PKCS#11 token.
pub struct Pkcs11Signer {
    config: Pkcs11Config,
    /// The note key name and the public key read from the token at open.
    verifier: Verifier,
    session: Mutex<Session>,
    key: ObjectHandle,
    /// Keeps the module's context alive while this key's session lives.
    _context_user: Arc<()>,
}

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("config", &self.config)
            .field("name", &self.verifier.name())
            .field("key_id", &to_hex(&self.verifier.key_id()))
            .finish_non_exhaustive()
    }
}

impl Pkcs11Signer {
    /// Opens the Ed25519 key pair labelled `config.key_label` on the token
    /// and names it `name` in signature lines. Refuses a private key that
    /// could leave the token, may not sign, or is not on the Ed25519 curve.
    /// A token that looks absent is asked again as for the KEK
    /// (`pkcs11::open_retrying`); a wrong PIN is final at once.
    pub fn open(config: &Pkcs11Config, name: &str) -> Result<Pkcs11Signer, CryptoError> {
        open_retrying(config, || Pkcs11Signer::open_once(config, name, false)).map_err(as_signing)
    }

    /// Opens the key as [`Pkcs11Signer::open`] does or, when no key carries
    /// the label, generates the pair on the token: what `vellum init` does.
    pub fn open_or_generate(
        config: &Pkcs11Config,
        name: &str,
    ) -> Result<Pkcs11Signer, CryptoError> {
        open_retrying(config, || Pkcs11Signer::open_once(config, name, true)).map_err(as_signing)
    }

    /// Puts an existing Ed25519 key (its 32-byte RFC 8032 seed) on the
    /// token as a sensitive, non-extractable pair with the label, then opens
    /// it: for moving a file key into a token. Refuses an existing label.
    pub fn import(
        config: &Pkcs11Config,
        name: &str,
        seed: &[u8; SEED_BYTES],
    ) -> Result<Pkcs11Signer, CryptoError> {
        let (session, _context_user) = login(config).map_err(as_signing)?;
        if find_object(config, &session, ObjectClass::PRIVATE_KEY)?.is_some() {
            return Err(signing_fail(config, HsmFailure::KeyExists));
        }
        let public = ed25519_dalek::SigningKey::from_bytes(seed).verifying_key();
        let (public_template, mut private_template) = templates(config);
        private_template.push(Attribute::Class(ObjectClass::PRIVATE_KEY));
        // The template's copy of the seed is cryptoki's Vec, dropped
        // unwiped: import is for moving a key that existed in a file anyway.
        private_template.push(Attribute::Value(seed.to_vec()));
        let mut public_template = public_template;
        public_template.push(Attribute::Class(ObjectClass::PUBLIC_KEY));
        public_template.push(Attribute::EcPoint(der_octet_string(public.as_bytes())));
        session
            .create_object(&private_template)
            .map_err(|e| signing_call_failed(config, &e))?;
        session
            .create_object(&public_template)
            .map_err(|e| signing_call_failed(config, &e))?;
        tracing::info!(token = %config.token_label, key = %config.key_label, "imported pkcs11 signing key");
        drop(session);
        Pkcs11Signer::open(config, name)
    }

    fn open_once(
        config: &Pkcs11Config,
        name: &str,
        generate: bool,
    ) -> Result<Pkcs11Signer, CryptoError> {
        let (session, context_user) = login(config)?;
        let key = match (
            find_object(config, &session, ObjectClass::PRIVATE_KEY)?,
            generate,
        ) {
            (Some(key), _) => key,
            (None, true) => generate_pair(config, &session)?,
            (None, false) => return Err(signing_fail(config, HsmFailure::SigningKeyNotFound)),
        };
        check_private_key(config, &session, key)?;
        let public_key = read_public_key(config, &session)?;
        let verifier = Verifier::new(name, &public_key)
            .map_err(|e| signing_fail(config, HsmFailure::SigningKeyUnfit(e.to_string())))?;
        tracing::info!(token = %config.token_label, key = %config.key_label, name, "opened pkcs11 signing key");
        Ok(Pkcs11Signer {
            config: config.clone(),
            verifier,
            session: Mutex::new(session),
            key,
            _context_user: context_user,
        })
    }

    /// Where the key lives, for log lines and reports (never key material).
    pub fn describe(&self) -> String {
        format!(
            "pkcs11 token {:?} key {:?}",
            self.config.token_label, self.config.key_label
        )
    }

    fn session(&self) -> MutexGuard<'_, Session> {
        self.session
            .lock()
            .expect("pkcs11 signing session poisoned: a panic while signing is a bug")
    }

    /// One signature from the token, asked again on `CKR_GENERAL_ERROR`
    /// (SoftHSM2 answers it while another process rewrites its store), and
    /// checked against the public key before it is returned.
    fn sign_checked(&self, message: &[u8]) -> Result<[u8; SIGNATURE_BYTES], CryptoError> {
        let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
        let mut attempt = 1;
        let signature = loop {
            match self.session().sign(&mechanism, self.key, message) {
                Ok(signature) => break signature,
                Err(CkError::Pkcs11(RvError::GeneralError, _)) if attempt < CALL_ATTEMPTS_MAX => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(CALL_RETRY_MS));
                }
                Err(e) => return Err(signing_call_failed(&self.config, &e)),
            }
        };
        let signature: [u8; SIGNATURE_BYTES] = signature.as_slice().try_into().map_err(|_| {
            signing_fail(
                &self.config,
                HsmFailure::BadSignature(format!(
                    "the token returned {} bytes, not {SIGNATURE_BYTES}",
                    signature.len()
                )),
            )
        })?;
        if !self.verifier.verify(message, &signature) {
            return Err(signing_fail(
                &self.config,
                HsmFailure::BadSignature(
                    "it does not verify under the key's public key".to_string(),
                ),
            ));
        }
        Ok(signature)
    }
}

impl NoteSigner for Pkcs11Signer {
    fn name(&self) -> &str {
        self.verifier.name()
    }

    fn key_id(&self) -> [u8; 4] {
        self.verifier.key_id()
    }

    fn verifier(&self) -> Verifier {
        self.verifier.clone()
    }

    fn try_sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError> {
        self.sign_checked(message).map_err(|e| {
            tracing::error!(error = %e, "the pkcs11 signing key gave no valid signature");
            NoteError::SignFailed {
                name: self.verifier.name().to_owned(),
                key_id: to_hex(&self.verifier.key_id()),
                reason: e.to_string(),
            }
        })
    }
}

/// The attributes both halves share, and the private half's protection:
/// token objects, Ed25519, private, sensitive, never extractable, for
/// signing and verifying only.
fn templates(config: &Pkcs11Config) -> (Vec<Attribute>, Vec<Attribute>) {
    let label = Attribute::Label(config.key_label.as_bytes().to_vec());
    let public = vec![
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::EcParams(ED25519_OID.to_vec()),
        Attribute::Verify(true),
        label.clone(),
    ];
    let private = vec![
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Sign(true),
        Attribute::EcParams(ED25519_OID.to_vec()),
        label,
    ];
    (public, private)
}

/// Generates the pair on the token (`CKM_EC_EDWARDS_KEY_PAIR_GEN`).
fn generate_pair(config: &Pkcs11Config, session: &Session) -> Result<ObjectHandle, CryptoError> {
    let (mut public, mut private) = templates(config);
    // Generation sets the key type itself; EC_PARAMS goes on the public
    // template only, as the mechanism asks.
    public.retain(|a| !matches!(a, Attribute::KeyType(_)));
    private.retain(|a| !matches!(a, Attribute::KeyType(_) | Attribute::EcParams(_)));
    let (_, key) = session
        .generate_key_pair(&Mechanism::EccEdwardsKeyPairGen, &public, &private)
        .map_err(|e| signing_call_failed(config, &e))?;
    tracing::info!(token = %config.token_label, key = %config.key_label, "generated pkcs11 signing key");
    Ok(key)
}

/// The Ed25519 object of `class` with the configured label, if exactly one.
fn find_object(
    config: &Pkcs11Config,
    session: &Session,
    class: ObjectClass,
) -> Result<Option<ObjectHandle>, CryptoError> {
    let template = [
        Attribute::Class(class),
        Attribute::KeyType(KeyType::EC_EDWARDS),
        Attribute::Label(config.key_label.as_bytes().to_vec()),
    ];
    find_unique(config, session, &template, HsmFailure::SigningKeyAmbiguous).map_err(as_signing)
}

/// Refuses a private key that could leave the token, may not sign, or is
/// on another curve.
fn check_private_key(
    config: &Pkcs11Config,
    session: &Session,
    key: ObjectHandle,
) -> Result<(), CryptoError> {
    let wanted = [
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Sign,
        AttributeType::EcParams,
    ];
    let refuse = |attribute: &Attribute| match attribute {
        Attribute::Sign(false) => Some("it may not sign (CKA_SIGN false)"),
        Attribute::EcParams(params) if !is_ed25519(params) => {
            Some("it is not on the Ed25519 curve (CKA_EC_PARAMS)")
        }
        other => refuse_leaving(other),
    };
    let check = KeyCheck {
        wanted: &wanted,
        unfit: HsmFailure::SigningKeyUnfit,
        unreported: "the token did not report its sensitivity, extractability, usage and curve",
    };
    check_attributes(config, session, key, &check, refuse).map_err(as_signing)
}

fn is_ed25519(params: &[u8]) -> bool {
    params == ED25519_OID || params == ED25519_PRINTABLE
}

/// The public key of the pair: `CKA_EC_POINT` of the public-key object
/// with the label.
fn read_public_key(
    config: &Pkcs11Config,
    session: &Session,
) -> Result<[u8; PUBLIC_KEY_BYTES], CryptoError> {
    let public = find_object(config, session, ObjectClass::PUBLIC_KEY)?.ok_or_else(|| {
        signing_fail(
            config,
            HsmFailure::SigningKeyUnfit("the token holds no public key with this label".into()),
        )
    })?;
    let attributes = session
        .get_attributes(public, &[AttributeType::EcPoint])
        .map_err(|e| signing_call_failed(config, &e))?;
    let point = attributes.into_iter().find_map(|a| match a {
        Attribute::EcPoint(point) => Some(point),
        _ => None,
    });
    point.as_deref().and_then(parse_ec_point).ok_or_else(|| {
        signing_fail(
            config,
            HsmFailure::SigningKeyUnfit(
                "its CKA_EC_POINT is not a 32-byte Ed25519 public key".into(),
            ),
        )
    })
}

/// The 32 key bytes of a `CKA_EC_POINT`: a DER OCTET STRING (`04 20` then
/// the key) or the bare key.
fn parse_ec_point(point: &[u8]) -> Option<[u8; PUBLIC_KEY_BYTES]> {
    let key = match point {
        [0x04, 0x20, key @ ..] if key.len() == PUBLIC_KEY_BYTES => key,
        key if key.len() == PUBLIC_KEY_BYTES => key,
        _ => return None,
    };
    key.try_into().ok()
}

/// `key` as a DER OCTET STRING (it is shorter than 128 bytes).
fn der_octet_string(key: &[u8; PUBLIC_KEY_BYTES]) -> Vec<u8> {
    let mut der = vec![0x04, PUBLIC_KEY_BYTES as u8];
    der.extend_from_slice(key);
    der
}

/// A token error about the signing key (the KEK's helpers name their role
/// as the KEK: this relabels it).
fn as_signing(error: CryptoError) -> CryptoError {
    match error {
        CryptoError::Hsm {
            module,
            token,
            key,
            failure,
            ..
        } => CryptoError::Hsm {
            role: HsmRole::Signing,
            module,
            token,
            key,
            failure,
        },
        other => other,
    }
}

fn signing_fail(config: &Pkcs11Config, failure: HsmFailure) -> CryptoError {
    as_signing(fail(config, failure))
}

fn signing_call_failed(config: &Pkcs11Config, error: &CkError) -> CryptoError {
    as_signing(call_failed(config, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: both encodings of CKA_EC_POINT give the key; anything else is refused.
    #[test]
    fn ec_point_encodings() {
        let key = [9u8; 32];
        assert_eq!(parse_ec_point(&der_octet_string(&key)), Some(key));
        assert_eq!(parse_ec_point(&key), Some(key));
        assert_eq!(parse_ec_point(&[0x04, 0x20, 1, 2]), None);
        assert_eq!(parse_ec_point(&[0x04, 0x21].repeat(17)), None);
        assert_eq!(parse_ec_point(&[]), None);
    }

    /// Goal: only the two Ed25519 curve encodings pass the curve check.
    #[test]
    fn ed25519_curve_params() {
        assert!(is_ed25519(ED25519_OID));
        assert!(is_ed25519(ED25519_PRINTABLE));
        // Ed448 (1.3.101.113) and P-256 are refused.
        assert!(!is_ed25519(&[0x06, 0x03, 0x2b, 0x65, 0x71]));
        assert!(!is_ed25519(&[
            0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07
        ]));
    }
}
