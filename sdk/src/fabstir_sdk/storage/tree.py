"""The path API over the block store: ``put``, ``get``, ``list``, ``delete``, ``walk``, batches.

A :class:`Store` is one tree of DirV1 directories (:mod:`.dirv1`, sharded into a HAMT past 1000
entries: :mod:`.hamt`) whose root directory block is the store's named root. A change rewrites
the directories on its path (copy on write) and moves the root in one transaction, so readers
see the old tree or the new one, never a mix; :meth:`Store.batch` makes many changes one root
update. The directories touched stay decoded in memory (they are immutable once written), so a
path lookup reads no block twice.

Inside a batch, reads see the tree as it was before the batch (its changes appear together at
the end, or not at all). ``delete`` of a directory removes it with everything below; the
blocks go at the next garbage collection. One process writes a store at a time (a lock file
refuses a second); others may open it ``read_only``.

Listings are in hash order (:func:`.hamt.order_key`), flat or sharded alike: a cursor (the last
entry's position, CBOR, base64url without padding, as s5.js's) therefore stays valid while
entries are added or removed, and across the sharding threshold: nothing that existed when a
listing began is repeated or skipped.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabstir_sdk.storage import cbor, content, dirv1
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.dirv1 import SHARD_AT, DirRef, DirV1, Entry, FileRef, Sharding
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.storage.hamt import HamtNode, OrderKey, name_hash, order_key

#: The most entries one :meth:`Store.list` page returns.
MAX_PAGE = 10_000


@dataclass(frozen=True)
class FileEntry:
    name: str
    ref: FileRef

    @property
    def size(self) -> int:
        return self.ref.size

    def describe(self) -> dict[str, Any]:
        c = self.ref.content
        return {
            "kind": "file",
            "name": self.name,
            "size": c.size,
            "blake3": c.content_hash.hex(),
            "root": c.root.hex(),
            "compression": c.compression,
            "media_type": self.ref.media_type,
        }


@dataclass(frozen=True)
class DirEntry:
    name: str
    hash: bytes

    def describe(self) -> dict[str, Any]:
        return {"kind": "dir", "name": self.name, "size": None, "hash": self.hash.hex()}


def _as_entry(name: str, entry: Entry) -> FileEntry | DirEntry:
    return FileEntry(name, entry) if isinstance(entry, FileRef) else DirEntry(name, entry.hash)


@dataclass(frozen=True)
class Page:
    entries: list[FileEntry | DirEntry]
    cursor: str | None  # None: the listing is complete


def split_path(path: str) -> list[str]:
    parts = [p for p in path.split("/") if p]
    return [dirv1.check_name(p) for p in parts]


def encode_cursor(name: str) -> str:
    raw = cbor.dumps({"h": name_hash(name), "n": name})
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> OrderKey:
    try:
        raw = cbor.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)), 1024)
        name, h = raw["n"], raw["h"]
        if not isinstance(name, str) or h != name_hash(name):
            raise ValueError
    except (ValueError, TypeError, KeyError, StorageError):
        raise StorageError("not a listing cursor of this store") from None
    return order_key(name, h)


class _Dir:
    """A directory in memory: flat (a dict) or sharded (a HAMT), with the subdirectories
    opened below it. ``hash`` is set while it matches a written block."""

    def __init__(self, blocks: BlockStore, hash: bytes | None) -> None:
        self.blocks = blocks
        self.hash = hash
        self.flat: dict[str, Entry] | None = {}
        self.hamt: HamtNode | None = None
        self.open: dict[str, _Dir] = {}
        if hash is not None:
            d = dirv1.decode(blocks.get(hash))
            if d.sharding is not None:
                self.flat = None
                self.hamt = HamtNode.from_block(d.sharding.root, 0, blocks.get)
            else:
                self.flat = {**d.dirs, **d.files}

    @property
    def count(self) -> int:
        return len(self.flat) if self.flat is not None else self.hamt.count  # type: ignore[union-attr]

    def get(self, name: str) -> Entry | None:
        if self.flat is not None:
            return self.flat.get(name)
        assert self.hamt is not None
        return self.hamt.get(name, name_hash(name))

    def set(self, name: str, entry: Entry) -> None:
        self.hash = None
        if self.flat is not None:
            self.flat[name] = entry
            if len(self.flat) > SHARD_AT:
                hamt = HamtNode(0, self.blocks.get)
                for n, e in self.flat.items():
                    hamt.set(n, name_hash(n), e)
                self.flat, self.hamt = None, hamt
        else:
            assert self.hamt is not None
            self.hamt.set(name, name_hash(name), entry)

    def delete(self, name: str) -> bool:
        self.open.pop(name, None)
        if self.flat is not None:
            removed = self.flat.pop(name, None) is not None
        else:
            assert self.hamt is not None
            removed = self.hamt.delete(name, name_hash(name))
            if self.hamt.count <= SHARD_AT:
                self.flat, self.hamt = dict(self.hamt.items()), None
        if removed:
            self.hash = None
        return removed

    def items(self, after: OrderKey | None = None) -> Iterator[tuple[str, Entry]]:
        if self.hamt is not None:
            yield from self.hamt.items(after)
            return
        assert self.flat is not None
        for key, name in sorted((order_key(n), n) for n in self.flat):
            if after is None or key > after:
                yield name, self.flat[name]

    def subdir(self, name: str, create: bool) -> _Dir | None:
        if name in self.open:
            return self.open[name]
        entry = self.get(name)
        if isinstance(entry, FileRef):
            raise StorageError(f"{name} is a file, not a directory")
        if entry is None:
            if not create:
                return None
            child = _Dir(self.blocks, None)
            self.set(name, DirRef(_empty_dir(self.blocks)))  # a placeholder until flushed
        else:
            child = _Dir(self.blocks, entry.hash)
        self.open[name] = child
        return child

    @property
    def dirty(self) -> bool:
        return self.hash is None or any(c.dirty for c in self.open.values())

    def flush(self) -> bytes:
        """Write what changed below and here; returns this directory's block hash."""
        for name, child in self.open.items():
            if child.dirty:
                self.set(name, DirRef(child.flush(), int(time.time())))
        if self.hash is not None:
            return self.hash
        if self.flat is not None:
            d = DirV1(
                {n: e for n, e in self.flat.items() if isinstance(e, DirRef)},
                {n: e for n, e in self.flat.items() if isinstance(e, FileRef)},
            )
        else:
            assert self.hamt is not None
            root = self.hamt.flush(lambda data, links: self.blocks.put(data, "hamt", links))
            d = DirV1({}, {}, Sharding(root, self.hamt.count))
        self.hash = self.blocks.put(dirv1.encode(d), "dir", d.children())
        return self.hash


def _empty_dir(blocks: BlockStore) -> bytes:
    return blocks.put(dirv1.encode(DirV1({}, {})), "dir")


class Store:
    """One named tree over a :class:`BlockStore` at ``path``."""

    def __init__(self, path: Path | str, name: str = "main", *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.name = name
        self.read_only = read_only
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_file: int | None = None
        if not read_only:
            self._lock_file = os.open(self.path / "writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self._lock_file)
                raise StorageError(f"{self.path} is being written by another process") from None
        self.blocks = BlockStore(self.path)
        self._lock = threading.RLock()
        self._batch = 0
        self._load()

    def _load(self) -> None:
        current = self.blocks.root(self.name)
        if current is None:
            self._root_hash, self.revision = _empty_dir(self.blocks), 0
        else:
            self._root_hash, self.revision = current
        self._live = _Dir(self.blocks, self._root_hash)

    @property
    def root(self) -> bytes:
        """The hash of the root directory block, as last committed."""
        return self._root_hash

    def refresh(self) -> None:
        """A reader: pick up what the writing process committed since."""
        with self._lock:
            current = self.blocks.root(self.name)
            if current is not None and current[0] != self._root_hash:
                self._load()

    def close(self) -> None:
        with self._lock:
            self.blocks.close()
            if self._lock_file is not None:
                os.close(self._lock_file)
                self._lock_file = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- writing

    @contextlib.contextmanager
    def batch(self) -> Iterator[Store]:
        """Changes inside are one root update, all or nothing (use it from one thread)."""
        if self.read_only:
            raise StorageError("this store is open read-only")
        with self._lock:
            if self._batch:
                self._batch += 1
                try:
                    yield self
                finally:
                    self._batch -= 1
                return
            self._batch = 1
            try:
                with self.blocks.transaction():
                    yield self
                    if self._live.dirty:
                        new = self._live.flush()
                        self.blocks.set_root(self.name, new, self.revision + 1)
                        self._root_hash, self.revision = new, self.revision + 1
            except BaseException:
                self._load()  # back to the committed tree
                raise
            finally:
                self._batch = 0

    def _parent(self, parts: list[str]) -> _Dir:
        d = self._live
        for part in parts[:-1]:
            child = d.subdir(part, create=True)
            assert child is not None
            d = child
        return d

    def put(
        self,
        path: str,
        data: bytes,
        media_type: str | None = None,
        compress: str | None = "auto",
    ) -> FileEntry:
        parts = _file_parts(path)
        with self.batch():
            ref = content.write_bytes(self.blocks, data, compress)
            return self._link(parts, ref, media_type)

    def put_file(
        self,
        path: str,
        src: Path,
        media_type: str | None = None,
        compress: str | None = "auto",
    ) -> FileEntry:
        """Store a file, streaming (its sha256 goes into the manifest: models are pinned so)."""
        parts = _file_parts(path)
        with self.batch():
            ref = content.write_file(self.blocks, src, compress)
            return self._link(parts, ref, media_type)

    def _link(self, parts: list[str], ref: content.ContentRef, media_type: str | None) -> FileEntry:
        now = time.time_ns()
        entry = FileRef(ref, media_type, now // 10**9, now % 10**9)
        parent = self._parent(parts)
        if isinstance(parent.get(parts[-1]), DirRef) or parts[-1] in parent.open:
            raise StorageError(f"/{'/'.join(parts)} is a directory")
        parent.set(parts[-1], entry)
        return FileEntry(parts[-1], entry)

    def delete(self, path: str) -> bool:
        """Remove a file, or a directory with everything below it; False if nothing was
        there."""
        parts = split_path(path)
        if not parts:
            raise StorageError("the root cannot be deleted")
        with self.batch():
            parent = self._find_dir(parts[:-1])
            return parent is not None and parent.delete(parts[-1])

    # ----------------------------------------------------------------- reading

    def _find_dir(self, parts: list[str]) -> _Dir | None:
        d: _Dir | None = self._live
        for part in parts:
            assert d is not None
            d = d.subdir(part, create=False)
            if d is None:
                return None
        return d

    def stat(self, path: str) -> FileEntry | DirEntry:
        parts = split_path(path)
        with self._lock:
            if not parts:
                return DirEntry("", self._root_hash)
            parent = self._find_dir(parts[:-1])
            entry = parent.get(parts[-1]) if parent is not None else None
        if entry is None:
            raise NotFound(f"{path}: no such file or directory")
        return _as_entry(parts[-1], entry)

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except (NotFound, StorageError):
            return False
        return True

    def _file(self, path: str) -> FileRef:
        entry = self.stat(path)
        if not isinstance(entry, FileEntry):
            raise StorageError(f"{path} is a directory")
        return entry.ref

    def get(self, path: str, max_size: int = 1 << 30) -> bytes:
        """The file's content, verified end to end."""
        return content.read_bytes(self.blocks, self._file(path).content, max_size)

    def read_to_file(self, path: str, dest: Path) -> None:
        content.read_to_file(self.blocks, self._file(path).content, dest)

    def list(self, path: str = "/", cursor: str | None = None, limit: int = 100) -> Page:
        """One page of a directory's entries, in hash order; pass ``cursor`` to continue."""
        if not 0 < limit <= MAX_PAGE:
            raise StorageError(f"a page holds 1 to {MAX_PAGE} entries")
        after = decode_cursor(cursor) if cursor else None
        with self._lock:
            d = self._find_dir(split_path(path))
            if d is None:
                raise NotFound(f"{path}: no such directory")
            entries: list[FileEntry | DirEntry] = []
            for name, entry in d.items(after):
                if len(entries) == limit:
                    return Page(entries, encode_cursor(entries[-1].name))
                entries.append(_as_entry(name, entry))
        return Page(entries, None)

    def walk(self, path: str = "/") -> Iterator[tuple[str, FileEntry]]:
        """Every file below ``path`` (depth first, one page at a time)."""
        base = "/" + "/".join(split_path(path))
        cursor: str | None = None
        while True:
            page = self.list(path, cursor, 1000)
            for entry in page.entries:
                child = f"{base.rstrip('/')}/{entry.name}"
                if isinstance(entry, FileEntry):
                    yield child, entry
                else:
                    yield from self.walk(child)
            if page.cursor is None:
                return
            cursor = page.cursor


def _file_parts(path: str) -> list[str]:
    parts = split_path(path)
    if not parts or path.endswith("/"):
        raise StorageError(f"{path!r} does not name a file")
    return parts
