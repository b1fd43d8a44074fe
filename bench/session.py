"""Raw llama-cpp-python vs a paid SDK session over libp2p: same model, same machine, one run.

The demo's network (`fabstir_devtools.network`: a fresh Anvil with the contracts,
SmolLM2-135M-Instruct registered with its real sha256, host nodes in their own processes, as in
production) and an SDK client. Prints tokens/s of each and the
ratio (target >= 0.95), time to first token of each (target: <= +30 ms once the session is
open), the one-time cost of opening a session, and the gas of the session's lifecycle.

    .venv/bin/python bench/session.py [--runs 5] [--max-tokens 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "bench"), str(ROOT / "scripts")]
from fabstir_node.config import default_threads  # noqa: E402

from devnet import CLIENT_ACCOUNT, MODEL, demo_network, start_hosts  # noqa: E402
from inference import MESSAGES, Run, raw_run  # noqa: E402


async def session_run(session: object, max_tokens: int) -> Run:
    start = time.perf_counter()
    first = None
    answer = session.chat(MESSAGES, max_tokens=max_tokens, temperature=0)  # type: ignore[attr-defined]
    async for _ in answer:
        first = first or time.perf_counter() - start
    assert answer.usage is not None
    return Run(answer.usage.completion_tokens, first or 0.0, time.perf_counter() - start)


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args()

    from llama_cpp import Llama

    from fabstir_node.models import resolve

    llm = Llama(
        model_path=str(resolve(MODEL.name).path),
        n_ctx=2048,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        verbose=False,
    )
    # The hosts run as their own processes, with the same threads and a checkpoint in the run.
    os.environ.update(FABSTIR_N_THREADS=str(args.threads), FABSTIR_CHECKPOINT_EVERY="300")
    with demo_network() as net:
        start_hosts(net)
        client = net.client(CLIENT_ACCOUNT)
        try:
            t0 = time.perf_counter()
            session = await client.open_session(MODEL.name, deposit=10**16)
            open_s = time.perf_counter() - t0
            raw_run(llm, 16)
            await session_run(session, 16)
            raw: list[Run] = []
            paid: list[Run] = []
            for i in range(args.runs):
                if i % 2:
                    paid.append(await session_run(session, args.max_tokens))
                raw.append(raw_run(llm, args.max_tokens))
                if not i % 2:
                    paid.append(await session_run(session, args.max_tokens))
            settlement = await session.close(wait_settlement=60)
            gas = dict(client.contracts.sender.gas_used) if client.contracts.sender else {}
        finally:
            await client.close()

    def med(runs: list[Run], attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in runs)

    print(f"SmolLM2-135M-Instruct Q4_1, {args.threads} thread(s), {args.runs} runs, median")
    print(f"{'':<28}{'raw':>12}{'paid session':>14}{'ratio':>10}")
    for label, attr in (("tokens per answer", "tokens"), ("tokens/s (end to end)", "tokens_per_s")):
        r, p = med(raw, attr), med(paid, attr)
        print(f"{label:<28}{r:>12.1f}{p:>14.1f}{p / r:>10.3f}")
    r, p = med(raw, "ttft_s") * 1000, med(paid, "ttft_s") * 1000
    print(f"{'time to first token ms':<28}{r:>12.1f}{p:>14.1f}{p - r:>+9.1f}ms")
    print(f"{'open session (once) ms':<28}{'':>12}{open_s * 1000:>14.1f}")
    ratio = med(paid, "tokens_per_s") / med(raw, "tokens_per_s")
    print(
        f"targets: ratio >= 0.95 ({'met' if ratio >= 0.95 else 'MISSED'}), TTFT <= +30 ms "
        f"({'met' if p - r <= 30 else 'MISSED'})"
    )
    if settlement is not None:
        print(
            f"settled {settlement.tokens} tokens: host {settlement.host_amount} wei, "
            f"fee {settlement.fee} wei, refund {settlement.refund} wei "
            f"(sum {settlement.host_amount + settlement.fee + settlement.refund} = deposit "
            f"{10**16})"
        )
        print(f"gas: open {gas.get('open')} (client), settle {settlement.gas_used} (host)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
