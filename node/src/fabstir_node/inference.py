"""The llama.cpp engine: one model serving many generations at once, streamed token by token.

Callers on the event loop submit a prompt and get its tokens through an asyncio queue; one
worker thread (:mod:`fabstir_node.batching`) decodes every live generation in one llama.cpp
batch, and keeps each finished conversation's KV cache for its next turn
(:mod:`fabstir_node.kv_cache`). Cancellation takes effect before the next token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from fabstir_node.batching import Request, Scheduler, Visitor
from fabstir_node.generation import (
    CreditGate,
    EngineError,
    EngineNotReady,
    Event,
    Finished,
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SamplingParams,
    StopMatcher,
    TokenChunk,
    Usage,
)
from fabstir_node.llama_context import LlamaContext, LlamaLoadError
from fabstir_sdk.tokenizer import Tokenizer, TokenizerError, tokenizer_file

__all__ = [
    "CreditGate",
    "Engine",
    "EngineError",
    "EngineNotReady",
    "Finished",
    "InvalidRequest",
    "PromptTooLong",
    "QueueFull",
    "SamplingParams",
    "StopMatcher",
    "TokenChunk",
    "Usage",
]

#: Prompt tokens evaluated per step while other sequences are generating: the longest a
#: newcomer's prompt delays everyone else's next token is one chunk of this size.
PROMPT_CHUNK = 128
#: Sequences in the KV cache per parallel slot, when no memory budget is given: the slot's own
#: and one to store a finished conversation in.
CACHED_PER_SLOT = 2
#: What the worker evaluates before it takes requests.
WARM_UP_TEXT = "Hello, this is the engine warming up."


class Engine:
    """A loaded GGUF model, its multi-sequence KV cache and the batching worker."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int = 2048,
        n_batch: int = 512,
        n_threads: int = 1,
        n_threads_batch: int | None = None,
        parallel: int = 4,
        queue_size: int = 8,
        kv_cache_mb: int | None = None,
        n_gpu_layers: int = 0,
        prompt_chunk: int = PROMPT_CHUNK,
        prompt_cache: bool = True,
        chat_template: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.n_ctx = n_ctx  # per conversation
        self.n_batch = min(n_batch, n_ctx)
        self.n_threads = n_threads
        self.n_threads_batch = n_threads_batch or n_threads
        self.parallel = parallel
        self.queue_size = queue_size
        self.kv_cache_mb = kv_cache_mb
        self.n_gpu_layers = n_gpu_layers
        self.prompt_chunk = prompt_chunk
        self.prompt_cache = prompt_cache
        self._template_override = chat_template
        self._scheduler: Scheduler | None = None
        self.tokenizer: Tokenizer | None = None  # what clients count prompts with
        self.tokenizer_file = b""
        self.warmup_s: float | None = None  # how long the warm-up before `ready` took
        self.gpu_layers = 0  # layers llama.cpp offloaded to a GPU (0: CPU only)

    # ----------------------------------------------------------------- lifecycle

    @property
    def ready(self) -> bool:
        return self._scheduler is not None

    @property
    def queue_depth(self) -> int:
        """Requests running or waiting."""
        s = self._scheduler
        return 0 if s is None else s.live + s.waiting

    @property
    def running(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.live

    @property
    def capacity(self) -> int:
        """Requests it takes at once: the parallel slots and the queue behind them."""
        return self.parallel + self.queue_size

    @property
    def n_seq(self) -> int:
        """Sequences in the KV cache: the live ones and the conversations kept for later."""
        return 0 if self._scheduler is None else self._scheduler.llama.n_seq

    def load(self) -> None:
        """Load the model (blocking: call it in a thread), warm it up, start the worker."""
        self.tokenizer_file = tokenizer_file(self.model_path)
        self.tokenizer = tokenizer = Tokenizer(self.tokenizer_file)
        if self._template_override:
            tokenizer.set_chat_template(self._template_override)
        try:
            llama = LlamaContext(self.model_path, n_gpu_layers=self.n_gpu_layers)
        except LlamaLoadError as exc:
            raise EngineError(str(exc)) from None
        try:
            llama.open(
                n_ctx=self.n_ctx,
                n_seq=self._sequences(llama.kv_bytes_per_token()),
                n_batch=self.n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads_batch,
            )
        except (LlamaLoadError, EngineError) as exc:
            llama.close()
            raise EngineError(str(exc)) from None
        self.gpu_layers = llama.gpu_layers
        scheduler = Scheduler(
            llama,
            lambda token: tokenizer.piece(token, special=False),
            parallel=self.parallel,
            queue_size=self.queue_size,
            prompt_chunk=self.prompt_chunk,
            prompt_cache=self.prompt_cache,
        )
        # The worker warms the model up before it takes requests.
        warm_up = tokenizer.tokenize(WARM_UP_TEXT, add_special=True, parse_special=False)
        self.warmup_s = scheduler.start(warm_up)
        self._scheduler = scheduler

    def _sequences(self, kv_bytes_per_token: int) -> int:
        """KV sequences to allocate: ``kv_cache_mb`` worth, or two per slot; at least one per
        slot (more store finished conversations)."""
        if self.kv_cache_mb is None:
            return min(256, self.parallel * CACHED_PER_SLOT)
        per_sequence = kv_bytes_per_token * self.n_ctx
        n = self.kv_cache_mb * 2**20 // per_sequence
        if n < self.parallel:
            raise EngineError(
                f"kv_cache_mb = {self.kv_cache_mb} holds {n} conversations of {self.n_ctx} "
                f"tokens ({per_sequence / 2**20:.0f} MiB each); it needs one per slot "
                f"(parallel = {self.parallel}): raise it, or lower parallel or n_ctx"
            )
        return min(256, n)

    def close(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()
            self._scheduler.llama.close()
            self._scheduler = None

    # ----------------------------------------------------------------- prompts

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Tokens of ``messages`` rendered with the model's chat template, counted by the same
        :class:`~fabstir_sdk.tokenizer.Tokenizer` a paying client counts them with."""
        self._loaded()
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
        self._loaded()
        assert self.tokenizer is not None
        return self.tokenizer.tokenize(text, add_special=True, parse_special=False)

    @property
    def n_vocab(self) -> int:
        return self._loaded().llama.n_vocab

    def check_ids(self, tokens: Sequence[int]) -> None:
        """Raise :class:`InvalidRequest` for a token id outside the model's vocabulary."""
        n_vocab = self.n_vocab
        if any(not 0 <= t < n_vocab for t in tokens):
            raise InvalidRequest("token ids outside the model's vocabulary")

    # ----------------------------------------------------------------- generation

    async def generate(
        self, prompt: list[int], params: SamplingParams, gate: CreditGate | None = None
    ) -> AsyncIterator[Event]:
        """Stream :class:`TokenChunk` events, then one :class:`Finished`.

        Leaving the iterator early (``break``, cancellation of the consuming task, a closed
        client) cancels the generation before its next token and frees its KV cache.
        """
        scheduler = self._loaded()
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        self.check_ids(prompt)
        room = self.n_ctx - len(prompt)
        if room <= 0:
            raise PromptTooLong(
                f"the prompt has {len(prompt)} tokens but the context holds {self.n_ctx}"
            )
        if params.max_tokens is not None and params.max_tokens <= 0:
            raise InvalidRequest("max_tokens must be positive")
        limit = min(room, params.max_tokens) if params.max_tokens else room
        request = Request(prompt, params, limit, asyncio.get_running_loop(), asyncio.Queue(), gate)
        scheduler.submit(request)
        try:
            while True:
                event = await request.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            scheduler.cancel(request)

    async def score(self, tokens: list[int], score_from: int, visit: Visitor) -> Finished:
        """Evaluate ``tokens`` as a sequence in the batch, calling ``visit`` in the worker with
        the logits at each position from ``score_from`` on (an audit's prefill: its prompt
        prefix may come from the KV cache like any conversation's). Nothing is generated."""
        scheduler = self._loaded()
        if not 0 <= score_from < len(tokens):
            raise InvalidRequest("nothing to score")
        self.check_ids(tokens)
        if len(tokens) > self.n_ctx:
            raise PromptTooLong(f"{len(tokens)} tokens, but the context holds {self.n_ctx}")
        loop = asyncio.get_running_loop()
        request = Request(
            tokens, SamplingParams(), 0, loop, asyncio.Queue(), score=visit, score_from=score_from
        )
        scheduler.submit(request)
        try:
            event = await request.events.get()
            if isinstance(event, BaseException):
                raise event
            assert isinstance(event, Finished)
            return event
        finally:
            scheduler.cancel(request)

    # ----------------------------------------------------------------- for metrics and tests

    @property
    def generated_tokens(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.generated_tokens

    @property
    def cancelled_jobs(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.cancelled_jobs

    @property
    def prompt_tokens_evaluated(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.prompt_tokens_evaluated

    @property
    def prompt_tokens_cached(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.prompt_tokens_cached

    @property
    def cached_conversations(self) -> int:
        return 0 if self._scheduler is None else self._scheduler.cache.idle

    def kv_positions(self) -> dict[int, int]:
        """Positions each KV sequence holds, as llama.cpp reports them (non-empty only)."""
        return self._loaded().kv_positions()

    def _loaded(self) -> Scheduler:
        if self._scheduler is None:
            raise EngineNotReady("the model is still loading")
        return self._scheduler
