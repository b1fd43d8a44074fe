"""Smart-contract wallets: sessions and jobs opened by an ERC-4337 account (the test
``MinimalAccount``, driven by its owner through ``execute``) pay and refund the account to the
wei, and the wallet signatures the protocol checks (``rateBySig``, ``postFor``) accept an
account's ERC-1271 signature as well as an EOA's.

No EntryPoint is deployed: an Ape test account stands in for it, which is all
``validateUserOp`` and ``execute`` look at (``msg.sender``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import (
    Eip712Domain,
    PostRequest,
    post_digest,
    rating_digest,
    sign_post,
    sign_rating,
)
from fabstir_sdk.contracts.relayed import JOB_BOARD_DOMAIN, REPUTATION_DOMAIN

from contract_helpers import ETH, ETH_PRICE, ETHER, FEE_BPS, USD_PRICE, Opened

INPUT_HASH = bytes.fromhex("33" * 32)
ZERO = b"\x00" * 32
DEPOSIT = 10**15
USD_DEPOSIT = 10**7
REFUNDED = 6
SIG_VALIDATION_FAILED = 1


@pytest.fixture
def wallet_owner(accounts: Any) -> Any:
    """The EOA that owns the smart account (signs and pays for its ``execute`` calls)."""
    return accounts[8]


@pytest.fixture
def entry_point(accounts: Any) -> Any:
    """An Ape test account standing in for the ERC-4337 EntryPoint."""
    return accounts[9]


@pytest.fixture
def smart(project: Any, wallet_owner: Any, entry_point: Any) -> Any:
    """A MinimalAccount owned by ``wallet_owner``, holding 1 ETH."""
    account = wallet_owner.deploy(project.MinimalAccount, entry_point, wallet_owner)
    wallet_owner.transfer(account, ETHER)
    return account


def key_of(account: Any) -> LocalAccount:
    key: LocalAccount = Account.from_key(account.private_key)
    return key


def split(payment: int) -> tuple[int, int]:
    fee = payment * FEE_BPS // 10_000
    return payment - fee, fee


def open_via(
    smart: Any, wallet_owner: Any, market: Any, host: Any, model_id: bytes, domain: Any, token: Any
) -> Opened:
    """Opens a session from the smart account (an ERC20 approved through it first)."""
    signer = Account.create()
    if token is None:
        deposit, price, address, value = DEPOSIT, ETH_PRICE, ETH, DEPOSIT
    else:
        deposit, price, address, value = USD_DEPOSIT, USD_PRICE, token.address, 0
        token.mint(smart, deposit, sender=wallet_owner)
        smart.execute(token, 0, token.approve.encode_input(market, deposit), sender=wallet_owner)
    data = market.open.encode_input(host, model_id, address, deposit, price, 3600, signer.address)
    receipt = smart.execute(market, value, data, sender=wallet_owner)
    [opened] = receipt.events.filter(market.SessionOpened)
    assert opened.client == smart.address  # the account, not its owner, is the client
    return Opened(opened.sessionId, signer, domain, address, deposit, price)


# ------------------------------------------------------------------ the account itself


def test_only_the_owner_or_the_entry_point_may_execute(
    smart: Any, wallet_owner: Any, entry_point: Any, stranger: Any, board: Any
) -> None:
    for caller in (wallet_owner, entry_point):
        before = stranger.balance
        smart.execute(stranger, 5, b"", sender=caller)
        assert stranger.balance == before + 5
    with ape.reverts(smart.NotOwnerOrEntryPoint, caller=stranger.address):
        smart.execute(stranger, 5, b"", sender=stranger)
    with ape.reverts(smart.NotOwnerOrEntryPoint, caller=stranger.address):
        smart.executeBatch([], sender=stranger)
    with ape.reverts(smart.NotOwner, caller=entry_point.address):
        smart.setRefuseEth(True, sender=entry_point)
    # A revert inside bubbles up with the callee's own error.
    with ape.reverts(board.NotJobClient, jobId=999):
        smart.execute(board, 0, board.cancel.encode_input(999), sender=wallet_owner)


def test_execute_batch_runs_every_call_or_none(
    smart: Any, wallet_owner: Any, stranger: Any, board: Any
) -> None:
    before = stranger.balance
    smart.executeBatch([(stranger, 1, b""), (stranger, 2, b"")], sender=wallet_owner)
    assert stranger.balance == before + 3
    with ape.reverts(board.NotJobClient, jobId=999):
        smart.executeBatch(
            [(stranger, 1, b""), (board, 0, board.cancel.encode_input(999))], sender=wallet_owner
        )
    assert stranger.balance == before + 3


def test_validate_user_op_accepts_the_owners_signature_only(
    smart: Any, wallet_owner: Any, entry_point: Any, stranger: Any
) -> None:
    user_op_hash = keccak(text="a user operation")

    def op(signer: Any) -> tuple[Any, ...]:
        signed = key_of(signer).sign_message(encode_defunct(primitive=user_op_hash))
        return (smart.address, 0, b"", b"", ZERO, 0, ZERO, b"", bytes(signed.signature))

    assert smart.validateUserOp.call(op(wallet_owner), user_op_hash, 0, sender=entry_point) == 0
    failed = smart.validateUserOp.call(op(stranger), user_op_hash, 0, sender=entry_point)
    assert failed == SIG_VALIDATION_FAILED
    # Signed without the eth_sign prefix: not what the account checks.
    raw = key_of(wallet_owner).unsafe_sign_hash(user_op_hash).signature
    bare = (*op(wallet_owner)[:-1], bytes(raw))
    assert (
        smart.validateUserOp.call(bare, user_op_hash, 0, sender=entry_point)
        == SIG_VALIDATION_FAILED
    )
    # It pays what the EntryPoint says it is missing.
    before, account_before = entry_point.balance, smart.balance
    receipt = smart.validateUserOp(op(wallet_owner), user_op_hash, 12345, sender=entry_point)
    assert entry_point.balance == before + 12345 - receipt.total_fees_paid
    assert smart.balance == account_before - 12345
    for caller in (wallet_owner, stranger):
        with ape.reverts(smart.NotEntryPoint, caller=caller.address):
            smart.validateUserOp(op(wallet_owner), user_op_hash, 0, sender=caller)


# ------------------------------------------------------------------ sessions


@pytest.mark.parametrize("in_usd", [False, True], ids=["eth", "usd"])
def test_session_opened_by_the_account_refunds_it_to_the_wei(
    market: Any,
    registered: Any,
    model_id: bytes,
    domain: Any,
    smart: Any,
    wallet_owner: Any,
    usd: Any,
    in_usd: bool,
) -> None:
    token = usd if in_usd else None
    balance = (lambda: usd.balanceOf(smart)) if in_usd else (lambda: smart.balance)
    owner_before = wallet_owner.balance
    before = balance() + (USD_DEPOSIT if in_usd else 0)  # minted to the account just now
    opened = open_via(smart, wallet_owner, market, registered, model_id, domain, token)
    deposit = USD_DEPOSIT if in_usd else DEPOSIT
    assert balance() == before - deposit
    assert market.getSession(opened.id).client == smart.address

    receipt = market.settle(*opened.voucher(300).as_args(), sender=registered)
    [s] = receipt.events.filter(market.SessionSettled)
    payment = 300 * (USD_PRICE if in_usd else ETH_PRICE) // 1000
    host_amount, fee = split(payment)
    assert (s.payment, s.hostAmount, s.fee, s.refund) == (
        payment,
        host_amount,
        fee,
        deposit - payment,
    )
    assert s.hostAmount + s.fee + s.refund == deposit
    assert balance() == before - deposit + s.refund == before - payment
    token_address = usd.address if in_usd else ETH
    assert market.owed(registered, token_address) == host_amount
    assert market.owed(smart, token_address) == 0
    # The owner paid gas only: the deposit came out of the account.
    assert wallet_owner.balance <= owner_before


def test_a_refund_the_account_refuses_waits_until_it_claims_it(
    market: Any,
    registered: Any,
    model_id: bytes,
    domain: Any,
    smart: Any,
    wallet_owner: Any,
    stranger: Any,
) -> None:
    opened = open_via(smart, wallet_owner, market, registered, model_id, domain, None)
    smart.setRefuseEth(True, sender=wallet_owner)
    with ape.reverts(smart.EthRefused):
        stranger.transfer(smart, 1)
    held = smart.balance
    receipt = market.settle(*opened.voucher(100).as_args(), sender=registered)
    refund = DEPOSIT - 100 * ETH_PRICE // 1000
    [deferred] = receipt.events.filter(market.PayoutDeferred)
    assert (deferred.account, deferred.token, deferred.amount) == (smart.address, ETH, refund)
    assert market.owed(smart, ETH) == refund and smart.balance == held

    smart.setRefuseEth(False, sender=wallet_owner)
    receipt = smart.execute(market, 0, market.withdraw.encode_input(ETH), sender=wallet_owner)
    [withdrawn] = receipt.events.filter(market.Withdrawn)
    assert (withdrawn.account, withdrawn.amount) == (smart.address, refund)
    assert smart.balance == held + refund and market.owed(smart, ETH) == 0


# ------------------------------------------------------------------ jobs


@pytest.mark.parametrize("in_usd", [False, True], ids=["eth-expired", "usd-cancelled"])
def test_job_posted_by_the_account_refunds_it(
    chain: Any,
    board: Any,
    model_id: bytes,
    smart: Any,
    wallet_owner: Any,
    stranger: Any,
    usd: Any,
    in_usd: bool,
) -> None:
    if in_usd:
        usd.mint(smart, USD_DEPOSIT, sender=wallet_owner)
        smart.execute(usd, 0, usd.approve.encode_input(board, USD_DEPOSIT), sender=wallet_owner)
        token, amount, value = usd.address, USD_DEPOSIT, 0
    else:
        token, amount, value = ETH, DEPOSIT, DEPOSIT
    balance = (lambda: usd.balanceOf(smart)) if in_usd else (lambda: smart.balance)
    before = balance()
    data = board.post.encode_input(model_id, INPUT_HASH, ZERO, token, amount, 120, False)
    receipt = smart.execute(board, value, data, sender=wallet_owner)
    [posted] = receipt.events.filter(board.JobPosted)
    assert posted.client == smart.address and balance() == before - amount
    if in_usd:
        cancel = board.cancel.encode_input(posted.jobId)
        receipt = smart.execute(board, 0, cancel, sender=wallet_owner)
    else:
        chain.pending_timestamp = board.getJob(posted.jobId).deadline + 1
        receipt = board.expire(posted.jobId, sender=stranger)
    [settled] = receipt.events.filter(board.JobSettled)
    assert (settled.refund, settled.paid) == (amount, False)
    assert balance() == before
    assert board.getJob(posted.jobId).status == REFUNDED


# ------------------------------------------------------------------ rateBySig


@pytest.fixture
def rating_domain(chain: Any, reputation: Any) -> Eip712Domain:
    return Eip712Domain(REPUTATION_DOMAIN, chain.chain_id, reputation.address)


def test_rate_by_sig_with_the_accounts_erc1271_signature(
    chain: Any,
    market: Any,
    reputation: Any,
    registered: Any,
    model_id: bytes,
    domain: Any,
    rating_domain: Eip712Domain,
    smart: Any,
    wallet_owner: Any,
    stranger: Any,
) -> None:
    opened = open_via(smart, wallet_owner, market, registered, model_id, domain, None)
    market.settle(*opened.voucher(200).as_args(), sender=registered)
    deadline = chain.pending_timestamp + 600
    assert bytes(reputation.ratingDigest(opened.id, 4, deadline)) == rating_digest(
        rating_domain, opened.id, 4, deadline
    )
    # Anyone but the owner signing for the account is refused by its isValidSignature.
    forged = sign_rating(key_of(stranger), rating_domain, opened.id, 4, deadline)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
        reputation.rateBySig(opened.id, 4, deadline, forged, sender=stranger)
    signature = sign_rating(key_of(wallet_owner), rating_domain, opened.id, 4, deadline)
    receipt = reputation.rateBySig(opened.id, 4, deadline, signature, sender=stranger)
    [rated] = receipt.events.filter(reputation.Rated)
    assert (rated.host, rated.sessionId, rated.client, rated.score) == (
        registered.address,
        opened.id,
        smart.address,
        4,
    )
    record = reputation.recordOf(registered)
    assert (record.sessions, record.ratings, record.ratingSum) == (1, 1, 4)
    # One rating per session, however it comes.
    with ape.reverts(reputation.AlreadyRated, sessionId=opened.id):
        reputation.rateBySig(opened.id, 4, deadline, signature, sender=stranger)
    with ape.reverts(reputation.AlreadyRated, sessionId=opened.id):
        smart.execute(
            reputation, 0, reputation.rate.encode_input(opened.id, 5), sender=wallet_owner
        )


def test_rate_by_sig_with_an_eoa_clients_signature_and_its_errors(
    chain: Any,
    market: Any,
    reputation: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    rating_domain: Eip712Domain,
) -> None:
    opened = open_session()
    deadline = chain.pending_timestamp + 600
    signature = sign_rating(key_of(client), rating_domain, opened.id, 5, deadline)
    with ape.reverts(reputation.SessionNotSettled, sessionId=opened.id):  # rate's own rules
        reputation.rateBySig(opened.id, 5, deadline, signature, sender=stranger)
    market.settle(*opened.voucher(200).as_args(), sender=registered)
    bad_score = sign_rating(key_of(client), rating_domain, opened.id, 6, deadline)
    with ape.reverts(reputation.InvalidScore, score=6):
        reputation.rateBySig(opened.id, 6, deadline, bad_score, sender=stranger)
    # Signed by someone else, by the host (not the client), or for other terms.
    for signer in (stranger, registered):
        wrong = sign_rating(key_of(signer), rating_domain, opened.id, 5, deadline)
        with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
            reputation.rateBySig(opened.id, 5, deadline, wrong, sender=stranger)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
        reputation.rateBySig(opened.id, 3, deadline, signature, sender=stranger)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
        reputation.rateBySig(opened.id, 5, deadline + 1, signature, sender=stranger)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
        reputation.rateBySig(opened.id, 5, deadline, b"\x01" * 65, sender=stranger)
    other_domain = Eip712Domain(REPUTATION_DOMAIN, rating_domain.chain_id, market.address)
    replayed = sign_rating(key_of(client), other_domain, opened.id, 5, deadline)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=opened.id):
        reputation.rateBySig(opened.id, 5, deadline, replayed, sender=stranger)
    with ape.reverts(reputation.InvalidRatingSignature, sessionId=999):  # no such session
        reputation.rateBySig(999, 5, deadline, signature, sender=stranger)
    # Valid up to its deadline (included), not a second after.
    sooner = deadline - 300
    expiring = sign_rating(key_of(client), rating_domain, opened.id, 5, sooner)
    chain.pending_timestamp = sooner + 1
    with ape.reverts(reputation.SignatureExpired, deadline=sooner):
        reputation.rateBySig(opened.id, 5, sooner, expiring, sender=stranger)
    chain.pending_timestamp = deadline
    receipt = reputation.rateBySig(opened.id, 5, deadline, signature, sender=stranger)
    [rated] = receipt.events.filter(reputation.Rated)
    assert (rated.client, rated.score) == (client.address, 5)
    assert reputation.rated(opened.id)


# ------------------------------------------------------------------ postFor


@pytest.fixture
def board_domain(chain: Any, board: Any) -> Eip712Domain:
    return Eip712Domain(JOB_BOARD_DOMAIN, chain.chain_id, board.address)


def request_for(board: Any, client: str, model_id: bytes, token: Any, deadline: int) -> PostRequest:
    """A job for ``client`` at its next nonce, paid in ``token``."""
    nonce = board.nonces(client)
    return PostRequest(
        client, model_id, INPUT_HASH, USD_DEPOSIT, 3600, token.address, nonce, deadline
    )


def test_post_for_an_eoa_client_pulls_its_deposit_and_refuses_a_replay(
    chain: Any,
    board: Any,
    model_id: bytes,
    client: Any,
    host: Any,
    usd: Any,
    board_domain: Eip712Domain,
) -> None:
    usd.mint(client, 2 * USD_DEPOSIT, sender=client)
    usd.approve(board, 2 * USD_DEPOSIT, sender=client)
    deadline = chain.pending_timestamp + 600
    request = request_for(board, client.address, model_id, usd, deadline)
    assert request.nonce == 0
    assert bytes(board.postDigest(request.as_tuple())) == post_digest(board_domain, request)
    signature = sign_post(key_of(client), board_domain, request)
    sponsor_before = usd.balanceOf(host)
    receipt = board.postFor(request.as_tuple(), signature, sender=host)  # the host sponsors it
    [posted] = receipt.events.filter(board.JobPosted)
    job = board.getJob(posted.jobId)
    assert (posted.client, job.client, job.maxPayment) == (
        client.address,
        client.address,
        USD_DEPOSIT,
    )
    assert bytes(job.inputHash) == INPUT_HASH and job.token == usd.address
    assert usd.balanceOf(client) == USD_DEPOSIT and usd.balanceOf(board) == USD_DEPOSIT
    assert usd.balanceOf(host) == sponsor_before
    assert board.nonces(client) == 1
    with ape.reverts(board.InvalidAccountNonce, account=client.address, currentNonce=1):
        board.postFor(request.as_tuple(), signature, sender=host)
    # The client cancels its job and gets the deposit back, not the sponsor.
    board.cancel(posted.jobId, sender=client)
    assert usd.balanceOf(client) == 2 * USD_DEPOSIT and usd.balanceOf(host) == sponsor_before


def test_post_for_a_smart_account_with_its_erc1271_signature(
    chain: Any,
    board: Any,
    model_id: bytes,
    smart: Any,
    wallet_owner: Any,
    stranger: Any,
    usd: Any,
    board_domain: Eip712Domain,
) -> None:
    usd.mint(smart, USD_DEPOSIT, sender=wallet_owner)
    smart.execute(usd, 0, usd.approve.encode_input(board, USD_DEPOSIT), sender=wallet_owner)
    deadline = chain.pending_timestamp + 600
    request = request_for(board, smart.address, model_id, usd, deadline)
    forged = sign_post(key_of(stranger), board_domain, request)
    with ape.reverts(board.InvalidPostSignature, client=smart.address):
        board.postFor(request.as_tuple(), forged, sender=stranger)
    signature = sign_post(key_of(wallet_owner), board_domain, request)
    receipt = board.postFor(request.as_tuple(), signature, sender=stranger)
    [posted] = receipt.events.filter(board.JobPosted)
    assert board.getJob(posted.jobId).client == smart.address
    assert usd.balanceOf(smart) == 0 and board.nonces(smart) == 1
    with ape.reverts(board.InvalidAccountNonce, account=smart.address, currentNonce=1):
        board.postFor(request.as_tuple(), signature, sender=stranger)
    smart.execute(board, 0, board.cancel.encode_input(posted.jobId), sender=wallet_owner)
    assert usd.balanceOf(smart) == USD_DEPOSIT


def test_post_for_errors(
    chain: Any,
    board: Any,
    model_id: bytes,
    client: Any,
    stranger: Any,
    usd: Any,
    board_domain: Eip712Domain,
) -> None:
    deadline = chain.pending_timestamp + 600
    request = request_for(board, client.address, model_id, usd, deadline)
    signature = sign_post(key_of(client), board_domain, request)
    # Other terms than signed: each is a different digest.
    for changed in (
        {"max_payment": USD_DEPOSIT + 1},
        {"client": stranger.address},
        {"input_hash": b"\x44" * 32},
        {"deadline": deadline + 1},
    ):
        tampered = replace(request, **changed)
        with ape.reverts(board.InvalidPostSignature, client=tampered.client):
            board.postFor(tampered.as_tuple(), signature, sender=stranger)
    wrong = sign_post(key_of(stranger), board_domain, request)
    with ape.reverts(board.InvalidPostSignature, client=client.address):
        board.postFor(request.as_tuple(), wrong, sender=stranger)
    # A nonce ahead of the client's is refused even when signed.
    ahead = replace(request, nonce=1)
    with ape.reverts(board.InvalidAccountNonce, account=client.address, currentNonce=0):
        board.postFor(
            ahead.as_tuple(), sign_post(key_of(client), board_domain, ahead), sender=stranger
        )
    # ETH cannot be pulled from the client.
    in_eth = replace(request, token=ETH)
    eth_signature = sign_post(key_of(client), board_domain, in_eth)
    with ape.reverts(board.EthNotPullable):
        board.postFor(in_eth.as_tuple(), eth_signature, sender=stranger)
    # No allowance: the pull fails, and the nonce is not spent.
    with ape.reverts():
        board.postFor(request.as_tuple(), signature, sender=stranger)
    assert board.nonces(client) == 0
    # The terms are checked as post checks them.
    bad_hash = replace(request, input_hash=ZERO)
    with ape.reverts(board.ZeroHash):
        board.postFor(
            bad_hash.as_tuple(), sign_post(key_of(client), board_domain, bad_hash), sender=stranger
        )
    # Valid up to its deadline (included), not a second after.
    usd.mint(client, USD_DEPOSIT, sender=client)
    usd.approve(board, USD_DEPOSIT, sender=client)
    sooner = request_for(board, client.address, model_id, usd, deadline - 300)
    expiring = sign_post(key_of(client), board_domain, sooner)
    chain.pending_timestamp = sooner.deadline + 1
    with ape.reverts(board.SignatureExpired, deadline=sooner.deadline):
        board.postFor(sooner.as_tuple(), expiring, sender=stranger)
    chain.pending_timestamp = deadline
    board.postFor(request.as_tuple(), signature, sender=stranger)
    assert board.nonces(client) == 1
