import pytest
from eth_account import Account

from fabstir_sdk.contracts import VoucherDomain, recover_signer, sign_voucher, voucher_digest

DOMAIN = VoucherDomain(31337, "0x5FbDB2315678afecb367f032d93F642f64180aa3")


def test_sign_and_recover_round_trip() -> None:
    signer = Account.create()
    voucher = sign_voucher(signer, DOMAIN, 3, 120, b"\x01" * 32)
    assert recover_signer(DOMAIN, voucher) == signer.address
    assert len(voucher.signature) == 65


@pytest.mark.parametrize(
    "other",
    [VoucherDomain(1, DOMAIN.marketplace), VoucherDomain(31337, "0x" + "22" * 20)],
)
def test_voucher_is_bound_to_its_domain(other: VoucherDomain) -> None:
    signer = Account.create()
    voucher = sign_voucher(signer, DOMAIN, 3, 120)
    assert recover_signer(other, voucher) != signer.address
    assert voucher_digest(other, 3, 120, bytes(32)) != voucher_digest(DOMAIN, 3, 120, bytes(32))


def test_rejects_malformed_transcript_hash() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        sign_voucher(Account.create(), DOMAIN, 1, 1, b"short")
