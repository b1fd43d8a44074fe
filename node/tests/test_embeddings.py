"""The embedding model: converted from the package's safetensors, it computes what BERT
computes, and the node serves it as OpenAI's ``/v1/embeddings``."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from fabstir_node.api import Api
from fabstir_node.embedding_model import convert, read_safetensors, source_dir
from fabstir_node.embeddings import MAX_TOKENS, Embedder, EmbeddingError
from fabstir_node.inference import Engine

from conftest import LiveServer

SENTENCES = [
    "How do I convert a string to an integer in Python?",
    "The cat sat on the mat.",
    "Stock markets fell sharply today",
]


def test_the_conversion_is_deterministic(embedder: Embedder, tmp_path: Path) -> None:
    again = convert(tmp_path / "again.gguf")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == embedder.sha256


def test_tokens_are_bert_word_pieces(embedder: Embedder) -> None:
    """The ids of bert-base-uncased's vocabulary, with [CLS] and [SEP] around."""
    llm = embedder._require()
    assert llm.tokenize(b"hello world", add_bos=True) == [101, 7592, 2088, 102]
    assert llm.tokenize(b"Embeddings", add_bos=True) == [101, 7861, 8270, 4667, 2015, 102]


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)).astype(np.float64))


def _norm(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-12) * w + b


def _reference(ids: list[int], t: dict[str, np.ndarray]) -> np.ndarray:
    """all-MiniLM-L6-v2 in float64 numpy, straight from the package's safetensors."""
    w = {k: v.astype(np.float64) for k, v in t.items() if v.dtype != np.int64}
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][: len(ids)]
    x = _norm(x + w[e + "token_type_embeddings.weight"][0], w[e + "LayerNorm.weight"],
              w[e + "LayerNorm.bias"])  # fmt: skip
    heads, size = 12, 32
    for layer in range(6):
        p = f"encoder.layer.{layer}."

        def dense(h: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return h @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (
            dense(x, f"attention.self.{n}").reshape(len(ids), heads, size).transpose(1, 0, 2)
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(size)
        att = np.exp(scores - scores.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        ctx = (att @ v).transpose(1, 0, 2).reshape(len(ids), heads * size)
        x = _norm(x + dense(ctx, "attention.output.dense"),
                  w[p + "attention.output.LayerNorm.weight"],
                  w[p + "attention.output.LayerNorm.bias"])  # fmt: skip
        x = _norm(x + dense(_gelu(dense(x, "intermediate.dense")), "output.dense"),
                  w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])  # fmt: skip
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def test_embeddings_match_a_numpy_bert(embedder: Embedder) -> None:
    """The GGUF computes what the safetensors weights compute (f16 costs < 0.001 of cosine)."""
    tensors = read_safetensors(source_dir() / "model.safetensors")
    ours = embedder.embed_now(SENTENCES)
    for sentence, vector in zip(SENTENCES, ours, strict=True):
        ids = embedder._require().tokenize(sentence.encode(), add_bos=True)
        assert float(np.dot(vector, _reference(ids, tensors))) > 0.999


def test_paraphrases_are_closer_than_unrelated_sentences(embedder: Embedder) -> None:
    a, b, c = embedder.embed_now(
        [SENTENCES[0], "What's the way to turn a str into an int in python?", SENTENCES[2]]
    )
    assert float(a @ b) > 0.7 > 0.2 > float(a @ c)
    assert np.allclose(np.linalg.norm(embedder.embed_now(SENTENCES), axis=1), 1.0, atol=1e-5)


def test_concurrent_requests_are_batched_and_each_gets_its_own_rows(embedder: Embedder) -> None:
    async def main() -> list[np.ndarray]:
        return await asyncio.gather(
            *(embedder.embed([s] * (i + 1)) for i, s in enumerate(SENTENCES))
        )

    alone = embedder.embed_now(SENTENCES)
    for i, rows in enumerate(asyncio.run(main())):
        assert rows.shape == (i + 1, 384)
        assert np.allclose(rows, alone[i], atol=1e-4)


def test_a_bad_text_fails_alone(embedder: Embedder) -> None:
    """One request's over-long text fails that request; a request batched with it is served."""

    async def main() -> tuple[Any, Any]:
        return tuple(
            await asyncio.gather(
                embedder.embed(["word " * (MAX_TOKENS + 10)]),
                embedder.embed([SENTENCES[1]]),
                return_exceptions=True,
            )
        )

    bad, good = asyncio.run(main())
    assert isinstance(bad, EmbeddingError) and "tokens" in str(bad)
    assert isinstance(good, np.ndarray) and good.shape == (1, 384)


# --------------------------------------------------------------------------- /v1/embeddings


@pytest.fixture(scope="module")
def api(engine: Engine, embedder: Embedder) -> Iterator[LiveServer]:
    server = LiveServer(Api(engine, "tiny", embedder=embedder))
    yield server
    server.close()


def test_the_openai_client_gets_embeddings(api: LiveServer, embedder: Embedder) -> None:
    client = openai.OpenAI(base_url=api.url + "/v1", api_key="unused")
    # The stock client asks for base64 unless told otherwise; both encodings work.
    for kwargs in ({}, {"encoding_format": "float"}):
        result = client.embeddings.create(model="all-minilm-l6-v2", input=SENTENCES, **kwargs)
        vectors = np.array([d.embedding for d in result.data], dtype=np.float32)
        assert [d.index for d in result.data] == [0, 1, 2]
        assert np.allclose(vectors, embedder.embed_now(SENTENCES), atol=1e-4)
        tokens = sum(embedder.count_tokens(s) for s in SENTENCES)
        assert result.usage.prompt_tokens == result.usage.total_tokens == tokens
    assert "all-minilm-l6-v2" in [m.id for m in client.models.list().data]


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"model": "other", "input": "x"}, 404, "not served here"),
        ({"model": "all-minilm-l6-v2", "input": ""}, 400, "input[0] is empty"),
        ({"model": "all-minilm-l6-v2", "input": ["ok", "word " * 600]}, 400, "input[1] has"),
        ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 1536}, 400, "384"),
        ({"model": "all-minilm-l6-v2", "input": ["x"] * 257}, 400, "1 to 256 texts"),
        ({"model": "all-minilm-l6-v2", "input": [1, 2, 3]}, 400, "input"),
    ],
)
def test_bad_embedding_requests_get_openai_errors(
    api: LiveServer, body: dict[str, Any], status: int, says: str
) -> None:
    import httpx

    response = httpx.post(api.url + "/v1/embeddings", json=body, timeout=30)
    assert response.status_code == status
    assert says in response.json()["error"]["message"]
