"""The node's two identities, kept on disk in ``<data dir>/keys``:

* ``eth.key``: the Ethereum key that stakes, is paid and signs gossip announcements
  (64 hex digits);
* ``p2p.key``: the 32-byte seed of the libp2p (ed25519) key, so the peer id survives restarts
  and stays equal to the one registered on-chain.

The data directory and ``keys/`` are created mode 0700 and the key files 0600. On load, a key
file that group or others may access, or that is not in its format, is refused with a
:class:`KeysError` (exit 4) before its contents are used.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from fabstir_node.config import make_private_dir
from fabstir_node.errors import KeysError
from fabstir_sdk.errors import ConfigurationError
from fabstir_sdk.keyfile import check_private_file, parse_private_key
from fabstir_sdk.p2p import peer_id_of_seed

__all__ = ["KeysError", "NodeKeys", "create_keys", "load_keys"]

P2P_SEED_BYTES = 32


@dataclass(frozen=True)
class NodeKeys:
    account: LocalAccount
    p2p_seed: bytes

    @property
    def peer_id(self) -> str:
        return peer_id_of_seed(self.p2p_seed)


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)  # whatever the umask
        f.write(data)


def create_keys(data_dir: Path, private_key: str | None = None) -> NodeKeys:
    """Create (or import the Ethereum key of) the node's identities; refuses to overwrite.

    ``private_key`` is 64 hex digits (0x optional); read it from a file, the environment or
    standard input, never from a command line."""
    keys = data_dir / "keys"
    for name in ("eth.key", "p2p.key"):
        if (keys / name).exists():
            raise KeysError(f"{keys / name} already exists; refusing to overwrite a node key")
    if private_key is not None:
        try:
            private_key = parse_private_key(private_key, "the imported key")
        except ConfigurationError as exc:
            raise KeysError(str(exc)) from None
    account = Account.from_key(private_key) if private_key else Account.create()
    make_private_dir(data_dir)
    make_private_dir(keys)
    os.chmod(keys, 0o700)
    _write_secret(keys / "eth.key", account.key.hex().encode())
    _write_secret(keys / "p2p.key", secrets.token_bytes(P2P_SEED_BYTES))
    return load_keys(data_dir)


def _check(path: Path) -> None:
    if not path.exists():
        raise KeysError(f"no node key {path}: run `fabstir-node init` first")
    try:
        check_private_file(path)
    except ConfigurationError as exc:
        raise KeysError(str(exc)) from None


def load_keys(data_dir: Path) -> NodeKeys:
    """The node's keys; :class:`KeysError` if either is missing, open to group or others, or
    not in its format."""
    keys = data_dir / "keys"
    eth, p2p = keys / "eth.key", keys / "p2p.key"
    _check(eth)
    _check(p2p)
    try:
        key = parse_private_key(eth.read_text(encoding="ascii"), str(eth))
        seed = p2p.read_bytes()
    except ConfigurationError as exc:
        raise KeysError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeysError(f"cannot read the node keys in {keys}: {exc}") from None
    if len(seed) != P2P_SEED_BYTES:
        raise KeysError(f"{p2p} must hold {P2P_SEED_BYTES} bytes, not {len(seed)}")
    return NodeKeys(Account.from_key(key), seed)
