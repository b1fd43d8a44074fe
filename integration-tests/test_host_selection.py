"""Before any deposit the client dials each candidate, asks it over the info protocol whether
it serves the model at the registered price, and checks its tokenizer: a host that cannot be
dialed (here one that accepts TCP and then says nothing, so the dial times out) or that now
asks more than it registered is skipped, and no deposit is ever made with it."""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabstir_devtools.chain import anvil_account
from fabstir_node.chain import HostChain, ServedModel
from fabstir_sdk.contracts import ETH
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.errors import NoHostAvailable
from fabstir_sdk.models import model_id
from fabstir_sdk.p2p import peer_id_bytes, peer_id_of_seed
from fabstir_sdk.storage.layout import tokenizer_path

from conftest import PRICE, Devnet, run


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a host behind a black hole)."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def register_silent_host(devnet: Devnet, index: int, port: int) -> str:
    """A staked host, cheaper than everyone, whose registered address never answers."""
    account = anvil_account(index)
    chain = HostChain(Contracts.connect(devnet.anvil.url, devnet.deployment, account))
    stake = devnet.deployment.params["minStake"]
    devnet.fund_stake(account.address, stake)
    peer = peer_id_of_seed(secrets.token_bytes(32))
    served = ServedModel(
        "tiny", model_id("local", devnet.model_path.name), bytes(32), {ETH: PRICE // 2}
    )
    chain.register(peer_id_bytes(peer), [f"/ip4/127.0.0.1/tcp/{port}"], {}, [served], stake)
    return account.address


def test_an_undialable_host_is_skipped_before_any_deposit(devnet: Devnet, silent_port: int) -> None:
    async def main() -> None:
        silent = await asyncio.to_thread(register_silent_host, devnet, 8, silent_port)
        node = await devnet.start_node(1)
        client = devnet.client(4)
        try:
            model = model_id("local", devnet.model_path.name)
            hosts = await client.find_hosts(model)
            assert hosts[0].address == silent  # cheapest, so tried first
            first_id = client.contracts.market.functions.nextSessionId().call()
            session = await client.open_session(model)
            assert session.host == node.keys.account.address
            assert session.id == first_id  # the silent host never got a deposit
            await session.close()
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_a_host_asking_more_than_it_registered_gets_no_deposit(devnet: Devnet) -> None:
    async def main() -> None:
        node = await devnet.start_node(2, price=PRICE * 3)  # asks 3x its registered price
        assert node.sessions is not None
        chain = node.sessions.chain
        contracts = chain.contracts
        model = model_id("local", devnet.model_path.name)
        await asyncio.to_thread(
            contracts.transact,
            contracts.nodes.functions.setPrices([(model, ETH, PRICE)]),
            "setPrices",
        )
        client = devnet.client(5)
        try:
            first_id = client.contracts.market.functions.nextSessionId().call()
            with pytest.raises(NoHostAvailable, match="asks"):
                await client.open_session(model, host=node.keys.account.address)
            assert client.contracts.market.functions.nextSessionId().call() == first_id
            assert client.stranded == []
        finally:
            await client.close()
            await node.stop()

    run(main())


def test_a_host_serving_another_tokenizer_gets_no_deposit(
    devnet: Devnet, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing cached: it must be fetched

    async def main() -> None:
        node = await devnet.start_node(3)
        # Fault injection: the host publishes a tokenizer file that is not the one the
        # registry pins (it would count prompts its own way).
        assert node.storage is not None and node.sessions is not None
        tampered = node.sessions.engine.tokenizer_file[:-1] + b"\x01"
        await node.storage.put(tokenizer_path(node.sessions.served.sha256), tampered)
        client = devnet.client(6)
        try:
            model = model_id("local", devnet.model_path.name)
            first_id = client.contracts.market.functions.nextSessionId().call()
            with pytest.raises(NoHostAvailable, match="bad_tokenizer"):
                await client.open_session(model, host=node.keys.account.address)
            assert client.contracts.market.functions.nextSessionId().call() == first_id
        finally:
            await client.close()
            await node.stop()

    run(main())
