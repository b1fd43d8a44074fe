"""The vector index at scale: 1,000,000 clustered 384-dimension vectors.

Built as the node builds it (chunks of 50,000, migrating from HNSW to IVF when due), then:
build time, resident memory, search latency p50/p99 over single-vector queries (goal p99
< 5 ms), recall@10 against exact search (goal >= 0.95), and, in the same run, exact search
with numpy on the same vectors as the baseline.

Embedding a million prompts takes ~2.5 h on one thread here (DESIGN §9), so the vectors are
synthetic: points around 2,000 random centres, normalised, with enough noise that the nearest
neighbours are not trivial.

    .venv/bin/python bench/vectors.py [--quick] [--n N] [--nprobe K] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import faiss
import numpy as np

from fabstir_node.vectors import IndexParams, VectorIndex

D = 384


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def clustered(n: int, centres: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    points = centres[rng.integers(0, len(centres), n)]
    points = points + 0.8 * rng.standard_normal((n, D)).astype(np.float32)
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(samples, q) * 1000)


def run(n: int, nprobe: int, queries: int = 1000, recall_queries: int = 200) -> dict[str, Any]:
    faiss.omp_set_num_threads(2)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, D)).astype(np.float32)
    data = np.empty((n, D), dtype=np.float32)
    for at in range(0, n, 100_000):
        data[at : at + 100_000] = clustered(min(100_000, n - at), centres, rng)
    before = rss_mib()
    index = VectorIndex(D, IndexParams(nprobe=nprobe))
    started = time.perf_counter()
    for at in range(0, n, 50_000):
        index.add(np.arange(at, min(n, at + 50_000)), data[at : at + 50_000])
        if index.needs_migration:
            index.migrate()
    build_s = time.perf_counter() - started
    memory = rss_mib() - before
    asked = clustered(queries, centres, rng)
    latency = []
    for q in asked:
        t = time.perf_counter()
        index.search(q[None, :], 10)
        latency.append(time.perf_counter() - t)
    exact_latency = []
    hits = 0.0
    for q in asked[:recall_queries]:
        t = time.perf_counter()
        exact = np.argpartition(-(data @ q), 10)[:10]
        exact_latency.append(time.perf_counter() - t)
        found = index.search(q[None, :], 10)[1][0]
        hits += len(set(exact.tolist()) & set(found.tolist())) / 10
    p50 = percentile_ms(latency, 50)
    exact_p50 = percentile_ms(exact_latency, 50)
    return {
        "vectors": n,
        "nprobe": nprobe,
        "in_ivf": int(index.bulk.ntotal) if index.bulk is not None else 0,
        "in_hnsw": int(index.recent.ntotal),
        "build_s": build_s,
        "memory_mib": memory,
        "search_ms_p50": p50,
        "search_ms_p99": percentile_ms(latency, 99),
        "recall_at_10": hits / recall_queries,
        "exact_numpy_ms_p50": exact_p50,
        "speedup_over_exact": exact_p50 / p50,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100,000 vectors")
    parser.add_argument("--n", type=int, default=1_000_000, help="vectors (default 1,000,000)")
    parser.add_argument("--nprobe", type=int, default=IndexParams().nprobe)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    figures = run(100_000 if args.quick else args.n, args.nprobe)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    f = figures
    print(f"{f['vectors']:,} vectors x {D}: {f['in_ivf']:,} in the IVF, {f['in_hnsw']:,} in HNSW")
    print(f"  build {f['build_s']:.0f} s, +{f['memory_mib']:.0f} MiB resident")
    print(
        f"  search p50 {f['search_ms_p50']:.2f} ms, p99 {f['search_ms_p99']:.2f} ms "
        f"(goal < 5 ms), recall@10 {f['recall_at_10']:.3f} (goal >= 0.95), nprobe {f['nprobe']}"
    )
    print(
        f"  exact search with numpy: {f['exact_numpy_ms_p50']:.1f} ms p50; the index is "
        f"{f['speedup_over_exact']:.0f}x faster"
    )


if __name__ == "__main__":
    main()
