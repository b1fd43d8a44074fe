"""Run Slither on the contracts, offline, compiled with the same settings as Ape.

Slither lives in a virtualenv of its own (`.venv/tools/slither`, made by `make setup`): its
web3 and eth-abi would clash with Ape's pins. Left alone, its compiler front end
(crytic-compile) wants a native solc, or downloads one; instead this script gives it a solc
standard-JSON input built from ape-config.yaml (the sources, optimizer, evm_version, via_ir,
and the OpenZeppelin remapping onto its local npm copy) and our solc-js wrapper as the
compiler. Detector settings and path filters are in slither.config.json. Any arguments are
passed on to slither (e.g. `--print human-summary`, `--show-ignored-findings`); the exit status
is slither's, non-zero on any finding that no `slither-disable` comment suppresses.
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped]  # no stubs in .venv; Ape brings PyYAML

ROOT = Path(__file__).resolve().parent.parent
SLITHER = ROOT / ".venv" / "tools" / "slither" / "bin" / "slither"


def standard_json(config: dict[str, Any]) -> dict[str, Any]:
    """The solc standard-JSON input that compiles `contracts_folder` as ape-solidity does."""
    solidity = config["solidity"]
    # Ape remaps onto "<name>/<version>" of a dependency; solc reads its local copy instead.
    local = {f"{d['name']}/{d['version']}": d["local"] for d in config["dependencies"]}
    remappings = []
    for remapping in solidity["import_remapping"]:
        prefix, target = remapping.split("=", 1)
        path = Path(local.get(target, target))
        if not (ROOT / path).is_dir():
            raise SystemExit(f"slither: remapping {remapping}: no folder {path}")
        remappings.append(f"{prefix}={path.as_posix()}")
    folder = ROOT / config["contracts_folder"]
    sources = sorted(p.relative_to(ROOT).as_posix() for p in folder.rglob("*.sol"))
    return {
        "language": "Solidity",
        "sources": {source: {"urls": [source]} for source in sources},
        "settings": {
            "remappings": remappings,
            "optimizer": {
                "enabled": solidity["optimizer_enabled"],
                "runs": solidity["optimization_runs"],
            },
            "evmVersion": solidity["evm_version"],
            "viaIR": solidity["via_ir"],
        },
    }


def main(args: list[str]) -> int:
    config = yaml.safe_load((ROOT / "ape-config.yaml").read_text())
    solc = Path(".venv") / "solcx" / f"solc-v{config['solidity']['version']}"
    for tool in (SLITHER, ROOT / solc):
        if not tool.exists():
            raise SystemExit(f"slither: {tool} is missing; run `make setup`")
    with tempfile.TemporaryDirectory(prefix="slither-") as tmp:
        target = Path(tmp) / "contracts.json"
        target.write_text(json.dumps(standard_json(config), indent=1))
        command = [str(SLITHER), str(target), "--compile-force-framework", "solc-json"]
        command += ["--solc", str(solc), *args]
        return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
