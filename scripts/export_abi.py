"""Export the compiled ABIs (and creation bytecode) from Ape's build into the SDK package.

Run after `ape compile` (`make abi` does both). `--check` exits 1 when the exported files are
stale, without writing anything.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fabstir_sdk.contracts.artifacts import render_artifacts

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / ".build" / "__local__.json"
ABI_DIR = ROOT / "sdk" / "src" / "fabstir_sdk" / "contracts" / "abi"


def expected_files(build: Path = BUILD) -> dict[str, str]:
    manifest = json.loads(build.read_text())
    solc = manifest["compilers"][0]["version"]
    return render_artifacts(manifest["contractTypes"], solc)


def stale_files(build: Path = BUILD, abi_dir: Path = ABI_DIR) -> list[str]:
    """Names of exported files that differ from (or are missing for) the current build."""
    return [
        name
        for name, text in expected_files(build).items()
        if not (abi_dir / name).exists() or (abi_dir / name).read_text() != text
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale files")
    args = parser.parse_args()
    if not BUILD.exists():
        print("no build found: run `ape compile` (or `make abi`) first", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files()
        for name in stale:
            print(f"stale: {name}", file=sys.stderr)
        return 1 if stale else 0
    ABI_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in expected_files().items():
        (ABI_DIR / name).write_text(text)
        print(f"wrote {(ABI_DIR / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
