"""Wait on an observable condition instead of sleeping for a guessed time.

The timeouts are generous on purpose (a busy 2-core machine running llama.cpp, Anvil and
several nodes at once is slow); a healthy run returns as soon as the condition holds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Seconds to wait for something that normally takes well under one.
DEFAULT_TIMEOUT = 60.0


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the condition",
    *,
    interval: float = 0.05,
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Raises ``TimeoutError`` naming ``what`` (and the last value seen) after ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what} (last: {value!r})")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the condition",
    *,
    interval: float = 0.05,
) -> T:
    """``wait_until`` for asyncio code: the predicate may be a coroutine function, and the
    event loop keeps running between polls."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:g} s for {what} (last: {value!r})")
        await asyncio.sleep(interval)
