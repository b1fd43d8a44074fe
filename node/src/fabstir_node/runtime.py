"""A whole host node in one object: model, engine, HTTP API, chain, journal, sessions and
libp2p. ``fabstir-node run`` starts one; the integration tests start several in-process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from web3 import Web3

from fabstir_node.api import Api
from fabstir_node.audits import AuditService
from fabstir_node.batch_jobs import BatchExecutor
from fabstir_node.cache.semantic import SemanticCache
from fabstir_node.chain import HostChain, ServedModel
from fabstir_node.config import NodeConfig
from fabstir_node.documents import DocumentIndex
from fabstir_node.embeddings import Embedder
from fabstir_node.errors import ConfigError
from fabstir_node.heartbeat import Heartbeat
from fabstir_node.inference import Engine
from fabstir_node.jobs import JobExecutor, JobRunner
from fabstir_node.journal import Journal
from fabstir_node.keys import NodeKeys
from fabstir_node.p2p import NodeNetwork
from fabstir_node.server import (
    HttpServer,
    PreparedModel,
    build_engine,
    load_embedder,
    prepare_model,
)
from fabstir_node.sessions import SessionPolicy, SessionService
from fabstir_node.storage import NodeStorage
from fabstir_sdk.contracts import ETH, Deployment
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.jobs import JobBoard
from fabstir_sdk.contracts.reputation import Reputation
from fabstir_sdk.contracts.transactions import with_retries
from fabstir_sdk.p2p import P2PHost, peer_id_bytes
from fabstir_sdk.proofs import ONNX, VERIFIER_FILES, ProofBundle
from fabstir_sdk.storage.layout import proof_file_path

if TYPE_CHECKING:
    from fabstir_node.prover import Prover

log = logging.getLogger(__name__)


def find_deployment(config: NodeConfig, chain_id: int) -> Deployment:
    path = config.deployment or Path("deployments") / f"{chain_id}.json"
    return Deployment.load(path)


def connect_chain(config: NodeConfig, keys: NodeKeys) -> HostChain:
    w3 = Web3(Web3.HTTPProvider(config.rpc_url, request_kwargs={"timeout": 30}))
    chain_id = with_retries(lambda: w3.eth.chain_id, "connect")
    return HostChain(Contracts(w3, find_deployment(config, chain_id), keys.account))


def open_journal(config: NodeConfig, chain: HostChain) -> Journal:
    """The journal of this chain's marketplace (rows of other deployments stay apart)."""
    deployment = chain.contracts.deployment
    return Journal(
        config.data_dir / "journal.sqlite",
        deployment.chain_id,
        deployment.contracts["JobMarketplace"],
    )


def verifier_files(bundle: ProofBundle) -> dict[str, bytes]:
    """A proven model's bundle files a client verifies proofs with, at their store paths."""
    sha = bundle.manifest_sha256[ONNX]
    return {proof_file_path(sha, name): bundle.file(name).read_bytes() for name in VERIFIER_FILES}


def served_model(prepared: PreparedModel, config: NodeConfig) -> ServedModel:
    return ServedModel(
        prepared.model.name,
        prepared.model.model_id,
        bytes.fromhex(prepared.sha256),
        {ETH: config.price}
        | {Web3.to_checksum_address(t): p for t, p in config.token_price_map.items()},
    )


@dataclass
class NodeStatus:
    address: str
    peer_id: str
    addrs: list[str]
    model: str
    model_id: str
    sha256: str
    price: int
    http: str


class HostNode:
    def __init__(
        self,
        config: NodeConfig,
        keys: NodeKeys,
        service: type[SessionService] = SessionService,
        jobs: type[JobRunner] = JobRunner,
    ) -> None:
        self.config = config
        self.keys = keys
        self._service = service  # tests inject a deliberately faulty host through these
        self._jobs = jobs
        self.jobs: JobRunner | None = None
        self.served: list[ServedModel] = []  # what it registers: the GGUF, proven models
        self.prepared: PreparedModel | None = None
        self.sessions: SessionService | None = None
        self.network: NodeNetwork | None = None
        self.http: HttpServer | None = None
        self.journal: Journal | None = None
        self.storage: NodeStorage | None = None
        self.embedder: Embedder | None = None
        self.cache: SemanticCache | None = None
        self.documents: DocumentIndex | None = None
        self._mcp: asyncio.Task[None] | None = None
        self._resume: asyncio.Task[None] | None = None
        self.heartbeat: Heartbeat | None = None

    async def start(self, progress: Callable[[int], None] | None = None) -> NodeStatus:
        config = self.config
        self.prepared = prepared = await asyncio.to_thread(prepare_model, config, progress)
        served = served_model(prepared, config)
        chain = await asyncio.to_thread(connect_chain, config, self.keys)
        if config.chat_template:
            raise ConfigError(
                "chat_template changes how prompts are counted, but paying clients count with "
                "the tokenizer the registry pins: it is for `fabstir-node serve` only"
            )
        await asyncio.to_thread(
            chain.check_model, served.model_id, prepared.sha256, prepared.model.path
        )
        engine = build_engine(config, prepared.model.path)
        await asyncio.to_thread(engine.load)
        self.journal = open_journal(config, chain)
        policy = SessionPolicy(
            config.credit_window,
            config.checkpoint_every,
            idle_timeout=config.idle_timeout,
            voucher_timeout=config.voucher_timeout,
            max_tokens_default=config.max_tokens,
            cache_rate_bps=config.cache_rate_bps,
        )
        host = P2PHost(self.keys.p2p_seed, [config.p2p_listen])
        self.storage = NodeStorage(config.data_dir / "store", host, self.keys.p2p_seed)
        await self.storage.start()
        # Clients fetch the tokenizer from our store (and hosts the model, when shared).
        await self.storage.publish_model(
            served.sha256,
            prepared.model.path if config.share_model else None,
            engine.tokenizer_file,
        )
        if config.cache:
            await self._start_cache(self.storage)
        audits = AuditService(engine, served.sha256) if config.audits else None
        self.sessions = self._service(
            engine,
            chain,
            self.journal,
            served,
            policy,
            results=self.storage,
            cache=self.cache,
            audits=audits,
        )
        api = Api(
            engine,
            prepared.model.name,
            max_tokens_default=config.max_tokens,
            inference=config.http_api,  # the unpaid API only when the operator asks
            embedder=self.embedder,
            cache=self.cache,
            model_sha256=served.sha256,
        )
        api.metrics.watch_storage(self.storage)
        if self.cache is not None:
            api.metrics.watch_cache(self.cache)
        self.http = HttpServer(api, config.host, config.port)
        await self.http.start()
        self.network = NodeNetwork(host, self.sessions, self.keys.account, storage=self.storage)
        if config.mcp:
            await self._start_mcp(self.storage)
        await self.network.start(config.bootstrap_peers)  # provides the model and the store's
        await asyncio.to_thread(self._refresh_endpoint, chain)
        self._resume = asyncio.ensure_future(self.sessions.resume())
        proven: list[tuple[ServedModel, Prover]] = []
        if config.proven_model_map:
            from fabstir_node.proven_jobs import proven_models

            proven = await asyncio.to_thread(proven_models, chain.contracts, config)
        self.served = [served, *(model for model, _ in proven)]
        for _, prover in proven:  # clients fetch what they check our proofs with
            await self.storage.put_many(verifier_files(prover.bundle))
        if config.heartbeat and "ReputationSystem" in chain.contracts.deployment.contracts:
            self.heartbeat = Heartbeat(Reputation(chain.contracts), lambda: engine.ready)
            self.heartbeat.start()
        api.metrics.watch_audits(audits, self.heartbeat)
        if config.jobs and "JobBoard" in chain.contracts.deployment.contracts:
            await self._start_jobs(chain, engine, served, proven)
            assert self.jobs is not None
            api.metrics.watch_jobs(self.jobs)
        return self.status()

    async def _start_jobs(
        self,
        chain: HostChain,
        engine: Engine,
        served: ServedModel,
        proven: list[tuple[ServedModel, Prover]],
    ) -> None:
        """Take jobs from the board: batch jobs for the served model, proven jobs for the
        configured ONNX models."""
        assert self.storage is not None and self.prepared is not None
        config = self.config
        executors: list[JobExecutor] = [
            BatchExecutor(
                served.model_id,
                self.prepared.model.name,
                engine,
                served.prices,
                max_tokens_default=config.max_tokens,
            )
        ]
        if proven:
            from fabstir_node.proven_jobs import ProvenExecutor

            executors += [
                ProvenExecutor(model.model_id, prover, config.proof_price)
                for model, prover in proven
            ]
        deployment = chain.contracts.deployment
        state = (
            config.data_dir / f"jobs-{deployment.chain_id}-{deployment.contracts['JobBoard']}.json"
        )
        self.jobs = self._jobs(
            JobBoard(chain.contracts), self.storage, executors, state, poll=config.job_poll
        )
        await self.jobs.start()

    async def _start_cache(self, storage: NodeStorage) -> None:
        """The embedding model and the answer cache, read back from the store. Without the
        embedding model's package the node serves on, with no cache (and says why)."""
        embedder = await asyncio.to_thread(load_embedder, self.config)
        if embedder is None:
            return
        self.embedder = embedder
        self.cache = SemanticCache(storage, embedder, ttl=self.config.cache_ttl)
        await self.cache.start()

    async def _start_mcp(self, storage: NodeStorage) -> None:
        """The MCP server (``run --mcp``): the cache's shared answers, the host's documents,
        its store."""
        from fabstir_node.mcp_server import build_mcp_server, serve_mcp

        if self.embedder is None:
            raise ConfigError("mcp needs the answer cache's embedding model (cache = true)")
        self.documents = DocumentIndex(storage, self.embedder)
        await self.documents.start()
        config = self.config
        server = build_mcp_server(
            cache=self.cache,
            documents=self.documents,
            storage=storage,
            token=config.mcp_token or None,
        )
        self._mcp = asyncio.ensure_future(
            serve_mcp(server, config.mcp_host, config.mcp_port, config.mcp_token or None)
        )
        await asyncio.sleep(0)  # it binds its socket (or fails: port taken) before it awaits
        if self._mcp.done():
            self._mcp.result()

    def _refresh_endpoint(self, chain: HostChain) -> None:
        """Keep the registry's peer id and addresses equal to where we listen now."""
        assert self.network is not None
        record = chain.contracts.host(chain.address)
        addrs = self.network.host.addrs
        if record.registered and (
            record.peer_id != peer_id_bytes(self.network.host.peer_id) or record.addrs != addrs
        ):
            chain.update_endpoint(peer_id_bytes(self.network.host.peer_id), addrs)

    def status(self) -> NodeStatus:
        assert self.prepared and self.network and self.http
        return NodeStatus(
            address=self.keys.account.address,
            peer_id=self.network.host.peer_id,
            addrs=self.network.host.addrs,
            model=self.prepared.model.name,
            model_id="0x" + self.prepared.model.model_id.hex(),
            sha256=self.prepared.sha256,
            price=self.config.price,
            http=self.http.url,
        )

    async def stop(self) -> None:
        if self.heartbeat is not None:
            await self.heartbeat.stop()
        if self.jobs is not None:
            await self.jobs.stop()
        if self._resume is not None:
            self._resume.cancel()
        if self._mcp is not None:
            self._mcp.cancel()
            with contextlib.suppress(BaseException):
                await self._mcp
        if self.documents is not None:
            with contextlib.suppress(Exception):
                await self.documents.close()
        if self.network is not None:
            with contextlib.suppress(Exception):
                await self.network.stop()
        if self.sessions is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.sessions.drain(), 30)
            self.sessions.engine.close()
        if self.http is not None:
            with contextlib.suppress(Exception):
                await self.http.stop()
        if self.journal is not None:
            self.journal.close()
        if self.cache is not None:
            with contextlib.suppress(Exception):
                await self.cache.close()  # snapshots the index into the store
        if self.embedder is not None:
            self.embedder.close()
        if self.storage is not None:
            self.storage.close()
