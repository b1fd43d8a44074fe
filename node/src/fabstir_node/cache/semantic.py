"""The node's answer cache: exact repeats first, then paraphrases that pass the guard.

A lookup (:meth:`SemanticCache.lookup`) goes:

1. the client's policy: ``off`` never looks; a sampled request (temperature > 0) is served
   from cache only when the client allows it;
2. **exact**: the request's exact key (:mod:`.keys`), no embedding computed;
3. **semantic**: the last user message is embedded and searched in the vector index; the
   candidates are those the client may see, for the same model, context and sampling,
   unexpired and short enough for the request's token limit. The best one must have cosine
   similarity at or above the client's minimum (:data:`DEFAULT_THRESHOLD` when it names
   none), lead every *other* candidate question by :data:`MARGIN` on a score that adds a
   little word overlap (two different cached questions that both fit cannot be told apart
   safely), and pass the near-miss :mod:`.guard`.

**Privacy**: an entry belongs to the client (session address) whose answer it is, and serves
that client only, unless that client marked it shareable: then it also serves clients who ask
for the ``shared`` cache. Never across models (the model's sha256 is in every key).

Entries live in the node's store under ``/cache/entries/`` (with their vector, so a restart
re-embeds nothing) and the index under ``/cache/index/`` (see :mod:`..vectors`); both are
read back at start. Entries expire after ``ttl`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fabstir_node.cache.guard import Details, check, overlap
from fabstir_node.cache.keys import RequestKey
from fabstir_node.embeddings import Embedder, EmbeddingError
from fabstir_node.stored_index import load_index, save_index
from fabstir_node.vectors import VectorIndex
from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.tasks import TaskSet

log = logging.getLogger(__name__)

MODES = ("off", "own", "shared")
#: Cosine similarity a paraphrase needs when the client names no minimum.
DEFAULT_THRESHOLD = 0.85
#: Lead the best candidate needs over any other cached question (see the module docstring).
MARGIN = 0.03
#: Weight of word overlap (Jaccard of content words) in the ranking score.
OVERLAP_WEIGHT = 0.1
#: Neighbours fetched from the index per lookup, before filtering by scope and context.
NEIGHBOURS = 32
DEFAULT_TTL = 7 * 24 * 3600.0
ENTRIES = "/cache/entries"
INDEX = "/cache/index"
SAVE_EVERY = 64  # inserts between index snapshots (and at shutdown)
SWEEP_EVERY = 3600.0  # seconds between deletions of expired entries


class CacheStorage(Protocol):
    """The part of the node's store the cache uses (:class:`~fabstir_node.storage.NodeStorage`)."""

    async def put_many(self, files: dict[str, bytes]) -> None: ...

    async def delete_many(self, paths: list[str]) -> None: ...

    def read(self, path: str) -> bytes: ...

    def files(self, path: str) -> list[str]: ...


@dataclass(frozen=True)
class CachePolicy:
    """A client's opt-in for one prompt."""

    mode: str = "off"  # off / own / shared
    min_similarity: float | None = None
    sampled: bool = False  # may a temperature > 0 request be answered from cache?
    share: bool = False  # may this answer serve other clients who ask for shared answers?

    @property
    def on(self) -> bool:
        return self.mode != "off"


@dataclass
class Entry:
    id: int
    model: bytes
    client: str
    shared: bool
    exact: bytes
    context: bytes
    question: str
    completion_ids: list[int]
    text: str
    created: float
    expires: float
    vector: bytes = b""
    # An answer cut at its token limit ("length") serves only requests with that same limit;
    # one that ended by itself ("stop", limit None) serves any limit it fits in.
    finish: str = "stop"
    limit: int | None = None

    @property
    def path(self) -> str:
        return f"{ENTRIES}/{self.id:016x}"

    def visible_to(self, client: str, mode: str) -> bool:
        return self.client == client or (mode == "shared" and self.shared)

    def encode(self) -> bytes:
        return cbor.dumps(
            {
                "id": self.id,
                "model": self.model,
                "client": self.client,
                "shared": self.shared,
                "exact": self.exact,
                "context": self.context,
                "question": self.question,
                "ids": self.completion_ids,
                "text": self.text,
                "created": self.created,
                "expires": self.expires,
                "vector": self.vector,
                "finish": self.finish,
                "limit": self.limit,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Entry:
        d = cbor.loads(data)
        return cls(
            d["id"],
            d["model"],
            d["client"],
            d["shared"],
            d["exact"],
            d["context"],
            d["question"],
            list(d["ids"]),
            d["text"],
            d["created"],
            d["expires"],
            d["vector"],
            d["finish"],
            d["limit"],
        )


@dataclass(frozen=True)
class Hit:
    entry: Entry
    similarity: float  # cosine; 1.0 for an exact repeat
    exact: bool


@dataclass
class CacheCounters:
    lookups: int = 0
    exact_hits: int = 0
    semantic_hits: int = 0
    misses: int = 0
    ambiguous: int = 0  # refused: another cached question scored too close
    guard_rejections: dict[str, int] = field(default_factory=dict)  # by rule
    inserts: int = 0
    expired: int = 0


class SemanticCache:
    def __init__(
        self,
        storage: CacheStorage,
        embedder: Embedder,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.storage = storage
        self.embedder = embedder
        self.ttl = ttl
        self.clock = clock
        self.observe = observe  # lookup latency in seconds (the node's histogram)
        self.index = VectorIndex(embedder.dimensions)
        self.entries: dict[int, Entry] = {}
        self._exact: dict[bytes, list[int]] = {}
        self.counters = CacheCounters()
        self._next_id = 1
        self._unsaved = 0
        self._background = TaskSet()
        self._migrating: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    # ----------------------------------------------------------------- start, stop

    async def start(self) -> None:
        """Read the entries and the index back from the store (re-embedding nothing unless the
        embedding model changed)."""
        await asyncio.to_thread(self._load)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                await self.sweep()
            except Exception as exc:  # the store hiccuped: next round
                log.warning("cache sweep failed: %s", exc)

    def _load(self) -> None:
        for path in self.storage.files(ENTRIES):
            try:
                entry = Entry.decode(self.storage.read(path))
            except (StorageError, KeyError, TypeError, ValueError) as exc:
                log.warning("cache entry %s is unreadable, skipped: %s", path, exc)
                continue
            self._remember(entry)
        self._next_id = max(self.entries, default=0) + 1
        entries = list(self.entries.values())
        self.index = load_index(self.storage, INDEX, self.embedder, entries, _question)
        log.info("cache: %d entries, %d vectors", len(self.entries), len(self.index))

    async def save(self) -> None:
        """Snapshot the index into the store (every :data:`SAVE_EVERY` inserts and at stop)."""
        await save_index(self.storage, INDEX, self.index, self.embedder)
        self._unsaved = 0

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await self._background.join()
        with contextlib.suppress(Exception):
            await self.save()

    # ----------------------------------------------------------------- lookups

    async def lookup(
        self,
        key: RequestKey,
        client: str,
        policy: CachePolicy,
        sampled: bool,
        max_tokens: int,
    ) -> Hit | None:
        """The cached answer for this request, if the policy allows one and one fits."""
        if not policy.on or (sampled and not policy.sampled):
            return None
        started = time.perf_counter()
        self.counters.lookups += 1
        try:
            hit = await self._lookup(key, client, policy, max_tokens)
        finally:
            if self.observe is not None:
                self.observe(time.perf_counter() - started)
        if hit is None:
            self.counters.misses += 1
        elif hit.exact:
            self.counters.exact_hits += 1
        else:
            self.counters.semantic_hits += 1
        return hit

    def _usable(self, entry: Entry, client: str, mode: str, max_tokens: int) -> bool:
        fits = (
            len(entry.completion_ids) <= max_tokens if entry.limit is None
            else entry.limit == max_tokens
        )  # fmt: skip
        return fits and entry.visible_to(client, mode) and entry.expires > self.clock()

    async def _lookup(
        self, key: RequestKey, client: str, policy: CachePolicy, max_tokens: int
    ) -> Hit | None:
        for entry_id in self._exact.get(key.exact, ()):
            entry = self.entries[entry_id]
            if self._usable(entry, client, policy.mode, max_tokens):
                return Hit(entry, 1.0, True)
        if not len(self.index):
            return None
        try:
            vector = await self.embedder.embed_for_search(key.question)
        except EmbeddingError:
            return None
        scores, ids = self.index.search(vector[None, :], NEIGHBOURS)
        asked = Details.of(key.question)  # once, for every candidate
        candidates = []
        for score, entry_id in zip(scores[0].tolist(), ids[0].tolist(), strict=True):
            found = self.entries.get(entry_id)
            if (
                found is not None
                and found.context == key.context
                and self._usable(found, client, policy.mode, max_tokens)
            ):
                details = Details.of(found.question)
                ranked = score + OVERLAP_WEIGHT * overlap(asked, details)
                candidates.append((ranked, score, found, details))
        if not candidates:
            return None
        candidates.sort(key=lambda c: -c[0])
        ranked, cosine, best, details = candidates[0]
        threshold = (
            policy.min_similarity if policy.min_similarity is not None else DEFAULT_THRESHOLD
        )
        if cosine < threshold:
            return None
        rivals = [r for r, _, e, _ in candidates[1:] if e.question != best.question]
        if rivals and ranked - rivals[0] < MARGIN:
            self.counters.ambiguous += 1
            return None
        verdict = check(asked, details)
        if not verdict.ok:
            rejections = self.counters.guard_rejections
            rejections[verdict.reason] = rejections.get(verdict.reason, 0) + 1
            return None
        return Hit(best, cosine, False)

    # ----------------------------------------------------------------- inserts

    async def insert(
        self,
        key: RequestKey,
        model: bytes,
        client: str,
        policy: CachePolicy,
        completion_ids: list[int],
        text: str,
        limit: int | None = None,
    ) -> Entry | None:
        """Keep a fresh answer for later requests: one that ended by itself, or (``limit``)
        one cut at that many tokens. An exact repeat of a question this client already has
        cached changes nothing."""
        if not policy.on or not completion_ids:
            return None
        for entry_id in self._exact.get(key.exact, ()):
            if self.entries[entry_id].client == client:
                return None
        try:
            vector = await self.embedder.embed_for_search(key.question)
        except EmbeddingError as exc:
            log.info("cache: answer not kept: %s", exc)
            return None
        now = self.clock()
        entry = Entry(
            self._next_id,
            model,
            client,
            policy.share,
            key.exact,
            key.context,
            key.question,
            list(completion_ids),
            text,
            now,
            now + self.ttl,
            vector.astype(np.float32).tobytes(),
            "stop" if limit is None else "length",
            limit,
        )
        self._next_id += 1
        await self.storage.put_many({entry.path: entry.encode()})
        self._remember(entry)
        self.index.add(np.array([entry.id], np.int64), vector[None, :])
        self.counters.inserts += 1
        self._unsaved += 1
        if self.index.needs_migration and (self._migrating is None or self._migrating.done()):
            self._migrating = self._spawn(asyncio.to_thread(self.index.migrate))
        if self._unsaved >= SAVE_EVERY:
            self._spawn(self.save())
        return entry

    def _remember(self, entry: Entry) -> None:
        self.entries[entry.id] = entry
        self._exact.setdefault(entry.exact, []).append(entry.id)

    async def remove(self, entry_ids: list[int]) -> int:
        gone = [self.entries.pop(i) for i in entry_ids if i in self.entries]
        for entry in gone:
            same = self._exact.get(entry.exact, [])
            if entry.id in same:
                same.remove(entry.id)
            if not same:
                self._exact.pop(entry.exact, None)
        self.index.remove([e.id for e in gone])
        if gone:
            await self.storage.delete_many([e.path for e in gone])
        return len(gone)

    async def sweep(self) -> int:
        """Delete expired entries."""
        now = self.clock()
        expired = [e.id for e in self.entries.values() if e.expires <= now]
        removed = await self.remove(expired)
        self.counters.expired += removed
        return removed

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        return self._background.spawn(coro)


def _question(entry: Entry) -> str:
    return entry.question
