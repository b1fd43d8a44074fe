"""The vector index (HNSW for recent vectors, IVF for the bulk): as good as exact search across
a migration, deletes that stay deleted in both parts and across migrations, snapshots that
restore the same index even when taken mid-migration, and input it refuses."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import faiss
import numpy as np
import pytest

from fabstir_node.vectors import IndexParams, VectorIndex

D = 128


def clustered(n: int, seed: int, centres: int = 400, spread: float = 1.5) -> np.ndarray:
    """Points around shared cluster centres (seed 0), L2-normalised; the clusters overlap
    enough that an approximate search can miss (exact recall is not a given)."""
    middle = np.random.default_rng(0).standard_normal((centres, D))
    rng = np.random.default_rng(seed)
    points = middle[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, D))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def build(data: np.ndarray, migrate_at: int, chunk: int = 2_000) -> VectorIndex:
    """Added in chunks and migrated whenever it asks, as the node does; ids are row numbers."""
    index = VectorIndex(D, IndexParams(migrate_at=migrate_at))
    for at in range(0, len(data), chunk):
        rows = data[at : at + chunk]
        index.add(np.arange(at, at + len(rows)), rows)
        if index.needs_migration:
            index.migrate()
    return index


def found(index: VectorIndex, queries: np.ndarray, k: int = 10) -> set[int]:
    return set(index.search(queries, k)[1].ravel().tolist()) - {-1}


class Gate:
    """The index's lock, made to stop a migration before the ``before``-th time the method
    ``where`` takes it, until :meth:`open`: a migration held at a chosen point, no sleeps."""

    def __init__(self, index: VectorIndex, where: str, before: int) -> None:
        self.lock, self.where, self.before, self.taken = index._lock, where, before, 0
        self.thread: threading.Thread | None = None
        self.paused, self.go = threading.Event(), threading.Event()
        index._lock = self  # type: ignore[assignment]

    def __enter__(self) -> Any:
        mine = threading.current_thread() is self.thread
        if mine and sys._getframe(1).f_code.co_name == self.where:
            self.taken += 1
            if self.taken == self.before:
                self.paused.set()
                assert self.go.wait(60)
        return self.lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self.lock.__exit__(*exc)

    def run(self, work: Callable[[], None]) -> None:
        self.thread = threading.Thread(target=work, daemon=True)
        self.thread.start()
        assert self.paused.wait(60)

    def open(self) -> None:
        self.go.set()
        assert self.thread is not None
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One faiss thread: a graph built the same way each run, and no OpenMP threads spinning
    against each other on a busy machine (small sizes gain nothing from more)."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(30_000, 1)


@pytest.fixture(scope="module")
def big(data: np.ndarray) -> VectorIndex:
    """30k vectors: migrated at 12k (a new IVF) and 24k (added to it), 6k left in HNSW."""
    return build(data, migrate_at=12_000)


def test_recall_at_10_against_exact_search_across_a_migration(
    data: np.ndarray, big: VectorIndex
) -> None:
    """The answer the node gets must be (nearly) the exact one wherever the vectors live."""
    assert big.bulk.ntotal == 24_000 and big.recent.ntotal == 6_000
    queries = clustered(200, 2)
    exact = np.argsort(-(queries @ data.T), axis=1)[:, :10]
    _, ids = big.search(queries, 10)
    recall = np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, ids, strict=True)])
    assert recall >= 0.95
    scores, _ = big.search(queries, 10)  # inner products, best first
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_deleted_ids_never_come_back_from_either_part(data: np.ndarray) -> None:
    """HNSW cannot delete (tombstones), the IVF can: neither may return a deleted id, before,
    during or after the migrations that follow."""
    index = build(data[:6_000], migrate_at=4_000)  # 4,000 in the IVF, 2,000 in HNSW
    gone = list(range(3_000, 5_000, 2))  # half of them in each part
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0  # already gone: nothing to count
    queries = data[gone]  # each deleted vector's nearest neighbour is itself
    assert not found(index, queries) & set(gone)
    index.migrate()  # tombstones dropped with the HNSW vectors they hid
    assert not found(index, queries) & set(gone)
    index.add(np.arange(6_000, 14_000), data[6_000:14_000])
    index.migrate()  # and the next migration into the same IVF
    assert not found(index, queries) & set(gone)
    assert len(index) == 14_000 - len(gone)
    assert all(i not in index for i in gone) and 3_001 in index


def test_deletes_during_a_migration_stay_deleted(data: np.ndarray) -> None:
    """The cache deletes while a background migration runs, on both of its paths: a new IVF
    built outside the lock, and rows added to the IVF chunk by chunk."""
    rebuilt = build(data[:2_000], migrate_at=2_000)  # an IVF trained on 2,000
    rebuilt.add(np.arange(2_000, 18_000), data[2_000:18_000])  # > 8x: a new IVF
    gate = Gate(rebuilt, "_rebuild", before=2)  # the new IVF built, not yet swapped in
    gate.run(rebuilt.migrate)
    gone = [*range(0, 2_000, 40), *range(2_000, 18_000, 40)]  # old IVF and moving graph
    rebuilt.remove(gone)
    assert not found(rebuilt, data[gone]) & set(gone)
    gate.open()
    assert rebuilt.bulk.ntotal == 18_000 - len(gone)
    assert not found(rebuilt, data[gone]) & set(gone)

    chunked = build(data[:8_000], migrate_at=8_000)  # an IVF of 8,000
    chunked.add(np.arange(8_000, 16_000), data[8_000:16_000])  # added in 2 chunks
    gate = Gate(chunked, "migrate", before=3)  # after the first chunk, before the second
    gate.run(chunked.migrate)
    assert 8_000 < chunked.bulk.ntotal < 16_000
    gone = list(range(8_000, 16_000, 40))  # some already in the IVF, some not yet
    chunked.remove(gone)
    gate.open()
    assert chunked.bulk.ntotal == 16_000 - len(gone) and chunked.recent.ntotal == 0
    assert not found(chunked, data[gone]) & set(gone)


def test_a_deleted_id_added_again_is_its_new_vector(data: np.ndarray) -> None:
    """A restarted cache reuses the ids of deleted entries: the old vector (still in an HNSW
    graph) must not answer for the id, nor hide the new one."""
    index = build(data[:3_000], migrate_at=2_000)  # 2,000 in the IVF, 1,000 in HNSW
    reused = [10, 2_500]  # one from each part
    index.remove(reused)
    index = VectorIndex.restore(index.snapshot())  # the tombstone survives a restart
    index.add(np.array(reused), data[[20_000, 20_001]])
    assert len(index) == 3_000
    _, ids = index.search(data[[20_000, 20_001]], 1)
    assert ids[:, 0].tolist() == reused
    _, ids = index.search(data[reused], 10)
    assert not set(ids.ravel().tolist()) & set(reused)  # not by their old vectors
    index.migrate()
    _, ids = index.search(data[[20_000, 20_001]], 1)
    assert ids[:, 0].tolist() == reused and index.bulk.ntotal == 3_000


def test_a_migration_of_almost_only_deleted_vectors(data: np.ndarray) -> None:
    """Many deletes ask for a migration: the few survivors are fewer than the IVF's lists."""
    index = VectorIndex(D)
    index.add(np.arange(2_000), data[:2_000])
    index.remove(range(1_995))
    assert index.needs_migration
    index.migrate()
    assert not index.needs_migration and index.bulk.ntotal == 5
    _, ids = index.search(data[1_995:2_000], 1)
    assert ids[:, 0].tolist() == list(range(1_995, 2_000))


def test_a_snapshot_restores_the_same_results_and_length(
    data: np.ndarray, big: VectorIndex
) -> None:
    """A restarted node searches exactly as before it stopped, tombstones included."""
    index = build(data[:10_000], migrate_at=6_000)  # 6,000 in the IVF, 4,000 in HNSW
    index.remove([1, 2, 7_000, 9_999])
    queries = clustered(100, 3)
    for original in (index, big):
        restored = VectorIndex.restore(original.snapshot())
        assert len(restored) == len(original)
        before, after = original.search(queries, 10), restored.search(queries, 10)
        assert np.array_equal(before[1], after[1])
        assert np.allclose(before[0], after[0])
    with pytest.raises(ValueError, match="format"):
        VectorIndex.restore({**index.snapshot(), "meta": b"\xa1fformat\x02"})


@pytest.mark.parametrize(
    ("ivf", "n", "where", "before"),
    [(2_000, 18_000, "_rebuild", 2), (8_000, 16_000, "migrate", 3)],
    ids=["new-ivf-built", "between-chunks"],
)
def test_a_snapshot_during_a_migration_restores_every_vector(
    data: np.ndarray, ivf: int, n: int, where: str, before: int
) -> None:
    """The cache saves while it migrates: every vector must be in the snapshot, once."""
    index = build(data[:ivf], migrate_at=ivf)
    index.add(np.arange(ivf, n), data[ivf:n])  # to move: into a new IVF, or chunk by chunk
    gate = Gate(index, where, before)
    gate.run(index.migrate)
    assert (index.bulk.ntotal > ivf) == (where == "migrate")  # some rows moved, or none yet
    index.add(np.arange(30_000, 30_100), clustered(100, 4))  # while the vectors move
    index.remove([0, n - 1])
    files = index.snapshot()
    gate.open()
    restored = VectorIndex.restore(files)
    assert len(restored) == n + 100 - 2
    restored.migrate()  # a vector saved twice (HNSW and IVF) would now be in the IVF twice
    assert restored.bulk.ntotal == len(restored) and restored.recent.ntotal == 0
    sample = [*range(1, n - 1, 97), n - 2, 30_050]
    assert found(restored, np.concatenate([data, clustered(100, 4)])[sample]) >= set(sample)
    assert not found(restored, data[[0, n - 1]]) & {0, n - 1}


def test_an_id_added_twice_is_refused() -> None:
    """Two vectors under one id would make a result ambiguous; -1 means 'no result'."""
    index = VectorIndex(D)
    vectors = clustered(3, 5)
    index.add(np.arange(3), vectors)
    with pytest.raises(ValueError, match="already"):
        index.add(np.array([7, 2]), vectors[:2])
    with pytest.raises(ValueError, match="distinct"):
        index.add(np.array([8, 8]), vectors[:2])
    with pytest.raises(ValueError, match=">= 0"):
        index.add(np.array([-1]), vectors[:1])
    assert len(index) == 3 and 7 not in index


def test_a_wrong_dimension_is_refused() -> None:
    index = VectorIndex(D)
    with pytest.raises(ValueError, match=f"rows of {D}"):
        index.add(np.array([1]), np.zeros((1, D + 1), np.float32))
    with pytest.raises(ValueError, match=f"rows of {D}"):
        index.search(np.zeros(D, np.float32), 1)  # one query is a row, not a vector
    with pytest.raises(ValueError, match="one id per vector"):
        index.add(np.array([1, 2]), clustered(1, 6))
    assert len(index) == 0


def test_fewer_vectors_than_k_give_minus_one_ids() -> None:
    """An empty or small index fills the rest of the k slots with id -1 and score -inf."""
    index = VectorIndex(D)
    vectors = clustered(3, 7)
    scores, ids = index.search(vectors[:1], 5)
    assert ids.tolist() == [[-1] * 5] and np.isneginf(scores).all()
    index.add(np.arange(3), vectors)
    scores, ids = index.search(vectors[:1], 5)
    assert ids[0, 0] == 0 and set(ids[0, :3].tolist()) == {0, 1, 2}
    assert ids[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()
    assert scores[0, 0] == pytest.approx(1.0, abs=1e-5)
