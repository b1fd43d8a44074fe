"""Every external function of our contracts is documented, and every source pins the compiler.

The NatSpec is read from what solc emits (Ape's compiled contract types): the userdoc's
`notice`, and the devdoc's `params` and `returns`, per ABI signature. A contract's ABI also
lists what it inherits, so each function is checked only in the contract whose source file
declares it: an inherited function of ours is checked once, via its own contract, and
OpenZeppelin's (whose docs we don't own) not at all. Public state variables' getters need no
more than they have, and an abstract contract's constructor is not in its ABI, so unchecked.
Test contracts (`contracts/test/`) are exempt from the NatSpec rule.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ethpm_types import ContractType
from ethpm_types.abi import ConstructorABI, MethodABI

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = ROOT / "contracts"

COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
DECLARED = re.compile(r"\bfunction\s+(\w+)\s*\(|\b(constructor)\s*\(")
PRAGMA = re.compile(r"^\s*pragma\s+solidity\s+([^;]*);", re.MULTILINE)


def _documented(source_id: str) -> bool:
    return source_id.startswith("contracts/") and not source_id.startswith("contracts/test/")


def _declared(source_id: str) -> set[str]:
    """The functions (and `constructor`) a source file declares, comments left out."""
    code = COMMENT.sub("", (ROOT / source_id).read_text())
    return {m.group(1) or m.group(2) for m in DECLARED.finditer(code)}


def _gaps(ct: ContractType) -> list[str]:
    """What is missing from the NatSpec of the functions `ct`'s own source declares."""
    assert ct.source_id is not None
    declared = _declared(ct.source_id)
    notices: dict[str, Any] = ct.userdoc.get("methods", {}) if ct.userdoc else {}
    devdocs: dict[str, Any] = ct.devdoc.get("methods", {}) if ct.devdoc else {}
    gaps: list[str] = []
    for abi in ct.abi:
        if isinstance(abi, ConstructorABI) and "constructor" in declared:
            key, outputs = "constructor", []
        elif isinstance(abi, MethodABI) and abi.name in declared:
            key, outputs = abi.selector, abi.outputs
            if not notices.get(key, {}).get("notice"):
                gaps.append(f"{ct.name}.{key}: no @notice")
        else:
            continue
        doc = devdocs.get(key, {})
        gaps += [
            f"{ct.name}.{key}: no @param {param.name or '(unnamed)'}"
            for param in abi.inputs
            if not param.name or param.name not in doc.get("params", {})
        ]
        if (documented := len(doc.get("returns", {}))) != len(outputs):
            gaps.append(f"{ct.name}.{key}: {documented} @return for {len(outputs)} return values")
    return gaps


def test_every_external_function_is_documented(project: Any) -> None:
    contract_types = [
        container.contract_type
        for container in project.load_contracts().values()  # compiles when sources changed
        if _documented(container.contract_type.source_id or "")
    ]
    sources = {str(p.relative_to(ROOT)) for p in CONTRACTS.rglob("*.sol")}
    assert {ct.source_id for ct in contract_types} == {s for s in sources if _documented(s)}
    gaps = [gap for ct in contract_types for gap in _gaps(ct)]
    assert not gaps, "incomplete NatSpec:\n" + "\n".join(gaps)


def test_every_source_pins_the_compiler(project: Any) -> None:
    solc = str(project.config.solidity.version)  # ape-config.yaml's
    sources = sorted(CONTRACTS.rglob("*.sol"))
    assert sources
    unpinned = [
        f"{path.relative_to(ROOT)}: {pragmas}"
        for path in sources
        if (pragmas := PRAGMA.findall(path.read_text())) != [solc]
    ]
    assert not unpinned, f"pragma is not exactly `pragma solidity {solc};`: {unpinned}"
