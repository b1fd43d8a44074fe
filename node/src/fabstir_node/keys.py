"""The node's two identities, kept on disk in its data dir (mode 0600):

* ``eth.key``: the Ethereum key that stakes, is paid and signs gossip announcements;
* ``p2p.key``: the 32-byte seed of the libp2p (ed25519) key, so the peer id survives restarts
  and stays equal to the one registered on-chain.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir_sdk.p2p import peer_id_of_seed


class KeysError(Exception):
    """Keys are missing or unreadable; the message says how to create them."""


@dataclass(frozen=True)
class NodeKeys:
    account: LocalAccount
    p2p_seed: bytes

    @property
    def peer_id(self) -> str:
        return peer_id_of_seed(self.p2p_seed)


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def create_keys(data_dir: Path, private_key: str | None = None) -> NodeKeys:
    """Create (or import the Ethereum key of) the node's identities; refuses to overwrite."""
    keys = data_dir / "keys"
    for name in ("eth.key", "p2p.key"):
        if (keys / name).exists():
            raise KeysError(f"{keys / name} already exists; refusing to overwrite a node key")
    account = Account.from_key(private_key) if private_key else Account.create()
    _write_secret(keys / "eth.key", account.key.hex().encode())
    _write_secret(keys / "p2p.key", secrets.token_bytes(32))
    return load_keys(data_dir)


def load_keys(data_dir: Path) -> NodeKeys:
    keys = data_dir / "keys"
    try:
        account = Account.from_key((keys / "eth.key").read_text().strip())
        seed = (keys / "p2p.key").read_bytes()
    except FileNotFoundError:
        raise KeysError(f"no node keys in {keys}: run `fabstir-node init` first") from None
    except ValueError as exc:
        raise KeysError(f"unreadable key in {keys}: {exc}") from None
    if len(seed) != 32:
        raise KeysError(f"{keys / 'p2p.key'} must hold 32 bytes")
    return NodeKeys(account, seed)
