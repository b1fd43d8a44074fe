"""Finding hosts: the NodeRegistry says who staked to serve a model, at what price and under
which peer id; the libp2p DHT says who is providing it right now; gossip announcements and
answers on the info protocol (:meth:`Discovery.ask_info`) add load and measured speed; the
ReputationSystem adds each host's public record (:func:`score` ranks them all).

Announcements are kept only when signed by the host they name, published by the peer they
name, fresh and newer than the one held; one whose peer id differs from the registry's is
ignored. At most :data:`MAX_ANNOUNCEMENTS` are kept: hosts the registry does not know (yet)
are forgotten first, so made-up hosts cannot push out real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace

from fabstir_sdk.announcements import HostAnnouncement, verify_announcement
from fabstir_sdk.contracts import ETH
from fabstir_sdk.contracts.client import Contracts, HostRecord
from fabstir_sdk.contracts.deployment import DeploymentError
from fabstir_sdk.contracts.reputation import HostReputation, Reputation
from fabstir_sdk.errors import HostError
from fabstir_sdk.p2p import P2PError, P2PHost, PeerAddress, peer_id_from_bytes, provider_key
from fabstir_sdk.protocol import (
    INFO_PROTOCOL,
    Error,
    FramedStream,
    InfoRequest,
    InfoResponse,
    ProtocolError,
)

log = logging.getLogger(__name__)
#: Announcements kept (one per host address).
MAX_ANNOUNCEMENTS = 1024
#: Seconds after its last announcement or info answer that a host still counts as reachable.
FRESH_S = 60
#: The largest info answer we read (a host serving many models may say more than a request).
MAX_INFO_FRAME = 64 << 10


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
    last_seen: float | None = None  # unix time we last heard from it (gossip or info)
    reachable: bool | None = None  # None until someone dials it
    reputation: HostReputation | None = None  # its ReputationSystem record, when there is one


class Discovery:
    def __init__(self, contracts: Contracts, p2p: P2PHost) -> None:
        self.contracts = contracts
        self.p2p = p2p
        # by host address (lower case), least recently updated first
        self.announcements: OrderedDict[str, HostAnnouncement] = OrderedDict()
        self.infos: dict[str, tuple[InfoResponse, float]] = {}  # by host address: answer, when
        self.registered: dict[str, str] = {}  # host address -> peer id, from the registry
        self.rejected: Counter[str] = Counter()  # announcements ignored, by reason

    def validate(self, data: bytes, sender: str) -> bool:
        """The gossipsub validator for the hosts topic (pass it to ``P2PHost.on_gossip``):
        what it refuses is neither delivered nor relayed."""
        return self._genuine(data, sender) is not None

    def on_announcement(self, data: bytes, sender: str) -> None:
        """A gossip message on the hosts topic from ``sender`` (its publisher, as pubsub
        authenticated it); kept only if genuine, fresh and new."""
        announcement = self._genuine(data, sender)
        if announcement is None:
            return
        key = announcement.host.lower()
        held = self.announcements.get(key)
        if held is not None and held.timestamp >= announcement.timestamp:
            return  # a repeat or an older one: keep what we have
        self.announcements[key] = announcement
        self.announcements.move_to_end(key)
        while len(self.announcements) > MAX_ANNOUNCEMENTS:
            unknown = next((k for k in self.announcements if k not in self.registered), None)
            self.announcements.pop(unknown or next(iter(self.announcements)))

    def _genuine(self, data: bytes, sender: str) -> HostAnnouncement | None:
        """The announcement in ``data`` if it is signed by the host it names, published by
        the peer it names, fresh, and (when the registry was read) names the registered peer;
        otherwise None, counted in :attr:`rejected`."""
        try:
            announcement = verify_announcement(data)
        except ProtocolError as exc:
            self._reject(exc.code, exc)
            return None
        if announcement.peer_id != sender:
            self._reject("wrong_peer", f"published by {sender}, names {announcement.peer_id}")
            return None
        key = announcement.host.lower()
        registered = self.registered.get(key)
        if registered is not None and registered != announcement.peer_id:
            self._reject("wrong_peer", f"{announcement.peer_id} is not {key}'s registered peer")
            return None
        return announcement

    def _reject(self, reason: str, detail: object) -> None:
        self.rejected[reason] += 1
        log.debug("ignored an announcement (%s): %s", reason, detail)

    def with_gossip(self, info: HostInfo) -> HostInfo:
        """``info`` updated from the host's latest announcement (ignored if the peer id in it
        is not the registered one) or its latest info answer, whichever is newer."""
        seen = self.announcements.get(info.address.lower())
        if seen is not None and seen.peer_id == info.peer_id:
            info = replace(
                info,
                load=seen.load,
                tokens_per_second=seen.tokens_per_second,
                last_seen=seen.timestamp,
                addrs=list(dict.fromkeys([*seen.addrs, *info.addrs])),
            )
        answered = self.infos.get(info.address.lower())
        if answered is not None and (info.last_seen is None or answered[1] >= info.last_seen):
            response, when = answered
            info = replace(
                info,
                load=response.load,
                tokens_per_second=response.tokens_per_second,
                last_seen=when,
            )
        return info

    async def ask_info(self, host: HostInfo, timeout: float = 5.0) -> InfoResponse:
        """Ask ``host`` over ``/fabstir/info/1.0.0`` what it serves, at what price, how busy
        and how fast it is: one dial, one request, one response, all within ``timeout`` s.

        Raises :class:`P2PError` when the host cannot be reached (a dial that times out
        included) and :class:`HostError` when it answers with an error, out of time, or
        something other than its own info."""
        deadline = time.monotonic() + timeout
        stream = await self.p2p.open_stream(
            PeerAddress(host.peer_id, host.addrs), INFO_PROTOCOL, timeout=timeout
        )
        framed = FramedStream(stream, max_frame=MAX_INFO_FRAME)
        try:
            await framed.send(InfoRequest())
            reply = await framed.receive(timeout=max(deadline - time.monotonic(), 0.01))
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
        reputations = await self._reputations(addresses)
        providers: set[str] = set()
        try:
            found = await asyncio.wait_for(
                self.p2p.find_providers(provider_key(model_id)), dht_timeout
            )
            providers = {p.peer_id for p in found}
        except Exception as exc:  # the registry alone is enough to proceed
            log.debug("DHT lookup failed: %s", exc)
        hosts = []
        for record, price, reputation in zip(records, prices, reputations, strict=True):
            try:
                self.registered[record.address.lower()] = peer_id_from_bytes(record.peer_id)
            except Exception:  # a registry entry with a peer id we cannot read
                continue
            if not record.active or price == 0:
                continue
            info = HostInfo(
                record.address,
                peer_id_from_bytes(record.peer_id),
                record.addrs,
                price,
                record.stake,
                record.metadata,
                reputation=reputation,
            )
            info = self.with_gossip(replace(info, in_dht=info.peer_id in providers))
            hosts.append(info)
        return sorted(hosts, key=score)

    async def _reputations(self, addresses: list[str]) -> list[HostReputation | None]:
        """Each host's record; none for all when the deployment has no ReputationSystem."""
        try:
            reputation = Reputation(self.contracts)
        except DeploymentError:
            return [None] * len(addresses)
        return list(
            await asyncio.gather(*(asyncio.to_thread(reputation.record, a) for a in addresses))
        )


def quality(reputation: HostReputation | None) -> float:
    """How much a host's record is worth, in (0, 1]: a price is divided by it.

    ``audits * ratings``, where

    * audits = (p + 1) / (p + 1 + 10 f), with f failed audits and p passed ones, but at most
      one pass per recorded paid session (a host can report passes on transcripts of sessions
      it dealt itself for gas alone; a session costs it the treasury fee). One failure
      against no passes divides the quality by 11; ten passes bring it back to about half.
    * ratings = 0.5 + 0.5 (m - 1) / 4, with m the mean score shrunk towards 3 by two
      imaginary ratings: 0.75 unrated, 1.0 for a long run of fives, 0.5 for ones.
    """
    if reputation is None:
        return 0.75
    passes = min(reputation.audits_passed, reputation.sessions)
    audits = (passes + 1) / (passes + 1 + 10 * reputation.audits_failed)
    mean = (reputation.rating_sum + 3 * 2) / (reputation.ratings + 2)
    return audits * (0.5 + 0.5 * (mean - 1) / 4)


def score(host: HostInfo) -> tuple[float, ...]:
    """Lower is better: the price divided by the record's :func:`quality` (the price a host
    effectively asks for answers you can trust); then reachable now (in the DHT, or heard from
    within :data:`FRESH_S`); then the epochs it beat in of the last day (on-chain uptime); then
    fastest (measured tokens/s); then least loaded."""
    fresh = host.last_seen is not None and time.time() - host.last_seen < FRESH_S
    beats = host.reputation.uptime_beats if host.reputation else 0
    return (
        host.price / quality(host.reputation),
        0 if (host.in_dht or fresh) else 1,
        -beats,
        -(host.tokens_per_second or 0.0),
        host.load or 0,
    )


def peer_of(record: HostRecord) -> PeerAddress:
    """Where the NodeRegistry says a host listens, as libp2p dials it."""
    return PeerAddress(peer_id_from_bytes(record.peer_id), list(record.addrs))


async def registered_peers(contracts: Contracts, model_id: bytes) -> list[PeerAddress]:
    """The active hosts of ``model_id`` that give an address in the NodeRegistry (a record
    with a malformed peer id is skipped)."""
    addresses = await asyncio.to_thread(contracts.hosts_for_model, model_id)
    records = await asyncio.gather(*(asyncio.to_thread(contracts.host, a) for a in addresses))
    peers = []
    for record in records:
        with contextlib.suppress(Exception):
            if record.active and record.addrs:
                peers.append(peer_of(record))
    return peers
