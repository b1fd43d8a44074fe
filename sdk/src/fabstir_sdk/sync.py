"""Blocking wrappers for scripts and notebooks: the async client runs on its own event loop in
a background thread. They raise exactly what the async API raises (:class:`FabstirError`).

    with SyncClient(rpc_url, key, "deployments/31337.json") as client:
        session = client.open_session("smollm2-135m-instruct")
        for piece in session.chat([{"role": "user", "content": "Hi"}], max_tokens=32):
            print(piece, end="")
        print(session.close(wait_settlement=30))
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

from fabstir_sdk.client import FabstirClient, SessionResult
from fabstir_sdk.contracts.client import Settlement
from fabstir_sdk.discovery import HostInfo
from fabstir_sdk.errors import map_errors
from fabstir_sdk.protocol import Usage
from fabstir_sdk.session import Session

T = TypeVar("T")


class _Loop:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fabstir-sdk", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        with map_errors():
            return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


class SyncSession:
    def __init__(self, session: Session, loop: _Loop) -> None:
        self.session = session
        self._loop = loop
        self.usage: Usage | None = None

    @property
    def id(self) -> int:
        return self.session.id

    def chat(self, messages: Sequence[dict[str, Any]], **params: Any) -> Iterator[str]:
        """Yield the answer's text pieces; ``usage`` is set when it ends."""
        answer = self.session.chat(messages, **params)

        async def step() -> str | None:
            return await anext(answer, None)

        try:
            while (piece := self._loop.run(step())) is not None:
                yield piece
        finally:
            # Leaving the loop early (break, an exception) cancels the answer and pays for
            # what arrived, so the next chat on this session works.
            self._loop.run(answer.aclose())
        self.usage = answer.usage

    def close(self, wait_settlement: float = 0) -> Settlement | None:
        return self._loop.run(self.session.close(wait_settlement))


class SyncClient:
    def __init__(self, rpc_url: str, private_key: str, deployment: Any, **kwargs: Any) -> None:
        self._loop = _Loop()

        async def make() -> FabstirClient:
            return await FabstirClient(rpc_url, private_key, deployment, **kwargs).start()

        try:
            self.client = self._loop.run(make())
        except BaseException:
            self._loop.stop()
            raise

    def find_hosts(self, model: str | bytes, **kwargs: Any) -> list[HostInfo]:
        """Hosts serving ``model``, best first (``token=`` prices them in an ERC20)."""
        return self._loop.run(self.client.find_hosts(model, **kwargs))

    def open_session(self, model: str | bytes, **kwargs: Any) -> SyncSession:
        """:meth:`FabstirClient.open_session`: ``host=``, ``deposit=``, ``token=``..."""
        return SyncSession(self._loop.run(self.client.open_session(model, **kwargs)), self._loop)

    def results(self, session_id: int) -> list[SessionResult]:
        """:meth:`FabstirClient.results`: a session's stored answers, checked."""
        return self._loop.run(self.client.results(session_id))

    def close(self) -> None:
        self._loop.run(self.client.close())
        self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
