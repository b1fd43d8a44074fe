"""Content and trees between peers: provider records, signed roots, paths read over Bitswap.

Any peer fetches content by its root block from any providers (Kademlia provider records are
keyed by the root's CID string, :func:`content_key`), block by block over :mod:`.bitswap`, each
block checked by its hash as it arrives and the whole content by its BLAKE3 (and sha256) before
it is used. A provider that serves a block under a wrong hash is cut off by Bitswap, and the
blocks asked of it are asked of the others.

A peer's *tree* is read the same way: its signed root (``/fabstir/storage/root/1.0.0``, checked
by :class:`~.registry.RootResolver`: the peer's own key, no older than seen), then the directory
and HAMT blocks a path needs, then the file's content. Nothing a peer says is taken on trust:
a forged or stale root is refused, a block that does not hash to its name is never accepted,
and the caller can also pin what the content must hash to (a model's sha256 on chain).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import multihash
from cid import make_cid

from fabstir_sdk.digests import file_sha256
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
from fabstir_sdk.storage.blobs import cid_of
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


def content_key(root: bytes) -> str:
    """The DHT key of "who provides this content": its root block's CID (CIDv1, raw, BLAKE3,
    base32), the name IPFS tools print for the block."""
    return cid_of(root)


class Exchange:
    def __init__(self, host: P2PHost, store: BlockStore, bitswap: Bitswap) -> None:
        self.host = host
        self.store = store
        self.bitswap = bitswap
        self.roots = RootResolver()

    # ----------------------------------------------------------------- providers

    async def provide(self, what: ContentRef | str) -> None:
        """Announce in the DHT that we provide ``what``: content (keyed by its root's CID) or
        any other key (a model's :func:`model_key`)."""
        await self.host.provide(content_key(what.root) if isinstance(what, ContentRef) else what)

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

    async def fetch(
        self,
        ref: ContentRef | bytes,
        providers: Sequence[PeerAddress] | None = None,
        *,
        verify: bool = True,
    ) -> ContentRef:
        """Bring the blocks of ``ref`` (a ContentRef, or a bare root hash) into the local store
        from ``providers`` (found in the DHT by :func:`content_key` when None), every block
        checked as it arrives; with ``verify``, the content is then read back and checked end
        to end (its BLAKE3 and size, and its sha256 when the manifest has one; raises
        :class:`CorruptBlock`). Returns the content's ContentRef (for a bare root: from its
        manifest, or the raw block itself)."""
        await self._fetch_blocks(ref, providers)
        return await asyncio.to_thread(self._checked, ref, verify)

    def _checked(self, ref: ContentRef | bytes, verify: bool) -> ContentRef:
        """The ContentRef of ``ref``'s blocks in our store, which must agree with ``ref``; with
        ``verify``, the content read back and checked end to end."""
        root = ref.root if isinstance(ref, ContentRef) else ref
        first = self.store.get(root)
        manifest = None
        if not isinstance(ref, ContentRef) or ref.is_manifest:
            try:
                manifest = content.load_manifest(first)
            except StorageError:
                if isinstance(ref, ContentRef):
                    raise CorruptBlock("the entry names a manifest, the block is not one") from None
        if manifest is None:  # a raw block: its hash (checked by get) is the content's
            found = ContentRef(root, root, len(first))
        else:
            found = ContentRef(
                root, manifest.content_hash, manifest.size, manifest.compression, manifest.sha256
            )
            if verify:
                _drain(content.iter_content(self.store, root, manifest))
        if isinstance(ref, ContentRef) and (
            (found.content_hash, found.size, found.compression)
            != (ref.content_hash, ref.size, ref.compression)
            or (ref.sha256 is not None and ref.sha256 != found.sha256)
        ):
            raise CorruptBlock("the content is not the one the entry describes")
        return ref if isinstance(ref, ContentRef) else found

    async def _fetch_blocks(
        self, ref: ContentRef | bytes, providers: Sequence[PeerAddress] | None
    ) -> None:
        """The blocks of ``ref`` we lack, from the providers (asked only when we lack some)."""
        root = ref.root if isinstance(ref, ContentRef) else ref
        peers: list[str] = []

        async def fetch(hashes: list[bytes]) -> None:
            nonlocal peers
            if not peers:
                found = await self.providers(content_key(root)) if providers is None else providers
                peers = await self._reach(found)
                if not peers:
                    raise NotFound(f"no provider of {content_key(root)} is reachable")
            await self.bitswap.fetch_blocks(peers, hashes)

        if not self.store.has(root):
            await fetch([root])
        first = await asyncio.to_thread(self.store.get, root)
        manifest = None
        if not isinstance(ref, ContentRef) or ref.is_manifest:
            with contextlib.suppress(StorageError):
                manifest = content.load_manifest(first)
            if isinstance(ref, ContentRef) and manifest is None:
                raise CorruptBlock("the entry names a manifest, the block is not one")
        if manifest is not None:
            missing = [h for h in manifest.blocks if not self.store.has(h)]
            if missing:
                await fetch(missing)

    async def read(
        self,
        ref: ContentRef,
        providers: Sequence[PeerAddress] | None = None,
        max_size: int = 64 << 20,
    ) -> bytes:
        await self._fetch_blocks(ref, providers)  # read_bytes checks it end to end
        return await asyncio.to_thread(content.read_bytes, self.store, ref, max_size)

    async def read_to_file(
        self,
        ref: ContentRef,
        providers: Sequence[PeerAddress] | None,
        dest: Path,
        sha256: bytes | None = None,
    ) -> None:
        """Fetch ``ref`` into ``dest`` (atomically); with ``sha256``, the file must hash to it
        or nothing is written."""
        await self._fetch_blocks(ref, providers)  # read_to_file checks it end to end

        def write() -> None:
            tmp = dest.with_name(f".{dest.name}.fetched")
            content.read_to_file(self.store, ref, tmp)
            if sha256 is not None and file_sha256(tmp) != sha256:
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


def _drain(pieces: Iterator[bytes]) -> None:
    """Consume ``pieces`` (its end-to-end check runs after the last one), keeping none."""
    for _ in pieces:
        pass
