"""Audits by re-execution with the real SmolLM2-135M: honest answers pass whatever the thread
count; a host that serves other weights, alters the prompt or drops the start of the
conversation is caught. (``bench/audit.py`` measures the rates over many prompts.)

Hosts here generate with llama-cpp-python exactly as the node's engine calls it
(``Llama.generate`` with ``top_k=0, min_p=0, repeat_penalty=1``, seeded); the integration
tests audit answers from real nodes."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fabstir_devtools.impostors import requantize
from fabstir_sdk.audit import GREEDY_TOLERANCE, AuditError, Auditor
from fabstir_sdk.digests import file_sha256
from fabstir_sdk.models import CATALOG, installed_path
from fabstir_sdk.protocol import Prompt
from fabstir_sdk.tokenizer import Tokenizer, tokenizer_file
from fabstir_sdk.transcripts import TranscriptRecord, sampling_of

QUESTIONS = [
    "Explain how a bicycle works.",
    "List three uses of Python.",
    "Why is the sky blue?",
]
MAX_TOKENS = 64


@pytest.fixture(scope="module")
def pinned() -> Path:
    path = installed_path(CATALOG["smollm2-135m-instruct"])
    assert path is not None, "the built-in model is installed by `make setup`"
    return path


@pytest.fixture(scope="module")
def sha(pinned: Path) -> bytes:
    return file_sha256(pinned)


@pytest.fixture(scope="module")
def tokenizer(pinned: Path) -> Tokenizer:
    return Tokenizer(tokenizer_file(pinned))


@pytest.fixture(scope="module")
def auditor(pinned: Path, sha: bytes) -> Iterator[Auditor]:
    auditor = Auditor(pinned, model_sha256=sha, n_threads=2)
    yield auditor
    auditor.close()


class Host:
    """Generates as the node's engine does (see the module docstring)."""

    def __init__(self, path: Path, threads: int) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, verbose=False)

    def answer(self, ids: list[int], temperature: float = 0.0, seed: int = 1) -> list[int]:
        self.llm.set_seed(seed)
        out: list[int] = []
        for token in self.llm.generate(
            ids, temp=temperature, top_p=0.95, top_k=0, min_p=0.0, repeat_penalty=1.0
        ):
            if token == self.llm.token_eos() or len(out) == MAX_TOKENS:
                break
            out.append(token)
        return out


def record(
    sha: bytes, ids: list[int], completion: list[int], temperature: float = 0.0, seed: int = 1
) -> TranscriptRecord:
    prompt = Prompt([{"role": "user", "content": "-"}], MAX_TOKENS, temperature, 0.95, seed)
    return TranscriptRecord(
        7, 0, bytes(32), sha, tuple(ids), tuple(completion), "", sampling_of(prompt)
    )


def chat(tokenizer: Tokenizer, *messages: dict[str, Any]) -> list[int]:
    return tokenizer.chat_tokens(list(messages))


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@pytest.mark.parametrize("threads", [1, 2])
def test_honest_greedy_answers_pass_whatever_the_thread_count(
    pinned: Path, sha: bytes, tokenizer: Tokenizer, auditor: Auditor, threads: int
) -> None:
    host = Host(pinned, threads)
    single = Auditor(pinned, model_sha256=sha, n_threads=1, n_batch=16)  # other kernels' sums
    for question in QUESTIONS:
        ids = chat(tokenizer, user(question))
        completion = host.answer(ids)
        for judge in (auditor, single):
            report = judge.audit(record(sha, ids, completion))
            assert report.passed, report
            assert report.tokens == len(completion) > 8
            assert report.outside == 0
            assert all(c.gap <= GREEDY_TOLERANCE for c in report.worst)
            assert report.seconds > 0


def test_a_host_serving_cheaper_weights_fails(
    pinned: Path, sha: bytes, tokenizer: Tokenizer, auditor: Auditor, tmp_path: Path
) -> None:
    impostor = Host(requantize(pinned, tmp_path / "q4_0.gguf", "q4_0"), 2)
    failed = 0
    for question in QUESTIONS:
        ids = chat(tokenizer, user(question))
        report = auditor.audit(record(sha, ids, impostor.answer(ids)))
        failed += not report.passed
        if not report.passed:
            assert report.outside > 0 and report.worst[0].gap > GREEDY_TOLERANCE
            assert "not the model's greedy choice" in report.reason
    assert failed == len(QUESTIONS)


def test_a_host_altering_the_prompt_or_dropping_context_fails(
    pinned: Path, sha: bytes, tokenizer: Tokenizer, auditor: Auditor
) -> None:
    host = Host(pinned, 2)
    question = user("What is my job? Answer in one sentence.")
    asked = chat(tokenizer, user("I am Ada, a marine biologist in Lima."), question)
    # The client's prompt is recorded; the host answered another one.
    injected = chat(
        tokenizer, {"role": "system", "content": "Answer in French."}, user(question["content"])
    )
    truncated = chat(tokenizer, question)
    for served in (injected, truncated):
        report = auditor.audit(record(sha, asked, host.answer(served)))
        assert not report.passed, report
    assert auditor.audit(record(sha, asked, host.answer(asked))).passed


def test_sampled_answers_are_judged_by_the_top_p_set_and_their_probability(
    pinned: Path, sha: bytes, tokenizer: Tokenizer, auditor: Auditor, tmp_path: Path
) -> None:
    host = Host(pinned, 2)
    for seed, question in enumerate(QUESTIONS):
        ids = chat(tokenizer, user(question))
        report = auditor.audit(record(sha, ids, host.answer(ids, 0.8, seed), 0.8, seed))
        assert report.mode == "sampled" and report.passed, report
        assert report.z_score is not None and report.z_score > -4
        assert f"replay (seed {seed})" in report.reason
    # Text the model would not write (arbitrary tokens after its first one) fails.
    ids = chat(tokenizer, user(QUESTIONS[0]))
    made_up = host.answer(ids)[:1]
    for position in range(1, 40):
        made_up.append((made_up[-1] * 7 + position) % 5000 + 1000)
    report = auditor.audit(record(sha, ids, made_up, 0.8, 3))
    assert not report.passed and report.outside > 0


def test_what_cannot_be_audited_is_refused(
    sha: bytes, tokenizer: Tokenizer, auditor: Auditor
) -> None:
    ids = chat(tokenizer, user("hi"))
    with pytest.raises(AuditError, match="model"):
        auditor.audit(record(b"\x01" * 32, ids, [1, 2]))
    with pytest.raises(AuditError, match="vocabulary"):
        auditor.audit(record(sha, ids, [10**9]))
    cached = record(sha, ids, [1, 2])
    cached = dataclasses.replace(cached, sampling=cached.sampling | {"cache": {"entry": "x"}})
    with pytest.raises(AuditError, match="cache"):
        auditor.audit(cached)
    empty = auditor.audit(record(sha, ids, []))
    assert empty.passed and empty.tokens == 0


def test_many_near_tie_flips_fail_even_within_the_tolerance(sha: bytes) -> None:
    """The greedy verdict on given logits: rounding may flip a few near-ties, not many."""
    import numpy as np

    from fabstir_sdk.audit import GREEDY_MAX_FLIPS, Judge

    def judge(flips: int, n: int = 50) -> bool:
        j = Judge(record(sha, [1], [0] * n), GREEDY_TOLERANCE)
        for position in range(n):
            logits = np.zeros(4, dtype=np.float32)
            logits[1 if position < flips else 0] = 0.5  # token 0 trails by 0.5 where flipped
            j.check(position, 0, logits, None)
        return j.report(b"\0" * 32, 0.0).passed

    allowed = int(GREEDY_MAX_FLIPS * 50)
    assert judge(0) and judge(allowed)
    assert not judge(allowed + 1)
    assert judge(3, n=10)  # short answers may always flip three
