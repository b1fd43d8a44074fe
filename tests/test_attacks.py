"""Attacks that must fail: forged, replayed and cross-domain vouchers, forged session terms,
a host settling another host's session, double settlement, over-claiming, reentrancy from a
hostile token or client, fee-on-transfer tokens, tokens and wallets that refuse a payout."""

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account
from eth_utils import keccak

from fabstir_sdk.contracts import VoucherDomain, sign_voucher

from contract_helpers import (
    ETH,
    ETH_PRICE,
    FEE_BPS,
    Opened,
    SessionVoucher,
    Terms,
    register_host,
)

#: ReentrancyGuardTransient's error: what every re-entered payout entry point answers.
REENTERED = keccak(text="ReentrancyGuardReentrantCall()")[:4]
PEER_ID_2 = bytes.fromhex("0024080112204a") + b"\x02" * 32


def assert_holds_what_it_owes(
    escrow: Any, balance: int, live_deposits: int, token: Any, accounts: list[Any]
) -> None:
    """The escrow's ``balance`` of ``token`` is its live deposits plus what ``accounts`` (every
    account it owes anything) are owed, to the wei."""
    assert balance == live_deposits + sum(int(escrow.owed(a, token)) for a in accounts)


def test_voucher_signed_by_someone_else(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    forged = sign_voucher(Account.create(), opened.domain, opened.id, 100)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(*opened.signed(forged).as_args(), sender=registered)


def test_garbage_signature(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(opened.id, opened.terms, 1, b"\x00" * 32, b"\x01" * 65, sender=registered)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(opened.id, opened.terms, 1, b"\x00" * 32, b"\x01" * 10, sender=registered)
    with ape.reverts(market.InvalidVoucherSignature):
        market.checkpoint(opened.id, opened.terms, 1, b"\x00" * 32, b"", sender=registered)


def test_voucher_replayed_on_another_session(
    market: Any, open_session: Any, registered: Any
) -> None:
    first = open_session()
    second = open_session()
    market.settle(*first.voucher(100).as_args(), sender=registered)
    _, _, tokens, transcript, signature = first.voucher(100).as_args()
    # first's voucher (its id, its signer) with second's terms.
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(second.id, second.terms, tokens, transcript, signature, sender=registered)
    # A key that signs for one session cannot sign for another ...
    reused = sign_voucher(first.signer, first.domain, second.id, 100)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(*second.signed(reused).as_args(), sender=registered)
    # ... not even when the host names that key in the terms.
    with ape.reverts(market.WrongTerms, sessionId=second.id):
        market.settle(*first.signed(reused).as_args(), sender=registered)
    assert market.getSession(second.id).status == 1  # still open


@pytest.mark.parametrize("where", ["chain", "contract"])
def test_voucher_from_another_domain(
    market: Any, open_session: Any, registered: Any, where: str
) -> None:
    opened = open_session()
    d = opened.domain
    other = (
        VoucherDomain(d.chain_id + 1, d.marketplace)
        if where == "chain"
        else VoucherDomain(d.chain_id, registered.address)
    )
    voucher = opened.signed(sign_voucher(opened.signer, other, opened.id, 100))
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(*voucher.as_args(), sender=registered)
    with ape.reverts(market.InvalidVoucherSignature):
        market.checkpoint(*voucher.as_args(), sender=registered)


def test_host_cannot_settle_twice(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    market.settle(*opened.voucher(100).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen):
        market.settle(*opened.voucher(200).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen):
        market.checkpoint(*opened.voucher(200).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen):
        market.finalize(opened.id, opened.terms, sender=registered)


def test_non_host_cannot_checkpoint_or_settle(
    market: Any, open_session: Any, client: Any, stranger: Any
) -> None:
    opened = open_session()
    for who in (client, stranger):
        with ape.reverts(market.NotSessionHost):
            market.checkpoint(*opened.voucher(10).as_args(), sender=who)
        with ape.reverts(market.NotSessionHost):
            market.settle(*opened.voucher(10).as_args(), sender=who)


def test_decreasing_vouchers(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    market.checkpoint(*opened.voucher(50).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.checkpoint(*opened.voucher(49).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.checkpoint(*opened.voucher(50).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.settle(*opened.voucher(1).as_args(), sender=registered)


def test_tokens_beyond_deposit(
    market: Any, open_session: Any, registered: Any, client: Any
) -> None:
    deposit = 10**15 + 7
    opened = open_session(deposit=deposit)
    limit = market.maxTokens(deposit, ETH_PRICE)
    assert limit * ETH_PRICE // 1000 <= deposit < (limit + 1) * ETH_PRICE // 1000
    with ape.reverts(market.VoucherExceedsDeposit):
        market.checkpoint(*opened.voucher(limit + 1).as_args(), sender=registered)
    with ape.reverts(market.VoucherExceedsDeposit):
        market.settle(*opened.voucher(limit + 1).as_args(), sender=registered)
    before = client.balance
    market.settle(*opened.voucher(limit).as_args(), sender=registered)
    assert client.balance - before == deposit - limit * ETH_PRICE // 1000


# ------------------------------------------------------------------ forged terms


FORGERIES = ["higher deposit", "lower price", "higher price", "another signer", "another token"]


def forge(opened: Opened, forgery: str, usd: Any) -> tuple[Terms, Any]:
    """Terms that differ from ``opened``'s in one way, and the key whose vouchers they accept
    (so that every check but the terms' hash would pass)."""
    token, signer, deposit, price = opened.terms
    key = opened.signer
    if forgery == "higher deposit":
        return (token, signer, deposit * 2, price), key
    if forgery == "lower price":
        return (token, signer, deposit, price // 2), key
    if forgery == "higher price":
        return (token, signer, deposit, price * 2), key
    if forgery == "another signer":
        key = Account.create()
        return (token, key.address, deposit, price), key
    return (usd.address, signer, deposit, price), key


@pytest.mark.parametrize("call", ["checkpoint", "settle", "finalize"])
@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_terms_are_refused(
    chain: Any,
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    treasury: Any,
    usd: Any,
    call: str,
    forgery: str,
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit)
    # Another session's USD deposit is in the escrow: what a forged token would steal.
    other = open_session(deposit=10**6, price=2_000, token=usd)
    market.checkpoint(*opened.voucher(100).as_args(), sender=registered)
    terms, key = forge(opened, forgery, usd)
    # The largest voucher the forged terms would allow (over the real limit when they raise it).
    tokens = max(101, int(market.maxTokens(terms[2], terms[3])))
    voucher = sign_voucher(key, opened.domain, opened.id, tokens)
    _, _, *rest = opened.signed(voucher).as_args()
    if call == "checkpoint":
        attempt = lambda: market.checkpoint(opened.id, terms, *rest, sender=registered)  # noqa: E731
    elif call == "settle":
        attempt = lambda: market.settle(opened.id, terms, *rest, sender=registered)  # noqa: E731
    else:
        market.requestClose(opened.id, sender=client)
        chain.pending_timestamp = market.finalizableAt(opened.id)
        # Anyone may finalize: the client (paying less) as much as the host (taking more).
        attempt = lambda: market.finalize(opened.id, terms, sender=client)  # noqa: E731
    with ape.reverts(market.WrongTerms, sessionId=opened.id):
        attempt()
    assert market.termsHash(terms) != market.getSession(opened.id).termsHash
    assert market.getSession(opened.id).tokens == 100  # nothing moved
    assert market.balance == deposit and usd.balanceOf(market) == 10**6
    # The true terms settle, to the wei, from this session's deposit only.
    if call == "finalize":
        receipt = market.finalize(opened.id, opened.terms, sender=stranger)
    else:
        receipt = market.settle(*opened.voucher(100).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    payment = 100 * ETH_PRICE // 1000
    assert (settled.payment, settled.refund) == (payment, deposit - payment)
    assert settled.hostAmount + settled.fee + settled.refund == deposit
    assert_holds_what_it_owes(market, market.balance, 0, ETH, [registered, treasury, client])
    assert_holds_what_it_owes(market, usd.balanceOf(market), 10**6, usd, [registered, treasury])
    assert market.getSession(other.id).status == 1


def test_terms_are_checked_after_the_status(
    market: Any, open_session: Any, registered: Any, usd: Any
) -> None:
    opened = open_session()
    forged, _ = forge(opened, "higher deposit", usd)
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.settle(999, opened.terms, 1, b"\x00" * 32, b"", sender=registered)
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.finalize(999, opened.terms, sender=registered)
    market.settle(*opened.voucher(10).as_args(), sender=registered)
    for terms in (opened.terms, forged):
        with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
            market.settle(opened.id, terms, 10, b"\x00" * 32, b"", sender=registered)
        with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
            market.finalize(opened.id, terms, sender=registered)


def test_host_cannot_settle_another_hosts_session(
    market: Any,
    open_session: Any,
    registered: Any,
    host2: Any,
    fab: Any,
    nodes: Any,
    owner: Any,
    client: Any,
    model_id: bytes,
    usd: Any,
    domain: VoucherDomain,
) -> None:
    register_host(host2, fab, nodes, owner, model_id, usd, peer_id=PEER_ID_2)
    mine = open_session()
    theirs = open_session(host=host2)
    # host2 with its own session's terms and a voucher its own signer made for `mine`.
    forged = theirs.signed(sign_voucher(theirs.signer, domain, mine.id, 100))
    with ape.reverts(market.WrongTerms, sessionId=mine.id):
        market.settle(*forged.as_args(), sender=host2)
    with ape.reverts(market.WrongTerms, sessionId=mine.id):
        market.checkpoint(*forged.as_args(), sender=host2)
    # With mine's true terms and voucher, it is still not its session.
    with ape.reverts(market.NotSessionHost, sessionId=mine.id):
        market.settle(*mine.voucher(100).as_args(), sender=host2)
    with ape.reverts(market.NotSessionHost, sessionId=mine.id):
        market.checkpoint(*mine.voucher(100).as_args(), sender=host2)

    # A client who reuses one signer, deposit and price with two hosts: the terms (and their
    # hash) are the same, yet neither host can settle the other's session.
    signer = Account.create()
    ids = []
    for h in (registered, host2):
        receipt = market.open(
            h, model_id, ETH, 10**15, ETH_PRICE, 3600, signer.address, value=10**15, sender=client
        )
        ids.append(receipt.events.filter(market.SessionOpened)[0].sessionId)
    a, b = (Opened(i, signer, domain, ETH, 10**15, ETH_PRICE) for i in ids)
    assert market.getSession(a.id).termsHash == market.getSession(b.id).termsHash
    with ape.reverts(market.NotSessionHost, sessionId=a.id):
        market.settle(*a.voucher(100).as_args(), sender=host2)
    # b's voucher on a's id (or the reverse) does not verify: the id is signed.
    _, terms, tokens, transcript, signature = b.voucher(100).as_args()
    with ape.reverts(market.InvalidVoucherSignature, sessionId=a.id):
        market.settle(a.id, terms, tokens, transcript, signature, sender=registered)
    market.settle(*a.voucher(100).as_args(), sender=registered)
    market.settle(*b.voucher(300).as_args(), sender=host2)
    for h, tokens in ((registered, 100), (host2, 300)):
        payment = tokens * ETH_PRICE // 1000
        assert market.owed(h, ETH) == payment - payment * FEE_BPS // 10_000


# ------------------------------------------------------------------ a wallet as the signer


def test_a_contract_wallet_cannot_be_the_voucher_signer(
    chain: Any,
    project: Any,
    market: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    treasury: Any,
    model_id: bytes,
    domain: VoucherDomain,
) -> None:
    """Vouchers are ECDSA from the session key only: an ERC-1271 wallet could refuse, after
    the work, signatures it had given (this one can), and take the host's pay back with them.
    A session that names a wallet as its signer pays nothing: the host learns it at the first
    checkpoint, and the client gets its whole deposit back at finalize."""
    key = Account.create()
    wallet = client.deploy(project.RevocableWallet, key.address)
    deposit = 10**15
    receipt = market.open(
        registered, model_id, ETH, deposit, ETH_PRICE, 3600, wallet, value=deposit, sender=client
    )
    session_id = receipt.events.filter(market.SessionOpened)[0].sessionId
    terms = (ETH, wallet.address, deposit, ETH_PRICE)
    # Signed by the wallet's key, which the wallet would vouch for: refused all the same.
    signed = sign_voucher(key, domain, session_id, 100)
    digest = market.voucherDigest(session_id, 100, signed.transcript_hash)
    assert wallet.isValidSignature(digest, signed.signature) == bytes.fromhex("1626ba7e")
    voucher = SessionVoucher(signed, terms).as_args()
    with ape.reverts(market.InvalidVoucherSignature, sessionId=session_id):
        market.checkpoint(*voucher, sender=registered)
    with ape.reverts(market.InvalidVoucherSignature, sessionId=session_id):
        market.settle(*voucher, sender=registered)
    market.requestClose(session_id, sender=client)
    chain.pending_timestamp = market.finalizableAt(session_id)
    receipt = market.finalize(session_id, terms, sender=stranger)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert (settled.tokens, settled.payment, settled.refund) == (0, 0, deposit)
    assert_holds_what_it_owes(market, market.balance, 0, ETH, [registered, treasury, client])


# ------------------------------------------------------------------ hostile tokens


@pytest.fixture
def allow_token(
    owner: Any, market: Any, registered: Any, nodes: Any, model_id: bytes
) -> Callable[[Any, int], Any]:
    """Deploy a token contract and let sessions pay in it (deposits up to ``max_deposit``,
    1000 units per 1000 tokens at the registered host)."""

    def allow(contract: Any, max_deposit: int) -> Any:
        token = owner.deploy(contract)
        market.setTokenConfig(token, True, 1, max_deposit, sender=owner)
        nodes.setPrices([(model_id, token.address, 1000)], sender=registered)
        return token

    return allow


@pytest.fixture
def evil(project: Any, allow_token: Callable[[Any, int], Any]) -> Any:
    return allow_token(project.ReentrantToken, 10**30)


def reentry(receipt: Any, contract: Any) -> Any:
    [attempt] = receipt.events.filter(contract.ReentryAttempted)
    return attempt


def test_reentrant_token_cannot_reenter_settlement_or_withdraw(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    evil: Any,
    treasury: Any,
) -> None:
    deposit = 10**6
    opened = open_session(deposit=deposit, price=1000, token=evil)
    voucher = opened.voucher(1000)
    # During the settlement's token transfer (the refund), re-enter settle with the same voucher.
    evil.arm(
        market,
        market.settle.as_transaction(*voucher.as_args(), sender=registered).data,
        sender=client,
    )
    receipt = market.settle(*voucher.as_args(), sender=registered)
    attempt = reentry(receipt, evil)
    assert not attempt.success and bytes(attempt.returnData) == REENTERED
    assert not evil.lastCallSucceeded()
    assert evil.balanceOf(client) == deposit - 1000
    assert market.owed(registered, evil) + market.owed(treasury, evil) == 1000
    assert evil.balanceOf(market) == 1000  # what it owes, nothing more
    # During a withdrawal's transfer, re-enter withdraw.
    evil.arm(market, market.withdraw.as_transaction(evil, sender=registered).data, sender=client)
    receipt = market.withdraw(evil, sender=registered)
    attempt = reentry(receipt, evil)
    assert not attempt.success and bytes(attempt.returnData) == REENTERED
    assert evil.balanceOf(registered) == 900 and market.owed(registered, evil) == 0
    assert evil.balanceOf(market) == 100 == market.owed(treasury, evil)


def test_reentrant_token_cannot_reenter_open(
    market: Any, open_session: Any, client: Any, evil: Any, registered: Any, model_id: bytes
) -> None:
    signer = Account.create().address
    evil.mint(client, 10**6, sender=client)
    evil.approve(market, 10**6, sender=client)
    call = market.open.as_transaction(
        registered, model_id, evil, 10, 1000, 3600, signer, sender=client
    ).data
    evil.arm(market, call, sender=client)
    receipt = market.open(registered, model_id, evil, 10**6, 1000, 3600, signer, sender=client)
    attempt = reentry(receipt, evil)
    assert not attempt.success and bytes(attempt.returnData) == REENTERED
    assert not evil.lastCallSucceeded()
    assert market.nextSessionId() == 2
    assert evil.balanceOf(market) == 10**6


def test_fee_on_transfer_token_refused(
    market: Any, open_session: Any, evil: Any, client: Any
) -> None:
    evil.setTransferFee(100, sender=client)
    with ape.reverts(market.UnsupportedToken):
        open_session(deposit=10**6, price=1000, token=evil)


# ------------------------------------------------------------------ hostile clients


@pytest.fixture
def hostile(project: Any, owner: Any) -> Any:
    return owner.deploy(project.HostileClient)


def open_as(hostile: Any, market: Any, registered: Any, model_id: bytes, deposit: int) -> Opened:
    signer = Account.create()
    data = market.open.as_transaction(
        registered,
        model_id,
        ETH,
        deposit,
        ETH_PRICE,
        3600,
        signer.address,
        value=deposit,
        sender=registered,
    ).data
    receipt = hostile.execute(market, data, value=deposit, sender=registered)
    session_id = receipt.events.filter(market.SessionOpened)[0].sessionId
    domain = VoucherDomain(market.provider.chain_id, market.address)
    return Opened(session_id, signer, domain, ETH, deposit, ETH_PRICE)


def test_reverting_client_cannot_block_settlement(
    market: Any, hostile: Any, registered: Any, model_id: bytes, owner: Any, treasury: Any
) -> None:
    deposit = 10**15
    opened = open_as(hostile, market, registered, model_id, deposit)
    hostile.setMode(1, ETH, b"", sender=owner)  # revert on receive
    receipt = market.settle(*opened.voucher(100).as_args(), sender=registered)
    payment = 100 * ETH_PRICE // 1000
    refund = deposit - payment
    [deferred] = receipt.events.filter(market.PayoutDeferred)
    assert (deferred.id, deferred.account, deferred.token) == (opened.id, hostile.address, ETH)
    assert deferred.amount == refund
    assert market.getSession(opened.id).status == 3  # settled all the same
    assert market.owed(hostile, ETH) == refund
    assert market.owed(registered, ETH) + market.owed(treasury, ETH) == payment
    assert_holds_what_it_owes(market, market.balance, 0, ETH, [hostile, registered, treasury])
    withdraw = market.withdraw.as_transaction(ETH, sender=owner).data
    with ape.reverts(market.EthTransferFailed):
        hostile.execute(market, withdraw, sender=owner)
    assert market.owed(hostile, ETH) == refund  # still there
    hostile.setMode(0, ETH, b"", sender=owner)
    hostile.execute(market, withdraw, sender=owner)
    assert hostile.balance == refund
    assert market.owed(hostile, ETH) == 0
    assert market.balance == payment  # the host's and the treasury's, still owed


def test_reentrant_client_cannot_double_refund(
    market: Any, hostile: Any, registered: Any, model_id: bytes, owner: Any, treasury: Any
) -> None:
    deposit = 10**15
    opened = open_as(hostile, market, registered, model_id, deposit)
    reenter = market.finalize.as_transaction(opened.id, opened.terms, sender=owner).data
    hostile.setMode(2, market, reenter, sender=owner)
    receipt = market.settle(*opened.voucher(100).as_args(), sender=registered)
    attempt = reentry(receipt, hostile)
    assert not attempt.success and bytes(attempt.returnData) == REENTERED
    assert not hostile.lastCallSucceeded()
    assert not receipt.events.filter(market.PayoutDeferred)
    payment = 100 * ETH_PRICE // 1000
    assert hostile.balance == deposit - payment
    assert market.balance == payment
    assert_holds_what_it_owes(market, market.balance, 0, ETH, [hostile, registered, treasury])


def test_reentrant_client_cannot_double_withdraw(
    market: Any, hostile: Any, registered: Any, model_id: bytes, owner: Any, treasury: Any
) -> None:
    deposit = 10**15
    opened = open_as(hostile, market, registered, model_id, deposit)
    hostile.setMode(1, ETH, b"", sender=owner)  # the refund waits in the ledger
    market.settle(*opened.voucher(100).as_args(), sender=registered)
    refund = deposit - 100 * ETH_PRICE // 1000
    withdraw = market.withdraw.as_transaction(ETH, sender=owner).data
    hostile.setMode(2, market, withdraw, sender=owner)  # and withdraws again from receive()
    receipt = hostile.execute(market, withdraw, sender=owner)
    attempt = reentry(receipt, hostile)
    assert not attempt.success and bytes(attempt.returnData) == REENTERED
    [withdrawn] = receipt.events.filter(market.Withdrawn)
    assert (withdrawn.account, withdrawn.amount) == (hostile.address, refund)
    assert hostile.balance == refund and market.owed(hostile, ETH) == 0
    assert_holds_what_it_owes(market, market.balance, 0, ETH, [hostile, registered, treasury])
    with ape.reverts(market.NothingToWithdraw, token=ETH):
        hostile.execute(market, withdraw, sender=owner)


def test_ledger_pays_only_what_settlements_credited(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    treasury: Any,
    usd: Any,
) -> None:
    """HostEarnings (and its unfunded-credit attack) is gone: the only way into the ledger is a
    settlement of a funded deposit, and nobody withdraws what it was not credited."""
    names = {f.name for f in market.contract_type.abi if getattr(f, "type", "") == "function"}
    assert not {n for n in names if "credit" in n.lower()}
    opened = open_session(deposit=10**15)
    live = open_session(deposit=10**15)
    for who in (stranger, client, registered, treasury):
        with ape.reverts(market.NothingToWithdraw, token=ETH):
            market.withdraw(ETH, sender=who)
    receipt = market.settle(*opened.voucher(1000).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert market.owed(registered, ETH) == settled.hostAmount
    assert market.owed(treasury, ETH) == settled.fee
    assert_holds_what_it_owes(market, market.balance, live.deposit, ETH, [registered, treasury])
    for who in (stranger, client):
        with ape.reverts(market.NothingToWithdraw, token=ETH):
            market.withdraw(ETH, sender=who)
    with ape.reverts(market.NothingToWithdraw, token=usd.address):
        market.withdraw(usd, sender=registered)
    market.withdraw(ETH, sender=registered)
    with ape.reverts(market.NothingToWithdraw, token=ETH):
        market.withdraw(ETH, sender=registered)
    market.withdraw(ETH, sender=treasury)
    assert market.balance == live.deposit  # the live session's deposit, untouched


# ------------------------------------------------------------------ tokens that change their rules


@pytest.fixture
def switch(project: Any, allow_token: Callable[[Any, int], Any]) -> Any:
    """An allow-listed token whose issuer may switch on a transfer fee or block an address."""
    return allow_token(project.FeeSwitchToken, 10**24)


@pytest.mark.parametrize("close", ["settle", "finalize"])
def test_fee_switched_on_after_the_deposit_cannot_freeze_settlement(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    chain: Any,
    switch: Any,
    close: str,
) -> None:
    deposit = 10**6
    opened = open_session(deposit=deposit, price=1000, token=switch)
    market.checkpoint(*opened.voucher(3000).as_args(), sender=registered)
    switch.setFee(100, sender=client)  # 1%, after the deposit
    if close == "settle":
        receipt = market.settle(*opened.voucher(3000).as_args(), sender=registered)
    else:
        market.requestClose(opened.id, sender=client)
        chain.pending_timestamp = market.finalizableAt(opened.id)
        receipt = market.finalize(opened.id, opened.terms, sender=stranger)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.payment == 3000
    assert settled.hostAmount + settled.fee + settled.refund == deposit  # the nominal split
    # Host and fee are credited in full in the ledger (no transfer, so no shortfall); only the
    # refund pushed to the client falls short, and says so.
    assert market.owed(registered, switch) == settled.hostAmount
    assert market.owed(treasury, switch) == settled.fee
    [refund] = receipt.events.filter(market.TransferShortfall)
    assert (refund.id, refund.token, refund.recipient) == (opened.id, switch.address, client)
    assert refund.expected == settled.refund
    assert refund.received == settled.refund - settled.refund // 100
    assert switch.balanceOf(client) == refund.received
    assert not receipt.events.filter(market.PayoutDeferred)
    balance = switch.balanceOf(market)
    assert_holds_what_it_owes(market, balance, 0, switch, [registered, treasury, client])
    # At withdraw each receives what the token delivers; the ledger debits exactly what was
    # owed, so the escrow never owes more than it holds.
    receipt = market.withdraw(switch, sender=registered)
    assert receipt.events.filter(market.Withdrawn)[0].amount == settled.hostAmount
    assert switch.balanceOf(registered) == settled.hostAmount - settled.hostAmount // 100
    assert market.owed(registered, switch) == 0
    assert switch.balanceOf(market) >= market.owed(treasury, switch) == settled.fee
    market.withdraw(switch, sender=treasury)
    assert switch.balanceOf(treasury) == settled.fee - settled.fee // 100
    assert switch.balanceOf(market) == 0 and market.owed(treasury, switch) == 0


def test_token_refusing_the_refund_cannot_block_the_hosts_settlement(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    switch: Any,
) -> None:
    """An ERC20 whose transfer to the client reverts (the client is blacklisted): the refund
    waits in the ledger and the host's settlement goes through. Blocking the host and the
    treasury changes nothing at settlement (nothing is transferred to them) and only delays
    their withdrawals."""
    deposit = 10**6
    opened = open_session(deposit=deposit, price=1000, token=switch)
    for who in (client, registered, treasury):
        switch.setBlocked(who, True, sender=client)
    receipt = market.settle(*opened.voucher(5000).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.hostAmount + settled.fee + settled.refund == deposit
    assert market.getSession(opened.id).status == 3
    deferred = {e.account: e.amount for e in receipt.events.filter(market.PayoutDeferred)}
    assert deferred == {client.address: settled.refund}
    assert market.owed(client, switch) == settled.refund
    assert market.owed(registered, switch) == settled.hostAmount
    assert market.owed(treasury, switch) == settled.fee
    assert switch.balanceOf(market) == deposit  # nothing left, nothing lost
    for who in (client, registered, treasury):
        with ape.reverts(switch.Blocked):
            market.withdraw(switch, sender=who)
        switch.setBlocked(who, False, sender=client)
        market.withdraw(switch, sender=who)
    assert switch.balanceOf(registered) == settled.hostAmount
    assert switch.balanceOf(treasury) == settled.fee
    assert switch.balanceOf(client) == settled.refund
    assert switch.balanceOf(market) == 0


# ------------------------------------------------------------------ deposits bounded


def test_deposits_are_capped_so_settlement_math_cannot_overflow(
    market: Any,
    open_session: Any,
    registered: Any,
    owner: Any,
    treasury: Any,
    client: Any,
    evil: Any,
    nodes: Any,
    model_id: bytes,
) -> None:
    cap = market.MAX_DEPOSIT()
    assert cap == 2**112 - 1 and cap < 2**128 // 1000
    with ape.reverts(market.MaxDepositTooHigh):
        market.setTokenConfig(evil, True, 1, cap + 1, sender=owner)
    market.setTokenConfig(evil, True, 1, cap, sender=owner)
    # A session pays for at most 2^64 - 1 tokens: at the cap, the lowest price is 2^48 * 1000.
    price = 2**48 * 1000
    nodes.setPrices([(model_id, evil.address, 1)], sender=registered)
    with ape.reverts(market.PriceTooLow, price=price - 1, deposit=cap):
        open_session(deposit=cap, price=price - 1, token=evil)
    with ape.reverts(market.PriceTooLow, price=0, deposit=cap):
        open_session(deposit=cap, price=0, token=evil)
    opened = open_session(deposit=cap, price=price, token=evil)
    limit = market.maxTokens(cap, price)
    assert limit == ((cap + 1) * 1000 - 1) // price == 2**64 - 1
    with ape.reverts(market.VoucherExceedsDeposit):
        market.settle(*opened.voucher(limit + 1).as_args(), sender=registered)
    before = evil.balanceOf(client)  # minted again by each attempt to open
    receipt = market.settle(*opened.voucher(limit).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.payment == limit * price // 1000 == 2**112 - 2**48
    assert settled.refund == cap - settled.payment == 2**48 - 1
    assert settled.hostAmount + settled.fee + settled.refund == cap
    assert market.getSession(opened.id).tokens == limit
    assert evil.balanceOf(client) - before == settled.refund
    balance = evil.balanceOf(market)
    assert_holds_what_it_owes(market, balance, 0, evil, [registered, treasury, client])
    # The highest price cannot overflow either: it buys nothing, and settles for nothing.
    top = open_session(deposit=10**6, price=2**256 - 1, token=evil)
    assert market.maxTokens(10**6, 2**256 - 1) == 0
    with ape.reverts(market.VoucherExceedsDeposit):
        market.settle(*top.voucher(1).as_args(), sender=registered)
    [settled] = market.settle(*top.voucher(0).as_args(), sender=registered).events.filter(
        market.SessionSettled
    )
    assert (settled.payment, settled.refund) == (0, 10**6)
