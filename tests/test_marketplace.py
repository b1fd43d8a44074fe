"""JobMarketplace: every function's happy path and every custom error."""

from typing import Any

import ape
from eth_account import Account

from fabstir_sdk.contracts import sign_voucher, voucher_digest

from contract_helpers import DISPUTE_WINDOW, ETH, ETH_PRICE, FEE_BPS, USD_PRICE, add_model

TRANSCRIPT = b"\xab" * 32


def split(tokens: int, price: int, deposit: int, fee_bps: int = FEE_BPS) -> tuple[int, int, int]:
    payment = tokens * price // 1000
    fee = payment * fee_bps // 10_000
    return payment - fee, fee, deposit - payment


def test_open_records_session(
    market: Any, open_session: Any, client: Any, registered: Any, model_id: bytes
) -> None:
    balance = market.balance
    opened = open_session(deposit=10**15)
    s = market.getSession(opened.id)
    assert s.client == client.address and s.host == registered.address
    assert s.signer == opened.signer.address and bytes(s.modelId) == model_id
    assert s.deposit == 10**15 and s.price == ETH_PRICE and s.feeBps == FEE_BPS
    assert s.status == 1
    assert market.balance - balance == 10**15


def test_python_digest_matches_contract(market: Any, domain: Any) -> None:
    assert bytes(market.voucherDigest(7, 123, TRANSCRIPT)) == voucher_digest(
        domain, 7, 123, TRANSCRIPT
    )


def test_checkpoint_then_settle_pays_exactly(
    market: Any, earnings: Any, open_session: Any, registered: Any, client: Any, treasury: Any
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit)
    receipt = market.checkpoint(*opened.voucher(100, TRANSCRIPT).as_args(), sender=registered)
    [event] = receipt.events.filter(market.Checkpointed)
    assert event.cumulativeTokens == 100
    assert market.getSession(opened.id).checkpointTokens == 100

    client_before = client.balance
    receipt = market.settle(*opened.voucher(250, TRANSCRIPT).as_args(), sender=registered)
    host_amount, fee, refund = split(250, ETH_PRICE, deposit)
    [event] = receipt.events.filter(market.SessionSettled)
    assert (event.hostAmount, event.fee, event.refund) == (host_amount, fee, refund)
    assert host_amount + fee + refund == deposit
    assert client.balance - client_before == refund
    assert earnings.balanceOf(registered, ETH) == host_amount
    assert earnings.balanceOf(treasury, ETH) == fee
    assert market.balance == 0
    assert market.getSession(opened.id).status == 3

    host_before = registered.balance
    receipt = earnings.withdraw(ETH, sender=registered)
    assert receipt.events.filter(earnings.Withdrawn)
    assert registered.balance - host_before == host_amount - receipt.total_fees_paid
    assert earnings.balance == fee


def test_erc20_session(
    market: Any, earnings: Any, open_session: Any, registered: Any, client: Any, usd: Any
) -> None:
    deposit = 5 * 10**6
    opened = open_session(deposit=deposit, price=USD_PRICE, token=usd)
    assert usd.balanceOf(market) == deposit
    market.settle(*opened.voucher(1234).as_args(), sender=registered)
    host_amount, fee, refund = split(1234, USD_PRICE, deposit)
    assert usd.balanceOf(client) == refund
    assert earnings.balanceOf(registered, usd) == host_amount
    assert usd.balanceOf(earnings) == host_amount + fee
    assert usd.balanceOf(market) == 0
    earnings.withdraw(usd, sender=registered)
    assert usd.balanceOf(registered) == host_amount


def test_request_close_then_finalize_on_checkpoint(
    market: Any,
    earnings: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    chain: Any,
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit)
    market.checkpoint(*opened.voucher(400).as_args(), sender=registered)
    receipt = market.requestClose(opened.id, sender=client)
    [event] = receipt.events.filter(market.CloseRequested)
    with ape.reverts(market.DisputeWindowOpen):
        market.finalize(opened.id, sender=stranger)
    with ape.reverts(market.CloseAlreadyRequested):
        market.requestClose(opened.id, sender=client)
    chain.pending_timestamp = event.finalizableAt
    client_before = client.balance
    market.finalize(opened.id, sender=stranger)
    host_amount, _fee, refund = split(400, ETH_PRICE, deposit)
    assert client.balance - client_before == refund
    assert earnings.balanceOf(registered, ETH) == host_amount


def test_host_can_settle_during_dispute_window(
    market: Any, open_session: Any, registered: Any, client: Any
) -> None:
    opened = open_session()
    market.requestClose(opened.id, sender=client)
    market.settle(*opened.voucher(10).as_args(), sender=registered)
    assert market.getSession(opened.id).status == 3


def test_expiry_allows_finalize(
    market: Any, open_session: Any, stranger: Any, chain: Any, client: Any
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit, duration=600)
    assert (
        market.finalizableAt(opened.id) == market.getSession(opened.id).expiresAt + DISPUTE_WINDOW
    )
    chain.pending_timestamp = market.finalizableAt(opened.id)
    before = client.balance
    market.finalize(opened.id, sender=stranger)
    assert client.balance - before == deposit  # nothing vouched, everything refunded


def test_pause_blocks_only_open(
    market: Any, open_session: Any, owner: Any, registered: Any, model_id: bytes, client: Any
) -> None:
    opened = open_session()
    market.pause(sender=owner)
    with ape.reverts(market.EnforcedPause):
        open_session()
    market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    market.settle(*opened.voucher(6).as_args(), sender=registered)
    market.unpause(sender=owner)
    open_session()


def test_open_errors(
    market: Any,
    registered: Any,
    model_id: bytes,
    client: Any,
    usd: Any,
    models: Any,
    owner: Any,
    nodes: Any,
    host2: Any,
) -> None:
    signer = Account.create().address

    def attempt(**kw: Any) -> None:
        args = {
            "host": registered,
            "model": model_id,
            "token": ETH,
            "deposit": 10**15,
            "price": ETH_PRICE,
            "duration": 3600,
            "signer": signer,
            "value": 10**15,
        }
        args.update(kw)
        market.open(
            args["host"],
            args["model"],
            args["token"],
            args["deposit"],
            args["price"],
            args["duration"],
            args["signer"],
            value=args["value"],
            sender=client,
        )

    with ape.reverts(market.TokenNotAllowed):
        attempt(token=registered.address, value=0)
    with ape.reverts(market.DepositOutOfRange):
        attempt(deposit=1, value=1)
    with ape.reverts(market.WrongValue):
        attempt(value=10**15 - 1)
    with ape.reverts(market.InvalidDuration):
        attempt(duration=1)
    with ape.reverts(market.ZeroAddress):
        attempt(signer=ETH)
    with ape.reverts(market.PriceBelowHostPrice):
        attempt(price=ETH_PRICE - 1)
    with ape.reverts(market.HostNotActive):
        attempt(host=host2)
    other = add_model(models, owner, "org/other", "o.gguf", b"\x01" * 32)
    with ape.reverts(market.HostDoesNotServeModel):
        attempt(model=other)
    nodes.setPrices([(model_id, ETH, 0)], sender=registered)
    with ape.reverts(market.PriceNotOffered):
        attempt()
    models.deactivateModel(model_id, sender=owner)
    with ape.reverts(market.ModelNotActive):
        attempt()


def test_session_errors(
    market: Any, open_session: Any, registered: Any, client: Any, stranger: Any, domain: Any
) -> None:
    opened = open_session()
    with ape.reverts(market.NotSessionHost):
        market.checkpoint(*opened.voucher(5).as_args(), sender=stranger)
    with ape.reverts(market.NotSessionHost):
        market.settle(*opened.voucher(5).as_args(), sender=stranger)
    with ape.reverts(market.NotSessionClient):
        market.requestClose(opened.id, sender=stranger)
    market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer):
        market.settle(*opened.voucher(4).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen):
        market.checkpoint(*sign_voucher(opened.signer, domain, 999, 5).as_args(), sender=registered)
    with ape.reverts(market.NothingToClaim):
        market.claimPayout(ETH, sender=client)


def test_owner_settings(market: Any, owner: Any, stranger: Any, usd: Any) -> None:
    assert market.setFeeBps(500, sender=owner).events.filter(market.FeeSet)
    assert market.feeBps() == 500
    with ape.reverts(market.FeeTooHigh):
        market.setFeeBps(2501, sender=owner)
    assert market.setTreasury(stranger, sender=owner).events.filter(market.TreasurySet)
    with ape.reverts(market.ZeroAddress):
        market.setTreasury(ETH, sender=owner)
    assert market.setDisputeWindow(60, sender=owner).events.filter(market.DisputeWindowSet)
    assert market.setDurationLimits(10, 20, sender=owner).events.filter(market.DurationLimitsSet)
    with ape.reverts(market.InvalidDuration):
        market.setDurationLimits(30, 20, sender=owner)
    assert market.setTokenConfig(usd, False, 0, 0, sender=owner).events.filter(
        market.TokenConfigured
    )
    assert not market.getTokenConfig(usd).allowed
    with ape.reverts(market.InvalidDepositRange):
        market.setTokenConfig(usd, True, 2, 1, sender=owner)
    with ape.reverts(market.OwnableUnauthorizedAccount):
        market.pause(sender=stranger)


def test_fee_change_does_not_touch_open_sessions(
    market: Any, open_session: Any, owner: Any, registered: Any, earnings: Any, treasury: Any
) -> None:
    opened = open_session(deposit=10**15)
    market.setFeeBps(0, sender=owner)
    market.settle(*opened.voucher(1000).as_args(), sender=registered)
    _, fee, _ = split(1000, ETH_PRICE, 10**15)
    assert earnings.balanceOf(treasury, ETH) == fee > 0


def test_earnings_errors(earnings: Any, owner: Any, stranger: Any) -> None:
    with ape.reverts(earnings.NotCreditor):
        earnings.credit(stranger, ETH, 1, value=1, sender=stranger)
    with ape.reverts(earnings.NothingToWithdraw):
        earnings.withdraw(ETH, sender=stranger)
    with ape.reverts(earnings.ZeroAddress):
        earnings.setCreditor(ETH, True, sender=owner)
    with ape.reverts(earnings.OwnableUnauthorizedAccount):
        earnings.setCreditor(stranger, True, sender=stranger)
    assert earnings.setCreditor(stranger, True, sender=owner).events.filter(earnings.CreditorSet)
    with ape.reverts(earnings.WrongValue):
        earnings.credit(stranger, ETH, 2, value=1, sender=stranger)
    earnings.setCreditor(stranger, False, sender=owner)
    with ape.reverts(earnings.NotCreditor):
        earnings.credit(stranger, ETH, 1, value=1, sender=stranger)


def test_dispute_window_is_fixed_when_the_session_opens(
    market: Any, open_session: Any, owner: Any, client: Any, stranger: Any, chain: Any
) -> None:
    opened = open_session(duration=600)
    market.setDisputeWindow(60, sender=owner)
    s = market.getSession(opened.id)
    assert s.disputeWindow == DISPUTE_WINDOW
    assert market.finalizableAt(opened.id) == s.expiresAt + DISPUTE_WINDOW
    receipt = market.requestClose(opened.id, sender=client)
    [event] = receipt.events.filter(market.CloseRequested)
    requested_at = market.getSession(opened.id).closeRequestedAt
    assert event.finalizableAt == requested_at + DISPUTE_WINDOW
    chain.pending_timestamp = requested_at + 60
    with ape.reverts(market.DisputeWindowOpen):
        market.finalize(opened.id, sender=stranger)
    chain.pending_timestamp = requested_at + DISPUTE_WINDOW
    market.finalize(opened.id, sender=stranger)
    # Sessions opened after the change get the new window.
    later = open_session(duration=600)
    assert market.getSession(later.id).disputeWindow == 60
    assert market.finalizableAt(later.id) == market.getSession(later.id).expiresAt + 60
    with ape.reverts(market.DisputeWindowTooLong):
        market.setDisputeWindow(2**32, sender=owner)
