"""Offline checks of Vellum receipts, like `vellum proof check`.

A receipt's proof is a `c2sp.org/tlog-proof@v1` text: the leaf preimage
(`extra`), the leaf index, the RFC 6962 inclusion path, and the commit
certificate (a C2SP signed note of a checkpoint, signed by replicas). The
check has three independent parts, each run whatever the others found, so
a failure names every part that broke (the same rules as
`vellum_audit::proof::check_event`, see docs/format.md and SECURITY.md):

- inclusion: `extra` is a 97-byte leaf preimage naming the proof's index,
  and the Merkle path leads from its leaf hash to the checkpoint's root;
- quorum: the checkpoint names the pinned origin and carries valid
  signatures of at least the policy's quorum of distinct pinned keys, and
  no failing signature of a pinned key (unpinned keys are ignored);
- commitment: `SHA-256("vellum/commit/v1\\0" || salt || event)` is the
  leaf's commitment, so the proof is about exactly these event bytes. For
  an event read with `envelope` true those bytes are its encoded envelope
  (`vellum_client.envelope`), which `check_event` rebuilds when given the
  read `Event` itself.

Keys come only from the trust policy (`policy.txt`), never from the data
being checked. Nothing here needs the network.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import struct
from typing import Protocol

from . import ed25519
from .errors import ProofFormatError

__all__ = [
    "Verifier",
    "Policy",
    "Checkpoint",
    "Certificate",
    "InclusionProof",
    "KeyRotation",
    "LeafPreimage",
    "PartCheck",
    "EventCheck",
    "check_event",
    "commitment",
    "leaf_hash",
    "verify_inclusion",
]

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
COMMITMENT_TAG = b"vellum/commit/v1\0"
LEAF_PREIMAGE_SIZE = 97
LEAF_VERSION = 1
SIGNATURE_TYPE_ED25519 = 0x01
# Limits as in vellum-audit: proof hashes, extra, note size, signatures,
# policy keys and size, checkpoint extension lines.
PROOF_HASHES_MAX = 65
EXTRA_BYTES_MAX = 4096
NOTE_BYTES_MAX = 64 * 1024
SIGNATURES_MAX = 100
POLICY_VERIFIERS_MAX = 64
POLICY_BYTES_MAX = 64 * 1024
EXTENSIONS_MAX = 16
# Replica signing-key rotations (vellum-audit's key_history): the domain of
# the announcement's signatures, the most rotations one policy pins, and
# the checkpoint extension naming the op a certificate certifies.
KEY_ROTATION_TAG = "vellum-key-rotation/v1"
KEY_ROTATIONS_MAX = 1024
CHAIN_HEAD_EXTENSION = "vellum-head"
_SIGNATURE_PREFIX = "\u2014 "


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ProofFormatError(f"{what} is not standard base64: {error}") from None


def _decimal(text: str, what: str) -> int:
    canonical = text.isascii() and text.isdigit() and (text == "0" or not text.startswith("0"))
    if not canonical or int(text) >= 2**64:
        raise ProofFormatError(f"{what} {text!r} is not a decimal without leading zeros")
    return int(text)


def _hash32(text: str, what: str) -> bytes:
    raw = _b64(text, what)
    if len(raw) != 32:
        raise ProofFormatError(f"{what} is not the base64 of 32 bytes")
    return raw


def _valid_key_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c == "+" or ord(c) < 0x20 or ord(c) == 0x7F for c in name)


def _key_id(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([SIGNATURE_TYPE_ED25519]) + public_key).digest()[:4]


@dataclasses.dataclass(frozen=True)
class Verifier:
    """A pinned replica key: `<name>+<hex key id>+<base64(0x01 || key)>`."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def parse(cls, vkey: str) -> "Verifier":
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise ProofFormatError(f"verifier key {vkey!r} is not <name>+<id>+<key>")
        name, key_id_hex, key = parts
        if not _valid_key_name(name):
            raise ProofFormatError(f"verifier key: invalid key name {name!r}")
        if len(key_id_hex) != 8 or any(c not in "0123456789abcdef" for c in key_id_hex):
            raise ProofFormatError(f"verifier key {name}: key id is not 8 lowercase hex digits")
        raw = _b64(key, f"verifier key {name}")
        if len(raw) != 33 or raw[0] != SIGNATURE_TYPE_ED25519:
            raise ProofFormatError(f"verifier key {name}: not an ed25519 key (0x01 and 32 bytes)")
        public_key = raw[1:]
        if _key_id(name, public_key).hex() != key_id_hex:
            raise ProofFormatError(f"verifier key {name}: key id does not match the key")
        return cls(name, bytes.fromhex(key_id_hex), public_key)

    @classmethod
    def of(cls, name: str, public_key: bytes) -> "Verifier":
        """A verifier from a key name and a 32-byte public key."""
        if not _valid_key_name(name) or len(public_key) != 32:
            raise ProofFormatError(f"verifier {name!r}: bad name or key length")
        return cls(name, _key_id(name, public_key), bytes(public_key))

    def to_vkey(self) -> str:
        raw = bytes([SIGNATURE_TYPE_ED25519]) + self.public_key
        return f"{self.name}+{self.key_id.hex()}+{base64.b64encode(raw).decode()}"

    def label(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"


def announcement(origin: str, replica: int, from_op: int, old: Verifier, new: Verifier) -> bytes:
    """The bytes the old and the new key sign for a rotation of `replica`
    from `old` to `new` at `from_op` (docs/format.md, "Signing-key
    rotation")."""
    return (
        f"{KEY_ROTATION_TAG}\norigin {origin}\nreplica {replica}\nfrom-op {from_op}\n"
        f"old {old.to_vkey()}\nnew {new.to_vkey()}\n"
    ).encode()


@dataclasses.dataclass(frozen=True)
class KeyRotation:
    """A pinned replica signing-key rotation: from `from_op` on, replica
    `replica` signs with `new`. Its signatures are checked when a policy
    pins it (`Policy.parse`), against the replica's key in force."""

    replica: int
    from_op: int
    new: Verifier
    old_signature: bytes
    new_signature: bytes

    @classmethod
    def parse_args(cls, args: list[str]) -> "KeyRotation":
        """`<index> <op> <new vkey> <base64 old sig> <base64 new sig>`: the
        words after `rotation` on a policy line."""
        if len(args) != 5:
            raise ProofFormatError("rotation line: expected <index> <op> <new vkey> <old sig> <new sig>")
        replica = _decimal(args[0], "rotation replica")
        from_op = _decimal(args[1], "rotation from-op")
        new = Verifier.parse(args[2])
        old_signature = _b64(args[3], "rotation old signature")
        new_signature = _b64(args[4], "rotation new signature")
        if len(old_signature) != 64 or len(new_signature) != 64:
            raise ProofFormatError("rotation line: a signature is not 64 bytes")
        return cls(replica, from_op, new, old_signature, new_signature)

    def to_line(self) -> str:
        old = base64.b64encode(self.old_signature).decode()
        new = base64.b64encode(self.new_signature).decode()
        return f"rotation {self.replica} {self.from_op} {self.new.to_vkey()} {old} {new}"


class _RotationRefused(ProofFormatError):
    """A pinned rotation that does not fit the keys in force before it;
    `index` is its place among the policy's rotations."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


@dataclasses.dataclass(frozen=True)
class Policy:
    """The auditor's trust policy: origin, pinned keys, quorum, and pinned
    signing-key rotations (`verifiers` stays the keys pinned first, in
    force from op 0; see `at_op`)."""

    origin: str
    verifiers: tuple[Verifier, ...]
    quorum: int
    rotations: tuple[KeyRotation, ...] = ()

    def __post_init__(self) -> None:
        if not _valid_key_name(self.origin):
            raise ProofFormatError(f"invalid origin {self.origin!r}")
        if len(self.verifiers) > POLICY_VERIFIERS_MAX:
            raise ProofFormatError(f"{len(self.verifiers)} pinned keys, more than {POLICY_VERIFIERS_MAX}")
        names = [v.name for v in self.verifiers]
        keys = [v.public_key for v in self.verifiers]
        if len(set(names)) != len(names) or len(set(keys)) != len(keys):
            raise ProofFormatError("a key name or public key is pinned twice")
        if not 1 <= self.quorum <= len(self.verifiers):
            raise ProofFormatError(f"quorum {self.quorum} is not between 1 and the {len(self.verifiers)} pinned keys")
        if self.rotations:
            self._check_rotations()

    @classmethod
    def parse(cls, text: str) -> "Policy":
        """Parses Vellum's policy text (`policy.txt`; see vellum-audit's
        `policy` module): `origin`, `witness`, one `group` listing every
        witness, `quorum`. Errors name the 1-based line."""
        if len(text.encode()) > POLICY_BYTES_MAX:
            raise ProofFormatError("trust policy is larger than the size limit")
        origin = None
        witnesses: dict[str, Verifier] = {}
        group = None
        quorum = None
        rotations: list[tuple[int, KeyRotation]] = []
        for number, line in enumerate(text.split("\n"), start=1):
            try:
                words = line.split()
                if not words or words[0].startswith("#"):
                    continue
                if quorum is not None:
                    raise ProofFormatError("no line may follow the quorum line")
                directive, args = words[0], words[1:]
                if directive == "origin" and len(args) == 1 and origin is None:
                    origin = args[0]
                elif directive == "witness" and len(args) in (2, 3):
                    if args[0] in witnesses:
                        raise ProofFormatError(f"witness {args[0]} is defined twice")
                    witnesses[args[0]] = Verifier.parse(args[1])
                elif directive == "group" and len(args) >= 3 and group is None:
                    members = args[2:]
                    if len(set(members)) != len(members) or any(m not in witnesses for m in members):
                        raise ProofFormatError("group members must be distinct witnesses defined above")
                    threshold = {"all": len(members), "any": 1}.get(args[1])
                    if threshold is None:
                        threshold = _decimal(args[1], "group threshold")
                    group = (args[0], threshold, members)
                elif directive == "rotation":
                    if len(rotations) >= KEY_ROTATIONS_MAX:
                        raise ProofFormatError(f"more than {KEY_ROTATIONS_MAX} rotation lines")
                    rotations.append((number, KeyRotation.parse_args(args)))
                elif directive == "quorum" and len(args) == 1 and args[0] != "none":
                    if group is not None and args[0] == group[0]:
                        quorum = (group[1], group[2])
                    elif args[0] in witnesses:
                        quorum = (1, [args[0]])
                    else:
                        raise ProofFormatError(f"quorum names {args[0]}, which no line above defines")
                else:
                    raise ProofFormatError(f"unexpected line {line!r}")
            except ProofFormatError as error:
                raise ProofFormatError(f"trust policy line {number}: {error}") from None
        if origin is None or quorum is None:
            raise ProofFormatError("trust policy: missing origin or quorum line")
        threshold, members = quorum
        if sorted(members) != sorted(witnesses):
            raise ProofFormatError("trust policy: every witness must be part of the quorum")
        try:
            return cls(origin, tuple(witnesses.values()), threshold, tuple(r for _, r in rotations))
        except _RotationRefused as error:
            raise ProofFormatError(f"trust policy line {rotations[error.index][0]}: {error}") from None

    def _check_rotations(self) -> None:
        """Checks each pinned rotation against the keys in force before it,
        as vellum-audit's `KeyHistory::add`: the replica exists, the rotation
        starts after that replica's previous one, the key in force signed the
        announcement and the new key countersigned it, the new key is not
        already pinned, and the keys in force from its op are a valid
        policy. Raises `_RotationRefused` naming the first that fails."""
        if len(self.rotations) > KEY_ROTATIONS_MAX:
            raise _RotationRefused(KEY_ROTATIONS_MAX, f"more than {KEY_ROTATIONS_MAX} rotations")
        pinned = [v.public_key for v in self.verifiers]
        for index, rotation in enumerate(self.rotations):
            replica, from_op = rotation.replica, rotation.from_op

            def refuse(why: str) -> _RotationRefused:
                return _RotationRefused(index, f"replica {replica}: {why}")

            if replica >= len(self.verifiers):
                replicas = len(self.verifiers)
                raise _RotationRefused(index, f"replica {replica} is not in the policy ({replicas} replicas)")
            earlier = [r for r in self.rotations[:index] if r.replica == replica]
            previous = earlier[-1].from_op if earlier else 0
            if from_op <= previous:
                raise refuse(f"rotation from op {from_op} does not come after op {previous}")
            # The key in force before this rotation: the replica's newest.
            old = earlier[-1].new if earlier else self.verifiers[replica]
            text = announcement(self.origin, replica, from_op, old, rotation.new)
            if not ed25519.verify(old.public_key, text, rotation.old_signature):
                raise refuse(f"rotation from op {from_op} is not signed by its key in force")
            if not ed25519.verify(rotation.new.public_key, text, rotation.new_signature):
                raise refuse(f"rotation from op {from_op} is not signed by the new key")
            if rotation.new.public_key in pinned:
                raise refuse(f"the new key {rotation.new.name} is already pinned")
            pinned.append(rotation.new.public_key)
        for index, rotation in enumerate(self.rotations):
            try:
                self.at_op(rotation.from_op)
            except ProofFormatError as error:
                raise _RotationRefused(index, str(error)) from None

    def verifier_at(self, replica: int, op: int) -> Verifier:
        """The key of replica `replica` in force at `op`: its newest pinned
        rotation from `op` or before, else its key pinned first."""
        key = self.verifiers[replica]
        for rotation in self.rotations:
            if rotation.replica == replica and rotation.from_op <= op:
                key = rotation.new
        return key

    def at_op(self, op: int) -> "Policy":
        """The policy a checkpoint certifying `op` is checked against: this
        one without rotations; with rotations, each replica's key in force at
        `op` (so a certificate from before a rotation verifies under the old
        key, and the old key's signature from the rotation on counts for
        nothing)."""
        if not self.rotations:
            return self
        keys = tuple(self.verifier_at(i, op) for i in range(len(self.verifiers)))
        return Policy(self.origin, keys, self.quorum)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A tree head: origin, size, RFC 6962 root, extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...]

    def body(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse_body(cls, text: str) -> "Checkpoint":
        if not text.endswith("\n"):
            raise ProofFormatError("checkpoint does not end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise ProofFormatError("checkpoint needs origin, size and root lines")
        if len(lines) - 3 > EXTENSIONS_MAX or any(not line for line in lines[3:]) or not lines[0]:
            raise ProofFormatError("checkpoint has an empty line or too many extension lines")
        return cls(lines[0], _decimal(lines[1], "tree size"), _hash32(lines[2], "root"), tuple(lines[3:]))


@dataclasses.dataclass(frozen=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


@dataclasses.dataclass(frozen=True)
class Certificate:
    """A commit certificate: a checkpoint as a signed note."""

    checkpoint: Checkpoint
    text: str
    signatures: tuple[NoteSignature, ...]

    @classmethod
    def parse(cls, note: str) -> "Certificate":
        if len(note.encode()) > NOTE_BYTES_MAX:
            raise ProofFormatError("signed note is larger than the limit")
        if any(ord(c) < 0x20 and c != "\n" or ord(c) == 0x7F for c in note):
            raise ProofFormatError("signed note holds a control character")
        if not note.endswith("\n"):
            raise ProofFormatError("signed note does not end with a newline")
        split = note.rfind("\n\n")
        if split < 0:
            raise ProofFormatError("signed note has no blank line before the signatures")
        text, lines = note[: split + 1], note[split + 2 :]
        signature_lines = lines.split("\n")[:-1]
        if not signature_lines or len(signature_lines) > SIGNATURES_MAX:
            raise ProofFormatError(f"signed note needs 1 to {SIGNATURES_MAX} signature lines")
        signatures = []
        for line in signature_lines:
            if not line.startswith(_SIGNATURE_PREFIX):
                raise ProofFormatError("signature line does not start with an em dash and a space")
            name, _, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
            raw = _b64(encoded, f"signature of {name}")
            if not _valid_key_name(name) or len(raw) < 5:
                raise ProofFormatError(f"bad signature line of {name!r}")
            signatures.append(NoteSignature(name, raw[:4], raw[4:]))
        return cls(Checkpoint.parse_body(text), text, tuple(signatures))

    def encode(self) -> str:
        lines = []
        for s in self.signatures:
            lines.append(f"{_SIGNATURE_PREFIX}{s.name} {base64.b64encode(s.key_id + s.signature).decode()}\n")
        return self.text + "\n" + "".join(lines)

    def check_signatures(self, verifiers: tuple[Verifier, ...]) -> tuple[list[Verifier], list[NoteSignature], int]:
        """(distinct pinned keys that signed validly, failing signatures of
        pinned keys, signatures of unpinned keys)."""
        valid: list[Verifier] = []
        failed: list[NoteSignature] = []
        unknown = 0
        message = self.text.encode()
        for signature in self.signatures:
            known = next((v for v in verifiers if v.name == signature.name and v.key_id == signature.key_id), None)
            if known is None:
                unknown += 1
            elif not ed25519.verify(known.public_key, message, signature.signature):
                failed.append(signature)
            elif known not in valid:
                valid.append(known)
        return valid, failed, unknown


@dataclasses.dataclass(frozen=True)
class LeafPreimage:
    """The 97-byte Merkle leaf preimage of one event (no PHI)."""

    global_position: int
    stream: int
    stream_offset: int
    op: int
    ciphertext_hash: bytes
    commitment: bytes

    @classmethod
    def decode(cls, raw: bytes) -> "LeafPreimage":
        if len(raw) != LEAF_PREIMAGE_SIZE or raw[0] != LEAF_VERSION:
            raise ProofFormatError(f"leaf preimage is not version {LEAF_VERSION} and {LEAF_PREIMAGE_SIZE} bytes")
        position, stream, offset, op = struct.unpack_from("<QQQQ", raw, 1)
        return cls(position, stream, offset, op, raw[33:65], raw[65:97])


@dataclasses.dataclass(frozen=True)
class InclusionProof:
    """A parsed `c2sp.org/tlog-proof@v1`."""

    extra: bytes | None
    index: int
    hashes: tuple[bytes, ...]
    certificate: Certificate

    @classmethod
    def parse(cls, text: str) -> "InclusionProof":
        lines = text.split("\n")
        if not lines or lines[0] != TLOG_PROOF_HEADER:
            raise ProofFormatError("first line is not c2sp.org/tlog-proof@v1")
        at = 1
        extra = None
        if at < len(lines) and lines[at].startswith("extra "):
            extra = _b64(lines[at][len("extra ") :], "extra")
            if len(extra) > EXTRA_BYTES_MAX:
                raise ProofFormatError("extra is larger than the limit")
            at += 1
        if at >= len(lines) or not lines[at].startswith("index "):
            raise ProofFormatError(f"line {at + 1}: expected the index line")
        index = _decimal(lines[at][len("index ") :], "index")
        at += 1
        hashes = []
        while True:
            if at >= len(lines):
                raise ProofFormatError("missing blank line before the checkpoint")
            if lines[at] == "":
                break
            if len(hashes) == PROOF_HASHES_MAX:
                raise ProofFormatError("more proof hashes than any tree needs")
            hashes.append(_hash32(lines[at], f"line {at + 1}: proof hash"))
            at += 1
        certificate = Certificate.parse("\n".join(lines[at + 1 :]))
        return cls(extra, index, tuple(hashes), certificate)


def leaf_hash(preimage: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || preimage)."""
    return hashlib.sha256(b"\x00" + preimage).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def commitment(salt: bytes, event: bytes) -> bytes:
    """The hiding commitment a leaf holds: SHA-256(tag || salt || event)."""
    return hashlib.sha256(COMMITMENT_TAG + salt + event).digest()


def verify_inclusion(leaf: bytes, index: int, size: int, proof: tuple[bytes, ...], root: bytes) -> str | None:
    """RFC 9162 section 2.1.3.2: None when the path leads from `leaf` at
    `index` to `root` of a tree of `size` leaves, else why not."""
    if index >= size:
        return f"leaf index {index} is not below tree size {size}"
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return "the proof has more hashes than the tree sizes require"
        if fn & 1 == 1 or fn == sn:
            r = _node_hash(p, r)
            while fn & 1 == 0 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = _node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return "the proof has fewer hashes than the tree sizes require"
    if r != root:
        return f"computed root {r.hex()} does not match the checkpoint root {root.hex()}"
    return None


@dataclasses.dataclass(frozen=True)
class PartCheck:
    """One part of an event check: whether it held, and what was found."""

    passed: bool
    message: str


@dataclasses.dataclass(frozen=True)
class EventCheck:
    """The three parts of `check_event`; `passed` only when all held."""

    inclusion: PartCheck
    quorum: PartCheck
    commitment: PartCheck

    @property
    def passed(self) -> bool:
        return self.inclusion.passed and self.quorum.passed and self.commitment.passed

    def failed_parts(self) -> list[str]:
        parts = [("inclusion", self.inclusion), ("quorum", self.quorum), ("commitment", self.commitment)]
        return [name for name, part in parts if not part.passed]


class _Committed(Protocol):
    """A read event: knows the bytes its leaf commits to."""

    def committed_bytes(self) -> bytes: ...


def check_event(proof: str | InclusionProof, policy: Policy, salt: bytes | str, event: bytes | _Committed) -> EventCheck:
    """Checks offline that `proof` proves `event` (with its commitment
    `salt`, raw or standard base64) is in a log certified under `policy`:
    inclusion, quorum and commitment, each reported separately.

    `event` is the committed bytes, or a read `Event`: then its
    `committed_bytes()` (the payload, or for an event with `envelope` true
    its encoded envelope rebuilt from `id`, `type`, `content_type`,
    `metadata_json` and the payload). An envelope field that does not
    encode fails the commitment part."""
    encode_error = None
    if isinstance(event, (bytes, bytearray, memoryview)):
        event = bytes(event)
    else:
        try:
            event = bytes(event.committed_bytes())
        except ValueError as error:
            encode_error = f"the event's envelope does not encode: {error}"
            event = b""
    if isinstance(proof, str):
        try:
            proof = InclusionProof.parse(proof)
        except ProofFormatError as error:
            failed = PartCheck(False, f"not a tlog-proof: {error}")
            return EventCheck(failed, failed, failed)
    if isinstance(salt, str):
        salt = _b64(salt, "salt")
    leaf = None
    leaf_error = "inclusion proof has no extra line holding the leaf preimage"
    if proof.extra is not None:
        try:
            leaf = LeafPreimage.decode(proof.extra)
        except ProofFormatError as error:
            leaf_error = f"extra: {error}"
    return EventCheck(
        inclusion=_inclusion_part(proof, leaf, leaf_error),
        quorum=_quorum_part(proof.certificate, policy),
        commitment=(
            PartCheck(False, encode_error)
            if encode_error is not None
            else _commitment_part(leaf, leaf_error, salt, event)
        ),
    )


def _inclusion_part(proof: InclusionProof, leaf: LeafPreimage | None, leaf_error: str) -> PartCheck:
    if leaf is None or proof.extra is None:
        return PartCheck(False, leaf_error)
    if leaf.global_position != proof.index:
        return PartCheck(
            False, f"the leaf preimage is for position {leaf.global_position}, but the proof is for index {proof.index}"
        )
    checkpoint = proof.certificate.checkpoint
    why = verify_inclusion(leaf_hash(proof.extra), proof.index, checkpoint.size, proof.hashes, checkpoint.root)
    if why is not None:
        return PartCheck(
            False,
            f"the merkle path of position {proof.index} does not lead to the checkpoint root of tree size "
            f"{checkpoint.size}: {why}",
        )
    return PartCheck(
        True,
        f"leaf at position {leaf.global_position} (stream {leaf.stream} offset {leaf.stream_offset} op {leaf.op}) "
        f"is in the tree of size {checkpoint.size}",
    )


def certified_op(checkpoint: Checkpoint) -> int | None:
    """The op the checkpoint's one well-formed `vellum-head <op> <64 hex>`
    line names (None without one, with a malformed one, or with more than
    one), as vellum-audit's `Certificate::certified_op`."""
    heads = [line for line in checkpoint.extensions if line.startswith(CHAIN_HEAD_EXTENSION)]
    if len(heads) != 1:
        return None
    words = heads[0].split(" ")
    if len(words) != 3 or words[0] != CHAIN_HEAD_EXTENSION:
        return None
    try:
        op = _decimal(words[1], "op")
    except ProofFormatError:
        return None
    if op < 1 or len(words[2]) != 64 or any(c not in "0123456789abcdef" for c in words[2]):
        return None
    return op


def _quorum_part(certificate: Certificate, policy: Policy) -> PartCheck:
    checkpoint = certificate.checkpoint
    if policy.rotations:
        op = certified_op(checkpoint)
        if op is None:
            return PartCheck(
                False,
                "the policy pins key rotations and the checkpoint does not carry exactly one valid "
                "vellum-head line naming its op",
            )
        policy = policy.at_op(op)
    if checkpoint.origin != policy.origin:
        return PartCheck(False, f"checkpoint origin {checkpoint.origin!r} is not the pinned origin {policy.origin!r}")
    if certificate.text != checkpoint.body():
        return PartCheck(False, "signed note text is not the checkpoint body")
    valid, failed, unknown = certificate.check_signatures(policy.verifiers)
    signed = ", ".join(v.label() for v in valid) or "none"
    if len(valid) >= policy.quorum and not failed:
        return PartCheck(True, f"{len(valid)} of {policy.quorum} needed distinct pinned keys signed: {signed}")
    bad = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in failed) or "none"
    missing = ", ".join(v.label() for v in policy.verifiers if v not in valid) or "none"
    return PartCheck(
        False,
        f"{len(valid)} valid signatures of distinct pinned keys, {policy.quorum} needed; signed: {signed}; "
        f"bad signature: {bad}; not signed by: {missing}; signatures of unpinned keys ignored: {unknown}",
    )


def _commitment_part(leaf: LeafPreimage | None, leaf_error: str, salt: bytes, event: bytes) -> PartCheck:
    if leaf is None:
        return PartCheck(False, f"no leaf to open: {leaf_error}")
    if len(salt) != 32:
        return PartCheck(False, f"the salt is {len(salt)} bytes, not 32")
    computed = commitment(salt, event)
    if computed != leaf.commitment:
        return PartCheck(
            False,
            f"the salt and the {len(event)} event bytes give commitment {computed.hex()}, but the leaf holds "
            f"{leaf.commitment.hex()}: the event bytes or the salt are not the ones this proof is about",
        )
    return PartCheck(
        True, f"the salt and the {len(event)} event bytes open the leaf's commitment {leaf.commitment.hex()}"
    )
