"""Proven models for development: the example model, its circuit bundle and its registration.

The example that ships with the node (``fabstir_node/proof_models/risk_scorer.onnx``) is a
small credit-risk scorer: 8 numeric features of a loan applicant, one hidden layer of 16 ReLU
units, 2 logits (repaid, defaulted); 178 parameters. It is trained here with plain numpy on
synthetic applicants, deterministically, so the file in the repository is reproducible byte for
byte (``train_risk_scorer()``; the node's tests check it). ``train_wide_scorer()`` is the same
with 160 hidden units (1,762 parameters, ~10x) for ``bench/proofs.py``.

:func:`build_bundle` turns an ONNX file into a circuit bundle (:data:`fabstir_sdk.proofs.
BUNDLE_FILES`) plus its Solidity verifier, compiled with the repository's solc-js;
:func:`register_proven_model` deploys that verifier and pins the bundle in the ModelRegistry.

    .venv/bin/python -m fabstir_devtools.proof_models --out risk_scorer.onnx
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from fabstir_sdk.contracts.deployment import Deployment
from fabstir_sdk.contracts.transactions import TransactionFailed, TransactionSender
from fabstir_sdk.digests import file_sha256
from fabstir_sdk.proofs import (
    MANIFEST,
    ONNX,
    SETTINGS,
    SRS,
    SRS_TEST,
    SRS_TRUSTED,
    VK,
    ProofBundle,
    ProofError,
    ezkl_step,
    load_ezkl,
)

Floats = npt.NDArray[np.float64]

#: The applicant's features, each standardized (mean 0, standard deviation 1) and clipped to
#: [-3, 3]: what a lender would feed after its own normalization.
FEATURES: Final = (
    "income",
    "debt_to_income",
    "credit_utilization",
    "late_payments",
    "credit_history_years",
    "recent_inquiries",
    "loan_to_income",
    "employment_years",
)
#: The data-generating rule: an applicant defaults when
#: ``RULE_WEIGHTS . x + INTERACTION * utilization * late_payments + RULE_BIAS + noise > 0``,
#: with logistic noise of scale ``NOISE`` (about a third of applicants default; the rule itself
#: is right for ~89% of them, the most any model can be).
RULE_WEIGHTS: Final = (-0.8, 1.0, 0.9, 1.2, -0.6, 0.5, 0.7, -0.4)
INTERACTION: Final = 0.6
RULE_BIAS: Final = -1.0
NOISE: Final = 0.5
TRAIN_SEED: Final = 0
TRAIN_SAMPLES: Final = 4096
EPOCHS: Final = 400
LEARNING_RATE: Final = 0.1
MOMENTUM: Final = 0.9
#: Weights are rounded to multiples of 2^-10: the file's bytes then do not depend on the last
#: bits of a BLAS sum, and EZKL's fixed point (scales of 2^10 and more) represents them exactly.
WEIGHT_GRID: Final = 1024
RISK_HIDDEN: Final = 16
WIDE_HIDDEN: Final = 160
#: EIP-170: the largest contract code an EVM chain accepts.
EIP170_LIMIT: Final = 24_576
VERIFIER_CONTRACT: Final = "Halo2Verifier"
VERIFIER_SOL: Final = "Verifier.sol"
VERIFIER_JSON: Final = "verifier.json"
#: solc settings for the verifier: the optimizer tuned for size (it is mostly assembly that
#: calls the pairing precompiles) and the EVM of current chains.
SOLC_SETTINGS: Final[dict[str, Any]] = {
    "optimizer": {"enabled": True, "runs": 1},
    "evmVersion": "prague",
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
#: Compiles the standard-JSON input on stdin with the solc-js at argv[1].
SOLCJS_SCRIPT: Final = """
const solc = require(process.argv[1]);
let input = '';
process.stdin.on('data', (d) => { input += d; });
process.stdin.on('end', () => {
  const output = JSON.parse(solc.compile(input));
  process.stdout.write(JSON.stringify({version: solc.version(), output}));
});
"""


# --------------------------------------------------------------------------- the data


def synthetic_applicants(n: int, seed: int) -> tuple[Floats, npt.NDArray[np.int64]]:
    """``n`` applicants' features and whether each defaulted (1), by the documented rule."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.standard_normal((n, len(FEATURES))), -3.0, 3.0)
    z = x @ np.array(RULE_WEIGHTS) + INTERACTION * x[:, 2] * x[:, 3] + RULE_BIAS
    y = (z + rng.logistic(scale=NOISE, size=n) > 0).astype(np.int64)
    return x, y


def sample_rows(n: int, seed: int = 1) -> list[list[float]]:
    """``n`` applicants' feature rows (for calibration, tests and benches)."""
    x, _ = synthetic_applicants(n, seed)
    return [[float(v) for v in row] for row in x]


# --------------------------------------------------------------------------- training


def _init(hidden: int, seed: int) -> list[Floats]:
    """He-initialized weights, zero biases: [W1 (8 x hidden), b1, W2 (hidden x 2), b2]."""
    rng = np.random.default_rng(seed + 100)
    n_in = len(FEATURES)
    return [
        rng.standard_normal((n_in, hidden)) * math.sqrt(2 / n_in),
        np.zeros(hidden),
        rng.standard_normal((hidden, 2)) * math.sqrt(2 / hidden),
        np.zeros(2),
    ]


def _gradients(params: list[Floats], x: Floats, onehot: Floats) -> list[Floats]:
    """Gradients of the mean softmax cross-entropy (full batch, backpropagation by hand)."""
    w1, b1, w2, b2 = params
    h = x @ w1 + b1
    r = np.maximum(h, 0.0)
    logits = r @ w2 + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    g = (p - onehot) / len(x)
    dh = (g @ w2.T) * (h > 0)
    return [x.T @ dh, dh.sum(axis=0), r.T @ g, g.sum(axis=0)]


def train_mlp(hidden: int, *, seed: int = TRAIN_SEED) -> list[npt.NDArray[np.float32]]:
    """Train 8 -> ``hidden`` ReLU -> 2 by gradient descent with momentum on the synthetic
    applicants; weights rounded to the :data:`WEIGHT_GRID`, as float32."""
    x, y = synthetic_applicants(TRAIN_SAMPLES, seed)
    onehot = np.eye(2)[y]
    params = _init(hidden, seed)
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(EPOCHS):
        for i, grad in enumerate(_gradients(params, x, onehot)):
            velocity[i] = MOMENTUM * velocity[i] - LEARNING_RATE * grad
            params[i] = params[i] + velocity[i]
    return [(np.round(p * WEIGHT_GRID) / WEIGHT_GRID).astype(np.float32) for p in params]


def accuracy(params: Sequence[npt.NDArray[np.float32]], *, seed: int = 7, n: int = 4096) -> float:
    """The share of held-out synthetic applicants the model classifies right."""
    x, y = synthetic_applicants(n, seed)
    w1, b1, w2, b2 = (p.astype(np.float64) for p in params)
    logits = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
    return float((logits.argmax(axis=1) == y).mean())


def mlp_onnx(params: Sequence[npt.NDArray[np.float32]], name: str) -> bytes:
    """The MLP as ONNX (opset 13, IR version 8: what EZKL reads): ``features`` [1, 8] ->
    Gemm -> Relu -> Gemm -> ``logits`` [1, 2]. Deterministic bytes for the same weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = params
    nodes = [
        helper.make_node("Gemm", ["features", "W1", "b1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["relu"]),
        helper.make_node("Gemm", ["relu", "W2", "b2"], ["logits"]),
    ]
    initializers = [
        numpy_helper.from_array(array, label)
        for array, label in ((w1, "W1"), (b1, "b1"), (w2, "W2"), (b2, "b2"))
    ]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, len(FEATURES)])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 2])],
        initializers,
        doc_string=f"features: {', '.join(FEATURES)} (standardized); logits: repaid, defaulted",
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 13)],
        producer_name="fabstir-devtools",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


#: The two scorers: name -> hidden units.
SCORERS: Final = {"risk_scorer": RISK_HIDDEN, "wide_risk_scorer": WIDE_HIDDEN}


def train_risk_scorer() -> bytes:
    """The example model's ONNX bytes (the node ships them as ``risk_scorer.onnx``)."""
    return mlp_onnx(train_mlp(RISK_HIDDEN), "risk_scorer")


def train_wide_scorer() -> bytes:
    """The same scorer with ~10x the parameters (160 hidden units), for the bench."""
    return mlp_onnx(train_mlp(WIDE_HIDDEN), "wide_risk_scorer")


# --------------------------------------------------------------------------- the bundle


def build_bundle(
    onnx_path: Path,
    out_dir: Path,
    *,
    calibration_rows: Sequence[Sequence[float]],
    srs: Path | None = None,
    name: str | None = None,
) -> Path:
    """Write the circuit bundle of ``onnx_path`` into ``out_dir`` and return it: EZKL's
    settings (public inputs and outputs, weights fixed in the circuit, calibrated for
    ``calibration_rows``), the SRS, the verifying key, the manifest, and the verifier contract
    (``Verifier.sol`` and ``verifier.json``: abi, bytecode, deployedSize).

    ``srs`` is a trusted SRS file (from a public ceremony, ``ezkl get-srs``), copied in; without
    it a TEST SRS is generated here, which whoever ran this could forge proofs with: the
    manifest says ``"srs": "test"`` and only local chains accept such a bundle. The proving key
    is not kept: hosts derive it from these files (``fabstir_node.prover.Prover``)."""
    ezkl = load_ezkl()
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, out_dir / ONNX)
    with tempfile.TemporaryDirectory(prefix="fabstir-bundle-") as tmp_dir:
        tmp = Path(tmp_dir)
        settings = _settings(ezkl, out_dir, tmp, calibration_rows)
        logrows = int(settings["run_args"]["logrows"])
        if srs is None:
            ezkl_step(ezkl.gen_srs, out_dir / SRS, logrows)
        else:
            shutil.copyfile(srs, out_dir / SRS)
        compiled = tmp / "model.compiled"
        ezkl_step(ezkl.compile_circuit, out_dir / ONNX, compiled, out_dir / SETTINGS)
        ezkl_step(ezkl.setup, compiled, out_dir / VK, tmp / "pk.key", out_dir / SRS)
        _write_verifier(ezkl, out_dir, tmp)
    n_inputs = len(settings["model_input_scales"])
    shapes = settings["model_instance_shapes"]
    manifest = {
        "name": name or onnx_path.stem,
        "inputs": sum(math.prod(s) for s in shapes[:n_inputs]),
        "outputs": sum(math.prod(s) for s in shapes[n_inputs:]),
        "logrows": logrows,
        "srs": SRS_TEST if srs is None else SRS_TRUSTED,
        "ezkl": str(settings.get("version", "")),
        "sha256": {f: file_sha256(out_dir / f).hex() for f in (ONNX, SETTINGS, VK, SRS)},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return out_dir


def _settings(
    ezkl: Any, out_dir: Path, tmp: Path, rows: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """Generate and calibrate the settings: inputs and outputs public (they are the job's
    data), parameters fixed (the weights are part of the circuit, so the verifying key pins
    them), scales and logrows chosen for the fewest resources on ``rows``."""
    if not rows:
        raise ProofError("calibration needs at least one row")
    args = ezkl.PyRunArgs()
    args.input_visibility = "public"
    args.output_visibility = "public"
    args.param_visibility = "fixed"
    model, settings = out_dir / ONNX, out_dir / SETTINGS
    calibration = tmp / "calibration.json"
    calibration.write_text(json.dumps({"input_data": [[float(v) for r in rows for v in r]]}))
    try:
        ezkl.gen_settings(str(model), str(settings), py_run_args=args)
        ezkl.calibrate_settings(str(calibration), str(model), str(settings), "resources")
    except RuntimeError as exc:
        raise ProofError(f"ezkl could not build settings for {model}: {exc}") from exc
    loaded: dict[str, Any] = json.loads(settings.read_text())
    return loaded


def _write_verifier(ezkl: Any, out_dir: Path, tmp: Path) -> None:
    """EZKL writes the verifier's Solidity, then tries to download solc to compile it (which
    fails offline): the source is what we keep, compiled with the repository's solc-js."""
    sol = out_dir / VERIFIER_SOL
    sol.unlink(missing_ok=True)

    async def generate() -> Any:
        return await ezkl.create_evm_verifier(
            str(out_dir / VK),
            str(out_dir / SETTINGS),
            str(sol),
            str(tmp / "abi.json"),
            str(out_dir / SRS),
        )

    # In a thread of its own: asyncio.run works even when the caller is inside an event loop.
    with ThreadPoolExecutor(1) as pool:
        error = pool.submit(_run_quietly, generate).result()
    if not sol.is_file():
        raise ProofError(f"ezkl did not write the verifier contract: {error}")
    compiled = compile_verifier(sol)
    (out_dir / VERIFIER_JSON).write_text(json.dumps(compiled, indent=1, sort_keys=True) + "\n")


def _run_quietly(factory: Any) -> BaseException | None:
    """Run the coroutine ``factory()`` returns; its exception is returned, not raised."""
    try:
        asyncio.run(factory())
    except Exception as exc:
        return exc
    return None


# --------------------------------------------------------------------------- the verifier


def find_solcjs() -> Path:
    """solc-js: ``$FABSTIR_SOLCJS``, or ``node_modules/solc`` above this package (installed by
    ``make setup`` with Anvil, see ``fabstir_devtools.chain.find_anvil``)."""
    if env := os.environ.get("FABSTIR_SOLCJS"):
        return Path(env)
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "node_modules" / "solc"
        if (candidate / "package.json").exists():
            return candidate
    raise FileNotFoundError("solc-js not found: run `make setup` or set FABSTIR_SOLCJS")


def compile_verifier(sol: Path) -> dict[str, Any]:
    """Compile EZKL's verifier with solc-js (through ``node``): ``{contractName, abi, bytecode,
    deployedSize, solc}``. Raise when the deployed code is over the EIP-170 limit, which every
    EVM chain enforces (a local chain may be told not to: never rely on that)."""
    node = shutil.which("node")
    if node is None:
        raise FileNotFoundError("node (Node.js) not found: solc-js runs on it")
    request = {
        "language": "Solidity",
        "sources": {sol.name: {"content": sol.read_text()}},
        "settings": SOLC_SETTINGS,
    }
    done = subprocess.run(
        [node, "-e", SOLCJS_SCRIPT, str(find_solcjs())],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ProofError(f"solc-js failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    output = result["output"]
    errors = [e["formattedMessage"] for e in output.get("errors", []) if e["severity"] == "error"]
    if errors:
        raise ProofError("the verifier does not compile:\n" + "\n".join(errors))
    contract = output["contracts"][sol.name][VERIFIER_CONTRACT]
    deployed = len(contract["evm"]["deployedBytecode"]["object"]) // 2
    if deployed > EIP170_LIMIT:
        raise ProofError(
            f"the verifier's deployed code is {deployed:,} bytes, over the EIP-170 limit of "
            f"{EIP170_LIMIT:,} bytes that every EVM chain enforces: make the circuit smaller"
        )
    return {
        "contractName": VERIFIER_CONTRACT,
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
        "deployedSize": deployed,
        "solc": result["version"],
    }


def deploy_verifier(owner: TransactionSender, bundle_dir: Path) -> str:
    """Deploy the bundle's compiled verifier from ``owner``; returns its address."""
    compiled = json.loads((bundle_dir / VERIFIER_JSON).read_text())
    factory = owner.w3.eth.contract(abi=compiled["abi"], bytecode=compiled["bytecode"])
    tx = factory.constructor().build_transaction({"from": owner.address, "gas": 1})
    # Our sender sets gas, nonce, sender and chain id itself (`gas: 1` only skips web3's
    # estimate here).
    tx = {k: v for k, v in dict(tx).items() if k not in ("gas", "nonce", "from", "chainId")}
    receipt = owner.send(tx, f"deploy {VERIFIER_CONTRACT}")
    address = receipt["contractAddress"]
    if address is None:
        raise TransactionFailed(f"deploy {VERIFIER_CONTRACT}", receipt)
    return str(address)


def register_proven_model(
    owner: TransactionSender, deployment: Deployment, bundle_dir: Path, repo: str, file: str
) -> bytes:
    """Deploy the bundle's verifier and pin the bundle in the ModelRegistry (owner only) as
    the proven model ``file`` in ``repo``; returns its id. A bundle with a test SRS is refused
    off a local chain: proofs for it could be forged."""
    bundle = ProofBundle(bundle_dir)
    bundle.check_srs(owner.chain_id)  # a test SRS off a local chain: says how to load a trusted one
    pin = bundle.pin(verifier=deploy_verifier(owner, bundle_dir))
    models = deployment.contract(owner.w3, "ModelRegistry")
    call = models.functions.addProvenModel(repo, file, pin.onnx_sha256, pin.circuit_tuple())
    owner.transact(call, f"addProvenModel {file}")
    return bytes(models.functions.modelIdOf(repo, file).call())


# --------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the example proven model (ONNX).")
    parser.add_argument("--out", type=Path, required=True, help="where to write the ONNX file")
    parser.add_argument("--wide", action="store_true", help="the ~10x wider bench model")
    args = parser.parse_args(argv)
    name = "wide_risk_scorer" if args.wide else "risk_scorer"
    params = train_mlp(SCORERS[name])
    data = mlp_onnx(params, name)
    args.out.write_bytes(data)
    print(
        f"{args.out}: {sum(p.size for p in params)} parameters, held-out accuracy "
        f"{accuracy(params):.3f}, sha256 {hashlib.sha256(data).hexdigest()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
