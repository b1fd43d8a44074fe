"""Typed calls into the JobBoard: posting, claiming, completing and settling jobs.

Shared by the SDK (clients post and read) and the node (hosts claim and complete), like
:mod:`fabstir_sdk.contracts.client` for sessions. Reads retry with backoff; writes go through
the account's one :class:`~fabstir_sdk.contracts.transactions.TransactionSender`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.logs import DISCARD

from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.deployment import ETH
from fabstir_sdk.contracts.relayed import JOB_BOARD_DOMAIN, Eip712Domain, PostRequest, sign_post
from fabstir_sdk.contracts.transactions import with_retries

__all__ = ["JobBoard", "JobSettlement", "JobStatus", "OnchainJob", "Verdict"]


class JobStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    CLAIMED = 2
    COMPLETED = 3
    DISPUTED = 4
    PAID = 5
    REFUNDED = 6


class Verdict(enum.IntEnum):
    """Why the ProofSystem refused a job's proofs (or VALID)."""

    VALID = 0
    WRONG_COUNT = 1
    WRONG_INSTANCES = 2
    INPUT_MISMATCH = 3
    REPLAYED = 4
    INVALID = 5


@dataclass(frozen=True)
class OnchainJob:
    id: int
    client: str
    deadline: int
    fee_bps: int
    status: JobStatus
    proof_required: bool
    host: str
    claimed_until: int
    token: str
    completed_at: int
    challenge_window: int
    model_id: bytes
    input_hash: bytes
    input_commitment: bytes
    result_hash: bytes
    output_commitment: bytes
    max_payment: int
    payment: int

    def claimable(self, now: int) -> bool:
        """What ``JobBoard.isClaimable`` says at block time ``now``."""
        lapsed = self.status == JobStatus.CLAIMED and now > self.claimed_until
        return (self.status == JobStatus.OPEN or lapsed) and now < self.deadline

    @property
    def has_result(self) -> bool:
        """Completed (and maybe disputed or paid since): its result is in the store."""
        return self.status in (JobStatus.COMPLETED, JobStatus.DISPUTED, JobStatus.PAID)


@dataclass(frozen=True)
class JobSettlement:
    job_id: int
    payment: int
    host_amount: int
    fee: int
    refund: int
    paid: bool


class JobBoard:
    """The JobBoard as seen from one account (``contracts``' own)."""

    def __init__(self, contracts: Contracts) -> None:
        self.contracts = contracts
        self.board = contracts.deployment.contract(contracts.w3, "JobBoard")

    # ----------------------------------------------------------------- reads

    def job(self, job_id: int) -> OnchainJob:
        j = with_retries(lambda: self.board.functions.getJob(job_id).call(), "job")
        return OnchainJob(
            job_id,
            j[0],
            int(j[1]),
            int(j[2]),
            JobStatus(j[3]),
            bool(j[4]),
            j[5],
            int(j[6]),
            j[7],
            int(j[8]),
            int(j[9]),
            bytes(j[10]),
            bytes(j[11]),
            bytes(j[12]),
            bytes(j[13]),
            bytes(j[14]),
            int(j[15]),
            int(j[16]),
        )

    def nonce(self, client: str) -> int:
        """``client``'s next nonce for a signed job (``postFor``)."""
        return int(with_retries(lambda: self.board.functions.nonces(client).call(), "nonce"))

    @property
    def domain(self) -> Eip712Domain:
        """The board's EIP-712 domain, for jobs signed for ``postFor``."""
        chain_id = self.contracts.deployment.chain_id
        return Eip712Domain(JOB_BOARD_DOMAIN, chain_id, self.board.address)

    def settlement_of(self, job_id: int) -> JobSettlement | None:
        """The settlement of a settled job, from its event log."""
        start = self.contracts.deployment.deploy_block
        logs = with_retries(
            lambda: self.board.events.JobSettled().get_logs(
                from_block=start, argument_filters={"jobId": job_id}
            ),
            "job settlement",
        )
        return _settlement(logs[-1]) if logs else None

    # ----------------------------------------------------------------- client writes

    def post(
        self,
        model_id: bytes,
        input_hash: bytes,
        max_payment: int,
        duration: int,
        *,
        token: str = ETH,
        input_commitment: bytes = bytes(32),
        proof_required: bool = False,
    ) -> int:
        """Escrow ``max_payment`` and post the job; returns its id. An ERC20 must be approved
        to the board first."""
        call = self.board.functions.post(
            model_id, input_hash, input_commitment, token, max_payment, duration, proof_required
        )
        value = max_payment if token == ETH else 0
        receipt = self.contracts.transact(call, "post job", value=value)
        [event] = self.board.events.JobPosted().process_receipt(receipt, errors=DISCARD)
        return int(event["args"]["jobId"])

    def post_request(
        self,
        client: str,
        model_id: bytes,
        input_hash: bytes,
        max_payment: int,
        duration: int,
        *,
        token: str,
        deadline: int,
        input_commitment: bytes = bytes(32),
        proof_required: bool = False,
    ) -> PostRequest:
        """A job for ``client`` to sign (with :meth:`sign_post`), at its next nonce. Paid in
        an ERC20 only: ``postFor`` pulls ``max_payment`` from the client's allowance to the
        board, and ETH cannot be pulled."""
        return PostRequest(
            client,
            model_id,
            input_hash,
            max_payment,
            duration,
            token,
            self.nonce(client),
            deadline,
            input_commitment,
            proof_required,
        )

    def sign_post(self, wallet: LocalAccount, request: PostRequest) -> bytes:
        """``wallet``'s signature of ``request``: the client's key, or a smart account's owner
        key when the account checks its owner's signature over the digest (ERC-1271)."""
        return sign_post(wallet, self.domain, request)

    def post_for(self, request: PostRequest, signature: bytes) -> int:
        """Post (and pay the gas of) a job its client signed; returns its id. The deposit
        comes from the client, and the job (its refund too) is the client's."""
        call = self.board.functions.postFor(request.as_tuple(), signature)
        receipt = self.contracts.transact(call, "post job for")
        [event] = self.board.events.JobPosted().process_receipt(receipt, errors=DISCARD)
        return int(event["args"]["jobId"])

    def cancel(self, job_id: int) -> JobSettlement:
        return self._settling(self.board.functions.cancel(job_id), "cancel job")

    def expire(self, job_id: int) -> JobSettlement:
        return self._settling(self.board.functions.expire(job_id), "expire job")

    def dispute(self, job_id: int) -> Any:
        return self.contracts.transact(self.board.functions.dispute(job_id), "dispute job")

    def release(self, job_id: int) -> JobSettlement:
        return self._settling(self.board.functions.release(job_id), "release job")

    # ----------------------------------------------------------------- host writes

    def claim(self, job_id: int) -> int:
        """Claim the job; returns the block time the claim lasts until."""
        receipt = self.contracts.transact(self.board.functions.claim(job_id), "claim job")
        [event] = self.board.events.JobClaimed().process_receipt(receipt, errors=DISCARD)
        return int(event["args"]["claimedUntil"])

    def complete(self, job_id: int, result_hash: bytes, payment: int) -> Any:
        return self.contracts.transact(
            self.board.functions.complete(job_id, result_hash, payment), "complete job"
        )

    def submit_proofs(
        self,
        job_id: int,
        result_hash: bytes,
        payment: int,
        proofs: list[bytes],
        instances: list[list[int]],
    ) -> tuple[Verdict, JobSettlement | None]:
        """Submit the proofs; returns the verdict and, when accepted, the settlement."""
        call = self.board.functions.submitProofs(job_id, result_hash, payment, proofs, instances)
        receipt = self.contracts.transact(call, "submit proofs")
        rejected = self.board.events.ProofRejected().process_receipt(receipt, errors=DISCARD)
        if rejected:
            return Verdict(rejected[0]["args"]["verdict"]), None
        [event] = self.board.events.JobSettled().process_receipt(receipt, errors=DISCARD)
        return Verdict.VALID, _settlement(event)

    def _settling(self, call: Any, label: str) -> JobSettlement:
        receipt = self.contracts.transact(call, label)
        [event] = self.board.events.JobSettled().process_receipt(receipt, errors=DISCARD)
        return _settlement(event)


def _settlement(event: Any) -> JobSettlement:
    a = event["args"]
    return JobSettlement(
        int(a["jobId"]),
        int(a["payment"]),
        int(a["hostAmount"]),
        int(a["fee"]),
        int(a["refund"]),
        bool(a["paid"]),
    )
