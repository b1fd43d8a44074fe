"""Which llama.cpp sequence holds which conversation's tokens, so a next turn starts where the
last one stopped.

Every sequence id owns a slice of the KV cache. The first ``slots`` sequences are where
generations run, always the lowest free one; the rest store finished conversations. A finished
answer's tokens stay in its slot; the next request whose prompt starts with them gets them,
in place or copied into its slot, and evaluates only what is new. A finished conversation
that a newcomer displaces is first copied to a store (evicting the least recently used
stored one).

Why the lowest slots: llama.cpp evaluates a batch over the whole range of sequence ids it
touches, used or not (8 sequences spread over ids 0-14 decode at half the speed of ids 0-7),
so live sequences must stay packed at the bottom whatever the cache holds; the scheduler also
moves a live sequence down into a gap another one left. A copy costs about 10 ms for SmolLM2
at 2,048 tokens, far less than evaluating a prompt again.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["PrefixCache", "Reuse"]

#: A finished conversation is reused for a prompt that shares at least this share of the
#: prompt's tokens (a next turn, a retry, a continuation); below that the prompt starts in a
#: free slot, as llama.cpp's own server decides.
TAKEOVER_SHARE = 0.5
#: Taking over a conversation for a prompt that leaves more than this many of its tokens
#: behind (another chat with the same start, not its next turn) first copies it to a store.
KEEP_WHOLE = 32


@dataclass
class _Entry:
    tokens: list[int] = field(default_factory=list)  # in the KV cache, from position 0
    live: bool = False
    used: int = 0  # the clock at its last use: lower is older


@dataclass(frozen=True)
class Reuse:
    seq: int
    cached: int  # prompt tokens already in the KV cache: evaluation starts after them


class PrefixCache:
    def __init__(
        self,
        slots: int,
        n_seq: int,
        forget: Callable[[int, int], None],
        copy: Callable[[int, int], None],
    ) -> None:
        """``forget(seq, start)`` drops a sequence's KV cells from ``start`` on;
        ``copy(src, dst)`` replaces sequence ``dst``'s cells with a copy of ``src``'s."""
        self.slots = slots
        self._entries = [_Entry() for _ in range(n_seq)]
        self._forget = forget
        self._copy = copy
        self._clock = itertools.count(1)

    @property
    def idle(self) -> int:
        """Finished conversations held, in slots and stores."""
        return sum(1 for e in self._entries if not e.live and e.tokens)

    def acquire(self, prompt: Sequence[int], limit: int | None = None) -> Reuse:
        """The lowest free slot for ``prompt``, holding as much of it already cached as can be
        (at most ``limit`` tokens)."""
        slot = self._lowest_free_slot()
        idle = [i for i, e in enumerate(self._entries) if not e.live and e.tokens]
        shared = {i: _common_prefix(self._entries[i].tokens, prompt) for i in idle}
        best = max(idle, key=lambda i: (shared[i], i == slot, self._entries[i].used), default=None)
        if best is None or shared[best] == 0 or shared[best] < TAKEOVER_SHARE * len(prompt):
            self._vacate(slot, keep=None)
        elif best == slot:
            if len(self._entries[slot].tokens) - shared[best] > KEEP_WHOLE:
                self._save(slot, keep=None)  # another chat sharing a start: keep this one too
        else:  # bring it into the slot
            self._vacate(slot, keep=best)
            self._relocate(best, slot)
        entry = self._entries[slot]
        reuse = _common_prefix(entry.tokens, prompt)
        # Evaluate at least the prompt's last token: its logits give the first new token.
        cached = min(reuse, len(prompt) - 1, len(prompt) if limit is None else limit)
        if cached < len(entry.tokens):
            self._forget(slot, cached)
            del entry.tokens[cached:]
        entry.live = True
        return Reuse(slot, cached)

    def move(self, src: int, dst: int) -> None:
        """Move live sequence ``src`` into the free slot ``dst`` (to close a gap)."""
        self._vacate(dst, keep=None)
        self._relocate(src, dst)
        self._entries[dst].live, self._entries[src].live = True, False

    def _lowest_free_slot(self) -> int:
        for i in range(self.slots):
            if not self._entries[i].live:
                return i
        raise RuntimeError("every slot is live; the engine admits no more than it has")

    def _vacate(self, slot: int, keep: int | None) -> None:
        """Empty ``slot``, saving its finished conversation (if any) to a store."""
        if self._entries[slot].tokens:
            self._save(slot, keep)
            self._forget(slot, 0)
            self._entries[slot].tokens = []

    def _relocate(self, src: int, dst: int) -> None:
        """Copy ``src``'s conversation into the empty ``dst`` and empty ``src``."""
        self._copy(src, dst)
        self._forget(src, 0)
        self._entries[dst].tokens, self._entries[src].tokens = self._entries[src].tokens, []
        self._entries[dst].used = self._entries[src].used

    def _save(self, slot: int, keep: int | None) -> None:
        """Copy the conversation in ``slot`` to a store: an empty one, or the least recently
        used one's (never store ``keep``'s). Without stores it is lost."""
        stores = [i for i in range(self.slots, len(self._entries)) if i != keep]
        if not stores:
            return
        store = min(stores, key=lambda i: (bool(self._entries[i].tokens), self._entries[i].used))
        self._copy(slot, store)
        self._entries[store].tokens = list(self._entries[slot].tokens)
        self._entries[store].used = self._entries[slot].used

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


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
