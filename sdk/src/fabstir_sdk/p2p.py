"""A libp2p host for both sides of Fabstir, running py-libp2p (trio-only) in its own thread
behind an asyncio API.

Security is Noise only and the muxer Yamux only, so any spec-conformant libp2p peer (js-libp2p,
rust-libp2p) can talk to us. Stream handlers are asyncio coroutines that receive a
:class:`BridgedStream`; anything they raise is contained, because an exception escaping a
py-libp2p handler takes the whole host down. Kademlia provider records are keyed by a CIDv1
(raw) of sha256(model id), and gossipsub carries host announcements.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

import multiaddr
import multihash
import trio
from cid import make_cid
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair as ed25519_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux import yamux as yamux_module
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from fabstir_sdk.errors import FabstirError

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[["BridgedStream"], Coroutine[Any, Any, None]]
_CLOSE = object()
#: Bytes per read from Yamux, and per chunk handed to it.
READ_CHUNK = WRITE_CHUNK = 1 << 16
#: Chunks that may wait for the asyncio reader, and chunks that may wait to go out.
READ_SLOTS = WRITE_SLOTS = 4
#: Seconds a write waits for a peer that does not read before the stream is reset.
WRITE_STALL_TIMEOUT = 60.0
#: The most a Yamux stream's receive window may grow to (py-libp2p, like go-yamux, lets it
#: grow to 16 MiB when the reader keeps up for a while): what a peer can make us buffer per
#: stream once our reader stops. Conforming peers never send a frame above the window.
YAMUX_MAX_WINDOW = 1 << 20
_yamux_autotune = yamux_module.YamuxStream._apply_autotune_epoch


def _capped_autotune(stream: Any, buffered: int) -> int:
    """py-libp2p's window growth (it doubles the target), stopped at :data:`YAMUX_MAX_WINDOW`.

    Only the growth is capped, not py-libp2p's ``MAX_WINDOW_SIZE``: that is also the largest
    DATA frame it accepts before it drops the whole connection, and py-libp2p grants up to
    one read more than its target (it counts a read twice in one branch of its window
    update). js-libp2p and go-libp2p fill the window in one frame, so with the frame limit at
    the target helia's first 1 MiB Bitswap block (a 1 MiB + 8 byte frame) killed the
    connection."""
    if stream.target_recv_window * 2 > YAMUX_MAX_WINDOW:
        return 0
    return int(_yamux_autotune(stream, buffered))


yamux_module.YamuxStream._apply_autotune_epoch = _capped_autotune  # type: ignore[method-assign,assignment]


class P2PError(FabstirError):
    """Dialing, opening a stream or a DHT/pubsub operation failed."""


class _Libp2pLog(logging.Handler):
    """Where py-libp2p's records go (it logs to ``libp2p``, which does not propagate): many
    are about what a remote peer did, so a stranger could flood our log. Each is passed on to
    ``fabstir_sdk.p2p.libp2p`` as one line, at most ``per_minute`` per libp2p logger a
    minute; the rest are counted and reported once a minute."""

    def __init__(self, per_minute: int = 5) -> None:
        super().__init__(logging.WARNING)
        self.per_minute = per_minute
        self.out = logging.getLogger(f"{__name__}.libp2p")
        self._window = time.monotonic()
        self._counts: dict[str, int] = {}
        self.suppressed = 0

    def emit(self, record: logging.LogRecord) -> None:  # called under the handler's lock
        try:
            now = time.monotonic()
            if now - self._window >= 60:
                if self.suppressed:
                    self.out.warning("%d more libp2p messages in a minute", self.suppressed)
                self._window, self._counts, self.suppressed = now, {}, 0
            seen = self._counts.get(record.name, 0)
            if seen >= self.per_minute:
                self.suppressed += 1
                return
            self._counts[record.name] = seen + 1
            first_line = (record.getMessage().splitlines() or [""])[0][:300]
            self.out.log(record.levelno, "%s: %s", record.name, first_line)
        except Exception:
            self.handleError(record)


def _tame_libp2p_logging() -> None:
    """Keep py-libp2p's log out of reach of strangers (unless LIBP2P_DEBUG asks for it)."""
    if os.environ.get("LIBP2P_DEBUG"):
        return
    # new_stream logs a 7-line ERROR for every stream a peer refuses (pubsub retries one to
    # every peer without gossipsub, forever) and raises anyway: the caller reports it.
    logging.getLogger("libp2p.host.basic_host").setLevel(logging.CRITICAL)
    logging.getLogger("libp2p.kad_dht.kad_dht").setLevel(logging.ERROR)  # noisy on close
    root = logging.getLogger("libp2p")
    if not any(isinstance(h, _Libp2pLog) for h in root.handlers):
        root.addHandler(_Libp2pLog())


_tame_libp2p_logging()


def peer_id_of_seed(seed: bytes) -> str:
    return str(ID.from_pubkey(ed25519_key_pair(seed).public_key))


def peer_id_bytes(peer_id: str) -> bytes:
    return bytes(ID.from_base58(peer_id).to_bytes())


def peer_id_from_bytes(raw: bytes) -> str:
    return str(ID(raw))


def provider_key(model_id: bytes) -> str:
    """The DHT key for "who serves this model": CIDv1, raw codec, sha256 over the model id."""
    digest = multihash.encode(hashlib.sha256(model_id).digest(), "sha2-256")
    return str(make_cid(1, "raw", digest).encode("base32").decode())


@dataclass(frozen=True)
class PeerAddress:
    peer_id: str
    addrs: list[str]


class BridgedStream:
    """A libp2p stream seen from asyncio: ``read``/``write``/``close``/``reset``.

    Both directions are bounded and keep Yamux flow control: at most :data:`READ_SLOTS`
    chunks wait for the asyncio reader (the trio side reads from Yamux only when one is
    taken, so a slow reader lets the peer's send window run dry and stalls the peer), and
    :meth:`write` waits while :data:`WRITE_SLOTS` chunks are on their way out (so a peer that
    does not read stalls our writer instead of growing memory)."""

    def __init__(self, owner: P2PHost, remote_peer: str, protocol: str) -> None:
        self.remote_peer = remote_peer
        self.protocol = protocol
        self._owner = owner
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue(READ_SLOTS + 1)  # + end of stream
        self._read_credits = trio.Semaphore(READ_SLOTS)
        self._buffer = b""
        self._eof = False
        send, receive = trio.open_memory_channel[object](WRITE_SLOTS + 1)  # + close
        self._to_trio, self._from_asyncio = send, receive
        self._in_flight = 0  # chunks handed to trio and not yet written to Yamux
        self._room = asyncio.Event()
        self._closing = False
        self._reset_requested = False
        self._outbound: trio.CancelScope | None = None
        self.stalled = False  # a write waits for the peer to read (its Yamux window is full)
        self._discarding = False
        self.flushed: asyncio.Future[None] = owner.loop.create_future()  # our side is closed
        self.closed: asyncio.Future[None] = owner.loop.create_future()  # both sides are

    @property
    def buffered(self) -> int:
        """Chunks waiting on either side of the bridge (bounded; for tests and metrics)."""
        return self._incoming.qsize() + self._in_flight

    # asyncio side ------------------------------------------------------------
    async def read(self, n: int) -> bytes:
        if not self._buffer and not self._eof:
            chunk = await self._incoming.get()
            if not chunk:
                self._eof = True
            else:
                with contextlib.suppress(Exception):  # the host may be stopping
                    self._owner._trio_soon(self._read_credits.release)
            self._buffer = chunk
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    async def write(self, data: bytes) -> None:
        """Queue ``data`` for the peer; waits while :data:`WRITE_SLOTS` chunks are queued."""
        view = memoryview(data)
        for offset in range(0, len(view), WRITE_CHUNK):
            while self._in_flight >= WRITE_SLOTS and not self.flushed.done():
                self._room.clear()
                await self._room.wait()
            if self.flushed.done() or self._closing:
                raise ConnectionResetError("the stream is closed")
            self._in_flight += 1
            chunk = bytes(view[offset : offset + WRITE_CHUNK])
            self._owner._trio_soon(self._to_trio.send_nowait, chunk)

    async def close(self, timeout: float = 10) -> None:
        """Flush what was written, then half-close (the peer may still be reading). A peer
        that does not take what we wrote within ``timeout`` s gets the stream reset."""
        if not self._closing and not self.flushed.done():
            self._closing = True
            with contextlib.suppress(Exception):
                self._owner._trio_soon(self._to_trio.send_nowait, _CLOSE)
        try:
            await asyncio.wait_for(asyncio.shield(self.flushed), timeout)
        except Exception:
            await self.reset()

    async def close_from_trio(self) -> None:
        if not self._closing:
            self._closing = True
            with contextlib.suppress(Exception):
                self._to_trio.send_nowait(_CLOSE)

    async def reset(self) -> None:
        """Abort both directions now, even while a write waits for the peer."""
        if not self.flushed.done():
            with contextlib.suppress(Exception):
                self._owner._trio_soon(self._reset_now)

    # trio side ---------------------------------------------------------------
    def _reset_now(self) -> None:
        self._reset_requested = True
        if self._outbound is not None:
            self._outbound.cancel()

    def _discard_inbound(self) -> None:
        """Nobody will read any more (the handler returned): drop what the peer still sends
        until it closes its side, instead of waiting for room that never comes."""
        self._discarding = True
        self._read_credits.release()  # wake the reader if it waits for room

    def _sent(self) -> None:  # on the asyncio loop: one chunk left for Yamux
        self._in_flight -= 1
        self._room.set()

    def _writing_done(self) -> None:  # on the asyncio loop
        _resolve(self.flushed)
        self._room.set()  # wake writers: they raise now

    async def _pump(self, stream: Any, linger: float = 30) -> None:
        """Move bytes both ways until we close (or reset) and the peer closes its side; a
        peer that has not closed its side ``linger`` s after we closed ours gets a reset (so
        Yamux drops what it buffered for it)."""
        loop = self._owner.loop
        peer_done = False

        async def inbound() -> None:
            nonlocal peer_done
            try:
                with contextlib.suppress(Exception):
                    while True:
                        if not self._discarding:
                            await self._read_credits.acquire()  # the asyncio side has room
                        chunk = await stream.read(READ_CHUNK)
                        if not chunk:
                            break
                        if not self._discarding:
                            loop.call_soon_threadsafe(self._incoming.put_nowait, chunk)
                peer_done = True  # it closed or reset its side (or the connection broke)
            finally:
                loop.call_soon_threadsafe(self._incoming.put_nowait, b"")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(inbound)
            failed = False
            try:
                with trio.CancelScope() as outbound:
                    self._outbound = outbound
                    if self._reset_requested:
                        outbound.cancel()
                    try:
                        async for item in self._from_asyncio:
                            if item is _CLOSE:
                                await stream.close()
                                break
                            assert isinstance(item, bytes)
                            await self._write_patiently(stream, item)
                            loop.call_soon_threadsafe(self._sent)
                    except Exception:
                        failed = True
                if failed or self._reset_requested:
                    with contextlib.suppress(Exception):
                        await stream.reset()
                    nursery.cancel_scope.cancel()
            finally:
                loop.call_soon_threadsafe(self._writing_done)
            # Our side is done; give the peer a while to finish reading and close its side.
            nursery.cancel_scope.deadline = trio.current_time() + linger
        if not peer_done:
            with contextlib.suppress(Exception):
                await stream.reset()
        loop.call_soon_threadsafe(_resolve, self.closed)

    async def _write_patiently(self, stream: Any, data: bytes) -> None:
        """``stream.write(data)``, waiting for the peer's Yamux window for up to
        :data:`WRITE_STALL_TIMEOUT` s (py-libp2p's own write gives up after 5 s): a slow
        reader stalls us; one that stops reading for good gets the stream reset.

        Only the wait for the window can be cancelled (by :meth:`reset`): a write cancelled
        halfway through would leave half a Noise message on the connection, which the peer
        cannot decrypt, and the connection (every stream on it) would die. So we write no
        more than the window holds, shielded: that never waits for the peer's reader."""
        muxed = getattr(stream, "muxed_stream", stream)
        if not isinstance(getattr(muxed, "send_window", None), int):
            with trio.CancelScope(shield=True):
                await stream.write(data)
            return
        view = memoryview(data)
        while view:
            if muxed.send_window <= 0:
                self.stalled = True
                try:
                    with trio.fail_after(WRITE_STALL_TIMEOUT):
                        while muxed.send_window <= 0 and not getattr(muxed, "closed", False):
                            await trio.sleep(0.01)
                finally:
                    self.stalled = False
            size = max(min(len(view), muxed.send_window), 1)
            with trio.CancelScope(shield=True):
                await stream.write(bytes(view[:size]))
            view = view[size:]


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class P2PHost:
    """One libp2p host (Noise, Yamux, TCP) with a Kademlia DHT and gossipsub."""

    def __init__(self, seed: bytes, listen: list[str] | None = None) -> None:
        if len(seed) != 32:
            raise ValueError("the libp2p key seed must be 32 bytes")
        self._key_pair = ed25519_key_pair(seed)
        self.peer_id = str(ID.from_pubkey(self._key_pair.public_key))
        self._listen = [multiaddr.Multiaddr(a) for a in (listen or ["/ip4/127.0.0.1/tcp/0"])]
        self._handlers: dict[str, Handler] = {}
        self._streams: weakref.WeakSet[BridgedStream] = weakref.WeakSet()
        self._subscriptions: dict[str, Callable[[bytes, str], None]] = {}
        self._validators: dict[str, Callable[[bytes, str], bool]] = {}
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self._host: Any = None
        self._dht: Any = None
        self._pubsub: Any = None
        self.addrs: list[str] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve ``protocol`` with an asyncio handler; call before :meth:`start`."""
        self._handlers[protocol] = handler

    def on_gossip(
        self,
        topic: str,
        callback: Callable[[bytes, str], None],
        validate: Callable[[bytes, str], bool] | None = None,
    ) -> None:
        """Subscribe to ``topic`` (call before :meth:`start`): ``callback(data, from_peer)``
        runs on the event loop for each message. ``validate(data, from_peer)``, when given,
        runs first in the libp2p thread: a message it refuses is neither delivered nor
        relayed to our gossipsub peers (a subscriber relays, so junk must stop here)."""
        self._subscriptions[topic] = callback
        if validate is not None:
            self._validators[topic] = validate

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self.loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="libp2p", daemon=True)
        self._thread.start()
        await ready

    async def stop(self) -> None:
        """Flush and close open streams (so a last voucher is not lost), then stop."""
        streams = [s for s in self._streams if not s.flushed.done()]
        if streams:
            await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
        if self._token is not None and self._stop is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None

    def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            trio.run(self._main, ready)
        except BaseException as exc:  # report start failures; later ones are logged
            log.exception("libp2p host stopped")
            self.loop.call_soon_threadsafe(_fail, ready, exc)

    async def _main(self, ready: asyncio.Future[None]) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        kp = self._key_pair
        host = new_host(
            key_pair=kp,
            sec_opt={
                NOISE_PROTOCOL_ID: NoiseTransport(kp, noise_privkey=x25519_key_pair().private_key)
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            connection_config=ConnectionConfig(max_connections_per_peer=1),  # no 250 ms dial wait
            listen_addrs=self._listen,
        )
        self._host = host
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(host.run(listen_addrs=self._listen))
            gossip = GossipSub(
                protocols=[PROTOCOL_ID_V11],
                degree=6,
                degree_low=4,
                degree_high=12,
                heartbeat_interval=1,
            )
            pubsub = Pubsub(host, gossip)
            await stack.enter_async_context(background_trio_service(pubsub))
            await stack.enter_async_context(background_trio_service(gossip))
            await pubsub.wait_until_ready()  # pubsub must run before any peer connects
            for topic, validate in self._validators.items():
                pubsub.set_topic_validator(topic, _gossip_validator(validate), False)
            self._pubsub = pubsub
            dht = KadDHT(host, DHTMode.SERVER, enable_random_walk=False)
            await stack.enter_async_context(background_trio_service(dht))
            self._dht = dht
            for protocol, handler in self._handlers.items():
                host.set_stream_handler(TProtocol(protocol), self._guarded(protocol, handler))
            self.addrs = [str(a) for a in host.get_addrs()]
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for topic, callback in self._subscriptions.items():
                    subscription = await pubsub.subscribe(topic)
                    nursery.start_soon(self._deliver, subscription, callback)
                self.loop.call_soon_threadsafe(_resolve, ready)
                await self._stop.wait()
                nursery.cancel_scope.cancel()

    async def _deliver(self, subscription: Any, callback: Callable[[bytes, str], None]) -> None:
        while True:
            message = await subscription.get()
            sender = str(ID(message.from_id))
            if sender != self.peer_id:
                self.loop.call_soon_threadsafe(_safe_call, callback, bytes(message.data), sender)

    def _guarded(self, protocol: str, handler: Handler) -> Callable[[Any], Awaitable[None]]:
        async def serve(stream: Any) -> None:
            try:
                remote = str(stream.muxed_conn.peer_id)  # authenticated by Noise
                bridged = BridgedStream(self, remote, protocol)
                done = trio.Event()
                token = self._token
                assert token is not None

                def finished(_: object) -> None:
                    with contextlib.suppress(trio.RunFinishedError):  # the host stopped
                        token.run_sync_soon(done.set)

                future = asyncio.run_coroutine_threadsafe(handler(bridged), self.loop)
                future.add_done_callback(finished)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(bridged._pump, stream, 2.0)
                    await done.wait()
                    bridged._discard_inbound()
                    if not bridged.flushed.done():  # the handler forgot to close: do it
                        await bridged.close_from_trio()
            except Exception as exc:  # never let it reach py-libp2p: it would stop the host
                log.warning("%s handler failed: %r", protocol, exc)
                with contextlib.suppress(Exception):
                    await stream.reset()

        return serve

    # ----------------------------------------------------------------- calls into trio

    def _trio_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._token is None:
            raise P2PError("the libp2p host is not running")
        try:
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            raise P2PError("the libp2p host is not running") from None

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30) -> T:
        """Run ``fn(*args)`` in the trio thread and await its result from asyncio."""
        future: asyncio.Future[T] = self.loop.create_future()

        async def runner() -> None:
            try:
                with trio.fail_after(timeout):
                    result = await fn(*args)
            except trio.TooSlowError:  # not a TimeoutError: never let it reach a caller raw
                timed_out = P2PError(f"timed out after {timeout:g} s")
                self.loop.call_soon_threadsafe(_fail, future, timed_out)
            except BaseException as exc:  # delivered to the awaiting asyncio task
                self.loop.call_soon_threadsafe(_fail, future, exc)
            else:
                self.loop.call_soon_threadsafe(_set, future, result)

        nursery = self._nursery
        if nursery is None:
            raise P2PError("the libp2p host is not running")
        self._trio_soon(nursery.start_soon, runner)
        return await future

    async def connect(self, peer_id: str, addrs: list[str], timeout: float = 15) -> None:
        """Dial ``peer_id`` at ``addrs``; Noise fails the dial if the key doesn't match.
        Raises :class:`P2PError` (also when the dial times out)."""

        async def dial() -> None:
            last: Exception | None = None
            for addr in addrs:
                full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
                info = info_from_p2p_addr(multiaddr.Multiaddr(full))
                if str(info.peer_id) != peer_id:
                    raise P2PError(f"{addr} names peer {info.peer_id}, not {peer_id}")
                # Addresses come fresh from the registry: a restarted host may listen
                # elsewhere now, so forget that its old addresses failed.
                with contextlib.suppress(Exception):
                    self._host.get_network().unblock_peer(info.peer_id)
                if info.peer_id not in self._host.get_network().connections:
                    with contextlib.suppress(Exception):
                        self._host.get_peerstore().clear_addrs(info.peer_id)
                try:
                    await self._host.connect(info)
                    await self._dht.add_peer(info.peer_id)
                    return
                except Exception as exc:
                    last = exc
            raise P2PError(str(last) or repr(last))

        try:
            await self._call(dial, timeout=timeout)
        except P2PError as exc:
            raise P2PError(f"cannot reach {peer_id}: {exc}") from None
        except Exception as exc:
            raise P2PError(f"cannot reach {peer_id}: {exc!r}") from exc

    async def open_stream(
        self, peer: PeerAddress, protocol: str, timeout: float = 15
    ) -> BridgedStream:
        """Connect if needed and open a ``protocol`` stream to ``peer``, all within
        ``timeout`` s; raises :class:`P2PError`."""
        deadline = time.monotonic() + timeout
        if peer.addrs:
            await self.connect(peer.peer_id, peer.addrs, timeout)

        async def open_() -> BridgedStream:
            stream = await self._host.new_stream(
                ID.from_base58(peer.peer_id), [TProtocol(protocol)]
            )
            remote = str(stream.muxed_conn.peer_id)
            bridged = BridgedStream(self, remote, protocol)
            self._streams.add(bridged)
            assert self._nursery is not None
            self._nursery.start_soon(bridged._pump, stream)
            return bridged

        try:
            stream = await self._call(open_, timeout=max(deadline - time.monotonic(), 0.01))
        except Exception as exc:
            raise P2PError(f"cannot open {protocol} to {peer.peer_id}: {exc}") from exc
        if stream.remote_peer != peer.peer_id:  # defence in depth; Noise already checked
            await stream.reset()
            raise P2PError(f"remote authenticated as {stream.remote_peer}, not {peer.peer_id}")
        return stream

    def connected_peers(self) -> set[str]:
        """Peer ids we hold a connection to now (a snapshot)."""
        if self._host is None:
            return set()
        with contextlib.suppress(RuntimeError):  # changed while we copied it: try again
            return {str(p) for p in list(self._host.get_network().connections)}
        return {str(p) for p in list(self._host.get_network().connections)}

    async def provide(self, key: str) -> None:
        async def run() -> None:
            await self._dht.provide(key)

        await self._call(run)

    async def find_providers(self, key: str) -> list[PeerAddress]:
        async def run() -> list[PeerAddress]:
            found: dict[str, PeerAddress] = {}
            providers: list[PeerInfo] = await self._dht.find_providers(key)
            for info in providers:
                peer = str(info.peer_id)
                addrs = [str(a) for a in info.addrs]
                if peer != self.peer_id:
                    found.setdefault(peer, PeerAddress(peer, addrs))
            return list(found.values())

        return await self._call(run)

    async def publish(self, topic: str, data: bytes) -> None:
        async def run() -> None:
            await self._pubsub.publish(topic, data)

        await self._call(run)


def _gossip_validator(validate: Callable[[bytes, str], bool]) -> Callable[[Any, Any], bool]:
    def validator(_forwarder: Any, message: Any) -> bool:
        try:
            return bool(validate(bytes(message.data), str(ID(message.from_id))))
        except Exception:  # whatever a stranger sent, it only fails validation
            return False

    return validator


def _set(future: asyncio.Future[T], value: T) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    """Fail ``future`` with a :class:`FabstirError`: what libp2p or trio raised becomes a
    :class:`P2PError` (the original in ``__cause__``)."""
    if future.done():
        return
    if isinstance(exc, FabstirError):
        future.set_exception(exc)
        return
    mapped = P2PError(str(exc) or repr(exc))
    mapped.__cause__ = exc
    future.set_exception(mapped)


def _safe_call(callback: Callable[[bytes, str], None], data: bytes, sender: str) -> None:
    try:
        callback(data, sender)
    except Exception:
        log.exception("gossip callback failed")
