"""A local chain for development and tests: start Anvil and deploy the whole protocol.

Anvil comes from npm (``@foundry-rs/anvil``, installed by ``make setup`` into
``node_modules/.bin``) or from ``$FABSTIR_ANVIL`` / ``PATH``. Deploying uses plain web3.py and
the artifacts exported into the SDK, so no Ape is needed at run time. Development only: the
test mnemonic's keys are public.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract

from fabstir_sdk.contracts.artifacts import build_hash
from fabstir_sdk.contracts.deployment import ETH, Deployment
from fabstir_sdk.contracts.transactions import TransactionSender

#: Anvil's well-known development mnemonic; its accounts are funded with 10,000 ETH each.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"
ETHER = 10**18


def anvil_account(index: int) -> LocalAccount:
    """The ``index``-th funded Anvil development account (never use these keys elsewhere)."""
    Account.enable_unaudited_hdwallet_features()
    account: LocalAccount = Account.from_mnemonic(
        ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}"
    )
    return account


def find_anvil() -> str:
    """The Anvil executable: ``$FABSTIR_ANVIL``, the repo's node_modules, or ``PATH``."""
    if env := os.environ.get("FABSTIR_ANVIL"):
        return env
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "node_modules" / ".bin" / "anvil"
        if candidate.exists():
            return str(candidate)
    if found := shutil.which("anvil"):
        return found
    raise FileNotFoundError("anvil not found: run `make setup` or set FABSTIR_ANVIL")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Anvil:
    """A fresh Anvil on a random 127.0.0.1 port; a context manager that stops it on exit."""

    def __init__(self, *, port: int | None = None, block_time: float | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [find_anvil(), "--host", "127.0.0.1", "--port", str(self.port), "--silent"]
        if block_time:
            args += ["--block-time", str(block_time)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.w3 = Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 30}))
        deadline = time.monotonic() + 30
        while not self._ready():
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"anvil exited with {self._proc.returncode}: {err}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError("anvil did not start within 30 s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        try:
            return bool(self.w3.is_connected())
        except Exception:
            return False

    def increase_time(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block."""
        self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        self.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def __enter__(self) -> Anvil:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass(frozen=True)
class GovernanceParams:
    """FabGovernor's and FabTimelock's settings; periods are seconds (FAB's clock is the block
    timestamp). The defaults let a test go propose → vote → queue → execute in minutes of
    chain time; :data:`PRODUCTION_GOVERNANCE` is what a public chain gets."""

    voting_delay: int = 1
    voting_period: int = 600
    timelock_delay: int = 120
    proposal_threshold: int = ETHER
    quorum_percent: int = 4
    #: FAB minted to the deployer before the handover, delegated to itself so that it can vote
    #: (a real launch distributes it; governance mints any more).
    initial_supply: int = 1_000_000 * ETHER


#: A day's notice before a vote, five days of voting, two days in the timelock (time for hosts
#: and clients to leave before a decision takes effect), 10,000 FAB to propose, 4% quorum.
PRODUCTION_GOVERNANCE = GovernanceParams(
    voting_delay=24 * 3600,
    voting_period=5 * 24 * 3600,
    timelock_delay=2 * 24 * 3600,
    proposal_threshold=10_000 * ETHER,
    quorum_percent=4,
)


#: A public chain's unbonding delay: longer than a slash takes to pass (a day's notice, five
#: days of voting, two in the timelock), so a host cannot withdraw before evidence against it
#: is voted on.
PRODUCTION_UNBONDING_DELAY = 14 * 24 * 3600


@dataclass(frozen=True)
class DeployParams:
    """Protocol parameters; the defaults suit a local chain (short windows, test tokens, and a
    single owner: the deployer). With ``governance`` set, a FabTimelock that FabGovernor's
    votes drive owns every contract once deployed, and is the treasury unless one is given."""

    min_stake: int = 100 * ETHER
    unbonding_delay: int = 24 * 3600
    fee_bps: int = 1000
    dispute_window: int = 600
    claim_timeout: int = 300
    challenge_window: int = 600
    heartbeat_epoch: int = 3600  # seconds per ReputationSystem heartbeat epoch
    eth_min_deposit: int = 10**12
    eth_max_deposit: int = 100 * ETHER
    test_tokens: bool = True
    usd_min_deposit: int = 10**4
    usd_max_deposit: int = 10**12
    treasury: str | None = None
    governance: GovernanceParams | None = None


def deploy_protocol(
    sender: TransactionSender,
    params: DeployParams | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> Deployment:
    """Deploy and wire every contract from ``sender``, then hand them to governance when
    ``params.governance`` says so (else ``sender`` stays the owner); returns the manifest."""
    params = params or DeployParams()
    w3 = sender.w3
    owner = sender.address
    start_block = w3.eth.block_number
    timelock = None
    if params.governance is not None:
        # The deployer administers the timelock only until the governor holds its roles.
        timelock = sender.deploy("FabTimelock", params.governance.timelock_delay, [], [ETH], owner)
        log(f"FabTimelock     {timelock.address}")
    treasury = params.treasury or (timelock.address if timelock is not None else owner)
    fab = sender.deploy("FabToken", owner)
    log(f"FabToken        {fab.address}")
    models = sender.deploy("ModelRegistry", owner)
    log(f"ModelRegistry   {models.address}")
    nodes = sender.deploy(
        "NodeRegistry",
        owner,
        fab.address,
        models.address,
        params.min_stake,
        params.unbonding_delay,
    )
    log(f"NodeRegistry    {nodes.address}")
    market = sender.deploy(
        "JobMarketplace",
        owner,
        models.address,
        nodes.address,
        treasury,
        params.fee_bps,
        params.dispute_window,
    )
    log(f"JobMarketplace  {market.address}")
    reputation = sender.deploy(
        "ReputationSystem", market.address, nodes.address, params.heartbeat_epoch
    )
    log(f"ReputationSystem {reputation.address}")
    proofs = sender.deploy("ProofSystem", owner, models.address)
    log(f"ProofSystem     {proofs.address}")
    board = sender.deploy(
        "JobBoard",
        owner,
        models.address,
        nodes.address,
        proofs.address,
        treasury,
        params.fee_bps,
        params.claim_timeout,
        params.challenge_window,
    )
    log(f"JobBoard        {board.address}")
    slasher = sender.deploy("Slasher", owner, nodes.address, market.address, reputation.address)
    log(f"Slasher         {slasher.address}")
    sender.transact(proofs.functions.setBoard(board.address), "setBoard")
    sender.transact(nodes.functions.setSlasher(slasher.address), "setSlasher")
    # Both escrows lock a host's stake for as long as its work can settle.
    for escrow in (market, board):
        sender.transact(nodes.functions.setStakeLocker(escrow.address, True), "setStakeLocker")
        sender.transact(
            escrow.functions.setTokenConfig(
                ETH, True, params.eth_min_deposit, params.eth_max_deposit
            ),
            "allow ETH",
        )
    contracts: dict[str, str] = {
        "FabToken": fab.address,
        "ModelRegistry": models.address,
        "NodeRegistry": nodes.address,
        "JobMarketplace": market.address,
        "ReputationSystem": reputation.address,
        "ProofSystem": proofs.address,
        "JobBoard": board.address,
        "Slasher": slasher.address,
    }
    if params.test_tokens:
        usd = sender.deploy("TestUSD")
        log(f"TestUSD         {usd.address}")
        for escrow in (market, board):
            sender.transact(
                escrow.functions.setTokenConfig(
                    usd.address, True, params.usd_min_deposit, params.usd_max_deposit
                ),
                "allow TestUSD",
            )
        contracts["TestUSD"] = usd.address
    if params.governance is not None and timelock is not None:
        governor = _hand_to_governance(
            sender,
            params.governance,
            timelock,
            fab,
            owned=(fab, models, nodes, market, board, proofs, slasher),
        )
        log(f"FabGovernor     {governor.address}")
        contracts |= {"FabTimelock": timelock.address, "FabGovernor": governor.address}
        owner = timelock.address
    return Deployment(
        chain_id=w3.eth.chain_id,
        contracts=contracts,
        deploy_block=start_block + 1,
        build_hash=build_hash(),
        params={
            "minStake": params.min_stake,
            "unbondingDelay": params.unbonding_delay,
            "feeBps": params.fee_bps,
            "disputeWindow": params.dispute_window,
            "claimTimeout": params.claim_timeout,
            "challengeWindow": params.challenge_window,
            "heartbeatEpoch": params.heartbeat_epoch,
            "treasury": treasury,
            "owner": owner,
        },
    )


def _hand_to_governance(
    sender: TransactionSender,
    params: GovernanceParams,
    timelock: Contract,
    fab: Contract,
    owned: tuple[Contract, ...],
) -> Contract:
    """Deploys FabGovernor over ``timelock``, gives the deployer the initial FAB supply (and
    its votes), hands every contract in ``owned`` to the timelock, and renounces the
    deployer's timelock admin role: from then on only a vote changes the protocol."""
    governor = sender.deploy(
        "FabGovernor",
        fab.address,
        timelock.address,
        params.voting_delay,
        params.voting_period,
        params.proposal_threshold,
        params.quorum_percent,
    )
    for role in ("PROPOSER_ROLE", "CANCELLER_ROLE"):
        role_id = timelock.functions[role]().call()
        sender.transact(timelock.functions.grantRole(role_id, governor.address), f"grant {role}")
    if params.initial_supply:
        sender.transact(fab.functions.mint(sender.address, params.initial_supply), "mint FAB")
        sender.transact(fab.functions.delegate(sender.address), "delegate FAB votes")
    for contract in owned:
        sender.transact(contract.functions.transferOwnership(timelock.address), "hand over")
    admin = timelock.functions.DEFAULT_ADMIN_ROLE().call()
    sender.transact(timelock.functions.renounceRole(admin, sender.address), "renounce admin")
    return governor


def add_model(
    owner: TransactionSender,
    deployment: Deployment,
    repo: str,
    file: str,
    sha256_hex: str,
    tokenizer_sha256_hex: str,
    tier: int = 1,
) -> bytes:
    """Register a model in the ModelRegistry (owner only), pinned to the sha256 of its GGUF
    file and of its tokenizer file (:func:`fabstir_sdk.tokenizer.tokenizer_sha256`); returns
    its id."""
    models = deployment.contract(owner.w3, "ModelRegistry")
    call = models.functions.addModel(
        repo, file, bytes.fromhex(sha256_hex), bytes.fromhex(tokenizer_sha256_hex), tier
    )
    owner.transact(call, f"addModel {file}")
    return bytes(models.functions.modelIdOf(repo, file).call())


def mint_fab(owner: TransactionSender, deployment: Deployment, to: str, amount: int) -> None:
    """Give ``to`` stake tokens (the local FabToken's owner mints)."""
    fab = deployment.contract(owner.w3, "FabToken")
    owner.transact(fab.functions.mint(to, amount), "mint FAB")
