"""The sampler a Fabstir host draws tokens with, built once here for the node's engine and the
auditor's replay, so that a seeded answer can be drawn again exactly as it was drawn.

It is llama.cpp's own sampler chain: top-p on the raw distribution, then the temperature, then
a draw from a generator seeded with the request's seed. Temperature 0 is greedy.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Sampler"]


class Sampler:
    """One request's llama.cpp sampler chain; :meth:`close` frees it."""

    def __init__(self, temperature: float, top_p: float, seed: int) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.chain: Any = llama_cpp.llama_sampler_chain_init(
            llama_cpp.llama_sampler_chain_default_params()
        )
        add = llama_cpp.llama_sampler_chain_add
        if temperature <= 0:
            add(self.chain, llama_cpp.llama_sampler_init_greedy())
        else:
            add(self.chain, llama_cpp.llama_sampler_init_top_p(top_p, 1))
            add(self.chain, llama_cpp.llama_sampler_init_temp(temperature))
            add(self.chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Any, index: int) -> int:
        """Draw from the logits of batch row ``index`` of llama.cpp context ``ctx``."""
        return int(self._llama_cpp.llama_sampler_sample(self.chain, ctx, index))

    def close(self) -> None:
        if self.chain is not None:
            self._llama_cpp.llama_sampler_free(self.chain)
            self.chain = None

    def __del__(self) -> None:
        self.close()
