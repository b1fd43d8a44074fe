"""``fabstir-node``: the operator's command line.

Exit codes: 0 success, 1 verification failed (hash mismatch), 2 usage error,
3 model not found or not loadable, 4 configuration error.
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
from fabstir_node.config import ConfigError, NodeConfig, load_config
from fabstir_node.models import (
    BUILTIN,
    HashCache,
    HashMismatch,
    ModelError,
    builtin_path,
    probe,
    resolve,
    verify,
)

EXIT_MISMATCH, EXIT_MODEL, EXIT_CONFIG = 1, 3, 4


def _fail(message: str, code: int) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _config(ctx: click.Context, **overrides: Any) -> NodeConfig:
    try:
        return load_config(ctx.obj.get("config_path"), overrides=overrides)
    except ConfigError as exc:
        _fail(str(exc), EXIT_CONFIG)
        raise  # unreachable


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
@click.option("--n-ctx", type=int, help="context size in tokens [2048]")
@click.option("--threads", "n_threads", type=int, help="generation threads [cores]")
@click.option("--queue-size", type=int, help="requests that may wait for the model [8]")
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
    try:
        model = resolve(config.model, config.model_sha256)
        click.echo(f"model    {model.name}  ({model.path})", err=True)
        with _hash_progress(model.path, True) as progress:
            prepared = prepare_model(config, progress)
    except HashMismatch as exc:
        _fail(str(exc), EXIT_MISMATCH)
    except ModelError as exc:
        _fail(str(exc), EXIT_MODEL)
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
        _fail(f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc}", EXIT_CONFIG)


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
    try:
        resolved = resolve(model, expected)
    except ModelError as exc:
        _fail(str(exc), EXIT_MODEL)
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
