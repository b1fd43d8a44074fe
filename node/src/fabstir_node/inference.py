"""The llama.cpp engine: one model, one generation at a time, streamed token by token.

llama.cpp contexts are not thread-safe, so a single worker thread owns the model and takes
jobs from a bounded queue; callers on the event loop get tokens through an asyncio queue and
never block it. A job is cancelled between two tokens, so cancellation costs at most one.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import queue
import random
import threading
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fabstir_node.errors import EXIT_MODEL, NodeError
from fabstir_sdk.protocol import Usage
from fabstir_sdk.tokenizer import Tokenizer, TokenizerError, tokenizer_file

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before llama.cpp's OpenMP starts

__all__ = [
    "CreditGate",
    "Engine",
    "EngineError",
    "Finished",
    "SamplingParams",
    "TokenChunk",
    "Usage",
]

FinishReason = Literal["stop", "length", "cancelled", "credit"]


class EngineError(NodeError):
    """A request the engine cannot run; ``kind`` is stable for metrics and wire errors."""

    kind = "engine_error"
    exit_code = EXIT_MODEL  # at start: the model cannot be run


class QueueFull(EngineError):
    kind = "busy"


class PromptTooLong(EngineError):
    kind = "context_length_exceeded"


class InvalidRequest(EngineError):
    kind = "invalid_request"


class EngineNotReady(EngineError):
    kind = "not_ready"


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class TokenChunk:
    """Text released to the caller; ``completion_tokens`` counts every token generated so far.

    ``token_ids`` are the tokens behind ``text`` (and any held back before it), so another host
    with the same model can continue an answer exactly where this one stopped."""

    text: str
    completion_tokens: int
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    usage: Usage
    generation_s: float
    time_to_first_token_s: float | None


Event = TokenChunk | Finished


class CreditGate:
    """How many completion tokens the payer has covered; generation waits at the limit.

    A paid session raises the limit as vouchers arrive. The worker waits *before* computing
    the next token, so an unpaid host never spends compute beyond its credit window; after
    ``timeout`` seconds without credit the answer ends with finish reason ``credit``.
    """

    def __init__(self, allowed: int, timeout: float) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self._cond = threading.Condition()

    def extend(self, allowed: int) -> None:
        with self._cond:
            if allowed > self.allowed:
                self.allowed = allowed
                self._cond.notify_all()

    def wait_for(self, token_number: int, cancelled: threading.Event) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: token_number <= self.allowed or cancelled.is_set(), self.timeout
            )

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()


@dataclass
class _Job:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event | BaseException]
    gate: CreditGate | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        self.cancelled.set()
        if self.gate is not None:
            self.gate.wake()

    def may_generate(self, token_number: int) -> bool:
        return self.gate is None or self.gate.wait_for(token_number, self.cancelled)


class _StopMatcher:
    """Holds back text that could be the start of a stop string, so none is ever emitted."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        self.pending += text
        for stop in self.stops:
            if (index := self.pending.find(stop)) >= 0:
                out, self.pending = self.pending[:index], ""
                return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:size]):
                    hold = max(hold, size)
                    break
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Engine:
    """A loaded GGUF model with a worker thread and a bounded request queue."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 1,
        n_threads_batch: int | None = None,
        queue_size: int = 8,
        chat_template: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx
        self._llama_kwargs: dict[str, Any] = {
            "model_path": str(model_path),
            "n_ctx": n_ctx,
            "n_batch": min(n_batch, n_ctx),
            "n_threads": n_threads,
            "n_threads_batch": n_threads_batch or n_threads,
            "verbose": False,
        }
        self._template_override = chat_template
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._llm: Any = None
        self.tokenizer: Tokenizer | None = None  # what clients count prompts with
        self.tokenizer_file = b""
        self._eog: set[int] = set()
        self._worker: threading.Thread | None = None
        self.running = 0
        self.generated_tokens = 0  # every token the model produced, for metrics and tests
        self.cancelled_jobs = 0

    # ----------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return self._llm is not None

    @property
    def queue_depth(self) -> int:
        return self._jobs.qsize() + self.running

    @property
    def capacity(self) -> int:
        """Requests it takes at once: the one running and the queue behind it."""
        return self._jobs.maxsize + 1

    def load(self) -> None:
        """Load the model (blocking: call it in a thread) and start the worker."""
        from llama_cpp import Llama

        llm = Llama(**self._llama_kwargs)
        self.tokenizer_file = tokenizer_file(self.model_path)
        self.tokenizer = Tokenizer(self.tokenizer_file)
        if self._template_override:
            self.tokenizer.set_chat_template(self._template_override)
        self._eog = {t for t in range(llm.n_vocab()) if _is_eog(llm, t)}
        self._llm = llm
        self._worker = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._worker.start()

    def close(self) -> None:
        if self._worker is not None:
            with contextlib.suppress(queue.Full):
                self._jobs.put_nowait(None)
            self._worker.join(timeout=10)
            self._worker = None
        self._llm = None

    # ----------------------------------------------------------------- prompts

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Tokens of ``messages`` rendered with the model's chat template, counted by the same
        :class:`~fabstir_sdk.tokenizer.Tokenizer` a paying client counts them with."""
        self._require()
        assert self.tokenizer is not None
        try:
            return self.tokenizer.chat_tokens(messages)
        except TokenizerError as exc:
            raise InvalidRequest(
                f"{exc}; use /v1/completions or configure chat_template"
                if "no chat template" in str(exc)
                else str(exc)
            ) from exc

    def text_prompt(self, text: str) -> list[int]:
        return list(self._require().tokenize(text.encode(), add_bos=True, special=False))

    @property
    def n_vocab(self) -> int:
        return int(self._require().n_vocab())

    # ----------------------------------------------------------------- generation

    async def generate(
        self, prompt: list[int], params: SamplingParams, gate: CreditGate | None = None
    ) -> AsyncIterator[Event]:
        """Stream :class:`TokenChunk` events, then one :class:`Finished`.

        Leaving the iterator early (``break``, cancellation of the consuming task, a closed
        client) cancels the generation before its next token.
        """
        self._require()
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx}"
            )
        if params.max_tokens is not None and params.max_tokens <= 0:
            raise InvalidRequest("max_tokens must be positive")
        limit = min(room, params.max_tokens) if params.max_tokens else room
        loop = asyncio.get_running_loop()
        job = _Job(prompt, params, limit, loop, asyncio.Queue(), gate)
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(
                f"all {self._jobs.maxsize} queue slots are taken; retry later"
            ) from None
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            job.cancel()

    def _require(self) -> Any:
        if self._llm is None:
            raise EngineNotReady("the model is still loading")
        return self._llm

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if job.cancelled.is_set():
                continue
            self.running = 1
            try:
                self._generate(job)
            except Exception as exc:  # never let one request kill the worker
                _post(job, EngineError(f"generation failed: {exc}"))
            finally:
                self.running = 0

    def _generate(self, job: _Job) -> None:
        llm = self._llm
        params = job.params
        llm.set_seed(params.seed if params.seed is not None else random.getrandbits(31))
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = _StopMatcher(params.stop)
        generated = 0
        pending: list[int] = []
        reason: FinishReason = "length"
        started = time.perf_counter()
        first: float | None = None
        if not job.may_generate(1):
            reason = "cancelled" if job.cancelled.is_set() else "credit"
            _post(job, Finished(reason, Usage(len(job.prompt), 0), 0.0, None))
            return
        tokens = llm.generate(
            job.prompt,
            temp=max(params.temperature, 0.0),
            top_p=params.top_p,
            top_k=0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                if token in self._eog:
                    reason = "stop"
                    break
                generated += 1
                self.generated_tokens += 1
                pending.append(token)
                text, hit = stops.feed(decoder.decode(llm.detokenize([token])))
                if text:
                    if first is None:
                        first = time.perf_counter() - job.enqueued_at
                    _post(job, TokenChunk(text, generated, tuple(pending)))
                    pending.clear()
                if hit:
                    reason = "stop"
                    break
                if generated >= job.max_tokens:
                    break
                if not job.may_generate(generated + 1):
                    reason = "cancelled" if job.cancelled.is_set() else "credit"
                    break
        finally:
            tokens.close()
        tail = stops.flush() + decoder.decode(b"", final=True)
        if (tail or pending) and reason != "cancelled":
            _post(job, TokenChunk(tail, generated, tuple(pending)))
        if reason == "cancelled":
            self.cancelled_jobs += 1
        usage = Usage(len(job.prompt), generated)
        _post(job, Finished(reason, usage, time.perf_counter() - started, first))


def _post(job: _Job, event: Event | BaseException) -> None:
    with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody to tell
        job.loop.call_soon_threadsafe(job.events.put_nowait, event)


def _is_eog(llm: Any, token: int) -> bool:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    return bool(llama_cpp.llama_vocab_is_eog(vocab, token))
