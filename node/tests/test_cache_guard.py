"""The near-miss guard on our own hand-written pairs (bench/data/cache_pairs.json), through the
whole cache: every near miss the embedding scores above the threshold is refused, and every
paraphrase above it is served."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from fabstir_node.cache.guard import check
from fabstir_node.cache.keys import Sampling, request_key
from fabstir_node.cache.semantic import DEFAULT_THRESHOLD, CachePolicy, SemanticCache
from fabstir_node.embeddings import Embedder
from fabstir_node.storage import StoreFiles
from fabstir_sdk.storage.tree import Store

PAIRS = json.loads((Path(__file__).parents[2] / "bench" / "data" / "cache_pairs.json").read_text())
MODEL = bytes(32)


def outcome(tmp_path: Path, embedder: Embedder, cached: str, asked: str) -> tuple[bool, float]:
    """(served from cache?, cosine of the two questions) in a cache holding only ``cached``."""

    async def main() -> bool:
        with Store(tmp_path / "store") as store:
            cache = SemanticCache(StoreFiles(store), embedder)
            await cache.start()
            policy = CachePolicy("own")
            for text, ask in ((cached, False), (asked, True)):
                key = request_key(MODEL, [{"role": "user", "content": text}], Sampling(0.0))
                assert key is not None
                if not ask:
                    await cache.insert(key, MODEL, "me", policy, [1], "answer")
                    continue
                hit = await cache.lookup(key, "me", policy, False, 16)
            await cache.close()
            return hit is not None

    a, b = embedder.embed_now([cached, asked])
    return asyncio.run(main()), float(a @ b)


@pytest.mark.parametrize(("cached", "asked"), PAIRS["different"])
def test_a_near_miss_is_refused(
    tmp_path: Path, embedder: Embedder, cached: str, asked: str
) -> None:
    served, _ = outcome(tmp_path, embedder, cached, asked)
    assert not served


@pytest.mark.parametrize(("cached", "asked"), PAIRS["same"])
def test_a_paraphrase_above_the_threshold_is_served(
    tmp_path: Path, embedder: Embedder, cached: str, asked: str
) -> None:
    served, similarity = outcome(tmp_path, embedder, cached, asked)
    assert served == (similarity >= DEFAULT_THRESHOLD)


def test_every_rule_of_the_guard_is_exercised() -> None:
    """Each of the guard's rules refuses at least one pair of the set."""
    reasons = {check(b, a).reason for a, b in PAIRS["different"]}
    assert {"numbers", "negation", "units", "entities", "direction", "opposites"} <= reasons
