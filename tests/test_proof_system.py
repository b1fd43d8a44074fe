"""ProofSystem through the JobBoard: proven jobs pay at once on valid proofs bound to their
input; every other verdict pays nothing and puts the job back on the board.

The verifier is the scripted stand-in (contracts/test/ScriptedVerifier.sol); real EZKL verifiers
are exercised by the integration tests on Anvil."""

from collections.abc import Callable, Sequence
from typing import Any

import ape
import pytest
from eth_abi.packed import encode_packed
from eth_utils import keccak
from web3 import Web3

from contract_helpers import ETH, FEE_BPS

RESULT_HASH = bytes.fromhex("cd" * 32)
ZERO = b"\x00" * 32
VALID, WRONG_COUNT, WRONG_INSTANCES, INPUT_MISMATCH, REPLAYED, INVALID = range(6)
OPEN, CLAIMED, PAID = 1, 2, 5
N_IN, N_OUT = 2, 1  # the proven_model_id fixture's circuit
MAX_PAYMENT = 10**15 + 1
PAYMENT = 6 * 10**14 + 7


def commitment(values: Sequence[int]) -> bytes:
    """keccak256(abi.encodePacked(uint256[] values)): each value one 32-byte big-endian word."""
    return keccak(b"".join(v.to_bytes(32, "big") for v in values))


def inputs_commitment(inputs: Sequence[Sequence[int]]) -> bytes:
    return commitment([v for row in inputs for v in row])


def instances_for(inputs: Sequence[Sequence[int]], outputs: Sequence[Sequence[int]]) -> list[Any]:
    """Each proof's public instances: its inputs, then its outputs."""
    return [list(i) + list(o) for i, o in zip(inputs, outputs, strict=True)]


INPUTS = [[11, 12], [21, 22], [31, 32]]
OUTPUTS = [[101], [201], [301]]


def proof(tag: int) -> bytes:
    return b"proof-" + tag.to_bytes(4, "big") + b"\xee" * 40


def test_commitment_matches_abi_encode_packed() -> None:
    values = [0, 1, 2**256 - 1, 12345]
    assert commitment(values) == keccak(encode_packed(["uint256[]"], [values]))
    assert commitment(values) == bytes(Web3.solidity_keccak(["uint256[]"], [values]))


@pytest.fixture
def proven_job(board: Any, post_job: Any, board_hosts: Any) -> Callable[..., int]:
    """Posts a proven job (in ETH) over ``inputs`` and lets ``host`` claim it; returns its id."""
    host, _ = board_hosts

    def _job(inputs: Sequence[Sequence[int]] = INPUTS[:1], claim: bool = True) -> int:
        job_id = post_job(
            max_payment=MAX_PAYMENT,
            proof_required=True,
            input_commitment=inputs_commitment(inputs),
        )
        if claim:
            board.claim(job_id, sender=host)
        return job_id

    return _job


def test_valid_proof_pays_at_once(
    chain: Any,
    board: Any,
    proofs: Any,
    verifier: Any,
    proven_job: Callable[..., int],
    board_hosts: Any,
    client: Any,
    treasury: Any,
    proven_model_id: bytes,
) -> None:
    host, _ = board_hosts
    job_id = proven_job()
    assert bytes(board.getJob(job_id).inputCommitment) == inputs_commitment(INPUTS[:1])
    before = client.balance
    at = chain.pending_timestamp
    receipt = board.submitProofs(
        job_id,
        RESULT_HASH,
        PAYMENT,
        [proof(1)],
        instances_for(INPUTS[:1], OUTPUTS[:1]),
        sender=host,
    )
    [proven] = receipt.events.filter(board.JobProven)
    assert proven.jobId == job_id and proven.host == host.address
    assert bytes(proven.resultHash) == RESULT_HASH
    assert bytes(proven.outputCommitment) == commitment([101])
    [accepted] = receipt.events.filter(proofs.ProofAccepted)
    assert accepted.jobId == job_id and bytes(accepted.modelId) == proven_model_id
    assert bytes(accepted.proofHash) == keccak(proof(1))
    assert proofs.accepted(keccak(proof(1)))
    assert not receipt.events.filter(board.ProofRejected)
    [s] = receipt.events.filter(board.JobSettled)
    fee = PAYMENT * FEE_BPS // 10_000
    assert (s.payment, s.hostAmount, s.fee, s.refund, s.paid) == (
        PAYMENT,
        PAYMENT - fee,
        fee,
        MAX_PAYMENT - PAYMENT,
        True,
    )
    assert client.balance - before == MAX_PAYMENT - PAYMENT
    # Host and treasury are credited in the board's own ledger: the board holds what it owes.
    assert board.owed(host, ETH) == PAYMENT - fee
    assert board.owed(treasury, ETH) == fee
    assert board.balance == PAYMENT
    job = board.getJob(job_id)
    assert job.status == PAID and job.payment == PAYMENT and job.completedAt == at
    assert bytes(job.resultHash) == RESULT_HASH
    assert bytes(job.outputCommitment) == commitment([101])
    assert verifier.calls() == 1
    # Paid once: no release, no dispute, no second submission.
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.release(job_id, sender=host)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.dispute(job_id, sender=client)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=PAID):
        board.submitProofs(
            job_id, RESULT_HASH, 1, [proof(2)], instances_for(INPUTS[:1], OUTPUTS[:1]), sender=host
        )


def test_batch_commits_to_the_inputs_concatenated_in_order(
    board: Any, proofs: Any, verifier: Any, proven_job: Callable[..., int], board_hosts: Any
) -> None:
    host, _ = board_hosts
    job_id = proven_job(INPUTS)
    assert inputs_commitment(INPUTS) == commitment([11, 12, 21, 22, 31, 32])
    batch = [proof(1), proof(2), proof(3)]
    # The same proofs in another order carry the inputs in another order: refused.
    order = [2, 0, 1]
    receipt = board.submitProofs(
        job_id,
        RESULT_HASH,
        PAYMENT,
        [batch[i] for i in order],
        [instances_for(INPUTS, OUTPUTS)[i] for i in order],
        sender=host,
    )
    assert receipt.events.filter(board.ProofRejected)[0].verdict == INPUT_MISMATCH
    board.claim(job_id, sender=host)
    receipt = board.submitProofs(
        job_id, RESULT_HASH, PAYMENT, batch, instances_for(INPUTS, OUTPUTS), sender=host
    )
    [proven] = receipt.events.filter(board.JobProven)
    assert bytes(proven.outputCommitment) == commitment([101, 201, 301])
    assert [bytes(e.proofHash) for e in receipt.events.filter(proofs.ProofAccepted)] == [
        keccak(p) for p in batch
    ]
    assert verifier.calls() == 3
    assert board.getJob(job_id).status == PAID


def test_the_most_proofs_a_job_may_carry(
    board: Any, proofs: Any, proven_job: Callable[..., int], board_hosts: Any
) -> None:
    host, _ = board_hosts
    n = proofs.MAX_PROOFS()
    inputs = [[i, i + 1] for i in range(n)]
    job_id = proven_job(inputs)
    receipt = board.submitProofs(
        job_id,
        RESULT_HASH,
        PAYMENT,
        [proof(i) for i in range(n)],
        instances_for(inputs, [[i] for i in range(n)]),
        sender=host,
    )
    assert receipt.events.filter(board.JobProven)


def reject_case(case: str, verifier: Any, owner: Any) -> tuple[list[bytes], list[Any], int]:
    """Proofs and instances for a job over INPUTS[:2] that the ProofSystem refuses, with the
    verdict expected."""
    good = instances_for(INPUTS[:2], OUTPUTS[:2])
    two = [proof(1), proof(2)]
    if case == "invalid":
        verifier.setAnswer(False, False, sender=owner)
        return two, good, INVALID
    if case == "verifier reverts":
        verifier.setAnswer(True, True, sender=owner)
        return two, good, INVALID
    if case == "other input":
        return two, instances_for([[11, 12], [21, 23]], OUTPUTS[:2]), INPUT_MISMATCH
    if case == "inputs swapped":
        return two, [good[1], good[0]], INPUT_MISMATCH
    if case == "too few instances":
        return two, [good[0], good[1][:2]], WRONG_INSTANCES
    if case == "too many instances":
        return two, [good[0] + [7], good[1]], WRONG_INSTANCES
    if case == "no proofs":
        return [], [], WRONG_COUNT
    if case == "more than MAX_PROOFS":
        n = 17
        return [proof(i) for i in range(n)], [good[0]] * n, WRONG_COUNT
    if case == "fewer instances than proofs":
        return two, good[:1], WRONG_COUNT
    if case == "duplicate in one call":
        return [proof(1), proof(1)], good, REPLAYED
    raise AssertionError(case)


CASES = [
    "invalid",
    "verifier reverts",
    "other input",
    "inputs swapped",
    "too few instances",
    "too many instances",
    "no proofs",
    "more than MAX_PROOFS",
    "fewer instances than proofs",
    "duplicate in one call",
]


@pytest.mark.parametrize("case", CASES)
def test_refused_proofs_pay_nothing_and_reopen_the_job(
    board: Any,
    proofs: Any,
    verifier: Any,
    proven_job: Callable[..., int],
    board_hosts: Any,
    client: Any,
    owner: Any,
    case: str,
) -> None:
    host, host2 = board_hosts
    job_id = proven_job(INPUTS[:2])
    bad_proofs, bad_instances, verdict = reject_case(case, verifier, owner)
    before = client.balance
    receipt = board.submitProofs(
        job_id, RESULT_HASH, PAYMENT, bad_proofs, bad_instances, sender=host
    )
    [rejected] = receipt.events.filter(board.ProofRejected)
    assert (rejected.jobId, rejected.host, rejected.verdict) == (job_id, host.address, verdict)
    for event in (board.JobProven, board.JobSettled, proofs.ProofAccepted):
        assert not receipt.events.filter(event)
    assert board.owed(host, ETH) == 0  # nobody credited
    assert not any(proofs.accepted(keccak(p)) for p in bad_proofs)
    assert client.balance == before and board.balance == MAX_PAYMENT
    job = board.getJob(job_id)
    assert job.status == OPEN and job.host == ETH and job.claimedUntil == 0
    assert job.payment == 0 and bytes(job.resultHash) == ZERO
    assert board.isClaimable(job_id)
    with ape.reverts(board.WrongStatus, jobId=job_id, status=OPEN):
        board.submitProofs(job_id, RESULT_HASH, PAYMENT, bad_proofs, bad_instances, sender=host)
    # Another host takes the job and proves it; the refused proofs were not consumed.
    verifier.setAnswer(True, False, sender=owner)
    board.claim(job_id, sender=host2)
    receipt = board.submitProofs(
        job_id,
        RESULT_HASH,
        PAYMENT,
        [proof(1), proof(2)],
        instances_for(INPUTS[:2], OUTPUTS[:2]),
        sender=host2,
    )
    [s] = receipt.events.filter(board.JobSettled)
    assert s.paid and s.payment == PAYMENT
    assert board.owed(host2, ETH) == s.hostAmount
    assert board.owed(host, ETH) == 0
    assert board.balance == PAYMENT  # what host2 and the treasury are owed


def test_proof_accepted_once_is_refused_for_another_job_with_the_same_input(
    board: Any,
    proofs: Any,
    proven_job: Callable[..., int],
    board_hosts: Any,
) -> None:
    host, host2 = board_hosts
    first = proven_job()
    second = proven_job(claim=False)
    assert board.getJob(first).inputCommitment == board.getJob(second).inputCommitment
    good = instances_for(INPUTS[:1], OUTPUTS[:1])
    board.submitProofs(first, RESULT_HASH, PAYMENT, [proof(1)], good, sender=host)
    earned = board.owed(host, ETH)
    for who in (host, host2):  # neither the prover nor anyone else may reuse it
        board.claim(second, sender=who)
        receipt = board.submitProofs(second, RESULT_HASH, PAYMENT, [proof(1)], good, sender=who)
        assert receipt.events.filter(board.ProofRejected)[0].verdict == REPLAYED
        assert not receipt.events.filter(board.JobSettled)
    # Hidden among fresh proofs, it is still refused.
    third = proven_job(INPUTS[:2])
    receipt = board.submitProofs(
        third,
        RESULT_HASH,
        PAYMENT,
        [proof(2), proof(1)],
        instances_for(INPUTS[:2], OUTPUTS[:2]),
        sender=host,
    )
    assert receipt.events.filter(board.ProofRejected)[0].verdict == REPLAYED
    assert not proofs.accepted(keccak(proof(2)))
    assert board.owed(host, ETH) == earned
    assert board.balance == 2 * MAX_PAYMENT + PAYMENT  # two live jobs, the first one's payment
    # A fresh proof for the second job is accepted.
    board.claim(second, sender=host2)
    board.submitProofs(second, RESULT_HASH, PAYMENT, [proof(3)], good, sender=host2)
    assert board.getJob(second).status == PAID


def test_submit_proofs_errors(
    chain: Any, board: Any, proven_job: Callable[..., int], board_hosts: Any, client: Any
) -> None:
    host, host2 = board_hosts
    job_id = proven_job(claim=False)
    good = instances_for(INPUTS[:1], OUTPUTS[:1])
    with ape.reverts(board.WrongStatus, jobId=job_id, status=OPEN):
        board.submitProofs(job_id, RESULT_HASH, PAYMENT, [proof(1)], good, sender=host)
    receipt = board.claim(job_id, sender=host)
    until = receipt.events.filter(board.JobClaimed)[0].claimedUntil
    for who in (host2, client):
        with ape.reverts(board.NotJobHost, jobId=job_id):
            board.submitProofs(job_id, RESULT_HASH, PAYMENT, [proof(1)], good, sender=who)
    with ape.reverts(board.PaymentTooHigh, payment=MAX_PAYMENT + 1, maxPayment=MAX_PAYMENT):
        board.submitProofs(job_id, RESULT_HASH, MAX_PAYMENT + 1, [proof(1)], good, sender=host)
    with ape.reverts(board.ZeroHash):
        board.submitProofs(job_id, ZERO, PAYMENT, [proof(1)], good, sender=host)
    chain.pending_timestamp = until + 1
    with ape.reverts(board.ClaimExpired, jobId=job_id, claimedUntil=until):
        board.submitProofs(job_id, RESULT_HASH, PAYMENT, [proof(1)], good, sender=host)
    assert board.getJob(job_id).status == CLAIMED


def test_each_verifier_call_is_assured_its_gas(
    board: Any,
    proofs: Any,
    verifier: Any,
    proven_job: Callable[..., int],
    board_hosts: Any,
    owner: Any,
) -> None:
    """A refusal is the verifier's verdict, never an out-of-gas the submitter (or its gas
    estimate) chose: too little gas reverts the whole call, and the claim stands."""
    host, _ = board_hosts
    job_id = proven_job()
    good = instances_for(INPUTS[:1], OUTPUTS[:1])
    verify_gas = proofs.VERIFY_GAS()
    verifier.setGasToUse(verify_gas - 100_000, sender=owner)  # a costly but honest verifier
    args = (job_id, RESULT_HASH, PAYMENT, [proof(1)], good)
    with ape.reverts(proofs.InsufficientGas):
        board.submitProofs(*args, sender=host, gas=verify_gas)
    assert board.getJob(job_id).status == CLAIMED
    # The lowest gas limit that does not revert is one that gives the verifier all it needs.
    estimate = board.submitProofs.estimate_gas_cost(*args, sender=host)
    assert estimate > verify_gas
    receipt = board.submitProofs(*args, sender=host, gas=estimate)
    assert receipt.events.filter(board.JobProven)
    assert board.getJob(job_id).status == PAID


def test_verifier_using_more_than_its_gas_is_a_refusal(
    board: Any,
    proofs: Any,
    verifier: Any,
    proven_job: Callable[..., int],
    board_hosts: Any,
    owner: Any,
) -> None:
    host, _ = board_hosts
    job_id = proven_job()
    verifier.setGasToUse(proofs.VERIFY_GAS() + 1, sender=owner)
    receipt = board.submitProofs(
        job_id,
        RESULT_HASH,
        PAYMENT,
        [proof(1)],
        instances_for(INPUTS[:1], OUTPUTS[:1]),
        sender=host,
        gas=10_000_000,
    )
    assert receipt.events.filter(board.ProofRejected)[0].verdict == INVALID
    assert verifier.calls() == 0
    assert not proofs.accepted(keccak(proof(1)))
    assert board.getJob(job_id).status == OPEN


def test_only_the_board_may_call_verify_job(
    proofs: Any,
    board: Any,
    owner: Any,
    stranger: Any,
    board_hosts: Any,
    proven_model_id: bytes,
) -> None:
    host, _ = board_hosts
    args = (1, proven_model_id, inputs_commitment(INPUTS[:1]), [proof(1)])
    good = instances_for(INPUTS[:1], OUTPUTS[:1])
    for who in (owner, stranger, host):
        with ape.reverts(proofs.NotBoard, caller=who.address):
            proofs.verifyJob(*args, good, sender=who)
    assert proofs.board() == board.address
    assert proofs.modelRegistry() == board.modelRegistry()
    with ape.reverts(proofs.OwnableUnauthorizedAccount):
        proofs.setBoard(stranger, sender=stranger)
    with ape.reverts(proofs.ZeroAddress):
        proofs.setBoard(ETH, sender=owner)
    assert not proofs.accepted(keccak(proof(1)))


def test_a_job_without_proofs_on_a_proven_model_is_paid_after_the_window(
    chain: Any, board: Any, post_job: Any, board_hosts: Any, proven_model_id: bytes
) -> None:
    """proofRequired is the client's choice: without it a proven model's job is an ordinary one."""
    host, _ = board_hosts
    job_id = post_job(model=proven_model_id)
    board.claim(job_id, sender=host)
    good = instances_for(INPUTS[:1], OUTPUTS[:1])
    with ape.reverts(board.NoProofRequired, jobId=job_id):
        board.submitProofs(job_id, RESULT_HASH, 1, [proof(1)], good, sender=host)
    receipt = board.complete(job_id, RESULT_HASH, 1, sender=host)
    chain.pending_timestamp = receipt.events.filter(board.JobCompleted)[0].releasableAt
    assert board.release(job_id, sender=host).events.filter(board.JobSettled)[0].paid


def test_proven_model_pins_its_circuit(
    models: Any, owner: Any, stranger: Any, verifier: Any, proven_model_id: bytes, model_id: bytes
) -> None:
    model = models.getModel(proven_model_id)
    assert model.kind == 1 and model.active and bytes(model.tokenizerHash) == ZERO
    circuit = models.getCircuit(proven_model_id)
    assert circuit.verifier == verifier.address
    assert (circuit.inputs, circuit.outputs) == (N_IN, N_OUT)
    with ape.reverts(models.NotProvenModel, modelId=model_id):
        models.getCircuit(model_id)
    good = (b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, verifier.address, 1, 1)

    def add(circuit: tuple[Any, ...], file: str = "b.onnx", sender: Any = owner) -> Any:
        return models.addProvenModel("org/b", file, b"\x04" * 32, circuit, sender=sender)

    for i in range(3):
        with ape.reverts(models.ZeroHash):
            add(tuple(ZERO if k == i else v for k, v in enumerate(good)))
    with ape.reverts(models.InvalidCircuit):
        add((*good[:3], stranger.address, 1, 1))  # a verifier must be a contract
    with ape.reverts(models.InvalidCircuit):
        add((*good[:4], 0, 1))
    with ape.reverts(models.InvalidCircuit):
        add((*good[:4], 1, 0))
    with ape.reverts(models.OwnableUnauthorizedAccount):
        add(good, sender=stranger)
    receipt = add(good)
    [pinned] = receipt.events.filter(models.CircuitPinned)
    assert pinned.verifier == verifier.address and (pinned.inputs, pinned.outputs) == (1, 1)
    with ape.reverts(models.ModelAlreadyExists):
        add(good)
