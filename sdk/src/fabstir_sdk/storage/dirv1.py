"""S5's DirV1 directories, in deterministic CBOR.

A directory block is the CBOR array ``["S5.pro", header, dirs, files]`` (the shape s5.js
writes): ``dirs`` maps names to DirRefs, ``files`` names to FileRefs, each an integer-keyed
map:

- FileRef: 3 hash (the content's BLAKE3, 32 bytes), 4 size, 6 media type, 7 timestamp (s),
  8 nanoseconds, 22 hash type (``0x1e``). Fabstir adds key **100**, ``[root, compression]``,
  when the content is stored under a manifest (:mod:`fabstir_sdk.storage.content`): the block
  to fetch first. S5 readers ignore keys they do not know; without it the content is one raw
  block named by key 3.
- DirRef: 2 link (33 bytes: ``0x1e`` + the child directory block's BLAKE3), 7/8 time.

A directory of more than :data:`SHARD_AT` entries keeps them in a HAMT
(:mod:`fabstir_sdk.storage.hamt`) and says so in its header, as s5.js does:
``{"sharding": {"type": "hamt", "config": {"bitsPerLevel": 5, "maxInlineEntries": 8,
"hashFunction": 0}, "root": {"cid": link, "totalEntries": n}}}``; ``dirs`` and ``files`` are
then empty. Unlike s5.js, map keys are in RFC 8949 bytewise order (:mod:`.cbor`), never
``localeCompare``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.blobs import HASH_SIZE, MULTIHASH_BLAKE3
from fabstir_sdk.storage.content import ContentRef
from fabstir_sdk.storage.errors import StorageError

MAGIC = "S5.pro"
#: A directory with more entries than this is sharded into a HAMT.
SHARD_AT = 1000
_FABSTIR_CONTENT = 100
#: Longest name of an entry (bytes of UTF-8), as common file systems allow.
MAX_NAME = 255


def link(hash: bytes) -> bytes:
    return bytes([MULTIHASH_BLAKE3]) + hash


def unlink(raw: Any) -> bytes:
    if not isinstance(raw, bytes) or len(raw) != 1 + HASH_SIZE or raw[0] != MULTIHASH_BLAKE3:
        raise StorageError("a directory link must be 0x1e and a 32-byte BLAKE3 hash")
    return raw[1:]


def check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or len(name.encode()) > MAX_NAME:
        raise StorageError(f"{name!r} is not a valid entry name")
    return name


@dataclass(frozen=True)
class FileRef:
    content: ContentRef
    media_type: str | None = None
    timestamp: int | None = None  # seconds
    nanos: int | None = None

    @property
    def size(self) -> int:
        return self.content.size

    def to_cbor(self) -> dict[int, Any]:
        out: dict[int, Any] = {3: self.content.content_hash, 4: self.content.size, 22: 0x1E}
        if self.media_type is not None:
            out[6] = self.media_type
        if self.timestamp is not None:
            out[7] = self.timestamp
        if self.nanos is not None:
            out[8] = self.nanos
        if self.content.is_manifest:
            out[_FABSTIR_CONTENT] = [self.content.root, self.content.compression]
        return out

    @classmethod
    def from_cbor(cls, raw: Any) -> FileRef:
        try:
            content_hash, size = raw[3], raw[4]
            root, compression = raw.get(_FABSTIR_CONTENT, [content_hash, None])
            ok = (
                isinstance(content_hash, bytes)
                and len(content_hash) == HASH_SIZE
                and isinstance(size, int)
                and size >= 0
                and isinstance(root, bytes)
                and len(root) == HASH_SIZE
                and compression in (None, "zstd")
                and raw.get(22, 0x1E) == 0x1E
                and isinstance(raw.get(6, ""), str)
                and isinstance(raw.get(7, 0), int)
                and isinstance(raw.get(8, 0), int)
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise StorageError("malformed FileRef")
        content = ContentRef(root, content_hash, size, compression)
        return cls(content, raw.get(6), raw.get(7), raw.get(8))


@dataclass(frozen=True)
class DirRef:
    hash: bytes  # the child directory block
    timestamp: int | None = None
    nanos: int | None = None

    def to_cbor(self) -> dict[int, Any]:
        out: dict[int, Any] = {2: link(self.hash)}
        if self.timestamp is not None:
            out[7] = self.timestamp
        if self.nanos is not None:
            out[8] = self.nanos
        return out

    @classmethod
    def from_cbor(cls, raw: Any) -> DirRef:
        try:
            target = unlink(raw[2])
            ok = isinstance(raw.get(7, 0), int) and isinstance(raw.get(8, 0), int)
        except (KeyError, TypeError, AttributeError):
            ok = False
        if not ok:
            raise StorageError("malformed DirRef")
        return cls(target, raw.get(7), raw.get(8))


Entry = FileRef | DirRef


@dataclass(frozen=True)
class Sharding:
    root: bytes  # the HAMT's root node block
    total: int


@dataclass
class DirV1:
    dirs: dict[str, DirRef]
    files: dict[str, FileRef]
    sharding: Sharding | None = None

    @property
    def count(self) -> int:
        return self.sharding.total if self.sharding else len(self.dirs) + len(self.files)

    def children(self) -> list[bytes]:
        """Blocks this one links to (what the block store counts references for)."""
        out = [d.hash for d in self.dirs.values()]
        out += [f.content.root for f in self.files.values()]
        if self.sharding:
            out.append(self.sharding.root)
        return list(dict.fromkeys(out))


def entry_target(entry: Entry) -> bytes:
    """The block an entry links to."""
    return entry.hash if isinstance(entry, DirRef) else entry.content.root


def encode(d: DirV1) -> bytes:
    header: dict[str, Any] = {}
    if d.sharding is not None:
        header["sharding"] = {
            "type": "hamt",
            "config": {"bitsPerLevel": 5, "maxInlineEntries": 8, "hashFunction": 0},
            "root": {"cid": link(d.sharding.root), "totalEntries": d.sharding.total},
        }
    return cbor.dumps(
        [
            MAGIC,
            header,
            {name: ref.to_cbor() for name, ref in d.dirs.items()},
            {name: ref.to_cbor() for name, ref in d.files.items()},
        ]
    )


def decode(data: bytes) -> DirV1:
    raw = cbor.loads(data)
    if not isinstance(raw, list) or len(raw) != 4 or raw[0] != MAGIC:
        raise StorageError("not a DirV1 directory")
    header, dirs, files = raw[1], raw[2], raw[3]
    if not isinstance(header, dict) or not isinstance(dirs, dict) or not isinstance(files, dict):
        raise StorageError("malformed DirV1 directory")
    sharding = None
    if "sharding" in header:
        try:
            spec = header["sharding"]
            if spec["type"] != "hamt" or spec["config"]["hashFunction"] != 0:
                raise StorageError("unsupported directory sharding")
            sharding = Sharding(unlink(spec["root"]["cid"]), int(spec["root"]["totalEntries"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StorageError(f"malformed sharding header: {exc!r}") from None
    d = DirV1(
        {check_name(str(n)): DirRef.from_cbor(r) for n, r in dirs.items()},
        {check_name(str(n)): FileRef.from_cbor(r) for n, r in files.items()},
        sharding,
    )
    if not all(isinstance(n, str) for n in (*dirs, *files)) or set(d.dirs) & set(d.files):
        raise StorageError("malformed DirV1 directory")
    return d
