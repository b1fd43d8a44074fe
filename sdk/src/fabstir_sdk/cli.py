"""``fabstir``: the app developer's command line.

Wallet, chain and deployment come from flags or ``FABSTIR_*`` variables, on top of a profile:
``local`` (default: Anvil on 127.0.0.1:8545, deployments/31337.json) or ``base-sepolia``
(needs only FABSTIR_RPC_URL and deployments/84532.json). The key is read from
``--key-file``/FABSTIR_KEY_FILE (mode 0600) or FABSTIR_KEY and is never printed. With
``--smart-account``/FABSTIR_SMART_ACCOUNT, that key is an ERC-4337 account's owner and every
transaction goes through the account's ``execute``: the account pays and is the client.

Exit codes: 0 success, 1 the host or session failed, 2 usage error, 3 no host available,
4 configuration error, 5 chain error, 6 storage error: every failure is a
:class:`FabstirError` whose ``exit_code`` :class:`FabstirCommand` turns into the exit status,
in that one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click

from fabstir_sdk import __version__
from fabstir_sdk.errors import (
    ChainError,
    ConfigurationError,
    FabstirError,
    HostError,
    map_errors,
)
from fabstir_sdk.keyfile import parse_private_key, read_key_file
from fabstir_sdk.models import resolve_model_id

PROFILES = {"local": ("http://127.0.0.1:8545", 31337), "base-sepolia": (None, 84532)}


@dataclass
class Settings:
    profile: str
    rpc_url: str | None
    deployment: Path | None
    key: str | None
    key_file: Path | None
    smart_account: str | None = None  # transact through this account's `execute`


class FabstirCommand(click.Group):
    """The ``fabstir`` group: the one place where an error becomes an exit status. A lower
    layer's exception is mapped to its :class:`FabstirError` first (``map_errors``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with map_errors():
                return super().invoke(ctx)
        except FabstirError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            ctx.exit(exc.exit_code)


def _wallet_key(settings: Settings) -> str | None:
    """The wallet key from ``--key-file``/FABSTIR_KEY_FILE, else FABSTIR_KEY (or None)."""
    if settings.key_file is not None:
        return read_key_file(settings.key_file)
    if settings.key:
        return parse_private_key(settings.key, "FABSTIR_KEY")
    return None


def _client(settings: Settings, *, wallet: bool = True, **options: Any) -> Any:
    """A client on the configured chain; ``wallet=False`` for read-only commands, which work
    without a key (a throwaway one stands in: it never signs anything). ``options`` go to
    :class:`FabstirClient` (``audit=``)."""
    from eth_account import Account

    from fabstir_sdk.client import FabstirClient
    from fabstir_sdk.contracts import Deployment

    default_rpc, chain_id = PROFILES[settings.profile]
    rpc = settings.rpc_url or default_rpc
    if rpc is None:
        raise ConfigurationError(f"profile {settings.profile} needs FABSTIR_RPC_URL (or --rpc-url)")
    key = _wallet_key(settings)
    if key is None:
        if wallet:
            raise ConfigurationError(
                "no wallet key: set FABSTIR_KEY or FABSTIR_KEY_FILE (or --key-file)"
            )
        key = Account.create().key.hex()
    path = settings.deployment or Path("deployments") / f"{chain_id}.json"
    if wallet and settings.smart_account:
        options.setdefault("smart_account", settings.smart_account)
    return FabstirClient(str(rpc), key, Deployment.load(path), **options)


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@click.group(cls=FabstirCommand, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fabstir")
@click.option(
    "--profile",
    type=click.Choice(sorted(PROFILES)),
    default="local",
    envvar="FABSTIR_PROFILE",
    show_default=True,
)
@click.option("--rpc-url", envvar="FABSTIR_RPC_URL", help="chain RPC (env FABSTIR_RPC_URL)")
@click.option(
    "--deployment",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FABSTIR_DEPLOYMENT",
    help="deployment manifest [deployments/<chainId>.json]",
)
@click.option(
    "--key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FABSTIR_KEY_FILE",
    help="file holding the wallet's private key",
)
@click.option(
    "--smart-account",
    envvar="FABSTIR_SMART_ACCOUNT",
    help="pay and act as this ERC-4337 account (the key is its owner; env FABSTIR_SMART_ACCOUNT)",
)
@click.pass_context
def main(
    ctx: click.Context,
    profile: str,
    rpc_url: str | None,
    deployment: Path | None,
    key_file: Path | None,
    smart_account: str | None,
) -> None:
    """Use the Fabstir marketplace: find LLM hosts, chat through paid P2P sessions, or run a
    local OpenAI-compatible gateway that pays hosts for any OpenAI client."""
    import os

    key = os.environ.get("FABSTIR_KEY")
    ctx.obj = Settings(profile, rpc_url, deployment, key, key_file, smart_account)


@main.command()
@click.option("--model", "-m", required=True, help="catalogue name, repo/file or 0x model id")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_obj
def hosts(settings: Settings, model: str, as_json: bool) -> None:
    """Hosts serving a model, best first: price, stake, speed, load, their on-chain record
    (settled sessions, audits passed/failed, mean rating, heartbeats in the last day) and
    whether they answer now. The rank divides the price by what the record is worth (see
    ``fabstir_sdk.discovery.score``)."""
    resolve_model_id(model)  # a malformed name is a usage error, before touching the chain
    client = _client(settings, wallet=False)

    async def main_() -> list[Any]:
        from fabstir_sdk.discovery import score
        from fabstir_sdk.errors import FabstirError

        async with client:
            found = await client.find_hosts(model)

            async def ask(host: Any) -> bool:  # load and speed, straight from the host
                try:
                    await client.discovery.ask_info(host)
                    return True
                except FabstirError:
                    return False

            answered = await asyncio.gather(*(ask(h) for h in found))
            rows = [
                replace(client.discovery.with_gossip(h), reachable=ok)
                for h, ok in zip(found, answered, strict=True)
            ]
            return sorted(rows, key=score)  # ranked again with what the hosts said

    rows = _run(main_())
    if as_json:
        click.echo(json.dumps([asdict(h) for h in rows], indent=2))
        return
    if not rows:
        click.echo("no host serves this model")
        return
    click.echo(
        f"{'host':<44}{'price/1k tok':>14}{'stake FAB':>11}{'tok/s':>8}{'load':>6}"
        f"{'sessions':>10}{'audits ok/failed':>18}{'rating':>10}{'uptime':>8}  reachable"
    )
    for h in rows:
        reachable = "yes" if h.reachable else "no"
        speed = f"{h.tokens_per_second:.0f}" if h.tokens_per_second else "-"
        load = str(h.load) if h.load is not None else "-"
        rep = h.reputation
        sessions = str(rep.sessions) if rep else "-"
        audits = f"{rep.audits_passed}/{rep.audits_failed}" if rep else "-"
        rating = f"{rep.mean_rating:.1f} ({rep.ratings})" if rep and rep.mean_rating else "-"
        uptime = f"{rep.uptime_beats}/{rep.uptime_window}" if rep else "-"
        click.echo(
            f"{h.address:<44}{h.price:>14}{h.stake / 10**18:>11.0f}{speed:>8}{load:>6}"
            f"{sessions:>10}{audits:>18}{rating:>10}{uptime:>8}  {reachable}"
        )


@main.command()
@click.option("--model", "-m", required=True, help="catalogue name, repo/file or 0x model id")
@click.option("--host", help="pin a host address")
@click.option(
    "--deposit",
    type=int,
    default=10**15,
    show_default=True,
    help="escrow, in wei (or in the --token's smallest unit)",
)
@click.option("--max-price", type=int, help="refuse hosts asking more (per 1000 tokens)")
@click.option(
    "--token",
    default="ETH",
    show_default=True,
    help="pay in ETH or an ERC20: address, or a deployment token's name/symbol (TestUSD)",
)
@click.option("-p", "--prompt", help="one-shot question (otherwise interactive)")
@click.option("--max-tokens", type=int, default=256, show_default=True)
@click.option("--temperature", type=float, default=0.7, show_default=True)
@click.option(
    "--cache",
    type=click.Choice(["off", "own", "shared"]),
    default="off",
    show_default=True,
    help="let the host answer from its cache, at its cache rate: own = your earlier answers "
    "only, shared = also answers other clients shared",
)
@click.option(
    "--min-similarity",
    type=click.FloatRange(0, 1),
    help="how close a cached question must be (cosine; the host's default otherwise)",
)
@click.option("--share", is_flag=True, help="let your answers serve other clients' questions")
@click.pass_obj
def chat(
    settings: Settings,
    model: str,
    host: str | None,
    deposit: int,
    max_price: int | None,
    token: str,
    prompt: str | None,
    max_tokens: int,
    temperature: float,
    cache: str,
    min_similarity: float | None,
    share: bool,
) -> None:
    """Chat through a paid session; the session closes (and the host settles) on exit."""
    from fabstir_sdk.contracts import ETH
    from fabstir_sdk.tokens import resolve_token, token_symbol

    resolve_model_id(model)  # a malformed name is a usage error, before touching the chain
    client = _client(settings)
    token = resolve_token(client.contracts, token)
    unit = "wei" if token == ETH else f"{token_symbol(client.contracts, token)} units"

    async def main_() -> None:
        async with client:
            session = await client.open_session(
                model, host=host, deposit=deposit, max_price=max_price, token=token
            )
            click.echo(
                f"[session {session.id} with {session.host}, {session.price} {unit}/1000 tokens]",
                err=True,
            )
            history: list[dict[str, str]] = []
            failed = True
            try:
                for question in _questions(prompt):
                    history.append({"role": "user", "content": question})
                    answer = session.chat(
                        history,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        cache=cache,
                        cache_min_similarity=min_similarity,
                        cache_sampled=cache != "off",  # asking for the cache is allowing it
                        cache_share=share,
                    )
                    async for piece in answer:
                        click.echo(piece, nl=False)
                    click.echo()
                    if answer.cache_hit is not None:
                        click.echo(
                            f"[from the host's cache: similarity {answer.cache_hit.similarity}, "
                            f"{answer.billed_tokens} tokens billed]",
                            err=True,
                        )
                    history.append({"role": "assistant", "content": answer.text})
                    cost = session.billed * session.price // 1000
                    click.echo(f"[{session.billed} tokens so far, {cost} {unit}]", err=True)
                failed = False
            finally:
                # After a failure, don't wait on a host that just failed us: say how to recover.
                settlement = await session.close(wait_settlement=0 if failed else 30)
                if settlement is not None:
                    click.echo(
                        f"[settled: paid {settlement.payment} {unit}, refunded "
                        f"{settlement.refund} {unit}]",
                        err=True,
                    )
                elif failed:
                    click.echo(
                        f"[closed; if the host does not settle, `fabstir session close "
                        f"{session.id}` and, after the dispute window, `fabstir session refund "
                        f"{session.id}` return the rest of the deposit]",
                        err=True,
                    )
                else:
                    click.echo("[closed; the host settles shortly]", err=True)

    _run(main_())


def _questions(prompt: str | None) -> Any:
    if prompt is not None:
        yield prompt
        return
    while True:
        try:
            line = input("> ")
        except EOFError:
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip():
            yield line


@main.group()
def session() -> None:
    """Your sessions: list them, close them, get refunds from dead hosts."""


@session.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def session_list(settings: Settings, as_json: bool) -> None:
    """Sessions opened by this wallet and their on-chain state."""
    client = _client(settings)
    contracts = client.contracts
    logs = contracts.market.events.SessionOpened().get_logs(
        from_block=contracts.deployment.deploy_block,
        argument_filters={"client": client.address},
    )
    rows = []
    for log_ in logs:
        s = contracts.session(log_["args"]["sessionId"])
        rows.append(
            {
                "id": s.id,
                "host": s.host,
                "status": s.status.name.lower(),
                "deposit": s.deposit,
                "price": s.price,
                "checkpoint_tokens": s.checkpoint_tokens,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        click.echo(f"{r['id']:>6}  {r['status']:<16}{r['host']}  deposit {r['deposit']}")


@session.command("close")
@click.argument("session_id", type=int)
@click.pass_obj
def session_close(settings: Settings, session_id: int) -> None:
    """Ask to close a session on-chain (starts the host's dispute window)."""
    from fabstir_sdk.contracts.client import SessionStatus

    client = _client(settings)
    s = client.contracts.session(session_id)
    if s.status != SessionStatus.OPEN:
        raise ChainError(f"session {session_id} is {s.status.name.lower()}")
    client.contracts.request_close(session_id)
    click.echo(
        f"close requested; refundable from unix time "
        f"{client.contracts.finalizable_at(session_id)} (`fabstir session refund "
        f"{session_id}`)"
    )


@session.command("refund")
@click.argument("session_id", type=int)
@click.pass_obj
def session_refund(settings: Settings, session_id: int) -> None:
    """After the dispute window: settle on the last checkpoint and take the refund."""
    client = _client(settings)
    at = client.contracts.finalizable_at(session_id)
    now = client.contracts.latest_timestamp()
    if now < at:
        raise ChainError(f"the dispute window is open for {at - now} more seconds")
    settlement = client.contracts.finalize(session_id)
    click.echo(f"refunded {settlement.refund} wei (host paid {settlement.payment} wei)")


@session.command("result")
@click.argument("session_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="every answer with its token ids")
@click.pass_obj
def session_result(settings: Settings, session_id: int, as_json: bool) -> None:
    """The answers of a session, fetched from the host's store (also after the connection
    was lost) and checked against your own vouchers (exit 1 if one is not what you paid)."""
    client = _client(settings)

    async def main_() -> list[Any]:
        async with client:
            return list(await client.results(session_id))

    results = _run(main_())
    if not results:
        raise HostError("no_results", f"the host holds no stored answer of session {session_id}")
    if as_json:
        rows = [
            {
                "start": r.record.start,
                "text": r.text,
                "prompt_ids": list(r.record.prompt_ids),
                "completion_ids": list(r.record.completion_ids),
                "finish_reason": r.record.finish_reason,
                "sampling": r.record.sampling,
                "model_sha256": r.record.model_sha256.hex(),
                "paid": r.paid,
                "verdict": r.reason,
                "voucher_tokens": r.voucher.cumulative_tokens if r.voucher else None,
            }
            for r in results
        ]
        click.echo(json.dumps(rows, indent=2))
    else:
        for r in results:
            click.echo(f"[answer at token {r.record.start}: {r.reason}]", err=True)
            click.echo(r.text)
    if not all(r.paid for r in results):
        sys.exit(1)


@main.command()
@click.argument("session_ids", type=int, nargs=-1, required=True)
@click.option(
    "--model",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="the pinned GGUF (default: the installed catalogue model with the pinned sha256)",
)
@click.option(
    "--sample",
    type=click.FloatRange(0.0, 1.0),
    default=1.0,
    show_default=True,
    help="share of the answers to audit, picked at random",
)
@click.option(
    "--report/--no-report",
    default=True,
    show_default=True,
    help="report failures to the ReputationSystem (publishes the failed answer as evidence)",
)
@click.option("--report-passes", is_flag=True, help="report passed audits too")
@click.option(
    "--remote",
    is_flag=True,
    help="have another host serving the model run the audits (a paid session; no local model)",
)
@click.option("--threads", type=int, help="llama.cpp threads (default: all cores)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def audit(
    settings: Settings,
    session_ids: tuple[int, ...],
    model: Path | None,
    sample: float,
    report: bool,
    report_passes: bool,
    remote: bool,
    threads: int | None,
    as_json: bool,
) -> None:
    """Re-run your sessions' answers on the pinned model and check every token (exit 1 if one
    fails). The answers and the host's signatures come from the host's store; each is checked
    with one prefill, here or (--remote) by another host: greedy tokens must be the model's
    argmax (within a measured tolerance), sampled ones inside the top-p set and probable under
    the model."""
    from fabstir_sdk.audit import AuditPolicy

    policy = AuditPolicy(sample, model, report, report_passes, threads, remote)
    client = _client(settings, audit=policy)

    async def main_() -> list[dict[str, Any]]:
        rows = []
        async with client:
            for session_id in session_ids:
                for result in await client.results(session_id):
                    row: dict[str, Any] = {"session": session_id, "start": result.record.start}
                    if result.signed is None:
                        row |= {"passed": None, "reason": "the host did not sign this answer"}
                    elif result.record.from_cache:
                        row |= {"passed": None, "reason": "served from the host's cache"}
                    elif not policy.picks():
                        continue
                    else:
                        outcome = await client.audit(result.signed)
                        row |= outcome.report.to_json() | {"reported_tx": outcome.reported_tx}
                        row.pop("worst", None)
                    rows.append(row)
        return rows

    rows = _run(main_())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            verdict = {True: "pass", False: "FAIL", None: "skipped"}[row["passed"]]
            click.echo(
                f"session {row['session']} answer at {row['start']}: {verdict}: {row['reason']}"
            )
            if row.get("reported_tx"):
                click.echo(f"  reported on-chain: {row['reported_tx']}")
    if any(row["passed"] is False for row in rows):
        sys.exit(1)


@main.command()
@click.argument("session_id", type=int)
@click.argument("score", type=click.IntRange(1, 5))
@click.pass_obj
def rate(settings: Settings, session_id: int, score: int) -> None:
    """Rate the host of a settled session you paid for, 1 (worst) to 5: once per session,
    recorded in the ReputationSystem."""
    client = _client(settings)
    receipt = client.reputation.rate(session_id, score)
    click.echo(
        f"rated session {session_id}: {score} (tx 0x{bytes(receipt['transactionHash']).hex()})"
    )


@main.group()
def batch() -> None:
    """Batch jobs on the JobBoard: OpenAI Batch files run by any host, results from storage."""


def _job_row(job: Any) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status.name.lower(),
        "model_id": "0x" + job.model_id.hex(),
        "host": None if int(job.host, 16) == 0 else job.host,
        "claimed_until": job.claimed_until or None,
        "deadline": job.deadline,
        "token": job.token,
        "max_payment": job.max_payment,
        "payment": job.payment,
        "input_hash": "0x" + job.input_hash.hex(),
        "result_hash": "0x" + job.result_hash.hex() if any(job.result_hash) else None,
        "proof_required": job.proof_required,
    }


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "-m", required=True, help="catalogue name, repo/file or 0x model id")
@click.option("--max-payment", type=int, required=True, help="the most you pay (wei or units)")
@click.option("--token", default="ETH", show_default=True, help="ETH, or an ERC20 address/name")
@click.option(
    "--duration",
    type=int,
    default=24 * 3600,
    show_default=True,
    help="seconds until the deadline; an unfinished job is refundable after it",
)
@click.option(
    "--copies",
    type=int,
    default=1,
    show_default=True,
    help="wait until this many hosts hold the input (0: return at once, stay online)",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def batch_submit(
    settings: Settings,
    file: Path,
    model: str,
    max_payment: int,
    token: str,
    duration: int,
    copies: int,
    as_json: bool,
) -> None:
    """Post FILE (OpenAI Batch JSONL: one chat completion request per line) as a job."""
    from fabstir_sdk.batch import parse_input

    data = file.read_bytes()
    requests = parse_input(data)  # a bad line is a usage error before anything is paid
    resolve_model_id(model)
    client = _client(settings)

    async def main_() -> Any:
        async with client:
            if not as_json:
                click.echo(f"posting {len(requests)} requests; waiting for a host's copy", err=True)
            return await client.jobs.submit_batch(
                data, model, max_payment, duration, token=token, copies=copies
            )

    posted = _run(main_())
    if as_json:
        row = {"id": posted.job_id, "input_hash": "0x" + posted.input_hash.hex()}
        click.echo(json.dumps(row | {"requests": len(requests), "copies": posted.copies}))
    else:
        click.echo(f"job {posted.job_id} posted ({posted.copies} host(s) hold the input)")


@batch.command("status")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def batch_status(settings: Settings, job_id: int, as_json: bool) -> None:
    """A job's state on-chain: who claimed it, what it asks, where its result is."""
    client = _client(settings, wallet=False)
    row = _job_row(_run(client.jobs.job(job_id)))
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        click.echo(f"{key:<15}{value}")


@batch.command("results")
@click.argument("job_id", type=int)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="write the output file here (default: stdout)",
)
@click.pass_obj
def batch_results(settings: Settings, job_id: int, output: Path | None) -> None:
    """The job's output (OpenAI Batch format), fetched from the store and checked against
    the result hash the host completed with; every billed token is counted again with the
    pinned tokenizer (exit 1 if the host asks more than its answers are worth: dispute it
    with `fabstir batch dispute` before the challenge window closes)."""
    client = _client(settings, wallet=False)

    async def main_() -> tuple[bytes, Any]:
        async with client:
            data: bytes = await client.jobs.result(job_id)
            from fabstir_sdk.batch import parse_output

            check = await client.jobs.check_batch(job_id, parse_output(data))
            return data, check

    data, check = _run(main_())
    if output is None:
        sys.stdout.buffer.write(data)
    else:
        output.write_bytes(data)
        click.echo(f"wrote {output}", err=True)
    click.echo(
        f"{check.tokens} tokens counted at {check.price} per 1000: worth {check.fair}, "
        f"asked {check.asked}",
        err=True,
    )
    for problem in check.problems:
        click.secho(f"problem: {problem}", fg="red", err=True)
    if not check.ok:
        sys.exit(1)


@batch.command("dispute")
@click.argument("job_id", type=int)
@click.pass_obj
def batch_dispute(settings: Settings, job_id: int) -> None:
    """Dispute a completed job's result within its challenge window: it is not paid until
    the board's owner decides."""
    client = _client(settings)
    client.jobs.board.dispute(job_id)
    click.echo(f"job {job_id} disputed")


@batch.command("cancel")
@click.argument("job_id", type=int)
@click.pass_obj
def batch_cancel(settings: Settings, job_id: int) -> None:
    """Take back an unclaimed job, or one past its deadline: the deposit is refunded."""
    client = _client(settings)
    job = _run(client.jobs.job(job_id))
    now = client.contracts.latest_timestamp()
    board = client.jobs.board
    settlement = board.expire(job_id) if now > job.deadline else board.cancel(job_id)
    click.echo(f"refunded {settlement.refund} (job {job_id})")


@main.group()
def prove() -> None:
    """Proven jobs: rows for a proven ONNX model, paid only when their proofs verify on-chain."""


@prove.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "-m", required=True, help="the proven model: repo/file or 0x model id")
@click.option("--max-payment", type=int, required=True, help="the most you pay, in wei")
@click.option(
    "--duration",
    type=int,
    default=3600,
    show_default=True,
    help="seconds until the deadline; an unproven job is refundable after it",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def prove_submit(
    settings: Settings, file: Path, model: str, max_payment: int, duration: int, as_json: bool
) -> None:
    """Post FILE's rows ({"input_data": [[...], ...]}, at most 16) as a proven job."""
    from fabstir_sdk.errors import UsageError
    from fabstir_sdk.proofs import ProofError, parse_rows

    client = _client(settings)

    async def main_() -> Any:
        async with client:
            bundle = await client.jobs.bundle(model)
            try:
                rows = parse_rows(file.read_bytes(), bundle.inputs)
            except ProofError as exc:  # the file is the caller's mistake: exit 2
                raise UsageError(f"{file}: {exc}") from None
            return await client.jobs.submit_proven(model, rows, bundle, max_payment, duration)

    posted = _run(main_())
    if as_json:
        click.echo(json.dumps({"id": posted.job_id, "input_hash": "0x" + posted.input_hash.hex()}))
    else:
        click.echo(f"job {posted.job_id} posted ({posted.copies} host(s) hold the input)")


@prove.command("result")
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def prove_result(settings: Settings, job_id: int, as_json: bool) -> None:
    """The proven outputs of a job, each proof checked off-chain against the pinned circuit
    and against what the ProofSystem accepted (exit 1 if any check fails)."""
    client = _client(settings, wallet=False)

    async def main_() -> Any:
        async with client:
            job = await client.jobs.job(job_id)
            bundle = await client.jobs.bundle(job.model_id)
            return await client.jobs.proven_result(job_id, bundle)

    result = _run(main_())
    if as_json:
        row = {"outputs": result.outputs, "verified": result.verified}
        click.echo(json.dumps(row | {"problems": list(result.problems)}))
    else:
        for n, outputs in enumerate(result.outputs):
            click.echo(f"row {n}: " + " ".join(f"{v:.4f}" for v in outputs))
    for problem in result.problems:
        click.secho(f"problem: {problem}", fg="red", err=True)
    if not result.verified:
        sys.exit(1)


@main.command()
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--host", "bind", default="127.0.0.1", show_default=True)
@click.option(
    "--deposit",
    type=int,
    default=10**16,
    show_default=True,
    help="wei escrowed per session (one session per model)",
)
@click.option("--max-price", type=int, help="refuse hosts asking more (wei / 1000 tokens)")
@click.pass_obj
def proxy(settings: Settings, port: int, bind: str, deposit: int, max_price: int | None) -> None:
    """A local OpenAI-compatible gateway (/v1/models, /v1/chat/completions) paying hosts."""
    from aiohttp import web

    from fabstir_sdk.proxy import PayingProxy

    client = _client(settings)

    async def main_() -> None:
        async with client:
            gateway = PayingProxy(client, deposit, max_price)
            runner = web.AppRunner(gateway.app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, bind, port).start()
            click.echo(
                f"OpenAI-compatible gateway on http://{bind}:{port}/v1 (Ctrl-C stops)", err=True
            )
            try:
                await asyncio.Event().wait()
            finally:
                await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        _run(main_())
