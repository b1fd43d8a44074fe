"""Models a dishonest host might serve instead of the pinned one, for audit tests and
``bench/audit.py``: the same weights at another quantisation, made with llama.cpp's own
quantiser (real files, not mocks)."""

from __future__ import annotations

from pathlib import Path

QUANTISATIONS = {"q4_0": 2, "q8_0": 7}  # llama_ftype values


def requantize(source: Path, target: Path, kind: str = "q4_0", threads: int = 2) -> Path:
    """Write ``source`` requantised to ``kind`` at ``target`` (about a second for a 135M model)."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTISATIONS[kind]
    params.allow_requantize = True
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not quantise {source} to {kind}")
    return target
