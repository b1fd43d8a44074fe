"""Proofs of proven jobs (DESIGN §10), from the client's side.

A proven model is a small ONNX model whose inference a host proves with EZKL (Halo2 over BN254,
KZG commitments). The ModelRegistry pins it: the sha256 of the ONNX file, of EZKL's settings,
of the verifying key and of the SRS, the verifier contract generated from that key, and how
many public instances a proof has (the model's quantized inputs, then its outputs). This module
is what a client needs around that pin:

- :class:`ProofBundle`, the directory of files a circuit is made of (:data:`BUNDLE_FILES`), and
  :meth:`ProofBundle.check`, which refuses files that are not the pinned ones and a test SRS
  off a local chain (whoever generated a test SRS can forge proofs for it);
- :func:`quantize` and :func:`input_commitment`: the field elements a host's proofs must carry
  for the client's rows, and the ``inputCommitment`` the job is posted with, so the JobBoard
  pays only for proofs about exactly those rows;
- :class:`Proof`, :func:`outputs_as_floats` and :func:`verify_offchain` to read and check the
  proofs a host returned.

EZKL is an optional dependency (``pip install fabstir-sdk[proofs]``) and is imported only by the
functions that need it: :func:`quantize`, :func:`input_commitment` and :func:`verify_offchain`.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Final

from eth_utils.crypto import keccak

from fabstir_sdk.digests import file_sha256
from fabstir_sdk.errors import ConfigurationError, FabstirError

__all__ = [
    "BUNDLE_FILES",
    "FIELD_MODULUS",
    "LOCAL_CHAINS",
    "MAX_ROWS",
    "VERIFIER_FILES",
    "CircuitPin",
    "Proof",
    "ProofBundle",
    "ProofError",
    "commitment",
    "input_commitment",
    "outputs_as_floats",
    "parse_result",
    "parse_rows",
    "quantize",
    "render_result",
    "render_rows",
    "verify_offchain",
]

ONNX: Final = "model.onnx"
SETTINGS: Final = "settings.json"
VK: Final = "vk.key"
SRS: Final = "kzg.srs"
MANIFEST: Final = "bundle.json"
#: A bundle directory's files by role. The manifest (``bundle.json``) holds the bundle's name,
#: the instance counts (``inputs``, ``outputs``), ``logrows``, ``srs`` ("test" or "trusted")
#: and the ``sha256`` (hex) of each of the four other files.
BUNDLE_FILES: Final[Mapping[str, str]] = {
    "onnx": ONNX,
    "settings": SETTINGS,
    "vk": VK,
    "srs": SRS,
    "manifest": MANIFEST,
}
#: What checking a proof needs (no ONNX file): what hosts publish under ``/proofs/``.
VERIFIER_FILES: Final = (SETTINGS, VK, SRS, MANIFEST)
SRS_TEST: Final = "test"
SRS_TRUSTED: Final = "trusted"
#: Anvil's and Ganache/Hardhat's chain ids: the only chains a test SRS is accepted for.
LOCAL_CHAINS: Final = frozenset({31337, 1337})
#: The order of BN254's scalar field: instances are field elements, negatives wrap around it.
FIELD_MODULUS: Final = 0x30644E72E131A029B85045B68181585D2833E84879B9709143E1F593F0000001


class ProofError(FabstirError):
    """A circuit bundle is malformed or is not the pinned circuit, a test SRS is used off a
    local chain, or proving or verifying failed."""


def load_ezkl() -> Any:
    """The ``ezkl`` module, imported on first use: the SDK works without it for everything but
    quantizing inputs and verifying proofs, and it is a large native wheel."""
    try:
        import ezkl
    except ImportError as exc:
        raise ConfigurationError(
            "proven jobs need EZKL, which is not installed: install fabstir-sdk[proofs]"
        ) from exc
    return ezkl


def ezkl_step(fn: Any, *args: Path | int) -> None:
    """Call an EZKL step (paths become strings); its errors become :class:`ProofError`."""
    try:
        fn(*(str(a) if isinstance(a, Path) else a for a in args))
    except RuntimeError as exc:
        raise ProofError(f"ezkl {getattr(fn, '__name__', fn)} failed: {exc}") from exc


# --------------------------------------------------------------------------- the pin


@dataclass(frozen=True)
class CircuitPin:
    """What the ModelRegistry pins for a proven model: the ONNX file's sha256 and the circuit
    (``IModelRegistry.Circuit``)."""

    onnx_sha256: bytes
    settings_sha256: bytes
    vk_sha256: bytes
    srs_sha256: bytes
    verifier: str
    inputs: int
    outputs: int

    @classmethod
    def from_chain(cls, onnx_sha256: bytes, circuit: Sequence[Any]) -> CircuitPin:
        """From ``getModel(id).sha256Hash`` and the tuple ``getCircuit(id)`` returns:
        (settingsHash, vkHash, srsHash, verifier, inputs, outputs)."""
        settings, vk, srs, verifier, inputs, outputs = circuit
        return cls(
            bytes(onnx_sha256),
            bytes(settings),
            bytes(vk),
            bytes(srs),
            str(verifier),
            int(inputs),
            int(outputs),
        )

    @classmethod
    def from_registry(cls, registry: Any, model_id: bytes) -> CircuitPin:
        """Read the pin of ``model_id`` from a web3 ``ModelRegistry`` contract."""
        model = registry.functions.getModel(model_id).call()
        return cls.from_chain(model[2], registry.functions.getCircuit(model_id).call())

    def circuit_tuple(self) -> tuple[bytes, bytes, bytes, str, int, int]:
        """The ``Circuit`` argument of ``ModelRegistry.addProvenModel``."""
        return (
            self.settings_sha256,
            self.vk_sha256,
            self.srs_sha256,
            self.verifier,
            self.inputs,
            self.outputs,
        )

    def sha256_of(self, name: str) -> bytes:
        """The pinned sha256 of the bundle file ``name`` (one of :data:`BUNDLE_FILES`)."""
        pinned = {
            ONNX: self.onnx_sha256,
            SETTINGS: self.settings_sha256,
            VK: self.vk_sha256,
            SRS: self.srs_sha256,
        }
        return pinned[name]


# --------------------------------------------------------------------------- the bundle


class ProofBundle:
    """A circuit bundle directory (:data:`BUNDLE_FILES`), as ``build_bundle`` writes it.

    Reading it checks only that the manifest is well formed; :meth:`check` compares the files
    with a model's on-chain pin, which is what makes them trustworthy.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
            self.name = str(manifest["name"])
            self.inputs = int(manifest["inputs"])
            self.outputs = int(manifest["outputs"])
            self.logrows = int(manifest["logrows"])
            self.srs_kind = str(manifest["srs"])
            self.manifest_sha256 = {
                name: bytes.fromhex(manifest["sha256"][name]) for name in (ONNX, SETTINGS, VK, SRS)
            }
        except FileNotFoundError as exc:
            raise ProofError(f"no circuit bundle at {self.path}: {MANIFEST} is missing") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise ProofError(f"malformed {manifest_path}: {exc!r}") from exc
        if self.srs_kind not in (SRS_TEST, SRS_TRUSTED):
            raise ProofError(f"{manifest_path}: srs must be 'test' or 'trusted'")

    def file(self, name: str) -> Path:
        """The path of bundle file ``name`` (``model.onnx``, ``vk.key``...)."""
        return self.path / name

    @property
    def is_test_srs(self) -> bool:
        return self.srs_kind == SRS_TEST

    @cached_property
    def settings(self) -> dict[str, Any]:
        """EZKL's settings (scales, shapes, logrows)."""
        loaded: dict[str, Any] = json.loads(self.file(SETTINGS).read_text())
        return loaded

    def sha256(self, name: str) -> bytes:
        """The sha256 of bundle file ``name`` as it is on disk now."""
        try:
            return file_sha256(self.file(name))
        except FileNotFoundError as exc:
            raise ProofError(f"circuit bundle {self.path} has no {name}") from exc

    def pin(self, verifier: str) -> CircuitPin:
        """The pin these files would have with verifier contract ``verifier`` (what the
        registrar submits to ``addProvenModel``)."""
        return CircuitPin(
            self.sha256(ONNX),
            self.sha256(SETTINGS),
            self.sha256(VK),
            self.sha256(SRS),
            verifier,
            self.inputs,
            self.outputs,
        )

    def check(self, pin: CircuitPin, *, chain_id: int, need_onnx: bool = True) -> None:
        """Refuse this bundle for proofs of ``pin`` on chain ``chain_id``: a test SRS off a
        local chain, a file that is not the pinned one, other instance counts. ``need_onnx``
        off skips the ONNX file, which only a prover needs (a verifier needs the settings, the
        key and the SRS)."""
        self.check_srs(chain_id)
        self.check_files(pin, need_onnx=need_onnx)

    def check_srs(self, chain_id: int) -> None:
        """A test SRS (generated on one machine by ``gen_srs``) lets whoever generated it forge
        proofs: accept it only on a local development chain."""
        if self.is_test_srs and chain_id not in LOCAL_CHAINS:
            raise ProofError(
                f"circuit bundle {self.path} uses a test SRS, which only local chains "
                f"({', '.join(map(str, sorted(LOCAL_CHAINS)))}) accept, not chain {chain_id}: "
                "build the bundle with a trusted SRS from a public ceremony (download it with "
                "`ezkl get-srs --logrows N` and pass it as build_bundle(..., srs=PATH)), "
                "and register that bundle"
            )

    def check_files(self, pin: CircuitPin, *, need_onnx: bool = True) -> None:
        """Each file's sha256 must be the pinned one: with another settings file, key or SRS a
        host would prove, or a client verify, for a circuit the verifier contract rejects."""
        if (self.inputs, self.outputs) != (pin.inputs, pin.outputs):
            raise ProofError(
                f"circuit bundle {self.path} has {self.inputs} inputs and {self.outputs} "
                f"outputs; the model is pinned with {pin.inputs} and {pin.outputs}"
            )
        for name in (ONNX, SETTINGS, VK, SRS) if need_onnx else (SETTINGS, VK, SRS):
            actual, pinned = self.sha256(name), pin.sha256_of(name)
            if actual != pinned:
                raise ProofError(
                    f"{self.file(name)} has sha256 {actual.hex()}, but the model pins "
                    f"{pinned.hex()}: this is not the registered circuit"
                )


# --------------------------------------------------------------------------- inputs


def _settings_of(settings: Mapping[str, Any] | ProofBundle) -> Mapping[str, Any]:
    return settings.settings if isinstance(settings, ProofBundle) else settings


def _input_layout(settings: Mapping[str, Any]) -> tuple[int, int, str]:
    """(values per row, fixed-point scale, EZKL input type) of the model's one input."""
    scales = settings["model_input_scales"]
    if len(scales) != 1:
        raise ProofError(f"a proven model has one input tensor, this one has {len(scales)}")
    shape = settings["model_instance_shapes"][0]
    kind = (settings.get("input_types") or ["F32"])[0]
    return math.prod(shape), int(scales[0]), str(kind)


def felt_to_uint(felt: str) -> int:
    """An EZKL field element (little-endian hex, as in witness and proof files) as the
    ``uint256`` a contract sees."""
    return int.from_bytes(bytes.fromhex(felt.removeprefix("0x")), "little")


def uint_to_felt(value: int) -> str:
    """The inverse of :func:`felt_to_uint`."""
    return value.to_bytes(32, "little").hex()


def quantize(
    rows: Sequence[Sequence[float]], settings: Mapping[str, Any] | ProofBundle
) -> list[list[int]]:
    """The public input instances EZKL's ``gen_witness`` produces for each row: every value
    scaled by the settings' input scale and rounded, as a BN254 field element (negatives wrap
    around :data:`FIELD_MODULUS`). Computed by EZKL's own conversion, so the rounding is the
    prover's; the job's ``inputCommitment`` is made of these."""
    ezkl = load_ezkl()
    s = _settings_of(settings)
    width, scale, kind = _input_layout(s)
    input_type = getattr(ezkl.PyInputType, kind)
    out: list[list[int]] = []
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ProofError(f"row {i} has {len(row)} values; the model takes {width}")
        out.append([felt_to_uint(ezkl.float_to_felt(float(v), scale, input_type)) for v in row])
    return out


def commitment(values: Iterable[int]) -> bytes:
    """``keccak256(abi.encodePacked(uint256[] values))``, as the ProofSystem hashes instances."""
    packed = bytearray()
    for v in values:
        if not 0 <= v < 1 << 256:
            raise ProofError(f"{v} is not a uint256")
        packed += v.to_bytes(32, "big")
    return keccak(bytes(packed))


def input_commitment(
    rows: Sequence[Sequence[float]], settings: Mapping[str, Any] | ProofBundle
) -> bytes:
    """The ``inputCommitment`` to post a proven job for ``rows`` with (one proof per row)."""
    return commitment(v for row in quantize(rows, settings) for v in row)


# --------------------------------------------------------------------------- proofs


@dataclass
class Proof:
    """One EZKL proof: the bytes the verifier contract takes, its public instances as
    ``uint256`` (inputs, then outputs) and the proof JSON EZKL wrote (``document``)."""

    proof: bytes
    instances: list[int]
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: str | bytes | Mapping[str, Any]) -> Proof:
        """From EZKL's proof JSON (text or parsed)."""
        data = dict(json.loads(doc) if isinstance(doc, str | bytes) else doc)
        try:
            if len(data["instances"]) != 1:
                raise ValueError("one instance column expected")
            instances = [felt_to_uint(f) for f in data["instances"][0]]
            raw = data.get("hex_proof")
            proof = bytes.fromhex(raw.removeprefix("0x")) if raw else bytes(data["proof"])
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            raise ProofError(f"malformed proof JSON: {exc!r}") from exc
        return cls(proof, instances, data)

    def inputs(self, n: int) -> list[int]:
        """The first ``n`` instances: the model's quantized inputs."""
        return self.instances[:n]

    def outputs(self, n: int) -> list[int]:
        """The last ``n`` instances: the model's quantized outputs."""
        if not 0 < n <= len(self.instances):
            raise ProofError(f"the proof has {len(self.instances)} instances, not {n} outputs")
        return self.instances[len(self.instances) - n :]

    def to_json(self) -> str:
        """EZKL's proof JSON for the current ``proof`` and ``instances`` (what ``ezkl.verify``
        reads): the stored document with those two fields rewritten."""
        doc = {
            **self.document,
            "instances": [[uint_to_felt(v) for v in self.instances]],
            "proof": list(self.proof),
            "hex_proof": "0x" + self.proof.hex(),
        }
        return json.dumps(doc)


def signed(value: int) -> int:
    """A field element as the signed integer it encodes (above half the modulus: negative)."""
    return value - FIELD_MODULUS if value > FIELD_MODULUS // 2 else value


def outputs_as_floats(proof: Proof, settings: Mapping[str, Any] | ProofBundle) -> list[float]:
    """The model's outputs that ``proof`` proves, dequantized by the output scale(s). Needs no
    EZKL: a client reads a verified result with the settings file alone."""
    s = _settings_of(settings)
    n_in = len(s["model_input_scales"])
    shapes = s["model_instance_shapes"][n_in:]
    scales = s["model_output_scales"]
    sizes = [math.prod(shape) for shape in shapes]
    values = proof.outputs(sum(sizes))
    out: list[float] = []
    for size, scale in zip(sizes, scales, strict=True):
        out += [signed(v) / 2 ** int(scale) for v in values[:size]]
        values = values[size:]
    return out


def verify_offchain(proof: Proof, bundle: ProofBundle) -> bool:
    """Whether EZKL accepts ``proof`` for ``bundle``'s circuit (~10 ms): what the verifier
    contract would say, without a transaction. Check the bundle against the pin first
    (:meth:`ProofBundle.check`)."""
    ezkl = load_ezkl()
    for name in (SETTINGS, VK, SRS):  # else EZKL's error would read as a bad proof
        if not bundle.file(name).is_file():
            raise ProofError(f"circuit bundle {bundle.path} has no {name}")
    with tempfile.TemporaryDirectory(prefix="fabstir-proof-") as tmp:
        path = Path(tmp) / "proof.json"
        path.write_text(proof.to_json())
        try:
            return bool(
                ezkl.verify(
                    str(path),
                    str(bundle.file(SETTINGS)),
                    str(bundle.file(VK)),
                    str(bundle.file(SRS)),
                )
            )
        except RuntimeError:  # EZKL raises for a proof that does not verify or parse
            return False


# --------------------------------------------------------------------------- job files

#: The most rows (proofs) one proven job may carry: the ProofSystem's MAX_PROOFS.
MAX_ROWS: Final = 16


def render_rows(rows: Sequence[Sequence[float]]) -> bytes:
    """A proven job's input file: EZKL's own data format, ``{"input_data": [[...], ...]}``."""
    return json.dumps({"input_data": [[float(v) for v in row] for row in rows]}).encode()


def parse_rows(data: bytes, width: int) -> list[list[float]]:
    """The rows of a proven job's input file; :class:`ProofError` when it is not one for a
    model taking ``width`` values a row (at most :data:`MAX_ROWS` rows, finite numbers)."""
    try:
        rows = json.loads(data)["input_data"]
        parsed = [[float(v) for v in row] for row in rows]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProofError(f"not a proven job's input: {exc!r}") from exc
    if not 0 < len(parsed) <= MAX_ROWS:
        raise ProofError(f"a proven job has 1 to {MAX_ROWS} rows, not {len(parsed)}")
    for i, row in enumerate(parsed):
        if len(row) != width or not all(math.isfinite(v) for v in row):
            raise ProofError(f"row {i} is not {width} finite numbers")
    return parsed


def render_result(proofs: Sequence[Proof], settings: Mapping[str, Any] | ProofBundle) -> bytes:
    """A proven job's result file: each row's outputs (dequantized) and its proof JSON."""
    return json.dumps(
        {
            "outputs": [outputs_as_floats(p, settings) for p in proofs],
            "proofs": [json.loads(p.to_json()) for p in proofs],
        }
    ).encode()


def parse_result(data: bytes) -> list[Proof]:
    """The proofs of a proven job's result file (the outputs are read from the proofs, which
    are what was verified, never from the file's own ``outputs``)."""
    try:
        documents = json.loads(data)["proofs"]
        return [Proof.from_json(doc) for doc in documents]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProofError(f"not a proven job's result: {exc!r}") from exc
