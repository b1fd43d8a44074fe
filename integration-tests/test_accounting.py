"""The client pays only for what it counts itself. Hosts that lie on purpose (fault injection:
``SessionService`` subclasses that falsify their ``token`` frames) are caught on the first
false claim: the client vouches for what it counted, no more, ends the session with
``bad_accounting``, and the host can settle only what was vouched."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from fabstir_node.sessions import SessionService
from fabstir_sdk.errors import HostError
from fabstir_sdk.models import model_id
from fabstir_sdk.protocol import FramedStream, Message, Ready, Token

from conftest import PRICE, SETTLE_TIMEOUT, Devnet, assert_settled_for, run, wait_for_voucher

MESSAGES = [{"role": "user", "content": "count for me"}]


class LyingHost(SessionService):
    """A host that falsifies its ``token`` frames (a deliberately injected fault)."""

    def falsify(self, token: Token, frame: int) -> Token:
        raise NotImplementedError

    async def _send(self, framed: FramedStream, message: Message) -> None:
        if isinstance(message, Token):
            self.frames = getattr(self, "frames", 0) + 1
            message = self.falsify(message, self.frames)
        await framed.send(message)


class InflatesThePrompt(LyingHost):
    def falsify(self, token: Token, frame: int) -> Token:
        return replace(token, tokens=token.tokens + 5)


class OneExtraTokenPerFrame(LyingHost):
    def falsify(self, token: Token, frame: int) -> Token:
        return replace(token, tokens=token.tokens + frame) if frame > 3 else token


class IdsDontMatchTheClaim(LyingHost):
    def falsify(self, token: Token, frame: int) -> Token:
        return replace(token, ids=[]) if frame > 3 else token  # claims tokens it doesn't send


class IgnoresMaxTokens(LyingHost):
    """Claims add up, but it sends twice the ids it was asked for (made-up padding)."""

    def falsify(self, token: Token, frame: int) -> Token:
        self.padding = getattr(self, "padding", 0) + len(token.ids)
        return replace(token, tokens=token.tokens + self.padding, ids=token.ids * 2)


@pytest.mark.parametrize(
    ("index", "liar"),
    [
        (1, InflatesThePrompt),
        (2, OneExtraTokenPerFrame),
        (3, IdsDontMatchTheClaim),
        (8, IgnoresMaxTokens),
    ],
)
def test_a_lying_host_is_paid_only_what_the_client_counted(
    devnet: Devnet, index: int, liar: type[LyingHost]
) -> None:
    async def main() -> None:
        node = await devnet.start_node(index, service=liar)
        client = devnet.client(4)
        try:
            deposit = 10**15
            session = await client.open_session(
                model_id("local", devnet.model_path.name),
                host=node.keys.account.address,
                deposit=deposit,
                voucher_every=2,
            )
            answer = session.chat(MESSAGES, max_tokens=24, temperature=0)
            with pytest.raises(HostError) as caught:
                await answer.collect()
            assert caught.value.code == "bad_accounting"
            assert session.closed
            honest = answer.prompt_tokens + len(answer.token_ids)
            assert session.vouched <= honest  # never a voucher for what we didn't count
            assert session.vouched >= answer.prompt_tokens  # but what came is paid for
            await asyncio.to_thread(
                assert_settled_for, client.contracts, session.id, session.vouched
            )
            settlement = client.contracts.settlement_of(session.id)
            assert settlement is not None
            assert settlement.host_amount + settlement.fee + settlement.refund == deposit
            assert settlement.host_amount + settlement.fee == session.vouched * PRICE // 1000
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_an_honest_hosts_claims_match_the_clients_count_exactly(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(5)
        try:
            session = await client.open_session(
                model_id("local", devnet.model_path.name), host=node.keys.account.address
            )
            # A prompt the host refuses before its first token bills nothing, on both sides.
            with pytest.raises(HostError, match="context_length_exceeded"):
                await session.chat([{"role": "user", "content": "x" * 600}]).collect()
            assert session.billed == session.vouched == 0
            totals = []
            conversation: list[dict[str, Any]] = list(MESSAGES)
            for turn in range(3):
                answer = session.chat(conversation, max_tokens=10 + turn, temperature=0)
                text = await answer.collect()
                assert answer.usage is not None
                assert answer.usage.prompt_tokens == answer.prompt_tokens
                assert answer.usage.completion_tokens == len(answer.token_ids) == 10 + turn
                totals.append(answer.usage.total_tokens)
                conversation += [
                    {"role": "assistant", "content": text},
                    {"role": "user", "content": "and again"},
                ]
            assert session.vouched == sum(totals)
            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None and settlement.tokens == sum(totals)
        finally:
            await client.close()
            await node.stop()

    run(main())


class HoldsSettlement(SessionService):
    """Fault injection: the host holds back its settlement until the test lets it go, so a
    client can re-attach to the session deterministically."""

    async def settle(self, session_id: int) -> None:
        await self.release.wait()  # type: ignore[attr-defined]
        await super().settle(session_id)


class InflatesTheResumeCount(HoldsSettlement):
    async def _send(self, framed: FramedStream, message: Message) -> None:
        if isinstance(message, Ready) and message.billed_tokens:
            message = replace(message, billed_tokens=message.billed_tokens + 100)
        await framed.send(message)


@pytest.mark.parametrize(("index", "host"), [(2, HoldsSettlement), (3, InflatesTheResumeCount)])
def test_reattaching_resumes_only_from_the_clients_own_voucher(
    devnet: Devnet, index: int, host: type[HoldsSettlement]
) -> None:
    async def main() -> None:
        node = await devnet.start_node(index, service=host)
        assert node.sessions is not None and node.network is not None
        node.sessions.release = asyncio.Event()  # type: ignore[attr-defined]
        client = devnet.client(6)
        try:
            session = await client.open_session(
                model_id("local", devnet.model_path.name), host=node.keys.account.address
            )
            await session.chat(MESSAGES, max_tokens=7, temperature=0).collect()
            vouched = session.vouched
            await wait_for_voucher(node, session.id, vouched)
            await session._framed.stream.reset()  # the connection drops
            hosts = await client.find_hosts(session.model)
            [info] = [h for h in hosts if h.address == session.host]
            if host is InflatesTheResumeCount:
                with pytest.raises(HostError, match="bad_accounting"):
                    await client.attach(session.id, info, session.signer)
                total = vouched
            else:
                again = await client.attach(session.id, info, session.signer)
                assert again.vouched == again.billed == vouched
                answer = again.chat(MESSAGES, max_tokens=5, temperature=0)
                await answer.collect()
                assert answer.usage is not None
                total = vouched + answer.usage.total_tokens
                assert again.vouched == total
                await again.close()
            node.sessions.release.set()  # type: ignore[attr-defined]
            await asyncio.to_thread(assert_settled_for, client.contracts, session.id, total)
        finally:
            await client.close()
            await node.stop()

    run(main())
