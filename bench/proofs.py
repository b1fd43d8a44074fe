"""What proven jobs cost (DESIGN §10): the example model against one ten times its size.

For the example credit-risk scorer (178 parameters) and the same scorer 10x wider (1,762), each
with a freshly built bundle (test SRS):

1. bundle build time (settings, calibration, SRS, setup, verifier), and the host's setup
   (``Prover.prepare`` from an empty cache: compile + proving key), in a fresh interpreter;
2. proving time per row and the peak RSS (VmHWM) of proving, in a fresh interpreter that loads
   the cached key and proves (vs the peak of one that only imports EZKL: the baseline);
3. proof size and off-chain verification time (``verify_offchain``, median);
4. on-chain verification: gas of ``verifyProof`` (estimated on a fresh Anvil) against a plain
   ETH transfer (21,000, estimated in the same run), and the verifier's deployed bytecode
   against the EIP-170 limit (24,576 bytes).

EZKL's costs follow the circuit's domain (2^logrows rows), not the parameter count: the range
checks' lookup table (16,384 entries at EZKL's default decomposition) alone needs 2^15 rows, so
both models get the same domain, and the same proving time, proof size and gas, until a model
needs more than 2^15 rows.

    .venv/bin/python bench/proofs.py [--rows N] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.types import Wei

from fabstir_devtools.chain import Anvil, anvil_account
from fabstir_devtools.proof_models import (
    EIP170_LIMIT,
    VERIFIER_JSON,
    build_bundle,
    deploy_verifier,
    sample_rows,
    train_risk_scorer,
    train_wide_scorer,
)
from fabstir_node.prover import Prover
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.proofs import Proof, ProofBundle, verify_offchain

NO_VERIFIER = "0x" + "00" * 20
MODELS = {"risk_scorer": train_risk_scorer, "wide_risk_scorer": train_wide_scorer}
CALIBRATION_ROWS = 32
VERIFY_RUNS = 20
ETH_TRANSFER_GAS = 21_000


# --------------------------------------------------------------------------- the worker


def worker(task: str, bundle_dir: Path, cache: Path, rows: int, out: Path) -> None:
    """One measurement in this (fresh) interpreter; figures and proofs go to ``out``."""
    result: dict[str, Any] = {}
    if task != "baseline":
        bundle = ProofBundle(bundle_dir)
        prover = Prover(bundle, bundle.pin(NO_VERIFIER), cache)
        start = time.perf_counter()
        prover.prepare()  # "setup": from an empty cache; "prove": the cached key, no setup
        result["prepare_s"] = time.perf_counter() - start
    else:
        import ezkl  # noqa: F401  (the same imports as the others, and nothing done)
    if task == "prove":
        start = time.perf_counter()
        proofs = prover.prove(sample_rows(rows, seed=11))
        result["prove_s_per_row"] = (time.perf_counter() - start) / rows
        result["proofs"] = [p.to_json() for p in proofs]
    result["peak_rss_kib"] = peak_rss_kib()
    out.write_text(json.dumps(result))


def peak_rss_kib() -> int:
    """This process's peak RSS since it started. ``VmHWM`` is reset by exec; ``ru_maxrss``
    (the fallback off Linux) is not: it counts the forking parent's RSS too."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def in_subprocess(task: str, bundle: Path, cache: Path, rows: int, tmp: Path) -> dict[str, Any]:
    out = tmp / f"{task}-{bundle.name}.json"
    command = [sys.executable, __file__, "--worker", task, str(bundle), str(cache), str(rows)]
    subprocess.run([*command, str(out)], check=True, stderr=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


# --------------------------------------------------------------------------- the parent


def parameters(onnx_bytes: bytes) -> int:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    total = 0
    for tensor in model.graph.initializer:
        size = 1
        for d in tensor.dims:
            size *= d
        total += size
    return total


def measure(name: str, onnx_bytes: bytes, rows: int, tmp: Path) -> dict[str, Any]:
    source = tmp / f"{name}.onnx"
    source.write_bytes(onnx_bytes)
    start = time.perf_counter()
    bundle_dir = build_bundle(
        source, tmp / name, calibration_rows=sample_rows(CALIBRATION_ROWS), name=name
    )
    build_s = time.perf_counter() - start
    cache = tmp / f"{name}-cache"
    setup = in_subprocess("setup", bundle_dir, cache, rows, tmp)
    proving = in_subprocess("prove", bundle_dir, cache, rows, tmp)
    bundle = ProofBundle(bundle_dir)
    proofs = [Proof.from_json(doc) for doc in proving["proofs"]]
    verify_ms = []
    for _ in range(VERIFY_RUNS):
        start = time.perf_counter()
        if not verify_offchain(proofs[0], bundle):
            raise RuntimeError(f"{name}: a proof did not verify")
        verify_ms.append((time.perf_counter() - start) * 1000)
    return {
        "parameters": parameters(onnx_bytes),
        "onnx_bytes": len(onnx_bytes),
        "logrows": bundle.logrows,
        "circuit_rows": int(bundle.settings["num_rows"]),
        "bundle_build_s": build_s,
        "setup_s": setup["prepare_s"],
        "setup_peak_rss_mib": setup["peak_rss_kib"] / 1024,
        "prove_s_per_row": proving["prove_s_per_row"],
        "prove_peak_rss_mib": proving["peak_rss_kib"] / 1024,
        "proof_bytes": len(proofs[0].proof),
        "instances": len(proofs[0].instances),
        "verify_offchain_ms": statistics.median(verify_ms),
        "srs_bytes": bundle.file("kzg.srs").stat().st_size,
        "bundle_dir": bundle_dir,
        "proof": proofs[0],
    }


def onchain(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Deploy each verifier on one fresh Anvil; estimate verifyProof and a plain transfer."""
    with Anvil() as anvil:
        owner = TransactionSender(anvil.w3, anvil_account(0))
        transfer = anvil.w3.eth.estimate_gas(
            {"from": owner.address, "to": anvil_account(1).address, "value": Wei(1)}
        )
        for r in results.values():
            compiled = json.loads((r["bundle_dir"] / VERIFIER_JSON).read_text())
            address = deploy_verifier(owner, r["bundle_dir"])
            verifier = anvil.w3.eth.contract(
                address=Web3.to_checksum_address(address), abi=compiled["abi"]
            )
            proof: Proof = r["proof"]
            call = verifier.functions.verifyProof(proof.proof, proof.instances)
            if call.call() is not True:
                raise RuntimeError("the verifier contract refused a valid proof")
            r["verify_gas"] = call.estimate_gas({"from": owner.address})
            r["deploy_gas"] = owner.gas_used["deploy Halo2Verifier"]
            r["verifier_deployed_bytes"] = compiled["deployedSize"]
    return {"eth_transfer_gas": transfer}


def baseline_rss_mib(tmp: Path) -> float:
    """The peak RSS of a worker that imported what the others do (EZKL, web3, numpy) and
    did nothing else."""
    empty = tmp / "empty"
    empty.mkdir()
    return float(in_subprocess("baseline", empty, empty, 0, tmp)["peak_rss_kib"]) / 1024


def run(rows: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fabstir-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        results = {name: measure(name, train(), rows, tmp) for name, train in MODELS.items()}
        chain = onchain(results)
        baseline = baseline_rss_mib(tmp)
    for r in results.values():
        del r["bundle_dir"], r["proof"]
    return {
        "rows": rows,
        "models": results,
        "baseline_rss_mib": baseline,
        **chain,
        "eip170_limit": EIP170_LIMIT,
    }


def print_table(report: dict[str, Any]) -> None:
    small, large = report["models"]["risk_scorer"], report["models"]["wide_risk_scorer"]
    transfer, limit = report["eth_transfer_gas"], report["eip170_limit"]
    rows: list[tuple[str, str, str]] = [
        ("parameters", "parameters", ",.0f"),
        ("logrows", "logrows", ".0f"),
        ("circuit rows used (of 2^logrows)", "circuit_rows", ",.0f"),
        ("bundle build (s, incl. test SRS)", "bundle_build_s", ".2f"),
        ("host setup: compile + pk (s)", "setup_s", ".2f"),
        ("setup peak RSS (MiB)", "setup_peak_rss_mib", ".0f"),
        (f"prove per row (s, {report['rows']} rows)", "prove_s_per_row", ".2f"),
        ("prove peak RSS (MiB)", "prove_peak_rss_mib", ".0f"),
        ("proof size (bytes)", "proof_bytes", ",.0f"),
        ("verify off-chain (ms, median)", "verify_offchain_ms", ".1f"),
        ("verifyProof gas", "verify_gas", ",.0f"),
        ("verifier deploy gas", "deploy_gas", ",.0f"),
        ("verifier deployed bytes", "verifier_deployed_bytes", ",.0f"),
        ("SRS file (bytes)", "srs_bytes", ",.0f"),
    ]
    print(f"{'':36} {'risk_scorer':>14} {'wide (10x)':>14} {'wide/risk':>10}")
    for label, key, fmt in rows:
        a, b = small[key], large[key]
        print(f"{label:36} {a:>14{fmt}} {b:>14{fmt}} {b / a:>9.2f}x")
    base = report["baseline_rss_mib"]
    print(f"baseline: a worker that only imports (ezkl, web3, numpy) peaks at {base:.0f} MiB RSS")
    for name, r in (("risk_scorer", small), ("wide (10x)", large)):
        print(
            f"{name}: verifyProof = {r['verify_gas'] / transfer:.1f}x a plain ETH transfer "
            f"({transfer:,} gas); verifier = {r['verifier_deployed_bytes'] / limit:.1%} of "
            f"EIP-170 ({limit:,} bytes); proving takes {r['prove_peak_rss_mib'] - base:.0f} MiB "
            f"over the baseline ({r['prove_peak_rss_mib'] / base:.1f}x)"
        )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        task, bundle, cache, rows, out = sys.argv[2:7]
        worker(task, Path(bundle), Path(cache), int(rows), Path(out))
        return 0
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=4, help="rows proven per model [4]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    report = run(args.rows)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
