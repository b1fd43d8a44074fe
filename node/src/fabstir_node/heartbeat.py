"""The node's on-chain heartbeat: one ``ReputationSystem.heartbeat`` per epoch while it serves.

A beat goes out only while the engine is loaded, from the serving process itself, so a crashed
node stops beating. What a beat proves (the host's key and this process are up, not that peers
reach it) and how it can be gamed is documented on the contract; clients add their own dial
results when they rank hosts. At Base's fees a beat an hour costs a few cents a month.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fabstir_sdk.contracts.reputation import Reputation

log = logging.getLogger(__name__)

#: Seconds before a failed beat is tried again (not registered yet, RPC down).
RETRY_S = 60.0


class Heartbeat:
    def __init__(self, reputation: Reputation, alive: Callable[[], bool]) -> None:
        self.reputation = reputation
        self.alive = alive
        self.last_epoch: int | None = None  # the epoch of our last beat
        self.beats = 0  # epochs we beat in since start (sent, or found sent before a restart)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one beat at a time (the loop, an operator, a test)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def beat(self) -> bool:
        """Beat now unless we already did this epoch; False when it could not be sent."""
        async with self._lock:
            try:
                epoch = await asyncio.to_thread(self.reputation.current_epoch)
                if epoch == self.last_epoch:
                    return True
                address = self.reputation.contracts.address
                if not await asyncio.to_thread(self.reputation.beat_this_epoch, address):
                    await asyncio.to_thread(self.reputation.heartbeat)  # (not before a restart)
            except Exception as exc:  # not registered yet, or the RPC is down: try later
                log.info("heartbeat not sent: %s", exc)
                return False
            self.last_epoch = epoch
            self.beats += 1
            return True

    async def _run(self) -> None:
        while True:
            sent = self.alive() and await self.beat()
            await asyncio.sleep(await self._next_epoch_in() if sent else RETRY_S)

    async def _next_epoch_in(self) -> float:
        """Seconds until the next epoch starts on the chain's clock (plus a little slack)."""
        epoch = self.reputation.epoch
        try:
            now = await asyncio.to_thread(self.reputation.contracts.latest_timestamp)
        except Exception:
            return RETRY_S
        return float(epoch - now % epoch) + 5.0
