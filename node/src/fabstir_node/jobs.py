"""Jobs from the JobBoard (README "Batch and proven jobs").

The node follows the board's events from its last processed block (kept in a small state file,
with that block's hash, so a reorganised chain is noticed and the blocks since re-read). Every
event names a job; the node then reads the job itself from the chain, which is the only truth
it acts on, so reading an event twice, or after a reorg, is harmless.

For every open job of a model it serves, the node fetches the input (checked against the
job's hash), keeps it in its tree under ``/jobs/<id>/input`` and announces it: the job so
outlives its client going offline and a claimer dying. If the job is one it can run, it claims
it (first valid claim wins), runs it, stores the result under ``/jobs/<id>/result`` and
completes on-chain with the result's hash (a proven job: with its proofs). It keeps a copy of
other hosts' results for its models too, so a result outlives the host that computed it.

A job claimed by another host is looked at again when that claim lapses. After a restart, a
job this node has claimed and whose claim still runs is resumed, never claimed again; a result
already stored is not computed again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from web3.exceptions import BlockNotFound

from fabstir_node.storage import NodeStorage
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus, OnchainJob, Verdict
from fabstir_sdk.contracts.transactions import with_retries
from fabstir_sdk.errors import FabstirError
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.storage.layout import job_input_path, job_result_path
from fabstir_sdk.tasks import TaskSet

log = logging.getLogger(__name__)

#: The largest job input and result the node handles.
MAX_JOB_BYTES = 16 << 20
#: How far back to re-read the board's events when the chain reorganised under us.
REORG_DEPTH = 64
#: The most blocks one query for events covers (RPC providers cap log ranges).
LOG_RANGE = 2000
#: How often this host's run of one job may fail (or its proofs be refused) before the host
#: leaves the job to others.
MAX_STRIKES = 3
#: Seconds before a job that could not be handled (input unreachable, RPC down) is retried.
RETRY_AFTER = 15


@dataclass(frozen=True)
class Outcome:
    """What running a job produced: the result's bytes, the payment asked, and for a proven
    job the proofs (bytes) and their public instances."""

    result: bytes
    payment: int
    proofs: list[bytes] = field(default_factory=list)
    instances: list[list[int]] = field(default_factory=list)


class JobExecutor(Protocol):
    """Runs the jobs of one model."""

    model_id: bytes

    def refuses(self, job: OnchainJob, data: bytes) -> str | None:
        """Why this node will not take ``job`` with input ``data`` (None: it will)."""

    async def run(self, job: OnchainJob, data: bytes) -> Outcome:
        """Run the job (slow: proofs, generation)."""

    def resumed(self, job: OnchainJob, result: bytes) -> Outcome:
        """The outcome of a result stored before a restart, without computing it again."""


@dataclass
class BoardState:
    """What survives a restart: the last block read (and its hash) and the jobs to look at
    again from a given block time."""

    block: int = 0
    block_hash: str = ""
    later: dict[int, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> BoardState:
        try:
            data = json.loads(path.read_text())
            return cls(
                int(data["block"]),
                str(data["hash"]),
                {int(k): int(v) for k, v in data["later"].items()},
            )
        except FileNotFoundError:
            return cls()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning(
                "jobs: unreadable state %s (%s); reading the board from the start", path, exc
            )
            return cls()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"block": self.block, "hash": self.block_hash, "later": self.later})
        )
        os.replace(tmp, path)


@dataclass
class JobCounters:
    """What /metrics and the tests read."""

    claimed: int = 0
    completed: int = 0
    proofs_rejected: int = 0
    refused: int = 0
    failed: int = 0
    reorgs: int = 0


class JobRunner:
    def __init__(
        self,
        board: JobBoard,
        storage: NodeStorage,
        executors: Sequence[JobExecutor],
        state_path: Path,
        *,
        poll: float = 2.0,
    ) -> None:
        self.board = board
        self.storage = storage
        self.executors = {e.model_id: e for e in executors}
        self.state_path = state_path
        self.poll = poll
        self.me = board.contracts.address
        self.counters = JobCounters()
        self.state = BoardState()
        self._task: asyncio.Task[None] | None = None
        self._strikes: dict[int, int] = {}  # job id -> our runs that failed or were refused
        self._background = TaskSet()

    async def start(self) -> None:
        self.state = await asyncio.to_thread(BoardState.load, self.state_path)
        self._task = asyncio.ensure_future(self._follow())

    async def stop(self) -> None:
        self._background.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None

    async def _follow(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an RPC outage: keep the node up, try again
                log.warning("jobs: %s", exc)
            await asyncio.sleep(self.poll)

    # ----------------------------------------------------------------- events

    async def poll_once(self) -> None:
        """Read the board's new events, then look at every job that is due."""
        touched = await asyncio.to_thread(self._read_events)
        now = await asyncio.to_thread(self._now)
        for job_id in touched:
            self.state.later[job_id] = 0
        for job_id, at in sorted(self.state.later.items()):
            if at <= now:
                await self._consider(job_id, now)
        await asyncio.to_thread(self.state.save, self.state_path)

    def _read_events(self) -> set[int]:
        w3 = self.board.contracts.w3
        state = self.state
        first_block = self.board.contracts.deployment.deploy_block
        if state.block and self._block_hash(state.block) != state.block_hash:
            log.warning("jobs: the chain reorganised below block %d; re-reading", state.block)
            self.counters.reorgs += 1
            state.block = max(first_block - 1, state.block - REORG_DEPTH)
        head = int(with_retries(lambda: w3.eth.block_number, "block number"))
        start = max(state.block + 1, first_block)
        end = min(head, start + LOG_RANGE - 1)
        if end < start:
            return set()
        logs = with_retries(
            lambda: w3.eth.get_logs(
                {"address": self.board.board.address, "fromBlock": start, "toBlock": end}
            ),
            "board events",
        )
        state.block, state.block_hash = end, self._block_hash(end)
        # Every JobBoard event names its job first (topic 1).
        return {int.from_bytes(bytes(e["topics"][1]), "big") for e in logs if len(e["topics"]) > 1}

    def _block_hash(self, number: int) -> str:
        """The hash of block ``number`` on the chain as it is now ("" when it has no such
        block: it was reorganised away)."""
        w3 = self.board.contracts.w3
        try:
            block = with_retries(lambda: w3.eth.get_block(number), "block")
        except BlockNotFound:
            return ""
        return str(block["hash"].hex())

    def _now(self) -> int:
        return self.board.contracts.latest_timestamp()

    # ----------------------------------------------------------------- jobs

    async def _consider(self, job_id: int, now: int) -> None:
        """Look at job ``job_id`` as the chain has it now, and act."""
        later = self.state.later
        later.pop(job_id, None)
        try:
            job = await asyncio.to_thread(self.board.job, job_id)
        except FabstirError as exc:
            log.warning("jobs: cannot read job %d: %s", job_id, exc)
            later[job_id] = now + RETRY_AFTER
            return
        executor = self.executors.get(job.model_id)
        if executor is None or self._strikes.get(job_id, 0) >= MAX_STRIKES:
            return
        if job.has_result and job.host != self.me:
            self._background.spawn(self._keep_result(job))  # a copy never holds up a claim
            return
        if job.status not in (JobStatus.OPEN, JobStatus.CLAIMED):
            return
        ours = job.status == JobStatus.CLAIMED and job.host == self.me
        if ours and now <= job.claimed_until:
            await self._remember(job_id)
            data = await self._input(job)
            if data is not None:
                await self._run(job, executor, data)
            return
        if now >= job.deadline:
            return
        data = await self._input(job)
        if data is None:
            later[job_id] = now + RETRY_AFTER
            return
        if reason := executor.refuses(job, data):
            log.info("jobs: not taking job %d: %s", job_id, reason)
            self.counters.refused += 1
            return
        if not job.claimable(now):  # another host holds it: look again when its claim lapses
            later[job_id] = job.claimed_until + 1
            return
        try:
            await asyncio.to_thread(self.board.claim, job_id)
        except FabstirError as exc:  # another host claimed first (or the RPC failed)
            log.info("jobs: claim of job %d failed: %s", job_id, exc)
            later[job_id] = now + RETRY_AFTER
            return
        self.counters.claimed += 1
        await self._remember(job_id)
        await self._run(await asyncio.to_thread(self.board.job, job_id), executor, data)

    async def _remember(self, job_id: int) -> None:
        """Note a job we hold in the state file before working on it: a restart (or a failed
        run) comes back to it, never claims it again while the claim lasts."""
        self.state.later[job_id] = 0
        await asyncio.to_thread(self.state.save, self.state_path)

    async def _input(self, job: OnchainJob) -> bytes | None:
        """The job's input, kept in our tree (fetched, checked against its hash, on first
        sight) and announced, or None when nobody we can reach has it."""
        path = job_input_path(job.id)
        with contextlib.suppress(StorageError):
            if await asyncio.to_thread(_root_of, self.storage, path) == job.input_hash:
                return await asyncio.to_thread(self.storage.read, path)
            # Another job of that id (a reorganised chain, another deployment): forget its
            # input and result, or the result would be taken for this job's.
            stale = [p for p in (path, job_result_path(job.id)) if self.storage.store.exists(p)]
            await self.storage.delete_many(stale)
        try:
            data = await asyncio.wait_for(self.storage.fetch(job.input_hash, MAX_JOB_BYTES), 60)
            await self.storage.publish(path, data)
        except (StorageError, FabstirError, TimeoutError, OSError) as exc:
            log.info("jobs: input of job %d unreachable: %s", job.id, exc)
            return None
        return data

    async def _keep_result(self, job: OnchainJob) -> None:
        """Keep a copy of another host's result (checked against the hash it completed
        with): the client gets it even if that host is gone."""
        path = job_result_path(job.id)
        if await asyncio.to_thread(self.storage.store.exists, path):
            return
        try:
            data = await asyncio.wait_for(self.storage.fetch(job.result_hash, MAX_JOB_BYTES), 60)
            await self.storage.publish(path, data)
        except (StorageError, FabstirError, TimeoutError, OSError) as exc:
            log.info("jobs: result of job %d unreachable: %s", job.id, exc)

    async def _run(self, job: OnchainJob, executor: JobExecutor, data: bytes) -> None:
        path = job_result_path(job.id)
        try:
            stored = None
            with contextlib.suppress(StorageError):
                stored = await asyncio.to_thread(self.storage.read, path)
            if stored is not None:
                outcome = executor.resumed(job, stored)
            else:
                outcome = await executor.run(job, data)
            root = await self.storage.publish(path, outcome.result)
            if not await asyncio.to_thread(self._complete, job, root, outcome):
                await self.storage.delete_many([path])  # refused: prove again next time
            self.state.later.pop(job.id, None)
        except Exception as exc:  # tried again next poll, until MAX_STRIKES
            self.counters.failed += 1
            self._strikes[job.id] = self._strikes.get(job.id, 0) + 1
            log.warning("jobs: job %d failed: %s", job.id, exc)

    def _complete(self, job: OnchainJob, root: bytes, outcome: Outcome) -> bool:
        """Complete the job on-chain; False when its proofs were refused."""
        if not job.proof_required:
            self.board.complete(job.id, root, outcome.payment)
            self.counters.completed += 1
            log.info("jobs: completed job %d (asking %d)", job.id, outcome.payment)
            return True
        verdict, _ = self.board.submit_proofs(
            job.id, root, outcome.payment, outcome.proofs, outcome.instances
        )
        if verdict != Verdict.VALID:
            # The job is back on the board; after MAX_STRIKES we leave it to other hosts.
            self.counters.proofs_rejected += 1
            self._strikes[job.id] = self._strikes.get(job.id, 0) + 1
            log.warning("jobs: the proofs of job %d were refused: %s", job.id, verdict.name)
            return False
        self.counters.completed += 1
        log.info("jobs: proved job %d (paid %d)", job.id, outcome.payment)
        return True


def _root_of(storage: NodeStorage, path: str) -> bytes:
    entry = storage.store.stat(path)
    return entry.ref.content.root  # type: ignore[union-attr]
