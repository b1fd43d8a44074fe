"""Settlement the host can rely on: a failed settlement is retried with backoff while the node
runs and shows in ``fabstir-node status``; a session too close to expiry is refused (and the
client's deposit is not left locked); a live session is ended and settled before it expires,
so nobody can finalize it on an older checkpoint."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from fabstir_devtools.wait import wait_until
from fabstir_node.sessions import SessionService
from fabstir_sdk.contracts import Voucher
from fabstir_sdk.contracts.client import SessionStatus, Settlement
from fabstir_sdk.contracts.transactions import ChainUnavailable
from fabstir_sdk.errors import HostError, NoHostAvailable
from fabstir_sdk.models import model_id

from conftest import Devnet, assert_settled_for, node_status, run

MESSAGES = [{"role": "user", "content": "hello"}]


class RpcDownAtSettlement(SessionService):
    """Fault injection: the chain RPC is unreachable whenever the host settles, until a test
    brings it back."""

    rpc_down = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        real = self.chain.settle

        async def settle(voucher: Voucher) -> Settlement:
            if type(self).rpc_down:
                raise ChainUnavailable("settle: the chain RPC is unreachable (injected)")
            return await real(voucher)

        self.chain.settle = settle  # type: ignore[method-assign]


def test_a_failed_settlement_is_retried_while_the_node_runs(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1, service=RpcDownAtSettlement)
        assert node.sessions is not None and node.journal is not None
        node.sessions.policy = replace(node.sessions.policy, retry_base=0.2)
        client = devnet.client(4)
        journal = node.journal
        try:
            session = await client.open_session(
                model_id("local", devnet.model_path.name), host=node.keys.account.address
            )
            await session.chat(MESSAGES, max_tokens=6, temperature=0).collect()
            vouched = session.vouched
            await session.close()

            def failed_twice() -> bool:
                journaled = journal.get(session.id)
                return journaled is not None and journaled.attempts >= 2

            await asyncio.to_thread(wait_until, failed_twice, 60, "two failed settlements")
            report = await asyncio.to_thread(node_status, devnet, node.config.data_dir)
            [pending] = report["pending"]
            assert pending["id"] == session.id and pending["vouched"] == vouched
            assert pending["attempts"] >= 2 and "unreachable" in pending["last_error"]

            RpcDownAtSettlement.rpc_down = False  # the RPC is back: the next retry settles
            await asyncio.to_thread(assert_settled_for, client.contracts, session.id, vouched)

            def journaled_settled() -> bool:  # the journal follows the receipt a moment later
                journaled = journal.get(session.id)
                return journaled is not None and journaled.state == "settled"

            await asyncio.to_thread(wait_until, journaled_settled, 30, "the journal to say so")
            journaled = journal.get(session.id)
            assert journaled is not None and journaled.last_error is None
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_a_session_too_close_to_expiry_is_refused_and_its_deposit_not_locked(
    devnet: Devnet,
) -> None:
    async def main() -> None:
        node = await devnet.start_node(2)
        client = devnet.client(5)
        try:
            with pytest.raises(NoHostAvailable, match="fabstir session refund"):
                await client.open_session(
                    model_id("local", devnet.model_path.name),
                    host=node.keys.account.address,
                    duration=60,  # the host wants more time than that to be worth serving
                )
            [stranded] = client.stranded
            assert "session_expiring" in stranded.reason and stranded.finalizable_at
            onchain = client.contracts.session(stranded.session_id)
            assert onchain.status == SessionStatus.CLOSE_REQUESTED  # asked at once
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_a_live_session_is_settled_before_it_expires(devnet: Devnet) -> None:
    """Last in this module: it moves the chain's clock."""

    async def main() -> None:
        node = await devnet.start_node(3)
        assert node.sessions is not None
        node.sessions.policy = replace(node.sessions.policy, watch_interval=0.2)
        client = devnet.client(6)
        try:
            session = await client.open_session(
                model_id("local", devnet.model_path.name),
                host=node.keys.account.address,
                duration=600,
            )
            await session.chat(MESSAGES, max_tokens=6, temperature=0).collect()
            w3 = client.contracts.w3
            w3.provider.make_request("evm_increaseTime", [600 - 20])  # type: ignore[arg-type]
            w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            # Still attached, but the host ends the stream and settles on its own.
            await asyncio.to_thread(
                assert_settled_for, client.contracts, session.id, session.vouched
            )
            with pytest.raises(HostError):
                await session.chat(MESSAGES, max_tokens=4).collect()
        finally:
            await client.close()
            await node.stop()

    run(main())
