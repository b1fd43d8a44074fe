import json
from pathlib import Path

import pytest

from fabstir_sdk.contracts import Deployment, DeploymentError, build_hash, load_artifact
from fabstir_sdk.contracts.artifacts import EXPORTED


def test_every_exported_artifact_loads() -> None:
    for name in EXPORTED:
        artifact = load_artifact(name)
        assert artifact.abi and artifact.bytecode.startswith("0x")
    assert build_hash().startswith("0x") and len(build_hash()) == 66


def test_round_trip(tmp_path: Path) -> None:
    d = Deployment(31337, {"JobMarketplace": "0x" + "ab" * 20}, 1, build_hash(), {"feeBps": 1})
    d.save(tmp_path / "31337.json")
    loaded = Deployment.load(tmp_path / "31337.json")
    assert loaded.contracts["JobMarketplace"].lower() == "0x" + "ab" * 20
    assert loaded.chain_id == 31337 and loaded.params == {"feeBps": 1}


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(DeploymentError, match="make deploy"):
        Deployment.load(tmp_path / "1.json")


def test_malformed_file(tmp_path: Path) -> None:
    (tmp_path / "1.json").write_text(json.dumps({"chainId": 1}))
    with pytest.raises(DeploymentError, match="malformed"):
        Deployment.load(tmp_path / "1.json")


def test_refuses_another_build(tmp_path: Path) -> None:
    Deployment(1, {}, 1, "0x" + "00" * 32).save(tmp_path / "1.json")
    with pytest.raises(DeploymentError, match="redeploy"):
        Deployment.load(tmp_path / "1.json")
    assert Deployment.load(tmp_path / "1.json", check_build=False).chain_id == 1
