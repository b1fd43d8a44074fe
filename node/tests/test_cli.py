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


# --------------------------------------------------------------------------- exit codes, keys

KEY = "0x" + "4c" * 32


def node(
    *args: str, data_dir: Path, env: dict[str, str] | None = None, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``fabstir-node ARGS`` with extra environment and standard input."""
    environment = {k: v for k, v in os.environ.items() if k != "FABSTIR_NODE_KEY"}  # the test's
    environment.update({"FABSTIR_DATA_DIR": str(data_dir), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "fabstir_node", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        input=stdin,
    )


def address_of(key: str) -> str:
    from eth_account import Account

    return str(Account.from_key(key).address)


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert node("run", "--port", "eighty", data_dir=tmp_path).returncode == 2
    assert node("no-such-command", data_dir=tmp_path).returncode == 2
    both = node("init", "--key-file", str(tmp_path / "k"), "--key-stdin", data_dir=tmp_path)
    assert both.returncode == 2 and "not both" in both.stderr


def test_a_private_key_on_the_command_line_is_refused(tmp_path: Path) -> None:
    result = node("init", "--private-key", KEY, data_dir=tmp_path)
    assert result.returncode == 2 and "--key-file" in result.stderr
    assert KEY[2:] not in result.stdout + result.stderr
    assert not (tmp_path / "keys").exists()


def test_init_imports_the_key_from_the_environment(tmp_path: Path) -> None:
    result = node("init", "--json", data_dir=tmp_path, env={"FABSTIR_NODE_KEY": KEY})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["address"] == address_of(KEY)
    assert report["key"] == "imported from $FABSTIR_NODE_KEY"
    assert KEY[2:] not in result.stdout + result.stderr


def test_init_imports_the_key_from_standard_input(tmp_path: Path) -> None:
    result = node("init", "--key-stdin", "--json", data_dir=tmp_path, stdin=KEY + "\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["address"] == address_of(KEY)
    bad = node("init", "--key-stdin", data_dir=tmp_path / "other", stdin="hunter2\n")
    assert bad.returncode == 4 and "standard input does not hold a private key" in bad.stderr
    assert "hunter2" not in bad.stderr


def test_init_imports_the_key_from_a_private_file(tmp_path: Path) -> None:
    key_file = tmp_path / "host.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o644)
    loose = node("init", "--key-file", str(key_file), data_dir=tmp_path / "a")
    assert loose.returncode == 4 and "chmod 600" in loose.stderr
    key_file.chmod(0o600)
    env = {"FABSTIR_NODE_KEY": "0x" + "11" * 32}  # the flag wins over the environment
    result = node("init", "--key-file", str(key_file), "--json", data_dir=tmp_path / "b", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["address"] == address_of(KEY)


def test_init_makes_a_private_data_dir_and_refuses_to_overwrite(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    assert node("init", data_dir=data_dir).returncode == 0
    assert (data_dir.stat().st_mode & 0o777) == 0o700
    assert ((data_dir / "keys" / "eth.key").stat().st_mode & 0o777) == 0o600
    again = node("init", data_dir=data_dir)
    assert again.returncode == 4 and "refusing to overwrite" in again.stderr


def test_loose_or_malformed_key_files_exit_4_on_load(tmp_path: Path) -> None:
    assert node("init", data_dir=tmp_path, env={"FABSTIR_NODE_KEY": KEY}).returncode == 0
    eth = tmp_path / "keys" / "eth.key"
    eth.chmod(0o644)
    loose = node("status", data_dir=tmp_path)
    assert loose.returncode == 4 and "chmod 600" in loose.stderr
    eth.chmod(0o600)
    eth.write_text("-----BEGIN EC PRIVATE KEY-----\n")
    wrong = node("status", data_dir=tmp_path)
    assert wrong.returncode == 4 and "64 hex digits" in wrong.stderr
    missing = node("status", data_dir=tmp_path / "none")
    assert missing.returncode == 4 and "fabstir-node init" in missing.stderr


def test_a_missing_model_exits_3(tmp_path: Path) -> None:
    result = node("serve", "--model", str(tmp_path / "absent.gguf"), data_dir=tmp_path)
    assert result.returncode == 3 and "Traceback" not in result.stderr


def test_an_unreachable_chain_exits_5(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert node("init", data_dir=tmp_path).returncode == 0
    result = node("status", "--rpc-url", dead, data_dir=tmp_path)
    assert result.returncode == 5 and "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
