"""Where things live in a node's tree: the one place both sides agree on paths.

- ``/models/<sha256>/model.gguf``: a model the node shares, named by the ModelRegistry's pin;
- ``/models/<sha256>/tokenizer.gguf``: its tokenizer file (pinned too);
- ``/results/<session>/<start>``: a session's sealed answers (:mod:`fabstir_sdk.transcripts`),
  ``start`` being the billable tokens before the answer, zero-padded so names sort in order;
- ``/proofs/`` and ``/cache/``: reserved for proofs and the semantic cache.
"""

from __future__ import annotations

MODELS, RESULTS, PROOFS, CACHE = "/models/", "/results/", "/proofs/", "/cache/"


def model_path(sha256: bytes) -> str:
    return f"{MODELS}{sha256.hex()}/model.gguf"


def tokenizer_path(model_sha256: bytes) -> str:
    return f"{MODELS}{model_sha256.hex()}/tokenizer.gguf"


def result_dir(session_id: int) -> str:
    return f"{RESULTS}{session_id}/"


def result_path(session_id: int, start: int) -> str:
    return f"{result_dir(session_id)}{start:012d}"
