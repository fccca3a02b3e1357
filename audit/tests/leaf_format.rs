//! Integration tests of the Merkle leaf preimage format: round trip over all
//! field values, and a golden file that makes any format change visible in
//! review (regenerate only with `VELLUM_BLESS=1`).

use std::path::PathBuf;

use proptest::prelude::*;
use vellum_audit::leaf::{LEAF_PREIMAGE_SIZE, LeafPreimage, commitment};

fn golden_leaf() -> LeafPreimage {
    LeafPreimage {
        global_position: 1_000_001,
        stream: 16,
        stream_offset: 7,
        op: 4242,
        ciphertext_hash: vellum_audit::sha256(&[b"ciphertext"]),
        commitment: commitment(&[0x5a; 32], b"{\"resourceType\":\"Observation\"}"),
    }
}

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

/// Goal: the encoding of a fixed leaf equals the committed golden bytes exactly.
#[test]
fn leaf_matches_golden_file() {
    let path = golden_path("leaf.bin");
    let encoded = golden_leaf().encode();
    if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, encoded).expect("write golden file");
    }
    let golden = std::fs::read(&path).expect("golden file audit/tests/golden/leaf.bin exists");
    assert_eq!(golden.len(), LEAF_PREIMAGE_SIZE);
    assert_eq!(
        golden, encoded,
        "leaf format changed; rerun with VELLUM_BLESS=1 if intended"
    );
    assert_eq!(
        LeafPreimage::decode(&golden).expect("golden decodes"),
        golden_leaf()
    );
}

proptest! {
    /// Goal: decode(encode(x)) == x for every field value.
    #[test]
    fn leaf_round_trips(
        global_position in any::<u64>(),
        stream in any::<u64>(),
        stream_offset in any::<u64>(),
        op in any::<u64>(),
        ciphertext_hash in any::<[u8; 32]>(),
        commitment in any::<[u8; 32]>(),
    ) {
        let leaf = LeafPreimage { global_position, stream, stream_offset, op, ciphertext_hash, commitment };
        let bytes = leaf.encode();
        prop_assert_eq!(LeafPreimage::decode(&bytes).expect("valid encoding decodes"), leaf);
    }

    /// Goal: decoding arbitrary bytes never panics, and succeeds only on a
    /// 97-byte version-1 input that re-encodes to the same bytes.
    #[test]
    fn leaf_decode_of_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match LeafPreimage::decode(&bytes) {
            Ok(leaf) => prop_assert_eq!(leaf.encode().to_vec(), bytes),
            Err(_) => prop_assert!(bytes.len() != LEAF_PREIMAGE_SIZE || bytes[0] != 1),
        }
    }
}
