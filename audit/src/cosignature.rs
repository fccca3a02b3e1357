//! Witness cosignatures: C2SP `tlog-cosignature` v1 with Ed25519
//! (<https://c2sp.org/tlog-cosignature>, signature type `0x04`), and the
//! witness verifier keys that a trust policy pins.
//!
//! A cosignature is a signed-note signature line on a checkpoint, made by an
//! outside witness after it checked that the checkpoint is consistent with
//! every checkpoint of that origin it cosigned before. Replica signatures say
//! "the cluster committed this"; a witness cosignature says "and nobody has
//! shown me a different history". Written from the spec text; no code copied.
//!
//! Per the spec:
//! - key id = `SHA-256(name || 0x0A || 0x04 || public key[32])[0:4]`;
//! - the signature bytes after the key id are a `timestamped_signature`:
//!   `timestamp` (u64, big-endian, POSIX seconds, at most 2^63 - 1) then the
//!   64-byte Ed25519 signature, 72 bytes in all;
//! - the signed message is `"cosignature/v1\n"`, `"time <timestamp>\n"`
//!   (ASCII decimal, no leading zeros) and the checkpoint's whole note text
//!   (its final newline included, no signature lines).
//!
//! Vellum's strict choices: Ed25519 verification is RFC 8032 strict
//! (`verify_strict`), as for replica signatures; the ML-DSA-44 type (`0x06`)
//! is not supported; a cosignature whose timestamp is above 2^63 - 1 is
//! refused (the spec's MUST NOT). Future timestamps are accepted: a verifier
//! has no trusted clock.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};

use crate::error::DecodeError;
use crate::hash::{sha256, to_hex};
use crate::note::{Note, NoteSignature, is_valid_key_name, split_key, wipe};

/// The signature type byte of Ed25519 cosignature/v1 keys.
pub const SIGNATURE_TYPE_COSIGNATURE_V1: u8 = 0x04;
/// Bytes after the key id in a cosignature: u64 timestamp and the signature.
pub const COSIGNATURE_BYTES: usize = 8 + 64;
/// The largest timestamp the spec allows (2^63 - 1).
pub const TIMESTAMP_MAX: u64 = i64::MAX as u64;

const HEADER_LINE: &str = "cosignature/v1\n";

/// Why a cosignature could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CosignatureError {
    /// A key name that is empty or holds a space, `+` or a control character.
    #[error("invalid cosigner name {0:?}")]
    InvalidName(String),
    /// A 32-byte string that is not an Ed25519 public key.
    #[error("public key of cosigner {0} is not an ed25519 point")]
    InvalidPublicKey(String),
    /// A timestamp above 2^63 - 1.
    #[error("cosignature timestamp {0} is above 2^63 - 1")]
    TimestampTooLarge(u64),
    /// Signature bytes that are not 8 + 64 long.
    #[error("cosignature of {name} is {len} bytes after the key id, not 72")]
    WrongLength { name: String, len: usize },
    /// A cosignature that does not verify under the matching key.
    #[error("cosignature of {name}+{key_id} does not verify")]
    InvalidSignature { name: String, key_id: String },
}

/// `SHA-256(name || 0x0A || 0x04 || public key)[:4]`.
fn key_id_of(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = sha256(&[
        name.as_bytes(),
        b"\n",
        &[SIGNATURE_TYPE_COSIGNATURE_V1],
        public_key,
    ]);
    [digest[0], digest[1], digest[2], digest[3]]
}

/// The exact bytes an Ed25519 cosignature/v1 signs.
pub fn signed_message(note_text: &str, timestamp: u64) -> Vec<u8> {
    let time_line = format!("time {timestamp}\n");
    let mut message = Vec::with_capacity(HEADER_LINE.len() + time_line.len() + note_text.len());
    message.extend_from_slice(HEADER_LINE.as_bytes());
    message.extend_from_slice(time_line.as_bytes());
    message.extend_from_slice(note_text.as_bytes());
    message
}

/// A witness's signing key. Its secret never appears in `Debug`.
#[derive(Clone)]
pub struct Cosigner {
    name: String,
    key: SigningKey,
    key_id: [u8; 4],
}

impl std::fmt::Debug for Cosigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cosigner")
            .field("name", &self.name)
            .field("key_id", &to_hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

impl Cosigner {
    /// A cosigner from a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Result<Cosigner, CosignatureError> {
        let mut seed = seed;
        let key = SigningKey::from_bytes(&seed);
        wipe(&mut seed);
        if !is_valid_key_name(name) {
            return Err(CosignatureError::InvalidName(name.to_owned()));
        }
        let key_id = key_id_of(name, key.verifying_key().as_bytes());
        Ok(Cosigner {
            name: name.to_owned(),
            key,
            key_id,
        })
    }

    /// The cosigner name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, for a trust policy.
    pub fn key(&self) -> CosignerKey {
        CosignerKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
            key_id: self.key_id,
        }
    }

    /// The cosignature of `note_text` (a checkpoint's note text, final
    /// newline included) at `timestamp`, as a note signature.
    pub fn cosign(
        &self,
        note_text: &str,
        timestamp: u64,
    ) -> Result<NoteSignature, CosignatureError> {
        if timestamp > TIMESTAMP_MAX {
            return Err(CosignatureError::TimestampTooLarge(timestamp));
        }
        let signature = self.key.sign(&signed_message(note_text, timestamp));
        let mut bytes = Vec::with_capacity(COSIGNATURE_BYTES);
        bytes.extend_from_slice(&timestamp.to_be_bytes());
        bytes.extend_from_slice(&signature.to_bytes());
        Ok(NoteSignature {
            name: self.name.clone(),
            key_id: self.key_id,
            signature: bytes,
        })
    }

    /// The 32-byte seed, for the witness's key file. The caller must keep it
    /// out of logs and wipe it.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }
}

/// A witness's public key as pinned by a policy: encoded as a vkey with
/// signature type `0x04`, `<name>+<hex key id>+<base64(0x04 || key[32])>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CosignerKey {
    name: String,
    key: VerifyingKey,
    key_id: [u8; 4],
}

/// A cosignature that verified: who made it and when (per its own claim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidCosignature {
    /// The witness's key.
    pub key: CosignerKey,
    /// The timestamp it signed, POSIX seconds.
    pub timestamp: u64,
}

impl CosignerKey {
    /// A key from a name and a 32-byte Ed25519 public key.
    pub fn new(name: &str, public_key: &[u8; 32]) -> Result<CosignerKey, CosignatureError> {
        if !is_valid_key_name(name) {
            return Err(CosignatureError::InvalidName(name.to_owned()));
        }
        let key = VerifyingKey::from_bytes(public_key)
            .map_err(|_| CosignatureError::InvalidPublicKey(name.to_owned()))?;
        Ok(CosignerKey {
            name: name.to_owned(),
            key,
            key_id: key_id_of(name, public_key),
        })
    }

    /// Parses a type-`0x04` vkey, checking the key id against name and key.
    /// Errors carry the byte offset.
    pub fn parse_vkey(text: &str) -> Result<CosignerKey, DecodeError> {
        const VKEY: &str = "witness key";
        let fields = split_key(text, 0, VKEY)?;
        let at = |offset: usize, reason: &str| DecodeError::at_byte(VKEY, offset as u64, reason);
        let raw = BASE64
            .decode(fields.key)
            .map_err(|_| at(fields.key_offset, "key is not base64"))?;
        if raw.first() != Some(&SIGNATURE_TYPE_COSIGNATURE_V1) {
            return Err(at(
                fields.key_offset,
                "key is not of signature type 0x04 (ed25519 cosignature/v1)",
            ));
        }
        let public_key: [u8; 32] = raw[1..]
            .try_into()
            .map_err(|_| at(fields.key_offset, "ed25519 key is not 32 bytes"))?;
        let key = CosignerKey::new(fields.name, &public_key)
            .map_err(|_| at(fields.key_offset, "not an ed25519 public key"))?;
        if key.key_id != fields.key_id {
            return Err(at(fields.id_offset, "key id does not match key"));
        }
        Ok(key)
    }

    /// `<name>+<hex key id>+<base64(0x04 || public key)>`.
    pub fn to_vkey(&self) -> String {
        crate::note::vkey_text(
            &self.name,
            &self.key_id,
            SIGNATURE_TYPE_COSIGNATURE_V1,
            self.key.as_bytes(),
        )
    }

    /// The cosigner name.
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

    /// True if `signature` carries this key's name and key id.
    pub fn matches(&self, signature: &NoteSignature) -> bool {
        signature.name == self.name && signature.key_id == self.key_id
    }

    /// Verifies one cosignature of `note_text` made by this key. The caller
    /// has matched name and key id ([`CosignerKey::matches`]).
    pub fn verify(
        &self,
        note_text: &str,
        signature: &NoteSignature,
    ) -> Result<u64, CosignatureError> {
        let invalid = || CosignatureError::InvalidSignature {
            name: self.name.clone(),
            key_id: to_hex(&self.key_id),
        };
        if !self.matches(signature) {
            return Err(invalid());
        }
        let bytes = &signature.signature;
        if bytes.len() != COSIGNATURE_BYTES {
            return Err(CosignatureError::WrongLength {
                name: self.name.clone(),
                len: bytes.len(),
            });
        }
        let timestamp = u64::from_be_bytes(bytes[..8].try_into().expect("length checked: 72"));
        if timestamp > TIMESTAMP_MAX {
            return Err(CosignatureError::TimestampTooLarge(timestamp));
        }
        let raw: [u8; 64] = bytes[8..].try_into().expect("length checked: 72");
        let ed = ed25519_dalek::Signature::from_bytes(&raw);
        self.key
            .verify_strict(&signed_message(note_text, timestamp), &ed)
            .map_err(|_| invalid())?;
        Ok(timestamp)
    }
}

/// The outcome of checking a note's cosignatures against pinned witnesses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CosignatureCheck {
    /// Distinct pinned witnesses with a valid cosignature, in note order
    /// (the first valid timestamp of each).
    pub valid: Vec<ValidCosignature>,
    /// Cosignatures carrying a pinned witness's name and key id that did not
    /// verify, with why.
    pub failed: Vec<(NoteSignature, CosignatureError)>,
}

impl CosignatureCheck {
    /// The names of the witnesses whose cosignature verified.
    pub fn valid_names(&self) -> Vec<&str> {
        self.valid.iter().map(|v| v.key.name()).collect()
    }
}

/// Checks every signature line of `note` that names a pinned witness (name
/// and key id); lines of other keys (replica signatures, unknown witnesses)
/// are ignored, as signed-note requires.
pub fn check_cosignatures(note: &Note, witnesses: &[CosignerKey]) -> CosignatureCheck {
    let mut check = CosignatureCheck::default();
    for signature in &note.signatures {
        let Some(key) = witnesses.iter().find(|k| k.matches(signature)) else {
            continue;
        };
        match key.verify(&note.text, signature) {
            Ok(timestamp) => {
                if !check.valid.iter().any(|v| &v.key == key) {
                    check.valid.push(ValidCosignature {
                        key: key.clone(),
                        timestamp,
                    });
                }
            }
            Err(error) => check.failed.push((signature.clone(), error)),
        }
    }
    check
}

/// Parses signature lines (a witness's `add-checkpoint` answer): one or
/// more `— <name> <base64>` lines, each ending in a newline.
pub fn parse_signature_lines(text: &str) -> Result<Vec<NoteSignature>, DecodeError> {
    const LINES: &str = "cosignature lines";
    if text.is_empty() || !text.ends_with('\n') {
        return Err(DecodeError::at_line(
            LINES,
            1,
            "expected signature lines ending in a newline",
        ));
    }
    let mut out = Vec::new();
    for (index, line) in text.split_terminator('\n').enumerate() {
        if index >= crate::note::SIGNATURES_MAX {
            return Err(DecodeError::at_line(
                LINES,
                index + 1,
                "too many signature lines",
            ));
        }
        out.push(
            crate::note::parse_signature_line(line)
                .map_err(|reason| DecodeError::at_line(LINES, index + 1, reason))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const CHECKPOINT_TEXT: &str =
        "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";

    fn cosigner(name: &str, byte: u8) -> Cosigner {
        Cosigner::from_seed(name, [byte; 32]).expect("valid name")
    }

    fn note_with(signature: NoteSignature) -> Note {
        Note {
            text: CHECKPOINT_TEXT.to_owned(),
            signatures: vec![signature],
        }
    }

    /// The spec's own example message, byte for byte.
    #[test]
    fn signed_message_is_the_spec_example() {
        let message = signed_message(CHECKPOINT_TEXT, 1679315147);
        assert_eq!(
            message,
            b"cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
        );
        assert_eq!(signed_message("a\n", 0), b"cosignature/v1\ntime 0\na\n");
    }

    /// The spec's example cosignature line (c2sp.org/tlog-cosignature, whose
    /// witness public key is not published) decodes to the layout the spec
    /// defines: 4-byte key id, u64 timestamp 1679315147, 64-byte signature.
    #[test]
    fn spec_example_line_has_the_spec_layout() {
        let note = format!(
            "{CHECKPOINT_TEXT}\n\u{2014} witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n"
        );
        let note = Note::parse(&note).expect("spec example parses");
        let line = &note.signatures[0];
        assert_eq!(line.name, "witness.example.com/w1");
        assert_eq!(line.signature.len(), COSIGNATURE_BYTES);
        let timestamp =
            u64::from_be_bytes(line.signature[..8].try_into().expect("test input is valid"));
        assert_eq!(timestamp, 1679315147);
    }

    /// Interop: a vector made by another implementation written from the
    /// spec alone (Python's `cryptography`, OpenSSL's Ed25519: key id
    /// SHA-256(name || 0x0A || 0x04 || key)[:4], the signed message, the
    /// line `key id || u64 time || signature`, the vkey), for seed bytes
    /// 0..32, the spec's example checkpoint and time. Ours must produce the
    /// same vkey and line byte for byte, and check that line. The script:
    /// `audit/tests/golden/cosignature_vector.py`.
    #[test]
    fn independent_implementation_vector() {
        const VKEY: &str =
            "witness.example.com/w1+a0059f11+BAOhB7/zzhC+HXDdGOdLwJln5NYwm6UNXx3chmQSVTG4";
        const LINE: &str = "\u{2014} witness.example.com/w1 oAWfEQAAAABkGFDLBuRDazBLVac2NE+Y+IjbjQOcXLfF9CSDZVUIoS83rE1nFZsVE8YiWV6Ngr7lV8H6bdoBQGP/l73euDMQ9k+bBQ==\n";
        let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
        let witness = Cosigner::from_seed("witness.example.com/w1", seed).expect("valid name");
        assert_eq!(witness.key().to_vkey(), VKEY);
        let signature = witness
            .cosign(CHECKPOINT_TEXT, 1679315147)
            .expect("test input is valid");
        assert_eq!(signature.line(), LINE);
        let key = CosignerKey::parse_vkey(VKEY).expect("the vector's vkey parses");
        let note = Note::parse(&format!("{CHECKPOINT_TEXT}\n{LINE}")).expect("note parses");
        let check = check_cosignatures(&note, std::slice::from_ref(&key));
        assert_eq!(check.valid.len(), 1, "{check:?}");
        assert_eq!(check.valid[0].timestamp, 1679315147);
        assert!(check.failed.is_empty());
    }

    /// Cosign then verify; the vkey round-trips and carries type 0x04.
    #[test]
    fn round_trip() {
        let witness = cosigner("witness.example/w1", 7);
        let key = witness.key();
        let vkey = key.to_vkey();
        assert_eq!(CosignerKey::parse_vkey(&vkey), Ok(key.clone()));
        let raw = BASE64
            .decode(vkey.rsplit('+').next().expect("test input is valid"))
            .expect("test input is valid");
        assert_eq!(raw[0], 0x04);
        let expected_id = sha256(&[b"witness.example/w1\n\x04", &key.public_key()]);
        assert_eq!(key.key_id(), expected_id[..4]);

        let signature = witness
            .cosign(CHECKPOINT_TEXT, 1_700_000_000)
            .expect("test input is valid");
        assert_eq!(signature.signature.len(), 72);
        let note = note_with(signature.clone());
        let reparsed = Note::parse(&note.encode()).expect("test input is valid");
        let check = check_cosignatures(&reparsed, std::slice::from_ref(&key));
        assert_eq!(check.valid.len(), 1);
        assert_eq!(check.valid[0].timestamp, 1_700_000_000);
        assert!(check.failed.is_empty());
        assert_eq!(
            parse_signature_lines(&signature.line()).expect("test input is valid"),
            vec![signature]
        );
    }

    /// A flipped byte anywhere in the signature or text, a changed timestamp,
    /// and a wrong origin are refused.
    #[test]
    fn tampering_is_refused() {
        let witness = cosigner("witness.example/w1", 7);
        let key = witness.key();
        let good = witness
            .cosign(CHECKPOINT_TEXT, 1_700_000_000)
            .expect("test input is valid");
        for i in 0..good.signature.len() {
            let mut bad = good.clone();
            bad.signature[i] ^= 0x01;
            assert!(key.verify(CHECKPOINT_TEXT, &bad).is_err(), "byte {i}");
        }
        let mut later = good.clone();
        later.signature[..8].copy_from_slice(&1_700_000_001u64.to_be_bytes());
        assert!(key.verify(CHECKPOINT_TEXT, &later).is_err());
        let other_origin = CHECKPOINT_TEXT.replace("behind-the-sofa", "behind-the-couch");
        assert!(key.verify(&other_origin, &good).is_err());
        assert_eq!(key.verify(CHECKPOINT_TEXT, &good), Ok(1_700_000_000));
        let mut short = good.clone();
        short.signature.pop();
        assert!(matches!(
            key.verify(CHECKPOINT_TEXT, &short),
            Err(CosignatureError::WrongLength { len: 71, .. })
        ));
    }

    /// A cosignature under another name, or checked against another key, does
    /// not count; a 0x01 (replica) vkey is not a witness key.
    #[test]
    fn wrong_name_or_key_is_refused() {
        let witness = cosigner("witness.example/w1", 7);
        let good = witness
            .cosign(CHECKPOINT_TEXT, 5)
            .expect("test input is valid");
        let mut renamed = good.clone();
        renamed.name = "witness.example/w2".to_owned();
        assert!(witness.key().verify(CHECKPOINT_TEXT, &renamed).is_err());
        let other = cosigner("witness.example/w1", 8).key();
        let check = check_cosignatures(&note_with(good.clone()), std::slice::from_ref(&other));
        assert!(check.valid.is_empty(), "a different key's line is ignored");
        // Same name and key id but a different key cannot happen (the id
        // hashes the key); forcing it shows the signature is still checked.
        let mut forged = good;
        forged.key_id = other.key_id();
        assert!(other.verify(CHECKPOINT_TEXT, &forged).is_err());
        let replica = crate::note::Signer::from_seed("witness.example/w1", [7; 32])
            .expect("test input is valid")
            .verifier()
            .to_vkey();
        assert!(CosignerKey::parse_vkey(&replica).is_err());
        assert!(witness.cosign(CHECKPOINT_TEXT, TIMESTAMP_MAX + 1).is_err());
    }

    /// A replica's plain note signature under the same key is not a
    /// cosignature: the key ids differ (type byte) and so do the messages.
    #[test]
    fn replica_signature_is_not_a_cosignature() {
        let signer = crate::note::Signer::from_seed("w", [3; 32]).expect("test input is valid");
        let key = Cosigner::from_seed("w", [3; 32])
            .expect("test input is valid")
            .key();
        let note = Note::sign(CHECKPOINT_TEXT, &[&signer]).expect("test input is valid");
        assert_ne!(signer.key_id(), key.key_id());
        let check = check_cosignatures(&note, &[key]);
        assert!(check.valid.is_empty() && check.failed.is_empty());
    }

    proptest! {
        /// Any text, time and seed: the cosignature verifies, and not at
        /// another time.
        #[test]
        fn cosignatures_round_trip(seed in any::<[u8; 32]>(), time in 0..=TIMESTAMP_MAX, body in "[a-z0-9/+=]{1,40}") {
            let witness = Cosigner::from_seed("w.example", seed).expect("test input is valid");
            let text = format!("{body}\n1\n{body}\n");
            let signature = witness.cosign(&text, time).expect("test input is valid");
            prop_assert_eq!(witness.key().verify(&text, &signature), Ok(time));
            let mut other = signature.clone();
            other.signature[..8].copy_from_slice(&(time ^ 1).to_be_bytes());
            prop_assert!(witness.key().verify(&text, &other).is_err());
        }

        /// Parsing arbitrary witness vkeys never panics.
        #[test]
        fn parse_vkey_never_panics(input in "(?s).{0,120}") {
            let _ = CosignerKey::parse_vkey(&input);
            let _ = parse_signature_lines(&input);
        }
    }
}
