"""OpenAI wire shapes (chat completions, chunks, errors) shared by the node's HTTP API and the
SDK's paying proxy, so that both look exactly like OpenAI to its clients."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any


def completion_id(chat: bool = True) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish(reason: str) -> str:
    """OpenAI knows stop and length; every other way an answer ends reads as stop."""
    return "length" if reason in ("length", "deposit") else "stop"


def chat_response(
    ident: str, model: str, text: str, reason: str, used: dict[str, int]
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "usage": used,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish(reason),
                "logprobs": None,
            }
        ],
    }


def chat_chunk(
    ident: str,
    model: str,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    reason: str | None = None,
    with_usage: bool = False,
) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
    if text is not None:
        delta["content"] = text
    data: dict[str, Any] = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": reason and finish(reason),
                "logprobs": None,
            }
        ],
    }
    if with_usage:
        data["usage"] = None
    return data


def usage_chunk(
    ident: str, model: str, created: int, used: dict[str, int], kind: str = "chat.completion.chunk"
) -> dict[str, Any]:
    return {
        "id": ident,
        "object": kind,
        "created": created,
        "model": model,
        "choices": [],
        "usage": used,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {payload}\n\n".encode()


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
