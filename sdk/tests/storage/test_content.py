"""Content as blocks: raw up to 1 MiB, a manifest beyond; zstd only where it pays; streaming
writes; and reads that trust nothing (damaged blocks, lying manifests, zstd bombs)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from fabstir_sdk.storage import cbor, content
from fabstir_sdk.storage.blobs import blake3_256, cid_of
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.content import BLOCK_SIZE, ContentRef, Manifest
from fabstir_sdk.storage.errors import CorruptBlock, StorageError, TooLarge


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BlockStore]:
    s = BlockStore(tmp_path / "store")
    yield s
    s.close()


def _text(size: int) -> bytes:
    line = b"the quick brown fox jumps over the lazy dog, 0123456789\n"
    return (line * (size // len(line) + 1))[:size]


@pytest.mark.parametrize(
    "size", [0, 1, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 3 * BLOCK_SIZE + 5]
)
def test_across_the_one_mib_boundary(store: BlockStore, size: int) -> None:
    data = os.urandom(size)
    ref = content.write_bytes(store, data, compress=None)
    assert ref.content_hash == blake3_256(data) and ref.size == size
    if size <= BLOCK_SIZE:  # the content is its own root: IPFS tools name it by its CID
        assert not ref.is_manifest and ref.root == ref.content_hash
        assert cid_of(ref.root) == cid_of(blake3_256(data))
        assert content.blocks_of(store, ref) == []
    else:
        m = content.load_manifest(store.get(ref.root))
        assert ref.is_manifest and m.compression is None and m.size == size
        assert len(m.blocks) == -(-size // BLOCK_SIZE)
        assert [len(store.get(b)) for b in m.blocks[:-1]] == [BLOCK_SIZE] * (len(m.blocks) - 1)
        assert store.kind_of(ref.root) == "manifest"
        assert set(store.children(ref.root)) == set(m.blocks)
    assert content.read_bytes(store, ref) == data
    assert content.read_bytes(store, ref.root) == data  # a bare root works too


def test_zstd_only_where_it_pays(store: BlockStore, tmp_path: Path) -> None:
    text = _text(3 * BLOCK_SIZE)
    packed = content.write_bytes(store, text)
    assert packed.compression == "zstd" and packed.content_hash == blake3_256(text)
    stored = sum(len(store.get(b)) for b in content.blocks_of(store, packed))
    assert stored < len(text) // 10
    assert content.read_bytes(store, packed) == text

    noise = os.urandom(2 * BLOCK_SIZE)
    assert content.write_bytes(store, noise).compression is None

    # A GGUF-like file: a compressible header, then weights that do not compress. The sample
    # is spread over the file, so the header alone does not talk it into zstd.
    model = tmp_path / "model.gguf"
    model.write_bytes(_text(256 << 10) + os.urandom(10 * BLOCK_SIZE))
    assert content.write_file(store, model).compression is None
    forced = content.write_file(store, model, compress="zstd")
    assert forced.compression == "zstd"
    assert content.read_bytes(store, forced) == model.read_bytes()
    with pytest.raises(StorageError):
        content.write_bytes(store, b"x", compress="brotli")


def test_write_file_streams_and_records_sha256(store: BlockStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for _ in range(24):
            f.write(os.urandom(BLOCK_SIZE))
    tracemalloc.start()
    try:
        ref = content.write_file(store, src)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak  # the 24 MiB file was never in memory whole
    data = src.read_bytes()
    assert ref.sha256 == hashlib.sha256(data).digest()
    assert content.load_manifest(store.get(ref.root)).sha256 == ref.sha256
    out = tmp_path / "copy.bin"
    content.read_to_file(store, ref, out)
    assert out.read_bytes() == data


def test_a_corrupted_block_on_disk_is_detected(store: BlockStore, tmp_path: Path) -> None:
    data = os.urandom(2 * BLOCK_SIZE + 10)
    ref = content.write_bytes(store, data, compress=None)
    victim = content.blocks_of(store, ref)[1]
    path = store.file_of(victim)
    raw = bytearray(path.read_bytes())
    raw[1000] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptBlock):
        content.read_bytes(store, ref)
    assert not store.has(victim)  # quarantined: the next fetch replaces it
    out = tmp_path / "out.bin"
    with pytest.raises(StorageError):  # NotFound now: the block is gone until refetched
        content.read_to_file(store, ref, out)
    assert not out.exists() and not list(tmp_path.glob(".out.bin*"))
    store.put_verified(victim, data[BLOCK_SIZE : 2 * BLOCK_SIZE])
    assert content.read_bytes(store, ref) == data


def _liar(store: BlockStore, m: Manifest) -> ContentRef:
    root = store.put(m.encode(), "manifest", list(m.blocks))
    return ContentRef(root, m.content_hash, m.size, m.compression, m.sha256)


def test_a_manifest_lying_about_its_content_is_refused(store: BlockStore) -> None:
    data = os.urandom(BLOCK_SIZE + 100)
    ref = content.write_bytes(store, data, compress=None)
    m = content.load_manifest(store.get(ref.root))
    # Uncompressed: the size must fit the block count (refused on parse)...
    with pytest.raises(StorageError):
        content.load_manifest(
            Manifest(m.content_hash, 5 * BLOCK_SIZE, None, m.blocks, None).encode()
        )
    # ...and within it, must be the real one (refused on read).
    for size in (BLOCK_SIZE + 99, BLOCK_SIZE + 101):
        with pytest.raises(CorruptBlock):
            content.read_bytes(
                store, _liar(store, Manifest(m.content_hash, size, None, m.blocks, None))
            )
    with pytest.raises(CorruptBlock):  # another content's name
        content.read_bytes(
            store, _liar(store, Manifest(blake3_256(b"x"), m.size, None, m.blocks, None))
        )
    with pytest.raises(CorruptBlock):  # a wrong sha256 pin
        content.read_bytes(
            store, _liar(store, Manifest(m.content_hash, m.size, None, m.blocks, b"\0" * 32))
        )

    text = _text(2 * BLOCK_SIZE)
    packed = content.write_bytes(store, text, compress="zstd")
    pm = content.load_manifest(store.get(packed.root))
    for size in (len(text) - 1, len(text) + 1):
        with pytest.raises(CorruptBlock):
            content.read_bytes(
                store, _liar(store, Manifest(pm.content_hash, size, "zstd", pm.blocks, None))
            )


def test_a_zstd_bomb_is_stopped_at_the_declared_size(store: BlockStore) -> None:
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    zeros = bytes(BLOCK_SIZE)
    frame = b"".join(cobj.compress(zeros) for _ in range(512)) + cobj.flush()  # 512 MiB
    assert len(frame) < BLOCK_SIZE
    bomb = _liar(store, Manifest(blake3_256(b"small"), 1000, "zstd", (store.put(frame),), None))
    tracemalloc.start()
    try:
        with pytest.raises(CorruptBlock):
            content.read_bytes(store, bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak
    # Garbage instead of a frame is corruption too, not a crash.
    junk = _liar(store, Manifest(blake3_256(b"j"), 10, "zstd", (store.put(b"not zstd"),), None))
    with pytest.raises(CorruptBlock):
        content.read_bytes(store, junk)


def test_read_bytes_respects_max_size(store: BlockStore) -> None:
    ref = content.write_bytes(store, os.urandom(BLOCK_SIZE + 1), compress=None)
    with pytest.raises(TooLarge):
        content.read_bytes(store, ref, max_size=BLOCK_SIZE)


def test_load_manifest_is_strict(store: BlockStore) -> None:
    good = {0: 1, 1: bytes(32), 2: 3, 3: None, 4: [bytes(32)], 5: None}
    assert content.load_manifest(cbor.dumps(good)).size == 3
    for bad in (
        {**good, 2: True},  # a bool is not a size
        {**good, 2: -1},
        {**good, 0: 2},  # unknown version
        {**good, 3: "brotli"},
        {**good, 4: []},
        {**good, 4: [bytes(31)]},
        {**good, 5: bytes(20)},
        {k: v for k, v in good.items() if k != 5},
        [1, 2, 3],
    ):
        with pytest.raises(StorageError):
            content.load_manifest(cbor.dumps(bad))
    with pytest.raises(StorageError):  # a second encoding of the same value
        content.load_manifest(b"\xa6\x18\x00" + cbor.dumps(good)[2:])
    assert content.load_manifest(cbor.dumps(good)).blocks == (bytes(32),)


def test_a_failed_write_indexes_nothing(store: BlockStore) -> None:
    def chunks() -> Iterator[bytes]:
        yield os.urandom(BLOCK_SIZE)
        yield os.urandom(BLOCK_SIZE)
        raise OSError("the disk went away")

    with pytest.raises(OSError):
        content.write_chunks(store, chunks(), compress=False)
    assert store.stats().blocks == 0
