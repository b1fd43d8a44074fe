"""Which llama.cpp sequence holds which conversation's tokens, so a next turn starts where the
last one stopped.

Every sequence id owns a slice of the KV cache. A finished answer leaves its tokens (prompt and
completion) in its sequence; the next request whose prompt starts with them takes that sequence
and evaluates only what is new. The cache holds ``n_seq`` sequences: when a request finds no
free one, the least recently used idle conversation is evicted. Live sequences are never
evicted; the engine admits no more of them than it has slots, and has more sequences than slots.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["PrefixCache", "Reuse"]

#: An idle conversation is taken over by a prompt that starts with at least this share of its
#: own tokens in common (a next turn, a retry, a continuation); below it a free (or the least
#: recently used) sequence is taken instead, as llama.cpp's server does.
TAKEOVER_SHARE = 0.5


@dataclass
class _Entry:
    tokens: list[int] = field(default_factory=list)  # in the KV cache, from position 0
    live: bool = False
    used: int = 0  # the clock at its last release: lower is older


@dataclass(frozen=True)
class Reuse:
    seq: int
    cached: int  # prompt tokens already in the KV cache: evaluation starts after them


class PrefixCache:
    def __init__(self, n_seq: int, forget: Callable[[int, int], None]) -> None:
        """``forget(seq, start)`` drops a sequence's KV cells from ``start`` on."""
        self._entries = [_Entry() for _ in range(n_seq)]
        self._forget = forget
        self._clock = itertools.count(1)

    @property
    def held_tokens(self) -> int:
        return sum(len(e.tokens) for e in self._entries)

    @property
    def idle(self) -> int:
        """Sequences holding a finished conversation."""
        return sum(1 for e in self._entries if not e.live and e.tokens)

    def acquire(self, prompt: Sequence[int], limit: int | None = None) -> Reuse:
        """A sequence for ``prompt``, with as much of it already cached as can be (at most
        ``limit`` tokens)."""
        idle = [(i, e) for i, e in enumerate(self._entries) if not e.live]
        if not idle:
            raise RuntimeError("every sequence is live; the engine admits fewer")
        shared = {i: _common_prefix(e.tokens, prompt) for i, e in idle}
        best = max(idle, key=lambda ie: (shared[ie[0]], -ie[1].used))[0]
        if shared[best] == 0 or shared[best] < TAKEOVER_SHARE * len(prompt):
            empty = [i for i, e in idle if not e.tokens]
            best = empty[0] if empty else min(idle, key=lambda ie: ie[1].used)[0]
        # Evaluate at least the prompt's last token: its logits give the first new token.
        cached = min(shared[best], len(prompt) - 1, len(prompt) if limit is None else limit)
        entry = self._entries[best]
        if cached < len(entry.tokens):
            self._forget(best, cached)
            del entry.tokens[cached:]
        entry.live = True
        return Reuse(best, cached)

    def extend(self, seq: int, tokens: Sequence[int]) -> None:
        """``tokens`` were evaluated into sequence ``seq``."""
        self._entries[seq].tokens.extend(tokens)

    def release(self, seq: int, keep: bool) -> None:
        """The sequence's request ended: keep its tokens for a next turn, or drop them now."""
        entry = self._entries[seq]
        entry.live = False
        entry.used = next(self._clock)
        if not keep:
            self._forget(seq, 0)
            entry.tokens.clear()

    def tokens(self, seq: int) -> list[int]:
        return list(self._entries[seq].tokens)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
