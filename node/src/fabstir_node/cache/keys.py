"""What makes two requests the same request, for the cache.

An answer depends on the model, the conversation and the sampling parameters that change
it; the cache's keys hold exactly those. Text is normalised (Unicode NFC, runs of whitespace
to one space, trimmed) so that trivial differences still hit exactly. ``max_tokens`` is not in
the key: only answers that ended by themselves (``stop``) are cached, and one is served only
to a request whose limit it fits.

The *exact key* covers every message; the *context key* every message but the last user
message, which is what the semantic search compares: a paraphrase of the question hits only
within the same system prompt and the same earlier turns.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from fabstir_sdk.storage import cbor

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text)).strip()


@dataclass(frozen=True)
class Sampling:
    """The sampling parameters that change an answer (greedy decoding ignores the rest)."""

    temperature: float
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def sampled(self) -> bool:
        return self.temperature > 0

    def key(self) -> list[object]:
        if not self.sampled:
            return ["greedy", list(self.stop)]
        return [round(self.temperature, 6), round(self.top_p, 6), self.seed, list(self.stop)]


@dataclass(frozen=True)
class RequestKey:
    exact: bytes
    context: bytes
    question: str  # the last user message, normalised: what is embedded and guarded


def request_key(
    model_sha256: bytes, messages: Sequence[dict[str, str]], sampling: Sampling
) -> RequestKey | None:
    """The keys of a chat request, or None when it does not end with a user message (nothing
    a cache could answer)."""
    if not messages or messages[-1].get("role") != "user":
        return None
    turns = [[m.get("role", ""), normalize(m.get("content", ""))] for m in messages]
    question = turns[-1][1]
    if not question:
        return None
    head = [model_sha256, sampling.key()]
    return RequestKey(_hash([*head, turns]), _hash([*head, turns[:-1]]), question)


def _hash(value: object) -> bytes:
    return hashlib.sha256(cbor.dumps(value)).digest()
