"""The audit service's own checks: what a host refuses to audit, and that what it audits is the
served model's verdict (the paid round trip is in integration-tests/test_audits.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fabstir_node.audits import AuditRefused, AuditService
from fabstir_node.inference import Engine, Finished, SamplingParams
from fabstir_sdk.digests import file_sha256
from fabstir_sdk.transcripts import ZERO_HASH, TranscriptRecord


def record(sha: bytes, prompt: list[int], completion: list[int]) -> TranscriptRecord:
    sampling = {"max_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": []}
    return TranscriptRecord(1, 0, ZERO_HASH, sha, tuple(prompt), tuple(completion), "", sampling)


def test_the_served_models_answers_pass_and_others_are_refused(
    tiny_gguf: Path, engine: Engine
) -> None:
    sha = file_sha256(tiny_gguf)
    service = AuditService(engine, sha)
    prompt = engine.text_prompt("the sea and the lighthouse")

    async def generate() -> list[int]:
        ids: list[int] = []
        async for event in engine.generate(prompt, SamplingParams(12, 0.0)):
            if not isinstance(event, Finished):
                ids += event.token_ids
        return ids

    answer = asyncio.run(generate())
    report = asyncio.run(service.audit(service.parse(record(sha, prompt, answer).encode())))
    assert report.passed and report.tokens == len(answer) > 0 and service.audited == 1
    # The prefill is a sequence of the engine's: a second look reuses the prompt's KV cache.
    cached = engine.prompt_tokens_cached
    again = asyncio.run(service.audit(record(sha, prompt, answer)))
    assert again.passed and engine.prompt_tokens_cached - cached == len(prompt) - 1
    bent = [(t + 1) % engine.n_vocab for t in answer]  # not what the model says
    report = asyncio.run(service.audit(record(sha, prompt, bent)))
    assert not report.passed

    refusals = {
        b"not cbor": "invalid_request",
        record(b"\x02" * 32, prompt, answer).encode(): "wrong_model",
        record(sha, [1] * engine.n_ctx, [2]).encode(): "context_length_exceeded",
    }
    for data, code in refusals.items():
        with pytest.raises(AuditRefused) as refused:
            service.parse(data)
        assert refused.value.code == code
    with pytest.raises(AuditRefused) as refused:
        asyncio.run(service.audit(record(sha, prompt, [10**6])))
    assert refused.value.code == "invalid_request"
