"""Bad input on the session protocol gets an error frame and a closed stream; the node keeps
serving everyone else, cheaply."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Any

import aiohttp
import cbor2
import psutil
import pytest
from eth_account import Account

from fabstir_node.limits import PeerRateLimiter
from fabstir_node.runtime import HostNode
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import sign_voucher
from fabstir_sdk.models import model_id
from fabstir_sdk.p2p import PeerAddress
from fabstir_sdk.protocol import (
    MAX_FRAME,
    MAX_SMALL_FRAME,
    SESSION_PROTOCOL,
    Error,
    FramedStream,
    Open,
    Prompt,
    Ready,
    VoucherMsg,
    encode_frame,
    encode_uvarint,
)

from conftest import PRICE, SETTLE_TIMEOUT, Devnet, run

MESSAGES = [{"role": "user", "content": "hi"}]
REPLY_TIMEOUT = 60  # seconds for the host to answer a frame, on a busy machine


async def raw_stream(client: FabstirClient, node: HostNode) -> FramedStream:
    assert node.network is not None
    peer = PeerAddress(node.network.host.peer_id, node.network.host.addrs)
    return FramedStream(await client.p2p.open_stream(peer, SESSION_PROTOCOL))


async def expect_error(framed: FramedStream, code: str) -> None:
    reply = await framed.receive(timeout=REPLY_TIMEOUT)
    assert isinstance(reply, Error), reply
    assert reply.code == code, reply
    assert (await framed.stream.read(1)) == b""  # and the host closed the stream


def open_onchain(client: FabstirClient, host: str, deposit: int = 10**15) -> tuple[int, object]:
    signer = Account.create()
    model = model_id("local", "tiny.gguf")
    session_id, _ = client.contracts.open_session(host, model, deposit, PRICE, 3600, signer.address)
    return session_id, signer


def test_bad_frames_and_vouchers_get_errors_and_the_node_keeps_serving(
    devnet: Devnet, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        other = await devnet.start_node(2)
        client = devnet.client(4)
        await client.start()
        host = node.keys.account.address
        chain_id = devnet.deployment.chain_id
        try:
            # Undecodable CBOR in a well-formed frame.
            framed = await raw_stream(client, node)
            await framed.stream.write(encode_uvarint(3) + b"\xff\xff\xff")
            await expect_error(framed, "malformed_frame")

            # A frame announcing more than 1 MiB: refused before the body is read.
            framed = await raw_stream(client, node)
            await framed.stream.write(encode_uvarint(MAX_FRAME + 1) + b"x" * 100)
            await expect_error(framed, "frame_too_large")

            # A CBOR map that isn't a message.
            framed = await raw_stream(client, node)
            body = cbor2.dumps({"t": "launch_missiles"})
            await framed.stream.write(encode_uvarint(len(body)) + body)
            await expect_error(framed, "invalid_message")

            # Before open, frames are small: a 5 KiB one is refused from its header.
            framed = await raw_stream(client, node)
            await framed.stream.write(encode_uvarint(MAX_SMALL_FRAME + 1024) + b"x" * 100)
            await expect_error(framed, "frame_too_large")

            # Out-of-range fields are invalid messages (not retryable host errors): session
            # ids are uint256.
            for out_of_range in (2**256, -1):
                framed = await raw_stream(client, node)
                await framed.send(Open(out_of_range, chain_id))
                await expect_error(framed, "invalid_message")

            # Out of order: a prompt before open.
            framed = await raw_stream(client, node)
            await framed.send(Prompt(MESSAGES))
            await expect_error(framed, "unexpected_message")

            # A session that does not exist, and one opened for another host.
            framed = await raw_stream(client, node)
            await framed.send(Open(999, chain_id))
            await expect_error(framed, "unknown_session")
            foreign, _ = open_onchain(client, other.keys.account.address)
            framed = await raw_stream(client, node)
            await framed.send(Open(foreign, chain_id))
            await expect_error(framed, "wrong_host")

            # A voucher signed by the wrong key.
            session_id, signer = open_onchain(client, host)
            framed = await raw_stream(client, node)
            await framed.send(Open(session_id, chain_id))
            assert isinstance(await framed.receive(timeout=REPLY_TIMEOUT), Ready)
            forged = sign_voucher(
                Account.create(), client.contracts.voucher_domain(), session_id, 5
            )
            await framed.send(VoucherMsg(5, forged.transcript_hash, forged.signature))
            await expect_error(framed, "invalid_voucher")

            # A genuine voucher replayed into another session.
            second, _ = open_onchain(client, host)
            replayed = sign_voucher(signer, client.contracts.voucher_domain(), session_id, 5)  # type: ignore[arg-type]
            framed = await raw_stream(client, node)
            await framed.send(Open(second, chain_id))
            assert isinstance(await framed.receive(timeout=REPLY_TIMEOUT), Ready)
            await framed.send(VoucherMsg(5, replayed.transcript_hash, replayed.signature))
            await expect_error(framed, "invalid_voucher")

            # A client that hangs up mid-frame costs nothing.
            framed = await raw_stream(client, node)
            frame = encode_frame(Open(second, chain_id))
            await framed.stream.write(frame[: len(frame) // 2])
            await framed.stream.reset()

            # Meanwhile the node serves a well-behaved client as usual.
            session = await client.open_session(model_id("local", "tiny.gguf"), host=host)
            answer = session.chat(MESSAGES, max_tokens=8, temperature=0)
            assert await answer.collect()
            assert answer.usage is not None and answer.usage.completion_tokens == 8
            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None and settlement.tokens == session.vouched
        finally:
            await client.close()
            await node.stop()
            await other.stop()

    run(main())
    tracebacks = [r for r in caplog.records if r.name.startswith("fabstir") and r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


# --------------------------------------------------------------------------- cost of bad input


def nested_bomb(size: int) -> bytes:
    """What a js-libp2p probe sent: a prompt-typed map holding thousands of 390-deep nested
    arrays, ``size`` bytes of CBOR (a million containers)."""
    chain = b"\x81" * 390 + b"\x00"
    count = (size - 16) // len(chain)
    return b"\xa2\x61t\x66prompt\x61x\x9a" + count.to_bytes(4, "big") + chain * count


def shallow_bomb(size: int) -> bytes:
    """A prompt-typed map holding a million empty maps: shallow, but a million objects."""
    count = size - 16
    return b"\xa2\x61t\x66prompt\x61x\x9a" + count.to_bytes(4, "big") + b"\xa0" * count


async def send_bomb(client: FabstirClient, peer: PeerAddress, body: bytes, session: int = 0) -> str:
    """Send ``body`` as one frame on a new session stream (after opening ``session`` when
    given); the code of the host's error frame."""
    stream = await client.p2p.open_stream(peer, SESSION_PROTOCOL)
    framed = FramedStream(stream)
    writer: asyncio.Future[None] | None = None
    try:
        if session:
            await framed.send(Open(session, client.contracts.deployment.chain_id))
            assert isinstance(await framed.receive(timeout=REPLY_TIMEOUT), Ready)
        # The host may answer from the header and stop reading: write in the background.
        writer = asyncio.ensure_future(stream.write(encode_uvarint(len(body)) + body))
        reply = await framed.receive(timeout=REPLY_TIMEOUT)
        assert isinstance(reply, Error), reply
        return reply.code
    finally:
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        await stream.reset()


def test_megabyte_frames_of_nested_cbor_cost_the_host_little(devnet: Devnet) -> None:
    """Eight concurrent 1 MiB frames of deeply nested CBOR before `open` once cost a host
    11.6 s of CPU on its event loop (/health took 8.3 s, RSS +390 MiB). Before open a host
    reads at most a few KiB; after it, nesting and the number of items are bounded before
    the C decoder runs, off the loop, so /health stays fast."""
    host = devnet.start_host(3)
    info = host.info
    match = re.search(r"http://[^\s/]+", info["api"])  # /health is served with or without --http
    assert match is not None, info
    api = match.group(0)
    peer = PeerAddress(info["peer id"], info["listening"].split())
    assert host.proc is not None
    process = psutil.Process(host.proc.pid)

    async def main() -> dict[str, Any]:
        client = devnet.client(5)
        await client.start()
        latencies: list[float] = []
        done = asyncio.Event()
        async with aiohttp.ClientSession() as http:

            async def health() -> None:
                while not done.is_set():
                    started = time.monotonic()
                    async with http.get(f"{api}/health") as response:
                        await response.read()
                    latencies.append(time.monotonic() - started)

            try:
                await client.p2p.connect(peer.peer_id, peer.addrs)
                sessions = [
                    (await asyncio.to_thread(open_onchain, client, host.address))[0]
                    for _ in range(2)
                ]
                cpu = sum(process.cpu_times()[:2])
                rss = process.memory_info().rss
                poller = asyncio.ensure_future(health())
                before_open = await asyncio.gather(
                    *(send_bomb(client, peer, nested_bomb(MAX_FRAME - 64)) for _ in range(8))
                )
                after_open = [
                    await send_bomb(client, peer, nested_bomb(MAX_FRAME - 64), sessions[0]),
                    await send_bomb(client, peer, shallow_bomb(MAX_FRAME - 64), sessions[1]),
                ]
                done.set()
                await poller
                return {
                    "before_open": before_open,
                    "after_open": after_open,
                    "cpu": sum(process.cpu_times()[:2]) - cpu,
                    "rss": process.memory_info().rss - rss,
                    "health_max": max(latencies),
                    "health_n": len(latencies),
                }
            finally:
                done.set()
                await client.close()

    result = run(main())
    print(
        f"host CPU {result['cpu']:.2f} s, /health max {result['health_max'] * 1000:.0f} ms "
        f"over {result['health_n']} requests, RSS {result['rss'] / 2**20:+.0f} MiB"
    )
    assert result["before_open"] == ["frame_too_large"] * 8
    assert result["after_open"] == ["malformed_frame", "malformed_frame"]  # depth, item count
    assert result["health_max"] < 1.0
    assert result["cpu"] < 3.0


# --------------------------------------------------------------------------- cheap checks first


def test_open_floods_are_rate_limited_before_the_chain_rpc(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        assert node.sessions is not None
        sessions = node.sessions
        # A strict bucket, so the test does not depend on how fast this machine is.
        sessions.open_limiter = PeerRateLimiter(0.1, 3, 1000, 1000)
        verified = 0
        verify = sessions.chain.verify_session

        async def counting_verify(*args: Any, **kwargs: Any) -> Any:
            nonlocal verified
            verified += 1
            return await verify(*args, **kwargs)

        sessions.chain.verify_session = counting_verify  # type: ignore[method-assign]
        flooder, polite = devnet.client(5), devnet.client(6)
        await flooder.start()
        await polite.start()
        chain_id = devnet.deployment.chain_id
        try:

            async def one_open() -> Error:
                framed = await raw_stream(flooder, node)
                try:
                    await framed.send(Open(999, chain_id))
                    reply = await framed.receive(timeout=REPLY_TIMEOUT)
                    assert isinstance(reply, Error), reply
                    return reply
                finally:
                    await framed.stream.reset()

            replies = await asyncio.gather(*(one_open() for _ in range(30)))
            codes = [r.code for r in replies]
            assert set(codes) <= {"rate_limited", "unknown_session"}, codes
            assert codes.count("rate_limited") >= 25, codes
            assert all(r.retryable for r in replies if r.code == "rate_limited")
            assert verified == codes.count("unknown_session")  # no RPC for the refused

            # Another peer is served meanwhile.
            host = node.keys.account.address
            session = await polite.open_session(model_id("local", "tiny.gguf"), host=host)
            answer = session.chat(MESSAGES, max_tokens=4, temperature=0)
            assert await answer.collect()
            await session.close()
        finally:
            await flooder.close()
            await polite.close()
            await node.stop()

    run(main())


def test_stale_and_duplicate_vouchers_cost_no_signature_recovery(
    devnet: Devnet, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fabstir_node.sessions as host_sessions

    recoveries = 0
    recover = host_sessions.recover_signer

    def counting_recover(*args: Any) -> Any:
        nonlocal recoveries
        recoveries += 1
        return recover(*args)

    monkeypatch.setattr(host_sessions, "recover_signer", counting_recover)

    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(7)
        await client.start()
        chain_id = devnet.deployment.chain_id
        try:
            session_id, signer = open_onchain(client, node.keys.account.address)
            framed = await raw_stream(client, node)
            await framed.send(Open(session_id, chain_id))
            assert isinstance(await framed.receive(timeout=REPLY_TIMEOUT), Ready)
            good = sign_voucher(signer, client.contracts.voucher_domain(), session_id, 5)  # type: ignore[arg-type]
            junk = (b"\x00" * 32, b"\x00" * 65)
            await framed.send(VoucherMsg(5, good.transcript_hash, good.signature))
            await framed.send(VoucherMsg(5, good.transcript_hash, good.signature))  # again
            await framed.send(VoucherMsg(3, *junk))  # stale: ignored, whoever signed it
            await framed.send(VoucherMsg(10**30, *junk))  # beyond the deposit: refused
            await expect_error(framed, "invalid_voucher")
            assert recoveries == 1
            assert node.journal is not None
            journaled = node.journal.get(session_id)
            assert journaled is not None and journaled.best is not None
            assert journaled.best.cumulative_tokens == 5
        finally:
            await client.close()
            await node.stop()

    run(main())
