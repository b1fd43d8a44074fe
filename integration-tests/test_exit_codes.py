"""Both CLIs' exit codes that need a chain (and a host), as the README's tables say:
`fabstir` 1 host failure, 3 no host, 5 chain; `fabstir-node` 3 model missing, 4 configuration
(deployment file), 5 chain. The codes reachable without a chain are in sdk/tests/test_cli.py
and node/tests/test_cli.py. Also: `fabstir-node run` serves the unpaid HTTP API only when asked.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx

from fabstir_devtools.chain import anvil_account
from fabstir_node.sessions import SessionService
from fabstir_sdk.protocol import Error, FramedStream, Message, Token

from conftest import Devnet, run

MODEL = "local/tiny.gguf"


class EngineFailsMidAnswer(SessionService):
    """A host whose engine breaks after the first token (a deliberately injected fault)."""

    async def _send(self, framed: FramedStream, message: Message) -> None:
        if isinstance(message, Token):
            message = Error("internal_error", "injected fault: the engine broke", False)
        await framed.send(message)


def cli(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def fabstir(devnet: Devnet, *args: str, key_index: int = 6) -> subprocess.CompletedProcess[str]:
    env = {
        "FABSTIR_RPC_URL": devnet.anvil.url,
        "FABSTIR_DEPLOYMENT": str(devnet.deployment_path),
        "FABSTIR_KEY": anvil_account(key_index).key.hex(),
    }
    return cli("fabstir_sdk", *args, env=env)


def assert_exit(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert text in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_fabstir_exit_codes_on_a_chain(devnet: Devnet) -> None:
    async def main() -> None:
        # 3: nobody serves this model.
        none = await asyncio.to_thread(fabstir, devnet, "chat", "-m", "org/none.gguf", "-p", "x")
        assert_exit(none, 3, "no registered host serves this model")

        node = await devnet.start_node(2, service=EngineFailsMidAnswer)
        try:
            # 1: the host fails the session.
            broken = await asyncio.to_thread(fabstir, devnet, "chat", "-m", MODEL, "-p", "hi")
            assert_exit(broken, 1, "injected fault")
            assert "fabstir session refund" in broken.stderr  # how to get the deposit back
            # 5: the chain refuses: a deposit below the marketplace's minimum reverts.
            tiny = await asyncio.to_thread(
                fabstir, devnet, "chat", "-m", MODEL, "--deposit", "1", "-p", "hi"
            )
            assert_exit(tiny, 5, "error: ")
        finally:
            await node.stop()

        # 5: closing a session that does not exist.
        ghost = await asyncio.to_thread(fabstir, devnet, "session", "close", "999999")
        assert_exit(ghost, 5, "session 999999 is none")
        # 2 with a live chain too: a malformed token name is the caller's mistake.
        token = await asyncio.to_thread(
            fabstir, devnet, "chat", "-m", MODEL, "--token", "DOGE", "-p", "x"
        )
        assert_exit(token, 2, "unknown token 'DOGE'")

    run(main())


def test_fabstir_node_exit_codes_on_a_chain(devnet: Devnet, tmp_path: Path) -> None:
    key = anvil_account(3).key.hex()
    base = {"FABSTIR_DATA_DIR": str(tmp_path / "host"), "FABSTIR_RPC_URL": devnet.anvil.url}
    chain = {**base, "FABSTIR_DEPLOYMENT": str(devnet.deployment_path)}
    assert cli("fabstir_node", "init", env={**base, "FABSTIR_KEY": key}).returncode == 0

    # 4: the deployment file is missing (a configuration error, not the chain's).
    missing = {**base, "FABSTIR_DEPLOYMENT": str(tmp_path / "absent.json")}
    assert_exit(cli("fabstir_node", "status", env=missing), 4, "no deployment at")
    # 3: the model to register is not there.
    absent = cli("fabstir_node", "register", "--model", str(tmp_path / "absent.gguf"), env=chain)
    assert_exit(absent, 3, "absent.gguf")
    # 5: the chain says no.
    assert_exit(cli("fabstir_node", "withdraw", env=chain), 5, "nothing to withdraw")
    assert_exit(cli("fabstir_node", "unregister", env=chain), 5, "not registered")
    # 0
    assert cli("fabstir_node", "status", "--json", env=chain).returncode == 0


def test_run_serves_the_unpaid_api_only_when_asked(devnet: Devnet) -> None:
    async def main() -> None:
        default = await devnet.start_node(1, register=False)
        try:
            assert default.http is not None
            url = default.http.url
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{url}/health")).status_code == 200
                assert (await http.get(f"{url}/metrics")).status_code == 200
                assert (await http.get(f"{url}/v1/models")).status_code == 404
                body = {"model": "x", "messages": [{"role": "user", "content": "free?"}]}
                answer = await http.post(f"{url}/v1/chat/completions", json=body)
                assert answer.status_code == 404
        finally:
            await default.stop()
        asked = await devnet.start_node(1, register=False, http_api=True)
        try:
            assert asked.http is not None
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{asked.http.url}/v1/models")).status_code == 200
        finally:
            await asked.stop()

    run(main())
