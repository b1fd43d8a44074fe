"""Node configuration: defaults, then a TOML file, then ``FABSTIR_*`` environment variables,
then command-line flags, each overriding the one before."""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fabstir_node.errors import ConfigError

__all__ = ["ConfigError", "NodeConfig", "load_config", "make_private_dir"]

ENV_PREFIX = "FABSTIR_"


def make_private_dir(path: Path) -> None:
    """Create ``path`` (with missing parents) for the node alone: a directory it creates is
    mode 0700 whatever the umask; an existing one keeps its mode."""
    created = not path.exists()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if created:
        os.chmod(path, 0o700)


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "fabstir-node"


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def default_threads() -> int:
    """Threads for one-token steps: all cores but one, which is left to the event loop (HTTP,
    libp2p, chain). A one-token kernel is too small to share: on 2 cores (SmolLM2-135M) one
    stream runs as fast on 1 thread as on 2."""
    return max(1, _cores() - 1)


def default_threads_batch() -> int:
    """Threads for batches (several streams, or a prompt): every core. A batch's kernels are
    big enough to split; on 2 cores 8 streams decode 1.4x faster on 2 threads than on 1."""
    return _cores()


@dataclass
class NodeConfig:
    """Everything ``fabstir-node`` reads at start. Field names are the TOML keys; the
    environment variable of ``n_ctx`` is ``FABSTIR_N_CTX``."""

    model: str = "smollm2-135m-instruct"
    model_sha256: str | None = None  # required for a model given by path, unless unpinned
    host: str = "127.0.0.1"
    port: int = 8080
    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int = field(default_factory=default_threads)
    n_threads_batch: int = field(default_factory=default_threads_batch)
    # Generations decoded together in one batch (sessions, the HTTP API, batch jobs); more
    # wait in a queue of queue_size, beyond which requests are refused with Retry-After.
    parallel: int = 4
    queue_size: int = 8
    # The KV cache of live and recent conversations, in MiB: a conversation's next turn only
    # evaluates its new tokens while it is cached. Unset: room for 2 conversations per slot.
    kv_cache_mb: int | None = None
    # Layers offloaded to a GPU: needs llama-cpp-python built with CUDA (`make setup GPU=cuda`).
    n_gpu_layers: int = 0
    max_tokens: int = 512  # when a request names none
    chat_template: str | None = None  # a Jinja template (or a path to one) overriding the GGUF's
    data_dir: Path = field(default_factory=default_data_dir)
    log_level: str = "info"
    # `fabstir-node run` serves the unpaid OpenAI-compatible API (/v1/...) only when asked;
    # /health and /metrics are always on (they answer no prompts).
    http_api: bool = False
    # chain
    rpc_url: str = "http://127.0.0.1:8545"
    deployment: Path | None = None  # default: deployments/<chainId>.json under the cwd
    price: int = 2_000_000_000_000  # wei per 1000 tokens (ETH sessions)
    token_prices: str = ""  # ERC20 sessions: "0xTOKEN=PRICE,..." (token units per 1000 tokens)
    stake: int = 100 * 10**18  # FAB staked at registration
    # libp2p and sessions
    p2p_listen: str = "/ip4/127.0.0.1/tcp/0"
    bootstrap: str = ""  # comma-separated multiaddrs with /p2p/<peer id>
    credit_window: int = 64
    # Serve the model's GGUF to hosts that fetch it by its pin (the store keeps its own copy).
    share_model: bool = True
    checkpoint_every: int = 2000
    idle_timeout: float = 120.0
    voucher_timeout: float = 30.0
    # The answer cache (README "Answer cache"): clients opt in per prompt; a cached answer
    # bills cache_rate_bps / 10000 of its fresh token count.
    cache: bool = True
    cache_rate_bps: int = 2500
    cache_ttl: float = 7 * 24 * 3600.0
    # MCP server (`run --mcp`): cache and document search for the operator's LLM tools.
    mcp: bool = False
    mcp_host: str = "127.0.0.1"
    mcp_port: int = 7531
    mcp_token: str | None = None  # required when mcp_host is not a loopback address
    # Jobs from the JobBoard (README "Batch and proven jobs"): batch jobs for the served
    # model, and proven jobs for the ONNX models listed in proven_models
    # ("0xMODEL_ID=BUNDLE_DIR,..."), each asking proof_price wei per proof.
    jobs: bool = True
    job_poll: float = 2.0
    proven_models: str = ""
    proof_price: int = 10**13
    # One ReputationSystem heartbeat per epoch while the node serves, and audits of other
    # hosts' answers sold inside sessions (README "Verified answers").
    heartbeat: bool = True
    audits: bool = True

    @property
    def bootstrap_peers(self) -> list[str]:
        return [a.strip() for a in self.bootstrap.split(",") if a.strip()]

    @property
    def proven_model_map(self) -> dict[bytes, Path]:
        """Proven model id -> its proof bundle directory, from ``proven_models``."""
        models: dict[bytes, Path] = {}
        for item in (i.strip() for i in self.proven_models.split(",")):
            if not item:
                continue
            model, sep, bundle = item.partition("=")
            body = model.strip().removeprefix("0x")
            if not sep or len(body) != 64 or any(c not in "0123456789abcdefABCDEF" for c in body):
                raise ConfigError(f"proven_models: {item!r} is not 0xMODEL_ID=BUNDLE_DIR")
            models[bytes.fromhex(body)] = Path(bundle.strip()).expanduser()
        return models

    @property
    def token_price_map(self) -> dict[str, int]:
        """ERC20 address (as written) -> price per 1000 tokens, from ``token_prices``."""
        prices: dict[str, int] = {}
        for item in (i.strip() for i in self.token_prices.split(",")):
            if not item:
                continue
            token, sep, price = item.partition("=")
            token = token.strip()
            body = token[2:] if token.startswith("0x") else ""
            if not sep or len(body) != 40 or any(c not in "0123456789abcdefABCDEF" for c in body):
                raise ConfigError(
                    f"token_prices: {item!r} is not 0xTOKEN_ADDRESS=PRICE (per 1000 tokens)"
                )
            try:
                value = int(price)
            except ValueError:
                raise ConfigError(f"token_prices: price {price!r} is not an integer") from None
            if value <= 0:
                raise ConfigError(f"token_prices: the price of {token} must be positive")
            prices[token] = value
        return prices

    def validate(self) -> NodeConfig:
        for name in (
            "n_ctx",
            "n_batch",
            "n_threads",
            "n_threads_batch",
            "parallel",
            "queue_size",
            "max_tokens",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.kv_cache_mb is not None and self.kv_cache_mb <= 0:
            raise ConfigError(f"kv_cache_mb must be positive, got {self.kv_cache_mb}")
        if self.n_gpu_layers < 0:
            raise ConfigError(f"n_gpu_layers must be 0 or more, got {self.n_gpu_layers}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0..65535 (0 picks a free port), got {self.port}")
        _ = self.token_price_map  # raises ConfigError when malformed
        _ = self.proven_model_map
        if self.proof_price <= 0:
            raise ConfigError("proof_price must be positive (wei per proof)")
        if self.job_poll <= 0:
            raise ConfigError("job_poll must be positive (seconds)")
        if not 0 <= self.cache_rate_bps <= 10_000:
            raise ConfigError(f"cache_rate_bps must be 0..10000, got {self.cache_rate_bps}")
        loopback = self.mcp_host in ("localhost", "::1") or self.mcp_host.startswith("127.")
        if self.mcp and not loopback and not self.mcp_token:
            raise ConfigError(
                f"mcp_host {self.mcp_host} is not a loopback address: set mcp_token "
                "(FABSTIR_MCP_TOKEN) so that only its holders can use the MCP server"
            )
        if self.mcp and not self.cache:
            raise ConfigError("mcp needs the answer cache's embedding model: set cache = true")
        if self.cache_ttl <= 0:
            raise ConfigError(f"cache_ttl must be positive, got {self.cache_ttl}")
        return self


def _coerce(name: str, kind: Any, value: Any) -> Any:
    if value is None:
        return None
    text = str(value)
    try:
        if "int" in str(kind) and not isinstance(value, bool):
            return int(value)
        if "float" in str(kind):
            return float(value)
        if "Path" in str(kind):
            return Path(text).expanduser()
        if "bool" in str(kind):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
    except ValueError as exc:
        raise ConfigError(f"{name}: cannot read {value!r} as {kind}") from exc
    return text


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> NodeConfig:
    """Build the configuration; ``overrides`` (CLI flags) whose value is None are ignored."""
    env = os.environ if env is None else env
    fields = {f.name: f.type for f in dataclasses.fields(NodeConfig)}
    values: dict[str, Any] = {}
    path = path or (Path(env[f"{ENV_PREFIX}CONFIG"]) if f"{ENV_PREFIX}CONFIG" in env else None)
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        section = data.get("node", data)
        unknown = set(section) - set(fields)
        if unknown:
            raise ConfigError(f"unknown keys in {path}: {', '.join(sorted(unknown))}")
        values.update({k: _coerce(k, fields[k], v) for k, v in section.items()})
    for name, kind in fields.items():
        if (raw := env.get(ENV_PREFIX + name.upper())) is not None:
            values[name] = _coerce(ENV_PREFIX + name.upper(), kind, raw)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(name, fields[name], value)
    return NodeConfig(**values).validate()
