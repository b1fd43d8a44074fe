"""Whole-system fixtures: a fresh Anvil with the protocol deployed and the tiny test model
registered with its real sha256 (the shared launcher, ``fabstir_devtools.network``), host
nodes in-process or as ``fabstir-node run`` subprocesses, SDK clients, real 127.0.0.1 sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fabstir_devtools.chain import Anvil, anvil_account, free_port
from fabstir_devtools.network import DEFAULT_PRICE, LocalNetwork, ModelSpec
from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_devtools.wait import wait_until
from fabstir_node.config import NodeConfig
from fabstir_node.jobs import JobRunner
from fabstir_node.keys import create_keys, load_keys
from fabstir_node.runtime import HostNode
from fabstir_node.sessions import SessionService
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts.client import SessionStatus
from fabstir_sdk.p2p import peer_id_bytes

T = TypeVar("T")
PRICE = DEFAULT_PRICE  # wei per 1000 tokens
HOST_ACCOUNTS = (1, 2, 3)
CLIENT_ACCOUNTS = (4, 5, 6, 7)
#: Host processes are small: a 512-token context and one thread each, on a 2-core machine.
NODE_ENV = {"FABSTIR_N_CTX": "512", "FABSTIR_N_THREADS": "1"}
#: Seconds to wait for a settlement: one transaction, but the machine may be busy.
SETTLE_TIMEOUT = 120.0

__all__ = ["free_port"]  # for the tests: a port for a proxy or a host to listen on


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Devnet(LocalNetwork):
    """A module's network: ``host``/``start_host`` give ``fabstir-node run`` subprocesses
    (the shared launcher), ``start_node`` an in-process ``HostNode`` to look inside."""

    def __init__(self, root: Path, model: ModelSpec) -> None:
        super().__init__(root, models=[model], price=PRICE, node_env=NODE_ENV)
        self.model = model

    @property
    def model_path(self) -> Path:
        return Path(self.model.name)

    @property
    def model_sha(self) -> str:
        return self.model.sha256

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

    async def start_node(
        self,
        index: int,
        *,
        register: bool = True,
        service: type[SessionService] = SessionService,
        jobs_runner: type[JobRunner] = JobRunner,
        **overrides: Any,
    ) -> HostNode:
        """An in-process host node for Anvil account ``index``, staked and registered;
        ``service`` and ``jobs_runner`` inject a deliberately faulty host."""
        config = self.config(f"node{index}", **overrides)
        keys_dir = config.data_dir / "keys"
        if not keys_dir.exists():
            create_keys(config.data_dir, anvil_account(index).key.hex())
        node = HostNode(config, load_keys(config.data_dir), service, jobs_runner)
        await node.start()
        if register:
            await asyncio.to_thread(self.register, node)
        return node

    def register(self, node: HostNode) -> None:
        assert node.sessions is not None
        chain = node.sessions.chain  # the node's own sender: one nonce counter per key
        if chain.contracts.host(chain.address).active:
            return
        stake = self.deployment.params["minStake"]
        self.fund_stake(chain.address, stake)
        assert node.prepared and node.network
        chain.register(
            peer_id_bytes(node.network.host.peer_id),
            node.network.host.addrs,
            {"test": True},
            node.served,
            stake,
        )

    def client(self, index: int = 4, **kwargs: Any) -> FabstirClient:
        return super().client(index, **kwargs)


@pytest.fixture(scope="session", autouse=True)
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Clients (in-process and CLI subprocesses) cache tokenizers in a private directory."""
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(scope="module")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="module")
def devnet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devnet]:
    root = tmp_path_factory.mktemp("devnet")
    model = ModelSpec.gguf(write_tiny_gguf(root / "tiny.gguf"))
    with Devnet(root, model) as net:  # stops every host process it started, also on failure
        yield net


def assert_settled_for(contracts: Any, session_id: int, vouched: int) -> None:
    """Wait for the host to settle ``session_id``; it must pay exactly ``vouched``."""
    wait_until(
        lambda: contracts.session(session_id).status == SessionStatus.SETTLED,
        SETTLE_TIMEOUT,
        f"the host to settle session {session_id}",
        interval=0.2,
    )
    settlement = contracts.settlement_of(session_id)
    assert settlement is not None and settlement.tokens == vouched
    assert settlement.host_amount + settlement.fee == vouched * PRICE // 1000


@contextlib.contextmanager
def node_in_thread(devnet: Devnet, index: int) -> Iterator[None]:
    """An in-process host node on its own event loop in a thread, as if in its own process
    (for tests of the blocking SDK wrappers, which run their own loop)."""
    ready, stop = threading.Event(), threading.Event()

    def host() -> None:
        async def main() -> None:
            node = await devnet.start_node(index)
            ready.set()
            await asyncio.to_thread(stop.wait)
            await node.stop()

        asyncio.run(main())

    thread = threading.Thread(target=host)
    thread.start()
    try:
        assert ready.wait(300), "the host did not start"
        yield
    finally:
        stop.set()
        thread.join(60)


async def wait_for_voucher(node: HostNode, session_id: int, tokens: int) -> None:
    """Wait until ``node`` has journaled the client's voucher for ``tokens``."""
    journal = node.journal
    assert journal is not None

    def holds_it() -> bool:
        journaled = journal.get(session_id)
        best = journaled.best if journaled else None
        return best is not None and best.cumulative_tokens == tokens

    await asyncio.to_thread(wait_until, holds_it, 60, f"the host to hold a {tokens}-token voucher")


def fabstir(devnet: Devnet, *args: str, key_index: int = 5) -> subprocess.CompletedProcess[str]:
    """The ``fabstir`` CLI as a subprocess, paying from Anvil account ``key_index``."""
    env = {
        **os.environ,
        "FABSTIR_RPC_URL": devnet.anvil.url,
        "FABSTIR_DEPLOYMENT": str(devnet.deployment_path),
        "FABSTIR_KEY": anvil_account(key_index).key.hex(),
    }
    return subprocess.run(
        [sys.executable, "-m", "fabstir_sdk", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def fabstir_node(
    devnet: Devnet, *args: str, data_dir: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """A ``fabstir-node`` chain command as a subprocess, on ``devnet``, for ``data_dir``."""
    chain = ["--rpc-url", devnet.anvil.url, "--deployment", str(devnet.deployment_path)]
    return subprocess.run(
        [sys.executable, "-m", "fabstir_node", *args, *chain, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def node_status(devnet: Devnet, data_dir: Path) -> dict[str, Any]:
    """``fabstir-node status --json`` for the node whose data directory is ``data_dir``."""
    result = fabstir_node(devnet, "status", "--json", data_dir=data_dir)
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))
