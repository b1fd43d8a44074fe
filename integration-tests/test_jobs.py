"""Batch jobs on the JobBoard, on a real Anvil with real hosts: posted by the CLI, claimed,
run, stored and fetched back checked by hash; a claimer that dies; a restart that must not
claim twice; a reorganised chain; an expired job refunded to the wei."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx

from fabstir_devtools.chain import anvil_account
from fabstir_devtools.wait import wait_until
from fabstir_node.jobs import JobRunner, Outcome
from fabstir_sdk.batch import BatchRequest, parse_output, render_input
from fabstir_sdk.contracts import ETH
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus, OnchainJob

from conftest import PRICE, Devnet, fabstir, run

MODEL = "local/tiny.gguf"
MAX_PAYMENT = 10**15
JOB_TIMEOUT = 180.0


def batch_file(*questions: str, max_tokens: int = 8) -> bytes:
    return render_input(
        [
            BatchRequest(
                f"q{n}",
                {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": q}],
                    "max_tokens": max_tokens,
                    "temperature": 0,
                },
            )
            for n, q in enumerate(questions)
        ]
    )


def submit_by_cli(devnet: Devnet, path: Path) -> int:
    """``fabstir batch submit``; returns the job id (once a host holds the input)."""
    posted = fabstir(
        devnet, "batch", "submit", str(path), "-m", MODEL,
        "--max-payment", str(MAX_PAYMENT), "--json",
    )  # fmt: skip
    assert posted.returncode == 0, posted.stderr
    answer = json.loads(posted.stdout)
    assert answer["copies"] >= 1
    return int(answer["id"])


def board_of(devnet: Devnet, index: int = 4) -> JobBoard:
    return JobBoard(Contracts.connect(devnet.anvil.url, devnet.deployment, anvil_account(index)))


def wait_for_status(board: JobBoard, job_id: int, *statuses: JobStatus) -> OnchainJob:
    wait_until(
        lambda: board.job(job_id).status in statuses,
        JOB_TIMEOUT,
        f"job {job_id} to be {'/'.join(s.name for s in statuses)}",
        interval=0.2,
    )
    return board.job(job_id)


def claims_of(board: JobBoard, job_id: int) -> list[Any]:
    start = board.contracts.deployment.deploy_block
    return list(
        board.board.events.JobClaimed().get_logs(
            from_block=start, argument_filters={"jobId": job_id}
        )
    )


class Overcharges(JobRunner):
    """Fault injection: a host that asks the job's whole maximum, whatever its answers used."""

    def _complete(self, job: OnchainJob, root: bytes, outcome: Outcome) -> bool:
        return super()._complete(job, root, Outcome(outcome.result, job.max_payment))


class ClaimsThenDies(JobRunner):
    """Fault injection: a host that claims a job and never delivers (it hangs, then dies)."""

    async def _run(self, job: OnchainJob, executor: Any, data: bytes) -> None:
        await asyncio.Event().wait()


def test_batch_job_posted_by_the_cli_is_run_stored_and_paid(devnet: Devnet, tmp_path: Path) -> None:
    board = board_of(devnet)
    path = tmp_path / "batch.jsonl"
    path.write_bytes(batch_file("What is 2 + 2?", "Name a colour."))

    async def main() -> None:
        node = await devnet.start_node(1, job_poll=0.2)
        try:
            job_id = await asyncio.to_thread(submit_by_cli, devnet, path)
            job = await asyncio.to_thread(wait_for_status, board, job_id, JobStatus.COMPLETED)
            assert job.host == node.keys.account.address

            status = await asyncio.to_thread(
                fabstir, devnet, "batch", "status", str(job_id), "--json"
            )
            assert json.loads(status.stdout)["status"] == "completed"
            out = tmp_path / "out.jsonl"
            got = await asyncio.to_thread(
                fabstir, devnet, "batch", "results", str(job_id), "-o", str(out)
            )
            assert got.returncode == 0, got.stderr
            assert f"asked {job.payment}" in got.stderr and "problem" not in got.stderr
            answers = parse_output(out.read_bytes())
            assert [a.custom_id for a in answers] == ["q0", "q1"]
            assert all(a.body and a.body["object"] == "chat.completion" for a in answers)
            # The payment asked is the tokens used at the host's price, counted line by line.
            tokens = sum(sum(a.usage) for a in answers)
            assert tokens > 0 and job.payment == tokens * PRICE // 1000
            assert node.http is not None
            async with httpx.AsyncClient() as http:
                metrics = (await http.get(f"{node.http.url}/metrics")).text
            assert "fabstir_jobs_completed 1.0" in metrics
        finally:
            await node.stop()

        # Paid after the challenge window, by anyone; deposit = host + fee + refund, to the wei.
        devnet.anvil.increase_time(devnet.deployment.params["challengeWindow"] + 1)
        settlement = await asyncio.to_thread(board.release, job_id)
        assert settlement.paid and settlement.payment == job.payment
        assert settlement.host_amount + settlement.fee + settlement.refund == MAX_PAYMENT
        assert settlement.fee == job.payment * devnet.deployment.params["feeBps"] // 10_000
        # No job is live: the board holds exactly what its ledger owes the host and the treasury.
        owed = [
            board.board.functions.owed(account, ETH).call()
            for account in (job.host, devnet.deployment.params["treasury"])
        ]
        assert owed == [settlement.host_amount, settlement.fee]
        held = await asyncio.to_thread(board.contracts.w3.eth.get_balance, board.board.address)
        assert held == sum(owed)

    run(main())


def test_a_claimer_that_dies_loses_the_claim_and_another_host_completes(
    devnet: Devnet,
) -> None:
    async def main() -> None:
        dying = await devnet.start_node(2, job_poll=0.2, jobs_runner=ClaimsThenDies)
        client = devnet.client(5)
        board = client.jobs.board
        try:
            posted = await client.jobs.submit_batch(
                batch_file("Say hi."), MODEL, MAX_PAYMENT, copies=1
            )
            job = await asyncio.to_thread(wait_for_status, board, posted.job_id, JobStatus.CLAIMED)
            assert job.host == dying.keys.account.address
            rescuer = await devnet.start_node(3, job_poll=0.2)
            try:
                # The rescuer keeps its own copy of the input before the claimer dies.
                assert rescuer.jobs is not None
                await asyncio.to_thread(
                    wait_until,
                    lambda: rescuer.storage is not None
                    and rescuer.storage.store.exists(f"/jobs/{posted.job_id}/input"),
                    JOB_TIMEOUT,
                    "the rescuer to copy the input",
                )
                await dying.stop()
                await client.close()  # the client goes offline too
                devnet.anvil.increase_time(devnet.deployment.params["claimTimeout"] + 1)
                done = await asyncio.to_thread(
                    wait_for_status, board, posted.job_id, JobStatus.COMPLETED
                )
                assert done.host == rescuer.keys.account.address
                assert [e["args"]["host"] for e in claims_of(board, posted.job_id)] == [
                    dying.keys.account.address,
                    rescuer.keys.account.address,
                ]
            finally:
                await rescuer.stop()
        finally:
            await dying.stop()
            await client.close()

    run(main())


def test_a_restarted_host_resumes_its_claim_without_claiming_again(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(1, job_poll=0.2, jobs_runner=ClaimsThenDies)
        client = devnet.client(6)
        board = client.jobs.board
        try:
            posted = await client.jobs.submit_batch(
                batch_file("Count to three."), MODEL, MAX_PAYMENT
            )
            await asyncio.to_thread(wait_for_status, board, posted.job_id, JobStatus.CLAIMED)
            await node.stop()
            node = await devnet.start_node(1, job_poll=0.2)  # same data dir and key
            await asyncio.to_thread(wait_for_status, board, posted.job_id, JobStatus.COMPLETED)
            assert len(claims_of(board, posted.job_id)) == 1
        finally:
            await node.stop()
            await client.close()

    run(main())


def test_the_board_follower_survives_a_reorg(devnet: Devnet) -> None:
    w3 = devnet.anvil.w3

    async def main() -> None:
        node = await devnet.start_node(1, job_poll=0.2)
        client = devnet.client(7)
        board = client.jobs.board
        try:
            snapshot = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
            first = await client.jobs.submit_batch(
                batch_file("First question."), MODEL, MAX_PAYMENT
            )
            await asyncio.to_thread(wait_for_status, board, first.job_id, JobStatus.COMPLETED)
            runner = node.jobs
            assert runner is not None
            await asyncio.to_thread(
                wait_until, lambda: runner.state.block >= w3.eth.block_number, 60, "the follower"
            )
            # The chain reorganises: the job never happened; another job takes its id.
            w3.provider.make_request("evm_revert", [snapshot])  # type: ignore[arg-type]
            for _ in range(3):
                w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
            second = await client.jobs.submit_batch(
                batch_file("Another question.", "And one more."), MODEL, MAX_PAYMENT
            )
            assert second.job_id == first.job_id and second.input_hash != first.input_hash
            await asyncio.to_thread(wait_for_status, board, second.job_id, JobStatus.COMPLETED)
            assert runner.counters.reorgs >= 1
            answers = parse_output(await client.jobs.result(second.job_id))
            assert [a.custom_id for a in answers] == ["q0", "q1"]  # this job's, not the first's
        finally:
            await node.stop()
            await client.close()

    run(main())


def test_an_expired_job_refunds_to_the_wei(devnet: Devnet) -> None:
    client_account = anvil_account(4)
    board = board_of(devnet, 4)
    w3 = board.contracts.w3
    # Nobody serves this model: the job stays open until its deadline.
    unserved = bytes.fromhex("ab" * 32)
    owner = devnet.owner
    models = devnet.deployment.contract(owner.w3, "ModelRegistry")
    owner.transact(models.functions.addModel("x", "unserved.gguf", unserved, unserved, 1), "add")
    model_id = bytes(models.functions.modelIdOf("x", "unserved.gguf").call())
    job_id = board.post(model_id, bytes.fromhex("cd" * 32), MAX_PAYMENT, 600)
    devnet.anvil.increase_time(601)
    before = w3.eth.get_balance(client_account.address)
    settlement = board.expire(job_id)
    receipt = w3.eth.get_transaction_receipt(
        board.board.events.JobSettled().get_logs(
            from_block=board.contracts.deployment.deploy_block, argument_filters={"jobId": job_id}
        )[-1]["transactionHash"]
    )
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert settlement.refund == MAX_PAYMENT and settlement.payment == 0 and not settlement.paid
    assert w3.eth.get_balance(client_account.address) == before + MAX_PAYMENT - gas
    assert board.job(job_id).status == JobStatus.REFUNDED


def test_an_overcharging_host_is_caught_by_the_count_and_disputed(
    devnet: Devnet, tmp_path: Path
) -> None:
    path = tmp_path / "batch.jsonl"
    path.write_bytes(batch_file("Tell me a story."))
    board = board_of(devnet, 5)

    async def main() -> None:
        node = await devnet.start_node(2, job_poll=0.2, jobs_runner=Overcharges)
        try:
            job_id = await asyncio.to_thread(submit_by_cli, devnet, path)
            job = await asyncio.to_thread(wait_for_status, board, job_id, JobStatus.COMPLETED)
            assert job.payment == MAX_PAYMENT
            got = await asyncio.to_thread(fabstir, devnet, "batch", "results", str(job_id))
            assert got.returncode == 1
            assert f"problem: the host asks {MAX_PAYMENT}" in got.stderr
            disputed = await asyncio.to_thread(fabstir, devnet, "batch", "dispute", str(job_id))
            assert disputed.returncode == 0, disputed.stderr
        finally:
            await node.stop()
        assert board.job(job_id).status == JobStatus.DISPUTED
        devnet.anvil.increase_time(devnet.deployment.params["challengeWindow"] + 1)
        owner_board = devnet.deployment.contract(devnet.owner.w3, "JobBoard")
        devnet.owner.transact(owner_board.functions.resolveDispute(job_id, False), "resolve")
        settlement = board.settlement_of(job_id)
        assert settlement is not None and not settlement.paid
        assert settlement.refund == MAX_PAYMENT and settlement.host_amount == settlement.fee == 0

    run(main())
