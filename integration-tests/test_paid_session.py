"""A paid session end to end: real Anvil, real libp2p on 127.0.0.1, real llama.cpp model."""

from __future__ import annotations

import asyncio
from typing import Any

from fabstir_sdk.contracts import ETH
from fabstir_sdk.models import model_id
from fabstir_sdk.session import Session

from conftest import PRICE, SETTLE_TIMEOUT, Devnet, node_in_thread, run

MESSAGES = [{"role": "user", "content": "hello"}]


def test_two_chats_then_settlement_exact_to_the_wei(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1, checkpoint_every=40)
        client = devnet.client(4)
        try:
            model = model_id("local", devnet.model_path.name)
            hosts = await client.find_hosts(model)
            assert [h.address for h in hosts] == [node.keys.account.address]
            deposit = 10**15
            session = await client.open_session(model, deposit=deposit)
            first = session.chat(MESSAGES, max_tokens=20, temperature=0)
            text1 = await first.collect()
            second = session.chat(
                [
                    *MESSAGES,
                    {"role": "assistant", "content": text1},
                    {"role": "user", "content": "more"},
                ],
                max_tokens=30,
            )
            await second.collect()
            assert first.usage and second.usage
            assert first.usage.completion_tokens == 20 and second.usage.completion_tokens == 30
            billed = first.usage.total_tokens + second.usage.total_tokens
            assert session.billed == session.vouched == billed
            assert node.sessions is not None
            await node.sessions.drain()  # background checkpoints
            checkpointed = client.contracts.session(session.id).checkpoint_tokens
            assert 40 <= checkpointed <= billed  # a long session is never all at risk

            client_before = client.contracts.w3.eth.get_balance(client.account.address)
            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None, "the host did not settle"
            payment = billed * PRICE // 1000
            fee = payment * 1000 // 10_000
            assert settlement.tokens == billed
            assert (settlement.host_amount, settlement.fee) == (payment - fee, fee)
            assert settlement.refund == deposit - payment
            assert settlement.host_amount + settlement.fee + settlement.refund == deposit
            client_after = client.contracts.w3.eth.get_balance(client.account.address)
            assert client_after - client_before == settlement.refund  # the host paid the gas
            host = node.keys.account.address
            assert client.contracts.earnings_of(host) == payment - fee
            treasury = devnet.deployment.params["treasury"]
            assert client.contracts.earnings_of(treasury) >= fee

            chain = node.sessions.chain  # type: ignore[union-attr]
            before = chain.contracts.w3.eth.get_balance(host)
            [receipt] = chain.contracts.withdraw(ETH)  # sessions only: one escrow owes it
            gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
            after = chain.contracts.w3.eth.get_balance(host)
            assert after - before == payment - fee - gas
            assert chain.earnings(ETH) == 0
        finally:
            await client.close()
            await node.stop()

    run(main())


class NonPayingSession(Session):
    """Fault injection: a client that stops signing vouchers after its first answer."""

    paying = True

    async def _vouch(self, answer: Any, finish: str | None = None) -> None:
        if self.paying:
            await super()._vouch(answer, finish)


def test_host_pauses_at_its_credit_window_and_settles_what_was_vouched(devnet: Devnet) -> None:
    window = 16

    async def main() -> None:
        node = await devnet.start_node(2, credit_window=window, voucher_timeout=1.0)
        client = devnet.client(5)
        try:
            model = model_id("local", devnet.model_path.name)
            session = await client.open_session(model, host=node.keys.account.address)
            session.__class__ = NonPayingSession
            paid = session.chat(MESSAGES, max_tokens=10, temperature=0)
            await paid.collect()
            vouched = session.vouched
            assert paid.usage and vouched == paid.usage.total_tokens

            session.paying = False  # type: ignore[attr-defined]
            unpaid = session.chat(MESSAGES, max_tokens=200, temperature=0)
            await unpaid.collect()
            assert unpaid.finish_reason == "credit"
            assert unpaid.usage is not None
            # It stopped at the window: no more completion tokens than the window allows
            # beyond what was vouched (the previous answer was fully vouched).
            assert unpaid.usage.completion_tokens == window

            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None and settlement.tokens == vouched
            assert settlement.refund == session.deposit - vouched * PRICE // 1000
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_sync_wrappers_for_scripts(devnet: Devnet) -> None:
    from fabstir_devtools.chain import anvil_account
    from fabstir_sdk.sync import SyncClient

    with (
        node_in_thread(devnet, 3),
        SyncClient(devnet.anvil.url, anvil_account(6).key.hex(), devnet.deployment) as c,
    ):
        session = c.open_session(
            model_id("local", devnet.model_path.name), host=anvil_account(3).address
        )
        text = "".join(session.chat(MESSAGES, max_tokens=6, temperature=0))
        assert text and session.usage is not None
        settlement = session.close(wait_settlement=SETTLE_TIMEOUT)
        assert settlement is not None and settlement.tokens == session.usage.total_tokens


def test_concurrent_sessions_share_the_batch_and_each_pays_its_own_tokens(devnet: Devnet) -> None:
    """Two clients' answers are decoded in one batch; one stops paying. The other runs to its
    end, the unpaid one stops at its own credit window, and each settles its own count."""
    window = 16

    async def main() -> None:
        node = await devnet.start_node(7, credit_window=window, voucher_timeout=2.0, parallel=4)
        payer, stopper = devnet.client(8), devnet.client(9)
        assert node.sessions is not None
        engine = node.sessions.engine
        together = [0]

        async def watch() -> None:
            while True:
                together[0] = max(together[0], engine.running)
                await asyncio.sleep(0.001)

        watcher = asyncio.ensure_future(watch())
        try:
            model = model_id("local", devnet.model_path.name)
            host = node.keys.account.address
            paying = await payer.open_session(model, host=host)
            unpaid = await stopper.open_session(model, host=host)
            unpaid.__class__ = NonPayingSession
            await unpaid.chat(MESSAGES, max_tokens=5, temperature=0).collect()  # paid for
            vouched_before = unpaid.vouched
            unpaid.paying = False  # type: ignore[attr-defined]
            paid_chat = paying.chat(MESSAGES, max_tokens=120, temperature=0)
            unpaid_chat = unpaid.chat(MESSAGES, max_tokens=120, temperature=0)
            await asyncio.gather(paid_chat.collect(), unpaid_chat.collect())
            assert together[0] == 2  # both were in the batch at once
            assert paid_chat.finish_reason == "length" and paid_chat.usage is not None
            assert paid_chat.usage.completion_tokens == 120
            assert unpaid_chat.finish_reason == "credit" and unpaid_chat.usage is not None
            assert unpaid_chat.usage.completion_tokens == window
            assert paying.vouched == paid_chat.usage.total_tokens
            assert unpaid.vouched == vouched_before

            for session in (paying, unpaid):
                settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
                assert settlement is not None and settlement.tokens == session.vouched
                payment = session.vouched * PRICE // 1000
                assert settlement.host_amount + settlement.fee == payment
                assert settlement.refund == session.deposit - payment
        finally:
            watcher.cancel()
            await payer.close()
            await stopper.close()
            await node.stop()

    run(main())
