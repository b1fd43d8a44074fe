"""Host announcements on gossipsub topic ``/fabstir/hosts/1.0.0``.

Signed with the host's Ethereum key, so a peer cannot speak for another host: the receiver
recovers the signer and requires it to equal the announced host address (and the SDK checks
the announced peer id against the registry's record for that address).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import cbor2
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.protocol import InvalidMessage, MalformedFrame

MAX_ANNOUNCEMENT = 16 * 1024
MAX_AGE_S = 300


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
    """The announcement in ``data``; raises when malformed, forged or stale."""
    if len(data) > MAX_ANNOUNCEMENT:
        raise MalformedFrame("announcement too large")
    try:
        outer: Any = cbor2.loads(data)
        payload, signature = bytes(outer["a"]), bytes(outer["s"])
        fields: Any = cbor2.loads(payload)
        announcement = HostAnnouncement(**fields)
    except Exception as exc:
        raise MalformedFrame(f"undecodable announcement: {exc}") from None
    signer = Account.recover_message(encode_defunct(keccak(payload)), signature=signature)
    if signer.lower() != str(announcement.host).lower():
        raise InvalidMessage("announcement not signed by the host it names")
    if abs((now or time.time()) - announcement.timestamp) > MAX_AGE_S:
        raise InvalidMessage("stale announcement")
    return announcement
