"""Proving proven jobs (DESIGN §10): one EZKL proof per input row.

A proven model's circuit is pinned on chain (:class:`fabstir_sdk.proofs.CircuitPin`): the ONNX
file, EZKL's settings, the SRS and the verifying key, by sha256. The bundle a host downloads
carries the verifying key but not the proving key (tens of times larger), so
:meth:`Prover.prepare` compiles the circuit and runs EZKL's setup once, caches both, and checks
that the key it derived is the pinned one: setup is deterministic for one circuit and one SRS,
so any other key means other files, and every proof would be refused on chain.

A batch proof job is several rows, one proof each; the proofs are submitted together and
checked in one transaction (``JobBoard.submitProofs``). Proving is synchronous and uses every
core: the node calls it in a worker thread, and one proof runs at a time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Final

from fabstir_sdk.digests import file_sha256
from fabstir_sdk.proofs import (
    ONNX,
    SETTINGS,
    SRS,
    CircuitPin,
    Proof,
    ProofBundle,
    ProofError,
    ezkl_step,
    load_ezkl,
)

__all__ = ["EXAMPLE_MODEL", "Prover", "example_model"]

COMPILED: Final = "model.compiled"
PK: Final = "pk.key"
VK: Final = "vk.key"
#: The example proven model shipped with the node (``fabstir_devtools.proof_models``).
EXAMPLE_MODEL: Final = "risk_scorer.onnx"


def example_model() -> Path:
    """The path of the example proven model's ONNX file (a credit-risk scorer)."""
    return Path(str(resources.files("fabstir_node").joinpath("proof_models", EXAMPLE_MODEL)))


class Prover:
    """Proves rows of input for one pinned circuit, from its bundle.

    The compiled circuit and the proving key are cached under ``cache_dir`` in a directory
    named by the ONNX file's and the SRS's hashes, so a restarted node skips setup.
    """

    def __init__(self, bundle: ProofBundle, pin: CircuitPin, cache_dir: Path) -> None:
        self.bundle = bundle
        self.pin = pin
        self.directory = cache_dir / f"{pin.onnx_sha256.hex()}-{pin.srs_sha256.hex()[:16]}"
        # One EZKL call at a time: a proof takes every core and its own memory, so two at
        # once only take longer each; and two first prepares must not both run setup.
        self._lock = threading.Lock()
        self._ready = False

    # ----------------------------------------------------------------- setup

    def prepare(self) -> None:
        """Compile the circuit and derive the proving key, once (cached); raise
        :class:`ProofError` when the bundle's files are not the pinned ones or the derived
        verifying key is not the pinned key (the host would prove for another circuit)."""
        with self._lock:
            if self._ready:
                return
            self.bundle.check_files(self.pin)
            if not self._cached():
                self._setup()
            self._ready = True

    def _cached(self) -> bool:
        """A complete cache entry for this very circuit: its key is the pinned one (the same
        ONNX file and SRS with other settings is another circuit, in the same directory)."""
        files = [self.directory / name for name in (COMPILED, PK, VK)]
        return all(f.is_file() for f in files) and file_sha256(files[2]) == self.pin.vk_sha256

    def _setup(self) -> None:
        """Compile and run setup in a scratch directory, check the key, then move it into
        place: a crash halfway leaves no half-written cache entry behind."""
        ezkl = load_ezkl()
        self.directory.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".setup-", dir=self.directory.parent))
        try:
            ezkl_step(
                ezkl.compile_circuit, self.bundle.file(ONNX), scratch / COMPILED, self.settings
            )
            ezkl_step(ezkl.setup, scratch / COMPILED, scratch / VK, scratch / PK, self.srs)
            derived = file_sha256(scratch / VK)
            if derived != self.pin.vk_sha256:
                raise ProofError(
                    f"setup of {self.bundle.path} derived verifying key {derived.hex()}, but "
                    f"the model pins {self.pin.vk_sha256.hex()}: this host would prove for "
                    "another circuit (another EZKL version?), and every proof would be refused"
                )
            shutil.rmtree(self.directory, ignore_errors=True)
            os.replace(scratch, self.directory)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @property
    def settings(self) -> Path:
        return self.bundle.file(SETTINGS)

    @property
    def srs(self) -> Path:
        return self.bundle.file(SRS)

    # ----------------------------------------------------------------- proving

    def prove(self, rows: Sequence[Sequence[float]]) -> list[Proof]:
        """One proof per row (a witness, then a proof), in row order. Each proof's instances
        are the row's quantized values, then the model's outputs: what the job's input
        commitment and the verifier contract check. Slow (seconds per row): call it in a
        worker thread."""
        self.prepare()
        for i, row in enumerate(rows):
            if len(row) != self.pin.inputs:
                raise ProofError(
                    f"row {i} has {len(row)} values; the model takes {self.pin.inputs}"
                )
        ezkl = load_ezkl()
        with self._lock, tempfile.TemporaryDirectory(prefix="fabstir-prove-") as tmp:
            return [self._prove_row(ezkl, Path(tmp), i, row) for i, row in enumerate(rows)]

    def _prove_row(self, ezkl: Any, tmp: Path, i: int, row: Sequence[float]) -> Proof:
        data, witness, out = (
            tmp / f"input{i}.json",
            tmp / f"witness{i}.json",
            tmp / f"proof{i}.json",
        )
        data.write_text(json.dumps({"input_data": [[float(v) for v in row]]}))
        compiled = self.directory / COMPILED
        ezkl_step(ezkl.gen_witness, data, compiled, witness, self.directory / VK, self.srs)
        ezkl_step(ezkl.prove, witness, compiled, self.directory / PK, out, self.srs)
        proof = Proof.from_json(out.read_text())
        expected = self.pin.inputs + self.pin.outputs
        if len(proof.instances) != expected:
            raise ProofError(f"a proof has {len(proof.instances)} instances, not {expected}")
        return proof
