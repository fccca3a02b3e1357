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
