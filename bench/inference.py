"""Raw llama-cpp-python vs the node's streaming HTTP API: same model, same machine, same run.

Both generate the same greedy answer (so the same tokens) from SmolLM2-135M-Instruct; runs
alternate raw/API to spread machine noise evenly. Prints tokens/s, time to first token and
the ratios (median and best run: this shared machine is noisy, see the spread between them).
Targets: API >= 0.95 x raw tokens/s, <= +30 ms time to first token.

    .venv/bin/python bench/inference.py [--runs 5] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import dataclass

import httpx

from fabstir_devtools.network import ApiProcess
from fabstir_node.config import default_threads

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]


@dataclass
class Run:
    tokens: int
    ttft_s: float
    total_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.total_s

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.tokens - 1) / (self.total_s - self.ttft_s)


def raw_run(llm: object, max_tokens: int) -> Run:
    start = time.perf_counter()
    first, tokens = None, 0
    for chunk in llm.create_chat_completion(  # type: ignore[attr-defined]
        messages=MESSAGES, temperature=0, max_tokens=max_tokens, stream=True
    ):
        if chunk["choices"][0]["delta"].get("content"):
            tokens += 1
            first = first or time.perf_counter() - start
    return Run(tokens, first or 0.0, time.perf_counter() - start)


def api_run(client: httpx.Client, url: str, max_tokens: int) -> Run:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    first, tokens = None, 0
    with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            elif data["choices"] and data["choices"][0]["delta"].get("content"):
                first = first or time.perf_counter() - start
    return Run(tokens, first or 0.0, time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()

    from llama_cpp import Llama

    from fabstir_node.models import resolve

    path = resolve(MODEL).path
    llm = Llama(
        model_path=str(path),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    node = ApiProcess(
        "--model", MODEL, "--port", "0", "--threads", str(args.threads), "--n-ctx", "2048"
    )
    node.start()
    url = node.url
    raw: list[Run] = []
    api: list[Run] = []
    try:
        with httpx.Client(timeout=300) as client:
            raw_run(llm, 16)  # warm both paths up
            api_run(client, url, 16)
            for i in range(args.runs):  # alternate who goes first, to cancel drift
                if i % 2:
                    api.append(api_run(client, url, args.max_tokens))
                raw.append(raw_run(llm, args.max_tokens))
                if not i % 2:
                    api.append(api_run(client, url, args.max_tokens))
    finally:
        node.stop()

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    rows = [
        ("tokens per answer", "tokens", "{:.0f}"),
        ("tokens/s (end to end)", "tokens_per_s", "{:.1f}"),
        ("tokens/s (decode)", "decode_tokens_per_s", "{:.1f}"),
        ("time to first token ms", "ttft_s", None),
    ]
    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} threads, {args.runs} runs, median")
    print(f"{'':<26}{'raw':>12}{'node API':>12}{'ratio':>10}")
    for label, attr, fmt in rows:
        r, a = med(raw, attr), med(api, attr)
        if fmt is None:
            print(f"{label:<26}{r * 1000:>12.1f}{a * 1000:>12.1f}{(a - r) * 1000:>+9.1f}ms")
        else:
            print(f"{label:<26}{fmt.format(r):>12}{fmt.format(a):>12}{a / r:>10.3f}")
    best = max(r.tokens_per_s for r in api) / max(r.tokens_per_s for r in raw)
    print(
        f"{'tokens/s, best run':<26}{max(r.tokens_per_s for r in raw):>12.1f}"
        f"{max(r.tokens_per_s for r in api):>12.1f}{best:>10.3f}"
    )
    ratio = med(api, "tokens_per_s") / med(raw, "tokens_per_s")
    ttft = (med(api, "ttft_s") - med(raw, "ttft_s")) * 1000
    print(
        f"targets: tokens/s ratio >= 0.95 ({'met' if ratio >= 0.95 else 'MISSED'}), "
        f"TTFT +<= 30 ms ({'met' if ttft <= 30 else 'MISSED'})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
