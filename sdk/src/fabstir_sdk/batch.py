"""OpenAI's Batch file formats, for batch jobs on the JobBoard.

The input is JSONL, one request per line: ``{"custom_id": ..., "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``. The output is JSONL too, one line per request in
input order: ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``, the body being a chat completion. A client writes the input and reads the output
with the same code the host reads and writes them with, so both agree on every byte the result
hash covers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fabstir_sdk.errors import UsageError

#: What one batch may hold: requests, and bytes of input (the input lives in the store).
MAX_REQUESTS = 1000
MAX_INPUT_BYTES = 8 << 20
#: The one endpoint batch jobs run.
CHAT_URL = "/v1/chat/completions"
#: Prices are per PRICE_PRECISION tokens (the NodeRegistry's unit).
PRICE_PRECISION = 1000


class BatchFormatError(UsageError):
    """A batch input (or output) file that is not in OpenAI's Batch format."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class BatchRequest:
    custom_id: str
    body: dict[str, Any]


@dataclass(frozen=True)
class BatchAnswer:
    """One output line: the completion's body, or an error."""

    custom_id: str
    body: dict[str, Any] | None
    error: dict[str, str] | None = None

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) the host says it used."""
        u = (self.body or {}).get("usage") or {}
        return int(u.get("prompt_tokens", 0)), int(u.get("completion_tokens", 0))


def batch_payment(tokens: int, price: int, max_payment: int) -> int:
    """What a batch job's ``tokens`` (prompt + completion, every answer) cost at ``price``,
    at most the job's maximum: what the host asks, and what the client checks it against."""
    return min(tokens * price // PRICE_PRECISION, max_payment)


def parse_input(data: bytes) -> list[BatchRequest]:
    """The requests of a batch input file; raises :class:`BatchFormatError` naming the line."""
    if len(data) > MAX_INPUT_BYTES:
        raise BatchFormatError(0, f"the input has {len(data)} bytes; at most {MAX_INPUT_BYTES}")
    requests: list[BatchRequest] = []
    seen: set[str] = set()
    for number, raw in enumerate(data.splitlines(), 1):
        if not raw.strip():
            continue
        line = _json_object(raw, number)
        custom_id = line.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            raise BatchFormatError(number, "custom_id must be a non-empty string")
        if custom_id in seen:
            raise BatchFormatError(number, f"custom_id {custom_id!r} appears twice")
        if line.get("method") != "POST":
            raise BatchFormatError(number, "method must be POST")
        if line.get("url") != CHAT_URL:
            raise BatchFormatError(number, f"url must be {CHAT_URL} (the only endpoint served)")
        body = line.get("body")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise BatchFormatError(number, "body must be a chat completion request (messages)")
        if body.get("stream"):
            raise BatchFormatError(number, "a batch request cannot stream")
        seen.add(custom_id)
        requests.append(BatchRequest(custom_id, body))
    if not requests:
        raise BatchFormatError(0, "the input holds no request")
    if len(requests) > MAX_REQUESTS:
        raise BatchFormatError(0, f"{len(requests)} requests; at most {MAX_REQUESTS} a batch")
    return requests


def render_input(requests: list[BatchRequest]) -> bytes:
    return b"".join(
        _line({"custom_id": r.custom_id, "method": "POST", "url": CHAT_URL, "body": r.body})
        for r in requests
    )


def render_output(job_id: int, answers: list[BatchAnswer]) -> bytes:
    """The output file of job ``job_id`` (deterministic: compact JSON, sorted keys)."""
    lines = []
    for n, a in enumerate(answers):
        request_id = f"job-{job_id}-{n}"
        response = (
            None
            if a.body is None
            else {"status_code": 200, "request_id": request_id, "body": a.body}
        )
        lines.append(
            _line(
                {
                    "id": f"batch_req_{job_id}_{n}",
                    "custom_id": a.custom_id,
                    "response": response,
                    "error": a.error,
                }
            )
        )
    return b"".join(lines)


def parse_output(data: bytes) -> list[BatchAnswer]:
    answers = []
    for number, raw in enumerate(data.splitlines(), 1):
        line = _json_object(raw, number)
        response = line.get("response")
        body = response.get("body") if isinstance(response, dict) else None
        error = line.get("error")
        if not isinstance(line.get("custom_id"), str) or (body is None and error is None):
            raise BatchFormatError(number, "not a batch output line")
        answers.append(BatchAnswer(line["custom_id"], body, error))
    return answers


def _json_object(raw: bytes, number: int) -> dict[str, Any]:
    try:
        line = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BatchFormatError(number, "not valid JSON") from None
    if not isinstance(line, dict):
        raise BatchFormatError(number, "not a JSON object")
    return line


def _line(obj: dict[str, Any]) -> bytes:
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    )
