"""EIP-712 vouchers: the session signer's promise to pay for ``cumulative_tokens``.

Byte for byte what ``JobMarketplace.voucherDigest`` hashes and ``ECDSA.tryRecover`` checks:
``Voucher(uint256 sessionId,uint256 cumulativeTokens,bytes32 transcriptHash)`` in the domain
``("Fabstir JobMarketplace", "1", chainId, marketplace)``. The domain binds a voucher to one
chain and one contract, the session id to one session.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from fabstir_sdk.contracts.relayed import Eip712Domain

DOMAIN_NAME = "Fabstir JobMarketplace"
VOUCHER_TYPES: dict[str, list[dict[str, str]]] = {
    "Voucher": [
        {"name": "sessionId", "type": "uint256"},
        {"name": "cumulativeTokens", "type": "uint256"},
        {"name": "transcriptHash", "type": "bytes32"},
    ]
}


@dataclass(frozen=True)
class VoucherDomain:
    """Where a voucher is valid: one chain, one marketplace contract."""

    chain_id: int
    marketplace: str

    def as_eip712(self) -> dict[str, Any]:
        return Eip712Domain(DOMAIN_NAME, self.chain_id, self.marketplace).as_eip712()


@dataclass(frozen=True)
class Voucher:
    """A signed claim: session ``session_id`` owes for ``cumulative_tokens`` tokens."""

    session_id: int
    cumulative_tokens: int
    transcript_hash: bytes
    signature: bytes

    def as_args(self) -> tuple[int, int, bytes, bytes]:
        """Arguments for ``checkpoint`` and ``settle``."""
        return (self.session_id, self.cumulative_tokens, self.transcript_hash, self.signature)


def _message(session_id: int, cumulative_tokens: int, transcript_hash: bytes) -> dict[str, Any]:
    if len(transcript_hash) != 32:
        raise ValueError("transcript_hash must be 32 bytes")
    if session_id < 0 or cumulative_tokens < 0:
        raise ValueError("session id and token count must be non-negative")
    return {
        "sessionId": session_id,
        "cumulativeTokens": cumulative_tokens,
        "transcriptHash": transcript_hash,
    }


def sign_voucher(
    signer: LocalAccount,
    domain: VoucherDomain,
    session_id: int,
    cumulative_tokens: int,
    transcript_hash: bytes = b"\x00" * 32,
) -> Voucher:
    """Sign a voucher with the session's ephemeral key (no wallet prompt)."""
    signed = signer.sign_typed_data(
        domain.as_eip712(), VOUCHER_TYPES, _message(session_id, cumulative_tokens, transcript_hash)
    )
    return Voucher(session_id, cumulative_tokens, bytes(transcript_hash), bytes(signed.signature))


def voucher_digest(
    domain: VoucherDomain, session_id: int, cumulative_tokens: int, transcript_hash: bytes
) -> bytes:
    """The 32-byte EIP-712 digest (``JobMarketplace.voucherDigest``)."""
    signable = encode_typed_data(
        domain.as_eip712(), VOUCHER_TYPES, _message(session_id, cumulative_tokens, transcript_hash)
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def recover_signer(domain: VoucherDomain, voucher: Voucher) -> str:
    """The address that signed ``voucher``; compare it with the session's signer."""
    signable = encode_typed_data(
        domain.as_eip712(),
        VOUCHER_TYPES,
        _message(voucher.session_id, voucher.cumulative_tokens, voucher.transcript_hash),
    )
    return str(Account.recover_message(signable, signature=voucher.signature))


#: What a host signs at the end of each answer: "I served the transcript with this hash in
#: this session". Same domain as vouchers (the marketplace that holds the session), so the
#: ReputationSystem checks it against ``JobMarketplace.domainSeparator()``.
TRANSCRIPT_TYPES: dict[str, list[dict[str, str]]] = {
    "Transcript": [
        {"name": "sessionId", "type": "uint256"},
        {"name": "transcriptHash", "type": "bytes32"},
    ]
}


def _transcript_message(session_id: int, transcript_hash: bytes) -> dict[str, Any]:
    if len(transcript_hash) != 32:
        raise ValueError("transcript_hash must be 32 bytes")
    if session_id < 0:
        raise ValueError("session id must be non-negative")
    return {"sessionId": session_id, "transcriptHash": transcript_hash}


def sign_transcript(
    host: LocalAccount, domain: VoucherDomain, session_id: int, transcript_hash: bytes
) -> bytes:
    """The host's signature (with its registered key) over a served transcript's hash."""
    signed = host.sign_typed_data(
        domain.as_eip712(), TRANSCRIPT_TYPES, _transcript_message(session_id, transcript_hash)
    )
    return bytes(signed.signature)


def transcript_digest(domain: VoucherDomain, session_id: int, transcript_hash: bytes) -> bytes:
    """The 32-byte EIP-712 digest (``ReputationSystem.transcriptDigest``)."""
    signable = encode_typed_data(
        domain.as_eip712(), TRANSCRIPT_TYPES, _transcript_message(session_id, transcript_hash)
    )
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def transcript_signer(
    domain: VoucherDomain, session_id: int, transcript_hash: bytes, signature: bytes
) -> str:
    """The address that signed a served transcript; compare it with the session's host."""
    signable = encode_typed_data(
        domain.as_eip712(), TRANSCRIPT_TYPES, _transcript_message(session_id, transcript_hash)
    )
    return str(Account.recover_message(signable, signature=signature))
