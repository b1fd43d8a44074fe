"""Sending transactions from one key with locally managed nonces.

Anvil's automine can leave concurrent same-sender transactions pending, and a node that sends
checkpoints and settlements from several tasks would otherwise race on nonces: every
transaction from one key goes through one :class:`TransactionSender`.
"""

from __future__ import annotations

import threading
from typing import Any

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from fabstir_sdk.contracts.artifacts import load_artifact

GAS_HEADROOM = 1.2


class TransactionFailed(RuntimeError):
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
            tx = {**tx, "from": self.address, "nonce": self._nonce, "chainId": self.chain_id}
            tx.setdefault("gas", int(self.w3.eth.estimate_gas(tx) * GAS_HEADROOM))  # type: ignore[arg-type]
            tx_hash = self.w3.eth.send_raw_transaction(
                self.account.sign_transaction(tx).raw_transaction
            )
            self._nonce += 1
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
        self.gas_used[label] = int(receipt["gasUsed"])
        if receipt["status"] != 1:
            raise TransactionFailed(label, receipt)
        return receipt

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


def _strip(tx: Any) -> dict[str, Any]:
    """Drop the fields we set ourselves (``gas: 1`` only skips web3's own estimate)."""
    return {k: v for k, v in dict(tx).items() if k not in ("gas", "nonce", "from", "chainId")}
