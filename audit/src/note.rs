//! C2SP signed notes (c2sp.org/signed-note), Ed25519 only (signature type
//! `0x01`), with the signer and verifier key encodings of
//! `golang.org/x/mod/sumdb/note` (`PRIVATE+KEY+<name>+<id>+<key>` and
//! `<name>+<id>+<key>`).
//!
//! Checkpoints and commit certificates are signed notes, so standard
//! transparency-log tools can read and check what Vellum signs.
//!
//! Where the spec leaves a choice, Vellum takes the strict side:
//! - key names also may not contain ASCII control characters (a note may not
//!   contain them anyway);
//! - a note is at most [`NOTE_BYTES_MAX`] bytes with at most
//!   [`SIGNATURES_MAX`] signature lines (the spec asks for at least 16);
//! - every signature from a known key is checked, not only the first one per
//!   key, and any failure rejects the note (the spec's SHOULD);
//! - Ed25519 verification is RFC 8032 strict (`verify_strict`): no
//!   non-canonical encodings, no small-order keys.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::error::DecodeError;
use crate::hash::{sha256, to_hex};

/// The largest encoded note accepted, in bytes.
pub const NOTE_BYTES_MAX: usize = 64 * 1024;
/// The most signature lines one note may carry.
pub const SIGNATURES_MAX: usize = 100;
/// The signature type identifier byte of Ed25519 in signed notes.
pub const SIGNATURE_TYPE_ED25519: u8 = 0x01;

const FORMAT: &str = "signed note";
pub(crate) const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a note could not be signed or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name that is empty or holds a space, `+` or a control character.
    #[error("invalid key name {0:?}: must be non-empty without spaces, '+' or control characters")]
    InvalidKeyName(String),
    /// Note text that does not end in a newline.
    #[error("note text must end with a newline")]
    TextWithoutFinalNewline,
    /// Note text holding a control character other than newline.
    #[error("note text holds control character {0:?}")]
    TextControlCharacter(char),
    /// Signing with no signer at all.
    #[error("a note needs at least one signer")]
    NoSigners,
    /// More signatures than [`SIGNATURES_MAX`].
    #[error("note would carry {0} signatures, more than the limit")]
    TooManySignatures(usize),
    /// Two different known keys with the same name and key id.
    #[error("ambiguous known key {name}+{key_id}")]
    AmbiguousKey { name: String, key_id: String },
    /// A signature from a known key that does not verify.
    #[error("signature of known key {name}+{key_id} does not verify")]
    InvalidSignature { name: String, key_id: String },
    /// No signature from any known key.
    #[error("note has no signature from a known key")]
    NoKnownSignature,
    /// A signer could not sign (its key lives elsewhere, e.g. in a token,
    /// and the call failed or gave a signature that does not verify).
    #[error("signer {name}+{key_id} could not sign: {reason}")]
    SignFailed {
        name: String,
        key_id: String,
        reason: String,
    },
}

/// Whatever can sign a note as one named Ed25519 key: a [`Signer`] holding
/// the seed, or a key the writer keeps in a token. Narrow on purpose: the
/// note only needs the name, the key id, the public key and signatures.
pub trait NoteSigner: Send + Sync + std::fmt::Debug {
    /// The key name.
    fn name(&self) -> &str;
    /// The 4-byte key id.
    fn key_id(&self) -> [u8; 4];
    /// The matching verifier.
    fn verifier(&self) -> Verifier;
    /// An Ed25519 signature over `message`, or why there is none. An
    /// implementation whose key lives outside this process must check the
    /// signature against its verifier before returning it.
    fn try_sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError>;
}

impl NoteSigner for Signer {
    fn name(&self) -> &str {
        Signer::name(self)
    }

    fn key_id(&self) -> [u8; 4] {
        Signer::key_id(self)
    }

    fn verifier(&self) -> Verifier {
        Signer::verifier(self)
    }

    fn try_sign(&self, message: &[u8]) -> Result<[u8; 64], NoteError> {
        Ok(self.sign(message))
    }
}

/// True if `name` is a valid key name per the spec (plus: no control chars).
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

fn check_key_name(name: &str) -> Result<(), NoteError> {
    if is_valid_key_name(name) {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// `SHA-256(name || 0x0A || 0x01 || public key)[:4]`, per the spec.
fn key_id_of(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = sha256(&[
        name.as_bytes(),
        b"\n",
        &[SIGNATURE_TYPE_ED25519],
        public_key,
    ]);
    [digest[0], digest[1], digest[2], digest[3]]
}

/// Overwrites a secret temporary. Best effort: this crate has no `zeroize`
/// dependency, so `black_box` keeps the write from being optimized away.
pub(crate) fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    std::hint::black_box(bytes);
}

/// A named Ed25519 signing key. Its secret never appears in `Debug`.
#[derive(Clone)]
pub struct Signer {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("name", &self.name)
            .field("key_id", &to_hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer from a 32-byte Ed25519 seed (RFC 8032 private key).
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Signer, NoteError> {
        let mut seed = seed;
        let key = SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        check_key_name(name)?;
        let key_id = key_id_of(name, key.verifying_key().as_bytes());
        Ok(Signer {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The matching verifier.
    pub fn verifier(&self) -> Verifier {
        Verifier {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// Signs `message` (the note text) with Ed25519.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// The 32-byte RFC 8032 seed, to move the key into a token. The result
    /// is the secret: the caller must keep it out of logs and wipe it.
    pub fn to_seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// `PRIVATE+KEY+<name>+<hex id>+<base64(0x01 || seed)>`. The result holds
    /// the secret: the caller must keep it out of logs and wipe it.
    pub fn to_skey(&self) -> String {
        let mut raw = [0u8; 33];
        raw[0] = SIGNATURE_TYPE_ED25519;
        raw[1..].copy_from_slice(self.key.as_bytes());
        let encoded = BASE64.encode(raw);
        wipe(&mut raw);
        format!(
            "PRIVATE+KEY+{}+{}+{}",
            self.name,
            to_hex(&self.key_id),
            encoded
        )
    }

    /// Parses a signer key written by [`Signer::to_skey`] (or by
    /// `golang.org/x/mod/sumdb/note`). Errors carry the byte offset.
    pub fn parse_skey(text: &str) -> Result<Signer, DecodeError> {
        const SKEY: &str = "signer key";
        let rest = text
            .strip_prefix("PRIVATE+KEY+")
            .ok_or_else(|| DecodeError::at_byte(SKEY, 0, "missing PRIVATE+KEY+ prefix"))?;
        let fields = split_key(rest, 12, SKEY)?;
        let mut raw = decode_key_bytes(fields.key, fields.key_offset, SKEY)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&raw[1..]);
        wipe(&mut raw);
        let signer = Signer::from_seed(fields.name, seed);
        wipe(&mut seed);
        let signer = signer.map_err(|_| DecodeError::at_byte(SKEY, 12, "invalid key name"))?;
        if signer.key_id != fields.key_id {
            return Err(DecodeError::at_byte(
                SKEY,
                fields.id_offset as u64,
                "key id does not match key",
            ));
        }
        Ok(signer)
    }
}

/// A named Ed25519 public key, as pinned by a trust policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verifier {
    name: String,
    key: VerifyingKey,
    key_id: [u8; 4],
}

impl Verifier {
    /// A verifier from a name and a 32-byte Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<Verifier, NoteError> {
        check_key_name(name)?;
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|_| NoteError::InvalidKeyName(format!("{name} (bad public key)")))?;
        Ok(Verifier {
            name: name.to_owned(),
            key,
            key_id: key_id_of(name, public_key),
        })
    }

    /// Parses `<name>+<hex id>+<base64(0x01 || public key)>`, checking that
    /// the id matches the name and key. Errors carry the byte offset.
    pub fn parse_vkey(text: &str) -> Result<Verifier, DecodeError> {
        const VKEY: &str = "verifier key";
        let fields = split_key(text, 0, VKEY)?;
        let raw = decode_key_bytes(fields.key, fields.key_offset, VKEY)?;
        let public_key: [u8; 32] = raw[1..]
            .try_into()
            .expect("decode_key_bytes checked 33 bytes");
        let verifier = Verifier::new(fields.name, &public_key).map_err(|error| match error {
            NoteError::InvalidKeyName(_) if !is_valid_key_name(fields.name) => {
                DecodeError::at_byte(VKEY, 0, "invalid key name")
            }
            _ => DecodeError::at_byte(VKEY, fields.key_offset as u64, "not an ed25519 public key"),
        })?;
        if verifier.key_id != fields.key_id {
            return Err(DecodeError::at_byte(
                VKEY,
                fields.id_offset as u64,
                "key id does not match key",
            ));
        }
        Ok(verifier)
    }

    /// `<name>+<hex id>+<base64(0x01 || public key)>`.
    pub fn to_vkey(&self) -> String {
        vkey_text(
            &self.name,
            &self.key_id,
            SIGNATURE_TYPE_ED25519,
            self.key.as_bytes(),
        )
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 4-byte key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// Whether `signature` is a valid (strict) Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let signature = ed25519_dalek::Signature::from_bytes(&bytes);
        self.key.verify_strict(message, &signature).is_ok()
    }
}

/// The three `+`-separated fields of an encoded key, with their offsets.
pub(crate) struct KeyFields<'a> {
    pub(crate) name: &'a str,
    pub(crate) key_id: [u8; 4],
    pub(crate) id_offset: usize,
    pub(crate) key: &'a str,
    pub(crate) key_offset: usize,
}

/// Splits `<name>+<8 lowercase hex>+<base64>`; `base` is the offset of
/// `text` in the whole input, for error locations.
pub(crate) fn split_key<'a>(
    text: &'a str,
    base: usize,
    format: &'static str,
) -> Result<KeyFields<'a>, DecodeError> {
    let err =
        |offset: usize, reason: &str| DecodeError::at_byte(format, (base + offset) as u64, reason);
    let (name, rest) = text
        .split_once('+')
        .ok_or_else(|| err(0, "missing '+' after key name"))?;
    if !is_valid_key_name(name) {
        return Err(err(0, "invalid key name"));
    }
    let id_offset = name.len() + 1;
    let (id, key) = rest
        .split_once('+')
        .ok_or_else(|| err(id_offset, "missing '+' after key id"))?;
    let key_id =
        parse_key_id(id).ok_or_else(|| err(id_offset, "key id is not 8 lowercase hex digits"))?;
    let key_offset = id_offset + id.len() + 1;
    Ok(KeyFields {
        name,
        key_id,
        id_offset: base + id_offset,
        key,
        key_offset: base + key_offset,
    })
}

fn parse_key_id(text: &str) -> Option<[u8; 4]> {
    if text.len() != 8
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    u32::from_str_radix(text, 16).ok().map(u32::to_be_bytes)
}

/// Decodes base64 of `0x01 || 32 bytes`.
fn decode_key_bytes(
    text: &str,
    offset: usize,
    format: &'static str,
) -> Result<Vec<u8>, DecodeError> {
    let at = |reason: &str| DecodeError::at_byte(format, offset as u64, reason);
    let mut raw = BASE64.decode(text).map_err(|_| at("key is not base64"))?;
    if raw.first() != Some(&SIGNATURE_TYPE_ED25519) {
        wipe(&mut raw);
        return Err(at("key is not of signature type 0x01 (ed25519)"));
    }
    if raw.len() != 33 {
        wipe(&mut raw);
        return Err(at("ed25519 key is not 32 bytes"));
    }
    Ok(raw)
}

/// One signature line of a note, as found (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The key name.
    pub name: String,
    /// The 4-byte key id (big-endian uint32 in the encoding).
    pub key_id: [u8; 4],
    /// The signature bytes after the key id.
    pub signature: Vec<u8>,
}

impl NoteSignature {
    /// The encoded signature line, `— <name> <base64>` and a newline.
    pub fn line(&self) -> String {
        let mut raw = Vec::with_capacity(4 + self.signature.len());
        raw.extend_from_slice(&self.key_id);
        raw.extend_from_slice(&self.signature);
        format!("{SIGNATURE_PREFIX}{} {}\n", self.name, BASE64.encode(raw))
    }
}

/// The outcome of checking a note's signatures against known keys.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SignatureCheck {
    /// Distinct known verifiers whose signatures verified, in note order.
    pub valid: Vec<Verifier>,
    /// Signatures from known keys (name and key id) that did not verify.
    pub failed: Vec<NoteSignature>,
    /// Signatures from keys not in the known list (ignored, per the spec).
    pub unknown: usize,
}

/// A signed note: text (ending in a newline) and its signatures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The signed text, including its final newline.
    pub text: String,
    /// The signature lines, in order.
    pub signatures: Vec<NoteSignature>,
}

impl Note {
    /// Signs `text` with every signer, in order.
    pub fn sign<S: NoteSigner + ?Sized>(text: &str, signers: &[&S]) -> Result<Note, NoteError> {
        if signers.is_empty() {
            return Err(NoteError::NoSigners);
        }
        check_text(text)?;
        let mut note = Note {
            text: text.to_owned(),
            signatures: Vec::new(),
        };
        for signer in signers {
            note.add_signature(*signer)?;
        }
        Ok(note)
    }

    /// Adds (or replaces, for the same name and key id) `signer`'s signature.
    pub fn add_signature<S: NoteSigner + ?Sized>(&mut self, signer: &S) -> Result<(), NoteError> {
        check_text(&self.text)?;
        let signature = NoteSignature {
            name: signer.name().to_owned(),
            key_id: signer.key_id(),
            signature: signer.try_sign(self.text.as_bytes())?.to_vec(),
        };
        let same_key =
            |s: &&mut NoteSignature| s.name == signature.name && s.key_id == signature.key_id;
        if let Some(existing) = self.signatures.iter_mut().find(same_key) {
            *existing = signature;
            return Ok(());
        }
        if self.signatures.len() >= SIGNATURES_MAX {
            return Err(NoteError::TooManySignatures(self.signatures.len() + 1));
        }
        self.signatures.push(signature);
        Ok(())
    }

    /// The encoded note: text, a blank line, one line per signature.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 1 + 120 * self.signatures.len());
        out.push_str(&self.text);
        out.push('\n');
        for signature in &self.signatures {
            out.push_str(&signature.line());
        }
        out
    }

    /// Parses an encoded note. Errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Note, DecodeError> {
        Self::parse_at(text, 1)
    }

    /// Parses a note whose first line is line `first_line` of a larger input
    /// (a tlog-proof), so error lines point into that input.
    pub(crate) fn parse_at(input: &str, first_line: usize) -> Result<Note, DecodeError> {
        // Counted on bytes: `byte` may fall inside a character (the size limit).
        let line_of = |byte: usize| {
            first_line
                + input.as_bytes()[..byte]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
        };
        let at = |byte: usize, reason: &str| DecodeError::at_line(FORMAT, line_of(byte), reason);
        if input.len() > NOTE_BYTES_MAX {
            return Err(at(
                NOTE_BYTES_MAX,
                "note is larger than the note size limit",
            ));
        }
        if let Some((i, c)) = input
            .char_indices()
            .find(|&(_, c)| c != '\n' && c.is_control())
        {
            return Err(at(i, &format!("control character {c:?}")));
        }
        if !input.ends_with('\n') {
            return Err(at(input.len(), "note does not end with a newline"));
        }
        let split = input
            .rfind("\n\n")
            .ok_or_else(|| at(input.len() - 1, "missing blank line before the signatures"))?;
        let text = &input[..split + 1];
        let lines = &input[split + 2..];
        if lines.is_empty() {
            return Err(at(split + 1, "no signature lines after the blank line"));
        }
        let count = lines.matches('\n').count();
        if count > SIGNATURES_MAX {
            return Err(at(
                split + 2,
                &format!("{count} signature lines, more than {SIGNATURES_MAX}"),
            ));
        }
        let mut signatures = Vec::with_capacity(count);
        let mut offset = split + 2;
        for line in lines.split_terminator('\n') {
            signatures.push(parse_signature_line(line).map_err(|reason| at(offset, reason))?);
            offset += line.len() + 1;
        }
        Ok(Note {
            text: text.to_owned(),
            signatures,
        })
    }

    /// Checks every signature against the known `verifiers` without
    /// deciding: the caller applies its own rule (quorum, any-one).
    pub fn check_signatures(&self, verifiers: &[Verifier]) -> Result<SignatureCheck, NoteError> {
        check_unambiguous(verifiers)?;
        let mut check = SignatureCheck::default();
        for signature in &self.signatures {
            let known = verifiers
                .iter()
                .find(|v| v.name == signature.name && v.key_id == signature.key_id);
            let Some(verifier) = known else {
                check.unknown += 1;
                continue;
            };
            if !verifier.verify(self.text.as_bytes(), &signature.signature) {
                check.failed.push(signature.clone());
            } else if !check.valid.contains(verifier) {
                check.valid.push(verifier.clone());
            }
        }
        Ok(check)
    }

    /// Verifies the note per the spec: unknown keys are ignored, any failing
    /// signature of a known key rejects the note, and at least one known key
    /// must have signed. Returns the distinct known verifiers that signed.
    pub fn verify(&self, verifiers: &[Verifier]) -> Result<Vec<Verifier>, NoteError> {
        let check = self.check_signatures(verifiers)?;
        if let Some(bad) = check.failed.first() {
            return Err(NoteError::InvalidSignature {
                name: bad.name.clone(),
                key_id: to_hex(&bad.key_id),
            });
        }
        if check.valid.is_empty() {
            return Err(NoteError::NoKnownSignature);
        }
        Ok(check.valid)
    }
}

fn check_text(text: &str) -> Result<(), NoteError> {
    if !text.ends_with('\n') {
        return Err(NoteError::TextWithoutFinalNewline);
    }
    match text.chars().find(|&c| c != '\n' && c.is_control()) {
        Some(c) => Err(NoteError::TextControlCharacter(c)),
        None => Ok(()),
    }
}

fn check_unambiguous(verifiers: &[Verifier]) -> Result<(), NoteError> {
    for (i, a) in verifiers.iter().enumerate() {
        if verifiers[..i]
            .iter()
            .any(|b| b.name == a.name && b.key_id == a.key_id && b != a)
        {
            return Err(NoteError::AmbiguousKey {
                name: a.name.clone(),
                key_id: to_hex(&a.key_id),
            });
        }
    }
    Ok(())
}

/// Parses `— <name> <base64(key id || signature)>` (without the newline).
pub(crate) fn parse_signature_line(line: &str) -> Result<NoteSignature, &'static str> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or("signature line does not start with an em dash (U+2014) and a space")?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or("signature line has no space after the key name")?;
    if !is_valid_key_name(name) {
        return Err("invalid key name in signature line");
    }
    let raw = BASE64
        .decode(encoded)
        .map_err(|_| "signature is not base64")?;
    if raw.len() < 5 {
        return Err("signature is shorter than a key id and one byte");
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        key_id: [raw[0], raw[1], raw[2], raw[3]],
        signature: raw[4..].to_vec(),
    })
}

/// A verifier key's text, `<name>+<hex key id>+<base64(type || public key)>`
/// (c2sp.org/signed-note), for any signature type (replica keys, witness
/// cosigner keys).
pub(crate) fn vkey_text(name: &str, key_id: &[u8; 4], sig_type: u8, key: &[u8; 32]) -> String {
    let mut raw = [0u8; 33];
    raw[0] = sig_type;
    raw[1..].copy_from_slice(key);
    format!("{name}+{}+{}", to_hex(key_id), BASE64.encode(raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;
    use proptest::prelude::*;

    // The example of golang.org/x/mod/sumdb/note (package documentation of
    // note.go, and TestNewSigner / TestNewVerifier in note_test.go).
    const PETER_SKEY: &str =
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const PETER_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    const PETER_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                              then you don't know what your problem is.\n";
    const PETER_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
        then you don't know what your problem is.\n\
        \n\
        \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
    // The example of c2sp.org/signed-note (C2SP/C2SP signed-note.md at
    // d4c16da5e7687a016619074e78dad84b2c7238cc, "Verifier keys" example).
    const SPEC_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const SPEC_NOTE: &str = "This is an example message.\n\n\u{2014} example.com/foo \
        Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    fn signer(name: &str, byte: u8) -> Signer {
        Signer::from_seed(name, [byte; 32]).expect("valid test key name")
    }

    /// Goal: the Go reference key parses, has the published id and vkey, and
    /// signing the published text reproduces the published note byte for byte.
    #[test]
    fn go_reference_example_matches() {
        let peter = Signer::parse_skey(PETER_SKEY).expect("reference skey");
        assert_eq!(peter.name(), "PeterNeumann");
        assert_eq!(to_hex(&peter.key_id()), "c74f20a3");
        assert_eq!(peter.to_skey(), PETER_SKEY);
        assert_eq!(peter.verifier().to_vkey(), PETER_VKEY);
        assert_eq!(
            Verifier::parse_vkey(PETER_VKEY).expect("vkey"),
            peter.verifier()
        );
        let note = Note::sign(PETER_TEXT, &[&peter]).expect("sign");
        assert_eq!(note.encode(), PETER_NOTE);
        let parsed = Note::parse(PETER_NOTE).expect("parse");
        assert_eq!(parsed, note);
        assert_eq!(
            parsed.verify(&[peter.verifier()]).expect("verify"),
            vec![peter.verifier()]
        );
    }

    /// Goal: the C2SP spec's example note verifies under its published key.
    #[test]
    fn c2sp_spec_example_verifies() {
        let verifier = Verifier::parse_vkey(SPEC_VKEY).expect("spec vkey");
        assert_eq!(verifier.to_vkey(), SPEC_VKEY);
        let note = Note::parse(SPEC_NOTE).expect("spec note");
        assert_eq!(note.text, "This is an example message.\n");
        assert_eq!(
            note.verify(std::slice::from_ref(&verifier))
                .expect("verify"),
            vec![verifier]
        );
        assert_eq!(note.encode(), SPEC_NOTE);
    }

    /// Goal: unknown keys are ignored, a bad signature of a known key rejects
    /// the note, and a note with no known signer is rejected.
    #[test]
    fn verification_follows_the_spec() {
        let (a, b) = (signer("a.example", 1), signer("b.example", 2));
        let mut note = Note::sign("hello\n", &[&a, &b]).expect("sign");
        assert_eq!(
            note.verify(&[a.verifier()]).expect("a only"),
            vec![a.verifier()]
        );
        assert_eq!(note.verify(&[]), Err(NoteError::NoKnownSignature));
        // Same name, other key: unknown, ignored (spec: name or id may collide).
        let impostor = signer("a.example", 9).verifier();
        assert_eq!(
            note.verify(std::slice::from_ref(&impostor)),
            Err(NoteError::NoKnownSignature)
        );
        note.signatures[1].signature[0] ^= 1;
        assert!(matches!(
            note.verify(&[a.verifier(), b.verifier()]),
            Err(NoteError::InvalidSignature { name, .. }) if name == "b.example"
        ));
        let check = note
            .check_signatures(&[a.verifier(), b.verifier()])
            .expect("check");
        assert_eq!(
            (check.valid.len(), check.failed.len(), check.unknown),
            (1, 1, 0)
        );
    }

    /// Goal: key names and texts that break the spec are refused.
    #[test]
    fn invalid_names_and_texts_are_refused() {
        for name in ["", "a b", "a+b", "a\u{a0}b", "a\u{1}b"] {
            assert!(Signer::from_seed(name, [1; 32]).is_err(), "{name:?}");
        }
        let s = signer("ok.example", 1);
        assert_eq!(
            Note::sign("no newline", &[&s]),
            Err(NoteError::TextWithoutFinalNewline)
        );
        assert_eq!(
            Note::sign("tab\there\n", &[&s]),
            Err(NoteError::TextControlCharacter('\t'))
        );
        assert_eq!(Note::sign::<Signer>("x\n", &[]), Err(NoteError::NoSigners));
        assert!(
            !format!("{s:?}").contains(&to_hex(&[1; 32])),
            "debug must not show the seed"
        );
    }

    /// Goal: every malformed note is a DecodeError naming the right line.
    #[test]
    fn malformed_notes_name_their_line() {
        let sig = "\u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
        let cases: Vec<(String, usize)> = vec![
            (format!("a\nb\n{sig}\n"), 3), // missing blank line
            (format!("a\nb\n\n{sig}"), 4), // no trailing newline
            ("a\nb\n\n\u{2014} PeterNeumann x08go/!!\n".to_owned(), 4), // bad base64
            ("a\n\n\u{2014} k AAAAAA==\n".to_owned(), 3), // short signature
            (
                format!("a\nb\n\n{}\n", sig.replace('\u{2014}', "\u{2013}")),
                4,
            ), // en dash
            (format!("a\nb\n\n{}\n", sig.replace('\u{2014}', "--")), 4), // ascii dashes
            (format!("a\nb\n\n{sig}\n{}\n", sig.replacen(' ', "", 1)), 5), // no space
            (format!("a\nb\n\n{sig}\n\n"), 5), // blank signature line
            (format!("a\r\nb\n\n{sig}\n"), 1), // control character
            ("a\nb\n\n".to_owned(), 3),    // no signature lines
        ];
        for (input, line) in cases {
            let error = Note::parse(&input).expect_err(&input);
            assert_eq!(error.location, Location::Line(line), "{input:?}: {error}");
        }
        let many = format!("a\n\n{}", format!("{sig}\n").repeat(SIGNATURES_MAX + 1));
        assert!(Note::parse(&many).is_err());
        assert!(Note::parse(&"x".repeat(NOTE_BYTES_MAX + 1)).is_err());
        // A character across the size limit is refused at its line, not a panic.
        let across = format!("a\n{}\u{e9}\n\n", "x".repeat(NOTE_BYTES_MAX - 3));
        let error = Note::parse(&across).expect_err("over the limit");
        assert_eq!(error.location, Location::Line(2), "{error}");
    }

    /// Goal: malformed keys are refused with a byte offset.
    #[test]
    fn malformed_keys_are_refused() {
        let bad_vkeys = [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // wrong id
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // uppercase id
            "PeterNeumann+c74f20a3+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", // type byte
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",   // short key
            "PeterNeumann+c74f20a3",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ];
        for vkey in bad_vkeys {
            assert!(Verifier::parse_vkey(vkey).is_err(), "{vkey}");
        }
        let error =
            Signer::parse_skey(&PETER_SKEY.replace("c74f20a3", "c74f20a4")).expect_err("id");
        assert_eq!(error.location, crate::error::Location::Byte(25));
        assert!(Signer::parse_skey(PETER_VKEY).is_err());
    }

    fn note_text() -> impl Strategy<Value = String> {
        // Lines of printable text (may be empty) ending in a newline.
        proptest::collection::vec("[^\\p{Cc}]{0,20}", 1..6)
            .prop_map(|lines| lines.join("\n") + "\n")
    }

    proptest! {
        /// Goal: sign → encode → parse → verify round-trips for any valid
        /// text and any number of signers.
        #[test]
        fn notes_round_trip(text in note_text(), seeds in proptest::collection::vec(any::<[u8; 32]>(), 1..5)) {
            let signers: Vec<Signer> = seeds
                .iter()
                .enumerate()
                .map(|(i, seed)| Signer::from_seed(&format!("replica-{i}.example"), *seed).expect("name"))
                .collect();
            let refs: Vec<&Signer> = signers.iter().collect();
            let note = Note::sign(&text, &refs).expect("sign");
            let parsed = Note::parse(&note.encode()).expect("parse");
            prop_assert_eq!(&parsed, &note);
            let verifiers: Vec<Verifier> = signers.iter().map(Signer::verifier).collect();
            prop_assert_eq!(parsed.verify(&verifiers).expect("verify").len(), signers.len());
        }

        /// Goal: signer and verifier keys round-trip for any seed and name.
        #[test]
        fn keys_round_trip(seed in any::<[u8; 32]>(), name in "[a-z0-9./-]{1,30}") {
            let signer = Signer::from_seed(&name, seed).expect("name");
            let again = Signer::parse_skey(&signer.to_skey()).expect("skey");
            prop_assert_eq!(again.verifier(), signer.verifier());
            prop_assert_eq!(Verifier::parse_vkey(&signer.verifier().to_vkey()).expect("vkey"), signer.verifier());
        }

        /// Goal: the parser never panics on arbitrary input.
        #[test]
        fn parse_never_panics(input in "(?s).{0,200}") {
            let _ = Note::parse(&input);
            let _ = Verifier::parse_vkey(&input);
        }
    }
}
