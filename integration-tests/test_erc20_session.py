"""A session paid in an ERC20 (the devnet's TestUSD, 6 decimals) end to end, through the SDK
and the CLI: the host prices the token, the client approves exactly the deposit, and the money
adds up to the unit: deposit == host earnings + treasury fee + refund."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

from fabstir_devtools.chain import anvil_account
from fabstir_sdk.models import model_id
from fabstir_sdk.tokens import ERC20_ABI

from conftest import SETTLE_TIMEOUT, Devnet, run

USD_PRICE = 2_000  # TestUSD units (1e-6 tUSD) per 1000 tokens
DEPOSIT = 10**7  # 10 tUSD
MESSAGES = [{"role": "user", "content": "hello"}]


def test_testusd_session_exact_to_the_unit(devnet: Devnet) -> None:
    usd_address = devnet.deployment.contracts["TestUSD"]
    model = model_id("local", devnet.model_path.name)

    async def main() -> None:
        node = await devnet.start_node(1, token_prices=f"{usd_address}={USD_PRICE}")
        client = devnet.client(4)
        try:
            contracts = client.contracts
            usd = contracts.w3.eth.contract(address=usd_address, abi=_mintable_abi())
            me, market = client.account.address, contracts.market.address
            contracts.transact(usd.functions.mint(me, 2 * DEPOSIT), "mint tUSD")

            [offer] = await client.find_hosts(model, token="TestUSD")
            assert offer.address == node.keys.account.address and offer.price == USD_PRICE
            assert usd.functions.allowance(me, market).call() == 0
            before = usd.functions.balanceOf(me).call()

            session = await client.open_session(model, deposit=DEPOSIT, token="tUSD")
            onchain = contracts.session(session.id)
            assert onchain.token == usd_address and onchain.deposit == DEPOSIT
            assert onchain.price == USD_PRICE
            # Approved exactly the deposit, and the deposit consumed it all.
            assert usd.functions.allowance(me, market).call() == 0
            assert usd.functions.balanceOf(me).call() == before - DEPOSIT

            answer = session.chat(MESSAGES, max_tokens=16, temperature=0)
            await answer.collect()
            assert answer.usage is not None and answer.usage.completion_tokens == 16
            billed = session.vouched
            assert billed == answer.usage.total_tokens

            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None and settlement.tokens == billed
            payment = billed * USD_PRICE // 1000
            fee = payment * devnet.deployment.params["feeBps"] // 10_000
            assert (settlement.payment, settlement.fee) == (payment, fee)
            assert settlement.host_amount == payment - fee
            assert settlement.refund == DEPOSIT - payment
            assert settlement.host_amount + settlement.fee + settlement.refund == DEPOSIT
            assert usd.functions.balanceOf(me).call() == before - payment
            host = node.keys.account.address
            assert contracts.earnings_of(host, usd_address) == payment - fee
            assert contracts.earnings_of(host) == 0  # nothing in ETH for this session

            chain = node.sessions.chain  # type: ignore[union-attr]
            held = usd.functions.balanceOf(host).call()
            chain.contracts.withdraw(usd_address)
            assert usd.functions.balanceOf(host).call() == held + payment - fee

            # An allowance that already covers the deposit is used as it is: no approval.
            contracts.transact(usd.functions.approve(market, 3 * DEPOSIT), "approve ahead")
            second = await client.open_session(model, deposit=DEPOSIT, token=usd_address)
            assert usd.functions.allowance(me, market).call() == 2 * DEPOSIT
            await second.close()  # nothing billed: nothing for the host to settle

            # The CLI pays in the token too, and says so.
            chat = await asyncio.to_thread(
                _fabstir,
                devnet,
                "chat",
                "-m",
                "local/" + devnet.model_path.name,
                "--token",
                "TestUSD",
                "--deposit",
                str(DEPOSIT),
                "-p",
                "hi",
                "--max-tokens",
                "4",
            )
            assert chat.returncode == 0, chat.stderr
            assert "tUSD units/1000 tokens" in chat.stderr and "[settled: paid" in chat.stderr
        finally:
            await client.close()
            await node.stop()

    run(main())


def _mintable_abi() -> list[dict[str, Any]]:
    """ERC-20 plus TestUSD's open faucet."""
    mint = {
        "type": "function",
        "name": "mint",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    }
    return [*ERC20_ABI, mint]


def _fabstir(devnet: Devnet, *args: str) -> subprocess.CompletedProcess[str]:
    """``fabstir ARGS`` paying from Anvil account 5 (minted tUSD first)."""
    account = anvil_account(5)
    sender = devnet.client(5)
    try:
        usd = sender.contracts.w3.eth.contract(
            address=devnet.deployment.contracts["TestUSD"], abi=_mintable_abi()
        )
        sender.contracts.transact(usd.functions.mint(account.address, DEPOSIT), "mint tUSD")
    finally:
        asyncio.run(sender.close())
    env = {
        **os.environ,
        "FABSTIR_RPC_URL": devnet.anvil.url,
        "FABSTIR_DEPLOYMENT": str(devnet.deployment_path),
        "FABSTIR_KEY": account.key.hex(),
    }
    return subprocess.run(
        [sys.executable, "-m", "fabstir_sdk", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
