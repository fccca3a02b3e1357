//! On-disk formats of the key store: the per-DEK key file and the shred
//! tombstone. Pure encode/decode; `store` does the I/O.
//!
//! Key file `keys/dek-<key_id, 20 digits>.key`, 136 bytes, little-endian:
//!
//! ```text
//! offset size field
//!      0    8 magic "vellumDK"
//!      8    4 version (= 1)
//!     12    8 key_id
//!     20    8 stream
//!     28    8 created_unix_ms
//!     36    8 nonce_reserved_until  (every counter below it may have been used)
//!     44   12 wrap nonce            (random, see `Kek::wrap`)
//!     56   48 wrapped key           (AES-256-GCM under the KEK: 32 bytes + tag)
//!    104   32 checksum              (SHA-256 of bytes 0..104; catches corruption,
//!                                    not an attacker who can write `keys/`)
//! ```
//!
//! Tombstone `keys/shred-<stream, 20 digits>.tomb`, one text line:
//! `vellum-shred-v1 stream=<u64> shredded_at_ms=<u64> keys=<id>[,<id>...]\n`
//! (the key list may be empty). It holds no key material; it makes a shred
//! survive restarts and lets a restart finish a shred a crash interrupted.

use vellum_audit::sha256;

use super::keys::{NONCE_BYTES, WRAPPED_KEY_BYTES};

/// Bytes of a key file.
pub(crate) const KEY_FILE_BYTES: usize = 136;
/// Most key ids one tombstone may list (a stream rotated more often than
/// this is refused by the key store before it gets here).
pub(crate) const TOMBSTONE_KEYS_MAX: usize = 4096;

const KEY_FILE_MAGIC: &[u8; 8] = b"vellumDK";
const KEY_FILE_VERSION: u32 = 1;
const CHECKSUMMED_BYTES: usize = 104;
const TOMBSTONE_TAG: &str = "vellum-shred-v1";

/// The contents of one key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyRecord {
    pub key_id: u64,
    pub stream: u64,
    pub created_unix_ms: u64,
    pub nonce_reserved_until: u64,
    pub wrap_nonce: [u8; NONCE_BYTES],
    pub wrapped: [u8; WRAPPED_KEY_BYTES],
}

impl KeyRecord {
    pub(crate) fn encode(&self) -> [u8; KEY_FILE_BYTES] {
        let mut out = [0u8; KEY_FILE_BYTES];
        out[0..8].copy_from_slice(KEY_FILE_MAGIC);
        out[8..12].copy_from_slice(&KEY_FILE_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.key_id.to_le_bytes());
        out[20..28].copy_from_slice(&self.stream.to_le_bytes());
        out[28..36].copy_from_slice(&self.created_unix_ms.to_le_bytes());
        out[36..44].copy_from_slice(&self.nonce_reserved_until.to_le_bytes());
        out[44..56].copy_from_slice(&self.wrap_nonce);
        out[56..104].copy_from_slice(&self.wrapped);
        let checksum = sha256(&[&out[..CHECKSUMMED_BYTES]]);
        out[CHECKSUMMED_BYTES..].copy_from_slice(&checksum);
        out
    }

    /// Decodes a key file; the error names the byte where it went wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<KeyRecord, String> {
        if bytes.len() != KEY_FILE_BYTES {
            let at = bytes.len().min(KEY_FILE_BYTES);
            return Err(format!(
                "key file is {} bytes, expected {KEY_FILE_BYTES} (at byte {at})",
                bytes.len()
            ));
        }
        if &bytes[0..8] != KEY_FILE_MAGIC {
            return Err("bad magic at byte 0 (not a vellum key file)".to_string());
        }
        let version = u32::from_le_bytes(field(bytes, 8));
        if version != KEY_FILE_VERSION {
            return Err(format!("unsupported version {version} at byte 8"));
        }
        let checksum = sha256(&[&bytes[..CHECKSUMMED_BYTES]]);
        if checksum[..] != bytes[CHECKSUMMED_BYTES..] {
            return Err(format!(
                "checksum mismatch at byte {CHECKSUMMED_BYTES}: the key file is corrupt"
            ));
        }
        Ok(KeyRecord {
            key_id: u64::from_le_bytes(field(bytes, 12)),
            stream: u64::from_le_bytes(field(bytes, 20)),
            created_unix_ms: u64::from_le_bytes(field(bytes, 28)),
            nonce_reserved_until: u64::from_le_bytes(field(bytes, 36)),
            wrap_nonce: field(bytes, 44),
            wrapped: field(bytes, 56),
        })
    }
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N]
        .try_into()
        .expect("length checked by decode: field is in range")
}

/// A shred tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tombstone {
    pub stream: u64,
    pub shredded_at_ms: u64,
    pub key_ids: Vec<u64>,
}

impl Tombstone {
    pub(crate) fn encode(&self) -> String {
        let keys: Vec<String> = self.key_ids.iter().map(u64::to_string).collect();
        format!(
            "{TOMBSTONE_TAG} stream={} shredded_at_ms={} keys={}\n",
            self.stream,
            self.shredded_at_ms,
            keys.join(",")
        )
    }

    /// Decodes a tombstone; the error names the byte where it went wrong.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Tombstone, String> {
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("not utf-8 at byte {}", e.valid_up_to()))?;
        let line = text
            .strip_suffix('\n')
            .ok_or_else(|| format!("missing final newline at byte {}", text.len()))?;
        let mut at = 0usize;
        let mut fields = line.split(' ');
        if fields.next() != Some(TOMBSTONE_TAG) {
            return Err(format!("expected \"{TOMBSTONE_TAG}\" at byte 0"));
        }
        at += TOMBSTONE_TAG.len() + 1;
        let stream = number_field(fields.next(), "stream=", &mut at)?;
        let shredded_at_ms = number_field(fields.next(), "shredded_at_ms=", &mut at)?;
        let keys = fields
            .next()
            .and_then(|f| f.strip_prefix("keys="))
            .ok_or_else(|| format!("expected \"keys=\" at byte {at}"))?;
        at += "keys=".len();
        if let Some(extra) = fields.next() {
            let at = line.len() - extra.len();
            return Err(format!("unexpected field at byte {at}"));
        }
        let key_ids = parse_key_list(keys, at)?;
        Ok(Tombstone {
            stream,
            shredded_at_ms,
            key_ids,
        })
    }
}

fn number_field(field: Option<&str>, name: &str, at: &mut usize) -> Result<u64, String> {
    let value = field
        .and_then(|f| f.strip_prefix(name))
        .ok_or_else(|| format!("expected \"{name}\" at byte {at}"))?;
    let number = value
        .parse::<u64>()
        .map_err(|_| format!("invalid number at byte {}", *at + name.len()))?;
    *at += name.len() + value.len() + 1;
    Ok(number)
}

fn parse_key_list(list: &str, start: usize) -> Result<Vec<u64>, String> {
    if list.is_empty() {
        return Ok(Vec::new());
    }
    let mut at = start;
    let mut ids = Vec::new();
    for item in list.split(',') {
        if ids.len() == TOMBSTONE_KEYS_MAX {
            return Err(format!(
                "more than {TOMBSTONE_KEYS_MAX} key ids at byte {at}"
            ));
        }
        let id = item
            .parse::<u64>()
            .map_err(|_| format!("invalid key id at byte {at}"))?;
        ids.push(id);
        at += item.len() + 1;
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> KeyRecord {
        KeyRecord {
            key_id: 7,
            stream: 16,
            created_unix_ms: 1_700_000_000_000,
            nonce_reserved_until: 65536,
            wrap_nonce: [1; NONCE_BYTES],
            wrapped: [2; WRAPPED_KEY_BYTES],
        }
    }

    /// Goal: every flipped byte of a key file is refused (magic, version or checksum).
    #[test]
    fn key_file_detects_every_flipped_byte() {
        let good = record().encode();
        for index in 0..KEY_FILE_BYTES {
            let mut bad = good;
            bad[index] ^= 0x01;
            assert!(
                KeyRecord::decode(&bad).is_err(),
                "flip at byte {index} accepted"
            );
        }
        assert!(KeyRecord::decode(&good[..100]).is_err());
    }

    /// Goal: malformed tombstones are refused with the byte that is wrong.
    #[test]
    fn tombstone_errors_name_the_byte() {
        let cases = [
            (
                "vellum-shred-v1 stream=1 shredded_at_ms=2 keys=3",
                "byte 48",
            ),
            (
                "vellum-shred-v2 stream=1 shredded_at_ms=2 keys=3\n",
                "byte 0",
            ),
            (
                "vellum-shred-v1 stream=x shredded_at_ms=2 keys=3\n",
                "byte 23",
            ),
            (
                "vellum-shred-v1 stream=1 shredded_at_ms=2 keys=3,y\n",
                "byte 49",
            ),
            (
                "vellum-shred-v1 stream=1 shredded_at_ms=2 keys=3 z\n",
                "byte 49",
            ),
        ];
        for (text, byte) in cases {
            let error = Tombstone::decode(text.as_bytes()).expect_err(text);
            assert!(error.contains(byte), "{text:?}: {error}");
        }
    }

    /// Goal: the key-file and tombstone encodings equal the committed golden
    /// files byte for byte (regenerate only with `VELLUM_BLESS=1`).
    #[test]
    fn formats_match_golden_files() {
        let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let tombstone = Tombstone {
            stream: 16,
            shredded_at_ms: 1_700_000_000_000,
            key_ids: vec![1, 4],
        };
        let cases = [
            ("crypto_key_file.bin", record().encode().to_vec()),
            ("crypto_tombstone.txt", tombstone.encode().into_bytes()),
        ];
        for (name, encoded) in cases {
            let path = golden.join(name);
            if std::env::var_os("VELLUM_BLESS").is_some_and(|v| v == "1") {
                std::fs::create_dir_all(&golden).expect("create golden dir");
                std::fs::write(&path, &encoded).expect("write golden file");
            }
            let expected = std::fs::read(&path).expect("golden file exists");
            assert_eq!(
                expected, encoded,
                "{name} changed; rerun with VELLUM_BLESS=1 if intended"
            );
        }
    }

    proptest! {
        /// Goal: key files and tombstones round-trip for all field values.
        #[test]
        fn records_round_trip(
            key_id in any::<u64>(), stream in any::<u64>(), created in any::<u64>(),
            until in any::<u64>(), nonce in any::<[u8; 12]>(),
            keys in proptest::collection::vec(any::<u64>(), 0..20),
        ) {
            let mut wrapped = [0u8; WRAPPED_KEY_BYTES];
            wrapped[..12].copy_from_slice(&nonce);
            let key = KeyRecord { key_id, stream, created_unix_ms: created,
                nonce_reserved_until: until, wrap_nonce: nonce, wrapped };
            prop_assert_eq!(KeyRecord::decode(&key.encode()).expect("decodes"), key);
            let tomb = Tombstone { stream, shredded_at_ms: created, key_ids: keys };
            prop_assert_eq!(Tombstone::decode(tomb.encode().as_bytes()).expect("decodes"), tomb);
        }
    }
}
