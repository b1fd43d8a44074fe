"""`fabstir-node run` keeps the unpaid OpenAI-compatible API off unless the operator asks:
``Api(inference=False)`` serves /health and /metrics only."""

from __future__ import annotations

import httpx

from fabstir_node.api import Api
from fabstir_node.inference import Engine

from conftest import LiveServer


def test_without_inference_only_health_and_metrics_answer(engine: Engine) -> None:
    server = LiveServer(Api(engine, "tiny", inference=False))
    try:
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert "fabstir" in httpx.get(f"{server.url}/metrics").text
        body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
        assert httpx.post(f"{server.url}/v1/chat/completions", json=body).status_code == 404
        assert httpx.post(f"{server.url}/v1/completions", json=body).status_code == 404
        assert httpx.get(f"{server.url}/v1/models").status_code == 404
    finally:
        server.close()


def test_with_inference_the_api_answers(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/v1/models").status_code == 200
