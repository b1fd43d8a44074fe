"""Faults: a host killed mid-answer (the client gets its refund), a host killed after
vouchers and restarted (it settles from its journal, exactly once)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.contracts.client import SessionStatus
from fabstir_sdk.models import model_id
from fabstir_sdk.session import HostError, Session

from conftest import Devnet, assert_settled_for, run

MESSAGES = [{"role": "user", "content": "hello"}]


class SilentSession(Session):
    """Fault injection: never vouches, so the host stops at its credit window and waits."""

    async def _vouch(self, answer: Any, finish: str | None = None) -> None:
        return None


def test_host_killed_mid_answer_client_gets_error_then_refund(devnet: Devnet) -> None:
    node = devnet.start_host(
        6, env={"FABSTIR_CREDIT_WINDOW": "16", "FABSTIR_VOUCHER_TIMEOUT": "60"}
    )

    async def main() -> None:
        client = devnet.client(7)
        try:
            model = model_id("local", devnet.model_path.name)
            session = await client.open_session(model, deposit=10**15)
            session.__class__ = SilentSession
            answer = session.chat(MESSAGES, max_tokens=200)
            task = asyncio.ensure_future(answer.collect())
            # The answer cannot end by itself: unpaid, the host stops at its credit window
            # (far below max_tokens) and waits a minute for a voucher that never comes. So
            # once tokens arrive, the host is killed mid-answer (token ids, not text: some
            # tokens are partial UTF-8 and carry none).
            await wait_until_async(
                lambda: answer.token_ids or task.done(), what="the first tokens of the answer"
            )
            assert not task.done()
            node.kill()
            with pytest.raises(HostError) as error:
                await asyncio.wait_for(task, 120)
            assert error.value.retryable and "went away" in str(error.value)

            finalizable_at = await session.request_refund()
            devnet.anvil.increase_time(finalizable_at - client.contracts.latest_timestamp())
            settlement = await session.finalize()
            # Nothing was vouched or checkpointed: the whole deposit comes back.
            assert settlement.tokens == 0 and settlement.refund == 10**15
        finally:
            await client.close()

    try:
        run(main())
    finally:
        node.stop()


def test_host_killed_after_vouchers_settles_from_its_journal_once(devnet: Devnet) -> None:
    node = devnet.start_host(3)

    async def main() -> tuple[int, int]:
        client = devnet.client(4)
        try:
            session = await client.open_session(model_id("local", devnet.model_path.name))
            answer = session.chat(MESSAGES, max_tokens=40, temperature=0)
            await answer.collect()

            def journaled() -> list[int]:
                status = json.loads(node.cli("status", "--json").stdout)
                return [s["vouched"] for s in status["sessions"] if s["id"] == session.id]

            await wait_until_async(
                lambda: asyncio.to_thread(lambda: journaled() == [session.vouched]),
                what="the host to journal the last voucher",
                interval=0.2,
            )
            node.kill()  # with the session still attached: nothing was settled
            return session.id, session.vouched
        finally:
            await client.close()

    session_id, vouched = run(main())
    contracts = devnet.client(4).contracts
    assert contracts.session(session_id).status == SessionStatus.OPEN

    node.start()  # resumes from the journal
    assert_settled_for(contracts, session_id, vouched)
    node.stop()

    node.start()  # and again: nothing left to settle, nothing settled twice
    status = json.loads(node.cli("status", "--json").stdout)
    node.stop()
    mine = [s for s in status["sessions"] if s["id"] == session_id]
    assert mine and mine[0]["state"] == "settled" and mine[0]["vouched"] == vouched
    logs = contracts.market.events.SessionSettled().get_logs(
        from_block=0, argument_filters={"sessionId": session_id}
    )
    assert len(logs) == 1


def test_unregister_then_withdraw_stake_after_unbonding(devnet: Devnet) -> None:
    node = devnet.host(2)
    node.setup()
    assert node.cli("unregister", "--json").returncode == 0
    early = node.cli("withdraw-stake")
    assert early.returncode == 5 and "unbonding" in early.stderr
    devnet.anvil.increase_time(devnet.deployment.params["unbondingDelay"])
    done = node.cli("withdraw-stake", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["withdrawn_fab_wei"] == devnet.deployment.params["minStake"]
    again = node.cli("unregister")
    assert again.returncode == 5 and "not registered" in again.stderr
