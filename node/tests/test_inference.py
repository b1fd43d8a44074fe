import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from fabstir_devtools.wait import wait_until_async
from fabstir_node.inference import (
    CreditGate,
    Engine,
    Finished,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    StopMatcher,
    TokenChunk,
)

from conftest import LONG_CTX, TINY_CTX, make_engine

MESSAGES = [{"role": "user", "content": "hello"}]


async def collect(
    engine: Engine, prompt: list[int], params: SamplingParams
) -> tuple[str, Finished, list[TokenChunk]]:
    chunks: list[TokenChunk] = []
    async for event in engine.generate(prompt, params):
        if isinstance(event, Finished):
            return "".join(c.text for c in chunks), event, chunks
        chunks.append(event)
    raise AssertionError("no Finished event")


def test_streams_tokens_with_exact_usage(engine: Engine) -> None:
    prompt = engine.chat_prompt(MESSAGES)
    text, done, chunks = asyncio.run(
        collect(engine, prompt, SamplingParams(max_tokens=12, temperature=0))
    )
    assert done.usage.prompt_tokens == len(prompt)
    assert done.finish_reason == "length"  # the tiny model never ends on its own
    assert done.usage.completion_tokens == 12
    assert chunks[-1].completion_tokens <= done.usage.completion_tokens
    assert [c.completion_tokens for c in chunks] == sorted(c.completion_tokens for c in chunks)
    assert text


def test_same_seed_same_text_different_seed_differs(engine: Engine) -> None:
    prompt = engine.chat_prompt(MESSAGES)

    def run(seed: int) -> str:
        params = SamplingParams(max_tokens=24, temperature=1.0, seed=seed)
        return asyncio.run(collect(engine, prompt, params))[0]

    assert run(1) == run(1)
    assert len({run(1), run(2), run(3)}) > 1


def test_cancel_stops_within_one_token(long_engine: Engine) -> None:
    engine = long_engine
    prompt = engine.chat_prompt(MESSAGES)
    cancelled = engine.cancelled_jobs

    async def main() -> tuple[int, int]:
        before = engine.generated_tokens
        received = 0
        params = SamplingParams(max_tokens=LONG_CTX - 100, temperature=1, seed=5)
        async for event in engine.generate(prompt, params):
            assert isinstance(event, TokenChunk)
            received = event.completion_tokens
            if received >= 3:
                break
        await wait_until_async(
            lambda: engine.queue_depth == 0, what="the cancelled job to end", interval=0.001
        )
        return received, engine.generated_tokens - before

    received, generated = asyncio.run(main())
    # Tokens already produced while we stopped reading are in flight; the worker stops at the
    # next token boundary instead of running on to max_tokens.
    assert received <= generated < LONG_CTX - 100
    assert engine.cancelled_jobs == cancelled + 1


def test_prompt_longer_than_context(engine: Engine) -> None:
    prompt = engine.text_prompt("a" * (TINY_CTX + 10))

    async def main() -> None:
        async for _ in engine.generate(prompt, SamplingParams()):
            pass

    with pytest.raises(PromptTooLong, match="context holds 256"):
        asyncio.run(main())


def test_max_tokens_is_clipped_to_the_context(engine: Engine) -> None:
    prompt = engine.text_prompt("a" * (TINY_CTX - 10))
    _, done, _ = asyncio.run(
        collect(engine, prompt, SamplingParams(max_tokens=1000, temperature=0))
    )
    assert done.usage.completion_tokens == TINY_CTX - len(prompt)
    assert done.finish_reason == "length"


def test_empty_prompt_rejected(engine: Engine) -> None:
    with pytest.raises(InvalidRequest):
        asyncio.run(collect(engine, [], SamplingParams()))


def test_queue_full_is_a_clear_busy_error(tiny_gguf: Path) -> None:
    engine = make_engine(tiny_gguf, queue_size=1, parallel=1)
    prompt = engine.chat_prompt(MESSAGES)
    params = SamplingParams(max_tokens=200, temperature=1, seed=1)

    async def until(condition: Callable[[], bool]) -> None:
        await wait_until_async(condition, what="the engine's queue to get there", interval=0.001)

    async def main() -> None:
        # Hold the only slot deterministically: the first job waits at a credit gate after 1 token.
        first = engine.generate(prompt, params, CreditGate(allowed=1, timeout=60))
        running = asyncio.ensure_future(anext(first))
        await until(lambda: engine.running == 1)  # the slot is taken by this one
        second = engine.generate(prompt, params)
        waiting = asyncio.ensure_future(anext(second))
        await until(lambda: engine.queue_depth == 2)  # and this one takes the only slot
        with pytest.raises(QueueFull, match="retry") as refused:
            await anext(engine.generate(prompt, params))
        assert refused.value.retry_after >= 1
        running.cancel()  # leaving the first answer frees the worker at once
        await asyncio.gather(running, return_exceptions=True)
        await waiting
        await second.aclose()

    try:
        asyncio.run(main())
    finally:
        engine.close()


@pytest.mark.parametrize(
    ("pieces", "stops", "expected", "hit"),
    [
        (["Hel", "lo wor", "ld"], ["world"], "Hello ", True),
        (["a", "b", "c"], ["bd"], "abc", False),
        (["x<", "/s", ">y"], ["</s>"], "x", True),
        (["no stops"], [], "no stops", False),
    ],
)
def test_stop_matcher_never_leaks_a_stop_string(
    pieces: list[str], stops: list[str], expected: str, hit: bool
) -> None:
    matcher = StopMatcher(stops)
    out, was_hit = "", False
    for piece in pieces:
        text, was_hit = matcher.feed(piece)
        out += text
        if was_hit:
            break
    if not was_hit:
        out += matcher.flush()
    assert (out, was_hit) == (expected, hit)
