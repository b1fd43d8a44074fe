"""The node's content-addressed store on the network (DESIGN §8).

The tree lives under ``<data_dir>/store``: ``/models/<sha256>/model.gguf`` and
``tokenizer.gguf`` for the model it serves (so clients and other hosts fetch them by the
registry's pins), ``/results/<session>/<start>`` for the sealed answers of its sessions. After
every change the node signs a new revision of its root (a registry entry under its libp2p
identity key) and answers ``/fabstir/storage/root/1.0.0`` with it; Bitswap serves exactly the
blocks that tree reaches (what the node chose to publish), and Kademlia provider records name
the node as a source of its model and tokenizer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.discovery import registered_peers
from fabstir_sdk.p2p import BridgedStream, P2PHost, PeerAddress
from fabstir_sdk.protocol import (
    MAX_SMALL_FRAME,
    STORAGE_ROOT_PROTOCOL,
    FramedStream,
    ProtocolError,
    RootRequest,
    RootResponse,
    UnexpectedMessage,
)
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blockstore import BlockStore, StoreStats
from fabstir_sdk.storage.content import load_manifest, read_bytes
from fabstir_sdk.storage.dirv1 import FileRef
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.storage.exchange import Exchange, model_key
from fabstir_sdk.storage.layout import model_path, tokenizer_path
from fabstir_sdk.storage.registry import sign_entry
from fabstir_sdk.storage.tree import FileEntry, Store

log = logging.getLogger(__name__)
#: Seconds between garbage collections of the store, and the age below which an
#: unreferenced block is kept (a write may be about to link it).
GC_EVERY, GC_GRACE = 3600.0, 3600.0


@dataclass
class StorageCounters:
    """What /metrics reports besides the block store's own figures."""

    results_stored: int = 0
    results_failed: int = 0
    roots_published: int = 0


class NodeStorage:
    def __init__(self, path: Path, host: P2PHost, seed: bytes) -> None:
        self.store = Store(path)
        self._files = StoreFiles(self.store)
        self.host = host
        self._seed = seed
        self.bitswap = Bitswap(host, self.store.blocks, served=self._published)
        self.exchange = Exchange(host, self.store.blocks, self.bitswap)
        self.counters = StorageCounters()
        self._entry = b""
        self._write = asyncio.Lock()  # one writer: the tree's root moves in order
        self._provided: list[str] = []
        self._collector: asyncio.Task[None] | None = None
        host.set_handler(STORAGE_ROOT_PROTOCOL, self._serve_root)

    def _published(self, hash: bytes) -> bool:
        """Blocks our current tree reaches (they hold a reference); nothing else is served."""
        try:
            return self.store.blocks.refs(hash) > 0
        except StorageError:
            return False

    def _sign_root(self) -> None:
        self._entry = sign_entry(self._seed, self.store.revision, self.store.root).encode()
        self.counters.roots_published += 1

    async def start(self) -> None:
        """Sign the root we have (after a restart, the tree is as we left it), and collect
        garbage every :data:`GC_EVERY` seconds."""
        await asyncio.to_thread(self._sign_root)
        self._collector = asyncio.ensure_future(self._collect_forever())

    async def _collect_forever(self) -> None:
        while True:
            await asyncio.sleep(GC_EVERY)
            try:
                async with self._write:
                    report = await asyncio.to_thread(self.store.blocks.gc, GC_GRACE)
                log.info("storage gc: %d blocks, %d bytes freed", report.blocks, report.bytes)
            except Exception as exc:
                log.warning("storage gc failed: %s", exc)

    async def publish_model(self, sha256: bytes, model: Path | None, tokenizer: bytes) -> None:
        """Publish the served model's tokenizer under the registry's pin, and the model itself
        when ``model`` is given (sharing it: the store keeps its own copy). Provider records
        go out with the next :meth:`provide`."""
        async with self._write:
            await asyncio.to_thread(self._import_model, sha256, model, tokenizer)
        if model is not None:
            self._provided.append(model_key(sha256))

    def _import_model(self, sha256: bytes, model: Path | None, tokenizer: bytes) -> None:
        """Import once: a file already there under its pin is the same file (the manifest
        holds its sha256, checked again whenever it is read)."""
        with self.store.batch():
            if model is not None and not self._holds(model_path(sha256), sha256):
                self.store.put_file(model_path(sha256), model, "application/gguf", None)
            if not self.store.exists(tokenizer_path(sha256)):
                self.store.put(tokenizer_path(sha256), tokenizer, "application/gguf")
        self._sign_root()

    def _holds(self, path: str, sha256: bytes) -> bool:
        try:
            entry = self.store.stat(path)
        except StorageError:
            return False
        if not isinstance(entry, FileEntry) or not entry.ref.content.is_manifest:
            return False
        manifest = load_manifest(self.store.blocks.get(entry.ref.content.root))
        return manifest.sha256 == sha256

    async def provide(self) -> None:
        for key in self._provided:
            with contextlib.suppress(Exception):
                await self.host.provide(key)

    async def put(self, path: str, data: bytes, compress: str | None = "auto") -> None:
        """Store ``data`` at ``path`` and sign the new root."""
        async with self._write:
            await asyncio.to_thread(self._put_and_sign, path, data, compress)

    def _put_and_sign(self, path: str, data: bytes, compress: str | None) -> None:
        self.store.put(path, data, compress=compress)
        self._sign_root()

    async def put_many(self, files: dict[str, bytes]) -> None:
        """Store several files in one root update (all or nothing)."""
        async with self._write:
            await asyncio.to_thread(self._signed, self._files._put_many, files)

    async def delete_many(self, paths: list[str]) -> None:
        async with self._write:
            await asyncio.to_thread(self._signed, self._files._delete_many, paths)

    def _signed(self, change: Callable[[Any], None], arg: Any) -> None:
        change(arg)
        self._sign_root()

    def read(self, path: str) -> bytes:
        """A file's content, verified (blocking: readers run in threads)."""
        return self._files.read(path)

    def files(self, path: str) -> list[str]:
        """Every file below ``path`` (none when it does not exist)."""
        return self._files.files(path)

    async def publish(self, path: str, data: bytes) -> bytes:
        """Store ``data`` at ``path`` uncompressed (so its root hash is the one any writer of
        the same bytes gets), announce it in the DHT, and return that root hash."""
        async with self._write:
            entry = await asyncio.to_thread(self._publish, path, data)
        with contextlib.suppress(Exception):  # an empty routing table: fetched by tree instead
            await self.exchange.provide(entry.ref.content)
        return entry.ref.content.root

    def _publish(self, path: str, data: bytes) -> FileEntry:
        entry = self.store.put(path, data, compress=None)
        self._sign_root()
        return entry

    async def fetch(self, root: bytes, max_size: int) -> bytes:
        """Content ``root`` from whoever provides it (the DHT's providers), every block
        checked as it arrives and the whole read back against its hash."""
        ref = await self.exchange.fetch(root)
        if ref.size > max_size:
            raise StorageError(f"the content has {ref.size} bytes; at most {max_size} allowed")
        return await asyncio.to_thread(read_bytes, self.store.blocks, ref, max_size)

    async def store_result(self, path: str, sealed: bytes) -> None:
        """A sealed answer (see :mod:`fabstir_sdk.transcripts`; it does not compress)."""
        try:
            await self.put(path, sealed, compress=None)
        except Exception:
            self.counters.results_failed += 1
            raise
        self.counters.results_stored += 1

    async def _serve_root(self, stream: BridgedStream) -> None:
        framed = FramedStream(stream, MAX_SMALL_FRAME)
        try:
            request = await framed.receive(timeout=10)
            if not isinstance(request, RootRequest):
                raise UnexpectedMessage(f"expected root, got {request.TYPE}")
            await framed.send(RootResponse(self._entry))
        except ProtocolError as exc:
            await framed.fail(exc)
        except Exception:
            log.exception("root request failed")
        finally:
            with contextlib.suppress(Exception):
                await stream.close()

    def stats(self) -> StoreStats:
        return self.store.blocks.stats()

    def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
        self.store.close()


class StoreFiles:
    """Files of a store opened without the network (``fabstir-node mcp``, tests): what the
    cache and the document index need, like :class:`NodeStorage` offers them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._write = asyncio.Lock()

    async def put_many(self, files: dict[str, bytes]) -> None:
        async with self._write:
            await asyncio.to_thread(self._put_many, files)

    def _put_many(self, files: dict[str, bytes]) -> None:
        with self.store.batch():
            for path, data in files.items():
                self.store.put(path, data)

    async def delete_many(self, paths: list[str]) -> None:
        async with self._write:
            await asyncio.to_thread(self._delete_many, paths)

    def _delete_many(self, paths: list[str]) -> None:
        with self.store.batch():
            for path in paths:
                self.store.delete(path)

    def read(self, path: str) -> bytes:
        return self.store.get(path)

    def files(self, path: str) -> list[str]:
        if not self.store.exists(path):
            return []
        return [name for name, _ in self.store.walk(path)]


# --------------------------------------------------------------------------- fetching models


def fetched_model_path(models_dir: Path, sha256: bytes) -> Path:
    """Where ``fabstir-node models fetch`` installs a model: named by its pin."""
    return models_dir / f"{sha256.hex()}.gguf"


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    sha256: bytes
    size: int
    providers: list[str]  # peer ids that had it
    already_installed: bool = False


async def fetch_model(
    contracts: Contracts,
    model_id: bytes,
    models_dir: Path,
    *,
    bootstrap: list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FetchedModel:
    """Install a registered model from the hosts that share it, with nothing but its pin.

    The ModelRegistry gives the sha256; the NodeRegistry the hosts serving the model (and the
    DHT, keyed by :func:`model_key`, any other peer that shares it). Each host's signed root
    names its copy at ``/models/<sha256>/model.gguf``; the blocks come over Bitswap from all
    of them at once, each checked by its hash, and the file is renamed into place only when
    its sha256 is the pinned one. ``progress(received, total)`` follows the transfer."""
    pin = await asyncio.to_thread(contracts.model_pin, model_id)
    dest = fetched_model_path(models_dir, pin.sha256)
    if dest.exists():
        return FetchedModel(dest, pin.sha256, dest.stat().st_size, [], already_installed=True)
    landing = models_dir / ".blocks"
    host = P2PHost(secrets.token_bytes(32))
    blocks = BlockStore(landing)
    bitswap = Bitswap(host, blocks, served=lambda _hash: False)
    exchange = Exchange(host, blocks, bitswap)
    await host.start()
    try:
        for addr in bootstrap or []:
            with contextlib.suppress(Exception):
                await host.connect(addr.rsplit("/p2p/", 1)[-1], [addr])
        peers = await registered_peers(contracts, model_id)
        with contextlib.suppress(Exception):
            peers += await exchange.providers(model_key(pin.sha256))
        found: dict[bytes, tuple[FileRef, list[PeerAddress]]] = {}
        for peer in {p.peer_id: p for p in peers}.values():
            try:
                entry = await exchange.stat(
                    peer, await exchange.root_of(peer), model_path(pin.sha256)
                )
            except Exception as exc:  # unreachable, not sharing, lying: ask the others
                log.info("%s does not share the model: %s", peer.peer_id, exc)
                continue
            if isinstance(entry, FileRef):
                found.setdefault(entry.content.root, (entry, []))[1].append(peer)
        if not found:
            raise NotFound("no reachable host shares this model (it may serve it unshared)")
        entry, sources = max(found.values(), key=lambda f: len(f[1]))
        watcher = asyncio.ensure_future(_report(bitswap, entry.size, progress))
        try:
            await exchange.read_to_file(entry.content, sources, dest, sha256=pin.sha256)
        finally:
            watcher.cancel()
        return FetchedModel(dest, pin.sha256, entry.size, [p.peer_id for p in sources])
    finally:
        await host.stop()
        blocks.close()
        shutil.rmtree(landing, ignore_errors=True)


async def _report(
    bitswap: Bitswap, total: int, progress: Callable[[int, int], None] | None
) -> None:
    if progress is None:
        return
    while True:
        progress(min(bitswap.counters.bytes_received, total), total)
        await asyncio.sleep(0.2)
