"""The deploy script's manifest is enough for plain web3.py to call every contract, and the
contracts end up owned by governance (the timelock), or by the deployer with --no-governance."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from web3 import Web3

from fabstir_devtools.chain import Anvil, anvil_account
from fabstir_sdk.contracts import ETH, Deployment

ROOT = Path(__file__).resolve().parents[1]
ABI_DIR = ROOT / "sdk" / "src" / "fabstir_sdk" / "contracts" / "abi"


OWNED = (
    "FabToken",
    "ModelRegistry",
    "NodeRegistry",
    "JobMarketplace",
    "ProofSystem",
    "JobBoard",
    "Slasher",
)


def deploy(anvil: Anvil, out_dir: Path, *flags: str) -> dict[str, Any]:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy.py"),
            "--rpc-url",
            anvil.url,
            "--out-dir",
            str(out_dir),
            "--json",
            *flags,
        ],
        check=True,
        capture_output=True,
        timeout=180,
    )
    (path,) = out_dir.glob("*.json")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def bind(w3: Web3, manifest: dict[str, Any]) -> Callable[[str], Any]:
    def contract(name: str) -> Any:
        abi = json.loads((ABI_DIR / f"{name}.json").read_text())["abi"]
        return w3.eth.contract(address=manifest["contracts"][name], abi=abi)

    return contract


def test_manifest_drives_plain_web3(anvil: Anvil, tmp_path: Path) -> None:
    manifest = deploy(anvil, tmp_path)
    w3 = Web3(Web3.HTTPProvider(anvil.url))
    contract = bind(w3, manifest)

    # Governance owns everything; the deployer holds the initial FAB votes and no other power.
    deployer = anvil_account(0).address
    timelock = manifest["contracts"]["FabTimelock"]
    for name in OWNED:
        assert contract(name).functions.owner().call() == timelock, name
    assert manifest["params"]["owner"] == timelock
    assert contract("JobMarketplace").functions.treasury().call() == timelock
    governor = contract("FabGovernor")
    assert governor.functions.timelock().call() == timelock
    assert governor.functions.token().call() == manifest["contracts"]["FabToken"]
    locks = contract("FabTimelock").functions
    assert locks.hasRole(locks.PROPOSER_ROLE().call(), governor.address).call()
    assert not locks.hasRole(locks.DEFAULT_ADMIN_ROLE().call(), deployer).call()
    fab = contract("FabToken")
    assert fab.functions.getVotes(deployer).call() == 1_000_000 * 10**18
    assert contract("NodeRegistry").functions.slasher().call() == manifest["contracts"]["Slasher"]

    assert fab.functions.symbol().call() == "FAB"
    assert contract("TestUSD").functions.decimals().call() == 6
    nodes = contract("NodeRegistry")
    assert nodes.functions.minStake().call() == manifest["params"]["minStake"]
    assert nodes.functions.stakeToken().call() == manifest["contracts"]["FabToken"]
    for escrow in ("JobMarketplace", "JobBoard"):
        assert nodes.functions.stakeLockers(manifest["contracts"][escrow]).call() is True
    board = contract("JobBoard")
    assert board.functions.proofSystem().call() == manifest["contracts"]["ProofSystem"]
    assert contract("ProofSystem").functions.board().call() == board.address
    assert board.functions.getTokenConfig(ETH).call()[0] is True
    market = contract("JobMarketplace")
    assert market.functions.feeBps().call() == 1000
    assert market.functions.getTokenConfig(ETH).call()[0] is True
    assert market.functions.nextSessionId().call() == 1
    assert manifest["deployBlock"] <= w3.eth.block_number
    # The SDK's loader accepts it: the build hash matches the exported ABIs.
    assert Deployment.load(tmp_path / "31337.json").contracts == manifest["contracts"]


def test_no_governance_keeps_a_single_owner(anvil: Anvil, tmp_path: Path) -> None:
    manifest = deploy(anvil, tmp_path, "--no-governance")
    contract = bind(Web3(Web3.HTTPProvider(anvil.url)), manifest)
    deployer = anvil_account(0).address
    assert "FabGovernor" not in manifest["contracts"]
    for name in OWNED:
        assert contract(name).functions.owner().call() == deployer, name


def test_a_public_chain_gets_production_parameters(tmp_path: Path) -> None:
    with Anvil() as chain:
        chain.w3.provider.make_request("anvil_setChainId", [8453])  # type: ignore[arg-type]
        key = tmp_path / "deployer.key"
        key.write_text(anvil_account(0).key.hex())
        key.chmod(0o600)
        manifest = deploy(chain, tmp_path, "--key-file", str(key))
        contract = bind(chain.w3, manifest)
        governor = contract("FabGovernor").functions
        assert governor.votingDelay().call() == 24 * 3600
        assert governor.votingPeriod().call() == 5 * 24 * 3600
        assert governor.proposalThreshold().call() == 10_000 * 10**18
        assert contract("FabTimelock").functions.getMinDelay().call() == 2 * 24 * 3600
        # Unbonding outlasts a slashing vote (1 + 5 + 2 days).
        assert contract("NodeRegistry").functions.unbondingDelay().call() == 14 * 24 * 3600
        assert "TestUSD" not in manifest["contracts"]


def test_deploy_refuses_real_chain_without_key(tmp_path: Path) -> None:
    with Anvil() as chain:
        chain.w3.provider.make_request("anvil_setChainId", [8453])  # type: ignore[arg-type]
        result = subprocess.run(
            [
                sys.executable,
                str(ROOT / "scripts" / "deploy.py"),
                "--rpc-url",
                chain.url,
                "--out-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/bin:/bin"},
        )
    assert result.returncode != 0
    assert "FABSTIR_DEPLOYER_KEY" in result.stderr
