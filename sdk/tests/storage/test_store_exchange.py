"""Content between real peers on 127.0.0.1: Bitswap from several providers, a provider that
lies, peers that break the rules, and signed roots that are forged or stale."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from libp2p.bitswap.pb.bitswap_pb2 import Message as PbMessage

from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.p2p import BridgedStream, P2PHost, PeerAddress
from fabstir_sdk.protocol import (
    STORAGE_ROOT_PROTOCOL,
    FramedStream,
    RootResponse,
    encode_uvarint,
)
from fabstir_sdk.storage import content
from fabstir_sdk.storage.bitswap import PROTOCOLS, Bitswap, blake3_cid
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.errors import ForgedRoot, NotFound, StaleRoot
from fabstir_sdk.storage.exchange import Exchange
from fabstir_sdk.storage.registry import sign_entry
from fabstir_sdk.storage.tree import FileEntry, Store


@dataclass
class Peer:
    host: P2PHost
    store: Store
    bitswap: Bitswap
    exchange: Exchange
    seed: bytes
    revision_offset: int = 0

    @property
    def address(self) -> PeerAddress:
        return PeerAddress(self.host.peer_id, self.host.addrs)


class LyingBitswap(Bitswap):
    """Fault injection: answers every want with other bytes under the wanted block's prefix."""

    async def _answer(
        self, message: PbMessage, raw: bytes, have_only: bool, send_dont_have: bool
    ) -> int:
        size = await super()._answer(message, raw, have_only, send_dont_have)
        for block in message.payload:
            block.data = b"lies" + block.data[4:]
        return size


@contextlib.asynccontextmanager
async def peers(tmp_path: Path, n: int, liar: int | None = None) -> AsyncIterator[list[Peer]]:
    made: list[Peer] = []
    for i in range(n):
        seed = secrets.token_bytes(32)
        host = P2PHost(seed)
        store = Store(tmp_path / f"peer{i}")
        kind = LyingBitswap if i == liar else Bitswap
        bitswap = kind(host, store.blocks, served=lambda h, s=store: _published(s, h))
        peer = Peer(host, store, bitswap, Exchange(host, store.blocks, bitswap), seed)
        host.set_handler(STORAGE_ROOT_PROTOCOL, _root_handler(peer))
        made.append(peer)
    for peer in made:
        await peer.host.start()
    try:
        yield made
    finally:
        for peer in made:
            await peer.host.stop()
            peer.store.close()


def _published(store: Store, hash: bytes) -> bool:
    with contextlib.suppress(Exception):
        return store.blocks.refs(hash) > 0
    return False


def _root_handler(peer: Peer) -> object:
    async def serve(stream: BridgedStream) -> None:
        framed = FramedStream(stream)
        await framed.receive(timeout=10)
        revision = peer.store.revision + peer.revision_offset
        entry = sign_entry(peer.seed, revision, peer.store.root)
        await framed.send(RootResponse(entry.encode()))
        await stream.close()

    return serve


def test_content_comes_from_every_provider_and_a_liar_is_cut_off(tmp_path: Path) -> None:
    data = os.urandom(6 * content.BLOCK_SIZE + 5)

    async def main() -> None:
        async with peers(tmp_path, 4, liar=2) as (reader, honest, liar, other):
            refs = [p.store.put("/model.gguf", data, compress=None) for p in (honest, liar, other)]
            ref = refs[0].ref.content
            assert all(r.ref.content == ref for r in refs)
            await reader.exchange.fetch(ref, [honest.address, liar.address, other.address])
            assert content.read_bytes(reader.store.blocks, ref) == data
            assert honest.bitswap.counters.blocks_sent > 0
            assert other.bitswap.counters.blocks_sent > 0
            assert reader.bitswap.banned(liar.host.peer_id)
            assert reader.bitswap.counters.peers_cut == 1

    asyncio.run(main())


def test_a_block_nobody_has_is_not_found_and_unpublished_blocks_are_not_served(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with peers(tmp_path, 2) as (reader, owner):
            secret = owner.store.blocks.put(b"kept to myself")  # stored, not in the tree
            with pytest.raises(NotFound):
                await reader.bitswap.fetch([owner.host.peer_id], [_cid(secret)], timeout=10)
            assert not reader.bitswap.banned(owner.host.peer_id)  # DONT_HAVE is honest

    asyncio.run(main())


def _cid(hash: bytes) -> bytes:
    return blake3_cid(hash).to_bytes()


async def _send_raw(sender: Peer, to: Peer, message: PbMessage) -> None:
    stream = await sender.host.open_stream(to.address, PROTOCOLS[0])
    body = message.SerializeToString()
    await stream.write(encode_uvarint(len(body)) + body)
    await stream.close()


def test_peers_that_break_the_rules_are_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        async with peers(tmp_path, 4) as (victim, pusher, greedy, honest):
            # A block nobody asked for.
            unwanted = PbMessage()
            cid = blake3_cid(content.blake3_256(b"spam"))
            unwanted.payload.add(prefix=cid.prefix, data=b"spam")
            await _send_raw(pusher, victim, unwanted)
            await wait_until_async(
                lambda: victim.bitswap.banned(pusher.host.peer_id), 10, "the pusher to be cut off"
            )
            assert not victim.store.blocks.has(cid.digest)

            # More wants than a peer may have out.
            wants = PbMessage()
            for i in range(1100):
                wants.wantlist.entries.add(block=_cid(content.blake3_256(str(i).encode())))
            await _send_raw(greedy, victim, wants)
            await wait_until_async(
                lambda: victim.bitswap.banned(greedy.host.peer_id), 10, "the greedy peer cut off"
            )

            # Nobody else is affected.
            victim.store.put("/f", b"for honest peers", compress=None)
            entry = victim.store.stat("/f")
            assert isinstance(entry, FileEntry)
            got = await honest.exchange.read(entry.ref.content, [victim.address])
            assert got == b"for honest peers"

    asyncio.run(main())


def test_remote_trees_read_through_signed_roots(tmp_path: Path) -> None:
    async def main() -> None:
        async with peers(tmp_path, 2) as (reader, owner):
            with owner.store.batch():
                for i in range(1100):  # a sharded directory
                    owner.store.put(f"/results/9/{i:012d}", f"answer {i}".encode())
            root = await reader.exchange.root_of(owner.address)
            assert root == owner.store.root
            listed = await reader.exchange.list_dir(owner.address, root, "/results/9/")
            assert len(listed) == 1100
            text = await reader.exchange.get_file(owner.address, root, "/results/9/000000001077")
            assert text == b"answer 1077"
            assert await reader.exchange.stat(owner.address, root, "/results/9/x") is None

            owner.revision_offset = -1  # it now signs an older revision than we saw
            with pytest.raises(StaleRoot):
                await reader.exchange.root_of(owner.address)
            owner.seed = secrets.token_bytes(32)  # and now with a key that is not its own
            owner.revision_offset = 5
            with pytest.raises(ForgedRoot):
                await reader.exchange.root_of(owner.address)

    asyncio.run(main())


def test_oversized_messages_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with peers(tmp_path, 2) as (victim, sender):
            stream = await sender.host.open_stream(victim.address, PROTOCOLS[0])
            await stream.write(encode_uvarint(8 << 20))  # announces 8 MiB
            await wait_until_async(
                lambda: victim.bitswap.banned(sender.host.peer_id), 10, "the sender cut off"
            )
            await stream.reset()

    asyncio.run(main())


def test_blocks_of_a_missing_store_entry_are_not_found(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    with pytest.raises(NotFound):
        store.get(b"\x01" * 32)
