"""Signed mutable roots: S5 registry entries, keyed by the node's libp2p identity.

An entry is S5's: an Ed25519 public key with its ``0xed`` prefix, a 64-bit revision, at most
48 bytes of data, and a signature over ``0x07 || revision (8 bytes, little-endian) ||
len(data) || data`` (the S5 spec's registry record). Serialised, it is that record type byte,
the 33-byte key, the revision, the data length and data, and the 64-byte signature.

Whose key: a node signs with its libp2p identity key (the seed ``P2PHost`` is made from), so
the key of "the latest tree of host X" follows from X's peer id, which the NodeRegistry
already lists, and needs no second key to register or rotate. The data is ``0x1e`` and the
BLAKE3 hash of the root directory block (S5's DirRef link form).

:class:`RootResolver` keeps the highest revision seen per key: an older entry is refused
(:class:`StaleRoot`), as is one whose signature fails or whose key is not the peer's
(:class:`ForgedRoot`).
"""

from __future__ import annotations

from dataclasses import dataclass

from libp2p.peer.id import ID
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey

from fabstir_sdk.storage.blobs import HASH_SIZE, MULTIHASH_BLAKE3
from fabstir_sdk.storage.errors import ForgedRoot, StaleRoot, StorageError

RECORD_TYPE_REGISTRY_ENTRY = 0x07
KEY_TYPE_ED25519 = 0xED
MAX_DATA = 48
MAX_REVISION = (1 << 64) - 1
_ENTRY_MIN = 1 + 33 + 8 + 1 + 64


def public_key_of_seed(seed: bytes) -> bytes:
    """The registry key (``0xed`` + 32 bytes) of a 32-byte Ed25519 seed."""
    return bytes([KEY_TYPE_ED25519]) + bytes(SigningKey(seed).verify_key)


def public_key_of_peer_id(peer_id: str) -> bytes:
    """The registry key of a libp2p peer id (ids of Ed25519 keys inline the key)."""
    try:
        key = ID.from_base58(peer_id).extract_public_key()
    except Exception as exc:
        raise StorageError(f"{peer_id} is not a peer id with an inline key: {exc}") from None
    if key is None or len(key.to_bytes()) != 32:
        raise StorageError(f"{peer_id} is not an Ed25519 peer id")
    return bytes([KEY_TYPE_ED25519]) + key.to_bytes()


def _signed_message(revision: int, data: bytes) -> bytes:
    return (
        bytes([RECORD_TYPE_REGISTRY_ENTRY])
        + revision.to_bytes(8, "little")
        + bytes([len(data)])
        + data
    )


@dataclass(frozen=True)
class RegistryEntry:
    public_key: bytes  # 33 bytes: 0xed + Ed25519 key
    revision: int
    data: bytes
    signature: bytes

    def encode(self) -> bytes:
        return (
            bytes([RECORD_TYPE_REGISTRY_ENTRY])
            + self.public_key
            + self.revision.to_bytes(8, "little")
            + bytes([len(self.data)])
            + self.data
            + self.signature
        )

    @classmethod
    def decode(cls, raw: bytes) -> RegistryEntry:
        if len(raw) < _ENTRY_MIN or raw[0] != RECORD_TYPE_REGISTRY_ENTRY:
            raise StorageError("not an S5 registry entry")
        key, revision, size = raw[1:34], int.from_bytes(raw[34:42], "little"), raw[42]
        if key[0] != KEY_TYPE_ED25519 or size > MAX_DATA or len(raw) != _ENTRY_MIN + size:
            raise StorageError("malformed S5 registry entry")
        return cls(key, revision, raw[43 : 43 + size], raw[43 + size :])

    @property
    def root(self) -> bytes:
        """The root directory hash the entry points to."""
        if len(self.data) != 1 + HASH_SIZE or self.data[0] != MULTIHASH_BLAKE3:
            raise StorageError("the registry entry does not point to a BLAKE3 root")
        return self.data[1:]

    def verify(self) -> None:
        """Raises :class:`ForgedRoot` unless the signature is the key's over this entry."""
        try:
            VerifyKey(self.public_key[1:]).verify(
                _signed_message(self.revision, self.data), self.signature
            )
        except (BadSignatureError, ValueError):
            raise ForgedRoot("the registry entry's signature does not verify") from None


def sign_entry(seed: bytes, revision: int, root: bytes) -> RegistryEntry:
    """A signed entry pointing ``revision`` of our tree at ``root``."""
    if not 0 <= revision <= MAX_REVISION or len(root) != HASH_SIZE:
        raise StorageError("a registry entry needs a 64-bit revision and a 32-byte root")
    data = bytes([MULTIHASH_BLAKE3]) + root
    signature = SigningKey(seed).sign(_signed_message(revision, data)).signature
    return RegistryEntry(public_key_of_seed(seed), revision, data, bytes(signature))


class RootResolver:
    """The newest verified root per key, as far as we have seen."""

    def __init__(self) -> None:
        self._latest: dict[bytes, RegistryEntry] = {}

    def accept(self, raw: bytes, peer_id: str) -> RegistryEntry:
        """Check ``raw`` came from ``peer_id``'s key and is not older than what we know."""
        entry = RegistryEntry.decode(raw)
        if entry.public_key != public_key_of_peer_id(peer_id):
            raise ForgedRoot(f"the root entry is not signed with {peer_id}'s key")
        entry.verify()
        known = self._latest.get(entry.public_key)
        if known is not None and entry.revision < known.revision:
            raise StaleRoot(
                f"{peer_id} offered revision {entry.revision}; {known.revision} was seen"
            )
        if known is not None and entry.revision == known.revision and entry.data != known.data:
            raise ForgedRoot(f"{peer_id} signed two roots for revision {entry.revision}")
        self._latest[entry.public_key] = entry
        return entry
