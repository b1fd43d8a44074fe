"""Counting tokens exactly as the host does, so the client pays only for what it can check.

A model's *tokenizer file* is its GGUF with the tensors left out: the header and every
metadata key (vocabulary, merges, special tokens, chat template) byte for byte, with the
tensor count set to zero. It is derived deterministically from the pinned model file, its
sha256 is pinned next to the model's in the ModelRegistry, and llama.cpp loads it with
``vocab_only``, so the SDK tokenizes with the very code the host runs. The host renders chat
prompts with this class too: both sides count the same tokens by construction.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import struct
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from fabstir_sdk.errors import FabstirError

MAX_TOKENIZER_BYTES = 64 << 20
_GGUF_MAGIC = b"GGUF"
# GGUF metadata value types -> fixed sizes (None: string / array, handled apart).
_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_STRUCT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
           11: "<q", 12: "<d"}  # fmt: skip
LLAMA_LOAD_LOCK = threading.Lock()  # llama.cpp's backend init and model loading are not reentrant


class TokenizerError(FabstirError):
    """A tokenizer file is malformed, fails its pinned hash, or has no chat template."""


# --------------------------------------------------------------------------- the file


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise TokenizerError("the GGUF file ends inside its metadata")
        return data

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack("<Q", self.take(8))[0])

    def string(self) -> bytes:
        n = self.u64()
        if n > MAX_TOKENIZER_BYTES:
            raise TokenizerError("a GGUF string is implausibly long")
        return self.take(n)

    def value(self, kind: int) -> Any:
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.u32(), self.u64()
            if inner == _STRING:
                for _ in range(count):
                    self.string()
            elif inner in _SCALARS:
                self.take(_SCALARS[inner] * count)
            else:
                raise TokenizerError(f"unsupported GGUF array type {inner}")
            return None  # arrays are skipped: only scalars and strings are read back
        if kind not in _SCALARS:
            raise TokenizerError(f"unknown GGUF value type {kind}")
        return struct.unpack(_STRUCT[kind], self.take(_SCALARS[kind]))[0]


def _read_metadata(f: BinaryIO) -> tuple[int, dict[str, Any]]:
    """(byte length of header + metadata, scalar and string metadata values)."""
    r = _Reader(f)
    if r.take(4) != _GGUF_MAGIC:
        raise TokenizerError("not a GGUF file")
    version = r.u32()
    if version not in (2, 3):
        raise TokenizerError(f"unsupported GGUF version {version}")
    r.u64()  # tensor count
    n_kv = r.u64()
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string().decode("utf-8", "replace")
        value = r.value(r.u32())
        if value is not None:
            metadata[key] = value
    return f.tell(), metadata


def tokenizer_file(model_path: Path) -> bytes:
    """The tokenizer file of the GGUF at ``model_path`` (see the module docstring)."""
    with open(model_path, "rb") as f:
        end, metadata = _read_metadata(f)
        f.seek(0)
        head = bytearray(f.read(end))
    head[8:16] = struct.pack("<Q", 0)  # no tensors
    alignment = int(metadata.get("general.alignment", 32)) or 32
    head += bytes(-len(head) % alignment)  # where the (empty) data section begins
    return bytes(head)


def tokenizer_sha256(model_path: Path) -> bytes:
    """What the ModelRegistry pins for this model's tokenizer."""
    return hashlib.sha256(tokenizer_file(model_path)).digest()


# --------------------------------------------------------------------------- counting


class Tokenizer:
    """A vocabulary loaded by llama.cpp (no weights) plus the model's chat template."""

    def __init__(self, data: bytes) -> None:
        import llama_cpp

        quiet = logging.getLogger("llama-cpp-python")  # llama.cpp prints the vocab otherwise
        if quiet.level == logging.NOTSET:
            quiet.setLevel(logging.ERROR)
        if len(data) > MAX_TOKENIZER_BYTES:
            raise TokenizerError("the tokenizer file is too large")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, "tokenizer.gguf")
            path.write_bytes(data)
            with open(path, "rb") as f:
                _, self.metadata = _read_metadata(f)
            params = llama_cpp.llama_model_default_params()
            params.vocab_only = True
            params.use_mmap = False  # the file goes away once loaded
            with LLAMA_LOAD_LOCK:
                llama_cpp.llama_backend_init()
                model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise TokenizerError("llama.cpp could not load the tokenizer file")
        self._llama_cpp = llama_cpp
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self._vocab))
        self._formatter: Any = None
        template = self.metadata.get("tokenizer.chat_template")
        if isinstance(template, bytes):
            self.set_chat_template(template.decode())

    @classmethod
    def from_model(cls, model_path: Path) -> Tokenizer:
        return cls(tokenizer_file(model_path))

    @classmethod
    def from_pinned(cls, data: bytes, sha256: bytes) -> Tokenizer:
        """Load ``data`` only if it is the file the registry pins."""
        if hashlib.sha256(data).digest() != sha256:
            raise TokenizerError("the tokenizer file does not match its pinned sha256")
        return cls(data)

    def __del__(self) -> None:
        model = getattr(self, "_model", None)
        if model:
            self._llama_cpp.llama_model_free(model)
            self._model = None

    def set_chat_template(self, template: str) -> None:
        """Use ``template`` (Jinja, as in the GGUF) to render chat prompts."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        eos = self._llama_cpp.llama_vocab_eos(self._vocab)
        bos = self._llama_cpp.llama_vocab_bos(self._vocab)
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.piece(eos).decode(errors="ignore") if eos >= 0 else "",
            bos_token=self.piece(bos).decode(errors="ignore") if bos >= 0 else "",
        )

    def piece(self, token: int, special: bool = True) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self._llama_cpp.llama_token_to_piece(self._vocab, token, buf, 256, 0, special)
        return buf.raw[: max(n, 0)]

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        capacity = len(data) + 16
        while True:
            out = (self._llama_cpp.llama_token * capacity)()
            n = self._llama_cpp.llama_tokenize(
                self._vocab, data, len(data), out, capacity, add_special, parse_special
            )
            if n >= 0:
                return list(out[:n])
            capacity = -n

    def render_chat(self, messages: Sequence[dict[str, Any]]) -> str:
        if self._formatter is None:
            raise TokenizerError("this model has no chat template")
        try:
            return str(self._formatter(messages=list(messages)).prompt)
        except Exception as exc:  # a template may raise_exception() on bad roles
            raise TokenizerError(f"the chat template rejected the messages: {exc}") from exc

    def chat_tokens(self, messages: Sequence[dict[str, Any]]) -> list[int]:
        """The prompt tokens of ``messages``: what a host bills as prompt for them."""
        return self.tokenize(self.render_chat(messages), add_special=False, parse_special=True)


# --------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fabstir" / "tokenizers"


def cached(sha256: bytes) -> bytes | None:
    """The cached tokenizer file with this hash, re-verified on every read."""
    path = cache_dir() / f"{sha256.hex()}.gguf"
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(data).digest() != sha256:
        path.unlink(missing_ok=True)  # corrupted on disk: fetch it again
        return None
    return data


def store(data: bytes) -> None:
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"{hashlib.sha256(data).hexdigest()}.gguf"
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, final)
