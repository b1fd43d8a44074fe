"""Sealing data for one reader: XChaCha20-Poly1305 (IETF), the AEAD s5.js encrypts with.

The 24-byte nonce is random (XChaCha's nonce is long enough for that) and travels in front of
the ciphertext; the associated data binds the bytes to where they belong, so a sealed blob
moved to another path or session fails to open.
"""

from __future__ import annotations

import os

from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)
from nacl.exceptions import CryptoError

from fabstir_sdk.storage.errors import StorageError

KEY_SIZE = 32
NONCE_SIZE = 24


def seal(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """``nonce || ciphertext || tag`` for ``plaintext`` under ``key``."""
    if len(key) != KEY_SIZE:
        raise StorageError("a sealing key is 32 bytes")
    nonce = os.urandom(NONCE_SIZE)
    return nonce + crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, aad, nonce, key)


def open_sealed(key: bytes, sealed: bytes, aad: bytes = b"") -> bytes:
    """The plaintext; raises :class:`StorageError` for a wrong key, AAD or any altered byte."""
    if len(key) != KEY_SIZE:
        raise StorageError("a sealing key is 32 bytes")
    if len(sealed) < NONCE_SIZE + 16:
        raise StorageError("sealed data is too short")
    try:
        return crypto_aead_xchacha20poly1305_ietf_decrypt(
            sealed[NONCE_SIZE:], aad, sealed[:NONCE_SIZE], key
        )
    except CryptoError:
        raise StorageError("sealed data does not open with this key (altered, not ours)") from None
