"""Sealed results: XChaCha20-Poly1305 (IETF) with the nonce in front; any change is refused."""

from __future__ import annotations

import os

import pytest

from fabstir_sdk.errors import FabstirError
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.storage.sealed import NONCE_SIZE, open_sealed, seal

# draft-irtf-cfrg-xchacha-03, appendix A.3.1 (AEAD_XChaCha20_Poly1305 test vector).
PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the "
    b"future, sunscreen would be it."
)
AAD = bytes.fromhex("50515253c0c1c2c3c4c5c6c7")
KEY = bytes(range(0x80, 0xA0))
NONCE = bytes(range(0x40, 0x58))
CIPHERTEXT_AND_TAG = bytes.fromhex(
    "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb"
    "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452"
    "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9"
    "21f9664c97637da9768812f615c68b13b52e"
    "c0875924c1c7987947deafd8780acf49"
)


def test_opens_the_standard_test_vector() -> None:
    assert open_sealed(KEY, NONCE + CIPHERTEXT_AND_TAG, AAD) == PLAINTEXT


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    key = os.urandom(32)
    a, b = seal(key, PLAINTEXT, AAD), seal(key, PLAINTEXT, AAD)
    assert a != b and a[:NONCE_SIZE] != b[:NONCE_SIZE]
    assert len(a) == NONCE_SIZE + len(PLAINTEXT) + 16
    assert open_sealed(key, a, AAD) == open_sealed(key, b, AAD) == PLAINTEXT
    assert open_sealed(key, seal(key, b"")) == b""


def test_tampering_is_refused() -> None:
    key = os.urandom(32)
    sealed = seal(key, PLAINTEXT, AAD)
    for i in (0, NONCE_SIZE - 1, NONCE_SIZE, len(sealed) // 2, len(sealed) - 1):
        altered = bytearray(sealed)
        altered[i] ^= 0x01
        with pytest.raises(StorageError):
            open_sealed(key, bytes(altered), AAD)
    with pytest.raises(StorageError):  # cut short
        open_sealed(key, sealed[:-1], AAD)
    with pytest.raises(StorageError):  # moved to another place (other associated data)
        open_sealed(key, sealed, AAD + b"x")
    with pytest.raises(StorageError):  # someone else's key
        open_sealed(os.urandom(32), sealed, AAD)
    with pytest.raises(StorageError):
        open_sealed(key, sealed[: NONCE_SIZE + 15])
    with pytest.raises(FabstirError):  # one error root for callers
        seal(b"short key", b"x")
