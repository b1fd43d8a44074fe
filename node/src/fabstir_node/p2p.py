"""The node on the libp2p network: serve session and info streams, publish provider records
for the served model, and gossip signed announcements of price, load and speed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from eth_account.signers.local import LocalAccount

from fabstir_node.sessions import SessionService
from fabstir_sdk.announcements import HostAnnouncement, sign_announcement
from fabstir_sdk.p2p import BridgedStream, P2PHost, provider_key
from fabstir_sdk.protocol import (
    HOSTS_TOPIC,
    INFO_PROTOCOL,
    SESSION_PROTOCOL,
    TOKENIZER_PROTOCOL,
    FramedStream,
)

log = logging.getLogger(__name__)


class NodeNetwork:
    def __init__(
        self,
        host: P2PHost,
        sessions: SessionService,
        account: LocalAccount,
        announce_every: float = 5.0,
    ) -> None:
        self.host = host
        self.sessions = sessions
        self.account = account
        self.announce_every = announce_every
        self._announcer: asyncio.Task[None] | None = None
        host.set_handler(SESSION_PROTOCOL, self._session)
        host.set_handler(INFO_PROTOCOL, self._info)
        host.set_handler(TOKENIZER_PROTOCOL, self._tokenizer)

    async def _session(self, stream: BridgedStream) -> None:
        await self.sessions.handle_session(FramedStream(stream))

    async def _info(self, stream: BridgedStream) -> None:
        await self.sessions.handle_info(FramedStream(stream))

    async def _tokenizer(self, stream: BridgedStream) -> None:
        await self.sessions.handle_tokenizer(FramedStream(stream))

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

    async def provide(self) -> None:
        with contextlib.suppress(Exception):
            await self.host.provide(provider_key(self.sessions.served.model_id))

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
        if self._announcer is not None:
            self._announcer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._announcer
        await self.host.stop()
