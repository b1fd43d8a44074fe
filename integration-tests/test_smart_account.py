"""An SDK client acting as an ERC-4337 smart account (``FabstirClient(smart_account=...)``):
every transaction goes through the account's ``execute``, signed and paid for by the owner
key, so the account is the session's client, pays the deposit and receives the refund, to the
wei. The account is the test ``MinimalAccount``; no EntryPoint is deployed (its address only
matters to ``validateUserOp``, which this path never calls). Also: a rating and a job the
account signs (ERC-1271) for another wallet to submit, through the SDK."""

from __future__ import annotations

import asyncio

import pytest

from fabstir_devtools.chain import anvil_account
from fabstir_sdk.client import FabstirClient
from fabstir_sdk.contracts import load_artifact
from fabstir_sdk.contracts.jobs import JobBoard, JobStatus
from fabstir_sdk.contracts.transactions import SmartAccountSender, TransactionSender
from fabstir_sdk.errors import ConfigurationError, UsageError
from fabstir_sdk.models import model_id
from fabstir_sdk.tokens import ensure_allowance

from conftest import PRICE, SETTLE_TIMEOUT, Devnet, run

OWNER = 6  # the Anvil account that owns the smart account
RELAYER = 7  # a wallet that submits what the account signed
ENTRY_POINT = "0x0000000071727De22E5E9d8BAf0edAc6f37da032"  # ERC-4337 v0.7's address
FUNDING = 10**16
DEPOSIT = 10**15
MESSAGES = [{"role": "user", "content": "hello"}]


def deploy_account(devnet: Devnet) -> str:
    """A MinimalAccount owned by Anvil account ``OWNER``, funded with ``FUNDING`` wei."""
    owner = TransactionSender(devnet.anvil.w3, anvil_account(OWNER))
    account = owner.deploy("MinimalAccount", ENTRY_POINT, owner.address)
    w3 = devnet.anvil.w3
    owner.send({"to": account.address, "value": FUNDING, "gasPrice": w3.eth.gas_price}, "fund")
    return str(account.address)


def test_a_smart_account_pays_for_a_session_and_gets_its_refund_to_the_wei(
    devnet: Devnet,
) -> None:
    model = model_id("local", devnet.model_path.name)
    account = deploy_account(devnet)

    async def main() -> None:
        node = await devnet.start_node(1)
        client = devnet.client(OWNER, smart_account=account)
        relayer = devnet.client(RELAYER)
        try:
            w3 = client.contracts.w3
            owner = client.account.address
            assert client.address == client.contracts.address == account
            before, owner_before = w3.eth.get_balance(account), w3.eth.get_balance(owner)

            session = await client.open_session(model, deposit=DEPOSIT)
            onchain = client.contracts.session(session.id)
            assert onchain.client == account and onchain.deposit == DEPOSIT
            assert w3.eth.get_balance(account) == before - DEPOSIT  # the account paid it

            answer = session.chat(MESSAGES, max_tokens=16, temperature=0)
            text = await answer.collect()
            assert answer.usage is not None and answer.usage.completion_tokens == 16
            billed = session.vouched
            assert billed == answer.usage.total_tokens

            settlement = await session.close(wait_settlement=SETTLE_TIMEOUT)
            assert settlement is not None, "the host did not settle"
            payment = billed * PRICE // 1000
            fee = payment * devnet.deployment.params["feeBps"] // 10_000
            assert settlement.tokens == billed
            assert (settlement.host_amount, settlement.fee) == (payment - fee, fee)
            assert settlement.refund == DEPOSIT - payment
            assert settlement.host_amount + settlement.fee + settlement.refund == DEPOSIT
            # The refund reached the account: it is down exactly the payment; the owner paid
            # the gas of the open and nothing else.
            assert w3.eth.get_balance(account) == before - payment
            [opened] = client.contracts.market.events.SessionOpened().get_logs(
                from_block=devnet.deployment.deploy_block,
                argument_filters={"client": account},
            )
            receipt = w3.eth.get_transaction_receipt(opened["transactionHash"])
            assert receipt["from"] == owner
            gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
            assert w3.eth.get_balance(owner) == owner_before - gas
            assert client.contracts.earnings_of(node.keys.account.address) == payment - fee

            # Its answers are ours to read back, under the account.
            [result] = await client.results(session.id)
            assert result.paid and result.text == text

            # A rating the account signs (ERC-1271: its owner's signature), sent by another.
            deadline = client.contracts.latest_timestamp() + 600
            signature = client.reputation.sign_rating(client.account, session.id, 5, deadline)
            receipt = relayer.reputation.rate_by_sig(session.id, 5, deadline, signature)
            assert receipt["from"] == relayer.account.address
            assert relayer.reputation.rated(session.id)
            record = relayer.reputation.record(node.keys.account.address)
            assert (record.ratings, record.rating_sum) == (1, 5)
        finally:
            await client.close()
            await relayer.close()
            await node.stop()

    run(main())


def test_a_job_the_account_signs_is_posted_by_a_relayer_and_refunded_to_it(
    devnet: Devnet,
) -> None:
    model = model_id("local", devnet.model_path.name)
    account = deploy_account(devnet)
    client = devnet.client(OWNER, smart_account=account)
    relayer = devnet.client(RELAYER)
    try:
        usd_address = devnet.deployment.contracts["TestUSD"]
        usd = client.contracts.w3.eth.contract(
            address=usd_address, abi=load_artifact("TestUSD").abi
        )
        amount = 10**7
        client.contracts.transact(usd.functions.mint(account, amount), "mint tUSD")
        mine, theirs = JobBoard(client.contracts), JobBoard(relayer.contracts)
        ensure_allowance(client.contracts, usd_address, amount, mine.board.address)

        deadline = client.contracts.latest_timestamp() + 600
        request = theirs.post_request(
            account, model, b"\x33" * 32, amount, 3600, token=usd_address, deadline=deadline
        )
        signature = mine.sign_post(client.account, request)
        job_id = theirs.post_for(request, signature)
        job = theirs.job(job_id)
        assert (job.client, job.token, job.max_payment) == (account, usd_address, amount)
        assert usd.functions.balanceOf(account).call() == 0
        assert theirs.nonce(account) == 1

        settlement = mine.cancel(job_id)  # the account's own job: it cancels it
        assert (settlement.refund, settlement.paid) == (amount, False)
        assert usd.functions.balanceOf(account).call() == amount
        assert theirs.job(job_id).status == JobStatus.REFUNDED
    finally:
        asyncio.run(client.close())
        asyncio.run(relayer.close())


def test_a_smart_account_must_be_a_contract_and_cannot_deploy(devnet: Devnet) -> None:
    key = anvil_account(OWNER).key.hex()
    with pytest.raises(ConfigurationError, match="no contract"):
        FabstirClient(
            devnet.anvil.url, key, devnet.deployment, smart_account=anvil_account(7).address
        )
    with pytest.raises(ConfigurationError, match="not an address"):
        FabstirClient(devnet.anvil.url, key, devnet.deployment, smart_account="0x1234")
    sender = SmartAccountSender(devnet.anvil.w3, anvil_account(OWNER), deploy_account(devnet))
    with pytest.raises(UsageError, match="cannot deploy"):
        sender.deploy("TestUSD")
