"""The answer cache through the node's OpenAI-compatible API: the stock client opts in with
``extra_body`` and sees a repeat marked as cached, streamed or not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fabstir_node.api import Api
from fabstir_node.cache.semantic import SemanticCache
from fabstir_node.embeddings import Embedder
from fabstir_node.inference import Engine
from fabstir_node.storage import StoreFiles
from fabstir_sdk.storage.tree import Store

from conftest import LiveServer

OWN = {"fabstir": {"cache": "own"}}


@pytest.fixture
def client(engine: Engine, embedder: Embedder, tmp_path: Path) -> Iterator[openai.OpenAI]:
    with Store(tmp_path / "store") as store:
        cache = SemanticCache(StoreFiles(store), embedder)
        api = Api(engine, "tiny", embedder=embedder, cache=cache, model_sha256=bytes(32))
        server = LiveServer(api)
        asyncio.run_coroutine_threadsafe(cache.start(), server.loop).result(30)
        yield openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
        asyncio.run_coroutine_threadsafe(cache.close(), server.loop).result(30)
        server.close()


def ask(client: openai.OpenAI, content: str, extra: dict[str, Any] | None) -> Any:
    return client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": content}],
        max_tokens=8,
        temperature=0,
        extra_body=extra,
    )


def cached(answer: Any) -> dict[str, Any] | None:
    return (answer.model_extra or {}).get("fabstir")


def test_a_repeat_is_marked_cached(client: openai.OpenAI) -> None:
    first = ask(client, "What is the capital of France?", OWN)
    assert cached(first) is None
    again = ask(client, "What is the capital of France?", OWN)
    mark = cached(again)
    assert mark is not None and mark["cached"] and mark["similarity"] == 1.0
    assert again.choices[0].message.content == first.choices[0].message.content
    assert again.usage is not None and first.usage is not None
    assert again.usage.completion_tokens == first.usage.completion_tokens
    # Without the extension nothing is looked up; a paraphrase is a semantic hit.
    assert cached(ask(client, "What is the capital of France?", None)) is None
    paraphrase = cached(ask(client, "Which city is the capital of France?", OWN))
    assert paraphrase is not None and 0.8 < paraphrase["similarity"] < 1.0


def test_a_streamed_repeat_is_marked_in_every_chunk(client: openai.OpenAI) -> None:
    text = ask(client, "Name a prime number", OWN).choices[0].message.content
    stream = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Name a prime number"}],
        max_tokens=8,
        temperature=0,
        stream=True,
        extra_body=OWN,
    )
    chunks = list(stream)
    assert all(cached(c) is not None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text


def test_a_malformed_extension_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="fabstir"):
        ask(client, "hello", {"fabstir": {"cache": "everyone"}})
