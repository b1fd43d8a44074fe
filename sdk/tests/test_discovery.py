"""Ranking hosts, and which gossip announcements a client believes (real keys and
signatures; the network side is in integration-tests/test_discovery.py)."""

from __future__ import annotations

import secrets
import time
from dataclasses import replace
from typing import Any, cast

import cbor2
import pytest
from eth_account import Account

from fabstir_sdk import discovery as discovery_module
from fabstir_sdk.announcements import (
    MAX_AGE_S,
    MAX_FUTURE_S,
    HostAnnouncement,
    is_valid_announcement,
    sign_announcement,
    verify_announcement,
)
from fabstir_sdk.discovery import Discovery, HostInfo, score
from fabstir_sdk.p2p import peer_id_of_seed
from fabstir_sdk.protocol import InfoResponse, MalformedFrame

PEER = peer_id_of_seed(b"\x01" * 32)
OTHER_PEER = peer_id_of_seed(b"\x02" * 32)


def host(**overrides: Any) -> HostInfo:
    base = HostInfo("0x" + "aa" * 20, PEER, ["/ip4/127.0.0.1/tcp/1"], 1000, 10**20, "")
    return replace(base, **overrides)


def test_score_ranks_price_then_reachability_then_speed_then_load() -> None:
    now = time.time()
    cheap_unseen = host(address="0x1", price=900)
    fresh_fast = host(address="0x2", last_seen=now, tokens_per_second=80.0, load=3)
    fresh_slow = host(address="0x3", last_seen=now, tokens_per_second=20.0)
    dht_fast_idle = host(address="0x4", in_dht=True, tokens_per_second=80.0, load=0)
    stale_fast = host(address="0x5", last_seen=now - 3600, tokens_per_second=500.0)
    dear = host(address="0x6", price=5000, in_dht=True, tokens_per_second=1000.0)
    ranked = sorted(
        [dear, stale_fast, fresh_slow, fresh_fast, cheap_unseen, dht_fast_idle], key=score
    )
    assert [h.address for h in ranked] == ["0x1", "0x4", "0x2", "0x3", "0x5", "0x6"]


def announcement(account: Any, **overrides: Any) -> HostAnnouncement:
    fields: dict[str, Any] = {
        "host": account.address,
        "peer_id": PEER,
        "addrs": ["/ip4/127.0.0.1/tcp/1"],
        "models": [b"\x11" * 32],
        "prices": {"0x" + "00" * 20: 1000},
        "load": 1,
        "tokens_per_second": 42.0,
        "timestamp": int(time.time()),
    }
    fields.update(overrides)
    return HostAnnouncement(**fields)


def fresh_discovery() -> Discovery:
    return Discovery(cast(Any, None), cast(Any, None))


def test_a_genuine_announcement_updates_the_registered_host() -> None:
    account = Account.create()
    discovery = fresh_discovery()
    discovery.on_announcement(sign_announcement(account, announcement(account)), PEER)
    seen = discovery.with_gossip(host(address=account.address))
    assert seen.load == 1 and seen.tokens_per_second == 42.0 and seen.last_seen is not None
    assert not discovery.rejected


def test_forged_announcements_are_ignored() -> None:
    account, forger = Account.create(), Account.create()
    discovery = fresh_discovery()
    discovery.registered[account.address.lower()] = PEER
    # Signed by someone other than the host it names.
    discovery.on_announcement(sign_announcement(forger, announcement(account)), PEER)
    # Signed by the host, published by another peer.
    discovery.on_announcement(sign_announcement(account, announcement(account)), OTHER_PEER)
    # Signed by the host, naming a peer id the registry does not give it.
    wrong_peer = announcement(account, peer_id=OTHER_PEER)
    discovery.on_announcement(sign_announcement(account, wrong_peer), OTHER_PEER)
    # Garbage, a broken signature, and a field of the wrong type.
    discovery.on_announcement(b"\xff" * 10, PEER)
    bad_signature = cbor2.dumps({"a": announcement(account)._payload(), "s": b"\x00" * 65})
    discovery.on_announcement(bad_signature, PEER)
    discovery.on_announcement(sign_announcement(account, announcement(account, load="x")), PEER)
    assert discovery.rejected == {
        "forged_announcement": 2,
        "wrong_peer": 2,
        "malformed_frame": 1,
        "invalid_message": 1,
    }
    assert not discovery.announcements
    assert discovery.with_gossip(host(address=account.address)).load is None


def test_announcements_naming_a_peer_the_registry_does_not_give_are_not_used() -> None:
    account = Account.create()
    discovery = fresh_discovery()  # the registry was not read yet: kept, but not applied
    discovery.on_announcement(
        sign_announcement(account, announcement(account, peer_id=OTHER_PEER)), OTHER_PEER
    )
    assert discovery.with_gossip(host(address=account.address, peer_id=PEER)).load is None


@pytest.mark.parametrize(
    ("age", "reason"),
    [(MAX_AGE_S + 5, "stale"), (-(MAX_FUTURE_S + 60), "future")],
)
def test_stale_and_future_dated_announcements_are_ignored(age: int, reason: str) -> None:
    account = Account.create()
    discovery = fresh_discovery()
    dated = announcement(account, timestamp=int(time.time()) - age)
    discovery.on_announcement(sign_announcement(account, dated), PEER)
    assert discovery.rejected == {"stale_announcement": 1}, reason
    assert not discovery.announcements


def test_an_older_announcement_does_not_replace_a_newer_one() -> None:
    account = Account.create()
    discovery = fresh_discovery()
    now = int(time.time())
    discovery.on_announcement(
        sign_announcement(account, announcement(account, load=5, timestamp=now)), PEER
    )
    discovery.on_announcement(
        sign_announcement(account, announcement(account, load=9, timestamp=now - 10)), PEER
    )
    assert discovery.with_gossip(host(address=account.address)).load == 5


def test_the_cache_is_bounded_and_made_up_hosts_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery_module, "MAX_ANNOUNCEMENTS", 8)
    registered = Account.create()
    discovery = fresh_discovery()
    discovery.registered[registered.address.lower()] = PEER
    discovery.on_announcement(sign_announcement(registered, announcement(registered)), PEER)
    for _ in range(20):  # a stranger's made-up hosts
        fake = Account.create()
        discovery.on_announcement(sign_announcement(fake, announcement(fake)), PEER)
    assert len(discovery.announcements) == 8
    assert registered.address.lower() in discovery.announcements


def test_an_info_answer_newer_than_the_gossip_wins() -> None:
    account = Account.create()
    discovery = fresh_discovery()
    discovery.on_announcement(
        sign_announcement(account, announcement(account, timestamp=int(time.time()) - 30)), PEER
    )
    response = InfoResponse(account.address, [], load=7, tokens_per_second=99.5)
    discovery.infos[account.address.lower()] = (response, time.time())
    seen = discovery.with_gossip(host(address=account.address))
    assert (seen.load, seen.tokens_per_second) == (7, 99.5)


def test_verify_refuses_oversized_announcements() -> None:
    with pytest.raises(MalformedFrame):
        verify_announcement(secrets.token_bytes(17 * 1024))


def test_the_gossip_validator_passes_only_what_the_client_would_keep() -> None:
    account = Account.create()
    genuine = sign_announcement(account, announcement(account))
    assert is_valid_announcement(genuine, PEER)
    assert not is_valid_announcement(genuine, OTHER_PEER)  # relayed for another publisher
    assert not is_valid_announcement(
        sign_announcement(Account.create(), announcement(account)), PEER
    )
    old = announcement(account, timestamp=int(time.time()) - MAX_AGE_S - 5)
    assert not is_valid_announcement(sign_announcement(account, old), PEER)
    assert not is_valid_announcement(b"\x00", PEER)
    discovery = fresh_discovery()
    discovery.registered[account.address.lower()] = OTHER_PEER
    assert not discovery.validate(genuine, PEER)  # not the registered peer id
    assert discovery.rejected == {"wrong_peer": 1}


def test_the_record_divides_the_price_and_a_failed_audit_outweighs_cheap_passes() -> None:
    from fabstir_sdk.contracts.reputation import HostReputation
    from fabstir_sdk.discovery import quality

    def rep(
        sessions: int = 0,
        audits_passed: int = 0,
        audits_failed: int = 0,
        ratings: int = 0,
        rating_sum: int = 0,
    ) -> HostReputation:
        return HostReputation(
            "0xh", sessions, audits_passed, audits_failed, ratings, 0, rating_sum, 0
        )

    fresh = rep()
    assert quality(fresh) == quality(None) == 0.75
    caught = rep(audits_failed=1)
    assert quality(caught) == pytest.approx(0.75 / 11)
    # Passes count only up to the paid sessions recorded: self-reported passes are cheap.
    assert quality(rep(audits_failed=1, audits_passed=100)) == quality(caught)
    assert quality(rep(audits_failed=1, audits_passed=10, sessions=10)) > 2 * quality(caught)
    assert (
        quality(rep(ratings=10, rating_sum=50))
        > quality(fresh)
        > quality(rep(ratings=10, rating_sum=10))
    )
    host = HostInfo("0xa", PEER, [], 100, 0, "", reputation=fresh)
    cheap_but_caught = replace(host, address="0xb", price=50, reputation=caught)
    assert sorted([cheap_but_caught, host], key=score)[0] is host
