"""Gas used by one paid session's lifecycle on a fresh Anvil: register, open, checkpoint,
settle, withdraw (ETH and TestUSD), by a batch job's (post, claim, complete, release, in
ETH), and by the ReputationSystem's writes on those sessions (record, rate, an audit report
carrying a ~1 KB transcript, heartbeats). Prints a table with the change against the saved
report, then saves the new one (``make gas``), so a contract change shows its gas cost in
review."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from eth_account import Account
from eth_utils.crypto import keccak
from web3.logs import DISCARD

from fabstir_devtools.chain import anvil_account
from fabstir_devtools.network import LocalNetwork, ModelSpec
from fabstir_sdk.contracts import ETH, sign_transcript, sign_voucher
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.contracts.vouchers import VoucherDomain

PRICE = 2 * 10**12
USD_PRICE = 2_000
PEER_ID = bytes.fromhex("002408011220") + bytes(32)
#: An audited answer as a client reports it: about 1 KB of transcript.
AUDIT_RECORD = b'{"prompt":"What is 2+2?","answer":"4"}' * 26


def measure() -> dict[str, int]:
    # The shared launcher's chain (deployment and model registration included); no host
    # processes: the host's transactions are sent here, so every gas figure is one call's.
    with LocalNetwork() as net:
        w3 = net.anvil.w3
        owner = net.owner
        host, client = (TransactionSender(w3, anvil_account(i)) for i in (1, 2))
        params = net.params
        d = net.deployment
        fab, nodes, earnings, market, usd = (
            d.contract(w3, n)
            for n in ("FabToken", "NodeRegistry", "HostEarnings", "JobMarketplace", "TestUSD")
        )
        model_id = net.add_model(ModelSpec.builtin("smollm2-135m-instruct"))
        net.fund_stake(host.address)
        host.transact(fab.functions.approve(nodes.address, params.min_stake), "FAB approve")
        prices = [(model_id, ETH, PRICE), (model_id, usd.address, USD_PRICE)]
        host.transact(
            nodes.functions.register(
                PEER_ID, ["/ip4/127.0.0.1/tcp/4001"], "{}", [model_id], prices, params.min_stake
            ),
            "register",
        )
        domain = VoucherDomain(d.chain_id, market.address)
        sessions: dict[str, int] = {}
        for token, price, deposit in ((ETH, PRICE, 10**15), (usd.address, USD_PRICE, 10**7)):
            tag = "ETH" if token == ETH else "ERC20"
            signer = Account.create()
            if token != ETH:
                client.transact(usd.functions.mint(client.address, deposit), "USD mint")
                client.transact(usd.functions.approve(market.address, deposit), f"approve {tag}")
            value = deposit if token == ETH else 0
            receipt = client.transact(
                market.functions.open(
                    host.address, model_id, token, deposit, price, 3600, signer.address
                ),
                f"open ({tag})",
                value=value,
            )
            opened = market.events.SessionOpened().process_receipt(receipt, errors=DISCARD)
            sid = opened[0]["args"]["sessionId"]
            sessions[tag] = sid
            v1 = sign_voucher(signer, domain, sid, 1000, b"\x01" * 32)
            host.transact(market.functions.checkpoint(*v1.as_args()), f"checkpoint ({tag})")
            v2 = sign_voucher(signer, domain, sid, 2000, b"\x02" * 32)
            host.transact(market.functions.settle(*v2.as_args()), f"settle ({tag})")
            host.transact(earnings.functions.withdraw(token), f"withdraw ({tag})")
        board = d.contract(w3, "JobBoard")
        receipt = client.transact(
            board.functions.post(model_id, b"\x03" * 32, bytes(32), ETH, 10**15, 3600, False),
            "job post (ETH)",
            value=10**15,
        )
        job = board.events.JobPosted().process_receipt(receipt, errors=DISCARD)[0]["args"]["jobId"]
        host.transact(board.functions.claim(job), "job claim")
        host.transact(board.functions.complete(job, b"\x04" * 32, 10**14), "job complete")
        net.anvil.increase_time(params.challenge_window + 1)
        client.transact(board.functions.release(job), "job release")

        reputation = d.contract(w3, "ReputationSystem")
        client.transact(
            reputation.functions.recordSession(sessions["ETH"]), "reputation recordSession"
        )
        client.transact(reputation.functions.rate(sessions["ETH"], 5), "reputation rate")
        client.transact(
            reputation.functions.rate(sessions["ERC20"], 4), "reputation rate (records too)"
        )
        transcript_hash = keccak(AUDIT_RECORD)
        signature = sign_transcript(host.account, domain, sessions["ETH"], transcript_hash)
        client.transact(
            reputation.functions.reportAudit(sessions["ETH"], AUDIT_RECORD, signature, True),
            f"reputation reportAudit ({len(AUDIT_RECORD)} B)",
        )
        host.transact(reputation.functions.heartbeat(), "reputation heartbeat (first)")
        net.anvil.increase_time(params.heartbeat_epoch)
        host.transact(reputation.functions.heartbeat(), "reputation heartbeat")
        keep = (
            "register",
            "open",
            "checkpoint",
            "settle",
            "withdraw",
            "deploy",
            "job",
            "reputation",
        )
        gas = {**owner.gas_used, **host.gas_used, **client.gas_used}
        return {k: v for k, v in gas.items() if k.startswith(keep)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", type=Path, help="save the report as JSON here")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    gas = measure()
    before: dict[str, int] = {}
    if args.output and args.output.exists():
        before = json.loads(args.output.read_text())
    if args.json:
        print(json.dumps(gas, indent=2))
    else:
        print(f"{'operation':<32}{'gas':>10}{'change':>10}")
        for name, used in gas.items():
            change = f"{used - before[name]:+d}" if name in before else "new"
            print(f"{name:<32}{used:>10}{change:>10}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(gas, indent=2) + "\n")
        print(f"saved {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
