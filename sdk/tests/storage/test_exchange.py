"""Exchange between real P2PHosts on 127.0.0.1: content found through Kademlia provider records
keyed by its root CID and fetched by its root alone, a lying provider among the ones the DHT
names, and content that is checked end to end (a manifest whose blocks are all genuine but do
not add up to the content it names is refused)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from libp2p.bitswap.pb.bitswap_pb2 import Message as PbMessage
from storage_peers import connect, nodes

from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.storage import content
from fabstir_sdk.storage.bitswap import Bitswap
from fabstir_sdk.storage.blobs import blake3_256, cid_of
from fabstir_sdk.storage.content import ContentRef, Manifest
from fabstir_sdk.storage.errors import CorruptBlock, NotFound
from fabstir_sdk.storage.exchange import content_key


class LyingBitswap(Bitswap):
    """Injected fault: every block it sends has its first byte flipped, under the wanted
    block's prefix (so it claims to be the wanted block)."""

    async def _answer(
        self, message: PbMessage, raw: bytes, have_only: bool, send_dont_have: bool
    ) -> int:
        before = len(message.payload)
        size = await super()._answer(message, raw, have_only, send_dont_have)
        if len(message.payload) > before:
            block = message.payload[-1]
            block.data = bytes([block.data[0] ^ 1]) + block.data[1:]
        return size


def test_content_key_is_the_root_cid() -> None:
    root = blake3_256(b"root")
    assert content_key(root) == cid_of(root)
    assert content_key(root).startswith("bafkr4i")


def test_content_found_in_the_dht_is_fetched_by_its_root_past_a_lying_provider(
    tmp_path: Path,
) -> None:
    data = os.urandom(5 * content.BLOCK_SIZE + 3)

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap, LyingBitswap) as (reader, honest, liar):
            refs = [p.publish(data, compress=True, with_sha256=True)[0] for p in (honest, liar)]
            ref = refs[0]
            assert refs[1] == ref and ref.is_manifest and ref.sha256 is not None
            await connect(honest, liar)
            await connect(reader, honest, liar)
            for provider in (honest, liar):
                await provider.exchange.provide(ref)
            both = {honest.peer_id, liar.peer_id}

            async def both_found() -> set[str]:  # records reach the DHT a moment after provide
                found = {p.peer_id for p in await reader.exchange.providers(content_key(ref.root))}
                return found if found == both else set()

            found: set[str] = await wait_until_async(
                both_found, 30, "both providers in the DHT", interval=0.2
            )
            assert found == both

            got = await reader.exchange.fetch(ref.root)  # no providers given: the DHT's
            assert got == ref
            assert content.read_bytes(reader.store, got) == data
            assert reader.bitswap.banned(liar.peer_id)
            assert reader.bitswap.counters.peers_cut == 1
            assert honest.bitswap.counters.blocks_sent > 0

    asyncio.run(main())


def test_a_small_raw_root_and_content_already_here(tmp_path: Path) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap) as (reader, owner):
            ref = owner.publish(b"one small block", compress=False)[0]
            assert not ref.is_manifest
            got = await reader.exchange.fetch(ref.root, [owner.address])
            assert got == ContentRef(ref.root, ref.root, len(b"one small block"))
            assert reader.store.get(ref.root) == b"one small block"
            # Everything is here now: no provider needed (and none is asked).
            sent = owner.bitswap.counters.blocks_sent
            assert await reader.exchange.fetch(ref, []) == ref
            assert owner.bitswap.counters.blocks_sent == sent
            # Nobody provides this one.
            with pytest.raises(NotFound):
                await reader.exchange.fetch(blake3_256(b"nowhere"))

    asyncio.run(main())


def test_content_is_checked_end_to_end(tmp_path: Path) -> None:
    """Injected fault: a provider publishes a manifest whose blocks are genuine (each hashes
    to its name) but whose content hash is another content's. Every block arrives and is
    accepted; the end-to-end check refuses the whole, and a ref that names other content than
    the root holds is refused too."""

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap) as (reader, forger):
            pieces = [os.urandom(content.BLOCK_SIZE), b"tail"]
            blocks = [forger.store.put(p) for p in pieces]
            size = sum(map(len, pieces))
            forged = Manifest(blake3_256(b"something else"), size, None, tuple(blocks), None)
            root = forger.store.put(forged.encode(), kind="manifest", children=blocks)
            forger.published.update([root, *blocks])
            with pytest.raises(CorruptBlock, match="does not hash"):
                await reader.exchange.fetch(root, [forger.address])
            assert all(reader.store.has(h) for h in blocks)  # each block itself was fine

            honest = forger.publish(b"x" * 10, compress=False)[0]
            claimed = ContentRef(honest.root, honest.root, 11)  # one byte more than it holds
            with pytest.raises(CorruptBlock, match="not the one"):
                await reader.exchange.fetch(claimed, [forger.address])

    asyncio.run(main())


def test_a_provider_that_lacks_blocks_is_passed_over(tmp_path: Path) -> None:
    """Two providers share the manifest, but one has only half the blocks: the other sends
    the rest, and the fetch completes."""
    data = os.urandom(4 * content.BLOCK_SIZE)

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap, Bitswap) as (reader, full, partial):
            ref = full.publish(data, compress=False)[0]
            partial.publish(data, compress=False)
            blocks = content.blocks_of(partial.store, ref)
            partial.published.difference_update(blocks[::2])
            await connect(reader, full, partial)
            got = await reader.exchange.fetch(ref, [partial.address, full.address])
            assert got == ref and content.read_bytes(reader.store, ref) == data
            await wait_until_async(
                lambda: full.bitswap.counters.blocks_sent >= 2, 10, "the full provider's blocks"
            )
            assert not reader.bitswap.banned(partial.peer_id)  # DONT_HAVE is honest

    asyncio.run(main())
