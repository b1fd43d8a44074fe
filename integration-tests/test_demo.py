"""`make demo`, the README's first command, runs to a receipt that adds up to the wei."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_an_exact_receipt_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=ROOT / "scripts",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout
    receipt = result.stdout[result.stdout.index("Receipt") :]
    assert " OK" in receipt and "withdrawn: yes" in receipt
    leftovers = subprocess.run(["pgrep", "-f", "fabstir_node run"], capture_output=True)
    assert leftovers.stdout.strip() == b""  # every host process it started is gone
