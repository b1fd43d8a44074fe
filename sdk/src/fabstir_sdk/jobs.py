"""Jobs on the JobBoard, from the client's side (README "Batch and proven jobs").

The client writes the job's input into its own block store, serves it over Bitswap, announces
it in the DHT and posts the job with the input's root hash. Every host serving the model
fetches the input (checked against that hash) and keeps a copy, so
:meth:`JobClient.submit_batch` by default returns once one host holds it: the client may go
offline, and the job still survives its claimer dying. Results are fetched by the hash the host
completed with, from whoever provides them, and checked block by block and end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabstir_sdk.batch import BatchAnswer, parse_input, parse_output
from fabstir_sdk.contracts.deployment import ETH
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus, OnchainJob
from fabstir_sdk.errors import HostError, UsageError
from fabstir_sdk.models import resolve_model_id
from fabstir_sdk.p2p import PeerAddress, peer_id_from_bytes
from fabstir_sdk.storage.content import blocks_of, read_bytes, write_bytes
from fabstir_sdk.storage.exchange import content_key
from fabstir_sdk.tokens import ensure_allowance, resolve_token

if TYPE_CHECKING:
    from fabstir_sdk.client import FabstirClient

__all__ = ["MAX_RESULT_BYTES", "JobClient"]

#: The largest job result a client fetches.
MAX_RESULT_BYTES = 64 << 20
#: Statuses in which a job has a result in the store.
DONE = (JobStatus.COMPLETED, JobStatus.DISPUTED, JobStatus.PAID)


@dataclass(frozen=True)
class Posted:
    job_id: int
    input_hash: bytes
    copies: int  # hosts holding the input when submit returned


class JobClient:
    """Post jobs and fetch their results (``client.jobs``)."""

    def __init__(self, client: FabstirClient) -> None:
        self.client = client
        self.board = JobBoard(client.contracts)

    async def publish(self, data: bytes) -> bytes:
        """Serve ``data`` from our store and announce it; returns its root hash."""
        await self.client.start()
        store = self.client.blocks
        ref = await asyncio.to_thread(write_bytes, store, data, None)
        self.client.published.update([ref.root, *blocks_of(store, ref)])
        # With no DHT peer yet the announcement fails; hosts then ask the peers we dial.
        with contextlib.suppress(Exception):
            await self.client.exchange.provide(ref)
        return ref.root

    async def copies(self, root: bytes) -> int:
        """How many other peers announce that they hold content ``root``."""
        return len(await self.client.exchange.providers(content_key(root)))

    async def submit_batch(
        self,
        data: bytes,
        model: str | bytes,
        max_payment: int,
        duration: int = 24 * 3600,
        *,
        token: str = ETH,
        copies: int = 1,
        timeout: float = 120.0,
    ) -> Posted:
        """Post an OpenAI Batch input file as a job for ``model`` (checked first: a bad line
        raises :class:`~fabstir_sdk.batch.BatchFormatError` and nothing is paid). Returns once
        ``copies`` hosts hold the input (0: at once, the client must then stay online until a
        host fetched it)."""
        parse_input(data)
        return await self._post(data, model, max_payment, duration, token, copies, timeout)

    async def _post(
        self,
        data: bytes,
        model: str | bytes,
        max_payment: int,
        duration: int,
        token: str,
        copies: int,
        timeout: float,
        commitment: bytes = bytes(32),
        proof_required: bool = False,
    ) -> Posted:
        model_id = resolve_model_id(model)
        await self.client.start()
        await self._reach_hosts(model_id)
        root = await self.publish(data)
        contracts = self.client.contracts
        token = await asyncio.to_thread(resolve_token, contracts, token)
        if token != ETH:
            spender = self.board.board.address
            await asyncio.to_thread(ensure_allowance, contracts, token, max_payment, spender)
        job_id = await asyncio.to_thread(
            lambda: self.board.post(
                model_id,
                root,
                max_payment,
                duration,
                token=token,
                input_commitment=commitment,
                proof_required=proof_required,
            )
        )
        held = await self._wait_for_copies(root, copies, timeout)
        return Posted(job_id, root, held)

    async def _reach_hosts(self, model_id: bytes) -> None:
        """Dial the registered hosts of the model: our DHT announcement lands with them, and
        they fetch the input from us."""
        hosts = await asyncio.to_thread(self.client.contracts.hosts_for_model, model_id)
        records = await asyncio.gather(
            *(asyncio.to_thread(self.client.contracts.host, h) for h in hosts)
        )
        await asyncio.gather(
            *(
                self.client.p2p.connect(peer_id_from_bytes(r.peer_id), list(r.addrs), 10)
                for r in records
                if r.addrs
            ),
            return_exceptions=True,  # a host we cannot reach is simply not asked
        )

    async def _wait_for_copies(self, root: bytes, wanted: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        held = 0
        while wanted > 0:
            held = await self.copies(root)
            if held >= wanted:
                break
            if time.monotonic() > deadline:
                raise HostError(
                    "no_copy",
                    f"no host took a copy of the job's input within {timeout:.0f} s; the job "
                    "is posted, keep this client online until a host claims it",
                    retryable=True,
                )
            await asyncio.sleep(0.5)
        return held

    async def job(self, job_id: int) -> OnchainJob:
        job = await asyncio.to_thread(self.board.job, job_id)
        if job.status == JobStatus.NONE:
            raise UsageError(f"there is no job {job_id}")
        return job

    async def result(self, job_id: int) -> bytes:
        """The job's result, fetched by the hash its host completed with and checked."""
        await self.client.start()
        job = await self.job(job_id)
        if job.status not in DONE:
            raise UsageError(f"job {job_id} has no result yet ({job.status.name.lower()})")
        # Its host first; else whoever the DHT says holds it (hosts of the model copy results).
        record = await asyncio.to_thread(self.client.contracts.host, job.host)
        first = [PeerAddress(peer_id_from_bytes(record.peer_id), list(record.addrs))]
        try:
            try:
                ref = await self.client.exchange.fetch(job.result_hash, first)
            except Exception:
                await self._reach_hosts(job.model_id)
                ref = await self.client.exchange.fetch(job.result_hash)
        except Exception as exc:
            raise HostError("no_result", f"cannot fetch the result of job {job_id}: {exc}") from exc
        return await asyncio.to_thread(read_bytes, self.client.blocks, ref, MAX_RESULT_BYTES)

    async def batch_results(self, job_id: int) -> list[BatchAnswer]:
        """A batch job's answers, in input order (OpenAI's Batch output format)."""
        return parse_output(await self.result(job_id))
