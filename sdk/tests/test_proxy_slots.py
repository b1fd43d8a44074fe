"""The paying proxy keeps one session per model, for a bounded number of models: a request
for one more model retires the least recently used idle session, or gets 429 when all are
answering (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from fabstir_sdk import proxy as proxy_module
from fabstir_sdk.proxy import PayingProxy


class FakeSession:
    closed = False

    def __init__(self) -> None:
        self.closes = 0

    async def close(self) -> None:
        self.closes += 1


def test_model_slots_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(proxy_module, "MAX_SLOTS", 2)

    async def main() -> None:
        proxy = PayingProxy(cast(Any, None), deposit=1)
        first, second = proxy._slot("a"), proxy._slot("b")
        assert first is not None and second is not None
        await first.lock.acquire()
        await second.lock.acquire()
        server = TestServer(proxy.app, host="127.0.0.1")
        await server.start_server()
        try:
            async with aiohttp.ClientSession() as http:
                body = {"model": "c", "messages": [{"role": "user", "content": "hi"}]}
                async with http.post(server.make_url("/v1/chat/completions"), json=body) as r:
                    assert r.status == 429, await r.text()
            assert set(proxy._slots) == {"a", "b"}
            # One model goes idle: the next new model takes its slot, and its session closes.
            idle = FakeSession()
            second.session = cast(Any, idle)
            second.lock.release()
            third = proxy._slot("c")
            assert third is not None and set(proxy._slots) == {"a", "c"}
            await asyncio.gather(*proxy._retiring)
            assert idle.closes == 1
        finally:
            first.lock.release()
            await server.close()

    asyncio.run(main())
