"""Where two greedy answers to one prompt part, and how close the model's choice was there.

llama.cpp's kernels round differently for a batch of one token and a batch of many (and for
a KV cache computed token by token or in one prefill), enough to flip a near-tie between the
top two tokens; from there two greedy answers part. This measures the gap at that token, in
the model's logits from one plain prefill, so tests and benches can tell a flipped near-tie
from a wrong answer.
"""

from __future__ import annotations

from pathlib import Path

from fabstir_node.llama_context import BatchRow, LlamaContext

__all__ = ["divergence"]


def divergence(
    model: Path, prompt: list[int], got: list[int], want: list[int]
) -> tuple[int, float] | None:
    """None when ``got`` is ``want``; else the first token where they differ and the distance
    in logits between the two choices there."""
    if got == want:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    if at is None:  # one ended earlier: the other's extra token against end of generation
        return min(len(got), len(want)), float("inf")
    context = [*prompt, *want[:at]]
    llama = LlamaContext(model)
    try:
        size = len(context)
        llama.open(n_ctx=size, n_seq=1, n_batch=size, n_threads=1, n_threads_batch=1)
        llama.decode([BatchRow(t, i, 0, i == size - 1) for i, t in enumerate(context)])
        logits = llama.logits(size - 1)
        return at, abs(float(logits[got[at]] - logits[want[at]]))
    finally:
        llama.close()
