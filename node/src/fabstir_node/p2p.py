"""The node on the libp2p network: serve session and info streams, publish provider records
for the served model, and gossip signed announcements of price, load and speed.

Hosts find each other through the NodeRegistry (every host registered for the same model is
dialed at start and whenever fewer than :data:`LINK_TARGET` are connected), and all of them
subscribe to the announcements topic, so they form one gossipsub mesh: a client connected to
any one host hears the announcements of all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from eth_account.signers.local import LocalAccount

from fabstir_node.sessions import SessionService
from fabstir_node.storage import NodeStorage
from fabstir_sdk.announcements import HostAnnouncement, is_valid_announcement, sign_announcement
from fabstir_sdk.p2p import BridgedStream, P2PHost, peer_id_from_bytes, provider_key
from fabstir_sdk.protocol import (
    HOSTS_TOPIC,
    INFO_PROTOCOL,
    MAX_SMALL_FRAME,
    SESSION_PROTOCOL,
    FramedStream,
)

log = logging.getLogger(__name__)
#: Registered hosts of our model a host keeps connections to (more are fine).
LINK_TARGET = 8
#: Seconds between looks at the registry for hosts to link with.
LINK_EVERY = 60.0


class NodeNetwork:
    def __init__(
        self,
        host: P2PHost,
        sessions: SessionService,
        account: LocalAccount,
        announce_every: float = 5.0,
        link_every: float = LINK_EVERY,
        storage: NodeStorage | None = None,
    ) -> None:
        self.host = host
        self.storage = storage
        self.sessions = sessions
        self.account = account
        self.announce_every = announce_every
        self.link_every = link_every
        self._announcer: asyncio.Task[None] | None = None
        self._linker: asyncio.Task[None] | None = None
        host.set_handler(SESSION_PROTOCOL, self._session)
        host.set_handler(INFO_PROTOCOL, self._info)
        # Subscribing makes this host a member of the announcements mesh: it relays the
        # other hosts' announcements to its peers instead of only sending its own by fanout
        # (only genuine, fresh ones: the validator drops the rest before they are relayed).
        host.on_gossip(HOSTS_TOPIC, self._heard, validate=is_valid_announcement)

    async def _session(self, stream: BridgedStream) -> None:
        # Small frames until `open` succeeds: strangers must not make us read megabytes.
        await self.sessions.handle_session(FramedStream(stream, MAX_SMALL_FRAME))

    async def _info(self, stream: BridgedStream) -> None:
        await self.sessions.handle_info(FramedStream(stream, MAX_SMALL_FRAME))

    def _heard(self, _data: bytes, _sender: str) -> None:
        """An announcement relayed or sent to us: hosts only relay them (clients read them)."""

    async def start(self, bootstrap: list[str] | None = None) -> None:
        await self.host.start()
        for addr in bootstrap or []:
            peer = addr.rsplit("/p2p/", 1)[-1]
            try:
                await self.host.connect(peer, [addr])
            except Exception as exc:
                log.warning("bootstrap peer %s unreachable: %s", addr, exc)
        await self.provide()
        self._announcer = asyncio.ensure_future(self._announce_forever())
        self._linker = asyncio.ensure_future(self._link_forever())  # links now, then every minute

    async def link_hosts(self) -> int:
        """Dial the hosts the NodeRegistry lists for our model until :data:`LINK_TARGET` of
        them are connected; returns how many new ones answered."""
        contracts = self.sessions.chain.contracts
        try:
            addresses = await asyncio.to_thread(
                contracts.hosts_for_model, self.sessions.served.model_id
            )
            others = [a for a in addresses if a.lower() != self.account.address.lower()]
            others = random.sample(others, min(len(others), 4 * LINK_TARGET))  # bounded RPCs
            records = await asyncio.gather(*(asyncio.to_thread(contracts.host, a) for a in others))
        except Exception as exc:  # the chain is down: try again next round
            log.debug("cannot list registered hosts: %s", exc)
            return 0
        connected = self.host.connected_peers()
        registered, candidates = set(), []
        for record in records:
            if not record.active or not record.addrs:
                continue
            with contextlib.suppress(Exception):
                peer = peer_id_from_bytes(record.peer_id)
                registered.add(peer)
                if peer != self.host.peer_id and peer not in connected:
                    candidates.append((peer, record.addrs))
        room = LINK_TARGET - len(registered & connected)
        if room <= 0:
            return 0
        results = await asyncio.gather(
            *(self.host.connect(peer, addrs, timeout=10) for peer, addrs in candidates[:room]),
            return_exceptions=True,
        )
        joined = 0
        for (peer, _addrs), result in zip(candidates, results, strict=False):
            if isinstance(result, Exception):
                log.debug("registered host %s unreachable: %s", peer, result)
            else:
                joined += 1
        return joined

    async def _link_forever(self) -> None:
        while True:
            try:
                if await self.link_hosts():
                    await self.provide()  # new neighbours in the DHT: store our record there
            except Exception as exc:
                log.debug("linking hosts failed: %s", exc)
            await asyncio.sleep(self.link_every)

    async def provide(self) -> None:
        """Provider records: the model we serve, and what our store shares."""
        with contextlib.suppress(Exception):
            await self.host.provide(provider_key(self.sessions.served.model_id))
        if self.storage is not None:
            await self.storage.provide()

    def announcement(self) -> HostAnnouncement:
        served = self.sessions.served
        return HostAnnouncement(
            host=self.account.address,
            peer_id=self.host.peer_id,
            addrs=self.host.addrs,
            models=[served.model_id],
            prices=dict(served.prices),
            load=self.sessions.engine.queue_depth,
            tokens_per_second=round(self.sessions.tokens_per_second, 2),
            timestamp=int(time.time()),
        )

    async def announce(self) -> None:
        await self.host.publish(HOSTS_TOPIC, sign_announcement(self.account, self.announcement()))

    async def _announce_forever(self) -> None:
        while True:
            try:
                await self.announce()
            except Exception as exc:
                log.debug("announcement failed: %s", exc)
            await asyncio.sleep(self.announce_every)

    async def stop(self) -> None:
        for task in (self._announcer, self._linker):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.host.stop()
