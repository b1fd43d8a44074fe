"""Typed calls into the Fabstir contracts, shared by the SDK (client side) and the node (host
side). Reads retry with backoff when the RPC hiccups; writes go through one
:class:`TransactionSender` per key, so nonces never race."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
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
    """A session as the marketplace stores it, with the terms it keeps only as a hash (read
    back from its ``SessionOpened`` event and checked against that hash)."""

    id: int
    client: str
    host: str
    token: str
    signer: str
    model_id: bytes
    deposit: int
    price: int
    checkpoint_tokens: int  # the best checkpoint while live; the tokens paid once settled
    status: SessionStatus
    opened_block: int
    expires_at: int  # brought forward to the close request's time by requestClose
    fee_bps: int
    dispute_window: int = 0  # seconds, fixed when the session opened

    @property
    def live(self) -> bool:
        return self.status in (SessionStatus.OPEN, SessionStatus.CLOSE_REQUESTED)

    @property
    def max_tokens(self) -> int:
        """The most tokens a voucher may cover (JobMarketplace.maxTokens)."""
        return ((self.deposit + 1) * 1000 - 1) // self.price if self.price else 0

    @property
    def terms(self) -> tuple[str, str, int, int]:
        """The ``Terms`` that checkpoint, settle and finalize take: (token, signer, deposit,
        price)."""
        return (self.token, self.signer, self.deposit, self.price)


@dataclass(frozen=True)
class _Terms:
    model_id: bytes
    token: str
    signer: str
    deposit: int
    price: int


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
        self.board = deployment.contract(w3, "JobBoard")
        self.fab = deployment.contract(w3, "FabToken")
        self.sender = sender or (TransactionSender(w3, account) if account else None)
        self._terms_cache: dict[int, _Terms] = {}

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
        client, expires_at, fee_bps, opened_block, host, tokens, status, window, terms_hash = s
        status = SessionStatus(status)
        terms = (
            _Terms(bytes(32), ETH, ETH, 0, 0)
            if status is SessionStatus.NONE
            else self._terms(session_id, opened_block, bytes(terms_hash))
        )
        return OnchainSession(
            id=session_id,
            client=client,
            host=host,
            token=terms.token,
            signer=terms.signer,
            model_id=terms.model_id,
            deposit=terms.deposit,
            price=terms.price,
            checkpoint_tokens=tokens,
            status=status,
            opened_block=opened_block,
            expires_at=expires_at,
            fee_bps=fee_bps,
            dispute_window=window,
        )

    def _terms(self, session_id: int, block: int, terms_hash: bytes) -> _Terms:
        """A session's terms from its ``SessionOpened`` event, checked against the hash the
        marketplace stores (immutable, so cached)."""
        cached = self._terms_cache.get(session_id)
        if cached is not None:
            return cached
        logs = with_retries(
            lambda: self.market.events.SessionOpened().get_logs(
                from_block=block, to_block=block, argument_filters={"sessionId": session_id}
            ),
            "session terms",
        )
        for log in logs:
            a = log["args"]
            terms = _Terms(bytes(a["modelId"]), a["token"], a["signer"], a["deposit"], a["price"])
            encoded = abi_encode(
                ["address", "address", "uint256", "uint256"],
                [terms.token, terms.signer, terms.deposit, terms.price],
            )
            if keccak(encoded) == terms_hash:
                self._terms_cache[session_id] = terms
                return terms
        raise ChainUnavailable(f"session {session_id}: no SessionOpened event matches its terms")

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
        """What ``account`` can withdraw in ``token`` from both escrows' ledgers (sessions and
        jobs): earnings, fees, and refunds that could not be pushed."""
        return sum(self._owed(escrow, account, token) for escrow in (self.market, self.board))

    def _owed(self, escrow: Any, account: str, token: str) -> int:
        return int(with_retries(lambda: escrow.functions.owed(account, token).call(), "owed"))

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
        terms = self.session(session_id).terms
        receipt = self._sender().transact(
            self.market.functions.finalize(session_id, terms), "finalize"
        )
        return self._settlement(receipt)

    # ----------------------------------------------------------------- host writes

    def checkpoint(self, voucher: Voucher) -> Any:
        call = self.market.functions.checkpoint(*self._voucher_args(voucher))
        return self._sender().transact(call, "checkpoint")

    def settle(self, voucher: Voucher) -> Settlement:
        call = self.market.functions.settle(*self._voucher_args(voucher))
        return self._settlement(self._sender().transact(call, "settle"))

    def _voucher_args(self, voucher: Voucher) -> tuple[Any, ...]:
        """(sessionId, terms, cumulativeTokens, transcriptHash, signature)."""
        session_id, *rest = voucher.as_args()
        return (session_id, self.session(session_id).terms, *rest)

    def withdraw(self, token: str = ETH) -> list[Any]:
        """Withdraw everything this account is owed in ``token`` from each escrow that owes it
        something; returns the receipts (none when nothing is owed)."""
        return [
            self._sender().transact(escrow.functions.withdraw(token), "withdraw")
            for escrow in (self.market, self.board)
            if self._owed(escrow, self.address, token)
        ]

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
