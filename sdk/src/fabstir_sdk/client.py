"""``FabstirClient``: a wallet on a chain plus a libp2p host; finds hosts and opens paid
sessions with them."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir_sdk.contracts import ETH, Deployment
from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.discovery import Discovery, HostInfo
from fabstir_sdk.failover import STALL_TIMEOUT_S, FailoverChat
from fabstir_sdk.models import resolve_model_id
from fabstir_sdk.p2p import P2PError, P2PHost, PeerAddress
from fabstir_sdk.protocol import (
    HOSTS_TOPIC,
    SESSION_PROTOCOL,
    Error,
    FramedStream,
    Open,
    ProtocolError,
    Ready,
)
from fabstir_sdk.errors import HostError, NoHostAvailable
from fabstir_sdk.session import Session

DEFAULT_DEPOSIT = 10**15  # 0.001 ETH
DEFAULT_DURATION = 3600


class FabstirClient:
    def __init__(
        self,
        rpc_url: str,
        private_key: str,
        deployment: Deployment | str | Path,
        *,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        bootstrap: list[str] | None = None,
    ) -> None:
        if not isinstance(deployment, Deployment):
            deployment = Deployment.load(deployment)
        self.account = Account.from_key(private_key)
        self.contracts = Contracts.connect(rpc_url, deployment, self.account)
        self.p2p = P2PHost(secrets.token_bytes(32), [listen])
        self.discovery = Discovery(self.contracts, self.p2p)
        self.p2p.on_gossip(HOSTS_TOPIC, self.discovery.on_announcement)
        self._bootstrap = bootstrap or []
        self._started = False

    async def start(self) -> FabstirClient:
        if not self._started:
            await self.p2p.start()
            self._started = True
            for addr in self._bootstrap:
                with contextlib.suppress(Exception):
                    await self.p2p.connect(addr.rsplit("/p2p/", 1)[-1], [addr])
        return self

    async def close(self) -> None:
        if self._started:
            await self.p2p.stop()
            self._started = False

    async def __aenter__(self) -> FabstirClient:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def find_hosts(self, model: str | bytes, token: str = ETH) -> list[HostInfo]:
        """Hosts serving ``model`` (catalogue name, repo/file or id), best first."""
        await self.start()
        return await self.discovery.find_hosts(resolve_model_id(model), token)

    async def open_session(
        self,
        model: str | bytes,
        *,
        host: str | None = None,
        deposit: int = DEFAULT_DEPOSIT,
        max_price: int | None = None,
        duration: int = DEFAULT_DURATION,
        exclude: set[str] | None = None,
        voucher_every: int = 8,
    ) -> Session:
        """Deposit, make the session signer, connect and attach. ``host`` pins an address."""
        await self.start()
        model_id = resolve_model_id(model)
        candidates = await self.find_hosts(model_id)
        if host is not None:
            candidates = [h for h in candidates if h.address.lower() == host.lower()]
        if exclude:
            lowered = {e.lower() for e in exclude}
            candidates = [h for h in candidates if h.address.lower() not in lowered]
        if max_price is not None:
            candidates = [h for h in candidates if h.price <= max_price]
        if not candidates:
            raise NoHostAvailable("no registered host serves this model within your limits")
        # Deposit only with a host we can reach right now: dial candidates best first.
        failures = []
        for chosen in candidates:
            try:
                await self.p2p.connect(chosen.peer_id, chosen.addrs)
            except P2PError as exc:
                failures.append(f"{chosen.address}: {exc}")
                continue
            signer = Account.create()
            session_id, _ = await asyncio.to_thread(
                self.contracts.open_session,
                chosen.address,
                model_id,
                deposit,
                chosen.price,
                duration,
                signer.address,
            )
            return await self.attach(session_id, chosen, signer, voucher_every=voucher_every)
        raise NoHostAvailable("no host is reachable: " + "; ".join(failures))

    async def attach(
        self,
        session_id: int,
        host: HostInfo,
        signer: LocalAccount,
        voucher_every: int = 8,
    ) -> Session:
        """Connect to ``host`` for an already opened session."""
        stream = await self.p2p.open_stream(PeerAddress(host.peer_id, host.addrs), SESSION_PROTOCOL)
        # open_stream refuses a remote whose Noise-authenticated peer id is not the registered
        # one, so a host cannot be impersonated by whoever answers at its address.
        framed = FramedStream(stream)
        await framed.send(Open(session_id, self.contracts.deployment.chain_id))
        try:
            ready = await framed.receive(timeout=30)
        except ProtocolError as exc:
            raise HostError(exc.code, f"host did not answer open: {exc}", True) from exc
        if isinstance(ready, Error):
            raise HostError(ready.code, ready.message, ready.retryable)
        if not isinstance(ready, Ready) or ready.session_id != session_id:
            raise HostError("bad_ready", "host answered open with something else")
        onchain = await asyncio.to_thread(self.contracts.session, session_id)
        session = Session(
            session_id=session_id,
            host=host.address,
            peer_id=host.peer_id,
            model=onchain.model_id,
            deposit=onchain.deposit,
            price=onchain.price,
            max_tokens=onchain.max_tokens,
            credit_window=ready.credit_window,
            signer=signer,
            domain=self.contracts.voucher_domain(),
            framed=framed,
            contracts=self.contracts,
            voucher_every=voucher_every,
        )
        session.billed = session.vouched = ready.billed_tokens
        return session

    def chat(
        self,
        model: str | bytes,
        messages: Sequence[dict[str, Any]],
        *,
        max_tokens: int = 256,
        session: Session | None = None,
        deposit: int = DEFAULT_DEPOSIT,
        max_price: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        max_failovers: int = 2,
        stall_timeout: float = STALL_TIMEOUT_S,
    ) -> FailoverChat:
        """An answer that fails over to the next host mid-stream (see :mod:`failover`).

        Reuses ``session`` when given (the answer's ``session`` is the one to reuse next)."""
        return FailoverChat(
            self,
            model,
            messages,
            max_tokens=max_tokens,
            session=session,
            open_kwargs={"deposit": deposit, "max_price": max_price},
            params={"temperature": temperature, "top_p": top_p, "seed": seed, "stop": stop},
            max_failovers=max_failovers,
            stall_timeout=stall_timeout,
        )
