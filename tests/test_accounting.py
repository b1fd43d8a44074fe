"""Money to the wei: deposit == host earnings + treasury fee + refund, and the marketplace
holds exactly what it owes (its live deposits plus its ledger, `owed`), over random amounts
and random sequences of actions."""

from dataclasses import dataclass
from typing import Any

import ape
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contract_helpers import ETH, ETH_PRICE, USD_PRICE, Opened


def max_tokens(deposit: int, price: int) -> int:
    return ((deposit + 1) * 1000 - 1) // price


@given(
    deposit=st.integers(10**9, 100 * 10**18),
    price_extra=st.integers(0, 10**18),
    fraction=st.fractions(0, 1),
    fee_bps=st.integers(0, 2500),
    finalize=st.booleans(),
)
def test_settlement_splits_every_wei(
    chain: Any,
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    owner: Any,
    deposit: int,
    price_extra: int,
    fraction: Any,
    fee_bps: int,
    finalize: bool,
) -> None:
    # Not `chain.isolate()`: it swallows every exception raised inside it, failed asserts too.
    snapshot = chain.snapshot()
    try:
        market.setFeeBps(fee_bps, sender=owner)
        price = ETH_PRICE + price_extra
        opened = open_session(deposit=deposit, price=price)
        assert market.maxTokens(deposit, price) == max_tokens(deposit, price)
        tokens = int(max_tokens(deposit, price) * fraction)
        before = client.balance
        if finalize:  # the host vanished after checkpointing: the client closes, anyone finalizes
            if tokens:
                market.checkpoint(*opened.voucher(tokens).as_args(), sender=registered)
            market.requestClose(opened.id, sender=client)
            before = client.balance
            chain.pending_timestamp = market.finalizableAt(opened.id)
            receipt = market.finalize(opened.id, opened.terms, sender=treasury)
        else:
            receipt = market.settle(*opened.voucher(tokens).as_args(), sender=registered)
        [event] = receipt.events.filter(market.SessionSettled)
        payment = tokens * price // 1000
        assert event.tokens == tokens and market.getSession(opened.id).tokens == tokens
        assert event.payment == payment <= deposit
        assert event.fee == payment * fee_bps // 10_000
        assert event.hostAmount + event.fee == payment
        assert event.hostAmount + event.fee + event.refund == deposit
        assert client.balance - before == event.refund
        assert market.owed(registered, ETH) == event.hostAmount
        assert market.owed(treasury, ETH) == event.fee
        assert market.owed(client, ETH) == 0
        assert market.balance == event.hostAmount + event.fee  # the ledger, nothing live
        # Each withdraws exactly its share, and the marketplace ends empty.
        for account, share in ((registered, event.hostAmount), (treasury, event.fee)):
            if share == 0:
                with ape.reverts(market.NothingToWithdraw):
                    market.withdraw(ETH, sender=account)
                continue
            before = account.balance
            receipt = market.withdraw(ETH, sender=account)
            assert receipt.events.filter(market.Withdrawn) == [
                market.Withdrawn(account, ETH, share)
            ]
            assert account.balance - before == share - receipt.total_fees_paid
        assert market.balance == 0
    finally:
        chain.restore(snapshot)


@dataclass
class Tracked:
    opened: Opened
    token: str
    deposit: int
    price: int
    fee_bps: int
    vouched: int = 0
    checkpointed: int = 0
    live: bool = True
    close_requested: bool = False


def test_random_session_sequences_conserve_money(
    chain: Any,
    market: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    owner: Any,
    model_id: bytes,
    usd: Any,
) -> None:
    tokens_of = {ETH: None, usd.address: usd}
    # Everyone the ledger may owe, each once (the treasury moves among them).
    accounts = (registered, client, treasury, stranger)

    def balance_of(holder: Any, token: str) -> int:
        return int(holder.balance) if token == ETH else int(usd.balanceOf(holder))

    def owed(token: str) -> int:
        """The whole ledger in ``token``: earnings, deferred refunds and the treasury's fees."""
        return sum(int(market.owed(a, token)) for a in accounts)

    class Sessions(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.snapshot = chain.snapshot()
            self.sessions: list[Tracked] = []
            self.deposited = {ETH: 0, usd.address: 0}
            self.paid_out = {ETH: 0, usd.address: 0}  # host + fee + refund of settled sessions
            self.earned = {ETH: 0, usd.address: 0}  # host + fee
            self.refunded = {ETH: 0, usd.address: 0}
            self.withdrawn = {ETH: 0, usd.address: 0}
            self.fee_bps = int(market.feeBps())
            self.paused = False

        def teardown(self) -> None:
            if hasattr(self, "snapshot"):
                chain.restore(self.snapshot)

        def live(self) -> list[Tracked]:
            return [s for s in self.sessions if s.live]

        @rule(deposit=st.integers(10**4, 10**12), extra=st.integers(0, 10**6), in_usd=st.booleans())
        def open(self, deposit: int, extra: int, in_usd: bool) -> None:
            token = usd.address if in_usd else ETH
            price = (USD_PRICE if in_usd else ETH_PRICE) + extra
            if not in_usd:
                deposit *= 10**6  # keep ETH deposits inside the allowed range
            if self.paused:  # nothing opens, nothing moves
                signer = Account.create().address
                with ape.reverts(market.EnforcedPause):
                    market.open(
                        registered,
                        model_id,
                        ETH,
                        deposit,
                        price,
                        3600,
                        signer,
                        value=deposit,
                        sender=client,
                    )
                return
            opened = open_session(deposit=deposit, price=price, token=tokens_of[token])
            assert market.getSession(opened.id).feeBps == self.fee_bps
            self.sessions.append(Tracked(opened, token, deposit, price, self.fee_bps))
            self.deposited[token] += deposit

        @precondition(lambda self: self.live())
        @rule(data=st.data())
        def vouch(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live()))
            s.vouched = data.draw(st.integers(s.vouched, max_tokens(s.deposit, s.price)))

        @precondition(lambda self: any(s.vouched > s.checkpointed for s in self.live()))
        @rule(data=st.data())
        def checkpoint(self, data: Any) -> None:
            s = data.draw(st.sampled_from([s for s in self.live() if s.vouched > s.checkpointed]))
            market.checkpoint(*s.opened.voucher(s.vouched).as_args(), sender=registered)
            s.checkpointed = s.vouched
            assert market.getSession(s.opened.id).tokens == s.checkpointed

        def _record(self, s: Tracked, receipt: Any, tokens: int) -> None:
            [event] = receipt.events.filter(market.SessionSettled)
            payment = tokens * s.price // 1000
            assert event.payment == payment
            assert event.fee == payment * s.fee_bps // 10_000  # the fee when it opened
            assert event.hostAmount + event.fee + event.refund == s.deposit
            self.paid_out[s.token] += s.deposit
            self.earned[s.token] += event.hostAmount + event.fee
            self.refunded[s.token] += event.refund
            s.live = False

        @precondition(lambda self: self.live())
        @rule(data=st.data())
        def settle(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live()))
            before = balance_of(client, s.token)
            receipt = market.settle(*s.opened.voucher(s.vouched).as_args(), sender=registered)
            [event] = receipt.events.filter(market.SessionSettled)
            assert balance_of(client, s.token) - before == event.refund
            self._record(s, receipt, s.vouched)

        @precondition(lambda self: any(not s.close_requested for s in self.live()))
        @rule(data=st.data())
        def request_close(self, data: Any) -> None:
            s = data.draw(st.sampled_from([s for s in self.live() if not s.close_requested]))
            market.requestClose(s.opened.id, sender=client)
            s.close_requested = True

        @precondition(lambda self: any(s.close_requested for s in self.live()))
        @rule(data=st.data())
        def finalize(self, data: Any) -> None:
            s = data.draw(st.sampled_from([s for s in self.live() if s.close_requested]))
            at = market.finalizableAt(s.opened.id)
            if chain.pending_timestamp < at:
                chain.pending_timestamp = at
            before = balance_of(client, s.token)
            receipt = market.finalize(s.opened.id, s.opened.terms, sender=stranger)
            [event] = receipt.events.filter(market.SessionSettled)
            assert event.tokens == s.checkpointed
            assert balance_of(client, s.token) - before == event.refund
            self._record(s, receipt, s.checkpointed)

        @rule(who=st.sampled_from(accounts), in_usd=st.booleans())
        def withdraw(self, who: Any, in_usd: bool) -> None:
            token = usd.address if in_usd else ETH
            amount = int(market.owed(who, token))
            if not amount:
                with ape.reverts(market.NothingToWithdraw):
                    market.withdraw(token, sender=who)
                return
            before = balance_of(who, token)
            receipt = market.withdraw(token, sender=who)
            assert receipt.events.filter(market.Withdrawn) == [market.Withdrawn(who, token, amount)]
            gas = receipt.total_fees_paid if token == ETH else 0
            assert balance_of(who, token) - before == amount - gas
            assert market.owed(who, token) == 0
            self.withdrawn[token] += amount

        @rule(to=st.sampled_from((treasury, stranger, registered)))
        def set_treasury(self, to: Any) -> None:
            """Unwithdrawn fees move with the treasury: the ledger's total does not change."""
            ledger = {t: owed(t) for t in self.deposited}
            market.setTreasury(to, sender=owner)
            assert {t: owed(t) for t in self.deposited} == ledger

        @rule(fee_bps=st.integers(0, 2500))
        def set_fee(self, fee_bps: int) -> None:
            market.setFeeBps(fee_bps, sender=owner)
            self.fee_bps = fee_bps

        @rule()
        def toggle_pause(self) -> None:
            if self.paused:
                market.unpause(sender=owner)
            else:
                market.pause(sender=owner)
            self.paused = not self.paused
            assert market.paused() == self.paused

        @invariant()
        def contracts_hold_exactly_what_they_owe(self) -> None:
            if not hasattr(self, "snapshot"):
                return
            for token in (ETH, usd.address):
                ledger = {a.address: int(market.owed(a, token)) for a in accounts}
                assert ledger[client.address] == 0  # its refunds were all pushed
                live = sum(s.deposit for s in self.live() if s.token == token)
                assert balance_of(market, token) == live + sum(ledger.values())
                # EOAs take every refund, so the ledger is host + fee, less what was withdrawn.
                assert sum(ledger.values()) + self.withdrawn[token] == self.earned[token]
                assert self.deposited[token] == live + self.paid_out[token]
            # The client was minted exactly its USD deposits: what it holds is its refunds.
            assert usd.balanceOf(client) == self.refunded[usd.address]

    examples = max(20, settings.default.max_examples // 4)  # 50 by default, more when thorough
    run_state_machine_as_test(
        Sessions, settings=settings(max_examples=examples, stateful_step_count=12, deadline=None)
    )
