"""Compiled contract artifacts (ABI + creation bytecode) exported from Ape's build.

``scripts/export_abi.py`` writes them into ``abi/`` with :func:`render_artifacts`; the contract
suite fails when the exported files differ from a fresh compile, so the SDK and the node can
never talk to contracts with a stale ABI.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

#: The contracts the SDK and the node bind to. TestUSD and MinimalAccount (a test ERC-4337
#: account, for smart-account sessions on a local chain) are deployed on local chains only.
EXPORTED = (
    "FabToken",
    "TestUSD",
    "MinimalAccount",
    "ModelRegistry",
    "NodeRegistry",
    "JobMarketplace",
    "ProofSystem",
    "JobBoard",
    "ReputationSystem",
    "Slasher",
    "FabTimelock",
    "FabGovernor",
)
BUILD_FILE = "build.json"


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True) + "\n"


def render_artifacts(contract_types: dict[str, Any], solc_version: str) -> dict[str, str]:
    """File name -> file text for the exported artifacts, from Ape's ``contractTypes``."""
    files: dict[str, str] = {}
    for name in EXPORTED:
        ct = contract_types[name]
        bytecode = ct["deploymentBytecode"]["bytecode"]
        files[f"{name}.json"] = _dump(
            {"contractName": name, "abi": ct["abi"], "bytecode": bytecode}
        )
    digest = hashlib.sha256("".join(files[k] for k in sorted(files)).encode()).hexdigest()
    files[BUILD_FILE] = _dump({"buildHash": "0x" + digest, "solc": solc_version})
    return files


def _read(name: str) -> Any:
    return json.loads(resources.files("fabstir_sdk.contracts").joinpath("abi", name).read_text())


@cache
def load_artifact(name: str) -> Artifact:
    """The exported ABI and creation bytecode of contract ``name``."""
    data = _read(f"{name}.json")
    return Artifact(name, data["abi"], data["bytecode"])


@cache
def build_hash() -> str:
    """Identifies the exported build; deployments record it to catch ABI/address mismatches."""
    return str(_read(BUILD_FILE)["buildHash"])


@cache
def _custom_errors() -> dict[str, str]:
    """4-byte selector (0x hex) -> ``Name(type,...)`` for every error our contracts declare."""
    from eth_utils.crypto import keccak

    errors: dict[str, str] = {}
    for name in EXPORTED:
        for item in load_artifact(name).abi:
            if item.get("type") == "error":
                signature = f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
                errors["0x" + keccak(text=signature)[:4].hex()] = signature
    return errors


def custom_error_name(data: str) -> str | None:
    """The name of the custom error whose revert data is ``data`` (``0x`` + selector + args),
    for messages a person reads; None for a selector none of our contracts declares."""
    return _custom_errors().get(data[:10].lower())
