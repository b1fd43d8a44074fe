"""Whole-system fixtures: a fresh Anvil with the protocol deployed, the tiny test model
registered with its real sha256, host nodes and SDK clients on real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fabstir_node.config import NodeConfig
from fabstir_node.keys import create_keys, load_keys
from fabstir_node.models import sha256_file
from fabstir_node.runtime import HostNode, served_model
from fabstir_node.testing import write_tiny_gguf
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import Deployment
from fabstir_sdk.contracts.client import SessionStatus
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.devnet import (
    Anvil,
    DeployParams,
    add_model,
    anvil_account,
    deploy_protocol,
    mint_fab,
)
from fabstir_sdk.p2p import peer_id_bytes

T = TypeVar("T")
PRICE = 2 * 10**12  # wei per 1000 tokens
HOST_ACCOUNTS = (1, 2, 3)
CLIENT_ACCOUNTS = (4, 5, 6, 7)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Devnet:
    anvil: Anvil
    deployment: Deployment
    deployment_path: Path
    owner: TransactionSender
    model_path: Path
    model_sha: str
    root: Path
    _nodes: list[HostNode] = field(default_factory=list)

    def config(self, name: str, **overrides: Any) -> NodeConfig:
        values: dict[str, Any] = {
            "model": str(self.model_path),
            "model_sha256": self.model_sha,
            "port": 0,
            "rpc_url": self.anvil.url,
            "deployment": self.deployment_path,
            "data_dir": self.root / name,
            "n_ctx": 512,
            "n_threads": 1,
            "price": PRICE,
            "idle_timeout": 30.0,
        }
        values.update(overrides)
        return NodeConfig(**values).validate()

    async def start_node(self, index: int, *, register: bool = True, **overrides: Any) -> HostNode:
        """A host node for Anvil account ``index``, staked and registered."""
        config = self.config(f"node{index}", **overrides)
        keys_dir = config.data_dir / "keys"
        if not keys_dir.exists():
            create_keys(config.data_dir, anvil_account(index).key.hex())
        node = HostNode(config, load_keys(config.data_dir))
        await node.start()
        self._nodes.append(node)
        if register:
            await asyncio.to_thread(self.register, node)
        return node

    def register(self, node: HostNode) -> None:
        assert node.sessions is not None
        chain = node.sessions.chain  # the node's own sender: one nonce counter per key
        if chain.contracts.host(chain.address).active:
            return
        stake = self.deployment.params["minStake"]
        mint_fab(self.owner, self.deployment, chain.address, stake)
        assert node.prepared and node.network
        chain.register(
            peer_id_bytes(node.network.host.peer_id),
            node.network.host.addrs,
            {"test": True},
            [served_model(node.prepared, node.config)],
            stake,
        )

    def client(self, index: int = 4) -> FabstirClient:
        return FabstirClient(self.anvil.url, anvil_account(index).key.hex(), self.deployment)


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
def devnet(anvil: Anvil, tmp_path_factory: pytest.TempPathFactory) -> Devnet:
    root = tmp_path_factory.mktemp("devnet")
    owner = TransactionSender(anvil.w3, anvil_account(0))
    deployment = deploy_protocol(owner, DeployParams(dispute_window=600))
    path = root / "deployment.json"
    deployment.save(path)
    model = write_tiny_gguf(root / "tiny.gguf")
    sha = sha256_file(model)
    add_model(owner, deployment, "local", model.name, sha)
    return Devnet(anvil, deployment, path, owner, model, sha, root)


def assert_settled_for(contracts: Any, session_id: int, vouched: int) -> None:
    """Wait (up to 10 s) for the host to settle ``session_id``; it must pay exactly ``vouched``."""
    for _ in range(100):
        if contracts.session(session_id).status == SessionStatus.SETTLED:
            break
        time.sleep(0.1)
    settlement = contracts.settlement_of(session_id)
    assert settlement is not None and settlement.tokens == vouched
    assert settlement.host_amount + settlement.fee == vouched * PRICE // 1000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """``fabstir-node run`` as a real subprocess, killable with SIGKILL."""

    def __init__(
        self,
        devnet: Devnet,
        index: int,
        p2p_port: int,
        model: str | None = None,
        sha256: str | None = None,
        **env: str,
    ) -> None:
        self.devnet = devnet
        self.model = model or str(devnet.model_path)
        self.sha256 = sha256 or devnet.model_sha
        self.index = index
        self.data_dir = devnet.root / f"proc{index}"
        self.p2p_port = p2p_port
        self.env = {**os.environ, "FABSTIR_N_CTX": "512", "FABSTIR_N_THREADS": "1", **env}
        self.proc: subprocess.Popen[str] | None = None

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fabstir_node", *args, *self.flags(args[0])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
        )

    def flags(self, command: str) -> list[str]:
        d = self.devnet
        common = [
            "--rpc-url",
            d.anvil.url,
            "--deployment",
            str(d.deployment_path),
            "--data-dir",
            str(self.data_dir),
        ]
        model = [
            "--model",
            self.model,
            "--sha256",
            self.sha256,
            "--price",
            str(PRICE),
            "--p2p-listen",
            f"/ip4/127.0.0.1/tcp/{self.p2p_port}",
        ]
        if command == "init":
            return ["--data-dir", str(self.data_dir)]
        if command in ("register", "run"):
            return common + model + (["--port", "0"] if command == "run" else [])
        return common

    def setup(self) -> None:
        key = anvil_account(self.index).key.hex()
        assert self.cli("init", "--private-key", key).returncode == 0
        mint_fab(
            self.devnet.owner,
            self.devnet.deployment,
            anvil_account(self.index).address,
            self.devnet.deployment.params["minStake"],
        )
        result = self.cli("register", "--json")
        assert result.returncode == 0, result.stderr

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir_node", "run", *self.flags("run")],
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if line.strip() == "ready":
                # Keep draining: a full stderr pipe would stall the node.
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()
                return
        raise AssertionError(f"node exited with {self.proc.wait()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)
