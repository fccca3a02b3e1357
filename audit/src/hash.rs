//! SHA-256 helpers shared by every format in this crate.
//!
//! One hash function for everything (record checksums, the hash chain, Merkle
//! nodes, leaf commitments) so an auditor needs nothing but `sha256sum`-class
//! tooling to recompute any value Vellum stores.

use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// The all-zero hash, used where a format needs "no value" (never a real digest).
pub const ZERO_HASH: Hash = [0u8; 32];

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> Hash {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Lowercase hex of a hash, for messages and JSON.
pub fn to_hex(hash: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(hash.len() * 2);
    for byte in hash {
        write!(out, "{byte:02x}").expect("writing to a String cannot fail");
    }
    out
}

/// The hash written as 64 lowercase hex digits (the form [`to_hex`]
/// writes); `None` for anything else.
pub fn from_hex(text: &str) -> Option<Hash> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = (value(pair[0])? << 4) | value(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the helper is plain SHA-256 (FIPS 180-2 test vector "abc").
    #[test]
    fn sha256_matches_fips_vector() {
        assert_eq!(
            to_hex(&sha256(&[b"a", b"bc"])),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
