"""Fabstir SDK: discover LLM hosts, open paid sessions, stream tokens.

The wire protocol (``fabstir_sdk.protocol``) and the contract bindings
(``fabstir_sdk.contracts``) live here so that the node imports them and the two
sides cannot drift.

Everything an application needs is importable from here (``from fabstir_sdk import
FabstirClient, FabstirError``). The errors load at once; the client and its dependencies
(web3, libp2p) load on first use, so ``import fabstir_sdk`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fabstir_sdk.errors import (
    ChainError,
    ConfigurationError,
    FabstirError,
    HostError,
    NoHostAvailable,
    UsageError,
)

__version__ = "0.1.0"

#: Public name -> the module that defines it (imported when the name is first used).
_LAZY = {
    "FabstirClient": "fabstir_sdk.client",
    "StrandedDeposit": "fabstir_sdk.client",
    "SessionResult": "fabstir_sdk.client",
    "StorageError": "fabstir_sdk.storage.errors",
    "Session": "fabstir_sdk.session",
    "ChatStream": "fabstir_sdk.session",
    "FailoverChat": "fabstir_sdk.failover",
    "HostInfo": "fabstir_sdk.discovery",
    "Settlement": "fabstir_sdk.contracts.client",
    "Usage": "fabstir_sdk.protocol",
    "ProtocolError": "fabstir_sdk.protocol",
    "P2PError": "fabstir_sdk.p2p",
    "ChainUnavailable": "fabstir_sdk.contracts.transactions",
    "TransactionFailed": "fabstir_sdk.contracts.transactions",
    "DeploymentError": "fabstir_sdk.contracts.deployment",
    "TokenizerError": "fabstir_sdk.tokenizer",
    "SyncClient": "fabstir_sdk.sync",
    "SyncSession": "fabstir_sdk.sync",
    "AuditError": "fabstir_sdk.audit",
    "AuditOutcome": "fabstir_sdk.audit",
    "AuditPolicy": "fabstir_sdk.audit",
    "AuditReport": "fabstir_sdk.audit",
    "Auditor": "fabstir_sdk.audit",
    "SignedTranscript": "fabstir_sdk.transcripts",
    "HostReputation": "fabstir_sdk.contracts.reputation",
}

__all__ = [
    "AuditError",
    "AuditOutcome",
    "AuditPolicy",
    "AuditReport",
    "Auditor",
    "ChainError",
    "ChainUnavailable",
    "ChatStream",
    "ConfigurationError",
    "DeploymentError",
    "FabstirClient",
    "FabstirError",
    "FailoverChat",
    "HostError",
    "HostInfo",
    "HostReputation",
    "NoHostAvailable",
    "P2PError",
    "ProtocolError",
    "Session",
    "SessionResult",
    "Settlement",
    "SignedTranscript",
    "StorageError",
    "StrandedDeposit",
    "SyncClient",
    "SyncSession",
    "TokenizerError",
    "TransactionFailed",
    "Usage",
    "UsageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fabstir_sdk' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from fabstir_sdk.audit import AuditError, Auditor, AuditOutcome, AuditPolicy, AuditReport
    from fabstir_sdk.client import FabstirClient, StrandedDeposit
    from fabstir_sdk.contracts.client import Settlement
    from fabstir_sdk.contracts.deployment import DeploymentError
    from fabstir_sdk.contracts.reputation import HostReputation
    from fabstir_sdk.contracts.transactions import ChainUnavailable, TransactionFailed
    from fabstir_sdk.discovery import HostInfo
    from fabstir_sdk.failover import FailoverChat
    from fabstir_sdk.p2p import P2PError
    from fabstir_sdk.protocol import ProtocolError, Usage
    from fabstir_sdk.session import ChatStream, Session
    from fabstir_sdk.sync import SyncClient, SyncSession
    from fabstir_sdk.tokenizer import TokenizerError
    from fabstir_sdk.transcripts import SignedTranscript
