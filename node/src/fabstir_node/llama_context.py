"""llama.cpp through llama-cpp-python's low-level API: one model, one context holding the KV
cache of many sequences, and one batch that carries tokens of all of them.

The KV cache is split per sequence (``kv_unified`` off, as llama.cpp's own server does): each
sequence owns ``n_ctx`` cells, so attention in a step only spans that sequence's own tokens,
however many other conversations the cache holds. Only the engine's worker thread calls in.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["BatchRow", "LlamaContext", "LlamaLoadError"]


class LlamaLoadError(Exception):
    pass


@dataclass(frozen=True)
class BatchRow:
    """One token of one sequence in a batch; ``logits`` asks for its next-token logits."""

    token: int
    pos: int
    seq: int
    logits: bool


class LlamaContext:
    """Load the model with the constructor, then :meth:`open` the context."""

    def __init__(self, model_path: Path, *, n_gpu_layers: int = 0) -> None:
        import llama_cpp
        from llama_cpp._logger import set_verbose

        from fabstir_sdk.tokenizer import LLAMA_LOAD_LOCK

        set_verbose(False)  # llama.cpp logs every tensor it loads otherwise
        self._l = llama_cpp
        self.ctx: Any = None
        self._batch: Any = None
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        with LLAMA_LOAD_LOCK:
            llama_cpp.llama_backend_init()
            self.model = llama_cpp.llama_model_load_from_file(
                str(model_path).encode(), model_params
            )
        if not self.model:
            raise LlamaLoadError(f"llama.cpp could not load {model_path}")
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        self.eog = frozenset(
            t for t in range(self.n_vocab) if llama_cpp.llama_vocab_is_eog(self.vocab, t)
        )
        self.gpu_layers = n_gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0

    def kv_bytes_per_token(self) -> int:
        """KV cache memory per token of one sequence (f16 keys and values, every layer)."""
        layers = self._l.llama_model_n_layer(self.model)
        heads = self._l.llama_model_n_head(self.model)
        heads_kv = self._l.llama_model_n_head_kv(self.model)
        embd = self._l.llama_model_n_embd(self.model)
        return int(2 * 2 * layers * (embd // heads) * heads_kv)

    def open(
        self, *, n_ctx: int, n_seq: int, n_batch: int, n_threads: int, n_threads_batch: int
    ) -> None:
        """The context: ``n_seq`` sequences of ``n_ctx`` tokens each."""
        self.n_ctx = n_ctx
        self.n_seq = n_seq
        self.n_batch = n_batch
        params = self._l.llama_context_default_params()
        params.n_ctx = n_ctx * n_seq
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.kv_unified = False
        params.n_threads = n_threads
        params.n_threads_batch = n_threads_batch
        params.no_perf = True
        self.ctx = self._l.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise LlamaLoadError(
                f"llama.cpp could not make a context of {n_seq} x {n_ctx} tokens "
                "(too little memory for the KV cache?)"
            )
        self.memory = self._l.llama_get_memory(self.ctx)
        self._batch = self._l.llama_batch_init(n_batch, 0, 1)

    # ----------------------------------------------------------------- decoding

    def decode(self, rows: list[BatchRow]) -> int:
        """Evaluate ``rows`` in one batch; llama.cpp's status (0 ok, 1 no room in the cache)."""
        batch = self._batch
        batch.n_tokens = len(rows)
        for i, row in enumerate(rows):
            batch.token[i] = row.token
            batch.pos[i] = row.pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = row.seq
            batch.logits[i] = row.logits
        return int(self._l.llama_decode(self.ctx, batch))

    def logits(self, row: int) -> Any:
        """The next-token logits of batch row ``row`` (a view, valid until the next decode)."""
        import numpy as np

        ptr = self._l.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(
            ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), shape=(self.n_vocab,)
        )

    # ----------------------------------------------------------------- the KV cache

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop sequence ``seq``'s cells from position ``start`` on."""
        self._l.llama_memory_seq_rm(self.memory, seq, start, -1)

    def copy(self, src: int, dst: int) -> None:
        """Replace sequence ``dst``'s cells with a copy of ``src``'s (a whole-slice copy)."""
        self._l.llama_memory_seq_rm(self.memory, dst, -1, -1)
        self._l.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def positions(self, seq: int) -> int:
        """How many positions sequence ``seq`` holds in the KV cache (read from llama.cpp)."""
        return int(self._l.llama_memory_seq_pos_max(self.memory, seq)) + 1

    def clear(self) -> None:
        self._l.llama_memory_clear(self.memory, True)

    def close(self) -> None:
        if self._batch is not None:
            self._l.llama_batch_free(self._batch)
            self._batch = None
        if self.ctx:
            self._l.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self._l.llama_model_free(self.model)
            self.model = None
