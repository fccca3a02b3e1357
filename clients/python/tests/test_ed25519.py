"""Ed25519 verification against RFC 8032's published test vectors (section
7.1, TEST 1, 2, 3 and SHA(abc)), and the strictness rules the server's
verifier (ed25519-dalek `verify_strict`) applies. No network."""

import hashlib
import unittest

from vellum_client import ed25519

# RFC 8032 section 7.1: (public key, message, signature), hex.
RFC8032_VECTORS = [
    (  # TEST 1: empty message
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (  # TEST 2: one byte
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (  # TEST 3: two bytes
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    (  # TEST SHA(abc): the message is SHA-512("abc")
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
]

# RFC 8032 TEST 1's secret scalar is derived from its seed; the public
# key must be [s]B for the clamped scalar of SHA-512(seed)[:32].
TEST1_SEED = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"

L = 2**252 + 27742317777372353535851937790883648493


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[index] ^= 1 << bit
    return bytes(out)


class Rfc8032Vectors(unittest.TestCase):
    def test_published_vectors_verify(self):
        """Goal: every RFC 8032 7.1 vector verifies."""
        for public, message, signature in RFC8032_VECTORS:
            with self.subTest(public=public[:8]):
                self.assertTrue(ed25519.verify(bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)))

    def test_any_flipped_bit_fails(self):
        """Goal: a flipped bit in the key, message or signature fails."""
        for public, message, signature in RFC8032_VECTORS:
            key, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
            for index in (0, 17, 31, 32, 50, 63):
                self.assertFalse(ed25519.verify(key, msg, flip(sig, index, index % 8)), (public[:8], index))
            for index in (0, 31):
                self.assertFalse(ed25519.verify(flip(key, index), msg, sig), (public[:8], index))
            self.assertFalse(ed25519.verify(key, msg + b"\x00", sig))
            if msg:
                self.assertFalse(ed25519.verify(key, flip(msg, 0), sig))

    def test_public_key_derivation_matches_test1(self):
        """Goal: the point arithmetic gives TEST 1's public key from its seed."""
        digest = hashlib.sha512(bytes.fromhex(TEST1_SEED)).digest()
        scalar = int.from_bytes(digest[:32], "little")
        scalar &= (1 << 254) - 8
        scalar |= 1 << 254
        self.assertEqual(ed25519.public_key_of_scalar(scalar).hex(), RFC8032_VECTORS[0][0])


class Strictness(unittest.TestCase):
    def test_non_canonical_s_is_refused(self):
        """Goal: S + L (the same signature, malleated) is refused."""
        public, message, signature = (bytes.fromhex(x) for x in RFC8032_VECTORS[1])
        s = int.from_bytes(signature[32:], "little") + L
        self.assertLess(s, 2**256)
        malleated = signature[:32] + s.to_bytes(32, "little")
        self.assertFalse(ed25519.verify(public, message, malleated))

    def test_small_order_key_and_r_are_refused(self):
        """Goal: with the identity as key and R and S = 0, `[S]B - [k]A == R`
        holds for every message; the small-order rule refuses it."""
        identity = (1).to_bytes(32, "little")
        forged = identity + bytes(32)
        self.assertFalse(ed25519.verify(identity, b"any message", forged))

    def test_non_canonical_key_encoding_is_refused(self):
        """Goal: y >= p (here p + 1, non-canonical for y = 1) does not decode."""
        p = 2**255 - 19
        encoded = (p + 1).to_bytes(32, "little")
        signature = bytes.fromhex(RFC8032_VECTORS[0][2])
        self.assertFalse(ed25519.verify(encoded, b"", signature))

    def test_wrong_lengths_are_refused(self):
        """Goal: keys other than 32 bytes and signatures other than 64 fail."""
        public, message, signature = (bytes.fromhex(x) for x in RFC8032_VECTORS[2])
        self.assertFalse(ed25519.verify(public[:31], message, signature))
        self.assertFalse(ed25519.verify(public, message, signature[:63]))
        self.assertFalse(ed25519.verify(public, message, signature + b"\x00"))


if __name__ == "__main__":
    unittest.main()
