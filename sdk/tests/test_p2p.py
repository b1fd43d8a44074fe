"""The libp2p bridge on real hosts over 127.0.0.1: backpressure both ways, dials that time
out, and a log that strangers cannot flood."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import Iterator
from typing import Any, cast

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux

from fabstir_devtools.wait import wait_until, wait_until_async
from fabstir_sdk.discovery import Discovery, HostInfo
from fabstir_sdk.errors import FabstirError
from fabstir_sdk.p2p import (
    READ_SLOTS,
    WRITE_CHUNK,
    WRITE_SLOTS,
    YAMUX_MAX_WINDOW,
    BridgedStream,
    P2PError,
    P2PHost,
    PeerAddress,
)
from fabstir_sdk.protocol import HOSTS_TOPIC

PROTOCOL = "/fabstir-test/firehose/1.0.0"


def test_a_slow_reader_stalls_the_writer_instead_of_growing_memory() -> None:
    """16 MiB offered to a reader that does not read: the writer stops after what the
    bridge slots and the peer's Yamux window hold, and everything arrives intact later."""
    total = 256 * WRITE_CHUNK
    # What may be in flight before the writer must stop: our outbound slots, the reader's
    # Yamux window (with one frame of slack) and its read-ahead slots.
    bound = (WRITE_SLOTS + READ_SLOTS + 2) * WRITE_CHUNK + YAMUX_MAX_WINDOW

    async def main() -> None:
        writer_host, reader_host = (
            P2PHost(secrets.token_bytes(32)),
            P2PHost(secrets.token_bytes(32)),
        )
        written = 0
        peak_in_flight = 0
        served: list[BridgedStream] = []

        async def firehose(stream: BridgedStream) -> None:
            nonlocal written, peak_in_flight
            served.append(stream)
            await stream.read(1)
            for i in range(total // WRITE_CHUNK):
                await stream.write(bytes([i % 251]) * WRITE_CHUNK)
                written += WRITE_CHUNK
                peak_in_flight = max(peak_in_flight, stream._in_flight)
            await stream.close()

        writer_host.set_handler(PROTOCOL, firehose)
        await writer_host.start()
        await reader_host.start()
        try:
            stream = await reader_host.open_stream(
                PeerAddress(writer_host.peer_id, writer_host.addrs), PROTOCOL
            )
            await stream.write(b"go")
            # Both bridges full and the writer waiting for the reader's window: stalled.
            await wait_until_async(
                lambda: served
                and served[0].stalled
                and served[0]._in_flight == WRITE_SLOTS
                and stream._incoming.qsize() == READ_SLOTS,
                60,
                "the writer to stall on the reader",
            )
            assert written <= bound, f"{written} bytes written to a reader that reads nothing"
            received = bytearray()
            peak_queue = 0
            while chunk := await stream.read(1 << 20):
                received += chunk
                peak_queue = max(peak_queue, stream._incoming.qsize())
            assert len(received) == total
            assert all(
                received[i] == (i // WRITE_CHUNK) % 251 for i in range(0, total, WRITE_CHUNK)
            )
            assert peak_queue <= READ_SLOTS + 1 and peak_in_flight <= WRITE_SLOTS
            print(f"stalled after {written / 2**20:.2f} MiB of {total / 2**20:.0f} MiB")
        finally:
            await reader_host.stop()
            await writer_host.stop()

    asyncio.run(main())


def test_reset_aborts_a_write_that_waits_for_the_peer() -> None:
    async def main() -> None:
        writer_host, reader_host = (
            P2PHost(secrets.token_bytes(32)),
            P2PHost(secrets.token_bytes(32)),
        )
        outcome: list[BaseException | None] = []
        served: list[BridgedStream] = []

        async def firehose(stream: BridgedStream) -> None:
            served.append(stream)
            await stream.read(1)
            try:
                while True:
                    await stream.write(b"x" * WRITE_CHUNK)
            except Exception as exc:
                outcome.append(exc)

        writer_host.set_handler(PROTOCOL, firehose)
        await writer_host.start()
        await reader_host.start()
        try:
            stream = await reader_host.open_stream(
                PeerAddress(writer_host.peer_id, writer_host.addrs), PROTOCOL
            )
            await stream.write(b"go")
            await wait_until_async(lambda: served and served[0].stalled, 60, "a stalled write")
            await served[0].reset()
            await wait_until_async(lambda: outcome, 30, "the blocked write to fail")
            assert isinstance(outcome[0], ConnectionResetError)
        finally:
            await reader_host.stop()
            await writer_host.stop()

    asyncio.run(main())


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never says a word (a host that drops
    everything after the handshake would look the same)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"/ip4/127.0.0.1/tcp/{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


def test_a_dial_that_times_out_is_a_p2p_error_not_a_trio_one(silent_listener: str) -> None:
    async def main() -> None:
        client = P2PHost(secrets.token_bytes(32))
        await client.start()
        try:
            peer = P2PHost(secrets.token_bytes(32)).peer_id  # a key nobody answers for
            with pytest.raises(P2PError) as raised:
                await client.connect(peer, [silent_listener], timeout=1)
            assert isinstance(raised.value, FabstirError)
            assert not isinstance(raised.value.__cause__, trio.TooSlowError)
            host = HostInfo("0x" + "11" * 20, peer, [silent_listener], 1, 1, "")
            discovery = Discovery(cast(Any, None), client)
            with pytest.raises(P2PError):
                await discovery.ask_info(host, timeout=1)
        finally:
            await client.stop()

    asyncio.run(main())


class PlainPeers:
    """``count`` libp2p peers (Noise, Yamux, no gossipsub, no DHT), each with its own key,
    all connected to ``target`` until :meth:`stop`."""

    def __init__(self, target: str, count: int) -> None:
        self.target = target
        self.count = count
        self.connected = 0
        self.failed: list[BaseException] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        wait_until(lambda: self._token is not None, 30, "the plain peers to start")
        assert self._token is not None and self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(60)

    async def _main(self) -> None:
        self._stop = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            for _ in range(self.count):
                nursery.start_soon(self._one)

    async def _one(self) -> None:
        assert self._stop is not None
        key = ed25519_key_pair(secrets.token_bytes(32))
        host = new_host(
            key_pair=key,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(key, noise_privkey=x25519_key_pair().private_key)
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        )
        try:
            async with host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
                await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(self.target)))
                self.connected += 1
                await self._stop.wait()
        except Exception as exc:
            self.failed.append(exc)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_peers_without_gossipsub_cannot_flood_the_log(capfd: pytest.CaptureFixture[str]) -> None:
    """Every peer without gossipsub used to cost a 7-line ERROR (py-libp2p's pubsub keeps
    trying to open a gossipsub stream to it): 50 such peers now cost at most a few lines."""
    peers_count = 50
    everything = _Collect()  # what reaches the application's log, at any level
    logging.getLogger().addHandler(everything)
    # Watch the host try (and fail) gossipsub with each peer: py-libp2p says so at DEBUG.
    pubsub_log = logging.getLogger("libp2p.pubsub.pubsub")
    attempts = _Collect()
    pubsub_log.addHandler(attempts)
    pubsub_level = pubsub_log.level
    pubsub_log.setLevel(logging.DEBUG)

    def tried() -> set[str]:
        return {
            str(r.args[0])
            for r in list(attempts.records)
            if str(r.msg).startswith(("failed to open pubsub stream", "failed to register pubsub"))
            and r.args
        }

    try:

        async def main() -> None:
            host = P2PHost(secrets.token_bytes(32))
            host.on_gossip(HOSTS_TOPIC, lambda _data, _sender: None)
            await host.start()
            addr = host.addrs[0]
            target = addr if "/p2p/" in addr else f"{addr}/p2p/{host.peer_id}"
            peers = PlainPeers(target, peers_count)
            capfd.readouterr()
            everything.records.clear()
            peers.start()
            try:
                await wait_until_async(
                    lambda: peers.connected + len(peers.failed) == peers_count,
                    120,
                    "the plain peers to connect",
                )
                assert not peers.failed, peers.failed[:3]
                await wait_until_async(
                    lambda: len(tried()) >= peers_count,
                    120,
                    "the host to try gossipsub with every plain peer",
                )
            finally:
                await asyncio.to_thread(peers.stop)
                await host.stop()

        asyncio.run(main())
    finally:
        logging.getLogger().removeHandler(everything)
        pubsub_log.removeHandler(attempts)
        pubsub_log.setLevel(pubsub_level)
    stderr = capfd.readouterr().err
    logged = [
        r
        for r in everything.records
        if r.levelno >= logging.WARNING and not r.name.startswith("libp2p.pubsub.pubsub")
    ]
    lines = sum(r.getMessage().count("\n") + 1 for r in logged) + len(stderr.splitlines())
    print(f"{peers_count} peers without gossipsub: {lines} log lines")
    assert lines <= 10, [r.getMessage() for r in logged][:5] + stderr.splitlines()[:10]
