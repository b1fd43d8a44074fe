"""`make devnet`: a local Fabstir network, kept running until Ctrl-C.

Anvil, the contracts, SmolLM2-135M-Instruct registered with its real sha256, the example
proven model (a credit-risk scorer in ONNX, its EZKL circuit pinned with a test SRS), and two
host nodes (different prices) that stake, register, serve sessions and take jobs; the launcher
is ``fabstir_devtools.network`` (shared with `make demo`, the benches and the tests).
"""

from __future__ import annotations

import sys
from pathlib import Path

from fabstir_devtools.chain import anvil_account
from fabstir_devtools.network import LocalNetwork, ModelSpec
from fabstir_devtools.wait import wait_until
from fabstir_node.prover import example_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelSpec.builtin("smollm2-135m-instruct")
HOST_PRICES = (2 * 10**12, 3 * 10**12)  # wei per 1000 tokens: host 1 is the cheaper one
CLIENT_ACCOUNT = 4


def step(message: str) -> None:
    print(f"\033[36m==>\033[0m {message}", file=sys.stderr, flush=True)


def demo_network(*, port: int | None = None) -> LocalNetwork:
    """The demo's network (not started: use it as a context manager). The manifest goes to
    deployments/31337.json, where the CLIs' `local` profile finds it."""
    return LocalNetwork(
        ROOT / ".devnet",
        port=port,
        deployment_path=ROOT / "deployments" / "31337.json",
        models=[MODEL],
        log=step,
    )


def start_hosts(net: LocalNetwork) -> None:
    for index, price in enumerate(HOST_PRICES, start=1):
        net.start_host(index, price=price)


def main() -> int:
    try:
        with demo_network(port=8545) as net:
            step("building the example proven model's circuit (EZKL, ~20 s)")
            proven = net.add_proven_model(example_model(), "fabstir/examples", "risk_scorer.onnx")
            start_hosts(net)
            key = anvil_account(CLIENT_ACCOUNT).key.hex()
            print(
                f"""
Fabstir devnet is running (Ctrl-C stops everything).
  RPC         {net.anvil.url}
  deployment  {net.deployment_path}
  a funded client key (Anvil account {CLIENT_ACCOUNT}, for local use only):
    export FABSTIR_RPC_URL={net.anvil.url} FABSTIR_KEY={key}
  then:
    .venv/bin/fabstir hosts --model {MODEL.name}
    .venv/bin/fabstir chat --model {MODEL.name} -p "Which city is the capital of France?"
    .venv/bin/fabstir proxy --port 8080   # any OpenAI client: base_url=http://127.0.0.1:8080/v1
    .venv/bin/fabstir batch submit batch.jsonl --model {MODEL.name} --max-payment 100000000000000
    .venv/bin/fabstir prove submit rows.json --model 0x{proven.hex()} --max-payment 100000000000000
""",
                file=sys.stderr,
                flush=True,
            )
            # Until Ctrl-C, or until a host dies (its log says why).
            dead = wait_until(
                lambda: [h for h in net.hosts if not h.running],
                timeout=float("inf"),
                what="a host to exit",
                interval=1,
            )
            for host in dead:
                step(f"host {host.index} exited; its log: {host.log}")
            return 1
    except KeyboardInterrupt:
        step("stopped everything")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
