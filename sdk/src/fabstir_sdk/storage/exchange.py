"""Content and trees between peers: provider records, signed roots, paths read over Bitswap.

Any peer fetches content by its root block from any providers (Kademlia provider records are
keyed by the root's CID), block by block over :mod:`.bitswap`, each block checked by its hash
as it arrives and the whole content by its BLAKE3 (and sha256) before it is used.

A peer's *tree* is read the same way: its signed root (``/fabstir/storage/root/1.0.0``, checked
by :class:`~.registry.RootResolver`: the peer's own key, no older than seen), then the directory
and HAMT blocks a path needs, then the file's content. Nothing a peer says is taken on trust:
a forged or stale root is refused, a block that does not hash to its name is never accepted,
and the caller can also pin what the content must hash to (a model's sha256 on chain).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import multihash
from cid import make_cid

from fabstir_sdk.p2p import P2PHost, PeerAddress
from fabstir_sdk.protocol import (
    MAX_SMALL_FRAME,
    STORAGE_ROOT_PROTOCOL,
    Error,
    FramedStream,
    ProtocolError,
    RootRequest,
    RootResponse,
)
from fabstir_sdk.storage import content, dirv1
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.content import ContentRef
from fabstir_sdk.storage.dirv1 import DirRef, Entry, FileRef
from fabstir_sdk.storage.errors import CorruptBlock, NotFound, StorageError
from fabstir_sdk.storage.hamt import HamtNode, name_hash, slot_of
from fabstir_sdk.storage.registry import RootResolver
from fabstir_sdk.storage.tree import split_path


def model_key(sha256: bytes) -> str:
    """The DHT key of "who shares the file with this sha256": the CIDv1 (raw, sha2-256) that
    IPFS tools give the file as one raw block."""
    return str(make_cid(1, "raw", multihash.encode(sha256, "sha2-256")).encode("base32").decode())


class Exchange:
    def __init__(self, host: P2PHost, store: BlockStore, bitswap: Bitswap) -> None:
        self.host = host
        self.store = store
        self.bitswap = bitswap
        self.roots = RootResolver()

    # ----------------------------------------------------------------- providers

    async def provide(self, key: str) -> None:
        await self.host.provide(key)

    async def providers(self, key: str) -> list[PeerAddress]:
        return await self.host.find_providers(key)

    async def _reach(self, peers: Sequence[PeerAddress]) -> list[str]:
        """Dial those we can; the ids of those connected."""
        await asyncio.gather(  # a peer we cannot dial is simply not asked
            *(self.host.connect(p.peer_id, p.addrs, 10) for p in peers if p.addrs),
            return_exceptions=True,
        )
        connected = self.host.connected_peers()
        return [p.peer_id for p in peers if p.peer_id in connected]

    # ----------------------------------------------------------------- content

    async def fetch(self, ref: ContentRef | bytes, providers: Sequence[PeerAddress]) -> None:
        """Bring the blocks of ``ref`` (a ContentRef, or a bare root) into the local store."""
        peers = await self._reach(providers)
        if not peers:
            raise NotFound("no provider is reachable")
        root = ref.root if isinstance(ref, ContentRef) else ref
        await self.bitswap.fetch_blocks(peers, [root])
        first = await asyncio.to_thread(self.store.get, root)
        manifest = None
        if not isinstance(ref, ContentRef) or ref.is_manifest:
            with contextlib.suppress(StorageError):
                manifest = content.load_manifest(first)
            if isinstance(ref, ContentRef) and manifest is None:
                raise CorruptBlock("the entry names a manifest, the block is not one")
        if manifest is not None:
            await self.bitswap.fetch_blocks(peers, list(manifest.blocks))

    async def read(
        self, ref: ContentRef, providers: Sequence[PeerAddress], max_size: int = 64 << 20
    ) -> bytes:
        await self.fetch(ref, providers)
        return await asyncio.to_thread(content.read_bytes, self.store, ref, max_size)

    async def read_to_file(
        self,
        ref: ContentRef,
        providers: Sequence[PeerAddress],
        dest: Path,
        sha256: bytes | None = None,
    ) -> None:
        """Fetch ``ref`` into ``dest`` (atomically); with ``sha256``, the file must hash to it
        or nothing is written."""
        await self.fetch(ref, providers)

        def write() -> None:
            tmp = dest.with_name(f".{dest.name}.fetched")
            content.read_to_file(self.store, ref, tmp)
            if sha256 is not None and _sha256_file(tmp) != sha256:
                tmp.unlink(missing_ok=True)
                raise CorruptBlock("the fetched file does not match its pinned sha256")
            tmp.replace(dest)

        await asyncio.to_thread(write)

    # ----------------------------------------------------------------- trees

    async def root_of(self, peer: PeerAddress, timeout: float = 10) -> bytes:
        """``peer``'s current root directory hash, from its signed registry entry."""
        stream = await self.host.open_stream(peer, STORAGE_ROOT_PROTOCOL, timeout)
        framed = FramedStream(stream, MAX_SMALL_FRAME)
        try:
            await framed.send(RootRequest())
            reply = await framed.receive(timeout=timeout)
        except ProtocolError as exc:
            raise StorageError(f"{peer.peer_id} did not send its root: {exc}") from exc
        finally:
            with contextlib.suppress(Exception):
                await stream.close()
        if isinstance(reply, Error):
            raise StorageError(f"{peer.peer_id} refused: {reply.code}: {reply.message}")
        if not isinstance(reply, RootResponse):
            raise StorageError(f"{peer.peer_id} answered {reply.TYPE}")
        return self.roots.accept(reply.entry, peer.peer_id).root

    async def _block(self, peer: str, hash: bytes) -> bytes:
        if not self.store.has(hash):
            await self.bitswap.fetch_blocks([peer], [hash])
        return await asyncio.to_thread(self.store.get, hash)

    async def _dir(self, peer: str, hash: bytes) -> dirv1.DirV1:
        return dirv1.decode(await self._block(peer, hash))

    async def _hamt(self, peer: str, hash: bytes, depth: int) -> HamtNode:
        await self._block(peer, hash)
        return await asyncio.to_thread(HamtNode.from_block, hash, depth, self.store.get)

    async def _lookup(self, peer: str, d: dirv1.DirV1, name: str) -> Entry | None:
        if d.sharding is None:
            return d.dirs.get(name) or d.files.get(name)
        node, h = await self._hamt(peer, d.sharding.root, 0), name_hash(name)
        while True:
            held = node.slots.get(slot_of(h, node.depth))
            if held is None:
                return None
            if isinstance(held, dict):
                return held.get(name)
            if isinstance(held, HamtNode):
                node = held
            else:
                node = await self._hamt(peer, held[0], node.depth + 1)

    async def stat(self, peer: PeerAddress, root: bytes, path: str) -> Entry | None:
        """The entry at ``path`` in the tree ``root`` of ``peer`` (fetched as needed)."""
        await self._reach([peer])
        entry: Entry | None = DirRef(root)
        for part in split_path(path):
            if not isinstance(entry, DirRef):
                return None
            entry = await self._lookup(
                peer.peer_id, await self._dir(peer.peer_id, entry.hash), part
            )
        return entry

    async def list_dir(self, peer: PeerAddress, root: bytes, path: str) -> dict[str, Entry]:
        """Every entry of a directory of ``peer``'s tree (a small one: results, models)."""
        entry = await self.stat(peer, root, path)
        if not isinstance(entry, DirRef):
            raise NotFound(f"{path}: no such directory at {peer.peer_id}")
        d = await self._dir(peer.peer_id, entry.hash)
        if d.sharding is None:
            return {**d.dirs, **d.files}
        out: dict[str, Entry] = {}
        stack = [(d.sharding.root, 0)]
        while stack:
            hash, depth = stack.pop()
            node = await self._hamt(peer.peer_id, hash, depth)
            for held in node.slots.values():
                if isinstance(held, dict):
                    out.update(held)
                elif isinstance(held, tuple):
                    stack.append((held[0], depth + 1))
        return out

    async def get_file(
        self, peer: PeerAddress, root: bytes, path: str, max_size: int = 64 << 20
    ) -> bytes:
        entry = await self.stat(peer, root, path)
        if not isinstance(entry, FileRef):
            raise NotFound(f"{path}: no such file at {peer.peer_id}")
        return await self.read(entry.content, [peer], max_size)


def _sha256_file(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()
