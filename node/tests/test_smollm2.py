"""Smoke test with a real model: SmolLM2-135M-Instruct answers a real question."""

from collections.abc import Iterator

import openai
import pytest

from fabstir_node.api import Api
from fabstir_node.config import default_threads
from fabstir_node.inference import Engine
from fabstir_node.models import HashCache, probe, resolve, verify
from fabstir_sdk.models import CATALOG
from fabstir_sdk.tokenizer import Tokenizer, tokenizer_sha256

from conftest import LiveServer


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = resolve("smollm2-135m-instruct")
    verify(model, HashCache(tmp_path_factory.mktemp("data") / "hashes.json"))
    assert probe(model.path).architecture == "llama"
    engine = Engine(model.path, n_ctx=1024, n_threads=default_threads())
    engine.load()
    server = LiveServer(Api(engine, model.name))
    yield server
    server.close()
    engine.close()


def test_answers_a_real_question(smollm2: LiveServer) -> None:
    client = openai.OpenAI(base_url=f"{smollm2.url}/v1", api_key="unused")
    reply = client.chat.completions.create(
        model="smollm2-135m-instruct",
        temperature=0,
        max_tokens=32,
        messages=[{"role": "user", "content": "Which city is the capital of France?"}],
    )
    assert "Paris" in (reply.choices[0].message.content or "")
    assert reply.choices[0].finish_reason == "stop"  # it ended on its own end-of-turn token


def test_the_catalogue_pins_smollm2s_real_tokenizer() -> None:
    model = resolve("smollm2-135m-instruct")
    entry = CATALOG["smollm2-135m-instruct"]
    assert tokenizer_sha256(model.path).hex() == entry.tokenizer_sha256
    prompt = Tokenizer.from_model(model.path).chat_tokens(
        [{"role": "user", "content": "Which city is the capital of France?"}]
    )
    assert 20 < len(prompt) < 60  # its default system prompt plus the question
