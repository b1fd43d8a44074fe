"""OpenAI's Batch formats: what a client posts and what a host returns."""

from __future__ import annotations

import json

import pytest

from fabstir_sdk.batch import (
    MAX_REQUESTS,
    BatchAnswer,
    BatchFormatError,
    BatchRequest,
    batch_payment,
    parse_input,
    parse_output,
    render_input,
    render_output,
)


def line(custom_id: str = "a", **overrides: object) -> bytes:
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    obj = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(obj | overrides).encode() + b"\n"


def test_an_openai_batch_file_round_trips() -> None:
    data = line("a") + b"\n" + line("b")  # blank lines are skipped, as OpenAI does
    requests = parse_input(data)
    assert [r.custom_id for r in requests] == ["a", "b"]
    assert parse_input(render_input(requests)) == requests


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json\n", "line 1: not valid JSON"),
        (b"[1, 2]\n", "line 1: not a JSON object"),
        (line("a") + line("a"), "line 2: custom_id 'a' appears twice"),
        (line(""), "line 1: custom_id must be a non-empty string"),
        (line(method="GET"), "line 1: method must be POST"),
        (line(url="/v1/embeddings"), "line 1: url must be /v1/chat/completions"),
        (line(body={"model": "m"}), "line 1: body must be a chat completion request"),
        (line(body={"messages": [], "stream": True}), "line 1: a batch request cannot stream"),
        (b"\n\n", "the input holds no request"),
    ],
)
def test_a_bad_line_is_named(data: bytes, message: str) -> None:
    with pytest.raises(BatchFormatError, match=message.replace("(", r"\(")):
        parse_input(data)


def test_too_many_requests_are_refused() -> None:
    data = b"".join(line(str(n)) for n in range(MAX_REQUESTS + 1))
    with pytest.raises(BatchFormatError, match="at most"):
        parse_input(data)


def test_output_lines_carry_the_body_or_the_error_in_input_order() -> None:
    body = {"object": "chat.completion", "usage": {"prompt_tokens": 5, "completion_tokens": 7}}
    answers = [
        BatchAnswer("a", body),
        BatchAnswer("b", None, {"code": "invalid_request", "message": "bad"}),
    ]
    data = render_output(9, answers)
    first, second = (json.loads(x) for x in data.splitlines())
    assert first["response"]["status_code"] == 200 and first["response"]["body"] == body
    assert first["id"] == "batch_req_9_0" and first["error"] is None
    assert second["response"] is None and second["error"]["message"] == "bad"
    parsed = parse_output(data)
    assert parsed == answers and parsed[0].usage == (5, 7) and parsed[1].usage == (0, 0)
    assert render_output(9, answers) == data  # deterministic bytes: one hash


def test_a_request_survives_the_round_trip_with_its_body() -> None:
    request = BatchRequest("x", {"messages": [], "temperature": 0})
    assert parse_input(render_input([request]))[0].body == request.body
    with pytest.raises(BatchFormatError, match="not a batch output line"):
        parse_output(b'{"custom_id": "x"}\n')


def test_a_batch_costs_its_tokens_at_the_price_at_most_the_maximum() -> None:
    assert batch_payment(57, 3 * 10**12, 10**15) == 171 * 10**9  # floor, as the contracts
    assert batch_payment(1, 999, 10**15) == 0
    assert batch_payment(10**6, 10**12, 10**15) == 10**15  # never above the escrow
