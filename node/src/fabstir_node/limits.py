"""Rate limits for what strangers can ask of a host before they have paid anything.

A token bucket per remote peer id (``open`` requests cost a chain RPC each), with a bounded
number of buckets: the least recently used one is forgotten first, so a flood of fresh peer
ids costs memory for at most :attr:`PeerRateLimiter.max_peers` buckets. A global bucket caps
what all peers together may ask, whatever the number of identities they make up.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; :meth:`take` spends one."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class PeerRateLimiter:
    """Allow each peer ``burst`` requests at once and ``rate`` a second after that, and all
    peers together ``global_rate`` a second (bursts of ``global_burst``)."""

    def __init__(
        self,
        rate: float,
        burst: float,
        global_rate: float,
        global_burst: float,
        max_peers: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.max_peers = max_peers
        self._clock = clock
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()
        self._all = TokenBucket(global_rate, global_burst, clock)
        self.refused = 0

    def allow(self, peer: str) -> bool:
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = self._peers[peer] = TokenBucket(self.rate, self.burst, self._clock)
            while len(self._peers) > self.max_peers:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        allowed = bucket.take() and self._all.take()
        if not allowed:
            self.refused += 1
        return allowed
