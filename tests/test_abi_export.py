"""The ABIs exported into the SDK must match what the contracts compile to right now."""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from export_abi import stale_files


def test_exported_abis_are_current(project: Any) -> None:
    project.load_contracts()  # compiles when sources changed, refreshing .build/
    stale = stale_files()
    assert not stale, f"exported ABIs are stale ({', '.join(stale)}): run `make abi`"
