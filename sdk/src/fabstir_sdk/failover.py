"""Answers that survive their host: mid-stream failover to the next host.

If the host dies or stalls, the session with it is closed (its vouchers already cover every
token it delivered, so it settles for exactly those), a session opens with the next host, and
the answer continues from the token ids already received: all hosts run the same pinned model
file, so the continuation starts exactly where the first host stopped. The caller's iterator
sees no repeated and no missing text, and no generated token is paid for twice (the second
host bills the earlier tokens as its prompt, since it must read them).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from fabstir_sdk.errors import HostError
from fabstir_sdk.protocol import CacheHit, Usage
from fabstir_sdk.session import Session

if TYPE_CHECKING:
    from fabstir_sdk.client import FabstirClient

STALL_TIMEOUT_S = 5.0


class FailoverChat:
    """Async iterator of text; ``usage`` (summed over hosts) and ``hosts`` when exhausted."""

    def __init__(
        self,
        client: FabstirClient,
        model: str | bytes,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int,
        session: Session | None,
        open_kwargs: dict[str, Any],
        params: dict[str, Any],
        max_failovers: int = 2,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> None:
        self.client = client
        self.model = model
        self.messages = [dict(m) for m in messages]
        self.max_tokens = max_tokens
        self.session = session
        self.open_kwargs = open_kwargs
        self.params = params
        self.max_failovers = max_failovers
        self.stall_timeout = stall_timeout
        self.text = ""
        self.token_ids: list[int] = []
        self.usage: Usage | None = None
        self.cache_hit: CacheHit | None = None  # the last host served it from its cache
        self.finish_reason: str | None = None
        self.hosts: list[str] = []
        self.gaps_s: list[float] = []  # time without text across each failover
        self._gen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> FailoverChat:
        return self

    async def __anext__(self) -> str:
        if self._gen is None:
            self._gen = self._run()
        return await self._gen.__anext__()

    async def aclose(self) -> None:
        """Stop early: the host in use stops and is paid for what it delivered."""
        if self._gen is not None:
            await self._gen.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        failed: set[str] = set()
        prompt_tokens = completion_tokens = 0
        last_text_at: float | None = None
        for attempt in range(self.max_failovers + 1):
            if self.session is None or self.session.closed:
                self.session = await self.client.open_session(
                    self.model, exclude=failed, **self.open_kwargs
                )
            session = self.session
            session.stall_timeout = self.stall_timeout
            self.hosts.append(session.host)
            before = list(self.token_ids)  # what earlier hosts delivered
            billed_before = session.billed
            answer = session.chat(
                self.messages,
                max_tokens=self.max_tokens - len(before),
                prefix_ids=before,
                **self.params,
            )
            first = True
            try:
                async for piece in answer:
                    if first and attempt and last_text_at is not None:
                        self.gaps_s.append(time.perf_counter() - last_text_at)
                    first = False
                    self.token_ids = before + answer.token_ids
                    self.text += piece
                    last_text_at = time.perf_counter()
                    yield piece
            except HostError as exc:
                if not exc.retryable or attempt == self.max_failovers:
                    raise
                self.token_ids = before + answer.token_ids
                # What this host billed, as we counted it (nothing if it never started).
                delivered = len(answer.token_ids)
                completion_tokens += delivered
                prompt_tokens += max(0, session.billed - billed_before - delivered)
                failed.add(session.host)
                with contextlib.suppress(Exception):
                    await session.close()  # it settles for what our vouchers cover
                self.session = None
                continue
            finally:
                await answer.aclose()  # left early: the host stops and is paid what it sent
            self.token_ids = before + answer.token_ids
            assert answer.usage is not None
            self.usage = Usage(
                prompt_tokens + answer.usage.prompt_tokens,
                completion_tokens + answer.usage.completion_tokens,
            )
            self.finish_reason = answer.finish_reason
            self.cache_hit = answer.cache_hit
            return
