"""Contract bindings shared by the SDK and the node: ABIs, deployments, EIP-712 vouchers."""

from fabstir_sdk.contracts.vouchers import (
    Voucher,
    VoucherDomain,
    recover_signer,
    sign_voucher,
    voucher_digest,
)

__all__ = ["Voucher", "VoucherDomain", "recover_signer", "sign_voucher", "voucher_digest"]
