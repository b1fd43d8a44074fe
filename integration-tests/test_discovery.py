"""Discovery with three nodes: the client finds the two serving its model through the DHT
(it is connected to neither) and hears their signed gossip announcements."""

from __future__ import annotations

import time
from typing import Any

from fabstir_devtools.network import ModelSpec
from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_devtools.wait import wait_until_async
from fabstir_sdk.models import model_id
from fabstir_sdk.p2p import PeerAddress, provider_key
from fabstir_sdk.protocol import INFO_PROTOCOL, FramedStream, InfoRequest, InfoResponse

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
        finally:
            await client.close()
            for node in (first, second, third):
                await node.stop()

    run(main())
