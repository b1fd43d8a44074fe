"""Sending transactions from one key with locally managed nonces.

Anvil's automine can leave concurrent same-sender transactions pending, and a node that sends
checkpoints and settlements from several tasks would otherwise race on nonces: every
transaction from one key goes through one :class:`TransactionSender`.

A :class:`SmartAccountSender` sends every call through a smart account's
``execute(target, value, data)`` instead, signed and paid for by its owner key: the protocol
sees the account as ``msg.sender`` (the session's client, the job's client, the rater).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from eth_account.signers.local import LocalAccount
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import Web3RPCError
from web3.types import TxReceipt

from fabstir_sdk.contracts.artifacts import load_artifact
from fabstir_sdk.errors import ChainError, ConfigurationError, UsageError

GAS_HEADROOM = 1.2
#: Added to every estimate: a node estimates against the latest block, and in the next one a
#: slot may be created instead of updated (FAB's vote checkpoint in a new second, a fresh
#: ledger entry), up to 20,000 gas more than estimated. Unused gas is not charged.
GAS_SLACK = 25_000
T = TypeVar("T")
RETRIES = (0.2, 0.5, 1.0, 2.0)
TRANSIENT = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)


class ChainUnavailable(ChainError):
    """The RPC endpoint did not answer after retries."""


def with_retries(fn: Callable[[], T], what: str) -> T:
    """Call ``fn``, retrying transient RPC failures with backoff."""
    for delay in (*RETRIES, None):
        try:
            return fn()
        except TRANSIENT as exc:
            if delay is None:
                raise ChainUnavailable(f"{what}: the chain RPC is unreachable ({exc})") from exc
            time.sleep(delay)
    raise AssertionError("unreachable")


class TransactionFailed(ChainError):
    """A transaction was mined but reverted."""

    def __init__(self, label: str, receipt: TxReceipt) -> None:
        super().__init__(f"transaction '{label}' reverted (tx {receipt['transactionHash'].hex()})")
        self.receipt = receipt


class TransactionSender:
    """Signs and sends transactions one at a time from ``account``; records gas per label."""

    def __init__(self, w3: Web3, account: LocalAccount) -> None:
        self.w3 = w3
        self.account = account
        self.chain_id = w3.eth.chain_id
        self.gas_used: dict[str, int] = {}
        self._lock = threading.Lock()
        self._nonce = int(w3.eth.get_transaction_count(account.address, "pending"))

    @property
    def address(self) -> str:
        return str(self.account.address)

    def send(self, tx: dict[str, Any], label: str) -> TxReceipt:
        """Send ``tx`` and wait for its receipt; raise :class:`TransactionFailed` on revert."""
        with self._lock:
            for attempt in range(2):
                try:
                    tx_hash = self._submit(tx, label)
                    break
                except Web3RPCError as exc:
                    # Another process sent from this key (e.g. `fabstir-node register` while
                    # the node ran): resynchronize once and re-sign.
                    if attempt or "nonce too low" not in str(exc):
                        raise
                    self._nonce = int(
                        self.w3.eth.get_transaction_count(self.account.address, "pending")
                    )
        receipt = with_retries(
            lambda: self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120), label
        )
        self.gas_used[label] = int(receipt["gasUsed"])
        if receipt["status"] != 1:
            raise TransactionFailed(label, receipt)
        return receipt

    def _submit(self, tx: dict[str, Any], label: str) -> Any:
        # Fewer transactions on the chain than we sent: a reorganisation dropped some, and a
        # nonce above the chain's would wait forever. Go on from the chain's count.
        pending = int(
            with_retries(
                lambda: self.w3.eth.get_transaction_count(self.account.address, "pending"), label
            )
        )
        self._nonce = min(self._nonce, pending)
        tx = {**tx, "from": self.account.address, "nonce": self._nonce, "chainId": self.chain_id}
        if "gas" not in tx:
            estimate = with_retries(lambda: self.w3.eth.estimate_gas(tx), label)  # type: ignore[arg-type]
            tx["gas"] = int(estimate * GAS_HEADROOM) + GAS_SLACK
        signed = self.account.sign_transaction(tx)
        # Resending the same signed bytes is idempotent: a retry can't double-spend.
        try:
            with_retries(lambda: self.w3.eth.send_raw_transaction(signed.raw_transaction), label)
        except Web3RPCError as exc:
            if "already known" not in str(exc):
                raise
        self._nonce += 1
        return signed.hash

    def transact(self, call: Any, label: str, value: int = 0) -> TxReceipt:
        """Send a bound contract call, e.g. ``market.functions.settle(...)``."""
        tx = call.build_transaction({"from": self.address, "value": value, "gas": 1})
        return self.send(_strip(tx), label)

    def deploy(self, name: str, *args: Any) -> Contract:
        """Deploy contract ``name`` from the exported artifacts."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.address, "gas": 1})
        receipt = self.send(_strip(tx), f"deploy {name}")
        address = receipt["contractAddress"]
        if address is None:
            raise TransactionFailed(f"deploy {name}", receipt)
        return self.w3.eth.contract(address=address, abi=artifact.abi)


#: What :class:`SmartAccountSender` calls: ``execute(address,uint256,bytes)``, as in ERC-4337's
#: reference SimpleAccount (and ``MinimalAccount``, the test account), so any account with
#: that entry point works, not only ours.
EXECUTE_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "execute",
        "stateMutability": "nonpayable",
        "inputs": [
            {"name": "target", "type": "address"},
            {"name": "value", "type": "uint256"},
            {"name": "data", "type": "bytes"},
        ],
        "outputs": [],
    }
]


class SmartAccountSender(TransactionSender):
    """Sends each transaction as ``execute(to, value, data)`` on the smart account
    ``account_address``, from its owner key ``owner`` (which signs, pays the gas and holds
    the nonce; the account must let its owner call ``execute`` directly). ``address`` is the
    account: it is what the contracts see as the caller. ETH a call carries comes out of the
    account's own balance, not the owner's, and refunds go back to the account."""

    def __init__(self, w3: Web3, owner: LocalAccount, account_address: str) -> None:
        if not Web3.is_address(account_address):
            raise ConfigurationError(f"smart account {account_address!r} is not an address")
        account_address = Web3.to_checksum_address(account_address)
        code = with_retries(lambda: w3.eth.get_code(account_address), "smart account")
        if not code:
            raise ConfigurationError(f"no contract at smart account {account_address}")
        super().__init__(w3, owner)
        self.smart_account = w3.eth.contract(address=account_address, abi=EXECUTE_ABI)

    @property
    def address(self) -> str:
        return str(self.smart_account.address)

    def send(self, tx: dict[str, Any], label: str) -> TxReceipt:
        """Send ``tx`` (``to``, ``data``, ``value``) through the account's ``execute``; the gas
        is estimated for the whole, any ``gas`` in ``tx`` is left out."""
        if not tx.get("to"):
            raise UsageError("a smart account cannot deploy contracts: deploy from a key")
        call = self.smart_account.functions.execute(
            tx["to"], int(tx.get("value", 0)), bytes(HexBytes(tx.get("data", b"")))
        )
        wrapped = call.build_transaction({"from": self.account.address, "gas": 1})
        return super().send(_strip(wrapped), label)


def _strip(tx: Any) -> dict[str, Any]:
    """Drop the fields we set ourselves (``gas: 1`` only skips web3's own estimate)."""
    return {k: v for k, v in dict(tx).items() if k not in ("gas", "nonce", "from", "chainId")}
