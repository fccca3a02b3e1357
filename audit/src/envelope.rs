//! The event envelope: the optional fields a client may attach to an event
//! (`id`, `type`, `content_type`, `metadata`) and their one encoding.
//!
//! An op whose header has [`crate::record::FLAG_ENVELOPES`] set carries, as
//! each event's plaintext (inside the AES-GCM ciphertext, after the salt), the
//! [`Envelope::encode`] of that event; an op without the flag carries the bare
//! payload, exactly as before envelopes existed. So the existing commitment
//! (`leaf::commitment(salt, plaintext)`) covers every envelope field, nothing
//! about them is in clear, and logs written before envelopes read unchanged.
//! The layout is specified in `docs/format.md` ("Event envelope"); this file
//! is its only implementation. The encoding is canonical: [`Envelope::decode`]
//! accepts exactly the bytes [`Envelope::encode`] produces, so a decoded
//! envelope re-encodes to the committed bytes.

use crate::error::DecodeError;

/// Magic bytes that open an encoded envelope.
pub const MAGIC: [u8; 4] = *b"VLEV";
/// The envelope version this code writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of an event id (a UUID).
pub const ID_BYTES: usize = 16;
/// Largest `type`, in bytes of UTF-8.
pub const TYPE_BYTES_MAX: usize = 256;
/// Largest `content_type`, in bytes of UTF-8.
pub const CONTENT_TYPE_BYTES_MAX: usize = 256;
/// Largest `metadata` (JSON text), in bytes.
pub const METADATA_BYTES_MAX: usize = 16 * 1024;
/// Most bytes an envelope adds to its payload (fixed part, lengths and the
/// largest fields): the frame decoder's room for envelopes.
pub const ENVELOPE_OVERHEAD_MAX: usize = FIXED_BYTES
    + ID_BYTES
    + 2
    + TYPE_BYTES_MAX
    + 2
    + CONTENT_TYPE_BYTES_MAX
    + 4
    + METADATA_BYTES_MAX;

const FIXED_BYTES: usize = 4 + 1 + 1;
const HAS_ID: u8 = 1;
const HAS_TYPE: u8 = 2;
const HAS_CONTENT_TYPE: u8 = 4;
const HAS_METADATA: u8 = 8;
const FIELDS_KNOWN: u8 = HAS_ID | HAS_TYPE | HAS_CONTENT_TYPE | HAS_METADATA;
const FORMAT: &str = "event envelope";

/// An event's envelope fields, each optional, and its payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// The client-chosen event id (a UUID's 16 bytes, RFC 9562 order).
    pub id: Option<[u8; ID_BYTES]>,
    /// The event type (UTF-8, no control characters, 1..=256 bytes).
    pub event_type: Option<String>,
    /// The payload's media type (UTF-8, no control characters, 1..=256 bytes).
    pub content_type: Option<String>,
    /// JSON text, byte for byte as the client sent it (1..=16 KiB).
    pub metadata: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Why a field was refused by [`Envelope::check`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A field is longer than its limit.
    #[error("{field} is {bytes} bytes, more than {max}")]
    TooLarge {
        /// `type`, `content_type` or `metadata`.
        field: &'static str,
        /// Its length.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A field is empty, holds a control character, or (metadata) is not JSON.
    #[error("{field} is invalid: {reason}")]
    Invalid {
        /// `type`, `content_type` or `metadata`.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

impl Envelope {
    /// True when at least one envelope field is set.
    pub fn has_fields(&self) -> bool {
        self.id.is_some()
            || self.event_type.is_some()
            || self.content_type.is_some()
            || self.metadata.is_some()
    }

    /// Checks every field against its rule (the writer's and the decoder's).
    pub fn check(&self) -> Result<(), FieldError> {
        check_label("type", self.event_type.as_deref(), TYPE_BYTES_MAX)?;
        check_label(
            "content_type",
            self.content_type.as_deref(),
            CONTENT_TYPE_BYTES_MAX,
        )?;
        if let Some(metadata) = &self.metadata {
            if metadata.len() > METADATA_BYTES_MAX {
                return Err(FieldError::TooLarge {
                    field: "metadata",
                    bytes: metadata.len(),
                    max: METADATA_BYTES_MAX,
                });
            }
            if serde_json::from_str::<serde::de::IgnoredAny>(metadata).is_err() {
                return Err(FieldError::Invalid {
                    field: "metadata",
                    reason: "not one JSON value",
                });
            }
        }
        Ok(())
    }

    /// The canonical encoding (see `docs/format.md`, "Event envelope").
    ///
    /// Panics if [`Envelope::check`] fails: callers check first.
    pub fn encode(&self) -> Vec<u8> {
        assert!(
            self.check().is_ok(),
            "envelope fields are checked before encoding"
        );
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let mut present = 0u8;
        for (bit, set) in [
            (HAS_ID, self.id.is_some()),
            (HAS_TYPE, self.event_type.is_some()),
            (HAS_CONTENT_TYPE, self.content_type.is_some()),
            (HAS_METADATA, self.metadata.is_some()),
        ] {
            if set {
                present |= bit;
            }
        }
        out.push(present);
        if let Some(id) = &self.id {
            out.extend_from_slice(id);
        }
        for label in [&self.event_type, &self.content_type].into_iter().flatten() {
            let len = u16::try_from(label.len()).expect("checked: at most 256 bytes");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(label.as_bytes());
        }
        if let Some(metadata) = &self.metadata {
            let len = u32::try_from(metadata.len()).expect("checked: at most 16 KiB");
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(metadata.as_bytes());
        }
        out.extend_from_slice(&self.payload);
        out
    }

    /// The length of [`Envelope::encode`].
    pub fn encoded_len(&self) -> usize {
        FIXED_BYTES
            + self.id.map_or(0, |_| ID_BYTES)
            + self.event_type.as_ref().map_or(0, |t| 2 + t.len())
            + self.content_type.as_ref().map_or(0, |t| 2 + t.len())
            + self.metadata.as_ref().map_or(0, |m| 4 + m.len())
            + self.payload.len()
    }

    /// Decodes an envelope; the error names the byte where it went wrong.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(4)? != MAGIC {
            return Err(DecodeError::at_byte(FORMAT, 0, "bad magic"));
        }
        let version = reader.take(1)?[0];
        if version != VERSION {
            return Err(DecodeError::at_byte(
                FORMAT,
                4,
                format!("unsupported version {version}"),
            ));
        }
        let present = reader.take(1)?[0];
        if present & !FIELDS_KNOWN != 0 {
            return Err(DecodeError::at_byte(
                FORMAT,
                5,
                format!("unknown field bits {present:#04x}"),
            ));
        }
        let mut envelope = Envelope::default();
        if present & HAS_ID != 0 {
            let id = reader.take(ID_BYTES)?;
            envelope.id = Some(id.try_into().expect("took 16 bytes"));
        }
        if present & HAS_TYPE != 0 {
            envelope.event_type = Some(reader.text(2, TYPE_BYTES_MAX)?);
        }
        if present & HAS_CONTENT_TYPE != 0 {
            envelope.content_type = Some(reader.text(2, CONTENT_TYPE_BYTES_MAX)?);
        }
        if present & HAS_METADATA != 0 {
            envelope.metadata = Some(reader.text(4, METADATA_BYTES_MAX)?);
        }
        let fields_end = reader.at;
        envelope.payload = bytes[fields_end..].to_vec();
        envelope
            .check()
            .map_err(|e| DecodeError::at_byte(FORMAT, FIXED_BYTES as u64, e.to_string()))?;
        Ok(envelope)
    }
}

/// Checks one event type against the envelope's rule for `type` (UTF-8,
/// 1..=[`TYPE_BYTES_MAX`] bytes, no control character): the rule a reader's
/// type filter checks its names against, so it can name every type an
/// event may carry and nothing else.
pub fn check_type(value: &str) -> Result<(), FieldError> {
    check_label("type", Some(value), TYPE_BYTES_MAX)
}

fn check_label(field: &'static str, value: Option<&str>, max: usize) -> Result<(), FieldError> {
    let Some(value) = value else {
        return Ok(());
    };
    if value.len() > max {
        return Err(FieldError::TooLarge {
            field,
            bytes: value.len(),
            max,
        });
    }
    if value.is_empty() {
        return Err(FieldError::Invalid {
            field,
            reason: "empty",
        });
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::Invalid {
            field,
            reason: "holds a control character",
        });
    }
    Ok(())
}

/// Parses a UUID in its canonical text form only: 36 characters, lowercase
/// hex digits in groups 8-4-4-4-12 separated by `-`. Any other spelling
/// (uppercase, braces, `urn:uuid:`, no hyphens) is refused, so the id a
/// reader gets back is byte for byte the one sent.
pub fn parse_uuid(text: &str) -> Option<[u8; ID_BYTES]> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut out = [0u8; ID_BYTES];
    let mut nibbles = 0usize;
    for (i, &c) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let value = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        out[nibbles / 2] |= if nibbles.is_multiple_of(2) {
            value << 4
        } else {
            value
        };
        nibbles += 1;
    }
    Some(out)
}

/// The canonical text form of a UUID (the inverse of [`parse_uuid`]).
pub fn format_uuid(id: &[u8; ID_BYTES]) -> String {
    let mut out = String::with_capacity(36);
    for (i, byte) in id.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len());
        let Some(end) = end else {
            return Err(DecodeError::at_byte(
                FORMAT,
                self.bytes.len() as u64,
                format!("truncated: {n} more bytes expected"),
            ));
        };
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// A length-prefixed UTF-8 field (`width` = 2 or 4 bytes of length).
    fn text(&mut self, width: usize, max: usize) -> Result<String, DecodeError> {
        let at = self.at;
        let len_bytes = self.take(width)?;
        let mut len = [0u8; 4];
        len[..width].copy_from_slice(len_bytes);
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(DecodeError::at_byte(
                FORMAT,
                at as u64,
                format!("field of {len} bytes, more than {max}"),
            ));
        }
        let text_at = self.at;
        let raw = self.take(len)?;
        String::from_utf8(raw.to_vec()).map_err(|e| {
            DecodeError::at_byte(
                FORMAT,
                (text_at + e.utf8_error().valid_up_to()) as u64,
                "not utf-8",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn full() -> Envelope {
        Envelope {
            id: parse_uuid("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
            event_type: Some("Observation".to_string()),
            content_type: Some("application/fhir+json".to_string()),
            metadata: Some(r#"{"source":"lab-7","n":1.50}"#.to_string()),
            payload: br#"{"resourceType":"Observation"}"#.to_vec(),
        }
    }

    /// Goal: the encoding of a full envelope equals the committed golden
    /// file byte for byte (regenerate only with `VELLUM_BLESS=1`).
    #[test]
    fn encoding_matches_golden_file() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/golden/event_envelope.bin");
        let encoded = full().encode();
        if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(&path, &encoded).expect("write golden file");
        }
        let expected = std::fs::read(&path).expect("golden file exists");
        assert_eq!(expected, encoded, "event_envelope.bin changed");
    }

    /// Goal: every cut of a full envelope inside its fields is refused,
    /// naming a byte, and a cut inside the payload decodes to a shorter payload.
    #[test]
    fn truncations_are_refused_in_the_fields() {
        let good = full().encode();
        let fields_end = good.len() - full().payload.len();
        for cut in 0..fields_end {
            let error = Envelope::decode(&good[..cut]).expect_err("truncated fields");
            assert!(error.to_string().contains("byte"), "{error}");
        }
        let shorter = Envelope::decode(&good[..fields_end]).expect("empty payload");
        assert!(shorter.payload.is_empty());
    }

    /// Goal: bad magic, version, field bits, lengths and texts are refused.
    #[test]
    fn malformed_envelopes_are_refused() {
        let good = full().encode();
        let mut cases: Vec<(Vec<u8>, &str)> = Vec::new();
        let mut bad = good.clone();
        bad[0] = b'X';
        cases.push((bad, "bad magic"));
        let mut bad = good.clone();
        bad[4] = 2;
        cases.push((bad, "unsupported version"));
        let mut bad = good.clone();
        bad[5] |= 0x10;
        cases.push((bad, "unknown field bits"));
        // type length 0xffff: beyond the limit.
        let mut bad = good.clone();
        bad[22] = 0xff;
        bad[23] = 0xff;
        cases.push((bad, "more than 256"));
        // a control character in type.
        let mut bad = good.clone();
        bad[24] = b'\n';
        cases.push((bad, "control character"));
        // metadata that is not JSON.
        let mut text = full();
        text.metadata = Some("{}".to_string());
        let mut bad = text.encode();
        let at = bad.len() - text.payload.len() - 2;
        bad[at] = b'x';
        cases.push((bad, "not one JSON value"));
        for (bytes, reason) in cases {
            let error = Envelope::decode(&bytes).expect_err(reason).to_string();
            assert!(error.contains(reason), "{reason}: {error}");
        }
    }

    /// Goal: only the canonical lowercase 8-4-4-4-12 UUID spelling parses.
    #[test]
    fn uuid_spellings() {
        let canonical = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        let id = parse_uuid(canonical).expect("canonical");
        assert_eq!(format_uuid(&id), canonical);
        for odd in [
            "0190A1B2-C3D4-7E5F-8A9B-0C1D2E3F4A5B",
            "{0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b}",
            "urn:uuid:0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
            "0190a1b2c3d47e5f8a9b0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5",
            "0190a1b2-c3d4-7e5f-8a9b_0c1d2e3f4a5b",
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5g",
            "",
        ] {
            assert_eq!(parse_uuid(odd), None, "{odd}");
        }
    }

    proptest! {
        /// Goal: every valid envelope round-trips, and its decode re-encodes
        /// to the same bytes (canonical).
        #[test]
        fn envelopes_round_trip(
            id in proptest::option::of(any::<[u8; 16]>()),
            event_type in proptest::option::of("[^\\p{Cc}]{1,40}"),
            content_type in proptest::option::of("[a-z/+.]{1,30}"),
            metadata in proptest::option::of(any::<i64>()),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let envelope = Envelope {
                id, event_type, content_type,
                metadata: metadata.map(|n| format!("{{\"n\": {n}}}")),
                payload,
            };
            let bytes = envelope.encode();
            prop_assert_eq!(bytes.len(), envelope.encoded_len());
            let decoded = Envelope::decode(&bytes).expect("decodes");
            prop_assert_eq!(&decoded, &envelope);
            prop_assert_eq!(decoded.encode(), bytes);
        }
    }
}
