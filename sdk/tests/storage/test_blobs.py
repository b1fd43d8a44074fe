"""Blob names: the S5 blob identifier byte for byte as s5.js writes it, and the CIDv1 raw
blake3 that IPFS tools print. The vectors are copied from other implementations' own tests."""

from __future__ import annotations

import base64
import os

import pytest

from fabstir_sdk.storage.blobs import (
    BlobId,
    Hasher,
    blake3_256,
    cid_bytes,
    cid_of,
    hash_of_cid,
    multibase_decode,
)
from fabstir_sdk.storage.errors import StorageError

# julesl23/s5.js test/blob_identifier.test.ts ("encoding"): its hash is the 33-byte multihash.
S5_HASH = bytes.fromhex("e40b877081c208036d451b898700b4bf938792ffa3e4426f2bf871aa057d992b")
S5_SIZE = 5050
S5_HEX = "f5b821ee40b877081c208036d451b898700b4bf938792ffa3e4426f2bf871aa057d992bba13"
S5_BASE32 = "blobb5zalq5yidqqianwukg4jq4aljp4tq6jp7i7eijxsx6drvicx3gjlxijq"
S5_BASE58 = "z44t3p46N4Fmqc1STusbaEoZ2HeDCFNNFRGys8SJsDvV9kHyMUbt"
S5_BASE64URL = "uW4Ie5AuHcIHCCANtRRuJhwC0v5OHkv-j5EJvK_hxqgV9mSu6Ew"


def test_s5_blob_identifier_matches_s5js_vectors() -> None:
    blob = BlobId(S5_HASH, S5_SIZE)
    assert blob.to_bytes().hex() == S5_HEX[1:]
    assert str(blob) == S5_BASE32
    assert blob.to_hex() == S5_HEX
    assert blob.to_base58() == S5_BASE58
    assert blob.to_base64url() == S5_BASE64URL
    for spelling in (S5_HEX, S5_BASE32, S5_BASE58, S5_BASE64URL):
        assert BlobId.parse(spelling) == blob


@pytest.mark.parametrize(
    ("size", "suffix"),
    [  # s5.js test/blob_identifier.test.ts ("blob sizes"), over 0x5b 0x82 + 32 zero bytes
        (0, "aa"),
        (1, "ab"),
        (42, "bk"),
        (255, "h7"),
        (256, "aaae"),
        (65535, "h774"),
        (65536, "aaaaaq"),
        (57124823, "gxu5tqg"),
    ],
)
def test_size_is_little_endian_with_trailing_zeros_stripped(size: int, suffix: str) -> None:
    # s5.js's size test passes a 32-byte "hash" without the 0x1e byte; the zero hash whose
    # last byte plays that role is the same bit string.
    blob = BlobId(bytes(32), size)
    raw = blob.to_bytes()
    assert raw[:3] == b"\x5b\x82\x1e"
    size_raw = raw[35:]
    assert size_raw == (size.to_bytes(8, "little").rstrip(b"\0") or b"\0")
    s5_bytes = b"\x5b\x82" + bytes(32) + size_raw
    text = "b" + base64.b32encode(s5_bytes).decode().rstrip("=").lower()
    assert text == "blob" + "a" * 51 + suffix
    assert BlobId.parse(str(blob)) == blob


def test_production_s5_identifier_from_s5js_bug_report_parses() -> None:
    # s5.js test/fs/cid-conversion-bug.test.ts: a real portal identifier.
    text = "blobb4qvvwvlw3o7ybbwxomc3pdrzmpxvavxkyhyfgk5vgg6mmwu32kyqwihq"
    blob = BlobId.parse(text)
    assert str(blob) == text


def test_large_sizes_use_all_eight_bytes() -> None:
    # s5.js's 32-bit shifts get these wrong; the S5 spec (and we) write the true size.
    blob = BlobId(bytes(range(32)), 5 << 32)
    assert blob.to_bytes()[35:] == b"\x00\x00\x00\x00\x05"
    assert BlobId.parse(str(blob)).size == 5 << 32


def test_blob_identifier_refuses_malformed_input() -> None:
    good = BlobId(S5_HASH, S5_SIZE).to_bytes()
    with pytest.raises(StorageError):
        BlobId.from_bytes(good[:20])  # truncated
    with pytest.raises(StorageError):
        BlobId.from_bytes(good + b"\x00")  # size not in shortest form
    with pytest.raises(StorageError):
        BlobId.from_bytes(b"\x5b\x82\x12" + good[3:])  # sha2-256, not blake3
    with pytest.raises(StorageError):
        BlobId.parse("x" + S5_BASE32[1:])  # unknown multibase
    with pytest.raises(StorageError):
        BlobId.parse(S5_BASE32[:10] + S5_BASE32[10:].upper())  # mixed case
    with pytest.raises(StorageError):
        BlobId(b"short", 1)
    with pytest.raises(StorageError):
        BlobId(S5_HASH, -1)


def test_legacy_s5_identifier_is_read_as_s5js_reads_it() -> None:
    legacy = b"\x26\x1f" + S5_HASH + b"\xba\x13"
    assert BlobId.from_bytes(legacy) == BlobId(S5_HASH, S5_SIZE)


# kubo's sharness blake3 test: `echo foo | ipfs block put --mhtype=blake3 --cid-codec=raw`.
KUBO_FOO = "bafkr4icj3sdq34o6p7lapfgoxtset5om3lsxll72uz5cjnrkzmb6aoo3si"
# The empty input as CIDv1/raw/blake3 (a zig CID library's test, "BLAKE3 of the empty input").
EMPTY = "bafkr4ifpcne3t5pzugtkaqcn5i3nzskjtpfslsnnyejlpte2spfoihzsmi"


def test_cid_matches_what_ipfs_tools_print() -> None:
    assert blake3_256(b"foo\n").hex().startswith("49dc870df1de7fd60794cebce449f5cc")
    assert cid_of(blake3_256(b"foo\n")) == KUBO_FOO
    assert cid_of(blake3_256(b"")) == EMPTY
    h = blake3_256(b"foo\n")
    assert cid_bytes(h) == bytes([0x01, 0x55, 0x1E, 0x20]) + h
    assert hash_of_cid(KUBO_FOO) == h
    assert hash_of_cid(cid_bytes(h)) == h


def test_hash_of_cid_accepts_only_raw_blake3() -> None:
    h = blake3_256(b"x")
    with pytest.raises(StorageError):  # CIDv0 (sha2-256, base58 without multibase prefix)
        hash_of_cid("QmSnuWmxptJZdLJpKRarxBMS2Ju2oANVrgbr2xWbie9b2D")
    with pytest.raises(StorageError):  # sha2-256 raw CIDv1 of "hello"
        hash_of_cid("bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq")
    with pytest.raises(StorageError):  # dag-cbor codec
        hash_of_cid(bytes([0x01, 0x71, 0x1E, 0x20]) + h)
    with pytest.raises(StorageError):  # trailing byte
        hash_of_cid(cid_bytes(h) + b"\0")
    with pytest.raises(StorageError):
        cid_of(h[:31])


def test_multibase_is_canonical_only() -> None:
    assert multibase_decode("f0aff") == b"\x0a\xff"
    with pytest.raises(StorageError):
        multibase_decode("f0AFF")  # upper-case hex is not what we (or s5.js) write
    with pytest.raises(StorageError):
        multibase_decode(
            "bafkr4icj3sdq34o6p7lapfgoxtset5om3lsxll72uz5cjnrkzmb6aoo3sj"
        )  # stray bits
    assert multibase_decode(KUBO_FOO.upper()) == multibase_decode(KUBO_FOO)  # base32upper
    assert BlobId.parse(S5_BASE32.upper()) == BlobId(S5_HASH, S5_SIZE)


def test_streaming_hasher_equals_one_shot() -> None:
    data = os.urandom(3 << 20)
    h = Hasher()
    for i in range(0, len(data), 65536):
        h.update(memoryview(data)[i : i + 65536])
    assert h.digest() == blake3_256(data)
    assert h.size == len(data)
