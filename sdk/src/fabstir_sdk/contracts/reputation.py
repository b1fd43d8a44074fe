"""Typed calls into the ReputationSystem: hosts' public records, ratings, audit reports and
heartbeats.

Shared by the SDK (clients read records, rate and report audits) and the node (hosts beat),
like :mod:`fabstir_sdk.contracts.jobs` for the JobBoard. Reads retry with backoff; writes go
through the account's one :class:`~fabstir_sdk.contracts.transactions.TransactionSender`.
What each signal proves, and how it can be gamed, is documented on the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from eth_account.signers.local import LocalAccount

from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.relayed import REPUTATION_DOMAIN, Eip712Domain, sign_rating
from fabstir_sdk.contracts.transactions import with_retries

__all__ = ["UPTIME_WINDOW", "HostReputation", "Reputation"]

#: The uptime window :meth:`Reputation.record` reads, in epochs (a day at 1-hour epochs).
UPTIME_WINDOW = 24


@dataclass(frozen=True)
class HostReputation:
    """A host's on-chain record (``ReputationSystem.recordOf``) and its recent uptime."""

    host: str
    sessions: int
    audits_passed: int
    audits_failed: int
    ratings: int
    tokens_served: int
    rating_sum: int
    uptime_beats: int  # epochs with a heartbeat among the last ``uptime_window``
    uptime_window: int = UPTIME_WINDOW

    @property
    def mean_rating(self) -> float | None:
        """The mean score, 1 to 5; None before the first rating."""
        return self.rating_sum / self.ratings if self.ratings else None


class Reputation:
    """The ReputationSystem as seen from one account (``contracts``' own)."""

    def __init__(self, contracts: Contracts) -> None:
        self.contracts = contracts
        self.reputation = contracts.deployment.contract(contracts.w3, "ReputationSystem")

    # ----------------------------------------------------------------- reads

    @cached_property
    def epoch(self) -> int:
        """Seconds per heartbeat epoch (``EPOCH``, immutable)."""
        return int(with_retries(lambda: self.reputation.functions.EPOCH().call(), "epoch"))

    def current_epoch(self) -> int:
        return int(
            with_retries(lambda: self.reputation.functions.currentEpoch().call(), "current epoch")
        )

    def record(self, host: str) -> HostReputation:
        """``host``'s counters and its heartbeats over the last :data:`UPTIME_WINDOW` epochs."""
        r = with_retries(lambda: self.reputation.functions.recordOf(host).call(), "reputation")
        beats = with_retries(
            lambda: self.reputation.functions.uptime(host, UPTIME_WINDOW).call(), "uptime"
        )
        return HostReputation(
            host=host,
            sessions=int(r[0]),
            audits_passed=int(r[1]),
            audits_failed=int(r[2]),
            ratings=int(r[3]),
            tokens_served=int(r[4]),
            rating_sum=int(r[5]),
            uptime_beats=int(beats),
        )

    def beat_this_epoch(self, host: str) -> bool:
        """Whether ``host`` has sent its heartbeat for the current epoch."""
        beats = with_retries(lambda: self.reputation.functions.uptime(host, 1).call(), "uptime")
        return bool(beats)

    def rated(self, session_id: int) -> bool:
        return bool(
            with_retries(lambda: self.reputation.functions.rated(session_id).call(), "rated")
        )

    @property
    def domain(self) -> Eip712Domain:
        """The contract's EIP-712 domain, for ratings signed for ``rateBySig``."""
        chain_id = self.contracts.deployment.chain_id
        return Eip712Domain(REPUTATION_DOMAIN, chain_id, self.reputation.address)

    def audit_reported(self, transcript_hash: bytes) -> bool:
        return bool(
            with_retries(
                lambda: self.reputation.functions.auditReported(transcript_hash).call(),
                "audit reported",
            )
        )

    # ----------------------------------------------------------------- writes

    def record_session(self, session_id: int) -> Any:
        """Count a settled session in its host's record (anyone may)."""
        return self.contracts.transact(
            self.reputation.functions.recordSession(session_id), "record session"
        )

    def rate(self, session_id: int, score: int) -> Any:
        """Rate the host of a settled session this account paid for, 1 to 5."""
        return self.contracts.transact(self.reputation.functions.rate(session_id, score), "rate")

    def sign_rating(
        self, wallet: LocalAccount, session_id: int, score: int, deadline: int
    ) -> bytes:
        """``wallet``'s signature of a rating, for anyone to submit with :meth:`rate_by_sig`:
        the session's client key, or a smart account's owner key when the account checks its
        owner's signature over the digest (ERC-1271, as ``MinimalAccount`` does)."""
        return sign_rating(wallet, self.domain, session_id, score, deadline)

    def rate_by_sig(self, session_id: int, score: int, deadline: int, signature: bytes) -> Any:
        """Submit (and pay the gas of) a rating the session's client signed; valid until
        block time ``deadline``."""
        call = self.reputation.functions.rateBySig(session_id, score, deadline, signature)
        return self.contracts.transact(call, "rate by signature")

    def report_audit(
        self, session_id: int, record: bytes, host_signature: bytes, passed: bool
    ) -> Any:
        """Report an audit of a transcript the host signed (``sign_transcript`` over
        keccak256(``record``)) in a session this account opened; ``record`` goes on-chain
        in calldata as public evidence."""
        call = self.reputation.functions.reportAudit(session_id, record, host_signature, passed)
        return self.contracts.transact(call, "report audit")

    def heartbeat(self) -> Any:
        """Mark this host up in the current epoch (active hosts, once per epoch)."""
        return self.contracts.transact(self.reputation.functions.heartbeat(), "heartbeat")
