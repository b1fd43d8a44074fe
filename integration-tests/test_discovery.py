"""Discovery with three nodes: the client finds the hosts serving its model through the DHT
and hears their signed gossip announcements, relayed by the hosts' mesh."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any

import pytest
from eth_account import Account

from fabstir_devtools.chain import anvil_account
from fabstir_devtools.network import ModelSpec
from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.announcements import HostAnnouncement, sign_announcement
from fabstir_sdk.contracts import ETH
from fabstir_sdk.errors import HostError
from fabstir_sdk.models import model_id
from fabstir_sdk.p2p import P2PHost, PeerAddress, provider_key
from fabstir_sdk.protocol import (
    HOSTS_TOPIC,
    INFO_PROTOCOL,
    FramedStream,
    InfoRequest,
    InfoResponse,
)

from conftest import Devnet, run


def test_three_nodes_dht_and_gossip(devnet: Devnet) -> None:
    other = ModelSpec.gguf(write_tiny_gguf(devnet.root / "other.gguf", seed=99))
    devnet.add_model(other)
    wanted = model_id("local", devnet.model_path.name)

    async def main() -> None:
        first = await devnet.start_node(1)
        assert first.network is not None
        hub = ",".join(first.network.host.addrs)
        second = await devnet.start_node(2, bootstrap=hub)
        third = await devnet.start_node(
            3, bootstrap=hub, model=other.name, model_sha256=other.sha256
        )
        assert third.network is not None
        for node in (first, second):
            assert node.network is not None
            await node.network.provide()  # now that peers exist, store the record with them
        client = devnet.client(4, bootstrap=third.network.host.addrs)  # knows only the third
        try:
            await client.start()
            started = time.monotonic()
            providers = await client.p2p.find_providers(provider_key(wanted))
            found = {p.peer_id for p in providers}
            serving = {first.network.host.peer_id, second.network.host.peer_id}  # type: ignore[union-attr]
            assert found == serving

            async def heard_both() -> list[Any]:
                hosts = await client.find_hosts(wanted)
                heard = len(hosts) == 2 and all(h.last_seen is not None for h in hosts)
                return hosts if heard else []

            # Hosts announce every few seconds: wait until both were heard.
            hosts = await wait_until_async(
                heard_both, 120, "gossip announcements from both hosts", interval=0.5
            )
            assert {h.address for h in hosts} == {
                first.keys.account.address,
                second.keys.account.address,
            }
            assert all(h.in_dht for h in hosts)
            assert all(h.last_seen is not None and h.load is not None for h in hosts), (
                "no gossip announcements heard"
            )
            print(f"discovery + gossip in {time.monotonic() - started:.1f} s")

            # The free info protocol answers anyone: model, prices, load, speed.
            stream = await client.p2p.open_stream(
                PeerAddress(first.network.host.peer_id, first.network.host.addrs), INFO_PROTOCOL
            )
            framed = FramedStream(stream)
            await framed.send(InfoRequest())
            info = await framed.receive(timeout=60)
            assert isinstance(info, InfoResponse)
            assert info.host == first.keys.account.address
            assert info.models[0]["model_id"] == wanted
            # Its real capacity: the engine's slots and queue; the CPU build offloads nothing.
            assert first.sessions is not None
            engine = first.sessions.engine
            assert (info.parallel, info.capacity) == (engine.parallel, engine.capacity)
            assert info.gpu_layers == 0
        finally:
            await client.close()
            for node in (first, second, third):
                await node.stop()

    run(main())


def test_hosts_form_one_mesh_and_a_client_of_any_host_hears_them_all(devnet: Devnet) -> None:
    """No bootstrap list: hosts of a model find each other in the NodeRegistry, subscribe to
    the announcements topic and relay each other's announcements, so a client connected to
    one host hears all three. Forged, stale and future-dated announcements are ignored, and
    the info protocol answers one request deterministically."""
    wanted = model_id("local", devnet.model_path.name)

    async def main() -> None:
        nodes = [await devnet.start_node(i) for i in (1, 2, 8)]
        networks = [n.network for n in nodes]
        assert all(networks)
        first = nodes[0]
        assert first.network is not None
        client = devnet.client(4, bootstrap=first.network.host.addrs)  # knows only the first
        rogue = P2PHost(secrets.token_bytes(32))
        rogue.on_gossip(HOSTS_TOPIC, lambda _data, _sender: None)
        try:
            await client.start()
            addresses = {n.keys.account.address.lower() for n in nodes}
            started = time.monotonic()
            await wait_until_async(
                lambda: addresses <= set(client.discovery.announcements),
                120,
                "announcements from all three hosts",
                interval=0.2,
            )
            print(f"heard all three hosts in {time.monotonic() - started:.1f} s")
            others = {n.network.host.peer_id for n in nodes[1:]}  # type: ignore[union-attr]
            assert not others & client.p2p.connected_peers()  # relayed, not heard directly

            # The DHT links them too: every host's provider record is found through one.
            peer_ids = {n.network.host.peer_id for n in nodes}  # type: ignore[union-attr]
            await wait_until_async(
                lambda: _providers(client, wanted, peer_ids), 120, "all three provider records"
            )

            # Ask one host directly: one request, one answer.
            hosts = {h.address.lower(): h for h in await client.find_hosts(wanted)}
            assert set(hosts) == addresses
            mine = hosts[first.keys.account.address.lower()]
            info = await client.discovery.ask_info(mine)
            assert info.host == first.keys.account.address
            assert info.models[0]["model_id"] == wanted and info.load == 0
            impostor = replace(mine, address=nodes[1].keys.account.address)
            with pytest.raises(HostError):  # the peer answers for another address
                await client.discovery.ask_info(impostor)

            # A stranger (connected to the client) publishes forgeries about the first host.
            await rogue.start()
            await rogue.connect(client.p2p.peer_id, client.p2p.addrs)
            key, now = anvil_account(1), int(time.time())
            genuine = client.discovery.with_gossip(mine)

            def forged(signer: Any, **fields: Any) -> bytes:
                announced = {
                    "host": key.address,
                    "peer_id": rogue.peer_id,
                    "addrs": rogue.addrs,
                    "models": [wanted],
                    "prices": {ETH: 1},
                    "load": 999,
                    "tokens_per_second": 1e6,
                    "timestamp": now,
                    **fields,
                }
                return sign_announcement(signer, HostAnnouncement(**announced))

            forgeries = [
                forged(Account.create()),  # not signed by the host it names
                forged(key),  # signed by the host's key, but naming another peer
                forged(key, timestamp=now - 3600),  # stale
                forged(key, timestamp=now + 3600),  # from the future
            ]
            wanted_rejections = {
                "forged_announcement": 1,
                "wrong_peer": 1,
                "stale_announcement": 2,
            }

            async def rejected_all() -> bool:
                if all(client.discovery.rejected[k] >= v for k, v in wanted_rejections.items()):
                    return True
                for data in forgeries:
                    await rogue.publish(HOSTS_TOPIC, data)
                return False

            await wait_until_async(rejected_all, 120, "the forgeries to arrive", interval=0.5)
            seen = client.discovery.with_gossip(mine)
            assert seen.load != 999 and seen.tokens_per_second != 1e6
            assert seen.load == genuine.load
        finally:
            await rogue.stop()
            await client.close()
            for node in nodes:
                await node.stop()

    run(main())


async def _providers(client: Any, model: bytes, expected: set[str]) -> bool:
    found = await client.p2p.find_providers(provider_key(model))
    return expected <= {p.peer_id for p in found}
