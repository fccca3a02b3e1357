"""Offline checks of the proof module: RFC 6962 inclusion against a tree
built here, the key id rule of signed notes, policy parsing. No network
(the live suite checks real receipts)."""

import base64
import hashlib
import pathlib
import unittest

from vellum_client import ProofFormatError, Verifier
from vellum_client import ed25519
from vellum_client.proof import (
    Certificate,
    Checkpoint,
    InclusionProof,
    KeyRotation,
    NoteSignature,
    Policy,
    _quorum_part,
    announcement,
    leaf_hash,
    verify_inclusion,
)

# Made by the vellum binary (a one-replica data directory: two appends, a
# proof of the first, `vellum keys rotate-signing`, one more append, a proof
# of it): the trust policy before and after the rotation, the proofs of
# ops 2 (old key) and 3 (new key).
ROTATION_FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "rotation"


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


class TestSigner:
    """Ed25519 signing (RFC 8032 5.1.6) for synthetic certificates only."""

    def __init__(self, name: str, seed: int) -> None:
        digest = hashlib.sha512(bytes([seed]) * 32).digest()
        scalar = int.from_bytes(digest[:32], "little")
        scalar &= (1 << 254) - 8
        scalar |= 1 << 254
        self.scalar, self.prefix = scalar, digest[32:]
        self.verifier = Verifier.of(name, ed25519.public_key_of_scalar(scalar))

    def sign(self, message: bytes) -> bytes:
        order = ed25519._L
        r = int.from_bytes(hashlib.sha512(self.prefix + message).digest(), "little") % order
        r_bytes = ed25519.public_key_of_scalar(r)
        k = hashlib.sha512(r_bytes + self.verifier.public_key + message).digest()
        s = (r + int.from_bytes(k, "little") * self.scalar) % order
        return r_bytes + s.to_bytes(32, "little")


ORIGIN = "vellum.local/cluster/00112233445566778899aabbccddeeff"


def rotation(replica: int, from_op: int, old: TestSigner, new: TestSigner) -> KeyRotation:
    text = announcement(ORIGIN, replica, from_op, old.verifier, new.verifier)
    return KeyRotation(replica, from_op, new.verifier, old.sign(text), new.sign(text))


def certificate_at(op: int | None, signers: list[TestSigner]) -> Certificate:
    extensions = () if op is None else (f"vellum-head {op} " + "ab" * 32,)
    checkpoint = Checkpoint(ORIGIN, op or 1, bytes(32), extensions)
    text = checkpoint.body()
    signatures = tuple(NoteSignature(s.verifier.name, s.verifier.key_id, s.sign(text.encode())) for s in signers)
    return Certificate(checkpoint, text, signatures)


def policy_text(signers: list[TestSigner], rotations: list[KeyRotation], quorum: int) -> str:
    lines = [f"origin {ORIGIN}"]
    lines += [f"witness {s.verifier.name} {s.verifier.to_vkey()}" for s in signers]
    lines.append(f"group replicas {quorum} " + " ".join(s.verifier.name for s in signers))
    lines += [r.to_line() for r in rotations]
    lines.append("quorum replicas")
    return "\n".join(lines) + "\n"


class Rotation(unittest.TestCase):
    def test_the_vellum_binary_rotation_verifies_proofs_from_before_and_after(self):
        """Goal: the policy `vellum keys rotate-signing` wrote parses, its
        rotation line round trips byte for byte, the proof certified before
        the rotation verifies under it (old key) and the one after it too
        (new key), while the policy from before the rotation refuses the new
        key's certificate."""
        rotated_text = (ROTATION_FIXTURES / "policy-rotated.txt").read_text()
        rotated = Policy.parse(rotated_text)
        before = Policy.parse((ROTATION_FIXTURES / "policy-before.txt").read_text())
        self.assertEqual(len(rotated.rotations), 1)
        line = next(x for x in rotated_text.split("\n") if x.startswith("rotation "))
        self.assertEqual(rotated.rotations[0].to_line(), line)
        self.assertEqual(rotated.verifier_at(0, 2), before.verifiers[0])
        self.assertEqual(rotated.verifier_at(0, 3), rotated.rotations[0].new)
        old_proof = InclusionProof.parse((ROTATION_FIXTURES / "before.proof").read_text())
        new_proof = InclusionProof.parse((ROTATION_FIXTURES / "after.proof").read_text())
        for proof, policy, passes in [
            (old_proof, rotated, True),
            (new_proof, rotated, True),
            (old_proof, before, True),
            (new_proof, before, False),
        ]:
            check = _quorum_part(proof.certificate, policy)
            self.assertEqual(check.passed, passes, check.message)

    def test_a_rotation_line_that_does_not_fit_is_refused_at_its_line(self):
        """Goal: a forged old or new signature, an unknown replica, op 0, a
        non-canonical op, a second rotation not after the first, a line
        after the quorum line and a short line are each refused, naming the
        line."""
        text = (ROTATION_FIXTURES / "policy-rotated.txt").read_text()
        line = next(x for x in text.split("\n") if x.startswith("rotation "))
        words = line.split(" ")

        def flip(b64: str) -> str:
            raw = bytearray(base64.b64decode(b64))
            raw[0] ^= 1
            return base64.b64encode(bytes(raw)).decode()

        cases = [
            (" ".join(words[:4] + [flip(words[4]), words[5]]), "line 4", "not signed by its key in force"),
            (" ".join(words[:5] + [flip(words[5])]), "line 4", "not signed by the new key"),
            (" ".join([words[0], "1"] + words[2:]), "line 4", "replica 1 is not in the policy"),
            (" ".join([words[0], words[1], "0"] + words[3:]), "line 4", "does not come after op 0"),
            (" ".join([words[0], words[1], "03"] + words[3:]), "line 4", "leading zeros"),
            (line + "\n" + line, "line 5", "does not come after op 3"),
            (" ".join(words[:5]), "line 4", "expected <index>"),
        ]
        bad_texts = [(text.replace(line, replacement), replacement, where, why) for replacement, where, why in cases]
        # The rotation line moved after the quorum line.
        after_quorum = text.replace(line + "\n", "") + line + "\n"
        bad_texts.append((after_quorum, "after quorum", "line 5", "no line may follow the quorum line"))
        for bad, replacement, where, why in bad_texts:
            with self.assertRaises(ProofFormatError, msg=replacement) as raised:
                Policy.parse(bad)
            self.assertIn(where, str(raised.exception), replacement)
            self.assertIn(why, str(raised.exception), replacement)

    def test_a_pinned_rotation_decides_which_key_counts_at_each_op(self):
        """Goal: as vellum-audit's test of the same name: before the
        rotation only the old key counts, from it on only the new one; a
        certificate without one vellum-head line is refused only when the
        policy pins rotations; a new key pinned already is refused."""
        signers = [TestSigner(f"vellum-00112233-r{i}", i + 1) for i in range(3)]
        new = TestSigner("vellum-00112233-r1", 9)
        pinned = rotation(1, 100, signers[1], new)
        policy = Policy.parse(policy_text(signers, [pinned], 2))
        self.assertEqual(policy.rotations, (pinned,))
        r0, old = signers[0], signers[1]
        for op, keys, accepted in [
            (99, [r0, old], True),
            (99, [r0, new], False),
            (100, [r0, old], False),
            (100, [r0, new], True),
            (5000, [r0, new], True),
            (5000, [old, new], False),
        ]:
            check = _quorum_part(certificate_at(op, keys), policy)
            self.assertEqual(check.passed, accepted, (op, check.message))
        headless = certificate_at(None, [r0, old])
        self.assertIn("vellum-head", _quorum_part(headless, policy).message)
        self.assertFalse(_quorum_part(headless, policy).passed)
        without = Policy.parse(policy_text(signers, [], 2))
        self.assertTrue(_quorum_part(headless, without).passed, "no rotation: no op needed")
        twice = certificate_at(99, [r0, old])
        two_heads = Checkpoint(ORIGIN, 99, bytes(32), twice.checkpoint.extensions * 2)
        text = two_heads.body()
        signatures = tuple(
            NoteSignature(s.verifier.name, s.verifier.key_id, s.sign(text.encode())) for s in [r0, old]
        )
        doubled = Certificate(two_heads, text, signatures)
        self.assertIn("vellum-head", _quorum_part(doubled, policy).message)
        reused = rotation(1, 100, signers[1], signers[2])
        with self.assertRaises(ProofFormatError) as raised:
            Policy.parse(policy_text(signers, [reused], 2))
        self.assertIn("already pinned", str(raised.exception))


if __name__ == "__main__":
    unittest.main()
