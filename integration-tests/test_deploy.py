"""The deploy script's manifest is enough for plain web3.py to call every contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from web3 import Web3

from fabstir_devtools.chain import Anvil, anvil_account
from fabstir_sdk.contracts import ETH, Deployment

ROOT = Path(__file__).resolve().parents[1]
ABI_DIR = ROOT / "sdk" / "src" / "fabstir_sdk" / "contracts" / "abi"


def test_manifest_drives_plain_web3(anvil: Anvil, tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy.py"),
            "--rpc-url",
            anvil.url,
            "--out-dir",
            str(tmp_path),
            "--json",
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    manifest = json.loads((tmp_path / "31337.json").read_text())
    w3 = Web3(Web3.HTTPProvider(anvil.url))

    def contract(name: str):  # type: ignore[no-untyped-def]
        abi = json.loads((ABI_DIR / f"{name}.json").read_text())["abi"]
        return w3.eth.contract(address=manifest["contracts"][name], abi=abi)

    owner = anvil_account(0).address
    assert contract("FabToken").functions.symbol().call() == "FAB"
    assert contract("TestUSD").functions.decimals().call() == 6
    assert contract("ModelRegistry").functions.owner().call() == owner
    nodes = contract("NodeRegistry")
    assert nodes.functions.minStake().call() == manifest["params"]["minStake"]
    assert nodes.functions.stakeToken().call() == manifest["contracts"]["FabToken"]
    earnings = contract("HostEarnings")
    for escrow in ("JobMarketplace", "JobBoard"):
        assert earnings.functions.creditors(manifest["contracts"][escrow]).call() is True
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
