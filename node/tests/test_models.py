import json
import os
from pathlib import Path

import pytest

from fabstir_node.models import (
    BUILTIN,
    HashCache,
    HashMismatch,
    InvalidModel,
    ModelNotFound,
    probe,
    resolve,
    sha256_file,
    verify,
)


def test_builtin_smollm2_is_installed_and_matches_its_pin(tmp_path: Path) -> None:
    model = resolve("smollm2-135m-instruct")
    assert model.path.name == BUILTIN["smollm2-135m-instruct"].filename
    assert verify(model, HashCache(tmp_path / "h.json")) == model.expected_sha256


def test_hash_cache_reuses_until_file_changes(tmp_path: Path, tiny_gguf: Path) -> None:
    file = tmp_path / "m.gguf"
    file.write_bytes(tiny_gguf.read_bytes())
    cache = HashCache(tmp_path / "hashes.json")
    calls: list[int] = []
    first = cache.sha256(file, calls.append)
    assert first == sha256_file(file) and calls
    calls.clear()
    assert cache.sha256(file, calls.append) == first and not calls  # no rehash
    with file.open("ab") as f:
        f.write(b"\0")
    os.utime(file, ns=(1, 1))
    assert cache.sha256(file, calls.append) != first and calls
    assert json.loads((tmp_path / "hashes.json").read_text())


def test_hash_mismatch_is_refused(tmp_path: Path, tiny_gguf: Path) -> None:
    model = resolve(str(tiny_gguf), "00" * 32)
    with pytest.raises(HashMismatch, match="refusing"):
        verify(model, HashCache(tmp_path / "h.json"))


def test_unknown_model_says_what_exists() -> None:
    with pytest.raises(ModelNotFound, match="smollm2-135m-instruct"):
        resolve("no-such-model")


def test_probe_reads_the_tiny_model(tiny_gguf: Path) -> None:
    info = probe(tiny_gguf)
    assert info.architecture == "llama" and info.n_vocab == 259
    assert info.chat_template and "assistant" in info.chat_template


def test_malformed_gguf_fails_in_a_subprocess_not_here(tmp_path: Path, tiny_gguf: Path) -> None:
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_gguf.read_bytes()[:5000])
    with pytest.raises(InvalidModel, match="not a loadable GGUF"):
        probe(truncated)
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"GGUF" + os.urandom(4096))
    with pytest.raises(InvalidModel):
        probe(garbage)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello")
    with pytest.raises(InvalidModel, match="bad magic"):
        probe(not_gguf)
    assert probe(tiny_gguf).architecture == "llama"  # and we are still alive
