"""``fabstir-node``: the operator's command line.

Exit codes: 0 success, 1 verification failed (hash mismatch), 2 usage error,
3 model not found or not loadable, 4 configuration error (bad config, keys, deployment file,
an address it cannot listen on), 5 chain error (unreachable RPC, reverted transaction, not
registered), 6 storage error (no such path, nobody shares the model, a fetch that fails
its pin). Every failure is a :class:`~fabstir_node.errors.NodeError` or an SDK
``FabstirError``; :class:`NodeCommand` turns it into the exit status, in that one place.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from fabstir_node import __version__
from fabstir_node.config import NodeConfig, load_config
from fabstir_node.errors import (
    EXIT_MISMATCH,
    EXIT_MODEL,
    ChainError,
    ConfigError,
    ModelError,
    UsageError,
    exit_code,
)
from fabstir_node.models import (
    BUILTIN,
    HashCache,
    HashMismatch,
    builtin_path,
    probe,
    resolve,
    verify,
)
from fabstir_sdk.errors import FabstirError, map_errors

#: Where `init` may read a key to import (never a command-line argument: `ps` shows those).
KEY_ENV = "FABSTIR_NODE_KEY"  # not FABSTIR_KEY: that is the client's wallet (make devnet)


class NodeCommand(click.Group):
    """The ``fabstir-node`` group: the one place where an error becomes an exit status."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with map_errors():  # web3, requests... become the SDK's typed errors first
                return super().invoke(ctx)
        except Exception as exc:
            code = exit_code(exc)
            if code is None:
                raise  # click's own exits and usage errors; a bug of ours shows its traceback
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(code)


def _config(ctx: click.Context, **overrides: Any) -> NodeConfig:
    return load_config(ctx.obj.get("config_path"), overrides=overrides)


@contextmanager
def _hash_progress(path: Path, show: bool) -> Iterator[Any]:
    """A progress bar on stderr while hashing a large file; silent when not a terminal."""
    size = path.stat().st_size
    if not show or size < 32 << 20 or not sys.stderr.isatty():
        yield None
        return
    bar: Any
    with click.progressbar(length=size, label=f"sha256 {path.name}", file=sys.stderr) as bar:
        yield bar.update


@click.group(cls=NodeCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fabstir-node")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FABSTIR_CONFIG",
    help="TOML config file (default: none; env FABSTIR_CONFIG)",
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """Fabstir host node: serve GGUF models with llama.cpp and get paid per token.

    Every setting can come from the TOML file, from FABSTIR_<NAME> environment variables
    (FABSTIR_PORT, FABSTIR_N_CTX, ...) or from flags, later ones winning.
    """
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path


@main.command()
@click.option("--model", "-m", help="built-in model name or path to a .gguf file")
@click.option("--sha256", "model_sha256", help="pin the model file's sha256 (hex)")
@click.option("--host", help="interface to listen on [127.0.0.1]")
@click.option("--port", "-p", type=int, help="HTTP port [8080]; 0 picks a free one")
@click.option("--n-ctx", type=int, help="context size of one conversation, in tokens [2048]")
@click.option("--threads", "n_threads", type=int, help="threads for one-token steps [cores - 1]")
@click.option("--threads-batch", "n_threads_batch", type=int, help="threads for batches [cores]")
@click.option("--parallel", type=int, help="generations decoded together in one batch [4]")
@click.option("--queue-size", type=int, help="requests that may wait for a slot [8]")
@click.option("--kv-cache-mb", type=int, help="KV cache for live and recent conversations [auto]")
@click.option("--gpu-layers", "n_gpu_layers", type=int, help="layers offloaded to a GPU [0]")
@click.option("--chat-template", help="Jinja chat template (or a file) overriding the GGUF's")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="where the node keeps its state [~/.local/share/fabstir-node]",
)
@click.pass_context
def serve(ctx: click.Context, /, **flags: Any) -> None:
    """Serve a model over an OpenAI-compatible HTTP API.

    \b
    Endpoints: POST /v1/chat/completions, POST /v1/completions (both stream with
    "stream": true), GET /v1/models, GET /health, GET /metrics (Prometheus).
    """
    from fabstir_node.server import HttpServer, prepare_model, serve_http

    config = _config(ctx, **flags)
    model = resolve(config.model, config.model_sha256)
    click.echo(f"model    {model.name}  ({model.path})", err=True)
    with _hash_progress(model.path, True) as progress:
        prepared = prepare_model(config, progress)
    click.echo(
        f"sha256   {prepared.sha256}"
        f"{'  (verified)' if prepared.model.expected_sha256 else '  (not pinned)'}",
        err=True,
    )

    def ready(server: HttpServer) -> None:
        click.echo(
            f"serving  {prepared.model.name} at {server.url}/v1  "
            f"(health {server.url}/health, metrics {server.url}/metrics)",
            err=True,
        )

    async def run() -> None:
        task = asyncio.ensure_future(serve_http(config, prepared, ready))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            click.echo("stopped", err=True)

    try:
        asyncio.run(run())
    except OSError as exc:  # e.g. the port is taken
        raise ConfigError(
            f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc}"
        ) from exc


@main.group()
def models() -> None:
    """List and verify models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
def models_list(as_json: bool) -> None:
    """List the built-in models and whether they are installed."""
    rows = []
    for m in BUILTIN.values():
        path = builtin_path(m)
        rows.append(
            {
                "name": m.name,
                "installed": path is not None,
                "path": str(path) if path else None,
                "sha256": m.sha256,
                "repo": m.repo,
                "file": m.filename,
                "license": m.license,
                "description": m.description,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "installed" if row["installed"] else "not installed (make setup)"
        click.echo(f"{row['name']:<26} {state:<28} {row['description']}")


@models.command("verify")
@click.argument("model")
@click.option("--sha256", "expected", help="expected sha256 (built-ins have their own)")
@click.option("--no-load", is_flag=True, help="only hash; don't test-load the file")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def models_verify(
    ctx: click.Context, model: str, expected: str | None, no_load: bool, as_json: bool
) -> None:
    """Print a model's sha256 and whether it matches the pinned hash (exit 1 if not)."""
    config = _config(ctx)
    resolved = resolve(model, expected)
    result: dict[str, Any] = {
        "model": resolved.name,
        "path": str(resolved.path),
        "expected": resolved.expected_sha256,
        "model_id": "0x" + resolved.model_id.hex(),
    }
    code = 0
    try:
        with _hash_progress(resolved.path, not as_json) as progress:
            result["sha256"] = verify(
                resolved, HashCache(config.data_dir / "hashes.json"), progress
            )
        result["matches"] = True if resolved.expected_sha256 else None
    except HashMismatch as exc:
        result["sha256"], result["matches"] = exc.actual, False
        code = EXIT_MISMATCH
    if not no_load and code == 0:
        try:
            info = probe(resolved.path)
            result["loadable"], result["architecture"] = True, info.architecture
        except ModelError as exc:
            result["loadable"], result["error"] = False, str(exc)
            code = EXIT_MODEL
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        verdict = {True: "matches", False: "DOES NOT MATCH", None: "(nothing pinned)"}
        click.echo(f"{result['sha256']}  {resolved.path}")
        click.echo(f"pinned: {resolved.expected_sha256 or '-'}  {verdict[result['matches']]}")
        if "loadable" in result:
            click.echo("loads in llama.cpp" if result["loadable"] else result["error"])
    sys.exit(code)


@models.command("fetch")
@click.argument("model")
@click.option("--rpc-url", help="chain RPC [http://127.0.0.1:8545]")
@click.option(
    "--deployment",
    type=click.Path(path_type=Path, dir_okay=False),
    help="deployment manifest [deployments/<chainId>.json]",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="installs into <data dir>/models/ [~/.local/share/fabstir-node]",
)
@click.option("--bootstrap", help="comma-separated peers to ask too (multiaddrs with /p2p/)")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def models_fetch(ctx: click.Context, /, model: str, as_json: bool, **flags: Any) -> None:
    """Install a registered model (catalogue name, repo/file or 0x id) from the hosts that
    share it, verified against the ModelRegistry's sha256 pin. No key is needed."""
    from eth_account import Account
    from web3 import Web3

    from fabstir_node.runtime import find_deployment
    from fabstir_node.storage import fetch_model
    from fabstir_sdk.contracts.client import Contracts
    from fabstir_sdk.models import resolve_model_id

    config = _config(ctx, **flags)
    model_id = resolve_model_id(model)
    chain_id = Web3(Web3.HTTPProvider(config.rpc_url)).eth.chain_id
    deployment = find_deployment(config, chain_id)
    contracts = Contracts.connect(config.rpc_url, deployment, Account.create())
    bar: Any = None

    def progress(received: int, total: int) -> None:
        nonlocal bar
        if as_json or not sys.stderr.isatty():
            return
        if bar is None:
            bar = click.progressbar(length=total, label="fetching", file=sys.stderr)
            bar.__enter__()
        bar.update(received - bar.pos)

    try:
        fetched = asyncio.run(
            fetch_model(
                contracts,
                model_id,
                config.data_dir / "models",
                bootstrap=config.bootstrap_peers,
                progress=progress,
            )
        )
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    _emit(
        {
            "path": str(fetched.path),
            "sha256": fetched.sha256.hex(),
            "size": fetched.size,
            "from": ", ".join(fetched.providers) or "(already installed)",
            "verified": True,
        },
        as_json,
    )


# --------------------------------------------------------------------------- paid serving

CHAIN_FLAGS = [
    click.option("--rpc-url", help="chain RPC [http://127.0.0.1:8545]"),
    click.option(
        "--deployment",
        type=click.Path(path_type=Path, dir_okay=False),
        help="deployment manifest [deployments/<chainId>.json]",
    ),
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="keys, journal and caches [~/.local/share/fabstir-node]",
    ),
]


def chain_flags(fn: Any) -> Any:
    for option in reversed(CHAIN_FLAGS):
        fn = option(fn)
    return fn


def _keys(config: NodeConfig) -> Any:
    from fabstir_node.keys import load_keys

    return load_keys(config.data_dir)


def _chain(config: NodeConfig) -> Any:
    from fabstir_node.runtime import connect_chain

    return connect_chain(config, _keys(config))


def _emit(data: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for key, value in data.items():
            click.echo(f"{key:<18} {value}")


def _imported_key(key_file: Path | None, key_stdin: bool) -> tuple[str | None, str]:
    """The Ethereum key to import and where it came from: ``--key-file``, ``--key-stdin``
    or $FABSTIR_NODE_KEY (flags win over the environment); (None, "generated") for a new key."""
    import os

    from fabstir_node.errors import KeysError
    from fabstir_sdk.keyfile import parse_private_key, read_key_file

    if key_file is not None and key_stdin:
        raise UsageError("give the key to import once: --key-file or --key-stdin, not both")
    try:
        if key_file is not None:
            return read_key_file(key_file), f"imported from {key_file}"
        if key_stdin:
            if sys.stdin.isatty():
                text = click.prompt("Ethereum private key", hide_input=True, err=True)
            else:
                text = sys.stdin.readline()
            return parse_private_key(text, "standard input"), "imported from standard input"
        if os.environ.get(KEY_ENV):
            key = parse_private_key(os.environ[KEY_ENV], f"${KEY_ENV}")
            return key, f"imported from ${KEY_ENV}"
    except FabstirError as exc:  # the SDK's ConfigurationError: same message, the node's type
        raise KeysError(str(exc)) from None
    return None, "generated"


@main.command()
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="import the Ethereum key held in this file (mode 0600, 64 hex digits)",
)
@click.option("--key-stdin", is_flag=True, help="import the Ethereum key read from stdin")
@click.option("--private-key", hidden=True, help="removed: it showed the key to `ps`")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def init(
    ctx: click.Context,
    /,
    key_file: Path | None,
    key_stdin: bool,
    private_key: str | None,
    data_dir: Path | None,
    as_json: bool,
) -> None:
    """Create the node's keys (Ethereum + libp2p) and a config file in its data dir.

    \b
    A new Ethereum key is made unless one is imported, from (first found):
      --key-file PATH   a file only you can read (chmod 600)
      --key-stdin       standard input (a hidden prompt on a terminal)
      $FABSTIR_NODE_KEY the environment
    Never pass a key as an argument: every user of the machine can read it with `ps`.
    The data dir is created mode 0700, the key files 0600.
    """
    from fabstir_node.keys import create_keys

    if private_key is not None:
        raise UsageError(
            "--private-key was removed because `ps` shows it to every user: put the key in "
            f"a file only you can read (--key-file), pipe it (--key-stdin) or set ${KEY_ENV}"
        )
    config = _config(ctx, data_dir=data_dir)
    key, source = _imported_key(key_file, key_stdin)
    keys = create_keys(config.data_dir, key)
    config_file = config.data_dir / "config.toml"
    if not config_file.exists():
        config_file.write_text(
            f'[node]\nmodel = "{config.model}"\nrpc_url = '
            f'"{config.rpc_url}"\nprice = {config.price}\n'
        )
    _emit(
        {
            "address": keys.account.address,
            "key": source,
            "peer_id": keys.peer_id,
            "data_dir": str(config.data_dir),
            "config": str(config_file),
        },
        as_json,
    )


@main.command()
@chain_flags
@click.option("--model", "-m", help="model to offer (built-in name or GGUF path)")
@click.option("--sha256", "model_sha256", help="pin a GGUF given by path")
@click.option("--price", type=int, help="wei per 1000 tokens")
@click.option("--token-prices", help="ERC20 prices: 0xTOKEN=PRICE,... (per 1000 tokens)")
@click.option("--stake", type=int, help="FAB (wei) to stake")
@click.option("--p2p-listen", help="libp2p address to advertise, e.g. /ip4/1.2.3.4/tcp/4001")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def register(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Stake and register in the NodeRegistry with the model, its price and the peer id."""
    from fabstir_node.chain import SessionRefused
    from fabstir_node.runtime import served_model
    from fabstir_node.server import prepare_model

    config = _config(ctx, **flags)
    keys = _keys(config)
    chain = _chain(config)
    prepared = prepare_model(config)
    served = served_model(prepared, config)
    try:
        chain.check_model(served.model_id, prepared.sha256, prepared.model.path)
    except SessionRefused as exc:
        raise ChainError(
            f"{exc} (model id 0x{served.model_id.hex()}): the ModelRegistry owner must add "
            "it with these hashes"
        ) from exc
    balance = chain.stake_balance()
    if balance < config.stake:
        raise ChainError(
            f"stake token balance too low: you hold {balance} FAB wei and staking needs "
            f"{config.stake}; get FAB to {chain.address} first"
        )
    models = [served]
    if config.proven_model_map:  # each bundle checked against its pin, setup run once
        from fabstir_node.proven_jobs import proven_models

        models += [model for model, _ in proven_models(chain.contracts, config)]
    listen = config.p2p_listen
    addrs = [] if listen.endswith("/tcp/0") else [f"{listen}/p2p/{keys.peer_id}"]
    from fabstir_sdk.p2p import peer_id_bytes

    try:
        with map_errors():
            receipt = chain.register(
                peer_id_bytes(keys.peer_id), addrs, {"model": served.name}, models, config.stake
            )
    except FabstirError as exc:  # a revert, an unreachable RPC
        raise ChainError(f"registration failed: {exc}") from exc
    _emit(
        {
            "address": chain.address,
            "peer_id": keys.peer_id,
            "model": served.name,
            "model_id": "0x" + served.model_id.hex(),
            "price": config.price,
            "stake": config.stake,
            "tx": receipt["transactionHash"].hex(),
        },
        as_json,
    )


@main.command()
@chain_flags
@click.option("--model", "-m", help="built-in model name or path to a .gguf file")
@click.option("--sha256", "model_sha256", help="pin a GGUF given by path")
@click.option("--host", help="HTTP interface [127.0.0.1]")
@click.option("--port", "-p", type=int, help="HTTP port [8080]; 0 picks a free one")
@click.option("--p2p-listen", help="libp2p listen address [/ip4/127.0.0.1/tcp/0]")
@click.option("--bootstrap", help="comma-separated peers to join (multiaddrs with /p2p/)")
@click.option("--price", type=int, help="wei per 1000 tokens (must match the registration)")
@click.option("--token-prices", help="ERC20 prices: 0xTOKEN=PRICE,... (per 1000 tokens)")
@click.option(
    "--http/--no-http",
    "http_api",
    default=None,
    help="also serve the unpaid OpenAI-compatible API (/v1/...) on --host:--port "
    "[off; config http_api]; /health and /metrics are always served",
)
@click.option(
    "--mcp/--no-mcp",
    "mcp",
    default=None,
    help="also serve MCP (cache and document search for LLM tools) on "
    "--mcp-host:--mcp-port/mcp [off; 127.0.0.1:7531; a token (FABSTIR_MCP_TOKEN) is "
    "required off loopback]",
)
@click.option("--mcp-host", help="MCP interface [127.0.0.1]")
@click.option("--mcp-port", type=int, help="MCP port [7531]")
@click.pass_context
def run(ctx: click.Context, /, **flags: Any) -> None:
    """Serve paid sessions over libp2p, settling on-chain.

    \b
    HTTP on --host:--port: /health and /metrics always; the OpenAI-compatible API
    (/v1/chat/completions, /v1/completions, /v1/models) only with --http, because it
    answers anyone who can reach the port without payment.
    """
    import logging

    from fabstir_node.runtime import HostNode

    config = _config(ctx, **flags)
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("libp2p", "uvicorn", "mcp"):  # a line per connection or MCP session
        logging.getLogger(noisy).setLevel(logging.WARNING)
    node = HostNode(config, _keys(config))

    async def main_task() -> None:
        status = await node.start()
        for key, value in (
            ("address", status.address),
            ("peer id", status.peer_id),
            ("listening", " ".join(status.addrs)),
            ("model", f"{status.model} sha256 {status.sha256} (verified)"),
            ("model id", status.model_id),
            ("price", f"{status.price} wei / 1000 tokens"),
            *(("price", f"{p} / 1000 tokens in {t}") for t, p in config.token_price_map.items()),
            (
                "api",
                f"{status.http}/v1  metrics {status.http}/metrics"
                if config.http_api
                else f"off (--http serves it)  health {status.http}/health  "
                f"metrics {status.http}/metrics",
            ),
            ("journal", str(config.data_dir / "journal.sqlite")),
            *([("mcp", f"http://{config.mcp_host}:{config.mcp_port}/mcp")] if config.mcp else []),
        ):
            click.echo(f"{key:<10} {value}", err=True)
        click.echo("ready", err=True)
        await asyncio.Event().wait()

    async def runner() -> None:
        task = asyncio.ensure_future(main_task())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass
        finally:
            await node.stop()

    try:
        asyncio.run(runner())
    except OSError as exc:  # e.g. the HTTP port is taken
        raise ConfigError(f"cannot start the node: {exc.strerror or exc}") from exc
    click.echo("stopped", err=True)


@main.command()
@chain_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Registration, sessions in flight, vouchers held, pending settlements, earnings."""
    from fabstir_node.journal import OPEN, SETTLED, SETTLING
    from fabstir_node.runtime import open_journal
    from fabstir_sdk.contracts import ETH

    config = _config(ctx, **flags)
    chain = _chain(config)
    record = chain.contracts.host(chain.address)
    journal = open_journal(config, chain)
    sessions = journal.sessions()
    journal.close()
    owed = [s for s in sessions if s.state in (OPEN, SETTLING) and s.best]
    data = {
        "address": chain.address,
        "registered": record.registered,
        "active": record.active,
        "stake": record.stake,
        "sessions_open": sum(s.state == OPEN for s in sessions),
        "sessions_settled": sum(s.state == SETTLED for s in sessions),
        "pending_settlements": len(owed),
        "vouched_unsettled_tokens": sum(s.best.cumulative_tokens for s in owed if s.best),
        "pending": [
            {
                "id": s.session_id,
                "vouched": s.best.cumulative_tokens if s.best else 0,
                "attempts": s.attempts,
                "last_error": s.last_error,
            }
            for s in owed
        ],
        "earnings_wei": chain.earnings(ETH),
        "sessions": [
            {
                "id": s.session_id,
                "state": s.state,
                "billed": s.billed_tokens,
                "vouched": s.best.cumulative_tokens if s.best else 0,
                "settle_tx": s.settle_tx,
            }
            for s in sessions[-20:]
        ],
    }
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for key, value in data.items():
        if key not in ("sessions", "pending"):
            click.echo(f"{key:<26} {value}")
    for p in data["pending"]:
        error = f", last error: {p['last_error']}" if p["last_error"] else ""
        click.echo(
            f"  pending {p['id']:<6} vouched {p['vouched']:<7} attempts {p['attempts']}{error}"
        )
    for s in data["sessions"]:
        click.echo(
            f"  session {s['id']:<6} {s['state']:<9} billed {s['billed']:<7} vouched {s['vouched']}"
        )


@main.command()
@chain_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def earnings(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """What the host can withdraw (wei)."""
    from fabstir_sdk.contracts import ETH

    chain = _chain(_config(ctx, **flags))
    _emit({"address": chain.address, "eth_wei": chain.earnings(ETH)}, as_json)


@main.command()
@chain_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def withdraw(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Withdraw all ETH earnings (sessions' and jobs') to the host's address."""
    from fabstir_sdk.contracts import ETH

    chain = _chain(_config(ctx, **flags))
    amount = chain.earnings(ETH)
    if amount == 0:
        raise ChainError("nothing to withdraw yet")
    receipts = chain.contracts.withdraw(ETH)
    txs = [receipt["transactionHash"].hex() for receipt in receipts]
    _emit({"withdrawn_wei": amount, "txs": txs}, as_json)


@main.command()
@chain_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def unregister(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """Stop offering models; the stake unbonds and is withdrawable after the delay."""
    chain = _chain(_config(ctx, **flags))
    if not chain.contracts.host(chain.address).registered:
        raise ChainError("this host is not registered")
    receipt = chain.unregister()
    _emit({"address": chain.address, "tx": receipt["transactionHash"].hex()}, as_json)


@main.command("withdraw-stake")
@chain_flags
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def withdraw_stake(ctx: click.Context, /, as_json: bool, **flags: Any) -> None:
    """After `unregister` and the unbonding delay: take the stake back."""
    chain = _chain(_config(ctx, **flags))
    record = chain.contracts.host(chain.address)
    if not record.unbonding_ends or record.stake == 0:
        raise ChainError("nothing is unbonding: run `fabstir-node unregister` first")
    try:
        with map_errors():
            receipt = chain.withdraw_stake()
    except FabstirError as exc:
        raise ChainError(
            f"the stake is still unbonding, until unix time {record.withdrawable_at} "
            f"(the unbonding delay, and the end of every session opened with it) ({exc})"
        ) from exc
    _emit({"withdrawn_fab_wei": record.stake, "tx": receipt["transactionHash"].hex()}, as_json)


# --------------------------------------------------------------------------- storage


@main.group()
def storage() -> None:
    """Inspect, verify and garbage-collect the node's content-addressed store."""


STORE_FLAGS = [
    click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help="the node's data directory; the store is its store/ [~/.local/share/fabstir-node]",
    ),
    click.option("--json", "as_json", is_flag=True, help="machine-readable output"),
]


def store_flags(fn: Any) -> Any:
    for option in reversed(STORE_FLAGS):
        fn = option(fn)
    return fn


@contextmanager
def _open_store(ctx: click.Context, data_dir: Path | None, write: bool = False) -> Iterator[Any]:
    from fabstir_sdk.storage.tree import Store

    config = _config(ctx, **({"data_dir": data_dir} if data_dir else {}))
    path = config.data_dir / "store"
    if not (path / "index.sqlite").exists():
        raise ConfigError(f"no store at {path} (a node creates it when it first runs)")
    store = Store(path, read_only=not write)
    try:
        yield store
    finally:
        store.close()


@storage.command("stats")
@store_flags
@click.pass_context
def storage_stats(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """Blocks, bytes, the root and its revision."""
    with _open_store(ctx, data_dir) as store:
        stats = store.blocks.stats()
        data = {
            "root": store.root.hex(),
            "revision": store.revision,
            "blocks": stats.blocks,
            "bytes": stats.bytes,
            "pinned_blocks": stats.pinned,
        }
    _emit(data, as_json)


@storage.command("ls")
@click.argument("path", default="/")
@store_flags
@click.option("--limit", type=int, default=100, show_default=True, help="entries per page")
@click.option("--cursor", help="continue a listing where a previous page ended")
@click.pass_context
def storage_ls(
    ctx: click.Context,
    path: str,
    data_dir: Path | None,
    as_json: bool,
    limit: int,
    cursor: str | None,
) -> None:
    """List a directory of the tree, one page at a time."""
    with _open_store(ctx, data_dir) as store:
        page = store.list(path, cursor=cursor, limit=limit)
    rows = [entry.describe() for entry in page.entries]
    if as_json:
        click.echo(json.dumps({"entries": rows, "cursor": page.cursor}, indent=2))
        return
    for row in rows:
        size = "-" if row.get("size") is None else str(row["size"])
        click.echo(f"{row['kind']:<4} {size:>12}  {row['name']}")
    if page.cursor:
        click.echo(f"(more: --cursor {page.cursor})", err=True)


@storage.command("cat")
@click.argument("path")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False))
@click.pass_context
def storage_cat(ctx: click.Context, path: str, data_dir: Path | None) -> None:
    """Write a file of the tree to standard output (verified end to end as it is read)."""
    with _open_store(ctx, data_dir) as store:
        data = store.get(path)
    sys.stdout.buffer.write(data)


@storage.command("verify")
@store_flags
@click.pass_context
def storage_verify(ctx: click.Context, data_dir: Path | None, as_json: bool) -> None:
    """Re-hash every block (exit 1 if any is damaged: it is moved aside and refetched)."""
    with _open_store(ctx, data_dir) as store:
        report = store.blocks.verify()
    _emit(
        {
            "checked": report.checked,
            "corrupt": [h.hex() for h in report.corrupt],
            "missing": [h.hex() for h in report.missing],
            "ok": report.ok,
        },
        as_json,
    )
    sys.exit(0 if report.ok else EXIT_MISMATCH)


@storage.command("gc")
@store_flags
@click.option(
    "--grace",
    type=float,
    default=3600.0,
    show_default=True,
    help="keep unreferenced blocks younger than this many seconds (a write may be linking them)",
)
@click.pass_context
def storage_gc(ctx: click.Context, data_dir: Path | None, as_json: bool, grace: float) -> None:
    """Delete blocks nothing references any more (old versions, abandoned fetches)."""
    with _open_store(ctx, data_dir, write=True) as store:
        report = store.blocks.gc(grace)
    _emit(
        {
            "deleted_blocks": report.blocks,
            "freed_bytes": report.bytes,
            "stray_files": report.orphan_files + report.temp_files + report.quarantined_files,
        },
        as_json,
    )


# --------------------------------------------------------------------------- mcp


@main.command("mcp")
@click.option("--host", help="interface to listen on [127.0.0.1]; any other needs a token")
@click.option("--port", "-p", type=int, help="port [7531]")
@click.option(
    "--token",
    help="bearer token clients must send (Authorization: Bearer ...); required off "
    "loopback [env FABSTIR_MCP_TOKEN]",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="the node's data directory (its store/ and models/) [~/.local/share/fabstir-node]",
)
@click.pass_context
def mcp(
    ctx: click.Context, host: str | None, port: int | None, token: str | None, data_dir: Path | None
) -> None:
    """Serve the node's cache and documents to LLM tools over MCP (streamable HTTP at
    http://HOST:PORT/mcp), from the node's store, while the node itself is stopped
    (a running node holds the store: use `run --mcp` there).

    \b
    Tools:
      search_cache(query, k=5)      cached answers close in meaning to the query, among
                                    those their clients shared (never a private answer)
      search_documents(query, k=5)  the host's own documents, by meaning
      add_document(text, title)     add a document (kept under /documents/ in the store)
      read_result(path)             a file of the store, e.g. /results/<session>/<start>:
                                    its size, CID and content (UTF-8 text, else base64)

    Bound to anything but a loopback address it requires --token (exit 4 otherwise).
    """
    import logging

    from fabstir_node.cache.semantic import SemanticCache
    from fabstir_node.config import make_private_dir
    from fabstir_node.documents import DocumentIndex
    from fabstir_node.embeddings import Embedder
    from fabstir_node.mcp_server import build_mcp_server, is_loopback, serve_mcp
    from fabstir_node.storage import StoreFiles
    from fabstir_sdk.storage.errors import StorageError
    from fabstir_sdk.storage.tree import Store

    config = _config(ctx, mcp_host=host, mcp_port=port, mcp_token=token, data_dir=data_dir)
    host, port, token = config.mcp_host, config.mcp_port, config.mcp_token or None
    if not 0 < port <= 65535:
        raise ConfigError(f"mcp_port must be 1..65535, got {port}")
    if not token and not is_loopback(host):
        raise ConfigError(
            f"MCP on {host} (not a loopback address) needs a token: --token or FABSTIR_MCP_TOKEN"
        )
    logging.basicConfig(
        level=config.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("uvicorn", "mcp"):  # a line per session and per start/stop step
        logging.getLogger(noisy).setLevel(logging.WARNING)
    make_private_dir(config.data_dir)
    try:
        store = Store(config.data_dir / "store")
    except StorageError as exc:
        raise StorageError(f"{exc} (a running node serves MCP itself: run --mcp)") from exc
    embedder = Embedder.in_dir(config.data_dir / "models")
    try:
        embedder.load()
        files = StoreFiles(store)
        cache = SemanticCache(files, embedder, ttl=config.cache_ttl)
        documents = DocumentIndex(files, embedder)
        server = build_mcp_server(cache=cache, documents=documents, storage=files, token=token)

        async def runner() -> None:
            await cache.start()
            await documents.start()
            task = asyncio.ensure_future(serve_mcp(server, host, port, token))
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            await asyncio.sleep(0)  # the task validates and binds before its first await
            if task.done():
                await task  # raises why it could not start
            shown = f"[{host}]" if ":" in host else host
            click.echo(
                f"mcp      http://{shown}:{port}/mcp  ({len(cache.entries)} cached answers, "
                f"{len(documents)} documents{', bearer token required' if token else ''})",
                err=True,
            )
            try:
                await task
            except asyncio.CancelledError:
                pass
            finally:
                await documents.close()
                await cache.close()

        try:
            asyncio.run(runner())
        except OSError as exc:  # the port is taken, the address is not ours
            raise ConfigError(f"cannot serve MCP on {host}:{port}: {exc.strerror or exc}") from exc
    finally:
        embedder.close()
        store.close()
    click.echo("stopped", err=True)
