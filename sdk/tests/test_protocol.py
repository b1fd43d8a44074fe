import asyncio

import cbor2
import pytest

from fabstir_sdk.protocol import (
    MAX_FRAME,
    Done,
    FrameReader,
    FrameTooLarge,
    InvalidMessage,
    MalformedFrame,
    Prompt,
    StreamClosed,
    Token,
    VoucherMsg,
    decode_body,
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
