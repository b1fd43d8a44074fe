"""Prometheus metrics of a node, in their own registry (tests run several nodes per process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fabstir_node.inference import Finished

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class NodeMetrics:
    def __init__(self, queue_depth: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "fabstir_requests", "Requests served", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("fabstir_prompt_tokens", "Prompt tokens read", registry=r)
        self.completion_tokens = Counter(
            "fabstir_completion_tokens", "Tokens generated", registry=r
        )
        self.tokens_per_second = Gauge(
            "fabstir_tokens_per_second", "Generation speed of the last request", registry=r
        )
        self.ttft = Histogram(
            "fabstir_time_to_first_token_seconds",
            "Time to first token, queueing included",
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.errors = Counter("fabstir_errors", "Errors by kind", ["kind"], registry=r)
        self.queue_depth = Gauge("fabstir_queue_depth", "Requests running or waiting", registry=r)
        self.queue_depth.set_function(lambda: float(queue_depth()))

    def observe(self, finished: Finished) -> None:
        usage = finished.usage
        self.prompt_tokens.inc(usage.prompt_tokens)
        self.completion_tokens.inc(usage.completion_tokens)
        if finished.generation_s > 0 and usage.completion_tokens:
            self.tokens_per_second.set(usage.completion_tokens / finished.generation_s)
        if finished.time_to_first_token_s is not None:
            self.ttft.observe(finished.time_to_first_token_s)

    def render(self) -> bytes:
        return generate_latest(self.registry)
