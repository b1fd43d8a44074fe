"""OpenAI wire shapes (chat completions, chunks, errors) shared by the node's HTTP API and the
SDK's paying proxy, so that both look exactly like OpenAI to its clients."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

#: The request and response field of Fabstir's extensions (the answer cache): in a request
#: ``{"cache": "off"|"own"|"shared", "min_similarity": float, "sampled": bool, "share": bool}``
#: (OpenAI clients send it with ``extra_body``); in an answer from a cache ``{"cached": true,
#: "similarity": float, "entry": int}``.
EXTENSION = "fabstir"
_CACHE_FIELDS = {"cache": "cache", "min_similarity": "cache_min_similarity"}
_CACHE_FIELDS |= {"sampled": "cache_sampled", "share": "cache_share"}


def cache_options(body: dict[str, Any]) -> dict[str, Any]:
    """The ``chat`` keyword arguments of a request's cache extension (ValueError when it is
    malformed)."""
    options = body.get(EXTENSION) or {}
    if not isinstance(options, dict):
        raise ValueError(f"{EXTENSION} must be an object")
    unknown = set(options) - set(_CACHE_FIELDS)
    if unknown:
        raise ValueError(f"{EXTENSION}: unknown fields {sorted(unknown)}")
    kwargs = {_CACHE_FIELDS[k]: v for k, v in options.items()}
    if kwargs.get("cache", "off") not in ("off", "own", "shared"):
        raise ValueError(f"{EXTENSION}.cache must be off, own or shared")
    return kwargs


def cache_mark(similarity: float, entry: int) -> dict[str, Any]:
    """What an answer from a cache carries in :data:`EXTENSION`."""
    return {EXTENSION: {"cached": True, "similarity": similarity, "entry": entry}}


def template_message(role: str, content: str | list[dict[str, Any]] | None) -> dict[str, str]:
    """An OpenAI chat message as the model's chat template takes it, and so as both sides
    count its prompt tokens: ``developer`` reads as ``system``, text parts are joined."""
    text = content if isinstance(content, str) else "".join(p["text"] for p in content or [])
    return {"role": "system" if role == "developer" else role, "content": text}


def completion_id(chat: bool = True) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> dict[str, Any]:
    """OpenAI's usage; ``cached_tokens`` are prompt tokens the server did not evaluate again."""
    used: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens:
        used["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    return used


def finish(reason: str) -> str:
    """OpenAI knows stop and length; every other way an answer ends reads as stop."""
    return "length" if reason in ("length", "deposit") else "stop"


def response(
    ident: str, model: str, text: str, reason: str, used: dict[str, Any], *, chat: bool = True
) -> dict[str, Any]:
    """A whole (non-streamed) chat or text completion."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish(reason), "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {
        "id": ident,
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": used,
    }


def chunk(
    ident: str,
    model: str,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    reason: str | None = None,
    with_usage: bool = False,
    chat: bool = True,
) -> dict[str, Any]:
    """One server-sent event of a streamed chat (``delta``) or text completion (``text``)."""
    choice: dict[str, Any] = {
        "index": 0,
        "finish_reason": reason and finish(reason),
        "logprobs": None,
    }
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    data: dict[str, Any] = {
        "id": ident,
        "object": _chunk_kind(chat),
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if with_usage:
        data["usage"] = None  # OpenAI sends null until the final usage chunk
    return data


def usage_chunk(
    ident: str, model: str, created: int, used: dict[str, Any], *, chat: bool = True
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": _chunk_kind(chat),
        "created": created,
        "model": model,
        "choices": [],
        "usage": used,
    }


def _chunk_kind(chat: bool) -> str:
    return "chat.completion.chunk" if chat else "text_completion"


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
