"""One error model: the public API lets out only FabstirError, with the README's exit codes."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
import requests
import trio
from web3.exceptions import ContractLogicError, Web3RPCError, Web3ValidationError

import fabstir_sdk
from fabstir_sdk import (
    ChainError,
    ConfigurationError,
    FabstirError,
    HostError,
    NoHostAvailable,
    UsageError,
)
from fabstir_sdk.contracts import Deployment, build_hash
from fabstir_sdk.contracts.artifacts import EXPORTED
from fabstir_sdk.errors import map_errors, mapped, translate
from fabstir_sdk.models import resolve_model_id


def test_exit_codes_are_the_readme_table() -> None:
    assert FabstirError.exit_code == 1 and HostError.exit_code == 1
    assert UsageError.exit_code == 2
    assert NoHostAvailable.exit_code == 3
    assert ConfigurationError.exit_code == 4
    assert ChainError.exit_code == 5
    assert fabstir_sdk.ChainUnavailable.exit_code == 5
    assert fabstir_sdk.DeploymentError.exit_code == 4
    assert issubclass(fabstir_sdk.ProtocolError, FabstirError)
    assert issubclass(fabstir_sdk.P2PError, FabstirError)


@pytest.mark.parametrize(
    ("raised", "expected", "code"),
    [
        (ContractLogicError("execution reverted: InvalidDeposit"), ChainError, None),
        (Web3RPCError("insufficient funds"), ChainError, None),
        (Web3ValidationError("not a checksum address"), UsageError, None),
        (requests.ConnectionError("refused"), ChainError, None),
        (trio.TooSlowError(), HostError, "timeout"),
        (trio.BrokenResourceError(), HostError, "stream_closed"),
        (cbor2.CBORDecodeError("premature end"), HostError, "malformed_frame"),
        (TimeoutError(), HostError, "timeout"),
        (ExceptionGroup("nursery", [trio.ClosedResourceError()]), HostError, "stream_closed"),
    ],
)
def test_lower_layers_are_translated(
    raised: Exception, expected: type[FabstirError], code: str | None
) -> None:
    with pytest.raises(expected) as info, map_errors():
        raise raised
    assert info.value.__cause__ is raised
    if code is not None:
        assert isinstance(info.value, HostError) and info.value.code == code


def test_our_own_bugs_are_not_disguised() -> None:
    assert translate(KeyError("x")) is None
    with pytest.raises(KeyError), map_errors():
        raise KeyError("x")


def test_mapped_covers_functions_and_coroutines() -> None:
    @mapped
    def sync() -> None:
        raise requests.Timeout("slow")

    @mapped
    async def coro() -> None:
        raise trio.TooSlowError

    with pytest.raises(ChainError):
        sync()
    with pytest.raises(HostError):
        asyncio.run(coro())

    async def agen():  # type: ignore[no-untyped-def]
        yield 1

    with pytest.raises(TypeError):
        mapped(agen)


def test_resolve_model_id_raises_usage_errors() -> None:
    for bad in ("unknown", "0x" + "zz" * 32, "/", b"short"):
        with pytest.raises(UsageError):
            resolve_model_id(bad)
    assert isinstance(UsageError("x"), ValueError)  # what callers caught before still works


def test_the_package_exposes_the_public_api_and_imports_lightly() -> None:
    for name in fabstir_sdk.__all__:
        assert getattr(fabstir_sdk, name) is not None
    assert {"FabstirClient", "Session", "ChatStream", "HostInfo", "Settlement", "Usage"} <= set(
        fabstir_sdk.__all__
    )
    assert {"SyncClient", "SyncSession", "FabstirError", "NoHostAvailable"} <= set(
        fabstir_sdk.__all__
    )
    with pytest.raises(AttributeError):
        _ = fabstir_sdk.NotAThing  # type: ignore[attr-defined]
    probe = "import sys, fabstir_sdk; print('web3' in sys.modules, 'libp2p' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def _manifest(tmp_path: Path) -> Deployment:
    contracts = {name: "0x" + f"{i + 1:02x}" * 20 for i, name in enumerate(EXPORTED)}
    return Deployment(31337, contracts, 1, build_hash())


def _dead_rpc() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_client_construction_errors_are_typed(tmp_path: Path) -> None:
    deployment = _manifest(tmp_path)
    secret = "definitely-not-a-key"
    with pytest.raises(ConfigurationError) as info:
        fabstir_sdk.FabstirClient(_dead_rpc(), secret, deployment)
    assert secret not in str(info.value)
    with pytest.raises(ChainError):  # a URL requests can't even try: not a raw requests error
        fabstir_sdk.FabstirClient("not-a-url", "0x" + "11" * 32, deployment)
    with pytest.raises(fabstir_sdk.DeploymentError):
        fabstir_sdk.FabstirClient(_dead_rpc(), "0x" + "11" * 32, tmp_path / "none.json")


def test_sync_client_raises_the_same_errors(tmp_path: Path) -> None:
    with pytest.raises(ChainError):
        fabstir_sdk.SyncClient(_dead_rpc(), "0x" + "11" * 32, _manifest(tmp_path))


def test_a_custom_error_reads_as_its_name() -> None:
    from eth_utils.crypto import keccak
    from web3.exceptions import ContractCustomError

    data = "0x" + keccak(text="AlreadyRated(uint256)")[:4].hex() + "00" * 31 + "07"
    error = translate(ContractCustomError(data, data=data))
    assert isinstance(error, ChainError) and "AlreadyRated(uint256)" in str(error)
    unknown = translate(ContractCustomError("0xdeadbeef", data="0xdeadbeef"))
    assert isinstance(unknown, ChainError) and "0xdeadbeef" in str(unknown)
