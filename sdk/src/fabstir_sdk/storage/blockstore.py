"""The local block store: verified blocks on disk, an SQLite index, reference-counted GC.

Layout under ``path`` (the node puts it at ``<data_dir>/store``)::

    blocks/<hex[:2]>/<hex>      one file per block, named by its BLAKE3 hash
    blocks/<hex[:2]>/.<hex>.<random>.tmp   a write in progress (never read, removed by gc)
    quarantine/<hex>.<ns>       a block file whose bytes did not match its name
    index.sqlite                blocks(hash, size, kind, refs, created), links(parent, child),
                                roots(name, hash, revision); WAL mode

Why it survives ``kill -9`` (and power loss) anywhere: a block file is written under a
temporary name and renamed into place, so it is only ever visible whole; its data and directory
entry reach the disk (fsync per file, or one ``syncfs`` for a large batch) *before* the index
row that names it commits. So every indexed block has a complete file; a crash in between
leaves only unindexed files, which a later put rewrites and :meth:`BlockStore.gc` removes.
Roots move in one SQLite transaction (pin new, unpin old; ``synchronous=FULL``), so a root is
always the old or the new one, and everything it reaches is pinned through ``links``.

Nothing on disk is trusted: :meth:`BlockStore.get` re-hashes every block it reads and moves a
mismatching file aside, so the block counts as missing and the next fetch replaces it.

Threads: one writer at a time (a lock, one write connection; :meth:`transaction` holds both for a
batch, so 10k puts are one commit) and any number of readers, each with its own connection.
A reader sees committed state only; the writing thread also sees its open transaction. Open a
transaction and leave it in the same thread (from asyncio: the whole batch in one
``asyncio.to_thread`` call). Other processes may open the store to read; writers in separate
processes are excluded a layer up (``tree.Store`` takes a file lock).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fabstir_sdk.storage.blobs import HASH_SIZE, blake3_256
from fabstir_sdk.storage.errors import CorruptBlock, NotFound, StaleRoot, StorageError, TooLarge

#: The largest block: Bitswap carries whole blocks and both sides cap a message at 4 MiB.
MAX_BLOCK: Final = 1 << 20
_TMP_SUFFIX: Final = ".tmp"
_HEX: Final = frozenset("0123456789abcdef")
#: Files fsynced one by one per transaction; later ones are flushed by one syncfs at commit.
_FSYNC_EACH: Final = 32

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS blocks (
    hash BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    kind TEXT NOT NULL,
    refs INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blocks_unreferenced ON blocks (created) WHERE refs = 0;
CREATE TABLE IF NOT EXISTS links (
    parent BLOB NOT NULL,
    child BLOB NOT NULL,
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (
    name TEXT PRIMARY KEY,
    hash BLOB NOT NULL,
    revision INTEGER NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class GcReport:
    """What one :meth:`BlockStore.gc` removed."""

    blocks: int = 0
    bytes: int = 0
    orphan_files: int = 0
    temp_files: int = 0
    quarantined_files: int = 0


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of re-hashing every indexed block."""

    checked: int
    corrupt: list[bytes] = field(default_factory=list)
    missing: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.missing


@dataclass(frozen=True, slots=True)
class StoreStats:
    blocks: int
    bytes: int
    roots: int
    pinned: int


def _check(hash: bytes) -> bytes:
    if not isinstance(hash, bytes) or len(hash) != HASH_SIZE:
        raise StorageError("a block hash is 32 bytes")
    return hash


def _int(value: object) -> int:
    assert isinstance(value, int)
    return value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (AttributeError, OSError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS: Final = _load_syncfs()


def _syncfs(path: Path) -> bool:
    """Flush the whole filesystem holding ``path`` (Linux ``syncfs``); False where there is
    none or it failed, and the caller fsyncs file by file."""
    if _SYNCFS is None:
        return False
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return bool(_SYNCFS(fd) == 0)
    finally:
        os.close(fd)


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class BlockStore:
    """Blocks of at most :data:`MAX_BLOCK` bytes, addressed by BLAKE3, under ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.blocks_dir = self.path / "blocks"
        self.quarantine_dir = self.path / "quarantine"
        fresh = not self.blocks_dir.exists()
        for d in (self.path, self.blocks_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)
        for i in range(256):
            (self.blocks_dir / f"{i:02x}").mkdir(exist_ok=True)
        if fresh:
            _fsync_dir(self.blocks_dir)
            _fsync_dir(self.path)
        self._db_path = self.path / "index.sqlite"
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        try:
            self._w = _connect(self._db_path)
            self._w.execute("PRAGMA journal_mode = WAL")
            # FULL: a commit (a root move above all) is on disk when set_root returns.
            self._w.execute("PRAGMA synchronous = FULL")
            self._w.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the block index {self._db_path}: {exc}") from exc
        self._depth = 0
        self._owner: int | None = None
        self._dirty_dirs: set[Path] = set()
        self._unsynced: list[Path] = []
        self._synced = 0

    # --- plumbing ---------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._w.close()
            with self._readers_lock:
                for conn in self._readers:
                    conn.close()
                self._readers.clear()

    def __enter__(self) -> BlockStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection, or the write connection inside our own transaction
        (so a batch sees the blocks it has put)."""
        if self._closed:
            raise StorageError("the block store is closed")
        if self._owner == threading.get_ident():
            return self._w
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = _connect(self._db_path)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open the block index: {exc}") from exc
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        try:
            return self._reader().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"block index: {exc}") from exc

    def file_of(self, hash: bytes) -> Path:
        """Where the block's file lives (whether or not it exists)."""
        h = _check(hash).hex()
        return self.blocks_dir / h[:2] / h

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Everything inside is one SQLite commit (nested calls join the outer one); on an
        exception nothing of it is indexed. Block files are durable before the commit."""
        with self._lock:
            if self._closed:
                raise StorageError("the block store is closed")
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            try:
                self._w.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"block index: {exc}") from exc
            self._depth, self._owner = 1, threading.get_ident()
            try:
                yield
                try:
                    self._make_durable()
                except OSError as exc:
                    raise StorageError(f"cannot flush the block files: {exc}") from exc
                self._w.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._w.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise StorageError(f"block index: {exc}") from exc
                raise
            finally:
                self._depth, self._owner = 0, None
                self._dirty_dirs.clear()
                self._unsynced.clear()
                self._synced = 0

    # --- blocks -----------------------------------------------------------------------

    def _write_file(self, hash: bytes, data: bytes | memoryview) -> None:
        """Write under a temporary name, then rename: a reader never sees a partial file.
        The first few files of a transaction are fsynced one by one; past that the batch is
        flushed by one ``syncfs`` at commit (10k fsyncs cost seconds, one syncfs tens of ms)."""
        final = self.file_of(hash)
        tmp = final.with_name(f".{final.name}.{os.urandom(6).hex()}{_TMP_SUFFIX}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if len(self._unsynced) or self._synced >= _FSYNC_EACH:
                self._unsynced.append(final)
            else:
                os.fsync(fd)
                self._synced += 1
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, final)
        self._dirty_dirs.add(final.parent)

    def _make_durable(self) -> None:
        """Before the index commits: every file written in this transaction is on disk."""
        if self._unsynced and not _syncfs(self.path):
            for path in self._unsynced:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for d in self._dirty_dirs:
                _fsync_dir(d)
        elif not self._unsynced:
            for d in self._dirty_dirs:
                _fsync_dir(d)

    def put(
        self,
        data: bytes | memoryview,
        kind: str = "raw",
        children: Sequence[bytes] = (),
    ) -> bytes:
        """Store ``data`` and return its BLAKE3 hash. Idempotent; each distinct child (which
        must be stored already) gains one reference from this block, once."""
        if len(data) > MAX_BLOCK:
            raise TooLarge(f"a block is at most {MAX_BLOCK} bytes, not {len(data)}")
        hash = blake3_256(data)
        self._put(hash, data, kind, children)
        return hash

    def put_verified(
        self,
        hash: bytes,
        data: bytes | memoryview,
        kind: str = "raw",
        children: Sequence[bytes] = (),
    ) -> None:
        """Store bytes that came off the wire under the hash they were asked for; refuses
        (:class:`CorruptBlock`) unless they hash to it."""
        _check(hash)
        if len(data) > MAX_BLOCK:
            raise TooLarge(f"a block is at most {MAX_BLOCK} bytes, not {len(data)}")
        if blake3_256(data) != hash:
            raise CorruptBlock(f"bytes offered for {hash.hex()} hash to something else")
        self._put(hash, data, kind, children)

    def _put(
        self, hash: bytes, data: bytes | memoryview, kind: str, children: Sequence[bytes]
    ) -> None:
        kids = dict.fromkeys(_check(c) for c in children)
        if hash in kids:
            raise StorageError("a block cannot link to itself")
        with self.transaction():
            w = self._w
            for child in kids:
                if w.execute("SELECT 1 FROM blocks WHERE hash = ?", (child,)).fetchone() is None:
                    raise NotFound(f"child block {child.hex()} is not stored")
            now = time.time()
            cur = w.execute(
                "INSERT OR IGNORE INTO blocks (hash, size, kind, refs, created)"
                " VALUES (?, ?, ?, 0, ?)",
                (hash, len(data), kind, now),
            )
            if cur.rowcount or not self.file_of(hash).exists():
                # Not indexed yet: a file already there is an orphan of a crash and may be
                # partial (renamed before it reached the disk), so it is written afresh.
                try:
                    self._write_file(hash, data)
                except OSError as exc:
                    raise StorageError(f"cannot write block {hash.hex()}: {exc}") from exc
            if cur.rowcount == 0:
                # Seen before: restart its grace period, so gc does not take a block that a
                # batch is about to link again.
                w.execute("UPDATE blocks SET created = ? WHERE hash = ?", (now, hash))
                if kind != "raw":
                    w.execute(
                        "UPDATE blocks SET kind = ? WHERE hash = ? AND kind = 'raw'", (kind, hash)
                    )
            for child in kids:
                cur = w.execute(
                    "INSERT OR IGNORE INTO links (parent, child) VALUES (?, ?)", (hash, child)
                )
                if cur.rowcount:
                    w.execute("UPDATE blocks SET refs = refs + 1 WHERE hash = ?", (child,))

    def get(self, hash: bytes) -> bytes:
        """The block's bytes, re-hashed on every read. A mismatch moves the file to
        ``quarantine/`` (so the block counts as missing and is fetched again) and raises
        :class:`CorruptBlock`; no file raises :class:`NotFound`."""
        path = self.file_of(hash)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 (closed below, ino checked first)
        except FileNotFoundError:
            raise NotFound(f"block {hash.hex()} is not stored") from None
        except OSError as exc:
            raise StorageError(f"cannot read block {hash.hex()}: {exc}") from exc
        with f:
            st = os.fstat(f.fileno())
            data = f.read(MAX_BLOCK + 1) if st.st_size <= MAX_BLOCK else b""
            if st.st_size <= MAX_BLOCK and len(data) <= MAX_BLOCK and blake3_256(data) == hash:
                return data
            self._quarantine(hash, st.st_ino)
        raise CorruptBlock(f"block {hash.hex()} on disk does not match its hash; quarantined")

    def _quarantine(self, hash: bytes, ino: int) -> None:
        path = self.file_of(hash)
        with self._lock:  # a writer replacing the file holds it too
            try:
                if os.stat(path).st_ino != ino:
                    return  # already replaced by a good copy
                os.replace(path, self.quarantine_dir / f"{hash.hex()}.{time.time_ns()}")
            except OSError:
                return

    def has(self, hash: bytes) -> bool:
        """Indexed and its file present (a quarantined block is not "had": fetch it again)."""
        rows = self._query("SELECT 1 FROM blocks WHERE hash = ?", (_check(hash),))
        return bool(rows) and self.file_of(hash).exists()

    def size_of(self, hash: bytes) -> int:
        rows = self._query("SELECT size FROM blocks WHERE hash = ?", (_check(hash),))
        if not rows:
            raise NotFound(f"block {hash.hex()} is not stored")
        return _int(rows[0][0])

    def kind_of(self, hash: bytes) -> str:
        rows = self._query("SELECT kind FROM blocks WHERE hash = ?", (_check(hash),))
        if not rows:
            raise NotFound(f"block {hash.hex()} is not stored")
        return str(rows[0][0])

    def refs(self, hash: bytes) -> int:
        """Live parents plus pins (what keeps the block from gc)."""
        rows = self._query("SELECT refs FROM blocks WHERE hash = ?", (_check(hash),))
        if not rows:
            raise NotFound(f"block {hash.hex()} is not stored")
        return _int(rows[0][0])

    def children(self, hash: bytes) -> list[bytes]:
        return [
            bytes(r[0])
            for r in self._query("SELECT child FROM links WHERE parent = ?", (_check(hash),))
        ]

    def hashes(self) -> Iterator[bytes]:
        """Every indexed hash, in hash order (read in pages, so a million rows stay cheap)."""
        last = b""
        while True:
            rows = self._query(
                "SELECT hash FROM blocks WHERE hash > ? ORDER BY hash LIMIT 1000", (last,)
            )
            if not rows:
                return
            for (h,) in rows:
                yield bytes(h)
            last = bytes(rows[-1][0])

    # --- pins and roots ---------------------------------------------------------------

    def _add_ref(self, hash: bytes, delta: int) -> None:
        row = self._w.execute("SELECT refs FROM blocks WHERE hash = ?", (_check(hash),)).fetchone()
        if row is None:
            raise NotFound(f"block {hash.hex()} is not stored")
        if row[0] + delta < 0:
            raise StorageError(f"block {hash.hex()} is not pinned")
        self._w.execute("UPDATE blocks SET refs = refs + ? WHERE hash = ?", (delta, hash))

    def pin(self, hash: bytes) -> None:
        with self.transaction():
            self._add_ref(hash, 1)

    def unpin(self, hash: bytes) -> None:
        with self.transaction():
            self._add_ref(hash, -1)

    def set_root(self, name: str, hash: bytes, revision: int) -> None:
        """Point root ``name`` at ``hash`` in one transaction: pin the new, unpin the old.
        ``revision`` must exceed the current one (:class:`StaleRoot` otherwise), so a root
        never moves backwards."""
        with self.transaction():
            old = self._w.execute(
                "SELECT hash, revision FROM roots WHERE name = ?", (name,)
            ).fetchone()
            if old is not None and revision <= old[1]:
                raise StaleRoot(f"root {name!r} is at revision {old[1]}, not below {revision}")
            self._add_ref(hash, 1)
            if old is not None:
                self._add_ref(bytes(old[0]), -1)
            self._w.execute(
                "INSERT OR REPLACE INTO roots (name, hash, revision) VALUES (?, ?, ?)",
                (name, hash, revision),
            )

    def root(self, name: str) -> tuple[bytes, int] | None:
        """``(hash, revision)`` of root ``name``, or None."""
        rows = self._query("SELECT hash, revision FROM roots WHERE name = ?", (name,))
        if not rows:
            return None
        return bytes(rows[0][0]), int(rows[0][1])

    def roots(self) -> dict[str, tuple[bytes, int]]:
        rows = self._query("SELECT name, hash, revision FROM roots ORDER BY name")
        return {str(n): (bytes(h), int(r)) for n, h, r in rows}

    def delete_root(self, name: str) -> None:
        """Forget root ``name`` and unpin what it named (gc may then take it)."""
        with self.transaction():
            old = self._w.execute("SELECT hash FROM roots WHERE name = ?", (name,)).fetchone()
            if old is None:
                raise NotFound(f"no root named {name!r}")
            self._add_ref(bytes(old[0]), -1)
            self._w.execute("DELETE FROM roots WHERE name = ?", (name,))

    # --- maintenance ------------------------------------------------------------------

    def gc(self, grace: float = 3600.0) -> GcReport:
        """Delete unreferenced blocks older than ``grace`` seconds, cascading to children
        that lose their last reference, then files the index does not name (a crash between
        a file's rename and its row's commit), stale temp files and old quarantined files."""
        blocks = freed = 0
        with self._lock:
            if self._depth:  # its files would go before the outer commit
                raise StorageError("gc cannot run inside a transaction")
            cutoff = time.time() - grace
            while True:
                doomed: list[tuple[bytes, int]] = []
                with self.transaction():
                    rows = self._w.execute(
                        "SELECT hash, size FROM blocks WHERE refs = 0 AND created <= ? LIMIT 500",
                        (cutoff,),
                    ).fetchall()
                    for h, size in rows:
                        h = bytes(h)
                        self._w.execute(
                            "UPDATE blocks SET refs = refs - 1 WHERE hash IN"
                            " (SELECT child FROM links WHERE parent = ?)",
                            (h,),
                        )
                        self._w.execute("DELETE FROM links WHERE parent = ?", (h,))
                        self._w.execute("DELETE FROM blocks WHERE hash = ?", (h,))
                        doomed.append((h, int(size)))
                if not doomed:
                    break
                # Files go after the commit: a crash here leaves orphans, never rows without files.
                for h, size in doomed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.file_of(h))
                    blocks += 1
                    freed += size
            orphans, temps = self._sweep_files(cutoff)
            quarantined = 0
            for p in self.quarantine_dir.iterdir():
                with contextlib.suppress(OSError):
                    if p.stat().st_mtime <= cutoff:
                        p.unlink()
                        quarantined += 1
        return GcReport(blocks, freed, orphans, temps, quarantined)

    def _sweep_files(self, cutoff: float) -> tuple[int, int]:
        orphans = temps = 0
        for sub in sorted(self.blocks_dir.iterdir()):
            if not sub.is_dir():
                continue
            names = os.listdir(sub)
            known: set[bytes] = set()
            candidates = [n for n in names if len(n) == 2 * HASH_SIZE and set(n) <= _HEX]
            if candidates:
                prefix = bytes.fromhex(sub.name) if len(sub.name) == 2 else b""
                rows = self._w.execute(
                    "SELECT hash FROM blocks WHERE hash >= ? AND hash < ?",
                    (prefix, prefix + b"\xff" * HASH_SIZE),
                ).fetchall()
                known = {bytes(r[0]) for r in rows}
            for name in names:
                path = sub / name
                try:
                    old = path.stat().st_mtime <= cutoff
                except FileNotFoundError:
                    continue
                if name.startswith(".") and name.endswith(_TMP_SUFFIX):
                    if old:
                        with contextlib.suppress(FileNotFoundError):
                            path.unlink()
                        temps += 1
                elif name in candidates and bytes.fromhex(name) not in known and old:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    orphans += 1
        return orphans, temps

    def verify(self) -> VerifyReport:
        """Re-hash every indexed block; corrupt ones are quarantined (and listed)."""
        checked = 0
        corrupt: list[bytes] = []
        missing: list[bytes] = []
        for h in self.hashes():
            checked += 1
            try:
                self.get(h)
            except CorruptBlock:
                corrupt.append(h)
            except NotFound:
                missing.append(h)
        return VerifyReport(checked, corrupt, missing)

    def stats(self) -> StoreStats:
        ((n, size),) = self._query("SELECT count(*), coalesce(sum(size), 0) FROM blocks")
        ((roots,),) = self._query("SELECT count(*) FROM roots")
        ((pinned,),) = self._query("SELECT count(*) FROM blocks WHERE refs > 0")
        return StoreStats(int(n), int(size), int(roots), int(pinned))
