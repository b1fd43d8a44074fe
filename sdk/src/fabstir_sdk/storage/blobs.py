"""Hashes and names of blobs: BLAKE3-256, the S5 blob identifier, and the CIDv1 IPFS tools print.

One hash, three spellings. The store and the wire use the bare 32-byte BLAKE3 hash; S5 clients
name a blob by its *blob identifier* (``0x5b 0x82``, multihash ``0x1e`` + hash, size
little-endian with trailing zero bytes stripped, written in multibase base32 as s5.js's
``BlobIdentifier`` does); IPFS tools (kubo, helia) name the same bytes by a CIDv1 with codec
raw (``0x55``) and multihash blake3 (``0x1e``, length 32), in base32 lower (``b...``).

s5.js writes the size with JavaScript's 32-bit shifts, so its identifiers of blobs of 2 GiB and
more are wrong (sign-extended or truncated); we write the true size, as the S5 spec says.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final

import blake3 as _blake3

from fabstir_sdk.storage.errors import StorageError

HASH_SIZE: Final = 32
#: The multihash code of BLAKE3 (multicodec table), also S5's hash type byte.
MULTIHASH_BLAKE3: Final = 0x1E
#: The multicodec of uninterpreted bytes: a CID of a block as stored, not of a DAG.
CODEC_RAW: Final = 0x55
BLOB_ID_PREFIX: Final = b"\x5b\x82"
_LEGACY_BLOB_ID: Final = 0x26  # S5 v0 identifiers (s5.js still decodes them)
_LEGACY_BLAKE3: Final = 0x1F
_CID_PREFIX: Final = bytes([0x01, CODEC_RAW, MULTIHASH_BLAKE3, HASH_SIZE])
_MAX_SIZE_BYTES: Final = 8


def blake3_256(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte BLAKE3 hash of ``data``: the address of a block in the store."""
    return _blake3.blake3(data).digest()


class Hasher:
    """BLAKE3 over data that arrives in pieces (a file streamed block by block), with the
    running size, so a 100 MiB file is hashed without being held in memory."""

    def __init__(self) -> None:
        self._h = _blake3.blake3()
        self.size = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._h.update(data)
        self.size += len(data)

    def digest(self) -> bytes:
        return self._h.digest()


def _check_hash(hash: bytes) -> bytes:
    if not isinstance(hash, bytes | bytearray) or len(hash) != HASH_SIZE:
        raise StorageError("a BLAKE3 hash is 32 bytes")
    return bytes(hash)


# --- multibase (the four encodings s5.js reads) -------------------------------------------

_B58: Final = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX: Final = {c: i for i, c in enumerate(_B58)}


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _b58(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(out))


def _unb58(text: str) -> bytes:
    n = 0
    for c in text:
        if c not in _B58_INDEX:
            raise ValueError("not base58btc")
        n = n * 58 + _B58_INDEX[c]
    zeros = len(text) - len(text.lstrip("1"))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * zeros + body


def multibase_decode(text: str) -> bytes:
    """Bytes of a multibase string in base32 (``b``/``B``), hex (``f``), base64url (``u``) or
    base58btc (``z``). Only the canonical spelling is accepted (no padding, no stray bits),
    so one name has one string."""
    if not text:
        raise StorageError("empty multibase string")
    base, body = text[0], text[1:]
    try:
        if base in "bB":
            raw = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
            canonical = _b32(raw)
            ok = body == (canonical if base == "b" else canonical.upper())
        elif base == "f":
            raw = bytes.fromhex(body)
            ok = body == raw.hex()
        elif base == "u":
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            ok = body == _b64url(raw)
        elif base == "z":
            raw = _unb58(body)
            ok = body == _b58(raw)
        else:
            raise StorageError(f"multibase {base!r} is not supported")
    except (binascii.Error, ValueError):
        raise StorageError(f"malformed multibase string {text[:80]!r}") from None
    if not ok:
        raise StorageError(f"non-canonical multibase string {text[:80]!r}")
    return raw


# --- the S5 blob identifier ----------------------------------------------------------------


def _size_bytes(size: int) -> bytes:
    raw = size.to_bytes(_MAX_SIZE_BYTES, "little").rstrip(b"\0")
    return raw or b"\0"


@dataclass(frozen=True, slots=True)
class BlobId:
    """S5's name for a blob: its BLAKE3 hash and its size (S5 v1 spec, s5.js
    ``BlobIdentifier``). ``str()`` is s5.js's ``toString()`` (multibase base32)."""

    hash: bytes
    size: int

    def __post_init__(self) -> None:
        _check_hash(self.hash)
        if not 0 <= self.size < 1 << 64:
            raise StorageError(f"blob size {self.size} out of range")

    @classmethod
    def of(cls, data: bytes) -> BlobId:
        return cls(blake3_256(data), len(data))

    def to_bytes(self) -> bytes:
        return BLOB_ID_PREFIX + bytes([MULTIHASH_BLAKE3]) + self.hash + _size_bytes(self.size)

    @classmethod
    def from_bytes(cls, raw: bytes) -> BlobId:
        """Parse the binary identifier (also S5 v0's ``0x26`` form, which s5.js still reads);
        the size must be in its shortest form."""
        if raw[:1] == bytes([_LEGACY_BLOB_ID]) and raw[1:2] in (b"\x1e", b"\x1f"):
            start = 2
        elif raw[:3] == BLOB_ID_PREFIX + bytes([MULTIHASH_BLAKE3]):
            start = 3
        else:
            raise StorageError("not an S5 BLAKE3 blob identifier")
        hash_, size_raw = raw[start : start + HASH_SIZE], raw[start + HASH_SIZE :]
        if len(hash_) != HASH_SIZE or not 1 <= len(size_raw) <= _MAX_SIZE_BYTES:
            raise StorageError("truncated or oversized S5 blob identifier")
        size = int.from_bytes(size_raw, "little")
        if start == 3 and _size_bytes(size) != size_raw:
            raise StorageError("S5 blob identifier size is not in its shortest form")
        return cls(hash_, size)

    def __str__(self) -> str:
        return "b" + _b32(self.to_bytes())

    def to_hex(self) -> str:
        return "f" + self.to_bytes().hex()

    def to_base64url(self) -> str:
        return "u" + _b64url(self.to_bytes())

    def to_base58(self) -> str:
        return "z" + _b58(self.to_bytes())

    @classmethod
    def parse(cls, text: str) -> BlobId:
        """Parse any multibase spelling s5.js reads (``b``, ``f``, ``u``, ``z``)."""
        return cls.from_bytes(multibase_decode(text))


# --- CIDv1 raw blake3 ----------------------------------------------------------------------


def cid_bytes(hash: bytes) -> bytes:
    """The binary CIDv1 (version 1, raw, blake3-256) of a block hash: what Bitswap carries."""
    return _CID_PREFIX + _check_hash(hash)


def cid_of(hash: bytes) -> str:
    """The CIDv1 string IPFS tools print for a raw block with this BLAKE3 hash."""
    return "b" + _b32(cid_bytes(hash))


def hash_of_cid(cid: str | bytes) -> bytes:
    """The BLAKE3 hash named by a raw blake3-256 CIDv1 (string in any multibase, or binary);
    anything else (CIDv0, sha2-256, dag codecs, other lengths) raises :class:`StorageError`."""
    raw = multibase_decode(cid) if isinstance(cid, str) else bytes(cid)
    if len(raw) != len(_CID_PREFIX) + HASH_SIZE or not raw.startswith(_CID_PREFIX):
        raise StorageError("not a CIDv1 raw blake3-256")
    return raw[len(_CID_PREFIX) :]
