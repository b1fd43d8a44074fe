"""Bitswap (``/ipfs/bitswap/1.2.0``, also 1.1.0 and 1.0.0) for raw blocks, over our P2PHost.

Our own small engine over py-libp2p's protobuf classes, because py-libp2p 0.8.1's engine
answers on the requester's stream (helia has closed it by then), drops wants for BLAKE3 CIDs
and keeps blocks nobody asked for (DESIGN §8). Here, as in go and js Bitswap:

- every message to a peer goes out on *our* stream to it (one per peer, opened on demand and
  again after a failure); streams a peer opens to us are only read;
- a want is answered with the block, or DONT_HAVE when the peer asked for it (``sendDontHave``)
  or HAVE/DONT_HAVE for want-have; we serve only blocks ``served(hash)`` allows (what the node
  chose to publish) and only BLAKE3 ones (our store's hash);
- a received block is hashed with its CID prefix's function (BLAKE3 or sha2-256), so its bytes
  are its proof; a block nobody wanted is a lie or abuse.

Bounds: a message is at most :data:`MAX_MESSAGE` bytes each way; a peer's wantlist holds at most
:data:`MAX_WANTS` entries of at most :data:`MAX_CID_BYTES` each (what we keep for a peer is a
few dozen KiB, however it asks); we serve it one message at a time (at most one message of
blocks read from disk per peer, written under Yamux flow control before the next is built), so
a greedy peer costs a bounded queue. A peer that sends an oversized message, wants more than
:data:`MAX_WANTS` blocks or a CID longer than :data:`MAX_CID_BYTES`, or sends a block nobody
asked for is **cut off**: its streams are reset, its wants and blocks ignored for
:data:`BAN_S` seconds, and every want we had out to it goes to another provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from libp2p.bitswap.pb.bitswap_pb2 import Message as PbMessage

from fabstir_sdk.p2p import BridgedStream, P2PHost, PeerAddress
from fabstir_sdk.protocol import MalformedFrame, decode_uvarint, encode_uvarint
from fabstir_sdk.storage.blobs import CODEC_RAW, MULTIHASH_BLAKE3, blake3_256, cid_bytes
from fabstir_sdk.storage.blockstore import BlockStore
from fabstir_sdk.storage.errors import NotFound, StorageError
from fabstir_sdk.tasks import TaskSet

log = logging.getLogger(__name__)

PROTOCOLS = ("/ipfs/bitswap/1.2.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.0.0")
MULTIHASH_SHA2_256 = 0x12
MAX_MESSAGE = 4 << 20
#: Room left in a message for everything but block data.
_MESSAGE_SLACK = 64 << 10
MAX_WANTS = 1024
#: Longest CID a wantlist entry may name: ours are 36 bytes, a sha2-512 one 68; a longer one
#: (an identity CID is never fetched) would only make us hold and echo a peer's garbage.
MAX_CID_BYTES = 128
BAN_S = 300.0
#: Wants we keep out to one provider at a time while fetching.
WINDOW = 16
#: Seconds a provider has to send a block we asked for before we ask the next.
WANT_TIMEOUT_S = 20.0

_HASHERS: dict[int, Callable[[bytes], bytes]] = {
    MULTIHASH_BLAKE3: blake3_256,
    MULTIHASH_SHA2_256: lambda data: hashlib.sha256(data).digest(),
}


class Cut(StorageError):
    """The peer broke the rules; it is cut off."""


def _uvarint(data: bytes, pos: int) -> tuple[int, int]:
    try:
        decoded = decode_uvarint(data[pos : pos + 10])
    except MalformedFrame:  # over 10 bytes: a StorageError like any other bad CID
        decoded = None
    if decoded is None:
        raise StorageError("malformed varint in a CID")
    value, used = decoded
    return value, pos + used


@dataclass(frozen=True)
class Cid:
    """A CIDv1 of a raw block: its codec and multihash (BLAKE3 or sha2-256, 32 bytes)."""

    codec: int
    hash_code: int
    digest: bytes

    @classmethod
    def parse(cls, raw: bytes) -> Cid:
        version, pos = _uvarint(raw, 0)
        codec, pos = _uvarint(raw, pos)
        code, pos = _uvarint(raw, pos)
        length, pos = _uvarint(raw, pos)
        digest = raw[pos:]
        if version != 1 or code not in _HASHERS or length != 32 or len(digest) != 32:
            raise StorageError("only CIDv1 with a 32-byte BLAKE3 or sha2-256 hash are handled")
        return cls(codec, code, digest)

    @classmethod
    def from_prefix(cls, prefix: bytes, data: bytes) -> Cid:
        """The CID of ``data`` under a Bitswap 1.1 block prefix (version, codec, hash, length)."""
        version, pos = _uvarint(prefix, 0)
        codec, pos = _uvarint(prefix, pos)
        code, pos = _uvarint(prefix, pos)
        length, pos = _uvarint(prefix, pos)
        if version != 1 or code not in _HASHERS or length != 32 or pos != len(prefix):
            raise StorageError("unsupported block prefix")
        return cls(codec, code, _HASHERS[code](data))

    def to_bytes(self) -> bytes:
        return (
            encode_uvarint(1)
            + encode_uvarint(self.codec)
            + encode_uvarint(self.hash_code)
            + encode_uvarint(32)
            + self.digest
        )

    @property
    def prefix(self) -> bytes:
        return self.to_bytes()[: -len(self.digest)]


def blake3_cid(hash: bytes) -> Cid:
    return Cid(CODEC_RAW, MULTIHASH_BLAKE3, hash)


@dataclass
class _Peer:
    """What one peer asked us for, and our stream to it."""

    wants: OrderedDict[bytes, tuple[bool, bool]] = field(default_factory=OrderedDict)
    sender: asyncio.Task[None] | None = None
    out: BridgedStream | None = None
    #: One message at a time on ``out``: a message is written in chunks, and another one
    #: written between them (our wants while we serve) would corrupt both.
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Counters:
    blocks_sent: int = 0
    bytes_sent: int = 0
    blocks_received: int = 0
    bytes_received: int = 0
    peers_cut: int = 0


class Bitswap:
    def __init__(self, host: P2PHost, store: BlockStore, served: Callable[[bytes], bool]) -> None:
        self.host = host
        self.store = store
        self.served = served
        self.counters = Counters()
        self._peers: dict[str, _Peer] = {}
        self._banned: dict[str, float] = {}
        #: Our outstanding wants: CID bytes -> (peer asked, future of the block).
        self._wants: dict[bytes, tuple[str, asyncio.Future[bytes]]] = {}
        self._cancelled: OrderedDict[bytes, None] = OrderedDict()  # late blocks are no lie
        self._tasks = TaskSet()
        for protocol in PROTOCOLS:
            host.set_handler(protocol, self._inbound)

    # ----------------------------------------------------------------- abuse

    def banned(self, peer: str) -> bool:
        until = self._banned.get(peer)
        if until is None:
            return False
        if until < time.monotonic():
            del self._banned[peer]
            return False
        return True

    def cut_off(self, peer: str, reason: str) -> None:
        log.warning("bitswap: cutting off %s: %s", peer, reason)
        self.counters.peers_cut += 1
        self._banned[peer] = time.monotonic() + BAN_S
        state = self._peers.pop(peer, None)
        if state is not None:
            if state.sender is not None:
                state.sender.cancel()
            if state.out is not None:
                self._later(state.out.reset())
        for asked, future in list(self._wants.values()):
            if asked == peer and not future.done():
                future.set_exception(Cut(f"{peer} was cut off: {reason}"))

    # ----------------------------------------------------------------- inbound

    async def _inbound(self, stream: BridgedStream) -> None:
        peer = stream.remote_peer
        buffer = bytearray()
        failed = False
        try:
            while not self.banned(peer):
                body = await _read_message(stream, buffer)
                if body is None:
                    return
                await self._handle(peer, PbMessage.FromString(body))
        except Cut as exc:
            self.cut_off(peer, str(exc))
        except Exception as exc:  # a malformed message: this stream is done
            log.debug("bitswap stream from %s failed: %r", peer, exc)
            failed = True
        finally:
            # Reset, not close, a stream we stopped reading: a close would leave the peer
            # writing into a stream nobody reads, its wants and blocks silently dropped.
            with contextlib.suppress(Exception):
                await stream.reset() if failed or self.banned(peer) else await stream.close()

    async def _handle(self, peer: str, message: PbMessage) -> None:
        for data in message.blocks:  # 1.0.0: sha2-256 CIDv0 blocks; never ours
            raise Cut(f"sent a {len(data)}-byte 1.0 block nobody wanted")
        for block in message.payload:
            try:
                cid = Cid.from_prefix(block.prefix, block.data)
            except StorageError as exc:
                raise Cut(f"sent a block we cannot check: {exc}") from None
            await self._received(peer, cid, block.data)
        for presence in message.blockPresences:
            if presence.type == PbMessage.DontHave:
                self._lacks(peer, presence.cid)
        if message.HasField("wantlist"):
            self._wanted(peer, message.wantlist)

    async def _received(self, peer: str, cid: Cid, data: bytes) -> None:
        key = cid.to_bytes()
        wanted = self._wants.get(key)
        if wanted is None or wanted[1].done():
            if key in self._cancelled:
                return  # it crossed our cancel
            raise Cut("sent a block nobody wanted")
        self.counters.blocks_received += 1
        self.counters.bytes_received += len(data)
        if cid.hash_code == MULTIHASH_BLAKE3:
            await asyncio.to_thread(self.store.put_verified, cid.digest, data)
        if not wanted[1].done():
            wanted[1].set_result(data)

    def _lacks(self, peer: str, raw: bytes) -> None:
        wanted = self._wants.get(bytes(raw))
        if wanted is not None and wanted[0] == peer and not wanted[1].done():
            wanted[1].set_exception(NotFound(f"{peer} does not have it"))

    def _wanted(self, peer: str, wantlist: PbMessage.Wantlist) -> None:
        state = self._peers.setdefault(peer, _Peer())
        if wantlist.full:
            state.wants.clear()
        for entry in wantlist.entries:
            key = bytes(entry.block)
            if len(key) > MAX_CID_BYTES:
                raise Cut(f"wants a {len(key)}-byte CID (at most {MAX_CID_BYTES})")
            if entry.cancel:
                state.wants.pop(key, None)
                continue
            have_only = entry.wantType == PbMessage.Wantlist.Have
            state.wants[key] = (have_only, entry.sendDontHave)
        if len(state.wants) > MAX_WANTS:
            raise Cut(f"wants {len(state.wants)} blocks at once (at most {MAX_WANTS})")
        if state.wants and (state.sender is None or state.sender.done()):
            state.sender = asyncio.ensure_future(self._serve(peer, state))

    # ----------------------------------------------------------------- serving

    async def _serve(self, peer: str, state: _Peer) -> None:
        """Answer ``peer``'s wantlist, one message at a time, on our own stream to it."""
        try:
            while state.wants:
                message, size = PbMessage(), 0
                while state.wants and size < MAX_MESSAGE - _MESSAGE_SLACK - (1 << 20):
                    key, (have_only, send_dont_have) = state.wants.popitem(last=False)
                    size += await self._answer(message, key, have_only, send_dont_have)
                if message.ByteSize():
                    await self._send(peer, state, message)
        except Exception as exc:
            log.debug("bitswap: serving %s failed: %r", peer, exc)
            state.out = None

    async def _answer(
        self, message: PbMessage, raw: bytes, have_only: bool, send_dont_have: bool
    ) -> int:
        data = None
        try:
            cid = Cid.parse(raw)
            if cid.hash_code == MULTIHASH_BLAKE3 and self.served(cid.digest):
                data = None if have_only else await asyncio.to_thread(self.store.get, cid.digest)
                if have_only:
                    message.blockPresences.add(cid=raw, type=PbMessage.Have)
                    return 40
        except StorageError:
            cid = None
        if data is None:
            if send_dont_have or have_only:
                message.blockPresences.add(cid=raw, type=PbMessage.DontHave)
            return 40
        assert cid is not None
        message.payload.add(prefix=cid.prefix, data=data)
        self.counters.blocks_sent += 1
        self.counters.bytes_sent += len(data)
        return len(data) + 16

    async def _send(self, peer: str, state: _Peer, message: PbMessage) -> None:
        body = message.SerializeToString()
        if len(body) > MAX_MESSAGE:
            raise StorageError("message over the limit")  # a bug: we size them
        async with state.writing:
            if state.out is None:
                state.out = await self._open(peer)
            try:
                await state.out.write(encode_uvarint(len(body)) + body)
            except Exception:
                state.out = await self._open(peer)  # it may have closed it: try once more
                await state.out.write(encode_uvarint(len(body)) + body)

    async def _open(self, peer: str) -> BridgedStream:
        last: Exception | None = None
        for protocol in PROTOCOLS[:2]:
            try:
                return await self.host.open_stream(PeerAddress(peer, []), protocol, timeout=10)
            except Exception as exc:
                last = exc
        raise StorageError(f"cannot open a Bitswap stream to {peer}: {last}")

    async def _send_wants(
        self, peer: str, entries: Iterable[tuple[bytes, bool]], *, have: bool = False
    ) -> None:
        message = PbMessage()
        for raw, cancel in entries:
            message.wantlist.entries.add(
                block=raw,
                priority=1,
                cancel=cancel,
                wantType=PbMessage.Wantlist.Have if have else PbMessage.Wantlist.Block,
                sendDontHave=True,
            )
        state = self._peers.setdefault(peer, _Peer())
        await self._send(peer, state, message)

    # ----------------------------------------------------------------- fetching

    async def get(self, peer: str, cid: bytes, timeout: float = WANT_TIMEOUT_S) -> bytes:
        """One block by binary CID from ``peer`` (any raw CID we can check: for interop)."""
        return (await self.fetch([peer], [cid], timeout))[cid]

    async def fetch(
        self, peers: Sequence[str], cids: Sequence[bytes], timeout: float = WANT_TIMEOUT_S
    ) -> dict[bytes, bytes]:
        """Fetch blocks (binary CIDs) from any of ``peers``, at most :data:`WINDOW` wants out
        to each at a time; a block a peer lacks, or does not send within ``timeout`` s, is
        asked of the next. BLAKE3 blocks land in the store. Raises :class:`NotFound` when no
        peer has one."""
        pending = list(dict.fromkeys(cids))
        for raw in pending:
            Cid.parse(raw)  # refuse what we could not check before asking anyone
        tried: dict[bytes, set[str]] = {raw: set() for raw in pending}
        out: dict[bytes, bytes] = {}
        busy: dict[str, int] = dict.fromkeys(peers, 0)
        #: Each want's task: the peer, the CID, its future, and whether we asked (not when
        #: another fetch had asked for the block already: then we share its answer, since a
        #: second want would overwrite its entry and make the second copy look unwanted).
        running: dict[asyncio.Task[bytes], tuple[str, bytes, asyncio.Future[bytes], bool]] = {}
        loop = asyncio.get_running_loop()
        try:
            while pending or running:
                batches: dict[str, list[bytes]] = {}
                for raw in list(pending):
                    choices = [
                        p
                        for p in peers
                        if p not in tried[raw] and busy[p] < WINDOW and not self.banned(p)
                    ]
                    if not choices:
                        if all(p in tried[raw] or self.banned(p) for p in peers):
                            raise NotFound(f"no provider sent block {raw.hex()}")
                        continue
                    peer = min(choices, key=lambda p: busy[p])
                    pending.remove(raw)
                    tried[raw].add(peer)
                    busy[peer] += 1
                    batches.setdefault(peer, []).append(raw)
                for peer, raws in batches.items():
                    asked: list[tuple[bytes, asyncio.Future[bytes]]] = []
                    for raw in raws:
                        held = self._wants.get(raw)
                        shared = held is not None and not held[1].done()
                        future = held[1] if held is not None and shared else loop.create_future()
                        if not shared:
                            self._wants[raw] = (peer, future)
                            asked.append((raw, future))
                        task = asyncio.ensure_future(_within(future, timeout))
                        running[task] = (peer, raw, future, not shared)
                    if not asked:
                        continue
                    try:
                        await self._send_wants(peer, ((r, False) for r, _ in asked))
                    except Exception as exc:
                        for _, future in asked:
                            _fail(future, StorageError(f"{peer}: {exc}"))
                if not running:
                    continue
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    peer, raw, future, ours = running.pop(task)
                    busy[peer] -= 1
                    error = task.exception()
                    if ours:
                        if isinstance(error, TimeoutError):
                            _fail(future, error)  # those sharing it ask elsewhere too
                            self._cancel(peer, raw)
                        self._forget(raw, future)
                    if error is None:
                        out[raw] = task.result()
                    else:
                        pending.append(raw)
                        if not ours:
                            tried[raw].discard(peer)  # it was never asked by us
        finally:
            for task, (peer, raw, future, ours) in running.items():
                task.cancel()
                if ours:
                    _fail(future, StorageError("the fetch that asked for it has ended"))
                    self._forget(raw, future)
                    self._cancel(peer, raw)
        return out

    def _forget(self, raw: bytes, future: asyncio.Future[bytes]) -> None:
        """Drop our want of ``raw`` (only ours: another fetch may have asked since)."""
        held = self._wants.get(raw)
        if held is not None and held[1] is future:
            del self._wants[raw]

    def _cancel(self, peer: str, raw: bytes) -> None:
        self._cancelled[raw] = None
        while len(self._cancelled) > 4 * MAX_WANTS:
            self._cancelled.popitem(last=False)
        if not self.banned(peer):
            self._later(self._send_wants(peer, [(raw, True)]))

    def _later(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` in the background; its failure only matters to the log."""
        self._tasks.spawn(_quietly(coro))

    async def fetch_blocks(
        self, peers: Sequence[str], hashes: Sequence[bytes], timeout: float = WANT_TIMEOUT_S
    ) -> None:
        """BLAKE3 blocks into the store (those we lack)."""
        missing = [h for h in dict.fromkeys(hashes) if not self.store.has(h)]
        if missing:
            await self.fetch(peers, [cid_bytes(h) for h in missing], timeout)


async def _within(future: asyncio.Future[bytes], timeout: float) -> bytes:
    # Shielded: another fetch may be waiting on the same future.
    return await asyncio.wait_for(asyncio.shield(future), timeout)


def _fail(future: asyncio.Future[bytes], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(Exception):
        await coro


async def _read_message(stream: BridgedStream, buffer: bytearray) -> bytes | None:
    """The next length-prefixed message, or None at a clean end of stream."""
    while (header := _length(buffer)) is None:
        chunk = await stream.read(1 << 16)
        if not chunk:
            if buffer:
                raise StorageError("stream ended inside a message")
            return None
        buffer += chunk
    length, used = header
    if length > MAX_MESSAGE:
        raise Cut(f"a {length}-byte message (at most {MAX_MESSAGE})")
    while len(buffer) < used + length:
        chunk = await asyncio.wait_for(stream.read(used + length - len(buffer)), 60)
        if not chunk:
            raise StorageError("stream ended inside a message")
        buffer += chunk
    body = bytes(buffer[used : used + length])
    del buffer[: used + length]
    return body


def _length(buffer: bytearray) -> tuple[int, int] | None:
    try:
        return decode_uvarint(bytes(buffer[:10]))
    except MalformedFrame:
        raise Cut("malformed message length") from None
