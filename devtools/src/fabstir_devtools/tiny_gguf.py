"""Test helpers that build real things: a tiny random-weight llama GGUF (~0.4 MB).

It loads in milliseconds and generates real (if meaningless) tokens through the same
llama.cpp code paths as a production model, so the engine, API and sessions are tested
end to end without downloading anything. Needs the ``gguf`` package (a dev dependency).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
N_EMBD, N_FF, N_LAYERS, N_HEAD, N_CTX = 64, 128, 2, 4, 512
SPECIAL = ["<unk>", "<s>", "</s>"]


def write_tiny_gguf(
    path: Path,
    *,
    seed: int = 7,
    chat_template: str | None = TINY_CHAT_TEMPLATE,
    n_layers: int = N_LAYERS,
) -> Path:
    """Write a 2-layer, 64-wide llama with a byte-level SentencePiece vocabulary (each more
    layer adds 160 KiB: a file of several blocks for storage tests)."""
    import gguf
    import numpy as np

    rng = np.random.default_rng(seed)
    tokens = SPECIAL + [f"<0x{b:02X}>" for b in range(256)]
    n_vocab = len(tokens)
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [
        gguf.TokenType.BYTE
    ] * 256

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("fabstir-tiny-test")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * n_vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if chat_template:
        writer.add_chat_template(chat_template)

    def weight(*shape: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    def ones(n: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        return np.ones(n, dtype=np.float32)

    # The model never says </s>, so every generation runs to max_tokens and tests are exact:
    # dimension 0 of the residual stream is a constant +10 (set by the embedding, untouched by
    # the layers) and only </s> reads it, with a weight of -1000.
    embd = weight(n_vocab, N_EMBD)
    embd[:, 0] = 10.0
    output = weight(n_vocab, N_EMBD)
    output[:, 0] = 0.0
    output[2, 0] = -1000.0
    writer.add_tensor("token_embd.weight", embd)
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    writer.add_tensor("output.weight", output)
    for i in range(n_layers):
        blk = f"blk.{i}"
        writer.add_tensor(f"{blk}.attn_norm.weight", ones(N_EMBD))
        for name in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(f"{blk}.{name}.weight", weight(N_EMBD, N_EMBD))
        attn_out = weight(N_EMBD, N_EMBD)
        attn_out[0, :] = 0.0
        writer.add_tensor(f"{blk}.attn_output.weight", attn_out)
        writer.add_tensor(f"{blk}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{blk}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", weight(N_FF, N_EMBD))
        ffn_down = weight(N_EMBD, N_FF)
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"{blk}.ffn_down.weight", ffn_down)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
