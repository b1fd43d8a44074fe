"""Subprocess entry point: load a GGUF with llama.cpp and print what it is, as JSON.

Run by :func:`fabstir_node.models.probe`; if llama.cpp aborts on a malformed file, only this
process dies.
"""

from __future__ import annotations

import sys


def main(path: str) -> int:
    from llama_cpp import Llama

    from fabstir_node.models import GGUFInfo, info_json

    llm = Llama(model_path=path, n_ctx=64, n_threads=1, n_threads_batch=1, verbose=False)
    meta = llm.metadata
    architecture = meta.get("general.architecture", "unknown")
    info = GGUFInfo(
        architecture=architecture,
        n_ctx_train=int(meta.get(f"{architecture}.context_length", 0)),
        n_vocab=llm.n_vocab(),
        chat_template=meta.get("tokenizer.chat_template"),
    )
    print(info_json(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
