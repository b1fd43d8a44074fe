"""The Fabstir wire protocol, shared by the node and the SDK.

Every frame is an unsigned-varint length (as libp2p's own protocols use) followed by one CBOR
map in deterministic encoding, at most :data:`MAX_FRAME` bytes (a host reads at most
:data:`MAX_SMALL_FRAME` before a session is open, and on the info protocol). Field ``t`` names
the message type. A frame that is too large, undecodable, invalid or out of order raises a
:class:`ProtocolError` whose ``code`` the receiver sends back in an ``error`` frame before
closing the stream. Unknown fields are ignored, so peers can add fields without a version bump.

Decoding is bounded: containers nest at most :data:`MAX_DEPTH` deep, map keys are strings,
lengths are definite and the only CBOR tags are bignums (2, 3); integer fields are uint256
unless said otherwise and floats are finite. Frames above :data:`INLINE_DECODE` bytes are
decoded off the event loop, with the cyclic garbage collector paused (a frame of a million
tiny containers would otherwise cost seconds of collections on a large heap).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, Protocol

import cbor2

from fabstir_sdk.errors import FabstirError

SESSION_PROTOCOL = "/fabstir/session/1.0.0"
INFO_PROTOCOL = "/fabstir/info/1.0.0"
#: A peer's signed storage root (a registry entry, :mod:`fabstir_sdk.storage.registry`); what
#: the tree holds then moves by Bitswap (tokenizers, models, sealed results).
STORAGE_ROOT_PROTOCOL = "/fabstir/storage/root/1.0.0"
HOSTS_TOPIC = "/fabstir/hosts/1.0.0"
MAX_FRAME = 1 << 20
#: The largest frame a host reads before a session is open, and on the info protocol.
MAX_SMALL_FRAME = 4 << 10
MAX_VARINT_BYTES = 10
#: Deepest container nesting a frame may have (messages need 4: map, list, map, map).
MAX_DEPTH = 8
#: Frames larger than this are decoded in a worker thread, not on the event loop.
INLINE_DECODE = 16 << 10
#: The most CBOR data items a frame may hold (a prompt's 65536 prefix ids fit).
MAX_ITEMS = 1 << 17
UINT256_MAX = (1 << 256) - 1


class ProtocolError(FabstirError):
    """A peer broke the protocol; ``code`` goes into the ``error`` frame sent back."""

    code = "protocol_error"
    retryable = False


class FrameTooLarge(ProtocolError):
    code = "frame_too_large"


class MalformedFrame(ProtocolError):
    code = "malformed_frame"


class InvalidMessage(ProtocolError):
    code = "invalid_message"


class UnexpectedMessage(ProtocolError):
    code = "unexpected_message"


class StreamClosed(ProtocolError):
    """The peer closed the stream (cleanly between frames, or in the middle of one)."""

    code = "stream_closed"
    retryable = True


class ReadTimeout(ProtocolError):
    code = "timeout"
    retryable = True


# --------------------------------------------------------------------------- varints


def encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("uvarint must be non-negative")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_uvarint(data: bytes) -> tuple[int, int] | None:
    """(value, bytes used), or None when ``data`` ends inside the varint."""
    value = shift = 0
    for i, byte in enumerate(data[:MAX_VARINT_BYTES]):
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if len(data) >= MAX_VARINT_BYTES:
        raise MalformedFrame("varint longer than 10 bytes")
    return None


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Usage:
    """Billable tokens of one answer, in OpenAI's ``usage`` sense, counted by the host's
    tokenizer: a session bills ``prompt_tokens + completion_tokens`` per answer."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


#: What a client may ask of a host's answer cache, per prompt.
CACHE_MODES = ("off", "own", "shared")
BPS = 10_000


def cached_tokens(prompt_tokens: int, completion_tokens: int, rate_bps: int) -> int:
    """Billable tokens of an answer served from the host's cache: the fresh count scaled by
    the cache rate the host announced in ``ready`` (basis points), rounded up. Both sides
    count the tokens themselves, so the client checks every claim."""
    return -(-(prompt_tokens + completion_tokens) * rate_bps // BPS)


_TYPES: dict[str, type[Message]] = {}


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidMessage(message)


@dataclass(frozen=True)
class Message:
    """Base of all messages; subclasses declare ``TYPE`` and typed fields."""

    TYPE: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            _TYPES[cls.TYPE] = cls

    def validate(self) -> None:
        """Raise :class:`InvalidMessage` when a field is out of range."""

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TYPE, **{k: v for k, v in asdict(self).items() if v is not None}}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Message:
        kwargs = {}
        for f in fields(cls):
            if f.name in data:
                kwargs[f.name] = data[f.name]
        try:
            message = cls(**kwargs)
        except TypeError as exc:
            raise InvalidMessage(f"{cls.TYPE}: {exc}") from None
        message._check_types()
        message.validate()
        return message

    def _check_types(self) -> None:
        for f in fields(self):
            value, spec = getattr(self, f.name), str(f.type)
            if value is None:
                _check("None" in spec, f"{self.TYPE}.{f.name} is required")
                continue
            expected = _FIELD_TYPES.get(spec.replace(" | None", ""))
            if expected is None:
                continue
            wrong_bool = isinstance(value, bool) and expected is not bool
            _check(
                isinstance(value, expected) and not wrong_bool,
                f"{self.TYPE}.{f.name} has the wrong type",
            )
            if isinstance(value, float):
                _check(math.isfinite(value), f"{self.TYPE}.{f.name} must be finite")
            elif expected is int:
                low, high = _INT_RANGES.get((self.TYPE, f.name), (0, UINT256_MAX))
                _check(low <= value <= high, f"{self.TYPE}.{f.name} is out of range")


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "str": str,
    "bytes": bytes,
    "bool": bool,
    "float": (int, float),
    "list[str]": list,
    "list[int]": list,
    "list[dict[str, Any]]": list,
    "dict[str, Any]": dict,
}

#: Integer fields are uint256 (what the contracts take) except these.
_INT_RANGES: dict[tuple[str, str], tuple[int, int]] = {
    ("prompt", "seed"): (-(1 << 63), (1 << 64) - 1),  # OpenAI's seed: any 64-bit integer
}


@dataclass(frozen=True)
class Open(Message):
    """Client -> host: attach this stream to on-chain session ``session_id``. The host seals
    the answers it stores for the session with ``result_key`` (only the client can read them:
    :mod:`fabstir_sdk.transcripts`); without one it stores none."""

    TYPE: ClassVar[str] = "open"
    session_id: int
    chain_id: int
    version: int = 1
    result_key: bytes | None = None

    def validate(self) -> None:
        _check(self.session_id > 0, "open.session_id must be positive")
        _check(
            self.result_key is None or len(self.result_key) == 32,
            "open.result_key must be 32 bytes",
        )


@dataclass(frozen=True)
class Ready(Message):
    """Host -> client: the session is verified; these are its terms."""

    TYPE: ClassVar[str] = "ready"
    session_id: int
    model: str
    credit_window: int
    max_tokens: int  # what the deposit pays for, in billable tokens
    # A reconnecting client resumes from the best voucher the host holds; it proves the count
    # (the client checks the signature is its own session signer's).
    billed_tokens: int = 0
    transcript_hash: bytes | None = None
    signature: bytes | None = None
    # What an answer from the host's cache bills, in basis points of the fresh count
    # (:func:`cached_tokens`); 0 = the host has no cache.
    cache_rate_bps: int = 0

    def validate(self) -> None:
        _check(self.cache_rate_bps <= BPS, "ready.cache_rate_bps is at most 10000")


@dataclass(frozen=True)
class Prompt(Message):
    """Client -> host: generate a chat answer (OpenAI-style fields)."""

    TYPE: ClassVar[str] = "prompt"
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    # Continue an answer another host began: its token ids, appended after the prompt.
    prefix_ids: list[int] = field(default_factory=list)
    # The host's answer cache: "own" serves this client's earlier answers, "shared" also
    # those other clients shared; ``cache_sampled`` lets a temperature > 0 prompt hit;
    # ``cache_share`` lets this answer serve other clients.
    cache: str = "off"
    cache_min_similarity: float | None = None
    cache_sampled: bool = False
    cache_share: bool = False

    def validate(self) -> None:
        _check(self.cache in CACHE_MODES, f"prompt.cache must be one of {CACHE_MODES}")
        _check(
            self.cache_min_similarity is None or 0.0 <= self.cache_min_similarity <= 1.0,
            "prompt.cache_min_similarity must be in [0, 1]",
        )
        _check(0 < len(self.messages) <= 512, "prompt.messages must hold 1 to 512 messages")
        _check(
            len(self.prefix_ids) <= 65536
            and all(
                isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in self.prefix_ids
            ),
            "prompt.prefix_ids must be token ids",
        )
        for m in self.messages:
            _check(
                isinstance(m, dict)
                and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str),
                "each message needs role and content",
            )
        _check(self.max_tokens is None or self.max_tokens > 0, "prompt.max_tokens must be > 0")
        _check(0.0 <= self.temperature <= 2.0, "prompt.temperature must be in [0, 2]")
        _check(0.0 < self.top_p <= 1.0, "prompt.top_p must be in (0, 1]")
        _check(
            len(self.stop) <= 4 and all(isinstance(s, str) for s in self.stop),
            "prompt.stop holds at most 4 strings",
        )


@dataclass(frozen=True)
class Token(Message):
    """Host -> client: generated text and the session's cumulative billable tokens."""

    TYPE: ClassVar[str] = "token"
    text: str
    tokens: int
    ids: list[int] = field(default_factory=list)  # the model's token ids behind ``text``


@dataclass(frozen=True)
class CacheHit(Message):
    """Host -> client, before the tokens of an answer served from its cache: the entry, how
    similar its question is (1.0 for an exact repeat), and the rate it bills at."""

    TYPE: ClassVar[str] = "cache_hit"
    entry: int
    similarity: float
    rate_bps: int

    def validate(self) -> None:
        _check(0.0 <= self.similarity <= 1.0, "cache_hit.similarity must be in [0, 1]")
        _check(self.rate_bps <= BPS, "cache_hit.rate_bps is at most 10000")


@dataclass(frozen=True)
class VoucherMsg(Message):
    """Client -> host: an EIP-712 voucher for ``cumulative_tokens``."""

    TYPE: ClassVar[str] = "voucher"
    cumulative_tokens: int
    transcript_hash: bytes
    signature: bytes

    def validate(self) -> None:
        _check(self.cumulative_tokens >= 0, "voucher.cumulative_tokens must be >= 0")
        _check(len(self.transcript_hash) == 32, "voucher.transcript_hash must be 32 bytes")
        _check(len(self.signature) == 65, "voucher.signature must be 65 bytes")


@dataclass(frozen=True)
class Done(Message):
    """Host -> client: the answer is complete; usage is this prompt's, ``tokens`` the session's.

    ``signature`` is the host's EIP-712 signature, with its registered key, over the answer's
    transcript hash (:func:`fabstir_sdk.contracts.sign_transcript`): the host cannot later deny
    what it served, and an audit that fails is evidence against it."""

    TYPE: ClassVar[str] = "done"
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    signature: bytes | None = None

    def validate(self) -> None:
        _check(
            self.signature is None or len(self.signature) == 65, "done.signature must be 65 bytes"
        )


@dataclass(frozen=True)
class AuditRequest(Message):
    """Client -> host: re-run ``record`` (an encoded transcript record of another answer of
    the model this host serves) and judge it (:mod:`fabstir_sdk.audit`). Billed like a prompt
    of the record's prompt + completion tokens: the prefill the audit costs."""

    TYPE: ClassVar[str] = "audit"
    record: bytes

    def validate(self) -> None:
        _check(0 < len(self.record) <= MAX_FRAME - 1024, "audit.record is empty or too large")


@dataclass(frozen=True)
class AuditVerdict(Message):
    """Host -> client: the verdict on the audited ``transcript_hash``; ``tokens`` is the
    session's billable count after the audit."""

    TYPE: ClassVar[str] = "audit_verdict"
    transcript_hash: bytes
    passed: bool
    mode: str
    checked: int
    agreed: int
    outside: int
    reason: str
    tokens: int
    z_score: float | None = None

    def validate(self) -> None:
        _check(len(self.transcript_hash) == 32, "audit_verdict.transcript_hash must be 32 bytes")
        _check(self.agreed <= self.checked and self.outside <= self.checked, "counts disagree")


@dataclass(frozen=True)
class Cancel(Message):
    """Client -> host: stop the current answer."""

    TYPE: ClassVar[str] = "cancel"


@dataclass(frozen=True)
class Error(Message):
    TYPE: ClassVar[str] = "error"
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class InfoRequest(Message):
    TYPE: ClassVar[str] = "info"


@dataclass(frozen=True)
class InfoResponse(Message):
    """Host -> anyone, free: what it serves, for how much, how busy and how fast."""

    TYPE: ClassVar[str] = "info_response"
    host: str
    models: list[dict[str, Any]]
    load: int
    tokens_per_second: float
    version: int = 1
    capacity: int = 0  # requests it can take at once (running + queued); 0 = not said
    parallel: int = 0  # of which decoded together in one batch; 0 = not said
    gpu_layers: int = 0  # model layers it runs on a GPU; 0 = CPU only (or not said)


@dataclass(frozen=True)
class RootRequest(Message):
    """Anyone -> a node, free: your latest signed storage root."""

    TYPE: ClassVar[str] = "root"


@dataclass(frozen=True)
class RootResponse(Message):
    """Node -> anyone: its registry entry (the asker checks the key is the peer's own and
    that the revision is not older than one it has seen)."""

    TYPE: ClassVar[str] = "root_response"
    entry: bytes


def error_from(exc: ProtocolError) -> Error:
    return Error(exc.code, str(exc) or exc.code, exc.retryable)


# --------------------------------------------------------------------------- frames


def encode_frame(message: Message) -> bytes:
    body = cbor2.dumps(message.to_wire(), canonical=True)
    if len(body) > MAX_FRAME:
        raise FrameTooLarge(f"frame of {len(body)} bytes exceeds {MAX_FRAME}")
    return encode_uvarint(len(body)) + body


def _no_tag(tag: Any, _immutable: bool = False) -> Any:
    raise MalformedFrame(f"CBOR tag {getattr(tag, 'tag', '?')} is not allowed")


def _refuse(_decoder: Any, _immutable: bool = False) -> Any:
    raise MalformedFrame("CBOR tags other than bignums are not allowed")


# cbor2 decodes these tags natively (dates, decimals, regular expressions, MIME, shared
# references...): none belongs in a frame, and some are costly to decode, so all are refused.
_REFUSED_TAGS = {
    tag: _refuse
    for tag in (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004)
}


def decode_cbor(body: bytes) -> Any:
    """CBOR as frames may use it (bounded depth, string keys, no tags but bignums); raises
    what cbor2 raises, or :class:`MalformedFrame` for a refused tag."""
    return cbor2.loads(
        body,
        max_depth=MAX_DEPTH,
        allow_indefinite=False,
        strict_hashable_types=True,
        tag_hook=_no_tag,
        semantic_decoders=_REFUSED_TAGS,
    )


class _CollectorPause:
    """Pause the cyclic garbage collector while large frames decode (nestable, threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    def __enter__(self) -> None:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1

    def __exit__(self, *_exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0 and self._was_enabled:
                gc.enable()


_collector_paused = _CollectorPause()
# At most two large frames decode at once, whatever the number of streams.
_decoder_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fabstir-decode")


def count_items(body: bytes, limit: int = MAX_ITEMS) -> int:
    """The number of CBOR data items in ``body``, walking only their heads (strings are
    skipped by length); raises :class:`MalformedFrame` past ``limit`` items, on an
    indefinite length or when the data ends early. Pure Python, so a thread running it lets
    others run: it guards the C decoder, which holds the GIL for a whole frame."""
    pos, end, items = 0, len(body), 0
    pending = [1]  # items still expected in each open container
    while pending:
        if not pending[-1]:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= end:
            raise MalformedFrame("the CBOR data ends early")
        head = body[pos]
        major, info = head >> 5, head & 0x1F
        pos += 1
        if info < 24:
            arg = info
        elif info < 28:
            size = 1 << (info - 24)
            arg = int.from_bytes(body[pos : pos + size], "big")
            pos += size
        else:
            raise MalformedFrame("indefinite or reserved CBOR lengths are not allowed")
        items += 1
        if items > limit:
            raise MalformedFrame(f"a frame may hold at most {limit} CBOR items")
        if major in (2, 3):  # byte and text strings
            pos += arg
        elif major == 4 and arg:  # array
            pending.append(arg)
        elif major == 5 and arg:  # map
            pending.append(2 * arg)
        elif major == 6:  # tag
            pending.append(1)
    return items


def _decode_large(body: bytes) -> Message:
    try:
        count_items(body)
    except MalformedFrame as exc:
        raise exc.with_traceback(None) from None
    with _collector_paused:
        return decode_body(body)


async def decode_body_async(body: bytes) -> Message:
    """:func:`decode_body` that never holds the event loop for a large frame."""
    if len(body) <= INLINE_DECODE:
        return decode_body(body)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_decoder_pool, _decode_large, body)


def decode_body(body: bytes) -> Message:
    """The message in a frame's body; raises :class:`ProtocolError` subclasses only."""
    try:
        return _decode(body)
    except ProtocolError as exc:
        # Stripped of traceback and context, the error holds no frame, so none of the decoded
        # data (maybe a million objects) stays alive while it travels to whoever reports it.
        exc.__context__ = exc.__cause__ = None
        raise exc.with_traceback(None) from None


def _decode(body: bytes) -> Message:
    try:
        data = decode_cbor(body)
    except ProtocolError:
        raise
    except Exception as exc:  # cbor2 raises several types on garbage
        raise MalformedFrame(f"undecodable CBOR: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("t"), str):
        raise MalformedFrame("a frame must be a CBOR map with a string field 't'")
    kind = _TYPES.get(data["t"])
    if kind is None:
        raise InvalidMessage(f"unknown message type {data['t']!r}")
    return kind.from_wire(data)


ReadFn = Callable[[int], Awaitable[bytes]]


class FrameReader:
    """Reads whole frames from ``read(n)`` (returns up to n bytes, b"" at end of stream)."""

    def __init__(self, read: ReadFn, max_frame: int = MAX_FRAME) -> None:
        self._read = read
        self._buf = bytearray()
        self.max_frame = max_frame  # may change between frames (a host raises it after open)

    async def _fill(self, at_least: int, mid_frame: bool) -> None:
        while len(self._buf) < at_least:
            chunk = await self._read(max(65536, at_least - len(self._buf)))
            if not chunk:
                raise StreamClosed(
                    "stream closed in the middle of a frame"
                    if mid_frame or self._buf
                    else "stream closed"
                )
            self._buf += chunk

    async def read(self, timeout: float | None = None) -> Message:
        """The next message; raises :class:`ProtocolError` subclasses on bad input."""
        try:
            return await asyncio.wait_for(self._read_frame(), timeout)
        except TimeoutError:
            raise ReadTimeout(f"no frame within {timeout:g} s" if timeout else "timeout") from None

    async def _read_frame(self) -> Message:
        while (header := decode_uvarint(bytes(self._buf[:MAX_VARINT_BYTES]))) is None:
            await self._fill(len(self._buf) + 1, mid_frame=False)
        length, used = header
        if length > self.max_frame:
            raise FrameTooLarge(f"frame of {length} bytes exceeds {self.max_frame}")
        await self._fill(used + length, mid_frame=True)
        body = bytes(self._buf[used : used + length])
        del self._buf[: used + length]
        return await decode_body_async(body)


class ByteStream(Protocol):
    """A bidirectional byte stream as both sides see it (a libp2p stream, bridged to asyncio)."""

    remote_peer: str

    async def read(self, n: int) -> bytes: ...

    async def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...

    async def reset(self) -> None: ...


class FramedStream:
    """Messages over a :class:`ByteStream`."""

    def __init__(self, stream: ByteStream, max_frame: int = MAX_FRAME) -> None:
        self.stream = stream
        self._reader = FrameReader(stream.read, max_frame)

    @property
    def remote_peer(self) -> str:
        return self.stream.remote_peer

    @property
    def max_frame(self) -> int:
        """The largest frame :meth:`receive` accepts."""
        return self._reader.max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._reader.max_frame = min(value, MAX_FRAME)

    async def receive(self, timeout: float | None = None) -> Message:
        return await self._reader.read(timeout)

    async def send(self, message: Message) -> None:
        await self.stream.write(encode_frame(message))

    async def fail(self, exc: ProtocolError) -> None:
        """Tell the peer what went wrong, then close: the only way a stream ends on bad input."""
        with contextlib.suppress(Exception):
            await self.send(error_from(exc))
        with contextlib.suppress(Exception):
            await self.stream.close()
