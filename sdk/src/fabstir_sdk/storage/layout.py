"""Where things live in a node's tree: the one place both sides agree on paths.

- ``/models/<sha256>/model.gguf``: a model the node shares, named by the ModelRegistry's pin;
- ``/models/<sha256>/tokenizer.gguf``: its tokenizer file (pinned too);
- ``/results/<session>/<start>``: a session's sealed answers (:mod:`fabstir_sdk.transcripts`),
  ``start`` being the billable tokens before the answer, zero-padded so names sort in order;
- ``/jobs/<job>/input`` and ``/jobs/<job>/result``: a JobBoard job's input (kept by every
  host serving its model, so the job outlives its client and its claimer) and its result;
- ``/proofs/<onnx sha256>/``: what a client needs to check a proven model's proofs (EZKL's
  settings, the verifying key, the SRS and the bundle manifest), pinned by the registry;
- ``/cache/``: the semantic cache.

Job content is stored uncompressed, so its root hash (the one on the JobBoard) is the same
whoever writes it.
"""

from __future__ import annotations

MODELS, RESULTS, JOBS, PROOFS, CACHE = "/models/", "/results/", "/jobs/", "/proofs/", "/cache/"


def model_path(sha256: bytes) -> str:
    return f"{MODELS}{sha256.hex()}/model.gguf"


def tokenizer_path(model_sha256: bytes) -> str:
    return f"{MODELS}{model_sha256.hex()}/tokenizer.gguf"


def result_dir(session_id: int) -> str:
    return f"{RESULTS}{session_id}/"


def result_path(session_id: int, start: int) -> str:
    return f"{result_dir(session_id)}{start:012d}"


def job_input_path(job_id: int) -> str:
    return f"{JOBS}{job_id}/input"


def job_result_path(job_id: int) -> str:
    return f"{JOBS}{job_id}/result"


def proof_file_path(onnx_sha256: bytes, name: str) -> str:
    return f"{PROOFS}{onnx_sha256.hex()}/{name}"
