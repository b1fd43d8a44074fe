from typing import Any

import ape

from conftest import ADDRS, ETH, ETH_PRICE, MIN_STAKE, PEER_ID, UNBONDING, register_host


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

    models.addModel("org/b", "b.gguf", b"\x05" * 32, 1, sender=owner)
    other = bytes(models.modelIdOf("org/b", "b.gguf"))
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
    with ape.reverts(nodes.OwnableUnauthorizedAccount):
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
