"""What a voucher's ``transcriptHash`` commits to, and the stored result that proves it.

Each answer of a session has a :class:`TranscriptRecord`: the exact prompt and completion
token ids, the text, the model's sha256, the sampling parameters, and ``prev``, the transcript
hash of the last voucher before the answer. Client and host build it from the same frames with
the same code, so the client's voucher at the end of an answer signs
``keccak(record.encode())``: the record is chained to every answer before it and the client's
signature binds the host's stored copy. (Mid-answer vouchers commit to the record as it stood:
the ids and text so far.)

At ``done`` the host signs the record's commitment with its registered key
(:class:`SignedTranscript`): it cannot later deny what it served, and anyone holding the
record can audit it (:mod:`fabstir_sdk.audit`).

The host stores a :class:`StoredResult` (the record, the voucher that paid for it and its own
signature), sealed with XChaCha20-Poly1305 under a key only the client can derive
(:func:`result_key`, from its wallet key and the session), at ``/results/<session>/<start>``
in its store. A client that lost the connection fetches it later and checks it with
:func:`verify_result`: no trust in the host is needed beyond its having kept the bytes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import blake3
from eth_utils.crypto import keccak

from fabstir_sdk.contracts import Voucher, VoucherDomain, recover_signer, transcript_signer
from fabstir_sdk.protocol import AuditVerdict, CacheHit, Prompt, cached_tokens
from fabstir_sdk.storage import cbor
from fabstir_sdk.storage.errors import StorageError
from fabstir_sdk.storage.sealed import open_sealed, seal

RECORD_VERSION = 1
ZERO_HASH = bytes(32)
_KEY_CONTEXT = "fabstir 2026-11 session result key v1"
#: The largest stored result we decode (a 64k-token prompt and answer fit easily).
MAX_RESULT = 8 << 20


def sampling_of(prompt: Prompt) -> dict[str, Any]:
    """The parameters that shaped an answer, as both sides record them."""
    return {
        "max_tokens": prompt.max_tokens,
        "temperature": float(prompt.temperature),
        "top_p": float(prompt.top_p),
        "seed": prompt.seed,
        "stop": list(prompt.stop),
    }


def served_from_cache(sampling: dict[str, Any], hit: CacheHit) -> dict[str, Any]:
    """The record's parameters for an answer the host served from its cache: the hit goes
    into the record (and so under the client's voucher)."""
    cache = {"entry": hit.entry, "similarity": float(hit.similarity), "rate_bps": hit.rate_bps}
    return sampling | {"cache": cache}


@dataclass(frozen=True)
class TranscriptRecord:
    session_id: int
    start: int  # billable tokens before this answer: names it within the session
    prev: bytes  # transcript hash of the last voucher before the answer (zeros at first)
    model_sha256: bytes
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    text: str
    sampling: dict[str, Any]
    finish_reason: str | None = None  # None while the answer runs

    def encode(self) -> bytes:
        return cbor.dumps(
            {
                "v": RECORD_VERSION,
                "session": self.session_id,
                "start": self.start,
                "prev": self.prev,
                "model": self.model_sha256,
                "prompt_ids": list(self.prompt_ids),
                "completion_ids": list(self.completion_ids),
                "text": self.text,
                "sampling": self.sampling,
                "finish": self.finish_reason,
            }
        )

    def commitment(self) -> bytes:
        """The ``transcriptHash`` a voucher for this record carries: of everything but the
        finish reason, which is the host's word. (The voucher that pays for an answer's last
        token may come before ``done``; it must commit to the whole answer.)"""
        return keccak(dataclasses.replace(self, finish_reason=None).encode())

    @property
    def billed(self) -> int:
        """The session's billable tokens once this answer is paid."""
        cache = self.sampling.get("cache")
        if cache is not None:
            n = cached_tokens(len(self.prompt_ids), len(self.completion_ids), cache["rate_bps"])
            return self.start + n
        return self.start + len(self.prompt_ids) + len(self.completion_ids)

    @property
    def from_cache(self) -> bool:
        """Served from the host's cache (:func:`served_from_cache`): made for another prompt."""
        return "cache" in self.sampling

    @property
    def audit_tokens(self) -> int:
        """What an audit of this answer bills: the tokens its prefill evaluates."""
        return len(self.prompt_ids) + len(self.completion_ids)

    @classmethod
    def decode(cls, data: bytes) -> TranscriptRecord:
        raw = cbor.loads(data, MAX_RESULT)
        try:
            if raw["v"] != RECORD_VERSION:
                raise StorageError(f"transcript record version {raw['v']} is unknown")
            record = cls(
                raw["session"],
                raw["start"],
                raw["prev"],
                raw["model"],
                tuple(raw["prompt_ids"]),
                tuple(raw["completion_ids"]),
                raw["text"],
                dict(raw["sampling"]),
                raw["finish"],
            )
        except (KeyError, TypeError) as exc:
            raise StorageError(f"malformed transcript record: {exc!r}") from None
        if record.encode() != data:  # unknown fields or wrong types
            raise StorageError("malformed transcript record")
        return record


def audit_commitment(prev: bytes, verdict: AuditVerdict) -> bytes:
    """What the voucher paying for an audit a host ran commits to: the verdict, chained to
    the session's previous transcript hash like an answer."""
    return keccak(
        cbor.dumps(
            {
                "v": RECORD_VERSION,
                "prev": prev,
                "audited": verdict.transcript_hash,
                "passed": verdict.passed,
                "mode": verdict.mode,
                "checked": verdict.checked,
                "agreed": verdict.agreed,
                "outside": verdict.outside,
                "reason": verdict.reason,
            }
        )
    )


def with_answer(
    record: TranscriptRecord, ids: Sequence[int], text: str, finish: str | None
) -> TranscriptRecord:
    """``record`` with more completion (a running answer's state at a voucher)."""
    return TranscriptRecord(
        record.session_id,
        record.start,
        record.prev,
        record.model_sha256,
        record.prompt_ids,
        tuple(ids),
        text,
        record.sampling,
        finish,
    )


@dataclass(frozen=True)
class SignedTranscript:
    """An answer's record with the host's signature over its commitment (``done``): what the
    client keeps, what an audit checks, and, when an audit fails, the public evidence."""

    record: TranscriptRecord
    host_signature: bytes

    @property
    def transcript_hash(self) -> bytes:
        return self.record.commitment()

    def evidence(self) -> bytes:
        """The bytes whose keccak is the transcript hash (``ReputationSystem.reportAudit``)."""
        return dataclasses.replace(self.record, finish_reason=None).encode()

    def signer(self, domain: VoucherDomain) -> str | None:
        """Who signed it (``None`` for a signature that recovers to nobody)."""
        try:
            return transcript_signer(
                domain, self.record.session_id, self.transcript_hash, self.host_signature
            )
        except Exception:
            return None

    def encode(self) -> bytes:
        return cbor.dumps({"record": self.record.encode(), "host_sig": self.host_signature})

    @classmethod
    def decode(cls, data: bytes) -> SignedTranscript:
        raw = cbor.loads(data, MAX_RESULT + 1024)
        try:
            return cls(TranscriptRecord.decode(raw["record"]), bytes(raw["host_sig"]))
        except (KeyError, TypeError) as exc:
            raise StorageError(f"malformed signed transcript: {exc!r}") from None


@dataclass(frozen=True)
class StoredResult:
    record: TranscriptRecord
    voucher: Voucher | None  # the best voucher the host held when it stored the record
    host_signature: bytes | None = None  # the host's signature over the record (``done``)

    @property
    def signed(self) -> SignedTranscript | None:
        if self.host_signature is None:
            return None
        return SignedTranscript(self.record, self.host_signature)

    def encode(self) -> bytes:
        v = self.voucher
        voucher = None if v is None else [v.cumulative_tokens, v.transcript_hash, v.signature]
        return cbor.dumps(
            {"record": self.record.encode(), "voucher": voucher, "host_sig": self.host_signature}
        )

    @classmethod
    def decode(cls, data: bytes) -> StoredResult:
        raw = cbor.loads(data, MAX_RESULT + 1024)
        try:
            record = TranscriptRecord.decode(raw["record"])
            v = raw["voucher"]
            voucher = None if v is None else Voucher(record.session_id, v[0], v[1], v[2])
            signature = raw.get("host_sig")
        except (KeyError, TypeError, IndexError, AttributeError) as exc:
            raise StorageError(f"malformed stored result: {exc!r}") from None
        return cls(record, voucher, None if signature is None else bytes(signature))


def result_key(wallet_key: bytes, chain_id: int, session_id: int) -> bytes:
    """The 32-byte key a client gives the host at ``open``; it can derive it again from its
    wallet key alone, so a lost connection (or a lost machine) loses no result."""
    material = wallet_key + chain_id.to_bytes(32, "big") + session_id.to_bytes(32, "big")
    return blake3.blake3(material, derive_key_context=_KEY_CONTEXT).digest()


def _aad(session_id: int, start: int) -> bytes:
    return b"fabstir result" + session_id.to_bytes(32, "big") + start.to_bytes(32, "big")


def seal_result(key: bytes, result: StoredResult) -> bytes:
    return seal(key, result.encode(), _aad(result.record.session_id, result.record.start))


def open_result(key: bytes, sealed: bytes, session_id: int, start: int) -> StoredResult:
    """Decrypt and decode; the AAD binds the bytes to their session and place in it."""
    result = StoredResult.decode(open_sealed(key, sealed, _aad(session_id, start)))
    if (result.record.session_id, result.record.start) != (session_id, start):
        raise StorageError("the stored result belongs to another answer")
    return result


@dataclass(frozen=True)
class Verdict:
    paid: bool  # a voucher of the session's signer commits to exactly this record
    reason: str

    def as_tuple(self) -> tuple[bool, str]:
        return self.paid, self.reason


def verify_result(result: StoredResult, domain: VoucherDomain, signer: str) -> Verdict:
    """Whether the session's own signer paid for exactly this record."""
    voucher = result.voucher
    if voucher is None:
        return Verdict(False, "no voucher paid for this answer")
    if voucher.transcript_hash != result.record.commitment():
        return Verdict(False, "the voucher commits to another transcript (the answer went on?)")
    try:
        recovered = recover_signer(domain, voucher)
    except Exception:
        return Verdict(False, "the voucher's signature recovers to nobody")
    if recovered.lower() != signer.lower():
        return Verdict(False, f"the voucher is signed by {recovered}, not the session signer")
    return Verdict(True, f"paid: voucher for {voucher.cumulative_tokens} tokens")
