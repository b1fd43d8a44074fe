"""The answer cache over a real store and the real embedding model: exact repeats hit before
any embedding, paraphrases hit, near misses don't, a client sees only its own answers and
those shared with it, and a restarted node has everything back without re-embedding."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir_node.cache.keys import RequestKey, Sampling, request_key
from fabstir_node.cache.semantic import ENTRIES, CachePolicy, Entry, Hit, SemanticCache
from fabstir_node.embeddings import Embedder
from fabstir_node.storage import StoreFiles
from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.tree import Store

MODEL = bytes(32)
OTHER_MODEL = b"\x01" * 32
GREEDY = Sampling(0.0)
OWN = CachePolicy("own")
SHARED = CachePolicy("shared")
ALICE, BOB = "0xa11ce", "0xb0b"


def key(question: str, sampling: Sampling = GREEDY, model: bytes = MODEL) -> RequestKey:
    found = request_key(model, [{"role": "user", "content": question}], sampling)
    assert found is not None
    return found


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(tmp_path / "store") as opened:
        yield opened


def make_cache(store: Store, embedder: Embedder, clock: Clock | None = None) -> SemanticCache:
    cache = SemanticCache(StoreFiles(store), embedder, clock=clock or Clock())
    asyncio.run(cache.start())
    return cache


async def remember(
    cache: SemanticCache,
    question: str,
    client: str = ALICE,
    policy: CachePolicy = OWN,
    model: bytes = MODEL,
    ids: tuple[int, ...] = (1, 2, 3),
) -> None:
    entry = await cache.insert(key(question, model=model), model, client, policy, list(ids), "a")
    assert entry is not None


async def ask(
    cache: SemanticCache,
    question: str,
    client: str = ALICE,
    policy: CachePolicy = OWN,
    sampling: Sampling = GREEDY,
    max_tokens: int = 64,
    model: bytes = MODEL,
) -> Hit | None:
    k = key(question, sampling, model)
    return await cache.lookup(k, client, policy, sampling.sampled, max_tokens)


def test_an_exact_repeat_hits_without_an_embedding(store: Store, embedder: Embedder) -> None:
    cache = make_cache(store, embedder)

    async def main() -> None:
        await remember(cache, "What is the capital of France?")
        before = embedder.embedded
        # Whitespace and Unicode normalisation do not make a request different.
        hit = await ask(cache, "  What is the capital   of France?")
        assert hit is not None and hit.exact and hit.similarity == 1.0
        assert embedder.embedded == before
        await cache.close()

    asyncio.run(main())


def test_a_paraphrase_hits_and_a_near_miss_does_not(store: Store, embedder: Embedder) -> None:
    cache = make_cache(store, embedder)

    async def main() -> None:
        await remember(cache, "How do I convert a string to an integer in Python?")
        await remember(cache, "convert int to str")
        hit = await ask(cache, "What's the way to convert a string into an integer in Python?")
        assert hit is not None and not hit.exact and 0.8 <= hit.similarity < 1.0
        # all-MiniLM scores this pair above 0.99; the guard sees the reversed direction.
        assert await ask(cache, "convert str to int") is None
        assert cache.counters.guard_rejections == {"direction": 1}
        await cache.close()

    asyncio.run(main())


def test_a_client_sees_only_its_own_answers_and_shared_ones(
    store: Store, embedder: Embedder
) -> None:
    cache = make_cache(store, embedder)

    async def main() -> None:
        await remember(cache, "What is the tallest mountain in Europe?", ALICE)
        await remember(
            cache, "What is the longest river in Africa?", ALICE, CachePolicy("own", share=True)
        )
        # Bob never sees Alice's private answer, whatever he asks for.
        for policy in (OWN, SHARED):
            assert await ask(cache, "What is the tallest mountain in Europe?", BOB, policy) is None
        # Her shared answer serves him only when he asks for shared answers.
        assert await ask(cache, "What is the longest river in Africa?", BOB, OWN) is None
        hit = await ask(cache, "What is the longest river in Africa?", BOB, SHARED)
        assert hit is not None and hit.entry.client == ALICE
        # And never across models.
        question = "What is the tallest mountain in Europe?"
        assert await ask(cache, question, ALICE, model=OTHER_MODEL) is None
        await cache.close()

    asyncio.run(main())


def test_the_policy_and_the_request_decide_what_may_hit(store: Store, embedder: Embedder) -> None:
    cache = make_cache(store, embedder)
    warm = Sampling(0.7, 0.9, 42)

    async def main() -> None:
        await remember(cache, "Name a colour")
        assert await ask(cache, "Name a colour", policy=CachePolicy("off")) is None
        assert await ask(cache, "Name a colour", max_tokens=2) is None  # 3 ids don't fit in 2
        # A sampled request is another request, and served from cache only when allowed.
        await cache.insert(key("Name a colour", warm), MODEL, ALICE, OWN, [7], "red")
        assert await ask(cache, "Name a colour", sampling=warm) is None
        allowed = CachePolicy("own", sampled=True)
        hit = await ask(cache, "Name a colour", policy=allowed, sampling=warm)
        assert hit is not None and hit.entry.text == "red"
        # An answer cut at its limit serves only that limit.
        cut = key("Write a poem")
        await cache.insert(cut, MODEL, ALICE, OWN, [1] * 16, "...", limit=16)
        assert await ask(cache, "Write a poem", max_tokens=16) is not None
        assert await ask(cache, "Write a poem", max_tokens=32) is None
        await cache.close()

    asyncio.run(main())


def test_entries_expire_and_the_sweep_deletes_them(store: Store, embedder: Embedder) -> None:
    clock = Clock()
    cache = make_cache(store, embedder, clock)

    async def main() -> None:
        await remember(cache, "What is the boiling point of water?")
        assert len(store.list(ENTRIES).entries) == 1
        clock.now += cache.ttl + 1
        assert await ask(cache, "What is the boiling point of water?") is None
        assert await cache.sweep() == 1
        assert not store.list(ENTRIES).entries and len(cache.index) == 0
        await cache.close()

    asyncio.run(main())


def test_a_restarted_cache_has_its_entries_and_index_without_re_embedding(
    tmp_path: Path, embedder: Embedder
) -> None:
    questions = [f"What is {n} plus {n}?" for n in range(5)] + ["Who wrote Hamlet?"]

    async def fill() -> None:
        with Store(tmp_path / "store") as store:
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            for q in questions:
                await remember(cache, q)
            await cache.close()  # snapshots the index
            # One more after the snapshot: the restart adds its stored vector.
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            await remember(cache, "Who painted the Mona Lisa?")
            await cache.close()

    asyncio.run(fill())

    async def reopen() -> None:
        with Store(tmp_path / "store") as store:
            before = embedder.embedded
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            assert embedder.embedded == before  # nothing embedded to start
            assert len(cache.entries) == len(cache.index) == 7
            hit = await ask(cache, "Who is the author of Hamlet?")
            assert hit is not None and hit.entry.question == "Who wrote Hamlet?"
            hit = await ask(cache, "Who was the painter of the Mona Lisa?")
            assert hit is not None
            await cache.close()

    asyncio.run(reopen())


def test_a_snapshot_of_another_embedding_model_is_rebuilt(
    tmp_path: Path, embedder: Embedder
) -> None:
    """Vectors of another model are not comparable: every entry is embedded again."""

    async def main() -> None:
        with Store(tmp_path / "store") as store:
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            await remember(cache, "Who wrote Hamlet?")
            await cache.close()
            store.put("/cache/index/model", cbor.dumps({"sha256": "another model"}))
            for entry in store.walk(ENTRIES):  # and its stored vector is that model's
                stale = Entry.decode(store.get(entry[0]))
                stale.vector = bytes(len(stale.vector))
                store.put(entry[0], stale.encode())
            before = embedder.embedded
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            assert embedder.embedded == before + 1
            hit = await ask(cache, "Who is the author of Hamlet?")
            assert hit is not None and hit.entry.question == "Who wrote Hamlet?"
            await cache.close()

    asyncio.run(main())
