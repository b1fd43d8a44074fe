"""Bad input on the session protocol gets an error frame and a closed stream; the node keeps
serving everyone else."""

from __future__ import annotations

import cbor2
from eth_account import Account

from fabstir_node.runtime import HostNode
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import sign_voucher
from fabstir_sdk.models import model_id
from fabstir_sdk.p2p import PeerAddress
from fabstir_sdk.protocol import (
    MAX_FRAME,
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


def test_bad_frames_and_vouchers_get_errors_and_the_node_keeps_serving(devnet: Devnet) -> None:
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
