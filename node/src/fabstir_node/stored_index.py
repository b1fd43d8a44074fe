"""A vector index kept in the node's store beside the items it indexes (cached answers,
documents), each item holding its own vector.

:func:`save_index` writes the index's snapshot (:meth:`~.vectors.VectorIndex.snapshot`) and the
sha256 of the embedding model that made its vectors under a prefix. :func:`load_index` reads it
back and reconciles it with the items (ids no item has are removed, items the snapshot lacks
are added from their stored vectors), so a restart embeds nothing. When the embedding model
changed, every item is embedded again and the index rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np

from fabstir_node.embeddings import Embedder
from fabstir_node.vectors import VectorIndex
from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.errors import StorageError

log = logging.getLogger(__name__)

_PARTS = ("meta", "recent", "bulk")


class IndexStorage(Protocol):
    async def put_many(self, files: dict[str, bytes]) -> None: ...

    def read(self, path: str) -> bytes: ...


class Indexed(Protocol):
    """An item with its vector (float32 bytes), which :func:`load_index` may replace."""

    id: int
    vector: bytes


T = TypeVar("T", bound=Indexed)


def load_index(
    storage: IndexStorage,
    prefix: str,
    embedder: Embedder,
    items: Sequence[T],
    text_of: Callable[[T], str],
) -> VectorIndex:
    """The index saved under ``prefix``, reconciled with ``items`` (blocking)."""
    index = VectorIndex(embedder.dimensions)
    try:
        model = cbor.loads(storage.read(f"{prefix}/model"))
        if model.get("sha256") == embedder.sha256:
            index = VectorIndex.restore({n: storage.read(f"{prefix}/{n}") for n in _PARTS})
        else:  # the stored vectors are another model's too
            log.info("%s: the embedding model changed; embedding it all again", prefix)
            for at in range(0, len(items), 256):
                chunk = items[at : at + 256]
                vectors = embedder.embed_for_search_now([text_of(i) for i in chunk])
                for item, vector in zip(chunk, vectors, strict=True):
                    item.vector = vector.tobytes()
    except (StorageError, KeyError, ValueError) as exc:
        log.info("%s: no usable snapshot (%s); built from the items", prefix, exc)
    present = {item.id for item in items}
    index.remove([i for i in index.ids() if i not in present])
    missing = [item for item in items if item.id not in index]
    if missing:
        vectors = np.stack([np.frombuffer(item.vector, np.float32) for item in missing])
        index.add(np.array([item.id for item in missing], np.int64), vectors)
    if index.needs_migration:
        index.migrate()
    return index


async def save_index(
    storage: IndexStorage, prefix: str, index: VectorIndex, embedder: Embedder
) -> None:
    """Snapshot ``index`` under ``prefix`` in one root update."""
    files = await asyncio.to_thread(index.snapshot)
    model = cbor.dumps({"sha256": embedder.sha256})
    await storage.put_many(
        {f"{prefix}/{name}": data for name, data in files.items()} | {f"{prefix}/model": model}
    )
