"""Content of any size as blocks of at most 1 MiB (what Bitswap can carry).

Small content stored as it is is a single raw block: its hash *is* the content's BLAKE3, and
the raw-blake3 CID of it names the content for IPFS tools too. Anything larger, or compressed,
gets a **manifest** block (deterministic CBOR)::

    {0: 1, 1: blake3(content), 2: size, 3: "zstd" | None, 4: [block hashes], 5: sha256 | None}

The hashes are always of the *content*, never of its compressed bytes, so a file has one name
whatever its encoding; the blocks are slices of the (compressed) stream. Reading verifies every
block (the store re-hashes it), bounds decompression by the declared size (a zip bomb stops at
``size + 1`` bytes, read through a bounded stream reader, so a small block that inflates to
gigabytes never does), and checks the content's BLAKE3 (and sha256, when the manifest has one:
models are pinned on chain by sha256) end to end before a byte is returned or renamed into
place.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol, cast

import zstandard

from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.blobs import HASH_SIZE, Hasher, blake3_256
from fabstir_sdk.storage.errors import CorruptBlock, StorageError, TooLarge

BLOCK_SIZE = 1 << 20
MANIFEST_VERSION = 1
#: A manifest lists at most this many blocks (~29 GiB of content: the manifest is a block too).
MAX_BLOCKS = 30_000
ZSTD_LEVEL = 3
#: Compress only when a sample shrinks below this share of its size.
COMPRESS_BELOW = 0.9
_SAMPLE = 256 << 10
#: ``auto`` samples this many windows spread across the content: a GGUF's text header
#: compresses, its quantized weights do not, so the first bytes alone mislead.
_WINDOWS = 32
_READ = 4 << 20
#: The decompressor's window cap (level 3 uses 2 MiB at most): bounds memory against a
#: crafted frame.
_MAX_WINDOW = 1 << 23


class BlockSource(Protocol):
    """Where blocks are read from (a :class:`~fabstir_sdk.storage.blockstore.BlockStore`)."""

    def get(self, hash: bytes) -> bytes: ...


class BlockSink(BlockSource, Protocol):
    def put(
        self, data: bytes | memoryview, kind: str = "raw", children: Sequence[bytes] = ()
    ) -> bytes: ...


@dataclass(frozen=True)
class ContentRef:
    """What a directory entry needs to find content again."""

    root: bytes  # the block fetched first: the raw block itself, or the manifest
    content_hash: bytes  # BLAKE3 of the content
    size: int
    compression: str | None = None
    sha256: bytes | None = None

    @property
    def is_manifest(self) -> bool:
        return self.root != self.content_hash or self.compression is not None


@dataclass(frozen=True)
class Manifest:
    content_hash: bytes
    size: int
    compression: str | None
    blocks: tuple[bytes, ...]
    sha256: bytes | None

    def encode(self) -> bytes:
        return cbor.dumps(
            {
                0: MANIFEST_VERSION,
                1: self.content_hash,
                2: self.size,
                3: self.compression,
                4: list(self.blocks),
                5: self.sha256,
            }
        )


def load_manifest(data: bytes) -> Manifest:
    """Decode and validate a manifest block (bounded: it came from disk or a peer)."""
    raw = cbor.loads(data)
    if not isinstance(raw, dict) or set(raw) != {0, 1, 2, 3, 4, 5} or raw[0] != MANIFEST_VERSION:
        raise StorageError("not a content manifest")
    content_hash, size, compression, blocks, sha = raw[1], raw[2], raw[3], raw[4], raw[5]
    if (
        not isinstance(content_hash, bytes)
        or len(content_hash) != HASH_SIZE
        or not isinstance(size, int)
        or isinstance(size, bool)
        or not 0 <= size < 1 << 63
        or compression not in (None, "zstd")
        or not isinstance(blocks, list)
        or not 0 < len(blocks) <= MAX_BLOCKS
        or not all(isinstance(b, bytes) and len(b) == HASH_SIZE for b in blocks)
        or not (sha is None or (isinstance(sha, bytes) and len(sha) == 32))
    ):
        raise StorageError("malformed content manifest")
    if (
        compression is None
        and not (len(blocks) - 1) * BLOCK_SIZE < max(size, 1) <= len(blocks) * BLOCK_SIZE
    ):
        raise StorageError("the manifest's size does not match its blocks")
    return Manifest(content_hash, size, compression, tuple(blocks), sha)


def _pays(sample: bytes) -> bool:
    if len(sample) < 512:
        return False
    return len(zstandard.ZstdCompressor(level=1).compress(sample)) < COMPRESS_BELOW * len(sample)


def _spread(size: int, read: Callable[[int], bytes]) -> bytes:
    """Up to :data:`_SAMPLE` bytes in :data:`_WINDOWS` windows spread evenly over the content."""
    window = _SAMPLE // _WINDOWS
    if size <= _SAMPLE:
        return read(0)[:_SAMPLE]
    # One window in the middle of each 1/_WINDOWS of the content: each part weighs the same.
    starts = (min((2 * i + 1) * size // (2 * _WINDOWS), size - window) for i in range(_WINDOWS))
    return b"".join(read(at)[:window] for at in starts)


def _slices(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Re-cut a stream of chunks into blocks of exactly :data:`BLOCK_SIZE` (the last less);
    refuses content whose manifest would not fit in a block."""
    pending = bytearray()
    count = 0
    for chunk in chunks:
        pending += chunk
        while len(pending) >= BLOCK_SIZE:
            count += 1
            if count > MAX_BLOCKS:
                raise TooLarge(f"content over {MAX_BLOCKS} blocks does not fit one manifest")
            yield bytes(pending[:BLOCK_SIZE])
            del pending[:BLOCK_SIZE]
    if pending:
        yield bytes(pending)


def write_chunks(
    store: BlockSink,
    chunks: Iterable[bytes],
    *,
    compress: bool,
    with_sha256: bool = False,
) -> ContentRef:
    """Store a stream of content; one pass, memory bounded by a block or two. Into a
    :class:`~fabstir_sdk.storage.blockstore.BlockStore` it is one transaction: all or
    nothing, one commit."""
    transaction = getattr(store, "transaction", None)
    with transaction() if transaction is not None else contextlib.nullcontext():
        return _write_chunks(store, chunks, compress, with_sha256)


def _write_chunks(
    store: BlockSink, chunks: Iterable[bytes], compress: bool, with_sha256: bool
) -> ContentRef:
    content_hasher, sha = Hasher(), hashlib.sha256() if with_sha256 else None
    size = 0

    def counted() -> Iterator[bytes]:
        nonlocal size
        for chunk in chunks:
            content_hasher.update(chunk)
            if sha is not None:
                sha.update(chunk)
            size += len(chunk)
            yield chunk

    stream: Iterable[bytes] = counted()
    if compress:
        stream = _compressed(stream)
    blocks = [store.put(block) for block in _slices(stream)]
    content_hash = content_hasher.digest()
    sha256 = sha.digest() if sha is not None else None
    if not compress and len(blocks) == 1 and sha256 is None:
        return ContentRef(blocks[0], content_hash, size)
    if not blocks:  # empty content: one empty raw block
        blocks = [store.put(b"")]
        if not compress and sha256 is None:
            return ContentRef(blocks[0], content_hash, 0)
    manifest = Manifest(content_hash, size, "zstd" if compress else None, tuple(blocks), sha256)
    root = store.put(manifest.encode(), kind="manifest", children=blocks)
    return ContentRef(root, content_hash, size, manifest.compression, sha256)


def _compressed(chunks: Iterable[bytes]) -> Iterator[bytes]:
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    yield compressor.flush()


def write_bytes(store: BlockSink, data: bytes, compress: str | None = "auto") -> ContentRef:
    """Store ``data``; ``compress`` is "auto" (zstd when a sample shrinks by 10 %), "zstd" or
    None."""
    if compress not in ("auto", "zstd", None):
        raise StorageError(f"unknown compression {compress!r}")
    use = compress == "zstd" or (
        compress == "auto" and _pays(_spread(len(data), lambda at: data[at : at + _SAMPLE]))
    )
    view = memoryview(data)
    chunks = (bytes(view[i : i + BLOCK_SIZE]) for i in range(0, len(data), BLOCK_SIZE))
    return write_chunks(store, chunks, compress=use)


def write_file(
    store: BlockSink, path: Path, compress: str | None = "auto", with_sha256: bool = True
) -> ContentRef:
    """Store a file, streaming (a model is never held in memory); records its sha256."""
    if compress not in ("auto", "zstd", None):
        raise StorageError(f"unknown compression {compress!r}")
    with path.open("rb") as f:

        def read_at(at: int) -> bytes:
            f.seek(at)
            return f.read(_SAMPLE)

        size = os.fstat(f.fileno()).st_size
        use = compress == "zstd" or (compress == "auto" and _pays(_spread(size, read_at)))
        f.seek(0)
        chunks = iter(lambda: f.read(_READ), b"")
        return write_chunks(store, chunks, compress=use, with_sha256=with_sha256)


def iter_content(
    store: BlockSource, root: bytes, manifest: Manifest | None = None
) -> Iterator[bytes]:
    """The content's bytes in pieces, each block verified; the end-to-end check runs after the
    last piece (so consume it all before trusting any of it, or use :func:`read_bytes` /
    :func:`read_to_file`)."""
    if manifest is None:
        first = store.get(root)
        manifest = _manifest_or_none(first)
        if manifest is None:  # a raw block: its hash is the content's
            yield first
            return
    hasher, sha = Hasher(), hashlib.sha256() if manifest.sha256 else None
    produced = 0

    def check(piece: bytes) -> bytes:
        nonlocal produced
        produced += len(piece)
        if produced > manifest.size:
            raise CorruptBlock("the content is longer than its manifest says")
        hasher.update(piece)
        if sha is not None:
            sha.update(piece)
        return piece

    if manifest.compression == "zstd":
        dctx = zstandard.ZstdDecompressor(max_window_size=_MAX_WINDOW)
        source = cast(IO[bytes], _Blocks(store, manifest.blocks))
        with dctx.stream_reader(source, read_size=BLOCK_SIZE, read_across_frames=True) as reader:
            while True:
                try:
                    # At most one byte past the declared size is ever produced.
                    piece = reader.read(min(BLOCK_SIZE, manifest.size - produced + 1))
                except zstandard.ZstdError as exc:
                    raise CorruptBlock(f"the compressed content does not decode: {exc}") from None
                if not piece:
                    break
                yield check(piece)
    else:
        for block in manifest.blocks:
            yield check(store.get(block))
    if produced != manifest.size or hasher.digest() != manifest.content_hash:
        raise CorruptBlock("the content does not hash to what its manifest names")
    if sha is not None and sha.digest() != manifest.sha256:
        raise CorruptBlock("the content does not match its sha256")


class _Blocks(io.RawIOBase):
    """A manifest's blocks as one readable stream (each block verified as it is fetched)."""

    def __init__(self, store: BlockSource, blocks: Iterable[bytes]) -> None:
        self._store, self._blocks, self._cur = store, iter(blocks), memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        while not self._cur:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._cur = memoryview(self._store.get(block))
        n = min(len(buf), len(self._cur))
        buf[:n] = self._cur[:n]
        self._cur = self._cur[n:]
        return n


def _manifest_or_none(block: bytes) -> Manifest | None:
    try:
        return load_manifest(block)
    except StorageError:
        return None


def read_bytes(store: BlockSource, ref: ContentRef | bytes, max_size: int = 1 << 30) -> bytes:
    """The whole content, verified. ``ref`` may be a bare root hash."""
    root = ref.root if isinstance(ref, ContentRef) else ref
    out = bytearray()
    for piece in iter_content(store, root, _expected(store, ref)):
        out += piece
        if len(out) > max_size:
            raise TooLarge(f"content over {max_size} bytes")
    if isinstance(ref, ContentRef) and blake3_256(out) != ref.content_hash:
        raise CorruptBlock("the content is not the one the entry names")
    return bytes(out)


def _expected(store: BlockSource, ref: ContentRef | bytes) -> Manifest | None:
    """A manifest must be read as one when the entry says so (never guess from bytes that a
    raw file happens to decode as a manifest)."""
    if isinstance(ref, ContentRef) and ref.is_manifest:
        return load_manifest(store.get(ref.root))
    return None


def read_to_file(
    store: BlockSource,
    ref: ContentRef | bytes,
    dest: Path,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Write the content to ``dest`` atomically: a temp file, verified, fsynced, renamed."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        hasher = Hasher()
        with os.fdopen(fd, "wb") as f:
            root = ref.root if isinstance(ref, ContentRef) else ref
            for piece in iter_content(store, root, _expected(store, ref)):
                f.write(piece)
                hasher.update(piece)
                if progress:
                    progress(len(piece))
            f.flush()
            os.fsync(f.fileno())
        if isinstance(ref, ContentRef) and hasher.digest() != ref.content_hash:
            raise CorruptBlock("the content is not the one the entry names")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def blocks_of(store: BlockSource, ref: ContentRef) -> list[bytes]:
    """Every block the content needs besides its root (for fetching it from peers)."""
    if not ref.is_manifest:
        return []
    return list(load_manifest(store.get(ref.root)).blocks)
