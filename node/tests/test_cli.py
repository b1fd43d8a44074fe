"""The `fabstir-node` CLI as a user runs it: a real subprocess, real exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from fabstir_devtools.network import ApiProcess
from fabstir_node.models import sha256_file


def cli(*args: str, data_dir: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FABSTIR_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "fabstir_node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_help_explains_every_command(tmp_path: Path) -> None:
    for args in ([], ["serve"], ["models"], ["models", "verify"]):
        result = cli(*args, "--help", data_dir=tmp_path)
        assert result.returncode == 0 and "Usage:" in result.stdout


def test_models_list_json(tmp_path: Path) -> None:
    result = cli("models", "list", "--json", data_dir=tmp_path)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["smollm2-135m-instruct"]["installed"] is True


def test_verify_exit_codes(tmp_path: Path, tiny_gguf: Path) -> None:
    digest = sha256_file(tiny_gguf)
    ok = cli("models", "verify", str(tiny_gguf), "--sha256", digest, "--json", data_dir=tmp_path)
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["sha256"] == digest and report["matches"] is True and report["loadable"]
    bad = cli(
        "models", "verify", str(tiny_gguf), "--sha256", "ab" * 32, "--json", data_dir=tmp_path
    )
    assert bad.returncode == 1 and json.loads(bad.stdout)["matches"] is False
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(tiny_gguf.read_bytes()[:3000])
    result = cli("models", "verify", str(broken), "--json", data_dir=tmp_path)
    assert result.returncode == 3 and json.loads(result.stdout)["loadable"] is False
    missing = cli("models", "verify", "nope", data_dir=tmp_path)
    assert missing.returncode == 3 and "no such file" in missing.stderr


def test_bad_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nport = "eighty"\n')
    result = cli("--config", str(config), "serve", data_dir=tmp_path)
    assert result.returncode == 4 and "port" in result.stderr


def test_serve_refuses_a_hash_mismatch(tmp_path: Path, tiny_gguf: Path) -> None:
    result = cli(
        "serve", "--model", str(tiny_gguf), "--sha256", "00" * 32, "--port", "0", data_dir=tmp_path
    )
    assert result.returncode == 1 and "refusing" in result.stderr


def test_serve_answers_then_stops_cleanly(tmp_path: Path, tiny_gguf: Path) -> None:
    env = {**os.environ, "FABSTIR_DATA_DIR": str(tmp_path), "FABSTIR_N_CTX": "256"}
    node = ApiProcess("--model", str(tiny_gguf), "--port", "0", env=env)
    node.start()  # until it says where it serves (or fails with its output)
    try:
        url = node.url
        assert httpx.get(f"{url}/health").json()["status"] == "ok"
        reply = httpx.post(
            f"{url}/v1/chat/completions",
            json={"model": "tiny", "max_tokens": 3, "messages": [{"role": "user", "content": "x"}]},
        )
        assert reply.json()["usage"]["completion_tokens"] == 3
    finally:
        assert node.stop() == 0  # SIGTERM: a clean exit
