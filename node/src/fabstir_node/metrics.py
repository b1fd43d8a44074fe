"""Prometheus metrics of a node, in their own registry (tests run several nodes per process)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from fabstir_node.inference import Engine, Finished

if TYPE_CHECKING:
    from fabstir_node.audits import AuditService
    from fabstir_node.cache.semantic import SemanticCache
    from fabstir_node.heartbeat import Heartbeat
    from fabstir_node.jobs import JobRunner
    from fabstir_node.storage import NodeStorage

LOOKUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25)
#: The near-miss guard's rules (:mod:`fabstir_node.cache.guard`), each counted apart.
GUARD_RULES = ("numbers", "negation", "units", "entities", "direction", "opposites")
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CONTENT_TYPE = CONTENT_TYPE_LATEST


def _as_float(read: Callable[[], float]) -> Callable[[], float]:
    return lambda: float(read())


def _rejections(counts: dict[str, int], rule: str) -> Callable[[], float]:
    return lambda: float(counts.get(rule, 0))


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

    def watch_engine(self, engine: Engine) -> None:
        """The engine's slots, KV cache and hardware, read when scraped."""
        figures: dict[str, tuple[str, Callable[[], float]]] = {
            "fabstir_parallel_slots": ("Generations decoded together", lambda: engine.parallel),
            "fabstir_sequences_running": ("Generations in the batch now", lambda: engine.running),
            "fabstir_kv_cached_conversations": (
                "Finished conversations kept in the KV cache for their next turn",
                lambda: engine.cached_conversations,
            ),
            "fabstir_prompt_tokens_cached": (
                "Prompt tokens found in the KV cache, not evaluated again",
                lambda: engine.prompt_tokens_cached,
            ),
            "fabstir_prompt_tokens_evaluated": (
                "Prompt tokens evaluated",
                lambda: engine.prompt_tokens_evaluated,
            ),
            "fabstir_gpu_layers": (
                "Model layers offloaded to a GPU (0: CPU only)",
                lambda: engine.gpu_layers,
            ),
            "fabstir_warmup_seconds": (
                "The warm-up run before the node reported ready",
                lambda: engine.warmup_s or 0.0,
            ),
        }
        for name, (help_text, read) in figures.items():
            Gauge(name, help_text, registry=self.registry).set_function(_as_float(read))

    def watch_storage(self, storage: NodeStorage) -> None:
        """Storage figures, read when scraped: the store's size and Bitswap's traffic."""
        r = self.registry
        bitswap, counters = storage.bitswap.counters, storage.counters
        figures: dict[str, tuple[str, Callable[[], float]]] = {
            "fabstir_storage_blocks": ("Blocks in the store", lambda: storage.stats().blocks),
            "fabstir_storage_bytes": (
                "Bytes of blocks in the store",
                lambda: storage.stats().bytes,
            ),
            "fabstir_storage_root_revision": (
                "Revision of the signed root",
                lambda: storage.store.revision,
            ),
            "fabstir_storage_results_stored": (
                "Sealed answers stored",
                lambda: counters.results_stored,
            ),
            "fabstir_storage_results_failed": (
                "Answers that could not be stored",
                lambda: counters.results_failed,
            ),
            "fabstir_bitswap_blocks_sent": (
                "Blocks served over Bitswap",
                lambda: bitswap.blocks_sent,
            ),
            "fabstir_bitswap_bytes_sent": ("Bytes served over Bitswap", lambda: bitswap.bytes_sent),
            "fabstir_bitswap_blocks_received": (
                "Blocks fetched over Bitswap",
                lambda: bitswap.blocks_received,
            ),
            "fabstir_bitswap_bytes_received": (
                "Bytes fetched over Bitswap",
                lambda: bitswap.bytes_received,
            ),
            "fabstir_bitswap_peers_cut": (
                "Peers cut off for breaking Bitswap's rules",
                lambda: bitswap.peers_cut,
            ),
        }
        for name, (help_text, read) in figures.items():
            Gauge(name, help_text, registry=r).set_function(_as_float(read))

    def watch_cache(self, cache: SemanticCache) -> None:
        """The answer cache's counters, and its lookup latency as a histogram."""
        r = self.registry
        c = cache.counters
        figures: dict[str, tuple[str, Callable[[], float]]] = {
            "fabstir_cache_lookups": ("Cache lookups", lambda: c.lookups),
            "fabstir_cache_exact_hits": ("Hits on an exact repeat", lambda: c.exact_hits),
            "fabstir_cache_semantic_hits": ("Hits on a paraphrase", lambda: c.semantic_hits),
            "fabstir_cache_misses": ("Lookups that found nothing to serve", lambda: c.misses),
            "fabstir_cache_ambiguous": (
                "Misses because two cached questions matched about as well",
                lambda: c.ambiguous,
            ),
            "fabstir_cache_inserts": ("Answers kept", lambda: c.inserts),
            "fabstir_cache_entries": ("Entries in the cache", lambda: len(cache.entries)),
        }
        for name, (help_text, read) in figures.items():
            Gauge(name, help_text, registry=r).set_function(_as_float(read))
        rejections = Gauge(
            "fabstir_cache_guard_rejections",
            "Near misses the guard refused, by rule",
            ["rule"],
            registry=r,
        )
        for rule in GUARD_RULES:
            rejections.labels(rule).set_function(_rejections(c.guard_rejections, rule))
        latency = Histogram(
            "fabstir_cache_lookup_seconds",
            "Time a cache lookup adds before the answer starts (embedding and search)",
            buckets=LOOKUP_BUCKETS,
            registry=r,
        )
        cache.observe = latency.observe

    def watch_jobs(self, jobs: JobRunner) -> None:
        """The JobBoard follower's counters: claims, completions, refused proofs."""
        c = jobs.counters
        figures: dict[str, tuple[str, Callable[[], float]]] = {
            "fabstir_jobs_claimed": ("Jobs claimed on the board", lambda: c.claimed),
            "fabstir_jobs_completed": ("Jobs completed (or proven and paid)", lambda: c.completed),
            "fabstir_jobs_proofs_rejected": (
                "Jobs whose proofs were refused",
                lambda: c.proofs_rejected,
            ),
            "fabstir_jobs_refused": ("Jobs this host would not take", lambda: c.refused),
            "fabstir_jobs_failed": ("Job runs that failed", lambda: c.failed),
            "fabstir_jobs_reorgs": ("Chain reorganisations seen under the board", lambda: c.reorgs),
            "fabstir_jobs_block": ("Last block of board events read", lambda: jobs.state.block),
        }
        for name, (help_text, read) in figures.items():
            Gauge(name, help_text, registry=self.registry).set_function(_as_float(read))

    def watch_audits(self, audits: AuditService | None, heartbeat: Heartbeat | None) -> None:
        """Audits this host sold (and how many failed) and the heartbeats it sent."""
        figures: dict[str, tuple[str, Callable[[], float]]] = {}
        if audits is not None:
            figures["fabstir_audits_run"] = ("Audits run for clients", lambda: audits.audited)
            figures["fabstir_audits_failed"] = (
                "Audited answers that failed",
                lambda: audits.failed,
            )
        if heartbeat is not None:
            figures["fabstir_heartbeats_sent"] = (
                "On-chain heartbeats sent",
                lambda: heartbeat.beats,
            )
        for name, (help_text, read) in figures.items():
            Gauge(name, help_text, registry=self.registry).set_function(_as_float(read))

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
