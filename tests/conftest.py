"""Fixtures for the contract suite: the whole protocol deployed fresh on the test network.

Ape snapshots the chain around every test scope: what a session-scoped fixture does stays for
every later test, so only deployments are session-scoped; registrations are per test.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from hypothesis import HealthCheck, settings

from fabstir_sdk.contracts import VoucherDomain

from contract_helpers import (
    ADDRS,
    DISPUTE_WINDOW,
    ETH,
    ETH_PRICE,
    ETHER,
    FEE_BPS,
    MIN_STAKE,
    MODEL,
    MODEL_SHA,
    PEER_ID,
    PROPOSAL_THRESHOLD,
    QUORUM_PERCENT,
    TIMELOCK_DELAY,
    TOKENIZER_SHA,
    UNBONDING,
    VOTING_DELAY,
    VOTING_PERIOD,
    Dao,
    Opened,
    register_host,
)

settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def owner(accounts: Any) -> Any:
    return accounts[0]


@pytest.fixture(scope="session")
def treasury(accounts: Any) -> Any:
    return accounts[1]


@pytest.fixture(scope="session")
def host(accounts: Any) -> Any:
    return accounts[2]


@pytest.fixture(scope="session")
def host2(accounts: Any) -> Any:
    return accounts[3]


@pytest.fixture(scope="session")
def client(accounts: Any) -> Any:
    return accounts[4]


@pytest.fixture(scope="session")
def stranger(accounts: Any) -> Any:
    return accounts[5]


@pytest.fixture(scope="session")
def fab(project: Any, owner: Any) -> Any:
    return owner.deploy(project.FabToken, owner)


@pytest.fixture(scope="session")
def usd(project: Any, owner: Any) -> Any:
    return owner.deploy(project.TestUSD)


@pytest.fixture(scope="session")
def models(project: Any, owner: Any) -> Any:
    return owner.deploy(project.ModelRegistry, owner)


@pytest.fixture(scope="session")
def model_id(models: Any, owner: Any) -> bytes:
    models.addModel(*MODEL, MODEL_SHA, TOKENIZER_SHA, 1, sender=owner)
    return bytes(models.modelIdOf(*MODEL))


@pytest.fixture(scope="session")
def nodes(project: Any, owner: Any, fab: Any, models: Any) -> Any:
    return owner.deploy(project.NodeRegistry, owner, fab, models, MIN_STAKE, UNBONDING)


@pytest.fixture(scope="session")
def market(project: Any, owner: Any, treasury: Any, models: Any, nodes: Any, usd: Any) -> Any:
    market = owner.deploy(
        project.JobMarketplace, owner, models, nodes, treasury, FEE_BPS, DISPUTE_WINDOW
    )
    nodes.setStakeLocker(market, True, sender=owner)
    market.setTokenConfig(ETH, True, 10**9, 100 * ETHER, sender=owner)
    market.setTokenConfig(usd, True, 10**4, 10**12, sender=owner)
    return market


@pytest.fixture
def registered(host: Any, fab: Any, nodes: Any, owner: Any, model_id: bytes, usd: Any) -> Any:
    register_host(host, fab, nodes, owner, model_id, usd)
    return host


@pytest.fixture(scope="session")
def domain(chain: Any, market: Any) -> VoucherDomain:
    return VoucherDomain(chain.chain_id, market.address)


@pytest.fixture
def open_session(market: Any, registered: Any, model_id: bytes, client: Any, domain: VoucherDomain):
    """Opens a session paid in ETH (or ``token``) and returns it with its signer."""

    def _open(
        deposit: int = 10**15,
        price: int = ETH_PRICE,
        token: Any = None,
        sender: Any = None,
        duration: int = 3600,
        host: Any = None,
    ) -> Opened:
        signer = Account.create()
        sender = sender or client
        token_address = ETH if token is None else token.address
        value = deposit if token is None else 0
        if token is not None:
            token.mint(sender, deposit, sender=sender)
            token.approve(market, deposit, sender=sender)
        receipt = market.open(
            host or registered,
            model_id,
            token_address,
            deposit,
            price,
            duration,
            signer.address,
            value=value,
            sender=sender,
        )
        session_id = receipt.events.filter(market.SessionOpened)[0].sessionId
        return Opened(session_id, signer, domain, token_address, deposit, price)

    return _open


# ------------------------------------------------------------------ the job board

CLAIM_TIMEOUT = 300  # DeployParams' defaults; tests read them back from the board
CHALLENGE_WINDOW = 600
PEER_ID_2 = bytes.fromhex("0024080112204a") + b"\x02" * 32
INPUT_HASH = bytes.fromhex("33" * 32)  # content hash of a job's input in the store
NO_COMMITMENT = b"\x00" * 32


@pytest.fixture(scope="session")
def proofs(project: Any, owner: Any, models: Any) -> Any:
    return owner.deploy(project.ProofSystem, owner, models)


@pytest.fixture(scope="session")
def board(
    project: Any,
    owner: Any,
    treasury: Any,
    models: Any,
    nodes: Any,
    proofs: Any,
    usd: Any,
) -> Any:
    """The JobBoard, wired as ``deploy_protocol`` wires it."""
    board = owner.deploy(
        project.JobBoard,
        owner,
        models,
        nodes,
        proofs,
        treasury,
        FEE_BPS,
        CLAIM_TIMEOUT,
        CHALLENGE_WINDOW,
    )
    proofs.setBoard(board, sender=owner)
    nodes.setStakeLocker(board, True, sender=owner)
    board.setTokenConfig(ETH, True, 10**9, 100 * ETHER, sender=owner)
    board.setTokenConfig(usd, True, 10**4, 10**12, sender=owner)
    return board


@pytest.fixture(scope="session")
def verifier(project: Any, owner: Any) -> Any:
    """A verifier whose answer the test sets (it accepts until told otherwise)."""
    return owner.deploy(project.ScriptedVerifier)


@pytest.fixture(scope="session")
def proven_model_id(models: Any, owner: Any, verifier: Any) -> bytes:
    """A proven model checked by the scripted verifier: 2 inputs and 1 output per proof."""
    circuit = (b"\x44" * 32, b"\x55" * 32, b"\x66" * 32, verifier.address, 2, 1)
    models.addProvenModel("org/tiny-onnx", "network.onnx", b"\x77" * 32, circuit, sender=owner)
    return bytes(models.modelIdOf("org/tiny-onnx", "network.onnx"))


@pytest.fixture
def board_hosts(
    host: Any,
    host2: Any,
    fab: Any,
    nodes: Any,
    owner: Any,
    model_id: bytes,
    proven_model_id: bytes,
) -> tuple[Any, Any]:
    """``host`` and ``host2`` registered, each serving the GGUF and the proven model."""
    for account, peer_id in ((host, PEER_ID), (host2, PEER_ID_2)):
        fab.mint(account, MIN_STAKE, sender=owner)
        fab.approve(nodes, MIN_STAKE, sender=account)
        nodes.register(
            peer_id, ADDRS, "{}", [model_id, proven_model_id], [], MIN_STAKE, sender=account
        )
    return host, host2


@pytest.fixture
def post_job(board: Any, client: Any, model_id: bytes, proven_model_id: bytes) -> Any:
    """Posts a job (paid in ETH, or in ``token`` minted to the sender first); returns its id.
    A job with ``proof_required`` is for the proven model unless ``model`` says otherwise."""

    def _post(
        max_payment: int = 10**15,
        token: Any = None,
        duration: int = 3600,
        proof_required: bool = False,
        input_commitment: bytes = NO_COMMITMENT,
        input_hash: bytes = INPUT_HASH,
        model: bytes | None = None,
        sender: Any = None,
    ) -> int:
        sender = sender or client
        if model is None:
            model = proven_model_id if proof_required else model_id
        if token is not None:
            token.mint(sender, max_payment, sender=sender)
            token.approve(board, max_payment, sender=sender)
        receipt = board.post(
            model,
            input_hash,
            input_commitment,
            ETH if token is None else token.address,
            max_payment,
            duration,
            proof_required,
            value=max_payment if token is None else 0,
            sender=sender,
        )
        return int(receipt.events.filter(board.JobPosted)[0].jobId)

    return _post


# ------------------------------------------------------------------ reputation

HEARTBEAT_EPOCH = 3600  # DeployParams' default; tests read it back as ``EPOCH``


@pytest.fixture
def host_key(registered: Any) -> LocalAccount:
    """The registered host's key, to sign transcripts off-chain as a node does."""
    key: LocalAccount = Account.from_key(registered.private_key)
    assert key.address == registered.address
    return key


@pytest.fixture(scope="session")
def reputation(project: Any, owner: Any, market: Any, nodes: Any) -> Any:
    """The ReputationSystem over ``market``'s sessions, wired as ``deploy_protocol`` wires it."""
    return owner.deploy(project.ReputationSystem, market, nodes, HEARTBEAT_EPOCH)


# ------------------------------------------------------------------ governance


@pytest.fixture
def dao(
    project: Any,
    chain: Any,
    owner: Any,
    accounts: Any,
    fab: Any,
    models: Any,
    nodes: Any,
    market: Any,
    board: Any,
    proofs: Any,
    registered: Any,
) -> Dao:
    """The protocol handed to governance, as ``deploy_protocol(governance=True)`` does: the
    timelock owns every contract, the governor alone proposes, and the deployer keeps no role.
    ``host`` registered first (its stake is minted by the owner)."""
    timelock = owner.deploy(project.FabTimelock, TIMELOCK_DELAY, [], [ETH], owner)
    governor = owner.deploy(
        project.FabGovernor,
        fab,
        timelock,
        VOTING_DELAY,
        VOTING_PERIOD,
        PROPOSAL_THRESHOLD,
        QUORUM_PERCENT,
    )
    for role in (timelock.PROPOSER_ROLE(), timelock.CANCELLER_ROLE()):
        timelock.grantRole(role, governor, sender=owner)
    timelock.renounceRole(timelock.DEFAULT_ADMIN_ROLE(), owner, sender=owner)
    voters = (accounts[6], accounts[7])
    for voter, share in zip(voters, (600_000, 400_000), strict=True):
        fab.mint(voter, share * ETHER, sender=owner)
        fab.invoke_transaction("delegate", voter, sender=voter)  # Ape has its own `delegate`
    for contract in (fab, models, nodes, market, board, proofs):
        contract.transferOwnership(timelock, sender=owner)
    return Dao(governor, timelock, voters, chain)


@pytest.fixture
def slasher(project: Any, owner: Any, nodes: Any, market: Any, reputation: Any) -> Any:
    """The Slasher, named the registry's slasher (the owner decides slashes until ``dao``)."""
    slasher = owner.deploy(project.Slasher, owner, nodes, market, reputation)
    nodes.setSlasher(slasher, sender=owner)
    return slasher
