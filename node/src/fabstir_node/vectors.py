"""A vector index for cosine search: HNSW for recent entries, IVF for the bulk (faiss).

New vectors go into an HNSW graph (good recall at once, no training) until it holds
``migrate_at`` of them; :meth:`VectorIndex.migrate` (run in the background by the cache) then
moves them into an inverted-file index, whose lists are cheap to search at a million vectors
and which, unlike HNSW, can delete. The IVF is (re)trained on a sample of everything when it
is first built and whenever it has grown eightfold since, so its lists stay balanced.

While a migration runs, searches see the vectors being moved in both places and keep the best
score per id; an id deleted from the HNSW graph (which cannot delete) is a tombstone, skipped
in results and dropped at the next migration (an id deleted and added again is its new vector:
the old one stays in the graph without an id).

Vectors must be L2-normalised: scores are inner products, i.e. cosine similarities.
:meth:`snapshot` and :meth:`restore` persist the whole index, so a restarted node has it
back without computing an embedding.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from fabstir_sdk.storage import cbor

#: Everything in one HNSW graph until it holds this many vectors.
MIGRATE_AT = 20_000
#: Rows added to the IVF per lock hold during a migration (searches run between them).
_CHUNK = 4096
_FORMAT = 1

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class IndexParams:
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nprobe: int = 48
    migrate_at: int = MIGRATE_AT


class VectorIndex:
    def __init__(self, dimensions: int, params: IndexParams | None = None) -> None:
        self.d = dimensions
        self.params = params or IndexParams()
        self._lock = threading.RLock()
        self._migrating = threading.Lock()
        self.recent: Any = self._new_hnsw()
        self._moving: Any = None  # the HNSW graph being moved into the IVF
        self._pending: tuple[Array, Array] | None = None  # its rows not in the IVF yet
        self._removed: set[int] | None = None  # ids deleted while a migration runs
        self.bulk: Any = None
        self._trained_on = 0
        self._tombstones: set[int] = set()  # deleted ids still in an HNSW graph
        self._ids: set[int] = set()

    # ----------------------------------------------------------------- writes

    def add(self, ids: Array, vectors: Array) -> None:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = self._rows(vectors)
        if len(ids) != len(vectors):
            raise ValueError("one id per vector")
        listed = ids.tolist()
        if len(set(listed)) != len(listed) or (len(ids) and ids.min() < 0):
            raise ValueError("ids must be distinct and >= 0")
        with self._lock:
            known = self._ids.intersection(listed)
            if known:
                raise ValueError(f"ids already in the index: {sorted(known)[:5]}")
            revived = self._tombstones.intersection(listed)
            if revived:  # deleted ids added again: their old vectors must not answer for them
                for graph in (self.recent, self._moving):
                    if graph is not None:
                        _forget(graph, revived)
                self._tombstones = self._tombstones - revived
            self.recent.add_with_ids(vectors, ids)
            self._ids.update(listed)

    def remove(self, ids: Array | list[int]) -> int:
        """Delete ``ids`` (unknown ones are ignored); returns how many were there."""
        with self._lock:
            present = self._ids.intersection(int(i) for i in ids)
            if not present:
                return 0
            self._ids -= present
            if self.bulk is not None:
                self.bulk.remove_ids(np.fromiter(present, dtype=np.int64))
            if self._removed is not None:
                self._removed |= present
            # A new set, not changed in place: a search filters with the one it read.
            self._tombstones = self._tombstones | present  # harmless for ids in the IVF
            return len(present)

    @property
    def needs_migration(self) -> bool:
        recent = int(self.recent.ntotal)
        return recent >= self.params.migrate_at or len(self._tombstones) > max(1024, recent // 4)

    def migrate(self) -> None:
        """Move the HNSW graph's vectors into the IVF (blocking; one migration at a time)."""
        with self._migrating:
            with self._lock:
                if self.recent.ntotal == 0:
                    self._tombstones = set()  # only ids deleted from the IVF: nothing to skip
                    return
                moving, self._moving = self.recent, self.recent
                self.recent = self._new_hnsw()
                ids, vectors = _contents(moving)
                keep = np.fromiter(
                    (i >= 0 and i not in self._tombstones for i in ids.tolist()), bool, len(ids)
                )
                ids, vectors = ids[keep], vectors[keep]
                removed: set[int] = set()
                self._pending, self._removed = (ids, vectors), removed
            total = len(ids) + (self.bulk.ntotal if self.bulk is not None else 0)
            if self.bulk is None or total > 8 * self._trained_on:
                if total:
                    self._rebuild(ids, vectors)
            else:
                for at in range(0, len(ids), _CHUNK):
                    with self._lock:
                        rows = slice(at, at + _CHUNK)
                        live = _absent(ids[rows], removed)
                        self.bulk.add_with_ids(vectors[rows][live], ids[rows][live])
                        self._pending = (ids[at + _CHUNK :], vectors[at + _CHUNK :])
            with self._lock:
                self._moving = self._pending = self._removed = None
                alive = faiss.vector_to_array(self.recent.id_map).tolist()
                self._tombstones = self._tombstones.intersection(alive)

    def _rebuild(self, ids: Array, vectors: Array) -> None:
        """A new IVF trained on everything (outside the lock), swapped in at the end."""
        with self._lock:
            old = self.bulk
        if old is not None:
            old_ids, old_vectors = _contents(old, self._lock)  # remove() may run meanwhile
            ids = np.concatenate([old_ids, ids])
            vectors = np.concatenate([old_vectors, vectors])
        nlist = min(len(ids), max(16, min(65536, int(4 * math.sqrt(len(ids))))))
        quantizer = faiss.IndexFlatIP(self.d)
        bulk: Any = faiss.IndexIVFFlat(quantizer, self.d, nlist, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(0).permutation(len(ids))[: 64 * nlist]
        bulk.cp.min_points_per_centroid = 1  # a small index trains on what it has, quietly
        bulk.train(vectors[np.sort(sample)])
        bulk.nprobe = self.params.nprobe
        bulk.add_with_ids(vectors, ids)
        with self._lock:
            if self._removed:  # deleted while we built: delete from the new one too
                bulk.remove_ids(np.fromiter(self._removed, dtype=np.int64))
            self.bulk = bulk
            self._trained_on = len(ids)
            self._pending = None

    # ----------------------------------------------------------------- reads

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, ident: int) -> bool:
        return ident in self._ids

    def ids(self) -> frozenset[int]:
        """Every id in the index."""
        with self._lock:
            return frozenset(self._ids)

    def search(self, queries: Array, k: int) -> tuple[Array, Array]:
        """The ``k`` best (scores, ids) per query row, best first; id -1 where fewer exist."""
        queries = self._rows(queries)
        with self._lock:
            parts = [self.recent] + [p for p in (self._moving, self.bulk) if p is not None]
            extra = min(len(self._tombstones), 256)
            found = [p.search(queries, k + extra) for p in parts if p.ntotal]
            tombstones = self._tombstones
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row in range(len(queries)):
            best: dict[int, float] = {}
            for s, i in found:
                for score, ident in zip(s[row].tolist(), i[row].tolist(), strict=True):
                    if ident >= 0 and ident not in tombstones and score > best.get(ident, -2.0):
                        best[ident] = score
            ranked = sorted(best.items(), key=lambda item: -item[1])[:k]
            for col, (ident, score) in enumerate(ranked):
                ids[row, col], scores[row, col] = ident, score
        return scores, ids

    # ----------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, bytes]:
        """The index as files: ``meta`` (CBOR), ``recent`` and ``bulk`` (faiss's format)."""
        with self._lock:
            recent = self.recent
            if self._moving is not None:  # saved mid-migration: all not in the IVF, as one graph
                recent = self._new_hnsw()
                removed = self._removed or set()
                for ids, vectors in (self._pending or _empty(self.d), _contents(self.recent)):
                    live = (ids >= 0) & _absent(ids, removed)
                    recent.add_with_ids(vectors[live], ids[live])
            meta = {
                "format": _FORMAT,
                "d": self.d,
                "trained_on": self._trained_on,
                "tombstones": sorted(self._tombstones),
            }
            return {
                "meta": cbor.dumps(meta),
                "recent": _serialize(recent),
                "bulk": _serialize(self.bulk) if self.bulk is not None else b"",
            }

    @classmethod
    def restore(cls, files: dict[str, bytes], params: IndexParams | None = None) -> VectorIndex:
        """The index a :meth:`snapshot` saved (raises ValueError on a foreign format)."""
        meta = cbor.loads(files["meta"])
        if meta.get("format") != _FORMAT:
            raise ValueError(f"unknown index format {meta.get('format')!r}")
        index = cls(int(meta["d"]), params)
        index.recent = faiss.deserialize_index(np.frombuffer(files["recent"], np.uint8))
        graph: Any = faiss.downcast_index(index.recent.index)
        graph.hnsw.efSearch = index.params.ef_search
        if files.get("bulk"):
            index.bulk = faiss.deserialize_index(np.frombuffer(files["bulk"], np.uint8))
            index.bulk.nprobe = index.params.nprobe
            index._ids.update(_contents(index.bulk)[0].tolist())
        index._trained_on = int(meta["trained_on"])
        index._tombstones = set(meta["tombstones"])
        recent = faiss.vector_to_array(index.recent.id_map)
        index._ids.update(recent[recent >= 0].tolist())
        index._ids -= index._tombstones
        return index

    # ----------------------------------------------------------------- helpers

    def _new_hnsw(self) -> Any:
        graph = faiss.IndexHNSWFlat(self.d, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.params.ef_construction
        graph.hnsw.efSearch = self.params.ef_search
        return faiss.IndexIDMap2(graph)

    def _rows(self, vectors: Array) -> Array:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.d:
            raise ValueError(f"vectors must be rows of {self.d} floats")
        return vectors


def _serialize(index: Any) -> bytes:
    return bytes(faiss.serialize_index(index))


def _empty(d: int) -> tuple[Array, Array]:
    return np.zeros(0, np.int64), np.zeros((0, d), np.float32)


def _absent(ids: Array, gone: set[int]) -> Array:
    """Which of ``ids`` are not in ``gone`` (a boolean mask)."""
    return np.fromiter((i not in gone for i in ids.tolist()), bool, len(ids))


def _forget(graph: Any, ids: set[int]) -> None:
    """Make ``ids``' vectors in an IDMap2-wrapped graph anonymous (id -1: never a result)."""
    labels = faiss.rev_swig_ptr(graph.id_map.data(), graph.ntotal)
    labels[np.isin(labels, np.fromiter(ids, np.int64, len(ids)))] = -1
    graph.construct_rev_map()


def _contents(index: Any, lock: Any = None) -> tuple[Array, Array]:
    """(ids, vectors) of an IDMap2-wrapped HNSW graph or of an IVF index (read list by list
    under ``lock``, if given, so that each list is read whole)."""
    n = index.ntotal
    if n == 0:
        return _empty(index.d)
    if isinstance(index, faiss.IndexIDMap2):
        ids = faiss.vector_to_array(index.id_map).astype(np.int64)
        return ids, index.index.reconstruct_n(0, n)
    invlists = index.invlists
    ids_parts, vector_parts = [], []
    for list_no in range(index.nlist):
        with lock or contextlib.nullcontext():
            size = invlists.list_size(list_no)
            if not size:
                continue
            ids_parts.append(
                faiss.rev_swig_ptr(invlists.get_ids(list_no), size).astype(np.int64).copy()
            )
            codes = faiss.rev_swig_ptr(invlists.get_codes(list_no), size * index.code_size)
            vector_parts.append(np.frombuffer(bytes(codes), np.float32).reshape(size, index.d))
    if not ids_parts:
        return _empty(index.d)
    return np.concatenate(ids_parts), np.concatenate(vector_parts)
