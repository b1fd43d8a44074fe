"""The tokenizer a client counts with: derived deterministically from the GGUF, loaded by
llama.cpp without weights, counting exactly what the host's engine counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from fabstir_devtools.tiny_gguf import write_tiny_gguf
from fabstir_sdk import tokenizer as cache
from fabstir_sdk.tokenizer import Tokenizer, TokenizerError, tokenizer_file, tokenizer_sha256

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Ünïcode, emoji 🎉 and <s> special-looking text: 3.14 > 2"},
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf")


def test_the_file_is_the_gguf_header_and_metadata_without_tensors(tiny: Path) -> None:
    data = tokenizer_file(tiny)
    assert data == tokenizer_file(tiny)  # deterministic
    assert data[:4] == b"GGUF" and int.from_bytes(data[8:16], "little") == 0  # no tensors
    assert len(data) < tiny.stat().st_size / 4
    assert tokenizer_sha256(tiny) == hashlib.sha256(data).digest()


def test_counts_what_llama_cpp_counts_with_the_full_model(tiny: Path) -> None:
    from llama_cpp import Llama

    tokenizer = Tokenizer.from_model(tiny)
    llm = Llama(str(tiny), n_ctx=64, verbose=False)
    rendered = tokenizer.render_chat(MESSAGES)
    assert rendered.startswith("<|system|>Be brief.\n")
    expected = llm.tokenize(rendered.encode(), add_bos=False, special=True)
    assert tokenizer.chat_tokens(MESSAGES) == expected
    assert tokenizer.n_vocab == llm.n_vocab()


def test_a_file_that_is_not_the_pinned_one_is_refused(tiny: Path) -> None:
    data = tokenizer_file(tiny)
    with pytest.raises(TokenizerError, match="pinned"):
        Tokenizer.from_pinned(data + b"\0", hashlib.sha256(data).digest())
    with pytest.raises(TokenizerError, match="GGUF"):
        Tokenizer(b"not a gguf at all")


def test_the_cache_verifies_on_every_read(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    data = tokenizer_file(tiny)
    pin = hashlib.sha256(data).digest()
    assert cache.cached(pin) is None
    cache.store(data)
    assert cache.cached(pin) == data
    (cache.cache_dir() / f"{pin.hex()}.gguf").write_bytes(data[:-1] + b"\1")  # bit rot
    assert cache.cached(pin) is None
