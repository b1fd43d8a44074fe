"""Real storage peers for the Bitswap and Exchange tests: a P2PHost on 127.0.0.1 with its own
block store, a Bitswap engine (a test may inject a faulty one) and an Exchange; each peer
serves only what it published."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from fabstir_sdk.p2p import P2PHost, PeerAddress
from fabstir_sdk.storage import content
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.content import ContentRef
from fabstir_sdk.storage.exchange import Exchange


@dataclass
class Node:
    host: P2PHost
    store: BlockStore
    bitswap: Bitswap
    exchange: Exchange
    published: set[bytes] = field(default_factory=set)

    @property
    def peer_id(self) -> str:
        return self.host.peer_id

    @property
    def address(self) -> PeerAddress:
        return PeerAddress(self.host.peer_id, self.host.addrs)

    def publish(
        self, data: bytes, compress: bool = False, with_sha256: bool = False
    ) -> tuple[ContentRef, list[bytes]]:
        """Store ``data`` and serve its blocks: its ref and block hashes."""
        ref = content.write_chunks(self.store, [data], compress=compress, with_sha256=with_sha256)
        hashes = [ref.root, *content.blocks_of(self.store, ref)]
        self.published.update(hashes)
        return ref, hashes


@contextlib.asynccontextmanager
async def nodes(tmp_path: Path, *kinds: type[Bitswap]) -> AsyncIterator[list[Node]]:
    """Started hosts, one per Bitswap class in ``kinds``."""
    made: list[Node] = []
    try:
        for i, kind in enumerate(kinds):
            host = P2PHost(secrets.token_bytes(32))
            store = BlockStore(tmp_path / f"node{i}")
            published: set[bytes] = set()
            bitswap = kind(host, store, served=published.__contains__)
            made.append(Node(host, store, bitswap, Exchange(host, store, bitswap), published))
            await host.start()
        yield made
    finally:
        for node in made:
            await node.host.stop()
            node.store.close()


async def connect(node: Node, *others: Node) -> None:
    for other in others:
        await node.host.connect(other.peer_id, other.host.addrs)
