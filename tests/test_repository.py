"""`ape test` typed at the repository root (no path) is the contract suite, as the README says."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ape_test_at_the_root_collects_the_contract_suite() -> None:
    ape = Path(sys.executable).with_name("ape")
    result = subprocess.run(
        [str(ape), "test", "--collect-only", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "ERROR " not in out and "errors during collection" not in out, out[-3000:]
    collected = [line for line in result.stdout.splitlines() if "::" in line]
    assert collected, out[-3000:]
    outside = [line for line in collected if not line.startswith("tests/")]
    assert not outside, f"`ape test` collects more than tests/: {outside[:5]}"
    assert any(line.startswith("tests/test_repository.py::") for line in collected)
