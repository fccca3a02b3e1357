//! The per-event Merkle leaf: its fixed 97-byte preimage, its RFC 6962 leaf
//! hash, and the hiding commitment to the event's plaintext.
//!
//! The preimage is what an auditor without keys sees (P3), so it holds no PHI
//! and no unsalted hash of PHI: positions, ids, the SHA-256 of the event's
//! *ciphertext*, and a commitment `SHA-256(tag || salt || plaintext)` whose
//! 32-byte random salt lives only inside the ciphertext. An export that
//! reveals plaintext and salt proves the plaintext belongs to the leaf; once
//! the stream's data key is shredded (P6) the salt is gone and nothing links
//! the leaf to the plaintext any more.
//!
//! Layout (little-endian, 97 bytes):
//!
//! ```text
//! offset size field
//!      0    1 version (= 1)
//!      1    8 global_position   (= the leaf index in the global tree)
//!      9    8 stream
//!     17    8 stream_offset
//!     25    8 op                (the VSR op that carried the event)
//!     33   32 ciphertext_hash   (SHA-256 of nonce || ciphertext || tag as stored)
//!     65   32 commitment        (see `commitment`)
//! ```

use crate::error::DecodeError;
use crate::hash::{Hash, sha256};
use crate::record::{EventFrame, OpHeader, Record, decode_events};

/// The only preimage version this code writes and reads.
pub const LEAF_VERSION: u8 = 1;

/// Size in bytes of an encoded leaf preimage.
pub const LEAF_PREIMAGE_SIZE: usize = 97;

/// Domain tag of the plaintext commitment; the trailing NUL ends the tag so
/// no salt can be read as a longer tag.
pub const COMMITMENT_TAG: &[u8] = b"vellum/commit/v1\0";

/// RFC 6962 prefix of a leaf hash (interior nodes use `0x01`).
pub const LEAF_HASH_PREFIX: u8 = 0x00;

const FORMAT: &str = "leaf preimage";

/// The fields hashed into one event's Merkle leaf. Holds no PHI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeafPreimage {
    /// Position of the event in the global log; also its leaf index.
    pub global_position: u64,
    /// The stream the event belongs to (an opaque id, never a name).
    pub stream: u64,
    /// The event's offset within its stream.
    pub stream_offset: u64,
    /// The VSR op number that carried the event.
    pub op: u64,
    /// SHA-256 of the event's stored nonce, ciphertext and AEAD tag
    /// (`record::EventFrame::ciphertext_hash`).
    pub ciphertext_hash: Hash,
    /// Hiding commitment to the plaintext, see [`commitment`].
    pub commitment: Hash,
}

impl LeafPreimage {
    /// The fixed 97-byte encoding.
    pub fn encode(&self) -> [u8; LEAF_PREIMAGE_SIZE] {
        let mut out = [0u8; LEAF_PREIMAGE_SIZE];
        out[0] = LEAF_VERSION;
        out[1..9].copy_from_slice(&self.global_position.to_le_bytes());
        out[9..17].copy_from_slice(&self.stream.to_le_bytes());
        out[17..25].copy_from_slice(&self.stream_offset.to_le_bytes());
        out[25..33].copy_from_slice(&self.op.to_le_bytes());
        out[33..65].copy_from_slice(&self.ciphertext_hash);
        out[65..97].copy_from_slice(&self.commitment);
        out
    }

    /// Decodes exactly one preimage; any other length or version is an error
    /// naming the byte where decoding stopped.
    pub fn decode(bytes: &[u8]) -> Result<LeafPreimage, DecodeError> {
        if bytes.is_empty() {
            return Err(DecodeError::at_byte(
                FORMAT,
                0,
                "empty input, expected 97 bytes",
            ));
        }
        if bytes[0] != LEAF_VERSION {
            return Err(DecodeError::at_byte(
                FORMAT,
                0,
                format!("unsupported version {} (expected {LEAF_VERSION})", bytes[0]),
            ));
        }
        if bytes.len() < LEAF_PREIMAGE_SIZE {
            return Err(DecodeError::at_byte(
                FORMAT,
                bytes.len() as u64,
                format!("truncated: {} of {LEAF_PREIMAGE_SIZE} bytes", bytes.len()),
            ));
        }
        if bytes.len() > LEAF_PREIMAGE_SIZE {
            return Err(DecodeError::at_byte(
                FORMAT,
                LEAF_PREIMAGE_SIZE as u64,
                format!(
                    "{} trailing bytes after the {LEAF_PREIMAGE_SIZE}-byte preimage",
                    bytes.len() - LEAF_PREIMAGE_SIZE
                ),
            ));
        }
        Ok(LeafPreimage {
            global_position: read_u64(bytes, 1),
            stream: read_u64(bytes, 9),
            stream_offset: read_u64(bytes, 17),
            op: read_u64(bytes, 25),
            ciphertext_hash: read_hash(bytes, 33),
            commitment: read_hash(bytes, 65),
        })
    }

    /// The RFC 6962 leaf hash: `SHA-256(0x00 || preimage)`.
    pub fn leaf_hash(&self) -> Hash {
        sha256(&[&[LEAF_HASH_PREFIX], &self.encode()])
    }

    /// The leaf of event `index_in_op` (0-based) of the op `header`, whose
    /// stored frame is `frame`: positions and offsets count up from the
    /// header's first ones. The one place a leaf is built from a record.
    pub fn of_event(header: &OpHeader, frame: &EventFrame<'_>, index_in_op: u64) -> LeafPreimage {
        LeafPreimage {
            global_position: header.global_position + index_in_op,
            stream: header.stream,
            stream_offset: header.stream_offset + index_in_op,
            op: header.op,
            ciphertext_hash: frame.ciphertext_hash(),
            commitment: frame.commitment,
        }
    }
}

/// The leaf preimages of an op record's events, in order; an error (naming
/// the byte, counted from `at`, the file offset of the record's header) when
/// the body does not hold exactly `event_count` frames.
pub fn record_leaves(record: &Record, at: u64) -> Result<Vec<LeafPreimage>, DecodeError> {
    let header = &record.header;
    let body_at = at + crate::record::HEADER_BYTES as u64;
    let frames = decode_events(&record.body, header.event_count, body_at)?;
    Ok(frames
        .iter()
        .zip(0u64..)
        .map(|(frame, i)| LeafPreimage::of_event(header, frame, i))
        .collect())
}

/// The RFC 6962 leaf hashes of an op record's events, in order (see
/// [`record_leaves`]).
pub fn record_leaf_hashes(record: &Record, at: u64) -> Result<Vec<Hash>, DecodeError> {
    Ok(record_leaves(record, at)?
        .iter()
        .map(LeafPreimage::leaf_hash)
        .collect())
}

/// The hiding commitment to an event's plaintext:
/// `SHA-256("vellum/commit/v1\0" || salt || plaintext)`.
///
/// `salt` must be 32 fresh random bytes per event, stored only inside the
/// event's ciphertext; without it the commitment reveals nothing about a
/// low-entropy plaintext.
pub fn commitment(salt: &[u8; 32], plaintext: &[u8]) -> Hash {
    sha256(&[COMMITMENT_TAG, salt, plaintext])
}

fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let field: [u8; 8] = bytes[at..at + 8]
        .try_into()
        .expect("length checked by decode: 8-byte field is in range");
    u64::from_le_bytes(field)
}

fn read_hash(bytes: &[u8], at: usize) -> Hash {
    bytes[at..at + 32]
        .try_into()
        .expect("length checked by decode: 32-byte field is in range")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Location;

    fn sample() -> LeafPreimage {
        LeafPreimage {
            global_position: 0x0102_0304_0506_0708,
            stream: 17,
            stream_offset: 3,
            op: 42,
            ciphertext_hash: [0xaa; 32],
            commitment: [0xbb; 32],
        }
    }

    /// Goal: fields land at the documented offsets, little-endian.
    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let bytes = sample().encode();
        assert_eq!(bytes[0], 1);
        assert_eq!(&bytes[1..9], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&bytes[9..17], &17u64.to_le_bytes());
        assert_eq!(&bytes[17..25], &3u64.to_le_bytes());
        assert_eq!(&bytes[25..33], &42u64.to_le_bytes());
        assert_eq!(&bytes[33..65], &[0xaa; 32]);
        assert_eq!(&bytes[65..97], &[0xbb; 32]);
    }

    /// Goal: the leaf hash is SHA-256 over 0x00 then the preimage (RFC 6962).
    #[test]
    fn leaf_hash_uses_rfc6962_leaf_prefix() {
        let leaf = sample();
        let mut prefixed = vec![0u8];
        prefixed.extend_from_slice(&leaf.encode());
        assert_eq!(leaf.leaf_hash(), sha256(&[&prefixed]));
        assert_ne!(leaf.leaf_hash(), sha256(&[&leaf.encode()]));
    }

    /// Goal: each malformed input is refused with the byte where it went wrong.
    #[test]
    fn decode_errors_name_the_byte() {
        let good = sample().encode();
        let cases: Vec<(Vec<u8>, u64)> = vec![
            (Vec::new(), 0),
            (
                {
                    let mut b = good.to_vec();
                    b[0] = 2;
                    b
                },
                0,
            ),
            (good[..50].to_vec(), 50),
            (
                {
                    let mut b = good.to_vec();
                    b.push(0);
                    b
                },
                97,
            ),
        ];
        for (input, byte) in cases {
            let error = LeafPreimage::decode(&input).expect_err("malformed input must fail");
            assert_eq!(error.location, Location::Byte(byte), "{error}");
            assert!(error.to_string().starts_with("leaf preimage: "), "{error}");
        }
    }

    /// Goal: the commitment depends on salt and plaintext and uses the domain tag.
    #[test]
    fn commitment_binds_salt_and_plaintext() {
        let salt = [7u8; 32];
        let base = commitment(&salt, b"patient note");
        assert_eq!(
            base,
            sha256(&[b"vellum/commit/v1\0", &salt, b"patient note"])
        );
        assert_ne!(base, commitment(&[8u8; 32], b"patient note"));
        assert_ne!(base, commitment(&salt, b"patient notf"));
    }
}
