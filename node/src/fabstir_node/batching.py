"""Continuous batching: every live generation is a sequence in one llama.cpp batch.

One worker thread owns the llama.cpp context. Each step it builds one batch: the next token of
every sequence that is generating (and has credit), then, in the room left, a chunk of the
prompt of sequences that are starting, oldest first. One decode evaluates them all; each
sequence then draws its own next token with its own sampler. A request joins at any step and
leaves at any step (finished, cancelled, out of credit), so no one waits for another's answer
to end, and a long prompt stalls the others for at most one chunk. An audit's prefill is a
request that only evaluates its tokens, showing their logits to a visitor.

Requests beyond ``parallel`` live sequences wait in a FIFO queue of ``queue_size``; beyond
that they are refused with an estimate of when a slot frees.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fabstir_node.generation import (
    CreditGate,
    EngineError,
    EngineNotReady,
    Event,
    Finished,
    FinishReason,
    QueueFull,
    SamplingParams,
    StopMatcher,
    TokenChunk,
    Usage,
)
from fabstir_node.kv_cache import PrefixCache
from fabstir_node.llama_context import BatchRow, LlamaContext
from fabstir_sdk.sampling import Sampler

__all__ = ["Request", "Scheduler", "Visitor"]

#: Called in the worker for each position of a scored prompt: (position, its next-token logits
#: as a numpy view valid only during the call, the llama.cpp context, the row in the batch).
Visitor = Callable[[int, Any, Any, int], None]


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Event | BaseException]
    gate: CreditGate | None = None
    # A scoring request evaluates its prompt only, showing ``score`` the logits at every
    # position from ``score_from`` on (an audit's prefill), and generates nothing.
    score: Visitor | None = None
    score_from: int = 0
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued_at: float = field(default_factory=time.perf_counter)

    def post(self, event: Event | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the caller's loop is gone: nobody to tell
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class _Sequence:
    """A request being served: its KV sequence, sampler and text decoding state."""

    def __init__(self, request: Request, seq: int, cached: int) -> None:
        params = request.params
        self.request = request
        self.seq = seq
        self.cached = cached
        self.todo = request.prompt[cached:]  # prompt tokens not yet evaluated
        self.n_past = cached  # positions in the KV cache
        seed = params.seed if params.seed is not None else random.getrandbits(31)
        self.sampler = (  # a scored prompt draws nothing
            None
            if request.score is not None
            else Sampler(max(params.temperature, 0.0), params.top_p, seed)
        )
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = StopMatcher(params.stop)
        self.next: int | None = None  # drawn, to be evaluated for the token after it
        self.generated = 0
        self.unsent: list[int] = []  # token ids behind text not yet released
        self.started = time.perf_counter()
        self.first: float | None = None
        self.stalled_since: float | None = None  # waiting for credit since

    def has_credit(self) -> bool:
        gate = self.request.gate
        return gate is None or gate.allows(self.generated + 1)


class Scheduler:
    def __init__(
        self,
        llama: LlamaContext,
        piece: Callable[[int], bytes],
        *,
        parallel: int,
        queue_size: int,
        prompt_chunk: int,
        prompt_cache: bool = True,
    ) -> None:
        if llama.n_seq < parallel:
            raise ValueError("the KV cache needs a sequence per parallel slot")
        self.llama = llama
        self._piece = piece  # a token's text (special tokens render as nothing)
        self.parallel = parallel
        self.queue_size = queue_size
        self.prompt_chunk = prompt_chunk
        self.prompt_cache = prompt_cache
        self.cache = PrefixCache(parallel, llama.n_seq, llama.forget, llama.copy)
        self._waiting: deque[Request] = deque()
        self._live: list[_Sequence] = []
        self._cond = threading.Condition()
        self._dirty = False
        self._stopping = False
        self._step_lock = threading.Lock()  # held while the KV cache changes
        self._rate = 0.0  # recent tokens/s across all sequences
        self._thread = threading.Thread(target=self._run, name="llama-worker", daemon=True)
        self._warm = threading.Event()
        self._warm_up_tokens: list[int] = []
        self.warmup_s = 0.0
        # Counters for metrics and tests.
        self.generated_tokens = 0
        self.cancelled_jobs = 0
        self.prompt_tokens_evaluated = 0
        self.prompt_tokens_cached = 0

    # ----------------------------------------------------------------- from any thread

    def start(self, warm_up: list[int]) -> float:
        """Start the worker; returns once it has warmed the model up on the ``warm_up`` tokens,
        with the seconds taken."""
        self._warm_up_tokens = warm_up
        self._thread.start()
        self._warm.wait()
        return self.warmup_s

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=10)

    def submit(self, request: Request) -> None:
        with self._cond:
            if len(self._waiting) + len(self._live) >= self.parallel + self.queue_size:
                raise QueueFull(
                    f"all {self.parallel} slots and {self.queue_size} queue places are taken; "
                    f"retry in {self.retry_after()} s",
                    self.retry_after(),
                )
            self._waiting.append(request)
            self._dirty = True
            self._cond.notify()
        if request.gate is not None:
            request.gate.notify(self.wake)

    def cancel(self, request: Request) -> None:
        request.cancelled.set()
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    @property
    def live(self) -> int:
        return len(self._live)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def retry_after(self) -> int:
        """Seconds until a request arriving now would get a slot, at the current speed."""
        live = list(self._live)
        per_sequence = self._rate / max(len(live), 1)
        if not live or per_sequence <= 0:
            return 1
        frees = sorted((s.request.max_tokens - s.generated) / per_sequence for s in live)
        ahead = min(len(self._waiting), len(frees) - 1)
        return max(1, min(120, math.ceil(frees[ahead])))

    def kv_positions(self) -> dict[int, int]:
        """Positions each sequence holds in llama.cpp's KV cache (non-empty ones only)."""
        with self._step_lock:
            held = {s: self.llama.positions(s) for s in range(self.llama.n_seq)}
        return {s: n for s, n in held.items() if n > 0}

    # ----------------------------------------------------------------- the worker

    def _warm_up(self) -> None:
        """Run the model once before serving: the first decode pages in the weights and sets
        up llama.cpp's buffers (~480 ms against ~35 ms after), which no paying client should
        wait for. Both kernel paths are warmed: a batch of prompt tokens, then single steps.
        It runs on this thread because the thread that decodes owns llama.cpp's OpenMP team:
        decoding from a second thread ran batches at 60% of the speed."""
        started = time.perf_counter()
        llama, tokens = self.llama, self._warm_up_tokens
        try:
            llama.decode([BatchRow(t, i, 0, i == len(tokens) - 1) for i, t in enumerate(tokens)])
            for step in range(2):
                llama.decode([BatchRow(tokens[-1], len(tokens) + step, 0, True)])
            llama.clear()
        finally:
            self.warmup_s = time.perf_counter() - started
            self._warm.set()

    def _run(self) -> None:
        self._warm_up()
        while True:
            with self._cond:
                if self._stopping:
                    break
                self._dirty = False
            try:
                with self._step_lock:
                    worked = self._step()
            except Exception as exc:  # never let one request kill the worker
                self._fail_all(EngineError(f"generation failed: {exc}"))
                worked = False
            if not worked:
                with self._cond:
                    self._cond.wait_for(
                        lambda: self._dirty or self._stopping, timeout=self._next_deadline()
                    )
        for seq in list(self._live):
            self._finish(seq, "cancelled")
        with self._cond:
            for request in self._waiting:
                request.post(EngineNotReady("the engine stopped"))
            self._waiting.clear()

    def _next_deadline(self) -> float | None:
        """Seconds until the first stalled sequence runs out of patience."""
        deadlines = [
            s.stalled_since + s.request.gate.timeout - time.perf_counter()
            for s in self._live
            if s.stalled_since is not None and s.request.gate is not None
        ]
        return max(min(deadlines), 0.0) + 0.001 if deadlines else None

    def _step(self) -> bool:
        """One batch: end, admit, evaluate, draw. Returns whether anything was evaluated."""
        self._end_stopped()
        self._admit()
        self._pack()
        rows, drawers, evaluated = self._build()
        if not rows:
            return False
        started = time.perf_counter()
        status = self.llama.decode(rows)
        if status != 0:
            error = EngineError(f"llama.cpp could not evaluate the batch (status {status})")
            for seq in evaluated:
                seq.request.post(error)
                self._release(seq, keep=False)
            return True
        for seq, tokens in evaluated.items():
            self.cache.extend(seq.seq, tokens)
            seq.n_past += len(tokens)
            if seq.next is None:  # a prompt chunk
                del seq.todo[: len(tokens)]
                self.prompt_tokens_evaluated += len(tokens)
        for seq, row in drawers:
            if seq.sampler is not None:
                self._accept(seq, seq.sampler.sample(self.llama.ctx, row))
            elif seq in self._live:
                self._score(seq, row, rows[row].pos)
        for seq in evaluated:
            if seq.request.score is not None and not seq.todo and seq in self._live:
                self._finish(seq, "stop")
        seconds = time.perf_counter() - started
        drawn = sum(1 for seq, _ in drawers if seq.request.score is None)
        if seconds > 0 and drawn:
            self._rate = 0.8 * self._rate + 0.2 * (drawn / seconds)
        return True

    def _end_stopped(self) -> None:
        now = time.perf_counter()
        for seq in list(self._live):
            gate = seq.request.gate
            if seq.request.cancelled.is_set():
                self._finish(seq, "cancelled")
            elif (
                gate is not None
                and seq.stalled_since is not None
                and now - seq.stalled_since >= gate.timeout
            ):
                self._finish(seq, "credit")

    def _admit(self) -> None:
        while len(self._live) < self.parallel:
            with self._cond:
                if not self._waiting:
                    return
                request = self._waiting.popleft()
            if request.cancelled.is_set():
                continue  # its caller is gone
            # A scored position must be evaluated, so only what precedes them may be reused.
            limit = request.score_from if request.score is not None else None
            try:
                reuse = self.cache.acquire(request.prompt, limit)
            except Exception as exc:  # tell its caller; the others go on
                request.post(EngineError(f"no KV cache sequence for the request: {exc}"))
                continue
            self.prompt_tokens_cached += reuse.cached
            self._live.append(_Sequence(request, reuse.seq, reuse.cached))

    def _pack(self) -> None:
        """Keep live sequences in the lowest slots: move the highest into a gap below it."""
        while self._live:
            top = max(self._live, key=lambda s: s.seq)
            taken = {s.seq for s in self._live}
            gap = next(i for i in range(len(self._live) + 1) if i not in taken)
            if gap > top.seq:
                return
            self.cache.move(top.seq, gap)
            top.seq = gap

    def _build(
        self,
    ) -> tuple[list[BatchRow], list[tuple[_Sequence, int]], dict[_Sequence, list[int]]]:
        """The batch: each generating sequence's next token, then prompt chunks (oldest
        request first) in the room left. Returns the rows, which rows draw a token (or are
        scored) for whom, and what each sequence evaluates."""
        evaluated: dict[_Sequence, list[int]] = {}
        now = time.perf_counter()
        for seq in self._live:
            if seq.next is not None and self._may_run(seq, now):
                evaluated[seq] = [seq.next]
        room = self.llama.n_batch - len(evaluated)
        if evaluated:  # others are generating: keep their stall to one chunk
            room = min(room, self.prompt_chunk)
        for seq in self._live:
            if seq.next is None and room > 0 and self._may_run(seq, now):
                evaluated[seq] = seq.todo[:room]
                room -= len(evaluated[seq])
        # Rows in sequence order: llama.cpp splits a batch whose sequences come out of order
        # into many small ones (8 sequences in reverse order decode at 40% of the speed).
        rows: list[BatchRow] = []
        drawers: list[tuple[_Sequence, int]] = []
        for seq in sorted(evaluated, key=lambda s: s.seq):
            for i, token in enumerate(evaluated[seq]):
                pos = seq.n_past + i
                if drawn := self._wants_logits(seq, pos, i == len(evaluated[seq]) - 1):
                    drawers.append((seq, len(rows)))
                rows.append(BatchRow(token, pos, seq.seq, drawn))
        return rows, drawers, evaluated

    @staticmethod
    def _may_run(seq: _Sequence, now: float) -> bool:
        """Whether ``seq`` has credit for its next token; when not, since when it waits."""
        if seq.has_credit():
            seq.stalled_since = None
            return True
        seq.stalled_since = seq.stalled_since or now
        return False

    @staticmethod
    def _wants_logits(seq: _Sequence, pos: int, last_in_chunk: bool) -> bool:
        """A generating sequence draws after its last token; a scored one at every position
        from ``score_from`` on."""
        if seq.request.score is not None:
            return pos >= seq.request.score_from
        return seq.next is not None or (last_in_chunk and pos == len(seq.request.prompt) - 1)

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Sequence ``seq`` drew ``token``: release its text, or end the answer."""
        request = seq.request
        seq.next = None
        if token in self.llama.eog:
            self._finish(seq, "stop")
            return
        seq.generated += 1
        self.generated_tokens += 1
        seq.unsent.append(token)
        text, hit = seq.stops.feed(seq.decoder.decode(self._piece(token)))
        if text:
            if seq.first is None:
                seq.first = time.perf_counter() - request.enqueued_at
            request.post(TokenChunk(text, seq.generated, tuple(seq.unsent)))
            seq.unsent.clear()
        if hit:
            self._finish(seq, "stop")
        elif seq.generated >= request.max_tokens:
            self._finish(seq, "length")
        else:
            seq.next = token

    def _score(self, seq: _Sequence, row: int, pos: int) -> None:
        assert seq.request.score is not None
        try:
            seq.request.score(pos, self.llama.logits(row), self.llama.ctx, row)
        except Exception as exc:  # the visitor's failure ends its request, nobody else's
            seq.request.post(EngineError(f"scoring failed: {exc}"))
            self._release(seq, keep=False)

    def _finish(self, seq: _Sequence, reason: FinishReason) -> None:
        request = seq.request
        if reason == "cancelled":
            self.cancelled_jobs += 1
        else:
            tail = seq.stops.flush() + seq.decoder.decode(b"", final=True)
            if tail or seq.unsent:
                request.post(TokenChunk(tail, seq.generated, tuple(seq.unsent)))
        usage = Usage(len(request.prompt), seq.generated)
        seconds = time.perf_counter() - seq.started
        request.post(Finished(reason, usage, seconds, seq.first, seq.cached))
        # A cancelled answer's KV goes at once; a finished one stays for the next turn.
        self._release(seq, keep=reason != "cancelled" and self.prompt_cache)

    def _release(self, seq: _Sequence, keep: bool) -> None:
        self._live.remove(seq)
        self.cache.release(seq.seq, keep)
        if seq.sampler is not None:
            seq.sampler.close()

    def _fail_all(self, error: EngineError) -> None:
        for seq in list(self._live):
            seq.request.post(error)
            with contextlib.suppress(Exception):
                self._release(seq, keep=False)
