"""`make demo`, the README's first command, runs to a receipt that adds up to the wei."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]


def test_demo_prints_an_exact_receipt_and_cleans_up() -> None:
    result = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=ROOT / "scripts",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Paris" in result.stdout
    receipt = result.stdout[result.stdout.index("Receipt") :]
    assert " OK" in receipt and "withdrawn: yes" in receipt
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "fabstir_node" in (p.info["cmdline"] or []) and "run" in p.info["cmdline"]
    ]
    assert leftovers == []  # every host process it started is gone
