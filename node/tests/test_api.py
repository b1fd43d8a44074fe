"""The OpenAI-compatible API through a real server on 127.0.0.1 and real HTTP clients."""

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from fabstir_devtools.wait import wait_until
from fabstir_node.api import Api
from fabstir_node.inference import CreditGate, SamplingParams

from conftest import LONG_CTX, LiveServer, make_engine


def client(live: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)


def test_health_and_models(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/health").json()["status"] == "ok"
    models = client(live).models.list()
    assert [m.id for m in models.data] == ["tiny"]


def test_chat_with_the_stock_openai_client(live: LiveServer) -> None:
    reply = client(live).chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=10,
        temperature=0,
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.completion_tokens == 10


def test_streaming_equals_non_streaming_and_reports_usage(live: LiveServer) -> None:
    args = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "count"}],
        "max_tokens": 20,
        "temperature": 0.8,
        "seed": 42,
    }
    whole = client(live).chat.completions.create(**args)
    stream = client(live).chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    )
    text, usage, finish, roles = "", None, None, []
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
            if choice.delta.role:
                roles.append(choice.delta.role)
    assert roles == ["assistant"]
    assert text == whole.choices[0].message.content
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and whole.usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_raw_sse_framing(live: LiveServer) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "x"}],
        "max_tokens": 5,
        "stream": True,
    }
    with httpx.stream("POST", f"{live.url}/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    assert "usage" not in chunks[0]  # only when stream_options asks for it


def test_text_completions(live: LiveServer) -> None:
    reply = client(live).completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0)
    assert reply.object == "text_completion" and reply.choices[0].text
    assert reply.usage is not None and reply.usage.completion_tokens <= 6


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (
            {"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
            404,
            "model_not_found",
        ),
        ({"model": "tiny", "messages": []}, 400, "invalid_value"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": 9},
            400,
            "invalid_value",
        ),
        ({"model": "tiny", "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "x"}], "n": 2},
            400,
            "invalid_value",
        ),
        (
            {"model": "tiny", "messages": [{"role": "user", "content": "y" * 400}]},
            400,
            "context_length_exceeded",
        ),
    ],
)
def test_bad_requests_get_openai_errors(
    live: LiveServer, body: dict, status: int, code: str
) -> None:
    response = httpx.post(f"{live.url}/v1/chat/completions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_malformed_json(live: LiveServer) -> None:
    response = httpx.post(
        f"{live.url}/v1/chat/completions",
        content=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_openai_client_raises_typed_errors(live: LiveServer) -> None:
    with pytest.raises(openai.NotFoundError):
        client(live).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )


def test_disconnect_mid_stream_cancels_generation(live_long: LiveServer) -> None:
    engine = live_long.api.engine
    before, cancelled = engine.generated_tokens, engine.cancelled_jobs
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": LONG_CTX - 100,
        "temperature": 1,
        "seed": 3,
        "stream": True,
    }
    with httpx.stream("POST", f"{live_long.url}/v1/chat/completions", json=body) as response:
        for _ in zip(range(3), response.iter_lines(), strict=False):
            pass
    wait_until(lambda: engine.queue_depth == 0, what="the cancelled job to leave the queue")
    assert engine.generated_tokens - before < LONG_CTX - 100
    assert engine.cancelled_jobs == cancelled + 1


def test_metrics_have_real_values(live: LiveServer) -> None:
    client(live).chat.completions.create(
        model="tiny", max_tokens=4, messages=[{"role": "user", "content": "m"}]
    )
    text = httpx.get(f"{live.url}/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert values["fabstir_completion_tokens_total"] > 0
    assert values["fabstir_prompt_tokens_total"] > 0
    assert values["fabstir_time_to_first_token_seconds_count"] >= 1
    assert values["fabstir_tokens_per_second"] > 0
    assert "fabstir_queue_depth" in values
    assert values["fabstir_parallel_slots"] == live.api.engine.parallel
    assert values["fabstir_gpu_layers"] == 0  # the CPU build
    assert values["fabstir_warmup_seconds"] > 0
    assert values["fabstir_prompt_tokens_evaluated"] > 0
    assert any(k.startswith("fabstir_requests_total{") for k in values)


def test_a_full_engine_answers_503_with_its_own_retry_after(tiny_gguf: Path) -> None:
    engine = make_engine(tiny_gguf, queue_size=1, parallel=1)
    live = LiveServer(Api(engine, "tiny"))
    prompt = engine.text_prompt("hold")
    params = SamplingParams(max_tokens=100, temperature=1, seed=1)

    async def hold() -> None:  # the slot waits at a credit gate, the queue place behind it
        gate = CreditGate(allowed=1, timeout=60)
        async for _ in engine.generate(prompt, params, gate):
            await asyncio.sleep(60)

    async def queue() -> None:
        async for _ in engine.generate(prompt, params):
            pass

    held = [asyncio.run_coroutine_threadsafe(hold(), live.loop)]
    try:
        wait_until(lambda: engine.running == 1, what="the slot to be taken")
        held.append(asyncio.run_coroutine_threadsafe(queue(), live.loop))
        wait_until(lambda: engine.queue_depth == 2, what="the queue to fill")
        response = httpx.post(
            f"{live.url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}
        )
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "busy"
        assert int(response.headers["Retry-After"]) >= 1
    finally:
        for future in held:
            future.cancel()
        live.close()
        engine.close()


def test_a_repeated_conversation_reports_its_cached_prompt_tokens(live: LiveServer) -> None:
    body = {
        "model": "tiny",
        "max_tokens": 3,
        "messages": [{"role": "user", "content": "a conversation that comes back"}],
    }
    first = httpx.post(f"{live.url}/v1/chat/completions", json=body).json()["usage"]
    again = httpx.post(f"{live.url}/v1/chat/completions", json=body).json()["usage"]
    cached_first = first.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    assert cached_first < first["prompt_tokens"] - 1  # at most a shared template start
    # All of the prompt but its last token, whose logits give the first new token.
    assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] - 1
