"""Our Bitswap engine between real P2PHosts on 127.0.0.1: blocks from two providers at once,
DONT_HAVE from a provider that did not publish a block, and the peers that break the rules —
a liar, a pusher of unwanted blocks, a greedy wantlist, an oversized message — cut off while
everyone else goes on."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from libp2p.bitswap.pb.bitswap_pb2 import Message as PbMessage
from storage_peers import Node, connect, nodes

from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.p2p import P2PError
from fabstir_sdk.protocol import encode_uvarint
from fabstir_sdk.storage import content
from fabstir_sdk.storage.bitswap import (
    MAX_CID_BYTES,
    MAX_MESSAGE,
    MAX_WANTS,
    PROTOCOLS,
    WANT_TIMEOUT_S,
    Bitswap,
    blake3_cid,
)
from fabstir_sdk.storage.blobs import blake3_256
from fabstir_sdk.storage.errors import NotFound

WANT, HAVE = PbMessage.Wantlist.Block, PbMessage.Wantlist.Have


class LyingBitswap(Bitswap):
    """Injected fault: every block it sends has one byte flipped (under the wanted block's
    prefix, so it claims to be the wanted block)."""

    async def _answer(
        self, message: PbMessage, raw: bytes, have_only: bool, send_dont_have: bool
    ) -> int:
        before = len(message.payload)
        size = await super()._answer(message, raw, have_only, send_dont_have)
        if len(message.payload) > before:
            block = message.payload[-1]
            block.data = block.data[:-1] + bytes([block.data[-1] ^ 1])
        return size


class Probe(Bitswap):
    """Test double: records every message that arrives and acts on none (so it never cuts
    anyone off, nor serves anything)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[PbMessage] = []

    async def _handle(self, peer: str, message: PbMessage) -> None:
        self.messages.append(message)

    def presences(self, kind: int) -> list[bytes]:
        return [bytes(p.cid) for m in self.messages for p in m.blockPresences if p.type == kind]

    def blocks(self) -> int:
        return sum(len(m.payload) for m in self.messages)


def probe_of(node: Node) -> Probe:
    assert isinstance(node.bitswap, Probe)
    return node.bitswap


def cids(hashes: Sequence[bytes]) -> list[bytes]:
    return [blake3_cid(h).to_bytes() for h in hashes]


def wants(raws: Sequence[bytes], kind: int = WANT, send_dont_have: bool = False) -> bytes:
    message = PbMessage()
    for raw in raws:
        message.wantlist.entries.add(block=raw, wantType=kind, sendDontHave=send_dont_have)
    return message.SerializeToString()


def absent(n: int, salt: str = "") -> list[bytes]:
    """CIDs of ``n`` blocks nobody has."""
    return cids([blake3_256(f"absent {salt} {i}".encode()) for i in range(n)])


async def send_raw(sender: Node, to: Node, *frames: bytes) -> None:
    """Write ``frames`` as they are on a new Bitswap stream to ``to``, close it, and wait
    until ``to`` has read everything and closed (or reset) its side."""
    stream = await sender.host.open_stream(to.address, PROTOCOLS[0])
    with contextlib.suppress(ConnectionResetError, P2PError):  # it may reset us midway
        for frame in frames:
            await stream.write(frame)
    await stream.close()
    await asyncio.wait_for(stream.closed, 30)


def framed(body: bytes) -> bytes:
    return encode_uvarint(len(body)) + body


async def ignored_after_cut(victim: Node, probe: Node, hash: bytes) -> None:
    """``probe`` is cut off by ``victim``: its want for a block ``victim`` serves is not even
    read (a want that is read is queued for the peer before ``victim`` closes the stream)."""
    sent, seen = victim.bitswap.counters.blocks_sent, len(probe_of(probe).messages)
    with contextlib.suppress(P2PError):  # the stream may be reset while it is negotiated
        await send_raw(probe, victim, framed(wants(cids([hash]))))
    assert probe.peer_id not in victim.bitswap._peers  # no wantlist kept for it
    assert victim.bitswap.counters.blocks_sent == sent
    assert len(probe_of(probe).messages) == seen


# --------------------------------------------------------------------------- fetching


def test_content_of_several_blocks_comes_from_both_providers(tmp_path: Path) -> None:
    data = os.urandom(6 * content.BLOCK_SIZE + 1234)

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap, Bitswap) as (reader, one, two):
            ref, hashes = one.publish(data)
            assert two.publish(data) == (ref, hashes)
            assert len(hashes) == 8  # the manifest and seven blocks
            await connect(reader, one, two)

            await reader.bitswap.fetch_blocks([one.peer_id, two.peer_id], hashes)

            assert content.read_bytes(reader.store, ref) == data  # hashed end to end
            sent = [one.bitswap.counters.blocks_sent, two.bitswap.counters.blocks_sent]
            assert min(sent) > 0 and sum(sent) == len(hashes)
            assert reader.bitswap.counters.blocks_received == len(hashes)
            assert reader.bitswap.counters.bytes_received == sum(
                len(reader.store.get(h)) for h in hashes
            )
            assert reader.bitswap.counters.peers_cut == 0

            # Fetching what the store holds asks nobody.
            await reader.bitswap.fetch_blocks([one.peer_id, two.peer_id], hashes)
            assert one.bitswap.counters.blocks_sent + two.bitswap.counters.blocks_sent == 8

    asyncio.run(main())


def test_an_unpublished_block_gets_dont_have_and_comes_from_another_provider(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap, Bitswap, Probe) as nodes_:
            reader, stingy, generous, probe = nodes_
            secret = b"stored by both, published by one"
            hash = stingy.store.put(secret)  # in its store, not published
            generous.publish(secret)
            await connect(reader, stingy, generous)

            # The stingy node says so, when asked to, for want-block and want-have alike.
            await send_raw(
                probe,
                stingy,
                framed(wants(cids([hash]), WANT, send_dont_have=True)),
                framed(wants(absent(1), HAVE)),
            )
            heard = probe_of(probe)
            await wait_until_async(
                lambda: len(heard.presences(PbMessage.DontHave)) == 2, 30, "two DONT_HAVEs"
            )
            assert heard.blocks() == 0

            # The reader asks the stingy one first, hears DONT_HAVE, and asks the other.
            started = time.monotonic()
            got = await reader.bitswap.fetch(
                [stingy.peer_id, generous.peer_id], cids([hash]), WANT_TIMEOUT_S
            )
            assert got == {cids([hash])[0]: secret}
            assert time.monotonic() - started < WANT_TIMEOUT_S / 2  # it did not time out
            assert stingy.bitswap.counters.blocks_sent == 0
            assert generous.bitswap.counters.blocks_sent == 1
            assert not reader.bitswap.banned(stingy.peer_id)  # DONT_HAVE is honest

            # A generous node answers want-have with HAVE, and sends no block for it.
            await send_raw(probe, generous, framed(wants(cids([hash]), HAVE)))
            await wait_until_async(lambda: heard.presences(PbMessage.Have) == cids([hash]), 30)
            assert heard.blocks() == 0
            assert generous.bitswap.counters.blocks_sent == 1

            # Nobody has it: NotFound once every provider said so.
            with pytest.raises(NotFound):
                await reader.bitswap.fetch([stingy.peer_id, generous.peer_id], absent(1, "x"))

    asyncio.run(main())


def test_a_lying_provider_is_cut_off_and_the_fetch_completes_from_an_honest_one(
    tmp_path: Path,
) -> None:
    data = os.urandom(3 * content.BLOCK_SIZE + 77)

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, LyingBitswap, Bitswap) as (reader, liar, honest):
            ref, hashes = liar.publish(data)
            honest.publish(data)
            await connect(reader, liar, honest)

            # The liar is first in line, so it gets the first wants.
            await reader.bitswap.fetch_blocks([liar.peer_id, honest.peer_id], hashes)

            assert content.read_bytes(reader.store, ref) == data
            assert liar.bitswap.counters.blocks_sent > 0  # it did answer, with lies
            assert reader.bitswap.banned(liar.peer_id)
            assert not reader.bitswap.banned(honest.peer_id)
            assert reader.bitswap.counters.peers_cut == 1
            assert reader.bitswap.counters.blocks_received == len(hashes)

            # Cut off: it is asked for nothing more, even when it is the only provider.
            lies_told = liar.bitswap.counters.blocks_sent
            _, more = liar.publish(os.urandom(1000))
            with pytest.raises(NotFound):
                await reader.bitswap.fetch_blocks([liar.peer_id], more)
            assert liar.bitswap.counters.blocks_sent == lies_told

    asyncio.run(main())


def test_the_same_blocks_fetched_twice_at_once_are_asked_for_once(tmp_path: Path) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Bitswap) as (reader, provider):
            hashes = [provider.publish(os.urandom(100_000))[0].root for _ in range(4)]
            await connect(reader, provider)
            one, two = await asyncio.gather(
                reader.bitswap.fetch([provider.peer_id], cids(hashes)),
                reader.bitswap.fetch([provider.peer_id], cids(hashes[1:])),
            )
            assert set(one) == set(cids(hashes)) and set(two) == set(cids(hashes[1:]))
            assert provider.bitswap.counters.blocks_sent == 4
            assert not reader.bitswap.banned(provider.peer_id)

    asyncio.run(main())


def test_concurrent_messages_to_one_peer_arrive_whole(tmp_path: Path) -> None:
    """Blocks we serve to a peer and our own wants to it share one stream: a big message
    written in chunks must not be interleaved with a want sent meanwhile."""

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Probe) as (server, probe):
            await connect(server, probe)
            big = PbMessage()
            for _ in range(3):
                data = os.urandom(content.BLOCK_SIZE)
                big.payload.add(prefix=blake3_cid(blake3_256(data)).prefix, data=data)
            want = absent(1)
            await server.bitswap._send_wants(probe.peer_id, [(want[0], False)])
            state = server.bitswap._peers[probe.peer_id]

            async def wants_meanwhile(big_write: asyncio.Task[None]) -> int:
                """A want from a fresh task at every turn of the loop while the big message
                is written (a fresh task may find the stream's slots free before the
                writer, woken by the same free slot, has resumed)."""
                sent: list[asyncio.Future[None]] = []
                while not big_write.done():
                    await asyncio.sleep(0)
                    sent.append(
                        asyncio.ensure_future(
                            server.bitswap._send_wants(probe.peer_id, [(want[0], False)])
                        )
                    )
                await asyncio.gather(*sent)
                return len(sent)

            messages = 1
            for _ in range(3):
                big_write = asyncio.ensure_future(server.bitswap._send(probe.peer_id, state, big))
                messages += 1 + await wants_meanwhile(big_write)
                await big_write
            heard = probe_of(probe)
            await wait_until_async(lambda: len(heard.messages) == messages, 30, "every message")
            assert heard.blocks() == 9

    asyncio.run(main())


# --------------------------------------------------------------------------- rule breakers


def test_a_peer_that_sends_a_block_nobody_wanted_is_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Probe, Probe, Bitswap) as nodes_:
            victim, pusher, old_pusher, honest = nodes_
            _, (hash,) = victim.publish(b"for honest peers")

            spam = PbMessage()
            spam.payload.add(prefix=blake3_cid(blake3_256(b"spam")).prefix, data=b"spam")
            await send_raw(pusher, victim, framed(spam.SerializeToString()))
            assert victim.bitswap.banned(pusher.peer_id)
            assert not victim.store.has(blake3_256(b"spam"))  # not kept either
            await ignored_after_cut(victim, pusher, hash)

            # Bitswap 1.0 blocks (CIDv0, sha2-256) are never ours to want.
            old = PbMessage()
            old.blocks.append(b"an old-style block")
            await send_raw(old_pusher, victim, framed(old.SerializeToString()))
            assert victim.bitswap.banned(old_pusher.peer_id)
            assert victim.bitswap.counters.peers_cut == 2

            # Everyone else is served as before.
            await connect(honest, victim)
            got = await honest.bitswap.fetch([victim.peer_id], cids([hash]))
            assert list(got.values()) == [b"for honest peers"]

    asyncio.run(main())


def test_a_peer_that_wants_more_than_max_wants_is_cut_off(tmp_path: Path) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Probe) as (victim, greedy):
            _, (hash,) = victim.publish(b"worth wanting")

            # At the limit: every want answered (DONT_HAVE, as asked).
            await send_raw(greedy, victim, framed(wants(absent(MAX_WANTS), send_dont_have=True)))
            heard = probe_of(greedy)
            await wait_until_async(
                lambda: len(heard.presences(PbMessage.DontHave)) == MAX_WANTS, 30, "every answer"
            )
            assert not victim.bitswap.banned(greedy.peer_id)

            # One over: cut off, and its later wants are ignored.
            await send_raw(greedy, victim, framed(wants(absent(MAX_WANTS + 1, "more"))))
            assert victim.bitswap.banned(greedy.peer_id)
            assert victim.bitswap.counters.peers_cut == 1
            await ignored_after_cut(victim, greedy, hash)

    asyncio.run(main())


def test_a_peer_that_wants_an_overlong_cid_is_cut_off(tmp_path: Path) -> None:
    """Injected fault: wantlist entries naming CIDs of up to a whole message each would make
    us hold (and echo in DONT_HAVE) MAX_WANTS times that; one over MAX_CID_BYTES is refused."""

    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Probe) as (victim, hoarder):
            _, (hash,) = victim.publish(b"worth wanting")
            overlong = b"\x01\x55\x1e" + os.urandom(MAX_CID_BYTES)
            await send_raw(hoarder, victim, framed(wants([overlong], send_dont_have=True)))
            assert victim.bitswap.banned(hoarder.peer_id)
            assert probe_of(hoarder).presences(PbMessage.DontHave) == []  # nothing echoed
            await ignored_after_cut(victim, hoarder, hash)

    asyncio.run(main())


def test_oversized_or_malformed_messages_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        async with nodes(tmp_path, Bitswap, Probe, Probe, Probe) as nodes_:
            victim, big, garbled, clumsy = nodes_
            _, (hash,) = victim.publish(b"a block")

            # A length over MAX_MESSAGE is refused before any of the body is read.
            await send_raw(big, victim, encode_uvarint(MAX_MESSAGE + 1), b"\0" * 1024)
            assert victim.bitswap.banned(big.peer_id)
            await ignored_after_cut(victim, big, hash)

            # A length prefix that never ends.
            await send_raw(garbled, victim, b"\xff" * 11)
            assert victim.bitswap.banned(garbled.peer_id)

            # A body that is not a Bitswap message ends that stream (reset), nothing more:
            # the peer's next stream is served, and a CID we cannot parse only costs itself.
            await send_raw(clumsy, victim, framed(b"\xff\xff\xff"))
            assert not victim.bitswap.banned(clumsy.peer_id)
            await send_raw(clumsy, victim, framed(wants([b"\xff" * 11, *cids([hash])])))
            await wait_until_async(lambda: probe_of(clumsy).blocks() == 1, 30, "the block")
            assert victim.bitswap.counters.peers_cut == 2

    asyncio.run(main())
