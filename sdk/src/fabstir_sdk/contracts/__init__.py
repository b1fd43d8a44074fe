"""Contract bindings shared by the SDK and the node: ABIs, deployments, EIP-712 vouchers."""

from fabstir_sdk.contracts.artifacts import Artifact, build_hash, load_artifact
from fabstir_sdk.contracts.deployment import ETH, Deployment, DeploymentError
from fabstir_sdk.contracts.relayed import (
    Eip712Domain,
    PostRequest,
    post_digest,
    rating_digest,
    sign_post,
    sign_rating,
)
from fabstir_sdk.contracts.vouchers import (
    Voucher,
    VoucherDomain,
    recover_signer,
    sign_transcript,
    sign_voucher,
    transcript_digest,
    transcript_signer,
    voucher_digest,
)

__all__ = [
    "ETH",
    "Artifact",
    "Deployment",
    "DeploymentError",
    "Eip712Domain",
    "PostRequest",
    "Voucher",
    "VoucherDomain",
    "build_hash",
    "load_artifact",
    "post_digest",
    "rating_digest",
    "recover_signer",
    "sign_post",
    "sign_rating",
    "sign_transcript",
    "sign_voucher",
    "transcript_digest",
    "transcript_signer",
    "voucher_digest",
]
