"""Offline checks of the proof module: RFC 6962 inclusion against a tree
built here, the key id rule of signed notes, policy parsing. No network
(the live suite checks real receipts)."""

import hashlib
import unittest

from vellum_client import ProofFormatError, Verifier
from vellum_client.proof import Policy, leaf_hash, verify_inclusion


def node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_of(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1 Merkle tree hash, straight from the definition."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node(root_of(leaves[:k]), root_of(leaves[k:]))


def path_of(index: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1 audit path, straight from the definition."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if index < k:
        return path_of(index, leaves[:k]) + [root_of(leaves[k:])]
    return path_of(index - k, leaves[k:]) + [root_of(leaves[:k])]


class Inclusion(unittest.TestCase):
    def test_every_index_of_every_size_verifies(self):
        """Goal: for sizes 1..40, every leaf's audit path leads to the root."""
        for size in range(1, 41):
            leaves = [leaf_hash(bytes([i])) for i in range(size)]
            root = root_of(leaves)
            for index in range(size):
                path = tuple(path_of(index, leaves))
                self.assertIsNone(verify_inclusion(leaves[index], index, size, path, root), (size, index))

    def test_tampered_paths_fail(self):
        """Goal: a flipped hash, a wrong index, a wrong size, a missing or
        extra hash, or another leaf each fail."""
        size = 13
        leaves = [leaf_hash(bytes([i])) for i in range(size)]
        root = root_of(leaves)
        for index in range(size):
            path = tuple(path_of(index, leaves))
            flipped = (bytes([path[0][0] ^ 1]) + path[0][1:],) + path[1:]
            cases = {
                "flipped hash": (leaves[index], index, size, flipped),
                "other leaf": (leaves[(index + 1) % size], index, size, path),
                "short path": (leaves[index], index, size, path[:-1]),
                "long path": (leaves[index], index, size, path + (root,)),
                "index beyond size": (leaves[index], size, size, path),
                "bigger tree": (leaves[index], index, size + 5, path),
            }
            for name, (leaf, i, n, p) in cases.items():
                self.assertIsNotNone(verify_inclusion(leaf, i, n, p, root), (index, name))


class Keys(unittest.TestCase):
    # The example of golang.org/x/mod/sumdb/note, as in vellum-audit's tests.
    PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"

    def test_vkey_round_trip_and_key_id_rule(self):
        """Goal: a known vkey parses and re-encodes; a wrong key id is refused."""
        verifier = Verifier.parse(self.PETER_VKEY)
        self.assertEqual(verifier.to_vkey(), self.PETER_VKEY)
        self.assertEqual(verifier.key_id.hex(), "c74f20a3")
        with self.assertRaises(ProofFormatError):
            Verifier.parse(self.PETER_VKEY.replace("c74f20a3", "c74f20a4"))
        with self.assertRaises(ProofFormatError):
            Verifier.parse("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")

    def test_policy_rules(self):
        """Goal: a well-formed policy parses; a quorum above the keys, a
        witness left out of the group, and an unknown directive are refused."""
        base = f"origin example.com/log\nwitness w1 {self.PETER_VKEY}\n"
        policy = Policy.parse(base + "group all 1 w1\nquorum all\n")
        self.assertEqual((policy.origin, policy.quorum, len(policy.verifiers)), ("example.com/log", 1, 1))
        for bad in [
            base + "group all 2 w1\nquorum all\n",
            base + "quorum nobody\n",
            base + "log example.com/log\nquorum w1\n",
            "witness w1 " + self.PETER_VKEY + "\nquorum w1\n",
        ]:
            with self.assertRaises(ProofFormatError, msg=bad):
                Policy.parse(bad)


if __name__ == "__main__":
    unittest.main()
