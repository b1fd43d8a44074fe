"""What a client's wallet signs for somebody else to submit (and pay the gas of): a rating
(``ReputationSystem.rateBySig``) and a job (``JobBoard.postFor``).

Each contract checks these in an EIP-712 domain of its own (``"Fabstir ReputationSystem"``,
``"Fabstir JobBoard"``, version ``"1"``), with OpenZeppelin's ``SignatureChecker``: an EOA's
ECDSA signature or, for a contract wallet, whatever its ERC-1271 ``isValidSignature`` accepts.
For the test account ``MinimalAccount`` (and any wallet that checks its owner's plain
signature over the hash) that is the owner key signing the same typed data: pass the owner's
key to :func:`sign_rating` / :func:`sign_post` and the account's address as the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

__all__ = [
    "JOB_BOARD_DOMAIN",
    "REPUTATION_DOMAIN",
    "Eip712Domain",
    "PostRequest",
    "post_digest",
    "rating_digest",
    "sign_post",
    "sign_rating",
]

REPUTATION_DOMAIN = "Fabstir ReputationSystem"
JOB_BOARD_DOMAIN = "Fabstir JobBoard"

RATING_TYPES: dict[str, list[dict[str, str]]] = {
    "Rating": [
        {"name": "sessionId", "type": "uint256"},
        {"name": "score", "type": "uint8"},
        {"name": "deadline", "type": "uint256"},
    ]
}
POST_TYPES: dict[str, list[dict[str, str]]] = {
    "Post": [
        {"name": "client", "type": "address"},
        {"name": "modelId", "type": "bytes32"},
        {"name": "inputHash", "type": "bytes32"},
        {"name": "inputCommitment", "type": "bytes32"},
        {"name": "token", "type": "address"},
        {"name": "maxPayment", "type": "uint256"},
        {"name": "duration", "type": "uint64"},
        {"name": "proofRequired", "type": "bool"},
        {"name": "nonce", "type": "uint256"},
        {"name": "deadline", "type": "uint256"},
    ]
}


@dataclass(frozen=True)
class Eip712Domain:
    """One contract's EIP-712 domain (``name``, version ``"1"``, chain, address)."""

    name: str
    chain_id: int
    contract: str

    def as_eip712(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": "1",
            "chainId": self.chain_id,
            "verifyingContract": to_checksum_address(self.contract),
        }


@dataclass(frozen=True)
class PostRequest:
    """A job ``client`` signs for ``JobBoard.postFor``: ``post``'s terms, the client's next
    nonce (``JobBoard.nonces``) and the last second (block time) the signature is valid."""

    client: str
    model_id: bytes
    input_hash: bytes
    max_payment: int
    duration: int
    token: str
    nonce: int
    deadline: int
    input_commitment: bytes = bytes(32)
    proof_required: bool = False

    def as_tuple(self) -> tuple[Any, ...]:
        """The ``PostRequest`` struct argument, in the contract's field order."""
        return (
            to_checksum_address(self.client),
            self.model_id,
            self.input_hash,
            self.input_commitment,
            to_checksum_address(self.token),
            self.max_payment,
            self.duration,
            self.proof_required,
            self.nonce,
            self.deadline,
        )

    def message(self) -> dict[str, Any]:
        for name in ("model_id", "input_hash", "input_commitment"):
            if len(getattr(self, name)) != 32:
                raise ValueError(f"{name} must be 32 bytes")
        keys = [field["name"] for field in POST_TYPES["Post"]]
        return dict(zip(keys, self.as_tuple(), strict=True))


def _rating_message(session_id: int, score: int, deadline: int) -> dict[str, Any]:
    if not 0 <= score < 256 or session_id < 0 or deadline < 0:
        raise ValueError("session id and deadline must be non-negative, score a uint8")
    return {"sessionId": session_id, "score": score, "deadline": deadline}


def _digest(domain: Eip712Domain, types: dict[str, Any], message: dict[str, Any]) -> bytes:
    signable = encode_typed_data(domain.as_eip712(), types, message)
    return keccak(b"\x19" + signable.version + signable.header + signable.body)


def sign_rating(
    wallet: LocalAccount, domain: Eip712Domain, session_id: int, score: int, deadline: int
) -> bytes:
    """The client's signature of a rating (``ReputationSystem.ratingDigest``)."""
    message = _rating_message(session_id, score, deadline)
    return bytes(wallet.sign_typed_data(domain.as_eip712(), RATING_TYPES, message).signature)


def rating_digest(domain: Eip712Domain, session_id: int, score: int, deadline: int) -> bytes:
    """The 32-byte digest ``ReputationSystem.ratingDigest`` returns."""
    return _digest(domain, RATING_TYPES, _rating_message(session_id, score, deadline))


def sign_post(wallet: LocalAccount, domain: Eip712Domain, request: PostRequest) -> bytes:
    """The client's signature of a job for ``JobBoard.postFor`` (``postDigest``)."""
    signed = wallet.sign_typed_data(domain.as_eip712(), POST_TYPES, request.message())
    return bytes(signed.signature)


def post_digest(domain: Eip712Domain, request: PostRequest) -> bytes:
    """The 32-byte digest ``JobBoard.postDigest`` returns."""
    return _digest(domain, POST_TYPES, request.message())
