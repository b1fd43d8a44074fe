"""Payment tokens: ETH (the zero address) or an ERC20 that the JobMarketplace allows.

A session paid in an ERC20 needs the marketplace to be allowed to pull the deposit:
:func:`ensure_allowance` checks the balance and the allowance first and approves exactly the
deposit only when the allowance falls short, so no standing approval is left behind.
"""

from __future__ import annotations

from typing import Any

from web3 import Web3

from fabstir_sdk.contracts.client import Contracts
from fabstir_sdk.contracts.deployment import ETH
from fabstir_sdk.contracts.transactions import with_retries
from fabstir_sdk.errors import ChainError, UsageError

__all__ = ["ERC20_ABI", "ensure_allowance", "resolve_token", "token_symbol"]

#: The part of ERC-20 a client needs.
ERC20_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": name,
        "stateMutability": mutability,
        "inputs": [{"name": f"a{i}", "type": t} for i, t in enumerate(inputs)],
        "outputs": [{"name": "", "type": output}],
    }
    for name, mutability, inputs, output in (
        ("allowance", "view", ("address", "address"), "uint256"),
        ("approve", "nonpayable", ("address", "uint256"), "bool"),
        ("balanceOf", "view", ("address",), "uint256"),
        ("decimals", "view", (), "uint8"),
        ("symbol", "view", (), "string"),
    )
]
#: Contracts of a deployment that are the protocol itself, not payment tokens.
_PROTOCOL = {
    "ModelRegistry",
    "NodeRegistry",
    "JobMarketplace",
    "JobBoard",
    "ProofSystem",
    "ReputationSystem",
    "Slasher",
    "FabTimelock",
    "FabGovernor",
}


def _erc20(contracts: Contracts, address: str) -> Any:
    return contracts.w3.eth.contract(address=Web3.to_checksum_address(address), abi=ERC20_ABI)


def token_symbol(contracts: Contracts, token: str) -> str:
    """``ETH`` or the token's ``symbol()`` (its address if it has none)."""
    if token == ETH:
        return "ETH"
    try:
        return str(with_retries(_erc20(contracts, token).functions.symbol().call, "symbol"))
    except ChainError:
        raise
    except Exception:  # not an ERC20 with a symbol: name it by address
        return token


def resolve_token(contracts: Contracts, token: str | None) -> str:
    """The payment token's address from ``ETH``/None, an address, or the name or symbol of a
    token in the deployment (``TestUSD``, ``tUSD``); :class:`UsageError` otherwise."""
    if token is None or token.strip().upper() == "ETH":
        return ETH
    token = token.strip()
    if token.startswith("0x"):
        if not Web3.is_address(token):
            raise UsageError(f"{token!r} is not a token address")
        return Web3.to_checksum_address(token)
    known = {n: a for n, a in contracts.deployment.contracts.items() if n not in _PROTOCOL}
    for name, address in known.items():
        if name.lower() == token.lower() or token_symbol(contracts, address).lower() == (
            token.lower()
        ):
            return Web3.to_checksum_address(address)
    listed = ", ".join(f"{n} ({token_symbol(contracts, a)})" for n, a in known.items())
    raise UsageError(
        f"unknown token {token!r}: use ETH, an ERC20 address"
        + (f", or one of this deployment's tokens: {listed}" if listed else "")
    )


def ensure_allowance(
    contracts: Contracts, token: str, amount: int, spender: str | None = None
) -> None:
    """Make sure ``spender`` (the marketplace unless named: the job board) may pull ``amount``
    of ``token`` from this account: refuse a balance that is too low, and approve exactly
    ``amount`` when the allowance is short."""
    if token == ETH:
        return
    erc20 = _erc20(contracts, token)
    owner, spender = contracts.address, spender or contracts.market.address
    balance = int(with_retries(erc20.functions.balanceOf(owner).call, "balanceOf"))
    if balance < amount:
        raise ChainError(
            f"{owner} holds {balance} units of {token_symbol(contracts, token)}; "
            f"the deposit needs {amount}"
        )
    allowance = int(with_retries(erc20.functions.allowance(owner, spender).call, "allowance"))
    if allowance < amount:
        contracts.transact(erc20.functions.approve(spender, amount), "approve")
