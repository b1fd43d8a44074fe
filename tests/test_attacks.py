"""Attacks that must fail: forged, replayed and cross-domain vouchers, double settlement,
over-claiming, reentrancy from a hostile token or client, fee-on-transfer tokens."""

from collections.abc import Callable
from typing import Any

import ape
import pytest
from eth_account import Account

from fabstir_sdk.contracts import VoucherDomain, sign_voucher

from contract_helpers import ETH, ETH_PRICE, Opened


def test_voucher_signed_by_someone_else(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    forged = sign_voucher(Account.create(), opened.domain, opened.id, 100)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(*forged.as_args(), sender=registered)


def test_garbage_signature(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(opened.id, 1, b"\x00" * 32, b"\x01" * 65, sender=registered)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(opened.id, 1, b"\x00" * 32, b"\x01" * 10, sender=registered)


def test_voucher_replayed_on_another_session(
    market: Any, open_session: Any, registered: Any
) -> None:
    first = open_session()
    second = open_session()
    # A key that signs for one session cannot sign for another.
    reused = Opened(second.id, first.signer, first.domain)
    market.settle(*first.voucher(100).as_args(), sender=registered)
    _, tokens, transcript, signature = first.voucher(100).as_args()
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(second.id, tokens, transcript, signature, sender=registered)
    with ape.reverts(market.InvalidVoucherSignature):
        market.settle(*reused.voucher(100).as_args(), sender=registered)


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
    voucher = sign_voucher(opened.signer, other, opened.id, 100)
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
        market.finalize(opened.id, sender=registered)


def test_non_host_cannot_checkpoint(
    market: Any, open_session: Any, client: Any, stranger: Any
) -> None:
    opened = open_session()
    for who in (client, stranger):
        with ape.reverts(market.NotSessionHost):
            market.checkpoint(*opened.voucher(10).as_args(), sender=who)


def test_decreasing_vouchers(market: Any, open_session: Any, registered: Any) -> None:
    opened = open_session()
    market.checkpoint(*opened.voucher(50).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.checkpoint(*opened.voucher(49).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.settle(*opened.voucher(1).as_args(), sender=registered)


def test_tokens_beyond_deposit(
    market: Any, open_session: Any, registered: Any, client: Any
) -> None:
    deposit = 10**15 + 7
    opened = open_session(deposit=deposit)
    limit = market.maxTokens(opened.id)
    assert limit * ETH_PRICE // 1000 <= deposit < (limit + 1) * ETH_PRICE // 1000
    with ape.reverts(market.VoucherExceedsDeposit):
        market.checkpoint(*opened.voucher(limit + 1).as_args(), sender=registered)
    with ape.reverts(market.VoucherExceedsDeposit):
        market.settle(*opened.voucher(limit + 1).as_args(), sender=registered)
    before = client.balance
    market.settle(*opened.voucher(limit).as_args(), sender=registered)
    assert client.balance - before == deposit - limit * ETH_PRICE // 1000


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


def test_reentrant_token_cannot_reenter_settlement(
    market: Any,
    earnings: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    evil: Any,
    treasury: Any,
) -> None:
    deposit = 10**6
    opened = open_session(deposit=deposit, price=1000, token=evil)
    voucher = opened.voucher(1000)
    # During the settlement's token transfer, re-enter settle with the same voucher.
    evil.arm(
        market,
        market.settle.as_transaction(*voucher.as_args(), sender=registered).data,
        sender=client,
    )
    market.settle(*voucher.as_args(), sender=registered)
    assert not evil.lastCallSucceeded()
    assert evil.balanceOf(client) == deposit - 1000
    assert earnings.balanceOf(registered, evil) + earnings.balanceOf(treasury, evil) == 1000
    assert evil.balanceOf(market) == 0


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
    market.open(registered, model_id, evil, 10**6, 1000, 3600, signer, sender=client)
    assert not evil.lastCallSucceeded()
    assert market.nextSessionId() == 2


def test_fee_on_transfer_token_refused(
    market: Any, open_session: Any, evil: Any, client: Any
) -> None:
    evil.setTransferFee(100, sender=client)
    with ape.reverts(market.UnsupportedToken):
        open_session(deposit=10**6, price=1000, token=evil)


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
    return Opened(session_id, signer, VoucherDomain(market.provider.chain_id, market.address))


def test_reverting_client_cannot_block_settlement(
    market: Any, earnings: Any, hostile: Any, registered: Any, model_id: bytes, owner: Any
) -> None:
    deposit = 10**15
    opened = open_as(hostile, market, registered, model_id, deposit)
    hostile.setMode(1, ETH, b"", sender=owner)  # revert on receive
    receipt = market.settle(*opened.voucher(100).as_args(), sender=registered)
    refund = deposit - 100 * ETH_PRICE // 1000
    assert receipt.events.filter(market.PayoutDeferred)[0].amount == refund
    assert market.pendingPayouts(hostile, ETH) == refund
    claim = market.claimPayout.as_transaction(ETH, sender=owner).data
    with ape.reverts(market.EthTransferFailed):
        hostile.execute(market, claim, sender=owner)
    hostile.setMode(0, ETH, b"", sender=owner)
    hostile.execute(market, claim, sender=owner)
    assert hostile.balance == refund
    assert market.balance == 0


def test_reentrant_client_cannot_double_refund(
    market: Any, hostile: Any, registered: Any, model_id: bytes, owner: Any, chain: Any
) -> None:
    deposit = 10**15
    opened = open_as(hostile, market, registered, model_id, deposit)
    reenter = market.finalize.as_transaction(opened.id, sender=owner).data
    hostile.setMode(2, market, reenter, sender=owner)
    market.settle(*opened.voucher(100).as_args(), sender=registered)
    assert not hostile.lastCallSucceeded()
    assert hostile.balance == deposit - 100 * ETH_PRICE // 1000
    assert market.balance == 0


def test_earnings_refuses_unfunded_credit(
    earnings: Any, owner: Any, stranger: Any, usd: Any
) -> None:
    earnings.setCreditor(stranger, True, sender=owner)
    with ape.reverts(earnings.Underfunded):
        earnings.credit(stranger, usd, 1, sender=stranger)


# ------------------------------------------------------------------ tokens that change their rules


@pytest.fixture
def switch(project: Any, allow_token: Callable[[Any, int], Any]) -> Any:
    """An allow-listed token whose issuer may switch on a transfer fee or block an address."""
    return allow_token(project.FeeSwitchToken, 10**24)


@pytest.mark.parametrize("close", ["settle", "finalize"])
def test_fee_switched_on_after_the_deposit_cannot_freeze_settlement(
    market: Any,
    earnings: Any,
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
        receipt = market.finalize(opened.id, sender=stranger)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.payment == 3000
    assert settled.hostAmount + settled.fee + settled.refund == deposit  # the nominal split
    # What the token took is accounted for, leg by leg: earnings (host + fee) and the refund.
    shortfalls = receipt.events.filter(market.TransferShortfall)
    by_recipient = {s.recipient: s for s in shortfalls}
    paid = by_recipient[earnings.address]
    assert (paid.expected, paid.received) == (3000, 3000 - 30)
    host_credit = earnings.balanceOf(registered, switch)
    treasury_credit = earnings.balanceOf(treasury, switch)
    assert host_credit + treasury_credit == paid.received
    assert treasury_credit == settled.fee * paid.received // 3000
    refund = by_recipient[client.address]
    assert refund.expected == settled.refund
    assert refund.received == settled.refund - settled.refund // 100
    assert switch.balanceOf(client) == refund.received
    assert switch.balanceOf(market) == 0
    assert switch.balanceOf(earnings) == earnings.totalOwed(switch)
    earnings.withdraw(switch, sender=registered)  # the host is paid what arrived, less the fee
    assert switch.balanceOf(registered) == host_credit - host_credit // 100


def test_blocked_transfers_defer_payouts_instead_of_freezing_settlement(
    market: Any,
    earnings: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    switch: Any,
) -> None:
    deposit = 10**6
    opened = open_session(deposit=deposit, price=1000, token=switch)
    switch.setBlocked(earnings, True, sender=client)
    switch.setBlocked(client, True, sender=client)
    receipt = market.settle(*opened.voucher(5000).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.hostAmount + settled.fee + settled.refund == deposit
    deferred = {e.account: e.amount for e in receipt.events.filter(market.PayoutDeferred)}
    assert deferred == {
        registered.address: settled.hostAmount,
        treasury.address: settled.fee,
        client.address: settled.refund,
    }
    assert switch.balanceOf(market) == deposit  # nothing left, nothing lost
    market.claimPayout(switch, sender=registered)
    market.claimPayout(switch, sender=treasury)
    switch.setBlocked(client, False, sender=client)
    market.claimPayout(switch, sender=client)
    assert switch.balanceOf(registered) == settled.hostAmount
    assert switch.balanceOf(treasury) == settled.fee
    assert switch.balanceOf(client) == settled.refund
    assert switch.balanceOf(market) == 0


# ------------------------------------------------------------------ deposits bounded


def test_deposits_are_capped_so_settlement_math_cannot_overflow(
    market: Any,
    earnings: Any,
    open_session: Any,
    registered: Any,
    owner: Any,
    evil: Any,
    nodes: Any,
    model_id: bytes,
) -> None:
    with ape.reverts(market.MaxDepositTooHigh):
        market.setTokenConfig(evil, True, 1, 2**128 - 1, sender=owner)
    cap = market.MAX_DEPOSIT()
    assert cap < 2**128 // 1000
    market.setTokenConfig(evil, True, 1, cap, sender=owner)
    nodes.setPrices([(model_id, evil.address, 1)], sender=registered)
    opened = open_session(deposit=cap, price=1, token=evil)
    limit = market.maxTokens(opened.id)
    assert limit == (cap + 1) * 1000 - 1
    receipt = market.settle(*opened.voucher(limit).as_args(), sender=registered)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.payment == cap and settled.refund == 0
    assert settled.hostAmount + settled.fee == cap
    assert evil.balanceOf(market) == 0
