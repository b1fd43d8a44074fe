"""ReputationSystem: recorded sessions, ratings, audits of host-signed transcripts and the
heartbeat bitmap; every custom error and every event, with exact counts."""

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import VoucherDomain, sign_transcript, transcript_digest

from contract_helpers import ETH, Opened

OPEN, CLOSE_REQUESTED, SETTLED = 1, 2, 3
RECORD = b'{"prompt":"2+2?","answer":"4","model":"smollm2"}' * 20  # ~1 KB, like a real one


def record_of(reputation: Any, host: Any) -> tuple[int, int, int, int, int, int]:
    """(sessions, auditsPassed, auditsFailed, ratings, tokensServed, ratingSum) of ``host``."""
    r = reputation.recordOf(host)
    return (r.sessions, r.auditsPassed, r.auditsFailed, r.ratings, r.tokensServed, r.ratingSum)


@pytest.fixture
def settled_session(market: Any, open_session: Any, registered: Any) -> Callable[..., Opened]:
    """Opens a session and settles it at once for ``tokens`` tokens."""

    def _settled(tokens: int = 250) -> Opened:
        opened = open_session()
        market.settle(*opened.voucher(tokens).as_args(), sender=registered)
        return opened

    return _settled


# ------------------------------------------------------------------ the marketplace's side


def test_parties_follows_the_session(
    market: Any, open_session: Any, registered: Any, client: Any
) -> None:
    assert market.parties(999) == (ETH, ETH, 0, 0)
    opened = open_session()
    assert market.parties(opened.id) == (client.address, registered.address, OPEN, 0)
    market.checkpoint(*opened.voucher(40).as_args(), sender=registered)
    assert market.parties(opened.id) == (client.address, registered.address, OPEN, 40)
    market.requestClose(opened.id, sender=client)
    assert market.parties(opened.id) == (client.address, registered.address, CLOSE_REQUESTED, 40)
    market.settle(*opened.voucher(70).as_args(), sender=registered)
    assert market.parties(opened.id) == (client.address, registered.address, SETTLED, 70)


def test_deployment(project: Any, owner: Any, reputation: Any, market: Any, nodes: Any) -> None:
    assert reputation.marketplace() == market.address
    assert reputation.nodeRegistry() == nodes.address
    assert reputation.EPOCH() == 3600 and reputation.MAX_WINDOW() == 256
    assert bytes(reputation.TRANSCRIPT_TYPEHASH()) == keccak(
        b"Transcript(uint256 sessionId,bytes32 transcriptHash)"
    )
    with ape.reverts(project.ReputationSystem.InvalidEpoch):
        owner.deploy(project.ReputationSystem, market, nodes, 0)
    with ape.reverts(project.ReputationSystem.ZeroAddress):
        owner.deploy(project.ReputationSystem, ETH, nodes, 3600)
    with ape.reverts(project.ReputationSystem.ZeroAddress):
        owner.deploy(project.ReputationSystem, market, ETH, 3600)


# ------------------------------------------------------------------ sessions


def test_record_session_counts_each_session_once(
    reputation: Any, settled_session: Any, registered: Any, stranger: Any
) -> None:
    first, second = settled_session(250), settled_session(1234)
    assert not reputation.sessionRecorded(first.id)
    receipt = reputation.recordSession(first.id, sender=stranger)  # anyone may record
    [event] = receipt.events.filter(reputation.SessionRecorded)
    assert (event.host, event.sessionId, event.tokens) == (registered.address, first.id, 250)
    assert reputation.sessionRecorded(first.id)
    assert record_of(reputation, registered) == (1, 0, 0, 0, 250, 0)

    with ape.reverts(reputation.SessionAlreadyRecorded, sessionId=first.id):
        reputation.recordSession(first.id, sender=stranger)
    reputation.recordSession(second.id, sender=registered)
    assert record_of(reputation, registered) == (2, 0, 0, 0, 250 + 1234, 0)
    assert not reputation.rated(first.id) and not reputation.rated(second.id)


def test_record_session_errors(
    market: Any,
    reputation: Any,
    open_session: Any,
    settled_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
) -> None:
    with ape.reverts(reputation.SessionNotSettled, sessionId=999):
        reputation.recordSession(999, sender=stranger)
    opened = open_session()
    market.checkpoint(*opened.voucher(40).as_args(), sender=registered)
    with ape.reverts(reputation.SessionNotSettled, sessionId=opened.id):
        reputation.recordSession(opened.id, sender=stranger)
    market.requestClose(opened.id, sender=client)
    with ape.reverts(reputation.SessionNotSettled, sessionId=opened.id):
        reputation.recordSession(opened.id, sender=stranger)
    empty = settled_session(0)
    with ape.reverts(reputation.NothingServed, sessionId=empty.id):
        reputation.recordSession(empty.id, sender=stranger)
    assert record_of(reputation, registered) == (0, 0, 0, 0, 0, 0)


# ------------------------------------------------------------------ ratings


def test_rate_records_the_session_and_counts_the_score(
    reputation: Any, settled_session: Any, registered: Any, client: Any
) -> None:
    opened = settled_session(300)
    receipt = reputation.rate(opened.id, 4, sender=client)
    [rated] = receipt.events.filter(reputation.Rated)
    assert (rated.host, rated.sessionId, rated.client, rated.score) == (
        registered.address,
        opened.id,
        client.address,
        4,
    )
    [recorded] = receipt.events.filter(reputation.SessionRecorded)
    assert (recorded.host, recorded.sessionId, recorded.tokens) == (
        registered.address,
        opened.id,
        300,
    )
    assert reputation.rated(opened.id) and reputation.sessionRecorded(opened.id)
    assert record_of(reputation, registered) == (1, 0, 0, 1, 300, 4)

    # A session recorded beforehand is not counted again.
    other = settled_session(10)
    reputation.recordSession(other.id, sender=client)
    receipt = reputation.rate(other.id, 1, sender=client)
    assert not receipt.events.filter(reputation.SessionRecorded)
    assert len(receipt.events.filter(reputation.Rated)) == 1
    assert record_of(reputation, registered) == (2, 0, 0, 2, 310, 5)
    # Recording a rated session is refused: rating recorded it.
    with ape.reverts(reputation.SessionAlreadyRecorded, sessionId=opened.id):
        reputation.recordSession(opened.id, sender=client)


def test_rate_errors(
    market: Any,
    reputation: Any,
    open_session: Any,
    settled_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
) -> None:
    opened = settled_session()
    for score in (0, 6, 255):
        with ape.reverts(reputation.InvalidScore, score=score):
            reputation.rate(opened.id, score, sender=client)
    for outsider in (stranger, registered):  # nor the host itself
        with ape.reverts(reputation.NotSessionClient, sessionId=opened.id):
            reputation.rate(opened.id, 5, sender=outsider)
    with ape.reverts(reputation.NotSessionClient, sessionId=999):
        reputation.rate(999, 5, sender=client)

    live = open_session()
    market.checkpoint(*live.voucher(40).as_args(), sender=registered)
    with ape.reverts(reputation.SessionNotSettled, sessionId=live.id):
        reputation.rate(live.id, 5, sender=client)
    empty = settled_session(0)
    with ape.reverts(reputation.NothingServed, sessionId=empty.id):
        reputation.rate(empty.id, 1, sender=client)

    reputation.rate(opened.id, 5, sender=client)
    with ape.reverts(reputation.AlreadyRated, sessionId=opened.id):
        reputation.rate(opened.id, 1, sender=client)
    assert record_of(reputation, registered) == (1, 0, 0, 1, 250, 5)


# ------------------------------------------------------------------ audits


def test_transcript_digest_matches_the_sdk(reputation: Any, domain: VoucherDomain) -> None:
    transcript_hash = keccak(RECORD)
    assert bytes(reputation.transcriptDigest(7, transcript_hash)) == transcript_digest(
        domain, 7, transcript_hash
    )


def test_report_audit_counts_passes_and_failures(
    market: Any,
    reputation: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    host_key: LocalAccount,
    domain: VoucherDomain,
) -> None:
    opened = open_session()  # audits may come before settlement
    passed_hash = keccak(RECORD)
    signature = sign_transcript(host_key, domain, opened.id, passed_hash)
    assert not reputation.auditReported(passed_hash)
    receipt = reputation.reportAudit(opened.id, RECORD, signature, True, sender=client)
    [event] = receipt.events.filter(reputation.AuditReported)
    assert (event.host, event.sessionId, bytes(event.transcriptHash)) == (
        registered.address,
        opened.id,
        passed_hash,
    )
    assert event.reporter == client.address and event.passed
    assert reputation.auditReported(passed_hash)
    assert record_of(reputation, registered) == (0, 1, 0, 0, 0, 0)

    market.settle(*opened.voucher(5).as_args(), sender=registered)  # and after it
    failed = RECORD + b"\n"
    signature = sign_transcript(host_key, domain, opened.id, keccak(failed))
    receipt = reputation.reportAudit(opened.id, failed, signature, False, sender=client)
    [event] = receipt.events.filter(reputation.AuditReported)
    assert bytes(event.transcriptHash) == keccak(failed) and not event.passed
    assert record_of(reputation, registered) == (0, 1, 1, 0, 0, 0)
    assert not reputation.sessionRecorded(opened.id)  # an audit does not record the session


def test_report_audit_errors(
    reputation: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    host_key: LocalAccount,
    domain: VoucherDomain,
) -> None:
    opened, other = open_session(), open_session()
    transcript_hash = keccak(RECORD)
    signature = sign_transcript(host_key, domain, opened.id, transcript_hash)

    def report(
        sig: bytes = signature,
        session_id: int = opened.id,
        record: bytes = RECORD,
        sender: Any = client,
    ) -> Any:
        return reputation.reportAudit(session_id, record, sig, False, sender=sender)

    for outsider in (stranger, registered):
        with ape.reverts(reputation.NotSessionClient, sessionId=opened.id):
            report(sender=outsider)
    with ape.reverts(reputation.NotSessionClient, sessionId=999):
        report(session_id=999)  # an unknown session has no client
    forged = sign_transcript(Account.create(), domain, opened.id, transcript_hash)
    with ape.reverts(reputation.NotSignedByHost, sessionId=opened.id):
        report(forged)
    # Signed for one session, it says nothing about another.
    with ape.reverts(reputation.NotSignedByHost, sessionId=other.id):
        report(session_id=other.id)
    with ape.reverts(reputation.NotSignedByHost, sessionId=opened.id):
        report(record=RECORD + b" ")  # the record is not what the host signed
    elsewhere = VoucherDomain(domain.chain_id + 1, domain.marketplace)
    with ape.reverts(reputation.NotSignedByHost, sessionId=opened.id):
        report(sign_transcript(host_key, elsewhere, opened.id, transcript_hash))
    for garbage in (b"", b"\x01" * 10, b"\x01" * 65):
        with ape.reverts(reputation.NotSignedByHost, sessionId=opened.id):
            report(garbage)

    report()
    with ape.reverts(reputation.AuditAlreadyReported, transcriptHash=transcript_hash):
        report()
    with ape.reverts(reputation.AuditAlreadyReported, transcriptHash=transcript_hash):
        reputation.reportAudit(opened.id, RECORD, signature, True, sender=client)
    assert record_of(reputation, registered) == (0, 0, 1, 0, 0, 0)


# ------------------------------------------------------------------ heartbeats


def go_to(chain: Any, reputation: Any, epoch: int) -> None:
    """Mine a block in the middle of ``epoch``; the next transaction lands in it too."""
    length = reputation.EPOCH()
    chain.mine(timestamp=epoch * length + length // 2)
    assert reputation.currentEpoch() == epoch


def test_heartbeat_once_per_epoch(chain: Any, reputation: Any, registered: Any) -> None:
    start = reputation.currentEpoch() + 1
    go_to(chain, reputation, start)
    assert reputation.uptime(registered, 1) == 0
    receipt = reputation.heartbeat(sender=registered)
    [event] = receipt.events.filter(reputation.Heartbeat)
    assert (event.host, event.epoch) == (registered.address, start)
    assert reputation.uptime(registered, 1) == 1
    with ape.reverts(reputation.AlreadyBeat, epoch=start):
        reputation.heartbeat(sender=registered)
    go_to(chain, reputation, start + 1)
    receipt = reputation.heartbeat(sender=registered)
    assert receipt.events.filter(reputation.Heartbeat)[0].epoch == start + 1
    assert reputation.uptime(registered, 1) == 1 and reputation.uptime(registered, 2) == 2


def test_uptime_over_windows(chain: Any, reputation: Any, registered: Any) -> None:
    start = reputation.currentEpoch() + 1
    beats = [0, 1, 2, 5, 9, 10, 40]  # epochs after ``start`` with a heartbeat
    for offset in beats:
        go_to(chain, reputation, start + offset)
        reputation.heartbeat(sender=registered)
    now = start + 60
    go_to(chain, reputation, now)
    for window in (1, 2, 20, 21, 50, 51, 55, 58, 59, 60, 61, 100, 256):
        expected = sum(1 for b in beats if now - (start + b) < window)
        assert reputation.uptime(registered, window) == expected, window
    assert reputation.uptime(registered, 256) == len(beats)
    for window in (0, 257):
        with ape.reverts(reputation.InvalidWindow, epochs=window):
            reputation.uptime(registered, window)
    # Beating now shifts the history by the 20 epochs that passed.
    reputation.heartbeat(sender=registered)
    assert reputation.uptime(registered, 1) == 1
    assert reputation.uptime(registered, 20) == 1
    assert reputation.uptime(registered, 21) == 2
    assert reputation.uptime(registered, 61) == len(beats) + 1


def test_history_older_than_256_epochs_is_dropped(
    chain: Any, reputation: Any, registered: Any
) -> None:
    start = reputation.currentEpoch() + 1
    go_to(chain, reputation, start)
    reputation.heartbeat(sender=registered)
    go_to(chain, reputation, start + 255)  # the oldest epoch still in the window
    assert reputation.uptime(registered, 256) == 1
    assert reputation.uptime(registered, 255) == 0
    reputation.heartbeat(sender=registered)
    assert reputation.uptime(registered, 256) == 2
    go_to(chain, reputation, start + 255 + 256)  # the window no longer reaches the last beat
    assert reputation.uptime(registered, 256) == 0
    go_to(chain, reputation, start + 255 + 300)
    reputation.heartbeat(sender=registered)  # cleared, not shifted into garbage
    assert reputation.uptime(registered, 256) == 1
    go_to(chain, reputation, start + 255 + 300 + 1000)
    reputation.heartbeat(sender=registered)
    assert reputation.uptime(registered, 256) == 1


def test_a_full_window_counts_256(chain: Any, reputation: Any, registered: Any) -> None:
    start = reputation.currentEpoch() + 1
    for offset in range(256):
        go_to(chain, reputation, start + offset)
        reputation.heartbeat(sender=registered)
    assert reputation.uptime(registered, 256) == 256
    assert reputation.uptime(registered, 255) == 255
    assert reputation.uptime(registered, 1) == 1
    go_to(chain, reputation, start + 256)
    assert reputation.uptime(registered, 256) == 255


def test_heartbeat_only_from_active_hosts(
    reputation: Any, nodes: Any, registered: Any, stranger: Any, host2: Any
) -> None:
    for outsider in (stranger, host2):  # host2 never registered
        with ape.reverts(reputation.HostNotActive, host=outsider.address):
            reputation.heartbeat(sender=outsider)
    nodes.unregister(sender=registered)  # unbonding: no longer active
    with ape.reverts(reputation.HostNotActive, host=registered.address):
        reputation.heartbeat(sender=registered)
    assert reputation.uptime(registered, 256) == 0
