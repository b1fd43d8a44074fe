"""Governance: FAB is a votes token with permit; a FabGovernor and its FabTimelock own the
protocol. A proposal goes propose → vote → queue → execute on the test chain with time travel,
and nothing else can change the protocol's settings."""

from typing import Any

import ape
from eth_account import Account
from eth_account.messages import encode_typed_data

from contract_helpers import (
    ACTIVE,
    AGAINST,
    DEFEATED,
    ETHER,
    EXECUTED,
    FOR,
    PENDING,
    QUEUED,
    SUCCEEDED,
    TIMELOCK_DELAY,
    VOTING_DELAY,
    VOTING_PERIOD,
    Dao,
)


def test_fab_votes_follow_delegation_on_a_timestamp_clock(
    fab: Any, owner: Any, accounts: Any, chain: Any
) -> None:
    holder, delegate = accounts[8], accounts[9]
    assert fab.CLOCK_MODE() == "mode=timestamp"
    fab.mint(holder, 50 * ETHER, sender=owner)
    assert fab.getVotes(holder) == 0  # tokens count only once delegated
    # Ape's contract objects have a `delegate` attribute of their own.
    fab.invoke_transaction("delegate", delegate, sender=holder)
    assert fab.getVotes(delegate) == 50 * ETHER
    chain.mine(deltatime=10)
    assert fab.clock() == chain.blocks.head.timestamp
    then = fab.clock() - 1
    fab.transfer(owner, 20 * ETHER, sender=holder)
    assert fab.getVotes(delegate) == 30 * ETHER
    chain.mine(deltatime=10)
    assert fab.getPastVotes(delegate, then) == 50 * ETHER  # the snapshot a vote counts


def test_fab_permit_approves_by_signature(fab: Any, stranger: Any) -> None:
    holder = Account.create()
    deadline = 2**40
    domain = fab.eip712Domain()  # ERC-5267: what the token signs against
    signed = Account.sign_message(
        encode_typed_data(
            full_message={
                "types": {
                    "EIP712Domain": [
                        {"name": "name", "type": "string"},
                        {"name": "version", "type": "string"},
                        {"name": "chainId", "type": "uint256"},
                        {"name": "verifyingContract", "type": "address"},
                    ],
                    "Permit": [
                        {"name": "owner", "type": "address"},
                        {"name": "spender", "type": "address"},
                        {"name": "value", "type": "uint256"},
                        {"name": "nonce", "type": "uint256"},
                        {"name": "deadline", "type": "uint256"},
                    ],
                },
                "primaryType": "Permit",
                "domain": {
                    "name": domain.name,
                    "version": domain.version,
                    "chainId": domain.chainId,
                    "verifyingContract": domain.verifyingContract,
                },
                "message": {
                    "owner": holder.address,
                    "spender": stranger.address,
                    "value": 7,
                    "nonce": 0,
                    "deadline": deadline,
                },
            }
        ),
        holder.key,
    )
    # Anyone may submit it: the holder needs no ETH to approve.
    fab.permit(holder.address, stranger, 7, deadline, signed.v, signed.r, signed.s, sender=stranger)
    assert fab.allowance(holder.address, stranger) == 7
    assert fab.nonces(holder.address) == 1
    with ape.reverts(fab.ERC2612InvalidSigner):
        fab.permit(
            holder.address, stranger, 7, deadline, signed.v, signed.r, signed.s, sender=stranger
        )


def test_governance_owns_the_protocol(
    dao: Any,
    owner: Any,
    fab: Any,
    models: Any,
    nodes: Any,
    market: Any,
    board: Any,
    proofs: Any,
) -> None:
    for contract in (fab, models, nodes, market, board, proofs):
        assert contract.owner() == dao.timelock.address
    assert dao.governor.timelock() == dao.timelock.address
    assert dao.governor.token() == fab.address
    # The deployer kept no way in: no owner call, no timelock role.
    with ape.reverts(market.OwnableUnauthorizedAccount):
        market.setFeeBps(1, sender=owner)
    with ape.reverts(models.OwnableUnauthorizedAccount):
        models.deactivateModel(bytes(32), sender=owner)
    with ape.reverts(fab.OwnableUnauthorizedAccount):
        fab.mint(owner, 1, sender=owner)
    for role in ("DEFAULT_ADMIN_ROLE", "PROPOSER_ROLE", "CANCELLER_ROLE"):
        assert not dao.timelock.hasRole(getattr(dao.timelock, role)(), owner)
    assert dao.timelock.hasRole(dao.timelock.PROPOSER_ROLE(), dao.governor)


def test_proposal_goes_from_vote_to_execution(
    dao: Dao,
    market: Any,
    board: Any,
    models: Any,
    nodes: Any,
    usd: Any,
    model_id: bytes,
    owner: Any,
) -> None:
    actions = [
        (market, market.setFeeBps.encode_input(500)),
        (market, market.setDisputeWindow.encode_input(1800)),
        (market, market.setTokenConfig.encode_input(usd, False, 0, 0)),
        (board, board.pause.encode_input()),
        (models, models.deactivateModel.encode_input(model_id)),
        (nodes, nodes.setMinStake.encode_input(500 * ETHER)),
    ]
    description = "Lower the fee, shorten disputes, drop TestUSD, pause jobs, delist SmolLM2"
    proposal = dao.propose(actions, description)
    assert dao.governor.state(proposal) == PENDING
    dao.wait(VOTING_DELAY + 1)
    assert dao.governor.state(proposal) == ACTIVE
    dao.governor.castVote(proposal, FOR, sender=dao.voters[0])
    dao.governor.castVote(proposal, AGAINST, sender=dao.voters[1])  # 60% for, 40% against
    assert dao.governor.proposalVotes(proposal) == (400_000 * ETHER, 600_000 * ETHER, 0)
    dao.wait(VOTING_PERIOD + 1)
    assert dao.governor.state(proposal) == SUCCEEDED
    dao.governor.queue(*dao.args(actions, description), sender=owner)  # anyone may queue
    assert dao.governor.state(proposal) == QUEUED
    with ape.reverts():  # the timelock's delay has not passed
        dao.governor.execute(*dao.args(actions, description), sender=owner)
    assert market.feeBps() == 1000  # nothing changed before execution
    dao.wait(TIMELOCK_DELAY + 1)
    dao.governor.execute(*dao.args(actions, description), sender=owner)
    assert dao.governor.state(proposal) == EXECUTED
    assert market.feeBps() == 500
    assert market.disputeWindow() == 1800
    assert not market.getTokenConfig(usd).allowed
    assert board.paused()
    assert not models.isActive(model_id)
    assert nodes.minStake() == 500 * ETHER


def test_fee_stays_within_its_cap_even_for_governance(dao: Dao, market: Any) -> None:
    actions = [(market, market.setFeeBps.encode_input(market.MAX_FEE_BPS() + 1))]
    dao.pass_and_queue(actions, "A fee above the cap")
    dao.wait(TIMELOCK_DELAY + 1)
    with ape.reverts():
        dao.governor.execute(*dao.args(actions, "A fee above the cap"), sender=dao.voters[0])
    assert market.feeBps() == 1000


def test_a_proposal_voted_down_or_short_of_quorum_is_defeated(
    dao: Dao, market: Any, accounts: Any, fab: Any
) -> None:
    actions = [(market, market.pause.encode_input())]
    voted_down = dao.propose(actions, "Pause sessions")
    small = accounts[8]
    dao.wait(VOTING_DELAY + 1)
    dao.governor.castVote(voted_down, AGAINST, sender=dao.voters[0])
    dao.governor.castVote(voted_down, FOR, sender=dao.voters[1])
    dao.wait(VOTING_PERIOD + 1)
    assert dao.governor.state(voted_down) == DEFEATED
    with ape.reverts(dao.governor.GovernorUnexpectedProposalState):
        dao.governor.queue(*dao.args(actions, "Pause sessions"), sender=small)

    # 1% of the supply votes for and nobody against: short of the 4% quorum.
    fab.transfer(small, 10_000 * ETHER, sender=dao.voters[0])
    fab.invoke_transaction("delegate", small, sender=small)
    dao.wait(1)
    quiet = dao.propose(actions, "Pause sessions, quietly", sender=small)
    dao.wait(VOTING_DELAY + 1)
    dao.governor.castVote(quiet, FOR, sender=small)
    dao.wait(VOTING_PERIOD + 1)
    assert dao.governor.state(quiet) == DEFEATED
    assert not market.paused()


def test_proposing_takes_the_threshold(dao: Dao, market: Any, stranger: Any) -> None:
    with ape.reverts(dao.governor.GovernorInsufficientProposerVotes):
        dao.propose([(market, market.pause.encode_input())], "Pause", sender=stranger)
    assert dao.governor.proposalThreshold() == ETHER


def test_only_governance_changes_its_own_settings(dao: Dao, owner: Any) -> None:
    governor = dao.governor
    with ape.reverts(governor.GovernorOnlyExecutor):
        governor.setVotingPeriod(1, sender=owner)
    actions = [(governor, governor.setVotingPeriod.encode_input(3600))]
    dao.enact(actions, "A longer vote")
    assert governor.votingPeriod() == 3600
    assert governor.votingDelay() == VOTING_DELAY
    assert governor.quorumNumerator() == 4
