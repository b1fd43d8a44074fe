"""Host announcements on gossipsub topic ``/fabstir/hosts/1.0.0``.

Signed with the host's Ethereum key, so a peer cannot speak for another host: the receiver
recovers the signer and requires it to equal the announced host address (and the SDK checks
the announced peer id against the registry's record for that address, and against the peer
that published it). Announcements older than :data:`MAX_AGE_S` or dated more than
:data:`MAX_FUTURE_S` ahead are refused, and so is any field of the wrong type or size.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cbor2
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.protocol import UINT256_MAX, InvalidMessage, MalformedFrame, decode_cbor

MAX_ANNOUNCEMENT = 16 * 1024
MAX_AGE_S = 300
MAX_FUTURE_S = 60  # clocks differ; an announcement from further ahead is refused
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


class ForgedAnnouncement(InvalidMessage):
    code = "forged_announcement"


class StaleAnnouncement(InvalidMessage):
    code = "stale_announcement"


@dataclass(frozen=True)
class HostAnnouncement:
    host: str
    peer_id: str
    addrs: list[str]
    models: list[bytes]
    prices: dict[str, int] = field(default_factory=dict)  # payment token -> price / 1000 tokens
    load: int = 0
    tokens_per_second: float = 0.0
    timestamp: int = 0

    def _payload(self) -> bytes:
        return cbor2.dumps(asdict(self), canonical=True)


def sign_announcement(account: LocalAccount, announcement: HostAnnouncement) -> bytes:
    payload = announcement._payload()
    signature = account.sign_message(encode_defunct(keccak(payload))).signature
    return cbor2.dumps({"a": payload, "s": bytes(signature)}, canonical=True)


def verify_announcement(data: bytes, now: float | None = None) -> HostAnnouncement:
    """The announcement in ``data``; raises a :class:`ProtocolError` (only) when it is
    malformed (:class:`MalformedFrame`, :class:`InvalidMessage`), forged
    (:class:`ForgedAnnouncement`), stale or from the future (:class:`StaleAnnouncement`)."""
    if len(data) > MAX_ANNOUNCEMENT:
        raise MalformedFrame("announcement too large")
    try:
        outer: Any = decode_cbor(data)
        payload, signature = outer["a"], outer["s"]
        if not isinstance(payload, bytes) or not isinstance(signature, bytes):
            raise TypeError("a and s must be byte strings")
        fields: Any = decode_cbor(payload)
        announcement = HostAnnouncement(**fields)
    except Exception as exc:
        raise MalformedFrame(f"undecodable announcement: {exc}") from None
    _check_fields(announcement)
    try:
        signer = Account.recover_message(encode_defunct(keccak(payload)), signature=signature)
    except Exception:  # not a signature at all
        raise ForgedAnnouncement("announcement with an invalid signature") from None
    if signer.lower() != announcement.host.lower():
        raise ForgedAnnouncement("announcement not signed by the host it names")
    now = time.time() if now is None else now
    if now - announcement.timestamp > MAX_AGE_S:
        raise StaleAnnouncement(f"announcement {now - announcement.timestamp:.0f} s old")
    if announcement.timestamp - now > MAX_FUTURE_S:
        raise StaleAnnouncement("announcement dated in the future")
    return announcement


def is_valid_announcement(data: bytes, publisher: str) -> bool:
    """Whether gossip ``data`` published by peer ``publisher`` is a genuine, fresh
    announcement of that peer (the gossipsub validator: others are not relayed)."""
    try:
        return verify_announcement(data).peer_id == publisher
    except InvalidMessage:
        return False
    except MalformedFrame:
        return False


def _check_fields(a: HostAnnouncement) -> None:
    def uint(value: Any, high: int = UINT256_MAX) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= high

    checks = [
        (isinstance(a.host, str) and _ADDRESS.fullmatch(a.host) is not None, "host"),
        (isinstance(a.peer_id, str) and 0 < len(a.peer_id) <= 128, "peer_id"),
        (
            isinstance(a.addrs, list)
            and len(a.addrs) <= 16
            and all(isinstance(x, str) and len(x) <= 256 for x in a.addrs),
            "addrs",
        ),
        (
            isinstance(a.models, list)
            and len(a.models) <= 64
            and all(isinstance(m, bytes) and len(m) == 32 for m in a.models),
            "models",
        ),
        (
            isinstance(a.prices, dict)
            and len(a.prices) <= 16
            and all(isinstance(k, str) and uint(v) for k, v in a.prices.items()),
            "prices",
        ),
        (uint(a.load, 2**32), "load"),
        (
            isinstance(a.tokens_per_second, int | float)
            and not isinstance(a.tokens_per_second, bool)
            and math.isfinite(a.tokens_per_second)
            and 0 <= a.tokens_per_second <= 1e9,
            "tokens_per_second",
        ),
        (uint(a.timestamp, 2**63), "timestamp"),
    ]
    for ok, name in checks:
        if not ok:
            raise InvalidMessage(f"announcement field {name} is invalid")
