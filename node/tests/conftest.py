"""Node fixtures: a generated tiny GGUF, a loaded engine, and the HTTP API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_node.api import Api
from fabstir_node.embeddings import Embedder
from fabstir_node.inference import Engine
from fabstir_node.server import HttpServer

TINY_CTX = 256
LONG_CTX = 4096  # ~0.5 s of generation: long enough to cancel in the middle on a busy machine


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


def make_engine(
    path: Path, queue_size: int = 4, n_ctx: int = TINY_CTX, parallel: int = 4
) -> Engine:
    engine = Engine(path, n_ctx=n_ctx, n_threads=1, parallel=parallel, queue_size=queue_size)
    engine.load()
    return engine


@pytest.fixture(scope="session")
def engine(tiny_gguf: Path) -> Iterator[Engine]:
    engine = make_engine(tiny_gguf)
    yield engine
    engine.close()


class LiveServer:
    """The API served from its own event loop thread, as a real node does."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.loop = asyncio.new_event_loop()
        self.server = HttpServer(api, "127.0.0.1", 0)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)

    @property
    def url(self) -> str:
        return self.server.url

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@pytest.fixture(scope="session")
def long_engine(tiny_gguf: Path) -> Iterator[Engine]:
    engine = make_engine(tiny_gguf, n_ctx=LONG_CTX)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def live(engine: Engine) -> Iterator[LiveServer]:
    server = LiveServer(Api(engine, "tiny", max_tokens_default=16))
    yield server
    server.close()


@pytest.fixture(scope="session")
def live_long(long_engine: Engine) -> Iterator[LiveServer]:
    server = LiveServer(Api(long_engine, "tiny"))
    yield server
    server.close()


@pytest.fixture(scope="session")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Embedder]:
    """The real embedding model (all-MiniLM-L6-v2), converted once for the whole run."""
    model = Embedder.in_dir(tmp_path_factory.mktemp("embedding-model"))
    model.load()
    yield model
    model.close()
