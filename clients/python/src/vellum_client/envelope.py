"""The event envelope's encoding (docs/format.md, "Event envelope").

An event read back with `envelope` true was committed as its *encoded
envelope*, not its bare payload: the leaf's commitment is
`SHA-256("vellum/commit/v1\\0" || salt || encode(...))`. The encoding is
canonical (the reference is `audit/src/envelope.rs`), so the read answer's
fields and payload rebuild exactly the committed bytes:

    magic "VLEV", version 1, a byte of present bits (1 id, 2 type,
    4 content_type, 8 metadata), then each present field in that order:
    id as the UUID's 16 bytes; type and content_type as u16 LE length and
    UTF-8; metadata as u32 LE length and the exact JSON text; then the
    payload to the end.

`encode` refuses (ValueError) what the server never stores, as the Rust
encoder's check does, so a tampered or malformed field is an error, never
silently other bytes.
"""

from __future__ import annotations

import json
import struct

__all__ = ["MAGIC", "VERSION", "encode", "parse_uuid"]

MAGIC = b"VLEV"
VERSION = 1
TYPE_BYTES_MAX = 256
CONTENT_TYPE_BYTES_MAX = 256
METADATA_BYTES_MAX = 16 * 1024
_HAS_ID = 1
_HAS_TYPE = 2
_HAS_CONTENT_TYPE = 4
_HAS_METADATA = 8
_HEX = "0123456789abcdef"


def parse_uuid(text: str) -> bytes:
    """The 16 bytes of a UUID in canonical text form (lowercase,
    8-4-4-4-12); ValueError for any other spelling (uppercase, braces,
    `urn:uuid:`, no hyphens), as the server refuses them."""
    if not isinstance(text, str) or len(text) != 36:
        raise ValueError(f"event id {text!r} is not a canonical UUID")
    for i, c in enumerate(text):
        if i in (8, 13, 18, 23):
            if c != "-":
                raise ValueError(f"event id {text!r} is not a canonical UUID")
        elif c not in _HEX:
            raise ValueError(f"event id {text!r} is not a canonical UUID")
    return bytes.fromhex(text.replace("-", ""))


def _not_json(name: str) -> None:
    raise ValueError(f"metadata holds {name}, which is not JSON")


def _label(field: str, value: str, limit: int) -> bytes:
    raw = value.encode("utf-8")
    if not raw:
        raise ValueError(f"{field} is empty")
    if len(raw) > limit:
        raise ValueError(f"{field} is {len(raw)} bytes, more than {limit}")
    # Unicode Cc: C0, DEL and C1.
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ValueError(f"{field} holds a control character")
    return struct.pack("<H", len(raw)) + raw


def encode(
    payload: bytes,
    *,
    id: str | None = None,
    type: str | None = None,
    content_type: str | None = None,
    metadata_json: str | None = None,
) -> bytes:
    """The encoded envelope of `payload` with these fields (each optional;
    `metadata_json` is the exact JSON text, kept byte for byte)."""
    present = 0
    parts = []
    if id is not None:
        present |= _HAS_ID
        parts.append(parse_uuid(id))
    if type is not None:
        present |= _HAS_TYPE
        parts.append(_label("type", type, TYPE_BYTES_MAX))
    if content_type is not None:
        present |= _HAS_CONTENT_TYPE
        parts.append(_label("content_type", content_type, CONTENT_TYPE_BYTES_MAX))
    if metadata_json is not None:
        if not isinstance(metadata_json, str):
            raise ValueError("metadata must be JSON text (str), not a parsed value")
        raw = metadata_json.encode("utf-8")
        if not 1 <= len(raw) <= METADATA_BYTES_MAX:
            raise ValueError(f"metadata is {len(raw)} bytes, not 1 to {METADATA_BYTES_MAX}")
        json.loads(metadata_json, parse_constant=_not_json)  # one JSON value, or ValueError
        present |= _HAS_METADATA
        parts.append(struct.pack("<I", len(raw)) + raw)
    return MAGIC + bytes([VERSION, present]) + b"".join(parts) + bytes(payload)
