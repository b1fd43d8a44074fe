"""The local block store on real files: idempotent puts, verify-on-read with quarantine,
reference counting with cascading gc, atomic roots, threads, and a writer killed with -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fabstir_sdk.storage.blobs import blake3_256
from fabstir_sdk.storage.blockstore import MAX_BLOCK, BlockStore
from fabstir_sdk.storage.errors import CorruptBlock, NotFound, StaleRoot, StorageError, TooLarge


@pytest.fixture
def store(tmp_path: Path) -> BlockStore:
    s = BlockStore(tmp_path / "store")
    yield s  # type: ignore[misc]
    s.close()


def test_put_get_is_idempotent_and_laid_out_by_hash(store: BlockStore) -> None:
    h = store.put(b"hello")
    assert h == blake3_256(b"hello")
    assert store.put(b"hello") == h
    assert store.get(h) == b"hello"
    assert store.has(h) and store.size_of(h) == 5 and store.kind_of(h) == "raw"
    assert (store.path / "blocks" / h.hex()[:2] / h.hex()).read_bytes() == b"hello"
    assert store.stats().blocks == 1
    with pytest.raises(NotFound):
        store.get(blake3_256(b"absent"))
    assert not store.has(blake3_256(b"absent"))


def test_blocks_are_capped_at_one_mib(store: BlockStore) -> None:
    store.put(b"x" * MAX_BLOCK)
    with pytest.raises(TooLarge):
        store.put(b"x" * (MAX_BLOCK + 1))


def test_put_verified_refuses_bytes_that_do_not_hash_to_the_name(store: BlockStore) -> None:
    h = blake3_256(b"wanted")
    with pytest.raises(CorruptBlock):
        store.put_verified(h, b"unwanted")
    assert not store.has(h)
    store.put_verified(h, b"wanted")
    assert store.get(h) == b"wanted"


def test_corrupt_file_is_detected_quarantined_and_refetchable(store: BlockStore) -> None:
    h = store.put(b"precious bytes")
    store.file_of(h).write_bytes(b"precious bytez")
    with pytest.raises(CorruptBlock):
        store.get(h)
    assert not store.file_of(h).exists()
    assert [p.read_bytes() for p in (store.path / "quarantine").iterdir()] == [b"precious bytez"]
    assert not store.has(h)  # so the exchange fetches it again
    with pytest.raises(NotFound):
        store.get(h)
    store.put_verified(h, b"precious bytes")
    assert store.get(h) == b"precious bytes"


def test_verify_reports_corrupt_and_missing(store: BlockStore) -> None:
    a, b, c = store.put(b"a"), store.put(b"b"), store.put(b"c")
    store.file_of(b).write_bytes(b"B")
    store.file_of(c).unlink()
    report = store.verify()
    assert report.checked == 3 and not report.ok
    assert report.corrupt == [b] and report.missing == [c]
    assert store.get(a) == b"a"


def test_children_must_exist_and_count_once(store: BlockStore) -> None:
    leaf = store.put(b"leaf")
    with pytest.raises(NotFound):
        store.put(b"parent", "dir", [blake3_256(b"nowhere")])
    p = store.put(b"parent", "dir", [leaf, leaf])
    store.put(b"parent", "dir", [leaf])  # idempotent: no second reference
    assert store.refs(leaf) == 1 and store.children(p) == [leaf]
    assert store.kind_of(p) == "dir"


def test_gc_cascades_and_respects_roots_pins_and_grace(store: BlockStore) -> None:
    shared = store.put(b"shared")
    only_old = store.put(b"only in old")
    only_new = store.put(b"only in new")
    mid = store.put(b"mid", "dir", [only_old])
    old = store.put(b"old root", "dir", [shared, mid])
    new = store.put(b"new root", "dir", [shared, only_new])
    pinned = store.put(b"pinned")
    store.pin(pinned)
    loose = store.put(b"loose")

    store.set_root("main", old, 1)
    assert store.gc(grace=0).blocks == 3  # loose, the unrooted new root, then its only_new
    store.put(b"new root", "dir", [shared, store.put(b"only in new")])  # put again

    assert store.gc(grace=3600).blocks == 0  # everything is young
    store.set_root("main", new, 2)
    assert store.refs(old) == 0 and store.refs(new) == 1
    report = store.gc(grace=0)
    assert report.blocks == 3  # old, mid, only_old: the cascade
    assert report.bytes == len(b"old root") + len(b"mid") + len(b"only in old")
    for h in (old, mid, only_old, loose):
        assert not store.has(h)
        assert not store.file_of(h).exists()
    for h in (new, shared, only_new, pinned):
        assert store.get(h)
    assert only_new == blake3_256(b"only in new") and loose == blake3_256(b"loose")

    store.unpin(pinned)
    with pytest.raises(StorageError):
        store.unpin(pinned)
    assert store.gc(grace=0).blocks == 1


def test_set_root_is_monotonic_and_atomic(store: BlockStore) -> None:
    a, b = store.put(b"a"), store.put(b"b")
    store.set_root("main", a, 5)
    with pytest.raises(StaleRoot):
        store.set_root("main", b, 5)
    assert store.root("main") == (a, 5) and store.refs(b) == 0
    with pytest.raises(NotFound):  # unknown block: nothing changes
        store.set_root("main", blake3_256(b"zz"), 6)
    assert store.root("main") == (a, 5) and store.refs(a) == 1
    store.set_root("main", b, 6)
    assert store.roots() == {"main": (b, 6)}
    assert store.refs(a) == 0 and store.refs(b) == 1
    store.delete_root("main")
    assert store.root("main") is None and store.refs(b) == 0


def test_a_failed_transaction_indexes_nothing(store: BlockStore) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        h = store.put(b"in a batch")
        assert store.has(h)  # the batch sees its own writes
        raise RuntimeError("abort")
    assert not store.has(h)
    assert store.gc(grace=0).orphan_files == 1  # the file left behind


def test_gc_removes_orphan_and_temp_files_only_after_grace(store: BlockStore) -> None:
    h = blake3_256(b"orphan")
    store.file_of(h).write_bytes(b"orphan")
    tmp = store.file_of(h).with_name(f".{h.hex()}.abc.tmp")
    tmp.write_bytes(b"orph")
    assert store.gc(grace=3600).orphan_files == 0
    report = store.gc(grace=0)
    assert (report.orphan_files, report.temp_files) == (1, 1)
    assert not tmp.exists() and not store.file_of(h).exists()


def test_batch_of_small_puts_is_one_commit_and_fast(store: BlockStore) -> None:
    data = [os.urandom(64) + i.to_bytes(4, "big") for i in range(2000)]
    start = time.perf_counter()
    with store.transaction():
        hashes = [store.put(d) for d in data]
    elapsed = time.perf_counter() - start
    assert store.stats().blocks == 2000
    assert all(store.get(h) == d for h, d in zip(hashes[::97], data[::97], strict=True))
    assert elapsed < 10, elapsed  # ~0.1 s here; fsync per block would be seconds


def test_readers_in_threads_while_one_thread_writes(store: BlockStore) -> None:
    first = [store.put(os.urandom(1024)) for _ in range(50)]
    for h in first:
        store.pin(h)  # or the gc below takes them
    stop = threading.Event()
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                for h in first:
                    assert len(store.get(h)) == 1024
                    assert store.has(h)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(20):
        with store.transaction():
            kids = [store.put(os.urandom(512)) for _ in range(10)]
            store.set_root("main", store.put(b"root%d" % i, "dir", kids), i + 1)
    store.gc(grace=0)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert store.verify().ok


def test_get_latency(store: BlockStore) -> None:
    small = [store.put(os.urandom(1024)) for _ in range(200)]
    big = [store.put(os.urandom(MAX_BLOCK)) for _ in range(10)]
    for hashes in (small, big * 10):
        times = []
        for h in hashes:
            t = time.perf_counter()
            store.get(h)
            times.append(time.perf_counter() - t)
        times.sort()
        assert times[int(len(times) * 0.95)] < 0.010


# --- kill -9 ---------------------------------------------------------------------------

WRITER = r"""
import os, random, sys
from fabstir_sdk.storage.blockstore import BlockStore

store = BlockStore(sys.argv[1])
rng = random.Random(int(sys.argv[2]))
previous = []
rev = (store.root("main") or (b"", 0))[1]
out = sys.stdout
while True:
    rev += 1
    batch = rng.random() < 0.5
    leaves = previous[: len(previous) // 2]  # shared with the old root
    def work():
        for _ in range(rng.randint(5, 40)):
            data = os.urandom(rng.choice((100, 4000, 70000)))
            leaves.append(store.put(data))
            out.write("p\n"); out.flush()
        mid = store.put(b"mid" + os.urandom(8), "dir", leaves[::2])
        root = store.put(b"root" + rev.to_bytes(8, "big"), "dir", [mid, *leaves[1::2]])
        store.set_root("main", root, rev)
    if batch:
        with store.transaction():
            work()
    else:
        work()
    out.write(f"r {rev}\n"); out.flush()
    previous = leaves
"""


def _reachable(store: BlockStore) -> set[bytes]:
    seen: set[bytes] = set()
    todo = [h for h, _ in store.roots().values()]
    while todo:
        h = todo.pop()
        if h not in seen:
            seen.add(h)
            todo.extend(store.children(h))
    return seen


def test_writer_killed_with_sigkill_leaves_a_consistent_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rng = random.Random()
    committed = 0
    for attempt in range(4):
        kill_after = rng.randint(1, 300)
        proc = subprocess.Popen(
            [sys.executable, str(script), str(path), str(rng.getrandbits(32))],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        puts = 0
        for line in proc.stdout:  # the condition: this many puts done, wherever that is
            if line.startswith("r "):
                committed = int(line.split()[1])
            else:
                puts += 1
                if puts >= kill_after:
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert proc.returncode == -signal.SIGKILL

        store = BlockStore(path)
        try:
            # Every indexed block has a complete file that verifies.
            report = store.verify()
            assert report.ok, (attempt, report)
            # The root is a complete one, at least as new as the last one reported set.
            root = store.root("main")
            if committed:
                assert root is not None and root[1] >= committed
            reachable = _reachable(store)
            for h in reachable:
                assert store.get(h)
            # gc leaves exactly what the root reaches, and no stray files.
            store.gc(grace=0)
            assert set(store.hashes()) == reachable
            files = {p.name for p in (path / "blocks").glob("*/*")}
            assert files == {h.hex() for h in reachable}
        finally:
            store.close()
