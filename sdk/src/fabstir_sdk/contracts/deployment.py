"""Where the contracts live on a chain: ``deployments/<chainId>.json``, written by deploy.py."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract

from fabstir_sdk.contracts.artifacts import build_hash, load_artifact
from fabstir_sdk.errors import ConfigurationError

ETH = "0x0000000000000000000000000000000000000000"


class DeploymentError(ConfigurationError):
    """The deployment file is missing, malformed or does not match this SDK's ABIs."""


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    contracts: dict[str, str]
    deploy_block: int
    build_hash: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path, *, check_build: bool = True) -> Deployment:
        """Read a manifest; refuse one deployed from other ABIs unless ``check_build`` is off."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
            deployment = cls(
                chain_id=int(data["chainId"]),
                contracts={k: Web3.to_checksum_address(v) for k, v in data["contracts"].items()},
                deploy_block=int(data["deployBlock"]),
                build_hash=str(data["buildHash"]),
                params=dict(data.get("params", {})),
            )
        except FileNotFoundError as exc:
            raise DeploymentError(f"no deployment at {path}: run `make deploy` first") from exc
        except (KeyError, ValueError, TypeError) as exc:
            raise DeploymentError(f"malformed deployment file {path}: {exc}") from exc
        if check_build and deployment.build_hash != build_hash():
            raise DeploymentError(
                f"{path} was deployed from build {deployment.build_hash}, but this SDK carries "
                f"{build_hash()}: redeploy (`make deploy`) or upgrade the SDK"
            )
        return deployment

    def save(self, path: str | Path) -> None:
        data = asdict(self)
        manifest = {
            "chainId": data["chain_id"],
            "contracts": data["contracts"],
            "deployBlock": data["deploy_block"],
            "buildHash": data["build_hash"],
            "params": data["params"],
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    def contract(self, w3: Web3, name: str) -> Contract:
        """A web3 contract object for ``name`` at its deployed address."""
        if name not in self.contracts:
            raise DeploymentError(f"{name} is not part of this deployment")
        address = Web3.to_checksum_address(self.contracts[name])
        return w3.eth.contract(address=address, abi=load_artifact(name).abi)
