"""The sha256 of files, as the registries pin them (models, tokenizers, proof bundles) and
as fetched copies are checked against those pins."""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["file_sha256"]


def file_sha256(path: Path) -> bytes:
    """The 32-byte sha256 of the file at ``path``, read in 1 MiB chunks (models are GBs)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.digest()
