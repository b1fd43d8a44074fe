"""Money to the wei on the JobBoard: every settled job splits maxPayment == host earnings +
treasury fee + refund, and the board holds exactly its live deposits plus what its ledger owes
(`owed`: host earnings, the treasury's fees, refunds a client could not be pushed), over random
sequences of posts, claims by two hosts, completions, proofs (accepted and refused), releases,
disputes, expiries, cancellations, fee changes, withdrawals, treasury changes and time travel.
Alongside, the model predicts what the board must refuse at each moment, and checks that it
does."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ape
from eth_utils import keccak
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

from contract_helpers import ETH

INPUT_HASH = bytes.fromhex("33" * 32)
RESULT_HASH = bytes.fromhex("ef" * 32)
ZERO = b"\x00" * 32
REPLAYED, INVALID = 4, 5
STATUS = {"open": 1, "claimed": 2, "completed": 3, "disputed": 4, "paid": 5, "refunded": 6}
SETTLED = ("paid", "refunded")
MAX_LIVE = 3  # unsettled jobs at once: enough to interleave, few enough to see them through


def commitment(values: list[int]) -> bytes:
    """keccak256(abi.encodePacked(uint256[] values)), as the ProofSystem hashes instances."""
    return keccak(b"".join(v.to_bytes(32, "big") for v in values))


@dataclass
class Tracked:
    """What the test expects of one job."""

    id: int
    token: str
    max_payment: int
    fee_bps: int
    deadline: int
    inputs: list[list[int]] = field(default_factory=list)  # one row per proof; none: unproven
    status: str = "open"
    host: Any = None
    claimed_until: int = 0
    payment: int = 0
    releasable_at: int = 0

    @property
    def proven(self) -> bool:
        return bool(self.inputs)

    def instances(self) -> list[list[int]]:
        return [[*row, sum(row) % 997] for row in self.inputs]  # inputs, then one output

    def claimable(self, now: int) -> bool:
        """Open, or claimed by a host whose claim has lapsed (cancel is allowed too)."""
        return self.status == "open" or (self.status == "claimed" and now > self.claimed_until)

    def deliverable(self, now: int) -> bool:
        return self.status == "claimed" and now <= self.claimed_until


Refusal = tuple[str, Callable[[], Any], Any, dict[str, Any]]


def test_random_job_sequences_conserve_money(
    chain: Any,
    board: Any,
    proofs: Any,
    verifier: Any,
    model_id: bytes,
    proven_model_id: bytes,
    board_hosts: Any,
    client: Any,
    treasury: Any,
    stranger: Any,
    owner: Any,
    usd: Any,
) -> None:
    hosts = list(board_hosts)
    tokens = (ETH, usd.address)
    treasuries = (treasury, stranger)  # the fees go to whichever is the treasury at withdrawal
    accounts = [*hosts, client, *treasuries]  # who the board's ledger may owe

    def balance_of(holder: Any, token: str) -> int:
        return int(holder.balance) if token == ETH else int(usd.balanceOf(holder))

    def now() -> int:
        """The timestamp of the next transaction's block."""
        return int(chain.pending_timestamp)

    def wait_until(moment: int) -> None:
        if now() < moment:
            chain.pending_timestamp = moment

    class Jobs(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.snapshot = chain.snapshot()
            self.jobs: list[Tracked] = []
            self.fee_bps = int(board.feeBps())
            self.proof_tag = 0
            self.accepted: list[bytes] = []
            # The board's ledger: host earnings and deferred refunds per account, and the
            # treasury's fees per token (owed to whoever is the treasury when it withdraws).
            self.owed = {(a.address, t): 0 for a in accounts for t in tokens}
            self.fees = {t: 0 for t in tokens}
            self.treasury = treasury
            for t in tokens:  # a fresh board: it holds nothing and owes nothing
                assert balance_of(board, t) == 0
                assert all(board.owed(a, t) == 0 for a in accounts)
            self.base_usd = int(usd.balanceOf(client))
            self.refunded_usd = 0
            # What the last step may have changed, for the invariants to check.
            self.moved_tokens: set[str] = set()
            self.moved_accounts: set[tuple[str, str]] = set()
            self.moved_jobs: set[int] = set()

        def teardown(self) -> None:
            if hasattr(self, "snapshot"):
                chain.restore(self.snapshot)

        def where(self, test: Callable[[Tracked], bool]) -> list[Tracked]:
            return [j for j in self.jobs if test(j)]

        def _settle(
            self, job: Tracked, receipt: Any, payment: int, paid: bool, client_before: int
        ) -> None:
            """Checks the settlement of ``job`` to the wei and books it."""
            [event] = receipt.events.filter(board.JobSettled)
            fee = payment * job.fee_bps // 10_000  # the fee in force when the job was posted
            assert event.jobId == job.id
            assert (event.payment, event.hostAmount, event.fee, event.refund, event.paid) == (
                payment,
                payment - fee,
                fee,
                job.max_payment - payment,
                paid,
            )
            assert event.hostAmount + event.fee + event.refund == job.max_payment
            refunded = balance_of(client, job.token) - client_before
            if receipt.sender == client.address and job.token == ETH:
                refunded += receipt.total_fees_paid
            deferred = receipt.events.filter(board.PayoutDeferred)
            for d in deferred:  # a refund the client's wallet refused waits in the ledger
                assert (d.id, d.account, d.token) == (job.id, client.address, job.token)
                self.owed[(d.account, d.token)] += d.amount
                self.moved_accounts.add((d.account, d.token))
            assert refunded == event.refund - sum(d.amount for d in deferred)
            if job.token != ETH:
                self.refunded_usd += refunded
            if event.hostAmount:
                self.owed[(job.host.address, job.token)] += event.hostAmount
                self.moved_accounts.add((job.host.address, job.token))
            self.fees[job.token] += event.fee
            self.moved_accounts.add((self.treasury.address, job.token))
            self.moved_tokens.add(job.token)
            job.status = "paid" if paid else "refunded"
            job.payment = payment
            with ape.reverts(board.WrongStatus, jobId=job.id, status=STATUS[job.status]):
                board.expire(job.id, sender=stranger)  # settled once and for all

        # ------------------------------------------------------------ posting

        def live(self) -> list[Tracked]:
            return self.where(lambda j: j.status not in SETTLED)

        @precondition(lambda self: len(self.live()) < MAX_LIVE)
        @rule(
            in_usd=st.booleans(),
            amount=st.integers(10**4, 10**12),
            duration=st.one_of(st.just(60), st.integers(300, 3600)),
            proofs_count=st.sampled_from([1, 0, 2, 0, 3]),
            fee_bps=st.one_of(st.none(), st.sampled_from([0, 1, 999, 2500])),
            data=st.data(),
        )
        def post(
            self,
            in_usd: bool,
            amount: int,
            duration: int,
            proofs_count: int,
            fee_bps: int | None,
            data: Any,
        ) -> None:
            """Posts a job, after a fee change for new jobs when ``fee_bps`` is set."""
            if fee_bps is not None:
                board.setFeeBps(fee_bps, sender=owner)
                self.fee_bps = fee_bps
            token = usd.address if in_usd else ETH
            if in_usd:
                usd.mint(client, amount, sender=client)
                usd.approve(board, amount, sender=client)
            else:
                amount *= 10**6  # keep ETH deposits inside the allowed range
            row = st.lists(st.integers(0, 2**256 - 1), min_size=2, max_size=2)
            inputs = [data.draw(row) for _ in range(proofs_count)]
            posted_at = now()
            receipt = board.post(
                proven_model_id if inputs else model_id,
                INPUT_HASH,
                commitment([v for r in inputs for v in r]) if inputs else ZERO,
                token,
                amount,
                duration,
                bool(inputs),
                value=0 if in_usd else amount,
                sender=client,
            )
            [event] = receipt.events.filter(board.JobPosted)
            job = Tracked(int(event.jobId), token, amount, self.fee_bps, posted_at + duration)
            job.inputs = inputs
            assert event.deadline == job.deadline and event.maxPayment == amount
            self.jobs.append(job)
            self.moved_tokens.add(token)
            self.moved_jobs.add(job.id)

        # ------------------------------------------------------------ a job's next step

        def actions(self, job: Tracked) -> list[str]:
            """What may happen next to ``job``, some after waiting for the moment it is allowed
            (a claim lapsing, the challenge window closing, the deadline). Hypothesis favours the
            first: progress comes first."""
            at = now()
            refused = ["refused"] if self.refusals(job) else []
            if job.status == "completed":
                window = ["dispute"] if at < job.releasable_at else []
                return [*window, "release", *refused]
            if job.status == "disputed":
                return ["resolve for the host", "resolve for the client", *refused]
            out = []
            if job.deliverable(at):
                out += ["prove"] if job.proven else ["complete"]
                # Refusing first scripts the verifier: one more block before the proofs land.
                if job.proven and job.deliverable(at + 1):
                    out.append("refuse proof")
                if job.proven and self.accepted:
                    out.append("replay proof")
                if job.claimed_until + 1 < job.deadline:
                    out.append("take over")
            else:  # nobody is working on it: the client may take it back, or let it expire
                if at < job.deadline:
                    out += ["claim and deliver", "claim"]
                out += ["cancel", "expire"]
            return out + refused

        @precondition(lambda self: self.live())
        @rule(data=st.data())
        def advance(self, data: Any) -> None:
            """Takes a job one step along its lifecycle."""
            job = data.draw(st.sampled_from(self.live()), label="job")
            action = data.draw(st.sampled_from(self.actions(job)), label="action")
            self.moved_jobs.add(job.id)
            if action == "refused":
                _, attempt, error, inputs = data.draw(
                    st.sampled_from(self.refusals(job)), label="refused"
                )
                with ape.reverts(error, **inputs):
                    attempt()
            elif action.startswith("claim"):
                self._claim(job, data.draw(st.sampled_from(hosts), label="host"))
                if action == "claim and deliver":
                    if job.proven:
                        self._submit_proofs(job, data, "prove")
                    else:
                        self._complete(job, data)
            elif action == "take over":
                wait_until(job.claimed_until + 1)
                self._claim(job, next(h for h in hosts if h != job.host))
            elif action == "cancel":
                before = balance_of(client, job.token)
                self._settle(job, board.cancel(job.id, sender=client), 0, False, before)
            elif action == "expire":
                wait_until(job.deadline + 1)
                before = balance_of(client, job.token)
                self._settle(job, board.expire(job.id, sender=stranger), 0, False, before)
            elif action == "complete":
                self._complete(job, data)
            elif action in ("prove", "refuse proof", "replay proof"):
                self._submit_proofs(job, data, action)
            elif action == "dispute":
                assert board.dispute(job.id, sender=client).events.filter(board.JobDisputed)
                job.status = "disputed"
            elif action == "release":
                wait_until(job.releasable_at)
                before = balance_of(client, job.token)
                receipt = board.release(job.id, sender=stranger)
                self._settle(job, receipt, job.payment, True, before)
            else:
                pay_host = action == "resolve for the host"
                before = balance_of(client, job.token)
                receipt = board.resolveDispute(job.id, pay_host, sender=owner)
                self._settle(job, receipt, job.payment if pay_host else 0, pay_host, before)

        def _claim(self, job: Tracked, host: Any) -> None:
            at = now()
            receipt = board.claim(job.id, sender=host)
            job.status, job.host = "claimed", host
            job.claimed_until = min(at + int(board.claimTimeout()), job.deadline)
            assert receipt.events.filter(board.JobClaimed)[0].claimedUntil == job.claimed_until

        def _complete(self, job: Tracked, data: Any) -> None:
            payment = data.draw(
                st.one_of(st.just(0), st.just(job.max_payment), st.integers(0, job.max_payment)),
                label="payment",
            )
            at = now()
            receipt = board.complete(job.id, RESULT_HASH, payment, sender=job.host)
            job.status, job.payment = "completed", payment
            job.releasable_at = at + int(board.getJob(job.id).challengeWindow)
            assert receipt.events.filter(board.JobCompleted)[0].releasableAt == job.releasable_at

        def _submit_proofs(self, job: Tracked, data: Any, action: str) -> None:
            payment = data.draw(
                st.one_of(st.just(job.max_payment), st.integers(0, job.max_payment)),
                label="payment",
            )
            batch = []
            for _ in job.inputs:
                self.proof_tag += 1
                batch.append(b"proof" + self.proof_tag.to_bytes(8, "big"))
            if action == "replay proof":  # an accepted proof, with this job's input
                where = data.draw(st.integers(0, len(batch) - 1), label="replayed at")
                batch[where] = data.draw(st.sampled_from(self.accepted), label="replayed")
            if action == "refuse proof":
                verifier.setAnswer(False, False, sender=owner)
            before = balance_of(client, job.token)
            receipt = board.submitProofs(
                job.id, RESULT_HASH, payment, batch, job.instances(), sender=job.host
            )
            if action == "prove":
                [proven] = receipt.events.filter(board.JobProven)
                outputs = [row[-1] for row in job.instances()]
                assert bytes(proven.outputCommitment) == commitment(outputs)
                self._settle(job, receipt, payment, True, before)
                self.accepted.extend(batch)
                assert all(proofs.accepted(keccak(p)) for p in batch)
                return
            verifier.setAnswer(True, False, sender=owner)
            [rejected] = receipt.events.filter(board.ProofRejected)
            assert rejected.verdict == (INVALID if action == "refuse proof" else REPLAYED)
            assert not receipt.events.filter(board.JobSettled)
            assert balance_of(client, job.token) == before
            job.status, job.host, job.claimed_until = "open", None, 0

        # ------------------------------------------------------------ time, the ledger

        @precondition(lambda self: self.live())
        @rule(seconds=st.integers(1, 240))
        def travel(self, seconds: int) -> None:
            chain.pending_timestamp += seconds

        def due(self, address: str, token: str) -> int:
            """What the board must owe ``address`` in ``token`` now."""
            fees = self.fees[token] if address == self.treasury.address else 0
            return self.owed[(address, token)] + fees

        def creditors(self) -> list[tuple[Any, str]]:
            return [(a, t) for a in accounts for t in tokens if self.due(a.address, t)]

        @precondition(lambda self: self.creditors())
        @rule(data=st.data())
        def ledger(self, data: Any) -> None:
            """Someone withdraws what it is owed (favoured); or the owner names the other
            treasury, and the fees not yet withdrawn follow it; or someone owed nothing in a
            token (a former treasury, say) tries to withdraw and is refused."""
            action = data.draw(
                st.sampled_from(["withdraw", "switch treasury", "withdraw nothing"]),
                label="ledger",
            )
            if action == "switch treasury":
                self.treasury = next(t for t in treasuries if t != self.treasury)
                board.setTreasury(self.treasury, sender=owner)
                self.moved_accounts.update((a.address, t) for a in treasuries for t in tokens)
            elif action == "withdraw nothing":
                pairs = [(a, t) for a in accounts for t in tokens if not self.due(a.address, t)]
                if not pairs:
                    return
                account, token = data.draw(st.sampled_from(pairs), label="owed nothing")
                with ape.reverts(board.NothingToWithdraw, token=token):
                    board.withdraw(token, sender=account)
            else:
                account, token = data.draw(st.sampled_from(self.creditors()), label="creditor")
                self._withdraw(account, token)

        def _withdraw(self, account: Any, token: str) -> None:
            amount = self.due(account.address, token)
            before = balance_of(account, token)
            receipt = board.withdraw(token, sender=account)
            [withdrawn] = receipt.events.filter(board.Withdrawn)
            assert (withdrawn.account, withdrawn.token, withdrawn.amount) == (
                account.address,
                token,
                amount,
            )
            gas = receipt.total_fees_paid if token == ETH else 0
            assert balance_of(account, token) - before == amount - gas
            if account == client and token != ETH:
                self.refunded_usd += amount
            self.owed[(account.address, token)] = 0
            if account == self.treasury:
                self.fees[token] = 0
            self.moved_tokens.add(token)
            self.moved_accounts.add((account.address, token))

        # ------------------------------------------------------------ what must be refused

        def refusals(self, j: Tracked) -> list[Refusal]:
            """What the board must refuse to do with live job ``j`` now."""
            at = now()
            out: list[Refusal] = []

            def add(name: str, attempt: Callable[[], Any], error: Any, **inputs: Any) -> None:
                out.append((name, attempt, error, inputs))

            if j.status == "claimed" and not j.claimable(at):
                for h in hosts:  # a live claim is not taken over, not even by its host
                    add(
                        "claim",
                        lambda h=h: board.claim(j.id, sender=h),
                        board.NotClaimable,
                        jobId=j.id,
                    )
                add(
                    "cancel",
                    lambda: board.cancel(j.id, sender=client),
                    board.NotClaimable,
                    jobId=j.id,
                )
            if j.claimable(at) and at >= j.deadline:
                add(
                    "late claim",
                    lambda: board.claim(j.id, sender=hosts[0]),
                    board.NotClaimable,
                    jobId=j.id,
                )
            if j.status == "claimed" and at > j.claimed_until:
                add(
                    "lapsed complete",
                    lambda: board.complete(j.id, RESULT_HASH, 0, sender=j.host),
                    board.ClaimExpired,
                    jobId=j.id,
                    claimedUntil=j.claimed_until,
                )
            if j.deliverable(at) and not j.proven:
                add(
                    "overpay",
                    lambda: board.complete(j.id, RESULT_HASH, j.max_payment + 1, sender=j.host),
                    board.PaymentTooHigh,
                    maxPayment=j.max_payment,
                )
            if j.status == "completed" and at < j.releasable_at:
                add(
                    "early release",
                    lambda: board.release(j.id, sender=stranger),
                    board.ChallengeWindowOpen,
                    releasableAt=j.releasable_at,
                )
            if j.status == "completed" and at >= j.releasable_at:
                add(
                    "late dispute",
                    lambda: board.dispute(j.id, sender=client),
                    board.ChallengeWindowClosed,
                    releasableAt=j.releasable_at,
                )
            if j.status in ("open", "claimed") and at <= j.deadline:
                add(
                    "early expiry",
                    lambda: board.expire(j.id, sender=stranger),
                    board.DeadlineNotReached,
                    deadline=j.deadline,
                )
            return out

        # ------------------------------------------------------------ invariants

        @invariant()
        def contracts_hold_exactly_what_they_owe(self) -> None:
            """Checked for what the last step may have moved (the chain calls are the cost)."""
            if not hasattr(self, "snapshot"):
                return
            for token in self.moved_tokens:
                escrowed = sum(j.max_payment for j in self.live() if j.token == token)
                owed = sum(v for (_, t), v in self.owed.items() if t == token) + self.fees[token]
                # Live deposits plus the whole ledger, to the wei: nothing more, nothing less.
                assert balance_of(board, token) == escrowed + owed
            if usd.address in self.moved_tokens:
                # The client was minted exactly its USD deposits: it holds its refunds.
                assert usd.balanceOf(client) == self.base_usd + self.refunded_usd
            for address, token in self.moved_accounts:
                assert board.owed(address, token) == self.due(address, token)
            self.moved_tokens.clear()
            self.moved_accounts.clear()

        @invariant()
        def every_job_is_where_the_model_says(self) -> None:
            if not hasattr(self, "snapshot"):
                return
            for job in self.jobs:
                if job.id in self.moved_jobs:
                    on_chain = board.getJob(job.id)
                    assert on_chain.status == STATUS[job.status], job
                    assert on_chain.payment == job.payment
                    assert on_chain.host == (job.host.address if job.host else ETH)
            self.moved_jobs.clear()

    examples = max(10, settings.default.max_examples // 10)  # 20 by default, more when thorough
    run_state_machine_as_test(
        Jobs, settings=settings(max_examples=examples, stateful_step_count=25, deadline=None)
    )
