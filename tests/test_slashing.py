"""Slashing on public evidence: a failed audit a client reported, or two different records a
host signed for the same answer. Governance decides (the Slasher's owner); the stake goes to
the treasury or to the session's client, never to whoever called; each piece of evidence
slashes once."""

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import sign_transcript
from fabstir_sdk.transcripts import SignedTranscript, TranscriptRecord

from contract_helpers import ETHER, MIN_STAKE, Dao, Opened

TREASURY, CLIENT = 0, 1


@pytest.fixture
def served(market: Any, open_session: Any, registered: Any) -> Opened:
    """A session the host served and settled."""
    opened = open_session()
    market.settle(*opened.voucher(300).as_args(), sender=registered)
    return opened


def answer(opened: Opened, host_key: LocalAccount, text: str, start: int = 0) -> SignedTranscript:
    """A host-signed record of an answer at ``start`` in ``opened``, as a node signs it."""
    record = TranscriptRecord(
        opened.id,
        start,
        bytes(32),
        b"\x11" * 32,
        (1, 2, 3),
        (4, 5),
        text,
        {"max_tokens": 8, "temperature": 0.7, "top_p": 0.95, "seed": 7, "stop": []},
        "stop",
    )
    signature = sign_transcript(host_key, opened.domain, opened.id, record.commitment())
    return SignedTranscript(record, signature)


def evidence(signed: SignedTranscript) -> tuple[bytes, bytes]:
    return (signed.evidence(), signed.host_signature)


@pytest.fixture
def failed_audit(
    reputation: Any, served: Opened, host_key: LocalAccount, client: Any
) -> Callable[..., bytes]:
    """Reports an audit of one of ``served``'s answers; returns its transcript hash."""

    def _report(passed: bool = False, text: str = "4") -> bytes:
        signed = answer(served, host_key, text)
        reputation.reportAudit(
            served.id, signed.evidence(), signed.host_signature, passed, sender=client
        )
        return signed.transcript_hash

    return _report


def stake(nodes: Any, host: Any) -> int:
    return int(nodes.getNode(host).stake)


def test_a_failed_audit_slashes_to_the_harmed_client(
    slasher: Any,
    nodes: Any,
    fab: Any,
    registered: Any,
    client: Any,
    owner: Any,
    reputation: Any,
    failed_audit: Callable[..., bytes],
) -> None:
    transcript_hash = failed_audit()
    report = reputation.auditOf(transcript_hash)
    assert report.reported and not report.passed
    receipt = slasher.slashFailedAudit(transcript_hash, 10 * ETHER, CLIENT, sender=owner)
    evidence_id = slasher.auditEvidence(transcript_hash)
    assert receipt.events.filter(slasher.Slashed) == [
        slasher.Slashed(registered, evidence_id, 10 * ETHER, client)
    ]
    assert receipt.events.filter(nodes.NodeSlashed)
    assert fab.balanceOf(client) == 10 * ETHER
    assert fab.balanceOf(owner) == 0  # the caller gets nothing
    assert stake(nodes, registered) == MIN_STAKE - 10 * ETHER
    assert slasher.evidenceUsed(evidence_id)
    with ape.reverts(slasher.EvidenceAlreadyUsed):
        slasher.slashFailedAudit(transcript_hash, 1, TREASURY, sender=owner)


def test_a_failed_audit_slashes_to_the_treasury(
    slasher: Any,
    nodes: Any,
    fab: Any,
    registered: Any,
    treasury: Any,
    owner: Any,
    failed_audit: Callable[..., bytes],
) -> None:
    slasher.slashFailedAudit(failed_audit(), MIN_STAKE, TREASURY, sender=owner)
    assert fab.balanceOf(treasury) == MIN_STAKE
    assert stake(nodes, registered) == 0
    assert not nodes.isActiveHost(registered)


def test_only_a_reported_failure_is_evidence(
    slasher: Any, owner: Any, stranger: Any, failed_audit: Callable[..., bytes]
) -> None:
    passed = failed_audit(passed=True)
    with ape.reverts(slasher.NotAFailedAudit):
        slasher.slashFailedAudit(passed, 1, TREASURY, sender=owner)
    with ape.reverts(slasher.NotAFailedAudit):
        slasher.slashFailedAudit(b"\x99" * 32, 1, TREASURY, sender=owner)
    failed = failed_audit(text="5")
    with ape.reverts(slasher.OwnableUnauthorizedAccount):
        slasher.slashFailedAudit(failed, 1, CLIENT, sender=stranger)
    # The registry takes slashes from the Slasher only, not even from its owner.
    with ape.reverts(ape.project.NodeRegistry.NotSlasher):
        ape.project.NodeRegistry.at(slasher.nodeRegistry()).slash(stranger, 1, owner, sender=owner)


def test_two_records_for_one_answer_slash_the_host(
    slasher: Any,
    nodes: Any,
    fab: Any,
    registered: Any,
    client: Any,
    owner: Any,
    served: Opened,
    host_key: LocalAccount,
) -> None:
    told_client = answer(served, host_key, "4", start=120)
    told_auditor = answer(served, host_key, "5", start=120)
    receipt = slasher.slashDoubleSigned(
        evidence(told_client), evidence(told_auditor), 25 * ETHER, CLIENT, sender=owner
    )
    evidence_id = slasher.doubleSignEvidence(served.id, 120)
    assert receipt.events.filter(slasher.Slashed) == [
        slasher.Slashed(registered, evidence_id, 25 * ETHER, client)
    ]
    assert fab.balanceOf(client) == 25 * ETHER
    assert stake(nodes, registered) == MIN_STAKE - 25 * ETHER
    # The same answer slashes once, whichever pair of its records comes next.
    third = answer(served, host_key, "6", start=120)
    with ape.reverts(slasher.EvidenceAlreadyUsed):
        slasher.slashDoubleSigned(evidence(told_client), evidence(third), 1, TREASURY, sender=owner)


def test_records_that_do_not_conflict_are_no_evidence(
    slasher: Any,
    owner: Any,
    served: Opened,
    host_key: LocalAccount,
    open_session: Any,
    market: Any,
    registered: Any,
) -> None:
    first = answer(served, host_key, "4", start=0)
    with ape.reverts(slasher.NotConflicting):  # the same record twice
        slasher.slashDoubleSigned(evidence(first), evidence(first), 1, TREASURY, sender=owner)
    later = answer(served, host_key, "5", start=40)
    with ape.reverts(slasher.NotConflicting):  # two answers of one session
        slasher.slashDoubleSigned(evidence(first), evidence(later), 1, TREASURY, sender=owner)
    other = open_session()
    elsewhere = answer(other, host_key, "5", start=0)
    with ape.reverts(slasher.NotConflicting):  # the same start in two sessions
        slasher.slashDoubleSigned(evidence(first), evidence(elsewhere), 1, TREASURY, sender=owner)


def test_a_record_the_host_did_not_sign_is_no_evidence(
    slasher: Any, owner: Any, served: Opened, host_key: LocalAccount
) -> None:
    real = answer(served, host_key, "4")
    forged = answer(served, Account.create(), "5")
    with ape.reverts(slasher.NotSignedByHost):
        slasher.slashDoubleSigned(evidence(real), evidence(forged), 1, TREASURY, sender=owner)
    # A signature over another record's hash doesn't count either.
    other = answer(served, host_key, "6")
    swapped = (other.evidence(), real.host_signature)
    with ape.reverts(slasher.NotSignedByHost):
        slasher.slashDoubleSigned(evidence(real), swapped, 1, TREASURY, sender=owner)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"",
        lambda b: b"\xf6",  # CBOR null, not a map
        lambda b: b[:20],  # cut short
        lambda b: b.replace(b"\x61\x76\x01", b"\x61\x76\x02", 1),  # record version 2
        lambda b: b.replace(b"start", b"stark", 1),  # no `start`
    ],
)
def test_malformed_records_are_refused(
    slasher: Any,
    project: Any,
    owner: Any,
    served: Opened,
    host_key: LocalAccount,
    mangle: Callable[[bytes], bytes],
) -> None:
    real = answer(served, host_key, "4")
    bad = mangle(real.evidence())
    # Signed by the host, so that only the record's shape is at fault.
    signature = sign_transcript(host_key, served.domain, served.id, keccak(bad))
    with ape.reverts(slasher.MalformedRecord):
        slasher.slashDoubleSigned(evidence(real), (bad, signature), 1, TREASURY, sender=owner)


def test_governance_slashes_through_a_vote(
    failed_audit: Callable[..., bytes],
    project: Any,
    dao: Dao,
    owner: Any,
    fab: Any,
    nodes: Any,
    market: Any,
    reputation: Any,
    registered: Any,
    client: Any,
) -> None:
    slasher = owner.deploy(project.Slasher, dao.timelock, nodes, market, reputation)
    transcript_hash = failed_audit()
    with ape.reverts(slasher.OwnableUnauthorizedAccount):
        slasher.slashFailedAudit(transcript_hash, 1, CLIENT, sender=owner)
    actions = [
        (nodes, nodes.setSlasher.encode_input(slasher)),
        (slasher, slasher.slashFailedAudit.encode_input(transcript_hash, 30 * ETHER, CLIENT)),
    ]
    dao.enact(actions, "Slash the host whose answer failed its audit")
    assert fab.balanceOf(client) == 30 * ETHER
    assert stake(nodes, registered) == MIN_STAKE - 30 * ETHER


def test_an_unbonding_host_stays_slashable(
    slasher: Any,
    nodes: Any,
    fab: Any,
    registered: Any,
    owner: Any,
    failed_audit: Callable[..., bytes],
) -> None:
    transcript_hash = failed_audit()
    nodes.unregister(sender=registered)  # leaving does not outrun the evidence
    slasher.slashFailedAudit(transcript_hash, MIN_STAKE, TREASURY, sender=owner)
    assert stake(nodes, registered) == 0
