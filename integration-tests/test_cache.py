"""The answer cache on the real stack: a repeat is served from the host's cache and billed at
its cache rate, which the client checks to the token and the settlement pays to the wei; a
client never sees another client's private answer; a near miss is generated afresh; the cache
survives a restart; and a host that bills a cached answer at more than its rate is caught."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import httpx
import pytest

from fabstir_devtools.wait import wait_until_async
from fabstir_node.runtime import HostNode
from fabstir_node.sessions import SessionService
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.errors import HostError
from fabstir_sdk.models import model_id
from fabstir_sdk.protocol import CacheHit, FramedStream, Message, Token, cached_tokens
from fabstir_sdk.session import Session

from conftest import PRICE, SETTLE_TIMEOUT, Devnet, assert_settled_for, free_port, run

DEPOSIT = 10**15
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


async def open_session(devnet: Devnet, client: FabstirClient, node: HostNode) -> Session:
    return await client.open_session(
        model_id("local", devnet.model_path.name),
        host=node.keys.account.address,
        deposit=DEPOSIT,
    )


async def kept(node: HostNode, inserts: int) -> None:
    """Wait until the node has cached ``inserts`` answers (it keeps them in the background)."""
    cache = node.cache
    assert cache is not None
    await wait_until_async(lambda: cache.counters.inserts >= inserts, 60, "the answer cached")


def test_a_repeat_is_served_from_cache_at_the_cache_rate_and_settles_to_the_wei(
    devnet: Devnet,
) -> None:
    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(4)
        try:
            session = await open_session(devnet, client, node)
            assert session.cache_rate_bps == 2500
            fresh = session.chat(QUESTION, max_tokens=12, temperature=0, cache="own")
            text = await fresh.collect()
            assert fresh.cache_hit is None and fresh.billed_tokens == (
                fresh.prompt_tokens + len(fresh.token_ids)
            )
            await kept(node, 1)
            again = session.chat(QUESTION, max_tokens=12, temperature=0, cache="own")
            assert await again.collect() == text
            hit = again.cache_hit
            assert hit is not None and hit.similarity == 1.0 and hit.rate_bps == 2500
            assert again.token_ids == fresh.token_ids
            assert again.billed_tokens == cached_tokens(
                again.prompt_tokens, len(again.token_ids), 2500
            )
            assert again.billed_tokens < fresh.billed_tokens
            # Without opting in, the same prompt is generated afresh and billed in full.
            plain = session.chat(QUESTION, max_tokens=12, temperature=0)
            await plain.collect()
            assert plain.cache_hit is None and plain.billed_tokens == fresh.billed_tokens
            total = fresh.billed_tokens + again.billed_tokens + plain.billed_tokens
            assert session.vouched == total
            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None and settlement.tokens == total
            assert settlement.host_amount + settlement.fee == total * PRICE // 1000
            assert settlement.host_amount + settlement.fee + settlement.refund == DEPOSIT
            assert node.http is not None
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(node.http.url + "/metrics", timeout=10)).text
            assert "fabstir_cache_exact_hits 1.0" in metrics
            assert "fabstir_cache_lookup_seconds_count 2.0" in metrics
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_private_answers_stay_private_and_near_misses_are_generated(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(2)
        alice, bob = devnet.client(4), devnet.client(5)
        try:
            mine = await open_session(devnet, alice, node)
            theirs = await open_session(devnet, bob, node)
            private = [{"role": "user", "content": "convert int to str"}]
            shared = [{"role": "user", "content": "Who painted the Mona Lisa?"}]
            await mine.chat(private, max_tokens=8, temperature=0, cache="own").collect()
            await mine.chat(
                shared, max_tokens=8, temperature=0, cache="own", cache_share=True
            ).collect()
            await kept(node, 2)
            # Bob asks the very same questions: Alice's private answer is not his to see.
            answer = theirs.chat(private, max_tokens=8, temperature=0, cache="shared")
            await answer.collect()
            assert answer.cache_hit is None
            answer = theirs.chat(shared, max_tokens=8, temperature=0, cache="shared")
            await answer.collect()
            assert answer.cache_hit is not None and answer.cache_hit.similarity == 1.0
            # A near miss of a cached question (an embedding scores it 0.99) is generated.
            near = [{"role": "user", "content": "convert str to int"}]
            answer = mine.chat(near, max_tokens=8, temperature=0, cache="own")
            await answer.collect()
            assert answer.cache_hit is None
            assert node.cache is not None
            assert node.cache.counters.guard_rejections.get("direction") == 1
            # A paraphrase of a cached question is served, with its similarity.
            para = [{"role": "user", "content": "Who was the painter of the Mona Lisa?"}]
            answer = mine.chat(para, max_tokens=8, temperature=0, cache="own")
            await answer.collect()
            assert answer.cache_hit is not None and 0.9 < answer.cache_hit.similarity < 1.0
            for session in (mine, theirs):
                settled = await session.close(wait_settlement=SETTLE_TIMEOUT)
                assert settled is not None and settled.tokens == session.vouched
        finally:
            await alice.close()
            await bob.close()
            await node.stop()

    run(main())


def test_the_cache_survives_a_restart(devnet: Devnet) -> None:
    async def main() -> None:
        client = devnet.client(4)
        node = await devnet.start_node(3)
        try:
            session = await open_session(devnet, client, node)
            await session.chat(QUESTION, max_tokens=8, temperature=0, cache="own").collect()
            await kept(node, 1)
            await session.close()
        finally:
            await node.stop()
        node = await devnet.start_node(3)  # the same data directory
        try:
            assert node.cache is not None and len(node.cache.entries) == 1
            session = await open_session(devnet, client, node)
            answer = session.chat(QUESTION, max_tokens=8, temperature=0, cache="own")
            await answer.collect()
            assert answer.cache_hit is not None
            await session.close()
        finally:
            await client.close()
            await node.stop()

    run(main())


class BillsCacheHitsInFull(SessionService):
    """A host that serves from its cache but claims more than its rate (an injected fault)."""

    async def _send(self, framed: FramedStream, message: Message) -> None:
        if isinstance(message, CacheHit):
            self.hit = True
        elif isinstance(message, Token) and getattr(self, "hit", False):
            self.hit = False
            message = replace(message, tokens=message.tokens + 10)
        await framed.send(message)


class RaisesItsCacheRate(SessionService):
    """A host that announces a higher cache rate at the hit than it offered (a fault)."""

    async def _send(self, framed: FramedStream, message: Message) -> None:
        if isinstance(message, CacheHit):
            message = replace(message, rate_bps=message.rate_bps * 2)
        await framed.send(message)


@pytest.mark.parametrize(("index", "liar"), [(6, BillsCacheHitsInFull), (7, RaisesItsCacheRate)])
def test_a_host_that_overbills_a_cached_answer_is_caught(
    devnet: Devnet, index: int, liar: type[SessionService]
) -> None:
    async def main() -> None:
        node = await devnet.start_node(index, service=liar)
        client = devnet.client(4)
        try:
            session = await open_session(devnet, client, node)
            fresh = session.chat(QUESTION, max_tokens=8, temperature=0, cache="own")
            await fresh.collect()
            await kept(node, 1)
            with pytest.raises(HostError) as caught:
                await session.chat(QUESTION, max_tokens=8, temperature=0, cache="own").collect()
            assert caught.value.code == "bad_accounting"
            assert session.vouched <= fresh.billed_tokens + cached_tokens(
                fresh.prompt_tokens, len(fresh.token_ids), 2500
            )
            await asyncio.to_thread(
                assert_settled_for, client.contracts, session.id, session.vouched
            )
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_run_mcp_serves_the_nodes_shared_answers(devnet: Devnet) -> None:
    """``run --mcp``: an LLM tool finds a client's shared answer through the MCP client."""
    import httpx2
    from mcp.client import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    port = free_port()

    async def main() -> None:
        node = await devnet.start_node(8, mcp=True, mcp_port=port)
        client = devnet.client(4)
        try:
            session = await open_session(devnet, client, node)
            await session.chat(
                QUESTION, max_tokens=6, temperature=0, cache="own", cache_share=True
            ).collect()
            await kept(node, 1)
            async with (
                httpx2.AsyncClient(timeout=30) as http,
                streamable_http_client(f"http://127.0.0.1:{port}/mcp", http_client=http) as (
                    read,
                    write,
                ),
                ClientSession(read, write) as mcp,
            ):
                await mcp.initialize()
                result = await mcp.call_tool("search_cache", {"query": "France's capital city"})
                assert not result.is_error, result.content
                assert result.structured_content is not None
                [found] = result.structured_content["results"]
                assert found["question"] == QUESTION[0]["content"]
            await session.close()
        finally:
            await client.close()
            await node.stop()

    run(main())
