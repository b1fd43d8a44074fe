"""`make demo`: a real model answers through a paid peer-to-peer session on a local chain.

Starts the devnet (Anvil, contracts, SmolLM2 registered, two hosts at different prices), opens
a session with the cheapest host from a fresh client wallet, streams the answer token by
token, closes the session, waits for the host to settle and withdraw, and prints a receipt
that adds up to the wei. Every process it started is stopped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from fabstir_devtools.network import LocalNetwork

from devnet import CLIENT_ACCOUNT, MODEL, demo_network, start_hosts, step

QUESTION = "Which city is the capital of France?"
DEPOSIT = 10**15  # 0.001 ETH


async def chat(net: LocalNetwork, question: str) -> int:
    client = net.client(CLIENT_ACCOUNT)
    try:
        hosts = await client.find_hosts(MODEL.name)
        for h in hosts:
            step(f"found host {h.address} at {h.price} wei/1000 tokens (stake {h.stake})")
        t0 = time.perf_counter()
        session = await client.open_session(MODEL.name, deposit=DEPOSIT)
        step(
            f"session {session.id} open with {session.host} in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms (deposit {DEPOSIT} wei)"
        )
        print(f"\n\033[1mQ:\033[0m {question}\n\033[1mA:\033[0m ", end="", flush=True)
        start = time.perf_counter()
        first = None
        answer = session.chat(
            [{"role": "user", "content": question}], max_tokens=128, temperature=0
        )
        async for piece in answer:
            first = first or time.perf_counter() - start
            print(piece, end="", flush=True)
        elapsed = time.perf_counter() - start
        print("\n", flush=True)
        assert answer.usage is not None
        settlement = await session.close(wait_settlement=60)
        if settlement is None:
            print("the host did not settle within 60 s", file=sys.stderr)
            return 1
        step("host settled on-chain")
        withdraw = await asyncio.to_thread(net.host_of(session.host).cli, "withdraw", "--json")
        withdrawn = "yes" if withdraw.returncode == 0 else f"no ({withdraw.stderr.strip()})"
        total = settlement.host_amount + settlement.fee + settlement.refund
        gas = client.contracts.sender.gas_used.get("open", 0) if client.contracts.sender else 0
        [stored] = await client.results(session.id)  # sealed in the host's store, by id
        kept = "yes, paid for exactly" if stored.paid and stored.text == answer.text else "NO"
        rows = [
            ("host", session.host),
            ("model", f"{MODEL.name} (sha256 {MODEL.sha256[:12]}...)"),
            (
                "tokens billed",
                f"{settlement.tokens} ({answer.usage.prompt_tokens} prompt + "
                f"{answer.usage.completion_tokens} completion)",
            ),
            ("price", f"{session.price} wei / 1000 tokens"),
            ("host earnings", f"{settlement.host_amount} wei (withdrawn: {withdrawn})"),
            ("treasury fee", f"{settlement.fee} wei"),
            ("refund", f"{settlement.refund} wei"),
            ("deposit", f"{DEPOSIT} wei = {total} {'OK' if total == DEPOSIT else 'MISMATCH'}"),
            ("gas used", f"open {gas} (client), settle {settlement.gas_used} (host)"),
            ("stored answer", f"{kept} (`fabstir session result {session.id}`)"),
            (
                "speed",
                f"{answer.usage.completion_tokens / elapsed:.1f} tokens/s, first token "
                f"after {(first or 0) * 1000:.0f} ms",
            ),
        ]
        print("\033[1mReceipt\033[0m")
        for key, value in rows:
            print(f"  {key:<15} {value}")
        return 0 if total == DEPOSIT else 1
    finally:
        await client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-p", "--prompt", default=QUESTION)
    args = parser.parse_args()
    try:
        with demo_network() as net:
            start_hosts(net)
            return asyncio.run(chat(net, args.prompt))
    except KeyboardInterrupt:
        print("\ninterrupted: stopped everything", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
