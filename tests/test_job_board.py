"""JobBoard: a job's lifecycle (post, claim, complete, release, dispute, expire, cancel), every
custom error, and the money of each settlement to the wei."""

from typing import Any

import ape
import pytest

from contract_helpers import ADDRS, ETH, ETHER, FEE_BPS, MIN_STAKE, UNBONDING, add_model

INPUT_HASH = bytes.fromhex("33" * 32)  # the post_job fixture's default
RESULT_HASH = bytes.fromhex("ab" * 32)
ZERO = b"\x00" * 32
OPEN, CLAIMED, COMPLETED, DISPUTED, PAID, REFUNDED = range(1, 7)


def split(payment: int, max_payment: int, fee_bps: int = FEE_BPS) -> tuple[int, int, int]:
    """(host amount, fee, refund) of a job paid ``payment`` out of ``max_payment``."""
    fee = payment * fee_bps // 10_000
    return payment - fee, fee, max_payment - payment


def settled(receipt: Any, board: Any) -> Any:
    [event] = receipt.events.filter(board.JobSettled)
    assert event.hostAmount + event.fee + event.refund == board.getJob(event.jobId).maxPayment
    return event


def claimed_until(receipt: Any, board: Any) -> int:
    return int(receipt.events.filter(board.JobClaimed)[0].claimedUntil)


# ------------------------------------------------------------------ post


def completed_job(board: Any, post_job: Any, host: Any, payment: int, **kw: Any) -> tuple[int, int]:
    """A job claimed and completed by ``host``; returns its id and when it becomes releasable."""
    job_id = post_job(**kw)
    board.claim(job_id, sender=host)
    receipt = board.complete(job_id, RESULT_HASH, payment, sender=host)
    return job_id, int(receipt.events.filter(board.JobCompleted)[0].releasableAt)


def test_post_in_eth_escrows_the_maximum_and_records_the_job(
    chain: Any, board: Any, client: Any, model_id: bytes
) -> None:
    max_payment = 10**15 + 3
    before = client.balance
    posted_at = chain.pending_timestamp
    receipt = board.post(
        model_id, INPUT_HASH, ZERO, ETH, max_payment, 3600, False, value=max_payment, sender=client
    )
    [event] = receipt.events.filter(board.JobPosted)
    job_id = event.jobId
    assert job_id == 1 and board.nextJobId() == 2
    # Everything a node needs to pick the job up is in the event.
    assert event.client == client.address and bytes(event.modelId) == model_id
    assert bytes(event.inputHash) == INPUT_HASH and bytes(event.inputCommitment) == ZERO
    assert event.token == ETH and event.maxPayment == max_payment
    assert event.deadline == posted_at + 3600 and not event.proofRequired
    job = board.getJob(job_id)
    assert job.client == client.address and job.status == OPEN and job.host == ETH
    assert job.deadline == posted_at + 3600 and job.feeBps == FEE_BPS
    assert job.challengeWindow == board.challengeWindow() and job.token == ETH
    assert bytes(job.modelId) == model_id and bytes(job.inputHash) == INPUT_HASH
    assert job.maxPayment == max_payment and job.payment == 0 and not job.proofRequired
    assert board.isClaimable(job_id)
    assert board.balance == max_payment
    assert before - client.balance == max_payment + receipt.total_fees_paid


def test_post_in_erc20_pulls_exactly_the_maximum(
    board: Any, post_job: Any, client: Any, usd: Any
) -> None:
    job_id = post_job(max_payment=5 * 10**6, token=usd)
    assert usd.balanceOf(board) == 5 * 10**6 and usd.balanceOf(client) == 0
    assert board.getJob(job_id).token == usd.address
    assert board.balance == 0


def test_post_errors(
    board: Any,
    post_job: Any,
    client: Any,
    usd: Any,
    models: Any,
    owner: Any,
    model_id: bytes,
    proven_model_id: bytes,
    project: Any,
) -> None:
    def attempt(
        token: str = ETH,
        max_payment: int = 10**15,
        value: int | None = None,
        duration: int = 3600,
        model: bytes = model_id,
        input_hash: bytes = INPUT_HASH,
        commitment: bytes = ZERO,
        proof_required: bool = False,
    ) -> None:
        if value is None:
            value = max_payment if token == ETH else 0
        board.post(
            model,
            input_hash,
            commitment,
            token,
            max_payment,
            duration,
            proof_required,
            value=value,
            sender=client,
        )

    with ape.reverts(board.TokenNotAllowed, token=client.address):
        attempt(token=client.address, value=0)
    with ape.reverts(board.DepositOutOfRange):
        attempt(max_payment=10**9 - 1)
    with ape.reverts(board.DepositOutOfRange):
        attempt(max_payment=100 * ETHER + 1)
    with ape.reverts(board.DepositOutOfRange):
        attempt(token=usd.address, max_payment=10**4 - 1)
    with ape.reverts(board.WrongValue, expected=10**15, received=10**15 - 1):
        attempt(value=10**15 - 1)
    with ape.reverts(board.WrongValue, expected=0, received=1):
        attempt(token=usd.address, max_payment=10**6, value=1)
    with ape.reverts(board.InvalidDuration, duration=59):
        attempt(duration=59)
    with ape.reverts(board.InvalidDuration, duration=30 * 24 * 3600 + 1):
        attempt(duration=30 * 24 * 3600 + 1)
    with ape.reverts(board.ModelNotActive):
        attempt(model=b"\x01" * 32)  # unknown
    with ape.reverts(board.ZeroHash):
        attempt(input_hash=ZERO)
    with ape.reverts(board.NotProvenModel, modelId=model_id):
        attempt(proof_required=True, commitment=b"\x09" * 32)
    with ape.reverts(board.ZeroHash):
        attempt(model=proven_model_id, proof_required=True, commitment=ZERO)
    with ape.reverts(usd.ERC20InsufficientAllowance):
        attempt(token=usd.address, max_payment=10**6)  # not approved
    # A token that takes a fee on transfer would break exact accounting: refused.
    taxed = owner.deploy(project.ReentrantToken)
    board.setTokenConfig(taxed, True, 1, 10**24, sender=owner)
    taxed.setTransferFee(100, sender=client)
    with ape.reverts(board.UnsupportedToken):
        post_job(max_payment=10**6, token=taxed)
    other = add_model(models, owner, "org/other", "o.gguf", b"\x01" * 32)
    models.deactivateModel(other, sender=owner)
    with ape.reverts(board.ModelNotActive, modelId=other):
        attempt(model=other)
    # The bounds themselves are accepted.
    attempt(max_payment=10**9, duration=60)
    attempt(max_payment=100 * ETHER, duration=30 * 24 * 3600)
    assert board.nextJobId() == 3
    assert board.balance == 10**9 + 100 * ETHER


def test_pause_stops_only_new_jobs(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, owner: Any, stranger: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job()
    board.pause(sender=owner)
    with ape.reverts(board.EnforcedPause):
        post_job()
    board.claim(job_id, sender=host)
    receipt = board.complete(job_id, RESULT_HASH, 10**14, sender=host)
    chain.pending_timestamp = receipt.events.filter(board.JobCompleted)[0].releasableAt
    board.release(job_id, sender=stranger)
    board.unpause(sender=owner)
    post_job()


# ------------------------------------------------------------------ claim


def test_claim_records_the_host_and_locks_its_stake(
    chain: Any, board: Any, nodes: Any, post_job: Any, board_hosts: Any
) -> None:
    host, host2 = board_hosts
    job_id = post_job(duration=3600)
    deadline = board.getJob(job_id).deadline
    at = chain.pending_timestamp
    receipt = board.claim(job_id, sender=host)
    [event] = receipt.events.filter(board.JobClaimed)
    assert event.jobId == job_id and event.host == host.address
    assert event.claimedUntil == at + board.claimTimeout()
    job = board.getJob(job_id)
    assert job.status == CLAIMED and job.host == host.address
    assert job.claimedUntil == at + board.claimTimeout()
    assert not board.isClaimable(job_id)
    lock = deadline + board.challengeWindow()
    [locked] = receipt.events.filter(nodes.StakeLockedUntil)
    assert locked.host == host.address and locked.until == lock
    assert nodes.getNode(host).stakeLockedUntil == lock
    # First claim wins.
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.claim(job_id, sender=host2)
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.claim(job_id, sender=host)


def test_claim_errors(
    chain: Any,
    board: Any,
    post_job: Any,
    board_hosts: Any,
    stranger: Any,
    models: Any,
    owner: Any,
    nodes: Any,
    model_id: bytes,
) -> None:
    host, host2 = board_hosts
    job_id = post_job()
    with ape.reverts(board.NotClaimable, jobId=999):
        board.claim(999, sender=host)
    with ape.reverts(board.HostNotActive, host=stranger.address):
        board.claim(job_id, sender=stranger)
    other = add_model(models, owner, "org/other", "o.gguf", b"\x01" * 32)
    other_job = post_job(model=other)
    with ape.reverts(board.HostDoesNotServeModel, host=host.address, modelId=other):
        board.claim(other_job, sender=host)
    nodes.unregister(sender=host2)  # unbonding: no longer active
    with ape.reverts(board.HostNotActive, host=host2.address):
        board.claim(job_id, sender=host2)
    nodes.setMinStake(MIN_STAKE + 1, sender=owner)  # below the minimum stake: not active
    with ape.reverts(board.HostNotActive, host=host.address):
        board.claim(job_id, sender=host)
    nodes.setMinStake(MIN_STAKE, sender=owner)
    # Nobody claims at or after the deadline.
    chain.pending_timestamp = board.getJob(job_id).deadline
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.claim(job_id, sender=host)
    assert board.getJob(job_id).status == OPEN
    assert bytes(board.getJob(job_id).modelId) == model_id


def test_lapsed_claim_is_taken_over_by_another_host(
    chain: Any, board: Any, post_job: Any, board_hosts: Any
) -> None:
    host, host2 = board_hosts
    job_id = post_job(duration=3600)
    until = claimed_until(board.claim(job_id, sender=host), board)
    # Up to and including claimedUntil the claim holds.
    chain.pending_timestamp = until
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.claim(job_id, sender=host2)
    chain.mine(timestamp=until + 1)
    assert board.isClaimable(job_id)
    receipt = board.claim(job_id, sender=host2)
    assert receipt.events.filter(board.JobClaimed)[0].host == host2.address
    assert board.getJob(job_id).host == host2.address
    with ape.reverts(board.NotJobHost, jobId=job_id):
        board.complete(job_id, RESULT_HASH, 1, sender=host)
    board.complete(job_id, RESULT_HASH, 1, sender=host2)
    assert board.getJob(job_id).status == COMPLETED


def test_claim_never_outlasts_the_deadline(
    chain: Any, board: Any, post_job: Any, board_hosts: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job(duration=100)  # shorter than the claim timeout
    until = claimed_until(board.claim(job_id, sender=host), board)
    assert until == board.getJob(job_id).deadline


def test_stake_stays_locked_until_the_job_can_no_longer_settle(
    chain: Any, board: Any, nodes: Any, post_job: Any, board_hosts: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job(duration=10 * 24 * 3600)  # outlasts the unbonding delay
    board.claim(job_id, sender=host)
    lock = board.getJob(job_id).deadline + board.challengeWindow()
    nodes.unregister(sender=host)
    chain.pending_timestamp += UNBONDING
    with ape.reverts(nodes.StakeLocked, lockedUntil=lock):
        nodes.withdrawStake(sender=host)
    chain.pending_timestamp = lock - 1
    with ape.reverts(nodes.StakeLocked, lockedUntil=lock):
        nodes.withdrawStake(sender=host)
    chain.pending_timestamp = lock
    nodes.withdrawStake(sender=host)


# ------------------------------------------------------------------ complete and release


@pytest.mark.parametrize("in_usd", [False, True])
def test_complete_then_release_after_the_window_pays_to_the_wei(
    chain: Any,
    board: Any,
    post_job: Any,
    board_hosts: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    usd: Any,
    in_usd: bool,
) -> None:
    host, _ = board_hosts
    token = usd.address if in_usd else ETH
    max_payment = 7 * 10**6 + 1 if in_usd else 10**15 + 1
    payment = max_payment // 3 + 7  # odd amounts: the fee rounds down, the rest to the host
    job_id = post_job(max_payment=max_payment, token=usd if in_usd else None)
    board.claim(job_id, sender=host)
    completed_at = chain.pending_timestamp
    receipt = board.complete(job_id, RESULT_HASH, payment, sender=host)
    [event] = receipt.events.filter(board.JobCompleted)
    assert event.host == host.address and bytes(event.resultHash) == RESULT_HASH
    assert event.payment == payment
    assert event.releasableAt == completed_at + board.challengeWindow()
    job = board.getJob(job_id)
    assert job.status == COMPLETED and job.completedAt == completed_at
    assert bytes(job.resultHash) == RESULT_HASH and job.payment == payment

    chain.pending_timestamp = event.releasableAt - 1
    with ape.reverts(board.ChallengeWindowOpen, releasableAt=event.releasableAt):
        board.release(job_id, sender=stranger)
    chain.pending_timestamp = event.releasableAt
    client_before = client.balance if not in_usd else usd.balanceOf(client)
    receipt = board.release(job_id, sender=stranger)  # anyone may release
    s = settled(receipt, board)
    host_amount, fee, refund = split(payment, max_payment)
    assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (
        payment,
        host_amount,
        fee,
        refund,
        True,
    )
    assert fee == payment * FEE_BPS // 10_000 and host_amount + fee == payment
    client_after = client.balance if not in_usd else usd.balanceOf(client)
    assert client_after - client_before == refund
    # Host and treasury are credited in the board's ledger; the board holds exactly that.
    assert board.owed(host, token) == host_amount
    assert board.owed(treasury, token) == fee
    if in_usd:
        assert usd.balanceOf(board) == payment and board.balance == 0
    else:
        assert board.balance == payment
    assert board.getJob(job_id).status == PAID
    # Settled once: nothing else moves the money again.
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.release(job_id, sender=stranger)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.expire(job_id, sender=stranger)
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.cancel(job_id, sender=client)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.dispute(job_id, sender=client)


def test_zero_payment_refunds_everything_and_pays_nobody(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, client: Any
) -> None:
    host, _ = board_hosts
    job_id, releasable = completed_job(board, post_job, host, 0, max_payment=10**15)
    chain.pending_timestamp = releasable
    before = client.balance
    receipt = board.release(job_id, sender=host)
    s = settled(receipt, board)
    assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (0, 0, 0, 10**15, True)
    assert client.balance - before == 10**15
    assert board.owed(host, ETH) == 0 and board.owed(board.treasury(), ETH) == 0
    assert board.balance == 0


def test_full_payment_refunds_nothing(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, treasury: Any
) -> None:
    host, _ = board_hosts
    job_id, releasable = completed_job(board, post_job, host, 10**15, max_payment=10**15)
    chain.pending_timestamp = releasable
    s = settled(board.release(job_id, sender=host), board)
    assert s.refund == 0 and s.hostAmount + s.fee == 10**15
    assert board.owed(host, ETH) == 9 * 10**14
    assert board.owed(treasury, ETH) == 10**14
    assert board.balance == 10**15  # all of it owed


def test_complete_errors(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, client: Any, stranger: Any
) -> None:
    host, host2 = board_hosts
    job_id = post_job(max_payment=10**15)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=OPEN):
        board.complete(job_id, RESULT_HASH, 1, sender=host)
    until = claimed_until(board.claim(job_id, sender=host), board)
    for who in (host2, client, stranger):
        with ape.reverts(board.NotJobHost, jobId=job_id):
            board.complete(job_id, RESULT_HASH, 1, sender=who)
    with ape.reverts(board.PaymentTooHigh, payment=10**15 + 1, maxPayment=10**15):
        board.complete(job_id, RESULT_HASH, 10**15 + 1, sender=host)
    with ape.reverts(board.ZeroHash):
        board.complete(job_id, ZERO, 1, sender=host)
    with ape.reverts(board.NoProofRequired, jobId=job_id):
        board.submitProofs(job_id, RESULT_HASH, 1, [b"\x01"], [[1, 2, 3]], sender=host)
    chain.pending_timestamp = until + 1  # the claim lapsed, though nobody took it over
    with ape.reverts(board.ClaimExpired, jobId=job_id, claimedUntil=until):
        board.complete(job_id, RESULT_HASH, 1, sender=host)
    # The same host may claim again and complete.
    board.claim(job_id, sender=host)
    board.complete(job_id, RESULT_HASH, 1, sender=host)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=COMPLETED):
        board.complete(job_id, RESULT_HASH, 1, sender=host)


def test_complete_at_the_last_moment_of_the_claim(
    chain: Any, board: Any, post_job: Any, board_hosts: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job()
    until = claimed_until(board.claim(job_id, sender=host), board)
    chain.pending_timestamp = until
    board.complete(job_id, RESULT_HASH, 5, sender=host)
    assert board.getJob(job_id).completedAt == until


def test_proof_required_job_cannot_be_completed_without_proofs(
    board: Any, post_job: Any, board_hosts: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job(proof_required=True, input_commitment=b"\x09" * 32)
    assert board.getJob(job_id).proofRequired
    board.claim(job_id, sender=host)
    with ape.reverts(board.ProofRequired, jobId=job_id):
        board.complete(job_id, RESULT_HASH, 1, sender=host)


# ------------------------------------------------------------------ dispute


def test_dispute_only_by_the_client_within_the_window(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, client: Any, stranger: Any
) -> None:
    host, _ = board_hosts
    job_id, releasable = completed_job(board, post_job, host, 10**14)
    for who in (host, stranger):
        with ape.reverts(board.NotJobClient, jobId=job_id):
            board.dispute(job_id, sender=who)
    open_id = post_job()
    with ape.reverts(board.WrongStatus, jobId=open_id, status=OPEN):
        board.dispute(open_id, sender=client)
    chain.pending_timestamp = releasable - 1  # the window's last second
    receipt = board.dispute(job_id, sender=client)
    assert receipt.events.filter(board.JobDisputed)[0].jobId == job_id
    assert board.getJob(job_id).status == DISPUTED
    with ape.reverts(board.WrongStatus, jobId=job_id, status=DISPUTED):
        board.dispute(job_id, sender=client)

    late_id, late_releasable = completed_job(board, post_job, host, 10**14)
    chain.pending_timestamp = late_releasable  # the window has just closed
    with ape.reverts(board.ChallengeWindowClosed, releasableAt=late_releasable):
        board.dispute(late_id, sender=client)
    board.release(late_id, sender=client)
    chain.pending_timestamp += 10**6
    with ape.reverts(board.WrongStatus, jobId=job_id, status=DISPUTED):
        board.release(job_id, sender=host)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=DISPUTED):
        board.expire(job_id, sender=host)
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.cancel(job_id, sender=client)


@pytest.mark.parametrize("pay_host", [True, False])
def test_resolve_dispute(
    board: Any,
    post_job: Any,
    board_hosts: Any,
    client: Any,
    owner: Any,
    treasury: Any,
    usd: Any,
    pay_host: bool,
) -> None:
    host, _ = board_hosts
    max_payment, payment = 3 * 10**6 + 11, 10**6 + 3
    job_id, _ = completed_job(board, post_job, host, payment, max_payment=max_payment, token=usd)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=COMPLETED):
        board.resolveDispute(job_id, pay_host, sender=owner)
    board.dispute(job_id, sender=client)
    with ape.reverts(board.OwnableUnauthorizedAccount):
        board.resolveDispute(job_id, pay_host, sender=client)
    receipt = board.resolveDispute(job_id, pay_host, sender=owner)
    s = settled(receipt, board)
    if pay_host:
        host_amount, fee, refund = split(payment, max_payment)
        assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (
            payment,
            host_amount,
            fee,
            refund,
            True,
        )
        assert board.getJob(job_id).status == PAID
    else:
        host_amount, fee, refund = 0, 0, max_payment
        assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (0, 0, 0, max_payment, False)
        assert board.getJob(job_id).status == REFUNDED
        assert board.getJob(job_id).payment == 0
    assert usd.balanceOf(client) == refund
    assert board.owed(host, usd) == host_amount
    assert board.owed(treasury, usd) == fee
    assert usd.balanceOf(board) == host_amount + fee  # what it owes, nothing more
    with ape.reverts(board.WrongStatus):
        board.resolveDispute(job_id, not pay_host, sender=owner)


# ------------------------------------------------------------------ expire and cancel


@pytest.mark.parametrize("claimed", [False, True])
def test_expire_after_the_deadline_refunds_in_full(
    chain: Any,
    board: Any,
    post_job: Any,
    board_hosts: Any,
    client: Any,
    stranger: Any,
    claimed: bool,
) -> None:
    host, _ = board_hosts
    job_id = post_job(max_payment=10**15 + 9, duration=120)
    if claimed:
        board.claim(job_id, sender=host)  # claimed until the deadline, never completed
    deadline = board.getJob(job_id).deadline
    chain.pending_timestamp = deadline  # at the deadline a claimer may still deliver
    with ape.reverts(board.DeadlineNotReached, deadline=deadline):
        board.expire(job_id, sender=stranger)
    chain.pending_timestamp = deadline + 1
    before = client.balance
    s = settled(board.expire(job_id, sender=stranger), board)  # anyone may expire
    assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (0, 0, 0, 10**15 + 9, False)
    assert client.balance - before == 10**15 + 9
    assert board.balance == 0 and board.owed(host, ETH) == 0
    assert board.getJob(job_id).status == REFUNDED
    with ape.reverts(board.WrongStatus, jobId=job_id, status=REFUNDED):
        board.expire(job_id, sender=stranger)
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.claim(job_id, sender=host)


def test_completed_job_does_not_expire(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, stranger: Any
) -> None:
    host, _ = board_hosts
    job_id, releasable = completed_job(board, post_job, host, 10**14, duration=120)
    chain.pending_timestamp = board.getJob(job_id).deadline + 10**5
    with ape.reverts(board.WrongStatus, jobId=job_id, status=COMPLETED):
        board.expire(job_id, sender=stranger)
    assert releasable < chain.pending_timestamp
    board.release(job_id, sender=stranger)


def test_cancel_while_unclaimed_refunds_in_full(
    board: Any, post_job: Any, client: Any, stranger: Any, usd: Any
) -> None:
    job_id = post_job(max_payment=10**6 + 1, token=usd)
    with ape.reverts(board.NotJobClient, jobId=job_id):
        board.cancel(job_id, sender=stranger)
    receipt = board.cancel(job_id, sender=client)
    s = settled(receipt, board)
    assert (s.payment, s.refund, s.paid) == (0, 10**6 + 1, False)
    assert usd.balanceOf(client) == 10**6 + 1 and usd.balanceOf(board) == 0
    assert board.getJob(job_id).status == REFUNDED
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.cancel(job_id, sender=client)
    with ape.reverts(board.NotJobClient, jobId=999):
        board.cancel(999, sender=client)


def test_cancel_refused_while_claimed_allowed_once_the_claim_lapsed(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, client: Any
) -> None:
    host, _ = board_hosts
    job_id = post_job(max_payment=10**15)
    until = claimed_until(board.claim(job_id, sender=host), board)
    chain.pending_timestamp = until
    with ape.reverts(board.NotClaimable, jobId=job_id):
        board.cancel(job_id, sender=client)
    chain.pending_timestamp = until + 1
    before = client.balance
    receipt = board.cancel(job_id, sender=client)
    assert settled(receipt, board).refund == 10**15
    assert client.balance - before == 10**15 - receipt.total_fees_paid
    assert board.balance == 0
    with ape.reverts(board.WrongStatus, jobId=job_id, status=REFUNDED):
        board.complete(job_id, RESULT_HASH, 1, sender=host)


# ------------------------------------------------------------------ settings and hostile clients


def test_fee_and_challenge_window_are_fixed_when_the_job_is_posted(
    chain: Any,
    board: Any,
    post_job: Any,
    board_hosts: Any,
    owner: Any,
    treasury: Any,
    client: Any,
) -> None:
    host, _ = board_hosts
    window = board.challengeWindow()
    job_id = post_job(max_payment=10**15)
    board.setFeeBps(2500, sender=owner)
    board.setChallengeWindow(60, sender=owner)
    later = post_job(max_payment=10**15)
    assert board.getJob(later).feeBps == 2500 and board.getJob(later).challengeWindow == 60
    board.claim(job_id, sender=host)
    receipt = board.complete(job_id, RESULT_HASH, 10**14, sender=host)
    releasable = receipt.events.filter(board.JobCompleted)[0].releasableAt
    assert releasable == board.getJob(job_id).completedAt + window
    chain.pending_timestamp = releasable - window + 60  # the new window would have closed
    board.dispute(job_id, sender=client)
    s = settled(board.resolveDispute(job_id, True, sender=owner), board)
    assert s.fee == 10**14 * FEE_BPS // 10_000
    assert board.owed(treasury, ETH) == s.fee


def test_owner_settings(board: Any, owner: Any, stranger: Any) -> None:
    receipt = board.setClaimTimeout(120, sender=owner)
    assert receipt.events.filter(board.ClaimTimeoutSet)[0].claimTimeout == 120
    assert board.claimTimeout() == 120
    with ape.reverts(board.InvalidDuration, duration=0):
        board.setClaimTimeout(0, sender=owner)
    window = board.MAX_CHALLENGE_WINDOW()
    assert board.setChallengeWindow(window, sender=owner).events.filter(board.ChallengeWindowSet)
    with ape.reverts(board.ChallengeWindowTooLong, window=window + 1):
        board.setChallengeWindow(window + 1, sender=owner)
    assert board.setDurationLimits(10, 20, sender=owner).events.filter(board.DurationLimitsSet)
    assert (board.minDuration(), board.maxDuration()) == (10, 20)
    with ape.reverts(board.InvalidDuration):
        board.setDurationLimits(30, 20, sender=owner)
    with ape.reverts(board.InvalidDuration):
        board.setDurationLimits(0, 20, sender=owner)
    for call in (
        lambda: board.setClaimTimeout(1, sender=stranger),
        lambda: board.setChallengeWindow(1, sender=stranger),
        lambda: board.setDurationLimits(1, 2, sender=stranger),
        lambda: board.pause(sender=stranger),
    ):
        with ape.reverts(board.OwnableUnauthorizedAccount):
            call()


def test_constructor_bounds(
    project: Any, owner: Any, treasury: Any, models: Any, nodes: Any, proofs: Any
) -> None:
    board = project.JobBoard
    args = (owner, models, nodes, proofs, treasury, FEE_BPS)
    with ape.reverts(board.InvalidDuration, duration=0):  # a claim must last
        owner.deploy(board, *args, 0, 600)
    with ape.reverts(board.ChallengeWindowTooLong, window=30 * 24 * 3600 + 1):
        owner.deploy(board, *args, 300, 30 * 24 * 3600 + 1)
    with ape.reverts(board.ZeroAddress):
        owner.deploy(board, owner, models, nodes, proofs, ETH, FEE_BPS, 300, 600)
    with ape.reverts(board.FeeTooHigh, feeBps=2501):
        owner.deploy(board, owner, models, nodes, proofs, treasury, 2501, 300, 600)


def test_refund_a_client_refuses_waits_in_the_ledger(
    chain: Any,
    project: Any,
    board: Any,
    post_job: Any,
    owner: Any,
    stranger: Any,
    model_id: bytes,
) -> None:
    hostile = owner.deploy(project.HostileClient)
    data = board.post.as_transaction(
        model_id, INPUT_HASH, ZERO, ETH, 10**15, 60, False, value=10**15, sender=owner
    ).data
    receipt = hostile.execute(board, data, value=10**15, sender=owner)
    job_id = receipt.events.filter(board.JobPosted)[0].jobId
    assert board.getJob(job_id).client == hostile.address
    hostile.setMode(1, ETH, b"", sender=owner)  # revert on receive
    chain.pending_timestamp = board.getJob(job_id).deadline + 1
    receipt = board.expire(job_id, sender=stranger)  # the refund cannot block the settlement
    assert receipt.events.filter(board.PayoutDeferred)[0].amount == 10**15
    assert board.owed(hostile, ETH) == 10**15 == board.balance
    assert board.getJob(job_id).status == REFUNDED
    withdraw = board.withdraw.as_transaction(ETH, sender=owner).data
    with ape.reverts(board.EthTransferFailed):  # still refusing: it stays owed
        hostile.execute(board, withdraw, sender=owner)
    assert board.owed(hostile, ETH) == 10**15
    hostile.setMode(0, ETH, b"", sender=owner)
    receipt = hostile.execute(board, withdraw, sender=owner)
    [withdrawn] = receipt.events.filter(board.Withdrawn)
    assert (withdrawn.account, withdrawn.token, withdrawn.amount) == (hostile.address, ETH, 10**15)
    assert hostile.balance == 10**15 and board.balance == 0
    assert board.owed(hostile, ETH) == 0
    with ape.reverts(board.NothingToWithdraw, token=ETH):
        hostile.execute(board, withdraw, sender=owner)


def test_host_earnings_and_fees_can_be_withdrawn(
    chain: Any,
    board: Any,
    post_job: Any,
    board_hosts: Any,
    owner: Any,
    treasury: Any,
    stranger: Any,
    usd: Any,
) -> None:
    host, host2 = board_hosts
    job_id, releasable = completed_job(board, post_job, host, 10**15)
    chain.pending_timestamp = releasable
    board.release(job_id, sender=host)
    with ape.reverts(board.NothingToWithdraw, token=ETH):
        board.withdraw(ETH, sender=host2)
    with ape.reverts(board.NothingToWithdraw, token=usd.address):
        board.withdraw(usd, sender=host)
    before = host.balance
    receipt = board.withdraw(ETH, sender=host)
    [withdrawn] = receipt.events.filter(board.Withdrawn)
    assert (withdrawn.account, withdrawn.amount) == (host.address, 9 * 10**14)
    assert host.balance - before == 9 * 10**14 - receipt.total_fees_paid
    assert board.owed(host, ETH) == 0
    with ape.reverts(board.NothingToWithdraw, token=ETH):
        board.withdraw(ETH, sender=host)
    # The fees belong to whoever is the treasury when it withdraws.
    assert board.owed(treasury, ETH) == 10**14 == board.balance
    board.setTreasury(stranger, sender=owner)
    assert board.owed(treasury, ETH) == 0 and board.owed(stranger, ETH) == 10**14
    with ape.reverts(board.NothingToWithdraw, token=ETH):
        board.withdraw(ETH, sender=treasury)
    before = stranger.balance
    receipt = board.withdraw(ETH, sender=stranger)
    assert stranger.balance - before == 10**14 - receipt.total_fees_paid
    assert board.owed(stranger, ETH) == 0 and board.balance == 0


def test_host_serving_only_the_gguf_model_cannot_claim_a_proven_job(
    board: Any, post_job: Any, fab: Any, nodes: Any, owner: Any, host: Any, model_id: bytes
) -> None:
    fab.mint(host, MIN_STAKE, sender=owner)
    fab.approve(nodes, MIN_STAKE, sender=host)
    peer_id = b"\x00\x24\x01" + b"\x07" * 32
    nodes.register(peer_id, ADDRS, "{}", [model_id], [], MIN_STAKE, sender=host)
    proven = post_job(proof_required=True, input_commitment=b"\x09" * 32)
    with ape.reverts(board.HostDoesNotServeModel, host=host.address):
        board.claim(proven, sender=host)
    board.claim(post_job(), sender=host)
