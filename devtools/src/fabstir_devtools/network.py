"""One launcher for a local Fabstir network, shared by `make demo`, `make devnet`, `make gas`,
the benches and the integration tests.

    with LocalNetwork(models=[ModelSpec.builtin("smollm2-135m-instruct")]) as net:
        net.start_host(1, price=2 * 10**12)          # init, stake, register, `fabstir-node run`
        client = net.client(4)                       # a funded FabstirClient

On enter it starts Anvil, deploys the protocol (and the test tokens), writes the deployment
manifest and registers the models; hosts are staked ``fabstir-node run`` subprocesses, ready
once they print ``ready``, with their output drained into ``<data dir>/node.log``. On exit
(Ctrl-C and SIGTERM too) it stops every process it started: hosts first, with SIGTERM so they
settle while the chain is still up, then Anvil.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any

from fabstir_devtools.chain import (
    Anvil,
    DeployParams,
    add_model,
    anvil_account,
    deploy_protocol,
    free_port,
    mint_fab,
)
from fabstir_devtools.wait import wait_until
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import Deployment
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.models import CATALOG, model_id
from fabstir_sdk.tokenizer import tokenizer_sha256

#: The repository root (this file is devtools/src/fabstir_devtools/network.py).
ROOT = Path(__file__).resolve().parents[3]
#: Wei per 1000 tokens when a host is given no price.
DEFAULT_PRICE = 2 * 10**12
#: Seconds a node may take to be ready: loading and hashing a model on a busy 2-core machine.
START_TIMEOUT = 300.0
#: Seconds a stopped node gets to settle and exit before it is killed.
STOP_TIMEOUT = 30.0
#: Variables that name a client's key: never passed on to a host.
_CLIENT_ENV = ("FABSTIR_KEY", "FABSTIR_KEY_FILE")
#: The ``key       value`` lines ``fabstir-node run`` prints before ``ready``.
_INFO_KEYS = ("address", "peer id", "listening", "model", "model id", "price", "api", "journal")


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class ModelSpec:
    """A model hosts can serve: what a node is told (``FABSTIR_MODEL``: a built-in name or a
    GGUF path) and what the ModelRegistry pins (repo, file, sha256 of the file and of its
    tokenizer)."""

    name: str
    repo: str
    file: str
    sha256: str
    tokenizer_sha256: str

    @classmethod
    def builtin(cls, name: str) -> ModelSpec:
        """A model of the catalogue, as the SDK and the node know it."""
        model = CATALOG[name]
        return cls(model.name, model.repo, model.file, model.sha256, model.tokenizer_sha256)

    @classmethod
    def gguf(cls, path: Path) -> ModelSpec:
        """A GGUF file given by path; the node registers it as ``local/<file name>``."""
        from fabstir_node.models import sha256_file

        tokenizer = tokenizer_sha256(path).hex()
        return cls(str(path), "local", path.name, sha256_file(path), tokenizer)

    @property
    def model_id(self) -> bytes:
        return model_id(self.repo, self.file)


class NodeProcess:
    """A ``fabstir-node`` subprocess (any command) that is ready once one of its output lines
    satisfies ``ready``. A thread keeps draining its output (a full pipe would stall the node)
    into ``log`` when given; the last lines are kept for error messages."""

    def __init__(
        self,
        args: Sequence[str],
        *,
        ready: Callable[[str], bool],
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        name: str = "fabstir-node",
    ) -> None:
        self.args = list(args)
        self.env = dict(os.environ if env is None else env)
        self.log = log
        self.name = name
        self._is_ready_line = ready
        self.proc: subprocess.Popen[str] | None = None
        self.startup: list[str] = []  # the lines up to and including the ready line
        self.recent: collections.deque[str] = collections.deque(maxlen=200)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the process and wait until it is ready (or fail with its last output)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        self.startup = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fabstir_node", *self.args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            # Its own session: a Ctrl-C reaches only the launcher, which stops the node with
            # SIGTERM while the chain is still up.
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        self._reader = threading.Thread(
            target=self._drain, args=(self.proc.stdout,), name=f"{self.name} output", daemon=True
        )
        self._reader.start()
        proc = self.proc
        try:
            wait_until(
                lambda: self._ready.is_set() or proc.poll() is not None,
                timeout,
                f"{self.name} to be ready",
            )
        except BaseException:
            self.kill()
            raise
        if not self._ready.is_set():
            self._reader.join(5)
            raise RuntimeError(
                f"{self.name} exited with {proc.returncode} before it was ready:\n"
                + "".join(self.recent)[-4000:]
            )

    def _drain(self, stream: IO[str]) -> None:
        out = self.log.open("a") if self.log is not None else None
        try:
            for line in stream:
                self.recent.append(line)
                if out is not None:
                    out.write(line)
                    out.flush()
                if not self._ready.is_set():
                    self.startup.append(line)
                    if self._is_ready_line(line):
                        self._ready.set()
        finally:
            if out is not None:
                out.close()

    def terminate(self) -> None:
        """Ask the process to stop (SIGTERM) without waiting."""
        if self.running:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; returns the exit status."""
        if self.proc is None:
            return 0
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL (fault injection: no chance to settle or say goodbye)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)


class ApiProcess(NodeProcess):
    """``fabstir-node serve``: the HTTP API only, no chain; ``url`` once started."""

    _URL = re.compile(r"serving .* at (http://\S+)/v1")

    def __init__(
        self, *args: str, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> None:
        super().__init__(
            ["serve", *args], ready=lambda line: bool(self._URL.search(line)), env=env, log=log
        )

    @property
    def url(self) -> str:
        for line in self.startup:
            if match := self._URL.search(line):
                return match.group(1)
        raise RuntimeError("fabstir-node serve has not said where it serves")


class HostProcess(NodeProcess):
    """A host of a ``LocalNetwork``: ``fabstir-node run`` for Anvil account ``index``, set up
    with the real CLI (``init``, ``register``) and configured by ``FABSTIR_*`` variables, so
    ``cli(...)`` runs any other command (``status``, ``withdraw``...) as this host."""

    def __init__(
        self,
        net: LocalNetwork,
        index: int,
        *,
        model: ModelSpec,
        price: int,
        data_dir: Path,
        p2p_port: int,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.net = net
        self.index = index
        self.account = anvil_account(index)
        self.model = model
        self.price = price
        self.data_dir = data_dir
        self.p2p_port = p2p_port
        super().__init__(
            ["run"],
            ready=lambda line: line.strip() == "ready",
            env={
                # A client's key in the caller's environment is not the host's.
                **{k: v for k, v in os.environ.items() if k not in _CLIENT_ENV},
                "FABSTIR_DATA_DIR": str(data_dir),
                "FABSTIR_RPC_URL": net.anvil.url,
                "FABSTIR_DEPLOYMENT": str(net.deployment_path),
                "FABSTIR_MODEL": model.name,
                "FABSTIR_MODEL_SHA256": model.sha256,
                "FABSTIR_PRICE": str(price),
                "FABSTIR_P2P_LISTEN": f"/ip4/127.0.0.1/tcp/{p2p_port}",
                "FABSTIR_PORT": "0",
                **(env or {}),
            },
            log=data_dir / "node.log",
            name=f"host {index}",
        )

    @property
    def address(self) -> str:
        return str(self.account.address)

    @property
    def info(self) -> dict[str, str]:
        """What ``run`` printed before ``ready``: address, peer id, listening, api..."""
        info: dict[str, str] = {}
        for line in self.startup:
            key, value = line[:10].strip(), line[11:].strip()
            if key in _INFO_KEYS:
                info[key] = value
        return info

    def cli(
        self, *args: str, timeout: float = 300, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``fabstir-node ARGS`` as this host (same data dir, chain and model)."""
        return subprocess.run(
            [sys.executable, "-m", "fabstir_node", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            input=stdin,
        )

    def _check(self, result: subprocess.CompletedProcess[str], what: str) -> None:
        if result.returncode != 0:
            raise RuntimeError(
                f"fabstir-node {what} ({self.name}) exited with {result.returncode}: "
                f"{result.stderr.strip()}"
            )

    def setup(self) -> None:
        """Keys, stake tokens and registration, through the real CLI."""
        # The key goes in on stdin: on a command line every user could read it with `ps`.
        self._check(self.cli("init", "--key-stdin", stdin=self.account.key.hex()), "init")
        self.net.fund_stake(self.address)
        self._check(self.cli("register", "--json"), "register")


class LocalNetwork:
    """Anvil, the contracts, registered models and staked host processes; a context manager
    that stops everything it started on exit (Ctrl-C and SIGTERM too).

    ``root`` holds the hosts' data directories and the manifest (a temporary directory,
    removed on stop, when not given); ``deployment_path`` overrides where the manifest goes.
    ``port`` asks for an Anvil port (any free one if taken); ``node_env`` is added to every
    host's environment; ``log`` receives one line per step.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        port: int | None = None,
        deployment_path: Path | None = None,
        params: DeployParams | None = None,
        models: Sequence[ModelSpec] = (),
        price: int = DEFAULT_PRICE,
        node_env: Mapping[str, str] | None = None,
        log: Callable[[str], None] = _quiet,
    ) -> None:
        self._root = root
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.port = port
        self._deployment_path = deployment_path
        self.params = params or DeployParams()
        self.models = list(models)
        self.price = price
        self.node_env = dict(node_env or {})
        self.log = log
        self._anvil: Anvil | None = None
        self._deployment: Deployment | None = None
        self._owner: TransactionSender | None = None
        self.hosts: list[HostProcess] = []
        self.proven_models: dict[bytes, Path] = {}  # model id -> circuit bundle
        self._previous_sigterm: Any = None

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalNetwork:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
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
        try:
            self.stop()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                self._previous_sigterm = None

    def start(self) -> None:
        """Anvil, the protocol deployed (manifest written) and the models registered."""
        if self._root is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fabstir-devnet-")
            self._root = Path(self._tmp.name)
        self._root.mkdir(parents=True, exist_ok=True)
        if self.port is not None:
            try:
                self._anvil = Anvil(port=self.port)
            except RuntimeError:  # the port is taken: any free one will do
                self._anvil = Anvil()
        else:
            self._anvil = Anvil()
        self.log(f"Anvil running at {self._anvil.url}")
        self._owner = TransactionSender(self._anvil.w3, anvil_account(0))
        self._deployment = deploy_protocol(self._owner, self.params)
        self._deployment.save(self.deployment_path)
        self.log(f"contracts deployed, manifest {_show(self.deployment_path)}")
        for model in self.models:
            self.add_model(model)

    def stop(self) -> None:
        """Stop every host (SIGTERM together, then wait; SIGKILL after a timeout), then Anvil."""
        try:
            for host in self.hosts:
                host.terminate()
            for host in self.hosts:
                host.stop()
        except BaseException:  # interrupted while waiting: don't leave any behind
            for host in self.hosts:
                host.kill()
            raise
        finally:
            self.hosts.clear()
            if self._anvil is not None:
                self._anvil.stop()
                self._anvil = None
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None

    # ----------------------------------------------------------------- state

    @property
    def root(self) -> Path:
        if self._root is None:
            raise RuntimeError("the network is not started")
        return self._root

    @property
    def deployment_path(self) -> Path:
        return self._deployment_path or self.root / "deployment.json"

    @property
    def anvil(self) -> Anvil:
        if self._anvil is None:
            raise RuntimeError("the network is not started")
        return self._anvil

    @property
    def deployment(self) -> Deployment:
        if self._deployment is None:
            raise RuntimeError("the network is not started")
        return self._deployment

    @property
    def owner(self) -> TransactionSender:
        """The deployer and owner of every contract (Anvil account 0)."""
        if self._owner is None:
            raise RuntimeError("the network is not started")
        return self._owner

    # ----------------------------------------------------------------- chain

    def add_model(self, model: ModelSpec) -> bytes:
        """Register ``model`` in the ModelRegistry with its sha256; returns its id."""
        if model not in self.models:
            self.models.append(model)
        mid = add_model(
            self.owner,
            self.deployment,
            model.repo,
            model.file,
            model.sha256,
            model.tokenizer_sha256,
        )
        self.log(f"{model.file} registered in the ModelRegistry (sha256 {model.sha256[:16]}...)")
        return mid

    def add_proven_model(self, onnx: Path, repo: str, file: str) -> bytes:
        """Build ``onnx``'s circuit bundle (EZKL, a test SRS: local chains only), deploy its
        verifier and pin it in the ModelRegistry; hosts started from now on prove its jobs.
        Returns the model id."""
        from fabstir_devtools.proof_models import (
            build_bundle,
            register_proven_model,
            sample_rows,
        )

        bundle = build_bundle(
            onnx, self.root / "proofs" / onnx.stem, calibration_rows=sample_rows(32)
        )
        model_id = register_proven_model(self.owner, self.deployment, bundle, repo, file)
        self.proven_models[model_id] = bundle
        self.log(f"{file} registered as a proven model (verifier deployed, circuit pinned)")
        return model_id

    def fund_stake(self, address: str, amount: int | None = None) -> None:
        """Mint stake tokens (the minimum stake unless told) to ``address``."""
        mint_fab(self.owner, self.deployment, address, amount or self.params.min_stake)

    def client(self, index: int, **kwargs: Any) -> FabstirClient:
        """An SDK client paying from Anvil account ``index`` (call ``close()`` when done)."""
        key = anvil_account(index).key.hex()
        return FabstirClient(self.anvil.url, key, self.deployment, **kwargs)

    # ----------------------------------------------------------------- hosts

    def host(
        self,
        index: int,
        *,
        model: ModelSpec | None = None,
        price: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> HostProcess:
        """A host for Anvil account ``index`` with a fresh data directory, not yet set up or
        started; stopped with the network."""
        if model is None:
            if not self.models:
                raise ValueError("no model registered: pass model= or LocalNetwork(models=...)")
            model = self.models[0]
        data_dir = self.root / f"host{index}"
        if data_dir.exists():
            shutil.rmtree(data_dir)
        host = HostProcess(
            self,
            index,
            model=model,
            price=self.price if price is None else price,
            data_dir=data_dir,
            p2p_port=free_port(),  # fixed for the host's life: a restart keeps its address
            env={**self.node_env, **self._proven_env(), **(env or {})},
        )
        self.hosts.append(host)
        return host

    def start_host(
        self,
        index: int,
        *,
        model: ModelSpec | None = None,
        price: int | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = START_TIMEOUT,
    ) -> HostProcess:
        """A staked, registered host serving (``fabstir-node run``), once it is ready."""
        host = self.host(index, model=model, price=price, env=env)
        host.setup()
        host.start(timeout)
        info = host.info
        api = info.get("api", "").split()
        self.log(
            f"host {index} serving at {host.price} wei/1000 tokens: {host.address} "
            f"(peer {info.get('peer id', '?')[:16]}...{', api ' + api[0] if api else ''}, "
            f"log {_show(host.data_dir / 'node.log')})"
        )
        return host

    def _proven_env(self) -> dict[str, str]:
        if not self.proven_models:
            return {}
        models = ",".join(f"0x{mid.hex()}={path}" for mid, path in self.proven_models.items())
        return {"FABSTIR_PROVEN_MODELS": models}

    def host_of(self, address: str) -> HostProcess:
        """The host process of an on-chain host address."""
        for host in self.hosts:
            if host.address.lower() == address.lower():
                return host
        raise KeyError(address)


def _exit_on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signal.SIGTERM)


def _show(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)
