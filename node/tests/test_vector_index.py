"""The vector index: as good as exact search across a migration from HNSW to IVF, deletes
that stay deleted, and a snapshot that restores the same index."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fabstir_node.vectors import IndexParams, VectorIndex

D = 384


def clustered(n: int, seed: int, centres: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, D)).astype(np.float32)
    points = middle[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, D))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return clustered(30_000, 1)


def built(data: np.ndarray, migrate_at: int = 10_000) -> VectorIndex:
    index = VectorIndex(D, IndexParams(migrate_at=migrate_at))
    for at in range(0, len(data), 5_000):
        chunk = data[at : at + 5_000]
        index.add(np.arange(at, at + len(chunk)), chunk)
        if index.needs_migration:
            index.migrate()
    return index


def recall_at_10(index: VectorIndex, data: np.ndarray, queries: np.ndarray) -> float:
    alive = np.array(sorted(index._ids))
    exact = alive[np.argsort(-(queries @ data[alive].T), axis=1)[:, :10]]
    _, found = index.search(queries, 10)
    return float(np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found, strict=True)]))


def test_recall_against_exact_search_across_both_parts(data: np.ndarray) -> None:
    index = built(data[:27_500])
    assert index.bulk is not None and index.bulk.ntotal == 20_000  # two migrations to the IVF
    assert index.recent.ntotal == 7_500  # and the last ones wait in the HNSW graph
    assert recall_at_10(index, data[:27_500], clustered(200, 2)) >= 0.95


def test_deleted_ids_never_come_back(data: np.ndarray) -> None:
    index = built(data[:20_000], migrate_at=8_000)
    gone = list(range(0, 20_000, 3))  # from both parts
    assert index.remove(gone) == len(gone)
    assert index.remove(gone) == 0
    queries = data[gone[:50]]  # each deleted vector's nearest neighbour is itself
    _, found = index.search(queries, 10)
    assert not set(found.ravel().tolist()) & set(gone)
    index.migrate()  # tombstones in the HNSW graph are dropped, not revived
    _, found = index.search(queries, 10)
    assert not set(found.ravel().tolist()) & set(gone)
    assert len(index) == 20_000 - len(gone)


def test_a_snapshot_restores_the_same_index(data: np.ndarray) -> None:
    index = built(data[:15_000], migrate_at=6_000)
    index.remove([1, 2, 14_999])
    queries = clustered(50, 3)
    restored = VectorIndex.restore(index.snapshot())
    assert len(restored) == len(index)
    assert np.array_equal(restored.search(queries, 10)[1], index.search(queries, 10)[1])


def test_a_snapshot_during_a_migration_keeps_every_vector(data: np.ndarray) -> None:
    index = built(data[:9_000], migrate_at=1_000_000)
    moving = threading.Event()
    release = threading.Event()
    original = index._rebuild

    def slow_rebuild(*args: object) -> None:
        moving.set()
        assert release.wait(60)
        original(*args)  # type: ignore[arg-type]

    index._rebuild = slow_rebuild  # type: ignore[method-assign]  # pause mid-migration
    worker = threading.Thread(target=index.migrate)
    worker.start()
    assert moving.wait(60)
    index.add(np.arange(9_000, 9_100), data[9_000:9_100])  # while the vectors move
    snapshot = index.snapshot()
    release.set()
    worker.join(60)
    restored = VectorIndex.restore(snapshot)
    assert len(restored) == 9_100
    _, found = restored.search(data[[5, 9_050]], 1)
    assert found[:, 0].tolist() == [5, 9_050]


def test_bad_input_is_refused() -> None:
    index = VectorIndex(D)
    vectors = clustered(3, 4)
    index.add(np.arange(3), vectors)
    with pytest.raises(ValueError, match="already"):
        index.add(np.array([2]), vectors[:1])
    with pytest.raises(ValueError, match="rows of 384"):
        index.add(np.array([9]), np.zeros((1, 5), np.float32))
    scores, ids = index.search(vectors[:1], 5)
    assert ids[0, 0] == 0 and set(ids[0, :3].tolist()) == {0, 1, 2}
    assert ids[0, 3:].tolist() == [-1, -1] and np.isinf(scores[0, 3:]).all()
