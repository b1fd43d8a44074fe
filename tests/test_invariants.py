"""The protocol as a whole under random operation sequences: sessions (ETH and an ERC20),
jobs, earnings and staking, interleaved, with time travel. Money stays exact to the wei and
every contract holds exactly what it owes:

- each escrow's balance per token is its live deposits plus everything its ledger owes;
- what the ledger owes each account is what it was credited minus what it withdrew;
- every settled session or job splits its deposit into host + fee + refund;
- the NodeRegistry holds exactly the hosts' stakes, and no stake leaves while work it backs
  can still settle.

``HYPOTHESIS_PROFILE=thorough`` runs 10,000 sequences of up to 8 operations (about an hour and
a half on 2 cores: Ape's Python stack, not the EVM, sets the pace); the default profile runs 30
of up to 15.
"""

import os
from dataclasses import dataclass
from typing import Any

import ape
from eth_account import Account
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from contract_helpers import ETH, ETH_PRICE, MIN_STAKE, PEER_ID, USD_PRICE, Opened, register_host

INPUT_HASH = bytes.fromhex("33" * 32)
RESULT_HASH = bytes.fromhex("ef" * 32)
ZERO = b"\x00" * 32
THOROUGH_SEQUENCES = 10_000


def max_tokens(deposit: int, price: int) -> int:
    return ((deposit + 1) * 1000 - 1) // price


@dataclass
class Work:
    """A session or a job, as the model expects it to stand."""

    kind: str  # "session" or "job"
    id: int
    token: str
    deposit: int
    host: Any
    opened: Opened | None = None  # sessions
    vouched: int = 0
    checkpointed: int = 0
    close_requested: bool = False
    claimed: bool = False  # jobs: claimed and completed (this model delivers at once)
    payment: int = 0
    releasable_at: int = 0
    deadline: int = 0
    live: bool = True


def test_random_protocol_sequences_conserve_money_and_stake(
    chain: Any,
    market: Any,
    board: Any,
    nodes: Any,
    fab: Any,
    usd: Any,
    model_id: bytes,
    domain: Any,
    host: Any,
    host2: Any,
    client: Any,
    treasury: Any,
    owner: Any,
) -> None:
    for account, peer_id in ((host, PEER_ID), (host2, PEER_ID[:-1] + b"\x02")):
        register_host(account, fab, nodes, owner, model_id, usd, peer_id=peer_id)
    nodes.setSlasher(owner, sender=owner)  # the owner stands in for the Slasher
    tokens = (ETH, usd.address)
    escrows = {"market": market, "board": board}
    fee_bps = int(market.feeBps())
    assert fee_bps == int(board.feeBps())

    def balance_of(holder: Any, token: str) -> int:
        return int(holder.balance) if token == ETH else int(usd.balanceOf(holder))

    def now() -> int:
        return int(chain.pending_timestamp)

    def wait_until(moment: int) -> None:
        if now() < moment:
            chain.pending_timestamp = moment

    class Protocol(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.snapshot = chain.snapshot()
            self.work: list[Work] = []
            self.hosts = {h.address: h for h in (host, host2)}
            self.registered = set(self.hosts)
            self.stakes = {h: MIN_STAKE for h in self.hosts}
            self.unbonding: set[str] = set()
            # Expected ledger entries: (escrow, account, token) -> amount owed.
            self.owed: dict[tuple[str, str, str], int] = {}

        def teardown(self) -> None:
            if hasattr(self, "snapshot"):
                chain.restore(self.snapshot)

        def live(self, kind: str) -> list[Work]:
            return [w for w in self.work if w.live and w.kind == kind]

        def active_hosts(self) -> list[str]:
            return [h for h in self.registered if self.stakes[h] >= MIN_STAKE]

        def credit(self, escrow: str, account: str, token: str, amount: int) -> None:
            key = (escrow, account, token)
            self.owed[key] = self.owed.get(key, 0) + amount

        def book(self, escrow: str, w: Work, event: Any) -> None:
            """Checks a settlement to the wei and books what the ledger now owes."""
            assert event.hostAmount + event.fee + event.refund == w.deposit
            assert event.fee == event.payment * fee_bps // 10_000
            self.credit(escrow, w.host.address, w.token, event.hostAmount)
            self.credit(escrow, treasury.address, w.token, event.fee)
            w.live = False

        # ------------------------------------------------------------ sessions

        @precondition(lambda self: self.active_hosts())
        @rule(
            deposit=st.integers(10**4, 10**12),
            extra=st.integers(0, 10**6),
            in_usd=st.booleans(),
            data=st.data(),
        )
        def open(self, deposit: int, extra: int, in_usd: bool, data: Any) -> None:
            chosen = self.hosts[data.draw(st.sampled_from(sorted(self.active_hosts())))]
            price = (USD_PRICE if in_usd else ETH_PRICE) + extra
            if not in_usd:
                deposit *= 10**6
            token = usd.address if in_usd else ETH
            if in_usd:
                usd.mint(client, deposit, sender=client)
                usd.approve(market, deposit, sender=client)
            signer = Account.create()
            receipt = market.open(
                chosen, model_id, token, deposit, price, 3600, signer.address,
                value=0 if in_usd else deposit, sender=client,
            )  # fmt: skip
            [event] = receipt.events.filter(market.SessionOpened)
            opened = Opened(int(event.sessionId), signer, domain, token, deposit, price)
            self.work.append(Work("session", opened.id, token, deposit, chosen, opened))

        @precondition(lambda self: self.live("session"))
        @rule(data=st.data())
        def vouch_and_checkpoint(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live("session")))
            assert s.opened is not None
            top = max_tokens(s.deposit, s.opened.price)
            s.vouched = data.draw(st.integers(s.vouched, top))
            if s.vouched > s.checkpointed and data.draw(st.booleans()):
                market.checkpoint(*s.opened.voucher(s.vouched).as_args(), sender=s.host)
                s.checkpointed = s.vouched

        @precondition(lambda self: self.live("session"))
        @rule(data=st.data())
        def settle(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live("session")))
            assert s.opened is not None
            before = balance_of(client, s.token)
            receipt = market.settle(*s.opened.voucher(s.vouched).as_args(), sender=s.host)
            [event] = receipt.events.filter(market.SessionSettled)
            assert event.payment == s.vouched * s.opened.price // 1000
            assert balance_of(client, s.token) - before == event.refund
            self.book("market", s, event)

        @precondition(lambda self: self.live("session"))
        @rule(data=st.data())
        def close_and_finalize(self, data: Any) -> None:
            s = data.draw(st.sampled_from(self.live("session")))
            assert s.opened is not None
            if not s.close_requested:
                market.requestClose(s.id, sender=client)
                s.close_requested = True
            wait_until(int(market.finalizableAt(s.id)))
            before = balance_of(client, s.token)
            receipt = market.finalize(s.id, s.opened.terms, sender=treasury)
            [event] = receipt.events.filter(market.SessionSettled)
            assert event.payment == s.checkpointed * s.opened.price // 1000
            assert balance_of(client, s.token) - before == event.refund
            self.book("market", s, event)

        # ------------------------------------------------------------ jobs

        @rule(amount=st.integers(10**4, 10**12), in_usd=st.booleans())
        def post(self, amount: int, in_usd: bool) -> None:
            token = usd.address if in_usd else ETH
            if in_usd:
                usd.mint(client, amount, sender=client)
                usd.approve(board, amount, sender=client)
            else:
                amount *= 10**6
            receipt = board.post(
                model_id, INPUT_HASH, ZERO, token, amount, 3600, False,
                value=0 if in_usd else amount, sender=client,
            )  # fmt: skip
            [event] = receipt.events.filter(board.JobPosted)
            job = Work("job", int(event.jobId), token, amount, None)
            job.deadline = int(event.deadline)
            self.work.append(job)

        @precondition(
            lambda self: self.active_hosts() and any(not j.claimed for j in self.live("job"))
        )
        @rule(data=st.data())
        def claim_and_complete(self, data: Any) -> None:
            job = data.draw(st.sampled_from([j for j in self.live("job") if not j.claimed]))
            if now() >= job.deadline:
                return  # too late to claim: it can only expire
            job.host = self.hosts[data.draw(st.sampled_from(sorted(self.active_hosts())))]
            board.claim(job.id, sender=job.host)
            job.payment = data.draw(st.integers(0, job.deposit))
            receipt = board.complete(job.id, RESULT_HASH, job.payment, sender=job.host)
            job.claimed = True
            completed_at = int(chain.blocks[receipt.block_number].timestamp)
            job.releasable_at = completed_at + int(board.challengeWindow())

        @precondition(lambda self: any(j.claimed for j in self.live("job")))
        @rule(data=st.data())
        def release(self, data: Any) -> None:
            job = data.draw(st.sampled_from([j for j in self.live("job") if j.claimed]))
            wait_until(job.releasable_at)
            receipt = board.release(job.id, sender=client)
            [event] = receipt.events.filter(board.JobSettled)
            assert event.payment == job.payment
            self.book("board", job, event)

        @precondition(lambda self: any(not j.claimed for j in self.live("job")))
        @rule(data=st.data())
        def expire(self, data: Any) -> None:
            job = data.draw(st.sampled_from([j for j in self.live("job") if not j.claimed]))
            wait_until(job.deadline + 1)
            before = balance_of(client, job.token)
            receipt = board.expire(job.id, sender=treasury)
            [event] = receipt.events.filter(board.JobSettled)
            assert event.refund == job.deposit == balance_of(client, job.token) - before
            job.host = treasury  # nothing is credited to a host: book the (zero) split anyway
            self.book("board", job, event)

        # ------------------------------------------------------------ earnings

        @rule(
            who=st.sampled_from(["host", "host2", "treasury"]),
            escrow=st.sampled_from(["market", "board"]),
            in_usd=st.booleans(),
        )
        def withdraw(self, who: str, escrow: str, in_usd: bool) -> None:
            account = {"host": host, "host2": host2, "treasury": treasury}[who]
            token = usd.address if in_usd else ETH
            contract = escrows[escrow]
            amount = self.owed.get((escrow, account.address, token), 0)
            assert contract.owed(account, token) == amount
            if amount == 0:
                with ape.reverts(contract.NothingToWithdraw):
                    contract.withdraw(token, sender=account)
                return
            before = balance_of(account, token)
            receipt = contract.withdraw(token, sender=account)
            gas = receipt.total_fees_paid if token == ETH else 0
            assert balance_of(account, token) - before + gas == amount
            self.owed[(escrow, account.address, token)] = 0

        # ------------------------------------------------------------ staking

        @precondition(lambda self: self.registered)
        @rule(data=st.data(), amount=st.integers(1, MIN_STAKE))
        def add_stake(self, data: Any, amount: int) -> None:
            who = self.hosts[data.draw(st.sampled_from(sorted(self.registered)))]
            fab.mint(who, amount, sender=owner)
            fab.approve(nodes, amount, sender=who)
            nodes.addStake(amount, sender=who)
            self.stakes[who.address] += amount

        @precondition(lambda self: any(self.stakes[h] for h in self.hosts))
        @rule(data=st.data(), share=st.fractions(0, 1))
        def slash(self, data: Any, share: Any) -> None:
            who = data.draw(st.sampled_from(sorted(h for h in self.hosts if self.stakes[h])))
            amount = max(1, int(self.stakes[who] * share))
            before = int(fab.balanceOf(treasury))
            nodes.slash(who, amount, treasury, sender=owner)
            assert int(fab.balanceOf(treasury)) - before == amount
            self.stakes[who] -= amount

        @precondition(lambda self: self.registered)
        @rule(data=st.data())
        def unregister(self, data: Any) -> None:
            who = data.draw(st.sampled_from(sorted(self.registered)))
            nodes.unregister(sender=self.hosts[who])
            self.registered.discard(who)
            self.unbonding.add(who)

        @precondition(lambda self: self.unbonding)
        @rule(data=st.data(), early=st.booleans())
        def withdraw_stake(self, data: Any, early: bool) -> None:
            who = data.draw(st.sampled_from(sorted(self.unbonding)))
            node = nodes.getNode(who)
            ready = max(int(node.unbondingEnds), int(node.stakeLockedUntil))
            # The lock covers every session and job the host took on: none can still settle.
            for w in self.work:
                if w.live and w.host is not None and w.host.address == who:
                    end = (
                        int(market.finalizableAt(w.id))
                        if w.kind == "session"
                        else w.deadline + int(board.challengeWindow())
                    )
                    assert int(node.stakeLockedUntil) >= end
            if early and now() < ready:
                with ape.reverts():
                    nodes.withdrawStake(sender=self.hosts[who])
                return
            wait_until(ready)
            before = int(fab.balanceOf(who))
            nodes.withdrawStake(sender=self.hosts[who])
            assert int(fab.balanceOf(who)) - before == self.stakes[who]
            self.stakes[who] = 0
            self.unbonding.discard(who)

        @rule(seconds=st.integers(1, 3 * 3600))
        def wait(self, seconds: int) -> None:
            chain.pending_timestamp = now() + seconds

        # ------------------------------------------------------------ invariants

        @invariant()
        def escrows_hold_exactly_what_they_owe(self) -> None:
            if not hasattr(self, "snapshot"):
                return
            for name, contract in escrows.items():
                kind = "session" if name == "market" else "job"
                for token in tokens:
                    live = sum(w.deposit for w in self.work if w.live and w.kind == kind
                               and w.token == token)  # fmt: skip
                    owed = sum(v for (e, _, t), v in self.owed.items() if e == name and t == token)
                    assert balance_of(contract, token) == live + owed
                    for (e, account, t), amount in self.owed.items():
                        if e == name and t == token:
                            assert contract.owed(account, token) == amount

        @invariant()
        def the_registry_holds_exactly_the_stakes(self) -> None:
            if not hasattr(self, "snapshot"):
                return
            for who, stake in self.stakes.items():
                assert int(nodes.getNode(who).stake) == stake
            assert int(fab.balanceOf(nodes)) == sum(self.stakes.values())

    thorough = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
    run_state_machine_as_test(
        Protocol,
        settings=settings(
            max_examples=THOROUGH_SEQUENCES if thorough else 30,
            stateful_step_count=8 if thorough else 15,
            deadline=None,
        ),
    )
