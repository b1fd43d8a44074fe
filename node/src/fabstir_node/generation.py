"""What a generation request is and what its stream yields: sampling parameters, the credit
gate a paid session meters it with, the events, the stop-string filter and the errors.

The engine (:mod:`fabstir_node.inference`) runs requests; these types are what its callers
(sessions, the HTTP API, batch jobs) hand it and get back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from fabstir_node.errors import EXIT_MODEL, NodeError
from fabstir_sdk.protocol import Usage

__all__ = [
    "CreditGate",
    "EngineError",
    "EngineNotReady",
    "Event",
    "FinishReason",
    "Finished",
    "InvalidRequest",
    "PromptTooLong",
    "QueueFull",
    "SamplingParams",
    "StopMatcher",
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

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds until a slot is expected to free


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
    cached_tokens: int = 0  # prompt tokens found in the KV cache, not evaluated again


Event = TokenChunk | Finished


class CreditGate:
    """How many completion tokens the payer has covered; generation pauses at the limit.

    A paid session raises the limit as vouchers arrive. The engine checks the gate *before*
    computing the next token, so an unpaid host never spends compute beyond its credit window,
    and a paused sequence costs the others in the batch nothing. After ``timeout`` seconds
    without credit the answer ends with finish reason ``credit``.
    """

    def __init__(self, allowed: int, timeout: float) -> None:
        self.allowed = allowed
        self.timeout = timeout
        self._on_extend: Callable[[], None] | None = None

    def extend(self, allowed: int) -> None:
        if allowed > self.allowed:
            self.allowed = allowed
            if self._on_extend is not None:
                self._on_extend()

    def allows(self, token_number: int) -> bool:
        return token_number <= self.allowed

    def notify(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` whenever credit arrives (the engine's worker, to resume at once)."""
        self._on_extend = wake


class StopMatcher:
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
