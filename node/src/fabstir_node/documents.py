"""The host's own documents, searchable by meaning (the MCP tools ``add_document`` and
``search_documents``).

A document is kept at ``/documents/entries/<id hex>`` in the node's store (CBOR, with its
vector, so a restart re-embeds nothing) and the vector index is snapshotted under
``/documents/index/`` by :meth:`DocumentIndex.save`; :meth:`DocumentIndex.start` reads both
back (:mod:`.stored_index`). A long text is embedded from its first
:data:`~.embeddings.SEARCH_TOKENS` tokens; the whole text is kept and returned.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fabstir_node.cache.semantic import CacheStorage
from fabstir_node.embeddings import Embedder
from fabstir_node.stored_index import load_index, save_index
from fabstir_node.vectors import VectorIndex
from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.errors import StorageError

log = logging.getLogger(__name__)

ENTRIES = "/documents/entries"
INDEX = "/documents/index"
#: The largest stored document (text, title, metadata and vector, as CBOR).
MAX_DOCUMENT = cbor.MAX_CBOR


@dataclass
class Document:
    id: int
    text: str
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created: float = 0.0
    vector: bytes = b""

    @property
    def path(self) -> str:
        return f"{ENTRIES}/{self.id:016x}"

    def encode(self) -> bytes:
        return cbor.dumps(
            {
                "id": self.id,
                "text": self.text,
                "title": self.title,
                "metadata": self.metadata,
                "created": self.created,
                "vector": self.vector,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Document:
        d = cbor.loads(data)
        return cls(d["id"], d["text"], d["title"], d["metadata"], d["created"], d["vector"])


class DocumentIndex:
    def __init__(
        self,
        storage: CacheStorage,
        embedder: Embedder,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.embedder = embedder
        self.clock = clock
        self.index = VectorIndex(embedder.dimensions)
        self.documents: dict[int, Document] = {}
        self._lock = asyncio.Lock()  # adds, removes and saves, in order

    def __len__(self) -> int:
        return len(self.documents)

    # ----------------------------------------------------------------- start, save

    async def start(self) -> None:
        """Read the documents and the index snapshot back from the store."""
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        for path in self.storage.files(ENTRIES):
            try:
                doc = Document.decode(self.storage.read(path))
            except (StorageError, KeyError, TypeError, ValueError) as exc:
                log.warning("document %s is unreadable, skipped: %s", path, exc)
                continue
            self.documents[doc.id] = doc
        docs = list(self.documents.values())
        self.index = load_index(self.storage, INDEX, self.embedder, docs, _text)
        log.info("documents: %d, %d vectors", len(self.documents), len(self.index))

    async def save(self) -> None:
        """Snapshot the index into the store (a restart then adds nothing to it)."""
        async with self._lock:
            await save_index(self.storage, INDEX, self.index, self.embedder)

    async def close(self) -> None:
        await self.save()

    # ----------------------------------------------------------------- changes

    async def add(
        self, text: str, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> Document:
        """Store and index ``text`` (raises ValueError for an empty or too large document)."""
        if not text.strip():
            raise ValueError("the document is empty")
        vector = await self._embed(text)
        async with self._lock:
            ident = 0
            while not ident or ident in self.documents:  # random: removed ids are not reused
                ident = secrets.randbits(63)
            doc = Document(ident, text, title, dict(metadata or {}), self.clock(), vector.tobytes())
            encoded = doc.encode()  # raises StorageError for metadata CBOR cannot hold
            if len(encoded) > MAX_DOCUMENT:
                raise ValueError(f"the document is over {MAX_DOCUMENT} bytes stored")
            await self.storage.put_many({doc.path: encoded})
            self.documents[doc.id] = doc
            self.index.add(np.array([doc.id], np.int64), vector[None, :])
            if self.index.needs_migration:  # into the IVF, as the cache's index does
                await asyncio.to_thread(self.index.migrate)
        return doc

    async def remove(self, ident: int) -> bool:
        """Delete a document; False when there is none with that id."""
        async with self._lock:
            doc = self.documents.pop(ident, None)
            if doc is None:
                return False
            self.index.remove([ident])
            await self.storage.delete_many([doc.path])
        return True

    # ----------------------------------------------------------------- search

    async def search(self, query: str, k: int = 5) -> list[tuple[Document, float]]:
        """The ``k`` documents closest in meaning to ``query``, with their cosine similarity,
        best first."""
        if not query.strip():
            raise ValueError("the query is empty")
        if k < 1:
            raise ValueError("k must be at least 1")
        if not len(self.index):
            return []
        vector = await self._embed(query)
        scores, ids = self.index.search(vector[None, :], k)
        found = []
        for score, ident in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            doc = self.documents.get(ident)
            if doc is not None:
                found.append((doc, float(score)))
        return found

    async def _embed(self, text: str) -> np.ndarray[Any, np.dtype[np.float32]]:
        vector: np.ndarray[Any, np.dtype[np.float32]] = await self.embedder.embed_for_search(text)
        return vector.astype(np.float32)


def _text(doc: Document) -> str:
    return doc.text
