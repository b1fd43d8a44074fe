"""Proven jobs: rows of numbers for a proven ONNX model, one EZKL proof per row.

The input is EZKL's own data file (:func:`fabstir_sdk.proofs.render_rows`), from which the
client computed the job's input commitment; a job whose rows do not hash to it could never be
paid, so the node does not claim it. The result holds each row's outputs and proof; the proofs
and their instances go on-chain with ``submitProofs``. A proven model's registered price is per
proof (ETH), and the node asks that per row, at most the job's maximum.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fabstir_node.chain import ServedModel
from fabstir_node.config import NodeConfig
from fabstir_node.jobs import Outcome
from fabstir_node.prover import Prover
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.deployment import ETH
from fabstir_sdk.contracts.jobs import OnchainJob
from fabstir_sdk.proofs import (
    CircuitPin,
    ProofBundle,
    ProofError,
    input_commitment,
    parse_result,
    parse_rows,
    render_result,
)


class ProvenExecutor:
    def __init__(self, model_id: bytes, prover: Prover, price_per_proof: int) -> None:
        self.model_id = model_id
        self.prover = prover
        self.pin = prover.pin
        self.settings: dict[str, Any] = prover.bundle.settings
        self.price = price_per_proof

    def refuses(self, job: OnchainJob, data: bytes) -> str | None:
        if not job.proof_required:
            return "this host runs its proven model only for proven jobs"
        if job.token != ETH:
            return "proven jobs are paid in ETH here"
        try:
            rows = parse_rows(data, self.pin.inputs)
            if input_commitment(rows, self.settings) != job.input_commitment:
                return "the input does not hash to the job's input commitment"
        except ProofError as exc:
            return str(exc)
        if job.max_payment < self.price * len(rows):
            return f"it pays {job.max_payment}; {len(rows)} proofs cost {self.price * len(rows)}"
        return None

    async def run(self, job: OnchainJob, data: bytes) -> Outcome:
        rows = parse_rows(data, self.pin.inputs)
        proofs = await asyncio.to_thread(self.prover.prove, rows)
        return self.resumed(job, render_result(proofs, self.settings))

    def resumed(self, job: OnchainJob, result: bytes) -> Outcome:
        proofs = parse_result(result)
        payment = min(self.price * len(proofs), job.max_payment)
        return Outcome(result, payment, [p.proof for p in proofs], [p.instances for p in proofs])


def proven_models(contracts: Contracts, config: NodeConfig) -> list[tuple[ServedModel, Prover]]:
    """The configured proven models, each with its bundle checked against the registry's pin
    (a test SRS only on a local chain) and its prover prepared (setup runs once, cached)."""
    models = []
    for model_id, bundle_dir in config.proven_model_map.items():
        pin = CircuitPin.from_registry(contracts.models, model_id)
        bundle = ProofBundle(bundle_dir)
        bundle.check(pin, chain_id=contracts.deployment.chain_id)
        prover = Prover(bundle, pin, config.data_dir / "circuits")
        prover.prepare()
        served = ServedModel(bundle.name, model_id, pin.onnx_sha256, {ETH: config.proof_price})
        models.append((served, prover))
    return models


__all__ = ["ProvenExecutor", "proven_models"]
