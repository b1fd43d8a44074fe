"""The bytes of the store, pinned by vectors: deterministic CBOR, S5 names, DirV1, manifests,
registry entries and sealed blobs. A change to any of these is a change of the format."""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import pytest

from fabstir_sdk.p2p import peer_id_of_seed
from fabstir_sdk.storage import cbor, content, dirv1
from fabstir_sdk.storage.blobs import BlobId, blake3_256, cid_of, hash_of_cid
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.content import ContentRef, Manifest
from fabstir_sdk.storage.errors import CorruptBlock, ForgedRoot, StaleRoot, StorageError
from fabstir_sdk.storage.registry import RegistryEntry, RootResolver, sign_entry
from fabstir_sdk.storage.sealed import open_sealed, seal

HELLO = blake3_256(b"hello")


def test_cbor_is_rfc8949_deterministic() -> None:
    # Keys sort by their encoded bytes: "b" (61 62) before "aa" (62 61 61); RFC 7049's
    # length-first order (cbor2 canonical) would agree here, but 10 (0a) before -1 (20) and
    # both before any string is bytewise order only.
    assert cbor.dumps({"aa": 1, "b": 2, -1: 3, 10: 4}).hex() == "a40a04200361620262616101"
    assert cbor.dumps(1.0).hex() == "f93c00" and cbor.dumps(0.7).hex() == "fb3fe6666666666666"
    for foreign in (
        cbor2.dumps(1.0),  # a float not in its shortest form
        cbor2.dumps({"aa": 1, "b": 2}),  # keys not sorted
        cbor.dumps([1]) + b"\x00",  # trailing bytes
        cbor2.dumps(cbor2.CBORTag(42, b"x")),  # a tag
        cbor2.dumps(float("nan")),
    ):
        with pytest.raises(StorageError):
            cbor.loads(foreign)


def test_names_of_a_blob() -> None:
    # BLAKE3("hello"), the S5 blob identifier (5b 82, 1e, hash, size 5 little-endian) in
    # multibase base32, and the CIDv1 raw/blake3 IPFS tools print (bafkr4i... = 01 55 1e 20).
    assert HELLO.hex() == "ea8f163db38682925e4491c5e58d4bb3506ef8c14eb78a86e908c5624a67200f"
    blob = BlobId.of(b"hello")
    assert blob.to_bytes().hex() == "5b821e" + HELLO.hex() + "05"
    assert str(blob) == "blobb52upcy63hbucsjpejeof4wguxm2qn34mctvxrkdoscgfmjfgoiapau"
    assert BlobId.parse(str(blob)) == blob
    assert cid_of(HELLO) == "bafkr4ihkr4ld3m4gqkjf4reryxsy2s5tkbxprqkow6fin2iiyvreuzzab4"
    assert hash_of_cid(cid_of(HELLO)) == HELLO


def test_dirv1_vector() -> None:
    """["S5.pro", {}, {"sub": {2: 1e||11..}}, {"a.txt": {3: hash, 4: 5, 6: mime, 7: time,
    8: 0, 22: 0x1e}, "b": {..., 100: [root, "zstd"]}}]: names sorted bytewise ("b" < "a.txt"
    because shorter strings encode smaller heads), the Fabstir key 100 only on manifests."""
    a = dirv1.FileRef(ContentRef(HELLO, HELLO, 5), "text/plain", 1700000000, 0)
    b = dirv1.FileRef(ContentRef(b"\x22" * 32, b"\x33" * 32, 2000000, "zstd"))
    d = dirv1.DirV1({"sub": dirv1.DirRef(b"\x11" * 32)}, {"a.txt": a, "b": b})
    encoded = dirv1.encode(d)
    assert encoded.hex() == (
        "846653352e70726fa0a163737562a10258211e"
        + "11" * 32
        + "a26162a4035820"
        + "33" * 32
        + "041a001e848016181e1864825820"
        + "22" * 32
        + "647a737464"
        + "65612e747874a6035820"
        + HELLO.hex()
        + "0405066a746578742f706c61696e071a6553f10008"
        + "0016181e"
    )
    assert dirv1.decode(encoded) == d
    for broken in (cbor.dumps(["S5.pro", {}, {}]), cbor.dumps(["S6", {}, {}, {}])):
        with pytest.raises(StorageError):
            dirv1.decode(broken)
    with pytest.raises(StorageError):  # a name that is a path
        dirv1.decode(cbor.dumps(["S5.pro", {}, {}, {"a/b": a.to_cbor()}]))


def test_content_is_named_by_its_own_hash_and_verified_end_to_end(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    small = content.write_bytes(store, b"hello", compress=None)
    assert small.root == small.content_hash == HELLO and not small.is_manifest
    noise = os.urandom(content.BLOCK_SIZE + 1)
    big = content.write_bytes(store, noise)
    assert big.is_manifest and big.compression is None and big.content_hash == blake3_256(noise)
    text = b"the same line again\n" * 200_000
    squeezed = content.write_bytes(store, text)
    assert squeezed.compression == "zstd" and squeezed.content_hash == blake3_256(text)
    assert content.read_bytes(store, big) == noise and content.read_bytes(store, squeezed) == text

    # A manifest that lies about the size of what its blocks decompress to is refused.
    manifest = content.load_manifest(store.get(squeezed.root))
    liar = Manifest(manifest.content_hash, 1000, "zstd", manifest.blocks, None)
    root = store.put(liar.encode(), "manifest", list(liar.blocks))
    with pytest.raises(CorruptBlock):
        content.read_bytes(store, ContentRef(root, liar.content_hash, 1000, "zstd"))

    # A damaged block on disk is caught on read, and nothing half-verified is written out.
    block = store.file_of(manifest.blocks[0])
    block.write_bytes(b"\x00" + block.read_bytes()[1:])
    with pytest.raises(CorruptBlock):
        content.read_to_file(store, squeezed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_files_keep_their_sha256(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    src = tmp_path / "model.bin"
    src.write_bytes(os.urandom(3 * content.BLOCK_SIZE + 17))
    ref = content.write_file(store, src)
    assert ref.sha256 is not None and len(content.load_manifest(store.get(ref.root)).blocks) == 4
    content.read_to_file(store, ref, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()


def test_registry_entries_refuse_forged_and_stale_roots() -> None:
    seed, other = b"\x01" * 32, b"\x02" * 32
    peer = peer_id_of_seed(seed)
    resolver = RootResolver()
    entry = sign_entry(seed, 5, HELLO)
    assert RegistryEntry.decode(entry.encode()) == entry
    assert resolver.accept(entry.encode(), peer).root == HELLO
    with pytest.raises(StaleRoot):
        resolver.accept(sign_entry(seed, 4, HELLO).encode(), peer)
    with pytest.raises(ForgedRoot):  # signed by another key
        resolver.accept(sign_entry(other, 9, HELLO).encode(), peer)
    tampered = bytearray(sign_entry(seed, 6, HELLO).encode())
    tampered[-70] ^= 1  # a byte of the root
    with pytest.raises(ForgedRoot):
        resolver.accept(bytes(tampered), peer)
    with pytest.raises(ForgedRoot):  # two roots for one revision
        resolver.accept(sign_entry(seed, 5, b"\x09" * 32).encode(), peer)


def test_sealed_data_opens_only_with_its_key_and_place() -> None:
    key = b"\x07" * 32
    sealed = seal(key, b"answer", b"place")
    assert open_sealed(key, sealed, b"place") == b"answer"
    for args in ((b"\x08" * 32, sealed, b"place"), (key, sealed, b"other")):
        with pytest.raises(StorageError):
            open_sealed(*args)
    with pytest.raises(StorageError):
        open_sealed(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), b"place")
