"""Ed25519 signature verification (RFC 8032, section 5.1.7), by hand.

Why by hand: the standard library has no Ed25519, and this package's one
third-party dependency is httpx (HTTP/2). The `cryptography` package would
be a second one, pulling in a compiled extension, only to check a handful
of signatures per receipt. Verification needs no secret, so constant time
does not matter here; what matters is being exactly as strict as the
server's verifier (ed25519-dalek's `verify_strict`), so a certificate
accepted here is accepted by `vellum proof check` and the reverse:

- the signature's scalar S must be canonical (S < L);
- the public key A and the point R must decode (y < p, RFC 8032 5.1.3)
  and must not be of small order (no "weak" keys);
- the check is the cofactorless `[S]B - [k]A == R`, compared as the
  encoding of R, so a non-canonical R never verifies.

Tests: RFC 8032 section 7.1's test vectors and strictness cases
(tests/test_ed25519.py).
"""

from __future__ import annotations

import hashlib

__all__ = ["verify", "public_key_of_scalar"]

# Field prime, group order, curve constant d and sqrt(-1) (RFC 8032 5.1).
_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)

# Points in extended coordinates (X, Y, Z, T): x = X/Z, y = Y/Z, x*y = T/Z.
_Point = tuple[int, int, int, int]
_IDENTITY: _Point = (0, 1, 1, 0)


def _add(p: _Point, q: _Point) -> _Point:
    # RFC 8032 5.1.4 (complete for all inputs on the curve).
    a = (p[1] - p[0]) * (q[1] - q[0]) % _P
    b = (p[1] + p[0]) * (q[1] + q[0]) % _P
    c = 2 * p[3] * q[3] * _D % _P
    d = 2 * p[2] * q[2] % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(scalar: int, point: _Point) -> _Point:
    result = _IDENTITY
    while scalar > 0:
        if scalar & 1:
            result = _add(result, point)
        point = _add(point, point)
        scalar >>= 1
    return result


def _neg(point: _Point) -> _Point:
    return (-point[0] % _P, point[1], point[2], -point[3] % _P)


def _recover_x(y: int, sign: int) -> int | None:
    # RFC 8032 5.1.3, steps 2-4.
    if y >= _P:
        return None
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P != 0:
        x = x * _SQRT_M1 % _P
    if (x * x - x2) % _P != 0:
        return None
    if (x & 1) != sign:
        x = _P - x
    return x


def _decode(encoded: bytes) -> _Point | None:
    y = int.from_bytes(encoded, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _recover_x(y, sign)
    if x is None:
        return None
    return (x, y, 1, x * y % _P)


def _encode(point: _Point) -> bytes:
    z_inv = pow(point[2], _P - 2, _P)
    x = point[0] * z_inv % _P
    y = point[1] * z_inv % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _is_identity(point: _Point) -> bool:
    return point[0] % _P == 0 and (point[1] - point[2]) % _P == 0


def _small_order(point: _Point) -> bool:
    return _is_identity(_mul(8, point))


def _base_point() -> _Point:
    # RFC 8032 5.1: B = (x, 4/5) with x positive (even).
    y = 4 * pow(5, _P - 2, _P) % _P
    x = _recover_x(y, 0)
    assert x is not None, "the base point's y decodes"
    return (x, y, 1, x * y % _P)


_BASE = _base_point()


def public_key_of_scalar(scalar: int) -> bytes:
    """The encoding of [scalar]B (for tests that need a key nobody pinned)."""
    return _encode(_mul(scalar % _L, _BASE))


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Whether `signature` is a valid strict Ed25519 signature of `message`
    under the 32-byte `public_key`."""
    if len(public_key) != 32 or len(signature) != 64:
        return False
    a = _decode(public_key)
    r_bytes = signature[:32]
    r = _decode(r_bytes)
    if a is None or r is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    if _small_order(a) or _small_order(r):
        return False
    k = int.from_bytes(hashlib.sha512(r_bytes + public_key + message).digest(), "little") % _L
    check = _add(_mul(s, _BASE), _neg(_mul(k, a)))
    return _encode(check) == r_bytes
