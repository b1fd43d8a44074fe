from typing import Any

import ape

from contract_helpers import (
    ADDRS,
    DISPUTE_WINDOW,
    ETH,
    ETH_PRICE,
    MIN_STAKE,
    PEER_ID,
    UNBONDING,
    add_model,
    register_host,
)


def test_register_pulls_stake_and_records_everything(
    registered: Any, nodes: Any, fab: Any, model_id: bytes, usd: Any
) -> None:
    node = nodes.getNode(registered)
    assert node.stake == MIN_STAKE
    assert bytes(node.peerId) == PEER_ID
    assert list(node.addrs) == ADDRS
    assert [bytes(m) for m in node.models] == [model_id]
    assert fab.balanceOf(nodes) == MIN_STAKE
    assert nodes.isActiveHost(registered)
    assert nodes.servesModel(registered, model_id)
    assert nodes.getPrice(registered, model_id, ETH) == ETH_PRICE
    assert nodes.getPrice(registered, model_id, usd) > 0
    assert nodes.hostOfPeerId(PEER_ID) == registered.address
    assert nodes.hostCountForModel(model_id) == 1
    assert list(nodes.hostsForModel(model_id, 0, 10)) == [registered.address]
    assert list(nodes.hostsForModel(model_id, 5, 10)) == []


def test_register_errors(
    nodes: Any, fab: Any, owner: Any, host: Any, host2: Any, model_id: bytes, models: Any, usd: Any
) -> None:
    fab.mint(host2, MIN_STAKE, sender=owner)
    fab.approve(nodes, MIN_STAKE, sender=host2)
    with ape.reverts(nodes.StakeTooLow):
        nodes.register(PEER_ID, ADDRS, "{}", [model_id], [], MIN_STAKE - 1, sender=host2)
    with ape.reverts(nodes.InvalidPeerId):
        nodes.register(b"", ADDRS, "{}", [model_id], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.TooManyAddrs):
        nodes.register(PEER_ID, ADDRS * 9, "{}", [model_id], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.MetadataTooLong):
        nodes.register(PEER_ID, ADDRS, "x" * 4097, [model_id], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.NoModels):
        nodes.register(PEER_ID, ADDRS, "{}", [], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.TooManyModels):
        nodes.register(PEER_ID, ADDRS, "{}", [model_id] * 33, [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.DuplicateModel):
        nodes.register(PEER_ID, ADDRS, "{}", [model_id, model_id], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.ModelNotActive):
        nodes.register(PEER_ID, ADDRS, "{}", [b"\x01" * 32], [], MIN_STAKE, sender=host2)
    other_model = b"\x02" * 32
    with ape.reverts(nodes.ModelNotServed):
        nodes.register(
            PEER_ID, ADDRS, "{}", [model_id], [(other_model, ETH, 1)], MIN_STAKE, sender=host2
        )
    register_host(host, fab, nodes, owner, model_id, usd)
    with ape.reverts(nodes.PeerIdTaken):
        nodes.register(PEER_ID, ADDRS, "{}", [model_id], [], MIN_STAKE, sender=host2)
    with ape.reverts(nodes.AlreadyRegistered):
        nodes.register(b"\x09", ADDRS, "{}", [model_id], [], MIN_STAKE, sender=host)


def test_updates(registered: Any, nodes: Any, models: Any, owner: Any, model_id: bytes) -> None:
    receipt = nodes.updateEndpoint(b"\x07" * 38, ["/ip4/10.0.0.1/tcp/1"], sender=registered)
    assert receipt.events.filter(nodes.EndpointUpdated)
    assert nodes.hostOfPeerId(PEER_ID) == ETH  # the old peer id is released
    assert nodes.hostOfPeerId(b"\x07" * 38) == registered.address
    receipt = nodes.updateMetadata('{"gpu":"4090"}', sender=registered)
    assert receipt.events.filter(nodes.MetadataUpdated)
    assert nodes.getNode(registered).metadata == '{"gpu":"4090"}'

    other = add_model(models, owner, "org/b", "b.gguf", b"\x05" * 32)
    receipt = nodes.updateModels([other], sender=registered)
    assert receipt.events.filter(nodes.ModelsUpdated)
    assert not nodes.servesModel(registered, model_id)
    assert nodes.getPrice(registered, model_id, ETH) == 0  # prices of dropped models lapse
    assert nodes.hostCountForModel(model_id) == 0
    receipt = nodes.setPrices([(other, ETH, 5)], sender=registered)
    assert receipt.events.filter(nodes.PriceSet)
    assert nodes.getPrice(registered, other, ETH) == 5


def test_add_stake(registered: Any, nodes: Any, fab: Any, owner: Any) -> None:
    fab.mint(registered, 5, sender=owner)
    fab.approve(nodes, 5, sender=registered)
    receipt = nodes.addStake(5, sender=registered)
    assert receipt.events.filter(nodes.StakeAdded)
    assert nodes.getNode(registered).stake == MIN_STAKE + 5
    with ape.reverts(nodes.ZeroAmount):
        nodes.addStake(0, sender=registered)


def test_unregister_unbond_withdraw(
    registered: Any, nodes: Any, fab: Any, chain: Any, model_id: bytes
) -> None:
    with ape.reverts(nodes.NotUnbonding):
        nodes.withdrawStake(sender=registered)
    receipt = nodes.unregister(sender=registered)
    assert receipt.events.filter(nodes.NodeUnregistered)
    assert not nodes.isActiveHost(registered)
    assert nodes.hostCountForModel(model_id) == 0
    with ape.reverts(nodes.NotRegistered):
        nodes.updateMetadata("{}", sender=registered)
    with ape.reverts(nodes.StillUnbonding):
        nodes.withdrawStake(sender=registered)
    chain.pending_timestamp += UNBONDING
    before = fab.balanceOf(registered)
    receipt = nodes.withdrawStake(sender=registered)
    assert receipt.events.filter(nodes.StakeWithdrawn)
    assert fab.balanceOf(registered) - before == MIN_STAKE
    assert nodes.getNode(registered).stake == 0


def test_slash_reaches_unbonding_stake(
    registered: Any, nodes: Any, fab: Any, owner: Any, stranger: Any
) -> None:
    # The owner names the slasher (the Slasher contract; here the owner's own account).
    with ape.reverts(nodes.NotSlasher):
        nodes.slash(registered, 1, owner, sender=owner)
    with ape.reverts(nodes.OwnableUnauthorizedAccount):
        nodes.setSlasher(stranger, sender=stranger)
    with ape.reverts(nodes.ZeroAddress):
        nodes.setSlasher(ETH, sender=owner)
    assert nodes.setSlasher(owner, sender=owner).events == [nodes.SlasherSet(owner)]
    nodes.unregister(sender=registered)
    receipt = nodes.slash(registered, 10, owner, sender=owner)
    assert receipt.events.filter(nodes.NodeSlashed)
    assert fab.balanceOf(owner) == 10
    assert nodes.getNode(registered).stake == MIN_STAKE - 10
    with ape.reverts(nodes.SlashExceedsStake):
        nodes.slash(registered, MIN_STAKE, owner, sender=owner)
    with ape.reverts(nodes.ZeroAmount):
        nodes.slash(registered, 0, owner, sender=owner)
    with ape.reverts(nodes.ZeroAddress):
        nodes.slash(registered, 1, ETH, sender=owner)
    with ape.reverts(nodes.NotRegistered):
        nodes.slash(stranger, 1, owner, sender=owner)
    with ape.reverts(nodes.NotSlasher):
        nodes.slash(registered, 1, stranger, sender=stranger)


def test_owner_settings(nodes: Any, owner: Any) -> None:
    assert nodes.setMinStake(7, sender=owner).events.filter(nodes.MinStakeSet)
    assert nodes.minStake() == 7
    assert nodes.setUnbondingDelay(9, sender=owner).events.filter(nodes.UnbondingDelaySet)
    assert nodes.unbondingDelay() == 9


def test_pages_survive_removal(
    nodes: Any, fab: Any, owner: Any, accounts: Any, model_id: bytes, usd: Any
) -> None:
    hosts = [accounts[i] for i in (6, 7, 8)]
    for i, h in enumerate(hosts):
        register_host(h, fab, nodes, owner, model_id, usd, peer_id=bytes([i + 1]) * 38)
    nodes.unregister(sender=hosts[0])
    remaining = set(nodes.hostsForModel(model_id, 0, 1)) | set(nodes.hostsForModel(model_id, 1, 5))
    assert remaining == {hosts[1].address, hosts[2].address}


# ------------------------------------------------------------------ activity needs the stake


def test_host_slashed_below_min_stake_is_not_active(
    registered: Any, nodes: Any, market: Any, fab: Any, owner: Any, open_session: Any
) -> None:
    nodes.setSlasher(owner, sender=owner)
    nodes.slash(registered, MIN_STAKE, owner, sender=owner)  # to zero
    assert not nodes.isActiveHost(registered)
    with ape.reverts(nodes.HostNotActive):
        open_session()
    # Topping the stake up makes it active again; it can still manage its record meanwhile.
    nodes.updateMetadata("{}", sender=registered)
    fab.mint(registered, MIN_STAKE, sender=owner)
    fab.approve(nodes, MIN_STAKE, sender=registered)
    nodes.addStake(MIN_STAKE, sender=registered)
    assert nodes.isActiveHost(registered)
    open_session()
    # Raising the minimum stake deactivates hosts below it.
    nodes.setMinStake(MIN_STAKE + 1, sender=owner)
    assert not nodes.isActiveHost(registered)
    with ape.reverts(nodes.HostNotActive):
        open_session()
    nodes.setMinStake(MIN_STAKE, sender=owner)
    nodes.slash(registered, 1, owner, sender=owner)
    assert not nodes.isActiveHost(registered)


def test_slashed_host_can_still_unregister_and_withdraw(
    registered: Any, nodes: Any, owner: Any, chain: Any, fab: Any
) -> None:
    nodes.setSlasher(owner, sender=owner)  # the owner stands in for the Slasher
    nodes.slash(registered, MIN_STAKE - 5, owner, sender=owner)
    nodes.unregister(sender=registered)
    chain.pending_timestamp += UNBONDING
    before = fab.balanceOf(registered)
    nodes.withdrawStake(sender=registered)
    assert fab.balanceOf(registered) - before == 5


# ------------------------------------------------------------------ unbonding outlasts sessions


def test_stake_stays_locked_while_a_session_can_still_settle(
    registered: Any,
    nodes: Any,
    market: Any,
    open_session: Any,
    chain: Any,
    fab: Any,
    owner: Any,
) -> None:
    longest = market.maxDuration()
    assert longest >= UNBONDING  # a session can outlive the unbonding delay
    opened = open_session(duration=longest)
    session = market.getSession(opened.id)
    assert nodes.getNode(registered).stakeLockedUntil == session.expiresAt + DISPUTE_WINDOW
    nodes.unregister(sender=registered)
    unbonding_ends = nodes.getNode(registered).unbondingEnds
    assert unbonding_ends < market.finalizableAt(opened.id)
    chain.pending_timestamp = unbonding_ends
    with ape.reverts(nodes.StakeLocked):
        nodes.withdrawStake(sender=registered)
    nodes.setSlasher(owner, sender=owner)  # the owner stands in for the Slasher
    nodes.slash(registered, 1, owner, sender=owner)  # still slashable meanwhile
    chain.pending_timestamp = market.finalizableAt(opened.id)
    before = fab.balanceOf(registered)
    receipt = nodes.withdrawStake(sender=registered)
    assert receipt.events.filter(nodes.StakeWithdrawn)
    assert fab.balanceOf(registered) - before == MIN_STAKE - 1


def test_only_the_marketplace_locks_stake(
    registered: Any, nodes: Any, market: Any, owner: Any, stranger: Any, open_session: Any
) -> None:
    with ape.reverts(nodes.NotStakeLocker):
        nodes.lockStake(registered, 2**63, sender=stranger)
    long_session = open_session(duration=7200)
    until = nodes.getNode(registered).stakeLockedUntil
    open_session(duration=600)  # a shorter session never shortens the lock
    assert nodes.getNode(registered).stakeLockedUntil == until
    assert until == market.finalizableAt(long_session.id)
    assert nodes.setStakeLocker(stranger, True, sender=owner).events.filter(nodes.StakeLockerSet)
    nodes.lockStake(registered, until + 1, sender=stranger)
    assert nodes.getNode(registered).stakeLockedUntil == until + 1
    nodes.setStakeLocker(stranger, False, sender=owner)
    with ape.reverts(nodes.NotStakeLocker):
        nodes.lockStake(registered, 2**63, sender=stranger)
    with ape.reverts(nodes.ZeroAddress):
        nodes.setStakeLocker(ETH, True, sender=owner)
    with ape.reverts(nodes.OwnableUnauthorizedAccount):
        nodes.setStakeLocker(stranger, True, sender=stranger)


# ------------------------------------------------------------------ prices lapse


def test_price_lapses_when_a_model_is_dropped_and_added_again(
    registered: Any,
    nodes: Any,
    market: Any,
    models: Any,
    owner: Any,
    model_id: bytes,
    open_session: Any,
    usd: Any,
) -> None:
    other = add_model(models, owner, "org/b", "b.gguf")
    receipt = nodes.updateModels([other], sender=registered)
    assert receipt.events.filter(nodes.PricesCleared)
    nodes.updateModels([model_id], sender=registered)
    assert nodes.servesModel(registered, model_id)
    assert nodes.getPrice(registered, model_id, ETH) == 0
    assert nodes.getPrice(registered, model_id, usd) == 0
    with ape.reverts(nodes.PriceNotOffered):
        open_session()
    # A model kept across an update keeps its price.
    nodes.setPrices([(model_id, ETH, ETH_PRICE)], sender=registered)
    receipt = nodes.updateModels([other, model_id], sender=registered)
    assert not receipt.events.filter(nodes.PricesCleared)
    assert nodes.getPrice(registered, model_id, ETH) == ETH_PRICE
    open_session()


def test_price_lapses_when_the_host_registers_again(
    registered: Any,
    nodes: Any,
    market: Any,
    fab: Any,
    owner: Any,
    model_id: bytes,
    chain: Any,
    open_session: Any,
) -> None:
    receipt = nodes.unregister(sender=registered)
    assert receipt.events.filter(nodes.PricesCleared)
    chain.pending_timestamp += UNBONDING
    nodes.withdrawStake(sender=registered)
    fab.approve(nodes, MIN_STAKE, sender=registered)
    nodes.register(PEER_ID, ADDRS, "{}", [model_id], [], MIN_STAKE, sender=registered)
    assert nodes.isActiveHost(registered)
    assert nodes.getPrice(registered, model_id, ETH) == 0
    with ape.reverts(nodes.PriceNotOffered):
        open_session()


# ------------------------------------------------------------------ admitting new work


def test_admit_checks_the_host_and_its_price_and_locks_its_stake(
    registered: Any,
    nodes: Any,
    models: Any,
    owner: Any,
    stranger: Any,
    host2: Any,
    model_id: bytes,
    usd: Any,
) -> None:
    """What opening a session asks of the registry, in one call (the marketplace's reverts
    come from here: ``test_marketplace.test_open_errors``)."""
    with ape.reverts(nodes.NotStakeLocker, caller=stranger.address):
        nodes.admit(registered, model_id, ETH, 1000, sender=stranger)
    nodes.setStakeLocker(stranger, True, sender=owner)
    assert nodes.admit.call(registered, model_id, ETH, 1000, sender=stranger) == ETH_PRICE
    assert nodes.admit.call(registered, model_id, usd, 1000, sender=stranger) > 0
    receipt = nodes.admit(registered, model_id, ETH, 1000, sender=stranger)
    assert receipt.events.filter(nodes.StakeLockedUntil) == [
        nodes.StakeLockedUntil(registered, 1000)
    ]
    assert nodes.getNode(registered).stakeLockedUntil == 1000
    receipt = nodes.admit(registered, model_id, ETH, 999, sender=stranger)  # never shortened
    assert not receipt.events.filter(nodes.StakeLockedUntil)
    assert nodes.getNode(registered).stakeLockedUntil == 1000

    with ape.reverts(nodes.HostNotActive, host=host2.address):  # never registered
        nodes.admit(host2, model_id, ETH, 1000, sender=stranger)
    other = add_model(models, owner, "org/b", "b.gguf")
    with ape.reverts(nodes.PriceNotOffered, host=registered.address, modelId=other, token=ETH):
        nodes.admit(registered, other, ETH, 1000, sender=stranger)  # a model it doesn't serve
    with ape.reverts(nodes.PriceNotOffered, host=registered.address, modelId=model_id):
        nodes.admit(registered, model_id, stranger, 1000, sender=stranger)  # an unpriced token
    nodes.unregister(sender=registered)
    with ape.reverts(nodes.HostNotActive, host=registered.address):  # unbonding
        nodes.admit(registered, model_id, ETH, 2000, sender=stranger)
    assert nodes.getNode(registered).stakeLockedUntil == 1000
