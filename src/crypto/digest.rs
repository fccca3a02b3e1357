//! The keyed request digest: what the VSR client table keeps of a request
//! (stream, expected offset, events) so that a reused idempotency key (same
//! client session and request number, another request) is told from a
//! retry, across view changes and restarts.
//!
//! The digest is stored in the op header, which auditors without keys see,
//! so it must not be a plain hash of PHI (P3: that would let anyone test a
//! guess of a plaintext). It is HMAC-SHA256 under a MAC key derived from the
//! stream's data key (DEK); shredding the stream destroys that key, and with
//! it every way to test a guess, even with the KEK (P6). Format: the
//! "request digest" section of `docs/format.md`.

use bytes::Bytes;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use super::keys::{DataKey, KEY_BYTES};

/// Domain tag of the MAC key derivation and of the digested message.
pub const REQUEST_DIGEST_TAG: &[u8] = b"vellum/request-digest/v1";

/// Bytes of a request digest.
pub const REQUEST_DIGEST_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// The MAC key of request digests of one data key:
/// `HMAC-SHA256(DEK, "vellum/request-digest/v1")`. Zeroized on drop.
pub struct RequestDigestKey {
    bytes: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for RequestDigestKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RequestDigestKey(..)")
    }
}

impl RequestDigestKey {
    /// Derives the digest key of `dek`.
    pub fn derive(dek: &DataKey) -> RequestDigestKey {
        let mut mac =
            HmacSha256::new_from_slice(dek.secret()).expect("hmac accepts a key of any length");
        mac.update(REQUEST_DIGEST_TAG);
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        bytes.copy_from_slice(&mac.finalize().into_bytes());
        RequestDigestKey { bytes }
    }

    /// The digest of a request: HMAC-SHA256 over the length-prefixed
    /// encoding of stream, expected offset (with a presence flag) and each
    /// event. Never all zero in practice (zero means "unknown" in a header).
    pub fn digest(
        &self,
        stream: u64,
        expected_offset: Option<u64>,
        events: &[Bytes],
    ) -> [u8; REQUEST_DIGEST_BYTES] {
        let mut mac = HmacSha256::new_from_slice(self.bytes.as_ref())
            .expect("hmac accepts a key of any length");
        mac.update(REQUEST_DIGEST_TAG);
        mac.update(&[0]);
        mac.update(&stream.to_le_bytes());
        mac.update(&[u8::from(expected_offset.is_some())]);
        mac.update(&expected_offset.unwrap_or(0).to_le_bytes());
        let count = u32::try_from(events.len()).unwrap_or(u32::MAX);
        mac.update(&count.to_le_bytes());
        for event in events {
            mac.update(&(event.len() as u64).to_le_bytes());
            mac.update(event);
        }
        let mut out = [0u8; REQUEST_DIGEST_BYTES];
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }
}

/// The digest of a request under the data key `dek` (see the module docs).
pub fn request_digest(
    dek: &DataKey,
    stream: u64,
    expected_offset: Option<u64>,
    events: &[Bytes],
) -> [u8; REQUEST_DIGEST_BYTES] {
    RequestDigestKey::derive(dek).digest(stream, expected_offset, events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn events(list: &[Vec<u8>]) -> Vec<Bytes> {
        list.iter().map(|e| Bytes::from(e.clone())).collect()
    }

    /// Goal: the digest is HMAC-SHA256 under HMAC-SHA256(DEK, tag) over the
    /// documented encoding (docs/format.md, "The request digest").
    #[test]
    fn digest_matches_the_documented_encoding() {
        let dek_bytes = [7u8; 32];
        let dek = DataKey::from_bytes(&dek_bytes);
        let mut key_mac = HmacSha256::new_from_slice(&dek_bytes).expect("key");
        key_mac.update(b"vellum/request-digest/v1");
        let mac_key = key_mac.finalize().into_bytes();
        let mut message = b"vellum/request-digest/v1\0".to_vec();
        message.extend_from_slice(&16u64.to_le_bytes());
        message.push(1);
        message.extend_from_slice(&3u64.to_le_bytes());
        message.extend_from_slice(&1u32.to_le_bytes());
        message.extend_from_slice(&2u64.to_le_bytes());
        message.extend_from_slice(b"ab");
        let mut mac = HmacSha256::new_from_slice(&mac_key).expect("key");
        mac.update(&message);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        let got = request_digest(&dek, 16, Some(3), &[Bytes::from_static(b"ab")]);
        assert_eq!(got, expected);
    }

    proptest! {
        /// Goal: the digest changes with any change of stream, expected
        /// offset (value or presence), event count, event bytes or event
        /// boundaries, and with the data key (it is keyed); the same input
        /// under the same key gives the same digest.
        #[test]
        fn digest_binds_every_field_and_the_key(
            dek_bytes in any::<[u8; 32]>(),
            other_dek in any::<[u8; 32]>(),
            stream in any::<u64>(),
            expected in proptest::option::of(any::<u64>()),
            list in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            flip in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            prop_assume!(dek_bytes != other_dek);
            let dek = DataKey::from_bytes(&dek_bytes);
            let base = request_digest(&dek, stream, expected, &events(&list));
            prop_assert_eq!(base, request_digest(&dek, stream, expected, &events(&list)));
            prop_assert_ne!(base, [0u8; 32]);

            // Keyed: another data key gives another digest.
            let other = DataKey::from_bytes(&other_dek);
            prop_assert_ne!(base, request_digest(&other, stream, expected, &events(&list)));

            // Stream.
            prop_assert_ne!(base, request_digest(&dek, stream ^ 1, expected, &events(&list)));

            // Expected offset: value, and presence (None vs Some(0)).
            let changed = match expected {
                Some(value) => vec![Some(value ^ 1), None],
                None => vec![Some(0)],
            };
            for other_expected in changed {
                prop_assert_ne!(base, request_digest(&dek, stream, other_expected, &events(&list)));
            }

            // Event count: one more event, one fewer.
            let mut more = list.clone();
            more.push(Vec::new());
            prop_assert_ne!(base, request_digest(&dek, stream, expected, &events(&more)));
            if list.len() > 1 {
                let fewer = &list[..list.len() - 1];
                prop_assert_ne!(base, request_digest(&dek, stream, expected, &events(fewer)));
            }

            // Event bytes: one flipped bit anywhere, or one byte more.
            let total: usize = list.iter().map(Vec::len).sum();
            let mut flipped = list.clone();
            if total > 0 {
                let mut at = flip.index(total);
                for event in &mut flipped {
                    if at < event.len() {
                        event[at] ^= 1 << bit;
                        break;
                    }
                    at -= event.len();
                }
                prop_assert_ne!(base, request_digest(&dek, stream, expected, &events(&flipped)));
            }
            let mut longer = list.clone();
            longer[0].push(0);
            prop_assert_ne!(base, request_digest(&dek, stream, expected, &events(&longer)));

            // Boundaries: moving a byte from one event to the next.
            if list.len() > 1 && !list[0].is_empty() {
                let mut moved = list.clone();
                let byte = moved[0].pop().expect("non-empty");
                moved[1].insert(0, byte);
                prop_assert_ne!(base, request_digest(&dek, stream, expected, &events(&moved)));
            }
        }
    }
}
