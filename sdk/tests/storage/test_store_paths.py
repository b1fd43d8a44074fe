"""The path API on a real store: files and directories, batches, HAMT sharding across the
1000-entry boundary both ways, cursors that survive concurrent inserts, garbage collection,
one writer at a time, and a writer killed with SIGKILL mid-batch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fabstir_devtools.wait import wait_until
from fabstir_sdk.storage import dirv1
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.storage.tree import DirEntry, FileEntry, Store


def sharded(store: Store, path: str) -> bool:
    entry = store.stat(path)
    assert isinstance(entry, DirEntry)
    return dirv1.decode(store.blocks.get(entry.hash)).sharding is not None


def names(store: Store, path: str, page: int = 300) -> list[str]:
    out, cursor = [], None
    while True:
        listed = store.list(path, cursor, page)
        out += [e.name for e in listed.entries]
        if listed.cursor is None:
            return out
        cursor = listed.cursor


def test_files_and_directories(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        store.put("/results/1/000000000000", b"first")
        store.put("/models/x/tokenizer.gguf", os.urandom(3 << 20))
        assert store.get("/results/1/000000000000") == b"first"
        assert isinstance(store.stat("/results/1"), DirEntry)
        assert isinstance(store.stat("/results/1/000000000000"), FileEntry)
        assert sorted(names(store, "/")) == ["models", "results"]
        walked = sorted(p for p, _ in store.walk("/"))
        assert walked == ["/models/x/tokenizer.gguf", "/results/1/000000000000"]
        with pytest.raises(StorageError):
            store.put("/results/1", b"a file where a directory is")
        with pytest.raises(StorageError):
            store.put("/results/1/000000000000/deeper", b"below a file")
        with pytest.raises(NotFound):
            store.get("/results/2/000000000000")
        assert store.delete("/results") and not store.exists("/results/1/000000000000")
        assert not store.delete("/results")
        revision = store.revision
    with Store(tmp_path / "s") as again:  # everything is on disk
        assert again.revision == revision and not again.exists("/results")
        assert len(again.get("/models/x/tokenizer.gguf")) == 3 << 20


def test_a_failed_batch_changes_nothing_and_a_batch_is_one_root(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        store.put("/a", b"1")
        before = (store.root, store.revision)
        with pytest.raises(RuntimeError), store.batch():
            store.put("/b", b"2")
            raise RuntimeError("the writer changed its mind")
        assert (store.root, store.revision) == before and not store.exists("/b")
        with store.batch():
            for i in range(50):
                store.put(f"/many/{i}", str(i).encode())
        assert store.revision == before[1] + 1 and len(names(store, "/many")) == 50


def test_hamt_across_the_boundary_both_ways_and_independent_of_order(tmp_path: Path) -> None:
    entries = [f"entry-{i}" for i in range(1200)]
    with Store(tmp_path / "a") as a, Store(tmp_path / "b") as b:
        with a.batch():
            for name in entries[:1000]:
                a.put(f"/d/{name}", name.encode(), compress=None)
        assert not sharded(a, "/d")
        with a.batch():
            for name in entries[1000:]:
                a.put(f"/d/{name}", name.encode(), compress=None)
        assert sharded(a, "/d")
        assert all(a.get(f"/d/{n}") == n.encode() for n in random.sample(entries, 100))
        assert sorted(names(a, "/d")) == sorted(entries)

        shuffled = entries[:]
        random.shuffle(shuffled)
        with b.batch():
            for name in shuffled:
                b.put(f"/d/{name}", name.encode(), compress=None)
        # Any insertion order gives the same listing (the HAMT's shape is canonical).
        assert sharded(b, "/d") and names(a, "/d") == names(b, "/d")

        with a.batch():
            for name in entries[:250]:
                assert a.delete(f"/d/{name}")
        assert not sharded(a, "/d")  # 950 left: flat again
        assert sorted(names(a, "/d")) == sorted(entries[250:])
        assert a.get(f"/d/{entries[-1]}") == entries[-1].encode()


@pytest.mark.parametrize("start", [300, 950])  # flat, and crossing into a HAMT meanwhile
def test_a_cursor_survives_concurrent_inserts(tmp_path: Path, start: int) -> None:
    with Store(tmp_path / "s") as store:
        with store.batch():
            for i in range(start):
                store.put(f"/d/old-{i}", b"x", compress=None)
        first = store.list("/d", limit=100)
        with store.batch():
            for i in range(500):
                store.put(f"/d/new-{i}", b"y", compress=None)
        seen = [e.name for e in first.entries]
        cursor = first.cursor
        while cursor is not None:
            page = store.list("/d", cursor, 100)
            seen += [e.name for e in page.entries]
            cursor = page.cursor
        old = [n for n in seen if n.startswith("old-")]
        assert sorted(old) == sorted(f"old-{i}" for i in range(start))  # each exactly once
        assert len(seen) == len(set(seen))
        with pytest.raises(StorageError):
            store.list("/d", "not-a-cursor")


def test_gc_frees_old_versions_and_the_tree_still_reads(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        for i in range(5):
            store.put("/file", os.urandom(2 << 20), compress=None)
            store.put(f"/keep/{i}", b"kept")
        before = store.blocks.stats().blocks
        report = store.blocks.gc(grace=0)
        assert report.blocks > 0 and store.blocks.stats().blocks == before - report.blocks
        assert len(store.get("/file")) == 2 << 20 and store.get("/keep/4") == b"kept"
        assert store.blocks.verify().ok


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    with Store(tmp_path / "s") as store:
        store.put("/a", b"1")
        with pytest.raises(StorageError, match="another process"):
            Store(tmp_path / "s")
        reader = Store(tmp_path / "s", read_only=True)
        assert reader.get("/a") == b"1"
        store.put("/b", b"2")
        reader.refresh()
        assert reader.get("/b") == b"2"
        reader.close()


WRITER = textwrap.dedent(
    """
    import os, sys
    from fabstir_sdk.storage.tree import Store
    store = Store(sys.argv[1])
    progress = sys.argv[2]
    n = 0
    while True:
        with store.batch():
            for i in range(40):
                store.put(f"/batch{n % 7}/{i}", os.urandom(1000 + (n * 40 + i) % 3000))
            store.put(f"/big{n % 3}", os.urandom((1 << 20) + n), compress=None)
        n += 1
        with open(progress, "w") as f:
            f.write(str(n))
    """
)


@pytest.mark.parametrize("kill_after", [1, 3, 6])
def test_a_writer_killed_mid_batch_leaves_a_whole_tree(tmp_path: Path, kill_after: int) -> None:
    path, progress = tmp_path / "s", tmp_path / "progress"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(progress)])
    try:
        wait_until(
            lambda: progress.exists()
            and progress.read_text().isdigit()
            and int(progress.read_text()) >= kill_after,
            120,
            f"the writer to finish {kill_after} batches",
            interval=0.01,
        )
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    with Store(path) as store:
        assert store.revision >= kill_after
        assert store.blocks.verify().ok  # every indexed block is whole
        files = list(store.walk("/"))
        assert files and all(len(store.get(p)) == e.size for p, e in files)
        store.blocks.gc(grace=0)
        assert all(len(store.get(p)) == e.size for p, e in store.walk("/"))
        assert list(path.rglob("*.tmp")) == []
