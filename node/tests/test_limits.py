"""The per-peer token bucket that guards `open` (the chain RPC behind it)."""

from __future__ import annotations

from fabstir_node.limits import PeerRateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    clock.now += 100  # refills to the burst, no further
    assert sum(bucket.take() for _ in range(10)) == 3


def test_peers_have_their_own_buckets_under_a_global_one() -> None:
    clock = Clock()
    limiter = PeerRateLimiter(rate=1, burst=2, global_rate=1, global_burst=5, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert [limiter.allow("b") for _ in range(3)] == [True, True, False]
    assert limiter.allow("c")  # the fifth request the whole host takes at once
    assert not limiter.allow("d")  # the global bucket is empty now, whoever asks
    assert limiter.refused == 3


def test_forgotten_peers_are_bounded() -> None:
    limiter = PeerRateLimiter(rate=1, burst=1, global_rate=10**9, global_burst=10**9, max_peers=4)
    for i in range(100):
        limiter.allow(f"peer{i}")
    assert len(limiter._peers) == 4
