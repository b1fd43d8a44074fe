"""The host's view of the chain: is this session mine and paid for, register, checkpoint,
settle, withdraw. All transactions leave through the one nonce-managed sender of
:class:`~fabstir_sdk.contracts.client.Contracts`; blocking web3 calls run off the event loop."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3

from fabstir_sdk.contracts import ETH, Deployment, Voucher, sign_transcript
from fabstir_sdk.contracts.client import (
    Contracts,
    OnchainSession,
    SessionStatus,
    Settlement,
)
from fabstir_sdk.protocol import ProtocolError
from fabstir_sdk.tokenizer import tokenizer_sha256


class SessionRefused(ProtocolError):
    """The session cannot be served by this host; ``code`` goes into the error frame."""

    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True)
class ServedModel:
    """A model this host serves: its on-chain id, its verified file hash and its prices."""

    name: str
    model_id: bytes
    sha256: bytes
    prices: dict[str, int]  # payment token -> price per 1000 tokens


class HostChain:
    def __init__(self, contracts: Contracts) -> None:
        self.contracts = contracts

    @classmethod
    def connect(cls, rpc_url: str, deployment: Deployment, account: LocalAccount) -> HostChain:
        return cls(Contracts.connect(rpc_url, deployment, account))

    @property
    def address(self) -> str:
        return self.contracts.address

    def sign_transcript(self, session_id: int, transcript_hash: bytes) -> bytes:
        """Sign a served answer's transcript hash with the host's registered key."""
        account = self.contracts.sender.account if self.contracts.sender else None
        if account is None:
            raise RuntimeError("a read-only chain client cannot sign transcripts")
        domain = self.contracts.voucher_domain()
        return sign_transcript(account, domain, session_id, transcript_hash)

    # ----------------------------------------------------------------- sessions

    async def verify_session(
        self, session_id: int, chain_id: int, served: ServedModel
    ) -> OnchainSession:
        """The on-chain session, if it is open, names this host and a model we serve at a price
        at least ours; otherwise :class:`SessionRefused`."""
        if chain_id != self.contracts.deployment.chain_id:
            raise SessionRefused(
                "wrong_chain",
                f"this host is on chain {self.contracts.deployment.chain_id}, not {chain_id}",
            )
        s = await asyncio.to_thread(self.contracts.session, session_id)
        if s.status == SessionStatus.NONE:
            raise SessionRefused("unknown_session", f"session {session_id} does not exist")
        if s.status != SessionStatus.OPEN:
            raise SessionRefused("session_closed", f"session {session_id} is {s.status.name}")
        if s.host != self.address:
            raise SessionRefused("wrong_host", f"session {session_id} is for host {s.host}")
        if s.model_id != served.model_id:
            raise SessionRefused("wrong_model", f"session {session_id} is for another model")
        ask = served.prices.get(s.token)
        if ask is None or s.price < ask:
            raise SessionRefused("price_too_low", f"session price {s.price} is below {ask}")
        if s.max_tokens == 0:
            raise SessionRefused("deposit_too_small", "the deposit pays for no tokens")
        return s

    async def now(self) -> int:
        """The chain's time (the latest block's timestamp): sessions expire by it."""
        return await asyncio.to_thread(self.contracts.latest_timestamp)

    async def checkpoint(self, voucher: Voucher) -> None:
        await asyncio.to_thread(self.contracts.checkpoint, voucher)

    async def settle(self, voucher: Voucher) -> Settlement:
        return await asyncio.to_thread(self.contracts.settle, voucher)

    async def session(self, session_id: int) -> OnchainSession:
        return await asyncio.to_thread(self.contracts.session, session_id)

    # ----------------------------------------------------------------- registration

    def check_model(self, model_id: bytes, sha256_hex: str, model_path: Path) -> None:
        """Refuse to serve a file whose hash, or whose tokenizer's hash, differs from the
        registry's pins: clients would refuse every session (they count with the pinned
        tokenizer)."""
        pin = self.contracts.model_pin(model_id)
        pinned = pin.sha256
        if not pin.active:
            raise SessionRefused("model_inactive", "the model is not active in the registry")
        if pinned.hex() != sha256_hex.lower().removeprefix("0x"):
            raise SessionRefused(
                "hash_mismatch",
                f"the registry pins sha256 {pinned.hex()}, the local file is {sha256_hex}",
            )
        tokenizer = tokenizer_sha256(model_path)
        if pin.tokenizer_sha256 != tokenizer:
            raise SessionRefused(
                "hash_mismatch",
                f"the registry pins tokenizer sha256 {pin.tokenizer_sha256.hex()}, the local "
                f"model's is {tokenizer.hex()}",
            )

    def register(
        self,
        peer_id: bytes,
        addrs: list[str],
        metadata: dict[str, Any],
        models: list[ServedModel],
        stake: int,
    ) -> Any:
        c = self.contracts
        allowance = c.fab.functions.allowance(self.address, c.nodes.address).call()
        if allowance < stake:
            c.transact(c.fab.functions.approve(c.nodes.address, stake), "approve stake")
        prices = [
            (m.model_id, Web3.to_checksum_address(token), price)
            for m in models
            for token, price in m.prices.items()
        ]
        return c.transact(
            c.nodes.functions.register(
                peer_id,
                addrs,
                json.dumps(metadata, sort_keys=True),
                [m.model_id for m in models],
                prices,
                stake,
            ),
            "register",
        )

    def update_endpoint(self, peer_id: bytes, addrs: list[str]) -> Any:
        return self.contracts.transact(
            self.contracts.nodes.functions.updateEndpoint(peer_id, addrs), "updateEndpoint"
        )

    def unregister(self) -> Any:
        return self.contracts.transact(self.contracts.nodes.functions.unregister(), "unregister")

    def withdraw_stake(self) -> Any:
        return self.contracts.transact(
            self.contracts.nodes.functions.withdrawStake(), "withdrawStake"
        )

    def stake_balance(self) -> int:
        return int(self.contracts.fab.functions.balanceOf(self.address).call())

    def earnings(self, token: str = ETH) -> int:
        return self.contracts.earnings_of(self.address, token)
