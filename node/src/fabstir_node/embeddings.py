"""Sentence embeddings on one thread, batched across callers.

llama.cpp runs the converted all-MiniLM-L6-v2 (:mod:`.embedding_model`) with ``n_threads=1``
(two threads run 7-20x slower whenever inference holds the other core, DESIGN §9). Texts from
concurrent callers are coalesced into batches of up to :data:`BATCH` on a single worker
thread, so the cache, ``/v1/embeddings`` and the MCP tools share one model and one core.
Vectors are L2-normalised float32: their dot product is the cosine similarity.
"""

from __future__ import annotations

import asyncio
import hashlib
import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fabstir_node import embedding_model
from fabstir_node.errors import NodeError

BATCH = 16
#: Longest input in tokens ([CLS] and [SEP] included): the model's position table.
MAX_TOKENS = 512
#: Tokens of a text that search embeds (all-MiniLM was trained on 256 word pieces): cached
#: questions, documents and queries alike.
SEARCH_TOKENS = 256

Array = npt.NDArray[Any]


class EmbeddingError(NodeError):
    """An input the model cannot embed (too long, empty...)."""


@dataclass
class _Request:
    texts: list[str]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Array]


class Embedder:
    """The embedding model with its worker thread; ``load()`` first (blocking)."""

    name = embedding_model.NAME
    dimensions = embedding_model.DIMENSIONS

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sha256 = ""
        self._llm: Any = None
        self._lock = threading.Lock()  # the model: the worker, and token counts from any thread
        self._requests: queue.Queue[_Request | None] = queue.Queue()
        self._worker: threading.Thread | None = None
        self.embedded = 0  # texts embedded so far, for metrics and tests

    @classmethod
    def in_dir(cls, models_dir: Path) -> Embedder:
        """The embedder of the packaged model, converted into ``models_dir`` when missing."""
        path = models_dir / f"{embedding_model.NAME}.gguf"
        if not path.exists():
            models_dir.mkdir(parents=True, exist_ok=True)
            embedding_model.convert(path)
        return cls(path)

    @property
    def ready(self) -> bool:
        return self._llm is not None

    def load(self) -> None:
        from llama_cpp import Llama

        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest()
        # n_ubatch must equal n_batch for a non-causal model (a smaller one aborts in GGML).
        self._llm = Llama(
            str(self.path),
            embedding=True,
            n_ctx=MAX_TOKENS,
            n_batch=MAX_TOKENS,
            n_ubatch=MAX_TOKENS,
            n_threads=1,
            n_threads_batch=1,
            verbose=False,
        )
        self._worker = threading.Thread(target=self._run, name="embedder", daemon=True)
        self._worker.start()

    def close(self) -> None:
        if self._worker is not None:
            self._requests.put(None)
            self._worker.join(timeout=10)
            self._worker = None
        self._llm = None

    # ----------------------------------------------------------------- API

    def count_tokens(self, text: str) -> int:
        with self._lock:
            return len(self._require().tokenize(text.encode(), add_bos=True))

    def truncate(self, text: str, max_tokens: int) -> str:
        """``text`` cut to its first ``max_tokens`` tokens (what the cache embeds of a long
        prompt: all-MiniLM was trained on 256 word pieces)."""
        with self._lock:
            llm = self._require()
            ids = llm.tokenize(text.encode(), add_bos=True)
            if len(ids) <= max_tokens:
                return text
            # Drop [CLS] and keep room for [SEP]; detokenize the word pieces kept.
            return str(llm.detokenize(ids[1 : max_tokens - 1]).decode(errors="ignore"))

    async def embed(self, texts: Sequence[str]) -> Array:
        """The normalised vectors of ``texts``, one row each (raises :class:`EmbeddingError`
        for an empty or too long text)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        self._require()
        loop = asyncio.get_running_loop()
        request = _Request(list(texts), loop, loop.create_future())
        self._requests.put(request)
        return await request.future

    async def embed_for_search(self, text: str) -> Array:
        """One text's vector as search compares it: from its first :data:`SEARCH_TOKENS`
        tokens."""
        short = await asyncio.to_thread(self.truncate, text, SEARCH_TOKENS)
        vectors: Array = await self.embed([short])
        row: Array = vectors[0]
        return row

    def embed_for_search_now(self, texts: Sequence[str]) -> Array:
        """:meth:`embed_for_search` of several texts, blocking (index rebuilds)."""
        return self.embed_now([self.truncate(t, SEARCH_TOKENS) for t in texts])

    def embed_now(self, texts: Sequence[str]) -> Array:
        """:meth:`embed` for threads without an event loop (benchmarks, index rebuilds)."""
        with self._lock:
            return self._embed(list(texts))

    # ----------------------------------------------------------------- worker

    def _require(self) -> Any:
        if self._llm is None:
            raise EmbeddingError("the embedding model is not loaded")
        return self._llm

    def _run(self) -> None:
        while (first := self._requests.get()) is not None:
            batch = [first]
            size = len(first.texts)
            while size < BATCH:  # coalesce whatever else is waiting
                try:
                    nxt = self._requests.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._requests.put(None)
                    break
                batch.append(nxt)
                size += len(nxt.texts)
            self._serve(batch)

    def _serve(self, batch: list[_Request]) -> None:
        texts = [t for r in batch for t in r.texts]
        try:
            with self._lock:
                vectors = self._embed(texts)
        except Exception:  # find the culprit: embed each request alone
            for request in batch:
                try:
                    with self._lock:
                        _resolve(request, self._embed(request.texts))
                except Exception as exc:
                    _resolve(request, exc)
            return
        at = 0
        for request in batch:
            _resolve(request, vectors[at : at + len(request.texts)])
            at += len(request.texts)

    def _embed(self, texts: list[str]) -> Array:
        llm = self._require()
        for text in texts:
            if not text.strip():
                raise EmbeddingError("cannot embed an empty text")
            n = len(llm.tokenize(text.encode(), add_bos=True))
            if n > MAX_TOKENS:
                raise EmbeddingError(f"a text has {n} tokens; the model takes {MAX_TOKENS}")
        out = np.empty((len(texts), self.dimensions), dtype=np.float32)
        for at in range(0, len(texts), BATCH):
            chunk = texts[at : at + BATCH]
            out[at : at + len(chunk)] = np.asarray(llm.embed(chunk, normalize=True), np.float32)
        self.embedded += len(texts)
        return out


def _resolve(request: _Request, result: Array | BaseException) -> None:
    def settle() -> None:
        if request.future.done():
            return
        if isinstance(result, BaseException):
            request.future.set_exception(result)
        else:
            request.future.set_result(result)

    request.loop.call_soon_threadsafe(settle)
