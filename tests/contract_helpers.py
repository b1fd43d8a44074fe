"""Constants and helpers shared by the contract tests (imported as ``contract_helpers``).

They live here, not in conftest.py, because ``from conftest import ...`` resolves to whichever
conftest module pytest imported first (node/tests has one too) when ``ape test`` collects from
the repository root.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import Voucher, VoucherDomain, sign_voucher

ETH = "0x0000000000000000000000000000000000000000"
ETHER = 10**18
MIN_STAKE = 100 * ETHER
UNBONDING = 7 * 24 * 3600
FEE_BPS = 1000
DISPUTE_WINDOW = 3600
ETH_PRICE = 2 * 10**12  # wei per 1000 tokens
USD_PRICE = 2_000  # micro-dollars per 1000 tokens
MODEL = ("unsloth/SmolLM2-135M-Instruct-GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf")
MODEL_SHA = bytes.fromhex("11" * 32)
TOKENIZER_SHA = bytes.fromhex("22" * 32)  # of the model's tokenizer file
PEER_ID = bytes.fromhex("0024080112204a") + b"\x01" * 32
ADDRS = ["/ip4/127.0.0.1/tcp/4001"]


def register_host(
    host: Any, fab: Any, nodes: Any, owner: Any, model_id: bytes, usd: Any, peer_id: bytes = PEER_ID
) -> None:
    fab.mint(host, MIN_STAKE, sender=owner)
    fab.approve(nodes, MIN_STAKE, sender=host)
    prices = [(model_id, ETH, ETH_PRICE), (model_id, usd.address, USD_PRICE)]
    nodes.register(peer_id, ADDRS, '{"gpu":"none"}', [model_id], prices, MIN_STAKE, sender=host)


Terms = tuple[str, str, int, int]


@dataclass(frozen=True)
class SessionVoucher:
    """A voucher with its session's terms, which checkpoint and settle take as calldata."""

    voucher: Voucher
    terms: Terms

    def as_args(self) -> tuple[Any, ...]:
        """(sessionId, terms, cumulativeTokens, transcriptHash, signature)."""
        session_id, *rest = self.voucher.as_args()
        return (session_id, self.terms, *rest)


@dataclass
class Opened:
    """A session opened by a test: its terms (the marketplace stores only their hash) and the
    key that signs its vouchers."""

    id: int
    signer: LocalAccount
    domain: VoucherDomain
    token: str = ETH
    deposit: int = 0
    price: int = 0

    @property
    def terms(self) -> Terms:
        """(token, signer, deposit, price): what finalize, checkpoint and settle take."""
        return (self.token, self.signer.address, self.deposit, self.price)

    def voucher(self, tokens: int, transcript: bytes = b"\x00" * 32) -> SessionVoucher:
        return self.signed(sign_voucher(self.signer, self.domain, self.id, tokens, transcript))

    def signed(self, voucher: Voucher) -> SessionVoucher:
        """``voucher`` (signed by anyone, for any session) sent with this session's terms."""
        return SessionVoucher(voucher, self.terms)


def add_model(models: Any, owner: Any, repo: str, file: str, sha: bytes = MODEL_SHA) -> bytes:
    """Registers ``repo/file`` in the ModelRegistry; returns its id."""
    models.addModel(repo, file, sha, TOKENIZER_SHA, 1, sender=owner)
    return bytes(models.modelIdOf(repo, file))


# ------------------------------------------------------------------ governance

#: Governance parameters for a test chain (DeployParams' local defaults): seconds, FAB's clock.
VOTING_DELAY = 1
VOTING_PERIOD = 600
TIMELOCK_DELAY = 120
PROPOSAL_THRESHOLD = ETHER
QUORUM_PERCENT = 4
#: ProposalState, as OpenZeppelin's IGovernor numbers it.
PENDING, ACTIVE, CANCELED, DEFEATED, SUCCEEDED, QUEUED, EXPIRED, EXECUTED = range(8)
AGAINST, FOR, ABSTAIN = range(3)


@dataclass
class Dao:
    """The governor, its timelock (which owns the protocol) and two FAB holders who delegated
    their votes to themselves (60% and 40% of the supply)."""

    governor: Any
    timelock: Any
    voters: tuple[Any, Any]
    chain: Any

    def propose(
        self, actions: list[tuple[Any, bytes]], description: str, sender: Any = None
    ) -> int:
        """Proposes ``actions`` ((contract, calldata) pairs); returns the proposal id."""
        targets = [c.address for c, _ in actions]
        receipt = self.governor.propose(
            targets,
            [0] * len(actions),
            [data for _, data in actions],
            description,
            sender=sender or self.voters[0],
        )
        return int(receipt.events.filter(self.governor.ProposalCreated)[0].proposalId)

    def args(self, actions: list[tuple[Any, bytes]], description: str) -> tuple[Any, ...]:
        """(targets, values, calldatas, descriptionHash), as queue and execute take them."""
        return (
            [c.address for c, _ in actions],
            [0] * len(actions),
            [data for _, data in actions],
            keccak(text=description),
        )

    def wait(self, seconds: int) -> None:
        """Moves the chain's clock (FAB's, and so the governor's) on by ``seconds``."""
        self.chain.mine(deltatime=seconds)

    def pass_and_queue(self, actions: list[tuple[Any, bytes]], description: str) -> int:
        """Proposes ``actions``, votes them through with both holders, and queues them."""
        proposal = self.propose(actions, description)
        self.wait(VOTING_DELAY + 1)
        for voter in self.voters:
            self.governor.castVote(proposal, FOR, sender=voter)
        self.wait(VOTING_PERIOD + 1)
        self.governor.queue(*self.args(actions, description), sender=self.voters[0])
        return proposal

    def enact(self, actions: list[tuple[Any, bytes]], description: str) -> Any:
        """The whole path: propose, vote, queue, wait out the timelock, execute."""
        self.pass_and_queue(actions, description)
        self.wait(TIMELOCK_DELAY + 1)
        return self.governor.execute(*self.args(actions, description), sender=self.voters[1])
