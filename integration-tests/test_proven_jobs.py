"""Proven jobs on a real Anvil: the example ONNX model's circuit (EZKL, a test SRS) with its
generated verifier deployed and pinned in the ModelRegistry; a host proves the rows and is paid
when the ProofSystem accepts; a wrong proof, a proof for another input and a replayed proof are
refused on-chain and pay nothing."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fabstir_devtools.chain import anvil_account
from fabstir_devtools.network import ModelSpec
from fabstir_devtools.proof_models import build_bundle, register_proven_model, sample_rows
from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_devtools.wait import wait_until
from fabstir_node.prover import example_model
from fabstir_sdk.contracts import ETH
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus, Verdict
from fabstir_sdk.proofs import Proof, ProofBundle, input_commitment, parse_result, render_rows

from conftest import Devnet, fabstir, run

PROOF_PRICE = 10**13
MAX_PAYMENT = 10**15
ROWS = sample_rows(2, seed=11)
OTHER_ROWS = sample_rows(2, seed=12)


@dataclass
class Proven:
    devnet: Devnet
    bundle: ProofBundle
    model_id: bytes


@pytest.fixture(scope="module")
def proven(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proven]:
    root = tmp_path_factory.mktemp("proven")
    with Devnet(root, ModelSpec.gguf(write_tiny_gguf(root / "tiny.gguf"))) as devnet:
        out = build_bundle(example_model(), root / "bundle", calibration_rows=sample_rows(32))
        model_id = register_proven_model(
            devnet.owner, devnet.deployment, out, "fabstir/examples", "risk_scorer.onnx"
        )
        yield Proven(devnet, ProofBundle(out), model_id)


def node_overrides(p: Proven, **more: object) -> dict[str, object]:
    return {
        "proven_models": f"0x{p.model_id.hex()}={p.bundle.path}",
        "proof_price": PROOF_PRICE,
        "job_poll": 0.2,
        **more,
    }


def test_a_proven_job_pays_on_a_valid_proof(proven: Proven, tmp_path: Path) -> None:
    devnet = proven.devnet
    rows_file = tmp_path / "rows.json"
    rows_file.write_bytes(render_rows(ROWS))

    async def main() -> None:
        node = await devnet.start_node(1, **node_overrides(proven))
        client = devnet.client(4)
        board = client.jobs.board
        try:
            # What the client checks proofs with comes from the host's store, checked
            # against the registry's pin: no local bundle needed.
            fetched = await client.jobs.bundle(proven.model_id)
            assert fetched.path != proven.bundle.path
            posted = await asyncio.to_thread(
                fabstir, devnet, "prove", "submit", str(rows_file),
                "-m", "0x" + proven.model_id.hex(), "--max-payment", str(MAX_PAYMENT), "--json",
                key_index=4,
            )  # fmt: skip
            assert posted.returncode == 0, posted.stderr
            job_id = json.loads(posted.stdout)["id"]
            await asyncio.to_thread(
                wait_until,
                lambda: board.job(job_id).status == JobStatus.PAID,
                300,
                "the proven job to be paid",
            )
            job = board.job(job_id)
            assert job.host == node.keys.account.address
            settlement = board.settlement_of(job_id)
            assert settlement is not None and settlement.paid
            assert settlement.payment == 2 * PROOF_PRICE  # one proof per row, at its price
            assert settlement.host_amount + settlement.fee + settlement.refund == MAX_PAYMENT
            result = await client.jobs.proven_result(job_id, fetched)
            assert result.verified, result.problems
            assert len(result.outputs) == 2 and all(len(o) == 2 for o in result.outputs)
            shown = await asyncio.to_thread(
                fabstir, devnet, "prove", "result", str(job_id), "--json"
            )
            assert shown.returncode == 0, shown.stderr
            assert json.loads(shown.stdout)["outputs"] == result.outputs
        finally:
            await node.stop()
            await client.close()

    run(main())


def test_wrong_foreign_and_replayed_proofs_are_refused_on_chain(proven: Proven) -> None:
    devnet = proven.devnet
    client = JobBoard(Contracts.connect(devnet.anvil.url, devnet.deployment, anvil_account(5)))
    host = JobBoard(Contracts.connect(devnet.anvil.url, devnet.deployment, anvil_account(1)))
    # The proofs the honest host stored for ROWS (job 1), accepted on-chain by the test above.
    assert client.job(1).status == JobStatus.PAID, "the valid-proof test runs first"
    proofs = _stored_proofs(devnet.root / "node1", 1)

    def post(rows: list[list[float]]) -> int:
        commitment = input_commitment(rows, proven.bundle)
        root = bytes(32 - 1) + b"\x01"  # no host runs these: the test plays the host
        return client.post(
            proven.model_id, root, MAX_PAYMENT, 3600,
            input_commitment=commitment, proof_required=True,
        )  # fmt: skip

    def attempt(job_id: int, proof_list: list[Proof]) -> Verdict:
        host.claim(job_id)
        verdict, settlement = host.submit_proofs(
            job_id, bytes(31) + b"\x02", PROOF_PRICE,
            [p.proof for p in proof_list], [p.instances for p in proof_list],
        )  # fmt: skip
        assert settlement is None
        job = client.job(job_id)  # nothing paid; the job is back on the board
        assert job.status == JobStatus.OPEN and job.payment == 0
        return verdict

    flipped = bytearray(proofs[0].proof)
    flipped[100] ^= 0x01
    tampered = [Proof(bytes(flipped), proofs[0].instances), *proofs[1:]]
    assert attempt(post(ROWS), tampered) == Verdict.INVALID
    assert attempt(post(OTHER_ROWS), proofs) == Verdict.INPUT_MISMATCH
    assert attempt(post(ROWS), proofs) == Verdict.REPLAYED
    # Three live jobs, and what the ledger owes for job 1 (the host's share and the fee).
    owed = sum(
        host.board.functions.owed(account, ETH).call()
        for account in (host.contracts.address, devnet.deployment.params["treasury"])
    )
    assert owed > 0
    assert host.contracts.w3.eth.get_balance(host.board.address) == 3 * MAX_PAYMENT + owed


def _stored_proofs(data_dir: Path, job_id: int) -> list[Proof]:
    """The proofs host 1 stored for ``job_id`` (read from its store on disk, read-only)."""
    from fabstir_sdk.storage.layout import job_result_path
    from fabstir_sdk.storage.tree import Store

    store = Store(data_dir / "store", read_only=True)
    try:
        return parse_result(store.get(job_result_path(job_id)))
    finally:
        store.close()
