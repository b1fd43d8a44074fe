"""Proven jobs end to end on the example model: bundle, setup, proofs, and their checks off
chain and by the generated verifier contract on Anvil. The bundle (with a test SRS) is built
once per session; proving two rows takes a few seconds."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import numpy as np
import pytest
from web3 import Web3
from web3.exceptions import ContractLogicError

from fabstir_devtools.chain import Anvil, anvil_account, deploy_protocol
from fabstir_devtools.proof_models import (
    EIP170_LIMIT,
    RISK_HIDDEN,
    VERIFIER_JSON,
    build_bundle,
    deploy_verifier,
    register_proven_model,
    sample_rows,
    train_mlp,
    train_risk_scorer,
)
from fabstir_node.prover import Prover, example_model
from fabstir_sdk.contracts.deployment import Deployment
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.proofs import (
    MANIFEST,
    VK,
    CircuitPin,
    Proof,
    ProofBundle,
    ProofError,
    commitment,
    input_commitment,
    outputs_as_floats,
    quantize,
    verify_offchain,
)

ROWS = sample_rows(2, seed=5)
NO_VERIFIER = "0x" + "00" * 20


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ProofBundle:
    out = tmp_path_factory.mktemp("proofs") / "bundle"
    return ProofBundle(build_bundle(example_model(), out, calibration_rows=sample_rows(32)))


@pytest.fixture(scope="session")
def pin(bundle: ProofBundle) -> CircuitPin:
    return bundle.pin(NO_VERIFIER)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prover-cache")


@pytest.fixture(scope="session")
def proofs(bundle: ProofBundle, pin: CircuitPin, cache_dir: Path) -> list[Proof]:
    return Prover(bundle, pin, cache_dir).prove(ROWS)


def copy_bundle(bundle: ProofBundle, dest: Path) -> Path:
    shutil.copytree(bundle.path, dest)
    return dest


def tampered(proof: Proof, at: int = 100) -> Proof:
    flipped = bytes([proof.proof[at] ^ 1])
    return Proof(proof.proof[:at] + flipped + proof.proof[at + 1 :], proof.instances)


def test_the_example_model_is_reproducible() -> None:
    assert train_risk_scorer() == example_model().read_bytes()


def test_the_bundle_manifest(bundle: ProofBundle, pin: CircuitPin) -> None:
    assert (bundle.name, bundle.inputs, bundle.outputs, bundle.srs_kind) == (
        "risk_scorer",
        8,
        2,
        "test",
    )
    manifest = json.loads(bundle.file(MANIFEST).read_text())
    assert manifest["sha256"]["vk.key"] == pin.vk_sha256.hex()
    assert json.loads(bundle.file(VERIFIER_JSON).read_text())["deployedSize"] < EIP170_LIMIT


def test_instances_are_the_quantized_rows(
    bundle: ProofBundle, pin: CircuitPin, proofs: list[Proof]
) -> None:
    assert len(proofs) == len(ROWS)
    quantized = quantize(ROWS, bundle)
    for proof, row in zip(proofs, quantized, strict=True):
        assert len(proof.instances) == pin.inputs + pin.outputs
        assert proof.inputs(pin.inputs) == row
    proven_inputs = [v for p in proofs for v in p.inputs(pin.inputs)]
    assert commitment(proven_inputs) == input_commitment(ROWS, bundle)
    assert input_commitment(ROWS[::-1], bundle) != input_commitment(ROWS, bundle)


def test_outputs_are_the_models(bundle: ProofBundle, proofs: list[Proof]) -> None:
    w1, b1, w2, b2 = (p.astype(np.float64) for p in train_mlp(RISK_HIDDEN))
    for proof, row in zip(proofs, ROWS, strict=True):
        expected = np.maximum(np.array(row) @ w1 + b1, 0.0) @ w2 + b2
        assert np.allclose(outputs_as_floats(proof, bundle), expected, atol=0.05)


def test_verify_offchain(bundle: ProofBundle, proofs: list[Proof]) -> None:
    assert all(verify_offchain(p, bundle) for p in proofs)
    assert not verify_offchain(tampered(proofs[0]), bundle)
    other_output = [*proofs[0].instances[:-1], proofs[0].instances[-1] + 1]
    assert not verify_offchain(Proof(proofs[0].proof, other_output), bundle)
    again = Proof.from_json(proofs[0].to_json())
    assert again == proofs[0] and verify_offchain(again, bundle)


def test_setup_is_cached(bundle: ProofBundle, pin: CircuitPin, cache_dir: Path) -> None:
    prover = Prover(bundle, pin, cache_dir)
    assert prover._cached()  # the proofs fixture ran setup; a restart would skip it
    assert prover.directory.name.startswith(pin.onnx_sha256.hex() + "-")


def test_prepare_refuses_files_that_are_not_pinned(
    bundle: ProofBundle, pin: CircuitPin, tmp_path: Path
) -> None:
    wrong = dataclasses.replace(pin, vk_sha256=bytes(32))
    with pytest.raises(ProofError, match="not the registered circuit"):
        Prover(bundle, wrong, tmp_path).prepare()


def test_prepare_refuses_a_key_setup_does_not_derive(bundle: ProofBundle, tmp_path: Path) -> None:
    # A bundle (and pin) whose verifying key is not the one of its circuit: the host would
    # prove for another circuit than the verifier contract checks.
    forged = ProofBundle(copy_bundle(bundle, tmp_path / "forged"))
    key = forged.file(VK)
    key.write_bytes(key.read_bytes() + b"\0")
    prover = Prover(forged, forged.pin(NO_VERIFIER), tmp_path / "cache")
    with pytest.raises(ProofError, match="another circuit"):
        prover.prepare()
    assert not prover.directory.exists()  # nothing cached


def test_a_test_srs_is_refused_off_local_chains(
    bundle: ProofBundle, pin: CircuitPin, tmp_path: Path
) -> None:
    bundle.check(pin, chain_id=31337)
    with pytest.raises(ProofError, match="trusted SRS"):
        bundle.check(pin, chain_id=8453)
    owner = cast(TransactionSender, SimpleNamespace(chain_id=8453))
    with pytest.raises(ProofError, match="trusted SRS"):
        register_proven_model(owner, cast(Deployment, None), bundle.path, "r", "f")
    trusted = copy_bundle(bundle, tmp_path / "trusted")
    manifest = json.loads((trusted / MANIFEST).read_text())
    (trusted / MANIFEST).write_text(json.dumps({**manifest, "srs": "trusted"}))
    ProofBundle(trusted).check(pin, chain_id=8453)


def test_the_verifier_contract_on_anvil(bundle: ProofBundle, proofs: list[Proof]) -> None:
    with Anvil() as anvil:
        owner = TransactionSender(anvil.w3, anvil_account(0))
        deployment = deploy_protocol(owner)
        model_id = register_proven_model(
            owner, deployment, bundle.path, "fabstir/examples", "risk_scorer.onnx"
        )
        registry = deployment.contract(anvil.w3, "ModelRegistry")
        onchain = CircuitPin.from_registry(registry, model_id)
        assert onchain == bundle.pin(onchain.verifier)
        bundle.check(onchain, chain_id=anvil.w3.eth.chain_id)
        address = Web3.to_checksum_address(onchain.verifier)
        code = anvil.w3.eth.get_code(address)
        compiled = json.loads(bundle.file(VERIFIER_JSON).read_text())
        assert len(code) == compiled["deployedSize"]
        verifier = anvil.w3.eth.contract(address=address, abi=compiled["abi"])
        for proof in proofs:
            assert verifier.functions.verifyProof(proof.proof, proof.instances).call() is True
        bad = tampered(proofs[0])
        try:
            accepted = verifier.functions.verifyProof(bad.proof, bad.instances).call()
        except ContractLogicError:  # EZKL's verifiers revert on a bad proof
            accepted = False
        assert not accepted
        # Another deployment of the same verifier accepts the same proof: the key is the code.
        second = Web3.to_checksum_address(deploy_verifier(owner, bundle.path))
        again = anvil.w3.eth.contract(address=second, abi=compiled["abi"])
        assert again.functions.verifyProof(proofs[1].proof, proofs[1].instances).call()
