"""The `fabstir` CLI's exit codes for everything that fails before a host is involved: usage
(2), configuration (4) and an unreachable chain (5). No host available (3) and a host failure
(1) need a chain and a host: integration-tests/test_exit_codes.py."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fabstir_sdk.cli import main
from fabstir_sdk.contracts import Deployment, build_hash
from fabstir_sdk.contracts.artifacts import EXPORTED

KEY = "0x" + "11" * 32
MODEL = "smollm2-135m-instruct"


def fabstir(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    """Run the CLI in-process: (exit status, everything it printed)."""
    environment: dict[str, str | None] = {
        "FABSTIR_KEY": KEY,
        "FABSTIR_KEY_FILE": None,
        "FABSTIR_RPC_URL": None,
        "FABSTIR_DEPLOYMENT": None,
        "FABSTIR_PROFILE": None,
        **(env or {}),
    }
    result = CliRunner().invoke(main, list(args), env=environment)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a traceback is never an answer: let the test show it
    return result.exit_code, result.output


def dead_rpc() -> str:
    """An RPC URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def deployment(tmp_path: Path) -> Path:
    """A well-formed manifest for this SDK's build (its addresses hold nothing)."""
    path = tmp_path / "31337.json"
    contracts = {name: "0x" + f"{i + 1:02x}" * 20 for i, name in enumerate(EXPORTED)}
    Deployment(31337, contracts, 1, build_hash()).save(path)
    return path


def key_file(tmp_path: Path, text: str = KEY, mode: int = 0o600) -> Path:
    path = tmp_path / "wallet.key"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- 2: usage


def test_an_unknown_model_is_a_usage_error_before_any_chain_access() -> None:
    # No deployment, no RPC: the model name is checked first.
    code, out = fabstir("hosts", "-m", "unknown")
    assert code == 2 and "unknown model 'unknown'" in out
    code, out = fabstir("chat", "-m", "0x" + "zz" * 32, "-p", "hi")
    assert code == 2 and "not a hex model id" in out


def test_malformed_command_lines_exit_2() -> None:
    assert fabstir("chat", "-p", "hi")[0] == 2  # --model is required
    assert fabstir("chat", "-m", MODEL, "--deposit", "lots")[0] == 2
    assert fabstir("no-such-command")[0] == 2
    assert fabstir("--profile", "mainnet", "hosts", "-m", MODEL)[0] == 2


# --------------------------------------------------------------------------- 4: configuration


def test_a_missing_deployment_file_exits_4(tmp_path: Path) -> None:
    code, out = fabstir("--deployment", str(tmp_path / "none.json"), "hosts", "-m", MODEL)
    assert code == 4 and "make deploy" in out


def test_a_malformed_deployment_file_exits_4(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, out = fabstir("--deployment", str(bad), "hosts", "-m", MODEL)
    assert code == 4 and "malformed deployment" in out


def test_a_profile_without_its_rpc_exits_4(deployment: Path) -> None:
    code, out = fabstir(
        "--profile", "base-sepolia", "--deployment", str(deployment), "hosts", "-m", MODEL
    )
    assert code == 4 and "FABSTIR_RPC_URL" in out


def test_no_wallet_key_exits_4(deployment: Path) -> None:
    code, out = fabstir(
        "--deployment", str(deployment), "chat", "-m", MODEL, "-p", "hi", env={"FABSTIR_KEY": None}
    )
    assert code == 4 and "no wallet key" in out


def test_a_malformed_key_exits_4_without_showing_it(deployment: Path) -> None:
    secret = "not-a-key-but-secret"
    code, out = fabstir(
        "--deployment",
        str(deployment),
        "chat",
        "-m",
        MODEL,
        "-p",
        "hi",
        env={"FABSTIR_KEY": secret},
    )
    assert code == 4 and "FABSTIR_KEY does not hold a private key" in out
    assert secret not in out
    zero = "0x" + "00" * 32  # the right shape, but not a secp256k1 key
    code, out = fabstir("chat", "-m", MODEL, "-p", "hi", env={"FABSTIR_KEY": zero})
    assert code == 4 and "not a valid private key" in out


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_a_key_file_others_can_read_is_refused(tmp_path: Path, deployment: Path) -> None:
    loose = key_file(tmp_path, mode=0o644)
    code, out = fabstir(
        "--deployment", str(deployment), "--key-file", str(loose), "chat", "-m", MODEL, "-p", "x"
    )
    assert code == 4 and "chmod 600" in out and "0644" in out
    assert KEY[2:] not in out


def test_a_key_file_in_the_wrong_format_is_refused(tmp_path: Path, deployment: Path) -> None:
    wrong = key_file(tmp_path, text='{"crypto": "a keystore is not supported"}')
    code, out = fabstir("--key-file", str(wrong), "chat", "-m", MODEL, "-p", "x")
    assert code == 4 and "does not hold a private key" in out
    code, out = fabstir("--key-file", str(tmp_path / "absent.key"), "chat", "-m", MODEL)
    assert code == 4 and "does not exist" in out


# --------------------------------------------------------------------------- 5: chain


def test_an_unreachable_rpc_exits_5(tmp_path: Path, deployment: Path) -> None:
    good = key_file(tmp_path)  # a proper key file gets as far as the chain
    code, out = fabstir(
        "--rpc-url",
        dead_rpc(),
        "--deployment",
        str(deployment),
        "--key-file",
        str(good),
        "chat",
        "-m",
        MODEL,
        "-p",
        "hi",
    )
    assert code == 5 and "unreachable" in out


def test_the_installed_command_exits_with_the_code(deployment: Path) -> None:
    """The real entry point, as a user runs it: no traceback, the table's code."""
    env = {**os.environ, "FABSTIR_RPC_URL": dead_rpc(), "FABSTIR_DEPLOYMENT": str(deployment)}
    env.pop("FABSTIR_KEY", None)
    for args, code in ((["hosts", "-m", "unknown"], 2), (["hosts", "-m", MODEL], 5)):
        result = subprocess.run(
            [sys.executable, "-m", "fabstir_sdk", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert result.returncode == code, result.stderr
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
