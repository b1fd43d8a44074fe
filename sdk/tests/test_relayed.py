"""Ratings and jobs a wallet signs for somebody else to submit: the signature recovers to the
signer from the digest the contracts compute (checked against the contracts themselves in
tests/test_smart_account.py), and is bound to its domain and terms."""

from dataclasses import replace

import pytest
from eth_account import Account

from fabstir_sdk.contracts import (
    ETH,
    Eip712Domain,
    PostRequest,
    post_digest,
    rating_digest,
    sign_post,
    sign_rating,
)
from fabstir_sdk.contracts.relayed import JOB_BOARD_DOMAIN, REPUTATION_DOMAIN

REPUTATION = Eip712Domain(REPUTATION_DOMAIN, 31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")
BOARD = Eip712Domain(JOB_BOARD_DOMAIN, 31337, "0xe7f1725E7734CE288F8367e1Bb143E90bb3F0512")
USD = "0x9fE46736679d2D9a65F0992F2272dE9f3c7fa6e0"


def request(client: str) -> PostRequest:
    return PostRequest(client, b"\x11" * 32, b"\x33" * 32, 10**6, 3600, USD, 0, 2**40)


def test_a_rating_signature_recovers_to_the_client_and_is_bound_to_its_terms() -> None:
    client = Account.create()
    signature = sign_rating(client, REPUTATION, 7, 5, 1_000)
    digest = rating_digest(REPUTATION, 7, 5, 1_000)
    assert Account._recover_hash(digest, signature=signature) == client.address
    others = [
        rating_digest(REPUTATION, 8, 5, 1_000),
        rating_digest(REPUTATION, 7, 4, 1_000),
        rating_digest(REPUTATION, 7, 5, 1_001),
        rating_digest(replace(REPUTATION, chain_id=1), 7, 5, 1_000),
        rating_digest(replace(REPUTATION, name=JOB_BOARD_DOMAIN), 7, 5, 1_000),
    ]
    assert digest not in others and len(set(others)) == len(others)


def test_a_post_signature_recovers_to_the_client_and_is_bound_to_its_terms() -> None:
    client = Account.create()
    job = request(client.address)
    signature = sign_post(client, BOARD, job)
    assert Account._recover_hash(post_digest(BOARD, job), signature=signature) == client.address
    for changed in (
        {"nonce": 1},
        {"max_payment": 10**6 + 1},
        {"token": ETH},
        {"proof_required": True},
        {"client": Account.create().address},
    ):
        assert post_digest(BOARD, replace(job, **changed)) != post_digest(BOARD, job)
    assert post_digest(replace(BOARD, contract=USD), job) != post_digest(BOARD, job)
    assert job.as_tuple()[0] == client.address and len(job.as_tuple()) == 10


def test_malformed_terms_are_refused() -> None:
    with pytest.raises(ValueError, match="uint8"):
        sign_rating(Account.create(), REPUTATION, 1, 256, 1)
    with pytest.raises(ValueError, match="32 bytes"):
        post_digest(BOARD, replace(request(USD), input_hash=b"short"))
