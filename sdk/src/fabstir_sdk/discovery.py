"""Finding hosts: the NodeRegistry says who staked to serve a model, at what price and under
which peer id; the libp2p DHT says who is providing it right now; gossip announcements add
load and measured speed. Announcements whose peer id differs from the registry's are ignored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace

from fabstir_sdk.announcements import HostAnnouncement, verify_announcement
from fabstir_sdk.contracts import ETH
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.errors import HostError
from fabstir_sdk.p2p import P2PError, P2PHost, PeerAddress, peer_id_from_bytes, provider_key
from fabstir_sdk.protocol import (
    INFO_PROTOCOL,
    MAX_SMALL_FRAME,
    Error,
    FramedStream,
    InfoRequest,
    InfoResponse,
    ProtocolError,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HostInfo:
    address: str
    peer_id: str
    addrs: list[str]
    price: int  # per 1000 tokens in the payment token
    stake: int
    metadata: str
    in_dht: bool = False
    load: int | None = None
    tokens_per_second: float | None = None
    last_seen: float | None = None  # unix time of its last announcement
    reachable: bool | None = None  # None until someone dials it


class Discovery:
    def __init__(self, contracts: Contracts, p2p: P2PHost) -> None:
        self.contracts = contracts
        self.p2p = p2p
        self.announcements: dict[str, HostAnnouncement] = {}  # by host address
        self.infos: dict[str, tuple[InfoResponse, float]] = {}  # by host address: answer, when

    def on_announcement(self, data: bytes, _sender: str) -> None:
        try:
            announcement = verify_announcement(data)
        except ProtocolError as exc:
            log.debug("ignored announcement: %s", exc)
            return
        self.announcements[announcement.host.lower()] = announcement

    def with_gossip(self, info: HostInfo) -> HostInfo:
        """``info`` updated from the host's latest announcement (ignored if the peer id in it
        is not the registered one)."""
        seen = self.announcements.get(info.address.lower())
        if seen is None or seen.peer_id != info.peer_id:
            return info
        return replace(
            info,
            load=seen.load,
            tokens_per_second=seen.tokens_per_second,
            last_seen=seen.timestamp,
            addrs=list(dict.fromkeys([*seen.addrs, *info.addrs])),
        )

    async def ask_info(self, host: HostInfo, timeout: float = 5.0) -> InfoResponse:
        """Ask ``host`` over ``/fabstir/info/1.0.0`` what it serves, at what price, how busy
        and how fast it is: one dial, one request, one response, all within ``timeout`` s.

        Raises :class:`P2PError` when the host cannot be reached (a dial that times out
        included) and :class:`HostError` when it answers with an error, out of time, or
        something other than its own info."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        stream = await self.p2p.open_stream(
            PeerAddress(host.peer_id, host.addrs), INFO_PROTOCOL, timeout=timeout
        )
        framed = FramedStream(stream, max_frame=MAX_SMALL_FRAME)
        try:
            await framed.send(InfoRequest())
            reply = await framed.receive(timeout=max(deadline - loop.time(), 0.001))
        except ProtocolError as exc:
            await stream.reset()
            raise HostError(exc.code, f"info request failed: {exc}", exc.retryable) from exc
        except (ConnectionError, OSError) as exc:
            await stream.reset()
            raise P2PError(f"the info stream to {host.peer_id} broke: {exc}") from exc
        if isinstance(reply, Error):
            await stream.reset()
            raise HostError(reply.code, reply.message, reply.retryable)
        if not isinstance(reply, InfoResponse):
            await stream.reset()
            raise HostError("unexpected_message", f"info answered with {reply.TYPE}")
        await stream.close()
        if reply.host.lower() != host.address.lower():
            raise HostError("wrong_host", f"info from {reply.host}, not {host.address}")
        self.infos[host.address.lower()] = (reply, time.time())
        return reply

    async def find_hosts(
        self, model_id: bytes, token: str = ETH, dht_timeout: float = 3.0
    ) -> list[HostInfo]:
        """Active registered hosts for ``model_id``, enriched from the DHT and gossip."""
        addresses = await asyncio.to_thread(self.contracts.hosts_for_model, model_id)
        records = await asyncio.gather(
            *(asyncio.to_thread(self.contracts.host, a) for a in addresses)
        )
        prices = await asyncio.gather(
            *(asyncio.to_thread(self.contracts.price, a, model_id, token) for a in addresses)
        )
        providers: set[str] = set()
        try:
            found = await asyncio.wait_for(
                self.p2p.find_providers(provider_key(model_id)), dht_timeout
            )
            providers = {p.peer_id for p in found}
        except Exception as exc:  # the registry alone is enough to proceed
            log.debug("DHT lookup failed: %s", exc)
        hosts = []
        for record, price in zip(records, prices, strict=True):
            if not record.active or price == 0:
                continue
            info = HostInfo(
                record.address,
                peer_id_from_bytes(record.peer_id),
                record.addrs,
                price,
                record.stake,
                record.metadata,
            )
            info = self.with_gossip(replace(info, in_dht=info.peer_id in providers))
            hosts.append(info)
        return sorted(hosts, key=score)


def score(host: HostInfo) -> tuple[float, ...]:
    """Lower is better: cheapest first; then reachable now; then fastest; then least loaded."""
    fresh = host.last_seen is not None and time.time() - host.last_seen < 60
    return (
        host.price,
        0 if (host.in_dht or fresh) else 1,
        -(host.tokens_per_second or 0.0),
        host.load or 0,
    )
