"""Deploy the Fabstir contracts and write ``deployments/<chainId>.json``.

    python scripts/deploy.py                       # fresh Anvil, kept running until Ctrl-C
    python scripts/deploy.py --exit                # fresh Anvil, deploy, stop
    python scripts/deploy.py --no-governance       # the deployer stays the single owner
    python scripts/deploy.py --rpc-url URL         # an existing chain (FABSTIR_DEPLOYER_KEY)
    ape run deploy [--network ethereum:local:foundry]

By default the contracts end up owned by a FabTimelock that FabGovernor's FAB votes drive: a
local chain gets periods of seconds (a proposal passes in minutes of chain time), any other
chain the production parameters (``PRODUCTION_GOVERNANCE``, and a 14-day unbonding delay that
outlasts a slashing vote). The deployer receives the initial
FAB supply, delegated to itself, and keeps no other power.

The manifest holds the addresses, the deploy block and the hash of the ABIs the contracts were
built from, so the SDK and the node refuse a manifest that doesn't match their bindings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from eth_account import Account
from web3 import Web3

from fabstir_devtools.chain import (
    PRODUCTION_GOVERNANCE,
    PRODUCTION_UNBONDING_DELAY,
    Anvil,
    DeployParams,
    GovernanceParams,
    anvil_account,
    deploy_protocol,
)
from fabstir_sdk.contracts import Deployment
from fabstir_sdk.contracts.transactions import TransactionSender
from fabstir_sdk.errors import ConfigurationError
from fabstir_sdk.keyfile import read_key_file

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENTS = ROOT / "deployments"
ANVIL_CHAIN_ID = 31337


def manifest_path(chain_id: int, directory: Path = DEPLOYMENTS) -> Path:
    return directory / f"{chain_id}.json"


def deploy_to(
    w3: Web3, key: str | None, out_dir: Path, quiet: bool = False, governance: bool = True
) -> Deployment:
    chain_id = w3.eth.chain_id
    local = chain_id in (ANVIL_CHAIN_ID, 1337)
    if key:
        deployer = Account.from_key(key)
    elif local:
        deployer = anvil_account(0)
    else:
        raise SystemExit("set FABSTIR_DEPLOYER_KEY (or --key-file) to deploy to a real chain")
    votes = (GovernanceParams() if local else PRODUCTION_GOVERNANCE) if governance else None
    params = DeployParams(test_tokens=local, governance=votes)
    if not local:
        params = dataclasses.replace(params, unbonding_delay=PRODUCTION_UNBONDING_DELAY)
    log = (lambda _m: None) if quiet else (lambda m: print(m, file=sys.stderr))
    deployment = deploy_protocol(TransactionSender(w3, deployer), params, log=log)
    path = manifest_path(chain_id, out_dir)
    deployment.save(path)
    log(f"wrote {path}")
    return deployment


def cli(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Deploy the Fabstir contracts and write deployments/<chainId>.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rpc-url", help="chain to deploy to (default: start a fresh Anvil)")
    parser.add_argument(
        "--key-file",
        type=Path,
        help="file holding the deployer key, mode 0600 (default: $FABSTIR_DEPLOYER_KEY; "
        "Anvil's first key on a local chain); never a key on the command line: `ps` shows it",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEPLOYMENTS,
        help="where to write <chainId>.json (default: deployments/)",
    )
    parser.add_argument(
        "--exit", action="store_true", help="stop the Anvil this script started once deployed"
    )
    parser.add_argument(
        "--no-governance",
        action="store_true",
        help="keep the deployer as the single owner (local development); by default a "
        "timelock driven by FAB votes owns every contract",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    args = parser.parse_args(argv)
    try:
        args.private_key = (
            read_key_file(args.key_file)
            if args.key_file
            else os.environ.get("FABSTIR_DEPLOYER_KEY") or None
        )
    except ConfigurationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4

    if args.rpc_url:
        w3 = Web3(Web3.HTTPProvider(args.rpc_url))
        if not w3.is_connected():
            print(f"cannot reach {args.rpc_url}", file=sys.stderr)
            return 3
        deployment = deploy_to(
            w3, args.private_key, args.out_dir, args.json, not args.no_governance
        )
        _report(deployment, args.json, manifest_path(deployment.chain_id, args.out_dir))
        return 0

    with Anvil() as anvil:
        deployment = deploy_to(
            anvil.w3, args.private_key, args.out_dir, args.json, not args.no_governance
        )
        _report(deployment, args.json, manifest_path(deployment.chain_id, args.out_dir))
        if args.exit:
            return 0
        print(
            f"Anvil running at {anvil.url} (chain {deployment.chain_id}); Ctrl-C to stop",
            file=sys.stderr,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


def _report(deployment: Deployment, as_json: bool, path: Path) -> None:
    if as_json:
        print(path.read_text(), end="")
    else:
        print(json.dumps(deployment.contracts, indent=2))


def main() -> None:
    """Entry point for ``ape run deploy``: deploy on Ape's connected network."""
    from ape import networks

    deploy_to(networks.provider.web3, os.environ.get("FABSTIR_DEPLOYER_KEY"), DEPLOYMENTS)


if __name__ == "__main__":
    raise SystemExit(cli())
