"""Money to the wei: deposit == host earnings + treasury fee + refund, and every contract
holds exactly what it owes, over random amounts and random sequences of actions."""

from dataclasses import dataclass
from typing import Any

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
    earnings: Any,
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
    with chain.isolate():
        market.setFeeBps(fee_bps, sender=owner)
        price = ETH_PRICE + price_extra
        opened = open_session(deposit=deposit, price=price)
        tokens = int(max_tokens(deposit, price) * fraction)
        before = client.balance
        if finalize:  # the host vanished after checkpointing: the client closes, anyone finalizes
            market.checkpoint(
                *opened.voucher(tokens).as_args(), sender=registered
            ) if tokens else None
            market.requestClose(opened.id, sender=client)
            before = client.balance
            chain.pending_timestamp = market.finalizableAt(opened.id)
            receipt = market.finalize(opened.id, sender=treasury)
        else:
            receipt = market.settle(*opened.voucher(tokens).as_args(), sender=registered)
        [event] = receipt.events.filter(market.SessionSettled)
        payment = tokens * price // 1000
        assert event.payment == payment <= deposit
        assert event.fee == payment * fee_bps // 10_000
        assert event.hostAmount + event.fee + event.refund == deposit
        assert client.balance - before == event.refund
        assert earnings.balanceOf(registered, ETH) == event.hostAmount
        assert earnings.balanceOf(treasury, ETH) == event.fee
        assert earnings.balance == event.hostAmount + event.fee
        assert market.balance == 0


@dataclass
class Tracked:
    opened: Opened
    token: str
    deposit: int
    price: int
    vouched: int = 0
    checkpointed: int = 0
    live: bool = True
    close_requested: bool = False


def test_random_session_sequences_conserve_money(
    chain: Any,
    market: Any,
    earnings: Any,
    open_session: Any,
    registered: Any,
    client: Any,
    treasury: Any,
    usd: Any,
) -> None:
    tokens_of = {ETH: None, usd.address: usd}

    def balance_of(holder: Any, token: str) -> int:
        return int(holder.balance) if token == ETH else int(usd.balanceOf(holder))

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
            opened = open_session(deposit=deposit, price=price, token=tokens_of[token])
            self.sessions.append(Tracked(opened, token, deposit, price))
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

        def _record(self, s: Tracked, receipt: Any) -> None:
            [event] = receipt.events.filter(market.SessionSettled)
            assert event.hostAmount + event.fee + event.refund == s.deposit
            self.paid_out[s.token] += s.deposit
            self.earned[s.token] += event.hostAmount + event.fee
            self.refunded[s.token] += event.refund
            s.live = False

        @precondition(lambda self: self.live())
        @rule(data=st.data())
        def settle(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live()))
            receipt = market.settle(*s.opened.voucher(s.vouched).as_args(), sender=registered)
            self._record(s, receipt)

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
            receipt = market.finalize(s.opened.id, sender=treasury)
            [event] = receipt.events.filter(market.SessionSettled)
            assert event.payment == s.checkpointed * s.price // 1000
            assert balance_of(client, s.token) - before == event.refund
            self._record(s, receipt)

        @rule(who=st.sampled_from(["host", "treasury"]), in_usd=st.booleans())
        def withdraw(self, who: str, in_usd: bool) -> None:
            account = registered if who == "host" else treasury
            token = usd.address if in_usd else ETH
            amount = int(earnings.balanceOf(account, token))
            if amount:
                earnings.withdraw(token, sender=account)
                self.withdrawn[token] += amount

        @invariant()
        def contracts_hold_exactly_what_they_owe(self) -> None:
            if not hasattr(self, "snapshot"):
                return
            for token in (ETH, usd.address):
                live = sum(s.deposit for s in self.live() if s.token == token)
                assert balance_of(market, token) == live
                assert balance_of(earnings, token) == earnings.totalOwed(token)
                assert earnings.totalOwed(token) + self.withdrawn[token] == self.earned[token]
                assert self.deposited[token] == live + self.paid_out[token]
            # The client was minted exactly its USD deposits: what it holds is its refunds.
            assert usd.balanceOf(client) == self.refunded[usd.address]

    examples = max(20, settings.default.max_examples // 4)  # 50 by default, more when thorough
    run_state_machine_as_test(
        Sessions, settings=settings(max_examples=examples, stateful_step_count=12, deadline=None)
    )
