"""Transcript records: one encoding, a commitment a voucher signs, sealed storage that only
the client opens, and a verdict that catches every way a stored answer can be wrong."""

from __future__ import annotations

import dataclasses

import pytest
from eth_account import Account

from fabstir_sdk.contracts import VoucherDomain, sign_voucher
from fabstir_sdk.protocol import Prompt
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.transcripts import (
    ZERO_HASH,
    StoredResult,
    TranscriptRecord,
    open_result,
    result_key,
    sampling_of,
    seal_result,
    verify_result,
    with_answer,
)

DOMAIN = VoucherDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


def record(**changes: object) -> TranscriptRecord:
    prompt = Prompt([{"role": "user", "content": "hi"}], max_tokens=8, temperature=0.7, seed=3)
    base = TranscriptRecord(
        7, 40, ZERO_HASH, b"\x11" * 32, (1, 2, 3), (4, 5), "ab", sampling_of(prompt), "stop"
    )
    return dataclasses.replace(base, **changes)


def test_record_round_trips_and_its_encoding_is_unique() -> None:
    r = record()
    assert TranscriptRecord.decode(r.encode()) == r
    assert r.billed == 40 + 3 + 2
    assert len(r.commitment()) == 32
    for changed in (
        record(prompt_ids=(1, 2, 4)),
        record(completion_ids=(4,)),
        record(text="ac"),
        record(prev=b"\x01" * 32),
        record(model_sha256=b"\x12" * 32),
        record(sampling={**r.sampling, "temperature": 0.8}),
    ):
        assert changed.commitment() != r.commitment()
    # The finish reason is the host's word: the voucher for the last token may precede it.
    assert record(finish_reason=None).commitment() == r.commitment()


def test_a_running_answer_commits_to_what_came_so_far() -> None:
    start = record(completion_ids=(), text="", finish_reason=None)
    assert with_answer(start, [4, 5], "ab", "stop") == record()


def test_sealed_results_open_only_with_the_key_at_their_place() -> None:
    wallet = Account.create()
    key = result_key(bytes(wallet.key), 31337, 7)
    assert key == result_key(bytes(wallet.key), 31337, 7)
    assert key != result_key(bytes(wallet.key), 31337, 8)
    signer = Account.create()
    r = record()
    stored = StoredResult(r, sign_voucher(signer, DOMAIN, 7, r.billed, r.commitment()))
    sealed = seal_result(key, stored)
    assert open_result(key, sealed, 7, 40) == stored
    with pytest.raises(StorageError):
        open_result(key, sealed, 7, 41)  # moved to another answer's place
    with pytest.raises(StorageError):
        open_result(result_key(b"\x01" * 32, 31337, 7), sealed, 7, 40)
    with pytest.raises(StorageError):
        open_result(key, sealed[:-1] + bytes([sealed[-1] ^ 1]), 7, 40)


def test_verdict_pays_only_the_signers_voucher_for_exactly_this_record() -> None:
    signer = Account.create()
    r = record()
    paid = StoredResult(r, sign_voucher(signer, DOMAIN, 7, r.billed, r.commitment()))
    assert verify_result(paid, DOMAIN, signer.address).paid
    assert not verify_result(StoredResult(r, None), DOMAIN, signer.address).paid
    altered = StoredResult(record(text="a lie"), paid.voucher)
    assert not verify_result(altered, DOMAIN, signer.address).paid
    stranger = StoredResult(r, sign_voucher(Account.create(), DOMAIN, 7, r.billed, r.commitment()))
    assert "not the session signer" in verify_result(stranger, DOMAIN, signer.address).reason


def test_a_signed_transcript_names_its_host_and_its_evidence_hashes_to_what_was_signed() -> None:
    from eth_utils.crypto import keccak

    from fabstir_sdk.contracts import sign_transcript
    from fabstir_sdk.transcripts import SignedTranscript

    host = Account.create()
    r = record()
    signed = SignedTranscript(r, sign_transcript(host, DOMAIN, r.session_id, r.commitment()))
    assert signed.signer(DOMAIN) == host.address
    assert keccak(signed.evidence()) == signed.transcript_hash == r.commitment()
    assert SignedTranscript.decode(signed.encode()) == signed
    # Bound to its chain and marketplace, and to its session: elsewhere it names someone else.
    assert signed.signer(VoucherDomain(1, DOMAIN.marketplace)) != host.address
    moved = SignedTranscript(dataclasses.replace(r, session_id=8), signed.host_signature)
    assert moved.signer(DOMAIN) != host.address
    assert SignedTranscript(r, b"\x00" * 65).signer(DOMAIN) is None
    with pytest.raises(StorageError):
        SignedTranscript.decode(b"\xa0")


def test_stored_results_keep_the_host_signature_and_older_ones_still_open() -> None:
    host = Account.create()
    from fabstir_sdk.contracts import sign_transcript
    from fabstir_sdk.storage import cbor

    r = record()
    signature = sign_transcript(host, DOMAIN, r.session_id, r.commitment())
    stored = StoredResult(r, None, signature)
    again = StoredResult.decode(stored.encode())
    assert again == stored and again.signed is not None
    assert again.signed.signer(DOMAIN) == host.address
    older = cbor.dumps({"record": r.encode(), "voucher": None})  # before hosts signed
    assert StoredResult.decode(older).signed is None
