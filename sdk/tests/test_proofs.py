"""The client's side of proven jobs without proving anything: commitments as the ProofSystem
computes them, the pin, the bundle's checks, quantization and reading proofs. (Real proofs:
``node/tests/test_prover.py``.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from eth_abi.packed import encode_packed
from eth_utils.crypto import keccak

from fabstir_sdk.errors import ConfigurationError, FabstirError
from fabstir_sdk.proofs import (
    BUNDLE_FILES,
    FIELD_MODULUS,
    MANIFEST,
    CircuitPin,
    Proof,
    ProofBundle,
    ProofError,
    commitment,
    felt_to_uint,
    input_commitment,
    load_ezkl,
    outputs_as_floats,
    quantize,
    uint_to_felt,
)

#: The parts of EZKL's settings the client reads: one input [1, 3] at scale 2^7, one output
#: [1, 2] at scale 2^5.
SETTINGS: dict[str, Any] = {
    "model_input_scales": [7],
    "model_output_scales": [5],
    "model_instance_shapes": [[1, 3], [1, 2]],
    "input_types": ["F32"],
}
VERIFIER = "0x" + "ab" * 20


def write_bundle(path: Path, srs: str = "test") -> tuple[ProofBundle, CircuitPin]:
    path.mkdir()
    hashes = {}
    for role, name in BUNDLE_FILES.items():
        if role == "manifest":
            continue
        data = json.dumps(SETTINGS).encode() if role == "settings" else role.encode() * 100
        (path / name).write_bytes(data)
        hashes[name] = hashlib.sha256(data).hexdigest()
    manifest = {"name": "m", "inputs": 3, "outputs": 2, "logrows": 10, "srs": srs}
    (path / MANIFEST).write_text(json.dumps({**manifest, "sha256": hashes}))
    bundle = ProofBundle(path)
    return bundle, bundle.pin(VERIFIER)


def test_commitment_is_keccak_of_abi_encode_packed() -> None:
    values = [1, FIELD_MODULUS - 1, 2**255]
    assert commitment(values) == keccak(encode_packed(["uint256[]"], [values]))
    assert commitment([]) == keccak(b"")
    with pytest.raises(ProofError):
        commitment([-1])


def test_field_elements_are_little_endian_hex() -> None:
    assert felt_to_uint("6b10" + "00" * 30) == 0x106B
    assert felt_to_uint(uint_to_felt(FIELD_MODULUS - 5)) == FIELD_MODULUS - 5


def test_pin_from_chain_round_trips() -> None:
    circuit = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, VERIFIER, 8, 2)
    pin = CircuitPin.from_chain(b"\x04" * 32, circuit)
    assert pin.circuit_tuple() == circuit and pin.onnx_sha256 == b"\x04" * 32


def test_bundle_check(tmp_path: Path) -> None:
    bundle, pin = write_bundle(tmp_path / "b")
    bundle.check(pin, chain_id=31337)
    bundle.check(pin, chain_id=1337)
    with pytest.raises(ProofError, match=r"settings\.json has sha256"):
        bundle.check(dataclasses.replace(pin, settings_sha256=bytes(32)), chain_id=31337)
    with pytest.raises(ProofError, match="inputs"):
        bundle.check(dataclasses.replace(pin, inputs=4), chain_id=31337)
    bundle.file("model.onnx").unlink()  # a verifier needs no ONNX file
    bundle.check(pin, chain_id=31337, need_onnx=False)
    with pytest.raises(ProofError, match=r"no model\.onnx"):
        bundle.check(pin, chain_id=31337)


def test_test_srs_only_on_local_chains(tmp_path: Path) -> None:
    bundle, pin = write_bundle(tmp_path / "test")
    with pytest.raises(ProofError, match="trusted SRS") as raised:
        bundle.check(pin, chain_id=8453)
    assert isinstance(raised.value, FabstirError)
    trusted, pin = write_bundle(tmp_path / "trusted", srs="trusted")
    trusted.check(pin, chain_id=8453)


def test_malformed_bundles(tmp_path: Path) -> None:
    with pytest.raises(ProofError, match="no circuit bundle"):
        ProofBundle(tmp_path)
    (tmp_path / MANIFEST).write_text('{"name": "m"}')
    with pytest.raises(ProofError, match="malformed"):
        ProofBundle(tmp_path)


def test_quantize_scales_and_wraps_negatives() -> None:
    pytest.importorskip("ezkl")
    assert quantize([[0.5, -0.25, 1.0]], SETTINGS) == [[64, FIELD_MODULUS - 32, 128]]
    assert input_commitment([[0.5, -0.25, 1.0]], SETTINGS) == commitment(
        [64, FIELD_MODULUS - 32, 128]
    )
    with pytest.raises(ProofError, match="takes 3"):
        quantize([[1.0, 2.0]], SETTINGS)


def test_missing_ezkl_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ezkl", None)  # makes `import ezkl` fail
    with pytest.raises(ConfigurationError, match=r"fabstir-sdk\[proofs\]"):
        load_ezkl()


def test_proof_json_round_trip_and_outputs() -> None:
    instances = [64, FIELD_MODULUS - 32, 128, 48, FIELD_MODULUS - 16]
    doc = {
        "instances": [[uint_to_felt(v) for v in instances]],
        "hex_proof": "0x0102ff",
        "proof": [1, 2, 255],
        "version": "23.0.5",
    }
    proof = Proof.from_json(json.dumps(doc))
    assert proof.proof == b"\x01\x02\xff" and proof.instances == instances
    assert proof.inputs(3) == instances[:3] and proof.outputs(2) == instances[3:]
    assert outputs_as_floats(proof, SETTINGS) == [1.5, -0.5]
    assert json.loads(proof.to_json()) == doc
    with pytest.raises(ProofError):
        proof.outputs(6)
    with pytest.raises(ProofError, match="malformed"):
        Proof.from_json("{}")
