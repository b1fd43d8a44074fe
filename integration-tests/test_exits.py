"""Every way out of an answer leaves the session usable: ``break``, ``aclose()``, a cancelled
task and leaving ``SyncSession.chat`` each send ``cancel``, drain to ``done`` and vouch for
what was delivered; the next ``chat`` on the same session works, and the settlement pays
exactly what was vouched."""

from __future__ import annotations

import asyncio

import pytest

from fabstir_devtools.chain import anvil_account
from fabstir_sdk.errors import HostError
from fabstir_sdk.models import model_id
from fabstir_sdk.session import Session
from fabstir_sdk.sync import SyncClient

from conftest import (
    SETTLE_TIMEOUT,
    Devnet,
    assert_settled_for,
    node_in_thread,
    run,
    wait_for_voucher,
)

MESSAGES = [{"role": "user", "content": "tell me a long story"}]
LONG = 300  # tokens asked for: far more than any test reads before leaving


async def next_answer_works(session: Session) -> None:
    answer = session.chat(MESSAGES, max_tokens=5, temperature=0)
    await answer.collect()
    assert answer.usage is not None and answer.usage.completion_tokens == 5
    assert session.vouched == session.billed


def test_break_aclose_and_cancel_leave_the_session_usable(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(4)
        assert node.sessions is not None
        engine = node.sessions.engine
        try:
            session = await client.open_session(
                model_id("local", devnet.model_path.name), host=node.keys.account.address
            )
            cancelled = engine.cancelled_jobs

            # 1. break out of the loop (and keep a reference to the answer)
            broken = session.chat(MESSAGES, max_tokens=LONG, temperature=0)
            async for _piece in broken:
                break
            await next_answer_works(session)
            assert 0 < len(broken.token_ids) < LONG

            # 2. aclose() explicitly
            closed = session.chat(MESSAGES, max_tokens=LONG, temperature=0)
            await anext(closed)
            await closed.aclose()
            assert session.vouched == session.billed
            await next_answer_works(session)

            # Both left with far more to come than the credit window lets the host run ahead,
            # so the host was waiting for us and must have been cancelled.
            assert engine.cancelled_jobs >= cancelled + 2

            # 3. the consuming task is cancelled (the host may or may not have finished by
            # the time the cancel reaches it: either way the session goes on)
            started = asyncio.Event()

            async def consume() -> None:
                async for _piece in session.chat(MESSAGES, max_tokens=LONG, temperature=0):
                    started.set()

            task = asyncio.ensure_future(consume())
            await started.wait()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await next_answer_works(session)

            # 4. another task asking while an answer is being read is told the session is
            # busy, and the answer it would have cut off goes on untouched
            reading = session.chat(MESSAGES, max_tokens=40, temperature=0)
            first, go = asyncio.Event(), asyncio.Event()

            async def read_slowly() -> None:
                async for _piece in reading:
                    first.set()
                    await go.wait()

            reader = asyncio.ensure_future(read_slowly())
            await first.wait()
            with pytest.raises(HostError, match="busy"):
                await session.chat(MESSAGES, max_tokens=3).collect()
            go.set()
            await reader
            assert reading.finish_reason == "length" and len(reading.token_ids) == 40

            vouched = session.vouched
            await wait_for_voucher(node, session.id, vouched)
            journaled = node.journal.get(session.id) if node.journal else None
            assert journaled is not None and journaled.billed_tokens == vouched  # all paid
            await session.close()
            await asyncio.to_thread(assert_settled_for, client.contracts, session.id, vouched)
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_leaving_sync_chat_early_leaves_the_session_usable(devnet: Devnet) -> None:
    with (
        node_in_thread(devnet, 2),
        SyncClient(devnet.anvil.url, anvil_account(5).key.hex(), devnet.deployment) as c,
    ):
        session = c.open_session(
            model_id("local", devnet.model_path.name), host=anvil_account(2).address
        )
        for _piece in session.chat(MESSAGES, max_tokens=LONG, temperature=0):
            break
        text = "".join(session.chat(MESSAGES, max_tokens=4, temperature=0))
        assert text and session.usage is not None
        assert session.usage.completion_tokens == 4
        settlement = session.close(wait_settlement=SETTLE_TIMEOUT)
        assert settlement is not None and settlement.tokens == session.session.vouched
