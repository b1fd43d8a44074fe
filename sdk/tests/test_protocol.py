import asyncio

import cbor2
import pytest

from fabstir_sdk.protocol import (
    INLINE_DECODE,
    MAX_DEPTH,
    MAX_FRAME,
    MAX_SMALL_FRAME,
    Done,
    FramedStream,
    FrameReader,
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    Open,
    Prompt,
    StreamClosed,
    Token,
    VoucherMsg,
    count_items,
    decode_body,
    decode_body_async,
    decode_uvarint,
    encode_frame,
    encode_uvarint,
)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**21, 2**63])
def test_uvarint_round_trip(value: int) -> None:
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded) == (value, len(encoded))
    assert decode_uvarint(encoded[:-1]) is None


def test_uvarint_longer_than_ten_bytes_is_malformed() -> None:
    with pytest.raises(MalformedFrame):
        decode_uvarint(b"\xff" * 11)


def test_frames_are_deterministic_cbor_maps() -> None:
    frame = encode_frame(Done("stop", 3, 4, 7))
    length, used = decode_uvarint(frame)  # type: ignore[misc]
    body = frame[used:]
    assert len(body) == length
    assert cbor2.loads(body) == {
        "t": "done",
        "finish_reason": "stop",
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "tokens": 7,
    }
    assert encode_frame(Done("stop", 3, 4, 7)) == frame


def reader_over(*chunks: bytes) -> FrameReader:
    queue = list(chunks)

    async def read(_n: int) -> bytes:
        return queue.pop(0) if queue else b""

    return FrameReader(read)


def test_reader_reassembles_frames_split_anywhere() -> None:
    data = encode_frame(Token("héllo", 9)) + encode_frame(
        Prompt([{"role": "user", "content": "x"}])
    )
    chunks = [data[i : i + 3] for i in range(0, len(data), 3)]

    async def main() -> list[object]:
        reader = reader_over(*chunks)
        return [await reader.read(), await reader.read()]

    first, second = asyncio.run(main())
    assert first == Token("héllo", 9)
    assert isinstance(second, Prompt)


def test_oversize_frame_is_refused_from_its_header() -> None:
    async def main() -> None:
        await reader_over(encode_uvarint(MAX_FRAME + 1)).read()

    with pytest.raises(FrameTooLarge):
        asyncio.run(main())


def test_truncated_frame_is_stream_closed() -> None:
    frame = encode_frame(Token("abc", 1))

    async def main() -> None:
        await reader_over(frame[:-1]).read()

    with pytest.raises(StreamClosed, match="middle of a frame"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe", MalformedFrame),
        (cbor2.dumps([1, 2]), MalformedFrame),
        (cbor2.dumps({"t": "nope"}), InvalidMessage),
        (cbor2.dumps({"t": "token", "text": 5, "tokens": 1}), InvalidMessage),
        (cbor2.dumps({"t": "token", "text": "x", "tokens": True}), InvalidMessage),
        (cbor2.dumps({"t": "token", "text": "x"}), InvalidMessage),
        (
            cbor2.dumps(
                {
                    "t": "voucher",
                    "cumulative_tokens": 1,
                    "transcript_hash": b"x",
                    "signature": b"y" * 65,
                }
            ),
            InvalidMessage,
        ),
        (cbor2.dumps({"t": "prompt", "messages": []}), InvalidMessage),
        (
            cbor2.dumps(
                {"t": "prompt", "messages": [{"role": "user", "content": "x"}], "temperature": 9}
            ),
            InvalidMessage,
        ),
    ],
)
def test_invalid_bodies(body: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        decode_body(body)


def test_unknown_fields_are_ignored() -> None:
    body = cbor2.dumps({"t": "token", "text": "x", "tokens": 1, "future": True})
    assert decode_body(body) == Token("x", 1)
    voucher = VoucherMsg(1, b"\0" * 32, b"\1" * 65)
    frame = encode_frame(voucher)
    _, used = decode_uvarint(frame)  # type: ignore[misc]
    assert decode_body(frame[used:]) == voucher


# --------------------------------------------------------------------------- bounded decoding


def _body(data: dict[str, object]) -> bytes:
    return cbor2.dumps(data)


@pytest.mark.parametrize(
    "data",
    [
        {"t": "open", "session_id": 2**256, "chain_id": 1},
        {"t": "open", "session_id": -1, "chain_id": 1},
        {"t": "open", "session_id": 1, "chain_id": 2**256},
        {
            "t": "voucher",
            "cumulative_tokens": 2**256,
            "transcript_hash": b"\0" * 32,
            "signature": b"\0" * 65,
        },
        {"t": "prompt", "messages": [{"role": "user", "content": "x"}], "seed": 2**64},
        {
            "t": "prompt",
            "messages": [{"role": "user", "content": "x"}],
            "temperature": float("nan"),
        },
        {
            "t": "info_response",
            "host": "h",
            "models": [],
            "load": 0,
            "tokens_per_second": float("inf"),
        },
        {"t": "done", "finish_reason": "stop", "prompt_tokens": 1, "completion_tokens": 1,
         "tokens": 2, "signature": b"\0" * 64},
        {"t": "audit", "record": b""},
        {"t": "audit_verdict", "transcript_hash": b"\0" * 31, "passed": True, "mode": "greedy",
         "checked": 1, "agreed": 1, "outside": 0, "reason": "", "tokens": 3},
        {"t": "audit_verdict", "transcript_hash": b"\0" * 32, "passed": True, "mode": "greedy",
         "checked": 1, "agreed": 2, "outside": 0, "reason": "", "tokens": 3},
        {"t": "audit_verdict", "transcript_hash": b"\0" * 32, "passed": "yes", "mode": "greedy",
         "checked": 1, "agreed": 1, "outside": 0, "reason": "", "tokens": 3},
    ],
)  # fmt: skip
def test_out_of_range_fields_are_invalid_messages(data: dict[str, object]) -> None:
    with pytest.raises(InvalidMessage):
        decode_body(_body(data))


def test_uint256_bounds_are_inclusive_and_seeds_are_64_bit() -> None:
    top = decode_body(_body({"t": "open", "session_id": 2**256 - 1, "chain_id": 1}))
    assert top == Open(2**256 - 1, 1)
    prompt = decode_body(
        _body({"t": "prompt", "messages": [{"role": "user", "content": "x"}], "seed": -5})
    )
    assert isinstance(prompt, Prompt) and prompt.seed == -5


@pytest.mark.parametrize(
    "body",
    [
        cbor2.dumps({"t": "open", "x": cbor2.CBORTag(1, 0)}),  # a date
        cbor2.dumps({"t": "open", "x": cbor2.CBORTag(35, "(a+)+$")}),  # a regular expression
        cbor2.dumps({"t": "open", "x": cbor2.CBORTag(4, [1, 2])}),  # a decimal fraction
        cbor2.dumps({"t": "open", "x": cbor2.CBORTag(12345, 1)}),  # an unknown tag
        b"\xbf\x61t\x64open\xff",  # an indefinite-length map
        cbor2.dumps({1: 2, "t": "open"}),  # a key that is not a string
        b"\xa2\x61t\x64open\x61x" + b"\x81" * (MAX_DEPTH + 1) + b"\x00",  # nested too deep
    ],
)
def test_cbor_outside_the_protocol_subset_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedFrame):
        decode_body(body)


def test_count_items_walks_heads_and_stops_at_the_limit() -> None:
    assert count_items(cbor2.dumps({"a": [1, 2, {"b": b"xx"}]})) == 8
    assert count_items(cbor2.dumps("x" * 100_000)) == 1
    million = b"\x9a" + (10**6).to_bytes(4, "big") + b"\xa0" * 10**6
    with pytest.raises(MalformedFrame):
        count_items(million)
    with pytest.raises(MalformedFrame):
        count_items(b"\x9a" + (10**6).to_bytes(4, "big") + b"\x00")  # ends early


def test_large_frames_decode_off_the_loop_and_a_bomb_is_refused() -> None:
    prompt = Prompt([{"role": "user", "content": "é" * 100_000}], prefix_ids=list(range(65536)))
    frame = encode_frame(prompt)
    length, used = decode_uvarint(frame)  # type: ignore[misc]
    assert length > INLINE_DECODE
    assert asyncio.run(decode_body_async(frame[used:])) == prompt
    bomb = b"\xa2\x61t\x66prompt\x61x\x9a" + (MAX_FRAME - 64).to_bytes(4, "big")
    bomb += b"\x80" * (MAX_FRAME - 64)
    with pytest.raises(MalformedFrame):
        asyncio.run(decode_body_async(bomb))


def test_a_decoding_error_keeps_no_decoded_data_alive() -> None:
    body = _body({"t": "prompt", "x": [[i] for i in range(1000)]})  # no messages: invalid
    with pytest.raises(InvalidMessage) as raised:
        decode_body(body)
    assert raised.value.__context__ is None and raised.value.__cause__ is None
    frames = []
    tb = raised.value.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    assert all("data" not in f.f_locals and "kwargs" not in f.f_locals for f in frames)


def test_a_framed_stream_takes_a_lower_limit_until_raised() -> None:
    class Silent:
        remote_peer = "p"

        async def read(self, _n: int) -> bytes:
            return encode_uvarint(MAX_SMALL_FRAME + 1)

        async def write(self, data: bytes) -> None: ...

        async def close(self) -> None: ...

        async def reset(self) -> None: ...

    framed = FramedStream(Silent(), MAX_SMALL_FRAME)
    with pytest.raises(FrameTooLarge):
        asyncio.run(framed.receive())
    framed.max_frame = 10 * MAX_FRAME
    assert framed.max_frame == MAX_FRAME


def test_signed_done_and_audit_frames_round_trip() -> None:
    from fabstir_sdk.protocol import AuditRequest, AuditVerdict

    for message in (
        Done("stop", 3, 4, 7, b"\x01" * 65),
        AuditRequest(b"\xa1\x01\x02"),
        AuditVerdict(b"\x02" * 32, False, "sampled", 40, 31, 2, "outside the top-p set", 99, -5.5),
    ):
        frame = encode_frame(message)
        _, start = decode_uvarint(frame) or (0, 0)
        assert decode_body(frame[start:]) == message
