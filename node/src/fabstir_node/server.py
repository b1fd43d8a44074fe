"""Bring a node up: resolve and verify the model, load it, and serve the HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from fabstir_node.api import Api
from fabstir_node.config import NodeConfig
from fabstir_node.embeddings import Embedder
from fabstir_node.errors import ModelError
from fabstir_node.inference import Engine
from fabstir_node.models import GGUFInfo, HashCache, ModelFile, probe, resolve, verify

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    model: ModelFile
    sha256: str
    info: GGUFInfo


def prepare_model(
    config: NodeConfig, progress: Callable[[int], None] | None = None
) -> PreparedModel:
    """Resolve, hash-check and probe the configured model (blocking)."""
    model = resolve(config.model, config.model_sha256, config.data_dir / "models")
    digest = verify(model, HashCache(config.data_dir / "hashes.json"), progress)
    return PreparedModel(model, digest, probe(model.path))


def build_engine(config: NodeConfig, path: Path) -> Engine:
    template = config.chat_template
    if template and Path(template).expanduser().is_file():
        template = Path(template).expanduser().read_text()
    return Engine(
        path,
        n_ctx=config.n_ctx,
        n_batch=config.n_batch,
        n_threads=config.n_threads,
        n_threads_batch=config.n_threads_batch,
        parallel=config.parallel,
        queue_size=config.queue_size,
        kv_cache_mb=config.kv_cache_mb,
        n_gpu_layers=config.n_gpu_layers,
        chat_template=template,
    )


class HttpServer:
    """The API on a TCP port (0 picks a free one); ``url`` is known once started."""

    def __init__(self, api: Api, host: str, port: int) -> None:
        self.api = api
        self.host = host
        self.port = port
        self._runner = web.AppRunner(api.app, access_log=None, shutdown_timeout=2)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        server = site._server
        if self.port == 0 and server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def stop(self) -> None:
        await self._runner.cleanup()


async def serve_http(
    config: NodeConfig, prepared: PreparedModel, on_ready: Callable[[HttpServer], None]
) -> None:
    """Load the engine and serve until cancelled."""
    engine = build_engine(config, prepared.model.path)
    embedder = await asyncio.to_thread(load_embedder, config)
    api = Api(engine, prepared.model.name, max_tokens_default=config.max_tokens, embedder=embedder)
    server = HttpServer(api, config.host, config.port)
    await server.start()  # /health answers "loading" while the model loads
    try:
        await asyncio.to_thread(engine.load)
        on_ready(server)
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await server.stop()
        engine.close()
        if embedder is not None:
            embedder.close()


def load_embedder(config: NodeConfig) -> Embedder | None:
    """The embedding model for ``/v1/embeddings``, or None (logged) when it is not installed."""
    try:
        embedder = Embedder.in_dir(config.data_dir / "models")
        embedder.load()
    except ModelError as exc:
        log.warning("/v1/embeddings is off: %s", exc)
        return None
    return embedder
