"""A local Fabstir network: Anvil, the contracts, SmolLM2-135M-Instruct registered with its
real sha256, and two host nodes (different prices) that stake, register and serve.

    python scripts/devnet.py          # `make devnet`: start it and keep it running (Ctrl-C)

``scripts/demo.py`` (`make demo`) uses the same network for a one-shot paid chat.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from fabstir_sdk.contracts import Deployment
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.devnet import (
    Anvil,
    DeployParams,
    add_model,
    anvil_account,
    deploy_protocol,
    mint_fab,
)
from fabstir_sdk.models import CATALOG

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".devnet"
MODEL = CATALOG["smollm2-135m-instruct"]
HOST_PRICES = (2 * 10**12, 3 * 10**12)  # wei per 1000 tokens: host 1 is the cheaper one
CLIENT_ACCOUNT = 4


def step(message: str) -> None:
    print(f"\033[36m==>\033[0m {message}", file=sys.stderr, flush=True)


def _copy(stream: Any, path: Path) -> None:
    """Keep draining a node's stderr into its log file (a full pipe would stall the node)."""
    with path.open("a") as out:
        for line in stream:
            out.write(line)
            out.flush()


class LocalNetwork:
    """Starts everything on enter and stops every process it started on exit (Ctrl-C too)."""

    def __init__(self, port: int | None = 8545) -> None:
        self.port = port
        self.anvil: Anvil | None = None
        self.deployment: Deployment | None = None
        self.deployment_path = ROOT / "deployments" / "31337.json"
        self.nodes: list[subprocess.Popen[str]] = []
        self.node_env: list[dict[str, str]] = []
        self.node_info: list[dict[str, str]] = []

    def __enter__(self) -> LocalNetwork:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        t0 = time.monotonic()
        try:
            self.anvil = Anvil(port=self.port)
        except RuntimeError:  # 8545 taken: any free port will do
            self.anvil = Anvil()
        step(f"Anvil running at {self.anvil.url}")
        owner = TransactionSender(self.anvil.w3, anvil_account(0))
        self.deployment = deploy_protocol(owner, DeployParams())
        self.deployment.save(self.deployment_path)
        step(f"contracts deployed, manifest {self.deployment_path.relative_to(ROOT)}")
        add_model(owner, self.deployment, MODEL.repo, MODEL.file, MODEL.sha256)
        step(f"{MODEL.name} registered in the ModelRegistry (sha256 {MODEL.sha256[:16]}...)")
        for i, price in enumerate(HOST_PRICES, start=1):
            mint_fab(
                owner, self.deployment, anvil_account(i).address, self.deployment.params["minStake"]
            )
            self._start_host(i, price)
        step(f"network up in {time.monotonic() - t0:.1f} s")

    def _node(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "fabstir_node", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"fabstir-node {args[0]} failed: {result.stderr.strip()}")
        return result

    def _start_host(self, index: int, price: int) -> None:
        assert self.anvil is not None
        data = STATE / f"host{index}"
        if data.exists():
            shutil.rmtree(data)
        env = {
            **os.environ,
            "FABSTIR_DATA_DIR": str(data),
            "FABSTIR_RPC_URL": self.anvil.url,
            "FABSTIR_DEPLOYMENT": str(self.deployment_path),
            "FABSTIR_MODEL": MODEL.name,
            "FABSTIR_PRICE": str(price),
        }
        self.node_env.append(env)
        self._node("init", "--private-key", anvil_account(index).key.hex(), env=env)
        self._node("register", env=env)
        proc, info = self._run(env)
        self.nodes.append(proc)
        self.node_info.append(info)
        step(
            f"host {index} serving at {price} wei/1000 tokens: {info.get('address')} "
            f"(peer {info.get('peer id', '')[:16]}..., api {info.get('api', '').split()[0]}, "
            f"log {Path(info['log']).relative_to(ROOT)})"
        )

    def _run(self, env: dict[str, str]) -> tuple[subprocess.Popen[str], dict[str, str]]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir_node", "run", "--port", "0"],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        info: dict[str, str] = {}
        assert proc.stderr is not None
        for line in proc.stderr:
            if line.strip() == "ready":
                log = Path(env["FABSTIR_DATA_DIR"]) / "node.log"
                threading.Thread(target=_copy, args=(proc.stderr, log), daemon=True).start()
                info["log"] = str(log)
                return proc, info
            info[line[:10].strip()] = line[11:].strip()  # "key       value" lines
        raise RuntimeError(f"host exited with {proc.wait()}")

    def kill_host(self, position: int) -> None:
        """SIGKILL a host (fault injection: no chance to settle or say goodbye)."""
        self.nodes[position].kill()
        self.nodes[position].wait()

    def restart_host(self, position: int) -> None:
        self.nodes[position], self.node_info[position] = self._run(self.node_env[position])

    def stop(self) -> None:
        for proc in self.nodes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.nodes:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.nodes.clear()
        if self.anvil is not None:
            self.anvil.stop()
            self.anvil = None


def main() -> int:
    with LocalNetwork() as net:
        assert net.anvil is not None
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
""",
            file=sys.stderr,
            flush=True,
        )
        try:
            while all(p.poll() is None for p in net.nodes):
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
