"""Continuous batching and the per-conversation KV cache, on real llama.cpp models: the tiny
generated GGUF for the mechanics, SmolLM2-135M where the answers' content matters."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir_devtools.divergence import divergence
from fabstir_devtools.wait import wait_until_async
from fabstir_node.inference import (
    CreditGate,
    Engine,
    EngineError,
    Finished,
    SamplingParams,
    TokenChunk,
)
from fabstir_node.models import resolve
from fabstir_sdk.audit import GREEDY_TOLERANCE

from conftest import LONG_CTX, make_engine

GREEDY = SamplingParams(max_tokens=40, temperature=0)
STORIES = [f"Tell me a short story about a lighthouse keeper called {n}." for n in "ABCD"]


async def answer(
    engine: Engine, prompt: list[int], params: SamplingParams, gate: CreditGate | None = None
) -> tuple[list[int], Finished]:
    ids: list[int] = []
    async for event in engine.generate(prompt, params, gate):
        if isinstance(event, Finished):
            return ids, event
        ids.extend(event.token_ids)
    raise AssertionError("no Finished event")


def assert_same_or_near_tie(path: Path, prompt: list[int], got: list[int], want: list[int]) -> None:
    """``got`` is ``want``, or differs first where the model's top two choices are within the
    audit's tolerance: llama.cpp's one-token and batched kernels round differently (measured
    by bench/audit.py and bench/throughput.py), enough to flip a near-tie."""
    parted = divergence(path, prompt, got, want)
    if parted is not None:
        at, gap = parted
        assert gap <= GREEDY_TOLERANCE, f"the answers part at token {at}, {gap:.3f} logits apart"


@pytest.fixture(scope="module")
def smollm2() -> Iterator[Engine]:
    engine = Engine(resolve("smollm2-135m-instruct").path, n_ctx=1024, parallel=4)
    engine.load()
    yield engine
    engine.close()


def test_concurrent_greedy_answers_are_the_answers_alone(smollm2: Engine) -> None:
    prompts = [smollm2.chat_prompt([{"role": "user", "content": s}]) for s in STORIES]

    async def main() -> tuple[list[list[int]], list[list[int]]]:
        alone = [(await answer(smollm2, p, GREEDY))[0] for p in prompts]
        together = await asyncio.gather(*(answer(smollm2, p, GREEDY) for p in prompts))
        return alone, [ids for ids, _ in together]

    alone, together = asyncio.run(main())
    for prompt, got, want in zip(prompts, together, alone, strict=True):
        assert_same_or_near_tie(smollm2.model_path, prompt, got, want)
    assert all(len(ids) == GREEDY.max_tokens for ids in alone)
    assert len({tuple(ids) for ids in alone}) == len(prompts)  # each got its own answer


@pytest.mark.parametrize("via_store", [False, True], ids=["in its slot", "from a store"])
def test_a_follow_up_turn_evaluates_only_its_new_tokens(smollm2: Engine, via_store: bool) -> None:
    # One slot: another conversation in between moves the first one out to a store, and its
    # next turn brings it back.
    engine = Engine(smollm2.model_path, n_ctx=1024, parallel=1) if via_store else smollm2
    fresh = Engine(smollm2.model_path, n_ctx=1024, parallel=1, prompt_cache=False)
    for loading in {engine, fresh} - {smollm2}:
        loading.load()
    first = [{"role": "user", "content": STORIES[0]}]

    async def main() -> None:
        prompt = engine.chat_prompt(first)
        text = "".join(
            [e.text async for e in engine.generate(prompt, GREEDY) if isinstance(e, TokenChunk)]
        )
        if via_store:
            await answer(engine, engine.chat_prompt([{"role": "user", "content": "Hi!"}]), GREEDY)
        follow_up = [
            *first,
            {"role": "assistant", "content": text},
            {"role": "user", "content": "And then?"},
        ]
        prompt2 = engine.chat_prompt(follow_up)
        evaluated = engine.prompt_tokens_evaluated
        ids2, done2 = await answer(engine, prompt2, GREEDY)
        assert done2.cached_tokens >= len(prompt)  # the whole first prompt, and more
        assert engine.prompt_tokens_evaluated - evaluated == len(prompt2) - done2.cached_tokens
        # ... and the answer is the one computed from scratch (the cached KV was computed
        # token by token, the fresh one in one batch: a near-tie may flip).
        ids_fresh, done_fresh = await answer(fresh, prompt2, GREEDY)
        assert done_fresh.cached_tokens == 0
        assert_same_or_near_tie(engine.model_path, prompt2, ids2, ids_fresh)

    try:
        asyncio.run(main())
    finally:
        for loaded in {engine, fresh} - {smollm2}:
            loaded.close()


def test_credit_windows_stay_per_sequence(tiny_gguf: Path) -> None:
    engine = make_engine(tiny_gguf, n_ctx=LONG_CTX, parallel=2)
    prompt = engine.text_prompt("a credit window")
    params = SamplingParams(max_tokens=60, temperature=1, seed=3)

    async def main() -> None:
        gate = CreditGate(allowed=3, timeout=60)
        unpaid = engine.generate(prompt, params, gate)
        received = [0]

        async def read_unpaid() -> None:
            async for event in unpaid:
                if isinstance(event, TokenChunk):
                    assert event.completion_tokens <= gate.allowed  # never past its credit
                    received[0] = event.completion_tokens
                else:
                    assert event.finish_reason == "length"
                    received[0] = event.usage.completion_tokens

        reader = asyncio.ensure_future(read_unpaid())
        await wait_until_async(lambda: received[0] == 3, what="3 paid tokens", interval=0.001)
        # The other sequence runs to its end while this one waits for credit.
        _, done = await answer(engine, prompt, params)
        assert (done.finish_reason, done.usage.completion_tokens) == ("length", 60)
        assert received[0] == 3
        gate.extend(60)  # a voucher arrives: it resumes at once
        await reader
        assert received[0] == 60

    try:
        asyncio.run(main())
    finally:
        engine.close()


def test_a_cancelled_sequence_frees_its_slot_and_kv_at_once(tiny_gguf: Path) -> None:
    engine = make_engine(tiny_gguf, n_ctx=LONG_CTX, parallel=1)
    prompt = engine.text_prompt("cancel me")
    assert engine.kv_positions() == {}  # the warm-up left nothing behind

    async def main() -> None:
        _, done = await answer(engine, prompt, SamplingParams(max_tokens=5, temperature=0))
        kept = engine.kv_positions()
        assert list(kept.values()) == [len(prompt) + 4]  # finished: kept for a next turn
        stream = engine.generate(
            engine.text_prompt("something else entirely"),
            SamplingParams(max_tokens=LONG_CTX - 100, temperature=1, seed=1),
        )
        async for event in stream:
            if isinstance(event, TokenChunk) and event.completion_tokens >= 3:
                break
        await stream.aclose()  # type: ignore[attr-defined]
        await wait_until_async(lambda: engine.running == 0, what="the slot to free")
        # Its KV went with it; the finished one stays (moved to a store to free the slot).
        assert list(engine.kv_positions().values()) == list(kept.values())
        # The slot is free: the next request runs at once.
        _, done = await answer(engine, prompt, SamplingParams(max_tokens=3, temperature=0))
        assert done.finish_reason == "length"

    try:
        asyncio.run(main())
    finally:
        engine.close()


def test_least_recently_used_conversations_are_evicted(tiny_gguf: Path) -> None:
    engine = make_engine(tiny_gguf, n_ctx=LONG_CTX, parallel=1)  # a slot and a store
    params = SamplingParams(max_tokens=4, temperature=0)
    words = ("apple", "river", "stone")
    prompts = [engine.text_prompt(f"{word} " * 20) for word in words]

    async def main() -> list[int]:
        # apple in the slot; river moves it to the store; stone moves river there, and
        # apple, the least recently used, is evicted.
        for prompt in prompts:
            await answer(engine, prompt, params)
        cached = []
        for prompt in (prompts[1], prompts[0]):
            _, done = await answer(engine, prompt, params)
            cached.append(done.cached_tokens)
        return cached

    try:
        assert engine.n_seq == 2
        second, first = asyncio.run(main())
        # Still cached (copied back from the store): only its last token evaluated.
        assert second == len(prompts[1]) - 1
        # Evicted: only what it happens to share with another cached prompt is reused.
        assert first < len(prompts[0]) // 2
    finally:
        engine.close()


def test_a_long_prompt_joins_in_chunks_without_stalling_the_others(tiny_gguf: Path) -> None:
    engine = Engine(tiny_gguf, n_ctx=LONG_CTX, n_threads=1, parallel=2, prompt_chunk=16)
    engine.load()
    long_prompt = engine.text_prompt("word " * 100)
    assert len(long_prompt) > 500

    async def main() -> int:
        latest = [0]  # tokens of the running answer so far
        gate = CreditGate(allowed=LONG_CTX, timeout=60)
        running = engine.generate(
            engine.text_prompt("hi"), SamplingParams(max_tokens=2000, temperature=1, seed=2), gate
        )

        async def keep_reading() -> None:
            async for event in running:
                if isinstance(event, TokenChunk):
                    latest[0] = event.completion_tokens

        reader = asyncio.ensure_future(keep_reading())
        await wait_until_async(lambda: latest[0] > 0, what="the first answer to run")
        start = latest[0]
        async for _ in engine.generate(long_prompt, SamplingParams(max_tokens=1)):
            break
        during = latest[0] - start
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        return during

    try:
        during = asyncio.run(main())
        # One token of the running answer per 16-token chunk of the newcomer's prompt.
        assert during >= len(long_prompt) // 16 - 2
    finally:
        engine.close()


def test_warm_up_runs_before_ready_and_leaves_nothing(tiny_gguf: Path) -> None:
    engine = Engine(tiny_gguf, n_ctx=256, n_threads=1)
    assert not engine.ready and engine.warmup_s is None
    engine.load()
    try:
        assert engine.ready and engine.warmup_s is not None and engine.warmup_s > 0
        assert engine.kv_positions() == {}
        assert engine.generated_tokens == 0 and engine.prompt_tokens_evaluated == 0
    finally:
        engine.close()


def test_the_kv_cache_budget_sets_how_many_conversations_fit(tiny_gguf: Path) -> None:
    too_small = Engine(tiny_gguf, n_ctx=LONG_CTX, n_threads=1, parallel=64, kv_cache_mb=1)
    with pytest.raises(EngineError, match="kv_cache_mb = 1 holds"):
        too_small.load()
    engine = Engine(tiny_gguf, n_ctx=LONG_CTX, n_threads=1, parallel=2, kv_cache_mb=64)
    engine.load()
    try:
        assert engine.n_seq > 2  # the slots, and stores for finished conversations
    finally:
        engine.close()
