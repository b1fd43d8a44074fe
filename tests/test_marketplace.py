"""JobMarketplace: every function's happy path and every custom error.

A session stores only the hash of its terms (token, signer, deposit, price); settle,
checkpoint and finalize take the terms as calldata. Host earnings and treasury fees are
credited in the marketplace's own ledger (``owed``) and withdrawn with ``withdraw``."""

from dataclasses import replace
from typing import Any

import ape
from eth_abi import encode
from eth_account import Account
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import sign_voucher, voucher_digest

from contract_helpers import (
    DISPUTE_WINDOW,
    ETH,
    ETH_PRICE,
    FEE_BPS,
    PEER_ID,
    USD_PRICE,
    add_model,
    register_host,
)

TRANSCRIPT = b"\xab" * 32
OPEN, CLOSE_REQUESTED, SETTLED = 1, 2, 3
U64_MAX = 2**64 - 1


def split(tokens: int, price: int, deposit: int, fee_bps: int = FEE_BPS) -> tuple[int, int, int]:
    payment = tokens * price // 1000
    fee = payment * fee_bps // 10_000
    return payment - fee, fee, deposit - payment


def terms_hash(terms: tuple[str, str, int, int]) -> bytes:
    """What the marketplace stores of a session's terms: keccak256(abi.encode(terms))."""
    return keccak(encode(["address", "address", "uint256", "uint256"], list(terms)))


def held(market: Any, token: Any = None) -> int:
    """The marketplace's balance of ``token`` (ETH when None)."""
    return int(market.balance) if token is None else int(token.balanceOf(market))


def assert_holds_what_it_owes(
    market: Any, accounts: list[Any], live_deposits: int, token: Any = None
) -> None:
    """The escrow's balance is exactly its live deposits plus its ledger (``accounts``, each
    once, must include everyone owed: the treasury's fees are in the current treasury's
    ``owed``)."""
    address = ETH if token is None else token.address
    owed = sum(int(market.owed(a, address)) for a in {a.address: a for a in accounts}.values())
    assert held(market, token) == live_deposits + owed


def test_open_records_session(
    market: Any, open_session: Any, client: Any, registered: Any, model_id: bytes, chain: Any
) -> None:
    balance = market.balance
    first_id = market.nextSessionId()
    opened = open_session(deposit=10**15, duration=3600)
    assert opened.id == first_id and market.nextSessionId() == first_id + 1
    s = market.getSession(opened.id)
    assert s.client == client.address and s.host == registered.address
    assert s.feeBps == FEE_BPS and s.status == OPEN and s.tokens == 0
    assert s.disputeWindow == DISPUTE_WINDOW
    assert s.expiresAt == chain.blocks[s.openedBlock].timestamp + 3600
    assert bytes(market.checkpointTranscript(opened.id)) == b"\x00" * 32
    # The terms are stored as their hash; the full terms are in the event of `openedBlock`.
    assert bytes(s.termsHash) == terms_hash(opened.terms) == bytes(market.termsHash(opened.terms))
    [event] = [
        log
        for log in market.SessionOpened.range(s.openedBlock, s.openedBlock + 1)
        if log.sessionId == opened.id
    ]
    assert (event.client, event.host, bytes(event.modelId)) == (
        client.address,
        registered.address,
        model_id,
    )
    assert (event.token, event.signer, event.deposit, event.price) == opened.terms
    assert event.expiresAt == s.expiresAt
    assert market.balance - balance == 10**15


def test_python_digest_matches_contract(market: Any, domain: Any) -> None:
    assert bytes(market.voucherDigest(7, 123, TRANSCRIPT)) == voucher_digest(
        domain, 7, 123, TRANSCRIPT
    )


def test_max_tokens_is_what_the_deposit_pays_for(market: Any) -> None:
    for deposit, price in ((10**15, ETH_PRICE), (10**15, ETH_PRICE + 7), (5, 3), (0, 1)):
        t = market.maxTokens(deposit, price)
        assert t * price // 1000 <= deposit < (t + 1) * price // 1000
    assert market.maxTokens(U64_MAX, 1000) == U64_MAX


def test_checkpoint_then_settle_pays_exactly(
    market: Any, open_session: Any, registered: Any, client: Any, treasury: Any
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit)
    receipt = market.checkpoint(*opened.voucher(100, TRANSCRIPT).as_args(), sender=registered)
    [event] = receipt.events.filter(market.Checkpointed)
    assert event.cumulativeTokens == 100 and bytes(event.transcriptHash) == TRANSCRIPT
    assert market.getSession(opened.id).tokens == 100
    assert bytes(market.checkpointTranscript(opened.id)) == TRANSCRIPT

    client_before = client.balance
    receipt = market.settle(*opened.voucher(250, TRANSCRIPT).as_args(), sender=registered)
    host_amount, fee, refund = split(250, ETH_PRICE, deposit)
    [event] = receipt.events.filter(market.SessionSettled)
    assert (event.tokens, event.payment) == (250, 250 * ETH_PRICE // 1000)
    assert (event.hostAmount, event.fee, event.refund) == (host_amount, fee, refund)
    assert bytes(event.transcriptHash) == TRANSCRIPT
    assert host_amount + fee + refund == deposit
    assert client.balance - client_before == refund
    assert market.owed(registered, ETH) == host_amount
    assert market.owed(treasury, ETH) == fee
    assert market.owed(client, ETH) == 0
    assert market.balance == host_amount + fee  # credited in the ledger, not sent
    s = market.getSession(opened.id)
    assert s.status == SETTLED and s.tokens == 250

    host_before = registered.balance
    receipt = market.withdraw(ETH, sender=registered)
    assert receipt.events.filter(market.Withdrawn) == [
        market.Withdrawn(registered, ETH, host_amount)
    ]
    assert registered.balance - host_before == host_amount - receipt.total_fees_paid
    assert market.owed(registered, ETH) == 0
    assert market.balance == fee
    treasury_before = treasury.balance
    receipt = market.withdraw(ETH, sender=treasury)
    assert treasury.balance - treasury_before == fee - receipt.total_fees_paid
    assert market.owed(treasury, ETH) == 0
    assert market.balance == 0


def test_erc20_session(
    market: Any, open_session: Any, registered: Any, client: Any, treasury: Any, usd: Any
) -> None:
    deposit = 5 * 10**6
    opened = open_session(deposit=deposit, price=USD_PRICE, token=usd)
    assert usd.balanceOf(market) == deposit
    receipt = market.settle(*opened.voucher(1234).as_args(), sender=registered)
    host_amount, fee, refund = split(1234, USD_PRICE, deposit)
    # Settling moves one amount of tokens: the refund. Host and fee stay in the ledger.
    assert receipt.events.filter(usd.Transfer) == [usd.Transfer(market, client, refund)]
    assert usd.balanceOf(client) == refund
    assert market.owed(registered, usd) == host_amount
    assert market.owed(treasury, usd) == fee
    assert usd.balanceOf(market) == host_amount + fee
    assert_holds_what_it_owes(market, [registered, treasury, client], 0, usd)
    market.withdraw(usd, sender=registered)
    assert usd.balanceOf(registered) == host_amount
    market.withdraw(usd, sender=treasury)
    assert usd.balanceOf(treasury) == fee
    assert usd.balanceOf(market) == 0


def test_request_close_then_finalize_on_checkpoint(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    treasury: Any,
    chain: Any,
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit)
    market.checkpoint(*opened.voucher(400, TRANSCRIPT).as_args(), sender=registered)
    receipt = market.requestClose(opened.id, sender=client)
    [event] = receipt.events.filter(market.CloseRequested)
    assert market.getSession(opened.id).status == CLOSE_REQUESTED
    with ape.reverts(market.DisputeWindowOpen, finalizableAt=event.finalizableAt):
        market.finalize(opened.id, opened.terms, sender=stranger)
    with ape.reverts(market.CloseAlreadyRequested):
        market.requestClose(opened.id, sender=client)
    chain.pending_timestamp = event.finalizableAt
    client_before = client.balance
    receipt = market.finalize(opened.id, opened.terms, sender=stranger)
    [settled] = receipt.events.filter(market.SessionSettled)
    assert settled.tokens == 400 and bytes(settled.transcriptHash) == TRANSCRIPT
    host_amount, fee, refund = split(400, ETH_PRICE, deposit)
    assert client.balance - client_before == refund
    assert market.owed(registered, ETH) == host_amount
    assert market.owed(treasury, ETH) == fee
    assert market.owed(stranger, ETH) == 0  # whoever finalizes gets nothing
    assert market.getSession(opened.id).tokens == 400
    assert_holds_what_it_owes(market, [registered, treasury, client, stranger], 0)


def test_request_close_brings_the_expiry_forward(
    market: Any, open_session: Any, client: Any, registered: Any, stranger: Any, chain: Any
) -> None:
    opened = open_session(duration=3600)
    expires = market.getSession(opened.id).expiresAt
    receipt = market.requestClose(opened.id, sender=client)
    [event] = receipt.events.filter(market.CloseRequested)
    now = chain.blocks[receipt.block_number].timestamp
    s = market.getSession(opened.id)
    assert s.expiresAt == now < expires
    assert event.finalizableAt == market.finalizableAt(opened.id) == now + DISPUTE_WINDOW
    chain.pending_timestamp = now + DISPUTE_WINDOW - 1
    with ape.reverts(market.DisputeWindowOpen, finalizableAt=now + DISPUTE_WINDOW):
        market.finalize(opened.id, opened.terms, sender=stranger)
    chain.pending_timestamp = now + DISPUTE_WINDOW
    market.finalize(opened.id, opened.terms, sender=stranger)

    # A request after the expiry never moves it later.
    late = open_session(duration=600)
    expires = market.getSession(late.id).expiresAt
    chain.pending_timestamp = expires + 10  # expired, still inside the dispute window
    receipt = market.requestClose(late.id, sender=client)
    [event] = receipt.events.filter(market.CloseRequested)
    assert market.getSession(late.id).expiresAt == expires
    assert event.finalizableAt == market.finalizableAt(late.id) == expires + DISPUTE_WINDOW
    market.settle(*late.voucher(10).as_args(), sender=registered)  # the host may still settle
    assert market.getSession(late.id).status == SETTLED


def test_host_can_settle_during_dispute_window(
    market: Any, open_session: Any, registered: Any, client: Any
) -> None:
    opened = open_session()
    market.requestClose(opened.id, sender=client)
    market.settle(*opened.voucher(10).as_args(), sender=registered)
    assert market.getSession(opened.id).status == SETTLED


def test_expiry_allows_finalize(
    market: Any, open_session: Any, stranger: Any, chain: Any, client: Any
) -> None:
    deposit = 10**15
    opened = open_session(deposit=deposit, duration=600)
    assert (
        market.finalizableAt(opened.id) == market.getSession(opened.id).expiresAt + DISPUTE_WINDOW
    )
    chain.pending_timestamp = market.finalizableAt(opened.id) - 1
    with ape.reverts(market.DisputeWindowOpen):
        market.finalize(opened.id, opened.terms, sender=stranger)
    chain.pending_timestamp = market.finalizableAt(opened.id)
    before = client.balance
    market.finalize(opened.id, opened.terms, sender=stranger)
    assert client.balance - before == deposit  # nothing vouched, everything refunded
    assert market.getSession(opened.id).tokens == 0
    assert market.balance == 0


def test_wrong_terms_are_refused(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    chain: Any,
    usd: Any,
) -> None:
    opened = open_session(duration=600)
    # Each term altered, the voucher signed for the altered terms (even by their own signer).
    altered = {
        "token": replace(opened, token=usd.address),
        "signer": replace(opened, signer=Account.create()),
        "deposit up": replace(opened, deposit=opened.deposit + 1),
        "deposit down": replace(opened, deposit=opened.deposit - 1),
        "price up": replace(opened, price=opened.price * 2),
        "price down": replace(opened, price=opened.price - 1),
    }
    market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    chain.pending_timestamp = market.finalizableAt(opened.id)  # finalizable, but for the terms
    for what, bad in altered.items():
        assert bytes(market.termsHash(bad.terms)) != terms_hash(opened.terms), what
        with ape.reverts(market.WrongTerms, sessionId=opened.id):
            market.checkpoint(*bad.voucher(10).as_args(), sender=registered)
        with ape.reverts(market.WrongTerms, sessionId=opened.id):
            market.settle(*bad.voucher(10).as_args(), sender=registered)
        with ape.reverts(market.WrongTerms, sessionId=opened.id):
            market.finalize(opened.id, bad.terms, sender=stranger)
        # The real signer's voucher with altered terms is refused too.
        with ape.reverts(market.WrongTerms, sessionId=opened.id):
            market.settle(*bad.signed(opened.voucher(10).voucher).as_args(), sender=registered)
    s = market.getSession(opened.id)
    assert s.status == OPEN and s.tokens == 5
    market.finalize(opened.id, opened.terms, sender=stranger)  # the true terms still work
    # Not live comes first: a settled session is not open, whatever the terms.
    bad = altered["price up"]
    with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
        market.settle(*bad.voucher(10).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
        market.finalize(opened.id, bad.terms, sender=stranger)


def test_pause_stops_only_new_sessions(
    market: Any,
    open_session: Any,
    owner: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    chain: Any,
) -> None:
    opened, closing, settled = open_session(), open_session(duration=600), open_session()
    market.settle(*settled.voucher(100).as_args(), sender=registered)
    assert not market.paused()
    with ape.reverts(market.ExpectedPause):
        market.unpause(sender=owner)
    with ape.reverts(market.OwnableUnauthorizedAccount):
        market.pause(sender=stranger)
    receipt = market.pause(sender=owner)
    assert receipt.events.filter(market.Paused) == [market.Paused(owner)]
    assert market.paused()
    with ape.reverts(market.EnforcedPause):
        market.pause(sender=owner)
    with ape.reverts(market.EnforcedPause):
        open_session()
    # Everything but opening keeps working: checkpoint, settle, close, finalize, withdraw.
    market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    market.settle(*opened.voucher(6).as_args(), sender=registered)
    market.requestClose(closing.id, sender=client)
    chain.pending_timestamp = market.finalizableAt(closing.id)
    market.finalize(closing.id, closing.terms, sender=stranger)
    for account in (registered, treasury):
        assert market.withdraw(ETH, sender=account).events.filter(market.Withdrawn)
        assert market.owed(account, ETH) == 0
    assert market.balance == 0
    with ape.reverts(market.OwnableUnauthorizedAccount):
        market.unpause(sender=stranger)
    receipt = market.unpause(sender=owner)
    assert receipt.events.filter(market.Unpaused) == [market.Unpaused(owner)]
    assert not market.paused()
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
    with ape.reverts(market.PriceTooLow, price=0, deposit=10**15):
        attempt(price=0)
    with ape.reverts(market.PriceBelowHostPrice, price=ETH_PRICE - 1, hostPrice=ETH_PRICE):
        attempt(price=ETH_PRICE - 1)
    # The host checks are the NodeRegistry's (`admit`): its errors come back from it.
    with ape.reverts(nodes.HostNotActive, host=host2.address):
        attempt(host=host2)
    other = add_model(models, owner, "org/other", "o.gguf", b"\x01" * 32)
    with ape.reverts(nodes.PriceNotOffered, host=registered.address, modelId=other, token=ETH):
        attempt(model=other)  # a model the host doesn't serve has no price
    nodes.setPrices([(model_id, ETH, 0)], sender=registered)
    with ape.reverts(nodes.PriceNotOffered, host=registered.address, modelId=model_id, token=ETH):
        attempt()
    models.deactivateModel(model_id, sender=owner)
    with ape.reverts(market.ModelNotActive, modelId=model_id):
        attempt()
    assert market.balance == 0


def test_a_deposit_must_not_buy_more_than_2_64_tokens(
    market: Any, open_session: Any, nodes: Any, registered: Any, model_id: bytes, client: Any
) -> None:
    """A session's token count is stored in 64 bits: a price so low that the deposit buys more
    is refused; exactly 2^64 - 1 tokens is fine, and settles to the wei."""
    nodes.setPrices([(model_id, ETH, 1000)], sender=registered)  # 1 wei a token
    with ape.reverts(market.PriceTooLow, price=1000, deposit=U64_MAX + 1):
        open_session(deposit=U64_MAX + 1, price=1000)
    with ape.reverts(market.PriceTooLow, price=999, deposit=U64_MAX):
        open_session(deposit=U64_MAX, price=999)  # ...and a price below the host's is moot
    opened = open_session(deposit=U64_MAX, price=1000)
    with ape.reverts(market.VoucherExceedsDeposit):
        market.checkpoint(*opened.voucher(U64_MAX + 1).as_args(), sender=registered)
    market.checkpoint(*opened.voucher(U64_MAX - 1).as_args(), sender=registered)
    assert market.getSession(opened.id).tokens == U64_MAX - 1
    before = client.balance
    receipt = market.settle(*opened.voucher(U64_MAX).as_args(), sender=registered)
    [event] = receipt.events.filter(market.SessionSettled)
    host_amount, fee, refund = split(U64_MAX, 1000, U64_MAX)
    assert (event.tokens, event.payment, event.refund) == (U64_MAX, U64_MAX, 0)
    assert (event.hostAmount, event.fee) == (host_amount, fee)
    assert host_amount + fee + refund == U64_MAX
    assert client.balance == before
    assert market.getSession(opened.id).tokens == U64_MAX


def test_session_errors(
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    stranger: Any,
    domain: Any,
    chain: Any,
) -> None:
    opened = open_session()
    with ape.reverts(market.NotSessionHost):
        market.checkpoint(*opened.voucher(5).as_args(), sender=stranger)
    with ape.reverts(market.NotSessionHost):
        market.settle(*opened.voucher(5).as_args(), sender=stranger)
    with ape.reverts(market.NotSessionClient):
        market.requestClose(opened.id, sender=stranger)
    forged = sign_voucher(Account.create(), domain, opened.id, 5)
    with ape.reverts(market.InvalidVoucherSignature, sessionId=opened.id):
        market.checkpoint(*opened.signed(forged).as_args(), sender=registered)
    limit = market.maxTokens(opened.deposit, opened.price)
    with ape.reverts(market.VoucherExceedsDeposit, cumulativeTokens=limit + 1, maxTokens=limit):
        market.settle(*opened.voucher(limit + 1).as_args(), sender=registered)
    market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer, cumulativeTokens=5, checkpointTokens=5):
        market.checkpoint(*opened.voucher(5).as_args(), sender=registered)
    with ape.reverts(market.VoucherNotNewer, cumulativeTokens=4, checkpointTokens=5):
        market.settle(*opened.voucher(4).as_args(), sender=registered)
    unknown = opened.signed(sign_voucher(opened.signer, domain, 999, 5))
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.checkpoint(*unknown.as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.settle(*unknown.as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.finalize(999, opened.terms, sender=stranger)
    with ape.reverts(market.SessionNotOpen, sessionId=999):
        market.requestClose(999, sender=client)
    market.settle(*opened.voucher(5).as_args(), sender=registered)  # as many as checkpointed
    chain.pending_timestamp = market.finalizableAt(opened.id)
    with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
        market.requestClose(opened.id, sender=client)
    with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
        market.checkpoint(*opened.voucher(6).as_args(), sender=registered)
    with ape.reverts(market.SessionNotOpen, sessionId=opened.id):
        market.finalize(opened.id, opened.terms, sender=stranger)
    with ape.reverts(market.NothingToWithdraw, token=ETH):
        market.withdraw(ETH, sender=client)  # its refund was paid at once


def test_withdraw_pays_everything_owed(
    project: Any,
    market: Any,
    open_session: Any,
    registered: Any,
    host2: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    owner: Any,
    fab: Any,
    nodes: Any,
    model_id: bytes,
    usd: Any,
) -> None:
    """A host that is also a client: its earnings and a refund its token refused wait in the
    same ledger entry, and one withdraw pays both."""
    token = owner.deploy(project.FeeSwitchToken)  # transfers to a blocked account revert
    market.setTokenConfig(token, True, 10**4, 10**12, sender=owner)
    nodes.setPrices([(model_id, token.address, USD_PRICE)], sender=registered)
    register_host(host2, fab, nodes, owner, model_id, usd, peer_id=PEER_ID[:-1] + b"\x02")
    nodes.setPrices([(model_id, token.address, USD_PRICE)], sender=host2)

    served = open_session(deposit=10**6, price=USD_PRICE, token=token)  # registered serves
    bought = open_session(
        deposit=10**6, price=USD_PRICE, token=token, sender=registered, host=host2
    )
    market.settle(*served.voucher(100).as_args(), sender=registered)
    earned, fee, _ = split(100, USD_PRICE, 10**6)
    token.setBlocked(registered, True, sender=owner)
    receipt = market.settle(*bought.voucher(200).as_args(), sender=host2)
    host2_amount, fee2, refund = split(200, USD_PRICE, 10**6)
    assert receipt.events.filter(market.PayoutDeferred) == [
        market.PayoutDeferred(bought.id, registered, token, refund)
    ]
    assert market.owed(registered, token) == earned + refund
    assert market.owed(treasury, token) == fee + fee2
    assert market.owed(host2, token) == host2_amount
    everyone = [registered, host2, client, treasury, stranger]
    assert_holds_what_it_owes(market, everyone, 0, token)

    with ape.reverts():  # the token still refuses it: nothing changes
        market.withdraw(token, sender=registered)
    assert market.owed(registered, token) == earned + refund
    token.setBlocked(registered, False, sender=owner)
    receipt = market.withdraw(token, sender=registered)
    assert receipt.events.filter(market.Withdrawn) == [
        market.Withdrawn(registered, token, earned + refund)
    ]
    assert token.balanceOf(registered) == earned + refund
    assert market.owed(registered, token) == 0
    with ape.reverts(market.NothingToWithdraw, token=token.address):
        market.withdraw(token, sender=registered)
    with ape.reverts(market.NothingToWithdraw, token=token.address):
        market.withdraw(token, sender=stranger)
    assert_holds_what_it_owes(market, everyone, 0, token)
    for account in (host2, treasury):
        market.withdraw(token, sender=account)
    assert token.balanceOf(market) == 0


def test_treasury_fees_follow_the_treasury(
    market: Any,
    open_session: Any,
    owner: Any,
    registered: Any,
    treasury: Any,
    stranger: Any,
    client: Any,
    usd: Any,
) -> None:
    opened = open_session(deposit=5 * 10**6, price=USD_PRICE, token=usd)
    market.settle(*opened.voucher(1000).as_args(), sender=registered)
    host_amount, fee, _ = split(1000, USD_PRICE, 5 * 10**6)
    assert market.owed(treasury, usd) == fee > 0
    assert market.setTreasury(stranger, sender=owner).events == [market.TreasurySet(stranger)]
    assert market.treasury() == stranger.address
    # Unwithdrawn fees belong to whoever is the treasury now.
    assert market.owed(treasury, usd) == 0
    assert market.owed(stranger, usd) == fee
    with ape.reverts(market.NothingToWithdraw):
        market.withdraw(usd, sender=treasury)
    market.withdraw(usd, sender=stranger)
    assert usd.balanceOf(stranger) == fee and usd.balanceOf(treasury) == 0
    assert market.owed(stranger, usd) == 0
    with ape.reverts(market.NothingToWithdraw):
        market.withdraw(usd, sender=stranger)
    # A treasury that is also owed earnings withdraws both at once.
    second = open_session(deposit=5 * 10**6, price=USD_PRICE, token=usd)
    market.settle(*second.voucher(2000).as_args(), sender=registered)
    host_amount2, fee2, _ = split(2000, USD_PRICE, 5 * 10**6)
    market.setTreasury(registered, sender=owner)
    everyone = [registered, treasury, stranger, client]
    assert market.owed(registered, usd) == host_amount + host_amount2 + fee2
    assert_holds_what_it_owes(market, everyone, 0, usd)
    receipt = market.withdraw(usd, sender=registered)
    assert receipt.events.filter(market.Withdrawn) == [
        market.Withdrawn(registered, usd, host_amount + host_amount2 + fee2)
    ]
    assert usd.balanceOf(market) == 0
    assert_holds_what_it_owes(market, everyone, 0, usd)


def test_only_settlement_credits_the_ledger(
    market: Any, open_session: Any, registered: Any, stranger: Any, treasury: Any
) -> None:
    """HostEarnings and its creditors are gone: the ledger is the escrow's own storage. It
    grows only in settlement (and a deferred refund), and only the account owed takes it out."""
    # The marketplace's state-changing functions: none credits anyone at will.
    writes = {
        abi.name
        for abi in market.contract_type.abi
        if abi.type == "function" and abi.stateMutability in ("nonpayable", "payable")
    }
    assert writes == {
        "open",
        "requestClose",
        "checkpoint",
        "settle",
        "finalize",
        "withdraw",
        "setDisputeWindow",
        "setTokenConfig",
        "setFeeBps",
        "setTreasury",
        "setDurationLimits",
        "pause",
        "unpause",
        "transferOwnership",
        "renounceOwnership",
    }
    opened = open_session()
    market.settle(*opened.voucher(100).as_args(), sender=registered)
    host_amount, fee, _ = split(100, ETH_PRICE, opened.deposit)
    with ape.reverts(market.NothingToWithdraw):
        market.withdraw(ETH, sender=stranger)  # nobody takes what another is owed
    assert market.owed(registered, ETH) == host_amount
    assert market.owed(treasury, ETH) == fee
    assert market.owed(stranger, ETH) == 0


def test_owner_settings(market: Any, owner: Any, stranger: Any, usd: Any) -> None:
    assert market.setFeeBps(500, sender=owner).events.filter(market.FeeSet)
    assert market.feeBps() == 500
    with ape.reverts(market.FeeTooHigh):
        market.setFeeBps(2501, sender=owner)
    assert market.setTreasury(stranger, sender=owner).events.filter(market.TreasurySet)
    assert market.treasury() == stranger.address
    with ape.reverts(market.ZeroAddress):
        market.setTreasury(ETH, sender=owner)
    assert market.setDisputeWindow(60, sender=owner).events.filter(market.DisputeWindowSet)
    assert market.disputeWindow() == 60
    assert market.setDurationLimits(10, 20, sender=owner).events.filter(market.DurationLimitsSet)
    assert (market.minDuration(), market.maxDuration()) == (10, 20)
    with ape.reverts(market.InvalidDuration):
        market.setDurationLimits(30, 20, sender=owner)
    with ape.reverts(market.InvalidDuration):
        market.setDurationLimits(0, 20, sender=owner)
    assert market.setTokenConfig(usd, False, 0, 0, sender=owner).events.filter(
        market.TokenConfigured
    )
    assert not market.getTokenConfig(usd).allowed
    with ape.reverts(market.InvalidDepositRange):
        market.setTokenConfig(usd, True, 2, 1, sender=owner)
    cap = market.MAX_DEPOSIT()
    assert cap == 2**112 - 1
    with ape.reverts(market.MaxDepositTooHigh, maxDeposit=cap + 1, cap=cap):
        market.setTokenConfig(usd, True, 0, cap + 1, sender=owner)
    market.setTokenConfig(usd, True, cap, cap, sender=owner)
    config = market.getTokenConfig(usd)
    assert config.allowed and config.minDeposit == config.maxDeposit == cap
    for call in (
        lambda: market.pause(sender=stranger),
        lambda: market.setFeeBps(1, sender=stranger),
        lambda: market.setTreasury(stranger, sender=stranger),
        lambda: market.setDisputeWindow(1, sender=stranger),
        lambda: market.setDurationLimits(1, 2, sender=stranger),
        lambda: market.setTokenConfig(usd, True, 0, 1, sender=stranger),
    ):
        with ape.reverts(market.OwnableUnauthorizedAccount):
            call()


def test_fee_change_does_not_touch_open_sessions(
    market: Any, open_session: Any, owner: Any, registered: Any, treasury: Any
) -> None:
    opened = open_session(deposit=10**15)
    market.setFeeBps(0, sender=owner)
    market.settle(*opened.voucher(1000).as_args(), sender=registered)
    host_amount, fee, _ = split(1000, ETH_PRICE, 10**15)
    assert market.owed(treasury, ETH) == fee > 0
    assert market.owed(registered, ETH) == host_amount
    later = open_session(deposit=10**15)
    assert market.getSession(later.id).feeBps == 0
    market.settle(*later.voucher(1000).as_args(), sender=registered)
    assert market.owed(treasury, ETH) == fee  # no fee on the later session
    assert market.owed(registered, ETH) == host_amount + 1000 * ETH_PRICE // 1000


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
    requested_at = chain.blocks[receipt.block_number].timestamp
    assert market.getSession(opened.id).expiresAt == requested_at
    assert event.finalizableAt == requested_at + DISPUTE_WINDOW
    chain.pending_timestamp = requested_at + 60
    with ape.reverts(market.DisputeWindowOpen):
        market.finalize(opened.id, opened.terms, sender=stranger)
    chain.pending_timestamp = requested_at + DISPUTE_WINDOW
    market.finalize(opened.id, opened.terms, sender=stranger)
    # Sessions opened after the change get the new window.
    later = open_session(duration=600)
    assert market.getSession(later.id).disputeWindow == 60
    assert market.finalizableAt(later.id) == market.getSession(later.id).expiresAt + 60
    longest = market.MAX_DISPUTE_WINDOW()
    assert longest == 30 * 24 * 3600
    with ape.reverts(market.DisputeWindowTooLong, window=longest + 1):
        market.setDisputeWindow(longest + 1, sender=owner)
    with ape.reverts(market.DisputeWindowTooLong):
        market.setDisputeWindow(2**32, sender=owner)
    market.setDisputeWindow(longest, sender=owner)  # fits the session's 24 bits
    longest_session = open_session(duration=600)
    s = market.getSession(longest_session.id)
    assert s.disputeWindow == longest
    assert market.finalizableAt(longest_session.id) == s.expiresAt + longest


def test_constructor_checks(
    project: Any, owner: Any, models: Any, nodes: Any, treasury: Any
) -> None:
    deploy = project.JobMarketplace
    with ape.reverts(deploy.ZeroAddress):
        owner.deploy(deploy, owner, models, nodes, ETH, FEE_BPS, DISPUTE_WINDOW)
    with ape.reverts(deploy.FeeTooHigh):
        owner.deploy(deploy, owner, models, nodes, treasury, 2501, DISPUTE_WINDOW)
    with ape.reverts(deploy.DisputeWindowTooLong):
        owner.deploy(deploy, owner, models, nodes, treasury, FEE_BPS, 30 * 24 * 3600 + 1)
