"""Typed calls into the Fabstir contracts, shared by the SDK (client side) and the node (host
side). Reads retry with backoff when the RPC hiccups; writes go through one
:class:`TransactionSender` per key, so nonces never race."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.logs import DISCARD

from fabstir_sdk.contracts.deployment import ETH, Deployment
from fabstir_sdk.contracts.transactions import ChainUnavailable, TransactionSender, with_retries
from fabstir_sdk.contracts.vouchers import Voucher, VoucherDomain

__all__ = [
    "ChainUnavailable",
    "Contracts",
    "HostRecord",
    "ModelPin",
    "OnchainSession",
    "SessionStatus",
    "Settlement",
]


class SessionStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    CLOSE_REQUESTED = 2
    SETTLED = 3


@dataclass(frozen=True)
class OnchainSession:
    id: int
    client: str
    host: str
    token: str
    signer: str
    model_id: bytes
    deposit: int
    price: int
    checkpoint_tokens: int
    status: SessionStatus
    opened_at: int
    expires_at: int
    close_requested_at: int
    fee_bps: int
    dispute_window: int = 0  # seconds, fixed when the session opened

    @property
    def live(self) -> bool:
        return self.status in (SessionStatus.OPEN, SessionStatus.CLOSE_REQUESTED)

    @property
    def max_tokens(self) -> int:
        """The most tokens a voucher may cover (JobMarketplace.maxTokens)."""
        return ((self.deposit + 1) * 1000 - 1) // self.price if self.price else 0


@dataclass(frozen=True)
class HostRecord:
    address: str
    peer_id: bytes
    addrs: list[str]
    metadata: str
    models: list[bytes]
    stake: int
    active: bool  # registered, not unbonding, and staking at least the minimum
    unbonding_ends: int = 0  # unix time; 0 while registered
    stake_locked_until: int = 0  # the stake is not withdrawable before (its sessions' end)

    @property
    def registered(self) -> bool:
        """Registered and not unbonding (it may still be inactive: stake below the minimum)."""
        return bool(self.peer_id) and not self.unbonding_ends

    @property
    def withdrawable_at(self) -> int:
        """When an unbonding host can take its stake back (0 when not unbonding)."""
        if not self.unbonding_ends:
            return 0
        return max(self.unbonding_ends, self.stake_locked_until)


@dataclass(frozen=True)
class ModelPin:
    """What the ModelRegistry pins for a model: the sha256 of its GGUF file and of its
    tokenizer file (:func:`fabstir_sdk.tokenizer.tokenizer_sha256`), and whether it is active."""

    sha256: bytes
    tokenizer_sha256: bytes
    active: bool


@dataclass(frozen=True)
class Settlement:
    session_id: int
    tokens: int
    payment: int
    host_amount: int
    fee: int
    refund: int
    tx_hash: str
    gas_used: int


class Contracts:
    """The deployed protocol as seen from one account (or read-only without one)."""

    def __init__(
        self,
        w3: Web3,
        deployment: Deployment,
        account: LocalAccount | None = None,
        sender: TransactionSender | None = None,
    ) -> None:
        self.w3 = w3
        self.deployment = deployment
        self.market = deployment.contract(w3, "JobMarketplace")
        self.nodes = deployment.contract(w3, "NodeRegistry")
        self.models = deployment.contract(w3, "ModelRegistry")
        self.earnings = deployment.contract(w3, "HostEarnings")
        self.fab = deployment.contract(w3, "FabToken")
        self.sender = sender or (TransactionSender(w3, account) if account else None)

    @classmethod
    def connect(
        cls, rpc_url: str, deployment: Deployment, account: LocalAccount | None = None
    ) -> Contracts:
        w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": 30}))
        with_retries(lambda: w3.eth.chain_id, "connect")
        return cls(w3, deployment, account)

    @property
    def address(self) -> str:
        return self._sender().address

    def _sender(self) -> TransactionSender:
        if self.sender is None:
            raise RuntimeError("this Contracts object is read-only: give it an account")
        return self.sender

    def transact(self, call: Any, label: str, value: int = 0) -> Any:
        """Send a bound contract call from this account."""
        return self._sender().transact(call, label, value=value)

    def voucher_domain(self) -> VoucherDomain:
        return VoucherDomain(self.deployment.chain_id, self.market.address)

    # ----------------------------------------------------------------- reads

    def session(self, session_id: int) -> OnchainSession:
        s = with_retries(lambda: self.market.functions.getSession(session_id).call(), "session")
        return OnchainSession(
            id=session_id,
            client=s[0],
            opened_at=s[1],
            fee_bps=s[2],
            status=SessionStatus(s[3]),
            host=s[4],
            expires_at=s[5],
            dispute_window=s[6],
            token=s[7],
            close_requested_at=s[8],
            signer=s[9],
            model_id=bytes(s[10]),
            deposit=s[11],
            price=s[12],
            checkpoint_tokens=s[13],
        )

    def host(self, address: str) -> HostRecord:
        n = with_retries(lambda: self.nodes.functions.getNode(address).call(), "host")
        active = with_retries(lambda: self.nodes.functions.isActiveHost(address).call(), "host")
        return HostRecord(
            Web3.to_checksum_address(address),
            bytes(n[0]),
            list(n[1]),
            n[2],
            [bytes(m) for m in n[3]],
            n[4],
            bool(active),
            unbonding_ends=n[6],
            stake_locked_until=n[7],
        )

    def hosts_for_model(self, model_id: bytes, page: int = 100) -> list[str]:
        count = with_retries(
            lambda: self.nodes.functions.hostCountForModel(model_id).call(), "hosts"
        )
        hosts: list[str] = []
        for offset in range(0, count, page):
            call = self.nodes.functions.hostsForModel(model_id, offset, page)
            hosts += with_retries(call.call, "hosts")
        return hosts

    def price(self, host: str, model_id: bytes, token: str = ETH) -> int:
        return int(
            with_retries(
                lambda: self.nodes.functions.getPrice(host, model_id, token).call(), "price"
            )
        )

    def model_pin(self, model_id: bytes) -> ModelPin:
        """What the ModelRegistry pins for a registered model (reverts when unknown)."""
        m = with_retries(lambda: self.models.functions.getModel(model_id).call(), "model")
        return ModelPin(sha256=bytes(m[2]), tokenizer_sha256=bytes(m[3]), active=bool(m[5]))

    def finalizable_at(self, session_id: int) -> int:
        return int(
            with_retries(
                lambda: self.market.functions.finalizableAt(session_id).call(), "finalizableAt"
            )
        )

    def earnings_of(self, account: str, token: str = ETH) -> int:
        return int(
            with_retries(
                lambda: self.earnings.functions.balanceOf(account, token).call(), "earnings"
            )
        )

    def latest_timestamp(self) -> int:
        return int(with_retries(lambda: self.w3.eth.get_block("latest")["timestamp"], "block"))

    # ----------------------------------------------------------------- client writes

    def open_session(
        self,
        host: str,
        model_id: bytes,
        deposit: int,
        price: int,
        duration: int,
        signer: str,
        token: str = ETH,
    ) -> tuple[int, Any]:
        """Deposit and open; returns (session id, receipt)."""
        value = deposit if token == ETH else 0
        receipt = self._sender().transact(
            self.market.functions.open(host, model_id, token, deposit, price, duration, signer),
            "open",
            value=value,
        )
        events = self.market.events.SessionOpened().process_receipt(receipt, errors=DISCARD)
        return int(events[0]["args"]["sessionId"]), receipt

    def request_close(self, session_id: int) -> Any:
        return self._sender().transact(
            self.market.functions.requestClose(session_id), "requestClose"
        )

    def finalize(self, session_id: int) -> Settlement:
        receipt = self._sender().transact(self.market.functions.finalize(session_id), "finalize")
        return self._settlement(receipt)

    # ----------------------------------------------------------------- host writes

    def checkpoint(self, voucher: Voucher) -> Any:
        return self._sender().transact(
            self.market.functions.checkpoint(*voucher.as_args()), "checkpoint"
        )

    def settle(self, voucher: Voucher) -> Settlement:
        receipt = self._sender().transact(
            self.market.functions.settle(*voucher.as_args()), "settle"
        )
        return self._settlement(receipt)

    def withdraw(self, token: str = ETH) -> Any:
        return self._sender().transact(self.earnings.functions.withdraw(token), "withdraw")

    def settlement_of(self, session_id: int) -> Settlement | None:
        """The settlement of a settled session, from its event log."""
        start = self.deployment.deploy_block
        logs = with_retries(
            lambda: self.market.events.SessionSettled().get_logs(
                from_block=start, argument_filters={"sessionId": session_id}
            ),
            "settlement",
        )
        if not logs:
            return None
        event = logs[-1]
        receipt = with_retries(
            lambda: self.w3.eth.get_transaction_receipt(event["transactionHash"]), "receipt"
        )
        return self._settlement(receipt)

    def _settlement(self, receipt: Any) -> Settlement:
        [event] = self.market.events.SessionSettled().process_receipt(receipt, errors=DISCARD)
        a = event["args"]
        return Settlement(
            a["sessionId"],
            a["tokens"],
            a["payment"],
            a["hostAmount"],
            a["fee"],
            a["refund"],
            receipt["transactionHash"].hex(),
            receipt["gasUsed"],
        )
